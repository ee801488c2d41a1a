//! Configuration errors.

/// A setting the crate cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The webhook secret is empty.
    #[error("the Klikit webhook secret is empty; set it to the secret Klikit issued for your endpoint")]
    EmptySecret,
    /// The environment variable that should hold the secret is not set.
    #[error("{variable} is not set; export the webhook secret Klikit issued for your endpoint")]
    MissingSecret {
        /// The variable's name.
        variable: String,
    },
    /// A Standard Webhooks secret is not base64 after its optional `whsec_`
    /// prefix.
    #[error(
        "the Standard Webhooks secret is not valid base64 after its optional whsec_ prefix; copy it exactly as the sender shows it"
    )]
    InvalidBase64Secret(#[source] base64::DecodeError),
    /// A subscription was given no secrets.
    #[error("subscription {subscription:?} has no secrets; give it at least one, newest first")]
    NoSecrets {
        /// The subscription id.
        subscription: String,
    },
    /// A table or schema name for an SQL dedup store is not a plain
    /// identifier: it must match `[A-Za-z_][A-Za-z0-9_]*` and be at most 63
    /// bytes long.
    #[error(
        "{name:?} is not a valid SQL identifier: use 1 to 63 ASCII letters, digits and underscores, not starting with a digit"
    )]
    InvalidIdentifier {
        /// The rejected name.
        name: String,
    },
}
