//! A [`DedupStore`] in Redis.

use std::{fmt, sync::Arc, time::Duration};

use async_trait::async_trait;
use redis::{Script, Value, aio::ConnectionManager};

use super::{BodyDigest, Claim, DedupStore, Lease, LeaseToken, Result, StoreError, ttl_millis};
use crate::EventId;

/// Claims a key. KEYS[1] = the event's key, ARGV[1] = `i:<token>`,
/// ARGV[2] = the lease in ms. Returns `1` if the key was free and is now
/// claimed, or is already claimed with that token; otherwise
/// `{value, pttl}` of the record that holds it.
const CLAIM: &str = r"
local value = redis.call('GET', KEYS[1])
if not value then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if value == ARGV[1] then
  return 1
end
return {value, redis.call('PTTL', KEYS[1])}
";

/// Completes a claim. KEYS[1] = the event's key, ARGV[1] = `i:<token>`,
/// ARGV[2] = `d:<token>:<digest>`, ARGV[3] = the retention in ms. Returns 1
/// if the claim was still held with that token.
const COMPLETE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
";

/// Releases a claim. KEYS[1] = the event's key, ARGV[1] = `i:<token>`.
/// Returns 1 if the claim was still held with that token.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

/// The dedup store in Redis: shared by every instance that talks to the same
/// Redis, durable as far as Redis persistence (AOF or RDB) goes.
///
/// # Data
///
/// One string key per event, `<prefix><event id>` (the prefix defaults to
/// [`DEFAULT_PREFIX`](Self::DEFAULT_PREFIX)), whose value is `i:<token>`
/// while a delivery holds the claim and `d:<token>:<digest>` once it
/// completed (`<token>`: 32 hex digits; `<digest>`: the 32 hex digits of the
/// processed body's [`BodyDigest`]). A value `d:<token>` or one with a
/// 64-digit (SHA-256) digest, written by an earlier version, reads as
/// `Claim::Done { digest: None }`. Redis expires
/// the key with the lease, or with the retention once completed, so nothing
/// needs cleaning up. Plan about 170 bytes of memory per retained event id
/// (estimated with the 64-digit digest of an earlier version; the value is
/// 32 bytes shorter now, so this is an upper bound).
///
/// # Operations
///
/// Each operation is one small Lua script run with `EVALSHA` (through
/// [`redis::Script`], which loads the script once after a server restart or a
/// `SCRIPT FLUSH`), so it is **atomic and one round trip**:
/// - `claim`: `GET`; if the key is missing, `SET key i:<token> PX <lease>`
///   and answer [`Claim::New`]; if it holds `i:<token>` with the caller's
///   token, answer [`Claim::New`] too; otherwise answer [`Claim::Done`] (with
///   the digest from the value) or [`Claim::InFlight`] with the key's `PTTL`;
/// - `complete`: if the value is still `i:<token>`, `SET key
///   d:<token>:<digest> PX <retain>`;
/// - `release`: if the value is still `i:<token>`, `DEL key`.
///
/// The event id only ever travels as a key argument, never inside the script
/// text, and ids are visible ASCII, so no id can collide with another or
/// change a script. Every script touches exactly the one key it is given in
/// `KEYS`, so the store works on Redis Cluster (and with the `{…}` hash tags
/// an id may contain).
///
/// [`ConnectionManager`] multiplexes all operations over one connection and
/// reconnects after a failure; an operation that fails meanwhile returns a
/// [`StoreError`], which the layer answers with 503 so that Klikit retries.
///
/// # Examples
///
/// ```no_run
/// use klikit_webhook::{KlikitWebhookLayer, WebhookSecret, store::RedisStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::connect("redis://127.0.0.1:6379").await?.with_prefix("orders:dedup:");
/// let layer = KlikitWebhookLayer::new(WebhookSecret::from_env("KLIKIT_WEBHOOK_SECRET")?).with_store(store);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    prefix: Arc<str>,
    scripts: Arc<Scripts>,
}

struct Scripts {
    claim: Script,
    complete: Script,
    release: Script,
}

impl RedisStore {
    /// The default key prefix.
    pub const DEFAULT_PREFIX: &'static str = "klikit:dedup:";

    /// A store over an existing connection manager, with the
    /// [default prefix](Self::DEFAULT_PREFIX).
    pub fn new(connection: ConnectionManager) -> Self {
        Self {
            connection,
            prefix: Arc::from(Self::DEFAULT_PREFIX),
            scripts: Arc::new(Scripts {
                claim: Script::new(CLAIM),
                complete: Script::new(COMPLETE),
                release: Script::new(RELEASE),
            }),
        }
    }

    /// Connects to the Redis at `url` (`redis://[:password@]host[:port][/db]`,
    /// or `rediss://` with a TLS feature of the `redis` crate enabled), with
    /// [`ConnectionManager`]'s default configuration: it retries a failed
    /// connection attempt a few times with exponential backoff (several
    /// seconds in all) before giving up. For other settings, build the
    /// manager with `ConnectionManager::new_with_config` and pass it to
    /// [`new`](Self::new).
    ///
    /// # Errors
    ///
    /// Returns a [`StoreError`] if the URL is invalid or Redis is unreachable.
    pub async fn connect(url: &str) -> Result<Self> {
        let client = redis::Client::open(url).map_err(StoreError::backend)?;
        let connection = ConnectionManager::new(client).await.map_err(StoreError::backend)?;
        Ok(Self::new(connection))
    }

    /// Uses `prefix` in front of every event id to form its key. Give each
    /// receiver that must not share dedup records its own prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Arc::from(prefix.into());
        self
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key that holds `event_id`'s record.
    pub fn key(&self, event_id: &EventId) -> String {
        let mut key = String::with_capacity(self.prefix.len() + event_id.as_str().len());
        key.push_str(&self.prefix);
        key.push_str(event_id.as_str());
        key
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn in_flight_value(token: LeaseToken) -> String {
    format!("i:{token}")
}

fn done_value(token: LeaseToken, digest: BodyDigest) -> String {
    format!("d:{token}:{digest}")
}

/// The digest in a completed record's value `d:<token>:<digest>`; `None`
/// for a value without one (`d:<token>`) or with a digest of another length
/// (64 hex digits: SHA-256), both written by earlier versions.
fn done_digest(value: &[u8]) -> Option<BodyDigest> {
    // Three parts: `d:<token>` alone has a token as long as a digest.
    let mut parts = value.splitn(3, |&b| b == b':');
    let (Some(b"d"), Some(_token), Some(hex_digest)) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    if hex_digest.len() != 2 * BodyDigest::LEN {
        return None;
    }
    let mut bytes = [0; BodyDigest::LEN];
    const_hex::decode_to_slice(hex_digest, &mut bytes).ok()?;
    Some(BodyDigest::from_bytes(bytes))
}

fn unexpected(what: &str, value: &Value) -> StoreError {
    StoreError::backend(format!("unexpected answer from the Redis {what} script: {value:?}"))
}

#[async_trait]
impl DedupStore for RedisStore {
    async fn claim(&self, lease: &Lease, ttl: Duration) -> Result<Claim> {
        let mut connection = self.connection.clone();
        let answer: Value = self
            .scripts
            .claim
            .key(self.key(lease.event_id()))
            .arg(in_flight_value(lease.token()))
            .arg(ttl_millis(ttl))
            .invoke_async(&mut connection)
            .await
            .map_err(StoreError::backend)?;
        let Value::Array(record) = &answer else {
            return match answer {
                Value::Int(1) => Ok(Claim::New),
                other => Err(unexpected("claim", &other)),
            };
        };
        match record.as_slice() {
            [Value::BulkString(value), Value::Int(pttl)] => {
                if value.starts_with(b"d") {
                    Ok(Claim::Done {
                        digest: done_digest(value),
                    })
                } else {
                    // -1: no expiry (set by someone else); -2: expired in between.
                    let retry_after = u64::try_from(*pttl).ok().map(Duration::from_millis);
                    Ok(Claim::InFlight { retry_after })
                }
            }
            _ => Err(unexpected("claim", &answer)),
        }
    }

    async fn complete(&self, lease: &Lease, digest: BodyDigest, retain: Duration) -> Result<bool> {
        let mut connection = self.connection.clone();
        let completed: i64 = self
            .scripts
            .complete
            .key(self.key(lease.event_id()))
            .arg(in_flight_value(lease.token()))
            .arg(done_value(lease.token(), digest))
            .arg(ttl_millis(retain))
            .invoke_async(&mut connection)
            .await
            .map_err(StoreError::backend)?;
        Ok(completed == 1)
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let mut connection = self.connection.clone();
        let released: i64 = self
            .scripts
            .release
            .key(self.key(lease.event_id()))
            .arg(in_flight_value(lease.token()))
            .invoke_async(&mut connection)
            .await
            .map_err(StoreError::backend)?;
        Ok(released == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_values_carry_the_digest_when_there_is_one() {
        let token = LeaseToken::from_u128(7);
        let digest = BodyDigest::of(b"body");
        assert_eq!(done_digest(done_value(token, digest).as_bytes()), Some(digest));
        assert_eq!(done_digest(format!("d:{token}").as_bytes()), None);
        assert_eq!(done_digest(b"d:"), None);
        let sha256 = format!("d:{token}:{}", "ab".repeat(32));
        assert_eq!(done_digest(sha256.as_bytes()), None);
    }
}
