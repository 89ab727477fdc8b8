//! Daily shares: what each (account, API)'s daily limit is, learnt from `openapi/quota/get` at
//! most once a Beijing day per pair and never on a call's path, and how many calls each client
//! had accepted for each pair today. A call is counted when it is let through and uncounted if
//! WeChat did not accept it, so that calls in flight count against the share.

use super::{Account, ByPair};
use std::collections::HashMap;
use std::sync::Mutex;

/// Pairs followed per client and day, and pairs whose limit is learnt per day, at most: a
/// client sending paths that are not APIs cannot make the gateway's memory grow without end.
/// Past it, a new pair is not held to a share (and a warning says so).
pub(super) const MAX_PAIRS: usize = 100_000;

/// What is known of a pair's daily limit today.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    Asking,
    Limit(u64),
    /// WeChat would not say (a path that is no API, an account without a token): no share.
    Unknown,
}

/// What a call's share check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lookup {
    Limit(u64),
    /// Not known (yet): the call goes on.
    Open,
    /// Not known and nobody asked today: the caller asks, in the background.
    Ask,
}

/// The daily limits learnt, for one Beijing day.
#[derive(Debug, Default)]
pub(super) struct Limits {
    day: Mutex<(i64, ByPair<Known>)>,
}

impl Limits {
    pub fn lookup(&self, account: Account, api: &str, day: i64) -> Lookup {
        let mut guard = self.day.lock().unwrap_or_else(|p| p.into_inner());
        let (on, known) = &mut *guard;
        if *on != day {
            (*on, *known) = (day, HashMap::new());
        }
        match known.get(&account).and_then(|apis| apis.get(api)) {
            Some(Known::Limit(n)) => Lookup::Limit(*n),
            Some(_) => Lookup::Open,
            None if known.values().map(HashMap::len).sum::<usize>() >= MAX_PAIRS => Lookup::Open,
            None => {
                known.entry(account).or_default().insert(api.into(), Known::Asking);
                Lookup::Ask
            }
        }
    }

    /// What WeChat said of the pair on `day`: its daily limit, or nothing usable.
    pub fn learnt(&self, account: Account, api: &str, day: i64, limit: Option<u64>) {
        let mut guard = self.day.lock().unwrap_or_else(|p| p.into_inner());
        let (on, known) = &mut *guard;
        if *on == day {
            let value = limit.map_or(Known::Unknown, Known::Limit);
            known.entry(account).or_default().insert(api.into(), value);
        }
    }

    /// The limit learnt today, for the admin API.
    pub fn limit(&self, account: Account, api: &str, day: i64) -> Option<u64> {
        let guard = self.day.lock().unwrap_or_else(|p| p.into_inner());
        match guard.1.get(&account).and_then(|apis| apis.get(api)) {
            Some(Known::Limit(n)) if guard.0 == day => Some(*n),
            _ => None,
        }
    }
}

/// Pairs called within this long are reported every second even without calls of this
/// instance's, so that its view of the others' counts is never more than a report old.
const FOLLOWED_FOR_MS: i64 = 10 * 60_000;

/// One client's count for one pair: what the cluster had at the last report, and what this
/// instance counted since.
#[derive(Debug, Default, Clone, Copy)]
struct Count {
    /// `None` until the cluster's total was read once (shared stores only).
    cluster: Option<u64>,
    unsent: i64,
    /// When this instance last took a call for the pair (Unix ms).
    called_at_ms: i64,
}

impl Count {
    fn total(&self) -> u64 {
        (self.cluster.unwrap_or(0) as i64 + self.unsent).max(0) as u64
    }
}

/// A client's calls per pair, for one Beijing day.
#[derive(Debug, Default)]
pub(super) struct Used {
    day: Mutex<(i64, ByPair<Count>)>,
}

/// What taking a call from a client's share found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Take {
    Taken,
    Refused,
    /// A shared store's total for the pair was never read here: read it, then try again.
    Unread,
}

impl Used {
    /// Counts one call against `allowed` for the pair, unless that is reached. `shared`: the
    /// cluster's total must be known first.
    pub fn take(&self, account: Account, api: &str, now_ms: i64, allowed: u64, shared: bool) -> Take {
        let day = super::beijing_day(now_ms);
        let mut guard = self.day.lock().unwrap_or_else(|p| p.into_inner());
        let (on, pairs) = &mut *guard;
        if *on != day {
            (*on, *pairs) = (day, HashMap::new());
        }
        if !pairs.get(&account).is_some_and(|apis| apis.contains_key(api)) {
            if pairs.values().map(HashMap::len).sum::<usize>() >= MAX_PAIRS {
                return Take::Taken;
            }
            pairs.entry(account).or_default().insert(api.into(), Count::default());
        }
        let Some(count) = pairs.get_mut(&account).and_then(|apis| apis.get_mut(api)) else { return Take::Taken };
        if shared && count.cluster.is_none() {
            return Take::Unread;
        }
        count.called_at_ms = now_ms;
        if count.total() >= allowed {
            return Take::Refused;
        }
        count.unsent += 1;
        Take::Taken
    }

    /// Uncounts a call WeChat did not accept.
    pub fn give_back(&self, account: Account, api: &str, day: i64) {
        let mut guard = self.day.lock().unwrap_or_else(|p| p.into_inner());
        if guard.0 != day {
            return;
        }
        if let Some(count) = guard.1.get_mut(&account).and_then(|apis| apis.get_mut(api)) {
            count.unsent -= 1;
        }
    }

    /// What this instance counted since its last report, for every pair it called lately or
    /// whose cluster total it never read (with 0 when it counted none), so that the report also
    /// brings back the others' counts; the day they are of.
    pub fn unsent(&self, now_ms: i64) -> (i64, Vec<(Account, String, i64)>) {
        let guard = self.day.lock().unwrap_or_else(|p| p.into_inner());
        let followed = |c: &Count| c.unsent != 0 || c.cluster.is_none() || now_ms - c.called_at_ms < FOLLOWED_FOR_MS;
        let all = guard.1.iter().flat_map(|(a, apis)| {
            apis.iter().filter(|(_, c)| followed(c)).map(move |(api, c)| (*a, api.to_string(), c.unsent))
        });
        (guard.0, all.collect())
    }

    /// The cluster's totals after a report of `sent` (as [`Self::unsent`] gave them).
    pub fn reported(&self, day: i64, sent: &[(Account, String, i64)], totals: &[u64]) {
        let mut guard = self.day.lock().unwrap_or_else(|p| p.into_inner());
        if guard.0 != day {
            return;
        }
        for ((account, api, calls), total) in sent.iter().zip(totals) {
            if let Some(count) = guard.1.get_mut(account).and_then(|apis| apis.get_mut(api.as_str())) {
                count.unsent -= calls;
                count.cluster = Some(*total);
            }
        }
    }

    /// The pair's count today, for the admin API.
    pub fn list(&self, day: i64) -> Vec<(Account, String, u64)> {
        let guard = self.day.lock().unwrap_or_else(|p| p.into_inner());
        if guard.0 != day {
            return Vec::new();
        }
        let mut all: Vec<_> = guard
            .1
            .iter()
            .flat_map(|(a, apis)| apis.iter().map(move |(api, c)| (*a, api.to_string(), c.total())))
            .collect();
        all.sort();
        all
    }
}
