//! [`KlikitV1`]: Klikit's Partner API v1 contract (timestamped signatures,
//! the event id signed inside the body, subscriptions).

use std::{fmt, time::Duration, time::SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{
    Delivery, MAX_SIGNATURES, Outgoing, Scheme, Signatures, check_within, insert_headers, single_event_id_header,
    single_event_type_header, single_header,
};
use crate::{
    EventId, RejectionKind, WebhookSecret,
    signature::{SignatureError, mac_parts, parse_signature},
};

const SIGNATURE_HEADER: &str = "x-klikit-signature";
const EVENT_ID_HEADER: &str = "x-klikit-event-id";
const EVENT_TYPE_HEADER: &str = "x-klikit-event";
const WEBHOOK_ID_HEADER: &str = "x-klikit-webhook-id";

static SIGNATURE: HeaderName = HeaderName::from_static(SIGNATURE_HEADER);
static EVENT_ID: HeaderName = HeaderName::from_static(EVENT_ID_HEADER);
static EVENT_TYPE: HeaderName = HeaderName::from_static(EVENT_TYPE_HEADER);
static WEBHOOK_ID: HeaderName = HeaderName::from_static(WEBHOOK_ID_HEADER);

/// Klikit's Partner API v1 webhook contract (frozen 2026-05-16).
///
/// - `X-Klikit-Signature: t=<unix seconds>,v1=<hex>`: HMAC-SHA256 with the
///   secret's bytes over `<t>.<raw body>`, where `<t>` is the timestamp text
///   exactly as sent. Several `v1=` entries may appear (during a rotation
///   Klikit signs with the old and the new secret); the delivery verifies if
///   any of them matches any configured secret, compared in constant time
///   over all of them. `v0=` and unknown keys are ignored. No `t`, no `v1`,
///   a `t` that is not an integer, a pair without `=`, or a `v1` that is not
///   64 hex digits make the header malformed: 401 once the body is read.
///   Spaces around the pairs are allowed.
/// - The timestamp must be within the tolerance of the receiver's clock
///   (default [`DEFAULT_TOLERANCE`](super::DEFAULT_TOLERANCE), 300 s, in both directions), otherwise
///   401 `{"error":"timestamp outside the tolerance"}` (checked after the
///   signature, so only a genuine delivery learns that).
/// - `X-Klikit-Event-Id`: the event id. **The signed body's top-level
///   `event_id` is the truth**: once the signature is verified the layer
///   reads it (a minimal parse that skips everything else) and deduplicates
///   on it; a header that names another id is refused with 400, so a
///   captured delivery cannot be replayed under a fresh id. A body without a
///   top-level `event_id` (absent or `null`, or a body that is not a JSON
///   object) is deduplicated on the header instead; an `event_id` that is
///   not a string, or appears twice, is refused like a mismatch.
/// - `X-Klikit-Event`: the versioned event type (`order.placed.v1`, …; any
///   other name is passed on as [`EventType::Other`](crate::EventType::Other)).
/// - `X-Klikit-Webhook-Id` (optional): the subscription, which selects the
///   secrets when they are [resolved per subscription](crate::secrets).
///
/// A missing or repeated signature, event id or event type header is 400,
/// as under today's contract.
///
/// ```
/// use http::HeaderMap;
/// use klikit_webhook::{WebhookSecret, scheme::{KlikitV1, Outgoing, Scheme}};
///
/// let secret = WebhookSecret::new("a-long-random-webhook-secret").unwrap();
/// let outgoing = Outgoing::new("3f0e2a4c-9b1d-4c6e-8f7a-5d2c1b0a9e8f", "order.placed.v1", b"{}")
///     .with_timestamp(1_747_303_200)
///     .with_subscription("wh_7");
/// let mut headers = HeaderMap::new();
/// KlikitV1::new().sign(&secret, &outgoing, &mut headers);
/// assert!(headers["x-klikit-signature"].to_str().unwrap().starts_with("t=1747303200,v1="));
///
/// let delivery = KlikitV1::new().parse(&headers).unwrap();
/// assert_eq!(delivery.timestamp(), Some(1_747_303_200));
/// assert_eq!(delivery.subscription(), Some("wh_7"));
/// assert_eq!(delivery.signed_prefix(), b"1747303200.");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KlikitV1 {
    /// `None`: the timestamp is not checked.
    tolerance: Option<Duration>,
}

impl KlikitV1 {
    /// Header that carries `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`
    /// (the same name as today's contract; the value tells them apart).
    pub const SIGNATURE_HEADER: &'static str = SIGNATURE_HEADER;
    /// Header that carries the event id (a UUID, stable across retries).
    pub const EVENT_ID_HEADER: &'static str = EVENT_ID_HEADER;
    /// Header that carries the versioned event type, such as `order.placed.v1`.
    pub const EVENT_TYPE_HEADER: &'static str = EVENT_TYPE_HEADER;
    /// Header that names the webhook subscription.
    pub const WEBHOOK_ID_HEADER: &'static str = WEBHOOK_ID_HEADER;
}

super::timestamp::timestamped_scheme_builder!(KlikitV1);

impl Scheme for KlikitV1 {
    fn name(&self) -> &'static str {
        "klikit-v1"
    }

    /// A signature header made of `key=value` pairs (today's contract sends
    /// bare hex, which never holds `=`).
    fn recognizes(&self, headers: &HeaderMap) -> bool {
        headers
            .get(&SIGNATURE)
            .is_some_and(|value| value.as_bytes().contains(&b'='))
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
        let subscription = match headers.get(&WEBHOOK_ID) {
            None => None,
            Some(_) => Some(
                single_header(headers, &WEBHOOK_ID, WEBHOOK_ID_HEADER)?
                    .to_str()
                    .ok()
                    .filter(|value| value.bytes().all(|b| b.is_ascii_graphic()))
                    .ok_or(RejectionKind::InvalidHeader(WEBHOOK_ID_HEADER))?,
            ),
        };
        let delivery = match parse_signature_header(signature.as_bytes()) {
            Ok(parsed) => Delivery::new(id, event_type, Ok(parsed.signatures))
                .with_signed_prefix(parsed.prefix)
                .with_timestamp(parsed.timestamp),
            Err(error) => Delivery::new(id, event_type, Err(error)),
        };
        Ok(match subscription {
            Some(subscription) => delivery.with_subscription(subscription),
            None => delivery,
        })
    }

    fn check_timestamp(&self, delivery: &Delivery, now: SystemTime) -> Result<(), RejectionKind> {
        check_within(self.tolerance, delivery, now)
    }

    fn verified_event_id(&self, delivery: &Delivery, body: &Bytes) -> Result<EventId, RejectionKind> {
        let mismatch = RejectionKind::EventIdMismatch {
            header: EVENT_ID_HEADER,
        };
        match body_event_id(body) {
            BodyEventId::Absent => Ok(delivery.id().clone()),
            BodyEventId::Unusable => Err(mismatch),
            BodyEventId::Id(id) if id == delivery.id().as_str() => Ok(delivery.id().clone()),
            BodyEventId::Id(_) => Err(mismatch),
        }
    }

    fn sign(&self, secret: &WebhookSecret, outgoing: &Outgoing<'_>, headers: &mut HeaderMap) {
        let timestamp = outgoing.timestamp.to_string();
        let mac = mac_parts(secret.expose(), &[timestamp.as_bytes(), b".", outgoing.body]);
        let signature = format!("t={timestamp},v1={}", const_hex::encode(mac));
        insert_headers(
            headers,
            [
                (&SIGNATURE, signature.as_str()),
                (&EVENT_ID, outgoing.id),
                (&EVENT_TYPE, outgoing.event_type),
            ],
        );
        if let Some(subscription) = outgoing.subscription {
            insert_headers(headers, [(&WEBHOOK_ID, subscription)]);
        }
    }
}

/// A readable `X-Klikit-Signature`.
struct ParsedSignature {
    /// `<t>.`, the bytes signed before the body.
    prefix: Vec<u8>,
    timestamp: i64,
    signatures: Signatures,
}

/// Reads `t=<digits>,v1=<hex>[,v1=<hex>…]`, in any order, ignoring other
/// keys.
fn parse_signature_header(value: &[u8]) -> Result<ParsedSignature, SignatureError> {
    let mut timestamp: Option<&[u8]> = None;
    let mut list = [[0u8; 32]; MAX_SIGNATURES];
    let mut count = 0;
    for pair in value.split(|&b| b == b',') {
        let pair = pair.trim_ascii();
        let equals = pair.iter().position(|&b| b == b'=').ok_or(SignatureError::Malformed)?;
        let (key, value) = (&pair[..equals], &pair[equals + 1..]);
        match key {
            // Two timestamps: which one was signed is ambiguous.
            b"t" if timestamp.replace(value).is_some() => return Err(SignatureError::Malformed),
            b"t" => {}
            b"v1" => {
                *list.get_mut(count).ok_or(SignatureError::Malformed)? = parse_signature(value)?;
                count += 1;
            }
            b"" => return Err(SignatureError::Malformed),
            _ => {} // v0 and keys of later versions
        }
    }
    let text = timestamp.ok_or(SignatureError::Malformed)?;
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return Err(SignatureError::Malformed);
    }
    let timestamp = std::str::from_utf8(text)
        .ok()
        .and_then(|text| text.parse::<i64>().ok())
        .ok_or(SignatureError::Malformed)?;
    let signatures = Signatures::collect(list.into_iter().take(count))?;
    let mut prefix = Vec::with_capacity(text.len() + 1);
    prefix.extend_from_slice(text);
    prefix.push(b'.');
    Ok(ParsedSignature {
        prefix,
        timestamp,
        signatures,
    })
}

/// The body's top-level `event_id`.
#[derive(Debug, PartialEq, Eq)]
enum BodyEventId {
    /// No top-level `event_id` (or `null`), or the body is not a JSON object.
    Absent,
    /// A string.
    Id(String),
    /// Not a string, or twice.
    Unusable,
}

/// Reads the top-level `event_id` of a JSON object, skipping every other
/// value unparsed (`IgnoredAny`).
fn body_event_id(body: &[u8]) -> BodyEventId {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    match deserializer.deserialize_map(TopLevel) {
        Ok(found) if deserializer.end().is_ok() => found,
        _ => BodyEventId::Absent,
    }
}

struct TopLevel;

impl<'de> Visitor<'de> for TopLevel {
    type Value = BodyEventId;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<BodyEventId, A::Error> {
        let mut found = BodyEventId::Absent;
        let mut seen = false;
        while let Some(is_event_id) = map.next_key_seed(KeyIsEventId)? {
            if !is_event_id {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let value = map.next_value_seed(IdValue)?;
            found = if seen { BodyEventId::Unusable } else { value };
            seen = true;
        }
        Ok(found)
    }
}

/// Deserializes a key into "is it `event_id`?", without allocating.
struct KeyIsEventId;

impl<'de> DeserializeSeed<'de> for KeyIsEventId {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyIsEventId {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(key == "event_id")
    }
}

/// Deserializes the `event_id` value: a string, `null`, or anything else.
struct IdValue;

impl<'de> DeserializeSeed<'de> for IdValue {
    type Value = BodyEventId;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<BodyEventId, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for IdValue {
    type Value = BodyEventId;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event id")
    }

    fn visit_str<E: de::Error>(self, id: &str) -> Result<BodyEventId, E> {
        Ok(BodyEventId::Id(id.to_owned()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<BodyEventId, E> {
        Ok(BodyEventId::Absent)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<BodyEventId, E> {
        Ok(BodyEventId::Unusable)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<BodyEventId, E> {
        Ok(BodyEventId::Unusable)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<BodyEventId, E> {
        Ok(BodyEventId::Unusable)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<BodyEventId, E> {
        Ok(BodyEventId::Unusable)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<BodyEventId, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(BodyEventId::Unusable)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<BodyEventId, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(BodyEventId::Unusable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_only_the_top_level_event_id() {
        let body = br#"{"data":{"event_id":"inner"},"event_id":"outer","x":[1,{"event_id":2}]}"#;
        assert_eq!(body_event_id(body), BodyEventId::Id("outer".into()));
        assert_eq!(body_event_id(br#"{"data":{"event_id":"inner"}}"#), BodyEventId::Absent);
        assert_eq!(body_event_id(br#"{"event_id":null}"#), BodyEventId::Absent);
        assert_eq!(
            body_event_id(br#"{"event_id":"a\u0062c"}"#),
            BodyEventId::Id("abc".into())
        );
    }

    #[test]
    fn a_body_that_is_no_json_object_has_no_event_id() {
        for body in [
            &b""[..],
            b"[]",
            b"\"event_id\"",
            b"{\"event_id\":\"a\"",
            b"{\"event_id\":\"a\"} x",
        ] {
            assert_eq!(
                body_event_id(body),
                BodyEventId::Absent,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn a_non_string_or_repeated_event_id_is_unusable() {
        for body in [
            &br#"{"event_id":1}"#[..],
            br#"{"event_id":true}"#,
            br#"{"event_id":["a"]}"#,
            br#"{"event_id":{"a":1}}"#,
            br#"{"event_id":"a","event_id":"a"}"#,
            br#"{"event_id":"a","event_id":null}"#,
        ] {
            assert_eq!(
                body_event_id(body),
                BodyEventId::Unusable,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn signature_header_pairs() {
        let hex = "ab".repeat(32);
        let parsed = parse_signature_header(format!("t=17,v1={hex}").as_bytes()).unwrap();
        assert_eq!((parsed.timestamp, parsed.prefix.as_slice()), (17, &b"17."[..]));
        let parsed = parse_signature_header(format!("v0=zz, v1={hex} ,t=0017,k=v,v1={hex}").as_bytes()).unwrap();
        assert_eq!((parsed.timestamp, parsed.prefix.as_slice()), (17, &b"0017."[..]));
        assert_eq!(parsed.signatures.len(), 2);
        for bad in [
            format!("v1={hex}"),
            "t=17".to_owned(),
            format!("t=17,v0={hex}"),
            format!("t=-17,v1={hex}"),
            format!("t=1.5,v1={hex}"),
            format!("t=,v1={hex}"),
            format!("t=99999999999999999999,v1={hex}"),
            format!("t=17,t=18,v1={hex}"),
            format!("t=17,v1={hex},"),
            format!("t=17,v1={hex},garbage"),
            format!("t=17,={hex}"),
            "t=17,v1=abc".to_owned(),
            format!("t=17,v1=sha256={hex}"),
            format!("t=17{}", format!(",v1={hex}").repeat(MAX_SIGNATURES + 1)),
        ] {
            assert!(parse_signature_header(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
