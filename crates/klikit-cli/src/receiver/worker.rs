//! The receiver's background worker: what it does with each queued event.

use klikit_webhook::{EventType, KlikitEvent};
use tokio::sync::mpsc;

/// Processes queued events until every sender is gone: logs brand, branch
/// and order count per event type.
pub async fn worker(mut jobs: mpsc::Receiver<KlikitEvent>) {
    while let Some(event) = jobs.recv().await {
        process(&event);
    }
    tracing::info!("worker drained");
}

fn process(event: &KlikitEvent) {
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
