//! The `KlikitV1` scheme (Partner API v1) through the layer on an axum
//! `Router`, with `oneshot`: signature pairs, the replay window, the signed
//! event id, rotation, and both Klikit contracts on one route.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use axum::{
    Router,
    body::Body,
    http::{HeaderMap, HeaderValue, Request, StatusCode},
    routing::post,
};
use bytes::Bytes;
use klikit_webhook::{
    EventId, EventType, KlikitEvent, KlikitWebhookLayer, MemoryStore, Rejection, RejectionKind, WebhookSecret,
    payload::v1::{Envelope, fixtures},
    scheme::{
        Klikit, KlikitV1, Outgoing, Scheme, TimestampError, check_tolerance, signed_request_with, verify_delivery,
    },
    signature::{SignatureError, Verifier},
    store::{Claim, DedupStore, Lease},
    testing::signed_request,
};
use tower::ServiceExt;

const SECRET: &str = "v1-test-secret-with-enough-entropy";
const OLD_SECRET: &str = "v1-previous-secret-still-valid-24h";
const ID: &str = "6c1f0e9a-2d4b-4e8f-9a3c-5b7d1e0f2a84";
const PLACED: &str = "order.placed.v1";
/// The `event_id` of `fixtures::ORDER_PLACED`.
const PLACED_ID: &str = "0b6f3d2e-8c41-4a7f-9e15-3d27c8a4b901";

fn secret(text: &str) -> WebhookSecret {
    WebhookSecret::new(text).unwrap()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn body_with_id(id: &str) -> String {
    format!(r#"{{"event_id":"{id}","event_type":"order.placed.v1","data":{{"event_id":"not-this-one"}}}}"#)
}

/// The events the handler saw.
type Seen = Arc<Mutex<Vec<KlikitEvent>>>;

fn app(layer: KlikitWebhookLayer) -> (Router, Seen) {
    let seen = Seen::default();
    let record = seen.clone();
    let router = Router::new()
        .route(
            "/webhooks/klikit",
            post(move |event: KlikitEvent| {
                let record = record.clone();
                async move {
                    record.lock().unwrap().push(event);
                    "ok"
                }
            }),
        )
        .layer(layer);
    (router, seen)
}

fn v1_layer() -> KlikitWebhookLayer {
    KlikitWebhookLayer::new(secret(SECRET)).with_scheme(KlikitV1::new())
}

/// A v1 delivery signed with `SECRET` at `timestamp`.
fn delivery(id: &str, body: &str, timestamp: i64) -> Request<Body> {
    let outgoing = Outgoing::new(id, PLACED, body.as_bytes())
        .with_timestamp(timestamp)
        .with_subscription("wh_01");
    signed_request_with(&KlikitV1::new(), &secret(SECRET), &outgoing)
}

/// The same delivery with another `X-Klikit-Signature` value.
fn with_signature(mut request: Request<Body>, value: &str) -> Request<Body> {
    request
        .headers_mut()
        .insert("x-klikit-signature", HeaderValue::from_str(value).unwrap());
    request
}

fn v1_hex(secret: &str, timestamp: &str, body: &str) -> String {
    klikit_webhook::signature::sign(secret.as_bytes(), format!("{timestamp}.{body}").as_bytes())
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, String, Option<RejectionKind>) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let kind = response.extensions().get::<Rejection>().map(|r| r.kind().clone());
    let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap(), kind)
}

#[tokio::test]
async fn a_signed_delivery_reaches_the_handler_typed() {
    let (app, seen) = app(v1_layer());
    let (status, body, _) = send(&app, delivery(PLACED_ID, fixtures::ORDER_PLACED, now())).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    let seen = seen.lock().unwrap();
    let event = &seen[0];
    assert_eq!(event.event_type(), &EventType::OrderPlacedV1);
    let envelope = event.v1_payload().unwrap();
    assert_eq!(event.id().as_str(), envelope.event_id);
    assert_eq!(envelope.data.items.len(), 2);
}

#[tokio::test]
async fn sign_writes_every_header_of_the_scheme() {
    let outgoing = Outgoing::new(ID, PLACED, b"{}")
        .with_timestamp(1_747_303_200)
        .with_subscription("wh_01");
    let mut headers = HeaderMap::new();
    KlikitV1::new().sign(&secret(SECRET), &outgoing, &mut headers);
    assert_eq!(
        headers["x-klikit-signature"],
        format!("t=1747303200,v1={}", v1_hex(SECRET, "1747303200", "{}"))
    );
    assert_eq!(headers["x-klikit-event-id"], ID);
    assert_eq!(headers["x-klikit-event"], PLACED);
    assert_eq!(headers["x-klikit-webhook-id"], "wh_01");
}

#[tokio::test]
async fn every_v1_fixture_is_received_and_typed() {
    let (app, seen) = app(v1_layer());
    for (name, body) in fixtures::ALL {
        let envelope: Envelope = serde_json::from_str(body).unwrap();
        let outgoing = Outgoing::new(&envelope.event_id, envelope.event_type.as_str(), body.as_bytes());
        let request = signed_request_with(&KlikitV1::new(), &secret(SECRET), &outgoing);
        let (status, answer, kind) = send(&app, request).await;
        assert_eq!(status, StatusCode::OK, "{name}: {answer} {kind:?}");
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), fixtures::ALL.len());
    for event in seen.iter() {
        let envelope = event.v1_payload().unwrap();
        assert_eq!(&envelope.event_type, event.event_type());
        assert_eq!(envelope.event_id, event.id().as_str());
        assert!(event.event_type().is_v1());
    }
}

#[tokio::test]
async fn stale_and_future_timestamps_are_401_with_their_own_answer() {
    let (app, seen) = app(v1_layer());
    let body = body_with_id(ID);
    for (timestamp, error) in [
        (now() - 301, TimestampError::TooOld),
        (now() - 86_400, TimestampError::TooOld),
        (now() + 301, TimestampError::TooNew),
        (0, TimestampError::TooOld),
    ] {
        let (status, answer, kind) = send(&app, delivery(ID, &body, timestamp)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{timestamp}");
        assert_eq!(answer, r#"{"error":"timestamp outside the tolerance"}"#);
        assert_eq!(kind, Some(RejectionKind::TimestampOutOfTolerance(error)));
    }
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn timestamps_inside_the_tolerance_pass_and_the_tolerance_is_configurable() {
    let (app, _) = app(v1_layer());
    for (i, offset) in [-299, -1, 0, 1, 299].into_iter().enumerate() {
        let id = format!("edge-{i}");
        let (status, answer, _) = send(&app, delivery(&id, &body_with_id(&id), now() + offset)).await;
        assert_eq!(status, StatusCode::OK, "offset {offset}: {answer}");
    }

    let (narrow, _) = app_with(KlikitV1::new().with_tolerance(Duration::from_secs(60)));
    let cases = [
        (-59, StatusCode::OK),
        (-61, StatusCode::UNAUTHORIZED),
        (59, StatusCode::OK),
        (61, StatusCode::UNAUTHORIZED),
    ];
    for (i, (offset, expected)) in cases.into_iter().enumerate() {
        let id = format!("narrow-{i}");
        let (status, _, _) = send(&narrow, delivery(&id, &body_with_id(&id), now() + offset)).await;
        assert_eq!(status, expected, "offset {offset}");
    }
}

fn app_with(scheme: KlikitV1) -> (Router, Seen) {
    app(KlikitWebhookLayer::new(secret(SECRET)).with_scheme(scheme))
}

#[test]
fn the_tolerance_edge_is_inclusive_to_the_nanosecond() {
    let tolerance = Duration::from_secs(300);
    let at = |secs: u64, nanos: u32| SystemTime::UNIX_EPOCH + Duration::new(secs, nanos);
    assert_eq!(check_tolerance(1_000, at(1_300, 0), tolerance), Ok(()));
    assert_eq!(
        check_tolerance(1_000, at(1_300, 1), tolerance),
        Err(TimestampError::TooOld)
    );
    assert_eq!(check_tolerance(1_000, at(700, 0), tolerance), Ok(()));
    assert_eq!(
        check_tolerance(1_000, at(699, 999_999_999), tolerance),
        Err(TimestampError::TooNew)
    );
    // Extreme values saturate instead of overflowing.
    assert_eq!(
        check_tolerance(i64::MIN, at(0, 0), tolerance),
        Err(TimestampError::TooOld)
    );
    assert_eq!(
        check_tolerance(i64::MAX, at(0, 0), tolerance),
        Err(TimestampError::TooNew)
    );
    assert_eq!(check_tolerance(5, at(0, 0), Duration::MAX), Ok(()));
}

#[tokio::test]
async fn ignoring_the_timestamp_accepts_stored_deliveries() {
    let body = body_with_id(ID);
    let (app, seen) = app_with(KlikitV1::new().ignoring_timestamp());
    let stored = 1_700_000_000; // 2023
    let (status, _, _) = send(&app, delivery(ID, &body, stored)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen.lock().unwrap().len(), 1);

    // The same check outside the layer, for reprocessing.
    let request = delivery(ID, &body, stored);
    let (parts, _) = request.into_parts();
    let bytes = Bytes::from(body.clone());
    let verifier = Verifier::new(secret(SECRET));
    let stale = verify_delivery(&KlikitV1::new(), &verifier, &parts.headers, &bytes, SystemTime::now());
    assert_eq!(
        stale.unwrap_err(),
        RejectionKind::TimestampOutOfTolerance(TimestampError::TooOld)
    );
    let event = verify_delivery(
        &KlikitV1::new().ignoring_timestamp(),
        &verifier,
        &parts.headers,
        &bytes,
        SystemTime::now(),
    )
    .unwrap();
    assert_eq!(event.id().as_str(), ID);
    // The timestamp is still signed: changing it breaks the signature.
    let mut headers = parts.headers.clone();
    let value = headers["x-klikit-signature"]
        .to_str()
        .unwrap()
        .replace("t=1700000000", "t=1700000001");
    headers.insert("x-klikit-signature", value.parse().unwrap());
    let tampered = verify_delivery(
        &KlikitV1::new().ignoring_timestamp(),
        &verifier,
        &headers,
        &bytes,
        SystemTime::now(),
    );
    assert_eq!(
        tampered.unwrap_err(),
        RejectionKind::InvalidSignature(SignatureError::Mismatch)
    );
}

#[tokio::test]
async fn rotation_two_v1_entries_each_matching_a_different_secret() {
    let body = body_with_id(ID);
    let t = now().to_string();
    let header = format!(
        "t={t},v1={},v1={}",
        v1_hex(OLD_SECRET, &t, &body),
        v1_hex(SECRET, &t, &body)
    );
    // A receiver on either secret accepts the delivery.
    for (secrets, expected_index) in [
        (vec![SECRET], 0),
        (vec![OLD_SECRET], 0),
        (vec![SECRET, OLD_SECRET], 0),
        (vec!["unrelated-secret-000000", OLD_SECRET], 1),
    ] {
        let mut layer = KlikitWebhookLayer::new(secret(secrets[0])).with_scheme(KlikitV1::new());
        for extra in &secrets[1..] {
            layer = layer.with_secret(secret(extra));
        }
        let (app, seen) = app(layer);
        let (status, answer, _) = send(&app, with_signature(delivery(ID, &body, 0), &header)).await;
        assert_eq!(status, StatusCode::OK, "{secrets:?}: {answer}");
        assert_eq!(seen.lock().unwrap()[0].secret_index(), expected_index, "{secrets:?}");
    }
    // Neither secret configured: refused.
    let (app, _) = app(KlikitWebhookLayer::new(secret("unrelated-secret-000000")).with_scheme(KlikitV1::new()));
    let (status, _, kind) = send(&app, with_signature(delivery(ID, &body, 0), &header)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(kind, Some(RejectionKind::InvalidSignature(SignatureError::Mismatch)));
}

#[tokio::test]
async fn v0_and_unknown_keys_are_ignored_and_a_lone_v0_is_refused() {
    let (app, seen) = app(v1_layer());
    let body = body_with_id(ID);
    let t = now().to_string();
    let good = v1_hex(SECRET, &t, &body);
    let (status, answer, kind) = send(
        &app,
        with_signature(delivery(ID, &body, 0), &format!("t={t},v0={good}")),
    )
    .await;
    assert_eq!(
        (status, answer.as_str()),
        (StatusCode::UNAUTHORIZED, r#"{"error":"invalid signature"}"#)
    );
    assert_eq!(kind, Some(RejectionKind::InvalidSignature(SignatureError::Malformed)));
    // Unknown keys, a v0 with anything, spaces around pairs, t last.
    let header = format!("v0=whatever, v2=not-hex , v1={good} ,t={t}");
    let (status, answer, _) = send(&app, with_signature(delivery(ID, &body, 0), &header)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn malformed_signature_headers_are_401_after_the_body_and_missing_is_400() {
    let (app, seen) = app(v1_layer());
    let body = body_with_id(ID);
    let t = now().to_string();
    let good = v1_hex(SECRET, &t, &body);
    let cases = [
        format!("v1={good}"),                                // no t
        format!("t={t}"),                                    // no v1
        format!("t=soon,v1={good}"),                         // non-integer t
        format!("t={t}.5,v1={good}"),                        // non-integer t
        format!("t=-{t},v1={good}"),                         // signed t
        format!("t={t},t={t},v1={good}"),                    // two t
        format!("t={t},v1={good},garbage"),                  // pair without =
        format!("t={t},v1={good},"),                         // empty pair
        format!("t={t},={good}"),                            // empty key
        format!("t={t},v1={}", &good[..63]),                 // short hex
        format!("t={t},v1={}zz", &good[..62]),               // bad hex
        format!("t={t},v1=sha256={good}"),                   // prefixed
        format!("t={t}{}", format!(",v1={good}").repeat(9)), // more than MAX_SIGNATURES
    ];
    for header in &cases {
        let (status, answer, kind) = send(&app, with_signature(delivery(ID, &body, 0), header)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{header}");
        assert_eq!(answer, r#"{"error":"invalid signature"}"#);
        assert_eq!(
            kind,
            Some(RejectionKind::InvalidSignature(SignatureError::Malformed)),
            "{header}"
        );
    }
    // A correct pair list signed over another t, or another body.
    let other_t = (now() - 1).to_string();
    for header in [
        format!("t={other_t},v1={good}"),
        format!("t={t},v1={}", v1_hex(SECRET, &t, "{}")),
    ] {
        let (status, _, kind) = send(&app, with_signature(delivery(ID, &body, 0), &header)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{header}");
        assert_eq!(kind, Some(RejectionKind::InvalidSignature(SignatureError::Mismatch)));
    }
    for header in ["x-klikit-signature", "x-klikit-event-id", "x-klikit-event"] {
        let mut request = delivery(ID, &body, now());
        request.headers_mut().remove(header);
        let (status, answer, _) = send(&app, request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{header}");
        assert_eq!(answer, format!(r#"{{"error":"missing header {header}"}}"#));
    }
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_header_that_disagrees_with_the_signed_event_id_is_400() {
    let (app, seen) = app(v1_layer());
    let body = body_with_id(ID);
    let (status, answer, kind) = send(&app, delivery("4e0d7c2b-0000-4000-8000-000000000000", &body, now())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer,
        r#"{"error":"x-klikit-event-id does not match the signed event_id"}"#
    );
    assert_eq!(
        kind,
        Some(RejectionKind::EventIdMismatch {
            header: "x-klikit-event-id"
        })
    );
    // A non-string or repeated event_id cannot confirm the header either.
    for body in [
        r#"{"event_id":42}"#.to_owned(),
        format!(r#"{{"event_id":"{ID}","event_id":"{ID}"}}"#),
    ] {
        let (status, _, _) = send(&app, delivery(ID, &body, now())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_body_without_event_id_is_deduplicated_on_the_header() {
    let (app, seen) = app(v1_layer());
    for body in [
        r#"{"data":{"event_id":"nested-is-not-top-level"}}"#,
        r#"{"event_id":null}"#,
        "not json",
    ] {
        let id = format!("hdr-{}", body.len());
        let (status, _, _) = send(&app, delivery(&id, body, now())).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(seen.lock().unwrap().last().unwrap().id().as_str(), id);
        // A retry (a new timestamp) under the same header id is a duplicate.
        let (status, answer, _) = send(&app, delivery(&id, body, now())).await;
        assert_eq!(
            (status, answer.as_str()),
            (StatusCode::OK, r#"{"status":"duplicate-ignored"}"#)
        );
    }
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn deduplication_is_on_the_signed_body_id() {
    let store = Arc::new(MemoryStore::new());
    let (app, seen) = app(v1_layer().with_store(store.clone()));
    let body = body_with_id(ID);
    assert_eq!(send(&app, delivery(ID, &body, now())).await.0, StatusCode::OK);
    // The store holds the body's id as processed.
    let claim = store
        .claim(&Lease::generate(EventId::new(ID).unwrap()), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(matches!(claim, Claim::Done { .. }), "{claim:?}");
    // Klikit's retry: a new timestamp, the same signed body: duplicate.
    let (status, answer, _) = send(&app, delivery(ID, &body, now() + 1)).await;
    assert_eq!(
        (status, answer.as_str()),
        (StatusCode::OK, r#"{"status":"duplicate-ignored"}"#)
    );
    // A captured delivery replayed under a fresh header id: refused, not processed.
    let (status, _, _) = send(&app, delivery("fresh-id-chosen-by-an-attacker", &body, now())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn both_klikit_contracts_on_one_route() {
    for layer in [
        KlikitWebhookLayer::new(secret(SECRET))
            .with_scheme(Klikit::new())
            .with_extra_scheme(KlikitV1::new()),
        KlikitWebhookLayer::new(secret(SECRET))
            .with_scheme(KlikitV1::new())
            .with_extra_scheme(Klikit::new()),
    ] {
        let (app, seen) = app(layer);
        let today = signed_request::<Body>(
            SECRET,
            "evt-today-1",
            "klikit.order.created.v2",
            r#"{"brand_id":1,"branch_id":2,"orders":[]}"#,
        );
        let (status, answer, _) = send(&app, today).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let (status, answer, _) = send(&app, delivery(PLACED_ID, fixtures::ORDER_PLACED, now())).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let types: Vec<EventType> = seen.lock().unwrap().iter().map(|e| e.event_type().clone()).collect();
        assert_eq!(types, [EventType::OrderCreated, EventType::OrderPlacedV1]);
        // A v1 header that is malformed is still read by KlikitV1 (401).
        let (status, _, _) = send(&app, with_signature(delivery(ID, "{}", now()), "t=oops")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        // A header neither scheme reads goes to the first scheme, which
        // refuses it (400 for a header Klikit requires, or 401).
        let (status, _, _) = send(&app, with_signature(delivery(ID, "{}", now()), "neither")).await;
        assert!(status.is_client_error(), "{status}");
        assert_eq!(seen.lock().unwrap().len(), 2);
    }
}

#[test]
fn the_klikit_schemes_tell_their_headers_apart() {
    let mut headers = HeaderMap::new();
    headers.insert("x-klikit-signature", HeaderValue::from_str(&"ab".repeat(32)).unwrap());
    assert!(Klikit::new().recognizes(&headers));
    assert!(!KlikitV1::new().recognizes(&headers));
    headers.insert("x-klikit-signature", HeaderValue::from_static("t=1,v1=00"));
    assert!(!Klikit::new().recognizes(&headers));
    assert!(KlikitV1::new().recognizes(&headers));
    assert_eq!(KlikitV1::new().name(), "klikit-v1");
}
