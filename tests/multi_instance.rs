//! Several receiver instances sharing one persistent store, and restarts.
//!
//! Each test runs real servers (`axum::serve` on 127.0.0.1 ephemeral ports),
//! each with its own store object and connection, in front of one shared
//! backend, and talks to them over TCP with a hyper client.
#![cfg(all(feature = "axum", any(feature = "redis", feature = "postgres", feature = "sqlite")))]

mod common;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Json, Router, extract::State, routing::post};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use klikit_webhook::{
    DedupStore, KlikitEvent, KlikitWebhookLayer, WebhookSecret,
    store::LeaseToken,
    testing::{WEBHOOK_PATH, signed_request},
};
use serde_json::{Value, json};
use tokio::{
    net::TcpListener,
    sync::{Semaphore, oneshot},
    task::{JoinHandle, JoinSet},
};

const SECRET: &str = "a-long-random-webhook-secret-for-tests";
const EVENTS: usize = 1_000;
const COPIES: usize = 3;
const IN_FLIGHT: usize = 64;

/// How many times the handler ran for each event id, across all instances.
type Handled = Arc<Mutex<HashMap<String, u32>>>;

struct Server {
    addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Server {
    /// Serves the webhook behind a layer over `store` on an ephemeral port.
    async fn start(store: impl DedupStore, handled: Handled) -> Self {
        // A generous store timeout: on a loaded CI machine a claim queued
        // behind 64 concurrent deliveries can take longer than the default
        // 2 s, and the 503 it would get is not what these tests look at.
        let layer = KlikitWebhookLayer::new(WebhookSecret::new(SECRET).unwrap())
            .with_store(store)
            .with_store_timeout(Duration::from_secs(20));
        let app = Router::new()
            .route(WEBHOOK_PATH, post(handle))
            .layer(layer)
            .with_state(handled);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self { addr, shutdown, task }
    }

    /// Stops accepting, finishes open connections, and drops the router
    /// (and with it the layer and its store).
    async fn stop(self) {
        let _ = self.shutdown.send(());
        self.task.await.unwrap();
    }
}

async fn handle(State(handled): State<Handled>, event: KlikitEvent) -> Json<Value> {
    *handled.lock().unwrap().entry(event.id().to_string()).or_default() += 1;
    // Long enough for concurrent copies of the event to find it in flight.
    tokio::time::sleep(Duration::from_millis(2)).await;
    Json(json!({ "status": "received" }))
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn deliver(client: &Client<HttpConnector, Full<Bytes>>, addr: SocketAddr, event_id: &str) -> (StatusCode, Value) {
    let body = format!(r#"{{"brand_id":663,"branch_id":1062,"orders":[{{"id":1,"status":5,"note":"{event_id}"}}]}}"#);
    let mut request = signed_request::<Full<Bytes>>(SECRET, event_id, "klikit.order.status.updated", body);
    *request.uri_mut() = format!("http://{addr}{WEBHOOK_PATH}").parse().unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value)
}

fn unique(label: &str) -> String {
    format!("klikit_mi_{label}_{}", LeaseToken::generate())
}

/// Two instances, each with its own store object on one shared backend:
/// 1,000 events delivered three times each, concurrently, spread over both.
/// Every event must be handled exactly once, and every delivery answered
/// 200 (processed or duplicate) or 409 (in flight elsewhere).
async fn two_instances_process_each_event_once(backend: &str, a: impl DedupStore, b: impl DedupStore) {
    let handled = Handled::default();
    let servers = [
        Server::start(a, Arc::clone(&handled)).await,
        Server::start(b, Arc::clone(&handled)).await,
    ];
    let addrs = [servers[0].addr, servers[1].addr];
    let run = LeaseToken::generate();
    let client = client();
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let started = Instant::now();
    let mut deliveries = JoinSet::new();
    for event in 0..EVENTS {
        for copy in 0..COPIES {
            let permit = Arc::clone(&permits).acquire_owned().await.unwrap();
            let (client, addr) = (client.clone(), addrs[(event + copy) % 2]);
            let event_id = format!("evt-{run}-{event}");
            deliveries.spawn(async move {
                let answer = deliver(&client, addr, &event_id).await;
                drop(permit);
                answer
            });
        }
    }
    let (mut received, mut duplicates, mut in_flight) = (0, 0, 0);
    while let Some(answer) = deliveries.join_next().await {
        match answer.unwrap() {
            (StatusCode::OK, body) if body == json!({"status": "received"}) => received += 1,
            (StatusCode::OK, body) if body == json!({"status": "duplicate-ignored"}) => duplicates += 1,
            (StatusCode::CONFLICT, _) => in_flight += 1,
            (status, body) => panic!("{backend}: unexpected answer {status} {body}"),
        }
    }
    let elapsed = started.elapsed();
    for server in servers {
        server.stop().await;
    }

    let handled = handled.lock().unwrap();
    assert_eq!(handled.len(), EVENTS, "{backend}: events handled at least once");
    let twice: Vec<_> = handled.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "{backend}: events handled more than once: {twice:?}");
    assert_eq!(received, EVENTS, "{backend}: deliveries answered received");
    assert_eq!(received + duplicates + in_flight, EVENTS * COPIES);
    eprintln!(
        "{backend}: {} deliveries over 2 instances, {IN_FLIGHT} in flight, in {elapsed:.2?}: \
         {received} received, {duplicates} duplicate-ignored, {in_flight} in flight (409)",
        EVENTS * COPIES
    );
}

/// Process an event, stop the server and drop its store, start a new one on
/// the same backend: the redelivery is a duplicate.
async fn restart_remembers<S, F>(backend: &str, open: impl Fn() -> F)
where
    S: DedupStore,
    F: std::future::Future<Output = S>,
{
    let handled = Handled::default();
    let event_id = format!("evt-restart-{}", LeaseToken::generate());
    let server = Server::start(open().await, Arc::clone(&handled)).await;
    let answer = deliver(&client(), server.addr, &event_id).await;
    assert_eq!(
        answer,
        (StatusCode::OK, json!({"status": "received"})),
        "{backend}: first delivery"
    );
    server.stop().await;

    let server = Server::start(open().await, Arc::clone(&handled)).await;
    let answer = deliver(&client(), server.addr, &event_id).await;
    assert_eq!(
        answer,
        (StatusCode::OK, json!({"status": "duplicate-ignored"})),
        "{backend}: redelivery after the restart"
    );
    server.stop().await;
    assert_eq!(handled.lock().unwrap()[&event_id], 1, "{backend}: handled once");
}

#[cfg(feature = "redis")]
mod redis_backend {
    use klikit_webhook::RedisStore;

    use super::*;

    async fn open(url: &str, prefix: &str) -> RedisStore {
        RedisStore::connect(url).await.unwrap().with_prefix(prefix)
    }

    async fn cleanup(url: &str, prefix: &str) {
        common::redis_delete_prefix(url, prefix).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_two_instances_process_each_event_once() {
        let url = common::redis_url();
        let prefix = format!("{}:", unique("redis"));
        if common::probe_redis(&url).await.is_none() {
            return;
        }
        let (a, b) = (open(&url, &prefix).await, open(&url, &prefix).await);
        two_instances_process_each_event_once("redis", a, b).await;
        cleanup(&url, &prefix).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_restart_remembers() {
        let url = common::redis_url();
        let prefix = format!("{}:", unique("redis"));
        if common::probe_redis(&url).await.is_none() {
            return;
        }
        restart_remembers("redis", || open(&url, &prefix)).await;
        cleanup(&url, &prefix).await;
    }
}

#[cfg(feature = "postgres")]
mod postgres_backend {
    use klikit_webhook::PostgresStore;

    use super::*;

    /// A store on a pool of its own, as a separate instance would have.
    async fn open(url: &str, table: &str) -> PostgresStore {
        PostgresStore::new(common::postgres_pool(url, 8))
            .with_table(table)
            .unwrap()
    }

    async fn drop_table(store: &PostgresStore) {
        common::postgres_execute(store.pool(), &format!(r#"DROP TABLE IF EXISTS "{}""#, store.table())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_two_instances_process_each_event_once() {
        let url = common::database_url();
        let table = unique("pg");
        if common::probe_postgres(&url).await.is_none() {
            return;
        }
        let a = open(&url, &table).await;
        a.migrate().await.unwrap();
        let (b, admin) = (open(&url, &table).await, open(&url, &table).await);
        two_instances_process_each_event_once("postgres", a, b).await;
        drop_table(&admin).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_restart_remembers() {
        let url = common::database_url();
        let table = unique("pg");
        if common::probe_postgres(&url).await.is_none() {
            return;
        }
        let admin = open(&url, &table).await;
        admin.migrate().await.unwrap();
        restart_remembers("postgres", || open(&url, &table)).await;
        drop_table(&admin).await;
    }
}

#[cfg(feature = "sqlite")]
mod sqlite_backend {
    use std::path::{Path, PathBuf};

    use klikit_webhook::SqliteStore;

    use super::*;

    fn remove(file: &Path) {
        for suffix in ["", "-wal", "-shm"] {
            let mut name = file.as_os_str().to_owned();
            name.push(suffix);
            let _ = std::fs::remove_file(name);
        }
    }

    fn file() -> PathBuf {
        std::env::temp_dir().join(format!("{}.sqlite3", unique("sqlite")))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_two_instances_process_each_event_once() {
        let file = file();
        let a = SqliteStore::open(&file).await.unwrap();
        let b = SqliteStore::open(&file).await.unwrap();
        two_instances_process_each_event_once("sqlite", a, b).await;
        remove(&file);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_restart_remembers() {
        let file = file();
        restart_remembers("sqlite", || async { SqliteStore::open(&file).await.unwrap() }).await;
        remove(&file);
    }
}
