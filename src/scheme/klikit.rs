//! [`Klikit`]: today's Klikit contract (developer.klikit.io).

use http::{HeaderMap, HeaderName};

use super::{
    Delivery, Outgoing, Scheme, Signatures, insert_headers, single_event_id_header, single_event_type_header,
    single_header,
};
use crate::{
    RejectionKind, WebhookSecret,
    signature::{SIGNATURE_HEX_LEN, parse_signature, sign},
};

/// Header that carries `hex(HMAC-SHA256(secret, raw body))`.
pub const SIGNATURE_HEADER: &str = "x-klikit-signature";
/// Header that carries the event id Klikit reuses on retries.
pub const EVENT_ID_HEADER: &str = "x-klikit-event-id";
/// Header that names the event type.
pub const EVENT_TYPE_HEADER: &str = "x-klikit-event-type";

static SIGNATURE: HeaderName = HeaderName::from_static(SIGNATURE_HEADER);
static EVENT_ID: HeaderName = HeaderName::from_static(EVENT_ID_HEADER);
static EVENT_TYPE: HeaderName = HeaderName::from_static(EVENT_TYPE_HEADER);

/// Today's Klikit webhook contract, the layer's default scheme.
///
/// - `x-klikit-signature`: `hex(HMAC-SHA256(secret, raw body))`, exactly 64
///   hex digits (either case), no prefix; the key is the secret string's
///   own bytes;
/// - `x-klikit-event-id`: the id retries reuse, deduplicated on;
/// - `x-klikit-event-type`: `klikit.order.created.v2`, … (any name is
///   passed on).
///
/// There is no timestamp: a captured delivery verifies for ever, and
/// deduplication on the id is the only replay guard (see the crate's
/// security model).
///
/// ```
/// use http::HeaderMap;
/// use klikit_webhook::{WebhookSecret, scheme::{Klikit, Outgoing, Scheme}};
///
/// let secret = WebhookSecret::new("a-long-random-webhook-secret").unwrap();
/// let mut headers = HeaderMap::new();
/// Klikit::new().sign(&secret, &Outgoing::new("evt-1", "klikit.order.created.v2", b"{}"), &mut headers);
/// let delivery = Klikit::new().parse(&headers).unwrap();
/// assert_eq!(delivery.id().as_str(), "evt-1");
/// assert_eq!(delivery.signatures().unwrap().len(), 1);
/// ```
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct Klikit;

impl Klikit {
    /// The scheme.
    pub const fn new() -> Self {
        Self
    }
}

impl Scheme for Klikit {
    fn name(&self) -> &'static str {
        "klikit"
    }

    /// A signature header of 64 hex digits. Partner API v1 uses the same
    /// header name with `t=…,v1=…`, so the format tells the two apart when
    /// both schemes are on one route.
    fn recognizes(&self, headers: &HeaderMap) -> bool {
        headers
            .get(&SIGNATURE)
            .is_some_and(|value| value.len() == SIGNATURE_HEX_LEN && value.as_bytes().iter().all(u8::is_ascii_hexdigit))
    }

    fn signature_header(&self) -> &HeaderName {
        &SIGNATURE
    }

    fn event_id_header(&self) -> &'static str {
        EVENT_ID_HEADER
    }

    fn parse(&self, headers: &HeaderMap) -> Result<Delivery, RejectionKind> {
        let signature = single_header(headers, &SIGNATURE, SIGNATURE_HEADER)?;
        let id = single_event_id_header(headers, &EVENT_ID, EVENT_ID_HEADER)?;
        let event_type = single_event_type_header(headers, &EVENT_TYPE, EVENT_TYPE_HEADER)?;
        let signatures = parse_signature(signature.as_bytes()).map(Signatures::one);
        Ok(Delivery::new(id, event_type, signatures))
    }

    fn sign(&self, secret: &WebhookSecret, outgoing: &Outgoing<'_>, headers: &mut HeaderMap) {
        let signature = sign(secret.expose(), outgoing.body);
        insert_headers(
            headers,
            [
                (&SIGNATURE, signature.as_str()),
                (&EVENT_ID, outgoing.id),
                (&EVENT_TYPE, outgoing.event_type),
            ],
        );
    }
}
