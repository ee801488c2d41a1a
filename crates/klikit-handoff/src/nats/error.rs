//! [`HandoffError`]: what can go wrong between the receiver, JetStream and the worker.

use std::time::Duration;

use async_nats::jetstream::{
    consumer::StreamError,
    context::{CreateStreamError, PublishError},
    stream::ConsumerError,
};

/// The hand-off failed: the event is not known to be stored, so do not
/// answer Klikit with a 2xx.
///
/// With the `axum` feature it is a response: 503 with `Retry-After: 5` and
/// `{"error":"event hand-off unavailable"}` (the details are logged, not
/// sent). The layer then releases the dedup claim and Klikit retries.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandoffError {
    /// Publishing failed or the server refused the message.
    #[error("publishing the event to jetstream failed: {0}")]
    Publish(#[source] PublishError),
    /// The PubAck did not arrive in time.
    #[error("jetstream did not acknowledge the publish within {0:?}")]
    Timeout(Duration),
    /// The stream could not be read or created.
    #[error("jetstream stream `{stream}` could not be read or created: {source}")]
    Stream {
        /// The stream name.
        stream: String,
        /// The server's or the client's error.
        #[source]
        source: CreateStreamError,
    },
    /// The existing stream forgets event ids sooner than configured, so
    /// repeated publishes could be stored twice.
    #[error(
        "jetstream stream `{stream}` keeps message ids for {found:?}, less than the {required:?} configured; \
         raise its duplicate window"
    )]
    DuplicateWindowTooShort {
        /// The stream name.
        stream: String,
        /// The stream's duplicate window.
        found: Duration,
        /// The configured duplicate window.
        required: Duration,
    },
    /// The worker's durable consumer could not be created or updated.
    #[error("jetstream consumer `{consumer}` could not be created: {source}")]
    Consumer {
        /// The durable consumer name.
        consumer: String,
        /// The server's or the client's error.
        #[source]
        source: ConsumerError,
    },
    /// The worker could not start pulling messages.
    #[error("pulling from jetstream consumer `{consumer}` failed: {source}")]
    Pull {
        /// The durable consumer name.
        consumer: String,
        /// The client's error.
        #[source]
        source: StreamError,
    },
    /// The worker's message stream stopped for good (the consumer was
    /// deleted, or the client closed). Restart the worker.
    #[error("jetstream consumer `{consumer}` stopped delivering: {reason}")]
    ConsumerStopped {
        /// The durable consumer name.
        consumer: String,
        /// What stopped it.
        reason: String,
    },
}

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl axum::response::IntoResponse for HandoffError {
    fn into_response(self) -> axum::response::Response {
        crate::common::answer::<(), _>(Err(self))
    }
}
