//! The reference Klikit webhook receiver: what `klikit serve` and
//! `cargo run -p klikit-cli --example receiver` run.
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
//! Environment (read by [`layer_from_env`]; a bad value stops it with one
//! line that names the variable and never a secret):
//! - `KLIKIT_SCHEME` (default `klikit`): the signature contract,
//!   `klikit` (today's), `klikit-v1` (Partner API v1), `standard-webhooks`,
//!   or a comma list such as `klikit,klikit-v1` to accept both on the route
//!   during a migration (see [`config::parse_schemes`]).
//! - `KLIKIT_TOLERANCE_SECS` (default 300): how far a signed timestamp may
//!   be from this machine's clock, either way (`klikit-v1`,
//!   `standard-webhooks`).
//! - `KLIKIT_WEBHOOK_SECRET`: the webhook secret Klikit issued, and
//!   `KLIKIT_WEBHOOK_PREVIOUS_SECRET` (optional), also accepted during a
//!   rotation. How a secret string becomes the key, per scheme (a
//!   `standard-webhooks` `whsec_…` secret is base64): [`config::secret_for`].
//! - `KLIKIT_WEBHOOK_SECRETS_FILE`: instead of (or next to) the single
//!   secret, a JSON object mapping each subscription id
//!   (`X-Klikit-Webhook-Id`, `klikit-v1`) to its secrets, newest first (see
//!   [`config::read_secrets_file`]). With both, the single secret verifies
//!   the deliveries that name no subscription. One of the two is required.
//! - `KLIKIT_STORE` (default `klikit-dedup.sqlite3`): the dedup store, see
//!   [`store_from_spec`]: `memory`, an SQLite path or `sqlite://…`,
//!   `redis://…` (feature `redis`), `postgres://…` (feature `postgres`);
//!   both features are on by default.
//! - `PORT` (default 8080) and `BIND` (default `0.0.0.0`).
//! - `RUST_LOG` (default `info`).
//!
//! It also serves `GET /metrics` in Prometheus format: the layer's
//! per-outcome delivery counters and latency histogram (buckets
//! [`DELIVERY_DURATION_BUCKETS`]).

use std::{net::SocketAddr, time::Duration};

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use klikit_webhook::{KlikitEvent, KlikitWebhookLayer};
use serde_json::json;
use tokio::sync::mpsc;

pub mod config;
mod store;
mod worker;

pub use config::{SchemeName, layer_from_env};
pub use store::{CLEANUP_PERIOD, DEFAULT_STORE, STORE_ENV_VAR, store_from_spec};
pub use worker::worker;

/// The path the receiver serves webhooks on.
pub const WEBHOOK_PATH: &str = "/webhooks/klikit";

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

/// Queues the event and answers at once; 503 if the queue is full.
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

/// Why the receiver could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiverError {
    /// A setting is missing or wrong; the message says which.
    #[error("{0}")]
    Config(String),
    /// The dedup store could not be opened.
    #[error("{0}")]
    Store(String),
    /// Listening or serving failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The bucket bounds, in seconds, of
/// `klikit_webhook_delivery_duration_seconds` on `/metrics`.
///
/// A histogram, not the exporter's default summary: bucket counters add up
/// across instances (`sum by (le) (rate(..._bucket[5m]))`), quantiles do not.
/// The bounds fit Klikit's 10-second deadline and the layer's defaults:
///
/// - 1, 2.5, 5 ms: answers without I/O (400, 401, 405, a duplicate or a
///   claim in the memory store) and a queue-and-answer handler;
/// - 10, 25, 50 ms: a delivery through a networked or on-disk store (two
///   round trips: claim, then complete);
/// - 100, 250, 500 ms, 1 s: a handler doing real work, or a slow store;
///   a receiver that queues should stay below 100 ms;
/// - 2 s: the default store timeout, so 503s after a timed-out store call
///   fall just above it;
/// - 5 s: the default body read timeout, so 408s fall just above it;
/// - 10 s: Klikit's deadline. What lies above (`+Inf`) came too late:
///   Klikit had given up and will retry, whatever the answer said.
pub const DELIVERY_DURATION_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// Serves the receiver as configured by the environment until Ctrl-C or
/// SIGTERM, then finishes in-flight requests and drains the worker.
///
/// # Errors
///
/// [`ReceiverError::Config`] for a missing secret or a bad `PORT`/`BIND`,
/// [`ReceiverError::Io`] if the address cannot be bound or serving fails.
pub async fn serve_from_env() -> Result<(), ReceiverError> {
    let layer = layer_from_env().await?;
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let bind = std::env::var("BIND").unwrap_or_else(|_| "0.0.0.0".into());
    let addr: SocketAddr = format!("{bind}:{port}")
        .parse()
        .map_err(|e| ReceiverError::Config(format!("BIND={bind} PORT={port} is not a socket address: {e}")))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ReceiverError::Io {
            context: format!("cannot listen on {addr}"),
            source,
        })?;
    serve(listener, layer).await
}

/// Serves the receiver on `listener` until Ctrl-C or SIGTERM, then drains.
///
/// # Errors
///
/// [`ReceiverError::Io`] if serving fails.
pub async fn serve(listener: tokio::net::TcpListener, layer: KlikitWebhookLayer) -> Result<(), ReceiverError> {
    let addr = listener.local_addr().ok();
    let (jobs, queue) = mpsc::channel(QUEUE_CAPACITY);
    let worker = tokio::spawn(worker(queue));
    tracing::info!(?addr, path = WEBHOOK_PATH, "klikit webhook receiver listening");
    let served = axum::serve(listener, app(layer, jobs).merge(metrics_route()))
        .with_graceful_shutdown(shutdown_signal())
        .await;
    // The router (and with it every queue sender) is gone: the worker drains.
    let _ = worker.await;
    served.map_err(|source| ReceiverError::Io {
        context: "server error".into(),
        source,
    })
}

/// `GET /metrics` in Prometheus text format: the
/// layer's delivery counters and latency histogram (buckets
/// [`DELIVERY_DURATION_BUCKETS`]). Installs the global `metrics` recorder; if
/// another recorder is installed already, the route is left out and a
/// warning logged.
fn metrics_route() -> Router {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let latency = Matcher::Full(klikit_webhook::metrics::DELIVERY_DURATION_SECONDS.to_owned());
    let builder = match PrometheusBuilder::new().set_buckets_for_metric(latency, &DELIVERY_DURATION_BUCKETS) {
        Ok(builder) => builder,
        // Only an empty bucket list is refused.
        Err(error) => {
            tracing::warn!(%error, "latency buckets refused; the latency is exported as a summary");
            PrometheusBuilder::new()
        }
    };
    match builder.install_recorder() {
        Ok(handle) => {
            // Histogram samples queue up until upkeep folds them in; without
            // it they would grow with every delivery between scrapes.
            let upkeep = handle.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(5));
                loop {
                    every.tick().await;
                    upkeep.run_upkeep();
                }
            });
            Router::new().route("/metrics", get(move || std::future::ready(handle.render())))
        }
        Err(error) => {
            tracing::warn!(%error, "metrics recorder not installed; /metrics is not served");
            Router::new()
        }
    }
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
