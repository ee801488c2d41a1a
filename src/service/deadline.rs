//! [`Deadline`]: a time limit whose timer is made only when the layer has to
//! wait, shared by the body read and the store calls.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

/// A time limit, started the first time it is polled: the first time the
/// thing it limits makes the layer wait.
///
/// A body that is already buffered when it is read (a small delivery usually
/// arrives in the same read as its headers), or a store that answers at once
/// (the in-memory store), so costs no clock reading and no timer. Whatever
/// was ready before the first wait took no time, so the limit still bounds
/// how long the layer waits, from its first wait on.
pub(super) struct Deadline {
    timeout: Duration,
    /// Boxed so that `Deadline` is `Unpin` and small (one pointer in every
    /// future that holds it, instead of tokio's 112-byte `Sleep`): the box is
    /// only made on the slow path, when the layer has to wait anyway.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Deadline {
    pub(super) fn new(timeout: Duration) -> Self {
        Self { timeout, sleep: None }
    }

    /// The time limit.
    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Polls the timer, starting it on the first call.
    pub(super) fn poll_elapsed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let timeout = self.timeout;
        self.sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)))
            .as_mut()
            .poll(cx)
    }
}
