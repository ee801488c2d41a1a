//! Receive [Klikit](https://developer.klikit.io) order webhooks safely in any
//! tower-based server: axum, hyper, tonic.
//!
//! [`KlikitWebhookLayer`] reads the raw body under a size limit, verifies
//! `x-klikit-signature` (hex HMAC-SHA256 of the raw bytes) in constant time,
//! deduplicates on `x-klikit-event-id` with a two-phase claim in a pluggable
//! [`DedupStore`], and hands the handler a typed [`KlikitEvent`]. Handlers only
//! see authenticated events, each at most once while the store answers (the
//! exact limits are under [What is guaranteed, exactly](#what-is-guaranteed-exactly)),
//! and an event whose handler failed is processed again on Klikit's retry.
//!
//! # Quick start
//!
//! ```
//! use axum::{Router, body::Body, http::StatusCode, routing::post};
//! use klikit_webhook::{KlikitEvent, KlikitWebhookLayer, WebhookSecret, testing::signed_request};
//! use tower::ServiceExt;
//!
//! async fn handle(event: KlikitEvent) -> StatusCode {
//!     let envelope = event.payload().expect("documented envelope");
//!     println!("{}: {} order(s) for branch {}", event.event_type(), envelope.orders.len(), envelope.branch_id);
//!     StatusCode::OK
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let secret = WebhookSecret::new("a-long-random-webhook-secret").unwrap();
//! let app = Router::new()
//!     .route("/webhooks/klikit", post(handle))
//!     .layer(KlikitWebhookLayer::new(secret));
//!
//! let body = r#"{"brand_id":663,"branch_id":1062,"orders":[{"id":7585307,"status":5}]}"#;
//! let request = signed_request::<Body>("a-long-random-webhook-secret", "evt-1", "klikit.order.status.updated", body);
//! let response = app.clone().oneshot(request).await.unwrap();
//! assert_eq!(response.status(), StatusCode::OK);
//!
//! // Klikit retries with the same id: the handler is not called again.
//! let request = signed_request::<Body>("a-long-random-webhook-secret", "evt-1", "klikit.order.status.updated", body);
//! let response = app.oneshot(request).await.unwrap();
//! assert_eq!(response.status(), StatusCode::OK); // {"status":"duplicate-ignored"}
//! # }
//! ```
//!
//! # Answers
//!
//! | condition | status | handler called |
//! |---|---|---|
//! | method other than `POST` | 405 + `Allow: POST` | no |
//! | a Klikit header missing, empty, repeated or invalid | 400 | no |
//! | body over the limit (default 1 MiB) | 413 | no |
//! | body not received within the read timeout (default 5 s) | 408 | no |
//! | signature malformed or wrong | 401 `{"error":"invalid signature"}` | no |
//! | [per-subscription secrets](secrets): unknown subscription, or none named | 401, the same answer as a wrong signature, in the same time | no |
//! | timestamped [schemes](scheme) (`KlikitV1`, `StandardWebhooks`): signed timestamp stale or in the future beyond the tolerance (default 300 s) | 401 `{"error":"timestamp outside the tolerance"}` | no |
//! | `KlikitV1`: event id header differs from the signed body's `event_id` | 400 | no |
//! | event already processed | 200 `{"status":"duplicate-ignored"}` (another body than the processed one: the same, logged at `WARN` and counted as [`DuplicateBodyMismatch`](DeliveryOutcome::DuplicateBodyMismatch)) | no |
//! | event being processed by another delivery | 409 + `Retry-After` | no |
//! | dedup store failed or timed out | 503 + `Retry-After` | no (unless failing open) |
//! | [secret resolver](secrets::SecretResolver) failed or timed out | 503 + `Retry-After` | no |
//! | otherwise | the handler's answer; 2xx completes the claim, anything else releases it | yes |
//!
//! Klikit retries every non-2xx answer, so nothing refused here is lost.
//!
//! # Klikit Partner API v1, Standard Webhooks
//!
//! How a delivery is signed is a [`scheme`]: [`Klikit`](scheme::Klikit)
//! (today's contract, the default), [`KlikitV1`](scheme::KlikitV1) (Partner
//! API v1: `t=<unix>,v1=<hex>` over `<t>.<body>`, a replay window, the event
//! id signed inside the body, [typed v1 events](payload::v1)) and
//! [`StandardWebhooks`](scheme::StandardWebhooks). During Klikit's switch,
//! one route accepts both Klikit contracts:
//!
//! ```
//! use axum::{Router, body::Body, http::StatusCode, routing::post};
//! use klikit_webhook::{
//!     EventType, KlikitEvent, KlikitWebhookLayer, WebhookSecret,
//!     payload::v1::fixtures,
//!     scheme::{Klikit, KlikitV1, Outgoing, signed_request_with},
//!     testing::signed_request,
//! };
//! use tower::ServiceExt;
//!
//! async fn handle(event: KlikitEvent) -> StatusCode {
//!     match event.event_type() {
//!         EventType::OrderCreated => println!("{} order(s)", event.payload().unwrap().orders.len()),
//!         EventType::OrderPlacedV1 => println!("order {}", event.v1_payload().unwrap().data.short_id),
//!         other => println!("ignored: {other}"),
//!     }
//!     StatusCode::OK
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let secret = WebhookSecret::new("a-long-random-webhook-secret").unwrap();
//! let app = Router::new()
//!     .route("/webhooks/klikit", post(handle))
//!     .layer(KlikitWebhookLayer::new(secret.clone()).with_scheme(Klikit::new()).with_extra_scheme(KlikitV1::new()));
//!
//! let today = signed_request::<Body>("a-long-random-webhook-secret", "evt-1", "klikit.order.created.v2", r#"{"brand_id":1,"branch_id":2,"orders":[]}"#);
//! assert_eq!(app.clone().oneshot(today).await.unwrap().status(), StatusCode::OK);
//!
//! let v1 = Outgoing::new("0b6f3d2e-8c41-4a7f-9e15-3d27c8a4b901", "order.placed.v1", fixtures::ORDER_PLACED.as_bytes());
//! let v1 = signed_request_with::<Body>(&KlikitV1::new(), &secret, &v1);
//! assert_eq!(app.oneshot(v1).await.unwrap().status(), StatusCode::OK);
//! # }
//! ```
//!
//! Under v1 each business has its own secret: build the layer with
//! [`KlikitWebhookLayer::per_subscription`] and a [`SecretResolver`](secrets::SecretResolver).
//!
//! # How deduplication works
//!
//! ```text
//! Klikit            layer                         store              handler
//!   |-- POST id=E -->|-- claim(E+token, lease) ------>|                   |
//!   |                |<-- New ------------------------|                   |
//!   |                |-- request + KlikitEvent ------------------------->|
//!   |                |<-- 2xx -------------------------------------------|
//!   |                |-- complete(token, digest, 24h)>|                   |
//!   |<-- 2xx --------|                                |                   |
//!   |-- retry id=E ->|-- claim(E+token2) ------------>|                   |
//!   |<-- 200 duplicate-ignored <-- Done { digest } ---|                   |
//! ```
//!
//! A handler that fails (non-2xx, error, panic, dropped connection) releases
//! the claim, so the retry is processed. A process that dies holding a claim
//! leaves it to expire after the lease (default 60 s). Meanwhile a concurrent
//! delivery of the same id gets 409 and Klikit retries it later.
//!
//! The layer makes each claim's token before it calls the store. A claim the
//! layer stopped waiting for (store timeout, dropped request) may still land
//! in the store; the layer then releases that token in the background, so the
//! next retry after the store recovers is processed within seconds instead of
//! getting 409 for a whole lease. A `complete` or `release` that fails is
//! retried in the background, with jittered backoff, until it succeeds or the
//! lease (counted from the claim) would have ended; at most
//! [`MAX_BACKGROUND_TASKS`](KlikitWebhookLayer::MAX_BACKGROUND_TASKS) such
//! tasks run at once.
//!
//! # What is guaranteed, exactly
//!
//! Under the default [`StoreFailurePolicy::FailClosed`], with every instance
//! of the receiver sharing one store:
//!
//! - **At most once while the store answers.** For one event id, within the
//!   retention (24 h by default), the handler runs at most once, as long as
//!   the store answers the claim and the completion within the lease (60 s by
//!   default, counted from the claim). A concurrent copy gets 409 with
//!   `Retry-After`; a later copy gets `200 {"status":"duplicate-ignored"}`.
//! - **When it can run again.** Only (a) if the handler answered 2xx but the
//!   store stayed unreachable for the whole lease, so the completion could not
//!   be recorded (the layer retries it in the background until the lease
//!   ends, then logs at `ERROR`), and a copy arrives after that; or (b) if the
//!   handler was cancelled part-way (the connection dropped, the process was
//!   killed, the handler panicked) after doing some of its work: the claim is
//!   released, or expires, and Klikit's retry runs the handler again. Case (b)
//!   is **at-least-once**: make the handler's effects idempotent (order id plus
//!   `updated_at`), or hand the event to a durable queue whose enqueue is
//!   idempotent on the event id (crate `klikit-handoff`: the Postgres outbox
//!   enqueues and records the completion in one transaction; JetStream
//!   deduplicates on `Nats-Msg-Id`).
//! - **Nothing is lost by the layer.** Every refusal is a non-2xx answer,
//!   which Klikit retries, and a handler that fails releases its claim, so the
//!   retry runs it. What a handler acknowledged with 2xx before its work was
//!   durable (an in-memory queue, as the reference receiver's) is lost if the
//!   process dies in between: the layer cannot see past the 2xx.
//! - **Past the retention** the id is forgotten and a copy is processed again.
//! - [`StoreFailurePolicy::FailOpen`] gives up "at most once" while the store
//!   fails: every copy then reaches the handler.
//!
//! **Id suppression (today's contract).** The event id header is not signed.
//! Someone holding one captured, signed body can send it under an id Klikit
//! has not used yet; when Klikit later delivers a real event under that id,
//! the layer answers `duplicate-ignored` and the real event is not processed.
//! The layer keeps a digest (XXH3-128) of each processed body with its id, and a
//! copy whose body differs is still answered as a duplicate (so Klikit stops
//! retrying) but logged at `WARN` and counted under its own outcome,
//! `duplicate_body_mismatch`, so an operator sees it. The attack needs the
//! future id: ids that cannot be guessed (UUIDs, as Klikit's test deliveries
//! use) make it impractical, and
//! [`with_signature_dedup`](KlikitWebhookLayer::with_signature_dedup) also
//! refuses a known body under a new id, which narrows replays further. Under
//! [`KlikitV1`](scheme::KlikitV1) the id is read from the signed body, so the
//! hole is closed.
//!
//! # Other stacks
//!
//! The service accepts any request body and passes the inner service a
//! `Request<http_body_util::Full<Bytes>>`, so it fits a hyper `service_fn`,
//! `tower::ServiceBuilder` and tonic's layer stack as well as axum's
//! `Router::layer` and `Router::route_layer`. It needs a Tokio runtime with
//! timers enabled.
//!
//! In a tonic server the layer sees gRPC answers as HTTP: a gRPC error comes
//! back as HTTP 200 with a `grpc-status` header, so it completes the claim.
//! Serve the webhook on its own route (an axum router merged with tonic's
//! routes) rather than in front of gRPC services.
//!
//! # Choosing a store
//!
//! Every delivery costs two store operations (claim, then complete or
//! release); a duplicate costs one.
//!
//! | store | feature | shared by instances | survives restart | use it for |
//! |---|---|---|---|---|
//! | [`MemoryStore`] | always | no | no | tests, one instance that may re-process after a restart |
//! | `SqliteStore` | `sqlite` | processes on one host | yes | one host, no server to run (the example receiver's default) |
//! | `RedisStore` | `redis` | yes | with Redis persistence | several instances behind a load balancer |
//! | `PostgresStore` | `postgres` | yes | yes | several instances, and the outbox hand-off in the same database |
//!
//! A store of your own implements [`DedupStore`]; the [`store`] module docs
//! give the exact contract, and the `test-util` feature gives you the suite
//! the built-in stores pass.
//!
//! # Running several instances
//!
//! Klikit may deliver an event and its retry to different instances. Give
//! every instance the same secret and the same shared store (one Redis key
//! prefix or one Postgres table): the claim is atomic in the backend, so
//! exactly one instance runs the handler, a concurrent copy gets 409 and is
//! retried, and a later copy gets `duplicate-ignored`. An instance that dies
//! holding a claim blocks that event for at most the lease.
//!
//! # Secret rotation
//!
//! Klikit switches secrets with no overlap window. Deploy with the new secret
//! and the old one added with
//! [`with_secret`](KlikitWebhookLayer::with_secret), switch at Klikit, then
//! deploy without the old one. Both are tried on every delivery (constant
//! time, whichever matches); [`KlikitEvent::secret_index`] tells which one did.
//!
//! # Security model
//!
//! - The HMAC covers the raw body only; the body is verified before anything
//!   parses it, and the handler reads exactly the verified bytes.
//! - Signatures are compared in constant time over all 32 bytes, for every
//!   configured secret. The secret redacts itself in `Debug`, is zeroed on
//!   drop (and so are the keyed HMAC states made from it), and is never
//!   logged; nor are signatures or bodies. The layer marks
//!   `x-klikit-signature` sensitive for the layers inside it.
//! - Under today's contract the event id and type headers are not signed and
//!   there is no timestamp, so a captured delivery verifies for ever. Deduplication on the
//!   id stops a replay under the same id within the retention window;
//!   [`with_signature_dedup`](KlikitWebhookLayer::with_signature_dedup) also
//!   stops the same body under a new id. Beyond the retention window only
//!   idempotent handlers (order id plus `updated_at`) protect you.
//! - [`KlikitV1`](scheme::KlikitV1) and
//!   [`StandardWebhooks`](scheme::StandardWebhooks) sign a timestamp and
//!   refuse one more than the tolerance (300 s) away, after the signature
//!   matched; under v1 the deduplication id is the `event_id` inside the
//!   signed body, so a replay under a new header id is refused (400).
//! - With [secrets per subscription](secrets), an unknown subscription is
//!   refused like a forgery, the body hashed under a decoy key.
//! - Bodies are bounded in size and time; oversized bodies are drained (up to
//!   8 MiB) so the sender reads the 413 instead of a connection reset.
//!
//! # Features
//!
//! | feature | default | enables |
//! |---|---|---|
//! | `axum` | yes | the `KlikitEvent` and `KlikitPayload` extractors |
//! | `sqlite` | no | `SqliteStore`: an embedded, persistent dedup store (bundled SQLite via rusqlite, one writer thread with group commit) |
//! | `redis` | no | `RedisStore`: a dedup store shared by every instance, in Redis |
//! | `postgres` | no | `PostgresStore`: a dedup store shared by every instance, in a Postgres table (tokio-postgres, deadpool-postgres pool) |
//! | `test-util` | no | `testing`: `signed_request` (a delivery as Klikit sends it) and `conformance`, the test suite for dedup stores |
//! | `metrics` | no | per-outcome counters and a latency histogram through the `metrics` facade ([`metrics`]) |
//! | `tonic` | no | [`FromJson`] for `tonic::body::Body`, to stack the layer in a tonic server |
//! | `full` | no | all of the above |

#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod error;
mod event;
#[cfg(feature = "axum")]
mod extract;
pub mod fixtures;
mod layer;
pub mod metrics;
mod outcome;
pub mod payload;
mod rejection;
pub mod scheme;
mod secret;
pub mod secrets;
mod service;
pub mod signature;
pub mod store;
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod testing;

pub use error::ConfigError;
pub use event::{EventId, EventType, InvalidEventId, KlikitEvent, MAX_EVENT_ID_LEN};
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use extract::{KlikitPayload, MissingWebhookLayer, PayloadRejection};
pub use layer::{KlikitWebhookLayer, StoreFailurePolicy};
pub use outcome::DeliveryOutcome;
pub use rejection::{FromJson, Rejection, RejectionKind};
pub use scheme::klikit::{EVENT_ID_HEADER, EVENT_TYPE_HEADER, SIGNATURE_HEADER};
pub use secret::{RECOMMENDED_MIN_SECRET_LEN, SECRET_ENV_VAR, STANDARD_WEBHOOKS_PREFIX, WebhookSecret};
pub use service::{KlikitWebhookService, ResponseFuture};
// The stores' own items carry their `doc(cfg)`; the re-exports inherit it.
#[cfg(feature = "postgres")]
pub use store::PostgresStore;
#[cfg(feature = "redis")]
pub use store::RedisStore;
#[cfg(feature = "sqlite")]
pub use store::SqliteStore;
pub use store::{DedupStore, MemoryStore, StoreError};
