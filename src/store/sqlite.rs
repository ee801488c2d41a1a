//! A [`DedupStore`] in an embedded SQLite file.

use std::{
    fmt,
    path::Path,
    str::FromStr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use sqlx::{
    AssertSqlSafe, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use super::{
    BodyDigest, Claim, DedupStore, Lease, Result, StoreError, claim_answer, sql::validate_identifier, token_bytes,
    ttl_millis,
};
use crate::ConfigError;

/// The embedded dedup store: one SQLite file, no server, survives restarts.
///
/// # Why SQLite through sqlx
///
/// An embedded store should need nothing but a file. SQLite is the most
/// proven embedded database, it is safe for many tasks (and several
/// processes on one host) writing at once, and through sqlx it shares its
/// driver, its error type and **the same SQL shape** with
/// `PostgresStore` (see [the backends](crate::store#backends)): one `INSERT ... ON CONFLICT DO
/// UPDATE ... RETURNING` per claim (SQLite 3.35 or later; the `sqlite`
/// feature compiles a bundled, current SQLite into the binary, so the system
/// library does not matter). A key-value store such as redb would need its
/// own transaction code for the same atomicity, and a second storage engine
/// in the dependency tree.
///
/// # File and settings
///
/// [`open`](Self::open) and [`connect`](Self::connect) create the file if
/// needed, switch it to [WAL](https://sqlite.org/wal.html) (readers never
/// wait for the writer), set a [`BUSY_TIMEOUT`](Self::BUSY_TIMEOUT) so that
/// concurrent writers queue instead of failing with `SQLITE_BUSY`, use
/// `synchronous = NORMAL` (in WAL mode: durable across a crash of the
/// process; the last transactions may be lost on a power cut, which at worst
/// lets a retry of a just-completed event through), and create the table.
/// Keep the file on a local disk: SQLite locking does not work over network
/// file systems. Instances on different hosts need
/// `RedisStore` or `PostgresStore` (see [the backends](crate::store#backends)).
///
/// ```sql
/// CREATE TABLE IF NOT EXISTS "klikit_webhook_dedup" (
///     event_id   TEXT    PRIMARY KEY NOT NULL,  -- x-klikit-event-id, compared bytewise
///     token      BLOB    NOT NULL,              -- the claim's 16-byte lease token
///     done       INTEGER NOT NULL,              -- 0: in flight; 1: completed
///     expires_at INTEGER NOT NULL,              -- unix milliseconds
///     digest     BLOB                           -- SHA-256 of the processed body, once completed
/// ) WITHOUT ROWID;
/// CREATE INDEX IF NOT EXISTS "klikit_webhook_dedup_expires_at_idx"
///     ON "klikit_webhook_dedup" (expires_at);
/// ```
///
/// A table made by an earlier version, without `digest`, gets the column
/// from [`migrate`](Self::migrate) (`ALTER TABLE ... ADD COLUMN digest BLOB`
/// when `pragma_table_info` does not list it); its completed rows answer
/// `Claim::Done { digest: None }`.
///
/// # Operations
///
/// Each operation is one statement, atomic because SQLite runs one writer at
/// a time. `claim` has the shape explained on
/// `PostgresStore` (feature `postgres`), with the current time passed as
/// unix milliseconds from this process's clock:
///
/// ```sql
/// INSERT INTO t (event_id, token, done, expires_at) VALUES (?1, ?2, 0, ?3 + ?4)
/// ON CONFLICT (event_id) DO UPDATE SET
///     token      = CASE WHEN expires_at <= ?3 THEN excluded.token      ELSE token      END,
///     done       = CASE WHEN expires_at <= ?3 THEN 0                   ELSE done       END,
///     expires_at = CASE WHEN expires_at <= ?3 THEN excluded.expires_at ELSE expires_at END,
///     digest     = CASE WHEN expires_at <= ?3 THEN NULL                ELSE digest     END
/// RETURNING token = ?2, done, expires_at - ?3, digest
/// ```
///
/// `complete` and `release` are an `UPDATE` (setting `done` and `digest`)
/// and a `DELETE` `WHERE event_id = ?1 AND token = ?2 AND NOT done`. [`cleanup`](Self::cleanup) deletes
/// expired rows in short batches (each a brief write), and
/// [`spawn_cleanup`](Self::spawn_cleanup) runs it periodically.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use klikit_webhook::{KlikitWebhookLayer, WebhookSecret, store::SqliteStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = SqliteStore::open("klikit-dedup.sqlite3").await?;
/// let _cleanup = store.spawn_cleanup(Duration::from_secs(600));
/// let layer = KlikitWebhookLayer::new(WebhookSecret::from_env("KLIKIT_WEBHOOK_SECRET")?).with_store(store);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
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
    has_digest: Arc<str>,
    add_digest: Arc<str>,
}

impl Statements {
    fn new(table: &str) -> Self {
        let t = format!(r#""{table}""#);
        let expired = "expires_at <= ?3";
        Self {
            claim: format!(
                "INSERT INTO {t} (event_id, token, done, expires_at) VALUES (?1, ?2, 0, ?3 + ?4) \
                 ON CONFLICT (event_id) DO UPDATE SET \
                 token = CASE WHEN {expired} THEN excluded.token ELSE token END, \
                 done = CASE WHEN {expired} THEN 0 ELSE done END, \
                 expires_at = CASE WHEN {expired} THEN excluded.expires_at ELSE expires_at END, \
                 digest = CASE WHEN {expired} THEN NULL ELSE digest END \
                 RETURNING token = ?2, done, expires_at - ?3, digest"
            )
            .into(),
            complete: format!(
                "UPDATE {t} SET done = 1, expires_at = ?3 + ?4, digest = ?5 \
                 WHERE event_id = ?1 AND token = ?2 AND done = 0"
            )
            .into(),
            release: format!("DELETE FROM {t} WHERE event_id = ?1 AND token = ?2 AND done = 0").into(),
            cleanup: format!(
                "DELETE FROM {t} WHERE event_id IN \
                 (SELECT event_id FROM {t} WHERE expires_at <= ?1 LIMIT ?2)"
            )
            .into(),
            create_table: format!(
                "CREATE TABLE IF NOT EXISTS {t} (\
                 event_id TEXT PRIMARY KEY NOT NULL, \
                 token BLOB NOT NULL, \
                 done INTEGER NOT NULL, \
                 expires_at INTEGER NOT NULL, \
                 digest BLOB) WITHOUT ROWID"
            )
            .into(),
            create_index: format!(r#"CREATE INDEX IF NOT EXISTS "{table}_expires_at_idx" ON {t} (expires_at)"#).into(),
            has_digest: "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = 'digest'".into(),
            add_digest: format!("ALTER TABLE {t} ADD COLUMN digest BLOB").into(),
        }
    }
}

/// Milliseconds since the unix epoch by this process's clock.
fn now_millis() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

impl SqliteStore {
    /// The default table name.
    pub const DEFAULT_TABLE: &'static str = "klikit_webhook_dedup";
    /// How long a write waits for another connection's write to finish
    /// before failing with `SQLITE_BUSY`: 5 s.
    pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
    /// How many expired rows [`cleanup`](Self::cleanup) deletes per statement.
    pub const CLEANUP_BATCH: i64 = 1000;

    /// Opens (creating if needed) the database file at `path` with the
    /// settings in the [type docs](Self) and creates the table.
    ///
    /// # Errors
    ///
    /// Returns a [`StoreError`] if the file cannot be opened or created, or
    /// is not an SQLite database.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(SqliteConnectOptions::new().filename(path)).await
    }

    /// Like [`open`](Self::open), from a URL such as
    /// `sqlite://klikit-dedup.sqlite3` or `sqlite:///var/lib/app/dedup.db`.
    ///
    /// # Errors
    ///
    /// Returns a [`StoreError`] if the URL is invalid or the file cannot be
    /// opened.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url).map_err(StoreError::backend)?;
        Self::open_with(options).await
    }

    async fn open_with(options: SqliteConnectOptions) -> Result<Self> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Self::BUSY_TIMEOUT);
        // One connection: SQLite has one writer at a time, and every dedup
        // operation writes. Queueing in the pool costs microseconds, while
        // several connections contending for the write lock fall into
        // SQLite's busy handler, which sleeps for milliseconds (measured:
        // p50 8 ms and 3.7k deliveries/s with sqlx's default pool, see
        // BENCHMARKS.md).
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(StoreError::backend)?;
        let store = Self::new(pool);
        store.migrate().await?;
        Ok(store)
    }

    /// A store over an existing pool, in the table
    /// [`DEFAULT_TABLE`](Self::DEFAULT_TABLE). Configure the pool's
    /// connections as [`open`](Self::open) does (at least WAL and a busy
    /// timeout), and call [`migrate`](Self::migrate) before the first
    /// delivery.
    pub fn new(pool: SqlitePool) -> Self {
        Self {
            pool,
            table: Arc::from(Self::DEFAULT_TABLE),
            sql: Arc::new(Statements::new(Self::DEFAULT_TABLE)),
        }
    }

    /// Uses the table `table` instead of [`DEFAULT_TABLE`](Self::DEFAULT_TABLE).
    /// Call [`migrate`](Self::migrate) afterwards if the table may not exist.
    ///
    /// # Errors
    ///
    /// [`ConfigError::InvalidIdentifier`] unless `table` matches
    /// `[A-Za-z_][A-Za-z0-9_]*` and is at most 63 bytes long.
    pub fn with_table(mut self, table: &str) -> Result<Self, ConfigError> {
        validate_identifier(table)?;
        self.table = Arc::from(table);
        self.sql = Arc::new(Statements::new(table));
        Ok(self)
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The connection pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Creates the table and its index if they do not exist (the SQL is in
    /// the [type docs](Self)), and adds the `digest` column to a table made
    /// by an earlier version.
    ///
    /// # Errors
    ///
    /// Returns a [`StoreError`] if a statement fails.
    pub async fn migrate(&self) -> Result<()> {
        for statement in [&self.sql.create_table, &self.sql.create_index] {
            sqlx::query(AssertSqlSafe(Arc::clone(statement)))
                .execute(&self.pool)
                .await
                .map_err(StoreError::backend)?;
        }
        if !self.has_digest_column().await? {
            let added = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.add_digest)))
                .execute(&self.pool)
                .await;
            // Another process may have added it in between.
            if let Err(error) = added
                && !self.has_digest_column().await?
            {
                return Err(StoreError::backend(error));
            }
        }
        Ok(())
    }

    async fn has_digest_column(&self) -> Result<bool> {
        let count: i64 = sqlx::query_scalar(AssertSqlSafe(Arc::clone(&self.sql.has_digest)))
            .bind(&*self.table)
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::backend)?;
        Ok(count > 0)
    }

    /// Deletes every expired row, [`CLEANUP_BATCH`](Self::CLEANUP_BATCH) rows
    /// per statement so that claims get the write lock in between, and
    /// returns how many it deleted.
    ///
    /// # Errors
    ///
    /// Returns a [`StoreError`] if a statement fails; rows deleted by earlier
    /// batches stay deleted.
    pub async fn cleanup(&self) -> Result<u64> {
        super::delete_in_batches(Self::CLEANUP_BATCH, || async {
            let done = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql.cleanup)))
                .bind(now_millis())
                .bind(Self::CLEANUP_BATCH)
                .execute(&self.pool)
                .await?;
            Ok::<_, sqlx::Error>(done.rows_affected())
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

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl DedupStore for SqliteStore {
    async fn claim(&self, lease: &Lease, ttl: Duration) -> Result<Claim> {
        let (ours, done, left_ms, digest): (bool, bool, i64, Option<Vec<u8>>) =
            sqlx::query_as(AssertSqlSafe(Arc::clone(&self.sql.claim)))
                .bind(lease.event_id().as_str())
                .bind(token_bytes(lease.token()).to_vec())
                .bind(now_millis())
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
            .bind(now_millis())
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
