//! The admin API's JSON shapes of what the token service reports: field names are the
//! contract's (CONTRACT.md § Admin API), kept here so that the token service holds plain data.

use crate::quota::{beijing_time, QuotaStatus};
use crate::tokens::{AccountStatus, AuthorizerStatus, ComponentStatus, PendingEvent, Reconciled};
use serde_json::{json, Value};

/// `GET /admin/component`.
pub(super) fn component(s: &ComponentStatus) -> Value {
    json!({
        "component_appid": s.component_appid.as_str(),
        "ticket": s.ticket.map(|t| json!({ "create_time": t.create_time, "received_at": t.received_at })),
        "ticket_age_secs": s.ticket_age_secs,
        "token_expires_at_ms": s.token_expires_at_ms,
        "token_expires_in_secs": s.token_expires_in_secs,
        "last_refresh_at_ms": s.last_refresh_at_ms,
        "next_refresh_at_ms": s.next_refresh_at_ms,
        "last_error": s.last_error,
    })
}

/// `GET /admin/quota`: each limited client's limits and today's calls per (account, API) it
/// made, with the daily limit learnt and the share that leaves it; the pairs held after 45009.
pub(super) fn quota(s: &QuotaStatus) -> Value {
    let clients: Vec<Value> = s
        .clients
        .iter()
        .map(|c| {
            let today: Vec<Value> = c
                .today
                .iter()
                .map(|p| {
                    let allowed = p.daily_limit.zip(c.limits.daily_share).map(|(l, share)| (l as f64 * share).floor() as u64);
                    json!({ "account": p.account.label(), "api": p.api, "used": p.used, "daily_limit": p.daily_limit, "allowed": allowed })
                })
                .collect();
            json!({
                "name": c.name,
                "rate_per_second": c.limits.rate_per_second,
                "daily_share": c.limits.daily_share,
                "today": today,
            })
        })
        .collect();
    let held: Vec<Value> = s
        .held
        .iter()
        .map(|(account, api, until)| json!({ "account": account.label(), "api": api, "until_ms": until, "until": beijing_time(*until) }))
        .collect();
    json!({ "guard": s.guard, "day_ends_at_ms": s.day_ends_at_ms, "clients": clients, "held": held })
}

/// An authorizer's token state, before its info is merged in (`admin::info`).
pub(super) fn authorizer(s: &AuthorizerStatus) -> Value {
    json!({
        "appid": s.appid.as_str(),
        "state": s.state,
        "access_expires_at_ms": s.access_expires_at_ms,
        "access_expires_in_secs": s.access_expires_in_secs,
        "authorized_at_ms": s.authorized_at_ms,
        "last_refresh_at_ms": s.last_refresh_at_ms,
        "next_refresh_at_ms": s.next_refresh_at_ms,
        "last_error": s.last_error,
    })
}

/// `GET /admin/accounts/{appid}`: an owned account, without its token or secret.
pub(super) fn account(s: &AccountStatus) -> Value {
    json!({
        "appid": s.appid.as_str(),
        "state": s.state,
        "access_expires_at_ms": s.access_expires_at_ms,
        "access_expires_in_secs": s.access_expires_in_secs,
        "last_refresh_at_ms": s.last_refresh_at_ms,
        "next_refresh_at_ms": s.next_refresh_at_ms,
        "last_error": s.last_error,
    })
}

/// `GET /admin/events`: the authorization events not yet acted on and handed on, and why each
/// waits. Never the payload: it can carry an authorization code.
pub(super) fn pending_events(events: &[PendingEvent]) -> Value {
    let one = |e: &PendingEvent| {
        json!({
            "id": e.id,
            "info_type": e.info_type,
            "authorizer": e.authorizer.map(|a| a.to_string()),
            "create_time": e.create_time,
            "received_at": e.received_at,
            "attempts": e.failure.as_ref().map_or(0, |f| f.attempts),
            "last_error": e.failure.as_ref().map(|f| f.last_error.clone()),
        })
    };
    json!({ "pending": events.len(), "events": events.iter().map(one).collect::<Vec<_>>() })
}

/// `POST /admin/reconcile`.
pub(super) fn reconciled(r: &Reconciled) -> Value {
    json!({
        "listed": r.listed,
        "imported": r.imported,
        "revoked": r.revoked,
        "unchanged": r.unchanged,
        "failed": r.failed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::TicketStatus;

    #[test]
    fn shapes_carry_the_contracts_field_names() {
        let c = ComponentStatus {
            component_appid: "wx0123456789abcdef".into(),
            ticket: Some(TicketStatus { create_time: 1, received_at: 2 }),
            ticket_age_secs: Some(3),
            token_expires_at_ms: None,
            token_expires_in_secs: None,
            last_refresh_at_ms: Some(4),
            next_refresh_at_ms: Some(5),
            last_error: None,
        };
        assert_eq!(
            component(&c),
            json!({ "component_appid": "wx0123456789abcdef", "ticket": { "create_time": 1, "received_at": 2 },
                    "ticket_age_secs": 3, "token_expires_at_ms": null, "token_expires_in_secs": null,
                    "last_refresh_at_ms": 4, "next_refresh_at_ms": 5, "last_error": null })
        );
        let r = Reconciled { listed: 5, imported: 1, revoked: 1, unchanged: 2, failed: 1 };
        assert_eq!(reconciled(&r), json!({ "listed": 5, "imported": 1, "revoked": 1, "unchanged": 2, "failed": 1 }));
    }
}
