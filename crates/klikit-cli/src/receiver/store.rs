//! The dedup store the receiver uses, chosen by `KLIKIT_STORE`.

use std::{sync::Arc, time::Duration};

use klikit_webhook::{DedupStore, MemoryStore, SqliteStore};

use super::ReceiverError;

/// The environment variable that selects the dedup store.
pub const STORE_ENV_VAR: &str = "KLIKIT_STORE";
/// The store used when `KLIKIT_STORE` is unset: an SQLite file in the
/// current directory, so a restarted receiver still ignores what it processed.
pub const DEFAULT_STORE: &str = "klikit-dedup.sqlite3";
/// How often the persistent stores delete expired records.
pub const CLEANUP_PERIOD: Duration = Duration::from_secs(10 * 60);

/// Opens the dedup store `spec` names (the value of `KLIKIT_STORE`):
/// `memory`, `redis://…`, `rediss://…`, `postgres://…`, `postgresql://…`,
/// `sqlite://…`, or else a path to an SQLite file. The persistent stores get
/// a background task that deletes expired records every
/// [`CLEANUP_PERIOD`]; Postgres gets its table created if missing.
///
/// # Errors
///
/// [`ReceiverError::Config`] for an unknown scheme or a backend whose feature
/// is off, [`ReceiverError::Store`] if the store cannot be opened.
pub async fn store_from_spec(spec: &str) -> Result<Arc<dyn DedupStore>, ReceiverError> {
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
                .map_err(|e| ReceiverError::Store(format!("{STORE_ENV_VAR}: {e}")))?;
            tracing::info!(url = spec, "dedup store: sqlite");
            store.spawn_cleanup(CLEANUP_PERIOD);
            Arc::new(store)
        }
        Some(other) => {
            return Err(ReceiverError::Config(format!(
                "{STORE_ENV_VAR}: unknown scheme {other}://"
            )));
        }
        None => {
            let store = SqliteStore::open(spec)
                .await
                .map_err(|e| ReceiverError::Store(format!("{STORE_ENV_VAR}={spec}: {e}")))?;
            tracing::info!(path = spec, "dedup store: sqlite");
            store.spawn_cleanup(CLEANUP_PERIOD);
            Arc::new(store)
        }
    };
    Ok(store)
}

#[cfg(feature = "redis")]
async fn redis_store(url: &str) -> Result<Arc<dyn DedupStore>, ReceiverError> {
    // The URL may hold a password: never log it.
    let store = klikit_webhook::RedisStore::connect(url)
        .await
        .map_err(|e| ReceiverError::Store(format!("{STORE_ENV_VAR}: cannot connect to Redis: {e}")))?;
    tracing::info!(prefix = store.prefix(), "dedup store: redis");
    Ok(Arc::new(store))
}

#[cfg(not(feature = "redis"))]
async fn redis_store(_url: &str) -> Result<Arc<dyn DedupStore>, ReceiverError> {
    Err(ReceiverError::Config(format!(
        "{STORE_ENV_VAR} names a Redis store: build with the `redis` feature"
    )))
}

#[cfg(feature = "postgres")]
async fn postgres_store(url: &str) -> Result<Arc<dyn DedupStore>, ReceiverError> {
    // The URL may hold a password: never log it. (tokio-postgres' errors do
    // not repeat the connection settings.)
    let store = klikit_webhook::PostgresStore::connect(url).await.map_err(|e| {
        ReceiverError::Store(format!(
            "{STORE_ENV_VAR}: cannot connect to Postgres: {}",
            error_chain(&e)
        ))
    })?;
    store.migrate().await.map_err(|e| {
        ReceiverError::Store(format!(
            "{STORE_ENV_VAR}: cannot create the dedup table: {}",
            error_chain(&e)
        ))
    })?;
    store.spawn_cleanup(CLEANUP_PERIOD);
    tracing::info!(table = store.table(), "dedup store: postgres");
    Ok(Arc::new(store))
}

#[cfg(not(feature = "postgres"))]
async fn postgres_store(_url: &str) -> Result<Arc<dyn DedupStore>, ReceiverError> {
    Err(ReceiverError::Config(format!(
        "{STORE_ENV_VAR} names a Postgres store: build with the `postgres` feature"
    )))
}

/// `error`'s message followed by those of its sources it does not already
/// contain: a `tokio_postgres::Error` says only "db error" or "error
/// connecting to server", and what Postgres (or the socket) said is its
/// source.
#[cfg(feature = "postgres")]
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !message.contains(&said) {
            message.push_str(": ");
            message.push_str(&said);
        }
        source = cause.source();
    }
    message
}
