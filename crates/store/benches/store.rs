//! Benchmarks of the embedded store (written below).

fn main() {}
