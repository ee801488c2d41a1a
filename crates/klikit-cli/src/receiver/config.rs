//! The layer as the environment configures it.

use klikit_webhook::{KlikitWebhookLayer, SECRET_ENV_VAR, WebhookSecret};

use super::{DEFAULT_STORE, ReceiverError, STORE_ENV_VAR, store_from_spec};

/// The layer as configured from the environment: `KLIKIT_WEBHOOK_SECRET`
/// (required), `KLIKIT_WEBHOOK_PREVIOUS_SECRET` (optional, for rotations) and
/// `KLIKIT_STORE` (see [`store_from_spec`]). Connects to the store, so it is
/// `async`.
///
/// # Errors
///
/// [`ReceiverError::Config`] if the secret is unset or empty or the store
/// spec is unknown, [`ReceiverError::Store`] if the store cannot be opened.
pub async fn layer_from_env() -> Result<KlikitWebhookLayer, ReceiverError> {
    let secret = WebhookSecret::from_env(SECRET_ENV_VAR).map_err(|e| ReceiverError::Config(e.to_string()))?;
    let previous = match std::env::var("KLIKIT_WEBHOOK_PREVIOUS_SECRET") {
        Ok(previous) => Some(
            WebhookSecret::new(previous)
                .map_err(|e| ReceiverError::Config(format!("KLIKIT_WEBHOOK_PREVIOUS_SECRET: {e}")))?,
        ),
        Err(_) => None,
    };
    let spec = std::env::var(STORE_ENV_VAR).unwrap_or_else(|_| DEFAULT_STORE.into());
    let store = store_from_spec(&spec).await?;
    let mut layer = KlikitWebhookLayer::new(secret).with_shared_store(store);
    if let Some(previous) = previous {
        layer = layer.with_secret(previous);
    }
    Ok(layer)
}
