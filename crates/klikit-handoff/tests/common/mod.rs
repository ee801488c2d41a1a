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
/// until its acquire timeout); `None` (after [`unreachable`]) if it fails.
pub async fn probe_postgres(url: &str) -> Option<()> {
    use sqlx::Connection;
    match tokio::time::timeout(PROBE_TIMEOUT, sqlx::PgConnection::connect(url)).await {
        Ok(Ok(connection)) => {
            let _ = connection.close().await;
            Some(())
        }
        Ok(Err(error)) => unreachable("Postgres", url, error),
        Err(_) => unreachable("Postgres", url, "no answer within the probe timeout"),
    }
}
