//! [`KlikitWebhookService`] and its [`ResponseFuture`].

use std::{
    fmt,
    future::{Future, poll_fn},
    pin::{Pin, pin},
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use tower_service::Service;
use tracing::Instrument;

use crate::{
    EventId, EventType, InvalidEventId, KlikitEvent, KlikitWebhookLayer,
    event::{EVENT_ID_HEADER, EVENT_TYPE_HEADER, MAX_EVENT_ID_LEN, SIGNATURE_HEADER},
    layer::{Config, StoreFailurePolicy},
    rejection::{DUPLICATE_BODY, DeliveryOutcome, Rejection, RejectionKind, ResponseBody, json_response},
    signature::{SignatureError, VerifyState, parse_signature},
    store::{Claim, DedupStore, Lease, StoreError},
};

const SIGNATURE: HeaderName = HeaderName::from_static(SIGNATURE_HEADER);
const EVENT_ID: HeaderName = HeaderName::from_static(EVENT_ID_HEADER);
const EVENT_TYPE: HeaderName = HeaderName::from_static(EVENT_TYPE_HEADER);

/// After a body is found too large, up to this many further bytes are read
/// and thrown away before answering 413. A sender that writes its whole body
/// before reading the answer then gets the 413 instead of a connection reset
/// (closing a socket with unread data makes the kernel send RST). Bodies
/// larger than this still get the 413 but may see the reset.
const DRAIN_LIMIT: usize = 8 * 1024 * 1024;

/// The service made by [`KlikitWebhookLayer`]. See the layer for what it does.
///
/// It passes the inner service a `Request<Full<Bytes>>` that holds the
/// verified bytes, with a [`KlikitEvent`] in the extensions, and returns the
/// inner service's response (or its own JSON answer in the same body type).
pub struct KlikitWebhookService<S> {
    pub(crate) inner: S,
    pub(crate) config: Arc<Config>,
}

impl<S> KlikitWebhookService<S> {
    /// Wraps `inner` with the configuration of `layer`.
    pub fn new(inner: S, layer: &KlikitWebhookLayer) -> Self {
        Self {
            inner,
            config: layer.config.clone(),
        }
    }

    /// A reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone> Clone for KlikitWebhookService<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for KlikitWebhookService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KlikitWebhookService")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for KlikitWebhookService<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body + Send + 'static,
    ReqBody::Data: Send,
    ResBody: ResponseBody + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The readied service goes into the future; a clone stays behind.
        // https://docs.rs/tower/latest/tower/trait.Service.html#be-careful-when-cloning-inner-services
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            inner: Box::pin(handle(self.config.clone(), inner, request)),
        }
    }
}

/// The future returned by [`KlikitWebhookService`].
pub struct ResponseFuture<B, E> {
    inner: Pin<Box<dyn Future<Output = Result<Response<B>, E>> + Send>>,
}

impl<B, E> Future for ResponseFuture<B, E> {
    type Output = Result<Response<B>, E>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<B, E> fmt::Debug for ResponseFuture<B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

fn reject<B: ResponseBody>(kind: RejectionKind) -> Response<B> {
    Rejection::new(kind).into_response()
}

async fn handle<S, ReqBody, ResBody>(
    config: Arc<Config>,
    inner: S,
    request: Request<ReqBody>,
) -> Result<Response<ResBody>, S::Error>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Send,
    S::Future: Send,
    S::Error: Send,
    ReqBody: Body + Send,
    ReqBody::Data: Send,
    ResBody: ResponseBody,
{
    let started = crate::metrics::start();
    let result = deliver(config, inner, request).await;
    let outcome = match &result {
        Ok(response) => match response.extensions().get::<DeliveryOutcome>() {
            Some(outcome) => *outcome,
            None if response.status().is_success() => DeliveryOutcome::Processed,
            None => DeliveryOutcome::HandlerFailed,
        },
        Err(_) => DeliveryOutcome::HandlerFailed,
    };
    crate::metrics::record(outcome, started);
    result
}

async fn deliver<S, ReqBody, ResBody>(
    config: Arc<Config>,
    inner: S,
    request: Request<ReqBody>,
) -> Result<Response<ResBody>, S::Error>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>> + Send,
    S::Future: Send,
    S::Error: Send,
    ReqBody: Body + Send,
    ReqBody::Data: Send,
    ResBody: ResponseBody,
{
    let (parts, body) = request.into_parts();
    let delivery = DeliveryHeaders::parse(&parts.headers).and_then(|delivery| {
        if config.dedup_on_signature && delivery.id.as_str().starts_with(SIGNATURE_KEY_PREFIX) {
            return Err(RejectionKind::InvalidEventId(InvalidEventId::ReservedPrefix));
        }
        Ok(delivery)
    });
    let delivery = match delivery {
        Ok(delivery) => delivery,
        Err(kind) => {
            tracing::warn!(outcome = "rejected", reason = %Rejection::new(kind.clone()), "klikit delivery rejected");
            // Read (and drop) the body so the sender gets the answer, not a reset.
            if !expects_continue(&parts.headers) {
                drain(body, DRAIN_LIMIT, config.body_timeout).await;
            }
            return Ok(reject(kind));
        }
    };
    let span = tracing::info_span!(
        "klikit_webhook",
        event_id = %delivery.id,
        event_type = %delivery.event_type,
    );
    process(config, inner, parts, body, delivery).instrument(span).await
}

async fn process<S, ReqBody, ResBody>(
    config: Arc<Config>,
    mut inner: S,
    mut parts: http::request::Parts,
    body: ReqBody,
    delivery: DeliveryHeaders,
) -> Result<Response<ResBody>, S::Error>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>>,
    ReqBody: Body,
    ResBody: ResponseBody,
{
    let mut verify = config.verifier.start();
    let expect_continue = expects_continue(&parts.headers);
    let bytes = match read_body(
        body,
        config.body_limit,
        config.body_timeout,
        expect_continue,
        &mut verify,
    )
    .await
    {
        Ok(bytes) => bytes,
        Err(kind) => {
            tracing::warn!(outcome = "rejected", reason = %Rejection::new(kind.clone()), "klikit delivery rejected");
            return Ok(reject(kind));
        }
    };
    let expected = match delivery.signature {
        Ok(expected) => expected,
        Err(error) => return Ok(invalid_signature(error)),
    };
    let secret_index = match verify.finish(&expected) {
        Ok(index) => index,
        Err(error) => return Ok(invalid_signature(error)),
    };
    tracing::trace!(secret_index, "signature verified");

    let mut guard = match claim(&config, &delivery.id).await {
        Claimed::New(lease) => Some(ClaimGuard::new(config.clone(), lease)),
        Claimed::Answer(response) => return Ok(response),
        Claimed::StoreDown => None,
    };
    if config.dedup_on_signature
        && let Some(held) = guard.as_mut()
    {
        // The same signed body under another event id: a replay, or Klikit
        // redelivering with a fresh id. Either way it was (being) processed.
        let key = signature_key(&expected);
        match claim(&config, &key).await {
            Claimed::New(lease) => held.replay_lease = Some(lease),
            Claimed::Answer(response) => {
                if response.status().is_success() {
                    tracing::info!("body already processed under another event id; treated as a replay");
                }
                if let Some(held) = guard.take() {
                    held.release().await;
                }
                return Ok(response);
            }
            // Failing open: go on with the id claim alone.
            Claimed::StoreDown => {}
        }
    }

    let event = KlikitEvent::new(delivery.id, delivery.event_type, bytes.clone()).with_secret_index(secret_index);
    parts.extensions.insert(event);
    if let Some(signature) = parts.headers.get_mut(SIGNATURE) {
        signature.set_sensitive(true);
    }
    let request = Request::from_parts(parts, Full::new(bytes));
    tracing::debug!(outcome = "received", "klikit event received");

    let result = inner.call(request).await;
    // Read the status now: the response itself need not be Sync.
    let status = result.as_ref().ok().map(Response::status);
    match (status, guard) {
        (Some(status), Some(guard)) if status.is_success() => guard.complete().await,
        (Some(status), Some(guard)) => {
            tracing::warn!(%status, "handler failed; claim released for the retry");
            guard.release().await;
        }
        (None, Some(guard)) => {
            tracing::warn!("handler returned an error; claim released for the retry");
            guard.release().await;
        }
        (_, None) => {}
    }
    result
}

fn invalid_signature<B: ResponseBody>(error: SignatureError) -> Response<B> {
    tracing::warn!(outcome = "rejected", reason = %error, "klikit delivery rejected: invalid signature");
    reject(RejectionKind::InvalidSignature(error))
}

/// What a claim means for the delivery.
enum Claimed<B> {
    /// Ours: run the handler.
    New(Lease),
    /// Answered without the handler: duplicate, in flight, or store down
    /// while failing closed.
    Answer(Response<B>),
    /// The store failed and the layer fails open: run the handler unclaimed.
    StoreDown,
}

async fn claim<B: ResponseBody>(config: &Config, key: &EventId) -> Claimed<B> {
    match with_timeout(config.store_timeout, config.store.claim(key, config.lease)).await {
        Ok(Claim::New(lease)) => Claimed::New(lease),
        Ok(Claim::Done) => {
            tracing::debug!(
                outcome = "duplicate",
                "klikit event already processed; duplicate ignored"
            );
            let mut response = json_response(StatusCode::OK, DUPLICATE_BODY);
            response.extensions_mut().insert(DeliveryOutcome::Duplicate);
            Claimed::Answer(response)
        }
        Ok(Claim::InFlight { retry_after }) => {
            let retry_after = retry_after.unwrap_or(Duration::from_secs(1));
            tracing::info!(
                outcome = "in_flight",
                ?retry_after,
                "klikit event is being processed by another delivery"
            );
            Claimed::Answer(reject(RejectionKind::InFlight { retry_after }))
        }
        Err(error) => match config.store_failure {
            StoreFailurePolicy::FailClosed => {
                tracing::error!(outcome = "store_error", %error, "dedup store failed; answering 503");
                Claimed::Answer(reject(RejectionKind::StoreUnavailable))
            }
            StoreFailurePolicy::FailOpen => {
                tracing::error!(outcome = "store_error", %error, "dedup store failed; failing open, event not deduplicated");
                Claimed::StoreDown
            }
        },
    }
}

/// The prefix of signature dedup keys. Event ids that start with it are
/// refused while signature deduplication is on, so the two kinds of key can
/// never meet in the store.
const SIGNATURE_KEY_PREFIX: &str = "sig:";

/// The dedup key of a signed body: `sig:` and the signature in hex.
fn signature_key(signature: &[u8; 32]) -> EventId {
    let mut key = String::with_capacity(SIGNATURE_KEY_PREFIX.len() + 64);
    key.push_str(SIGNATURE_KEY_PREFIX);
    key.push_str(&hex::encode(signature));
    match EventId::new(key) {
        Ok(key) => key,
        Err(_) => unreachable!("`sig:` and 64 hex digits are 68 visible ASCII bytes"),
    }
}

/// The three Klikit headers, checked.
struct DeliveryHeaders {
    /// The decoded signature, or why it could not be decoded (reported as a
    /// 401 after the body was read, like a mismatch).
    signature: Result<[u8; 32], SignatureError>,
    id: EventId,
    event_type: EventType,
}

impl DeliveryHeaders {
    fn parse(headers: &HeaderMap) -> Result<Self, RejectionKind> {
        let signature = single(headers, &SIGNATURE, SIGNATURE_HEADER)?;
        let id = single(headers, &EVENT_ID, EVENT_ID_HEADER)?;
        let event_type = single(headers, &EVENT_TYPE, EVENT_TYPE_HEADER)?;
        let id = EventId::from_header_bytes(id.as_bytes()).map_err(RejectionKind::InvalidEventId)?;
        let event_type = event_type
            .to_str()
            .ok()
            .filter(|name| name.len() <= MAX_EVENT_ID_LEN && name.bytes().all(|b| b.is_ascii_graphic()))
            .map(EventType::from_name)
            .ok_or(RejectionKind::InvalidHeader(EVENT_TYPE_HEADER))?;
        Ok(Self {
            signature: parse_signature(signature.as_bytes()),
            id,
            event_type,
        })
    }
}

/// The header's only value: absent or empty is "missing", repeated is
/// "invalid" (two event ids or two signatures are ambiguous).
fn single<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
    label: &'static str,
) -> Result<&'a HeaderValue, RejectionKind> {
    let mut values = headers.get_all(name).iter();
    let value = values.next().ok_or(RejectionKind::MissingHeader(label))?;
    if values.next().is_some() {
        return Err(RejectionKind::InvalidHeader(label));
    }
    if value.is_empty() {
        return Err(RejectionKind::MissingHeader(label));
    }
    Ok(value)
}

/// Reads the whole body, at most `limit` bytes within `timeout`, feeding
/// each frame to the verifier as it arrives.
///
/// A body that arrives in one frame is returned as that frame's `Bytes`
/// without a copy; several frames are gathered into one buffer sized from the
/// body's size hint.
async fn read_body<B: Body>(
    body: B,
    limit: usize,
    timeout: Duration,
    expect_continue: bool,
    verify: &mut VerifyState,
) -> Result<Bytes, RejectionKind> {
    let hint = body.size_hint();
    if hint.lower() > limit as u64 {
        // A client waiting for `100 Continue` has not sent the body and will
        // not, since the body is never polled: answer at once.
        if !expect_continue {
            drain(body, DRAIN_LIMIT, timeout).await;
        }
        return Err(RejectionKind::PayloadTooLarge { limit });
    }
    let mut body = pin!(body);
    let mut sleep = pin!(tokio::time::sleep(timeout));
    let mut first: Option<Bytes> = None;
    let mut gathered: Option<BytesMut> = None;
    let mut total = 0usize;
    loop {
        let frame = poll_fn(|cx| next_frame(body.as_mut(), sleep.as_mut(), cx)).await;
        let frame = match frame {
            Next::Frame(frame) => frame,
            Next::End => break,
            Next::Error => return Err(RejectionKind::BodyRead),
            Next::TimedOut => return Err(RejectionKind::BodyTimeout),
        };
        let Ok(mut data) = frame.into_data() else {
            continue; // trailers carry nothing we verify
        };
        let len = data.remaining();
        total = total.saturating_add(len);
        if total > limit {
            drain_pinned(body, sleep, DRAIN_LIMIT).await;
            return Err(RejectionKind::PayloadTooLarge { limit });
        }
        let chunk = data.copy_to_bytes(len);
        verify.update(&chunk);
        if let Some(buffer) = gathered.as_mut() {
            buffer.extend_from_slice(&chunk);
        } else if let Some(previous) = first.take() {
            let expected = hint.upper().unwrap_or(hint.lower()).min(limit as u64) as usize;
            let mut buffer = BytesMut::with_capacity(expected.max(previous.len() + chunk.len()));
            buffer.extend_from_slice(&previous);
            buffer.extend_from_slice(&chunk);
            gathered = Some(buffer);
        } else {
            first = Some(chunk);
        }
    }
    Ok(match gathered {
        Some(buffer) => buffer.freeze(),
        None => first.unwrap_or_default(),
    })
}

enum Next<D> {
    Frame(http_body::Frame<D>),
    End,
    Error,
    TimedOut,
}

fn next_frame<B: Body>(
    body: Pin<&mut B>,
    sleep: Pin<&mut tokio::time::Sleep>,
    cx: &mut Context<'_>,
) -> Poll<Next<B::Data>> {
    // The body first: a body that is already buffered never arms the timer.
    match body.poll_frame(cx) {
        Poll::Ready(Some(Ok(frame))) => return Poll::Ready(Next::Frame(frame)),
        Poll::Ready(Some(Err(_))) => return Poll::Ready(Next::Error),
        Poll::Ready(None) => return Poll::Ready(Next::End),
        Poll::Pending => {}
    }
    match sleep.poll(cx) {
        Poll::Ready(()) => Poll::Ready(Next::TimedOut),
        Poll::Pending => Poll::Pending,
    }
}

/// Whether the client waits for `100 Continue` before sending the body
/// (hyper sends it only when the body is first polled).
fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::EXPECT)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Reads and discards up to `limit` bytes of `body` within `timeout`.
async fn drain<B: Body>(body: B, limit: usize, timeout: Duration) {
    if body.is_end_stream() {
        return;
    }
    let body = pin!(body);
    let sleep = pin!(tokio::time::sleep(timeout));
    drain_pinned(body, sleep, limit).await;
}

async fn drain_pinned<B: Body>(mut body: Pin<&mut B>, mut sleep: Pin<&mut tokio::time::Sleep>, limit: usize) {
    let mut drained = 0usize;
    while drained <= limit {
        match poll_fn(|cx| next_frame(body.as_mut(), sleep.as_mut(), cx)).await {
            Next::Frame(frame) => {
                if let Some(data) = frame.data_ref() {
                    drained = drained.saturating_add(data.remaining());
                }
            }
            Next::End | Next::Error | Next::TimedOut => return,
        }
    }
}

async fn with_timeout<T>(
    timeout: Duration,
    operation: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, operation).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Timeout(timeout)),
    }
}

/// Owns a [`Claim::New`] lease until the handler's outcome is known.
///
/// If the request future is dropped first (the connection closed, the server
/// shut down, the handler panicked), `Drop` finishes the claim on a spawned
/// task: it releases the claim, or completes it if the handler had already
/// succeeded, so neither a lost event nor a double processing is left behind.
/// Without a Tokio runtime to spawn on, the lease simply expires.
struct ClaimGuard {
    config: Arc<Config>,
    lease: Option<Lease>,
    /// The claim on the body's signature, with signature deduplication on.
    replay_lease: Option<Lease>,
    succeeded: bool,
}

impl ClaimGuard {
    fn new(config: Arc<Config>, lease: Lease) -> Self {
        Self {
            config,
            lease: Some(lease),
            replay_lease: None,
            succeeded: false,
        }
    }

    async fn complete(mut self) {
        self.succeeded = true;
        self.finish_all(true).await;
    }

    async fn release(mut self) {
        self.finish_all(false).await;
    }

    /// Finishes every lease; one that is cancelled midway is left to `Drop`.
    async fn finish_all(&mut self, complete: bool) {
        for slot in [&mut self.lease, &mut self.replay_lease] {
            if let Some(lease) = slot.as_ref() {
                finish(&self.config, lease, complete).await;
            }
            *slot = None;
        }
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let leases: Vec<Lease> = [self.lease.take(), self.replay_lease.take()]
            .into_iter()
            .flatten()
            .collect();
        if leases.is_empty() {
            return;
        }
        let complete = self.succeeded;
        tracing::warn!(
            complete,
            panicking = std::thread::panicking(),
            "klikit delivery ended before its claim was finished; finishing it in the background"
        );
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let config = self.config.clone();
        runtime.spawn(async move {
            for lease in &leases {
                finish(&config, lease, complete).await;
            }
        });
    }
}

/// Completes (after a 2xx) or releases one lease, within the store timeout.
async fn finish(config: &Arc<Config>, lease: &Lease, complete: bool) {
    let (store, timeout) = (&config.store, config.store_timeout);
    let result = if complete {
        with_timeout(timeout, store.complete(lease, config.retention)).await
    } else {
        with_timeout(timeout, store.release(lease)).await
    };
    match (result, complete) {
        (Ok(true), true) => tracing::trace!("claim completed"),
        (Ok(true), false) => tracing::trace!("claim released"),
        (Ok(false), _) => tracing::warn!(
            complete,
            "claim had expired and was taken over before it was finished; the event may be processed again"
        ),
        (Err(error), true) => {
            tracing::warn!(%error, "could not record the processed event; retrying in the background");
            retry_complete(config.clone(), lease.clone());
        }
        (Err(error), false) => tracing::error!(
            %error,
            "could not release the claim; the retry is processed once the lease expires"
        ),
    }
}

/// Keeps trying to complete a claim whose handler succeeded, until the lease
/// would have expired.
///
/// The 2xx has gone out, so Klikit will not retry; but a duplicate it sends
/// later (or an operator's replay) must find the event done. Leaving the
/// claim in flight would let the first delivery after the lease run the
/// handler again. Retrying is safe: `complete` acts only while this lease's
/// token holds the claim.
fn retry_complete(config: Arc<Config>, lease: Lease) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let give_up = tokio::time::Instant::now() + config.lease;
        // At once first (a connection killed under the store is usually
        // replaced by the pool right away), then backing off.
        let mut delay = Duration::ZERO;
        while tokio::time::Instant::now() + delay < give_up {
            tokio::time::sleep(delay).await;
            match with_timeout(config.store_timeout, config.store.complete(&lease, config.retention)).await {
                Ok(true) => {
                    tracing::info!(event_id = %lease.event_id(), "processed event recorded on retry");
                    return;
                }
                // Either an earlier attempt did land (the event is done) or
                // the lease was lost: nothing more to do either way.
                Ok(false) => return,
                Err(_) => delay = (delay * 2).clamp(Duration::from_millis(25), Duration::from_secs(1)),
            }
        }
        tracing::error!(
            event_id = %lease.event_id(),
            "could not record the processed event before its lease ended; a later duplicate will be processed again"
        );
    });
}
