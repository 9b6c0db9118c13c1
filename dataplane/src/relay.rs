//! The two TCP endpoints of a flow and the byte relay between them.
//!
//! The client's connection is terminated by a socket that answers as the server; the
//! server-side connection is opened by a socket that speaks as the client. Bytes move from
//! one socket's receive buffer into the other's send buffer only as far as there is room,
//! so a slow side closes the other side's TCP window instead of losing bytes. FIN and RST
//! travel across; half-close works because each direction closes on its own.
//!
//! The client's SYN-ACK is held back (smoltcp's `pause_synack`) until the server accepted
//! the upstream connection, so a closed server port looks closed to the client. Under a
//! SYN flood the worker opens flows the other way round ([`TcpPair::open`] with
//! `client_first`): loupe answers the SYN itself and connects upstream only once the
//! client completed its handshake, so spoofed SYNs never reach the server.

use std::fmt;

use smoltcp::iface::{SocketHandle, SocketSet, SocketStorage};
use smoltcp::socket::tcp::{self, State};
use smoltcp::time::Duration;
use smoltcp::wire::IpEndpoint;

use crate::flow::FlowKey;

/// How long the upstream connection may take before the client's connection is refused.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a finished flow lingers before its slot is released: longer than smoltcp's
/// delayed ACK (10 ms), so the ACK of the peers' last bytes and FIN still goes out, and a
/// retransmitted FIN is still answered.
pub const LINGER: Duration = Duration::from_millis(50);
/// A peer that acknowledges nothing for this long while we have data for it is gone.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The client's SYN answered by loupe (a SYN flood is on); the upstream connection
    /// is opened once the client completes its handshake.
    AwaitingClient,
    /// Upstream SYN sent; the client's SYN-ACK is paused (or, opened client-first, the
    /// client waits for its first bytes to be relayed).
    Connecting,
    /// Both endpoints open (possibly half-closed).
    Relaying,
    /// Both endpoints closed: the flow can be released.
    Finished,
}

/// Why a flow ended, for the log and the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Closed,
    ClientReset,
    ServerReset,
    UpstreamRefused,
    /// No frame either way for this long (`[timeouts] idle`): loupe reset both sides.
    IdleTimeout(std::time::Duration),
    /// Not decided, or its TLS handshakes not done, this long after the SYN
    /// (`[timeouts] handshake`): loupe reset both sides.
    HandshakeTimeout(std::time::Duration),
    /// loupe was stopping (SIGTERM): it reset both sides rather than leave the client
    /// waiting and the server holding a connection no one will close.
    Stopping,
    /// The inspection engine dropped the session (a `drop` signature): loupe reset both
    /// sides.
    DroppedByInspection,
    /// Half-open (the client had not completed its TCP handshake) when a new SYN needed
    /// its place within `[dataplane] max_half_open`.
    HalfOpenEvicted,
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::Closed => f.write_str("closed"),
            EndReason::ClientReset => f.write_str("client reset"),
            EndReason::ServerReset => f.write_str("server reset"),
            EndReason::UpstreamRefused => f.write_str("upstream refused or unreachable"),
            EndReason::IdleTimeout(after) => write!(
                f,
                "idle timeout: no frame either way for {} ([timeouts] idle); both sides reset",
                humanize(*after)
            ),
            EndReason::Stopping => f.write_str("loupe stopping: both sides reset"),
            EndReason::DroppedByInspection => f.write_str("dropped by inspection: both sides reset"),
            EndReason::HalfOpenEvicted => {
                f.write_str("evicted half-open: [dataplane] max_half_open reached (a SYN flood?)")
            }
            EndReason::HandshakeTimeout(after) => write!(
                f,
                "handshake timeout: not done {} after the SYN ([timeouts] handshake); both sides reset",
                humanize(*after)
            ),
        }
    }
}

/// `12h`, `30m`, `90s`: the largest whole unit, as the configuration writes durations.
pub fn humanize(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s > 0 && s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s > 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s > 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ByteCounts {
    pub client_to_server: u64,
    pub server_to_client: u64,
}

pub struct TcpPair {
    pub client: SocketSet<'static>,
    pub server: SocketSet<'static>,
    client_handle: SocketHandle,
    server_handle: SocketHandle,
    pub phase: Phase,
    /// The client's initial sequence number, which the upstream SYN reuses.
    client_isn: u32,
    fins: Fins,
    pub end_reason: Option<EndReason>,
    pub bytes: ByteCounts,
    /// The memory the sockets' buffers borrow. Declared last: fields drop in order, so
    /// the sockets are gone before it is unmapped.
    _buffers: BufferPages,
}

fn endpoint_socket(rx: &'static mut [u8], tx: &'static mut [u8]) -> tcp::Socket<'static> {
    let mut socket = tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
    // Relayed bytes go out as they come; the sender's own segmentation already happened.
    socket.set_nagle_enabled(false);
    socket
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as usize,
        _ => 4096,
    }
}

/// A flow slot's four TCP buffers in one anonymous mapping, each starting on a page of
/// its own. From the heap they would share their first and last pages with the
/// allocator's neighbours, pages an idle flow could never give back (about one per
/// buffer: 16 KiB of every idle session). Fresh mapped pages also cost nothing until
/// written.
struct BufferPages {
    start: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: BufferPages owns its mapping exclusively (like a Vec owns its allocation).
unsafe impl Send for BufferPages {}

impl BufferPages {
    /// Maps four buffers of `buffer` bytes. The slices borrow the mapping: they must not
    /// outlive the returned `BufferPages` (TcpPair drops its sockets first).
    fn map(buffer: usize) -> (BufferPages, [&'static mut [u8]; 4]) {
        let stride = buffer.max(1).next_multiple_of(page_size());
        let len = stride * 4;
        // SAFETY: an anonymous private mapping of `len` bytes; no existing memory is touched.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        let Some(start) = std::ptr::NonNull::new(addr.cast::<u8>()).filter(|_| addr != libc::MAP_FAILED) else {
            // As a Vec's allocation failure would: the process cannot go on without memory.
            panic!(
                "mapping {len} bytes of TCP buffers failed: {}",
                std::io::Error::last_os_error()
            );
        };
        // SAFETY: four disjoint ranges of `buffer` bytes inside the fresh mapping (zeroed
        // by the kernel), each used by one socket only.
        let slices =
            std::array::from_fn(|i| unsafe { std::slice::from_raw_parts_mut(start.as_ptr().add(i * stride), buffer) });
        (BufferPages { start, len }, slices)
    }
}

impl Drop for BufferPages {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, no longer borrowed (see TcpPair::_buffers).
        unsafe { libc::munmap(self.start.as_ptr().cast(), self.len) };
    }
}

/// The addresses of the whole memory pages inside `buffer` (empty if there is none): a
/// partial page at either end may hold someone else's memory.
pub fn whole_pages(buffer: &[u8]) -> std::ops::Range<usize> {
    let page = page_size();
    let begin = buffer.as_ptr() as usize;
    let start = begin.next_multiple_of(page);
    let end = (begin + buffer.len()) / page * page;
    start..end.max(start)
}

/// Returns the whole pages inside `buffer` to the kernel (`MADV_DONTNEED`): they read as
/// zeros afterwards and take memory again only when written.
fn discard_pages(buffer: &mut [u8]) {
    let pages = whole_pages(buffer);
    if !pages.is_empty() {
        // SAFETY: the range lies inside `buffer`, which we borrow mutably: zeroing it is
        // a write we are allowed to make, and no other object shares those pages.
        unsafe { libc::madvise(pages.start as *mut libc::c_void, pages.len(), libc::MADV_DONTNEED) };
    }
}

impl TcpPair {
    /// Allocates both endpoints with `buffer` bytes per direction and side. Done once per
    /// flow slot; `open` resets a reused pair without allocating.
    pub fn new(buffer: usize) -> TcpPair {
        let (buffers, [client_rx, client_tx, server_rx, server_tx]) = BufferPages::map(buffer);
        let mut client = SocketSet::new(vec![SocketStorage::EMPTY]);
        let mut server = SocketSet::new(vec![SocketStorage::EMPTY]);
        let client_handle = client.add(endpoint_socket(client_rx, client_tx));
        let server_handle = server.add(endpoint_socket(server_rx, server_tx));
        TcpPair {
            client,
            server,
            client_handle,
            server_handle,
            phase: Phase::Finished,
            client_isn: 0,
            fins: Fins::default(),
            end_reason: None,
            bytes: ByteCounts::default(),
            _buffers: buffers,
        }
    }

    /// Prepares the pair for a new flow: the client side listens as the server (SYN-ACK
    /// paused), the server side connects as the client, with the client's initial
    /// sequence number (`client_isn`, see smoltcp patch 6). The caller then feeds the SYN.
    /// With `client_first` the SYN-ACK is not paused and nothing goes upstream until
    /// [`TcpPair::connect_upstream`], once the client's handshake completed.
    pub fn open(
        &mut self,
        key: FlowKey,
        client_isn: u32,
        client_first: bool,
        cx: &mut smoltcp::iface::Context,
    ) -> Result<(), String> {
        self.fins = Fins::default();
        self.end_reason = None;
        self.bytes = ByteCounts::default();
        self.client_isn = client_isn;
        let server_end = IpEndpoint::new(key.server.ip().into(), key.server.port());
        let client = self.client.get_mut::<tcp::Socket>(self.client_handle);
        client.abort();
        client
            .listen(server_end)
            .map_err(|e| format!("listen as {}: {e}", key.server))?;
        client.pause_synack(!client_first);
        client.set_timeout(Some(STALL_TIMEOUT));
        self.server.get_mut::<tcp::Socket>(self.server_handle).abort();
        if client_first {
            self.phase = Phase::AwaitingClient;
            return Ok(());
        }
        self.connect_upstream(key, cx)
    }

    /// Opens the upstream connection as the client (at `open`, or for a flow opened
    /// client-first once its client completed the handshake).
    pub fn connect_upstream(&mut self, key: FlowKey, cx: &mut smoltcp::iface::Context) -> Result<(), String> {
        self.phase = Phase::Connecting;
        let server_end = IpEndpoint::new(key.server.ip().into(), key.server.port());
        let client_end = IpEndpoint::new(key.client.ip().into(), key.client.port());
        let client_isn = self.client_isn;
        let server = self.server.get_mut::<tcp::Socket>(self.server_handle);
        server
            .connect(cx, server_end, client_end)
            .map_err(|e| format!("connect to {} as {}: {e}", key.server, key.client))?;
        // A server with the 4-tuple's previous connection in TIME-WAIT takes a SYN whose
        // ISN grows like the client's (a random one costs a 1 s retransmission).
        server.set_initial_seq(client_isn);
        server.set_timeout(Some(CONNECT_TIMEOUT));
        Ok(())
    }

    pub fn client_socket(&mut self) -> &mut tcp::Socket<'static> {
        self.client.get_mut(self.client_handle)
    }

    pub fn server_socket(&mut self) -> &mut tcp::Socket<'static> {
        self.server.get_mut(self.server_handle)
    }

    /// The state of loupe's socket facing the client (it answers as the server).
    pub fn client_state(&self) -> State {
        self.client.get::<tcp::Socket>(self.client_handle).state()
    }

    /// The state of loupe's socket facing the server (it speaks as the client).
    pub fn server_state(&self) -> State {
        self.server.get::<tcp::Socket>(self.server_handle).state()
    }

    /// Whether the flow is winding down: a FIN was seen or passed on, or a reset ended it.
    pub fn closing(&self) -> bool {
        let f = self.fins;
        self.end_reason.is_some()
            || f.client_fin_received
            || f.server_fin_received
            || f.client_fin_forwarded
            || f.server_fin_forwarded
    }

    /// Gives the memory pages of both connections' buffers back to the kernel where they
    /// hold nothing, keeping their capacity (and so the windows advertised): an idle
    /// session then costs no buffer memory until data flows again, when the pages it
    /// writes are faulted back in, zeroed. Returns whether both connections were empty
    /// (a connection with data in its buffers keeps them).
    pub fn discard_idle_buffers(&mut self) -> bool {
        let mut both = true;
        let client = self.client.get_mut::<tcp::Socket>(self.client_handle);
        let server = self.server.get_mut::<tcp::Socket>(self.server_handle);
        for socket in [client, server] {
            match socket.empty_buffers_mut() {
                Some((rx, tx)) => {
                    discard_pages(rx);
                    discard_pages(tx);
                }
                None => both = false,
            }
        }
        both
    }

    /// Ends the flow now for `reason` (a timeout): both sockets are aborted, so each
    /// sends its peer a reset on the next egress.
    pub fn expire(&mut self, reason: EndReason) {
        self.client_socket().abort();
        self.server_socket().abort();
        self.end_reason.get_or_insert(reason);
        self.phase = Phase::Finished;
    }

    /// Moves bytes both ways (through `pump`) and carries connection state across. Call
    /// after any ingress or timer on either side, before polling egress.
    pub fn relay(&mut self, pump: &mut dyn StreamPump) {
        let client = self.client.get_mut::<tcp::Socket>(self.client_handle);
        let server = self.server.get_mut::<tcp::Socket>(self.server_handle);

        // smoltcp returns a SYN-RECEIVED socket to LISTEN on a reset: the client gave up
        // on its handshake (a client that closed its connecting socket answers the
        // SYN-ACK with RST). The upstream leg goes too; left open, the server would hold
        // the 4-tuple and answer the port's next SYN with a challenge ACK (a 1 s retry).
        if self.phase != Phase::Finished && client.state() == State::Listen {
            client.abort();
            server.abort();
            self.end_reason = Some(EndReason::ClientReset);
            self.phase = Phase::Finished;
            return;
        }
        if self.phase == Phase::AwaitingClient {
            return;
        }

        if self.phase == Phase::Connecting {
            match server.state() {
                State::Established => {
                    client.pause_synack(false);
                    server.set_timeout(Some(STALL_TIMEOUT));
                    self.phase = Phase::Relaying;
                }
                State::Closed => {
                    // Refused (RST) or timed out: refuse the client the same way.
                    client.abort();
                    self.end_reason = Some(EndReason::UpstreamRefused);
                    self.phase = Phase::Finished;
                    return;
                }
                _ => return,
            }
        }
        if self.phase != Phase::Relaying {
            return;
        }

        // Observe FINs before acting: a socket closed below may reach Closed before the
        // next round, and must not then be mistaken for a reset.
        self.fins.client_fin_received |= fin_received(client.state());
        self.fins.server_fin_received |= fin_received(server.state());

        // The client can only send once its handshake completed (SYN-ACK was paused).
        if client.state() != State::SynReceived {
            let moved = pump.pump(client, server, &mut self.fins);
            self.bytes.client_to_server += moved.client_to_server;
            self.bytes.server_to_client += moved.server_to_client;
        }

        if self.fins.reset_sent {
            self.end_reason.get_or_insert(EndReason::DroppedByInspection);
        }
        // A reset on one side resets the other (once: our own abort closes a socket too).
        if self.end_reason.is_none() {
            if client.state() == State::Closed && !self.fins.client_fin_received {
                server.abort();
                self.end_reason = Some(EndReason::ClientReset);
            } else if server.state() == State::Closed && !self.fins.server_fin_received {
                client.abort();
                self.end_reason = Some(EndReason::ServerReset);
            }
        }

        if is_done(client.state()) && is_done(server.state()) {
            self.end_reason.get_or_insert(EndReason::Closed);
            self.phase = Phase::Finished;
        }
    }
}

/// Which FINs have been seen and passed on. A FIN is passed on only after every byte
/// before it has been handed to the other side.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fins {
    /// The peer's FIN has been seen (it may still have buffered bytes to relay).
    pub client_fin_received: bool,
    pub server_fin_received: bool,
    pub client_fin_forwarded: bool,
    pub server_fin_forwarded: bool,
    /// The pump reset both sides itself (an inspection `drop`): not a peer's reset.
    pub reset_sent: bool,
}

/// What moves between the two connected sockets of a flow: the bytes themselves
/// ([`Splice`]) or a TLS session in the middle. Only called while both are connected.
pub trait StreamPump {
    /// Moves what it can without blocking; closes a socket when its direction ended
    /// (recording it in `fins`). Returns the bytes it handed to each socket.
    fn pump(
        &mut self,
        client: &mut tcp::Socket<'static>,
        server: &mut tcp::Socket<'static>,
        fins: &mut Fins,
    ) -> ByteCounts;
}

/// Bytes relayed unchanged, FIN after the last byte.
pub struct Splice;

impl StreamPump for Splice {
    fn pump(
        &mut self,
        client: &mut tcp::Socket<'static>,
        server: &mut tcp::Socket<'static>,
        fins: &mut Fins,
    ) -> ByteCounts {
        let moved = ByteCounts {
            client_to_server: move_bytes(client, server),
            server_to_client: move_bytes(server, client),
        };
        if !fins.client_fin_forwarded && fins.client_fin_received && client.recv_queue() == 0 {
            server.close();
            fins.client_fin_forwarded = true;
        }
        if !fins.server_fin_forwarded && fins.server_fin_received && server.recv_queue() == 0 {
            client.close();
            fins.server_fin_forwarded = true;
        }
        moved
    }
}

/// Copies what `from` received into what `to` sends, as far as `to` has room.
fn move_bytes(from: &mut tcp::Socket<'static>, to: &mut tcp::Socket<'static>) -> u64 {
    let mut moved = 0u64;
    // Two rounds: the receive ring hands out at most one contiguous piece per call.
    for _ in 0..2 {
        if !from.can_recv() || !to.can_send() {
            break;
        }
        let room = to.send_capacity() - to.send_queue();
        if room == 0 {
            break;
        }
        let n = from
            .recv(|data| {
                let n = to.send_slice(&data[..data.len().min(room)]).unwrap_or(0);
                (n, n)
            })
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        moved += n as u64;
    }
    moved
}

/// States a socket only reaches after the peer's FIN.
fn fin_received(state: State) -> bool {
    matches!(
        state,
        State::CloseWait | State::LastAck | State::Closing | State::TimeWait
    )
}

fn is_done(state: State) -> bool {
    matches!(state, State::Closed | State::TimeWait)
}
