//! TLS wire formats the appliance reads before it decides anything: the ClientHello,
//! and the names of TLS code points for logs and diagnoses.

pub mod client_hello;
pub mod names;
