//! A [`DedupStore`] in Postgres.

use std::{fmt, sync::Arc, time::Duration};

use async_trait::async_trait;
use sqlx::{AssertSqlSafe, PgConnection, PgPool};

use super::{
    BodyDigest, Claim, DedupStore, Lease, LeaseToken, Result, StoreError, claim_answer, sql::validate_identifier,
    token_bytes, ttl_millis,
};
use crate::{ConfigError, EventId};

/// The dedup store in a Postgres table: shared by every instance that uses
/// the same table, durable, and cleaned up without blocking deliveries.
///
/// # Table
///
/// [`migrate`](Self::migrate) creates the table (default name
/// [`DEFAULT_TABLE`](Self::DEFAULT_TABLE), in the first schema of the
/// `search_path` unless [`with_schema`](Self::with_schema) names one) if it
/// does not exist. Run it once at start-up, or create the table yourself with
/// your migration tool:
///
/// ```sql
/// CREATE TABLE IF NOT EXISTS "klikit_webhook_dedup" (
///     event_id   text COLLATE "C" PRIMARY KEY,  -- x-klikit-event-id
///     token      bytea       NOT NULL,          -- the claim's 16-byte lease token
///     done       boolean     NOT NULL,          -- false: in flight; true: completed
///     expires_at timestamptz NOT NULL,          -- end of the lease, or of the retention
///     digest     bytea                          -- SHA-256 of the processed body, once completed
/// );
/// CREATE INDEX IF NOT EXISTS "klikit_webhook_dedup_expires_at_idx"
///     ON "klikit_webhook_dedup" (expires_at);
/// ALTER TABLE "klikit_webhook_dedup" ADD COLUMN IF NOT EXISTS digest bytea;
/// ```
///
/// The last statement upgrades a table made by an earlier version, without
/// `digest` (`migrate` runs it only when `information_schema.columns` does
/// not list the column); its completed rows answer
/// `Claim::Done { digest: None }`.
///
/// Only the database clock (`now()`) decides expiry, so instances whose
/// clocks disagree still agree on every answer.
///
/// # Operations
///
/// Each operation is **one statement, one round trip**, atomic under
/// Postgres' default `READ COMMITTED` isolation:
///
/// - `claim` inserts the claim, and on a conflict updates the existing row
///   **to itself unless it has expired**, returning the row as it is after
///   the statement:
///
///   ```sql
///   INSERT INTO t AS cur (event_id, token, done, expires_at)
///   VALUES ($1, $2, false, now() + $3 * interval '1 millisecond')
///   ON CONFLICT (event_id) DO UPDATE SET
///       token      = CASE WHEN cur.expires_at <= now() THEN excluded.token      ELSE cur.token      END,
///       done       = CASE WHEN cur.expires_at <= now() THEN false               ELSE cur.done       END,
///       expires_at = CASE WHEN cur.expires_at <= now() THEN excluded.expires_at ELSE cur.expires_at END,
///       digest     = CASE WHEN cur.expires_at <= now() THEN NULL                ELSE cur.digest     END
///   RETURNING token = $2, done, ceil(extract(epoch FROM expires_at - now()) * 1000)::bigint, digest
///   ```
///
///   A completed row answers [`Claim::Done`] with its digest. Otherwise the
///   returned token is ours exactly when our lease holds the claim (we won
///   it, or it was already ours), and [`Claim::InFlight`] with the time left
///   when it is not.
///   The more obvious `DO UPDATE ... WHERE <expired>` returns no row when the
///   existing claim is alive, and reading that row in the same statement
///   (a CTE with `UNION ALL SELECT`) sees the statement's snapshot, which
///   misses a row a concurrent claim committed meanwhile. The row lock taken
///   by `ON CONFLICT DO UPDATE` instead serialises concurrent claims, and
///   `RETURNING` always sees the latest row. The price is one (HOT) row
///   version per duplicate delivery, which `VACUUM` reclaims.
/// - `complete`: `UPDATE ... SET done = true, expires_at = now() + <retain>,
///   digest = $4 WHERE event_id = $1 AND token = $2 AND NOT done`.
/// - `release`: `DELETE ... WHERE event_id = $1 AND token = $2 AND NOT done`.
///
/// The event id is always a bind parameter. The table and schema names are
/// spliced into the statements, so they are checked to be plain identifiers
/// and quoted.
///
/// # Cleanup
///
/// Expired rows are harmless (claims ignore them and overwrite them) but take
/// space. [`cleanup`](Self::cleanup) deletes them in batches of
/// [`CLEANUP_BATCH`](Self::CLEANUP_BATCH) rows, skipping rows a delivery has
/// locked, so it never blocks the hot path; run it from your scheduler, or let
/// [`spawn_cleanup`](Self::spawn_cleanup) run it periodically on the tokio
/// runtime. Several instances may run it at the same time.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use klikit_webhook::{KlikitWebhookLayer, WebhookSecret, store::PostgresStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = PostgresStore::connect("postgres://postgres@127.0.0.1:5432/app")
///     .await?
///     .with_schema("webhooks")?
///     .with_table("klikit_dedup")?;
/// store.migrate().await?;
/// let _cleanup = store.spawn_cleanup(Duration::from_secs(600));
/// let layer = KlikitWebhookLayer::new(WebhookSecret::from_env("KLIKIT_WEBHOOK_SECRET")?).with_store(store);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    schema: Option<Arc<str>>,
    table: Arc<str>,
    sql: Arc<Statements>,
}

struct Statements {
    claim: Arc<str>,
    complete: Arc<str>,
    release: Arc<str>,
    cleanup: Arc<str>,
    create_table: Arc<str>,
    create_index: Arc<str>,
    add_digest: Arc<str>,
    complete_event: Arc<str>,
    is_done: Arc<str>,
    attach_digest: Arc<str>,
}

impl Statements {
    fn new(schema: Option<&str>, table: &str) -> Self {
        let qualified = match schema {
            Some(schema) => format!(r#""{schema}"."{table}""#),
            None => format!(r#""{table}""#),
        };
        let t = &qualified;
        let expired = "cur.expires_at <= now()";
        Self {
            claim: format!(
                "INSERT INTO {t} AS cur (event_id, token, done, expires_at) \
                 VALUES ($1, $2, false, now() + $3::bigint * interval '1 millisecond') \
                 ON CONFLICT (event_id) DO UPDATE SET \
                 token = CASE WHEN {expired} THEN excluded.token ELSE cur.token END, \
                 done = CASE WHEN {expired} THEN false ELSE cur.done END, \
                 expires_at = CASE WHEN {expired} THEN excluded.expires_at ELSE cur.expires_at END, \
                 digest = CASE WHEN {expired} THEN NULL ELSE cur.digest END \
                 RETURNING cur.token = $2, cur.done, \
                 ceil(extract(epoch FROM cur.expires_at - now()) * 1000)::bigint, cur.digest"
            )
            .into(),
            complete: format!(
                "UPDATE {t} SET done = true, expires_at = now() + $3::bigint * interval '1 millisecond', \
                 digest = $4 WHERE event_id = $1 AND token = $2 AND NOT done"
            )
            .into(),
            release: format!("DELETE FROM {t} WHERE event_id = $1 AND token = $2 AND NOT done").into(),
            cleanup: format!(
                "DELETE FROM {t} WHERE event_id IN \
                 (SELECT event_id FROM {t} WHERE expires_at <= now() LIMIT $1 FOR UPDATE SKIP LOCKED) \
                 AND expires_at <= now()"
            )
            .into(),
            create_table: format!(
                "CREATE TABLE IF NOT EXISTS {t} (\
                 event_id text COLLATE \"C\" PRIMARY KEY, \
                 token bytea NOT NULL, \
                 done boolean NOT NULL, \
                 expires_at timestamptz NOT NULL, \
                 digest bytea)"
            )
            .into(),
            create_index: format!(r#"CREATE INDEX IF NOT EXISTS "{table}_expires_at_idx" ON {t} (expires_at)"#).into(),
            add_digest: format!("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS digest bytea").into(),
            complete_event: format!(
                "INSERT INTO {t} AS cur (event_id, token, done, expires_at) \
                 VALUES ($1, $2, true, now() + $3::bigint * interval '1 millisecond') \
                 ON CONFLICT (event_id) DO UPDATE SET done = true, \
                 expires_at = GREATEST(cur.expires_at, excluded.expires_at)"
            )
            .into(),
            is_done: format!("SELECT EXISTS (SELECT 1 FROM {t} WHERE event_id = $1 AND token = $2 AND done)").into(),
            attach_digest: format!(
                "UPDATE {t} SET digest = COALESCE(digest, $3) WHERE event_id = $1 AND token = $2 AND done"
            )
            .into(),
        }
    }
}

impl PostgresStore {
    /// The default table name.
    pub const DEFAULT_TABLE: &'static str = "klikit_webhook_dedup";
    /// How many expired rows [`cleanup`](Self::cleanup) deletes per statement.
    pub const CLEANUP_BATCH: i64 = 1000;

    /// A store over `pool`, in the table [`DEFAULT_TABLE`](Self::DEFAULT_TABLE).
    /// Call [`migrate`](Self::migrate) (once) before the first delivery.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            schema: None,
            table: Arc::from(Self::DEFAULT_TABLE),
            sql: Arc::new(Statements::new(None, Self::DEFAULT_TABLE)),
        }
    }

    /// Connects a new pool to `url` (`postgres://user:password@host:port/db`)
    /// with sqlx's default pool options.
    ///
    /// # Errors
    ///
    /// Returns a [`StoreError`] if the URL is invalid or the database is
    /// unreachable.
    pub async fn connect(url: &str) -> Result<Self> {
        let pool = PgPool::connect(url).await.map_err(StoreError::backend)?;
        Ok(Self::new(pool))
    }

    /// Uses the table `table` instead of [`DEFAULT_TABLE`](Self::DEFAULT_TABLE).
    ///
    /// The name is quoted, so it is case-sensitive. Names up to 48 bytes keep
    /// the index name (`<table>_expires_at_idx`) within Postgres' 63 bytes.
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidIdentifier`] unless `table` matches
    /// `[A-Za-z_][A-Za-z0-9_]*` and is at most 63 bytes long.
    pub fn with_table(mut self, table: &str) -> Result<Self, ConfigError> {
        validate_identifier(table)?;
        self.table = Arc::from(table);
        self.sql = Arc::new(Statements::new(self.schema.as_deref(), table));
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
        self.schema = Some(Arc::from(schema));
        self.sql = Arc::new(Statements::new(Some(schema), &self.table));
        Ok(self)
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The schema, if one was set.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates the table and its index if they do not exist, and adds the
    /// `digest` column to a table made by an earlier version (the SQL is in
    /// the [type docs](Self)). Safe to run from several instances at once: it
    /// holds a transaction-level advisory lock named after the table.
    ///
    /// # Errors
    ///
    /// Returns a [`StoreError`] if a statement fails, for instance for lack
    /// of the `CREATE` privilege.
    pub async fn migrate(&self) -> Result<()> {
        let lock_name = format!(
            "klikit_webhook.migrate.{}.{}",
            self.schema.as_deref().unwrap_or(""),
            self.table
        );
        let mut tx = self.pool.begin().await.map_err(StoreError::backend)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(lock_name)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::backend)?;
        for statement in [&self.sql.create_table, &self.sql.create_index] {
            sqlx::query(AssertSqlSafe(Arc::clone(statement)))
                .execute(&mut *tx)
                .await
                .map_err(StoreError::backend)?;
        }
        // Checked first: ALTER TABLE needs the table's owner and an exclusive
        // lock, even when the column exists.
        let has_digest: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns \
             WHERE table_schema = COALESCE($1, current_schema()) AND table_name = $2 AND column_name = 'digest')",
        )
        .bind(self.schema.as_deref())
        .bind(&*self.table)
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::backend)?;
        if !has_digest {
            sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.add_digest)))
                .execute(&mut *tx)
                .await
                .map_err(StoreError::backend)?;
        }
        tx.commit().await.map_err(StoreError::backend)
    }

    /// Deletes every expired row, [`CLEANUP_BATCH`](Self::CLEANUP_BATCH) rows
    /// per statement, and returns how many it deleted. Rows that a delivery
    /// holds locked are skipped, never waited for.
    ///
    /// # Errors
    ///
    /// Returns a [`StoreError`] if a statement fails; rows deleted by earlier
    /// batches stay deleted.
    pub async fn cleanup(&self) -> Result<u64> {
        super::delete_in_batches(Self::CLEANUP_BATCH, || async {
            let done = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.cleanup)))
                .bind(Self::CLEANUP_BATCH)
                .execute(&self.pool)
                .await?;
            Ok(done.rows_affected())
        })
        .await
    }

    /// Runs [`cleanup`](Self::cleanup) every `period` (first at once) on a
    /// tokio task, logging failures at `WARN`, until the handle is aborted or
    /// the runtime shuts down.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime, or if `period` is zero.
    pub fn spawn_cleanup(&self, period: Duration) -> tokio::task::JoinHandle<()> {
        super::spawn_cleanup_loop(period, Arc::clone(&self.table), self.clone(), |store| async move {
            store.cleanup().await
        })
    }
}

impl PostgresStore {
    /// Marks `event_id` as done, remembered for at least `retain`, **inside
    /// the caller's transaction** `conn`.
    ///
    /// This is the dedup half of the outbox hand-off
    /// (`klikit_handoff::postgres`, in the `klikit-handoff` crate): called in the same
    /// transaction as the insert of the event into a queue table, the "done"
    /// mark and the queued event commit together or not at all.
    ///
    /// Unlike [`complete`](DedupStore::complete) it needs no [`Lease`] (a
    /// handler does not see the layer's lease): it marks the event's current
    /// record done whatever its token, keeping that token, so the layer's own
    /// completion afterwards finds its claim already done. The statement is
    /// an upsert:
    ///
    /// ```sql
    /// INSERT INTO t AS cur (event_id, token, done, expires_at)
    /// VALUES ($1, <random token>, true, now() + <retain>)
    /// ON CONFLICT (event_id) DO UPDATE SET
    ///     done = true, expires_at = GREATEST(cur.expires_at, excluded.expires_at)
    /// ```
    ///
    /// - a live claim (the usual case: the layer claimed the event before the
    ///   handler ran) becomes done, with its token;
    /// - no record (the layer failed open, or a cleanup removed an expired
    ///   claim) is inserted as done;
    /// - a done record stays done, its retention only ever extended.
    ///
    /// The row stays locked until `conn`'s transaction ends; a concurrent
    /// claim of the same id waits for it and then sees the outcome.
    ///
    /// # Errors
    ///
    /// Returns a [`StoreError`] if the statement fails (the caller's
    /// transaction is then aborted; roll it back).
    pub async fn complete_event_in(&self, conn: &mut PgConnection, event_id: &EventId, retain: Duration) -> Result<()> {
        sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.complete_event)))
            .bind(event_id.as_str())
            .bind(token_bytes(LeaseToken::generate()).to_vec())
            .bind(ttl_millis(retain))
            .execute(conn)
            .await
            .map_err(StoreError::backend)?;
        Ok(())
    }

    /// Whether the record of `lease`'s event is done **with `lease`'s
    /// token**: the claim this lease won was completed, by
    /// [`complete`](DedupStore::complete) or, inside a transaction, by
    /// [`complete_event_in`](Self::complete_event_in).
    ///
    /// # Errors
    ///
    /// Returns a [`StoreError`] if the query fails.
    pub async fn is_completed(&self, lease: &Lease) -> Result<bool> {
        sqlx::query_scalar(AssertSqlSafe(Arc::clone(&self.sql.is_done)))
            .bind(lease.event_id().as_str())
            .bind(token_bytes(lease.token()).to_vec())
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::backend)
    }

    /// Like [`is_completed`](Self::is_completed), and stores `digest` on that
    /// completed record if it has none: for a claim completed with
    /// [`complete_event_in`](Self::complete_event_in), which has no body
    /// digest, so that a later delivery of the id with another body is
    /// still reported (see [the body digest](crate::store#the-body-digest)).
    /// Returns whether the record of `lease`'s event is done with `lease`'s
    /// token; a digest already stored is kept.
    ///
    /// ```sql
    /// UPDATE t SET digest = COALESCE(digest, $3) WHERE event_id = $1 AND token = $2 AND done
    /// ```
    ///
    /// # Errors
    ///
    /// Returns a [`StoreError`] if the statement fails.
    pub async fn attach_digest(&self, lease: &Lease, digest: BodyDigest) -> Result<bool> {
        let result = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.attach_digest)))
            .bind(lease.event_id().as_str())
            .bind(token_bytes(lease.token()).to_vec())
            .bind(digest.as_bytes().to_vec())
            .execute(&self.pool)
            .await
            .map_err(StoreError::backend)?;
        Ok(result.rows_affected() == 1)
    }
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.schema)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl DedupStore for PostgresStore {
    async fn claim(&self, lease: &Lease, ttl: Duration) -> Result<Claim> {
        let (ours, done, left_ms, digest): (bool, bool, i64, Option<Vec<u8>>) =
            sqlx::query_as(AssertSqlSafe(Arc::clone(&self.sql.claim)))
                .bind(lease.event_id().as_str())
                .bind(token_bytes(lease.token()).to_vec())
                .bind(ttl_millis(ttl))
                .fetch_one(&self.pool)
                .await
                .map_err(StoreError::backend)?;
        Ok(claim_answer(ours, done, left_ms, digest.as_deref()))
    }

    async fn complete(&self, lease: &Lease, digest: BodyDigest, retain: Duration) -> Result<bool> {
        let result = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.complete)))
            .bind(lease.event_id().as_str())
            .bind(token_bytes(lease.token()).to_vec())
            .bind(ttl_millis(retain))
            .bind(digest.as_bytes().to_vec())
            .execute(&self.pool)
            .await
            .map_err(StoreError::backend)?;
        Ok(result.rows_affected() == 1)
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let result = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.release)))
            .bind(lease.event_id().as_str())
            .bind(token_bytes(lease.token()).to_vec())
            .execute(&self.pool)
            .await
            .map_err(StoreError::backend)?;
        Ok(result.rows_affected() == 1)
    }
}
