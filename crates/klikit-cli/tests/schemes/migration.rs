//! The switch to Partner API v1: `KLIKIT_SCHEME=klikit,klikit-v1` accepts
//! both contracts on one route, then `KLIKIT_SCHEME=klikit-v1` only v1.

use klikit_webhook::{
    fixtures as today,
    payload::v1::fixtures,
    scheme::{Klikit, KlikitV1, Outgoing},
};

use crate::{
    klikit_v1::assert_typed,
    server::{DUPLICATE, INVALID_SIGNATURE, OUT_OF_TOLERANCE, RECEIVED, Served, TempFile, now},
};

const SECRET: &str = "migration-test-secret-0123456789";
const PLACED_ID: &str = "0b6f3d2e-8c41-4a7f-9e15-3d27c8a4b901";

fn todays(id: &str) -> Outgoing<'_> {
    Outgoing::new(id, "klikit.order.created.v2", today::ORDER_CREATED.as_bytes())
}

fn placed(at: i64) -> Outgoing<'static> {
    Outgoing::new(PLACED_ID, "order.placed.v1", fixtures::ORDER_PLACED.as_bytes()).with_timestamp(at)
}

#[test]
fn both_schemes_on_one_route() {
    let server = Served::start(&[("KLIKIT_SCHEME", "klikit,klikit-v1"), ("KLIKIT_WEBHOOK_SECRET", SECRET)]);
    let received = (200, RECEIVED.to_owned());
    assert_eq!(server.deliver(&Klikit::new(), SECRET, &todays("today-1")), received);
    assert_eq!(server.deliver(&KlikitV1::new(), SECRET, &placed(now())), received);
    let line = server.log_line(&["id=today-1 "]);
    assert!(line.contains("order created: ticket sent to the kitchen"), "{line}");
    assert_typed(&server, PLACED_ID, fixtures::ORDER_PLACED);

    let duplicate = (200, DUPLICATE.to_owned());
    assert_eq!(server.deliver(&Klikit::new(), SECRET, &todays("today-1")), duplicate);
    assert_eq!(server.deliver(&KlikitV1::new(), SECRET, &placed(now())), duplicate);

    let forged = (401, INVALID_SIGNATURE.to_owned());
    assert_eq!(
        server.deliver(&Klikit::new(), "not-the-secret", &todays("today-2")),
        forged
    );
    assert_eq!(
        server.deliver(&KlikitV1::new(), "not-the-secret", &placed(now())),
        forged
    );
    assert_eq!(
        server.deliver(&KlikitV1::new(), SECRET, &placed(now() - 600)),
        (401, OUT_OF_TOLERANCE.to_owned())
    );
}

#[test]
fn then_only_v1_refuses_todays_deliveries() {
    let server = Served::start(&[("KLIKIT_SCHEME", "klikit-v1"), ("KLIKIT_WEBHOOK_SECRET", SECRET)]);
    assert_eq!(
        server.deliver(&Klikit::new(), SECRET, &todays("today-1")),
        (400, r#"{"error":"missing header x-klikit-event"}"#.to_owned())
    );
    assert_eq!(
        server.deliver(&KlikitV1::new(), SECRET, &placed(now())),
        (200, RECEIVED.to_owned())
    );
}

#[test]
fn both_schemes_with_secrets_per_subscription_and_todays_partner_secret() {
    let (business, partner) = ("business-42-v1-secret", "the-partner-secret-of-today");
    let file = TempFile::with(&format!(r#"{{"wh_business_42": ["{business}"]}}"#));
    let server = Served::start(&[
        ("KLIKIT_SCHEME", "klikit,klikit-v1"),
        ("KLIKIT_WEBHOOK_SECRETS_FILE", file.as_str()),
        ("KLIKIT_WEBHOOK_SECRET", partner),
    ]);
    let v1 = placed(now()).with_subscription("wh_business_42");
    let forged = (401, INVALID_SIGNATURE.to_owned());
    assert_eq!(server.deliver(&KlikitV1::new(), partner, &v1), forged);
    assert_eq!(server.deliver(&Klikit::new(), business, &todays("today-1")), forged);
    let received = (200, RECEIVED.to_owned());
    assert_eq!(server.deliver(&KlikitV1::new(), business, &v1), received);
    assert_eq!(server.deliver(&Klikit::new(), partner, &todays("today-1")), received);
}
