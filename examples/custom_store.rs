//! Placeholder: the custom store example is not written yet on this branch.

fn main() {}
