//! A row the closure can never process must not stall the good rows behind
//! it: its attempts are counted even when its failure rolls back, panics or
//! never finishes, and after the last one it moves to the dead-letter table
//! `<outbox>_dead`, from where it can be replayed. (`with_cleanup` drops the
//! dead-letter tables.)

use std::{
    collections::BTreeMap,
    panic::AssertUnwindSafe,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{FutureExt, future::BoxFuture};
use klikit_handoff::postgres::deadpool_postgres::{Pool, Transaction};
use klikit_handoff::postgres::{OutboxError, OutboxWorker, PostgresOutbox, ProcessError};
use klikit_webhook::{EventId, KlikitEvent};

use super::{as_process, event, execute, order_body, pool_or_skip, query_rows, scalar, unique, with_cleanup};

const MAX_ATTEMPTS: u32 = 3;
const POISON: &str = "poison";

/// How many times the closure was called, per event id.
type Calls = Arc<Mutex<BTreeMap<String, u32>>>;

fn count_call(calls: &Calls, id: &str) -> u32 {
    let mut calls = calls.lock().expect("lock");
    let n = calls.entry(id.to_owned()).or_default();
    *n += 1;
    *n
}

fn calls_of(calls: &Calls, id: &str) -> u32 {
    calls.lock().expect("lock").get(id).copied().unwrap_or(0)
}

/// Fresh outbox (and so dead-letter) and effects tables; the effects table
/// has no unique key, so an event processed twice shows up as two rows.
async fn outbox_and_effects(db: &Pool, table: &str, effects: &str) -> PostgresOutbox {
    let outbox = PostgresOutbox::new(db.clone()).with_table(table).expect("table");
    outbox.migrate().await.expect("migrate");
    execute(db, &format!(r#"CREATE TABLE "{effects}" (event_id text NOT NULL)"#)).await;
    outbox
}

/// Writes the event's effect through the worker's transaction, counts the
/// call, then lets `fail` decide; returns the closure the worker wants.
fn process_with(
    effects: &str,
    calls: Calls,
    fail: impl Fn(&str, u32) -> Fail + Send + Sync + 'static,
) -> impl for<'c> Fn(&'c Transaction<'c>, KlikitEvent) -> BoxFuture<'c, Result<(), ProcessError>> {
    let insert = Arc::new(format!(r#"INSERT INTO "{effects}" (event_id) VALUES ($1)"#));
    let fail = Arc::new(fail);
    as_process(move |tx, event| {
        let (calls, insert, fail) = (calls.clone(), insert.clone(), fail.clone());
        Box::pin(async move {
            let id = event.id().as_str().to_owned();
            let n = count_call(&calls, &id);
            tx.execute(insert.as_str(), &[&id]).await.map_err(ProcessError::retry)?;
            match fail(&id, n) {
                Fail::No => Ok(()),
                Fail::SwallowsDbError => {
                    // A failed statement aborts the transaction; the closure
                    // ignores the error and reports success.
                    let swallowed = tx.execute("SELECT 1 / 0", &[]).await;
                    debug_assert!(swallowed.is_err());
                    Ok(())
                }
                Fail::Panics => panic!("{id}: the closure panics (attempt {n})"),
                Fail::ReturnsError => Err(ProcessError::retry(std::io::Error::other(format!(
                    "{id}: the POS rejects it (attempt {n})"
                )))),
                Fail::Hangs => std::future::pending().await,
            }
        })
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fail {
    No,
    SwallowsDbError,
    Panics,
    ReturnsError,
    Hangs,
}

/// Calls `process_batch` until nothing is pending or `deadline`, each call cut
/// off after `cut_off` (a worker that dies mid-row); returns what each call
/// gave.
async fn drive<F>(
    outbox: &PostgresOutbox,
    worker: &OutboxWorker,
    process: &F,
    cut_off: Duration,
    deadline: Instant,
) -> Vec<String>
where
    F: for<'c> Fn(&'c Transaction<'c>, KlikitEvent) -> BoxFuture<'c, Result<(), ProcessError>>,
{
    let mut rounds = Vec::new();
    while Instant::now() < deadline {
        let round = tokio::time::timeout(cut_off, AssertUnwindSafe(worker.process_batch(process)).catch_unwind());
        let (said, idle) = match round.await {
            Ok(Ok(Ok(taken))) => (format!("took {taken}"), taken == 0),
            Ok(Ok(Err(error))) => (format!("error: {error}"), false),
            Ok(Err(_)) => ("panicked".to_owned(), false),
            Err(_) => ("cut off".to_owned(), false),
        };
        rounds.push(said);
        if outbox.pending().await.expect("pending") == 0 {
            break;
        }
        if idle {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    rounds
}

/// `(event_id, number of effect rows)`, by event id.
async fn effects_per_event(db: &Pool, effects: &str) -> BTreeMap<String, i64> {
    query_rows(
        db,
        &format!(r#"SELECT event_id, count(*) FROM "{effects}" GROUP BY event_id"#),
    )
    .await
    .iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect()
}

/// `(event_id, attempts, last_error)` of every dead letter.
async fn dead_letters(db: &Pool, table: &str) -> Vec<(String, i32, String)> {
    query_rows(
        db,
        &format!(r#"SELECT event_id, attempts, last_error FROM "{table}_dead" ORDER BY event_id"#),
    )
    .await
    .iter()
    .map(|row| (row.get(0), row.get(1), row.get(2)))
    .collect()
}

/// The poison row is queued first, so it heads every batch; six good rows
/// follow, in batches of four.
async fn poison_row_among_good_rows(fail: Fail, error_says: &'static str) {
    let Some(pool) = pool_or_skip().await else {
        return;
    };
    let test = format!("poison_row_among_good_rows({fail:?})");
    let (table, effects) = (unique("klikit_outbox_t"), unique("klikit_effects_t"));
    let (t, e) = (table.clone(), effects.clone());
    let db = pool.clone();
    with_cleanup(&pool, &[&table, &effects], async move {
        let outbox = outbox_and_effects(&db, &t, &e).await;
        let good: Vec<String> = (0..6).map(|i| format!("good-{i}")).collect();
        outbox.enqueue(&event(POISON, order_body(0))).await.expect("enqueue");
        for (i, id) in good.iter().enumerate() {
            outbox.enqueue(&event(id, order_body(i + 1))).await.expect("enqueue");
        }
        let worker = OutboxWorker::new(&outbox)
            .with_batch_size(4)
            .with_max_attempts(MAX_ATTEMPTS)
            .with_retry_delay(Duration::ZERO, Duration::ZERO);
        let calls = Calls::default();
        let process = process_with(
            &e,
            calls.clone(),
            move |id, _| if id == POISON { fail } else { Fail::No },
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let rounds = drive(&outbox, &worker, &process, Duration::from_secs(5), deadline).await;

        let effects = effects_per_event(&db, &e).await;
        let poison_calls = calls_of(&calls, POISON);
        eprintln!(
            "{test}: {} calls of process_batch {rounds:?}; closure calls {:?}; effects {effects:?}",
            rounds.len(),
            calls.lock().expect("lock")
        );
        for id in &good {
            assert_eq!(effects.get(id), Some(&1), "{id}: a good row's effect exactly once");
        }
        assert_eq!(effects.get(POISON), None, "the poison row's effects were rolled back");
        assert_eq!(
            poison_calls, MAX_ATTEMPTS,
            "the poison row was tried max_attempts times"
        );
        assert!(
            rounds.iter().all(|r| r.starts_with("took")),
            "a poison row fails its own attempt, not the batch: {rounds:?}"
        );

        let dead = dead_letters(&db, &t).await;
        eprintln!("{test}: dead letters {dead:?}");
        assert_eq!(dead.len(), 1, "the poison row, dead-lettered: {dead:?}");
        let (id, attempts, last_error) = &dead[0];
        assert_eq!((id.as_str(), *attempts), (POISON, MAX_ATTEMPTS as i32));
        assert!(
            last_error.contains(error_says),
            "last error {last_error:?} says {error_says:?}"
        );
        let processed = scalar(
            &db,
            format!(r#"SELECT count(*) FROM "{t}" WHERE processed_at IS NOT NULL AND event_id LIKE 'good-%'"#),
        )
        .await;
        assert_eq!(processed, good.len() as i64, "every good row marked processed");
        let left = scalar(
            &db,
            format!(r#"SELECT count(*) FROM "{t}" WHERE event_id = '{POISON}'"#),
        )
        .await;
        assert_eq!(left, 0, "the dead letter left the outbox");
        assert_eq!(outbox.pending().await.expect("pending"), 0);
        // Nothing more to do: the dead letter is not taken again.
        assert_eq!(worker.process_batch(&process).await.expect("batch"), 0);
        assert_eq!(calls_of(&calls, POISON), MAX_ATTEMPTS);
    })
    .await;
}

#[tokio::test]
async fn poison_row_swallowing_a_db_error_is_dead_lettered_and_good_rows_processed_once() {
    poison_row_among_good_rows(Fail::SwallowsDbError, "aborted").await;
}

#[tokio::test]
async fn poison_row_panicking_is_dead_lettered_and_good_rows_processed_once() {
    poison_row_among_good_rows(Fail::Panics, "panicked").await;
}

#[tokio::test]
async fn poison_row_returning_errors_is_dead_lettered_and_good_rows_processed_once() {
    poison_row_among_good_rows(Fail::ReturnsError, "the POS rejects it").await;
}

/// The retry limit: `max_attempts` failures and the row is dead-lettered and
/// never tried again; fewer failures, then success, and it is processed once.
#[tokio::test]
async fn retry_limit_dead_letters_after_max_attempts_and_processes_a_late_success_once() {
    let Some(pool) = pool_or_skip().await else {
        return;
    };
    let test = "retry_limit_dead_letters_after_max_attempts_and_processes_a_late_success_once";
    let (table, effects) = (unique("klikit_outbox_t"), unique("klikit_effects_t"));
    let (t, e) = (table.clone(), effects.clone());
    let db = pool.clone();
    with_cleanup(&pool, &[&table, &effects], async move {
        let outbox = outbox_and_effects(&db, &t, &e).await;
        for (i, id) in ["doomed", "late", "good"].iter().enumerate() {
            outbox.enqueue(&event(id, order_body(i))).await.expect("enqueue");
        }
        let worker = OutboxWorker::new(&outbox)
            .with_max_attempts(MAX_ATTEMPTS)
            .with_retry_delay(Duration::ZERO, Duration::ZERO);
        let calls = Calls::default();
        let process = process_with(&e, calls.clone(), |id, n| match id {
            "doomed" => Fail::ReturnsError,
            "late" if n < MAX_ATTEMPTS => Fail::ReturnsError,
            _ => Fail::No,
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let rounds = drive(&outbox, &worker, &process, Duration::from_secs(5), deadline).await;
        // More rounds find nothing to do: a dead letter is never taken again.
        for _ in 0..3 {
            assert_eq!(worker.process_batch(&process).await.expect("batch"), 0);
        }

        let effects = effects_per_event(&db, &e).await;
        let dead = dead_letters(&db, &t).await;
        let calls = calls.lock().expect("lock").clone();
        eprintln!("{test}: rounds {rounds:?}; calls {calls:?}; effects {effects:?}; dead {dead:?}");
        assert_eq!(
            calls.get("doomed"),
            Some(&MAX_ATTEMPTS),
            "tried max_attempts times, no more"
        );
        assert_eq!(
            calls.get("late"),
            Some(&MAX_ATTEMPTS),
            "failed max_attempts - 1 times, then succeeded"
        );
        assert_eq!(calls.get("good"), Some(&1));
        assert_eq!(effects.get("late"), Some(&1), "the late success, processed once");
        assert_eq!(effects.get("good"), Some(&1));
        assert_eq!(effects.get("doomed"), None);
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!((dead[0].0.as_str(), dead[0].1), ("doomed", MAX_ATTEMPTS as i32));
        assert!(
            dead[0].2.contains("attempt 3"),
            "the last attempt's error: {:?}",
            dead[0].2
        );
        let late: (i32, bool) = query_rows(
            &db,
            &format!(r#"SELECT attempts, processed_at IS NOT NULL FROM "{t}" WHERE event_id = 'late'"#),
        )
        .await
        .first()
        .map(|row| (row.get(0), row.get(1)))
        .expect("late row");
        assert_eq!(late, (MAX_ATTEMPTS as i32, true), "three attempts counted, processed");
    })
    .await;
}

/// An attempt that never finishes (the worker dies or is cut off mid-row, so
/// its transaction never commits) still counts: after `max_attempts` of them
/// the row is dead-lettered without its closure running again, and the good
/// row queued behind it is processed meanwhile.
#[tokio::test]
async fn attempts_that_never_finish_count_towards_the_limit() {
    let Some(pool) = pool_or_skip().await else {
        return;
    };
    let test = "attempts_that_never_finish_count_towards_the_limit";
    let (table, effects) = (unique("klikit_outbox_t"), unique("klikit_effects_t"));
    let (t, e) = (table.clone(), effects.clone());
    let db = pool.clone();
    with_cleanup(&pool, &[&table, &effects], async move {
        let outbox = outbox_and_effects(&db, &t, &e).await;
        outbox.enqueue(&event("hangs", order_body(0))).await.expect("enqueue");
        outbox.enqueue(&event("good", order_body(1))).await.expect("enqueue");
        // Each cut-off attempt's row waits out its lease, and meanwhile the
        // row behind it is taken.
        let worker = OutboxWorker::new(&outbox)
            .with_lease(Duration::from_millis(500))
            .with_max_attempts(MAX_ATTEMPTS)
            .with_retry_delay(Duration::ZERO, Duration::ZERO);
        let calls = Calls::default();
        let process = process_with(
            &e,
            calls.clone(),
            |id, _| if id == "hangs" { Fail::Hangs } else { Fail::No },
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let rounds = drive(&outbox, &worker, &process, Duration::from_millis(200), deadline).await;

        let effects = effects_per_event(&db, &e).await;
        let calls = calls.lock().expect("lock").clone();
        eprintln!("{test}: rounds {rounds:?}; calls {calls:?}; effects {effects:?}");
        assert_eq!(effects.get("good"), Some(&1), "the good row behind it, processed once");
        assert_eq!(
            calls.get("hangs"),
            Some(&MAX_ATTEMPTS),
            "cut off max_attempts times, not run again"
        );
        let dead = dead_letters(&db, &t).await;
        eprintln!("{test}: dead letters {dead:?}");
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!((dead[0].0.as_str(), dead[0].1), ("hangs", MAX_ATTEMPTS as i32));
        assert!(dead[0].2.contains("did not finish"), "{:?}", dead[0].2);
        assert_eq!(effects.get("hangs"), None);
    })
    .await;
}

/// A dead letter replayed (once what failed it is fixed) is queued again with
/// a fresh attempt count and processed once; there is nothing left to replay
/// after that, and a replay never overwrites a row the outbox holds.
#[tokio::test]
async fn replayed_dead_letter_is_processed_once() {
    let Some(pool) = pool_or_skip().await else {
        return;
    };
    let test = "replayed_dead_letter_is_processed_once";
    let (table, effects) = (unique("klikit_outbox_t"), unique("klikit_effects_t"));
    let (t, e) = (table.clone(), effects.clone());
    let db = pool.clone();
    with_cleanup(&pool, &[&table, &effects], async move {
        let outbox = outbox_and_effects(&db, &t, &e).await;
        outbox.enqueue(&event("broken", order_body(0))).await.expect("enqueue");
        outbox.enqueue(&event("other", order_body(1))).await.expect("enqueue");
        let worker = OutboxWorker::new(&outbox)
            .with_max_attempts(2)
            .with_retry_delay(Duration::ZERO, Duration::ZERO);
        let calls = Calls::default();
        let fixed = Arc::new(AtomicBool::new(false));
        let is_fixed = fixed.clone();
        let process = process_with(&e, calls.clone(), move |id, _| {
            if id == "broken" && !is_fixed.load(Ordering::SeqCst) {
                Fail::ReturnsError
            } else {
                Fail::No
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        drive(&outbox, &worker, &process, Duration::from_secs(5), deadline).await;
        let dead = dead_letters(&db, &t).await;
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!((dead[0].0.as_str(), dead[0].1), ("broken", 2));
        let enqueued_at = format!(r#"SELECT (extract(epoch FROM enqueued_at) * 1e6)::bigint FROM "{t}_dead""#);
        let dead_enqueued_at = scalar(&db, enqueued_at).await;
        assert!(
            !outbox.enqueue(&event("broken", order_body(0))).await.expect("enqueue"),
            "a redelivery of a dead letter is not queued"
        );

        fixed.store(true, Ordering::SeqCst);
        let broken: EventId = "broken".parse().expect("id");
        assert!(outbox.replay_dead_letter(&broken).await.expect("replay"));
        assert!(
            dead_letters(&db, &t).await.is_empty(),
            "replayed: no longer a dead letter"
        );
        let row: (i32, i64, bool) = query_rows(
            &db,
            &format!(
                r#"SELECT attempts, (extract(epoch FROM enqueued_at) * 1e6)::bigint, processed_at IS NULL
               FROM "{t}" WHERE event_id = 'broken'"#
            ),
        )
        .await
        .first()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .expect("replayed row");
        assert_eq!(
            row,
            (0, dead_enqueued_at, true),
            "fresh attempts, the original enqueued_at, pending"
        );
        assert!(
            !outbox.replay_dead_letter(&broken).await.expect("replay"),
            "nothing left to replay"
        );
        let never: EventId = "never-dead".parse().expect("id");
        assert!(!outbox.replay_dead_letter(&never).await.expect("replay"));
        let rounds = drive(&outbox, &worker, &process, Duration::from_secs(5), deadline).await;

        let effects = effects_per_event(&db, &e).await;
        let calls = calls.lock().expect("lock").clone();
        eprintln!("{test}: after the replay, rounds {rounds:?}; calls {calls:?}; effects {effects:?}");
        assert_eq!(effects.get("broken"), Some(&1), "the replayed event, processed once");
        assert_eq!(effects.get("other"), Some(&1));
        assert_eq!(
            calls.get("broken"),
            Some(&3),
            "two failed attempts, then the replay's one"
        );
        assert_eq!(outbox.pending().await.expect("pending"), 0);

        // A dead letter whose id the outbox holds (put there by hand) is not
        // replayed over that row.
        execute(
            &db,
            &format!(
                r#"INSERT INTO "{t}_dead" (event_id, id, event_type, body, enqueued_at, attempts, last_error)
               SELECT event_id, id, event_type, body, enqueued_at, 1, 'by hand' FROM "{t}" WHERE event_id = 'other'"#
            ),
        )
        .await;
        let other: EventId = "other".parse().expect("id");
        let conflict = outbox.replay_dead_letter(&other).await;
        eprintln!("{test}: replay over a queued row -> {conflict:?}");
        assert!(
            matches!(&conflict, Err(OutboxError::ReplayConflict { event_id }) if event_id == "other"),
            "{conflict:?}"
        );
        assert_eq!(dead_letters(&db, &t).await.len(), 1, "the dead letter stays");
    })
    .await;
}
