//! A soak bounded in time and count: `SOAK_DELIVERIES` deliveries (default
//! 10,000) over two receiver instances (two axum servers on loopback
//! sockets, each with its own `RedisStore` on one shared Redis), sent by a
//! Klikit-like sender (non-2xx or transport error: pause, send again):
//!
//! - 20 % of the deliveries are duplicates of a recent event (often still in
//!   flight on the other instance: 409, retried);
//! - 1 % are forged (signed with another secret; half of them carry the id
//!   of a genuine event): each must get 401 and never reach the handler;
//! - 1 % of the events fail in the handler (500) on their first run; the
//!   sender retries them until 2xx.
//!
//! Expected: every genuine event handled exactly once, every forged delivery
//! refused, nothing lost, and the process RSS (both servers and the sender
//! run in this process) flat after warm-up: see [`RSS_GROWTH_BOUND_KIB`].
//!
//! Redis rather than Postgres: both are shared stores, but a Redis claim is
//! one in-memory script (~0.1 ms) against an `INSERT ... ON CONFLICT` with a
//! WAL write in Postgres, so Redis keeps the soak's wall time (and so the
//! normal suite) short; the Postgres store's behaviour under two instances
//! is covered by `tests/multi_instance.rs`.
//!
//! Full size (recorded in BENCHMARKS.md, "Reliability"):
//! `SOAK_DELIVERIES=200000 cargo test --all-features --test soak -- --nocapture`
#![cfg(all(feature = "axum", feature = "redis"))]

mod common;
#[path = "common/faults.rs"]
mod faults_util;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
};
use faults_util::{HttpClient, SECRET, Server, client, redis_delete_prefix, rss_kib, send_once};
use klikit_webhook::{
    KlikitEvent, KlikitWebhookLayer, RedisStore, WebhookSecret, store::LeaseToken, testing::WEBHOOK_PATH,
};
use serde_json::json;

const DEFAULT_DELIVERIES: usize = 10_000;
const SENDERS: usize = 64;
/// RSS may grow by at most this much between the end of warm-up (10 % of
/// the deliveries) and any later sample. Everything the test itself keeps
/// per event is allocated before warm-up; what remains is allocator noise
/// and connection buffers, a few MiB.
const RSS_GROWTH_BOUND_KIB: u64 = 16 * 1024;
const FORGED_SECRET: &str = "not-the-webhook-secret-of-this-receiver";

#[derive(Clone, Copy)]
enum Slot {
    /// The first delivery of event n.
    New(u32),
    /// A duplicate delivery of event n.
    Duplicate(u32),
    /// A forged delivery, with the id of event n or one of its own.
    Forged(Option<u32>, u32),
}

/// The deliveries in sending order, and the number of events.
fn plan(deliveries: usize) -> (Vec<Slot>, usize) {
    let mut slots = Vec::with_capacity(deliveries);
    let mut events = 0u32;
    for i in 0..deliveries {
        let slot = if i % 100 == 99 {
            Slot::Forged((i % 200 == 99 && events > 0).then(|| events - 1), i as u32)
        } else if i % 5 == 0 && events > 0 {
            // A recent event: 0..15 events back, often still in flight.
            Slot::Duplicate(events - 1 - (i as u32 / 5 % 16).min(events - 1))
        } else {
            events += 1;
            Slot::New(events - 1)
        };
        slots.push(slot);
    }
    (slots, events as usize)
}

/// Per-event counters, allocated once before the load.
struct Tally {
    run: String,
    handled: Vec<AtomicU32>,
    failed_first: Vec<AtomicU32>,
    forged_reached: AtomicUsize,
}

impl Tally {
    fn event(&self, id: &str) -> Option<usize> {
        id.strip_prefix(self.run.as_str())?.parse().ok()
    }
}

/// 1 % of the events (n % 100 == 42) fail their first run with 500.
async fn handle(State(tally): State<Arc<Tally>>, event: KlikitEvent) -> Response {
    if event.body().windows(6).any(|w| w == b"forged") {
        tally.forged_reached.fetch_add(1, Ordering::SeqCst);
        return StatusCode::OK.into_response();
    }
    let Some(n) = tally.event(event.id().as_str()) else {
        tally.forged_reached.fetch_add(1, Ordering::SeqCst);
        return StatusCode::OK.into_response();
    };
    if n % 100 == 42 && tally.failed_first[n].fetch_add(1, Ordering::SeqCst) == 0 {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "first run fails"})),
        )
            .into_response();
    }
    tally.handled[n].fetch_add(1, Ordering::SeqCst);
    Json(json!({ "status": "received" })).into_response()
}

#[derive(Default)]
struct Stats {
    attempts: AtomicU64,
    received: AtomicU64,
    duplicate_ignored: AtomicU64,
    in_flight_409: AtomicU64,
    unavailable_503: AtomicU64,
    handler_500: AtomicU64,
    transport_errors: AtomicU64,
    other: AtomicU64,
    forged_401: AtomicU64,
    retries: AtomicU64,
    lost: AtomicU64,
}

/// A forged delivery: signed with another secret; the body says "forged".
async fn forged(client: &HttpClient, addr: SocketAddr, event_id: &str) -> Option<StatusCode> {
    use bytes::Bytes;
    use http_body_util::Full;
    let body = format!(r#"{{"brand_id":1,"branch_id":1,"orders":[],"note":"forged {event_id}"}}"#);
    let mut request = klikit_webhook::testing::signed_request::<Full<Bytes>>(
        FORGED_SECRET,
        event_id,
        "klikit.order.status.updated",
        body,
    );
    *request.uri_mut() = format!("http://{addr}{WEBHOOK_PATH}").parse().unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .ok()?
        .ok()?;
    Some(response.status())
}

/// A genuine delivery, retried like Klikit (5 ms pause) until a 2xx,
/// alternating between the instances.
async fn genuine(client: &HttpClient, addrs: &[SocketAddr; 2], first: usize, event_id: &str, stats: &Stats) {
    let started = Instant::now();
    for n in first.. {
        let attempt = send_once(client, addrs[n % 2], SECRET, event_id, Duration::from_secs(10)).await;
        stats.attempts.fetch_add(1, Ordering::Relaxed);
        if n > first {
            stats.retries.fetch_add(1, Ordering::Relaxed);
        }
        let counter = match attempt.status.map(|s| s.as_u16()) {
            Some(200) if &attempt.body[..] == br#"{"status":"received"}"# => &stats.received,
            Some(200) if &attempt.body[..] == br#"{"status":"duplicate-ignored"}"# => &stats.duplicate_ignored,
            Some(409) => &stats.in_flight_409,
            Some(503) => &stats.unavailable_503,
            Some(500) => &stats.handler_500,
            None => &stats.transport_errors,
            Some(_) => &stats.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if attempt.is_success() {
            return;
        }
        if started.elapsed() > Duration::from_secs(60) {
            stats.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_two_instances_redis() {
    let url = common::redis_url();
    if common::probe_redis(&url).await.is_none() {
        return;
    }
    let deliveries: usize = std::env::var("SOAK_DELIVERIES")
        .ok()
        .map(|v| v.parse().expect("SOAK_DELIVERIES must be a number"))
        .unwrap_or(DEFAULT_DELIVERIES);
    let run_token = LeaseToken::generate();
    let prefix = format!("klikit_soak_{run_token}:");
    let (slots, events) = plan(deliveries);
    let slots = Arc::new(slots);
    let tally = Arc::new(Tally {
        run: format!("soak-{run_token}-"),
        handled: (0..events).map(|_| AtomicU32::new(0)).collect(),
        failed_first: (0..events).map(|_| AtomicU32::new(0)).collect(),
        forged_reached: AtomicUsize::new(0),
    });
    let mut servers = Vec::new();
    for _ in 0..2 {
        let store = RedisStore::connect(&url).await.unwrap().with_prefix(prefix.clone());
        let layer = KlikitWebhookLayer::new(WebhookSecret::new(SECRET).unwrap())
            .with_store(store)
            .with_retention(Duration::from_secs(600))
            // Generous: 64 senders on 2 cores; a 503 would only add retries.
            .with_store_timeout(Duration::from_secs(5));
        let app = Router::new()
            .route(WEBHOOK_PATH, post(handle))
            .layer(layer)
            .with_state(Arc::clone(&tally));
        servers.push(Server::start(app).await);
    }
    let addrs = [servers[0].addr, servers[1].addr];
    let stats = Arc::new(Stats::default());
    let next = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let client = client();

    let started = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        let (slots, tally, stats, next, finished, client) = (
            Arc::clone(&slots),
            Arc::clone(&tally),
            Arc::clone(&stats),
            Arc::clone(&next),
            Arc::clone(&finished),
            client.clone(),
        );
        senders.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(slot) = slots.get(i) else { return };
                match *slot {
                    Slot::New(n) | Slot::Duplicate(n) => {
                        let id = format!("{}{n}", tally.run);
                        genuine(&client, &addrs, i, &id, &stats).await;
                    }
                    Slot::Forged(n, k) => {
                        let id = match n {
                            Some(n) => format!("{}{n}", tally.run),
                            None => format!("forged-{k}"),
                        };
                        let status = forged(&client, addrs[i % 2], &id).await;
                        assert_eq!(status, Some(StatusCode::UNAUTHORIZED), "forged delivery {id}");
                        stats.forged_401.fetch_add(1, Ordering::Relaxed);
                    }
                }
                finished.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // RSS samples at every 5 % of the deliveries.
    let mut samples: Vec<(usize, u64)> = vec![(0, rss_kib())];
    let step = (deliveries / 20).max(1);
    let mut mark = step;
    while senders.iter().any(|s| !s.is_finished()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let done = finished.load(Ordering::Relaxed);
        if done >= mark {
            samples.push((done, rss_kib()));
            mark += step;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "soak did not finish in 10 minutes"
        );
    }
    for sender in senders {
        sender.await.unwrap();
    }
    let elapsed = started.elapsed();
    samples.push((deliveries, rss_kib()));
    for server in servers {
        server.stop().await;
    }
    redis_delete_prefix(&url, &prefix).await;

    let s = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let forged_sent = slots.iter().filter(|s| matches!(s, Slot::Forged(..))).count();
    let handler_runs: u64 = tally.handled.iter().map(|h| u64::from(h.load(Ordering::Relaxed))).sum();
    let failed_runs: u64 = tally
        .failed_first
        .iter()
        .map(|h| u64::from(h.load(Ordering::Relaxed).min(1)))
        .sum();
    let rate = deliveries as f64 / elapsed.as_secs_f64();
    let warm = samples
        .iter()
        .find(|(done, _)| *done >= deliveries / 10)
        .map_or(0, |(_, rss)| *rss);
    let peak_after = samples
        .iter()
        .filter(|(done, _)| *done >= deliveries / 10)
        .map(|(_, rss)| *rss)
        .max()
        .unwrap_or(0);
    eprintln!(
        "soak: {deliveries} deliveries ({events} events, {forged_sent} forged) over 2 instances, {SENDERS} senders, \
         in {elapsed:.2?} = {rate:.0} deliveries/s\n  \
         handler runs {handler_runs} (+{failed_runs} failing first runs), attempts {}, retries {}, \
         received {}, duplicate-ignored {}, 409 {}, 500 {}, 503 {}, transport errors {}, other {}, forged 401 {}, \
         forged reaching the handler {}, lost {}\n  \
         RSS KiB (deliveries done, VmRSS): {samples:?}\n  \
         RSS after warm-up: {warm} KiB, peak after warm-up {peak_after} KiB, growth {} KiB (bound {RSS_GROWTH_BOUND_KIB})",
        s(&stats.attempts),
        s(&stats.retries),
        s(&stats.received),
        s(&stats.duplicate_ignored),
        s(&stats.in_flight_409),
        s(&stats.handler_500),
        s(&stats.unavailable_503),
        s(&stats.transport_errors),
        s(&stats.other),
        s(&stats.forged_401),
        tally.forged_reached.load(Ordering::SeqCst),
        s(&stats.lost),
        peak_after.saturating_sub(warm),
    );

    assert_eq!(s(&stats.lost), 0, "deliveries that never got a 2xx");
    assert_eq!(s(&stats.other), 0, "unexpected answers");
    assert_eq!(
        tally.forged_reached.load(Ordering::SeqCst),
        0,
        "forged deliveries reached the handler"
    );
    assert_eq!(s(&stats.forged_401) as usize, forged_sent);
    let wrong: Vec<(usize, u32)> = tally
        .handled
        .iter()
        .enumerate()
        .map(|(n, h)| (n, h.load(Ordering::SeqCst)))
        .filter(|(_, h)| *h != 1)
        .take(20)
        .collect();
    assert!(
        wrong.is_empty(),
        "events not handled exactly once (event, runs): {wrong:?}"
    );
    assert_eq!(handler_runs as usize, events);
    assert_eq!(s(&stats.received) as usize, events, "one `received` answer per event");
    assert_eq!(failed_runs as usize, (0..events).filter(|n| n % 100 == 42).count());
    assert!(
        peak_after.saturating_sub(warm) <= RSS_GROWTH_BOUND_KIB,
        "RSS grew by {} KiB after warm-up: {samples:?}",
        peak_after.saturating_sub(warm)
    );
}
