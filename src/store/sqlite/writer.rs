//! The writer thread of [`SqliteStore`](super::SqliteStore): one OS thread
//! owning one connection, running queued dedup operations in group commits.

use std::{
    path::PathBuf,
    sync::{Arc, mpsc},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::{Error, Statements};
use crate::{
    EventId,
    store::{BodyDigest, Claim, claim_answer},
};

/// How many times a claim starts over when other processes change its row
/// between its statements (see `DedupOp::claim`); inside the writer's
/// transactions it never does.
const CLAIM_ATTEMPTS: usize = 5;

/// The most dedup operations one transaction runs.
pub(super) const MAX_BATCH: usize = 256;

/// Milliseconds since the unix epoch by this process's clock.
pub(super) fn now_millis() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// Work for the writer thread.
pub(super) enum Message {
    /// A claim, completion or release: grouped with the others queued.
    Dedup(DedupOp),
    /// Anything else (migrations, a cleanup batch): run on its own, between
    /// groups.
    Task(Task),
    /// Stop after the work queued before it; reply once the connection is
    /// closed.
    Stop(oneshot::Sender<()>),
}

/// A closure run on the writer's connection, outside any group.
pub(super) type Task = Box<dyn FnOnce(&mut Connection) + Send>;

/// One claim, completion or release, with the channel for its answer.
pub(super) struct DedupOp {
    pub(super) sql: Arc<Statements>,
    pub(super) event_id: EventId,
    pub(super) token: [u8; 16],
    pub(super) kind: Kind,
}

/// What a [`DedupOp`] does, and where its answer goes.
pub(super) enum Kind {
    Claim {
        ttl_ms: i64,
        reply: oneshot::Sender<Result<Claim, Error>>,
    },
    Complete {
        retain_ms: i64,
        digest: [u8; BodyDigest::LEN],
        reply: oneshot::Sender<Result<bool, Error>>,
    },
    Release {
        reply: oneshot::Sender<Result<bool, Error>>,
    },
}

/// The answer of one [`DedupOp`] before it is sent.
enum Answer {
    Claim(Claim),
    Changed(bool),
}

impl DedupOp {
    /// Runs the operation's one statement on `conn` (inside the group's
    /// transaction, or alone).
    fn execute(&self, conn: &Connection) -> rusqlite::Result<Answer> {
        let event_id = self.event_id.as_str();
        let token = &self.token[..];
        match &self.kind {
            Kind::Claim { ttl_ms, .. } => Ok(Answer::Claim(self.claim(conn, *ttl_ms)?)),
            Kind::Complete { retain_ms, digest, .. } => {
                let now = now_millis();
                let mut statement = conn.prepare_cached(&self.sql.complete)?;
                let changed = statement.execute(params![event_id, token, now, retain_ms, &digest[..]])?;
                Ok(Answer::Changed(changed == 1))
            }
            Kind::Release { .. } => {
                let mut statement = conn.prepare_cached(&self.sql.release)?;
                let changed = statement.execute(params![event_id, token])?;
                Ok(Answer::Changed(changed == 1))
            }
        }
    }

    /// A claim in up to three statements, each atomic on its own, so that
    /// the claim is atomic with or without a transaction around it (a
    /// claim alone runs in autocommit; other processes may write between
    /// two statements): insert the id if it is new; else read its row and
    /// answer from it; else, if the row expired, take it over with an update
    /// that checks the expiry again. A row deleted or taken over by another
    /// process between two statements starts the claim over, at most
    /// [`CLAIM_ATTEMPTS`] times.
    fn claim(&self, conn: &Connection, ttl_ms: i64) -> rusqlite::Result<Claim> {
        let (event_id, token) = (self.event_id.as_str(), &self.token[..]);
        for _ in 0..CLAIM_ATTEMPTS {
            let now = now_millis();
            let mut insert = conn.prepare_cached(&self.sql.claim_insert)?;
            if insert.execute(params![event_id, token, now, ttl_ms])? == 1 {
                return Ok(Claim::New);
            }
            let mut read = conn.prepare_cached(&self.sql.claim_read)?;
            let row = read
                .query_row(params![event_id], |row| {
                    let ours = row.get_ref(0)?.as_blob()? == token;
                    let done: bool = row.get(1)?;
                    let expires_at: i64 = row.get(2)?;
                    let answer = claim_answer(
                        ours,
                        done,
                        expires_at.saturating_sub(now),
                        row.get_ref(3)?.as_blob_or_null()?,
                    );
                    Ok((expires_at, answer))
                })
                .optional()?;
            match row {
                // Deleted since the insert (released, or cleaned up).
                None => continue,
                Some((expires_at, _)) if expires_at <= now => {
                    let mut take = conn.prepare_cached(&self.sql.claim_take)?;
                    if take.execute(params![event_id, token, now, ttl_ms])? == 1 {
                        return Ok(Claim::New);
                    }
                    // Another process took it over first: read it again.
                }
                Some((_, answer)) => return Ok(answer),
            }
        }
        Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            Some(format!(
                "the claim's row changed under other processes' writes {CLAIM_ATTEMPTS} times in a row"
            )),
        ))
    }

    /// Sends `answer` to the caller (who may have stopped waiting).
    fn reply(self, answer: Result<Answer, Error>) {
        match self.kind {
            Kind::Claim { reply, .. } => {
                let _ = reply.send(answer.and_then(|answer| match answer {
                    Answer::Claim(claim) => Ok(claim),
                    Answer::Changed(_) => Err(Error::WrongAnswer),
                }));
            }
            Kind::Complete { reply, .. } | Kind::Release { reply } => {
                let _ = reply.send(answer.and_then(|answer| match answer {
                    Answer::Changed(changed) => Ok(changed),
                    Answer::Claim(_) => Err(Error::WrongAnswer),
                }));
            }
        }
    }
}

/// Where the writer's connection goes.
#[derive(Debug, Clone)]
pub(super) enum Location {
    File(PathBuf),
    Memory,
}

/// Opens the connection with the store's settings.
pub(super) fn open_connection(location: &Location, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = match location {
        Location::File(path) => Connection::open_with_flags(path, flags)?,
        Location::Memory => Connection::open_in_memory_with_flags(flags)?,
    };
    // First, so that the statements below wait for other processes too.
    conn.busy_timeout(busy_timeout)?;
    // Returns the mode: "wal", or "memory" for an in-memory database.
    let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    if BACKGROUND_CHECKPOINTS && matches!(location, Location::File(_)) {
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)?;
    }
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Puts the calling thread (the writer or the checkpoint thread) under
/// Linux's `SCHED_BATCH` policy; elsewhere it does nothing.
///
/// Why: a queued operation wakes the writer. Under the default policy the
/// woken writer preempts the thread that queued it, so on a busy core the
/// two take turns per operation: a group holds one or two operations and
/// every delivery pays two context switches. A `SCHED_BATCH` thread does
/// not preempt on wake-up; it runs when the submitting thread blocks or its
/// time slice ends, and then finds all that was queued meanwhile in one
/// group.
///
/// Measured with the reference receiver on one core (`examples/load.rs`,
/// 32 connections, the same binary with and without the policy, set from
/// outside on these two threads only with `chrt -b -p 0 <thread id>`, five
/// runs each): 25.3–31.2k requests/s at 31.6–38.3 µs of CPU per delivery,
/// against 22.0–24.5k at 40.2–44.9 µs; in one pair of runs the writer
/// switched context 5.6k times in 3 s against 28.5k. On a machine with an
/// idle core for the writer nothing changes.
///
/// Only the policy changes: the thread keeps the nice value it started
/// with (that of the thread that opened the store). Where the policy cannot
/// be set (no `/proc`, a sandbox that forbids `sched_setscheduler`), the
/// thread keeps the default policy and a `DEBUG` line says so. There is no
/// switch to keep the default policy on Linux: under it the writer preempts
/// the threads that feed it, which costs more than it saves wherever they
/// share a core.
pub(super) fn batch_scheduling() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            NormalThreadSchedulePolicy, ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy,
            unix::{set_thread_priority_and_policy, thread_native_id},
        };
        let policy = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch);
        // thread-priority sets the policy, then a nice value mapped from its
        // 0-99 scale: pick the value it maps to the nice value the thread
        // has now (the process's), so that only the policy changes.
        let Some(nice) = current_nice() else {
            tracing::debug!("SQLite dedup store: no SCHED_BATCH for its thread (its nice value is unreadable)");
            return;
        };
        let keep = (0..=99u8)
            .filter_map(|value| ThreadPriorityValue::try_from(value).ok())
            .map(ThreadPriority::Crossplatform)
            .find(|priority| priority.to_posix(policy).is_ok_and(|mapped| mapped == nice));
        let Some(keep) = keep else {
            tracing::debug!(
                nice,
                "SQLite dedup store: no SCHED_BATCH for its thread (its nice value has no equivalent)"
            );
            return;
        };
        if let Err(error) = set_thread_priority_and_policy(thread_native_id(), keep, policy) {
            tracing::debug!(?error, "SQLite dedup store: could not set SCHED_BATCH on its thread");
        }
    }
}

/// The calling thread's nice value, from `/proc/thread-self/stat` (field
/// 19, counted from 1; the fields after the parenthesised name start at 3).
#[cfg(target_os = "linux")]
fn current_nice() -> Option<i32> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    let fields = stat.get(stat.rfind(')')? + 1..)?;
    fields.split_whitespace().nth(16)?.parse().ok()
}

/// Whether a thread of its own checkpoints the WAL (see the store's docs).
pub(super) const BACKGROUND_CHECKPOINTS: bool = true;

/// How long after a commit the checkpoint thread copies the WAL back into
/// the database (the commits made meanwhile go in the same checkpoint). An
/// idle store makes no checkpoints.
///
/// Shorter periods make smaller checkpoints, and a checkpoint's work on a
/// core shared with the receiver is what delays the slowest deliveries:
/// with the reference receiver on one core (`examples/load.rs`, 32
/// connections, three rounds each, `benches/results/2026-11-30-profile-layer-vs-twin`,
/// `runs/ab11.txt` and `ab12.txt`) the p99 was 1.64–1.91 ms at 100 ms,
/// 1.15–1.98 ms at 20 ms, 1.12–1.35 ms at 10 ms and 1.18–1.48 ms at 5 ms,
/// against 0.76–0.95 ms for `MemoryStore` in the same rounds; requests/s
/// fell slightly as the period shrank (more checkpoints, each a sync).
pub(super) const CHECKPOINT_PERIOD: Duration = Duration::from_millis(10);

/// The WAL size, in pages, at which the writer checkpoints itself after a
/// commit: only when the checkpoint thread never catches up completely
/// (each of its checkpoints overtaken by a commit), so that the WAL can
/// restart from its beginning.
pub(super) const WRITER_CHECKPOINT_PAGES: u32 = 8192;

/// Opens the checkpoint thread's connection: no group commit runs on it.
pub(super) fn open_checkpointer(location: &Location, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = match location {
        Location::File(path) => Connection::open_with_flags(path, flags)?,
        Location::Memory => Connection::open_in_memory_with_flags(flags)?,
    };
    conn.busy_timeout(busy_timeout)?;
    Ok(conn)
}

/// The checkpoint thread: [`CHECKPOINT_PERIOD`] after a commit (told by
/// the writer on `commits`), a `PASSIVE` checkpoint (it copies committed
/// pages from the WAL into the database file and syncs both, without
/// blocking the writer); until the writer thread ends.
pub(super) fn checkpoint(conn: Connection, commits: mpsc::Receiver<()>) {
    while commits.recv().is_ok() {
        let due = Instant::now() + CHECKPOINT_PERIOD;
        loop {
            let left = due.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // More commits meanwhile join this checkpoint.
            if let Err(mpsc::RecvTimeoutError::Disconnected) = commits.recv_timeout(left) {
                return;
            }
        }
        if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(%error, "SQLite dedup store: background checkpoint failed");
        }
    }
}

/// The writer thread's loop: block for the first message, drain what else
/// is queued (at most [`MAX_BATCH`] dedup operations), run the dedup
/// operations in one transaction, answer them after the commit; run tasks
/// alone, in queue order. Returns when every sender is gone or on
/// [`Message::Stop`].
///
/// After each group or task it tells the checkpoint thread on `commits`
/// (without waiting: one signal pending is enough; none when there is no
/// such thread).
pub(super) fn run(mut conn: Connection, receiver: mpsc::Receiver<Message>, commits: &mpsc::SyncSender<()>) {
    let mut group: Vec<DedupOp> = Vec::with_capacity(MAX_BATCH);
    // A message drained while collecting a group that must wait for it.
    let mut held: Option<Message> = None;
    loop {
        let message = match held.take() {
            Some(message) => message,
            None => match receiver.recv() {
                Ok(message) => message,
                Err(mpsc::RecvError) => return,
            },
        };
        match message {
            Message::Dedup(op) => {
                group.push(op);
                while group.len() < MAX_BATCH {
                    match receiver.try_recv() {
                        Ok(Message::Dedup(op)) => group.push(op),
                        Ok(other) => {
                            held = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                run_group(&mut conn, &mut group);
                let _ = commits.try_send(());
            }
            Message::Task(task) => {
                task(&mut conn);
                let _ = commits.try_send(());
            }
            Message::Stop(done) => {
                drop(conn);
                let _ = done.send(());
                return;
            }
        }
    }
}

/// Runs `group` in one `BEGIN IMMEDIATE ... COMMIT` and answers each
/// operation after the commit. If a statement fails, rolls back and runs
/// each operation in a transaction of its own, so that only the failing one
/// gets the error. If the transaction cannot begin or commit, every
/// operation gets that error. Leaves `group` empty.
fn run_group(conn: &mut Connection, group: &mut Vec<DedupOp>) {
    if group.len() == 1 {
        // Alone: its own statement is its transaction (autocommit).
        for op in group.drain(..) {
            let answer = op.execute(conn).map_err(Error::Sqlite);
            op.reply(answer);
        }
        return;
    }
    match run_together(conn, group) {
        Ok(answers) => {
            for (op, answer) in group.drain(..).zip(answers) {
                op.reply(Ok(answer));
            }
        }
        Err(Failure::Statement) => {
            if !conn.is_autocommit() {
                // The rollback on dropping the transaction failed: end it
                // before running the operations alone.
                let _ = conn.execute_batch("ROLLBACK");
            }
            for op in group.drain(..) {
                let answer = op.execute(conn).map_err(Error::Sqlite);
                op.reply(answer);
            }
        }
        Err(Failure::Transaction(error)) => {
            let error = Arc::new(error);
            for op in group.drain(..) {
                op.reply(Err(Error::Group(Arc::clone(&error))));
            }
        }
    }
}

/// Why [`run_together`] failed.
enum Failure {
    /// A statement failed; the transaction was rolled back.
    Statement,
    /// `BEGIN` or `COMMIT` failed; nothing is committed.
    Transaction(rusqlite::Error),
}

fn run_together(conn: &mut Connection, group: &[DedupOp]) -> Result<Vec<Answer>, Failure> {
    let transaction = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(Failure::Transaction)?;
    let mut answers = Vec::with_capacity(group.len());
    for op in group {
        match op.execute(&transaction) {
            Ok(answer) => answers.push(answer),
            // Dropping the transaction rolls it back.
            Err(_) => return Err(Failure::Statement),
        }
    }
    transaction.commit().map_err(Failure::Transaction)?;
    Ok(answers)
}
