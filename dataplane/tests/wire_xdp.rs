//! Privileged test of the XDP virtual wire (`loupe_dataplane::wire`).
//!
//! Builds client / app / server namespaces joined by veths (client eth0 <-> app
//! in0, app out0 <-> server eth0), attaches the wire to in0/out0 from a thread
//! that entered the app namespace, and checks bridging, fail-open, fail-closed,
//! QUIC dropping, malformed frames, survival of the pinned links without the
//! daemon, replacement, and detach; no-decrypt entries (bridged in XDP even when
//! fail-closed, replaced, cleared by a new attach) and QUIC dropping on inspected
//! ports. Must run as root; fails (never skips) otherwise.
//!
//! Traffic stays inside the namespaces, on 198.18.0.0/24; IPv6 is disabled in them.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use loupe_dataplane::{
    wire::{
        detach, pinned_counters, pinned_rule_hits, CounterPlace, NoDecryptEntry, PortSide, Wire, WireCounters,
        WireSettings, XdpAttachMode,
    },
    xsk::{XskPort, XskSizes, BATCH},
};
use xdpilone::xdp::XdpDesc;

const CLIENT_IP: &str = "198.18.0.1";
const SERVER_IP: &str = "198.18.0.2";
/// A second server address on the same interface (for no-decrypt entries that must
/// not cover it).
const SERVER2_IP: &str = "198.18.0.3";
/// TCP ports the echo server listens on.
const TCP_PORTS: [u16; 3] = [80, 443, 8443];
/// UDP ports whose datagrams the server counts.
const UDP_PORTS: [u16; 3] = [443, 8443, 5353];

fn run(cmd: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .map_err(|e| format!("spawning {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn must(cmd: &[&str]) {
    if let Err(e) = run(cmd) {
        panic!("lab setup failed: {e}");
    }
}

/// Three namespaces, deleted (with the pins) on drop, even when the test panics.
struct Lab {
    client: String,
    app: String,
    server: String,
    pin_dir: PathBuf,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        // SAFETY: plain syscall.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "wire_xdp needs root (XDP, namespaces, bpffs): run `sudo -E cargo test -p loupe-dataplane --test wire_xdp`"
        );
        let pid = std::process::id();
        let lab = Lab {
            client: format!("lpx{pid}-{tag}-client"),
            app: format!("lpx{pid}-{tag}-app"),
            server: format!("lpx{pid}-{tag}-server"),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/lpx{pid}-{tag}")),
        };
        for ns in [&lab.client, &lab.app, &lab.server] {
            if let Err(e) = run(&["ip", "netns", "add", ns]) {
                panic!("cannot create network namespace {ns}: {e}");
            }
            // No IPv6: only 198.18.0.0/15 traffic, and no router solicitations in the counters.
            must(&[
                "ip",
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ]);
            must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        must(&[
            "ip",
            "link",
            "add",
            "in0",
            "netns",
            &lab.app,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &lab.client,
        ]);
        must(&[
            "ip",
            "link",
            "add",
            "out0",
            "netns",
            &lab.app,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &lab.server,
        ]);
        for (ns, addr) in [(&lab.client, CLIENT_IP), (&lab.server, SERVER_IP)] {
            let cidr = format!("{addr}/24");
            must(&["ip", "-n", ns, "addr", "add", &cidr, "dev", "eth0"]);
            if ns == &lab.server {
                let cidr = format!("{SERVER2_IP}/24");
                must(&["ip", "-n", ns, "addr", "add", &cidr, "dev", "eth0"]);
            }
            // Redirected frames keep no CHECKSUM_PARTIAL state, and a veth delivers
            // XDP_REDIRECTed frames only if its peer runs NAPI (GRO on).
            must(&["ip", "netns", "exec", ns, "ethtool", "-K", "eth0", "tx", "off"]);
            must(&["ip", "netns", "exec", ns, "ethtool", "-K", "eth0", "gro", "on"]);
            must(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
        }
        for port in ["in0", "out0"] {
            must(&["ip", "-n", &lab.app, "link", "set", port, "up"]);
        }
        lab
    }

    fn settings(&self, mode: XdpAttachMode) -> WireSettings {
        WireSettings {
            inside: "in0".into(),
            outside: "out0".into(),
            inspect_ports: vec![443],
            fail_closed: false,
            drop_quic: false,
            pin_dir: self.pin_dir.clone(),
            mode,
            queues: 1,
        }
    }

    /// Runs `f` on a thread that entered namespace `ns` (network namespaces are per thread).
    fn within<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{ns}");
        let handle = thread::spawn(move || {
            enter_netns(&path);
            f()
        });
        match handle.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    fn ping(&self) -> bool {
        run(&[
            "ip",
            "netns",
            "exec",
            &self.client,
            "ping",
            "-c",
            "2",
            "-i",
            "0.2",
            "-W",
            "1",
            "-q",
            SERVER_IP,
        ])
        .is_ok()
    }

    /// TCP connect from the client, one line out, the echo back. Err on any failure.
    fn tcp_exchange(&self, port: u16, timeout: Duration) -> Result<(), String> {
        self.tcp_exchange_to(SERVER_IP, port, timeout)
    }

    /// [`Lab::tcp_exchange`] with server address `ip`.
    fn tcp_exchange_to(&self, ip: &'static str, port: u16, timeout: Duration) -> Result<(), String> {
        let client = self.client.clone();
        Lab::within(&client, move || {
            let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
            let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
            s.set_read_timeout(Some(timeout)).unwrap();
            let msg = format!("hello over {port}\n");
            s.write_all(msg.as_bytes()).map_err(|e| format!("write: {e}"))?;
            let mut reply = String::new();
            BufReader::new(s)
                .read_line(&mut reply)
                .map_err(|e| format!("read: {e}"))?;
            if reply == format!("echo:{msg}") {
                Ok(())
            } else {
                Err(format!("bad echo {reply:?}"))
            }
        })
    }

    /// Waits until the server namespace holds no connection on local `port` that is
    /// still closing (anything but LISTEN and TIME-WAIT), so that frames of an earlier
    /// exchange (a FIN retransmitted in LAST-ACK) cannot land in a later count.
    fn wait_server_quiet(&self, port: u16) {
        let server = self.server.clone();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let busy = Lab::within(&server, move || {
                // thread-self: this thread's namespace, not the process's.
                let table = std::fs::read_to_string("/proc/thread-self/net/tcp").expect("read net/tcp");
                let local_port = format!(":{port:04X}");
                table
                    .lines()
                    .skip(1)
                    .filter_map(|line| {
                        let fields: Vec<&str> = line.split_whitespace().collect();
                        (fields.len() > 3 && fields[1].ends_with(&local_port)).then(|| fields[3].to_string())
                    })
                    .filter(|state| state != "0A" && state != "06")
                    .collect::<Vec<_>>()
            });
            if busy.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server still has connections on {port} in states {busy:?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn udp_send(&self, port: u16, datagrams: usize) {
        let client = self.client.clone();
        Lab::within(&client, move || {
            let s = UdpSocket::bind((CLIENT_IP, 0)).expect("udp bind");
            for _ in 0..datagrams {
                s.send_to(b"quic-ish", (SERVER_IP, port)).expect("udp send");
            }
        });
    }

    /// A TCP connection from the client namespace, kept open (the socket stays in the
    /// namespace it was created in, whichever thread uses it).
    fn tcp_open(&self, ip: &'static str, port: u16) -> BufReader<TcpStream> {
        let client = self.client.clone();
        let s = Lab::within(&client, move || {
            let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
            TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        })
        .unwrap_or_else(|e| panic!("connect {ip}:{port}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        BufReader::new(s)
    }

    /// Sends one raw Ethernet frame out of the client's eth0.
    fn raw_frame(&self, frame: Vec<u8>) {
        let client = self.client.clone();
        Lab::within(&client, move || send_raw("eth0", &frame));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = detach(&self.pin_dir);
        for ns in [&self.client, &self.app, &self.server] {
            if let Err(e) = run(&["ip", "netns", "del", ns]) {
                eprintln!("teardown: {e}");
            }
        }
    }
}

fn enter_netns(path: &str) {
    let f = File::open(path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    // SAFETY: valid fd; affects only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
}

fn send_raw(iface: &str, frame: &[u8]) {
    let name = std::ffi::CString::new(iface).unwrap();
    // SAFETY: plain syscalls with valid arguments; the fd is closed below.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr());
        assert_ne!(ifindex, 0, "{iface} not found");
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        let rc = libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(rc, frame.len() as isize, "sendto: {err}");
    }
}

/// Echo server in the server namespace, on every server address: TCP [`TCP_PORTS`]
/// echo one line back with an `echo:` prefix; datagrams to [`UDP_PORTS`] are counted.
struct Server {
    stop: Arc<AtomicBool>,
    udp_received: Arc<[AtomicU64; UDP_PORTS.len()]>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(ns: &str) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let udp_received = Arc::new([const { AtomicU64::new(0) }; UDP_PORTS.len()]);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let path = format!("/run/netns/{ns}");
        let (stop2, udp2) = (stop.clone(), udp_received.clone());
        let thread = thread::spawn(move || {
            enter_netns(&path);
            let listeners: Vec<TcpListener> = TCP_PORTS
                .iter()
                .map(|p| {
                    let l = TcpListener::bind(("0.0.0.0", *p)).expect("tcp bind");
                    l.set_nonblocking(true).unwrap();
                    l
                })
                .collect();
            let udps: Vec<UdpSocket> = UDP_PORTS
                .iter()
                .map(|p| {
                    let u = UdpSocket::bind(("0.0.0.0", *p)).expect("udp bind");
                    u.set_nonblocking(true).unwrap();
                    u
                })
                .collect();
            ready_tx.send(()).unwrap();
            let mut buf = [0u8; 2048];
            while !stop2.load(Ordering::Relaxed) {
                for l in &listeners {
                    if let Ok((s, _)) = l.accept() {
                        thread::spawn(move || echo(s));
                    }
                }
                for (udp, count) in udps.iter().zip(udp2.iter()) {
                    while udp.recv_from(&mut buf).is_ok() {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
                thread::sleep(Duration::from_millis(5));
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("server did not start");
        Server {
            stop,
            udp_received,
            thread: Some(thread),
        }
    }

    /// Datagrams received on UDP `port` (one of [`UDP_PORTS`]).
    fn udp(&self, port: u16) -> u64 {
        let i = UDP_PORTS
            .iter()
            .position(|p| *p == port)
            .expect("a UDP port the server counts");
        self.udp_received[i].load(Ordering::Relaxed)
    }

    /// Waits until `want` datagrams arrived on `port`; false after 3 s.
    fn wait_udp(&self, port: u16, want: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.udp(port) < want {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Echoes lines (up to 64 KiB in all) until the peer closes or is silent for 5 s.
fn echo(s: TcpStream) {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s.take(64 * 1024));
    let mut line = String::new();
    while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
        if w.write_all(format!("echo:{line}").as_bytes()).is_err() {
            break;
        }
        line.clear();
    }
}

/// Waits until `pred` holds on the wire's counters (XDP counts on another CPU path).
fn wait_counters(wire: &Wire, what: &str, pred: impl Fn(&WireCounters) -> bool) -> WireCounters {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let c = wire.counters().expect("reading counters");
        if pred(&c) {
            return c;
        }
        assert!(Instant::now() < deadline, "{what}: counters {}", c.to_json());
        thread::sleep(Duration::from_millis(50));
    }
}

fn ether(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn attach_in(lab: &Lab, settings: WireSettings) -> Wire {
    let app = lab.app.clone();
    Lab::within(&app, move || Wire::attach(&settings)).unwrap_or_else(|e| panic!("Wire::attach: {e:#}"))
}

#[test]
fn wire_bridges_steers_and_fails_as_configured() {
    let lab = Lab::new("n");
    let server = Server::start(&lab.server);

    assert!(
        !lab.ping(),
        "ping crossed the app namespace before the wire was attached"
    );

    let mut wire = attach_in(&lab, lab.settings(XdpAttachMode::Native));
    assert_eq!(wire.mode(), XdpAttachMode::Native, "veth supports native XDP");

    // Bridging: ARP + ICMP both ways.
    let before = wire.counters().unwrap();
    assert!(lab.ping(), "ping client -> server through the wire failed");
    let c = wait_counters(&wire, "bridged after ping", |c| c.bridged >= before.bridged + 4);
    assert_eq!(c.steered, 0);
    assert_eq!(c.redirect_failed, 0, "{}", c.to_json());
    // Counted where they came in: requests on the inside port, replies on the outside,
    // each on the queue the daemon serves (veth has one); the rows add up to the totals.
    let placed = wire.placed_counters().expect("reading the counters per port and queue");
    let bridged_at = |place: CounterPlace| {
        placed
            .iter()
            .find(|row| row.place == place)
            .map_or(0, |row| row.counters.bridged)
    };
    for port in [PortSide::Inside, PortSide::Outside] {
        assert!(
            bridged_at(CounterPlace::Queue { port, queue: 0 }) >= 2,
            "{port:?} queue 0: {placed:?}"
        );
        assert_eq!(bridged_at(CounterPlace::OtherQueues { port }), 0, "{placed:?}");
    }
    assert_eq!(bridged_at(CounterPlace::NoPort), 0, "{placed:?}");
    assert!(WireCounters::total(&placed).bridged >= c.bridged, "{placed:?}");

    // Non-inspected TCP, with data both ways.
    lab.tcp_exchange(80, Duration::from_secs(3))
        .expect("TCP/80 through the wire");

    // Inspected port, no AF_XDP socket registered, fail-open: bridged uninspected.
    let before = wire.counters().unwrap();
    lab.tcp_exchange(443, Duration::from_secs(3))
        .expect("TCP/443 must be bridged when no socket serves the queue (fail-open)");
    let c = wait_counters(&wire, "unserved after fail-open 443", |c| {
        c.unserved >= before.unserved + 4
    });
    assert_eq!(c.steered, 0);
    assert_eq!(c.dropped_fail_closed, 0);

    // Fail-closed: 443 must not connect; 80 is unaffected.
    wire.set_fail_closed(true).unwrap();
    let err = lab
        .tcp_exchange(443, Duration::from_secs(2))
        .expect_err("TCP/443 connected although the wire is fail-closed with no socket");
    eprintln!("fail-closed 443 as expected: {err}");
    wait_counters(&wire, "dropped_fail_closed", |c| c.dropped_fail_closed >= 1);
    lab.tcp_exchange(80, Duration::from_secs(3))
        .expect("TCP/80 must still bridge when fail-closed");
    wire.set_fail_closed(false).unwrap();
    lab.tcp_exchange(443, Duration::from_secs(3))
        .expect("TCP/443 after switching back to fail-open");

    // A socket on in0 queue 0: the client's inspected SYNs are steered to it (nobody
    // answers, so the connect fails), and the frame in its RX ring is that SYN.
    // The last exchange's closing frames must be done first: a final ACK steered to
    // the socket leaves the server retransmitting its FIN, counted as unserved.
    lab.wait_server_quiet(443);
    let app = lab.app.clone();
    let mut xsk = Lab::within(&app, || XskPort::open("in0", 0, XskSizes { frames: 64, ring: 32 }))
        .unwrap_or_else(|e| panic!("AF_XDP socket on in0 queue 0: {e:#}"));
    wire.register_socket(PortSide::Inside, 0, xsk.raw_fd())
        .expect("register_socket");
    let before = wire.counters().unwrap();
    assert!(
        lab.tcp_exchange(443, Duration::from_secs(1)).is_err(),
        "TCP/443 connected although its SYN should have gone to the AF_XDP socket"
    );
    let c = wait_counters(&wire, "steered", |c| c.steered > before.steered);
    assert_eq!(c.unserved, before.unserved, "steered frames also counted as unserved");
    let mut descs = [XdpDesc::default(); BATCH];
    let n = xsk.receive(&mut descs);
    assert!(n >= 1, "no frame in the AF_XDP RX ring although steered grew");
    let syn = xsk.frame(&descs[0]).expect("descriptor inside the UMEM").to_vec();
    assert_eq!(&syn[12..14], &[0x08, 0x00], "steered frame is not IPv4");
    assert_eq!(syn[14 + 9], 6, "steered frame is not TCP");
    let ihl = (syn[14] & 0x0f) as usize * 4;
    let tcp = &syn[14 + ihl..];
    assert_eq!(u16::from_be_bytes([tcp[2], tcp[3]]), 443);
    assert_eq!(tcp[13] & 0x02, 0x02, "steered frame is not a SYN");
    // The socket closes (worker died): the kernel drops it from the XSKMAP and
    // the wire is fail-open again.
    drop(xsk);
    lab.tcp_exchange(443, Duration::from_secs(3))
        .expect("TCP/443 after the AF_XDP socket closed (fail-open)");

    // QUIC: UDP/443 reaches the server until drop_quic is set.
    lab.udp_send(443, 5);
    assert!(server.wait_udp(443, 5), "UDP/443 not bridged with drop_quic off");
    wire.set_drop_quic(true).unwrap();
    lab.udp_send(443, 5);
    wait_counters(&wire, "dropped_quic", |c| c.dropped_quic >= 5);
    thread::sleep(Duration::from_millis(200));
    assert_eq!(server.udp(443), 5, "UDP/443 reached the server with drop_quic on");

    // Malformed and VLAN frames are counted and still bridged (no out-of-bounds read:
    // the verifier accepted the program, and the frames do not crash anything).
    let before = wire.counters().unwrap();
    lab.raw_frame(ether(0x0800, &[0x45, 0, 0, 20, 0, 0])); // truncated IPv4
    let mut bad_ihl = vec![0x4f, 0, 0, 28];
    bad_ihl.resize(28, 0);
    lab.raw_frame(ether(0x0800, &bad_ihl)); // IHL 60 > total length 28
    lab.raw_frame(ether(0x8100, &[0, 5, 0x08, 0x06, 0, 0])); // 802.1Q
    let c = wait_counters(&wire, "malformed + vlan", |c| {
        c.malformed >= before.malformed + 2 && c.vlan > before.vlan
    });
    assert!(c.bridged >= before.bridged + 3, "{}", c.to_json());

    // The pinned counters map is readable without the Wire.
    let pinned = pinned_counters(&lab.pin_dir).expect("pinned counters");
    assert!(
        pinned.bridged >= c.bridged,
        "pinned {} vs {}",
        pinned.to_json(),
        c.to_json()
    );

    // The daemon goes away: the pinned links keep bridging.
    drop(wire);
    assert!(
        lab.ping(),
        "ping failed after the Wire was dropped: pins must keep the links"
    );

    // A new daemon replaces the pinned links (counters start again).
    let wire = attach_in(&lab, lab.settings(XdpAttachMode::Native));
    let fresh = wire.counters().unwrap();
    assert!(
        fresh.bridged < pinned.bridged,
        "counters were not replaced: {}",
        fresh.to_json()
    );
    assert!(lab.ping(), "ping failed after re-attaching over the pinned links");
    wait_counters(&wire, "bridged after re-attach", |c| c.bridged >= 4);

    detach(&lab.pin_dir).expect("detach");
    assert!(!Path::new(&lab.pin_dir).exists(), "pin dir left behind");
    assert!(!lab.ping(), "ping still crosses after detach");
    drop(wire);
    drop(server);
}

#[test]
fn wire_works_in_generic_mode() {
    let lab = Lab::new("g");
    let _server = Server::start(&lab.server);
    let mut settings = lab.settings(XdpAttachMode::Generic);
    settings.fail_closed = true;
    let wire = attach_in(&lab, settings);
    assert_eq!(wire.mode(), XdpAttachMode::Generic);
    assert!(lab.ping(), "ping through the wire in generic mode");
    lab.tcp_exchange(80, Duration::from_secs(3))
        .expect("TCP/80 through the generic-mode wire");
    assert!(
        lab.tcp_exchange(443, Duration::from_secs(2)).is_err(),
        "TCP/443 connected although fail_closed was set at attach"
    );
    let c = wait_counters(&wire, "generic counters", |c| {
        c.bridged >= 4 && c.dropped_fail_closed >= 1
    });
    assert_eq!(c.steered, 0);
    detach(&lab.pin_dir).expect("detach");
    assert!(!lab.ping(), "ping still crosses after detach (generic)");
}

fn no_decrypt(addr: &str, prefix: u8, port: u16, rule: u32) -> NoDecryptEntry {
    NoDecryptEntry {
        addr: addr.parse().unwrap(),
        prefix,
        port,
        rule,
    }
}

/// Asserts that `(ip, port)` does not connect through the fail-closed wire and that
/// the wire, not something else, dropped it.
fn assert_dropped_fail_closed(lab: &Lab, wire: &Wire, ip: &'static str, port: u16, why: &str) {
    // The last frames of an earlier bridged connection (its closing ACKs) may still be
    // crossing: start from counters that have stopped moving.
    let mut before = wire.counters().unwrap();
    for _ in 0..20 {
        thread::sleep(Duration::from_millis(100));
        let now = wire.counters().unwrap();
        if now.bridged_no_decrypt == before.bridged_no_decrypt {
            break;
        }
        before = now;
    }
    if lab.tcp_exchange_to(ip, port, Duration::from_secs(1)).is_ok() {
        panic!("{ip}:{port} connected through the fail-closed wire: {why}");
    }
    let c = wait_counters(wire, "dropped_fail_closed", |c| {
        c.dropped_fail_closed > before.dropped_fail_closed
    });
    assert_eq!(
        c.bridged_no_decrypt,
        before.bridged_no_decrypt,
        "{ip}:{port} ({why}) counted as bridged by a no-decrypt entry: {}",
        c.to_json()
    );
}

/// `n` connections to `(ip, port)` through the fail-closed wire with no AF_XDP socket:
/// only a no-decrypt entry lets them through. Checks that every inspected segment of
/// them was bridged by the entry (none steered, dropped or unserved).
fn assert_bridged_by_rule(lab: &Lab, wire: &Wire, ip: &'static str, port: u16, n: u64) {
    let before = wire.counters().unwrap();
    for i in 0..n {
        lab.tcp_exchange_to(ip, port, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("{ip}:{port} connection {i} not bridged by its no-decrypt entry: {e}"));
    }
    // Per connection at least SYN, SYN-ACK, ACK, request, reply.
    let c = wait_counters(wire, "bridged_no_decrypt", |c| {
        c.bridged_no_decrypt >= before.bridged_no_decrypt + 5 * n
    });
    assert_eq!(c.dropped_fail_closed, before.dropped_fail_closed, "{}", c.to_json());
    assert_eq!(c.steered, 0, "{}", c.to_json());
    assert_eq!(c.unserved, 0, "{}", c.to_json());
    // Every frame bridged by a rule is also counted as bridged. The two per-CPU counters
    // are bumped one after the other, so a reader can land between them: wait for it.
    wait_counters(wire, "bridged to include bridged_no_decrypt", |c| {
        c.bridged - before.bridged >= c.bridged_no_decrypt - before.bridged_no_decrypt
    });
}

/// One line out on an open connection, its echo back.
fn exchange_line(conn: &mut BufReader<TcpStream>, msg: &str) -> Result<(), String> {
    conn.get_mut()
        .write_all(format!("{msg}\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut reply = String::new();
    conn.read_line(&mut reply).map_err(|e| format!("read: {e}"))?;
    if reply == format!("echo:{msg}\n") {
        Ok(())
    } else {
        Err(format!("bad echo {reply:?}"))
    }
}

/// Hit counters of the rules named in `want` equal it; every other slot is zero.
fn assert_rule_hits(wire: &Wire, want: &[(usize, u64)]) {
    // Rule hits are counted on the client's SYN, which has long arrived: no waiting.
    let hits = wire.rule_hits().expect("rule_hits");
    assert_eq!(hits.len(), loupe_common::MAX_RULE_HITS as usize);
    for (rule, count) in hits.iter().enumerate() {
        let expected = want.iter().find(|(r, _)| *r == rule).map_or(0, |(_, n)| *n);
        assert_eq!(*count, expected, "rule {rule} hits (all: {want:?})");
    }
}

#[test]
fn no_decrypt_entries_bridge_in_xdp() {
    let lab = Lab::new("d");
    let _server = Server::start(&lab.server);
    let mut settings = lab.settings(XdpAttachMode::Native);
    settings.inspect_ports = vec![443, 8443];
    settings.fail_closed = true;
    let mut wire = attach_in(&lab, settings.clone());

    // Fail-closed with no AF_XDP socket: inspected TCP goes nowhere.
    assert_dropped_fail_closed(&lab, &wire, SERVER_IP, 443, "no entries yet");

    // One server, one port: its connections are bridged by rule 7, both directions
    // (the SYN-ACK matches on its source), and each client SYN is one hit.
    wire.set_no_decrypt(&[no_decrypt(SERVER_IP, 32, 443, 7)]).unwrap();
    assert_bridged_by_rule(&lab, &wire, SERVER_IP, 443, 3);
    assert_rule_hits(&wire, &[(7, 3)]);
    // Neither another address on that port nor another port of that address.
    assert_dropped_fail_closed(&lab, &wire, SERVER2_IP, 443, "other server address");
    assert_dropped_fail_closed(&lab, &wire, SERVER_IP, 8443, "other port of the server");
    assert_rule_hits(&wire, &[(7, 3)]);

    // A policy change that keeps a server covered (its /32 replaced by a /24 of another
    // rule) does not disturb a connection open to it.
    let mut conn = lab.tcp_open(SERVER_IP, 443);
    exchange_line(&mut conn, "before the change").expect("open connection, bridged by rule 7");
    let before = wire.counters().unwrap();
    wire.set_no_decrypt(&[no_decrypt("198.18.0.0", 24, 443, 8)]).unwrap();
    exchange_line(&mut conn, "after the change").expect("open connection after its entry was replaced");
    let c = wire.counters().unwrap();
    assert_eq!(c.dropped_fail_closed, before.dropped_fail_closed, "{}", c.to_json());
    drop(conn);
    assert_rule_hits(&wire, &[(7, 4)]);

    // An IPv6 block covering everything never matches IPv4 servers.
    wire.set_no_decrypt(&[no_decrypt("::", 0, 443, 9)]).unwrap();
    assert_dropped_fail_closed(&lab, &wire, SERVER_IP, 443, "only an IPv6 ::/0 entry");

    // Replacing the entries: a /30 on 8443 (rule 2) instead of the /32 on 443.
    wire.set_no_decrypt(&[no_decrypt("198.18.0.0", 30, 8443, 2)]).unwrap();
    assert_dropped_fail_closed(&lab, &wire, SERVER_IP, 443, "its entry was replaced");
    assert_bridged_by_rule(&lab, &wire, SERVER_IP, 8443, 1);
    assert_bridged_by_rule(&lab, &wire, SERVER2_IP, 8443, 1);
    assert_rule_hits(&wire, &[(7, 4), (2, 2)]);
    // Setting the same entries again changes nothing; an empty list removes them.
    wire.set_no_decrypt(&[no_decrypt("198.18.0.1", 30, 8443, 2)]).unwrap();
    assert_bridged_by_rule(&lab, &wire, SERVER2_IP, 8443, 1);
    wire.set_no_decrypt(&[]).unwrap();
    assert_dropped_fail_closed(&lab, &wire, SERVER2_IP, 8443, "all entries removed");
    // A bad list is refused and leaves the entries as they were.
    wire.set_no_decrypt(&[no_decrypt(SERVER_IP, 32, 443, 1)]).unwrap();
    let err = wire
        .set_no_decrypt(&[no_decrypt(SERVER2_IP, 32, 443, 1), no_decrypt(SERVER_IP, 33, 443, 1)])
        .unwrap_err();
    assert!(format!("{err:#}").contains("at most 32"), "{err:#}");
    assert_bridged_by_rule(&lab, &wire, SERVER_IP, 443, 1);
    assert_dropped_fail_closed(&lab, &wire, SERVER2_IP, 443, "refused list");
    assert_rule_hits(&wire, &[(7, 4), (2, 3), (1, 1)]);
    let pinned = pinned_rule_hits(&lab.pin_dir).expect("pinned rule hits");
    assert_eq!(pinned, wire.rule_hits().unwrap());

    // A new daemon: the entries of the previous one do not survive its attach, and
    // the rule hits start again.
    drop(wire);
    let wire = attach_in(&lab, settings.clone());
    assert_rule_hits(&wire, &[]);
    assert_dropped_fail_closed(&lab, &wire, SERVER_IP, 443, "entry of a previous attach");
    drop(wire);

    // Entries given at attach are in place before the program takes over.
    let app = lab.app.clone();
    let entries = [no_decrypt(SERVER2_IP, 32, 443, 4)];
    let wire = Lab::within(&app, move || Wire::attach_with_no_decrypt(&settings, &entries))
        .unwrap_or_else(|e| panic!("Wire::attach_with_no_decrypt: {e:#}"));
    assert_bridged_by_rule(&lab, &wire, SERVER2_IP, 443, 2);
    assert_rule_hits(&wire, &[(4, 2)]);

    detach(&lab.pin_dir).expect("detach");
    assert!(
        !Path::new(&lab.pin_dir).exists(),
        "detach left pins behind (no-decrypt or rule-hits map?)"
    );
    assert!(
        lab.tcp_exchange_to(SERVER2_IP, 443, Duration::from_secs(1)).is_err(),
        "still bridged after detach"
    );
    drop(wire);
}

#[test]
fn quic_is_dropped_on_inspected_ports_only() {
    let lab = Lab::new("q");
    let server = Server::start(&lab.server);
    let mut settings = lab.settings(XdpAttachMode::Native);
    settings.inspect_ports = vec![443, 8443];
    settings.drop_quic = true;
    let mut wire = attach_in(&lab, settings);

    // UDP to an inspected port is QUIC: dropped and counted.
    lab.udp_send(443, 5);
    lab.udp_send(8443, 3);
    let c = wait_counters(&wire, "dropped_quic", |c| c.dropped_quic >= 8);
    assert_eq!(c.dropped_quic, 8, "{}", c.to_json());
    // UDP to another port is bridged.
    lab.udp_send(5353, 4);
    assert!(server.wait_udp(5353, 4), "UDP/5353 not bridged with drop_quic on");
    assert_eq!((server.udp(443), server.udp(8443)), (0, 0), "QUIC reached the server");
    assert_eq!(wire.counters().unwrap().dropped_quic, 8);

    // drop_quic off: UDP/443 is bridged like any UDP.
    wire.set_drop_quic(false).unwrap();
    lab.udp_send(443, 5);
    assert!(server.wait_udp(443, 5), "UDP/443 not bridged with drop_quic off");
    assert_eq!(wire.counters().unwrap().dropped_quic, 8);
    // TCP on the inspected port is unaffected by either (fail-open, no socket: unserved).
    lab.tcp_exchange(443, Duration::from_secs(3))
        .expect("TCP/443 fail-open");
}
