//! One host's idle connections, kept per thread: a connection is only ever taken again by the
//! thread that opened it.
//!
//! Why per thread: each pingora worker runs its own single-threaded runtime (`work_stealing:
//! false`), and a connection belongs to the runtime that opened it: its socket is registered
//! with that runtime's reactor, and its [`wire::Timer`](crate::http1::wire::Timer) sits in that
//! runtime's timer wheel. Taken by another worker, it is driven by a reactor and a timer that
//! worker does not poll: the call waits until its owner's thread polls them (for ever, while
//! that thread is blocked), and once the owner's runtime has shut down, its timer panics when
//! polled (issue 25). A thread runs one runtime at a time, so the thread stands for the
//! runtime. (A thread that drops its runtime and starts another finds its old connections
//! closed: their reactor is gone, which the still-open check on taking one sees.)
//!
//! Why shards: every call takes a connection and gives one back, and one lock per host for all
//! workers would have them queue on each other. A thread's number picks its shard, so up to
//! [`SHARDS`] threads each lock one of their own, uncontended; past that, threads share a shard,
//! never a connection.

use super::{Connection, IDLE_TIMEOUT};
use futures_util::FutureExt;
use pingora::protocols::Stream;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;
use tokio::io::AsyncReadExt;

/// Idle connections kept per WeChat host by each worker: as many as calls a busy worker has in
/// flight (each holds one), so that a warm gateway makes no new handshakes; one costs a socket
/// and ~1 KB.
const MAX_IDLE_PER_TARGET: usize = 1024;

/// More than the threads that call WeChat (the proxy's workers), so that each has its own lock.
const SHARDS: usize = 64;

/// The thread a connection was opened on. A number of the pool's own rather than
/// `std::thread::ThreadId`: it is read from a thread-local, where `thread::current()` clones an
/// `Arc`, and it picks the shard without hashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Owner(usize);

impl Owner {
    /// This thread's number, given the first time it asks; never given to another thread.
    pub(super) fn current() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static THIS: Owner = Owner(NEXT.fetch_add(1, Ordering::Relaxed));
        }
        THIS.with(|owner| *owner)
    }

    fn shard(self) -> usize {
        self.0 % SHARDS
    }
}

#[derive(Debug)]
pub(super) struct Pool {
    shards: Box<[Shard]>,
}

/// Aligned to a cache line, so that two workers' locks do not share one.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Shard(Mutex<Vec<Idle>>);

/// One thread's idle connections, each with the time it became idle, oldest first. Kept once
/// made, even when empty, so that a connection taken and given back allocates nothing.
#[derive(Debug)]
struct Idle {
    owner: Owner,
    conns: VecDeque<(Connection, Instant)>,
}

impl Pool {
    pub(super) fn new() -> Self {
        Self { shards: (0..SHARDS).map(|_| Shard::default()).collect() }
    }

    /// The connection this thread gave back last that is still open and has been idle for less
    /// than [`IDLE_TIMEOUT`] at `now`; older and closed ones are dropped on the way.
    pub(super) fn take(&self, now: Instant) -> Option<Connection> {
        let owner = Owner::current();
        loop {
            let (mut conn, since) = self.pop(owner)?;
            if now.duration_since(since) < IDLE_TIMEOUT && still_open(&mut conn.stream) {
                return Some(conn);
            }
        }
    }

    /// `owner`'s newest idle connection, with the time it became idle.
    fn pop(&self, owner: Owner) -> Option<(Connection, Instant)> {
        let mut shard = self.shards[owner.shard()].lock();
        shard.iter_mut().find(|idle| idle.owner == owner)?.conns.pop_back()
    }

    /// Keeps `conn`, idle since `since`, for the next call on the thread that opened it; that
    /// thread's oldest goes when it has [`MAX_IDLE_PER_TARGET`].
    pub(super) fn keep(&self, conn: Connection, since: Instant) {
        let owner = conn.owner;
        let mut shard = self.shards[owner.shard()].lock();
        let at = match shard.iter().position(|idle| idle.owner == owner) {
            Some(at) => at,
            None => {
                shard.push(Idle { owner, conns: VecDeque::new() });
                shard.len() - 1
            }
        };
        let conns = &mut shard[at].conns;
        let oldest = match conns.len() >= MAX_IDLE_PER_TARGET {
            true => conns.pop_front(),
            false => None,
        };
        conns.push_back((conn, since));
        // Closed after the lock is let go: a close is system calls.
        drop(shard);
        drop(oldest);
    }
}

/// Whether an idle connection is still usable: reading must find nothing (no end of stream,
/// no unexpected data, no reactor gone with its runtime) and not block. Readiness is the
/// runtime's cached state: no system call unless the server did something.
fn still_open(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    tokio::task::unconstrained(stream.read(&mut byte)).now_or_never().is_none()
}

impl Shard {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
