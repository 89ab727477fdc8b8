//! Settles in batches. A drain settles thousands of attempts a second, and one script each had
//! Redis spend more on running scripts than on the work in them. So an outcome waits here while
//! the batch before it is with Redis, then goes in one script with every other that came
//! meanwhile: no outcome waits for a batch to fill.

use super::super::RedisStore;
use super::scripts::SETTLE_MANY;
use crate::store::StoreError;
use std::sync::{Arc, OnceLock};
use tokio::sync::{mpsc, oneshot};

/// Settles in one script at most: bounds how long Redis runs it.
const MAX_BATCH: usize = 256;

/// One settle: SETTLE_MANY's three keys and six arguments for it, and its caller.
pub(in crate::store::redis) struct Settle {
    pub keys: [String; 3],
    pub args: [String; 6],
    pub reply: oneshot::Sender<Result<bool, StoreError>>,
}

/// The way to the batching task, started on the runtime of the first settle.
#[derive(Clone, Default)]
pub(in crate::store::redis) struct Settles(Arc<OnceLock<mpsc::UnboundedSender<Settle>>>);

impl Settles {
    /// Hands `settle` to the batching task; gives it back when the task is gone (its runtime
    /// ended), for the caller to run alone.
    pub(super) fn send(&self, store: &RedisStore, settle: Settle) -> Result<(), Box<Settle>> {
        let tx = self.0.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            // A copy of the store without this batcher: the task ends with the last sender.
            tokio::spawn(batch_loop(store.without_settles(), rx));
            tx
        });
        tx.send(settle).map_err(|e| Box::new(e.0))
    }
}

async fn batch_loop(store: RedisStore, mut queue: mpsc::UnboundedReceiver<Settle>) {
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        run(&store, std::mem::take(&mut batch)).await;
    }
}

/// One script for `batch`; each caller answered with its own result.
pub(super) async fn run(store: &RedisStore, batch: Vec<Settle>) {
    let mut invocation = SETTLE_MANY.prepare_invoke();
    for settle in &batch {
        for key in &settle.keys {
            invocation.key(key);
        }
        for arg in &settle.args {
            invocation.arg(arg);
        }
    }
    let settled: Result<Vec<i64>, StoreError> = store.outbox_invoke(invocation, false).await;
    let settled = settled.and_then(|done| match done.len() == batch.len() {
        true => Ok(done),
        false => Err(StoreError::Corrupt(format!("{} settles answered for {}", done.len(), batch.len()))),
    });
    match settled {
        Ok(done) => batch.into_iter().zip(done).for_each(|(s, d)| drop(s.reply.send(Ok(d == 1)))),
        Err(e) => batch.into_iter().for_each(|s| drop(s.reply.send(Err(e.clone())))),
    }
}
