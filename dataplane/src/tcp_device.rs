//! The smoltcp `phy::Device` over an AF_XDP port: one received IP packet in, Ethernet
//! frames out. smoltcp runs with `Medium::Ip`; this adapter adds the Ethernet header the
//! flow learned from its own frames (no ARP, no neighbour cache), so the appliance answers
//! as the server toward the client and as the client toward the server.

use smoltcp::iface::{Config, Interface};
use smoltcp::phy::{self, Checksum, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, Ipv4Address, Ipv6Address};

use crate::capture::{CaptureTap, SniKnowledge};
use crate::flow::FlowKey;
use crate::frame::{write_ethernet_header, MacAddr, ETHERNET_HEADER_LEN};
use crate::xsk::XskPort;
use loupe_control::protocol::CaptureLeg;

/// The Ethernet addresses for frames sent on one side of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct L2Header {
    pub src: MacAddr,
    pub dst: MacAddr,
}

pub struct FrameDevice<'a> {
    pub ingress: Option<&'a [u8]>,
    pub port: &'a mut XskPort,
    pub l2: L2Header,
    /// While a capture runs: where the frames sent for this flow are copied.
    pub tap: Option<FlowTap<'a>>,
}

/// A running capture and the flow a device sends for.
#[derive(Clone, Copy)]
pub struct FlowTap<'a> {
    pub tap: &'a CaptureTap,
    pub key: FlowKey,
    pub sni: SniKnowledge<'a>,
    /// Which of the flow's two connections the frames belong to.
    pub leg: CaptureLeg,
}

pub struct PacketRx<'a>(&'a [u8]);

impl phy::RxToken for PacketRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

pub struct FrameTx<'a> {
    port: &'a mut XskPort,
    l2: L2Header,
    tap: Option<FlowTap<'a>>,
}

impl phy::TxToken for FrameTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let l2 = self.l2;
        let tap = self.tap;
        let mut f = Some(f);
        let sent = self.port.transmit(ETHERNET_HEADER_LEN + len, |frame| {
            let (header, packet) = frame.split_at_mut(ETHERNET_HEADER_LEN);
            let result = (f.take().expect("called once"))(packet);
            write_ethernet_header(header, l2.dst, l2.src, packet[0] >> 4);
            if let Some(t) = tap {
                t.tap.frame(t.key, t.sni, t.leg, frame);
            }
            result
        });
        match sent {
            Some(result) => result,
            // Only reachable for a reply token handed out with a received packet while every
            // frame is in flight: the segment is dropped (counted) and TCP retransmits it.
            None => {
                let mut scratch = vec![0u8; len];
                (f.take().expect("not called yet"))(&mut scratch)
            }
        }
    }
}

impl Device for FrameDevice<'_> {
    type RxToken<'b>
        = PacketRx<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = FrameTx<'b>
    where
        Self: 'b;

    fn receive(&mut self, _now: Instant) -> Option<(PacketRx<'_>, FrameTx<'_>)> {
        let packet = self.ingress.take()?;
        Some((
            PacketRx(packet),
            FrameTx {
                port: self.port,
                l2: self.l2,
                tap: self.tap,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<FrameTx<'_>> {
        if !self.port.can_transmit() {
            return None;
        }
        Some(FrameTx {
            port: self.port,
            l2: self.l2,
            tap: self.tap,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.port.ip_mtu();
        // Received checksums are verified by the worker before smoltcp sees a frame
        // (`frame::checksums_ok`, counted); smoltcp only computes them for what it sends.
        caps.checksum.ipv4 = Checksum::Tx;
        caps.checksum.tcp = Checksum::Tx;
        caps
    }
}

/// A smoltcp interface that accepts and originates packets for any address: the
/// appliance terminates connections as whatever server or client a flow names.
pub fn transparent_interface(device: &mut impl Device, seed: u64, now: Instant) -> Interface {
    let mut config = Config::new(HardwareAddress::Ip);
    config.random_seed = seed;
    let mut iface = Interface::new(config, device, now);
    // AnyIP needs an own address to route through; these never appear on the wire.
    let own_v4 = Ipv4Address::new(169, 254, 0, 1);
    let own_v6 = Ipv6Address::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
    iface.update_ip_addrs(|addrs| {
        addrs
            .push(IpCidr::new(IpAddress::Ipv4(own_v4), 32))
            .expect("room for two addresses");
        addrs
            .push(IpCidr::new(IpAddress::Ipv6(own_v6), 128))
            .expect("room for two addresses");
    });
    iface
        .routes_mut()
        .add_default_ipv4_route(own_v4)
        .expect("route table has room");
    iface
        .routes_mut()
        .add_default_ipv6_route(own_v6)
        .expect("route table has room");
    iface.set_any_ip(true);
    iface
}
