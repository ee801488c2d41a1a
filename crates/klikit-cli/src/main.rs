//! `klikit`: sign, send and receive Klikit webhooks from the command line.
//!
//! ```sh
//! cargo install klikit-cli
//! export KLIKIT_WEBHOOK_SECRET=...
//! klikit sign body.json                       # the x-klikit-signature of a file (or - for stdin)
//! klikit send http://localhost:8080/webhooks/klikit --fixture created --repeat 3
//! klikit serve                                # the example receiver
//! klikit check http://localhost:8080/webhooks/klikit   # grade an endpoint against Klikit's contract
//! ```

mod check;

use std::{
    io::Read,
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use http::{Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use klikit_webhook::{
    EVENT_ID_HEADER, EVENT_TYPE_HEADER, EventType, SECRET_ENV_VAR, SIGNATURE_HEADER, fixtures, signature::sign,
    store::LeaseToken,
};

#[derive(Parser)]
#[command(name = "klikit", version, about = "Sign, send and receive Klikit order webhooks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print hex(HMAC-SHA256(secret, body)), the value of x-klikit-signature.
    Sign {
        /// The body: a file, or - for standard input.
        #[arg(default_value = "-")]
        body: String,
        /// The webhook secret (default: $KLIKIT_WEBHOOK_SECRET).
        #[arg(long, env = SECRET_ENV_VAR, hide_env_values = true)]
        secret: String,
    },
    /// POST a signed delivery to a receiver and print each answer.
    Send(SendArgs),
    /// Run the example receiver (configured by the same environment variables).
    Serve,
    /// Grade any webhook endpoint against Klikit's contract with real, signed deliveries.
    Check(check::CheckArgs),
}

#[derive(clap::Args)]
struct SendArgs {
    /// The receiver's webhook URL (http only).
    url: String,
    /// The webhook secret (default: $KLIKIT_WEBHOOK_SECRET).
    #[arg(long, env = SECRET_ENV_VAR, hide_env_values = true)]
    secret: String,
    /// Send a shipped fixture body (default: created).
    #[arg(long, value_enum, conflicts_with = "file")]
    fixture: Option<Fixture>,
    /// Send this file as the body instead (- for standard input).
    #[arg(long)]
    file: Option<PathBuf>,
    /// The x-klikit-event-type (default: the fixture's type, or klikit.order.created.v2).
    #[arg(long)]
    event_type: Option<String>,
    /// The x-klikit-event-id (default: a fresh random id).
    #[arg(long)]
    event_id: Option<String>,
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

#[derive(Clone, Copy, ValueEnum)]
enum Fixture {
    Created,
    Status,
    Cart,
}

impl Fixture {
    fn event_type(self) -> EventType {
        match self {
            Self::Created => EventType::OrderCreated,
            Self::Status => EventType::OrderStatusUpdated,
            Self::Cart => EventType::OrderCartUpdated,
        }
    }
}

fn read_body(source: &str) -> std::io::Result<Vec<u8>> {
    if source == "-" {
        let mut body = Vec::new();
        std::io::stdin().read_to_end(&mut body)?;
        Ok(body)
    } else {
        std::fs::read(source)
    }
}

/// A delivery as Klikit sends it: `POST uri`, JSON content type, the event
/// id and type headers, and `x-klikit-signature` over `body` with `secret`.
fn signed_request(
    secret: &[u8],
    uri: &Uri,
    event_id: &str,
    event_type: &str,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, String> {
    Request::post(uri.clone())
        .header(header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, sign(secret, &body))
        .header(EVENT_ID_HEADER, event_id)
        .header(EVENT_TYPE_HEADER, event_type)
        .body(Full::new(body))
        .map_err(|e| format!("event id or event type is not a valid header value: {e}"))
}

async fn send(args: SendArgs) -> Result<(), String> {
    let (body, default_type) = match (&args.file, args.fixture) {
        (Some(file), _) => {
            let body = read_body(&file.to_string_lossy()).map_err(|e| format!("{}: {e}", file.display()))?;
            (Bytes::from(body), EventType::OrderCreated)
        }
        (None, fixture) => {
            let event_type = fixture.unwrap_or(Fixture::Created).event_type();
            let body = fixtures::for_event_type(&event_type).unwrap_or(fixtures::ORDER_CREATED);
            (Bytes::from_static(body.as_bytes()), event_type)
        }
    };
    let event_type = args.event_type.unwrap_or_else(|| default_type.to_string());
    let event_id = args
        .event_id
        .unwrap_or_else(|| format!("cli-{}", LeaseToken::generate()));
    let key = if args.forge {
        format!("forged-{}", args.secret)
    } else {
        args.secret
    };
    let uri: Uri = args.url.parse().map_err(|e| format!("{}: {e}", args.url))?;
    let client = Arc::new(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    println!("event id {event_id}, type {event_type}, {} bytes", body.len());
    let mut n = 0;
    for _ in 0..args.repeat.max(1) {
        let round = (0..args.concurrency.max(1))
            .map(|_| {
                let request = signed_request(key.as_bytes(), &uri, &event_id, &event_type, body.clone())?;
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
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sign { body, secret } => match read_body(&body) {
            Ok(bytes) => {
                println!("{}", sign(secret.as_bytes(), &bytes));
                Ok(())
            }
            Err(error) => Err(format!("{body}: {error}")),
        },
        Command::Send(args) => tokio::time::timeout(Duration::from_secs(300), send(args))
            .await
            .unwrap_or_else(|_| Err("gave up after 300 s".into())),
        Command::Serve => {
            klikit_cli::init_tracing();
            klikit_cli::receiver::serve_from_env().await.map_err(|e| e.to_string())
        }
        Command::Check(args) => check::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("klikit: {message}");
            ExitCode::FAILURE
        }
    }
}
