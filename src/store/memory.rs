//! An in-process [`DedupStore`].

use std::{
    cell::Cell,
    collections::VecDeque,
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
// The raw table under std's `HashMap`, used directly so that an id is hashed
// once per operation (the same hash picks the shard and the bucket) and an
// expired or evicted record is found by its stored hash and its record value,
// without hashing or comparing its id again.
use hashbrown::HashTable;

use super::{BodyDigest, Claim, DedupStore, Lease, LeaseToken, Result, StoreError};
use crate::EventId;

/// Shards split the lock so that deliveries on different cores rarely wait
/// for each other.
const SHARDS: usize = 16;

/// The in-memory dedup store: the layer's default.
///
/// Claims, completions and releases are atomic (a mutex per shard, held for a
/// hash-table operation and never across an `.await`) and O(1) amortised.
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

/// One shard's ids.
///
/// **Records are removed lazily.** An id's record names a queue entry; when
/// that entry is popped (expired, or evicted to make room) the record is
/// left in the table, where it no longer matches anything (its entry is
/// gone), instead of being looked up and removed there and then: that lookup
/// lands on a random, cold part of the table and was the costliest step of a
/// claim on a full store. Such stale records are swept out in one pass over
/// the table when it fills, before it would grow, and the table doubles when
/// a sweep leaves it more than half full, so a sweep (one pass over the
/// table) comes at most once per half table's worth of new ids. The table
/// therefore has room for at most four times the shard's capacity in
/// records: with the default capacity, 14,336 for 6,250 ids (2.3 times).
#[derive(Default)]
struct Shard {
    /// One [`Record`] per id, naming the queue entry that holds the id and
    /// its state, plus stale records whose entries were popped. The table
    /// holds only the 8-byte record: a lookup by id compares the id of the
    /// entry it names.
    records: HashTable<Record>,
    /// The ids held: those with a current record (in flight or done).
    ids: usize,
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

/// An id's record in the table: 8 bytes naming the queue entry that holds
/// its id and state (the top bit: `done` rather than `leases`; the rest: the
/// entry's sequence number). Sequence numbers are never reused within a
/// shard, so a record value also identifies its table entry: a queue entry
/// finds its own record by its stored hash and this value alone.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Record(u64);

const DONE_BIT: u64 = 1 << 63;

/// The flag in a [`DoneEntry`]'s deadline (milliseconds never reach it).
const SUPERSEDED: u64 = 1 << 63;

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
    /// The id's hash, to find its record without hashing the id again.
    hash: u64,
    id: EventId,
    token: Token,
    /// The claim was completed or released: the id's record no longer
    /// points here, and the entry only waits to reach the front. A `Cell`,
    /// so that it can be set through the shared borrow a table lookup holds
    /// (the shard's mutex is held).
    ended: Cell<bool>,
}

/// A completed record: its deadline and the processed body's digest.
struct DoneEntry {
    /// Milliseconds since the store's epoch; with [`SUPERSEDED`] set once the
    /// id's record no longer points here (its retention ended and the id was
    /// claimed again), so that popping it does not count an id forgotten.
    deadline: u64,
    /// The id's hash, to find its record without hashing the id again.
    hash: u64,
    id: StoredId,
    digest: BodyDigest,
}

/// A completed id, kept in its queue entry when it is short (as Klikit's
/// UUIDs are) rather than as a share of the caller's allocation. The queue
/// is read in order, so evicting the oldest id then touches no other memory
/// and frees nothing, and the request's own allocation is freed while it is
/// still in the cache, by the request.
enum StoredId {
    Inline { len: u8, bytes: [u8; INLINE_ID] },
    Shared(EventId),
}

/// The longest id kept inline: 46 bytes, so that a `StoredId` is 48 bytes
/// (as many as the 32 bytes of an `EventId` and its allocation's counts
/// take, plus the id's own bytes) and a `DoneEntry` 80.
const INLINE_ID: usize = 46;

impl StoredId {
    fn new(id: &EventId) -> Self {
        let bytes = id.as_str().as_bytes();
        match u8::try_from(bytes.len()) {
            Ok(len) if bytes.len() <= INLINE_ID => {
                let mut inline = [0; INLINE_ID];
                inline[..bytes.len()].copy_from_slice(bytes);
                Self::Inline { len, bytes: inline }
            }
            _ => Self::Shared(id.clone()),
        }
    }

    fn is(&self, id: &EventId) -> bool {
        match self {
            Self::Inline { len, bytes } => bytes.get(..usize::from(*len)) == Some(id.as_str().as_bytes()),
            Self::Shared(held) => held.same_as(id),
        }
    }
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
    /// in about 10 MB when full (ids of Klikit's length; `tests/alloc.rs`).
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
        self.shards.iter().map(|s| lock(s).ids).sum()
    }

    /// Whether the store holds no id.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn now(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    /// `id`'s hash and its locked shard. The shard is chosen by bits 32 to
    /// 35 of the hash, which the table uses neither for the bucket (the low
    /// bits) nor for the tag of its control bytes (the top 7), so that the
    /// ids of one shard still spread over its whole table.
    fn shard(&self, id: &EventId) -> (u64, MutexGuard<'_, Shard>) {
        let hash = self.hasher.hash_one(id.as_str());
        let index = ((hash >> 32) as usize) % SHARDS;
        (hash, lock(&self.shards[index]))
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
/// field writes; the table is still consistent, so keep using it.
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

/// The two queues, borrowed apart from the table so that a table lookup can
/// read the entry a record names.
struct Queues<'a> {
    leases: &'a VecDeque<LeaseEntry>,
    leases_base: u64,
    done: &'a VecDeque<DoneEntry>,
    done_base: u64,
}

/// The queue entry a record names.
enum Queued<'a> {
    Lease(&'a LeaseEntry),
    Done(&'a DoneEntry),
}

impl Queued<'_> {
    /// The hash of the entry's id.
    fn hash(&self) -> u64 {
        match self {
            Self::Lease(entry) => entry.hash,
            Self::Done(entry) => entry.hash,
        }
    }
}

impl Queues<'_> {
    /// The entry `record` names; `None` if it was popped (the record is
    /// stale).
    fn entry(&self, record: Record) -> Option<Queued<'_>> {
        let seq = record.0 & !DONE_BIT;
        if record.0 & DONE_BIT == 0 {
            self.leases.get(slot(seq, self.leases_base)?).map(Queued::Lease)
        } else {
            self.done.get(slot(seq, self.done_base)?).map(Queued::Done)
        }
    }

    /// Whether the entry `record` names is still queued: the record is
    /// current, not stale (a record is changed in place when its id moves to
    /// another entry, so a record whose entry is queued is that id's one).
    fn is_current(&self, record: Record) -> bool {
        self.entry(record).is_some()
    }

    /// Whether `record` names an entry of `id`.
    fn holds(&self, record: Record, id: &EventId) -> bool {
        match self.entry(record) {
            Some(Queued::Lease(entry)) => entry.id.same_as(id),
            Some(Queued::Done(entry)) => entry.id.is(id),
            None => false,
        }
    }

    /// The hash of the id `record` names, for the table to move it when it
    /// grows. The table grows only right after a sweep, when every record is
    /// current and names an entry, so the fallback is unreachable.
    fn rehash(&self, record: Record) -> u64 {
        self.entry(record).map_or(0, |entry| entry.hash())
    }
}

impl Shard {
    fn split(&mut self) -> (&mut HashTable<Record>, Queues<'_>) {
        let Self {
            records,
            leases,
            leases_base,
            done,
            done_base,
            ..
        } = self;
        let queues = Queues {
            leases,
            leases_base: *leases_base,
            done,
            done_base: *done_base,
        };
        (records, queues)
    }

    /// The queues, for reading only.
    fn queues(&self) -> Queues<'_> {
        Queues {
            leases: &self.leases,
            leases_base: self.leases_base,
            done: &self.done,
            done_base: self.done_base,
        }
    }

    /// `id`'s current record, if it has one.
    fn record(&self, hash: u64, id: &EventId) -> Option<Record> {
        let queues = self.queues();
        self.records.find(hash, |&record| queues.holds(record, id)).copied()
    }

    /// The state `record` points to.
    fn state(&self, record: Record) -> Option<State> {
        Some(match self.queues().entry(record)? {
            Queued::Lease(entry) => State::InFlight {
                deadline: entry.deadline,
                token: entry.token,
            },
            Queued::Done(entry) => State::Done {
                deadline: entry.deadline,
                digest: entry.digest,
            },
        })
    }

    /// Marks the queue entry `record` names as no longer current: its id
    /// gets a new record.
    fn supersede(&mut self, record: Record) {
        let seq = record.0 & !DONE_BIT;
        if record.0 & DONE_BIT == 0 {
            if let Some(entry) = slot(seq, self.leases_base).and_then(|slot| self.leases.get_mut(slot)) {
                entry.ended.set(true);
            }
        } else if let Some(entry) = slot(seq, self.done_base).and_then(|slot| self.done.get_mut(slot)) {
            entry.deadline |= SUPERSEDED;
        }
    }

    /// Inserts the record of a new id (hash `hash`), sweeping stale records
    /// out first if the table is full (see [`Shard`]).
    fn insert(&mut self, hash: u64, record: Record) {
        if self.records.len() == self.records.capacity() {
            self.sweep();
        }
        // Every record is current here (the table grows only right after a
        // sweep), so the table can rehash each from its entry.
        let (records, queues) = self.split();
        records.insert_unique(hash, record, |&held| queues.rehash(held));
        self.ids += 1;
    }

    /// Removes the stale records of a full table, and doubles it if that
    /// leaves it more than half full. Out of line: once per half table of
    /// new ids at most.
    #[cold]
    #[inline(never)]
    fn sweep(&mut self) {
        let (records, queues) = self.split();
        records.retain(|held| queues.is_current(*held));
        if records.len() > records.capacity() / 2 {
            let more = records.capacity();
            records.reserve(more, |&held| queues.rehash(held));
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
    /// ends, so dropping them costs nothing; neither does finding that the
    /// front is a live claim. A popped entry's record is left to the next
    /// sweep (see [`Shard`]).
    fn purge(&mut self, now: u64) {
        while let Some(front) = self.leases.front() {
            if !front.ended.get() && front.deadline > now {
                break;
            }
            if !front.ended.get() {
                // An expired claim: its holder never finished it.
                self.ids -= 1;
            }
            self.leases.pop_front();
            self.leases_base += 1;
        }
        while let Some(front) = self.done.front() {
            if front.deadline & !SUPERSEDED > now {
                break;
            }
            self.pop_done();
        }
    }

    /// Pops the oldest completed entry; whether it was its id's current
    /// record (and the id is now forgotten), or `None` with the queue empty.
    fn pop_done(&mut self) -> Option<bool> {
        let oldest = self.done.pop_front()?;
        self.done_base += 1;
        let current = oldest.deadline & SUPERSEDED == 0;
        if current {
            self.ids -= 1;
        }
        Some(current)
    }

    /// Ends the in-flight claim of `id` if it holds `token`: marks its lease
    /// entry ended and returns the record to update (complete) or remove
    /// (release). One lookup.
    fn end_claim(&mut self, hash: u64, id: &EventId, token: Token) -> Option<&mut Record> {
        let (records, queues) = self.split();
        let record = records.find_mut(hash, |&held| queues.holds(held, id))?;
        let Some(Queued::Lease(entry)) = queues.entry(*record) else {
            return None;
        };
        if entry.token != token {
            return None;
        }
        entry.ended.set(true);
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
        let (hash, mut shard) = self.shard(event_id);
        shard.purge(now);
        let record = shard.record(hash, event_id);
        match record.and_then(|record| shard.state(record)) {
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
        if record.is_none() && shard.ids >= self.shard_capacity && !shard.evict_oldest_done() {
            return Err(StoreError::Full {
                capacity: self.capacity,
            });
        }
        let seq = shard.leases_base + shard.leases.len() as u64;
        // The entry first: the table may need it to rehash as it grows.
        shard.leases.push_back(LeaseEntry {
            deadline: now.saturating_add(millis(ttl)),
            hash,
            id: event_id.clone(),
            token,
            ended: Cell::new(false),
        });
        match record {
            // An expired record of this id: the table entry stays, pointed
            // at the new claim, and its old queue entry is no longer current.
            Some(old) => {
                shard.supersede(old);
                if let Some(held) = shard.records.find_mut(hash, |&held| held == old) {
                    *held = Record::lease(seq);
                }
            }
            None => shard.insert(hash, Record::lease(seq)),
        }
        Ok(Claim::New)
    }

    async fn complete(&self, lease: &Lease, digest: BodyDigest, retain: Duration) -> Result<bool> {
        let event_id = lease.event_id();
        let token = Token::from(lease.token());
        let now = self.now();
        let (hash, mut shard) = self.shard(event_id);
        shard.purge(now);
        let seq = shard.done_base + shard.done.len() as u64;
        let Some(record) = shard.end_claim(hash, event_id, token) else {
            return Ok(false);
        };
        *record = Record::done(seq);
        shard.done.push_back(DoneEntry {
            // Below the flag: a retention of `Duration::MAX` is a deadline
            // that never comes, not a superseded entry.
            deadline: now.saturating_add(millis(retain)).min(SUPERSEDED - 1),
            hash,
            id: StoredId::new(event_id),
            digest,
        });
        Ok(true)
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let event_id = lease.event_id();
        let token = Token::from(lease.token());
        let now = self.now();
        let (hash, mut shard) = self.shard(event_id);
        shard.purge(now);
        let Some(record) = shard.end_claim(hash, event_id, token).map(|record| *record) else {
            return Ok(false);
        };
        // Removed at once (its lease entry stays queued, marked ended, so the
        // record would otherwise still name it).
        if let Ok(entry) = shard.records.find_entry(hash, |&held| held == record) {
            entry.remove();
        }
        shard.ids -= 1;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_8_bytes_and_a_completed_entry_80() {
        assert_eq!(std::mem::size_of::<Record>(), 8);
        assert_eq!(std::mem::size_of::<DoneEntry>(), 80);
    }

    /// Checks every shard: its count of ids is the number of current
    /// records, within the capacity, and its table no more than four times
    /// the capacity (stale records are swept before the table grows).
    fn assert_consistent(store: &MemoryStore) {
        for shard in store.shards.iter() {
            let shard = lock(shard);
            let queues = shard.queues();
            let current = shard
                .records
                .iter()
                .filter(|&&record| queues.is_current(record))
                .count();
            assert_eq!(shard.ids, current, "counted ids against current records");
            assert!(
                shard.ids <= store.shard_capacity,
                "{} ids in a shard of {}",
                shard.ids,
                store.shard_capacity
            );
            assert!(
                shard.records.capacity() <= 4 * store.shard_capacity + 4,
                "a table of {} for {} ids",
                shard.records.capacity(),
                store.shard_capacity
            );
            // Every current record names an entry of an id hashed as stored.
            for &record in shard.records.iter().filter(|&&record| queues.is_current(record)) {
                let hash = match queues.entry(record) {
                    Some(Queued::Lease(entry)) => {
                        assert!(!entry.ended.get(), "a record names an ended claim");
                        assert_eq!(store.hasher.hash_one(entry.id.as_str()), entry.hash);
                        entry.hash
                    }
                    Some(Queued::Done(entry)) => {
                        assert_eq!(entry.deadline & SUPERSEDED, 0, "a record names a superseded entry");
                        entry.hash
                    }
                    None => unreachable!("filtered to current records"),
                };
                assert!(shard.records.find(hash, |&held| held == record).is_some());
            }
        }
    }

    /// A small xorshift generator: the test is the same on every run.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    #[tokio::test]
    async fn random_claims_completions_releases_and_expiries_keep_the_store_consistent() {
        // 16 shards of 3 ids, 60 ids: evictions, a full store, expired
        // leases and records, ids claimed again after they expired.
        let store = MemoryStore::with_capacity(48);
        let ids: Vec<EventId> = (0..60).map(|n| EventId::new(format!("evt-{n}")).unwrap()).collect();
        let mut held: Vec<Lease> = Vec::new();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let durations = [
            Duration::ZERO,
            Duration::from_millis(2),
            Duration::from_secs(3600),
            Duration::MAX,
        ];
        let (mut new, mut full, mut finished) = (0, 0, 0);
        for step in 0..20_000 {
            match rng.below(10) {
                0..=4 => {
                    let lease = Lease::generate(ids[rng.below(60) as usize].clone());
                    let ttl = durations[rng.below(4) as usize];
                    match store.claim(&lease, ttl).await {
                        Ok(Claim::New) => {
                            new += 1;
                            held.push(lease);
                        }
                        Ok(_) => {}
                        Err(StoreError::Full { .. }) => full += 1,
                        Err(error) => panic!("{error}"),
                    }
                }
                5..=8 if !held.is_empty() => {
                    let lease = held.swap_remove(rng.below(held.len() as u64) as usize);
                    let done = if rng.below(3) == 0 {
                        store.release(&lease).await.unwrap()
                    } else {
                        let retain = durations[rng.below(4) as usize];
                        store.complete(&lease, BodyDigest::of(b"{}"), retain).await.unwrap()
                    };
                    finished += usize::from(done);
                }
                _ => {
                    if step % 50 == 0 {
                        tokio::time::sleep(Duration::from_millis(3)).await;
                    }
                }
            }
            assert_consistent(&store);
        }
        // Each kind of answer happened, so each path above was taken.
        assert!(
            new > 1000 && full > 0 && finished > 1000,
            "{new} new, {full} full, {finished} finished"
        );
    }

    #[tokio::test]
    async fn two_hundred_thousand_deliveries_through_a_small_store_leave_a_small_table() {
        let store = MemoryStore::with_capacity(64);
        let long = Duration::from_secs(3600);
        for n in 0..200_000 {
            let lease = Lease::generate(EventId::new(format!("evt-{n}")).unwrap());
            assert_eq!(store.claim(&lease, long).await.unwrap(), Claim::New);
            assert!(store.complete(&lease, BodyDigest::of(b"{}"), long).await.unwrap());
        }
        assert_consistent(&store);
        assert_eq!(store.len(), 64);
        // The last id of each shard is still known, the first long forgotten.
        let last = Lease::generate(EventId::new("evt-199999").unwrap());
        assert!(matches!(store.claim(&last, long).await.unwrap(), Claim::Done { .. }));
        let first = Lease::generate(EventId::new("evt-0").unwrap());
        assert_eq!(store.claim(&first, long).await.unwrap(), Claim::New);
    }

    #[tokio::test]
    async fn ids_retained_for_ever_are_still_evicted_when_the_store_is_full() {
        // One id per shard: every new id evicts the one before it.
        let store = MemoryStore::with_capacity(SHARDS);
        for n in 0..1000 {
            let lease = Lease::generate(EventId::new(format!("evt-{n}")).unwrap());
            assert_eq!(store.claim(&lease, Duration::MAX).await.unwrap(), Claim::New, "evt-{n}");
            assert!(
                store
                    .complete(&lease, BodyDigest::of(b"{}"), Duration::MAX)
                    .await
                    .unwrap()
            );
            assert_consistent(&store);
        }
        assert_eq!(store.len(), SHARDS);
    }

    #[tokio::test]
    async fn a_completed_id_claimed_again_after_its_retention_is_counted_once() {
        let store = MemoryStore::with_capacity(16 * 4);
        let long = Duration::from_secs(3600);
        // Ids of one shard: an entry retained long ahead of one retained
        // for no time, so that the second is not at the queue's front when
        // its id is claimed again.
        let shard_of = |id: &EventId| (store.hasher.hash_one(id.as_str()) >> 32) as usize % SHARDS;
        let first = EventId::new("evt-first").unwrap();
        let second = (0..)
            .map(|n| EventId::new(format!("evt-{n}")).unwrap())
            .find(|id| shard_of(id) == shard_of(&first))
            .unwrap();
        let lease = Lease::generate(first.clone());
        assert_eq!(store.claim(&lease, long).await.unwrap(), Claim::New);
        assert!(store.complete(&lease, BodyDigest::of(b"1"), long).await.unwrap());
        let lease = Lease::generate(second.clone());
        assert_eq!(store.claim(&lease, long).await.unwrap(), Claim::New);
        assert!(
            store
                .complete(&lease, BodyDigest::of(b"2"), Duration::ZERO)
                .await
                .unwrap()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
        let again = Lease::generate(second.clone());
        assert_eq!(store.claim(&again, long).await.unwrap(), Claim::New);
        assert_eq!(store.len(), 2);
        assert_consistent(&store);
        assert!(store.complete(&again, BodyDigest::of(b"2"), long).await.unwrap());
        assert_eq!(store.len(), 2);
        assert_consistent(&store);
        assert!(matches!(
            store.claim(&Lease::generate(second), long).await.unwrap(),
            Claim::Done { .. }
        ));
    }

    #[tokio::test]
    async fn ids_kept_inline_and_shared_are_both_found_and_told_apart() {
        let store = MemoryStore::with_capacity(64);
        let long = Duration::from_secs(60);
        // Either side of the inline limit, and ids that differ only in the
        // last byte or in length.
        let ids = [
            "a".repeat(INLINE_ID - 1),
            "a".repeat(INLINE_ID),
            "a".repeat(INLINE_ID + 1),
            format!("{}b", "a".repeat(INLINE_ID - 1)),
            "a".repeat(256),
        ];
        for id in &ids {
            let lease = Lease::generate(EventId::new(id).unwrap());
            assert_eq!(store.claim(&lease, long).await.unwrap(), Claim::New, "{}", id.len());
            assert!(
                store
                    .complete(&lease, BodyDigest::of(id.as_bytes()), long)
                    .await
                    .unwrap()
            );
        }
        for id in &ids {
            // A new allocation of the same id: found by its bytes.
            let again = Lease::generate(EventId::new(id).unwrap());
            assert_eq!(
                store.claim(&again, long).await.unwrap(),
                Claim::Done {
                    digest: Some(BodyDigest::of(id.as_bytes()))
                },
                "{}",
                id.len()
            );
        }
        assert_eq!(store.len(), ids.len());
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
