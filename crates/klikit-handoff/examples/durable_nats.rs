//! A Klikit receiver that loses nothing: webhook -> NATS JetStream -> worker,
//! both in one binary (they can as well be two).
//!
//! Run with
//!
//! ```sh
//! nats-server -js &
//! KLIKIT_WEBHOOK_SECRET=your-secret cargo run -p klikit-handoff --example durable_nats --features nats
//! ```
//!
//! and send a delivery:
//!
//! ```sh
//! BODY='{"brand_id":663,"branch_id":1062,"orders":[{"id":7585307,"status":5}]}'
//! SIG=$(printf '%s' "$BODY" | openssl dgst -sha256 -hmac your-secret | cut -d' ' -f2)
//! curl -i localhost:8080/webhooks/klikit -H 'content-type: application/json' \
//!   -H "x-klikit-signature: $SIG" -H 'x-klikit-event-id: evt-1' \
//!   -H 'x-klikit-event-type: klikit.order.status.updated' -d "$BODY"
//! ```
//!
//! `POST /webhooks/klikit` answers `200 {"status":"received"}` only after
//! JetStream acknowledged the event, and 503 with `Retry-After` if it did not
//! (the dedup claim is released and Klikit retries). The worker acks each
//! event after processing it; kill the process at any point and restart it:
//! unacknowledged events are delivered again, and the processing below skips
//! the ones it had already applied.
//!
//! Environment:
//! - `KLIKIT_WEBHOOK_SECRET` (required): the webhook secret Klikit issued.
//! - `NATS_URL` (default `nats://127.0.0.1:4222`).
//! - `KLIKIT_STREAM` (default `KLIKIT_EVENTS`), `KLIKIT_SUBJECT` (default
//!   `klikit.events`), `KLIKIT_CONSUMER` (default `klikit-worker`).
//! - `PORT` (default 8080) and `BIND` (default `0.0.0.0`).
//! - `RUST_LOG` (default `info`).

use std::{
    collections::HashSet,
    net::SocketAddr,
    process::ExitCode,
    sync::{Arc, Mutex},
};

use axum::{Router, routing::post};
use klikit_handoff::nats::{JetStreamHandoff, JetStreamWorker, ProcessError, receive};
use klikit_webhook::{
    EventType, KlikitEvent, KlikitWebhookLayer, SECRET_ENV_VAR, WebhookSecret, testing::WEBHOOK_PATH,
};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// Stands in for your database. Keep the processed ids in the **same
/// transaction** as the side effect, for example:
///
/// ```sql
/// BEGIN;
/// INSERT INTO processed_events (event_id) VALUES ($1) ON CONFLICT DO NOTHING;
/// -- 0 rows inserted: already applied; COMMIT and return Ok.
/// UPDATE orders SET status = $2, updated_at = $3 WHERE id = $4 AND updated_at < $3;
/// COMMIT;
/// ```
///
/// This in-memory set forgets on restart, so it only shows the shape.
#[derive(Default)]
struct Processed(Mutex<HashSet<String>>);

/// The worker's processing: idempotent on the event id.
async fn process(processed: Arc<Processed>, event: KlikitEvent) -> Result<(), ProcessError> {
    // A body that does not parse will never parse: do not retry it.
    let envelope = event.payload().map_err(ProcessError::permanent)?;
    // "BEGIN": check, apply and record under one lock.
    let mut processed = processed.0.lock().map_err(|_| ProcessError::retry("lock poisoned"))?;
    if processed.contains(event.id().as_str()) {
        tracing::info!(id = %event.id(), "already processed; acknowledged again");
        return Ok(());
    }
    let orders = envelope.orders.len();
    match event.event_type() {
        EventType::OrderCreated => {
            tracing::info!(id = %event.id(), orders, "order created: ticket sent to the kitchen")
        }
        EventType::OrderStatusUpdated => tracing::info!(id = %event.id(), orders, "order status updated"),
        EventType::OrderCartUpdated => tracing::info!(id = %event.id(), orders, "cart replaced"),
        other => tracing::warn!(id = %event.id(), event_type = %other, "unknown event type; ignored"),
    }
    processed.insert(event.id().to_string());
    Ok(()) // "COMMIT"
}

async fn shutdown_signal() {
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();

    let secret = match WebhookSecret::from_env(SECRET_ENV_VAR) {
        Ok(secret) => secret,
        Err(error) => {
            eprintln!("durable_nats: {error}");
            return ExitCode::from(2);
        }
    };
    let nats_url = env_or("NATS_URL", "nats://127.0.0.1:4222");
    let client = match async_nats::connect(&nats_url).await {
        Ok(client) => client,
        Err(error) => {
            eprintln!("durable_nats: cannot connect to NATS at {nats_url}: {error}");
            return ExitCode::from(1);
        }
    };
    // A body the server would refuse as too large would fail on every retry:
    // refuse it with 413 instead, leaving room for the headers.
    let max_payload = client.server_info().max_payload;
    let layer = KlikitWebhookLayer::new(secret).with_body_limit(max_payload.saturating_sub(4096));

    let handoff = JetStreamHandoff::new(
        async_nats::jetstream::new(client),
        env_or("KLIKIT_STREAM", "KLIKIT_EVENTS"),
        env_or("KLIKIT_SUBJECT", "klikit.events"),
    );
    if let Err(error) = handoff.ensure_stream().await {
        eprintln!("durable_nats: {error}");
        return ExitCode::from(1);
    }

    // The worker: a separate task here, a separate process just as well.
    let worker = JetStreamWorker::new(&handoff, env_or("KLIKIT_CONSUMER", "klikit-worker"));
    let (stop_worker, worker_stopped) = tokio::sync::oneshot::channel::<()>();
    let processed = Arc::new(Processed::default());
    let worker = tokio::spawn(async move {
        let stopped = async {
            let _ = worker_stopped.await;
        };
        worker
            .run_until(|event| process(processed.clone(), event), stopped)
            .await
    });

    let port = env_or("PORT", "8080");
    let bind = env_or("BIND", "0.0.0.0");
    let addr: SocketAddr = match format!("{bind}:{port}").parse() {
        Ok(addr) => addr,
        Err(error) => {
            eprintln!("durable_nats: BIND={bind} PORT={port} is not a socket address: {error}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("durable_nats: cannot listen on {addr}: {error}");
            return ExitCode::from(1);
        }
    };
    let app = Router::new()
        .route(WEBHOOK_PATH, post(receive))
        .route_layer(layer)
        .with_state(handoff);
    tracing::info!(%addr, path = WEBHOOK_PATH, "durable klikit receiver listening");
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await;

    // Every accepted event is in JetStream already; the worker stops after
    // the event in hand, and the rest wait in the stream for the next start.
    let _ = stop_worker.send(());
    let worker = worker.await;
    match (served, worker) {
        (Ok(()), Ok(Ok(()))) => ExitCode::SUCCESS,
        (Err(error), _) => {
            eprintln!("durable_nats: server error: {error}");
            ExitCode::from(1)
        }
        (_, Ok(Err(error))) => {
            eprintln!("durable_nats: worker error: {error}");
            ExitCode::from(1)
        }
        (_, Err(error)) => {
            eprintln!("durable_nats: worker panicked: {error}");
            ExitCode::from(1)
        }
    }
}
