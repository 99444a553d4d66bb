//! Passes our linker script to the final link of the image (its path must be absolute, which
//! a cargo `--config` file cannot express), and relinks when it changes. Everything else about
//! the build is in `targets/vmm-guest.toml`.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let script = manifest.join("../../linker/vmm-guest.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rustc-link-arg-bins=-T{}", script.display());
}
