//! Fault injector for lab tests (not on the product path). Chosen by
//! `bpf_get_prandom_u32()` with per-mille rates from `LOSSY_CONFIG`:
//! - XDP ingress (`lossy_ingress`): drops frames;
//! - tc egress (`lossy_egress`): drops, duplicates (a clone sent right behind), corrupts
//!   (flips a bit of the TCP payload of a single frame and leaves the checksum as it
//!   was) and marks frames
//!   to reorder (a u32 filter of the clsact qdisc, set up by userspace, sends those
//!   through an ifb device, from which they return late).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::bpf_get_prandom_u32,
    macros::{classifier, map, xdp},
    maps::{Array, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use loupe_common::lossy;

#[map]
static LOSSY_CONFIG: Array<u32> = Array::with_max_entries(lossy::CONFIG_ENTRIES, 0);

#[map]
static LOSSY_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(lossy::COUNT, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IPPROTO_TCP: u8 = 6;

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = LOSSY_COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn chance(what: u32) -> bool {
    let per_mille = LOSSY_CONFIG.get(what).copied().unwrap_or(0);
    // SAFETY: helper without arguments or side effects on memory.
    per_mille > 0 && unsafe { bpf_get_prandom_u32() } % lossy::PER_MILLE < per_mille
}

#[xdp]
pub fn lossy_ingress(_ctx: XdpContext) -> u32 {
    if chance(lossy::CONFIG_LOSS) {
        count(lossy::INGRESS_DROPPED);
        xdp_action::XDP_DROP
    } else {
        count(lossy::INGRESS_PASSED);
        xdp_action::XDP_PASS
    }
}

/// Offsets of the TCP header and of the last byte of an IPv4 TCP segment's payload, if
/// it has one.
#[inline(always)]
fn last_payload_byte(ctx: &TcContext) -> Option<(usize, usize)> {
    let ethertype = u16::from_be(ctx.load::<u16>(12).ok()?);
    if ethertype != ETH_P_IP || ctx.load::<u8>(ETH_HLEN + 9).ok()? != IPPROTO_TCP {
        return None;
    }
    let ihl = usize::from(ctx.load::<u8>(ETH_HLEN).ok()? & 0x0f) * 4;
    let total = usize::from(u16::from_be(ctx.load::<u16>(ETH_HLEN + 2).ok()?));
    let doff = usize::from(ctx.load::<u8>(ETH_HLEN + ihl + 12).ok()? >> 4) * 4;
    (total > ihl + doff).then_some((ETH_HLEN + ihl, ETH_HLEN + total - 1))
}

/// Flips a bit of the byte at `at` and moves the TCP checksum field the other way, so
/// that the checksum the frame leaves with is the one of the bytes before the flip.
/// Linux's TCP hands this hook a partial checksum (the pseudo-header's sum, completed
/// over the segment after the hook): a plain flip would be summed into it and pass.
/// Compensated, the final checksum is the original's, wrong for the flipped byte. (Had
/// the checksum already been final, the compensation makes it wrong all the same.)
#[inline(always)]
fn corrupt(ctx: &TcContext, tcp: usize, at: usize) -> Option<()> {
    let byte = ctx.load::<u8>(at).ok()?;
    let flipped = byte ^ 0x20;
    // The byte's place in its 16-bit word, counted from the TCP header (which starts on
    // an even offset of the segment, so checksum words start there).
    let shift = if (at - tcp) % 2 == 0 { 8 } else { 0 };
    let old = u32::from(byte) << shift;
    let new = u32::from(flipped) << shift;
    let check_at = tcp + 16;
    let check = u32::from(u16::from_be(ctx.load::<u16>(check_at).ok()?));
    // One's complement: check + old - new.
    let mut sum = check + old + (0xffff - new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    ctx.store(at, &flipped, 0).ok()?;
    ctx.store(check_at, &(sum as u16).to_be(), 0).ok()
}

#[classifier]
pub fn lossy_egress(ctx: TcContext) -> i32 {
    // SAFETY: reading fields of the context the kernel handed us.
    let (mark, ifindex) = unsafe { ((*ctx.skb.skb).mark, (*ctx.skb.skb).ifindex) };
    if mark == lossy::DUPLICATE_MARK || mark == lossy::REORDER_MARK {
        // Our own duplicate, or a reordered frame back from the ifb: on its way.
        ctx.set_mark(0);
        return TC_ACT_OK;
    }
    if chance(lossy::CONFIG_LOSS) {
        count(lossy::EGRESS_DROPPED);
        return TC_ACT_SHOT;
    }
    count(lossy::EGRESS_PASSED);
    // A GSO packet is segmented after this hook, each segment's checksum completed from
    // the compensated field (see `corrupt`): every frame of it leaves with a bad checksum,
    // the one holding the flipped bit among them.
    if chance(lossy::CONFIG_CORRUPT) {
        if let Some((tcp, at)) = last_payload_byte(&ctx) {
            if corrupt(&ctx, tcp, at).is_some() {
                count(lossy::EGRESS_CORRUPTED);
            }
        }
    }
    if chance(lossy::CONFIG_DUPLICATE) {
        ctx.set_mark(lossy::DUPLICATE_MARK);
        if ctx.clone_redirect(ifindex, 0).is_ok() {
            count(lossy::EGRESS_DUPLICATED);
        }
        ctx.set_mark(0);
    }
    if chance(lossy::CONFIG_REORDER) {
        ctx.set_mark(lossy::REORDER_MARK);
        count(lossy::EGRESS_REORDERED);
    }
    // Not TC_ACT_OK: the clsact filters behind this program (the reorder detour) run next.
    TC_ACT_UNSPEC
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
