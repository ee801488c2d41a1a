//! Helpers for testing code that receives Klikit webhooks.
//!
#![cfg_attr(
    feature = "test-util",
    doc = "With the `test-util` feature, [`conformance`] holds the test suite every [`DedupStore`](crate::DedupStore) must pass."
)]
#![cfg_attr(
    not(feature = "test-util"),
    doc = "With the `test-util` feature, `conformance` holds the test suite every [`DedupStore`](crate::DedupStore) must pass."
)]

use bytes::Bytes;
use http::{Request, header};

use crate::{EVENT_ID_HEADER, EVENT_TYPE_HEADER, SIGNATURE_HEADER, signature::sign};

/// Realistic bodies for the three documented event types, written to match
/// Klikit's published examples (see `fixtures/` in the repository).
///
/// ```
/// use klikit_webhook::{EventType, KlikitEvent, testing::fixtures};
///
/// let event = KlikitEvent::new("evt-1".parse().unwrap(), EventType::OrderCreated, fixtures::ORDER_CREATED.into());
/// assert_eq!(event.payload().unwrap().orders.len(), 2);
/// assert_eq!(fixtures::for_event_type(&EventType::OrderCartUpdated), Some(fixtures::ORDER_CART_UPDATED));
/// ```
pub mod fixtures {
    use crate::EventType;

    /// `klikit.order.created.v2`: two new orders in one batch.
    pub const ORDER_CREATED: &str = include_str!("../fixtures/order_created.json");
    /// `klikit.order.status.updated`: an order turned READY (status 5), with
    /// a field this crate does not know.
    pub const ORDER_STATUS_UPDATED: &str = include_str!("../fixtures/order_status_updated.json");
    /// `klikit.order.cart.updated`: the whole new cart of an order in progress.
    pub const ORDER_CART_UPDATED: &str = include_str!("../fixtures/order_cart_updated.json");

    /// The fixture for a known event type.
    pub fn for_event_type(event_type: &EventType) -> Option<&'static str> {
        match event_type {
            EventType::OrderCreated => Some(ORDER_CREATED),
            EventType::OrderStatusUpdated => Some(ORDER_STATUS_UPDATED),
            EventType::OrderCartUpdated => Some(ORDER_CART_UPDATED),
            _ => None,
        }
    }
}

#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod conformance;

/// The path the examples serve webhooks on.
pub const WEBHOOK_PATH: &str = "/webhooks/klikit";

/// Builds a `POST /webhooks/klikit` request the way Klikit sends it: JSON
/// content type, `x-klikit-event-id`, `x-klikit-event-type`, and
/// `x-klikit-signature` computed over `body` with `secret`.
///
/// Change the path with `*request.uri_mut() = ...` if yours differs.
///
/// ```
/// use axum::body::Body;
/// use klikit_webhook::testing::signed_request;
///
/// let request = signed_request::<Body>("a-long-random-webhook-secret", "evt-1", "klikit.order.created.v2", r#"{"brand_id":1,"branch_id":2,"orders":[]}"#);
/// assert_eq!(request.headers()["x-klikit-signature"].len(), 64);
/// ```
///
/// # Panics
///
/// If `event_id` or `event_type` is not a valid header value (a control
/// character, say); use [`http::Request::builder`] to test such requests.
pub fn signed_request<B: From<Bytes>>(
    secret: impl AsRef<[u8]>,
    event_id: &str,
    event_type: &str,
    body: impl Into<Bytes>,
) -> Request<B> {
    let body = body.into();
    let signature = sign(secret.as_ref(), &body);
    let request = Request::post(WEBHOOK_PATH)
        .header(header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature)
        .header(EVENT_ID_HEADER, event_id)
        .header(EVENT_TYPE_HEADER, event_type)
        .body(B::from(body));
    match request {
        Ok(request) => request,
        Err(error) => panic!("event id or event type is not a valid header value: {error}"),
    }
}
