//! Signed timestamps: the replay window of the timestamped schemes.

use std::time::{Duration, SystemTime};

use super::Delivery;
use crate::{RejectionKind, signature::SignatureError};

/// The replay window of the timestamped schemes unless configured: a signed
/// timestamp more than 300 s (5 minutes) from the receiver's clock, in
/// either direction, is refused. Partner API v1 and Standard Webhooks both
/// specify 5 minutes.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Why a signed timestamp was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TimestampError {
    /// The timestamp is more than the tolerance in the past: a replayed
    /// delivery, or a retry held back (the sender stamps each attempt anew).
    #[error("the signed timestamp is older than the tolerance; a replay, or the receiver's clock is ahead")]
    TooOld,
    /// The timestamp is more than the tolerance in the future.
    #[error("the signed timestamp is further in the future than the tolerance; check both clocks (NTP)")]
    TooNew,
}

/// Checks a signed Unix `timestamp` (whole seconds) against `now`: it is
/// accepted when it is at most `tolerance` before or after `now`, compared
/// to the nanosecond (so a timestamp exactly `tolerance` seconds old is
/// accepted only at that very instant, as in the Standard Webhooks
/// reference libraries). For schemes' [`check_timestamp`](super::Scheme::check_timestamp).
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use klikit_webhook::scheme::{TimestampError, check_tolerance};
///
/// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
/// let tolerance = Duration::from_secs(300);
/// assert_eq!(check_tolerance(700, now, tolerance), Ok(()));
/// assert_eq!(check_tolerance(1_300, now, tolerance), Ok(()));
/// assert_eq!(check_tolerance(699, now, tolerance), Err(TimestampError::TooOld));
/// assert_eq!(check_tolerance(1_301, now, tolerance), Err(TimestampError::TooNew));
/// ```
///
/// # Errors
///
/// [`TimestampError::TooOld`] or [`TimestampError::TooNew`].
pub fn check_tolerance(timestamp: i64, now: SystemTime, tolerance: Duration) -> Result<(), TimestampError> {
    const NANOS: i128 = 1_000_000_000;
    let now = match now.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) => i128::try_from(since.as_nanos()).unwrap_or(i128::MAX),
        Err(before) => i128::try_from(before.duration().as_nanos()).map_or(i128::MIN, |nanos| -nanos),
    };
    let tolerance = i128::try_from(tolerance.as_nanos()).unwrap_or(i128::MAX);
    let age = now.saturating_sub(i128::from(timestamp).saturating_mul(NANOS));
    if age > tolerance {
        Err(TimestampError::TooOld)
    } else if age < tolerance.saturating_neg() {
        Err(TimestampError::TooNew)
    } else {
        Ok(())
    }
}

/// The timestamp check of a scheme that signs one: `None` tolerance turns
/// it off (verify ignoring the timestamp); a delivery without a timestamp is
/// malformed for such a scheme.
pub(crate) fn check_within(
    tolerance: Option<Duration>,
    delivery: &Delivery,
    now: SystemTime,
) -> Result<(), RejectionKind> {
    match (tolerance, delivery.timestamp()) {
        (Some(tolerance), Some(timestamp)) => {
            check_tolerance(timestamp, now, tolerance).map_err(RejectionKind::TimestampOutOfTolerance)
        }
        // A delivery parsed by such a scheme with a signature that verified
        // always has a timestamp.
        (Some(_), None) => Err(RejectionKind::InvalidSignature(SignatureError::Malformed)),
        (None, _) => Ok(()),
    }
}

/// The builder every timestamped scheme has: `new` (tolerance
/// [`DEFAULT_TOLERANCE`]), `Default`, `with_tolerance`, `ignoring_timestamp`
/// and `tolerance`, over a `tolerance: Option<Duration>` field. Written once
/// here so both timestamped schemes say the same thing the same way.
macro_rules! timestamped_scheme_builder {
    ($scheme:ident) => {
        impl Default for $scheme {
            fn default() -> Self {
                Self::new()
            }
        }

        impl $scheme {
            /// The scheme, with the default tolerance of 300 s.
            pub const fn new() -> Self {
                Self {
                    tolerance: Some($crate::scheme::DEFAULT_TOLERANCE),
                }
            }

            /// Accepts signed timestamps up to `tolerance` before or after
            /// the receiver's clock (default
            /// [`DEFAULT_TOLERANCE`]($crate::scheme::DEFAULT_TOLERANCE)). Both
            /// contracts require at most 5 minutes; widen it only for a
            /// sender whose clock you know is off.
            #[must_use]
            pub const fn with_tolerance(mut self, tolerance: std::time::Duration) -> Self {
                self.tolerance = Some(tolerance);
                self
            }

            /// Does not check the timestamp at all (the reference libraries'
            /// `verify_ignoring_timestamp`): a delivery verifies for ever.
            ///
            /// **For tests and for reprocessing stored deliveries only**
            /// (with [`verify_delivery`]($crate::scheme::verify_delivery), or
            /// a layer on a private route); on a public route it turns off
            /// the replay protection the contract requires. The signature
            /// still covers the timestamp.
            #[must_use]
            pub const fn ignoring_timestamp(mut self) -> Self {
                self.tolerance = None;
                self
            }

            /// The tolerance, or `None` if the timestamp is ignored.
            pub const fn tolerance(&self) -> Option<std::time::Duration> {
                self.tolerance
            }
        }
    };
}
pub(crate) use timestamped_scheme_builder;
