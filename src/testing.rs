//! Helpers for testing code that receives Klikit webhooks (feature
//! `test-util`): [`signed_request`] builds a delivery as Klikit sends it, and
//! [`conformance`] holds the test suite every
//! [`DedupStore`](crate::DedupStore) must pass.
//!
//! Test code only: nothing in the workspace's `src/` uses this module. The
//! sample bodies are in [`fixtures`](crate::fixtures), always compiled.

use bytes::Bytes;
use http::{Request, header};

use crate::{EVENT_ID_HEADER, EVENT_TYPE_HEADER, SIGNATURE_HEADER, signature::sign};

pub mod conformance;

/// The path [`signed_request`] builds requests for.
pub const WEBHOOK_PATH: &str = "/webhooks/klikit";

/// Builds a `POST /webhooks/klikit` request the way Klikit sends it: JSON
/// content type, `x-klikit-event-id`, `x-klikit-event-type`, and
/// `x-klikit-signature` computed over `body` with `secret`.
///
/// Change the path with `*request.uri_mut() = ...` if yours differs.
///
/// ```
/// use axum::body::Body;
/// use klikit_webhook::testing::signed_request;
///
/// let request = signed_request::<Body>("a-long-random-webhook-secret", "evt-1", "klikit.order.created.v2", r#"{"brand_id":1,"branch_id":2,"orders":[]}"#);
/// assert_eq!(request.headers()["x-klikit-signature"].len(), 64);
/// ```
///
/// # Panics
///
/// If `event_id` or `event_type` is not a valid header value (a control
/// character, say); use [`http::Request::builder`] to test such requests.
pub fn signed_request<B: From<Bytes>>(
    secret: impl AsRef<[u8]>,
    event_id: &str,
    event_type: &str,
    body: impl Into<Bytes>,
) -> Request<B> {
    let body = body.into();
    let signature = sign(secret.as_ref(), &body);
    let request = Request::post(WEBHOOK_PATH)
        .header(header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature)
        .header(EVENT_ID_HEADER, event_id)
        .header(EVENT_TYPE_HEADER, event_type)
        .body(B::from(body));
    match request {
        Ok(request) => request,
        Err(error) => panic!("event id or event type is not a valid header value: {error}"),
    }
}
