//! Sample Partner API v1 bodies: one per event type of the v1 registry, and
//! the five shapes of Klikit's sandbox fixtures (`sandbox.mdx` §2).
//!
//! Written for this crate (the `fixtures/v1/` folder of the repository) to
//! match the published JSON Schemas, with values of our own: one delivery
//! order of business 315 through its life (placed, updated, courier
//! assigned, picked up, delivered, amended), a web-shop pickup order the
//! branch cancelled, and sandbox orders of business 9001. Always compiled,
//! for tests, examples and tools that send deliveries.
//!
//! ```
//! use klikit_webhook::{EventType, payload::v1::{Envelope, fixtures}};
//!
//! for (name, body) in fixtures::ALL {
//!     let envelope: Envelope = serde_json::from_str(body).unwrap();
//!     assert!(envelope.event_type.is_v1(), "{name}");
//! }
//! assert_eq!(fixtures::for_event_type(&EventType::OrderDeliveredV1), Some(fixtures::ORDER_DELIVERED));
//! ```

use crate::EventType;

/// `order.placed.v1`: a foodpanda delivery order of two lines, paid by wallet.
pub const ORDER_PLACED: &str = include_str!("../../../fixtures/v1/order.placed.v1.json");
/// `order.updated.v1`: the same order, accepted, with new rider instructions
/// and a field this crate does not know (`loyalty_tier`).
pub const ORDER_UPDATED: &str = include_str!("../../../fixtures/v1/order.updated.v1.json");
/// `order.cancelled.v1`: a scheduled web-shop pickup order the branch
/// cancelled (`by: partner`, `reason_code: item_unavailable`).
pub const ORDER_CANCELLED: &str = include_str!("../../../fixtures/v1/order.cancelled.v1.json");
/// `order.amended.v1`: the delivered order, corrected by an operator to one
/// portion.
pub const ORDER_AMENDED: &str = include_str!("../../../fixtures/v1/order.amended.v1.json");
/// `order.courier_assigned.v1`: the order is ready and a rider is assigned.
pub const ORDER_COURIER_ASSIGNED: &str = include_str!("../../../fixtures/v1/order.courier_assigned.v1.json");
/// `order.picked_up.v1`: the rider left the store (`en_route`).
pub const ORDER_PICKED_UP: &str = include_str!("../../../fixtures/v1/order.picked_up.v1.json");
/// `order.delivered.v1`: delivered, with the aggregator's commission.
pub const ORDER_DELIVERED: &str = include_str!("../../../fixtures/v1/order.delivered.v1.json");

/// Sandbox `single_item_dine_in`: one item, no modifiers, dine-in at table 12.
pub const SANDBOX_SINGLE_ITEM_DINE_IN: &str = include_str!("../../../fixtures/v1/sandbox_single_item_dine_in.json");
/// Sandbox `single_item_delivery`: one item, no modifiers, delivery.
pub const SANDBOX_SINGLE_ITEM_DELIVERY: &str = include_str!("../../../fixtures/v1/sandbox_single_item_delivery.json");
/// Sandbox `multi_item_with_modifiers`: three items, two with modifier
/// groups, delivery.
pub const SANDBOX_MULTI_ITEM_WITH_MODIFIERS: &str =
    include_str!("../../../fixtures/v1/sandbox_multi_item_with_modifiers.json");
/// Sandbox `large_basket`: 15 items across four categories.
pub const SANDBOX_LARGE_BASKET: &str = include_str!("../../../fixtures/v1/sandbox_large_basket.json");
/// Sandbox `cancellation_flow`: `order.placed.v1`, then `order.cancelled.v1`
/// of the same order 30 s later (two events, two ids).
pub const SANDBOX_CANCELLATION_FLOW: [&str; 2] = [
    include_str!("../../../fixtures/v1/sandbox_cancellation_flow_placed.json"),
    include_str!("../../../fixtures/v1/sandbox_cancellation_flow_cancelled.json"),
];

/// Every v1 fixture with its file name under `fixtures/v1/`.
pub const ALL: [(&str, &str); 13] = [
    ("order.placed.v1.json", ORDER_PLACED),
    ("order.updated.v1.json", ORDER_UPDATED),
    ("order.cancelled.v1.json", ORDER_CANCELLED),
    ("order.amended.v1.json", ORDER_AMENDED),
    ("order.courier_assigned.v1.json", ORDER_COURIER_ASSIGNED),
    ("order.picked_up.v1.json", ORDER_PICKED_UP),
    ("order.delivered.v1.json", ORDER_DELIVERED),
    ("sandbox_single_item_dine_in.json", SANDBOX_SINGLE_ITEM_DINE_IN),
    ("sandbox_single_item_delivery.json", SANDBOX_SINGLE_ITEM_DELIVERY),
    (
        "sandbox_multi_item_with_modifiers.json",
        SANDBOX_MULTI_ITEM_WITH_MODIFIERS,
    ),
    ("sandbox_large_basket.json", SANDBOX_LARGE_BASKET),
    ("sandbox_cancellation_flow_placed.json", SANDBOX_CANCELLATION_FLOW[0]),
    ("sandbox_cancellation_flow_cancelled.json", SANDBOX_CANCELLATION_FLOW[1]),
];

/// The fixture for one of the seven v1 event types; `None` for any other.
pub fn for_event_type(event_type: &EventType) -> Option<&'static str> {
    Some(match event_type {
        EventType::OrderPlacedV1 => ORDER_PLACED,
        EventType::OrderUpdatedV1 => ORDER_UPDATED,
        EventType::OrderCancelledV1 => ORDER_CANCELLED,
        EventType::OrderAmendedV1 => ORDER_AMENDED,
        EventType::OrderCourierAssignedV1 => ORDER_COURIER_ASSIGNED,
        EventType::OrderPickedUpV1 => ORDER_PICKED_UP,
        EventType::OrderDeliveredV1 => ORDER_DELIVERED,
        _ => return None,
    })
}
