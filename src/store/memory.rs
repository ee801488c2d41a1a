//! An in-process [`DedupStore`].

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    hash::BuildHasher,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
// A fast seeded hasher instead of SipHash: ids reach the store only after
// their signature verified, so an attacker cannot choose them to force
// collisions, and hashing is a visible share of the store's time.
use foldhash::fast::RandomState;

use super::{Claim, DedupStore, Lease, LeaseToken, Result, StoreError};
use crate::EventId;

/// Shards split the lock so that deliveries on different cores rarely wait
/// for each other.
const SHARDS: usize = 16;

/// The in-memory dedup store: the layer's default.
///
/// Claims, completions and releases are atomic (a mutex per shard, held for a
/// hash-map operation and never across an `.await`) and O(1) amortised.
/// Expired leases and records are forgotten in the order they were written,
/// a little at every operation, so memory does not grow with time.
///
/// **Bounded.** The store holds at most [`capacity`](Self::capacity) ids
/// (default [`DEFAULT_CAPACITY`](Self::DEFAULT_CAPACITY), measured at well
/// under 200 bytes an id). When it is full, the oldest *completed* id is
/// forgotten to make room: a redelivery of that id after this point would be
/// processed again. An in-flight claim is never evicted; if every slot holds
/// one, [`claim`](DedupStore::claim) fails with [`StoreError::Full`] and the
/// layer answers 503, so Klikit retries later and nothing is lost.
///
/// **Not durable, not shared.** Everything is lost on restart and each process
/// has its own. Use a persistent store for production deployments that
/// restart or run several instances.
///
/// ```
/// use klikit_webhook::{KlikitWebhookLayer, MemoryStore, WebhookSecret};
///
/// let secret = WebhookSecret::new("a-long-random-webhook-secret").unwrap();
/// let layer = KlikitWebhookLayer::new(secret).with_store(MemoryStore::with_capacity(1_000_000));
/// ```
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    capacity: usize,
    shard_capacity: usize,
    epoch: Instant,
    next_token: AtomicU64,
}

#[derive(Default)]
struct Shard {
    records: HashMap<EventId, Record, RandomState>,
    /// In-flight claims in the order they were made, to forget expired ones.
    leases: VecDeque<Expiry>,
    /// Completed records in the order they were completed, to forget expired
    /// ones and to evict the oldest when the shard is full.
    done: VecDeque<Expiry>,
}

#[derive(Clone, Copy)]
struct Record {
    token: u64,
    /// Milliseconds since the store's epoch.
    deadline: u64,
    done: bool,
}

struct Expiry {
    deadline: u64,
    id: EventId,
    token: u64,
}

impl MemoryStore {
    /// The number of ids a store made by [`new`](Self::new) holds.
    ///
    /// 100,000 ids cover a day of deliveries at more than one event a second,
    /// in about 20 MB when full.
    pub const DEFAULT_CAPACITY: usize = 100_000;

    /// A store with [`DEFAULT_CAPACITY`](Self::DEFAULT_CAPACITY).
    pub fn new() -> Self {
        Self::with_capacity(Self::DEFAULT_CAPACITY)
    }

    /// A store that holds at most `capacity` ids (at least one per shard).
    pub fn with_capacity(capacity: usize) -> Self {
        let shard_capacity = capacity.div_ceil(SHARDS).max(1);
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::default(),
            capacity: shard_capacity * SHARDS,
            shard_capacity,
            epoch: Instant::now(),
            next_token: AtomicU64::new(1),
        }
    }

    /// The most ids the store holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The number of ids held now (in flight or done), including expired ones
    /// not yet forgotten.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).records.len()).sum()
    }

    /// Whether the store holds no id.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn now(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    fn shard(&self, id: &EventId) -> MutexGuard<'_, Shard> {
        let index = (self.hasher.hash_one(id.as_str()) as usize) % SHARDS;
        lock(&self.shards[index])
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// A poisoned shard only means another thread panicked between two plain
/// field writes; the map is still consistent, so keep using it.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Shard {
    /// Forgets expired claims and records at the front of both queues.
    ///
    /// A lease entry whose claim was already completed or released is
    /// dropped at once rather than when its lease would have expired: it
    /// could only ever be a no-op, and keeping it would hold a copy of the id
    /// (and the queue slot) for the whole lease, so that a busy receiver's
    /// queue grew with its rate times the lease, beyond the store's capacity.
    fn purge(&mut self, now: u64) {
        while let Some(front) = self.leases.front() {
            if front.deadline > now && self.is_in_flight(front) {
                break;
            }
            let Some(expired) = self.leases.pop_front() else {
                break;
            };
            self.forget_if(&expired, false);
        }
        while let Some(front) = self.done.front() {
            if front.deadline > now {
                break;
            }
            let Some(expired) = self.done.pop_front() else {
                break;
            };
            self.forget_if(&expired, true);
        }
    }

    /// Whether the claim `expiry` was queued for is still held.
    fn is_in_flight(&self, expiry: &Expiry) -> bool {
        self.records
            .get(&expiry.id)
            .is_some_and(|r| r.token == expiry.token && !r.done)
    }

    /// Removes the record `expiry` points to if it is still that record.
    fn forget_if(&mut self, expiry: &Expiry, done: bool) -> bool {
        let current = self
            .records
            .get(&expiry.id)
            .is_some_and(|r| r.token == expiry.token && r.done == done);
        if current {
            self.records.remove(&expiry.id);
        }
        current
    }

    /// Makes room for one more id by evicting the oldest completed record.
    fn evict_oldest_done(&mut self) -> bool {
        while let Some(oldest) = self.done.pop_front() {
            if self.forget_if(&oldest, true) {
                return true;
            }
        }
        false
    }
}

#[async_trait]
impl DedupStore for MemoryStore {
    async fn claim(&self, event_id: &EventId, lease: Duration) -> Result<Claim> {
        let now = self.now();
        let mut shard = self.shard(event_id);
        shard.purge(now);
        let existing = shard.records.get(event_id);
        let is_new_key = existing.is_none();
        if let Some(record) = existing
            && record.deadline > now
        {
            return Ok(if record.done {
                Claim::Done
            } else {
                Claim::InFlight {
                    retry_after: Some(Duration::from_millis(record.deadline - now)),
                }
            });
        }
        if is_new_key && shard.records.len() >= self.shard_capacity && !shard.evict_oldest_done() {
            return Err(StoreError::Full {
                capacity: self.capacity,
            });
        }
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let deadline = now.saturating_add(millis(lease));
        shard.records.insert(
            event_id.clone(),
            Record {
                token,
                deadline,
                done: false,
            },
        );
        shard.leases.push_back(Expiry {
            deadline,
            id: event_id.clone(),
            token,
        });
        Ok(Claim::New(Lease::new(
            event_id.clone(),
            LeaseToken::from_u128(u128::from(token)),
        )))
    }

    async fn complete(&self, lease: &Lease, retain: Duration) -> Result<bool> {
        let Ok(token) = u64::try_from(lease.token().as_u128()) else {
            return Ok(false);
        };
        let now = self.now();
        let mut shard = self.shard(lease.event_id());
        shard.purge(now);
        let deadline = now.saturating_add(millis(retain));
        match shard.records.get_mut(lease.event_id()) {
            Some(record) if record.token == token && !record.done => {
                record.done = true;
                record.deadline = deadline;
            }
            _ => return Ok(false),
        }
        shard.done.push_back(Expiry {
            deadline,
            id: lease.event_id().clone(),
            token,
        });
        Ok(true)
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let Ok(token) = u64::try_from(lease.token().as_u128()) else {
            return Ok(false);
        };
        let now = self.now();
        let mut shard = self.shard(lease.event_id());
        shard.purge(now);
        let held = shard
            .records
            .get(lease.event_id())
            .is_some_and(|r| r.token == token && !r.done);
        if held {
            shard.records.remove(lease.event_id());
        }
        Ok(held)
    }
}
