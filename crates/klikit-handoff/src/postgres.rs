//! Durable hand-off through a Postgres outbox table.
//!
//! - [`PostgresOutbox`] is the receiver side:
//!   [`enqueue`](PostgresOutbox::enqueue) inserts the verified event into a
//!   queue table (`ON CONFLICT (event_id) DO NOTHING`, so a redelivery is
//!   never queued twice) and returns once the insert committed. Given the
//!   [`PostgresStore`] (with [`with_dedup`](PostgresOutbox::with_dedup)), it
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
//! database as the [`PostgresStore`] it need not be.
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

use std::{fmt, future::Future, pin::pin, sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};
use tracing::Instrument;

use crate::common::RetryBackoff;
use klikit_webhook::{
    ConfigError, EventId, EventType, KlikitEvent, PostgresStore,
    store::{Claim, DedupStore, Lease, StoreError, sql::validate_identifier, ttl_millis},
};

/// Queues verified Klikit events in a Postgres table (the outbox).
///
/// Cheap to clone (one `Arc` and a pool handle); clone it into every
/// handler. See the [module docs](self) for the table, the transaction it
/// shares with the dedup store, and an example.
#[derive(Clone)]
#[must_use]
pub struct PostgresOutbox {
    pool: PgPool,
    inner: Arc<OutboxConfig>,
}

#[derive(Clone)]
struct OutboxConfig {
    schema: Option<Arc<str>>,
    table: Arc<str>,
    sql: Arc<Statements>,
    dedup: Option<(PostgresStore, Duration)>,
    enqueue_timeout: Duration,
}

struct Statements {
    create_table: String,
    create_index: String,
    enqueue: String,
    take: String,
    mark_processed: String,
    mark_retry: String,
    mark_failed: String,
    purge: String,
    pending: String,
}

impl Statements {
    fn new(schema: Option<&str>, table: &str) -> Self {
        let t = match schema {
            Some(schema) => format!(r#""{schema}"."{table}""#),
            None => format!(r#""{table}""#),
        };
        let pending = "processed_at IS NULL AND failed_at IS NULL";
        Self {
            create_table: format!(
                "CREATE TABLE IF NOT EXISTS {t} (\
                 id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
                 event_id text COLLATE \"C\" NOT NULL UNIQUE, \
                 event_type text NOT NULL, \
                 body bytea NOT NULL, \
                 enqueued_at timestamptz NOT NULL DEFAULT now(), \
                 available_at timestamptz NOT NULL DEFAULT now(), \
                 attempts integer NOT NULL DEFAULT 0, \
                 last_error text, \
                 processed_at timestamptz, \
                 failed_at timestamptz)"
            ),
            create_index: format!(r#"CREATE INDEX IF NOT EXISTS "{table}_pending_idx" ON {t} (id) WHERE {pending}"#),
            enqueue: format!(
                "INSERT INTO {t} (event_id, event_type, body) VALUES ($1, $2, $3) ON CONFLICT (event_id) DO NOTHING"
            ),
            take: format!(
                "SELECT id, event_id, event_type, body, attempts FROM {t} \
                 WHERE {pending} AND available_at <= now() \
                 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
            ),
            mark_processed: format!("UPDATE {t} SET processed_at = now() WHERE id = ANY($1)"),
            mark_retry: format!(
                "UPDATE {t} SET attempts = attempts + 1, last_error = $2, \
                 available_at = now() + $3::bigint * interval '1 millisecond' WHERE id = $1"
            ),
            mark_failed: format!(
                "UPDATE {t} SET attempts = attempts + 1, last_error = $2, failed_at = now() WHERE id = $1"
            ),
            purge: format!(
                "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} \
                 WHERE processed_at < now() - $1::bigint * interval '1 millisecond' \
                 LIMIT $2 FOR UPDATE SKIP LOCKED)"
            ),
            pending: format!("SELECT count(*) FROM {t} WHERE {pending}"),
        }
    }
}

fn query(sql: &str) -> sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(AssertSqlSafe(sql))
}

impl PostgresOutbox {
    /// The default table name.
    pub const DEFAULT_TABLE: &'static str = "klikit_webhook_outbox";
    /// The default time limit of one [`enqueue`](Self::enqueue), commit
    /// included: 3 s. The layer may already have spent up to 5 s reading the
    /// body, and Klikit stops waiting at 10 s; a 503 that arrives in time is
    /// retried sooner than a 200 that arrives late.
    pub const DEFAULT_ENQUEUE_TIMEOUT: Duration = Duration::from_secs(3);
    /// How many processed rows [`purge_processed`](Self::purge_processed)
    /// deletes per statement.
    pub const PURGE_BATCH: i64 = 1000;

    /// An outbox in the table [`DEFAULT_TABLE`](Self::DEFAULT_TABLE) of
    /// `pool`'s database. Call [`migrate`](Self::migrate) (once) before the
    /// first delivery.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            inner: Arc::new(OutboxConfig {
                schema: None,
                table: Arc::from(Self::DEFAULT_TABLE),
                sql: Arc::new(Statements::new(None, Self::DEFAULT_TABLE)),
                dedup: None,
                enqueue_timeout: Self::DEFAULT_ENQUEUE_TIMEOUT,
            }),
        }
    }

    fn config_mut(&mut self) -> &mut OutboxConfig {
        Arc::make_mut(&mut self.inner)
    }

    /// Uses the table `table` instead of [`DEFAULT_TABLE`](Self::DEFAULT_TABLE).
    ///
    /// The name is quoted, so it is case-sensitive. Names up to 51 bytes keep
    /// the index name (`<table>_pending_idx`) within Postgres' 63 bytes.
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidIdentifier`] unless `table` matches
    /// `[A-Za-z_][A-Za-z0-9_]*` and is at most 63 bytes long.
    pub fn with_table(mut self, table: &str) -> Result<Self, ConfigError> {
        validate_identifier(table)?;
        let config = self.config_mut();
        config.table = Arc::from(table);
        config.sql = Arc::new(Statements::new(config.schema.as_deref(), table));
        Ok(self)
    }

    /// Puts the table in `schema` (which must exist) instead of the first
    /// schema of the `search_path`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidIdentifier`] unless `schema` matches
    /// `[A-Za-z_][A-Za-z0-9_]*` and is at most 63 bytes long.
    pub fn with_schema(mut self, schema: &str) -> Result<Self, ConfigError> {
        validate_identifier(schema)?;
        let config = self.config_mut();
        config.schema = Some(Arc::from(schema));
        config.sql = Arc::new(Statements::new(Some(schema), &config.table));
        Ok(self)
    }

    /// Marks the dedup claim done, remembered for `retention`, in the same
    /// transaction as every [`enqueue`](Self::enqueue) (see the
    /// [module docs](self)).
    ///
    /// `store` must be the layer's store and live in the same database as
    /// this outbox (the transaction runs on this outbox's pool). Pass the
    /// layer's [retention](klikit_webhook::KlikitWebhookLayer::with_retention)
    /// ([`KlikitWebhookLayer::DEFAULT_RETENTION`](klikit_webhook::KlikitWebhookLayer::DEFAULT_RETENTION) unless you changed it), and
    /// give the layer [`dedup_store`](Self::dedup_store).
    pub fn with_dedup(mut self, store: PostgresStore, retention: Duration) -> Self {
        self.config_mut().dedup = Some((store, retention));
        self
    }

    /// The time limit of one [`enqueue`](Self::enqueue), commit included
    /// (default [`DEFAULT_ENQUEUE_TIMEOUT`](Self::DEFAULT_ENQUEUE_TIMEOUT)).
    pub fn with_enqueue_timeout(mut self, timeout: Duration) -> Self {
        self.config_mut().enqueue_timeout = timeout;
        self
    }

    /// The store to give the layer when [`with_dedup`](Self::with_dedup) is
    /// set: see [`OutboxDedupStore`].
    ///
    /// # Errors
    ///
    /// [`OutboxError::NoDedupStore`] without [`with_dedup`](Self::with_dedup).
    pub fn dedup_store(&self) -> Result<OutboxDedupStore, OutboxError> {
        match &self.inner.dedup {
            Some((store, _)) => Ok(OutboxDedupStore { store: store.clone() }),
            None => Err(OutboxError::NoDedupStore),
        }
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.inner.table
    }

    /// The schema, if one was set.
    pub fn schema(&self) -> Option<&str> {
        self.inner.schema.as_deref()
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates the table and its index if they do not exist (the SQL is in
    /// the [module docs](self)). Safe to run from several instances at once:
    /// it holds a transaction-level advisory lock named after the table.
    ///
    /// It does not create the dedup store's table; run
    /// [`PostgresStore::migrate`] for that.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] if a statement fails, for instance for lack
    /// of the `CREATE` privilege.
    pub async fn migrate(&self) -> Result<(), OutboxError> {
        let config = &self.inner;
        let lock_name = format!(
            "klikit_webhook.outbox.migrate.{}.{}",
            config.schema.as_deref().unwrap_or(""),
            config.table
        );
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(lock_name)
            .execute(&mut *tx)
            .await?;
        for statement in [&config.sql.create_table, &config.sql.create_index] {
            query(statement).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Queues the event and, with [`with_dedup`](Self::with_dedup), marks its
    /// dedup claim done, in one transaction; returns once it committed.
    ///
    /// Returns `true` if the event was queued now and `false` if a row with
    /// the same event id was already there (a redelivery: nothing changes in
    /// the outbox). Answer Klikit's 2xx only after this returned `Ok`.
    ///
    /// # Errors
    ///
    /// - [`OutboxError::Database`] / [`OutboxError::Store`] if a statement
    ///   or the commit failed: nothing was committed;
    /// - [`OutboxError::Timeout`] if it did not finish within the
    ///   [enqueue timeout](Self::with_enqueue_timeout). The commit may still
    ///   have happened; then the retry is answered as a duplicate (with
    ///   [`with_dedup`](Self::with_dedup)) or not queued again.
    pub async fn enqueue(&self, event: &KlikitEvent) -> Result<bool, OutboxError> {
        let timeout = self.inner.enqueue_timeout;
        let work = async {
            let mut tx = self.pool.begin().await?;
            let queued = self.enqueue_in(&mut tx, event).await?;
            tx.commit().await?;
            Ok::<_, OutboxError>(queued)
        };
        let queued = match tokio::time::timeout(timeout, work).await {
            Ok(result) => result?,
            Err(_) => return Err(OutboxError::Timeout(timeout)),
        };
        tracing::debug!(event_id = %event.id(), queued, table = %self.inner.table, "klikit event handed off to the outbox");
        Ok(queued)
    }

    /// [`enqueue`](Self::enqueue) inside **your** transaction: queues the
    /// event and, with [`with_dedup`](Self::with_dedup), marks the dedup
    /// claim done, through `conn`, without committing.
    ///
    /// Use it to write more in the same transaction (your own record of the
    /// delivery, say). Commit before answering 2xx. Returns whether the
    /// event was queued now (`false`: it was already in the outbox).
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] or [`OutboxError::Store`] if a statement
    /// failed; roll the transaction back.
    pub async fn enqueue_in(&self, conn: &mut PgConnection, event: &KlikitEvent) -> Result<bool, OutboxError> {
        let config = &self.inner;
        // Outbox first, then the dedup row: every path takes the two locks
        // in this order, so concurrent deliveries of one id cannot deadlock.
        let queued = query(&config.sql.enqueue)
            .bind(event.id().as_str())
            .bind(event.event_type().as_str())
            .bind(event.body().as_ref())
            .execute(&mut *conn)
            .await?
            .rows_affected()
            == 1;
        if let Some((store, retention)) = &config.dedup {
            store.complete_event_in(conn, event.id(), *retention).await?;
        }
        Ok(queued)
    }

    /// How many events wait to be processed (neither processed nor given
    /// up), including those waiting for a retry delay.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] if the query fails.
    pub async fn pending(&self) -> Result<i64, OutboxError> {
        Ok(sqlx::query_scalar(AssertSqlSafe(self.inner.sql.pending.as_str()))
            .fetch_one(&self.pool)
            .await?)
    }

    /// Deletes the rows processed more than `older_than` ago,
    /// [`PURGE_BATCH`](Self::PURGE_BATCH) per statement, and returns how many
    /// it deleted. Rows given up on (`failed_at`) are kept for inspection.
    ///
    /// Keep processed rows at least as long as the layer's retention: while a
    /// row is there, a redelivery of its event id is not queued again, even
    /// without [`with_dedup`](Self::with_dedup) or once the dedup record is
    /// gone.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] if a statement fails; rows deleted by earlier
    /// batches stay deleted.
    pub async fn purge_processed(&self, older_than: Duration) -> Result<u64, OutboxError> {
        let mut total = 0;
        loop {
            let deleted = query(&self.inner.sql.purge)
                .bind(ttl_millis(older_than))
                .bind(Self::PURGE_BATCH)
                .execute(&self.pool)
                .await?
                .rows_affected();
            total += deleted;
            if deleted < Self::PURGE_BATCH.unsigned_abs() {
                return Ok(total);
            }
        }
    }
}

impl fmt::Debug for PostgresOutbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config = &self.inner;
        f.debug_struct("PostgresOutbox")
            .field("schema", &config.schema)
            .field("table", &config.table)
            .field("dedup", &config.dedup)
            .field("enqueue_timeout", &config.enqueue_timeout)
            .finish_non_exhaustive()
    }
}

/// The layer's store when the handler completes claims in its outbox
/// transaction ([`PostgresOutbox::with_dedup`]).
///
/// It is the [`PostgresStore`] given to `with_dedup`, with one difference:
/// [`complete`](DedupStore::complete) and [`release`](DedupStore::release)
/// of a claim that is already **done with the same token** return `true`
/// instead of `false`. That state means "the handler's transaction completed
/// this very claim", not "the lease expired and was taken over", so the layer
/// logs no misleading warning:
///
/// - after a 2xx, the layer's `complete` finds its claim done: success, and
///   nothing changes;
/// - after a non-2xx answer *following* a committed enqueue (the handler
///   failed after the commit), the layer's `release` finds its claim done:
///   the claim is **not** released (the event is queued; Klikit's retry is
///   answered as a duplicate), and this is logged at `INFO`.
///
/// The extra check is one more query, made only when the plain statement
/// changed nothing. A stale lease (another token) still returns `false`.
///
/// Because a second `complete` of the same lease returns `true`, this type
/// deliberately fails the conformance suite's `complete_is_final` check; use
/// the bare [`PostgresStore`] anywhere else.
#[derive(Clone, Debug)]
pub struct OutboxDedupStore {
    store: PostgresStore,
}

impl OutboxDedupStore {
    /// The underlying store.
    pub fn store(&self) -> &PostgresStore {
        &self.store
    }
}

#[async_trait]
impl DedupStore for OutboxDedupStore {
    async fn claim(&self, event_id: &EventId, lease: Duration) -> klikit_webhook::store::Result<Claim> {
        self.store.claim(event_id, lease).await
    }

    async fn complete(&self, lease: &Lease, retain: Duration) -> klikit_webhook::store::Result<bool> {
        if self.store.complete(lease, retain).await? {
            return Ok(true);
        }
        let done = self.store.is_completed(lease).await?;
        if done {
            tracing::trace!("claim already completed by the handler's outbox transaction");
        }
        Ok(done)
    }

    async fn release(&self, lease: &Lease) -> klikit_webhook::store::Result<bool> {
        if self.store.release(lease).await? {
            return Ok(true);
        }
        let done = self.store.is_completed(lease).await?;
        if done {
            tracing::info!(
                "the handler failed after its outbox transaction committed: the event is queued and its claim \
                 stays done; the retry is answered as a duplicate"
            );
        }
        Ok(done)
    }
}

/// The outbox could not take the event, or the worker could not run: do not
/// answer Klikit with a 2xx.
///
/// With the `axum` feature it is a response: 503 with `Retry-After: 5` and
/// `{"error":"event hand-off unavailable"}` (the details are logged, not
/// sent). The layer then releases the dedup claim and Klikit retries.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// A statement, the connection or the commit failed.
    #[error("outbox database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Marking the dedup claim done failed.
    #[error("outbox dedup completion failed: {0}")]
    Store(#[from] StoreError),
    /// The enqueue did not finish in time.
    #[error("the outbox enqueue did not finish within {0:?}")]
    Timeout(Duration),
    /// [`PostgresOutbox::dedup_store`] without [`PostgresOutbox::with_dedup`].
    #[error("the outbox has no dedup store; call PostgresOutbox::with_dedup first")]
    NoDedupStore,
}

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl axum::response::IntoResponse for OutboxError {
    fn into_response(self) -> axum::response::Response {
        crate::common::answer::<(), _>(Err(self))
    }
}

/// An axum handler that queues the event in the outbox and answers Klikit.
///
/// - `200 {"status":"received"}` once the enqueue committed (the layer then
///   completes the dedup claim, which [`PostgresOutbox::with_dedup`] already
///   did in the same transaction);
/// - `503` with `Retry-After: 5` if it did not (the layer releases the claim
///   and Klikit retries); see [`OutboxError`].
///
/// Route it behind [`KlikitWebhookLayer`](klikit_webhook::KlikitWebhookLayer) with a [`PostgresOutbox`] as the
/// state, or as a part of your state through `axum::extract::FromRef`. See
/// the [module docs](self) for an example.
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub async fn receive(
    axum::extract::State(outbox): axum::extract::State<PostgresOutbox>,
    event: KlikitEvent,
) -> axum::response::Response {
    crate::common::answer(outbox.enqueue(&event).await)
}

pub use crate::ProcessError;

/// Processes queued events from the outbox table.
///
/// Each [`process_batch`](Self::process_batch) is one transaction:
///
/// 1. take up to [batch size](Self::with_batch_size) pending rows, oldest
///    first, with `FOR UPDATE SKIP LOCKED` (rows another worker holds are
///    skipped, never waited for);
/// 2. for each row, in a savepoint, call your closure with the transaction's
///    connection and the rebuilt [`KlikitEvent`]:
///
///    | closure returned | the savepoint | the row |
///    |---|---|---|
///    | `Ok(())` | released (your writes stay) | `processed_at = now()` |
///    | [`ProcessError::retry`] | rolled back | `attempts + 1`, available again after a growing delay; given up (`failed_at`) after [max attempts](Self::with_max_attempts) |
///    | [`ProcessError::permanent`] | rolled back | `failed_at = now()`, never taken again |
///
/// 3. commit. A worker that dies, hangs up or panics before the commit
///    leaves every row of its batch pending and every write of the batch
///    undone; the next worker takes them.
///
/// Several workers (tasks or processes) may run at once. See the
/// [module docs](self) for why effects written through the connection happen
/// exactly once, and what that needs for effects elsewhere.
///
/// The closure has the signature
/// `for<'c> Fn(&'c mut PgConnection, KlikitEvent) -> BoxFuture<'c, Result<(), ProcessError>>`:
/// write it `|conn, event| Box::pin(async move { ... })`, or
/// `|conn, event| Box::pin(my_async_fn(conn, event))`. Pass it straight to
/// [`run`](Self::run) so that Rust infers that signature; a closure first
/// stored in a `let` needs it spelled out (through a generic helper function
/// with that bound).
///
/// The rebuilt event's [`secret_index`](KlikitEvent::secret_index) is 0.
#[derive(Clone)]
#[must_use]
pub struct OutboxWorker {
    outbox: PostgresOutbox,
    batch: i64,
    poll_interval: Duration,
    max_attempts: i32,
    retry: RetryBackoff,
}

impl OutboxWorker {
    /// The default number of rows per transaction: 10.
    pub const DEFAULT_BATCH: i64 = 10;
    /// The default wait after an empty batch (or a database error) before
    /// looking again: 500 ms.
    pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);
    /// The default number of failed attempts ([`ProcessError::retry`]) before
    /// an event is given up: 10.
    pub const DEFAULT_MAX_ATTEMPTS: i32 = 10;
    /// The default delay before the first retry: 1 s, doubled on each further
    /// failure.
    pub const DEFAULT_RETRY_DELAY: Duration = RetryBackoff::DEFAULT_FIRST;
    /// The default longest delay between retries: 5 minutes.
    pub const DEFAULT_MAX_RETRY_DELAY: Duration = RetryBackoff::DEFAULT_MAX;

    /// A worker on `outbox`'s table. Nothing is sent to the database until
    /// [`process_batch`](Self::process_batch) or [`run`](Self::run).
    pub fn new(outbox: &PostgresOutbox) -> Self {
        Self {
            outbox: outbox.clone(),
            batch: Self::DEFAULT_BATCH,
            poll_interval: Self::DEFAULT_POLL_INTERVAL,
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
            retry: RetryBackoff::default(),
        }
    }

    /// How many rows one transaction takes (default
    /// [`DEFAULT_BATCH`](Self::DEFAULT_BATCH), at least 1). A larger batch
    /// commits less often; its rows stay locked (and its effects invisible)
    /// until the whole batch is processed.
    pub fn with_batch_size(mut self, batch: usize) -> Self {
        self.batch = i64::try_from(batch.max(1)).unwrap_or(i64::MAX);
        self
    }

    /// How long [`run`](Self::run) waits after an empty batch (default
    /// [`DEFAULT_POLL_INTERVAL`](Self::DEFAULT_POLL_INTERVAL)).
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How many failed attempts an event gets before it is given up (default
    /// [`DEFAULT_MAX_ATTEMPTS`](Self::DEFAULT_MAX_ATTEMPTS), at least 1).
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = i32::try_from(attempts.max(1)).unwrap_or(i32::MAX);
        self
    }

    /// The delays after [`ProcessError::retry`]: `first` after the first
    /// failure, doubled after each further one, never more than `max`
    /// (defaults [`DEFAULT_RETRY_DELAY`](Self::DEFAULT_RETRY_DELAY) and
    /// [`DEFAULT_MAX_RETRY_DELAY`](Self::DEFAULT_MAX_RETRY_DELAY)).
    pub fn with_retry_delay(mut self, first: Duration, max: Duration) -> Self {
        self.retry = RetryBackoff::new(first, max);
        self
    }

    /// Processes one batch in one transaction (see the [type docs](Self))
    /// and returns how many rows it took (0: nothing pending).
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] if a statement or the commit failed; the
    /// transaction is rolled back and its rows are pending again.
    pub async fn process_batch<F>(&self, process: &F) -> Result<usize, OutboxError>
    where
        F: for<'c> Fn(&'c mut PgConnection, KlikitEvent) -> BoxFuture<'c, Result<(), ProcessError>>,
    {
        let sql = &self.outbox.inner.sql;
        let mut tx = self.outbox.pool.begin().await?;
        let rows: Vec<(i64, String, String, Vec<u8>, i32)> = sqlx::query_as(AssertSqlSafe(sql.take.as_str()))
            .bind(self.batch)
            .fetch_all(&mut *tx)
            .await?;
        let taken = rows.len();
        let mut processed = Vec::with_capacity(taken);
        for (id, event_id, event_type, body, attempts) in rows {
            let event = match EventId::new(&event_id) {
                Ok(event_id) => KlikitEvent::new(event_id, EventType::from_name(&event_type), Bytes::from(body)),
                Err(error) => {
                    tracing::error!(row = id, %error, "outbox row has an invalid event id; given up");
                    query(&sql.mark_failed)
                        .bind(id)
                        .bind(error.to_string())
                        .execute(&mut *tx)
                        .await?;
                    continue;
                }
            };
            let span = tracing::info_span!("klikit_outbox_worker", event_id = %event_id, row = id, attempts);
            if self
                .handle(&mut tx, id, attempts, event, process)
                .instrument(span)
                .await?
            {
                processed.push(id);
            }
        }
        if !processed.is_empty() {
            query(&sql.mark_processed).bind(processed).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(taken)
    }

    /// Runs `process` on one row in a savepoint and records the outcome;
    /// returns whether the row was processed.
    async fn handle<F>(
        &self,
        tx: &mut PgConnection,
        id: i64,
        attempts: i32,
        event: KlikitEvent,
        process: &F,
    ) -> Result<bool, OutboxError>
    where
        F: for<'c> Fn(&'c mut PgConnection, KlikitEvent) -> BoxFuture<'c, Result<(), ProcessError>>,
    {
        let sql = &self.outbox.inner.sql;
        let mut savepoint = Connection::begin(&mut *tx).await?;
        let outcome = process(&mut savepoint, event).await;
        let error = match outcome {
            Ok(()) => {
                savepoint.commit().await?;
                tracing::debug!("klikit event processed");
                return Ok(true);
            }
            Err(error) => {
                savepoint.rollback().await?;
                error
            }
        };
        if !error.is_retryable() || attempts.saturating_add(1) >= self.max_attempts {
            tracing::error!(%error, "processing failed; the event is given up (failed_at set)");
            query(&sql.mark_failed)
                .bind(id)
                .bind(error.to_string())
                .execute(&mut *tx)
                .await?;
        } else {
            let delay = self.retry.delay(i64::from(attempts));
            tracing::warn!(%error, retry_in = ?delay, "processing failed; the event will be taken again");
            query(&sql.mark_retry)
                .bind(id)
                .bind(error.to_string())
                .bind(ttl_millis(delay))
                .execute(&mut *tx)
                .await?;
        }
        Ok(false)
    }

    /// Processes events with `process` forever. Equivalent to
    /// [`run_until`](Self::run_until) with a shutdown that never comes.
    ///
    /// # Errors
    ///
    /// See [`run_until`](Self::run_until).
    pub async fn run<F>(&self, process: F) -> Result<(), OutboxError>
    where
        F: for<'c> Fn(&'c mut PgConnection, KlikitEvent) -> BoxFuture<'c, Result<(), ProcessError>>,
    {
        self.run_until(process, std::future::pending()).await
    }

    /// Processes batch after batch until `shutdown` completes, waiting the
    /// [poll interval](Self::with_poll_interval) after an empty batch.
    ///
    /// A batch in progress when `shutdown` completes is finished and
    /// committed first.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] if the **first** batch fails (a missing
    /// table, no connection at start-up: a configuration problem). Later
    /// failures are logged and retried after the poll interval; their rows
    /// are pending again.
    pub async fn run_until<F, S>(&self, process: F, shutdown: S) -> Result<(), OutboxError>
    where
        F: for<'c> Fn(&'c mut PgConnection, KlikitEvent) -> BoxFuture<'c, Result<(), ProcessError>>,
        S: Future<Output = ()>,
    {
        let table = &self.outbox.inner.table;
        let mut shutdown = pin!(shutdown);
        let mut first = true;
        tracing::info!(%table, "klikit outbox worker started");
        loop {
            let wait = match self.process_batch(&process).await {
                Ok(taken) => {
                    first = false;
                    if taken > 0 { None } else { Some(self.poll_interval) }
                }
                Err(error) if first => return Err(error),
                Err(error) => {
                    tracing::warn!(%error, %table, "outbox batch failed; retrying");
                    Some(self.poll_interval)
                }
            };
            let pause = tokio::time::sleep(wait.unwrap_or(Duration::ZERO));
            tokio::select! {
                biased;
                () = &mut shutdown => {
                    tracing::info!(%table, "klikit outbox worker stopped");
                    return Ok(());
                }
                () = pause => {}
            }
        }
    }
}

impl fmt::Debug for OutboxWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxWorker")
            .field("table", &self.outbox.table())
            .field("batch", &self.batch)
            .field("poll_interval", &self.poll_interval)
            .field("max_attempts", &self.max_attempts)
            .field("retry", &self.retry)
            .finish()
    }
}
