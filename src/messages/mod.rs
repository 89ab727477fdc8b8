//! Messages of authorized accounts (the `$APPID$` URL): their durable outbox and its delivery.

pub mod outbox;
