//! The receiver side: [`PostgresOutbox`] queues, [`receive`] answers Klikit.

use std::{fmt, sync::Arc, time::Duration};

use deadpool_postgres::Pool;
use klikit_webhook::{
    ConfigError, EventId, KlikitEvent, PostgresStore,
    store::{sql::validate_identifier, ttl_millis},
};
use tokio_postgres::Transaction;

use super::{OutboxDedupStore, OutboxError};

/// Queues verified Klikit events in a Postgres table (the outbox).
///
/// Cheap to clone (one `Arc` and a pool handle); clone it into every
/// handler. It runs its statements on a [`deadpool_postgres::Pool`]
/// (prepared once per connection, through the pool's statement cache). See the [module docs](super) for the table, the transaction it
/// shares with the dedup store, and an example.
#[derive(Clone)]
#[must_use]
pub struct PostgresOutbox {
    pub(super) pool: Pool,
    pub(super) inner: Arc<OutboxConfig>,
}

#[derive(Clone)]
pub(super) struct OutboxConfig {
    schema: Option<Arc<str>>,
    pub(super) table: Arc<str>,
    pub(super) dead_table: Arc<str>,
    pub(super) sql: Arc<Statements>,
    dedup: Option<(PostgresStore, Duration)>,
    enqueue_timeout: Duration,
}

pub(super) struct Statements {
    create_table: String,
    create_index: String,
    create_dead_table: String,
    enqueue: String,
    pub(super) claim: String,
    pub(super) lock: String,
    pub(super) mark_processed: String,
    pub(super) mark_retry: String,
    pub(super) dead_letter: String,
    replay: String,
    dead_exists: String,
    purge: String,
    pending: String,
}

/// The dead-letter table's name for the outbox table `table`.
fn dead_table_name(table: &str) -> String {
    format!("{table}_dead")
}

impl Statements {
    fn new(schema: Option<&str>, table: &str) -> Self {
        let quoted = |name: &str| match schema {
            Some(schema) => format!(r#""{schema}"."{name}""#),
            None => format!(r#""{name}""#),
        };
        let t = quoted(table);
        let d = quoted(&dead_table_name(table));
        let pending = "processed_at IS NULL";
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
                 processed_at timestamptz)"
            ),
            create_index: format!(r#"CREATE INDEX IF NOT EXISTS "{table}_pending_idx" ON {t} (id) WHERE {pending}"#),
            create_dead_table: format!(
                "CREATE TABLE IF NOT EXISTS {d} (\
                 event_id text COLLATE \"C\" PRIMARY KEY, \
                 id bigint NOT NULL, \
                 event_type text NOT NULL, \
                 body bytea NOT NULL, \
                 enqueued_at timestamptz NOT NULL, \
                 attempts integer NOT NULL, \
                 last_error text NOT NULL, \
                 dead_at timestamptz NOT NULL DEFAULT now())"
            ),
            // A dead letter keeps its event id taken, as a processed row does.
            enqueue: format!(
                "INSERT INTO {t} (event_id, event_type, body) SELECT $1::text, $2::text, $3::bytea \
                 WHERE NOT EXISTS (SELECT 1 FROM {d} WHERE event_id = $1) \
                 ON CONFLICT (event_id) DO NOTHING"
            ),
            // Committed on its own, before the attempt runs: the attempt is
            // counted whatever becomes of it, and the lease keeps other
            // workers away until this one holds the row lock.
            claim: format!(
                "UPDATE {t} SET attempts = attempts + 1, available_at = now() + $1::bigint * interval '1 millisecond' \
                 WHERE id = (SELECT id FROM {t} WHERE {pending} AND available_at <= now() \
                 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) \
                 RETURNING id, event_id, event_type, body, attempts, last_error"
            ),
            // `attempts` is the claim's token: another worker that claimed
            // the row after the lease ended has counted its own attempt.
            lock: format!("SELECT id FROM {t} WHERE id = $1 AND attempts = $2 AND {pending} FOR UPDATE SKIP LOCKED"),
            mark_processed: format!("UPDATE {t} SET processed_at = now() WHERE id = $1"),
            mark_retry: format!(
                "UPDATE {t} SET last_error = $3, available_at = now() + $2::bigint * interval '1 millisecond' \
                 WHERE id = $1"
            ),
            dead_letter: format!(
                "WITH dead AS (DELETE FROM {t} WHERE id = $1 AND attempts = $2 AND {pending} \
                 RETURNING id, event_id, event_type, body, enqueued_at) \
                 INSERT INTO {d} (event_id, id, event_type, body, enqueued_at, attempts, last_error) \
                 SELECT event_id, id, event_type, body, enqueued_at, $3::integer, $4::text FROM dead \
                 ON CONFLICT (event_id) DO UPDATE SET id = EXCLUDED.id, event_type = EXCLUDED.event_type, \
                 body = EXCLUDED.body, enqueued_at = EXCLUDED.enqueued_at, attempts = EXCLUDED.attempts, \
                 last_error = EXCLUDED.last_error, dead_at = now()"
            ),
            // As in the module docs: only what was queued again leaves the
            // dead-letter table.
            replay: format!(
                "WITH replayed AS (\
                 INSERT INTO {t} (event_id, event_type, body, enqueued_at) \
                 SELECT event_id, event_type, body, enqueued_at FROM {d} WHERE event_id = $1 \
                 ON CONFLICT (event_id) DO NOTHING RETURNING event_id) \
                 DELETE FROM {d} WHERE event_id IN (SELECT event_id FROM replayed)"
            ),
            dead_exists: format!("SELECT count(*) FROM {d} WHERE event_id = $1"),
            purge: format!(
                "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} \
                 WHERE processed_at < now() - $1::bigint * interval '1 millisecond' \
                 LIMIT $2 FOR UPDATE SKIP LOCKED)"
            ),
            pending: format!("SELECT count(*) FROM {t} WHERE {pending}"),
        }
    }
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
    ///
    /// With the dedup store in the same database, share its pool:
    /// `PostgresOutbox::new(store.pool().clone())` (see the
    /// [module docs](super)). Give the pool a
    /// [wait timeout](deadpool_postgres::PoolBuilder::wait_timeout) (and a
    /// create timeout): without one, a worker waits for a free connection
    /// for as long as it takes.
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            inner: Arc::new(OutboxConfig {
                schema: None,
                table: Arc::from(Self::DEFAULT_TABLE),
                dead_table: Arc::from(dead_table_name(Self::DEFAULT_TABLE)),
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
    /// The name is quoted, so it is case-sensitive. The dead-letter table is
    /// `<table>_dead` (see the [module docs](super)). Names up to 51 bytes keep
    /// the index name (`<table>_pending_idx`) within Postgres' 63 bytes.
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidIdentifier`] unless `table` matches
    /// `[A-Za-z_][A-Za-z0-9_]*` and is at most 58 bytes long, so that
    /// `<table>_dead` fits in 63 bytes (the error then names `<table>_dead`).
    pub fn with_table(mut self, table: &str) -> Result<Self, ConfigError> {
        validate_identifier(table)?;
        let dead_table = dead_table_name(table);
        validate_identifier(&dead_table)?;
        let config = self.config_mut();
        config.table = Arc::from(table);
        config.dead_table = Arc::from(dead_table);
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
    /// [module docs](super)).
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
            Some((store, _)) => Ok(OutboxDedupStore::new(store.clone())),
            None => Err(OutboxError::NoDedupStore),
        }
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.inner.table
    }

    /// The dead-letter table's name: the [table name](Self::table) followed
    /// by `_dead`, in the same schema.
    pub fn dead_letter_table(&self) -> &str {
        &self.inner.dead_table
    }

    /// The schema, if one was set.
    pub fn schema(&self) -> Option<&str> {
        self.inner.schema.as_deref()
    }

    /// The connection pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Creates the table, its index and the dead-letter table if they do not
    /// exist (the SQL is in the [module docs](super)). Safe to run from several instances at once:
    /// it holds a transaction-level advisory lock named after the table.
    ///
    /// It does not create the dedup store's table; run
    /// [`PostgresStore::migrate`] for that.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] if a statement fails, for instance for lack
    /// of the `CREATE` privilege; [`OutboxError::Pool`] without a connection.
    pub async fn migrate(&self) -> Result<(), OutboxError> {
        let config = &self.inner;
        let lock_name = format!(
            "klikit_webhook.outbox.migrate.{}.{}",
            config.schema.as_deref().unwrap_or(""),
            config.table
        );
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1::text))", &[&lock_name])
            .await?;
        for statement in [
            &config.sql.create_table,
            &config.sql.create_index,
            &config.sql.create_dead_table,
        ] {
            tx.batch_execute(statement).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Queues the event and, with [`with_dedup`](Self::with_dedup), marks its
    /// dedup claim done, in one transaction; returns once it committed.
    ///
    /// Returns `true` if the event was queued now and `false` if a row with
    /// the same event id was already there, or in the dead-letter table (a
    /// redelivery: nothing changes in the outbox). Answer Klikit's 2xx only after this returned `Ok`.
    ///
    /// # Errors
    ///
    /// - [`OutboxError::Database`] / [`OutboxError::Store`] if a statement
    ///   or the commit failed, [`OutboxError::Pool`] if the pool had no
    ///   connection to give: nothing was committed;
    /// - [`OutboxError::Timeout`] if it did not finish within the
    ///   [enqueue timeout](Self::with_enqueue_timeout). The commit may still
    ///   have happened; then the retry is answered as a duplicate (with
    ///   [`with_dedup`](Self::with_dedup)) or not queued again.
    pub async fn enqueue(&self, event: &KlikitEvent) -> Result<bool, OutboxError> {
        let timeout = self.inner.enqueue_timeout;
        let work = async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            // The pool's statement cache: one round trip per statement once
            // the connection has prepared it.
            let insert = tx.prepare_cached(&self.inner.sql.enqueue).await?;
            let queued = self.enqueue_with(&tx, &insert, event).await?;
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
    /// claim done, through `tx`, without committing.
    ///
    /// `tx` is a [`tokio_postgres::Transaction`]; a
    /// [`deadpool_postgres::Transaction`] (what `client.transaction()` gives
    /// on a connection of a [`deadpool_postgres::Pool`]) dereferences to
    /// one, so pass `&tx` either way. It must be a connection to this
    /// outbox's database.
    ///
    /// Use it to write more in the same transaction (your own record of the
    /// delivery, say). Commit before answering 2xx. Returns whether the
    /// event was queued now (`false`: it was already in the outbox).
    ///
    /// ```no_run
    /// # use klikit_handoff::postgres::{OutboxError, PostgresOutbox};
    /// # use klikit_webhook::KlikitEvent;
    /// async fn handle(outbox: &PostgresOutbox, event: &KlikitEvent) -> Result<bool, OutboxError> {
    ///     let mut client = outbox.pool().get().await?;
    ///     let tx = client.transaction().await?;
    ///     let queued = outbox.enqueue_in(&tx, event).await?;
    ///     tx.execute("INSERT INTO deliveries (event_id) VALUES ($1)", &[&event.id().as_str()])
    ///         .await?;
    ///     tx.commit().await?;
    ///     Ok(queued)
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] or [`OutboxError::Store`] if a statement
    /// failed; roll the transaction back (or drop it, which rolls it back).
    pub async fn enqueue_in(&self, tx: &Transaction<'_>, event: &KlikitEvent) -> Result<bool, OutboxError> {
        let insert = tx.prepare(&self.inner.sql.enqueue).await?;
        self.enqueue_with(tx, &insert, event).await
    }

    /// The statements of [`enqueue_in`](Self::enqueue_in), with the outbox's
    /// insert already prepared on `tx`'s connection.
    async fn enqueue_with(
        &self,
        tx: &Transaction<'_>,
        insert: &tokio_postgres::Statement,
        event: &KlikitEvent,
    ) -> Result<bool, OutboxError> {
        // Outbox first, then the dedup row: every path takes the two locks
        // in this order, so concurrent deliveries of one id cannot deadlock.
        let queued = tx
            .execute(
                insert,
                &[
                    &event.id().as_str(),
                    &event.event_type().as_str(),
                    &event.body().as_ref(),
                ],
            )
            .await?
            == 1;
        if let Some((store, retention)) = &self.inner.dedup {
            store.complete_event_in(tx, event.id(), *retention).await?;
        }
        Ok(queued)
    }

    /// How many events wait to be processed (not processed, not
    /// dead-lettered), including those waiting for a retry delay and those a
    /// worker is processing.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] if the query fails, [`OutboxError::Pool`]
    /// without a connection.
    pub async fn pending(&self) -> Result<i64, OutboxError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(&self.inner.sql.pending).await?;
        Ok(client.query_one(&statement, &[]).await?.try_get(0)?)
    }

    /// Deletes the rows processed more than `older_than` ago,
    /// [`PURGE_BATCH`](Self::PURGE_BATCH) per statement, and returns how many
    /// it deleted. Dead letters stay in their own table (see the
    /// [module docs](super)).
    ///
    /// Keep processed rows at least as long as the layer's retention: while a
    /// row is there, a redelivery of its event id is not queued again, even
    /// without [`with_dedup`](Self::with_dedup) or once the dedup record is
    /// gone.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] if a statement fails, [`OutboxError::Pool`]
    /// without a connection; rows deleted by earlier batches stay deleted.
    pub async fn purge_processed(&self, older_than: Duration) -> Result<u64, OutboxError> {
        let client = self.pool.get().await?;
        let purge = client.prepare_cached(&self.inner.sql.purge).await?;
        let older_than = ttl_millis(older_than);
        let mut total = 0;
        loop {
            let deleted = client.execute(&purge, &[&older_than, &Self::PURGE_BATCH]).await?;
            total += deleted;
            if deleted < Self::PURGE_BATCH.unsigned_abs() {
                return Ok(total);
            }
        }
    }

    /// Moves the dead letter of `event_id` back into the outbox, where a
    /// worker takes it again with a fresh attempt count (it keeps its
    /// `enqueued_at`; its new row id puts it behind the rows queued so far).
    /// Returns `true` if it was moved and `false` if the dead-letter table has
    /// no row with that event id. See the [module docs](super) for the same
    /// in SQL, for many rows at once.
    ///
    /// Fix what made it fail first (the closure, the POS, the data):
    /// otherwise it is dead-lettered again after its attempts.
    ///
    /// # Errors
    ///
    /// - [`OutboxError::ReplayConflict`] if the outbox already holds a row
    ///   with that event id; nothing changed;
    /// - [`OutboxError::Database`] if a statement failed, or
    ///   [`OutboxError::Pool`] without a connection; nothing changed.
    pub async fn replay_dead_letter(&self, event_id: &EventId) -> Result<bool, OutboxError> {
        let sql = &self.inner.sql;
        let client = self.pool.get().await?;
        let replayed = client.execute(sql.replay.as_str(), &[&event_id.as_str()]).await? == 1;
        if replayed {
            tracing::info!(%event_id, table = %self.inner.table, "dead letter queued again");
            return Ok(true);
        }
        let dead: i64 = client
            .query_one(sql.dead_exists.as_str(), &[&event_id.as_str()])
            .await?
            .try_get(0)?;
        match dead {
            0 => Ok(false),
            _ => Err(OutboxError::ReplayConflict {
                event_id: event_id.as_str().to_owned(),
            }),
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
/// the [module docs](super) for an example.
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub async fn receive(
    axum::extract::State(outbox): axum::extract::State<PostgresOutbox>,
    event: KlikitEvent,
) -> axum::response::Response {
    crate::common::answer(outbox.enqueue(&event).await)
}
