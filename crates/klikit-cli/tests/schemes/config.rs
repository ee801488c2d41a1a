//! Bad values of `KLIKIT_SCHEME`, `KLIKIT_TOLERANCE_SECS`,
//! `KLIKIT_WEBHOOK_SECRETS_FILE` and the secrets stop the receiver before it
//! listens: a non-zero exit, one line on stderr naming the variable, and
//! never a secret.

use crate::server::{TempFile, refuses_to_start};

const SECRET: &str = "config-test-s3cr3t-0123456789";

/// Every secret value the cases below use: none may be printed.
const SECRETS: [&str; 5] = [SECRET, "s3cr3t-one", "s3cr3t-two", "s3cr3t-three", "s3cr3t-not-base64!"];

fn assert_refused(env: &[(&str, &str)], expected: &str) {
    let (code, stderr, stdout) = refuses_to_start(env);
    assert!(code.is_some_and(|code| code != 0), "{env:?}: exit {code:?}, {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{env:?}: one line:\n{stderr}");
    assert!(stderr.starts_with("klikit: "), "{env:?}: {stderr}");
    assert!(stderr.contains(expected), "{env:?}: {expected:?} missing from {stderr}");
    for secret in SECRETS {
        assert!(!stderr.contains(secret), "{env:?} printed a secret: {stderr}");
        assert!(!stdout.contains(secret), "{env:?} logged a secret: {stdout}");
    }
}

#[test]
fn bad_scheme_names() {
    for (value, expected) in [
        (
            "bogus",
            r#"KLIKIT_SCHEME: unknown scheme "bogus"; use klikit (the default), klikit-v1 or standard-webhooks"#,
        ),
        ("Klikit", r#"unknown scheme "Klikit""#),
        ("klikit,v1", r#"unknown scheme "v1""#),
        ("klikit,", r#"KLIKIT_SCHEME="klikit," names no scheme there"#),
        ("", r#"KLIKIT_SCHEME="" names no scheme there"#),
        ("klikit-v1, klikit-v1", "names klikit-v1 twice"),
    ] {
        assert_refused(&[("KLIKIT_SCHEME", value), ("KLIKIT_WEBHOOK_SECRET", SECRET)], expected);
    }
}

#[test]
fn bad_tolerances() {
    for value in ["abc", "1.5", "-5", "", "300s", " 300"] {
        assert_refused(
            &[
                ("KLIKIT_SCHEME", "klikit-v1"),
                ("KLIKIT_TOLERANCE_SECS", value),
                ("KLIKIT_WEBHOOK_SECRET", SECRET),
            ],
            &format!("KLIKIT_TOLERANCE_SECS={value:?} is not a whole number of seconds (the default is 300)"),
        );
    }
    assert_refused(
        &[("KLIKIT_TOLERANCE_SECS", "0"), ("KLIKIT_WEBHOOK_SECRET", SECRET)],
        "KLIKIT_TOLERANCE_SECS=0 would refuse every delivery",
    );
    assert_refused(
        &[
            ("KLIKIT_TOLERANCE_SECS", "99999999999999999999999"),
            ("KLIKIT_WEBHOOK_SECRET", SECRET),
        ],
        r#"KLIKIT_TOLERANCE_SECS="99999999999999999999999" is too large"#,
    );
}

#[test]
fn bad_secrets_files() {
    let v1 = ("KLIKIT_SCHEME", "klikit-v1");
    let missing = std::env::temp_dir().join("klikit-schemes-no-such-file.json");
    assert_refused(
        &[v1, ("KLIKIT_WEBHOOK_SECRETS_FILE", missing.to_str().unwrap())],
        "cannot read it",
    );
    assert_refused(
        &[v1, ("KLIKIT_WEBHOOK_SECRETS_FILE", "")],
        "KLIKIT_WEBHOOK_SECRETS_FILE is empty",
    );
    for (text, expected) in [
        (r#"{"wh_1": ["s3cr3t-one""#, "not valid JSON: EOF while parsing"),
        (r#"{"wh_1": ["s3cr3t-one"],}"#, "not valid JSON: trailing comma"),
        (r#"["s3cr3t-one"]"#, "not a JSON object"),
        (r#""s3cr3t-one""#, "not a JSON object"),
        ("{}", "names no subscription"),
        (r#"{"wh_1": []}"#, r#"subscription "wh_1" has no secrets"#),
        (
            r#"{"wh_1": "s3cr3t-two"}"#,
            r#"subscription "wh_1": its secrets must be a list of strings"#,
        ),
        (
            r#"{"wh_1": {"s3cr3t-two": 1}}"#,
            r#"subscription "wh_1": its secrets must be a list of strings"#,
        ),
        (
            r#"{"wh_1": ["s3cr3t-three", 7]}"#,
            r#"subscription "wh_1": secret 2 is not a string"#,
        ),
        (
            r#"{"wh_1": ["s3cr3t-three", ""]}"#,
            r#"subscription "wh_1": secret 2: the Klikit webhook secret is empty"#,
        ),
        (
            r#"{"": ["s3cr3t-one"]}"#,
            r#"subscription id "" cannot be an X-Klikit-Webhook-Id"#,
        ),
        (
            r#"{"wh 1": ["s3cr3t-one"]}"#,
            r#"subscription id "wh 1" cannot be an X-Klikit-Webhook-Id"#,
        ),
    ] {
        let file = TempFile::with(text);
        let expected = format!("KLIKIT_WEBHOOK_SECRETS_FILE={:?}: {expected}", file.as_str());
        assert_refused(&[v1, ("KLIKIT_WEBHOOK_SECRETS_FILE", file.as_str())], &expected);
    }
}

#[test]
fn secrets_that_do_not_fit_the_schemes() {
    let file = TempFile::with(r#"{"wh_1": ["s3cr3t-one"]}"#);
    let with_file = ("KLIKIT_WEBHOOK_SECRETS_FILE", file.as_str());
    assert_refused(&[with_file], "KLIKIT_WEBHOOK_SECRETS_FILE needs klikit-v1");
    assert_refused(
        &[("KLIKIT_SCHEME", "standard-webhooks"), with_file],
        "KLIKIT_WEBHOOK_SECRETS_FILE needs klikit-v1",
    );
    assert_refused(
        &[("KLIKIT_SCHEME", "klikit,klikit-v1"), with_file],
        "KLIKIT_SCHEME includes klikit, whose deliveries name no subscription; set KLIKIT_WEBHOOK_SECRET",
    );
    assert_refused(
        &[
            ("KLIKIT_SCHEME", "standard-webhooks"),
            ("KLIKIT_WEBHOOK_SECRET", "s3cr3t-not-base64!"),
        ],
        "KLIKIT_WEBHOOK_SECRET: the Standard Webhooks secret is not valid base64",
    );
    assert_refused(&[("KLIKIT_SCHEME", "klikit-v1")], "KLIKIT_WEBHOOK_SECRET is not set");
    assert_refused(
        &[("KLIKIT_WEBHOOK_PREVIOUS_SECRET", "s3cr3t-one")],
        "KLIKIT_WEBHOOK_PREVIOUS_SECRET is set but KLIKIT_WEBHOOK_SECRET is not",
    );
    assert_refused(
        &[("KLIKIT_WEBHOOK_SECRET", "")],
        "KLIKIT_WEBHOOK_SECRET: the Klikit webhook secret is empty",
    );
}
