//! The synthetic frames, read back with an independent parser (etherparse): checksums,
//! sequence and acknowledgement continuity, payload reassembly both ways, handshake and
//! close. (`crate::capture::plaintext` tests write them to a pcap file and ask tshark.)

use std::time::{Duration, UNIX_EPOCH};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};

use super::*;
use crate::inspect::{Inspector, Pass, Relay, SessionEnd};

/// One parsed segment.
#[derive(Debug, Clone)]
struct Segment {
    from_client: bool,
    seq: u32,
    ack: Option<u32>,
    syn: bool,
    fin: bool,
    rst: bool,
    psh: bool,
    payload: Vec<u8>,
    options: Vec<u8>,
}

/// Parses a frame and checks everything a reader would: Ethernet type and MACs, the IP
/// header (and its checksum), lengths, the TCP checksum, addresses and ports.
fn parse(frame: &[u8], client: SocketAddr, server: SocketAddr) -> Segment {
    assert!(frame.len() <= MAX_FRAME, "frame of {} bytes", frame.len());
    let packet = SlicedPacket::from_ethernet(frame).expect("a valid Ethernet/IP/TCP frame");
    let link = packet
        .link
        .as_ref()
        .and_then(|l| l.to_header())
        .expect("an Ethernet header");
    let etherparse::LinkHeader::Ethernet2(eth) = link else {
        panic!("not Ethernet II: {link:?}");
    };
    let from_client = eth.source == CLIENT_MAC;
    assert_eq!(
        (eth.source, eth.destination),
        if from_client {
            (CLIENT_MAC, SERVER_MAC)
        } else {
            (SERVER_MAC, CLIENT_MAC)
        }
    );
    let Some(TransportSlice::Tcp(tcp)) = &packet.transport else {
        panic!("not TCP: {:?}", packet.transport);
    };
    let (src, dst) = if from_client {
        (client, server)
    } else {
        (server, client)
    };
    let checksum = match packet.net.as_ref().expect("an IP header") {
        NetSlice::Ipv4(ip) => {
            let header = ip.header();
            assert_eq!(u16::from(eth.ether_type), 0x0800);
            assert_eq!(
                header.to_header().calc_header_checksum(),
                header.header_checksum(),
                "IPv4 checksum"
            );
            assert_eq!(usize::from(header.total_len()), frame.len() - 14, "IPv4 total length");
            assert!(header.dont_fragment() && !header.is_fragmenting_payload());
            assert_eq!(IpAddr::V4(header.source_addr()), src.ip());
            assert_eq!(IpAddr::V4(header.destination_addr()), dst.ip());
            tcp.calc_checksum_ipv4(header.source(), header.destination()).unwrap()
        }
        NetSlice::Ipv6(ip) => {
            let header = ip.header();
            assert_eq!(u16::from(eth.ether_type), 0x86dd);
            assert_eq!(
                usize::from(header.payload_length()),
                frame.len() - 14 - 40,
                "IPv6 payload length"
            );
            assert_eq!(IpAddr::V6(header.source_addr()), src.ip());
            assert_eq!(IpAddr::V6(header.destination_addr()), dst.ip());
            tcp.calc_checksum_ipv6(header.source(), header.destination()).unwrap()
        }
        other => panic!("not IP: {other:?}"),
    };
    assert_eq!(checksum, tcp.checksum(), "TCP checksum");
    assert_eq!((tcp.source_port(), tcp.destination_port()), (src.port(), dst.port()));
    assert_eq!(tcp.window_size(), u16::MAX);
    assert!(!tcp.urg() && !tcp.ece() && !tcp.cwr());
    Segment {
        from_client,
        seq: tcp.sequence_number(),
        ack: tcp.ack().then(|| tcp.acknowledgment_number()),
        syn: tcp.syn(),
        fin: tcp.fin(),
        rst: tcp.rst(),
        psh: tcp.psh(),
        payload: tcp.payload().to_vec(),
        options: tcp.options().to_vec(),
    }
}

/// What a receiver rebuilds from the segments: each direction's bytes, after checking that
/// every segment starts where the previous one of its direction ended and acknowledges
/// exactly what the peer sent so far.
#[derive(Debug, Default)]
struct Reassembly {
    client: Vec<u8>,
    server: Vec<u8>,
    segments: Vec<Segment>,
}

fn reassemble(packets: &[SyntheticPacket], client: SocketAddr, server: SocketAddr) -> Reassembly {
    let segments: Vec<Segment> = packets.iter().map(|p| parse(&p.frame, client, server)).collect();
    // Handshake.
    assert!(segments.len() >= 3, "{segments:?}");
    let (syn, syn_ack, ack) = (&segments[0], &segments[1], &segments[2]);
    assert!(syn.from_client && syn.syn && syn.ack.is_none() && syn.payload.is_empty());
    assert!(!syn_ack.from_client && syn_ack.syn && syn_ack.ack == Some(syn.seq.wrapping_add(1)));
    assert!(ack.from_client && !ack.syn && ack.ack == Some(syn_ack.seq.wrapping_add(1)));
    for hello in [syn, syn_ack] {
        let mss = if client.is_ipv4() && server.is_ipv4() {
            MSS_IPV4
        } else {
            MSS_IPV6
        } as u16;
        let mut options = vec![2, 4];
        options.extend_from_slice(&mss.to_be_bytes());
        options.extend_from_slice(&[1, 3, 3, WINDOW_SCALE]);
        assert_eq!(hello.options, options, "MSS and window scale in the handshake");
    }
    // Next sequence number per direction: [client, server].
    let mut next = [syn.seq.wrapping_add(1), syn_ack.seq.wrapping_add(1)];
    let mut fin = [false, false];
    let mut out = Reassembly::default();
    for segment in &segments[2..] {
        let (me, peer) = if segment.from_client { (0, 1) } else { (1, 0) };
        assert!(!segment.syn, "one SYN each way");
        assert_eq!(segment.seq, next[me], "sequence continuity: {segment:?}");
        assert!(!fin[me] || segment.payload.is_empty(), "nothing after a FIN");
        assert_eq!(
            segment.ack,
            Some(next[peer]),
            "acknowledges all the peer sent: {segment:?}"
        );
        assert!(segment.options.is_empty());
        if !segment.payload.is_empty() {
            let mss = if client.is_ipv4() && server.is_ipv4() {
                MSS_IPV4
            } else {
                MSS_IPV6
            };
            assert!(segment.payload.len() <= mss);
        }
        next[me] = next[me].wrapping_add(segment.payload.len() as u32);
        if segment.fin {
            next[me] = next[me].wrapping_add(1);
            fin[me] = true;
        }
        if segment.from_client {
            out.client.extend_from_slice(&segment.payload);
        } else {
            out.server.extend_from_slice(&segment.payload);
        }
    }
    out.segments = segments;
    out
}

fn t(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + ms)
}

fn body(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn exchange(flow: &mut SyntheticFlow) -> (Vec<u8>, Vec<u8>, Vec<SyntheticPacket>) {
    let request = b"GET /index.html HTTP/1.1\r\nHost: a.lab\r\n\r\n".to_vec();
    let mut head = b"HTTP/1.1 200 OK\r\nContent-Length: 40000\r\n\r\n".to_vec();
    head.extend(body(40_000, 7));
    let second = b"GET /second HTTP/1.1\r\nHost: a.lab\r\n\r\n".to_vec();
    let mut out = Vec::new();
    flow.open(t(0), &mut out);
    assert!(flow.client_data(t(1), &request, &mut out));
    assert!(flow.server_data(t(2), &head, &mut out));
    assert!(flow.client_data(t(3), &second, &mut out));
    assert!(flow.server_data(t(4), b"HTTP/1.1 204 No Content\r\n\r\n", &mut out));
    assert!(flow.close(t(5), &mut out));
    let client_bytes = [request, second].concat();
    let server_bytes = [head, b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()].concat();
    (client_bytes, server_bytes, out)
}

#[test]
fn ipv4_flow_reads_back_whole_both_ways() {
    let client: SocketAddr = "198.18.0.1:40000".parse().unwrap();
    let server: SocketAddr = "198.18.0.2:443".parse().unwrap();
    let mut flow = SyntheticFlow::new(client, server);
    let (sent, answered, packets) = exchange(&mut flow);
    let r = reassemble(&packets, client, server);
    assert_eq!(r.client, sent);
    assert_eq!(r.server, answered);

    // Segmentation: the 40 KB response fills full segments, PSH only on the last of a write.
    let response: Vec<&Segment> = r
        .segments
        .iter()
        .filter(|s| !s.from_client && !s.payload.is_empty())
        .collect();
    let full = response.iter().filter(|s| s.payload.len() == MSS_IPV4).count();
    assert_eq!(full, (40_000 + 42) / MSS_IPV4);
    assert_eq!(response.iter().filter(|s| s.psh).count(), 2, "one PSH per write");
    // The client acknowledges a long write at least every ACK_EVERY segments, and at its end.
    let mut unacked = 0;
    for s in &r.segments {
        if !s.from_client && !s.payload.is_empty() {
            unacked += 1;
            assert!(unacked <= ACK_EVERY);
        } else if s.from_client {
            unacked = 0;
        }
    }

    // Close: client FIN/ACK, server FIN/ACK, client ACK; nothing after.
    let tail: Vec<(bool, bool, bool)> = r.segments[r.segments.len() - 3..]
        .iter()
        .map(|s| (s.from_client, s.fin, s.payload.is_empty()))
        .collect();
    assert_eq!(tail, vec![(true, true, true), (false, true, true), (true, false, true)]);
    assert!(r.segments.iter().all(|s| !s.rst));
    assert!(flow.is_closed());
    let mut more = Vec::new();
    assert!(!flow.client_data(t(6), b"late", &mut more));
    assert!(!flow.close(t(6), &mut more));
    assert!(!flow.reset(t(6), Side::Server, &mut more));
    assert!(more.is_empty(), "nothing after the close");

    // Times are the ones passed in, in order.
    assert_eq!(packets.first().unwrap().at, t(0));
    assert_eq!(packets.last().unwrap().at, t(5));
    assert!(packets.windows(2).all(|w| w[0].at <= w[1].at));
}

#[test]
fn ipv6_flow_reads_back_whole_both_ways() {
    let client: SocketAddr = "[2001:db8::1]:51000".parse().unwrap();
    let server: SocketAddr = "[2001:db8::2]:8443".parse().unwrap();
    let mut flow = SyntheticFlow::new(client, server);
    assert_eq!(flow.mss(), MSS_IPV6);
    let (sent, answered, packets) = exchange(&mut flow);
    let r = reassemble(&packets, client, server);
    assert_eq!(r.client, sent);
    assert_eq!(r.server, answered);
    assert!(packets.iter().all(|p| p.frame.len() <= 14 + 1500));
}

#[test]
fn mixed_families_are_written_as_ipv4_mapped_ipv6() {
    let client: SocketAddr = "198.18.0.1:40000".parse().unwrap();
    let server: SocketAddr = "[2001:db8::2]:443".parse().unwrap();
    let mut flow = SyntheticFlow::new(client, server);
    let mut out = Vec::new();
    flow.client_data(t(0), b"hello", &mut out);
    let mapped_client = SocketAddr::new("::ffff:198.18.0.1".parse().unwrap(), 40000);
    let r = reassemble(&out, mapped_client, server);
    assert_eq!(r.client, b"hello");

    // An IPv4-mapped address on both ends is plain IPv4.
    let client: SocketAddr = "[::ffff:198.18.0.1]:40000".parse().unwrap();
    let server: SocketAddr = "[::ffff:198.18.0.2]:443".parse().unwrap();
    let mut flow = SyntheticFlow::new(client, server);
    assert_eq!(flow.mss(), MSS_IPV4);
    let mut out = Vec::new();
    flow.server_data(t(0), b"hi", &mut out);
    let v4 = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let r = reassemble(&out, v4(client), v4(server));
    assert_eq!(r.server, b"hi");
}

#[test]
fn sequence_numbers_wrap() {
    let client: SocketAddr = "10.1.1.1:1234".parse().unwrap();
    let server: SocketAddr = "10.1.1.2:443".parse().unwrap();
    let mut flow = SyntheticFlow::with_isns(client, server, u32::MAX - 100, u32::MAX);
    let mut out = Vec::new();
    let up = body(5000, 1);
    let down = body(3000, 2);
    flow.client_data(t(0), &up, &mut out);
    flow.server_data(t(1), &down, &mut out);
    flow.close(t(2), &mut out);
    let r = reassemble(&out, client, server);
    assert_eq!((r.client, r.server), (up, down));
}

#[test]
fn half_closes_and_resets() {
    let client: SocketAddr = "198.18.0.1:40000".parse().unwrap();
    let server: SocketAddr = "198.18.0.2:443".parse().unwrap();

    // The server ends first; the client still sends, then closes.
    let mut flow = SyntheticFlow::new(client, server);
    let mut out = Vec::new();
    flow.client_data(t(0), b"request", &mut out);
    flow.server_data(t(1), b"answer", &mut out);
    assert!(flow.fin(t(2), Side::Server, &mut out));
    assert!(!flow.fin(t(2), Side::Server, &mut out), "one FIN per side");
    assert!(
        !flow.server_data(t(3), b"late", &mut out),
        "no data after the server's FIN"
    );
    assert!(flow.client_data(t(3), b"more", &mut out));
    assert!(!flow.is_closed());
    assert!(flow.close(t(4), &mut out));
    assert!(flow.is_closed());
    let r = reassemble(&out, client, server);
    assert_eq!(
        (r.client.as_slice(), r.server.as_slice()),
        (&b"requestmore"[..], &b"answer"[..])
    );
    let fins: Vec<bool> = r.segments.iter().filter(|s| s.fin).map(|s| s.from_client).collect();
    assert_eq!(fins, vec![false, true]);
    // The client's FIN is acknowledged by the server.
    let last = r.segments.last().unwrap();
    assert!(!last.from_client && !last.fin);

    // A reset ends the flow at once.
    let mut flow = SyntheticFlow::new(client, server);
    let mut out = Vec::new();
    flow.client_data(t(0), b"GET / HTTP/1.1\r\n", &mut out);
    assert!(flow.reset(t(1), Side::Client, &mut out));
    assert!(flow.is_closed());
    assert!(!flow.close(t(2), &mut out));
    let r = reassemble(&out, client, server);
    let last = r.segments.last().unwrap();
    assert!(last.rst && last.from_client);
    assert_eq!(r.segments.iter().filter(|s| s.rst).count(), 1);

    // Closing a flow that never opened writes the handshake and the close.
    let mut flow = SyntheticFlow::new(client, server);
    let mut out = Vec::new();
    assert!(flow.close(t(0), &mut out));
    assert_eq!(out.len(), 6);
    let r = reassemble(&out, client, server);
    assert!(r.client.is_empty() && r.server.is_empty());
}

#[test]
fn open_is_idempotent_and_empty_writes_send_nothing() {
    let client: SocketAddr = "198.18.0.1:40000".parse().unwrap();
    let server: SocketAddr = "198.18.0.2:443".parse().unwrap();
    let mut flow = SyntheticFlow::new(client, server);
    let mut out = Vec::new();
    flow.open(t(0), &mut out);
    flow.open(t(0), &mut out);
    assert_eq!(out.len(), 3);
    assert!(flow.client_data(t(1), b"", &mut out));
    assert_eq!(out.len(), 3);
    // Exactly one MSS is one segment (and the peer's ACK).
    flow.client_data(t(1), &body(MSS_IPV4, 3), &mut out);
    assert_eq!(out.len(), 5);
    reassemble(&out, client, server);
}

#[test]
fn flows_get_distinct_initial_sequence_numbers() {
    let server: SocketAddr = "198.18.0.2:443".parse().unwrap();
    let isn = |client: &str| {
        let mut out = Vec::new();
        SyntheticFlow::new(client.parse().unwrap(), server).open(t(0), &mut out);
        parse(&out[0].frame, client.parse().unwrap(), server).seq
    };
    assert_ne!(isn("198.18.0.1:40000"), isn("198.18.0.1:40001"));
    assert_eq!(isn("198.18.0.1:40000"), isn("198.18.0.1:40000"));
}

#[test]
fn internet_checksum_matches_rfc_1071_example() {
    // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (checksum 220d).
    assert_eq!(
        finish(sum(0, &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7])),
        0x220d
    );
    // An odd length pads with a zero byte.
    assert_eq!(finish(sum(0, &[0x01])), !0x0100);
}

/// Forwards everything, except a client write containing `BLOCK` (answered with a 403 for
/// the client, nothing to the server) and a server write containing `REWRITE` (replaced);
/// appends `!` for the client after every forwarded server write containing `BANG`.
struct Judge;

impl Inspector for Judge {
    fn client_to_server(&mut self, plaintext: &[u8], relay: &mut Relay<'_>) -> Pass {
        if plaintext.windows(5).any(|w| w == b"BLOCK") {
            relay.to_client.extend_from_slice(b"HTTP/1.1 403 Forbidden\r\n\r\n");
            return Pass::Taken;
        }
        Pass::Forward
    }

    fn server_to_client(&mut self, plaintext: &[u8], relay: &mut Relay<'_>) -> Pass {
        if plaintext.windows(7).any(|w| w == b"REWRITE") {
            relay.to_client.extend_from_slice(b"rewritten");
            return Pass::Taken;
        }
        if plaintext.windows(4).any(|w| w == b"BANG") {
            relay.to_client.extend_from_slice(b"!");
        }
        Pass::Forward
    }

    fn server_ended(&mut self, relay: &mut Relay<'_>) {
        relay.to_client.extend_from_slice(b"<last words>");
    }
}

#[test]
fn a_session_export_records_what_the_client_saw() {
    let client: SocketAddr = "198.18.0.1:40000".parse().unwrap();
    let server: SocketAddr = "198.18.0.2:443".parse().unwrap();
    let mut export = SessionExport::new(client, server);
    let mut judge = Judge;
    let (mut to_server, mut to_client, mut end) = (Vec::new(), b"queued-before".to_vec(), SessionEnd::Open);
    let mut relay = Relay {
        to_server: &mut to_server,
        to_client: &mut to_client,
        end_session: &mut end,
    };
    {
        let mut tee = export.tee(&mut judge, t(0));
        tee.established(Some("http/1.1"));
        assert_eq!(tee.client_to_server(b"GET /ok\r\n", &mut relay), Pass::Forward);
        assert_eq!(tee.server_to_client(b"200 ok BANG", &mut relay), Pass::Forward);
        assert_eq!(tee.client_to_server(b"GET /BLOCK\r\n", &mut relay), Pass::Taken);
    }
    assert!(export.pending_packets() > 0);
    let mut packets = export.take_packets();
    assert_eq!(export.pending_packets(), 0);
    {
        let mut tee = export.tee(&mut judge, t(1));
        assert_eq!(tee.server_to_client(b"REWRITE me", &mut relay), Pass::Taken);
        tee.server_ended(&mut relay);
    }
    export.close(t(2));
    packets.extend(export.take_packets());
    let r = reassemble(&packets, client, server);
    assert_eq!(r.client, b"GET /ok\r\nGET /BLOCK\r\n");
    assert_eq!(
        String::from_utf8(r.server).unwrap(),
        "200 ok BANG!HTTP/1.1 403 Forbidden\r\n\r\nrewritten<last words>"
    );
    // The server's FIN came first (server_ended), then the close's client FIN.
    let fins: Vec<bool> = r.segments.iter().filter(|s| s.fin).map(|s| s.from_client).collect();
    assert_eq!(fins, vec![false, true]);
    assert!(export.flow().is_closed());
    // The relay queues are the session's: the tee only watched them.
    assert!(to_client.starts_with(b"queued-before"));
}

#[test]
fn a_session_that_never_got_past_its_handshakes_exports_nothing() {
    let client: SocketAddr = "198.18.0.1:40000".parse().unwrap();
    let server: SocketAddr = "198.18.0.2:443".parse().unwrap();
    let mut export = SessionExport::new(client, server);
    export.close(t(0));
    export.reset(t(0), Side::Server);
    assert_eq!(export.pending_packets(), 0);
    assert!(!export.flow().is_opened());
    // Once established, a reset is written.
    let mut judge = Judge;
    export.tee(&mut judge, t(1)).established(None);
    export.reset(t(2), Side::Server);
    let r = reassemble(&export.take_packets(), client, server);
    assert!(r.segments.last().unwrap().rst);
}
