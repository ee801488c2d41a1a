//! The claim at the layer when the store misbehaves: a claim that lands
//! after the layer stopped waiting for it, `complete` and `release` that
//! fail (and their background retries, their cap and their logs), and the
//! signature-dedup claim failing or in flight.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    io::Write,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use axum::{
    Router,
    body::Body,
    extract::State,
    http::{Request, StatusCode},
    routing::post,
};
use klikit_webhook::{
    KlikitEvent, KlikitWebhookLayer, MemoryStore, StoreError, StoreFailurePolicy, WebhookSecret,
    store::{BodyDigest, Claim, DedupStore, Lease, Result},
    testing::signed_request,
};
use tokio::{sync::Notify, task::JoinSet};
use tower::ServiceExt;

const SECRET: &str = "claim-test-secret-with-entropy";
const BODY: &str = r#"{"brand_id":663,"branch_id":1062,"orders":[{"id":7585307,"status":5}]}"#;
const CREATED: &str = "klikit.order.created.v2";
const STORE_TIMEOUT: Duration = Duration::from_millis(100);
/// The default lease: a claim nobody holds would block the event this long.
const LEASE: Duration = Duration::from_secs(60);
/// How long the slow claim takes to land: well past the store timeout.
const LATE_BY: Duration = Duration::from_millis(400);
const DUPLICATE: &str = r#"{"status":"duplicate-ignored"}"#;

fn layer(store: impl DedupStore) -> KlikitWebhookLayer {
    KlikitWebhookLayer::new(WebhookSecret::new(SECRET).unwrap())
        .with_store(store)
        .with_store_timeout(STORE_TIMEOUT)
        .with_lease(LEASE)
}

/// What the handler does: count its runs, optionally wait for a gate, answer
/// 500 while `fail` is set.
#[derive(Clone, Default)]
struct Handler {
    calls: Arc<AtomicUsize>,
    fail: Arc<AtomicBool>,
    delay: Duration,
    gate: Option<Arc<Notify>>,
    started: Option<Arc<Notify>>,
}

impl Handler {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

async fn handle(State(handler): State<Handler>, _event: KlikitEvent) -> (StatusCode, &'static str) {
    handler.calls.fetch_add(1, Ordering::SeqCst);
    if let Some(started) = &handler.started {
        started.notify_one();
    }
    if let Some(gate) = &handler.gate {
        gate.notified().await;
    }
    tokio::time::sleep(handler.delay).await;
    if handler.fail.load(Ordering::SeqCst) {
        (StatusCode::INTERNAL_SERVER_ERROR, "try again")
    } else {
        (StatusCode::OK, r#"{"status":"received"}"#)
    }
}

fn app(layer: KlikitWebhookLayer, handler: Handler) -> Router {
    Router::new()
        .route("/webhooks/klikit", post(handle))
        .with_state(handler)
        .layer(layer)
}

fn delivery(id: &str) -> Request<Body> {
    signed_request(SECRET, id, CREATED, BODY)
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

async fn status(app: &Router, id: &str) -> StatusCode {
    send(app, delivery(id)).await.0
}

/// Sends the delivery again every 100 ms, as a sender retrying, until it is
/// answered 2xx; returns how long that took and every status seen before.
async fn retry_until_processed(app: &Router, id: &str, within: Duration) -> (Duration, Vec<StatusCode>) {
    let started = Instant::now();
    let mut seen = Vec::new();
    loop {
        let answer = status(app, id).await;
        if answer.is_success() {
            return (started.elapsed(), seen);
        }
        seen.push(answer);
        assert!(
            started.elapsed() < within,
            "the delivery was not processed within {within:?} after the store recovered (lease {LEASE:?}); answers: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends the delivery every 20 ms while it is answered 409, for at most
/// `within`; returns the first other answer.
async fn until_not_in_flight(app: &Router, id: &str, within: Duration) -> (StatusCode, String) {
    let started = Instant::now();
    loop {
        let answer = send(app, delivery(id)).await;
        if answer.0 != StatusCode::CONFLICT || started.elapsed() > within {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// A claim that lands after the layer stopped waiting.
// ---------------------------------------------------------------------------

/// A store whose next `claim` (while `slow` is set) lands in the inner store
/// only after [`LATE_BY`], whether or not its caller still waits: like a
/// command already queued on a Redis connection, or an operation the
/// SQLite store's writer thread runs after its caller is gone.
#[derive(Debug, Clone)]
struct LateStore {
    inner: Arc<MemoryStore>,
    slow: Arc<AtomicBool>,
    landed: Arc<AtomicUsize>,
}

impl LateStore {
    fn new() -> Self {
        Self {
            inner: Arc::new(MemoryStore::new()),
            slow: Arc::new(AtomicBool::new(true)),
            landed: Arc::default(),
        }
    }

    /// Waits until the late claim has landed in the inner store.
    async fn wait_landed(&self) {
        let started = Instant::now();
        while self.landed.load(Ordering::SeqCst) == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the late claim never landed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[async_trait]
impl DedupStore for LateStore {
    async fn claim(&self, lease: &Lease, ttl: Duration) -> Result<Claim> {
        if !self.slow.swap(false, Ordering::SeqCst) {
            return self.inner.claim(lease, ttl).await;
        }
        let (inner, landed, lease) = (self.inner.clone(), self.landed.clone(), lease.clone());
        let late = tokio::spawn(async move {
            tokio::time::sleep(LATE_BY).await;
            let claim = inner.claim(&lease, ttl).await;
            landed.fetch_add(1, Ordering::SeqCst);
            claim
        });
        late.await.expect("the late claim panicked")
    }

    async fn complete(&self, lease: &Lease, digest: BodyDigest, retain: Duration) -> Result<bool> {
        self.inner.complete(lease, digest, retain).await
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        self.inner.release(lease).await
    }
}

/// The claim times out at the layer (503) and lands in the store afterwards
/// (after the layer's first release attempt, too); once the store answers
/// again, the next delivery is processed within seconds, not refused with
/// 409 until the lease ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_lands_after_the_store_timeout_does_not_block_the_event() {
    let store = LateStore::new();
    let handler = Handler::default();
    let app = app(layer(store.clone()), handler.clone());

    assert_eq!(status(&app, "evt-late").await, StatusCode::SERVICE_UNAVAILABLE);
    store.wait_landed().await;
    let (after, _) = retry_until_processed(&app, "evt-late", Duration::from_secs(5)).await;
    assert!(
        after < Duration::from_secs(5),
        "processed {after:?} after the store recovered"
    );
    assert_eq!(handler.calls(), 1, "the handler ran once");
    assert_eq!(send(&app, delivery("evt-late")).await.1, DUPLICATE);
    assert_eq!(handler.calls(), 1, "the duplicate did not reach the handler");
}

/// The request is dropped while its claim is on the way (the sender hung
/// up); the claim lands afterwards. The next delivery is processed within
/// seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_lands_after_the_request_was_dropped_does_not_block_the_event() {
    let store = LateStore::new();
    let handler = Handler::default();
    // A store timeout longer than the claim takes: only the drop cuts it.
    let app = app(
        layer(store.clone()).with_store_timeout(Duration::from_secs(2)),
        handler.clone(),
    );

    let dropped = tokio::time::timeout(Duration::from_millis(50), app.clone().oneshot(delivery("evt-dropped"))).await;
    assert!(dropped.is_err(), "the request was answered before it was dropped");
    store.wait_landed().await;
    retry_until_processed(&app, "evt-dropped", Duration::from_secs(5)).await;
    assert_eq!(handler.calls(), 1, "the handler ran once");
}

// ---------------------------------------------------------------------------
// `complete` and `release` that fail.
// ---------------------------------------------------------------------------

use Answer::{Fail, Pass, Stale};

/// What a [`FlakyStore`] operation answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// A backend error; the inner store is not touched.
    Fail,
    /// `Ok(false)`, as if the lease had been taken over; the inner store is
    /// not touched.
    Stale,
    /// Whatever the inner store answers.
    Pass,
}

/// A memory store whose `complete`, `release` and `claim` answer from a
/// script per event id (then from a default), recording when each call
/// started.
#[derive(Debug)]
struct FlakyStore {
    inner: MemoryStore,
    scripts: Mutex<HashMap<(&'static str, String), VecDeque<Answer>>>,
    defaults: Mutex<HashMap<&'static str, Answer>>,
    calls: Mutex<Vec<(&'static str, String, Instant)>>,
}

impl FlakyStore {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: MemoryStore::new(),
            scripts: Mutex::default(),
            defaults: Mutex::default(),
            calls: Mutex::default(),
        })
    }

    /// The next answers of `op` for `id`.
    fn script(&self, op: &'static str, id: &str, answers: &[Answer]) {
        self.scripts
            .lock()
            .unwrap()
            .insert((op, id.to_owned()), answers.iter().copied().collect());
    }

    /// What `op` answers once an id's script is exhausted (default `Pass`).
    fn default(&self, op: &'static str, answer: Answer) {
        self.defaults.lock().unwrap().insert(op, answer);
    }

    fn answer(&self, op: &'static str, id: &str) -> Answer {
        self.calls.lock().unwrap().push((op, id.to_owned(), Instant::now()));
        let scripted = self
            .scripts
            .lock()
            .unwrap()
            .get_mut(&(op, id.to_owned()))
            .and_then(VecDeque::pop_front);
        scripted.unwrap_or_else(|| *self.defaults.lock().unwrap().get(op).unwrap_or(&Answer::Pass))
    }

    /// When each call of `op` for `id` started.
    fn calls(&self, op: &str, id: &str) -> Vec<Instant> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter(|(o, i, _)| *o == op && i == id)
            .map(|(_, _, at)| *at)
            .collect()
    }

    /// The ids `op` was called for at least `n` times.
    fn ids_called(&self, op: &str, n: usize) -> HashSet<String> {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        let calls = self.calls.lock().unwrap();
        for (o, id, _) in calls.iter() {
            if *o == op {
                *counts.entry(id.as_str()).or_default() += 1;
            }
        }
        counts
            .into_iter()
            .filter(|(_, count)| *count >= n)
            .map(|(id, _)| id.to_owned())
            .collect()
    }

    /// What the inner store holds for `id`: a claim with a fresh lease,
    /// released again if it won.
    async fn state(&self, id: &str) -> Claim {
        let lease = Lease::generate(id.parse().unwrap());
        let claim = self.inner.claim(&lease, Duration::from_secs(1)).await.unwrap();
        if claim == Claim::New {
            assert!(self.inner.release(&lease).await.unwrap());
        }
        claim
    }
}

fn failure() -> StoreError {
    StoreError::backend(std::io::Error::other("connection reset"))
}

#[async_trait]
impl DedupStore for FlakyStore {
    async fn claim(&self, lease: &Lease, ttl: Duration) -> Result<Claim> {
        match self.answer("claim", lease.event_id().as_str()) {
            Answer::Fail => Err(failure()),
            Answer::Stale | Answer::Pass => self.inner.claim(lease, ttl).await,
        }
    }

    async fn complete(&self, lease: &Lease, digest: BodyDigest, retain: Duration) -> Result<bool> {
        match self.answer("complete", lease.event_id().as_str()) {
            Answer::Fail => Err(failure()),
            Answer::Stale => Ok(false),
            Answer::Pass => self.inner.complete(lease, digest, retain).await,
        }
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        match self.answer("release", lease.event_id().as_str()) {
            Answer::Fail => Err(failure()),
            Answer::Stale => Ok(false),
            Answer::Pass => self.inner.release(lease).await,
        }
    }
}

/// `complete` fails three times, then succeeds: the sender gets the
/// handler's 2xx at once, the completion is retried in the background, and
/// a later duplicate is `duplicate-ignored` without running the handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_that_fails_n_times_is_recorded_in_the_background() {
    let store = FlakyStore::new();
    store.script("complete", "evt-flaky", &[Fail, Fail, Fail]);
    let handler = Handler::default();
    let app = app(layer(store.clone()), handler.clone());

    assert_eq!(
        send(&app, delivery("evt-flaky")).await,
        (StatusCode::OK, r#"{"status":"received"}"#.to_owned())
    );
    // Until the retry lands the claim is in flight (409); then it is done.
    let answer = until_not_in_flight(&app, "evt-flaky", Duration::from_secs(2)).await;
    assert_eq!(answer, (StatusCode::OK, DUPLICATE.to_owned()));
    assert_eq!(handler.calls(), 1, "the handler ran once");
    assert_eq!(
        store.calls("complete", "evt-flaky").len(),
        4,
        "three failures, then the success"
    );
    assert_eq!(
        store.state("evt-flaky").await,
        Claim::Done {
            digest: Some(BodyDigest::of(BODY.as_bytes()))
        }
    );
}

/// The background completion gives up when the lease ends, counted from
/// the claim (not from when the retrying started): with a 600 ms lease and
/// a handler that takes 400 ms, no attempt starts later than 600 ms after
/// the claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_retries_end_with_the_lease_counted_from_the_claim() {
    let lease = Duration::from_millis(600);
    let store = FlakyStore::new();
    store.default("complete", Fail);
    let handler = Handler {
        delay: Duration::from_millis(400),
        ..Handler::default()
    };
    let app = app(layer(store.clone()).with_lease(lease), handler.clone());

    assert_eq!(status(&app, "evt-clock").await, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let claimed = store.calls("claim", "evt-clock")[0];
    let completes = store.calls("complete", "evt-clock");
    assert!(completes.len() >= 3, "retried only {} times", completes.len() - 1);
    let last = completes.last().unwrap().duration_since(claimed);
    assert!(
        last <= lease + Duration::from_millis(30),
        "a completion attempt started {last:?} after the claim, past its {lease:?} lease"
    );
}

/// While a store fails every completion, background retries pile up: at
/// most `MAX_BACKGROUND_TASKS` run at once, the rest are dropped (and
/// logged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_tasks_are_capped() {
    let limit = KlikitWebhookLayer::MAX_BACKGROUND_TASKS;
    let store = FlakyStore::new();
    store.default("complete", Fail);
    let app = app(layer(store.clone()), Handler::default());
    let deliveries = limit + 76;
    let mut tasks = JoinSet::new();
    for n in 0..deliveries {
        let app = app.clone();
        tasks.spawn(async move { status(&app, &format!("evt-cap-{n}")).await });
        if tasks.len() >= 32 {
            assert_eq!(tasks.join_next().await.unwrap().unwrap(), StatusCode::OK);
        }
    }
    while let Some(answer) = tasks.join_next().await {
        assert_eq!(answer.unwrap(), StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Each retry task tries at once: ids completed twice or more had one.
    let retried = store.ids_called("complete", 2).len();
    assert_eq!(
        retried, limit,
        "{retried} of {deliveries} failed completions are retried in the background; the limit is {limit}"
    );
}

/// A completion that failed at the layer: the sender still gets the
/// handler's 2xx (it succeeded); the store keeps the claim in flight, so a
/// duplicate during the lease gets 409; once the retries gave up with the
/// lease, the next delivery is processed again (at least once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_complete_answers_the_handlers_2xx_and_leaves_the_claim_to_its_lease() {
    let lease = Duration::from_millis(500);
    let store = FlakyStore::new();
    store.default("complete", Fail);
    let handler = Handler::default();
    let app = app(layer(store.clone()).with_lease(lease), handler.clone());

    assert_eq!(
        send(&app, delivery("evt-unrecorded")).await,
        (StatusCode::OK, r#"{"status":"received"}"#.to_owned())
    );
    assert!(
        matches!(store.state("evt-unrecorded").await, Claim::InFlight { .. }),
        "the claim stays in flight"
    );
    assert_eq!(status(&app, "evt-unrecorded").await, StatusCode::CONFLICT);
    tokio::time::sleep(lease).await;
    assert_eq!(status(&app, "evt-unrecorded").await, StatusCode::OK);
    assert_eq!(handler.calls(), 2, "processed again after the lease");
}

/// A release that failed once at the layer: the sender gets the handler's
/// 500; the release is retried in the background, so the store ends with
/// no claim and the sender's retry is processed at once, not refused (409)
/// for the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_release_answers_the_handlers_error_and_is_retried() {
    let store = FlakyStore::new();
    store.script("release", "evt-release", &[Fail]);
    let handler = Handler::default();
    handler.fail.store(true, Ordering::SeqCst);
    let app = app(layer(store.clone()), handler.clone());

    assert_eq!(
        send(&app, delivery("evt-release")).await,
        (StatusCode::INTERNAL_SERVER_ERROR, "try again".to_owned())
    );
    let started = Instant::now();
    while store.calls("release", "evt-release").len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the release was not retried"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(store.state("evt-release").await, Claim::New, "no claim is left");
    handler.fail.store(false, Ordering::SeqCst);
    assert_eq!(status(&app, "evt-release").await, StatusCode::OK);
    assert_eq!(handler.calls(), 2);
}

/// A release that keeps failing: the sender gets the handler's 500, the
/// store keeps the claim, the retry gets 409 until the lease ends and is
/// processed then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_keeps_failing_leaves_the_claim_to_its_lease() {
    let lease = Duration::from_millis(500);
    let store = FlakyStore::new();
    store.default("release", Fail);
    let handler = Handler::default();
    handler.fail.store(true, Ordering::SeqCst);
    let app = app(layer(store.clone()).with_lease(lease), handler.clone());

    assert_eq!(status(&app, "evt-stuck").await, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(matches!(store.state("evt-stuck").await, Claim::InFlight { .. }));
    handler.fail.store(false, Ordering::SeqCst);
    assert_eq!(status(&app, "evt-stuck").await, StatusCode::CONFLICT);
    tokio::time::sleep(lease).await;
    assert_eq!(status(&app, "evt-stuck").await, StatusCode::OK);
    assert_eq!(handler.calls(), 2);
}

// ---------------------------------------------------------------------------
// Every end of a background completion is logged.
// ---------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Three completions fail at first; their background retries end in each
/// of the three ways, and each end is logged with the event id: recorded
/// (INFO), claim no longer held (WARN), gave up when the lease ended
/// (ERROR).
#[test]
fn every_end_of_a_completion_retry_is_logged() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let store = FlakyStore::new();
    store.script("complete", "evt-recorded", &[Fail, Pass]);
    store.script("complete", "evt-taken-over", &[Fail, Stale]);
    store.script("complete", "evt-gave-up", &[Fail; 1000]);
    tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let app = app(
                layer(store.clone()).with_lease(Duration::from_millis(300)),
                Handler::default(),
            );
            for id in ["evt-recorded", "evt-taken-over", "evt-gave-up"] {
                assert_eq!(status(&app, id).await, StatusCode::OK);
            }
            tokio::time::sleep(Duration::from_millis(600)).await;
        });
    });
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = |id: &str, level: &str, words: &str| {
        logs.lines()
            .any(|line| line.contains(id) && line.contains(level) && line.contains(words))
    };
    assert!(line("evt-recorded", "INFO", "recorded on retry"), "recorded:\n{logs}");
    assert!(line("evt-taken-over", "WARN", "no longer held"), "taken over:\n{logs}");
    assert!(line("evt-gave-up", "ERROR", "gave up"), "gave up:\n{logs}");
}

/// The background tasks name the delivery's event id, never the body's
/// signature (the key of the signature-dedup claim), at every level.
#[test]
fn background_logs_never_contain_the_signature() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let store = FlakyStore::new();
    store.default("complete", Fail);
    store.default("release", Fail);
    tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let handler = Handler::default();
            let app = app(
                layer(store.clone())
                    .with_signature_dedup(true)
                    .with_lease(Duration::from_millis(300)),
                handler.clone(),
            );
            assert_eq!(status(&app, "evt-completed").await, StatusCode::OK);
            handler.fail.store(true, Ordering::SeqCst);
            let other = r#"{"brand_id":1,"branch_id":2,"orders":[]}"#;
            let failed = signed_request(SECRET, "evt-released", CREATED, other);
            assert_eq!(send(&app, failed).await.0, StatusCode::INTERNAL_SERVER_ERROR);
            tokio::time::sleep(Duration::from_millis(500)).await;
        });
    });
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("gave up") && logs.contains("body signature") && logs.contains("evt-completed"),
        "the background tasks logged:\n{logs}"
    );
    let signature = klikit_webhook::signature::sign(SECRET.as_bytes(), BODY.as_bytes());
    assert!(
        !logs.contains(&signature[..16]),
        "the signature leaked into the logs:\n{logs}"
    );
}

// ---------------------------------------------------------------------------
// The signature-dedup claim.
// ---------------------------------------------------------------------------

/// With signature deduplication, the store fails the claim of the
/// signature key only. Failing closed: 503, the handler does not run, and
/// the event id's claim is released (the retry, once the store is back, is
/// processed at once). Failing open: the handler runs on the id claim alone,
/// which is completed (a duplicate id is ignored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_signature_claim_fails_closed_or_open() {
    // Fail closed.
    let store = FlakyStore::new();
    let failing = Arc::new(FailSignatureClaims {
        inner: store.clone(),
        failing: AtomicBool::new(true),
    });
    let handler = Handler::default();
    let closed = app(layer(failing.clone()).with_signature_dedup(true), handler.clone());
    let (status_code, body) = send(&closed, delivery("evt-closed")).await;
    assert_eq!(status_code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(handler.calls(), 0, "the handler did not run");
    assert_eq!(store.state("evt-closed").await, Claim::New, "the id claim was released");
    failing.failing.store(false, Ordering::SeqCst);
    assert_eq!(status(&closed, "evt-closed").await, StatusCode::OK);
    assert_eq!(handler.calls(), 1);

    // Fail open.
    let store = FlakyStore::new();
    let failing = Arc::new(FailSignatureClaims {
        inner: store.clone(),
        failing: AtomicBool::new(true),
    });
    let handler = Handler::default();
    let app = app(
        layer(failing)
            .with_signature_dedup(true)
            .with_store_failure(StoreFailurePolicy::FailOpen),
        handler.clone(),
    );
    assert_eq!(status(&app, "evt-open").await, StatusCode::OK);
    assert_eq!(handler.calls(), 1, "the handler ran on the id claim alone");
    assert_eq!(
        store.state("evt-open").await,
        Claim::Done {
            digest: Some(BodyDigest::of(BODY.as_bytes()))
        },
        "the id claim was completed"
    );
    assert_eq!(send(&app, delivery("evt-open")).await.1, DUPLICATE);
    assert_eq!(handler.calls(), 1);
}

/// Fails every claim of a signature key while `failing` is set.
#[derive(Debug)]
struct FailSignatureClaims {
    inner: Arc<FlakyStore>,
    failing: AtomicBool,
}

#[async_trait]
impl DedupStore for FailSignatureClaims {
    async fn claim(&self, lease: &Lease, ttl: Duration) -> Result<Claim> {
        if self.failing.load(Ordering::SeqCst) && lease.event_id().as_str().starts_with("sig:") {
            return Err(failure());
        }
        self.inner.claim(lease, ttl).await
    }

    async fn complete(&self, lease: &Lease, digest: BodyDigest, retain: Duration) -> Result<bool> {
        self.inner.complete(lease, digest, retain).await
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        self.inner.release(lease).await
    }
}

/// With signature deduplication, the same body under a second id while the
/// first delivery's handler runs: 409 with `Retry-After` (the signature key
/// is in flight), and the second id's claim is released, so its redelivery
/// after the first completed is `duplicate-ignored` (not 409).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_claim_in_flight_is_409_and_releases_the_id_claim() {
    let gate = Arc::new(Notify::new());
    let started = Arc::new(Notify::new());
    let handler = Handler {
        gate: Some(gate.clone()),
        started: Some(started.clone()),
        ..Handler::default()
    };
    let store = Arc::new(MemoryStore::new());
    let app = app(layer(store.clone()).with_signature_dedup(true), handler.clone());
    let first = tokio::spawn({
        let app = app.clone();
        async move { status(&app, "evt-first").await }
    });
    started.notified().await;
    let response = app.clone().oneshot(delivery("evt-second")).await.unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert!(response.headers().contains_key("retry-after"));
    let lease = Lease::generate("evt-second".parse().unwrap());
    assert_eq!(
        store.claim(&lease, Duration::from_secs(1)).await.unwrap(),
        Claim::New,
        "the second id's claim was released"
    );
    assert!(store.release(&lease).await.unwrap());
    gate.notify_one();
    assert_eq!(first.await.unwrap(), StatusCode::OK);
    assert_eq!(send(&app, delivery("evt-second")).await.1, DUPLICATE);
    assert_eq!(handler.calls(), 1);
}

// ---------------------------------------------------------------------------
// The body digest.
// ---------------------------------------------------------------------------

/// A processed id delivered again with another body is answered as a
/// duplicate, without the handler, and logged at WARN; the same body again
/// is a plain duplicate, not logged at WARN.
#[test]
fn a_duplicate_id_with_another_body_is_ignored_and_logged() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let handler = Handler::default();
    tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let app = app(layer(MemoryStore::new()), handler.clone());
            assert_eq!(status(&app, "evt-digest").await, StatusCode::OK);
            assert_eq!(send(&app, delivery("evt-digest")).await.1, DUPLICATE);
            assert!(
                captured.0.lock().unwrap().is_empty(),
                "a plain duplicate is not a warning"
            );
            let other = signed_request(
                SECRET,
                "evt-digest",
                CREATED,
                r#"{"brand_id":1,"branch_id":2,"orders":[]}"#,
            );
            assert_eq!(send(&app, other).await, (StatusCode::OK, DUPLICATE.to_owned()));
        });
    });
    assert_eq!(handler.calls(), 1, "the handler ran once");
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.lines().any(|line| line.contains("WARN")
            && line.contains("evt-digest")
            && line.contains("duplicate_body_mismatch")),
        "{logs}"
    );
}
