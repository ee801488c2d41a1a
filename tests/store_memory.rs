//! The conformance suite against [`MemoryStore`].
#![cfg(feature = "test-util")]

use klikit_webhook::{MemoryStore, testing::conformance::StoreFactory};

struct Memory;

#[async_trait::async_trait]
impl StoreFactory for Memory {
    type Store = MemoryStore;

    async fn open(&self, _namespace: &str) -> MemoryStore {
        MemoryStore::new()
    }

    fn persistent(&self) -> bool {
        false
    }
}

async fn factory() -> Option<Memory> {
    Some(Memory)
}

klikit_webhook::dedup_store_tests!(factory());

#[tokio::test]
async fn run_all_passes() {
    klikit_webhook::testing::conformance::run_all(&Memory).await;
}

/// Eviction when the store is full. `MemoryStore` has 16 shards, each with
/// its own share of the capacity and its own eviction order, and an id's
/// shard depends on a per-store random seed, so the tests first find, by
/// behaviour alone, ids that share one shard (see [`rig`]).
mod eviction {
    use std::{
        convert::Infallible,
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        time::Duration,
    };

    use bytes::Bytes;
    use http::{Request, Response, StatusCode, header};
    use http_body_util::{BodyExt, Full};
    use klikit_webhook::{
        DedupStore, EventId, KlikitWebhookLayer, MemoryStore, Rejection, RejectionKind, StoreError, WebhookSecret,
        store::{self, BodyDigest, Lease},
        testing::signed_request,
    };
    use tower::{ServiceBuilder, ServiceExt};

    /// 16 shards of 2 ids.
    const CAPACITY: usize = 32;
    const LEASE: Duration = Duration::from_secs(600);
    const RETAIN: Duration = Duration::from_secs(3600);
    const SECRET: &str = "eviction-test-secret-0123456789";

    fn id(name: String) -> EventId {
        EventId::new(name).unwrap()
    }

    /// The store's answer, with the lease of a new claim.
    #[derive(Debug, PartialEq)]
    enum Claim {
        New(Lease),
        Done,
        InFlight,
    }

    // The store calls, in one place.
    async fn claim(store: &MemoryStore, id: &EventId) -> Result<Claim, StoreError> {
        let lease = Lease::generate(id.clone());
        Ok(match store.claim(&lease, LEASE).await? {
            store::Claim::New => Claim::New(lease),
            store::Claim::Done { .. } => Claim::Done,
            store::Claim::InFlight { .. } => Claim::InFlight,
        })
    }

    async fn new_lease(store: &MemoryStore, id: &EventId) -> Lease {
        match claim(store, id).await {
            Ok(Claim::New(lease)) => lease,
            other => panic!("{id}: expected a new claim, got {other:?}"),
        }
    }

    async fn complete(store: &MemoryStore, lease: &Lease) {
        let digest = BodyDigest::of(lease.event_id().as_str().as_bytes());
        assert!(
            store.complete(lease, digest, RETAIN).await.unwrap(),
            "{lease:?} completed"
        );
    }

    async fn release(store: &MemoryStore, lease: &Lease) {
        assert!(store.release(lease).await.unwrap(), "{lease:?} released");
    }

    fn is_full(result: &Result<Claim, StoreError>) -> bool {
        matches!(result, Err(StoreError::Full { capacity: CAPACITY }))
    }

    /// A full store: every shard holds two in-flight claims. In one shard,
    /// `S`, the test knows both: `first` (claimed first) and `second`.
    /// `others` are more ids of `S`, never claimed.
    struct Rigged {
        store: Arc<MemoryStore>,
        first: Lease,
        second: Lease,
        others: Vec<EventId>,
    }

    async fn rig() -> Rigged {
        let store = Arc::new(MemoryStore::with_capacity(CAPACITY));
        assert_eq!(store.capacity(), CAPACITY);
        // Fill every shard with in-flight claims; a full shard answers Full.
        let mut held = Vec::new();
        for n in 0.. {
            assert!(n < 100_000, "could not fill the store");
            if held.len() == CAPACITY {
                break;
            }
            let result = claim(&store, &id(format!("fill-{n}"))).await;
            match result {
                Ok(Claim::New(lease)) => held.push(lease),
                ref full if is_full(full) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(store.len(), CAPACITY);

        // Free one slot, in shard S. Only ids of S can be claimed now: that
        // finds them (each released again at once).
        let freed = held.swap_remove(0);
        release(&store, &freed).await;
        let mut in_s = Vec::new();
        for n in 0.. {
            assert!(n < 100_000, "found no ids in the shard");
            if in_s.len() == 4 {
                break;
            }
            let candidate = id(format!("s-{n}"));
            let result = claim(&store, &candidate).await;
            match result {
                Ok(Claim::New(lease)) => {
                    release(&store, &lease).await;
                    in_s.push(candidate);
                }
                ref full if is_full(full) => {}
                other => panic!("unexpected {other:?}"),
            }
        }

        // Take the free slot. S is full again, with one unknown fill claim:
        // it is the one whose release lets another id of S in.
        let first = new_lease(&store, &in_s[0]).await;
        let mut second = None;
        for k in 0..held.len() {
            release(&store, &held[k]).await;
            let result = claim(&store, &in_s[1]).await;
            match result {
                Ok(Claim::New(lease)) => {
                    second = Some(lease);
                    held.swap_remove(k);
                    break;
                }
                // Another shard: take its slot back.
                ref full if is_full(full) => held[k] = new_lease(&store, held[k].event_id()).await,
                other => panic!("unexpected {other:?}"),
            }
        }
        let second = second.expect("one fill claim shares the shard");
        assert_eq!(store.len(), CAPACITY, "the store is full");
        assert_eq!(held.len(), CAPACITY - 2);
        Rigged {
            store,
            first,
            second,
            others: in_s.split_off(2),
        }
    }

    #[tokio::test]
    async fn when_full_the_oldest_completed_id_is_forgotten() {
        let Rigged {
            store,
            first,
            second,
            others,
        } = rig().await;
        // Completed in the other order than claimed: `second` is the oldest
        // completed id of S.
        complete(&store, &second).await;
        complete(&store, &first).await;

        // A new id of S takes the place of the oldest completed one.
        let newcomer = new_lease(&store, &others[0]).await;
        assert_eq!(store.len(), CAPACITY);
        assert_eq!(
            claim(&store, first.event_id()).await.unwrap(),
            Claim::Done,
            "the newer completed id is remembered"
        );
        assert!(
            matches!(claim(&store, second.event_id()).await, Ok(Claim::New(_))),
            "the oldest completed id was forgotten: a redelivery is new"
        );
        // That claim took the place of `first`, the only completed id left:
        // S holds two in-flight claims now, and has no room for `first`.
        assert!(matches!(
            claim(&store, first.event_id()).await,
            Err(StoreError::Full { .. })
        ));
        assert!(matches!(claim(&store, newcomer.event_id()).await, Ok(Claim::InFlight)));
    }

    #[tokio::test]
    async fn an_in_flight_id_is_never_evicted() {
        let Rigged {
            store,
            first,
            second,
            others,
        } = rig().await;
        // S: `first` completed, `second` in flight (and older).
        complete(&store, &first).await;
        let newcomer = new_lease(&store, &others[0]).await;
        assert!(
            matches!(claim(&store, second.event_id()).await, Ok(Claim::InFlight)),
            "the in-flight claim stayed"
        );
        assert!(
            matches!(claim(&store, first.event_id()).await, Err(StoreError::Full { .. })),
            "the completed id went (and S is full of claims again)"
        );
        // The surviving claim still completes.
        complete(&store, &second).await;
        complete(&store, &newcomer).await;
    }

    #[tokio::test]
    async fn a_store_full_of_in_flight_claims_is_full_and_the_layer_answers_503() {
        let Rigged {
            store, first, others, ..
        } = rig().await;
        let result = claim(&store, &others[0]).await;
        assert!(is_full(&result), "{result:?}");

        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let layer = KlikitWebhookLayer::new(WebhookSecret::new(SECRET).unwrap())
            .with_shared_store(Arc::clone(&store) as Arc<dyn DedupStore>);
        let service = ServiceBuilder::new()
            .layer(layer)
            .service_fn(move |_: Request<Full<Bytes>>| {
                counter.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, Infallible>(Response::new(Full::<Bytes>::default())) }
            });
        let deliver = |id: &EventId| {
            let request = signed_request::<Full<Bytes>>(SECRET, id.as_str(), "klikit.order.created.v2", "{}");
            service.clone().oneshot(request)
        };

        let response = deliver(&others[0]).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "5");
        assert_eq!(
            response.extensions().get::<Rejection>().map(|r| r.kind().clone()),
            Some(RejectionKind::StoreUnavailable)
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], br#"{"error":"dedup store unavailable"}"#);
        assert_eq!(calls.load(Ordering::SeqCst), 0, "the handler was not called");

        // Once a claim of S completes, Klikit's retry gets its place.
        complete(&store, &first).await;
        let response = deliver(&others[0]).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
