//! TLS: the ClientHello parser, names of protocol values, the decryption CA and forged
//! certificates, the trust store, the split-TLS session and the decryption log.

pub mod ca;
pub mod client_hello;
pub mod diagnosis;
pub mod forge;
pub mod keylog;
pub mod names;
pub mod ocsp;
pub mod offer;
pub mod probe;
pub mod record;
pub mod session;
pub mod trust;
