//! The application side of [`klikit_webhook`]: the reference Klikit webhook
//! receiver and the `klikit` command-line tool.
//!
//! - [`receiver`] is the reference receiver: `POST /webhooks/klikit` behind
//!   [`KlikitWebhookLayer`](klikit_webhook::KlikitWebhookLayer), a bounded
//!   queue and a background worker, `GET /healthz`, `GET /metrics`
//!   (Prometheus), the dedup store chosen by `KLIKIT_STORE`, and a graceful
//!   drain on Ctrl-C or SIGTERM. Serve it with `klikit serve`, or run
//!   `cargo run -p klikit-cli --example receiver`.
//! - The `klikit` binary (`cargo install klikit-cli`) signs bodies, sends
//!   signed deliveries (a shipped [fixture](klikit_webhook::fixtures) or a
//!   file) and serves the receiver.
//!
//! This crate holds what only an application needs (clap, the Prometheus
//! exporter, tracing-subscriber, an HTTP client), so that the library's
//! dependencies stay free of them.
//!
//! # Features
//!
//! | feature | default | enables |
//! |---|---|---|
//! | `redis` | yes | `KLIKIT_STORE=redis://…` (the library's `RedisStore`) |
//! | `postgres` | yes | `KLIKIT_STORE=postgres://…` (the library's `PostgresStore`) |
//!
//! The memory and SQLite stores are always available.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod receiver;

/// Installs the log subscriber the receiver runs with: `RUST_LOG` (default
/// `info`), colours only on a terminal.
///
/// # Panics
///
/// If a global subscriber is already installed.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
}
