//! The conformance suite every [`DedupStore`] must pass.
//!
//! Each behaviour of the [store contract](crate::store) is one public `async`
//! function that takes a [`StoreFactory`] and panics when the store breaks the
//! contract. Run them all with [`run_all`], or get one `#[tokio::test]` per
//! behaviour with the [`dedup_store_tests!`](crate::dedup_store_tests) macro:
//!
//! ```no_run
//! use klikit_webhook::{MemoryStore, testing::conformance::StoreFactory};
//!
//! #[derive(Debug)]
//! struct Memory;
//!
//! #[async_trait::async_trait]
//! impl StoreFactory for Memory {
//!     type Store = MemoryStore;
//!
//!     async fn open(&self, _namespace: &str) -> MemoryStore {
//!         MemoryStore::new()
//!     }
//!
//!     fn persistent(&self) -> bool {
//!         false
//!     }
//! }
//!
//! // Returns `None` to skip, for instance when a server is unreachable.
//! async fn factory() -> Option<Memory> {
//!     Some(Memory)
//! }
//!
//! klikit_webhook::dedup_store_tests!(factory());
//! # fn main() {}
//! ```
//!
//! The macro needs `tokio` with the `macros` and `rt-multi-thread` features
//! among the caller's dev-dependencies.
//!
//! Timing: the expiry behaviours use leases of [`SHORT`] and sleep a little
//! longer, so a store must honour expiry with a precision of about 100 ms.
//! The whole suite takes about two seconds against a local server.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;

use crate::{
    EventId,
    store::{BodyDigest, Claim, DedupStore, Lease, LeaseToken},
};

mod edges;

pub use edges::{
    claim_holds_the_callers_token, done_carries_the_digest, extreme_durations_are_accepted, odd_ids_do_not_collide,
    release_of_a_late_claim_frees_the_event,
};

/// The lease and retention used by the expiry behaviours.
pub const SHORT: Duration = Duration::from_millis(200);
/// How long the expiry behaviours sleep to see [`SHORT`] expire.
pub const PAST_SHORT: Duration = Duration::from_millis(350);
/// The lease used where nothing should expire during the test.
pub const LONG: Duration = Duration::from_secs(60);
/// How long the zero-duration behaviour sleeps to see a zero lease or
/// retention (1 ms in the persistent stores) expire.
pub const PAST_ZERO: Duration = Duration::from_millis(50);

/// Opens stores for the suite.
///
/// Every behaviour calls [`open`](Self::open) with a fresh `namespace` (a
/// unique string of ASCII lowercase letters, digits and `_`, at most 48
/// bytes, usable as a table name or a key prefix). Stores opened with
/// different namespaces must not see each other's records; a store opened
/// again with the same namespace must see the same records (if
/// [`persistent`](Self::persistent)).
#[async_trait]
pub trait StoreFactory: Send + Sync {
    /// The store under test.
    type Store: DedupStore;

    /// Opens a store over the records of `namespace`, creating them if needed.
    ///
    /// Opening the same namespace again should use a new connection (pool,
    /// client, file handle), as a restarted process would.
    async fn open(&self, namespace: &str) -> Self::Store;

    /// Whether a store opened again on the same namespace keeps what an
    /// earlier one recorded. `false` skips the reopening behaviour and makes
    /// the concurrency behaviour use a single store. Defaults to `true`.
    fn persistent(&self) -> bool {
        true
    }

    /// Removes the records of `namespace` once a behaviour has passed.
    /// Defaults to doing nothing.
    async fn cleanup(&self, namespace: &str) {
        let _ = namespace;
    }
}

/// A unique namespace for one behaviour.
pub fn namespace() -> String {
    format!("klikit_t_{}", LeaseToken::generate())
}

fn id(s: &str) -> EventId {
    match EventId::new(s) {
        Ok(id) => id,
        Err(error) => panic!("test event id {s:?} is invalid: {error}"),
    }
}

/// The digest the suite completes `event_id` with: one per id, so that a
/// store that mixes up records answers with another id's digest.
fn digest_for(event_id: &EventId) -> BodyDigest {
    BodyDigest::of(event_id.as_str().as_bytes())
}

async fn claim<S: DedupStore + ?Sized>(store: &S, lease: &Lease, ttl: Duration) -> Claim {
    match store.claim(lease, ttl).await {
        Ok(claim) => claim,
        Err(error) => panic!("claim({:?}) failed: {error:?}", lease.event_id()),
    }
}

/// Claims `event_id` with a fresh lease and expects `New`.
async fn claim_new<S: DedupStore + ?Sized>(store: &S, event_id: &EventId, ttl: Duration) -> Lease {
    let lease = Lease::generate(event_id.clone());
    match claim(store, &lease, ttl).await {
        Claim::New => lease,
        other => panic!("claim({event_id:?}) on an unclaimed id answered {other:?}, expected New"),
    }
}

async fn assert_in_flight<S: DedupStore + ?Sized>(store: &S, event_id: &EventId, lease: Duration) {
    match claim(store, &Lease::generate(event_id.clone()), LONG).await {
        Claim::InFlight { retry_after } => {
            if let Some(left) = retry_after {
                assert!(
                    left <= lease,
                    "retry_after {left:?} is longer than the lease {lease:?} of {event_id:?}"
                );
            }
        }
        other => panic!("claim({event_id:?}) while it is claimed answered {other:?}, expected InFlight"),
    }
}

/// A claim with a fresh lease answers `Done` with the digest the suite
/// completed `event_id` with.
async fn assert_done<S: DedupStore + ?Sized>(store: &S, event_id: &EventId) {
    let answer = claim(store, &Lease::generate(event_id.clone()), LONG).await;
    assert_eq!(
        answer,
        Claim::Done {
            digest: Some(digest_for(event_id))
        },
        "claim({event_id:?}) after completion"
    );
}

/// Completes `lease` with [`digest_for`] its event id.
async fn complete<S: DedupStore + ?Sized>(store: &S, lease: &Lease, retain: Duration) -> bool {
    match store.complete(lease, digest_for(lease.event_id()), retain).await {
        Ok(done) => done,
        Err(error) => panic!("complete({:?}) failed: {error:?}", lease.event_id()),
    }
}

async fn release<S: DedupStore + ?Sized>(store: &S, lease: &Lease) -> bool {
    match store.release(lease).await {
        Ok(released) => released,
        Err(error) => panic!("release({:?}) failed: {error:?}", lease.event_id()),
    }
}

/// Unclaimed → `New`; claimed → `InFlight` with at most the lease left;
/// completed → `Done`, also for a second and third look.
pub async fn claim_answers_new_in_flight_done<F: StoreFactory>(factory: &F) {
    let ns = namespace();
    let store = factory.open(&ns).await;
    let event = id("evt-answers");
    let lease = claim_new(&store, &event, LONG).await;
    assert_in_flight(&store, &event, LONG).await;
    assert_in_flight(&store, &event, LONG).await;
    assert!(complete(&store, &lease, LONG).await, "complete with the live lease");
    assert_done(&store, &event).await;
    assert_done(&store, &event).await;
    factory.cleanup(&ns).await;
}

/// `complete` acts once: completing again, or releasing after completion,
/// answers `false` and leaves the event `Done`.
pub async fn complete_is_final<F: StoreFactory>(factory: &F) {
    let ns = namespace();
    let store = factory.open(&ns).await;
    let event = id("evt-complete");
    let lease = claim_new(&store, &event, LONG).await;
    assert!(complete(&store, &lease, LONG).await, "first complete");
    assert!(
        !complete(&store, &lease, LONG).await,
        "second complete of the same lease"
    );
    assert!(!release(&store, &lease).await, "release after complete");
    assert_done(&store, &event).await;
    factory.cleanup(&ns).await;
}

/// `release` gives the event back: the next claim is `New` with another
/// token, and the released lease can neither release nor complete it.
pub async fn release_allows_a_new_claim<F: StoreFactory>(factory: &F) {
    let ns = namespace();
    let store = factory.open(&ns).await;
    let event = id("evt-release");
    let first = claim_new(&store, &event, LONG).await;
    assert!(release(&store, &first).await, "release with the live lease");
    assert!(!release(&store, &first).await, "second release of the same lease");
    let second = claim_new(&store, &event, LONG).await;
    assert_ne!(first.token(), second.token(), "two claims got the same token");
    assert!(
        !release(&store, &first).await,
        "released lease released the newer claim"
    );
    assert!(
        !complete(&store, &first, LONG).await,
        "released lease completed the newer claim"
    );
    assert_in_flight(&store, &event, LONG).await;
    assert!(complete(&store, &second, LONG).await, "complete with the newer lease");
    assert_done(&store, &event).await;
    factory.cleanup(&ns).await;
}

/// A lease that expires lets the next claim win the event.
pub async fn lease_expires<F: StoreFactory>(factory: &F) {
    let ns = namespace();
    let store = factory.open(&ns).await;
    let event = id("evt-lease-expiry");
    let _abandoned = claim_new(&store, &event, SHORT).await;
    assert_in_flight(&store, &event, SHORT).await;
    tokio::time::sleep(PAST_SHORT).await;
    let lease = claim_new(&store, &event, LONG).await;
    assert!(
        complete(&store, &lease, LONG).await,
        "complete after taking over an expired lease"
    );
    assert_done(&store, &event).await;
    factory.cleanup(&ns).await;
}

/// A completed event is forgotten after its retention: the next claim is
/// `New`.
pub async fn retention_expires<F: StoreFactory>(factory: &F) {
    let ns = namespace();
    let store = factory.open(&ns).await;
    let event = id("evt-retention");
    let kept = id("evt-retention-kept");
    let lease = claim_new(&store, &event, LONG).await;
    assert!(complete(&store, &lease, SHORT).await, "complete with a short retention");
    let kept_lease = claim_new(&store, &kept, LONG).await;
    assert!(
        complete(&store, &kept_lease, LONG).await,
        "complete with a long retention"
    );
    assert_done(&store, &event).await;
    tokio::time::sleep(PAST_SHORT).await;
    let again = claim_new(&store, &event, LONG).await;
    assert_ne!(lease.token(), again.token(), "two claims got the same token");
    assert_done(&store, &kept).await;
    factory.cleanup(&ns).await;
}

/// A lease that expired and was taken over can neither complete nor release
/// the newer claim; the newer lease still can.
pub async fn stale_lease_cannot_touch_a_newer_claim<F: StoreFactory>(factory: &F) {
    let ns = namespace();
    let store = factory.open(&ns).await;
    let event = id("evt-stale");
    let stale = claim_new(&store, &event, SHORT).await;
    tokio::time::sleep(PAST_SHORT).await;
    let fresh = claim_new(&store, &event, LONG).await;
    assert_ne!(stale.token(), fresh.token(), "two claims got the same token");
    assert!(!release(&store, &stale).await, "a stale lease released the newer claim");
    assert_in_flight(&store, &event, LONG).await;
    assert!(
        !complete(&store, &stale, LONG).await,
        "a stale lease completed the newer claim"
    );
    assert_in_flight(&store, &event, LONG).await;
    assert!(complete(&store, &fresh, LONG).await, "complete with the newer lease");
    assert!(
        !release(&store, &stale).await,
        "a stale lease released a completed event"
    );
    assert_done(&store, &event).await;
    factory.cleanup(&ns).await;
}

/// 100 tasks claim one id at the same time: exactly one gets `New`, the
/// others `InFlight`. A persistent store is opened twice and the tasks
/// alternate between the two, so the claim is atomic across connections.
pub async fn concurrent_claims_have_one_winner<F: StoreFactory>(factory: &F) {
    const TASKS: usize = 100;
    let ns = namespace();
    let first = Arc::new(factory.open(&ns).await);
    let second = if factory.persistent() {
        Arc::new(factory.open(&ns).await)
    } else {
        Arc::clone(&first)
    };
    let event = id("evt-concurrent");
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let store = if task % 2 == 0 {
            Arc::clone(&first)
        } else {
            Arc::clone(&second)
        };
        let (lease, barrier) = (Lease::generate(event.clone()), Arc::clone(&barrier));
        tasks.spawn(async move {
            barrier.wait().await;
            store.claim(&lease, LONG).await.map(|claim| (lease, claim))
        });
    }
    let (mut new, mut in_flight) = (Vec::new(), 0);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok((lease, Claim::New))) => new.push(lease),
            Ok(Ok((_, Claim::InFlight { .. }))) => in_flight += 1,
            Ok(Ok((_, Claim::Done { .. }))) => panic!("a concurrent claim of an unfinished event answered Done"),
            Ok(Err(error)) => panic!("a concurrent claim failed: {error:?}"),
            Err(error) => panic!("a claiming task panicked: {error}"),
        }
    }
    assert_eq!(new.len(), 1, "{} of {TASKS} concurrent claims answered New", new.len());
    assert_eq!(in_flight, TASKS - 1);
    assert!(
        complete(&*second, &new[0], LONG).await,
        "complete through the other store"
    );
    assert_done(&*first, &event).await;
    factory.cleanup(&ns).await;
}

/// A store opened again on the same records (a restart) still knows what
/// was completed and what is in flight. Skipped unless
/// [`StoreFactory::persistent`].
pub async fn reopening_keeps_records<F: StoreFactory>(factory: &F) {
    if !factory.persistent() {
        return;
    }
    let ns = namespace();
    let done = id("evt-reopen-done");
    let in_flight = id("evt-reopen-in-flight");
    let released = id("evt-reopen-released");
    let (held, stale) = {
        let store = factory.open(&ns).await;
        let lease = claim_new(&store, &done, LONG).await;
        assert!(complete(&store, &lease, LONG).await, "complete before the restart");
        let held = claim_new(&store, &in_flight, LONG).await;
        let stale = claim_new(&store, &released, LONG).await;
        assert!(release(&store, &stale).await, "release before the restart");
        (held, stale)
    };
    let store = factory.open(&ns).await;
    assert_done(&store, &done).await;
    assert_in_flight(&store, &in_flight, LONG).await;
    assert!(
        complete(&store, &held, LONG).await,
        "complete a lease taken before the restart"
    );
    assert_done(&store, &in_flight).await;
    let fresh = claim_new(&store, &released, LONG).await;
    assert!(
        !complete(&store, &stale, LONG).await,
        "a released lease completed after the restart"
    );
    assert!(release(&store, &fresh).await, "release after the restart");
    factory.cleanup(&ns).await;
}

/// Runs every behaviour, one after the other.
///
/// # Panics
///
/// When the store breaks the contract; the message names the behaviour.
pub async fn run_all<F: StoreFactory>(factory: &F) {
    claim_answers_new_in_flight_done(factory).await;
    complete_is_final(factory).await;
    release_allows_a_new_claim(factory).await;
    lease_expires(factory).await;
    retention_expires(factory).await;
    stale_lease_cannot_touch_a_newer_claim(factory).await;
    concurrent_claims_have_one_winner(factory).await;
    reopening_keeps_records(factory).await;
    odd_ids_do_not_collide(factory).await;
    extreme_durations_are_accepted(factory).await;
    claim_holds_the_callers_token(factory).await;
    release_of_a_late_claim_frees_the_event(factory).await;
    done_carries_the_digest(factory).await;
}

/// Expands to one `#[tokio::test]` per behaviour of the
/// [conformance suite](crate::testing::conformance).
///
/// The argument is an expression evaluated in every test that yields a
/// future of `Option<F>` where `F: StoreFactory`; `None` skips the test
/// (print why). The caller needs `tokio` with the `macros` and
/// `rt-multi-thread` features. See the [module docs](crate::testing::conformance)
/// for an example.
#[macro_export]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
macro_rules! dedup_store_tests {
    ($factory:expr) => {
        $crate::dedup_store_tests!(@tests $factory;
            claim_answers_new_in_flight_done,
            complete_is_final,
            release_allows_a_new_claim,
            lease_expires,
            retention_expires,
            stale_lease_cannot_touch_a_newer_claim,
            concurrent_claims_have_one_winner,
            reopening_keeps_records,
            odd_ids_do_not_collide,
            extreme_durations_are_accepted,
            claim_holds_the_callers_token,
            release_of_a_late_claim_frees_the_event,
            done_carries_the_digest,
        );
    };
    (@tests $factory:expr; $($behaviour:ident,)+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $behaviour() {
                if let Some(factory) = $factory.await {
                    $crate::testing::conformance::$behaviour(&factory).await;
                }
            }
        )+
    };
}
