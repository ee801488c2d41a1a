//! The full path, with crashing workers: signed deliveries -> layer
//! (PostgresStore) -> handler (enqueue + dedup completion in one transaction)
//! -> outbox -> worker processes that are SIGKILLed mid-row and restarted.
//!
//! The workers are child processes: this test binary run again with the
//! ignored test `crash::outbox_worker_process_entry`.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, routing::post};
use futures_util::StreamExt;
use klikit_handoff::postgres::{OutboxWorker, PostgresOutbox, ProcessError, receive};
use klikit_webhook::testing::WEBHOOK_PATH;
use tokio::sync::mpsc;

use super::{
    DUPLICATE, RECEIVED, client, common, execute, layer, order_body, pool_or_skip, query_rows, scalar, send,
    store_and_outbox, unique, with_cleanup,
};

const WORKER_ENV: &str = "KLIKIT_TEST_OUTBOX_WORKER";

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "WORKER {line}");
    let _ = out.flush();
}

/// A worker process: the entry point of the child processes of
/// `full_path_worker_killed_mid_batch_processes_every_event_once`. Without
/// its environment (a plain `cargo test -- --ignored`) it does nothing.
///
/// Its side effect is a row in the effects table, written through the
/// worker's transaction. That table has **no** unique key: an event
/// processed twice would show up as two rows. It prints `CALLED <id>` per
/// call (before the commit) and, on call number `hang_after`, `HANGING <id>`
/// and then waits forever, holding its row's lock and uncommitted effect.
#[tokio::test]
#[ignore = "child process of full_path_worker_killed_mid_batch_processes_every_event_once"]
async fn outbox_worker_process_entry() {
    let Ok(config) = std::env::var(WORKER_ENV) else {
        eprintln!("outbox_worker_process_entry: {WORKER_ENV} not set; nothing to do");
        return;
    };
    let parts: Vec<&str> = config.split('\n').collect();
    let [url, table, effects, hang_after] = parts[..] else {
        panic!("bad {WORKER_ENV}: {config:?}");
    };
    let hang_after: usize = hang_after.parse().expect("hang_after");
    let pool = common::pool(url, 2);
    let outbox = PostgresOutbox::new(pool).with_table(table).expect("table");
    let worker = OutboxWorker::new(&outbox)
        .with_batch_size(5)
        .with_poll_interval(Duration::from_millis(20))
        // The killed workers' rows are taken again this soon.
        .with_lease(Duration::from_secs(1));
    let insert = Arc::new(format!(
        r#"INSERT INTO "{effects}" (event_id, pid, body) VALUES ($1, $2, $3)"#
    ));
    let calls = Arc::new(AtomicUsize::new(0));
    let pid = i32::try_from(std::process::id()).expect("pid");
    say(&format!("STARTED {pid}"));
    let result = worker
        .run(|tx, event| {
            let (insert, calls) = (insert.clone(), calls.clone());
            Box::pin(async move {
                tx.execute(insert.as_str(), &[&event.id().as_str(), &pid, &event.body().as_ref()])
                    .await
                    .map_err(ProcessError::retry)?;
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                say(&format!("CALLED {}", event.id()));
                if n == hang_after {
                    // The worst moment to die: effect written, not committed.
                    say(&format!("HANGING {}", event.id()));
                    std::future::pending::<()>().await;
                }
                Ok(())
            })
        })
        .await;
    panic!("worker stopped: {result:?}");
}

/// A worker child process, killed (SIGKILL) and reaped when dropped.
struct WorkerProcess {
    child: Child,
}

impl WorkerProcess {
    fn spawn(number: usize, config: &str, lines: mpsc::UnboundedSender<(usize, String)>) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "crash::outbox_worker_process_entry",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(WORKER_ENV, config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn worker process");
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("WORKER ") {
                    let _ = lines.send((number, rest.to_owned()));
                }
            }
        });
        Self { child }
    }

    /// SIGKILL, then reap; asserts the process died of the signal.
    fn kill(&mut self) {
        use std::os::unix::process::ExitStatusExt;
        self.child.kill().expect("SIGKILL");
        let status = self.child.wait().expect("reap");
        assert_eq!(status.signal(), Some(9), "worker died of SIGKILL: {status:?}");
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Default)]
struct Ledger {
    calls: usize,
    called: BTreeMap<usize, Vec<String>>,
    hung: Option<String>,
    per_worker: BTreeMap<usize, usize>,
}

impl Ledger {
    fn record(&mut self, worker: usize, line: &str) {
        let (what, id) = line.split_once(' ').unwrap_or((line, ""));
        match what {
            "CALLED" => {
                self.calls += 1;
                self.called.entry(worker).or_default().push(id.to_owned());
                *self.per_worker.entry(worker).or_default() += 1;
            }
            "HANGING" => self.hung = Some(id.to_owned()),
            _ => {}
        }
    }
}

/// Reads worker lines into `ledger` until `until(ledger, worker)` holds.
async fn wait_for(
    lines: &mut mpsc::UnboundedReceiver<(usize, String)>,
    ledger: &mut Ledger,
    deadline: Instant,
    until: impl Fn(&Ledger, usize) -> bool,
) {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some((worker, line))) = tokio::time::timeout(left, lines.recv()).await else {
            panic!("timed out waiting for the workers; they said {:?}", ledger.per_worker);
        };
        ledger.record(worker, &line);
        if until(ledger, worker) {
            return;
        }
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_path_worker_killed_mid_batch_processes_every_event_once() {
    let test = "full_path_worker_killed_mid_batch_processes_every_event_once";
    let Some(pool) = pool_or_skip().await else {
        return;
    };
    let (dedup, table, effects) = (
        unique("klikit_dedup_t"),
        unique("klikit_outbox_t"),
        unique("klikit_effects_t"),
    );
    let (d, t, e) = (dedup.clone(), table.clone(), effects.clone());
    let db = pool.clone();
    with_cleanup(&pool, &[&dedup, &table, &effects], async move {
        const N: usize = 300;
        const HANG_AFTER: usize = 43;
        const KILL_SECOND_AFTER: usize = 82;
        let started = Instant::now();
        let (_store, outbox) = store_and_outbox(&db, &d, &t).await;
        execute(
            &db,
            &format!(
                r#"CREATE TABLE "{e}" (n bigserial PRIMARY KEY, event_id text NOT NULL, pid integer NOT NULL, body bytea NOT NULL)"#
            ),
        )
        .await;

        let app: Router = Router::new()
            .route(WEBHOOK_PATH, post(receive))
            .route_layer(layer(&outbox))
            .with_state(outbox.clone());
        let mut deliveries: Vec<usize> = (0..N).collect();
        deliveries.extend((0..N).filter(|i| i % 4 == 0)); // Klikit retries
        deliveries.extend((0..N).filter(|i| i % 6 == 0)); // and more
        // A fixed shuffle, so duplicates arrive both concurrently and later.
        deliveries.sort_by_key(|&i| (i * 7919) % 1009);
        let total_deliveries = deliveries.len();

        let (lines_tx, mut lines) = mpsc::unbounded_channel();
        let url = common::database_url();
        let worker_config = |hang_after: usize| format!("{url}\n{t}\n{e}\n{hang_after}");

        // Klikit: send every delivery, retrying each until it gets a 2xx.
        let sender = tokio::spawn(async move {
            let answers = futures_util::stream::iter(deliveries)
                .map(|i| {
                    let app = app.clone();
                    async move {
                        let id = format!("evt-{i:04}");
                        let body = order_body(i);
                        let mut tries = Vec::new();
                        loop {
                            let (status, text) = send(&app, &id, &body).await;
                            tries.push((status, text));
                            if status.is_success() || tries.len() >= 100 {
                                return tries;
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                })
                .buffer_unordered(16)
                .collect::<Vec<_>>()
                .await;
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for tries in &answers {
                for (status, text) in tries {
                    *counts.entry(format!("{} {text}", status.as_u16())).or_default() += 1;
                }
                assert!(
                    tries.last().is_some_and(|(s, _)| s.is_success()),
                    "a delivery never got a 2xx: {tries:?}"
                );
            }
            counts
        });

        let deadline = Instant::now() + Duration::from_secs(20);
        // Start worker 1 once enough is queued that it does not run dry
        // before it hangs.
        while outbox.pending().await.expect("pending") < 2 * HANG_AFTER as i64 {
            assert!(Instant::now() < deadline, "the receiver does not queue");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut first = WorkerProcess::spawn(1, &worker_config(HANG_AFTER), lines_tx.clone());
        let mut ledger = Ledger::default();
        // Worker 1 hangs mid-row: its effect written, not committed.
        wait_for(&mut lines, &mut ledger, deadline, |l, _| l.hung.is_some()).await;
        let hung = ledger.hung.clone().expect("hung id");
        let row_locked = format!(r#"SELECT 1 FROM "{t}" WHERE event_id = $1 FOR UPDATE NOWAIT"#);
        let locked = client(&db).await.query_opt(row_locked.as_str(), &[&hung]).await;
        assert!(locked.is_err(), "the hung worker holds its row's lock");
        first.kill();
        let hung_effects = scalar(&db, format!(r#"SELECT count(*) FROM "{e}" WHERE event_id = '{hung}'"#)).await;
        let hung_attempts = scalar(
            &db,
            format!(r#"SELECT attempts::bigint FROM "{t}" WHERE event_id = '{hung}' AND processed_at IS NULL"#),
        )
        .await;
        // Postgres ends the killed worker's backend (and so its transaction
        // and locks) when it notices the closed socket: poll briefly.
        let mut released = None;
        for _ in 0..100 {
            match client(&db).await.query_one(row_locked.as_str(), &[&hung]).await {
                Ok(row) => {
                    released = Some(row);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        assert!(released.is_some(), "the killed worker's locks are gone within 5 s");
        let committed = scalar(&db, format!(r#"SELECT count(*) FROM "{e}""#)).await;
        eprintln!(
            "{test}: worker 1 SIGKILLed after {HANG_AFTER} calls, hung on {hung} with its effect written: \
             {committed} effects committed, {hung_effects} of {hung}, which is pending with {hung_attempts} \
             attempt(s) counted"
        );
        assert_eq!(ledger.called[&1].len(), HANG_AFTER);
        assert_eq!(
            committed,
            (HANG_AFTER - 1) as i64,
            "each row before the hung one committed in its own transaction"
        );
        assert_eq!(hung_effects, 0, "the killed row's effect was rolled back");
        assert_eq!(hung_attempts, 1, "the killed row is pending, its attempt counted");

        // Worker 2: killed mid-stream, at no particular point of its loop.
        let mut second = WorkerProcess::spawn(2, &worker_config(0), lines_tx.clone());
        wait_for(&mut lines, &mut ledger, deadline, |l, w| {
            w == 2 && l.per_worker.get(&2) >= Some(&KILL_SECOND_AFTER)
        })
        .await;
        second.kill();
        let committed = scalar(&db, format!(r#"SELECT count(*) FROM "{e}""#)).await;
        eprintln!("{test}: worker 2 SIGKILLed after {KILL_SECOND_AFTER} calls; {committed} effects committed by then");

        // Workers 3 and 4, in parallel, finish the queue.
        let _third = WorkerProcess::spawn(3, &worker_config(0), lines_tx.clone());
        let _fourth = WorkerProcess::spawn(4, &worker_config(0), lines_tx.clone());
        let counts = sender.await.expect("sender");
        loop {
            while let Ok((worker, line)) = lines.try_recv() {
                ledger.record(worker, &line);
            }
            let pending = outbox.pending().await.expect("pending");
            let effects = scalar(&db, format!(r#"SELECT count(*) FROM "{e}""#)).await;
            if pending == 0 && effects >= N as i64 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not done in time: {pending} pending, {effects} effects"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Anything late (a row still committing) would show up here.
        tokio::time::sleep(Duration::from_millis(300)).await;
        while let Ok((worker, line)) = lines.try_recv() {
            ledger.record(worker, &line);
        }

        let per_event: Vec<(String, i64, Vec<u8>)> = query_rows(
            &db,
            &format!(
                r#"SELECT event_id, count(*), (array_agg(body))[1] FROM "{e}" GROUP BY event_id ORDER BY event_id"#
            ),
        )
        .await
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
        let by_pid: Vec<(i32, i64)> = query_rows(
            &db,
            &format!(r#"SELECT pid, count(*) FROM "{e}" GROUP BY pid ORDER BY pid"#),
        )
        .await
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
        let outbox_rows = scalar(&db, format!(r#"SELECT count(*) FROM "{t}""#)).await;
        let processed = scalar(&db, format!(r#"SELECT count(*) FROM "{t}" WHERE processed_at IS NOT NULL"#)).await;
        let done = scalar(&db, format!(r#"SELECT count(*) FROM "{d}" WHERE done"#)).await;
        let duplicates: usize = total_deliveries - N;
        eprintln!(
            "{test}: {total_deliveries} HTTP deliveries of {N} events -> answers {counts:?}; \
             outbox {outbox_rows} rows, {processed} processed; dedup {done} done; \
             {} worker calls {:?} (re-runs of rolled-back work: {}); effects {} rows for {} event ids, \
             committed per worker pid {by_pid:?}; {:.1?}",
            ledger.calls,
            ledger.per_worker,
            ledger.calls - N,
            per_event.iter().map(|(_, n, _)| n).sum::<i64>(),
            per_event.len(),
            started.elapsed(),
        );

        assert_eq!(counts.get(&format!("200 {RECEIVED}")), Some(&N), "each event queued once");
        assert_eq!(counts.get(&format!("200 {DUPLICATE}")), Some(&duplicates));
        assert_eq!(outbox_rows, N as i64, "one outbox row per event id");
        assert_eq!(processed, N as i64, "nothing left unprocessed");
        assert_eq!(done, N as i64, "every dedup claim done");
        assert_eq!(per_event.len(), N, "every event's effect exists");
        for (i, (id, n, body)) in per_event.iter().enumerate() {
            assert_eq!(id, &format!("evt-{i:04}"));
            assert_eq!(*n, 1, "{id}: effect exactly once");
            assert_eq!(body, order_body(i).as_bytes(), "{id}: the body as sent");
        }
        assert!(ledger.calls > N, "the killed rows were processed again");
    })
    .await;
}
