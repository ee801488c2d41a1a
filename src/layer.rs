//! [`KlikitWebhookLayer`]: the configuration and its builder.

use std::{fmt, sync::Arc, time::Duration};

use tower_layer::Layer;

use crate::{
    KlikitWebhookService, MemoryStore, WebhookSecret,
    scheme::{Klikit, KlikitV1, Scheme, Schemes},
    secrets::{SecretResolver, SecretSource},
    service::Background,
    signature::Verifier,
    store::DedupStore,
};

/// What the layer does when the dedup store fails or times out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StoreFailurePolicy {
    /// Answer 503 with `Retry-After` and do not call the handler; Klikit
    /// retries later. Nothing is processed twice and nothing is lost, as long
    /// as the store comes back before Klikit gives up. The default.
    #[default]
    FailClosed,
    /// Call the handler anyway, without a claim and without recording the
    /// event. **Risk:** while the store is down, every retry and every
    /// concurrent duplicate reaches the handler, so events can be processed
    /// more than once. Choose it only if your handlers are idempotent.
    FailOpen,
}

/// Tower layer that verifies, deduplicates and types Klikit webhooks.
///
/// For every request the service:
/// 1. requires `POST` (405 with `Allow: POST` otherwise);
/// 2. reads the headers of the delivery's [scheme](crate::scheme) (by
///    default today's contract: `x-klikit-signature`, `x-klikit-event-id` and
///    `x-klikit-event-type`; 400 when one is missing);
/// 3. reads the raw body under [`with_body_limit`](Self::with_body_limit)
///    (413) and [`with_body_timeout`](Self::with_body_timeout) (408);
/// 4. checks the HMAC-SHA256 signature in constant time against every
///    configured secret, or the [subscription's](crate::secrets) (401), then
///    the signed timestamp of schemes that have one (401), then the id to
///    deduplicate on (400 when the header and the signed body disagree);
/// 5. claims the event id in the [store](Self::with_store): a processed event
///    gets `200 {"status":"duplicate-ignored"}`, an event in flight gets 409
///    with `Retry-After`, a store failure 503 with `Retry-After`;
/// 6. calls the inner service with a [`KlikitEvent`](crate::KlikitEvent) in the
///    request extensions and the same bytes as the request body; a 2xx answer
///    completes the claim, anything else (or an error, a panic, a dropped
///    connection) releases it so Klikit's retry is processed.
///
/// Every default is chosen to be safe; see each `with_*` method.
///
/// # Panics
///
/// The service uses Tokio timers for the body read timeout and the store
/// timeout, so it must run inside a Tokio runtime with time enabled (as
/// `#[tokio::main]`, `axum::serve` and tonic provide); on a runtime built
/// without `enable_time`/`enable_all` it panics, like tower-http's timeout
/// layers.
///
/// # Examples
///
/// ```
/// use axum::{Router, routing::post};
/// use klikit_webhook::{KlikitEvent, KlikitWebhookLayer, WebhookSecret};
///
/// async fn handle(event: KlikitEvent) -> &'static str {
///     println!("{} {}", event.event_type(), event.id());
///     "ok"
/// }
///
/// let secret = WebhookSecret::new("a-long-random-webhook-secret").unwrap();
/// let app: Router = Router::new()
///     .route("/webhooks/klikit", post(handle))
///     .layer(KlikitWebhookLayer::new(secret));
/// ```
#[derive(Clone)]
#[must_use]
pub struct KlikitWebhookLayer {
    pub(crate) config: Arc<Config>,
}

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) schemes: Schemes,
    pub(crate) secrets: SecretSource,
    pub(crate) store: Arc<dyn DedupStore>,
    pub(crate) body_limit: usize,
    pub(crate) body_timeout: Duration,
    pub(crate) lease: Duration,
    pub(crate) retention: Duration,
    pub(crate) store_timeout: Duration,
    pub(crate) store_failure: StoreFailurePolicy,
    pub(crate) dedup_on_signature: bool,
    pub(crate) background: Background,
    pub(crate) metrics: crate::metrics::Handles,
}

impl KlikitWebhookLayer {
    /// The default body limit: 1 MiB. Klikit does not publish a maximum; an
    /// order event is a few KiB, and a batch of many orders stays far below.
    pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
    /// The default body read timeout: 5 s, half of Klikit's 10 s delivery
    /// deadline. A genuine body arrives in milliseconds; a sender trickling
    /// bytes gets 408 instead of holding a connection.
    pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(5);
    /// The default lease: 60 s. A claim whose holder crashed blocks retries
    /// (409) for at most this long. It must exceed your handler's longest run;
    /// Klikit stops waiting after 10 s, so a handler should answer well before.
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);
    /// The default retention of processed ids: 24 h, the window Klikit's
    /// reference receivers use.
    pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
    /// The default timeout of each store operation: 2 s, well inside Klikit's
    /// 10 s deadline so the answer (503) still reaches Klikit.
    pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(2);
    /// How many background store tasks a layer (and every service it makes)
    /// runs at once: 1024.
    ///
    /// The layer finishes a claim in the background when the request went
    /// away first, retries a `complete` or `release` that failed, and
    /// releases a claim whose call it stopped waiting for (store timeout,
    /// dropped request) in case that claim still lands. Each task retries
    /// with jittered backoff until it succeeds or the claim's lease would
    /// have ended. While a store is saturated these tasks would pile up, so
    /// past this many the work is dropped and logged at `ERROR`: a dropped
    /// completion lets a duplicate after the lease be processed again, a
    /// dropped release makes the event wait (409) until its lease ends.
    pub const MAX_BACKGROUND_TASKS: usize = crate::service::MAX_BACKGROUND_TASKS;
    /// How many of those background tasks call the store at once (4); the
    /// others wait their turn. Background work thus never holds more than
    /// this many of the store's connections: after a burst of timed-out
    /// claims (a saturated pool), their releases must not keep the pool
    /// saturated and starve the deliveries in front.
    pub const MAX_BACKGROUND_CALLS: usize = crate::service::MAX_BACKGROUND_CALLS;

    /// A layer that verifies with `secret` and deduplicates in a
    /// [`MemoryStore`].
    pub fn new(secret: WebhookSecret) -> Self {
        Self::new_with_source(SecretSource::Fixed(Arc::new(Verifier::new(secret))))
    }

    fn new_with_source(secrets: SecretSource) -> Self {
        Self {
            config: Arc::new(Config {
                schemes: Schemes::one(Arc::new(Klikit::new())),
                secrets,
                store: Arc::new(MemoryStore::new()),
                body_limit: Self::DEFAULT_BODY_LIMIT,
                body_timeout: Self::DEFAULT_BODY_TIMEOUT,
                lease: Self::DEFAULT_LEASE,
                retention: Self::DEFAULT_RETENTION,
                store_timeout: Self::DEFAULT_STORE_TIMEOUT,
                store_failure: StoreFailurePolicy::FailClosed,
                dedup_on_signature: false,
                background: Background::new(),
                metrics: crate::metrics::Handles::new(),
            }),
        }
    }

    /// A layer that looks up each delivery's secrets by its subscription
    /// with `resolver` (Partner API v1: one secret per business, named by
    /// `X-Klikit-Webhook-Id`), and deduplicates in a [`MemoryStore`]. Its
    /// scheme is [`KlikitV1`](crate::scheme::KlikitV1), whose deliveries name
    /// their subscription.
    ///
    /// An unknown subscription, or a delivery that names none, is refused
    /// like a wrong signature (401, in the same time); a resolver error is
    /// 503. Secrets added with [`with_secret`](Self::with_secret) verify the
    /// deliveries that name no subscription (today's contract on the same
    /// route during the switch). See the [`secrets`](crate::secrets) module.
    pub fn per_subscription(resolver: impl SecretResolver) -> Self {
        let mut layer = Self::new_with_source(SecretSource::resolved(Arc::new(resolver)));
        layer.config_mut().schemes = Schemes::one(Arc::new(KlikitV1::new()));
        layer
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// Also accepts signatures made with `secret`. On a layer built with
    /// [`per_subscription`](Self::per_subscription), the secrets added here
    /// verify only the deliveries that name no subscription.
    ///
    /// Klikit switches secrets with no overlap window, so during a rotation
    /// deploy with both the new and the old secret, then remove the old one.
    /// Every secret is tried on every delivery (the time does not reveal
    /// which matched); [`KlikitEvent::secret_index`](crate::KlikitEvent::secret_index)
    /// tells which one did.
    pub fn with_secret(mut self, secret: WebhookSecret) -> Self {
        let config = self.config_mut();
        config.secrets = config.secrets.clone().with_secret(secret);
        self
    }

    /// Verifies deliveries under `scheme` instead of today's Klikit contract
    /// ([`Klikit`], the default). See the [`scheme`](crate::scheme) module.
    pub fn with_scheme(mut self, scheme: impl Scheme) -> Self {
        self.config_mut().schemes = Schemes::one(Arc::new(scheme));
        self
    }

    /// Also accepts deliveries signed under `scheme`, for a migration window
    /// in which a sender may use either contract on one route.
    ///
    /// Each delivery is read by the first configured scheme that recognizes
    /// its signature header; one that no scheme recognizes is refused with
    /// the first scheme's "missing header" answer.
    pub fn with_extra_scheme(mut self, scheme: impl Scheme) -> Self {
        self.config_mut().schemes.push(Arc::new(scheme));
        self
    }

    /// Uses `store` for deduplication instead of the default [`MemoryStore`].
    ///
    /// Pass an `Arc<S>` to keep a handle to the same store.
    pub fn with_store(mut self, store: impl DedupStore) -> Self {
        self.config_mut().store = Arc::new(store);
        self
    }

    /// Uses an already shared store.
    pub fn with_shared_store(mut self, store: Arc<dyn DedupStore>) -> Self {
        self.config_mut().store = store;
        self
    }

    /// The largest body accepted, in bytes (default
    /// [`DEFAULT_BODY_LIMIT`](Self::DEFAULT_BODY_LIMIT)). Larger bodies get
    /// 413, and never more than this many bytes are buffered.
    pub fn with_body_limit(mut self, bytes: usize) -> Self {
        self.config_mut().body_limit = bytes;
        self
    }

    /// How long the whole body may take to arrive (default
    /// [`DEFAULT_BODY_TIMEOUT`](Self::DEFAULT_BODY_TIMEOUT)); later gets 408.
    ///
    /// The time counts from the first moment the layer has to wait for the
    /// body; what had already arrived when the layer started reading took no
    /// waiting (and so no timer is started for a body that arrived whole
    /// with its headers).
    pub fn with_body_timeout(mut self, timeout: Duration) -> Self {
        self.config_mut().body_timeout = timeout;
        self
    }

    /// How long a claim blocks other deliveries of the same event before it
    /// is considered abandoned (default [`DEFAULT_LEASE`](Self::DEFAULT_LEASE)).
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.config_mut().lease = lease;
        self
    }

    /// How long a processed event id is remembered (default
    /// [`DEFAULT_RETENTION`](Self::DEFAULT_RETENTION)).
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.config_mut().retention = retention;
        self
    }

    /// The timeout of each store operation (default
    /// [`DEFAULT_STORE_TIMEOUT`](Self::DEFAULT_STORE_TIMEOUT)).
    ///
    /// It counts from the operation's first poll: a store that answers at
    /// that poll (the in-memory store) never starts a timer.
    pub fn with_store_timeout(mut self, timeout: Duration) -> Self {
        self.config_mut().store_timeout = timeout;
        self
    }

    /// What to do when the store fails (default
    /// [`StoreFailurePolicy::FailClosed`]).
    pub fn with_store_failure(mut self, policy: StoreFailurePolicy) -> Self {
        self.config_mut().store_failure = policy;
        self
    }
}

impl KlikitWebhookLayer {
    /// Also deduplicates on the body's signature (off by default).
    ///
    /// Klikit signs only the body: `x-klikit-event-id` is not covered, so
    /// someone who captured a delivery can replay its body under a new event
    /// id, and id deduplication alone lets it through. With this option a body
    /// whose signature was already processed within the retention gets
    /// `200 {"status":"duplicate-ignored"}` whatever its id. It also covers a
    /// sender that gives each retry a fresh id (one reading of Klikit's docs).
    ///
    /// Trade-offs: one more store round trip for the claim and one for the
    /// completion; and two genuinely different events with byte-identical
    /// bodies would be merged (Klikit's bodies carry order ids and
    /// `updated_at`, so this is unlikely, but an identical cart sent twice
    /// would be processed once).
    pub fn with_signature_dedup(mut self, enabled: bool) -> Self {
        self.config_mut().dedup_on_signature = enabled;
        self
    }
}

impl fmt::Debug for KlikitWebhookLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config.fmt(f)
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KlikitWebhookLayer")
            .field("schemes", &self.schemes.names())
            .field("secrets", &self.secrets.describe())
            .field("store", &self.store)
            .field("body_limit", &self.body_limit)
            .field("body_timeout", &self.body_timeout)
            .field("lease", &self.lease)
            .field("retention", &self.retention)
            .field("store_timeout", &self.store_timeout)
            .field("store_failure", &self.store_failure)
            .field("dedup_on_signature", &self.dedup_on_signature)
            .field("background", &self.background)
            .finish()
    }
}

impl<S> Layer<S> for KlikitWebhookLayer {
    type Service = KlikitWebhookService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        KlikitWebhookService::new(inner, self)
    }
}
