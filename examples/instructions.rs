//! Instruction counts of the layer per delivery, for before/after comparisons
//! that do not depend on machine load: run under
//! `valgrind --tool=callgrind` with N and 2N deliveries and take the
//! difference divided by N (start-up cancels out). Drives N signed 1 KiB deliveries through the layer (or a bare router with
//! `bare`) on a current-thread runtime, for instruction counts under callgrind.
use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode},
    routing::post,
};
use klikit_webhook::{KlikitWebhookLayer, WebhookSecret, signature::sign};
use tower::ServiceExt;

const SECRET: &str = "bench-secret-0123456789abcdef0123456789";

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "layer".into());
    let n: usize = args.next().map(|v| v.parse().unwrap()).unwrap_or(2000);
    let body = format!(
        r#"{{"brand_id":663,"branch_id":1062,"orders":[{{"id":7585307,"status":2,"total":"84.50","note":"{}"}}]}}"#,
        "x".repeat(900)
    );
    let sig = sign(SECRET.as_bytes(), body.as_bytes());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let route = Router::new().route(
            "/webhooks/klikit",
            post(|_b: axum::body::Bytes| async { StatusCode::OK }),
        );
        let app = if mode == "bare" {
            route
        } else {
            route.layer(KlikitWebhookLayer::new(WebhookSecret::new(SECRET).unwrap()))
        };
        for i in 0..n {
            let req = Request::post("/webhooks/klikit")
                .header("content-type", "application/json")
                .header("x-klikit-signature", sig.as_str())
                .header("x-klikit-event-id", format!("evt-{i}"))
                .header("x-klikit-event-type", "klikit.order.created.v2")
                .body(Body::from(body.clone()))
                .unwrap();
            let res = app.clone().oneshot(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
        }
    });
}
