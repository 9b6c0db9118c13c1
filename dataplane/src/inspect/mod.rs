//! Inspection of the decrypted streams, sans-IO: bytes in, transactions and decisions
//! out. Nothing here touches a socket, a clock or BoringSSL; the split-TLS session feeds
//! it and the worker stamps times and writes logs.
//!
//! - [`transaction`]: one HTTP request/response exchange, whatever the version.
//! - [`http1`]: HTTP/1.1 message framing (RFC 9112) over one connection's two directions.
//! - [`hpack`]: the HTTP/2 header compression decoder (RFC 7541).

pub mod hpack;
pub mod http1;
pub mod transaction;
