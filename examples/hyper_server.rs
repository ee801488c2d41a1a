//! The layer on a plain hyper 1 server, without axum.
//!
//! Run with
//!
//! ```sh
//! KLIKIT_WEBHOOK_SECRET=your-secret cargo run --example hyper_server --no-default-features
//! ```
//!
//! `tower::ServiceBuilder` stacks the layer on a `service_fn`, and
//! `hyper_util`'s `TowerToHyperService` adapts it to hyper's connection API.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::{rt::TokioIo, server::conn::auto, service::TowerToHyperService};
use klikit_webhook::{KlikitEvent, KlikitWebhookLayer, WebhookSecret};
use tokio::net::TcpListener;

/// The handler: every request that reaches it carries a verified, unique
/// `KlikitEvent`.
async fn handle(request: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    let Some(event) = request.extensions().get::<KlikitEvent>() else {
        let mut response = Response::new(Full::from("layer missing"));
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        return Ok(response);
    };
    println!(
        "received {} {} ({} bytes)",
        event.event_type(),
        event.id(),
        event.body().len()
    );
    Ok(Response::new(Full::from(r#"{"status":"received"}"#)))
}

/// Accepts connections on `listener` for ever, each served by the layered
/// `service_fn`.
pub async fn serve(listener: TcpListener, layer: KlikitWebhookLayer) {
    let service = tower::ServiceBuilder::new().layer(layer).service_fn(handle);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let builder = auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(error) = builder.serve_connection(TokioIo::new(stream), service).await {
                eprintln!("connection error: {error}");
            }
        });
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secret = WebhookSecret::from_env(klikit_webhook::SECRET_ENV_VAR)?;
    let listener = TcpListener::bind("0.0.0.0:8080").await?;
    println!("listening on {}", listener.local_addr()?);
    serve(listener, KlikitWebhookLayer::new(secret)).await;
    Ok(())
}
