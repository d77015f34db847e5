//! Placeholder: replaced by the concurrency benchmark.
fn main() {}
