//! The load driver of `benches/run.sh`: one round of the load benchmark.
//!
//! Run it through `bash benches/run.sh`, which builds everything in release
//! mode, pins this driver to CPU 1 and calls it once per round. By hand:
//!
//! ```sh
//! cargo build --release -p klikit-cli --example receiver
//! cargo build --release --example bare_twin --example load
//! taskset -c 1 target/release/examples/load --round 1 --csv /tmp/round-1.csv
//! ```
//!
//! A round runs every configuration once, in an order rotated by the round
//! number (round 1 starts with the first configuration, round 2 with the
//! second, and so on), so that calling it for rounds 1, 2, 3 interleaves the
//! configurations and no configuration always runs first. For each
//! configuration it starts a fresh server pinned to `--server-cpu` with
//! `taskset`, waits for its port, drives it with `--connections` keep-alive
//! connections in a closed loop for `--warmup` seconds, measures for
//! `--duration` seconds, then stops it (SIGTERM) and empties its store.
//!
//! Configurations (`--configs`, comma-separated; the default is the first
//! five):
//! - `twin`: `examples/bare_twin.rs`, the hand-written axum receiver;
//! - `memory`, `sqlite`, `redis`, `postgres`: the reference receiver
//!   (`crates/klikit-cli/examples/receiver.rs`) with that dedup store.
//!   `sqlite` is the receiver's default store: `KLIKIT_STORE` is unset and
//!   the receiver runs in a fresh, empty directory, so it creates a new
//!   `klikit-dedup.sqlite3` there. `redis` uses `REDIS_URL` (default
//!   `redis://127.0.0.1:6379`); `postgres` uses `DATABASE_URL` (default
//!   `postgres://postgres@127.0.0.1:5432/test`) with a fresh schema, and so a
//!   fresh table, per run (`options=-csearch_path%3D<schema>` in the URL);
//! - `twin-ok`: the twin's `/ok` route, which only answers 200 (the ceiling
//!   of axum + hyper on this machine);
//! - `memory-dup20`, `twin-dup20`: 20 % of the ids repeat one sent 1024 to
//!   2047 requests earlier (long finished);
//! - `flask`: `benches/flask_receiver.py` under gunicorn (2 sync workers),
//!   with `--flask-venv`;
//! - `memory-before`, `sqlite-before`, `redis-before`, `postgres-before`: the
//!   reference receiver built from another commit (`benches/run.sh` builds
//!   the one its `BEFORE` names), found in `--before-bin-dir`, with that
//!   store: today's stores against the same stores before a change, in the
//!   same rounds.
//!
//! Every event id carries `--run-id` and the round (`<run id>-r<round>-<n>`),
//! so the Redis keys of a run (`klikit:dedup:<run id>-r<round>-…`) are
//! unique to it and nothing else on a shared Redis is touched. After each run
//! the driver counts the records the store holds (the `store_records` column:
//! evidence that the store was used) and deletes them: the SQLite directory,
//! the run's Redis keys, the run's Postgres schema.
//!
//! Each request is a signed ~1 KiB body; the bodies are 256 different orders
//! signed before the run, and only the `x-klikit-event-id` header changes per
//! request, so nothing is signed in the measured loop. The driver is a raw
//! HTTP/1.1 client on a current-thread Tokio runtime (one core): it writes a
//! prepared request and parses only the status line, `content-length` and
//! `connection: close`.
//!
//! Output: one line per configuration on stdout, and with `--csv` one CSV row
//! per configuration (columns in [`CSV_HEADER`]). Server CPU is the
//! utime+stime of the server and its children over the measured window, from
//! `/proc/<pid>/stat`; it does not include Redis' or Postgres' own CPU.
//!
//! With `--soak N`, after the round: N unique deliveries each to a fresh
//! receiver with the memory store and to the twin, with the server's RSS
//! sampled every N/10 (`--soak-csv`).

use std::{
    cell::{Cell, RefCell},
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    rc::Rc,
    time::{Duration, Instant, SystemTime},
};

use klikit_webhook::signature::sign;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const SECRET: &str = "load-benchmark-secret-0123456789abcdef";
const BODIES: usize = 256;
const PORT: u16 = 18_080;
const WEBHOOK_PATH: &str = "/webhooks/klikit";
/// The receiver's default store file (`klikit_cli::receiver::DEFAULT_STORE`).
const DEFAULT_SQLITE_FILE: &str = "klikit-dedup.sqlite3";
/// The table of the SQLite and Postgres stores (`DEFAULT_TABLE`).
const TABLE: &str = "klikit_webhook_dedup";
/// The Redis store's key prefix (`RedisStore::DEFAULT_PREFIX`).
const REDIS_PREFIX: &str = "klikit:dedup:";
const DEFAULT_CONFIGS: &str = "twin,memory,sqlite,redis,postgres";

/// The columns of `--csv`.
const CSV_HEADER: &str = "round,position,config,label,started_unix,loadavg_1m,window_s,requests,rps,\
                          p50_us,p90_us,p99_us,max_us,server_cpu_us_per_req,client_cpu_share,status_200,\
                          status_other,duplicates,reconnects,store_records";

struct Options {
    configs: Vec<Config>,
    round: usize,
    run_id: String,
    warmup: Duration,
    duration: Duration,
    connections: usize,
    server_cpu: String,
    bin_dir: PathBuf,
    work_dir: PathBuf,
    log_dir: Option<PathBuf>,
    flask: Option<PathBuf>,
    csv: Option<PathBuf>,
    soak: u64,
    soak_csv: Option<PathBuf>,
    /// Where the `receiver` built from the `BEFORE` commit is (`--before-bin-dir`),
    /// for the `*-before` configurations.
    before_bin_dir: Option<PathBuf>,
}

fn usage() -> ! {
    eprintln!(
        "usage: load [--configs {DEFAULT_CONFIGS}] [--round N] [--run-id ID] [--warmup S] [--duration S] \
         [--connections N] [--server-cpu LIST] [--bin-dir DIR] [--work-dir DIR] [--log-dir DIR] \
         [--flask-venv DIR] [--csv FILE] [--soak N] [--soak-csv FILE] [--before-bin-dir DIR]\n\
         configurations: twin memory sqlite redis postgres twin-ok memory-dup20 twin-dup20 flask \
         memory-before sqlite-before redis-before postgres-before"
    );
    std::process::exit(2)
}

fn options() -> Options {
    let unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut configs = DEFAULT_CONFIGS.to_owned();
    let mut o = Options {
        configs: Vec::new(),
        round: 1,
        run_id: format!("{unix:x}{:x}", std::process::id()),
        warmup: Duration::from_secs(1),
        duration: Duration::from_secs(5),
        connections: 32,
        server_cpu: "0".into(),
        bin_dir: std::env::current_exe().unwrap().parent().unwrap().to_path_buf(),
        work_dir: PathBuf::new(),
        log_dir: None,
        flask: None,
        csv: None,
        soak: 0,
        soak_csv: None,
        before_bin_dir: None,
    };
    let mut work_dir = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        let seconds = |v: String| Duration::from_secs_f64(v.parse().unwrap_or_else(|_| usage()));
        match arg.as_str() {
            "--configs" => configs = value(),
            "--round" => o.round = value().parse().unwrap_or_else(|_| usage()),
            "--run-id" => o.run_id = value(),
            "--warmup" => o.warmup = seconds(value()),
            "--duration" => o.duration = seconds(value()),
            "--connections" => o.connections = value().parse().unwrap_or_else(|_| usage()),
            "--server-cpu" => o.server_cpu = value(),
            "--bin-dir" => o.bin_dir = value().into(),
            "--work-dir" => work_dir = Some(PathBuf::from(value())),
            "--log-dir" => o.log_dir = Some(value().into()),
            "--flask-venv" => o.flask = Some(value().into()),
            "--csv" => o.csv = Some(value().into()),
            "--soak" => o.soak = value().parse().unwrap_or_else(|_| usage()),
            "--soak-csv" => o.soak_csv = Some(value().into()),
            "--before-bin-dir" => o.before_bin_dir = Some(value().into()),
            _ => usage(),
        }
    }
    // The run id goes into event ids, Redis key patterns and a Postgres
    // schema name: keep it to characters that are plain in all three.
    let valid_id = !o.run_id.is_empty()
        && o.run_id.len() <= 24
        && o.run_id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !valid_id || o.round == 0 {
        eprintln!("load: --run-id must be 1 to 24 of [a-z0-9], --round at least 1");
        usage();
    }
    o.work_dir = work_dir.unwrap_or_else(|| std::env::temp_dir().join(format!("klikit-bench-{}", o.run_id)));
    for key in configs.split(',').map(str::trim).filter(|k| !k.is_empty()) {
        let Some(config) = Config::from_key(key) else {
            eprintln!("load: unknown configuration {key}");
            usage();
        };
        if config.server == Server::Flask && o.flask.is_none() {
            eprintln!("load: configuration flask needs --flask-venv");
            usage();
        }
        if config.before && o.before_bin_dir.is_none() {
            eprintln!("load: configuration {key} needs --before-bin-dir");
            usage();
        }
        o.configs.push(config);
    }
    o
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Server {
    Receiver(Store),
    Twin,
    Flask,
}

/// The reference receiver's dedup store.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Store {
    Memory,
    Sqlite,
    Redis,
    Postgres,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ids {
    Unique,
    Dup20,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Config {
    key: &'static str,
    label: &'static str,
    server: Server,
    path: &'static str,
    ids: Ids,
    /// Runs the receiver built from the `BEFORE` commit (`--before-bin-dir`).
    before: bool,
}

impl Config {
    const ALL: [Config; 13] = [
        Config::new(
            "twin",
            "twin (hand-written axum)",
            Server::Twin,
            WEBHOOK_PATH,
            Ids::Unique,
        ),
        Config::new(
            "memory",
            "receiver + MemoryStore",
            Server::Receiver(Store::Memory),
            WEBHOOK_PATH,
            Ids::Unique,
        ),
        Config::new(
            "sqlite",
            "receiver + SqliteStore (default)",
            Server::Receiver(Store::Sqlite),
            WEBHOOK_PATH,
            Ids::Unique,
        ),
        Config::new(
            "redis",
            "receiver + RedisStore",
            Server::Receiver(Store::Redis),
            WEBHOOK_PATH,
            Ids::Unique,
        ),
        Config::new(
            "postgres",
            "receiver + PostgresStore",
            Server::Receiver(Store::Postgres),
            WEBHOOK_PATH,
            Ids::Unique,
        ),
        Config::new("twin-ok", "twin /ok (200 only)", Server::Twin, "/ok", Ids::Unique),
        Config::new(
            "memory-dup20",
            "receiver + MemoryStore (20 % duplicates)",
            Server::Receiver(Store::Memory),
            WEBHOOK_PATH,
            Ids::Dup20,
        ),
        Config::new(
            "twin-dup20",
            "twin (20 % duplicates)",
            Server::Twin,
            WEBHOOK_PATH,
            Ids::Dup20,
        ),
        Config::new(
            "flask",
            "flask (gunicorn: 2 sync workers)",
            Server::Flask,
            WEBHOOK_PATH,
            Ids::Unique,
        ),
        Config::before("memory-before", "receiver @ BEFORE + MemoryStore", Store::Memory),
        Config::before(
            "sqlite-before",
            "receiver @ BEFORE + SqliteStore (default)",
            Store::Sqlite,
        ),
        Config::before("redis-before", "receiver @ BEFORE + RedisStore", Store::Redis),
        Config::before("postgres-before", "receiver @ BEFORE + PostgresStore", Store::Postgres),
    ];

    const fn new(key: &'static str, label: &'static str, server: Server, path: &'static str, ids: Ids) -> Self {
        Self {
            key,
            label,
            server,
            path,
            ids,
            before: false,
        }
    }

    /// The reference receiver of the `BEFORE` commit with `store`.
    const fn before(key: &'static str, label: &'static str, store: Store) -> Self {
        Self {
            before: true,
            ..Self::new(key, label, Server::Receiver(store), WEBHOOK_PATH, Ids::Unique)
        }
    }

    fn from_key(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.key == key)
    }
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn postgres_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Runs `command` and returns its stdout; panics with its stderr if it fails.
fn output(command: &mut Command) -> String {
    let out = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn psql(sql: &str) -> String {
    output(Command::new("psql").args([
        postgres_url().as_str(),
        "-X",
        "-q",
        "-t",
        "-A",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        sql,
    ]))
}

/// A store prepared for one run: where the server runs and how to reach the
/// store; [`finish`](Self::finish) counts its records and deletes them.
struct StoreRun {
    store: Store,
    /// The `KLIKIT_STORE` value; `None` leaves it unset (the default store).
    spec: Option<String>,
    dir: PathBuf,
    id_prefix: String,
    schema: String,
}

impl StoreRun {
    fn prepare(store: Store, opts: &Options) -> Self {
        let tag = format!("r{}", opts.round);
        let mut run = Self {
            store,
            spec: None,
            dir: opts.work_dir.join(format!("{tag}-{store:?}").to_lowercase()),
            id_prefix: format!("{}-{tag}-", opts.run_id),
            schema: format!("klikit_bench_{}_{tag}", opts.run_id),
        };
        if run.dir.exists() {
            std::fs::remove_dir_all(&run.dir).unwrap();
        }
        std::fs::create_dir_all(&run.dir).unwrap();
        match store {
            Store::Memory => run.spec = Some("memory".into()),
            Store::Sqlite => {}
            Store::Redis => {
                assert_eq!(
                    run.redis_keys().len(),
                    0,
                    "Redis already holds keys of this run id: pick another --run-id"
                );
                run.spec = Some(redis_url());
            }
            Store::Postgres => {
                psql(&format!("CREATE SCHEMA {}", run.schema));
                let url = postgres_url();
                let separator = if url.contains('?') { '&' } else { '?' };
                // libpq's `options` parameter (`-c search_path=<schema>`,
                // percent-encoded): sqlx and tokio-postgres both read it, so
                // the receivers before and after the driver change get the
                // same URL.
                run.spec = Some(format!("{url}{separator}options=-c%20search_path%3D{}", run.schema));
            }
        }
        run
    }

    fn redis_keys(&self) -> Vec<String> {
        let pattern = format!("{REDIS_PREFIX}{}*", self.id_prefix);
        output(Command::new("redis-cli").args(["-u", &redis_url(), "--scan", "--pattern", &pattern]))
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The number of dedup records the run left in the store (`None` for the
    /// memory store), then deletes them.
    fn finish(self) -> Option<u64> {
        let records = match self.store {
            Store::Memory => None,
            Store::Sqlite => {
                let file = self.dir.join(DEFAULT_SQLITE_FILE);
                assert!(
                    file.exists(),
                    "the receiver did not create its default store {}",
                    file.display()
                );
                let count = output(
                    Command::new("sqlite3")
                        .arg(&file)
                        .arg(format!("SELECT count(*) FROM {TABLE}")),
                );
                Some(count.trim().parse().unwrap())
            }
            Store::Redis => {
                let keys = self.redis_keys();
                let mut cli = Command::new("redis-cli")
                    .args(["-u", &redis_url()])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("redis-cli runs");
                let mut stdin = cli.stdin.take().unwrap();
                for batch in keys.chunks(500) {
                    writeln!(stdin, "UNLINK {}", batch.join(" ")).unwrap();
                }
                drop(stdin);
                assert!(cli.wait().unwrap().success(), "redis-cli UNLINK failed");
                Some(keys.len() as u64)
            }
            Store::Postgres => {
                let count = psql(&format!("SELECT count(*) FROM {}.{TABLE}", self.schema));
                psql(&format!("DROP SCHEMA {} CASCADE", self.schema));
                Some(count.trim().parse().unwrap())
            }
        };
        std::fs::remove_dir_all(&self.dir).unwrap();
        records
    }
}

struct Running {
    child: Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        // SIGTERM via kill(1), so that the receiver drains and gunicorn stops
        // its workers too, then reap.
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(server: Server, bin_dir: &Path, store: Option<&StoreRun>, log: &str, opts: &Options) -> Running {
    let port = PORT.to_string();
    assert!(
        std::net::TcpStream::connect(addr()).is_err(),
        "port {port} is already in use: another server would answer instead of {server:?}"
    );
    let mut command = Command::new("taskset");
    command.arg("-c").arg(&opts.server_cpu);
    match server {
        Server::Receiver(_) => {
            let store = store.expect("a receiver has a store");
            command.arg(bin_dir.join("receiver")).current_dir(&store.dir);
            match &store.spec {
                Some(spec) => command.env("KLIKIT_STORE", spec),
                None => command.env_remove("KLIKIT_STORE"),
            };
        }
        Server::Twin => {
            command.arg(bin_dir.join("bare_twin"));
        }
        Server::Flask => {
            let venv = opts.flask.as_ref().unwrap();
            let benches = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches");
            command
                .arg(venv.join("bin/gunicorn"))
                .args(["--workers", "2", "--worker-class", "sync", "--log-level", "warning"])
                .arg("--chdir")
                .arg(benches)
                .arg("--bind")
                .arg(format!("127.0.0.1:{port}"))
                .arg("flask_receiver:app");
        }
    }
    command
        .env("KLIKIT_WEBHOOK_SECRET", SECRET)
        .env_remove("KLIKIT_WEBHOOK_PREVIOUS_SECRET")
        .env("PORT", &port)
        .env("BIND", "127.0.0.1")
        .env(
            "RUST_LOG",
            std::env::var("SERVER_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null());
    match &opts.log_dir {
        Some(dir) => {
            let file = std::fs::File::create(dir.join(log)).unwrap();
            command.stdout(file.try_clone().unwrap()).stderr(file);
        }
        None => {
            command.stdout(Stdio::null());
        }
    }
    let child = command.spawn().expect("server starts");
    let mut running = Running { child };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr()).is_err() {
        if let Ok(Some(status)) = running.child.try_wait() {
            panic!("{server:?} exited before it listened ({status}); see {log}");
        }
        assert!(Instant::now() < deadline, "{server:?} did not open port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    running
}

fn addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], PORT))
}

/// utime + stime, in clock ticks, of `pid` and all its descendants.
fn cpu_ticks(root: u32) -> u64 {
    let mut stats = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        // After the comm: state(3) ppid(4) ... utime(14) stime(15).
        let fields: Vec<&str> = rest.split(' ').collect();
        let ppid: u32 = fields[1].parse().unwrap_or(0);
        let ticks = fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
        stats.push((pid, ppid, ticks));
    }
    let mut family = vec![root];
    let mut grew = true;
    while grew {
        grew = false;
        for &(pid, ppid, _) in &stats {
            if family.contains(&ppid) && !family.contains(&pid) {
                family.push(pid);
                grew = true;
            }
        }
    }
    stats
        .iter()
        .filter(|(pid, _, _)| family.contains(pid))
        .map(|(_, _, ticks)| ticks)
        .sum()
}

fn own_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
    let fields: Vec<&str> = rest.split(' ').collect();
    fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn clock_ticks_per_second() -> f64 {
    output(Command::new("getconf").arg("CLK_TCK")).trim().parse().unwrap()
}

fn loadavg_1m() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split(' ')
        .next()
        .unwrap_or("")
        .to_owned()
}

/// Signed bodies of about 1 KiB, each a different order.
fn bodies() -> Vec<(Vec<u8>, String)> {
    (0..BODIES)
        .map(|n| {
            let mut body = format!(
                r#"{{"brand_id":663,"branch_id":1062,"orders":[{{"id":{},"external_id":"ABC-{n}","status":2,"total":"84.50","cart":["#,
                7_585_307 + n
            );
            let item = r#"{"item_id":289379,"title":"Nasi Goreng","quantity":2,"price":0},"#;
            while body.len() + item.len() + 4 <= 1024 {
                body.push_str(item);
            }
            body.pop();
            body.push_str("]}]}");
            let signature = sign(SECRET.as_bytes(), body.as_bytes());
            (body.into_bytes(), signature)
        })
        .collect()
}

/// The event ids: unique, or with 20 % repeating an id sent 1024 to 2047
/// requests earlier.
struct IdStream {
    next: u64,
    ids: Ids,
    recent: Vec<u64>,
    rng: u64,
}

impl IdStream {
    fn new(ids: Ids) -> Self {
        Self {
            next: 0,
            ids,
            recent: vec![0; 2048],
            rng: 0x9E37_79B9_7F4A_7C15,
        }
    }

    fn next(&mut self) -> (u64, u64) {
        let i = self.next;
        self.next += 1;
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let id = if self.ids == Ids::Dup20 && i >= 2048 && self.rng.is_multiple_of(5) {
            let back = 1024 + (self.rng >> 8) % 1024;
            self.recent[((i - back) % 2048) as usize]
        } else {
            i
        };
        self.recent[(i % 2048) as usize] = id;
        (i, id)
    }
}

#[derive(Default)]
struct Counts {
    latencies_us: Vec<u32>,
    statuses: BTreeMap<u16, u64>,
    duplicates: u64,
    reconnects: u64,
    completed_total: u64,
}

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Warmup,
    Measure,
    Stop,
}

struct Shared {
    phase: Cell<Phase>,
    ids: RefCell<IdStream>,
    id_prefix: String,
    counts: RefCell<Counts>,
    stop_after: Cell<u64>,
}

async fn connect() -> TcpStream {
    loop {
        match TcpStream::connect(addr()).await {
            Ok(stream) => {
                stream.set_nodelay(true).unwrap();
                return stream;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses a complete response at the start of `buf`: (status, total length,
/// connection close, duplicate).
fn parse_response(buf: &[u8]) -> Option<(u16, usize, bool, bool)> {
    let end = find(buf, b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).ok()?.to_ascii_lowercase();
    let status: u16 = head.get(9..12)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    if buf.len() < end + length {
        return None;
    }
    let close = head.contains("connection: close");
    let duplicate = find(&buf[end..end + length], b"duplicate-ignored").is_some();
    Some((status, end + length, close, duplicate))
}

async fn connection(shared: Rc<Shared>, bodies: Rc<Vec<(Vec<u8>, String)>>, path: &'static str) {
    let mut stream = connect().await;
    let mut request = Vec::with_capacity(2048);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if shared.phase.get() == Phase::Stop {
            return;
        }
        let (i, id) = shared.ids.borrow_mut().next();
        let (body, signature) = &bodies[(i % BODIES as u64) as usize];
        request.clear();
        write!(
            request,
            "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
             x-klikit-signature: {signature}\r\nx-klikit-event-id: {}{id:012}\r\n\
             x-klikit-event-type: klikit.order.created.v2\r\ncontent-length: {}\r\n\r\n",
            shared.id_prefix,
            body.len()
        )
        .unwrap();
        request.extend_from_slice(body);
        let measured = shared.phase.get() == Phase::Measure;
        let started = Instant::now();
        let mut filled = 0;
        let parsed = match stream.write_all(&request).await {
            Ok(()) => loop {
                if let Some(parsed) = parse_response(&buf[..filled]) {
                    break Some(parsed);
                }
                if filled == buf.len() {
                    buf.resize(buf.len() * 2, 0);
                }
                match stream.read(&mut buf[filled..]).await {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => filled += n,
                }
            },
            Err(_) => None,
        };
        let elapsed = started.elapsed();
        let Some((status, _, close, duplicate)) = parsed else {
            // The server closed an idle keep-alive connection: resend.
            shared.counts.borrow_mut().reconnects += 1;
            stream = connect().await;
            continue;
        };
        {
            let mut counts = shared.counts.borrow_mut();
            counts.completed_total += 1;
            if measured && shared.phase.get() == Phase::Measure {
                counts
                    .latencies_us
                    .push(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX));
                *counts.statuses.entry(status).or_default() += 1;
                counts.duplicates += u64::from(duplicate);
            }
            if counts.completed_total >= shared.stop_after.get() {
                shared.phase.set(Phase::Stop);
            }
        }
        if close {
            shared.counts.borrow_mut().reconnects += 1;
            stream = connect().await;
        }
    }
}

struct RunResult {
    started_unix: u64,
    loadavg_1m: String,
    window_s: f64,
    requests: usize,
    rps: f64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    max_us: f64,
    cpu_us_per_req: f64,
    client_cpu_share: f64,
    statuses: BTreeMap<u16, u64>,
    duplicates: u64,
    reconnects: u64,
    store_records: Option<u64>,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn run(config: Config, opts: &Options, bodies: &Rc<Vec<(Vec<u8>, String)>>, tck: f64) -> RunResult {
    let started_unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let loadavg = loadavg_1m();
    let store = match config.server {
        Server::Receiver(store) => Some(StoreRun::prepare(store, opts)),
        Server::Twin | Server::Flask => None,
    };
    let log = format!("server-r{}-{}.log", opts.round, config.key);
    let bin_dir = match &opts.before_bin_dir {
        Some(before) if config.before => before,
        _ => &opts.bin_dir,
    };
    let server = start(config.server, bin_dir, store.as_ref(), &log, opts);
    let pid = server.child.id();
    let shared = Rc::new(Shared {
        phase: Cell::new(Phase::Warmup),
        ids: RefCell::new(IdStream::new(config.ids)),
        id_prefix: format!("{}-r{}-", opts.run_id, opts.round),
        counts: RefCell::default(),
        stop_after: Cell::new(u64::MAX),
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let (window, server_ticks, client_ticks) = local.block_on(&runtime, async {
        for _ in 0..opts.connections {
            tokio::task::spawn_local(connection(shared.clone(), bodies.clone(), config.path));
        }
        tokio::time::sleep(opts.warmup).await;
        let (t0, s0, c0) = (Instant::now(), cpu_ticks(pid), own_ticks());
        shared.phase.set(Phase::Measure);
        tokio::time::sleep(opts.duration).await;
        shared.phase.set(Phase::Stop);
        let (t1, s1, c1) = (Instant::now(), cpu_ticks(pid), own_ticks());
        (t1 - t0, s1 - s0, c1 - c0)
    });
    drop(runtime);
    drop(server);
    let store_records = store.and_then(StoreRun::finish);
    let mut counts = shared.counts.take();
    counts.latencies_us.sort_unstable();
    let n = counts.latencies_us.len();
    let secs = window.as_secs_f64();
    RunResult {
        started_unix,
        loadavg_1m: loadavg,
        window_s: secs,
        requests: n,
        rps: n as f64 / secs,
        p50_us: percentile(&counts.latencies_us, 50.0),
        p90_us: percentile(&counts.latencies_us, 90.0),
        p99_us: percentile(&counts.latencies_us, 99.0),
        max_us: counts.latencies_us.last().map_or(f64::NAN, |&m| f64::from(m)),
        cpu_us_per_req: server_ticks as f64 / tck * 1e6 / n as f64,
        client_cpu_share: client_ticks as f64 / tck / secs,
        statuses: counts.statuses,
        duplicates: counts.duplicates,
        reconnects: counts.reconnects,
        store_records,
    }
}

/// Sends `total` unique deliveries and samples the server's RSS every `step`.
fn soak(config: Config, total: u64, step: u64, opts: &Options, bodies: &Rc<Vec<(Vec<u8>, String)>>) -> Vec<(u64, u64)> {
    let store = match config.server {
        Server::Receiver(store) => Some(StoreRun::prepare(store, opts)),
        Server::Twin | Server::Flask => None,
    };
    let running = start(
        config.server,
        &opts.bin_dir,
        store.as_ref(),
        &format!("server-soak-{}.log", config.key),
        opts,
    );
    let pid = running.child.id();
    let shared = Rc::new(Shared {
        phase: Cell::new(Phase::Measure),
        ids: RefCell::new(IdStream::new(Ids::Unique)),
        id_prefix: format!("{}-soak-", opts.run_id),
        counts: RefCell::default(),
        stop_after: Cell::new(total),
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let mut samples = vec![(0, rss_kib(pid))];
    local.block_on(&runtime, async {
        let tasks: Vec<_> = (0..opts.connections)
            .map(|_| tokio::task::spawn_local(connection(shared.clone(), bodies.clone(), config.path)))
            .collect();
        let mut next = step;
        while shared.phase.get() != Phase::Stop {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let done = shared.counts.borrow().completed_total;
            if done >= next {
                samples.push((done, rss_kib(pid)));
                next += step;
            }
        }
        for task in tasks {
            let _ = task.await;
        }
    });
    let done = shared.counts.borrow().completed_total;
    if samples.last().map(|s| s.0) != Some(done) {
        samples.push((done, rss_kib(pid)));
    }
    drop(running);
    if let Some(store) = store {
        store.finish();
    }
    let statuses = &shared.counts.borrow().statuses;
    let ok = statuses.get(&200).copied().unwrap_or(0);
    assert_eq!(ok, statuses.values().sum::<u64>(), "soak answers: {statuses:?}");
    samples
}

fn main() {
    let opts = options();
    let tck = clock_ticks_per_second();
    let bodies = Rc::new(bodies());
    std::fs::create_dir_all(&opts.work_dir).unwrap();
    if let Some(dir) = &opts.log_dir {
        std::fs::create_dir_all(dir).unwrap();
    }
    println!(
        "load round {}: run id {}, {} connections, {:.1} s warm-up + {:.1} s measured per configuration, \
         server on CPU {}, body {} B, clock {} ticks/s",
        opts.round,
        opts.run_id,
        opts.connections,
        opts.warmup.as_secs_f64(),
        opts.duration.as_secs_f64(),
        opts.server_cpu,
        bodies[0].0.len(),
        tck
    );
    let mut csv = opts.csv.as_ref().map(|p| {
        let mut file = std::fs::File::create(p).unwrap();
        writeln!(file, "{CSV_HEADER}").unwrap();
        file
    });
    // Rotate the order by the round number: whichever configuration runs
    // first, or right after another's server was torn down, is not always
    // the same one.
    let mut order = opts.configs.clone();
    if !order.is_empty() {
        let len = order.len();
        order.rotate_left((opts.round - 1) % len);
    }
    for (position, &config) in order.iter().enumerate() {
        let r = run(config, &opts, &bodies, tck);
        let status_200 = r.statuses.get(&200).copied().unwrap_or(0);
        let status_other: String = r
            .statuses
            .iter()
            .filter(|(s, _)| **s != 200)
            .map(|(s, n)| format!("{s}x{n}"))
            .collect::<Vec<_>>()
            .join(" ");
        let records = r.store_records.map(|n| n.to_string()).unwrap_or_default();
        println!(
            "round {} #{} {:40} {:>9.0} req/s  p50 {:>7.0} µs  p99 {:>7.0} µs  server CPU {:>6.1} µs/req  \
             client CPU {:>3.0} %  [200x{status_200} {status_other}] dup-ignored {} store records {}",
            opts.round,
            position + 1,
            config.label,
            r.rps,
            r.p50_us,
            r.p99_us,
            r.cpu_us_per_req,
            r.client_cpu_share * 100.0,
            r.duplicates,
            if records.is_empty() { "-" } else { &records },
        );
        if let Some(csv) = csv.as_mut() {
            let mut row = String::new();
            write!(
                row,
                "{},{},{},\"{}\",{},{},{:.3},{},{:.1},{:.0},{:.0},{:.0},{:.0},{:.3},{:.3},{},\"{}\",{},{},{}",
                opts.round,
                position + 1,
                config.key,
                config.label,
                r.started_unix,
                r.loadavg_1m,
                r.window_s,
                r.requests,
                r.rps,
                r.p50_us,
                r.p90_us,
                r.p99_us,
                r.max_us,
                r.cpu_us_per_req,
                r.client_cpu_share,
                status_200,
                status_other,
                r.duplicates,
                r.reconnects,
                records
            )
            .unwrap();
            writeln!(csv, "{row}").unwrap();
        }
    }

    if opts.soak > 0 {
        let mut soak_csv = opts.soak_csv.as_ref().map(|p| {
            let mut file = std::fs::File::create(p).unwrap();
            writeln!(file, "config,label,deliveries,rss_kib").unwrap();
            file
        });
        for key in ["memory", "twin"] {
            let config = Config::from_key(key).unwrap();
            let samples = soak(config, opts.soak, (opts.soak / 10).max(1), &opts, &bodies);
            let line: Vec<String> = samples
                .iter()
                .map(|(n, kib)| format!("{}k:{:.1}", n / 1000, *kib as f64 / 1024.0))
                .collect();
            println!(
                "soak {}: {} unique deliveries, RSS MiB by deliveries: {}",
                config.label,
                opts.soak,
                line.join(" ")
            );
            if let Some(file) = soak_csv.as_mut() {
                for (n, kib) in samples {
                    writeln!(file, "{},\"{}\",{n},{kib}", config.key, config.label).unwrap();
                }
            }
        }
    }
    let _ = std::fs::remove_dir(&opts.work_dir);
}
