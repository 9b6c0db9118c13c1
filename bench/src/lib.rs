//! loupe-bench: traffic tools, the lab harness and reports.

pub mod lab;
pub mod lossy;
pub mod size;
pub mod traffic;
