//! [`OutboxDedupStore`]: the layer's store when the outbox transaction completes the claim.

use std::time::Duration;

use async_trait::async_trait;
use klikit_webhook::{
    PostgresStore,
    store::{BodyDigest, Claim, DedupStore, Lease},
};

/// The layer's store when the handler completes claims in its outbox
/// transaction ([`PostgresOutbox::with_dedup`](super::PostgresOutbox::with_dedup)).
///
/// It is the [`PostgresStore`] given to `with_dedup`, with one difference:
/// [`complete`](DedupStore::complete) and [`release`](DedupStore::release)
/// of a claim that is already **done with the same token** return `true`
/// instead of `false`. That state means "the handler's transaction completed
/// this very claim", not "the lease expired and was taken over", so the layer
/// logs no misleading warning:
///
/// - after a 2xx, the layer's `complete` finds its claim done: success; the
///   body's digest is stored on that record
///   ([`PostgresStore::attach_digest`]), since the handler's transaction
///   completed it without one;
/// - after a non-2xx answer *following* a committed enqueue (the handler
///   failed after the commit), the layer's `release` finds its claim done:
///   the claim is **not** released (the event is queued; Klikit's retry is
///   answered as a duplicate), and this is logged at `INFO`.
///
/// The extra check is one more query, made only when the plain statement
/// changed nothing. A stale lease (another token) still returns `false`.
///
/// Because a second `complete` of the same lease returns `true`, this type
/// deliberately fails the conformance suite's `complete_is_final` check; use
/// the bare [`PostgresStore`] anywhere else.
#[derive(Clone, Debug)]
pub struct OutboxDedupStore {
    store: PostgresStore,
}

impl OutboxDedupStore {
    pub(super) fn new(store: PostgresStore) -> Self {
        Self { store }
    }

    /// The underlying store.
    pub fn store(&self) -> &PostgresStore {
        &self.store
    }
}

#[async_trait]
impl DedupStore for OutboxDedupStore {
    async fn claim(&self, lease: &Lease, ttl: Duration) -> klikit_webhook::store::Result<Claim> {
        self.store.claim(lease, ttl).await
    }

    async fn complete(
        &self,
        lease: &Lease,
        digest: BodyDigest,
        retain: Duration,
    ) -> klikit_webhook::store::Result<bool> {
        if self.store.complete(lease, digest, retain).await? {
            return Ok(true);
        }
        let done = self.store.attach_digest(lease, digest).await?;
        if done {
            tracing::trace!("claim already completed by the handler's outbox transaction");
        }
        Ok(done)
    }

    async fn release(&self, lease: &Lease) -> klikit_webhook::store::Result<bool> {
        if self.store.release(lease).await? {
            return Ok(true);
        }
        let done = self.store.is_completed(lease).await?;
        if done {
            tracing::info!(
                "the handler failed after its outbox transaction committed: the event is queued and its claim \
                 stays done; the retry is answered as a duplicate"
            );
        }
        Ok(done)
    }
}
