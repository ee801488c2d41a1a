//! The layer on every tower stack: a plain hyper 1 server, tonic's layer
//! stack, axum's `Router::route_layer` and `Router::layer`, and a bare
//! `tower::ServiceBuilder`; plus `poll_ready` back-pressure and `Clone`.

use std::{
    collections::VecDeque,
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
    service::TowerToHyperService,
};
use klikit_webhook::{
    EventType, KlikitEvent, KlikitWebhookLayer, Rejection, RejectionKind, WebhookSecret, signature::SignatureError,
    testing::signed_request,
};
use tokio::net::TcpListener;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

const SECRET: &str = "stacks-test-secret-0123456789";
const WRONG_SECRET: &str = "not-the-secret-klikit-issued";
const ORDER_STATUS: &str = EventType::ORDER_STATUS_UPDATED;
const BODY: &str = r#"{"brand_id":663,"branch_id":1062,"orders":[{"id":7585307,"external_id":"ABC-123","status":5,"total":"84.50","some_future_field":{"ignored":true}}]}"#;
const RECEIVED: &str = r#"{"status":"received"}"#;
const DUPLICATE: &str = r#"{"status":"duplicate-ignored"}"#;

fn layer() -> KlikitWebhookLayer {
    KlikitWebhookLayer::new(WebhookSecret::new(SECRET).unwrap())
}

fn signed(event_id: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    signed_request::<Full<Bytes>>(SECRET, event_id, ORDER_STATUS, body)
}

fn forged(event_id: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    signed_request::<Full<Bytes>>(WRONG_SECRET, event_id, ORDER_STATUS, body)
}

fn unsigned(event_id: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    let mut request = signed(event_id, body);
    request.headers_mut().remove("x-klikit-signature");
    request
}

async fn collect<B>(body: B) -> Bytes
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    body.collect().await.unwrap().to_bytes()
}

/// What a handler saw.
#[derive(Debug, Clone)]
struct Seen {
    id: String,
    event_type: String,
    secret_index: usize,
    /// The request body the handler read.
    body: Bytes,
    /// `KlikitEvent::body()`.
    event_body: Bytes,
}

#[derive(Debug, Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Seen>>>);

impl Recorder {
    fn seen(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }

    /// The handler: records the event and the body, answers 200, or 500 when
    /// the layer did not insert a `KlikitEvent`.
    async fn handle(self, request: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
        let event = request.extensions().get::<KlikitEvent>().cloned();
        let body = collect(request.into_body()).await;
        let Some(event) = event else {
            let mut response = Response::new(Full::from("no KlikitEvent in the extensions"));
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            return Ok(response);
        };
        self.0.lock().unwrap().push(Seen {
            id: event.id().to_string(),
            event_type: event.event_type().to_string(),
            secret_index: event.secret_index(),
            body,
            event_body: event.body().clone(),
        });
        Ok(Response::new(Full::from(RECEIVED)))
    }
}

// ---------------------------------------------------------------------------
// (a) a plain hyper 1 server on a real socket
// ---------------------------------------------------------------------------

/// Serves `service` with hyper's HTTP/1 connection builder on 127.0.0.1.
async fn serve_http1<S>(service: S) -> SocketAddr
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<Full<Bytes>>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = service.clone();
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    mut request: Request<Full<Bytes>>,
) -> (StatusCode, HeaderMap, Bytes) {
    let path = request.uri().path().to_owned();
    *request.uri_mut() = format!("http://{addr}{path}").parse().unwrap();
    let response = client.request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (parts.status, parts.headers, collect(body).await)
}

/// The scenario every hyper server must pass: signed, duplicate, forged.
async fn hyper_scenario(addr: SocketAddr, recorder: &Recorder, prefix: &str) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let id = format!("{prefix}-evt-1");

    // A forged delivery does not reach the handler and does not burn the id.
    let (status, headers, body) = send(&client, addr, forged(&id, BODY)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(body, r#"{"error":"invalid signature"}"#);
    assert!(recorder.seen().is_empty());

    let (status, _, body) = send(&client, addr, signed(&id, BODY)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, RECEIVED);
    let seen = recorder.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].id, id);
    assert_eq!(seen[0].event_type, ORDER_STATUS);
    assert_eq!(seen[0].secret_index, 0);
    assert_eq!(seen[0].body, BODY.as_bytes());
    assert_eq!(seen[0].event_body, BODY.as_bytes());

    // Klikit's retry with the same id.
    let (status, headers, body) = send(&client, addr, signed(&id, BODY)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(body, DUPLICATE);
    assert_eq!(recorder.seen().len(), 1, "a duplicate must not reach the handler");

    // Forged again, on a now processed id: still 401, not "duplicate".
    let (status, _, _) = send(&client, addr, forged(&id, BODY)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Unsigned: 400.
    let (status, _, body) = send(&client, addr, unsigned(&format!("{prefix}-evt-2"), BODY)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body, r#"{"error":"missing header x-klikit-signature"}"#);
    assert_eq!(recorder.seen().len(), 1);
}

#[tokio::test]
async fn hyper_server_with_tower_to_hyper_service() {
    let recorder = Recorder::default();
    let handler = recorder.clone();
    let service = ServiceBuilder::new()
        .layer(layer())
        .service_fn(move |request| handler.clone().handle(request));
    let addr = serve_http1(TowerToHyperService::new(service)).await;
    hyper_scenario(addr, &recorder, "tower-to-hyper").await;
}

#[tokio::test]
async fn hyper_server_with_hyper_service_fn() {
    let recorder = Recorder::default();
    let handler = recorder.clone();
    let layered = ServiceBuilder::new()
        .layer(layer())
        .service_fn(move |request| handler.clone().handle(request));
    let service = hyper::service::service_fn(move |request: Request<Incoming>| layered.clone().oneshot(request));
    let addr = serve_http1(service).await;
    hyper_scenario(addr, &recorder, "hyper-service-fn").await;
}

// ---------------------------------------------------------------------------
// (b) tonic's layer stack, HTTP/2 on a real socket
// ---------------------------------------------------------------------------

#[cfg(feature = "tonic")]
mod tonic_stack {
    use std::future::Future;

    use tonic::{body::Body as TonicBody, server::NamedService, transport::server::TcpIncoming};

    use super::*;

    /// A hand-written gRPC-style service: answers with `x-event-present` and
    /// echoes the event id and the body it read.
    #[derive(Debug, Clone, Default)]
    struct Echo {
        calls: Arc<AtomicUsize>,
    }

    impl NamedService for Echo {
        const NAME: &'static str = "klikit.test.Echo";
    }

    impl Service<Request<TonicBody>> for Echo {
        type Response = Response<TonicBody>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Request<TonicBody>) -> Self::Future {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                let event = request.extensions().get::<KlikitEvent>().cloned();
                let body = collect(request.into_body()).await;
                let present = event.is_some();
                let echo = match &event {
                    Some(event) if event.body() == &body => format!("{}:{}", event.id(), body.len()),
                    Some(_) => "event body differs from request body".to_owned(),
                    None => "no event".to_owned(),
                };
                let mut response = Response::new(TonicBody::new(Full::new(Bytes::from(echo))));
                response.headers_mut().insert(
                    "x-event-present",
                    if present { "true" } else { "false" }.parse().unwrap(),
                );
                Ok(response)
            })
        }
    }

    #[tokio::test]
    async fn tonic_server_layer_stack() {
        let echo = Echo::default();
        let incoming = TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = incoming.local_addr().unwrap();
        let router = tonic::transport::Server::builder()
            .layer(layer())
            .add_service(echo.clone());
        tokio::spawn(router.serve_with_incoming(incoming));

        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http::<Full<Bytes>>();
        let path = "/klikit.test.Echo/Deliver";
        let at = |mut request: Request<Full<Bytes>>| {
            *request.uri_mut() = path.parse().unwrap();
            request
        };

        let (status, headers, body) = send(&client, addr, at(signed("tonic-evt-1", BODY))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-event-present"], "true");
        assert_eq!(body, format!("tonic-evt-1:{}", BODY.len()));
        assert_eq!(echo.calls.load(Ordering::SeqCst), 1);

        let (status, headers, body) = send(&client, addr, at(unsigned("tonic-evt-2", BODY))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(body, r#"{"error":"missing header x-klikit-signature"}"#);
        assert_eq!(
            echo.calls.load(Ordering::SeqCst),
            1,
            "unsigned must not reach the service"
        );

        let (status, _, _) = send(&client, addr, at(forged("tonic-evt-3", BODY))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        let (status, _, body) = send(&client, addr, at(signed("tonic-evt-1", BODY))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, DUPLICATE);
        assert_eq!(echo.calls.load(Ordering::SeqCst), 1);
    }
}

// ---------------------------------------------------------------------------
// (c) axum `route_layer` vs `layer`, and a bare `ServiceBuilder` with `oneshot`
// ---------------------------------------------------------------------------

#[cfg(feature = "axum")]
mod axum_stack {
    use axum::{
        Router,
        routing::{get, post},
    };

    use klikit_webhook::testing::WEBHOOK_PATH;

    use super::*;

    async fn axum_handler(event: KlikitEvent, body: Bytes) -> (StatusCode, String) {
        if event.body() != &body {
            return (StatusCode::INTERNAL_SERVER_ERROR, "body differs".to_owned());
        }
        (StatusCode::OK, format!("{}:{}", event.id(), body.len()))
    }

    async fn call_router(app: &Router, request: Request<Full<Bytes>>) -> (StatusCode, Bytes) {
        let request = request.map(axum::body::Body::new);
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        (status, collect(response.into_body()).await)
    }

    fn at(path: &str, mut request: Request<Full<Bytes>>) -> Request<Full<Bytes>> {
        *request.uri_mut() = path.parse().unwrap();
        request
    }

    #[tokio::test]
    async fn axum_route_layer_guards_only_matched_routes() {
        let app = Router::new()
            .route(WEBHOOK_PATH, post(axum_handler))
            .route_layer(layer())
            .route("/healthz", get(|| async { "ok" }));

        let (status, body) = call_router(&app, signed("route-layer-1", BODY)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, format!("route-layer-1:{}", BODY.len()));

        let (status, body) = call_router(&app, signed("route-layer-1", BODY)).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, DUPLICATE.as_bytes()));

        let (status, _) = call_router(&app, unsigned("route-layer-2", BODY)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = call_router(&app, forged("route-layer-3", BODY)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        // Routes added after `route_layer`, and unmatched paths, are not guarded.
        let healthz = Request::get("/healthz").body(Full::default()).unwrap();
        let (status, body) = call_router(&app, healthz).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
        let (status, _) = call_router(&app, at("/elsewhere", unsigned("route-layer-4", BODY))).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn axum_layer_guards_every_request() {
        let app = Router::new()
            .route(WEBHOOK_PATH, post(axum_handler))
            .route("/healthz", get(|| async { "ok" }))
            .layer(layer());

        let (status, body) = call_router(&app, signed("layer-1", BODY)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, format!("layer-1:{}", BODY.len()));

        // With `Router::layer` even unmatched paths and other routes are checked:
        // a GET is refused before its headers are read (405, it was 400 for the
        // missing headers until non-POST requests got their own answer).
        let healthz = Request::get("/healthz").body(Full::default()).unwrap();
        let (status, _) = call_router(&app, healthz).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        let (status, _) = call_router(&app, at("/elsewhere", unsigned("layer-2", BODY))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        // A signed delivery to an unmatched path gets the router's 404; the
        // claim is released, so the same event is processed on the right path.
        let (status, _) = call_router(&app, at("/elsewhere", signed("layer-3", BODY))).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, body) = call_router(&app, signed("layer-3", BODY)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, format!("layer-3:{}", BODY.len()));
    }
}

/// A body that arrives in several frames, then trailers.
struct Frames(VecDeque<Frame<Bytes>>);

impl Frames {
    fn new(chunks: &[&'static [u8]]) -> Self {
        let mut frames: VecDeque<_> = chunks
            .iter()
            .map(|chunk| Frame::data(Bytes::from_static(chunk)))
            .collect();
        let mut trailers = HeaderMap::new();
        trailers.insert("x-trailer", "ignored".parse().unwrap());
        frames.push_back(Frame::trailers(trailers));
        Self(frames)
    }
}

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(Ok))
    }
}

#[tokio::test]
async fn service_builder_oneshot_with_any_request_and_response_body() {
    // Request body `String`, response body `String`.
    let service = ServiceBuilder::new()
        .layer(layer())
        .service_fn(|request: Request<Full<Bytes>>| async move {
            let event = request.extensions().get::<KlikitEvent>().cloned().unwrap();
            let body = collect(request.into_body()).await;
            assert_eq!(event.body(), &body);
            Ok::<_, Infallible>(Response::new(String::from_utf8(body.to_vec()).unwrap()))
        });
    let request = signed("builder-string-1", BODY).map(|_| String::from(BODY));
    let response = service.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.into_body(), BODY);
    let request = forged("builder-string-2", BODY).map(|_| String::from(BODY));
    let response = service.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.into_body(), r#"{"error":"invalid signature"}"#);

    // A body in several frames with trailers: the handler gets the same bytes.
    let chunks: [&'static [u8]; 3] = [b"{\"brand_id\":663,", b"\"branch_id\":1062,", b"\"orders\":[]}"];
    let whole: Vec<u8> = chunks.concat();
    let request = signed("builder-frames-1", whole.clone()).map(|_| Frames::new(&chunks));
    let response = service.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.into_body().as_bytes(), &whole[..]);

    // Response body `BoxBody`: the layer's own answers use it too.
    let boxed = ServiceBuilder::new()
        .layer(layer())
        .service_fn(|request: Request<Full<Bytes>>| async move {
            let body = BoxBody::new(request.into_body());
            Ok::<_, Infallible>(Response::new(body))
        });
    let response = boxed.clone().oneshot(signed("builder-box-1", BODY)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(collect(response.into_body()).await, BODY);
    let response = boxed.clone().oneshot(signed("builder-box-1", BODY)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(collect(response.into_body()).await, DUPLICATE);
    let response = boxed.oneshot(forged("builder-box-2", BODY)).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let rejection = response.extensions().get::<Rejection>().cloned().unwrap();
    assert_eq!(
        rejection.kind(),
        &RejectionKind::InvalidSignature(SignatureError::Mismatch)
    );
}

#[tokio::test]
async fn inner_error_is_returned_and_releases_the_claim() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let service = ServiceBuilder::new()
        .layer(layer())
        .service_fn(move |_request: Request<Full<Bytes>>| {
            let call = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if call == 0 {
                    Err("handler failed")
                } else {
                    Ok(Response::new(Full::from(RECEIVED)))
                }
            }
        });
    let error = service.clone().oneshot(signed("error-1", BODY)).await.unwrap_err();
    assert_eq!(error, "handler failed");
    let response = service.clone().oneshot(signed("error-1", BODY)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(collect(response.into_body()).await, RECEIVED);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the retry after an error is processed");
}

// ---------------------------------------------------------------------------
// (d) `poll_ready` is honoured
// ---------------------------------------------------------------------------

/// A service that is not ready until `open`, and fails readiness when `broken`.
#[derive(Debug, Clone, Default)]
struct Gate {
    open: Arc<AtomicBool>,
    broken: Arc<AtomicBool>,
    waker: Arc<Mutex<Option<Waker>>>,
    calls: Arc<AtomicUsize>,
}

impl Gate {
    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
        if let Some(waker) = self.waker.lock().unwrap().take() {
            waker.wake();
        }
    }
}

impl Service<Request<Full<Bytes>>> for Gate {
    type Response = Response<Full<Bytes>>;
    type Error = &'static str;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.broken.load(Ordering::SeqCst) {
            return Poll::Ready(Err("inner service broken"));
        }
        if self.open.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        *self.waker.lock().unwrap() = Some(cx.waker().clone());
        Poll::Pending
    }

    fn call(&mut self, _request: Request<Full<Bytes>>) -> Self::Future {
        assert!(self.open.load(Ordering::SeqCst), "called while not ready");
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(Response::new(Full::from(RECEIVED))))
    }
}

type Req = Request<Full<Bytes>>;

#[tokio::test]
async fn poll_ready_forwards_pending_ready_and_errors() {
    let gate = Gate::default();
    let mut service = layer().layer(gate.clone());

    let mut cx = Context::from_waker(Waker::noop());
    assert!(Service::<Req>::poll_ready(&mut service, &mut cx).is_pending());
    let not_ready = tokio::time::timeout(Duration::from_millis(50), ServiceExt::<Req>::ready(&mut service)).await;
    assert!(
        not_ready.is_err(),
        "the layered service must not be ready while the inner is not"
    );

    // Opening the gate wakes the task that waits for readiness.
    let opener = gate.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        opener.open();
    });
    tokio::time::timeout(Duration::from_secs(5), ServiceExt::<Req>::ready(&mut service))
        .await
        .expect("ready after the inner service became ready")
        .unwrap();
    let response = service.call(signed("gate-1", BODY)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(gate.calls.load(Ordering::SeqCst), 1);

    // Readiness errors are the inner service's errors.
    gate.broken.store(true, Ordering::SeqCst);
    let error = ServiceExt::<Req>::ready(&mut service).await.unwrap_err();
    assert_eq!(error, "inner service broken");
}

#[tokio::test]
async fn concurrency_limit_held_busy_makes_the_layered_service_not_ready() {
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel::<String>();
    let gate = release.clone();
    let stack =
        ServiceBuilder::new()
            .layer(layer())
            .concurrency_limit(1)
            .service_fn(move |request: Request<Full<Bytes>>| {
                let gate = gate.clone();
                let entered = entered_tx.clone();
                async move {
                    let id = request.extensions().get::<KlikitEvent>().unwrap().id().to_string();
                    entered.send(id).unwrap();
                    gate.acquire().await.unwrap().forget();
                    Ok::<_, Infallible>(Response::new(Full::from(RECEIVED)))
                }
            });

    let mut first = stack.clone();
    ServiceExt::<Req>::ready(&mut first).await.unwrap();
    let busy = tokio::spawn(first.call(signed("busy-1", BODY)));
    assert_eq!(entered.recv().await.as_deref(), Some("busy-1"));

    // The only permit is held by the request in flight.
    let mut second = stack.clone();
    let waited = tokio::time::timeout(Duration::from_millis(100), ServiceExt::<Req>::ready(&mut second)).await;
    assert!(waited.is_err(), "ready while the inner concurrency limit is exhausted");
    // The service left behind by `call` is not ready either.
    let waited = tokio::time::timeout(Duration::from_millis(50), ServiceExt::<Req>::ready(&mut first)).await;
    assert!(waited.is_err());
    // Its pending acquire sits in the semaphore's fair queue and would take
    // the next free permit: drop it.
    drop(first);

    release.add_permits(1);
    let response = busy.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    tokio::time::timeout(Duration::from_secs(5), ServiceExt::<Req>::ready(&mut second))
        .await
        .expect("ready once the first request finished")
        .unwrap();
    // A rejected request gives its permit back without calling the handler.
    let response = second.call(forged("busy-2", BODY)).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let mut third = stack.clone();
    tokio::time::timeout(Duration::from_secs(5), ServiceExt::<Req>::ready(&mut third))
        .await
        .expect("a rejection releases the permit")
        .unwrap();
    release.add_permits(1);
    let response = third.call(signed("busy-3", BODY)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(entered.recv().await.as_deref(), Some("busy-3"));
}

// ---------------------------------------------------------------------------
// (e) Clone
// ---------------------------------------------------------------------------

fn assert_clone_send_sync<T: Clone + Send + Sync + 'static>(_: &T) {}
fn assert_send<T: Send>(_: &T) {}

#[tokio::test]
async fn service_is_clone_and_clones_share_the_store() {
    let recorder = Recorder::default();
    let handler = recorder.clone();
    let service = ServiceBuilder::new()
        .layer(layer())
        .service_fn(move |request| handler.clone().handle(request));
    assert_clone_send_sync(&service);
    #[cfg(feature = "axum")]
    {
        let router_service: klikit_webhook::KlikitWebhookService<axum::Router> = layer().layer(axum::Router::new());
        assert_clone_send_sync(&router_service);
    }

    let clone = service.clone();
    let future = clone.oneshot(signed("clone-1", BODY));
    assert_send(&future);
    let response = future.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(collect(response.into_body()).await, RECEIVED);

    // The original and every clone see the same dedup store.
    let response = service.clone().oneshot(signed("clone-1", BODY)).await.unwrap();
    assert_eq!(collect(response.into_body()).await, DUPLICATE);
    let mut original = service;
    let response = ServiceExt::<Req>::ready(&mut original)
        .await
        .unwrap()
        .call(signed("clone-2", BODY))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let ids: Vec<_> = recorder.seen().into_iter().map(|seen| seen.id).collect();
    assert_eq!(ids, ["clone-1", "clone-2"]);
}
