//! The reference Klikit webhook receiver, in Rust.
//!
//! Run with
//!
//! ```sh
//! KLIKIT_WEBHOOK_SECRET=your-secret cargo run --example receiver --features sqlite
//! # Redis or Postgres shared by several instances:
//! KLIKIT_STORE=redis://127.0.0.1:6379 KLIKIT_WEBHOOK_SECRET=your-secret \
//!     cargo run --example receiver --features sqlite,redis
//! KLIKIT_STORE=postgres://postgres@127.0.0.1:5432/app KLIKIT_WEBHOOK_SECRET=your-secret \
//!     cargo run --example receiver --features sqlite,postgres
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
//! - `KLIKIT_STORE` (default `klikit-dedup.sqlite3`): where processed event
//!   ids are remembered, see [`store_from_spec`]:
//!   - a file path or `sqlite://path`: the embedded SQLite store, kept across
//!     restarts (the default, a file in the current directory);
//!   - `redis://…` / `rediss://…`: Redis, shared by every instance (feature
//!     `redis`);
//!   - `postgres://…` / `postgresql://…`: a Postgres table, shared by every
//!     instance, created at start-up (feature `postgres`);
//!   - `memory`: in this process only, forgotten on restart.
//! - `PORT` (default 8080) and `BIND` (default `0.0.0.0`).
//! - `RUST_LOG` (default `info`).

use std::{net::SocketAddr, process::ExitCode, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use klikit_webhook::{
    DedupStore, EventType, KlikitEvent, KlikitWebhookLayer, MemoryStore, SECRET_ENV_VAR, SqliteStore, WebhookSecret,
    testing::WEBHOOK_PATH,
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

/// The environment variable that selects the dedup store.
pub const STORE_ENV_VAR: &str = "KLIKIT_STORE";
/// The store used when `KLIKIT_STORE` is unset: an SQLite file in the
/// current directory.
pub const DEFAULT_STORE: &str = "klikit-dedup.sqlite3";
/// How often the persistent stores delete expired records.
pub const CLEANUP_PERIOD: Duration = Duration::from_secs(10 * 60);

/// The layer as configured from the environment. Connects to the store, so
/// it is `async`.
pub async fn layer_from_env() -> Result<KlikitWebhookLayer, String> {
    let secret = WebhookSecret::from_env(SECRET_ENV_VAR).map_err(|e| e.to_string())?;
    let spec = std::env::var(STORE_ENV_VAR).unwrap_or_else(|_| DEFAULT_STORE.into());
    let store = store_from_spec(&spec).await?;
    let mut layer = KlikitWebhookLayer::new(secret).with_shared_store(store);
    if let Ok(previous) = std::env::var("KLIKIT_WEBHOOK_PREVIOUS_SECRET") {
        let previous = WebhookSecret::new(previous).map_err(|e| format!("KLIKIT_WEBHOOK_PREVIOUS_SECRET: {e}"))?;
        layer = layer.with_secret(previous);
    }
    Ok(layer)
}

/// Opens the dedup store `spec` names (the value of `KLIKIT_STORE`):
/// `memory`, `redis://…`, `rediss://…`, `postgres://…`, `postgresql://…`,
/// `sqlite://…`, or else a path to an SQLite file. The persistent stores get
/// a background task that deletes expired records every
/// [`CLEANUP_PERIOD`]; Postgres gets its table created if missing.
pub async fn store_from_spec(spec: &str) -> Result<Arc<dyn DedupStore>, String> {
    let scheme = spec.split_once("://").map(|(scheme, _)| scheme);
    let store: Arc<dyn DedupStore> = match scheme {
        _ if spec == "memory" => {
            tracing::warn!("dedup store: memory; processed event ids are forgotten on restart");
            Arc::new(MemoryStore::new())
        }
        Some("redis" | "rediss") => redis_store(spec).await?,
        Some("postgres" | "postgresql") => postgres_store(spec).await?,
        Some("sqlite") => {
            let store = SqliteStore::connect(spec)
                .await
                .map_err(|e| format!("{STORE_ENV_VAR}: {e}"))?;
            tracing::info!(url = spec, "dedup store: sqlite");
            store.spawn_cleanup(CLEANUP_PERIOD);
            Arc::new(store)
        }
        Some(other) => return Err(format!("{STORE_ENV_VAR}: unknown scheme {other}://")),
        None => {
            let store = SqliteStore::open(spec)
                .await
                .map_err(|e| format!("{STORE_ENV_VAR}={spec}: {e}"))?;
            tracing::info!(path = spec, "dedup store: sqlite");
            store.spawn_cleanup(CLEANUP_PERIOD);
            Arc::new(store)
        }
    };
    Ok(store)
}

#[cfg(feature = "redis")]
async fn redis_store(url: &str) -> Result<Arc<dyn DedupStore>, String> {
    // The URL may hold a password: never log it.
    let store = klikit_webhook::RedisStore::connect(url)
        .await
        .map_err(|e| format!("{STORE_ENV_VAR}: cannot connect to Redis: {e}"))?;
    tracing::info!(prefix = store.prefix(), "dedup store: redis");
    Ok(Arc::new(store))
}

#[cfg(not(feature = "redis"))]
async fn redis_store(_url: &str) -> Result<Arc<dyn DedupStore>, String> {
    Err(format!(
        "{STORE_ENV_VAR} names a Redis store: run with `--features sqlite,redis`"
    ))
}

#[cfg(feature = "postgres")]
async fn postgres_store(url: &str) -> Result<Arc<dyn DedupStore>, String> {
    // The URL may hold a password: never log it.
    let store = klikit_webhook::PostgresStore::connect(url)
        .await
        .map_err(|e| format!("{STORE_ENV_VAR}: cannot connect to Postgres: {e}"))?;
    store
        .migrate()
        .await
        .map_err(|e| format!("{STORE_ENV_VAR}: cannot create the dedup table: {e}"))?;
    store.spawn_cleanup(CLEANUP_PERIOD);
    tracing::info!(table = store.table(), "dedup store: postgres");
    Ok(Arc::new(store))
}

#[cfg(not(feature = "postgres"))]
async fn postgres_store(_url: &str) -> Result<Arc<dyn DedupStore>, String> {
    Err(format!(
        "{STORE_ENV_VAR} names a Postgres store: run with `--features sqlite,postgres`"
    ))
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

    let layer = match layer_from_env().await {
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
