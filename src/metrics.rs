//! Delivery metrics through the `metrics` facade (feature `metrics`).
//!
//! Recorded per delivery:
//! - counter `klikit_webhook_deliveries_total{outcome}`;
//! - histogram `klikit_webhook_delivery_duration_seconds{outcome}`, from the
//!   request reaching the layer to the answer (handler included).
//!
//! `outcome` is [`DeliveryOutcome::as_str`], one label per
//! [`DeliveryOutcome::ALL`]. Install any
//! `metrics` recorder (for Prometheus, `metrics-exporter-prometheus`) to
//! collect them; without one they cost next to nothing.
//!
//! `metrics-exporter-prometheus` exports a histogram as a summary
//! (quantiles, which cannot be added up across instances) unless it is given
//! buckets: set them for [`DELIVERY_DURATION_SECONDS`] with
//! `PrometheusBuilder::set_buckets_for_metric`. The reference receiver uses
//! 1 ms to 10 s, Klikit's deadline (`klikit_cli::receiver::DELIVERY_DURATION_BUCKETS`).

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
static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

#[inline]
pub(crate) fn record(outcome: DeliveryOutcome, started: Started) {
    #[cfg(feature = "metrics")]
    {
        let index = outcome.index();
        let elapsed = started.elapsed();
        metrics::with_recorder(|recorder| {
            recorder
                .register_counter(&crate::outcome::metric_keys::COUNTERS[index], &METADATA)
                .increment(1);
            recorder
                .register_histogram(&crate::outcome::metric_keys::HISTOGRAMS[index], &METADATA)
                .record(elapsed);
        });
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (outcome, started);
}
