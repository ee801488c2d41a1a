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
