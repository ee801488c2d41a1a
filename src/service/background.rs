//! Store work the layer finishes after the answer went out: completion
//! retries and releases, each holding a permit of the layer's
//! [`Background`] semaphore for its whole life; past
//! [`MAX_BACKGROUND_TASKS`] the work is dropped and logged at `ERROR`. Every
//! task gives up when its lease, counted from the claim, would have ended.

use std::{fmt, sync::Arc, time::Duration};

use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

use super::claim::{Held, with_timeout};
use crate::{
    layer::Config,
    store::{BodyDigest, Lease},
};

/// How many background store tasks (completion retries and releases) one
/// layer runs at once. See [`KlikitWebhookLayer::MAX_BACKGROUND_TASKS`](crate::KlikitWebhookLayer::MAX_BACKGROUND_TASKS).
pub(crate) const MAX_BACKGROUND_TASKS: usize = 1024;

/// How many background store calls one layer makes at once. The tasks wait
/// for a turn, so background work never holds more than this many of the
/// store's connections: a burst of timed-out claims (a saturated pool) must
/// not keep the pool saturated with their releases and starve the
/// deliveries in front.
pub(crate) const MAX_BACKGROUND_CALLS: usize = 4;

/// The first delay between two background attempts, doubled after each.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(25);
/// The longest delay between two background attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);

/// The permits of a layer's background store work, shared by every service
/// the layer makes: one per task ([`MAX_BACKGROUND_TASKS`]), and one per
/// store call in flight ([`MAX_BACKGROUND_CALLS`]).
#[derive(Clone)]
pub(crate) struct Background {
    tasks: Arc<Semaphore>,
    calls: Arc<Semaphore>,
}

impl Background {
    pub(crate) fn new() -> Self {
        Self {
            tasks: Arc::new(Semaphore::new(MAX_BACKGROUND_TASKS)),
            calls: Arc::new(Semaphore::new(MAX_BACKGROUND_CALLS)),
        }
    }

    /// Waits for a turn to call the store, until `end` at the latest.
    async fn call_turn(&self, end: Option<Instant>) -> Option<OwnedSemaphorePermit> {
        let turn = Arc::clone(&self.calls).acquire_owned();
        match end {
            Some(end) => tokio::time::timeout_at(end, turn).await.ok()?.ok(),
            None => turn.await.ok(),
        }
    }

    /// Runs `task` on the current Tokio runtime if a permit is free;
    /// otherwise (or without a runtime) logs at `ERROR` what is lost.
    pub(super) fn spawn<F>(&self, held: &Held, work: &'static str, lost: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(
                event_id = %held.event_id,
                key = held.key(),
                work,
                "no Tokio runtime to run a background store task on; {lost}"
            );
            return;
        };
        let Ok(permit) = Arc::clone(&self.tasks).try_acquire_owned() else {
            tracing::error!(
                event_id = %held.event_id,
                key = held.key(),
                work,
                limit = MAX_BACKGROUND_TASKS,
                "too many background store tasks (is the store saturated?); dropping this one: {lost}"
            );
            return;
        };
        runtime.spawn(async move {
            let _permit: OwnedSemaphorePermit = permit;
            task.await;
        });
    }
}

impl fmt::Debug for Background {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Background")
            .field("running", &(MAX_BACKGROUND_TASKS - self.tasks.available_permits()))
            .field("limit", &MAX_BACKGROUND_TASKS)
            .field("calls", &(MAX_BACKGROUND_CALLS - self.calls.available_permits()))
            .finish()
    }
}

/// Keeps trying to complete a claim whose handler succeeded, until the lease
/// (counted from the claim) would have ended.
///
/// The 2xx has gone out, so Klikit will not retry; but a duplicate it sends
/// later (or an operator's replay) must find the event done. Leaving the
/// claim in flight would let the first delivery after the lease run the
/// handler again. Retrying is safe: `complete` acts only while this lease's
/// token holds the claim. Every way the retry ends is logged.
pub(super) fn retry_complete(config: &Arc<Config>, held: &Held, digest: BodyDigest) {
    let task_config = config.clone();
    let held = held.clone();
    let lost = "the processed event is not recorded; a duplicate after its lease may be processed again";
    config.background.spawn(&held.clone(), "complete", lost, async move {
        let config = task_config;
        let (lease, event_id, key) = (&held.lease, &held.event_id, held.key());
        let end = held.lease_end(&config);
        let mut backoff = Backoff::new(end, lease);
        while backoff.wait().await {
            let Some(_turn) = config.background.call_turn(end).await else {
                break;
            };
            match with_timeout(
                config.store_timeout,
                config.store.complete(lease, digest, config.retention),
            )
            .await
            {
                Ok(true) => {
                    tracing::info!(%event_id, key, attempts = backoff.attempts, "processed event recorded on retry");
                    return;
                }
                Ok(false) => {
                    tracing::warn!(
                        %event_id,
                        key,
                        attempts = backoff.attempts,
                        "retried completion found the claim no longer held: an earlier attempt landed after it timed \
                         out, or the lease ended and another delivery took the event over (then it may be processed \
                         again)"
                    );
                    return;
                }
                Err(error) => tracing::debug!(%error, %event_id, key, "completion retry failed"),
            }
        }
        tracing::error!(
            %event_id,
            key,
            attempts = backoff.attempts,
            "gave up recording the processed event: its lease has ended; a later duplicate will be processed again"
        );
    });
}

/// When a background release stops before the lease ends.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum ReleaseUntil {
    /// At the first answer, `true` or `false`: the claim call (or an earlier
    /// release) came back, so the claim is held by this lease or not at all.
    Answered,
    /// Only at `true`: the claim call was cut off and may land after any
    /// number of releases.
    Released,
}

/// Releases `held` on a background task, retrying with backoff until the
/// store answers as `until` says or the lease (counted from the claim) would
/// have ended. Every way it ends is logged.
pub(super) fn spawn_release(config: &Arc<Config>, held: Held, until: ReleaseUntil) {
    let task_config = config.clone();
    let lost = "the event is refused (409) until its lease ends";
    config.background.spawn(&held.clone(), "release", lost, async move {
        let config = task_config;
        let (lease, event_id, key) = (&held.lease, &held.event_id, held.key());
        let end = held.lease_end(&config);
        let mut backoff = Backoff::new(end, lease);
        let mut last_error = None;
        while backoff.wait().await {
            let Some(_turn) = config.background.call_turn(end).await else {
                break;
            };
            match with_timeout(config.store_timeout, config.store.release(lease)).await {
                Ok(true) => {
                    tracing::info!(%event_id, key, attempts = backoff.attempts, "claim released in the background");
                    return;
                }
                Ok(false) if until == ReleaseUntil::Answered => {
                    tracing::debug!(%event_id, key, "background release: the claim was not held");
                    return;
                }
                Ok(false) => last_error = None,
                Err(error) => last_error = Some(error),
            }
        }
        match last_error {
            // Only `false` answers: the claim never landed, or it landed
            // late and expired, or it was taken over.
            None => tracing::debug!(
                %event_id,
                key,
                attempts = backoff.attempts,
                "background release ended with the lease: no late claim to release"
            ),
            Some(error) => tracing::error!(
                %error,
                %event_id,
                key,
                attempts = backoff.attempts,
                "gave up releasing the claim: its lease has ended"
            ),
        }
    });
}

/// The waits of a background task: the first attempt at once, then after
/// [`FIRST_RETRY_DELAY`] doubling up to [`MAX_RETRY_DELAY`], each delay
/// jittered to between half and all of it so that tasks started together
/// spread out; no attempt starts after `end`.
struct Backoff {
    end: Option<Instant>,
    delay: Duration,
    /// Jitter source, seeded from the lease token (unique per claim).
    state: u64,
    attempts: u32,
}

impl Backoff {
    fn new(end: Option<Instant>, lease: &Lease) -> Self {
        let token = lease.token().as_u128();
        // Folding the two halves: truncation intended.
        let state = (token as u64) ^ ((token >> 64) as u64);
        Self {
            end,
            delay: Duration::ZERO,
            state,
            attempts: 0,
        }
    }

    /// Waits before the next attempt; `false` if it would start after the end.
    async fn wait(&mut self) -> bool {
        let pause = if self.attempts == 0 {
            Duration::ZERO
        } else {
            self.delay = (self.delay * 2).clamp(FIRST_RETRY_DELAY, MAX_RETRY_DELAY);
            self.delay.mul_f64(0.5 + 0.5 * self.next_unit())
        };
        let start = Instant::now().checked_add(pause);
        if let (Some(end), Some(start)) = (self.end, start)
            && start >= end
        {
            return false;
        }
        tokio::time::sleep(pause).await;
        // A busy runtime may wake the task late: check the end again.
        if self.end.is_some_and(|end| Instant::now() >= end) {
            return false;
        }
        self.attempts += 1;
        true
    }

    /// A pseudo-random number in `[0, 1)` (splitmix64).
    fn next_unit(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // The top 53 bits, exactly representable.
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}
