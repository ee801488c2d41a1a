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

/// A layer's metric handles, registered with the first recorder it records
/// to and kept, so that a delivery increments a counter and records a
/// histogram without a lookup in the recorder's registry (for
/// `metrics-exporter-prometheus`: a hash of the key and a read lock per
/// handle: 56 ns of a 14.1 µs delivery in a profile of the reference
/// receiver under load, `benches/results/2026-11-30-profile-layer-vs-twin`).
///
/// The recorder is told apart by its address: a delivery recorded while
/// another recorder is current (a local recorder in a test, or the global one
/// installed after the layer's first delivery) registers its handles with
/// that recorder each time, as the `metrics` macros do. The one case this
/// cannot see: the first recorder dropped and another one created at the same
/// address while the same layer lives on; a recorder is normally installed
/// once per process, and a test makes a new layer with each of its recorders.
#[cfg(feature = "metrics")]
pub(crate) struct Handles {
    /// The address of the recorder the handles below belong to.
    recorder: std::sync::OnceLock<usize>,
    /// Per [`DeliveryOutcome::index`], registered on its first delivery (an
    /// outcome that never happened is not exported).
    outcomes: [std::sync::OnceLock<(metrics::Counter, metrics::Histogram)>; DeliveryOutcome::ALL.len()],
}

/// Without the `metrics` feature there is nothing to keep.
#[cfg(not(feature = "metrics"))]
pub(crate) struct Handles;

impl Handles {
    /// No handles yet: they are registered on the first deliveries.
    pub(crate) fn new() -> Self {
        #[cfg(feature = "metrics")]
        {
            Self {
                recorder: std::sync::OnceLock::new(),
                outcomes: [const { std::sync::OnceLock::new() }; DeliveryOutcome::ALL.len()],
            }
        }
        #[cfg(not(feature = "metrics"))]
        Self
    }
}

/// A changed configuration starts with no handles: a layer built from
/// another registers its own.
impl Clone for Handles {
    fn clone(&self) -> Self {
        Self::new()
    }
}

#[inline]
pub(crate) fn record(handles: &Handles, outcome: DeliveryOutcome, started: Started) {
    #[cfg(feature = "metrics")]
    {
        let index = outcome.index();
        let elapsed = started.elapsed();
        metrics::with_recorder(|recorder| {
            let register = || {
                (
                    recorder.register_counter(&crate::outcome::metric_keys::COUNTERS[index], &METADATA),
                    recorder.register_histogram(&crate::outcome::metric_keys::HISTOGRAMS[index], &METADATA),
                )
            };
            let address = std::ptr::from_ref(recorder).cast::<()>() as usize;
            let registered;
            let (counter, histogram) = if *handles.recorder.get_or_init(|| address) == address {
                handles.outcomes[index].get_or_init(register)
            } else {
                registered = register();
                &registered
            };
            counter.increment(1);
            histogram.record(elapsed);
        });
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (handles, outcome, started);
}
