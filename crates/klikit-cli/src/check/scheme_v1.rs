//! `--scheme klikit-v1`: Klikit's Partner API v1 contract (frozen
//! 2026-05-16; the library's [`KlikitV1`]) as the checks send it.
//!
//! - `X-Klikit-Signature: t=<unix seconds>,v1=<hex>`, HMAC-SHA256 over
//!   `<t>.<raw body>`, signed by the library's own [`KlikitV1::sign`] at the
//!   moment each delivery is sent (a copy sent again gets a new `t`, as
//!   Klikit's retries do);
//! - `X-Klikit-Event-Id`, a UUID ([`Ids::uuids`]), which every body repeats
//!   as its top-level `event_id`: each delivery writes its fresh id into the
//!   body, so the header and the signed body always agree;
//! - `X-Klikit-Event`, the versioned type, also the body's `event_type`;
//! - `X-Klikit-Webhook-Id` when `--subscription` names one.
//!
//! The fixtures are the seven v1 event types and the five sandbox shapes of
//! `sandbox.mdx` (the cancellation flow is two events); the refusals add a
//! correctly signed timestamp 10 minutes old and one 10 minutes ahead, since
//! the contract requires refusing a `t` more than 5 minutes off.

use std::time::SystemTime;

use bytes::Bytes;
use http::HeaderMap;
use klikit_webhook::{
    WebhookSecret,
    payload::v1::fixtures,
    scheme::{KlikitV1, Outgoing, Scheme},
};

use super::{
    bodies_v1::{RAW_BODIES, envelope, raw_body},
    scheme::{CheckScheme, Delivery, Event, Ids},
};

const SIGNATURE: &str = KlikitV1::SIGNATURE_HEADER;
const EVENT_ID: &str = KlikitV1::EVENT_ID_HEADER;
const EVENT_TYPE: &str = KlikitV1::EVENT_TYPE_HEADER;
const WEBHOOK_ID: &str = KlikitV1::WEBHOOK_ID_HEADER;

/// An event type Klikit has not announced, in the form of the v1 registry.
pub(crate) const UNKNOWN_EVENT_TYPE: &str = "order.check_unknown.v1";

/// How far from now the stale and the future timestamp are: twice the
/// contract's 5 minutes, so that a receiver's clock a little off does not
/// decide the check.
pub(crate) const SKEW_SECONDS: i64 = 600;

/// The labels of the two timestamp refusals.
pub(crate) const STALE: &str = "stale timestamp (t = now - 600)";
pub(crate) const FUTURE: &str = "future timestamp (t = now + 600)";

/// The fixtures check: a label, the event type, the fixture.
const FIXTURES: [(&str, &str, &str); 13] = [
    ("order.placed.v1", "order.placed.v1", fixtures::ORDER_PLACED),
    ("order.updated.v1", "order.updated.v1", fixtures::ORDER_UPDATED),
    ("order.cancelled.v1", "order.cancelled.v1", fixtures::ORDER_CANCELLED),
    ("order.amended.v1", "order.amended.v1", fixtures::ORDER_AMENDED),
    (
        "order.courier_assigned.v1",
        "order.courier_assigned.v1",
        fixtures::ORDER_COURIER_ASSIGNED,
    ),
    ("order.picked_up.v1", "order.picked_up.v1", fixtures::ORDER_PICKED_UP),
    ("order.delivered.v1", "order.delivered.v1", fixtures::ORDER_DELIVERED),
    (
        "single_item_dine_in",
        "order.placed.v1",
        fixtures::SANDBOX_SINGLE_ITEM_DINE_IN,
    ),
    (
        "single_item_delivery",
        "order.placed.v1",
        fixtures::SANDBOX_SINGLE_ITEM_DELIVERY,
    ),
    (
        "multi_item_with_modifiers",
        "order.placed.v1",
        fixtures::SANDBOX_MULTI_ITEM_WITH_MODIFIERS,
    ),
    (
        "large_basket (15 items)",
        "order.placed.v1",
        fixtures::SANDBOX_LARGE_BASKET,
    ),
    (
        "cancellation_flow: placed",
        "order.placed.v1",
        fixtures::SANDBOX_CANCELLATION_FLOW[0],
    ),
    (
        "cancellation_flow: cancelled",
        "order.cancelled.v1",
        fixtures::SANDBOX_CANCELLATION_FLOW[1],
    ),
];

/// The Partner API v1 contract; see the [module docs](self).
pub(crate) struct KlikitV1Check {
    subscription: Option<String>,
}

impl KlikitV1Check {
    /// Deliveries name `subscription` in `X-Klikit-Webhook-Id`, if given.
    pub(crate) fn new(subscription: Option<String>) -> Self {
        Self { subscription }
    }

    /// `event` signed with `secret` as Klikit's sender does, stamped
    /// `timestamp`.
    fn sign_at(&self, secret: &[u8], event: &Event, timestamp: i64) -> Delivery {
        let mut outgoing = Outgoing::new(&event.id, &event.event_type, &event.body).with_timestamp(timestamp);
        if let Some(subscription) = &self.subscription {
            outgoing = outgoing.with_subscription(subscription);
        }
        let mut headers = HeaderMap::new();
        // Only an empty secret is refused, and `klikit check` refuses one
        // before anything is sent; an unsigned delivery would be refused.
        if let Ok(secret) = WebhookSecret::new(secret) {
            KlikitV1::new().sign(&secret, &outgoing, &mut headers);
        }
        let headers = [SIGNATURE, EVENT_ID, EVENT_TYPE, WEBHOOK_ID]
            .into_iter()
            .filter_map(|name| {
                let value = headers.get(name)?.to_str().ok()?;
                Some((name, value.to_owned()))
            })
            .collect();
        Delivery {
            headers,
            body: event.body.clone(),
        }
    }

    /// A fixture as the event `id` of type `event_type`.
    fn event(id: String, event_type: &str, fixture: &str) -> Event {
        Event {
            body: Bytes::from(envelope(fixture, &id, Some(event_type))),
            id,
            event_type: event_type.to_owned(),
        }
    }
}

/// Seconds since the Unix epoch.
fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX))
}

impl CheckScheme for KlikitV1Check {
    fn name(&self) -> &'static str {
        "klikit-v1"
    }

    fn ids(&self) -> Ids {
        Ids::uuids()
    }

    fn fixtures(&self, ids: &Ids) -> Vec<(String, Event)> {
        FIXTURES
            .iter()
            .map(|(label, event_type, fixture)| ((*label).to_owned(), Self::event(ids.fresh(), event_type, fixture)))
            .collect()
    }

    fn raw_bodies(&self, ids: &Ids) -> Vec<(String, Event)> {
        RAW_BODIES
            .iter()
            .map(|(label, template)| {
                let id = ids.fresh();
                let event = Event {
                    body: raw_body(template, &id),
                    id,
                    event_type: "order.placed.v1".to_owned(),
                };
                ((*label).to_owned(), event)
            })
            .collect()
    }

    fn sample(&self, id: String) -> Event {
        Self::event(id, "order.updated.v1", fixtures::ORDER_UPDATED)
    }

    fn unknown_type(&self, id: String) -> Event {
        Self::event(id, UNKNOWN_EVENT_TYPE, fixtures::ORDER_UPDATED)
    }

    fn oversized(&self, id: String, size: usize) -> Event {
        // The fixture with one more (unknown, so ignored) field of padding.
        let fixture = envelope(fixtures::ORDER_PLACED, &id, None);
        let open = fixture.strip_suffix('}').unwrap_or(&fixture);
        let mut body = String::with_capacity(size + fixture.len() + 32);
        body.push_str(open);
        body.push_str(",\"klikit_check_padding\":\"");
        body.extend(std::iter::repeat_n('x', size));
        body.push_str("\"}");
        Event {
            id,
            event_type: "order.placed.v1".to_owned(),
            body: Bytes::from(body),
        }
    }

    fn sign(&self, secret: &[u8], event: &Event) -> Delivery {
        self.sign_at(secret, event, now())
    }

    fn refusals(&self, secret: &[u8], ids: &Ids) -> Vec<(String, Delivery)> {
        let t = now();
        let fresh = || self.sample(ids.fresh());
        let signature = |delivery: &Delivery| {
            delivery
                .headers
                .iter()
                .find(|(name, _)| *name == SIGNATURE)
                .map(|(_, value)| value.clone())
                .unwrap_or_default()
        };
        let mut wrong_key = b"not-".to_vec();
        wrong_key.extend_from_slice(secret);
        let event = fresh();
        let forged = signature(&self.sign_at(&wrong_key, &event, t));
        let wrong_secret = self.sign_at(secret, &event, t).with(SIGNATURE, forged);
        // The same id and timestamp, signed over another body.
        let event = fresh();
        let other = Event {
            body: Bytes::from(envelope(fixtures::ORDER_PLACED, &event.id, Some(&event.event_type))),
            ..event.clone()
        };
        let other_body = self
            .sign_at(secret, &event, t)
            .with(SIGNATURE, signature(&self.sign_at(secret, &other, t)));
        let short = self.sign_at(secret, &fresh(), t);
        let mut truncated = signature(&short);
        truncated.truncate(truncated.len().saturating_sub(2));
        let mut refusals = vec![
            ("wrong secret".to_owned(), wrong_secret),
            ("signature of another body".to_owned(), other_body),
            (
                "signature truncated to 62 digits".to_owned(),
                short.with(SIGNATURE, truncated),
            ),
        ];
        for header in self.required_headers() {
            refusals.push((
                format!("no {header}"),
                self.sign_at(secret, &fresh(), t).without(header),
            ));
        }
        refusals.push((STALE.to_owned(), self.sign_at(secret, &fresh(), t - SKEW_SECONDS)));
        refusals.push((FUTURE.to_owned(), self.sign_at(secret, &fresh(), t + SKEW_SECONDS)));
        refusals
    }

    fn required_headers(&self) -> &'static [&'static str] {
        &[SIGNATURE, EVENT_ID, EVENT_TYPE]
    }

    fn refusal_note(&self, accepted: &[&str]) -> Option<String> {
        accepted.iter().any(|label| [STALE, FUTURE].contains(label)).then(|| {
            "a correctly signed delivery whose t is 10 minutes off was accepted: the signed timestamp is not \
             checked, so a captured delivery can be replayed for ever. After the signature matches, refuse (401) a \
             t more than 300 s before or after your clock"
                .to_owned()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use klikit_webhook::{EventType, scheme::verify_delivery, signature::Verifier};

    const SECRET: &[u8] = b"a-long-random-webhook-secret";

    fn header_map(delivery: &Delivery) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in &delivery.headers {
            headers.insert(*name, value.parse().unwrap());
        }
        headers
    }

    fn verifies_under(scheme: KlikitV1, delivery: &Delivery) -> bool {
        let verifier = Verifier::new(WebhookSecret::new(SECRET).unwrap());
        let headers = header_map(delivery);
        verify_delivery(&scheme, &verifier, &headers, &delivery.body, SystemTime::now()).is_ok()
    }

    fn verifies(delivery: &Delivery) -> bool {
        verifies_under(KlikitV1::new(), delivery)
    }

    #[test]
    fn every_delivery_verifies_with_the_library_and_names_its_id_in_the_body() {
        let scheme = KlikitV1Check::new(Some("wh_check".into()));
        let ids = scheme.ids();
        let mut events: Vec<Event> = scheme.fixtures(&ids).into_iter().map(|(_, e)| e).collect();
        events.extend(scheme.raw_bodies(&ids).into_iter().map(|(_, e)| e));
        events.extend([scheme.sample(ids.fresh()), scheme.unknown_type(ids.fresh())]);
        assert_eq!(events.len(), 13 + 7 + 2);
        for event in &events {
            let delivery = scheme.sign(SECRET, event);
            assert!(verifies(&delivery), "{}", event.event_type);
            let body: serde_json::Value = serde_json::from_slice(&event.body).unwrap();
            assert_eq!(body["event_id"], event.id.as_str());
            assert_eq!(body["event_type"], event.event_type.as_str());
            let headers = header_map(&delivery);
            assert_eq!(headers[EVENT_ID], event.id.as_str());
            assert_eq!(headers[EVENT_TYPE], event.event_type.as_str());
            assert_eq!(headers[WEBHOOK_ID], "wh_check");
        }
        let types: Vec<EventType> = events[..13]
            .iter()
            .map(|e| EventType::from_name(&e.event_type))
            .collect();
        assert!(types.iter().all(EventType::is_v1), "{types:?}");
    }

    #[test]
    fn refusals_differ_from_a_genuine_delivery_in_one_respect() {
        let scheme = KlikitV1Check::new(None);
        let refusals = scheme.refusals(SECRET, &scheme.ids());
        let labels: Vec<&str> = refusals.iter().map(|(label, _)| label.as_str()).collect();
        assert_eq!(labels.len(), 8);
        assert_eq!(labels[6..], [STALE, FUTURE]);
        for (label, delivery) in &refusals {
            assert!(!verifies(delivery), "{label}");
            let missing = 3 - delivery.headers.len();
            let timestamp = [STALE, FUTURE].contains(&label.as_str());
            let forged = missing == 0 && !verifies_under(KlikitV1::new().ignoring_timestamp(), delivery);
            assert_eq!(missing + usize::from(forged) + usize::from(timestamp), 1, "{label}");
        }
    }

    #[test]
    fn oversized_body_is_a_signed_v1_envelope_of_at_least_the_size() {
        let scheme = KlikitV1Check::new(None);
        let event = scheme.oversized("4e1c0b6a-93d2-4f57-a0c8-000000000009".into(), 1 << 20);
        assert!(event.body.len() > 1 << 20);
        let body: serde_json::Value = serde_json::from_slice(&event.body).unwrap();
        assert_eq!(body["event_id"], event.id.as_str());
        assert!(verifies(&scheme.sign(SECRET, &event)));
    }

    #[test]
    fn ids_are_uuids_numbered_within_a_run() {
        let ids = Ids::uuids();
        let (first, second) = (ids.fresh(), ids.fresh());
        let groups: Vec<&str> = first.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12],
            "{first}"
        );
        assert!(
            first
                .bytes()
                .all(|b| b == b'-' || b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert!(
            groups[2].starts_with('4') && "89ab".contains(&groups[3][..1]),
            "{first}"
        );
        assert_eq!((groups[4], &second[..24]), ("000000000001", &first[..24]));
        assert!(second.ends_with("-000000000002"));
        assert_ne!(Ids::uuids().fresh()[..24], first[..24]);
    }
}
