//! When each token is refreshed: the due queue, and the timing rules with their jitter and
//! backoff. Pure: no I/O, no clock of its own.

use crate::store::TicketKind;
use crate::AppId;
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Work the scheduler does at a given time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Job {
    ComponentToken,
    /// An owned account's token.
    Account(AppId),
    Authorizer(AppId),
    /// Refresh a JS-SDK ticket ahead of expiry, if pages still ask for it.
    Ticket(AppId, TicketKind),
    /// Act on the authorization events the store holds.
    Events,
    /// Check that tickets still arrive.
    TicketWatch,
    /// Fetch this account's info (after it was authorized).
    Info(AppId),
    /// One slice of the daily info pass.
    InfoPass,
    /// Reconcile with WeChat's list of authorizations.
    Reconcile,
}

/// One due time per job, ordered by time. The authorizers' refreshes, one per authorizer of a
/// fleet that may be a million strong, have a queue of their own keyed by the bare appid: an
/// entry of 16 bytes rather than 24, whose B-tree nodes (188 bytes) fit mimalloc's 192-byte
/// class, where the generic queue's (276) take 320: 63 bytes an authorizer, measured, not 99.
#[derive(Debug, Default)]
pub struct Schedule {
    authorizers: Queue<AppId>,
    others: Queue<Job>,
}

impl Schedule {
    /// Sets when `job` is due, replacing any earlier plan for it.
    pub fn set(&mut self, job: Job, at_ms: i64) {
        match job {
            Job::Authorizer(appid) => self.authorizers.set(appid, at_ms),
            other => self.others.set(other, at_ms),
        }
    }

    /// Sets `job` due at `at_ms` unless it is already due sooner.
    pub fn set_earlier(&mut self, job: Job, at_ms: i64) {
        if self.due_at(&job).is_none_or(|t| t > at_ms) {
            self.set(job, at_ms);
        }
    }

    pub fn remove(&mut self, job: &Job) {
        match job {
            Job::Authorizer(appid) => self.authorizers.remove(appid),
            other => self.others.remove(other),
        }
    }

    pub fn due_at(&self, job: &Job) -> Option<i64> {
        match job {
            Job::Authorizer(appid) => self.authorizers.due_at(appid),
            other => self.others.due_at(other),
        }
    }

    /// Takes the earliest job due at or before `now_ms`.
    pub fn pop_due(&mut self, now_ms: i64) -> Option<Job> {
        let authorizer = self.authorizers.next_due().filter(|&at| at <= now_ms);
        let other = self.others.next_due().filter(|&at| at <= now_ms);
        match (authorizer, other) {
            (Some(a), Some(o)) if a < o => self.authorizers.pop().map(Job::Authorizer),
            (Some(_), None) => self.authorizers.pop().map(Job::Authorizer),
            (_, Some(_)) => self.others.pop(),
            (None, None) => None,
        }
    }

    pub fn next_due(&self) -> Option<i64> {
        match (self.authorizers.next_due(), self.others.next_due()) {
            (Some(a), Some(o)) => Some(a.min(o)),
            (a, o) => a.or(o),
        }
    }

    pub fn len(&self) -> usize {
        self.authorizers.len() + self.others.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Due times by key, and the keys by due time. Both are B-trees rather than a hash map: at a
/// million keys a hash table is 2²¹ buckets, half empty, where the B-tree's nodes are mostly full.
#[derive(Debug)]
struct Queue<K> {
    by_time: BTreeSet<(i64, K)>,
    due: BTreeMap<K, i64>,
}

impl<K> Default for Queue<K> {
    fn default() -> Self {
        Self { by_time: BTreeSet::new(), due: BTreeMap::new() }
    }
}

impl<K: Ord + Clone> Queue<K> {
    fn set(&mut self, key: K, at_ms: i64) {
        if let Some(old) = self.due.insert(key.clone(), at_ms) {
            self.by_time.remove(&(old, key.clone()));
        }
        self.by_time.insert((at_ms, key));
    }

    fn remove(&mut self, key: &K) {
        if let Some(at) = self.due.remove(key) {
            self.by_time.remove(&(at, key.clone()));
        }
    }

    fn due_at(&self, key: &K) -> Option<i64> {
        self.due.get(key).copied()
    }

    fn len(&self) -> usize {
        self.due.len()
    }

    fn next_due(&self) -> Option<i64> {
        self.by_time.first().map(|(at, _)| *at)
    }

    fn pop(&mut self) -> Option<K> {
        let (_, key) = self.by_time.pop_first()?;
        self.due.remove(&key);
        Some(key)
    }
}

/// How far ahead of expiry a token is refreshed: `refresh.ahead_secs`, but never more than a
/// quarter of the token's lifetime, so that short-lived tokens (the sandbox's) are not
/// refreshed in a loop.
pub fn lead_ms(ahead: Duration, lifetime_ms: i64) -> i64 {
    (ahead.as_millis() as i64).min(lifetime_ms / 4).max(0)
}

/// After a refresh: due `lead` before expiry, less up to a quarter of `lead` of jitter, so that
/// tokens issued in the same second drift apart.
pub fn steady_due(now_ms: i64, expires_at: i64, ahead: Duration, rng: &mut impl Rng) -> i64 {
    let lead = lead_ms(ahead, expires_at - now_ms);
    let jitter = rng.gen_range(0..=lead / 4);
    (expires_at - lead - jitter).max(now_ms)
}

/// At start-up, or when many authorizers arrive together: due anywhere within one steady
/// refresh period before `lead`. A crowd with equal expiries then refreshes at the fleet's
/// average rate from the start, and keeps that spread afterwards, since each refresh plans the
/// next one a steady period later; a few tokens are refreshed early once for it.
pub fn spread_due(now_ms: i64, expires_at: i64, ahead: Duration, lifetime_ms: i64, rng: &mut impl Rng) -> i64 {
    let lead = lead_ms(ahead, lifetime_ms);
    let latest = expires_at - lead;
    let room = latest - now_ms;
    if room <= 0 {
        return now_ms;
    }
    let steady_period = (lifetime_ms - lead - lead / 4).max(1);
    latest - rng.gen_range(0..=room.min(steady_period))
}

/// The wait before retry `attempt` (1, 2, …) of a failed refresh: doubling from `base` up to
/// `max`, each drawn from 50%–150% so that failures do not retry in step.
pub fn backoff_ms(attempt: u32, base: Duration, max: Duration, rng: &mut impl Rng) -> i64 {
    let base = base.as_millis() as i64;
    let capped = base.saturating_mul(1i64 << attempt.saturating_sub(1).min(20)).min(max.as_millis() as i64);
    let factor = rng.gen_range(0.5..1.5);
    ((capped as f64) * factor) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const HOUR: i64 = 3_600_000;

    #[test]
    fn jobs_come_out_in_time_order_and_replans_replace() {
        let mut s = Schedule::default();
        let a = Job::Authorizer(AppId::parse("wx1111111111111111").unwrap());
        s.set(a.clone(), 50);
        s.set(Job::ComponentToken, 20);
        s.set(a.clone(), 10);
        s.set_earlier(Job::ComponentToken, 30);
        assert_eq!(s.len(), 2);
        assert_eq!(s.next_due(), Some(10));
        assert_eq!(s.pop_due(5), None);
        assert_eq!(s.pop_due(100), Some(a));
        assert_eq!(s.pop_due(100), Some(Job::ComponentToken));
        assert!(s.is_empty());
    }

    #[test]
    fn authorizers_and_other_jobs_share_one_time_order() {
        let mut s = Schedule::default();
        let (a, b) = (AppId::parse("wx1111111111111111").unwrap(), AppId::parse("wx2222222222222222").unwrap());
        s.set(Job::Authorizer(a), 30);
        s.set(Job::Events, 20);
        s.set(Job::Authorizer(b), 10);
        s.set(Job::Info(a), 40);
        s.set_earlier(Job::Authorizer(a), 50);
        assert_eq!(s.due_at(&Job::Authorizer(a)), Some(30), "a later plan does not replace a sooner one");
        s.remove(&Job::Info(a));
        assert_eq!((s.len(), s.next_due()), (3, Some(10)));
        let order: Vec<Job> = std::iter::from_fn(|| s.pop_due(100)).collect();
        assert_eq!(order, [Job::Authorizer(b), Job::Events, Job::Authorizer(a)]);
        assert_eq!(s.due_at(&Job::Authorizer(a)), None);
    }

    #[test]
    fn steady_refresh_lands_before_expiry_with_bounded_jitter() {
        let mut rng = StdRng::seed_from_u64(1);
        let ahead = Duration::from_secs(600);
        for _ in 0..1000 {
            let due = steady_due(0, 2 * HOUR, ahead, &mut rng);
            assert!((2 * HOUR - 750_000..=2 * HOUR - 600_000).contains(&due), "{due}");
        }
        // A token of 8 s is refreshed 2 s before it expires, not 600 s (at once, forever).
        let due = steady_due(0, 8_000, ahead, &mut rng);
        assert!((5_500..=6_000).contains(&due), "{due}");
    }

    #[test]
    fn a_crowd_with_one_expiry_spreads_over_a_steady_period() {
        let mut rng = StdRng::seed_from_u64(2);
        let ahead = Duration::from_secs(600);
        let dues: Vec<i64> = (0..10_000).map(|_| spread_due(0, 2 * HOUR, ahead, 2 * HOUR, &mut rng)).collect();
        let (min, max) = (*dues.iter().min().unwrap(), *dues.iter().max().unwrap());
        assert!(min >= 150_000 && max <= 6_600_000, "{min}..{max}");
        assert!(max - min > 6_000_000);
        assert_eq!(spread_due(5 * HOUR, 2 * HOUR, ahead, 2 * HOUR, &mut rng), 5 * HOUR, "expired: due now");
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        let mut rng = StdRng::seed_from_u64(3);
        let (base, max) = (Duration::from_secs(2), Duration::from_secs(300));
        let first = backoff_ms(1, base, max, &mut rng);
        assert!((1_000..3_000).contains(&first));
        let fifth = backoff_ms(5, base, max, &mut rng);
        assert!((16_000..48_000).contains(&fifth));
        let late = backoff_ms(40, base, max, &mut rng);
        assert!((150_000..450_000).contains(&late));
    }
}
