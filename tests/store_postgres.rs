//! The conformance suite against [`PostgresStore`] on `DATABASE_URL`.
#![cfg(all(feature = "postgres", feature = "test-util"))]

mod common;

use std::time::Duration;

use klikit_webhook::{
    ConfigError, EventId, PostgresStore,
    store::{BodyDigest, Claim, DedupStore, Lease, deadpool_postgres::Pool},
    testing::conformance::{StoreFactory, namespace},
};

struct Postgres {
    url: String,
}

impl Postgres {
    async fn pool(&self) -> Pool {
        common::postgres_pool(&self.url, 4)
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
        common::postgres_execute(&pool, &format!(r#"DROP TABLE IF EXISTS "{namespace}""#)).await;
        pool.close();
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
    common::postgres_execute(
        &pool,
        &format!(
            r#"CREATE TABLE "{table}" (event_id text COLLATE "C" PRIMARY KEY, token bytea NOT NULL,
               done boolean NOT NULL, expires_at timestamptz NOT NULL)"#
        ),
    )
    .await;
    common::postgres_execute(
        &pool,
        &format!(
            r#"INSERT INTO "{table}" VALUES ('old', '\x00000000000000000000000000000001', true, now() + interval '1 hour')"#
        ),
    )
    .await;
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
    let pool = common::postgres_pool("postgres://localhost/unused", 2);
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
    common::postgres_execute(&pool, &format!(r#"CREATE SCHEMA "{schema}""#)).await;
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
    let rows = common::postgres_i64(
        &pool,
        &format!(r#"SELECT count(*) FROM "{schema}"."{}""#, PostgresStore::DEFAULT_TABLE),
    )
    .await;
    assert_eq!(rows, 1);
    assert!(store.complete(&kept, digest(), Duration::from_secs(60)).await.unwrap());

    common::postgres_execute(&pool, &format!(r#"DROP SCHEMA "{schema}" CASCADE"#)).await;
}

#[tokio::test]
async fn unreachable_postgres_is_a_store_error() {
    // Port 1 on localhost: nothing listens there.
    let pool = common::postgres_pool("postgres://postgres@127.0.0.1:1/test", 4);
    let store = PostgresStore::new(pool);
    let lease = Lease::generate(id("evt"));
    let started = std::time::Instant::now();
    // Every operation, twice: a failed (re)connect leaves nothing behind
    // that makes the next call hang or panic.
    for _ in 0..2 {
        let errors = [
            store.claim(&lease, Duration::from_secs(1)).await.unwrap_err(),
            store
                .complete(&lease, digest(), Duration::from_secs(1))
                .await
                .unwrap_err(),
            store.release(&lease).await.unwrap_err(),
            store.is_completed(&lease).await.unwrap_err(),
            store.attach_digest(&lease, digest()).await.unwrap_err(),
            store.cleanup().await.unwrap_err(),
            store.migrate().await.unwrap_err(),
        ];
        for error in errors {
            assert!(matches!(error, klikit_webhook::StoreError::Backend(_)), "{error:?}");
            assert!(
                std::error::Error::source(&error).is_some(),
                "the source is kept: {error:?}"
            );
        }
    }
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
}

#[tokio::test]
async fn connect_reports_a_bad_url_and_a_dead_server() {
    for bad in ["postgres://[::1", "host=x port=notanumber"] {
        let error = PostgresStore::connect(bad).await.unwrap_err();
        assert!(
            error.to_string().contains("invalid Postgres connection string"),
            "{bad}: {error}"
        );
    }
    let error = PostgresStore::connect("postgres://postgres:hunter2@127.0.0.1:1/test")
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(message.contains("could not connect to Postgres"), "{message}");
    assert!(!message.contains("hunter2"), "the password leaked: {message}");
}

/// A hot-path connection that the server terminates is replaced: the calls
/// that saw it break get a `StoreError`, a later one succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_connection_is_replaced() {
    let Some(factory) = factory().await else { return };
    let admin = factory.pool().await;
    for round in 0..2 {
        let name = namespace();
        let separator = if factory.url.contains('?') { '&' } else { '?' };
        let url = format!("{}{separator}application_name={name}", factory.url);
        let store = PostgresStore::new(common::postgres_pool(&url, 4))
            .with_table(&name)
            .unwrap();
        store.migrate().await.unwrap();
        let lease = Lease::generate(id("before"));
        assert_eq!(store.claim(&lease, Duration::from_secs(60)).await.unwrap(), Claim::New);
        let killed = common::postgres_i64(
            &admin,
            &format!(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name = '{name}'"
            ),
        )
        .await;
        assert!(killed > 0);
        let mut errors = 0;
        let mut done = false;
        for _ in 0..20 {
            match store.complete(&lease, digest(), Duration::from_secs(60)).await {
                Ok(completed) => {
                    assert!(completed);
                    done = true;
                    break;
                }
                Err(error) => {
                    assert!(matches!(error, klikit_webhook::StoreError::Backend(_)), "{error:?}");
                    errors += 1;
                }
            }
        }
        assert!(done, "round {round}: never reconnected ({errors} errors)");
        assert!(errors <= 4, "round {round}: {errors} errors");
        common::postgres_execute(&admin, &format!(r#"DROP TABLE "{name}""#)).await;
    }
}

/// `complete_event_in` inside a transaction: rolled back, nothing changes;
/// committed, the layer's claim is done and `attach_digest` adds a digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_event_in_a_transaction() {
    let Some(factory) = factory().await else { return };
    let table = namespace();
    let store = factory.open(&table).await;
    let lease = Lease::generate(id("tx"));
    assert_eq!(store.claim(&lease, Duration::from_secs(60)).await.unwrap(), Claim::New);
    let mut client = store.pool().get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    store
        .complete_event_in(&*tx, lease.event_id(), Duration::from_secs(60))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert!(!store.is_completed(&lease).await.unwrap());
    let tx = client.transaction().await.unwrap();
    store
        .complete_event_in(&*tx, lease.event_id(), Duration::from_secs(60))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    drop(client);
    assert!(store.is_completed(&lease).await.unwrap());
    assert!(!store.complete(&lease, digest(), Duration::from_secs(60)).await.unwrap());
    assert_eq!(
        store
            .claim(&Lease::generate(id("tx")), Duration::from_secs(60))
            .await
            .unwrap(),
        Claim::Done { digest: None }
    );
    assert!(store.attach_digest(&lease, digest()).await.unwrap());
    assert_eq!(
        store
            .claim(&Lease::generate(id("tx")), Duration::from_secs(60))
            .await
            .unwrap(),
        Claim::Done { digest: Some(digest()) }
    );
    factory.cleanup(&table).await;
}

/// Three instances (each its own pool) claim the same 40 ids at once, each
/// id twice per instance, interleaved with 40 ids of their own: every id
/// has exactly one `New`, the other claims of it are `InFlight`, none fails.
/// Batches then hold repeated ids (split into later batches) and lock rows
/// of the same ids from several connections at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_from_several_instances_have_one_winner_per_id() {
    let Some(factory) = factory().await else { return };
    let table = namespace();
    let first = factory.open(&table).await;
    let mut stores = vec![first];
    for _ in 0..2 {
        stores.push(
            PostgresStore::new(common::postgres_pool(&factory.url, 4))
                .with_table(&table)
                .unwrap(),
        );
    }
    let mut claims = Vec::new();
    for round in 0..2 {
        for (instance, store) in stores.iter().enumerate() {
            for n in 0..40 {
                for name in [format!("shared-{n}"), format!("own-{instance}-{round}-{n}")] {
                    let store = store.clone();
                    claims.push(tokio::spawn(async move {
                        let claim = store.claim(&Lease::generate(id(&name)), Duration::from_secs(60)).await;
                        (name, claim)
                    }));
                }
            }
        }
    }
    let mut new = std::collections::HashMap::<String, usize>::new();
    let mut in_flight = 0;
    for claim in claims {
        let (name, claim) = claim.await.unwrap();
        match claim.unwrap_or_else(|error| panic!("{name}: {error:?}")) {
            Claim::New => *new.entry(name).or_default() += 1,
            Claim::InFlight { .. } => in_flight += 1,
            other => panic!("{name}: {other:?}"),
        }
    }
    assert_eq!(new.len(), 40 + 3 * 2 * 40, "every id has a winner");
    assert!(new.values().all(|&wins| wins == 1), "{new:?}");
    assert_eq!(in_flight, 3 * 2 * 40 - 40);
    factory.cleanup(&table).await;
}

/// Concurrent operations really share statements: 200 claims queued at
/// once (one thread, so all are queued before the batcher runs) go to
/// Postgres in one or two statements, and so do their 200 completions.
#[tokio::test]
async fn concurrent_operations_share_one_statement() {
    let Some(factory) = factory().await else { return };
    let table = namespace();
    let store = factory.open(&table).await;
    let leases: Vec<Lease> = (0..200).map(|n| Lease::generate(id(&format!("batch-{n}")))).collect();
    let before = store.batch_statements();
    let claims =
        futures_util::future::join_all(leases.iter().map(|lease| store.claim(lease, Duration::from_secs(60)))).await;
    assert!(claims.into_iter().all(|claim| claim.unwrap() == Claim::New));
    let claim_statements = store.batch_statements() - before;
    assert!(
        (1..=2).contains(&claim_statements),
        "{claim_statements} statements for 200 claims"
    );
    let before = store.batch_statements();
    let completes = futures_util::future::join_all(
        leases
            .iter()
            .map(|lease| store.complete(lease, digest(), Duration::from_secs(60))),
    )
    .await;
    assert!(completes.into_iter().all(|completed| completed.unwrap()));
    let complete_statements = store.batch_statements() - before;
    assert!(
        (1..=2).contains(&complete_statements),
        "{complete_statements} statements for 200 completions"
    );
    factory.cleanup(&table).await;
}

/// Claims, completes and releases `size` leases at once (one batch each,
/// on a current-thread runtime), `rounds` times.
async fn batched_rounds(store: &PostgresStore, label: &str, rounds: usize, size: usize) {
    for round in 0..rounds {
        let make = |kind: &str| -> Vec<Lease> {
            (0..size)
                .map(|n| Lease::generate(id(&format!("{label}-{round}-{kind}-{n}"))))
                .collect()
        };
        let (completed, released) = (make("c"), make("r"));
        let claims = futures_util::future::join_all(
            completed
                .iter()
                .chain(&released)
                .map(|lease| store.claim(lease, Duration::from_secs(60))),
        )
        .await;
        assert!(claims.into_iter().all(|claim| claim.unwrap() == Claim::New));
        let completes = futures_util::future::join_all(
            completed
                .iter()
                .map(|lease| store.complete(lease, digest(), Duration::from_secs(3600))),
        )
        .await;
        assert!(completes.into_iter().all(|done| done.unwrap()));
        let releases = futures_util::future::join_all(released.iter().map(|lease| store.release(lease))).await;
        assert!(releases.into_iter().all(|released| released.unwrap()));
    }
}

/// The table's sequential scans so far, counting those of `pool`'s one
/// connection (whose statistics are flushed first; PostgreSQL 15 or later).
async fn seq_scans(pool: &Pool, table: &str) -> i64 {
    let client = pool.get().await.expect("a Postgres connection");
    client
        .batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .expect("pg_stat_force_next_flush (PostgreSQL 15 or later)");
    let row = client
        .query_one("SELECT seq_scan FROM pg_stat_user_tables WHERE relname = $1", &[&table])
        .await
        .expect("the table's statistics");
    row.get(0)
}

/// Completions and releases reach their rows through the primary key
/// however much the table grew since the connection first ran them. The
/// table's statistics stay those of an empty table (autovacuum off for it,
/// so no ANALYZE comes in between): 8 rounds of batches of 20 on the empty
/// table, then 20,000 rows added, then 5 rounds of batches of 3; the
/// table's sequential scan count does not move in the later rounds. With
/// the `UPDATE`/`DELETE` batch statements prepared and their plans cached,
/// every later batch scanned the whole table.
#[tokio::test]
async fn completions_and_releases_use_the_primary_key_after_the_table_grew() {
    let Some(factory) = factory().await else { return };
    let table = namespace();
    // One connection: the store's statements and the statistics checks run
    // on one backend.
    let pool = common::postgres_pool(&factory.url, 1);
    // `pg_stat_force_next_flush()` is PostgreSQL 15's.
    let version = common::postgres_i64(&pool, "SELECT current_setting('server_version_num')::bigint").await;
    if version < 150_000 {
        eprintln!(
            "*** SKIPPED: completions_and_releases_use_the_primary_key_after_the_table_grew needs PostgreSQL 15 or later \
             (server_version_num {version}) ***"
        );
        return;
    }
    let store = PostgresStore::new(pool.clone()).with_table(&table).unwrap();
    store.migrate().await.unwrap();
    common::postgres_execute(
        &pool,
        &format!(r#"ALTER TABLE "{table}" SET (autovacuum_enabled = false)"#),
    )
    .await;
    batched_rounds(&store, "empty", 8, 20).await;
    common::postgres_execute(
        &pool,
        &format!(
            r#"INSERT INTO "{table}" SELECT 'filler-' || g, '\x00', true, now() + interval '1 hour', NULL
               FROM generate_series(1, 20000) g"#
        ),
    )
    .await;
    let before = seq_scans(&pool, &table).await;
    batched_rounds(&store, "grown", 5, 3).await;
    let after = seq_scans(&pool, &table).await;
    assert_eq!(
        after - before,
        0,
        "sequential scans of the grown table by 15 completions and 15 releases"
    );
    factory.cleanup(&table).await;
}

/// In one batch of completions (and one of releases), the single stale
/// lease (right id, wrong token) answers `false` and changes nothing; the
/// valid ones answer `true`.
#[tokio::test]
async fn a_stale_lease_in_a_batch_fails_alone() {
    let Some(factory) = factory().await else { return };
    let table = namespace();
    let store = factory.open(&table).await;
    for (kind, stale_at) in [("complete", 4), ("release", 0)] {
        let leases: Vec<Lease> = (0..10).map(|n| Lease::generate(id(&format!("{kind}-{n}")))).collect();
        for lease in &leases {
            assert_eq!(store.claim(lease, Duration::from_secs(60)).await.unwrap(), Claim::New);
        }
        let mut ops = leases.clone();
        ops[stale_at] = Lease::generate(leases[stale_at].event_id().clone());
        let before = store.batch_statements();
        let answers: Vec<bool> = if kind == "complete" {
            futures_util::future::join_all(
                ops.iter()
                    .map(|lease| store.complete(lease, digest(), Duration::from_secs(60))),
            )
            .await
        } else {
            futures_util::future::join_all(ops.iter().map(|lease| store.release(lease))).await
        }
        .into_iter()
        .map(Result::unwrap)
        .collect();
        assert_eq!(store.batch_statements() - before, 1, "{kind}: one batch");
        for (n, answer) in answers.iter().enumerate() {
            assert_eq!(*answer, n != stale_at, "{kind} {n}");
        }
        // The stale lease's event is still in flight for its real holder.
        assert!(matches!(
            store
                .claim(
                    &Lease::generate(leases[stale_at].event_id().clone()),
                    Duration::from_secs(60)
                )
                .await
                .unwrap(),
            Claim::InFlight { .. }
        ));
        let expected_other = if kind == "complete" {
            Claim::Done { digest: Some(digest()) }
        } else {
            Claim::New
        };
        let other = (stale_at + 1) % 10;
        assert_eq!(
            store
                .claim(
                    &Lease::generate(leases[other].event_id().clone()),
                    Duration::from_secs(60)
                )
                .await
                .unwrap(),
            expected_other,
            "{kind}"
        );
    }
    factory.cleanup(&table).await;
}

/// Operations queued on a store whose pool was closed fail at once with a
/// `StoreError`, and none hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pool_fails_queued_operations_quickly() {
    let Some(factory) = factory().await else { return };
    let table = namespace();
    let store = factory.open(&table).await;
    let lease = Lease::generate(id("before-close"));
    assert_eq!(store.claim(&lease, Duration::from_secs(60)).await.unwrap(), Claim::New);
    store.pool().close();
    let leases: Vec<Lease> = (0..50).map(|n| Lease::generate(id(&format!("closed-{n}")))).collect();
    let started = std::time::Instant::now();
    let answers = tokio::time::timeout(
        Duration::from_secs(2),
        futures_util::future::join_all(leases.iter().map(|lease| store.claim(lease, Duration::from_secs(60)))),
    )
    .await
    .expect("no hang");
    for answer in answers {
        assert!(
            matches!(answer, Err(klikit_webhook::StoreError::Backend(_))),
            "{answer:?}"
        );
    }
    assert!(matches!(
        store.complete(&lease, digest(), Duration::from_secs(60)).await,
        Err(klikit_webhook::StoreError::Backend(_))
    ));
    assert!(started.elapsed() < Duration::from_secs(2));
    factory.cleanup(&table).await;
}

/// A store outlives the runtime its batcher task ran on: used again on a
/// new runtime, it starts a new task (and new connections) and answers.
#[test]
fn a_store_works_on_a_second_runtime() {
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let Some(factory) = runtime().block_on(factory()) else {
        return;
    };
    let table = namespace();
    let first = runtime();
    let store = first.block_on(factory.open(&table));
    let lease = Lease::generate(id("first-runtime"));
    assert_eq!(
        first.block_on(store.claim(&lease, Duration::from_secs(60))).unwrap(),
        Claim::New
    );
    drop(first);
    let second = runtime();
    second.block_on(async {
        let mut completed = store.complete(&lease, digest(), Duration::from_secs(60)).await;
        // A connection made on the first runtime may fail once.
        if completed.is_err() {
            completed = store.complete(&lease, digest(), Duration::from_secs(60)).await;
        }
        assert!(completed.unwrap());
        factory.cleanup(&table).await;
    });
}
