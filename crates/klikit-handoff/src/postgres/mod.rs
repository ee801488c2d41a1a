//! Durable hand-off through a Postgres outbox table.
//!
//! - [`PostgresOutbox`] is the receiver side:
//!   [`enqueue`](PostgresOutbox::enqueue) inserts the verified event into a
//!   queue table (`ON CONFLICT (event_id) DO NOTHING`, so a redelivery is
//!   never queued twice) and returns once the insert committed. Given the
//!   [`PostgresStore`](klikit_webhook::PostgresStore) (with [`with_dedup`](PostgresOutbox::with_dedup)), it
//!   marks the dedup claim done **in the same transaction**. With the `axum`
//!   feature, [`receive`] is a ready-made handler that answers
//!   `200 {"status":"received"}` after the commit and 503 with `Retry-After`
//!   otherwise.
//! - [`OutboxWorker`] is the processing side: in one transaction it takes a
//!   batch of pending rows with `FOR UPDATE SKIP LOCKED`, calls your async
//!   closure for each row **with that transaction's connection**, marks the
//!   rows processed and commits.
//!
//! See the [module docs](crate) for the overall guarantees.
//!
//! # Why the dedup "done" mark goes in the outbox transaction
//!
//! The layer completes its dedup claim *after* the handler answered 2xx. With
//! a broker that is a second, separate write; with the outbox in the same
//! database as the [`PostgresStore`](klikit_webhook::PostgresStore) it need not be.
//! [`PostgresOutbox::enqueue`] with [`with_dedup`](PostgresOutbox::with_dedup)
//! runs
//!
//! ```text
//! BEGIN;
//!   INSERT INTO outbox (event_id, event_type, body) VALUES (...) ON CONFLICT (event_id) DO NOTHING;
//!   INSERT INTO dedup ... done = true ... ON CONFLICT (event_id) DO UPDATE SET done = true ...;  -- PostgresStore::complete_event_in
//! COMMIT;
//! ```
//!
//! so the queued row and the "done" mark commit together or not at all:
//!
//! - a crash **before** the commit leaves neither: the claim is still in
//!   flight and expires, Klikit's retry is claimed and queued;
//! - a crash **after** the commit (before the 2xx reached Klikit, before the
//!   layer's own completion) leaves both: the retry is answered
//!   `duplicate-ignored` and the event is queued exactly once.
//!
//! No state "queued but still claimable" or "done but not queued" can be
//! observed by another transaction. Without [`with_dedup`](PostgresOutbox::with_dedup)
//! (another store, or none) the outbox's unique `event_id` still keeps a
//! redelivery from being queued twice as long as the processed row is kept
//! (see [`purge_processed`](PostgresOutbox::purge_processed)).
//!
//! The layer still completes (or, on a non-2xx answer, releases) its claim
//! afterwards. `PostgresStore::complete` only acts on a claim that is not done
//! yet, so it would report the claim as stale and the layer would log a
//! misleading "claim had expired and was taken over" warning for every event.
//! Give the layer [`PostgresOutbox::dedup_store`] instead of the bare store:
//! it is the same store, except that completing or releasing a claim that the
//! handler's transaction already completed *with the same token* counts as
//! success.
//!
//! Two limits: the layer's [signature deduplication](klikit_webhook::KlikitWebhookLayer::with_signature_dedup)
//! key (`sig:...`) is still completed by the layer after the answer, outside
//! the transaction (the handler does not know it); and a claim whose lease
//! expired while the handler ran (a handler slower than the layer's lease)
//! may have been taken over by a retry: that retry's enqueue then finds the
//! row already queued and does nothing, so the event is still queued once.
//!
//! # Why the worker passes you its transaction
//!
//! The worker's loop is
//!
//! ```text
//! BEGIN;
//!   SELECT id, event_id, event_type, body FROM outbox
//!     WHERE processed_at IS NULL AND failed_at IS NULL AND available_at <= now()
//!     ORDER BY id LIMIT <batch> FOR UPDATE SKIP LOCKED;
//!   -- for each row: SAVEPOINT; your closure(conn, event); RELEASE (or ROLLBACK TO on error)
//!   UPDATE outbox SET processed_at = now() WHERE id = ANY(<processed ids>);
//! COMMIT;
//! ```
//!
//! - A worker killed mid-batch never commits: its row locks vanish with its
//!   connection and the rows are pending again, for a restarted worker or
//!   another one.
//! - Several workers never take the same row: `SKIP LOCKED` hands each one
//!   rows nobody else holds.
//! - Side effects **written through the connection you are given** commit in
//!   the same transaction as `processed_at`: either both happen or neither.
//!   For those effects processing is **exactly once**, with no idempotency
//!   key needed.
//! - Effects **outside** this database (an HTTP call to a POS, a message)
//!   can happen and then be followed by a crash before the commit; the event
//!   is then processed again. Make those idempotent on the event id, as with
//!   any broker (see the [module docs](crate)).
//!
//! # Table
//!
//! [`migrate`](PostgresOutbox::migrate) creates (name configurable and
//! validated like the store's):
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS "klikit_webhook_outbox" (
//!     id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
//!     event_id     text COLLATE "C" NOT NULL UNIQUE,   -- x-klikit-event-id
//!     event_type   text        NOT NULL,               -- x-klikit-event-type
//!     body         bytea       NOT NULL,               -- the verified raw body
//!     enqueued_at  timestamptz NOT NULL DEFAULT now(),
//!     available_at timestamptz NOT NULL DEFAULT now(), -- not before (retry delay)
//!     attempts     integer     NOT NULL DEFAULT 0,     -- failed attempts so far
//!     last_error   text,
//!     processed_at timestamptz,                        -- set by the worker's commit
//!     failed_at    timestamptz                         -- given up (permanent failure)
//! );
//! CREATE INDEX IF NOT EXISTS "klikit_webhook_outbox_pending_idx"
//!     ON "klikit_webhook_outbox" (id) WHERE processed_at IS NULL AND failed_at IS NULL;
//! ```
//!
//! # Examples
//!
//! Receiver and worker (they can run in separate processes; they only share
//! the database):
//!
//! ```no_run
//! use axum::{Router, routing::post};
//! use klikit_handoff::postgres::{OutboxWorker, PostgresOutbox, ProcessError, receive};
//! use klikit_webhook::{KlikitWebhookLayer, PostgresStore, WebhookSecret};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/app").await?;
//! let store = PostgresStore::new(pool.clone());
//! store.migrate().await?;
//! let outbox = PostgresOutbox::new(pool.clone()).with_dedup(store, KlikitWebhookLayer::DEFAULT_RETENTION);
//! outbox.migrate().await?;
//!
//! // Receiver: 200 only once the event and the dedup "done" mark committed.
//! let secret = WebhookSecret::from_env("KLIKIT_WEBHOOK_SECRET")?;
//! let app: Router = Router::new()
//!     .route("/webhooks/klikit", post(receive))
//!     .route_layer(KlikitWebhookLayer::new(secret).with_store(outbox.dedup_store()?))
//!     .with_state(outbox.clone());
//! # let _ = app;
//!
//! // Worker: the closure writes through the worker's transaction.
//! OutboxWorker::new(&outbox)
//!     .run(|conn, event| {
//!         Box::pin(async move {
//!             let envelope = event.payload().map_err(ProcessError::permanent)?;
//!             sqlx::query("INSERT INTO orders_seen (event_id, orders) VALUES ($1, $2)")
//!                 .bind(event.id().as_str())
//!                 .bind(envelope.orders.len() as i64)
//!                 .execute(conn)
//!                 .await
//!                 .map_err(ProcessError::retry)?;
//!             Ok(())
//!         })
//!     })
//!     .await?;
//! # Ok(())
//! # }
//! ```

mod dedup;
mod error;
mod outbox;
mod worker;

pub use dedup::OutboxDedupStore;
pub use error::OutboxError;
pub use outbox::PostgresOutbox;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use outbox::receive;
pub use worker::OutboxWorker;

pub use crate::ProcessError;
