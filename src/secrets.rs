//! Where a delivery's secrets come from: the second seam next to
//! [`Scheme`](crate::scheme::Scheme).
//!
//! Today every delivery is checked against one fixed list of secrets (the
//! current one, plus the previous one during a rotation), keyed once when the
//! layer is built. A source that looks secrets up per delivery (by the
//! [subscription](crate::scheme::Delivery::subscription) a scheme reads) is
//! one more variant of [`SecretSource`]; the service only asks it for the
//! verifier of a delivery.

use std::sync::Arc;

use crate::{RejectionKind, scheme::Delivery, signature::Verifier};

/// The secrets a layer verifies with.
#[derive(Clone, Debug)]
pub(crate) enum SecretSource {
    /// The same secrets for every delivery, keyed once.
    Fixed(Arc<Verifier>),
}

impl SecretSource {
    /// The verifier for `delivery`'s secrets.
    ///
    /// A source that cannot name secrets for a delivery refuses it like a
    /// wrong signature (401), so an unknown subscription is not told apart
    /// from a forgery.
    #[allow(clippy::unused_async)] // lookups by subscription are async
    pub(crate) async fn verifier_for(&self, delivery: &Delivery) -> Result<Arc<Verifier>, RejectionKind> {
        let _ = delivery;
        match self {
            Self::Fixed(verifier) => Ok(verifier.clone()),
        }
    }

    /// How many secrets are configured (for `Debug`; never the secrets).
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Fixed(verifier) => format!("{} fixed", verifier.secret_count()),
        }
    }

    /// Adds `secret` to a fixed list.
    pub(crate) fn with_secret(self, secret: crate::WebhookSecret) -> Self {
        match self {
            Self::Fixed(verifier) => Self::Fixed(Arc::new(Verifier::clone(&verifier).with_secret(secret))),
        }
    }
}
