//! The mixed-server and plain-hyper examples, served on loopback sockets.
#![cfg(feature = "axum")]

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/grpc_and_webhook.rs"]
mod grpc_and_webhook;

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/hyper_server.rs"]
mod hyper_server;

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use klikit_webhook::{KlikitWebhookLayer, WebhookSecret, testing::signed_request};

const SECRET: &str = "mixed-test-secret-0123456789";
const BODY: &str = r#"{"brand_id":1,"branch_id":2,"orders":[]}"#;

fn layer() -> KlikitWebhookLayer {
    KlikitWebhookLayer::new(WebhookSecret::new(SECRET).unwrap())
}

async fn post(addr: SocketAddr, request: http::Request<Full<Bytes>>) -> (u16, String) {
    let (mut parts, body) = request.into_parts();
    parts.uri = format!("http://{addr}{}", parts.uri.path()).parse().unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client.request(http::Request::from_parts(parts, body)).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn grpc_grpc_web_and_webhook_share_one_port() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, grpc_and_webhook::app(layer())).await.unwrap() });

    // gRPC over HTTP/2 with tonic's own client.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut status = None;
    for _ in 0..50 {
        let reply = health
            .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
            .await
            .unwrap()
            .into_inner();
        status = Some(reply.status);
        if reply.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        status,
        Some(tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
    );

    // gRPC-web over HTTP/1.1: an empty HealthCheckRequest in one data frame.
    let frame = Bytes::from_static(&[0, 0, 0, 0, 0]);
    let request = http::Request::post("/grpc.health.v1.Health/Check")
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(Full::new(frame))
        .unwrap();
    let (code, body) = post(addr, request).await;
    assert_eq!(code, 200);
    assert!(body.contains("grpc-status:0"), "{body:?}");

    // The webhook, on the same port, behind the layer.
    let (code, body) = post(
        addr,
        signed_request(SECRET, "evt-mixed", "klikit.order.created.v2", BODY),
    )
    .await;
    assert_eq!((code, body.as_str()), (200, r#"{"status":"received"}"#));
    let (code, _) = post(
        addr,
        signed_request("not-the-secret-at-all", "evt-x", "klikit.order.created.v2", BODY),
    )
    .await;
    assert_eq!(code, 401);
    let (code, body) = post(
        addr,
        signed_request(SECRET, "evt-mixed", "klikit.order.created.v2", BODY),
    )
    .await;
    assert_eq!((code, body.as_str()), (200, r#"{"status":"duplicate-ignored"}"#));
}

#[tokio::test]
async fn plain_hyper_server_example_verifies_and_deduplicates() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(hyper_server::serve(listener, layer()));
    let (code, body) = post(
        addr,
        signed_request(SECRET, "evt-hyper", "klikit.order.created.v2", BODY),
    )
    .await;
    assert_eq!((code, body.as_str()), (200, r#"{"status":"received"}"#));
    let (code, body) = post(
        addr,
        signed_request(SECRET, "evt-hyper", "klikit.order.created.v2", BODY),
    )
    .await;
    assert_eq!((code, body.as_str()), (200, r#"{"status":"duplicate-ignored"}"#));
    let mut unsigned = signed_request::<Full<Bytes>>(SECRET, "evt-hyper-2", "klikit.order.created.v2", BODY);
    unsigned.headers_mut().remove("x-klikit-signature");
    assert_eq!(post(addr, unsigned).await.0, 400);
}
