//! Deleting expired records in the SQL stores (SQLite on a temporary file,
//! Postgres on `DATABASE_URL`):
//!
//! - `cleanup` deletes every expired row when there are more than one batch
//!   of them (`CLEANUP_BATCH`), in-flight and completed alike, and no live
//!   row;
//! - `spawn_cleanup` runs at once, then again every period (rows that expire
//!   after its first run go too), and stops when its handle is aborted.
//!
//! The rows are made through the store's own operations (a 1 ms lease or
//! retention), so the tests hold whatever the table's columns are.
#![cfg(all(any(feature = "sqlite", feature = "postgres"), feature = "test-util"))]

mod common;

use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};
use klikit_webhook::{
    DedupStore, EventId,
    store::{BodyDigest, Claim, Lease},
};

/// What the tests need of a SQL store besides the trait.
#[async_trait::async_trait]
trait SqlStore: DedupStore + Clone {
    /// `CLEANUP_BATCH` of the store.
    const BATCH: i64;
    /// Operations run at once while making rows.
    const CONCURRENCY: usize;
    async fn cleanup(&self) -> u64;
    fn spawn_cleanup(&self, period: Duration) -> tokio::task::JoinHandle<()>;
    /// Rows in the store's table, expired or not.
    async fn rows(&self) -> i64;
}

const LONG: Duration = Duration::from_secs(3600);
const EXPIRED: Duration = Duration::from_millis(1);

fn id(name: String) -> EventId {
    EventId::new(name).unwrap()
}

async fn new_lease<S: DedupStore>(store: &S, id: &EventId, ttl: Duration) -> Lease {
    let lease = Lease::generate(id.clone());
    match store.claim(&lease, ttl).await {
        Ok(Claim::New) => lease,
        other => panic!("{id}: expected a new claim, got {other:?}"),
    }
}

fn digest() -> BodyDigest {
    BodyDigest::of(b"{}")
}

/// `count` rows named `prefix-<n>` that expire within a millisecond: every
/// fifth is completed with a 1 ms retention, the others stay claimed with a
/// 1 ms lease. Returns once they have expired.
async fn expiring_rows<S: SqlStore>(store: &S, prefix: &str, count: usize) {
    stream::iter(0..count)
        .map(|n| async move {
            let event = id(format!("{prefix}-{n}"));
            if n % 5 == 0 {
                let lease = new_lease(store, &event, LONG).await;
                assert!(store.complete(&lease, digest(), EXPIRED).await.unwrap());
            } else {
                new_lease(store, &event, EXPIRED).await;
            }
        })
        .buffer_unordered(S::CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
}

/// `count` rows that outlive the test: half in flight, half completed.
async fn live_rows<S: SqlStore>(store: &S, prefix: &str, count: usize) {
    for n in 0..count {
        let lease = new_lease(store, &id(format!("{prefix}-{n}")), LONG).await;
        if n % 2 == 0 {
            assert!(store.complete(&lease, digest(), LONG).await.unwrap());
        }
    }
}

/// Waits until the table holds `rows` rows; false after `within`.
async fn settles_at<S: SqlStore>(store: &S, rows: i64, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if store.rows().await == rows {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// More than two batches of expired rows: one `cleanup` deletes them all,
/// batch after batch, and says how many; live rows stay.
async fn cleanup_goes_past_one_batch<S: SqlStore>(store: &S) {
    const LIVE: usize = 6;
    let expired = 2 * usize::try_from(S::BATCH).unwrap() + 17;
    live_rows(store, "live", LIVE).await;
    expiring_rows(store, "old", expired).await;
    assert_eq!(store.rows().await, (expired + LIVE) as i64);

    assert_eq!(store.cleanup().await, expired as u64, "every expired row, in one call");
    assert_eq!(store.rows().await, LIVE as i64, "the live rows stay");
    assert_eq!(store.cleanup().await, 0);
    // The live rows still answer as before.
    for n in 0..LIVE {
        let claim = store
            .claim(&Lease::generate(id(format!("live-{n}"))), LONG)
            .await
            .unwrap();
        let expected = if n % 2 == 0 { "Done" } else { "InFlight" };
        assert!(format!("{claim:?}").starts_with(expected), "live-{n}: {claim:?}");
    }
}

/// The task cleans at once, then every period, until aborted.
async fn spawn_cleanup_runs_every_period_until_aborted<S: SqlStore>(store: &S) {
    const PERIOD: Duration = Duration::from_millis(100);
    const WITHIN: Duration = Duration::from_secs(10);
    live_rows(store, "live", 4).await;
    expiring_rows(store, "first", 30).await;
    assert_eq!(store.rows().await, 34);

    let task = store.spawn_cleanup(PERIOD);
    assert!(
        settles_at(store, 4, WITHIN).await,
        "the first run deleted the expired rows"
    );
    // Rows that expire after the first run go at a later one.
    expiring_rows(store, "second", 30).await;
    assert!(
        settles_at(store, 4, WITHIN).await,
        "a later run deleted the rows that expired since"
    );

    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    expiring_rows(store, "third", 10).await;
    tokio::time::sleep(PERIOD * 4).await;
    assert_eq!(store.rows().await, 14, "nothing runs after the abort");
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use klikit_webhook::{SqliteStore, testing::conformance::namespace};

    use super::*;

    #[async_trait::async_trait]
    impl SqlStore for SqliteStore {
        const BATCH: i64 = SqliteStore::CLEANUP_BATCH;
        const CONCURRENCY: usize = 32;

        async fn cleanup(&self) -> u64 {
            SqliteStore::cleanup(self).await.unwrap()
        }

        fn spawn_cleanup(&self, period: Duration) -> tokio::task::JoinHandle<()> {
            SqliteStore::spawn_cleanup(self, period)
        }

        /// Counted on a connection of the test's own (WAL: it sees every
        /// committed row).
        async fn rows(&self) -> i64 {
            let sql = format!(r#"SELECT count(*) FROM "{}""#, self.table());
            let conn = rusqlite::Connection::open(self.path().unwrap()).unwrap();
            conn.query_row(&sql, [], |row| row.get(0)).unwrap()
        }
    }

    /// A store on a new file, removed (with its `-wal` and `-shm`) on drop.
    struct TempStore {
        store: SqliteStore,
        path: std::path::PathBuf,
    }

    impl TempStore {
        async fn open() -> Self {
            let path = std::env::temp_dir().join(format!("{}.sqlite3", namespace()));
            let store = SqliteStore::open(&path).await.unwrap();
            Self { store, path }
        }
    }

    impl Drop for TempStore {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm"] {
                let mut name = self.path.clone().into_os_string();
                name.push(suffix);
                let _ = std::fs::remove_file(name);
            }
        }
    }

    #[tokio::test]
    async fn sqlite_cleanup_goes_past_one_batch() {
        let temp = TempStore::open().await;
        cleanup_goes_past_one_batch(&temp.store).await;
    }

    #[tokio::test]
    async fn sqlite_spawn_cleanup_runs_every_period_until_aborted() {
        let temp = TempStore::open().await;
        spawn_cleanup_runs_every_period_until_aborted(&temp.store).await;
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use klikit_webhook::{PostgresStore, testing::conformance::namespace};

    use super::*;

    #[async_trait::async_trait]
    impl SqlStore for PostgresStore {
        const BATCH: i64 = PostgresStore::CLEANUP_BATCH;
        const CONCURRENCY: usize = 8;

        async fn cleanup(&self) -> u64 {
            PostgresStore::cleanup(self).await.unwrap()
        }

        fn spawn_cleanup(&self, period: Duration) -> tokio::task::JoinHandle<()> {
            PostgresStore::spawn_cleanup(self, period)
        }

        async fn rows(&self) -> i64 {
            common::postgres_i64(self.pool(), &format!(r#"SELECT count(*) FROM "{}""#, self.table())).await
        }
    }

    /// A store in a table of its own, or `None` (after saying so) when
    /// Postgres is unreachable outside CI.
    async fn open() -> Option<PostgresStore> {
        let url = common::database_url();
        common::probe_postgres(&url).await?;
        let pool = common::postgres_pool(&url, 8);
        let store = PostgresStore::new(pool).with_table(&namespace()).unwrap();
        store.migrate().await.unwrap();
        Some(store)
    }

    async fn drop_table(store: &PostgresStore) {
        common::postgres_execute(store.pool(), &format!(r#"DROP TABLE IF EXISTS "{}""#, store.table())).await;
    }

    #[tokio::test]
    async fn postgres_cleanup_goes_past_one_batch() {
        let Some(store) = open().await else { return };
        cleanup_goes_past_one_batch(&store).await;
        drop_table(&store).await;
    }

    #[tokio::test]
    async fn postgres_spawn_cleanup_runs_every_period_until_aborted() {
        let Some(store) = open().await else { return };
        spawn_cleanup_runs_every_period_until_aborted(&store).await;
        drop_table(&store).await;
    }
}
