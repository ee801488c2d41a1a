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
pub(crate) type Started = ();

#[inline]
pub(crate) fn start() -> Started {
    #[cfg(feature = "metrics")]
    {
        std::time::Instant::now()
    }
}

#[inline]
pub(crate) fn record(outcome: DeliveryOutcome, started: Started) {
    #[cfg(feature = "metrics")]
    {
        let label = outcome.as_str();
        metrics::counter!(DELIVERIES_TOTAL, "outcome" => label).increment(1);
        metrics::histogram!(DELIVERY_DURATION_SECONDS, "outcome" => label).record(started.elapsed());
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (outcome, started);
}
