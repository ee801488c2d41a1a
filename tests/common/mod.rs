//! Helpers shared by the store tests.

#![allow(dead_code, unreachable_pub)]

use std::fmt::Display;

/// The Postgres the tests use: `DATABASE_URL`, or the local test server.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// The Redis the tests use: `REDIS_URL`, or the local server.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A backend is unreachable: fail under CI (`CI` is set), otherwise say so
/// loudly and skip.
pub fn unreachable<T>(backend: &str, url: &str, error: impl Display) -> Option<T> {
    if std::env::var_os("CI").is_some() {
        panic!("{backend} at {url} is unreachable and CI is set: {error}");
    }
    eprintln!("SKIPPED: {backend} at {url} is unreachable ({error}); set CI=1 to make this a failure");
    None
}
