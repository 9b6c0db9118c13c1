//! loupe-bench: traffic tools, the lab harness and reports.

pub mod handshakes;
pub mod lab;
pub mod load;
pub mod lossy;
pub mod peers;
pub mod pki;
pub mod size;
pub mod traffic;
