//! loupe-bench: traffic tools, the lab harness and reports.

pub mod costs;
pub mod handshakes;
pub mod lab;
pub mod load;
pub mod lossy;
pub mod pki;
pub mod report;
pub mod size;
pub mod traffic;
