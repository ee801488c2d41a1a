//! At every level, the layer's logs name outcomes but never the secret, the
//! signature or the body.

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use axum::{Router, body::Body, http::StatusCode, routing::post};
use klikit_webhook::{KlikitEvent, KlikitWebhookLayer, WebhookSecret, signature::sign, testing::signed_request};
use tower::ServiceExt;

const SECRET: &str = "logging-test-secret-0123456789";
const BODY: &str = r#"{"brand_id":663,"branch_id":1062,"orders":[{"id":424242,"external_id":"BODY-MARKER"}]}"#;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn logs_at_trace_level_never_contain_secret_signature_or_body() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let layer = KlikitWebhookLayer::new(WebhookSecret::new(SECRET).unwrap());
    let secret_debug = format!("{layer:?}");
    tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            async fn handle(_: KlikitEvent) -> StatusCode {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            let app = Router::new().route("/webhooks/klikit", post(handle)).layer(layer);
            let created = "klikit.order.created.v2";
            let mut forged = signed_request::<Body>(SECRET, "evt-forged", created, BODY);
            forged.headers_mut().insert(
                "x-klikit-signature",
                sign(b"other-secret", BODY.as_bytes()).parse().unwrap(),
            );
            let requests = vec![
                signed_request::<Body>(SECRET, "evt-ok", created, BODY),
                forged,
                signed_request::<Body>(SECRET, "evt-other", "klikit.unknown", BODY),
            ];
            for request in requests {
                app.clone().oneshot(request).await.unwrap();
            }
        });
    });
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("evt-ok") && logs.contains("rejected"),
        "the outcomes are logged:\n{logs}"
    );
    let signature = sign(SECRET.as_bytes(), BODY.as_bytes());
    for secret_thing in [SECRET, signature.as_str(), &signature[..16], "BODY-MARKER", "424242"] {
        assert!(
            !logs.contains(secret_thing),
            "{secret_thing} leaked into the logs:\n{logs}"
        );
    }
    assert!(!secret_debug.contains(SECRET), "{secret_debug}");
}
