//! The reference Klikit webhook receiver, in Rust.
//!
//! Run with
//!
//! ```sh
//! KLIKIT_WEBHOOK_SECRET=your-secret cargo run --example receiver
//! ```
//!
//! It serves `POST /webhooks/klikit` on `PORT` (default 8080), answers
//! `200 {"status":"received"}` as soon as the event is queued, and processes
//! it on a background worker, as Klikit recommends (answer within 10 s, do the
//! work asynchronously). `GET /healthz` answers 200.
//!
//! The queue is bounded: when it is full the handler answers 503, the claim is
//! released and Klikit retries later, so a burst never loses an event. It is
//! also in memory: an event queued but not yet processed when the process
//! dies is lost, because its id was already recorded as done. Where that
//! matters, hand the event to a durable queue in the handler instead.
//!
//! Environment:
//! - `KLIKIT_WEBHOOK_SECRET` (required): the webhook secret Klikit issued.
//! - `KLIKIT_WEBHOOK_PREVIOUS_SECRET` (optional): also accepted, for rotations.
//! - `PORT` (default 8080) and `BIND` (default `0.0.0.0`).
//! - `RUST_LOG` (default `info`).

use std::{net::SocketAddr, process::ExitCode};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use klikit_webhook::{
    EventType, KlikitEvent, KlikitWebhookLayer, SECRET_ENV_VAR, WebhookSecret, testing::WEBHOOK_PATH,
};
use serde_json::json;
use tokio::sync::mpsc;

/// How many accepted events may wait for the worker.
pub const QUEUE_CAPACITY: usize = 1024;

/// The receiver's routes: the webhook behind `layer`, and `/healthz`.
pub fn app(layer: KlikitWebhookLayer, jobs: mpsc::Sender<KlikitEvent>) -> Router {
    Router::new()
        .route(WEBHOOK_PATH, post(receive))
        .route_layer(layer)
        .route("/healthz", get(|| async { "ok" }))
        .with_state(jobs)
}

/// Queues the event and answers at once.
async fn receive(State(jobs): State<mpsc::Sender<KlikitEvent>>, event: KlikitEvent) -> Response {
    match jobs.try_send(event) {
        Ok(()) => Json(json!({ "status": "received" })).into_response(),
        Err(error) => {
            // Not 2xx: the claim is released and Klikit's retry gets through.
            tracing::warn!(%error, "worker queue unavailable; asking Klikit to retry");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "5")],
                Json(json!({ "error": "worker queue full" })),
            )
                .into_response()
        }
    }
}

/// Processes queued events until every sender is gone.
pub async fn worker(mut jobs: mpsc::Receiver<KlikitEvent>) {
    while let Some(event) = jobs.recv().await {
        process(&event);
    }
    tracing::info!("worker drained");
}

fn process(event: &KlikitEvent) {
    let envelope = match event.payload() {
        Ok(envelope) => envelope,
        Err(error) => {
            tracing::error!(event_id = %event.id(), %error, "payload does not match Klikit's envelope");
            return;
        }
    };
    let (brand, branch, orders) = (envelope.brand_id, envelope.branch_id, envelope.orders.len());
    let id = event.id();
    match event.event_type() {
        EventType::OrderCreated => {
            tracing::info!(%id, brand, branch, orders, "order created: ticket sent to the kitchen")
        }
        EventType::OrderStatusUpdated => {
            tracing::info!(%id, brand, branch, orders, "order status updated: order record updated")
        }
        EventType::OrderCartUpdated => {
            tracing::info!(%id, brand, branch, orders, "order cart updated: cart replaced")
        }
        other => tracing::warn!(%id, brand, branch, orders, event_type = %other, "unknown event type; ignored"),
    }
}

/// The layer as configured from the environment.
pub fn layer_from_env() -> Result<KlikitWebhookLayer, String> {
    let secret = WebhookSecret::from_env(SECRET_ENV_VAR).map_err(|e| e.to_string())?;
    let mut layer = KlikitWebhookLayer::new(secret);
    if let Ok(previous) = std::env::var("KLIKIT_WEBHOOK_PREVIOUS_SECRET") {
        let previous = WebhookSecret::new(previous).map_err(|e| format!("KLIKIT_WEBHOOK_PREVIOUS_SECRET: {e}"))?;
        layer = layer.with_secret(previous);
    }
    Ok(layer)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing in-flight requests, then draining the worker");
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();

    let layer = match layer_from_env() {
        Ok(layer) => layer,
        Err(message) => {
            eprintln!("receiver: {message}");
            return ExitCode::from(2);
        }
    };
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let bind = std::env::var("BIND").unwrap_or_else(|_| "0.0.0.0".into());
    let addr: SocketAddr = match format!("{bind}:{port}").parse() {
        Ok(addr) => addr,
        Err(error) => {
            eprintln!("receiver: BIND={bind} PORT={port} is not a socket address: {error}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("receiver: cannot listen on {addr}: {error}");
            return ExitCode::from(1);
        }
    };

    let (jobs, queue) = mpsc::channel(QUEUE_CAPACITY);
    let worker = tokio::spawn(worker(queue));
    tracing::info!(%addr, path = WEBHOOK_PATH, "klikit webhook receiver listening");
    let served = axum::serve(listener, app(layer, jobs))
        .with_graceful_shutdown(shutdown_signal())
        .await;
    // The router (and with it every queue sender) is gone: the worker drains.
    let _ = worker.await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("receiver: server error: {error}");
            ExitCode::from(1)
        }
    }
}
