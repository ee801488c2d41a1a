//! `klikit serve` as a process: what `/metrics` exposes, and every form of
//! `KLIKIT_STORE` (memory, an SQLite path, `sqlite://`, `redis://`,
//! `postgres://`, and an unknown scheme, which must stop it with one clear
//! line on stderr).
//!
//! Each test starts the binary on a free loopback port, talks HTTP/1.1 to it
//! over a plain socket, and kills it when done. Redis and Postgres are the
//! servers at `REDIS_URL` and `DATABASE_URL` (the local ones by default);
//! when one is unreachable its test says so on stderr and passes, unless
//! `CI` is set.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command},
    time::{Duration, Instant},
};

use klikit_webhook::{EVENT_ID_HEADER, EVENT_TYPE_HEADER, SIGNATURE_HEADER, signature::sign};

const KLIKIT: &str = env!("CARGO_BIN_EXE_klikit");
const SECRET: &str = "serve-test-secret-0123456789";
const BODY: &str = r#"{"brand_id":663,"branch_id":1062,"orders":[{"id":7585307,"status":2}]}"#;

/// A running `klikit serve`, killed on drop. Its output goes to a file, so
/// that a chatty server never blocks on a full pipe and a failure can show it.
struct Served {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Served {
    /// Starts `klikit serve` with `KLIKIT_STORE=store` and waits until it
    /// accepts connections; panics with its output if it exits instead.
    fn start(store: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::env::temp_dir().join(format!("klikit-serve-test-{}-{port}.log", std::process::id()));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(KLIKIT)
            .arg("serve")
            .env("KLIKIT_WEBHOOK_SECRET", SECRET)
            .env("KLIKIT_STORE", store)
            .env("PORT", port.to_string())
            .env("BIND", "127.0.0.1")
            .env("RUST_LOG", "info")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let mut served = Self { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = served.child.try_wait().unwrap() {
                panic!("klikit serve with {store} exited ({status}):\n{}", served.output());
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return served;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("klikit serve with {store} did not come up:\n{}", served.output());
    }

    /// What the server printed so far.
    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One request, written whole, then the whole answer: (status, body).
    fn exchange(&self, head: &str, body: &[u8]) -> (u16, String) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").expect("a complete HTTP answer");
        (head[9..12].parse().unwrap(), body.to_owned())
    }

    /// A delivery of [`BODY`] signed as Klikit signs it.
    fn deliver(&self, id: &str) -> (u16, String) {
        let signature = sign(SECRET.as_bytes(), BODY.as_bytes());
        let head = format!(
            "POST /webhooks/klikit HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\
             content-type: application/json\r\n{SIGNATURE_HEADER}: {signature}\r\n\
             {EVENT_ID_HEADER}: {id}\r\n{EVENT_TYPE_HEADER}: klikit.order.created.v2\r\n\
             content-length: {}\r\n\r\n",
            BODY.len()
        );
        self.exchange(&head, BODY.as_bytes())
    }

    /// `GET /metrics`.
    fn scrape(&self) -> String {
        let (status, body) = self.exchange(
            "GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
            b"",
        );
        assert_eq!(status, 200, "{body}");
        body
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A unique event id per test run: persistent stores outlive the process.
fn event_id(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("serve-{label}-{}-{nanos}", std::process::id())
}

/// The latency is a Prometheus histogram (buckets that sum across
/// instances), not a summary (quantiles that do not), with buckets up to
/// Klikit's 10-second deadline.
#[test]
fn metrics_expose_the_delivery_latency_as_a_histogram_up_to_10_seconds() {
    let server = Served::start("memory");
    assert_eq!(server.deliver(&event_id("metrics")).0, 200);
    let metrics = server.scrape();
    let name = "klikit_webhook_delivery_duration_seconds";
    for line in [
        format!(r#"{name}_bucket{{outcome="processed",le="0.001"}}"#),
        format!(r#"{name}_bucket{{outcome="processed",le="10"}} 1"#),
        format!(r#"{name}_bucket{{outcome="processed",le="+Inf"}} 1"#),
        format!(r#"{name}_count{{outcome="processed"}} 1"#),
        format!("# TYPE {name} histogram"),
    ] {
        assert!(metrics.contains(&line), "{line} missing from:\n{metrics}");
    }
    assert!(
        !metrics.lines().any(|l| l.starts_with(name) && l.contains("quantile=")),
        "no summary quantiles:\n{metrics}"
    );
}

/// What a receiver with `store` does with a new event and its redelivery;
/// `backend` is what its log must name.
fn receives_once_then_ignores_the_duplicate(store: &str, backend: &str) {
    let server = Served::start(store);
    let id = event_id(backend);
    let received = server.deliver(&id);
    let duplicate = server.deliver(&id);
    let log = server.output();
    assert_eq!(
        received,
        (200, r#"{"status":"received"}"#.to_owned()),
        "{store}:\n{log}"
    );
    assert_eq!(
        duplicate,
        (200, r#"{"status":"duplicate-ignored"}"#.to_owned()),
        "{store}:\n{log}"
    );
    assert!(
        log.contains(&format!("dedup store: {backend}")),
        "{store} opened {backend}:\n{log}"
    );
}

/// A fresh path in the temporary directory; the files SQLite makes next to
/// it (`-wal`, `-shm`) are removed with it.
struct TempPath(PathBuf);

impl TempPath {
    fn new(label: &str) -> Self {
        Self(std::env::temp_dir().join(format!("{}.sqlite3", event_id(label))))
    }

    fn as_str(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.as_str()));
        }
    }
}

#[test]
fn store_memory() {
    receives_once_then_ignores_the_duplicate("memory", "memory");
}

#[test]
fn store_sqlite_path() {
    let path = TempPath::new("sqlite-path");
    receives_once_then_ignores_the_duplicate(path.as_str(), "sqlite");
    assert!(path.0.exists(), "the SQLite file was made at the path");
}

#[test]
fn store_sqlite_url() {
    let path = TempPath::new("sqlite-url");
    // An absolute path: sqlite:///tmp/...
    receives_once_then_ignores_the_duplicate(&format!("sqlite://{}", path.as_str()), "sqlite");
    assert!(path.0.exists(), "the SQLite file was made at the URL's path");
}

/// `host:port` of `url`, for a reachability probe.
#[cfg(any(feature = "redis", feature = "postgres"))]
fn host_port(url: &str, default_port: u16) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:{default_port}")
    }
}

/// Whether something listens at `url`; when not, fail under `CI` or say so
/// loudly and skip.
#[cfg(any(feature = "redis", feature = "postgres"))]
fn reachable(backend: &str, url: &str, default_port: u16) -> bool {
    use std::net::ToSocketAddrs;
    let address = host_port(url, default_port);
    let connected = address
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(3)).is_ok());
    if !connected {
        assert!(
            std::env::var_os("CI").is_none(),
            "{backend} at {address} is unreachable and CI is set"
        );
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {backend} at {address} is unreachable; set CI=1 to make this a failure"
        );
    }
    connected
}

#[cfg(feature = "redis")]
#[test]
fn store_redis() {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    if reachable("Redis", &url, 6379) {
        receives_once_then_ignores_the_duplicate(&url, "redis");
    }
}

#[cfg(feature = "postgres")]
#[test]
fn store_postgres() {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    if reachable("Postgres", &url, 5432) {
        receives_once_then_ignores_the_duplicate(&url, "postgres");
    }
}

/// `klikit serve` with `KLIKIT_STORE=store` must not start: (exit code,
/// stderr).
fn refuses_to_start(store: &str) -> (Option<i32>, String) {
    let output = Command::new(KLIKIT)
        .arg("serve")
        .env("KLIKIT_WEBHOOK_SECRET", SECRET)
        .env("KLIKIT_STORE", store)
        .env("PORT", "0")
        .env("BIND", "127.0.0.1")
        .output()
        .unwrap();
    (output.status.code(), String::from_utf8(output.stderr).unwrap())
}

#[test]
fn store_with_an_unknown_scheme_stops_with_one_clear_line() {
    for (store, scheme) in [
        ("ftp://files.example/dedup", "ftp://"),
        ("mysql://db/dedup", "mysql://"),
    ] {
        let (code, stderr) = refuses_to_start(store);
        assert_ne!(code, Some(0), "{store}: {stderr}");
        assert!(code.is_some(), "{store}: exited, not killed");
        assert_eq!(stderr.lines().count(), 1, "{store}: one line:\n{stderr}");
        assert_eq!(
            stderr.trim_end(),
            format!("klikit: KLIKIT_STORE: unknown scheme {scheme}"),
            "{store}"
        );
    }
}

/// A Postgres that refuses (no such role) or is not there: one line that
/// says what Postgres or the socket said, and never the URL's password.
#[cfg(feature = "postgres")]
#[test]
fn store_postgres_failing_to_connect_says_why_without_the_password() {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut cases = vec![(
        "postgres://klikit_user:s3cret-pw-not-to-print@127.0.0.1:1/test".to_owned(),
        "Connection refused",
    )];
    if reachable("Postgres", &url, 5432) {
        cases.push((
            format!(
                "postgres://klikit_no_such_role:s3cret-pw-not-to-print@{}/test",
                host_port(&url, 5432)
            ),
            r#"role "klikit_no_such_role" does not exist"#,
        ));
    }
    for (store, says) in cases {
        let (code, stderr) = refuses_to_start(&store);
        assert_ne!(code, Some(0), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line:\n{stderr}");
        assert!(stderr.contains("cannot connect to Postgres"), "{stderr}");
        assert!(stderr.contains(says), "says {says:?}: {stderr}");
        assert!(
            !stderr.contains("s3cret-pw-not-to-print"),
            "the password leaked: {stderr}"
        );
    }
}

#[cfg(not(feature = "redis"))]
#[test]
fn store_redis_without_the_feature_says_which_feature() {
    let (code, stderr) = refuses_to_start("redis://127.0.0.1:6379");
    assert_ne!(code, Some(0));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("build with the `redis` feature"), "{stderr}");
}

#[cfg(not(feature = "postgres"))]
#[test]
fn store_postgres_without_the_feature_says_which_feature() {
    let (code, stderr) = refuses_to_start("postgres://postgres@127.0.0.1:5432/test");
    assert_ne!(code, Some(0));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("build with the `postgres` feature"), "{stderr}");
}
