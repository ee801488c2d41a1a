//! Every delivery is counted by outcome and timed (feature `metrics`).
#![cfg(feature = "metrics")]

use axum::{Router, body::Body, http::StatusCode, routing::post};
use klikit_webhook::{
    KlikitEvent, KlikitWebhookLayer, WebhookSecret,
    metrics::{DELIVERIES_TOTAL, DELIVERY_DURATION_SECONDS},
    testing::signed_request,
};
use metrics_util::{
    CompositeKey, MetricKind,
    debugging::{DebugValue, DebuggingRecorder},
};
use tower::ServiceExt;

const SECRET: &str = "metrics-test-secret-0123456789";

fn outcome_of(key: &CompositeKey) -> String {
    key.key()
        .labels()
        .find(|label| label.key() == "outcome")
        .map(|label| label.value().to_owned())
        .unwrap_or_default()
}

#[test]
fn deliveries_are_counted_and_timed_by_outcome() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            async fn handle(event: KlikitEvent) -> StatusCode {
                if event.id().as_str() == "fails" {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
            let layer = KlikitWebhookLayer::new(WebhookSecret::new(SECRET).unwrap());
            let app = Router::new().route("/webhooks/klikit", post(handle)).layer(layer);
            let send = |request| app.clone().oneshot(request);
            let body = r#"{"brand_id":1,"branch_id":2,"orders":[]}"#;
            let created = "klikit.order.created.v2";
            send(signed_request::<Body>(SECRET, "a", created, body)).await.unwrap();
            send(signed_request::<Body>(SECRET, "a", created, body)).await.unwrap();
            send(signed_request::<Body>(SECRET, "fails", created, body))
                .await
                .unwrap();
            send(signed_request::<Body>("wrong-secret-wrong-secret", "b", created, body))
                .await
                .unwrap();
            let mut missing = signed_request::<Body>(SECRET, "c", created, body);
            missing.headers_mut().remove("x-klikit-event-id");
            send(missing).await.unwrap();
        });
    });

    let mut counts = std::collections::BTreeMap::new();
    let mut timed = 0;
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        match (key.kind(), key.key().name(), value) {
            (MetricKind::Counter, DELIVERIES_TOTAL, DebugValue::Counter(n)) => {
                counts.insert(outcome_of(&key), n);
            }
            (MetricKind::Histogram, DELIVERY_DURATION_SECONDS, DebugValue::Histogram(samples)) => {
                timed += samples.len();
            }
            _ => {}
        }
    }
    let expected: std::collections::BTreeMap<String, u64> = [
        ("processed", 1),
        ("duplicate", 1),
        ("handler_failed", 1),
        ("invalid_signature", 1),
        ("bad_request", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(counts, expected);
    assert_eq!(timed, 5, "every delivery is timed");
}

/// Every outcome of [`DeliveryOutcome::ALL`], the one list the labels come
/// from, is provoked through the layer and found under its own label, in the
/// counter and in the latency histogram. An outcome added to the list fails
/// this test until it gets a scenario here.
#[test]
fn every_outcome_of_the_one_list_is_counted_under_its_label() {
    use klikit_webhook::DeliveryOutcome;

    for &outcome in DeliveryOutcome::ALL {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let expected = metrics::with_local_recorder(&recorder, || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(every_outcome::provoke(outcome))
        });
        let label = outcome.as_str();
        let (mut counted, mut timed) = (None, 0);
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            if outcome_of(&key) != label {
                continue;
            }
            match (key.kind(), key.key().name(), value) {
                (MetricKind::Counter, DELIVERIES_TOTAL, DebugValue::Counter(n)) => counted = Some(n),
                (MetricKind::Histogram, DELIVERY_DURATION_SECONDS, DebugValue::Histogram(samples)) => {
                    timed = samples.len() as u64;
                }
                _ => {}
            }
        }
        assert!(expected >= 1, "{label}: the scenario provoked it");
        assert_eq!(counted, Some(expected), "{DELIVERIES_TOTAL}{{outcome=\"{label}\"}}");
        assert_eq!(timed, expected, "{DELIVERY_DURATION_SECONDS}{{outcome=\"{label}\"}}");
    }
}

/// One scenario per outcome, through the layer in an axum `Router`.
mod every_outcome {
    use std::{
        pin::Pin,
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        task::{Context, Poll},
        time::Duration,
    };

    use axum::{Router, body::Body, extract::State, http::StatusCode, routing::post};
    use bytes::Bytes;
    use http::Request;
    use http_body::Frame;
    use klikit_webhook::{
        DeliveryOutcome, KlikitEvent, KlikitWebhookLayer, MemoryStore, WebhookSecret,
        scheme::{KlikitV1, Outgoing, signed_request_with},
        secrets::{ResolveError, SecretResolver},
        signature::Verifier,
        testing::signed_request,
    };
    use tokio::sync::watch;
    use tower::ServiceExt;

    use super::SECRET;

    const BODY: &str = r#"{"brand_id":1,"branch_id":2,"orders":[]}"#;
    const CREATED: &str = "klikit.order.created.v2";

    /// Handlers of ids starting with `hold-` wait until the gate opens.
    #[derive(Clone)]
    struct Gate {
        open: watch::Sender<bool>,
        entered: Arc<AtomicUsize>,
    }

    /// 500 for ids starting with `fail-`; ids starting with `hold-` wait for
    /// the gate; 200 otherwise.
    async fn handle(State(gate): State<Gate>, event: KlikitEvent) -> StatusCode {
        let id = event.id().as_str();
        if id.starts_with("hold-") {
            gate.entered.fetch_add(1, Ordering::SeqCst);
            let mut open = gate.open.subscribe();
            let _ = open.wait_for(|open| *open).await;
        }
        if id.starts_with("fail-") {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        }
    }

    fn layer() -> KlikitWebhookLayer {
        KlikitWebhookLayer::new(WebhookSecret::new(SECRET).unwrap())
    }

    fn app(layer: KlikitWebhookLayer) -> (Router, Gate) {
        let gate = Gate {
            open: watch::channel(false).0,
            entered: Arc::default(),
        };
        let app = Router::new()
            .route("/webhooks/klikit", post(handle))
            .layer(layer)
            .with_state(gate.clone());
        (app, gate)
    }

    fn delivery(id: &str) -> Request<Body> {
        signed_request::<Body>(SECRET, id, CREATED, BODY)
    }

    async fn send(app: &Router, request: Request<Body>) -> StatusCode {
        app.clone().oneshot(request).await.unwrap().status()
    }

    /// Waits (a bounded number of scheduler turns) until `done` holds.
    async fn until(mut done: impl FnMut() -> bool) {
        for _ in 0..100_000 {
            if done() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the deliveries did not get where the scenario needs them");
    }

    /// A body that sends one frame and then nothing, for ever.
    struct Stalls {
        sent: bool,
    }

    impl http_body::Body for Stalls {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.sent {
                return Poll::Pending;
            }
            self.sent = true;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"{")))))
        }
    }

    /// Provokes `outcome` through the layer; returns how many deliveries
    /// ended in it.
    pub(super) async fn provoke(outcome: DeliveryOutcome) -> u64 {
        match outcome {
            DeliveryOutcome::Processed => {
                let (app, _) = app(layer());
                assert_eq!(send(&app, delivery("ok-1")).await, StatusCode::OK);
                1
            }
            DeliveryOutcome::HandlerFailed => {
                let (app, _) = app(layer());
                assert_eq!(send(&app, delivery("fail-1")).await, StatusCode::INTERNAL_SERVER_ERROR);
                1
            }
            DeliveryOutcome::Duplicate => {
                let (app, _) = app(layer());
                assert_eq!(send(&app, delivery("dup-1")).await, StatusCode::OK);
                assert_eq!(send(&app, delivery("dup-1")).await, StatusCode::OK);
                1
            }
            DeliveryOutcome::InFlight => {
                let (app, gate) = app(layer());
                let first = tokio::spawn({
                    let app = app.clone();
                    async move { send(&app, delivery("hold-1")).await }
                });
                until(|| gate.entered.load(Ordering::SeqCst) == 1).await;
                assert_eq!(send(&app, delivery("hold-1")).await, StatusCode::CONFLICT);
                gate.open.send_replace(true);
                assert_eq!(first.await.unwrap(), StatusCode::OK);
                1
            }
            DeliveryOutcome::InvalidSignature => {
                let (app, _) = app(layer());
                let forged = signed_request::<Body>("wrong-secret-wrong-secret", "sig-1", CREATED, BODY);
                assert_eq!(send(&app, forged).await, StatusCode::UNAUTHORIZED);
                1
            }
            DeliveryOutcome::BadRequest => {
                let (app, _) = app(layer());
                let mut missing = delivery("bad-1");
                missing.headers_mut().remove("x-klikit-event-type");
                assert_eq!(send(&app, missing).await, StatusCode::BAD_REQUEST);
                // A method other than POST counts here too.
                let mut get = delivery("bad-2");
                *get.method_mut() = http::Method::GET;
                assert_eq!(send(&app, get).await, StatusCode::METHOD_NOT_ALLOWED);
                2
            }
            DeliveryOutcome::PayloadTooLarge => {
                let (app, _) = app(layer().with_body_limit(8));
                assert_eq!(send(&app, delivery("big-1")).await, StatusCode::PAYLOAD_TOO_LARGE);
                1
            }
            DeliveryOutcome::BodyTimeout => {
                let (app, _) = app(layer().with_body_timeout(Duration::from_millis(50)));
                let (parts, _) = delivery("slow-1").into_parts();
                let stalled = Request::from_parts(parts, Body::new(Stalls { sent: false }));
                assert_eq!(send(&app, stalled).await, StatusCode::REQUEST_TIMEOUT);
                1
            }
            DeliveryOutcome::StoreUnavailable => {
                // 16 shards of one id: of 17 deliveries held in flight at
                // once, at least two share a shard, and the later one finds
                // it full of in-flight claims (503).
                const DELIVERIES: usize = 17;
                let (app, gate) = app(layer().with_store(MemoryStore::with_capacity(1)));
                let pending: Vec<_> = (0..DELIVERIES)
                    .map(|n| {
                        let app = app.clone();
                        tokio::spawn(async move { send(&app, delivery(&format!("hold-{n}"))).await })
                    })
                    .collect();
                until(|| {
                    let answered = pending.iter().filter(|task| task.is_finished()).count();
                    gate.entered.load(Ordering::SeqCst) + answered == DELIVERIES
                })
                .await;
                gate.open.send_replace(true);
                let mut refused = 0;
                for task in pending {
                    match task.await.unwrap() {
                        StatusCode::OK => {}
                        StatusCode::SERVICE_UNAVAILABLE => refused += 1,
                        other => panic!("unexpected {other}"),
                    }
                }
                refused
            }
            DeliveryOutcome::DuplicateBodyMismatch => {
                let (app, _) = app(layer());
                assert_eq!(send(&app, delivery("reused-1")).await, StatusCode::OK);
                let other = signed_request::<Body>(SECRET, "reused-1", CREATED, r#"{"brand_id":9,"orders":[]}"#);
                assert_eq!(send(&app, other).await, StatusCode::OK);
                1
            }
            DeliveryOutcome::TimestampOutOfTolerance => {
                let (app, _) = app(layer().with_scheme(KlikitV1::new()));
                let secret = WebhookSecret::new(SECRET).unwrap();
                let body = r#"{"event_id":"stale-1","data":{}}"#;
                let stale = Outgoing::new("stale-1", "order.placed.v1", body.as_bytes()).with_timestamp(1_000_000_000);
                let request = signed_request_with::<Body>(&KlikitV1::new(), &secret, &stale);
                assert_eq!(send(&app, request).await, StatusCode::UNAUTHORIZED);
                1
            }
            DeliveryOutcome::SecretsUnavailable => {
                let (app, _) = app(KlikitWebhookLayer::per_subscription(FailingResolver));
                let secret = WebhookSecret::new(SECRET).unwrap();
                let body = r#"{"event_id":"resolve-1","data":{}}"#;
                let outgoing =
                    Outgoing::new("resolve-1", "order.placed.v1", body.as_bytes()).with_subscription("sub-1");
                let request = signed_request_with::<Body>(&KlikitV1::new(), &secret, &outgoing);
                assert_eq!(send(&app, request).await, StatusCode::SERVICE_UNAVAILABLE);
                1
            }
            other => panic!(
                "no scenario provokes the outcome {other}: add one to tests/metrics.rs, or say here why a test \
                 cannot provoke it"
            ),
        }
    }

    /// A secret resolver whose backend is down.
    #[derive(Debug)]
    struct FailingResolver;

    #[async_trait::async_trait]
    impl SecretResolver for FailingResolver {
        async fn resolve(&self, _: &str) -> Result<Option<Arc<Verifier>>, ResolveError> {
            Err(ResolveError::Backend("the secrets database is down".into()))
        }
    }
}

/// A processed event id delivered again with another body is answered as a
/// duplicate without the handler, and counted under its own outcome; the
/// same body again is a plain duplicate.
#[test]
fn a_duplicate_id_with_another_body_is_counted_apart() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let counted = calls.clone();
            let handle = move |_: KlikitEvent| {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async { StatusCode::OK }
            };
            let layer = KlikitWebhookLayer::new(WebhookSecret::new(SECRET).unwrap());
            let app = Router::new().route("/webhooks/klikit", post(handle)).layer(layer);
            let created = "klikit.order.created.v2";
            let body = r#"{"brand_id":1,"branch_id":2,"orders":[{"id":1}]}"#;
            let other = r#"{"brand_id":1,"branch_id":2,"orders":[{"id":2}]}"#;
            for body in [body, body, other] {
                let response = app
                    .clone()
                    .oneshot(signed_request::<Body>(SECRET, "evt-reused", created, body))
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::OK);
                let answer = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
                if body == other {
                    assert_eq!(answer, r#"{"status":"duplicate-ignored"}"#);
                }
            }
        });
    });

    let counts: std::collections::BTreeMap<String, u64> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| match (key.kind(), key.key().name(), value) {
            (MetricKind::Counter, DELIVERIES_TOTAL, DebugValue::Counter(n)) => Some((outcome_of(&key), n)),
            _ => None,
        })
        .collect();
    let expected: std::collections::BTreeMap<String, u64> =
        [("processed", 1), ("duplicate", 1), ("duplicate_body_mismatch", 1)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
    assert_eq!(counts, expected);
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the handler ran once"
    );
}
