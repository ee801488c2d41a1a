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
}
