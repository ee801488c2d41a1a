//! The load benchmark: the example receiver (layer + `MemoryStore`) against
//! its bare axum twin and, optionally, a Flask reference receiver, on
//! loopback, in the same run. Start it with `bash benches/load.sh`, which
//! builds everything in release mode and pins this driver to CPU 1.
//!
//! For every repetition it runs each configuration in turn (interleaved, so
//! drifting background load hits all of them alike; the order rotates by one
//! each repetition): it starts a fresh server
//! pinned to CPU 0 with `taskset`, waits for its port, drives it with
//! `--connections` keep-alive connections in a closed loop for `--warmup`
//! seconds, then measures for `--duration` seconds, then kills it. Each
//! request is a signed ~1 KiB body with a unique `x-klikit-event-id` (or, in
//! the `dup20` variant, 20 % of ids repeat one sent 1024 to 2047 requests
//! earlier, long finished). Bodies are drawn from 256 precomputed signed
//! bodies; ids are written into the head per request, so no signing happens
//! in the measured loop.
//!
//! Reported per run: requests/s, p50/p99 latency, and server CPU µs per
//! request from the utime+stime deltas in `/proc/<pid>/stat` of the server
//! and its children over the measured window. The summary gives medians
//! over repetitions, min..max, and the ratios to the twin.
//!
//! Then a soak: 200,000 unique deliveries to a fresh receiver (and twin),
//! with RSS sampled every 20,000.
//!
//! The driver is a raw HTTP/1.1 client on a current-thread Tokio runtime (one
//! core): it writes a prepared request and parses only the status line,
//! `content-length` and `connection: close`, so it needs far less CPU per
//! request than the servers it drives.

use std::{
    cell::{Cell, RefCell},
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    rc::Rc,
    time::{Duration, Instant},
};

use klikit_webhook::signature::sign;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const SECRET: &str = "load-benchmark-secret-0123456789abcdef";
const BODIES: usize = 256;
const PORT: u16 = 18_080;

#[derive(Clone)]
struct Options {
    reps: usize,
    warmup: Duration,
    duration: Duration,
    connections: usize,
    server_cpu: String,
    flask: Option<PathBuf>,
    csv: Option<PathBuf>,
    soak: u64,
    only: Option<String>,
}

fn options() -> Options {
    let mut o = Options {
        reps: 3,
        warmup: Duration::from_secs(1),
        duration: Duration::from_secs(5),
        connections: 32,
        server_cpu: "0".into(),
        flask: None,
        csv: None,
        soak: 200_000,
        only: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--reps" => o.reps = value().parse().unwrap(),
            "--warmup" => o.warmup = Duration::from_secs_f64(value().parse().unwrap()),
            "--duration" => o.duration = Duration::from_secs_f64(value().parse().unwrap()),
            "--connections" => o.connections = value().parse().unwrap(),
            "--server-cpu" => o.server_cpu = value(),
            "--flask-venv" => o.flask = Some(value().into()),
            "--csv" => o.csv = Some(value().into()),
            "--soak" => o.soak = value().parse().unwrap(),
            "--only" => o.only = Some(value()),
            other => panic!("unknown argument {other}"),
        }
    }
    o
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Server {
    Receiver(Store),
    Twin,
    Flask,
}

/// The receiver's dedup store (`KLIKIT_STORE`). Each run starts on an empty
/// store: a fresh SQLite file, the Redis keys and the Postgres table dropped.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Store {
    Memory,
    Sqlite,
    Redis,
    Postgres,
}

impl Store {
    fn label(self) -> &'static str {
        match self {
            Self::Memory => "receiver (layer+MemoryStore)",
            Self::Sqlite => "receiver (layer+SqliteStore)",
            Self::Redis => "receiver (layer+RedisStore)",
            Self::Postgres => "receiver (layer+PostgresStore)",
        }
    }

    /// Empties the store and returns the `KLIKIT_STORE` value for it.
    fn prepare(self) -> String {
        let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let postgres =
            std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        match self {
            Self::Memory => "memory".into(),
            Self::Sqlite => {
                let path = std::env::temp_dir().join("klikit-load-dedup.sqlite3");
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
                path.display().to_string()
            }
            Self::Redis => {
                let script = "for _,k in ipairs(redis.call('keys', ARGV[1])) do redis.call('del', k) end";
                let status = Command::new("redis-cli")
                    .args(["-u", &redis, "eval", script, "0", "klikit:dedup:*"])
                    .stdout(Stdio::null())
                    .status()
                    .expect("redis-cli runs");
                assert!(status.success(), "could not empty the Redis store at {redis}");
                redis
            }
            Self::Postgres => {
                let status = Command::new("psql")
                    .args([
                        postgres.as_str(),
                        "-q",
                        "-c",
                        "DROP TABLE IF EXISTS klikit_webhook_dedup",
                    ])
                    .stdout(Stdio::null())
                    .status()
                    .expect("psql runs");
                assert!(status.success(), "could not reset the Postgres store at {postgres}");
                postgres
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Ids {
    Unique,
    Dup20,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
struct Config {
    server: Server,
    path: &'static str,
    ids: Ids,
}

impl Config {
    fn label(&self) -> String {
        let server = match (self.server, self.path) {
            (Server::Receiver(store), _) => store.label(),
            (Server::Twin, "/ok") => "twin /ok (200 only)",
            (Server::Twin, _) => "bare twin",
            (Server::Flask, _) => "flask (gunicorn 2 sync)",
        };
        match self.ids {
            Ids::Unique => server.to_owned(),
            Ids::Dup20 => format!("{server} + 20% dup"),
        }
    }
}

struct Running {
    child: Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        // SIGTERM via kill(1) so gunicorn stops its workers too, then reap.
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
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

fn examples_dir() -> PathBuf {
    std::env::current_exe().unwrap().parent().unwrap().to_path_buf()
}

fn start(server: Server, opts: &Options) -> Running {
    let port = PORT.to_string();
    assert!(
        std::net::TcpStream::connect(addr()).is_err(),
        "port {port} is already in use: another server would answer instead of {server:?}"
    );
    let mut command = Command::new("taskset");
    command.arg("-c").arg(&opts.server_cpu);
    match server {
        Server::Receiver(store) => {
            command.arg(examples_dir().join("receiver"));
            command.env("KLIKIT_STORE", store.prepare());
        }
        Server::Twin => {
            command.arg(examples_dir().join("bare_twin"));
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
        .env("PORT", &port)
        .env("BIND", "127.0.0.1")
        .env(
            "RUST_LOG",
            std::env::var("SERVER_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let child = command.spawn().expect("server starts");
    let running = Running { child };
    let addr = addr();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
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
    let mut total = 0;
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
    for &(pid, _, ticks) in &stats {
        if family.contains(&pid) {
            total += ticks;
        }
    }
    total
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
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
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
             x-klikit-signature: {signature}\r\nx-klikit-event-id: ord-{id:020}\r\n\
             x-klikit-event-type: klikit.order.created.v2\r\ncontent-length: {}\r\n\r\n",
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
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_us_per_req: f64,
    statuses: BTreeMap<u16, u64>,
    duplicates: u64,
    client_cpu_share: f64,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn run(config: Config, opts: &Options, bodies: &Rc<Vec<(Vec<u8>, String)>>, tck: f64) -> RunResult {
    let server = start(config.server, opts);
    let pid = server.child.id();
    let shared = Rc::new(Shared {
        phase: Cell::new(Phase::Warmup),
        ids: RefCell::new(IdStream::new(config.ids)),
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
    let mut counts = shared.counts.take();
    counts.latencies_us.sort_unstable();
    let n = counts.latencies_us.len() as f64;
    let secs = window.as_secs_f64();
    RunResult {
        rps: n / secs,
        p50_us: percentile(&counts.latencies_us, 50.0),
        p99_us: percentile(&counts.latencies_us, 99.0),
        cpu_us_per_req: server_ticks as f64 / tck * 1e6 / n,
        statuses: counts.statuses,
        duplicates: counts.duplicates,
        client_cpu_share: client_ticks as f64 / tck / secs,
    }
}

fn own_ticks() -> u64 {
    cpu_ticks_of(std::process::id())
}

fn cpu_ticks_of(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
    let fields: Vec<&str> = rest.split(' ').collect();
    fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// Sends `total` unique deliveries and samples the server's RSS every `step`.
fn soak(server: Server, total: u64, step: u64, opts: &Options, bodies: &Rc<Vec<(Vec<u8>, String)>>) -> Vec<(u64, u64)> {
    let running = start(server, opts);
    let pid = running.child.id();
    let shared = Rc::new(Shared {
        phase: Cell::new(Phase::Measure),
        ids: RefCell::new(IdStream::new(Ids::Unique)),
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
            .map(|_| tokio::task::spawn_local(connection(shared.clone(), bodies.clone(), "/webhooks/klikit")))
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
    let statuses = &shared.counts.borrow().statuses;
    let ok = statuses.get(&200).copied().unwrap_or(0);
    assert_eq!(ok, statuses.values().sum::<u64>(), "soak answers: {statuses:?}");
    samples
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn main() {
    let opts = options();
    let tck = clock_ticks_per_second();
    let bodies = Rc::new(bodies());
    let mut configs = vec![
        Config {
            server: Server::Receiver(Store::Memory),
            path: "/webhooks/klikit",
            ids: Ids::Unique,
        },
        Config {
            server: Server::Twin,
            path: "/webhooks/klikit",
            ids: Ids::Unique,
        },
        Config {
            server: Server::Receiver(Store::Memory),
            path: "/webhooks/klikit",
            ids: Ids::Dup20,
        },
        Config {
            server: Server::Twin,
            path: "/webhooks/klikit",
            ids: Ids::Dup20,
        },
        Config {
            server: Server::Twin,
            path: "/ok",
            ids: Ids::Unique,
        },
    ];
    for store in [Store::Sqlite, Store::Redis, Store::Postgres] {
        configs.push(Config {
            server: Server::Receiver(store),
            path: "/webhooks/klikit",
            ids: Ids::Unique,
        });
    }
    if opts.flask.is_some() {
        configs.push(Config {
            server: Server::Flask,
            path: "/webhooks/klikit",
            ids: Ids::Unique,
        });
    }
    if let Some(only) = &opts.only {
        configs.retain(|c| only.split(',').any(|part| c.label() == part.trim()));
    }
    println!(
        "load: {} connections, {:.1} s warm-up + {:.1} s measured per run, {} repetitions, server on CPU {}, \
         body {} B, clock {} ticks/s",
        opts.connections,
        opts.warmup.as_secs_f64(),
        opts.duration.as_secs_f64(),
        opts.reps,
        opts.server_cpu,
        bodies[0].0.len(),
        tck
    );
    let mut csv = opts.csv.as_ref().map(|p| std::fs::File::create(p).unwrap());
    if let Some(csv) = csv.as_mut() {
        writeln!(
            csv,
            "rep,config,rps,p50_us,p99_us,server_cpu_us_per_req,client_cpu_share,statuses,duplicates"
        )
        .unwrap();
    }
    let mut results: BTreeMap<Config, Vec<RunResult>> = BTreeMap::new();
    for rep in 1..=opts.reps {
        // Rotate the order every repetition: whichever configuration runs
        // first, or right after Flask's workers are torn down, is not always
        // the same one.
        let mut order = configs.clone();
        order.rotate_left((rep - 1) % configs.len().max(1));
        for &config in &order {
            let r = run(config, &opts, &bodies, tck);
            let statuses: String = r.statuses.iter().map(|(s, n)| format!("{s}x{n} ")).collect();
            println!(
                "rep {rep} {:40} {:>9.0} req/s  p50 {:>7.0} µs  p99 {:>7.0} µs  server CPU {:>6.1} µs/req  \
                 client CPU {:>3.0} %  [{}dup-ignored {}]",
                config.label(),
                r.rps,
                r.p50_us,
                r.p99_us,
                r.cpu_us_per_req,
                r.client_cpu_share * 100.0,
                statuses,
                r.duplicates
            );
            if let Some(csv) = csv.as_mut() {
                writeln!(
                    csv,
                    "{rep},{},{:.1},{:.1},{:.1},{:.2},{:.3},{},{}",
                    config.label(),
                    r.rps,
                    r.p50_us,
                    r.p99_us,
                    r.cpu_us_per_req,
                    r.client_cpu_share,
                    statuses.trim(),
                    r.duplicates
                )
                .unwrap();
            }
            results.entry(config).or_default().push(r);
        }
    }

    let mut summary = String::new();
    let med = |rs: &[RunResult], f: fn(&RunResult) -> f64| median(&mut rs.iter().map(f).collect::<Vec<_>>());
    let spread = |rs: &[RunResult], f: fn(&RunResult) -> f64| {
        let v: Vec<f64> = rs.iter().map(f).collect();
        let (lo, hi) = (
            v.iter().copied().fold(f64::INFINITY, f64::min),
            v.iter().copied().fold(0.0, f64::max),
        );
        (lo, hi)
    };
    writeln!(summary, "\nmedians of {} runs (min..max):", opts.reps).unwrap();
    writeln!(
        summary,
        "{:40} {:>22} {:>18} {:>18} {:>22}",
        "configuration", "requests/s", "p50 µs", "p99 µs", "server CPU µs/req"
    )
    .unwrap();
    let mut medians = BTreeMap::new();
    for (config, rs) in &results {
        let (rps, p50, p99, cpu) = (
            med(rs, |r| r.rps),
            med(rs, |r| r.p50_us),
            med(rs, |r| r.p99_us),
            med(rs, |r| r.cpu_us_per_req),
        );
        let (rl, rh) = spread(rs, |r| r.rps);
        let (pl, ph) = spread(rs, |r| r.p99_us);
        let (cl, ch) = spread(rs, |r| r.cpu_us_per_req);
        writeln!(
            summary,
            "{:40} {:>7.0} ({:>5.0}..{:>5.0}) {:>18.0} {:>6.0} ({:>4.0}..{:>4.0}) {:>6.1} ({:>5.1}..{:>5.1})",
            config.label(),
            rps,
            rl,
            rh,
            med(rs, |r| r.p50_us),
            p99,
            pl,
            ph,
            cpu,
            cl,
            ch
        )
        .unwrap();
        let _ = p50;
        medians.insert(*config, (rps, p99, cpu));
    }
    writeln!(summary, "\nratios (of medians):").unwrap();
    for ids in [Ids::Unique, Ids::Dup20] {
        let receiver = medians.get(&Config {
            server: Server::Receiver(Store::Memory),
            path: "/webhooks/klikit",
            ids,
        });
        let twin = medians.get(&Config {
            server: Server::Twin,
            path: "/webhooks/klikit",
            ids,
        });
        if let (Some(r), Some(t)) = (receiver, twin) {
            writeln!(
                summary,
                "  {:7} receiver/twin: requests/s {:.3} (target >= 0.90), p99 {:.2}x (target <= 1.2), \
                 CPU/req {:.3}x (target <= 1.10)",
                format!("{ids:?}"),
                r.0 / t.0,
                r.1 / t.1,
                r.2 / t.2
            )
            .unwrap();
        }
    }
    for store in [Store::Sqlite, Store::Redis, Store::Postgres] {
        let with_store = medians.get(&Config {
            server: Server::Receiver(store),
            path: "/webhooks/klikit",
            ids: Ids::Unique,
        });
        let twin = medians.get(&Config {
            server: Server::Twin,
            path: "/webhooks/klikit",
            ids: Ids::Unique,
        });
        if let (Some(r), Some(t)) = (with_store, twin) {
            writeln!(
                summary,
                "  {:?} receiver/twin (in-memory set): requests/s {:.3}, p99 {:.2}x, CPU/req {:.3}x",
                store,
                r.0 / t.0,
                r.1 / t.1,
                r.2 / t.2
            )
            .unwrap();
        }
    }
    let receiver = medians.get(&Config {
        server: Server::Receiver(Store::Memory),
        path: "/webhooks/klikit",
        ids: Ids::Unique,
    });
    let flask = medians.get(&Config {
        server: Server::Flask,
        path: "/webhooks/klikit",
        ids: Ids::Unique,
    });
    if let (Some(r), Some(f)) = (receiver, flask) {
        writeln!(
            summary,
            "  receiver/flask: requests/s {:.1}x (target >= 15x), CPU/req {:.3}x",
            r.0 / f.0,
            r.2 / f.2
        )
        .unwrap();
    }
    print!("{summary}");

    if opts.soak > 0 {
        for server in [Server::Receiver(Store::Memory), Server::Twin] {
            let samples = soak(server, opts.soak, opts.soak / 10, &opts, &bodies);
            let line: Vec<String> = samples
                .iter()
                .map(|(n, kib)| format!("{}k:{:.1}", n / 1000, *kib as f64 / 1024.0))
                .collect();
            println!(
                "soak {server:?}: {} unique deliveries, RSS MiB by deliveries: {}",
                opts.soak,
                line.join(" ")
            );
        }
    }
}
