//! A flow's session: what its TCP stream carries and what loupe does with it. It reads
//! the client's ClientHello, asks the policy snapshot the flow started with, then decrypts
//! through split TLS, splices, or blocks (and refuses what is not TLS), and when the flow
//! ends it produces the flow's one decryption-log record.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

use crate::capture::SniKnowledge;
use crate::inspect::engine::{HttpInspector, InspectedTransaction, SignatureAlert};
use crate::inspect::export::{SessionExport, Side as ExportSide, SyntheticPacket};
use crate::inspect::signatures::{Endpoints, SignatureSet};
use crate::inspect::{Inspector, Pass, Relay};
use crate::tls::keylog::KeyLog;
use loupe_control::protocol::{HttpDetail, HttpLine};

use loupe_control::config::{RuleAction, Undecryptable};
use smoltcp::socket::tcp;

use crate::flow::FlowKey;
use crate::policy::{Decision, ExclusionKey, Policy, ProfileContext};
use crate::relay::{humanize, ByteCounts, EndReason, Fins, Phase, Splice, StreamPump};
use crate::tls::client_hello::{ClientHello, ClientHelloError, ClientHelloReader};
use crate::tls::diagnosis::{ClientOffer, ConnectFailure, DiagnosisInput, ProfileFacts, UpstreamOffer};
use crate::tls::forge::CertSource;
use crate::tls::record::{Action, DecryptionRecord, HttpFact, Outcome, Peer, Stage};
use crate::tls::session::{
    PlaintextCounter, SessionFailure, SplitTls, UntrustedAction, ALERT_ACCESS_DENIED, ALERT_HANDSHAKE_FAILURE,
};
use loupe_control::config::NotTls;

/// What a worker lends a session while it runs: the forger and the time of the round.
pub struct TlsEnv<'a> {
    pub certs: &'a mut dyn CertSource,
    /// Wall-clock time of this service round, stamped on the transactions seen in it.
    pub now: SystemTime,
}

/// One logged transaction as `loupectl session ID` lists it, its text moved, not copied.
fn http_line(done: InspectedTransaction) -> HttpLine {
    let mut tx = done.transaction;
    let url = tx.take_url();
    let (url_rule, url_action) = match done.url_rule {
        Some(hit) => (Some(hit.rule), Some(hit.action.as_str().into())),
        None => (None, None),
    };
    HttpLine {
        method: tx.method,
        host: tx.host,
        url,
        status: tx.status,
        stream_id: tx.stream_id,
        url_rule,
        url_action,
        blocked: done.blocked,
    }
}

/// How many finished transactions a session keeps for `loupectl session ID`.
const RECENT_TRANSACTIONS: usize = 4;

/// What looks at a decrypted session's plaintext.
enum SessionInspector {
    /// `[inspection] http = false`: bytes are counted, nothing else.
    Counting(PlaintextCounter),
    Http(Box<HttpInspector>),
}

impl SessionInspector {
    fn for_policy(policy: &Policy, key: &FlowKey) -> SessionInspector {
        if policy.inspection.http {
            let mut engine = HttpInspector::new(policy.inspect_settings.clone(), policy.url_rules.clone());
            if let Some(set) = &policy.signatures {
                let endpoints = Endpoints {
                    client: key.client,
                    server: key.server,
                };
                engine = engine.with_signatures(Arc::clone(set), endpoints, policy.inspection.body_depth);
            }
            SessionInspector::Http(Box::new(engine))
        } else {
            SessionInspector::Counting(PlaintextCounter::default())
        }
    }

    fn http(&self) -> Option<&HttpInspector> {
        match self {
            SessionInspector::Http(engine) => Some(engine),
            SessionInspector::Counting(_) => None,
        }
    }
}

impl Inspector for SessionInspector {
    fn established(&mut self, client_alpn: Option<&str>) {
        match self {
            SessionInspector::Counting(counter) => counter.established(client_alpn),
            SessionInspector::Http(engine) => engine.established(client_alpn),
        }
    }

    fn client_to_server(&mut self, plaintext: &[u8], relay: &mut Relay<'_>) -> Pass {
        match self {
            SessionInspector::Counting(counter) => counter.client_to_server(plaintext, relay),
            SessionInspector::Http(engine) => engine.client_to_server(plaintext, relay),
        }
    }

    fn server_to_client(&mut self, plaintext: &[u8], relay: &mut Relay<'_>) -> Pass {
        match self {
            SessionInspector::Counting(counter) => counter.server_to_client(plaintext, relay),
            SessionInspector::Http(engine) => engine.server_to_client(plaintext, relay),
        }
    }

    fn client_ended(&mut self, relay: &mut Relay<'_>) {
        match self {
            SessionInspector::Counting(counter) => counter.client_ended(relay),
            SessionInspector::Http(engine) => engine.client_ended(relay),
        }
    }

    fn server_ended(&mut self, relay: &mut Relay<'_>) {
        match self {
            SessionInspector::Counting(counter) => counter.server_ended(relay),
            SessionInspector::Http(engine) => engine.server_ended(relay),
        }
    }
}

/// Alert sent to a client that offers no TLS version the profile allows.
const ALERT_PROTOCOL_VERSION: u8 = 70;

/// Why a stream is relayed without decryption.
#[derive(Debug)]
enum SpliceReason {
    /// Not TLS, relayed by `not_tls = "splice"`.
    NotTls(ClientHelloError),
    /// A no-decrypt rule or the exclusion cache (the decision says which).
    Policy,
    /// The client offers nothing the profile allows and the profile bypasses such sessions.
    ClientUnsupported(String),
}

/// Why loupe refused a TLS session before any handshake.
#[derive(Debug)]
enum BlockReason {
    /// A block rule.
    Rule,
    /// The client offers nothing the profile allows (`unsupported_version` or
    /// `unsupported_cipher` = block).
    ClientUnsupported(String),
}

enum Stream {
    /// Reading the first bytes until the ClientHello is complete.
    AwaitingHello(ClientHelloReader),
    Decrypting(Box<SplitTls>),
    /// Not TLS (or a hostile hello): both connections were reset.
    Refused(ClientHelloError),
    /// Relayed byte for byte: the bytes read so far go first.
    Spliced {
        reason: SpliceReason,
        head: Vec<u8>,
        sent: usize,
    },
    /// Refused by policy after the ClientHello: a fatal alert goes to the client, then
    /// both connections close.
    Blocked {
        reason: BlockReason,
        alert: [u8; 7],
        sent: usize,
    },
    /// The client closed before its ClientHello was complete.
    ClosedBeforeHello,
}

/// Where a session is in its life, as `sessions` and `session ID` show it (and
/// `sessions --state NAME` filters on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Opening the upstream TCP connection, awaiting the ClientHello, or in the TLS
    /// handshakes.
    Handshake,
    /// Both handshakes done: plaintext flows through inspection.
    Decrypting,
    /// Relayed byte for byte, not decrypted.
    Spliced,
    /// Refused (a block rule, an unsupported client, not TLS): being torn down.
    Blocked,
    /// A FIN or reset was seen, or the TLS session failed: winding down.
    Closing,
    /// Both TCP endpoints closed (the slot lingers briefly), or the session is over.
    Ended,
}

impl SessionState {
    pub const ALL: [SessionState; 6] = [
        SessionState::Handshake,
        SessionState::Decrypting,
        SessionState::Spliced,
        SessionState::Blocked,
        SessionState::Closing,
        SessionState::Ended,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Handshake => "handshake",
            SessionState::Decrypting => "decrypting",
            SessionState::Spliced => "spliced",
            SessionState::Blocked => "blocked",
            SessionState::Closing => "closing",
            SessionState::Ended => "ended",
        }
    }

    /// The state of a session whose stream is of `kind`, on a TCP pair in `phase`
    /// (`closing`: `TcpPair::closing`).
    fn of(kind: StreamKind, phase: Phase, closing: bool) -> SessionState {
        match kind {
            _ if phase == Phase::Finished => SessionState::Ended,
            StreamKind::Blocked => SessionState::Blocked,
            _ if matches!(phase, Phase::Connecting | Phase::AwaitingClient) => SessionState::Handshake,
            _ if closing => SessionState::Closing,
            StreamKind::ClosedBeforeHello | StreamKind::Failed => SessionState::Closing,
            StreamKind::AwaitingHello | StreamKind::Handshaking => SessionState::Handshake,
            StreamKind::Decrypting => SessionState::Decrypting,
            StreamKind::Spliced => SessionState::Spliced,
        }
    }
}

impl std::fmt::Display for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a session's stream is doing, as far as its state name goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamKind {
    AwaitingHello,
    /// Split TLS, a handshake not yet done.
    Handshaking,
    Decrypting,
    /// Split TLS that failed.
    Failed,
    Spliced,
    /// Blocked by policy, or refused as not TLS.
    Blocked,
    ClosedBeforeHello,
}

pub struct Session {
    id: u64,
    /// The snapshot the flow started with: it keeps it for its whole life.
    policy: Arc<Policy>,
    decision: Option<Decision>,
    key: FlowKey,
    stream: Stream,
    hello: Option<ClientHello>,
    inspector: SessionInspector,
    /// The plaintext as synthetic TCP packets, when the session's rule exports pcap.
    export: Option<Box<SessionExport>>,
    /// Transactions finished so far, and the last few of them.
    transactions: u64,
    /// As `loupectl session ID` lists them: a line each, not the whole transactions.
    recent: VecDeque<HttpLine>,
    client_fin_told: bool,
    server_fin_told: bool,
    pub packets: ByteCounts,
}

impl Session {
    /// Frees the session's empty byte queues (split TLS keeps the capacity a handshake
    /// or a burst grew them to); called for flows idle for a while, so a busy flow does
    /// not pay an allocation per burst.
    pub fn release_idle_buffers(&mut self) {
        if let Stream::Decrypting(split) = &mut self.stream {
            split.release_idle_buffers();
        }
    }

    pub fn new(id: u64, key: FlowKey, policy: Arc<Policy>) -> Session {
        // A no-decrypt rule on addresses alone: spliced from the first byte.
        let early = policy.at_connect(key.client, key.server);
        let stream = match &early {
            Some(decision) => {
                policy.count_hit(decision);
                Stream::Spliced {
                    reason: SpliceReason::Policy,
                    head: Vec::new(),
                    sent: 0,
                }
            }
            None => Stream::AwaitingHello(ClientHelloReader::new()),
        };
        let inspector = SessionInspector::for_policy(&policy, &key);
        Session {
            id,
            policy,
            decision: early,
            key,
            stream,
            hello: None,
            inspector,
            export: None,
            transactions: 0,
            recent: VecDeque::new(),
            client_fin_told: false,
            server_fin_told: false,
            packets: ByteCounts::default(),
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Transactions finished since the last call, in the order they finished, for the
    /// EVE log; give them back with [`Session::keep_logged`].
    pub fn take_transactions(&mut self) -> Vec<InspectedTransaction> {
        match &mut self.inspector {
            SessionInspector::Http(engine) if engine.has_finished() => engine.take_finished(),
            _ => Vec::new(),
        }
    }

    /// Counts transactions once logged and keeps the last few for `loupectl`, as lines
    /// made of their own text (nothing copied).
    pub fn keep_logged(&mut self, mut logged: Vec<InspectedTransaction>) {
        self.transactions += logged.len() as u64;
        let skipped = logged.len().saturating_sub(RECENT_TRANSACTIONS);
        for transaction in logged.drain(..).skip(skipped) {
            if self.recent.len() == RECENT_TRANSACTIONS {
                self.recent.pop_front();
            } else if self.recent.capacity() == 0 {
                // Most sessions carry a request or two: grow from one slot, not four.
                self.recent.reserve_exact(1);
            }
            self.recent.push_back(http_line(transaction));
        }
        crate::inspect::engine::recycle_finished(logged);
    }

    /// Synthetic plaintext packets waiting to be written (rules with `export = ["pcap"]`).
    pub fn take_export_packets(&mut self) -> Vec<SyntheticPacket> {
        match &mut self.export {
            Some(export) if export.pending_packets() > 0 => export.take_packets(),
            _ => Vec::new(),
        }
    }

    /// The flow ended: the synthetic flow closes too, with resets when the session failed.
    pub fn close_export(&mut self, now: SystemTime) {
        let failed = matches!(&self.stream, Stream::Decrypting(tls) if tls.outcome().is_some());
        if let Some(export) = &mut self.export {
            match failed {
                true => export.reset(now, ExportSide::Server),
                false => export.close(now),
            }
        }
    }

    /// A policy snapshot with other signatures arrived: the session runs them from its
    /// next transaction stage (its own snapshot stays for everything else).
    pub fn adopt_signatures(&mut self, policy: &Policy) {
        if let SessionInspector::Http(engine) = &mut self.inspector {
            let endpoints = Endpoints {
                client: self.key.client,
                server: self.key.server,
            };
            engine.replace_signatures(policy.signatures.clone(), endpoints, policy.inspection.body_depth);
        }
    }

    /// Signatures fired since the last call, and the rule set they come from.
    pub fn take_alerts(&mut self) -> Option<(Vec<SignatureAlert>, Arc<SignatureSet>)> {
        match &mut self.inspector {
            SessionInspector::Http(engine) if engine.has_alerts() => {
                let set = Arc::clone(engine.signature_set()?);
                Some((engine.take_alerts(), set))
            }
            _ => None,
        }
    }

    /// Whether signatures fired that [`Session::take_alerts`] has not taken.
    pub fn has_alerts(&self) -> bool {
        self.inspector.http().is_some_and(HttpInspector::has_alerts)
    }

    /// Whether transactions finished that [`Session::take_transactions`] has not taken.
    pub fn has_transactions(&self) -> bool {
        self.inspector.http().is_some_and(HttpInspector::has_finished)
    }

    /// How many transactions finished, and the last few, oldest first.
    pub fn transactions(&self) -> (u64, impl Iterator<Item = &HttpLine>) {
        (self.transactions, self.recent.iter())
    }

    /// The inspection engine of a decrypted session (None when HTTP is not inspected).
    pub fn http_inspector(&self) -> Option<&HttpInspector> {
        self.inspector.http()
    }

    /// The last transaction in a line, for `loupectl sessions`: `GET shop.example/a 200`.
    pub fn last_http(&self) -> Option<String> {
        let last = self.recent.back()?;
        let mut line = format!("{} {}{}", last.method, last.host.as_deref().unwrap_or(""), last.url);
        if let Some(status) = last.status {
            line.push_str(&format!(" {status}"));
        }
        Some(line)
    }

    /// What inspection saw, for `loupectl session ID`; None when the session never
    /// reached its plaintext (or HTTP is not inspected).
    pub fn http_detail(&self) -> Option<HttpDetail> {
        let engine = self.inspector.http().filter(|_| self.decrypted_at_some_point())?;
        Some(HttpDetail {
            protocol: engine.protocol().as_str().to_string(),
            transactions: self.transactions,
            stopped: engine.stopped().map(str::to_string),
            ended: engine.ended().map(str::to_string),
            recent: self.recent.iter().cloned().collect(),
        })
    }

    /// Whether both handshakes completed (the session may have failed or ended since).
    fn decrypted_at_some_point(&self) -> bool {
        matches!(&self.stream, Stream::Decrypting(tls) if tls.facts().client.version.is_some())
    }

    /// The inspection facts for the decryption log.
    fn http_fact(&self) -> Option<HttpFact> {
        let engine = self.inspector.http().filter(|_| self.decrypted_at_some_point())?;
        let counts = engine.counts();
        Some(HttpFact {
            protocol: engine.protocol().as_str().to_string(),
            transactions: self.transactions,
            url_rule_hits: counts.url_rule_hits,
            blocked: counts.blocked,
            protocol_errors: counts.protocol_errors,
            signature_alerts: counts.signature_alerts,
            signature_drops: counts.signature_drops,
            bodies_cut: counts.bodies_cut,
            body_decode_errors: counts.body_decode_errors,
            stopped: engine.stopped().map(str::to_string),
            ended: engine.ended().map(str::to_string),
        })
    }

    /// The session's state name, given its TCP pair's phase and `TcpPair::closing`.
    pub fn state(&self, phase: Phase, closing: bool) -> SessionState {
        SessionState::of(self.stream_kind(), phase, closing)
    }

    fn stream_kind(&self) -> StreamKind {
        match &self.stream {
            Stream::AwaitingHello(_) => StreamKind::AwaitingHello,
            Stream::Decrypting(tls) => match tls.outcome() {
                Some(_) => StreamKind::Failed,
                None if tls.stage() == Stage::Established => StreamKind::Decrypting,
                None => StreamKind::Handshaking,
            },
            Stream::Refused(_) | Stream::Blocked { .. } => StreamKind::Blocked,
            Stream::Spliced { .. } => StreamKind::Spliced,
            Stream::ClosedBeforeHello => StreamKind::ClosedBeforeHello,
        }
    }

    /// Whether the session is still being set up: awaiting the ClientHello, or in its TLS
    /// handshakes (`[timeouts] handshake` applies then).
    pub fn settling(&self) -> bool {
        matches!(self.stream_kind(), StreamKind::AwaitingHello | StreamKind::Handshaking)
    }

    /// The rule that decided the session; None while undecided (awaiting the ClientHello).
    pub fn rule(&self) -> Option<&str> {
        self.decision.as_ref().map(|d| d.rule.as_str())
    }

    /// What policy did with the session; None while undecided. Cheap: no allocation.
    pub fn action(&self) -> Option<Action> {
        let decided = self.decision.is_some()
            || matches!(
                &self.stream,
                Stream::Refused(_)
                    | Stream::Spliced {
                        reason: SpliceReason::NotTls(_),
                        ..
                    }
            );
        decided.then(|| self.verdict().0)
    }

    /// The DER chain the server presented, leaf first, when its verification failed
    /// (empty otherwise). Moved out of the session: call once, when it ends.
    pub fn take_presented_chain(&mut self) -> Vec<Vec<u8>> {
        match &mut self.stream {
            Stream::Decrypting(tls) => tls.take_server_chain_der(),
            _ => Vec::new(),
        }
    }

    /// Whether the session decrypted end to end (both handshakes done, no failure).
    pub fn decrypted(&self) -> bool {
        matches!(&self.stream, Stream::Decrypting(tls) if tls.outcome().is_none() && tls.stage() == Stage::Established)
    }

    /// The record for the decryption log once the flow has ended, and what its diagnosis
    /// is made from (a probe may add to it before `record.explain(&input)`).
    pub fn record(&self, tcp_end: Option<EndReason>, tcp_bytes: ByteCounts) -> (DecryptionRecord, DiagnosisInput) {
        let (action, outcome) = self.verdict();
        let mut record = DecryptionRecord::new(self.id, self.key.client, self.key.server, action, outcome);
        record.sni = self.hello.as_ref().and_then(|h| h.sni.clone());
        record.bytes_client_to_server = tcp_bytes.client_to_server;
        if let Stream::AwaitingHello(reader) = &self.stream {
            // Read from the client but held until the hello is whole, so not relayed yet:
            // a slow or broken hello still shows what it sent.
            record.bytes_client_to_server += reader.raw().len() as u64;
        }
        record.bytes_server_to_client = tcp_bytes.server_to_client;
        record.packets_client_to_server = self.packets.client_to_server;
        record.packets_server_to_client = self.packets.server_to_client;
        record.config_version = self.policy.version;
        record.http = self.http_fact();
        let profile = self.profile();
        record.profile = profile.map(|p| p.name.clone());
        if let Some(decision) = &self.decision {
            record.rule = decision.rule.clone();
            record.reason = Some(decision.reason.clone());
        }
        let mut not_tls = None;
        let mut connect_failure = None;
        match &self.stream {
            Stream::AwaitingHello(_) if tcp_end == Some(EndReason::UpstreamRefused) => {
                record.stage = Some(Stage::UpstreamConnect);
                record.end_reason = EndReason::UpstreamRefused.to_string();
                connect_failure = Some(ConnectFailure::Refused);
            }
            Stream::AwaitingHello(_) if matches!(tcp_end, Some(EndReason::HandshakeTimeout(_))) => {
                record.stage = Some(Stage::ClientHello);
                let end = tcp_end.map(|e| e.to_string()).unwrap_or_default();
                record.error = Some(format!("no complete ClientHello from the client: {end}"));
                record.end_reason = end;
            }
            Stream::AwaitingHello(_) | Stream::ClosedBeforeHello => {
                record.stage = Some(Stage::ClientHello);
                record.end_reason = "the client closed before sending a complete ClientHello".into();
            }
            Stream::Spliced { reason, .. } => {
                let end = tcp_end.map_or_else(|| "closed".to_string(), |e| e.to_string());
                match reason {
                    SpliceReason::NotTls(err) => {
                        record.end_reason = format!("spliced uninspected ({err}); {end}");
                        record.error = Some(err.to_string());
                        not_tls = Some(err.to_string());
                    }
                    SpliceReason::Policy => {
                        record.end_reason = end;
                    }
                    SpliceReason::ClientUnsupported(why) => {
                        record.end_reason = end;
                        record.reason = Some(format!("bypassed: {why}"));
                    }
                }
            }
            Stream::Blocked { reason, .. } => {
                record.stage = Some(Stage::ClientHello);
                match reason {
                    BlockReason::Rule => {
                        // Nothing failed: policy refused it.
                        record.stage = None;
                        record.end_reason = format!("blocked by rule {:?}", record.rule);
                    }
                    BlockReason::ClientUnsupported(why) => {
                        record.error = Some(why.clone());
                        record.end_reason = format!("blocked: {why}");
                        record.reason = Some(why.clone());
                    }
                }
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
                record.ocsp = facts.ocsp.clone();
                record.alerts = facts.alerts.clone();
                record.error = tls.outcome().map(ToString::to_string);
                record.end_reason = match (tls.outcome(), tcp_end) {
                    (Some(failure), _) => failure.to_string(),
                    (None, Some(end)) => end.to_string(),
                    (None, None) => "closed".into(),
                };
                if tls.outcome().is_none() {
                    // The handshake stalled at this stage, or a peer's reset came there:
                    // that is the failure.
                    let reset = |peer: Peer| {
                        format!(
                            "the {} reset the connection during {}",
                            peer.as_str(),
                            tls.stage().describe()
                        )
                    };
                    let error = match tcp_end {
                        Some(EndReason::HandshakeTimeout(_)) => Some(record.end_reason.clone()),
                        Some(EndReason::ServerReset) => Some(reset(Peer::Server)),
                        Some(EndReason::ClientReset) => Some(reset(Peer::Client)),
                        _ => None,
                    };
                    if error.is_some() {
                        record.stage = Some(tls.stage());
                        record.error = error;
                    }
                }
                if let Some((what, setting)) = self.undecryptable() {
                    let ttl = self.policy.exclusion_ttl();
                    record.reason = Some(match setting {
                        Undecryptable::Block => format!("{what}: blocked ({} = \"block\")", what.setting()),
                        Undecryptable::Bypass => format!(
                            "{what}: the server is excluded from decryption for {} ({} = \"bypass\"); the next connections are spliced",
                            humanize(ttl),
                            what.setting()
                        ),
                    });
                }
            }
        }
        let mut input = DiagnosisInput::from_record(&record);
        if let Some(profile) = profile {
            let p = &profile.profile;
            input.profile = profile_facts(profile);
            input.offered = Some(UpstreamOffer {
                min_version: p.min_version,
                max_version: p.max_version,
                ciphers: p.cipher_list.split(':').map(str::to_string).collect(),
            });
        }
        input.client_offer = self.hello.as_ref().map(ClientOffer::from_client_hello);
        input.client_cert_requested = matches!(&self.stream, Stream::Decrypting(tls)
            if tls.outcome() == Some(&SessionFailure::ClientCertificateRequested));
        input.not_tls = not_tls;
        input.connect_failure = connect_failure;
        (record, input)
    }

    /// The record as it stands while the flow lives, for `session ID`: no end reason, no
    /// stage while the ClientHello is still awaited (nothing failed yet), and the error
    /// line as the log would print it. Reads only; it allocates the record's strings, so
    /// it is for queries, never the per-packet path.
    pub fn live_record(&self, tcp_bytes: ByteCounts) -> DecryptionRecord {
        let (mut record, _) = self.record(None, tcp_bytes);
        if matches!(self.stream, Stream::AwaitingHello(_)) {
            record.stage = None;
        }
        record.end_reason.clear();
        if let Some(line) = crate::tls::record::error_line(record.verify.as_ref(), &record.alerts) {
            record.error = Some(line);
        }
        record
    }

    fn profile(&self) -> Option<&Arc<ProfileContext>> {
        self.decision.as_ref().and_then(|d| d.profile.as_ref())
    }

    /// Why the server could not be decrypted, when the profile has a setting for it, and
    /// that setting.
    fn undecryptable(&self) -> Option<(Obstacle, Undecryptable)> {
        let Stream::Decrypting(tls) = &self.stream else {
            return None;
        };
        let settings = &self.profile()?.settings;
        let what = match tls.outcome()? {
            SessionFailure::ClientCertificateRequested => Obstacle::ClientAuth,
            SessionFailure::UpstreamHandshake { detail } => {
                let alert = tls
                    .facts()
                    .alerts
                    .iter()
                    .find(|a| a.sender == Peer::Server && a.fatal)
                    .map(|a| a.code);
                match alert {
                    Some(70) => Obstacle::Version,
                    Some(40) | Some(71) => Obstacle::Cipher,
                    _ if detail.contains("UNSUPPORTED_PROTOCOL") || detail.contains("WRONG_VERSION") => {
                        Obstacle::Version
                    }
                    _ if detail.contains("NO_SHARED_CIPHER") || detail.contains("WRONG_CIPHER") => Obstacle::Cipher,
                    _ => return None,
                }
            }
            _ => return None,
        };
        let setting = match what {
            Obstacle::ClientAuth => settings.client_auth,
            Obstacle::Version => settings.unsupported_version,
            Obstacle::Cipher => settings.unsupported_cipher,
        };
        Some((what, setting))
    }

    /// When this session's failure puts its server in the exclusion cache: the key and why.
    pub fn exclusion(&self) -> Option<(ExclusionKey, String)> {
        match self.undecryptable()? {
            (what, Undecryptable::Bypass) => Some((ExclusionKey::new(self.sni(), self.key.server), what.to_string())),
            (_, Undecryptable::Block) => None,
        }
    }

    /// The server refused our handshake with an alert: worth a probe of what it accepts.
    pub fn server_refused_handshake(&self) -> bool {
        matches!(&self.stream, Stream::Decrypting(tls)
            if tls.stage() == Stage::UpstreamHandshake
                && tls.facts().alerts.iter().any(|a| a.sender == Peer::Server && a.fatal))
    }

    /// The TLS version the client leg agreed, once it did.
    pub fn client_tls_version(&self) -> Option<&str> {
        match &self.stream {
            Stream::Decrypting(tls) => tls.facts().client.version.as_deref(),
            _ => None,
        }
    }

    pub fn sni(&self) -> Option<&str> {
        self.hello.as_ref().and_then(|h| h.sni.as_deref())
    }

    /// What a capture filter on the server name can know: nothing while the ClientHello
    /// is awaited, then its SNI (none for a client that sent none, or for a stream that
    /// turned out not to be TLS).
    pub fn sni_knowledge(&self) -> SniKnowledge<'_> {
        match self.stream {
            Stream::AwaitingHello(_) => SniKnowledge::NotYet,
            _ => SniKnowledge::Known(self.sni()),
        }
    }

    fn verdict(&self) -> (Action, Outcome) {
        let action = match self.decision.as_ref().map(|d| d.action) {
            Some(RuleAction::NoDecrypt) => Action::NoDecrypt,
            Some(RuleAction::Block) => Action::Block,
            Some(RuleAction::DecryptInbound) => Action::DecryptInbound,
            Some(RuleAction::Decrypt) | None => Action::Decrypt,
        };
        match &self.stream {
            Stream::Refused(_) => (Action::Block, Outcome::Blocked),
            Stream::Spliced {
                reason: SpliceReason::NotTls(_),
                ..
            } => (Action::NoDecrypt, Outcome::Spliced),
            Stream::Spliced { .. } => (action, Outcome::Spliced),
            Stream::Blocked { .. } => (action, Outcome::Blocked),
            Stream::AwaitingHello(_) | Stream::ClosedBeforeHello => (action, Outcome::Aborted),
            Stream::Decrypting(tls) => match tls.outcome() {
                None if tls.stage() == Stage::Established => (action, Outcome::Decrypted),
                None => (action, Outcome::Aborted),
                Some(SessionFailure::UpstreamUntrusted { .. }) => (action, Outcome::Blocked),
                // Decrypted as far as it went; a truncated or broken stream afterwards.
                Some(SessionFailure::Stream { .. }) => (action, Outcome::Decrypted),
                Some(_) if self.undecryptable().is_some() => (action, Outcome::Blocked),
                Some(_) => (action, Outcome::Aborted),
            },
        }
    }

    /// The pump for one service round of this session's flow.
    pub fn pump<'s, 'e>(&'s mut self, env: TlsEnv<'e>) -> SessionPump<'s, 'e> {
        SessionPump { session: self, env }
    }
}

/// A reason the profile names for not decrypting a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Obstacle {
    ClientAuth,
    Version,
    Cipher,
}

impl Obstacle {
    /// The profile setting that decides.
    fn setting(self) -> &'static str {
        match self {
            Obstacle::ClientAuth => "client_auth",
            Obstacle::Version => "unsupported_version",
            Obstacle::Cipher => "unsupported_cipher",
        }
    }
}

impl std::fmt::Display for Obstacle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Obstacle::ClientAuth => "the server requested a client certificate",
            Obstacle::Version => "the server speaks no TLS version the profile allows",
            Obstacle::Cipher => "the server shares no cipher suite with the profile",
        })
    }
}

/// `12h`, `30m`, `90s`.
fn profile_facts(context: &ProfileContext) -> ProfileFacts {
    let profile = &context.profile;
    ProfileFacts {
        name: context.name.clone(),
        allow_sha1: profile.allow_sha1,
        legacy_servers: profile.legacy_servers,
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
                    let decision =
                        session
                            .policy
                            .at_hello(session.key.client, session.key.server, hello.sni.as_deref());
                    session.policy.count_hit(&decision);
                    tracing::debug!(flow = %session.key, ?decision, "policy decision");
                    let exports = session.policy.exports(&decision);
                    let keylog = session.policy.keylog.clone().filter(|_| exports.keylog);
                    session.stream = start(&hello, reader.raw(), session.key.server, &decision, keylog);
                    if exports.pcap && matches!(session.stream, Stream::Decrypting(_)) {
                        let export = SessionExport::new(session.key.client, session.key.server);
                        session.export = Some(Box::new(export));
                    }
                    if let SessionInspector::Http(engine) = &mut session.inspector {
                        engine.set_sni(hello.sni.as_deref());
                    }
                    session.hello = Some(hello);
                    session.decision = Some(decision);
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
                Err(err) if session.policy.not_tls == NotTls::Splice && err.is_not_tls() => {
                    tracing::debug!(flow = %session.key, %err, "not TLS: spliced by policy");
                    session.stream = Stream::Spliced {
                        reason: SpliceReason::NotTls(err),
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
                // All sent: the hello's bytes need not stay with the session for its life.
                *head = Vec::new();
                *sent = 0;
                let mut moved = Splice.pump(client, server, fins);
                moved.client_to_server += n as u64;
                return moved;
            }
            return Splice.pump(client, server, fins);
        }
        if let Stream::Blocked { alert, sent, .. } = &mut session.stream {
            if *sent < alert.len() {
                *sent += drain(client, &alert[*sent..]);
            }
            if *sent == alert.len() && !fins.server_fin_forwarded {
                client.close();
                server.close();
                fins.client_fin_forwarded = true;
                fins.server_fin_forwarded = true;
            }
            return ByteCounts::default();
        }
        let Stream::Decrypting(tls) = &mut session.stream else {
            return ByteCounts::default();
        };
        if tls.wants_reset() {
            return ByteCounts::default();
        }
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
            if let SessionInspector::Http(engine) = &mut session.inspector {
                engine.set_now(self.env.now);
            }
            match &mut session.export {
                Some(export) => tls.advance(self.env.certs, &mut export.tee(&mut session.inspector, self.env.now)),
                None => tls.advance(self.env.certs, &mut session.inspector),
            }
            if tls.wants_reset() {
                // A drop signature: both connections end now, with nothing more sent.
                client.abort();
                server.abort();
                fins.reset_sent = true;
                break;
            }
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

/// What the session becomes once policy decided on its ClientHello.
fn start(
    hello: &ClientHello,
    raw: &[u8],
    server: std::net::SocketAddr,
    decision: &Decision,
    keylog: Option<Arc<KeyLog>>,
) -> Stream {
    let alert = |code: u8| {
        let [major, minor] = hello.max_version().clamp(0x0301, 0x0303).to_be_bytes();
        [21, major, minor, 0, 2, 2, code]
    };
    let profile = match (decision.action, &decision.profile) {
        (RuleAction::NoDecrypt, _) => {
            return Stream::Spliced {
                reason: SpliceReason::Policy,
                head: raw.to_vec(),
                sent: 0,
            }
        }
        (RuleAction::Block, _) | (_, None) => {
            return Stream::Blocked {
                reason: BlockReason::Rule,
                alert: alert(ALERT_ACCESS_DENIED),
                sent: 0,
            }
        }
        (_, Some(profile)) => profile,
    };
    if let Some((why, setting, code)) = client_shortfall(hello, profile) {
        return match setting {
            Undecryptable::Block => Stream::Blocked {
                reason: BlockReason::ClientUnsupported(why),
                alert: alert(code),
                sent: 0,
            },
            Undecryptable::Bypass => Stream::Spliced {
                reason: SpliceReason::ClientUnsupported(why),
                head: raw.to_vec(),
                sent: 0,
            },
        };
    }
    let tls = SplitTls::start_with(hello, raw, server, &profile.context, decision.inbound.clone(), keylog);
    Stream::Decrypting(Box::new(tls))
}

/// A client that offers less than the profile allows: what it lacks, the profile's
/// setting for it, and the alert it gets when blocked.
fn client_shortfall(hello: &ClientHello, profile: &ProfileContext) -> Option<(String, Undecryptable, u8)> {
    let p = &profile.profile;
    let names = crate::tls::names::version_name;
    if hello.max_version() < p.min_version {
        let why = format!(
            "unsupported version: the client offers at most {}, the profile {:?} requires {} or newer",
            names(hello.max_version()),
            profile.name,
            names(p.min_version)
        );
        return Some((why, profile.settings.unsupported_version, ALERT_PROTOCOL_VERSION));
    }
    let tls13 = hello.max_version() >= 0x0304 && p.max_version >= 0x0304;
    let shared = tls13 || hello.cipher_suites.iter().any(|id| profile.client_suites.contains(id));
    if !shared {
        let why = format!(
            "unsupported cipher: the client offers no cipher suite the profile {:?} allows",
            profile.name
        );
        return Some((why, profile.settings.unsupported_cipher, ALERT_HANDSHAKE_FAILURE));
    }
    None
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::trust::PinnedLeafs;
    use loupe_control::config::Profile as ProfileSettings;

    fn profile(edit: impl FnOnce(&mut ProfileSettings)) -> ProfileContext {
        let mut settings = ProfileSettings::builtin_default();
        edit(&mut settings);
        let trust = boring::x509::store::X509StoreBuilder::new().unwrap().build();
        ProfileContext::new(&settings, trust, PinnedLeafs::default()).unwrap()
    }

    fn hello(max_version: u16, suites: &[u16]) -> ClientHello {
        ClientHello {
            legacy_version: max_version.min(0x0303),
            supported_versions: if max_version >= 0x0304 {
                vec![0x0304, 0x0303]
            } else {
                Vec::new()
            },
            cipher_suites: suites.to_vec(),
            ..ClientHello::default()
        }
    }

    fn session_awaiting_hello() -> Session {
        use crate::policy::{ExclusionCache, PolicyInputs};
        let config = loupe_control::config::Config::default();
        let inputs = PolicyInputs {
            categories: Vec::new(),
            profiles: vec![Arc::new(profile(|_| {}))],
            inbound: std::collections::HashMap::new(),
        };
        let exclusions = ExclusionCache::new(std::time::Duration::from_secs(60), 8);
        let policy = Arc::new(Policy::build(&config, inputs, 7, exclusions).unwrap());
        let key = FlowKey {
            client: "198.18.0.1:40000".parse().unwrap(),
            server: "198.18.0.2:443".parse().unwrap(),
        };
        Session::new(1, key, policy)
    }

    #[test]
    fn a_client_silent_past_the_handshake_timeout_is_logged_at_the_client_hello() {
        let session = session_awaiting_hello();
        assert!(session.settling(), "awaiting the ClientHello is part of the handshake");
        let after = std::time::Duration::from_secs(30);
        let (record, _) = session.record(Some(EndReason::HandshakeTimeout(after)), ByteCounts::default());
        assert_eq!(record.outcome, Outcome::Aborted);
        assert_eq!(record.stage, Some(Stage::ClientHello));
        assert_eq!(
            record.end_reason,
            "handshake timeout: not done 30s after the SYN ([timeouts] handshake); both sides reset"
        );
        assert_eq!(
            record.error.as_deref(),
            Some("no complete ClientHello from the client: handshake timeout: not done 30s after the SYN ([timeouts] handshake); both sides reset")
        );
        assert_eq!(record.config_version, 7);
        // Without the timeout, the same session closed by the client says so.
        let (record, _) = session.record(Some(EndReason::Closed), ByteCounts::default());
        assert_eq!(
            record.end_reason,
            "the client closed before sending a complete ClientHello"
        );
    }

    #[test]
    fn timeouts_read_as_the_configuration_writes_them() {
        let idle = EndReason::IdleTimeout(std::time::Duration::from_secs(3600)).to_string();
        assert_eq!(
            idle,
            "idle timeout: no frame either way for 1h ([timeouts] idle); both sides reset"
        );
        assert_eq!(humanize(std::time::Duration::from_secs(90)), "90s");
        assert_eq!(humanize(std::time::Duration::from_secs(600)), "10m");
        assert_eq!(humanize(std::time::Duration::from_secs(2 * 86_400)), "2d");
    }

    #[test]
    fn state_names() {
        let names: Vec<&str> = SessionState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            ["handshake", "decrypting", "spliced", "blocked", "closing", "ended"]
        );
        let of = SessionState::of;
        // A finished pair is ended whatever the stream did.
        assert_eq!(of(StreamKind::Decrypting, Phase::Finished, true), SessionState::Ended);
        assert_eq!(of(StreamKind::Blocked, Phase::Finished, true), SessionState::Ended);
        // Connecting upstream, or awaiting the hello, or in a TLS handshake.
        assert_eq!(
            of(StreamKind::AwaitingHello, Phase::Connecting, false),
            SessionState::Handshake
        );
        assert_eq!(
            of(StreamKind::Spliced, Phase::Connecting, false),
            SessionState::Handshake
        );
        assert_eq!(
            of(StreamKind::AwaitingHello, Phase::Relaying, false),
            SessionState::Handshake
        );
        assert_eq!(
            of(StreamKind::Handshaking, Phase::Relaying, false),
            SessionState::Handshake
        );
        assert_eq!(
            of(StreamKind::Decrypting, Phase::Relaying, false),
            SessionState::Decrypting
        );
        assert_eq!(of(StreamKind::Spliced, Phase::Relaying, false), SessionState::Spliced);
        // Blocked stays blocked while its close goes out.
        assert_eq!(of(StreamKind::Blocked, Phase::Relaying, true), SessionState::Blocked);
        // A FIN, a reset or a failed TLS session: closing.
        assert_eq!(of(StreamKind::Decrypting, Phase::Relaying, true), SessionState::Closing);
        assert_eq!(of(StreamKind::Spliced, Phase::Relaying, true), SessionState::Closing);
        assert_eq!(of(StreamKind::Failed, Phase::Relaying, false), SessionState::Closing);
        assert_eq!(
            of(StreamKind::ClosedBeforeHello, Phase::Relaying, false),
            SessionState::Closing
        );
        // Every name parses back through the control filter's comparison.
        let filter = loupe_control::protocol::SessionFilter {
            state: Some("DECRYPTING".into()),
            ..Default::default()
        };
        let ip = "198.18.0.1".parse().unwrap();
        assert!(filter.matches(ip, ip, None, SessionState::Decrypting.as_str()));
    }

    /// TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA.
    const GCM: u16 = 0xc02f;
    const CBC_SHA: u16 = 0xc013;

    #[test]
    fn a_client_below_the_profile_minimum_gets_the_version_setting() {
        let p = profile(|_| {});
        let (why, setting, alert) = client_shortfall(&hello(0x0301, &[CBC_SHA]), &p).unwrap();
        assert_eq!(setting, Undecryptable::Block);
        assert_eq!(alert, ALERT_PROTOCOL_VERSION);
        assert!(
            why.contains("at most TLS 1.0") && why.contains("TLS 1.2 or newer"),
            "{why}"
        );
        let p = profile(|s| s.unsupported_version = Undecryptable::Bypass);
        assert_eq!(
            client_shortfall(&hello(0x0301, &[CBC_SHA]), &p).unwrap().1,
            Undecryptable::Bypass
        );
    }

    #[test]
    fn a_client_sharing_no_suite_gets_the_cipher_setting() {
        let p = profile(|_| {});
        // TLS 1.2 only, SHA-1 suites only: the default profile has none of them.
        let (why, setting, alert) = client_shortfall(&hello(0x0303, &[CBC_SHA]), &p).unwrap();
        assert_eq!((setting, alert), (Undecryptable::Block, ALERT_HANDSHAKE_FAILURE));
        assert!(why.starts_with("unsupported cipher"), "{why}");
        assert!(client_shortfall(&hello(0x0303, &[CBC_SHA, GCM]), &p).is_none());
        // TLS 1.3 suites are always shared when both speak TLS 1.3.
        assert!(client_shortfall(&hello(0x0304, &[0x1301]), &p).is_none());
    }

    #[test]
    fn policy_decisions_start_the_right_stream() {
        let p = Arc::new(profile(|_| {}));
        let decision = |action| Decision {
            rule: "r".into(),
            rule_index: Some(0),
            action,
            profile: matches!(action, RuleAction::Decrypt).then(|| Arc::clone(&p)),
            inbound: None,
            reason: String::new(),
        };
        let h = hello(0x0304, &[0x1301]);
        let server = "198.18.0.2:443".parse().unwrap();
        assert!(matches!(
            start(&h, b"raw", server, &decision(RuleAction::NoDecrypt), None),
            Stream::Spliced { reason: SpliceReason::Policy, ref head, .. } if head == b"raw"
        ));
        match start(&h, b"raw", server, &decision(RuleAction::Block), None) {
            Stream::Blocked { alert, .. } => assert_eq!(alert, [21, 3, 3, 0, 2, 2, ALERT_ACCESS_DENIED]),
            _ => panic!("a block rule blocks"),
        }
        assert!(matches!(
            start(&h, b"", server, &decision(RuleAction::Decrypt), None),
            Stream::Decrypting(_)
        ));
        assert!(matches!(
            start(&hello(0x0301, &[CBC_SHA]), b"", server, &decision(RuleAction::Decrypt), None),
            Stream::Blocked { reason: BlockReason::ClientUnsupported(_), alert, .. } if alert[6] == ALERT_PROTOCOL_VERSION
        ));
    }
}
