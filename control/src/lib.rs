//! loupe control plane: configuration schema and validation, the control protocol and
//! its Unix-socket server, and the loupectl CLI.

pub mod config;
pub mod overrides;
pub mod protocol;
