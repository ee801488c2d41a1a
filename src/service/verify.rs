//! Verification: the signature over the signed prefix and the body, then the
//! scheme's timestamp check, then the id to deduplicate on.

use std::time::SystemTime;

use bytes::Bytes;

use crate::{
    EventId, RejectionKind,
    scheme::{Delivery, Scheme, finish_verification},
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

/// Finishes the verification once the whole body went into `state`, with
/// the same checks as [`verify_delivery`](crate::scheme::verify_delivery).
pub(super) fn finish(
    state: VerifyState,
    scheme: &dyn Scheme,
    delivery: &Delivery,
    body: &Bytes,
) -> Result<Verified, RejectionKind> {
    let (secret_index, id) = finish_verification(state, scheme, delivery, body, SystemTime::now())?;
    Ok(Verified { secret_index, id })
}
