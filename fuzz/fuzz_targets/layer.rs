//! Arbitrary headers and bodies (split into frames, possibly failing, never
//! ending, or with a lying size hint) through the layer, one to four
//! requests against the same store, on a current-thread runtime with paused
//! time. Checks, against a small model of the layer's contract:
//! - it never panics, and answers 200/400/401/408/413 or the handler's status;
//! - the handler runs only for a request with exactly one non-empty
//!   signature, event id and event type header, a valid id and type, a
//!   complete body within the limit, and a signature that is the HMAC of
//!   exactly the bytes the handler receives;
//! - every such request runs the handler unless its id was already completed
//!   (2xx), in which case it gets `200 {"status":"duplicate-ignored"}`;
//! - a failed handler (500) leaves the id claimable: the next valid delivery
//!   runs the handler again.
#![no_main]

use std::{
    collections::{HashSet, VecDeque},
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use arbitrary::Arbitrary;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use klikit_webhook::{EventId, KlikitEvent, KlikitWebhookLayer, WebhookSecret, signature::sign};
use libfuzzer_sys::fuzz_target;
use tower::{Layer, ServiceExt, service_fn};

const SECRET: &[u8] = b"fuzz-layer-secret-0123456789";
const SIG: &str = "x-klikit-signature";
const ID: &str = "x-klikit-event-id";
const TYPE: &str = "x-klikit-event-type";
const DUPLICATE: &[u8] = br#"{"status":"duplicate-ignored"}"#;

// Arbitrary fills missing input with zeros, and every zero here means
// "as Klikit would send it", so short inputs are valid deliveries and the
// fuzzer starts from the accepted path and mutates away from it.
#[derive(Debug, Arbitrary)]
struct Input {
    /// The body limit is 1023 minus this (mod 1024) bytes.
    limit_cut: u16,
    first: Delivery,
    more: Vec<Delivery>,
}

#[derive(Debug, Arbitrary)]
struct Delivery {
    /// Unless set, adds the correct signature header.
    unsigned: bool,
    /// Sends that signature in upper case.
    upper: bool,
    /// Unless set, adds an event id from a pool of four, so ids repeat
    /// across the requests of one input.
    no_pooled_id: bool,
    pool: u8,
    /// Unless set, adds `x-klikit-event-type: klikit.order.created.v2`.
    untyped: bool,
    /// The handler answers 200, 204 or 500.
    handler: u8,
    end: End,
    hint: Hint,
    /// Extra headers, appended before the ones above.
    headers: Vec<(Name, Vec<u8>)>,
    frames: Vec<Part>,
}

#[derive(Debug, Arbitrary)]
enum Name {
    Signature,
    EventId,
    EventType,
    Expect,
    Other(u8),
}

#[derive(Debug, Arbitrary)]
enum Part {
    Data(Vec<u8>),
    Trailers,
}

#[derive(Debug, Clone, Copy, PartialEq, Arbitrary)]
enum End {
    Done,
    Error,
    Never,
}

#[derive(Debug, Arbitrary)]
enum Hint {
    None,
    Exact,
    Lie(u16),
}

/// A body that yields the given frames, then ends, fails or stalls forever.
struct FuzzBody {
    frames: VecDeque<Frame<Bytes>>,
    end: End,
    hint: Option<u64>,
}

impl http_body::Body for FuzzBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(frame) = self.frames.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match self.end {
            End::Done => Poll::Ready(None),
            End::Error => {
                self.end = End::Done;
                Poll::Ready(Some(Err(std::io::Error::other("fuzz"))))
            }
            End::Never => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.end == End::Done
    }

    fn size_hint(&self) -> SizeHint {
        self.hint.map(SizeHint::with_exact).unwrap_or_default()
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    })
}

/// The header's only value, if it has exactly one non-empty value.
fn single<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    (values.next().is_none() && !value.is_empty()).then_some(value)
}

type Calls = Arc<Mutex<Vec<(KlikitEvent, Bytes)>>>;

/// Outcome counts, printed every 16,384 requests when `KLIKIT_FUZZ_STATS`
/// is set, to see that every path is exercised.
static STATS: [AtomicUsize; 8] = [const { AtomicUsize::new(0) }; 8];
const STAT_NAMES: [&str; 8] = ["handler", "duplicate", "400", "401", "408", "413", "other", "requests"];

fn count(stat: usize) {
    let before = STATS[stat].fetch_add(1, Ordering::Relaxed);
    static ENABLED: OnceLock<bool> = OnceLock::new();
    if stat == 7
        && before % 16_384 == 16_383
        && *ENABLED.get_or_init(|| std::env::var_os("KLIKIT_FUZZ_STATS").is_some())
    {
        let counts: Vec<String> = STAT_NAMES
            .iter()
            .zip(&STATS)
            .map(|(name, n)| format!("{name}={}", n.load(Ordering::Relaxed)))
            .collect();
        eprintln!("layer stats: {}", counts.join(" "));
    }
}

fuzz_target!(|input: Input| {
    let limit = 1023 - usize::from(input.limit_cut % 1024);
    let layer = KlikitWebhookLayer::new(WebhookSecret::new(SECRET).unwrap())
        .with_body_limit(limit)
        .with_body_timeout(Duration::from_secs(1));
    let calls: Calls = Arc::default();
    let status = Arc::new(Mutex::new(StatusCode::OK));
    let handler = {
        let (calls, status) = (calls.clone(), status.clone());
        service_fn(move |request: Request<Full<Bytes>>| {
            let (calls, status) = (calls.clone(), status.clone());
            async move {
                let event = request
                    .extensions()
                    .get::<KlikitEvent>()
                    .cloned()
                    .expect("a KlikitEvent");
                let body = request.into_body().collect().await.unwrap().to_bytes();
                calls.lock().unwrap().push((event, body));
                let mut response = Response::new(Full::new(Bytes::from_static(b"handled")));
                *response.status_mut() = *status.lock().unwrap();
                Ok::<_, Infallible>(response)
            }
        })
    };
    let service = layer.layer(handler);
    let mut completed: HashSet<String> = HashSet::new();

    for delivery in std::iter::once(input.first).chain(input.more).take(4) {
        // The body as the layer will see it.
        let mut frames = VecDeque::new();
        let mut full = Vec::new();
        for part in delivery.frames.into_iter().take(16) {
            match part {
                Part::Data(data) => {
                    full.extend_from_slice(&data);
                    frames.push_back(Frame::data(Bytes::from(data)));
                }
                Part::Trailers => {
                    let mut trailers = HeaderMap::new();
                    trailers.insert(SIG, HeaderValue::from_static("trailer"));
                    frames.push_back(Frame::trailers(trailers));
                }
            }
        }
        let hint = match delivery.hint {
            Hint::None => None,
            Hint::Exact => Some(full.len() as u64),
            Hint::Lie(n) => Some(u64::from(n)),
        };
        let body = FuzzBody {
            frames,
            end: delivery.end,
            hint,
        };

        let mut request = Request::post("/webhooks/klikit").body(body).unwrap();
        let headers = request.headers_mut();
        for (name, value) in delivery.headers.into_iter().take(8) {
            let name = match name {
                Name::Signature => HeaderName::from_static(SIG),
                Name::EventId => HeaderName::from_static(ID),
                Name::EventType => HeaderName::from_static(TYPE),
                Name::Expect => http::header::EXPECT,
                Name::Other(n) => HeaderName::from_bytes(format!("x-other-{n}").as_bytes()).unwrap(),
            };
            if let Ok(value) = HeaderValue::from_bytes(&value) {
                headers.append(name, value);
            }
        }
        let signature = sign(SECRET, &full);
        if !delivery.unsigned {
            let signature = if delivery.upper {
                signature.to_ascii_uppercase()
            } else {
                signature.clone()
            };
            headers.append(SIG, HeaderValue::from_str(&signature).unwrap());
        }
        if !delivery.no_pooled_id {
            headers.append(
                ID,
                HeaderValue::from_str(&format!("evt-{}", delivery.pool % 4)).unwrap(),
            );
        }
        if !delivery.untyped {
            headers.append(TYPE, HeaderValue::from_static("klikit.order.created.v2"));
        }
        let handler_status = match delivery.handler % 3 {
            0 => StatusCode::OK,
            1 => StatusCode::NO_CONTENT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        *status.lock().unwrap() = handler_status;

        // The model.
        let id = single(request.headers(), ID)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| EventId::new(v).ok());
        let type_ok = single(request.headers(), TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.len() <= 256 && v.bytes().all(|b| b.is_ascii_graphic()));
        let headers_ok = single(request.headers(), SIG).is_some() && id.is_some() && type_ok;
        let sig_ok =
            single(request.headers(), SIG).is_some_and(|v| v.as_bytes().to_ascii_lowercase() == signature.as_bytes());
        let body_ok = delivery.end == End::Done && full.len() <= limit && hint.unwrap_or(0) <= limit as u64;

        let before = calls.lock().unwrap().len();
        let response = runtime().block_on(service.clone().oneshot(request)).unwrap();
        let got = response.status();
        let answer = runtime().block_on(response.into_body().collect()).unwrap().to_bytes();
        let called = calls.lock().unwrap().len() - before;
        assert!(called <= 1);
        count(7);
        count(match (called, got.as_u16()) {
            (1, _) => 0,
            (_, 200) => 1,
            (_, 400) => 2,
            (_, 401) => 3,
            (_, 408) => 4,
            (_, 413) => 5,
            _ => 6,
        });

        if called == 1 {
            let (event, body) = calls.lock().unwrap().last().cloned().unwrap();
            assert!(headers_ok && sig_ok && body_ok, "handler ran for an invalid delivery");
            let id = id.clone().unwrap();
            assert_eq!(event.id(), &id);
            assert_eq!(event.body().as_ref(), full.as_slice());
            assert_eq!(body.as_ref(), full.as_slice());
            assert!(!completed.contains(id.as_str()), "handler ran twice for completed {id}");
            assert_eq!(got, handler_status);
            if handler_status.is_success() {
                completed.insert(id.as_str().to_owned());
            }
            continue;
        }
        assert!(
            [200, 400, 401, 408, 413].contains(&got.as_u16()),
            "unexpected status {got} without the handler"
        );
        if !headers_ok {
            assert_eq!(got, StatusCode::BAD_REQUEST, "bad headers");
        } else if headers_ok && sig_ok && body_ok {
            let id = id.unwrap();
            assert!(
                completed.contains(id.as_str()),
                "a valid new delivery did not reach the handler: {got}"
            );
            assert_eq!((got, answer.as_ref()), (StatusCode::OK, DUPLICATE));
        } else if body_ok {
            assert_eq!(got, StatusCode::UNAUTHORIZED, "bad signature");
        } else {
            assert!([400, 408, 413].contains(&got.as_u16()), "bad body answered {got}");
        }
    }
});
