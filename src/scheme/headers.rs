//! Reading and writing delivery headers, for schemes' `parse` and `sign`.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::{EventId, EventType, InvalidEventId, RejectionKind};

/// The only value of header `name`: absent or empty is "missing"
/// ([`RejectionKind::MissingHeader`]), repeated is "invalid"
/// ([`RejectionKind::InvalidHeader`]), since two ids or two signature headers
/// are ambiguous. For schemes' [`parse`](super::Scheme::parse).
///
/// # Errors
///
/// As above, naming the header by `label`.
pub fn single_header<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
    label: &'static str,
) -> Result<&'a HeaderValue, RejectionKind> {
    let mut values = headers.get_all(name).iter();
    let value = values.next().ok_or(RejectionKind::MissingHeader(label))?;
    if values.next().is_some() {
        return Err(RejectionKind::InvalidHeader(label));
    }
    if value.is_empty() {
        return Err(RejectionKind::MissingHeader(label));
    }
    Ok(value)
}

/// Reads an event id header value: 1 to
/// [`MAX_EVENT_ID_LEN`](crate::MAX_EVENT_ID_LEN) bytes of visible ASCII. For
/// schemes' [`parse`](super::Scheme::parse).
///
/// # Errors
///
/// [`RejectionKind::InvalidEventId`] naming `label` otherwise.
pub fn event_id_header(value: &HeaderValue, label: &'static str) -> Result<EventId, RejectionKind> {
    EventId::from_header_bytes(value.as_bytes()).map_err(|error| RejectionKind::InvalidEventId { header: label, error })
}

/// Reads an event type header: 1 to 256 bytes of visible ASCII; any name is
/// accepted (unknown ones as [`EventType::Other`]). For schemes'
/// [`parse`](super::Scheme::parse).
///
/// # Errors
///
/// [`RejectionKind::InvalidHeader`] naming `label` otherwise.
pub fn event_type_header(value: &HeaderValue, label: &'static str) -> Result<EventType, RejectionKind> {
    value
        .to_str()
        .ok()
        .filter(|name| name.len() <= crate::MAX_EVENT_ID_LEN && name.bytes().all(|b| b.is_ascii_graphic()))
        .map(EventType::from_name)
        .ok_or(RejectionKind::InvalidHeader(label))
}

/// Writes `(name, value)` pairs into `headers` for [`Scheme::sign`](super::Scheme::sign); a
/// value that is no valid header value is left out (the receiver then
/// answers 400), never panicking.
pub(crate) fn insert_headers<'a>(headers: &mut HeaderMap, pairs: impl IntoIterator<Item = (&'a HeaderName, &'a str)>) {
    for (name, value) in pairs {
        match HeaderValue::from_str(value) {
            Ok(value) => {
                headers.insert(name.clone(), value);
            }
            Err(_) => tracing::debug!(header = %name, "not a valid header value; header left out"),
        }
    }
}

/// The only value of an event id header, read as an [`EventId`]: like
/// [`single_header`], except that a repeated header (or a proxy's
/// comma-joined pair) is an ambiguous id
/// ([`InvalidEventId::Ambiguous`]). For schemes' [`parse`](super::Scheme::parse).
///
/// # Errors
///
/// [`RejectionKind::MissingHeader`] when absent or empty,
/// [`RejectionKind::InvalidEventId`] otherwise.
pub fn single_event_id_header(
    headers: &HeaderMap,
    name: &HeaderName,
    label: &'static str,
) -> Result<EventId, RejectionKind> {
    let value = single_header(headers, name, label).map_err(|kind| match kind {
        RejectionKind::InvalidHeader(header) => RejectionKind::InvalidEventId {
            header,
            error: InvalidEventId::Ambiguous,
        },
        other => other,
    })?;
    event_id_header(value, label)
}

/// The only value of an event type header, read as an [`EventType`] (see
/// [`event_type_header`]). For schemes' [`parse`](super::Scheme::parse).
///
/// # Errors
///
/// As [`single_header`] and [`event_type_header`].
pub fn single_event_type_header(
    headers: &HeaderMap,
    name: &HeaderName,
    label: &'static str,
) -> Result<EventType, RejectionKind> {
    event_type_header(single_header(headers, name, label)?, label)
}
