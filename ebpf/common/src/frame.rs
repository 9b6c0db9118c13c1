//! Frame classification for the virtual wire, written once for both sides.
//!
//! The XDP program implements [`Frame`] with pointer comparisons against
//! `data_end` (the form the verifier understands); host code and the unit tests
//! use the `[u8]` implementation. Parsing never reads outside what `header`
//! returned, so a truncated frame is `Malformed`, never an out-of-bounds read.
//!
//! The result keeps the L3 addresses for the no-decrypt rules: [`no_decrypt_match`]
//! builds the LPM keys of an inspected segment's server and asks the map.

use crate::{FlowPinKey, NoDecryptKey, NO_DECRYPT_NONE, PIN_BRIDGED, PIN_STEERED, PIN_UNSERVED};

/// Bounds-checked access to a frame's bytes.
pub trait Frame {
    /// The `N` bytes at `off`, or `None` when the frame is shorter than `off + N`.
    fn header<const N: usize>(&self, off: usize) -> Option<&[u8; N]>;
    /// Frame length in bytes.
    fn frame_len(&self) -> usize;
}

impl Frame for [u8] {
    #[inline(always)]
    fn header<const N: usize>(&self, off: usize) -> Option<&[u8; N]> {
        self.get(off..off.checked_add(N)?)?.try_into().ok()
    }

    #[inline(always)]
    fn frame_len(&self) -> usize {
        <[u8]>::len(self)
    }
}

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
const IPV6_HLEN: usize = 40;
/// IPv6 extension headers walked before giving up (then the frame is `Other`).
const IPV6_MAX_EXT: usize = 4;

/// Transport header as far as the wire cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// Ports in host byte order; `flags` is the TCP flags byte (CWR..FIN).
    Tcp {
        src: u16,
        dst: u16,
        flags: u8,
    },
    Udp {
        src: u16,
        dst: u16,
    },
    /// Any other protocol number (ICMP, ICMPv6, SCTP, ...).
    Other(u8),
    /// A fragment: the transport header is absent or incomplete.
    Fragment,
}

/// Outcome of [`parse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Addresses in network byte order as read from the header.
    Ipv4 {
        src: [u8; 4],
        dst: [u8; 4],
        l4: L4,
    },
    Ipv6 {
        src: [u8; 16],
        dst: [u8; 16],
        l4: L4,
    },
    /// 802.1Q / 802.1ad tagged: not looked into.
    Vlan,
    /// Any other ethertype (ARP, LLDP, ...).
    OtherEthertype(u16),
    /// Truncated frame or inconsistent header lengths.
    Malformed,
}

#[inline(always)]
fn be16(b0: u8, b1: u8) -> u16 {
    ((b0 as u16) << 8) | b1 as u16
}

/// Parses Ethernet, IPv4/IPv6 and the TCP/UDP ports.
#[inline(always)]
pub fn parse<F: Frame + ?Sized>(frame: &F) -> Parsed {
    let Some(eth) = frame.header::<ETH_HLEN>(0) else {
        return Parsed::Malformed;
    };
    match be16(eth[12], eth[13]) {
        ETH_P_IPV4 => parse_ipv4(frame),
        ETH_P_IPV6 => parse_ipv6(frame),
        ETH_P_8021Q | ETH_P_8021AD => Parsed::Vlan,
        other => Parsed::OtherEthertype(other),
    }
}

#[inline(always)]
fn parse_ipv4<F: Frame + ?Sized>(frame: &F) -> Parsed {
    let Some(ip) = frame.header::<20>(ETH_HLEN) else {
        return Parsed::Malformed;
    };
    if ip[0] >> 4 != 4 {
        return Parsed::Malformed;
    }
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    let total = be16(ip[2], ip[3]) as usize;
    // Ethernet may pad short packets, so only "shorter than claimed" is an error.
    if ihl < 20 || total < ihl || ETH_HLEN + total > frame.frame_len() {
        return Parsed::Malformed;
    }
    let src = [ip[12], ip[13], ip[14], ip[15]];
    let dst = [ip[16], ip[17], ip[18], ip[19]];
    let frag = be16(ip[6], ip[7]);
    // MF set or a non-zero offset: only the first fragment carries ports, so
    // steering by port would split the datagram; treat every fragment alike.
    let l4 = if frag & 0x3fff != 0 {
        Some(L4::Fragment)
    } else {
        parse_l4(frame, ip[9], ETH_HLEN + ihl, ETH_HLEN + total)
    };
    match l4 {
        Some(l4) => Parsed::Ipv4 { src, dst, l4 },
        None => Parsed::Malformed,
    }
}

#[inline(always)]
fn parse_ipv6<F: Frame + ?Sized>(frame: &F) -> Parsed {
    let Some(ip) = frame.header::<IPV6_HLEN>(ETH_HLEN) else {
        return Parsed::Malformed;
    };
    if ip[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let payload = be16(ip[4], ip[5]) as usize;
    let l3_end = ETH_HLEN + IPV6_HLEN + payload;
    if l3_end > frame.frame_len() {
        return Parsed::Malformed;
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&ip[8..24]);
    dst.copy_from_slice(&ip[24..40]);

    let mut next = ip[6];
    let mut off = ETH_HLEN + IPV6_HLEN;
    let mut l4 = None;
    for _ in 0..IPV6_MAX_EXT {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-octet units, not counting the first.
            0 | 43 | 60 => {
                let Some(ext) = frame.header::<2>(off) else {
                    return Parsed::Malformed;
                };
                next = ext[0];
                off += (ext[1] as usize + 1) * 8;
            }
            // Authentication header: length in 4-octet units, minus 2.
            51 => {
                let Some(ext) = frame.header::<2>(off) else {
                    return Parsed::Malformed;
                };
                next = ext[0];
                off += (ext[1] as usize + 2) * 4;
            }
            44 => {
                l4 = Some(L4::Fragment);
                break;
            }
            _ => {
                l4 = parse_l4(frame, next, off, l3_end);
                if l4.is_none() {
                    return Parsed::Malformed;
                }
                break;
            }
        }
    }
    match l4 {
        Some(l4) => Parsed::Ipv6 { src, dst, l4 },
        // Too many extension headers to look through: not classifiable, bridge it.
        None => Parsed::Ipv6 {
            src,
            dst,
            l4: L4::Other(next),
        },
    }
}

/// `None` when the transport header is truncated or its length is inconsistent.
#[inline(always)]
fn parse_l4<F: Frame + ?Sized>(frame: &F, proto: u8, off: usize, l3_end: usize) -> Option<L4> {
    match proto {
        IPPROTO_TCP => {
            let tcp = frame.header::<20>(off)?;
            let doff = ((tcp[12] >> 4) as usize) * 4;
            if doff < 20 || off + doff > l3_end {
                return None;
            }
            Some(L4::Tcp {
                src: be16(tcp[0], tcp[1]),
                dst: be16(tcp[2], tcp[3]),
                flags: tcp[13],
            })
        }
        IPPROTO_UDP => {
            let udp = frame.header::<8>(off)?;
            if off + 8 > l3_end {
                return None;
            }
            Some(L4::Udp {
                src: be16(udp[0], udp[1]),
                dst: be16(udp[2], udp[3]),
            })
        }
        other => Some(L4::Other(other)),
    }
}

/// What the wire does with a frame, before looking at sockets and flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// TCP with an inspected port on either side: goes to AF_XDP when a socket serves
    /// the queue, unless its server matches a no-decrypt entry. `dst_inspected`: the
    /// destination port is inspected (a client → server segment).
    Inspect {
        dst_inspected: bool,
    },
    /// UDP to or from an inspected port (QUIC, when that port is 443).
    Quic,
    /// Bridged: everything not inspected.
    Plain,
    Vlan,
    Fragment,
    Malformed,
}

/// Classifies a parsed frame; `inspected(port)` says whether a port is inspected.
///
/// UDP on an inspected port is `Quic`: a client that cannot use QUIC there falls back
/// to TCP on the same port, which is inspected.
#[inline(always)]
pub fn classify(parsed: &Parsed, inspected: impl Fn(u16) -> bool) -> Class {
    let l4 = match parsed {
        Parsed::Ipv4 { l4, .. } | Parsed::Ipv6 { l4, .. } => *l4,
        Parsed::Vlan => return Class::Vlan,
        Parsed::OtherEthertype(_) => return Class::Plain,
        Parsed::Malformed => return Class::Malformed,
    };
    match l4 {
        L4::Tcp { src, dst, .. } => {
            if inspected(dst) {
                Class::Inspect { dst_inspected: true }
            } else if inspected(src) {
                Class::Inspect { dst_inspected: false }
            } else {
                Class::Plain
            }
        }
        L4::Udp { src, dst } if inspected(dst) || inspected(src) => Class::Quic,
        L4::Fragment => Class::Fragment,
        _ => Class::Plain,
    }
}

/// An inspected TCP segment whose server matched a no-decrypt entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoDecryptHit {
    /// The entry's rule index.
    pub rule: u32,
    /// A client's SYN (SYN without ACK) to the matched server: one connection attempt,
    /// counted against the rule.
    pub client_syn: bool,
}

/// Looks up the server of an inspected TCP segment (`Class::Inspect { dst_inspected }`)
/// in the no-decrypt map. The server is the destination when its port is inspected
/// (client → server), else the source (server → client); when both ports are inspected
/// the destination is tried first, then the source. `lookup` is a longest-prefix lookup
/// of a key with [`NoDecryptKey::FULL_PREFIX`] bits; [`NO_DECRYPT_NONE`] is a miss.
#[inline(always)]
pub fn no_decrypt_match(
    parsed: &Parsed,
    dst_inspected: bool,
    inspected: impl Fn(u16) -> bool,
    lookup: impl Fn(&NoDecryptKey) -> Option<u32>,
) -> Option<NoDecryptHit> {
    let (src_key, dst_key, flags) = tcp_endpoints(parsed)?;
    match_endpoints(&src_key, &dst_key, flags, dst_inspected, inspected, lookup)
}

/// The source and destination of a TCP segment as no-decrypt keys, and its flags.
#[inline(always)]
fn tcp_endpoints(parsed: &Parsed) -> Option<(NoDecryptKey, NoDecryptKey, u8)> {
    match *parsed {
        Parsed::Ipv4 {
            src,
            dst,
            l4: L4::Tcp {
                src: sport,
                dst: dport,
                flags,
            },
        } => Some((NoDecryptKey::v4(sport, src), NoDecryptKey::v4(dport, dst), flags)),
        Parsed::Ipv6 {
            src,
            dst,
            l4: L4::Tcp {
                src: sport,
                dst: dport,
                flags,
            },
        } => Some((NoDecryptKey::v6(sport, src), NoDecryptKey::v6(dport, dst), flags)),
        _ => None,
    }
}

/// [`no_decrypt_match`] on the segment's endpoints.
#[inline(always)]
fn match_endpoints(
    src_key: &NoDecryptKey,
    dst_key: &NoDecryptKey,
    flags: u8,
    dst_inspected: bool,
    inspected: impl Fn(u16) -> bool,
    lookup: impl Fn(&NoDecryptKey) -> Option<u32>,
) -> Option<NoDecryptHit> {
    let rule_of = |key: &NoDecryptKey| lookup(key).filter(|rule| *rule != NO_DECRYPT_NONE);
    if dst_inspected {
        if let Some(rule) = rule_of(dst_key) {
            return Some(NoDecryptHit {
                rule,
                client_syn: flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
            });
        }
        if !inspected(u16::from_be_bytes(src_key.port)) {
            return None;
        }
    }
    rule_of(src_key).map(|rule| NoDecryptHit {
        rule,
        client_syn: false,
    })
}

/// What the wire does with an inspected TCP segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InspectedAction {
    /// To the AF_XDP socket of the queue (userspace owns the connection).
    Steer {
        /// The current no-decrypt entries list the server, but the connection was
        /// steered at its SYN and stays so.
        pinned_against_entries: bool,
    },
    /// To the peer port, uninspected.
    Bridge {
        /// The no-decrypt rule whose client SYN this is (counted against it).
        rule_hit: Option<u32>,
        /// The current entries no longer list the server, but the connection was
        /// bridged at its SYN and stays so.
        pinned_against_entries: bool,
    },
    /// A connection whose SYN found no worker and was bridged fail-open: to the peer port
    /// even if a worker is there now (it never saw the handshake).
    Unserved,
}

/// Decides an inspected TCP segment (`Class::Inspect { dst_inspected }`): a client's SYN
/// (SYN without ACK) is decided by the no-decrypt entries ([`no_decrypt_match`]) and the
/// decision is remembered for its connection (`pin_set`); every later segment of the
/// connection follows the remembered decision (`pin_get`), whatever the entries say
/// now. Without one (a connection older than the map, or evicted from it), the entries
/// decide. A policy load that adds or removes a no-decrypt entry thus applies to new
/// connections only: an open decrypted session is not bridged in the middle of its
/// stream, nor a bridged one thrown at a worker that never saw its handshake.
/// `served`: whether a worker's socket is there for this segment's queue; a SYN to be
/// steered without one is bridged fail-open by the caller, and pinned so
/// ([`PIN_UNSERVED`]): a daemon that comes back must not take the connection over.
#[inline(always)]
pub fn inspected_action(
    parsed: &Parsed,
    dst_inspected: bool,
    served: bool,
    inspected: impl Fn(u16) -> bool,
    lookup: impl Fn(&NoDecryptKey) -> Option<u32>,
    pin_get: impl Fn(&FlowPinKey) -> Option<u8>,
    pin_set: impl Fn(&FlowPinKey, u8),
) -> InspectedAction {
    let Some((src_key, dst_key, flags)) = tcp_endpoints(parsed) else {
        return InspectedAction::Steer {
            pinned_against_entries: false,
        };
    };
    let hit = match_endpoints(&src_key, &dst_key, flags, dst_inspected, inspected, lookup);
    let pin = FlowPinKey::new(src_key, dst_key);
    let by_entries = match hit {
        Some(hit) => InspectedAction::Bridge {
            rule_hit: hit.client_syn.then_some(hit.rule),
            pinned_against_entries: false,
        },
        None => InspectedAction::Steer {
            pinned_against_entries: false,
        },
    };
    if flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        let value = match (hit.is_some(), served) {
            (true, _) => PIN_BRIDGED,
            (false, true) => PIN_STEERED,
            (false, false) => PIN_UNSERVED,
        };
        pin_set(&pin, value);
        return by_entries;
    }
    match (pin_get(&pin), hit) {
        (Some(PIN_UNSERVED), None) => InspectedAction::Unserved,
        (Some(PIN_STEERED), Some(_)) => InspectedAction::Steer {
            pinned_against_entries: true,
        },
        (Some(PIN_BRIDGED), None) => InspectedAction::Bridge {
            rule_hit: None,
            pinned_against_entries: true,
        },
        _ => by_entries,
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    const MACS: [u8; 12] = [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];

    fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = MACS.to_vec();
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn tcp(src: u16, dst: u16) -> Vec<u8> {
        tcp_flags(src, dst, TCP_SYN)
    }

    fn tcp_flags(src: u16, dst: u16, flags: u8) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&src.to_be_bytes());
        t.extend_from_slice(&dst.to_be_bytes());
        t.extend_from_slice(&[0; 8]);
        t.push(5 << 4); // data offset 20
        t.extend_from_slice(&[flags, 0xff, 0xff, 0, 0, 0, 0]);
        t
    }

    fn udp(src: u16, dst: u16, body: usize) -> Vec<u8> {
        let mut u = Vec::new();
        u.extend_from_slice(&src.to_be_bytes());
        u.extend_from_slice(&dst.to_be_bytes());
        u.extend_from_slice(&((8 + body) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.resize(8 + body, 0xab);
        u
    }

    fn ipv4(proto: u8, frag: u16, l4: &[u8]) -> Vec<u8> {
        let mut ip = vec4_header(proto, frag, 20 + l4.len());
        ip.extend_from_slice(l4);
        eth(ETH_P_IPV4, &ip)
    }

    fn vec4_header(proto: u8, frag: u16, total: usize) -> Vec<u8> {
        let mut ip = std::vec![0x45, 0];
        ip.extend_from_slice(&(total as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 1]);
        ip.extend_from_slice(&frag.to_be_bytes());
        ip.extend_from_slice(&[64, proto, 0, 0]);
        ip.extend_from_slice(&[198, 18, 0, 1, 198, 18, 0, 2]);
        ip
    }

    fn ipv6(next: u8, rest: &[u8]) -> Vec<u8> {
        let mut ip = std::vec![0x60, 0, 0, 0];
        ip.extend_from_slice(&(rest.len() as u16).to_be_bytes());
        ip.extend_from_slice(&[next, 64]);
        ip.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        ip.extend_from_slice(&[0; 11]);
        ip.push(1);
        ip.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        ip.extend_from_slice(&[0; 11]);
        ip.push(2);
        ip.extend_from_slice(rest);
        eth(ETH_P_IPV6, &ip)
    }

    fn only_443(p: u16) -> bool {
        p == 443
    }

    const CLIENT_SIDE: Class = Class::Inspect { dst_inspected: true };
    const SERVER_SIDE: Class = Class::Inspect { dst_inspected: false };

    fn class(frame: &[u8]) -> Class {
        classify(&parse(frame), only_443)
    }

    #[test]
    fn ipv4_tcp_ports_and_addresses() {
        let f = ipv4(IPPROTO_TCP, 0x4000, &tcp(40000, 443));
        assert_eq!(
            parse(&f[..]),
            Parsed::Ipv4 {
                src: [198, 18, 0, 1],
                dst: [198, 18, 0, 2],
                l4: L4::Tcp {
                    src: 40000,
                    dst: 443,
                    flags: TCP_SYN
                }
            }
        );
        assert_eq!(class(&f), CLIENT_SIDE);
        // Server-to-client direction is inspected too.
        assert_eq!(class(&ipv4(IPPROTO_TCP, 0, &tcp(443, 40000))), SERVER_SIDE);
        assert_eq!(class(&ipv4(IPPROTO_TCP, 0, &tcp(40000, 80))), Class::Plain);
    }

    #[test]
    fn ethernet_padding_is_not_malformed() {
        let mut f = ipv4(IPPROTO_TCP, 0, &tcp(1, 443));
        f.extend_from_slice(&[0; 6]);
        assert_eq!(class(&f), CLIENT_SIDE);
    }

    #[test]
    fn truncation_anywhere_is_malformed_never_a_panic() {
        let full = ipv4(IPPROTO_TCP, 0, &tcp(1, 443));
        for cut in 0..full.len() {
            let p = parse(&full[..cut]);
            assert_eq!(p, Parsed::Malformed, "cut at {cut}");
        }
        let full6 = ipv6(IPPROTO_TCP, &tcp(1, 443));
        for cut in 0..full6.len() {
            assert_eq!(parse(&full6[..cut]), Parsed::Malformed, "v6 cut at {cut}");
        }
    }

    #[test]
    fn bad_lengths_are_malformed() {
        let mut f = ipv4(IPPROTO_TCP, 0, &tcp(1, 443));
        f[ETH_HLEN] = 0x44; // IHL 16 bytes
        assert_eq!(parse(&f[..]), Parsed::Malformed);
        let mut f = ipv4(IPPROTO_TCP, 0, &tcp(1, 443));
        f[ETH_HLEN] = 0x55; // wrong version
        assert_eq!(parse(&f[..]), Parsed::Malformed);
        let mut f = ipv4(IPPROTO_TCP, 0, &tcp(1, 443));
        f[ETH_HLEN + 20 + 12] = 4 << 4; // TCP data offset 16
        assert_eq!(parse(&f[..]), Parsed::Malformed);
        let mut f = ipv4(IPPROTO_TCP, 0, &tcp(1, 443));
        f[ETH_HLEN + 20 + 12] = 15 << 4; // TCP options past the packet
        assert_eq!(parse(&f[..]), Parsed::Malformed);
        let mut f = ipv4(IPPROTO_TCP, 0, &tcp(1, 443));
        f[ETH_HLEN + 3] = 10; // total length shorter than the header
        assert_eq!(parse(&f[..]), Parsed::Malformed);
    }

    #[test]
    fn ipv4_fragments_are_not_steered() {
        // More-fragments on the first fragment, and a later fragment.
        assert_eq!(class(&ipv4(IPPROTO_TCP, 0x2000, &tcp(1, 443))), Class::Fragment);
        assert_eq!(class(&ipv4(IPPROTO_TCP, 0x0010, &[0; 16])), Class::Fragment);
    }

    #[test]
    fn quic_and_plain_udp() {
        assert_eq!(class(&ipv4(IPPROTO_UDP, 0, &udp(5000, 443, 20))), Class::Quic);
        assert_eq!(class(&ipv4(IPPROTO_UDP, 0, &udp(443, 5000, 20))), Class::Quic);
        assert_eq!(class(&ipv4(IPPROTO_UDP, 0, &udp(5000, 53, 20))), Class::Plain);
        // QUIC follows the inspected ports: UDP/443 is plain when only 8443 is inspected.
        let f = ipv4(IPPROTO_UDP, 0, &udp(5000, 443, 20));
        assert_eq!(classify(&parse(&f[..]), |p| p == 8443), Class::Plain);
        let f = ipv4(IPPROTO_UDP, 0, &udp(5000, 8443, 20));
        assert_eq!(classify(&parse(&f[..]), |p| p == 8443), Class::Quic);
    }

    #[test]
    fn ipv6_tcp_direct_and_behind_extension_headers() {
        let f = ipv6(IPPROTO_TCP, &tcp(50000, 443));
        assert!(matches!(
            parse(&f[..]),
            Parsed::Ipv6 {
                l4: L4::Tcp { dst: 443, .. },
                ..
            }
        ));
        assert_eq!(class(&f), CLIENT_SIDE);

        // Hop-by-hop (8 bytes) then destination options (16 bytes) then TCP.
        let mut rest = std::vec![60, 0, 1, 4, 0, 0, 0, 0];
        rest.extend_from_slice(&[IPPROTO_TCP, 1, 1, 12]);
        rest.extend_from_slice(&[0; 12]);
        rest.extend_from_slice(&tcp(50000, 443));
        assert_eq!(class(&ipv6(0, &rest)), CLIENT_SIDE);

        // Fragment header.
        let mut frag = std::vec![IPPROTO_TCP, 0, 0, 1, 0, 0, 0, 7];
        frag.extend_from_slice(&tcp(50000, 443));
        assert_eq!(class(&ipv6(44, &frag)), Class::Fragment);

        // ICMPv6 is plain.
        assert_eq!(class(&ipv6(58, &[128, 0, 0, 0, 0, 1, 0, 1])), Class::Plain);
    }

    #[test]
    fn ipv6_extension_header_past_the_end_is_malformed() {
        // Hop-by-hop claims 256 bytes; TCP would start past the frame.
        let mut rest = std::vec![IPPROTO_TCP, 31, 0, 0, 0, 0, 0, 0];
        rest.extend_from_slice(&tcp(50000, 443));
        assert_eq!(parse(&ipv6(0, &rest)[..]), Parsed::Malformed);
    }

    #[test]
    fn ipv6_payload_length_longer_than_frame_is_malformed() {
        let mut f = ipv6(IPPROTO_TCP, &tcp(1, 443));
        f[ETH_HLEN + 5] += 1;
        assert_eq!(parse(&f[..]), Parsed::Malformed);
    }

    #[test]
    fn non_ip_and_vlan() {
        let arp = eth(0x0806, &[0; 28]);
        assert_eq!(parse(&arp[..]), Parsed::OtherEthertype(0x0806));
        assert_eq!(class(&arp), Class::Plain);
        let tagged = eth(ETH_P_8021Q, &[0, 5, 0x08, 0x00]);
        assert_eq!(class(&tagged), Class::Vlan);
        assert_eq!(class(&[0u8; 13]), Class::Malformed);
    }

    /// Longest-prefix match over `(prefix bits, key, rule)` entries, as the kernel's trie does.
    fn lpm(entries: &[(u32, NoDecryptKey, u32)], key: &NoDecryptKey) -> Option<u32> {
        let bits = |k: &NoDecryptKey| {
            let mut b = [0u8; 18];
            b[..2].copy_from_slice(&k.port);
            b[2..].copy_from_slice(&k.addr);
            b
        };
        let want = bits(key);
        entries
            .iter()
            .filter(|(prefix, k, _)| {
                let have = bits(k);
                (0..*prefix as usize).all(|i| (have[i / 8] ^ want[i / 8]) & (0x80 >> (i % 8)) == 0)
            })
            .max_by_key(|(prefix, _, _)| *prefix)
            .map(|(_, _, rule)| *rule)
    }

    fn nd(entries: &[(u32, NoDecryptKey, u32)], frame: &[u8], inspected: fn(u16) -> bool) -> Option<NoDecryptHit> {
        let parsed = parse(frame);
        let Class::Inspect { dst_inspected } = classify(&parsed, inspected) else {
            panic!("not inspected: {parsed:?}");
        };
        no_decrypt_match(&parsed, dst_inspected, inspected, |k| lpm(entries, k))
    }

    #[test]
    fn no_decrypt_matches_the_server_in_both_directions() {
        // 198.18.0.0/31 on 443 is rule 7 (the test frames go 198.18.0.1 -> 198.18.0.2).
        let server = [198, 18, 0, 0];
        let entries = [(NoDecryptKey::prefix_v4(31), NoDecryptKey::v4(443, server), 7)];
        let syn = ipv4(IPPROTO_TCP, 0, &tcp_flags(40000, 443, TCP_SYN));
        assert_eq!(
            nd(&entries, &syn, only_443),
            None,
            "client 198.18.0.1 is in the block but it is the client"
        );
        let entries = [(NoDecryptKey::prefix_v4(30), NoDecryptKey::v4(443, server), 7)];
        assert_eq!(
            nd(&entries, &syn, only_443),
            Some(NoDecryptHit {
                rule: 7,
                client_syn: true
            })
        );
        let ack = ipv4(IPPROTO_TCP, 0, &tcp_flags(40000, 443, TCP_ACK));
        assert_eq!(nd(&entries, &ack, only_443).map(|h| h.client_syn), Some(false));
        // Server -> client: the source is the server; its SYN-ACK is no new connection.
        let mut synack = ipv4(IPPROTO_TCP, 0, &tcp_flags(443, 40000, TCP_SYN | TCP_ACK));
        synack[ETH_HLEN + 12..ETH_HLEN + 20].copy_from_slice(&[198, 18, 0, 2, 198, 18, 0, 1]);
        assert_eq!(
            nd(&entries, &synack, only_443),
            Some(NoDecryptHit {
                rule: 7,
                client_syn: false
            })
        );
        // Another port of the same server is no match.
        let entries = [(NoDecryptKey::prefix_v4(32), NoDecryptKey::v4(8443, [198, 18, 0, 2]), 1)];
        assert_eq!(nd(&entries, &syn, |p| p == 443 || p == 8443), None);
    }

    #[test]
    fn no_decrypt_tries_the_source_when_both_ports_are_inspected() {
        // 198.18.0.1:443 -> 198.18.0.2:8443, both inspected; only the source is listed.
        let entries = [(NoDecryptKey::prefix_v4(32), NoDecryptKey::v4(443, [198, 18, 0, 1]), 3)];
        let f = ipv4(IPPROTO_TCP, 0, &tcp_flags(443, 8443, TCP_SYN));
        assert_eq!(
            nd(&entries, &f, |p| p == 443 || p == 8443),
            Some(NoDecryptHit {
                rule: 3,
                client_syn: false
            })
        );
    }

    #[test]
    fn no_decrypt_ipv6_and_the_none_value() {
        let f = ipv6(IPPROTO_TCP, &tcp_flags(50000, 443, TCP_SYN));
        let mut net = [0u8; 16];
        net[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        let v6_block = (NoDecryptKey::prefix_v6(32), NoDecryptKey::v6(443, net), 4);
        assert_eq!(nd(&[v6_block], &f, only_443).map(|h| h.rule), Some(4));
        // ::/0 would cover IPv4-mapped keys; the NONE entry under ::ffff:0:0/96 stops it.
        let any6 = (NoDecryptKey::prefix_v6(0), NoDecryptKey::v6(443, [0; 16]), 5);
        let none4 = (
            NoDecryptKey::prefix_v4(0),
            NoDecryptKey::v4(443, [0; 4]),
            NO_DECRYPT_NONE,
        );
        let syn4 = ipv4(IPPROTO_TCP, 0, &tcp(40000, 443));
        assert_eq!(nd(&[any6], &syn4, only_443).map(|h| h.rule), Some(5));
        assert_eq!(nd(&[any6, none4], &syn4, only_443), None);
        assert_eq!(nd(&[any6, none4], &f, only_443).map(|h| h.rule), Some(5));
        // A longer IPv4 block still wins over the NONE entry.
        let v4 = (NoDecryptKey::prefix_v4(24), NoDecryptKey::v4(443, [198, 18, 0, 0]), 6);
        assert_eq!(nd(&[any6, none4, v4], &syn4, only_443).map(|h| h.rule), Some(6));
    }

    #[test]
    fn connections_keep_the_decision_of_their_syn_when_the_entries_change() {
        use core::cell::RefCell;
        use std::collections::HashMap;
        let pins: RefCell<HashMap<FlowPinKey, u8>> = RefCell::new(HashMap::new());
        let listed = [(NoDecryptKey::prefix_v4(32), NoDecryptKey::v4(443, [198, 18, 0, 2]), 9)];
        let act_served = |entries: &[(u32, NoDecryptKey, u32)], frame: &[u8], served: bool| {
            let parsed = parse(frame);
            let Class::Inspect { dst_inspected } = classify(&parsed, only_443) else {
                panic!("not inspected: {parsed:?}");
            };
            inspected_action(
                &parsed,
                dst_inspected,
                served,
                only_443,
                |k| lpm(entries, k),
                |k| pins.borrow().get(k).copied(),
                |k, v| {
                    pins.borrow_mut().insert(*k, v);
                },
            )
        };
        let act = |entries: &[(u32, NoDecryptKey, u32)], frame: &[u8]| act_served(entries, frame, true);
        let from_client = |flags| ipv4(IPPROTO_TCP, 0, &tcp_flags(40000, 443, flags));
        let from_server = |flags| {
            let mut f = ipv4(IPPROTO_TCP, 0, &tcp_flags(443, 40000, flags));
            f[ETH_HLEN + 12..ETH_HLEN + 20].copy_from_slice(&[198, 18, 0, 2, 198, 18, 0, 1]);
            f
        };
        let steer = InspectedAction::Steer {
            pinned_against_entries: false,
        };
        let kept_steered = InspectedAction::Steer {
            pinned_against_entries: true,
        };

        // Steered at its SYN (nothing listed), then the server is listed: still steered,
        // both ways, and counted as kept against the entries.
        assert_eq!(act(&[], &from_client(TCP_SYN)), steer);
        assert_eq!(act(&listed, &from_server(TCP_SYN | TCP_ACK)), kept_steered);
        assert_eq!(act(&listed, &from_client(TCP_ACK)), kept_steered);
        // A new connection on the same 4-tuple is decided afresh by its SYN.
        assert_eq!(
            act(&listed, &from_client(TCP_SYN)),
            InspectedAction::Bridge {
                rule_hit: Some(9),
                pinned_against_entries: false
            }
        );
        // Bridged at its SYN, then the entry is removed: still bridged.
        assert_eq!(
            act(&[], &from_server(TCP_ACK)),
            InspectedAction::Bridge {
                rule_hit: None,
                pinned_against_entries: true
            }
        );
        // A SYN that found no worker (the daemon down) was bridged fail-open: the
        // connection stays bridged when a worker is back, which never saw its handshake.
        assert_eq!(act_served(&[], &from_client(TCP_SYN), false), steer);
        assert_eq!(act(&[], &from_server(TCP_SYN | TCP_ACK)), InspectedAction::Unserved);
        assert_eq!(act(&[], &from_client(TCP_ACK)), InspectedAction::Unserved);
        // Unless the entries now bridge it anyway.
        assert_eq!(
            act(&listed, &from_client(TCP_ACK)),
            InspectedAction::Bridge {
                rule_hit: None,
                pinned_against_entries: false
            }
        );
        // A connection the map does not know: the entries decide.
        pins.borrow_mut().clear();
        assert_eq!(act(&[], &from_client(TCP_ACK)), steer);
        assert_eq!(
            act(&listed, &from_client(TCP_ACK)),
            InspectedAction::Bridge {
                rule_hit: None,
                pinned_against_entries: false
            }
        );
    }

    #[test]
    fn a_flow_pin_key_is_the_same_both_ways() {
        let a = NoDecryptKey::v4(40000, [198, 18, 0, 1]);
        let b = NoDecryptKey::v4(443, [198, 18, 0, 2]);
        assert_eq!(FlowPinKey::new(a, b), FlowPinKey::new(b, a));
        assert_ne!(
            FlowPinKey::new(a, b),
            FlowPinKey::new(a, NoDecryptKey::v4(444, [198, 18, 0, 2]))
        );
        assert_eq!(core::mem::size_of::<FlowPinKey>(), 36);
    }

    #[test]
    fn icmp_is_plain() {
        assert_eq!(class(&ipv4(1, 0, &[8, 0, 0, 0, 0, 1, 0, 1])), Class::Plain);
    }
}
