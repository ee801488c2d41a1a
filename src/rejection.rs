//! The answers the layer gives without calling the handler.

use std::{borrow::Cow, fmt, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};

use crate::{DeliveryOutcome, InvalidEventId, scheme::TimestampError, signature::SignatureError};

/// Why the layer refused a delivery. It is also inserted into the response's
/// extensions, so outer layers (logging, metrics) can tell rejections apart.
///
/// | kind | status | body |
/// |---|---|---|
/// | method other than `POST` | 405 + `Allow: POST` | `{"error":"method not allowed"}` |
/// | missing or empty header | 400 | `{"error":"missing header <name>"}` |
/// | header repeated or not visible ASCII | 400 | `{"error":"invalid header <name>"}` |
/// | event id empty, too long, not visible ASCII or repeated | 400 | `{"error":"invalid header <name>: 1 to 256 visible ASCII characters expected"}` |
/// | body larger than the limit | 413 | `{"error":"body exceeds the size limit"}` |
/// | body not received within the read timeout | 408 | `{"error":"body not received in time"}` |
/// | body stream failed | 400 | `{"error":"could not read the body"}` |
/// | signature malformed or wrong; unknown subscription | 401 | `{"error":"invalid signature"}` |
/// | signed timestamp too old or too far in the future | 401 | `{"error":"timestamp outside the tolerance"}` |
/// | event id header differs from the signed body's `event_id` | 400 | `{"error":"<name> does not match the signed event_id"}` |
/// | event in flight elsewhere | 409 + `Retry-After` | `{"error":"event is being processed"}` |
/// | dedup store failed or timed out | 503 + `Retry-After` | `{"error":"dedup store unavailable"}` |
/// | secret resolver failed or timed out | 503 + `Retry-After` | `{"error":"secrets unavailable"}` |
///
/// Duplicates are not rejections: they get `200 {"status":"duplicate-ignored"}`
/// so that Klikit stops retrying.
///
/// With the `axum` feature it implements `IntoResponse`; for other stacks,
/// `Response::<B>::from(rejection)` builds the same answer in any body type
/// that implements [`FromJson`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    kind: RejectionKind,
}

/// The reason inside a [`Rejection`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectionKind {
    /// The request is not a `POST`: Klikit POSTs every delivery. Checked
    /// first, before the headers and the body.
    MethodNotAllowed {
        /// The request's method.
        method: Method,
    },
    /// A required header is absent or empty.
    MissingHeader(&'static str),
    /// A header is repeated or not visible ASCII.
    InvalidHeader(&'static str),
    /// The event id header is empty, too long, repeated or holds invalid
    /// characters.
    InvalidEventId {
        /// The header's name.
        header: &'static str,
        /// What is wrong with the id.
        error: InvalidEventId,
    },
    /// The body is larger than the configured limit.
    PayloadTooLarge {
        /// The configured limit in bytes.
        limit: usize,
    },
    /// The body did not arrive within the read timeout.
    BodyTimeout,
    /// The body stream failed (the client went away, a malformed chunk, ...).
    BodyRead,
    /// The signature is malformed or does not match. A delivery whose
    /// subscription has no secrets gets this too, so that an unknown
    /// subscription cannot be told apart from a forgery.
    InvalidSignature(SignatureError),
    /// The signature matched, but the signed timestamp is further from the
    /// receiver's clock than the scheme's tolerance (a replay, or a clock
    /// off by minutes).
    TimestampOutOfTolerance(TimestampError),
    /// The signature matched, but the event id header names another event
    /// than the `event_id` in the signed body.
    EventIdMismatch {
        /// The event id header's name.
        header: &'static str,
    },
    /// Another delivery of the same event holds an unexpired claim.
    InFlight {
        /// When to retry.
        retry_after: Duration,
    },
    /// The dedup store failed or did not answer in time.
    StoreUnavailable,
    /// The [`SecretResolver`](crate::secrets::SecretResolver) failed or did
    /// not answer in time.
    SecretsUnavailable,
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
            | RejectionKind::InvalidEventId { .. }
            | RejectionKind::EventIdMismatch { .. }
            | RejectionKind::BodyRead => StatusCode::BAD_REQUEST,
            RejectionKind::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            RejectionKind::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RejectionKind::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            RejectionKind::InvalidSignature(_) | RejectionKind::TimestampOutOfTolerance(_) => StatusCode::UNAUTHORIZED,
            RejectionKind::InFlight { .. } => StatusCode::CONFLICT,
            RejectionKind::StoreUnavailable | RejectionKind::SecretsUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The JSON body the layer answers with.
    pub fn body(&self) -> Cow<'static, str> {
        let text = match &self.kind {
            RejectionKind::MissingHeader(name) => return format!(r#"{{"error":"missing header {name}"}}"#).into(),
            RejectionKind::InvalidHeader(name) => return format!(r#"{{"error":"invalid header {name}"}}"#).into(),
            RejectionKind::InvalidEventId {
                header,
                error: InvalidEventId::ReservedPrefix,
            } => return format!(r#"{{"error":"invalid header {header}: the prefix sig: is reserved"}}"#).into(),
            RejectionKind::InvalidEventId { header, .. } => {
                return format!(r#"{{"error":"invalid header {header}: 1 to 256 visible ASCII characters expected"}}"#)
                    .into();
            }
            RejectionKind::MethodNotAllowed { .. } => r#"{"error":"method not allowed"}"#,
            RejectionKind::EventIdMismatch { header } => {
                return format!(r#"{{"error":"{header} does not match the signed event_id"}}"#).into();
            }
            RejectionKind::PayloadTooLarge { .. } => r#"{"error":"body exceeds the size limit"}"#,
            RejectionKind::BodyTimeout => r#"{"error":"body not received in time"}"#,
            RejectionKind::BodyRead => r#"{"error":"could not read the body"}"#,
            RejectionKind::InvalidSignature(_) => r#"{"error":"invalid signature"}"#,
            RejectionKind::TimestampOutOfTolerance(_) => r#"{"error":"timestamp outside the tolerance"}"#,
            RejectionKind::InFlight { .. } => r#"{"error":"event is being processed"}"#,
            RejectionKind::StoreUnavailable => r#"{"error":"dedup store unavailable"}"#,
            RejectionKind::SecretsUnavailable => r#"{"error":"secrets unavailable"}"#,
        };
        Cow::Borrowed(text)
    }

    /// The outcome this rejection stands for. A method other than `POST`
    /// counts as [`DeliveryOutcome::BadRequest`].
    pub fn outcome(&self) -> DeliveryOutcome {
        match self.kind {
            RejectionKind::MethodNotAllowed { .. }
            | RejectionKind::MissingHeader(_)
            | RejectionKind::InvalidHeader(_)
            | RejectionKind::InvalidEventId { .. }
            | RejectionKind::EventIdMismatch { .. }
            | RejectionKind::BodyRead => DeliveryOutcome::BadRequest,
            RejectionKind::PayloadTooLarge { .. } => DeliveryOutcome::PayloadTooLarge,
            RejectionKind::BodyTimeout => DeliveryOutcome::BodyTimeout,
            RejectionKind::InvalidSignature(_) => DeliveryOutcome::InvalidSignature,
            RejectionKind::TimestampOutOfTolerance(_) => DeliveryOutcome::TimestampOutOfTolerance,
            RejectionKind::InFlight { .. } => DeliveryOutcome::InFlight,
            RejectionKind::StoreUnavailable => DeliveryOutcome::StoreUnavailable,
            RejectionKind::SecretsUnavailable => DeliveryOutcome::SecretsUnavailable,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self.kind {
            RejectionKind::InFlight { retry_after } => Some(retry_after),
            RejectionKind::StoreUnavailable | RejectionKind::SecretsUnavailable => Some(STORE_RETRY_AFTER),
            _ => None,
        }
    }

    /// Builds the response in any body type: status, JSON body,
    /// `Allow` or `Retry-After` where they apply, and the rejection itself in
    /// the extensions.
    fn into_http_response<B: FromJson>(self) -> Response<B> {
        let body = match self.body() {
            Cow::Borrowed(text) => Bytes::from_static(text.as_bytes()),
            Cow::Owned(text) => Bytes::from(text),
        };
        let mut response = json_response(self.status(), body);
        if let RejectionKind::MethodNotAllowed { .. } = self.kind {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
        }
        if let Some(after) = self.retry_after() {
            // Whole seconds, rounded up, at least one.
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response.extensions_mut().insert(self);
        response
    }
}

impl<B: FromJson> From<Rejection> for Response<B> {
    fn from(rejection: Rejection) -> Self {
        rejection.into_http_response()
    }
}

#[cfg(feature = "axum")]
impl axum::response::IntoResponse for Rejection {
    fn into_response(self) -> axum::response::Response {
        self.into_http_response()
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            RejectionKind::MethodNotAllowed { method } => {
                write!(f, "method {method} not allowed; deliveries are POSTs")
            }
            RejectionKind::MissingHeader(name) => write!(f, "missing header {name}"),
            RejectionKind::InvalidHeader(name) => write!(f, "invalid header {name}"),
            RejectionKind::InvalidEventId { header, error } => write!(f, "invalid {header}: {error}"),
            RejectionKind::PayloadTooLarge { limit } => write!(f, "body exceeds the limit of {limit} bytes"),
            RejectionKind::BodyTimeout => f.write_str("body not received within the read timeout"),
            RejectionKind::BodyRead => f.write_str("could not read the body"),
            RejectionKind::InvalidSignature(e) => write!(f, "invalid signature: {e}"),
            RejectionKind::TimestampOutOfTolerance(e) => write!(f, "timestamp outside the tolerance: {e}"),
            RejectionKind::EventIdMismatch { header } => write!(
                f,
                "{header} does not match the event_id in the signed body (a replay under another id, or a proxy rewriting headers)"
            ),
            RejectionKind::InFlight { .. } => f.write_str("event is being processed by another delivery"),
            RejectionKind::StoreUnavailable => f.write_str("dedup store unavailable"),
            RejectionKind::SecretsUnavailable => f.write_str("secret resolver unavailable"),
        }
    }
}

impl std::error::Error for Rejection {}

/// The answer to a delivery whose event was already processed.
pub(crate) const DUPLICATE_BODY: &str = r#"{"status":"duplicate-ignored"}"#;

pub(crate) fn json_response<B: FromJson>(status: StatusCode, body: Bytes) -> Response<B> {
    let mut response = Response::new(B::from_json(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A response body type that can be built from JSON bytes: what the layer
/// needs to answer a delivery itself (a rejection, a duplicate) in the same
/// body type as the inner service.
///
/// Implemented for the body types of axum, hyper (`Full<Bytes>`, boxed
/// bodies), `String` and, with the `tonic` feature, tonic. Implement it for
/// your own body type to use the layer in a stack that answers with it.
pub trait FromJson: Sized {
    /// A body that holds `json`.
    fn from_json(json: Bytes) -> Self;
}

impl FromJson for http_body_util::Full<Bytes> {
    fn from_json(json: Bytes) -> Self {
        Self::new(json)
    }
}

impl FromJson for String {
    fn from_json(json: Bytes) -> Self {
        String::from_utf8_lossy(&json).into_owned()
    }
}

impl<E: 'static> FromJson for http_body_util::combinators::UnsyncBoxBody<Bytes, E> {
    fn from_json(json: Bytes) -> Self {
        use http_body_util::BodyExt;
        http_body_util::Full::new(json)
            .map_err(|never| match never {})
            .boxed_unsync()
    }
}

impl<E: 'static> FromJson for http_body_util::combinators::BoxBody<Bytes, E> {
    fn from_json(json: Bytes) -> Self {
        use http_body_util::BodyExt;
        http_body_util::Full::new(json).map_err(|never| match never {}).boxed()
    }
}

#[cfg(feature = "axum")]
impl FromJson for axum::body::Body {
    fn from_json(json: Bytes) -> Self {
        Self::from(json)
    }
}

#[cfg(feature = "tonic")]
impl FromJson for tonic::body::Body {
    fn from_json(json: Bytes) -> Self {
        Self::new(http_body_util::Full::new(json))
    }
}
