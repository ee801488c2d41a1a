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
//! The schemes:
//!
//! | scheme | [`name`](Scheme::name) | signature header | signed bytes | timestamp | dedup id |
//! |---|---|---|---|---|---|
//! | [`Klikit`] (default) | `klikit` | `x-klikit-signature: <hex>` | the raw body | none | `x-klikit-event-id` |
//! | [`KlikitV1`] | `klikit-v1` | `X-Klikit-Signature: t=<unix>,v1=<hex>` | `<t>.<body>` | ±300 s | the body's `event_id` |
//! | [`StandardWebhooks`] | `standard-webhooks` | `webhook-signature: v1,<base64>` | `<id>.<timestamp>.<body>` | ±300 s | `webhook-id` |
//!
//! To add a scheme, add one file that implements [`Scheme`]; nothing in the
//! service changes.
//!
//! ```
//! use klikit_webhook::{KlikitWebhookLayer, WebhookSecret, scheme::{Klikit, KlikitV1}};
//!
//! let secret = WebhookSecret::new("a-long-random-webhook-secret").unwrap();
//! // During Klikit's switch to Partner API v1: both contracts on one route.
//! let layer = KlikitWebhookLayer::new(secret).with_scheme(Klikit::new()).with_extra_scheme(KlikitV1::new());
//! # let _ = layer;
//! ```
//!
//! # Checking a delivery outside the layer
//!
//! [`verify_delivery`] runs the layer's checks (without deduplication) on
//! headers and a body, for example to reprocess stored deliveries; pair it
//! with a scheme's `ignoring_timestamp()` to skip the replay window. See
//! [`signed_request_with`] for building signed requests in tests.

use std::{fmt, sync::Arc, time::SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, header};

use crate::{
    EventId, KlikitEvent, RejectionKind, WebhookSecret,
    signature::{Verifier, VerifyState},
};

mod delivery;
mod headers;
pub(crate) mod klikit;
pub(crate) mod klikit_v1;
pub(crate) mod standard_webhooks;
mod timestamp;

pub use delivery::{Delivery, MAX_SIGNATURES, Outgoing, Signatures};
pub(crate) use headers::insert_headers;
pub use headers::{
    event_id_header, event_type_header, single_event_id_header, single_event_type_header, single_header,
};
pub use klikit::Klikit;
pub use klikit_v1::KlikitV1;
pub use standard_webhooks::StandardWebhooks;
pub(crate) use timestamp::check_within;
pub use timestamp::{DEFAULT_TOLERANCE, TimestampError, check_tolerance};

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
    /// here: put the [`SignatureError`](crate::signature::SignatureError) in the [`Delivery`], and the layer
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

/// Verifies one delivery as the layer does, but without deduplication:
/// `scheme` parses `headers`, the signature over the signed prefix and `body`
/// is checked against `verifier`'s secrets in constant time, then the
/// timestamp against `now`, then the id to deduplicate on is read.
///
/// For deliveries you stored and want to process again (pass the scheme's
/// `ignoring_timestamp()` variant to accept them past the replay window), and
/// for tests. The event it returns is the one the layer would hand the
/// handler.
///
/// ```
/// use std::time::SystemTime;
/// use bytes::Bytes;
/// use http::HeaderMap;
/// use klikit_webhook::{WebhookSecret, scheme::{KlikitV1, Outgoing, Scheme, verify_delivery}, signature::Verifier};
///
/// let secret = WebhookSecret::new("a-long-random-webhook-secret").unwrap();
/// let body = Bytes::from_static(br#"{"event_id":"6d0c7b52-3f4e-4a51-9d8e-2b7f1c0a9e34"}"#);
/// let mut headers = HeaderMap::new();
/// let outgoing = Outgoing::new("6d0c7b52-3f4e-4a51-9d8e-2b7f1c0a9e34", "order.placed.v1", &body).with_timestamp(1_747_300_000);
/// KlikitV1::new().sign(&secret, &outgoing, &mut headers);
///
/// let verifier = Verifier::new(secret);
/// // Stored long ago: refused with the replay window, accepted without it.
/// assert!(verify_delivery(&KlikitV1::new(), &verifier, &headers, &body, SystemTime::now()).is_err());
/// let event = verify_delivery(&KlikitV1::new().ignoring_timestamp(), &verifier, &headers, &body, SystemTime::now()).unwrap();
/// assert_eq!(event.id().as_str(), "6d0c7b52-3f4e-4a51-9d8e-2b7f1c0a9e34");
/// ```
///
/// # Errors
///
/// The [`RejectionKind`] the layer would answer with.
pub fn verify_delivery(
    scheme: &dyn Scheme,
    verifier: &Verifier,
    headers: &HeaderMap,
    body: &Bytes,
    now: SystemTime,
) -> Result<KlikitEvent, RejectionKind> {
    let delivery = scheme.parse(headers)?;
    let mut state = verifier.start();
    state.update(delivery.signed_prefix());
    state.update(body);
    let (secret_index, id) = finish_verification(state, scheme, &delivery, body, now)?;
    let (_, event_type) = delivery.into_id_and_type();
    Ok(KlikitEvent::new(id, event_type, body.clone()).with_secret_index(secret_index))
}

/// The checks after the signed bytes went into `state`, in the layer's
/// order: the signature (constant time over every candidate and secret),
/// then the timestamp, then the id to deduplicate on. Returns the index of
/// the secret that matched and that id.
pub(crate) fn finish_verification(
    state: VerifyState,
    scheme: &dyn Scheme,
    delivery: &Delivery,
    body: &Bytes,
    now: SystemTime,
) -> Result<(usize, EventId), RejectionKind> {
    let signatures = delivery.signatures().map_err(RejectionKind::InvalidSignature)?;
    let secret_index = state.finish_any(signatures).map_err(RejectionKind::InvalidSignature)?;
    scheme.check_timestamp(delivery, now)?;
    let id = scheme.verified_event_id(delivery, body)?;
    Ok((secret_index, id))
}

/// The path [`signed_request_with`] posts to.
const REQUEST_PATH: &str = "/webhooks/klikit";

/// Builds a `POST /webhooks/klikit` request carrying `outgoing`'s body,
/// with a JSON content type and every header `scheme` sends, signed with
/// `secret`: the request a sender using that scheme would make. For tests;
/// change the path with `*request.uri_mut() = ...` if yours differs.
///
/// ```
/// use axum::body::Body;
/// use klikit_webhook::{WebhookSecret, scheme::{KlikitV1, Outgoing, signed_request_with}};
///
/// let secret = WebhookSecret::new("a-long-random-webhook-secret").unwrap();
/// let body = br#"{"event_id":"9b2e4c1a-7d3f-4e8b-a6c5-0f1d2e3c4b5a"}"#;
/// let outgoing = Outgoing::new("9b2e4c1a-7d3f-4e8b-a6c5-0f1d2e3c4b5a", "order.placed.v1", body).with_subscription("wh_1");
/// let request = signed_request_with::<Body>(&KlikitV1::new(), &secret, &outgoing);
/// assert!(request.headers()["x-klikit-signature"].to_str().unwrap().starts_with("t="));
/// assert_eq!(request.headers()["x-klikit-webhook-id"], "wh_1");
/// ```
///
/// # Panics
///
/// Never for the schemes of this crate: a header value `scheme` cannot
/// write (an id with a control character, say) is left out, and the
/// receiver answers 400.
pub fn signed_request_with<B: From<Bytes>>(
    scheme: &dyn Scheme,
    secret: &WebhookSecret,
    outgoing: &Outgoing<'_>,
) -> Request<B> {
    let mut request = Request::new(B::from(Bytes::copy_from_slice(outgoing.body)));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = http::Uri::from_static(REQUEST_PATH);
    let headers = request.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    scheme.sign(secret, outgoing, headers);
    request
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

    /// The index of the scheme that reads `headers`: the only one, the first
    /// that recognizes them, or else the first (whose errors then name its
    /// headers).
    pub(crate) fn select_index(&self, headers: &HeaderMap) -> usize {
        if self.0.len() == 1 {
            return 0;
        }
        self.0.iter().position(|scheme| scheme.recognizes(headers)).unwrap_or(0)
    }

    /// The scheme at `index`, an index [`select_index`](Self::select_index)
    /// returned (so that a future can hold the index rather than a borrow of
    /// the configuration it also holds); the first for any other.
    pub(crate) fn get(&self, index: usize) -> &dyn Scheme {
        self.0.get(index).unwrap_or(&self.0[0]).as_ref()
    }
}
