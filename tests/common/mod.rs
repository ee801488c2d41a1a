//! Helpers shared by the store tests.

#![allow(dead_code, unreachable_pub)]

use std::{fmt::Display, io::Write, time::Duration};

/// How long a reachability probe waits.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

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
    // Straight to the stderr handle: the test harness captures `eprintln!`
    // of passing tests, and a skip must not go unnoticed.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {backend} at {url} is unreachable ({error}); set CI=1 to make this a failure"
    );
    None
}

/// One connection attempt to Redis with a deadline; `None` (after
/// [`unreachable`]) if it fails.
#[cfg(feature = "redis")]
pub async fn probe_redis(url: &str) -> Option<()> {
    let probe = async {
        let client = redis::Client::open(url)?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut connection).await
    };
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(Ok(_)) => Some(()),
        Ok(Err(error)) => unreachable("Redis", url, error),
        Err(_) => unreachable("Redis", url, "no answer within the probe timeout"),
    }
}

/// One connection attempt to Postgres with a deadline (a pool would retry
/// until its acquire timeout); `None` (after [`unreachable`]) if it fails.
#[cfg(feature = "postgres")]
pub async fn probe_postgres(url: &str) -> Option<()> {
    use klikit_webhook::store::tokio_postgres::{self, NoTls};
    let probe = async {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
        let connection = tokio::spawn(connection);
        client.simple_query("SELECT 1").await?;
        drop(client);
        let _ = connection.await;
        Ok::<_, tokio_postgres::Error>(())
    };
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(Ok(())) => Some(()),
        Ok(Err(error)) => unreachable("Postgres", url, error),
        Err(_) => unreachable("Postgres", url, "no answer within the probe timeout"),
    }
}

/// A pool of at most `max_size` connections to the Postgres at `url`
/// (without TLS), waiting at most 5 s for a connection.
#[cfg(feature = "postgres")]
pub fn postgres_pool(url: &str, max_size: usize) -> klikit_webhook::store::deadpool_postgres::Pool {
    use klikit_webhook::store::{
        deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime},
        tokio_postgres::NoTls,
    };
    let config = url.parse().expect("a valid Postgres URL");
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .build()
        .expect("a Postgres pool")
}

/// Runs `sql` (no parameters, no result) on a connection of `pool`.
#[cfg(feature = "postgres")]
pub async fn postgres_execute(pool: &klikit_webhook::store::deadpool_postgres::Pool, sql: &str) {
    let client = pool.get().await.expect("a Postgres connection");
    client.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The `bigint` that `sql` (one row, one column) selects, on a connection of `pool`.
#[cfg(feature = "postgres")]
pub async fn postgres_i64(pool: &klikit_webhook::store::deadpool_postgres::Pool, sql: &str) -> i64 {
    let client = pool.get().await.expect("a Postgres connection");
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// Deletes every key under `prefix` in the Redis at `url`: `SCAN` with
/// `MATCH prefix*` and `COUNT 1000`, then `UNLINK` of what it found.
///
/// Never `KEYS prefix*`: that one command walks the whole keyspace and blocks
/// the server for every other client meanwhile (it timed out against a Redis
/// holding 2.8 million unrelated keys). Each `SCAN` step does a bounded amount
/// of work, so the server keeps answering others in between; the walk as a
/// whole still visits every key, which is why the test keys also carry TTLs
/// (a lease or a retention) and a cleanup that does not run leaves nothing
/// for good. `tests/shared_servers.rs` checks that no test sends `KEYS`.
#[cfg(feature = "redis")]
pub async fn redis_delete_prefix(url: &str, prefix: &str) {
    let client = redis::Client::open(url).expect("redis url");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    // The prefix literally: escape the glob characters MATCH knows.
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('*');
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut connection)
            .await
            .expect("SCAN");
        if !keys.is_empty() {
            let _: i64 = redis::cmd("UNLINK")
                .arg(keys)
                .query_async(&mut connection)
                .await
                .expect("UNLINK");
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}
