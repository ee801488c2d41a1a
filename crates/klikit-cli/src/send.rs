//! `klikit sign` and `klikit send`: sign a body, or POST signed deliveries,
//! under any of the receiver's schemes (`--scheme`, the names of
//! `KLIKIT_SCHEME`).

use std::{
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hasher},
    io::Read,
    path::PathBuf,
    sync::Arc,
    time::{Instant, SystemTime},
};

use bytes::Bytes;
use clap::ValueEnum;
use http::{HeaderMap, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use klikit_cli::receiver::SchemeName;
use klikit_webhook::{
    EventType, SECRET_ENV_VAR, WebhookSecret, fixtures,
    payload::v1::fixtures as v1,
    scheme::{Outgoing, Scheme},
    store::LeaseToken,
};

/// The help of `--secret` (not a doc comment: rustdoc would read `<base64>`
/// as HTML).
const SECRET_HELP: &str = "The webhook secret (default: $KLIKIT_WEBHOOK_SECRET); whsec_<base64> for standard-webhooks";

/// `--scheme`: the names `KLIKIT_SCHEME` takes.
#[derive(Clone, Copy, Default, ValueEnum)]
pub(crate) enum SchemeArg {
    #[value(help = "Today's contract: x-klikit-signature: <hex> over the body")]
    #[default]
    Klikit,
    #[value(help = "Partner API v1: X-Klikit-Signature: t=<unix>,v1=<hex> over \"<t>.<body>\"")]
    KlikitV1,
    #[value(help = "Standard Webhooks: webhook-signature: v1,<base64> over \"<id>.<t>.<body>\"; whsec_ secrets")]
    StandardWebhooks,
}

impl SchemeArg {
    fn name(self) -> SchemeName {
        match self {
            Self::Klikit => SchemeName::Klikit,
            Self::KlikitV1 => SchemeName::KlikitV1,
            Self::StandardWebhooks => SchemeName::StandardWebhooks,
        }
    }
}

#[derive(clap::Args)]
pub(crate) struct SignArgs {
    /// The body: a file, or - for standard input.
    #[arg(default_value = "-")]
    body: String,
    #[arg(long, env = SECRET_ENV_VAR, hide_env_values = true, help = SECRET_HELP)]
    secret: String,
    /// The signature scheme: what is printed is the value of its signature header.
    #[arg(long, value_enum, default_value_t)]
    scheme: SchemeArg,
    /// The signed Unix time in seconds, for klikit-v1 and standard-webhooks (default: now).
    #[arg(long, allow_hyphen_values = true)]
    timestamp: Option<i64>,
    /// The message id standard-webhooks signs (its webhook-id header); required there.
    #[arg(long)]
    id: Option<String>,
}

/// The value of the scheme's signature header for the body: today's hex,
/// `t=<T>,v1=<hex>`, or `v1,<base64>`.
pub(crate) fn sign(args: SignArgs) -> Result<(), String> {
    let name = args.scheme.name();
    let id = match (name, args.id) {
        (SchemeName::StandardWebhooks, Some(id)) => id,
        (SchemeName::StandardWebhooks, None) => {
            return Err(
                "--id is required with --scheme standard-webhooks: it is signed (its webhook-id header)".into(),
            );
        }
        (_, Some(_)) => return Err(format!("--id: the {name} scheme signs no message id")),
        (_, None) => String::new(),
    };
    if name == SchemeName::Klikit && args.timestamp.is_some() {
        return Err("--timestamp: the klikit scheme signs no timestamp; use --scheme klikit-v1".into());
    }
    let secret = name.secret(&args.secret).map_err(|e| format!("--secret: {e}"))?;
    let body = read_body(&args.body).map_err(|e| format!("{}: {e}", args.body))?;
    let scheme = name.scheme(klikit_webhook::scheme::DEFAULT_TOLERANCE);
    let outgoing = Outgoing::new(&id, "", &body).with_timestamp(args.timestamp.unwrap_or_else(now));
    let mut headers = HeaderMap::new();
    scheme.sign(&secret, &outgoing, &mut headers);
    let signature = headers
        .get(scheme.signature_header())
        .and_then(|value| value.to_str().ok())
        .ok_or("the scheme wrote no signature")?;
    println!("{signature}");
    Ok(())
}

#[derive(clap::Args)]
pub(crate) struct SendArgs {
    /// The receiver's webhook URL (http only).
    url: String,
    #[arg(long, env = SECRET_ENV_VAR, hide_env_values = true, help = SECRET_HELP)]
    secret: String,
    /// The signature scheme, and so every header sent.
    #[arg(long, value_enum, default_value_t)]
    scheme: SchemeArg,
    /// Send a shipped fixture body (default: created, or order.placed.v1 with klikit-v1 and standard-webhooks).
    #[arg(long, value_enum, conflicts_with = "file")]
    fixture: Option<Fixture>,
    /// Send this file as the body instead (- for standard input).
    #[arg(long)]
    file: Option<PathBuf>,
    /// The event type header (default: the fixture's type, or the scheme's first type).
    #[arg(long)]
    event_type: Option<String>,
    /// The event id (default: fresh, or a file's own top-level event_id); a v1 fixture's body gets it as its event_id.
    #[arg(long)]
    event_id: Option<String>,
    /// The subscription, X-Klikit-Webhook-Id (klikit-v1 only).
    #[arg(long)]
    subscription: Option<String>,
    /// The signed Unix time in seconds (default: when each request is sent; klikit-v1 and standard-webhooks).
    #[arg(long, allow_hyphen_values = true)]
    timestamp: Option<i64>,
    /// Send the same delivery this many times, one after another (deduplication).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Send each round this many times at once (in-flight handling).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Sign with a wrong key, to see the receiver refuse it.
    #[arg(long)]
    forge: bool,
}

/// `--fixture`: today's three bodies, the seven Partner API v1 event types
/// and the five sandbox shapes of Klikit's go-live checklist.
#[derive(Clone, Copy, ValueEnum)]
enum Fixture {
    /// Today's klikit.order.created.v2.
    Created,
    /// Today's klikit.order.status.updated.
    Status,
    /// Today's klikit.order.cart.updated.
    Cart,
    /// v1: a delivery order placed.
    #[value(name = "order.placed.v1")]
    OrderPlacedV1,
    /// v1: the order accepted, details changed.
    #[value(name = "order.updated.v1")]
    OrderUpdatedV1,
    /// v1: a pickup order the branch cancelled.
    #[value(name = "order.cancelled.v1")]
    OrderCancelledV1,
    /// v1: the delivered order, corrected by an operator.
    #[value(name = "order.amended.v1")]
    OrderAmendedV1,
    /// v1: a rider assigned.
    #[value(name = "order.courier_assigned.v1")]
    OrderCourierAssignedV1,
    /// v1: the rider left the store.
    #[value(name = "order.picked_up.v1")]
    OrderPickedUpV1,
    /// v1: delivered.
    #[value(name = "order.delivered.v1")]
    OrderDeliveredV1,
    /// Sandbox: one item, dine-in (order.placed.v1).
    #[value(name = "single_item_dine_in")]
    SingleItemDineIn,
    /// Sandbox: one item, delivery (order.placed.v1).
    #[value(name = "single_item_delivery")]
    SingleItemDelivery,
    /// Sandbox: three items with modifiers (order.placed.v1).
    #[value(name = "multi_item_with_modifiers")]
    MultiItemWithModifiers,
    /// Sandbox: 15 items (order.placed.v1).
    #[value(name = "large_basket")]
    LargeBasket,
    /// Sandbox: order.placed.v1, then order.cancelled.v1 of the same order (two events).
    #[value(name = "cancellation_flow")]
    CancellationFlow,
}

impl Fixture {
    /// The events it sends, in order: (type, body).
    fn events(self) -> Vec<(EventType, &'static str)> {
        let today = |event_type: EventType| {
            let body = fixtures::for_event_type(&event_type).unwrap_or(fixtures::ORDER_CREATED);
            vec![(event_type, body)]
        };
        let v1 = |event_type: EventType, body| vec![(event_type, body)];
        match self {
            Self::Created => today(EventType::OrderCreated),
            Self::Status => today(EventType::OrderStatusUpdated),
            Self::Cart => today(EventType::OrderCartUpdated),
            Self::OrderPlacedV1 => v1(EventType::OrderPlacedV1, v1::ORDER_PLACED),
            Self::OrderUpdatedV1 => v1(EventType::OrderUpdatedV1, v1::ORDER_UPDATED),
            Self::OrderCancelledV1 => v1(EventType::OrderCancelledV1, v1::ORDER_CANCELLED),
            Self::OrderAmendedV1 => v1(EventType::OrderAmendedV1, v1::ORDER_AMENDED),
            Self::OrderCourierAssignedV1 => v1(EventType::OrderCourierAssignedV1, v1::ORDER_COURIER_ASSIGNED),
            Self::OrderPickedUpV1 => v1(EventType::OrderPickedUpV1, v1::ORDER_PICKED_UP),
            Self::OrderDeliveredV1 => v1(EventType::OrderDeliveredV1, v1::ORDER_DELIVERED),
            Self::SingleItemDineIn => v1(EventType::OrderPlacedV1, v1::SANDBOX_SINGLE_ITEM_DINE_IN),
            Self::SingleItemDelivery => v1(EventType::OrderPlacedV1, v1::SANDBOX_SINGLE_ITEM_DELIVERY),
            Self::MultiItemWithModifiers => v1(EventType::OrderPlacedV1, v1::SANDBOX_MULTI_ITEM_WITH_MODIFIERS),
            Self::LargeBasket => v1(EventType::OrderPlacedV1, v1::SANDBOX_LARGE_BASKET),
            Self::CancellationFlow => vec![
                (EventType::OrderPlacedV1, v1::SANDBOX_CANCELLATION_FLOW[0]),
                (EventType::OrderCancelledV1, v1::SANDBOX_CANCELLATION_FLOW[1]),
            ],
        }
    }
}

/// One event to send: id, type and the exact body.
struct Event {
    id: String,
    event_type: String,
    body: Bytes,
}

pub(crate) fn read_body(source: &str) -> std::io::Result<Vec<u8>> {
    if source == "-" {
        let mut body = Vec::new();
        std::io::stdin().read_to_end(&mut body)?;
        Ok(body)
    } else {
        std::fs::read(source)
    }
}

/// Now, in Unix seconds.
fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| i64::try_from(since.as_secs()).unwrap_or(i64::MAX))
}

/// A fresh random id in the form of a version 4 UUID, as Partner API v1
/// event ids are. The randomness is the standard library's (`RandomState`
/// keys come from the OS), hashed with a never-repeating token.
fn fresh_uuid() -> String {
    let token = LeaseToken::generate().as_u128();
    let half = |salt: u8| {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u8(salt);
        hasher.write_u128(token);
        u128::from(hasher.finish())
    };
    let bits = (half(0) << 64) | half(1);
    let bits = (bits & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The body's top-level `event_id`, if it is a JSON object with one.
fn body_event_id(body: &[u8]) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    json.get("event_id")?.as_str().map(str::to_owned)
}

/// The events `args` describe. A v1 fixture's body carries its event id,
/// which the receiver deduplicates on and must agree with the header: it is
/// rewritten to the id sent (fresh unless `--event-id`), so every run is a
/// new event. A file is sent as it is, with its own `event_id` by default.
fn events(args: &SendArgs, name: SchemeName) -> Result<Vec<Event>, String> {
    let default_type = |fixture_type: EventType| match (&args.event_type, name) {
        (Some(event_type), _) => event_type.clone(),
        (None, SchemeName::StandardWebhooks) => String::new(),
        (None, _) => fixture_type.to_string(),
    };
    if let Some(file) = &args.file {
        let body = read_body(&file.to_string_lossy()).map_err(|e| format!("{}: {e}", file.display()))?;
        let id = args.event_id.clone().or_else(|| body_event_id(&body));
        let first_type = match name {
            SchemeName::Klikit => EventType::OrderCreated,
            _ => EventType::OrderPlacedV1,
        };
        return Ok(vec![Event {
            id: id.unwrap_or_else(|| format!("cli-{}", LeaseToken::generate())),
            event_type: default_type(first_type),
            body: Bytes::from(body),
        }]);
    }
    let fixture = args.fixture.unwrap_or(match name {
        SchemeName::Klikit => Fixture::Created,
        _ => Fixture::OrderPlacedV1,
    });
    let list = fixture.events();
    if list.len() > 1 && args.event_id.is_some() {
        return Err("--event-id names one event; this fixture sends several".into());
    }
    list.into_iter()
        .map(|(event_type, body)| {
            let Some(old) = body_event_id(body.as_bytes()) else {
                let id = args
                    .event_id
                    .clone()
                    .unwrap_or_else(|| format!("cli-{}", LeaseToken::generate()));
                return Ok(Event {
                    id,
                    event_type: default_type(event_type),
                    body: Bytes::from_static(body.as_bytes()),
                });
            };
            let id = args.event_id.clone().unwrap_or_else(fresh_uuid);
            let quoted = |id: &str| serde_json::to_string(id).map_err(|e| e.to_string());
            let rewritten = body.replacen(&quoted(&old)?, &quoted(&id)?, 1);
            Ok(Event {
                id,
                event_type: default_type(event_type),
                body: Bytes::from(rewritten),
            })
        })
        .collect()
}

/// Checks the options against the scheme, and that the header values can
/// be sent.
fn check_options(args: &SendArgs, name: SchemeName) -> Result<(), String> {
    for (option, value) in [
        ("--event-id", &args.event_id),
        ("--event-type", &args.event_type),
        ("--subscription", &args.subscription),
    ] {
        if let Some(value) = value
            && http::HeaderValue::from_str(value).is_err()
        {
            return Err(format!("{option}: {value:?} is not a valid header value"));
        }
    }
    if args.subscription.is_some() && name != SchemeName::KlikitV1 {
        return Err(format!(
            "--subscription: the {name} scheme sends no subscription; use --scheme klikit-v1"
        ));
    }
    if args.timestamp.is_some() && !name.is_timestamped() {
        return Err("--timestamp: the klikit scheme signs no timestamp; use --scheme klikit-v1".into());
    }
    if args.event_type.is_some() && name == SchemeName::StandardWebhooks {
        return Err("--event-type: standard-webhooks sends no event type header".into());
    }
    Ok(())
}

pub(crate) async fn send(args: SendArgs) -> Result<(), String> {
    let name = args.scheme.name();
    check_options(&args, name)?;
    let secret = name.secret(&args.secret).map_err(|e| format!("--secret: {e}"))?;
    let secret = if args.forge {
        WebhookSecret::new([b"forged-".as_slice(), secret.expose()].concat()).map_err(|e| e.to_string())?
    } else {
        secret
    };
    let scheme: Arc<dyn Scheme> = name.scheme(klikit_webhook::scheme::DEFAULT_TOLERANCE);
    let uri: Uri = args.url.parse().map_err(|e| format!("{}: {e}", args.url))?;
    let client = Arc::new(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let mut n = 0;
    for event in events(&args, name)? {
        let shown_type = if event.event_type.is_empty() {
            "(none)"
        } else {
            &event.event_type
        };
        println!("event id {}, type {shown_type}, {} bytes", event.id, event.body.len());
        for _ in 0..args.repeat.max(1) {
            let round = (0..args.concurrency.max(1))
                .map(|_| {
                    let mut outgoing = Outgoing::new(&event.id, &event.event_type, &event.body)
                        .with_timestamp(args.timestamp.unwrap_or_else(now));
                    if let Some(subscription) = &args.subscription {
                        outgoing = outgoing.with_subscription(subscription);
                    }
                    let mut request = Request::post(uri.clone())
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(Full::new(event.body.clone()))
                        .map_err(|e| e.to_string())?;
                    scheme.sign(&secret, &outgoing, request.headers_mut());
                    let client = client.clone();
                    Ok(tokio::spawn(async move {
                        let started = Instant::now();
                        let response = client.request(request).await.map_err(|e| e.to_string())?;
                        let status = response.status();
                        let answer = response.into_body().collect().await.map_err(|e| e.to_string())?;
                        Ok::<_, String>((status, answer.to_bytes(), started.elapsed()))
                    }))
                })
                .collect::<Result<Vec<_>, String>>()?;
            for task in round {
                n += 1;
                match task.await.map_err(|e| e.to_string())? {
                    Ok((status, answer, took)) => {
                        println!(
                            "#{n} {} {} ({took:.1?})",
                            status.as_u16(),
                            String::from_utf8_lossy(&answer)
                        );
                    }
                    Err(error) => println!("#{n} error: {error}"),
                }
            }
        }
    }
    Ok(())
}
