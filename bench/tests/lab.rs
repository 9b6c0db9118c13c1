//! The lab itself: scripts/lab.sh builds what DESIGN.md promises, is idempotent, and
//! leaves nothing behind, even when a test panics. Needs root; fails without it.

use std::path::Path;
use std::process::Command;

use loupe_bench::lab::{lab_script, require_root, Lab, Ns};

fn ok<T>(r: anyhow::Result<T>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:#}"))
}

fn netns_with_prefix(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

fn assert_gone(prefix: &str) {
    assert!(
        netns_with_prefix(prefix).is_empty(),
        "namespaces left behind: {:?}",
        netns_with_prefix(prefix)
    );
    for role in ["client", "app", "server"] {
        let d = format!("/etc/netns/{prefix}{role}");
        assert!(!Path::new(&d).exists(), "{d} left behind");
    }
}

#[test]
fn lab_matches_the_design_and_up_is_idempotent() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let prefix = lab.prefix().to_string();
    let mut names = netns_with_prefix(&prefix);
    names.sort();
    assert_eq!(
        names,
        vec![
            format!("{prefix}app"),
            format!("{prefix}client"),
            format!("{prefix}server")
        ]
    );

    // A second `up` on the same prefix changes nothing and does not fail.
    let again = Command::new("bash")
        .arg(lab_script())
        .args(["up", "--prefix", &prefix])
        .output()
        .expect("run lab.sh");
    assert!(
        again.status.success(),
        "second up failed: {}",
        String::from_utf8_lossy(&again.stderr)
    );

    let client = ok(
        lab.exec(Ns::Client, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]),
        "client addr",
    );
    assert!(client.contains("198.18.0.1/24"), "{client}");
    assert_eq!(client.lines().count(), 1, "{client}");
    let server = ok(
        lab.exec(Ns::Server, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]),
        "server addr",
    );
    for i in 2..=9 {
        assert!(
            server.contains(&format!("198.18.0.{i}/24")),
            "missing 198.18.0.{i}: {server}"
        );
    }
    assert_eq!(server.lines().count(), 8, "{server}");

    // The wire ports are up with no address of any family.
    for port in ["in0", "out0"] {
        let a = ok(lab.exec(Ns::App, &["ip", "-o", "addr", "show", "dev", port]), port);
        assert!(a.trim().is_empty(), "{port} has addresses: {a}");
        let l = ok(lab.exec(Ns::App, &["ip", "-o", "link", "show", "dev", port]), port);
        assert!(l.contains("state UP") || l.contains(",UP"), "{port} not up: {l}");
    }

    // The settings XDP redirect depends on, at both ends.
    for ns in [Ns::Client, Ns::Server] {
        let k = ok(lab.exec(ns, &["ethtool", "-k", "eth0"]), "ethtool -k");
        assert!(k.contains("tx-checksumming: off"), "{ns:?}: {k}");
        assert!(k.contains("generic-receive-offload: on"), "{ns:?}: {k}");
    }

    let hosts = std::fs::read_to_string(format!("/etc/netns/{prefix}client/hosts")).expect("hosts file");
    assert!(hosts.contains("198.18.0.2 server.lab"), "{hosts}");
    assert!(hosts.contains("198.18.0.9 s8.lab"), "{hosts}");
    // ... and the client sees it as its /etc/hosts.
    let seen = ok(lab.exec(Ns::Client, &["cat", "/etc/hosts"]), "client /etc/hosts");
    assert!(seen.contains("s1.lab"), "{seen}");

    drop(lab);
    assert_gone(&prefix);
}

#[test]
fn queues_option_sets_veth_queue_counts() {
    require_root();
    let lab = ok(Lab::up_with_queues(2), "lab up --queues 2");
    for (ns, dev) in [
        (Ns::App, "in0"),
        (Ns::App, "out0"),
        (Ns::Client, "eth0"),
        (Ns::Server, "eth0"),
    ] {
        let d = ok(lab.exec(ns, &["ip", "-d", "link", "show", "dev", dev]), dev);
        assert!(d.contains("numtxqueues 2 numrxqueues 2"), "{ns:?}/{dev}: {d}");
    }
}

#[test]
fn client_and_server_are_isolated_until_something_joins_the_ports() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let ping = |count: &str| {
        ok(
            lab.exec_output(Ns::Client, &["ping", "-c", count, "-i", "0.2", "-W", "1", "198.18.0.2"]),
            "ping",
        )
    };
    assert!(
        !ping("1").status.success(),
        "reached the server with nothing in the wire"
    );
    ok(lab.bridge(true), "bridge on");
    assert!(ping("2").status.success(), "bridge on, still no path");
    ok(lab.bridge(false), "bridge off");
    assert!(!ping("1").status.success(), "bridge off, still a path");
}

#[test]
fn lab_is_torn_down_when_a_test_panics() {
    require_root();
    let prefix = std::sync::Mutex::new(String::new());
    let result = std::panic::catch_unwind(|| {
        let lab = Lab::up().expect("lab up");
        *prefix.lock().unwrap() = lab.prefix().to_string();
        let _p = lab.spawn(Ns::Server, "sleeper", &["sleep", "30"]).expect("spawn");
        panic!("deliberate");
    });
    assert!(result.is_err());
    let prefix = prefix.into_inner().unwrap();
    assert!(!prefix.is_empty());
    assert_gone(&prefix);
    // The scratch dir is kept after a panic so its logs can be read; this panic was
    // on purpose.
    let dir = std::env::temp_dir().join(format!("loupe-{prefix}lab"));
    assert!(dir.is_dir(), "logs of a panicking test should be kept");
    std::fs::remove_dir_all(dir).expect("remove kept dir");
}
