//! [`OutboxError`]: what can go wrong between the receiver, the outbox table and the worker.

use std::time::Duration;

use klikit_webhook::store::StoreError;

/// The outbox could not take the event, or the worker could not run: do not
/// answer Klikit with a 2xx.
///
/// With the `axum` feature it is a response: 503 with `Retry-After: 5` and
/// `{"error":"event hand-off unavailable"}` (the details are logged, not
/// sent). The layer then releases the dedup claim and Klikit retries.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// A statement, the connection or the commit failed.
    #[error("outbox database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Marking the dedup claim done failed.
    #[error("outbox dedup completion failed: {0}")]
    Store(#[from] StoreError),
    /// The enqueue did not finish in time.
    #[error("the outbox enqueue did not finish within {0:?}")]
    Timeout(Duration),
    /// [`PostgresOutbox::dedup_store`](super::PostgresOutbox::dedup_store) without
    /// [`PostgresOutbox::with_dedup`](super::PostgresOutbox::with_dedup).
    #[error("the outbox has no dedup store; call PostgresOutbox::with_dedup first")]
    NoDedupStore,
}

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl axum::response::IntoResponse for OutboxError {
    fn into_response(self) -> axum::response::Response {
        crate::common::answer::<(), _>(Err(self))
    }
}
