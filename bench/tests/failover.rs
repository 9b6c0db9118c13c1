//! What the wire does when the daemon dies: with fail-open (the default) new port-443
//! connections work again within a second, bridged by XDP; with fail-closed they do not,
//! and the counter says why. A SIGTERM resets the sessions loupe held on both legs, one
//! or thousands. Real peers: nginx, curl and Python socket clients and servers. Needs root; fails without it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use loupe_bench::lab::{require_root, Lab, Middle, MiddleGuard, Ns, NsProcess};

fn ok<T>(r: anyhow::Result<T>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:#}"))
}

/// nginx serving plain HTTP on the inspected port, and the client's URL for it.
fn web_on_443<'lab>(lab: &'lab Lab) -> (NsProcess<'lab>, String) {
    let www = lab.dir().join("www");
    std::fs::create_dir_all(&www).expect("www dir");
    std::fs::write(www.join("index.html"), "through the wire\n").expect("index");
    let listen: SocketAddr = "198.18.0.2:443".parse().expect("addr");
    let nginx = ok(lab.spawn_nginx_http(Ns::Server, listen, &www), "start nginx on 443");
    (nginx, "http://server.lab:443/".to_string())
}

/// The keep-alive load across the restarts: clients, and the longest a client may go
/// without a successful response (its 1 s timeout on a stalled connection, a reconnect).
const KEEPALIVE_CLIENTS: usize = 2;
const KEEPALIVE_MAX_GAP_S: f64 = 2.5;

fn fetch(lab: &Lab, url: &str, max_time: &str) -> anyhow::Result<String> {
    lab.exec(
        Ns::Client,
        &[
            "curl",
            "-fsS",
            "--connect-timeout",
            max_time,
            "--max-time",
            max_time,
            url,
        ],
    )
}

/// loupe with `fail` as given; plain HTTP on port 443 is spliced (`not_tls = "splice"`).
fn start_loupe<'lab>(lab: &'lab Lab, fail: &str) -> MiddleGuard<'lab> {
    let config = lab.dir().join("loupe.toml");
    std::fs::write(
        &config,
        format!("[dataplane]\nfail = \"{fail}\"\n\n[decryption]\nnot_tls = \"splice\"\n"),
    )
    .expect("write config");
    let args = vec!["--config".to_string(), config.display().to_string()];
    ok(lab.start(&Middle::Loupe { args }), "start loupe")
}

#[test]
fn sigkill_fails_open_within_a_second() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let (_nginx, url) = web_on_443(&lab);
    let mut loupe = start_loupe(&lab, "open");
    assert_eq!(ok(fetch(&lab, &url, "10"), "fetch through loupe"), "through the wire\n");
    let before = ok(loupe.wire_counters(), "counters");
    assert!(before.steered > 0, "the fetch did not go through loupe: {before:?}");
    assert_eq!(before.unserved, 0, "{before:?}");

    ok(loupe.kill_daemon(), "SIGKILL loupe");
    let killed = Instant::now();
    // New connections must work again within one second of the kill.
    let body = ok(fetch(&lab, &url, "1"), "fetch right after SIGKILL (fail-open)");
    let took = killed.elapsed();
    assert_eq!(body, "through the wire\n");
    assert!(took < Duration::from_secs(1), "first fetch after SIGKILL took {took:?}");
    let after = ok(loupe.wire_counters(), "counters after the kill");
    assert!(after.unserved > 0, "port 443 was not bridged fail-open: {after:?}");
    assert_eq!(
        after.steered, before.steered,
        "frames steered to a dead daemon: {after:?}"
    );
    assert_eq!(after.dropped_fail_closed, 0, "{after:?}");
}

#[test]
fn sigkill_with_fail_closed_drops_port_443_and_counts_it() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let (_nginx, url) = web_on_443(&lab);
    let mut loupe = start_loupe(&lab, "closed");
    assert_eq!(ok(fetch(&lab, &url, "10"), "fetch through loupe"), "through the wire\n");

    ok(loupe.kill_daemon(), "SIGKILL loupe");
    let refused = fetch(&lab, &url, "2");
    assert!(
        refused.is_err(),
        "port 443 still worked with fail-closed and no daemon: {refused:?}"
    );
    let c = ok(loupe.wire_counters(), "counters after the kill");
    assert!(c.dropped_fail_closed > 0, "the drop was not counted: {c:?}");
    assert_eq!(c.unserved, 0, "inspected traffic bridged despite fail-closed: {c:?}");
    // Everything else still crosses the wire.
    ok(
        lab.exec(Ns::Client, &["ping", "-c", "2", "-i", "0.2", "-W", "2", "server.lab"]),
        "ping after the kill",
    );
}

/// A keep-alive client that made one request and then waits for what comes next: prints
/// `answered`, then `reset`, `closed` or `nothing` (10 s without a word).
const WAITING_CLIENT: &str = r#"
import socket, sys
s = socket.create_connection(("198.18.0.2", 443), timeout=10)
s.sendall(b"GET / HTTP/1.1\r\nHost: server.lab\r\n\r\n")
got = b""
while b"through the wire" not in got:
    chunk = s.recv(4096)
    if not chunk:
        sys.exit("closed before the answer: %r" % got)
    got += chunk
print("answered", flush=True)
try:
    print("closed" if s.recv(4096) == b"" else "more data", flush=True)
except ConnectionResetError:
    print("reset", flush=True)
except socket.timeout:
    print("nothing", flush=True)
"#;

#[test]
fn sigterm_resets_the_sessions_it_held_on_both_legs() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let (_nginx, _url) = web_on_443(&lab);
    let mut loupe = start_loupe(&lab, "open");
    let mut client = ok(
        lab.spawn(Ns::Client, "waiting-client", &["python3", "-c", WAITING_CLIENT]),
        "start the keep-alive client",
    );
    let answered = Instant::now() + Duration::from_secs(10);
    while !client.stdout().contains("answered") {
        assert!(
            Instant::now() < answered,
            "no answer through loupe\n{}\n{}",
            client.logs(),
            loupe.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let server_sessions = || {
        ok(
            lab.exec(Ns::Server, &["ss", "-Htn", "state", "established", "( sport = :443 )"]),
            "ss in the server namespace",
        )
    };
    assert_eq!(
        server_sessions().lines().count(),
        1,
        "nginx should hold the kept-alive connection"
    );

    let status = ok(loupe.stop_daemon(), "SIGTERM loupe");
    assert!(
        status.success(),
        "loupe exited with {status} on SIGTERM\n{}",
        loupe.logs()
    );
    let status = ok(client.wait_timeout(Duration::from_secs(15)), "wait for the client");
    assert!(status.success(), "{}", client.logs());
    // Both legs were reset: the client learns at once instead of waiting on a dead
    // connection, and nginx (keepalive_timeout 75 s) lets go of the 4-tuple.
    assert!(
        client.stdout().contains("reset"),
        "the client was not reset when loupe stopped\n{}\n{}",
        client.logs(),
        loupe.logs()
    );
    let released = Instant::now() + Duration::from_secs(5);
    loop {
        let held = server_sessions();
        if held.trim().is_empty() {
            break;
        }
        assert!(
            Instant::now() < released,
            "nginx still holds the connection loupe left:\n{held}\n{}",
            loupe.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log_dir = loupe.log_dir().expect("loupe's log dir");
    let records = std::fs::read_to_string(log_dir.join("decryption.jsonl")).expect("decryption.jsonl");
    assert!(
        records.contains("loupe stopping: both sides reset"),
        "the session's end was not logged with its reason:\n{records}"
    );
}

/// Holds `HELD` connections to 198.18.0.2:443, each having sent a request line, and
/// prints `held N` once all are up; then holds them (the test stops it).
const MANY_CLIENTS: &str = r#"
import resource, socket, sys, time
n = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_NOFILE, (n + 1000, n + 1000))
held = []
for i in range(n):
    s = socket.create_connection(("198.18.0.2", 443), timeout=10)
    s.sendall(b"GET / HTTP/1.1\r\n")
    held.append(s)
print("held %d" % len(held), flush=True)
time.sleep(300)
"#;

/// Accepts connections on 198.18.0.2:443 and keeps them, never answering.
const HOLDING_SERVER: &str = r#"
import resource, socket, sys
n = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_NOFILE, (n + 1000, n + 1000))
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("198.18.0.2", 443))
l.listen(4096)
print("listening", flush=True)
held = []
while True:
    held.append(l.accept()[0])
"#;

/// More open sessions than a port has free TX frames (4,096 of its 8,192): the stop must
/// make room as it goes, or the resets past the free frames are lost and those sessions
/// stay open on both ends (the bench's one-second handshake tail, months later in a run:
/// the server answers the port's next SYN with a challenge ACK).
#[test]
fn sigterm_resets_every_one_of_thousands_of_held_sessions() {
    const HELD: usize = 5_000;
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let held = HELD.to_string();
    let server = ok(
        lab.spawn(Ns::Server, "holding-server", &["python3", "-c", HOLDING_SERVER, &held]),
        "start the holding server",
    );
    let listening = Instant::now() + Duration::from_secs(10);
    while !server.stdout().contains("listening") {
        assert!(Instant::now() < listening, "{}", server.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut loupe = start_loupe(&lab, "open");
    let clients = ok(
        lab.spawn(Ns::Client, "many-clients", &["python3", "-c", MANY_CLIENTS, &held]),
        "start the clients",
    );
    let up = Instant::now() + Duration::from_secs(60);
    while !clients.stdout().contains(&format!("held {HELD}")) {
        assert!(
            Instant::now() < up,
            "the clients did not get {HELD} sessions through loupe\n{}\n{}",
            clients.logs(),
            loupe.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let established = |ns: Ns, filter: &str| {
        ok(lab.exec(ns, &["ss", "-Htn", "state", "established", filter]), "ss")
            .lines()
            .count()
    };
    assert_eq!(
        established(Ns::Server, "( sport = :443 )"),
        HELD,
        "sessions at the server"
    );

    let status = ok(loupe.stop_daemon(), "SIGTERM loupe");
    assert!(status.success(), "loupe exited with {status}\n{}", loupe.logs());
    // Every session was reset on both legs: no end still believes in it.
    let released = Instant::now() + Duration::from_secs(10);
    loop {
        let (server_left, client_left) = (
            established(Ns::Server, "( sport = :443 )"),
            established(Ns::Client, "( dport = :443 )"),
        );
        if server_left == 0 && client_left == 0 {
            break;
        }
        assert!(
            Instant::now() < released,
            "{server_left} server and {client_left} client sessions were left open by the stop\n{}",
            loupe.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log_dir = loupe.log_dir().expect("loupe's log dir");
    let records = std::fs::read_to_string(log_dir.join("decryption.jsonl")).expect("decryption.jsonl");
    let stopped = records
        .lines()
        .filter(|r| r.contains("loupe stopping: both sides reset"))
        .count();
    assert_eq!(stopped, HELD, "every held session gets its record with the reason");
    drop(clients);
    drop(server);
}

/// Ten restarts (issue #15), five after a SIGKILL and five after a SIGTERM, under a
/// keep-alive load (two clients, 100 requests/s each, 50 on each connection): each time the
/// wire answers new connections within a second of the daemon's end (bridged by XDP), a
/// download started while the daemon is down (so bridged from its SYN) completes intact
/// across the restart, the restarted daemon steers new connections again, and the load's
/// requests never stop for long: a connection loupe held fails once (reset at a SIGTERM;
/// after a SIGKILL it stalls, since each leg had its own sequence numbers, until the
/// client's 1 s timeout) and the next one is bridged.
#[test]
fn restarts_under_keepalive_load_keep_the_wire_answering_and_bridged_flows_complete() {
    use rand::RngCore as _;
    use sha2::{Digest as _, Sha256};

    const BIG: usize = 12 << 20;
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let (_nginx, url) = web_on_443(&lab);
    let mut big = vec![0u8; BIG];
    rand::rng().fill_bytes(&mut big);
    std::fs::write(lab.dir().join("www").join("big.bin"), &big).expect("big.bin");
    let want = format!("{:x}", Sha256::digest(&big));
    let mut loupe = start_loupe(&lab, "open");
    let stop_file = lab.dir().join("keepalive-stop");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keepalive_client.py");
    let mut clients: Vec<NsProcess> = (0..KEEPALIVE_CLIENTS)
        .map(|i| {
            ok(
                lab.spawn(
                    Ns::Client,
                    &format!("keepalive-{i}"),
                    &[
                        "python3",
                        script.to_str().expect("utf-8 path"),
                        "198.18.0.2",
                        "443",
                        "/index.html",
                        "100",
                        "50",
                        "1",
                        stop_file.to_str().expect("utf-8 path"),
                    ],
                ),
                "start a keep-alive client",
            )
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for round in 0..10 {
        let before = ok(loupe.wire_counters(), "counters");
        assert_eq!(
            ok(fetch(&lab, &url, "5"), &format!("round {round}: fetch through loupe")),
            "through the wire\n"
        );
        let through = ok(loupe.wire_counters(), "counters");
        assert!(
            through.steered > before.steered,
            "round {round}: the fetch did not go through loupe"
        );

        let how = if round % 2 == 0 { "SIGKILL" } else { "SIGTERM" };
        if round % 2 == 0 {
            ok(loupe.kill_daemon(), "SIGKILL loupe");
        } else {
            ok(loupe.stop_daemon(), "SIGTERM loupe");
        }
        let ended = Instant::now();
        let body = ok(
            fetch(&lab, &url, "1"),
            &format!("round {round}: fetch right after {how}"),
        );
        let took = ended.elapsed();
        assert_eq!(body, "through the wire\n");
        assert!(
            took < Duration::from_secs(1),
            "round {round}: first fetch after {how} took {took:?}"
        );
        slowest = slowest.max(took);

        // 12 MiB at 2 MiB/s: about 6 s, most of it after the restart (which takes 1-3 s).
        let out = lab.dir().join(format!("bridged-{round}.bin"));
        let mut download = ok(
            lab.spawn(
                Ns::Client,
                "bridged-download",
                &[
                    "curl",
                    "-fsS",
                    "--limit-rate",
                    "2M",
                    "--max-time",
                    "30",
                    "-o",
                    out.to_str().expect("utf-8 path"),
                    &format!("{url}big.bin"),
                ],
            ),
            "start the download",
        );
        std::thread::sleep(Duration::from_millis(300));
        ok(loupe.restart(&lab), &format!("round {round}: restart loupe"));
        let early = ok(download.try_status(), "the download's status");
        assert!(
            early.is_none(),
            "round {round}: the download ended ({early:?}, {} bytes) before loupe was back: it must cross the restart\n{}",
            std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0),
            download.logs()
        );
        let status = ok(
            download.wait_timeout(Duration::from_secs(40)),
            "the bridged download ends",
        );
        let got = std::fs::read(&out)
            .map(|b| format!("{:x}", Sha256::digest(&b)))
            .unwrap_or_default();
        assert!(
            status.success() && got == want,
            "round {round}: a download bridged while loupe was down must complete across the restart: {status}, sha256 {got} (want {want})\n{}\n{}",
            download.logs(),
            loupe.logs()
        );
    }
    ok(loupe.check_alive(), "loupe alive after ten restarts");
    std::fs::write(&stop_file, "").expect("write the stop file");
    for (i, client) in clients.iter_mut().enumerate() {
        let status = ok(client.wait_timeout(Duration::from_secs(10)), "a keep-alive client ends");
        let out = client.stdout();
        let summary: serde_json::Value = out
            .lines()
            .last()
            .and_then(|line| serde_json::from_str(line).ok())
            .unwrap_or_else(|| {
                panic!(
                    "keep-alive client {i} ({status}) printed no summary:\n{}",
                    client.logs()
                )
            });
        let count = |key: &str| summary[key].as_u64().unwrap_or_else(|| panic!("no {key} in {summary}"));
        let seconds = |key: &str| summary[key].as_f64().unwrap_or_else(|| panic!("no {key} in {summary}"));
        eprintln!("keep-alive client {i}: {summary}");
        // 20 daemon ends (10 before the rounds' fetches, 10 in restarts), each failing the
        // connection loupe held at most once or twice; 90% of the paced requests succeed.
        let paced = 100.0 * seconds("elapsed_s");
        assert!(
            count("ok") as f64 >= 0.9 * paced
                && count("failed") <= 40
                && seconds("max_gap_s") <= KEEPALIVE_MAX_GAP_S,
            "keep-alive client {i}: requests must keep succeeding across the restarts (≥ 90% of {paced:.0} ok, ≤ 40 failed, no gap over {KEEPALIVE_MAX_GAP_S} s): {summary}\n{out}"
        );
        assert!(
            count("connections") >= count("ok") / 50,
            "keep-alive client {i}: connections must be recycled every 50 requests, so most are steered through the running daemon: {summary}"
        );
    }
    eprintln!("ten restarts: the slowest first fetch after the daemon ended took {slowest:?}");
}
