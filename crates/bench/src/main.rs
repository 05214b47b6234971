//! `pigeonhole-bench`: load generator and measurements against a real relay.

fn main() {}
