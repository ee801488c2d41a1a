//! Durable hand-off to NATS JetStream.
//!
//! - [`JetStreamHandoff`] is the receiver side: [`publish`](JetStreamHandoff::publish)
//!   stores the verified event in a JetStream stream, with the event id as
//!   the `Nats-Msg-Id`, and returns only once the server acknowledged it.
//!   With the `axum` feature, [`receive`] is a ready-made handler that answers
//!   `200 {"status":"received"}` after the PubAck and 503 with `Retry-After`
//!   otherwise.
//! - [`JetStreamWorker`] is the processing side: it pulls from a durable
//!   consumer with explicit acks, rebuilds the [`KlikitEvent`], calls your
//!   async closure, and acks only after it returned `Ok`.
//!
//! See the [module docs](crate) for the guarantees, and why your
//! processing must be idempotent on the event id.
//!
//! The feature needs Rust 1.89, the minimum of `async-nats` 0.51. Only
//! `async-nats`'s `jetstream` and `ring` features are enabled. For stream or
//! consumer options this module does not set, start from
//! [`stream_config`](JetStreamHandoff::stream_config) (create the stream
//! yourself, then call [`ensure_stream`](JetStreamHandoff::ensure_stream),
//! which keeps it) or [`consumer_config`](JetStreamWorker::consumer_config)
//! (pass the result to
//! [`with_consumer_config`](JetStreamWorker::with_consumer_config)), enabling
//! `async-nats` features such as `server_2_10` in your own `Cargo.toml` where
//! needed.
//!
//! # Examples
//!
//! Receiver and worker (they can run in separate processes; they only share
//! the stream name):
//!
//! ```no_run
//! use axum::{Router, routing::post};
//! use klikit_handoff::nats::{JetStreamHandoff, JetStreamWorker, ProcessError, receive};
//! use klikit_webhook::{KlikitWebhookLayer, WebhookSecret};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let client = async_nats::connect("nats://127.0.0.1:4222").await?;
//! let handoff = JetStreamHandoff::new(async_nats::jetstream::new(client), "KLIKIT_EVENTS", "klikit.events");
//! handoff.ensure_stream().await?;
//!
//! // Receiver: 200 only once JetStream persisted the event.
//! let secret = WebhookSecret::from_env("KLIKIT_WEBHOOK_SECRET")?;
//! let app: Router = Router::new()
//!     .route("/webhooks/klikit", post(receive))
//!     .route_layer(KlikitWebhookLayer::new(secret))
//!     .with_state(handoff.clone());
//! # let _ = app;
//!
//! // Worker: acks after the closure returned Ok.
//! let worker = JetStreamWorker::new(&handoff, "klikit-worker");
//! worker
//!     .run(|event| async move {
//!         // Record event.id() in the same transaction as the side effect,
//!         // and treat "already recorded" as success.
//!         let envelope = event.payload().map_err(ProcessError::permanent)?;
//!         println!("{} {}: {} order(s)", event.id(), event.event_type(), envelope.orders.len());
//!         Ok(())
//!     })
//!     .await?;
//! # Ok(())
//! # }
//! ```

use std::{
    fmt,
    future::Future,
    pin::pin,
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::{
    HeaderMap, Subject,
    header::NATS_MESSAGE_ID,
    jetstream::{
        self, AckKind, Context,
        consumer::{self, AckPolicy, DeliverPolicy, PullConsumer, StreamError, pull::MessagesErrorKind},
        context::{CreateStreamError, PublishError},
        stream::{self, ConsumerError, RetentionPolicy, StorageType},
    },
};
use futures_util::StreamExt;
use tracing::Instrument;

use crate::common::RetryBackoff;
use klikit_webhook::{EVENT_ID_HEADER, EVENT_TYPE_HEADER, EventId, EventType, KlikitEvent, KlikitWebhookLayer};

/// Publishes verified Klikit events to a NATS JetStream stream.
///
/// Cheap to clone (one `Arc`); clone it into every handler. See the
/// [module docs](self) for an example.
///
/// Every setting has a default chosen for Klikit; see each `with_*` method.
#[derive(Clone)]
#[must_use]
pub struct JetStreamHandoff {
    inner: Arc<HandoffConfig>,
}

#[derive(Clone)]
struct HandoffConfig {
    context: Context,
    stream: String,
    subject: Subject,
    duplicate_window: Duration,
    max_age: Duration,
    storage: StorageType,
    replicas: usize,
    publish_timeout: Duration,
}

impl JetStreamHandoff {
    /// The default broker deduplication window: 24 h, the layer's default
    /// [retention](KlikitWebhookLayer::DEFAULT_RETENTION), so a delivery the
    /// layer would still recognise is also recognised by the broker.
    ///
    /// The server keeps every message id of the window in memory (tens of
    /// bytes each): at a few events per second that is a few MiB per day.
    pub const DEFAULT_DUPLICATE_WINDOW: Duration = KlikitWebhookLayer::DEFAULT_RETENTION;
    /// The default age limit of the stream: 7 days. Messages are kept (for
    /// replays and inspection) this long after they were published, whether
    /// or not a worker acknowledged them. It must be at least the duplicate
    /// window.
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 60 * 60);
    /// The default time limit of one publish, PubAck included: 3 s. The layer
    /// may already have spent up to 5 s reading the body, and Klikit stops
    /// waiting at 10 s; a 503 that arrives in time is retried sooner than a
    /// 200 that arrives late.
    pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(3);

    /// A hand-off that publishes on `subject`, stored by the stream named
    /// `stream`.
    ///
    /// Nothing is sent to the server until [`ensure_stream`](Self::ensure_stream)
    /// or [`publish`](Self::publish). The stream defaults to file storage, one
    /// replica, limits retention with [`DEFAULT_MAX_AGE`](Self::DEFAULT_MAX_AGE)
    /// and [`DEFAULT_DUPLICATE_WINDOW`](Self::DEFAULT_DUPLICATE_WINDOW).
    ///
    /// The context's own request timeout (5 s unless set with
    /// `async_nats::jetstream::ContextBuilder::timeout`) also bounds the wait
    /// for the PubAck; [`with_publish_timeout`](Self::with_publish_timeout)
    /// bounds the whole publish.
    pub fn new(context: Context, stream: impl Into<String>, subject: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(HandoffConfig {
                context,
                stream: stream.into(),
                subject: Subject::from(subject.into()),
                duplicate_window: Self::DEFAULT_DUPLICATE_WINDOW,
                max_age: Self::DEFAULT_MAX_AGE,
                storage: StorageType::File,
                replicas: 1,
                publish_timeout: Self::DEFAULT_PUBLISH_TIMEOUT,
            }),
        }
    }

    fn config_mut(&mut self) -> &mut HandoffConfig {
        Arc::make_mut(&mut self.inner)
    }

    /// How long the broker remembers an event id to drop a repeated publish
    /// (default [`DEFAULT_DUPLICATE_WINDOW`](Self::DEFAULT_DUPLICATE_WINDOW)).
    ///
    /// Keep it at least as long as the layer's retention. It applies when
    /// [`ensure_stream`](Self::ensure_stream) creates the stream, and that
    /// method rejects an existing stream whose window is shorter.
    pub fn with_duplicate_window(mut self, window: Duration) -> Self {
        self.config_mut().duplicate_window = window;
        self
    }

    /// How long the stream keeps messages (default
    /// [`DEFAULT_MAX_AGE`](Self::DEFAULT_MAX_AGE)); applies when
    /// [`ensure_stream`](Self::ensure_stream) creates the stream. It must be
    /// at least the duplicate window, or the server refuses the stream.
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.config_mut().max_age = max_age;
        self
    }

    /// Where the stream keeps messages (default [`StorageType::File`], which
    /// survives a server restart; `Memory` does not); applies when
    /// [`ensure_stream`](Self::ensure_stream) creates the stream.
    pub fn with_storage(mut self, storage: StorageType) -> Self {
        self.config_mut().storage = storage;
        self
    }

    /// How many servers of a cluster hold each message (default 1); applies
    /// when [`ensure_stream`](Self::ensure_stream) creates the stream. With 3,
    /// a PubAck means a majority persisted the message.
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.config_mut().replicas = replicas;
        self
    }

    /// The time limit of one [`publish`](Self::publish), PubAck included
    /// (default [`DEFAULT_PUBLISH_TIMEOUT`](Self::DEFAULT_PUBLISH_TIMEOUT)).
    pub fn with_publish_timeout(mut self, timeout: Duration) -> Self {
        self.config_mut().publish_timeout = timeout;
        self
    }

    /// The JetStream context.
    pub fn context(&self) -> &Context {
        &self.inner.context
    }

    /// The stream name.
    pub fn stream(&self) -> &str {
        &self.inner.stream
    }

    /// The subject events are published on.
    pub fn subject(&self) -> &str {
        self.inner.subject.as_str()
    }

    /// The stream configuration [`ensure_stream`](Self::ensure_stream)
    /// creates: the subject, limits retention, the age limit, the storage, the
    /// replicas and the duplicate window.
    pub fn stream_config(&self) -> stream::Config {
        let config = &self.inner;
        stream::Config {
            name: config.stream.clone(),
            description: Some("Klikit webhook events, published by klikit-webhook".to_owned()),
            subjects: vec![config.subject.to_string()],
            retention: RetentionPolicy::Limits,
            max_age: config.max_age,
            storage: config.storage,
            num_replicas: config.replicas,
            duplicate_window: config.duplicate_window,
            ..Default::default()
        }
    }

    /// Creates the stream if it does not exist; call it once at start-up.
    ///
    /// An existing stream is left as it is (its subjects, limits and storage
    /// are yours to manage), except that its duplicate window is checked.
    ///
    /// # Errors
    ///
    /// - [`HandoffError::Stream`] if the stream could not be read or created
    ///   (JetStream disabled, invalid name, a subject already bound to another
    ///   stream, max age shorter than the duplicate window, no connection...);
    /// - [`HandoffError::DuplicateWindowTooShort`] if the existing stream
    ///   keeps event ids for less than [`with_duplicate_window`](Self::with_duplicate_window).
    pub async fn ensure_stream(&self) -> Result<(), HandoffError> {
        let config = &self.inner;
        let stream = config
            .context
            .get_or_create_stream(self.stream_config())
            .await
            .map_err(|source| HandoffError::Stream {
                stream: config.stream.clone(),
                source,
            })?;
        let found = stream.cached_info().config.duplicate_window;
        if found < config.duplicate_window {
            return Err(HandoffError::DuplicateWindowTooShort {
                stream: config.stream.clone(),
                found,
                required: config.duplicate_window,
            });
        }
        tracing::debug!(stream = %config.stream, duplicate_window = ?found, "jetstream stream ready");
        Ok(())
    }

    /// Publishes the event and waits until JetStream persisted it.
    ///
    /// The message is the raw body, with the headers `Nats-Msg-Id` (the event
    /// id, so the stream drops a repeat within its duplicate window),
    /// `x-klikit-event-id` and `x-klikit-event-type`. A repeat that the stream
    /// dropped as a duplicate is a success: the event is stored. The signature
    /// header is not forwarded; the stream holds only verified events.
    ///
    /// Answer Klikit's 2xx only after this returned `Ok`. Keep the layer's
    /// [body limit](KlikitWebhookLayer::with_body_limit) below the server's
    /// `max_payload` (1 MiB by default, headers included), or raise it: a
    /// larger body fails here on every retry.
    ///
    /// # Errors
    ///
    /// - [`HandoffError::Publish`] if the message could not be sent or the
    ///   server refused it (no stream for the subject, message too large,
    ///   connection lost before the PubAck...);
    /// - [`HandoffError::Timeout`] if the PubAck did not arrive within the
    ///   [publish timeout](Self::with_publish_timeout). The message may still
    ///   have been stored; the retry is then dropped as a duplicate.
    pub async fn publish(&self, event: &KlikitEvent) -> Result<(), HandoffError> {
        let config = &self.inner;
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, event.id().as_str());
        headers.insert(EVENT_ID_HEADER, event.id().as_str());
        headers.insert(EVENT_TYPE_HEADER, event.event_type().as_str());
        let publish = async {
            let ack = config
                .context
                .publish_with_headers(config.subject.clone(), headers, event.body().clone())
                .await?;
            ack.await
        };
        let ack = match tokio::time::timeout(config.publish_timeout, publish).await {
            Ok(Ok(ack)) => ack,
            Ok(Err(error)) => return Err(HandoffError::Publish(error)),
            Err(_) => return Err(HandoffError::Timeout(config.publish_timeout)),
        };
        tracing::debug!(
            event_id = %event.id(),
            stream = %ack.stream,
            sequence = ack.sequence,
            duplicate = ack.duplicate,
            "klikit event handed off to jetstream"
        );
        Ok(())
    }
}

impl fmt::Debug for JetStreamHandoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config = &self.inner;
        f.debug_struct("JetStreamHandoff")
            .field("stream", &config.stream)
            .field("subject", &config.subject)
            .field("duplicate_window", &config.duplicate_window)
            .field("max_age", &config.max_age)
            .field("storage", &config.storage)
            .field("replicas", &config.replicas)
            .field("publish_timeout", &config.publish_timeout)
            .finish_non_exhaustive()
    }
}

/// The hand-off failed: the event is not known to be stored, so do not
/// answer Klikit with a 2xx.
///
/// With the `axum` feature it is a response: 503 with `Retry-After: 5` and
/// `{"error":"event hand-off unavailable"}` (the details are logged, not
/// sent). The layer then releases the dedup claim and Klikit retries.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandoffError {
    /// Publishing failed or the server refused the message.
    #[error("publishing the event to jetstream failed: {0}")]
    Publish(#[source] PublishError),
    /// The PubAck did not arrive in time.
    #[error("jetstream did not acknowledge the publish within {0:?}")]
    Timeout(Duration),
    /// The stream could not be read or created.
    #[error("jetstream stream `{stream}` could not be read or created: {source}")]
    Stream {
        /// The stream name.
        stream: String,
        /// The server's or the client's error.
        #[source]
        source: CreateStreamError,
    },
    /// The existing stream forgets event ids sooner than configured, so
    /// repeated publishes could be stored twice.
    #[error(
        "jetstream stream `{stream}` keeps message ids for {found:?}, less than the {required:?} configured; \
         raise its duplicate window"
    )]
    DuplicateWindowTooShort {
        /// The stream name.
        stream: String,
        /// The stream's duplicate window.
        found: Duration,
        /// The configured duplicate window.
        required: Duration,
    },
    /// The worker's durable consumer could not be created or updated.
    #[error("jetstream consumer `{consumer}` could not be created: {source}")]
    Consumer {
        /// The durable consumer name.
        consumer: String,
        /// The server's or the client's error.
        #[source]
        source: ConsumerError,
    },
    /// The worker could not start pulling messages.
    #[error("pulling from jetstream consumer `{consumer}` failed: {source}")]
    Pull {
        /// The durable consumer name.
        consumer: String,
        /// The client's error.
        #[source]
        source: StreamError,
    },
    /// The worker's message stream stopped for good (the consumer was
    /// deleted, or the client closed). Restart the worker.
    #[error("jetstream consumer `{consumer}` stopped delivering: {reason}")]
    ConsumerStopped {
        /// The durable consumer name.
        consumer: String,
        /// What stopped it.
        reason: String,
    },
}

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl axum::response::IntoResponse for HandoffError {
    fn into_response(self) -> axum::response::Response {
        crate::common::answer::<(), _>(Err(self))
    }
}

/// An axum handler that hands the event off and answers Klikit.
///
/// - `200 {"status":"received"}` once JetStream acknowledged the publish (the
///   layer then completes the dedup claim);
/// - `503` with `Retry-After: 5` if it did not (the layer releases the claim
///   and Klikit retries); see [`HandoffError`].
///
/// Route it behind [`KlikitWebhookLayer`] (which provides the
/// [`KlikitEvent`]) with a [`JetStreamHandoff`] as the state, or as a part of
/// your state through `axum::extract::FromRef`. See the
/// [module docs](self) for an example.
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub async fn receive(
    axum::extract::State(handoff): axum::extract::State<JetStreamHandoff>,
    event: KlikitEvent,
) -> axum::response::Response {
    crate::common::answer(handoff.publish(&event).await)
}

pub use crate::ProcessError;

/// Processes handed-off events from a durable JetStream pull consumer.
///
/// [`run`](Self::run) creates (or updates) the durable consumer, pulls
/// messages with explicit acks, rebuilds each [`KlikitEvent`] and calls your
/// async closure, one event at a time. Then:
///
/// | closure returned | the worker sends | the message |
/// |---|---|---|
/// | `Ok(())` | ack, confirmed by the server | is done |
/// | [`ProcessError::retry`] | nak with a growing delay | comes back after the delay |
/// | [`ProcessError::permanent`] | term | is not delivered again |
/// | (never returned: crash, hang, panic, lost connection) | nothing | comes back after the ack wait |
///
/// A message whose headers do not rebuild an event (not published by
/// [`JetStreamHandoff`]) is terminated and logged. After
/// [max deliveries](Self::with_max_deliver) the server stops delivering a
/// message and publishes a `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES`
/// advisory; the message stays in the stream until its age limit.
///
/// Since a message can be delivered again after your side effect (a crash
/// between the side effect and the ack), make the closure idempotent on
/// [`KlikitEvent::id`]; see the [handoff module docs](crate).
/// Several workers (processes) may run with the same durable name: the
/// server spreads the messages between them.
///
/// The rebuilt event's [`secret_index`](KlikitEvent::secret_index) is 0:
/// which secret verified it is not carried through the broker.
#[derive(Clone)]
#[must_use]
pub struct JetStreamWorker {
    handoff: JetStreamHandoff,
    durable: String,
    ack_wait: Duration,
    backoff: Vec<Duration>,
    max_deliver: i64,
    max_ack_pending: i64,
    batch: usize,
    retry: RetryBackoff,
    custom_config: Option<consumer::pull::Config>,
}

impl JetStreamWorker {
    /// The default ack wait: 30 s. A delivery not acknowledged within this
    /// time (worker crashed, hung or disconnected) is delivered again. It
    /// must exceed your slowest processing of one event, or a slow event is
    /// delivered twice (harmless when idempotent, but wasted work).
    pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
    /// The default number of deliveries of one message before the server
    /// gives up: 10. With the default retry delays that spans about 8.5
    /// minutes of failures.
    pub const DEFAULT_MAX_DELIVER: i64 = 10;
    /// The default number of messages pulled ahead of processing: 10. Each
    /// pulled message's ack wait starts at delivery, so a batch must be
    /// processed within the ack wait.
    pub const DEFAULT_BATCH: usize = 10;
    /// The default delay before the first retry of a failed event: 1 s,
    /// doubled on each further delivery.
    pub const DEFAULT_RETRY_DELAY: Duration = RetryBackoff::DEFAULT_FIRST;
    /// The default longest delay between retries: 5 minutes.
    pub const DEFAULT_MAX_RETRY_DELAY: Duration = RetryBackoff::DEFAULT_MAX;

    /// A worker for the durable consumer `durable` on `handoff`'s stream and
    /// subject. Nothing is sent to the server until
    /// [`ensure_consumer`](Self::ensure_consumer) or [`run`](Self::run).
    pub fn new(handoff: &JetStreamHandoff, durable: impl Into<String>) -> Self {
        Self {
            handoff: handoff.clone(),
            durable: durable.into(),
            ack_wait: Self::DEFAULT_ACK_WAIT,
            backoff: Vec::new(),
            max_deliver: Self::DEFAULT_MAX_DELIVER,
            max_ack_pending: 1000,
            batch: Self::DEFAULT_BATCH,
            retry: RetryBackoff::default(),
            custom_config: None,
        }
    }

    /// How long a delivery may stay unacknowledged before it is delivered
    /// again (default [`DEFAULT_ACK_WAIT`](Self::DEFAULT_ACK_WAIT)).
    pub fn with_ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// Growing ack waits for the successive redeliveries of an
    /// unacknowledged message (default none: every redelivery waits the
    /// [ack wait](Self::with_ack_wait)). When set, the first value replaces
    /// the ack wait and the last one repeats; there must be fewer values than
    /// [max deliveries](Self::with_max_deliver). Naks use
    /// [`with_retry_delay`](Self::with_retry_delay) instead.
    pub fn with_backoff(mut self, backoff: Vec<Duration>) -> Self {
        self.backoff = backoff;
        self
    }

    /// How many times one message is delivered before the server gives up
    /// (default [`DEFAULT_MAX_DELIVER`](Self::DEFAULT_MAX_DELIVER)); `-1`
    /// for no limit, which lets a poison message be retried forever.
    pub fn with_max_deliver(mut self, max_deliver: i64) -> Self {
        self.max_deliver = max_deliver;
        self
    }

    /// How many messages may be delivered and not yet acknowledged, across
    /// every worker of this consumer (default 1000).
    pub fn with_max_ack_pending(mut self, max_ack_pending: i64) -> Self {
        self.max_ack_pending = max_ack_pending;
        self
    }

    /// How many messages one pull request asks for (default
    /// [`DEFAULT_BATCH`](Self::DEFAULT_BATCH), at least 1).
    pub fn with_batch_size(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// The nak delays after [`ProcessError::retry`]: `first` after the first
    /// delivery, doubled after each further one, never more than `max`
    /// (defaults [`DEFAULT_RETRY_DELAY`](Self::DEFAULT_RETRY_DELAY) and
    /// [`DEFAULT_MAX_RETRY_DELAY`](Self::DEFAULT_MAX_RETRY_DELAY)).
    pub fn with_retry_delay(mut self, first: Duration, max: Duration) -> Self {
        self.retry = RetryBackoff::new(first, max);
        self
    }

    /// Uses `config` for the durable consumer instead of the one built from
    /// this worker's settings; the ack wait, backoff, max deliveries and max
    /// ack pending set here are then ignored (the retry delays still apply).
    ///
    /// Start from [`consumer_config`](Self::consumer_config). Keep
    /// `ack_policy` explicit, and keep `durable_name` or `name` set, or the
    /// consumer is ephemeral and its progress dies with the worker.
    pub fn with_consumer_config(mut self, config: consumer::pull::Config) -> Self {
        if let Some(name) = config.durable_name.clone().or_else(|| config.name.clone()) {
            self.durable = name;
        }
        self.custom_config = Some(config);
        self
    }

    /// The durable consumer name.
    pub fn durable_name(&self) -> &str {
        &self.durable
    }

    /// The durable consumer configuration [`ensure_consumer`](Self::ensure_consumer)
    /// applies (unless replaced with
    /// [`with_consumer_config`](Self::with_consumer_config)): explicit acks, every message from the start of the stream,
    /// filtered on the hand-off's subject, with this worker's ack wait,
    /// backoff, max deliveries and max ack pending.
    pub fn consumer_config(&self) -> consumer::pull::Config {
        if let Some(config) = &self.custom_config {
            return config.clone();
        }
        let ack_wait = self.backoff.first().copied().unwrap_or(self.ack_wait);
        consumer::pull::Config {
            durable_name: Some(self.durable.clone()),
            description: Some("klikit-webhook worker".to_owned()),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait,
            backoff: self.backoff.clone(),
            max_deliver: self.max_deliver,
            max_ack_pending: self.max_ack_pending,
            filter_subject: self.handoff.subject().to_owned(),
            ..Default::default()
        }
    }

    /// Creates the durable consumer, or updates its configuration to this
    /// worker's; [`run`](Self::run) calls it.
    ///
    /// # Errors
    ///
    /// [`HandoffError::Consumer`] if the stream does not exist, the server
    /// refuses the configuration (say, a backoff with as many values as max
    /// deliveries), or the server cannot be reached.
    pub async fn ensure_consumer(&self) -> Result<(), HandoffError> {
        self.consumer().await.map(drop)
    }

    async fn consumer(&self) -> Result<PullConsumer, HandoffError> {
        let consumer_error = |source| HandoffError::Consumer {
            consumer: self.durable.clone(),
            source,
        };
        self.handoff
            .context()
            .create_consumer_on_stream(self.consumer_config(), self.handoff.stream())
            .await
            .map_err(consumer_error)
    }

    /// Processes events with `process` until the consumer stops.
    ///
    /// Equivalent to [`run_until`](Self::run_until) with a shutdown that
    /// never comes. A panic in `process` unwinds out of `run`; the message
    /// it was processing is redelivered after the ack wait.
    ///
    /// # Errors
    ///
    /// See [`run_until`](Self::run_until).
    pub async fn run<F, Fut>(&self, process: F) -> Result<(), HandoffError>
    where
        F: Fn(KlikitEvent) -> Fut,
        Fut: Future<Output = Result<(), ProcessError>>,
    {
        self.run_until(process, std::future::pending()).await
    }

    /// Processes events with `process` until `shutdown` completes.
    ///
    /// The event being processed when `shutdown` completes is finished and
    /// acknowledged first; messages pulled ahead and not yet processed are
    /// left unacknowledged and are delivered again after the ack wait.
    ///
    /// # Errors
    ///
    /// - [`HandoffError::Consumer`] if the durable consumer could not be
    ///   created or updated;
    /// - [`HandoffError::Pull`] if pulling could not start;
    /// - [`HandoffError::ConsumerStopped`] if the consumer was deleted or the
    ///   message stream ended.
    ///
    /// Transient errors (a missed heartbeat, a reconnect, a failed ack) are
    /// logged and the loop goes on; an unacknowledged message comes back.
    pub async fn run_until<F, Fut, S>(&self, process: F, shutdown: S) -> Result<(), HandoffError>
    where
        F: Fn(KlikitEvent) -> Fut,
        Fut: Future<Output = Result<(), ProcessError>>,
        S: Future<Output = ()>,
    {
        let consumer = self.consumer().await?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(self.batch)
            .messages()
            .await
            .map_err(|source| HandoffError::Pull {
                consumer: self.durable.clone(),
                source,
            })?;
        tracing::info!(stream = %self.handoff.stream(), consumer = %self.durable, "klikit worker started");
        let mut shutdown = pin!(shutdown);
        loop {
            let next = tokio::select! {
                biased;
                () = &mut shutdown => {
                    tracing::info!(consumer = %self.durable, "klikit worker stopped");
                    return Ok(());
                }
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => self.handle(message, &process).await,
                Some(Err(error)) if error.kind() == MessagesErrorKind::ConsumerDeleted => {
                    return Err(HandoffError::ConsumerStopped {
                        consumer: self.durable.clone(),
                        reason: error.to_string(),
                    });
                }
                Some(Err(error)) => {
                    tracing::warn!(consumer = %self.durable, %error, "jetstream pull error; continuing");
                }
                None => {
                    return Err(HandoffError::ConsumerStopped {
                        consumer: self.durable.clone(),
                        reason: "the message stream ended".to_owned(),
                    });
                }
            }
        }
    }

    async fn handle<F, Fut>(&self, message: jetstream::Message, process: &F)
    where
        F: Fn(KlikitEvent) -> Fut,
        Fut: Future<Output = Result<(), ProcessError>>,
    {
        let (delivered, sequence) = match message.info() {
            Ok(info) => (info.delivered, info.stream_sequence),
            Err(_) => (1, 0),
        };
        let event = match event_from_message(&message) {
            Ok(event) => event,
            Err(reason) => {
                tracing::error!(sequence, reason, "message is not a klikit event; terminated");
                send_ack(&message, AckKind::Term).await;
                return;
            }
        };
        let span = tracing::info_span!("klikit_worker", event_id = %event.id(), delivered, sequence);
        self.settle(&message, event, delivered, process).instrument(span).await;
    }

    /// Runs `process` and acks, naks or terminates the message.
    async fn settle<F, Fut>(&self, message: &jetstream::Message, event: KlikitEvent, delivered: i64, process: &F)
    where
        F: Fn(KlikitEvent) -> Fut,
        Fut: Future<Output = Result<(), ProcessError>>,
    {
        let started = Instant::now();
        match process(event).await {
            Ok(()) => {
                // Wait for the server to confirm the ack: a lost ack means a
                // redelivery, which idempotent processing absorbs, but it is
                // worth a warning.
                match message.double_ack().await {
                    Ok(()) => tracing::debug!(elapsed = ?started.elapsed(), "klikit event processed and acknowledged"),
                    Err(error) => {
                        tracing::warn!(%error, "ack not confirmed; the event may be delivered again")
                    }
                }
            }
            Err(error) if error.is_retryable() => {
                let delay = self.retry.delay(delivered.saturating_sub(1));
                if self.max_deliver > 0 && delivered >= self.max_deliver {
                    tracing::error!(%error, "processing failed on the last allowed delivery; the event stays in the stream, undelivered");
                } else {
                    tracing::warn!(%error, retry_in = ?delay, "processing failed; the event will be delivered again");
                }
                send_ack(message, AckKind::Nak(Some(delay))).await;
            }
            Err(error) => {
                tracing::error!(%error, "processing failed permanently; the event is terminated and will not be delivered again");
                send_ack(message, AckKind::Term).await;
            }
        }
    }
}

async fn send_ack(message: &jetstream::Message, kind: AckKind) {
    if let Err(error) = message.ack_with(kind).await {
        tracing::warn!(%error, "sending the ack failed; the message will be delivered again");
    }
}

/// Rebuilds the event from the headers [`JetStreamHandoff::publish`] sets.
fn event_from_message(message: &jetstream::Message) -> Result<KlikitEvent, &'static str> {
    let headers = message.headers.as_ref().ok_or("no headers")?;
    let id = headers.get(EVENT_ID_HEADER).ok_or("no x-klikit-event-id header")?;
    let id = EventId::new(id.as_str()).map_err(|_| "invalid x-klikit-event-id header")?;
    let event_type = headers.get(EVENT_TYPE_HEADER).ok_or("no x-klikit-event-type header")?;
    let event_type = EventType::from_name(event_type.as_str());
    Ok(KlikitEvent::new(id, event_type, message.payload.clone()))
}

impl fmt::Debug for JetStreamWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamWorker")
            .field("stream", &self.handoff.stream())
            .field("subject", &self.handoff.subject())
            .field("durable", &self.durable)
            .field("ack_wait", &self.ack_wait)
            .field("backoff", &self.backoff)
            .field("max_deliver", &self.max_deliver)
            .field("max_ack_pending", &self.max_ack_pending)
            .field("batch", &self.batch)
            .field("retry", &self.retry)
            .field("custom_config", &self.custom_config.is_some())
            .finish()
    }
}
