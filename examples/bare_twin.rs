//! A bare axum receiver that does by hand what the reference receiver gets
//! from the layer, as the baseline of the load benchmark (`benches/run.sh`).
//!
//! Run with
//!
//! ```sh
//! KLIKIT_WEBHOOK_SECRET=your-secret cargo run --release --example bare_twin
//! ```
//!
//! `POST /webhooks/klikit` reads the whole body, verifies the HMAC-SHA256 by
//! hand (the key is derived once at start-up and the keyed state cloned per
//! request, as the layer does; constant time, `hmac::Mac::verify_slice`),
//! deduplicates the event id in a bounded set behind a `Mutex` (the last
//! `MemoryStore::DEFAULT_CAPACITY` ids, oldest forgotten first:
//! `benches/support/bounded_set.rs`), parses the JSON envelope, hands the
//! event to a worker task through a bounded channel and answers
//! `200 {"status":"received"}` (`{"status":"duplicate-ignored"}` for a seen
//! id). `POST /ok` and `GET /ok` only answer 200.
//!
//! What it leaves out, and the layer does not: no body size or time limit
//! beyond axum's defaults, no two-phase claim (an id is marked seen before the
//! event is queued, so a full queue loses it), no metrics, no tracing. It is a
//! baseline for speed, not a receiver to deploy.
//!
//! Environment: `KLIKIT_WEBHOOK_SECRET` (required), `PORT` (default 8080),
//! `BIND` (default `127.0.0.1`).

use std::{
    net::SocketAddr,
    process::ExitCode,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use hmac::{Hmac, KeyInit, Mac};
use klikit_webhook::{MemoryStore, payload::OrderEnvelope};
use serde_json::json;
use sha2::Sha256;
use tokio::sync::mpsc;

#[path = "../benches/support/bounded_set.rs"]
mod bounded_set;
use bounded_set::BoundedSet;

#[derive(Clone)]
struct Twin {
    key: Hmac<Sha256>,
    seen: Arc<Mutex<BoundedSet>>,
    jobs: mpsc::Sender<(String, OrderEnvelope)>,
}

fn error(status: StatusCode, message: &'static str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

async fn receive(State(twin): State<Twin>, headers: HeaderMap, body: Bytes) -> Response {
    let (Some(signature), Some(id), Some(_)) = (
        headers.get("x-klikit-signature"),
        headers.get("x-klikit-event-id"),
        headers.get("x-klikit-event-type"),
    ) else {
        return error(StatusCode::BAD_REQUEST, "missing klikit headers");
    };
    let mut expected = [0u8; 32];
    if hex::decode_to_slice(signature.as_bytes(), &mut expected).is_err() {
        return error(StatusCode::UNAUTHORIZED, "invalid signature");
    }
    let mut mac = twin.key.clone();
    mac.update(&body);
    if mac.verify_slice(&expected).is_err() {
        return error(StatusCode::UNAUTHORIZED, "invalid signature");
    }
    let Ok(id) = id.to_str() else {
        return error(StatusCode::BAD_REQUEST, "missing klikit headers");
    };
    let new = twin.seen.lock().unwrap_or_else(|p| p.into_inner()).insert(id);
    if !new {
        return Json(json!({ "status": "duplicate-ignored" })).into_response();
    }
    let envelope: OrderEnvelope = match serde_json::from_slice(&body) {
        Ok(envelope) => envelope,
        Err(_) => return error(StatusCode::BAD_REQUEST, "invalid payload"),
    };
    match twin.jobs.try_send((id.to_owned(), envelope)) {
        Ok(()) => Json(json!({ "status": "received" })).into_response(),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "worker queue full"),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let Ok(secret) = std::env::var("KLIKIT_WEBHOOK_SECRET") else {
        eprintln!("bare_twin: KLIKIT_WEBHOOK_SECRET is not set");
        return ExitCode::from(2);
    };
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1".into());
    let Ok(addr) = format!("{bind}:{port}").parse::<SocketAddr>() else {
        eprintln!("bare_twin: BIND={bind} PORT={port} is not a socket address");
        return ExitCode::from(2);
    };
    let Ok(key) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return ExitCode::from(2);
    };
    let (jobs, mut queue) = mpsc::channel::<(String, OrderEnvelope)>(1024);
    tokio::spawn(async move {
        let mut orders = 0usize;
        while let Some((_id, envelope)) = queue.recv().await {
            orders = orders.wrapping_add(envelope.orders.len());
        }
        std::hint::black_box(orders);
    });
    let twin = Twin {
        key,
        seen: Arc::new(Mutex::new(BoundedSet::with_capacity(MemoryStore::DEFAULT_CAPACITY))),
        jobs,
    };
    let app = Router::new()
        .route("/webhooks/klikit", post(receive))
        .route(
            "/ok",
            get(|| async { StatusCode::OK }).post(|| async { StatusCode::OK }),
        )
        .with_state(twin);
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("bare_twin: cannot listen on {addr}: {error}");
            return ExitCode::from(1);
        }
    };
    match axum::serve(listener, app).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bare_twin: server error: {error}");
            ExitCode::from(1)
        }
    }
}
