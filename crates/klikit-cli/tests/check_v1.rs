//! `klikit check --scheme klikit-v1` against real endpoints on loopback: the
//! reference receiver under Partner API v1 passes every check, restart
//! included (SQLite store); a v1 receiver in Python passes everything but the
//! restart (its ids are in memory); one that ignores the signed timestamp
//! fails the refusals check on exactly the stale and future rows.
//!
//! `klikit serve` has no setting for the scheme in this tree, so the v1
//! reference receiver is the same receiver ([`klikit_cli::receiver::serve`],
//! configured from the same environment by
//! [`klikit_cli::receiver::layer_from_env`]) with
//! `.with_scheme(KlikitV1::new())`, run as a child process: this test binary
//! running [`serve_v1_reference_receiver`].

#[path = "check/harness.rs"]
mod harness;

use std::process::Command;

use harness::{ALL_CHECKS, Endpoint, KLIKIT, SECRET, labels, python};
use klikit_webhook::scheme::KlikitV1;

/// Set in the environment of the child that serves the v1 reference receiver.
const SERVE_ENV: &str = "KLIKIT_CHECK_TEST_SERVE_V1";
/// The refusals' labels for the two timestamps.
const STALE: &str = "stale timestamp (t = now - 600)";
const FUTURE: &str = "future timestamp (t = now + 600)";

#[test]
#[ignore = "not a test: the v1 reference receiver, which the other tests run as a child process"]
fn serve_v1_reference_receiver() {
    if std::env::var_os(SERVE_ENV).is_none() {
        return;
    }
    let port: u16 = std::env::var("PORT").unwrap().parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let layer = klikit_cli::receiver::layer_from_env()
            .await
            .unwrap()
            .with_scheme(KlikitV1::new());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        klikit_cli::receiver::serve(listener, layer).await.unwrap();
    });
}

/// The v1 reference receiver with the dedup store `store` (a `KLIKIT_STORE`
/// value), started (and restarted) as a child process.
fn v1_reference(name: &str, store: &str) -> Endpoint {
    let exe = std::env::current_exe().unwrap();
    let command = [
        exe.to_str().unwrap(),
        "serve_v1_reference_receiver",
        "--exact",
        "--ignored",
        "--nocapture",
    ];
    Endpoint::start(name, &command, &[(SERVE_ENV, "1"), ("KLIKIT_STORE", store)])
}

#[test]
fn v1_reference_receiver_passes_every_check_including_restart_with_sqlite() {
    let store = std::env::temp_dir().join(format!("klikit-check-v1-dedup-{}.sqlite3", std::process::id()));
    let store = store.to_string_lossy().into_owned();
    let endpoint = v1_reference("v1-reference", &store);
    let restart = endpoint.restart_command();
    let args = [
        "--scheme",
        "klikit-v1",
        "--subscription",
        "wh_check",
        "--restart",
        &restart,
    ];
    let (report, ok) = endpoint.check(&args);
    let names: Vec<&str> = report.checks().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ALL_CHECKS);
    report.assert_verdicts(&[]);
    assert!(ok, "exit status 0 when no check failed");
    assert_eq!(report.0["scheme"], "klikit-v1");

    let fixtures = report.check("fixtures");
    let accepted = labels(fixtures, true);
    assert_eq!(accepted.len(), 13, "{fixtures:#}");
    assert_eq!(
        accepted[..7],
        [
            "order.placed.v1",
            "order.updated.v1",
            "order.cancelled.v1",
            "order.amended.v1",
            "order.courier_assigned.v1",
            "order.picked_up.v1",
            "order.delivered.v1",
        ]
    );
    for shape in [
        "single_item_dine_in",
        "single_item_delivery",
        "multi_item_with_modifiers",
        "large_basket",
        "cancellation_flow: placed",
        "cancellation_flow: cancelled",
    ] {
        assert!(
            accepted.iter().any(|label| label.contains(shape)),
            "{shape}: {fixtures:#}"
        );
    }
    assert_eq!(labels(report.check("raw-body"), true).len(), 7);

    let refusals = report.check("refusals");
    assert_eq!(labels(refusals, false).len(), 8, "{refusals:#}");
    for seen in refusals["seen"].as_array().unwrap() {
        if [STALE, FUTURE].contains(&seen["label"].as_str().unwrap()) {
            assert_eq!(seen["status"], 401, "{seen}");
            assert_eq!(seen["body"], r#"{"error":"timestamp outside the tolerance"}"#, "{seen}");
        }
    }
    let unknown = &report.check("unknown-type")["seen"][0];
    assert_eq!(unknown["label"], "order.check_unknown.v1");
    let restart = report.check("restart");
    assert!(
        restart["summary"].as_str().unwrap().contains("still a duplicate"),
        "{restart:#}"
    );
    drop(endpoint);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{store}{suffix}"));
    }
}

#[test]
fn v1_table_output_and_subscription_only_with_v1() {
    let endpoint = v1_reference("v1-table", "memory");
    let output = Command::new(KLIKIT)
        .args(["check", &endpoint.url(), "--scheme", "klikit-v1"])
        .args(["--only", "fixtures,refusals"])
        .envs(endpoint.env.iter().map(|(k, v)| (*k, v)))
        .output()
        .unwrap();
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{table}");
    assert!(table.contains("(scheme klikit-v1)"), "{table}");
    assert!(table.contains("13 of 13 fixtures accepted"), "{table}");
    assert!(table.contains("8 of 8 refused"), "{table}");
    assert!(table.contains("large_basket (15 items)"), "{table}");
    assert!(
        table.contains(r#"401 {"error":"timestamp outside the tolerance"}"#),
        "{table}"
    );
    assert!(table.contains("2 passed, 0 advice, 0 failed, 7 skipped"), "{table}");

    let output = Command::new(KLIKIT)
        .args(["check", &endpoint.url(), "--secret", SECRET, "--subscription", "wh_1"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("--subscription is for --scheme klikit-v1"), "{stderr}");
    assert!(output.stdout.is_empty(), "nothing was sent");
}

#[test]
fn python_v1_receiver_passes_everything_except_restart() {
    let endpoint = python("v1_style");
    let restart = endpoint.restart_command();
    let (report, ok) = endpoint.check(&["--scheme", "klikit-v1", "--restart", &restart]);
    report.assert_verdicts(&[("body-limit", "advice"), ("restart", "fail")]);
    assert!(!ok);
    let restart = report.check("restart");
    assert!(
        restart["summary"].as_str().unwrap().contains("answered as new"),
        "{restart:#}"
    );
}

#[test]
fn v1_receiver_ignoring_the_timestamp_fails_only_the_timestamp_refusals() {
    let endpoint = python("v1_ignores_timestamp");
    let (report, ok) = endpoint.check(&["--scheme", "klikit-v1"]);
    report.assert_verdicts(&[("refusals", "fail"), ("body-limit", "advice"), ("restart", "skip")]);
    assert!(!ok);
    let refusals = report.check("refusals");
    assert_eq!(labels(refusals, true), [STALE, FUTURE], "{refusals:#}");
    assert_eq!(labels(refusals, false).len(), 6, "the other refusals still refused");
    assert!(
        refusals["summary"]
            .as_str()
            .unwrap()
            .starts_with("2 of 8 accepted (2xx)"),
        "{refusals:#}"
    );
    let note = refusals["note"].as_str().unwrap();
    assert!(
        note.contains("timestamp is not checked") && note.contains("300 s"),
        "{note}"
    );
}
