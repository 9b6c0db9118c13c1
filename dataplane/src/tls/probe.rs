//! The probe loupe makes after a server refused its handshake: one connection with a
//! ClientHello of everything BoringSSL can speak (TLS 1.0–1.3, SHA-1 and CBC suites,
//! 3DES, every group), to learn the version and suite the server picks, so the log can
//! say what the server would have accepted without a packet capture. Sans-IO, over the
//! same in-memory transport as the split-TLS session.

use std::net::IpAddr;

use boring::ssl::{Ssl, SslContext, SslMethod, SslMode, SslStream, SslVerifyMode, SslVersion};

use super::diagnosis::ProbeResult;
use super::session::Wire;

/// Every suite BoringSSL has, 3DES included (it is in no alias but its own).
const WIDE_CIPHERS: &str = "ALL:3DES";
const WIDE_GROUPS: &str = "X25519:P-256:P-384:P-521";

pub struct ProbeContext {
    context: SslContext,
}

impl ProbeContext {
    pub fn new() -> Result<ProbeContext, String> {
        let mut builder = SslContext::builder(SslMethod::tls()).map_err(|e| format!("probe context: {e}"))?;
        builder
            .set_min_proto_version(Some(SslVersion::TLS1))
            .and_then(|_| builder.set_max_proto_version(Some(SslVersion::TLS1_3)))
            .and_then(|_| builder.set_cipher_list(WIDE_CIPHERS))
            .and_then(|_| builder.set_curves_list(WIDE_GROUPS))
            .map_err(|e| format!("probe context: {e}"))?;
        // The probe only asks; it never trusts or sends anything that matters.
        builder.set_verify(SslVerifyMode::NONE);
        Ok(ProbeContext {
            context: builder.build(),
        })
    }
}

/// What the probe learnt, or why it learnt nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    Picked(ProbeResult),
    /// The server refused even the wide offer (its alert, or a closed connection).
    Refused(String),
}

pub struct ProbeTls {
    stream: SslStream<Wire>,
    outcome: Option<ProbeOutcome>,
}

impl ProbeTls {
    pub fn start(context: &ProbeContext, sni: Option<&str>) -> Result<ProbeTls, String> {
        let mut ssl = Ssl::new(&context.context).map_err(|e| format!("probe: {e}"))?;
        ssl.set_mode(SslMode::ENABLE_PARTIAL_WRITE | SslMode::ACCEPT_MOVING_WRITE_BUFFER);
        if let Some(name) = sni.filter(|name| name.parse::<IpAddr>().is_err()) {
            ssl.set_hostname(name)
                .map_err(|e| format!("probe server name {name:?}: {e}"))?;
        }
        let stream = SslStream::new(ssl, Wire::default()).map_err(|e| format!("probe: {e}"))?;
        Ok(ProbeTls { stream, outcome: None })
    }

    pub fn push_from_server(&mut self, bytes: &[u8]) -> usize {
        self.stream.get_mut().accept_incoming(bytes)
    }

    pub fn server_closed(&mut self) {
        self.stream.get_mut().peer_closed();
    }

    pub fn pending_to_server(&self) -> &[u8] {
        self.stream.get_ref().outgoing_bytes()
    }

    pub fn consume_to_server(&mut self, n: usize) {
        self.stream.get_mut().consume_outgoing(n);
    }

    /// Runs the handshake as far as the bytes allow; the outcome is known once the
    /// server's hello has been read (or the server refused).
    pub fn advance(&mut self) -> Option<&ProbeOutcome> {
        if self.outcome.is_none() {
            match self.stream.connect() {
                Ok(()) => self.outcome = self.picked(),
                Err(e)
                    if matches!(
                        e.code(),
                        boring::ssl::ErrorCode::WANT_READ | boring::ssl::ErrorCode::WANT_WRITE
                    ) => {}
                // A failure after the ServerHello (e.g. a signature algorithm) still tells
                // what the server picked.
                Err(e) => self.outcome = self.picked().or(Some(ProbeOutcome::Refused(e.to_string()))),
            }
        }
        self.outcome.as_ref()
    }

    /// The certificates the server presented, DER, leaf first (empty before its
    /// Certificate message was read).
    pub fn server_chain_der(&self) -> Vec<Vec<u8>> {
        let ssl = self.stream.ssl();
        let mut chain: Vec<Vec<u8>> = ssl
            .peer_cert_chain()
            .map(|certs| certs.iter().filter_map(|c| c.to_der().ok()).collect())
            .unwrap_or_default();
        if let Some(leaf) = ssl.peer_certificate().and_then(|c| c.to_der().ok()) {
            if chain.first() != Some(&leaf) {
                chain.insert(0, leaf);
            }
        }
        chain
    }

    /// Whether the handshake is complete (the whole chain has been read).
    pub fn established(&self) -> bool {
        self.stream.ssl().is_init_finished()
    }

    fn picked(&self) -> Option<ProbeOutcome> {
        let ssl = self.stream.ssl();
        let cipher = ssl.current_cipher()?;
        let version = match ssl.version2()? {
            SslVersion::TLS1 => 0x0301,
            SslVersion::TLS1_1 => 0x0302,
            SslVersion::TLS1_2 => 0x0303,
            SslVersion::TLS1_3 => 0x0304,
            _ => return None,
        };
        Some(ProbeOutcome::Picked(ProbeResult {
            version,
            cipher: cipher.protocol_id(),
        }))
    }
}
