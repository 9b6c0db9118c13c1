//! Decrypted export, sans-IO: the plaintext of a decrypted session as a synthetic TCP
//! connection, frame by frame, for a pcap file that Wireshark, tshark, Zeek and Suricata
//! read as clear HTTP (HTTP/2 with prior knowledge for `h2` sessions: the connection
//! preface is in the stream).
//!
//! A [`SyntheticFlow`] carries the session's real addresses and ports. It writes Ethernet
//! II + IPv4 or IPv6 + TCP frames: a three-way handshake (MSS and window scale options),
//! the plaintext in segments of at most one MSS (1460 bytes over IPv4, 1440 over IPv6, so
//! every frame fits a 1500-byte MTU), a pure ACK from the receiver after each write and
//! after every [`ACK_EVERY`] segments of a long one, and a FIN/ACK close (or a reset).
//! Sequence and acknowledgement numbers are consistent both ways; IP and TCP checksums
//! are valid. No TLS: only plaintext goes in.
//!
//! Nothing here reads a clock or a file: times are passed in, frames come out in a
//! `Vec<SyntheticPacket>` the caller hands to the writer (`crate::capture::plaintext`).
//! Each packet is one allocation: export is opt-in per rule, like a capture, and a
//! deliberate exception to "the per-packet path allocates nothing".
//!
//! A session whose rule exports `pcap` holds a [`SessionExport`]: it wraps the session's
//! inspector ([`SessionExport::tee`]) and so sees the plaintext as the client saw it, and
//! the worker drains its packets ([`SessionExport::take_packets`]) to the writer every
//! round. [`SyntheticFlow`] is the connection underneath, usable alone: `open`,
//! `client_data` / `server_data`, `fin` per side, `close` or `reset`.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::SystemTime;

use loupe_control::config::ExportKind;

use super::{Inspector, Pass, Relay};

/// What is exported of a decrypted session: its rule's `export` list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Exports {
    /// The plaintext, as a [`SyntheticFlow`] in the plaintext pcap files.
    pub pcap: bool,
    /// Both legs' TLS secrets in the key log (`crate::tls::keylog`).
    pub keylog: bool,
}

impl Exports {
    pub fn from_config(kinds: &[ExportKind]) -> Exports {
        Exports {
            pcap: kinds.contains(&ExportKind::Pcap),
            keylog: kinds.contains(&ExportKind::Keylog),
        }
    }

    /// Whether anything is exported.
    pub fn any(self) -> bool {
        self.pcap || self.keylog
    }
}

/// The client's MAC in synthetic frames (locally administered, unicast).
pub const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x6c, 0x70, 0x01];
/// The server's MAC in synthetic frames (locally administered, unicast).
pub const SERVER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x6c, 0x70, 0x02];
/// Segment payload over IPv4 (1500-byte MTU less 20 bytes of IP and 20 of TCP).
pub const MSS_IPV4: usize = 1460;
/// Segment payload over IPv6 (1500-byte MTU less 40 bytes of IP and 20 of TCP).
pub const MSS_IPV6: usize = 1440;
/// The receiver acknowledges at least every this many segments of one write.
pub const ACK_EVERY: usize = 16;
/// Window scale announced in the handshake: the window field 65535 means 8 MiB.
pub const WINDOW_SCALE: u8 = 7;
/// The largest frame a flow writes (Ethernet + IPv6 + TCP with options + one MSS).
pub const MAX_FRAME: usize = ETHERNET_LEN + IPV6_LEN + TCP_LEN + MSS_IPV6;

const ETHERNET_LEN: usize = 14;
const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;
const TCP_LEN: usize = 20;
/// MSS (4 bytes), NOP, window scale (3 bytes): in the SYN and the SYN/ACK.
const SYN_OPTIONS_LEN: usize = 8;
const TTL: u8 = 64;
const WINDOW: u16 = u16::MAX;
const PROTO_TCP: u8 = 6;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

/// One frame of the synthetic flow and when it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticPacket {
    pub at: SystemTime,
    /// A whole Ethernet frame (no FCS).
    pub frame: Vec<u8>,
}

/// Which end of the flow sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

impl Side {
    fn peer(self) -> Side {
        match self {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        }
    }
}

/// Where the flow is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing written yet: the handshake comes first.
    New,
    Open,
    /// Both FINs acknowledged, or reset: nothing more is written.
    Closed,
}

/// One direction's sender state.
#[derive(Debug, Clone, Copy)]
struct Half {
    addr: IpAddr,
    port: u16,
    mac: [u8; 6],
    /// The sequence number of the next byte this end sends.
    next_seq: u32,
    /// Its next IPv4 identification.
    ip_id: u16,
    fin_sent: bool,
}

/// A synthetic TCP connection carrying a decrypted session's plaintext. Sans-IO; see the
/// module doc. Data after its direction's FIN, or anything after `close` or `reset`, is
/// ignored (the methods return `false`).
#[derive(Debug, Clone)]
pub struct SyntheticFlow {
    client: Half,
    server: Half,
    ipv6: bool,
    mss: usize,
    phase: Phase,
}

impl SyntheticFlow {
    /// A flow between the session's real client and server. Initial sequence numbers are
    /// derived from the addresses (deterministic, distinct per 4-tuple). Mixed families
    /// (one end IPv4, the other IPv6) are written as IPv6 with IPv4-mapped addresses.
    pub fn new(client: SocketAddr, server: SocketAddr) -> SyntheticFlow {
        let isn = isn_of(client, server);
        SyntheticFlow::with_isns(client, server, isn, isn.rotate_left(16) ^ 0x5a5a_a5a5)
    }

    /// A flow with chosen initial sequence numbers.
    pub fn with_isns(client: SocketAddr, server: SocketAddr, client_isn: u32, server_isn: u32) -> SyntheticFlow {
        let (mut client_ip, mut server_ip) = (client.ip().to_canonical(), server.ip().to_canonical());
        if client_ip.is_ipv4() != server_ip.is_ipv4() {
            client_ip = IpAddr::V6(mapped(client_ip));
            server_ip = IpAddr::V6(mapped(server_ip));
        }
        let ipv6 = client_ip.is_ipv6();
        let half = |addr, port, mac, isn| Half {
            addr,
            port,
            mac,
            next_seq: isn,
            ip_id: (isn >> 16) as u16,
            fin_sent: false,
        };
        SyntheticFlow {
            client: half(client_ip, client.port(), CLIENT_MAC, client_isn),
            server: half(server_ip, server.port(), SERVER_MAC, server_isn),
            ipv6,
            mss: if ipv6 { MSS_IPV6 } else { MSS_IPV4 },
            phase: Phase::New,
        }
    }

    /// The payload of a full segment.
    pub fn mss(&self) -> usize {
        self.mss
    }

    /// Whether `close` or `reset` ended the flow.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Whether the handshake was written (by `open` or any later call).
    pub fn is_opened(&self) -> bool {
        self.phase != Phase::New
    }

    /// The three-way handshake (SYN, SYN/ACK, ACK). Idempotent: the data and close methods
    /// open the flow themselves when it is new.
    pub fn open(&mut self, at: SystemTime, out: &mut Vec<SyntheticPacket>) {
        if self.phase != Phase::New {
            return;
        }
        self.phase = Phase::Open;
        self.segment(at, Side::Client, SYN, &[], out);
        self.client.next_seq = self.client.next_seq.wrapping_add(1);
        self.segment(at, Side::Server, SYN | ACK, &[], out);
        self.server.next_seq = self.server.next_seq.wrapping_add(1);
        self.segment(at, Side::Client, ACK, &[], out);
    }

    /// Plaintext the client sent.
    pub fn client_data(&mut self, at: SystemTime, data: &[u8], out: &mut Vec<SyntheticPacket>) -> bool {
        self.data(at, Side::Client, data, out)
    }

    /// Plaintext the server sent.
    pub fn server_data(&mut self, at: SystemTime, data: &[u8], out: &mut Vec<SyntheticPacket>) -> bool {
        self.data(at, Side::Server, data, out)
    }

    /// Plaintext `side` sent: segments of at most one MSS (PSH on the last), each
    /// acknowledging everything the peer sent, then the peer's ACK.
    pub fn data(&mut self, at: SystemTime, side: Side, data: &[u8], out: &mut Vec<SyntheticPacket>) -> bool {
        self.open(at, out);
        if self.phase == Phase::Closed || self.half(side).fin_sent {
            return false;
        }
        let count = data.len().div_ceil(self.mss);
        for (index, chunk) in data.chunks(self.mss).enumerate() {
            let last = index + 1 == count;
            self.segment(at, side, if last { PSH | ACK } else { ACK }, chunk, out);
            let half = self.half_mut(side);
            half.next_seq = half.next_seq.wrapping_add(chunk.len() as u32);
            if last || (index + 1) % ACK_EVERY == 0 {
                self.segment(at, side.peer(), ACK, &[], out);
            }
        }
        true
    }

    /// `side` will send nothing more: its FIN/ACK, and the peer's ACK of it. Returns false
    /// (and writes nothing) when it already sent its FIN or the flow is closed.
    pub fn fin(&mut self, at: SystemTime, side: Side, out: &mut Vec<SyntheticPacket>) -> bool {
        self.open(at, out);
        if self.phase == Phase::Closed || self.half(side).fin_sent {
            return false;
        }
        self.segment(at, side, FIN | ACK, &[], out);
        let half = self.half_mut(side);
        half.next_seq = half.next_seq.wrapping_add(1);
        half.fin_sent = true;
        self.segment(at, side.peer(), ACK, &[], out);
        if self.client.fin_sent && self.server.fin_sent {
            self.phase = Phase::Closed;
        }
        true
    }

    /// The end of the connection: the client's FIN/ACK, the server's FIN/ACK, the client's
    /// last ACK (the FINs not sent yet, and their ACKs). Returns false when already closed.
    pub fn close(&mut self, at: SystemTime, out: &mut Vec<SyntheticPacket>) -> bool {
        self.open(at, out);
        match (self.phase, self.client.fin_sent, self.server.fin_sent) {
            (Phase::Closed, _, _) => false,
            (_, false, false) => {
                self.segment(at, Side::Client, FIN | ACK, &[], out);
                self.client.next_seq = self.client.next_seq.wrapping_add(1);
                self.client.fin_sent = true;
                self.segment(at, Side::Server, FIN | ACK, &[], out);
                self.server.next_seq = self.server.next_seq.wrapping_add(1);
                self.server.fin_sent = true;
                self.segment(at, Side::Client, ACK, &[], out);
                self.phase = Phase::Closed;
                true
            }
            (_, true, _) => self.fin(at, Side::Server, out),
            (_, false, true) => self.fin(at, Side::Client, out),
        }
    }

    /// An abort: `side` resets the connection (RST/ACK). Returns false when already closed.
    pub fn reset(&mut self, at: SystemTime, side: Side, out: &mut Vec<SyntheticPacket>) -> bool {
        self.open(at, out);
        if self.phase == Phase::Closed {
            return false;
        }
        self.segment(at, side, RST | ACK, &[], out);
        self.phase = Phase::Closed;
        true
    }

    fn half(&self, side: Side) -> &Half {
        match side {
            Side::Client => &self.client,
            Side::Server => &self.server,
        }
    }

    fn half_mut(&mut self, side: Side) -> &mut Half {
        match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        }
    }

    /// Writes one frame from `side`: its next sequence number and, unless SYN alone, an
    /// acknowledgement of everything the peer sent. Does not advance the sequence numbers.
    fn segment(&mut self, at: SystemTime, side: Side, flags: u8, payload: &[u8], out: &mut Vec<SyntheticPacket>) {
        let ipv6 = self.ipv6;
        let mss = self.mss as u16;
        let (from, to) = match side {
            Side::Client => (&mut self.client, &self.server),
            Side::Server => (&mut self.server, &self.client),
        };
        let options = if flags & SYN != 0 { SYN_OPTIONS_LEN } else { 0 };
        let tcp_len = TCP_LEN + options + payload.len();
        let ip_len = if ipv6 { IPV6_LEN } else { IPV4_LEN };
        let mut frame = Vec::with_capacity(ETHERNET_LEN + ip_len + tcp_len);

        // Ethernet II.
        frame.extend_from_slice(&to.mac);
        frame.extend_from_slice(&from.mac);
        frame.extend_from_slice(&(if ipv6 { 0x86ddu16 } else { 0x0800u16 }).to_be_bytes());

        // IP.
        match (from.addr, to.addr) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let start = frame.len();
                frame.extend_from_slice(&[0x45, 0]);
                frame.extend_from_slice(&((IPV4_LEN + tcp_len) as u16).to_be_bytes());
                frame.extend_from_slice(&from.ip_id.to_be_bytes());
                frame.extend_from_slice(&0x4000u16.to_be_bytes()); // DF, offset 0
                frame.extend_from_slice(&[TTL, PROTO_TCP, 0, 0]);
                frame.extend_from_slice(&src.octets());
                frame.extend_from_slice(&dst.octets());
                let checksum = finish(sum(0, &frame[start..]));
                frame[start + 10..start + 12].copy_from_slice(&checksum.to_be_bytes());
                from.ip_id = from.ip_id.wrapping_add(1);
            }
            (src, dst) => {
                frame.extend_from_slice(&0x6000_0000u32.to_be_bytes());
                frame.extend_from_slice(&(tcp_len as u16).to_be_bytes());
                frame.extend_from_slice(&[PROTO_TCP, TTL]);
                frame.extend_from_slice(&mapped(src).octets());
                frame.extend_from_slice(&mapped(dst).octets());
            }
        }

        // TCP.
        let start = frame.len();
        let ack = if flags & ACK != 0 { to.next_seq } else { 0 };
        frame.extend_from_slice(&from.port.to_be_bytes());
        frame.extend_from_slice(&to.port.to_be_bytes());
        frame.extend_from_slice(&from.next_seq.to_be_bytes());
        frame.extend_from_slice(&ack.to_be_bytes());
        frame.push((((TCP_LEN + options) / 4) as u8) << 4);
        frame.push(flags);
        frame.extend_from_slice(&WINDOW.to_be_bytes());
        frame.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        if options != 0 {
            frame.extend_from_slice(&[2, 4]);
            frame.extend_from_slice(&mss.to_be_bytes());
            frame.extend_from_slice(&[1, 3, 3, WINDOW_SCALE]);
        }
        frame.extend_from_slice(payload);

        // The pseudo-header (RFC 9293 §3.1, RFC 8200 §8.1) and the segment.
        let pseudo = match (from.addr, to.addr) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let s = sum(sum(0, &src.octets()), &dst.octets());
                sum(s, &[0, PROTO_TCP]) + tcp_len as u32
            }
            (src, dst) => {
                let s = sum(sum(0, &mapped(src).octets()), &mapped(dst).octets());
                s + tcp_len as u32 + u32::from(PROTO_TCP)
            }
        };
        let checksum = finish(sum(pseudo, &frame[start..]));
        frame[start + 16..start + 18].copy_from_slice(&checksum.to_be_bytes());
        out.push(SyntheticPacket { at, frame });
    }
}

/// One decrypted session's plaintext export: its [`SyntheticFlow`] and the packets not yet
/// handed to the writer. The session wraps its inspector with [`SessionExport::tee`] for
/// each round, so the export sees the plaintext as the client saw it:
/// - client data: every byte the client sent (also a request the inspection blocked);
/// - server data: every byte delivered toward the client: the server's plaintext the
///   inspector forwarded, and what the inspector queued for the client itself (an answer
///   to a blocked request, a rewritten HTTP/2 frame), in the order they go out.
///
/// The flow opens when both handshakes are done (`Inspector::established`), each end's
/// FIN follows `client_ended` / `server_ended`, and [`SessionExport::close`] or
/// [`SessionExport::reset`] end it. A session that never got that far exports nothing.
/// Packets collect in the session until [`SessionExport::take_packets`]: drain them every
/// round (they grow with the round's plaintext only).
#[derive(Debug, Clone)]
pub struct SessionExport {
    flow: SyntheticFlow,
    packets: Vec<SyntheticPacket>,
}

impl SessionExport {
    /// The export of a session between `client` and `server` (the flow's real addresses).
    pub fn new(client: SocketAddr, server: SocketAddr) -> SessionExport {
        SessionExport {
            flow: SyntheticFlow::new(client, server),
            packets: Vec::new(),
        }
    }

    /// `inner` as the split-TLS session should call it this round, with the export
    /// watching; `now` stamps the packets.
    pub fn tee<'a>(&'a mut self, inner: &'a mut dyn Inspector, now: SystemTime) -> ExportTee<'a> {
        ExportTee {
            export: self,
            inner,
            now,
        }
    }

    /// The session ended: FIN/ACK both ways (those not sent yet). Nothing if it never got
    /// past the handshakes.
    pub fn close(&mut self, now: SystemTime) {
        if self.flow.is_opened() {
            self.flow.close(now, &mut self.packets);
        }
    }

    /// The session was aborted: `side` resets. Nothing if it never got past the handshakes.
    pub fn reset(&mut self, now: SystemTime, side: Side) {
        if self.flow.is_opened() {
            self.flow.reset(now, side, &mut self.packets);
        }
    }

    /// The packets written since the last call, oldest first.
    pub fn take_packets(&mut self) -> Vec<SyntheticPacket> {
        std::mem::take(&mut self.packets)
    }

    /// Packets waiting for [`SessionExport::take_packets`].
    pub fn pending_packets(&self) -> usize {
        self.packets.len()
    }

    pub fn flow(&self) -> &SyntheticFlow {
        &self.flow
    }

    /// Records what the inspector queued for the client during one call.
    fn queued_for_client(&mut self, now: SystemTime, to_client: &[u8], before: usize) {
        if let Some(added) = to_client.get(before..).filter(|a| !a.is_empty()) {
            self.flow.server_data(now, added, &mut self.packets);
        }
    }
}

/// An [`Inspector`] that passes everything to the session's own and records the client's
/// view in a [`SessionExport`] (see there).
pub struct ExportTee<'a> {
    export: &'a mut SessionExport,
    inner: &'a mut dyn Inspector,
    now: SystemTime,
}

impl Inspector for ExportTee<'_> {
    fn established(&mut self, client_alpn: Option<&str>) {
        self.inner.established(client_alpn);
        self.export.flow.open(self.now, &mut self.export.packets);
    }

    fn client_to_server(&mut self, plaintext: &[u8], relay: &mut Relay<'_>) -> Pass {
        let before = relay.to_client.len();
        let pass = self.inner.client_to_server(plaintext, relay);
        let export = &mut *self.export;
        export.flow.client_data(self.now, plaintext, &mut export.packets);
        export.queued_for_client(self.now, relay.to_client, before);
        pass
    }

    fn server_to_client(&mut self, plaintext: &[u8], relay: &mut Relay<'_>) -> Pass {
        let before = relay.to_client.len();
        let pass = self.inner.server_to_client(plaintext, relay);
        let export = &mut *self.export;
        // Forwarded bytes go out first, then anything the inspector queued meanwhile.
        if pass == Pass::Forward {
            export.flow.server_data(self.now, plaintext, &mut export.packets);
        }
        export.queued_for_client(self.now, relay.to_client, before);
        pass
    }

    fn client_ended(&mut self, relay: &mut Relay<'_>) {
        let before = relay.to_client.len();
        self.inner.client_ended(relay);
        self.export.queued_for_client(self.now, relay.to_client, before);
        self.export.flow.fin(self.now, Side::Client, &mut self.export.packets);
    }

    fn server_ended(&mut self, relay: &mut Relay<'_>) {
        let before = relay.to_client.len();
        self.inner.server_ended(relay);
        self.export.queued_for_client(self.now, relay.to_client, before);
        self.export.flow.fin(self.now, Side::Server, &mut self.export.packets);
    }
}

/// Adds `bytes` as big-endian 16-bit words (an odd last byte padded with zero) to `acc`,
/// folding the carries.
fn sum(mut acc: u32, bytes: &[u8]) -> u32 {
    let mut words = bytes.chunks_exact(2);
    for word in &mut words {
        acc += u32::from(u16::from_be_bytes([word[0], word[1]]));
        acc = (acc & 0xffff) + (acc >> 16);
    }
    if let [last] = words.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

/// The one's complement of the folded sum: the Internet checksum (RFC 1071).
fn finish(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

fn mapped(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// FNV-1a of the 4-tuple: distinct initial sequence numbers per flow, the same on every run.
fn isn_of(client: SocketAddr, server: SocketAddr) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash = (hash ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
    };
    for addr in [client, server] {
        feed(&mapped(addr.ip().to_canonical()).octets());
        feed(&addr.port().to_be_bytes());
    }
    hash
}

#[cfg(test)]
mod tests;
