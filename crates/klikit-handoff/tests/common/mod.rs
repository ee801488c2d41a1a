//! Helpers shared by the hand-off tests that need Postgres (the same
//! reachability rules as the library's `tests/common/mod.rs`).

#![allow(dead_code, unreachable_pub)]

use std::{fmt::Display, io::Write, time::Duration};

/// How long a reachability probe waits.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The Postgres the tests use: `DATABASE_URL`, or the local test server.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A backend is unreachable: fail under CI (`CI` is set), otherwise say so
/// loudly and skip.
pub fn unreachable<T>(backend: &str, url: &str, error: impl Display) -> Option<T> {
    if std::env::var_os("CI").is_some() {
        panic!("{backend} at {url} is unreachable and CI is set: {error}");
    }
    // Straight to the stderr handle: the test harness captures `eprintln!`
    // of passing tests, and a skip must not go unnoticed.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {backend} at {url} is unreachable ({error}); set CI=1 to make this a failure"
    );
    None
}

/// One connection attempt to Postgres with a deadline (a pool would retry
/// until its wait timeout); `None` (after [`unreachable`]) if it fails.
pub async fn probe_postgres(url: &str) -> Option<()> {
    match tokio::time::timeout(PROBE_TIMEOUT, tokio_postgres::connect(url, tokio_postgres::NoTls)).await {
        // Dropping the client closes the connection; its task then ends.
        Ok(Ok((client, connection))) => {
            drop(client);
            let _ = connection.await;
            Some(())
        }
        Ok(Err(error)) => unreachable("Postgres", url, describe(&error)),
        Err(_) => unreachable("Postgres", url, "no answer within the probe timeout"),
    }
}

/// A deadpool-postgres pool of at most `max` connections to `url`, with wait
/// and create timeouts so that a test never waits forever. Lazy: nothing
/// connects until the first `get`.
pub fn pool(url: &str, max: usize) -> deadpool_postgres::Pool {
    let config: tokio_postgres::Config = url.parse().expect("a valid Postgres URL");
    let manager = deadpool_postgres::Manager::new(config, tokio_postgres::NoTls);
    deadpool_postgres::Pool::builder(manager)
        .max_size(max)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(20)))
        .create_timeout(Some(PROBE_TIMEOUT))
        .build()
        .expect("pool")
}

/// `error` and its sources (`tokio_postgres::Error` says only "db error";
/// what Postgres said is its source).
pub fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
