//! The claim: ask the dedup store for the event before the handler runs,
//! hold the lease while it runs, and finish it (complete after a 2xx,
//! release otherwise) when the outcome is known, in the background if the
//! request went away first.

use std::{future::Future, sync::Arc, time::Duration};

use bytes::Bytes;

use super::Refusal;
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

/// Claims `id` and, with signature deduplication on, the key of the body's
/// `signature` too; every lease taken is held by the returned guard.
pub(super) async fn admit(config: &Arc<Config>, id: &EventId, signature: Option<&[u8; 32]>) -> Admission {
    let mut guard = match claim(config, id).await {
        Decision::New(lease) => ClaimGuard::new(config.clone(), lease),
        Decision::Refused(refusal) => return Admission::Refused(refusal),
        Decision::Unclaimed => return Admission::Granted(None),
    };
    if let Some(signature) = signature.filter(|_| config.dedup_on_signature) {
        // The same signed body under another event id: a replay, or a
        // sender redelivering with a fresh id. Either way it was (being)
        // processed.
        match claim(config, &signature_key(signature)).await {
            Decision::New(lease) => guard.replay_lease = Some(lease),
            Decision::Refused(refusal) => {
                guard.release().await;
                return Admission::Refused(refusal);
            }
            // Failing open: go on with the id claim alone.
            Decision::Unclaimed => {}
        }
    }
    Admission::Granted(Some(guard))
}

enum Decision {
    New(Lease),
    Refused(Refusal),
    Unclaimed,
}

async fn claim(config: &Config, key: &EventId) -> Decision {
    let lease = Lease::generate(key.clone());
    match with_timeout(config.store_timeout, config.store.claim(&lease, config.lease)).await {
        Ok(Claim::New) => Decision::New(lease),
        Ok(Claim::Done { .. }) => Decision::Refused(Refusal::Duplicate),
        Ok(Claim::InFlight { retry_after }) => Decision::Refused(Refusal::Rejected {
            kind: RejectionKind::InFlight {
                retry_after: retry_after.unwrap_or(Duration::from_secs(1)),
            },
            cause: None,
        }),
        Err(error) => match config.store_failure {
            StoreFailurePolicy::FailClosed => Decision::Refused(Refusal::Rejected {
                kind: RejectionKind::StoreUnavailable,
                cause: Some(error),
            }),
            StoreFailurePolicy::FailOpen => {
                tracing::error!(%error, "dedup store failed; failing open, event not deduplicated");
                Decision::Unclaimed
            }
        },
    }
}

/// The dedup key of a signed body: `sig:` and the signature in hex.
fn signature_key(signature: &[u8; 32]) -> EventId {
    let mut key = String::with_capacity(SIGNATURE_KEY_PREFIX.len() + 64);
    key.push_str(SIGNATURE_KEY_PREFIX);
    key.push_str(&hex::encode(signature));
    match EventId::new(key) {
        Ok(key) => key,
        Err(_) => unreachable!("`sig:` and 64 hex digits are 68 visible ASCII bytes"),
    }
}

async fn with_timeout<T>(
    timeout: Duration,
    operation: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, operation).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Timeout(timeout)),
    }
}

/// Owns a [`Claim::New`] lease until the handler's outcome is known.
///
/// If the request future is dropped first (the connection closed, the server
/// shut down, the handler panicked), `Drop` finishes the claim on a spawned
/// task: it releases the claim, or completes it if the handler had already
/// succeeded, so neither a lost event nor a double processing is left behind.
/// Without a Tokio runtime to spawn on, the lease simply expires.
pub(super) struct ClaimGuard {
    config: Arc<Config>,
    lease: Option<Lease>,
    /// The claim on the body's signature, with signature deduplication on.
    replay_lease: Option<Lease>,
    /// Set when the handler succeeded: the digest to complete with.
    succeeded: Option<BodyDigest>,
}

impl ClaimGuard {
    fn new(config: Arc<Config>, lease: Lease) -> Self {
        Self {
            config,
            lease: Some(lease),
            replay_lease: None,
            succeeded: None,
        }
    }

    /// The handler answered 2xx for `body`: remember the event as
    /// processed, with the body's digest.
    pub(super) async fn complete(mut self, body: &Bytes) {
        let digest = BodyDigest::of(body);
        self.succeeded = Some(digest);
        self.finish_all(Some(digest)).await;
    }

    /// The handler failed: give the event back for the sender's retry.
    pub(super) async fn release(mut self) {
        self.finish_all(None).await;
    }

    /// Finishes every lease (completes with `digest`, or releases without);
    /// one that is cancelled midway is left to `Drop`.
    async fn finish_all(&mut self, digest: Option<BodyDigest>) {
        for slot in [&mut self.lease, &mut self.replay_lease] {
            if let Some(lease) = slot.as_ref() {
                finish(&self.config, lease, digest).await;
            }
            *slot = None;
        }
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let leases: Vec<Lease> = [self.lease.take(), self.replay_lease.take()]
            .into_iter()
            .flatten()
            .collect();
        if leases.is_empty() {
            return;
        }
        let digest = self.succeeded;
        tracing::warn!(
            complete = digest.is_some(),
            panicking = std::thread::panicking(),
            "klikit delivery ended before its claim was finished; finishing it in the background"
        );
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let config = self.config.clone();
        runtime.spawn(async move {
            for lease in &leases {
                finish(&config, lease, digest).await;
            }
        });
    }
}

/// Completes with the processed body's `digest` (after a 2xx) or releases
/// (without one) one lease, within the store timeout.
async fn finish(config: &Arc<Config>, lease: &Lease, digest: Option<BodyDigest>) {
    let (store, timeout) = (&config.store, config.store_timeout);
    let complete = digest.is_some();
    let result = match digest {
        Some(digest) => with_timeout(timeout, store.complete(lease, digest, config.retention)).await,
        None => with_timeout(timeout, store.release(lease)).await,
    };
    match (result, digest) {
        (Ok(true), Some(_)) => tracing::trace!("claim completed"),
        (Ok(true), None) => tracing::trace!("claim released"),
        (Ok(false), _) => tracing::warn!(
            complete,
            "claim had expired and was taken over before it was finished; the event may be processed again"
        ),
        (Err(error), Some(digest)) => {
            tracing::warn!(%error, "could not record the processed event; retrying in the background");
            retry_complete(config.clone(), lease.clone(), digest);
        }
        (Err(error), None) => tracing::error!(
            %error,
            "could not release the claim; the retry is processed once the lease expires"
        ),
    }
}

/// Keeps trying to complete a claim whose handler succeeded, until the lease
/// would have expired.
///
/// The 2xx has gone out, so Klikit will not retry; but a duplicate it sends
/// later (or an operator's replay) must find the event done. Leaving the
/// claim in flight would let the first delivery after the lease run the
/// handler again. Retrying is safe: `complete` acts only while this lease's
/// token holds the claim.
fn retry_complete(config: Arc<Config>, lease: Lease, digest: BodyDigest) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let give_up = tokio::time::Instant::now() + config.lease;
        // At once first (a connection killed under the store is usually
        // replaced by the pool right away), then backing off.
        let mut delay = Duration::ZERO;
        while tokio::time::Instant::now() + delay < give_up {
            tokio::time::sleep(delay).await;
            match with_timeout(
                config.store_timeout,
                config.store.complete(&lease, digest, config.retention),
            )
            .await
            {
                Ok(true) => {
                    tracing::info!(event_id = %lease.event_id(), "processed event recorded on retry");
                    return;
                }
                // Either an earlier attempt did land (the event is done) or
                // the lease was lost: nothing more to do either way.
                Ok(false) => return,
                Err(_) => delay = (delay * 2).clamp(Duration::from_millis(25), Duration::from_secs(1)),
            }
        }
        tracing::error!(
            event_id = %lease.event_id(),
            "could not record the processed event before its lease ended; a later duplicate will be processed again"
        );
    });
}
