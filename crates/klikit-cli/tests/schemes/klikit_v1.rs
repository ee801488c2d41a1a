//! `KLIKIT_SCHEME=klikit-v1`: Klikit's Partner API v1, with one secret and
//! with secrets per subscription (`KLIKIT_WEBHOOK_SECRETS_FILE`).

use klikit_webhook::{
    EventType,
    payload::v1::{Envelope, fixtures},
    scheme::{KlikitV1, Outgoing},
    signature::sign,
};

use crate::server::{DUPLICATE, INVALID_SIGNATURE, OUT_OF_TOLERANCE, RECEIVED, Served, TempFile, headers, now};

const SECRET: &str = "v1-test-secret-0123456789";
const MISMATCH: &str = r#"{"error":"x-klikit-event-id does not match the signed event_id"}"#;

pub(crate) fn envelope(body: &str) -> Envelope {
    serde_json::from_str(body).unwrap()
}

/// What the worker's line says for each v1 type.
pub(crate) fn worker_says(event_type: &EventType) -> &'static str {
    match event_type {
        EventType::OrderPlacedV1 => "order placed: ticket sent to the kitchen",
        EventType::OrderUpdatedV1 => "order updated: order record updated",
        EventType::OrderCancelledV1 => "order cancelled: kitchen ticket voided",
        EventType::OrderAmendedV1 => "order amended: order record corrected",
        EventType::OrderCourierAssignedV1 => "courier assigned: rider noted on the order",
        EventType::OrderPickedUpV1 => "order picked up: handed to the rider",
        EventType::OrderDeliveredV1 => "order delivered: order closed",
        other => panic!("not a v1 type: {other}"),
    }
}

/// Waits for the worker's line about `body`'s event and checks it is typed:
/// the type, its message, the order id and status of the typed payload.
pub(crate) fn assert_typed(server: &Served, id: &str, body: &str) {
    let envelope = envelope(body);
    let line = server.log_line(&[&format!("id={id} "), "klikit_cli::receiver::worker"]);
    let order = &envelope.data;
    for part in [
        worker_says(&envelope.event_type).to_owned(),
        format!("event_type={}", envelope.event_type),
        format!("order={}", order.id),
        format!("status={}", order.status),
        format!("business={}", envelope.business_id),
    ] {
        assert!(line.contains(&part), "{part} missing from: {line}");
    }
}

fn v1_server(extra: &[(&str, &str)]) -> Served {
    let mut env = vec![("KLIKIT_SCHEME", "klikit-v1"), ("KLIKIT_WEBHOOK_SECRET", SECRET)];
    env.extend_from_slice(extra);
    Served::start(&env)
}

/// `body` as Klikit sends it: its own event id, its type, stamped `at`.
fn outgoing(body: &str, at: i64) -> Outgoing<'_> {
    // The fixtures' ids and types are 'static text inside `body`.
    let id = &body[body.find("\"event_id\": \"").unwrap() + 13..][..36];
    let start = body.find("\"event_type\": \"").unwrap() + 15;
    let event_type = &body[start..start + body[start..].find('"').unwrap()];
    Outgoing::new(id, event_type, body.as_bytes()).with_timestamp(at)
}

/// `X-Klikit-Signature: t=<at>,v1=<hex>` over `body` with `key`.
fn v1_hex(key: &str, at: i64, body: &str) -> String {
    sign(key.as_bytes(), format!("{at}.{body}").as_bytes())
}

/// The v1 headers of `body` with a signature header written by hand.
fn by_hand(body: &str, signature: &str) -> http::HeaderMap {
    let o = outgoing(body, 0);
    headers(&[
        ("x-klikit-signature", signature),
        ("x-klikit-event-id", o.id),
        ("x-klikit-event", o.event_type),
    ])
}

#[test]
fn valid_delivery_is_received_typed_and_its_retry_ignored() {
    let server = v1_server(&[]);
    let body = fixtures::ORDER_PLACED;
    let delivery = outgoing(body, now());
    assert_eq!(
        server.deliver(&KlikitV1::new(), SECRET, &delivery),
        (200, RECEIVED.to_owned())
    );
    assert_typed(&server, delivery.id, body);
    // Klikit stamps each attempt anew: a retry is the same event.
    let retry = delivery.with_timestamp(now() - 30);
    assert_eq!(
        server.deliver(&KlikitV1::new(), SECRET, &retry),
        (200, DUPLICATE.to_owned())
    );
}

#[test]
fn stale_and_future_timestamps_are_refused_and_the_tolerance_is_configurable() {
    let default = v1_server(&[]);
    let wide = v1_server(&[("KLIKIT_TOLERANCE_SECS", "900")]);
    for (offset, body) in [(-400, fixtures::ORDER_PLACED), (400, fixtures::ORDER_UPDATED)] {
        let delivery = outgoing(body, now() + offset);
        assert_eq!(
            default.deliver(&KlikitV1::new(), SECRET, &delivery),
            (401, OUT_OF_TOLERANCE.to_owned()),
            "{offset} s"
        );
        assert_eq!(
            wide.deliver(&KlikitV1::new(), SECRET, &delivery),
            (200, RECEIVED.to_owned()),
            "{offset} s with KLIKIT_TOLERANCE_SECS=900"
        );
    }
    // Inside the default 300 s, either way.
    for (offset, body) in [(-250, fixtures::ORDER_CANCELLED), (250, fixtures::ORDER_AMENDED)] {
        let delivery = outgoing(body, now() + offset);
        assert_eq!(
            default.deliver(&KlikitV1::new(), SECRET, &delivery),
            (200, RECEIVED.to_owned()),
            "{offset} s"
        );
    }
    default.log_line(&[r#"outcome="timestamp_out_of_tolerance""#, "older than the tolerance"]);
    default.log_line(&[r#"outcome="timestamp_out_of_tolerance""#, "in the future"]);
}

#[test]
fn rotation_two_v1_entries_and_either_may_match() {
    let server = v1_server(&[]);
    let at = now();
    let old = "the-secret-before-the-rotation";
    // Klikit signs with the old and the new secret for 24 hours, in either order.
    for (body, signature) in [
        (
            fixtures::ORDER_PLACED,
            format!(
                "t={at},v1={},v1={}",
                v1_hex(old, at, fixtures::ORDER_PLACED),
                v1_hex(SECRET, at, fixtures::ORDER_PLACED)
            ),
        ),
        (
            fixtures::ORDER_UPDATED,
            format!(
                "t={at},v1={},v1={}",
                v1_hex(SECRET, at, fixtures::ORDER_UPDATED),
                v1_hex(old, at, fixtures::ORDER_UPDATED)
            ),
        ),
    ] {
        assert_eq!(
            server.post(&by_hand(body, &signature), body.as_bytes()),
            (200, RECEIVED.to_owned()),
            "{signature}"
        );
    }
    let body = fixtures::ORDER_CANCELLED;
    let neither = format!(
        "t={at},v1={},v1={}",
        v1_hex(old, at, body),
        v1_hex("another-wrong-secret", at, body)
    );
    assert_eq!(
        server.post(&by_hand(body, &neither), body.as_bytes()),
        (401, INVALID_SIGNATURE.to_owned())
    );

    // The receiver's side of a rotation: the previous secret is accepted too.
    let rotating = v1_server(&[("KLIKIT_WEBHOOK_PREVIOUS_SECRET", old)]);
    let signature = format!("t={at},v1={}", v1_hex(old, at, body));
    assert_eq!(
        rotating.post(&by_hand(body, &signature), body.as_bytes()),
        (200, RECEIVED.to_owned())
    );
}

#[test]
fn a_lone_v0_entry_is_refused_and_v0_next_to_v1_is_ignored() {
    let server = v1_server(&[]);
    let at = now();
    let body = fixtures::ORDER_PLACED;
    let good = v1_hex(SECRET, at, body);
    let lone = format!("t={at},v0={good}");
    assert_eq!(
        server.post(&by_hand(body, &lone), body.as_bytes()),
        (401, INVALID_SIGNATURE.to_owned())
    );
    let both = format!("t={at},v0=deadbeef,v1={good}");
    assert_eq!(
        server.post(&by_hand(body, &both), body.as_bytes()),
        (200, RECEIVED.to_owned())
    );
}

#[test]
fn header_id_that_differs_from_the_signed_event_id_is_400() {
    let server = v1_server(&[]);
    let body = fixtures::ORDER_DELIVERED;
    let real = outgoing(body, now());
    let other_id = "00000000-0000-4000-8000-000000000000";
    let lying = Outgoing::new(other_id, real.event_type, body.as_bytes());
    assert_eq!(
        server.deliver(&KlikitV1::new(), SECRET, &lying),
        (400, MISMATCH.to_owned())
    );
    // The refusal claimed nothing: the genuine delivery is processed.
    assert_eq!(
        server.deliver(&KlikitV1::new(), SECRET, &real),
        (200, RECEIVED.to_owned())
    );
}

#[test]
fn secrets_per_subscription_and_an_unknown_subscription_is_refused_like_a_forgery() {
    let (new_42, old_42, only_43) = ("business-42-new-secret", "business-42-old-secret", "business-43-secret");
    let file = TempFile::with(&format!(
        r#"{{"wh_business_42": ["{new_42}", "{old_42}"], "wh_business_43": ["{only_43}"]}}"#
    ));
    let server = Served::start(&[
        ("KLIKIT_SCHEME", "klikit-v1"),
        ("KLIKIT_WEBHOOK_SECRETS_FILE", file.as_str()),
    ]);
    let scheme = KlikitV1::new();
    let of = |body, subscription| outgoing(body, now()).with_subscription(subscription);
    let answer = |secret, delivery: &Outgoing<'_>| server.deliver(&scheme, secret, delivery);
    assert_eq!(
        answer(old_42, &of(fixtures::ORDER_PLACED, "wh_business_42")),
        (200, RECEIVED.to_owned()),
        "the previous secret during a rotation"
    );
    assert_eq!(
        answer(only_43, &of(fixtures::ORDER_UPDATED, "wh_business_43")),
        (200, RECEIVED.to_owned())
    );
    let refused = (401, INVALID_SIGNATURE.to_owned());
    let body = fixtures::ORDER_CANCELLED;
    assert_eq!(
        answer(new_42, &of(body, "wh_business_43")),
        refused,
        "another business's secret"
    );
    assert_eq!(
        answer(only_43, &of(body, "wh_nobody")),
        refused,
        "an unknown subscription"
    );
    assert_eq!(
        answer(new_42, &outgoing(body, now())),
        refused,
        "no subscription, no fallback"
    );

    // With KLIKIT_WEBHOOK_SECRET too, it verifies the deliveries naming no subscription.
    let fallback = "partner-fallback-secret";
    let server = Served::start(&[
        ("KLIKIT_SCHEME", "klikit-v1"),
        ("KLIKIT_WEBHOOK_SECRETS_FILE", file.as_str()),
        ("KLIKIT_WEBHOOK_SECRET", fallback),
    ]);
    let answer = |secret, delivery: &Outgoing<'_>| server.deliver(&scheme, secret, delivery);
    assert_eq!(answer(fallback, &of(body, "wh_nobody")), refused);
    assert_eq!(answer(fallback, &outgoing(body, now())), (200, RECEIVED.to_owned()));
    assert_eq!(
        answer(new_42, &of(fixtures::ORDER_PLACED, "wh_business_42")),
        (200, RECEIVED.to_owned())
    );
}

#[test]
fn every_v1_fixture_is_received_and_typed() {
    let file = TempFile::with(&format!(r#"{{"wh_sandbox": ["{SECRET}"]}}"#));
    let server = Served::start(&[
        ("KLIKIT_SCHEME", "klikit-v1"),
        ("KLIKIT_WEBHOOK_SECRETS_FILE", file.as_str()),
    ]);
    let mut types = Vec::new();
    for (name, body) in fixtures::ALL {
        let delivery = outgoing(body, now()).with_subscription("wh_sandbox");
        assert_eq!(
            server.deliver(&KlikitV1::new(), SECRET, &delivery),
            (200, RECEIVED.to_owned()),
            "{name}"
        );
        assert_typed(&server, delivery.id, body);
        types.push(envelope(body).event_type);
    }
    for event_type in EventType::V1 {
        assert!(types.contains(&event_type), "{event_type} was sent");
    }
}
