//! Helpers for the fault-injection and soak tests (`tests/faults.rs`,
//! `tests/soak.rs`): a sender that behaves like Klikit, a server on a
//! loopback socket, a store wrapper that records what the store answered,
//! and a throwaway `redis-server` child process.
//!
//! Included with `#[path = "common/faults.rs"] mod faults_util;`.

#![allow(dead_code, unreachable_pub)]

use std::{
    collections::HashMap,
    net::{SocketAddr, TcpListener as StdTcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use axum::Router;
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use klikit_webhook::{
    DedupStore, StoreError,
    store::{BodyDigest, Claim, Lease, LeaseToken},
    testing::{WEBHOOK_PATH, signed_request},
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

pub const SECRET: &str = "a-long-random-webhook-secret-for-fault-tests";
pub const EVENT_TYPE: &str = "klikit.order.status.updated";

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http()
}

/// A body that differs per event id (so signatures differ too).
pub fn body_for(event_id: &str) -> String {
    format!(r#"{{"brand_id":663,"branch_id":1062,"orders":[{{"id":1,"status":5,"note":"{event_id}"}}]}}"#)
}

/// One HTTP attempt as the sender saw it.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// `None`: transport error or no answer within the sender's deadline.
    pub status: Option<StatusCode>,
    pub retry_after: Option<HeaderValue>,
    pub body: Bytes,
    pub elapsed: Duration,
}

impl Attempt {
    pub fn is_success(&self) -> bool {
        self.status.is_some_and(|status| status.is_success())
    }
}

/// One signed POST to `addr`, answered within `deadline` (else `status: None`).
pub async fn send_once(
    client: &HttpClient,
    addr: SocketAddr,
    secret: &str,
    event_id: &str,
    deadline: Duration,
) -> Attempt {
    let mut request = signed_request::<Full<Bytes>>(secret, event_id, EVENT_TYPE, body_for(event_id));
    *request.uri_mut() = format!("http://{addr}{WEBHOOK_PATH}").parse().unwrap();
    let started = Instant::now();
    let exchange = async {
        let response = client.request(request).await.ok()?;
        let status = response.status();
        let retry_after = response.headers().get(http::header::RETRY_AFTER).cloned();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some((status, retry_after, body))
    };
    match tokio::time::timeout(deadline, exchange).await {
        Ok(Some((status, retry_after, body))) => Attempt {
            status: Some(status),
            retry_after,
            body,
            elapsed: started.elapsed(),
        },
        _ => Attempt {
            status: None,
            retry_after: None,
            body: Bytes::new(),
            elapsed: started.elapsed(),
        },
    }
}

/// Delivers `event_id` the way Klikit does: any non-2xx answer or transport
/// error is retried after `pause` until a 2xx arrives or `give_up` passes.
/// Attempts rotate over `addrs` starting at `first`. Returns every attempt.
pub async fn deliver_until_2xx(
    client: &HttpClient,
    addrs: &[SocketAddr],
    first: usize,
    event_id: &str,
    pause: Duration,
    give_up: Duration,
) -> Vec<Attempt> {
    let started = Instant::now();
    let mut attempts = Vec::new();
    for n in first.. {
        let attempt = send_once(
            client,
            addrs[n % addrs.len()],
            SECRET,
            event_id,
            Duration::from_secs(10),
        )
        .await;
        let done = attempt.is_success();
        attempts.push(attempt);
        if done || started.elapsed() > give_up {
            break;
        }
        tokio::time::sleep(pause).await;
    }
    attempts
}

/// A webhook server on an ephemeral loopback port.
pub struct Server {
    pub addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Server {
    pub async fn start(app: Router) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self { addr, shutdown, task }
    }

    pub async fn stop(self) {
        let _ = self.shutdown.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// What a [`Recording`] store saw, per event id.
#[derive(Debug, Default, Clone)]
pub struct StoreLog {
    /// `complete` calls that returned `Ok(true)`.
    pub completed: HashMap<String, u32>,
    /// `complete` calls that failed (error seen by the store) or returned
    /// `Ok(false)`. A call the layer abandoned at its store timeout is not
    /// counted here (see [`Recording`]).
    pub complete_failed: HashMap<String, u32>,
    pub claim_errors: u64,
    /// `release` calls started, and those that returned `Ok(true)`,
    /// `Ok(false)` or an error.
    pub releases: u64,
    pub released: u64,
    pub release_not_held: u64,
    pub release_errors: u64,
}

/// What happened under one lease token, as the [`Recording`] store and the
/// test's handler saw it.
#[derive(Debug, Default, Clone)]
pub struct LeaseLog {
    /// The event id the lease is on.
    pub event_id: String,
    /// `claim` returned `Ok(Claim::New)` for this lease (to the layer: a
    /// claim the layer stopped waiting for is dropped before it returns, so
    /// it never counts as granted).
    pub granted: bool,
    /// `complete` calls started for this lease (the first one and the
    /// layer's background retries).
    pub completes: u32,
    /// Some `complete` for this lease returned `Ok(true)`: the store recorded
    /// the event as processed under it.
    pub recorded: bool,
    /// Handler runs attributed to this lease, 0 or 1: a run takes the lease
    /// (see [`Leases`]).
    pub runs: u32,
}

/// Per lease token, what the store answered and which handler run happened
/// under it; per event id, the handler runs in order.
///
/// How a handler run is attributed to its lease: the layer awaits `claim`
/// and then the handler inside the one future that serves the request, so
/// both run on the same Tokio task (hyper serves an HTTP/1 connection's
/// requests one after another on the connection's task). `claim` notes the
/// lease it granted under the current task's id; the handler takes (and so
/// uses up) the lease noted for its task. A run that finds none (a second
/// run after one grant, or a lease on another event id) is recorded
/// without a lease, and `check_load` fails on it, so a change in how the
/// layer schedules the handler shows up as a failure, never as a silently
/// misattributed run.
#[derive(Debug, Default, Clone)]
pub struct Leases(Arc<Mutex<Ledger>>);

#[derive(Debug, Default)]
pub struct Ledger {
    pub leases: HashMap<LeaseToken, LeaseLog>,
    /// Per event id, every handler run in order, with the lease it ran under
    /// (`None`: no lease on that id had been granted on the handler's task).
    pub runs: HashMap<String, Vec<Option<LeaseToken>>>,
    /// The lease last granted to a claim made on each task, until the
    /// handler on that task takes it.
    granted_on_task: HashMap<tokio::task::Id, LeaseToken>,
}

impl Leases {
    /// Called by the test's handler for `event_id`: records one run, under
    /// the lease granted on this task, if any.
    pub fn handler_ran(&self, event_id: &str) {
        let mut ledger = self.0.lock().unwrap();
        let token = tokio::task::try_id()
            .and_then(|task| ledger.granted_on_task.remove(&task))
            .filter(|token| ledger.leases.get(token).is_some_and(|lease| lease.event_id == event_id));
        if let Some(token) = token {
            ledger.leases.get_mut(&token).unwrap().runs += 1;
        }
        ledger.runs.entry(event_id.to_owned()).or_default().push(token);
    }

    /// Reads the ledger.
    pub fn with<T>(&self, read: impl FnOnce(&Ledger) -> T) -> T {
        read(&self.0.lock().unwrap())
    }

    fn claim_started(&self) {
        if let Some(task) = tokio::task::try_id() {
            self.0.lock().unwrap().granted_on_task.remove(&task);
        }
    }

    fn granted(&self, lease: &Lease) {
        let mut ledger = self.0.lock().unwrap();
        let log = ledger.leases.entry(lease.token()).or_default();
        log.event_id = lease.event_id().to_string();
        log.granted = true;
        if let Some(task) = tokio::task::try_id() {
            ledger.granted_on_task.insert(task, lease.token());
        }
    }

    fn complete_started(&self, lease: &Lease) {
        let mut ledger = self.0.lock().unwrap();
        let log = ledger.leases.entry(lease.token()).or_default();
        log.event_id = lease.event_id().to_string();
        log.completes += 1;
    }

    fn recorded(&self, lease: &Lease) {
        self.0.lock().unwrap().leases.entry(lease.token()).or_default().recorded = true;
    }
}

/// Wraps a store and records the outcome of every operation, per event id
/// ([`StoreLog`]) and per lease token ([`Leases`]). It never changes an
/// answer. A call the layer abandons at its store timeout is dropped
/// mid-flight and records nothing after its start: such a claim never
/// counts as granted, such a `complete` never as recorded (even if it
/// lands in the store later).
#[derive(Debug, Clone)]
pub struct Recording<S> {
    pub inner: S,
    pub log: Arc<Mutex<StoreLog>>,
    /// Shared with the test's handler, which reports its runs here.
    pub leases: Leases,
}

impl<S> Recording<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            log: Arc::default(),
            leases: Leases::default(),
        }
    }
}

#[async_trait]
impl<S: DedupStore> DedupStore for Recording<S> {
    async fn claim(&self, lease: &Lease, ttl: Duration) -> Result<Claim, StoreError> {
        self.leases.claim_started();
        let result = self.inner.claim(lease, ttl).await;
        match &result {
            Ok(Claim::New) => self.leases.granted(lease),
            Ok(_) => {}
            Err(_) => self.log.lock().unwrap().claim_errors += 1,
        }
        result
    }

    async fn complete(&self, lease: &Lease, digest: BodyDigest, retain: Duration) -> Result<bool, StoreError> {
        let id = lease.event_id().to_string();
        self.leases.complete_started(lease);
        let result = self.inner.complete(lease, digest, retain).await;
        if let Ok(true) = result {
            self.leases.recorded(lease);
        }
        let mut log = self.log.lock().unwrap();
        match &result {
            Ok(true) => *log.completed.entry(id).or_default() += 1,
            _ => *log.complete_failed.entry(id).or_default() += 1,
        }
        result
    }

    async fn release(&self, lease: &Lease) -> Result<bool, StoreError> {
        self.log.lock().unwrap().releases += 1;
        let result = self.inner.release(lease).await;
        let mut log = self.log.lock().unwrap();
        match result {
            Ok(true) => log.released += 1,
            Ok(false) => log.release_not_held += 1,
            Err(_) => log.release_errors += 1,
        }
        drop(log);
        result
    }
}

/// A free loopback port (bound, then released; a tiny race is acceptable).
pub fn free_port() -> u16 {
    StdTcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether `program` can be run (is on `PATH`).
pub fn on_path(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// A throwaway `redis-server` child process on its own loopback port, with
/// an append-only file fsynced on every write in its own directory, so that
/// a restart after SIGKILL keeps every acknowledged write.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
}

impl RedisServer {
    /// Starts one; `None` if `redis-server` is not on `PATH` (after a loud
    /// SKIPPED line, or a panic when `CI` is set).
    pub async fn start(label: &str) -> Option<Self> {
        if !on_path("redis-server") {
            return crate::common::unreachable("redis-server", "PATH", "redis-server is not installed");
        }
        let dir = std::env::temp_dir().join(format!("klikit-faults-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self {
            child: None,
            port: free_port(),
            dir,
        };
        server.restart().await;
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the server (again) on the same port and directory and waits
    /// until it answers PING (it has then loaded its append-only file).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "yes", "--appendfsync", "always"])
            .args(["--daemonize", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if ping(&self.url()).await {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server on {} did not start", self.port);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn ping(url: &str) -> bool {
    let probe = async {
        let client = redis::Client::open(url)?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut connection).await
    };
    matches!(tokio::time::timeout(Duration::from_millis(500), probe).await, Ok(Ok(_)))
}

/// Deletes every key under `prefix` in the Redis at `url` (SCAN, not KEYS).
pub async fn redis_delete_prefix(url: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(url) else { return };
    let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let mut cursor: u64 = 0;
    loop {
        let Ok((next, keys)): Result<(u64, Vec<Vec<u8>>), _> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut connection)
            .await
        else {
            return;
        };
        if !keys.is_empty() {
            let _: Result<i64, _> = redis::cmd("DEL").arg(keys).query_async(&mut connection).await;
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

/// VmRSS of this process in KiB, from /proc/self/status.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
