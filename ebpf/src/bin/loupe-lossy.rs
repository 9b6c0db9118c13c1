//! Loss injector for lab tests (not on the product path): drops a configurable
//! per-mille of frames, chosen by `bpf_get_prandom_u32()`, on XDP ingress
//! (`lossy_ingress`) and tc egress (`lossy_egress`). Config: `LOSSY_CONFIG[0]`.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_get_prandom_u32,
    macros::{classifier, map, xdp},
    maps::{Array, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use loupe_common::lossy;

#[map]
static LOSSY_CONFIG: Array<u32> = Array::with_max_entries(1, 0);

#[map]
static LOSSY_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(lossy::COUNT, 0);

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = LOSSY_COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn lose() -> bool {
    let per_mille = LOSSY_CONFIG.get(0).copied().unwrap_or(0);
    // SAFETY: helper without arguments or side effects on memory.
    per_mille > 0 && unsafe { bpf_get_prandom_u32() } % lossy::PER_MILLE < per_mille
}

#[xdp]
pub fn lossy_ingress(_ctx: XdpContext) -> u32 {
    if lose() {
        count(lossy::INGRESS_DROPPED);
        xdp_action::XDP_DROP
    } else {
        count(lossy::INGRESS_PASSED);
        xdp_action::XDP_PASS
    }
}

#[classifier]
pub fn lossy_egress(_ctx: TcContext) -> i32 {
    if lose() {
        count(lossy::EGRESS_DROPPED);
        TC_ACT_SHOT
    } else {
        count(lossy::EGRESS_PASSED);
        TC_ACT_OK
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
