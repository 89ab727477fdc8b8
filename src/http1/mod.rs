//! THE HTTP/1.1 of the binary, serving both listeners and calling WeChat: each connection's
//! keep-alive loop ([`edge`]), its stream and deadlines ([`conn`]), one request read and
//! answered on it ([`session`]), and what both sides share on the wire ([`wire`]): framing by
//! length, chunks or the connection's end, heads parsed once, reads and writes under a timeout,
//! and the exchange on a connection to WeChat. What headers say of framing ([`framing`]) and
//! HTTP's small grammars ([`grammar`]: tokens, a Host, chunk extensions, trailer lines) are read
//! strictly, as `tests/conformance.rs` holds them to.
//!
//! It knows nothing of what it serves: the proxy listener's gateway and the admin API each
//! implement [`Answers`].

mod conn;
mod edge;
mod framing;
mod grammar;
mod session;
pub mod wire;

pub use conn::Timeouts;
pub use edge::{Answers, Edge};
pub use grammar::is_host;
pub use session::Session;
pub use wire::{H1Error, Side};

use bytes::Bytes;

/// Where a body that streams through comes from, piece by piece: a client's request body, on
/// its way to WeChat. The client side of the stack reads it through this, not the session.
#[async_trait::async_trait]
pub trait BodySource: Send {
    /// The next piece; `None` once it is all read.
    async fn piece(&mut self) -> Result<Option<Bytes>, H1Error>;
}

#[async_trait::async_trait]
impl BodySource for Session<'_> {
    async fn piece(&mut self) -> Result<Option<Bytes>, H1Error> {
        self.body_piece().await
    }
}

/// For the fuzz target `h1` (`fuzz/`): reads `data` as requests on a client connection and as
/// WeChat's answer, heads and bodies, as the listeners and the client read them. Whatever `data`
/// holds, this returns; what it read is checked against the framing's own promises.
#[doc(hidden)]
pub fn fuzz_read(data: &[u8]) {
    session::fuzz_read(data);
    wire::fuzz_read(data);
}
