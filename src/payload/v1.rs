//! Partner API v1 payloads: the event [`Envelope`] and the [`Order`] it
//! carries, as published in Klikit's `_order.schema.json` (JSON Schema
//! draft 2020-12, frozen 2026-05-16).
//!
//! Every v1 event type shares the envelope, and `data` is always the whole
//! current order, never a delta. Klikit's versioning policy adds optional
//! fields and enum values within a version, so these types are tolerant:
//! - unknown fields are ignored (no `deny_unknown_fields`, although the
//!   envelope's schema says `additionalProperties: false`);
//! - every enum keeps an unknown value as `Other(String)` instead of failing
//!   (the policy: consumers must ignore unknown enum values);
//! - money is an exact [`Decimal`], read from a JSON number (as the schema
//!   has it) or a string; timestamps are [`OffsetDateTime`] (RFC 3339);
//! - fields the schema does not require are `Option` or default to empty.
//!
//! Events are not ordered: compare [`Order::updated_at`] (or the
//! [`Order::status_history`]) before overwriting a stored order.
//!
//! ```
//! use klikit_webhook::{EventType, payload::v1::{Channel, Envelope, OrderStatus, fixtures}};
//!
//! let envelope: Envelope = serde_json::from_str(fixtures::ORDER_CANCELLED).unwrap();
//! assert_eq!(envelope.event_type, EventType::OrderCancelledV1);
//! let order = &envelope.data;
//! assert_eq!(order.status, OrderStatus::Cancelled);
//! let last = order.status_history.last().unwrap();
//! println!("cancelled by {} because {:?}", last.by, last.reason_code);
//!
//! // A value Klikit adds later is kept, not rejected.
//! assert_eq!(serde_json::from_str::<Channel>(r#""kiosk""#).unwrap(), Channel::Other("kiosk".into()));
//! ```

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{money, null_as_empty};
use crate::EventType;

mod codes;
pub mod fixtures;

pub use codes::{Actor, Channel, FulfilmentMode, OrderStatus, OrderType, PaymentMethod, PaymentStatus, RiderStatus};

/// The envelope of every Partner API v1 event.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[non_exhaustive]
pub struct Envelope {
    /// The event id, a UUID stable across retries; the layer deduplicates
    /// on it (see [`KlikitV1`](crate::scheme::KlikitV1)).
    pub event_id: String,
    /// The versioned event type; route on it (signed, unlike the header).
    pub event_type: EventType,
    /// A version for display, such as `"1.0"`; the `.vN` of
    /// [`event_type`](Self::event_type) is the authoritative one.
    pub event_version: String,
    /// When Klikit emitted the event (not when the order was placed).
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The Klikit business the event belongs to.
    pub business_id: i64,
    /// The whole current order.
    pub data: Order,
}

/// A Klikit order, as `_order.schema.json` defines it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[non_exhaustive]
pub struct Order {
    /// Klikit's opaque order id, such as `ord_01HX…`.
    pub id: String,
    /// The short id printed on receipts.
    pub short_id: String,
    /// The provider's (aggregator's) order id.
    #[serde(default)]
    pub external_id: Option<String>,
    /// The business.
    pub business_id: i64,
    /// The brand.
    pub brand_id: i64,
    /// The branch.
    pub branch_id: i64,
    /// Where the order came from.
    pub provider: Provider,
    /// The sales channel.
    pub channel: Channel,
    /// The order's state by name.
    pub status: OrderStatus,
    /// The order's state as a number (the schema documents 1 = placed,
    /// 2 = accepted, 3 = cancelled, 4 = ready, 5 = delivered,
    /// 9 = picked_up); kept raw.
    pub status_code: i64,
    /// Every state change so far, oldest first.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub status_history: Vec<StatusChange>,
    /// How the order reaches the customer.
    pub order_type: OrderType,
    /// When the customer placed the order.
    #[serde(with = "time::serde::rfc3339")]
    pub placed_at: OffsetDateTime,
    /// When a scheduled order is due.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub scheduled_for: Option<OffsetDateTime>,
    /// The customer.
    pub customer: Customer,
    /// The line items.
    pub items: Vec<Item>,
    /// The amounts.
    pub totals: Totals,
    /// How the order is paid.
    pub payment: Payment,
    /// How the order is fulfilled.
    pub fulfilment: Fulfilment,
    /// Extra details.
    #[serde(default)]
    pub metadata: Option<Metadata>,
    /// When Klikit created the order.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the order last changed: compare it before overwriting.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// The platform an order came from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[non_exhaustive]
pub struct Provider {
    /// Klikit's provider id.
    pub id: i64,
    /// A machine name, such as `grabfood`.
    pub name: String,
    /// A display name, such as `GrabFood`.
    pub display_name: String,
}

/// One entry of [`Order::status_history`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[non_exhaustive]
pub struct StatusChange {
    /// The state entered.
    pub status: OrderStatus,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Who made the change.
    pub by: Actor,
    /// Why, for cancellations (such as `customer_requested`).
    #[serde(default)]
    pub reason_code: Option<String>,
}

/// The customer.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[non_exhaustive]
pub struct Customer {
    /// Name.
    pub name: String,
    /// Phone number.
    pub phone: String,
    /// Email address.
    #[serde(default)]
    pub email: Option<String>,
    /// Delivery address.
    #[serde(default)]
    pub address: Option<Address>,
}

/// A delivery address.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[non_exhaustive]
pub struct Address {
    /// First line.
    pub line1: String,
    /// Second line.
    #[serde(default)]
    pub line2: Option<String>,
    /// City.
    #[serde(default)]
    pub city: Option<String>,
    /// Postcode.
    #[serde(default)]
    pub postcode: Option<String>,
    /// ISO 3166-1 alpha-2 country code.
    pub country: String,
    /// Latitude.
    #[serde(default)]
    pub latitude: Option<f64>,
    /// Longitude.
    #[serde(default)]
    pub longitude: Option<f64>,
    /// Instructions for the rider.
    #[serde(default)]
    pub instructions: Option<String>,
}

/// A line item.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[non_exhaustive]
pub struct Item {
    /// Klikit's item id.
    pub klikit_item_id: i64,
    /// Your item id, when a mapping is registered.
    #[serde(default)]
    pub partner_item_id: Option<String>,
    /// Stock-keeping unit.
    #[serde(default)]
    pub sku: Option<String>,
    /// Name.
    pub name: String,
    /// How many (at least 1).
    pub quantity: i64,
    /// Price of one.
    #[serde(with = "money")]
    pub unit_price: Decimal,
    /// Line total.
    #[serde(with = "money")]
    pub subtotal: Decimal,
    /// Modifiers (toppings, sizes, …).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub modifiers: Vec<Modifier>,
    /// The customer's note.
    #[serde(default)]
    pub special_instructions: Option<String>,
    /// VAT on the line.
    #[serde(default, with = "money::option")]
    pub vat_amount: Option<Decimal>,
}

/// A modifier on an [`Item`].
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[non_exhaustive]
pub struct Modifier {
    /// Klikit's modifier id.
    pub klikit_modifier_id: i64,
    /// Your modifier id, when a mapping is registered.
    #[serde(default)]
    pub partner_modifier_id: Option<String>,
    /// The modifier group, such as `Size`.
    #[serde(default)]
    pub group_name: Option<String>,
    /// Name.
    pub name: String,
    /// Price of one.
    #[serde(with = "money")]
    pub unit_price: Decimal,
    /// How many (at least 1).
    pub quantity: i64,
    /// Total.
    #[serde(with = "money")]
    pub subtotal: Decimal,
}

/// An order's amounts, in [`currency`](Self::currency).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[non_exhaustive]
pub struct Totals {
    /// ISO 4217 code.
    pub currency: String,
    /// Symbol for display.
    #[serde(default)]
    pub currency_symbol: Option<String>,
    /// Sum of the items.
    #[serde(with = "money")]
    pub subtotal: Decimal,
    /// Discount.
    #[serde(default, with = "money::option")]
    pub discount_amount: Option<Decimal>,
    /// Delivery fee.
    #[serde(default, with = "money::option")]
    pub delivery_fee: Option<Decimal>,
    /// Service fee.
    #[serde(default, with = "money::option")]
    pub service_fee: Option<Decimal>,
    /// Other fees.
    #[serde(default, with = "money::option")]
    pub additional_fee: Option<Decimal>,
    /// VAT.
    #[serde(default, with = "money::option")]
    pub vat_amount: Option<Decimal>,
    /// What the merchant receives.
    #[serde(with = "money")]
    pub merchant_total: Decimal,
    /// What the customer pays.
    #[serde(with = "money")]
    pub customer_total: Decimal,
    /// The aggregator's commission, on `order.delivered.v1` when the
    /// platform reports it.
    #[serde(default, with = "money::option")]
    pub aggregator_commission: Option<Decimal>,
}

/// How an order is paid.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[non_exhaustive]
pub struct Payment {
    /// Method.
    pub method: PaymentMethod,
    /// The payment channel's id.
    #[serde(default)]
    pub channel_id: Option<i64>,
    /// State.
    pub status: PaymentStatus,
    /// Whether it was paid before fulfilment.
    pub is_prepaid: bool,
}

/// How an order is fulfilled.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[non_exhaustive]
pub struct Fulfilment {
    /// Mode.
    pub mode: FulfilmentMode,
    /// The rider, for deliveries.
    #[serde(default)]
    pub rider: Option<Rider>,
    /// When the order left the store.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub pickup_at: Option<OffsetDateTime>,
    /// When it was delivered.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub delivered_at: Option<OffsetDateTime>,
}

/// The rider of a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[non_exhaustive]
pub struct Rider {
    /// Where the rider is in the delivery.
    #[serde(default)]
    pub status: Option<RiderStatus>,
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
    /// Phone number.
    #[serde(default)]
    pub phone: Option<String>,
    /// Vehicle.
    #[serde(default)]
    pub vehicle: Option<String>,
}

/// Extra order details.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[non_exhaustive]
pub struct Metadata {
    /// Whether the customer asked for cutlery.
    #[serde(default)]
    pub cutlery: Option<bool>,
    /// The customer's tax id.
    #[serde(default)]
    pub tax_id: Option<String>,
    /// The table, for dine-in orders.
    #[serde(default)]
    pub is_dine_in_table: Option<String>,
    /// Whatever the provider adds, unparsed.
    #[serde(default)]
    pub provider_metadata: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_enum_values_and_fields_are_kept_or_ignored() {
        let mut value: serde_json::Value = serde_json::from_str(fixtures::ORDER_PLACED).unwrap();
        value["data"]["channel"] = "kiosk".into();
        value["data"]["status"] = "refunded".into();
        value["data"]["payment"]["method"] = "bnpl".into();
        value["data"]["brand_new_field"] = serde_json::json!({"nested": [1, 2]});
        value["event_type"] = "order.refunded.v1".into();
        value["added_later"] = true.into();
        let envelope: Envelope = serde_json::from_value(value).unwrap();
        assert_eq!(envelope.data.channel, Channel::Other("kiosk".into()));
        assert_eq!(envelope.data.status, OrderStatus::Other("refunded".into()));
        assert_eq!(envelope.data.payment.method, PaymentMethod::Other("bnpl".into()));
        assert_eq!(envelope.event_type.as_str(), "order.refunded.v1");
    }

    #[test]
    fn money_from_numbers_and_strings() {
        let mut value: serde_json::Value = serde_json::from_str(fixtures::ORDER_PLACED).unwrap();
        value["data"]["totals"]["customer_total"] = "18.40".into();
        value["data"]["totals"]["merchant_total"] = serde_json::json!(18.4);
        let envelope: Envelope = serde_json::from_value(value).unwrap();
        let totals = &envelope.data.totals;
        assert_eq!(totals.customer_total, totals.merchant_total);
        assert_eq!(totals.customer_total.to_string(), "18.40");
    }
}
