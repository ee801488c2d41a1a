//! Signature schemes: how a sender signs a delivery, and so what the layer
//! reads and checks.
//!
//! A [`Scheme`] knows, for one webhook contract:
//! - which headers a delivery carries, and how to parse them into a
//!   [`Delivery`] (event id, event type, the candidate [`Signatures`], a
//!   timestamp and a subscription id where the contract has them);
//! - which bytes are signed: a prefix ([`Delivery::signed_prefix`], such as
//!   `"<timestamp>."`) followed by the raw body, which the layer feeds to the
//!   HMAC frame by frame as it arrives, never copied;
//! - how a timestamp is checked ([`Scheme::check_timestamp`]);
//! - what the deduplication key is once the body is verified
//!   ([`Scheme::verified_event_id`]);
//! - how to sign an outgoing delivery ([`Scheme::sign`]), for tests and tools.
//!
//! The layer does the rest the same way for every scheme: the body limit and
//! timeout, HMAC-SHA256 over the prefix and body in constant time against
//! every configured secret, the claim, the handler.
//!
//! [`Klikit`] is today's Klikit contract (hex HMAC-SHA256 of the raw body in
//! `x-klikit-signature`) and the default. To add a scheme, add one file that
//! implements [`Scheme`]; nothing in the service changes.
//!
//! ```
//! use klikit_webhook::{KlikitWebhookLayer, WebhookSecret, scheme::Klikit};
//!
//! let secret = WebhookSecret::new("a-long-random-webhook-secret").unwrap();
//! let layer = KlikitWebhookLayer::new(secret).with_scheme(Klikit::new());
//! # let _ = layer;
//! ```

use std::{fmt, sync::Arc, time::SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::{EventId, EventType, RejectionKind, WebhookSecret, signature::SignatureError};

pub(crate) mod klikit;

pub use klikit::Klikit;

/// The most signatures one delivery may carry (several appear while a
/// sender rotates secrets). A header with more is malformed: the bound keeps
/// the constant-time comparison's cost fixed.
pub const MAX_SIGNATURES: usize = 8;

/// A webhook signature contract. See the [module docs](crate::scheme).
pub trait Scheme: fmt::Debug + Send + Sync + 'static {
    /// A short name for logs and configuration, such as `klikit`.
    fn name(&self) -> &'static str;

    /// Whether `headers` carry this scheme's signature header. With several
    /// schemes on one route, the first scheme that recognizes a delivery
    /// parses it; a delivery no scheme recognizes is parsed by the first.
    fn recognizes(&self, headers: &HeaderMap) -> bool;

    /// The header whose value is the signature, marked sensitive for the
    /// layers inside this one so it is never logged.
    fn signature_header(&self) -> &HeaderName;

    /// The name of the header that carries the event id, for error messages.
    fn event_id_header(&self) -> &'static str;

    /// Reads the delivery headers.
    ///
    /// A signature header that is present but malformed is not an error
    /// here: put the [`SignatureError`] in the [`Delivery`], and the layer
    /// answers 401 after reading the body, exactly as for a wrong signature.
    ///
    /// # Errors
    ///
    /// [`RejectionKind::MissingHeader`] or [`RejectionKind::InvalidHeader`]
    /// (400) when a required header is absent, repeated or unreadable.
    fn parse(&self, headers: &HeaderMap) -> Result<Delivery, RejectionKind>;

    /// Checks the delivery's timestamp against `now`, after the signature
    /// matched. The default accepts every delivery (today's Klikit contract
    /// signs no timestamp).
    ///
    /// # Errors
    ///
    /// The rejection to answer with when the timestamp is out of tolerance.
    fn check_timestamp(&self, delivery: &Delivery, now: SystemTime) -> Result<(), RejectionKind> {
        let _ = (delivery, now);
        Ok(())
    }

    /// The id to deduplicate on, once `body` is verified. The default is the
    /// id from the headers; a scheme whose signed body carries the id reads
    /// it from there.
    ///
    /// # Errors
    ///
    /// The rejection to answer with when the body's id cannot be used.
    fn verified_event_id(&self, delivery: &Delivery, body: &Bytes) -> Result<EventId, RejectionKind> {
        let _ = body;
        Ok(delivery.id().clone())
    }

    /// Writes the headers that sign `outgoing` with `secret` into `headers`:
    /// the signature, the event id and type, and any other header the scheme
    /// requires. For tests and tools that send deliveries.
    fn sign(&self, secret: &WebhookSecret, outgoing: &Outgoing<'_>, headers: &mut HeaderMap);
}

impl<T: Scheme + ?Sized> Scheme for Arc<T> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn recognizes(&self, headers: &HeaderMap) -> bool {
        (**self).recognizes(headers)
    }
    fn signature_header(&self) -> &HeaderName {
        (**self).signature_header()
    }
    fn event_id_header(&self) -> &'static str {
        (**self).event_id_header()
    }
    fn parse(&self, headers: &HeaderMap) -> Result<Delivery, RejectionKind> {
        (**self).parse(headers)
    }
    fn check_timestamp(&self, delivery: &Delivery, now: SystemTime) -> Result<(), RejectionKind> {
        (**self).check_timestamp(delivery, now)
    }
    fn verified_event_id(&self, delivery: &Delivery, body: &Bytes) -> Result<EventId, RejectionKind> {
        (**self).verified_event_id(delivery, body)
    }
    fn sign(&self, secret: &WebhookSecret, outgoing: &Outgoing<'_>, headers: &mut HeaderMap) {
        (**self).sign(secret, outgoing, headers)
    }
}

/// What a [`Scheme`] read from a delivery's headers.
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

/// A delivery to sign with [`Scheme::sign`].
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

/// The only value of header `name`: absent or empty is "missing"
/// ([`RejectionKind::MissingHeader`]), repeated is "invalid"
/// ([`RejectionKind::InvalidHeader`]), since two ids or two signature headers
/// are ambiguous. For schemes' [`parse`](Scheme::parse).
///
/// # Errors
///
/// As above, naming the header by `label`.
pub fn single_header<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
    label: &'static str,
) -> Result<&'a HeaderValue, RejectionKind> {
    let mut values = headers.get_all(name).iter();
    let value = values.next().ok_or(RejectionKind::MissingHeader(label))?;
    if values.next().is_some() {
        return Err(RejectionKind::InvalidHeader(label));
    }
    if value.is_empty() {
        return Err(RejectionKind::MissingHeader(label));
    }
    Ok(value)
}

/// Reads an event id header value: 1 to
/// [`MAX_EVENT_ID_LEN`](crate::MAX_EVENT_ID_LEN) bytes of visible ASCII. For
/// schemes' [`parse`](Scheme::parse).
///
/// # Errors
///
/// [`RejectionKind::InvalidEventId`] naming `label` otherwise.
pub fn event_id_header(value: &HeaderValue, label: &'static str) -> Result<EventId, RejectionKind> {
    EventId::from_header_bytes(value.as_bytes()).map_err(|error| RejectionKind::InvalidEventId { header: label, error })
}

/// Reads an event type header: 1 to 256 bytes of visible ASCII; any name is
/// accepted (unknown ones as [`EventType::Other`]). For schemes'
/// [`parse`](Scheme::parse).
///
/// # Errors
///
/// [`RejectionKind::InvalidHeader`] naming `label` otherwise.
pub fn event_type_header(value: &HeaderValue, label: &'static str) -> Result<EventType, RejectionKind> {
    value
        .to_str()
        .ok()
        .filter(|name| name.len() <= crate::MAX_EVENT_ID_LEN && name.bytes().all(|b| b.is_ascii_graphic()))
        .map(EventType::from_name)
        .ok_or(RejectionKind::InvalidHeader(label))
}

/// The schemes a layer accepts, in order of preference.
#[derive(Clone, Debug)]
pub(crate) struct Schemes(Vec<Arc<dyn Scheme>>);

impl Schemes {
    pub(crate) fn one(scheme: Arc<dyn Scheme>) -> Self {
        Self(vec![scheme])
    }

    pub(crate) fn push(&mut self, scheme: Arc<dyn Scheme>) {
        self.0.push(scheme);
    }

    pub(crate) fn names(&self) -> Vec<&'static str> {
        self.0.iter().map(|scheme| scheme.name()).collect()
    }

    /// The scheme that reads `headers`: the only one, the first that
    /// recognizes them, or else the first (whose errors then name its headers).
    pub(crate) fn select(&self, headers: &HeaderMap) -> &dyn Scheme {
        let first = &self.0[0];
        if self.0.len() == 1 {
            return first.as_ref();
        }
        self.0
            .iter()
            .find(|scheme| scheme.recognizes(headers))
            .unwrap_or(first)
            .as_ref()
    }
}
