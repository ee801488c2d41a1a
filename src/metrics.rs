//! Delivery metrics through the `metrics` facade (feature `metrics`).
//!
//! Recorded per delivery:
//! - counter `klikit_webhook_deliveries_total{outcome}`;
//! - histogram `klikit_webhook_delivery_duration_seconds{outcome}`, from the
//!   request reaching the layer to the answer (handler included).
//!
//! `outcome` is [`DeliveryOutcome::as_str`]: `processed`, `handler_failed`,
//! `duplicate`, `in_flight`, `invalid_signature`, `bad_request`,
//! `payload_too_large`, `body_timeout`, `store_unavailable`. Install any
//! `metrics` recorder (for Prometheus, `metrics-exporter-prometheus`) to
//! collect them; without one they cost next to nothing.

use crate::DeliveryOutcome;

/// Name of the deliveries counter.
pub const DELIVERIES_TOTAL: &str = "klikit_webhook_deliveries_total";
/// Name of the delivery latency histogram.
pub const DELIVERY_DURATION_SECONDS: &str = "klikit_webhook_delivery_duration_seconds";

#[cfg(feature = "metrics")]
pub(crate) type Started = std::time::Instant;
#[cfg(not(feature = "metrics"))]
#[derive(Clone, Copy)]
pub(crate) struct Started;

#[inline]
pub(crate) fn start() -> Started {
    #[cfg(feature = "metrics")]
    {
        std::time::Instant::now()
    }
    #[cfg(not(feature = "metrics"))]
    Started
}

#[cfg(feature = "metrics")]
mod keys {
    use metrics::{Key, Label, Level, Metadata};

    use super::{DELIVERIES_TOTAL, DELIVERY_DURATION_SECONDS};

    macro_rules! outcome_labels {
        ($($name:literal),* $(,)?) => {
            [$([Label::from_static_parts("outcome", $name)]),*]
        };
    }

    /// One label set per outcome, in [`crate::DeliveryOutcome::index`] order.
    static LABELS: [[Label; 1]; 9] = outcome_labels!(
        "processed",
        "handler_failed",
        "duplicate",
        "in_flight",
        "invalid_signature",
        "bad_request",
        "payload_too_large",
        "body_timeout",
        "store_unavailable",
    );

    macro_rules! keys {
        ($name:expr) => {
            [
                Key::from_static_parts($name, &LABELS[0]),
                Key::from_static_parts($name, &LABELS[1]),
                Key::from_static_parts($name, &LABELS[2]),
                Key::from_static_parts($name, &LABELS[3]),
                Key::from_static_parts($name, &LABELS[4]),
                Key::from_static_parts($name, &LABELS[5]),
                Key::from_static_parts($name, &LABELS[6]),
                Key::from_static_parts($name, &LABELS[7]),
                Key::from_static_parts($name, &LABELS[8]),
            ]
        };
    }

    // Static keys: no allocation per delivery, and each key's hash is
    // computed once (the `counter!` macro builds a fresh key every call).
    pub(super) static COUNTERS: [Key; 9] = keys!(DELIVERIES_TOTAL);
    pub(super) static HISTOGRAMS: [Key; 9] = keys!(DELIVERY_DURATION_SECONDS);
    pub(super) static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));
}

#[inline]
pub(crate) fn record(outcome: DeliveryOutcome, started: Started) {
    #[cfg(feature = "metrics")]
    {
        let index = outcome.index();
        let elapsed = started.elapsed();
        metrics::with_recorder(|recorder| {
            recorder
                .register_counter(&keys::COUNTERS[index], &keys::METADATA)
                .increment(1);
            recorder
                .register_histogram(&keys::HISTOGRAMS[index], &keys::METADATA)
                .record(elapsed);
        });
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (outcome, started);
}
