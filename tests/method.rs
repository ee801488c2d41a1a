//! A request that is not a `POST` gets `405 Method Not Allowed` with
//! `Allow: POST`, never the handler, whether the layer sits on the whole
//! router (`Router::layer`: the layer answers, before it reads the Klikit
//! headers or the body) or on the route (`Router::route_layer`: axum's method
//! router answers and the layer never sees the request).

#![cfg(feature = "axum")]

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use axum::{Router, body::Body, routing::post};
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body::Frame;
use http_body_util::BodyExt;
use klikit_webhook::{
    DeliveryOutcome, EventType, KlikitEvent, KlikitWebhookLayer, Rejection, RejectionKind, WebhookSecret,
    testing::{WEBHOOK_PATH, signed_request},
};
use tower::ServiceExt;

const SECRET: &str = "method-test-secret-0123456789";
const BODY: &str = r#"{"brand_id":663,"branch_id":1062,"orders":[]}"#;
const NOT_POST: [Method; 6] = [
    Method::GET,
    Method::HEAD,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::OPTIONS,
];

fn layer() -> KlikitWebhookLayer {
    KlikitWebhookLayer::new(WebhookSecret::new(SECRET).unwrap())
}

/// The webhook route with a handler that counts its calls, the layer applied
/// with `Router::layer` or `Router::route_layer`.
fn app(route_layer: bool, calls: &Arc<AtomicUsize>) -> Router {
    let calls = Arc::clone(calls);
    let router = Router::new().route(
        WEBHOOK_PATH,
        post(move |event: KlikitEvent| async move {
            calls.fetch_add(1, Ordering::SeqCst);
            event.id().to_string()
        }),
    );
    if route_layer {
        router.route_layer(layer())
    } else {
        router.layer(layer())
    }
}

/// A genuine delivery of `id`, sent with `method`.
fn delivery(method: Method, id: &str) -> Request<Body> {
    let mut request = signed_request::<Body>(SECRET, id, EventType::ORDER_CREATED, BODY);
    *request.method_mut() = method;
    request
}

struct Answer {
    status: StatusCode,
    allow: Option<String>,
    content_type: Option<String>,
    rejection: Option<Rejection>,
    body: Bytes,
}

async fn send(app: &Router, request: Request<Body>) -> Answer {
    let response = app.clone().oneshot(request).await.unwrap();
    let header = |name| {
        response
            .headers()
            .get(name)
            .map(|value: &http::HeaderValue| value.to_str().unwrap().to_owned())
    };
    let (status, allow, content_type) = (response.status(), header(header::ALLOW), header(header::CONTENT_TYPE));
    let rejection = response.extensions().get::<Rejection>().cloned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        allow,
        content_type,
        rejection,
        body,
    }
}

#[tokio::test]
async fn router_layer_answers_405_with_allow_post_and_a_json_body() {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = app(false, &calls);
    for method in NOT_POST {
        // Without the Klikit headers (a browser, a health checker, a scanner).
        let bare = Request::builder()
            .method(method.clone())
            .uri(WEBHOOK_PATH)
            .body(Body::empty())
            .unwrap();
        // And with a genuine delivery's headers and body.
        for (what, request) in [("bare", bare), ("signed", delivery(method.clone(), "evt-405"))] {
            let answer = send(&app, request).await;
            assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {what}");
            assert_eq!(answer.allow.as_deref(), Some("POST"), "{method} {what}");
            assert_eq!(
                answer.content_type.as_deref(),
                Some("application/json"),
                "{method} {what}"
            );
            // axum sends no body in answer to a HEAD.
            if method != Method::HEAD {
                assert_eq!(
                    &answer.body[..],
                    br#"{"error":"method not allowed"}"#,
                    "{method} {what}"
                );
            }
            let rejection = answer.rejection.expect("the rejection is in the extensions");
            assert_eq!(
                rejection.kind(),
                &RejectionKind::MethodNotAllowed { method: method.clone() }
            );
            assert_eq!(rejection.outcome(), DeliveryOutcome::BadRequest);
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the handler never ran");

    // Nothing was claimed: the POST of the same event is processed.
    let answer = send(&app, delivery(Method::POST, "evt-405")).await;
    assert_eq!((answer.status, &answer.body[..]), (StatusCode::OK, &b"evt-405"[..]));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn route_layer_gets_axums_405_with_allow_post() {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = app(true, &calls);
    for method in NOT_POST {
        let answer = send(&app, delivery(method.clone(), "evt-route-405")).await;
        assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(answer.allow.as_deref(), Some("POST"), "{method}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the handler never ran");
    let answer = send(&app, delivery(Method::POST, "evt-route-405")).await;
    assert_eq!(answer.status, StatusCode::OK);
}

/// A body in frames that records whether it was read to its end.
struct Watched {
    frames: VecDeque<Bytes>,
    ended: Arc<AtomicBool>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = self.frames.pop_front();
        if frame.is_none() {
            self.ended.store(true, Ordering::SeqCst);
        }
        Poll::Ready(frame.map(|data| Ok(Frame::data(data))))
    }
}

#[tokio::test]
async fn the_body_of_a_refused_method_is_drained_like_any_refusal() {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = app(false, &calls);
    let ended = Arc::new(AtomicBool::new(false));
    let (parts, _) = delivery(Method::PUT, "evt-drained").into_parts();
    let body = Watched {
        frames: [Bytes::from_static(b"{\"brand_id\":"), Bytes::from_static(b"1}")].into(),
        ended: Arc::clone(&ended),
    };
    let answer = send(&app, Request::from_parts(parts, Body::new(body))).await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(ended.load(Ordering::SeqCst), "the body was read to its end");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}
