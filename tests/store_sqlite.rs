//! The conformance suite against [`SqliteStore`] on temporary files, and
//! what is particular to it: migration of an older table, URLs, the group
//! commit of its writer thread (one failing operation in a group fails
//! alone), a closed store answering errors, and two processes sharing a
//! file.
#![cfg(all(feature = "sqlite", feature = "test-util"))]

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use futures_util::future::join_all;

use klikit_webhook::{
    ConfigError, EventId, SqliteStore,
    store::{BodyDigest, Claim, DedupStore, Lease},
    testing::conformance::{StoreFactory, namespace},
};

struct Sqlite;

fn path(namespace: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{namespace}.sqlite3"))
}

#[async_trait::async_trait]
impl StoreFactory for Sqlite {
    type Store = SqliteStore;

    /// A new store (writer thread and connection) on the namespace's file,
    /// as a restarted process would open.
    async fn open(&self, namespace: &str) -> SqliteStore {
        SqliteStore::open(path(namespace)).await.expect("open the SQLite file")
    }

    async fn cleanup(&self, namespace: &str) {
        let file = path(namespace);
        for suffix in ["", "-wal", "-shm"] {
            let mut name = file.clone().into_os_string();
            name.push(suffix);
            let _ = std::fs::remove_file(name);
        }
    }
}

async fn factory() -> Option<Sqlite> {
    Some(Sqlite)
}

klikit_webhook::dedup_store_tests!(factory());

fn id(s: &str) -> EventId {
    EventId::new(s).unwrap()
}

fn digest() -> BodyDigest {
    BodyDigest::of(b"{}")
}

/// A table made before completed rows kept a body digest: `migrate` adds
/// the column (twice is fine), old completed rows answer `Done` without a
/// digest, and new completions store theirs.
#[tokio::test]
async fn migrate_adds_the_digest_column_to_an_older_table() {
    let ns = namespace();
    let store = SqliteStore::open(path(&ns))
        .await
        .unwrap()
        .with_table("old_dedup")
        .unwrap();
    let conn = rusqlite::Connection::open(path(&ns)).unwrap();
    conn.execute_batch(
        "CREATE TABLE old_dedup (event_id TEXT PRIMARY KEY NOT NULL, token BLOB NOT NULL, \
         done INTEGER NOT NULL, expires_at INTEGER NOT NULL) WITHOUT ROWID; \
         INSERT INTO old_dedup VALUES ('old', x'00000000000000000000000000000001', 1, 9999999999999);",
    )
    .unwrap();
    drop(conn);
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    let fresh = || Lease::generate(id("old"));
    assert_eq!(
        store.claim(&fresh(), Duration::from_secs(60)).await.unwrap(),
        Claim::Done { digest: None }
    );
    let lease = Lease::generate(id("new"));
    assert_eq!(store.claim(&lease, Duration::from_secs(60)).await.unwrap(), Claim::New);
    assert!(store.complete(&lease, digest(), Duration::from_secs(60)).await.unwrap());
    assert_eq!(
        store
            .claim(&Lease::generate(id("new")), Duration::from_secs(60))
            .await
            .unwrap(),
        Claim::Done { digest: Some(digest()) }
    );
    store.close().await;
    Sqlite.cleanup(&ns).await;
}

#[tokio::test]
async fn url_wal_table_name_and_cleanup() {
    let ns = namespace();
    let url = format!("sqlite://{}", path(&ns).display());
    let store = SqliteStore::connect(&url).await.unwrap();
    assert_eq!(store.path(), Some(path(&ns).as_path()));
    // The journal mode is a property of the file: another connection sees it.
    let conn = rusqlite::Connection::open(path(&ns)).unwrap();
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |row| row.get(0)).unwrap();
    assert_eq!(mode, "wal");
    drop(conn);

    assert_eq!(
        store.clone().with_table("x; DROP TABLE y").unwrap_err(),
        ConfigError::InvalidIdentifier {
            name: "x; DROP TABLE y".into()
        }
    );
    // A second table in the same file is a separate store.
    let other = store.clone().with_table("other_dedup").unwrap();
    other.migrate().await.unwrap();

    for i in 0..5 {
        let lease = Lease::generate(id(&format!("short-{i}")));
        let Claim::New = store.claim(&lease, Duration::from_millis(1)).await.unwrap() else {
            panic!("expected New")
        };
        if i % 2 == 0 {
            store
                .complete(&lease, digest(), Duration::from_millis(1))
                .await
                .unwrap();
        }
    }
    let kept = Lease::generate(id("kept"));
    let Claim::New = store.claim(&kept, Duration::from_secs(60)).await.unwrap() else {
        panic!("expected New")
    };
    assert!(matches!(
        other
            .claim(&Lease::generate(id("kept")), Duration::from_secs(60))
            .await
            .unwrap(),
        Claim::New
    ));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.cleanup().await.unwrap(), 5);
    assert_eq!(store.cleanup().await.unwrap(), 0);
    assert!(store.complete(&kept, digest(), Duration::from_secs(60)).await.unwrap());
    store.close().await;
    Sqlite.cleanup(&ns).await;
}

#[tokio::test]
async fn memory_url_and_bad_urls() {
    let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
    assert_eq!(store.path(), None);
    let lease = Lease::generate(id("m"));
    assert_eq!(store.claim(&lease, Duration::from_secs(60)).await.unwrap(), Claim::New);
    assert!(store.complete(&lease, digest(), Duration::from_secs(60)).await.unwrap());
    for bad in ["postgres://x/y", "sqlite://", "sqlite://x.db?mode=ro"] {
        assert!(SqliteStore::connect(bad).await.is_err(), "{bad}");
    }
    let dir = std::env::temp_dir().join(namespace());
    std::fs::create_dir(&dir).unwrap();
    assert!(SqliteStore::open(&dir).await.is_err(), "a directory is no database");
    std::fs::remove_dir(&dir).unwrap();
}

/// Operations queued while the file is locked by another connection run as
/// one group once it is free. A trigger makes the claim of `bad` fail: that
/// claim alone gets the error, every other one of the group is stored and
/// answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_operation_does_not_fail_its_group() {
    const IDS: usize = 150;
    let ns = namespace();
    let store = SqliteStore::open(path(&ns)).await.unwrap();
    let blocker = rusqlite::Connection::open(path(&ns)).unwrap();
    blocker
        .execute_batch(&format!(
            r#"CREATE TRIGGER refuse_bad BEFORE INSERT ON "{}" WHEN NEW.event_id = 'bad'
               BEGIN SELECT RAISE(ABORT, 'refused by the test trigger'); END;
               BEGIN IMMEDIATE;"#,
            store.table()
        ))
        .unwrap();
    // A completion that lands in the same group as the others.
    let earlier = Lease::generate(id("earlier"));
    let unlock = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        blocker.execute_batch("COMMIT").unwrap();
    });
    let leases: Vec<Lease> = (0..IDS)
        .map(|n| {
            Lease::generate(id(&if n == IDS / 2 {
                "bad".to_owned()
            } else {
                format!("ok-{n}")
            }))
        })
        .chain([earlier.clone()])
        .collect();
    let answers = join_all(leases.iter().map(|lease| store.claim(lease, Duration::from_secs(60)))).await;
    unlock.join().unwrap();
    for (lease, answer) in leases.iter().zip(answers) {
        if lease.event_id().as_str() == "bad" {
            let error = answer.unwrap_err().to_string();
            assert!(error.contains("refused by the test trigger"), "{error}");
        } else {
            assert_eq!(answer.unwrap(), Claim::New, "{}", lease.event_id());
        }
    }
    // Stored: another lease finds each one in flight.
    for lease in &leases {
        let again = store
            .claim(&Lease::generate(lease.event_id().clone()), Duration::from_secs(60))
            .await;
        if lease.event_id().as_str() == "bad" {
            assert!(again.is_err());
        } else {
            assert!(matches!(again.unwrap(), Claim::InFlight { .. }), "{}", lease.event_id());
        }
    }
    assert!(
        store
            .complete(&earlier, digest(), Duration::from_secs(60))
            .await
            .unwrap()
    );
    store.close().await;
    Sqlite.cleanup(&ns).await;
}

/// After `close` (the writer thread has stopped) every operation of the
/// store and its clones answers an error at once, and does not hang.
#[tokio::test]
async fn closed_store_answers_errors() {
    let ns = namespace();
    let store = SqliteStore::open(path(&ns)).await.unwrap();
    let clone = store.clone().with_table("other_dedup").unwrap();
    let lease = Lease::generate(id("after-close"));
    assert_eq!(store.claim(&lease, Duration::from_secs(60)).await.unwrap(), Claim::New);
    store.close().await;
    let within = Duration::from_secs(5);
    let started = Instant::now();
    let claim = tokio::time::timeout(within, clone.claim(&lease, Duration::from_secs(60)))
        .await
        .expect("no hang");
    let error = claim.unwrap_err().to_string();
    assert!(error.contains("writer thread has stopped"), "{error}");
    assert!(
        tokio::time::timeout(within, store.complete(&lease, digest(), Duration::from_secs(60)))
            .await
            .unwrap()
            .is_err()
    );
    assert!(
        tokio::time::timeout(within, store.release(&lease))
            .await
            .unwrap()
            .is_err()
    );
    assert!(tokio::time::timeout(within, store.cleanup()).await.unwrap().is_err());
    assert!(tokio::time::timeout(within, store.migrate()).await.unwrap().is_err());
    store.close().await;
    assert!(started.elapsed() < within);
    Sqlite.cleanup(&ns).await;
}

/// The store's writer and checkpoint threads run under `SCHED_BATCH` (so
/// that a queued operation does not preempt the thread that queued it) and
/// keep the nice value of the thread that opened the store (see
/// `batch_scheduling` in the store's writer module;
/// `sqlite_threads_keep_a_raised_nice_value` runs this test under
/// `nice -n 5`). Other tests' stores may be starting in this process: a
/// store thread fails the test only if it stays under another policy for
/// half a second.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn sqlite_threads_run_under_sched_batch_at_the_process_nice_value() {
    const SCHED_BATCH: &str = "3";
    /// (id, name, policy, nice) of this process's threads, from
    /// `/proc/self/task/<id>/stat` (fields 41 and 19, counted from 1).
    fn threads() -> Vec<(String, String, String, String)> {
        let mut found = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue; // the thread ended
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let id = task.file_name().to_string_lossy().into_owned();
            let name = stat[open + 1..close].to_owned();
            // Fields from the third on, after the name.
            let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            found.push((id, name, rest[38].to_owned(), rest[16].to_owned()));
        }
        found
    }
    // This thread's nice value, which the store's threads inherit and keep.
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let nice: i64 = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(16)
        .unwrap()
        .parse()
        .unwrap();
    let expected_nice = nice.to_string();
    let ns = namespace();
    let store = SqliteStore::open(path(&ns)).await.unwrap();
    let started = Instant::now();
    // Store threads seen under another policy, and when first.
    let mut waiting: std::collections::HashMap<String, Instant> = std::collections::HashMap::new();
    loop {
        let store_threads: Vec<_> = threads()
            .into_iter()
            .filter(|(_, name, ..)| name.starts_with("klikit-sqlite"))
            .collect();
        let mut batch = (0, 0);
        for (id, name, policy, thread_nice) in &store_threads {
            if policy == SCHED_BATCH {
                waiting.remove(id);
                assert_eq!(
                    thread_nice, &expected_nice,
                    "{name}: nice {thread_nice}; the thread that opened the store runs at {nice}"
                );
                match name.as_str() {
                    "klikit-sqlite-w" => batch.0 += 1,
                    "klikit-sqlite-c" => batch.1 += 1,
                    _ => {}
                }
            } else {
                let since = *waiting.entry(id.clone()).or_insert_with(Instant::now);
                assert!(
                    since.elapsed() < Duration::from_millis(500),
                    "{name} (thread {id}) has had policy {policy} for 500 ms; want {SCHED_BATCH} (SCHED_BATCH)"
                );
            }
        }
        // This test's store holds a writer and a checkpoint thread.
        if batch.0 >= 1 && batch.1 >= 1 && waiting.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the SQLite store's threads (id, name, policy, nice): {store_threads:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    store.close().await;
    Sqlite.cleanup(&ns).await;
}

/// The test above, in a child process started under `nice -n 5`: the
/// store's threads keep nice 5 (the policy change does not reset it).
#[cfg(target_os = "linux")]
#[test]
fn sqlite_threads_keep_a_raised_nice_value() {
    let output = Command::new("nice")
        .args(["-n", "5"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "sqlite_threads_run_under_sched_batch_at_the_process_nice_value",
            "--exact",
            "--nocapture",
        ])
        .output()
        .expect("run the test binary under nice");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "the child ran no test: {stdout}");
}

// ---------------------------------------------------------------------------
// Two processes on one file.
// ---------------------------------------------------------------------------

const CHILD_ENV: &str = "KLIKIT_SQLITE_CHILD";
const SHARED_IDS: usize = 400;

/// Claims `shared-0..SHARED_IDS` with 16 at a time, completes what it won,
/// prints `WON <id>` for each, and returns how many it won.
async fn claim_all(store: &SqliteStore) -> Vec<String> {
    use futures_util::{StreamExt, stream};
    stream::iter(0..SHARED_IDS)
        .map(|n| async move {
            let lease = Lease::generate(id(&format!("shared-{n}")));
            match store.claim(&lease, Duration::from_secs(60)).await.unwrap() {
                Claim::New => {
                    assert!(store.complete(&lease, digest(), Duration::from_secs(60)).await.unwrap());
                    Some(lease.event_id().to_string())
                }
                Claim::InFlight { .. } | Claim::Done { .. } => None,
            }
        })
        .buffer_unordered(16)
        .filter_map(|won| async move { won })
        .collect()
        .await
}

/// The child process of [`two_processes_share_one_file`]: `KLIKIT_SQLITE_CHILD`
/// names the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of two_processes_share_one_file"]
async fn sqlite_child_entry() {
    let Ok(file) = std::env::var(CHILD_ENV) else {
        eprintln!("sqlite_child_entry: {CHILD_ENV} not set; nothing to do");
        return;
    };
    let store = SqliteStore::open(&file).await.unwrap();
    for won in claim_all(&store).await {
        println!("WON {won}");
    }
    store.close().await;
}

/// This process and a child process (this test binary again) claim the
/// same 400 ids on one file at the same time, each with its own writer
/// thread and connection: every id is won exactly once, by one of them, and
/// neither gets an error (the busy timeout queues their transactions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_file() {
    let ns = namespace();
    let file = path(&ns);
    // Create the file and the table before both start.
    let store = SqliteStore::open(&file).await.unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "sqlite_child_entry", "--ignored", "--nocapture"])
        .env(CHILD_ENV, &file)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let ours = claim_all(&store).await;
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(output.status.success(), "the child failed");
    let theirs: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| line.strip_prefix("WON ").map(str::to_owned))
        .collect();
    let mut all: Vec<&String> = ours.iter().chain(&theirs).collect();
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(before, all.len(), "no id won twice");
    assert_eq!(all.len(), SHARED_IDS, "every id won once");
    eprintln!("this process won {}, the child {}", ours.len(), theirs.len());
    store.close().await;
    Sqlite.cleanup(&ns).await;
}

/// Four stores on one file (four writer threads and connections, as four
/// processes would have) claim the same ids, whose rows exist but expired,
/// one at a time each (a claim alone runs in autocommit, so another
/// connection can write between its statements): each id is taken over by
/// exactly one of them, the others see it in flight, and none errs. Then
/// the same with rows that were completed and expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_rows_are_taken_over_once_by_racing_stores_on_one_file() {
    const IDS: usize = 200;
    let ns = namespace();
    let file = path(&ns);
    let first = SqliteStore::open(&file).await.unwrap();
    let mut stores = vec![first.clone()];
    for _ in 0..3 {
        stores.push(SqliteStore::open(&file).await.unwrap());
    }
    for completed in [false, true] {
        let prefix = if completed { "done" } else { "held" };
        for n in 0..IDS {
            let lease = Lease::generate(id(&format!("{prefix}-{n}")));
            assert_eq!(first.claim(&lease, Duration::from_millis(1)).await.unwrap(), Claim::New);
            if completed {
                assert!(
                    first
                        .complete(&lease, digest(), Duration::from_millis(1))
                        .await
                        .unwrap()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let claims = stores.iter().map(|store| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut won = Vec::new();
                for n in 0..IDS {
                    let lease = Lease::generate(id(&format!("{prefix}-{n}")));
                    match store.claim(&lease, Duration::from_secs(60)).await.unwrap() {
                        Claim::New => won.push(n),
                        Claim::InFlight { .. } => {}
                        Claim::Done { .. } => panic!("{prefix}-{n}: an expired row answered Done"),
                    }
                }
                won
            })
        });
        let mut won: Vec<usize> = join_all(claims).await.into_iter().flat_map(Result::unwrap).collect();
        won.sort_unstable();
        assert_eq!(
            won,
            (0..IDS).collect::<Vec<_>>(),
            "{prefix}: every id taken over exactly once"
        );
    }
    for store in stores {
        store.close().await;
    }
    Sqlite.cleanup(&ns).await;
}
