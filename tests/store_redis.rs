//! The conformance suite against [`RedisStore`] on `REDIS_URL`.
#![cfg(all(feature = "redis", feature = "test-util"))]

mod common;

use std::time::Duration;

use klikit_webhook::{
    EventId, RedisStore,
    store::{BodyDigest, Claim, DedupStore, Lease},
    testing::conformance::{StoreFactory, namespace},
};

struct Redis {
    url: String,
}

impl Redis {
    async fn connection(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url.as_str()).expect("redis url");
        client
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection")
    }
}

#[async_trait::async_trait]
impl StoreFactory for Redis {
    type Store = RedisStore;

    async fn open(&self, namespace: &str) -> RedisStore {
        let store = RedisStore::connect(&self.url).await.expect("connect to Redis");
        store.with_prefix(format!("{namespace}:"))
    }

    async fn cleanup(&self, namespace: &str) {
        common::redis_delete_prefix(&self.url, &format!("{namespace}:")).await;
    }
}

async fn factory() -> Option<Redis> {
    let url = common::redis_url();
    common::probe_redis(&url).await?;
    Some(Redis { url })
}

klikit_webhook::dedup_store_tests!(factory());

fn id(s: &str) -> EventId {
    EventId::new(s).unwrap()
}

#[tokio::test]
async fn keys_and_values_have_the_documented_format() {
    let Some(factory) = factory().await else { return };
    let ns = namespace();
    let store = factory.open(&ns).await;
    assert_eq!(store.prefix(), format!("{ns}:"));
    assert_eq!(store.key(&id("a*b")), format!("{ns}:a*b"));
    assert_eq!(
        RedisStore::connect(&factory.url).await.unwrap().prefix(),
        RedisStore::DEFAULT_PREFIX
    );

    let mut connection = factory.connection().await;
    let lease = Lease::generate(id("evt"));
    let Claim::New = store.claim(&lease, Duration::from_secs(60)).await.unwrap() else {
        panic!("expected New")
    };
    let value: String = redis::cmd("GET")
        .arg(format!("{ns}:evt"))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(value, format!("i:{}", lease.token()));
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("{ns}:evt"))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!((59_000..=60_000).contains(&pttl), "lease PTTL {pttl}");

    let digest = BodyDigest::of(b"{}");
    assert!(store.complete(&lease, digest, Duration::from_secs(3600)).await.unwrap());
    let value: String = redis::cmd("GET")
        .arg(format!("{ns}:evt"))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(value, format!("d:{}:{digest}", lease.token()));
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("{ns}:evt"))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!((3_599_000..=3_600_000).contains(&pttl), "retention PTTL {pttl}");
    factory.cleanup(&ns).await;
}

#[tokio::test]
async fn prefixes_isolate_stores_and_scripts_survive_a_flush() {
    let Some(factory) = factory().await else { return };
    let (ns_a, ns_b) = (namespace(), namespace());
    let a = factory.open(&ns_a).await;
    let b = factory.open(&ns_b).await;
    let event = id("shared-id");
    assert!(matches!(
        a.claim(&Lease::generate(event.clone()), Duration::from_secs(60))
            .await
            .unwrap(),
        Claim::New
    ));
    assert!(matches!(
        b.claim(&Lease::generate(event.clone()), Duration::from_secs(60))
            .await
            .unwrap(),
        Claim::New
    ));

    // After SCRIPT FLUSH (or a Redis restart) EVALSHA fails with NOSCRIPT and
    // the script is loaded again transparently.
    let mut connection = factory.connection().await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(matches!(
        a.claim(&Lease::generate(event.clone()), Duration::from_secs(60))
            .await
            .unwrap(),
        Claim::InFlight { retry_after: Some(_) }
    ));
    factory.cleanup(&ns_a).await;
    factory.cleanup(&ns_b).await;
}

#[tokio::test]
async fn unreachable_redis_is_a_store_error() {
    // Port 1 on localhost: nothing listens there.
    let client = redis::Client::open("redis://127.0.0.1:1").unwrap();
    let config = redis::aio::ConnectionManagerConfig::new().set_number_of_retries(0);
    let manager = redis::aio::ConnectionManager::new_lazy_with_config(client, config).unwrap();
    let error = RedisStore::new(manager)
        .claim(&Lease::generate(id("evt")), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(error, klikit_webhook::StoreError::Backend(_)), "{error:?}");
    assert!(
        std::error::Error::source(&error).is_some(),
        "the source is kept: {error:?}"
    );
}
