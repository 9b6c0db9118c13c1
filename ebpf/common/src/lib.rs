//! Types and constants shared by the XDP programs (`loupe-ebpf`) and userspace.
//!
//! Everything here is `#[repr(C)]` or a plain integer so both sides agree on the
//! layout of map keys and values. With the `user` feature the map value types
//! implement `aya::Pod`.
#![no_std]

pub mod frame;
pub mod steer;

/// Map names, as declared in the eBPF object (aya looks maps up by these). At most
/// 15 characters so the kernel-visible name (`bpftool map`) is not truncated.
pub mod maps {
    /// `Array<WireConfig>`, one entry (index 0): ports and policy flags.
    pub const CONFIG: &str = "LOUPE_CONFIG";
    /// `HashMap<u16, u8>`: TCP ports (host byte order) whose segments go to AF_XDP.
    /// A present key means "inspect"; the value is ignored (1 by convention).
    pub const INSPECT_PORTS: &str = "LOUPE_INSPECT";
    /// `DevMap`: index [`super::PORT_INSIDE`] = inside ifindex, [`super::PORT_OUTSIDE`] =
    /// outside ifindex. A frame from port `p` is redirected to index `1 - p`.
    pub const PORTS: &str = "LOUPE_PORTS";
    /// `XskMap` keyed by [`super::xsk_key`]`(port, rx_queue)`.
    pub const XSKS: &str = "LOUPE_XSKS";
    /// `PerCpuArray<u64>` indexed by [`super::counter`] constants.
    pub const COUNTERS: &str = "LOUPE_COUNTERS";
    /// `LpmTrie<NoDecryptKey, u32>`: server blocks whose inspected TCP is bridged in
    /// XDP; the value is the rule index (or [`super::NO_DECRYPT_NONE`]).
    pub const NO_DECRYPT: &str = "LOUPE_NODECRYPT";
    /// `PerCpuArray<u64>` of [`super::MAX_RULE_HITS`] slots: client SYNs bridged by
    /// each no-decrypt rule, indexed by rule index.
    pub const RULE_HITS: &str = "LOUPE_RULE_HITS";
    /// `LruHashMap<FlowPinKey, u8>`: what the wire decided at each connection's SYN
    /// ([`super::PIN_STEERED`] or [`super::PIN_BRIDGED`]); its later segments follow that
    /// decision, so a no-decrypt entry added or removed meanwhile leaves it alone.
    pub const FLOWS: &str = "LOUPE_FLOWS";
    /// Loss injector: `Array<u32>`, index 0 = drop probability in per-mille (0..=1000).
    pub const LOSSY_CONFIG: &str = "LOSSY_CONFIG";
    /// Loss injector: `PerCpuArray<u64>` indexed by [`super::lossy`] constants.
    pub const LOSSY_COUNTERS: &str = "LOSSY_COUNTERS";
    /// Lab steering: `Array<u32>`, index 0 = the number of queues to steer over.
    pub const STEER_CONFIG: &str = "STEER_CONFIG";
    /// Lab steering: `PerCpuArray<u64>`, frames sent on each queue (index = queue) and
    /// frames left to the kernel's choice (index [`crate::steer::MAX_QUEUES`]).
    pub const STEER_COUNTERS: &str = "STEER_COUNTERS";
}

/// Program names in the eBPF objects.
pub mod programs {
    /// XDP virtual wire, attached to both appliance ports.
    pub const WIRE: &str = "loupe_wire";
    /// Loss injector, XDP (ingress).
    pub const LOSSY_INGRESS: &str = "lossy_ingress";
    /// Loss injector, tc classifier (egress).
    pub const LOSSY_EGRESS: &str = "lossy_egress";
    /// Lab steering, tc classifier (egress of the client's and server's ends).
    pub const STEER_EGRESS: &str = "steer_egress";
}

/// Names of the objects pinned under the wire's pin directory.
pub mod pins {
    pub const LINK_INSIDE: &str = "link_inside";
    pub const LINK_OUTSIDE: &str = "link_outside";
    pub const COUNTERS: &str = "counters";
    pub const CONFIG: &str = "config";
    pub const INSPECT_PORTS: &str = "inspect_ports";
    pub const NO_DECRYPT: &str = "no_decrypt";
    pub const RULE_HITS: &str = "rule_hits";
    /// Loss injector pins (only when the injector is pinned rather than held by a process).
    pub const LOSSY_INGRESS_LINK: &str = "lossy_ingress_link";
    pub const LOSSY_EGRESS_LINK: &str = "lossy_egress_link";
    pub const LOSSY_CONFIG: &str = "lossy_config";
    pub const LOSSY_COUNTERS: &str = "lossy_counters";
    /// Lab steering pins.
    pub const STEER_EGRESS_LINK: &str = "steer_egress_link";
    pub const STEER_CONFIG: &str = "steer_config";
    pub const STEER_COUNTERS: &str = "steer_counters";
}

/// Port index of the inside (client-facing) port.
pub const PORT_INSIDE: u32 = 0;
/// Port index of the outside (server-facing) port.
pub const PORT_OUTSIDE: u32 = 1;

/// Highest RX queue count served per port; queues at or above it are never steered.
pub const MAX_QUEUES: u32 = 64;
/// Entries of the XSKMAP: one block of [`MAX_QUEUES`] per port.
pub const XSK_ENTRIES: u32 = 2 * MAX_QUEUES;

/// XSKMAP key of `(port, rx_queue)`. Callers keep `rx_queue < MAX_QUEUES`.
#[inline(always)]
pub const fn xsk_key(port: u32, rx_queue: u32) -> u32 {
    port * MAX_QUEUES + rx_queue
}

/// Capacity of the inspected-ports hash map.
pub const MAX_INSPECT_PORTS: u32 = 64;

/// Capacity of the no-decrypt LPM trie (entries, i.e. server blocks times ports).
pub const MAX_NO_DECRYPT: u32 = 4096;
/// Slots of the per-rule hit counters: rule indices at or above it cannot be counted.
pub const MAX_RULE_HITS: u32 = 1024;
/// No-decrypt value that means "no rule": stored under `::ffff:0:0/96` of a port when an
/// IPv6 block would otherwise cover the IPv4-mapped addresses (an IPv6 rule never
/// matches IPv4 traffic, as in the policy).
pub const NO_DECRYPT_NONE: u32 = u32::MAX;

/// Key data of the no-decrypt LPM trie: the server's port, then its address, both in
/// network byte order; IPv4 as IPv4-mapped IPv6 (`::ffff:a.b.c.d`). The trie key is
/// `(prefix_len, NoDecryptKey)` with `prefix_len` from [`NoDecryptKey::prefix_v4`] /
/// [`NoDecryptKey::prefix_v6`] for entries and [`NoDecryptKey::FULL_PREFIX`] for lookups.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NoDecryptKey {
    /// Server port, big endian.
    pub port: [u8; 2],
    /// Server address: IPv6, or IPv4-mapped IPv6.
    pub addr: [u8; 16],
}

impl NoDecryptKey {
    /// Bits of a lookup key: the whole port and address.
    pub const FULL_PREFIX: u32 = 16 + 128;

    #[inline(always)]
    pub const fn v4(port: u16, addr: [u8; 4]) -> Self {
        let p = port.to_be_bytes();
        NoDecryptKey {
            port: p,
            addr: [
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3],
            ],
        }
    }

    #[inline(always)]
    pub const fn v6(port: u16, addr: [u8; 16]) -> Self {
        NoDecryptKey {
            port: port.to_be_bytes(),
            addr,
        }
    }

    /// Trie prefix length of an IPv4 block `/prefix` (0..=32) on one port.
    #[inline(always)]
    pub const fn prefix_v4(prefix: u8) -> u32 {
        16 + 96 + prefix as u32
    }

    /// Trie prefix length of an IPv6 block `/prefix` (0..=128) on one port.
    #[inline(always)]
    pub const fn prefix_v6(prefix: u8) -> u32 {
        16 + prefix as u32
    }
}

// SAFETY: repr(C), only byte arrays (alignment 1, 18 bytes), no padding.
#[cfg(feature = "user")]
unsafe impl aya::Pod for NoDecryptKey {}

/// Connections the wire remembers its decision for (`LOUPE_FLOWS`, least recently used
/// first out): well above what the workers hold (`max_flows` per queue), so only a flow
/// idle through this many newer connections falls back to the current entries.
pub const MAX_FLOW_PINS: u32 = 131_072;
/// `LOUPE_FLOWS` value: the connection's SYN went to AF_XDP (userspace owns it).
pub const PIN_STEERED: u8 = 1;
/// `LOUPE_FLOWS` value: the connection's SYN matched a no-decrypt entry (bridged).
pub const PIN_BRIDGED: u8 = 2;
/// `LOUPE_FLOWS` value: the connection's SYN found no worker (the daemon was down) and was
/// bridged fail-open: the connection stays bridged when a daemon comes back, whose workers
/// never saw its handshake.
pub const PIN_UNSERVED: u8 = 3;

/// A TCP connection's key in `LOUPE_FLOWS`, the same for both directions: its two
/// endpoints (port and address as in [`NoDecryptKey`]), the lower one first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowPinKey {
    pub low: NoDecryptKey,
    pub high: NoDecryptKey,
}

impl FlowPinKey {
    #[inline(always)]
    pub fn new(a: NoDecryptKey, b: NoDecryptKey) -> Self {
        if (a.addr, a.port) <= (b.addr, b.port) {
            FlowPinKey { low: a, high: b }
        } else {
            FlowPinKey { low: b, high: a }
        }
    }
}

// SAFETY: repr(C), two 18-byte byte-array structs (alignment 1), no padding.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowPinKey {}

/// Per-CPU counter indices of the `LOUPE_COUNTERS` map.
///
/// `BRIDGED` counts every frame sent to the peer port; `MALFORMED`, `UNSERVED`,
/// `VLAN`, `FRAGMENTS` and `BRIDGED_NO_DECRYPT` are subsets of it (frames that were
/// bridged for that reason).
pub mod counter {
    /// Inspected TCP redirected to an AF_XDP socket.
    pub const STEERED: u32 = 0;
    /// Redirected to the peer port.
    pub const BRIDGED: u32 = 1;
    /// Inspected TCP dropped because no socket served the queue and fail-closed is set.
    pub const DROPPED_FAIL_CLOSED: u32 = 2;
    /// Truncated frame or inconsistent header lengths (still bridged).
    pub const MALFORMED: u32 = 3;
    /// `bpf_redirect_map` refused the frame (peer missing from the devmap, socket
    /// vanished between lookup and redirect); the frame is dropped.
    pub const REDIRECT_FAILED: u32 = 4;
    /// UDP to or from an inspected port dropped because `drop_quic` is set.
    pub const DROPPED_QUIC: u32 = 5;
    /// Inspected TCP bridged uninspected because no socket served the queue (fail-open).
    pub const UNSERVED: u32 = 6;
    /// Frame arrived on an interface that is neither configured port; passed to the stack.
    pub const UNKNOWN_INGRESS: u32 = 7;
    /// VLAN-tagged frame (bridged without looking inside).
    pub const VLAN: u32 = 8;
    /// IP fragment (bridged: only the first fragment carries ports).
    pub const FRAGMENTS: u32 = 9;
    /// Inspected TCP bridged because its server matched a no-decrypt entry.
    pub const BRIDGED_NO_DECRYPT: u32 = 10;
    /// Inspected TCP that followed its connection's remembered decision against the
    /// current no-decrypt entries (a policy changed while the connection was open):
    /// steered although now listed, or bridged although no longer listed.
    pub const PINNED_AGAINST_ENTRIES: u32 = 11;
    /// Number of counters (one row of the map).
    pub const COUNT: u32 = 12;

    /// The counters map holds one row of [`COUNT`] counters per place a frame came in:
    /// each port's queues the daemon serves (below `WireConfig::queues`), one row per
    /// port for all its other queues, and one for frames on neither port.
    pub const QUEUE_SLOTS: u32 = crate::MAX_QUEUES + 1;
    /// The row of a port's queues beyond those served.
    pub const OTHER_QUEUES: u32 = crate::MAX_QUEUES;
    /// The row of frames that came in on neither port.
    pub const NO_PORT_ROW: u32 = 2 * QUEUE_SLOTS;
    pub const ROWS: u32 = NO_PORT_ROW + 1;
    /// Entries of the counters map.
    pub const ENTRIES: u32 = ROWS * COUNT;

    /// The row of a frame that came in on `port` at `rx_queue`, with `served` queues.
    #[inline(always)]
    pub const fn row(port: u32, rx_queue: u32, served: u32) -> u32 {
        let slot = if rx_queue < served && rx_queue < crate::MAX_QUEUES {
            rx_queue
        } else {
            OTHER_QUEUES
        };
        port * QUEUE_SLOTS + slot
    }

    /// The map index of `counter` in `row`.
    #[inline(always)]
    pub const fn index(row: u32, counter: u32) -> u32 {
        row * COUNT + counter
    }
}

/// Per-CPU counter indices of the `LOSSY_COUNTERS` map.
pub mod lossy {
    pub const INGRESS_PASSED: u32 = 0;
    pub const INGRESS_DROPPED: u32 = 1;
    pub const EGRESS_PASSED: u32 = 2;
    pub const EGRESS_DROPPED: u32 = 3;
    pub const EGRESS_DUPLICATED: u32 = 4;
    pub const EGRESS_CORRUPTED: u32 = 5;
    pub const EGRESS_REORDERED: u32 = 6;
    pub const COUNT: u32 = 7;
    /// Denominator of every probability.
    pub const PER_MILLE: u32 = 1000;
    /// `LOSSY_CONFIG` indices: per-mille of frames dropped (both ways), and of frames
    /// sent that are duplicated, corrupted (a payload bit flipped, checksum left as it
    /// was) and reordered (marked for the tc filter that detours them through an ifb).
    pub const CONFIG_LOSS: u32 = 0;
    pub const CONFIG_DUPLICATE: u32 = 1;
    pub const CONFIG_CORRUPT: u32 = 2;
    pub const CONFIG_REORDER: u32 = 3;
    pub const CONFIG_ENTRIES: u32 = 4;
    /// skb marks: a duplicate the injector made (passed untouched), and a frame chosen
    /// to be reordered (matched by the ifb detour's u32 filter).
    pub const DUPLICATE_MARK: u32 = 0x4c50_0001;
    pub const REORDER_MARK: u32 = 0x4c50_0002;
}

/// Value of the `LOUPE_CONFIG` array (index 0), written by userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WireConfig {
    /// ifindex of the inside port (0 = not configured: the program passes frames to the stack).
    pub inside_ifindex: u32,
    /// ifindex of the outside port.
    pub outside_ifindex: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Attach mode the loader used (`ATTACH_*`); informational, for tools reading the pin.
    pub attach_mode: u32,
    /// Queues of each port the daemon serves (0..queues): each counts in a row of its
    /// own (`counter::row`); frames on other queues share a row per port.
    pub queues: u32,
}

impl WireConfig {
    /// Drop inspected TCP when no AF_XDP socket serves the queue (default: bridge it).
    pub const FLAG_FAIL_CLOSED: u32 = 1 << 0;
    /// Drop UDP to/from an inspected port (QUIC), so clients fall back to TCP/TLS.
    pub const FLAG_DROP_QUIC: u32 = 1 << 1;

    pub const ATTACH_NATIVE: u32 = 0;
    pub const ATTACH_GENERIC: u32 = 1;

    #[inline(always)]
    pub const fn fail_closed(&self) -> bool {
        self.flags & Self::FLAG_FAIL_CLOSED != 0
    }

    #[inline(always)]
    pub const fn drop_quic(&self) -> bool {
        self.flags & Self::FLAG_DROP_QUIC != 0
    }

    /// Port index (`PORT_INSIDE`/`PORT_OUTSIDE`) of `ifindex`, if it is one of ours.
    #[inline(always)]
    pub const fn port_of(&self, ifindex: u32) -> Option<u32> {
        if ifindex == 0 {
            None
        } else if ifindex == self.inside_ifindex {
            Some(PORT_INSIDE)
        } else if ifindex == self.outside_ifindex {
            Some(PORT_OUTSIDE)
        } else {
            None
        }
    }
}

// SAFETY: repr(C), only u32 fields, no padding.
#[cfg(feature = "user")]
unsafe impl aya::Pod for WireConfig {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xsk_keys_do_not_overlap_between_ports() {
        assert_eq!(xsk_key(PORT_INSIDE, MAX_QUEUES - 1), MAX_QUEUES - 1);
        assert_eq!(xsk_key(PORT_OUTSIDE, 0), MAX_QUEUES);
        assert_eq!(xsk_key(PORT_OUTSIDE, MAX_QUEUES - 1), XSK_ENTRIES - 1);
    }

    #[test]
    fn counter_rows_do_not_overlap() {
        use counter::*;
        assert_eq!(row(PORT_INSIDE, 0, 2), 0);
        assert_eq!(row(PORT_INSIDE, 1, 2), 1);
        assert_eq!(row(PORT_INSIDE, 2, 2), OTHER_QUEUES);
        assert_eq!(row(PORT_INSIDE, MAX_QUEUES + 5, MAX_QUEUES + 9), OTHER_QUEUES);
        assert_eq!(row(PORT_OUTSIDE, 0, 2), QUEUE_SLOTS);
        assert_eq!(row(PORT_OUTSIDE, 7, 2), QUEUE_SLOTS + OTHER_QUEUES);
        assert!(row(PORT_OUTSIDE, MAX_QUEUES - 1, MAX_QUEUES) < NO_PORT_ROW);
        assert_eq!(index(NO_PORT_ROW, COUNT - 1), ENTRIES - 1);
    }

    #[test]
    fn port_of_ignores_unconfigured_zero() {
        let cfg = WireConfig::default();
        assert_eq!(cfg.port_of(0), None);
        let cfg = WireConfig {
            inside_ifindex: 7,
            outside_ifindex: 9,
            ..WireConfig::default()
        };
        assert_eq!(cfg.port_of(7), Some(PORT_INSIDE));
        assert_eq!(cfg.port_of(9), Some(PORT_OUTSIDE));
        assert_eq!(cfg.port_of(8), None);
    }

    #[test]
    fn flags_are_independent() {
        let cfg = WireConfig {
            flags: WireConfig::FLAG_DROP_QUIC,
            ..WireConfig::default()
        };
        assert!(cfg.drop_quic());
        assert!(!cfg.fail_closed());
        assert_eq!(core::mem::size_of::<WireConfig>(), 20);
    }

    #[test]
    fn no_decrypt_key_layout_and_prefixes() {
        assert_eq!(core::mem::size_of::<NoDecryptKey>(), 18);
        assert_eq!(core::mem::align_of::<NoDecryptKey>(), 1);
        let k = NoDecryptKey::v4(443, [198, 18, 0, 2]);
        assert_eq!(k.port, [0x01, 0xbb]);
        assert_eq!(k.addr, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 0, 2]);
        // A /32 covers the port and all 128 address bits; a /0 the port and the v4-mapped prefix.
        assert_eq!(NoDecryptKey::prefix_v4(32), NoDecryptKey::FULL_PREFIX);
        assert_eq!(NoDecryptKey::prefix_v4(0), 16 + 96);
        assert_eq!(NoDecryptKey::prefix_v6(128), NoDecryptKey::FULL_PREFIX);
        assert_eq!(NoDecryptKey::prefix_v6(0), 16);
        assert_eq!(counter::PINNED_AGAINST_ENTRIES + 1, counter::COUNT);
    }
}
