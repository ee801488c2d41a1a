//! An in-process [`DedupStore`].

use std::{
    collections::{HashMap, VecDeque, hash_map::Entry},
    fmt,
    hash::BuildHasher,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use async_trait::async_trait;
// A fast seeded hasher instead of SipHash: ids reach the store only after
// their signature verified, so an attacker cannot choose them to force
// collisions, and hashing is a visible share of the store's time.
use foldhash::fast::RandomState;

use super::{BodyDigest, Claim, DedupStore, Lease, LeaseToken, Result, StoreError};
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
}

#[derive(Default)]
struct Shard {
    /// Where each id's state is: an entry of `leases` or of `done`.
    records: HashMap<EventId, Record, RandomState>,
    /// Claims in the order they were made, to forget expired ones. An entry
    /// stays until it reaches the front, also after its claim ended (it is
    /// then marked `ended`, so that the front is dropped without a lookup).
    leases: VecDeque<LeaseEntry>,
    /// The sequence number of `leases[0]`.
    leases_base: u64,
    /// Completed records in the order they were completed, to forget expired
    /// ones and to evict the oldest when the shard is full.
    done: VecDeque<DoneEntry>,
    /// The sequence number of `done[0]`.
    done_base: u64,
}

/// An id's record in the map: 8 bytes naming the queue entry that holds its
/// state (the top bit: `done` rather than `leases`; the rest: the entry's
/// sequence number). Most of a full store's memory is the hash map, and a
/// map bucket costs about twice a queue slot, so the token, the digest and
/// the deadline live in the queues.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Record(u64);

const DONE_BIT: u64 = 1 << 63;

impl Record {
    fn lease(seq: u64) -> Self {
        Self(seq & !DONE_BIT)
    }

    fn done(seq: u64) -> Self {
        Self(seq | DONE_BIT)
    }
}

/// A claim: its deadline and token.
struct LeaseEntry {
    /// Milliseconds since the store's epoch.
    deadline: u64,
    id: EventId,
    token: Token,
    /// The claim was completed or released: the id's record no longer
    /// points here, and the entry only waits to reach the front.
    ended: bool,
}

/// A completed record: its deadline and the processed body's digest.
struct DoneEntry {
    /// Milliseconds since the store's epoch.
    deadline: u64,
    id: EventId,
    digest: BodyDigest,
}

/// What a record says.
enum State {
    InFlight { deadline: u64, token: Token },
    Done { deadline: u64, digest: BodyDigest },
}

/// A [`LeaseToken`] as 16 bytes, so that entries align to 8 bytes, not 16.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Token([u8; 16]);

impl From<LeaseToken> for Token {
    fn from(token: LeaseToken) -> Self {
        Self(token.as_u128().to_be_bytes())
    }
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

/// The index in a queue whose front has sequence number `base` of the entry
/// numbered `seq`; `None` if it was popped already.
fn slot(seq: u64, base: u64) -> Option<usize> {
    usize::try_from(seq.checked_sub(base)?).ok()
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Shard {
    /// The state `id`'s record points to.
    fn state(&self, id: &EventId) -> Option<State> {
        let record = self.records.get(id)?.0;
        let seq = record & !DONE_BIT;
        if record & DONE_BIT == 0 {
            let entry = self.leases.get(slot(seq, self.leases_base)?)?;
            Some(State::InFlight {
                deadline: entry.deadline,
                token: entry.token,
            })
        } else {
            let entry = self.done.get(slot(seq, self.done_base)?)?;
            Some(State::Done {
                deadline: entry.deadline,
                digest: entry.digest,
            })
        }
    }

    /// Removes `id`'s record if it points to `record`; one lookup.
    fn forget_if(&mut self, id: EventId, record: Record) -> bool {
        match self.records.entry(id) {
            Entry::Occupied(entry) if *entry.get() == record => {
                entry.remove();
                true
            }
            _ => false,
        }
    }

    /// Forgets expired claims and records at the front of both queues.
    ///
    /// A lease entry whose claim was already completed or released is
    /// dropped as soon as it reaches the front rather than when its lease
    /// would have expired: it could only ever be a no-op, and keeping it
    /// would hold a copy of the id (and the queue slot) for the whole lease,
    /// so that a busy receiver's queue grew with its rate times the lease,
    /// beyond the store's capacity. Such entries are marked when their claim
    /// ends, so dropping them costs no map lookup; neither does finding that
    /// the front is a live claim. A lease entry that is not marked and not
    /// current was claimed again after it expired, so it is expired too.
    fn purge(&mut self, now: u64) {
        while let Some(front) = self.leases.front() {
            if !front.ended && front.deadline > now {
                break;
            }
            let record = Record::lease(self.leases_base);
            let Some(expired) = self.leases.pop_front() else {
                break;
            };
            self.leases_base += 1;
            if !expired.ended {
                self.forget_if(expired.id, record);
            }
        }
        while let Some(front) = self.done.front() {
            if front.deadline > now {
                break;
            }
            let _ = self.pop_done();
        }
    }

    /// Pops the oldest completed entry and forgets its record if it still
    /// points there; whether it did, or `None` with the queue empty.
    fn pop_done(&mut self) -> Option<bool> {
        let record = Record::done(self.done_base);
        let oldest = self.done.pop_front()?;
        self.done_base += 1;
        Some(self.forget_if(oldest.id, record))
    }

    /// Ends the in-flight claim of `id` if it holds `token`: marks its lease
    /// entry ended and returns the record to update (complete) or remove
    /// (release). One lookup.
    fn end_claim(&mut self, id: &EventId, token: Token) -> Option<&mut Record> {
        let record = self.records.get_mut(id)?;
        if record.0 & DONE_BIT != 0 {
            return None;
        }
        let entry = self.leases.get_mut(slot(record.0, self.leases_base)?)?;
        if entry.token != token {
            return None;
        }
        entry.ended = true;
        Some(record)
    }

    /// Makes room for one more id by evicting the oldest completed record.
    fn evict_oldest_done(&mut self) -> bool {
        while let Some(evicted) = self.pop_done() {
            if evicted {
                return true;
            }
        }
        false
    }
}

#[async_trait]
impl DedupStore for MemoryStore {
    async fn claim(&self, lease: &Lease, ttl: Duration) -> Result<Claim> {
        let event_id = lease.event_id();
        let token = Token::from(lease.token());
        let now = self.now();
        let mut shard = self.shard(event_id);
        shard.purge(now);
        let state = shard.state(event_id);
        match state {
            Some(State::Done { deadline, digest }) if deadline > now => {
                return Ok(Claim::Done { digest: Some(digest) });
            }
            Some(State::InFlight { deadline, token: held }) if deadline > now => {
                return Ok(if held == token {
                    Claim::New
                } else {
                    Claim::InFlight {
                        retry_after: Some(Duration::from_millis(deadline - now)),
                    }
                });
            }
            _ => {}
        }
        let is_new_key = state.is_none();
        if is_new_key && shard.records.len() >= self.shard_capacity && !shard.evict_oldest_done() {
            return Err(StoreError::Full {
                capacity: self.capacity,
            });
        }
        let seq = shard.leases_base + shard.leases.len() as u64;
        shard.leases.push_back(LeaseEntry {
            deadline: now.saturating_add(millis(ttl)),
            id: event_id.clone(),
            token,
            ended: false,
        });
        shard.records.insert(event_id.clone(), Record::lease(seq));
        Ok(Claim::New)
    }

    async fn complete(&self, lease: &Lease, digest: BodyDigest, retain: Duration) -> Result<bool> {
        let token = Token::from(lease.token());
        let now = self.now();
        let mut shard = self.shard(lease.event_id());
        shard.purge(now);
        let seq = shard.done_base + shard.done.len() as u64;
        let Some(record) = shard.end_claim(lease.event_id(), token) else {
            return Ok(false);
        };
        *record = Record::done(seq);
        shard.done.push_back(DoneEntry {
            deadline: now.saturating_add(millis(retain)),
            id: lease.event_id().clone(),
            digest,
        });
        Ok(true)
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let token = Token::from(lease.token());
        let now = self.now();
        let mut shard = self.shard(lease.event_id());
        shard.purge(now);
        let held = shard.end_claim(lease.event_id(), token).is_some();
        if held {
            shard.records.remove(lease.event_id());
        }
        Ok(held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_8_bytes() {
        assert_eq!(std::mem::size_of::<Record>(), 8);
    }

    /// The lease entries of finished claims: how many are still queued.
    fn queued_lease_entries(store: &MemoryStore) -> usize {
        store.shards.iter().map(|shard| lock(shard).leases.len()).sum()
    }

    #[tokio::test]
    async fn finished_claims_leave_no_lease_entry_behind_while_their_leases_last() {
        let store = MemoryStore::with_capacity(4096);
        let long = Duration::from_secs(3600);
        for n in 0..1000 {
            let lease = Lease::generate(EventId::new(format!("evt-{n}")).unwrap());
            assert_eq!(store.claim(&lease, long).await.unwrap(), Claim::New);
            if n % 2 == 0 {
                assert!(store.complete(&lease, BodyDigest::of(b"{}"), long).await.unwrap());
            } else {
                assert!(store.release(&lease).await.unwrap());
            }
        }
        // Each operation purges its shard's front: only the entries of the
        // last operations of each shard may wait (none here: every entry
        // ahead of them had ended, and so had they).
        let queued = queued_lease_entries(&store);
        assert!(
            queued <= SHARDS,
            "{queued} lease entries still queued for 1000 finished claims"
        );
        // One claim still held keeps its entry, and its record.
        let held = Lease::generate(EventId::new("held").unwrap());
        assert_eq!(store.claim(&held, long).await.unwrap(), Claim::New);
        assert!(queued_lease_entries(&store) >= 1);
        let other = Lease::generate(EventId::new("held").unwrap());
        assert!(matches!(
            store.claim(&other, long).await.unwrap(),
            Claim::InFlight { .. }
        ));
    }

    #[tokio::test]
    async fn a_claim_renewed_with_its_own_token_outlives_its_first_lease_entry() {
        let store = MemoryStore::with_capacity(16);
        let id = EventId::new("evt").unwrap();
        let lease = Lease::generate(id.clone());
        assert_eq!(store.claim(&lease, Duration::ZERO).await.unwrap(), Claim::New);
        tokio::time::sleep(Duration::from_millis(5)).await;
        // Expired: the same token claims it again, for long.
        assert_eq!(store.claim(&lease, Duration::from_secs(60)).await.unwrap(), Claim::New);
        // The first entry is purged; the renewed claim stays.
        let other = Lease::generate(id);
        let answer = store.claim(&other, Duration::from_secs(60)).await.unwrap();
        assert!(matches!(answer, Claim::InFlight { .. }), "{answer:?}");
        assert_eq!(store.len(), 1);
    }
}
