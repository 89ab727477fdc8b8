//! THE HTTP/1.1 of the binary, serving both listeners and calling WeChat: each connection's
//! keep-alive loop ([`edge`]), its stream and deadlines ([`conn`]), one request read and
//! answered on it ([`session`]), and what both sides share on the wire ([`wire`]): framing by
//! length, chunks or the connection's end, heads parsed once, reads and writes under a timeout,
//! and the exchange on a connection to WeChat.
//!
//! It knows nothing of what it serves: the proxy listener's gateway and the admin API each
//! implement [`Answers`].

mod conn;
mod edge;
mod session;
pub mod wire;

pub use conn::Timeouts;
pub use edge::{Answers, Edge};
pub use session::Session;
pub use wire::{H1Error, Side};
