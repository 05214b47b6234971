//! What the bench's integration tests share: where the two binaries are.

use std::path::{Path, PathBuf};

/// The benchmark binary cargo built for this test.
pub(crate) fn bench() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_pigeonhole-bench"))
}

/// `pigeonhole` beside the benchmark binary (or beside this test's deps/ directory).
pub(crate) fn relay_binary() -> PathBuf {
    let name = format!("pigeonhole{}", std::env::consts::EXE_SUFFIX);
    let beside_bench = bench().parent().map(|dir| dir.join(&name));
    let beside_test = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().and_then(Path::parent).map(|dir| dir.join(&name)));
    beside_bench.into_iter().chain(beside_test).find(|p| p.exists()).unwrap_or_else(|| {
        panic!(
            "the relay binary `{name}` is not built next to {}: build the workspace first \
             (`cargo build -p pigeonhole`, or run `cargo test --workspace`, which builds every binary)",
            bench().display()
        )
    })
}
