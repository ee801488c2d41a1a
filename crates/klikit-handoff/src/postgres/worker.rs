//! The processing side: [`OutboxWorker`] counts each attempt, then processes the row in a transaction of its own.

use std::{any::Any, fmt, future::Future, panic::AssertUnwindSafe, pin::pin, time::Duration};

use bytes::Bytes;
use deadpool_postgres::{GenericClient, Object, Transaction};
use futures_util::{FutureExt, future::BoxFuture};
use klikit_webhook::{EventId, EventType, KlikitEvent, store::ttl_millis};
use tokio_postgres::Row;
use tracing::Instrument;

use super::{
    OutboxError, PostgresOutbox, ProcessError,
    error::{AttemptFailure, DescribedError, describe},
};
use crate::common::RetryBackoff;

const SAVEPOINT: &str = "SAVEPOINT klikit_outbox_attempt";
const RELEASE_SAVEPOINT: &str = "RELEASE SAVEPOINT klikit_outbox_attempt";
const ROLLBACK_TO_SAVEPOINT: &str = "ROLLBACK TO SAVEPOINT klikit_outbox_attempt";

/// Processes queued events from the outbox table.
///
/// For each row, [`process_batch`](Self::process_batch):
///
/// 1. **claims** the oldest pending row (`FOR UPDATE SKIP LOCKED`: rows
///    another worker holds are skipped, never waited for) in a statement
///    committed on its own, which counts the attempt (`attempts + 1`) and
///    hides the row from other workers for the [lease](Self::with_lease).
///    A row whose attempts are used up (its last attempt never finished) is
///    moved to the dead-letter table instead, without running again;
/// 2. in a transaction of the row's own, locks the row and, in a savepoint,
///    calls your closure with that transaction and the rebuilt
///    [`KlikitEvent`]; a panic of the closure is caught;
/// 3. records the outcome and commits:
///
///    | the closure | its writes | the row |
///    |---|---|---|
///    | returned `Ok(())` | kept | `processed_at = now()`, in the same commit as your writes |
///    | returned [`ProcessError::retry`], panicked, or returned `Ok` from an aborted transaction | rolled back | available again after a growing delay; after the [last attempt](Self::with_max_attempts), moved to the dead-letter table |
///    | returned [`ProcessError::permanent`] | rolled back | moved to the dead-letter table |
///
/// A worker that dies, hangs up or is cut off mid-row never commits that
/// row: its writes are undone, its row lock vanishes with its connection,
/// and the row is taken again when its lease ends. Its attempt was counted
/// in step 1, so a row that kills or hangs every worker that takes it is
/// dead-lettered after [max attempts](Self::with_max_attempts), and never
/// holds up the rows behind it. See the [module docs](super) for the
/// dead-letter table and how to replay a row from it.
///
/// Several workers (tasks or processes) may run at once. See the
/// [module docs](super) for why effects written through the transaction happen
/// exactly once, and what that needs for effects elsewhere.
///
/// The closure has the signature
/// `for<'c> Fn(&'c Transaction<'c>, KlikitEvent) -> BoxFuture<'c, Result<(), ProcessError>>`,
/// where `Transaction` is [`deadpool_postgres::Transaction`]: a
/// [`tokio_postgres::Transaction`] (it dereferences to one, so `tx.execute`,
/// `tx.query_one` and the rest work as usual, and `&tx` can be passed where
/// `&tokio_postgres::Transaction` is expected) that can also
/// [`prepare_cached`](deadpool_postgres::Transaction::prepare_cached) on the
/// pool's statement cache. It is a shared reference: the worker commits or
/// rolls back, not the closure.
///
/// Write the closure `|tx, event| Box::pin(async move { ... })`, or
/// `|tx, event| Box::pin(my_async_fn(tx, event))` with
/// `async fn my_async_fn(tx: &Transaction<'_>, event: KlikitEvent) -> Result<(), ProcessError>`.
/// Pass it straight to [`run`](Self::run) so that Rust infers that
/// signature; a closure first stored in a `let` needs it spelled out
/// (through a generic helper function with that bound).
///
/// The rebuilt event's [`secret_index`](KlikitEvent::secret_index) is 0.
#[derive(Clone)]
#[must_use]
pub struct OutboxWorker {
    outbox: PostgresOutbox,
    batch: usize,
    poll_interval: Duration,
    max_attempts: i32,
    lease: Duration,
    retry: RetryBackoff,
}

/// A row as the claim returned it; `attempts` counts the claim's attempt and
/// is the claim's token.
struct Claimed {
    id: i64,
    event_id: String,
    event_type: String,
    body: Vec<u8>,
    attempts: i32,
    last_error: Option<String>,
}

impl Claimed {
    fn from_row(row: &Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            event_id: row.try_get("event_id")?,
            event_type: row.try_get("event_type")?,
            body: row.try_get("body")?,
            attempts: row.try_get("attempts")?,
            last_error: row.try_get("last_error")?,
        })
    }
}

impl OutboxWorker {
    /// The default number of rows one [`process_batch`](Self::process_batch)
    /// takes: 10.
    pub const DEFAULT_BATCH: usize = 10;
    /// The default wait after an empty batch (or a database error) before
    /// looking again: 500 ms.
    pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);
    /// The default number of attempts an event gets before it is moved to the
    /// dead-letter table: 10.
    pub const DEFAULT_MAX_ATTEMPTS: i32 = 10;
    /// The default lease: 30 s (see [`with_lease`](Self::with_lease)).
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
    /// The default delay before the first retry: 1 s, doubled on each further
    /// failure.
    pub const DEFAULT_RETRY_DELAY: Duration = RetryBackoff::DEFAULT_FIRST;
    /// The default longest delay between retries: 5 minutes.
    pub const DEFAULT_MAX_RETRY_DELAY: Duration = RetryBackoff::DEFAULT_MAX;

    /// A worker on `outbox`'s table. Nothing is sent to the database until
    /// [`process_batch`](Self::process_batch) or [`run`](Self::run).
    pub fn new(outbox: &PostgresOutbox) -> Self {
        Self {
            outbox: outbox.clone(),
            batch: Self::DEFAULT_BATCH,
            poll_interval: Self::DEFAULT_POLL_INTERVAL,
            max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
            lease: Self::DEFAULT_LEASE,
            retry: RetryBackoff::default(),
        }
    }

    /// How many rows one [`process_batch`](Self::process_batch) takes (default
    /// [`DEFAULT_BATCH`](Self::DEFAULT_BATCH), at least 1), each in a
    /// transaction of its own. [`run`](Self::run) looks for shutdown between
    /// batches.
    pub fn with_batch_size(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// How long [`run`](Self::run) waits after an empty batch (default
    /// [`DEFAULT_POLL_INTERVAL`](Self::DEFAULT_POLL_INTERVAL)).
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How many attempts an event gets before it is moved to the dead-letter
    /// table (default [`DEFAULT_MAX_ATTEMPTS`](Self::DEFAULT_MAX_ATTEMPTS),
    /// at least 1). Every attempt counts: one that failed, panicked, or
    /// never finished because the worker died.
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = i32::try_from(attempts.max(1)).unwrap_or(i32::MAX);
        self
    }

    /// How long a claimed row stays hidden from other workers (default
    /// [`DEFAULT_LEASE`](Self::DEFAULT_LEASE)).
    ///
    /// The lease only has to cover the moment between the claim's commit and
    /// the row lock that follows at once; from then on the lock keeps other
    /// workers away, however long the closure runs. It is also how long the
    /// row of a worker that died mid-row waits before another worker takes
    /// it. A lease that ends before the lock is taken costs an attempt: the
    /// other worker counts its own, and this one skips the row.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// The delays after a failed attempt: `first` after the first failure,
    /// doubled after each further one, never more than `max` (defaults
    /// [`DEFAULT_RETRY_DELAY`](Self::DEFAULT_RETRY_DELAY) and
    /// [`DEFAULT_MAX_RETRY_DELAY`](Self::DEFAULT_MAX_RETRY_DELAY)).
    pub fn with_retry_delay(mut self, first: Duration, max: Duration) -> Self {
        self.retry = RetryBackoff::new(first, max);
        self
    }

    /// Processes up to [batch size](Self::with_batch_size) rows, each in a
    /// transaction of its own (see the [type docs](Self)), and returns how
    /// many it took (0: nothing pending).
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] if a statement or a commit failed. The rows
    /// committed before stay processed; the row in hand is rolled back, its
    /// attempt counted, and taken again when its lease ends.
    /// [`OutboxError::Pool`] if the pool had no connection to give.
    pub async fn process_batch<F>(&self, process: &F) -> Result<usize, OutboxError>
    where
        F: for<'c> Fn(&'c Transaction<'c>, KlikitEvent) -> BoxFuture<'c, Result<(), ProcessError>>,
    {
        let mut client = self.outbox.pool.get().await?;
        let mut taken = 0;
        while taken < self.batch {
            let Some(row) = self.claim(&client).await? else {
                break;
            };
            taken += 1;
            let span = tracing::info_span!(
                "klikit_outbox_worker",
                event_id = %row.event_id,
                row = row.id,
                attempt = row.attempts
            );
            self.attempt(&mut client, row, process).instrument(span).await?;
        }
        Ok(taken)
    }

    /// Step 1: counts an attempt of the oldest available row and leases it,
    /// committed on its own.
    async fn claim(&self, client: &Object) -> Result<Option<Claimed>, OutboxError> {
        let claim = client.prepare_cached(&self.outbox.inner.sql.claim).await?;
        let row = client.query_opt(&claim, &[&ttl_millis(self.lease)]).await?;
        Ok(row.as_ref().map(Claimed::from_row).transpose()?)
    }

    /// Steps 2 and 3 for one claimed row, or straight to the dead-letter
    /// table if it must not run.
    async fn attempt<F>(&self, client: &mut Object, row: Claimed, process: &F) -> Result<(), OutboxError>
    where
        F: for<'c> Fn(&'c Transaction<'c>, KlikitEvent) -> BoxFuture<'c, Result<(), ProcessError>>,
    {
        let Claimed {
            id,
            event_id,
            event_type,
            body,
            attempts,
            last_error,
        } = row;
        // The attempts made before this claim.
        let made = attempts.saturating_sub(1);
        let not_run = if attempts > self.max_attempts {
            Some(AttemptFailure::Exhausted {
                made,
                max: self.max_attempts,
                last_error,
            })
        } else {
            match EventId::new(&event_id) {
                Ok(valid) => {
                    let event = KlikitEvent::new(valid, EventType::from_name(&event_type), Bytes::from(body));
                    return self.run_attempt(client, id, attempts, event, process).await;
                }
                Err(source) => Some(AttemptFailure::InvalidEventId { event_id, source }),
            }
        };
        if let Some(failure) = not_run {
            let error = describe(&failure);
            if self.dead_letter(&*client, id, attempts, made, &error).await? {
                tracing::error!(%error, "the event is given up without running; moved to the dead-letter table");
            }
        }
        Ok(())
    }

    /// The attempt proper: lock, run the closure in a savepoint, record the
    /// outcome, commit.
    async fn run_attempt<F>(
        &self,
        client: &mut Object,
        id: i64,
        attempts: i32,
        event: KlikitEvent,
        process: &F,
    ) -> Result<(), OutboxError>
    where
        F: for<'c> Fn(&'c Transaction<'c>, KlikitEvent) -> BoxFuture<'c, Result<(), ProcessError>>,
    {
        let sql = &self.outbox.inner.sql;

        let tx = client.transaction().await?;
        let lock = tx.prepare_cached(&sql.lock).await?;
        let ours = tx.query_opt(&lock, &[&id, &attempts]).await?.is_some();
        if !ours {
            tx.rollback().await?;
            tracing::info!("the row's lease ended before this worker locked it, and another worker took it; skipped");
            return Ok(());
        }
        // Raw statements rather than `Transaction::savepoint`: the closure
        // gets the row's transaction itself, and a RELEASE that fails (the
        // closure left the transaction aborted) must be followed by a
        // ROLLBACK TO on the same transaction.
        tx.batch_execute(SAVEPOINT).await?;
        let ran = AssertUnwindSafe(async { process(&tx, event).await })
            .catch_unwind()
            .await;
        let error = match ran {
            // RELEASE fails if the closure left the transaction aborted.
            Ok(Ok(())) => match tx.batch_execute(RELEASE_SAVEPOINT).await {
                Ok(()) => {
                    let mark = tx.prepare_cached(&sql.mark_processed).await?;
                    tx.execute(&mark, &[&id]).await?;
                    tx.commit().await?;
                    tracing::debug!("klikit event processed");
                    return Ok(());
                }
                Err(error) => ProcessError::retry(AttemptFailure::Aborted(DescribedError(error))),
            },
            Ok(Err(error)) => error,
            Err(panic) => ProcessError::retry(AttemptFailure::Panicked(panic_message(panic.as_ref()))),
        };
        tx.batch_execute(ROLLBACK_TO_SAVEPOINT).await?;
        let max = self.max_attempts;
        let message = describe(&error);
        if !error.is_retryable() || attempts >= max {
            tracing::error!(
                error = %message,
                max_attempts = max,
                dead_letter_table = %self.outbox.dead_letter_table(),
                "processing failed; the event is given up and moved to the dead-letter table"
            );
            self.dead_letter(&tx, id, attempts, attempts, &message).await?;
        } else {
            let delay = self.retry.delay(i64::from(attempts) - 1);
            tracing::warn!(error = %message, max_attempts = max, retry_in = ?delay, "processing failed; the event will be taken again");
            let retry = tx.prepare_cached(&sql.mark_retry).await?;
            tx.execute(&retry, &[&id, &ttl_millis(delay), &message]).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Moves the row to the dead-letter table, recording `made` attempts and
    /// `error`, if it is still the claim `token`'s; returns whether it did.
    async fn dead_letter(
        &self,
        client: &(impl GenericClient + ?Sized),
        id: i64,
        token: i32,
        made: i32,
        error: &str,
    ) -> Result<bool, OutboxError> {
        let dead_letter = client.prepare_cached(&self.outbox.inner.sql.dead_letter).await?;
        let moved = client.execute(&dead_letter, &[&id, &token, &made, &error]).await? == 1;
        if !moved {
            tracing::info!("another worker took the row over; it was not dead-lettered by this one");
        }
        Ok(moved)
    }

    /// Processes events with `process` forever. Equivalent to
    /// [`run_until`](Self::run_until) with a shutdown that never comes.
    ///
    /// # Errors
    ///
    /// See [`run_until`](Self::run_until).
    pub async fn run<F>(&self, process: F) -> Result<(), OutboxError>
    where
        F: for<'c> Fn(&'c Transaction<'c>, KlikitEvent) -> BoxFuture<'c, Result<(), ProcessError>>,
    {
        self.run_until(process, std::future::pending()).await
    }

    /// Processes batch after batch until `shutdown` completes, waiting the
    /// [poll interval](Self::with_poll_interval) after an empty batch.
    ///
    /// A batch in progress when `shutdown` completes is finished first.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] or [`OutboxError::Pool`] if the **first**
    /// batch fails (a missing table, no connection at start-up: a
    /// configuration problem). Later
    /// failures are logged and retried after the poll interval; their rows
    /// are taken again when their lease ends.
    pub async fn run_until<F, S>(&self, process: F, shutdown: S) -> Result<(), OutboxError>
    where
        F: for<'c> Fn(&'c Transaction<'c>, KlikitEvent) -> BoxFuture<'c, Result<(), ProcessError>>,
        S: Future<Output = ()>,
    {
        let table = &self.outbox.inner.table;
        let mut shutdown = pin!(shutdown);
        let mut first = true;
        tracing::info!(%table, "klikit outbox worker started");
        loop {
            let wait = match self.process_batch(&process).await {
                Ok(taken) => {
                    first = false;
                    if taken > 0 { None } else { Some(self.poll_interval) }
                }
                Err(error) if first => return Err(error),
                Err(error) => {
                    tracing::warn!(%error, %table, "outbox batch failed; retrying");
                    Some(self.poll_interval)
                }
            };
            let pause = tokio::time::sleep(wait.unwrap_or(Duration::ZERO));
            tokio::select! {
                biased;
                () = &mut shutdown => {
                    tracing::info!(%table, "klikit outbox worker stopped");
                    return Ok(());
                }
                () = pause => {}
            }
        }
    }
}

/// The message of a caught panic.
fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "(the panic's payload is not a string)".to_owned()
    }
}

impl fmt::Debug for OutboxWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxWorker")
            .field("table", &self.outbox.table())
            .field("batch", &self.batch)
            .field("poll_interval", &self.poll_interval)
            .field("max_attempts", &self.max_attempts)
            .field("lease", &self.lease)
            .field("retry", &self.retry)
            .finish()
    }
}
