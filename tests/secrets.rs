//! Secrets per subscription (`KlikitWebhookLayer::per_subscription`)
//! through the layer: the built-in map, rotation, unknown subscriptions,
//! resolver failures, and today's contract on the same route.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode},
    routing::post,
};
use klikit_webhook::{
    ConfigError, KlikitEvent, KlikitWebhookLayer, Rejection, RejectionKind, WebhookSecret,
    scheme::{Klikit, KlikitV1, Outgoing, signed_request_with},
    secrets::{ResolveError, SecretResolver, SubscriptionSecrets},
    signature::{SignatureError, Verifier},
    testing::signed_request,
};
use tower::ServiceExt;

const A_NEW: &str = "business-42-secret-issued-today";
const A_OLD: &str = "business-42-secret-from-last-year";
const B: &str = "business-43-secret-of-its-own";

fn secret(text: &str) -> WebhookSecret {
    WebhookSecret::new(text).unwrap()
}

fn subscriptions() -> SubscriptionSecrets {
    SubscriptionSecrets::new(HashMap::from([
        ("wh_a".to_owned(), vec![secret(A_NEW), secret(A_OLD)]),
        ("wh_b".to_owned(), vec![secret(B)]),
    ]))
    .unwrap()
}

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

/// A v1 delivery of a fresh event, signed with `secret` for `subscription`.
fn delivery(secret_text: &str, subscription: Option<&str>, body: impl Into<String>) -> Request<Body> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let id = format!("evt-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let body = body.into();
    let mut outgoing = Outgoing::new(&id, "order.placed.v1", body.as_bytes());
    if let Some(subscription) = subscription {
        outgoing = outgoing.with_subscription(subscription);
    }
    signed_request_with(&KlikitV1::new(), &secret(secret_text), &outgoing)
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, String, Option<RejectionKind>) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let kind = response.extensions().get::<Rejection>().map(|r| r.kind().clone());
    let retry_after = response.headers().get("retry-after").cloned();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let mut body = String::from_utf8(body.to_vec()).unwrap();
    if let Some(after) = retry_after {
        body.push_str(&format!(" retry-after={}", after.to_str().unwrap()));
    }
    (status, body, kind)
}

#[tokio::test]
async fn each_subscription_verifies_with_its_own_secrets_newest_first() {
    let (app, seen) = app(KlikitWebhookLayer::per_subscription(subscriptions()));
    for (secret, subscription, index) in [(A_NEW, "wh_a", 0), (A_OLD, "wh_a", 1), (B, "wh_b", 0)] {
        let (status, body, _) = send(&app, delivery(secret, Some(subscription), "{}")).await;
        assert_eq!(status, StatusCode::OK, "{subscription}: {body}");
        assert_eq!(seen.lock().unwrap().last().unwrap().secret_index(), index);
    }
    // Another subscription's secret is a wrong signature.
    let (status, body, kind) = send(&app, delivery(B, Some("wh_a"), "{}")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::UNAUTHORIZED, r#"{"error":"invalid signature"}"#)
    );
    assert_eq!(kind, Some(RejectionKind::InvalidSignature(SignatureError::Mismatch)));
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn an_unknown_or_missing_subscription_is_refused_like_a_forgery() {
    let (app, seen) = app(KlikitWebhookLayer::per_subscription(subscriptions()));
    let forged = send(&app, delivery("a-forger-s-guess-at-the-secret", Some("wh_a"), "{}")).await;
    let unknown = send(&app, delivery(B, Some("wh_nobody"), "{}")).await;
    let missing = send(&app, delivery(B, None, "{}")).await;
    assert_eq!(forged.0, StatusCode::UNAUTHORIZED);
    // The same status, body and rejection, whatever the reason.
    assert_eq!(unknown, forged);
    assert_eq!(missing, forged);
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_unknown_subscription_still_reads_the_body() {
    // The decoy verification reads (and hashes) the body like a real one: an
    // oversized body gets the same 413 whether the subscription is known.
    let layer = KlikitWebhookLayer::per_subscription(subscriptions()).with_body_limit(64);
    let (app, _) = app(layer);
    let big = "x".repeat(65);
    let known = send(&app, delivery(A_NEW, Some("wh_a"), big.clone())).await;
    let unknown = send(&app, delivery(A_NEW, Some("wh_nobody"), big)).await;
    assert_eq!(known.0, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(unknown, known);
}

/// A resolver that counts its lookups and fails, hangs, or defers to a map.
#[derive(Debug)]
struct Scripted {
    lookups: AtomicUsize,
    behaviour: Behaviour,
}

#[derive(Debug)]
enum Behaviour {
    Fail,
    Hang,
    Map(SubscriptionSecrets),
}

#[async_trait]
impl SecretResolver for Scripted {
    async fn resolve(&self, subscription: &str) -> Result<Option<Arc<Verifier>>, ResolveError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        match &self.behaviour {
            Behaviour::Fail => Err(ResolveError::backend(std::io::Error::other("connection refused"))),
            Behaviour::Hang => {
                tokio::time::sleep(Duration::from_secs(3_600)).await;
                Ok(None)
            }
            Behaviour::Map(map) => map.resolve(subscription).await,
        }
    }
}

fn scripted(behaviour: Behaviour) -> Arc<Scripted> {
    Arc::new(Scripted {
        lookups: AtomicUsize::new(0),
        behaviour,
    })
}

#[tokio::test]
async fn the_resolver_is_consulted_once_per_delivery() {
    let resolver = scripted(Behaviour::Map(subscriptions()));
    let (app, _) = app(KlikitWebhookLayer::per_subscription(resolver.clone()));
    let (status, _, _) = send(&app, delivery(A_NEW, Some("wh_a"), "{}")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = send(&app, delivery(A_NEW, Some("wh_nobody"), "{}")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(resolver.lookups.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn resolver_errors_and_timeouts_are_503_with_retry_after() {
    for (behaviour, timeout) in [
        (Behaviour::Fail, Duration::from_secs(2)),
        (Behaviour::Hang, Duration::from_millis(50)),
    ] {
        let resolver = scripted(behaviour);
        let layer = KlikitWebhookLayer::per_subscription(resolver.clone()).with_store_timeout(timeout);
        let (app, seen) = app(layer);
        let started = SystemTime::now();
        let (status, body, kind) = send(&app, delivery(A_NEW, Some("wh_a"), "{}")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, r#"{"error":"secrets unavailable"} retry-after=5"#);
        assert_eq!(kind, Some(RejectionKind::SecretsUnavailable));
        assert!(started.elapsed().unwrap() < Duration::from_secs(10));
        assert!(seen.lock().unwrap().is_empty());
        assert_eq!(resolver.lookups.load(Ordering::SeqCst), 1);
    }
}

#[tokio::test]
async fn todays_contract_on_the_same_route_uses_the_fallback_secret() {
    const PARTNER: &str = "the-partner-wide-secret-of-today";
    let body = r#"{"brand_id":1,"branch_id":2,"orders":[]}"#;
    let today = || signed_request::<Body>(PARTNER, "evt-today", "klikit.order.created.v2", body);

    // Without a fallback, a delivery that names no subscription is refused.
    let layer = KlikitWebhookLayer::per_subscription(subscriptions()).with_extra_scheme(Klikit::new());
    let (without, _) = app(layer);
    assert_eq!(send(&without, today()).await.0, StatusCode::UNAUTHORIZED);

    // With one, today's deliveries verify with it and v1 deliveries per subscription.
    let layer = KlikitWebhookLayer::per_subscription(subscriptions())
        .with_extra_scheme(Klikit::new())
        .with_secret(secret(PARTNER));
    let (app, seen) = app(layer);
    assert_eq!(send(&app, today()).await.0, StatusCode::OK);
    assert_eq!(send(&app, delivery(B, Some("wh_b"), "{}")).await.0, StatusCode::OK);
    // The fallback is not a subscription's secret.
    assert_eq!(
        send(&app, delivery(PARTNER, Some("wh_b"), "{}")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[test]
fn a_subscription_without_secrets_is_a_config_error() {
    let error = SubscriptionSecrets::new(HashMap::from([("wh_empty".to_owned(), Vec::new())])).unwrap_err();
    assert_eq!(
        error,
        ConfigError::NoSecrets {
            subscription: "wh_empty".into()
        }
    );
    let map = subscriptions();
    assert_eq!(map.len(), 2);
    assert!(map.contains("wh_a") && !map.contains("wh_c"));
}

#[test]
fn secrets_never_print() {
    let layer = KlikitWebhookLayer::per_subscription(subscriptions()).with_secret(secret("fallback-secret-value-123"));
    let printed = format!("{layer:?} {:?}", subscriptions());
    for text in [A_NEW, A_OLD, B, "fallback-secret-value-123"] {
        assert!(!printed.contains(text), "{printed}");
    }
    assert!(printed.contains("per subscription"), "{printed}");
}
