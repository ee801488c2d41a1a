//! The results as a table (printed as the checks run) or as JSON.

use std::time::Duration;

use serde_json::{Value, json};

use super::{
    Outcome, Verdict,
    client::{Seen, one_line},
    timing::millis,
};

const CHECK_WIDTH: usize = 13;
const RESULT_WIDTH: usize = 7;
const LABEL_WIDTH: usize = 34;
const ANSWER_WIDTH: usize = 56;
const NOTE_WIDTH: usize = 96;

pub(crate) fn print_header(url: &str, scheme: &str) {
    println!("klikit check {url} (scheme {scheme})\n");
    println!("{:<CHECK_WIDTH$} {:<RESULT_WIDTH$} WHAT IT SAW", "CHECK", "RESULT");
}

/// One check: its line, a line per delivery, then the advice or the fix.
pub(crate) fn print_row(outcome: &Outcome) {
    println!(
        "{:<CHECK_WIDTH$} {:<RESULT_WIDTH$} {}",
        outcome.check.name(),
        outcome.verdict.name(),
        outcome.summary
    );
    for seen in &outcome.seen {
        println!(
            "    {:<LABEL_WIDTH$} {:<ANSWER_WIDTH$} {:>8}",
            one_line(&seen.label, LABEL_WIDTH),
            seen.excerpt(ANSWER_WIDTH),
            millis(seen.elapsed)
        );
    }
    let indent = " ".repeat(4);
    if let Some(note) = &outcome.note {
        let lead = if outcome.verdict == Verdict::Advice {
            "advice"
        } else {
            "why"
        };
        print_wrapped(&indent, &format!("{lead}: {note}"));
    }
    if outcome.verdict == Verdict::Fail {
        print_wrapped(&indent, &format!("usually: {}", outcome.check.on_failure()));
    }
}

pub(crate) fn print_footer(outcomes: &[Outcome]) {
    let count = |verdict| outcomes.iter().filter(|o| o.verdict == verdict).count();
    println!(
        "\n{} passed, {} advice, {} failed, {} skipped",
        count(Verdict::Pass),
        count(Verdict::Advice),
        count(Verdict::Fail),
        count(Verdict::Skip)
    );
}

fn print_wrapped(indent: &str, text: &str) {
    print!("{}", wrap(indent, text));
}

/// `text` word-wrapped to [`NOTE_WIDTH`], each line after `indent` and
/// ending in a newline.
pub(crate) fn wrap(indent: &str, text: &str) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > NOTE_WIDTH {
            out.push_str(&format!("{indent}{line}\n"));
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        out.push_str(&format!("{indent}{line}\n"));
    }
    out
}

/// The same results as the table, as one JSON document.
pub(crate) fn json(url: &str, scheme: &str, outcomes: &[Outcome]) -> String {
    let count = |verdict| outcomes.iter().filter(|o| o.verdict == verdict).count();
    let checks: Vec<Value> = outcomes.iter().map(outcome_json).collect();
    let document = json!({
        "url": url,
        "scheme": scheme,
        "ok": count(Verdict::Fail) == 0,
        "counts": {
            "pass": count(Verdict::Pass),
            "advice": count(Verdict::Advice),
            "fail": count(Verdict::Fail),
            "skip": count(Verdict::Skip),
        },
        "checks": checks,
    });
    serde_json::to_string_pretty(&document).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

fn outcome_json(outcome: &Outcome) -> Value {
    let verdict = match outcome.verdict {
        Verdict::Pass => "pass",
        Verdict::Advice => "advice",
        Verdict::Fail => "fail",
        Verdict::Skip => "skip",
    };
    let latency = outcome.latency.map(|latency| {
        json!({
            "samples": latency.samples,
            "p50_ms": ms(latency.p50),
            "p99_ms": ms(latency.p99),
            "max_ms": ms(latency.max),
        })
    });
    json!({
        "name": outcome.check.name(),
        "verdict": verdict,
        "summary": outcome.summary,
        "note": outcome.note,
        "fix": (outcome.verdict == Verdict::Fail).then(|| outcome.check.on_failure()),
        "seen": outcome.seen.iter().map(seen_json).collect::<Vec<_>>(),
        "latency": latency,
    })
}

fn seen_json(seen: &Seen) -> Value {
    json!({
        "label": seen.label,
        "status": seen.status,
        "retry_after": seen.retry_after,
        "body": one_line(&seen.body, 200),
        "ms": ms(seen.elapsed),
        "error": seen.error,
    })
}

/// Milliseconds with one decimal.
fn ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 10_000.0).round() / 10.0
}
