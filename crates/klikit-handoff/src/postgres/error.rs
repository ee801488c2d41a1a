//! [`OutboxError`]: what can go wrong between the receiver, the outbox table and the worker;
//! [`AttemptFailure`]: why an attempt failed when the closure returned no error.

use std::time::Duration;

use klikit_webhook::{InvalidEventId, store::StoreError};

/// The outbox could not take the event, or the worker could not run, or a
/// dead letter could not be replayed. From [`enqueue`](super::PostgresOutbox::enqueue):
/// do not answer Klikit with a 2xx.
///
/// With the `axum` feature it is a response: 503 with `Retry-After: 5` and
/// `{"error":"event hand-off unavailable"}` (the details are logged, not
/// sent). The layer then releases the dedup claim and Klikit retries.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// A statement, the connection or the commit failed. The message
    /// includes what Postgres said (its error, detail and hint).
    #[error("outbox database error: {}", describe(.0))]
    Database(#[from] tokio_postgres::Error),
    /// No connection could be taken from the pool: Postgres is down or
    /// unreachable, refused the login, or every connection of the pool stayed
    /// busy for the pool's wait timeout.
    #[error(
        "the outbox could not get a database connection from its pool: {}; check that Postgres is up and \
         reachable, that the credentials are right, and that the pool (deadpool-postgres max_size, wait \
         timeout) is large enough for the receivers and workers sharing it",
        describe(.0)
    )]
    Pool(#[from] deadpool_postgres::PoolError),
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
    /// [`PostgresOutbox::replay_dead_letter`](super::PostgresOutbox::replay_dead_letter)
    /// found a row with the same event id in the outbox.
    #[error(
        "cannot replay the dead letter {event_id:?}: the outbox already holds a row with that event id; \
         delete that row first if the dead letter should replace it"
    )]
    ReplayConflict {
        /// The event id of the dead letter.
        event_id: String,
    },
}

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl axum::response::IntoResponse for OutboxError {
    fn into_response(self) -> axum::response::Response {
        crate::common::answer::<(), _>(Err(self))
    }
}

/// Why the worker gave up on an attempt (or a row) although the closure
/// returned no error. Recorded in the row's `last_error` (and the dead-letter
/// table's) as the source of a [`ProcessError`](crate::ProcessError).
#[derive(Debug, thiserror::Error)]
pub(super) enum AttemptFailure {
    /// The closure panicked; the worker caught the panic.
    #[error("the closure panicked: {0}")]
    Panicked(String),
    /// The closure returned `Ok`, but its transaction was aborted: a
    /// statement failed and the closure did not return that error.
    #[error(
        "the closure returned Ok, but a statement it ran failed and aborted its transaction (return that \
         error from the closure instead of ignoring it): {0}"
    )]
    Aborted(#[source] DescribedError),
    /// The row used up its attempts, the last of which recorded no outcome.
    #[error(
        "{made} attempts made and max_attempts is {max}: given up without another attempt; the last one did \
         not finish (the worker died, hung or lost its database connection before recording an outcome){}",
        last_error.as_deref().map(|e| format!("; the last recorded error: {e}")).unwrap_or_default()
    )]
    Exhausted {
        made: i32,
        max: i32,
        last_error: Option<String>,
    },
    /// The row's event id is not a valid [`EventId`](klikit_webhook::EventId):
    /// it was not queued by [`enqueue`](super::PostgresOutbox::enqueue).
    #[error("the row's event id {event_id:?} is invalid: {source}")]
    InvalidEventId {
        event_id: String,
        #[source]
        source: InvalidEventId,
    },
}

/// `error`'s message followed by those of its sources that it does not
/// already contain: `tokio_postgres::Error`'s own message is only its kind
/// ("db error"), and what Postgres said is its source.
pub(super) fn describe(error: &(dyn std::error::Error + 'static)) -> String {
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

/// A database error whose message is [`describe`]d: the `Display` of
/// [`AttemptFailure::Aborted`] (recorded in `last_error`) says what Postgres
/// said, not just "db error".
#[derive(Debug, thiserror::Error)]
#[error("{}", describe(.0))]
pub(super) struct DescribedError(#[source] pub(super) tokio_postgres::Error);

#[cfg(test)]
mod tests {
    use super::describe;

    #[derive(Debug, thiserror::Error)]
    #[error("db error")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("outbox database error: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn describe_appends_the_sources_it_does_not_already_say() {
        let io = || std::io::Error::other("ERROR: relation \"t\" does not exist");
        assert_eq!(describe(&Outer(io())), "db error: ERROR: relation \"t\" does not exist");
        assert_eq!(
            describe(&Repeats(io())),
            "outbox database error: ERROR: relation \"t\" does not exist"
        );
    }
}
