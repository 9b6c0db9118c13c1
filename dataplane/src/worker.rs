//! A pinned worker: owns one queue of both ports, the flows that arrive on it, and their
//! TCP endpoints. The loop receives a batch, services only flows that had packets or whose
//! timer is due, flushes transmissions, and sleeps in poll(2) when there is nothing to do,
//! so its cost does not grow with idle flows. Nothing here allocates or locks per packet.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use smoltcp::iface::Interface;
use smoltcp::time::Instant;
use xdpilone::xdp::XdpDesc;

use crate::flow::{Direction, FlowId, FlowKey, FlowTable};
use crate::frame::{parse_tcp_frame, MacAddr};
use crate::policy::{ExclusionKey, Policy};
use crate::probing::{PendingRecord, Probes, MAX_PROBES};
use crate::relay::{ByteCounts, EndReason, Phase, TcpPair, LINGER};
use crate::session::{Session, TlsEnv};
use crate::tcp_device::{transparent_interface, FrameDevice, L2Header};
use crate::tls::forge::Forger;
use crate::tls::record::{DecryptionLog, Outcome};
use crate::xsk::{XskPort, BATCH};
use crossbeam_channel::{Receiver, Sender};

pub const INSIDE: usize = 0;
pub const OUTSIDE: usize = 1;

/// Segments one flow may emit per service round before others get their turn.
const EGRESS_BURST: usize = 64;
/// Longest sleep when idle: bounds how late a stop request is noticed.
const MAX_IDLE_WAIT_MS: i32 = 100;
/// Probes have no timers of their own: poll them this often while any runs.
const PROBE_POLL_MS: i32 = 5;

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub queue: u32,
    pub inspect_ports: Vec<u16>,
    pub max_flows: usize,
    /// Bytes of TCP buffer per direction and side of a flow.
    pub tcp_buffer: usize,
}

/// Counters a worker publishes; single writer, relaxed atomics, read by status queries.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub rx_frames: AtomicU64,
    pub tx_frames: AtomicU64,
    pub malformed_frames: AtomicU64,
    /// Segments of no known flow that are not a SYN (e.g. flows older than the daemon).
    pub orphan_segments: AtomicU64,
    pub flows_opened: AtomicU64,
    pub flows_closed: AtomicU64,
    pub flows_active: AtomicU64,
    pub flows_refused_table_full: AtomicU64,
    pub upstream_refused: AtomicU64,
    pub resets: AtomicU64,
    pub bytes_client_to_server: AtomicU64,
    pub bytes_server_to_client: AtomicU64,
    pub tx_no_frame: AtomicU64,
    pub sessions_decrypted: AtomicU64,
    pub sessions_blocked: AtomicU64,
    pub sessions_aborted: AtomicU64,
    pub log_write_errors: AtomicU64,
    /// Exclusions the control thread could not be told about (its queue was full).
    pub exclusions_dropped: AtomicU64,
}

/// What a worker needs to split TLS: built once by the daemon, one per worker.
pub struct WorkerTls {
    /// Clones share the CA, the leaf key and the certificate cache.
    pub forger: Forger,
    pub log: Arc<DecryptionLog>,
}

/// How a worker follows the policy: the current snapshot, newer ones from the control
/// thread, and where it reports servers to exclude.
pub struct WorkerPolicy {
    pub current: Arc<Policy>,
    pub updates: Receiver<Arc<Policy>>,
    pub exclusions: Sender<ExclusionRequest>,
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
}

impl FlowState {
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
}

impl Worker {
    pub fn new(
        settings: WorkerSettings,
        mut inside: XskPort,
        outside: XskPort,
        stats: Arc<WorkerStats>,
        tls: WorkerTls,
        policy: WorkerPolicy,
        probe: crate::tls::probe::ProbeContext,
    ) -> Worker {
        let clock = std::time::Instant::now();
        let now = Instant::from_micros(0);
        let seed = u64::from(std::process::id()) << 32 | u64::from(settings.queue);
        let mut device = FrameDevice {
            ingress: None,
            port: &mut inside,
            l2: L2Header::default(),
        };
        let client_iface = transparent_interface(&mut device, seed ^ random_seed(), now);
        let server_iface = transparent_interface(&mut device, seed ^ random_seed().rotate_left(17), now);
        let max_flows = settings.max_flows;
        let settings_queue = settings.queue;
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
            while let Ok(newer) = self.policy.updates.try_recv() {
                self.policy.current = newer;
            }
            let now = self.now();
            let mut received = 0;
            for port in [INSIDE, OUTSIDE] {
                let n = self.ports[port].receive(&mut batch);
                received += n;
                for desc in &batch[..n] {
                    self.handle_frame(port, desc, now);
                    self.ports[port].recycle(desc);
                }
                self.ports[port].refill();
            }
            self.expire_timers(now);
            self.service_ready(now);
            if !self.probes.is_empty() {
                self.probes
                    .service(&mut self.server_iface, &mut self.ports, now, &mut self.probe_done);
                while let Some(pending) = self.probe_done.pop() {
                    self.log_session(pending);
                }
            }
            let mut backlog = false;
            for port in &mut self.ports {
                backlog |= port.flush();
            }
            self.publish_io_stats();
            if received == 0 && self.ready.is_empty() && !backlog {
                self.wait(now);
            }
        }
        tracing::info!(queue = self.settings.queue, flows = self.flows.len(), "worker stopping");
    }

    fn handle_frame(&mut self, port: usize, desc: &XdpDesc, now: Instant) {
        // SAFETY: the frame stays ours until `recycle`, which runs after this returns; the
        // TX path only writes frames taken from the free pool, never this one.
        let Some(frame) = (unsafe { self.ports[port].frame_detached(desc) }) else {
            WorkerStats::add(&self.stats.malformed_frames, 1);
            return;
        };
        let tcp = match parse_tcp_frame(frame) {
            Ok(tcp) => tcp,
            Err(err) => {
                WorkerStats::add(&self.stats.malformed_frames, 1);
                tracing::debug!(port = %self.ports[port].name, %err, "dropping frame");
                return;
            }
        };
        let packet = &frame[tcp.ip_offset..tcp.ip_offset + tcp.ip_len];
        let src = SocketAddr::new(tcp.src, tcp.src_port);
        let dst = SocketAddr::new(tcp.dst, tcp.dst_port);
        if !self.probes.is_empty()
            && self
                .probes
                .ingest(src, dst, packet, &mut self.server_iface, &mut self.ports, now)
        {
            return;
        }
        let (id, direction) = match self.flows.lookup(src, dst) {
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
        match direction {
            Direction::ClientToServer => flow.session.packets.client_to_server += 1,
            Direction::ServerToClient => flow.session.packets.server_to_client += 1,
        }
        match direction {
            Direction::ClientToServer => {
                let mut device = FrameDevice {
                    ingress: Some(packet),
                    port: &mut self.ports[flow.client_port],
                    l2: flow.toward_client(),
                };
                self.client_iface
                    .poll_ingress_single(now, &mut device, &mut flow.pair.client);
            }
            Direction::ServerToClient => {
                let mut device = FrameDevice {
                    ingress: Some(packet),
                    port: &mut self.ports[1 - flow.client_port],
                    l2: flow.toward_server(),
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
    ) -> Option<FlowId> {
        let buffer = self.settings.tcp_buffer;
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
        flow.session = Session::new(session_id, key, Arc::clone(policy));
        if let Err(err) = flow.pair.open(key, self.server_iface.context()) {
            tracing::warn!(flow = %key, %err, "cannot open flow");
            self.flows.remove(id);
            return None;
        }
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
        };
        flow.pair.relay(&mut flow.session.pump(env));
        let mut more = false;
        {
            let mut device = FrameDevice {
                ingress: None,
                port: &mut self.ports[flow.client_port],
                l2: flow.toward_client(),
            };
            more |= egress(&mut self.client_iface, &mut device, &mut flow.pair.client, now);
        }
        {
            let mut device = FrameDevice {
                ingress: None,
                port: &mut self.ports[1 - flow.client_port],
                l2: flow.toward_server(),
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
            let (record, input) = flow.session.record(Some(reason), bytes);
            if let Some((key, why)) = flow.session.exclusion() {
                tracing::info!(server = %key, %why, "excluding the server from decryption");
                if self.policy.exclusions.try_send(ExclusionRequest { key, why }).is_err() {
                    WorkerStats::add(&self.stats.exclusions_dropped, 1);
                }
            }
            let pending = PendingRecord { record, input };
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

    fn finish(&mut self, id: FlowId, reason: EndReason, bytes: ByteCounts) {
        if let Some(key) = self.flows.key(id) {
            tracing::debug!(flow = %key, reason = reason.as_str(), c2s = bytes.client_to_server, s2c = bytes.server_to_client, "flow ended");
        }
        match reason {
            EndReason::UpstreamRefused => WorkerStats::add(&self.stats.upstream_refused, 1),
            EndReason::ClientReset | EndReason::ServerReset => WorkerStats::add(&self.stats.resets, 1),
            EndReason::Closed => {}
        }
        self.flows.remove(id);
        WorkerStats::add(&self.stats.flows_closed, 1);
        self.stats
            .flows_active
            .store(self.flows.len() as u64, Ordering::Relaxed);
    }

    fn log_session(&self, pending: PendingRecord) {
        let PendingRecord { mut record, input } = pending;
        record.explain(&input);
        let record = &record;
        let counter = match record.outcome {
            Outcome::Decrypted => &self.stats.sessions_decrypted,
            Outcome::Blocked => &self.stats.sessions_blocked,
            Outcome::Aborted | Outcome::Spliced => &self.stats.sessions_aborted,
        };
        WorkerStats::add(counter, 1);
        if let Err(err) = self.tls.log.write(record) {
            WorkerStats::add(&self.stats.log_write_errors, 1);
            tracing::error!(%err, session = record.session_id, "decryption log write failed");
        }
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

    /// Sleeps until a frame arrives or the next timer is due.
    fn wait(&self, now: Instant) {
        let cap = if self.probes.is_empty() {
            MAX_IDLE_WAIT_MS
        } else {
            PROBE_POLL_MS
        };
        let timeout = match self.timers.peek() {
            Some(Reverse((at, _, _))) => ((*at - now).total_micros().div_ceil(1000) as i32).clamp(0, cap),
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
        // SAFETY: two valid pollfd entries.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
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
