//! The Postgres outbox hand-off against a real Postgres at `DATABASE_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`).
//!
//! Every test makes its own randomly named tables and drops them at the end,
//! whether the test passed or not. If the server cannot be reached, a test
//! fails when `CI` is set and otherwise prints `SKIPPED: ...` to stderr and
//! returns.
//!
//! The crash test runs its workers as child processes (this test binary run
//! again with the ignored test `outbox_worker_process_entry`) and kills them
//! with SIGKILL, so a killed worker's connection, open transaction and row
//! locks vanish the way they do when a worker crashes or is OOM-killed.
#![cfg(feature = "outbox")]

mod common;

use std::{
    collections::BTreeMap,
    future::Future,
    hash::{BuildHasher, Hasher},
    io::{BufRead, BufReader, Write},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
};
use futures_util::{StreamExt, future::BoxFuture};
use http_body_util::BodyExt;
use klikit_handoff::postgres::{OutboxError, OutboxWorker, PostgresOutbox, ProcessError, receive};
use klikit_webhook::{
    ConfigError, EventId, EventType, KlikitEvent, KlikitWebhookLayer, PostgresStore, WebhookSecret,
    store::{BodyDigest, Claim, DedupStore, Lease},
    testing::{WEBHOOK_PATH, signed_request},
};
use sqlx::{AssertSqlSafe, PgPool, postgres::PgPoolOptions};
use tokio::sync::mpsc;
use tower::ServiceExt;

const SECRET: &str = "a-long-random-webhook-secret-for-outbox-tests";
const RECEIVED: &str = r#"{"status":"received"}"#;
const DUPLICATE: &str = r#"{"status":"duplicate-ignored"}"#;

/// A pool on `DATABASE_URL`, or `None` (after a loud SKIPPED) when the server
/// cannot be reached and `CI` is not set.
async fn pool_or_skip() -> Option<PgPool> {
    let url = common::database_url();
    common::probe_postgres(&url).await?;
    Some(
        PgPoolOptions::new()
            .max_connections(12)
            .connect(&url)
            .await
            .expect("connect to Postgres"),
    )
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

/// Runs `body`, then drops `tables` whatever happened, then re-raises a
/// panic of `body`.
async fn with_cleanup<F>(pool: &PgPool, tables: &[&str], body: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let outcome = tokio::spawn(body).await;
    for table in tables {
        if let Err(error) = sqlx::query(AssertSqlSafe(format!(r#"DROP TABLE IF EXISTS "{table}""#)))
            .execute(pool)
            .await
        {
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

async fn scalar(pool: &PgPool, sql: String) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(sql))
        .fetch_one(pool)
        .await
        .expect("query")
}

/// A dedup store and an outbox (with the store) on fresh tables.
async fn store_and_outbox(pool: &PgPool, dedup: &str, outbox: &str) -> (PostgresStore, PostgresOutbox) {
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
    let pool = PgPool::connect_lazy("postgres://localhost/unused").expect("lazy pool");
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
        let body: Vec<u8> = sqlx::query_scalar(AssertSqlSafe(format!(
            r#"SELECT body FROM "{name}" WHERE event_id = 'evt-1'"#
        )))
        .fetch_one(&db)
        .await
        .expect("row");
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
    let mut tx = outbox.pool().begin().await.expect("begin");
    outbox.enqueue_in(&mut tx, &event).await.expect("enqueue_in");
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
    F: for<'c> Fn(&'c mut sqlx::PgConnection, KlikitEvent) -> BoxFuture<'c, Result<(), ProcessError>>,
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
        sqlx::query(AssertSqlSafe(format!(r#"CREATE TABLE "{e}" (event_id text NOT NULL)"#)))
            .execute(&db)
            .await
            .expect("effects table");
        for id in ["ok", "flaky", "poison"] {
            outbox.enqueue(&event(id, order_body(1))).await.expect("enqueue");
        }
        let worker = OutboxWorker::new(&outbox)
            .with_batch_size(10)
            .with_retry_delay(Duration::from_millis(50), Duration::from_millis(50));
        let calls = Arc::new(std::sync::Mutex::new(BTreeMap::<String, u32>::new()));
        let insert = Arc::new(format!(r#"INSERT INTO "{e}" (event_id) VALUES ($1)"#));
        let process = as_process(|conn, event| {
            let (calls, insert) = (calls.clone(), insert.clone());
            Box::pin(async move {
                // The effect is written first, then the failure: a failed
                // attempt must leave no effect behind.
                sqlx::query(AssertSqlSafe(insert.as_str()))
                    .bind(event.id().as_str())
                    .execute(&mut *conn)
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
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(worker.process_batch(&process).await.expect("batch"), 1);
        assert_eq!(worker.process_batch(&process).await.expect("batch"), 0);

        let effects: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            r#"SELECT event_id FROM "{e}" ORDER BY event_id"#
        )))
        .fetch_all(&db)
        .await
        .expect("effects");
        let calls = calls.lock().expect("lock").clone();
        eprintln!("worker_retries_gives_up: calls {calls:?}, effects committed {effects:?}");
        assert_eq!(calls.get("flaky"), Some(&2));
        assert_eq!(calls.get("poison"), Some(&1));
        assert_eq!(effects, ["flaky", "ok"], "failed attempts rolled back their effects");
        let failed: (i64, i64) = sqlx::query_as(AssertSqlSafe(format!(
            r#"SELECT count(*) FILTER (WHERE failed_at IS NOT NULL), count(*) FILTER (WHERE processed_at IS NOT NULL) FROM "{t}""#
        )))
        .fetch_one(&db)
        .await
        .expect("states");
        assert_eq!(failed, (1, 2), "poison given up, ok and flaky processed");
        assert_eq!(outbox.pending().await.expect("pending"), 0);
        assert_eq!(outbox.purge_processed(Duration::ZERO).await.expect("purge"), 2);
    })
    .await;
}

// ---------------------------------------------------------------------------
// Full path: signed deliveries -> layer (PostgresStore) -> handler (enqueue +
// dedup completion in one transaction) -> outbox -> worker processes that are
// SIGKILLed mid-batch and restarted.
// ---------------------------------------------------------------------------

const WORKER_ENV: &str = "KLIKIT_TEST_OUTBOX_WORKER";

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "WORKER {line}");
    let _ = out.flush();
}

/// A worker process: the entry point of the child processes of
/// `full_path_worker_killed_mid_batch_processes_every_event_once`. Without
/// its environment (a plain `cargo test -- --ignored`) it does nothing.
///
/// Its side effect is a row in the effects table, written through the
/// worker's transaction. That table has **no** unique key: an event
/// processed twice would show up as two rows. It prints `CALLED <id>` per
/// call (before the commit) and, on call number `hang_after`, `HANGING <id>`
/// and then waits forever, holding its batch's locks and uncommitted effects.
#[tokio::test]
#[ignore = "child process of full_path_worker_killed_mid_batch_processes_every_event_once"]
async fn outbox_worker_process_entry() {
    let Ok(config) = std::env::var(WORKER_ENV) else {
        eprintln!("outbox_worker_process_entry: {WORKER_ENV} not set; nothing to do");
        return;
    };
    let parts: Vec<&str> = config.split('\n').collect();
    let [url, table, effects, hang_after] = parts[..] else {
        panic!("bad {WORKER_ENV}: {config:?}");
    };
    let hang_after: usize = hang_after.parse().expect("hang_after");
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .expect("connect");
    let outbox = PostgresOutbox::new(pool).with_table(table).expect("table");
    let worker = OutboxWorker::new(&outbox)
        .with_batch_size(5) // BATCH of the test
        .with_poll_interval(Duration::from_millis(20));
    let insert = Arc::new(format!(
        r#"INSERT INTO "{effects}" (event_id, pid, body) VALUES ($1, $2, $3)"#
    ));
    let calls = Arc::new(AtomicUsize::new(0));
    let pid = i32::try_from(std::process::id()).expect("pid");
    say(&format!("STARTED {pid}"));
    let result = worker
        .run(|conn, event| {
            let (insert, calls) = (insert.clone(), calls.clone());
            Box::pin(async move {
                sqlx::query(AssertSqlSafe(insert.as_str()))
                    .bind(event.id().as_str())
                    .bind(pid)
                    .bind(event.body().as_ref())
                    .execute(&mut *conn)
                    .await
                    .map_err(ProcessError::retry)?;
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                say(&format!("CALLED {}", event.id()));
                if n == hang_after {
                    // The worst moment to die: effects written, batch not committed.
                    say(&format!("HANGING {}", event.id()));
                    std::future::pending::<()>().await;
                }
                Ok(())
            })
        })
        .await;
    panic!("worker stopped: {result:?}");
}

/// A worker child process, killed (SIGKILL) and reaped when dropped.
struct WorkerProcess {
    child: Child,
}

impl WorkerProcess {
    fn spawn(number: usize, config: &str, lines: mpsc::UnboundedSender<(usize, String)>) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "outbox_worker_process_entry",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(WORKER_ENV, config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn worker process");
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("WORKER ") {
                    let _ = lines.send((number, rest.to_owned()));
                }
            }
        });
        Self { child }
    }

    /// SIGKILL, then reap; asserts the process died of the signal.
    fn kill(&mut self) {
        use std::os::unix::process::ExitStatusExt;
        self.child.kill().expect("SIGKILL");
        let status = self.child.wait().expect("reap");
        assert_eq!(status.signal(), Some(9), "worker died of SIGKILL: {status:?}");
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Default)]
struct Ledger {
    calls: usize,
    called: BTreeMap<usize, Vec<String>>,
    hung: Option<String>,
    per_worker: BTreeMap<usize, usize>,
}

impl Ledger {
    fn record(&mut self, worker: usize, line: &str) {
        let (what, id) = line.split_once(' ').unwrap_or((line, ""));
        match what {
            "CALLED" => {
                self.calls += 1;
                self.called.entry(worker).or_default().push(id.to_owned());
                *self.per_worker.entry(worker).or_default() += 1;
            }
            "HANGING" => self.hung = Some(id.to_owned()),
            _ => {}
        }
    }
}

/// Reads worker lines into `ledger` until `until(ledger, worker)` holds.
async fn wait_for(
    lines: &mut mpsc::UnboundedReceiver<(usize, String)>,
    ledger: &mut Ledger,
    deadline: Instant,
    until: impl Fn(&Ledger, usize) -> bool,
) {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some((worker, line))) = tokio::time::timeout(left, lines.recv()).await else {
            panic!("timed out waiting for the workers; they said {:?}", ledger.per_worker);
        };
        ledger.record(worker, &line);
        if until(ledger, worker) {
            return;
        }
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_path_worker_killed_mid_batch_processes_every_event_once() {
    let test = "full_path_worker_killed_mid_batch_processes_every_event_once";
    let Some(pool) = pool_or_skip().await else {
        return;
    };
    let (dedup, table, effects) = (
        unique("klikit_dedup_t"),
        unique("klikit_outbox_t"),
        unique("klikit_effects_t"),
    );
    let (d, t, e) = (dedup.clone(), table.clone(), effects.clone());
    let db = pool.clone();
    with_cleanup(&pool, &[&dedup, &table, &effects], async move {
        const N: usize = 300;
        const HANG_AFTER: usize = 43;
        const KILL_SECOND_AFTER: usize = 82;
        const BATCH: usize = 5;
        let started = Instant::now();
        let (_store, outbox) = store_and_outbox(&db, &d, &t).await;
        sqlx::query(AssertSqlSafe(format!(
            r#"CREATE TABLE "{e}" (n bigserial PRIMARY KEY, event_id text NOT NULL, pid integer NOT NULL, body bytea NOT NULL)"#
        )))
        .execute(&db)
        .await
        .expect("effects table");

        let app: Router = Router::new()
            .route(WEBHOOK_PATH, post(receive))
            .route_layer(layer(&outbox))
            .with_state(outbox.clone());
        let mut deliveries: Vec<usize> = (0..N).collect();
        deliveries.extend((0..N).filter(|i| i % 4 == 0)); // Klikit retries
        deliveries.extend((0..N).filter(|i| i % 6 == 0)); // and more
        // A fixed shuffle, so duplicates arrive both concurrently and later.
        deliveries.sort_by_key(|&i| (i * 7919) % 1009);
        let total_deliveries = deliveries.len();

        let (lines_tx, mut lines) = mpsc::unbounded_channel();
        let url = common::database_url();
        let worker_config = |hang_after: usize| format!("{url}\n{t}\n{e}\n{hang_after}");

        // Klikit: send every delivery, retrying each until it gets a 2xx.
        let sender = tokio::spawn(async move {
            let answers = futures_util::stream::iter(deliveries)
                .map(|i| {
                    let app = app.clone();
                    async move {
                        let id = format!("evt-{i:04}");
                        let body = order_body(i);
                        let mut tries = Vec::new();
                        loop {
                            let (status, text) = send(&app, &id, &body).await;
                            tries.push((status, text));
                            if status.is_success() || tries.len() >= 100 {
                                return tries;
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                })
                .buffer_unordered(16)
                .collect::<Vec<_>>()
                .await;
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for tries in &answers {
                for (status, text) in tries {
                    *counts.entry(format!("{} {text}", status.as_u16())).or_default() += 1;
                }
                assert!(
                    tries.last().is_some_and(|(s, _)| s.is_success()),
                    "a delivery never got a 2xx: {tries:?}"
                );
            }
            counts
        });

        let deadline = Instant::now() + Duration::from_secs(20);
        // Start worker 1 once enough is queued that its batches are full, so
        // it hangs in the middle of one.
        while outbox.pending().await.expect("pending") < 2 * HANG_AFTER as i64 {
            assert!(Instant::now() < deadline, "the receiver does not queue");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut first = WorkerProcess::spawn(1, &worker_config(HANG_AFTER), lines_tx.clone());
        let mut ledger = Ledger::default();
        // Worker 1 hangs mid-batch: effects written, nothing committed.
        wait_for(&mut lines, &mut ledger, deadline, |l, _| l.hung.is_some()).await;
        let hung = ledger.hung.clone().expect("hung id");
        // The calls of the hung batch: batches of BATCH, full, in order.
        let in_hung_batch: Vec<String> = ledger.called[&1][HANG_AFTER / BATCH * BATCH..].to_vec();
        let row_locked = format!(r#"SELECT 1 FROM "{t}" WHERE event_id = $1 FOR UPDATE NOWAIT"#);
        let locked = sqlx::query(AssertSqlSafe(row_locked.clone()))
            .bind(&hung)
            .fetch_optional(&db)
            .await;
        assert!(locked.is_err(), "the hung worker holds its batch's row locks");
        first.kill();
        let batch_ids = in_hung_batch.iter().map(|id| format!("'{id}'")).collect::<Vec<_>>().join(",");
        let hung_effects = scalar(&db, format!(r#"SELECT count(*) FROM "{e}" WHERE event_id IN ({batch_ids})"#)).await;
        let hung_pending = scalar(
            &db,
            format!(r#"SELECT count(*) FROM "{t}" WHERE event_id IN ({batch_ids}) AND processed_at IS NULL"#),
        )
        .await;
        // Postgres ends the killed worker's backend (and so its transaction
        // and locks) when it notices the closed socket: poll briefly.
        let mut released = None;
        for _ in 0..100 {
            match sqlx::query(AssertSqlSafe(row_locked.clone())).bind(&hung).fetch_one(&db).await {
                Ok(row) => {
                    released = Some(row);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        assert!(released.is_some(), "the killed worker's locks are gone within 5 s");
        let committed = scalar(&db, format!(r#"SELECT count(*) FROM "{e}""#)).await;
        eprintln!(
            "{test}: worker 1 SIGKILLed after {HANG_AFTER} calls, in a batch whose first {} events \
             {in_hung_batch:?} had their effects written: {committed} effects committed, \
             {hung_effects} of the hung batch, {hung_pending} of its rows pending again",
            in_hung_batch.len()
        );
        assert_eq!(in_hung_batch.len(), HANG_AFTER % BATCH, "hung mid-batch");
        assert_eq!(committed, (HANG_AFTER / BATCH * BATCH) as i64, "the full batches committed");
        assert_eq!(hung_effects, 0, "the killed batch's effects were rolled back");
        assert_eq!(hung_pending, in_hung_batch.len() as i64, "the killed batch's rows are pending again");

        // Worker 2: killed mid-stream, at no particular point of its loop.
        let mut second = WorkerProcess::spawn(2, &worker_config(0), lines_tx.clone());
        wait_for(&mut lines, &mut ledger, deadline, |l, w| {
            w == 2 && l.per_worker.get(&2) >= Some(&KILL_SECOND_AFTER)
        })
        .await;
        second.kill();
        let committed = scalar(&db, format!(r#"SELECT count(*) FROM "{e}""#)).await;
        eprintln!("{test}: worker 2 SIGKILLed after {KILL_SECOND_AFTER} calls; {committed} effects committed by then");

        // Workers 3 and 4, in parallel, finish the queue.
        let _third = WorkerProcess::spawn(3, &worker_config(0), lines_tx.clone());
        let _fourth = WorkerProcess::spawn(4, &worker_config(0), lines_tx.clone());
        let counts = sender.await.expect("sender");
        loop {
            while let Ok((worker, line)) = lines.try_recv() {
                ledger.record(worker, &line);
            }
            let pending = outbox.pending().await.expect("pending");
            let effects = scalar(&db, format!(r#"SELECT count(*) FROM "{e}""#)).await;
            if pending == 0 && effects >= N as i64 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not done in time: {pending} pending, {effects} effects"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Anything late (a batch still committing) would show up here.
        tokio::time::sleep(Duration::from_millis(300)).await;
        while let Ok((worker, line)) = lines.try_recv() {
            ledger.record(worker, &line);
        }

        let per_event: Vec<(String, i64, Vec<u8>)> = sqlx::query_as(AssertSqlSafe(format!(
            r#"SELECT event_id, count(*), (array_agg(body))[1] FROM "{e}" GROUP BY event_id ORDER BY event_id"#
        )))
        .fetch_all(&db)
        .await
        .expect("effects");
        let by_pid: Vec<(i32, i64)> = sqlx::query_as(AssertSqlSafe(format!(
            r#"SELECT pid, count(*) FROM "{e}" GROUP BY pid ORDER BY pid"#
        )))
        .fetch_all(&db)
        .await
        .expect("effects per pid");
        let outbox_rows = scalar(&db, format!(r#"SELECT count(*) FROM "{t}""#)).await;
        let processed = scalar(&db, format!(r#"SELECT count(*) FROM "{t}" WHERE processed_at IS NOT NULL"#)).await;
        let done = scalar(&db, format!(r#"SELECT count(*) FROM "{d}" WHERE done"#)).await;
        let duplicates: usize = total_deliveries - N;
        eprintln!(
            "{test}: {total_deliveries} HTTP deliveries of {N} events -> answers {counts:?}; \
             outbox {outbox_rows} rows, {processed} processed; dedup {done} done; \
             {} worker calls {:?} (re-runs of rolled-back work: {}); effects {} rows for {} event ids, \
             committed per worker pid {by_pid:?}; {:.1?}",
            ledger.calls,
            ledger.per_worker,
            ledger.calls - N,
            per_event.iter().map(|(_, n, _)| n).sum::<i64>(),
            per_event.len(),
            started.elapsed(),
        );

        assert_eq!(counts.get(&format!("200 {RECEIVED}")), Some(&N), "each event queued once");
        assert_eq!(counts.get(&format!("200 {DUPLICATE}")), Some(&duplicates));
        assert_eq!(outbox_rows, N as i64, "one outbox row per event id");
        assert_eq!(processed, N as i64, "nothing left unprocessed");
        assert_eq!(done, N as i64, "every dedup claim done");
        assert_eq!(per_event.len(), N, "every event's effect exists");
        for (i, (id, n, body)) in per_event.iter().enumerate() {
            assert_eq!(id, &format!("evt-{i:04}"));
            assert_eq!(*n, 1, "{id}: effect exactly once");
            assert_eq!(body, order_body(i).as_bytes(), "{id}: the body as sent");
        }
        assert!(ledger.calls > N, "the killed batches were processed again");
    })
    .await;
}
