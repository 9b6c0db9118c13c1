//! Traffic through loupe between the lab's client and server namespaces, checked byte
//! for byte (SHA-256 both ways), with the XDP counters saying which path it took.
//!
//! `LOUPE_TEST_MIDDLE=bridge` runs the same traffic through a kernel bridge instead, to
//! tell a harness problem from a loupe problem. Needs root; fails without it.

use std::net::SocketAddr;
use std::time::Duration;

use loupe_bench::lab::{require_root, Lab, Middle, MiddleGuard, Ns, WireOutcome, WireSpec, SERVER_ADDRS};
use loupe_bench::lossy;
use loupe_bench::steer;
use loupe_bench::traffic::Mode;
use sha2::{Digest, Sha256};

/// The one switch: what joins in0 and out0 for every test in this file. These tests push
/// raw bytes (not TLS) on port 443, so loupe runs with `not_tls = "splice"`: they test the
/// virtual wire and the TCP relay, not decryption.
fn middle(lab: &Lab) -> Middle {
    middle_with(lab, "")
}

/// [`middle`] with more of loupe's configuration (ignored by the kernel bridge).
fn middle_with(lab: &Lab, more_config: &str) -> Middle {
    match Middle::for_tests() {
        Middle::Loupe { mut args } => {
            let config = lab.dir().join("splice-non-tls.toml");
            let text = format!("{more_config}\n[decryption]\nnot_tls = \"splice\"\n");
            std::fs::write(&config, text).expect("write config");
            args.extend(["--config".to_string(), config.display().to_string()]);
            Middle::Loupe { args }
        }
        bridge => bridge,
    }
}

fn through_loupe() -> bool {
    matches!(Middle::for_tests(), Middle::Loupe { .. })
}

fn ok<T>(r: anyhow::Result<T>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:#}"))
}

/// A verified wire run, or a panic carrying the traffic tool's and the middle's logs.
fn wire(lab: &Lab, mid: &MiddleGuard, spec: WireSpec, what: &str) -> WireOutcome {
    lab.run_wire(&spec)
        .unwrap_or_else(|e| panic!("{what} through {}: {e:#}\n{}", Middle::for_tests().name(), mid.logs()))
}

/// `connections` connections each sending `size` bytes each way, checked to have carried
/// all of them.
fn transfer_each_way(
    lab: &Lab,
    mid: &MiddleGuard,
    size: u64,
    connections: usize,
    timeout: Duration,
    what: &str,
) -> WireOutcome {
    let spec = WireSpec {
        bytes: size,
        reply_bytes: size,
        connections,
        timeout,
        ..WireSpec::default()
    };
    let out = wire(lab, mid, spec, what);
    assert_eq!(out.comparison.connections, connections);
    assert_eq!(out.comparison.client_to_server_bytes, connections as u64 * size);
    assert_eq!(out.comparison.server_to_client_bytes, connections as u64 * size);
    out
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), port)
}

#[test]
fn one_connection_256mib_each_way() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let mut mid = ok(lab.start(&middle(&lab)), "start middle");
    let size = 256u64 << 20;
    let out = transfer_each_way(&lab, &mid, size, 1, Duration::from_secs(300), "256 MiB each way");
    let c = &out.client[0];
    assert_eq!(c.sent_sha256, out.server[0].received_sha256);
    assert_eq!(c.received_sha256, out.server[0].sent_sha256);
    ok(mid.check_alive(), "middle alive after the run");
    assert_steered(&mid, 2 * size);
}

/// Through loupe, the bytes took the userspace path: at least one steered frame per
/// 1500 bytes moved, and nothing inspected was bridged around it.
fn assert_steered(mid: &MiddleGuard, bytes: u64) {
    if !through_loupe() {
        return; // the kernel bridge has no XDP counters to check
    }
    let c = ok(mid.wire_counters(), "XDP counters");
    assert!(
        c.steered >= bytes / 1500,
        "only {} frames steered for {bytes} bytes: {c:?}",
        c.steered
    );
    assert_eq!(c.unserved, 0, "inspected frames bridged around loupe: {c:?}");
    assert_eq!(c.dropped_fail_closed, 0, "{c:?}");
}

#[test]
fn two_percent_loss_between_loupe_and_server_still_delivers_256mib() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let mut mid = ok(lab.start(&middle(&lab)), "start middle");
    // The loss injector runs on the server's interface: XDP drops 2% of what loupe sends
    // the server, tc egress 2% of what the server sends back.
    let pins = std::path::PathBuf::from(format!("/sys/fs/bpf/{}lossy", lab.prefix()));
    let bench = ok(loupe_bench::lab::binary("loupe-bench"), "loupe-bench binary");
    let per_mille = "20";
    let argv = [
        bench.as_os_str(),
        "lossy-wire".as_ref(),
        "--iface".as_ref(),
        "eth0".as_ref(),
        "--per-mille".as_ref(),
        per_mille.as_ref(),
        "--pin-dir".as_ref(),
        pins.as_os_str(),
    ];
    let mut injector = ok(
        lab.spawn_net_only(Ns::Server, "lossy", &argv),
        "start the loss injector",
    );
    let status = ok(injector.wait_timeout(Duration::from_secs(30)), "loss injector pinned");
    assert!(status.success(), "lossy-wire failed with {status}\n{}", injector.logs());
    let _remove = RemoveLossy(pins.clone());
    let size = 256u64 << 20;
    let out = wire(
        &lab,
        &mid,
        WireSpec {
            bytes: size,
            reply_bytes: size,
            connections: 1,
            timeout: Duration::from_secs(900),
            ..WireSpec::default()
        },
        "256 MiB each way across 2% loss",
    );
    assert_eq!(out.comparison.client_to_server_bytes, size);
    assert_eq!(out.comparison.server_to_client_bytes, size);
    let dropped = ok(lossy::lossy_counters(&pins), "loss counters");
    let lost = dropped.ingress_dropped + dropped.egress_dropped;
    let passed = dropped.ingress_passed + dropped.egress_passed;
    eprintln!("loss injector: {dropped:?}");
    assert!(lost > 1000, "the injector dropped only {lost} frames: {dropped:?}");
    let rate = lost as f64 / (lost + passed) as f64;
    assert!(
        (0.01..0.03).contains(&rate),
        "drop rate {rate:.4} is not about 2%: {dropped:?}"
    );
    ok(mid.check_alive(), "middle alive after the run");
}

/// Unpins the loss injector even when the test fails.
struct RemoveLossy(std::path::PathBuf);

impl Drop for RemoveLossy {
    fn drop(&mut self) {
        if let Err(e) = lossy::remove_lossy_wire(&self.0) {
            eprintln!("removing the loss injector at {}: {e:#}", self.0.display());
        }
    }
}

/// Also run with `[dataplane] busy_poll_us`: the worker spins on its rings before
/// sleeping, and the bytes are the same for it.
#[test]
fn two_hundred_concurrent_connections_own_payloads() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let mut mid = ok(
        lab.start(&middle_with(&lab, "[dataplane]\nbusy_poll_us = 200\n")),
        "start middle",
    );
    // Spread over all eight server addresses so the middle sees many distinct flows.
    let servers: Vec<SocketAddr> = SERVER_ADDRS.iter().map(|a| addr(a, 443)).collect();
    let out = wire(
        &lab,
        &mid,
        WireSpec {
            servers,
            bytes: 512 << 10,
            reply_bytes: 768 << 10,
            connections: 200,
            timeout: Duration::from_secs(180),
            ..WireSpec::default()
        },
        "200 concurrent connections",
    );
    assert_eq!(out.comparison.connections, 200);
    // Every connection carried its own payload.
    let mut hashes: Vec<&str> = out.client.iter().map(|r| r.sent_sha256.as_str()).collect();
    hashes.extend(out.server.iter().map(|r| r.sent_sha256.as_str()));
    hashes.sort_unstable();
    hashes.dedup();
    assert_eq!(hashes.len(), 400, "payloads are not all distinct");
    // Distinct 4-tuples (a local port may repeat towards different server addresses).
    let mut tuples: Vec<(&str, &str)> = out
        .client
        .iter()
        .filter_map(|r| Some((r.local.as_deref()?, r.peer.as_deref()?)))
        .collect();
    tuples.sort_unstable();
    tuples.dedup();
    assert_eq!(tuples.len(), 200, "expected 200 distinct connections");
    ok(mid.check_alive(), "middle alive after the run");
    assert_steered(&mid, 200 * ((512 + 768) << 10));
    if through_loupe() {
        let worker_counters = |mid: &MiddleGuard| {
            let counters = ok(mid.loupectl_json(&["counters"]), "loupectl counters");
            counters["workers"][0].clone()
        };
        let count = |worker: &serde_json::Value, name: &str| {
            worker[name].as_u64().unwrap_or_else(|| panic!("no {name} in {worker}"))
        };
        // Traffic that stops is followed by a spell, so the bulk run had some.
        let worker = worker_counters(&mid);
        assert!(count(&worker, "busy_polls") > 0, "no busy-poll spell: {worker}");
        // Whether a spell ends with a frame depends on the peers: a bulk run can keep
        // the worker busy until its end (as on a loaded CI machine). Half-close
        // exchanges leave it idle while the server's application wakes to reply, well
        // within 200 µs on an idle machine: repeat them (bounded) until a spell ends
        // with a frame, i.e. the spin saved a sleep.
        let mut worker = worker;
        for _ in 0..20 {
            if count(&worker, "busy_poll_hits") > 0 {
                break;
            }
            wire(
                &lab,
                &mid,
                WireSpec {
                    bytes: 4 << 10,
                    reply_bytes: 4 << 10,
                    connections: 4,
                    half_close: true,
                    ..WireSpec::default()
                },
                "half-close exchanges",
            );
            worker = worker_counters(&mid);
        }
        eprintln!(
            "busy-poll: {} spells, {} ended with a frame",
            count(&worker, "busy_polls"),
            count(&worker, "busy_poll_hits")
        );
        assert!(
            count(&worker, "busy_poll_hits") > 0,
            "no spell ended with a frame: {worker}"
        );
        assert!(
            count(&worker, "busy_poll_hits") <= count(&worker, "busy_polls"),
            "{worker}"
        );
        let status = ok(mid.loupectl(&["status"]), "loupectl status").stdout;
        assert!(status.contains("200 µs after the last frame"), "{status}");
    }
}

/// With two queues per port, the lab's ends send each connection on the queue a
/// symmetric RSS gives it, and loupe runs one worker per queue: both legs of every
/// session reach the same worker (no segment of an unknown flow anywhere), both workers
/// carry sessions, and every byte arrives.
#[test]
fn two_queues_two_workers_each_serve_whole_sessions() {
    require_root();
    let lab = ok(Lab::up_with_queues(2), "lab up --queues 2");
    let mut mid = ok(
        lab.start(&middle_with(&lab, "[dataplane]\nqueues = 2\n")),
        "start middle",
    );
    let connections = 64;
    let size = 1u64 << 20;
    let servers: Vec<SocketAddr> = SERVER_ADDRS.iter().map(|a| addr(a, 443)).collect();
    let out = wire(
        &lab,
        &mid,
        WireSpec {
            servers,
            bytes: size,
            reply_bytes: size,
            connections,
            timeout: Duration::from_secs(120),
            ..WireSpec::default()
        },
        "64 connections over two queues",
    );
    assert_eq!(out.comparison.connections, connections);
    assert_eq!(out.comparison.client_to_server_bytes, connections as u64 * size);
    assert_eq!(out.comparison.server_to_client_bytes, connections as u64 * size);
    ok(mid.check_alive(), "middle alive after the run");

    // The lab's steering sent on both queues from both ends.
    for ns in [Ns::Client, Ns::Server] {
        let c = ok(steer::lab_steer_counters(&lab.steer_pin_dir(ns)), "steering counters");
        assert_eq!(c.per_queue.len(), 2, "{ns:?}: {c:?}");
        assert!(c.per_queue.iter().all(|&n| n > 0), "{ns:?} used one queue only: {c:?}");
    }
    if through_loupe() {
        assert_steered(&mid, 2 * connections as u64 * size);
        let counters = ok(mid.loupectl_json(&["counters"]), "loupectl counters");
        let workers = counters["workers"].as_array().expect("workers array");
        assert_eq!(workers.len(), 2, "{counters}");
        let count = |w: &serde_json::Value, name: &str| w[name].as_u64().unwrap_or_else(|| panic!("no {name} in {w}"));
        let mut opened = 0;
        for w in workers {
            // A leg that reached the other worker would show up there as segments of no
            // known flow (the server's SYN-ACK first).
            assert_eq!(count(w, "orphan_segments"), 0, "a leg reached the wrong worker: {w}");
            // 64 connections hashed over two queues: fewer than 8 on one is a ~1e-9 event.
            assert!(count(w, "flows_opened") >= 8, "worker barely used: {w}");
            opened += count(w, "flows_opened");
        }
        assert_eq!(opened, connections as u64, "{counters}");
    }
}

/// With every wire end at MTU 9000 (jumbo frames), loupe's TCP follows the ports' MTU
/// through multi-buffer AF_XDP: a 9,000-byte packet spans three UMEM frames each way, so
/// loupe sends fewer frames than the data alone would need with segments one frame holds,
/// and the bytes arrive intact.
#[test]
fn mtu_9000_lab_carries_jumbo_segments_intact() {
    require_root();
    let lab = ok(Lab::up_with(1, 9000), "lab up at MTU 9000");
    let mut mid = ok(lab.start(&middle(&lab)), "start middle");
    let size = 16u64 << 20;
    transfer_each_way(
        &lab,
        &mid,
        size,
        2,
        Duration::from_secs(120),
        "16 MiB each way at MTU 9000",
    );
    ok(mid.check_alive(), "middle alive after the run");
    if through_loupe() {
        let counters = ok(mid.loupectl_json(&["counters"]), "loupectl counters");
        let worker = &counters["workers"][0];
        let sent = worker["tx_frames"]
            .as_u64()
            .unwrap_or_else(|| panic!("no tx_frames in {worker}"));
        // The MSS of the largest packet one frame holds (IP and TCP headers off).
        let one_frame_mss = (loupe_dataplane::xsk::MAX_IP_MTU - 40) as u64;
        let at_one_frame = 4 * size / one_frame_mss;
        assert!(
            sent < at_one_frame,
            "loupe sent {sent} frames for 4 × 16 MiB: segments no larger than one UMEM frame holds ({at_one_frame} data frames): {worker}"
        );
        let status = ok(mid.loupectl_json(&["status"]), "loupectl status");
        let worker = &status["workers"][0];
        assert_eq!(worker["multi_buffer"]["inside"], true, "{worker}");
        assert_eq!(worker["multi_buffer"]["outside"], true, "{worker}");
        assert_eq!(worker["mtu"]["inside"], 9000, "{worker}");
        let logs = mid.logs();
        assert!(
            logs.contains("mtu=9000") && logs.contains("multi_buffer=true"),
            "the start-up log names the MTU and multi-buffer:\n{logs}"
        );
    }
}

#[test]
fn half_close_server_replies_after_client_fin() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let mut mid = ok(lab.start(&middle(&lab)), "start middle");
    // Both directions substantial: the reply starts only after the client's FIN has
    // crossed the wire, so a middle that drops or mis-sequences the FIN stalls here.
    let out = wire(
        &lab,
        &mid,
        WireSpec {
            bytes: 8 << 20,
            reply_bytes: 8 << 20,
            connections: 4,
            half_close: true,
            timeout: Duration::from_secs(120),
            ..WireSpec::default()
        },
        "half-close, 8 MiB each way",
    );
    assert_eq!(out.comparison.connections, 4);
    assert!(out.server.iter().all(|r| r.mode == Some(Mode::HalfClose)));
    // The client sends nothing but the header and its FIN; the server still replies.
    let out = wire(
        &lab,
        &mid,
        WireSpec {
            connect_names: vec!["server.lab:443".into()],
            bytes: 0,
            reply_bytes: 1 << 20,
            connections: 2,
            half_close: true,
            timeout: Duration::from_secs(60),
            ..WireSpec::default()
        },
        "half-close, empty request",
    );
    assert_eq!(out.comparison.server_to_client_bytes, 2 << 20);
    ok(mid.check_alive(), "middle alive after the run");
}

#[test]
fn arp_icmp_and_tcp80_cross_the_wire() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let mut mid = ok(lab.start(&middle(&lab)), "start middle");

    // ICMP to the first and the last server address (names from the lab hosts file).
    for target in ["server.lab", "s8.lab"] {
        ok(
            lab.exec(Ns::Client, &["ping", "-c", "3", "-i", "0.2", "-W", "2", target]),
            &format!("ping {target}"),
        );
    }

    // ARP crossed both ways and MACs were kept: each end learnt the other's own MAC.
    let client_mac = ok(lab.mac(Ns::Client, "eth0"), "client mac");
    let server_mac = ok(lab.mac(Ns::Server, "eth0"), "server mac");
    let neigh = ok(
        lab.exec(Ns::Client, &["ip", "neigh", "show", "198.18.0.2", "dev", "eth0"]),
        "client neighbours",
    );
    assert!(
        neigh.contains(&server_mac),
        "client resolved 198.18.0.2 to '{}', server eth0 is {server_mac}",
        neigh.trim()
    );
    let neigh = ok(
        lab.exec(Ns::Server, &["ip", "neigh", "show", "198.18.0.1", "dev", "eth0"]),
        "server neighbours",
    );
    assert!(
        neigh.contains(&client_mac),
        "server resolved 198.18.0.1 to '{}', client eth0 is {client_mac}",
        neigh.trim()
    );

    // Plain HTTP on port 80 with peers the project did not write: nginx and curl.
    let www = lab.dir().join("www");
    std::fs::create_dir_all(&www).expect("www dir");
    let mut blob = vec![0u8; 3 << 20];
    rand::fill(&mut blob[..]);
    std::fs::write(www.join("blob.bin"), &blob).expect("write blob");
    std::fs::write(www.join("index.html"), "loupe lab\n").expect("write index");
    let _nginx = ok(
        lab.spawn_nginx_http(Ns::Server, addr("198.18.0.2", 80), &www),
        "start nginx",
    );
    let body = ok(
        lab.exec(Ns::Client, &["curl", "-fsS", "--max-time", "20", "http://server.lab/"]),
        "curl index",
    );
    assert_eq!(body, "loupe lab\n");
    let got = lab.dir().join("got.bin");
    let got_s = got.to_str().expect("utf-8 path");
    ok(
        lab.exec(
            Ns::Client,
            &[
                "curl",
                "-fsS",
                "--max-time",
                "30",
                "-o",
                got_s,
                "http://server.lab/blob.bin",
            ],
        ),
        "curl blob",
    );
    let fetched = std::fs::read(&got).expect("read fetched blob");
    assert_eq!(fetched.len(), blob.len());
    assert_eq!(
        Sha256::digest(&fetched),
        Sha256::digest(&blob),
        "blob corrupted on the way"
    );
    ok(mid.check_alive(), "middle alive after the run");
    if through_loupe() {
        // ARP, ICMP and port 80 never left XDP: bridged, not steered.
        let c = ok(mid.wire_counters(), "XDP counters");
        assert_eq!(c.steered, 0, "non-inspected traffic was steered to userspace: {c:?}");
        assert!(c.bridged > (blob.len() / 1500) as u64, "too few frames bridged: {c:?}");
    }
}

/// `[dataplane] forward_only` (the bench's `xsk-forward` floor): the bytes cross intact,
/// every steered frame went out of the other port through the worker, and no flow, TCP
/// endpoint or session was made for them.
#[test]
fn forward_only_copies_steered_frames_port_to_port_without_flows() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let config = lab.dir().join("forward-only.toml");
    std::fs::write(&config, "[dataplane]\nforward_only = true\n").expect("write config");
    let args = vec!["--config".to_string(), config.display().to_string()];
    let mut mid = ok(lab.start(&Middle::Loupe { args }), "start loupe forward-only");
    let size = 16u64 << 20;
    let servers: Vec<SocketAddr> = SERVER_ADDRS.iter().map(|a| addr(a, 443)).collect();
    let out = wire(
        &lab,
        &mid,
        WireSpec {
            servers,
            bytes: size,
            reply_bytes: size,
            connections: 8,
            timeout: Duration::from_secs(120),
            ..WireSpec::default()
        },
        "8 connections forwarded",
    );
    assert_eq!(out.comparison.connections, 8);
    // Each connection's bytes arrived as sent, both ways (the reports come in no order).
    fn sorted(mut hashes: Vec<&str>) -> Vec<&str> {
        hashes.sort_unstable();
        hashes
    }
    let sent_up = sorted(out.client.iter().map(|r| r.sent_sha256.as_str()).collect());
    let got_up = sorted(out.server.iter().map(|r| r.received_sha256.as_str()).collect());
    assert_eq!(sent_up, got_up);
    let sent_down = sorted(out.server.iter().map(|r| r.sent_sha256.as_str()).collect());
    let got_down = sorted(out.client.iter().map(|r| r.received_sha256.as_str()).collect());
    assert_eq!(sent_down, got_down);
    ok(mid.check_alive(), "loupe alive after the run");
    let xdp = ok(mid.wire_counters(), "XDP counters");
    assert!(xdp.steered >= 8 * 2 * size / 1500, "too few frames steered: {xdp:?}");
    assert_eq!(xdp.unserved, 0, "{xdp:?}");

    let status = ok(mid.loupectl_json(&["status"]), "loupectl status");
    assert_eq!(status["forward_only"], serde_json::json!(true), "{status}");
    let counters = ok(mid.loupectl_json(&["counters"]), "loupectl counters");
    let worker = &counters["workers"][0];
    let count = |name: &str| worker[name].as_u64().unwrap_or_else(|| panic!("no {name} in {worker}"));
    // Every steered frame was received by the worker and sent out of the other port.
    assert!(count("rx_frames") >= 8 * 2 * size / 1500, "{worker} {xdp:?}");
    assert_eq!(
        count("tx_frames"),
        count("rx_frames"),
        "a frame was not forwarded: {worker}"
    );
    assert_eq!(count("tx_no_frame"), 0, "{worker}");
    for none in ["flows_opened", "orphan_segments", "resets"] {
        assert_eq!(count(none), 0, "{none}: {worker}");
    }
    let text = ok(mid.loupectl(&["status"]), "loupectl status (text)").stdout;
    assert!(text.contains("forward only"), "{text}");
}
