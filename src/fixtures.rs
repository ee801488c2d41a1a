//! Realistic bodies for the three documented event types, written to match
//! Klikit's published examples (the `fixtures/` folder of the repository).
//!
//! Always compiled: the `klikit send` command sends them, and tests and
//! examples use them as sample deliveries.
//!
//! ```
//! use klikit_webhook::{EventType, KlikitEvent, fixtures};
//!
//! let event = KlikitEvent::new("evt-1".parse().unwrap(), EventType::OrderCreated, fixtures::ORDER_CREATED.into());
//! assert_eq!(event.payload().unwrap().orders.len(), 2);
//! assert_eq!(fixtures::for_event_type(&EventType::OrderCartUpdated), Some(fixtures::ORDER_CART_UPDATED));
//! ```

use crate::EventType;

/// `klikit.order.created.v2`: two new orders in one batch.
pub const ORDER_CREATED: &str = include_str!("../fixtures/order_created.json");
/// `klikit.order.status.updated`: an order turned READY (status 5), with
/// a field this crate does not know.
pub const ORDER_STATUS_UPDATED: &str = include_str!("../fixtures/order_status_updated.json");
/// `klikit.order.cart.updated`: the whole new cart of an order in progress.
pub const ORDER_CART_UPDATED: &str = include_str!("../fixtures/order_cart_updated.json");

/// The fixture for a known event type (Partner API v1 types from
/// [`payload::v1::fixtures`](crate::payload::v1::fixtures)); `None` for
/// [`EventType::Other`].
pub fn for_event_type(event_type: &EventType) -> Option<&'static str> {
    match event_type {
        EventType::OrderCreated => Some(ORDER_CREATED),
        EventType::OrderStatusUpdated => Some(ORDER_STATUS_UPDATED),
        EventType::OrderCartUpdated => Some(ORDER_CART_UPDATED),
        other => crate::payload::v1::fixtures::for_event_type(other),
    }
}
