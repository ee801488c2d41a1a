//! The reference receiver under every `KLIKIT_SCHEME`, over a real socket.
//!
//! Each test starts `klikit serve` as a process on a free loopback port
//! (configured only by the variables it names: the caller's `KLIKIT_*` are
//! removed), talks HTTP/1.1 to it over a plain socket, reads what its worker
//! logged, and kills it when done. One section per scheme:
//!
//! - Partner API v1 (`KLIKIT_SCHEME=klikit-v1`), alone and with
//!   `KLIKIT_WEBHOOK_SECRETS_FILE`, in [`klikit_v1`];
//! - `KLIKIT_SCHEME=standard-webhooks` in [`standard_webhooks`];
//! - the migration, `KLIKIT_SCHEME=klikit,klikit-v1` then only v1, in
//!   [`migration`];
//! - bad values, which stop the receiver with one line, in [`config`];
//! - `klikit sign` and `klikit send --scheme …` end to end, in [`cli`].

mod cli;
mod config;
mod klikit_v1;
mod migration;
mod server;
mod standard_webhooks;
