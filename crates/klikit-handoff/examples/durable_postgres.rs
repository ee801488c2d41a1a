//! A Klikit receiver that loses nothing: webhook -> Postgres outbox ->
//! worker, both in one binary (they can as well be two), with the dedup store
//! in the same database.
//!
//! Run with
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/app \
//! KLIKIT_WEBHOOK_SECRET=your-secret cargo run -p klikit-handoff --example durable_postgres --features outbox
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
//! `POST /webhooks/klikit` answers `200 {"status":"received"}` only after the
//! event and its dedup "done" mark committed in one transaction, and 503 with
//! `Retry-After` otherwise (the claim is released and Klikit retries). The
//! worker writes its effect (a row of `klikit_orders_seen`) in the same
//! transaction that marks the outbox row processed; kill the process at any
//! point and restart it: an uncommitted row is taken again (once its lease,
//! 30 s by default, ends), and every event shows up in `klikit_orders_seen`
//! exactly once. An event that keeps failing ends in
//! `klikit_webhook_outbox_dead` (see the `postgres` module docs to replay it).
//!
//! Environment:
//! - `KLIKIT_WEBHOOK_SECRET` (required): the webhook secret Klikit issued.
//! - `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`).
//! - `PORT` (default 8080) and `BIND` (default `0.0.0.0`).
//! - `RUST_LOG` (default `info`).

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use axum::{Router, routing::post};
use klikit_handoff::postgres::{OutboxWorker, PostgresOutbox, ProcessError, deadpool_postgres::Transaction, receive};
use klikit_webhook::{
    EventType, KlikitEvent, KlikitWebhookLayer, PostgresStore, SECRET_ENV_VAR, WebhookSecret, testing::WEBHOOK_PATH,
};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// The worker's processing. Everything written through `tx` commits with
/// the outbox row's `processed_at`, or not at all: no idempotency key needed
/// for effects in this database. (Calls to other systems, a POS say, still
/// need to be idempotent on `event.id()`.)
async fn process(tx: &Transaction<'_>, event: KlikitEvent) -> Result<(), ProcessError> {
    // A body that does not parse will never parse: do not retry it.
    let envelope = event.payload().map_err(ProcessError::permanent)?;
    match event.event_type() {
        EventType::OrderCreated => tracing::info!(id = %event.id(), "order created: ticket sent to the kitchen"),
        EventType::OrderStatusUpdated => tracing::info!(id = %event.id(), "order status updated"),
        EventType::OrderCartUpdated => tracing::info!(id = %event.id(), "cart replaced"),
        other => tracing::warn!(id = %event.id(), event_type = %other, "unknown event type; recorded only"),
    }
    let orders = i64::try_from(envelope.orders.len()).unwrap_or(i64::MAX);
    // Prepared once per connection (the pool's statement cache), then one
    // round trip per event.
    let insert = tx
        .prepare_cached("INSERT INTO klikit_orders_seen (event_id, event_type, orders) VALUES ($1, $2, $3)")
        .await
        .map_err(ProcessError::retry)?;
    tx.execute(&insert, &[&event.id().as_str(), &event.event_type().as_str(), &orders])
        .await
        .map_err(ProcessError::retry)?;
    Ok(())
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
            eprintln!("durable_postgres: {error}");
            return ExitCode::from(2);
        }
    };
    let url = env_or("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres");
    // The URL may hold a password: never print it.
    let store = match PostgresStore::connect(&url).await {
        Ok(store) => store,
        Err(error) => {
            eprintln!("durable_postgres: cannot connect to DATABASE_URL: {error}");
            return ExitCode::from(1);
        }
    };

    // One deadpool-postgres pool for the dedup store, the outbox and the worker.
    let retention = KlikitWebhookLayer::DEFAULT_RETENTION;
    let pool = store.pool().clone();
    let outbox = PostgresOutbox::new(pool.clone()).with_dedup(store.clone(), retention);
    let effects = "CREATE TABLE IF NOT EXISTS klikit_orders_seen (\
                   event_id text PRIMARY KEY, event_type text NOT NULL, orders bigint NOT NULL, \
                   seen_at timestamptz NOT NULL DEFAULT now())";
    let migrated = async {
        store.migrate().await?;
        outbox.migrate().await?;
        pool.get().await?.batch_execute(effects).await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    if let Err(error) = migrated.await {
        eprintln!("durable_postgres: migration failed: {error}");
        return ExitCode::from(1);
    }
    let _cleanup = store.spawn_cleanup(Duration::from_secs(600));
    let dedup = match outbox.dedup_store() {
        Ok(dedup) => dedup,
        Err(error) => {
            eprintln!("durable_postgres: {error}");
            return ExitCode::from(1);
        }
    };
    let layer = KlikitWebhookLayer::new(secret)
        .with_store(dedup)
        .with_retention(retention);

    // The worker: a separate task here, a separate process just as well.
    let worker = OutboxWorker::new(&outbox);
    let (stop_worker, worker_stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(async move {
        let stopped = async {
            let _ = worker_stopped.await;
        };
        worker
            .run_until(|tx, event| Box::pin(process(tx, event)), stopped)
            .await
    });

    let port = env_or("PORT", "8080");
    let bind = env_or("BIND", "0.0.0.0");
    let addr: SocketAddr = match format!("{bind}:{port}").parse() {
        Ok(addr) => addr,
        Err(error) => {
            eprintln!("durable_postgres: BIND={bind} PORT={port} is not a socket address: {error}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("durable_postgres: cannot listen on {addr}: {error}");
            return ExitCode::from(1);
        }
    };
    let app = Router::new()
        .route(WEBHOOK_PATH, post(receive))
        .route_layer(layer)
        .with_state(outbox);
    tracing::info!(%addr, path = WEBHOOK_PATH, "durable klikit receiver listening");
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await;

    // Every accepted event is in the outbox already; the worker finishes the
    // batch in hand and stops, the rest wait for the next start.
    let _ = stop_worker.send(());
    let worker = worker.await;
    match (served, worker) {
        (Ok(()), Ok(Ok(()))) => ExitCode::SUCCESS,
        (Err(error), _) => {
            eprintln!("durable_postgres: server error: {error}");
            ExitCode::from(1)
        }
        (_, Ok(Err(error))) => {
            eprintln!("durable_postgres: worker error: {error}");
            ExitCode::from(1)
        }
        (_, Err(error)) => {
            eprintln!("durable_postgres: worker panicked: {error}");
            ExitCode::from(1)
        }
    }
}
