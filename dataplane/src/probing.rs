//! Probes in flight: after a server refused loupe's handshake, one TCP connection to it
//! (from the client's address, on a port loupe picks) carrying the wide-offer probe. The
//! session's log record waits for the answer (or a short deadline), so it can say what
//! the server would have accepted. Rate-limited and remembered per server and name.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration as StdDuration, Instant as StdInstant};

use smoltcp::iface::{Interface, SocketHandle, SocketSet, SocketStorage};
use smoltcp::socket::tcp::{self, State};
use smoltcp::time::Instant;
use smoltcp::wire::IpEndpoint;

use crate::flow::FlowKey;
use crate::tcp_device::{FrameDevice, L2Header};
use crate::tls::diagnosis::{DiagnosisInput, ProbeResult};
use crate::tls::probe::{ProbeContext, ProbeOutcome, ProbeTls};
use crate::tls::record::DecryptionRecord;
use crate::xsk::XskPort;

/// Probes running at once per worker; beyond, records are written without one.
pub const MAX_PROBES: usize = 8;
/// How long a record waits for its probe.
const PROBE_DEADLINE: StdDuration = StdDuration::from_secs(3);
/// One probe per server and name in this window; its answer is reused meanwhile.
const PROBE_MEMORY: StdDuration = StdDuration::from_secs(600);
const MEMORY_CAPACITY: usize = 1024;
const PROBE_BUFFER: usize = 16 * 1024;

type Target = (SocketAddr, Option<String>);

/// A record held back until its probe answers.
pub struct PendingRecord {
    pub record: DecryptionRecord,
    pub input: DiagnosisInput,
    /// When the flow's SYN arrived.
    pub started: std::time::SystemTime,
    /// The DER chain the server presented, leaf first, when it did not verify (else empty).
    pub presented_chain: Vec<Vec<u8>>,
    /// What inspection saw, for `loupectl session ID` once the session ended.
    pub http: Option<loupe_control::protocol::HttpDetail>,
}

struct Probe {
    key: FlowKey,
    target: Target,
    port: usize,
    l2: L2Header,
    sockets: SocketSet<'static>,
    handle: SocketHandle,
    tls: ProbeTls,
    purpose: Purpose,
    deadline: StdInstant,
}

/// Why a probe runs: to complete a refused session's record, or to fetch the chain a
/// server presents for `loupectl trust fetch`.
enum Purpose {
    Diagnose(Box<PendingRecord>),
    FetchChain(FetchReply),
}

/// Where a chain fetch answers: the chain (DER, leaf first) or why there is none.
pub type FetchReply = crossbeam_channel::Sender<Result<Vec<Vec<u8>>, String>>;

pub struct Probes {
    context: ProbeContext,
    running: Vec<Probe>,
    memory: HashMap<Target, (StdInstant, Option<ProbeResult>)>,
    next_port: u16,
}

impl Probes {
    pub fn new(context: ProbeContext) -> Probes {
        Probes {
            context,
            running: Vec::with_capacity(MAX_PROBES),
            memory: HashMap::with_capacity(MEMORY_CAPACITY),
            next_port: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Starts a probe for a refused session (which then holds the record: None), or fills
    /// in what a recent probe learnt and hands the record back to be written now.
    #[allow(clippy::too_many_arguments)]
    pub fn consider(
        &mut self,
        mut pending: PendingRecord,
        flow: FlowKey,
        sni: Option<&str>,
        server_port: usize,
        l2: L2Header,
        iface: &mut Interface,
        port_in_use: impl Fn(SocketAddr) -> bool,
    ) -> Option<PendingRecord> {
        let target: Target = (flow.server, sni.map(str::to_string));
        let now = StdInstant::now();
        if let Some((at, result)) = self.memory.get(&target) {
            if now.duration_since(*at) < PROBE_MEMORY {
                pending.input.probe = *result;
                return Some(pending);
            }
        }
        if self.running.len() >= MAX_PROBES || !self.remember(target.clone(), now, None) {
            return Some(pending);
        }
        let Some(local) = self.free_port(flow, &port_in_use) else {
            return Some(pending);
        };
        tracing::debug!(server = %flow.server, sni, from = %local, "probing a server that refused the handshake");
        match self.launch(
            local,
            flow.server,
            target,
            sni,
            server_port,
            l2,
            iface,
            Purpose::Diagnose(Box::new(pending)),
        ) {
            Ok(()) => None,
            Err((err, purpose)) => {
                tracing::warn!(%err, "cannot start a probe");
                match purpose {
                    Purpose::Diagnose(pending) => Some(*pending),
                    Purpose::FetchChain(_) => None,
                }
            }
        }
    }

    /// Fetches the chain `server` presents, from `source` (an address behind the inside
    /// port that answers ARP for itself) on a port no flow uses. The answer goes to
    /// `reply` once the handshake completed, failed, or the deadline passed.
    #[allow(clippy::too_many_arguments)]
    pub fn fetch(
        &mut self,
        server: SocketAddr,
        sni: Option<&str>,
        source: std::net::IpAddr,
        server_port: usize,
        l2: L2Header,
        iface: &mut Interface,
        port_in_use: impl Fn(SocketAddr) -> bool,
        reply: FetchReply,
    ) {
        if self.running.len() >= MAX_PROBES {
            let _ = reply.try_send(Err(format!("{MAX_PROBES} probes are running already; try again")));
            return;
        }
        let from = FlowKey {
            client: SocketAddr::new(source, 0),
            server,
        };
        let Some(local) = self.free_port(from, &port_in_use) else {
            let _ = reply.try_send(Err(format!("no free port on {source} to probe from")));
            return;
        };
        let target: Target = (server, sni.map(str::to_string));
        tracing::info!(%server, sni, from = %local, "probing a server for its certificate chain");
        if let Err((err, Purpose::FetchChain(reply))) = self.launch(
            local,
            server,
            target,
            sni,
            server_port,
            l2,
            iface,
            Purpose::FetchChain(reply),
        ) {
            let _ = reply.try_send(Err(err));
        }
    }

    /// Opens the probe's TCP connection and starts its TLS; gives the purpose back on
    /// failure.
    #[allow(clippy::too_many_arguments)]
    fn launch(
        &mut self,
        local: SocketAddr,
        server: SocketAddr,
        target: Target,
        sni: Option<&str>,
        server_port: usize,
        l2: L2Header,
        iface: &mut Interface,
        purpose: Purpose,
    ) -> Result<(), (String, Purpose)> {
        let tls = match ProbeTls::start(&self.context, sni) {
            Ok(tls) => tls,
            Err(err) => return Err((err, purpose)),
        };
        let mut sockets = SocketSet::new(vec![SocketStorage::EMPTY]);
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; PROBE_BUFFER]),
            tcp::SocketBuffer::new(vec![0u8; PROBE_BUFFER]),
        );
        let remote = IpEndpoint::new(server.ip().into(), server.port());
        let local_end = IpEndpoint::new(local.ip().into(), local.port());
        if let Err(err) = socket.connect(iface.context(), remote, local_end) {
            return Err((format!("cannot connect a probe: {err}"), purpose));
        }
        let handle = sockets.add(socket);
        self.running.push(Probe {
            key: FlowKey { client: local, server },
            target,
            port: server_port,
            l2,
            sockets,
            handle,
            tls,
            purpose,
            deadline: StdInstant::now() + PROBE_DEADLINE,
        });
        Ok(())
    }

    /// Remembers a target; false when the memory is full of recent entries.
    fn remember(&mut self, target: Target, now: StdInstant, result: Option<ProbeResult>) -> bool {
        if self.memory.len() >= MEMORY_CAPACITY && !self.memory.contains_key(&target) {
            self.memory.retain(|_, (at, _)| now.duration_since(*at) < PROBE_MEMORY);
            if self.memory.len() >= MEMORY_CAPACITY {
                return false;
            }
        }
        self.memory.insert(target, (now, result));
        true
    }

    /// A port on the client's address that no flow or probe uses (the probe speaks as
    /// the client: the appliance has no address of its own on the wire).
    fn free_port(&mut self, flow: FlowKey, in_use: &impl Fn(SocketAddr) -> bool) -> Option<SocketAddr> {
        for _ in 0..64 {
            self.next_port = self.next_port.wrapping_add(1);
            let port = 40_000 + self.next_port % 20_000;
            let local = SocketAddr::new(flow.client.ip(), port);
            if !in_use(local) && !self.running.iter().any(|p| p.key.client == local) {
                return Some(local);
            }
        }
        None
    }

    /// Whether a segment from `src` to `dst` belongs to a probe; if so it is consumed.
    pub fn ingest(
        &mut self,
        src: SocketAddr,
        dst: SocketAddr,
        packet: &[u8],
        iface: &mut Interface,
        ports: &mut [XskPort; 2],
        now: Instant,
    ) -> bool {
        let Some(probe) = self
            .running
            .iter_mut()
            .find(|p| p.key.server == src && p.key.client == dst)
        else {
            return false;
        };
        let mut device = FrameDevice {
            ingress: Some(packet),
            port: &mut ports[probe.port],
            l2: probe.l2,
            tap: None,
        };
        iface.poll_ingress_single(now, &mut device, &mut probe.sockets);
        true
    }

    /// Moves the probes on; returns the records whose probe is over.
    pub fn service(
        &mut self,
        iface: &mut Interface,
        ports: &mut [XskPort; 2],
        now: Instant,
        done: &mut Vec<PendingRecord>,
    ) {
        let wall = StdInstant::now();
        let mut i = 0;
        while i < self.running.len() {
            let probe = &mut self.running[i];
            let socket = probe.sockets.get_mut::<tcp::Socket>(probe.handle);
            if socket.can_send() {
                let n = socket.send_slice(probe.tls.pending_to_server()).unwrap_or(0);
                probe.tls.consume_to_server(n);
            }
            while socket.can_recv() {
                let n = socket
                    .recv(|bytes| {
                        let n = probe.tls.push_from_server(bytes);
                        (n, n)
                    })
                    .unwrap_or(0);
                if n == 0 {
                    break;
                }
            }
            if matches!(socket.state(), State::CloseWait | State::Closed | State::TimeWait) {
                probe.tls.server_closed();
            }
            let outcome = probe.tls.advance().cloned();
            let socket = probe.sockets.get_mut::<tcp::Socket>(probe.handle);
            let over = outcome.is_some() || wall >= probe.deadline || socket.state() == State::Closed;
            if over {
                // Done asking: a reset ends the server's side at once.
                socket.abort();
            }
            let mut device = FrameDevice {
                ingress: None,
                port: &mut ports[probe.port],
                l2: probe.l2,
                tap: None,
            };
            for _ in 0..16 {
                if iface.poll_egress(now, &mut device, &mut probe.sockets) == smoltcp::iface::PollResult::None {
                    break;
                }
            }
            if !over {
                i += 1;
                continue;
            }
            let finished = self.running.swap_remove(i);
            match finished.purpose {
                Purpose::FetchChain(reply) => {
                    let chain = finished.tls.server_chain_der();
                    let answer = match (&outcome, chain.is_empty()) {
                        (_, false) => Ok(chain),
                        (Some(ProbeOutcome::Refused(why)), true) => Err(format!("the server refused the probe: {why}")),
                        (_, true) => Err(format!(
                            "no certificate from {} within {} s",
                            finished.key.server,
                            PROBE_DEADLINE.as_secs()
                        )),
                    };
                    let _ = reply.try_send(answer);
                }
                Purpose::Diagnose(mut pending) => {
                    let result = match outcome {
                        Some(ProbeOutcome::Picked(result)) => Some(result),
                        Some(ProbeOutcome::Refused(why)) => {
                            tracing::debug!(server = %finished.key.server, why, "the server refused the probe too");
                            None
                        }
                        None => None,
                    };
                    self.memory.insert(finished.target.clone(), (wall, result));
                    pending.input.probe = result;
                    done.push(*pending);
                }
            }
        }
    }
}
