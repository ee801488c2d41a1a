//! The receiver side: [`JetStreamHandoff`] publishes, [`receive`] answers Klikit.

use std::{fmt, sync::Arc, time::Duration};

use async_nats::{
    HeaderMap, Subject,
    header::NATS_MESSAGE_ID,
    jetstream::{
        Context,
        stream::{self, RetentionPolicy, StorageType},
    },
};
use klikit_webhook::{EVENT_ID_HEADER, EVENT_TYPE_HEADER, KlikitEvent, KlikitWebhookLayer};

use super::HandoffError;

/// Publishes verified Klikit events to a NATS JetStream stream.
///
/// Cheap to clone (one `Arc`); clone it into every handler. See the
/// [module docs](super) for an example.
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
/// [module docs](super) for an example.
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub async fn receive(
    axum::extract::State(handoff): axum::extract::State<JetStreamHandoff>,
    event: KlikitEvent,
) -> axum::response::Response {
    crate::common::answer(handoff.publish(&event).await)
}
