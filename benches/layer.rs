//! The whole layer through an axum `Router` with `oneshot`, per request, for
//! 1 KiB bodies with a unique event id each, against:
//! - `bare`: the same router without the layer (the handler reads the body);
//! - `by_hand`: the same router without the layer, whose handler does by hand
//!   what the layer does for it: verifies the HMAC with a key derived once
//!   (the keyed state is cloned per request, as the layer does) and
//!   deduplicates in a bounded set behind a `Mutex` (the last
//!   `MemoryStore::DEFAULT_CAPACITY` ids, oldest forgotten first:
//!   `benches/support/bounded_set.rs`). It does not do the layer's two-phase
//!   claim, size and time limits, or typed event.
//!
//! Requests are built (and signed) outside the measurement.
//!
//! Run with `cargo bench --bench layer`.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering},
};

use axum::{
    Router,
    body::{Body, Bytes},
    http::{HeaderMap, Request, StatusCode},
    routing::post,
};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use hmac::{Hmac, KeyInit, Mac};
use klikit_webhook::{
    KlikitEvent, KlikitWebhookLayer, MemoryStore, WebhookSecret,
    testing::{WEBHOOK_PATH, signed_request},
};
use sha2::Sha256;
use tower::ServiceExt;

#[path = "support/bounded_set.rs"]
mod bounded_set;
use bounded_set::BoundedSet;

const SECRET: &str = "bench-secret-0123456789abcdef0123456789";

static NEXT: AtomicU64 = AtomicU64::new(0);

fn body_1kib() -> Bytes {
    let head = r#"{"brand_id":663,"branch_id":1062,"orders":[{"id":7585307,"external_id":"ABC-123","status":2,"total":"84.50","cart":["#;
    let item = r#"{"item_id":289379,"title":"Nasi Goreng","quantity":2,"price":0},"#;
    let mut body = String::from(head);
    while body.len() + item.len() + 4 < 1024 {
        body.push_str(item);
    }
    body.pop();
    body.push_str("]}]}");
    while body.len() < 1024 {
        body.insert(body.len() - 1, ' ');
    }
    Bytes::from(body)
}

fn request(body: &Bytes) -> Request<Body> {
    let id = format!("evt-{:012}", NEXT.fetch_add(1, Ordering::Relaxed));
    signed_request(SECRET, &id, "klikit.order.created.v2", body.clone())
}

async fn with_layer(event: KlikitEvent) -> &'static str {
    std::hint::black_box(event.body().len());
    "ok"
}

async fn bare(body: Bytes) -> &'static str {
    std::hint::black_box(body.len());
    "ok"
}

/// What the `by_hand` handler keeps: the keyed HMAC state and the seen ids.
#[derive(Clone)]
struct ByHand {
    keyed: Hmac<Sha256>,
    seen: Arc<Mutex<BoundedSet>>,
}

async fn by_hand(
    axum::extract::State(state): axum::extract::State<ByHand>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let (Some(signature), Some(id)) = (headers.get("x-klikit-signature"), headers.get("x-klikit-event-id")) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut expected = [0u8; 32];
    if hex::decode_to_slice(signature.as_bytes(), &mut expected).is_err() {
        return StatusCode::UNAUTHORIZED;
    }
    let mut mac = state.keyed.clone();
    mac.update(&body);
    if mac.verify_slice(&expected).is_err() {
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(id) = id.to_str() else {
        return StatusCode::BAD_REQUEST;
    };
    // The layer answers 200 to a duplicate too (`duplicate-ignored`).
    std::hint::black_box(state.seen.lock().unwrap().insert(id));
    StatusCode::OK
}

fn layer(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = body_1kib();
    assert_eq!(body.len(), 1024);
    let layered = Router::new()
        .route(WEBHOOK_PATH, post(with_layer))
        .layer(KlikitWebhookLayer::new(WebhookSecret::new(SECRET).unwrap()));
    let plain = Router::new().route(WEBHOOK_PATH, post(bare));
    let hand = Router::new().route(WEBHOOK_PATH, post(by_hand)).with_state(ByHand {
        keyed: Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap(),
        seen: Arc::new(Mutex::new(BoundedSet::with_capacity(MemoryStore::DEFAULT_CAPACITY))),
    });
    for router in [&layered, &plain, &hand] {
        let response = runtime.block_on(router.clone().oneshot(request(&body))).unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    let mut group = c.benchmark_group("router_oneshot_1KiB");
    for (name, router) in [("layer_memory_store", &layered), ("bare", &plain), ("by_hand", &hand)] {
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter_batched(
                || (router.clone(), request(&body)),
                |(router, request)| async move {
                    let response = router.oneshot(request).await.unwrap();
                    debug_assert_eq!(response.status(), StatusCode::OK);
                    response
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, layer);
criterion_main!(benches);
