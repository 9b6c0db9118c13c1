//! loupe control plane: configuration schema and validation (the control socket and
//! protocol come with the control-plane issue).

pub mod config;
