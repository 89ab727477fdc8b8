//! What every answer from WeChat's component endpoints tells the operator: its errcode is
//! counted, and a used-up daily quota (45009) on a token endpoint is logged once, with the way out.

use crate::metrics;
use std::sync::atomic::{AtomicBool, Ordering};

/// The endpoints without which no token is renewed: their 45009 stops the gateway's service.
const TOKEN_ENDPOINTS: [&str; 2] = ["api_component_token", "api_authorizer_token"];

/// Set while a token endpoint answers 45009, so that its retries do not log it again.
static OVER_QUOTA: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];

/// Counts `errcode` and, for a token endpoint, logs when its quota runs out and when it is back.
pub fn observe_errcode(endpoint: &'static str, errcode: i64) {
    metrics::count_wechat_errcode(Some(errcode));
    let Some(i) = TOKEN_ENDPOINTS.iter().position(|e| *e == endpoint) else { return };
    match errcode {
        45009 if !OVER_QUOTA[i].swap(true, Ordering::Relaxed) => tracing::error!(
            endpoint,
            "WeChat's daily quota of {endpoint} is used up (45009): tokens cannot be renewed until it resets; \
             clear it with POST /admin/component/clear-quota (clear_quota/v2, 10 resets a month)"
        ),
        0 if OVER_QUOTA[i].swap(false, Ordering::Relaxed) => {
            tracing::info!(endpoint, "{endpoint} answers again: its daily quota is available")
        }
        _ => {}
    }
}

/// Whether a token endpoint is over its quota now, for tests and status pages.
#[cfg(test)]
pub fn over_quota(endpoint: &str) -> bool {
    TOKEN_ENDPOINTS.iter().position(|e| *e == endpoint).is_some_and(|i| OVER_QUOTA[i].load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_error_latches_until_the_endpoint_answers_again() {
        observe_errcode("api_authorizer_token", 45009);
        assert!(over_quota("api_authorizer_token"));
        observe_errcode("api_authorizer_token", 45009);
        assert!(over_quota("api_authorizer_token"));
        observe_errcode("api_get_authorizer_info", 0);
        assert!(over_quota("api_authorizer_token"), "another endpoint's success clears nothing");
        observe_errcode("api_authorizer_token", 0);
        assert!(!over_quota("api_authorizer_token"));
    }
}
