//! Wire formats of the frames the XDP program steers to userspace: Ethernet, IPv4/IPv6
//! and the TCP ports and flags. Sans-IO: bytes in, a parsed view or an error value out.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const ETHERNET_HEADER_LEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;

pub type MacAddr = [u8; 6];

/// TCP flag bits as they appear in byte 13 of the TCP header.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// Why a frame could not be parsed. Malformed input is an error value, never a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    Truncated {
        layer: &'static str,
        need: usize,
        have: usize,
    },
    NotIp {
        ethertype: u16,
    },
    NotTcp {
        protocol: u8,
    },
    BadIpHeader(&'static str),
    BadTcpHeader(&'static str),
    Fragmented,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Truncated { layer, need, have } => {
                write!(f, "truncated {layer} header: need {need} bytes, have {have}")
            }
            FrameError::NotIp { ethertype } => write!(f, "not IPv4/IPv6 (ethertype {ethertype:#06x})"),
            FrameError::NotTcp { protocol } => write!(f, "not TCP (IP protocol {protocol})"),
            FrameError::BadIpHeader(why) => write!(f, "bad IP header: {why}"),
            FrameError::BadTcpHeader(why) => write!(f, "bad TCP header: {why}"),
            FrameError::Fragmented => write!(f, "IP fragment (fragments are not reassembled)"),
        }
    }
}

impl std::error::Error for FrameError {}

/// The parts of a TCP-over-IP Ethernet frame the flow table needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpFrame {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub flags: u8,
    /// The segment's sequence number (a SYN's: the sender's initial sequence number).
    pub seq: u32,
    /// Offset of the IP header in the frame (the Ethernet header length).
    pub ip_offset: usize,
    /// Length of the IP packet (header and payload), padding excluded.
    pub ip_len: usize,
    /// Offset of the TCP header in the IP packet (the IP header's length).
    pub tcp_offset: usize,
}

impl TcpFrame {
    pub fn is_syn(&self) -> bool {
        self.flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN
    }
    pub fn is_rst(&self) -> bool {
        self.flags & tcp_flags::RST != 0
    }
}

fn need(layer: &'static str, bytes: &[u8], len: usize) -> Result<(), FrameError> {
    if bytes.len() < len {
        Err(FrameError::Truncated {
            layer,
            need: len,
            have: bytes.len(),
        })
    } else {
        Ok(())
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Parses an Ethernet frame carrying TCP over IPv4 or IPv6 (no VLAN tag: the XDP program
/// bridges tagged frames, so a tagged frame here is an error).
pub fn parse_tcp_frame(frame: &[u8]) -> Result<TcpFrame, FrameError> {
    need("Ethernet", frame, ETHERNET_HEADER_LEN)?;
    let mut dst_mac = [0u8; 6];
    let mut src_mac = [0u8; 6];
    dst_mac.copy_from_slice(&frame[0..6]);
    src_mac.copy_from_slice(&frame[6..12]);
    let ethertype = be16(frame, 12);
    let ip = &frame[ETHERNET_HEADER_LEN..];
    let (src, dst, protocol, l4_offset, ip_len) = match ethertype {
        ETHERTYPE_IPV4 => parse_ipv4(ip)?,
        ETHERTYPE_IPV6 => parse_ipv6(ip)?,
        other => return Err(FrameError::NotIp { ethertype: other }),
    };
    if protocol != IPPROTO_TCP {
        return Err(FrameError::NotTcp { protocol });
    }
    let tcp = &ip[l4_offset..ip_len];
    need("TCP", tcp, 20)?;
    let data_offset = usize::from(tcp[12] >> 4) * 4;
    if data_offset < 20 {
        return Err(FrameError::BadTcpHeader("data offset below 20 bytes"));
    }
    need("TCP options", tcp, data_offset)?;
    Ok(TcpFrame {
        src_mac,
        dst_mac,
        src,
        dst,
        src_port: be16(tcp, 0),
        dst_port: be16(tcp, 2),
        flags: tcp[13],
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        ip_offset: ETHERNET_HEADER_LEN,
        ip_len,
        tcp_offset: l4_offset,
    })
}

/// Adds `bytes` as big-endian 16-bit words to a one's-complement accumulator. Taken 32
/// bits at a time: 2^16 ≡ 1 modulo 0xffff, so a 32-bit word adds as its two halves do.
fn ones_complement_sum(bytes: &[u8], mut acc: u64) -> u64 {
    let mut words = bytes.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    acc + u64::from(u32::from_be_bytes(tail))
}

fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Whether the IPv4 header checksum (IPv6 has none) and the TCP checksum of `packet`
/// (the IP packet `tcp` was parsed from) are right. A frame whose bits changed on the
/// wire fails here and must not reach a TCP stack: its bytes would be relayed as data.
pub fn checksums_ok(packet: &[u8], tcp: &TcpFrame) -> bool {
    let segment = &packet[tcp.tcp_offset..];
    let length = segment.len() as u64;
    let pseudo = match (tcp.src, tcp.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            if fold(ones_complement_sum(&packet[..tcp.tcp_offset], 0)) != 0xffff {
                return false;
            }
            let acc = ones_complement_sum(&src.octets(), 0);
            ones_complement_sum(&dst.octets(), acc) + u64::from(IPPROTO_TCP) + length
        }
        (src, dst) => {
            let bytes = |a: IpAddr| match a {
                IpAddr::V6(a) => a.octets(),
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            };
            let acc = ones_complement_sum(&bytes(src), 0);
            ones_complement_sum(&bytes(dst), acc) + u64::from(IPPROTO_TCP) + length
        }
    };
    fold(ones_complement_sum(segment, pseudo)) == 0xffff
}

type IpParts = (IpAddr, IpAddr, u8, usize, usize);

fn parse_ipv4(ip: &[u8]) -> Result<IpParts, FrameError> {
    need("IPv4", ip, 20)?;
    if ip[0] >> 4 != 4 {
        return Err(FrameError::BadIpHeader("IPv4 ethertype with another IP version"));
    }
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    if header_len < 20 {
        return Err(FrameError::BadIpHeader("IPv4 header length below 20 bytes"));
    }
    let total_len = usize::from(be16(ip, 2));
    if total_len < header_len {
        return Err(FrameError::BadIpHeader("IPv4 total length below header length"));
    }
    need("IPv4 payload", ip, total_len)?;
    let fragment = be16(ip, 6);
    // More-fragments flag or a non-zero offset.
    if fragment & 0x3fff != 0 {
        return Err(FrameError::Fragmented);
    }
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    Ok((src.into(), dst.into(), ip[9], header_len, total_len))
}

fn parse_ipv6(ip: &[u8]) -> Result<IpParts, FrameError> {
    need("IPv6", ip, 40)?;
    if ip[0] >> 4 != 6 {
        return Err(FrameError::BadIpHeader("IPv6 ethertype with another IP version"));
    }
    let payload_len = usize::from(be16(ip, 4));
    let total_len = 40 + payload_len;
    need("IPv6 payload", ip, total_len)?;
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&ip[8..24]);
    dst.copy_from_slice(&ip[24..40]);
    // Extension headers are not walked: a TCP segment behind them is reported as not TCP
    // and the worker counts it (the endpoints never send such segments in practice).
    Ok((
        Ipv6Addr::from(src).into(),
        Ipv6Addr::from(dst).into(),
        ip[6],
        40,
        total_len,
    ))
}

/// Writes an Ethernet header for an IP packet of the given version into `out[..14]`.
pub fn write_ethernet_header(out: &mut [u8], dst: MacAddr, src: MacAddr, ip_version: u8) {
    out[0..6].copy_from_slice(&dst);
    out[6..12].copy_from_slice(&src);
    let ethertype = if ip_version == 6 {
        ETHERTYPE_IPV6
    } else {
        ETHERTYPE_IPV4
    };
    out[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds an Ethernet/IPv4/TCP frame (checksums left zero: the parser does not check them).
    pub fn ipv4_tcp_frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let total = (20 + 20 + payload.len()) as u16;
        f[14] = 0x45;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f[14 + 6] = 0x40; // don't fragment
        f[14 + 8] = 64;
        f[14 + 9] = IPPROTO_TCP;
        f[26..30].copy_from_slice(&src);
        f[30..34].copy_from_slice(&dst);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f[34 + 12] = 5 << 4;
        f[34 + 13] = flags;
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn parses_ipv4_syn() {
        let mut f = ipv4_tcp_frame([198, 18, 0, 1], [198, 18, 0, 2], 40000, 443, tcp_flags::SYN, b"");
        f[38..42].copy_from_slice(&0xfedc_ba98_u32.to_be_bytes());
        let t = parse_tcp_frame(&f).unwrap();
        assert_eq!(t.seq, 0xfedc_ba98, "the client's initial sequence number");
        assert_eq!(t.src, IpAddr::from([198, 18, 0, 1]));
        assert_eq!(t.dst, IpAddr::from([198, 18, 0, 2]));
        assert_eq!((t.src_port, t.dst_port), (40000, 443));
        assert!(t.is_syn());
        assert!(!t.is_rst());
        assert_eq!(t.src_mac, [2, 0, 0, 0, 0, 1]);
        assert_eq!(t.ip_len, 40);
    }

    /// A checksummed IPv4 segment, computed the slow way (16-bit words) to check against.
    fn checksummed(mut f: Vec<u8>) -> Vec<u8> {
        let words = |b: &[u8]| -> u32 {
            b.chunks(2)
                .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
                .sum()
        };
        let fold16 = |mut x: u32| {
            while x >> 16 != 0 {
                x = (x & 0xffff) + (x >> 16);
            }
            !(x as u16)
        };
        let ip_len = f.len() - 14;
        f[16..18].copy_from_slice(&(ip_len as u16).to_be_bytes());
        f[24..26].fill(0);
        let ip_sum = fold16(words(&f[14..34]));
        f[24..26].copy_from_slice(&ip_sum.to_be_bytes());
        f[34 + 16..34 + 18].fill(0);
        let tcp_len = (f.len() - 34) as u32;
        let pseudo = words(&f[26..34]) + 6 + tcp_len;
        let tcp_sum = fold16(pseudo + words(&f[34..]));
        f[34 + 16..34 + 18].copy_from_slice(&tcp_sum.to_be_bytes());
        f
    }

    #[test]
    fn checksums_hold_and_any_flipped_bit_fails_them() {
        for payload in [&b""[..], b"x", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", &[0xffu8; 1001]] {
            let f = checksummed(ipv4_tcp_frame(
                [198, 18, 0, 1],
                [198, 18, 0, 2],
                40000,
                443,
                tcp_flags::ACK,
                payload,
            ));
            let t = parse_tcp_frame(&f).unwrap();
            assert!(checksums_ok(&f[14..14 + t.ip_len], &t), "payload of {}", payload.len());
            // Every bit of the IP packet matters (the Ethernet header is not covered).
            for byte in 14..f.len() {
                let mut bad = f.clone();
                bad[byte] ^= 0x10;
                let Ok(bt) = parse_tcp_frame(&bad) else { continue };
                assert!(
                    !checksums_ok(&bad[14..14 + bt.ip_len], &bt),
                    "a flipped bit in byte {byte} of {} passed",
                    f.len()
                );
            }
        }
    }

    #[test]
    fn syn_ack_is_not_a_new_connection() {
        let f = ipv4_tcp_frame(
            [1, 1, 1, 1],
            [2, 2, 2, 2],
            443,
            40000,
            tcp_flags::SYN | tcp_flags::ACK,
            b"",
        );
        assert!(!parse_tcp_frame(&f).unwrap().is_syn());
    }

    #[test]
    fn ethernet_padding_is_excluded() {
        let mut f = ipv4_tcp_frame([1, 1, 1, 1], [2, 2, 2, 2], 1, 443, tcp_flags::ACK, b"");
        f.extend_from_slice(&[0u8; 6]); // minimum-size frame padding
        assert_eq!(parse_tcp_frame(&f).unwrap().ip_len, 40);
    }

    #[test]
    fn parses_ipv6() {
        let mut f = vec![0u8; 14 + 40 + 20];
        f[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        f[14] = 0x60;
        f[18..20].copy_from_slice(&20u16.to_be_bytes());
        f[20] = IPPROTO_TCP;
        f[14 + 8 + 15] = 1;
        f[14 + 24 + 15] = 2;
        f[54..56].copy_from_slice(&5555u16.to_be_bytes());
        f[56..58].copy_from_slice(&443u16.to_be_bytes());
        f[54 + 12] = 5 << 4;
        let t = parse_tcp_frame(&f).unwrap();
        assert_eq!(t.dst, "::2".parse::<IpAddr>().unwrap());
        assert_eq!(t.dst_port, 443);
        // The TCP checksum over the IPv6 pseudo-header, the slow way: the addresses, the
        // upper-layer length (20) and the next header (6), then the segment.
        let words = |b: &[u8]| -> u32 { b.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum() };
        let mut sum = words(&f[22..54]) + 20 + 6 + words(&f[54..]);
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let ip = &f[14..];
        assert!(!checksums_ok(ip, &t), "a zero checksum passed");
        f[54 + 16..54 + 18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        let ip = &f[14..];
        assert!(checksums_ok(ip, &t), "the right IPv6 TCP checksum failed");
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let f = ipv4_tcp_frame([1, 1, 1, 1], [2, 2, 2, 2], 1, 443, tcp_flags::ACK, b"hello");
        for len in 0..f.len() {
            assert!(parse_tcp_frame(&f[..len]).is_err(), "length {len} parsed");
        }
    }

    #[test]
    fn rejects_bad_headers() {
        let mut f = ipv4_tcp_frame([1, 1, 1, 1], [2, 2, 2, 2], 1, 443, 0, b"");
        f[14] = 0x44; // IHL 4
        assert_eq!(
            parse_tcp_frame(&f),
            Err(FrameError::BadIpHeader("IPv4 header length below 20 bytes"))
        );
        let mut f = ipv4_tcp_frame([1, 1, 1, 1], [2, 2, 2, 2], 1, 443, 0, b"");
        f[14 + 9] = 17;
        assert_eq!(parse_tcp_frame(&f), Err(FrameError::NotTcp { protocol: 17 }));
        let mut f = ipv4_tcp_frame([1, 1, 1, 1], [2, 2, 2, 2], 1, 443, 0, b"");
        f[14 + 6] = 0x20; // more fragments
        assert_eq!(parse_tcp_frame(&f), Err(FrameError::Fragmented));
        let mut f = ipv4_tcp_frame([1, 1, 1, 1], [2, 2, 2, 2], 1, 443, 0, b"");
        f[34 + 12] = 4 << 4;
        assert!(matches!(parse_tcp_frame(&f), Err(FrameError::BadTcpHeader(_))));
        let mut f = ipv4_tcp_frame([1, 1, 1, 1], [2, 2, 2, 2], 1, 443, 0, b"");
        f[12] = 0x81; // VLAN
        assert!(matches!(
            parse_tcp_frame(&f),
            Err(FrameError::NotIp { ethertype: 0x8100 })
        ));
    }

    #[test]
    fn writes_ethernet_header() {
        let mut out = [0u8; 14];
        write_ethernet_header(&mut out, [1; 6], [2; 6], 6);
        assert_eq!(&out[0..6], &[1; 6]);
        assert_eq!(&out[6..12], &[2; 6]);
        assert_eq!(&out[12..14], &[0x86, 0xdd]);
    }
}
