//! The processing side: [`JetStreamWorker`] pulls, processes and acks.

use std::{
    fmt,
    future::Future,
    pin::pin,
    time::{Duration, Instant},
};

use async_nats::jetstream::{
    self, AckKind,
    consumer::{self, AckPolicy, DeliverPolicy, PullConsumer, pull::MessagesErrorKind},
};
use futures_util::StreamExt;
use klikit_webhook::{EVENT_ID_HEADER, EVENT_TYPE_HEADER, EventId, EventType, KlikitEvent};
use tracing::Instrument;

use super::{HandoffError, JetStreamHandoff, ProcessError};
use crate::common::RetryBackoff;

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
