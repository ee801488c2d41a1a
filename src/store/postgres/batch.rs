//! Group commit for [`PostgresStore`](super::PostgresStore)'s hot path:
//! concurrent operations of one kind go to Postgres as one statement (see
//! "Operations" in the type docs).

use std::{
    collections::{HashSet, VecDeque},
    error::Error as StdError,
    fmt,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use deadpool_postgres::Pool;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_postgres::{
    Row,
    error::SqlState,
    types::{ToSql, Type},
};

use super::Statements;
use crate::store::{BodyDigest, BoxError, Claim, Lease, Result, StoreError, claim_answer, token_bytes};

/// The most operations one statement carries.
pub(super) const MAX_BATCH: usize = 256;

const CLAIM_TYPES: &[Type] = &[Type::TEXT_ARRAY, Type::BYTEA_ARRAY, Type::INT8_ARRAY];
const COMPLETE_TYPES: &[Type] = &[Type::TEXT_ARRAY, Type::BYTEA_ARRAY, Type::INT8_ARRAY, Type::BYTEA_ARRAY];
const RELEASE_TYPES: &[Type] = &[Type::TEXT_ARRAY, Type::BYTEA_ARRAY];

/// One queued operation: its lease, its parameters and where its answer goes.
pub(super) struct Item<P, R> {
    lease: Lease,
    params: P,
    reply: oneshot::Sender<Result<R>>,
}

pub(super) type ClaimItem = Item<i64, Claim>;
pub(super) type CompleteItem = Item<(BodyDigest, i64), bool>;
pub(super) type ReleaseItem = Item<(), bool>;

pub(super) enum Request {
    Claim(ClaimItem),
    Complete(CompleteItem),
    Release(ReleaseItem),
}

impl Request {
    pub(super) fn claim(lease: &Lease, ttl_ms: i64) -> (Self, oneshot::Receiver<Result<Claim>>) {
        let (reply, answer) = oneshot::channel();
        let item = Item {
            lease: lease.clone(),
            params: ttl_ms,
            reply,
        };
        (Self::Claim(item), answer)
    }

    pub(super) fn complete(
        lease: &Lease,
        digest: BodyDigest,
        retain_ms: i64,
    ) -> (Self, oneshot::Receiver<Result<bool>>) {
        let (reply, answer) = oneshot::channel();
        let item = Item {
            lease: lease.clone(),
            params: (digest, retain_ms),
            reply,
        };
        (Self::Complete(item), answer)
    }

    pub(super) fn release(lease: &Lease) -> (Self, oneshot::Receiver<Result<bool>>) {
        let (reply, answer) = oneshot::channel();
        let item = Item {
            lease: lease.clone(),
            params: (),
            reply,
        };
        (Self::Release(item), answer)
    }
}

/// The sending half of a store's batcher: the channel to its task, which is
/// spawned on first use (and again if the runtime it ran on shut down).
pub(super) struct Batcher {
    sender: Mutex<Option<mpsc::UnboundedSender<Request>>>,
    in_flight: usize,
    statements: Arc<AtomicU64>,
}

impl Batcher {
    pub(super) fn new(in_flight: usize) -> Self {
        Self {
            sender: Mutex::new(None),
            in_flight: in_flight.max(1),
            statements: Arc::new(AtomicU64::new(0)),
        }
    }

    pub(super) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// How many batch statements this batcher has sent.
    pub(super) fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    /// Queues `request`, starting the batcher task if there is none (first
    /// use) or it ended (its runtime shut down).
    pub(super) fn send(&self, pool: &Pool, sql: &Arc<Statements>, mut request: Request) -> Result<()> {
        let mut sender = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(live) = sender.as_ref() {
            match live.send(request) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(back)) => request = back,
            }
        }
        self.spawn(&mut sender, pool, sql, request)
    }

    fn spawn(
        &self,
        sender: &mut Option<mpsc::UnboundedSender<Request>>,
        pool: &Pool,
        sql: &Arc<Statements>,
        request: Request,
    ) -> Result<()> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| StoreError::backend("PostgresStore must be used on a tokio runtime"))?;
        let (live, queue) = mpsc::unbounded_channel();
        runtime.spawn(run(
            queue,
            pool.clone(),
            Arc::clone(sql),
            self.in_flight,
            Arc::clone(&self.statements),
        ));
        let sent = live.send(request);
        *sender = Some(live);
        sent.map_err(|_| stopped())
    }
}

/// The error of an operation whose batcher task ended before answering.
pub(super) fn stopped() -> StoreError {
    StoreError::backend("the PostgresStore batcher stopped before answering (its tokio runtime shut down?)")
}

/// A failed batch statement's error, shared by every operation in the batch.
#[derive(Debug, Clone)]
struct BatchError(Arc<BoxError>);

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl StdError for BatchError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source()
    }
}

impl BatchError {
    fn new(error: impl Into<BoxError>) -> Self {
        Self(Arc::new(error.into()))
    }
}

#[derive(Default)]
struct Queues {
    claims: VecDeque<ClaimItem>,
    completes: VecDeque<CompleteItem>,
    releases: VecDeque<ReleaseItem>,
}

impl Queues {
    fn push(&mut self, request: Request) {
        match request {
            Request::Claim(item) => self.claims.push_back(item),
            Request::Complete(item) => self.completes.push_back(item),
            Request::Release(item) => self.releases.push_back(item),
        }
    }

    fn is_empty(&self) -> bool {
        self.claims.is_empty() && self.completes.is_empty() && self.releases.is_empty()
    }

    fn len(&self) -> usize {
        self.claims.len() + self.completes.len() + self.releases.len()
    }
}

/// Takes up to [`MAX_BATCH`] items from the front of `queue`, each event id
/// at most once (Postgres cannot change a row twice in one statement; a
/// second item for an id waits for a later batch), sorted by event id.
fn take_batch<P, R>(queue: &mut VecDeque<Item<P, R>>) -> Vec<Item<P, R>> {
    let mut batch = Vec::with_capacity(queue.len().min(MAX_BATCH));
    let mut later = Vec::new();
    let mut ids = HashSet::new();
    while batch.len() < MAX_BATCH {
        let Some(item) = queue.pop_front() else { break };
        if ids.insert(item.lease.event_id().clone()) {
            batch.push(item);
        } else {
            later.push(item);
        }
    }
    for item in later.into_iter().rev() {
        queue.push_front(item);
    }
    batch.sort_unstable_by(|a, b| a.lease.event_id().as_str().cmp(b.lease.event_id().as_str()));
    batch
}

/// The batcher task: waits for an operation, then for a free statement
/// slot, then sends everything queued by then of one kind (the kinds take
/// turns) as one statement on its own task. It ends once every sender is
/// gone (the last store clone was dropped) and the queues are empty.
async fn run(
    mut queue: mpsc::UnboundedReceiver<Request>,
    pool: Pool,
    sql: Arc<Statements>,
    in_flight: usize,
    statements: Arc<AtomicU64>,
) {
    let slots = Arc::new(Semaphore::new(in_flight));
    let mut queues = Queues::default();
    let mut open = true;
    let mut turn = 0usize;
    loop {
        if queues.is_empty() {
            if !open {
                return;
            }
            match queue.recv().await {
                Some(request) => queues.push(request),
                None => return,
            }
        }
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        while open && queues.len() < 4 * MAX_BATCH {
            match queue.try_recv() {
                Ok(request) => queues.push(request),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        let (pool, sql, statements) = (pool.clone(), Arc::clone(&sql), Arc::clone(&statements));
        for _ in 0..3 {
            let kind = turn % 3;
            turn = turn.wrapping_add(1);
            match kind {
                0 if !queues.claims.is_empty() => {
                    let batch = take_batch(&mut queues.claims);
                    tokio::spawn(async move {
                        claims(&pool, &sql, &statements, batch).await;
                        drop(slot);
                    });
                    break;
                }
                1 if !queues.completes.is_empty() => {
                    let batch = take_batch(&mut queues.completes);
                    tokio::spawn(async move {
                        completes(&pool, &sql, &statements, batch).await;
                        drop(slot);
                    });
                    break;
                }
                2 if !queues.releases.is_empty() => {
                    let batch = take_batch(&mut queues.releases);
                    tokio::spawn(async move {
                        releases(&pool, &sql, &statements, batch).await;
                        drop(slot);
                    });
                    break;
                }
                _ => {}
            }
        }
    }
}

/// Whether a batch that failed with `error` is worth one more try: Postgres
/// chose it as a deadlock victim, or a serialization failure.
fn retryable(error: &tokio_postgres::Error) -> bool {
    error
        .code()
        .is_some_and(|code| *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE)
}

/// How a batch statement is planned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Planning {
    /// Prepared once per connection, its plan cached with it. For the
    /// claim: an `INSERT ... ON CONFLICT (event_id)`, which reaches existing
    /// rows only through the primary key (its conflict arbiter), so no
    /// cached plan can scan the table.
    Cached,
    /// Parsed and planned for each batch, with the batch's arrays and the
    /// table's current size (an unnamed statement: still one round trip).
    /// For `complete` and `release`, which join the batch's arrays with the
    /// table: Postgres estimates a table it has not analyzed yet (a new
    /// one, or one autovacuum has not reached) at a few hundred rows, and a
    /// plan prepared then is a hash join over a sequential scan, which the
    /// connection keeps for as long as the table's statistics do not
    /// change, whatever the table grows to: measured 3.5 ms per statement
    /// at 30,000 rows, growing with the table. Planned per batch, the
    /// lookups go through the primary key.
    PerBatch,
}

/// How the claim, complete and release batches are planned.
pub(super) const CLAIM_PLANNING: Planning = Planning::Cached;
/// See [`Planning::PerBatch`].
pub(super) const COMPLETE_PLANNING: Planning = Planning::PerBatch;
/// See [`Planning::PerBatch`].
pub(super) const RELEASE_PLANNING: Planning = Planning::PerBatch;

/// Runs one batch statement on a connection of the pool (retried once after
/// a deadlock or a serialization failure) and returns its rows.
async fn query(
    pool: &Pool,
    (sql, planning): (&str, Planning),
    types: &[Type],
    params: &[&(dyn ToSql + Sync)],
    statements: &AtomicU64,
) -> Result<Vec<Row>, BatchError> {
    let mut retried = false;
    loop {
        let client = pool.get().await.map_err(BatchError::new)?;
        let rows = match planning {
            Planning::Cached => {
                let statement = client.prepare_typed_cached(sql, types).await.map_err(BatchError::new)?;
                statements.fetch_add(1, Ordering::Relaxed);
                client.query(&statement, params).await
            }
            Planning::PerBatch => {
                debug_assert_eq!(params.len(), types.len(), "one type per parameter");
                statements.fetch_add(1, Ordering::Relaxed);
                let typed: Vec<(&(dyn ToSql + Sync), Type)> =
                    params.iter().copied().zip(types.iter().cloned()).collect();
                client.query_typed(sql, &typed).await
            }
        };
        match rows {
            Ok(rows) => return Ok(rows),
            Err(error) if !retried && retryable(&error) => retried = true,
            Err(error) => return Err(BatchError::new(error)),
        }
    }
}

fn fail_all<P, R>(batch: Vec<Item<P, R>>, error: &BatchError) {
    for item in batch {
        // A caller that stopped waiting (the layer's store timeout) dropped
        // its receiver; that does not concern the others.
        let _ = item.reply.send(Err(StoreError::backend(error.clone())));
    }
}

/// The batch's index of the item for `event_id` (the batch is sorted by id).
fn position<P, R>(batch: &[Item<P, R>], event_id: &str) -> Option<usize> {
    batch
        .binary_search_by(|item| item.lease.event_id().as_str().cmp(event_id))
        .ok()
}

/// A row of the batched claim: event id, stored token, done, milliseconds
/// left, digest.
#[allow(clippy::type_complexity)]
fn claim_row(row: &Row) -> Result<(&str, &[u8], bool, i64, Option<&[u8]>), tokio_postgres::Error> {
    Ok((
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
        row.try_get(4)?,
    ))
}

async fn claims(pool: &Pool, sql: &Statements, statements: &AtomicU64, batch: Vec<ClaimItem>) {
    let ids: Vec<&str> = batch.iter().map(|item| item.lease.event_id().as_str()).collect();
    let tokens: Vec<[u8; 16]> = batch.iter().map(|item| token_bytes(item.lease.token())).collect();
    let token_refs: Vec<&[u8]> = tokens.iter().map(|token| &token[..]).collect();
    let ttls: Vec<i64> = batch.iter().map(|item| item.params).collect();
    let rows = query(
        pool,
        (&sql.claim, CLAIM_PLANNING),
        CLAIM_TYPES,
        &[&ids, &token_refs, &ttls],
        statements,
    )
    .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(error) => return fail_all(batch, &error),
    };
    let mut answers: Vec<Option<Result<Claim>>> = batch.iter().map(|_| None).collect();
    for row in &rows {
        match claim_row(row) {
            Ok((event_id, token, done, left_ms, digest)) => {
                if let Some(index) = position(&batch, event_id) {
                    let ours = token == tokens[index];
                    answers[index] = Some(Ok(claim_answer(ours, done, left_ms, digest)));
                }
            }
            Err(error) => return fail_all(batch, &BatchError::new(error)),
        }
    }
    for (item, answer) in batch.into_iter().zip(answers) {
        let answer = answer.unwrap_or_else(|| {
            Err(StoreError::backend(
                "the batched claim returned no row for this event id",
            ))
        });
        let _ = item.reply.send(answer);
    }
}

/// Answers each item of an `UPDATE`/`DELETE` batch: whether the statement
/// returned its event id.
fn changed<P>(batch: Vec<Item<P, bool>>, rows: Result<Vec<Row>, BatchError>) {
    let rows = match rows {
        Ok(rows) => rows,
        Err(error) => return fail_all(batch, &error),
    };
    let mut hit = vec![false; batch.len()];
    for row in rows {
        match row.try_get::<_, &str>(0) {
            Ok(event_id) => {
                if let Some(index) = position(&batch, event_id) {
                    hit[index] = true;
                }
            }
            Err(error) => return fail_all(batch, &BatchError::new(error)),
        }
    }
    for (item, hit) in batch.into_iter().zip(hit) {
        let _ = item.reply.send(Ok(hit));
    }
}

async fn completes(pool: &Pool, sql: &Statements, statements: &AtomicU64, batch: Vec<CompleteItem>) {
    let ids: Vec<&str> = batch.iter().map(|item| item.lease.event_id().as_str()).collect();
    let tokens: Vec<[u8; 16]> = batch.iter().map(|item| token_bytes(item.lease.token())).collect();
    let token_refs: Vec<&[u8]> = tokens.iter().map(|token| &token[..]).collect();
    let retains: Vec<i64> = batch.iter().map(|item| item.params.1).collect();
    let digests: Vec<&[u8]> = batch.iter().map(|item| &item.params.0.as_bytes()[..]).collect();
    let rows = query(
        pool,
        (&sql.complete, COMPLETE_PLANNING),
        COMPLETE_TYPES,
        &[&ids, &token_refs, &retains, &digests],
        statements,
    )
    .await;
    drop((ids, token_refs, digests));
    changed(batch, rows);
}

async fn releases(pool: &Pool, sql: &Statements, statements: &AtomicU64, batch: Vec<ReleaseItem>) {
    let ids: Vec<&str> = batch.iter().map(|item| item.lease.event_id().as_str()).collect();
    let tokens: Vec<[u8; 16]> = batch.iter().map(|item| token_bytes(item.lease.token())).collect();
    let token_refs: Vec<&[u8]> = tokens.iter().map(|token| &token[..]).collect();
    let rows = query(
        pool,
        (&sql.release, RELEASE_PLANNING),
        RELEASE_TYPES,
        &[&ids, &token_refs],
        statements,
    )
    .await;
    drop((ids, token_refs));
    changed(batch, rows);
}
