//! The checks that judge answers: fixtures, raw-body, refusals, duplicate,
//! concurrency, unknown-type, body-limit. What each sends and what fails is
//! documented once, in [`CheckName::about`] and [`CheckName::on_failure`].

use std::{collections::BTreeMap, time::Duration};

use super::{CheckName, Ctx, Outcome, client::Seen};

/// How many copies of one delivery the concurrency check sends at once.
pub(crate) const COPIES: usize = 8;
/// The body size of the body-limit check: twice klikit-webhook's default limit.
pub(crate) const OVERSIZED: usize = 2 * 1024 * 1024;

pub(super) async fn fixtures(ctx: &mut Ctx) -> Outcome {
    let mut seen = Vec::new();
    for (label, event) in ctx.scheme.fixtures(&ctx.ids) {
        seen.push(ctx.deliver(label, &event).await);
    }
    all_accepted(CheckName::Fixtures, seen, "fixtures")
}

pub(super) async fn raw_body(ctx: &mut Ctx) -> Outcome {
    let mut seen = Vec::new();
    for (label, event) in ctx.scheme.raw_bodies(&ctx.ids) {
        seen.push(ctx.deliver(label, &event).await);
    }
    all_accepted(CheckName::RawBody, seen, "non-compact bodies")
}

pub(super) async fn unknown_type(ctx: &mut Ctx) -> Outcome {
    let event = ctx.scheme.unknown_type(ctx.ids.fresh());
    let label = event.event_type.clone();
    let seen = ctx.deliver(label, &event).await;
    let check = CheckName::UnknownType;
    if seen.accepted() {
        Outcome::pass(check, "an unknown event type was accepted", vec![seen])
    } else {
        Outcome::fail(check, "an unknown event type was not accepted", vec![seen])
    }
}

/// Pass if every delivery was answered 2xx; else fail, naming the others.
fn all_accepted(check: CheckName, seen: Vec<Seen>, what: &str) -> Outcome {
    let total = seen.len();
    let refused: Vec<&str> = seen
        .iter()
        .filter(|s| !s.accepted())
        .map(|s| s.label.as_str())
        .collect();
    if refused.is_empty() {
        Outcome::pass(check, format!("{total} of {total} {what} accepted"), seen)
    } else {
        let summary = format!(
            "{} of {total} {what} not accepted: {}",
            refused.len(),
            refused.join(", ")
        );
        Outcome::fail(check, summary, seen)
    }
}

pub(super) async fn refusals(ctx: &mut Ctx) -> Outcome {
    let check = CheckName::Refusals;
    let mut seen = Vec::new();
    for (label, delivery) in ctx.scheme.refusals(ctx.secret(), &ctx.ids) {
        seen.push(ctx.send(label, &delivery).await);
    }
    let total = seen.len();
    let accepted: Vec<&str> = seen.iter().filter(|s| s.accepted()).map(|s| s.label.as_str()).collect();
    let silent: Vec<&str> = seen
        .iter()
        .filter(|s| s.status.is_none())
        .map(|s| s.label.as_str())
        .collect();
    if !accepted.is_empty() {
        let summary = format!("{} of {total} accepted (2xx): {}", accepted.len(), accepted.join(", "));
        let note = ctx.scheme.refusal_note(&accepted);
        let outcome = Outcome::fail(check, summary, seen);
        match note {
            Some(note) => outcome.with_note(note),
            None => outcome,
        }
    } else if !silent.is_empty() {
        let summary = format!("{} of {total} got no answer: {}", silent.len(), silent.join(", "));
        Outcome::fail(check, summary, seen)
            .with_note("refuse with a status (400 or 401); dropping the connection looks like an outage")
    } else {
        Outcome::pass(check, format!("{total} of {total} refused"), seen)
    }
}

pub(super) async fn duplicate(ctx: &mut Ctx) -> Outcome {
    let check = CheckName::Duplicate;
    let event = ctx.scheme.sample(ctx.ids.fresh());
    let first = ctx.deliver("first delivery", &event).await;
    let mut seen = vec![first.clone()];
    seen.extend(ctx.deliver_retrying("the same delivery again", &event).await);
    let copy = seen.last().cloned().unwrap_or_else(|| first.clone());
    let verdict = if !first.accepted() {
        Outcome::fail(
            check,
            "the first delivery was not accepted, so the copy proves nothing",
            Vec::new(),
        )
    } else if !copy.accepted() {
        Outcome::fail(
            check,
            "the copy was not answered 2xx: Klikit would retry it for ever",
            Vec::new(),
        )
    } else if copy.says_duplicate() {
        Outcome::pass(check, "confirmed: the copy was answered 2xx as a duplicate", Vec::new())
    } else if copy.says_received() {
        Outcome::fail(
            check,
            "the copy was answered as newly received: event ids are not deduplicated",
            Vec::new(),
        )
    } else {
        Outcome::advice(
            check,
            "the copy was answered 2xx; the reply does not say whether it was a duplicate",
            "name duplicates in the reply (Klikit's reference receivers answer 200 {\"status\":\"duplicate-ignored\"}), \
             so that this check, the restart check and your logs can tell a duplicate from a second processing",
            Vec::new(),
        )
    };
    Outcome { seen, ..verdict }
}

pub(super) async fn concurrency(ctx: &mut Ctx) -> Outcome {
    let check = CheckName::Concurrency;
    let event = ctx.scheme.sample(ctx.ids.fresh());
    let delivery = ctx.scheme.sign(ctx.secret(), &event);
    let copies: Vec<_> = (1..=COPIES)
        .map(|n| {
            let endpoint = ctx.endpoint.clone();
            let delivery = delivery.clone();
            tokio::spawn(async move { endpoint.deliver(format!("copy {n}"), &delivery).await })
        })
        .collect();
    let mut seen = Vec::new();
    for (n, copy) in copies.into_iter().enumerate() {
        let one = copy
            .await
            .unwrap_or_else(|e| Seen::error(format!("copy {}", n + 1), Duration::ZERO, e.to_string()));
        ctx.note(&one);
        seen.push(one);
    }
    let summary = tally(&seen);
    let retry_later = |s: &Seen| matches!(s.status, Some(409 | 429 | 500..=599)) && s.retry_after.is_some();
    let received = seen.iter().filter(|s| s.accepted() && s.says_received()).count();
    let broken: Vec<&str> = seen
        .iter()
        .filter(|s| !s.accepted() && !retry_later(s) && !matches!(s.status, Some(409 | 429)))
        .map(|s| s.label.as_str())
        .collect();
    let no_retry_after = seen
        .iter()
        .any(|s| matches!(s.status, Some(409 | 429)) && s.retry_after.is_none());
    if received > 1 {
        let summary =
            format!("{summary}: {received} replies say \"received\", so the event was processed more than once");
        Outcome::fail(check, summary, seen)
    } else if !broken.is_empty() {
        let summary = format!(
            "{summary}: {} answered neither 2xx nor 409/503 with Retry-After ({})",
            broken.len(),
            broken.join(", ")
        );
        Outcome::fail(check, summary, seen)
    } else if !seen.iter().any(Seen::accepted) {
        Outcome::fail(check, format!("{summary}: no copy was accepted"), seen)
    } else if no_retry_after {
        let note = "add Retry-After to the 409 (or 429) you answer copies with, so that Klikit's retry does not come \
                    before the first copy is done";
        Outcome::advice(check, summary, note, seen)
    } else {
        Outcome::pass(check, summary, seen)
    }
}

/// `"8 copies: 200 ×7, 409 ×1 with Retry-After"`, plus how many said
/// received or duplicate.
fn tally(seen: &[Seen]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for s in seen {
        let key = match (s.status, &s.retry_after) {
            (Some(status), Some(_)) => format!("{status} with Retry-After"),
            (Some(status), None) => status.to_string(),
            (None, _) => "no answer".to_owned(),
        };
        *counts.entry(key).or_default() += 1;
    }
    let counts: Vec<String> = counts.into_iter().map(|(key, n)| format!("{key} ×{n}")).collect();
    let received = seen.iter().filter(|s| s.says_received()).count();
    let duplicate = seen.iter().filter(|s| s.says_duplicate()).count();
    format!(
        "{} copies: {} (\"received\" ×{received}, \"duplicate\" ×{duplicate})",
        seen.len(),
        counts.join(", ")
    )
}

pub(super) async fn body_limit(ctx: &mut Ctx) -> Outcome {
    let check = CheckName::BodyLimit;
    let event = ctx.scheme.oversized(ctx.ids.fresh(), OVERSIZED);
    let mib = event.body.len() / (1024 * 1024);
    let seen = vec![ctx.deliver(format!("{mib} MiB body"), &event).await];
    if seen[0].accepted() {
        let note = "cap the body size (klikit-webhook refuses more than 1 MiB with 413 by default): Klikit's bodies are a \
                    few kB, and without a cap anyone can make the endpoint buffer any amount before the signature is \
                    checked";
        Outcome::advice(check, format!("a {mib} MiB delivery was accepted"), note, seen)
    } else if seen[0].refused() {
        Outcome::pass(check, format!("a {mib} MiB delivery was refused"), seen)
    } else {
        let summary = format!("no answer to a {mib} MiB delivery (a size limit that drops the connection, probably)");
        Outcome::pass(check, summary, seen)
    }
}
