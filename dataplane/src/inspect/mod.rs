//! Inspection of the decrypted streams, sans-IO: bytes in, transactions and decisions
//! out. Nothing here touches a socket, a clock or BoringSSL; the split-TLS session feeds
//! it and the worker stamps times and writes logs.
//!
//! - [`transaction`]: one HTTP request/response exchange, whatever the version.
//! - [`http1`]: HTTP/1.1 message framing (RFC 9112) over one connection's two directions.
//! - [`hpack`]: HTTP/2 header compression (RFC 7541): the decoder, and the encoder loupe
//!   uses toward a server once it blocked a stream.
//! - [`http2`]: HTTP/2 framing (RFC 9113) relayed between the two peers, with blocking.
//! - [`content_coding`]: `Content-Encoding` gzip, deflate and br bodies decoded as they
//!   stream, bounded.
//! - [`signatures`]: Suricata rules (a documented subset): parsing, loading, matching.
//! - [`url_rules`]: `[[url_rule]]` matching on a request's host, path and method.
//! - [`engine`]: one decrypted session's inspection: picks the protocol, holds request
//!   heads until judged, answers blocked requests, collects finished transactions.

pub mod content_coding;
pub mod engine;
pub mod export;
pub mod hpack;
pub mod http1;
pub mod http2;
pub mod signatures;
pub mod transaction;
pub mod url_rules;

/// Sees every plaintext byte of a decrypted session, in order, once, and decides where it
/// goes. The split-TLS session calls it; implementations never block and never do I/O.
pub trait Inspector {
    /// Both handshakes are done; `client_alpn` is the protocol the client leg agreed
    /// (`h2`, `http/1.1`), if any. Called once, before any plaintext.
    fn established(&mut self, _client_alpn: Option<&str>) {}
    /// Plaintext the client sent.
    fn client_to_server(&mut self, plaintext: &[u8], relay: &mut Relay<'_>) -> Pass;
    /// Plaintext the server sent.
    fn server_to_client(&mut self, plaintext: &[u8], relay: &mut Relay<'_>) -> Pass;
    /// The client will send nothing more (close_notify or FIN).
    fn client_ended(&mut self, _relay: &mut Relay<'_>) {}
    /// The server will send nothing more.
    fn server_ended(&mut self, _relay: &mut Relay<'_>) {}
}

/// What becomes of the bytes an [`Inspector`] was just shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Relay them unchanged to the other peer (the common case: no copy).
    Forward,
    /// The inspector took them: what it lets through (now or later) it puts in the
    /// [`Relay`] queues itself.
    Taken,
}

/// The session's outgoing plaintext queues, for an [`Inspector`] to add to. Bytes appended
/// go out after everything queued before them.
pub struct Relay<'a> {
    pub to_server: &'a mut Vec<u8>,
    pub to_client: &'a mut Vec<u8>,
    /// Set to end the session: see [`SessionEnd`].
    pub end_session: &'a mut SessionEnd,
}

/// Whether and how an [`Inspector`] ends its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionEnd {
    /// The session goes on.
    #[default]
    Open,
    /// Once the queues are flushed: close_notify to both peers, nothing more read from
    /// either (an answered or refused request).
    CloseNotify,
    /// Now: a TCP reset to both peers, what is queued is discarded (a `drop` signature).
    Reset,
}
