//! The authenticated event the layer hands to handlers.

use std::{borrow::Borrow, fmt, str::FromStr, sync::Arc};

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de::DeserializeOwned};

use crate::payload::{OrderEnvelope, v1};

/// The longest event id the layer accepts, in bytes.
pub const MAX_EVENT_ID_LEN: usize = 256;

/// A validated `x-klikit-event-id`: 1 to 256 bytes of visible ASCII
/// (`!` to `~`, no spaces or control characters).
///
/// Cloning is cheap (a reference count). Stores may rely on the character
/// set: an id never contains whitespace, quotes are possible, so backends
/// must still pass it as a parameter, not splice it into a query.
///
/// ```
/// use klikit_webhook::EventId;
///
/// let id: EventId = "test-5f0c".parse().unwrap();
/// assert_eq!(id.as_str(), "test-5f0c");
/// assert!(EventId::new("").is_err());
/// assert!(EventId::new("has space").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(Arc<str>);

/// An `x-klikit-event-id` value that is empty, too long or not visible ASCII.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidEventId {
    /// The id is empty.
    #[error("event id is empty")]
    Empty,
    /// The id is longer than [`MAX_EVENT_ID_LEN`] bytes.
    #[error("event id is {0} bytes long; at most 256 are allowed")]
    TooLong(usize),
    /// The id holds a byte outside visible ASCII.
    #[error("event id holds a character that is not visible ASCII at byte {0}")]
    InvalidCharacter(usize),
    /// The id starts with `sig:`, the prefix of the keys that signature
    /// deduplication stores next to event ids (refused only while
    /// [`with_signature_dedup`](crate::KlikitWebhookLayer::with_signature_dedup) is on).
    #[error("event id starts with the reserved prefix `sig:`")]
    ReservedPrefix,
    /// The id header appears more than once, so the id is ambiguous.
    #[error("event id header appears more than once")]
    Ambiguous,
}

impl EventId {
    /// Validates an event id.
    ///
    /// # Errors
    ///
    /// Returns [`InvalidEventId`] if `id` is empty, longer than
    /// [`MAX_EVENT_ID_LEN`] bytes, or holds anything but visible ASCII.
    pub fn new(id: impl AsRef<str>) -> Result<Self, InvalidEventId> {
        let id = id.as_ref();
        Self::validate(id.as_bytes())?;
        Ok(Self(Arc::from(id)))
    }

    pub(crate) fn from_header_bytes(bytes: &[u8]) -> Result<Self, InvalidEventId> {
        Self::validate(bytes)?;
        // Visible ASCII is valid UTF-8; the fallback is unreachable.
        let id = std::str::from_utf8(bytes).map_err(|e| InvalidEventId::InvalidCharacter(e.valid_up_to()))?;
        Ok(Self(Arc::from(id)))
    }

    fn validate(bytes: &[u8]) -> Result<(), InvalidEventId> {
        if bytes.is_empty() {
            return Err(InvalidEventId::Empty);
        }
        if bytes.len() > MAX_EVENT_ID_LEN {
            return Err(InvalidEventId::TooLong(bytes.len()));
        }
        match bytes.iter().position(|b| !b.is_ascii_graphic()) {
            Some(at) => Err(InvalidEventId::InvalidCharacter(at)),
            None => Ok(()),
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether both ids are equal; without reading either when they share
    /// their allocation (a store comparing a lease's id with its own copy).
    pub(crate) fn same_as(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for EventId {
    type Err = InvalidEventId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl AsRef<str> for EventId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for EventId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// The event type: `x-klikit-event-type` under today's contract,
/// `X-Klikit-Event` (and the body's `event_type`) under Partner API v1.
///
/// Unknown names are not an error: Klikit may add event types (Partner API
/// v1 says consumers must ignore what they do not know), and rejecting them
/// would make Klikit retry for ever. They arrive as [`EventType::Other`].
/// During the switch to v1 one handler can match both contracts' names.
///
/// ```
/// use klikit_webhook::EventType;
///
/// assert_eq!(EventType::from_name("klikit.order.status.updated"), EventType::OrderStatusUpdated);
/// assert_eq!(EventType::from_name("order.placed.v1"), EventType::OrderPlacedV1);
/// assert_eq!(EventType::from_name("order.placed.v2").as_str(), "order.placed.v2");
/// assert!(EventType::OrderDeliveredV1.is_v1());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventType {
    /// `klikit.order.created.v2`: new orders were placed; `orders` may hold several.
    OrderCreated,
    /// `klikit.order.status.updated`: an order changed state.
    OrderStatusUpdated,
    /// `klikit.order.cart.updated`: an order's whole cart was replaced.
    OrderCartUpdated,
    /// `order.placed.v1`: a new order arrived (once per order).
    OrderPlacedV1,
    /// `order.updated.v1`: order details changed, not its status.
    OrderUpdatedV1,
    /// `order.cancelled.v1`: the order was cancelled, by any party.
    OrderCancelledV1,
    /// `order.amended.v1`: an operator corrected the order.
    OrderAmendedV1,
    /// `order.courier_assigned.v1`: a rider was assigned (delivery orders).
    OrderCourierAssignedV1,
    /// `order.picked_up.v1`: the order left the store.
    OrderPickedUpV1,
    /// `order.delivered.v1`: the delivery order was delivered.
    OrderDeliveredV1,
    /// Any other event name, passed on unchanged.
    Other(Arc<str>),
}

impl EventType {
    /// `klikit.order.created.v2`
    pub const ORDER_CREATED: &'static str = "klikit.order.created.v2";
    /// `klikit.order.status.updated`
    pub const ORDER_STATUS_UPDATED: &'static str = "klikit.order.status.updated";
    /// `klikit.order.cart.updated`
    pub const ORDER_CART_UPDATED: &'static str = "klikit.order.cart.updated";
    /// `order.placed.v1`
    pub const ORDER_PLACED_V1: &'static str = "order.placed.v1";
    /// `order.updated.v1`
    pub const ORDER_UPDATED_V1: &'static str = "order.updated.v1";
    /// `order.cancelled.v1`
    pub const ORDER_CANCELLED_V1: &'static str = "order.cancelled.v1";
    /// `order.amended.v1`
    pub const ORDER_AMENDED_V1: &'static str = "order.amended.v1";
    /// `order.courier_assigned.v1`
    pub const ORDER_COURIER_ASSIGNED_V1: &'static str = "order.courier_assigned.v1";
    /// `order.picked_up.v1`
    pub const ORDER_PICKED_UP_V1: &'static str = "order.picked_up.v1";
    /// `order.delivered.v1`
    pub const ORDER_DELIVERED_V1: &'static str = "order.delivered.v1";

    /// The seven event types of Partner API v1's registry.
    pub const V1: [EventType; 7] = [
        Self::OrderPlacedV1,
        Self::OrderUpdatedV1,
        Self::OrderCancelledV1,
        Self::OrderAmendedV1,
        Self::OrderCourierAssignedV1,
        Self::OrderPickedUpV1,
        Self::OrderDeliveredV1,
    ];

    /// Parses an event name; never fails.
    pub fn from_name(name: &str) -> Self {
        match name {
            Self::ORDER_CREATED => Self::OrderCreated,
            Self::ORDER_STATUS_UPDATED => Self::OrderStatusUpdated,
            Self::ORDER_CART_UPDATED => Self::OrderCartUpdated,
            Self::ORDER_PLACED_V1 => Self::OrderPlacedV1,
            Self::ORDER_UPDATED_V1 => Self::OrderUpdatedV1,
            Self::ORDER_CANCELLED_V1 => Self::OrderCancelledV1,
            Self::ORDER_AMENDED_V1 => Self::OrderAmendedV1,
            Self::ORDER_COURIER_ASSIGNED_V1 => Self::OrderCourierAssignedV1,
            Self::ORDER_PICKED_UP_V1 => Self::OrderPickedUpV1,
            Self::ORDER_DELIVERED_V1 => Self::OrderDeliveredV1,
            other => Self::Other(Arc::from(other)),
        }
    }

    /// The event name as Klikit sends it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::OrderCreated => Self::ORDER_CREATED,
            Self::OrderStatusUpdated => Self::ORDER_STATUS_UPDATED,
            Self::OrderCartUpdated => Self::ORDER_CART_UPDATED,
            Self::OrderPlacedV1 => Self::ORDER_PLACED_V1,
            Self::OrderUpdatedV1 => Self::ORDER_UPDATED_V1,
            Self::OrderCancelledV1 => Self::ORDER_CANCELLED_V1,
            Self::OrderAmendedV1 => Self::ORDER_AMENDED_V1,
            Self::OrderCourierAssignedV1 => Self::ORDER_COURIER_ASSIGNED_V1,
            Self::OrderPickedUpV1 => Self::ORDER_PICKED_UP_V1,
            Self::OrderDeliveredV1 => Self::ORDER_DELIVERED_V1,
            Self::Other(name) => name,
        }
    }

    /// Whether this is one of Partner API v1's seven event types.
    pub fn is_v1(&self) -> bool {
        Self::V1.contains(self)
    }

    /// Whether this is one of the event types this crate knows.
    pub fn is_known(&self) -> bool {
        !matches!(self, Self::Other(_))
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventType {
    /// Any string; never fails on an unknown name.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Ok(Self::from_name(&name))
    }
}

impl Serialize for EventType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// An authenticated, deduplicated Klikit delivery.
///
/// The layer inserts one into the request extensions after the signature
/// matched and the dedup store granted the claim. With the `axum` feature it
/// is an extractor. The body is the exact bytes that were verified, shared
/// (not copied) with the request body the handler can still read.
///
/// Parsing happens only when asked: [`payload`](Self::payload) for the
/// documented envelope, [`json`](Self::json) for a type of your own.
///
/// ```
/// use klikit_webhook::{EventType, KlikitEvent};
///
/// let body = r#"{"brand_id":1,"branch_id":2,"orders":[{"id":3,"status":5}]}"#;
/// let event = KlikitEvent::new("evt-1".parse().unwrap(), EventType::OrderStatusUpdated, body.into());
/// let payload = event.payload().unwrap();
/// assert_eq!(payload.orders[0].id, 3);
/// ```
#[derive(Debug, Clone)]
pub struct KlikitEvent {
    id: EventId,
    event_type: EventType,
    body: Bytes,
    secret_index: usize,
}

impl KlikitEvent {
    /// Builds an event by hand, for tests of handlers.
    pub fn new(id: EventId, event_type: EventType, body: Bytes) -> Self {
        Self {
            id,
            event_type,
            body,
            secret_index: 0,
        }
    }

    pub(crate) fn with_secret_index(mut self, index: usize) -> Self {
        self.secret_index = index;
        self
    }

    /// The `x-klikit-event-id`.
    pub fn id(&self) -> &EventId {
        &self.id
    }

    /// The `x-klikit-event-type`.
    pub fn event_type(&self) -> &EventType {
        &self.event_type
    }

    /// The raw body exactly as it was received and verified.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Which configured secret verified the signature: 0 for the primary,
    /// 1 and up for the extra secrets in the order they were added.
    pub fn secret_index(&self) -> usize {
        self.secret_index
    }

    /// Parses the body as the documented `{brand_id, branch_id, orders}`
    /// envelope. Unknown fields are ignored.
    ///
    /// # Errors
    ///
    /// Returns the JSON error if the body does not fit the envelope.
    pub fn payload(&self) -> Result<OrderEnvelope, serde_json::Error> {
        self.json()
    }

    /// Parses the body as a Partner API v1 envelope (`event_id`,
    /// `event_type`, `created_at`, `business_id`, `data`: the whole current
    /// [`Order`](v1::Order)), for deliveries of the
    /// [`KlikitV1`](crate::scheme::KlikitV1) scheme. Unknown fields and enum
    /// values are kept or ignored, never an error.
    ///
    /// ```
    /// use klikit_webhook::{EventType, KlikitEvent, payload::v1::{OrderStatus, fixtures}};
    ///
    /// let event = KlikitEvent::new("evt".parse().unwrap(), EventType::OrderPlacedV1, fixtures::ORDER_PLACED.into());
    /// let envelope = event.v1_payload().unwrap();
    /// assert_eq!(envelope.event_type, EventType::OrderPlacedV1);
    /// assert_eq!(envelope.data.status, OrderStatus::Placed);
    /// ```
    ///
    /// # Errors
    ///
    /// Returns the JSON error if the body does not fit the envelope.
    pub fn v1_payload(&self) -> Result<v1::Envelope, serde_json::Error> {
        self.json()
    }

    /// Parses the body as any JSON type.
    ///
    /// The same result as `serde_json::from_slice(event.body())`, faster:
    /// the body is checked to be UTF-8 once, as a whole, and then parsed as
    /// text, where `from_slice` checks each string and object key on its
    /// own (83 checks in the 1 KiB `order_created` fixture; the
    /// `event_payload_1KiB` benchmark in `benches/verify.rs` measures the
    /// difference). A body that is not UTF-8 is left to `from_slice`, so
    /// that the error says where.
    ///
    /// ```
    /// use klikit_webhook::{EventType, KlikitEvent};
    ///
    /// let event = KlikitEvent::new("evt-1".parse().unwrap(), EventType::OrderCreated, r#"{"brand_id": 7}"#.into());
    /// let value: serde_json::Value = event.json().unwrap();
    /// assert_eq!(value["brand_id"], 7);
    ///
    /// // Not UTF-8: the same error as `serde_json::from_slice` gives.
    /// let event = KlikitEvent::new("evt-2".parse().unwrap(), EventType::OrderCreated, b"{\"a\": \"\xff\"}".to_vec().into());
    /// let error = event.json::<serde_json::Value>().unwrap_err();
    /// assert_eq!(error.to_string(), serde_json::from_slice::<serde_json::Value>(event.body()).unwrap_err().to_string());
    /// ```
    ///
    /// # Errors
    ///
    /// Returns the JSON error if the body does not deserialize into `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        match std::str::from_utf8(&self.body) {
            Ok(text) => serde_json::from_str(text),
            Err(_) => serde_json::from_slice(&self.body),
        }
    }
}
