//! Signing and constant-time verification of `x-klikit-signature`.
//!
//! Klikit signs each delivery with `hex(HMAC-SHA256(secret, raw body))`:
//! 64 hex digits, no prefix, computed over the exact bytes on the wire.
//!
//! ```
//! use klikit_webhook::{WebhookSecret, signature::{Verifier, sign}};
//!
//! let secret = WebhookSecret::new("a-long-random-webhook-secret").unwrap();
//! let body = br#"{"brand_id":1,"branch_id":2,"orders":[]}"#;
//! let header = sign(secret.expose(), body);
//! assert_eq!(header.len(), 64);
//!
//! let verifier = Verifier::new(secret);
//! assert_eq!(verifier.verify(body, header.as_bytes()), Ok(0));
//! assert!(verifier.verify(b"{}", header.as_bytes()).is_err());
//! ```

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

use crate::{WebhookSecret, scheme::Signatures};

type HmacSha256 = Hmac<Sha256>;

// The keyed HMAC states are as good as the key: whoever reads one from freed
// memory can sign deliveries. `Verifier` keeps one per secret and every
// delivery's `VerifyState` clones them, so each must be wiped when dropped.
// With the `zeroize` features of `hmac` and `sha2` (root Cargo.toml), the
// SHA-256 chaining state (two per HMAC: key XOR ipad and key XOR opad) and the
// block buffer zero themselves on drop. This fails to compile if either
// feature is dropped.
const _: fn() = || {
    fn zeroized_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    // `HmacCore<Sha256>` holds two of these.
    zeroized_on_drop::<<Sha256 as hmac::EagerHash>::Core>();
    // The pending partial block of the HMAC (and of the hash of a long key).
    zeroized_on_drop::<hmac::digest::block_api::Buffer<<Sha256 as hmac::EagerHash>::Core>>();
    // Used to hash keys longer than the 64-byte block.
    zeroized_on_drop::<Sha256>();
    // A finished tag.
    zeroized_on_drop::<hmac::digest::CtOutput<HmacSha256>>();
};

/// The length of a signature in hex digits.
pub const SIGNATURE_HEX_LEN: usize = 64;

/// Returns `hex(HMAC-SHA256(secret, body))` in lowercase, the value Klikit
/// puts in `x-klikit-signature`.
///
/// The same as `printf '%s' "$BODY" | openssl dgst -sha256 -hmac "$SECRET"`.
///
/// ```
/// let sig = klikit_webhook::signature::sign(b"key", b"The quick brown fox jumps over the lazy dog");
/// assert_eq!(sig, "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8");
/// ```
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = keyed(secret);
    mac.update(body);
    const_hex::encode(mac.finalize().into_bytes())
}

/// `HMAC-SHA256(secret, parts[0] || parts[1] || ...)`: the parts are fed
/// one after the other, never concatenated into a copy. For schemes that
/// sign a prefix before the body.
pub(crate) fn mac_parts(secret: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = keyed(secret);
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn keyed(secret: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    match HmacSha256::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
    }
}

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The signature header cannot be read: not 64 hex digits under
    /// today's contract; no `t`, no `v1`, a bad pair or bad hex under
    /// Partner API v1; no `v1,` entry under Standard Webhooks.
    #[error("signature header is malformed for the delivery's scheme")]
    Malformed,
    /// The signature does not match the body under any configured secret.
    #[error("signature does not match the body")]
    Mismatch,
}

/// Verifies signatures against one or more secrets in constant time.
///
/// Keyed HMAC states are computed once, at construction; verifying clones
/// them. With several secrets (during a rotation) every secret is tried on
/// every delivery, so the time taken does not reveal which one matched.
#[derive(Clone)]
pub struct Verifier {
    keys: Vec<HmacSha256>,
    // Kept so that the key material is wiped when the verifier is dropped.
    _secrets: Vec<WebhookSecret>,
    /// Does the work of a verification and refuses every signature: for
    /// deliveries whose secrets are unknown, refused in the same time as a
    /// forgery.
    decoy: bool,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("secrets", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for one secret.
    pub fn new(secret: WebhookSecret) -> Self {
        Self {
            keys: vec![keyed(secret.expose())],
            _secrets: vec![secret],
            decoy: false,
        }
    }

    /// A verifier for `secrets`, the first (newest) numbered 0; `None` if
    /// there are none.
    ///
    /// ```
    /// use klikit_webhook::{WebhookSecret, signature::Verifier};
    ///
    /// let secrets = ["new-webhook-secret-0001", "old-webhook-secret-0000"].map(|s| WebhookSecret::new(s).unwrap());
    /// assert_eq!(Verifier::from_secrets(secrets).unwrap().secret_count(), 2);
    /// assert!(Verifier::from_secrets([]).is_none());
    /// ```
    pub fn from_secrets(secrets: impl IntoIterator<Item = WebhookSecret>) -> Option<Self> {
        let mut secrets = secrets.into_iter();
        let first = Self::new(secrets.next()?);
        Some(secrets.fold(first, Self::with_secret))
    }

    /// One HMAC under a fixed key, and never a match.
    pub(crate) fn decoy() -> Self {
        Self {
            keys: vec![keyed(&[0x5a; 32])],
            _secrets: Vec::new(),
            decoy: true,
        }
    }

    /// Also accepts signatures made with `secret` (for example the previous
    /// secret while a rotation is deployed). Secrets are numbered in the order
    /// they were added, the first one 0.
    #[must_use]
    pub fn with_secret(mut self, secret: WebhookSecret) -> Self {
        self.keys.push(keyed(secret.expose()));
        self._secrets.push(secret);
        self
    }

    /// The number of secrets tried on each delivery.
    pub fn secret_count(&self) -> usize {
        self.keys.len()
    }

    /// Verifies `signature` (the raw header value) over `body`.
    ///
    /// Returns the index of the secret that matched.
    ///
    /// # Errors
    ///
    /// [`SignatureError::Malformed`] if the header is not 64 hex digits (either
    /// case), [`SignatureError::Mismatch`] if no secret produces it.
    pub fn verify(&self, body: &[u8], signature: &[u8]) -> Result<usize, SignatureError> {
        let expected = parse_signature(signature)?;
        let mut state = self.start();
        state.update(body);
        state.finish(&expected)
    }

    /// Starts an incremental verification, for bodies that arrive in frames.
    pub fn start(&self) -> VerifyState {
        VerifyState {
            macs: self.keys.clone(),
            decoy: self.decoy,
        }
    }
}

/// An incremental verification started by [`Verifier::start`].
#[derive(Clone)]
pub struct VerifyState {
    macs: Vec<HmacSha256>,
    decoy: bool,
}

impl fmt::Debug for VerifyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyState").finish_non_exhaustive()
    }
}

impl VerifyState {
    /// Feeds the next bytes of the body.
    pub fn update(&mut self, bytes: &[u8]) {
        for mac in &mut self.macs {
            mac.update(bytes);
        }
    }

    /// Compares the finished HMACs with `expected`, the decoded signature.
    ///
    /// All 32 bytes are compared for every secret, whatever the outcome.
    ///
    /// # Errors
    ///
    /// [`SignatureError::Mismatch`] if no secret matched.
    pub fn finish(self, expected: &[u8; 32]) -> Result<usize, SignatureError> {
        self.finish_any(&Signatures::one(*expected))
    }

    /// Compares the finished HMACs with every candidate signature: the
    /// delivery verifies if any candidate matches any secret.
    ///
    /// Every candidate is compared in full with every secret's HMAC,
    /// whatever the outcome, so the time taken reveals neither which secret
    /// nor which candidate matched.
    ///
    /// # Errors
    ///
    /// [`SignatureError::Mismatch`] if nothing matched.
    pub fn finish_any(self, candidates: &Signatures) -> Result<usize, SignatureError> {
        let mut matched = Choice::from(0);
        let mut index = 0u64;
        for (i, mac) in self.macs.into_iter().enumerate() {
            let tag = mac.finalize().into_bytes();
            let mut equal = Choice::from(0);
            for candidate in candidates.as_slice() {
                equal |= tag.as_slice().ct_eq(candidate.as_slice());
            }
            // Remember the first matching index without branching on secrets.
            let take = equal & !matched;
            index.conditional_assign(&(i as u64), take);
            matched |= equal;
        }
        if bool::from(matched) && !self.decoy {
            Ok(usize::try_from(index).unwrap_or(usize::MAX))
        } else {
            Err(SignatureError::Mismatch)
        }
    }
}

/// Decodes a signature header: exactly 64 hex digits, either case.
///
/// # Errors
///
/// [`SignatureError::Malformed`] for anything else, including a `sha256=`
/// or `0x` prefix and surrounding whitespace.
pub fn parse_signature(header: &[u8]) -> Result<[u8; 32], SignatureError> {
    if header.len() != SIGNATURE_HEX_LEN {
        return Err(SignatureError::Malformed);
    }
    let mut out = [0u8; 32];
    const_hex::decode_to_slice(header, &mut out).map_err(|_| SignatureError::Malformed)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_64_hex_digits_of_either_case_and_nothing_else() {
        let digits = "0123456789abcdef".repeat(4);
        let expected: [u8; 32] = std::array::from_fn(|i| [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef][i % 8]);
        assert_eq!(parse_signature(digits.as_bytes()), Ok(expected));
        assert_eq!(parse_signature(digits.to_uppercase().as_bytes()), Ok(expected));
        let bad = [
            // `0x` and 62 digits is 64 bytes: the decoder's prefix handling
            // must not make it 31 bytes of signature, nor pad it.
            format!("0x{}", &digits[2..]),
            format!("0X{}", &digits[2..]),
            format!("0x{digits}"),
            format!("sha256={digits}"),
            format!(" {}", &digits[1..]),
            format!("{}g", &digits[1..]),
            digits[1..].to_string(),
            format!("{digits}0"),
            String::new(),
        ];
        for header in bad {
            assert_eq!(
                parse_signature(header.as_bytes()),
                Err(SignatureError::Malformed),
                "{header:?}"
            );
        }
    }

    #[test]
    fn the_decoy_does_the_work_and_refuses_even_its_own_key() {
        let decoy = Verifier::decoy();
        assert_eq!(decoy.secret_count(), 1);
        let body = b"{}";
        let signature = mac_parts(&[0x5a; 32], &[body]);
        let mut state = decoy.start();
        state.update(body);
        assert_eq!(state.finish(&signature), Err(SignatureError::Mismatch));
        // The same key in a real verifier matches.
        let real = Verifier::new(WebhookSecret::new(vec![0x5a; 32]).unwrap());
        let mut state = real.start();
        state.update(body);
        assert_eq!(state.finish(&signature), Ok(0));
    }
}
