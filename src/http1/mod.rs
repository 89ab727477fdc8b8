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

/// For the fuzz target `h1` (`fuzz/`): reads `data` as requests on a client connection and as
/// WeChat's answer, heads and bodies, as the listeners and the client read them. Whatever `data`
/// holds, this returns; what it read is checked against the framing's own promises.
#[doc(hidden)]
pub fn fuzz_read(data: &[u8]) {
    session::fuzz_read(data);
    wire::fuzz_read(data);
}
