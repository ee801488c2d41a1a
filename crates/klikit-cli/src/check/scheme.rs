//! What a check sends, per signature scheme: the bodies, how a delivery is
//! signed, and which deliveries must be refused.
//!
//! The checks never build headers or bodies themselves: they ask a
//! [`CheckScheme`] for events and deliveries, so a scheme is one
//! implementation of that trait. Today's contract is [`Klikit`]; the Partner
//! API v1 contract is [`KlikitV1Check`](super::scheme_v1::KlikitV1Check), with
//! its own fixtures and raw-body variants (which take the event id, since v1
//! bodies repeat it), its own signing, its own form of event ids (UUIDs), and
//! two more refusals (a stale and a future timestamp).

use std::{
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hasher},
    sync::atomic::{AtomicUsize, Ordering},
};

use bytes::Bytes;
use klikit_webhook::{
    EVENT_ID_HEADER, EVENT_TYPE_HEADER, EventType, SIGNATURE_HEADER, fixtures, signature::sign, store::LeaseToken,
};

/// One event: what a delivery carries before it is signed.
#[derive(Clone)]
pub(crate) struct Event {
    pub(crate) id: String,
    pub(crate) event_type: String,
    pub(crate) body: Bytes,
}

/// One HTTP delivery: the scheme's headers (content type aside) and the body.
#[derive(Clone)]
pub(crate) struct Delivery {
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) body: Bytes,
}

impl Delivery {
    /// The same delivery without `header`.
    pub(super) fn without(mut self, header: &str) -> Self {
        self.headers.retain(|(name, _)| *name != header);
        self
    }

    /// The same delivery with `header` set to `value`.
    pub(super) fn with(mut self, header: &'static str, value: String) -> Self {
        self.headers.retain(|(name, _)| *name != header);
        self.headers.push((header, value));
        self
    }
}

/// Fresh event ids for one run, never repeated across runs and recognisable
/// in the endpoint's logs: `klikit-check-<32 hex digits>-<n>`
/// ([`Ids::new`]), or UUIDs whose last group counts the deliveries of the run
/// ([`Ids::uuids`]).
pub(crate) struct Ids {
    form: IdForm,
    next: AtomicUsize,
}

enum IdForm {
    Prefixed(String),
    /// A random version 4 UUID with its last 48 bits clear.
    Uuid(u128),
}

/// The last group of a UUID: 48 bits.
const UUID_COUNTER: u128 = (1 << 48) - 1;

impl Ids {
    pub(crate) fn new() -> Self {
        Self::with_form(IdForm::Prefixed(format!("klikit-check-{}", LeaseToken::generate())))
    }

    /// UUIDs (version 4 form, RFC 9562 variant), as Partner API v1 sends:
    /// random per run, the delivery's number in the last group, such as
    /// `4e1c0b6a-93d2-4f57-a0c8-000000000001`.
    pub(crate) fn uuids() -> Self {
        // The token's high half is random per process; the hasher's keys are
        // random per RandomState.
        let token = LeaseToken::generate().as_u128();
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u128(token);
        let random = (token & !u128::from(u64::MAX)) | u128::from(hasher.finish());
        let versioned = (random & !(0xf << 76)) | (0x4 << 76);
        let variant = (versioned & !(0x3 << 62)) | (0x2 << 62);
        Self::with_form(IdForm::Uuid(variant & !UUID_COUNTER))
    }

    fn with_form(form: IdForm) -> Self {
        Self {
            form,
            next: AtomicUsize::new(1),
        }
    }

    pub(crate) fn fresh(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        match &self.form {
            IdForm::Prefixed(prefix) => format!("{prefix}-{n}"),
            IdForm::Uuid(base) => {
                let hex = format!("{:032x}", base | (n as u128 & UUID_COUNTER));
                format!(
                    "{}-{}-{}-{}-{}",
                    &hex[..8],
                    &hex[8..12],
                    &hex[12..16],
                    &hex[16..20],
                    &hex[20..]
                )
            }
        }
    }
}

/// A signature scheme as the checks see it. See the [module docs](self).
pub(crate) trait CheckScheme: Send + Sync {
    /// The `--scheme` name.
    fn name(&self) -> &'static str;
    /// A source of fresh event ids in the form the scheme's sender uses.
    fn ids(&self) -> Ids {
        Ids::new()
    }
    /// Every fixture of the scheme, one per event type, each with a fresh id.
    fn fixtures(&self, ids: &Ids) -> Vec<(String, Event)>;
    /// Valid bodies that are not in compact canonical form, each with a fresh id.
    fn raw_bodies(&self, ids: &Ids) -> Vec<(String, Event)>;
    /// An ordinary event, for the checks that need one new delivery.
    fn sample(&self, id: String) -> Event;
    /// An event of a type no endpoint knows.
    fn unknown_type(&self, id: String) -> Event;
    /// A valid event whose body is at least `size` bytes.
    fn oversized(&self, id: String, size: usize) -> Event;
    /// `event`, signed with `secret` as the scheme's sender does.
    fn sign(&self, secret: &[u8], event: &Event) -> Delivery;
    /// Deliveries that must be refused, each with a fresh id.
    fn refusals(&self, secret: &[u8], ids: &Ids) -> Vec<(String, Delivery)>;
    /// The headers a delivery must carry: one refusal leaves out each.
    fn required_headers(&self) -> &'static [&'static str];
    /// What to tell an endpoint that accepted the refusals labelled
    /// `accepted`, beyond the check's usual fix.
    fn refusal_note(&self, accepted: &[&str]) -> Option<String> {
        let _ = accepted;
        None
    }
}

/// Today's contract (developer.klikit.io): `x-klikit-signature` is the
/// lowercase hex HMAC-SHA256 of the raw body, with `x-klikit-event-id` and
/// `x-klikit-event-type` beside it.
pub(crate) struct Klikit;

/// An event type Klikit has not announced, in the shape of the real ones.
pub(crate) const UNKNOWN_EVENT_TYPE: &str = "klikit.order.check-unknown-type.v1";

/// The bodies of the raw-body check: valid JSON envelopes, each not in the
/// compact form a re-serialiser produces, in one respect each.
pub(crate) const RAW_BODIES: [(&str, &str); 7] = [
    (
        "whitespace",
        "{\r\n  \"brand_id\" : 663,\n\t\"branch_id\":1062 ,\n  \"orders\" : [\n    {\"id\": 7585307, \
         \"external_id\": \"ABC-123\", \"status\": 2,\n     \"placed_at\": \"2026-06-25T09:14:11Z\", \
         \"currency\": \"AED\", \"total\": \"84.50\",\n     \"cart\": [ {\"item_id\": 289379, \
         \"title\": \"Nasi Goreng\", \"quantity\": 2, \"price\": 0} ]}\n  ]\n}",
    ),
    (
        "key-order",
        r#"{"orders":[{"cart":[{"price":0,"title":"Nasi Goreng","quantity":2,"item_id":289379}],"total":"84.50","currency":"AED","status":2,"id":7585307,"placed_at":"2026-06-25T09:14:11Z","external_id":"ABC-123"}],"branch_id":1062,"brand_id":663}"#,
    ),
    (
        "unicode-escapes",
        r#"{"brand_id":663,"branch_id":1062,"orders":[{"id":7585307,"external_id":"ABC-123","status":2,"currency":"AED","total":"84.50","customer":{"name":"Zo\u00eb","note":"\u00e0 emporter \/ \"sans \u00e9pices\" \ud83c\udf36"},"cart":[{"item_id":289379,"title":"Nasi Goreng \u2014 spesial","quantity":2,"price":0}]}]}"#,
    ),
    (
        "non-ascii",
        r#"{"brand_id":663,"branch_id":1062,"orders":[{"id":7585307,"external_id":"ABC-123","status":2,"currency":"AED","total":"84.50","customer":{"name":"Zoë Ağaoğlu","note":"à emporter, sans épices 🌶"},"cart":[{"item_id":289379,"title":"Nasi Goreng — 辣 spesial","quantity":2,"price":0}]}]}"#,
    ),
    (
        "decimal-84.50",
        r#"{"brand_id":663,"branch_id":1062,"orders":[{"id":7585307,"external_id":"ABC-123","status":2,"currency":"AED","total":84.50,"cart":[{"item_id":289379,"title":"Nasi Goreng","quantity":2,"price":0}]}]}"#,
    ),
    (
        "exponent-1e2",
        r#"{"brand_id":663,"branch_id":1062,"orders":[{"id":7585307,"external_id":"ABC-123","status":2,"currency":"AED","total":"84.50","additional_fee":1e2,"cart":[{"item_id":289379,"title":"Nasi Goreng","quantity":2,"price":0}]}]}"#,
    ),
    (
        "trailing-newline",
        "{\"brand_id\":663,\"branch_id\":1062,\"orders\":[{\"id\":7585307,\"external_id\":\"ABC-123\",\
         \"status\":2,\"currency\":\"AED\",\"total\":\"84.50\",\"cart\":[{\"item_id\":289379,\
         \"title\":\"Nasi Goreng\",\"quantity\":2,\"price\":0}]}]}\n",
    ),
];

/// A shipped fixture without the final newline of its file: the fixtures
/// check is about event types, and a trailing newline is a raw-body variant.
fn fixture(body: &'static str) -> Bytes {
    Bytes::from_static(body.trim_end().as_bytes())
}

const KNOWN_TYPES: [EventType; 3] = [
    EventType::OrderCreated,
    EventType::OrderStatusUpdated,
    EventType::OrderCartUpdated,
];

impl CheckScheme for Klikit {
    fn name(&self) -> &'static str {
        "klikit"
    }

    fn fixtures(&self, ids: &Ids) -> Vec<(String, Event)> {
        KNOWN_TYPES
            .iter()
            .filter_map(|event_type| {
                let body = fixtures::for_event_type(event_type)?;
                let event = Event {
                    id: ids.fresh(),
                    event_type: event_type.to_string(),
                    body: fixture(body),
                };
                Some((event_type.to_string(), event))
            })
            .collect()
    }

    fn raw_bodies(&self, ids: &Ids) -> Vec<(String, Event)> {
        RAW_BODIES
            .iter()
            .map(|(label, body)| {
                let event = Event {
                    id: ids.fresh(),
                    event_type: EventType::ORDER_CREATED.to_owned(),
                    body: Bytes::from_static(body.as_bytes()),
                };
                ((*label).to_owned(), event)
            })
            .collect()
    }

    fn sample(&self, id: String) -> Event {
        Event {
            id,
            event_type: EventType::ORDER_STATUS_UPDATED.to_owned(),
            body: fixture(fixtures::ORDER_STATUS_UPDATED),
        }
    }

    fn unknown_type(&self, id: String) -> Event {
        Event {
            id,
            event_type: UNKNOWN_EVENT_TYPE.to_owned(),
            body: fixture(fixtures::ORDER_STATUS_UPDATED),
        }
    }

    fn oversized(&self, id: String, size: usize) -> Event {
        // The fixture with one more (unknown, so ignored) field of padding.
        let fixture = fixtures::ORDER_CREATED.trim_end();
        let open = fixture.strip_suffix('}').unwrap_or(fixture);
        let mut body = String::with_capacity(size + fixture.len() + 32);
        body.push_str(open);
        body.push_str(",\"klikit_check_padding\":\"");
        body.extend(std::iter::repeat_n('x', size));
        body.push_str("\"}");
        Event {
            id,
            event_type: EventType::ORDER_CREATED.to_owned(),
            body: Bytes::from(body),
        }
    }

    fn sign(&self, secret: &[u8], event: &Event) -> Delivery {
        Delivery {
            headers: vec![
                (SIGNATURE_HEADER, sign(secret, &event.body)),
                (EVENT_ID_HEADER, event.id.clone()),
                (EVENT_TYPE_HEADER, event.event_type.clone()),
            ],
            body: event.body.clone(),
        }
    }

    fn refusals(&self, secret: &[u8], ids: &Ids) -> Vec<(String, Delivery)> {
        let fresh = || self.sign(secret, &self.sample(ids.fresh()));
        let mut wrong_key = b"not-".to_vec();
        wrong_key.extend_from_slice(secret);
        let genuine = fresh();
        let wrong_secret = genuine.clone().with(SIGNATURE_HEADER, sign(&wrong_key, &genuine.body));
        let other = fresh();
        let other_body = other.with(SIGNATURE_HEADER, sign(secret, fixtures::ORDER_CREATED.as_bytes()));
        let short = fresh();
        let truncated = sign(secret, &short.body)[..62].to_owned();
        let mut refusals = vec![
            ("wrong secret".to_owned(), wrong_secret),
            ("signature of another body".to_owned(), other_body),
            (
                "signature truncated to 62 digits".to_owned(),
                short.with(SIGNATURE_HEADER, truncated),
            ),
        ];
        for header in self.required_headers() {
            refusals.push((format!("no {header}"), fresh().without(header)));
        }
        refusals
    }

    fn required_headers(&self) -> &'static [&'static str] {
        &[SIGNATURE_HEADER, EVENT_ID_HEADER, EVENT_TYPE_HEADER]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use klikit_webhook::KlikitEvent;

    #[test]
    fn raw_bodies_are_valid_envelopes_and_not_compact_canonical_json() {
        for (label, body) in RAW_BODIES {
            let value: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_ne!(serde_json::to_string(&value).unwrap(), body, "{label}");
            let event = KlikitEvent::new(
                "evt-1".parse().unwrap(),
                EventType::OrderCreated,
                Bytes::from_static(body.as_bytes()),
            );
            let envelope = event.payload().unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!((envelope.brand_id, envelope.orders.len()), (663, 1), "{label}");
        }
    }

    #[test]
    fn refusals_differ_from_the_genuine_delivery_in_one_respect() {
        let ids = Ids::new();
        let refusals = Klikit.refusals(b"secret", &ids);
        assert_eq!(refusals.len(), 6);
        for (label, delivery) in &refusals {
            let signature = delivery.headers.iter().find(|(name, _)| *name == SIGNATURE_HEADER);
            let genuine = sign(b"secret", &delivery.body);
            let missing = 3 - delivery.headers.len();
            let forged = signature.is_some_and(|(_, value)| *value != genuine);
            assert_eq!(missing + usize::from(forged), 1, "{label}");
        }
    }

    #[test]
    fn oversized_body_is_a_valid_envelope_of_at_least_the_size() {
        let event = Klikit.oversized("evt-1".into(), 1 << 20);
        assert!(event.body.len() > 1 << 20);
        let value: serde_json::Value = serde_json::from_slice(&event.body).unwrap();
        assert_eq!(value["orders"].as_array().map(Vec::len), Some(2));
    }
}
