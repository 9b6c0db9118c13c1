//! A pinned worker: owns one queue of both ports, the flows that arrive on it, and their
//! TCP endpoints. The loop receives a batch, services only flows that had packets or whose
//! timer is due, flushes transmissions, and sleeps in poll(2) when there is nothing to do,
//! so its cost does not grow with idle flows. Nothing here allocates or locks per packet.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use loupe_control::protocol::{
    CaptureLeg, FlowView, SessionDetail, SessionFilter, SessionSummary, WorkerQuery, WorkerReport,
};

use smoltcp::iface::Interface;
use smoltcp::socket::tcp::State as TcpState;
use smoltcp::time::{Duration, Instant};
use xdpilone::xdp::XdpDesc;

use crate::capture::plaintext::PlaintextTap;
use crate::capture::CaptureTap;
use crate::eve::{self, AlertSubject, EveFlow, HttpLoupeFacts};
use crate::flow::{Direction, FlowId, FlowKey, FlowTable};
use crate::frame::{checksums_ok, parse_tcp_frame, MacAddr};
use crate::inspect::signatures::Action as SignatureAction;
use crate::latency::LatencyHistogram;
use crate::log_writer::{LogBatch, LogSink};
use crate::policy::{ExclusionKey, Policy};
use crate::probing::{PendingRecord, Probes, MAX_PROBES};
use crate::relay::{ByteCounts, EndReason, Phase, TcpPair, LINGER};
use crate::session::{Session, SessionState, TlsEnv};
use crate::tcp_device::{transparent_interface, FlowTap, FrameDevice, L2Header};
use crate::tls::forge::Forger;
use crate::tls::record::{rfc3339_utc_ms, Action, DecryptionRecord, NegotiatedFact, Outcome};
use crate::xsk::{Gathered, XskDrops, XskPort, BATCH};
use crossbeam_channel::{Receiver, Sender};

pub const INSIDE: usize = 0;
pub const OUTSIDE: usize = 1;

/// Segments one flow may emit per service round before others get their turn.
const EGRESS_BURST: usize = 64;
/// Longest sleep when idle: bounds how late a stop request is noticed.
const MAX_IDLE_WAIT_MS: i32 = 100;
/// Free TX frames per port kept while resetting flows at stop: a flow's service sends a
/// few frames on each leg at most.
const STOP_TX_ROOM: usize = 8;
/// How many times the stop waits 1 ms for the kernel to take frames before giving up.
const STOP_FLUSH_ROUNDS: usize = 200;
/// Probes have no timers of their own: poll them this often while any runs.
const PROBE_POLL_MS: i32 = 5;
/// Ended sessions whose details `session ID` still finds, per worker.
pub const ENDED_SESSIONS: usize = 512;
/// Distinct failure lines a worker counts; further ones are counted under `"other"`.
pub const MAX_FAILURE_KEYS: usize = 64;
/// The key failures beyond `MAX_FAILURE_KEYS` are counted under.
pub const OTHER_FAILURES: &str = "other";
/// Queries waiting for a worker (per worker).
pub const QUERY_QUEUE: usize = 16;
/// Presented chains waiting for the control thread (all workers together).
pub const CHAIN_QUEUE: usize = 64;
/// `load_permille` is published after at least this much wall time (µs).
const LOAD_WINDOW_US: i64 = 1_000_000;
/// How often the flow table is walked for `[timeouts]`: a timeout fires up to this late.
const SWEEP_INTERVAL: Duration = Duration::from_millis(1000);
/// A flow with no frame either way for this long gives its empty TCP buffers' pages back
/// to the kernel, and its session's empty byte queues to the allocator, at the next
/// sweep: idle sessions (keep-alive connections between a
/// user's clicks, most of an appliance's sessions) then hold no buffer memory, and a
/// busy one never pays the page faults of getting them back.
const IDLE_BUFFERS_AFTER: Duration = Duration::from_millis(1000);

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub queue: u32,
    pub inspect_ports: Vec<u16>,
    pub max_flows: usize,
    /// `[dataplane] max_half_open`: flows whose client has not completed its TCP
    /// handshake held at most (a new SYN beyond evicts the oldest).
    pub max_half_open: usize,
    /// `[dataplane] syn_proxy_above`: from this many half-open flows on, a SYN is answered
    /// by loupe before anything goes to the server.
    pub syn_proxy_above: usize,
    /// Bytes of TCP buffer per direction and side of a flow.
    pub tcp_buffer: usize,
    /// `[dataplane] forward_only`: frames are copied to the other port unchanged, and
    /// nothing else happens to them (the AF_XDP floor, for measurements).
    pub forward_only: bool,
    /// `[dataplane] busy_poll_us`: how long the worker keeps polling its RX rings after
    /// the last frame before sleeping (zero: it sleeps at once).
    pub busy_poll: std::time::Duration,
}

/// Counters a worker publishes; single writer, relaxed atomics, read by status queries.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub rx_frames: AtomicU64,
    pub tx_frames: AtomicU64,
    pub malformed_frames: AtomicU64,
    /// Frames whose IPv4 header or TCP checksum was wrong (damaged on the wire): dropped.
    pub bad_checksum_frames: AtomicU64,
    /// Segments of no known flow that are not a SYN (e.g. flows older than the daemon).
    pub orphan_segments: AtomicU64,
    pub flows_opened: AtomicU64,
    pub flows_closed: AtomicU64,
    pub flows_active: AtomicU64,
    pub flows_refused_table_full: AtomicU64,
    /// Flows whose client has not completed its TCP handshake (a gauge).
    pub half_open: AtomicU64,
    /// Half-open flows ended to make room for a new SYN (`max_half_open` reached).
    pub half_open_evicted: AtomicU64,
    /// SYNs loupe answered itself before connecting upstream (`syn_proxy_above` reached).
    pub syn_proxied: AtomicU64,
    /// Flows ended early because their client opened a new connection on the same
    /// 4-tuple after closing this one.
    pub flows_reused: AtomicU64,
    pub upstream_refused: AtomicU64,
    pub resets: AtomicU64,
    /// Flows loupe ended with resets because of `[timeouts] idle` and `handshake`.
    pub idle_timeouts: AtomicU64,
    pub handshake_timeouts: AtomicU64,
    /// `[dataplane] busy_poll_us`: spells spun before sleeping, and those a frame ended.
    pub busy_polls: AtomicU64,
    pub busy_poll_hits: AtomicU64,
    pub bytes_client_to_server: AtomicU64,
    pub bytes_server_to_client: AtomicU64,
    pub tx_no_frame: AtomicU64,
    /// Frames the kernel dropped before the worker saw them (`XDP_STATISTICS`, both
    /// ports): in total, because the RX ring was full, because the fill ring was empty.
    pub xsk_rx_dropped: AtomicU64,
    pub xsk_rx_ring_full: AtomicU64,
    pub xsk_fill_ring_empty: AtomicU64,
    pub sessions_decrypted: AtomicU64,
    pub sessions_blocked: AtomicU64,
    /// Sessions that failed before or while decrypting (spliced ones are not counted here).
    pub sessions_aborted: AtomicU64,
    /// Sessions relayed without decryption (policy, exclusion, not TLS).
    pub sessions_spliced: AtomicU64,
    pub log_write_errors: AtomicU64,
    /// Exclusions the control thread could not be told about (its queue was full).
    pub exclusions_dropped: AtomicU64,
    /// The version of the policy snapshot this worker runs, stored when it switches to
    /// it: the worker's acknowledgement of a published snapshot.
    pub config_version: AtomicU64,
    /// Thousandths of wall time the worker spent not sleeping in poll(2), over the last
    /// second or so (published about once a second).
    pub load_permille: AtomicU64,
    /// Presented chains the control thread could not be given (its queue was full or gone).
    pub chains_dropped: AtomicU64,
    /// HTTP transactions seen in decrypted sessions, and of those, requests a URL rule
    /// matched and requests loupe answered itself (blocked).
    pub http_transactions: AtomicU64,
    pub url_rule_hits: AtomicU64,
    pub http_blocked: AtomicU64,
    /// Sessions whose HTTP inspection stopped on malformed HTTP/1.1 or HTTP/2.
    pub http_protocol_errors: AtomicU64,
    /// EVE events that could not be written.
    pub eve_write_errors: AtomicU64,
    /// Ended sessions by policy action ([`Action::ALL`] order) and outcome
    /// ([`Outcome::ALL`] order): the metrics' `action` × `outcome` labels.
    pub sessions_by_verdict: [[AtomicU64; Outcome::ALL.len()]; Action::ALL.len()],
    /// From the client's SYN to both TLS handshakes done, per decrypted session.
    pub tls_handshake_latency: LatencyHistogram,
    /// From an HTTP request's first byte to its response's last, per transaction.
    pub http_request_latency: LatencyHistogram,
    /// Signatures that fired with `alert`, and with `drop` (the session or stream ended).
    pub signature_alerts: AtomicU64,
    pub signature_drops: AtomicU64,
}

/// What a worker needs to split TLS: built once by the daemon, one per worker.
pub struct WorkerTls {
    /// Clones share the CA, the leaf key and the certificate cache.
    pub forger: Forger,
    /// The writer thread of `<log-dir>/eve.json` and `decryption.jsonl`, shared by all
    /// workers; each hands it whole lines in batches.
    pub logs: LogSink,
    /// The plaintext pcap writer, when a rule exports pcap (`[export]`).
    pub export: Option<PlaintextTap>,
}

/// How a worker follows the policy: the current snapshot, newer ones from the control
/// thread, and where it reports servers to exclude.
pub struct WorkerPolicy {
    pub current: Arc<Policy>,
    pub updates: Receiver<Arc<Policy>>,
    pub exclusions: Sender<ExclusionRequest>,
}

/// How a worker talks with the control thread besides policy: queries it answers between
/// batches, and the chains of servers whose certificates did not verify.
pub struct WorkerControl {
    pub queries: Receiver<WorkerQuery>,
    /// Shared by all workers (bounded by `CHAIN_QUEUE`; a full queue drops and counts in
    /// `WorkerStats::chains_dropped`).
    pub chains: Sender<PresentedChain>,
    /// `Some(tap)` when a capture starts, `None` when it stops.
    pub capture: Receiver<Option<CaptureTap>>,
}

/// The certificate chain a server presented when its verification failed, for
/// `loupectl trust fetch HOST --accept`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedChain {
    pub server: SocketAddr,
    pub sni: Option<String>,
    /// DER, leaf first, exactly as presented.
    pub chain_der: Vec<Vec<u8>>,
    /// The session record's error line (`certificate verify failed: … (code 18, depth 0)`).
    pub verify_error: Option<String>,
    /// When the session's record was logged.
    pub seen: SystemTime,
}

/// A server this worker could not decrypt and whose profile says bypass.
#[derive(Debug, Clone)]
pub struct ExclusionRequest {
    pub key: ExclusionKey,
    pub why: String,
}

impl WorkerStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }
}

struct FlowState {
    pair: TcpPair,
    /// Index of the port the client is on.
    client_port: usize,
    client_mac: MacAddr,
    /// The address the client's frames were sent to (server or router).
    peer_mac: MacAddr,
    scheduled: Option<Instant>,
    ready: bool,
    session: Session,
    /// Set when both endpoints closed: the slot is released then (see `relay::LINGER`).
    release_at: Option<Instant>,
    /// When the SYN arrived (wall clock, for `started`; worker clock, for the age).
    started: SystemTime,
    opened: Instant,
    /// The batch time of the last frame either way.
    last_frame: Instant,
    /// `last_frame` as it was when the TCP buffers' pages went back to the kernel (see
    /// [`IDLE_BUFFERS_AFTER`]): equal to it while no frame came since.
    buffers_discarded_at: Option<Instant>,
    /// The client has not completed its TCP handshake yet.
    half_open: bool,
    /// Opened client-first (a SYN flood was on): while half-open it has cost the server
    /// nothing, and its client may be a spoofed address, so it ends without a record.
    syn_proxied: bool,
    /// Its handshake latency is recorded (once, when both TLS handshakes are done).
    handshake_timed: bool,
}

/// Takes a flow out of the worker's half-open count (`count`, published in `stats`): its
/// client completed the handshake, or the flow ended. Once only: a no-op after that.
fn leave_half_open(flow: &mut FlowState, count: &mut usize, stats: &WorkerStats) {
    if flow.half_open {
        flow.half_open = false;
        *count -= 1;
        stats.half_open.store(*count as u64, Ordering::Relaxed);
    }
}

impl FlowState {
    fn state(&self) -> SessionState {
        self.session.state(self.pair.phase, self.pair.closing())
    }

    fn toward_client(&self) -> L2Header {
        L2Header {
            src: self.peer_mac,
            dst: self.client_mac,
        }
    }
    fn toward_server(&self) -> L2Header {
        L2Header {
            src: self.client_mac,
            dst: self.peer_mac,
        }
    }
}

pub struct Worker {
    settings: WorkerSettings,
    ports: [XskPort; 2],
    client_iface: Interface,
    server_iface: Interface,
    flows: FlowTable<FlowState>,
    timers: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    ready: Vec<FlowId>,
    stats: Arc<WorkerStats>,
    tls: WorkerTls,
    policy: WorkerPolicy,
    probes: Probes,
    probe_done: Vec<PendingRecord>,
    next_session: u64,
    clock: std::time::Instant,
    control: WorkerControl,
    ended: EndedSessions,
    tally: SessionTally,
    load: LoadMeter,
    /// The running capture's tap, if any (taken from `control.capture` between batches).
    capture: Option<CaptureTap>,
    /// The port servers are on and the Ethernet addresses of the newest flow's frames
    /// toward its server: what a chain fetch's probe sends with (loupe does no ARP).
    toward_servers: Option<(usize, L2Header)>,
    /// When the flow table is next swept for timeouts, and the sweep's findings (kept
    /// to reuse its allocation).
    next_sweep: Instant,
    /// When a batch last received frames (for `busy_poll`).
    last_rx: std::time::Instant,
    expiring: Vec<(FlowId, EndReason)>,
    /// Half-open flows, oldest first; entries whose flow is gone or no longer half-open
    /// are skipped when met (and swept when they pile up).
    half_open_order: VecDeque<FlowId>,
    half_open: usize,
    /// EVE lines and decryption records not yet handed to the log writer thread.
    log_batch: LogBatch,
    /// When the batch's oldest line was queued (at a round's end), while it has any.
    log_batch_since: Option<Instant>,
}

impl Worker {
    #[expect(
        clippy::too_many_arguments,
        reason = "each argument has its own type: they cannot be passed in the wrong order"
    )]
    pub fn new(
        settings: WorkerSettings,
        mut inside: XskPort,
        outside: XskPort,
        stats: Arc<WorkerStats>,
        tls: WorkerTls,
        policy: WorkerPolicy,
        control: WorkerControl,
        probe: crate::tls::probe::ProbeContext,
    ) -> Worker {
        let clock = std::time::Instant::now();
        let now = Instant::from_micros(0);
        let seed = u64::from(std::process::id()) << 32 | u64::from(settings.queue);
        let mut device = FrameDevice {
            ingress: None,
            port: &mut inside,
            l2: L2Header::default(),
            tap: None,
        };
        let client_iface = transparent_interface(&mut device, seed ^ random_seed(), now);
        let server_iface = transparent_interface(&mut device, seed ^ random_seed().rotate_left(17), now);
        let max_flows = settings.max_flows;
        let settings_queue = settings.queue;
        stats.config_version.store(policy.current.version, Ordering::Relaxed);
        Worker {
            settings,
            ports: [inside, outside],
            client_iface,
            server_iface,
            flows: FlowTable::with_capacity(max_flows),
            timers: BinaryHeap::with_capacity(max_flows * 4),
            ready: Vec::with_capacity(max_flows),
            stats,
            // Session ids are unique across workers: the queue in the top bits.
            next_session: u64::from(settings_queue) << 48,
            tls,
            policy,
            probes: Probes::new(probe),
            probe_done: Vec::with_capacity(MAX_PROBES),
            clock,
            control,
            ended: EndedSessions::new(ENDED_SESSIONS),
            tally: SessionTally::default(),
            load: LoadMeter::new(now),
            capture: None,
            toward_servers: None,
            next_sweep: now + SWEEP_INTERVAL,
            last_rx: std::time::Instant::now(),
            expiring: Vec::with_capacity(max_flows),
            half_open_order: VecDeque::new(),
            half_open: 0,
            log_batch: LogBatch::default(),
            log_batch_since: None,
        }
    }

    fn now(&self) -> Instant {
        Instant::from_micros(self.clock.elapsed().as_micros() as i64)
    }

    pub fn run(mut self, stop: &AtomicBool) {
        let mut batch = [XdpDesc {
            addr: 0,
            len: 0,
            options: 0,
        }; BATCH];
        tracing::info!(queue = self.settings.queue, inside = %self.ports[INSIDE].name, outside = %self.ports[OUTSIDE].name, "worker running");
        while !stop.load(Ordering::Relaxed) {
            // Snapshots switch between batches; flows keep the one they started with.
            let mut switched = false;
            let mut signatures_changed = false;
            while let Ok(tap) = self.control.capture.try_recv() {
                self.capture = tap;
            }
            while let Ok(newer) = self.policy.updates.try_recv() {
                signatures_changed |= !same_signatures(&self.policy.current, &newer);
                self.policy.current = newer;
                switched = true;
            }
            if signatures_changed {
                // Rules apply to open sessions too: a reload must not wait for clients
                // to reconnect (keep-alive and HTTP/2 connections live for hours).
                let policy = Arc::clone(&self.policy.current);
                for (_, flow) in self.flows.iter_mut() {
                    flow.session.adopt_signatures(&policy);
                }
            }
            if switched {
                self.stats
                    .config_version
                    .store(self.policy.current.version, Ordering::Relaxed);
            }
            let now = self.now();
            // Queries too: answered from what the worker holds, never waited for.
            self.answer_queries(now);
            if let Some(permille) = self.load.tick(now) {
                self.stats.load_permille.store(permille, Ordering::Relaxed);
                self.publish_xsk_drops();
            }
            let mut received = 0;
            for port in [INSIDE, OUTSIDE] {
                let n = self.ports[port].receive(&mut batch);
                received += n;
                if self.settings.forward_only {
                    self.forward(port, &batch[..n]);
                    self.ports[port].refill();
                    continue;
                }
                for desc in &batch[..n] {
                    match self.ports[port].gather(desc) {
                        Gathered::Frame => self.handle_frame(port, desc, now),
                        Gathered::Pending => {}
                        Gathered::Packet(packet) => {
                            self.handle_packet(port, &packet, now);
                            self.ports[port].return_packet(packet);
                        }
                        Gathered::Dropped => WorkerStats::add(&self.stats.malformed_frames, 1),
                    }
                    self.ports[port].recycle(desc);
                }
                self.ports[port].refill();
            }
            self.expire_timers(now);
            if now >= self.next_sweep {
                self.next_sweep = now + SWEEP_INTERVAL;
                self.sweep_timeouts(now);
            }
            self.service_ready(now);
            if !self.probes.is_empty() {
                self.probes
                    .service(&mut self.server_iface, &mut self.ports, now, &mut self.probe_done);
                while let Some(pending) = self.probe_done.pop() {
                    self.log_session(pending);
                }
            }
            // After everything that ends sessions this round, so the wait below knows
            // when their lines are due.
            self.flush_logs_if_due(now);
            let mut backlog = false;
            for port in &mut self.ports {
                backlog |= port.flush();
            }
            self.publish_io_stats();
            if received > 0 && !self.settings.busy_poll.is_zero() {
                self.last_rx = std::time::Instant::now();
            }
            if received == 0 && self.ready.is_empty() && !backlog && !self.busy_poll() {
                self.wait(now);
            }
        }
        let open = self.flows.len();
        self.reset_open_flows();
        self.flush_logs();
        tracing::info!(queue = self.settings.queue, flows = open, "worker stopping");
    }

    /// On stop, every open flow is reset both ways and logged: its TCP state dies with
    /// the process, so the client would otherwise wait on a dead connection and the
    /// server hold one no one closes (until its own timeout; meanwhile a client reusing
    /// the port gets a challenge ACK instead of a SYN-ACK). Flows that already ended and
    /// linger are released too, so their records are written.
    fn reset_open_flows(&mut self) {
        let now = self.now();
        // (flow, still open): the process is ending, an allocation is fine here.
        let flows: Vec<(FlowId, bool)> = self
            .flows
            .iter_mut()
            .map(|(id, flow)| (id, flow.release_at.is_none() && flow.pair.phase != Phase::Finished))
            .collect();
        for (id, open) in flows {
            // A stop with thousands of open flows queues a reset per leg each: keep
            // room on the TX rings, or the resets past the free frames would be lost.
            self.wait_for_tx_room(STOP_TX_ROOM);
            let Some(flow) = self.flows.get_mut(id) else { continue };
            if open {
                flow.pair.expire(EndReason::Stopping);
            }
            flow.release_at = Some(now);
            self.service(id, now);
        }
        // The resets are queued on the TX rings: see them sent before the process (and
        // its sockets, rings and all) goes.
        self.flush_until(|port| port.tx_unconfirmed() == 0);
    }

    /// Hands queued frames to the kernel and takes back the sent ones until every port has
    /// `frames` free.
    fn wait_for_tx_room(&mut self, frames: usize) {
        self.flush_until(|port| port.free_frames() >= frames);
    }

    /// Flushes every port until `done` holds for all of them. In copy mode the kernel
    /// sends a few dozen frames per wakeup, so it goes on at once while that frees frames
    /// and waits a millisecond when it does not, [`STOP_FLUSH_ROUNDS`] times at most.
    fn flush_until(&mut self, done: impl Fn(&XskPort) -> bool) {
        let mut stalled = 0;
        while stalled < STOP_FLUSH_ROUNDS {
            if self.ports.iter().all(&done) {
                return;
            }
            let before: usize = self.ports.iter().map(XskPort::tx_unconfirmed).sum();
            for port in &mut self.ports {
                port.flush();
            }
            let after: usize = self.ports.iter().map(XskPort::tx_unconfirmed).sum();
            if after >= before {
                stalled += 1;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }

    /// `forward_only`: each received frame is copied, as it came, into a TX frame of the
    /// other port. A frame that finds no free TX frame even after reclaiming the
    /// completed ones is dropped and counted (`tx_no_frame`), as a switch would.
    fn forward(&mut self, from: usize, descs: &[XdpDesc]) {
        let [inside, outside] = &mut self.ports;
        let (source, sink) = if from == INSIDE {
            (inside, outside)
        } else {
            (outside, inside)
        };
        let mut copy_to_sink = |frame: &[u8]| {
            if !sink.can_transmit() {
                sink.flush();
            }
            // None: counted in the sink's `tx_no_frame`.
            let _ = sink.transmit(frame.len(), |buf| buf.copy_from_slice(frame));
        };
        for desc in descs {
            match source.gather(desc) {
                Gathered::Frame => match source.frame(desc) {
                    Some(frame) => copy_to_sink(frame),
                    None => WorkerStats::add(&self.stats.malformed_frames, 1),
                },
                Gathered::Pending => {}
                Gathered::Packet(packet) => {
                    copy_to_sink(&packet);
                    source.return_packet(packet);
                }
                Gathered::Dropped => WorkerStats::add(&self.stats.malformed_frames, 1),
            }
            source.recycle(desc);
        }
    }

    fn handle_frame(&mut self, port: usize, desc: &XdpDesc, now: Instant) {
        // SAFETY: the frame stays ours until `recycle`, which runs after this returns; the
        // TX path only writes frames taken from the free pool, never this one.
        let Some(frame) = (unsafe { self.ports[port].frame_detached(desc) }) else {
            WorkerStats::add(&self.stats.malformed_frames, 1);
            return;
        };
        self.handle_packet(port, frame, now);
    }

    /// One received Ethernet frame, whole: from one UMEM frame or gathered from several.
    fn handle_packet(&mut self, port: usize, frame: &[u8], now: Instant) {
        let tcp = match parse_tcp_frame(frame) {
            Ok(tcp) => tcp,
            Err(err) => {
                WorkerStats::add(&self.stats.malformed_frames, 1);
                tracing::debug!(port = %self.ports[port].name, %err, "dropping frame");
                return;
            }
        };
        let packet = &frame[tcp.ip_offset..tcp.ip_offset + tcp.ip_len];
        // Verified here rather than in smoltcp (whose check is off): the same work, once,
        // and a frame damaged on the wire is counted instead of vanishing.
        if !checksums_ok(packet, &tcp) {
            WorkerStats::add(&self.stats.bad_checksum_frames, 1);
            tracing::debug!(port = %self.ports[port].name, src = %tcp.src, dst = %tcp.dst, "dropping a frame with a bad checksum");
            return;
        }
        let src = SocketAddr::new(tcp.src, tcp.src_port);
        let dst = SocketAddr::new(tcp.dst, tcp.dst_port);
        if !self.probes.is_empty()
            && self
                .probes
                .ingest(src, dst, packet, &mut self.server_iface, &mut self.ports, now)
        {
            return;
        }
        let mut found = self.flows.lookup(src, dst);
        if let Some((old, Direction::ClientToServer)) = found {
            if tcp.is_syn() && self.client_is_done(old) {
                // The client opens a new connection on the 4-tuple of one it has closed
                // (Linux reuses ports quickly); the old flow only lingers for its server
                // side. Without this the SYN would reach the old socket, which answers
                // with an ACK of the old sequence, and the client would wait 1 s to retry.
                self.retire(old, now);
                found = None;
            }
        }
        let (id, direction) = match found {
            Some(found) => found,
            None if tcp.is_syn() && self.settings.inspect_ports.contains(&tcp.dst_port) => {
                match self.open_flow(
                    FlowKey {
                        client: src,
                        server: dst,
                    },
                    port,
                    tcp.src_mac,
                    tcp.dst_mac,
                    tcp.seq,
                    now,
                ) {
                    Some(id) => (id, Direction::ClientToServer),
                    None => return,
                }
            }
            None => {
                if !tcp.is_rst() {
                    WorkerStats::add(&self.stats.orphan_segments, 1);
                }
                return;
            }
        };
        let Some(flow) = self.flows.get_mut(id) else { return };
        flow.last_frame = now;
        match direction {
            Direction::ClientToServer => flow.session.packets.client_to_server += 1,
            Direction::ServerToClient => flow.session.packets.server_to_client += 1,
        }
        let key = match direction {
            Direction::ClientToServer => FlowKey {
                client: src,
                server: dst,
            },
            Direction::ServerToClient => FlowKey {
                client: dst,
                server: src,
            },
        };
        let tap = self.capture.as_ref().map(|tap| FlowTap {
            tap,
            key,
            sni: flow.session.sni_knowledge(),
            // A frame from the client, and loupe's answers to it, are the client leg.
            leg: match direction {
                Direction::ClientToServer => CaptureLeg::Client,
                Direction::ServerToClient => CaptureLeg::Server,
            },
        });
        if let Some(t) = tap {
            t.tap.frame(t.key, t.sni, t.leg, frame);
        }
        match direction {
            Direction::ClientToServer => {
                let mut device = FrameDevice {
                    ingress: Some(packet),
                    port: &mut self.ports[flow.client_port],
                    l2: flow.toward_client(),
                    tap,
                };
                self.client_iface
                    .poll_ingress_single(now, &mut device, &mut flow.pair.client);
                if flow.half_open && !matches!(flow.pair.client_state(), TcpState::Listen | TcpState::SynReceived) {
                    leave_half_open(flow, &mut self.half_open, &self.stats);
                    if flow.pair.phase == Phase::AwaitingClient {
                        if let Err(err) = flow.pair.connect_upstream(key, self.server_iface.context()) {
                            tracing::warn!(flow = %key, %err, "cannot connect upstream");
                            flow.pair.expire(EndReason::UpstreamRefused);
                        }
                    }
                }
            }
            Direction::ServerToClient => {
                let mut device = FrameDevice {
                    ingress: Some(packet),
                    port: &mut self.ports[1 - flow.client_port],
                    l2: flow.toward_server(),
                    tap,
                };
                self.server_iface
                    .poll_ingress_single(now, &mut device, &mut flow.pair.server);
            }
        }
        if !flow.ready {
            flow.ready = true;
            self.ready.push(id);
        }
    }

    fn open_flow(
        &mut self,
        key: FlowKey,
        client_port: usize,
        client_mac: MacAddr,
        peer_mac: MacAddr,
        client_isn: u32,
        now: Instant,
    ) -> Option<FlowId> {
        if self.half_open >= self.settings.max_half_open.min(self.settings.max_flows) {
            self.evict_oldest_half_open(now);
        }
        let syn_proxied = self.half_open >= self.settings.syn_proxy_above;
        let buffer = self.settings.tcp_buffer;
        let started = SystemTime::now();
        let policy = &self.policy.current;
        self.next_session += 1;
        let session_id = self.next_session;
        let (id, flow) = match self.flows.insert(key, || FlowState {
            pair: TcpPair::new(buffer),
            client_port,
            client_mac,
            peer_mac,
            scheduled: None,
            ready: false,
            session: Session::new(session_id, key, Arc::clone(policy)),
            release_at: None,
            started,
            opened: now,
            last_frame: now,
            buffers_discarded_at: None,
            half_open: true,
            syn_proxied,
            handshake_timed: false,
        }) {
            Ok(inserted) => inserted,
            Err(full) => {
                WorkerStats::add(&self.stats.flows_refused_table_full, 1);
                tracing::warn!(flow = %key, "{full}: SYN dropped");
                return None;
            }
        };
        flow.client_port = client_port;
        flow.client_mac = client_mac;
        flow.peer_mac = peer_mac;
        flow.scheduled = None;
        flow.ready = false;
        flow.release_at = None;
        flow.started = started;
        flow.opened = now;
        flow.last_frame = now;
        flow.buffers_discarded_at = None;
        flow.half_open = true;
        flow.syn_proxied = syn_proxied;
        flow.session = Session::new(session_id, key, Arc::clone(policy));
        if let Err(err) = flow
            .pair
            .open(key, client_isn, syn_proxied, self.server_iface.context())
        {
            tracing::warn!(flow = %key, %err, "cannot open flow");
            self.flows.remove(id);
            return None;
        }
        self.half_open += 1;
        self.half_open_order.push_back(id);
        if self.half_open_order.len() > 2 * self.half_open + 1024 {
            // Mostly flows that completed their handshakes: drop their entries.
            let flows = &mut self.flows;
            self.half_open_order
                .retain(|id| flows.get_mut(*id).is_some_and(|f| f.half_open));
        }
        self.stats.half_open.store(self.half_open as u64, Ordering::Relaxed);
        if syn_proxied {
            WorkerStats::add(&self.stats.syn_proxied, 1);
        }
        self.toward_servers = Some((
            1 - client_port,
            L2Header {
                src: client_mac,
                dst: peer_mac,
            },
        ));
        WorkerStats::add(&self.stats.flows_opened, 1);
        self.stats
            .flows_active
            .store(self.flows.len() as u64, Ordering::Relaxed);
        tracing::debug!(flow = %key, "flow opened");
        Some(id)
    }

    fn expire_timers(&mut self, now: Instant) {
        while let Some(&Reverse((at, index, generation))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let id = FlowId { index, generation };
            if let Some(flow) = self.flows.get_mut(id) {
                if flow.scheduled == Some(at) {
                    flow.scheduled = None;
                    if !flow.ready {
                        flow.ready = true;
                        self.ready.push(id);
                    }
                }
            }
        }
    }

    fn service_ready(&mut self, now: Instant) {
        let mut i = 0;
        // Flows re-queued during this round (more to send) are serviced next round.
        let count = self.ready.len();
        while i < count {
            let id = self.ready[i];
            i += 1;
            self.service(id, now);
        }
        self.ready.drain(..count);
    }

    fn service(&mut self, id: FlowId, now: Instant) {
        let Some(flow) = self.flows.get_mut(id) else { return };
        flow.ready = false;
        let before = flow.pair.bytes;
        let env = TlsEnv {
            certs: &mut self.tls.forger,
            now: SystemTime::now(),
        };
        flow.pair.relay(&mut flow.session.pump(env));
        // Checked per service, not per byte; a cheap match until the first success.
        if !flow.handshake_timed && flow.session.decrypted() {
            flow.handshake_timed = true;
            let since_syn = std::time::Duration::from_micros((now - flow.opened).total_micros());
            self.stats.tls_handshake_latency.observe(since_syn);
        }
        if let Some(tap) = &self.tls.export {
            let packets = flow.session.take_export_packets();
            if !packets.is_empty() {
                tap.send(packets);
            }
        }
        if flow.session.has_transactions() || flow.session.has_alerts() {
            let key = self.flows.key(id);
            if let Some(flow) = self.flows.get_mut(id) {
                queue_alert_events(&mut flow.session, key, &mut self.log_batch.eve, &self.stats);
                queue_http_events(&mut flow.session, key, &mut self.log_batch.eve, &self.stats);
            }
        }
        let mut more = false;
        let tap = match (&self.capture, self.flows.key(id)) {
            (Some(tap), Some(key)) => Some((tap, key)),
            _ => None,
        };
        let Some(flow) = self.flows.get_mut(id) else { return };
        let tap = tap.map(|(tap, key)| FlowTap {
            tap,
            key,
            sni: flow.session.sni_knowledge(),
            leg: CaptureLeg::Client,
        });
        let server_tap = tap.map(|t| FlowTap {
            leg: CaptureLeg::Server,
            ..t
        });
        {
            let mut device = FrameDevice {
                ingress: None,
                port: &mut self.ports[flow.client_port],
                l2: flow.toward_client(),
                tap,
            };
            more |= egress(&mut self.client_iface, &mut device, &mut flow.pair.client, now);
        }
        {
            let mut device = FrameDevice {
                ingress: None,
                port: &mut self.ports[1 - flow.client_port],
                l2: flow.toward_server(),
                tap: server_tap,
            };
            more |= egress(&mut self.server_iface, &mut device, &mut flow.pair.server, now);
        }
        // Sending may have freed buffer room for more relaying; the next round does it.
        let relayed = flow.pair.bytes.client_to_server != before.client_to_server
            || flow.pair.bytes.server_to_client != before.server_to_client;
        WorkerStats::add(
            &self.stats.bytes_client_to_server,
            flow.pair.bytes.client_to_server - before.client_to_server,
        );
        WorkerStats::add(
            &self.stats.bytes_server_to_client,
            flow.pair.bytes.server_to_client - before.server_to_client,
        );

        if flow.pair.phase == Phase::Finished && flow.release_at.is_none() {
            flow.release_at = Some(now + LINGER);
        }
        if flow.release_at.is_some_and(|at| at <= now) {
            let reason = flow.pair.end_reason.unwrap_or(EndReason::Closed);
            let bytes = flow.pair.bytes;
            if flow.half_open && (flow.syn_proxied || reason == EndReason::HalfOpenEvicted) {
                // Its client never completed a handshake: likely a spoofed source of a SYN
                // flood. A record each would flood the log; the counters tell it.
                self.finish(id, reason, bytes);
                return;
            }
            if let Some(tap) = &self.tls.export {
                flow.session.close_export(SystemTime::now());
                let packets = flow.session.take_export_packets();
                if !packets.is_empty() {
                    tap.send(packets);
                }
            }
            let (record, input) = flow.session.record(Some(reason), bytes);
            if let Some((key, why)) = flow.session.exclusion() {
                tracing::info!(server = %key, %why, "excluding the server from decryption");
                if self.policy.exclusions.try_send(ExclusionRequest { key, why }).is_err() {
                    WorkerStats::add(&self.stats.exclusions_dropped, 1);
                }
            }
            let pending = PendingRecord {
                record,
                input,
                started: flow.started,
                presented_chain: flow.session.take_presented_chain(),
                http: flow.session.http_detail(),
            };
            let probe_from = flow.session.server_refused_handshake().then(|| {
                (
                    flow.session.sni().map(str::to_string),
                    1 - flow.client_port,
                    flow.toward_server(),
                )
            });
            let key = self.flows.key(id);
            self.finish(id, reason, bytes);
            match (probe_from, key) {
                (Some((sni, server_port, l2)), Some(key)) => {
                    let flows = &self.flows;
                    let in_use = |local| flows.lookup(local, key.server).is_some();
                    let write_now = self.probes.consider(
                        pending,
                        key,
                        sni.as_deref(),
                        server_port,
                        l2,
                        &mut self.server_iface,
                        in_use,
                    );
                    if let Some(pending) = write_now {
                        self.log_session(pending);
                    }
                }
                _ => self.log_session(pending),
            }
            return;
        }
        if more || relayed {
            flow.ready = true;
            self.ready.push(id);
            return;
        }
        let next = [
            self.client_iface.poll_at(now, &flow.pair.client),
            self.server_iface.poll_at(now, &flow.pair.server),
            flow.release_at,
        ]
        .into_iter()
        .flatten()
        .min();
        if next == flow.scheduled {
            return;
        }
        flow.scheduled = next;
        if let Some(at) = next {
            if at <= now {
                flow.scheduled = None;
                flow.ready = true;
                self.ready.push(id);
                return;
            }
            if self.timers.len() == self.timers.capacity() {
                // Drop entries whose flow has been rescheduled or is gone, without reallocating.
                let flows = &mut self.flows;
                self.timers.retain(|Reverse((at, index, generation))| {
                    flows
                        .get_mut(FlowId {
                            index: *index,
                            generation: *generation,
                        })
                        .is_some_and(|f| f.scheduled == Some(*at))
                });
            }
            self.timers.push(Reverse((at, id.index, id.generation)));
        }
    }

    /// Ends the flows that outstayed `[timeouts]` of the current snapshot (live: a loaded
    /// policy applies to open flows too). A walk over the table about once a second:
    /// cheaper than a timer per flow re-armed on every frame.
    fn sweep_timeouts(&mut self, now: Instant) {
        let timeouts = &self.policy.current.timeouts;
        let idle = Duration::from_micros(timeouts.idle.as_micros() as u64);
        let handshake = Duration::from_micros(timeouts.handshake.as_micros() as u64);
        self.expiring.clear();
        for (id, flow) in self.flows.iter_mut() {
            if flow.release_at.is_some() || flow.pair.phase == Phase::Finished {
                continue;
            }
            if flow.session.settling() && now - flow.opened >= handshake {
                self.expiring
                    .push((id, EndReason::HandshakeTimeout(timeouts.handshake)));
            } else if now - flow.last_frame >= idle {
                self.expiring.push((id, EndReason::IdleTimeout(timeouts.idle)));
            } else if now - flow.last_frame >= IDLE_BUFFERS_AFTER
                && flow.buffers_discarded_at != Some(flow.last_frame)
                && flow.pair.discard_idle_buffers()
            {
                flow.session.release_idle_buffers();
                flow.buffers_discarded_at = Some(flow.last_frame);
            }
        }
        for i in 0..self.expiring.len() {
            let (id, reason) = self.expiring[i];
            if let Some(key) = self.flows.key(id) {
                tracing::debug!(flow = %key, %reason, "flow timed out");
            }
            let Some(flow) = self.flows.get_mut(id) else { continue };
            flow.pair.expire(reason);
            // The resets go out now; the slot is released (and the session logged) after
            // the usual linger.
            flow.release_at = Some(now + LINGER);
            self.service(id, now);
        }
    }

    /// Ends the oldest half-open flow to make room for a new SYN. One opened client-first
    /// has nothing upstream and a client that may not exist: it goes silently. One with
    /// an upstream connection resets it (and its paused client).
    fn evict_oldest_half_open(&mut self, now: Instant) {
        while let Some(id) = self.half_open_order.pop_front() {
            let Some(flow) = self.flows.get_mut(id) else { continue };
            if !flow.half_open || flow.release_at.is_some() {
                continue;
            }
            if flow.pair.phase == Phase::AwaitingClient {
                flow.pair.phase = Phase::Finished;
                self.finish(id, EndReason::HalfOpenEvicted, ByteCounts::default());
            } else {
                flow.pair.expire(EndReason::HalfOpenEvicted);
                flow.release_at = Some(now);
                self.service(id, now);
            }
            return;
        }
    }

    /// Whether loupe's client-facing socket of the flow has closed (or waits out
    /// TIME-WAIT): the client has nothing more to say on it.
    fn client_is_done(&mut self, id: FlowId) -> bool {
        self.flows
            .get_mut(id)
            .is_some_and(|flow| matches!(flow.pair.client_state(), TcpState::Closed | TcpState::TimeWait))
    }

    /// Ends a flow now, whatever its server side is doing (a reset goes to the server if
    /// it is not done), and logs it.
    fn retire(&mut self, id: FlowId, now: Instant) {
        let Some(flow) = self.flows.get_mut(id) else { return };
        if !matches!(flow.pair.server_state(), TcpState::Closed | TcpState::TimeWait) {
            flow.pair.server_socket().abort();
        }
        flow.pair.end_reason.get_or_insert(EndReason::Closed);
        flow.pair.phase = Phase::Finished;
        flow.release_at = Some(now);
        WorkerStats::add(&self.stats.flows_reused, 1);
        self.service(id, now);
    }

    fn finish(&mut self, id: FlowId, reason: EndReason, bytes: ByteCounts) {
        if let (Some(tap), Some(key), Some(flow)) = (&self.capture, self.flows.key(id), self.flows.get_mut(id)) {
            tap.flow_ended(key, flow.session.sni_knowledge());
        }
        if let Some(key) = self.flows.key(id) {
            tracing::debug!(flow = %key, %reason, c2s = bytes.client_to_server, s2c = bytes.server_to_client, "flow ended");
        }
        if let Some(flow) = self.flows.get_mut(id) {
            leave_half_open(flow, &mut self.half_open, &self.stats);
        }
        match reason {
            EndReason::HalfOpenEvicted => WorkerStats::add(&self.stats.half_open_evicted, 1),
            EndReason::UpstreamRefused => WorkerStats::add(&self.stats.upstream_refused, 1),
            EndReason::ClientReset | EndReason::ServerReset => WorkerStats::add(&self.stats.resets, 1),
            EndReason::IdleTimeout(_) => WorkerStats::add(&self.stats.idle_timeouts, 1),
            EndReason::HandshakeTimeout(_) => WorkerStats::add(&self.stats.handshake_timeouts, 1),
            // Drops are counted by the inspection engine (signature_drops).
            EndReason::Closed | EndReason::Stopping | EndReason::DroppedByInspection => {}
        }
        self.flows.remove(id);
        WorkerStats::add(&self.stats.flows_closed, 1);
        self.stats
            .flows_active
            .store(self.flows.len() as u64, Ordering::Relaxed);
    }

    /// Hands the batch to the log writer thread once it is due: it is large, or its
    /// first line waited [`LOG_FLUSH_DELAY`] (an idle worker wakes up for that).
    fn flush_logs_if_due(&mut self, now: Instant) {
        if self.log_batch.is_empty() {
            return;
        }
        let since = *self.log_batch_since.get_or_insert(now);
        if self.log_batch.is_full() || now - since >= LOG_FLUSH_DELAY {
            self.flush_logs();
        }
    }

    /// Hands the batch's lines to the log writer thread (one append per log, whole lines
    /// only).
    fn flush_logs(&mut self) {
        self.log_batch_since = None;
        let failed = self.tls.logs.take_failed_writes();
        WorkerStats::add(&self.stats.eve_write_errors, failed.eve);
        WorkerStats::add(&self.stats.log_write_errors, failed.decryption);
        if self.log_batch.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.log_batch, self.tls.logs.empty_batch());
        if let Err(lost) = self.tls.logs.send(batch) {
            WorkerStats::add(&self.stats.eve_write_errors, u64::from(!lost.eve.is_empty()));
            WorkerStats::add(&self.stats.log_write_errors, u64::from(!lost.decryption.is_empty()));
            tracing::error!("log writer thread gone: a batch of EVE lines and decryption records lost");
        }
    }

    /// Writes a session's record, counts it, keeps its detail in the ring of ended
    /// sessions, and hands the control thread the chain of a server that did not verify.
    /// Runs once per session (allocating is fine here, not per packet).
    fn log_session(&mut self, pending: PendingRecord) {
        let PendingRecord {
            mut record,
            input,
            started,
            presented_chain,
            http,
        } = pending;
        record.explain(&input);
        let record = &record;
        let counter = match record.outcome {
            Outcome::Decrypted => &self.stats.sessions_decrypted,
            Outcome::Blocked => &self.stats.sessions_blocked,
            Outcome::Spliced => &self.stats.sessions_spliced,
            Outcome::Aborted => &self.stats.sessions_aborted,
        };
        WorkerStats::add(counter, 1);
        if let (Some(action), Some(outcome)) = (
            Action::ALL.iter().position(|a| *a == record.action),
            Outcome::ALL.iter().position(|o| *o == record.outcome),
        ) {
            WorkerStats::add(&self.stats.sessions_by_verdict[action][outcome], 1);
        }
        self.tally.count(record);
        let now = self.now();
        let detail = SessionDetail {
            http,
            ..ended_detail(record, self.settings.queue, started)
        };
        self.ended.push(detail, now);
        let verify_failed = record.verify.as_ref().is_some_and(|v| !v.trusted || v.code != 0);
        // Without a chain there is nothing the operator could accept.
        if verify_failed && !presented_chain.is_empty() {
            let chain = PresentedChain {
                server: record.server(),
                sni: record.sni.clone(),
                chain_der: presented_chain,
                verify_error: record.error.clone(),
                seen: SystemTime::now(),
            };
            if self.control.chains.try_send(chain).is_err() {
                WorkerStats::add(&self.stats.chains_dropped, 1);
            }
        }
        if record.sni.is_some() || record.server_leg.version.is_some() {
            let flow = EveFlow {
                flow_id: record.session_id,
                session_id: record.session_id,
                client: record.client(),
                server: record.server(),
            };
            let event = eve::tls_event(SystemTime::now(), &flow, record);
            queue_eve(&mut self.log_batch.eve, &event, &self.stats);
        }
        if record.http.as_ref().is_some_and(|http| http.protocol_errors > 0) {
            WorkerStats::add(&self.stats.http_protocol_errors, 1);
        }
        // After the session's EVE lines, which the writer thread appends first: whoever
        // reads the record can already see the session, its events and its chain.
        if let Err(err) = record.append_line(&mut self.log_batch.decryption) {
            WorkerStats::add(&self.stats.log_write_errors, 1);
            tracing::error!(%err, session = record.session_id, "decryption record not serializable");
        }
    }

    /// Answers every query waiting, without blocking: replies are `try_send`, and a reply
    /// channel that is full or closed loses the answer (the control thread gave up).
    fn answer_queries(&mut self, now: Instant) {
        while let Ok(query) = self.control.queries.try_recv() {
            match query {
                WorkerQuery::Sessions { filter, reply } => {
                    let _ = reply.try_send(self.sessions(&filter, now));
                }
                WorkerQuery::Session { id, reply } => {
                    let _ = reply.try_send(self.session_detail(id, now));
                }
                WorkerQuery::Report { reply } => {
                    let _ = reply.try_send(self.report());
                }
                WorkerQuery::FetchChain {
                    server,
                    sni,
                    source,
                    reply,
                } => {
                    let Some((server_port, l2)) = self.toward_servers else {
                        let _ = reply.try_send(Err(
                            "no flow has crossed loupe yet, so the next hop's MAC address is unknown".into(),
                        ));
                        continue;
                    };
                    let flows = &self.flows;
                    let in_use = |local| flows.lookup(local, server).is_some();
                    self.probes.fetch(
                        server,
                        sni.as_deref(),
                        source,
                        server_port,
                        l2,
                        &mut self.server_iface,
                        in_use,
                        reply,
                    );
                }
            }
        }
    }

    /// The live sessions passing `filter`, newest first, at most its limit.
    fn sessions(&self, filter: &SessionFilter, now: Instant) -> Vec<SessionSummary> {
        let limit = filter.limit.unwrap_or(SessionFilter::DEFAULT_LIMIT);
        let mut found: Vec<(FlowKey, &FlowState, SessionState)> = self
            .flows
            .iter()
            .filter_map(|(_, key, flow)| {
                let state = flow.state();
                filter
                    .matches(key.client.ip(), key.server.ip(), flow.session.sni(), state.as_str())
                    .then_some((key, flow, state))
            })
            .collect();
        // Ids grow with every flow a worker opens: the highest is the newest.
        found.sort_unstable_by_key(|(_, flow, _)| Reverse(flow.session.id()));
        found.truncate(limit);
        found
            .into_iter()
            .map(|(key, flow, state)| SessionSummary {
                id: flow.session.id(),
                worker: self.settings.queue,
                client: key.client,
                server: key.server,
                sni: flow.session.sni().map(str::to_string),
                state: state.as_str().to_string(),
                action: flow.session.action().map(|a| a.as_str().to_string()),
                rule: flow.session.rule().map(str::to_string),
                bytes_client_to_server: flow.pair.bytes.client_to_server,
                bytes_server_to_client: flow.pair.bytes.server_to_client,
                age_secs: elapsed_secs(flow.opened, now),
                transactions: flow.session.transactions().0,
                last_http: flow.session.last_http(),
            })
            .collect()
    }

    /// The live session with this id, else a recently ended one, else None.
    fn session_detail(&self, id: u64, now: Instant) -> Option<SessionDetail> {
        // The worker's queue is in the id's top bits: another worker's session is not here.
        if id >> 48 != u64::from(self.settings.queue) {
            return None;
        }
        if let Some(flow) = self
            .flows
            .iter()
            .map(|(_, _, flow)| flow)
            .find(|flow| flow.session.id() == id)
        {
            return Some(self.live_detail(flow, now));
        }
        self.ended.find(id).map(|(detail, ended_at)| SessionDetail {
            idle_secs: elapsed_secs(*ended_at, now),
            ..detail.clone()
        })
    }

    fn live_detail(&self, flow: &FlowState, now: Instant) -> SessionDetail {
        let record = flow.session.live_record(flow.pair.bytes);
        let tcp = TcpFacts {
            live: true,
            state: flow.state(),
            client_tcp: flow.pair.client_state().to_string(),
            server_tcp: flow.pair.server_state().to_string(),
            started: rfc3339_utc_ms(flow.started),
            idle_secs: elapsed_secs(flow.last_frame, now),
            idle_timeout_secs: self.policy.current.timeouts.idle.as_secs(),
        };
        SessionDetail {
            // Undecided sessions (awaiting the ClientHello) have neither yet.
            rule: flow.session.rule().map(str::to_string),
            action: flow.session.action().map(|a| a.as_str().to_string()),
            decrypted: flow.session.decrypted(),
            http: flow.session.http_detail(),
            ..session_detail(&record, self.settings.queue, tcp)
        }
    }

    fn report(&self) -> WorkerReport {
        WorkerReport {
            queue: self.settings.queue,
            config_version: self.policy.current.version,
            flows: self.flows.len() as u64,
            outcomes: self.tally.outcomes(),
            failures: self.tally.failures(),
        }
    }

    /// The kernel's per-socket drop counters, summed over both ports (about once a
    /// second: each is a system call).
    fn publish_xsk_drops(&self) {
        let mut total = XskDrops::default();
        for drops in self.ports.iter().filter_map(XskPort::drops) {
            total.rx_dropped += drops.rx_dropped;
            total.rx_ring_full += drops.rx_ring_full;
            total.fill_ring_empty += drops.fill_ring_empty;
        }
        self.stats.xsk_rx_dropped.store(total.rx_dropped, Ordering::Relaxed);
        self.stats.xsk_rx_ring_full.store(total.rx_ring_full, Ordering::Relaxed);
        self.stats
            .xsk_fill_ring_empty
            .store(total.fill_ring_empty, Ordering::Relaxed);
    }

    fn publish_io_stats(&self) {
        let (mut rx, mut tx, mut no_frame) = (0, 0, 0);
        for port in &self.ports {
            rx += port.stats.rx_frames;
            tx += port.stats.tx_frames;
            no_frame += port.stats.tx_no_frame;
        }
        self.stats.rx_frames.store(rx, Ordering::Relaxed);
        self.stats.tx_frames.store(tx, Ordering::Relaxed);
        self.stats.tx_no_frame.store(no_frame, Ordering::Relaxed);
    }

    /// `[dataplane] busy_poll_us`: while the last frame is more recent than that, spins
    /// on both RX rings until a frame waits (true: go round again without sleeping) or the
    /// spell is over (false). Adaptive in that a worker with no recent traffic sleeps at
    /// once, and bounded by the setting: at most one spell per quiet period.
    fn busy_poll(&mut self) -> bool {
        if self.settings.busy_poll.is_zero() {
            return false;
        }
        let until = self.last_rx + self.settings.busy_poll;
        if std::time::Instant::now() >= until {
            return false;
        }
        let found = loop {
            if self.ports.iter().any(XskPort::rx_waiting) {
                break true;
            }
            if std::time::Instant::now() >= until {
                break false;
            }
            std::hint::spin_loop();
        };
        // Spinning is work: the load figure counts it, it is not sleep.
        WorkerStats::add(&self.stats.busy_polls, 1);
        if found {
            WorkerStats::add(&self.stats.busy_poll_hits, 1);
        }
        found
    }

    /// Sleeps until a frame arrives or the next timer is due.
    fn wait(&mut self, now: Instant) {
        let cap = if self.probes.is_empty() {
            MAX_IDLE_WAIT_MS
        } else {
            PROBE_POLL_MS
        };
        let timer = self.timers.peek().map(|Reverse((at, _, _))| *at);
        let logs_due = self.log_batch_since.map(|since| since + LOG_FLUSH_DELAY);
        let timeout = match timer.into_iter().chain(logs_due).min() {
            // Instant - Instant is an absolute difference: a deadline passed is 0 here.
            Some(at) => ((at.total_micros() - now.total_micros()).max(0) as u64)
                .div_ceil(1000)
                .min(cap as u64) as i32,
            None => cap,
        };
        let mut fds = [
            libc::pollfd {
                fd: self.ports[INSIDE].raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.ports[OUTSIDE].raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let sleep = std::time::Instant::now();
        // SAFETY: two valid pollfd entries.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        self.load.slept(sleep.elapsed().as_micros() as i64);
    }
}

/// Emits what a side's socket has to send, up to a burst. Returns whether more is waiting.
fn egress(
    iface: &mut Interface,
    device: &mut FrameDevice<'_>,
    sockets: &mut smoltcp::iface::SocketSet<'static>,
    now: Instant,
) -> bool {
    for _ in 0..EGRESS_BURST {
        if iface.poll_egress(now, device, sockets) == smoltcp::iface::PollResult::None {
            return false;
        }
    }
    true
}

fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most bytes.len() bytes into the buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        // Still unpredictable enough for ISNs, and never fails.
        return std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    }
    u64::from_ne_bytes(bytes)
}

/// Whole seconds from `since` to `now` (0 if `now` is earlier).
fn elapsed_secs(since: Instant, now: Instant) -> u64 {
    if now > since {
        (now - since).secs()
    } else {
        0
    }
}

/// What a session's detail needs beyond its decryption record: the flow's TCP side.
struct TcpFacts {
    live: bool,
    state: SessionState,
    /// Display of smoltcp's state of loupe's socket facing the client, and the server.
    client_tcp: String,
    server_tcp: String,
    /// RFC 3339 UTC of the SYN.
    started: String,
    idle_secs: u64,
    /// The timeout smoltcp enforces on the flow's sockets (`TcpPair::timeout`): it ends a
    /// flow only while data waits for acknowledgement (or the upstream connect); loupe
    /// has no idle timeout of its own. 0 for ended sessions.
    idle_timeout_secs: u64,
}

/// Log lines wait in the worker's batch at most this long (or until it is full, see
/// [`LogBatch::is_full`]): a write(2) per service round, or per sleep, was a system call
/// per request in the bench's profile, and a record's write(2) plus a wakeup of the
/// writer thread per session about 8% of a split handshake.
const LOG_FLUSH_DELAY: Duration = Duration::from_millis(10);

/// Appends `event` as one line to `batch`; a serialization failure leaves `batch` as it was.
fn queue_eve<E: serde::Serialize>(batch: &mut Vec<u8>, event: &E, stats: &WorkerStats) {
    if let Err(err) = crate::log_writer::append_json_line(batch, event) {
        WorkerStats::add(&stats.eve_write_errors, 1);
        tracing::error!(%err, "EVE event not serializable");
    }
}

/// Whether two snapshots run the same signatures (the same loaded set, or none).
fn same_signatures(a: &Policy, b: &Policy) -> bool {
    match (&a.signatures, &b.signatures) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

/// Queues an EVE `alert` event for each signature that fired on the session.
fn queue_alert_events(session: &mut Session, key: Option<FlowKey>, batch: &mut Vec<u8>, stats: &WorkerStats) {
    let Some((alerts, set)) = session.take_alerts() else {
        return;
    };
    for alert in &alerts {
        match alert.hit.action {
            SignatureAction::Alert => WorkerStats::add(&stats.signature_alerts, 1),
            SignatureAction::Drop => WorkerStats::add(&stats.signature_drops, 1),
            SignatureAction::Pass => {}
        }
    }
    let Some(key) = key else { return };
    let flow = EveFlow {
        flow_id: session.id(),
        session_id: session.id(),
        client: key.client,
        server: key.server,
    };
    for alert in &alerts {
        let rule = set.rule(alert.hit.rule);
        let at = alert.at.unwrap_or_else(SystemTime::now);
        let subject = match &alert.transaction {
            Some((index, tx)) => AlertSubject::Transaction { index: *index, tx },
            None => AlertSubject::Handshake {
                sni: session.sni(),
                version: session.client_tls_version(),
            },
        };
        let event = eve::alert_event(at, &flow, subject, rule);
        queue_eve(batch, &event, stats);
    }
}

/// Queues an EVE `http` event for each transaction the session finished, and counts them.
fn queue_http_events(session: &mut Session, key: Option<FlowKey>, batch: &mut Vec<u8>, stats: &WorkerStats) {
    let transactions = session.take_transactions();
    let rule = session.rule().unwrap_or("default");
    let action = session.action().unwrap_or(Action::Decrypt);
    let flow = key.map(|key| EveFlow {
        flow_id: session.id(),
        session_id: session.id(),
        client: key.client,
        server: key.server,
    });
    for done in &transactions {
        WorkerStats::add(&stats.http_transactions, 1);
        if done.url_rule.is_some() {
            WorkerStats::add(&stats.url_rule_hits, 1);
        }
        if done.blocked {
            WorkerStats::add(&stats.http_blocked, 1);
        }
        if let Some(took) = done
            .request_start
            .zip(done.end)
            .and_then(|(start, end)| end.duration_since(start).ok())
        {
            stats.http_request_latency.observe(took);
        }
        let Some(flow) = &flow else { continue };
        let facts = HttpLoupeFacts::of(done, rule, action);
        let at = done.end.unwrap_or_else(SystemTime::now);
        eve::http_event(at, flow, &done.transaction, &facts).write_line(batch);
    }
    session.keep_logged(transactions);
}

/// A session's detail from its record (live: `Session::live_record`; ended: the final,
/// explained one) and its TCP facts.
fn session_detail(record: &DecryptionRecord, worker: u32, tcp: TcpFacts) -> SessionDetail {
    // What the client saw, or what the server offered when the client leg never ran.
    let leg = |field: fn(&NegotiatedFact) -> &Option<String>| {
        field(&record.client_leg)
            .clone()
            .or_else(|| field(&record.server_leg).clone())
    };
    SessionDetail {
        id: record.session_id,
        worker,
        live: tcp.live,
        state: tcp.state.as_str().to_string(),
        c2s: FlowView {
            from: record.client(),
            to: record.server(),
            tcp_state: tcp.client_tcp,
            bytes: record.bytes_client_to_server,
            packets: record.packets_client_to_server,
        },
        s2c: FlowView {
            from: record.server(),
            to: record.client(),
            tcp_state: tcp.server_tcp,
            bytes: record.bytes_server_to_client,
            packets: record.packets_server_to_client,
        },
        started: tcp.started,
        idle_secs: tcp.idle_secs,
        idle_timeout_secs: tcp.idle_timeout_secs,
        rule: Some(record.rule.clone()),
        profile: record.profile.clone(),
        action: Some(record.action.as_str().to_string()),
        reason: record.reason.clone(),
        decrypted: record.outcome == Outcome::Decrypted,
        sni: record.sni.clone(),
        tls_version: leg(|l| &l.version),
        cipher: leg(|l| &l.cipher),
        alpn: leg(|l| &l.alpn),
        cert_subject: record.server_cert.as_ref().map(|c| c.subject.clone()),
        cert_issuer: record.server_cert.as_ref().map(|c| c.issuer.clone()),
        stage: record.stage.map(|s| s.as_str().to_string()),
        error: record.error.clone(),
        end_reason: (!tcp.live).then(|| record.end_reason.clone()),
        config_version: record.config_version,
        http: None,
    }
}

/// The detail kept for an ended session, from its final record.
fn ended_detail(record: &DecryptionRecord, worker: u32, started: SystemTime) -> SessionDetail {
    let closed = smoltcp::socket::tcp::State::Closed.to_string();
    let tcp = TcpFacts {
        live: false,
        state: SessionState::Ended,
        client_tcp: closed.clone(),
        server_tcp: closed,
        started: rfc3339_utc_ms(started),
        idle_secs: 0,
        idle_timeout_secs: 0,
    };
    session_detail(record, worker, tcp)
}

/// The details of the last sessions a worker ended, oldest first, with when they ended.
struct EndedSessions {
    ring: VecDeque<(SessionDetail, Instant)>,
    capacity: usize,
}

impl EndedSessions {
    fn new(capacity: usize) -> EndedSessions {
        EndedSessions {
            ring: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// Keeps `detail`, forgetting the oldest when full (the ring never grows).
    fn push(&mut self, detail: SessionDetail, ended_at: Instant) {
        if self.ring.len() == self.capacity {
            self.ring.pop_front();
        }
        self.ring.push_back((detail, ended_at));
    }

    fn find(&self, id: u64) -> Option<&(SessionDetail, Instant)> {
        self.ring.iter().rev().find(|(detail, _)| detail.id == id)
    }
}

/// Ended sessions by outcome, and failed or blocked ones by their error line (or, blocked
/// without an error, their reason), at most `MAX_FAILURE_KEYS` distinct lines.
#[derive(Debug, Default)]
struct SessionTally {
    outcomes: [u64; Outcome::ALL.len()],
    failures: HashMap<String, u64>,
    /// Failures whose line came after `MAX_FAILURE_KEYS` others.
    other: u64,
}

impl SessionTally {
    fn count(&mut self, record: &DecryptionRecord) {
        if let Some(i) = Outcome::ALL.iter().position(|o| *o == record.outcome) {
            self.outcomes[i] += 1;
        }
        let blocked_reason = (record.outcome == Outcome::Blocked)
            .then_some(record.reason.as_deref())
            .flatten();
        if let Some(line) = record.error.as_deref().or(blocked_reason) {
            self.count_failure(line);
        }
    }

    fn count_failure(&mut self, line: &str) {
        if let Some(n) = self.failures.get_mut(line) {
            *n += 1;
        } else if self.failures.len() < MAX_FAILURE_KEYS {
            self.failures.insert(line.to_string(), 1);
        } else {
            self.other += 1;
        }
    }

    /// Every outcome, zero or not, in `Outcome::ALL` order.
    fn outcomes(&self) -> Vec<(String, u64)> {
        Outcome::ALL
            .iter()
            .zip(self.outcomes)
            .map(|(o, n)| (o.as_str().to_string(), n))
            .collect()
    }

    /// Most frequent first (ties by name); `"other"` holds what did not fit.
    fn failures(&self) -> Vec<(String, u64)> {
        let mut list: Vec<(String, u64)> = self.failures.iter().map(|(k, n)| (k.clone(), *n)).collect();
        if self.other > 0 {
            list.push((OTHER_FAILURES.to_string(), self.other));
        }
        list.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        list
    }
}

/// The share of wall time a worker is busy: time outside poll(2), over windows of at
/// least `LOAD_WINDOW_US`.
#[derive(Debug)]
struct LoadMeter {
    window_start: Instant,
    slept_us: i64,
}

impl LoadMeter {
    fn new(now: Instant) -> LoadMeter {
        LoadMeter {
            window_start: now,
            slept_us: 0,
        }
    }

    fn slept(&mut self, micros: i64) {
        self.slept_us += micros;
    }

    /// The busy permille of the window ending `now`, once it is long enough (a new
    /// window starts then); None before.
    fn tick(&mut self, now: Instant) -> Option<u64> {
        if now < self.window_start {
            return None;
        }
        let span = (now - self.window_start).total_micros() as i64;
        if span < LOAD_WINDOW_US {
            return None;
        }
        let busy = span - self.slept_us.clamp(0, span);
        self.window_start = now;
        self.slept_us = 0;
        Some((busy * 1000 / span) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::record::{Action, CertFact, Stage, VerifyFact};

    fn record(id: u64, outcome: Outcome) -> DecryptionRecord {
        DecryptionRecord::new(
            id,
            "198.18.0.1:50000".parse().unwrap(),
            "198.18.0.2:443".parse().unwrap(),
            Action::Decrypt,
            outcome,
        )
    }

    #[test]
    fn failures_are_bounded_then_counted_as_other() {
        let mut tally = SessionTally::default();
        for i in 0..MAX_FAILURE_KEYS + 6 {
            let mut r = record(1, Outcome::Aborted);
            r.error = Some(format!("error {i}"));
            tally.count(&r);
        }
        // A known line still counts under its own name once the table is full.
        let mut r = record(1, Outcome::Aborted);
        r.error = Some("error 3".into());
        tally.count(&r);
        tally.count(&r);
        // Blocked without an error: by reason; decrypted without one: not a failure.
        let mut blocked = record(2, Outcome::Blocked);
        blocked.reason = Some("rule \"ads\" matched".into());
        tally.count(&blocked);
        tally.count(&record(3, Outcome::Decrypted));
        let mut spliced = record(4, Outcome::Spliced);
        spliced.reason = Some("no-decrypt rule".into());
        tally.count(&spliced);

        let failures = tally.failures();
        assert_eq!(failures[0], ("other".to_string(), 7));
        assert_eq!(failures[1], ("error 3".to_string(), 3));
        assert_eq!(failures.len(), MAX_FAILURE_KEYS + 1);
        assert!(failures.iter().all(|(k, _)| k != "no-decrypt rule"));
        assert!(
            !failures.iter().any(|(k, _)| k.starts_with("rule ")),
            "the table was full"
        );
        assert_eq!(
            tally.outcomes(),
            vec![
                ("decrypted".to_string(), 1),
                ("spliced".to_string(), 1),
                ("blocked".to_string(), 1),
                ("aborted".to_string(), MAX_FAILURE_KEYS as u64 + 8),
            ]
        );
        let mut small = SessionTally::default();
        small.count(&blocked);
        small.count(&blocked);
        let mut aborted = record(5, Outcome::Aborted);
        aborted.error = Some("x".into());
        small.count(&aborted);
        assert_eq!(
            small.failures(),
            vec![("rule \"ads\" matched".to_string(), 2), ("x".to_string(), 1)]
        );
    }

    #[test]
    fn the_ended_ring_keeps_the_last_sessions() {
        let mut ended = EndedSessions::new(ENDED_SESSIONS);
        let started = SystemTime::UNIX_EPOCH;
        for id in 0..ENDED_SESSIONS as u64 + 100 {
            ended.push(
                ended_detail(&record(id, Outcome::Decrypted), 0, started),
                Instant::from_secs(id as i64),
            );
        }
        assert_eq!(ended.ring.len(), ENDED_SESSIONS);
        assert_eq!(ended.ring.capacity(), ENDED_SESSIONS, "the ring never grows");
        assert!(ended.find(99).is_none());
        assert_eq!(ended.find(100).unwrap().0.id, 100);
        let (last, at) = ended.find(ENDED_SESSIONS as u64 + 99).unwrap();
        assert_eq!(*at, Instant::from_secs(ENDED_SESSIONS as i64 + 99));
        assert!(!last.live);
    }

    #[test]
    fn an_ended_detail_comes_from_the_record() {
        let mut r = record(7 | 3 << 48, Outcome::Blocked);
        r.sni = Some("api.example.test".into());
        r.rule = "inspect".into();
        r.profile = Some("default".into());
        r.stage = Some(Stage::UpstreamVerify);
        r.server_leg = NegotiatedFact {
            version: Some("TLSv1.3".into()),
            cipher: Some("TLS_AES_128_GCM_SHA256".into()),
            group: Some("X25519".into()),
            alpn: Some("h2".into()),
            hello_retry: false,
        };
        r.client_leg.alpn = Some("http/1.1".into());
        r.server_cert = Some(CertFact {
            subject: "CN=api.example.test".into(),
            issuer: "CN=Lab CA".into(),
            sans: vec![],
            not_before: String::new(),
            not_after: String::new(),
            sha256: String::new(),
            sha1: String::new(),
            serial: String::new(),
        });
        r.verify = Some(VerifyFact {
            code: 18,
            depth: 0,
            reason: "self signed certificate".into(),
            checked_name: "api.example.test".into(),
            trusted: false,
        });
        r.error = Some("certificate verify failed: self signed certificate (code 18, depth 0)".into());
        r.bytes_client_to_server = 517;
        r.bytes_server_to_client = 7;
        r.packets_client_to_server = 4;
        r.packets_server_to_client = 3;
        r.end_reason = "blocked_untrusted".into();
        r.config_version = 5;
        let started = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        let d = ended_detail(&r, 3, started);
        assert_eq!((d.id, d.worker, d.live), (7 | 3 << 48, 3, false));
        assert_eq!(d.state, "ended");
        assert_eq!(d.started, "2023-11-14T22:13:20.123Z");
        assert_eq!(d.c2s.from, r.client());
        assert_eq!(d.c2s.to, r.server());
        assert_eq!((d.c2s.bytes, d.c2s.packets), (517, 4));
        assert_eq!((d.s2c.from, d.s2c.to), (r.server(), r.client()));
        assert_eq!((d.s2c.bytes, d.s2c.packets), (7, 3));
        assert_eq!(
            (d.c2s.tcp_state.as_str(), d.s2c.tcp_state.as_str()),
            ("CLOSED", "CLOSED")
        );
        assert_eq!(d.rule.as_deref(), Some("inspect"));
        assert_eq!(d.action.as_deref(), Some("decrypt"));
        assert!(!d.decrypted);
        // The client leg first, the server's where the client leg has nothing.
        assert_eq!(d.tls_version.as_deref(), Some("TLSv1.3"));
        assert_eq!(d.alpn.as_deref(), Some("http/1.1"));
        assert_eq!(d.cert_subject.as_deref(), Some("CN=api.example.test"));
        assert_eq!(d.cert_issuer.as_deref(), Some("CN=Lab CA"));
        assert_eq!(d.stage.as_deref(), Some("upstream_verify"));
        assert_eq!(d.error, r.error);
        assert_eq!(d.end_reason.as_deref(), Some("blocked_untrusted"));
        assert_eq!(d.config_version, 5);
        assert_eq!(d.idle_timeout_secs, 0);
    }

    #[test]
    fn load_is_the_share_of_time_not_slept() {
        let mut load = LoadMeter::new(Instant::from_secs(10));
        load.slept(300_000);
        assert_eq!(load.tick(Instant::from_millis(10_500)), None, "under a second");
        load.slept(450_000);
        assert_eq!(load.tick(Instant::from_secs(11)), Some(250));
        // A new window started.
        assert_eq!(load.tick(Instant::from_millis(11_999)), None);
        assert_eq!(load.tick(Instant::from_secs(12)), Some(1000));
        // More sleep than wall time (clock granularity) reads as idle, not negative.
        load.slept(5_000_000);
        assert_eq!(load.tick(Instant::from_secs(13)), Some(0));
    }
}
