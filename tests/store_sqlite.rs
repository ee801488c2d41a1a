//! The conformance suite against [`SqliteStore`] on temporary files.
#![cfg(all(feature = "sqlite", feature = "test-util"))]

use std::{path::PathBuf, time::Duration};

use klikit_webhook::{
    ConfigError, EventId, SqliteStore,
    store::{Claim, DedupStore},
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
        let Claim::New(lease) = store
            .claim(&id(&format!("short-{i}")), Duration::from_millis(1))
            .await
            .unwrap()
        else {
            panic!("expected New")
        };
        if i % 2 == 0 {
            store.complete(&lease, Duration::from_millis(1)).await.unwrap();
        }
    }
    let Claim::New(kept) = store.claim(&id("kept"), Duration::from_secs(60)).await.unwrap() else {
        panic!("expected New")
    };
    assert!(matches!(
        other.claim(&id("kept"), Duration::from_secs(60)).await.unwrap(),
        Claim::New(_)
    ));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.cleanup().await.unwrap(), 5);
    assert_eq!(store.cleanup().await.unwrap(), 0);
    assert!(store.complete(&kept, Duration::from_secs(60)).await.unwrap());
    store.pool().close().await;
    Sqlite.cleanup(&ns).await;
}
