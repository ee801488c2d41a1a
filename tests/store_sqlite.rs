//! The conformance suite against [`SqliteStore`] on temporary files.
#![cfg(all(feature = "sqlite", feature = "test-util"))]

use std::{path::PathBuf, time::Duration};

use klikit_webhook::{
    ConfigError, EventId, SqliteStore,
    store::{BodyDigest, Claim, DedupStore, Lease},
    testing::conformance::{StoreFactory, namespace},
};

struct Sqlite;

fn path(namespace: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{namespace}.sqlite3"))
}

#[async_trait::async_trait]
impl StoreFactory for Sqlite {
    type Store = SqliteStore;

    /// A new pool on the namespace's file, as a restarted process would open.
    async fn open(&self, namespace: &str) -> SqliteStore {
        SqliteStore::open(path(namespace)).await.expect("open the SQLite file")
    }

    async fn cleanup(&self, namespace: &str) {
        let file = path(namespace);
        for suffix in ["", "-wal", "-shm"] {
            let mut name = file.clone().into_os_string();
            name.push(suffix);
            let _ = std::fs::remove_file(name);
        }
    }
}

async fn factory() -> Option<Sqlite> {
    Some(Sqlite)
}

klikit_webhook::dedup_store_tests!(factory());

fn id(s: &str) -> EventId {
    EventId::new(s).unwrap()
}

fn digest() -> BodyDigest {
    BodyDigest::of(b"{}")
}

/// A table made before completed rows kept a body digest: `migrate` adds
/// the column (twice is fine), old completed rows answer `Done` without a
/// digest, and new completions store theirs.
#[tokio::test]
async fn migrate_adds_the_digest_column_to_an_older_table() {
    let ns = namespace();
    let store = SqliteStore::open(path(&ns))
        .await
        .unwrap()
        .with_table("old_dedup")
        .unwrap();
    sqlx::query(
        "CREATE TABLE old_dedup (event_id TEXT PRIMARY KEY NOT NULL, token BLOB NOT NULL, \
         done INTEGER NOT NULL, expires_at INTEGER NOT NULL) WITHOUT ROWID",
    )
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query("INSERT INTO old_dedup VALUES ('old', x'00000000000000000000000000000001', 1, 9999999999999)")
        .execute(store.pool())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    let fresh = || Lease::generate(id("old"));
    assert_eq!(
        store.claim(&fresh(), Duration::from_secs(60)).await.unwrap(),
        Claim::Done { digest: None }
    );
    let lease = Lease::generate(id("new"));
    assert_eq!(store.claim(&lease, Duration::from_secs(60)).await.unwrap(), Claim::New);
    assert!(store.complete(&lease, digest(), Duration::from_secs(60)).await.unwrap());
    assert_eq!(
        store
            .claim(&Lease::generate(id("new")), Duration::from_secs(60))
            .await
            .unwrap(),
        Claim::Done { digest: Some(digest()) }
    );
    store.pool().close().await;
    Sqlite.cleanup(&ns).await;
}

#[tokio::test]
async fn url_wal_table_name_and_cleanup() {
    let ns = namespace();
    let url = format!("sqlite://{}", path(&ns).display());
    let store = SqliteStore::connect(&url).await.unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let timeout: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(timeout, 5000);

    assert_eq!(
        store.clone().with_table("x; DROP TABLE y").unwrap_err(),
        ConfigError::InvalidIdentifier {
            name: "x; DROP TABLE y".into()
        }
    );
    // A second table in the same file is a separate store.
    let other = store.clone().with_table("other_dedup").unwrap();
    other.migrate().await.unwrap();

    for i in 0..5 {
        let lease = Lease::generate(id(&format!("short-{i}")));
        let Claim::New = store.claim(&lease, Duration::from_millis(1)).await.unwrap() else {
            panic!("expected New")
        };
        if i % 2 == 0 {
            store
                .complete(&lease, digest(), Duration::from_millis(1))
                .await
                .unwrap();
        }
    }
    let kept = Lease::generate(id("kept"));
    let Claim::New = store.claim(&kept, Duration::from_secs(60)).await.unwrap() else {
        panic!("expected New")
    };
    assert!(matches!(
        other
            .claim(&Lease::generate(id("kept")), Duration::from_secs(60))
            .await
            .unwrap(),
        Claim::New
    ));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.cleanup().await.unwrap(), 5);
    assert_eq!(store.cleanup().await.unwrap(), 0);
    assert!(store.complete(&kept, digest(), Duration::from_secs(60)).await.unwrap());
    store.pool().close().await;
    Sqlite.cleanup(&ns).await;
}
