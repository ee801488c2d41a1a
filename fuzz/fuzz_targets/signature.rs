//! `parse_signature`, `Verifier::verify` and incremental verification never
//! panic, and agree with a plain reference: a header verifies if and only if
//! it is the 64-digit hex (either case) HMAC of the body under one of the
//! secrets; a correct signature always verifies, with the right index.
#![no_main]

use arbitrary::Arbitrary;
use klikit_webhook::{
    WebhookSecret,
    signature::{SignatureError, Verifier, parse_signature, sign},
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    secret: Vec<u8>,
    previous: Option<Vec<u8>>,
    header: Vec<u8>,
    body: Vec<u8>,
    /// Where to split the body for incremental verification.
    split: usize,
    /// Which header to try: the fuzzed bytes, or a correct one in some case.
    mode: u8,
}

fuzz_target!(|input: Input| {
    // Parsing alone, on anything.
    let parsed = parse_signature(&input.header);
    let is_hex64 = input.header.len() == 64 && input.header.iter().all(u8::is_ascii_hexdigit);
    assert_eq!(
        parsed.is_ok(),
        is_hex64,
        "parse_signature disagrees on {:?}",
        input.header
    );
    if let Ok(bytes) = parsed {
        assert_eq!(
            hex::encode(bytes).as_bytes(),
            input.header.to_ascii_lowercase().as_slice()
        );
    }

    let Ok(secret) = WebhookSecret::new(input.secret.clone()) else {
        assert!(input.secret.is_empty(), "only an empty secret is refused");
        return;
    };
    let mut verifier = Verifier::new(secret);
    let mut secrets = vec![input.secret.clone()];
    if let Some(previous) = &input.previous
        && let Ok(secret) = WebhookSecret::new(previous.clone())
    {
        verifier = verifier.with_secret(secret);
        secrets.push(previous.clone());
    }

    let signatures: Vec<String> = secrets.iter().map(|s| sign(s, &input.body)).collect();
    let header: Vec<u8> = match input.mode % 4 {
        0 => input.header.clone(),
        1 => signatures[0].clone().into_bytes(),
        2 => signatures[signatures.len() - 1].to_ascii_uppercase().into_bytes(),
        _ => {
            // A correct signature with one byte of the fuzzed header patched in.
            let mut header = signatures[0].clone().into_bytes();
            if let Some(&b) = input.header.first() {
                let at = input.split % header.len();
                header[at] = b;
            }
            header
        }
    };

    // Reference: the first secret whose lowercase hex equals the header.
    let lower = header.to_ascii_lowercase();
    let expected = if !(header.len() == 64 && header.iter().all(u8::is_ascii_hexdigit)) {
        Err(SignatureError::Malformed)
    } else {
        signatures
            .iter()
            .position(|s| s.as_bytes() == lower.as_slice())
            .ok_or(SignatureError::Mismatch)
    };

    let verified = verifier.verify(&input.body, &header);
    assert_eq!(verified, expected, "verify disagrees with the reference");

    // The same result when the body arrives in two pieces.
    let at = input.split % (input.body.len() + 1);
    let mut state = verifier.start();
    state.update(&input.body[..at]);
    state.update(&input.body[at..]);
    match parse_signature(&header) {
        Ok(decoded) => assert_eq!(state.finish(&decoded), verified),
        Err(error) => assert_eq!(Err(error), verified),
    }

    // A correct signature always verifies, in either case.
    for (i, signature) in signatures.iter().enumerate() {
        let first = signatures.iter().position(|s| s == signature).unwrap();
        assert_eq!(
            verifier.verify(&input.body, signature.as_bytes()),
            Ok(first),
            "secret {i}"
        );
        assert_eq!(
            verifier.verify(&input.body, signature.to_ascii_uppercase().as_bytes()),
            Ok(first),
            "secret {i}, upper case"
        );
    }
});
