//! The guard as the admin API shows it.

use super::{Account, ClientLimits};

/// The admin API's view of the guard.
#[derive(Debug, Clone)]
pub struct QuotaStatus {
    pub guard: bool,
    pub day_ends_at_ms: i64,
    pub clients: Vec<ClientUse>,
    /// (account, API, until).
    pub held: Vec<(Account, String, i64)>,
}

#[derive(Debug, Clone)]
pub struct ClientUse {
    pub name: String,
    pub limits: ClientLimits,
    pub today: Vec<PairUse>,
}

#[derive(Debug, Clone)]
pub struct PairUse {
    pub account: Account,
    pub api: String,
    pub used: u64,
    pub daily_limit: Option<u64>,
}
