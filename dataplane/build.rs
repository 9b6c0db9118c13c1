//! Builds the eBPF objects (`ebpf/`, crate `loupe-ebpf`) with aya-build: nightly
//! `cargo build -p loupe-ebpf --target bpfel-unknown-none -Z build-std=core`,
//! linked by bpf-linker. The objects land in OUT_DIR as `loupe-wire`,
//! `loupe-lossy` and `loupe-lab-steer`, included by `src/wire.rs`.
//!
//! Needs: the nightly toolchain with rust-src, and bpf-linker on PATH.
//! `AYA_BUILD_SKIP=1` skips the build (the include then fails: only for tooling
//! that never compiles this crate's code, e.g. some IDE setups).

use std::path::PathBuf;

use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../ebpf");
    let ebpf_dir = ebpf_dir
        .canonicalize()
        .with_context(|| format!("eBPF crate not found at {}", ebpf_dir.display()))?;
    // Only the sources matter; watching ebpf/ wholesale would include a
    // hand-build's target/ directory and rebuild for nothing.
    for sub in ["Cargo.toml", "src", "common/Cargo.toml", "common/src"] {
        println!("cargo:rerun-if-changed={}", ebpf_dir.join(sub).display());
    }
    // aya-build runs `cargo build -p loupe-ebpf` in the current directory. The
    // crate is excluded from the workspace (it targets bpfel), and cargo cannot
    // build an excluded path dependency as a `-p` target from here, so run it
    // from ebpf/, where it is its own root (with its own Cargo.lock and profile).
    std::env::set_current_dir(&ebpf_dir).with_context(|| format!("cd {}", ebpf_dir.display()))?;
    // aya-build relays the nested cargo's stderr as warnings; keep only real messages.
    std::env::set_var("CARGO_TERM_QUIET", "true");
    let root_dir = ebpf_dir.join("src");
    let root_dir = root_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root_dir.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "loupe-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF programs (needs nightly with rust-src and bpf-linker on PATH)")
}
