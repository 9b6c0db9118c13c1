//! AF_XDP I/O for one (port, queue): the UMEM, its frame pool and the four rings, through
//! xdpilone. Thin on purpose: frames in, frames out, no protocol knowledge.
//!
//! Each port/queue has its own UMEM, so a frame is always transmitted on the port whose
//! memory it lives in and no cross-port sharing is needed.

use std::ffi::CString;
use std::num::NonZeroU32;
use std::ptr::NonNull;

use anyhow::{bail, Context, Result};
use xdpilone::xdp::XdpDesc;
use xdpilone::{DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig, User};

pub const FRAME_SIZE: u32 = 4096;

/// Bind flag (linux/if_xdp.h, 6.6+): a packet may span several descriptors, each but the
/// last marked [`XDP_PKT_CONTD`]. xdpilone passes bind flags through without naming it.
const XDP_USE_SG: u16 = 1 << 4;
/// Descriptor option: the packet continues in the next descriptor.
pub const XDP_PKT_CONTD: u32 = 1;
/// What the kernel keeps free at the start of each receive frame (XDP_PACKET_HEADROOM),
/// so one frame receives at most `FRAME_SIZE` less this.
const RX_HEADROOM: usize = 256;
/// The largest Ethernet frame one receive descriptor holds.
const RX_FRAME_CAPACITY: usize = FRAME_SIZE as usize - RX_HEADROOM;
/// Largest number of descriptors moved per ring operation.
pub const BATCH: usize = 64;

#[derive(Debug, Clone, Copy)]
pub struct XskSizes {
    /// Frames in the UMEM; half go to the fill ring, half serve transmission.
    pub frames: u32,
    pub ring: u32,
}

impl Default for XskSizes {
    fn default() -> Self {
        XskSizes {
            frames: 8192,
            ring: 2048,
        }
    }
}

/// Counters of the I/O layer, read by the worker's status.
#[derive(Debug, Default, Clone, Copy)]
pub struct XskStats {
    pub rx_frames: u64,
    pub tx_frames: u64,
    /// Transmissions refused because every frame was in flight (the TCP layer retries).
    pub tx_no_frame: u64,
}

/// What the kernel counted for one AF_XDP socket (`XDP_STATISTICS`): frames it could
/// not hand to loupe.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct XskDrops {
    /// Dropped for any reason (includes the two below).
    pub rx_dropped: u64,
    /// The RX ring was full: the worker did not keep up.
    pub rx_ring_full: u64,
    /// The fill ring had no free frame for an arriving one.
    pub fill_ring_empty: u64,
}

/// How the kernel moves a port's frames between the driver and the UMEM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XskBindMode {
    /// The driver DMAs straight into the UMEM (`XDP_ZEROCOPY`): needs driver support.
    ZeroCopy,
    /// The kernel copies each frame (`XDP_COPY`): works on any interface (veth, generic XDP).
    Copy,
}

impl XskBindMode {
    pub fn as_str(self) -> &'static str {
        match self {
            XskBindMode::ZeroCopy => "zero-copy",
            XskBindMode::Copy => "copy",
        }
    }

    fn bind_flags(self, multi_buffer: bool) -> u16 {
        let scatter_gather = if multi_buffer { XDP_USE_SG } else { 0 };
        SocketConfig::XDP_BIND_NEED_WAKEUP
            | scatter_gather
            | match self {
                XskBindMode::ZeroCopy => SocketConfig::XDP_BIND_ZEROCOPY,
                XskBindMode::Copy => SocketConfig::XDP_BIND_COPY,
            }
    }
}

struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> Result<Mapping> {
        // SAFETY: anonymous private mapping, checked for failure below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!(
                "mmap of {len} bytes of UMEM failed: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(Mapping {
            ptr: NonNull::new(ptr.cast()).expect("mmap returned null"),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was created by mmap with this length and is unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

pub struct XskPort {
    pub name: String,
    pub queue: u32,
    // Field order matters for drop: rings and sockets close before the memory unmaps.
    rx: RingRx,
    tx: RingTx,
    fill_completion: DeviceQueue,
    user: User,
    _socket: Socket,
    _umem: Umem,
    area: Mapping,
    /// Frames owned by userspace and not in any ring.
    free_frames: Vec<u64>,
    /// Frames written and waiting for room in the TX ring.
    tx_pending: Vec<XdpDesc>,
    /// Frames handed to the TX ring whose completion has not been read back yet.
    tx_in_flight: usize,
    /// Frames kept aside for transmission so that receiving cannot starve it.
    tx_reserve: usize,
    pub stats: XskStats,
    /// Why zero-copy was refused, when the port fell back to copy mode (None: zero-copy).
    zero_copy_refused: Option<String>,
    /// The interface's MTU when the port opened, and the IP MTU loupe's TCP uses on it:
    /// the same, or less where the port cannot carry the interface's (see
    /// [`MAX_IP_MTU`], [`MAX_MULTI_BUFFER_IP_MTU`]).
    interface_mtu: usize,
    ip_mtu: usize,
    /// Bound with `XDP_USE_SG`: packets larger than a frame span several descriptors.
    multi_buffer: bool,
    /// Why the kernel refused multi-buffer where the MTU asked for it.
    multi_buffer_refused: Option<String>,
    /// The received pieces of a packet spanning descriptors, until its last one.
    rx_packet: PacketGatherer,
    /// Where a packet larger than a frame is written before it is cut into frames.
    tx_packet: Vec<u8>,
}

/// The largest IP packet one receive frame holds with its Ethernet header: the most a
/// port without multi-buffer carries.
pub const MAX_IP_MTU: usize = RX_FRAME_CAPACITY - crate::frame::ETHERNET_HEADER_LEN;

/// The largest IP MTU loupe follows with multi-buffer AF_XDP (the usual jumbo maximum).
pub const MAX_MULTI_BUFFER_IP_MTU: usize = 9216;

/// Joins the pieces of a packet that spans receive descriptors. Apart from the port so
/// that its rules are tested without a socket.
#[derive(Debug, Default)]
struct PacketGatherer {
    packet: Vec<u8>,
    /// A piece was outside the UMEM or the packet grew past the limit: it is dropped at
    /// its last piece.
    broken: bool,
}

impl PacketGatherer {
    /// No packet is being gathered: a descriptor without `XDP_PKT_CONTD` is whole.
    fn is_idle(&self) -> bool {
        self.packet.is_empty() && !self.broken
    }

    /// Takes the next piece (None: its descriptor pointed outside the UMEM); `continues`
    /// when another piece follows. A packet longer than `limit` bytes is dropped.
    fn piece(&mut self, piece: Option<&[u8]>, continues: bool, limit: usize) -> Gathered {
        match piece {
            Some(piece) if !self.broken && self.packet.len() + piece.len() <= limit => {
                self.packet.extend_from_slice(piece);
            }
            _ => {
                self.broken = true;
                self.packet.clear();
            }
        }
        if continues {
            return Gathered::Pending;
        }
        if std::mem::take(&mut self.broken) {
            return Gathered::Dropped;
        }
        Gathered::Packet(std::mem::take(&mut self.packet))
    }

    fn reuse(&mut self, mut packet: Vec<u8>) {
        packet.clear();
        self.packet = packet;
    }
}

/// What one received descriptor amounts to (see [`XskPort::gather`]).
#[derive(Debug)]
pub enum Gathered {
    /// A whole packet in the descriptor's frame: read it with [`XskPort::frame`].
    Frame,
    /// A piece of a packet whose next piece is still to come.
    Pending,
    /// The last piece: the whole packet. Hand it back with [`XskPort::return_packet`].
    Packet(Vec<u8>),
    /// The last piece of a packet that could not be gathered (too long, or a piece
    /// outside the UMEM): dropped.
    Dropped,
}

/// The MTU of interface `name` in this network namespace (SIOCGIFMTU).
pub fn interface_mtu(name: &str) -> Result<usize> {
    // SAFETY: ifreq is plain data (a name and a union of integers); all zeros is valid.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.is_empty() || name.len() >= request.ifr_name.len() {
        anyhow::bail!(
            "interface name {name:?}: expected 1 to {} bytes",
            request.ifr_name.len() - 1
        );
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    // SAFETY: plain socket(2); the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("a socket to ask an interface's MTU");
    }
    // SAFETY: `request` is a valid ifreq with a NUL-terminated name; SIOCGIFMTU fills ifru_mtu.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFMTU, &mut request) };
    let error = std::io::Error::last_os_error();
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(error).with_context(|| format!("reading the MTU of {name}"));
    }
    // SAFETY: SIOCGIFMTU wrote the union's mtu member.
    let mtu = unsafe { request.ifr_ifru.ifru_mtu };
    usize::try_from(mtu).with_context(|| format!("{name} reports MTU {mtu}"))
}

// SAFETY: the raw pointers refer to this port's own mapping and rings; the port is moved to
// its worker thread once and used from that thread only.
unsafe impl Send for XskPort {}

impl XskPort {
    /// The kernel's drop counters for this socket (one getsockopt; call it rarely).
    pub fn drops(&self) -> Option<XskDrops> {
        let stats = self.fill_completion.statistics_v2().ok()?;
        Some(XskDrops {
            rx_dropped: stats.rx_dropped,
            rx_ring_full: stats.rx_ring_full,
            fill_ring_empty: stats.rx_fill_ring_empty_descs,
        })
    }

    /// Opens the port in zero-copy mode where the driver offers it, else in copy mode
    /// ([`XskPort::zero_copy_refused`] then says why). An interface whose frames do not
    /// fit one UMEM frame is bound multi-buffer, and without it (TCP then stays within
    /// [`MAX_IP_MTU`]) where the kernel or driver refuses
    /// ([`XskPort::multi_buffer_refused`]).
    pub fn open(ifname: &str, queue: u32, sizes: XskSizes) -> Result<XskPort> {
        let interface_mtu = interface_mtu(ifname)?;
        if interface_mtu + crate::frame::ETHERNET_HEADER_LEN <= RX_FRAME_CAPACITY {
            return XskPort::open_either(ifname, queue, sizes, interface_mtu, false);
        }
        match XskPort::open_either(ifname, queue, sizes, interface_mtu, true) {
            Ok(port) => Ok(port),
            Err(refused) => {
                let mut port = XskPort::open_either(ifname, queue, sizes, interface_mtu, false)
                    .with_context(|| format!("{ifname} queue {queue}: multi-buffer failed first: {refused:#}"))?;
                port.multi_buffer_refused = Some(format!("{refused:#}"));
                Ok(port)
            }
        }
    }

    fn open_either(
        ifname: &str,
        queue: u32,
        sizes: XskSizes,
        interface_mtu: usize,
        multi_buffer: bool,
    ) -> Result<XskPort> {
        let open = |mode| XskPort::open_in(ifname, queue, sizes, mode, interface_mtu, multi_buffer);
        match open(XskBindMode::ZeroCopy) {
            Ok(port) => Ok(port),
            Err(refused) => {
                let mut port = open(XskBindMode::Copy)
                    .with_context(|| format!("{ifname} queue {queue}: zero-copy failed first: {refused:#}"))?;
                port.zero_copy_refused = Some(format!("{refused:#}"));
                Ok(port)
            }
        }
    }

    /// Whether packets may span several frames (`XDP_USE_SG`).
    pub fn multi_buffer(&self) -> bool {
        self.multi_buffer
    }

    pub fn multi_buffer_refused(&self) -> Option<&str> {
        self.multi_buffer_refused.as_deref()
    }

    pub fn mode(&self) -> XskBindMode {
        match self.zero_copy_refused {
            None => XskBindMode::ZeroCopy,
            Some(_) => XskBindMode::Copy,
        }
    }

    pub fn zero_copy_refused(&self) -> Option<&str> {
        self.zero_copy_refused.as_deref()
    }

    /// The interface's MTU as it was when the port opened.
    pub fn interface_mtu(&self) -> usize {
        self.interface_mtu
    }

    /// The IP MTU loupe's TCP works with on this port (its MSS follows from it).
    pub fn ip_mtu(&self) -> usize {
        self.ip_mtu
    }

    /// Opens the port bound in `mode`; a refused bind releases everything it set up.
    fn open_in(
        ifname: &str,
        queue: u32,
        sizes: XskSizes,
        mode: XskBindMode,
        interface_mtu: usize,
        multi_buffer: bool,
    ) -> Result<XskPort> {
        let len = sizes.frames as usize * FRAME_SIZE as usize;
        let area = Mapping::new(len)?;
        let config = UmemConfig {
            fill_size: sizes.ring,
            complete_size: sizes.ring,
            frame_size: FRAME_SIZE,
            headroom: 0,
            flags: 0,
        };
        let area_slice = NonNull::slice_from_raw_parts(area.ptr, len);
        // SAFETY: the area is page-aligned (mmap) and outlives the Umem (field order).
        let umem = unsafe { Umem::new(config, area_slice) }
            .map_err(|e| anyhow::anyhow!("{ifname} queue {queue}: creating the UMEM failed: {e}"))?;
        let mut info = IfInfo::invalid();
        let cname = CString::new(ifname).context("interface name contains NUL")?;
        info.from_name(&cname)
            .map_err(|e| anyhow::anyhow!("interface {ifname}: {e} (does it exist in this network namespace?)"))?;
        info.set_queue(queue);
        let socket = Socket::with_shared(&info, &umem)
            .map_err(|e| anyhow::anyhow!("{ifname} queue {queue}: AF_XDP socket: {e}"))?;
        let fill_completion = umem
            .fq_cq(&socket)
            .map_err(|e| anyhow::anyhow!("{ifname} queue {queue}: fill/completion rings: {e}"))?;
        let ring = NonZeroU32::new(sizes.ring).context("ring size must not be zero")?;
        let user = umem
            .rx_tx(
                &socket,
                &SocketConfig {
                    rx_size: Some(ring),
                    tx_size: Some(ring),
                    bind_flags: mode.bind_flags(multi_buffer),
                },
            )
            .map_err(|e| anyhow::anyhow!("{ifname} queue {queue}: RX/TX rings: {e}"))?;
        umem.bind(&user).map_err(|e| {
            anyhow::anyhow!(
                "{ifname} queue {queue}: binding the AF_XDP socket in {} mode{} failed: {e} (is the queue index valid for this device?)",
                mode.as_str(),
                if multi_buffer { " with multi-buffer" } else { "" }
            )
        })?;
        let rx = user
            .map_rx()
            .map_err(|e| anyhow::anyhow!("{ifname}: mapping the RX ring: {e}"))?;
        let tx = user
            .map_tx()
            .map_err(|e| anyhow::anyhow!("{ifname}: mapping the TX ring: {e}"))?;
        let ip_mtu = interface_mtu.min(if multi_buffer {
            MAX_MULTI_BUFFER_IP_MTU
        } else {
            MAX_IP_MTU
        });
        let free_frames = (0..u64::from(sizes.frames))
            .map(|i| i * u64::from(FRAME_SIZE))
            .collect();
        let mut port = XskPort {
            name: ifname.to_string(),
            queue,
            rx,
            tx,
            fill_completion,
            user,
            _socket: socket,
            _umem: umem,
            area,
            free_frames,
            tx_pending: Vec::with_capacity(sizes.frames as usize),
            tx_in_flight: 0,
            tx_reserve: (sizes.frames / 2) as usize,
            stats: XskStats::default(),
            zero_copy_refused: None,
            interface_mtu,
            ip_mtu,
            multi_buffer,
            multi_buffer_refused: None,
            rx_packet: PacketGatherer::default(),
            tx_packet: if multi_buffer {
                vec![0; ip_mtu + crate::frame::ETHERNET_HEADER_LEN]
            } else {
                Vec::new()
            },
        };
        port.refill();
        Ok(port)
    }

    /// The descriptor to put into the XSKMAP.
    pub fn raw_fd(&self) -> i32 {
        self.user.as_raw_fd()
    }

    /// Gives the kernel frames to receive into, keeping the TX reserve.
    pub fn refill(&mut self) {
        let spare = self.free_frames.len().saturating_sub(self.tx_reserve);
        if spare == 0 {
            return;
        }
        let taken = {
            let mut writer = self.fill_completion.fill(spare.min(u32::MAX as usize) as u32);
            let start = self.free_frames.len();
            let mut taken = 0;
            while taken < spare && writer.insert_once(self.free_frames[start - 1 - taken]) {
                taken += 1;
            }
            writer.commit();
            taken
        };
        self.free_frames.truncate(self.free_frames.len() - taken);
        if taken > 0 && self.fill_completion.needs_wakeup() {
            self.fill_completion.wake();
        }
    }

    /// Whether received frames wait in the RX ring (a relaxed look at the kernel's
    /// producer index: for polling, [`receive`](Self::receive) reads them properly).
    pub fn rx_waiting(&self) -> bool {
        self.rx.available() > 0
    }

    /// Takes up to `out.len()` received descriptors; returns how many.
    pub fn receive(&mut self, out: &mut [XdpDesc; BATCH]) -> usize {
        let mut reader = self.rx.receive(BATCH as u32);
        let mut n = 0;
        while n < BATCH {
            match reader.read() {
                Some(desc) => {
                    out[n] = desc;
                    n += 1;
                }
                None => break,
            }
        }
        reader.release();
        // Frames on the wire: a packet spanning descriptors counts once, at its last.
        let last_pieces = out[..n].iter().filter(|desc| desc.options & XDP_PKT_CONTD == 0).count();
        self.stats.rx_frames += last_pieces as u64;
        n
    }

    /// Gathers a packet spanning descriptors (multi-buffer). The caller recycles each
    /// descriptor after this, as for a whole-frame one.
    pub fn gather(&mut self, desc: &XdpDesc) -> Gathered {
        let continues = desc.options & XDP_PKT_CONTD != 0;
        if !continues && self.rx_packet.is_idle() {
            return Gathered::Frame;
        }
        let limit = self.ip_mtu + crate::frame::ETHERNET_HEADER_LEN;
        let mut gatherer = std::mem::take(&mut self.rx_packet);
        let gathered = gatherer.piece(self.frame(desc), continues, limit);
        self.rx_packet = gatherer;
        gathered
    }

    /// Gives back a packet [`XskPort::gather`] assembled, so the next reuses its buffer.
    pub fn return_packet(&mut self, packet: Vec<u8>) {
        self.rx_packet.reuse(packet);
    }

    /// The bytes of a received frame, or None for a descriptor outside the UMEM.
    pub fn frame(&self, desc: &XdpDesc) -> Option<&[u8]> {
        let start = usize::try_from(desc.addr).ok()?;
        let end = start.checked_add(desc.len as usize)?;
        if end > self.area.len {
            return None;
        }
        // SAFETY: bounds checked above; the kernel handed this frame to userspace.
        Some(unsafe { std::slice::from_raw_parts(self.area.ptr.as_ptr().add(start), desc.len as usize) })
    }

    /// Like [`frame`](Self::frame), with a lifetime not tied to `self`, so the port can
    /// transmit while the frame is being read.
    ///
    /// # Safety
    /// The slice must not be used after the descriptor is passed to [`recycle`](Self::recycle).
    pub unsafe fn frame_detached<'a>(&self, desc: &XdpDesc) -> Option<&'a [u8]> {
        let frame = self.frame(desc)?;
        // SAFETY: the caller keeps the frame out of the pool while the slice lives.
        Some(unsafe { std::slice::from_raw_parts(frame.as_ptr(), frame.len()) })
    }

    /// Returns a received frame to the pool.
    pub fn recycle(&mut self, desc: &XdpDesc) {
        // In aligned mode the frame base is the address rounded down to the frame size.
        self.free_frames.push(desc.addr & !(u64::from(FRAME_SIZE) - 1));
    }

    pub fn can_transmit(&self) -> bool {
        !self.free_frames.is_empty()
    }

    /// Frames free for transmission now.
    pub fn free_frames(&self) -> usize {
        self.free_frames.len()
    }

    /// Frames queued or handed to the kernel whose transmission is not yet confirmed.
    pub fn tx_unconfirmed(&self) -> usize {
        self.tx_pending.len() + self.tx_in_flight
    }

    /// Writes one frame of `len` bytes with `write` and queues it for transmission.
    /// Returns None (and writes nothing) when every frame is in flight, or when the frame
    /// is larger than the port carries.
    pub fn transmit<R>(&mut self, len: usize, write: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
        if len > FRAME_SIZE as usize {
            return self.transmit_pieces(len, write);
        }
        let Some(addr) = self.free_frames.pop() else {
            self.stats.tx_no_frame += 1;
            return None;
        };
        // SAFETY: addr is a frame base owned by userspace (from the pool); len ≤ frame size.
        let buf = unsafe { std::slice::from_raw_parts_mut(self.area.ptr.as_ptr().add(addr as usize), len) };
        let result = write(buf);
        self.tx_pending.push(XdpDesc {
            addr,
            len: len as u32,
            options: 0,
        });
        Some(result)
    }

    /// A frame larger than a UMEM frame (multi-buffer): written whole into `tx_packet`,
    /// then copied into as many UMEM frames as it needs, each but the last marked
    /// [`XDP_PKT_CONTD`]; the kernel sends them as one frame.
    fn transmit_pieces<R>(&mut self, len: usize, write: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
        if len > self.tx_packet.len() {
            return None;
        }
        let frame_size = FRAME_SIZE as usize;
        let pieces = len.div_ceil(frame_size);
        if self.free_frames.len() < pieces {
            self.stats.tx_no_frame += 1;
            return None;
        }
        let result = write(&mut self.tx_packet[..len]);
        for (index, piece) in self.tx_packet[..len].chunks(frame_size).enumerate() {
            let addr = self.free_frames.pop().expect("counted above");
            // SAFETY: addr is a frame base owned by userspace (from the pool); a piece is
            // at most a frame long.
            let frame =
                unsafe { std::slice::from_raw_parts_mut(self.area.ptr.as_ptr().add(addr as usize), piece.len()) };
            frame.copy_from_slice(piece);
            self.tx_pending.push(XdpDesc {
                addr,
                len: piece.len() as u32,
                options: if index + 1 < pieces { XDP_PKT_CONTD } else { 0 },
            });
        }
        Some(result)
    }

    /// Moves queued frames into the TX ring, kicks the kernel, and reclaims completed frames.
    /// Returns whether frames are still waiting for ring space.
    pub fn flush(&mut self) -> bool {
        if !self.tx_pending.is_empty() {
            let sent = {
                let mut writer = self.tx.transmit(self.tx_pending.len().min(u32::MAX as usize) as u32);
                // The pieces of a multi-buffer frame may straddle two flushes: the kernel
                // keeps a frame it has begun until its last piece comes (`xs->skb`). Holding
                // them back until all fit would stall: xdpilone refreshes its count of free
                // slots only once it reaches zero, so a short count never grows.
                let mut sent = 0;
                while sent < self.tx_pending.len() && writer.insert_once(self.tx_pending[sent]) {
                    sent += 1;
                }
                writer.commit();
                sent
            };
            let last_pieces = self.tx_pending[..sent]
                .iter()
                .filter(|desc| desc.options & XDP_PKT_CONTD == 0)
                .count();
            self.tx_pending.drain(..sent);
            self.stats.tx_frames += last_pieces as u64;
            self.tx_in_flight += sent;
        }
        // A wakeup is a syscall: only while the kernel holds frames it has not sent (in
        // copy mode the flag is always up, and an idle loop would otherwise kick it).
        if self.tx_in_flight > 0 && self.tx.needs_wakeup() {
            self.tx.wake();
        }
        {
            let mut reader = self.fill_completion.complete(u32::MAX);
            while let Some(addr) = reader.read() {
                self.free_frames.push(addr & !(u64::from(FRAME_SIZE) - 1));
                self.tx_in_flight = self.tx_in_flight.saturating_sub(1);
            }
            reader.release();
        }
        !self.tx_pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_join_into_one_packet_at_the_last() {
        let mut gatherer = PacketGatherer::default();
        assert!(gatherer.is_idle());
        assert!(matches!(gatherer.piece(Some(b"abc"), true, 100), Gathered::Pending));
        assert!(!gatherer.is_idle());
        assert!(matches!(gatherer.piece(Some(b"def"), true, 100), Gathered::Pending));
        match gatherer.piece(Some(b"gh"), false, 100) {
            Gathered::Packet(packet) => {
                assert_eq!(packet, b"abcdefgh");
                gatherer.reuse(packet);
            }
            other => panic!("{other:?}"),
        }
        assert!(gatherer.is_idle());
    }

    #[test]
    fn a_packet_past_the_limit_or_with_a_lost_piece_is_dropped_whole() {
        let mut gatherer = PacketGatherer::default();
        assert!(matches!(gatherer.piece(Some(&[1; 60]), true, 100), Gathered::Pending));
        // 60 + 60 > 100: the rest of this packet is ignored, and it is dropped at its end.
        assert!(matches!(gatherer.piece(Some(&[2; 60]), true, 100), Gathered::Pending));
        assert!(matches!(gatherer.piece(Some(&[3; 10]), false, 100), Gathered::Dropped));
        assert!(gatherer.is_idle(), "the next packet starts clean");

        assert!(matches!(gatherer.piece(None, true, 100), Gathered::Pending));
        assert!(matches!(gatherer.piece(Some(b"x"), false, 100), Gathered::Dropped));
        match gatherer.piece(Some(b"next"), false, 100) {
            Gathered::Packet(packet) => assert_eq!(packet, b"next"),
            other => panic!("{other:?}"),
        }
    }
}
