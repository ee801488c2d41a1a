//! The layer as the environment configures it: the schemes
//! (`KLIKIT_SCHEME`), their replay window (`KLIKIT_TOLERANCE_SECS`), the
//! secrets (`KLIKIT_WEBHOOK_SECRET`, `KLIKIT_WEBHOOK_PREVIOUS_SECRET`,
//! `KLIKIT_WEBHOOK_SECRETS_FILE`) and the store (`KLIKIT_STORE`).
//!
//! Every bad value is a [`ReceiverError::Config`] of one line that names the
//! variable and never holds a secret.

use std::{collections::HashMap, fmt, path::Path, sync::Arc, time::Duration};

use klikit_webhook::{
    ConfigError, KlikitWebhookLayer, SECRET_ENV_VAR, STANDARD_WEBHOOKS_PREFIX, WebhookSecret,
    scheme::{DEFAULT_TOLERANCE, Klikit, KlikitV1, Scheme, StandardWebhooks},
    secrets::SubscriptionSecrets,
};
use serde_json::Value;

use super::{DEFAULT_STORE, ReceiverError, STORE_ENV_VAR, store_from_spec};

/// The environment variable that selects the signature schemes.
pub const SCHEME_ENV_VAR: &str = "KLIKIT_SCHEME";
/// The environment variable that sets the replay window of the timestamped
/// schemes, in whole seconds.
pub const TOLERANCE_ENV_VAR: &str = "KLIKIT_TOLERANCE_SECS";
/// The environment variable that names the JSON file of secrets per
/// subscription.
pub const SECRETS_FILE_ENV_VAR: &str = "KLIKIT_WEBHOOK_SECRETS_FILE";
/// The environment variable of the previous secret, accepted during a
/// rotation.
pub const PREVIOUS_SECRET_ENV_VAR: &str = "KLIKIT_WEBHOOK_PREVIOUS_SECRET";

/// What `KLIKIT_SCHEME` accepts, for error messages.
const SCHEME_HELP: &str =
    "use klikit (the default), klikit-v1 or standard-webhooks, or a comma list such as klikit,klikit-v1";

/// A signature scheme by the name `KLIKIT_SCHEME` and `klikit --scheme`
/// give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SchemeName {
    /// `klikit`: today's contract, [`Klikit`] (hex HMAC of the body).
    Klikit,
    /// `klikit-v1`: Partner API v1, [`KlikitV1`] (`t=<unix>,v1=<hex>`).
    KlikitV1,
    /// `standard-webhooks`: [`StandardWebhooks`] (`v1,<base64>`).
    StandardWebhooks,
}

impl SchemeName {
    /// Every scheme, in the order the documentation lists them.
    pub const ALL: [Self; 3] = [Self::Klikit, Self::KlikitV1, Self::StandardWebhooks];

    /// The name: `klikit`, `klikit-v1` or `standard-webhooks`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Klikit => "klikit",
            Self::KlikitV1 => "klikit-v1",
            Self::StandardWebhooks => "standard-webhooks",
        }
    }

    /// The scheme named `name` (exactly, in lower case), if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|scheme| scheme.as_str() == name)
    }

    /// Whether the scheme signs a timestamp, and so has a replay window.
    pub const fn is_timestamped(self) -> bool {
        !matches!(self, Self::Klikit)
    }

    /// The scheme, with the replay window `tolerance` where it has one.
    pub fn scheme(self, tolerance: Duration) -> Arc<dyn Scheme> {
        match self {
            Self::Klikit => Arc::new(Klikit::new()),
            Self::KlikitV1 => Arc::new(KlikitV1::new().with_tolerance(tolerance)),
            Self::StandardWebhooks => Arc::new(StandardWebhooks::new().with_tolerance(tolerance)),
        }
    }

    /// Reads a secret for this scheme alone: see [`secret_for`].
    ///
    /// # Errors
    ///
    /// As [`secret_for`].
    pub fn secret(self, value: &str) -> Result<WebhookSecret, ConfigError> {
        secret_for(&[self], value)
    }
}

impl fmt::Display for SchemeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Turns a configured secret string into the HMAC key, for a route that
/// accepts `schemes`:
///
/// - the Klikit schemes (`klikit`, `klikit-v1`) use the string's own bytes,
///   as in all of Klikit's examples;
/// - `standard-webhooks` alone decodes it as the specification says:
///   `whsec_<base64>`, the prefix optional, the key the decoded bytes;
/// - a list with `standard-webhooks` and a Klikit scheme shares its secrets
///   between them, so there the prefix decides: a `whsec_…` value is
///   decoded, any other is its own bytes.
///
/// # Errors
///
/// [`ConfigError::EmptySecret`] for an empty secret (or nothing after
/// `whsec_`), [`ConfigError::InvalidBase64Secret`] for a Standard Webhooks
/// secret that is not base64. Neither message holds the secret.
pub fn secret_for(schemes: &[SchemeName], value: &str) -> Result<WebhookSecret, ConfigError> {
    let standard = schemes.contains(&SchemeName::StandardWebhooks);
    if standard && (schemes.len() == 1 || value.starts_with(STANDARD_WEBHOOKS_PREFIX)) {
        WebhookSecret::standard_webhooks(value)
    } else {
        WebhookSecret::new(value)
    }
}

/// Reads a `KLIKIT_SCHEME` value: one name, or a comma list (spaces around
/// the names allowed) whose first is the scheme whose errors a delivery of
/// none of them gets.
///
/// # Errors
///
/// One line naming the unknown, empty or repeated name.
pub fn parse_schemes(value: &str) -> Result<Vec<SchemeName>, String> {
    let mut schemes = Vec::new();
    for name in value.split(',').map(str::trim) {
        let Some(scheme) = SchemeName::from_name(name) else {
            return Err(if name.is_empty() {
                format!("{SCHEME_ENV_VAR}={value:?} names no scheme there; {SCHEME_HELP}")
            } else {
                format!("{SCHEME_ENV_VAR}: unknown scheme {name:?}; {SCHEME_HELP}")
            });
        };
        if schemes.contains(&scheme) {
            return Err(format!("{SCHEME_ENV_VAR}={value:?} names {scheme} twice"));
        }
        schemes.push(scheme);
    }
    Ok(schemes)
}

/// Reads a `KLIKIT_TOLERANCE_SECS` value: a whole number of seconds, at
/// least 1.
///
/// # Errors
///
/// One line saying what is wrong with it.
pub fn parse_tolerance(value: &str) -> Result<Duration, String> {
    match value.parse::<u64>() {
        Ok(0) => Err(format!(
            "{TOLERANCE_ENV_VAR}=0 would refuse every delivery; give at least 1 second (the default is {})",
            DEFAULT_TOLERANCE.as_secs()
        )),
        Ok(seconds) => Ok(Duration::from_secs(seconds)),
        Err(_) if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
            Err(format!("{TOLERANCE_ENV_VAR}={value:?} is too large"))
        }
        Err(_) => Err(format!(
            "{TOLERANCE_ENV_VAR}={value:?} is not a whole number of seconds (the default is {})",
            DEFAULT_TOLERANCE.as_secs()
        )),
    }
}

/// Reads a `KLIKIT_WEBHOOK_SECRETS_FILE`: a JSON object that maps each
/// subscription id (the `X-Klikit-Webhook-Id` of its deliveries) to its
/// list of secrets, newest first, each read by [`secret_for`]:
///
/// ```json
/// {"wh_business_42": ["secret-42-new", "secret-42-old"], "wh_business_43": ["secret-43"]}
/// ```
///
/// A subscription id written twice keeps its last list, as JSON parsers do.
///
/// # Errors
///
/// One line naming the file and what is wrong: unreadable, not JSON, not an
/// object, no subscription, an id no header can carry, a list that is empty
/// or holds something other than non-empty strings. It never holds a secret.
pub fn read_secrets_file(path: &Path, schemes: &[SchemeName]) -> Result<SubscriptionSecrets, String> {
    let at = format!("{SECRETS_FILE_ENV_VAR}={path:?}");
    let text = std::fs::read_to_string(path).map_err(|e| format!("{at}: cannot read it: {e}"))?;
    let json: Value = serde_json::from_str(&text).map_err(|e| match e.classify() {
        // Syntax messages describe the grammar, never the text.
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            format!("{at}: not valid JSON: {e}")
        }
        _ => format!("{at}: not valid JSON (line {}, column {})", e.line(), e.column()),
    })?;
    let Value::Object(object) = json else {
        return Err(format!(
            "{at}: not a JSON object; write {{\"<subscription id>\": [\"<newest secret>\", \"<previous secret>\"], \
             ...}}"
        ));
    };
    if object.is_empty() {
        return Err(format!("{at}: names no subscription"));
    }
    let mut subscriptions = HashMap::with_capacity(object.len());
    for (subscription, list) in object {
        if subscription.is_empty() || !subscription.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "{at}: subscription id {subscription:?} cannot be an X-Klikit-Webhook-Id \
                 (1 or more visible ASCII characters)"
            ));
        }
        let Value::Array(values) = list else {
            return Err(format!(
                "{at}: subscription {subscription:?}: its secrets must be a list of strings, newest first"
            ));
        };
        if values.is_empty() {
            return Err(format!(
                "{at}: subscription {subscription:?} has no secrets; give it at least one, newest first"
            ));
        }
        let mut secrets = Vec::with_capacity(values.len());
        for (n, value) in values.iter().enumerate() {
            let n = n + 1;
            let Value::String(value) = value else {
                return Err(format!(
                    "{at}: subscription {subscription:?}: secret {n} is not a string"
                ));
            };
            let secret = secret_for(schemes, value)
                .map_err(|e| format!("{at}: subscription {subscription:?}: secret {n}: {e}"))?;
            secrets.push(secret);
        }
        subscriptions.insert(subscription, secrets);
    }
    SubscriptionSecrets::new(subscriptions).map_err(|e| format!("{at}: {e}"))
}

/// The value of `name`: `None` when unset.
fn var(name: &str) -> Result<Option<String>, String> {
    match std::env::var(name) {
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{name} is not valid UTF-8")),
    }
}

/// A secret variable, read by [`secret_for`].
fn secret_var(name: &str, schemes: &[SchemeName]) -> Result<Option<WebhookSecret>, String> {
    var(name)?
        .map(|value| secret_for(schemes, &value).map_err(|e| format!("{name}: {e}")))
        .transpose()
}

/// The layer as configured from the environment, with the default memory
/// store:
///
/// - `KLIKIT_SCHEME` (default `klikit`): [`parse_schemes`]. The first is
///   the layer's scheme, the others are added with
///   [`with_extra_scheme`](KlikitWebhookLayer::with_extra_scheme).
/// - `KLIKIT_TOLERANCE_SECS` (default 300): [`parse_tolerance`], for
///   `klikit-v1` and `standard-webhooks`.
/// - `KLIKIT_WEBHOOK_SECRET`, `KLIKIT_WEBHOOK_PREVIOUS_SECRET`: one secret
///   for every delivery, and the previous one during a rotation.
/// - `KLIKIT_WEBHOOK_SECRETS_FILE` ([`read_secrets_file`]): secrets per
///   subscription ([`KlikitWebhookLayer::per_subscription`]), for
///   `klikit-v1`. With `KLIKIT_WEBHOOK_SECRET` as well, that secret (and
///   the previous one) verifies the deliveries that name no subscription:
///   today's contract on the same route, or a v1 delivery without
///   `X-Klikit-Webhook-Id`.
///
/// # Errors
///
/// One line for the first bad or missing value.
pub fn layer_from_vars() -> Result<KlikitWebhookLayer, String> {
    let schemes = match var(SCHEME_ENV_VAR)? {
        Some(value) => parse_schemes(&value)?,
        None => vec![SchemeName::Klikit],
    };
    let tolerance = match var(TOLERANCE_ENV_VAR)? {
        Some(value) => {
            let tolerance = parse_tolerance(&value)?;
            if !schemes.iter().any(|scheme| scheme.is_timestamped()) {
                tracing::warn!("{TOLERANCE_ENV_VAR} has no effect: the klikit scheme signs no timestamp");
            }
            tolerance
        }
        None => DEFAULT_TOLERANCE,
    };
    let secret = secret_var(SECRET_ENV_VAR, &schemes)?;
    let previous = secret_var(PREVIOUS_SECRET_ENV_VAR, &schemes)?;
    if previous.is_some() && secret.is_none() {
        return Err(format!(
            "{PREVIOUS_SECRET_ENV_VAR} is set but {SECRET_ENV_VAR} is not; set the current secret too"
        ));
    }
    let fixed = usize::from(secret.is_some()) + usize::from(previous.is_some());
    let (layer, subscriptions) = match (var(SECRETS_FILE_ENV_VAR)?, secret) {
        (None, None) => {
            return Err(format!(
                "{SECRET_ENV_VAR} is not set; export the webhook secret Klikit issued for your endpoint, \
                 or point {SECRETS_FILE_ENV_VAR} at a JSON file of secrets per subscription"
            ));
        }
        (None, Some(secret)) => (KlikitWebhookLayer::new(secret), 0),
        (Some(path), secret) => {
            if path.is_empty() {
                return Err(format!("{SECRETS_FILE_ENV_VAR} is empty; give the path of a JSON file"));
            }
            if !schemes.contains(&SchemeName::KlikitV1) {
                return Err(format!(
                    "{SECRETS_FILE_ENV_VAR} needs klikit-v1, whose deliveries name their subscription \
                     (X-Klikit-Webhook-Id); add it to {SCHEME_ENV_VAR}"
                ));
            }
            if secret.is_none()
                && let Some(other) = schemes.iter().find(|scheme| **scheme != SchemeName::KlikitV1)
            {
                return Err(format!(
                    "{SCHEME_ENV_VAR} includes {other}, whose deliveries name no subscription; \
                     set {SECRET_ENV_VAR} to verify them next to {SECRETS_FILE_ENV_VAR}"
                ));
            }
            let subscriptions = read_secrets_file(Path::new(&path), &schemes)?;
            let count = subscriptions.len();
            let layer = KlikitWebhookLayer::per_subscription(subscriptions);
            match secret {
                Some(secret) => (layer.with_secret(secret), count),
                None => (layer, count),
            }
        }
    };
    let mut layer = match previous {
        Some(previous) => layer.with_secret(previous),
        None => layer,
    };
    for (n, name) in schemes.iter().enumerate() {
        layer = match (n, name) {
            (0, SchemeName::Klikit) => layer.with_scheme(Klikit::new()),
            (_, SchemeName::Klikit) => layer.with_extra_scheme(Klikit::new()),
            (0, SchemeName::KlikitV1) => layer.with_scheme(KlikitV1::new().with_tolerance(tolerance)),
            (_, SchemeName::KlikitV1) => layer.with_extra_scheme(KlikitV1::new().with_tolerance(tolerance)),
            (0, SchemeName::StandardWebhooks) => layer.with_scheme(StandardWebhooks::new().with_tolerance(tolerance)),
            (_, SchemeName::StandardWebhooks) => {
                layer.with_extra_scheme(StandardWebhooks::new().with_tolerance(tolerance))
            }
        };
    }
    let names: Vec<_> = schemes.iter().map(|scheme| scheme.as_str()).collect();
    tracing::info!(
        schemes = %names.join(","),
        tolerance_secs = tolerance.as_secs(),
        subscriptions,
        fixed_secrets = fixed,
        "webhook verification"
    );
    Ok(layer)
}

/// The layer as configured from the environment (see [`layer_from_vars`]),
/// with the dedup store of `KLIKIT_STORE` (see [`store_from_spec`]).
/// Connects to the store, so it is `async`.
///
/// # Errors
///
/// [`ReceiverError::Config`] for a missing or bad setting (one line, never
/// a secret), [`ReceiverError::Store`] if the store cannot be opened.
pub async fn layer_from_env() -> Result<KlikitWebhookLayer, ReceiverError> {
    let layer = layer_from_vars().map_err(ReceiverError::Config)?;
    let spec = std::env::var(STORE_ENV_VAR).unwrap_or_else(|_| DEFAULT_STORE.into());
    let store = store_from_spec(&spec).await?;
    Ok(layer.with_shared_store(store))
}
