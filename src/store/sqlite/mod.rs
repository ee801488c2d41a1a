//! A [`DedupStore`] in an embedded SQLite file.

mod writer;

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
    time::Duration,
};

use async_trait::async_trait;
use tokio::sync::oneshot;

use self::writer::{DedupOp, Kind, Location, Message, now_millis};
use super::{
    BodyDigest, Claim, DedupStore, Lease, Result, StoreError, sql::validate_identifier, token_bytes, ttl_millis,
};
use crate::ConfigError;

/// The embedded dedup store: one SQLite file, no server, survives restarts.
///
/// # Why SQLite, through rusqlite and a writer thread
///
/// An embedded store should need nothing but a file. SQLite is the most
/// proven embedded database and safe for several processes on one host
/// writing at once. Each operation is **the same SQL shape** as
/// `PostgresStore` (see [the backends](crate::store#backends)): one `INSERT
/// ... ON CONFLICT DO UPDATE ... RETURNING` per claim (SQLite 3.35 or later;
/// the `sqlite` feature compiles a bundled, current SQLite into the binary
/// through `rusqlite`'s `bundled` feature, so the system library does not
/// matter). A key-value store such as redb would need its own transaction
/// code for the same atomicity.
///
/// SQLite is a C library that blocks the calling thread, so an async store
/// must hand every statement to a thread. Doing that per statement (what
/// sqlx's SQLite driver does, which this store used before) costs more than
/// the statement itself, and the per-statement commits serialize behind one
/// connection. So the store owns **one writer thread with one connection**,
/// and hands work over in groups:
///
/// - `claim`, `complete` and `release` put the operation on a channel with
///   a one-shot reply and await it;
/// - the thread blocks for the first operation, takes whatever else is
///   queued (at most [`MAX_GROUP`](Self::MAX_GROUP)), runs them all in
///   **one** `BEGIN IMMEDIATE ... COMMIT` with cached prepared statements,
///   and answers each **only after the commit** succeeded (group commit);
/// - if one statement fails, the transaction is rolled back and the group's
///   operations run again one transaction each, so that only the failing one
///   gets its error; if `BEGIN` or `COMMIT` fails, every operation of the
///   group gets that error (and nothing of it is stored);
/// - migrations and cleanup batches run on the same thread, between groups.
///
/// Under load a single hand-off and a single commit serve many deliveries.
/// Idle, an operation is its own group: one hand-off, one autocommit
/// statement, as before.
///
/// If the thread is gone ([`close`](Self::close), or it panicked), every
/// operation answers a [`StoreError`] at once. Dropping the last clone of
/// the store ends the thread.
///
/// A second thread with a connection of its own copies the WAL back into
/// the database 10 ms after a commit (a `PASSIVE` checkpoint, which does not
/// block the writer; the commits of those 10 ms go in the same checkpoint;
/// no commits, no checkpoints), and the writer's own automatic checkpoint
/// only starts at a
/// WAL of 8192 pages (when the background checkpoints never catch up fully,
/// so that the WAL can start over). With SQLite's default, the writer
/// checkpoints every 1000 pages itself, and the deliveries queued behind it
/// wait for the checkpoint's syncs. Under sustained load the background
/// checkpoints are usually overtaken by a commit, so the `-wal` file grows
/// to that threshold, about 34 MB with 4 KiB pages, and is then reused from
/// its start (measured: 249k deliveries in 20 s, the file stayed at
/// 33.9–34.9 MB).
///
/// On Linux the writer and checkpoint threads run under `SCHED_BATCH`
/// (where the system permits it), so that an operation queued from a busy
/// core does not preempt the thread that queued it: the writer runs when
/// that thread blocks or its time slice ends, and finds a whole group
/// waiting (see `batch_scheduling` in the source for the measurements).
///
/// Measured (the reference receiver pinned to one core, `examples/load.rs`
/// on the other, 32 connections, unique ids, three rounds of 5 s of
/// `benches/run.sh` on a 2-vCPU KVM guest,
/// `benches/results/2026-11-30-vm-intel-r-xeon-r-processor-2cpu-2`):
/// 39.8–46.3k requests/s at 20.8–24.2 µs of receiver CPU per delivery and a
/// p99 of 1.15–1.48 ms, where `MemoryStore` answered 67.6–77.3k requests/s
/// at 12.8–14.4 µs and 0.81–1.02 ms in the same rounds.
/// `BENCHMARKS.md` has the committed runs of `benches/run.sh`, with both
/// stores in the same rounds.
///
/// # Durability
///
/// An answer arrives only after the transaction holding the operation
/// committed, so a completion that was answered survives a crash of the
/// process (SIGKILL, panic, OOM): in WAL mode with `synchronous = NORMAL` a
/// commit is in the WAL file, in the operating system's cache, before
/// `COMMIT` returns. A power cut or kernel crash can lose the last
/// transactions (SQLite syncs the WAL at checkpoints, not at every commit);
/// at worst a retry of an event completed just before is processed again.
///
/// # File, settings and several processes
///
/// [`open`](Self::open) and [`connect`](Self::connect) create the file if
/// needed, switch it to [WAL](https://sqlite.org/wal.html), set
/// `synchronous = NORMAL` and a busy timeout of
/// [`BUSY_TIMEOUT`](Self::BUSY_TIMEOUT), and create the table. Several
/// stores on one file, in one process or several on the same host, are
/// safe: each has its writer thread and connection, each group is a
/// `BEGIN IMMEDIATE` transaction, and SQLite lets one writer in at a time,
/// so every operation stays atomic per event id across all of them. A
/// writer that finds the file locked waits (SQLite's busy handler, up to
/// `BUSY_TIMEOUT`) instead of failing. The limits: the writers take turns,
/// so several processes together write no faster than one, and a process
/// waiting on another's lock sleeps in the busy handler in steps of
/// milliseconds, so its latency is worse than a single process's. Keep the
/// file on a local disk: SQLite locking does not work over network file
/// systems. Instances on different hosts need `RedisStore` or
/// `PostgresStore` (see [the backends](crate::store#backends)).
///
/// The table ([`DEFAULT_TABLE`](Self::DEFAULT_TABLE), or the one given to
/// [`with_table`](Self::with_table)):
///
/// ```sql
/// CREATE TABLE IF NOT EXISTS "klikit_webhook_dedup" (
///     event_id   TEXT    PRIMARY KEY NOT NULL,  -- x-klikit-event-id, compared bytewise
///     token      BLOB    NOT NULL,              -- the claim's 16-byte lease token
///     done       INTEGER NOT NULL,              -- 0: in flight; 1: completed
///     expires_at INTEGER NOT NULL,              -- unix milliseconds
///     digest     BLOB                           -- BodyDigest (16 bytes) of the processed body, once completed
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
/// a time (and the statements of a group run one after the other in its
/// transaction, each seeing the ones before). `claim` has the shape explained on
/// `PostgresStore` (feature `postgres`), with the current time passed as
/// unix milliseconds from this process's clock when the writer runs it:
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
/// expired rows in short batches (each a brief transaction of the writer
/// thread), and
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
    writer: Arc<Writer>,
    table: Arc<str>,
    sql: Arc<Statements>,
}

/// The handle on the writer thread, shared by every clone of a store.
struct Writer {
    sender: mpsc::Sender<Message>,
    location: Location,
}

/// What went wrong inside the store, wrapped in [`StoreError::Backend`].
#[derive(Debug, thiserror::Error)]
enum Error {
    /// A statement failed.
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The transaction of a group of operations could not begin or commit:
    /// none of them is stored.
    #[error("SQLite transaction of a group of dedup operations failed: {0}")]
    Group(Arc<rusqlite::Error>),
    /// The writer thread stopped: the store was closed, or the thread
    /// panicked.
    #[error("the SQLite store's writer thread has stopped (store closed, or the thread failed)")]
    WriterStopped,
    /// The writer answered an operation with another operation's answer (a bug).
    #[error("the SQLite store's writer answered with the wrong kind of answer")]
    WrongAnswer,
    /// `connect` got a URL it does not understand.
    #[error("invalid SQLite URL: {0}")]
    Url(&'static str),
}

impl From<Error> for StoreError {
    fn from(error: Error) -> Self {
        StoreError::backend(error)
    }
}

struct Statements {
    claim_insert: Arc<str>,
    claim_read: Arc<str>,
    claim_take: Arc<str>,
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
        // A claim is up to three statements, each atomic (see
        // `writer::DedupOp::claim`), rather than one upsert with `RETURNING`:
        // SQLite runs `RETURNING` through a temporary table that it creates
        // for every execution, which cost the writer thread more than the
        // insert itself; a new id (the common case) is one plain insert.
        Self {
            claim_insert: format!(
                "INSERT INTO {t} (event_id, token, done, expires_at) VALUES (?1, ?2, 0, ?3 + ?4) \
                 ON CONFLICT (event_id) DO NOTHING"
            )
            .into(),
            claim_read: format!("SELECT token, done, expires_at, digest FROM {t} WHERE event_id = ?1").into(),
            claim_take: format!(
                "UPDATE {t} SET token = ?2, done = 0, expires_at = ?3 + ?4, digest = NULL \
                 WHERE event_id = ?1 AND expires_at <= ?3"
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

impl SqliteStore {
    /// The default table name.
    pub const DEFAULT_TABLE: &'static str = "klikit_webhook_dedup";
    /// How long a write waits for another connection's write (another
    /// process's store on the same file) to finish before failing with
    /// `SQLITE_BUSY`: 5 s.
    pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
    /// How many expired rows [`cleanup`](Self::cleanup) deletes per statement.
    pub const CLEANUP_BATCH: i64 = 1000;
    /// The most claims, completions and releases one transaction of the
    /// writer thread runs together (the group commit in the [type docs](Self)).
    pub const MAX_GROUP: usize = writer::MAX_BATCH;

    /// Opens (creating if needed) the database file at `path` with the
    /// settings in the [type docs](Self), starts the writer thread and
    /// creates the table.
    ///
    /// # Errors
    ///
    /// Returns a [`StoreError`] if the file cannot be opened or created, or
    /// is not an SQLite database, or the thread cannot be started.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_at(Location::File(path.as_ref().to_path_buf())).await
    }

    /// Like [`open`](Self::open), from a URL: `sqlite://klikit-dedup.sqlite3`
    /// (relative), `sqlite:///var/lib/app/dedup.db` (absolute),
    /// `sqlite:dedup.db`, or `sqlite::memory:` (a private in-memory
    /// database, gone with the store). The query `?mode=rwc` is accepted
    /// (it is what the store does anyway); other query parameters and
    /// percent-escapes are not.
    ///
    /// # Errors
    ///
    /// Returns a [`StoreError`] if the URL is invalid or the file cannot be
    /// opened.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::open_at(parse_url(url)?).await
    }

    async fn open_at(location: Location) -> Result<Self> {
        let (sender, receiver) = mpsc::channel();
        let (opened_tx, opened_rx) = oneshot::channel();
        // The writer's commits, for the checkpoint thread; disconnected
        // when the writer thread ends, and the checkpoint thread ends with it.
        let (commits_tx, commits_rx) = mpsc::sync_channel::<()>(1);
        let thread_location = location.clone();
        std::thread::Builder::new()
            .name("klikit-sqlite-writer".into())
            .spawn(move || {
                writer::batch_scheduling();
                match writer::open_connection(&thread_location, Self::BUSY_TIMEOUT) {
                    Ok(conn) => {
                        if opened_tx.send(Ok(())).is_ok() {
                            writer::run(conn, receiver, &commits_tx);
                        }
                    }
                    Err(error) => {
                        let _ = opened_tx.send(Err(Error::Sqlite(error)));
                    }
                }
            })
            .map_err(StoreError::backend)?;
        opened_rx.await.map_err(|_| Error::WriterStopped)??;
        if writer::BACKGROUND_CHECKPOINTS && matches!(location, Location::File(_)) {
            // The file exists now. Without this thread the writer
            // checkpoints by itself, as SQLite does by default.
            let conn = writer::open_checkpointer(&location, Self::BUSY_TIMEOUT).map_err(Error::Sqlite)?;
            std::thread::Builder::new()
                .name("klikit-sqlite-checkpoint".into())
                .spawn(move || {
                    writer::batch_scheduling();
                    writer::checkpoint(conn, commits_rx);
                })
                .map_err(StoreError::backend)?;
        }
        let store = Self {
            writer: Arc::new(Writer { sender, location }),
            table: Arc::from(Self::DEFAULT_TABLE),
            sql: Arc::new(Statements::new(Self::DEFAULT_TABLE)),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Uses the table `table` instead of [`DEFAULT_TABLE`](Self::DEFAULT_TABLE),
    /// on the same file and writer thread. Call [`migrate`](Self::migrate)
    /// afterwards if the table may not exist.
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

    /// The database file, as given to [`open`](Self::open) or
    /// [`connect`](Self::connect); `None` for `sqlite::memory:`.
    pub fn path(&self) -> Option<&Path> {
        match &self.writer.location {
            Location::File(path) => Some(path),
            Location::Memory => None,
        }
    }

    /// Stops the writer thread once the operations queued before this call
    /// have run, and closes the connection. Every later operation of this
    /// store and its clones fails with a [`StoreError`]. Dropping the last
    /// clone of a store stops the thread as well, without waiting.
    pub async fn close(&self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.writer.sender.send(Message::Stop(done_tx)).is_ok() {
            let _ = done_rx.await;
        }
    }

    /// Runs `task` on the writer's connection, between groups.
    async fn call<T: Send + 'static>(
        &self,
        task: impl FnOnce(&mut rusqlite::Connection) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let task: writer::Task = Box::new(move |conn| {
            let _ = reply_tx.send(task(conn));
        });
        self.writer
            .sender
            .send(Message::Task(task))
            .map_err(|_| Error::WriterStopped)?;
        reply_rx.await.map_err(|_| Error::WriterStopped)?
    }

    /// Queues a dedup operation and waits for its answer.
    async fn dedup<T>(&self, lease: &Lease, kind: impl FnOnce(oneshot::Sender<Result<T, Error>>) -> Kind) -> Result<T> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let op = DedupOp {
            sql: Arc::clone(&self.sql),
            event_id: lease.event_id().clone(),
            token: token_bytes(lease.token()),
            kind: kind(reply_tx),
        };
        self.writer
            .sender
            .send(Message::Dedup(op))
            .map_err(|_| Error::WriterStopped)?;
        Ok(reply_rx.await.map_err(|_| Error::WriterStopped)??)
    }

    /// Creates the table and its index if they do not exist (the SQL is in
    /// the [type docs](Self)), and adds the `digest` column to a table made
    /// by an earlier version.
    ///
    /// # Errors
    ///
    /// Returns a [`StoreError`] if a statement fails.
    pub async fn migrate(&self) -> Result<()> {
        let sql = Arc::clone(&self.sql);
        let table = Arc::clone(&self.table);
        self.call(move |conn| {
            conn.execute_batch(&sql.create_table)?;
            conn.execute_batch(&sql.create_index)?;
            let has_digest = |conn: &rusqlite::Connection| -> rusqlite::Result<bool> {
                let count: i64 = conn.query_row(&sql.has_digest, [&*table], |row| row.get(0))?;
                Ok(count > 0)
            };
            if !has_digest(conn)? {
                // Another process may add it in between.
                if let Err(error) = conn.execute_batch(&sql.add_digest)
                    && !has_digest(conn)?
                {
                    return Err(Error::Sqlite(error));
                }
            }
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// Deletes every expired row, [`CLEANUP_BATCH`](Self::CLEANUP_BATCH) rows
    /// per statement (each its own transaction, so that claims run in
    /// between), and returns how many it deleted.
    ///
    /// # Errors
    ///
    /// Returns a [`StoreError`] if a statement fails; rows deleted by earlier
    /// batches stay deleted.
    pub async fn cleanup(&self) -> Result<u64> {
        super::delete_in_batches(Self::CLEANUP_BATCH, || {
            let sql = Arc::clone(&self.sql);
            self.call(move |conn| {
                let mut statement = conn.prepare_cached(&sql.cleanup)?;
                let deleted = statement.execute(rusqlite::params![now_millis(), Self::CLEANUP_BATCH])?;
                Ok(u64::try_from(deleted).unwrap_or(u64::MAX))
            })
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

/// The location a `sqlite:` URL names.
fn parse_url(url: &str) -> Result<Location, Error> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or(Error::Url("expected sqlite://path, sqlite:path or sqlite::memory:"))?;
    let path = match rest.split_once('?') {
        None => rest,
        Some((path, "mode=rwc")) => path,
        Some(_) => return Err(Error::Url("the only query parameter accepted is mode=rwc")),
    };
    match path {
        "" => Err(Error::Url("no path")),
        ":memory:" => Ok(Location::Memory),
        path => Ok(Location::File(PathBuf::from(path))),
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("table", &self.table)
            .field("path", &self.path())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl DedupStore for SqliteStore {
    async fn claim(&self, lease: &Lease, ttl: Duration) -> Result<Claim> {
        let ttl_ms = ttl_millis(ttl);
        self.dedup(lease, |reply| Kind::Claim { ttl_ms, reply }).await
    }

    async fn complete(&self, lease: &Lease, digest: BodyDigest, retain: Duration) -> Result<bool> {
        let retain_ms = ttl_millis(retain);
        let digest = *digest.as_bytes();
        self.dedup(lease, |reply| Kind::Complete {
            retain_ms,
            digest,
            reply,
        })
        .await
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        self.dedup(lease, |reply| Kind::Release { reply }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let file = |url: &str| match parse_url(url) {
            Ok(Location::File(path)) => path,
            other => panic!("{url}: {other:?}"),
        };
        assert_eq!(file("sqlite://dedup.db"), PathBuf::from("dedup.db"));
        assert_eq!(file("sqlite:///var/lib/dedup.db"), PathBuf::from("/var/lib/dedup.db"));
        assert_eq!(file("sqlite:dedup.db"), PathBuf::from("dedup.db"));
        assert_eq!(file("sqlite://dedup.db?mode=rwc"), PathBuf::from("dedup.db"));
        assert!(matches!(parse_url("sqlite::memory:"), Ok(Location::Memory)));
        assert!(matches!(parse_url("sqlite://:memory:"), Ok(Location::Memory)));
        for bad in ["postgres://x", "sqlite://", "sqlite://x?mode=ro", "dedup.db"] {
            assert!(matches!(parse_url(bad), Err(Error::Url(_))), "{bad}");
        }
    }
}
