//! Every metric name and registration, in the process-wide registry that `/metrics` serves.
//!
//! Labels never carry an appid: per-authorizer detail is on the admin API, and a label per
//! authorizer would grow without bound.

use prometheus::{
    register_gauge, register_histogram, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, Gauge, Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};
use std::sync::LazyLock;

// `register_*` fails only on a duplicate name or a malformed definition, both programming
// errors caught by the first test that touches the metric.

pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "wxgate_requests_total",
        "API calls through the proxy, by scope and status",
        &["scope", "status"]
    )
    .expect("metric")
});

pub static UPSTREAM_DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!("wxgate_upstream_duration_seconds", "Time WeChat took to answer a proxied call")
        .expect("metric")
});

pub static TOKEN_REFRESH: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "wxgate_token_refresh_total",
        "Token refreshes, by kind (component|authorizer|account|ticket) and result",
        &["kind", "result"]
    )
    .expect("metric")
});

pub static UPSTREAM_SWITCHES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "wxgate_upstream_switches_total",
        "Proxied calls moved to another WeChat host: to a fallback after the active host could not be connected to, or back to the primary",
        &["to"]
    )
    .expect("metric")
});

pub static RELEASE_ACCOUNTS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "wxgate_release_accounts",
        "Accounts of running release jobs, by state (pending, committed, auditing, delayed, approved, released, rejected, waiting_quota, failed, skipped, cancelled)",
        &["state"]
    )
    .expect("metric")
});

pub static RELEASE_STEPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "wxgate_release_steps_total",
        "Release jobs' calls to WeChat, by step (commit, submit, release, status, quota) and result (ok, errcode, unreachable, token, store_error)",
        &["step", "result"]
    )
    .expect("metric")
});

pub static RATE_LIMITED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "wxgate_rate_limited_total",
        "Proxied calls the quota guard answered without WeChat, by client and reason: rate (over rate_per_second), share (past its daily_share), quota (WeChat answered 45009 for the account and API today)",
        &["client", "reason"]
    )
    .expect("metric")
});

pub static EGRESS_PROXY_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "wxgate_egress_proxy_failures_total",
        "Connections to WeChat the egress proxy (upstream.proxy) did not open, by reason: unreachable, refused (it answered CONNECT with an error, 407 for bad credentials), broken, timeout",
        &["reason"]
    )
    .expect("metric")
});

pub static TOKEN_RETRY: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("wxgate_token_retry_total", "Proxied calls replayed after WeChat reported a token error")
        .expect("metric")
});

pub static TICKET_AGE: LazyLock<Gauge> = LazyLock::new(|| {
    register_gauge!("wxgate_ticket_age_seconds", "Age of the component_verify_ticket held (+Inf when none is held)")
        .expect("metric")
});

pub static TICKET_STALE: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "wxgate_ticket_stale_total",
        "Checks that found no component_verify_ticket pushed for 20 minutes"
    )
    .expect("metric")
});

pub static CALLBACK_EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "wxgate_callback_events_total",
        "Verified authorization events, by info type",
        &["info_type"]
    )
    .expect("metric")
});

pub static CALLBACK_REJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("wxgate_callback_rejected_total", "Callbacks refused, by reason", &["reason"])
        .expect("metric")
});

pub static BUDGET_EXHAUSTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "wxgate_wechat_budget_exhausted_total",
        "Calls to a WeChat token endpoint refused because the credential's budget for the minute was spent, by endpoint",
        &["endpoint"]
    )
    .expect("metric")
});

pub static LEASE_RELEASE_FAILURES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "wxgate_lease_release_failures_total",
        "Refresh leases that could not be released (they expire on their own)"
    )
    .expect("metric")
});

pub static AUTHORIZERS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!("wxgate_authorizers", "Authorizers held, by state", &["state"]).expect("metric")
});

pub static WECHAT_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "wxgate_wechat_errors_total",
        "Non-zero errcodes WeChat answered, to token refreshes and proxied calls alike, by errcode (a fixed set, else other)",
        &["errcode"]
    )
    .expect("metric")
});

pub static RECONCILE: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "wxgate_reconcile_total",
        "Reconciliations with api_get_authorizer_list, by result (ok|error|busy)",
        &["result"]
    )
    .expect("metric")
});

pub static STORE_UP: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("wxgate_store_up", "1 while the store answers, 0 while Redis is known to be unreachable")
        .expect("metric")
});

pub static STORE_OUTAGES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("wxgate_store_outages_total", "Times the connection to Redis was lost").expect("metric")
});

pub static STORE_UNREPLICATED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "wxgate_store_unreplicated_writes_total",
        "Authorizer records the Redis master took but fewer than store.redis_wait_replicas replicas acknowledged in time"
    )
    .expect("metric")
});

pub static CONFIG_RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "wxgate_config_reloads_total",
        "Config reloads on SIGHUP, by result (ok, invalid: the file has errors, refused: a key needs a restart)",
        &["result"]
    )
    .expect("metric")
});

/// The errcodes `wxgate_wechat_errors_total` names; any other is `other`, so that the label set
/// stays bounded whatever WeChat answers.
pub const WECHAT_ERRCODES: [i64; 8] = [40001, 40014, 42001, 45009, 61003, 61004, 61023, 40164];

static WECHAT_ERROR_COUNTERS: LazyLock<Vec<IntCounter>> = LazyLock::new(|| {
    let mut labels: Vec<String> = WECHAT_ERRCODES.iter().map(i64::to_string).collect();
    labels.push("other".into());
    labels.iter().map(|l| WECHAT_ERRORS.with_label_values(&[l.as_str()])).collect()
});

/// Counts a WeChat answer's errcode in `wxgate_wechat_errors_total`; 0 (and none) is not an error.
pub fn count_wechat_errcode(errcode: Option<i64>) {
    let Some(code) = errcode.filter(|c| *c != 0) else { return };
    let i = WECHAT_ERRCODES.iter().position(|c| *c == code).unwrap_or(WECHAT_ERRCODES.len());
    WECHAT_ERROR_COUNTERS[i].inc();
}

const SCOPES: [&str; 4] = ["authorizer", "component", "token_endpoint", "none"];
const STATUSES: [u16; 10] = [200, 302, 400, 401, 403, 404, 413, 502, 503, 504];

/// The counters of the common (scope, status) pairs, looked up once: a label lookup hashes
/// both labels, which is too much for every call.
static REQUEST_COUNTERS: LazyLock<Vec<Vec<IntCounter>>> = LazyLock::new(|| {
    SCOPES
        .iter()
        .map(|scope| {
            STATUSES.iter().map(|status| REQUESTS.with_label_values(&[*scope, status.to_string().as_str()])).collect()
        })
        .collect()
});

/// Counts one proxied call in `wxgate_requests_total`.
pub fn count_request(scope: &str, status: u16) {
    let cached = SCOPES.iter().position(|s| *s == scope).zip(STATUSES.iter().position(|s| *s == status));
    match cached {
        Some((i, j)) => REQUEST_COUNTERS[i][j].inc(),
        None => REQUESTS.with_label_values(&[scope, status.to_string().as_str()]).inc(),
    }
}

/// The info types WeChat documents for the authorization-event URL; any other is counted as
/// `other`, so that the label set stays bounded whatever arrives.
const KNOWN_INFO_TYPES: &[&str] =
    &["component_verify_ticket", "authorized", "updateauthorized", "unauthorized", "notify_third_fasteregister"];

pub fn info_type_label(info_type: &str) -> &str {
    KNOWN_INFO_TYPES.iter().find(|k| **k == info_type).copied().unwrap_or("other")
}

/// Registers every family, so that `/metrics` lists them all from the first scrape on.
pub static MESSAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "wxgate_messages_total",
        "Messages of authorized accounts, by route (the config's route name, or -) and result",
        &["route", "result"]
    )
    .expect("metric")
});

pub static MESSAGE_OUTBOX: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!("wxgate_message_outbox", "Messages in the outbox, by state (pending|failed)", &["state"])
        .expect("metric")
});

pub static MESSAGE_DELIVERY: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "wxgate_message_delivery_seconds",
        "Time from a message's arrival to its delivery to the handler from the outbox",
        vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0,
            86400.0
        ]
    )
    .expect("metric")
});

/// The outbox's attempts by route too: a route is a configured name, so the series are bounded.
pub static ROUTE_ATTEMPTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "wxgate_outbox_route_attempts_total",
        "Delivery attempts from the outbox by route ([[messages.routes]] or [[events.routes]] name) and result (delivered|retry|failed)",
        &["route", "result"]
    )
    .expect("metric")
});

pub static MESSAGE_ATTEMPTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "wxgate_message_delivery_attempts_total",
        "Delivery attempts from the outbox, by result (delivered|retry|failed)",
        &["result"]
    )
    .expect("metric")
});

pub fn init() {
    LazyLock::force(&REQUESTS);
    LazyLock::force(&UPSTREAM_DURATION);
    for to in ["fallback", "primary"] {
        UPSTREAM_SWITCHES.with_label_values(&[to]);
    }
    LazyLock::force(&TOKEN_REFRESH);
    LazyLock::force(&TOKEN_RETRY);
    LazyLock::force(&RATE_LIMITED);
    LazyLock::force(&RELEASE_ACCOUNTS);
    LazyLock::force(&RELEASE_STEPS);
    for reason in ["unreachable", "refused", "broken", "timeout"] {
        EGRESS_PROXY_FAILURES.with_label_values(&[reason]);
    }
    LazyLock::force(&TICKET_AGE);
    LazyLock::force(&TICKET_STALE);
    LazyLock::force(&CALLBACK_EVENTS);
    LazyLock::force(&CALLBACK_REJECTED);
    LazyLock::force(&AUTHORIZERS);
    LazyLock::force(&MESSAGES);
    LazyLock::force(&MESSAGE_OUTBOX);
    LazyLock::force(&MESSAGE_DELIVERY);
    // Series of a fixed label set start at zero, so that rates and alerts see the first one.
    for result in ["delivered", "retry", "failed"] {
        MESSAGE_ATTEMPTS.with_label_values(&[result]);
    }
    LazyLock::force(&BUDGET_EXHAUSTED);
    LazyLock::force(&ROUTE_ATTEMPTS);
    LazyLock::force(&LEASE_RELEASE_FAILURES);
    for result in ["ok", "error", "busy"] {
        RECONCILE.with_label_values(&[result]);
    }
    for state in ["pending", "failed"] {
        MESSAGE_OUTBOX.with_label_values(&[state]).set(0);
    }
    LazyLock::force(&WECHAT_ERROR_COUNTERS);
    LazyLock::force(&RECONCILE);
    LazyLock::force(&STORE_OUTAGES);
    LazyLock::force(&STORE_UNREPLICATED);
    STORE_UP.set(1);
    for result in ["ok", "invalid", "refused"] {
        CONFIG_RELOADS.with_label_values(&[result]);
    }
    TICKET_AGE.set(f64::INFINITY);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_registered_once() {
        init();
        init();
        let names: Vec<String> = prometheus::gather().iter().map(|f| f.name().to_owned()).collect();
        assert!(names.iter().any(|n| n == "wxgate_ticket_age_seconds"));
        assert_eq!(info_type_label("authorized"), "authorized");
        assert_eq!(info_type_label("<script>"), "other");
        let other = WECHAT_ERRORS.with_label_values(&["other"]);
        let quota = WECHAT_ERRORS.with_label_values(&["45009"]);
        let (o, q) = (other.get(), quota.get());
        count_wechat_errcode(Some(45009));
        count_wechat_errcode(Some(12345));
        count_wechat_errcode(Some(0));
        count_wechat_errcode(None);
        assert_eq!((other.get() - o, quota.get() - q), (1, 1));
    }
}
