//! `klikit sign --scheme …` and `klikit send --scheme …`, checked against
//! the library and the specification's vector, and used end to end against
//! the receiver.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use http::HeaderMap;
use klikit_webhook::{
    WebhookSecret,
    payload::v1::fixtures,
    scheme::{KlikitV1, Outgoing, Scheme},
    signature::sign,
};

use crate::{
    klikit_v1::{assert_typed, envelope},
    server::{DUPLICATE, INVALID_SIGNATURE, KLIKIT, OUT_OF_TOLERANCE, RECEIVED, Served, TempFile, headers, now},
    standard_webhooks::{self, sw_server},
};

const SECRET: &str = "cli-schemes-secret-0123456789";

/// `klikit sign args` of `body`: the one line it printed.
fn signature(args: &[&str], body: &str) -> String {
    let run = klikit(&[&["sign"], args].concat(), body.as_bytes());
    assert_eq!(run.code, Some(0), "{args:?}: {}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 1, "{}", run.stdout);
    run.stdout.trim_end().to_owned()
}

#[test]
fn sign_klikit_v1_prints_t_and_v1_hex() {
    let body = fixtures::ORDER_PLACED;
    let printed = signature(
        &["--scheme", "klikit-v1", "--secret", SECRET, "--timestamp", "1747303200"],
        body,
    );
    let hex = sign(SECRET.as_bytes(), format!("1747303200.{body}").as_bytes());
    assert_eq!(printed, format!("t=1747303200,v1={hex}"));
    let mut headers = HeaderMap::new();
    let outgoing = Outgoing::new("", "", body.as_bytes()).with_timestamp(1_747_303_200);
    KlikitV1::new().sign(&WebhookSecret::new(SECRET).unwrap(), &outgoing, &mut headers);
    assert_eq!(headers["x-klikit-signature"], printed.as_str(), "the library agrees");
}

#[test]
fn sign_standard_webhooks_matches_the_specification_vector() {
    let printed = signature(
        &[
            "--scheme",
            "standard-webhooks",
            "--secret",
            standard_webhooks::SECRET,
            "--id",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "--timestamp",
            "1614265330",
        ],
        r#"{"test": 2432232314}"#,
    );
    assert_eq!(printed, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
}

#[test]
fn sign_defaults_today_hex_and_the_timestamp_to_now() {
    let body = r#"{"brand_id":1,"branch_id":2,"orders":[]}"#;
    let hex = sign(SECRET.as_bytes(), body.as_bytes());
    assert_eq!(signature(&["--secret", SECRET], body), hex);
    assert_eq!(signature(&["--scheme", "klikit", "--secret", SECRET], body), hex);

    let before = now();
    let printed = signature(&["--scheme", "klikit-v1", "--secret", SECRET], body);
    let after = now();
    let (t, _) = printed.strip_prefix("t=").unwrap().split_once(",v1=").unwrap();
    let t: i64 = t.parse().unwrap();
    assert!((before..=after).contains(&t), "{t} is now ({before}..={after})");
}

#[test]
fn sign_and_send_refuse_options_their_scheme_does_not_use() {
    for (args, expected) in [
        (
            vec!["sign", "--scheme", "klikit-v1", "--id", "x"],
            "--id: the klikit-v1 scheme signs no message id",
        ),
        (
            vec!["sign", "--scheme", "standard-webhooks"],
            "--id is required with --scheme standard-webhooks",
        ),
        (
            vec!["sign", "--timestamp", "5"],
            "--timestamp: the klikit scheme signs no timestamp",
        ),
        (
            vec![
                "sign",
                "--scheme",
                "standard-webhooks",
                "--id",
                "x",
                "--secret",
                "whsec_!!",
            ],
            "--secret: the Standard Webhooks secret is not valid base64",
        ),
        (
            vec!["send", "http://127.0.0.1:9/", "--subscription", "wh_1"],
            "--subscription: the klikit scheme sends no subscription",
        ),
        (
            vec![
                "send",
                "http://127.0.0.1:9/",
                "--scheme",
                "standard-webhooks",
                "--event-type",
                "x",
            ],
            "--event-type: standard-webhooks sends no event type header",
        ),
        (
            vec![
                "send",
                "http://127.0.0.1:9/",
                "--scheme",
                "klikit-v1",
                "--fixture",
                "cancellation_flow",
                "--event-id",
                "x",
            ],
            "--event-id names one event",
        ),
    ] {
        let mut args = args;
        if !args.contains(&"--secret") {
            args.extend(["--secret", SECRET]);
        }
        let run = klikit(&args, b"{}");
        assert_eq!(run.code, Some(1), "{args:?}");
        assert!(run.stderr.starts_with("klikit: "), "{args:?}: {}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {}", run.stderr);
        assert!(
            run.stderr.contains(expected),
            "{args:?}: {expected:?} missing from {}",
            run.stderr
        );
        assert!(!run.stderr.contains(SECRET), "{}", run.stderr);
    }
}

#[test]
fn signed_by_klikit_sign_and_received_over_the_socket() {
    let server = Served::start(&[("KLIKIT_SCHEME", "klikit-v1"), ("KLIKIT_WEBHOOK_SECRET", SECRET)]);
    let body = fixtures::ORDER_PICKED_UP;
    let id = envelope(body).event_id;
    let value = signature(&["--scheme", "klikit-v1", "--secret", SECRET], body);
    let request = headers(&[
        ("x-klikit-signature", &value),
        ("x-klikit-event-id", &id),
        ("x-klikit-event", "order.picked_up.v1"),
    ]);
    assert_eq!(server.post(&request, body.as_bytes()), (200, RECEIVED.to_owned()));
    assert_typed(&server, &id, body);

    let server = sw_server(standard_webhooks::SECRET);
    let body = standard_webhooks::BODY;
    let t = now().to_string();
    let value = signature(
        &[
            "--scheme",
            "standard-webhooks",
            "--secret",
            standard_webhooks::SECRET,
            "--id",
            "msg_cli_1",
            "--timestamp",
            &t,
        ],
        body,
    );
    let request = headers(&[
        ("webhook-id", "msg_cli_1"),
        ("webhook-timestamp", &t),
        ("webhook-signature", &value),
    ]);
    assert_eq!(server.post(&request, body.as_bytes()), (200, RECEIVED.to_owned()));
}

#[test]
fn send_every_v1_fixture_by_name() {
    let file = TempFile::with(&format!(r#"{{"wh_cli": ["{SECRET}"]}}"#));
    let server = Served::start(&[
        ("KLIKIT_SCHEME", "klikit-v1"),
        ("KLIKIT_WEBHOOK_SECRETS_FILE", file.as_str()),
    ]);
    let url = server.url();
    let names = [
        ("order.placed.v1", vec![fixtures::ORDER_PLACED]),
        ("order.updated.v1", vec![fixtures::ORDER_UPDATED]),
        ("order.cancelled.v1", vec![fixtures::ORDER_CANCELLED]),
        ("order.amended.v1", vec![fixtures::ORDER_AMENDED]),
        ("order.courier_assigned.v1", vec![fixtures::ORDER_COURIER_ASSIGNED]),
        ("order.picked_up.v1", vec![fixtures::ORDER_PICKED_UP]),
        ("order.delivered.v1", vec![fixtures::ORDER_DELIVERED]),
        ("single_item_dine_in", vec![fixtures::SANDBOX_SINGLE_ITEM_DINE_IN]),
        ("single_item_delivery", vec![fixtures::SANDBOX_SINGLE_ITEM_DELIVERY]),
        (
            "multi_item_with_modifiers",
            vec![fixtures::SANDBOX_MULTI_ITEM_WITH_MODIFIERS],
        ),
        ("large_basket", vec![fixtures::SANDBOX_LARGE_BASKET]),
        ("cancellation_flow", fixtures::SANDBOX_CANCELLATION_FLOW.to_vec()),
    ];
    for (name, bodies) in names {
        let run = klikit(
            &[
                "send",
                &url,
                "--scheme",
                "klikit-v1",
                "--fixture",
                name,
                "--subscription",
                "wh_cli",
                "--secret",
                SECRET,
            ],
            b"",
        );
        assert_eq!(run.code, Some(0), "{name}: {}", run.stderr);
        assert_eq!(
            run.answers(),
            vec![format!("200 {RECEIVED}"); bodies.len()],
            "{name}: {}",
            run.stdout
        );
        let events = run.events();
        assert_eq!(events.len(), bodies.len(), "{name}: {}", run.stdout);
        for ((id, event_type), body) in events.iter().zip(bodies) {
            assert_eq!(*event_type, envelope(body).event_type.to_string(), "{name}");
            // A fresh id in the body and the header: the body is the fixture's otherwise.
            assert_ne!(*id, envelope(body).event_id, "{name}");
            assert_typed(&server, id, body);
        }
    }
}

#[test]
fn send_sets_every_header_of_each_scheme() {
    let server = sw_server(standard_webhooks::SECRET);
    let url = server.url();
    let send = |extra: &[&str]| {
        let args = [
            &[
                "send",
                &url,
                "--scheme",
                "standard-webhooks",
                "--secret",
                standard_webhooks::SECRET,
            ],
            extra,
        ]
        .concat();
        let run = klikit(&args, b"");
        assert_eq!(run.code, Some(0), "{extra:?}: {}", run.stderr);
        run.answers()
    };
    assert_eq!(
        send(&["--event-id", "msg_send_1", "--repeat", "2"]),
        [format!("200 {RECEIVED}"), format!("200 {DUPLICATE}")]
    );
    server.log_line(&[
        "id=msg_send_1 ",
        "standard webhooks message received",
        "message_type=(none)",
    ]);
    assert_eq!(send(&["--forge"]), [format!("401 {INVALID_SIGNATURE}")]);
    let stale = (now() - 400).to_string();
    assert_eq!(send(&["--timestamp", &stale]), [format!("401 {OUT_OF_TOLERANCE}")]);

    let server = Served::start(&[("KLIKIT_SCHEME", "klikit,klikit-v1"), ("KLIKIT_WEBHOOK_SECRET", SECRET)]);
    let url = server.url();
    for scheme in ["klikit", "klikit-v1"] {
        let run = klikit(
            &["send", &url, "--scheme", scheme, "--secret", SECRET, "--repeat", "2"],
            b"",
        );
        assert_eq!(
            run.answers(),
            [format!("200 {RECEIVED}"), format!("200 {DUPLICATE}")],
            "{scheme}: {}",
            run.stdout
        );
    }
    server.log_line(&["order created: ticket sent to the kitchen"]);
    server.log_line(&["order placed: ticket sent to the kitchen", "event_type=order.placed.v1"]);
}

/// What `klikit` printed and how it ended.
pub(crate) struct Run {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    /// The answers `klikit send` printed: `<status> <body>` per request.
    pub(crate) fn answers(&self) -> Vec<String> {
        self.stdout
            .lines()
            .filter(|line| line.starts_with('#'))
            .map(|line| line.split_once(' ').unwrap().1.rsplit_once(" (").unwrap().0.to_owned())
            .collect()
    }

    /// The events `klikit send` announced: (id, type).
    pub(crate) fn events(&self) -> Vec<(String, String)> {
        self.stdout
            .lines()
            .filter_map(|line| line.strip_prefix("event id "))
            .map(|rest| {
                let (id, rest) = rest.split_once(", type ").unwrap();
                let (event_type, _) = rest.split_once(", ").unwrap();
                (id.to_owned(), event_type.to_owned())
            })
            .collect()
    }
}

/// Runs `klikit args` with `stdin`, without the caller's secret variable.
pub(crate) fn klikit(args: &[&str], stdin: &[u8]) -> Run {
    let mut child = Command::new(KLIKIT)
        .args(args)
        .env_remove("KLIKIT_WEBHOOK_SECRET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command that fails before it reads its input closes the pipe.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let output = child.wait_with_output().unwrap();
    Run {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}
