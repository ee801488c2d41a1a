//! Helpers for code that keeps Klikit data in SQL tables whose names are
//! configurable: the SQLite and Postgres dedup stores here, and the Postgres
//! outbox of the `klikit-handoff` crate.
//!
//! SQL cannot bind a table or schema name as a parameter, so such names are
//! spliced into statements. [`validate_identifier`] is the one check every
//! one of them runs first; the name is then double-quoted in the statement.
//!
//! ```
//! use klikit_webhook::{ConfigError, store::sql::validate_identifier};
//!
//! assert!(validate_identifier("klikit_webhook_outbox").is_ok());
//! assert!(matches!(
//!     validate_identifier("outbox; DROP TABLE orders"),
//!     Err(ConfigError::InvalidIdentifier { .. })
//! ));
//! ```

use crate::ConfigError;

/// The longest identifier Postgres keeps without truncating it, in bytes.
pub const MAX_IDENTIFIER_LEN: usize = 63;

/// Checks that `name` is a plain SQL identifier, safe to splice (quoted)
/// into a statement: `[A-Za-z_][A-Za-z0-9_]*`, at most
/// [`MAX_IDENTIFIER_LEN`] bytes.
///
/// # Errors
///
/// [`ConfigError::InvalidIdentifier`] with the rejected name otherwise.
pub fn validate_identifier(name: &str) -> Result<(), ConfigError> {
    let bytes = name.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= MAX_IDENTIFIER_LEN
        && (bytes[0].is_ascii_alphabetic() || bytes[0] == b'_')
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_');
    if valid {
        Ok(())
    } else {
        Err(ConfigError::InvalidIdentifier { name: name.to_owned() })
    }
}
