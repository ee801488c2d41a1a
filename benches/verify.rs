//! Signature verification: `Verifier::verify` against the same work done by
//! hand with `hmac` + `sha2`, for bodies of 64 B, 1 KiB, 16 KiB and 1 MiB.
//!
//! The hand-written baseline (`hmac_prekeyed`) does what the `Verifier` does:
//! the HMAC key is derived once, outside the measurement, and each call
//! clones the keyed state, decodes the 64 hex digits of the signature, feeds
//! the body and compares in constant time (`verify_slice`).
//!
//! `body_digest` measures the digest the layer stores with each completed
//! event ([`BodyDigest::of`], XXH3-128) against SHA-256 of the same 1 KiB
//! body, the digest it replaced (see the store docs, "The body digest").
//!
//! `event_payload_1KiB` parses Klikit's `order_created` fixture (1 KiB) into
//! the typed envelope: [`KlikitEvent::payload`], which checks the body is
//! UTF-8 once and parses it as text, against `serde_json::from_slice`, what a
//! hand-written receiver (and the twin of the load benchmark) calls.
//!
//! Run with `cargo bench --bench verify`; `bash benches/run.sh` runs it in
//! every round and `benches/report.py` turns the estimates into ratios.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hmac::{Hmac, KeyInit, Mac};
use klikit_webhook::{
    EventType, KlikitEvent, WebhookSecret, fixtures,
    payload::OrderEnvelope,
    signature::{Verifier, sign},
    store::BodyDigest,
};
use sha2::{Digest as _, Sha256};

const SECRET: &str = "bench-secret-0123456789abcdef0123456789";
const SIZES: [(usize, &str); 4] = [(64, "64B"), (1024, "1KiB"), (16 * 1024, "16KiB"), (1024 * 1024, "1MiB")];

fn body(len: usize) -> Vec<u8> {
    // JSON-ish printable bytes; the content does not matter to SHA-256.
    (0..len).map(|i| b"{\"orders\":[1,2,3]}"[i % 18]).collect()
}

/// The baseline: a pre-keyed HMAC state, cloned per call.
fn hmac_prekeyed(keyed: &Hmac<Sha256>, body: &[u8], signature_hex: &[u8]) -> bool {
    let mut expected = [0u8; 32];
    if hex::decode_to_slice(signature_hex, &mut expected).is_err() {
        return false;
    }
    let mut mac = keyed.clone();
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

fn verification(c: &mut Criterion) {
    let verifier = Verifier::new(WebhookSecret::new(SECRET).unwrap());
    let keyed = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    let mut group = c.benchmark_group("verify");
    for (len, label) in SIZES {
        let body = body(len);
        let signature = sign(SECRET.as_bytes(), &body);
        assert_eq!(verifier.verify(&body, signature.as_bytes()), Ok(0));
        assert!(hmac_prekeyed(&keyed, &body, signature.as_bytes()));
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::new("verifier", label), &body, |b, body| {
            b.iter(|| verifier.verify(black_box(body), black_box(signature.as_bytes())))
        });
        group.bench_with_input(BenchmarkId::new("hmac_prekeyed", label), &body, |b, body| {
            b.iter(|| hmac_prekeyed(black_box(&keyed), black_box(body), black_box(signature.as_bytes())))
        });
    }
    group.finish();

    let body = body(1024);
    let mut group = c.benchmark_group("body_digest_1KiB");
    group.throughput(Throughput::Bytes(1024));
    group.bench_function("xxh3_128", |b| b.iter(|| BodyDigest::of(black_box(&body))));
    group.bench_function("sha256", |b| b.iter(|| Sha256::digest(black_box(&body))));
    group.finish();

    let body = fixtures::ORDER_CREATED.as_bytes();
    let event = KlikitEvent::new("evt-bench".parse().unwrap(), EventType::OrderCreated, body.into());
    assert_eq!(
        format!("{:?}", event.payload().unwrap()),
        format!("{:?}", serde_json::from_slice::<OrderEnvelope>(body).unwrap())
    );
    let mut group = c.benchmark_group("event_payload_1KiB");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("klikit_event_payload", |b| b.iter(|| black_box(&event).payload()));
    group.bench_function("serde_json_from_slice", |b| {
        b.iter(|| serde_json::from_slice::<OrderEnvelope>(black_box(body)))
    });
    group.finish();
}

criterion_group!(benches, verification);
criterion_main!(benches);
