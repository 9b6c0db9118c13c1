//! The sans-IO HTTP modules of `dataplane/src/inspect`, included by path as a module tree
//! of their own: they reach each other through `super::`, so they must sit side by side
//! under one parent, as in the dataplane. `engine` and `url_rules` are left out (they
//! need `loupe_control`), and so is the parent `mod.rs` (which declares them).
//!
//! Paths are relative to this file's directory, `fuzz/fuzz_targets/inspect/`.
#![allow(dead_code)]

#[path = "../../../src/inspect/hpack.rs"]
pub mod hpack;
#[path = "../../../src/inspect/http1.rs"]
pub mod http1;
#[path = "../../../src/inspect/http2.rs"]
pub mod http2;
#[path = "../../../src/inspect/transaction.rs"]
pub mod transaction;
