//! The processing side: [`OutboxWorker`] takes, processes and marks rows in one transaction.

use std::{fmt, future::Future, pin::pin, time::Duration};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use klikit_webhook::{EventId, EventType, KlikitEvent, store::ttl_millis};
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tracing::Instrument;

use super::{OutboxError, PostgresOutbox, ProcessError, outbox::query};
use crate::common::RetryBackoff;

/// Processes queued events from the outbox table.
///
/// Each [`process_batch`](Self::process_batch) is one transaction:
///
/// 1. take up to [batch size](Self::with_batch_size) pending rows, oldest
///    first, with `FOR UPDATE SKIP LOCKED` (rows another worker holds are
///    skipped, never waited for);
/// 2. for each row, in a savepoint, call your closure with the transaction's
///    connection and the rebuilt [`KlikitEvent`]:
///
///    | closure returned | the savepoint | the row |
///    |---|---|---|
///    | `Ok(())` | released (your writes stay) | `processed_at = now()` |
///    | [`ProcessError::retry`] | rolled back | `attempts + 1`, available again after a growing delay; given up (`failed_at`) after [max attempts](Self::with_max_attempts) |
///    | [`ProcessError::permanent`] | rolled back | `failed_at = now()`, never taken again |
///
/// 3. commit. A worker that dies, hangs up or panics before the commit
///    leaves every row of its batch pending and every write of the batch
///    undone; the next worker takes them.
///
/// Several workers (tasks or processes) may run at once. See the
/// [module docs](super) for why effects written through the connection happen
/// exactly once, and what that needs for effects elsewhere.
///
/// The closure has the signature
/// `for<'c> Fn(&'c mut PgConnection, KlikitEvent) -> BoxFuture<'c, Result<(), ProcessError>>`:
/// write it `|conn, event| Box::pin(async move { ... })`, or
/// `|conn, event| Box::pin(my_async_fn(conn, event))`. Pass it straight to
/// [`run`](Self::run) so that Rust infers that signature; a closure first
/// stored in a `let` needs it spelled out (through a generic helper function
/// with that bound).
///
/// The rebuilt event's [`secret_index`](KlikitEvent::secret_index) is 0.
#[derive(Clone)]
#[must_use]
pub struct OutboxWorker {
    outbox: PostgresOutbox,
    batch: i64,
    poll_interval: Duration,
    max_attempts: i32,
    retry: RetryBackoff,
}

impl OutboxWorker {
    /// The default number of rows per transaction: 10.
    pub const DEFAULT_BATCH: i64 = 10;
    /// The default wait after an empty batch (or a database error) before
    /// looking again: 500 ms.
    pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);
    /// The default number of failed attempts ([`ProcessError::retry`]) before
    /// an event is given up: 10.
    pub const DEFAULT_MAX_ATTEMPTS: i32 = 10;
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
            retry: RetryBackoff::default(),
        }
    }

    /// How many rows one transaction takes (default
    /// [`DEFAULT_BATCH`](Self::DEFAULT_BATCH), at least 1). A larger batch
    /// commits less often; its rows stay locked (and its effects invisible)
    /// until the whole batch is processed.
    pub fn with_batch_size(mut self, batch: usize) -> Self {
        self.batch = i64::try_from(batch.max(1)).unwrap_or(i64::MAX);
        self
    }

    /// How long [`run`](Self::run) waits after an empty batch (default
    /// [`DEFAULT_POLL_INTERVAL`](Self::DEFAULT_POLL_INTERVAL)).
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How many failed attempts an event gets before it is given up (default
    /// [`DEFAULT_MAX_ATTEMPTS`](Self::DEFAULT_MAX_ATTEMPTS), at least 1).
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = i32::try_from(attempts.max(1)).unwrap_or(i32::MAX);
        self
    }

    /// The delays after [`ProcessError::retry`]: `first` after the first
    /// failure, doubled after each further one, never more than `max`
    /// (defaults [`DEFAULT_RETRY_DELAY`](Self::DEFAULT_RETRY_DELAY) and
    /// [`DEFAULT_MAX_RETRY_DELAY`](Self::DEFAULT_MAX_RETRY_DELAY)).
    pub fn with_retry_delay(mut self, first: Duration, max: Duration) -> Self {
        self.retry = RetryBackoff::new(first, max);
        self
    }

    /// Processes one batch in one transaction (see the [type docs](Self))
    /// and returns how many rows it took (0: nothing pending).
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] if a statement or the commit failed; the
    /// transaction is rolled back and its rows are pending again.
    pub async fn process_batch<F>(&self, process: &F) -> Result<usize, OutboxError>
    where
        F: for<'c> Fn(&'c mut PgConnection, KlikitEvent) -> BoxFuture<'c, Result<(), ProcessError>>,
    {
        let sql = &self.outbox.inner.sql;
        let mut tx = self.outbox.pool.begin().await?;
        let rows: Vec<(i64, String, String, Vec<u8>, i32)> = sqlx::query_as(AssertSqlSafe(sql.take.as_str()))
            .bind(self.batch)
            .fetch_all(&mut *tx)
            .await?;
        let taken = rows.len();
        let mut processed = Vec::with_capacity(taken);
        for (id, event_id, event_type, body, attempts) in rows {
            let event = match EventId::new(&event_id) {
                Ok(event_id) => KlikitEvent::new(event_id, EventType::from_name(&event_type), Bytes::from(body)),
                Err(error) => {
                    tracing::error!(row = id, %error, "outbox row has an invalid event id; given up");
                    query(&sql.mark_failed)
                        .bind(id)
                        .bind(error.to_string())
                        .execute(&mut *tx)
                        .await?;
                    continue;
                }
            };
            let span = tracing::info_span!("klikit_outbox_worker", event_id = %event_id, row = id, attempts);
            if self
                .handle(&mut tx, id, attempts, event, process)
                .instrument(span)
                .await?
            {
                processed.push(id);
            }
        }
        if !processed.is_empty() {
            query(&sql.mark_processed).bind(processed).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(taken)
    }

    /// Runs `process` on one row in a savepoint and records the outcome;
    /// returns whether the row was processed.
    async fn handle<F>(
        &self,
        tx: &mut PgConnection,
        id: i64,
        attempts: i32,
        event: KlikitEvent,
        process: &F,
    ) -> Result<bool, OutboxError>
    where
        F: for<'c> Fn(&'c mut PgConnection, KlikitEvent) -> BoxFuture<'c, Result<(), ProcessError>>,
    {
        let sql = &self.outbox.inner.sql;
        let mut savepoint = Connection::begin(&mut *tx).await?;
        let outcome = process(&mut savepoint, event).await;
        let error = match outcome {
            Ok(()) => {
                savepoint.commit().await?;
                tracing::debug!("klikit event processed");
                return Ok(true);
            }
            Err(error) => {
                savepoint.rollback().await?;
                error
            }
        };
        if !error.is_retryable() || attempts.saturating_add(1) >= self.max_attempts {
            tracing::error!(%error, "processing failed; the event is given up (failed_at set)");
            query(&sql.mark_failed)
                .bind(id)
                .bind(error.to_string())
                .execute(&mut *tx)
                .await?;
        } else {
            let delay = self.retry.delay(i64::from(attempts));
            tracing::warn!(%error, retry_in = ?delay, "processing failed; the event will be taken again");
            query(&sql.mark_retry)
                .bind(id)
                .bind(error.to_string())
                .bind(ttl_millis(delay))
                .execute(&mut *tx)
                .await?;
        }
        Ok(false)
    }

    /// Processes events with `process` forever. Equivalent to
    /// [`run_until`](Self::run_until) with a shutdown that never comes.
    ///
    /// # Errors
    ///
    /// See [`run_until`](Self::run_until).
    pub async fn run<F>(&self, process: F) -> Result<(), OutboxError>
    where
        F: for<'c> Fn(&'c mut PgConnection, KlikitEvent) -> BoxFuture<'c, Result<(), ProcessError>>,
    {
        self.run_until(process, std::future::pending()).await
    }

    /// Processes batch after batch until `shutdown` completes, waiting the
    /// [poll interval](Self::with_poll_interval) after an empty batch.
    ///
    /// A batch in progress when `shutdown` completes is finished and
    /// committed first.
    ///
    /// # Errors
    ///
    /// [`OutboxError::Database`] if the **first** batch fails (a missing
    /// table, no connection at start-up: a configuration problem). Later
    /// failures are logged and retried after the poll interval; their rows
    /// are pending again.
    pub async fn run_until<F, S>(&self, process: F, shutdown: S) -> Result<(), OutboxError>
    where
        F: for<'c> Fn(&'c mut PgConnection, KlikitEvent) -> BoxFuture<'c, Result<(), ProcessError>>,
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

impl fmt::Debug for OutboxWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxWorker")
            .field("table", &self.outbox.table())
            .field("batch", &self.batch)
            .field("poll_interval", &self.poll_interval)
            .field("max_attempts", &self.max_attempts)
            .field("retry", &self.retry)
            .finish()
    }
}
