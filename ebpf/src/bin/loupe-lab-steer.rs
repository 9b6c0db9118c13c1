//! Lab flow steering (test tooling, not on the product path): on the egress of the
//! client's and server's veth ends, picks the TX queue of each TCP/UDP frame with a
//! symmetric hash of its addresses and ports (`loupe_common::steer::queue_of`), so the
//! appliance's ports receive both directions of a connection on the same RX queue, as
//! behind a NIC with symmetric RSS. Config: `STEER_CONFIG[0]` = queue count.
//!
//! tc egress runs before the kernel picks the TX queue; with no XPS map on the device,
//! the pick (`skb_tx_hash`) takes a recorded queue from `queue_mapping` (stored + 1,
//! as the RX path records it), and a socket caches the same answer for its later frames.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::TC_ACT_OK,
    macros::{classifier, map},
    maps::{Array, PerCpuArray},
    programs::TcContext,
};
use loupe_common::{
    frame::{parse, Frame},
    steer::{queue_of, MAX_QUEUES},
};

#[map]
static STEER_CONFIG: Array<u32> = Array::with_max_entries(1, 0);

#[map]
static STEER_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_QUEUES + 1, 0);

/// A socket buffer: headers read from its linear part `[data, data_end)`, its length
/// the whole packet's. A TSO/GSO buffer (most of a bulk TCP stream at egress) holds one
/// IP header for up to 64 KiB of payload, mostly outside the linear part; measured
/// against the linear part alone its IP length would read as malformed and go unsteered.
struct SkbFrame {
    start: usize,
    end: usize,
    len: usize,
}

impl Frame for SkbFrame {
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

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = STEER_COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot.
        unsafe { *slot += 1 };
    }
}

#[classifier]
pub fn steer_egress(ctx: TcContext) -> i32 {
    let queues = STEER_CONFIG.get(0).copied().unwrap_or(0);
    let frame = SkbFrame {
        start: ctx.data(),
        end: ctx.data_end(),
        len: ctx.len() as usize,
    };
    match queue_of(&parse(&frame), queues) {
        Some(queue) => {
            // SAFETY: the context's __sk_buff; queue_mapping is writable from tc programs.
            unsafe { (*ctx.skb.skb).queue_mapping = queue + 1 };
            count(queue);
        }
        None => count(MAX_QUEUES),
    }
    TC_ACT_OK
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
