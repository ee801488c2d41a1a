//! Store faults and process crashes against the real backends, with a sender
//! that behaves like Klikit: a delivery that got a non-2xx answer or a
//! transport error is sent again after a short pause until it gets a 2xx.
//! Handler runs are counted per event id and attributed to the lease (token)
//! they ran under, through the [`Recording`] store wrapper.
//!
//! - `redis_killed_mid_load_*`: a throwaway `redis-server` (own port, AOF
//!   with `appendfsync always`) is SIGKILLed in the middle of a load and
//!   restarted on the same port.
//! - `postgres_connections_killed_mid_load_*`: `pg_terminate_backend` on
//!   this test's own connections (found by a unique `application_name`),
//!   repeatedly, during a load.
//!
//!   Each of these two runs twice: `*_short_lease` (lease 1 s, about as long
//!   as the fault) may handle a few events twice, each only after a lease
//!   whose completion was never recorded ([`check_load`]); `*_strict`
//!   (lease 30 s, store timeout 1 s) may handle none twice.
//! - `hanging_store_*`: a store that never answers, and a real Redis frozen
//!   with SIGSTOP.
//! - `*_receiver_sigkilled_mid_handler`: the layer runs in a child process
//!   (this test binary re-executed into the ignored `receiver_child_entry`),
//!   which is SIGKILLed while its handler sleeps, then restarted.
//!
//! Redis and Postgres are reached as in `tests/common/mod.rs` (`REDIS_URL`,
//! `DATABASE_URL`); unreachable servers, or no `redis-server` on `PATH`, skip
//! loudly, or fail when `CI` is set. Only loopback traffic.
#![cfg(all(feature = "axum", feature = "redis", feature = "postgres", feature = "sqlite"))]

mod common;
#[path = "common/faults.rs"]
mod faults_util;

use std::{
    collections::{HashMap, HashSet},
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use axum::{Json, Router, extract::State, routing::post};
use faults_util::{
    Attempt, Leases, Recording, RedisServer, SECRET, Server, client, deliver_until_2xx, redis_delete_prefix, send_once,
};
use http::StatusCode;
use klikit_webhook::{
    DedupStore, KlikitEvent, KlikitWebhookLayer, PostgresStore, RedisStore, SqliteStore, StoreError, WebhookSecret,
    store::{BodyDigest, Claim, Lease, LeaseToken},
    testing::WEBHOOK_PATH,
};
use serde_json::{Value, json};
use tokio::task::JoinSet;

/// How many times the handler ran (to a 2xx) for each event id.
type Handled = Arc<Mutex<HashMap<String, u32>>>;

const STORE_TIMEOUT: Duration = Duration::from_millis(300);
const LEASE: Duration = Duration::from_secs(1);

/// The handler: counts the run per event id and reports it to the
/// [`Recording`] store's [`Leases`], which attributes it to its lease.
async fn count(State((handled, leases)): State<(Handled, Leases)>, event: KlikitEvent) -> Json<Value> {
    *handled.lock().unwrap().entry(event.id().to_string()).or_default() += 1;
    leases.handler_ran(event.id().as_str());
    Json(json!({ "status": "received" }))
}

/// `leases`: the [`Recording`] store's, or a fresh one for a store that is
/// not wrapped (runs are then not attributed to leases, and not checked so).
fn app(layer: KlikitWebhookLayer, handled: Handled, leases: Leases) -> Router {
    Router::new()
        .route(WEBHOOK_PATH, post(count))
        .layer(layer)
        .with_state((handled, leases))
}

fn layer(store: impl DedupStore, store_timeout: Duration, lease: Duration) -> KlikitWebhookLayer {
    KlikitWebhookLayer::new(WebhookSecret::new(SECRET).unwrap())
        .with_store(store)
        .with_store_timeout(store_timeout)
        .with_lease(lease)
}

fn unique(label: &str) -> String {
    format!("klikit_faults_{label}_{}", LeaseToken::generate())
}

/// 300 events, every fifth one delivered a second time ten events later
/// (a duplicate), in sending order.
fn plan(run: &str, events: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for event in 0..events {
        ids.push(format!("evt-{run}-{event}"));
        if event >= 10 && event % 5 == 0 {
            ids.push(format!("evt-{run}-{}", event - 10));
        }
    }
    ids
}

/// The outcome of a load: every delivery's attempts, in sending order.
struct Load {
    deliveries: Vec<(String, Vec<Attempt>)>,
    elapsed: Duration,
}

impl Load {
    fn attempts(&self) -> impl Iterator<Item = &Attempt> {
        self.deliveries.iter().flat_map(|(_, attempts)| attempts)
    }

    fn summary(&self) -> String {
        let mut by_status: HashMap<String, usize> = HashMap::new();
        for attempt in self.attempts() {
            let key = attempt
                .status
                .map_or("transport-error".to_owned(), |s| s.as_u16().to_string());
            *by_status.entry(key).or_default() += 1;
        }
        let mut by_status: Vec<_> = by_status.into_iter().collect();
        by_status.sort();
        let slowest = self.attempts().map(|a| a.elapsed).max().unwrap_or_default();
        format!(
            "{} deliveries, {} attempts in {:.2?}, answers {by_status:?}, slowest attempt {slowest:.2?}",
            self.deliveries.len(),
            self.attempts().count(),
            self.elapsed
        )
    }
}

/// Sends `ids` to `addr`, one new delivery every `pace`, each retried like
/// Klikit until a 2xx. `started` counts deliveries sent so far.
async fn run_load(addr: SocketAddr, ids: Vec<String>, pace: Duration, started: Arc<AtomicUsize>) -> Load {
    let client = client();
    let begin = Instant::now();
    let mut tasks = JoinSet::new();
    for (n, id) in ids.into_iter().enumerate() {
        let client = client.clone();
        tasks.spawn(async move {
            let attempts = deliver_until_2xx(
                &client,
                &[addr],
                0,
                &id,
                Duration::from_millis(50),
                Duration::from_secs(30),
            )
            .await;
            (n, id, attempts)
        });
        started.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(pace).await;
    }
    let mut deliveries = Vec::new();
    while let Some(done) = tasks.join_next().await {
        deliveries.push(done.unwrap());
    }
    deliveries.sort_by_key(|(n, _, _)| *n);
    Load {
        deliveries: deliveries.into_iter().map(|(_, id, a)| (id, a)).collect(),
        elapsed: begin.elapsed(),
    }
}

/// A store-fault load's settings, and how many events it may handle twice.
#[derive(Debug, Clone, Copy)]
struct Variant {
    name: &'static str,
    store_timeout: Duration,
    lease: Duration,
    /// How many events may be handled more than once (each only as the
    /// per-lease rule in [`check_load`] allows).
    max_twice: usize,
}

impl Variant {
    /// The lease much longer than the store timeout: a completion that
    /// fails during the fault is retried in the background for ~29 s more,
    /// long after the store recovered (the faults last ~1 s), so it always
    /// lands before any later delivery can claim the event: no event may
    /// run twice.
    const fn strict() -> Self {
        Self {
            name: "strict",
            store_timeout: Duration::from_secs(1),
            lease: Duration::from_secs(30),
            max_twice: 0,
        }
    }

    /// `FAULTS_STRICT=1` allows no second run in every variant.
    fn max_twice(&self) -> usize {
        if std::env::var_os("FAULTS_STRICT").is_some() {
            0
        } else {
            self.max_twice
        }
    }
}

/// The checks shared by the store-fault loads:
/// - every delivery finally got a 2xx;
/// - no attempt took longer than two store timeouts plus 900 ms;
/// - every event was handled at least once (nothing lost);
/// - every handler run is attributed (through [`Leases`]) to a lease on its
///   event that the store granted, each lease to one run at most;
/// - per lease token: an event runs again only after leases whose completion
///   was never recorded. Every run of an event but its last happened under a
///   lease for which no `complete` returned `Ok(true)` (the store never
///   recorded the event as processed under it);
/// - at most `variant.max_twice()` events were handled more than once.
///
/// Returns the ids handled more than once.
fn check_load<S>(backend: &str, variant: &Variant, load: &Load, ids: &[String], store: &Recording<S>) -> Vec<String> {
    let backend = format!("{backend} ({})", variant.name);
    let leases = &store.leases;
    for (id, attempts) in &load.deliveries {
        assert!(
            attempts.last().is_some_and(Attempt::is_success),
            "{backend}: delivery of {id} never got a 2xx: {:?}; {}; {}",
            attempts.iter().map(|a| a.status).collect::<Vec<_>>(),
            load.summary(),
            store_summary(store),
        );
    }
    let slowest = load.attempts().map(|a| a.elapsed).max().unwrap_or_default();
    let limit = variant.store_timeout * 2 + Duration::from_millis(900);
    assert!(
        slowest < limit,
        "{backend}: an attempt took {slowest:?}, not under two store timeouts plus 900 ms ({limit:?})"
    );
    let events: HashSet<&String> = ids.iter().collect();
    let mut twice = Vec::new();
    leases.with(|ledger| {
        let no_runs = Vec::new();
        for id in events {
            let runs = ledger.runs.get(id).unwrap_or(&no_runs);
            assert!(!runs.is_empty(), "{backend}: {id} was never handled (lost)");
            let mut under = Vec::with_capacity(runs.len());
            for (n, run) in runs.iter().enumerate() {
                let lease = run.and_then(|token| ledger.leases.get(&token).map(|lease| (token, lease)));
                let Some((token, lease)) = lease.filter(|(_, lease)| lease.granted) else {
                    panic!(
                        "{backend}: run {} of {id} found no lease on {id} that the store granted on the handler's \
                         task and no earlier run had used",
                        n + 1
                    );
                };
                under.push((token, lease));
            }
            for (n, pair) in under.windows(2).enumerate() {
                let [(token, lease), (next, _)] = pair else {
                    unreachable!()
                };
                assert!(
                    !lease.recorded,
                    "{backend}: {id} ran again (run {} under lease {next}) after run {} under lease {token}, whose \
                     completion the store recorded (a `complete` for it returned Ok(true)); a run may follow only \
                     runs under leases whose completion was never recorded",
                    n + 2,
                    n + 1,
                );
            }
            if runs.len() > 1 {
                let detail: Vec<String> = under
                    .iter()
                    .map(|(token, lease)| {
                        format!(
                            "lease {token}: {} complete call(s), recorded {}",
                            lease.completes, lease.recorded
                        )
                    })
                    .collect();
                twice.push(format!("{id} [{}]", detail.join("; ")));
            }
        }
    });
    twice.sort();
    let max = variant.max_twice();
    assert!(
        twice.len() <= max,
        "{backend}: {} events were handled more than once (each only after a lease whose completion was never \
         recorded); at most {max} may be (lease {:?}, store timeout {:?}); {}; {}: {twice:#?}",
        twice.len(),
        variant.lease,
        variant.store_timeout,
        load.summary(),
        store_summary(store),
    );
    twice
}

/// What the store answered, for the report and failure messages: claim
/// errors, failed `complete` calls, leases under which the handler ran and
/// whose completion was never recorded (no `complete` for them returned
/// `Ok(true)`), and `release` calls (started; returned true, false, error;
/// the rest were abandoned at the store timeout or are still running).
fn store_summary<S>(store: &Recording<S>) -> String {
    let unrecorded = store.leases.with(|ledger| {
        ledger
            .leases
            .values()
            .filter(|lease| lease.runs > 0 && !lease.recorded)
            .count()
    });
    let log = store.log.lock().unwrap();
    format!(
        "claim errors {}, failed complete calls {}, leases run and never recorded {unrecorded}, release calls {} \
         (true {}, false {}, error {})",
        log.claim_errors,
        log.complete_failed.values().sum::<u32>(),
        log.releases,
        log.released,
        log.release_not_held,
        log.release_errors,
    )
}

/// Redelivers every event whose completion the store acknowledged: each must
/// be `duplicate-ignored` (nothing completed was forgotten).
async fn check_completed_remembered<S>(backend: &str, addr: SocketAddr, store: &Recording<S>, handled: &Handled) {
    let completed: Vec<String> = store.log.lock().unwrap().completed.keys().cloned().collect();
    assert!(!completed.is_empty());
    let before = handled.lock().unwrap().clone();
    let client = client();
    for id in &completed {
        let attempts = deliver_until_2xx(
            &client,
            &[addr],
            0,
            id,
            Duration::from_millis(50),
            Duration::from_secs(10),
        )
        .await;
        let last = attempts.last().unwrap();
        assert_eq!(
            (last.status, &last.body[..]),
            (Some(StatusCode::OK), &br#"{"status":"duplicate-ignored"}"#[..]),
            "{backend}: redelivery of completed {id} after the fault"
        );
    }
    assert_eq!(
        *handled.lock().unwrap(),
        before,
        "{backend}: a redelivery reached the handler"
    );
}

// ---------------------------------------------------------------------------
// Redis SIGKILLed mid-load.
// ---------------------------------------------------------------------------

/// A private `redis-server` with an append-only file fsynced on every write
/// (`--appendonly yes --appendfsync always`) is SIGKILLed a third of the way
/// into a paced load of 300 events (+58 duplicates), stays down ~1 s, and is
/// restarted on the same port from the same directory.
///
/// Without persistence a restarted Redis comes back empty: every completed
/// id would be forgotten and the next duplicate handled again. With
/// `appendfsync always` Redis fsyncs each write before it replies, so every
/// claim or completion the layer saw acknowledged survives the SIGKILL.
async fn redis_killed_mid_load(variant: Variant) {
    let Some(mut redis) = RedisServer::start(&format!("kill-{}", variant.name)).await else {
        return;
    };
    let store = Recording::new(RedisStore::connect(&redis.url()).await.unwrap().with_prefix("faults:"));
    let handled = Handled::default();
    let layer = layer(store.clone(), variant.store_timeout, variant.lease);
    let server = Server::start(app(layer, handled.clone(), store.leases.clone())).await;
    let run = LeaseToken::generate().to_string();
    let ids = plan(&run, 300);
    let started = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn(run_load(
        server.addr,
        ids.clone(),
        Duration::from_millis(5),
        started.clone(),
    ));

    while started.load(Ordering::SeqCst) < ids.len() / 3 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    redis.kill();
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    redis.restart().await;
    let down = killed_at.elapsed();
    let load = load.await.unwrap();

    let twice = check_load("redis", &variant, &load, &ids, &store);
    let unavailable: Vec<&Attempt> = load
        .attempts()
        .filter(|a| a.status == Some(StatusCode::SERVICE_UNAVAILABLE))
        .collect();
    assert!(
        !unavailable.is_empty(),
        "redis ({}): no 503 during the outage: {}",
        variant.name,
        load.summary()
    );
    assert!(
        unavailable.iter().all(|a| a.retry_after.is_some()),
        "redis ({}): a 503 without Retry-After",
        variant.name
    );
    check_completed_remembered("redis", server.addr, &store, &handled).await;
    eprintln!(
        "redis killed mid-load ({}, down {down:.2?}): {}; {}; events handled twice {}",
        variant.name,
        load.summary(),
        store_summary(&store),
        twice.len(),
    );
    server.stop().await;
}

/// Store timeout 300 ms, lease 1 s: Redis stays down about one lease, so a
/// completion that fails at the kill can stay unrecorded for its whole lease
/// and a later duplicate may run the handler again (the documented window).
///
/// At most 3 events may run twice. Only the 58 events the plan delivers
/// twice can (the first delivery gets its 2xx even when its completion
/// fails), and only if their completion was on its way at the one kill:
/// claims made while Redis is down fail, so no handler runs then. At one
/// new delivery every 5 ms and a few ms from claim to completion, that is
/// one or two events, one in five of them redelivered. Seen: 0 or 1 per run,
/// also with two CPU hogs beside the tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_load_short_lease() {
    redis_killed_mid_load(Variant {
        name: "short lease",
        store_timeout: STORE_TIMEOUT,
        lease: LEASE,
        max_twice: 3,
    })
    .await;
}

/// Store timeout 1 s, lease 30 s: no event may be handled twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_load_strict() {
    redis_killed_mid_load(Variant::strict()).await;
}

// ---------------------------------------------------------------------------
// Postgres connections terminated mid-load.
// ---------------------------------------------------------------------------

/// Held by each test that injects faults into the shared Postgres server
/// (or times a lease on it), so that they run one after another: hundreds of
/// terminated backends and their reconnections load the one postmaster that
/// every connection goes through, and one test's fault must not become
/// another's.
static POSTGRES_FAULTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `url` with `application_name=<name>` added to its query string.
fn with_application_name(url: &str, name: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}application_name={name}")
}

/// While a paced load of 300 events (+58 duplicates) runs, another
/// connection terminates every backend of this test's pool (matched by a
/// unique `application_name`) every 15 ms until the last delivery is sent.
async fn postgres_connections_killed_mid_load(variant: Variant) {
    let _one_at_a_time = POSTGRES_FAULTS.lock().await;
    let url = common::database_url();
    if common::probe_postgres(&url).await.is_none() {
        return;
    }
    let name = unique("pg");
    let pool = common::postgres_pool(&with_application_name(&url, &name), 8);
    let pg = PostgresStore::new(pool).with_table(&name).unwrap();
    pg.migrate().await.unwrap();
    let store = Recording::new(pg.clone());
    let handled = Handled::default();
    let layer = layer(store.clone(), variant.store_timeout, variant.lease);
    let server = Server::start(app(layer, handled.clone(), store.leases.clone())).await;
    let ids = plan(&name, 300);
    let started = Arc::new(AtomicUsize::new(0));
    let admin = common::postgres_pool(&url, 1);
    let load = tokio::spawn(run_load(
        server.addr,
        ids.clone(),
        Duration::from_millis(1),
        started.clone(),
    ));
    while started.load(Ordering::SeqCst) < ids.len() / 10 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut terminated = 0i64;
    // Every 15 ms while the load is being sent: most kills find a query
    // in flight, not just idle pooled connections.
    while started.load(Ordering::SeqCst) < ids.len() {
        let n = common::postgres_i64(
            &admin,
            &format!(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name = '{name}' AND pid <> pg_backend_pid()"
            ),
        )
        .await;
        terminated += n;
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let load = load.await.unwrap();
    assert!(
        terminated > 0,
        "postgres ({}): no connection was terminated",
        variant.name
    );

    let twice = check_load("postgres", &variant, &load, &ids, &store);
    check_completed_remembered("postgres", server.addr, &store, &handled).await;
    eprintln!(
        "postgres connections killed mid-load ({}, {terminated} backends terminated): {}; {}; events handled \
         twice {}",
        variant.name,
        load.summary(),
        store_summary(&store),
        twice.len(),
    );
    server.stop().await;
    common::postgres_execute(&admin, &format!(r#"DROP TABLE IF EXISTS "{name}""#)).await;
}

/// Store timeout 1 s (reconnecting costs a handshake: wider than Redis'),
/// lease 1 s: one completion that times out uses up its whole lease, so a
/// later duplicate may run the handler again (the documented window).
///
/// At most 29 events may run twice: half of the 58 events the plan
/// delivers twice, the only ones that can (the first delivery gets its 2xx
/// even when its completion fails), about 10 % of the 300. One of them runs
/// again when its first completion and every background retry failed within
/// the 1 s lease: with the store timeout as long as the lease, one
/// completion that takes over ~1 s (a killed connection, then a reconnect
/// on a busy machine) is enough, so the count follows the machine's load,
/// not the layer: 0 to 6 per run on this 2-core machine at its usual load
/// (load average 3.5 to 5), 16 to 21 with two CPU hogs added. The bound
/// catches second runs that became systematic (completions not stored at
/// all: all 58); a lost retry is the strict variant's to catch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_killed_mid_load_short_lease() {
    postgres_connections_killed_mid_load(Variant {
        name: "short lease",
        store_timeout: Duration::from_secs(1),
        lease: LEASE,
        max_twice: 29,
    })
    .await;
}

/// Store timeout 1 s, lease 30 s: no event may be handled twice.
///
/// Known failure (a defect in the layer, not in this test): on a loaded
/// machine the run sometimes ends with deliveries that got only 503s for the
/// sender's 30 s. Every claim that timed out leaves a background release
/// that retries until the lease ends (30 s here); while the pool is short
/// of connections each of those releases times out too, and up to 1024 of
/// them keep the 8-connection pool saturated for the whole lease. The
/// failure message then shows some 20,000 `release` calls started and a
/// hundred or so answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_killed_mid_load_strict() {
    postgres_connections_killed_mid_load(Variant::strict()).await;
}

// ---------------------------------------------------------------------------
// The per-lease check itself, on scripted histories.
// ---------------------------------------------------------------------------

/// Grants every claim; answers `complete` from a script (then `Ok(true)`).
#[derive(Debug, Default)]
struct Scripted {
    completes: Mutex<Vec<Result<bool, &'static str>>>,
}

#[async_trait]
impl DedupStore for Scripted {
    async fn claim(&self, _: &Lease, _: Duration) -> Result<Claim, StoreError> {
        Ok(Claim::New)
    }

    async fn complete(&self, _: &Lease, _: BodyDigest, _: Duration) -> Result<bool, StoreError> {
        let mut script = self.completes.lock().unwrap();
        if script.is_empty() {
            return Ok(true);
        }
        script.remove(0).map_err(StoreError::backend)
    }

    async fn release(&self, _: &Lease) -> Result<bool, StoreError> {
        Ok(true)
    }
}

/// Runs `history` through a [`Recording`] of a [`Scripted`] store, on one
/// spawned task as the layer would (claim, handler, complete), then
/// `check_load` on one delivered event, allowing `max_twice`.
async fn check_history(completes: Vec<Result<bool, &'static str>>, history: &'static str, max_twice: usize) {
    let store = Recording::new(Arc::new(Scripted {
        completes: Mutex::new(completes),
    }));
    let id = "evt-scripted";
    let recording = store.clone();
    tokio::spawn(async move {
        let mut lease = None;
        for step in history.split_whitespace() {
            match step {
                "claim" => {
                    let new = Lease::generate(id.parse().unwrap());
                    recording.claim(&new, LEASE).await.unwrap();
                    lease = Some(new);
                }
                "run" => recording.leases.handler_ran(id),
                "complete" => {
                    let _ = recording
                        .complete(lease.as_ref().unwrap(), BodyDigest::of(b"{}"), LEASE)
                        .await;
                }
                other => panic!("unknown step {other}"),
            }
        }
    })
    .await
    .unwrap();
    let load = Load {
        deliveries: vec![(
            id.to_owned(),
            vec![Attempt {
                status: Some(StatusCode::OK),
                retry_after: None,
                body: Default::default(),
                elapsed: Duration::ZERO,
            }],
        )],
        elapsed: Duration::ZERO,
    };
    let variant = Variant {
        name: "scripted",
        store_timeout: STORE_TIMEOUT,
        lease: LEASE,
        max_twice,
    };
    check_load("scripted", &variant, &load, &[id.to_owned()], &store);
}

/// The hole the per-event check left: the first completion failed, the
/// background retry recorded it, and the event still ran again. More
/// `complete` calls started than returned `Ok(true)`, but the lease the
/// first run happened under was recorded: refused.
#[tokio::test]
#[should_panic(expected = "whose completion the store recorded")]
async fn check_load_refuses_a_run_after_a_recorded_completion() {
    check_history(vec![Err("cut")], "claim run complete complete claim run complete", 58).await;
}

/// The first lease's completion never landed: a second run is allowed, and
/// counted against the bound.
#[tokio::test]
async fn check_load_allows_a_run_after_an_unrecorded_completion() {
    check_history(
        vec![Err("cut"), Err("cut")],
        "claim run complete complete claim run complete",
        1,
    )
    .await;
}

#[tokio::test]
#[should_panic(expected = "1 events were handled more than once")]
async fn check_load_counts_second_runs_against_the_bound() {
    check_history(vec![Err("cut")], "claim run complete claim run complete", 0).await;
}

#[tokio::test]
#[should_panic(expected = "run 2 of evt-scripted found no lease")]
async fn check_load_refuses_two_runs_under_one_lease() {
    check_history(vec![], "claim run run complete", 58).await;
}

#[tokio::test]
#[should_panic(expected = "run 1 of evt-scripted found no lease")]
async fn check_load_refuses_a_run_without_a_granted_lease() {
    check_history(vec![], "run", 58).await;
}

// ---------------------------------------------------------------------------
// A store that hangs.
// ---------------------------------------------------------------------------

/// Never answers; counts the calls.
#[derive(Debug, Default)]
struct HangingStore {
    claims: AtomicUsize,
    completes: AtomicUsize,
    releases: AtomicUsize,
}

#[async_trait]
impl DedupStore for HangingStore {
    async fn claim(&self, _: &Lease, _: Duration) -> Result<Claim, StoreError> {
        self.claims.fetch_add(1, Ordering::SeqCst);
        std::future::pending().await
    }

    async fn complete(&self, _: &Lease, _: BodyDigest, _: Duration) -> Result<bool, StoreError> {
        self.completes.fetch_add(1, Ordering::SeqCst);
        std::future::pending().await
    }

    async fn release(&self, _: &Lease) -> Result<bool, StoreError> {
        self.releases.fetch_add(1, Ordering::SeqCst);
        std::future::pending().await
    }
}

/// Twenty concurrent deliveries against a store that never answers: each is
/// answered 503 with `Retry-After` within the store timeout (plus slack),
/// the handler never runs, and nothing is completed; each claim the layer
/// gave up on is released in the background (it might still land).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_store_answers_503_within_the_store_timeout() {
    let store = Arc::new(HangingStore::default());
    let handled = Handled::default();
    let server = Server::start(app(
        layer(Arc::clone(&store), STORE_TIMEOUT, LEASE),
        handled.clone(),
        Leases::default(),
    ))
    .await;
    let client = client();
    let mut tasks = JoinSet::new();
    for n in 0..20 {
        let client = client.clone();
        let addr = server.addr;
        tasks.spawn(
            async move { send_once(&client, addr, SECRET, &format!("evt-hang-{n}"), Duration::from_secs(5)).await },
        );
    }
    while let Some(attempt) = tasks.join_next().await {
        let attempt = attempt.unwrap();
        assert_eq!(attempt.status, Some(StatusCode::SERVICE_UNAVAILABLE), "{attempt:?}");
        assert!(attempt.retry_after.is_some(), "503 without Retry-After");
        assert!(
            attempt.elapsed >= STORE_TIMEOUT - Duration::from_millis(20)
                && attempt.elapsed < STORE_TIMEOUT + Duration::from_millis(700),
            "answered after {:?}",
            attempt.elapsed
        );
    }
    assert!(handled.lock().unwrap().is_empty(), "the handler ran");
    assert_eq!(store.claims.load(Ordering::SeqCst), 20);
    assert_eq!(store.completes.load(Ordering::SeqCst), 0, "a claim was completed");
    // Each claim the layer gave up on gets a background release (it might
    // still land). The layer makes at most `MAX_BACKGROUND_CALLS` background
    // store calls at once, and this store hangs each until the store
    // timeout: releases start at once, in rounds of at most that many, and
    // none starts after the lease (counted from the claim) has ended.
    let calls = KlikitWebhookLayer::MAX_BACKGROUND_CALLS;
    let started = Instant::now();
    while store.releases.load(Ordering::SeqCst) < calls {
        assert!(
            started.elapsed() < STORE_TIMEOUT + Duration::from_secs(1),
            "only {} abandoned claims were released",
            store.releases.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(LEASE + Duration::from_millis(500)).await;
    let released = store.releases.load(Ordering::SeqCst);
    let rounds = usize::try_from((LEASE + STORE_TIMEOUT).as_millis() / STORE_TIMEOUT.as_millis()).unwrap() + 1;
    assert!(
        released <= rounds * calls,
        "{released} background releases in one lease: more than {calls} at a time"
    );
    let after_lease = store.releases.load(Ordering::SeqCst);
    tokio::time::sleep(STORE_TIMEOUT * 2).await;
    assert_eq!(
        store.releases.load(Ordering::SeqCst),
        after_lease,
        "a release started after the lease had ended"
    );
    server.stop().await;
}

/// A real Redis that stops answering (SIGSTOP on a private `redis-server`):
/// 503 within the store timeout and the handler does not run. The claim
/// the layer gave up on is still queued on the socket: when Redis resumes
/// (SIGCONT) it is applied, and the layer's background release of its
/// lease, queued behind it, removes it; a retry in between may find the
/// event "in flight" (409). Then the event is handled exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_store_frozen_redis() {
    let Some(redis) = RedisServer::start("stop").await else {
        return;
    };
    let store = RedisStore::connect(&redis.url()).await.unwrap().with_prefix("faults:");
    let handled = Handled::default();
    let server = Server::start(app(
        layer(store, STORE_TIMEOUT, LEASE),
        handled.clone(),
        Leases::default(),
    ))
    .await;
    let client = client();
    // Warm up: connection made, scripts loaded.
    let warm = send_once(&client, server.addr, SECRET, "evt-warm", Duration::from_secs(5)).await;
    assert_eq!(warm.status, Some(StatusCode::OK));

    let pid = redis.pid().unwrap().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let frozen = send_once(&client, server.addr, SECRET, "evt-frozen", Duration::from_secs(5)).await;
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    let resumed = Instant::now();
    assert_eq!(frozen.status, Some(StatusCode::SERVICE_UNAVAILABLE), "{frozen:?}");
    assert!(frozen.retry_after.is_some());
    assert!(
        frozen.elapsed < STORE_TIMEOUT + Duration::from_millis(700),
        "{:?}",
        frozen.elapsed
    );
    assert!(
        !handled.lock().unwrap().contains_key("evt-frozen"),
        "handler ran while the store hung"
    );

    let attempts = deliver_until_2xx(
        &client,
        &[server.addr],
        0,
        "evt-frozen",
        Duration::from_millis(50),
        Duration::from_secs(10),
    )
    .await;
    assert!(attempts.last().unwrap().is_success());
    let conflicts = attempts
        .iter()
        .filter(|a| a.status == Some(StatusCode::CONFLICT))
        .count();
    let resumed_to_2xx = resumed.elapsed();
    assert_eq!(handled.lock().unwrap()["evt-frozen"], 1);
    eprintln!(
        "frozen redis: 503 after {:.2?}; after SIGCONT the retry got {conflicts} x 409 (orphan claim) \
         before its 2xx, {resumed_to_2xx:.2?} after SIGCONT",
        frozen.elapsed,
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------
// The receiver process SIGKILLed while its handler runs.
// ---------------------------------------------------------------------------

const CHILD_ENV: &str = "KLIKIT_FAULTS_CHILD";

/// The child receiver: serves the layer over the store named in
/// `KLIKIT_FAULTS_CHILD` (`backend\nspec\nkey\nlease_ms\nslow_id`) on an
/// ephemeral loopback port. Its handler prints `CHILD STARTED <id>`, sleeps
/// a minute if the id is `slow_id`, then prints `CHILD HANDLED <id>`.
/// Without the variable (a plain `cargo test -- --ignored`) it does nothing.
#[tokio::test]
#[ignore = "child process of the *_receiver_sigkilled_mid_handler tests"]
async fn receiver_child_entry() {
    let Ok(config) = std::env::var(CHILD_ENV) else {
        eprintln!("receiver_child_entry: {CHILD_ENV} not set; nothing to do");
        return;
    };
    let parts: Vec<&str> = config.split('\n').collect();
    let [backend, spec, key, lease_ms, slow] = parts[..] else {
        panic!("bad {CHILD_ENV}: {config:?}");
    };
    let store: Arc<dyn DedupStore> = match backend {
        "sqlite" => Arc::new(SqliteStore::open(spec).await.unwrap()),
        "redis" => Arc::new(RedisStore::connect(spec).await.unwrap().with_prefix(key)),
        "postgres" => {
            let store = PostgresStore::connect(spec).await.unwrap().with_table(key).unwrap();
            store.migrate().await.unwrap();
            Arc::new(store)
        }
        other => panic!("unknown backend {other}"),
    };
    let layer = KlikitWebhookLayer::new(WebhookSecret::new(SECRET).unwrap())
        .with_shared_store(store)
        .with_lease(Duration::from_millis(lease_ms.parse().unwrap()));
    let slow = slow.to_owned();
    let say = |line: String| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "CHILD {line}");
        let _ = out.flush();
    };
    let app = Router::new().route(
        WEBHOOK_PATH,
        post(move |event: KlikitEvent| {
            let slow = slow.clone();
            async move {
                let id = event.id().to_string();
                say(format!("STARTED {id}"));
                if id == slow {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                say(format!("HANDLED {id}"));
                Json(json!({ "status": "received" }))
            }
        })
        .layer(layer),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    say(format!("LISTENING {}", listener.local_addr().unwrap()));
    axum::serve(listener, app).await.unwrap();
}

/// Lines printed by child receivers, shared across restarts.
type Lines = Arc<Mutex<Vec<String>>>;

struct ChildReceiver {
    child: Child,
    addr: SocketAddr,
}

impl ChildReceiver {
    async fn spawn(config: &str, lines: &Lines) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "receiver_child_entry",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let shared = Arc::clone(lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The harness prints `test receiver_child_entry ... ` without
                // a newline before the first line: look anywhere in it.
                if let Some(at) = line.find("CHILD ") {
                    let rest = &line[at + "CHILD ".len()..];
                    if let Some(addr) = rest.strip_prefix("LISTENING ") {
                        let _ = tx.send(addr.to_owned());
                    } else {
                        shared.lock().unwrap().push(rest.to_owned());
                    }
                }
            }
        });
        let addr = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("child receiver did not start within 20 s")
            .expect("child receiver exited before listening");
        Self {
            child,
            addr: addr.parse().unwrap(),
        }
    }

    /// SIGKILL and reap; asserts the process died of the signal.
    fn kill(&mut self) {
        use std::os::unix::process::ExitStatusExt;
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "child died of SIGKILL: {status:?}");
    }
}

impl Drop for ChildReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn count_lines(lines: &Lines, line: &str) -> usize {
    lines.lock().unwrap().iter().filter(|l| *l == line).count()
}

async fn wait_line(lines: &Lines, line: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while count_lines(lines, line) == 0 {
        assert!(Instant::now() < deadline, "no `{line}` within {within:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The lease both children use. The restarted child must be up and retried
/// before the killed child's claim expires, so not much shorter.
const CHILD_LEASE: Duration = Duration::from_secs(3);

/// 1. Child A completes `done`, then starts `slow` (its handler sleeps) and
///    is SIGKILLed mid-handler; the sender sees a transport error.
/// 2. Child B (same store, same lease) is started. A retry of `slow` within
///    the dead child's lease gets 409 with `Retry-After`; retried like
///    Klikit, it is handled once after the lease expired.
/// 3. `done`, completed before the kill, is `duplicate-ignored` by child B.
async fn receiver_sigkilled_mid_handler(backend: &str, spec: &str, key: &str) {
    let run = LeaseToken::generate();
    let (done, slow) = (format!("evt-done-{run}"), format!("evt-slow-{run}"));
    let lines = Lines::default();
    let lease_ms = CHILD_LEASE.as_millis();
    let client = client();

    let mut a = ChildReceiver::spawn(&format!("{backend}\n{spec}\n{key}\n{lease_ms}\n{slow}"), &lines).await;
    let first = send_once(&client, a.addr, SECRET, &done, Duration::from_secs(5)).await;
    assert_eq!(
        (first.status, &first.body[..]),
        (Some(StatusCode::OK), &br#"{"status":"received"}"#[..]),
        "{backend}: first delivery of {done}"
    );
    let addr = a.addr;
    let (sender_client, sender_slow) = (client.clone(), slow.clone());
    let in_handler =
        tokio::spawn(
            async move { send_once(&sender_client, addr, SECRET, &sender_slow, Duration::from_secs(30)).await },
        );
    wait_line(&lines, &format!("STARTED {slow}"), Duration::from_secs(10)).await;
    let claimed_at = Instant::now();
    a.kill();
    let cut = in_handler.await.unwrap();
    assert_eq!(
        cut.status, None,
        "{backend}: the killed delivery got an answer: {cut:?}"
    );

    let b = ChildReceiver::spawn(&format!("{backend}\n{spec}\n{key}\n{lease_ms}\n-"), &lines).await;
    let restarted_in = claimed_at.elapsed();
    let during = send_once(&client, b.addr, SECRET, &slow, Duration::from_secs(5)).await;
    assert!(
        claimed_at.elapsed() < CHILD_LEASE,
        "{backend}: the restart took {restarted_in:?}, past the lease; cannot check the 409"
    );
    assert_eq!(
        during.status,
        Some(StatusCode::CONFLICT),
        "{backend}: retry during the dead child's lease: {during:?}"
    );
    let retry_after: u64 = during.retry_after.as_ref().unwrap().to_str().unwrap().parse().unwrap();
    assert!(
        (1..=CHILD_LEASE.as_secs()).contains(&retry_after),
        "Retry-After {retry_after}"
    );

    let attempts = deliver_until_2xx(
        &client,
        &[b.addr],
        0,
        &slow,
        Duration::from_millis(200),
        Duration::from_secs(15),
    )
    .await;
    let last = attempts.last().unwrap();
    assert_eq!(
        (last.status, &last.body[..]),
        (Some(StatusCode::OK), &br#"{"status":"received"}"#[..]),
        "{backend}: retry after the lease: {:?}",
        attempts.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    // `claimed_at` is when the parent saw the handler start, a little after
    // the claim: allow that much.
    assert!(
        claimed_at.elapsed() + Duration::from_millis(300) >= CHILD_LEASE,
        "{backend}: handled {:?} after the claim, before the lease expired",
        claimed_at.elapsed()
    );
    let again = send_once(&client, b.addr, SECRET, &slow, Duration::from_secs(5)).await;
    assert_eq!(&again.body[..], br#"{"status":"duplicate-ignored"}"#, "{backend}");

    // Child B prints `STARTED` then `HANDLED` before it answers, but the
    // reader thread may not have taken them from the pipe yet: wait for the
    // later line before counting.
    wait_line(&lines, &format!("HANDLED {slow}"), Duration::from_secs(5)).await;
    let redo = send_once(&client, b.addr, SECRET, &done, Duration::from_secs(5)).await;
    assert_eq!(
        (redo.status, &redo.body[..]),
        (Some(StatusCode::OK), &br#"{"status":"duplicate-ignored"}"#[..]),
        "{backend}: {done}, completed before the kill, after the restart"
    );
    assert_eq!(count_lines(&lines, &format!("HANDLED {done}")), 1, "{backend}: {done}");
    assert_eq!(
        count_lines(&lines, &format!("STARTED {slow}")),
        2,
        "{backend}: {slow} started"
    );
    assert_eq!(
        count_lines(&lines, &format!("HANDLED {slow}")),
        1,
        "{backend}: {slow} handled"
    );
    eprintln!(
        "{backend}: child SIGKILLed mid-handler, restarted in {restarted_in:.2?}; retry got 409 \
         (Retry-After {retry_after}), then {} attempts to the 2xx",
        attempts.len()
    );
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_receiver_sigkilled_mid_handler() {
    let file = std::env::temp_dir().join(format!("{}.sqlite3", unique("sqlite")));
    receiver_sigkilled_mid_handler("sqlite", file.to_str().unwrap(), "-").await;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = file.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_receiver_sigkilled_mid_handler() {
    let url = common::redis_url();
    if common::probe_redis(&url).await.is_none() {
        return;
    }
    let prefix = format!("{}:", unique("redis"));
    receiver_sigkilled_mid_handler("redis", &url, &prefix).await;
    redis_delete_prefix(&url, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_receiver_sigkilled_mid_handler() {
    let _one_at_a_time = POSTGRES_FAULTS.lock().await;
    let url = common::database_url();
    if common::probe_postgres(&url).await.is_none() {
        return;
    }
    let table = unique("pg");
    receiver_sigkilled_mid_handler("postgres", &url, &table).await;
    let admin = common::postgres_pool(&url, 1);
    common::postgres_execute(&admin, &format!(r#"DROP TABLE IF EXISTS "{table}""#)).await;
}
