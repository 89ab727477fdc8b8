//! WeChat's errors, typed by what the gateway should do about them (PROTOCOL.md §7).

/// An errcode WeChat answered, grouped by the reaction it calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiErrorKind {
    /// 40001, 40014, 42001: the token used is invalid, not the latest, or expired.
    TokenInvalid,
    /// 61005, 61006: the component_verify_ticket is expired or invalid.
    Ticket,
    /// 61023: the authorizer's refresh token is no longer valid.
    RefreshTokenInvalid,
    /// 61003: the account has not authorized (or has revoked) this component.
    NotAuthorized,
    /// 61009, 61010: the authorization code is invalid, used, or expired.
    AuthCode,
    /// 61004, 40164: the caller's IP is not on the platform's whitelist.
    IpNotWhitelisted,
    /// 45009: the daily quota of this API is used up.
    Quota,
    /// -1: WeChat is busy; worth retrying.
    Busy,
    Other,
}

impl ApiErrorKind {
    pub fn of(errcode: i64) -> Self {
        match errcode {
            40001 | 40014 | 42001 => Self::TokenInvalid,
            61005 | 61006 => Self::Ticket,
            61023 => Self::RefreshTokenInvalid,
            61003 => Self::NotAuthorized,
            61009 | 61010 => Self::AuthCode,
            61004 | 40164 => Self::IpNotWhitelisted,
            45009 => Self::Quota,
            -1 => Self::Busy,
            _ => Self::Other,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum WechatError {
    /// WeChat answered an errcode. `errmsg` is WeChat's text, which names no token.
    #[error("{endpoint}: errcode {errcode}: {errmsg}")]
    Api { endpoint: &'static str, errcode: i64, errmsg: String, kind: ApiErrorKind },
    #[error("{endpoint}: timed out")]
    Timeout { endpoint: &'static str },
    /// Could not connect or the connection broke; reqwest's text, stripped of the URL, which
    /// carries a token in its query.
    #[error("{endpoint}: {reason}")]
    Transport { endpoint: &'static str, reason: String },
    #[error("{endpoint}: HTTP status {status}")]
    Status { endpoint: &'static str, status: u16 },
    #[error("{endpoint}: unexpected answer: {reason}")]
    Decode { endpoint: &'static str, reason: String },
    /// A platform's call asked of a gateway that has no `[component]`.
    #[error("{endpoint}: no third-party platform is configured ([component])")]
    NoPlatform { endpoint: &'static str },
}

impl WechatError {
    pub fn kind(&self) -> Option<ApiErrorKind> {
        match self {
            Self::Api { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// A short label for metrics and the admin API's `last_error`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Api { kind, .. } => match kind {
                ApiErrorKind::TokenInvalid => "token_invalid",
                ApiErrorKind::Ticket => "ticket",
                ApiErrorKind::RefreshTokenInvalid => "refresh_token_invalid",
                ApiErrorKind::NotAuthorized => "not_authorized",
                ApiErrorKind::AuthCode => "auth_code",
                ApiErrorKind::IpNotWhitelisted => "ip_not_whitelisted",
                ApiErrorKind::Quota => "quota",
                ApiErrorKind::Busy => "busy",
                ApiErrorKind::Other => "errcode",
            },
            Self::Timeout { .. } => "timeout",
            Self::Transport { .. } => "transport",
            Self::Status { .. } => "http_status",
            Self::Decode { .. } => "decode",
            Self::NoPlatform { .. } => "no_platform",
        }
    }

    pub(crate) fn from_reqwest(endpoint: &'static str, e: reqwest::Error) -> Self {
        if e.is_timeout() {
            return Self::Timeout { endpoint };
        }
        if let Some(status) = e.status() {
            return Self::Status { endpoint, status: status.as_u16() };
        }
        let decode = e.is_decode();
        let reason = e.without_url().to_string();
        if decode {
            Self::Decode { endpoint, reason }
        } else {
            Self::Transport { endpoint, reason }
        }
    }
}
