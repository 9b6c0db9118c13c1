//! The rule-text side of `dataplane/src/inspect/signatures` (header sets, rules, the rule
//! parser and the file loader), included by path as a module tree of its own: they reach
//! each other through `super::`. The matching side (buffers, prefilter, matcher) is left
//! out: it needs the HTTP transaction types and Hyperscan.
//!
//! Paths are relative to this file's directory, `fuzz/fuzz_targets/signatures/`.
#![allow(dead_code)]

#[path = "../../../src/inspect/signatures/load.rs"]
pub mod load;
#[path = "../../../src/inspect/signatures/network.rs"]
pub mod network;
#[path = "../../../src/inspect/signatures/parse.rs"]
pub mod parse;
#[path = "../../../src/inspect/signatures/rule.rs"]
pub mod rule;
