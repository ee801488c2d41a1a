//! `MemoryStore` claim + complete throughput, on one thread and on every
//! core (one thread per core, all on the same store).
//!
//! Each iteration claims a fresh id and completes it. The store has its
//! default capacity, so once it is full every claim also evicts the oldest
//! completed id: the steady state of a long-running receiver. Ids are made
//! before the clock starts.
//!
//! `bounded_set_insert` is the baseline: the hand-written twin's dedup set
//! (`benches/support/bounded_set.rs`, one insert per fresh id, the oldest
//! forgotten once it holds `MemoryStore::DEFAULT_CAPACITY` ids) behind a
//! `Mutex`, on one thread, as the twin uses it.
//!
//! Run with `cargo bench --bench store`.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::FutureExt;
use klikit_webhook::{
    DedupStore, EventId, MemoryStore,
    store::{BodyDigest, Claim, Lease},
};

#[path = "support/bounded_set.rs"]
mod bounded_set;
use bounded_set::BoundedSet;

const LEASE: Duration = Duration::from_secs(60);
const RETAIN: Duration = Duration::from_secs(24 * 60 * 60);

static NEXT: AtomicU64 = AtomicU64::new(0);

fn ids(count: u64) -> Vec<EventId> {
    let start = NEXT.fetch_add(count, Ordering::Relaxed);
    (start..start + count)
        .map(|n| EventId::new(format!("evt-{n:012}")).unwrap())
        .collect()
}

fn claim_complete(store: &MemoryStore, id: &EventId) {
    // MemoryStore never awaits: its futures are ready at the first poll.
    let lease = Lease::generate(id.clone());
    let claim = store.claim(&lease, LEASE).now_or_never().unwrap().unwrap();
    let Claim::New = claim else {
        panic!("fresh id was not new")
    };
    let digest = BodyDigest::from_bytes([7; BodyDigest::LEN]);
    assert!(store.complete(&lease, digest, RETAIN).now_or_never().unwrap().unwrap());
}

fn run(store: &Arc<MemoryStore>, threads: usize, iters: u64) -> Duration {
    let per_thread = iters.div_ceil(threads as u64);
    let batches: Vec<Vec<EventId>> = (0..threads).map(|_| ids(per_thread)).collect();
    let barrier = std::sync::Barrier::new(threads + 1);
    std::thread::scope(|scope| {
        for batch in &batches {
            let (store, barrier) = (store.clone(), &barrier);
            scope.spawn(move || {
                barrier.wait();
                for id in batch {
                    claim_complete(&store, id);
                }
            });
        }
        barrier.wait();
        let start = Instant::now();
        // The scope joins every thread before it returns.
        start
    })
    .elapsed()
}

fn store(c: &mut Criterion) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut group = c.benchmark_group("memory_store_claim_complete");
    group.throughput(Throughput::Elements(1));
    let single = Arc::new(MemoryStore::new());
    group.bench_function("1_thread", |b| {
        b.iter_batched(
            || ids(1).pop().unwrap(),
            |id| claim_complete(&single, &id),
            criterion::BatchSize::SmallInput,
        )
    });
    let set = Mutex::new(BoundedSet::with_capacity(MemoryStore::DEFAULT_CAPACITY));
    group.bench_function("bounded_set_insert", |b| {
        b.iter_batched(
            || ids(1).pop().unwrap(),
            |id| assert!(set.lock().unwrap().insert(id.as_str()), "fresh id was not new"),
            criterion::BatchSize::SmallInput,
        )
    });
    let shared = Arc::new(MemoryStore::new());
    group.bench_function(format!("{cores}_threads"), |b| {
        b.iter_custom(|iters| run(&shared, cores, iters))
    });
    group.finish();
}

criterion_group!(benches, store);
criterion_main!(benches);
