//! Durable hand-off to NATS JetStream.
//!
//! - [`JetStreamHandoff`] is the receiver side: [`publish`](JetStreamHandoff::publish)
//!   stores the verified event in a JetStream stream, with the event id as
//!   the `Nats-Msg-Id`, and returns only once the server acknowledged it.
//!   With the `axum` feature, [`receive`] is a ready-made handler that answers
//!   `200 {"status":"received"}` after the PubAck and 503 with `Retry-After`
//!   otherwise.
//! - [`JetStreamWorker`] is the processing side: it pulls from a durable
//!   consumer with explicit acks, rebuilds the [`KlikitEvent`](klikit_webhook::KlikitEvent), calls your
//!   async closure, and acks only after it returned `Ok`.
//!
//! See the [module docs](crate) for the guarantees, and why your
//! processing must be idempotent on the event id.
//!
//! On its own the feature needs Rust 1.89, the minimum of `async-nats` 0.51
//! (the crate declares 1.94, the minimum `klikit-webhook` declares). Only
//! `async-nats`'s `jetstream` and `ring` features are enabled. For stream or
//! consumer options this module does not set, start from
//! [`stream_config`](JetStreamHandoff::stream_config) (create the stream
//! yourself, then call [`ensure_stream`](JetStreamHandoff::ensure_stream),
//! which keeps it) or [`consumer_config`](JetStreamWorker::consumer_config)
//! (pass the result to
//! [`with_consumer_config`](JetStreamWorker::with_consumer_config)), enabling
//! `async-nats` features such as `server_2_10` in your own `Cargo.toml` where
//! needed.
//!
//! # Examples
//!
//! Receiver and worker (they can run in separate processes; they only share
//! the stream name):
//!
//! ```no_run
//! use axum::{Router, routing::post};
//! use klikit_handoff::nats::{JetStreamHandoff, JetStreamWorker, ProcessError, receive};
//! use klikit_webhook::{KlikitWebhookLayer, WebhookSecret};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let client = async_nats::connect("nats://127.0.0.1:4222").await?;
//! let handoff = JetStreamHandoff::new(async_nats::jetstream::new(client), "KLIKIT_EVENTS", "klikit.events");
//! handoff.ensure_stream().await?;
//!
//! // Receiver: 200 only once JetStream persisted the event.
//! let secret = WebhookSecret::from_env("KLIKIT_WEBHOOK_SECRET")?;
//! let app: Router = Router::new()
//!     .route("/webhooks/klikit", post(receive))
//!     .route_layer(KlikitWebhookLayer::new(secret))
//!     .with_state(handoff.clone());
//! # let _ = app;
//!
//! // Worker: acks after the closure returned Ok.
//! let worker = JetStreamWorker::new(&handoff, "klikit-worker");
//! worker
//!     .run(|event| async move {
//!         // Record event.id() in the same transaction as the side effect,
//!         // and treat "already recorded" as success.
//!         let envelope = event.payload().map_err(ProcessError::permanent)?;
//!         println!("{} {}: {} order(s)", event.id(), event.event_type(), envelope.orders.len());
//!         Ok(())
//!     })
//!     .await?;
//! # Ok(())
//! # }
//! ```

mod error;
mod publish;
mod worker;

pub use error::HandoffError;
pub use publish::JetStreamHandoff;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use publish::receive;
pub use worker::JetStreamWorker;

pub use crate::ProcessError;
