//! The claim: ask the dedup store for the event before the handler runs,
//! hold the lease while it runs, and finish it (complete after a 2xx,
//! release otherwise) when the outcome is known, in the background if the
//! request went away first or the store did not answer.
//!
//! The layer makes each claim's [`Lease`] (and so its token) before it calls
//! the store. A claim call that the layer stops waiting for (the store
//! timeout, or the request dropped mid-claim) may still land in the store;
//! its lease is then released in the background, so the event is not
//! refused with 409 for a whole lease.
//!
//! Completion retries and releases in the background live in
//! [`background`](super::background).

use std::{
    future::{Future, poll_fn},
    pin::Pin,
    sync::Arc,
    task::Poll,
    time::Duration,
};

use bytes::Bytes;
use tokio::time::Instant;

use super::{
    Refusal,
    background::{ReleaseUntil, retry_complete, spawn_release},
    deadline::Deadline,
};
use crate::{
    EventId, RejectionKind, StoreFailurePolicy,
    layer::Config,
    store::{BodyDigest, Claim, Lease, StoreError},
};

/// The prefix of signature dedup keys. Event ids that start with it are
/// refused while signature deduplication is on, so the two kinds of key can
/// never meet in the store.
pub(super) const SIGNATURE_KEY_PREFIX: &str = "sig:";

/// What the store said about a delivery.
pub(super) enum Admission {
    /// Run the handler; finish the guard with its outcome. `None` when the
    /// store failed and the layer fails open: the handler runs unclaimed.
    Granted(Option<ClaimGuard>),
    /// Answer without the handler: duplicate, in flight, or store down.
    Refused(Refusal),
}

/// Claims `id` and, when given (the caller gives it only with signature
/// deduplication on), the key of the body's `signature` too; every lease
/// taken is held by the returned guard. `body` is compared (by digest) with
/// the processed body when the event is done.
pub(super) async fn admit(config: &Arc<Config>, id: &EventId, signature: Option<&[u8; 32]>, body: &Bytes) -> Admission {
    let mut guard = match claim(config, id, id).await {
        Decision::New(held) => ClaimGuard::new(config.clone(), held),
        Decision::Done(digest) => return Admission::Refused(duplicate(digest, body, id)),
        Decision::Refused(refusal) => return Admission::Refused(refusal),
        Decision::Unclaimed => return Admission::Granted(None),
    };
    if let Some(signature) = signature {
        // The same signed body under another event id: a replay, or a
        // sender redelivering with a fresh id. Either way it was (being)
        // processed.
        let refusal = match claim(config, &signature_key(signature), id).await {
            Decision::New(held) => {
                guard.replay_lease = Some(held);
                None
            }
            Decision::Done(digest) => Some(duplicate(digest, body, id)),
            Decision::Refused(refusal) => Some(refusal),
            // Failing open: go on with the id claim alone.
            Decision::Unclaimed => None,
        };
        if let Some(refusal) = refusal {
            guard.release().await;
            return Admission::Refused(refusal);
        }
    }
    Admission::Granted(Some(guard))
}

/// The answer to a delivery of the processed event `id`: a duplicate,
/// reported as a mismatch when the processed body's digest is known and
/// differs.
fn duplicate(processed: Option<BodyDigest>, body: &Bytes, id: &EventId) -> Refusal {
    match processed {
        Some(digest) if digest != BodyDigest::of(body) => Refusal::DuplicateBodyMismatch { event_id: id.clone() },
        _ => Refusal::Duplicate,
    }
}

enum Decision {
    New(Held),
    Done(Option<BodyDigest>),
    Refused(Refusal),
    Unclaimed,
}

/// A lease, and when the layer asked the store for it: the store's lease
/// cannot have started earlier, so `claimed_at + lease` is when the layer
/// stops trying to finish it. (Not the delivery's start, which would save a
/// clock reading: a body that took longer than a short lease to arrive would
/// leave no time at all to retry a failed completion.)
#[derive(Clone)]
pub(super) struct Held {
    pub(super) lease: Lease,
    /// The delivery's event id, for logs: the lease's key may be the body's
    /// signature, which is never logged.
    pub(super) event_id: EventId,
    claimed_at: Instant,
}

impl Held {
    /// Which key the lease is on, for logs.
    pub(super) fn key(&self) -> &'static str {
        if self.lease.event_id() == &self.event_id {
            "event id"
        } else {
            "body signature"
        }
    }

    /// When the lease ends at the latest; `None` if the clock cannot say.
    pub(super) fn lease_end(&self, config: &Config) -> Option<Instant> {
        self.claimed_at.checked_add(config.lease)
    }
}

/// Claims `key` for the delivery of `event_id`.
async fn claim(config: &Arc<Config>, key: &EventId, event_id: &EventId) -> Decision {
    let held = Held {
        lease: Lease::generate(key.clone()),
        event_id: event_id.clone(),
        claimed_at: Instant::now(),
    };
    let pending = PendingClaim::arm(config, &held);
    let result = with_timeout(config.store_timeout, config.store.claim(&held.lease, config.lease)).await;
    pending.disarm();
    match result {
        Ok(Claim::New) => Decision::New(held),
        Ok(Claim::Done { digest }) => Decision::Done(digest),
        Ok(Claim::InFlight { retry_after }) => Decision::Refused(Refusal::Rejected {
            kind: RejectionKind::InFlight {
                retry_after: retry_after.unwrap_or(Duration::from_secs(1)),
            },
            cause: None,
        }),
        Err(error) => {
            release_unanswered(config, held, &error);
            match config.store_failure {
                StoreFailurePolicy::FailClosed => Decision::Refused(Refusal::Rejected {
                    kind: RejectionKind::StoreUnavailable,
                    cause: Some(error),
                }),
                StoreFailurePolicy::FailOpen => {
                    tracing::error!(%error, "dedup store failed; failing open, event not deduplicated");
                    Decision::Unclaimed
                }
            }
        }
    }
}

/// Armed while a claim call is on its way to the store. If the request
/// future is dropped before the store answered, the call may still land:
/// `Drop` releases its lease in the background.
struct PendingClaim<'a> {
    config: &'a Arc<Config>,
    /// Borrowed: cloned only if it has to be released.
    armed: Option<&'a Held>,
}

impl<'a> PendingClaim<'a> {
    fn arm(config: &'a Arc<Config>, held: &'a Held) -> Self {
        Self {
            config,
            armed: Some(held),
        }
    }

    /// The store answered (or failed, or timed out): the caller decides.
    fn disarm(mut self) {
        self.armed = None;
    }
}

impl Drop for PendingClaim<'_> {
    fn drop(&mut self) {
        if let Some(held) = self.armed.take() {
            tracing::debug!("klikit delivery dropped while its claim was on the way; releasing it in the background");
            spawn_release(self.config, held.clone(), ReleaseUntil::Released);
        }
    }
}

/// A claim call failed: unless the store said it stored nothing, release its
/// lease in the background in case it landed.
fn release_unanswered(config: &Arc<Config>, held: Held, error: &StoreError) {
    match error {
        // Nothing was stored.
        StoreError::Full { .. } => {}
        // The call was cut off and may still land, after any number of
        // releases: release until one removes it.
        StoreError::Timeout(_) => spawn_release(config, held, ReleaseUntil::Released),
        // The call came back: it landed or not, and one answered release
        // settles it.
        _ => spawn_release(config, held, ReleaseUntil::Answered),
    }
}

/// The dedup key of a signed body: `sig:` and the signature in hex.
fn signature_key(signature: &[u8; 32]) -> EventId {
    let mut key = String::with_capacity(SIGNATURE_KEY_PREFIX.len() + 64);
    key.push_str(SIGNATURE_KEY_PREFIX);
    key.push_str(&const_hex::encode(signature));
    match EventId::new(key) {
        Ok(key) => key,
        Err(_) => unreachable!("`sig:` and 64 hex digits are 68 visible ASCII bytes"),
    }
}

/// Runs a store operation within `timeout`.
///
/// The operation is polled before the timer exists: a store that answers at
/// once (the in-memory store, a cached answer) costs no clock reading and no
/// timer. The timeout counts from the first time the operation is pending.
/// Store operations are boxed futures (the trait is `async_trait`), hence
/// `Unpin`; the timer is boxed too ([`Deadline`]), so this future is 96
/// bytes where `tokio::time::timeout` around the pinned operation made it
/// 200 (`-Zprint-type-sizes`): every future that awaits a store call is
/// that much smaller to build and to move.
pub(super) async fn with_timeout<T>(
    timeout: Duration,
    mut operation: impl Future<Output = Result<T, StoreError>> + Unpin,
) -> Result<T, StoreError> {
    let mut deadline = Deadline::new(timeout);
    poll_fn(|cx| {
        if let Poll::Ready(result) = Pin::new(&mut operation).poll(cx) {
            return Poll::Ready(result);
        }
        deadline
            .poll_elapsed(cx)
            .map(|()| Err(StoreError::Timeout(deadline.timeout())))
    })
    .await
}

/// Owns the leases of a granted delivery until the handler's outcome is
/// known.
///
/// If the request future is dropped first (the connection closed, the server
/// shut down, the handler panicked), `Drop` finishes the claim on a spawned
/// task: it releases the claim, or completes it if the handler had already
/// succeeded, so neither a lost event nor a double processing is left behind.
/// Without a Tokio runtime to spawn on, the lease simply expires.
pub(super) struct ClaimGuard {
    config: Arc<Config>,
    lease: Option<Held>,
    /// The claim on the body's signature, with signature deduplication on.
    replay_lease: Option<Held>,
    /// Set when the handler succeeded: the digest to complete with.
    succeeded: Option<BodyDigest>,
}

impl ClaimGuard {
    fn new(config: Arc<Config>, held: Held) -> Self {
        Self {
            config,
            lease: Some(held),
            replay_lease: None,
            succeeded: None,
        }
    }

    /// The handler answered 2xx for `body`: remember the event as processed,
    /// with the body's digest.
    pub(super) async fn complete(mut self, body: &Bytes) {
        let digest = BodyDigest::of(body);
        self.succeeded = Some(digest);
        self.finish_all(Finish::Complete(digest)).await;
    }

    /// The handler failed: give the event back for the sender's retry.
    pub(super) async fn release(mut self) {
        self.finish_all(Finish::Release).await;
    }

    /// Finishes every lease; one that is cancelled midway is left to `Drop`.
    async fn finish_all(&mut self, how: Finish) {
        for slot in [&mut self.lease, &mut self.replay_lease] {
            if let Some(held) = slot.as_ref() {
                finish(&self.config, held, how).await;
            }
            *slot = None;
        }
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let held: Vec<Held> = [self.lease.take(), self.replay_lease.take()]
            .into_iter()
            .flatten()
            .collect();
        let Some(first) = held.first() else {
            return;
        };
        let how = match self.succeeded {
            Some(digest) => Finish::Complete(digest),
            None => Finish::Release,
        };
        tracing::warn!(
            complete = matches!(how, Finish::Complete(_)),
            panicking = std::thread::panicking(),
            "klikit delivery ended before its claim was finished; finishing it in the background"
        );
        let lost = match how {
            Finish::Complete(_) => "the processed event is not recorded; a later duplicate may be processed again",
            Finish::Release => "the event is refused (409) until its lease ends",
        };
        let config = self.config.clone();
        let first = first.clone();
        self.config.background.spawn(&first, "finish", lost, async move {
            for held in &held {
                finish(&config, held, how).await;
            }
        });
    }
}

/// How a lease is finished.
#[derive(Clone, Copy)]
enum Finish {
    /// After a 2xx: complete with the processed body's digest.
    Complete(BodyDigest),
    /// Otherwise: release.
    Release,
}

/// Completes (after a 2xx) or releases one lease, within the store timeout;
/// when the store fails, retries in the background.
async fn finish(config: &Arc<Config>, held: &Held, how: Finish) {
    let (store, timeout, lease) = (&config.store, config.store_timeout, &held.lease);
    match how {
        Finish::Complete(digest) => {
            match with_timeout(timeout, store.complete(lease, digest, config.retention)).await {
                Ok(true) => tracing::trace!("claim completed"),
                Ok(false) => tracing::warn!(
                    "claim had expired and was taken over before it was completed; the event may be processed again"
                ),
                Err(error) => {
                    tracing::warn!(%error, "could not record the processed event; retrying in the background");
                    retry_complete(config, held, digest);
                }
            }
        }
        Finish::Release => match with_timeout(timeout, store.release(lease)).await {
            Ok(true) => tracing::trace!("claim released"),
            Ok(false) => tracing::warn!("claim had expired and was taken over before it was released"),
            Err(error) => {
                tracing::warn!(%error, "could not release the claim; retrying in the background");
                spawn_release(config, held.clone(), ReleaseUntil::Answered);
            }
        },
    }
}
