//! The request body: read under a size limit and a deadline, fed to the
//! verifier frame by frame, and drained when the delivery is refused.

use std::{
    future::poll_fn,
    pin::{Pin, pin},
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::Body;

use super::deadline::Deadline;
use crate::{RejectionKind, signature::VerifyState};

/// After a delivery is refused, up to this many bytes of its body are read
/// and thrown away before answering. A sender that writes its whole body
/// before reading the answer then gets the answer instead of a connection
/// reset (closing a socket with unread data makes the kernel send RST).
/// Larger bodies still get the answer but may see the reset.
const DRAIN_LIMIT: usize = 8 * 1024 * 1024;

/// The most the buffer of a body that arrives in several frames reserves
/// before more than half of it has arrived. A `Content-Length` costs the
/// sender nothing: a 2-byte upload announcing the whole limit must not make
/// the layer reserve the limit, so beyond this the buffer grows (doubling)
/// with what actually arrives.
const INITIAL_RESERVATION: usize = 64 * 1024;

/// A delivery's body, not yet read.
pub(super) struct IncomingBody<B> {
    body: B,
    limit: usize,
    timeout: Duration,
    /// The client waits for `100 Continue` before sending the body; hyper
    /// sends it only when the body is first polled.
    expects_continue: bool,
}

impl<B: Body> IncomingBody<B> {
    pub(super) fn new(body: B, headers: &HeaderMap, limit: usize, timeout: Duration) -> Self {
        let expects_continue = headers
            .get(http::header::EXPECT)
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        Self {
            body,
            limit,
            timeout,
            expects_continue,
        }
    }

    /// Throws the body away, for a delivery refused before it was read.
    pub(super) async fn discard(self) {
        if self.expects_continue || self.body.is_end_stream() {
            // A client waiting for `100 Continue` has not sent the body and
            // will not, since the body is never polled: answer at once.
            return;
        }
        let body = pin!(self.body);
        let mut deadline = Deadline::new(self.timeout);
        drain(body, &mut deadline).await;
    }

    /// Reads the whole body, at most `limit` bytes within `timeout`, feeding
    /// each frame to `verify` as it arrives.
    ///
    /// A body that arrives in one frame is returned as that frame's `Bytes`
    /// without a copy; several frames are gathered into one buffer that
    /// starts at the body's size hint, at most [`INITIAL_RESERVATION`] (or
    /// twice what has arrived), and grows with what arrives.
    pub(super) async fn read(self, verify: &mut VerifyState) -> Result<Bytes, RejectionKind> {
        let limit = self.limit;
        let hint = self.body.size_hint();
        if hint.lower() > limit as u64 {
            self.discard().await;
            return Err(RejectionKind::PayloadTooLarge { limit });
        }
        let mut body = pin!(self.body);
        let mut deadline = Deadline::new(self.timeout);
        let mut first: Option<Bytes> = None;
        let mut gathered: Option<BytesMut> = None;
        let mut total = 0usize;
        loop {
            let frame = match poll_fn(|cx| next_frame(body.as_mut(), &mut deadline, cx)).await {
                Next::Frame(frame) => frame,
                Next::End => break,
                Next::Error => return Err(RejectionKind::BodyRead),
                Next::TimedOut => return Err(RejectionKind::BodyTimeout),
            };
            let Ok(mut data) = frame.into_data() else {
                continue; // trailers carry nothing we verify
            };
            let len = data.remaining();
            total = total.saturating_add(len);
            if total > limit {
                drain(body, &mut deadline).await;
                return Err(RejectionKind::PayloadTooLarge { limit });
            }
            let chunk = data.copy_to_bytes(len);
            verify.update(&chunk);
            if let Some(buffer) = gathered.as_mut() {
                buffer.extend_from_slice(&chunk);
            } else if let Some(previous) = first.take() {
                let arrived = previous.len() + chunk.len();
                let mut buffer = BytesMut::with_capacity(first_reservation(hint, limit, arrived));
                buffer.extend_from_slice(&previous);
                buffer.extend_from_slice(&chunk);
                gathered = Some(buffer);
            } else {
                first = Some(chunk);
            }
        }
        Ok(match gathered {
            Some(buffer) => buffer.freeze(),
            None => first.unwrap_or_default(),
        })
    }
}

/// The capacity of the buffer that gathers a multi-frame body, once its
/// first two frames (`arrived` bytes) are in: what the size hint announces,
/// but no more than [`INITIAL_RESERVATION`] or twice what has arrived,
/// whichever is larger, and never less than what has arrived.
fn first_reservation(hint: http_body::SizeHint, limit: usize, arrived: usize) -> usize {
    let announced = hint.upper().unwrap_or(hint.lower()).min(limit as u64);
    let announced = usize::try_from(announced).unwrap_or(limit);
    announced
        .min(INITIAL_RESERVATION.max(arrived.saturating_mul(2)))
        .max(arrived)
}

enum Next<D> {
    Frame(http_body::Frame<D>),
    End,
    Error,
    TimedOut,
}

fn next_frame<B: Body>(body: Pin<&mut B>, deadline: &mut Deadline, cx: &mut Context<'_>) -> Poll<Next<B::Data>> {
    // The body first: a body that is already buffered never starts the timer.
    match body.poll_frame(cx) {
        Poll::Ready(Some(Ok(frame))) => return Poll::Ready(Next::Frame(frame)),
        Poll::Ready(Some(Err(_))) => return Poll::Ready(Next::Error),
        Poll::Ready(None) => return Poll::Ready(Next::End),
        Poll::Pending => {}
    }
    match deadline.poll_elapsed(cx) {
        Poll::Ready(()) => Poll::Ready(Next::TimedOut),
        Poll::Pending => Poll::Pending,
    }
}

/// Reads and discards up to [`DRAIN_LIMIT`] bytes of `body` before the
/// deadline: the one place that drains.
async fn drain<B: Body>(mut body: Pin<&mut B>, deadline: &mut Deadline) {
    let mut drained = 0usize;
    while drained <= DRAIN_LIMIT {
        match poll_fn(|cx| next_frame(body.as_mut(), deadline, cx)).await {
            Next::Frame(frame) => {
                if let Some(data) = frame.data_ref() {
                    drained = drained.saturating_add(data.remaining());
                }
            }
            Next::End | Next::Error | Next::TimedOut => return,
        }
    }
}
