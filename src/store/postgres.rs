//! A [`DedupStore`] in Postgres.

use std::{fmt, sync::Arc, time::Duration};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::{GenericClient, NoTls, types::Type};

mod batch;

use self::batch::{Batcher, Request};
use super::{
    BodyDigest, Claim, DedupStore, Lease, LeaseToken, Result, StoreError, sql::validate_identifier, token_bytes,
    ttl_millis,
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
///     digest     bytea                          -- BodyDigest (16 bytes) of the processed body, once completed
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
/// `claim`, `complete` and `release` are **group-committed**: the
/// operations of one kind that are waiting at the same moment go to
/// Postgres as **one statement** (one round trip, one transaction, one WAL
/// flush), their parameters in arrays. Each operation keeps the semantics
/// of a statement of its own, row by row, under Postgres' default
/// `READ COMMITTED` isolation:
///
/// - `claim` inserts the claims, and on a conflict updates the existing row
///   **to itself unless it has expired**, returning each row as it is after
///   the statement:
///
///   ```sql
///   INSERT INTO t AS cur (event_id, token, done, expires_at)
///   SELECT v.event_id, v.token, false, now() + v.ttl * interval '1 millisecond'
///   FROM unnest($1::text[], $2::bytea[], $3::bigint[]) AS v(event_id, token, ttl)
///   ORDER BY v.event_id COLLATE "C"
///   ON CONFLICT (event_id) DO UPDATE SET
///       token      = CASE WHEN cur.expires_at <= now() THEN excluded.token      ELSE cur.token      END,
///       done       = CASE WHEN cur.expires_at <= now() THEN false               ELSE cur.done       END,
///       expires_at = CASE WHEN cur.expires_at <= now() THEN excluded.expires_at ELSE cur.expires_at END,
///       digest     = CASE WHEN cur.expires_at <= now() THEN NULL                ELSE cur.digest     END
///   RETURNING cur.event_id, cur.token, cur.done,
///             ceil(extract(epoch FROM cur.expires_at - now()) * 1000)::bigint, cur.digest
///   ```
///
///   The store matches each returned row to its operation by event id. A
///   completed row answers [`Claim::Done`] with its digest. Otherwise the
///   returned token is the operation's exactly when its lease holds the
///   claim (it won it, or it was already its own), and [`Claim::InFlight`]
///   with the time left when it is not.
///   The more obvious `DO UPDATE ... WHERE <expired>` returns no row when the
///   existing claim is alive, and reading that row in the same statement
///   (a CTE with `UNION ALL SELECT`) sees the statement's snapshot, which
///   misses a row a concurrent claim committed meanwhile. The row lock taken
///   by `ON CONFLICT DO UPDATE` instead serialises concurrent claims of an
///   id, row by row also inside a batch, and `RETURNING` always sees the
///   latest row. The price is one (HOT) row version per duplicate delivery,
///   which `VACUUM` reclaims.
/// - `complete`: `UPDATE t AS cur SET done = true, expires_at = now() +
///   v.ttl * interval '1 millisecond', digest = v.digest FROM
///   unnest($1::text[], $2::bytea[], $3::bigint[], $4::bytea[]) AS v(event_id,
///   token, ttl, digest) WHERE cur.event_id = v.event_id AND cur.token =
///   v.token AND NOT cur.done RETURNING cur.event_id`: `true` for the
///   returned ids, `false` for the others (a stale lease fails alone).
/// - `release`: `DELETE FROM t AS cur USING unnest($1::text[], $2::bytea[])
///   AS v(event_id, token) WHERE cur.event_id = v.event_id AND cur.token =
///   v.token AND NOT cur.done RETURNING cur.event_id`, likewise.
///
/// An event id appears at most once per statement (Postgres cannot change a
/// row twice in one statement): a second operation on the same id waits for
/// a later batch. A batch's claims insert and lock their rows in event id
/// order (`ORDER BY ... COLLATE "C"`, the primary key's order), so batches
/// from several instances take their row locks in the same order. Updates
/// and deletes have no such guarantee (the join decides), and a claim
/// batch can meet a completion batch on the same rows, so a batch that
/// Postgres chooses as a deadlock victim (or that fails with a
/// serialization failure) is retried once, then fails.
///
/// The event ids are always bind parameters. The table and schema names are
/// spliced into the statements, so they are checked to be plain identifiers
/// and quoted.
///
/// # Connections
///
/// The store runs on a [`deadpool_postgres::Pool`] of
/// [`tokio_postgres`] connections ([`connect`](Self::connect) makes one of
/// [`DEFAULT_POOL_SIZE`](Self::DEFAULT_POOL_SIZE) connections without TLS;
/// for TLS, build the pool with a TLS connector and pass it to
/// [`new`](Self::new)).
///
/// Each store (and its clones) has a **batcher**: a tokio task, started on
/// first use, that the hot-path operations queue on. It waits for an
/// operation, then for one of its statement slots (half the pool's
/// `max_size`, at most
/// [`DEFAULT_BATCHES_IN_FLIGHT`](Self::DEFAULT_BATCHES_IN_FLIGHT) = 2;
/// [`with_batches_in_flight`](Self::with_batches_in_flight) changes it),
/// then takes everything queued of one kind (up
/// to 256 operations; the three kinds take turns) and runs it as one
/// statement on a connection of the pool, on a task of its own. While the
/// slots are busy, new operations queue and form the next batches. It
/// never waits on a timer to fill a batch: at low load each operation goes
/// alone at once, as before. The task ends when the last clone of the
/// store is dropped; a store used on a new runtime after its task's runtime
/// shut down starts another.
///
/// The batch statements have their parameter types fixed (`text[]`,
/// `bytea[]`, `bigint[]`), so the arrays go over the wire in binary. The
/// claim is prepared once per connection (deadpool's per-connection
/// statement cache) and its plan cached: an `INSERT ... ON CONFLICT` can
/// only reach existing rows through the primary key. `complete` and
/// `release` join the batch's arrays with the table, so they are planned
/// again for each batch (an unnamed statement, still one round trip): a
/// plan cached while the table looked small (a table Postgres has not yet
/// analyzed is estimated at a few hundred rows) is a sequential scan, kept
/// by that connection however large the table grows, until autovacuum's
/// next `ANALYZE` (measured: 3.5 ms per completion at 30,000 rows, and
/// throughput halved in the benchmark; the test
/// `completions_and_releases_use_the_primary_key_after_the_table_grew`
/// counts the table's sequential scans). `migrate`,
/// `cleanup`, `complete_event_in`, `is_completed` and `attach_digest` are
/// not batched; they take a connection per call.
///
/// A batch statement that fails (a broken connection, a timeout of the
/// pool, a dead server) fails every operation in it with
/// [`StoreError::Backend`] (the layer answers 503 and Klikit retries); the
/// pool discards a broken connection and opens another for a later batch.
/// Waits are bounded by the pool's wait and create timeouts and, in the
/// layer, by its store timeout; a caller that stopped waiting does not
/// disturb the others in its batch. A batcher that stopped answers with a
/// [`StoreError`], never a hang.
///
/// **Why batches.** Each statement outside a transaction is its own
/// transaction: its own round trip, its own commit (a WAL flush) and its
/// own share of Postgres' per-statement work. A
/// profile (`perf`) of the receiver put about a quarter of its CPU in the
/// kernel's scheduler (the runtime's thread parking and waking, once per
/// round trip) and a tenth in loopback TCP, against 5 % in tokio-postgres.
/// A batch shares one round trip, one commit and one wake-up between its
/// operations. (Pipelining statements on shared connections, the earlier
/// `with_pipelines`, did not help: a backend runs its connection's
/// statements one after another, so a pipeline commits at most one
/// statement per WAL flush.)
///
/// Measured on a 2-vCPU AMD EPYC KVM guest with nothing else running:
/// the reference receiver pinned to one core, `examples/load.rs` on the
/// other, 32 connections, unique ids, 5 s per run, Postgres 15 on the same
/// machine with `synchronous_commit = on` (`pg_test_fsync`: 87 µs per
/// 8 kB `fdatasync`), every run made:
///
/// | batches in flight | runs | req/s | p99 ms | receiver CPU µs/delivery |
/// |---|---|---|---|---|
/// | 4, `complete`/`release` plans cached (before) | 2 | 4167-4240 | 15.6-16.3 | 42.0-45.2 |
/// | 8 | 2 | 6640-8321 | 6.2-8.1 | 46.6-54.5 |
/// | 4 | 3 | 8700-8965 | 6.0-7.8 | 40.8-48.7 |
/// | 3 | 2 | 10833-10838 | 4.3-4.5 | 35.8-39.1 |
/// | 2 (the default) | 4 | 10660-11841 | 4.0-5.0 | 36.2-37.8 |
/// | 1 | 2 | 10933-11426 | 3.7-4.8 | 32.4-33.6 |
///
/// At these rates the backends wait mostly on the WAL (`WALWrite` and
/// `WALSync` in `pg_stat_activity`): each delivery waits for two commits.
/// Fewer statements in flight make larger batches, so fewer commits per
/// delivery and less CPU on both sides. 1, 2 and 3 measured alike here;
/// the default of 2 is a judgement: it lets a second batch form while one
/// commits, for servers with more to spare than this one. Where Postgres has cores and disk to spare, more
/// slots ([`with_batches_in_flight`](Self::with_batches_in_flight)) can
/// help; measure. `BENCHMARKS.md` has the figures of the committed runs.
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
    pool: Pool,
    schema: Option<Arc<str>>,
    table: Arc<str>,
    sql: Arc<Statements>,
    batcher: Arc<Batcher>,
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
                 SELECT v.event_id, v.token, false, now() + v.ttl * interval '1 millisecond' \
                 FROM unnest($1::text[], $2::bytea[], $3::bigint[]) AS v(event_id, token, ttl) \
                 ORDER BY v.event_id COLLATE \"C\" \
                 ON CONFLICT (event_id) DO UPDATE SET \
                 token = CASE WHEN {expired} THEN excluded.token ELSE cur.token END, \
                 done = CASE WHEN {expired} THEN false ELSE cur.done END, \
                 expires_at = CASE WHEN {expired} THEN excluded.expires_at ELSE cur.expires_at END, \
                 digest = CASE WHEN {expired} THEN NULL ELSE cur.digest END \
                 RETURNING cur.event_id, cur.token, cur.done, \
                 ceil(extract(epoch FROM cur.expires_at - now()) * 1000)::bigint, cur.digest"
            )
            .into(),
            complete: format!(
                "UPDATE {t} AS cur SET done = true, expires_at = now() + v.ttl * interval '1 millisecond', \
                 digest = v.digest \
                 FROM unnest($1::text[], $2::bytea[], $3::bigint[], $4::bytea[]) AS v(event_id, token, ttl, digest) \
                 WHERE cur.event_id = v.event_id AND cur.token = v.token AND NOT cur.done \
                 RETURNING cur.event_id"
            )
            .into(),
            release: format!(
                "DELETE FROM {t} AS cur USING unnest($1::text[], $2::bytea[]) AS v(event_id, token) \
                 WHERE cur.event_id = v.event_id AND cur.token = v.token AND NOT cur.done \
                 RETURNING cur.event_id"
            )
            .into(),
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

/// Why [`PostgresStore::connect`] failed (the source of the
/// [`StoreError::Backend`] it returns).
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error(
        "invalid Postgres connection string (expected `postgres://user:password@host:port/db` or \
         `host=... user=... dbname=...`): {0}"
    )]
    InvalidUrl(#[source] tokio_postgres::Error),
    #[error("could not build the Postgres connection pool: {0}")]
    Pool(#[source] deadpool_postgres::BuildError),
    #[error("could not connect to Postgres (is the server up, and are host, port, user and database right?): {0}")]
    Connect(#[source] deadpool_postgres::PoolError),
}

impl PostgresStore {
    /// The default table name.
    pub const DEFAULT_TABLE: &'static str = "klikit_webhook_dedup";
    /// How many expired rows [`cleanup`](Self::cleanup) deletes per statement.
    pub const CLEANUP_BATCH: i64 = 1000;
    /// The size of the pool [`connect`](Self::connect) makes. The hot path
    /// uses at most [`DEFAULT_BATCHES_IN_FLIGHT`](Self::DEFAULT_BATCHES_IN_FLIGHT)
    /// of its connections; the others serve whoever shares the pool
    /// (`complete_event_in` in handlers' transactions, the outbox, cleanup). Connections open only as concurrency needs them;
    /// where many instances share one server, keep their sum under its
    /// `max_connections` (build the pool yourself and use [`new`](Self::new)).
    pub const DEFAULT_POOL_SIZE: usize = 32;
    /// The most batch statements a store lets run at once by default (see
    /// "Connections" in the [type docs](Self)).
    pub const DEFAULT_BATCHES_IN_FLIGHT: usize = 2;
    /// How long [`connect`](Self::connect)'s pool waits for a free
    /// connection, for a new connection, and for a recycled one's check.
    pub const POOL_TIMEOUT: Duration = Duration::from_secs(5);

    /// A store over `pool`, in the table [`DEFAULT_TABLE`](Self::DEFAULT_TABLE).
    /// Call [`migrate`](Self::migrate) (once) before the first delivery.
    ///
    /// The hot-path batches take connections of `pool`, at most half of
    /// its `max_size` at once (see "Connections" in the [type docs](Self)).
    ///
    /// Make the pool yourself to choose its size, its timeouts, or TLS:
    /// [`connect`](Self::connect) connects without TLS, so for TLS build a
    /// `deadpool_postgres::Manager` with a TLS connector (from
    /// `postgres-native-tls` or `tokio-postgres-rustls`) in place of
    /// `NoTls`. Give the pool a `wait_timeout` and a `create_timeout` (and a
    /// tokio runtime for them), or a dead server makes a delivery wait until
    /// the layer's store timeout.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use klikit_webhook::store::{
    ///     PostgresStore,
    ///     deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime},
    ///     tokio_postgres::{Config, NoTls},
    /// };
    ///
    /// # fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let config: Config = "host=127.0.0.1 user=postgres dbname=app".parse()?;
    /// let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    /// let pool = Pool::builder(manager)
    ///     .max_size(16)
    ///     .runtime(Runtime::Tokio1)
    ///     .wait_timeout(Some(Duration::from_secs(5)))
    ///     .create_timeout(Some(Duration::from_secs(5)))
    ///     .build()?;
    /// let store = PostgresStore::new(pool);
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(pool: Pool) -> Self {
        let in_flight = Self::default_in_flight(&pool);
        Self {
            pool,
            schema: None,
            table: Arc::from(Self::DEFAULT_TABLE),
            sql: Arc::new(Statements::new(None, Self::DEFAULT_TABLE)),
            batcher: Arc::new(Batcher::new(in_flight)),
        }
    }

    /// Connects a new pool to `url`, a URL (`postgres://user:password@host:port/db?application_name=x`)
    /// or a key-value string (`host=localhost user=postgres dbname=app`),
    /// without TLS: [`DEFAULT_POOL_SIZE`](Self::DEFAULT_POOL_SIZE)
    /// connections, [`POOL_TIMEOUT`](Self::POOL_TIMEOUT) to get one. It
    /// opens one connection to check that the database answers.
    ///
    /// For TLS or other pool settings, make the pool yourself and use
    /// [`new`](Self::new).
    ///
    /// # Errors
    ///
    /// Returns a [`StoreError`] if the connection string is invalid or the
    /// database is unreachable.
    pub async fn connect(url: &str) -> Result<Self> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|error| StoreError::backend(ConnectError::InvalidUrl(error)))?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(Self::DEFAULT_POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Self::POOL_TIMEOUT))
            .create_timeout(Some(Self::POOL_TIMEOUT))
            .recycle_timeout(Some(Self::POOL_TIMEOUT))
            .build()
            .map_err(|error| StoreError::backend(ConnectError::Pool(error)))?;
        drop(
            pool.get()
                .await
                .map_err(|error| StoreError::backend(ConnectError::Connect(error)))?,
        );
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
        self.batcher = Arc::new(Batcher::new(self.batcher.in_flight()));
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
        self.batcher = Arc::new(Batcher::new(self.batcher.in_flight()));
        Ok(self)
    }

    /// How many batch statements [`new`](Self::new) lets run at once
    /// (half the pool's `max_size`, at most
    /// [`DEFAULT_BATCHES_IN_FLIGHT`](Self::DEFAULT_BATCHES_IN_FLIGHT), at
    /// least one).
    fn default_in_flight(pool: &Pool) -> usize {
        (pool.status().max_size / 2).clamp(1, Self::DEFAULT_BATCHES_IN_FLIGHT)
    }

    /// Lets at most `count` (at least one) batch statements run at once
    /// instead of the default (half the pool's `max_size`, at most
    /// [`DEFAULT_BATCHES_IN_FLIGHT`](Self::DEFAULT_BATCHES_IN_FLIGHT)).
    /// More slots make smaller batches: more commits and more receiver CPU
    /// per delivery, with more throughput only where Postgres has spare
    /// capacity (see "Connections" in the [type docs](Self)). Keep it under
    /// the pool's `max_size`.
    #[must_use]
    pub fn with_batches_in_flight(mut self, count: usize) -> Self {
        self.batcher = Arc::new(Batcher::new(count));
        self
    }

    /// How many batch statements this store has sent to Postgres (each
    /// carries one or more operations): for tests.
    #[doc(hidden)]
    pub fn batch_statements(&self) -> u64 {
        self.batcher.statements()
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
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// A connection of the pool.
    async fn pooled(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(StoreError::backend)
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
        let mut client = self.pooled().await?;
        let tx = client.transaction().await.map_err(StoreError::backend)?;
        tx.execute_typed(
            "SELECT pg_advisory_xact_lock(hashtext($1))",
            &[(&lock_name, Type::TEXT)],
        )
        .await
        .map_err(StoreError::backend)?;
        for statement in [&self.sql.create_table, &self.sql.create_index] {
            tx.batch_execute(statement).await.map_err(StoreError::backend)?;
        }
        // Checked first: ALTER TABLE needs the table's owner and an exclusive
        // lock, even when the column exists.
        let has_digest: bool = tx
            .query_typed_one(
                "SELECT EXISTS (SELECT 1 FROM information_schema.columns \
                 WHERE table_schema = COALESCE($1::text, current_schema()) AND table_name = $2::text \
                 AND column_name = 'digest')",
                &[(&self.schema.as_deref(), Type::TEXT), (&&*self.table, Type::TEXT)],
            )
            .await
            .and_then(|row| row.try_get(0))
            .map_err(StoreError::backend)?;
        if !has_digest {
            tx.batch_execute(&self.sql.add_digest)
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
        let client = self.pooled().await?;
        let statement = client
            .prepare_typed_cached(&self.sql.cleanup, &[Type::INT8])
            .await
            .map_err(StoreError::backend)?;
        super::delete_in_batches(Self::CLEANUP_BATCH, || {
            client.execute(&statement, &[&Self::CLEANUP_BATCH])
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
    /// the caller's transaction** `client` (a `tokio_postgres::Transaction`,
    /// or a `deadpool_postgres::Transaction` through `&*tx`; a plain
    /// `Client` runs it on its own).
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
    /// an upsert, sent with its parameter types in one round trip:
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
    /// The row stays locked until the caller's transaction ends; a
    /// concurrent claim of the same id waits for it and then sees the
    /// outcome.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use klikit_webhook::{EventId, store::PostgresStore};
    ///
    /// # async fn run(store: PostgresStore, id: EventId) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut client = store.pool().get().await?;
    /// let tx = client.transaction().await?;
    /// // ... insert the event into your own tables with `tx` ...
    /// store.complete_event_in(&*tx, &id, Duration::from_secs(7 * 24 * 3600)).await?;
    /// tx.commit().await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// Returns a [`StoreError`] if the statement fails (the caller's
    /// transaction is then aborted; roll it back).
    pub async fn complete_event_in(
        &self,
        client: &impl GenericClient,
        event_id: &EventId,
        retain: Duration,
    ) -> Result<()> {
        let token = token_bytes(LeaseToken::generate());
        client
            .execute_typed(
                &self.sql.complete_event,
                &[
                    (&event_id.as_str(), Type::TEXT),
                    (&&token[..], Type::BYTEA),
                    (&ttl_millis(retain), Type::INT8),
                ],
            )
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
        let client = self.pooled().await?;
        let statement = client
            .prepare_typed_cached(&self.sql.is_done, &[Type::TEXT, Type::BYTEA])
            .await
            .map_err(StoreError::backend)?;
        client
            .query_one(
                &statement,
                &[&lease.event_id().as_str(), &&token_bytes(lease.token())[..]],
            )
            .await
            .and_then(|row| row.try_get(0))
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
        let client = self.pooled().await?;
        let statement = client
            .prepare_typed_cached(&self.sql.attach_digest, &[Type::TEXT, Type::BYTEA, Type::BYTEA])
            .await
            .map_err(StoreError::backend)?;
        let rows = client
            .execute(
                &statement,
                &[
                    &lease.event_id().as_str(),
                    &&token_bytes(lease.token())[..],
                    &&digest.as_bytes()[..],
                ],
            )
            .await
            .map_err(StoreError::backend)?;
        Ok(rows == 1)
    }
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.schema)
            .field("table", &self.table)
            .field("statements_in_flight", &self.batcher.in_flight())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl DedupStore for PostgresStore {
    async fn claim(&self, lease: &Lease, ttl: Duration) -> Result<Claim> {
        let (request, answer) = Request::claim(lease, ttl_millis(ttl));
        self.batcher.send(&self.pool, &self.sql, request)?;
        answer.await.map_err(|_| batch::stopped())?
    }

    async fn complete(&self, lease: &Lease, digest: BodyDigest, retain: Duration) -> Result<bool> {
        let (request, answer) = Request::complete(lease, digest, ttl_millis(retain));
        self.batcher.send(&self.pool, &self.sql, request)?;
        answer.await.map_err(|_| batch::stopped())?
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let (request, answer) = Request::release(lease);
        self.batcher.send(&self.pool, &self.sql, request)?;
        answer.await.map_err(|_| batch::stopped())?
    }
}
