//! Stops the build with a clear message when Firecracker's OpenAPI spec is
//! not beside the repository (`../shared/firecracker/`).

use std::path::Path;

fn main() {
    let spec = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/firecracker/firecracker-v1.15.1.yaml");
    println!("cargo:rerun-if-changed={}", spec.display());
    if !spec.is_file() {
        panic!(
            "fake-firecracker needs Firecracker's OpenAPI spec at {}: \
             clone the repository with ../shared beside it",
            spec.display()
        );
    }
}
