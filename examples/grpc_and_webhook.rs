//! One process, one port: a tonic gRPC service (reachable as gRPC and as
//! gRPC-web) next to the Klikit webhook route.
//!
//! Run with
//!
//! ```sh
//! KLIKIT_WEBHOOK_SECRET=your-secret cargo run --example grpc_and_webhook
//! ```
//!
//! The gRPC service here is tonic's standard health service; put your own
//! generated services in its place. The webhook layer is applied with
//! `route_layer` to the webhook route only: gRPC requests never carry
//! Klikit headers, and a gRPC error is an HTTP 200 that must not complete a
//! webhook claim.

use axum::{Router, routing::post};
use klikit_webhook::{KlikitEvent, KlikitWebhookLayer, WebhookSecret, testing::WEBHOOK_PATH};

/// The combined router: gRPC + gRPC-web for the health service, and the
/// webhook behind `layer`.
pub fn app(layer: KlikitWebhookLayer) -> Router {
    let (reporter, health) = tonic_health::server::health_reporter();
    // SERVING for the whole server (the empty service name).
    drop(tokio::spawn(async move {
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
    }));
    let grpc = tonic::service::Routes::new(health)
        .into_axum_router()
        .layer(tonic_web::GrpcWebLayer::new());
    let webhook = Router::new().route(WEBHOOK_PATH, post(receive)).route_layer(layer);
    grpc.merge(webhook)
}

async fn receive(event: KlikitEvent) -> &'static str {
    tracing::info!(id = %event.id(), event_type = %event.event_type(), "webhook received");
    r#"{"status":"received"}"#
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    let secret = WebhookSecret::from_env(klikit_webhook::SECRET_ENV_VAR)?;
    let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
    tracing::info!("gRPC, gRPC-web and POST {WEBHOOK_PATH} on {}", listener.local_addr()?);
    // axum::serve speaks HTTP/1.1 and HTTP/2 (h2c prior knowledge) on one port.
    axum::serve(listener, app(KlikitWebhookLayer::new(secret))).await?;
    Ok(())
}
