//! What WeChat answered a call, and the connection it came on, which goes back to its host's
//! pool, to the thread that opened it (or is closed), when the answer is dropped.

use super::target::Target;
use super::{close, Connection, H1Error};
use crate::http1::wire;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use std::time::{Duration, Instant};

/// What WeChat answered: its header, and its body still to be read on the connection it came
/// on. Dropping it gives the connection back (see [`AnswerBody`]): no path can forget to.
pub struct Answer<'u> {
    pub(super) header: Box<ResponseHeader>,
    pub(super) body: AnswerBody<'u>,
    /// From the call's start to its answer's header, over every host and connection tried.
    pub(super) waited: Duration,
}

impl Answer<'_> {
    pub fn header(&self) -> &ResponseHeader {
        &self.header
    }

    /// How long WeChat took to answer (measured once, for the metric and the access log).
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// The next piece of the answer's body; `None` once it is over.
    pub async fn body(&mut self) -> Result<Option<Bytes>, H1Error> {
        let b = &mut self.body;
        let Some(conn) = &mut b.conn else { return Err(H1Error::Closed) };
        b.reader.next(&mut conn.stream, &mut conn.timer, b.timeout).await
    }

    /// The header, to be sent on to the client; the connection is given back.
    pub fn into_header(self) -> Box<ResponseHeader> {
        self.header
    }
}

/// An answer's body and its connection. When dropped, the connection is kept for the next call
/// if the body was read to its end and the server keeps it alive, and closed otherwise. Not
/// async: a kept connection needs no waiting, and a closing one is shut down in a task of its
/// own, so that every call's future does not carry a shutdown's.
pub(super) struct AnswerBody<'u> {
    /// Taken only by `drop`.
    pub(super) conn: Option<Connection>,
    pub(super) reader: wire::ResponseBody,
    /// The host the connection goes to, whose pool it returns to.
    pub(super) home: &'u Target,
    pub(super) timeout: Duration,
    /// When the call began: the connection counts as idle from then if it is kept (a little
    /// early, which only ever retires it sooner), so that giving it back reads no clock.
    pub(super) started: Instant,
}

impl Drop for AnswerBody<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        match self.reader.reusable() {
            true => self.home.idle.keep(conn, self.started),
            false => close(conn.stream),
        }
    }
}
