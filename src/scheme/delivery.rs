//! What a scheme reads from a delivery ([`Delivery`], [`Signatures`]) and
//! what it signs ([`Outgoing`]).

use std::{fmt, sync::Arc, time::SystemTime};

use crate::{EventId, EventType, signature::SignatureError};

/// The most signatures one delivery may carry (several appear while a
/// sender rotates secrets). A header with more is malformed: the bound keeps
/// the constant-time comparison's cost fixed.
pub const MAX_SIGNATURES: usize = 8;

/// What a [`Scheme`](super::Scheme) read from a delivery's headers.
#[derive(Clone)]
pub struct Delivery {
    id: EventId,
    event_type: EventType,
    signatures: Result<Signatures, SignatureError>,
    signed_prefix: Vec<u8>,
    timestamp: Option<i64>,
    subscription: Option<Arc<str>>,
}

impl Delivery {
    /// A delivery with an id, a type and its candidate signatures (or why
    /// they could not be read), whose signed bytes are the body alone.
    pub fn new(id: EventId, event_type: EventType, signatures: Result<Signatures, SignatureError>) -> Self {
        Self {
            id,
            event_type,
            signatures,
            signed_prefix: Vec::new(),
            timestamp: None,
            subscription: None,
        }
    }

    /// Bytes signed before the body, such as `"<timestamp>."`.
    #[must_use]
    pub fn with_signed_prefix(mut self, prefix: impl Into<Vec<u8>>) -> Self {
        self.signed_prefix = prefix.into();
        self
    }

    /// The signed timestamp, in seconds since the Unix epoch.
    #[must_use]
    pub fn with_timestamp(mut self, unix_seconds: i64) -> Self {
        self.timestamp = Some(unix_seconds);
        self
    }

    /// The subscription (webhook) id the sender names, which selects the
    /// secrets where they are resolved per subscription.
    #[must_use]
    pub fn with_subscription(mut self, subscription: impl Into<Arc<str>>) -> Self {
        self.subscription = Some(subscription.into());
        self
    }

    /// The event id from the headers.
    pub fn id(&self) -> &EventId {
        &self.id
    }

    /// The event type from the headers.
    pub fn event_type(&self) -> &EventType {
        &self.event_type
    }

    /// The candidate signatures, or why the signature header is malformed.
    pub fn signatures(&self) -> Result<&Signatures, SignatureError> {
        self.signatures.as_ref().map_err(|error| *error)
    }

    /// The bytes signed before the body (empty when only the body is signed).
    pub fn signed_prefix(&self) -> &[u8] {
        &self.signed_prefix
    }

    /// The signed timestamp, if the scheme has one.
    pub fn timestamp(&self) -> Option<i64> {
        self.timestamp
    }

    /// The subscription id, if the scheme has one.
    pub fn subscription(&self) -> Option<&str> {
        self.subscription.as_deref()
    }

    pub(crate) fn into_id_and_type(self) -> (EventId, EventType) {
        (self.id, self.event_type)
    }
}

impl fmt::Debug for Delivery {
    // Signatures are never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("id", &self.id)
            .field("event_type", &self.event_type)
            .field("signatures", &self.signatures.as_ref().map(Signatures::len))
            .field("timestamp", &self.timestamp)
            .field("subscription", &self.subscription)
            .finish_non_exhaustive()
    }
}

/// The decoded HMAC-SHA256 signatures one delivery carries: one to
/// [`MAX_SIGNATURES`]. A delivery verifies when any of them matches any
/// configured secret.
///
/// One signature (the common case) is held inline; several (during a
/// sender's rotation) on the heap, so a delivery stays small to move.
#[derive(Clone, PartialEq, Eq)]
pub struct Signatures(Repr);

#[derive(Clone, PartialEq, Eq)]
enum Repr {
    One([u8; 32]),
    Many(Box<[[u8; 32]]>),
}

impl Signatures {
    /// One signature.
    pub fn one(signature: [u8; 32]) -> Self {
        Self(Repr::One(signature))
    }

    /// Collects signatures.
    ///
    /// # Errors
    ///
    /// [`SignatureError::Malformed`] for none, or more than [`MAX_SIGNATURES`].
    pub fn collect(signatures: impl IntoIterator<Item = [u8; 32]>) -> Result<Self, SignatureError> {
        let mut list = Vec::new();
        for signature in signatures {
            if list.len() == MAX_SIGNATURES {
                return Err(SignatureError::Malformed);
            }
            list.push(signature);
        }
        match list.as_slice() {
            [] => Err(SignatureError::Malformed),
            [one] => Ok(Self::one(*one)),
            _ => Ok(Self(Repr::Many(list.into_boxed_slice()))),
        }
    }

    /// The signatures.
    pub fn as_slice(&self) -> &[[u8; 32]] {
        match &self.0 {
            Repr::One(one) => std::slice::from_ref(one),
            Repr::Many(many) => many,
        }
    }

    /// How many there are (at least one).
    #[allow(clippy::len_without_is_empty)] // never empty
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }
}

impl fmt::Debug for Signatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signatures([{} redacted])", self.len())
    }
}

/// A delivery to sign with [`Scheme::sign`](super::Scheme::sign).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Outgoing<'a> {
    /// The event id.
    pub id: &'a str,
    /// The event type name.
    pub event_type: &'a str,
    /// The send time, in seconds since the Unix epoch (ignored by schemes
    /// that sign no timestamp).
    pub timestamp: i64,
    /// The subscription id, for schemes that send one.
    pub subscription: Option<&'a str>,
    /// The raw body.
    pub body: &'a [u8],
}

impl<'a> Outgoing<'a> {
    /// A delivery of `body` as event `id` of type `event_type`, stamped now
    /// and with no subscription.
    pub fn new(id: &'a str, event_type: &'a str, body: &'a [u8]) -> Self {
        let timestamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX));
        Self {
            id,
            event_type,
            timestamp,
            subscription: None,
            body,
        }
    }

    /// Stamps the delivery with `unix_seconds` instead of now.
    #[must_use]
    pub fn with_timestamp(mut self, unix_seconds: i64) -> Self {
        self.timestamp = unix_seconds;
        self
    }

    /// Names the subscription.
    #[must_use]
    pub fn with_subscription(mut self, subscription: &'a str) -> Self {
        self.subscription = Some(subscription);
        self
    }
}
