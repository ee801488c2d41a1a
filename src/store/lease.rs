//! What a claim is made of: the [`Lease`] (event id and [`LeaseToken`]) the
//! layer makes before it calls the store, and the [`BodyDigest`] a
//! completed record keeps.

use std::{
    collections::hash_map::RandomState,
    fmt,
    hash::{BuildHasher, Hasher},
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use crate::EventId;

/// A claim on one event: the event id and the token that identifies the
/// claim. The caller of [`DedupStore::claim`](super::DedupStore::claim) makes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    event_id: EventId,
    token: LeaseToken,
}

impl Lease {
    /// A lease on `event_id` with `token`.
    pub fn new(event_id: EventId, token: LeaseToken) -> Self {
        Self { event_id, token }
    }

    /// A lease on `event_id` with a fresh token ([`LeaseToken::generate`]):
    /// what to pass to [`DedupStore::claim`](super::DedupStore::claim).
    pub fn generate(event_id: EventId) -> Self {
        Self::new(event_id, LeaseToken::generate())
    }

    /// The claimed event id.
    pub fn event_id(&self) -> &EventId {
        &self.event_id
    }

    /// The token that identifies this claim.
    pub fn token(&self) -> LeaseToken {
        self.token
    }
}

/// The XXH3-128 digest of a processed body, stored with each completed event
/// id (see [the body digest](crate::store#the-body-digest), which also says
/// why a fast non-cryptographic hash is enough).
///
/// A digest is not secret (it reveals nothing a captured body does not), so
/// `Debug` and `Display` show it in hex.
///
/// ```
/// use klikit_webhook::store::BodyDigest;
///
/// let digest = BodyDigest::of(b"{}");
/// assert_eq!(digest, BodyDigest::of(b"{}"));
/// assert_ne!(digest, BodyDigest::of(b"{ }"));
/// // Stored as its 16 bytes; a value of another length (such as the 32-byte
/// // SHA-256 digests of earlier versions) is not a digest.
/// assert_eq!(BodyDigest::from_slice(digest.as_bytes()), Some(digest));
/// assert_eq!(BodyDigest::from_slice(&[0; 32]), None);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BodyDigest([u8; BodyDigest::LEN]);

impl BodyDigest {
    /// The length of a digest in bytes.
    pub const LEN: usize = 16;

    /// The digest of `body`, the raw bytes as received: its XXH3-128 hash
    /// (unseeded, big-endian), the value `xxh128sum` prints.
    pub fn of(body: &[u8]) -> Self {
        Self(xxhash_rust::xxh3::xxh3_128(body).to_be_bytes())
    }

    /// Rebuilds a digest read back from a backend.
    pub const fn from_bytes(bytes: [u8; Self::LEN]) -> Self {
        Self(bytes)
    }

    /// Rebuilds a digest read back from a backend as a byte string; `None`
    /// unless it is [`LEN`](Self::LEN) bytes long, so that a value written
    /// by an earlier version (a 32-byte SHA-256 digest) reads as no digest
    /// rather than as the digest of a different body.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; Self::LEN]>::try_from(bytes).ok().map(Self)
    }

    /// The 16 bytes of the digest.
    pub const fn as_bytes(&self) -> &[u8; Self::LEN] {
        &self.0
    }
}

impl fmt::Display for BodyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for BodyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BodyDigest({self})")
    }
}

/// A 128-bit value unique to one claim.
///
/// [`generate`](Self::generate) makes tokens that never repeat within a
/// process (a counter) and, with overwhelming probability, never repeat
/// across processes (a per-process random prefix). Stores persist it as
/// [`as_u128`](Self::as_u128) or its [`Display`](fmt::Display) form (32
/// lowercase hex digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseToken(u128);

impl LeaseToken {
    /// A fresh token, different from every token generated before.
    pub fn generate() -> Self {
        static PREFIX: OnceLock<u64> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let prefix = *PREFIX.get_or_init(|| {
            // RandomState is seeded from the OS random source; mixing in the
            // pid and the clock keeps prefixes apart even where it is not.
            let mut hasher = RandomState::new().build_hasher();
            hasher.write_u32(std::process::id());
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            hasher.write_u128(now.as_nanos());
            hasher.finish()
        });
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        Self((u128::from(prefix) << 64) | u128::from(count))
    }

    /// Rebuilds a token read back from a backend.
    pub const fn from_u128(value: u128) -> Self {
        Self(value)
    }

    /// The token as a number.
    pub const fn as_u128(self) -> u128 {
        self.0
    }
}

impl fmt::Display for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}
