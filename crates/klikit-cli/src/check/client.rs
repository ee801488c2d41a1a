//! The endpoint under test over HTTP: one delivery in, what came back out
//! ([`Seen`]), every wait bounded. Plain `http://` only: the hyper-util
//! legacy client the crate already has, without TLS.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Uri, header};
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use super::scheme::Delivery;

/// Klikit's hard deadline: a reply after it counts as a failed delivery.
pub(crate) const DEADLINE: Duration = Duration::from_secs(10);
/// How long the checker waits for a whole reply: past the deadline, so that
/// a late reply is reported with its time rather than as silence.
pub(crate) const GIVE_UP: Duration = Duration::from_secs(15);
/// The longest `Retry-After` the checks honour before sending again.
pub(crate) const MAX_RETRY_WAIT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Replies are read up to this size; a longer one is an error.
const REPLY_LIMIT: usize = 1024 * 1024;
/// How much of a reply body is kept for the report and the body tests.
const BODY_KEPT: usize = 4096;

/// What one delivery got back.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    /// What was sent (a fixture, a variant, a step).
    pub(crate) label: String,
    /// The status, if an answer came.
    pub(crate) status: Option<u16>,
    /// The `Retry-After` header of the answer.
    pub(crate) retry_after: Option<String>,
    /// The start of the answer's body, lossily decoded.
    pub(crate) body: String,
    /// From sending the request to the end of the answer (or the error).
    pub(crate) elapsed: Duration,
    /// Why no answer came: refused connection, reset, timeout.
    pub(crate) error: Option<String>,
}

impl Seen {
    /// No answer: `error` says why.
    pub(crate) fn error(label: impl Into<String>, elapsed: Duration, error: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            status: None,
            retry_after: None,
            body: String::new(),
            elapsed,
            error: Some(error.into()),
        }
    }

    /// A step that is not an HTTP exchange (running the restart command),
    /// described by `text`.
    pub(crate) fn step(label: impl Into<String>, elapsed: Duration, text: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            status: None,
            retry_after: None,
            body: text.into(),
            elapsed,
            error: None,
        }
    }

    /// A 2xx answer: Klikit counts the delivery as delivered.
    pub(crate) fn accepted(&self) -> bool {
        self.status.is_some_and(|status| (200..300).contains(&status))
    }

    /// An answer that is not 2xx (not a transport error).
    pub(crate) fn refused(&self) -> bool {
        self.status.is_some_and(|status| !(200..300).contains(&status))
    }

    /// The answer says the event was newly received (Klikit's documented
    /// `{"status":"received"}`).
    pub(crate) fn says_received(&self) -> bool {
        self.body.contains("\"received\"")
    }

    /// The answer names a duplicate (Klikit's documented
    /// `{"status":"duplicate-ignored"}`, or any reply containing "duplicate").
    pub(crate) fn says_duplicate(&self) -> bool {
        self.body.to_ascii_lowercase().contains("duplicate")
    }

    /// How long to wait before sending again, when the answer asks for a
    /// retry: a 409, 429 or 503 with `Retry-After` (seconds, at most
    /// [`MAX_RETRY_WAIT`]; 1 s for the HTTP-date form).
    pub(crate) fn retry_wait(&self) -> Option<Duration> {
        let after = self.retry_after.as_deref()?;
        if !matches!(self.status, Some(409 | 429 | 503)) {
            return None;
        }
        let seconds = after.trim().parse().unwrap_or(1);
        Some(Duration::from_secs(seconds).min(MAX_RETRY_WAIT))
    }

    /// Late for Klikit: no answer within [`DEADLINE`].
    pub(crate) fn late(&self) -> bool {
        self.elapsed > DEADLINE
    }

    /// The status (or the error) and body start, on one line of at most
    /// `width` characters.
    pub(crate) fn excerpt(&self, width: usize) -> String {
        let text = match (&self.error, self.status) {
            (Some(error), _) => format!("error: {error}"),
            (None, Some(status)) => {
                let retry = match &self.retry_after {
                    Some(after) => format!("[Retry-After: {after}] "),
                    None => String::new(),
                };
                format!("{status} {retry}{}", self.body.trim())
            }
            (None, None) => self.body.clone(),
        };
        one_line(&text, width)
    }
}

/// `text` with control characters as spaces, cut to `width` characters.
pub(crate) fn one_line(text: &str, width: usize) -> String {
    let flat: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if flat.chars().count() <= width {
        flat
    } else {
        let cut: String = flat.chars().take(width.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

/// The endpoint's URL and a client for it.
#[derive(Clone)]
pub(crate) struct Endpoint {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
}

impl Endpoint {
    /// A client for `url`, which must be `http://host[:port]/path`.
    pub(crate) fn new(url: &str) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        match uri.scheme_str() {
            Some("http") if uri.host().is_some() => {}
            Some("https") => {
                return Err(format!(
                    "{url}: klikit check speaks plain http only; check the endpoint on an http:// address \
                     (a local or staging port, or behind your TLS terminator)"
                ));
            }
            _ => return Err(format!("{url}: expected an http://host[:port]/path URL")),
        }
        Ok(Self { client: client(), uri })
    }

    /// The same endpoint with a new client: no connection kept from before
    /// (after a restart, pooled connections point at a dead process).
    pub(crate) fn fresh(&self) -> Self {
        Self {
            client: client(),
            uri: self.uri.clone(),
        }
    }

    /// POSTs `delivery` and reports what came back within [`GIVE_UP`].
    pub(crate) async fn deliver(&self, label: impl Into<String>, delivery: &Delivery) -> Seen {
        let mut request = Request::post(self.uri.clone()).header(header::CONTENT_TYPE, "application/json");
        for (name, value) in &delivery.headers {
            request = request.header(*name, value);
        }
        let label = label.into();
        let started = Instant::now();
        let request = match request.body(Full::new(delivery.body.clone())) {
            Ok(request) => request,
            Err(error) => return Seen::error(label, started.elapsed(), format!("cannot build the request: {error}")),
        };
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| describe(&e))?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
            let body = Limited::new(response.into_body(), REPLY_LIMIT)
                .collect()
                .await
                .map_err(|e| format!("reading the reply: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, retry_after, body))
        };
        match tokio::time::timeout(GIVE_UP, exchange).await {
            Ok(Ok((status, retry_after, body))) => Seen {
                label,
                status: Some(status),
                retry_after,
                body: String::from_utf8_lossy(&body[..body.len().min(BODY_KEPT)]).into_owned(),
                elapsed: started.elapsed(),
                error: None,
            },
            Ok(Err(error)) => Seen::error(label, started.elapsed(), error),
            Err(_) => Seen::error(
                label,
                started.elapsed(),
                format!("no reply within {} s", GIVE_UP.as_secs()),
            ),
        }
    }

    /// Whether something answers HTTP on the URL within `timeout`, asking
    /// every 100 ms.
    pub(crate) async fn wait_until_answers(&self, timeout: Duration) -> bool {
        let started = Instant::now();
        loop {
            let left = timeout.saturating_sub(started.elapsed());
            if self.answers(left.min(Duration::from_secs(1))).await {
                return true;
            }
            if started.elapsed() >= timeout {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether anything answers HTTP on the endpoint's URL (a `GET`; any
    /// status counts), within `timeout`.
    async fn answers(&self, timeout: Duration) -> bool {
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build::<_, Empty<Bytes>>(connector());
        let Ok(request) = Request::builder()
            .method(Method::GET)
            .uri(self.uri.clone())
            .body(Empty::new())
        else {
            return false;
        };
        matches!(tokio::time::timeout(timeout, client.request(request)).await, Ok(Ok(_)))
    }
}

fn connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_nodelay(true);
    connector
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector())
}

/// The client error with its causes: hyper-util's own message is only
/// "client error (Connect)".
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
