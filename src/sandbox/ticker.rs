//! The ticket pusher: a ticket at start, then one every interval, unless paused.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

use super::Sandbox;

/// Starts the pusher. Without a callback URL there is nobody to push to: the first ticket is
/// set here, synchronously, and never rotates by itself.
pub(super) fn spawn(sandbox: Sandbox, shutdown: watch::Receiver<bool>) {
    if !sandbox.inner.pusher.has_target() {
        let mut ledger = sandbox.ledger();
        ledger.record.stats.tickets_pushed += 1;
        ledger.new_ticket();
        return;
    }
    tokio::spawn(run(sandbox, shutdown));
}

/// Like WeChat, a failed push is not retried early: the next interval brings a new ticket.
async fn run(sandbox: Sandbox, mut shutdown: watch::Receiver<bool>) {
    // A zero interval would spin; nothing real pushes faster than this.
    let interval = sandbox.inner.config.ticket_interval.max(Duration::from_millis(10));
    let mut next = Instant::now();
    loop {
        tokio::select! {
            _ = sleep_until(next) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        next = Instant::now() + interval;
        if sandbox.ledger().paused {
            continue;
        }
        if sandbox.push_ticket().await.is_ok() {
            tracing::debug!("sandbox: ticket pushed");
        }
    }
}
