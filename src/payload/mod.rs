//! Typed Klikit payloads: the `{brand_id, branch_id, orders}` envelope of
//! today's contract here, and Partner API v1's envelope and order in [`v1`].
//!
//! Klikit's order model has more than a hundred fields and grows; these
//! types name the ones its documentation shows and ignore the rest, so a new
//! field never breaks parsing. For anything else, parse the body into your
//! own type with [`KlikitEvent::json`](crate::KlikitEvent::json).
//!
//! Where Klikit's documents are loose, the types are lenient:
//! - money arrives as a string (`"84.50"`) or a number (`0`); both parse into
//!   an exact [`Decimal`], never `f64`;
//! - `status` is a number whose full table is unpublished; [`OrderStatus`]
//!   keeps the raw code and names only the confirmed ones;
//! - `cart_v2` ids arrive as strings or numbers and are kept as strings;
//! - every field but `id` may be missing or `null`.
//!
//! ```
//! use klikit_webhook::payload::{OrderEnvelope, OrderStatus};
//!
//! let body = r#"{"brand_id":663,"branch_id":1062,"orders":[{"id":7585307,"status":5,
//!   "total":"84.50","currency":"AED","some_future_field":{"ignored":true},
//!   "cart":[{"item_id":289379,"title":"Nasi Goreng","quantity":2,"price":0}]}]}"#;
//! let envelope: OrderEnvelope = serde_json::from_str(body).unwrap();
//! let order = &envelope.orders[0];
//! assert_eq!(order.status, Some(OrderStatus::Ready));
//! assert_eq!(order.total.unwrap().to_string(), "84.50");
//! assert_eq!(order.cart[0].quantity, Some(2));
//! ```

use std::fmt;

pub use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
pub use time::OffsetDateTime;

pub mod v1;

/// What every Klikit order event carries.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[non_exhaustive]
pub struct OrderEnvelope {
    /// The brand the orders belong to.
    pub brand_id: i64,
    /// The branch the orders belong to.
    pub branch_id: i64,
    /// One or more orders; always loop over them.
    pub orders: Vec<Order>,
}

/// An order as Klikit's webhooks and `GET /v1/partner/orders/{id}` show it.
///
/// Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[non_exhaustive]
pub struct Order {
    /// Klikit's order id.
    pub id: i64,
    /// The channel's order reference, e.g. `"ABC-123"`.
    #[serde(default)]
    pub external_id: Option<String>,
    /// The business the order belongs to.
    #[serde(default)]
    pub business_id: Option<i64>,
    /// The brand the order belongs to.
    #[serde(default)]
    pub brand_id: Option<i64>,
    /// The branch the order belongs to.
    #[serde(default)]
    pub branch_id: Option<i64>,
    /// The order's state.
    #[serde(default)]
    pub status: Option<OrderStatus>,
    /// Payment status code (table unpublished).
    #[serde(default)]
    pub payment_status: Option<i64>,
    /// Payment channel code (table unpublished).
    #[serde(default)]
    pub payment_channel: Option<i64>,
    /// Payment method code (table unpublished).
    #[serde(default)]
    pub payment_method: Option<i64>,
    /// When the order was placed (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub placed_at: Option<OffsetDateTime>,
    /// When the order last changed (RFC 3339). Compare it before overwriting:
    /// Klikit does not promise to deliver events in order.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub updated_at: Option<OffsetDateTime>,
    /// ISO currency code, e.g. `"AED"`.
    #[serde(default)]
    pub currency: Option<String>,
    /// The order total.
    #[serde(default, with = "money::option")]
    pub total: Option<Decimal>,
    /// The brands on the order.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub brands: Vec<Brand>,
    /// The customer, as Klikit sends it.
    #[serde(default)]
    pub customer: Option<serde_json::Value>,
    /// Line items: the whole cart, not a delta.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub cart: Vec<CartItem>,
    /// Line items in Klikit's second cart format.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub cart_v2: Vec<CartItemV2>,
    /// Whether the order is accepted automatically.
    #[serde(default)]
    pub auto_accept: Option<bool>,
    /// Whether the order can still be cancelled.
    #[serde(default)]
    pub can_cancel: Option<bool>,
    /// Whether the order can still be voided.
    #[serde(default)]
    pub can_void: Option<bool>,
}

/// A brand on an order.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[non_exhaustive]
pub struct Brand {
    /// The brand id.
    pub id: i64,
    /// The brand's name.
    #[serde(default)]
    pub title: Option<String>,
    /// The brand's logo URL.
    #[serde(default)]
    pub logo: Option<String>,
}

/// A line item in `cart`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[non_exhaustive]
pub struct CartItem {
    /// The menu item id.
    #[serde(default)]
    pub item_id: Option<i64>,
    /// The item's name.
    #[serde(default)]
    pub title: Option<String>,
    /// How many.
    #[serde(default)]
    pub quantity: Option<i64>,
    /// Line price.
    #[serde(default, with = "money::option")]
    pub price: Option<Decimal>,
    /// Unit price.
    #[serde(default, with = "money::option")]
    pub unit_price: Option<Decimal>,
    /// VAT amount.
    #[serde(default, with = "money::option")]
    pub vat: Option<Decimal>,
}

/// A line item in `cart_v2`, whose `id` is a string.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[non_exhaustive]
pub struct CartItemV2 {
    /// The item id (a string in Klikit's examples; numbers are accepted).
    #[serde(default, deserialize_with = "string_or_number")]
    pub id: Option<String>,
    /// The item's name.
    #[serde(default)]
    pub title: Option<String>,
    /// How many.
    #[serde(default)]
    pub quantity: Option<i64>,
    /// Line price.
    #[serde(default, with = "money::option")]
    pub price: Option<Decimal>,
}

/// An order's state code.
///
/// Klikit's numeric table is unpublished. Only the codes its documentation
/// confirms are named; every other code is kept as [`OrderStatus::Unknown`]
/// with its number, so nothing is guessed and nothing is rejected.
///
/// ```
/// use klikit_webhook::payload::OrderStatus;
///
/// assert_eq!(OrderStatus::from_code(5), OrderStatus::Ready);
/// assert_eq!(OrderStatus::from_code(2).code(), 2);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OrderStatus {
    /// `5`: READY, as annotated in Klikit's `status.updated` example.
    Ready,
    /// Any other code.
    Unknown(i64),
}

impl OrderStatus {
    /// The status for a code.
    pub fn from_code(code: i64) -> Self {
        match code {
            5 => Self::Ready,
            other => Self::Unknown(other),
        }
    }

    /// The code Klikit sends.
    pub fn code(self) -> i64 {
        match self {
            Self::Ready => 5,
            Self::Unknown(code) => code,
        }
    }
}

impl<'de> Deserialize<'de> for OrderStatus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        i64::deserialize(deserializer).map(Self::from_code)
    }
}

impl Serialize for OrderStatus {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i64(self.code())
    }
}

fn null_as_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

fn string_or_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Text(String),
        Int(i64),
        Uint(u64),
    }
    Ok(Option::<Id>::deserialize(deserializer)?.map(|id| match id {
        Id::Text(s) => s,
        Id::Int(n) => n.to_string(),
        Id::Uint(n) => n.to_string(),
    }))
}

/// Serde helpers for money that arrives as a decimal string or a JSON number.
///
/// Use them on your own types with `#[serde(with = "klikit_webhook::payload::money")]`
/// (or `money::option` for `Option<Decimal>`). Strings are parsed exactly.
/// Integers are exact. Fractional JSON numbers are read by serde_json as
/// `f64` first; they are converted through their shortest decimal form, so
/// `84.5` becomes exactly `84.5`. Serialisation writes a string.
///
/// ```
/// use rust_decimal::Decimal;
///
/// #[derive(serde::Deserialize)]
/// struct Line {
///     #[serde(with = "klikit_webhook::payload::money")]
///     price: Decimal,
/// }
/// let a: Line = serde_json::from_str(r#"{"price":"0.10"}"#).unwrap();
/// let b: Line = serde_json::from_str(r#"{"price":0.1}"#).unwrap();
/// assert_eq!(a.price, b.price);
/// ```
pub mod money {
    use super::*;

    /// Deserializes a string or number into a [`Decimal`].
    ///
    /// # Errors
    ///
    /// Fails on anything that is not a decimal string or a finite number.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
        deserializer.deserialize_any(MoneyVisitor)
    }

    /// Serializes a [`Decimal`] as a string.
    ///
    /// # Errors
    ///
    /// Only the serializer's own errors.
    pub fn serialize<S: Serializer>(value: &Decimal, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    /// The same for `Option<Decimal>`, with `null` as `None`.
    pub mod option {
        use super::*;

        /// Deserializes `null`, a string or a number.
        ///
        /// # Errors
        ///
        /// Fails on anything that is not `null`, a decimal string or a finite number.
        pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Decimal>, D::Error> {
            deserializer.deserialize_option(OptionVisitor)
        }

        /// Serializes `None` as `null` and a value as a string.
        ///
        /// # Errors
        ///
        /// Only the serializer's own errors.
        pub fn serialize<S: Serializer>(value: &Option<Decimal>, serializer: S) -> Result<S::Ok, S::Error> {
            match value {
                Some(value) => serializer.collect_str(value),
                None => serializer.serialize_none(),
            }
        }

        struct OptionVisitor;

        impl<'de> de::Visitor<'de> for OptionVisitor {
            type Value = Option<Decimal>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("null, a decimal string or a number")
            }

            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
                super::deserialize(deserializer).map(Some)
            }
        }
    }

    struct MoneyVisitor;

    impl de::Visitor<'_> for MoneyVisitor {
        type Value = Decimal;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a decimal string or a number")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Decimal, E> {
            let v = v.trim();
            Decimal::from_str_exact(v)
                .or_else(|_| Decimal::from_scientific(v))
                .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Decimal, E> {
            Ok(Decimal::from(v))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Decimal, E> {
            Ok(Decimal::from(v))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Decimal, E> {
            if !v.is_finite() {
                return Err(E::invalid_value(de::Unexpected::Float(v), &self));
            }
            // `Display` for f64 prints the shortest string that round-trips,
            // which is the literal the sender wrote for any realistic amount.
            let text = v.to_string();
            Decimal::from_str_exact(&text)
                .or_else(|_| Decimal::from_scientific(&text))
                .map_err(|_| E::invalid_value(de::Unexpected::Float(v), &self))
        }
    }
}
