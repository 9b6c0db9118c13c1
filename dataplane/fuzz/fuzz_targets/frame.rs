//! The frames the XDP program steers to the workers: `parse_tcp_frame`, which every
//! received frame goes through before the flow table, then `checksums_ok`.
//!
//! Input: one Ethernet frame.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../src/frame.rs"]
#[allow(dead_code)]
mod frame;

use frame::{checksums_ok, parse_tcp_frame, FrameError, ETHERNET_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    match parse_tcp_frame(data) {
        Ok(tcp) => {
            // The view lies inside the frame and says what its bytes say.
            assert_eq!(tcp.ip_offset, ETHERNET_HEADER_LEN);
            assert!(tcp.ip_offset + tcp.ip_len <= data.len());
            assert_eq!(tcp.dst_mac[..], data[0..6]);
            assert_eq!(tcp.src_mac[..], data[6..12]);
            let ip = &data[tcp.ip_offset..tcp.ip_offset + tcp.ip_len];
            let header_len = match ip[0] >> 4 {
                4 => usize::from(ip[0] & 0x0f) * 4,
                6 => 40,
                v => panic!("IP version {v} parsed"),
            };
            let l4 = &ip[header_len..];
            assert!(l4.len() >= 20 && l4.len() >= usize::from(l4[12] >> 4) * 4);
            assert_eq!(tcp.src_port, u16::from_be_bytes([l4[0], l4[1]]));
            assert_eq!(tcp.dst_port, u16::from_be_bytes([l4[2], l4[3]]));
            assert_eq!(tcp.flags, l4[13]);
            assert_eq!(tcp.tcp_offset, header_len);
            // Any bytes: an answer, never a panic or an out-of-bounds read.
            let _ = checksums_ok(ip, &tcp);
        }
        Err(FrameError::Truncated { need, have, .. }) => assert!(have < need),
        Err(error) => assert!(!error.to_string().is_empty()),
    }
});
