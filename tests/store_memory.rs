//! The conformance suite against [`MemoryStore`].
#![cfg(feature = "test-util")]

use klikit_webhook::{MemoryStore, testing::conformance::StoreFactory};

struct Memory;

#[async_trait::async_trait]
impl StoreFactory for Memory {
    type Store = MemoryStore;

    async fn open(&self, _namespace: &str) -> MemoryStore {
        MemoryStore::new()
    }

    fn persistent(&self) -> bool {
        false
    }
}

async fn factory() -> Option<Memory> {
    Some(Memory)
}

klikit_webhook::dedup_store_tests!(factory());

#[tokio::test]
async fn run_all_passes() {
    klikit_webhook::testing::conformance::run_all(&Memory).await;
}
