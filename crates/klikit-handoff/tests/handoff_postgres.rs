//! The Postgres outbox hand-off against a real Postgres at `DATABASE_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`).
//!
//! Every test makes its own randomly named tables and drops them (and an
//! outbox's dead-letter table) at the end, whether the test passed or not.
//! If the server cannot be reached, a test fails when `CI` is set and
//! otherwise prints `SKIPPED: ...` to stderr and returns.
//!
//! The crash test (`crash`) runs its workers as child processes (this test
//! binary run again with the ignored test `crash::outbox_worker_process_entry`)
//! and kills them with SIGKILL, so a killed worker's connection, open
//! transaction and row locks vanish the way they do when a worker crashes or
//! is OOM-killed. `poison` puts rows that can never be processed among good
//! ones.
#![cfg(feature = "outbox")]

mod common;
#[path = "handoff_postgres/crash.rs"]
mod crash;
#[path = "handoff_postgres/poison.rs"]
mod poison;

use std::{
    collections::BTreeMap,
    future::Future,
    hash::{BuildHasher, Hasher},
    sync::Arc,
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
};
use futures_util::future::BoxFuture;
use http_body_util::BodyExt;
use klikit_handoff::postgres::deadpool_postgres::{self, Pool};
use klikit_handoff::postgres::{OutboxError, OutboxWorker, PostgresOutbox, ProcessError, receive};
use klikit_webhook::{
    ConfigError, EventId, EventType, KlikitEvent, KlikitWebhookLayer, PostgresStore, WebhookSecret,
    store::{BodyDigest, Claim, DedupStore, Lease},
    testing::{WEBHOOK_PATH, signed_request},
};
use tower::ServiceExt;

const SECRET: &str = "a-long-random-webhook-secret-for-outbox-tests";
const RECEIVED: &str = r#"{"status":"received"}"#;
const DUPLICATE: &str = r#"{"status":"duplicate-ignored"}"#;

/// A pool on `DATABASE_URL`, or `None` (after a loud SKIPPED) when the server
/// cannot be reached and `CI` is not set.
async fn pool_or_skip() -> Option<Pool> {
    let url = common::database_url();
    common::probe_postgres(&url).await?;
    Some(common::pool(&url, 12))
}

/// A connection of `pool`.
async fn client(pool: &Pool) -> deadpool_postgres::Object {
    pool.get().await.expect("a connection from the pool")
}

/// Runs `sql` (statements without parameters).
async fn execute(pool: &Pool, sql: &str) {
    client(pool)
        .await
        .batch_execute(sql)
        .await
        .unwrap_or_else(|error| panic!("{sql}: {}", common::describe(&error)));
}

/// The rows `sql` returns.
async fn query_rows(pool: &Pool, sql: &str) -> Vec<klikit_handoff::postgres::tokio_postgres::Row> {
    client(pool)
        .await
        .query(sql, &[])
        .await
        .unwrap_or_else(|error| panic!("{sql}: {}", common::describe(&error)))
}

/// A table name no other test run uses.
fn unique(prefix: &str) -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!("{prefix}_{:016x}", hasher.finish())
}

/// Runs `body`, then drops `tables` and their dead-letter tables
/// (`<table>_dead`) whatever happened, then re-raises a panic of `body`.
async fn with_cleanup<F>(pool: &Pool, tables: &[&str], body: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let outcome = tokio::spawn(body).await;
    for table in tables.iter().flat_map(|t| [t.to_string(), format!("{t}_dead")]) {
        let dropped = match pool.get().await {
            Ok(client) => client
                .batch_execute(&format!(r#"DROP TABLE IF EXISTS "{table}""#))
                .await
                .map_err(|error| common::describe(&error)),
            Err(error) => Err(common::describe(&error)),
        };
        if let Err(error) = dropped {
            eprintln!("cleanup: dropping {table}: {error}");
        }
    }
    if let Err(error) = outcome {
        match error.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(error) => panic!("test body did not finish: {error}"),
        }
    }
}

fn order_body(i: usize) -> String {
    format!(
        r#"{{"brand_id":663,"branch_id":1062,"orders":[{{"id":{},"external_id":"ABC-{i}","status":5,"total":"84.50"}}]}}"#,
        7_000_000 + i
    )
}

fn event(id: &str, body: String) -> KlikitEvent {
    KlikitEvent::new(
        id.parse().expect("id"),
        EventType::OrderStatusUpdated,
        Bytes::from(body),
    )
}

async fn send(app: &Router, id: &str, body: &str) -> (StatusCode, String) {
    let request = signed_request::<Body>(SECRET, id, EventType::ORDER_STATUS_UPDATED, body.to_owned());
    let response = app.clone().oneshot(request).await.expect("infallible router");
    let status = response.status();
    let bytes = response.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

async fn scalar(pool: &Pool, sql: String) -> i64 {
    query_rows(pool, &sql).await.first().expect("one row").get(0)
}

/// A dedup store and an outbox (with the store) on fresh tables.
async fn store_and_outbox(pool: &Pool, dedup: &str, outbox: &str) -> (PostgresStore, PostgresOutbox) {
    let store = PostgresStore::new(pool.clone()).with_table(dedup).expect("table name");
    store.migrate().await.expect("migrate store");
    let outbox = PostgresOutbox::new(pool.clone())
        .with_table(outbox)
        .expect("table name")
        .with_dedup(store.clone(), KlikitWebhookLayer::DEFAULT_RETENTION);
    outbox.migrate().await.expect("migrate outbox");
    outbox.migrate().await.expect("migrate is idempotent");
    (store, outbox)
}

fn layer(outbox: &PostgresOutbox) -> KlikitWebhookLayer {
    KlikitWebhookLayer::new(WebhookSecret::new(SECRET).expect("valid secret"))
        .with_store(outbox.dedup_store().expect("with_dedup was set"))
}

#[tokio::test]
async fn table_and_schema_names_are_validated() {
    // Nothing connects: a deadpool pool is lazy.
    let pool = common::pool("postgres://localhost/unused", 1);
    for bad in ["", "1abc", "a-b", "a\"b", "x; DROP TABLE y", &"a".repeat(64)] {
        assert_eq!(
            PostgresOutbox::new(pool.clone()).with_table(bad).unwrap_err(),
            ConfigError::InvalidIdentifier { name: bad.to_owned() }
        );
        assert!(PostgresOutbox::new(pool.clone()).with_schema(bad).is_err());
    }
    let outbox = PostgresOutbox::new(pool.clone())
        .with_schema("hooks")
        .expect("schema")
        .with_table("Outbox_1")
        .expect("table");
    assert_eq!((outbox.schema(), outbox.table()), (Some("hooks"), "Outbox_1"));
    assert!(matches!(outbox.dedup_store(), Err(OutboxError::NoDedupStore)));
}

#[tokio::test]
async fn enqueue_is_idempotent_on_event_id() {
    let Some(pool) = pool_or_skip().await else {
        return;
    };
    let table = unique("klikit_outbox_t");
    let name = table.clone();
    let db = pool.clone();
    with_cleanup(&pool, &[&table], async move {
        let outbox = PostgresOutbox::new(db.clone()).with_table(&name).expect("table name");
        outbox.migrate().await.expect("migrate");

        let first = event("evt-1", order_body(1));
        // A replay of the same id with a re-serialised body: the outbox keys
        // on the id, not the bytes.
        let replay = event("evt-1", order_body(1).replace(':', ": "));
        let second = event("evt-2", order_body(2));
        let answers = [
            outbox.enqueue(&first).await.expect("first"),
            outbox.enqueue(&first).await.expect("repeat"),
            outbox.enqueue(&replay).await.expect("replay"),
            outbox.enqueue(&second).await.expect("second"),
        ];
        let rows = scalar(&db, format!(r#"SELECT count(*) FROM "{name}""#)).await;
        eprintln!("enqueue_is_idempotent_on_event_id: 4 enqueues (3 of evt-1) -> queued {answers:?}, {rows} rows");
        assert_eq!(answers, [true, false, false, true]);
        assert_eq!(rows, 2, "one row per event id");
        let body: Vec<u8> = query_rows(&db, &format!(r#"SELECT body FROM "{name}" WHERE event_id = 'evt-1'"#))
            .await
            .first()
            .expect("row")
            .get(0);
        assert_eq!(body, first.body().as_ref(), "the first body, unchanged");
        assert_eq!(outbox.pending().await.expect("pending"), 2);
    })
    .await;
}

/// The layer's completion after the handler's transaction completed the
/// claim: the bare store reports the lease stale, the outbox's store does
/// not; a really stale lease is still stale.
#[tokio::test]
async fn handler_completion_and_layer_completion_agree() {
    let Some(pool) = pool_or_skip().await else {
        return;
    };
    let (dedup, table) = (unique("klikit_dedup_t"), unique("klikit_outbox_t"));
    let (d, t) = (dedup.clone(), table.clone());
    let db = pool.clone();
    with_cleanup(&pool, &[&dedup, &table], async move {
        let (store, outbox) = store_and_outbox(&db, &d, &t).await;
        let layer_store = outbox.dedup_store().expect("dedup store");
        let id: EventId = "evt-1".parse().expect("id");
        let lease = Lease::generate(id.clone());
        let digest = BodyDigest::of(order_body(1).as_bytes());
        assert_eq!(
            layer_store.claim(&lease, Duration::from_secs(30)).await.expect("claim"),
            Claim::New,
            "first claim is new"
        );
        assert!(outbox.enqueue(&event("evt-1", order_body(1))).await.expect("enqueue"));
        // Done in the handler's transaction: a retry is a duplicate now.
        assert_eq!(
            store
                .claim(&Lease::generate(id.clone()), Duration::from_secs(30))
                .await
                .expect("claim"),
            Claim::Done { digest: None }
        );
        assert!(store.is_completed(&lease).await.expect("is_completed"));
        assert!(
            !store
                .complete(&lease, digest, Duration::from_secs(60))
                .await
                .expect("complete"),
            "the bare store's complete only acts on a claim not yet done"
        );
        assert!(
            layer_store
                .complete(&lease, digest, Duration::from_secs(60))
                .await
                .expect("complete")
        );
        assert!(
            layer_store.release(&lease).await.expect("release"),
            "release keeps it done"
        );
        assert_eq!(
            store
                .claim(&Lease::generate(id.clone()), Duration::from_secs(30))
                .await
                .expect("claim"),
            Claim::Done { digest: Some(digest) },
            "the layer's completion stored the body's digest on the record the transaction completed"
        );

        // A lease that expired and was taken over stays stale.
        let other: EventId = "evt-2".parse().expect("id");
        let stale = Lease::generate(other.clone());
        assert_eq!(
            layer_store
                .claim(&stale, Duration::from_millis(1))
                .await
                .expect("claim"),
            Claim::New,
            "new"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        let fresh = Lease::generate(other.clone());
        assert_eq!(
            layer_store.claim(&fresh, Duration::from_secs(30)).await.expect("claim"),
            Claim::New,
            "expired lease taken over"
        );
        assert!(outbox.enqueue(&event("evt-2", order_body(2))).await.expect("enqueue"));
        let digest = BodyDigest::of(order_body(2).as_bytes());
        assert!(
            !layer_store
                .complete(&stale, digest, Duration::from_secs(60))
                .await
                .expect("complete")
        );
        assert!(!layer_store.release(&stale).await.expect("release"));
        assert!(
            layer_store
                .complete(&fresh, digest, Duration::from_secs(60))
                .await
                .expect("complete")
        );
    })
    .await;
}

/// A handler that commits the enqueue and then fails to answer: with a 500
/// (`mode` 0), by never answering until the connection is dropped (1), or by
/// rolling back instead of committing and answering 503 (2).
async fn flaky_handler(State((outbox, mode)): State<(PostgresOutbox, u8)>, event: KlikitEvent) -> Response {
    let mut client = outbox.pool().get().await.expect("connection");
    let tx = client.transaction().await.expect("begin");
    outbox.enqueue_in(&tx, &event).await.expect("enqueue_in");
    match mode {
        0 => {
            tx.commit().await.expect("commit");
            (StatusCode::INTERNAL_SERVER_ERROR, "crashed after the commit").into_response()
        }
        1 => {
            tx.commit().await.expect("commit");
            std::future::pending().await
        }
        _ => {
            tx.rollback().await.expect("rollback");
            (StatusCode::SERVICE_UNAVAILABLE, "crashed before the commit").into_response()
        }
    }
}

#[tokio::test]
async fn crash_between_enqueue_and_answer_queues_once_and_retry_is_duplicate() {
    let Some(pool) = pool_or_skip().await else {
        return;
    };
    let (dedup, table) = (unique("klikit_dedup_t"), unique("klikit_outbox_t"));
    let (d, t) = (dedup.clone(), table.clone());
    let db = pool.clone();
    with_cleanup(&pool, &[&dedup, &table], async move {
        let (_store, outbox) = store_and_outbox(&db, &d, &t).await;
        let count = |id: &str| scalar(&db, format!(r#"SELECT count(*) FROM "{t}" WHERE event_id = '{id}'"#));
        let normal: Router = Router::new()
            .route(WEBHOOK_PATH, post(receive))
            .route_layer(layer(&outbox))
            .with_state(outbox.clone());
        let flaky = |mode: u8| -> Router {
            Router::new()
                .route(WEBHOOK_PATH, post(flaky_handler))
                .route_layer(layer(&outbox))
                .with_state((outbox.clone(), mode))
        };

        // Committed, then 500: the event is queued and done; the layer's
        // release keeps it done, so Klikit's retry is a duplicate.
        let (status, text) = send(&flaky(0), "evt-500", &order_body(1)).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{text}");
        assert_eq!(count("evt-500").await, 1);
        let retry = send(&normal, "evt-500", &order_body(1)).await;
        assert_eq!(retry, (StatusCode::OK, DUPLICATE.to_owned()));

        // Committed, then the answer never left (the connection dropped the
        // request future): same outcome.
        let lost = tokio::time::timeout(Duration::from_millis(500), send(&flaky(1), "evt-lost", &order_body(2))).await;
        assert!(lost.is_err(), "the handler never answers");
        assert_eq!(count("evt-lost").await, 1);
        // The dropped request's claim guard finishes in the background.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let retry_lost = send(&normal, "evt-lost", &order_body(2)).await;
        assert_eq!(retry_lost, (StatusCode::OK, DUPLICATE.to_owned()));

        // Rolled back, then 503: nothing queued, the claim released, so the
        // retry is processed and queued once.
        let (status, _) = send(&flaky(2), "evt-503", &order_body(3)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(count("evt-503").await, 0);
        let retry_503 = send(&normal, "evt-503", &order_body(3)).await;
        assert_eq!(retry_503, (StatusCode::OK, RECEIVED.to_owned()));
        let again = send(&normal, "evt-503", &order_body(3)).await;
        assert_eq!(again, (StatusCode::OK, DUPLICATE.to_owned()));
        assert_eq!(count("evt-503").await, 1);

        let total = scalar(&db, format!(r#"SELECT count(*) FROM "{t}""#)).await;
        eprintln!(
            "crash_between_enqueue_and_answer: commit+500 -> retry {:?}; commit+no answer -> retry {:?}; \
             rollback+503 -> retry {:?} then {:?}; {total} outbox rows for 3 events",
            retry.1, retry_lost.1, retry_503.1, again.1
        );
        assert_eq!(total, 3);
    })
    .await;
}

/// Gives a closure stored in a variable the higher-ranked signature the
/// worker wants (a closure passed straight to `run` gets it inferred).
fn as_process<F>(f: F) -> F
where
    F: for<'c> Fn(&'c deadpool_postgres::Transaction<'c>, KlikitEvent) -> BoxFuture<'c, Result<(), ProcessError>>,
{
    f
}

#[tokio::test]
async fn worker_retries_gives_up_and_rolls_back_failed_effects() {
    let Some(pool) = pool_or_skip().await else {
        return;
    };
    let (table, effects) = (unique("klikit_outbox_t"), unique("klikit_effects_t"));
    let (t, e) = (table.clone(), effects.clone());
    let db = pool.clone();
    with_cleanup(&pool, &[&table, &effects], async move {
        let outbox = PostgresOutbox::new(db.clone()).with_table(&t).expect("table");
        outbox.migrate().await.expect("migrate");
        execute(&db, &format!(r#"CREATE TABLE "{e}" (event_id text NOT NULL)"#)).await;
        for id in ["ok", "flaky", "poison"] {
            outbox.enqueue(&event(id, order_body(1))).await.expect("enqueue");
        }
        let worker = OutboxWorker::new(&outbox)
            .with_batch_size(10)
            // Long enough that "flaky" is not due again within the first
            // batch on a loaded machine (it was 50 ms: a batch slower than
            // that took "flaky" twice), short enough to wait out below.
            .with_retry_delay(Duration::from_millis(500), Duration::from_millis(500));
        let calls = Arc::new(std::sync::Mutex::new(BTreeMap::<String, u32>::new()));
        let insert = Arc::new(format!(r#"INSERT INTO "{e}" (event_id) VALUES ($1)"#));
        let process = as_process(|tx, event| {
            let (calls, insert) = (calls.clone(), insert.clone());
            Box::pin(async move {
                // The effect is written first, then the failure: a failed
                // attempt must leave no effect behind.
                tx.execute(insert.as_str(), &[&event.id().as_str()])
                    .await
                    .map_err(ProcessError::retry)?;
                let n = {
                    let mut calls = calls.lock().expect("lock");
                    let n = calls.entry(event.id().to_string()).or_default();
                    *n += 1;
                    *n
                };
                match (event.id().as_str(), n) {
                    ("flaky", 1) => Err(ProcessError::retry(std::io::Error::other("pos busy"))),
                    ("poison", _) => Err(ProcessError::permanent(std::io::Error::other("unparseable"))),
                    _ => Ok(()),
                }
            })
        });
        assert_eq!(worker.process_batch(&process).await.expect("batch"), 3);
        assert_eq!(worker.process_batch(&process).await.expect("batch"), 0, "flaky waits");
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(worker.process_batch(&process).await.expect("batch"), 1);
        assert_eq!(worker.process_batch(&process).await.expect("batch"), 0);

        let effects: Vec<String> = query_rows(&db, &format!(r#"SELECT event_id FROM "{e}" ORDER BY event_id"#))
            .await
            .iter()
            .map(|row| row.get(0))
            .collect();
        let calls = calls.lock().expect("lock").clone();
        eprintln!("worker_retries_gives_up: calls {calls:?}, effects committed {effects:?}");
        assert_eq!(calls.get("flaky"), Some(&2));
        assert_eq!(calls.get("poison"), Some(&1));
        assert_eq!(effects, ["flaky", "ok"], "failed attempts rolled back their effects");
        let processed = scalar(
            &db,
            format!(r#"SELECT count(*) FROM "{t}" WHERE processed_at IS NOT NULL"#),
        )
        .await;
        let dead: Vec<(String, i32)> = query_rows(
            &db,
            &format!(r#"SELECT event_id, attempts FROM "{}""#, outbox.dead_letter_table()),
        )
        .await
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
        assert_eq!(processed, 2, "ok and flaky processed");
        assert_eq!(
            dead,
            [("poison".to_owned(), 1)],
            "poison given up after one attempt, dead-lettered"
        );
        // A redelivery of a dead-lettered event is not queued again.
        assert!(!outbox.enqueue(&event("poison", order_body(1))).await.expect("enqueue"));
        assert_eq!(outbox.pending().await.expect("pending"), 0);
        assert_eq!(outbox.purge_processed(Duration::ZERO).await.expect("purge"), 2);
    })
    .await;
}
