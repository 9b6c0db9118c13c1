//! Symmetric flow steering for the lab's multi-queue veths: the queue a frame is sent
//! on, from its addresses and ports, the same for both directions of a connection.
//!
//! A NIC in front of loupe spreads flows over its RX queues with RSS; configured
//! symmetric (`ethtool -X <if> hfunc toeplitz symmetric-xor`, or the 0x6d5a key), both
//! directions of a connection land on the same queue number, and since loupe keeps the
//! client's 4-tuple on the upstream leg, both legs of a session reach one worker. A
//! veth has no RSS: the receiving end's queue is the queue the sender picked. The lab
//! makes the sender pick like a symmetric RSS would (`loupe-lab-steer`, a tc egress
//! program on the client's and the server's ends, calls [`queue_of`]).

use crate::frame::{Parsed, L4};

/// The most queues the lab steers over.
pub const MAX_QUEUES: u32 = 64;

/// The queue (`0..queues`) of a TCP or UDP frame, or `None` when the frame has no
/// ports (other protocols, fragments, non-IP) or there is one queue. Symmetric:
/// swapping source and destination (address and port) gives the same queue.
#[inline(always)]
pub fn queue_of(parsed: &Parsed, queues: u32) -> Option<u32> {
    if queues <= 1 || queues > MAX_QUEUES {
        return None;
    }
    let (addresses, ports) = match *parsed {
        Parsed::Ipv4 { src, dst, l4 } => (u32::from_ne_bytes(src) ^ u32::from_ne_bytes(dst), ports_of(l4)?),
        Parsed::Ipv6 { src, dst, l4 } => {
            let mut folded = 0u32;
            let mut i = 0;
            while i < 16 {
                let word = |a: &[u8; 16]| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
                folded ^= word(&src) ^ word(&dst);
                i += 4;
            }
            (folded, ports_of(l4)?)
        }
        _ => return None,
    };
    // checked_rem, not `%`: the eBPF build must hold no panic path (the verifier
    // rejects the panic handler's endless loop), and `queues` is never 0 here anyway.
    mix(addresses, ports).checked_rem(queues)
}

/// XOR of the two ports: symmetric, and distinct for the ephemeral ports of one client.
#[inline(always)]
fn ports_of(l4: L4) -> Option<u32> {
    match l4 {
        L4::Tcp { src, dst, .. } | L4::Udp { src, dst } => Some((src ^ dst) as u32),
        L4::Other(_) | L4::Fragment => None,
    }
}

/// A 32-bit finaliser (murmur3's) over both inputs, so consecutive ephemeral ports
/// alternate between queues instead of following the low bit alone.
#[inline(always)]
fn mix(addresses: u32, ports: u32) -> u32 {
    let mut h = addresses ^ ports.wrapping_mul(0x9e37_79b9);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Parsed {
        Parsed::Ipv4 {
            src,
            dst,
            l4: L4::Tcp {
                src: sport,
                dst: dport,
                flags: 0,
            },
        }
    }

    #[test]
    fn both_directions_of_a_connection_get_one_queue() {
        for queues in [2, 3, 4, 8] {
            for port in 32768..33768u16 {
                let out = queue_of(&v4([198, 18, 0, 1], port, [198, 18, 0, 2], 443), queues).unwrap();
                let back = queue_of(&v4([198, 18, 0, 2], 443, [198, 18, 0, 1], port), queues).unwrap();
                assert_eq!(out, back, "port {port}, {queues} queues");
                assert!(out < queues);
            }
        }
        let a = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let b = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let udp = |src, sport, dst, dport| Parsed::Ipv6 {
            src,
            dst,
            l4: L4::Udp { src: sport, dst: dport },
        };
        assert_eq!(queue_of(&udp(a, 5000, b, 443), 4), queue_of(&udp(b, 443, a, 5000), 4));
    }

    #[test]
    fn one_clients_connections_spread_evenly() {
        let mut per_queue = [0u32; 2];
        for port in 32768..34768u16 {
            per_queue[queue_of(&v4([198, 18, 0, 1], port, [198, 18, 0, 2], 443), 2).unwrap() as usize] += 1;
        }
        // 2,000 connections: each queue within 10% of half.
        assert!(per_queue.iter().all(|&n| (900..=1100).contains(&n)), "{per_queue:?}");
        // Consecutive ports do not simply alternate with the low bit: both patterns occur.
        let q = |p| queue_of(&v4([198, 18, 0, 1], p, [198, 18, 0, 2], 443), 2).unwrap();
        assert!((40000..40100u16).any(|p| q(p) == q(p + 1)));
        assert!((40000..40100u16).any(|p| q(p) != q(p + 1)));
    }

    #[test]
    fn frames_without_ports_or_a_single_queue_are_left_alone() {
        assert_eq!(queue_of(&v4([198, 18, 0, 1], 1, [198, 18, 0, 2], 443), 1), None);
        assert_eq!(
            queue_of(&v4([198, 18, 0, 1], 1, [198, 18, 0, 2], 443), MAX_QUEUES + 1),
            None
        );
        let icmp = Parsed::Ipv4 {
            src: [198, 18, 0, 1],
            dst: [198, 18, 0, 2],
            l4: L4::Other(1),
        };
        assert_eq!(queue_of(&icmp, 2), None);
        assert_eq!(queue_of(&Parsed::OtherEthertype(0x0806), 2), None);
    }
}
