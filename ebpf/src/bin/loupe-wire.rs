//! `loupe_wire`: the XDP virtual wire, one object attached to both appliance ports.
//!
//! - TCP with an inspected port (either side) whose server matches a no-decrypt
//!   entry (`LOUPE_NODECRYPT`, longest prefix over server port and address) is
//!   bridged; a client's SYN counts against the entry's rule (`LOUPE_RULE_HITS`).
//!   The decision taken at a connection's SYN is remembered (`LOUPE_FLOWS`) and its
//!   later segments follow it, so entries changed by a policy load apply to new
//!   connections only.
//! - Other TCP with an inspected port goes to the AF_XDP socket of its RX
//!   queue (`LOUPE_XSKS[xsk_key(port, queue)]`) when one is registered.
//! - With no socket: bridged (fail-open, default) or dropped (fail-closed flag). A
//!   connection whose SYN was bridged so stays bridged when a worker is back.
//! - UDP with an inspected port (QUIC) is dropped when the drop-QUIC flag is set.
//! - Everything else is redirected to the peer port through `LOUPE_PORTS`
//!   (a DEVMAP indexed by port: the ingress ifindex is matched against the two
//!   ifindexes in `LOUPE_CONFIG`, and the frame goes to index `1 - port`).
//!
//! Redirect to a veth delivers only when the veth's peer runs NAPI (an XDP
//! program or GRO enabled on it); otherwise the kernel drops the frame after
//! this program returned XDP_REDIRECT (visible in the xdp tracepoints, not here).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers,
    macros::{map, xdp},
    maps::{lpm_trie::Key, Array, DevMap, HashMap, LpmTrie, LruHashMap, PerCpuArray, XskMap},
    programs::XdpContext,
};
use loupe_common::{
    counter,
    frame::{classify, inspected_action, parse, Class, Frame, InspectedAction},
    xsk_key, FlowPinKey, NoDecryptKey, WireConfig, MAX_FLOW_PINS, MAX_INSPECT_PORTS, MAX_NO_DECRYPT, MAX_QUEUES,
    MAX_RULE_HITS, XSK_ENTRIES,
};

#[map]
static LOUPE_CONFIG: Array<WireConfig> = Array::with_max_entries(1, 0);

#[map]
static LOUPE_INSPECT: HashMap<u16, u8> = HashMap::with_max_entries(MAX_INSPECT_PORTS, 0);

#[map]
static LOUPE_PORTS: DevMap = DevMap::with_max_entries(2, 0);

#[map]
static LOUPE_XSKS: XskMap = XskMap::with_max_entries(XSK_ENTRIES, 0);

#[map]
static LOUPE_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::ENTRIES, 0);

#[map]
static LOUPE_NODECRYPT: LpmTrie<NoDecryptKey, u32> = LpmTrie::with_max_entries(MAX_NO_DECRYPT, 0);

#[map]
// Pinned by the daemon in its pin directory (`EbpfLoader::map_pin_path`), so a restarted
// daemon keeps the decisions of the connections open through its restart.
static LOUPE_FLOWS: LruHashMap<FlowPinKey, u8> = LruHashMap::with_max_entries(MAX_FLOW_PINS, 0);

#[map]
static LOUPE_RULE_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_RULE_HITS, 0);

/// The packet's first (or only) piece as `[data, data_end)`; every access is checked
/// against `data_end` in the pointer form the verifier tracks. `len` is the whole
/// packet's, pieces of a multi-buffer frame included, so length checks see the packet.
struct XdpFrame {
    start: usize,
    end: usize,
    len: usize,
}

impl Frame for XdpFrame {
    #[inline(always)]
    fn header<const N: usize>(&self, off: usize) -> Option<&[u8; N]> {
        let ptr = self.start + off;
        if ptr + N > self.end {
            return None;
        }
        // SAFETY: the N bytes at ptr lie inside the packet (checked above).
        Some(unsafe { &*(ptr as *const [u8; N]) })
    }

    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.len
    }
}

/// Counts in the frame's row (`counter::row`: its port and queue).
#[inline(always)]
fn count(row: u32, counter: u32) {
    if let Some(slot) = LOUPE_COUNTERS.get_ptr_mut(counter::index(row, counter)) {
        // SAFETY: per-CPU slot, XDP runs with preemption disabled.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn count_rule_hit(rule: u32) {
    // Rule indices beyond the map are refused by userspace; the lookup fails for them anyway.
    if let Some(slot) = LOUPE_RULE_HITS.get_ptr_mut(rule) {
        // SAFETY: per-CPU slot, XDP runs with preemption disabled.
        unsafe { *slot += 1 };
    }
}

// `frags`: the kernel may pass a frame larger than a page in pieces (multi-buffer, for
// jumbo MTUs; veth refuses native XDP above ~3,500 bytes without it). Headers are read from
// the first piece, `[data, data_end)`; redirects carry every piece.
#[xdp(frags)]
pub fn loupe_wire(ctx: XdpContext) -> u32 {
    let Some(cfg) = LOUPE_CONFIG.get(0) else {
        return xdp_action::XDP_PASS;
    };
    let cfg = *cfg;
    let Some(port) = cfg.port_of(ctx.ingress_ifindex() as u32) else {
        // Not configured yet, or attached to a foreign interface: leave it to the stack.
        count(counter::NO_PORT_ROW, counter::UNKNOWN_INGRESS);
        return xdp_action::XDP_PASS;
    };
    let row = counter::row(port, ctx.rx_queue_index(), cfg.queues);
    // SAFETY: the helper only reads the context the kernel gave this program.
    let len = unsafe { helpers::bpf_xdp_get_buff_len(ctx.ctx) } as usize;
    let frame = XdpFrame {
        start: ctx.data(),
        end: ctx.data_end(),
        len,
    };
    let parsed = parse(&frame);
    // SAFETY: the value is not kept past the lookup.
    let inspected = |p: u16| unsafe { LOUPE_INSPECT.get(p) }.is_some();
    match classify(&parsed, inspected) {
        Class::Inspect { dst_inspected } => {
            let lookup = |key: &NoDecryptKey| LOUPE_NODECRYPT.get(Key::new(NoDecryptKey::FULL_PREFIX, *key)).copied();
            // SAFETY: the value is copied out at once.
            let pin_get = |key: &FlowPinKey| unsafe { LOUPE_FLOWS.get(key) }.copied();
            let pin_set = |key: &FlowPinKey, value: u8| {
                // A full map evicts its least recently used entry; nothing else fails.
                let _ = LOUPE_FLOWS.insert(key, value, 0);
            };
            let queue = ctx.rx_queue_index();
            // The kernel removes a socket from the map when it is closed: a hit means a
            // live worker for this queue.
            let served = queue < MAX_QUEUES && LOUPE_XSKS.get(xsk_key(port, queue)).is_some();
            match inspected_action(&parsed, dst_inspected, served, inspected, lookup, pin_get, pin_set) {
                InspectedAction::Bridge {
                    rule_hit,
                    pinned_against_entries,
                } => {
                    count(row, counter::BRIDGED_NO_DECRYPT);
                    if pinned_against_entries {
                        count(row, counter::PINNED_AGAINST_ENTRIES);
                    }
                    if let Some(rule) = rule_hit {
                        count_rule_hit(rule);
                    }
                    bridge(port, row)
                }
                InspectedAction::Unserved => {
                    // Bridged fail-open at its SYN: it stays so, whatever the fail mode
                    // and whether a worker is back.
                    count(row, counter::UNSERVED);
                    bridge(port, row)
                }
                InspectedAction::Steer { pinned_against_entries } => {
                    if pinned_against_entries {
                        count(row, counter::PINNED_AGAINST_ENTRIES);
                    }
                    steer(&ctx, &cfg, port, row)
                }
            }
        }
        Class::Quic if cfg.drop_quic() => {
            count(row, counter::DROPPED_QUIC);
            xdp_action::XDP_DROP
        }
        Class::Malformed => {
            count(row, counter::MALFORMED);
            bridge(port, row)
        }
        Class::Vlan => {
            count(row, counter::VLAN);
            bridge(port, row)
        }
        Class::Fragment => {
            count(row, counter::FRAGMENTS);
            bridge(port, row)
        }
        Class::Quic | Class::Plain => bridge(port, row),
    }
}

#[inline(always)]
fn steer(ctx: &XdpContext, cfg: &WireConfig, port: u32, row: u32) -> u32 {
    let queue = ctx.rx_queue_index();
    if queue < MAX_QUEUES {
        let key = xsk_key(port, queue);
        // The kernel removes a socket from the map when it is closed, so a hit
        // means a live worker; the redirect can still miss if it races a close.
        if LOUPE_XSKS.get(key).is_some() {
            if let Ok(action) = LOUPE_XSKS.redirect(key, 0) {
                count(row, counter::STEERED);
                return action;
            }
        }
    }
    if cfg.fail_closed() {
        count(row, counter::DROPPED_FAIL_CLOSED);
        return xdp_action::XDP_DROP;
    }
    count(row, counter::UNSERVED);
    bridge(port, row)
}

#[inline(always)]
fn bridge(port: u32, row: u32) -> u32 {
    match LOUPE_PORTS.redirect(1 - port, 0) {
        Ok(action) => {
            count(row, counter::BRIDGED);
            action
        }
        Err(_) => {
            count(row, counter::REDIRECT_FAILED);
            xdp_action::XDP_DROP
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
