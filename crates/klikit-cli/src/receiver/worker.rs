//! The receiver's background worker: what it does with each queued event.

use klikit_webhook::{EventType, KlikitEvent, scheme::StandardWebhooks};
use tokio::sync::mpsc;

/// Processes queued events until every sender is gone, with one log line
/// per event that names its type. Today's events log brand, branch and order
/// count; Partner API v1 events (routed on the `event_type` inside the
/// signed body) log the business, the order id and its status; Standard
/// Webhooks messages log the payload's `type`. Unknown event types are
/// ignored, as both of Klikit's contracts ask.
pub async fn worker(mut jobs: mpsc::Receiver<KlikitEvent>) {
    while let Some(event) = jobs.recv().await {
        process(&event);
    }
    tracing::info!("worker drained");
}

fn process(event: &KlikitEvent) {
    match event.event_type() {
        EventType::OrderCreated | EventType::OrderStatusUpdated | EventType::OrderCartUpdated => today(event),
        v1 if v1.is_v1() => partner_v1(event),
        EventType::Other(name) if &**name == StandardWebhooks::EVENT_TYPE => standard_webhooks(event),
        other => tracing::warn!(id = %event.id(), event_type = %other, "unknown event type; ignored"),
    }
}

/// Today's contract: `{brand_id, branch_id, orders}`.
fn today(event: &KlikitEvent) {
    let envelope = match event.payload() {
        Ok(envelope) => envelope,
        Err(error) => {
            tracing::error!(event_id = %event.id(), %error, "payload does not match Klikit's envelope");
            return;
        }
    };
    let (brand, branch, orders) = (envelope.brand_id, envelope.branch_id, envelope.orders.len());
    let id = event.id();
    match event.event_type() {
        EventType::OrderCreated => {
            tracing::info!(%id, brand, branch, orders, "order created: ticket sent to the kitchen")
        }
        EventType::OrderStatusUpdated => {
            tracing::info!(%id, brand, branch, orders, "order status updated: order record updated")
        }
        EventType::OrderCartUpdated => {
            tracing::info!(%id, brand, branch, orders, "order cart updated: cart replaced")
        }
        other => tracing::warn!(%id, brand, branch, orders, event_type = %other, "unknown event type; ignored"),
    }
}

/// Partner API v1: the envelope and its whole current `Order`. The type
/// routed on is the envelope's `event_type`, which the signature covers
/// (the `X-Klikit-Event` header is not signed).
fn partner_v1(event: &KlikitEvent) {
    let envelope = match event.v1_payload() {
        Ok(envelope) => envelope,
        Err(error) => {
            tracing::error!(event_id = %event.id(), %error, "payload does not match Partner API v1's envelope");
            return;
        }
    };
    let order = &envelope.data;
    let (id, event_type, business) = (event.id(), &envelope.event_type, envelope.business_id);
    let (order_id, status) = (order.id.as_str(), &order.status);
    macro_rules! log {
        ($what:literal) => {
            tracing::info!(%id, %event_type, business, order = %order_id, %status, $what)
        };
    }
    match event_type {
        EventType::OrderPlacedV1 => log!("order placed: ticket sent to the kitchen"),
        EventType::OrderUpdatedV1 => log!("order updated: order record updated"),
        EventType::OrderCancelledV1 => log!("order cancelled: kitchen ticket voided"),
        EventType::OrderAmendedV1 => log!("order amended: order record corrected"),
        EventType::OrderCourierAssignedV1 => log!("courier assigned: rider noted on the order"),
        EventType::OrderPickedUpV1 => log!("order picked up: handed to the rider"),
        EventType::OrderDeliveredV1 => log!("order delivered: order closed"),
        other => {
            tracing::warn!(%id, event_type = %other, business, order = %order_id, "unknown event type; ignored")
        }
    }
}

/// Standard Webhooks: the headers carry no type; by the specification's
/// convention the payload's `type` field does.
fn standard_webhooks(event: &KlikitEvent) {
    let id = event.id();
    match event.json::<serde_json::Value>() {
        Ok(payload) => {
            let message_type = payload.get("type").and_then(|value| value.as_str()).unwrap_or("(none)");
            let event_type = StandardWebhooks::EVENT_TYPE;
            tracing::info!(%id, %event_type, %message_type, "standard webhooks message received");
        }
        Err(error) => tracing::error!(event_id = %id, %error, "standard webhooks payload is not JSON"),
    }
}
