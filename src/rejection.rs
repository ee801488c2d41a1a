//! The answers the layer gives without calling the handler.

use std::{fmt, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::{InvalidEventId, signature::SignatureError};

/// Why the layer refused a delivery. It is also inserted into the response's
/// extensions, so outer layers (logging, metrics) can tell rejections apart.
///
/// | kind | status | body |
/// |---|---|---|
/// | missing or empty header | 400 | `{"error":"missing header x-klikit-…"}` |
/// | header repeated or not visible ASCII, bad event id | 400 | `{"error":"invalid header x-klikit-…"}` |
/// | body larger than the limit | 413 | `{"error":"body exceeds the size limit"}` |
/// | body not received within the read timeout | 408 | `{"error":"body not received in time"}` |
/// | body stream failed | 400 | `{"error":"could not read the body"}` |
/// | signature malformed or wrong | 401 | `{"error":"invalid signature"}` |
/// | event in flight elsewhere | 409 + `Retry-After` | `{"error":"event is being processed"}` |
/// | dedup store failed or timed out | 503 + `Retry-After` | `{"error":"dedup store unavailable"}` |
///
/// Duplicates are not rejections: they get `200 {"status":"duplicate-ignored"}`
/// so that Klikit stops retrying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    kind: RejectionKind,
}

/// The reason inside a [`Rejection`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectionKind {
    /// A required header is absent or empty.
    MissingHeader(&'static str),
    /// A header is repeated or not visible ASCII.
    InvalidHeader(&'static str),
    /// `x-klikit-event-id` is too long or holds invalid characters.
    InvalidEventId(InvalidEventId),
    /// The body is larger than the configured limit.
    PayloadTooLarge {
        /// The configured limit in bytes.
        limit: usize,
    },
    /// The body did not arrive within the read timeout.
    BodyTimeout,
    /// The body stream failed (the client went away, a malformed chunk, ...).
    BodyRead,
    /// The signature is malformed or does not match.
    InvalidSignature(SignatureError),
    /// Another delivery of the same event holds an unexpired claim.
    InFlight {
        /// When to retry.
        retry_after: Duration,
    },
    /// The dedup store failed or did not answer in time.
    StoreUnavailable,
}

/// How a delivery ended, as recorded in metrics and in the extensions of
/// every answer the layer makes itself.
///
/// For answers from your handler the layer derives it from the status (2xx:
/// [`Processed`](Self::Processed), otherwise [`HandlerFailed`](Self::HandlerFailed)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeliveryOutcome {
    /// The handler answered 2xx; the event is recorded as processed.
    Processed,
    /// The handler answered non-2xx, returned an error or panicked; the claim
    /// was released for Klikit's retry.
    HandlerFailed,
    /// The event was already processed: `200 {"status":"duplicate-ignored"}`.
    Duplicate,
    /// Another delivery of the event holds the claim: 409.
    InFlight,
    /// The signature was malformed or wrong: 401.
    InvalidSignature,
    /// A Klikit header was missing or invalid, or the body stream failed: 400.
    BadRequest,
    /// The body was over the limit: 413.
    PayloadTooLarge,
    /// The body did not arrive in time: 408.
    BodyTimeout,
    /// The dedup store failed or timed out: 503.
    StoreUnavailable,
}

impl DeliveryOutcome {
    /// A short `snake_case` name, used as the `outcome` label of metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Processed => "processed",
            Self::HandlerFailed => "handler_failed",
            Self::Duplicate => "duplicate",
            Self::InFlight => "in_flight",
            Self::InvalidSignature => "invalid_signature",
            Self::BadRequest => "bad_request",
            Self::PayloadTooLarge => "payload_too_large",
            Self::BodyTimeout => "body_timeout",
            Self::StoreUnavailable => "store_unavailable",
        }
    }
}

impl DeliveryOutcome {
    /// A dense index, the order of the variants above (for metric key tables).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn index(self) -> usize {
        match self {
            Self::Processed => 0,
            Self::HandlerFailed => 1,
            Self::Duplicate => 2,
            Self::InFlight => 3,
            Self::InvalidSignature => 4,
            Self::BadRequest => 5,
            Self::PayloadTooLarge => 6,
            Self::BodyTimeout => 7,
            Self::StoreUnavailable => 8,
        }
    }
}

impl fmt::Display for DeliveryOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `Retry-After` sent with 503 answers.
pub(crate) const STORE_RETRY_AFTER: Duration = Duration::from_secs(5);

impl Rejection {
    pub(crate) fn new(kind: RejectionKind) -> Self {
        Self { kind }
    }

    /// The reason.
    pub fn kind(&self) -> &RejectionKind {
        &self.kind
    }

    /// The HTTP status the layer answers with.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            RejectionKind::MissingHeader(_)
            | RejectionKind::InvalidHeader(_)
            | RejectionKind::InvalidEventId(_)
            | RejectionKind::BodyRead => StatusCode::BAD_REQUEST,
            RejectionKind::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RejectionKind::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            RejectionKind::InvalidSignature(_) => StatusCode::UNAUTHORIZED,
            RejectionKind::InFlight { .. } => StatusCode::CONFLICT,
            RejectionKind::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The JSON body the layer answers with.
    pub fn body(&self) -> &'static str {
        use crate::event::{EVENT_ID_HEADER as ID, EVENT_TYPE_HEADER as TYPE, SIGNATURE_HEADER as SIG};
        match &self.kind {
            RejectionKind::MissingHeader(SIG) => r#"{"error":"missing header x-klikit-signature"}"#,
            RejectionKind::MissingHeader(ID) => r#"{"error":"missing header x-klikit-event-id"}"#,
            RejectionKind::MissingHeader(TYPE) => r#"{"error":"missing header x-klikit-event-type"}"#,
            RejectionKind::MissingHeader(_) => r#"{"error":"missing klikit headers"}"#,
            RejectionKind::InvalidHeader(SIG) => r#"{"error":"invalid header x-klikit-signature"}"#,
            RejectionKind::InvalidHeader(TYPE) => r#"{"error":"invalid header x-klikit-event-type"}"#,
            RejectionKind::InvalidEventId(InvalidEventId::ReservedPrefix) => {
                r#"{"error":"invalid header x-klikit-event-id: the prefix sig: is reserved"}"#
            }
            RejectionKind::InvalidHeader(_) | RejectionKind::InvalidEventId(_) => {
                r#"{"error":"invalid header x-klikit-event-id: 1 to 256 visible ASCII characters expected"}"#
            }
            RejectionKind::PayloadTooLarge { .. } => r#"{"error":"body exceeds the size limit"}"#,
            RejectionKind::BodyTimeout => r#"{"error":"body not received in time"}"#,
            RejectionKind::BodyRead => r#"{"error":"could not read the body"}"#,
            RejectionKind::InvalidSignature(_) => r#"{"error":"invalid signature"}"#,
            RejectionKind::InFlight { .. } => r#"{"error":"event is being processed"}"#,
            RejectionKind::StoreUnavailable => r#"{"error":"dedup store unavailable"}"#,
        }
    }

    /// The outcome this rejection stands for.
    pub fn outcome(&self) -> DeliveryOutcome {
        match self.kind {
            RejectionKind::MissingHeader(_)
            | RejectionKind::InvalidHeader(_)
            | RejectionKind::InvalidEventId(_)
            | RejectionKind::BodyRead => DeliveryOutcome::BadRequest,
            RejectionKind::PayloadTooLarge { .. } => DeliveryOutcome::PayloadTooLarge,
            RejectionKind::BodyTimeout => DeliveryOutcome::BodyTimeout,
            RejectionKind::InvalidSignature(_) => DeliveryOutcome::InvalidSignature,
            RejectionKind::InFlight { .. } => DeliveryOutcome::InFlight,
            RejectionKind::StoreUnavailable => DeliveryOutcome::StoreUnavailable,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self.kind {
            RejectionKind::InFlight { retry_after } => Some(retry_after),
            RejectionKind::StoreUnavailable => Some(STORE_RETRY_AFTER),
            _ => None,
        }
    }

    /// Builds the response: status, JSON body, `Retry-After` where it
    /// applies, and the rejection and its [`DeliveryOutcome`] in the extensions.
    pub fn into_response<B: ResponseBody>(self) -> Response<B> {
        let mut response = json_response(self.status(), self.body());
        if let Some(after) = self.retry_after() {
            // Whole seconds, rounded up, at least one.
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response.extensions_mut().insert(self.outcome());
        response.extensions_mut().insert(self);
        response
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            RejectionKind::MissingHeader(name) => write!(f, "missing header {name}"),
            RejectionKind::InvalidHeader(name) => write!(f, "invalid header {name}"),
            RejectionKind::InvalidEventId(e) => write!(f, "invalid event id: {e}"),
            RejectionKind::PayloadTooLarge { limit } => write!(f, "body exceeds the limit of {limit} bytes"),
            RejectionKind::BodyTimeout => f.write_str("body not received within the read timeout"),
            RejectionKind::BodyRead => f.write_str("could not read the body"),
            RejectionKind::InvalidSignature(e) => write!(f, "invalid signature: {e}"),
            RejectionKind::InFlight { .. } => f.write_str("event is being processed by another delivery"),
            RejectionKind::StoreUnavailable => f.write_str("dedup store unavailable"),
        }
    }
}

impl std::error::Error for Rejection {}

/// The answer to a delivery whose event was already processed.
pub(crate) const DUPLICATE_BODY: &str = r#"{"status":"duplicate-ignored"}"#;

pub(crate) fn json_response<B: ResponseBody>(status: StatusCode, body: &'static str) -> Response<B> {
    let mut response = Response::new(B::from_static_json(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A response body type the layer can write its own JSON answers into.
///
/// Implemented for the body types of axum, hyper (`Full<Bytes>`, boxed
/// bodies), `String` and, with the `tonic` feature, tonic. Implement it for
/// your own body type to use the layer in a stack that answers with it.
pub trait ResponseBody: Sized {
    /// A body that holds `json`.
    fn from_static_json(json: &'static str) -> Self;
}

impl ResponseBody for http_body_util::Full<Bytes> {
    fn from_static_json(json: &'static str) -> Self {
        Self::new(Bytes::from_static(json.as_bytes()))
    }
}

impl ResponseBody for String {
    fn from_static_json(json: &'static str) -> Self {
        json.to_owned()
    }
}

impl<E: 'static> ResponseBody for http_body_util::combinators::UnsyncBoxBody<Bytes, E> {
    fn from_static_json(json: &'static str) -> Self {
        use http_body_util::BodyExt;
        http_body_util::Full::<Bytes>::from_static_json(json)
            .map_err(|never| match never {})
            .boxed_unsync()
    }
}

impl<E: 'static> ResponseBody for http_body_util::combinators::BoxBody<Bytes, E> {
    fn from_static_json(json: &'static str) -> Self {
        use http_body_util::BodyExt;
        http_body_util::Full::<Bytes>::from_static_json(json)
            .map_err(|never| match never {})
            .boxed()
    }
}

#[cfg(feature = "axum")]
impl ResponseBody for axum::body::Body {
    fn from_static_json(json: &'static str) -> Self {
        Self::from(json)
    }
}

#[cfg(feature = "tonic")]
impl ResponseBody for tonic::body::Body {
    fn from_static_json(json: &'static str) -> Self {
        Self::new(http_body_util::Full::<Bytes>::from_static_json(json))
    }
}
