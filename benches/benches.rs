//! Criterion benches of the root crate.
fn main() {}
