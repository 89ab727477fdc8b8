//! Both listeners' keep-alive loop: on each connection ([`Conn`]), one request after another
//! read and answered by [`Session`] with what [`Answers`] it.

use super::conn::{Conn, Timeouts};
use super::session::{Session, Unread};
use crate::reply::Reply;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::sync::Arc;

/// Serves a listener's connections with `app` (the gateway on the proxy listener, the admin
/// API on the admin listener), one request after another, each under [`Timeouts`].
pub struct Edge<A> {
    app: A,
    timeouts: Timeouts,
}

impl<A> Edge<A> {
    pub fn new(app: A, timeouts: Timeouts) -> Self {
        Self { app, timeouts }
    }
}

#[async_trait]
impl<A: Answers + Send + Sync + 'static> ServerApp for Edge<A> {
    /// Serves the connection in a task of its own. pingora's accepting task is a future of some
    /// 8 KiB (it has room for a TLS handshake the proxy listener never makes), held for the
    /// connection's life; this loop's task is a fraction of that, which thousands of idle
    /// keep-alive clients notice. The task stays on this worker's runtime.
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        tokio::spawn(Arc::clone(self).serve(stream, shutdown.clone()));
        None
    }
}

/// What answers each request of a connection: the gateway, the admin API, or a test's own.
pub trait Answers {
    /// Answers `session`'s request; an answer cut short calls [`Session::close_after`].
    fn answer(&self, session: &mut Session<'_>) -> impl Future<Output = ()> + Send;
}

impl<A: Answers> Edge<A> {
    async fn serve(self: Arc<Self>, stream: Stream, shutdown: ShutdownWatch) {
        serve(&self.app, stream, self.timeouts, shutdown).await;
    }
}

/// Serves one connection with `app`, request after request, until it ends.
pub async fn serve(app: &impl Answers, stream: Stream, timeouts: Timeouts, shutdown: ShutdownWatch) {
    let mut conn = Conn::new(stream, timeouts);
    // Made once for the connection: a wait for the server's stop made for each request would
    // join and leave the watch's list of waiters, under its lock, on every call.
    let mut stop = std::pin::pin!(stopped(shutdown.clone()));
    while conn.wait_for_request(&shutdown, stop.as_mut()).await {
        let stopping = *shutdown.borrow();
        let mut session = match Session::read(&mut conn).await {
            Ok(session) => session,
            Err(unread) => {
                let Some((status, why)) = unread.refusal() else {
                    if let Unread::Gone(e) = unread {
                        tracing::debug!(error = %e.on(super::wire::Side::Client), "the request head was not read");
                    }
                    return;
                };
                // As nginx: refused, and the connection closed. The reason names no part of it.
                tracing::debug!(why, status, "the request head was refused");
                Session::refuse(&mut conn, Reply::error(status, why)).await;
                conn.left_unread();
                break;
            }
        };
        if stopping {
            // The answer says `Connection: close`: the server is stopping.
            session.close_after();
        }
        app.answer(&mut session).await;
        if !session.finish().await {
            break;
        }
    }
    if conn.unread {
        // Boxed: rare, and it reads into a buffer of its own.
        Box::pin(conn.linger()).await;
    }
}

/// Ends when the server begins to stop.
async fn stopped(mut shutdown: ShutdownWatch) {
    // An error: the server is gone, which is a stop too.
    let _ = shutdown.wait_for(|stop| *stop).await;
}
