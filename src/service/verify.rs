//! Verification: the signature over the signed prefix and the body, then the
//! scheme's timestamp check, then the id to deduplicate on.

use std::time::SystemTime;

use bytes::Bytes;

use crate::{
    EventId, RejectionKind,
    scheme::{Delivery, Scheme},
    signature::{Verifier, VerifyState},
};

/// Starts verifying `delivery` with `verifier`'s secrets: the scheme's
/// signed prefix goes in first, the body follows frame by frame.
pub(super) fn start(verifier: &Verifier, delivery: &Delivery) -> VerifyState {
    let mut state = verifier.start();
    if !delivery.signed_prefix().is_empty() {
        state.update(delivery.signed_prefix());
    }
    state
}

/// A delivery whose signature, timestamp and id checked out.
pub(super) struct Verified {
    /// Which configured secret matched.
    pub(super) secret_index: usize,
    /// The id to deduplicate on.
    pub(super) id: EventId,
}

/// Finishes the verification once the whole body went into `state`.
pub(super) fn finish(
    state: VerifyState,
    scheme: &dyn Scheme,
    delivery: &Delivery,
    body: &Bytes,
) -> Result<Verified, RejectionKind> {
    let signatures = delivery.signatures().map_err(RejectionKind::InvalidSignature)?;
    let secret_index = state.finish_any(signatures).map_err(RejectionKind::InvalidSignature)?;
    scheme.check_timestamp(delivery, SystemTime::now())?;
    let id = scheme.verified_event_id(delivery, body)?;
    Ok(Verified { secret_index, id })
}
