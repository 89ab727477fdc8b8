//! What the sandbox saw: counters by endpoint and the last API calls, for tests to assert on.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

/// How many API calls [`super::Sandbox::requests`] keeps.
pub const MAX_SEEN: usize = 10_000;

/// Counters since start. Every call that arrived counts, including the ones a fault answered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub component_token_calls: u64,
    /// `api_authorizer_token` calls, by the `authorizer_appid` in their body.
    pub authorizer_token_calls: HashMap<String, u64>,
    /// Calls to any path that is not one of the component endpoints.
    pub api_calls: u64,
    pub start_push_ticket_calls: u64,
    /// Tickets issued and sent (or attempted: a failed push still replaces the ticket).
    pub tickets_pushed: u64,
    /// Ticket pushes the callback answered `success`.
    pub tickets_delivered: u64,
    /// Pushes (tickets and events) that did not get HTTP 200 with the body `success`.
    pub pushes_failed: u64,
    pub query_auth_calls: u64,
    pub preauthcode_calls: u64,
    pub authorizer_info_calls: u64,
    pub authorizer_list_calls: u64,
    /// Errcodes the component endpoints and API calls answered (faults included), by code.
    pub errcodes: std::collections::BTreeMap<i64, u64>,
    /// `GET /cgi-bin/ticket/getticket` calls that were answered with a ticket, by `APPID:kind`.
    pub getticket_calls: HashMap<String, u64>,
    /// `fastregisterweapp` calls, answered or refused.
    pub fast_registrations: u64,
    /// `POST /cgi-bin/stable_token` calls, answered or refused, by the appid in their body.
    pub stable_token_calls: HashMap<String, StableTokenCalls>,
    /// `/cgi-bin/token` calls, answered or refused, by the appid in their query.
    pub token_calls: HashMap<String, u64>,
    /// Code management calls (`/wxa/*`) that arrived, answered or refused, by whose token they
    /// carried (an appid; `component` or empty for a component's or an unknown token).
    pub code_calls: HashMap<String, CodeCalls>,
    /// The same calls answered with errcode 0: a step done twice shows here.
    pub code_ok: HashMap<String, CodeCalls>,
    /// `wxa/queryquota` calls, answered or refused.
    pub queryquota_calls: u64,
    /// `wxa/gettemplatelist` calls, answered or refused.
    pub template_list_calls: u64,
    /// The platform's audit quota left this month (`wxa/queryquota`'s `rest`).
    pub audit_quota_rest: u32,
    /// The most accounts that were ever at once between a commit and WeChat's verdict on it; an
    /// account whose submission was refused for good (86002) leaves the count then.
    pub max_in_audit_or_committed: u64,
    /// Audit events (`weapp_audit_*`) sent to the message URL, and those not answered HTTP 200.
    pub audit_events_pushed: u64,
    pub audit_events_failed: u64,
    /// Audit events not sent because pushes were turned off (`/sandbox/audit-push`).
    pub audit_events_silenced: u64,
}

/// One account's code management calls, by step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CodeCalls {
    pub commit: u64,
    pub submit: u64,
    pub release: u64,
    /// `get_latest_auditstatus`.
    pub status: u64,
    /// `getversioninfo`.
    pub version: u64,
}

/// One account's `stable_token` calls, by mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StableTokenCalls {
    pub normal: u64,
    /// With `force_refresh: true`, including those refused for WeChat's limits.
    pub force: u64,
}

/// One API call as the sandbox received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    /// The query string as received, undecoded.
    pub query: String,
    /// Which parameter carried the token: `access_token` or `component_access_token`.
    pub token_param: Option<String>,
    /// Whose token it was (an appid, or `component`), whether or not it still worked.
    pub authorizer: Option<String>,
    pub body_len: usize,
    pub headers: Vec<(String, String)>,
}

/// The counters and a bounded log of API calls.
#[derive(Default)]
pub(crate) struct Record {
    pub stats: Stats,
    seen: VecDeque<SeenRequest>,
    sent_texts: VecDeque<super::messages::SentText>,
}

impl Record {
    pub fn push(&mut self, seen: SeenRequest) {
        if self.seen.len() == MAX_SEEN {
            self.seen.pop_front();
        }
        self.seen.push_back(seen);
    }

    pub fn seen(&self) -> Vec<SeenRequest> {
        self.seen.iter().cloned().collect()
    }

    pub fn push_sent_text(&mut self, text: super::messages::SentText) {
        if self.sent_texts.len() == MAX_SEEN {
            self.sent_texts.pop_front();
        }
        self.sent_texts.push_back(text);
    }

    pub fn sent_texts(&self) -> Vec<super::messages::SentText> {
        self.sent_texts.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest() {
        let mut r = Record::default();
        for i in 0..MAX_SEEN + 5 {
            r.push(SeenRequest {
                method: "POST".into(),
                path: format!("/{i}"),
                query: String::new(),
                token_param: None,
                authorizer: None,
                body_len: 0,
                headers: vec![],
            });
        }
        let seen = r.seen();
        assert_eq!(seen.len(), MAX_SEEN);
        assert_eq!(seen[0].path, "/5");
        assert_eq!(seen.last().unwrap().path, format!("/{}", MAX_SEEN + 4));
    }
}
