//! Parsing any bytes as the documented envelope never panics (nor overflows
//! the stack: serde_json's recursion limit applies). An envelope that parses
//! serialises and parses again to the same value.
#![no_main]

use klikit_webhook::{EventId, EventType, KlikitEvent, payload::OrderEnvelope};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = serde_json::from_slice::<OrderEnvelope>(data);

    // The same through the event the layer hands to handlers.
    let event = KlikitEvent::new(
        EventId::new("fuzz").unwrap(),
        EventType::OrderCreated,
        bytes::Bytes::copy_from_slice(data),
    );
    let via_event = event.payload();
    assert_eq!(parsed.is_ok(), via_event.is_ok());
    let _ = event.json::<serde_json::Value>();

    if let Ok(envelope) = parsed {
        assert_eq!(Some(&envelope), via_event.as_ref().ok());
        let json = serde_json::to_vec(&envelope).expect("a parsed envelope serialises");
        let again: OrderEnvelope = serde_json::from_slice(&json)
            .unwrap_or_else(|e| panic!("re-parse failed: {e}\n{}", String::from_utf8_lossy(&json)));
        assert_eq!(again, envelope, "round trip changed the envelope");
    }
});
