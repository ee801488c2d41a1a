//! axum extractors: [`KlikitEvent`] and [`KlikitPayload`].

use axum::{
    extract::{FromRequestParts, OptionalFromRequestParts},
    http::{StatusCode, request::Parts},
    response::{IntoResponse, Response},
};
use serde::de::DeserializeOwned;

use crate::{KlikitEvent, payload::OrderEnvelope};

/// The extractor found no [`KlikitEvent`]: the route is not behind
/// [`KlikitWebhookLayer`](crate::KlikitWebhookLayer). Answers 500, since this
/// is a server bug, never the sender's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("KlikitWebhookLayer is missing: add `.layer(KlikitWebhookLayer::new(secret))` to the router or route")]
#[non_exhaustive]
pub struct MissingWebhookLayer;

impl IntoResponse for MissingWebhookLayer {
    fn into_response(self) -> Response {
        tracing::error!(target: "klikit_webhook::rejection", "{self}");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            r#"{"error":"KlikitWebhookLayer is missing on this route"}"#,
        )
            .into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for KlikitEvent {
    type Rejection = MissingWebhookLayer;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<KlikitEvent>()
            .cloned()
            .ok_or(MissingWebhookLayer)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for KlikitEvent {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<KlikitEvent>().cloned())
    }
}

/// Extracts the event's body parsed as `T` (by default the documented
/// [`OrderEnvelope`]).
///
/// A body that does not parse answers 422, which releases the claim: fix the
/// type (or use [`KlikitEvent::json`] and decide yourself) rather than letting
/// Klikit retry an event you can never read.
///
/// ```
/// use axum::{Router, routing::post};
/// use klikit_webhook::{KlikitPayload, KlikitWebhookLayer, WebhookSecret};
///
/// async fn handle(KlikitPayload(envelope): KlikitPayload) -> &'static str {
///     for order in &envelope.orders {
///         println!("order {} status {:?}", order.id, order.status);
///     }
///     "ok"
/// }
///
/// let secret = WebhookSecret::new("a-long-random-webhook-secret").unwrap();
/// let app: Router = Router::new()
///     .route("/webhooks/klikit", post(handle))
///     .layer(KlikitWebhookLayer::new(secret));
/// ```
#[derive(Debug, Clone)]
pub struct KlikitPayload<T = OrderEnvelope>(pub T);

/// Why [`KlikitPayload`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadRejection {
    /// The route is not behind the layer (500).
    #[error(transparent)]
    MissingLayer(#[from] MissingWebhookLayer),
    /// The body is not the expected JSON (422).
    #[error("the klikit payload does not match the expected type: {0}")]
    InvalidJson(#[source] serde_json::Error),
}

impl PayloadRejection {
    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingLayer(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::InvalidJson(_) => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
}

impl IntoResponse for PayloadRejection {
    fn into_response(self) -> Response {
        match self {
            Self::MissingLayer(missing) => missing.into_response(),
            Self::InvalidJson(error) => {
                tracing::warn!(target: "klikit_webhook::rejection", %error, "klikit payload did not parse");
                let body = serde_json::json!({ "error": format!("invalid payload: {error}") });
                (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response()
            }
        }
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for KlikitPayload<T> {
    type Rejection = PayloadRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let event = <KlikitEvent as FromRequestParts<S>>::from_request_parts(parts, state).await?;
        event.json().map(KlikitPayload).map_err(PayloadRejection::InvalidJson)
    }
}
