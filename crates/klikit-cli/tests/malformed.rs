//! Malformed deliveries over a real loopback socket.
//!
//! A raw HTTP/1.1 client writes bytes the `http` builder would refuse
//! (repeated headers, non-ASCII bytes, lying `Content-Length`, broken chunks)
//! to the example receiver's router. Every row states the status it expects
//! and whether the handler may run. After every row the test checks that
//! nothing was left behind: the handler queued nothing (refused rows), the
//! dedup store holds no new record, and a genuine delivery of the same event
//! id still gets `200 {"status":"received"}`. For rows that are accepted on
//! purpose (upper-case hex, odd but visible-ASCII ids, empty or non-JSON
//! signed bodies, unknown event types), the handler ran exactly once, the id
//! was recorded, and the genuine redelivery is `duplicate-ignored`.
//!
//! All rows run even when one fails; the failures are listed together.

// The example receiver's router lives in the klikit-cli crate.
use klikit_cli::receiver;

use std::{fmt::Write as _, net::SocketAddr, sync::Arc, time::Duration};

use klikit_webhook::{KlikitEvent, KlikitWebhookLayer, MemoryStore, WebhookSecret, signature::sign};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
};

const SECRET: &str = "malformed-test-secret-0123456789";
const OTHER_SECRET: &str = "some-other-partner-secret-98765";
const CREATED: &str = "klikit.order.created.v2";
const BODY: &str = r#"{"brand_id":663,"branch_id":1062,"orders":[{"id":7585307,"external_id":"ABC-123","status":2,"total":"84.50","cart":[{"item_id":289379,"title":"Nasi Goreng","quantity":2,"price":0}]}]}"#;
const RECEIVED: &str = r#"{"status":"received"}"#;
const DUPLICATE: &str = r#"{"status":"duplicate-ignored"}"#;
/// Small, so that the 413 rows stay cheap.
const LIMIT: usize = 64 * 1024;
/// Short, so that the 408 rows stay cheap.
const BODY_TIMEOUT: Duration = Duration::from_millis(300);

const SIG: &str = "x-klikit-signature";
const ID: &str = "x-klikit-event-id";
const TYPE: &str = "x-klikit-event-type";

const MISSING_SIG: &str = r#"{"error":"missing header x-klikit-signature"}"#;
const MISSING_ID: &str = r#"{"error":"missing header x-klikit-event-id"}"#;
const MISSING_TYPE: &str = r#"{"error":"missing header x-klikit-event-type"}"#;
const INVALID_SIG_HEADER: &str = r#"{"error":"invalid header x-klikit-signature"}"#;
const INVALID_ID: &str = r#"{"error":"invalid header x-klikit-event-id: 1 to 256 visible ASCII characters expected"}"#;
const INVALID_TYPE: &str = r#"{"error":"invalid header x-klikit-event-type"}"#;
const BAD_SIGNATURE: &str = r#"{"error":"invalid signature"}"#;
const TOO_LARGE: &str = r#"{"error":"body exceeds the size limit"}"#;
const TIMED_OUT: &str = r#"{"error":"body not received in time"}"#;
const BODY_READ: &str = r#"{"error":"could not read the body"}"#;

// ---------------------------------------------------------------------------
// Server

struct Server {
    addr: SocketAddr,
    events: mpsc::Receiver<KlikitEvent>,
    store: Arc<MemoryStore>,
}

async fn start() -> Server {
    let store = Arc::new(MemoryStore::new());
    let layer = KlikitWebhookLayer::new(WebhookSecret::new(SECRET).unwrap())
        .with_store(store.clone())
        .with_body_limit(LIMIT)
        .with_body_timeout(BODY_TIMEOUT);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (jobs, events) = mpsc::channel(receiver::QUEUE_CAPACITY);
    tokio::spawn(async move { axum::serve(listener, receiver::app(layer, jobs)).await.unwrap() });
    Server { addr, events, store }
}

// ---------------------------------------------------------------------------
// Raw requests

/// A request as raw bytes: every header is sent exactly as given.
#[derive(Clone)]
struct Req {
    line: Vec<u8>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// The bytes written after the blank line (the body as framed on the wire).
    wire_body: Vec<u8>,
}

fn hdr(name: &str) -> Vec<u8> {
    name.as_bytes().to_vec()
}

/// What Klikit would send for `id`: `BODY`, signed, with `Content-Length`.
fn genuine(id: &str) -> Req {
    genuine_bytes(id.as_bytes())
}

fn genuine_bytes(id: &[u8]) -> Req {
    Req {
        line: b"POST /webhooks/klikit HTTP/1.1".to_vec(),
        headers: vec![
            (hdr("host"), b"localhost".to_vec()),
            (hdr("content-type"), b"application/json".to_vec()),
            (hdr(SIG), sign(SECRET.as_bytes(), BODY.as_bytes()).into_bytes()),
            (hdr(ID), id.to_vec()),
            (hdr(TYPE), CREATED.as_bytes().to_vec()),
            (hdr("connection"), b"close".to_vec()),
            (hdr("content-length"), BODY.len().to_string().into_bytes()),
        ],
        wire_body: BODY.as_bytes().to_vec(),
    }
}

impl Req {
    /// Removes every header called `name` (ASCII case-insensitive).
    fn remove(mut self, name: &str) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name.as_bytes()));
        self
    }

    /// Replaces every header called `name` with one `name: value`.
    fn set(self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.remove(name).add(name, value)
    }

    /// Appends `name: value`, keeping any other `name`.
    fn add(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers.push((hdr(name), value.as_ref().to_vec()));
        self
    }

    /// Sends `body` with a matching `Content-Length` and its signature.
    fn signed_body(self, body: impl AsRef<[u8]>) -> Self {
        let body = body.as_ref();
        self.set(SIG, sign(SECRET.as_bytes(), body)).unsigned_body(body)
    }

    /// Sends `body` with a matching `Content-Length`, signature untouched.
    fn unsigned_body(mut self, body: impl AsRef<[u8]>) -> Self {
        let body = body.as_ref();
        self.wire_body = body.to_vec();
        self.set("content-length", body.len().to_string())
    }

    /// Re-frames the current body as chunks of `size` bytes.
    fn chunked(mut self, size: usize) -> Self {
        let body = std::mem::take(&mut self.wire_body);
        self.wire_body = chunk(&body, size);
        self.remove("content-length").set("transfer-encoding", "chunked")
    }

    /// Replaces the framed bytes, headers untouched.
    fn wire(mut self, bytes: impl AsRef<[u8]>) -> Self {
        self.wire_body = bytes.as_ref().to_vec();
        self
    }

    fn head_bytes(&self) -> Vec<u8> {
        let mut out = self.line.clone();
        out.extend_from_slice(b"\r\n");
        for (name, value) in &self.headers {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = self.head_bytes();
        out.extend_from_slice(&self.wire_body);
        out
    }
}

fn chunk(body: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in body.chunks(size.max(1)) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

// ---------------------------------------------------------------------------
// Raw client

#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
}

/// How a row's bytes are written.
#[derive(Clone, Copy)]
enum Send {
    /// Everything at once, then read until the server closes.
    Whole,
    /// The head at once, then the body one byte per write, `delay` apart,
    /// while reading concurrently; writing stops when the answer arrives.
    Trickle(Duration),
}

async fn exchange(addr: SocketAddr, req: &Req, send: Send) -> Vec<Answer> {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut read, mut write) = stream.into_split();
    let raw = match send {
        Send::Whole => {
            // A server that answers early and closes may reset the socket
            // while we write; keep what was read.
            let _ = write.write_all(&req.bytes()).await;
            read_until_closed(&mut read).await
        }
        Send::Trickle(delay) => {
            let head = req.head_bytes();
            let body = req.wire_body.clone();
            let writer = tokio::spawn(async move {
                write.write_all(&head).await?;
                for byte in body {
                    write.write_all(&[byte]).await?;
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                }
                // Keep the write half open until the reader is done.
                std::future::pending::<()>().await;
                Ok::<_, std::io::Error>(write)
            });
            let raw = read_until_closed(&mut read).await;
            writer.abort();
            raw
        }
    };
    parse_answers(&raw)
}

async fn read_until_closed(read: &mut tokio::net::tcp::OwnedReadHalf) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, read.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => raw.extend_from_slice(&buf[..n]),
        }
    }
    raw
}

/// Splits a byte stream into HTTP/1.1 answers (interim 1xx skipped).
fn parse_answers(mut raw: &[u8]) -> Vec<Answer> {
    let mut answers = Vec::new();
    while let Some(end) = find(raw, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
        raw = &raw[end + 4..];
        let Some(status) = head.get(9..12).and_then(|s| s.parse::<u16>().ok()) else {
            break;
        };
        if (100..200).contains(&status) {
            continue;
        }
        let length = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(raw.len())
            .min(raw.len());
        answers.push(Answer {
            status,
            body: String::from_utf8_lossy(&raw[..length]).into_owned(),
        });
        raw = &raw[length..];
    }
    answers
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------
// Rows

type Check = Box<dyn Fn(&KlikitEvent) -> Result<(), String>>;

enum Outcome {
    /// The handler must not run and nothing may be recorded; a genuine
    /// delivery of `follow_id` afterwards is `received`.
    Refused { follow_id: String },
    /// The handler runs exactly once with event id `id`; the genuine
    /// redelivery of `id` afterwards is `duplicate-ignored`.
    Accepted { id: String, check: Option<Check> },
}

struct Row {
    name: String,
    req: Req,
    send: Send,
    /// The statuses of every answer on the connection, in order.
    statuses: Vec<u16>,
    /// The body of the first answer, when it is the layer's own.
    body: Option<&'static str>,
    outcome: Outcome,
}

fn refused(name: impl Into<String>, id: &str, req: Req, status: u16, body: Option<&'static str>) -> Row {
    Row {
        name: name.into(),
        req,
        send: Send::Whole,
        statuses: vec![status],
        body,
        outcome: Outcome::Refused {
            follow_id: id.to_owned(),
        },
    }
}

fn accepted(name: impl Into<String>, id: &str, req: Req) -> Row {
    Row {
        name: name.into(),
        req,
        send: Send::Whole,
        statuses: vec![200],
        body: Some(RECEIVED),
        outcome: Outcome::Accepted {
            id: id.to_owned(),
            check: None,
        },
    }
}

impl Row {
    fn send(mut self, send: Send) -> Self {
        self.send = send;
        self
    }

    fn statuses(mut self, statuses: &[u16]) -> Self {
        self.statuses = statuses.to_vec();
        self
    }

    fn check(mut self, f: impl Fn(&KlikitEvent) -> Result<(), String> + 'static) -> Self {
        if let Outcome::Accepted { check, .. } = &mut self.outcome {
            *check = Some(Box::new(f));
        }
        self
    }
}

fn body_is(expected: Vec<u8>) -> impl Fn(&KlikitEvent) -> Result<(), String> {
    move |event| {
        if event.body().as_ref() == expected.as_slice() {
            Ok(())
        } else {
            Err(format!(
                "handler saw a {}-byte body, expected {} bytes",
                event.body().len(),
                expected.len()
            ))
        }
    }
}

fn payload_fails(event: &KlikitEvent) -> Result<(), String> {
    match event.payload() {
        Err(_) => Ok(()),
        Ok(envelope) => Err(format!("payload unexpectedly parsed: {envelope:?}")),
    }
}

fn rows() -> Vec<Row> {
    let sig = sign(SECRET.as_bytes(), BODY.as_bytes());
    let mut n = 0;
    let mut next_id = move || {
        n += 1;
        format!("mal-{n:02}")
    };
    let mut rows = Vec::new();

    // --- Missing, empty, repeated, non-ASCII headers -----------------------
    let id = next_id();
    rows.push(refused(
        "signature missing",
        &id,
        genuine(&id).remove(SIG),
        400,
        Some(MISSING_SIG),
    ));
    let id = next_id();
    rows.push(refused(
        "signature empty",
        &id,
        genuine(&id).set(SIG, ""),
        400,
        Some(MISSING_SIG),
    ));
    let id = next_id();
    rows.push(refused(
        "signature repeated (same valid value twice)",
        &id,
        genuine(&id).add(SIG, &sig),
        400,
        Some(INVALID_SIG_HEADER),
    ));
    let id = next_id();
    rows.push(refused(
        "signature repeated (wrong value first, valid second)",
        &id,
        genuine(&id).set(SIG, "0".repeat(64)).add(SIG, &sig),
        400,
        Some(INVALID_SIG_HEADER),
    ));
    let id = next_id();
    let mut non_ascii = sig.clone().into_bytes();
    non_ascii[10] = 0xff;
    rows.push(refused(
        "signature with a non-ASCII byte (0xFF)",
        &id,
        genuine(&id).set(SIG, &non_ascii),
        401,
        Some(BAD_SIGNATURE),
    ));
    let id = next_id();
    rows.push(refused(
        "event id missing",
        &id,
        genuine(&id).remove(ID),
        400,
        Some(MISSING_ID),
    ));
    let id = next_id();
    rows.push(refused(
        "event id empty",
        &id,
        genuine(&id).set(ID, ""),
        400,
        Some(MISSING_ID),
    ));
    let id = next_id();
    rows.push(refused(
        "event id repeated (same value twice)",
        &id,
        genuine(&id).add(ID, &id),
        400,
        Some(INVALID_ID),
    ));
    let id = next_id();
    rows.push(refused(
        "event id with non-ASCII UTF-8 (é)",
        &id,
        genuine(&id).set(ID, format!("{id}-\u{e9}")),
        400,
        Some(INVALID_ID),
    ));
    let id = next_id();
    rows.push(refused(
        "event id with a raw 0xFF byte",
        &id,
        genuine(&id).set(ID, [id.as_bytes(), b"\xff"].concat()),
        400,
        Some(INVALID_ID),
    ));
    let id = next_id();
    rows.push(refused(
        "event type missing",
        &id,
        genuine(&id).remove(TYPE),
        400,
        Some(MISSING_TYPE),
    ));
    let id = next_id();
    rows.push(refused(
        "event type empty",
        &id,
        genuine(&id).set(TYPE, ""),
        400,
        Some(MISSING_TYPE),
    ));
    let id = next_id();
    rows.push(refused(
        "event type repeated",
        &id,
        genuine(&id).add(TYPE, "klikit.order.status.updated"),
        400,
        Some(INVALID_TYPE),
    ));
    let id = next_id();
    rows.push(refused(
        "event type with non-ASCII UTF-8",
        &id,
        genuine(&id).set(TYPE, "klikit.order.cr\u{e9}ated.v2"),
        400,
        Some(INVALID_TYPE),
    ));
    let id = next_id();
    rows.push(refused(
        "event type with an inner space",
        &id,
        genuine(&id).set(TYPE, "klikit.order created.v2"),
        400,
        Some(INVALID_TYPE),
    ));
    let id = next_id();
    rows.push(refused(
        "event type of 257 bytes",
        &id,
        genuine(&id).set(TYPE, "t".repeat(257)),
        400,
        Some(INVALID_TYPE),
    ));
    let id = next_id();
    rows.push(refused(
        "header name with underscores (x_klikit_signature)",
        &id,
        genuine(&id).remove(SIG).add("x_klikit_signature", &sig),
        400,
        Some(MISSING_SIG),
    ));
    let id = next_id();
    // Rejected by hyper's parser before the layer: no layer body.
    rows.push(refused(
        "event id folded over two lines (obs-fold)",
        &id,
        genuine(&id).set(ID, format!("{id}\r\n -folded")),
        400,
        None,
    ));
    let id = next_id();
    rows.push(refused(
        "event id with a control character (0x01), refused by hyper",
        &id,
        genuine(&id).set(ID, format!("{id}\u{1}x")),
        400,
        None,
    ));
    let id = next_id();
    rows.push(refused(
        "event id with an inner tab (allowed by HTTP, refused by the layer)",
        &id,
        genuine(&id).set(ID, format!("{id}\tx")),
        400,
        Some(INVALID_ID),
    ));
    let id = next_id();
    rows.push(refused(
        "event id with an inner space",
        &id,
        genuine(&id).set(ID, format!("{id} x")),
        400,
        Some(INVALID_ID),
    ));
    let id = next_id();
    rows.push(refused(
        "event id of 257 bytes",
        &id,
        genuine(&id).set(ID, "e".repeat(257)),
        400,
        Some(INVALID_ID),
    ));
    let id = next_id();
    rows.push(refused(
        "event id `'; DROP TABLE x; --` (has spaces)",
        &id,
        genuine(&id).set(ID, "'; DROP TABLE x; --"),
        400,
        Some(INVALID_ID),
    ));
    let id = next_id();
    rows.push(refused(
        "event id comma-joined by a proxy (`a, b`)",
        &id,
        genuine(&id).set(ID, format!("{id}, {id}")),
        400,
        Some(INVALID_ID),
    ));

    // --- Signature format and value -----------------------------------------
    let id = next_id();
    rows.push(refused(
        "signature of 63 hex digits",
        &id,
        genuine(&id).set(SIG, &sig[..63]),
        401,
        Some(BAD_SIGNATURE),
    ));
    let id = next_id();
    rows.push(refused(
        "signature of 65 hex digits",
        &id,
        genuine(&id).set(SIG, format!("{sig}0")),
        401,
        Some(BAD_SIGNATURE),
    ));
    let id = next_id();
    rows.push(refused(
        "signature of 64 chars, one non-hex",
        &id,
        genuine(&id).set(SIG, format!("g{}", &sig[1..])),
        401,
        Some(BAD_SIGNATURE),
    ));
    let id = next_id();
    rows.push(refused(
        "signature with an inner space",
        &id,
        genuine(&id).set(SIG, format!("{} {}", &sig[..32], &sig[32..])),
        401,
        Some(BAD_SIGNATURE),
    ));
    let id = next_id();
    rows.push(refused(
        "signature with an inner tab",
        &id,
        genuine(&id).set(SIG, format!("{}\t{}", &sig[..32], &sig[32..])),
        401,
        Some(BAD_SIGNATURE),
    ));
    let id = next_id();
    rows.push(refused(
        "signature with a `sha256=` prefix",
        &id,
        genuine(&id).set(SIG, format!("sha256={sig}")),
        401,
        Some(BAD_SIGNATURE),
    ));
    let id = next_id();
    rows.push(refused(
        "signature as `t=...,v1=...` (the unreleased draft scheme)",
        &id,
        genuine(&id).set(SIG, format!("t=1750000000,v1={sig}")),
        401,
        Some(BAD_SIGNATURE),
    ));
    let id = next_id();
    rows.push(refused(
        "signature of another body",
        &id,
        genuine(&id).set(
            SIG,
            sign(SECRET.as_bytes(), br#"{"brand_id":1,"branch_id":2,"orders":[]}"#),
        ),
        401,
        Some(BAD_SIGNATURE),
    ));
    let id = next_id();
    rows.push(refused(
        "signature made with another secret",
        &id,
        genuine(&id).set(SIG, sign(OTHER_SECRET.as_bytes(), BODY.as_bytes())),
        401,
        Some(BAD_SIGNATURE),
    ));
    let id = next_id();
    rows.push(refused(
        "signature with the secret plus a trailing newline",
        &id,
        genuine(&id).set(SIG, sign(format!("{SECRET}\n").as_bytes(), BODY.as_bytes())),
        401,
        Some(BAD_SIGNATURE),
    ));
    let id = next_id();
    rows.push(refused(
        "signature of the empty body (non-empty body sent)",
        &id,
        genuine(&id).set(SIG, sign(SECRET.as_bytes(), b"")),
        401,
        Some(BAD_SIGNATURE),
    ));
    let id = next_id();
    rows.push(refused(
        "signature all zeros",
        &id,
        genuine(&id).set(SIG, "0".repeat(64)),
        401,
        Some(BAD_SIGNATURE),
    ));
    let id = next_id();
    rows.push(refused(
        "signature in base64 instead of hex",
        &id,
        genuine(&id).set(SIG, "7FB9dYkHZWHI4Ai1GiDXX4P3CvU0kJ7+Yz5RXQFvmoU="),
        401,
        Some(BAD_SIGNATURE),
    ));
    let id = next_id();
    rows.push(refused(
        "re-serialised JSON with the original signature",
        &id,
        genuine(&id)
            .unsigned_body(serde_json::to_vec(&serde_json::from_str::<serde_json::Value>(BODY).unwrap()).unwrap()),
        401,
        Some(BAD_SIGNATURE),
    ));
    let id = next_id();
    rows.push(accepted(
        "signature in UPPER-CASE hex (accepted)",
        &id,
        genuine(&id).set(SIG, sig.to_ascii_uppercase()),
    ));
    let id = next_id();
    // RFC 9110 §5.5: leading/trailing whitespace is not part of a field
    // value; hyper strips it, so the layer sees the exact 64 digits.
    rows.push(accepted(
        "signature with surrounding spaces/tabs (HTTP trims them; accepted)",
        &id,
        genuine(&id).set(SIG, format!(" \t{sig} \t")),
    ));
    let id = next_id();
    rows.push(accepted(
        "header names in mixed case (HTTP names are case-insensitive)",
        &id,
        genuine(&id)
            .remove(SIG)
            .remove(ID)
            .remove(TYPE)
            .add("X-Klikit-Signature", &sig)
            .add("X-KLIKIT-EVENT-ID", &id)
            .add("x-Klikit-Event-Type", CREATED),
    ));

    // --- Event ids that are odd but valid ------------------------------------
    let id = next_id();
    let long = format!("{id}-{}", "e".repeat(256 - id.len() - 1));
    assert_eq!(long.len(), 256);
    rows.push(accepted("event id of exactly 256 bytes", &long, genuine(&long)));
    let id = next_id();
    rows.push(accepted(
        "event id with surrounding spaces (trimmed by HTTP to the bare id)",
        &id,
        genuine(&format!("  {id}\t ")),
    ));
    for odd in [
        "odd*1",
        "odd:1",
        "odd%3A1",
        "odd%1",
        "odd\"1",
        "odd'1",
        "odd\\1",
        "odd`1",
        "x';DROP/**/TABLE/**/x;--",
        "odd{1}",
        "ODD*1",
    ] {
        rows.push(accepted(
            "event id with visible-ASCII punctuation (valid)",
            odd,
            genuine(odd),
        ));
    }

    // --- Bodies ------------------------------------------------------------
    // A signed empty body is authentic: the layer does not parse bodies, so
    // it passes, the handler queues it (200) and the worker would log a
    // payload error. Klikit never sends one; refusing it would only turn a
    // harmless no-op into endless retries.
    let id = next_id();
    rows.push(
        accepted(
            "empty body, signed (reaches the handler)",
            &id,
            genuine(&id).signed_body(b""),
        )
        .check(|event| {
            body_is(Vec::new())(event)?;
            payload_fails(event)
        }),
    );
    let id = next_id();
    rows.push(
        accepted(
            "no body and no framing headers at all, signed empty",
            &id,
            genuine(&id).signed_body(b"").remove("content-length"),
        )
        .check(body_is(Vec::new())),
    );
    let id = next_id();
    rows.push(refused(
        "empty body, unsigned (the signature of BODY)",
        &id,
        genuine(&id).unsigned_body(b""),
        401,
        Some(BAD_SIGNATURE),
    ));
    let big = vec![b' '; LIMIT + 1];
    let id = next_id();
    rows.push(refused(
        "body over the limit with Content-Length",
        &id,
        genuine(&id).signed_body(&big),
        413,
        Some(TOO_LARGE),
    ));
    let id = next_id();
    rows.push(refused(
        "body over the limit, chunked (no Content-Length)",
        &id,
        genuine(&id).signed_body(&big).chunked(4096),
        413,
        Some(TOO_LARGE),
    ));
    let id = next_id();
    // The size hint alone exceeds the limit: refused without buffering; the
    // layer drains what comes until the body timeout, then answers.
    rows.push(refused(
        "Content-Length over the limit, few bytes sent",
        &id,
        genuine(&id).set("content-length", (LIMIT + 1).to_string()),
        413,
        Some(TOO_LARGE),
    ));
    let id = next_id();
    let exact = vec![b' '; LIMIT];
    rows.push(
        accepted(
            "body of exactly the limit (accepted)",
            &id,
            genuine(&id).signed_body(&exact),
        )
        .check(body_is(exact.clone())),
    );
    let id = next_id();
    rows.push(refused(
        "Content-Length longer than sent (server waits: 408)",
        &id,
        genuine(&id).set("content-length", (BODY.len() + 10).to_string()),
        408,
        Some(TIMED_OUT),
    ));
    // Content-Length shorter than what is sent: only the announced bytes are
    // the body (and all the HMAC covers); the rest is the next request on a
    // keep-alive connection. Signed over everything sent: 401, then hyper
    // parses the leftover JSON as a request line and answers 400.
    let id = next_id();
    let cut = BODY.len() - 20;
    rows.push(
        refused(
            "Content-Length shorter than sent, signature over all bytes",
            &id,
            genuine(&id).remove("connection").set("content-length", cut.to_string()),
            401,
            Some(BAD_SIGNATURE),
        )
        .statuses(&[401, 400]),
    );
    // Signed over the announced prefix only: the prefix is authentic, so it
    // is accepted; the trailing bytes are a second, separate request (here a
    // health check) and never reach the webhook handler or its signature.
    let id = next_id();
    let prefix = &BODY.as_bytes()[..cut];
    let smuggled = b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n";
    rows.push(
        accepted(
            "Content-Length shorter than sent, signature over the announced prefix",
            &id,
            genuine(&id)
                .remove("connection")
                .set(SIG, sign(SECRET.as_bytes(), prefix))
                .set("content-length", cut.to_string())
                .wire([prefix, smuggled.as_slice()].concat()),
        )
        .statuses(&[200, 200])
        .check(body_is(prefix.to_vec())),
    );
    let id = next_id();
    rows.push(
        accepted("chunked, signed (7-byte chunks)", &id, genuine(&id).chunked(7))
            .check(body_is(BODY.as_bytes().to_vec())),
    );
    let id = next_id();
    rows.push(
        accepted(
            "chunked with chunk extensions and a trailer",
            &id,
            genuine(&id)
                .remove("content-length")
                .set("transfer-encoding", "chunked")
                .wire(format!(
                    "{:x};ext=1\r\n{BODY}\r\n0\r\nx-trailer: {}\r\n\r\n",
                    BODY.len(),
                    "0".repeat(64)
                )),
        )
        .check(body_is(BODY.as_bytes().to_vec())),
    );
    let id = next_id();
    rows.push(refused(
        "chunked with an invalid chunk size",
        &id,
        genuine(&id)
            .remove("content-length")
            .set("transfer-encoding", "chunked")
            .wire(format!("zz\r\n{BODY}\r\n0\r\n\r\n")),
        400,
        Some(BODY_READ),
    ));
    let id = next_id();
    rows.push(refused(
        "chunked without the final 0-chunk (server waits: 408)",
        &id,
        genuine(&id)
            .remove("content-length")
            .set("transfer-encoding", "chunked")
            .wire(format!("{:x}\r\n{BODY}\r\n", BODY.len())),
        408,
        Some(TIMED_OUT),
    ));
    // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length (and the
    // server must close the connection afterwards). hyper decodes the chunks,
    // the layer verifies exactly the decoded bytes: accepted. The announced
    // length (16) is ignored, so no prefix/suffix split can be smuggled past
    // the signature.
    let id = next_id();
    rows.push(
        accepted(
            "both Content-Length and Transfer-Encoding (chunked wins)",
            &id,
            genuine(&id)
                .set("content-length", "16")
                .set("transfer-encoding", "chunked")
                .wire(chunk(BODY.as_bytes(), 16)),
        )
        .check(body_is(BODY.as_bytes().to_vec())),
    );
    let id = next_id();
    rows.push(refused(
        "Content-Length not a number",
        &id,
        genuine(&id).set("content-length", "12x"),
        400,
        None,
    ));
    let id = next_id();
    rows.push(refused(
        "Content-Length repeated with two values",
        &id,
        genuine(&id).add("content-length", (BODY.len() + 1).to_string()),
        400,
        None,
    ));
    let id = next_id();
    rows.push(
        refused(
            "body arriving one byte every 25 ms (408 after the body timeout)",
            &id,
            genuine(&id),
            408,
            Some(TIMED_OUT),
        )
        .send(Send::Trickle(Duration::from_millis(25))),
    );
    let id = next_id();
    rows.push(
        accepted(
            "body arriving one byte per write, fast (many frames)",
            &id,
            genuine(&id),
        )
        .send(Send::Trickle(Duration::ZERO))
        .check(body_is(BODY.as_bytes().to_vec())),
    );
    let id = next_id();
    let invalid_utf8 = b"{\"brand_id\":663,\"x\":\"\xff\xfe\xc3\x28\"}".to_vec();
    rows.push(
        accepted(
            "invalid UTF-8, signed (not parsed by the layer)",
            &id,
            genuine(&id).signed_body(&invalid_utf8),
        )
        .check(move |event| {
            body_is(invalid_utf8.clone())(event)?;
            payload_fails(event)
        }),
    );
    let id = next_id();
    let depth = 30_000;
    let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes();
    rows.push(
        accepted(
            "deeply nested JSON (30k levels), signed",
            &id,
            genuine(&id).signed_body(&nested),
        )
        .check(move |event| {
            body_is(nested.clone())(event)?;
            // serde_json's recursion limit turns this into an error.
            payload_fails(event)?;
            event
                .json::<serde_json::Value>()
                .err()
                .map(|_| ())
                .ok_or("Value parsed".to_owned())
        }),
    );
    let id = next_id();
    let nested = "{\"a\":".repeat(10_000).into_bytes();
    rows.push(refused(
        "deeply nested JSON, forged signature",
        &id,
        genuine(&id).unsigned_body(nested),
        401,
        Some(BAD_SIGNATURE),
    ));
    let id = next_id();
    rows.push(
        accepted(
            "valid JSON that is not the envelope, signed",
            &id,
            genuine(&id).signed_body(br#"{"orders":"nope"}"#),
        )
        .check(payload_fails),
    );

    // --- Event types ---------------------------------------------------------
    let id = next_id();
    rows.push(
        accepted(
            "unknown event type (passed on)",
            &id,
            genuine(&id).set(TYPE, "klikit.menu.updated"),
        )
        .check(|event| match event.event_type().is_known() {
            false if event.event_type().as_str() == "klikit.menu.updated" => Ok(()),
            _ => Err(format!("event type {:?}", event.event_type())),
        }),
    );
    let id = next_id();
    rows.push(
        accepted(
            "known event type in UPPER case (an unknown name, passed on)",
            &id,
            genuine(&id).set(TYPE, CREATED.to_ascii_uppercase()),
        )
        .check(|event| match event.event_type().is_known() {
            false => Ok(()),
            true => Err(format!("event type {:?}", event.event_type())),
        }),
    );

    // --- Method and path -------------------------------------------------------
    let id = next_id();
    let mut get = genuine(&id);
    get.line = b"GET /webhooks/klikit HTTP/1.1".to_vec();
    rows.push(refused("GET with valid headers and body", &id, get, 405, None));
    let id = next_id();
    let mut other_path = genuine(&id);
    other_path.line = b"POST /webhooks/klikit/ HTTP/1.1".to_vec();
    rows.push(refused(
        "POST to another path (trailing slash)",
        &id,
        other_path,
        404,
        None,
    ));

    rows
}

// ---------------------------------------------------------------------------
// The test

async fn deliver_genuine(server: &Server, id: &str) -> Vec<Answer> {
    exchange(server.addr, &genuine(id), Send::Whole).await
}

fn drain_events(server: &mut Server) -> Vec<KlikitEvent> {
    let mut events = Vec::new();
    while let Ok(event) = server.events.try_recv() {
        events.push(event);
    }
    events
}

async fn run_row(server: &mut Server, row: &Row) -> Result<(), String> {
    // Leftovers of a previous failed row must not be blamed on this one.
    drain_events(server);
    let before = server.store.len();
    let answers = exchange(server.addr, &row.req, row.send).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    if statuses != row.statuses {
        return Err(format!(
            "statuses {statuses:?}, expected {:?}; bodies {:?}",
            row.statuses,
            answers.iter().map(|a| a.body.as_str()).collect::<Vec<_>>()
        ));
    }
    if let Some(body) = row.body
        && answers[0].body != body
    {
        return Err(format!("body {:?}, expected {body:?}", answers[0].body));
    }
    // The handler queues before it answers, so whatever it queued is there.
    let events = drain_events(server);
    match &row.outcome {
        Outcome::Refused { follow_id } => {
            if !events.is_empty() {
                return Err(format!("handler ran for a refused delivery: {:?}", events[0].id()));
            }
            if server.store.len() != before {
                return Err(format!("store holds {} ids, {before} before", server.store.len()));
            }
            let answers = deliver_genuine(server, follow_id).await;
            match answers.as_slice() {
                [a] if a.status == 200 && a.body == RECEIVED => {}
                other => return Err(format!("genuine delivery of {follow_id:?} afterwards: {other:?}")),
            }
            let events = drain_events(server);
            if events.len() != 1 || events[0].id().as_str() != follow_id {
                return Err(format!("genuine delivery queued {:?}", ids(&events)));
            }
            if server.store.len() != before + 1 {
                return Err("genuine delivery not recorded".to_owned());
            }
        }
        Outcome::Accepted { id, check } => {
            if events.len() != 1 || events[0].id().as_str() != id {
                return Err(format!("handler queued {:?}, expected [{id:?}]", ids(&events)));
            }
            if let Some(check) = check {
                check(&events[0])?;
            }
            if server.store.len() != before + 1 {
                return Err(format!("store holds {} ids, {before} before", server.store.len()));
            }
            let answers = deliver_genuine(server, id).await;
            match answers.as_slice() {
                [a] if a.status == 200 && a.body == DUPLICATE => {}
                other => return Err(format!("redelivery of {id:?}: {other:?}")),
            }
            if !drain_events(server).is_empty() {
                return Err("the redelivery reached the handler".to_owned());
            }
        }
    }
    Ok(())
}

fn ids(events: &[KlikitEvent]) -> Vec<&str> {
    events.iter().map(|e| e.id().as_str()).collect()
}

#[tokio::test]
async fn malformed_deliveries_get_their_status_and_leave_nothing_behind() {
    let mut server = start().await;
    let rows = rows();
    assert!(rows.len() >= 40, "{} rows", rows.len());
    let mut failures = String::new();
    let mut report = String::new();
    for (i, row) in rows.iter().enumerate() {
        let started = std::time::Instant::now();
        let result = run_row(&mut server, row).await;
        let took = started.elapsed();
        let _ = writeln!(
            report,
            "{i:>2} {:<4} {:>5}ms {:?} {}",
            if result.is_ok() { "ok" } else { "FAIL" },
            took.as_millis(),
            row.statuses,
            row.name
        );
        if let Err(error) = result {
            let _ = writeln!(failures, "row {i} `{}`: {error}", row.name);
        }
    }
    println!("{report}");
    assert!(
        failures.is_empty(),
        "{} rows:\n{report}\nfailures:\n{failures}",
        rows.len()
    );
}

/// Ids that differ only in punctuation, quoting or case are different
/// events: each is received once and each redelivery is a duplicate.
#[tokio::test]
async fn ids_differing_only_in_punctuation_do_not_collide() {
    let mut server = start().await;
    let odd = [
        "evt:1", "evt*1", "evt%1", "evt%3A1", "evt\"1", "evt'1", "evt\\1", "evt;1", "EVT:1", "evt:1'--", "evt:1%00",
        "evt::1", "evt_1", "evt-1", "evt.1", "evt/1",
    ];
    for id in odd {
        let answers = deliver_genuine(&server, id).await;
        assert_eq!(answers.len(), 1, "{id}");
        assert_eq!((answers[0].status, answers[0].body.as_str()), (200, RECEIVED), "{id}");
    }
    let queued = drain_events(&mut server);
    assert_eq!(ids(&queued), odd.to_vec());
    assert_eq!(server.store.len(), odd.len());
    for id in odd {
        let answers = deliver_genuine(&server, id).await;
        assert_eq!((answers[0].status, answers[0].body.as_str()), (200, DUPLICATE), "{id}");
    }
    assert!(drain_events(&mut server).is_empty());
}
