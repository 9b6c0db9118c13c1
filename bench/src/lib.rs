//! loupe-bench: traffic tools, the lab harness, the load generator, the bench runner and
//! its reports.

pub mod costs;
pub mod handshakes;
pub mod inspect_bench;
pub mod lab;
pub mod load;
pub mod lossy;
pub mod peers;
pub mod pki;
pub mod report;
pub mod runner;
pub mod signature_bench;
pub mod size;
pub mod soak;
pub mod steer;
pub mod syn_flood;
pub mod traffic;
