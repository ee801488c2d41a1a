//! What the `klikit check` tests share (`check.rs`, `check_v1.rs`): endpoint
//! processes on loopback, `klikit check --json` runs, and their reports.
//!
//! Every endpoint is started, and restarted by `klikit check --restart`,
//! through `tests/restart.sh`, which keeps its pid in a file.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

pub(crate) const KLIKIT: &str = env!("CARGO_BIN_EXE_klikit");
const RESTART_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/restart.sh");
pub(crate) const SECRET: &str = "check-test-secret-0123456789";
/// The longest one `klikit check` run may take here.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long an endpoint may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// An endpoint process on 127.0.0.1, started by `restart.sh` in a directory
/// of its own; stopped (by the pid in its pid file) when dropped.
pub(crate) struct Endpoint {
    dir: PathBuf,
    port: u16,
    /// The environment it runs with; `klikit check` gets it too.
    pub(crate) env: Vec<(&'static str, String)>,
    command: Vec<String>,
}

impl Endpoint {
    /// Starts `command` with `env` (plus the secret, `PORT` and `BIND`) and
    /// waits until it listens.
    pub(crate) fn start(name: &str, command: &[&str], env: &[(&'static str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(format!("klikit-check-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut vars = vec![
            ("KLIKIT_WEBHOOK_SECRET", SECRET.to_owned()),
            ("PORT", port.to_string()),
            ("BIND", "127.0.0.1".to_owned()),
        ];
        vars.extend(env.iter().map(|(name, value)| (*name, (*value).to_owned())));
        let endpoint = Self {
            dir,
            port,
            env: vars,
            command: command.iter().map(|part| (*part).to_owned()).collect(),
        };
        let status = Command::new("sh")
            .arg("-c")
            .arg(endpoint.restart_command())
            .envs(endpoint.env.iter().map(|(k, v)| (*k, v)))
            .status()
            .unwrap();
        assert!(status.success(), "restart.sh could not start {name}");
        endpoint.wait_until_listening();
        endpoint
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}/webhooks/klikit", self.port)
    }

    /// The shell command that (re)starts the endpoint.
    pub(crate) fn restart_command(&self) -> String {
        let mut words = vec![
            "sh".to_owned(),
            quote(RESTART_SH),
            quote(&self.dir.join("pid").to_string_lossy()),
            quote(&self.dir.join("log").to_string_lossy()),
        ];
        words.extend(self.command.iter().map(|part| quote(part)));
        words.join(" ")
    }

    fn wait_until_listening(&self) {
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < START_TIMEOUT,
                "the endpoint did not listen within {START_TIMEOUT:?}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// Runs `klikit check <url> --json` with `args`; its report and whether
    /// it exited 0.
    pub(crate) fn check(&self, args: &[&str]) -> (Report, bool) {
        let child = Command::new(KLIKIT)
            .args(["check", &self.url(), "--json"])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (*k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let (done, output) = mpsc::channel();
        std::thread::spawn(move || done.send(child.wait_with_output()));
        let Ok(output) = output.recv_timeout(RUN_TIMEOUT) else {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("klikit check did not finish within {RUN_TIMEOUT:?}");
        };
        let output = output.unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let json: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {stdout}\nstderr: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        (Report(json), output.status.success())
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pid")) {
            let pid = pid.trim();
            let _ = Command::new("kill").args(["-TERM", pid]).status();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(5) && alive(pid) {
                std::thread::sleep(Duration::from_millis(25));
            }
            if alive(pid) {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn alive(pid: &str) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty() && !stat.contains(") Z")
}

fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The `--json` output.
pub(crate) struct Report(pub(crate) Value);

impl Report {
    pub(crate) fn checks(&self) -> &Vec<Value> {
        self.0["checks"].as_array().expect("a checks array")
    }

    pub(crate) fn check(&self, name: &str) -> &Value {
        self.checks()
            .iter()
            .find(|check| check["name"] == name)
            .unwrap_or_else(|| panic!("no check {name} in {}", self.0))
    }

    /// Every check's verdict, by name.
    pub(crate) fn verdicts(&self) -> BTreeMap<String, String> {
        self.checks()
            .iter()
            .map(|check| {
                (
                    check["name"].as_str().unwrap().to_owned(),
                    check["verdict"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// The verdict of each check is the expected one; unlisted checks pass.
    pub(crate) fn assert_verdicts(&self, expected: &[(&str, &str)]) {
        let mut want: BTreeMap<String, String> = self
            .verdicts()
            .into_keys()
            .map(|name| (name, "pass".to_owned()))
            .collect();
        for (name, verdict) in expected {
            want.insert((*name).to_owned(), (*verdict).to_owned());
        }
        assert_eq!(self.verdicts(), want, "{:#}", self.0);
    }
}

pub(crate) const ALL_CHECKS: [&str; 9] = [
    "fixtures",
    "raw-body",
    "refusals",
    "duplicate",
    "concurrency",
    "unknown-type",
    "body-limit",
    "deadline",
    "restart",
];

/// A receiver from `tests/flawed/`, on the Python standard library.
pub(crate) fn python(name: &str) -> Endpoint {
    let script = format!("{}/tests/flawed/{name}.py", env!("CARGO_MANIFEST_DIR"));
    Endpoint::start(name, &["python3", "-B", &script], &[])
}

/// The labels of the deliveries `check` saw answered `status`-wise as
/// `accepted` (2xx) or not.
pub(crate) fn labels(check: &Value, accepted: bool) -> Vec<String> {
    check["seen"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|seen| seen["status"].as_u64().is_some_and(|s| (200..300).contains(&s)) == accepted)
        .map(|seen| seen["label"].as_str().unwrap().to_owned())
        .collect()
}
