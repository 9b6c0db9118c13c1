//! A flow's session: what its TCP stream carries and what loupe does with it. It reads
//! the client's ClientHello, then decrypts through split TLS (or refuses what is not TLS),
//! and when the flow ends it produces the flow's one decryption-log record.

use smoltcp::socket::tcp;

use crate::flow::FlowKey;
use crate::relay::{ByteCounts, EndReason, Fins, Splice, StreamPump};
use crate::tls::client_hello::{ClientHello, ClientHelloError, ClientHelloReader};
use crate::tls::diagnosis::{ClientOffer, ConnectFailure, DiagnosisInput, ProfileFacts, UpstreamOffer};
use crate::tls::forge::CertSource;
use crate::tls::record::{Action, DecryptionRecord, Outcome, Stage};
use crate::tls::session::{PlaintextCounter, Profile, SessionFailure, SplitTls, SplitTlsContext, UntrustedAction};
use loupe_control::config::NotTls;

/// What a worker lends a session while it runs: the TLS contexts and the forger.
pub struct TlsEnv<'a> {
    pub context: &'a SplitTlsContext,
    pub certs: &'a mut dyn CertSource,
}

enum Stream {
    /// Reading the first bytes until the ClientHello is complete.
    AwaitingHello(ClientHelloReader),
    Decrypting(Box<SplitTls>),
    /// Not TLS (or a hostile hello): both connections were reset.
    Refused(ClientHelloError),
    /// Not TLS, relayed byte for byte by policy: the bytes read so far go first.
    Spliced {
        reason: ClientHelloError,
        head: Vec<u8>,
        sent: usize,
    },
    /// The client closed before its ClientHello was complete.
    ClosedBeforeHello,
}

pub struct Session {
    id: u64,
    not_tls: NotTls,
    key: FlowKey,
    stream: Stream,
    hello: Option<ClientHello>,
    inspector: PlaintextCounter,
    client_fin_told: bool,
    server_fin_told: bool,
    pub packets: ByteCounts,
}

impl Session {
    pub fn new(id: u64, key: FlowKey, not_tls: NotTls) -> Session {
        Session {
            id,
            not_tls,
            key,
            stream: Stream::AwaitingHello(ClientHelloReader::new()),
            hello: None,
            inspector: PlaintextCounter::default(),
            client_fin_told: false,
            server_fin_told: false,
            packets: ByteCounts::default(),
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether the session decrypted end to end (both handshakes done, no failure).
    pub fn decrypted(&self) -> bool {
        matches!(&self.stream, Stream::Decrypting(tls) if tls.outcome().is_none() && tls.stage() == Stage::Established)
    }

    /// The record for the decryption log once the flow has ended, and what its diagnosis
    /// is made from (a probe may add to it before `record.explain(&input)`).
    pub fn record(
        &self,
        tcp_end: Option<EndReason>,
        tcp_bytes: ByteCounts,
        profile: &Profile,
    ) -> (DecryptionRecord, DiagnosisInput) {
        let (action, outcome) = self.verdict();
        let mut record = DecryptionRecord::new(self.id, self.key.client, self.key.server, action, outcome);
        record.sni = self.hello.as_ref().and_then(|h| h.sni.clone());
        record.bytes_client_to_server = tcp_bytes.client_to_server;
        record.bytes_server_to_client = tcp_bytes.server_to_client;
        record.packets_client_to_server = self.packets.client_to_server;
        record.packets_server_to_client = self.packets.server_to_client;
        record.profile = "default".into();
        let mut not_tls = None;
        let mut connect_failure = None;
        match &self.stream {
            Stream::AwaitingHello(_) if tcp_end == Some(EndReason::UpstreamRefused) => {
                record.stage = Some(Stage::UpstreamConnect);
                record.end_reason = EndReason::UpstreamRefused.as_str().into();
                connect_failure = Some(ConnectFailure::Refused);
            }
            Stream::AwaitingHello(_) | Stream::ClosedBeforeHello => {
                record.stage = Some(Stage::ClientHello);
                record.end_reason = "the client closed before sending a complete ClientHello".into();
            }
            Stream::Spliced { reason, .. } => {
                record.end_reason = format!("spliced uninspected: {reason}");
                record.error = Some(reason.to_string());
                not_tls = Some(reason.to_string());
            }
            Stream::Refused(err) => {
                record.stage = Some(Stage::ClientHello);
                record.error = Some(err.to_string());
                record.end_reason = format!("refused: {err}");
                if matches!(
                    err,
                    ClientHelloError::NotTls { .. } | ClientHelloError::Sslv2Hello { .. }
                ) {
                    not_tls = Some(err.to_string());
                }
            }
            Stream::Decrypting(tls) => {
                let facts = tls.facts();
                record.stage = tls.outcome().map(SessionFailure::stage);
                record.client_leg = facts.client.clone();
                record.server_leg = facts.upstream.clone();
                record.server_cert = facts.server_chain.first().cloned();
                record.server_chain = facts.server_chain.clone();
                record.verify = facts.verify.clone();
                record.alerts = facts.alerts.clone();
                record.error = tls.outcome().map(ToString::to_string);
                record.end_reason = match (tls.outcome(), tcp_end) {
                    (Some(failure), _) => failure.to_string(),
                    (None, Some(end)) => end.as_str().to_string(),
                    (None, None) => "closed".into(),
                };
            }
        }
        let mut input = DiagnosisInput::from_record(&record);
        input.profile = profile_facts(profile);
        input.offered = Some(UpstreamOffer {
            min_version: profile.min_version,
            max_version: profile.max_version,
            ciphers: profile.cipher_list.split(':').map(str::to_string).collect(),
        });
        input.client_offer = self.hello.as_ref().map(ClientOffer::from_client_hello);
        input.not_tls = not_tls;
        input.connect_failure = connect_failure;
        (record, input)
    }

    /// The server refused our handshake with an alert: worth a probe of what it accepts.
    pub fn server_refused_handshake(&self) -> bool {
        matches!(&self.stream, Stream::Decrypting(tls)
            if tls.stage() == Stage::UpstreamHandshake
                && tls.facts().alerts.iter().any(|a| a.sender == crate::tls::record::Peer::Server && a.fatal))
    }

    pub fn sni(&self) -> Option<&str> {
        self.hello.as_ref().and_then(|h| h.sni.as_deref())
    }

    fn verdict(&self) -> (Action, Outcome) {
        match &self.stream {
            Stream::Refused(_) => (Action::Block, Outcome::Blocked),
            Stream::Spliced { .. } => (Action::NoDecrypt, Outcome::Spliced),
            Stream::AwaitingHello(_) | Stream::ClosedBeforeHello => (Action::Decrypt, Outcome::Aborted),
            Stream::Decrypting(tls) => match tls.outcome() {
                None if tls.stage() == Stage::Established => (Action::Decrypt, Outcome::Decrypted),
                None => (Action::Decrypt, Outcome::Aborted),
                Some(SessionFailure::UpstreamUntrusted { .. }) => (Action::Decrypt, Outcome::Blocked),
                // Decrypted as far as it went; a truncated or broken stream afterwards.
                Some(SessionFailure::Stream { .. }) => (Action::Decrypt, Outcome::Decrypted),
                Some(_) => (Action::Decrypt, Outcome::Aborted),
            },
        }
    }

    /// The pump for one service round of this session's flow.
    pub fn pump<'s, 'e>(&'s mut self, env: TlsEnv<'e>) -> SessionPump<'s, 'e> {
        SessionPump { session: self, env }
    }
}

fn profile_facts(profile: &Profile) -> ProfileFacts {
    ProfileFacts {
        name: "default".into(),
        allow_sha1: profile.allow_sha1,
        min_version: profile.min_version,
        max_version: profile.max_version,
        untrusted: match profile.untrusted {
            UntrustedAction::Block => crate::tls::diagnosis::UntrustedAction::Block,
            UntrustedAction::ForwardUntrust => crate::tls::diagnosis::UntrustedAction::ForwardUntrust,
        },
    }
}

pub struct SessionPump<'s, 'e> {
    session: &'s mut Session,
    env: TlsEnv<'e>,
}

/// Rounds of push → advance → pull per service call: a handshake step can produce output
/// that the peer's buffered input answers at once.
const PUMP_ROUNDS: usize = 4;

impl StreamPump for SessionPump<'_, '_> {
    fn pump(
        &mut self,
        client: &mut tcp::Socket<'static>,
        server: &mut tcp::Socket<'static>,
        fins: &mut Fins,
    ) -> ByteCounts {
        let session = &mut *self.session;
        if let Stream::AwaitingHello(reader) = &mut session.stream {
            match read_hello(reader, client) {
                Ok(Some(hello)) => {
                    let tls = SplitTls::start(&hello, reader.raw(), session.key.server, self.env.context);
                    session.hello = Some(hello);
                    session.stream = Stream::Decrypting(Box::new(tls));
                }
                Ok(None) => {
                    if fins.client_fin_received && client.recv_queue() == 0 {
                        // Nothing to decrypt: pass the close on.
                        session.stream = Stream::ClosedBeforeHello;
                        server.close();
                        client.close();
                        fins.client_fin_forwarded = true;
                        fins.server_fin_forwarded = true;
                    }
                    return ByteCounts::default();
                }
                Err(err) if session.not_tls == NotTls::Splice && err.is_not_tls() => {
                    tracing::debug!(flow = %session.key, %err, "not TLS: spliced by policy");
                    session.stream = Stream::Spliced {
                        reason: err,
                        head: reader.raw().to_vec(),
                        sent: 0,
                    };
                }
                Err(err) => {
                    tracing::info!(flow = %session.key, %err, "refused: not a TLS ClientHello");
                    session.stream = Stream::Refused(err);
                    client.abort();
                    server.abort();
                    return ByteCounts::default();
                }
            }
        }
        if let Stream::Spliced { head, sent, .. } = &mut session.stream {
            // What the reader consumed goes first; then the sockets are joined as they are.
            if *sent < head.len() {
                let n = drain(server, &head[*sent..]);
                *sent += n;
                if *sent < head.len() {
                    return ByteCounts {
                        client_to_server: n as u64,
                        server_to_client: 0,
                    };
                }
                let mut moved = Splice.pump(client, server, fins);
                moved.client_to_server += n as u64;
                return moved;
            }
            return Splice.pump(client, server, fins);
        }
        let Stream::Decrypting(tls) = &mut session.stream else {
            return ByteCounts::default();
        };
        let mut moved = ByteCounts::default();
        for _ in 0..PUMP_ROUNDS {
            let mut progress = false;
            progress |= feed(client, |bytes| tls.push_from_client(bytes));
            progress |= feed(server, |bytes| tls.push_from_server(bytes));
            if !session.client_fin_told && fins.client_fin_received && client.recv_queue() == 0 {
                tls.client_closed();
                session.client_fin_told = true;
                progress = true;
            }
            if !session.server_fin_told && fins.server_fin_received && server.recv_queue() == 0 {
                tls.server_closed();
                session.server_fin_told = true;
                progress = true;
            }
            tls.advance(self.env.certs, &mut session.inspector);
            let to_server = drain(server, tls.pending_to_server());
            tls.consume_to_server(to_server);
            let to_client = drain(client, tls.pending_to_client());
            tls.consume_to_client(to_client);
            moved.client_to_server += to_server as u64;
            moved.server_to_client += to_client as u64;
            progress |= to_server > 0 || to_client > 0;
            if tls.wants_close_server() && !fins.client_fin_forwarded {
                server.close();
                fins.client_fin_forwarded = true;
            }
            if tls.wants_close_client() && !fins.server_fin_forwarded {
                client.close();
                fins.server_fin_forwarded = true;
            }
            if !progress {
                break;
            }
        }
        moved
    }
}

/// Feeds what the client sent into the reader until the ClientHello is complete.
fn read_hello(
    reader: &mut ClientHelloReader,
    client: &mut tcp::Socket<'static>,
) -> Result<Option<ClientHello>, ClientHelloError> {
    while client.can_recv() {
        let result = client
            .recv(|bytes| match reader.push(bytes) {
                Ok(found) => (bytes.len(), Ok(found)),
                // Refused whole: the bytes stay in the socket.
                Err(err @ ClientHelloError::BufferFull { .. }) => (0, Err(err)),
                // Kept in `raw()` (spliced from there, or dropped with the connection).
                Err(err) => (bytes.len(), Err(err)),
            })
            .unwrap_or(Ok(None));
        match result {
            Ok(Some(hello)) => return Ok(Some(hello)),
            Ok(None) => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(None)
}

/// Moves received bytes into the session as far as it takes them.
fn feed(socket: &mut tcp::Socket<'static>, mut take: impl FnMut(&[u8]) -> usize) -> bool {
    let mut any = false;
    while socket.can_recv() {
        let n = socket
            .recv(|bytes| {
                let n = take(bytes);
                (n, n)
            })
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        any = true;
    }
    any
}

/// Writes pending bytes into a socket as far as it has room; returns how many.
fn drain(socket: &mut tcp::Socket<'static>, pending: &[u8]) -> usize {
    if pending.is_empty() || !socket.can_send() {
        return 0;
    }
    socket.send_slice(pending).unwrap_or(0)
}
