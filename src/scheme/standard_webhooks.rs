//! [`StandardWebhooks`]: the Standard Webhooks specification
//! (standardwebhooks.com), symmetric signatures.

use std::time::{Duration, SystemTime};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use http::{HeaderMap, HeaderName};

use super::{
    Delivery, MAX_SIGNATURES, Outgoing, Scheme, Signatures, check_within, insert_headers, single_event_id_header,
    single_header,
};
use crate::{
    EventType, RejectionKind, WebhookSecret,
    signature::{SignatureError, mac_parts},
};

const ID_HEADER: &str = "webhook-id";
const TIMESTAMP_HEADER: &str = "webhook-timestamp";
const SIGNATURE_HEADER: &str = "webhook-signature";

static ID: HeaderName = HeaderName::from_static(ID_HEADER);
static TIMESTAMP: HeaderName = HeaderName::from_static(TIMESTAMP_HEADER);
static SIGNATURE: HeaderName = HeaderName::from_static(SIGNATURE_HEADER);

/// The [Standard Webhooks](https://www.standardwebhooks.com) scheme, with
/// symmetric (HMAC-SHA256) signatures.
///
/// - `webhook-id`: the message id, stable across retries; deduplicated on.
/// - `webhook-timestamp`: the attempt's Unix time in seconds; a value that
///   is not an integer is 400. It must be within the tolerance of the
///   receiver's clock (default [`DEFAULT_TOLERANCE`](super::DEFAULT_TOLERANCE), 300 s, both
///   directions), otherwise 401 `{"error":"timestamp outside the tolerance"}`.
/// - `webhook-signature`: space-separated `<version>,<base64>` entries; the
///   `v1` ones are HMAC-SHA256 over `<id>.<timestamp>.<raw body>`, and the
///   delivery verifies if any matches any configured secret (compared in
///   constant time over all of them). Entries of other versions (`v1a`,
///   `v2`, …) and entries that cannot be a signature (no comma, not 32 bytes
///   of base64) are skipped, as in the reference libraries; a header with no
///   usable `v1` entry is refused with 401.
/// - Secrets are `whsec_<base64>` and the key is the decoded bytes: build
///   them with [`WebhookSecret::standard_webhooks`].
///
/// The headers carry no event type (it is in the payload, by the
/// specification's convention its `type` field), so every delivery's
/// [`EventType`] is `Other("standard-webhooks")` ([`Self::EVENT_TYPE`]).
///
/// ```
/// use http::HeaderMap;
/// use klikit_webhook::{WebhookSecret, scheme::{Outgoing, Scheme, StandardWebhooks}};
///
/// // The specification's reference libraries' signing vector.
/// let secret = WebhookSecret::standard_webhooks("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
/// let outgoing = Outgoing::new("msg_p5jXN8AQM9LWM0D4loKWxJek", "", br#"{"test": 2432232314}"#).with_timestamp(1614265330);
/// let mut headers = HeaderMap::new();
/// StandardWebhooks::new().sign(&secret, &outgoing, &mut headers);
/// assert_eq!(headers["webhook-signature"], "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
/// assert_eq!(headers["webhook-timestamp"], "1614265330");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandardWebhooks {
    /// `None`: the timestamp is not checked.
    tolerance: Option<Duration>,
}

impl StandardWebhooks {
    /// Header that carries the message id, deduplicated on.
    pub const ID_HEADER: &'static str = ID_HEADER;
    /// Header that carries the attempt's Unix timestamp in seconds.
    pub const TIMESTAMP_HEADER: &'static str = TIMESTAMP_HEADER;
    /// Header that carries the space-separated signatures, `v1,<base64>` each.
    pub const SIGNATURE_HEADER: &'static str = SIGNATURE_HEADER;

    /// The event type name every delivery of this scheme gets.
    pub const EVENT_TYPE: &'static str = "standard-webhooks";
}

super::timestamp::timestamped_scheme_builder!(StandardWebhooks);

impl Scheme for StandardWebhooks {
    fn name(&self) -> &'static str {
        "standard-webhooks"
    }

    fn recognizes(&self, headers: &HeaderMap) -> bool {
        headers.contains_key(&SIGNATURE)
    }

    fn signature_header(&self) -> &HeaderName {
        &SIGNATURE
    }

    fn event_id_header(&self) -> &'static str {
        ID_HEADER
    }

    fn parse(&self, headers: &HeaderMap) -> Result<Delivery, RejectionKind> {
        let signature = single_header(headers, &SIGNATURE, SIGNATURE_HEADER)?;
        let id = single_event_id_header(headers, &ID, ID_HEADER)?;
        let timestamp = single_header(headers, &TIMESTAMP, TIMESTAMP_HEADER)?;
        let timestamp = timestamp
            .to_str()
            .ok()
            .and_then(|text| text.parse::<i64>().ok())
            .ok_or(RejectionKind::InvalidHeader(TIMESTAMP_HEADER))?;
        // The reference libraries sign the timestamp as a formatted integer.
        let prefix = format!("{}.{timestamp}.", id.as_str());
        let signatures = parse_signatures(signature.as_bytes());
        Ok(Delivery::new(id, EventType::from_name(Self::EVENT_TYPE), signatures)
            .with_signed_prefix(prefix)
            .with_timestamp(timestamp))
    }

    fn check_timestamp(&self, delivery: &Delivery, now: SystemTime) -> Result<(), RejectionKind> {
        check_within(self.tolerance, delivery, now)
    }

    /// Writes `webhook-id`, `webhook-timestamp` and
    /// `webhook-signature: v1,<base64>`. The event type and subscription are
    /// not sent (the scheme has no header for them).
    fn sign(&self, secret: &WebhookSecret, outgoing: &Outgoing<'_>, headers: &mut HeaderMap) {
        let timestamp = outgoing.timestamp.to_string();
        let mac = mac_parts(
            secret.expose(),
            &[outgoing.id.as_bytes(), b".", timestamp.as_bytes(), b".", outgoing.body],
        );
        let signature = format!("v1,{}", BASE64.encode(mac));
        insert_headers(
            headers,
            [
                (&ID, outgoing.id),
                (&TIMESTAMP, timestamp.as_str()),
                (&SIGNATURE, signature.as_str()),
            ],
        );
    }
}

/// Reads the `v1` entries of `webhook-signature`.
fn parse_signatures(value: &[u8]) -> Result<Signatures, SignatureError> {
    let mut list = [[0u8; 32]; MAX_SIGNATURES];
    let mut count = 0;
    for entry in value.split(|&b| b == b' ') {
        let Some(comma) = entry.iter().position(|&b| b == b',') else {
            continue;
        };
        if &entry[..comma] != b"v1" {
            continue;
        }
        // Exactly 32 bytes of canonical, padded base64, or it cannot match
        // (the buffer leaves room for the decoder's length estimate).
        let mut decoded = [0u8; 36];
        let Ok(32) = BASE64.decode_slice(&entry[comma + 1..], &mut decoded) else {
            continue;
        };
        let mut signature = [0u8; 32];
        signature.copy_from_slice(&decoded[..32]);
        *list.get_mut(count).ok_or(SignatureError::Malformed)? = signature;
        count += 1;
    }
    Signatures::collect(list.into_iter().take(count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_v1_entries_of_32_bytes_count() {
        let good = BASE64.encode([7u8; 32]);
        let value = format!("v1a,{good} v2,{good} nocomma v1,{good}  v1,AAAA v1, v1,{good}=");
        assert_eq!(parse_signatures(value.as_bytes()).unwrap().len(), 1);
        assert!(parse_signatures(b"v1,").is_err());
        assert!(parse_signatures(format!("v1a,{good}").as_bytes()).is_err());
        let many = vec![format!("v1,{good}"); MAX_SIGNATURES + 1].join(" ");
        assert!(parse_signatures(many.as_bytes()).is_err());
    }
}
