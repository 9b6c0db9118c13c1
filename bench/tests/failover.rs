//! What the wire does when the daemon dies: with fail-open (the default) new port-443
//! connections work again within a second, bridged by XDP; with fail-closed they do not,
//! and the counter says why. Real peers: nginx and curl. Needs root; fails without it.

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
