//! loupe control plane: configuration schema and validation, the control protocol and
//! its Unix-socket server, and the loupectl CLI.

pub mod client;
pub mod config;
pub mod docs;
pub mod log_tail;
pub mod overrides;
pub mod protocol;
pub mod server;
