//! The Redis store's one connection, supervised: every command has a deadline; while Redis is
//! known to be away every command fails at once, instead of waiting on a reconnect; a probe
//! re-makes the connection within a fraction of a second of Redis answering again.
//!
//! redis-rs's `ConnectionManager` is not used for this: in 0.32 its reconnect backoff hands its
//! `factor` (100) to backon as the growth factor, so the second attempt came 60–120 s after the
//! first, every command issued meanwhile waited on that one reconnect with no deadline, and all
//! of them were released together when it succeeded.

use super::target::Target;
use crate::store::StoreError;
use redis::aio::MultiplexedConnection;
use redis::{Client, ErrorKind, RedisError, RedisResult};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify, Semaphore};

/// How often a lost Redis is tried again: it is serving again at most this long (and one
/// connect) after it answers.
const PROBE_EVERY: Duration = Duration::from_millis(200);
/// How often a quiet connection is checked, so that an idle instance learns of an outage (and
/// `/readyz` reports it) without a command failing first.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// Commands in flight at once; more wait, within their deadline, for a turn.
const MAX_IN_FLIGHT: usize = 256;
/// Writes waiting on replicas at once, each on a connection of its own.
const MAX_DURABLE: usize = 8;

#[derive(Clone)]
pub(super) struct Link(Arc<Inner>);

struct Inner {
    target: Target,
    timeout: Duration,
    state: Mutex<State>,
    /// Wakes the supervisor when a command finds the connection broken.
    wake: Notify,
    in_flight: Semaphore,
    /// Connections for writes followed by WAIT, one write at a time each: WAIT blocks the
    /// connection it is sent on (every command behind it on a shared connection would wait too),
    /// and counts only that connection's writes. Tagged with the generation they were made in.
    durable: Mutex<Vec<(u64, MultiplexedConnection)>>,
    durable_turns: Semaphore,
    /// The generation of the connection in use, bumped by every reconnect: the change listener
    /// subscribes again when it moves (Redis restarted, or Sentinel named another master).
    live: watch::Sender<u64>,
}

struct State {
    /// The master's client and the connection to it; `None` while Redis is away.
    conn: Option<(Client, MultiplexedConnection)>,
    generation: u64,
    down: Option<Down>,
}

struct Down {
    since: Instant,
    reason: String,
}

impl Link {
    /// Connects once (start-up fails if Redis does not answer within `timeout`) and starts the
    /// supervisor on the current runtime.
    pub(super) async fn connect(target: Target, timeout: Duration) -> Result<Self, StoreError> {
        let conn = match tokio::time::timeout(timeout, target.connect(timeout)).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(StoreError::Unavailable(format!("redis ({}): {e}", target.describe()))),
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "redis ({}): no answer within {timeout:?}",
                    target.describe()
                )))
            }
        };
        let inner = Arc::new(Inner {
            target,
            timeout,
            state: Mutex::new(State { conn: Some(conn), generation: 1, down: None }),
            wake: Notify::new(),
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
            durable: Mutex::new(Vec::new()),
            durable_turns: Semaphore::new(MAX_DURABLE),
            live: watch::Sender::new(1),
        });
        tokio::spawn(supervise(Arc::downgrade(&inner)));
        Ok(Self(inner))
    }

    /// Runs one command (or a few on one connection) within the deadline. A failure of the
    /// connection itself marks Redis as away until the probe reaches it again.
    pub(super) async fn run<T, F, Fut>(&self, command: F) -> Result<T, StoreError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.run_within(self.0.timeout, command).await
    }

    /// As [`Link::run`], with a longer deadline for a command that waits on purpose (WAIT).
    pub(super) async fn run_within<T, F, Fut>(&self, timeout: Duration, command: F) -> Result<T, StoreError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        let (conn, generation) = self.0.current()?;
        let Ok(Ok(_turn)) = tokio::time::timeout_at(deadline, self.0.in_flight.acquire()).await else {
            return Err(StoreError::Unavailable(format!(
                "redis: {MAX_IN_FLIGHT} commands already in flight for {timeout:?}"
            )));
        };
        match tokio::time::timeout_at(deadline, command(conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.failure(generation, Some(e), timeout)),
            Err(_) => Err(self.failure(generation, None, timeout)),
        }
    }

    /// As [`Link::run_within`], on a connection no other command uses meanwhile: for a write
    /// followed by WAIT.
    pub(super) async fn run_alone<T, F, Fut>(&self, timeout: Duration, command: F) -> Result<T, StoreError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        let (_, generation) = self.0.current()?;
        let Ok(Ok(_turn)) = tokio::time::timeout_at(deadline, self.0.durable_turns.acquire()).await else {
            return Err(StoreError::Unavailable(format!("redis: {MAX_DURABLE} replicated writes already waiting")));
        };
        let outcome = tokio::time::timeout_at(deadline, async {
            let conn = match self.0.take_durable(generation) {
                Some(conn) => conn,
                None => {
                    let client = self.client().ok_or((ErrorKind::IoError, "not connected"))?;
                    let config = redis::AsyncConnectionConfig::new().set_connection_timeout(timeout);
                    client.get_multiplexed_async_connection_with_config(&config).await?
                }
            };
            let value = command(conn.clone()).await?;
            Ok::<_, RedisError>((value, conn))
        })
        .await;
        match outcome {
            Ok(Ok((value, conn))) => {
                self.0.put_durable(generation, conn);
                Ok(value)
            }
            Ok(Err(e)) => Err(self.failure(generation, Some(e), timeout)),
            Err(_) => Err(self.failure(generation, None, timeout)),
        }
    }

    /// A command that failed (`error`) or got no answer within `timeout` (`None`): a fault of
    /// the connection itself, or the silence, marks this generation of the link lost.
    fn failure(&self, generation: u64, error: Option<RedisError>, timeout: Duration) -> StoreError {
        let reason = match error {
            Some(e) if !is_link_fault(&e) => return StoreError::Unavailable(format!("redis: {e}")),
            Some(e) => e.to_string(),
            None => format!("no answer within {timeout:?}"),
        };
        self.0.lost(generation, &reason);
        StoreError::Unavailable(format!("redis: {reason}"))
    }

    /// The client of the master in use, for the change listener's own connection; `None` while
    /// Redis is away.
    pub(super) fn client(&self) -> Option<Client> {
        self.0.lock().conn.as_ref().map(|(client, _)| client.clone())
    }

    /// Has the supervisor check the connection (and, behind Sentinel, who is master) now.
    pub(super) fn suspect(&self) {
        self.0.wake.notify_one();
    }

    /// A handle that does not keep the link (and its supervisor) alive.
    pub(super) fn downgrade(&self) -> WeakLink {
        WeakLink(Arc::downgrade(&self.0))
    }

    /// Moves on every reconnect.
    pub(super) fn generations(&self) -> watch::Receiver<u64> {
        self.0.live.subscribe()
    }
}

pub(super) struct WeakLink(Weak<Inner>);

impl WeakLink {
    pub(super) fn upgrade(&self) -> Option<Link> {
        self.0.upgrade().map(Link)
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection to use, or the answer for a Redis known to be away.
    fn current(&self) -> Result<(MultiplexedConnection, u64), StoreError> {
        let state = self.lock();
        match (&state.conn, &state.down) {
            (Some((_, conn)), None) => Ok((conn.clone(), state.generation)),
            (_, Some(down)) => Err(StoreError::Unavailable(format!(
                "redis unreachable for {:.1} s: {}",
                down.since.elapsed().as_secs_f64(),
                down.reason
            ))),
            (None, None) => Err(StoreError::Unavailable("redis: not connected".into())),
        }
    }

    /// Marks the connection of `generation` lost, once; a late failure on a connection already
    /// replaced changes nothing.
    fn lost(&self, generation: u64, reason: &str) {
        let mut state = self.lock();
        if state.generation != generation || state.down.is_some() {
            return;
        }
        tracing::warn!(error = reason, "lost Redis; store operations fail at once until it answers again");
        crate::metrics::STORE_UP.set(0);
        crate::metrics::STORE_OUTAGES.inc();
        state.conn = None;
        state.down = Some(Down { since: Instant::now(), reason: reason.to_owned() });
        drop(state);
        self.wake.notify_one();
    }

    fn take_durable(&self, generation: u64) -> Option<MultiplexedConnection> {
        let mut pool = self.durable.lock().unwrap_or_else(|p| p.into_inner());
        pool.retain(|(g, _)| *g == generation);
        pool.pop().map(|(_, conn)| conn)
    }

    fn put_durable(&self, generation: u64, conn: MultiplexedConnection) {
        if self.lock().generation == generation {
            self.durable.lock().unwrap_or_else(|p| p.into_inner()).push((generation, conn));
        }
    }

    fn restore(&self, conn: (Client, MultiplexedConnection)) {
        let mut state = self.lock();
        let away = state.down.take().map(|d| d.since.elapsed());
        state.conn = Some(conn);
        state.generation += 1;
        let generation = state.generation;
        drop(state);
        crate::metrics::STORE_UP.set(1);
        self.live.send_replace(generation);
        tracing::info!(away_ms = away.map(|d| d.as_millis() as u64), "Redis answers again; store operations resume");
    }

    /// Gives up the connection if the Sentinels name another master, so that the probe
    /// connects to the new one.
    async fn follow_sentinel(&self) {
        let current = {
            let state = self.lock();
            state.conn.as_ref().map(|(client, _)| (client.clone(), state.generation))
        };
        let Some((client, generation)) = current else { return };
        if let Ok(true) = tokio::time::timeout(self.timeout, self.target.moved_from(&client)).await {
            self.lost(generation, "Sentinel names another master (failover)");
        }
    }

    fn is_down(&self) -> bool {
        self.lock().down.is_some()
    }
}

/// While up: a check (PING; ROLE behind Sentinel) every [`HEARTBEAT_EVERY`]. While down: a fresh connection attempt every
/// [`PROBE_EVERY`], each within the deadline. Ends when the store is dropped.
async fn supervise(inner: Weak<Inner>) {
    loop {
        let Some(inner) = inner.upgrade() else { return };
        if inner.is_down() {
            match tokio::time::timeout(inner.timeout, inner.target.connect(inner.timeout)).await {
                Ok(Ok(conn)) => {
                    inner.restore(conn);
                    continue;
                }
                Ok(Err(e)) => {
                    if let Some(down) = inner.lock().down.as_mut() {
                        down.reason = e.to_string();
                    }
                }
                Err(_) => {}
            }
            drop(inner);
            tokio::time::sleep(PROBE_EVERY).await;
        } else {
            // A command that found something amiss (a WAIT short of replicas) asks for a check now.
            tokio::select! {
                () = tokio::time::sleep(HEARTBEAT_EVERY) => {}
                () = inner.wake.notified() => {}
            }
            if inner.is_down() {
                continue;
            }
            let link = Link(Arc::clone(&inner));
            let check = Arc::clone(&inner);
            let _ = link.run(|mut c| async move { check.target.check(&mut c).await }).await;
            inner.follow_sentinel().await;
        }
    }
}

/// Whether an error means the connection (or the server behind it) cannot serve: I/O, a
/// server still loading its data, or a master demoted to replica by a failover.
fn is_link_fault(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_unrecoverable_error()
        || matches!(e.kind(), ErrorKind::BusyLoadingError | ErrorKind::ReadOnly | ErrorKind::MasterDown)
        || e.code().is_some_and(|c| c == "READONLY" || c == "LOADING" || c == "MASTERDOWN")
}
