//! [`DeliveryOutcome`]: how a delivery ended. The one list of outcomes, from
//! which the metric labels and the metric key tables are derived.

use std::fmt;

/// Declares [`DeliveryOutcome`] from one list of `Variant => "label"` pairs,
/// and derives everything that must follow that list: [`DeliveryOutcome::ALL`],
/// [`DeliveryOutcome::as_str`], the dense index, and (feature `metrics`) the
/// static metric keys, one per outcome.
macro_rules! outcomes {
    ($($(#[doc = $doc:literal])* $variant:ident => $label:literal,)*) => {
        /// How a delivery ended, as logged and recorded in metrics.
        ///
        /// [`as_str`](Self::as_str) is the `outcome` label of the metrics
        /// and of the layer's log line.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum DeliveryOutcome {
            $($(#[doc = $doc])* $variant,)*
        }

        impl DeliveryOutcome {
            /// Every outcome, in declaration order.
            pub const ALL: &'static [DeliveryOutcome] = &[$(Self::$variant,)*];

            /// A short `snake_case` name, used as the `outcome` label of
            /// metrics and logs.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $label,)*
                }
            }
        }

        /// Static metric keys, one per outcome, indexed by
        /// [`DeliveryOutcome::index`]: no allocation per delivery, and each
        /// key's hash computed once.
        #[cfg(feature = "metrics")]
        pub(crate) mod metric_keys {
            use metrics::{Key, Label};

            use crate::metrics::{DELIVERIES_TOTAL, DELIVERY_DURATION_SECONDS};

            static LABELS: [[Label; 1]; super::DeliveryOutcome::ALL.len()] =
                [$([Label::from_static_parts("outcome", $label)],)*];

            // The counter's last increment is never read.
            #[allow(unused_assignments)]
            pub(crate) static COUNTERS: [Key; super::DeliveryOutcome::ALL.len()] = {
                let mut index = 0;
                [$({
                    let _ = stringify!($variant);
                    let key = Key::from_static_parts(DELIVERIES_TOTAL, &LABELS[index]);
                    index += 1;
                    key
                },)*]
            };
            #[allow(unused_assignments)]
            pub(crate) static HISTOGRAMS: [Key; super::DeliveryOutcome::ALL.len()] = {
                let mut index = 0;
                [$({
                    let _ = stringify!($variant);
                    let key = Key::from_static_parts(DELIVERY_DURATION_SECONDS, &LABELS[index]);
                    index += 1;
                    key
                },)*]
            };
        }
    };
}

outcomes! {
    /// The handler answered 2xx; the event is recorded as processed.
    Processed => "processed",
    /// The handler answered non-2xx, returned an error or panicked; the claim
    /// was released for Klikit's retry.
    HandlerFailed => "handler_failed",
    /// The event was already processed: `200 {"status":"duplicate-ignored"}`.
    Duplicate => "duplicate",
    /// The event id was already processed, but with another body (compared
    /// by the digest the store keeps with each completed id): still
    /// `200 {"status":"duplicate-ignored"}`, logged at `WARN`. The event id
    /// is not signed, so one of the two bodies was sent under an id it was
    /// not signed for: see [the body digest](crate::store#the-body-digest).
    DuplicateBodyMismatch => "duplicate_body_mismatch",
    /// Another delivery of the event holds the claim: 409.
    InFlight => "in_flight",
    /// The signature was malformed or wrong, or the subscription has no
    /// secrets: 401.
    InvalidSignature => "invalid_signature",
    /// The signature matched but its timestamp is outside the scheme's
    /// tolerance (too old or too far in the future): 401.
    TimestampOutOfTolerance => "timestamp_out_of_tolerance",
    /// A delivery header was missing or invalid, the event id header
    /// disagreed with the signed body, or the body stream failed (400); or
    /// the method was not POST (405).
    BadRequest => "bad_request",
    /// The body was over the limit: 413.
    PayloadTooLarge => "payload_too_large",
    /// The body did not arrive in time: 408.
    BodyTimeout => "body_timeout",
    /// The dedup store failed or timed out: 503.
    StoreUnavailable => "store_unavailable",
    /// The secret resolver failed or timed out: 503.
    SecretsUnavailable => "secrets_unavailable",
}

impl DeliveryOutcome {
    /// A dense index: the position in [`ALL`](Self::ALL).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DeliveryOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::DeliveryOutcome;

    #[test]
    fn the_index_is_the_position_in_all() {
        for (position, outcome) in DeliveryOutcome::ALL.iter().enumerate() {
            assert_eq!(outcome.index(), position, "{outcome}");
        }
    }

    #[test]
    fn labels_are_distinct_snake_case() {
        let mut labels: Vec<&str> = DeliveryOutcome::ALL.iter().map(|o| o.as_str()).collect();
        assert!(
            labels
                .iter()
                .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        );
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), DeliveryOutcome::ALL.len());
    }

    #[cfg(feature = "metrics")]
    #[test]
    fn each_metric_key_carries_its_outcome_label() {
        for outcome in DeliveryOutcome::ALL {
            for key in [
                &super::metric_keys::COUNTERS[outcome.index()],
                &super::metric_keys::HISTOGRAMS[outcome.index()],
            ] {
                let label = key.labels().next().map(|l| l.value().to_owned());
                assert_eq!(label.as_deref(), Some(outcome.as_str()));
            }
        }
    }
}
