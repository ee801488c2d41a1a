//! A `klikit serve` process, and raw HTTP/1.1 to it.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant, SystemTime},
};

use http::{HeaderMap, HeaderName, HeaderValue};
use klikit_webhook::{
    WebhookSecret,
    scheme::{Outgoing, Scheme},
};

pub(crate) const KLIKIT: &str = env!("CARGO_BIN_EXE_klikit");

pub(crate) const RECEIVED: &str = r#"{"status":"received"}"#;
pub(crate) const DUPLICATE: &str = r#"{"status":"duplicate-ignored"}"#;
pub(crate) const INVALID_SIGNATURE: &str = r#"{"error":"invalid signature"}"#;
pub(crate) const OUT_OF_TOLERANCE: &str = r#"{"error":"timestamp outside the tolerance"}"#;

/// Every variable the receiver reads: removed from each process a test
/// starts, so that the caller's environment never leaks in.
const RECEIVER_VARS: [&str; 8] = [
    "KLIKIT_SCHEME",
    "KLIKIT_TOLERANCE_SECS",
    "KLIKIT_WEBHOOK_SECRET",
    "KLIKIT_WEBHOOK_PREVIOUS_SECRET",
    "KLIKIT_WEBHOOK_SECRETS_FILE",
    "KLIKIT_STORE",
    "PORT",
    "BIND",
];

/// A fresh name in the temporary directory.
fn temp_path(label: &str, extension: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("klikit-schemes-{}-{label}-{n}.{extension}", std::process::id()))
}

/// `klikit serve` with the memory store, on loopback, logging at `info`,
/// and `env`.
fn serve_command(env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(KLIKIT);
    command.arg("serve");
    for var in RECEIVER_VARS {
        command.env_remove(var);
    }
    command
        .env("KLIKIT_STORE", "memory")
        .env("BIND", "127.0.0.1")
        .env("RUST_LOG", "info");
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

/// A running `klikit serve`, killed on drop. Its output goes to a file, so
/// that it never blocks on a full pipe and a failure can show it.
pub(crate) struct Served {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Served {
    /// Starts the receiver with `env` and waits until it accepts
    /// connections; panics with its output if it exits instead.
    pub(crate) fn start(env: &[(&str, &str)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = temp_path("serve", "log");
        let file = std::fs::File::create(&log).unwrap();
        let child = serve_command(env)
            .env("PORT", port.to_string())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let mut served = Self { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = served.child.try_wait().unwrap() {
                panic!("klikit serve with {env:?} exited ({status}):\n{}", served.output());
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return served;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("klikit serve with {env:?} did not come up:\n{}", served.output());
    }

    /// The webhook URL.
    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}/webhooks/klikit", self.port)
    }

    /// What the receiver printed so far.
    pub(crate) fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// POSTs `body` with `headers` (and a JSON content type), written whole;
    /// then the whole answer: (status, body).
    pub(crate) fn post(&self, headers: &HeaderMap, body: &[u8]) -> (u16, String) {
        let mut head = format!(
            "POST /webhooks/klikit HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap()));
        }
        head.push_str("\r\n");
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").expect("a complete HTTP answer");
        (head[9..12].parse().unwrap(), body.to_owned())
    }

    /// `outgoing` signed with `secret` under `scheme`, as its sender would.
    pub(crate) fn deliver(&self, scheme: &dyn Scheme, secret: &str, outgoing: &Outgoing<'_>) -> (u16, String) {
        self.post(&signed(scheme, &key(secret), outgoing), outgoing.body)
    }

    /// Waits (up to 20 s) for a log line holding every one of `needles`.
    pub(crate) fn log_line(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let output = self.output();
            if let Some(line) = output.lines().find(|line| needles.iter().all(|n| line.contains(n))) {
                return line.to_owned();
            }
            assert!(Instant::now() < deadline, "no log line with {needles:?}:\n{output}");
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// `klikit serve` with `env` must not start: (exit code, stderr, stdout).
pub(crate) fn refuses_to_start(env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let output = serve_command(env).env("PORT", "0").output().unwrap();
    (
        output.status.code(),
        String::from_utf8(output.stderr).unwrap(),
        String::from_utf8(output.stdout).unwrap(),
    )
}

/// A file removed on drop.
pub(crate) struct TempFile(pub PathBuf);

impl TempFile {
    /// A file holding `text`.
    pub(crate) fn with(text: &str) -> Self {
        let path = temp_path("secrets", "json");
        std::fs::write(&path, text).unwrap();
        Self(path)
    }

    pub(crate) fn as_str(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Now, in Unix seconds.
pub(crate) fn now() -> i64 {
    let since = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap();
    i64::try_from(since.as_secs()).unwrap()
}

/// A secret as the Klikit schemes read it (its own bytes).
pub(crate) fn key(secret: &str) -> WebhookSecret {
    WebhookSecret::new(secret).unwrap()
}

/// The headers `scheme` sends for `outgoing`.
pub(crate) fn signed(scheme: &dyn Scheme, secret: &WebhookSecret, outgoing: &Outgoing<'_>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    scheme.sign(secret, outgoing, &mut headers);
    headers
}

/// A header map from pairs.
pub(crate) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(name, value)| {
            (
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            )
        })
        .collect()
}
