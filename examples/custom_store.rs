//! A `DedupStore` for your own backend, plugged into the layer.
//!
//! Run with `cargo run --example custom_store`
//!
//! `MapStore` keeps its records in a `Mutex<HashMap>`; swap the map for your
//! database. It meets the trait contract: each operation runs under one lock
//! (atomic), a claim stores the token of the caller's lease (the layer makes
//! it, so that it can release a claim that lands after a timeout), `complete`
//! and `release` act only while the stored claim still has the lease's
//! token, a completed record keeps the body digest it was completed with,
//! and claims and completed records expire. The same signed delivery is sent
//! twice: `200 received`, then `200 duplicate-ignored`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use axum::{Json, Router, body::Body, routing::post};
use klikit_webhook::{
    EventId, EventType, KlikitEvent, KlikitWebhookLayer, WebhookSecret,
    store::{BodyDigest, Claim, DedupStore, Lease, LeaseToken, Result},
    testing::{WEBHOOK_PATH, signed_request},
};
use serde_json::{Value, json};
use tower::ServiceExt;

/// A record: claimed under a token, then done with the processed body's
/// digest; either way until `expires`.
#[derive(Debug)]
struct Record {
    token: LeaseToken,
    done: Option<BodyDigest>,
    expires: Instant,
}

/// A dedup store on a mutex-guarded map.
#[derive(Debug, Default)]
struct MapStore {
    records: Mutex<HashMap<EventId, Record>>,
}

impl MapStore {
    fn records(&self) -> MutexGuard<'_, HashMap<EventId, Record>> {
        // The map stays consistent even if a holder panicked.
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl DedupStore for MapStore {
    async fn claim(&self, lease: &Lease, ttl: Duration) -> Result<Claim> {
        let now = Instant::now();
        let mut records = self.records();
        // Forget expired claims and records (a database would use a TTL or a
        // periodic DELETE ... WHERE expires < now()).
        records.retain(|_, record| record.expires > now);
        match records.get(lease.event_id()) {
            Some(Record { done: Some(digest), .. }) => Ok(Claim::Done { digest: Some(*digest) }),
            // The caller's own claim, made again: still the caller's.
            Some(record) if record.token == lease.token() => Ok(Claim::New),
            Some(record) => Ok(Claim::InFlight {
                retry_after: Some(record.expires.saturating_duration_since(now)),
            }),
            None => {
                let record = Record {
                    token: lease.token(),
                    done: None,
                    expires: now + ttl,
                };
                records.insert(lease.event_id().clone(), record);
                Ok(Claim::New)
            }
        }
    }

    async fn complete(&self, lease: &Lease, digest: BodyDigest, retain: Duration) -> Result<bool> {
        let mut records = self.records();
        match records.get_mut(lease.event_id()) {
            // Only the holder of the current claim may complete it, once.
            Some(record) if record.token == lease.token() && record.done.is_none() => {
                record.done = Some(digest);
                record.expires = Instant::now() + retain;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let mut records = self.records();
        match records.get(lease.event_id()) {
            Some(record) if record.token == lease.token() && record.done.is_none() => {
                records.remove(lease.event_id());
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

async fn receive(event: KlikitEvent) -> Json<Value> {
    println!("handler: processing {} ({})", event.id(), event.event_type());
    Json(json!({ "status": "received" }))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let secret = "a-long-random-webhook-secret";
    // Keep a handle on the store: `Arc<S>` is a `DedupStore` too.
    let store = Arc::new(MapStore::default());
    let layer = KlikitWebhookLayer::new(WebhookSecret::new(secret)?).with_store(store.clone());
    let app = Router::new().route(WEBHOOK_PATH, post(receive)).layer(layer);

    let body = r#"{"brand_id":663,"branch_id":1062,"orders":[{"id":7585307,"status":5}]}"#;
    for attempt in 1..=2 {
        // Klikit's retry carries the same event id.
        let request = signed_request::<Body>(secret, "evt-42", EventType::ORDER_STATUS_UPDATED, body);
        let response = app.clone().oneshot(request).await?;
        let status = response.status();
        let answer = axum::body::to_bytes(response.into_body(), 64 * 1024).await?;
        println!("delivery {attempt}: {status} {}", String::from_utf8_lossy(&answer));
    }
    let done = store.records().values().filter(|record| record.done.is_some()).count();
    println!("store: {done} event(s) remembered as processed");
    Ok(())
}
