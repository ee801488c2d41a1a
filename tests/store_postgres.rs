//! The conformance suite against [`PostgresStore`] on `DATABASE_URL`.
#![cfg(all(feature = "postgres", feature = "test-util"))]

mod common;

use std::time::Duration;

use klikit_webhook::{
    ConfigError, EventId, PostgresStore,
    store::{BodyDigest, Claim, DedupStore, Lease},
    testing::conformance::{StoreFactory, namespace},
};
use sqlx::postgres::PgPoolOptions;

struct Postgres {
    url: String,
}

impl Postgres {
    async fn pool(&self) -> sqlx::PgPool {
        PgPoolOptions::new()
            .max_connections(4)
            .connect(&self.url)
            .await
            .expect("connect to Postgres")
    }
}

#[async_trait::async_trait]
impl StoreFactory for Postgres {
    type Store = PostgresStore;

    async fn open(&self, namespace: &str) -> PostgresStore {
        let store = PostgresStore::new(self.pool().await)
            .with_table(namespace)
            .expect("valid table name");
        store.migrate().await.expect("migrate");
        store
    }

    async fn cleanup(&self, namespace: &str) {
        let pool = self.pool().await;
        sqlx::query(sqlx::AssertSqlSafe(format!(r#"DROP TABLE IF EXISTS "{namespace}""#)))
            .execute(&pool)
            .await
            .expect("drop the test table");
        pool.close().await;
    }
}

async fn factory() -> Option<Postgres> {
    let url = common::database_url();
    common::probe_postgres(&url).await?;
    Some(Postgres { url })
}

klikit_webhook::dedup_store_tests!(factory());

fn id(s: &str) -> EventId {
    EventId::new(s).unwrap()
}

fn digest() -> BodyDigest {
    BodyDigest::of(b"{}")
}

/// A table made before completed rows kept a body digest: `migrate` adds
/// the column (twice, and from two instances at once, is fine), old
/// completed rows answer `Done` without a digest, and new completions store
/// theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_adds_the_digest_column_to_an_older_table() {
    let Some(factory) = factory().await else { return };
    let pool = factory.pool().await;
    let table = namespace();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        r#"CREATE TABLE "{table}" (event_id text COLLATE "C" PRIMARY KEY, token bytea NOT NULL,
           done boolean NOT NULL, expires_at timestamptz NOT NULL)"#
    )))
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        r#"INSERT INTO "{table}" VALUES ('old', '\x00000000000000000000000000000001', true, now() + interval '1 hour')"#
    )))
    .execute(&pool)
    .await
    .unwrap();
    let store = PostgresStore::new(pool.clone()).with_table(&table).unwrap();
    let other = store.clone();
    let (a, b) = tokio::join!(store.migrate(), other.migrate());
    a.unwrap();
    b.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(
        store
            .claim(&Lease::generate(id("old")), Duration::from_secs(60))
            .await
            .unwrap(),
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
    factory.cleanup(&table).await;
}

#[tokio::test]
async fn table_and_schema_names_are_validated() {
    let pool = sqlx::PgPool::connect_lazy("postgres://localhost/unused").unwrap();
    let store = || PostgresStore::new(pool.clone());
    for bad in [
        "",
        "1abc",
        "a-b",
        "a b",
        "a\"b",
        "x; DROP TABLE y",
        "é",
        &"a".repeat(64),
    ] {
        assert_eq!(
            store().with_table(bad).unwrap_err(),
            ConfigError::InvalidIdentifier { name: bad.to_owned() },
            "table {bad:?}"
        );
        assert!(store().with_schema(bad).is_err(), "schema {bad:?}");
    }
    for good in ["a", "_", "Dedup_2", &"a".repeat(63)] {
        assert_eq!(store().with_table(good).unwrap().table(), good);
        assert_eq!(store().with_schema(good).unwrap().schema(), Some(good));
    }
    assert_eq!(store().table(), PostgresStore::DEFAULT_TABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_migrate_twice_concurrently_and_cleanup() {
    let Some(factory) = factory().await else { return };
    let pool = factory.pool().await;
    let schema = namespace();
    sqlx::query(sqlx::AssertSqlSafe(format!(r#"CREATE SCHEMA "{schema}""#)))
        .execute(&pool)
        .await
        .unwrap();
    let store = PostgresStore::new(pool.clone()).with_schema(&schema).unwrap();
    // Two instances starting at once both migrate.
    let other = store.clone();
    let (a, b) = tokio::join!(store.migrate(), other.migrate());
    a.unwrap();
    b.unwrap();
    store.migrate().await.unwrap();

    // Expired claims and records go; live ones stay.
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
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.cleanup().await.unwrap(), 5);
    assert_eq!(store.cleanup().await.unwrap(), 0);
    let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        r#"SELECT count(*) FROM "{schema}"."{}""#,
        PostgresStore::DEFAULT_TABLE
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(rows, 1);
    assert!(store.complete(&kept, digest(), Duration::from_secs(60)).await.unwrap());

    sqlx::query(sqlx::AssertSqlSafe(format!(r#"DROP SCHEMA "{schema}" CASCADE"#)))
        .execute(&pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn unreachable_postgres_is_a_store_error() {
    // Port 1 on localhost: nothing listens there.
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy("postgres://postgres@127.0.0.1:1/test")
        .unwrap();
    let error = PostgresStore::new(pool)
        .claim(&Lease::generate(id("evt")), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(error, klikit_webhook::StoreError::Backend(_)), "{error:?}");
    assert!(
        std::error::Error::source(&error).is_some(),
        "the source is kept: {error:?}"
    );
}
