//! [`KlikitWebhookService`]: the request path, wired from one module per
//! concept:
//!
//! ```text
//! method ──► headers ──► scheme.parse ──► body (limit, timeout, drain) ──► verify ──► claim ──► inner service ──► finish claim
//!              (scheme/)                    (body.rs)             (verify.rs)   (claim.rs)                  (claim.rs)
//! ```
//!
//! Every delivery ends in one [`DeliveryOutcome`], logged once and recorded
//! in metrics here.

mod background;
mod body;
mod claim;
mod deadline;
mod future;
mod report;
mod verify;

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower_service::Service;
use tracing::Instrument;

pub(crate) use self::background::{Background, MAX_BACKGROUND_CALLS, MAX_BACKGROUND_TASKS};
pub use self::future::ResponseFuture;
use self::{
    body::IncomingBody,
    claim::{Admission, SIGNATURE_KEY_PREFIX},
};
use crate::{
    EventId, FromJson, InvalidEventId, KlikitEvent, KlikitWebhookLayer, RejectionKind,
    layer::Config,
    scheme::{Delivery, Scheme},
    secrets::ResolveError,
    store::StoreError,
};

/// The service made by [`KlikitWebhookLayer`]. See the layer for what it does.
///
/// It passes the inner service a `Request<Full<Bytes>>` that holds the
/// verified bytes, with a [`KlikitEvent`] in the extensions, and returns the
/// inner service's response (or its own JSON answer in the same body type).
pub struct KlikitWebhookService<S> {
    inner: S,
    config: Arc<Config>,
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
    ResBody: FromJson + Send + 'static,
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
        let started = crate::metrics::start();
        let config = self.config.clone();
        // What needs no waiting is done here, so that the future of an
        // accepted delivery holds only what it needs across its awaits.
        let (parts, body) = request.into_parts();
        let body = IncomingBody::new(body, &parts.headers, config.body_limit, config.body_timeout);
        let (scheme, delivery) = match admit_headers(&config, &parts) {
            Ok(admitted) => admitted,
            Err(kind) => return ResponseFuture::new(refuse(config, body, kind, started)),
        };
        let span = tracing::info_span!(
            "klikit_webhook",
            scheme = config.schemes.get(scheme).name(),
            event_id = %delivery.id(),
            event_type = %delivery.event_type(),
        );
        let delivered = deliver(config, scheme, inner, parts, body, delivery, started);
        // A disabled span (the subscriber filters it out, or there is none)
        // would only cost its wrapper.
        if span.is_disabled() {
            ResponseFuture::new(delivered)
        } else {
            ResponseFuture::new(delivered.instrument(span))
        }
    }
}

/// The method and the scheme's headers: the delivery and the index of the
/// scheme that read it, or why it is refused before its body is read.
fn admit_headers(config: &Config, parts: &http::request::Parts) -> Result<(usize, Delivery), RejectionKind> {
    if parts.method != http::Method::POST {
        // Klikit POSTs every delivery: 405 before the headers are read.
        return Err(RejectionKind::MethodNotAllowed {
            method: parts.method.clone(),
        });
    }
    let index = config.schemes.select_index(&parts.headers);
    let scheme = config.schemes.get(index);
    let delivery = scheme
        .parse(&parts.headers)
        .and_then(|delivery| refuse_reserved_id(config, scheme, delivery))?;
    Ok((index, delivery))
}

/// Answers a delivery refused on its method or headers, once its body is
/// read (and dropped) so the sender gets the answer, not a reset.
async fn refuse<ReqBody: Body, ResBody: FromJson, E>(
    config: Arc<Config>,
    body: IncomingBody<ReqBody>,
    kind: RejectionKind,
    started: crate::metrics::Started,
) -> Result<Response<ResBody>, E> {
    body.discard().await;
    report::conclude(rejected(kind), &config.metrics, started)
}

/// A delivery refused for `kind`, with no store error behind it.
fn rejected<B, E>(kind: RejectionKind) -> Ended<B, E> {
    Ended::Refused(Refusal::Rejected { kind, cause: None })
}

/// Why the layer answered a delivery itself, without the handler.
pub(crate) enum Refusal {
    /// Already processed: `200 {"status":"duplicate-ignored"}`.
    Duplicate,
    /// Already processed, with another body than this delivery's: the same
    /// answer, logged at `WARN` (naming the event id, which the request span
    /// shows only at `INFO`) and counted apart.
    DuplicateBodyMismatch { event_id: EventId },
    /// Refused, with the store error behind it where there is one.
    Rejected {
        kind: RejectionKind,
        cause: Option<StoreError>,
    },
    /// The secret resolver failed: 503, like a store failure.
    SecretsUnavailable(ResolveError),
}

/// How a delivery ended.
pub(crate) enum Ended<B, E> {
    Refused(Refusal),
    Handled(Result<Response<B>, E>),
}

/// Signature dedup keys share the store with event ids; an id that looks
/// like one is refused while signature deduplication is on.
fn refuse_reserved_id(config: &Config, scheme: &dyn Scheme, delivery: Delivery) -> Result<Delivery, RejectionKind> {
    if config.dedup_on_signature && delivery.id().as_str().starts_with(SIGNATURE_KEY_PREFIX) {
        return Err(RejectionKind::InvalidEventId {
            header: scheme.event_id_header(),
            error: InvalidEventId::ReservedPrefix,
        });
    }
    Ok(delivery)
}

/// Reads and verifies the body, claims the event, runs the inner service
/// and finishes the claim: the rest of an accepted delivery, as one future.
///
/// Written as a function returning an `async move` block rather than as an
/// `async fn`: the block uses its captures in place, where an `async fn`
/// would also copy each argument into a local, making the boxed future
/// larger and moving more on every delivery.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would copy its arguments into its future (above)"
)]
fn deliver<S, ReqBody, ResBody>(
    config: Arc<Config>,
    scheme: usize,
    mut inner: S,
    mut parts: http::request::Parts,
    body: IncomingBody<ReqBody>,
    delivery: Delivery,
    started: crate::metrics::Started,
) -> impl Future<Output = Result<Response<ResBody>, S::Error>>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>>,
    ReqBody: Body,
    ResBody: FromJson,
{
    async move {
        let scheme = config.schemes.get(scheme);
        // A verifier at hand (fixed secrets, the common case) is borrowed
        // from the config: no lookup future to build, no reference count to
        // touch.
        let resolved;
        let verifier = match config.secrets.verifier_for(&delivery) {
            Ok(verifier) => &**verifier,
            Err(lookup) => match lookup.resolve(config.store_timeout).await {
                Ok(verifier) => {
                    resolved = verifier;
                    &*resolved
                }
                Err(error) => {
                    body.discard().await;
                    return report::conclude(
                        Ended::Refused(Refusal::SecretsUnavailable(error)),
                        &config.metrics,
                        started,
                    );
                }
            },
        };
        let mut state = verify::start(verifier, &delivery);
        let bytes = match body.read(&mut state).await {
            Ok(bytes) => bytes,
            Err(kind) => return report::conclude(rejected(kind), &config.metrics, started),
        };
        let verified = match verify::finish(state, scheme, &delivery, &bytes) {
            Ok(verified) => verified,
            Err(kind) => return report::conclude(rejected(kind), &config.metrics, started),
        };
        tracing::trace!(secret_index = verified.secret_index, "signature verified");

        let signature = if config.dedup_on_signature {
            delivery
                .signatures()
                .ok()
                .and_then(|list| list.as_slice().first().copied())
        } else {
            None
        };
        let guard = match claim::admit(&config, &verified.id, signature.as_ref(), &bytes).await {
            Admission::Granted(guard) => guard,
            Admission::Refused(refusal) => return report::conclude(Ended::Refused(refusal), &config.metrics, started),
        };

        let (_, event_type) = delivery.into_id_and_type();
        let event = KlikitEvent::new(verified.id, event_type, bytes.clone()).with_secret_index(verified.secret_index);
        parts.extensions.insert(event);
        if let Some(signature) = parts.headers.get_mut(scheme.signature_header()) {
            signature.set_sensitive(true);
        }
        // The claim's completion digests the body; the handler gets its own handle.
        let result = inner.call(Request::from_parts(parts, Full::new(bytes.clone()))).await;
        if let Some(guard) = guard {
            // Read the status now: the response itself need not be Sync.
            let succeeded = result.as_ref().is_ok_and(|response| response.status().is_success());
            if succeeded {
                guard.complete(&bytes).await;
            } else {
                guard.release().await;
            }
        }
        report::conclude(Ended::Handled(result), &config.metrics, started)
    }
}
