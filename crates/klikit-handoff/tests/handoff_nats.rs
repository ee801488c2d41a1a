//! The durable hand-off against a real NATS JetStream server.
//!
//! The server is `NATS_URL` (default `nats://127.0.0.1:4222`). Every test
//! makes its own randomly named stream, subject and consumer (and the crash
//! test a temporary directory) and deletes them at the end, whether the test passed or not. If the server
//! cannot be reached, a test fails when `CI` is set and otherwise prints
//! `SKIPPED: ...` to stderr and returns.
//!
//! The crash test runs its workers as child processes (this test binary run
//! again with the ignored test `worker_process_entry`) and kills them with
//! SIGKILL. Aborting a tokio task would not do: the task's NATS connection,
//! buffered acks and pulled messages would live on in the test process, and
//! `Drop` code would still run. A killed process loses all of that at once,
//! as a crashed or OOM-killed worker does.
#![cfg(feature = "nats")]

use std::{
    collections::{BTreeMap, HashSet},
    future::Future,
    hash::{BuildHasher, Hasher},
    io::{BufRead, BufReader, ErrorKind, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, Context};
use axum::{
    Router,
    body::{Body, Bytes},
    http::StatusCode,
    routing::post,
};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use klikit_handoff::nats::{JetStreamHandoff, JetStreamWorker, ProcessError, receive};
use klikit_webhook::{
    EventType, KlikitEvent, KlikitWebhookLayer, WebhookSecret,
    testing::{WEBHOOK_PATH, signed_request},
};
use tokio::sync::mpsc;
use tower::ServiceExt;

const SECRET: &str = "a-long-random-webhook-secret-for-nats-tests";

/// The JetStream context, or `None` (after a loud SKIPPED on stderr, which
/// the test harness does not capture) when the server cannot be reached and
/// `CI` is not set.
async fn jetstream_or_skip(test: &str) -> Option<Context> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let error = match tokio::time::timeout(Duration::from_secs(5), async_nats::connect(&url)).await {
        // A server without JetStream is not skipped: the tests then fail on
        // their first JetStream request.
        Ok(Ok(client)) => return Some(jetstream::new(client)),
        Ok(Err(error)) => error.to_string(),
        Err(_) => "timed out after 5 s".to_owned(),
    };
    if std::env::var_os("CI").is_some() {
        panic!("{test}: NATS at {url} is unreachable ({error}) and CI is set");
    }
    // Straight to the process's stderr: `eprintln!` would be captured.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED: {test}: NATS at {url} is unreachable ({error}); set NATS_URL or run `nats-server -js` ***\n"
    );
    None
}

/// A name no other test run uses.
fn unique(prefix: &str) -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!("{prefix}_{:016x}", hasher.finish())
}

/// Runs `body`, then deletes the streams and directories whatever happened,
/// then re-raises a panic of `body`.
async fn with_cleanup<F>(context: &Context, streams: &[&str], dirs: &[&Path], body: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let outcome = tokio::spawn(body).await;
    for stream in streams {
        if let Err(error) = context.delete_stream(stream).await {
            eprintln!("cleanup: deleting stream {stream}: {error}");
        }
    }
    for dir in dirs {
        if let Err(error) = std::fs::remove_dir_all(dir) {
            eprintln!("cleanup: deleting {}: {error}", dir.display());
        }
    }
    if let Err(error) = outcome {
        match error.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(error) => panic!("test body did not finish: {error}"),
        }
    }
}

fn order_body(i: usize) -> String {
    format!(
        r#"{{"brand_id":663,"branch_id":1062,"orders":[{{"id":{},"external_id":"ABC-{i}","status":5,"total":"84.50"}}]}}"#,
        7_000_000 + i
    )
}

fn receiver(handoff: &JetStreamHandoff) -> Router {
    let secret = WebhookSecret::new(SECRET).expect("valid secret");
    Router::new()
        .route(WEBHOOK_PATH, post(receive))
        .route_layer(KlikitWebhookLayer::new(secret))
        .with_state(handoff.clone())
}

async fn send(app: &Router, id: &str, body: &str) -> (StatusCode, Option<String>, String) {
    let request = signed_request::<Body>(SECRET, id, EventType::ORDER_STATUS_UPDATED, body.to_owned());
    let response = app.clone().oneshot(request).await.expect("infallible router");
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    let bytes = response.into_body().collect().await.expect("body").to_bytes();
    (status, retry_after, String::from_utf8_lossy(&bytes).into_owned())
}

async fn stream_messages(context: &Context, stream: &str) -> u64 {
    let stream = context.get_stream(stream).await.expect("stream exists");
    stream.get_info().await.expect("stream info").state.messages
}

#[tokio::test]
async fn publish_is_idempotent_on_event_id() {
    let Some(context) = jetstream_or_skip("publish_is_idempotent_on_event_id").await else {
        return;
    };
    let stream = unique("KLIKIT_TEST");
    let subject = unique("test.klikit").replace('_', ".");
    let handoff = JetStreamHandoff::new(context.clone(), stream.clone(), subject.clone());
    let ctx = context.clone();
    let name = stream.clone();
    with_cleanup(&context, &[&stream], &[], async move {
        handoff.ensure_stream().await.expect("stream created");
        handoff.ensure_stream().await.expect("ensure_stream is idempotent");
        let info = ctx
            .get_stream(&name)
            .await
            .expect("stream")
            .get_info()
            .await
            .expect("info");
        assert!(info.config.duplicate_window >= KlikitWebhookLayer::DEFAULT_RETENTION);

        let first = KlikitEvent::new(
            "evt-1".parse().expect("id"),
            EventType::OrderCreated,
            Bytes::from(order_body(1)),
        );
        // A retry of the same delivery, and a replay of the same id with a
        // re-serialised body: the broker keys on the id, not the bytes.
        let replay = KlikitEvent::new(
            "evt-1".parse().expect("id"),
            EventType::OrderCreated,
            Bytes::from(order_body(1).replace(':', ": ")),
        );
        let second = KlikitEvent::new(
            "evt-2".parse().expect("id"),
            EventType::OrderStatusUpdated,
            Bytes::from(order_body(2)),
        );
        handoff.publish(&first).await.expect("first publish");
        handoff.publish(&first).await.expect("a repeated publish succeeds");
        handoff.publish(&replay).await.expect("a replayed id succeeds");
        handoff.publish(&second).await.expect("another id");

        let messages = stream_messages(&ctx, &name).await;
        eprintln!(
            "publish_is_idempotent_on_event_id: 4 publishes (3 of evt-1, 1 of evt-2) -> {messages} stream messages"
        );
        assert_eq!(messages, 2, "one message per event id");

        let stored = ctx.get_stream(&name).await.expect("stream");
        let message = stored.get_raw_message(1).await.expect("message 1");
        assert_eq!(message.payload, first.body(), "the raw body, unchanged");
        assert_eq!(message.headers.get("Nats-Msg-Id").map(|v| v.as_str()), Some("evt-1"));
        assert_eq!(
            message.headers.get("x-klikit-event-id").map(|v| v.as_str()),
            Some("evt-1")
        );
        assert_eq!(
            message.headers.get("x-klikit-event-type").map(|v| v.as_str()),
            Some(EventType::ORDER_CREATED)
        );
        assert!(message.headers.get("x-klikit-signature").is_none());
    })
    .await;
}

#[tokio::test]
async fn failed_publish_answers_503_and_releases_the_claim() {
    let Some(context) = jetstream_or_skip("failed_publish_answers_503_and_releases_the_claim").await else {
        return;
    };
    let stream = unique("KLIKIT_TEST");
    let subject = unique("test.klikit").replace('_', ".");
    let handoff =
        JetStreamHandoff::new(context.clone(), stream.clone(), subject).with_publish_timeout(Duration::from_secs(2));
    let ctx = context.clone();
    let name = stream.clone();
    with_cleanup(&context, &[&stream], &[], async move {
        let app = receiver(&handoff);
        let body = order_body(7);

        // No stream for the subject yet: the broker does not take the event.
        let (status, retry_after, text) = send(&app, "evt-7", &body).await;
        eprintln!("no stream: {status} retry-after={retry_after:?} {text}");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry_after.as_deref(), Some("5"));
        assert_eq!(text, r#"{"error":"event hand-off unavailable"}"#);

        // Klikit retries the same id once the broker is back: the 503
        // released the claim, so it is handed off now.
        handoff.ensure_stream().await.expect("stream created");
        let (status, _, text) = send(&app, "evt-7", &body).await;
        eprintln!("retry: {status} {text}");
        assert_eq!((status, text.as_str()), (StatusCode::OK, r#"{"status":"received"}"#));
        let (status, _, text) = send(&app, "evt-7", &body).await;
        assert_eq!(
            (status, text.as_str()),
            (StatusCode::OK, r#"{"status":"duplicate-ignored"}"#)
        );
        assert_eq!(stream_messages(&ctx, &name).await, 1);
    })
    .await;
}

#[tokio::test]
async fn worker_acks_naks_and_terminates() {
    let Some(context) = jetstream_or_skip("worker_acks_naks_and_terminates").await else {
        return;
    };
    let stream = unique("KLIKIT_TEST");
    let subject = unique("test.klikit").replace('_', ".");
    let consumer = unique("worker");
    let handoff = JetStreamHandoff::new(context.clone(), stream.clone(), subject.clone());
    let ctx = context.clone();
    let name = stream.clone();
    with_cleanup(&context, &[&stream], &[], async move {
        handoff.ensure_stream().await.expect("stream created");
        for (id, i) in [("ok", 1), ("flaky", 2), ("poison", 3)] {
            let event = KlikitEvent::new(
                id.parse().expect("id"),
                EventType::OrderCreated,
                Bytes::from(order_body(i)),
            );
            handoff.publish(&event).await.expect("publish");
        }
        // Not published by the hand-off: no Klikit headers.
        ctx.publish(subject.clone(), Bytes::from_static(b"{}"))
            .await
            .expect("publish")
            .await
            .expect("acked");

        let calls: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
        let worker = JetStreamWorker::new(&handoff, consumer.clone())
            .with_ack_wait(Duration::from_secs(2))
            .with_max_deliver(5)
            .with_retry_delay(Duration::from_millis(100), Duration::from_millis(400));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let seen = calls.clone();
        let run = tokio::spawn(async move {
            worker
                .run_until(
                    move |event: KlikitEvent| {
                        let seen = seen.clone();
                        async move {
                            let n = {
                                let mut calls = seen.lock().expect("lock");
                                let n = calls.entry(event.id().to_string()).or_insert(0);
                                *n += 1;
                                *n
                            };
                            match (event.id().as_str(), n) {
                                ("flaky", 1) => Err(ProcessError::retry(std::io::Error::other("database busy"))),
                                ("poison", _) => Err(ProcessError::permanent(std::io::Error::other("unparseable"))),
                                _ => Ok(()),
                            }
                        }
                    },
                    async {
                        let _ = stopped.await;
                    },
                )
                .await
        });

        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let info = ctx
                .get_stream(&name)
                .await
                .expect("stream")
                .consumer_info(&consumer)
                .await
                .expect("consumer info");
            let done = calls.lock().expect("lock").get("flaky") == Some(&2);
            if done && info.num_pending == 0 && info.num_ack_pending == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "worker did not settle: {info:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Longer than the nak delays: a nak'd poison message would be back.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let _ = stop.send(());
        run.await.expect("worker task").expect("worker stopped cleanly");

        let calls = calls.lock().expect("lock").clone();
        eprintln!("worker_acks_naks_and_terminates: handler calls per event id: {calls:?}");
        assert_eq!(calls.get("ok"), Some(&1), "acked once, never redelivered");
        assert_eq!(calls.get("flaky"), Some(&2), "nak'd once, then processed");
        assert_eq!(calls.get("poison"), Some(&1), "terminated, never redelivered");
        assert_eq!(calls.len(), 3, "the header-less message never reached the handler");
        let info = ctx
            .get_stream(&name)
            .await
            .expect("stream")
            .consumer_info(&consumer)
            .await
            .expect("consumer info");
        assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
    })
    .await;
}

// ---------------------------------------------------------------------------
// Full path: signed deliveries -> layer -> handler -> JetStream -> worker
// processes that are SIGKILLed mid-stream and restarted.
// ---------------------------------------------------------------------------

const WORKER_ENV: &str = "KLIKIT_TEST_WORKER";

/// A worker process: the entry point of the child processes of
/// `full_path_worker_killed_mid_stream_processes_every_event_once`. Without
/// its environment (a plain `cargo test -- --ignored`) it does nothing.
///
/// Its "processing" is a side effect and its idempotency record in one
/// atomic step: it creates the file `effects/<event id>` holding its pid,
/// written to a temporary file first and then hard-linked into place, which
/// fails if the name exists (create-if-absent, like an `INSERT` on a unique
/// key). "Already exists" means "already applied", which is success. It
/// prints one `WORKER ...` line per handler call.
#[tokio::test]
#[ignore = "child process of full_path_worker_killed_mid_stream_processes_every_event_once"]
async fn worker_process_entry() {
    let Ok(config) = std::env::var(WORKER_ENV) else {
        eprintln!("worker_process_entry: {WORKER_ENV} not set; nothing to do");
        return;
    };
    let parts: Vec<&str> = config.split('\n').collect();
    let [stream, subject, consumer, effects, hang_after] = parts[..] else {
        panic!("bad {WORKER_ENV}: {config:?}");
    };
    let effects = PathBuf::from(effects);
    let hang_after: usize = hang_after.parse().expect("hang_after");
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let context = jetstream::new(async_nats::connect(&url).await.expect("connect"));
    let handoff = JetStreamHandoff::new(context, stream, subject);
    let worker = JetStreamWorker::new(&handoff, consumer)
        .with_ack_wait(Duration::from_secs(2))
        .with_max_deliver(20)
        .with_retry_delay(Duration::from_millis(100), Duration::from_secs(1));
    let applied = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let pid = std::process::id();
    let say = |line: String| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "WORKER {line}");
        let _ = out.flush();
    };
    say(format!("STARTED {pid}"));
    let result = worker
        .run(|event: KlikitEvent| {
            let effects = effects.clone();
            let applied = applied.clone();
            async move {
                let key = event.id().as_str().to_owned();
                match apply_effect(&effects, &key, pid, event.body()) {
                    Ok(()) => {
                        let n = applied.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        say(format!("APPLIED {key}"));
                        if n == hang_after {
                            // The worst moment to die: effect applied, ack not sent.
                            say(format!("HANGING {key}"));
                            std::future::pending::<()>().await;
                        }
                        Ok(())
                    }
                    Err(error) if error.kind() == ErrorKind::AlreadyExists => {
                        say(format!("ALREADY {key}"));
                        Ok(())
                    }
                    Err(error) => Err(ProcessError::retry(error)),
                }
            }
        })
        .await;
    panic!("worker stopped: {result:?}");
}

/// Writes `effects/<key>` (the pid, then the body) if it does not exist, atomically.
fn apply_effect(effects: &Path, key: &str, pid: u32, body: &Bytes) -> std::io::Result<()> {
    let staging = effects.join(format!(".{key}.{pid}.tmp"));
    let mut content = format!("{pid}\n").into_bytes();
    content.extend_from_slice(body);
    std::fs::write(&staging, content)?;
    let linked = std::fs::hard_link(&staging, effects.join(key));
    std::fs::remove_file(&staging)?;
    linked
}

/// A worker child process, killed (SIGKILL) and reaped when dropped.
struct WorkerProcess {
    child: Child,
}

impl WorkerProcess {
    fn spawn(number: usize, config: &str, lines: mpsc::UnboundedSender<(usize, String)>) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "worker_process_entry",
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

/// What the workers reported, line by line.
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

#[derive(Default)]
struct Ledger {
    applied: Vec<String>,
    already: Vec<String>,
    hung: Option<String>,
    per_worker: BTreeMap<usize, usize>,
}

impl Ledger {
    fn record(&mut self, worker: usize, line: &str) {
        let (what, id) = line.split_once(' ').unwrap_or((line, ""));
        match what {
            "APPLIED" => self.applied.push(id.to_owned()),
            "ALREADY" => self.already.push(id.to_owned()),
            "HANGING" => self.hung = Some(id.to_owned()),
            _ => return,
        }
        if what != "HANGING" {
            *self.per_worker.entry(worker).or_default() += 1;
        }
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_path_worker_killed_mid_stream_processes_every_event_once() {
    let test = "full_path_worker_killed_mid_stream_processes_every_event_once";
    let Some(context) = jetstream_or_skip(test).await else {
        return;
    };
    let stream = unique("KLIKIT_TEST");
    let subject = unique("test.klikit").replace('_', ".");
    let consumer = unique("worker");
    let effects = std::env::temp_dir().join(unique("klikit_effects"));
    std::fs::create_dir(&effects).expect("effects directory");
    let handoff = JetStreamHandoff::new(context.clone(), stream.clone(), subject.clone());
    let ctx = context.clone();
    let (name, effects_dir) = (stream.clone(), effects.clone());
    with_cleanup(&context, &[&stream], &[&effects], async move {
        const N: usize = 300;
        const HANG_AFTER: usize = 40;
        const KILL_SECOND_AFTER: usize = 80;
        let started = Instant::now();
        handoff.ensure_stream().await.expect("stream created");

        // Two receiver replicas, each with its own in-memory dedup store (as
        // if nobody configured a shared one): only the broker sees both.
        let replica_a = receiver(&handoff);
        let replica_b = receiver(&handoff);
        let mut deliveries: Vec<(char, usize)> = (0..N).map(|i| ('A', i)).collect();
        deliveries.extend((0..N).filter(|i| i % 4 == 0).map(|i| ('A', i))); // Klikit retries
        deliveries.extend((0..N).filter(|i| i % 6 == 0).map(|i| ('B', i))); // another replica
        // A fixed shuffle, so retries arrive both concurrently and later.
        deliveries.sort_by_key(|&(replica, i)| (i * 7919 + usize::from(replica == 'B') * 31) % 1009);
        let total_deliveries = deliveries.len();

        let (lines_tx, mut lines) = mpsc::unbounded_channel();
        let worker_config =
            |hang_after: usize| format!("{name}\n{subject}\n{consumer}\n{}\n{hang_after}", effects_dir.display());
        let mut first = WorkerProcess::spawn(1, &worker_config(HANG_AFTER), lines_tx.clone());

        // Klikit: send every delivery, retrying each until it gets a 2xx.
        let sender = tokio::spawn(async move {
            let answers = futures_util::stream::iter(deliveries)
                .map(|(replica, i)| {
                    let app = if replica == 'A' {
                        replica_a.clone()
                    } else {
                        replica_b.clone()
                    };
                    async move {
                        let id = format!("evt-{i:04}");
                        let body = order_body(i);
                        let mut tries = Vec::new();
                        loop {
                            let (status, _, text) = send(&app, &id, &body).await;
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

        // Worker 1 applies HANG_AFTER effects, then hangs before the ack of
        // the last one: kill it there.
        let mut ledger = Ledger::default();
        let deadline = Instant::now() + Duration::from_secs(15);
        wait_for(&mut lines, &mut ledger, deadline, |l, _| l.hung.is_some()).await;
        first.kill();
        let hung = ledger.hung.clone().expect("hung id");
        let in_stream = stream_messages(&ctx, &name).await;
        eprintln!(
            "{test}: worker 1 SIGKILLed after applying {HANG_AFTER} effects, the last ({hung}) not acked; \
             {in_stream} of {N} events in the stream by then"
        );

        // Worker 2: killed mid-stream, at no particular point of its loop.
        let mut second = WorkerProcess::spawn(2, &worker_config(0), lines_tx.clone());
        wait_for(&mut lines, &mut ledger, deadline, |l, w| {
            w == 2 && l.per_worker.get(&2) >= Some(&KILL_SECOND_AFTER)
        })
        .await;
        second.kill();
        let in_stream = stream_messages(&ctx, &name).await;
        eprintln!("{test}: worker 2 SIGKILLed after {KILL_SECOND_AFTER} handler calls; {in_stream} of {N} events in the stream by then");

        // Worker 3 finishes the stream.
        let _third = WorkerProcess::spawn(3, &worker_config(0), lines_tx.clone());
        let counts = sender.await.expect("sender");
        let stream_handle = ctx.get_stream(&name).await.expect("stream");
        loop {
            while let Ok((worker, line)) = lines.try_recv() {
                ledger.record(worker, &line);
            }
            let info = stream_handle.consumer_info(&consumer).await.expect("consumer info");
            if ledger.applied.len() >= N && info.num_pending == 0 && info.num_ack_pending == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not done in time: {} applied, consumer {info:?}",
                ledger.applied.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Anything late (a redelivery still on its way) would show up here.
        tokio::time::sleep(Duration::from_millis(300)).await;
        while let Ok((worker, line)) = lines.try_recv() {
            ledger.record(worker, &line);
        }

        let info = stream_handle.consumer_info(&consumer).await.expect("consumer info");
        let messages = stream_messages(&ctx, &name).await;
        let mut keys: HashSet<String> = HashSet::new();
        let mut applied_by: BTreeMap<String, usize> = BTreeMap::new();
        for entry in std::fs::read_dir(&effects_dir).expect("effects directory") {
            let entry = entry.expect("directory entry");
            let key = entry.file_name().to_string_lossy().into_owned();
            if key.starts_with('.') {
                continue; // a staging file left by a killed worker: no effect
            }
            let content = std::fs::read(entry.path()).expect("effect");
            let (pid, body) = content.split_at(content.iter().position(|&b| b == b'\n').expect("pid line"));
            let i: usize = key.trim_start_matches("evt-").parse().expect("event number");
            assert_eq!(
                &body[1..],
                order_body(i).as_bytes(),
                "{key}: the worker got the body as sent"
            );
            *applied_by.entry(String::from_utf8_lossy(pid).into_owned()).or_default() += 1;
            keys.insert(key);
        }
        let expected: HashSet<String> = (0..N).map(|i| format!("evt-{i:04}")).collect();
        let distinct_applied: HashSet<&String> = ledger.applied.iter().collect();
        let handler_calls = ledger.applied.len() + ledger.already.len();
        eprintln!(
            "{test}: {total_deliveries} HTTP deliveries of {N} events -> answers {counts:?}; \
             stream holds {messages} messages; {handler_calls} handler calls by worker {:?}; \
             {} effects applied ({} distinct ids), {} redeliveries found the effect already applied ({:?}); \
             effects per worker pid {applied_by:?}; {:.1?}",
            ledger.per_worker,
            ledger.applied.len(),
            distinct_applied.len(),
            ledger.already.len(),
            ledger.already,
            started.elapsed(),
        );

        // The receivers: A handed off each event once; B handed off its
        // copies again; the broker stored each event id once.
        assert_eq!(counts.get(r#"200 {"status":"received"}"#), Some(&(N + N.div_ceil(6))));
        assert_eq!(
            counts.get(r#"200 {"status":"duplicate-ignored"}"#),
            Some(&N.div_ceil(4))
        );
        assert_eq!(messages, N as u64, "one stream message per event id");
        // Nothing lost, nothing applied twice.
        assert_eq!(keys, expected, "every event's effect is recorded");
        assert_eq!(ledger.applied.len(), N, "no effect applied twice");
        assert_eq!(distinct_applied.len(), N);
        assert!(
            ledger.already.contains(&hung),
            "the event killed between effect and ack was redelivered and found already applied"
        );
        assert_eq!(
            (info.num_pending, info.num_ack_pending),
            (0, 0),
            "everything acknowledged"
        );
    })
    .await;
}
