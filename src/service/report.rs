//! How a delivery ended: logged once, counted once, answered.

use std::fmt;

use bytes::Bytes;
use http::{Response, StatusCode};

use super::{Ended, Refusal};
use crate::{
    DeliveryOutcome, FromJson, Rejection, RejectionKind,
    rejection::{DUPLICATE_BODY, json_response},
};

/// The one place a delivery's end is logged, counted and answered.
pub(super) fn conclude<B: FromJson, E>(
    ended: Ended<B, E>,
    metrics: &crate::metrics::Handles,
    started: crate::metrics::Started,
) -> Result<Response<B>, E> {
    let (outcome, result) = match ended {
        Ended::Refused(Refusal::Duplicate) => {
            log_outcome(DeliveryOutcome::Duplicate, None);
            (
                DeliveryOutcome::Duplicate,
                Ok(json_response(
                    StatusCode::OK,
                    Bytes::from_static(DUPLICATE_BODY.as_bytes()),
                )),
            )
        }
        Ended::Refused(Refusal::DuplicateBodyMismatch { event_id }) => {
            log_outcome(
                DeliveryOutcome::DuplicateBodyMismatch,
                Some(&format_args!("event id {event_id}")),
            );
            (
                DeliveryOutcome::DuplicateBodyMismatch,
                Ok(json_response(
                    StatusCode::OK,
                    Bytes::from_static(DUPLICATE_BODY.as_bytes()),
                )),
            )
        }
        Ended::Refused(Refusal::Rejected { kind, cause }) => {
            refused(kind, cause.as_ref().map(|cause| cause as &dyn fmt::Display))
        }
        Ended::Refused(Refusal::SecretsUnavailable(cause)) => refused(RejectionKind::SecretsUnavailable, Some(&cause)),
        Ended::Handled(Ok(response)) if response.status().is_success() => {
            log_outcome(DeliveryOutcome::Processed, None);
            (DeliveryOutcome::Processed, Ok(response))
        }
        Ended::Handled(Ok(response)) => {
            let status = response.status();
            log_outcome(
                DeliveryOutcome::HandlerFailed,
                Some(&format_args!("handler answered {status}")),
            );
            (DeliveryOutcome::HandlerFailed, Ok(response))
        }
        Ended::Handled(Err(error)) => {
            log_outcome(
                DeliveryOutcome::HandlerFailed,
                Some(&"the inner service returned an error"),
            );
            (DeliveryOutcome::HandlerFailed, Err(error))
        }
    };
    crate::metrics::record(metrics, outcome, started);
    result
}

/// Logs and answers a rejection, with the error behind it where there is one.
fn refused<B: FromJson, E>(
    kind: RejectionKind,
    cause: Option<&dyn fmt::Display>,
) -> (DeliveryOutcome, Result<Response<B>, E>) {
    let rejection = Rejection::new(kind);
    let outcome = rejection.outcome();
    match cause {
        Some(cause) => log_outcome(outcome, Some(&format_args!("{rejection}: {cause}"))),
        None => log_outcome(outcome, Some(&rejection)),
    }
    (outcome, Ok(Response::from(rejection)))
}

/// Logs how a delivery ended: one line, one format (`outcome`, `reason`),
/// at a level that says whether anyone needs to act.
fn log_outcome(outcome: DeliveryOutcome, reason: Option<&dyn fmt::Display>) {
    let reason = reason.map(tracing::field::display);
    let name = outcome.as_str();
    match outcome {
        DeliveryOutcome::Processed => tracing::debug!(outcome = name, "klikit delivery processed"),
        DeliveryOutcome::Duplicate => tracing::debug!(outcome = name, "klikit delivery already processed; ignored"),
        DeliveryOutcome::DuplicateBodyMismatch => tracing::warn!(
            outcome = name,
            reason,
            "klikit delivery of an already processed event id, with another body than the processed one; answered \
             as a duplicate. Klikit does not reuse ids: either this body, or the one processed under this id, was \
             sent under an id it was not signed for (the id is not signed)"
        ),
        DeliveryOutcome::InFlight => {
            tracing::info!(
                outcome = name,
                reason,
                "klikit delivery deferred: another delivery holds the event"
            )
        }
        DeliveryOutcome::HandlerFailed => {
            tracing::warn!(
                outcome = name,
                reason,
                "klikit delivery failed; claim released for the retry"
            )
        }
        DeliveryOutcome::StoreUnavailable | DeliveryOutcome::SecretsUnavailable => {
            tracing::error!(outcome = name, reason, "klikit delivery rejected")
        }
        _ => tracing::warn!(outcome = name, reason, "klikit delivery rejected"),
    }
}
