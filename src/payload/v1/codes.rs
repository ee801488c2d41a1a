//! The coded values of Partner API v1 orders: string enums that keep an
//! unknown value as `Other(String)`, because the event policy says consumers
//! must ignore values they do not know.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Declares a string enum whose unknown values are kept as `Other(String)`.
macro_rules! open_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[doc = $doc:literal])* $variant:ident => $text:literal,)* }) => {
        $(#[$meta])*
        ///
        /// An unknown value is kept as `Other`, never rejected.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $($(#[doc = $doc])* $variant,)*
            /// A value this crate does not know, unchanged.
            Other(String),
        }

        impl $name {
            /// The value for `text`; never fails.
            pub fn from_name(text: &str) -> Self {
                match text {
                    $($text => Self::$variant,)*
                    other => Self::Other(other.to_owned()),
                }
            }

            /// The value as Klikit sends it.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)*
                    Self::Other(other) => other,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
                Ok(Self::from_name(&text))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }
    };
}

open_enum! {
    /// An order's state (`status`).
    OrderStatus {
        /// `placed`
        Placed => "placed",
        /// `accepted`
        Accepted => "accepted",
        /// `cancelled`
        Cancelled => "cancelled",
        /// `ready`
        Ready => "ready",
        /// `delivered`
        Delivered => "delivered",
        /// `picked_up`
        PickedUp => "picked_up",
    }
}

open_enum! {
    /// The sales channel (`channel`).
    Channel {
        /// `marketplace`: an aggregator such as GrabFood.
        Marketplace => "marketplace",
        /// `webshop`: the brand's own web ordering.
        Webshop => "webshop",
        /// `dine_in`
        DineIn => "dine_in",
        /// `scan_to_order`: a QR code at the table.
        ScanToOrder => "scan_to_order",
    }
}

open_enum! {
    /// How the order reaches the customer (`order_type`).
    OrderType {
        /// `pickup`
        Pickup => "pickup",
        /// `delivery`
        Delivery => "delivery",
        /// `dine_in`
        DineIn => "dine_in",
        /// `scan_to_order`
        ScanToOrder => "scan_to_order",
    }
}

open_enum! {
    /// Who changed an order's state (`status_history[].by`).
    Actor {
        /// `system`
        System => "system",
        /// `partner`: you, through the API.
        Partner => "partner",
        /// `aggregator`
        Aggregator => "aggregator",
        /// `customer`
        Customer => "customer",
        /// `operator`: Klikit staff.
        Operator => "operator",
    }
}

open_enum! {
    /// The payment method (`payment.method`).
    PaymentMethod {
        /// `cash`
        Cash => "cash",
        /// `card`
        Card => "card",
        /// `wallet`
        Wallet => "wallet",
        /// `invoice`
        Invoice => "invoice",
    }
}

open_enum! {
    /// The payment state (`payment.status`).
    PaymentStatus {
        /// `paid`
        Paid => "paid",
        /// `pending`
        Pending => "pending",
        /// `failed`
        Failed => "failed",
        /// `refunded`
        Refunded => "refunded",
    }
}

open_enum! {
    /// The fulfilment mode (`fulfilment.mode`).
    FulfilmentMode {
        /// `self_pickup`
        SelfPickup => "self_pickup",
        /// `rider_delivery`
        RiderDelivery => "rider_delivery",
        /// `dine_in`
        DineIn => "dine_in",
    }
}

open_enum! {
    /// Where the rider is (`fulfilment.rider.status`).
    RiderStatus {
        /// `searching`
        Searching => "searching",
        /// `assigned`
        Assigned => "assigned",
        /// `arrived`
        Arrived => "arrived",
        /// `en_route`
        EnRoute => "en_route",
        /// `completed`
        Completed => "completed",
        /// `failed`
        Failed => "failed",
    }
}
