//! The layer through an axum `Router`: one test per row of the answer table,
//! plus the failure paths that must release a claim.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, Request, StatusCode},
    response::IntoResponse,
    routing::post,
};
use klikit_webhook::{
    EventType, KlikitEvent, KlikitPayload, KlikitWebhookLayer, MemoryStore, Rejection, RejectionKind, StoreError,
    StoreFailurePolicy, WebhookSecret,
    signature::sign,
    store::{BodyDigest, Claim, DedupStore, Lease},
    testing::signed_request,
};
use tokio::sync::Notify;
use tower::ServiceExt;

const SECRET: &str = "test-secret-with-enough-entropy";
const BODY: &str = r#"{"brand_id":663,"branch_id":1062,"orders":[{"id":7585307,"status":5,"total":"84.50"}]}"#;
const CREATED: &str = "klikit.order.created.v2";

fn secret() -> WebhookSecret {
    WebhookSecret::new(SECRET).unwrap()
}

fn layer() -> KlikitWebhookLayer {
    KlikitWebhookLayer::new(secret())
}

/// What the test handler does on its n-th call (0-based); afterwards 200.
#[derive(Clone, Default)]
struct Script {
    calls: Arc<AtomicUsize>,
    fail_first: usize,
    gate: Option<Arc<Notify>>,
    started: Option<Arc<Notify>>,
}

async fn scripted(State(script): State<Script>, event: KlikitEvent, body: Bytes) -> impl IntoResponse {
    let n = script.calls.fetch_add(1, Ordering::SeqCst);
    if let Some(started) = &script.started {
        started.notify_one();
    }
    if let Some(gate) = &script.gate {
        gate.notified().await;
    }
    assert_eq!(event.body(), &body, "the handler reads the verified bytes");
    if n < script.fail_first {
        return (StatusCode::INTERNAL_SERVER_ERROR, "try again").into_response();
    }
    Json(serde_json::json!({"status": "received", "id": event.id().as_str()})).into_response()
}

fn router(layer: KlikitWebhookLayer, script: Script) -> Router {
    Router::new()
        .route("/webhooks/klikit", post(scripted))
        .with_state(script)
        .layer(layer)
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

fn signed(id: &str) -> Request<Body> {
    signed_request(SECRET, id, CREATED, BODY)
}

#[tokio::test]
async fn signed_event_reaches_handler_once_then_duplicate_is_ignored() {
    let script = Script::default();
    let app = router(layer(), script.clone());
    let (status, _, body) = send(&app, signed("evt-1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, r#"{"id":"evt-1","status":"received"}"#);
    let (status, headers, body) = send(&app, signed("evt-1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, r#"{"status":"duplicate-ignored"}"#);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(script.calls.load(Ordering::SeqCst), 1);
    // Another id is another event.
    let (status, _, _) = send(&app, signed("evt-2")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(script.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn missing_or_empty_headers_are_400_naming_the_header() {
    let script = Script::default();
    let app = router(layer(), script.clone());
    for header in ["x-klikit-signature", "x-klikit-event-id", "x-klikit-event-type"] {
        let mut request = signed("evt-missing");
        request.headers_mut().remove(header);
        let (status, _, body) = send(&app, request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{header}");
        assert_eq!(body, format!(r#"{{"error":"missing header {header}"}}"#));

        let mut request = signed("evt-empty");
        request.headers_mut().insert(header, "".parse().unwrap());
        let (status, _, body) = send(&app, request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{header}");
        assert!(body.contains(header), "{body}");

        let mut request = signed("evt-repeated");
        let value = request.headers()[header].clone();
        request.headers_mut().append(header, value);
        let (status, _, body) = send(&app, request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{header}");
        assert!(body.contains(header), "{body}");
    }
    assert_eq!(script.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn event_ids_are_1_to_256_visible_ascii_bytes() {
    let script = Script::default();
    let app = router(layer(), script.clone());
    let longest = "a".repeat(256);
    assert_eq!(send(&app, signed(&longest)).await.0, StatusCode::OK);
    let too_long = "a".repeat(257);
    let (status, _, body) = send(&app, signed(&too_long)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("x-klikit-event-id"), "{body}");
    for bad in ["has space", "tab\tinside"] {
        let mut request = signed("placeholder");
        request.headers_mut().insert("x-klikit-event-id", bad.parse().unwrap());
        assert_eq!(send(&app, request).await.0, StatusCode::BAD_REQUEST, "{bad:?}");
    }
    let mut request = signed("placeholder");
    request.headers_mut().insert(
        "x-klikit-event-id",
        axum::http::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
    );
    assert_eq!(send(&app, request).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(script.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn wrong_or_malformed_signatures_are_401_and_never_reach_the_handler() {
    let script = Script::default();
    let app = router(layer(), script.clone());
    let good = sign(SECRET.as_bytes(), BODY.as_bytes());
    let other_body = sign(SECRET.as_bytes(), b"{}");
    let other_secret = sign(b"another-secret-entirely", BODY.as_bytes());
    let cases = [
        other_body.clone(),
        other_secret,
        good[..63].to_owned(),
        format!("{good}0"),
        format!("sha256={good}"),
        format!("{}g", &good[..63]),
        sign(SECRET.as_bytes(), b""),
    ];
    for (i, signature) in cases.iter().enumerate() {
        let mut request = signed(&format!("evt-forged-{i}"));
        request
            .headers_mut()
            .insert("x-klikit-signature", signature.parse().unwrap());
        let (status, _, body) = send(&app, request).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "case {i}");
        assert_eq!(body, r#"{"error":"invalid signature"}"#);
    }
    assert_eq!(script.calls.load(Ordering::SeqCst), 0);
    // A forged delivery records nothing: the genuine one still goes through.
    let mut request = signed("evt-forged-0");
    request
        .headers_mut()
        .insert("x-klikit-signature", good.to_uppercase().parse().unwrap());
    assert_eq!(
        send(&app, request).await.0,
        StatusCode::OK,
        "upper-case hex is accepted"
    );
    assert_eq!(script.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn body_over_the_limit_is_413_by_content_length_and_by_stream() {
    let script = Script::default();
    let app = router(layer().with_body_limit(1024), script.clone());
    let big = "x".repeat(1025);
    let (status, _, body) = send(&app, signed_request(SECRET, "evt-big", CREATED, big.clone())).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body, r#"{"error":"body exceeds the size limit"}"#);

    // A stream with no length that never ends: cut off, not buffered.
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = pulled.clone();
    let endless = futures_util::stream::repeat_with(move || {
        counter.fetch_add(64 * 1024, Ordering::SeqCst);
        Ok::<_, Infallible>(Bytes::from(vec![b'x'; 64 * 1024]))
    });
    let mut request = signed_request::<Body>(SECRET, "evt-stream", CREATED, "");
    *request.body_mut() = Body::from_stream(endless);
    let (status, _, _) = send(&app, request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let pulled = pulled.load(Ordering::SeqCst);
    assert!(pulled < 16 * 1024 * 1024, "the layer stopped reading ({pulled} bytes)");

    // Exactly at the limit is fine.
    let exact = "x".repeat(1024);
    let (status, _, _) = send(&app, signed_request(SECRET, "evt-exact", CREATED, exact)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(script.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn slow_body_is_408() {
    let app = router(layer().with_body_timeout(Duration::from_millis(100)), Script::default());
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(1);
    let mut request = signed_request::<Body>(SECRET, "evt-slow", CREATED, "");
    *request.body_mut() = Body::from_stream(tokio_stream_from(rx));
    tx.send(Ok(Bytes::from_static(b"{"))).await.unwrap();
    let (status, _, body) = send(&app, request).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(body, r#"{"error":"body not received in time"}"#);
    drop(tx);
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn in_flight_event_is_409_with_retry_after_and_handler_not_called_twice() {
    let gate = Arc::new(Notify::new());
    let started = Arc::new(Notify::new());
    let script = Script {
        gate: Some(gate.clone()),
        started: Some(started.clone()),
        ..Script::default()
    };
    let app = router(layer(), script.clone());
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, signed("evt-slow-handler")).await }
    });
    started.notified().await;
    let (status, headers, body) = send(&app, signed("evt-slow-handler")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body, r#"{"error":"event is being processed"}"#);
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    gate.notify_one();
    assert_eq!(first.await.unwrap().0, StatusCode::OK);
    assert_eq!(script.calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        send(&app, signed("evt-slow-handler")).await.2,
        r#"{"status":"duplicate-ignored"}"#
    );
}

#[tokio::test]
async fn non_2xx_from_handler_releases_the_claim_for_the_retry() {
    let script = Script {
        fail_first: 1,
        ..Script::default()
    };
    let app = router(layer(), script.clone());
    assert_eq!(
        send(&app, signed("evt-fail")).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(send(&app, signed("evt-fail")).await.0, StatusCode::OK);
    assert_eq!(
        send(&app, signed("evt-fail")).await.2,
        r#"{"status":"duplicate-ignored"}"#
    );
    assert_eq!(script.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn inner_service_error_releases_the_claim() {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = tower::ServiceBuilder::new().layer(layer()).service_fn({
        let calls = calls.clone();
        move |_request: Request<http_body_util::Full<Bytes>>| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Err(std::io::Error::other("backend down"))
                } else {
                    Ok(axum::http::Response::new(Body::from("done")))
                }
            }
        }
    });
    let error = service.clone().oneshot(signed("evt-error")).await.unwrap_err();
    assert_eq!(error.to_string(), "backend down");
    let response = service.clone().oneshot(signed("evt-error")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

async fn panicking(State(calls): State<Arc<AtomicUsize>>) -> StatusCode {
    if calls.fetch_add(1, Ordering::SeqCst) == 0 {
        panic!("handler bug");
    }
    StatusCode::OK
}

#[tokio::test]
async fn panic_with_catch_panic_layer_releases_the_claim() {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/webhooks/klikit", post(panicking))
        .with_state(calls.clone())
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(layer());
    assert_eq!(
        send(&app, signed("evt-panic")).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(send(&app, signed("evt-panic")).await.0, StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn panic_without_catch_panic_layer_releases_the_claim() {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/webhooks/klikit", post(panicking))
        .with_state(calls.clone())
        .layer(layer());
    let task = tokio::spawn({
        let app = app.clone();
        async move { app.oneshot(signed("evt-panic")).await }
    });
    assert!(task.await.unwrap_err().is_panic());
    // The release runs on a task spawned while unwinding.
    let status = retry_until_not_409(&app, "evt-panic").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

async fn retry_until_not_409(app: &Router, id: &str) -> StatusCode {
    for _ in 0..100 {
        let status = send(app, signed(id)).await.0;
        if status != StatusCode::CONFLICT {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    StatusCode::CONFLICT
}

#[tokio::test]
async fn dropped_request_releases_the_claim() {
    let gate = Arc::new(Notify::new());
    let started = Arc::new(Notify::new());
    let script = Script {
        gate: Some(gate.clone()),
        started: Some(started.clone()),
        ..Script::default()
    };
    let app = router(layer(), script.clone());
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, signed("evt-dropped")).await }
    });
    started.notified().await;
    first.abort(); // the connection went away mid-handler
    let _ = first.await;
    let ungate = tokio::spawn(async move {
        loop {
            gate.notify_one();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    assert_eq!(retry_until_not_409(&app, "evt-dropped").await, StatusCode::OK);
    ungate.abort();
    assert_eq!(script.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn abandoned_claim_expires_after_the_lease() {
    let started = Arc::new(Notify::new());
    let never = Arc::new(Notify::new());
    let script = Script {
        gate: Some(never.clone()),
        started: Some(started.clone()),
        ..Script::default()
    };
    let app = router(layer().with_lease(Duration::from_millis(200)), script.clone());
    // A holder that hangs for ever without its request being dropped (a stuck process).
    let stuck = tokio::spawn({
        let app = app.clone();
        async move { send(&app, signed("evt-stuck")).await }
    });
    started.notified().await;
    assert_eq!(send(&app, signed("evt-stuck")).await.0, StatusCode::CONFLICT);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let retry = tokio::spawn({
        let app = app.clone();
        async move { send(&app, signed("evt-stuck")).await }
    });
    started.notified().await; // the retry reached the handler
    never.notify_waiters();
    assert_eq!(retry.await.unwrap().0, StatusCode::OK);
    stuck.abort();
    assert_eq!(script.calls.load(Ordering::SeqCst), 2);
}

/// A store whose every operation fails, or hangs.
#[derive(Debug)]
struct BrokenStore {
    hang: bool,
}

#[async_trait]
impl DedupStore for BrokenStore {
    async fn claim(&self, _: &Lease, _: Duration) -> klikit_webhook::store::Result<Claim> {
        if self.hang {
            std::future::pending::<()>().await;
        }
        Err(StoreError::backend(std::io::Error::other("connection refused")))
    }
    async fn complete(&self, _: &Lease, _: BodyDigest, _: Duration) -> klikit_webhook::store::Result<bool> {
        Err(StoreError::backend(std::io::Error::other("connection refused")))
    }
    async fn release(&self, _: &Lease) -> klikit_webhook::store::Result<bool> {
        Err(StoreError::backend(std::io::Error::other("connection refused")))
    }
}

#[tokio::test]
async fn store_failure_or_timeout_is_503_with_retry_after_and_handler_not_called() {
    let script = Script::default();
    for store in [BrokenStore { hang: false }, BrokenStore { hang: true }] {
        let layer = layer().with_store(store).with_store_timeout(Duration::from_millis(50));
        let app = router(layer, script.clone());
        let (status, headers, body) = send(&app, signed("evt-store")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, r#"{"error":"dedup store unavailable"}"#);
        assert_eq!(headers["retry-after"], "5");
    }
    assert_eq!(script.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn fail_open_calls_the_handler_when_the_store_fails() {
    let script = Script::default();
    let layer = layer()
        .with_store(BrokenStore { hang: false })
        .with_store_failure(StoreFailurePolicy::FailOpen);
    let app = router(layer, script.clone());
    assert_eq!(send(&app, signed("evt-open")).await.0, StatusCode::OK);
    assert_eq!(send(&app, signed("evt-open")).await.0, StatusCode::OK);
    assert_eq!(script.calls.load(Ordering::SeqCst), 2, "no dedup while failing open");
}

#[tokio::test]
async fn rejection_is_in_the_response_extensions() {
    let app = router(layer(), Script::default());
    let mut request = signed("evt-ext");
    request.headers_mut().remove("x-klikit-event-type");
    let response = app.oneshot(request).await.unwrap();
    let rejection = response.extensions().get::<Rejection>().unwrap();
    assert_eq!(rejection.kind(), &RejectionKind::MissingHeader("x-klikit-event-type"));
}

#[tokio::test]
async fn unknown_event_types_are_passed_on() {
    async fn handler(event: KlikitEvent) -> String {
        assert!(!event.event_type().is_known());
        event.event_type().to_string()
    }
    let app = Router::new().route("/webhooks/klikit", post(handler)).layer(layer());
    let request = signed_request(SECRET, "evt-new-type", "klikit.menu.updated.v9", BODY);
    let (status, _, body) = send(&app, request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "klikit.menu.updated.v9");
}

#[tokio::test]
async fn body_extractors_still_work_and_share_the_verified_allocation() {
    async fn bytes(event: KlikitEvent, body: Bytes) -> StatusCode {
        assert_eq!(event.body().as_ptr(), body.as_ptr(), "one allocation, no copy");
        StatusCode::OK
    }
    async fn string(event: KlikitEvent, body: String) -> StatusCode {
        assert_eq!(event.body().as_ref(), body.as_bytes());
        StatusCode::OK
    }
    async fn json(Json(value): Json<serde_json::Value>) -> StatusCode {
        assert_eq!(value["brand_id"], 663);
        StatusCode::OK
    }
    let app = Router::new()
        .route("/bytes", post(bytes))
        .route("/string", post(string))
        .route("/json", post(json))
        .layer(layer());
    for (i, path) in ["/bytes", "/string", "/json"].into_iter().enumerate() {
        let mut request = signed(&format!("evt-extract-{i}"));
        *request.uri_mut() = path.parse().unwrap();
        assert_eq!(send(&app, request).await.0, StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn typed_payload_extractor_parses_or_answers_422() {
    async fn handler(KlikitPayload(envelope): KlikitPayload) -> String {
        format!("{} {}", envelope.branch_id, envelope.orders[0].total.unwrap())
    }
    let app = Router::new().route("/webhooks/klikit", post(handler)).layer(layer());
    let (status, _, body) = send(&app, signed("evt-typed")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "1062 84.50"));
    let request = signed_request(SECRET, "evt-not-json", CREATED, "not json");
    let (status, _, body) = send(&app, request).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body.contains("invalid payload"), "{body}");
    // 422 is not 2xx: the claim was released, a fixed deployment can process it.
}

#[tokio::test]
async fn extractor_without_the_layer_is_500_naming_the_layer() {
    async fn handler(_event: KlikitEvent) -> StatusCode {
        StatusCode::OK
    }
    let app = Router::new().route("/webhooks/klikit", post(handler));
    let (status, _, body) = send(&app, signed("evt-no-layer")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body.contains("KlikitWebhookLayer is missing"), "{body}");
}

#[tokio::test]
async fn rotation_accepts_old_and_new_secrets_and_reports_which() {
    async fn handler(event: KlikitEvent) -> String {
        event.secret_index().to_string()
    }
    let old = "the-previous-secret-value";
    let layer = layer().with_secret(WebhookSecret::new(old).unwrap());
    let app = Router::new().route("/webhooks/klikit", post(handler)).layer(layer);
    let (status, _, body) = send(&app, signed_request(SECRET, "evt-new", CREATED, BODY)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "0"));
    let (status, _, body) = send(&app, signed_request(old, "evt-old", CREATED, BODY)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "1"));
    let (status, _, _) = send(&app, signed_request("neither-of-them-at-all", "evt-x", CREATED, BODY)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn signature_header_is_marked_sensitive_downstream() {
    async fn handler(headers: HeaderMap, event: KlikitEvent) -> StatusCode {
        assert!(headers["x-klikit-signature"].is_sensitive());
        assert_eq!(event.event_type(), &EventType::OrderCreated);
        StatusCode::OK
    }
    let app = Router::new().route("/webhooks/klikit", post(handler)).layer(layer());
    assert_eq!(send(&app, signed("evt-sensitive")).await.0, StatusCode::OK);
}

/// 200 concurrent deliveries of one id: the handler runs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deliveries_of_one_id_run_the_handler_once() {
    let script = Script::default();
    let app = router(layer(), script.clone());
    let statuses = deliver_concurrently(&app, "evt-burst", 200).await;
    assert_eq!(script.calls.load(Ordering::SeqCst), 1);
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let conflict = statuses.iter().filter(|s| **s == StatusCode::CONFLICT).count();
    assert_eq!(
        ok + conflict,
        200,
        "only 200 (first or duplicate) and 409: {statuses:?}"
    );
    assert_eq!(
        send(&app, signed("evt-burst")).await.2,
        r#"{"status":"duplicate-ignored"}"#
    );
}

/// The same burst when the one run fails: the next delivery runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deliveries_with_a_failing_run_are_processed_by_the_next_delivery() {
    let script = Script {
        fail_first: 1,
        ..Script::default()
    };
    let app = router(layer(), script.clone());
    let statuses = deliver_concurrently(&app, "evt-burst-fail", 200).await;
    let failed = statuses
        .iter()
        .filter(|s| **s == StatusCode::INTERNAL_SERVER_ERROR)
        .count();
    assert_eq!(failed, 1, "{statuses:?}");
    let calls = script.calls.load(Ordering::SeqCst);
    // After the failed run released the claim, a later delivery of the burst may
    // already have run it (successfully); otherwise the next one does.
    if calls == 1 {
        assert_eq!(send(&app, signed("evt-burst-fail")).await.0, StatusCode::OK);
    }
    assert_eq!(script.calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        send(&app, signed("evt-burst-fail")).await.2,
        r#"{"status":"duplicate-ignored"}"#
    );
    assert_eq!(script.calls.load(Ordering::SeqCst), 2);
}

async fn deliver_concurrently(app: &Router, id: &str, n: usize) -> Vec<StatusCode> {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (app, barrier, id) = (app.clone(), barrier.clone(), id.to_owned());
            tokio::spawn(async move {
                barrier.wait().await;
                send(&app, signed(&id)).await.0
            })
        })
        .collect();
    let mut statuses = Vec::with_capacity(n);
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    statuses
}

#[tokio::test]
async fn memory_store_is_bounded_and_evicts_the_oldest_completed_id() {
    let store = Arc::new(MemoryStore::with_capacity(16));
    let layer = layer().with_store(store.clone());
    let script = Script::default();
    let app = router(layer, script.clone());
    for i in 0..200 {
        assert_eq!(send(&app, signed(&format!("evt-cap-{i}"))).await.0, StatusCode::OK);
    }
    assert!(
        store.len() <= store.capacity(),
        "{} > {}",
        store.len(),
        store.capacity()
    );
    assert_eq!(script.calls.load(Ordering::SeqCst), 200);
}

#[tokio::test]
async fn signature_dedup_stops_a_body_replayed_under_a_new_id() {
    let script = Script::default();
    let app = router(layer(), script.clone());
    assert_eq!(send(&app, signed("evt-original")).await.0, StatusCode::OK);
    assert_eq!(send(&app, signed("evt-replayed")).await.0, StatusCode::OK);
    assert_eq!(
        script.calls.load(Ordering::SeqCst),
        2,
        "by default only the id deduplicates"
    );

    let script = Script {
        fail_first: 1,
        ..Script::default()
    };
    let app = router(layer().with_signature_dedup(true), script.clone());
    // A failed run releases both claims: the retry, under any id, is processed.
    assert_eq!(
        send(&app, signed("evt-original")).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(send(&app, signed("evt-retry-new-id")).await.0, StatusCode::OK);
    let (status, _, body) = send(&app, signed("evt-replayed")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, r#"{"status":"duplicate-ignored"}"#)
    );
    assert_eq!(script.calls.load(Ordering::SeqCst), 2);
    // The replay's own id was released, not recorded: a different body under it is processed.
    let request = signed_request(
        SECRET,
        "evt-replayed",
        CREATED,
        r#"{"brand_id":1,"branch_id":2,"orders":[]}"#,
    );
    assert_eq!(send(&app, request).await.0, StatusCode::OK);
    assert_eq!(script.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn event_ids_cannot_collide_with_signature_keys() {
    let script = Script::default();
    let app = router(layer().with_signature_dedup(true), script.clone());
    let key = format!("sig:{}", sign(SECRET.as_bytes(), BODY.as_bytes()));
    let (status, _, body) = send(&app, signed(&key)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("reserved"), "{body}");
    assert_eq!(send(&app, signed("evt-normal")).await.0, StatusCode::OK);
    // Without signature deduplication the prefix means nothing.
    let app = router(layer(), script.clone());
    assert_eq!(send(&app, signed(&key)).await.0, StatusCode::OK);
    assert_eq!(script.calls.load(Ordering::SeqCst), 2);
}
