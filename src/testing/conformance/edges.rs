//! The behaviours about ids, durations and tokens at their edges.

use std::{collections::HashSet, time::Duration};

use super::*;

/// Ids that are similar, long (256 bytes), or full of characters special to SQL, Redis
/// patterns, cluster hash tags or `LIKE` never collide: each has its own
/// record.
pub async fn odd_ids_do_not_collide<F: StoreFactory>(factory: &F) {
    let ns = namespace();
    let store = factory.open(&ns).await;
    let long_a = "a".repeat(crate::MAX_EVENT_ID_LEN);
    let long_b = format!("{}b", "a".repeat(crate::MAX_EVENT_ID_LEN - 1));
    let ids: Vec<EventId> = [
        "*",
        "?",
        "[a]",
        ":",
        "::",
        "a:b",
        "a",
        "A",
        "a*",
        "%",
        "_",
        "a%",
        "a_",
        "'",
        "''",
        "\"",
        "\\",
        "`",
        // Ids cannot hold spaces; these are what remains of the classics.
        "';DROP/**/TABLE/**/x;--",
        "\";DROP/**/TABLE/**/x;--",
        "'OR'1'='1",
        "{a}",
        "{a}b",
        "$1",
        "?1",
        "i:0",
        "d:0",
        "klikit:dedup:a",
        "~!@#$^&()+=|<>,./",
        &long_a,
        &long_b,
    ]
    .iter()
    .map(|s| id(s))
    .collect();
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        ids.len(),
        "the test ids are distinct"
    );

    // Every id is new, even after all the others were claimed.
    let mut leases = Vec::new();
    for event in &ids {
        leases.push(claim_new(&store, event, LONG).await);
    }
    let tokens: HashSet<_> = leases.iter().map(Lease::token).collect();
    assert_eq!(tokens.len(), leases.len(), "two claims got the same token");

    // Complete the even ones and release the odd ones; each id answers for itself.
    for (i, lease) in leases.iter().enumerate() {
        if i % 2 == 0 {
            assert!(complete(&store, lease, LONG).await, "complete {:?}", lease.event_id());
        } else {
            assert!(release(&store, lease).await, "release {:?}", lease.event_id());
        }
    }
    for (i, event) in ids.iter().enumerate() {
        if i % 2 == 0 {
            assert_done(&store, event).await;
        } else {
            let lease = claim_new(&store, event, LONG).await;
            assert!(release(&store, &lease).await, "release {event:?} again");
        }
    }
    factory.cleanup(&ns).await;
}

/// Zero and enormous durations are accepted (stores clamp them to what the
/// backend can represent) and do not fail.
///
/// A zero lease is a claim that has already expired: it answers `New`, and
/// shortly afterwards (a zero lease is 1 ms in the persistent stores) the
/// next claim by anyone wins the event, after which the zero lease can
/// neither release nor complete it. A zero retention forgets the completed
/// event just as soon. `Duration::MAX` holds the claim and the record.
pub async fn extreme_durations_are_accepted<F: StoreFactory>(factory: &F) {
    let ns = namespace();
    let store = factory.open(&ns).await;
    let zero = id("evt-zero");
    let zero_lease = claim_new(&store, &zero, Duration::ZERO).await;
    tokio::time::sleep(PAST_ZERO).await;
    let taken_over = claim_new(&store, &zero, LONG).await;
    assert!(
        !release(&store, &zero_lease).await,
        "a zero lease released the claim that took it over"
    );
    assert!(
        !complete(&store, &zero_lease, LONG).await,
        "a zero lease completed the claim that took it over"
    );
    assert_in_flight(&store, &zero, LONG).await;
    assert!(
        complete(&store, &taken_over, Duration::ZERO).await,
        "complete with a zero retention"
    );
    tokio::time::sleep(PAST_ZERO).await;
    let again = claim_new(&store, &zero, LONG).await;
    assert!(release(&store, &again).await, "release after a zero retention ran out");

    let huge = id("evt-huge");
    let lease = claim_new(&store, &huge, Duration::MAX).await;
    assert_in_flight(&store, &huge, Duration::MAX).await;
    assert!(
        complete(&store, &lease, Duration::MAX).await,
        "complete with Duration::MAX"
    );
    assert_done(&store, &huge).await;
    factory.cleanup(&ns).await;
}

/// The claim is stored with the caller's token: that lease, and only that
/// lease, releases or completes it. Claiming again with the lease that holds
/// the claim answers `New` and keeps it held; any other lease gets
/// `InFlight`. A claim with the completing lease's own token, after
/// completion, is `Done`.
pub async fn claim_holds_the_callers_token<F: StoreFactory>(factory: &F) {
    let ns = namespace();
    let store = factory.open(&ns).await;
    let event = id("evt-callers-token");
    let lease = Lease::new(event.clone(), LeaseToken::generate());
    assert_eq!(
        claim(&store, &lease, LONG).await,
        Claim::New,
        "claim with the caller's lease"
    );
    let stranger = Lease::generate(event.clone());
    assert!(!release(&store, &stranger).await, "another token released the claim");
    assert!(
        !complete(&store, &stranger, LONG).await,
        "another token completed the claim"
    );
    assert_eq!(
        claim(&store, &lease, LONG).await,
        Claim::New,
        "claim again with the lease that holds the claim"
    );
    assert_in_flight(&store, &event, LONG).await;
    assert!(release(&store, &lease).await, "release with the caller's lease");

    let second = claim_new(&store, &event, LONG).await;
    assert!(
        complete(&store, &second, LONG).await,
        "complete with the caller's lease"
    );
    assert_eq!(
        claim(&store, &second, LONG).await,
        Claim::Done {
            digest: Some(digest_for(&event))
        },
        "claim with the completing lease after completion"
    );
    assert_done(&store, &event).await;
    factory.cleanup(&ns).await;
}

/// What the layer does with a claim it stopped waiting for (its store
/// timeout, or a dropped request): it releases the claim's lease, maybe
/// before the claim landed and again after. A release before the claim
/// lands changes nothing (`false`); once the claim has landed, the release
/// removes it (`true`) and the next claim by anyone is `New`.
pub async fn release_of_a_late_claim_frees_the_event<F: StoreFactory>(factory: &F) {
    let ns = namespace();
    let store = factory.open(&ns).await;
    let event = id("evt-late-claim");
    let abandoned = Lease::generate(event.clone());
    assert!(
        !release(&store, &abandoned).await,
        "released a claim that had not landed yet"
    );
    // The claim lands after the first release; nobody waits for its answer.
    assert_eq!(claim(&store, &abandoned, LONG).await, Claim::New, "the late claim");
    assert_in_flight(&store, &event, LONG).await;
    assert!(release(&store, &abandoned).await, "release of the landed late claim");
    assert!(!release(&store, &abandoned).await, "second release of the late claim");
    let retry = claim_new(&store, &event, LONG).await;
    assert!(complete(&store, &retry, LONG).await, "complete the retry's claim");
    assert!(
        !release(&store, &abandoned).await,
        "the late claim's lease released a completed event"
    );
    assert_done(&store, &event).await;
    factory.cleanup(&ns).await;
}

/// `complete` stores the digest it is given with the event: every later
/// claim answers `Done` with that digest, each event its own.
pub async fn done_carries_the_digest<F: StoreFactory>(factory: &F) {
    let ns = namespace();
    let store = factory.open(&ns).await;
    let (first, second) = (id("evt-digest-a"), id("evt-digest-b"));
    let body_a = BodyDigest::of(br#"{"orders":[{"id":1}]}"#);
    let body_b = BodyDigest::of(br#"{"orders":[{"id":2}]}"#);
    let lease_a = claim_new(&store, &first, LONG).await;
    let lease_b = claim_new(&store, &second, LONG).await;
    for (lease, digest) in [(&lease_b, body_b), (&lease_a, body_a)] {
        match store.complete(lease, digest, LONG).await {
            Ok(completed) => assert!(completed, "complete {:?}", lease.event_id()),
            Err(error) => panic!("complete({:?}) failed: {error:?}", lease.event_id()),
        }
    }
    for (event, digest) in [(&first, body_a), (&second, body_b), (&first, body_a)] {
        assert_eq!(
            claim(&store, &Lease::generate(event.clone()), LONG).await,
            Claim::Done { digest: Some(digest) },
            "claim({event:?}) after completion with its digest"
        );
    }
    factory.cleanup(&ns).await;
}
