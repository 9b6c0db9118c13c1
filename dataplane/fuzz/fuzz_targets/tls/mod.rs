//! The sans-IO modules of `dataplane/src/tls` the ClientHello reader needs, included by
//! path side by side (it reaches `names` through `super::`). The parent `mod.rs` is left
//! out: it declares the BoringSSL modules too.
//!
//! Paths are relative to this file's directory, `fuzz/fuzz_targets/tls/`.
#![allow(dead_code)]

#[path = "../../../src/tls/client_hello.rs"]
pub mod client_hello;
#[path = "../../../src/tls/names.rs"]
pub mod names;
