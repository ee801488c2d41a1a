//! The webhook secret.

use std::fmt;

use base64::{
    Engine,
    alphabet::STANDARD,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use zeroize::Zeroizing;

use crate::ConfigError;

/// Secrets shorter than this many bytes are accepted but logged as a warning
/// when the secret is created: they can be guessed offline from one captured
/// delivery.
pub const RECOMMENDED_MIN_SECRET_LEN: usize = 16;

/// The prefix of Standard Webhooks secrets, `whsec_`.
pub const STANDARD_WEBHOOKS_PREFIX: &str = "whsec_";

/// The Standard Webhooks specification asks for keys of 24 to 64 bytes;
/// shorter ones are accepted with a warning.
const STANDARD_WEBHOOKS_MIN_KEY_LEN: usize = 24;

/// The name of the environment variable the examples read the secret from.
pub const SECRET_ENV_VAR: &str = "KLIKIT_WEBHOOK_SECRET";

/// A Klikit webhook secret: the HMAC key, used as the secret string's own
/// bytes (as in all of Klikit's examples).
///
/// It never prints itself (`Debug` shows `[redacted]`) and its bytes are
/// overwritten with zeros when it is dropped.
///
/// ```
/// use klikit_webhook::WebhookSecret;
///
/// let secret = WebhookSecret::new("whk_live_9f8e7d6c5b4a39281706").unwrap();
/// assert_eq!(format!("{secret:?}"), "WebhookSecret([redacted])");
/// assert!(WebhookSecret::new("").is_err());
/// ```
#[derive(Clone)]
pub struct WebhookSecret(Zeroizing<Vec<u8>>);

impl WebhookSecret {
    /// Wraps a secret.
    ///
    /// Leading or trailing whitespace (a newline copied from a file, say) is
    /// kept, because it is part of the key, but logged as a warning: it is
    /// the most common reason why every signature fails.
    ///
    /// # Errors
    ///
    /// [`ConfigError::EmptySecret`] if `secret` is empty.
    pub fn new(secret: impl Into<Vec<u8>>) -> Result<Self, ConfigError> {
        let secret = Zeroizing::new(secret.into());
        if secret.is_empty() {
            return Err(ConfigError::EmptySecret);
        }
        if secret.len() < RECOMMENDED_MIN_SECRET_LEN {
            tracing::warn!(
                len = secret.len(),
                min = RECOMMENDED_MIN_SECRET_LEN,
                "klikit webhook secret is shorter than recommended"
            );
        }
        let edges = [secret.first(), secret.last()];
        if edges.into_iter().flatten().any(u8::is_ascii_whitespace) {
            tracing::warn!(
                "klikit webhook secret starts or ends with whitespace; signatures will fail if Klikit's secret does not"
            );
        }
        Ok(Self(secret))
    }

    /// A [Standard Webhooks](crate::scheme::StandardWebhooks) secret:
    /// `whsec_<base64>` (the prefix is optional), whose HMAC key is the
    /// **decoded** bytes. Padding is optional and unused trailing bits are
    /// ignored, as in the specification's Python library.
    ///
    /// ```
    /// use klikit_webhook::WebhookSecret;
    ///
    /// let with_prefix = WebhookSecret::standard_webhooks("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    /// let without = WebhookSecret::standard_webhooks("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    /// assert_eq!(with_prefix.expose(), without.expose());
    /// assert_eq!(with_prefix.expose().len(), 24);
    /// assert!(WebhookSecret::standard_webhooks("whsec_").is_err());
    /// assert!(WebhookSecret::standard_webhooks("whsec_not base64!").is_err());
    /// ```
    ///
    /// # Errors
    ///
    /// [`ConfigError::EmptySecret`] if nothing follows the prefix,
    /// [`ConfigError::InvalidBase64Secret`] if it is not base64.
    pub fn standard_webhooks(secret: &str) -> Result<Self, ConfigError> {
        const BASE64: GeneralPurpose = GeneralPurpose::new(
            &STANDARD,
            GeneralPurposeConfig::new()
                .with_decode_padding_mode(DecodePaddingMode::Indifferent)
                .with_decode_allow_trailing_bits(true),
        );
        let encoded = secret.strip_prefix(STANDARD_WEBHOOKS_PREFIX).unwrap_or(secret);
        let key = Zeroizing::new(BASE64.decode(encoded).map_err(ConfigError::InvalidBase64Secret)?);
        if key.is_empty() {
            return Err(ConfigError::EmptySecret);
        }
        if key.len() < STANDARD_WEBHOOKS_MIN_KEY_LEN {
            tracing::warn!(
                len = key.len(),
                min = STANDARD_WEBHOOKS_MIN_KEY_LEN,
                "standard webhooks secret is shorter than the specification's minimum"
            );
        }
        // The key is random bytes: no whitespace warning, unlike `new`.
        Ok(Self(key))
    }

    /// Reads the secret from the environment variable `name`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::MissingSecret`] if the variable is unset or not
    /// Unicode, [`ConfigError::EmptySecret`] if it is empty.
    pub fn from_env(name: &str) -> Result<Self, ConfigError> {
        let value = std::env::var(name).map_err(|_| ConfigError::MissingSecret {
            variable: name.to_owned(),
        })?;
        Self::new(value)
    }

    /// The key bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret([redacted])")
    }
}

impl TryFrom<String> for WebhookSecret {
    type Error = ConfigError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl TryFrom<&str> for WebhookSecret {
    type Error = ConfigError;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}
