//! Event id and event type validation never panics and matches its
//! specification: an id is valid if and only if it is 1 to 256 bytes of
//! visible ASCII (`!`..=`~`); a valid id round-trips through `as_str`,
//! `Display`, `FromStr` and an `http::HeaderValue`; any event name
//! round-trips through `EventType`.
#![no_main]

use klikit_webhook::{EventId, EventType, InvalidEventId, MAX_EVENT_ID_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Whatever bytes a header value may carry, through http's own type.
    let header = http::HeaderValue::from_bytes(data);

    let Ok(text) = std::str::from_utf8(data) else {
        // Not UTF-8, so not visible ASCII: http may hold it, the id never.
        if let Ok(header) = header {
            assert!(header.to_str().is_err());
        }
        return;
    };

    let valid = !data.is_empty() && data.len() <= MAX_EVENT_ID_LEN && data.iter().all(u8::is_ascii_graphic);
    let id = EventId::new(text);
    assert_eq!(id.is_ok(), valid, "EventId::new disagrees on {text:?}");
    match &id {
        Ok(id) => {
            assert_eq!(id.as_str(), text);
            assert_eq!(id.to_string(), text);
            assert_eq!(format!("{id:?}"), format!("{text:?}"));
            let parsed: EventId = text.parse().unwrap();
            assert_eq!(&parsed, id);
            let header = header.expect("a visible-ASCII id is a valid header value");
            assert_eq!(header.as_bytes(), id.as_str().as_bytes());
            assert_eq!(EventId::new(header.to_str().unwrap()).as_ref(), Ok(id));
        }
        Err(InvalidEventId::Empty) => assert!(data.is_empty()),
        Err(InvalidEventId::TooLong(n)) => assert!(*n == data.len() && *n > MAX_EVENT_ID_LEN),
        Err(InvalidEventId::InvalidCharacter(at)) => {
            assert!(data.len() <= MAX_EVENT_ID_LEN);
            assert!(!data[*at].is_ascii_graphic());
            assert!(data[..*at].iter().all(u8::is_ascii_graphic));
        }
        Err(other) => panic!("unexpected error {other:?}"),
    }
    assert_eq!(text.parse::<EventId>().is_ok(), valid);

    // Event names: never fail, round-trip exactly, known only for the three.
    let event_type = EventType::from_name(text);
    assert_eq!(event_type.as_str(), text);
    assert_eq!(event_type.to_string(), text);
    let known = [
        EventType::ORDER_CREATED,
        EventType::ORDER_STATUS_UPDATED,
        EventType::ORDER_CART_UPDATED,
    ]
    .contains(&text);
    assert_eq!(event_type.is_known(), known);
});
