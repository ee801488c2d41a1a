//! Placeholder; the runnable custom store example lives on `main`.

fn main() {}
