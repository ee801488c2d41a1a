//! The example receiver's router over a real loopback socket, driven by a
//! raw HTTP/1.1 client that behaves like a sender: it writes the whole
//! request, body included, before it reads the answer.

use klikit_cli::receiver;

use std::{net::SocketAddr, time::Duration};

use klikit_webhook::{KlikitEvent, KlikitWebhookLayer, WebhookSecret, signature::sign};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
};

const SECRET: &str = "loopback-test-secret-0123456789";
const BODY: &str = r#"{"brand_id":663,"branch_id":1062,"orders":[{"id":7585307,"external_id":"ABC-123","status":2,"total":"84.50","cart":[{"item_id":289379,"title":"Nasi Goreng","quantity":2,"price":0}],"some_future_field":{"ignored":true}}]}"#;

struct Server {
    addr: SocketAddr,
    events: mpsc::Receiver<KlikitEvent>,
}

async fn start(layer: KlikitWebhookLayer) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (jobs, events) = mpsc::channel(receiver::QUEUE_CAPACITY);
    tokio::spawn(async move { axum::serve(listener, receiver::app(layer, jobs)).await.unwrap() });
    Server { addr, events }
}

fn layer() -> KlikitWebhookLayer {
    KlikitWebhookLayer::new(WebhookSecret::new(SECRET).unwrap())
}

struct Reply {
    status: u16,
    head: String,
    body: String,
}

/// Writes `head` and `body` completely, then reads the whole answer.
async fn exchange(addr: SocketAddr, head: String, body: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let io = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(20), io)
        .await
        .expect("the exchange finished")
        .expect("the sender read an answer, not a reset");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").expect("a complete HTTP answer");
    let status = head[9..12].parse().unwrap();
    Reply {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

fn request_head(id: &str, signature: &str, length: Option<usize>) -> String {
    let length = match length {
        Some(n) => format!("content-length: {n}\r\n"),
        None => "transfer-encoding: chunked\r\n".to_owned(),
    };
    format!(
        "POST /webhooks/klikit HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         x-klikit-signature: {signature}\r\nx-klikit-event-id: {id}\r\n\
         x-klikit-event-type: klikit.order.created.v2\r\nconnection: close\r\n{length}\r\n"
    )
}

async fn deliver(addr: SocketAddr, id: &str, body: &str) -> Reply {
    let signature = sign(SECRET.as_bytes(), body.as_bytes());
    exchange(addr, request_head(id, &signature, Some(body.len())), body.as_bytes()).await
}

#[tokio::test]
async fn signed_event_is_received_queued_and_its_duplicate_ignored() {
    let mut server = start(layer()).await;
    let reply = deliver(server.addr, "test-0b7c", BODY).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, r#"{"status":"received"}"#);
    let event = server.events.recv().await.unwrap();
    assert_eq!(event.id().as_str(), "test-0b7c");
    assert_eq!(event.body().as_ref(), BODY.as_bytes());
    let envelope = event.payload().unwrap();
    assert_eq!((envelope.brand_id, envelope.orders.len()), (663, 1));

    let reply = deliver(server.addr, "test-0b7c", BODY).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, r#"{"status":"duplicate-ignored"}"#)
    );
    assert!(server.events.try_recv().is_err(), "a duplicate is not queued");
}

#[tokio::test]
async fn forged_and_incomplete_deliveries_are_refused() {
    let mut server = start(layer()).await;
    let forged = sign(b"not-the-secret", BODY.as_bytes());
    let reply = exchange(
        server.addr,
        request_head("test-forged", &forged, Some(BODY.len())),
        BODY.as_bytes(),
    )
    .await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (401, r#"{"error":"invalid signature"}"#)
    );

    let head = "POST /webhooks/klikit HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: 2\r\n\r\n";
    let reply = exchange(server.addr, head.to_owned(), b"{}").await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.body, r#"{"error":"missing header x-klikit-signature"}"#);

    // Re-serialised JSON (what naive receivers verify) does not match.
    let reserialised = serde_json::to_string(&serde_json::from_str::<serde_json::Value>(BODY).unwrap()).unwrap();
    assert_ne!(reserialised, BODY);
    let signature = sign(SECRET.as_bytes(), BODY.as_bytes());
    let head = request_head("test-reserialised", &signature, Some(reserialised.len()));
    assert_eq!(exchange(server.addr, head, reserialised.as_bytes()).await.status, 401);
    assert!(server.events.try_recv().is_err());
}

#[tokio::test]
async fn oversized_body_gets_a_readable_413_not_a_reset() {
    let server = start(layer()).await;
    // Larger than the kernel's loopback buffers would absorb without the
    // server reading: the sender can only finish writing if the layer drains.
    let body = vec![b' '; 6 * 1024 * 1024];
    let signature = sign(SECRET.as_bytes(), &body);
    let reply = exchange(
        server.addr,
        request_head("test-big", &signature, Some(body.len())),
        &body,
    )
    .await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.body, r#"{"error":"body exceeds the size limit"}"#);

    // Chunked, no length announced: cut off as soon as it passes the limit.
    let mut chunked = Vec::new();
    for _ in 0..96 {
        chunked.extend_from_slice(format!("{:x}\r\n", 64 * 1024).as_bytes());
        chunked.extend_from_slice(&[b' '; 64 * 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let reply = exchange(server.addr, request_head("test-chunked", &signature, None), &chunked).await;
    assert_eq!(reply.status, 413);
}

#[tokio::test]
async fn expect_continue_with_oversized_length_is_answered_before_the_body() {
    let server = start(layer()).await;
    let mut head = request_head("test-expect", &"0".repeat(64), Some(50 * 1024 * 1024));
    head.insert_str(head.len() - 2, "expect: 100-continue\r\n");
    // The sender waits for 100 Continue and never sends the 50 MiB.
    let reply = exchange(server.addr, head, b"").await;
    assert_eq!(reply.status, 413);
    assert!(!reply.head.contains("100 continue"), "{}", reply.head);
}

#[tokio::test]
async fn trickled_body_is_408() {
    let server = start(layer().with_body_timeout(Duration::from_millis(300))).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let signature = sign(SECRET.as_bytes(), BODY.as_bytes());
    stream
        .write_all(request_head("test-slow", &signature, Some(BODY.len())).as_bytes())
        .await
        .unwrap();
    stream.write_all(&BODY.as_bytes()[..10]).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

#[tokio::test]
async fn health_route_is_outside_the_layer() {
    let server = start(layer()).await;
    let reply = exchange(
        server.addr,
        "GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n".to_owned(),
        b"",
    )
    .await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "ok"));
}

/// `cargo test` builds the examples next to the test binaries' folder.
fn example_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    dir.join("examples").join(name)
}

#[test]
fn receiver_refuses_to_start_without_the_secret() {
    let binary = example_binary("receiver");
    assert!(binary.exists(), "{} was built by cargo test", binary.display());
    let output = std::process::Command::new(binary)
        .env_remove("KLIKIT_WEBHOOK_SECRET")
        .env("PORT", "0")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("KLIKIT_WEBHOOK_SECRET is not set"), "{stderr}");
}
