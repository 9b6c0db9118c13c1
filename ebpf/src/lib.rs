//! Library target kept empty on purpose: the programs are the `bin` targets
//! (`loupe-wire`, `loupe-lossy`), built for bpfel-unknown-none by aya-build.
//! The host only compiles this file, because `loupe-dataplane` lists the crate
//! as a build-dependency so that `cargo build -p loupe-ebpf` can find it.
#![no_std]
