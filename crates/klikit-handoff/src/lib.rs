//! Durable hand-off: acknowledge Klikit fast, process from a separate worker,
//! and lose nothing when either side crashes.
//!
//! Klikit waits at most 10 s for a 2xx and recommends answering in under a
//! second and doing the real work in the background. Doing the work in the
//! background of the *same* process (a channel and a task, as in the
//! reference receiver of `klikit-cli`) loses every event still queued when that process
//! dies: the 2xx already completed the dedup claim, so Klikit never sends it
//! again. The durable hand-off closes that gap:
//!
//! ```text
//! Klikit        layer + handler (receiver)            broker (durable)      worker
//!   |-- POST id=E -->|                                      |                  |
//!   |                |-- claim(E) --> dedup store           |                  |
//!   |                |-- publish(body, Nats-Msg-Id: E) ---->| persisted        |
//!   |                |<------------------ PubAck -----------|                  |
//!   |<-- 200 --------|-- complete(E)                        |                  |
//!   |                |                                      |-- deliver E ---->|
//!   |                |                                      |       process(E), recorded under key E
//!   |                |                                      |<------- ack -----|
//! ```
//!
//! # Guarantees
//!
//! - **The 2xx means "persisted".** The handler answers 2xx only after the
//!   broker acknowledged the publish. If the publish fails or times out the
//!   handler answers 503 with `Retry-After`; the layer then *releases* the
//!   dedup claim and Klikit's retry is processed. So an event is never
//!   acknowledged to Klikit without being in the broker.
//! - **The broker deduplicates too.** The event id is the broker's message
//!   deduplication id, so a publish repeated within the broker's duplicate
//!   window (a Klikit retry after a publish that succeeded but whose PubAck
//!   was lost, two receiver replicas without a shared dedup store, an operator
//!   replay) is stored once. Keep that window at least as long as the layer's
//!   [retention](klikit_webhook::KlikitWebhookLayer::with_retention).
//! - **The worker acknowledges after processing.** The worker acks a message
//!   only after your processing returned `Ok`. A worker that crashes, hangs or
//!   loses its connection before the ack gets the message redelivered (after
//!   the consumer's ack wait), to itself after a restart or to another worker.
//!   Nothing is lost.
//! - **"Exactly once" needs one thing from you.** A worker can die *after*
//!   your side effect and *before* the ack; the broker then delivers the
//!   event again. No broker can prevent that window, so processing must be
//!   **idempotent on the event id**: record the id in the same transaction as
//!   the side effect (a unique key on `event_id` in the table you write to, an
//!   `INSERT ... ON CONFLICT DO NOTHING` whose row count tells whether to go
//!   on, a create-if-absent key in a KV store) and treat "already recorded" as
//!   success. With that, every event's effect is applied exactly once,
//!   although it may be *delivered* more than once. `tests/handoff_nats.rs`
//!   kills the worker in exactly that window and checks it.
//! - **What it does not give you:** ordering across redeliveries (a
//!   redelivered event arrives after later ones; compare `updated_at`, as
//!   Klikit's docs advise), and protection once the duplicate window or the
//!   stream's age limit has passed.
//!
//! # Backends
//!
//! | feature | module | broker |
//! |---|---|---|
//! | `nats` | `nats` | NATS JetStream: `JetStreamHandoff` publishes, `JetStreamWorker` processes |
//! | `outbox` | `postgres` | a Postgres outbox table (tokio-postgres, deadpool-postgres pool): `PostgresOutbox` enqueues, `OutboxWorker` processes |
//!
//! The Postgres outbox needs no broker when the dedup store is already a
//! `PostgresStore`, and goes one step further than a broker: the queued event
//! and the dedup "done" mark commit in **one transaction**, and the worker
//! hands your closure its own transaction, so effects written to the same
//! database commit together with the "processed" mark and happen exactly once
//! without an idempotency key. Workers take rows with `FOR UPDATE SKIP
//! LOCKED`, each in a transaction of its own: a killed worker's row is
//! pending again once its lease ends, and parallel workers never share a
//! row. Every attempt is counted before it runs, so a row that fails,
//! panics or kills its worker every time is moved to a dead-letter table
//! after the last attempt instead of holding up the rows behind it.
//! `tests/handoff_postgres.rs` kills workers mid-row and checks every
//! event's effect exists exactly once, and puts a poison row among good
//! ones.
//!
//! The default feature `axum` adds each engine's `receive`, a ready-made
//! axum handler, and `IntoResponse` for its error.
//!
//! Both engines live in this one crate, behind one feature each, because
//! they share what a hand-off is: [`ProcessError`] (the worker's
//! retry-or-give-up answer), the 200/503 answer of the `receive` handlers,
//! and the worker's retry backoff.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod common;
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub mod nats;

#[cfg(feature = "outbox")]
#[cfg_attr(docsrs, doc(cfg(feature = "outbox")))]
pub mod postgres;

pub use common::ProcessError;
