//! Deduplication stores: the [`DedupStore`] trait and its backends.
//!
//! Klikit retries a failed delivery with the same `x-klikit-event-id`, so a
//! receiver must remember which events it has already processed. Remembering
//! too early loses events (the id is marked seen, then the handler fails and
//! every retry is ignored); remembering too late processes them twice (two
//! concurrent retries both pass a "have I seen it?" check). The store therefore
//! works in **two phases**, each of them atomic in the backend:
//!
//! 1. [`claim`](DedupStore::claim) the event id before the handler runs,
//!    with a [`Lease`] the **caller** made: the event id and a fresh
//!    [`LeaseToken`]. Exactly one caller gets [`Claim::New`], and its lease
//!    now holds the event; everybody else gets [`Claim::InFlight`] (someone
//!    holds an unexpired lease) or [`Claim::Done`] (the event was processed).
//! 2. When the handler answered 2xx, [`complete`](DedupStore::complete) the lease:
//!    the id is remembered as done for the retention period, together with
//!    the [`BodyDigest`] of the body that was processed. When it failed,
//!    [`release`](DedupStore::release) the lease so that Klikit's next retry
//!    is processed. A holder that crashed does neither; its lease expires and
//!    the next claim wins it.
//!
//! Every lease carries a [`LeaseToken`] that is unique to that claim.
//! `complete` and `release` act only when the token still matches the stored
//! claim, so a stale lease (one that expired and was claimed again by someone
//! else) can never finish or drop the newer claim.
//!
//! # Why the caller makes the token
//!
//! The caller holds the token *before* the store sees the claim. A claim
//! whose caller stopped waiting (the layer's store timeout, or a request
//! dropped mid-claim) can still land in the backend afterwards: Redis runs a
//! command already written to its connection, the SQLite store's writer thread
//! runs an operation its caller no longer awaits. Were the token made inside the
//! store, nobody would hold that claim, and every retry of the event would
//! get 409 until its lease ran out. Because the layer knows the token, it
//! releases that claim in the background instead (retrying until the release
//! removes it or the lease would have ended), so the next retry after the
//! store recovers is processed within seconds.
//!
//! # The body digest
//!
//! [`complete`](DedupStore::complete) stores the [`BodyDigest`] of the
//! processed body (its XXH3-128 hash, 16 bytes) with the id, and a claim of
//! a completed id returns it in [`Claim::Done`]. The event id is not signed: someone holding one
//! captured signed body can send it under an id Klikit has not used yet, and
//! Klikit's real delivery of that id is then a "duplicate". The layer still
//! answers such a delivery as a duplicate, but when its body differs from the
//! processed one it logs a warning and counts it under its own outcome,
//! [`DuplicateBodyMismatch`](crate::DeliveryOutcome::DuplicateBodyMismatch),
//! so an operator sees it. Records written without a digest (before a store
//! was upgraded, or by `PostgresStore::complete_event_in`) or with a digest
//! of another length (the SHA-256 digests of earlier versions) answer
//! `Done { digest: None }` and are never reported as a mismatch.
//!
//! The digest is a fast non-cryptographic hash, not SHA-256, because it only
//! has to tell two bodies apart and a missed difference costs only the
//! warning (the answer is the same). Neither body of a mismatch is freely
//! chosen: one is a captured signed body, which cannot change without
//! breaking its signature; the other is Klikit's real, later delivery, which
//! an attacker could influence only in part (a note on an order, say) and
//! would have to predict byte for byte, with its event id, to aim a
//! collision at the first. That is the limit of this check: it is made to
//! catch a replayed body, not one crafted against an unkeyed hash. Bodies not
//! crafted to collide share a digest with probability 2<sup>-128</sup>.
//! XXH3-128 hashes a 1 KiB body more than ten times faster than SHA-256 did
//! (`benches/verify.rs`, `body_digest_1KiB`; each run's `summary.md` under
//! `benches/results/` gives the ratio), and every completed delivery and
//! every duplicate pays for one.
//!
//! # Backends
//!
//! | store | feature | shared between instances | survives restart |
//! |---|---|---|---|
//! | [`MemoryStore`] | always | no | no |
#![cfg_attr(
    feature = "sqlite",
    doc = "| [`SqliteStore`] | `sqlite` | processes on one host | yes |"
)]
#![cfg_attr(
    not(feature = "sqlite"),
    doc = "| `SqliteStore` | `sqlite` | processes on one host | yes |"
)]
#![cfg_attr(
    feature = "redis",
    doc = "| [`RedisStore`] | `redis` | yes | yes (with Redis persistence) |"
)]
#![cfg_attr(
    not(feature = "redis"),
    doc = "| `RedisStore` | `redis` | yes | yes (with Redis persistence) |"
)]
#![cfg_attr(feature = "postgres", doc = "| [`PostgresStore`] | `postgres` | yes | yes |")]
#![cfg_attr(not(feature = "postgres"), doc = "| `PostgresStore` | `postgres` | yes | yes |")]
//!
//! Every backend answers each operation in one round trip (Redis: once its
//! scripts are loaded), so a delivery costs two: `claim`, then `complete` or
//! `release`.
//!
//! The persistent stores clamp leases and retentions to between 1 ms and
//! [`MAX_TTL`], the range every backend can represent.
//!
#![cfg_attr(
    feature = "test-util",
    doc = "The [conformance suite](crate::testing::conformance) (feature `test-util`) checks a store against this contract."
)]
#![cfg_attr(
    not(feature = "test-util"),
    doc = "The conformance suite in `testing::conformance` (feature `test-util`) checks a store against this contract."
)]
//!
//! # Writing your own store
//!
//! Implement the three methods with the semantics documented on each. The
//! whole contract fits in a small struct; this one keeps its state in a
//! mutex-guarded map (see `examples/custom_store.rs` for a runnable version):
//!
//! ```
//! use std::{collections::HashMap, sync::Mutex, time::{Duration, Instant}};
//! use klikit_webhook::{EventId, store::{BodyDigest, Claim, DedupStore, Lease, LeaseToken, Result}};
//!
//! /// Per id: the claim's token, the digest once done, and the expiry.
//! #[derive(Debug, Default)]
//! struct MapStore(Mutex<HashMap<EventId, (LeaseToken, Option<BodyDigest>, Instant)>>);
//!
//! #[async_trait::async_trait]
//! impl DedupStore for MapStore {
//!     async fn claim(&self, lease: &Lease, ttl: Duration) -> Result<Claim> {
//!         let mut map = self.0.lock().unwrap();
//!         let now = Instant::now();
//!         match map.get(lease.event_id()) {
//!             Some((_, Some(digest), until)) if *until > now => {
//!                 return Ok(Claim::Done { digest: Some(*digest) });
//!             }
//!             // Claiming again with the token that holds the claim: still ours.
//!             Some((token, None, until)) if *until > now && *token == lease.token() => return Ok(Claim::New),
//!             Some((_, None, until)) if *until > now => {
//!                 return Ok(Claim::InFlight { retry_after: Some(*until - now) });
//!             }
//!             _ => {}
//!         }
//!         map.insert(lease.event_id().clone(), (lease.token(), None, now + ttl));
//!         Ok(Claim::New)
//!     }
//!
//!     async fn complete(&self, lease: &Lease, digest: BodyDigest, retain: Duration) -> Result<bool> {
//!         let mut map = self.0.lock().unwrap();
//!         match map.get_mut(lease.event_id()) {
//!             Some(entry) if entry.0 == lease.token() && entry.1.is_none() => {
//!                 *entry = (entry.0, Some(digest), Instant::now() + retain);
//!                 Ok(true)
//!             }
//!             _ => Ok(false),
//!         }
//!     }
//!
//!     async fn release(&self, lease: &Lease) -> Result<bool> {
//!         let mut map = self.0.lock().unwrap();
//!         match map.get(lease.event_id()) {
//!             Some((token, None, _)) if *token == lease.token() => {
//!                 map.remove(lease.event_id());
//!                 Ok(true)
//!             }
//!             _ => Ok(false),
//!         }
//!     }
//! }
//! # let _ = klikit_webhook::KlikitWebhookLayer::new(
//! #     klikit_webhook::WebhookSecret::new("secret-for-the-doc-test").unwrap(),
//! # ).with_store(MapStore::default());
//! ```
//!
//! (A real store also forgets expired entries; [`MemoryStore`] shows how.)

use std::{error::Error as StdError, fmt, time::Duration};

use async_trait::async_trait;

mod lease;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
pub mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;

/// The connection pool [`PostgresStore`] takes, re-exported so that code
/// building one (for TLS, or its own sizes) uses the same version.
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use deadpool_postgres;
pub use lease::{BodyDigest, Lease, LeaseToken};
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::PostgresStore;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::RedisStore;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use sqlite::SqliteStore;
/// The Postgres driver [`PostgresStore`] runs on, re-exported so that code
/// passing it a client or a transaction uses the same version.
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use tokio_postgres;

/// The longest lease or retention the persistent stores keep: 10 years.
/// Longer durations are shortened to this.
pub const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// Runs `cleanup(store)` every `period` (first at once) on a tokio task,
/// logging what it deleted, and failures at `WARN`: the body of the SQL
/// stores' `spawn_cleanup`.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) fn spawn_cleanup_loop<S, Fut>(
    period: Duration,
    table: std::sync::Arc<str>,
    store: S,
    cleanup: fn(S) -> Fut,
) -> tokio::task::JoinHandle<()>
where
    S: Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<u64>> + Send + 'static,
{
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::spawn(async move {
        loop {
            interval.tick().await;
            match cleanup(store.clone()).await {
                Ok(deleted) => tracing::debug!(deleted, table = %table, "dedup cleanup"),
                Err(error) => tracing::warn!(%error, table = %table, "dedup cleanup failed"),
            }
        }
    })
}

/// Runs `delete_batch` (one statement deleting at most `batch` expired rows)
/// until a batch deletes fewer than `batch` rows, and returns the total: the
/// body of the SQL stores' `cleanup`. Batches keep each statement short, so
/// claims get the write lock in between.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) async fn delete_in_batches<Fut, E>(batch: i64, mut delete_batch: impl FnMut() -> Fut) -> Result<u64>
where
    Fut: std::future::Future<Output = std::result::Result<u64, E>>,
    E: Into<BoxError>,
{
    let mut total = 0;
    loop {
        let deleted = delete_batch().await.map_err(StoreError::backend)?;
        total += deleted;
        if deleted < batch.unsigned_abs() {
            return Ok(total);
        }
    }
}

/// `duration` in whole milliseconds, clamped to `1..=`[`MAX_TTL`]: how the
/// persistent stores (and the hand-offs of `klikit-handoff`) turn a lease,
/// a retention or a delay into a TTL every backend can represent. A zero
/// duration becomes 1 ms.
///
/// ```
/// use std::time::Duration;
/// use klikit_webhook::store::{MAX_TTL, ttl_millis};
///
/// assert_eq!(ttl_millis(Duration::from_secs(60)), 60_000);
/// assert_eq!(ttl_millis(Duration::ZERO), 1);
/// assert_eq!(ttl_millis(Duration::MAX), ttl_millis(MAX_TTL));
/// ```
pub fn ttl_millis(duration: Duration) -> i64 {
    let millis = duration.min(MAX_TTL).as_millis().max(1);
    i64::try_from(millis).unwrap_or(i64::MAX)
}

/// A token's 16 big-endian bytes, as the SQL stores persist it.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) fn token_bytes(token: LeaseToken) -> [u8; 16] {
    token.as_u128().to_be_bytes()
}

/// The [`Claim`] a SQL claim statement's `RETURNING` row stands for: whether
/// the row holds the caller's token, whether it is completed, the
/// milliseconds left on it, and its digest (a stored value that is not
/// [`BodyDigest::LEN`] bytes reads as none).
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) fn claim_answer(ours: bool, done: bool, left_ms: i64, digest: Option<&[u8]>) -> Claim {
    if done {
        let digest = digest.and_then(BodyDigest::from_slice);
        Claim::Done { digest }
    } else if ours {
        Claim::New
    } else {
        Claim::InFlight {
            retry_after: Some(Duration::from_millis(left_ms.max(0).unsigned_abs())),
        }
    }
}

/// The result type of every [`DedupStore`] operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A boxed error from a store's backend.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// A deduplication store with two-phase, lease-based claims.
///
/// See the [module docs](crate::store) for the protocol and a complete
/// custom implementation. All three operations must be **atomic** with respect
/// to each other for the same event id, across every process that shares the
/// store.
#[async_trait]
pub trait DedupStore: fmt::Debug + Send + Sync + 'static {
    /// Claims `lease.event_id()` for the caller's `lease`.
    ///
    /// The caller makes the lease (with a fresh [`LeaseToken::generate`])
    /// before the call, so that it can [`release`](Self::release) a claim
    /// that lands after the caller stopped waiting for it. Atomically:
    /// - if there is no record for the event id, or its record is a claim
    ///   whose lease has expired, or a completed record whose retention has
    ///   expired: store a claim with `lease.token()` that expires after `ttl`,
    ///   and return [`Claim::New`];
    /// - if an unexpired claim with `lease.token()` exists (the same claim,
    ///   made again): return [`Claim::New`] and leave it as it is;
    /// - if an unexpired claim with another token exists: return
    ///   [`Claim::InFlight`], with the time left on that lease when the
    ///   backend knows it;
    /// - if an unexpired completed record exists (whatever its token): return
    ///   [`Claim::Done`] with the digest stored by
    ///   [`complete`](Self::complete), or `None` for a record without one.
    ///
    /// A `ttl` of zero makes a claim that has already expired: the next
    /// claim of the event, by anyone, wins it.
    ///
    /// # Errors
    ///
    /// Returns a [`StoreError`] when the backend cannot answer. The layer
    /// then rejects the delivery with 503 (or, if configured to fail open,
    /// runs the handler without a claim), and releases `lease` in the
    /// background in case the claim was stored anyway; return
    /// [`StoreError::Full`] only when nothing was stored.
    async fn claim(&self, lease: &Lease, ttl: Duration) -> Result<Claim>;

    /// Marks the claim held by `lease` as done, remembered for `retain`
    /// together with `digest`, the digest of the body that was processed.
    ///
    /// Acts only if the stored record for `lease.event_id()` is still the
    /// claim with the same token, not yet completed. Once the lease has
    /// expired the store may have forgotten the claim (and another caller
    /// may have claimed the event again); then nothing changes. Returns
    /// `true` if the record was completed and `false` if the lease was stale
    /// or already completed.
    ///
    /// # Errors
    ///
    /// Returns a [`StoreError`] when the backend cannot answer.
    async fn complete(&self, lease: &Lease, digest: BodyDigest, retain: Duration) -> Result<bool>;

    /// Gives up the claim held by `lease`, so the next claim for the event is
    /// [`Claim::New`].
    ///
    /// Acts only if the stored record is a claim (not completed) with the
    /// same token. Returns `true` if the claim was removed and `false` if
    /// there was no such claim and nothing was changed: the lease was stale,
    /// completed, already released, or its claim never landed.
    ///
    /// # Errors
    ///
    /// Returns a [`StoreError`] when the backend cannot answer.
    async fn release(&self, lease: &Lease) -> Result<bool>;
}

#[async_trait]
impl<T: DedupStore + ?Sized> DedupStore for std::sync::Arc<T> {
    async fn claim(&self, lease: &Lease, ttl: Duration) -> Result<Claim> {
        (**self).claim(lease, ttl).await
    }

    async fn complete(&self, lease: &Lease, digest: BodyDigest, retain: Duration) -> Result<bool> {
        (**self).complete(lease, digest, retain).await
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        (**self).release(lease).await
    }
}

/// The answer of [`DedupStore::claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The caller's lease holds the event now; the caller must complete or
    /// release it.
    New,
    /// Another caller holds an unexpired claim on the event.
    InFlight {
        /// Time left on the other caller's lease, if the backend knows it.
        retry_after: Option<Duration>,
    },
    /// The event was processed; it must not be processed again.
    Done {
        /// The digest of the body that was processed, as given to
        /// [`DedupStore::complete`]; `None` for a record stored without one.
        digest: Option<BodyDigest>,
    },
}

/// A dedup store could not answer.
///
/// The layer turns every store error into a 503 with `Retry-After` (unless it
/// was configured to fail open), so Klikit retries the delivery later.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend failed (connection lost, query error, ...).
    #[error("dedup store backend error: {0}")]
    Backend(#[source] BoxError),
    /// The operation did not finish within the layer's store timeout.
    #[error("dedup store did not answer within {0:?}")]
    Timeout(Duration),
    /// The store is full of unexpired claims and cannot take another.
    #[error("dedup store is full: {capacity} events are in flight; raise the capacity or wait for leases to expire")]
    Full {
        /// The store's configured capacity.
        capacity: usize,
    },
}

impl StoreError {
    /// Wraps any backend error.
    pub fn backend(error: impl Into<BoxError>) -> Self {
        Self::Backend(error.into())
    }
}

#[cfg(all(test, any(feature = "postgres", feature = "sqlite")))]
mod tests {
    use super::*;

    #[test]
    fn a_stored_digest_of_another_length_reads_as_none() {
        let digest = BodyDigest::of(b"{}");
        let done = |stored: Option<&[u8]>| claim_answer(false, true, 0, stored);
        assert_eq!(done(Some(digest.as_bytes())), Claim::Done { digest: Some(digest) });
        // A 32-byte SHA-256 digest written by an earlier version, and none.
        assert_eq!(done(Some(&[7; 32])), Claim::Done { digest: None });
        assert_eq!(done(None), Claim::Done { digest: None });
    }
}
