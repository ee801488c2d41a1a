//! `klikit check` against real endpoints on loopback: the reference receiver
//! (`klikit serve`, SQLite store) passes every check, restart included, and
//! each receiver of `tests/flawed/` fails exactly the check meant to catch
//! its mistake. The harness is in `check/harness.rs`.

#[path = "check/harness.rs"]
mod harness;

use std::process::Command;

use harness::{ALL_CHECKS, Endpoint, KLIKIT, SECRET, labels, python};

#[test]
fn reference_receiver_passes_every_check_including_restart_with_sqlite() {
    let store = std::env::temp_dir().join(format!("klikit-check-dedup-{}.sqlite3", std::process::id()));
    let store = store.to_string_lossy().into_owned();
    let endpoint = Endpoint::start("reference", &[KLIKIT, "serve"], &[("KLIKIT_STORE", &store)]);
    let (report, ok) = endpoint.check(&["--restart", &endpoint.restart_command()]);
    let names: Vec<&str> = report.checks().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ALL_CHECKS);
    report.assert_verdicts(&[]);
    assert!(ok, "exit status 0 when no check failed");
    assert_eq!(report.0["ok"], true);
    let restart = report.check("restart");
    assert!(
        restart["summary"].as_str().unwrap().contains("still a duplicate"),
        "{restart:#}"
    );
    let last = restart["seen"].as_array().unwrap().last().unwrap();
    assert_eq!(last["status"], 200, "{restart:#}");
    assert!(
        last["body"].as_str().unwrap().contains("duplicate-ignored"),
        "{restart:#}"
    );
    let latency = &report.check("deadline")["latency"];
    assert_eq!(latency["samples"], 50, "{latency}");
    assert!(latency["p99_ms"].as_f64().unwrap() <= latency["max_ms"].as_f64().unwrap());
    drop(endpoint);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{store}{suffix}"));
    }
}

#[test]
fn table_output_and_the_other_scheme_refused() {
    let endpoint = Endpoint::start("table", &[KLIKIT, "serve"], &[("KLIKIT_STORE", "memory")]);
    let output = Command::new(KLIKIT)
        .args(["check", &endpoint.url(), "--only", "fixtures,refusals"])
        .envs(endpoint.env.iter().map(|(k, v)| (*k, v)))
        .output()
        .unwrap();
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{table}");
    assert!(table.contains("CHECK         RESULT  WHAT IT SAW"), "{table}");
    assert!(table.contains(r#"200 {"status":"received"}"#), "{table}");
    assert!(table.contains(r#"401 {"error":"invalid signature"}"#), "{table}");
    assert!(table.contains("2 passed, 0 advice, 0 failed, 7 skipped"), "{table}");

    let output = Command::new(KLIKIT)
        .args(["check", &endpoint.url(), "--scheme", "klikit-v1", "--only", "fixtures"])
        .envs(endpoint.env.iter().map(|(k, v)| (*k, v)))
        .output()
        .unwrap();
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(
        !output.status.success(),
        "a receiver of today's scheme refuses v1 deliveries: {table}"
    );
    assert!(
        table.contains("fixtures      FAIL    13 of 13 fixtures not accepted"),
        "{table}"
    );
    assert!(
        table.contains(r#"400 {"error":"missing header x-klikit-event-type"}"#),
        "{table}"
    );
}

#[test]
fn docs_style_receiver_passes_everything_except_restart() {
    let endpoint = python("docs_style");
    let (report, ok) = endpoint.check(&["--restart", &endpoint.restart_command()]);
    report.assert_verdicts(&[("body-limit", "advice"), ("restart", "fail")]);
    assert!(!ok, "a failed check fails the run");
    assert_eq!(report.0["ok"], false);
    let restart = report.check("restart");
    assert!(
        restart["summary"].as_str().unwrap().contains("answered as new"),
        "{restart:#}"
    );
    assert!(restart["fix"].as_str().unwrap().contains("persistent store"));
}

#[test]
fn in_memory_ids_fail_only_restart() {
    let endpoint = python("in_memory");
    let (report, _) = endpoint.check(&["--restart", &endpoint.restart_command()]);
    report.assert_verdicts(&[("restart", "fail")]);
    let restart = report.check("restart");
    let seen = restart["seen"].as_array().unwrap();
    let last = seen.last().unwrap();
    assert_eq!(
        (last["status"].as_u64(), last["body"].as_str()),
        (Some(202), Some(r#"{"accepted":true}"#))
    );
    assert!(
        seen.iter().any(|s| s["body"] == r#"{"duplicate":true}"#),
        "it named the duplicate before the restart: {restart:#}"
    );
}

#[test]
fn reserialising_receiver_fails_only_raw_body() {
    let endpoint = python("reserialises");
    let (report, ok) = endpoint.check(&[]);
    report.assert_verdicts(&[("raw-body", "fail"), ("body-limit", "advice"), ("restart", "skip")]);
    assert!(!ok);
    let raw_body = report.check("raw-body");
    // Compact output with key order and non-ASCII kept: those two survive.
    assert_eq!(
        labels(raw_body, false),
        [
            "whitespace",
            "unicode-escapes",
            "decimal-84.50",
            "exponent-1e2",
            "trailing-newline"
        ],
        "{raw_body:#}"
    );
    assert_eq!(labels(raw_body, true), ["key-order", "non-ascii"]);
    assert!(raw_body["fix"].as_str().unwrap().contains("re-serialised body"));
}

#[test]
fn receiver_refusing_unknown_types_fails_only_unknown_type() {
    let endpoint = python("refuses_unknown");
    let (report, _) = endpoint.check(&[]);
    report.assert_verdicts(&[("unknown-type", "fail"), ("body-limit", "advice"), ("restart", "skip")]);
    let seen = &report.check("unknown-type")["seen"][0];
    assert_eq!(seen["status"], 400, "{seen}");
    assert_eq!(seen["label"], "klikit.order.check-unknown-type.v1");
}

#[test]
fn slow_receiver_fails_only_the_deadline() {
    let endpoint = python("slow");
    let (report, _) = endpoint.check(&["--only", "refusals,deadline"]);
    let mut expected: Vec<(&str, &str)> = ALL_CHECKS.iter().map(|name| (*name, "skip")).collect();
    expected.retain(|(name, _)| !["refusals", "deadline"].contains(name));
    expected.push(("deadline", "fail"));
    report.assert_verdicts(&expected);
    let deadline = report.check("deadline");
    let late = &deadline["seen"][0];
    assert_eq!(late["status"], 200, "a 200, but late: {deadline:#}");
    assert!(late["ms"].as_f64().unwrap() >= 11_000.0, "{deadline:#}");
    assert_eq!(
        deadline["latency"]["samples"], 1,
        "the burst stops at the first late reply"
    );
}

#[test]
fn receiver_expecting_one_order_fails_only_fixtures() {
    let endpoint = python("single_order");
    let (report, _) = endpoint.check(&[]);
    report.assert_verdicts(&[("fixtures", "fail"), ("restart", "skip")]);
    assert_eq!(labels(report.check("fixtures"), false), ["klikit.order.created.v2"]);
}

#[test]
fn prefix_comparing_receiver_fails_only_refusals() {
    let endpoint = python("prefix_compare");
    let (report, _) = endpoint.check(&[]);
    report.assert_verdicts(&[("refusals", "fail"), ("body-limit", "advice"), ("restart", "skip")]);
    assert_eq!(
        labels(report.check("refusals"), true),
        ["signature truncated to 62 digits"]
    );
}

#[test]
fn receiver_answering_duplicates_409_fails_only_duplicate() {
    let endpoint = python("conflict_on_duplicate");
    let (report, _) = endpoint.check(&[]);
    report.assert_verdicts(&[
        ("duplicate", "fail"),
        ("concurrency", "advice"),
        ("body-limit", "advice"),
        ("restart", "skip"),
    ]);
    let duplicate = report.check("duplicate");
    assert_eq!(duplicate["seen"][1]["status"], 409, "{duplicate:#}");
    let concurrency = report.check("concurrency");
    assert!(
        concurrency["note"].as_str().unwrap().contains("Retry-After"),
        "{concurrency:#}"
    );
}

#[test]
fn racy_receiver_fails_only_concurrency() {
    let endpoint = python("racy");
    let (report, _) = endpoint.check(&[]);
    report.assert_verdicts(&[("concurrency", "fail"), ("body-limit", "advice"), ("restart", "skip")]);
    let concurrency = report.check("concurrency");
    assert!(
        concurrency["summary"]
            .as_str()
            .unwrap()
            .contains("processed more than once"),
        "{concurrency:#}"
    );
}

#[test]
fn nothing_listening_is_one_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = Command::new(KLIKIT)
        .args([
            "check",
            &format!("http://127.0.0.1:{port}/webhooks/klikit"),
            "--secret",
            SECRET,
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("nothing answered HTTP there"), "{stderr}");
}
