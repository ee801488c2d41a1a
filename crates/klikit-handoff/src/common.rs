//! What both hand-off engines share, written once: the worker's
//! [`ProcessError`], the receive handlers' 200/503 answer, and the worker's
//! retry backoff.

#[cfg(any(feature = "nats", feature = "outbox"))]
use std::time::Duration;

/// Why a worker's processing of an event failed, and whether to try again.
///
/// Shared by the workers of every hand-off:
///
/// - [`retry`](Self::retry): a transient failure (POS busy, database down).
///   The worker gives the event back and takes it again after a delay that
///   grows with each failure, up to the worker's attempt limit (NATS: a
///   delayed nak; Postgres: the attempt's writes are rolled back, the row
///   is taken again after the delay, and moved to the dead-letter table
///   after the last attempt).
/// - [`permanent`](Self::permanent): the event can never be processed (a body
///   that does not parse, say). It is not taken again and is kept for
///   inspection or a manual replay (NATS: terminated, still in the stream;
///   Postgres: moved to the outbox's dead-letter table).
///
/// ```
/// use klikit_handoff::ProcessError;
///
/// let error = ProcessError::retry(std::io::Error::other("pos unreachable"));
/// assert!(error.is_retryable());
/// assert!(!ProcessError::permanent(std::io::Error::other("not JSON")).is_retryable());
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{} processing failure: {source}", failure_kind(.retry))]
pub struct ProcessError {
    retry: bool,
    #[source]
    source: klikit_webhook::store::BoxError,
}

fn failure_kind(retry: &bool) -> &'static str {
    if *retry { "transient" } else { "permanent" }
}

impl ProcessError {
    /// A transient failure: take the event again later.
    pub fn retry(error: impl Into<klikit_webhook::store::BoxError>) -> Self {
        Self {
            retry: true,
            source: error.into(),
        }
    }

    /// A permanent failure: do not take the event again.
    pub fn permanent(error: impl Into<klikit_webhook::store::BoxError>) -> Self {
        Self {
            retry: false,
            source: error.into(),
        }
    }

    /// Whether the event will be taken again.
    pub fn is_retryable(&self) -> bool {
        self.retry
    }
}

/// The answer of the hand-off handlers: `200 {"status":"received"}` once the
/// event is durably handed off, otherwise 503 with `Retry-After: 5` so that
/// the layer releases the claim and Klikit retries.
#[cfg(all(feature = "axum", any(feature = "nats", feature = "outbox")))]
pub(crate) fn answer<T, E: std::fmt::Display>(handed_off: Result<T, E>) -> axum::response::Response {
    use axum::{
        http::{StatusCode, header},
        response::IntoResponse,
    };
    match handed_off {
        Ok(_) => ([(header::CONTENT_TYPE, "application/json")], r#"{"status":"received"}"#).into_response(),
        Err(error) => {
            tracing::error!(%error, "klikit event hand-off failed; answering 503 so Klikit retries");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "5"), (header::CONTENT_TYPE, "application/json")],
                r#"{"error":"event hand-off unavailable"}"#,
            )
                .into_response()
        }
    }
}

/// The growing delay a worker waits before it takes a failed event again:
/// `first` after the first failure, doubled after each further one, never
/// more than `max`. Both workers' `with_retry_delay` set it.
#[cfg(any(feature = "nats", feature = "outbox"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryBackoff {
    first: Duration,
    max: Duration,
}

#[cfg(any(feature = "nats", feature = "outbox"))]
impl RetryBackoff {
    /// The default delay before the first retry: 1 s.
    pub(crate) const DEFAULT_FIRST: Duration = Duration::from_secs(1);
    /// The default longest delay between retries: 5 minutes.
    pub(crate) const DEFAULT_MAX: Duration = Duration::from_secs(5 * 60);

    pub(crate) const fn new(first: Duration, max: Duration) -> Self {
        Self { first, max }
    }

    /// The delay after a failure that followed `earlier_failures` failures
    /// of the same event (0 for its first failure).
    pub(crate) fn delay(&self, earlier_failures: i64) -> Duration {
        let doublings = u32::try_from(earlier_failures.clamp(0, 30)).unwrap_or(30);
        self.first.saturating_mul(2u32.saturating_pow(doublings)).min(self.max)
    }
}

#[cfg(any(feature = "nats", feature = "outbox"))]
impl Default for RetryBackoff {
    fn default() -> Self {
        Self::new(Self::DEFAULT_FIRST, Self::DEFAULT_MAX)
    }
}

#[cfg(all(test, any(feature = "nats", feature = "outbox")))]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_first_and_stops_at_max() {
        let backoff = RetryBackoff::new(Duration::from_secs(1), Duration::from_secs(10));
        let delays: Vec<_> = (0..6).map(|n| backoff.delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        assert_eq!(backoff.delay(-1), Duration::from_secs(1));
        assert_eq!(backoff.delay(i64::MAX), Duration::from_secs(10));
    }
}
