//! `klikit check`: grades any webhook endpoint, in any language, against
//! Klikit's contract before it goes live.
//!
//! It sends real, correctly signed deliveries to the URL and runs the checks
//! in [`CheckName::ALL`] order, each small and named. Klikit's contract decides
//! what fails; what goes beyond it (a body size limit, `Retry-After`, naming
//! duplicates) is advice. The exit status is 0 only if no check failed.
//!
//! - [`scheme`]: what is sent, per signature scheme: today's `klikit`, and
//!   Partner API v1 (`klikit-v1`) in [`scheme_v1`] with its bodies in
//!   [`bodies_v1`];
//! - [`client`]: one delivery over HTTP, with timeouts;
//! - [`checks`] and [`timing`]: the checks;
//! - [`report`]: the table and the JSON.

mod bodies_v1;
mod checks;
mod client;
mod report;
mod scheme;
mod scheme_v1;
mod timing;

use clap::ValueEnum;
use klikit_webhook::SECRET_ENV_VAR;

use self::{
    client::{Endpoint, Seen},
    scheme::{CheckScheme, Delivery, Event, Ids, Klikit},
    scheme_v1::KlikitV1Check,
};

/// `klikit check` arguments.
#[derive(clap::Args)]
#[command(after_long_help = help_text())]
pub(crate) struct CheckArgs {
    /// The endpoint's webhook URL (http:// only).
    url: String,
    /// The webhook secret the endpoint verifies with (default: $KLIKIT_WEBHOOK_SECRET).
    #[arg(long, env = SECRET_ENV_VAR, hide_env_values = true)]
    secret: String,
    /// The signature scheme to send.
    #[arg(long, value_enum, default_value_t = SchemeName::Klikit)]
    scheme: SchemeName,
    /// With --scheme klikit-v1: the X-Klikit-Webhook-Id every delivery names (the endpoint's subscription).
    #[arg(long, value_name = "ID")]
    subscription: Option<String>,
    /// A shell command (run with sh -c) that restarts the endpoint; enables the restart check.
    #[arg(long, value_name = "SHELL COMMAND")]
    restart: Option<String>,
    /// Run only these checks (comma-separated); the others are reported as skipped.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "CHECK")]
    only: Vec<CheckName>,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The signature schemes `--scheme` names.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SchemeName {
    /// Today's contract (developer.klikit.io): hex HMAC-SHA256 of the raw body.
    Klikit,
    /// Partner API v1: t=…,v1=… over "t.body", the event id also in the body.
    KlikitV1,
}

impl SchemeName {
    fn scheme(self, subscription: Option<String>) -> Result<Box<dyn CheckScheme>, String> {
        match (self, subscription) {
            (Self::Klikit, None) => Ok(Box::new(Klikit)),
            (Self::Klikit, Some(_)) => {
                Err("--subscription is for --scheme klikit-v1 (today's scheme has no subscription header)".to_owned())
            }
            (Self::KlikitV1, Some(id)) if id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic()) => Err(format!(
                "--subscription {id:?}: a webhook subscription id is visible ASCII, without spaces"
            )),
            (Self::KlikitV1, subscription) => Ok(Box::new(KlikitV1Check::new(subscription))),
        }
    }
}

/// The checks, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum CheckName {
    /// Every fixture of the scheme is accepted (2xx).
    Fixtures,
    /// Valid JSON that is not in compact form is accepted (2xx).
    RawBody,
    /// Forged, truncated, incomplete (and, v1, stale) deliveries are refused (non-2xx).
    Refusals,
    /// The same delivery again is accepted (2xx).
    Duplicate,
    /// Concurrent copies of one delivery are handled once.
    Concurrency,
    /// An unknown event type is accepted (2xx).
    UnknownType,
    /// A 2 MiB body: refusing it is best (advice only).
    BodyLimit,
    /// Every reply within 10 s; p50/p99 over a burst.
    Deadline,
    /// With --restart: still a duplicate after a restart.
    Restart,
}

impl CheckName {
    /// Every check, in running order.
    pub(crate) const ALL: [Self; 9] = [
        Self::Fixtures,
        Self::RawBody,
        Self::Refusals,
        Self::Duplicate,
        Self::Concurrency,
        Self::UnknownType,
        Self::BodyLimit,
        Self::Deadline,
        Self::Restart,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Fixtures => "fixtures",
            Self::RawBody => "raw-body",
            Self::Refusals => "refusals",
            Self::Duplicate => "duplicate",
            Self::Concurrency => "concurrency",
            Self::UnknownType => "unknown-type",
            Self::BodyLimit => "body-limit",
            Self::Deadline => "deadline",
            Self::Restart => "restart",
        }
    }

    /// What the check sends and what passes.
    pub(crate) fn about(self) -> &'static str {
        match self {
            Self::Fixtures => {
                "each fixture of the scheme, with a fresh event id, is answered 2xx. klikit: \
                 klikit.order.created.v2, .status.updated, .cart.updated. klikit-v1: the seven v1 event types \
                 (order.placed.v1, .updated, .cancelled, .amended, .courier_assigned, .picked_up, .delivered) and the \
                 five sandbox shapes (single_item_dine_in, single_item_delivery, multi_item_with_modifiers, \
                 large_basket, cancellation_flow: placed then cancelled), each body's event_id set to the delivery's \
                 id."
            }
            Self::RawBody => {
                "valid bodies not in compact form are answered 2xx, one fresh event each: extra spaces, tabs \
                 and newlines; keys out of order; \\u escapes; non-ASCII text; the numbers 84.50 and 1e2; a trailing \
                 newline."
            }
            Self::Refusals => {
                "answered non-2xx: a wrong secret, the signature of another body, a signature truncated to \
                 62 digits, and each required header missing (klikit: x-klikit-signature, x-klikit-event-id, \
                 x-klikit-event-type; klikit-v1: x-klikit-signature, x-klikit-event-id, x-klikit-event). klikit-v1 \
                 also: a correctly signed t 10 minutes old, and one 10 minutes ahead."
            }
            Self::Duplicate => {
                "the same delivery twice: the copy is answered 2xx; confirmed when the reply names the \
                 duplicate (Klikit's 200 {\"status\":\"duplicate-ignored\"}), advice otherwise."
            }
            Self::Concurrency => {
                "8 copies of one new delivery at once: each answered 2xx, or 409/503 with Retry-After; no \
                 5xx without Retry-After; at most one reply says \"received\"."
            }
            Self::UnknownType => {
                "an event type the endpoint has never heard of (klikit.order.check-unknown-type.v1; klikit-v1: \
                 order.check_unknown.v1) is answered 2xx."
            }
            Self::BodyLimit => {
                "a 2 MiB signed delivery: refusing it (413) passes; accepting it is advice, never a \
                 failure (Klikit documents no maximum size)."
            }
            Self::Deadline => {
                "every reply of the run came within Klikit's 10 s deadline; p50/p99 over 50 deliveries \
                 sent one after another."
            }
            Self::Restart => {
                "with --restart: deliver, deliver again, run the command, wait until the URL answers (30 s \
                 at most), deliver again: still answered 2xx, and as a duplicate if the endpoint names duplicates."
            }
        }
    }

    /// What a failure usually means, and how to fix it.
    pub(crate) fn on_failure(self) -> &'static str {
        match self {
            Self::Fixtures => {
                "the endpoint refuses genuine deliveries. Usually the secret differs (copy it exactly, \
                 without a trailing newline), the signature is compared in the wrong form (lowercase hex of HMAC-SHA256 \
                 over the raw body: no sha256= prefix, not base64; klikit-v1: over \"<t>.<raw body>\" with t as sent, \
                 any of the v1= values may match), the body is re-serialised before verifying (see raw-body), a proxy \
                 strips the x-klikit-* headers, or the payload parser is too strict (ignore unknown fields and enum \
                 values; money may be a string or a number)."
            }
            Self::RawBody => {
                "the endpoint probably verifies a re-serialised body (JSON.stringify(req.body), \
                 json.dumps(json.loads(...)), serde_json::to_vec(&value)) instead of the exact bytes received, or a \
                 proxy rewrites bodies. Compute the HMAC over the raw request bytes before parsing anything."
            }
            Self::Refusals => {
                "the endpoint accepts forged or incomplete deliveries: anyone who knows the URL can inject \
                 orders. Verify before anything else, compare the whole 64-digit value in constant time \
                 (hmac.compare_digest, crypto.timingSafeEqual after a length check, Mac::verify_slice), and refuse a \
                 missing header (400) or a mismatch (401). Under klikit-v1, once the signature matches, also refuse \
                 (401) a t more than 5 minutes before or after your clock."
            }
            Self::Duplicate => {
                "a non-2xx answer to a duplicate makes Klikit retry it for ever, and answering it as \
                 newly received means ids are not deduplicated. Record processed event ids and answer 200 to a known id \
                 without processing it again."
            }
            Self::Concurrency => {
                "a check-then-insert race: two copies both pass the \"seen?\" test and the event is \
                 processed twice, or the second insert hits a unique index and crashes with a 500. Claim the id \
                 atomically (INSERT ... ON CONFLICT, Redis SET NX, a lock) and answer copies of an event still in \
                 flight 409 with Retry-After."
            }
            Self::UnknownType => {
                "Klikit adds event types, and refusing one makes Klikit retry it for ever. Log unknown \
                 types and answer 200, as Klikit's reference receivers do."
            }
            Self::BodyLimit => {
                "it never fails. When a 2 MiB body is accepted, the advice is to cap the body size \
                 (klikit-webhook refuses more than 1 MiB with 413 by default): Klikit's bodies are a few kB, and \
                 without a cap anyone can make the endpoint buffer any amount before the signature is checked."
            }
            Self::Deadline => {
                "Klikit counts a reply after 10 s as failed and retries it, even a 200. The endpoint works \
                 before it answers: acknowledge at once (Klikit recommends under 1 s) and do the work in the \
                 background (a queue and a worker)."
            }
            Self::Restart => {
                "the endpoint keeps its \"seen\" ids in memory, so after a deploy or a crash Klikit's \
                 retries are processed again. Keep them in a persistent store: SQLite, Redis SET NX with a TTL of about \
                 24 h, a unique index in your database."
            }
        }
    }
}

/// The `--help` text that documents every check.
fn help_text() -> String {
    let mut text = report::wrap(
        "",
        "Sends real, signed deliveries to the URL and grades the answers against Klikit's contract. Use a staging \
         endpoint: every accepted delivery is processed (event ids start with klikit-check-; under klikit-v1 they \
         are UUIDs, random per run, whose last group counts the deliveries: …-000000000001).",
    );
    text.push_str("\nChecks (exit status 0 only if none failed; advice never fails):\n");
    for check in CheckName::ALL {
        text.push('\n');
        text.push_str(&report::wrap("  ", &format!("{}: {}", check.name(), check.about())));
        let lead = if check == CheckName::BodyLimit {
            "Advice"
        } else {
            "On failure"
        };
        text.push_str(&report::wrap("      ", &format!("{lead}: {}", check.on_failure())));
    }
    text.push('\n');
    text.push_str(&report::wrap(
        "",
        "The --restart command must return once the old process has stopped; it may start the new one in the \
         background (with that process's output redirected). Plain http:// only.",
    ));
    text
}

/// How a check ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The contract is met.
    Pass,
    /// The contract is met; something beyond it is worth doing.
    Advice,
    /// The contract is broken.
    Fail,
    /// Not run.
    Skip,
}

impl Verdict {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Advice => "advice",
            Self::Fail => "FAIL",
            Self::Skip => "skip",
        }
    }
}

/// Latency figures of the deadline check's burst.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Latency {
    pub(crate) samples: usize,
    pub(crate) p50: std::time::Duration,
    pub(crate) p99: std::time::Duration,
    pub(crate) max: std::time::Duration,
}

/// One check's result: its verdict, a one-line summary, a note (the advice,
/// or what exactly failed), and what it saw.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) check: CheckName,
    pub(crate) verdict: Verdict,
    pub(crate) summary: String,
    pub(crate) note: Option<String>,
    pub(crate) seen: Vec<Seen>,
    pub(crate) latency: Option<Latency>,
}

impl Outcome {
    fn new(check: CheckName, verdict: Verdict, summary: impl Into<String>, seen: Vec<Seen>) -> Self {
        Self {
            check,
            verdict,
            summary: summary.into(),
            note: None,
            seen,
            latency: None,
        }
    }

    pub(crate) fn pass(check: CheckName, summary: impl Into<String>, seen: Vec<Seen>) -> Self {
        Self::new(check, Verdict::Pass, summary, seen)
    }

    pub(crate) fn fail(check: CheckName, summary: impl Into<String>, seen: Vec<Seen>) -> Self {
        Self::new(check, Verdict::Fail, summary, seen)
    }

    pub(crate) fn advice(
        check: CheckName,
        summary: impl Into<String>,
        note: impl Into<String>,
        seen: Vec<Seen>,
    ) -> Self {
        Self::new(check, Verdict::Advice, summary, seen).with_note(note)
    }

    pub(crate) fn skip(check: CheckName, summary: impl Into<String>) -> Self {
        Self::new(check, Verdict::Skip, summary, Vec::new())
    }

    pub(crate) fn with_note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

/// How long the URL may take to answer at all before the checks start
/// (an endpoint started just before `klikit check`).
const STARTUP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How many times a copy asked to come back later is sent again.
pub(crate) const RETRIES: usize = 3;

/// What the checks share: the endpoint, the scheme, the secret, the ids, and
/// every reply that came after the deadline so far.
pub(crate) struct Ctx {
    pub(crate) endpoint: Endpoint,
    pub(crate) scheme: Box<dyn CheckScheme>,
    secret: Vec<u8>,
    pub(crate) ids: Ids,
    pub(crate) restart: Option<String>,
    current: CheckName,
    /// Replies later than the deadline, with the check that saw them.
    pub(crate) late: Vec<(CheckName, Seen)>,
}

impl Ctx {
    pub(crate) fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// Signs `event` and delivers it.
    pub(crate) async fn deliver(&mut self, label: impl Into<String>, event: &Event) -> Seen {
        let delivery = self.scheme.sign(&self.secret, event);
        self.send(label, &delivery).await
    }

    /// Sends `delivery` as it is.
    pub(crate) async fn send(&mut self, label: impl Into<String>, delivery: &Delivery) -> Seen {
        let seen = self.endpoint.deliver(label, delivery).await;
        self.note(&seen);
        seen
    }

    /// Delivers `event` as Klikit retries it: again after the `Retry-After`
    /// of a 409, 429 or 503 (at most [`RETRIES`] times). Every answer, in
    /// order; the last one decides.
    pub(crate) async fn deliver_retrying(&mut self, label: &str, event: &Event) -> Vec<Seen> {
        let mut seen = vec![self.deliver(label, event).await];
        for attempt in 1..=RETRIES {
            let Some(wait) = seen.last().and_then(Seen::retry_wait) else {
                break;
            };
            tokio::time::sleep(wait).await;
            seen.push(self.deliver(format!("{label} (retry {attempt})"), event).await);
        }
        seen
    }

    /// Records `seen` for the deadline check (for replies sent outside
    /// [`deliver`](Self::deliver)).
    pub(crate) fn note(&mut self, seen: &Seen) {
        if seen.late() {
            self.late.push((self.current, seen.clone()));
        }
    }
}

/// Runs `klikit check`: prints the table (or JSON); an error when a check
/// failed or the checks could not start.
pub(crate) async fn run(args: CheckArgs) -> Result<(), String> {
    let scheme = args.scheme.scheme(args.subscription)?;
    let endpoint = Endpoint::new(&args.url)?;
    if args.secret.is_empty() {
        return Err("--secret is empty".to_owned());
    }
    let mut ctx = Ctx {
        endpoint,
        ids: scheme.ids(),
        scheme,
        secret: args.secret.into_bytes(),
        restart: args.restart,
        current: CheckName::Fixtures,
        late: Vec::new(),
    };
    if !ctx.endpoint.wait_until_answers(STARTUP_WAIT).await {
        return Err(format!(
            "{}: nothing answered HTTP there within {} s (is the endpoint running?)",
            args.url,
            STARTUP_WAIT.as_secs()
        ));
    }
    if !args.json {
        report::print_header(&args.url, ctx.scheme.name());
    }
    let mut outcomes = Vec::new();
    for check in CheckName::ALL {
        ctx.current = check;
        let outcome = if args.only.is_empty() || args.only.contains(&check) {
            run_one(check, &mut ctx).await
        } else {
            Outcome::skip(check, "not selected (--only)")
        };
        if !args.json {
            report::print_row(&outcome);
        }
        outcomes.push(outcome);
    }
    if args.json {
        println!("{}", report::json(&args.url, ctx.scheme.name(), &outcomes));
    } else {
        report::print_footer(&outcomes);
    }
    match outcomes.iter().filter(|o| o.verdict == Verdict::Fail).count() {
        0 => Ok(()),
        1 => Err("1 check failed".to_owned()),
        n => Err(format!("{n} checks failed")),
    }
}

async fn run_one(check: CheckName, ctx: &mut Ctx) -> Outcome {
    match check {
        CheckName::Fixtures => checks::fixtures(ctx).await,
        CheckName::RawBody => checks::raw_body(ctx).await,
        CheckName::Refusals => checks::refusals(ctx).await,
        CheckName::Duplicate => checks::duplicate(ctx).await,
        CheckName::Concurrency => checks::concurrency(ctx).await,
        CheckName::UnknownType => checks::unknown_type(ctx).await,
        CheckName::BodyLimit => checks::body_limit(ctx).await,
        CheckName::Deadline => timing::deadline(ctx).await,
        CheckName::Restart => timing::restart(ctx).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_names_are_the_ones_only_accepts_and_every_check_is_documented() {
        for check in CheckName::ALL {
            assert_eq!(CheckName::from_str(check.name(), false), Ok(check));
            assert!(help_text().contains(&format!("  {}: ", check.name())));
        }
        assert_eq!(CheckName::value_variants(), CheckName::ALL);
    }
}
