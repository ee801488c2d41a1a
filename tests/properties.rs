//! Property tests of signature verification, directly with `Verifier` and
//! through the layer in an axum `Router`: keys of every length around the
//! 64-byte HMAC block, and bodies split into many frames at random points.
//!
//! Each property runs 96 cases, or `PROPTEST_CASES` when it is set.

#![cfg(feature = "axum")]

use std::sync::atomic::{AtomicU64, Ordering};

use axum::{Router, body::Body, http::StatusCode, routing::post};
use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body_util::BodyExt;
use klikit_webhook::{
    EventType, KlikitEvent, KlikitWebhookLayer, Rejection, RejectionKind, WebhookSecret,
    signature::{SignatureError, Verifier, sign},
    testing::{WEBHOOK_PATH, signed_request},
};
use proptest::{
    prelude::*,
    sample::Index,
    test_runner::{Config, TestCaseError, TestRunner},
};
use tower::ServiceExt;

const SECRET: &str = "property-test-secret-0123456789";
const HEX: &[u8; 16] = b"0123456789abcdef";
/// Cases per property when `PROPTEST_CASES` is not set: fewer than
/// proptest's 256, since each case goes through the layer.
const CASES: u32 = 96;

/// `PROPTEST_CASES` wins when set (`Config::default()` reads it, with the
/// other `PROPTEST_*` variables); otherwise [`CASES`].
fn runner() -> TestRunner {
    let config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_some() {
        return TestRunner::new(config);
    }
    TestRunner::new(Config { cases: CASES, ..config })
}

/// Runs the property; panics with proptest's minimal failing input.
fn check<S: Strategy>(strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    if let Err(error) = runner().run(&strategy, test) {
        panic!("{error}");
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A new event id for every case, so the dedup store never answers
/// "duplicate".
fn fresh_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("prop-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn secret(bytes: impl Into<Vec<u8>>) -> WebhookSecret {
    WebhookSecret::new(bytes).unwrap()
}

/// Answers 200 with the secret index when the layer inserted the event and
/// the body equals the verified bytes, 500 otherwise.
async fn handler(event: KlikitEvent, body: Bytes) -> (StatusCode, String) {
    if event.body() != &body {
        return (StatusCode::INTERNAL_SERVER_ERROR, "body differs".to_owned());
    }
    (StatusCode::OK, event.secret_index().to_string())
}

fn app(layer: KlikitWebhookLayer) -> Router {
    Router::new().route(WEBHOOK_PATH, post(handler)).layer(layer)
}

/// A delivery of `body` with `signature` as the raw header value.
fn delivery(body: &[u8], signature: &[u8]) -> Request<Body> {
    let mut request = signed_request::<Body>(SECRET, &fresh_id(), EventType::ORDER_CREATED, body.to_vec());
    let value = HeaderValue::from_bytes(signature).unwrap();
    request.headers_mut().insert("x-klikit-signature", value);
    request
}

struct Answer {
    status: StatusCode,
    rejection: Option<RejectionKind>,
    body: Bytes,
}

async fn send(app: &Router, request: Request<Body>) -> Answer {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let rejection = response.extensions().get::<Rejection>().map(|r| r.kind().clone());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        rejection,
        body,
    }
}

fn body_strategy(min: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), min..4096)
}

const MISMATCH: RejectionKind = RejectionKind::InvalidSignature(SignatureError::Mismatch);
const MALFORMED: RejectionKind = RejectionKind::InvalidSignature(SignatureError::Malformed);

#[test]
fn any_signed_body_passes() {
    let rt = runtime();
    let verifier = Verifier::new(secret(SECRET));
    let app = app(KlikitWebhookLayer::new(secret(SECRET)));
    check(body_strategy(0), |body| {
        let signature = sign(SECRET.as_bytes(), &body);
        prop_assert_eq!(signature.len(), 64);
        prop_assert_eq!(verifier.verify(&body, signature.as_bytes()), Ok(0));
        let answer = rt.block_on(send(&app, delivery(&body, signature.as_bytes())));
        prop_assert_eq!(answer.status, StatusCode::OK, "body {:?}", answer.body);
        prop_assert_eq!(&answer.body[..], b"0");
        Ok(())
    });
}

#[test]
fn any_flipped_body_bit_fails() {
    let rt = runtime();
    let verifier = Verifier::new(secret(SECRET));
    let app = app(KlikitWebhookLayer::new(secret(SECRET)));
    check((body_strategy(1), any::<Index>()), |(body, bit)| {
        let signature = sign(SECRET.as_bytes(), &body);
        let bit = bit.index(body.len() * 8);
        let mut tampered = body.clone();
        tampered[bit / 8] ^= 1 << (bit % 8);
        prop_assert_eq!(
            verifier.verify(&tampered, signature.as_bytes()),
            Err(SignatureError::Mismatch)
        );
        let answer = rt.block_on(send(&app, delivery(&tampered, signature.as_bytes())));
        prop_assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        prop_assert_eq!(answer.rejection, Some(MISMATCH));
        prop_assert_eq!(&answer.body[..], br#"{"error":"invalid signature"}"#);
        Ok(())
    });
}

#[test]
fn any_changed_signature_digit_fails() {
    let rt = runtime();
    let verifier = Verifier::new(secret(SECRET));
    let app = app(KlikitWebhookLayer::new(secret(SECRET)));
    check((body_strategy(0), 0..64usize, 1..16usize), |(body, at, shift)| {
        let mut signature = sign(SECRET.as_bytes(), &body).into_bytes();
        let digit = HEX.iter().position(|&d| d == signature[at]).unwrap();
        signature[at] = HEX[(digit + shift) % 16];
        prop_assert_eq!(verifier.verify(&body, &signature), Err(SignatureError::Mismatch));
        let answer = rt.block_on(send(&app, delivery(&body, &signature)));
        prop_assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        prop_assert_eq!(answer.rejection, Some(MISMATCH));
        Ok(())
    });
}

#[test]
fn upper_and_mixed_case_signatures_pass() {
    let rt = runtime();
    let verifier = Verifier::new(secret(SECRET));
    let app = app(KlikitWebhookLayer::new(secret(SECRET)));
    let strategy = (body_strategy(0), proptest::collection::vec(any::<bool>(), 64));
    check(strategy, |(body, upper)| {
        let signature = sign(SECRET.as_bytes(), &body);
        let all_upper = signature.to_ascii_uppercase();
        let mixed: String = signature
            .chars()
            .zip(&upper)
            .map(|(c, &up)| if up { c.to_ascii_uppercase() } else { c })
            .collect();
        for variant in [&all_upper, &mixed] {
            prop_assert_eq!(verifier.verify(&body, variant.as_bytes()), Ok(0));
            let answer = rt.block_on(send(&app, delivery(&body, variant.as_bytes())));
            prop_assert_eq!(answer.status, StatusCode::OK, "{} refused: {:?}", variant, answer.body);
        }
        Ok(())
    });
}

/// Header values that are not exactly 64 hex digits.
fn not_64_hex() -> impl Strategy<Value = Vec<u8>> {
    let valid = || proptest::string::bytes_regex("[0-9a-fA-F]{64}").unwrap();
    prop_oneof![
        // Hex of any other length.
        proptest::string::bytes_regex("[0-9a-fA-F]{0,63}").unwrap(),
        proptest::string::bytes_regex("[0-9a-fA-F]{65,200}").unwrap(),
        // 64 characters, one of them not hex.
        (
            valid(),
            0..64usize,
            any::<u8>().prop_filter("not hex", |b| !b.is_ascii_hexdigit())
        )
            .prop_map(|(mut sig, at, byte)| {
                sig[at] = byte;
                sig
            }),
        // The usual mistakes: a prefix, whitespace, base64.
        valid().prop_map(|sig| [b"sha256=".as_slice(), &sig].concat()),
        valid().prop_map(|sig| [&sig, b"\n".as_slice()].concat()),
        valid().prop_map(|sig| [b" ".as_slice(), &sig].concat()),
        proptest::string::bytes_regex("[A-Za-z0-9+/]{43}=").unwrap(),
        // Anything at all that is not 64 hex digits.
        proptest::collection::vec(any::<u8>(), 0..130).prop_filter("not 64 hex digits", |s| s.len() != 64
            || !s.iter().all(u8::is_ascii_hexdigit)),
    ]
}

#[test]
fn anything_but_64_hex_digits_is_malformed() {
    let rt = runtime();
    let verifier = Verifier::new(secret(SECRET));
    let app = app(KlikitWebhookLayer::new(secret(SECRET)));
    check((body_strategy(0), not_64_hex()), |(body, signature)| {
        prop_assert_eq!(verifier.verify(&body, &signature), Err(SignatureError::Malformed));
        // Through the layer, where the value can be a header at all.
        if HeaderValue::from_bytes(&signature).is_ok() {
            let answer = rt.block_on(send(&app, delivery(&body, &signature)));
            if signature.is_empty() {
                prop_assert_eq!(answer.status, StatusCode::BAD_REQUEST);
            } else {
                prop_assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
                prop_assert_eq!(answer.rejection, Some(MALFORMED));
            }
        }
        Ok(())
    });
}

#[test]
fn either_of_two_secrets_passes_with_its_index() {
    let rt = runtime();
    let key = || proptest::collection::vec(any::<u8>(), 1..64);
    let strategy = (key(), key(), key(), body_strategy(0), 0..2usize);
    check(strategy, |(first, second, other, body, which)| {
        let verifier = Verifier::new(secret(first.clone())).with_secret(secret(second.clone()));
        let app = app(KlikitWebhookLayer::new(secret(first.clone())).with_secret(secret(second.clone())));
        let key = if which == 0 { &first } else { &second };
        // Identical secrets: the first one matches.
        let expected = if first == second { 0 } else { which };

        let signature = sign(key, &body);
        prop_assert_eq!(verifier.verify(&body, signature.as_bytes()), Ok(expected));
        let request = signed_request::<Body>(key, &fresh_id(), EventType::ORDER_STATUS_UPDATED, body.clone());
        let answer = rt.block_on(send(&app, request));
        prop_assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        prop_assert_eq!(answer.body, expected.to_string());

        // A third, unconfigured secret fails.
        if other != first && other != second {
            let signature = sign(&other, &body);
            prop_assert_eq!(
                verifier.verify(&body, signature.as_bytes()),
                Err(SignatureError::Mismatch)
            );
            let request = signed_request::<Body>(&other, &fresh_id(), EventType::ORDER_STATUS_UPDATED, body.clone());
            let answer = rt.block_on(send(&app, request));
            prop_assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
            prop_assert_eq!(answer.rejection, Some(MISMATCH));
        }
        Ok(())
    });
}

/// HMAC-SHA256 written out from RFC 2104 with `sha2` alone, independent of
/// the `hmac` crate: a key longer than the 64-byte block is hashed first;
/// the key is then zero-padded to the block.
fn reference_hmac(key: &[u8], body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(body).finalize();
    let outer = Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize();
    hex::encode(outer)
}

/// Keys shorter than the 64-byte HMAC block, exactly one block, one byte
/// over it, and longer (hashed to 32 bytes before use).
fn key_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 1..64),
        proptest::collection::vec(any::<u8>(), 64..=65),
        proptest::collection::vec(any::<u8>(), 66..300),
    ]
}

#[test]
fn keys_of_any_length_sign_as_rfc_2104_and_verify_through_the_layer() {
    let rt = runtime();
    check((key_strategy(), body_strategy(0), any::<Index>()), |(key, body, at)| {
        let signature = sign(&key, &body);
        prop_assert_eq!(&signature, &reference_hmac(&key, &body), "key of {} bytes", key.len());
        if key.len() > 64 {
            // RFC 2104: a long key and its SHA-256 digest are the same key.
            use sha2::Digest;
            prop_assert_eq!(&signature, &sign(&sha2::Sha256::digest(&key), &body));
        }
        prop_assert_eq!(
            Verifier::new(secret(key.clone())).verify(&body, signature.as_bytes()),
            Ok(0)
        );
        let app = app(KlikitWebhookLayer::new(secret(key.clone())));
        let request = signed_request::<Body>(&key, &fresh_id(), EventType::ORDER_CREATED, body.clone());
        let answer = rt.block_on(send(&app, request));
        prop_assert_eq!(
            answer.status,
            StatusCode::OK,
            "key of {} bytes: {:?}",
            key.len(),
            answer.body
        );

        // Any one byte of the key changed: refused, long keys included.
        let mut other = key.clone();
        let at = at.index(other.len());
        other[at] = other[at].wrapping_add(1);
        let request = signed_request::<Body>(&other, &fresh_id(), EventType::ORDER_CREATED, body.clone());
        let answer = rt.block_on(send(&app, request));
        prop_assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        prop_assert_eq!(answer.rejection, Some(MISMATCH));
        Ok(())
    });
}

/// A body sent as `frames`, with an exact size hint (as a `Content-Length`
/// gives) or none (as a chunked body has).
struct Framed {
    frames: http_body_util::StreamBody<futures_util::stream::Iter<std::vec::IntoIter<FrameResult>>>,
    hint: Option<u64>,
}

type FrameResult = Result<http_body::Frame<Bytes>, std::convert::Infallible>;

impl Framed {
    fn new(frames: Vec<Bytes>, hint: Option<u64>) -> Self {
        let frames: Vec<_> = frames.into_iter().map(|f| Ok(http_body::Frame::data(f))).collect();
        Self {
            frames: http_body_util::StreamBody::new(futures_util::stream::iter(frames)),
            hint,
        }
    }
}

impl http_body::Body for Framed {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.frames).poll_frame(cx)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.hint
            .map_or_else(http_body::SizeHint::default, http_body::SizeHint::with_exact)
    }
}

/// `body` cut at `cuts` (positions, repeats giving empty frames).
fn split(body: &[u8], cuts: &[Index]) -> Vec<Bytes> {
    let mut at: Vec<usize> = cuts.iter().map(|cut| cut.index(body.len() + 1)).collect();
    at.sort_unstable();
    let mut frames = Vec::with_capacity(at.len() + 1);
    let mut start = 0;
    for end in at.into_iter().chain([body.len()]) {
        frames.push(Bytes::copy_from_slice(&body[start..end]));
        start = end;
    }
    frames
}

/// Answers the verified bytes, 500 if the handler's body differs from them.
async fn echo(event: KlikitEvent, body: Bytes) -> Result<Bytes, StatusCode> {
    if event.body() == &body {
        Ok(body)
    } else {
        Err(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

#[test]
fn any_body_in_any_frames_passes_and_a_flipped_bit_in_any_frame_fails() {
    let rt = runtime();
    let app = Router::new()
        .route(WEBHOOK_PATH, post(echo))
        .layer(KlikitWebhookLayer::new(secret(SECRET)));
    let cuts = proptest::collection::vec(any::<Index>(), 1..64);
    let strategy = (body_strategy(1), cuts, any::<bool>(), any::<Index>());
    check(strategy, |(body, cuts, hinted, bit)| {
        let frames = split(&body, &cuts);
        prop_assert_eq!(frames.concat(), body.clone());
        let hint = hinted.then_some(body.len() as u64);
        let delivery = |frames: Vec<Bytes>| {
            let (parts, _) =
                signed_request::<Body>(SECRET, &fresh_id(), EventType::ORDER_CREATED, body.clone()).into_parts();
            Request::from_parts(parts, Body::new(Framed::new(frames, hint)))
        };

        let answer = rt.block_on(send(&app, delivery(frames.clone())));
        prop_assert_eq!(
            answer.status,
            StatusCode::OK,
            "{} frames: {:?}",
            frames.len(),
            answer.body
        );
        prop_assert_eq!(&answer.body[..], &body[..], "the handler got the bytes sent");

        // One bit flipped, in whichever frame holds it.
        let bit = bit.index(body.len() * 8);
        let mut tampered = body.clone();
        tampered[bit / 8] ^= 1 << (bit % 8);
        let answer = rt.block_on(send(&app, delivery(split(&tampered, &cuts))));
        prop_assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        prop_assert_eq!(answer.rejection, Some(MISMATCH));
        Ok(())
    });
}

/// `KlikitEvent::json` parses the body as text once it is known to be UTF-8;
/// whatever the bytes, it must agree with `serde_json::from_slice`: the same
/// value, or an error with the same message (line and column included).
/// Bodies are Klikit's fixtures with up to 8 bytes replaced at random
/// (which makes invalid UTF-8 inside and outside strings, broken syntax,
/// and wrong types), plus arbitrary bytes.
#[test]
fn parsing_the_event_body_agrees_with_serde_json_from_slice() {
    use klikit_webhook::payload::{OrderEnvelope, v1};
    let fixtures: Vec<&[u8]> = [
        klikit_webhook::fixtures::ORDER_CREATED,
        klikit_webhook::fixtures::ORDER_STATUS_UPDATED,
        klikit_webhook::fixtures::ORDER_CART_UPDATED,
        v1::fixtures::ORDER_PLACED,
    ]
    .iter()
    .map(|text| text.as_bytes())
    .collect();
    let mutated = (
        proptest::sample::select(fixtures),
        proptest::collection::vec((any::<Index>(), any::<u8>()), 0..8),
    )
        .prop_map(|(body, edits)| {
            let mut body = body.to_vec();
            for (at, byte) in edits {
                let at = at.index(body.len());
                body[at] = byte;
            }
            body
        });
    let bodies = prop_oneof![3 => mutated, 1 => body_strategy(0)];
    fn same<T: std::fmt::Debug + PartialEq>(
        ours: Result<T, serde_json::Error>,
        theirs: Result<T, serde_json::Error>,
    ) -> Result<(), TestCaseError> {
        match (ours, theirs) {
            (Ok(ours), Ok(theirs)) => prop_assert_eq!(ours, theirs),
            (Err(ours), Err(theirs)) => prop_assert_eq!(ours.to_string(), theirs.to_string()),
            (ours, theirs) => prop_assert!(false, "json() gave {ours:?}, from_slice gave {theirs:?}"),
        }
        Ok(())
    }
    check(bodies, |body| {
        let event = KlikitEvent::new(
            "evt-json".parse().unwrap(),
            EventType::OrderCreated,
            body.clone().into(),
        );
        same(event.json::<serde_json::Value>(), serde_json::from_slice(&body))?;
        same(
            event.payload().map(|envelope| format!("{envelope:?}")),
            serde_json::from_slice::<OrderEnvelope>(&body).map(|envelope| format!("{envelope:?}")),
        )?;
        same(
            event.v1_payload().map(|envelope| format!("{envelope:?}")),
            serde_json::from_slice::<v1::Envelope>(&body).map(|envelope| format!("{envelope:?}")),
        )
    });
}

/// Counts the cases one property runs and prints the count, for the test
/// below (which runs it in a child process with `PROPTEST_CASES` set).
#[test]
fn cases_probe() {
    let count = AtomicU64::new(0);
    check(any::<u8>(), |_| {
        count.fetch_add(1, Ordering::Relaxed);
        Ok(())
    });
    println!("cases run: {}", count.load(Ordering::Relaxed));
}

#[test]
fn proptest_cases_from_the_environment_is_honoured() {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "cases_probe", "--nocapture", "--test-threads=1"])
        .env("PROPTEST_CASES", "7")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("cases run: 7\n"), "PROPTEST_CASES=7 ran:\n{stdout}");
}
