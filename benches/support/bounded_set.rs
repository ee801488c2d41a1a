//! The dedup set of the hand-written baselines (`examples/bare_twin.rs` and
//! the `by_hand` case of `benches/layer.rs`): what a receiver written without
//! the layer needs so that its memory stays bounded, like the layer's
//! default `MemoryStore`.
//!
//! At most `capacity` ids; when full, inserting a new id forgets the oldest
//! one (first in, first out). `std` `HashSet` with its default hasher, and one
//! allocation per id (the set and the queue share an `Arc<str>`); both grow
//! as ids arrive, as the `MemoryStore`'s maps do.

use std::{
    collections::{HashSet, VecDeque},
    sync::Arc,
};

/// A set of the last `capacity` ids inserted.
#[derive(Debug)]
pub(crate) struct BoundedSet {
    seen: HashSet<Arc<str>>,
    order: VecDeque<Arc<str>>,
    capacity: usize,
}

impl BoundedSet {
    /// An empty set that holds at most `capacity` ids (at least one).
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            seen: HashSet::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// Inserts `id`; `true` if it was not in the set. Forgets the oldest id
    /// when the set is full.
    pub(crate) fn insert(&mut self, id: &str) -> bool {
        if self.seen.contains(id) {
            return false;
        }
        if self.order.len() >= self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        let id: Arc<str> = Arc::from(id);
        self.seen.insert(id.clone());
        self.order.push_back(id);
        true
    }
}
