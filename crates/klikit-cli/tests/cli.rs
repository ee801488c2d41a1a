//! The `klikit` command-line tool against the receiver on a loopback socket.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use klikit_cli::receiver;
use klikit_webhook::{KlikitWebhookLayer, WebhookSecret, signature::sign};
use tokio::sync::mpsc;

const SECRET: &str = "cli-test-secret-0123456789";
const KLIKIT: &str = env!("CARGO_BIN_EXE_klikit");

async fn start_receiver() -> (String, mpsc::Receiver<klikit_webhook::KlikitEvent>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhooks/klikit", listener.local_addr().unwrap());
    let (jobs, events) = mpsc::channel(receiver::QUEUE_CAPACITY);
    let layer = KlikitWebhookLayer::new(WebhookSecret::new(SECRET).unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver::app(layer, jobs)).await.unwrap() });
    (url, events)
}

/// Runs `klikit` off the async runtime and returns its standard output.
async fn klikit(args: Vec<String>) -> String {
    tokio::task::spawn_blocking(move || {
        let output = Command::new(KLIKIT)
            .args(&args)
            .env("KLIKIT_WEBHOOK_SECRET", SECRET)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    })
    .await
    .unwrap()
}

fn answers(output: &str) -> Vec<String> {
    output
        .lines()
        .filter(|line| line.starts_with('#'))
        .map(|line| line.split_once(' ').unwrap().1.rsplit_once(" (").unwrap().0.to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_repeat_is_received_once_then_ignored_as_duplicate() {
    let (url, mut events) = start_receiver().await;
    let output = klikit(vec![
        "send".into(),
        url,
        "--fixture".into(),
        "status".into(),
        "--repeat".into(),
        "3".into(),
    ])
    .await;
    assert_eq!(
        answers(&output),
        [
            r#"200 {"status":"received"}"#,
            r#"200 {"status":"duplicate-ignored"}"#,
            r#"200 {"status":"duplicate-ignored"}"#
        ],
        "{output}"
    );
    let event = events.recv().await.unwrap();
    assert_eq!(event.event_type().as_str(), "klikit.order.status.updated");
    assert!(event.id().as_str().starts_with("cli-"));
    assert!(events.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_forged_is_refused_and_concurrent_sends_process_once() {
    let (url, mut events) = start_receiver().await;
    let output = klikit(vec!["send".into(), url.clone(), "--forge".into()]).await;
    assert_eq!(answers(&output), [r#"401 {"error":"invalid signature"}"#], "{output}");

    let output = klikit(vec![
        "send".into(),
        url,
        "--event-id".into(),
        "test-concurrent".into(),
        "--concurrency".into(),
        "16".into(),
    ])
    .await;
    let answers = answers(&output);
    assert_eq!(answers.len(), 16, "{output}");
    let received = answers.iter().filter(|a| a.contains(r#""received""#)).count();
    assert_eq!(received, 1, "{output}");
    assert!(
        answers.iter().all(|a| a.starts_with("200 ") || a.starts_with("409 ")),
        "{output}"
    );
    assert_eq!(events.recv().await.unwrap().id().as_str(), "test-concurrent");
    assert!(events.try_recv().is_err());
}

#[test]
fn sign_matches_the_library_and_openssl_recipe() {
    let body = br#"{"brand_id":1,"branch_id":2,"orders":[]}"#;
    let mut child = Command::new(KLIKIT)
        .args(["sign", "-"])
        .env("KLIKIT_WEBHOOK_SECRET", SECRET)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8(output.stdout).unwrap().trim(),
        sign(SECRET.as_bytes(), body)
    );
}

#[test]
fn serve_receives_then_drains_on_sigterm() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Command::new(KLIKIT)
        .arg("serve")
        .env("KLIKIT_WEBHOOK_SECRET", SECRET)
        .env("KLIKIT_STORE", "memory")
        .env("PORT", port.to_string())
        .env("BIND", "127.0.0.1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/webhooks/klikit");
    let mut sent = None;
    for _ in 0..100 {
        let output = Command::new(KLIKIT)
            .args(["send", &url, "--fixture", "created"])
            .env("KLIKIT_WEBHOOK_SECRET", SECRET)
            .output()
            .unwrap();
        let stdout = String::from_utf8(output.stdout).unwrap();
        if stdout.contains(r#"200 {"status":"received"}"#) {
            sent = Some(stdout);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(sent.is_some(), "the server came up and received the event");
    let status = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = server.wait_with_output().unwrap();
    let logs = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{logs}");
    let processed = logs.find("order created: ticket sent to the kitchen").expect(&logs);
    let drained = logs.find("worker drained").expect(&logs);
    assert!(processed < drained, "{logs}");
    assert!(
        logs.contains("orders=2"),
        "brand, branch and order count are logged: {logs}"
    );
}

#[test]
fn serve_exposes_prometheus_metrics_on_a_separate_route() {
    let (mut server, url) = spawn_server("memory");
    let port: u16 = url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let send = |args: &[&str]| {
        let output = Command::new(KLIKIT)
            .args(["send", &url])
            .args(args)
            .env("KLIKIT_WEBHOOK_SECRET", SECRET)
            .output()
            .unwrap();
        String::from_utf8(output.stdout).unwrap()
    };
    assert!(send(&["--repeat", "2"]).contains("duplicate-ignored"));
    send(&["--forge"]);
    let metrics = scrape(port);
    let _ = server.kill();
    let _ = server.wait();
    for line in [
        r#"klikit_webhook_deliveries_total{outcome="processed"} 1"#,
        r#"klikit_webhook_deliveries_total{outcome="duplicate"} 1"#,
        r#"klikit_webhook_deliveries_total{outcome="invalid_signature"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    assert!(
        metrics.contains("klikit_webhook_delivery_duration_seconds"),
        "{metrics}"
    );
}

/// `GET /metrics` with a raw HTTP/1.1 request.
fn scrape(port: u16) -> String {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer
}

/// Starts `klikit serve` on a free port with `store`, waits until it answers.
fn spawn_server(store: &str) -> (std::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(KLIKIT)
        .arg("serve")
        .env("KLIKIT_WEBHOOK_SECRET", SECRET)
        .env("KLIKIT_STORE", store)
        .env("PORT", port.to_string())
        .env("BIND", "127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (child, format!("http://127.0.0.1:{port}/webhooks/klikit"));
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("klikit serve did not come up");
}

fn send_once(url: &str, id: &str) -> String {
    let output = Command::new(KLIKIT)
        .args(["send", url, "--event-id", id])
        .env("KLIKIT_WEBHOOK_SECRET", SECRET)
        .output()
        .unwrap();
    answers(&String::from_utf8(output.stdout).unwrap()).join("\n")
}

/// A real process restart with the embedded store: the event processed
/// before the restart is a duplicate after it; with `memory` it is not.
#[test]
fn restarted_receiver_still_ignores_what_it_processed() {
    let dir = std::env::temp_dir().join(format!("klikit-cli-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dedup.sqlite3");
    let store = path.to_str().unwrap();
    for (store, after_restart) in [
        (store, r#"200 {"status":"duplicate-ignored"}"#),
        ("memory", r#"200 {"status":"received"}"#),
    ] {
        let (mut server, url) = spawn_server(store);
        assert_eq!(send_once(&url, "test-restart"), r#"200 {"status":"received"}"#);
        Command::new("kill")
            .args(["-TERM", &server.id().to_string()])
            .status()
            .unwrap();
        assert!(server.wait().unwrap().success());
        let (mut server, url) = spawn_server(store);
        assert_eq!(send_once(&url, "test-restart"), after_restart, "store {store}");
        let _ = server.kill();
        let _ = server.wait();
    }
    let _ = std::fs::remove_dir_all(dir);
}
