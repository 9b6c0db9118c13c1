//! The transparent relay without sockets, namespaces or root: a client TCP stack, loupe's
//! two transparent interfaces with a `TcpPair`, and a server TCP stack, all smoltcp,
//! joined by in-memory links and driven on a virtual clock.

use std::collections::VecDeque;
use std::net::SocketAddr;

use loupe_dataplane::flow::FlowKey;
use loupe_dataplane::relay::{whole_pages, EndReason, Phase, Splice, TcpPair};
use loupe_dataplane::tcp_device::transparent_interface;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet, SocketStorage};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp::{self, State};
use smoltcp::time::Instant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

const CLIENT: &str = "198.18.0.1:40000";
const SERVER: &str = "198.18.0.2:443";

/// One direction-pair of an in-memory link, seen from one end.
struct LinkEnd<'a> {
    rx: &'a mut VecDeque<Vec<u8>>,
    tx: &'a mut VecDeque<Vec<u8>>,
    /// At most this many packets are taken from `rx` per poll.
    rx_budget: usize,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = vec![0u8; len];
        let r = f(&mut packet);
        self.0.push_back(packet);
        r
    }
}

impl Device for LinkEnd<'_> {
    type RxToken<'b>
        = Rx
    where
        Self: 'b;
    type TxToken<'b>
        = Tx<'b>
    where
        Self: 'b;
    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx<'_>)> {
        if self.rx_budget == 0 {
            return None;
        }
        self.rx_budget -= 1;
        let packet = self.rx.pop_front()?;
        Some((Rx(packet), Tx(self.tx)))
    }
    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx(self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = 1500;
        caps
    }
}

#[derive(Default)]
struct Link {
    toward_loupe: VecDeque<Vec<u8>>,
    toward_host: VecDeque<Vec<u8>>,
}

struct Host {
    iface: Interface,
    sockets: SocketSet<'static>,
    handle: SocketHandle,
}

impl Host {
    fn new(addr: &str, link: &mut Link) -> Host {
        let mut dev = LinkEnd {
            rx: &mut link.toward_host,
            tx: &mut link.toward_loupe,
            rx_budget: 0,
        };
        let mut iface = Interface::new(Config::new(HardwareAddress::Ip), &mut dev, Instant::ZERO);
        let ip: IpAddress = addr.parse::<SocketAddr>().unwrap().ip().into();
        iface.update_ip_addrs(|a| a.push(IpCidr::new(ip, 24)).unwrap());
        let mut sockets = SocketSet::new(vec![SocketStorage::EMPTY]);
        let handle = sockets.add(tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 32 * 1024]),
            tcp::SocketBuffer::new(vec![0; 32 * 1024]),
        ));
        Host { iface, sockets, handle }
    }
    fn socket(&mut self) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut(self.handle)
    }
    fn poll(&mut self, now: Instant, link: &mut Link) {
        let mut dev = LinkEnd {
            rx: &mut link.toward_host,
            tx: &mut link.toward_loupe,
            rx_budget: usize::MAX,
        };
        self.iface.poll(now, &mut dev, &mut self.sockets);
    }
}

struct Appliance {
    client_iface: Interface,
    server_iface: Interface,
    pair: TcpPair,
    key: FlowKey,
}

impl Appliance {
    fn new(client_link: &mut Link, buffer: usize, client_first: bool) -> Appliance {
        let mut dev = LinkEnd {
            rx: &mut client_link.toward_loupe,
            tx: &mut client_link.toward_host,
            rx_budget: 0,
        };
        let client_iface = transparent_interface(&mut dev, 1, Instant::ZERO);
        let mut server_iface = transparent_interface(&mut dev, 2, Instant::ZERO);
        let mut pair = TcpPair::new(buffer);
        let key = FlowKey {
            client: CLIENT.parse().unwrap(),
            server: SERVER.parse().unwrap(),
        };
        // The client's ISN is only known from its SYN, which this harness sends later;
        // any value works for a server without a previous connection on the 4-tuple.
        pair.open(key, 0x1000_0000, client_first, server_iface.context())
            .unwrap();
        Appliance {
            client_iface,
            server_iface,
            pair,
            key,
        }
    }

    /// What the worker does in one round: ingress, relay, egress.
    fn poll(&mut self, now: Instant, client_link: &mut Link, server_link: &mut Link) {
        while !client_link.toward_loupe.is_empty() {
            let mut dev = LinkEnd {
                rx: &mut client_link.toward_loupe,
                tx: &mut client_link.toward_host,
                rx_budget: 1,
            };
            self.client_iface
                .poll_ingress_single(now, &mut dev, &mut self.pair.client);
        }
        // As the worker does for a flow opened client-first: upstream once the client is in.
        if self.pair.phase == Phase::AwaitingClient && self.pair.client_state() == State::Established {
            self.pair
                .connect_upstream(self.key, self.server_iface.context())
                .unwrap();
        }
        while !server_link.toward_loupe.is_empty() {
            let mut dev = LinkEnd {
                rx: &mut server_link.toward_loupe,
                tx: &mut server_link.toward_host,
                rx_budget: 1,
            };
            self.server_iface
                .poll_ingress_single(now, &mut dev, &mut self.pair.server);
        }
        self.pair.relay(&mut Splice);
        let mut dev = LinkEnd {
            rx: &mut client_link.toward_loupe,
            tx: &mut client_link.toward_host,
            rx_budget: 0,
        };
        while self.client_iface.poll_egress(now, &mut dev, &mut self.pair.client) != smoltcp::iface::PollResult::None {}
        let mut dev = LinkEnd {
            rx: &mut server_link.toward_loupe,
            tx: &mut server_link.toward_host,
            rx_budget: 0,
        };
        while self.server_iface.poll_egress(now, &mut dev, &mut self.pair.server) != smoltcp::iface::PollResult::None {}
    }
}

struct Net {
    now: Instant,
    client_link: Link,
    server_link: Link,
    client: Host,
    server: Host,
    loupe: Appliance,
}

impl Net {
    fn new(server_listens: bool, buffer: usize) -> Net {
        Net::opened(server_listens, buffer, false)
    }

    /// With `client_first`, loupe opens the flow as under a SYN flood.
    fn opened(server_listens: bool, buffer: usize, client_first: bool) -> Net {
        let mut client_link = Link::default();
        let mut server_link = Link::default();
        let mut client = Host::new(CLIENT, &mut client_link);
        let mut server = Host::new(SERVER, &mut server_link);
        let loupe = Appliance::new(&mut client_link, buffer, client_first);
        if server_listens {
            server.socket().listen(443).unwrap();
        }
        let server_addr: SocketAddr = SERVER.parse().unwrap();
        let cx = client.iface.context();
        client
            .sockets
            .get_mut::<tcp::Socket>(client.handle)
            .connect(cx, (server_addr.ip(), 443), 40000)
            .unwrap();
        Net {
            now: Instant::ZERO,
            client_link,
            server_link,
            client,
            server,
            loupe,
        }
    }

    fn step(&mut self) {
        self.now += smoltcp::time::Duration::from_millis(1);
        self.client.poll(self.now, &mut self.client_link);
        self.loupe.poll(self.now, &mut self.client_link, &mut self.server_link);
        self.server.poll(self.now, &mut self.server_link);
        self.loupe.poll(self.now, &mut self.client_link, &mut self.server_link);
    }

    fn run_until(&mut self, what: &str, mut done: impl FnMut(&mut Net) -> bool) {
        for _ in 0..200_000 {
            if done(self) {
                return;
            }
            self.step();
        }
        panic!(
            "gave up waiting for {what}: client {:?}, server {:?}, loupe {:?}",
            self.client.socket().state(),
            self.server.socket().state(),
            self.loupe.pair.phase
        );
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    let mut x = u32::from(seed) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Writes what fits of `data[*sent..]`; reads what is there into `got`.
fn pump(socket: &mut tcp::Socket<'static>, data: &[u8], sent: &mut usize, got: &mut Vec<u8>) {
    if socket.can_send() && *sent < data.len() {
        *sent += socket.send_slice(&data[*sent..]).unwrap();
    }
    while socket.can_recv() {
        socket.recv(|b| (b.len(), got.extend_from_slice(b))).unwrap();
    }
}

/// Sends `up` from the client and `down` from the server at once; fails unless each
/// arrives byte for byte.
fn transfer_both_ways(net: &mut Net, up: &[u8], down: &[u8]) {
    let (mut up_sent, mut down_sent) = (0, 0);
    let (mut up_got, mut down_got) = (Vec::new(), Vec::new());
    net.run_until("both transfers", |n| {
        pump(n.client.socket(), up, &mut up_sent, &mut down_got);
        pump(n.server.socket(), down, &mut down_sent, &mut up_got);
        up_got.len() == up.len() && down_got.len() == down.len()
    });
    assert!(up_got == up, "client-to-server bytes differ");
    assert!(down_got == down, "server-to-client bytes differ");
}

#[test]
fn relays_both_ways_at_once_byte_for_byte() {
    let mut net = Net::new(true, 16 * 1024);
    let up = pattern(1, 700_000);
    let down = pattern(2, 900_000);
    transfer_both_ways(&mut net, &up, &down);
    assert_eq!(net.loupe.pair.bytes.client_to_server, up.len() as u64);
    assert_eq!(net.loupe.pair.bytes.server_to_client, down.len() as u64);
}

#[test]
fn client_sees_no_syn_ack_before_the_server_accepts() {
    let mut net = Net::new(true, 16 * 1024);
    // The server side is slow: its link delivers nothing for a while.
    for _ in 0..500 {
        net.now += smoltcp::time::Duration::from_millis(1);
        net.client.poll(net.now, &mut net.client_link);
        net.loupe.poll(net.now, &mut net.client_link, &mut net.server_link);
        net.server_link.toward_host.clear();
    }
    assert_eq!(net.loupe.pair.phase, Phase::Connecting);
    assert_eq!(
        net.client.socket().state(),
        State::SynSent,
        "client got a SYN-ACK before the server accepted"
    );
    net.run_until("established", |n| n.client.socket().state() == State::Established);
    assert_eq!(net.server.socket().state(), State::Established);
    assert_eq!(net.loupe.pair.phase, Phase::Relaying);
}

#[test]
fn a_client_that_gives_up_during_the_connect_resets_the_upstream_leg() {
    let mut net = Net::new(true, 16 * 1024);
    // The server side is slow: loupe holds the client's SYN-ACK while it connects.
    for _ in 0..50 {
        net.now += smoltcp::time::Duration::from_millis(1);
        net.client.poll(net.now, &mut net.client_link);
        net.loupe.poll(net.now, &mut net.client_link, &mut net.server_link);
        net.server_link.toward_host.clear();
    }
    assert_eq!(net.loupe.pair.phase, Phase::Connecting);
    // The client closes its connecting socket (as Linux does, silently: any reset smoltcp
    // sends is dropped here), so the SYN-ACK loupe sends once connected gets a reset.
    net.client.socket().abort();
    net.client.poll(net.now, &mut net.client_link);
    net.client_link.toward_loupe.clear();
    net.run_until("the server's connection reset", |n| {
        n.loupe.pair.phase == Phase::Finished && n.server.socket().state() == State::Closed
    });
    assert_eq!(net.loupe.pair.end_reason, Some(EndReason::ClientReset));
    assert_eq!(net.loupe.pair.server_state(), State::Closed);
}

#[test]
fn refused_upstream_refuses_the_client() {
    let mut net = Net::new(false, 16 * 1024);
    net.run_until("client refused", |n| n.client.socket().state() == State::Closed);
    assert_eq!(net.loupe.pair.phase, Phase::Finished);
    assert_eq!(net.loupe.pair.end_reason, Some(EndReason::UpstreamRefused));
}

#[test]
fn opened_client_first_nothing_goes_upstream_before_the_client_completes_its_handshake() {
    let mut net = Net::opened(true, 16 * 1024, true);
    assert_eq!(net.loupe.pair.phase, Phase::AwaitingClient);
    // The client's SYN reaches loupe, which answers it; the client's ACK is withheld.
    net.now += smoltcp::time::Duration::from_millis(1);
    net.client.poll(net.now, &mut net.client_link);
    net.loupe.poll(net.now, &mut net.client_link, &mut net.server_link);
    assert_eq!(
        net.client_link.toward_host.len(),
        1,
        "loupe did not answer the SYN itself"
    );
    assert!(
        net.server_link.toward_host.is_empty(),
        "the SYN went upstream before the client's ACK"
    );
    net.client_link.toward_host.clear();
    for _ in 0..100 {
        net.now += smoltcp::time::Duration::from_millis(1);
        net.loupe.poll(net.now, &mut net.client_link, &mut net.server_link);
    }
    assert!(
        net.server_link.toward_host.is_empty(),
        "a spoofed SYN reached the server"
    );
    assert_eq!(net.loupe.pair.phase, Phase::AwaitingClient);

    // Once the client completes its handshake, the flow relays as any other.
    transfer_both_ways(&mut net, &pattern(5, 200_000), &pattern(6, 300_000));
    assert_eq!(net.loupe.pair.phase, Phase::Relaying);
}

#[test]
fn opened_client_first_a_refused_upstream_resets_the_client() {
    let mut net = Net::opened(false, 16 * 1024, true);
    net.run_until("client established", |n| {
        n.client.socket().state() == State::Established
    });
    net.run_until("client reset", |n| n.client.socket().state() == State::Closed);
    assert_eq!(net.loupe.pair.phase, Phase::Finished);
    assert_eq!(net.loupe.pair.end_reason, Some(EndReason::UpstreamRefused));
}

#[test]
fn half_close_still_delivers_the_reply() {
    let mut net = Net::new(true, 16 * 1024);
    let request = pattern(3, 50_000);
    let reply = pattern(4, 300_000);
    let mut sent = 0;
    let mut got_request = Vec::new();
    let mut ignored = Vec::new();
    net.run_until("request sent", |n| {
        pump(n.client.socket(), &request, &mut sent, &mut ignored);
        sent == request.len()
    });
    net.client.socket().close(); // shut down the write side only
    net.run_until("server sees EOF", |n| {
        pump(n.server.socket(), &[], &mut 0, &mut got_request);
        n.server.socket().state() == State::CloseWait && got_request.len() == request.len()
    });
    assert!(got_request == request);
    let mut reply_sent = 0;
    let mut got_reply = Vec::new();
    net.run_until("reply received and both closed", |n| {
        pump(n.server.socket(), &reply, &mut reply_sent, &mut ignored);
        if reply_sent == reply.len() {
            n.server.socket().close();
        }
        pump(n.client.socket(), &[], &mut 0, &mut got_reply);
        got_reply.len() == reply.len() && n.loupe.pair.phase == Phase::Finished
    });
    assert!(got_reply == reply, "reply after half-close differs");
    assert_eq!(net.loupe.pair.end_reason, Some(EndReason::Closed));
}

#[test]
fn slow_reader_closes_the_window_and_loses_nothing() {
    let mut net = Net::new(true, 8 * 1024);
    let up = pattern(5, 400_000);
    let mut sent = 0;
    let mut ignored = Vec::new();
    net.run_until("established", |n| n.server.socket().state() == State::Established);
    // The server reads nothing for a while: the client must stall, not overrun.
    for _ in 0..2_000 {
        pump(net.client.socket(), &up, &mut sent, &mut ignored);
        net.step();
    }
    assert!(
        sent < up.len(),
        "client sent everything into a server that reads nothing"
    );
    assert!(
        sent <= 32 * 1024 + 8 * 1024 * 2 + 32 * 1024,
        "more in flight ({sent}) than the buffers hold"
    );
    let mut got = Vec::new();
    net.run_until("everything read", |n| {
        pump(n.client.socket(), &up, &mut sent, &mut ignored);
        pump(n.server.socket(), &[], &mut 0, &mut got);
        got.len() == up.len()
    });
    assert!(got == up);
}

#[test]
fn reset_by_the_server_resets_the_client() {
    let mut net = Net::new(true, 16 * 1024);
    net.run_until("established", |n| n.client.socket().state() == State::Established);
    net.server.socket().abort();
    net.run_until("client reset", |n| n.client.socket().state() == State::Closed);
    assert_eq!(net.loupe.pair.end_reason, Some(EndReason::ServerReset));
}

#[test]
fn both_fins_while_bytes_are_buffered_deliver_every_byte() {
    let mut net = Net::new(true, 16 * 1024);
    let reply = pattern(6, 56_000); // fits the buffers on the way: the server can finish writing
    net.run_until("established", |n| n.server.socket().state() == State::Established);
    let mut sent = 0;
    let mut ignored = Vec::new();
    // The server writes everything and closes; then the client, which has read nothing
    // yet, closes its write side: both FINs arrive while loupe still holds server bytes.
    net.run_until("server wrote everything", |n| {
        pump(n.server.socket(), &reply, &mut sent, &mut ignored);
        sent == reply.len()
    });
    net.server.socket().close();
    for _ in 0..300 {
        net.step();
    }
    net.client.socket().close();
    for _ in 0..300 {
        net.step();
    }
    let mut got = Vec::new();
    net.run_until("client read everything", |n| {
        pump(n.client.socket(), &[], &mut 0, &mut got);
        got.len() == reply.len() || n.client.socket().state() == State::Closed
    });
    assert_eq!(got.len(), reply.len(), "client lost the tail of the reply");
    assert!(got == reply);
    net.run_until("flow finished", |n| n.loupe.pair.phase == Phase::Finished);
    assert_eq!(net.loupe.pair.end_reason, Some(EndReason::Closed));
}

/// Pages of `buffer` resident in memory (`mincore`), counting whole pages inside it.
fn resident_pages(buffer: &[u8]) -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let pages = whole_pages(buffer);
    let mut flags = vec![0u8; pages.len() / page];
    // SAFETY: the range is mapped (inside `buffer`); `flags` has one byte per page.
    let rc = unsafe { libc::mincore(pages.start as *mut libc::c_void, pages.len(), flags.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    flags.iter().filter(|f| *f & 1 == 1).count()
}

/// Resident pages of loupe's four TCP buffers (both connections, both directions), or
/// None while any holds data.
fn buffer_pages(pair: &mut TcpPair) -> Option<usize> {
    let mut pages = 0;
    for client_side in [true, false] {
        let socket = if client_side {
            pair.client_socket()
        } else {
            pair.server_socket()
        };
        let (rx, tx) = socket.empty_buffers_mut()?;
        pages += resident_pages(rx) + resident_pages(tx);
    }
    Some(pages)
}

#[test]
fn idle_buffers_give_their_pages_back_and_the_flow_goes_on() {
    let mut net = Net::new(true, 64 * 1024);
    let transfer = |net: &mut Net, seed: u8, len: usize| {
        let (up, down) = (pattern(seed, len), pattern(seed + 1, len));
        let (mut up_sent, mut down_sent) = (0, 0);
        let (mut up_got, mut down_got) = (Vec::new(), Vec::new());
        net.run_until("both transfers", |n| {
            pump(n.client.socket(), &up, &mut up_sent, &mut down_got);
            pump(n.server.socket(), &down, &mut down_sent, &mut up_got);
            up_got == up && down_got == down
        });
    };
    transfer(&mut net, 10, 300_000);
    // Data still queued or unacknowledged: nothing is discarded.
    let held = pattern(30, 20_000);
    let mut sent = 0;
    pump(net.client.socket(), &held, &mut sent, &mut Vec::new());
    net.step();
    net.step();
    assert!(!net.loupe.pair.discard_idle_buffers(), "discarded buffers holding data");
    let mut got = Vec::new();
    net.run_until("the held bytes delivered", |n| {
        pump(n.client.socket(), &held, &mut sent, &mut Vec::new());
        pump(n.server.socket(), &[], &mut 0, &mut got);
        got == held
    });
    net.run_until("every buffer empty", |n| buffer_pages(&mut n.loupe.pair).is_some());
    // Each 64 KiB buffer is whole pages of its own, so an idle flow can give back all of
    // it (a partial first page would stay resident whenever the ring's start is written).
    for client_side in [true, false] {
        let socket = if client_side {
            net.loupe.pair.client_socket()
        } else {
            net.loupe.pair.server_socket()
        };
        let (rx, tx) = socket.empty_buffers_mut().expect("empty");
        for buffer in [rx, tx] {
            assert_eq!(whole_pages(buffer).len(), buffer.len(), "a buffer shares a page");
        }
    }
    let before = buffer_pages(&mut net.loupe.pair).expect("empty");
    // smoltcp starts an emptied ring at its beginning again, so a transfer keeps only
    // the first pages of each buffer warm; some of them, at least.
    assert!(before >= 4, "the transfers left {before} buffer pages resident");
    assert!(net.loupe.pair.discard_idle_buffers(), "empty buffers not discarded");
    assert_eq!(buffer_pages(&mut net.loupe.pair), Some(0), "pages still resident");
    // The flow goes on as before, byte for byte, and faults back only what it writes.
    transfer(&mut net, 50, 2_000);
    net.run_until("every buffer empty again", |n| {
        buffer_pages(&mut n.loupe.pair).is_some()
    });
    let after_small = buffer_pages(&mut net.loupe.pair).expect("empty again");
    assert!(after_small <= 4 * 2, "2 kB each way brought back {after_small} pages");
    transfer(&mut net, 70, 300_000);
    assert_eq!(net.client.socket().state(), State::Established);
}
