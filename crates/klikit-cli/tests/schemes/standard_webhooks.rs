//! `KLIKIT_SCHEME=standard-webhooks`: `webhook-id`, `webhook-timestamp`,
//! `webhook-signature: v1,<base64>`, `whsec_` secrets.

use klikit_webhook::{
    WebhookSecret,
    scheme::{Outgoing, StandardWebhooks},
};

use crate::server::{DUPLICATE, INVALID_SIGNATURE, OUT_OF_TOLERANCE, RECEIVED, Served, now, signed};

/// The specification's reference libraries' test secret.
pub(crate) const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub(crate) const BODY: &str = r#"{"type":"order.placed","data":{"id":"ord_sw_1"}}"#;

pub(crate) fn sw_server(secret: &str) -> Served {
    Served::start(&[
        ("KLIKIT_SCHEME", "standard-webhooks"),
        ("KLIKIT_WEBHOOK_SECRET", secret),
    ])
}

/// POSTs `outgoing` signed with the Standard Webhooks secret `secret`.
fn deliver(server: &Served, secret: &str, outgoing: &Outgoing<'_>) -> (u16, String) {
    let key = WebhookSecret::standard_webhooks(secret).unwrap();
    server.post(&signed(&StandardWebhooks::new(), &key, outgoing), outgoing.body)
}

#[test]
fn valid_message_is_received_logged_and_its_retry_ignored() {
    let server = sw_server(SECRET);
    let message = Outgoing::new("msg_valid_1", "", BODY.as_bytes()).with_timestamp(now());
    assert_eq!(deliver(&server, SECRET, &message), (200, RECEIVED.to_owned()));
    let line = server.log_line(&["id=msg_valid_1 ", "klikit_cli::receiver::worker"]);
    assert!(
        line.contains("standard webhooks message received") && line.contains("message_type=order.placed"),
        "{line}"
    );
    let retry = message.with_timestamp(now() - 60);
    assert_eq!(deliver(&server, SECRET, &retry), (200, DUPLICATE.to_owned()));
}

#[test]
fn stale_and_future_timestamps_are_refused() {
    let server = sw_server(SECRET);
    for (id, offset) in [("msg_stale", -400), ("msg_future", 400)] {
        let message = Outgoing::new(id, "", BODY.as_bytes()).with_timestamp(now() + offset);
        assert_eq!(
            deliver(&server, SECRET, &message),
            (401, OUT_OF_TOLERANCE.to_owned()),
            "{offset} s"
        );
    }
    let wide = Served::start(&[
        ("KLIKIT_SCHEME", "standard-webhooks"),
        ("KLIKIT_WEBHOOK_SECRET", SECRET),
        ("KLIKIT_TOLERANCE_SECS", "600"),
    ]);
    let message = Outgoing::new("msg_stale", "", BODY.as_bytes()).with_timestamp(now() - 400);
    assert_eq!(deliver(&wide, SECRET, &message), (200, RECEIVED.to_owned()));
}

#[test]
fn wrong_secret_is_refused_and_the_prefix_is_optional() {
    let server = sw_server(SECRET);
    let message = Outgoing::new("msg_wrong", "", BODY.as_bytes()).with_timestamp(now());
    let other = "whsec_dGhpcyBpcyBub3QgdGhlIHJlY2VpdmVyJ3Mga2V5";
    assert_eq!(deliver(&server, other, &message), (401, INVALID_SIGNATURE.to_owned()));
    // The key is the decoded bytes: the secret string's own bytes are wrong.
    let own_bytes = WebhookSecret::new(SECRET).unwrap();
    let headers = signed(&StandardWebhooks::new(), &own_bytes, &message);
    assert_eq!(
        server.post(&headers, BODY.as_bytes()),
        (401, INVALID_SIGNATURE.to_owned())
    );
    assert_eq!(deliver(&server, SECRET, &message), (200, RECEIVED.to_owned()));

    // The same secret configured without its whsec_ prefix, as the specification allows.
    let bare = sw_server(SECRET.trim_start_matches("whsec_"));
    assert_eq!(deliver(&bare, SECRET, &message), (200, RECEIVED.to_owned()));
}
