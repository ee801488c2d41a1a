//! The checks about time and process life: the deadline (every reply of the
//! run, and a burst for p50/p99) and the restart.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use super::{
    CheckName, Ctx, Latency, Outcome,
    client::{DEADLINE, Seen},
};

/// How many deliveries the deadline check sends, one after another.
pub(crate) const BURST: usize = 50;
/// The burst stops once it has taken this long.
const BURST_BUDGET: Duration = Duration::from_secs(60);
/// What Klikit's troubleshooting page recommends answering within.
const RECOMMENDED: Duration = Duration::from_secs(1);
/// How long the `--restart` command may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for the endpoint to answer after the command.
const UP_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) async fn deadline(ctx: &mut Ctx) -> Outcome {
    let check = CheckName::Deadline;
    let started = Instant::now();
    let mut times = Vec::with_capacity(BURST);
    let mut stopped = None;
    for n in 1..=BURST {
        let event = ctx.scheme.sample(ctx.ids.fresh());
        let seen = ctx.deliver(format!("burst {n}"), &event).await;
        times.push(seen.elapsed);
        if seen.late() {
            stopped = Some(format!("; the burst stopped at delivery {n}, the first late one"));
            break;
        }
        if started.elapsed() > BURST_BUDGET {
            stopped = Some(format!(
                "; the burst stopped at delivery {n}, after {} s",
                BURST_BUDGET.as_secs()
            ));
            break;
        }
    }
    let latency = latency(&mut times);
    let figures = format!(
        "p50 {}, p99 {}, max {} over {} deliveries{}",
        millis(latency.p50),
        millis(latency.p99),
        millis(latency.max),
        latency.samples,
        stopped.unwrap_or_default()
    );
    let late: Vec<Seen> = ctx
        .late
        .iter()
        .map(|(check, seen)| Seen {
            label: format!("{}: {}", check.name(), seen.label),
            ..seen.clone()
        })
        .collect();
    let outcome = if let Some(slowest) = late.iter().max_by_key(|s| s.elapsed) {
        let summary = format!(
            "{} replies after {} s (slowest: {} in {}); {figures}",
            late.len(),
            DEADLINE.as_secs(),
            millis(slowest.elapsed),
            slowest.label
        );
        Outcome::fail(check, summary, late)
    } else if latency.p99 > RECOMMENDED {
        let note = "Klikit recommends answering within 1 s: acknowledge at once and do the work in the background, so \
                    that a slow day does not cross the 10 s deadline";
        Outcome::advice(check, figures, note, late)
    } else {
        Outcome::pass(check, figures, late)
    };
    Outcome {
        latency: Some(latency),
        ..outcome
    }
}

/// Nearest-rank percentiles of `times` (sorted in place).
fn latency(times: &mut [Duration]) -> Latency {
    times.sort_unstable();
    let rank = |p: usize| {
        let n = times.len();
        let index = (n * p).div_ceil(100).saturating_sub(1);
        times.get(index).copied().unwrap_or_default()
    };
    Latency {
        samples: times.len(),
        p50: rank(50),
        p99: rank(99),
        max: times.last().copied().unwrap_or_default(),
    }
}

/// `"0.4 ms"`, `"12 ms"`, `"11.0 s"`.
pub(crate) fn millis(duration: Duration) -> String {
    if duration >= Duration::from_secs(1) {
        format!("{:.1} s", duration.as_secs_f64())
    } else if duration < Duration::from_millis(10) {
        format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
    } else {
        format!("{} ms", duration.as_millis())
    }
}

pub(super) async fn restart(ctx: &mut Ctx) -> Outcome {
    let check = CheckName::Restart;
    let Some(command) = ctx.restart.clone() else {
        return Outcome::skip(check, "needs --restart \"<shell command that restarts the endpoint>\"");
    };
    let event = ctx.scheme.sample(ctx.ids.fresh());
    let first = ctx.deliver("delivery", &event).await;
    let mut seen = vec![first.clone()];
    let copies = ctx.deliver_retrying("the same, before the restart", &event).await;
    let before = copies.last().cloned().unwrap_or_else(|| first.clone());
    seen.extend(copies);
    if !first.accepted() {
        let summary = "the delivery before the restart was not accepted, so the restart proves nothing";
        return Outcome::fail(check, summary, seen);
    }
    let started = Instant::now();
    let ran = run_command(&command).await;
    let step = match &ran {
        Ok(()) => Seen::step("restart command", started.elapsed(), "exited 0"),
        Err(error) => Seen::error("restart command", started.elapsed(), error.clone()),
    };
    seen.push(step);
    if let Err(error) = ran {
        return Outcome::fail(check, format!("the restart command failed: {error}"), seen);
    }
    let started = Instant::now();
    if !ctx.endpoint.wait_until_answers(UP_TIMEOUT).await {
        seen.push(Seen::error("waiting for the URL", started.elapsed(), "no HTTP answer"));
        let summary = format!(
            "the URL did not answer within {} s of the restart",
            UP_TIMEOUT.as_secs()
        );
        return Outcome::fail(check, summary, seen);
    }
    seen.push(Seen::step("waiting for the URL", started.elapsed(), "answers"));
    ctx.endpoint = ctx.endpoint.fresh();
    let copies = ctx.deliver_retrying("the same, after the restart", &event).await;
    let after = copies.last().cloned().unwrap_or_else(|| first.clone());
    seen.extend(copies);
    if !after.accepted() {
        Outcome::fail(check, "after the restart the delivery was not answered 2xx", seen)
    } else if after.says_duplicate() {
        Outcome::pass(check, "confirmed: still a duplicate after the restart", seen)
    } else if before.says_duplicate() || after.says_received() {
        let summary = "after the restart the same delivery was answered as new: the seen ids did not survive";
        Outcome::fail(check, summary, seen)
    } else {
        let note = "name duplicates in the reply (200 {\"status\":\"duplicate-ignored\"}) so that this check can tell a \
                    remembered event from one processed again";
        Outcome::advice(
            check,
            "answered 2xx after the restart; the reply does not say whether it was a duplicate",
            note,
            seen,
        )
    }
}

/// Runs `command` with `sh -c`; its output goes to standard error (standard
/// output may be the JSON report).
async fn run_command(command: &str) -> Result<(), String> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .stderr(std::io::stderr())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run sh: {e}"))?;
    match tokio::time::timeout(COMMAND_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("it exited with {status}")),
        Ok(Err(error)) => Err(format!("waiting for it: {error}")),
        Err(_) => Err(format!(
            "it did not finish within {} s (killed)",
            COMMAND_TIMEOUT.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut times: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let latency = latency(&mut times);
        assert_eq!(
            (latency.p50, latency.p99, latency.max),
            (
                Duration::from_millis(50),
                Duration::from_millis(99),
                Duration::from_millis(100)
            )
        );
        let one = latency_of(&[7]);
        assert_eq!((one.p50, one.p99, one.max, one.samples), (ms(7), ms(7), ms(7), 1));
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn latency_of(values: &[u64]) -> Latency {
        let mut times: Vec<Duration> = values.iter().copied().map(ms).collect();
        latency(&mut times)
    }
}
