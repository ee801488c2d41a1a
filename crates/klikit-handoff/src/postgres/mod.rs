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
//! - [`OutboxWorker`] is the processing side: it counts an attempt of the
//!   oldest pending row (`FOR UPDATE SKIP LOCKED`) in a statement of its own,
//!   then, in the row's own transaction, calls your async closure **with
//!   that transaction** (a [`deadpool_postgres::Transaction`], which
//!   dereferences to a [`tokio_postgres::Transaction`]), marks the row
//!   processed and commits.
//!   A row that fails, panics or kills its worker on every attempt moves to
//!   a [dead-letter table](#dead-letters) after the last one, so it never
//!   holds up the rows behind it.
//!
//! See the [module docs](crate) for the overall guarantees.
//!
//! # Driver
//!
//! Everything runs on [tokio-postgres](tokio_postgres) through a
//! [deadpool-postgres](deadpool_postgres) pool, the driver and pool of
//! [`PostgresStore`](klikit_webhook::PostgresStore): build the outbox on the
//! store's pool (`PostgresOutbox::new(store.pool().clone())`) so that one
//! pool serves both. Both crates are re-exported here
//! ([`tokio_postgres`], [`deadpool_postgres`]) so that your code names the
//! very versions this crate uses. Statements the outbox runs itself are
//! prepared once per connection, through the pool's statement cache.
//!
//! Your code meets the driver in two places:
//!
//! - [`PostgresOutbox::enqueue_in`] takes `&tokio_postgres::Transaction`:
//!   queue the event inside a transaction of yours;
//! - the [`OutboxWorker`]'s closure receives `&deadpool_postgres::Transaction`:
//!   write your effects through it (`tx.execute(...)`, `tx.query_one(...)`,
//!   or [`prepare_cached`](deadpool_postgres::Transaction::prepare_cached)
//!   for a statement run for every event).
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
//! For each row, the worker runs
//!
//! ```text
//! -- 1. claim, committed on its own: the attempt counts whatever happens next
//! UPDATE outbox SET attempts = attempts + 1, available_at = now() + <lease>
//!   WHERE id = (SELECT id FROM outbox WHERE processed_at IS NULL AND available_at <= now()
//!               ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
//!   RETURNING id, event_id, event_type, body, attempts;
//! -- 2. the attempt
//! BEGIN;
//!   SELECT id FROM outbox WHERE id = <id> AND attempts = <claimed> FOR UPDATE SKIP LOCKED;
//!   SAVEPOINT a; your closure(tx, event);
//!   RELEASE a; UPDATE outbox SET processed_at = now() WHERE id = <id>;   -- on Ok
//!   -- or: ROLLBACK TO a; UPDATE outbox SET last_error = ..., available_at = now() + <delay> ...
//!   --     or, after the last attempt or a permanent error, move the row to the dead-letter table
//! COMMIT;
//! ```
//!
//! - A worker killed mid-row never commits that row: its writes are undone,
//!   its row lock vanishes with its connection, and the row is taken again
//!   when its [lease](OutboxWorker::with_lease) ends, by a restarted worker
//!   or another one. The rows it committed before stay processed.
//! - Several workers never take the same row: `SKIP LOCKED` hands each one
//!   rows nobody else holds, the lease keeps a claimed row away from the
//!   others until its worker has locked it, and the lock from then on.
//! - Every attempt is counted before it runs, so one that panics, leaves the
//!   transaction aborted (a statement failed and the closure swallowed the
//!   error), or never finishes because the worker died still counts; after
//!   [max attempts](OutboxWorker::with_max_attempts) the row is
//!   dead-lettered. The panic is caught and fails the attempt only; the
//!   aborted transaction is rolled back to the savepoint.
//! - One transaction per row, not per batch: a row that kills or hangs its
//!   worker would otherwise roll back the good rows of its batch with it,
//!   and charge each of them an attempt. The price is one commit per row.
//! - A closure that hangs holds its row, and its worker, until it returns
//!   (other workers go on with other rows). Bound your own calls
//!   (`tokio::time::timeout`, then [`ProcessError::retry`]).
//! - Side effects **written through the transaction you are given** commit in
//!   the same transaction as `processed_at`: either both happen or neither.
//!   For those effects processing is **exactly once**, with no idempotency
//!   key needed.
//! - Effects **outside** this database (an HTTP call to a POS, a message)
//!   can happen and then be followed by a crash before the commit; the event
//!   is then processed again. Make those idempotent on the event id, as with
//!   any broker (see the [module docs](crate)).
//!
//! # Dead letters
//!
//! A row is given up when its closure returns [`ProcessError::permanent`],
//! when its last attempt fails (an error, a panic, an aborted transaction),
//! or when its attempts are used up by attempts that never finished (the
//! worker died or hung on it; the row then does not run again). It is then
//! **moved**, in one statement, from the outbox to the dead-letter table
//! `<table>_dead` (see [`PostgresOutbox::dead_letter_table`]), with the
//! number of attempts made and the last error. The outbox keeps no row for
//! it, but its event id stays taken: [`enqueue`](PostgresOutbox::enqueue)
//! does not queue a redelivery of a dead-lettered event.
//!
//! Look at them with
//!
//! ```sql
//! SELECT event_id, event_type, attempts, last_error, dead_at FROM "klikit_webhook_outbox_dead" ORDER BY dead_at;
//! ```
//!
//! and, once what made them fail is fixed, replay one with
//! [`PostgresOutbox::replay_dead_letter`]: it moves the row back into the
//! outbox with `attempts = 0` and its original `enqueued_at`, where a worker
//! takes it like any new row. The same for many rows, in SQL (the `WHERE`
//! clause chooses them):
//!
//! ```sql
//! WITH replayed AS (
//!   INSERT INTO "klikit_webhook_outbox" (event_id, event_type, body, enqueued_at)
//!     SELECT event_id, event_type, body, enqueued_at FROM "klikit_webhook_outbox_dead"
//!     WHERE dead_at > now() - interval '1 day'
//!     ON CONFLICT (event_id) DO NOTHING
//!     RETURNING event_id
//! )
//! DELETE FROM "klikit_webhook_outbox_dead" WHERE event_id IN (SELECT event_id FROM replayed);
//! ```
//!
//! One statement, so atomic; a dead letter whose event id the outbox holds
//! again (put there by hand) stays where it is.
//!
//! Nothing deletes dead letters; delete them yourself once dealt with
//! (`DELETE FROM "klikit_webhook_outbox_dead" WHERE ...`). A deleted dead
//! letter's event id is free again: a redelivery would be queued.
//!
//! # Table
//!
//! [`migrate`](PostgresOutbox::migrate) creates (name configurable and
//! validated like the store's; the dead-letter table is named after it):
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS "klikit_webhook_outbox" (
//!     id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
//!     event_id     text COLLATE "C" NOT NULL UNIQUE,   -- x-klikit-event-id
//!     event_type   text        NOT NULL,               -- x-klikit-event-type
//!     body         bytea       NOT NULL,               -- the verified raw body
//!     enqueued_at  timestamptz NOT NULL DEFAULT now(),
//!     available_at timestamptz NOT NULL DEFAULT now(), -- not before (retry delay, or a worker's lease)
//!     attempts     integer     NOT NULL DEFAULT 0,     -- attempts started so far
//!     last_error   text,                               -- why the last failed attempt failed
//!     processed_at timestamptz                         -- set by the worker's commit
//! );
//! CREATE INDEX IF NOT EXISTS "klikit_webhook_outbox_pending_idx"
//!     ON "klikit_webhook_outbox" (id) WHERE processed_at IS NULL;
//! CREATE TABLE IF NOT EXISTS "klikit_webhook_outbox_dead" (
//!     event_id     text COLLATE "C" PRIMARY KEY,       -- as in the outbox
//!     id           bigint      NOT NULL,               -- the row's id in the outbox
//!     event_type   text        NOT NULL,
//!     body         bytea       NOT NULL,
//!     enqueued_at  timestamptz NOT NULL,               -- when it was first queued
//!     attempts     integer     NOT NULL,               -- attempts made
//!     last_error   text        NOT NULL,               -- why it was given up
//!     dead_at      timestamptz NOT NULL DEFAULT now()  -- when it was given up
//! );
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
//! // One deadpool-postgres pool for the dedup store and the outbox.
//! let store = PostgresStore::connect("postgres://postgres@127.0.0.1:5432/app").await?;
//! store.migrate().await?;
//! let outbox = PostgresOutbox::new(store.pool().clone()).with_dedup(store, KlikitWebhookLayer::DEFAULT_RETENTION);
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
//! // Worker: the closure writes through the worker's transaction (`tx`, a
//! // `deadpool_postgres::Transaction`); the worker commits it.
//! OutboxWorker::new(&outbox)
//!     .run(|tx, event| {
//!         Box::pin(async move {
//!             let envelope = event.payload().map_err(ProcessError::permanent)?;
//!             let orders = i64::try_from(envelope.orders.len()).unwrap_or(i64::MAX);
//!             tx.execute(
//!                 "INSERT INTO orders_seen (event_id, orders) VALUES ($1, $2)",
//!                 &[&event.id().as_str(), &orders],
//!             )
//!             .await
//!             .map_err(ProcessError::retry)?;
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

#[doc(no_inline)]
pub use deadpool_postgres;
pub use dedup::OutboxDedupStore;
pub use error::OutboxError;
pub use outbox::PostgresOutbox;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use outbox::receive;
#[doc(no_inline)]
pub use tokio_postgres;
pub use worker::OutboxWorker;

pub use crate::ProcessError;
