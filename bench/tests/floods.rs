//! A SYN flood from spoofed sources (198.18.128.0/17 only) against the inspected port
//! while a legitimate client opens 1,000 TLS connections through loupe: they succeed,
//! the flow table stays within its bounds, and the flood's half-open flows are evicted
//! and counted, not logged one by one and never connected to the server.
//! Real peers: nginx (TLS) behind loupe, `loupe-bench tls-handshakes` as the client,
//! `loupe-bench syn-flood` as the attacker. Needs root; fails without it.

mod common;

use std::time::{Duration, Instant};

use common::*;
use loupe_bench::lab::{binary, require_root, Lab, Ns};
use serde_json::Value;

const MAX_FLOWS: u64 = 8192;
const MAX_HALF_OPEN: u64 = 2048;
const FLOOD_RATE: u64 = 60_000;
const LEGIT_CONNECTIONS: u64 = 1000;

fn worker_sum(status: &Value, field: &str) -> u64 {
    status["workers"]
        .as_array()
        .map(|ws| ws.iter().map(|w| w[field].as_u64().unwrap_or(0)).sum())
        .unwrap_or(0)
}

/// Established TCP connections nginx holds on its port 443 (server namespace).
fn server_connections(lab: &Lab) -> usize {
    ok(lab.open_connections(Ns::Server, 443), "ss in the server namespace").len()
}

#[test]
fn syn_flood_leaves_legitimate_connections_working_and_the_table_bounded() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    // A short handshake timeout, so the flood's last half-open flows go soon after it.
    let config = format!(
        "[dataplane]\nmax_flows = {MAX_FLOWS}\nmax_half_open = {MAX_HALF_OPEN}\n\n[timeouts]\nhandshake = \"5s\"\n"
    );
    let (mut t, _nginx) = setup_with(&lab, Some(&config));
    // The server answers the spoofed sources the way a server behind a router would:
    // through the appliance, toward the clients' side.
    ok(
        lab.exec(
            Ns::Server,
            &["ip", "route", "add", "198.18.128.0/17", "via", "198.18.0.1"],
        ),
        "route the spoofed range back through loupe",
    );
    let warm = t.curl(&["--cacert", t.dca(), "-o", "/dev/null", "https://server.lab/"]);
    assert!(
        warm.status.success(),
        "a fetch before the flood failed: {}",
        warm.stderr
    );
    let records_before = t.records().len();

    let bench = ok(binary("loupe-bench"), "loupe-bench binary");
    let bench = bench.to_str().expect("path");
    let rate = FLOOD_RATE.to_string();
    let mut flood = ok(
        lab.spawn(
            Ns::Client,
            "syn-flood",
            &[
                bench,
                "syn-flood",
                "--target",
                "198.18.0.2:443",
                "--rate",
                &rate,
                "--duration",
                "15s",
            ],
        ),
        "start the SYN flood",
    );
    let flood_started = Instant::now();
    // Wait until the flood fills loupe's half-open budget: from then on every SYN evicts.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = ok(t.mid.loupectl_json(&["counters"]), "loupectl counters");
        if worker_sum(&status, "half_open_evicted") > 0 {
            break;
        }
        if Instant::now() > deadline {
            t.fail(
                None,
                &format!(
                    "no half-open flow evicted 10 s into the flood:\n{status:#}\n{}",
                    flood.logs()
                ),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let count = LEGIT_CONNECTIONS.to_string();
    let mut legit = ok(
        lab.spawn(
            Ns::Client,
            "tls-handshakes",
            &[
                bench,
                "tls-handshakes",
                "--connect",
                "server.lab:443",
                "--cafile",
                t.dca(),
                "--count",
                &count,
                "--timeout-secs",
                "10",
            ],
        ),
        "start the legitimate client",
    );
    // Sample loupe while both run: the table never exceeds its bounds.
    let mut most_active = 0;
    let mut most_server_connections = 0;
    while legit.try_status().ok().flatten().is_none() {
        if flood_started.elapsed() > Duration::from_secs(14) {
            t.fail(None, "the 1,000 connections did not finish while the flood ran");
        }
        let status = ok(t.mid.loupectl_json(&["counters"]), "loupectl counters during the flood");
        most_active = most_active.max(worker_sum(&status, "flows_active"));
        most_server_connections = most_server_connections.max(server_connections(&lab));
        std::thread::sleep(Duration::from_millis(250));
    }
    let legit_done = flood_started.elapsed();
    // Still under the flood, so answered by loupe first: a port nothing listens on shows
    // as a reset right after the handshake (not a refused connection), and is logged.
    let closed = t.curl(&["--cacert", t.dca(), "-o", "/dev/null", "https://s2.lab/"]);
    let closed_at = flood_started.elapsed();
    assert!(!closed.status.success(), "a fetch from a closed port succeeded");
    assert!(
        closed.elapsed < Duration::from_secs(5),
        "a closed port took {:?} to fail under the flood",
        closed.elapsed
    );
    eprintln!(
        "closed port, under the flood: {:?} {}",
        closed.elapsed,
        closed.stderr.trim()
    );
    let refused = t.wait_record("the fetch from a closed port", |r| r["server_ip"] == "198.18.0.3");
    t.expect_eq(
        &refused,
        "/end_reason",
        Value::from("upstream refused or unreachable"),
        "the record of a connection to a closed port during the flood",
    );
    let report: Value = serde_json::from_str(legit.stdout().trim()).unwrap_or(Value::Null);
    let status = ok(
        t.mid.loupectl_json(&["counters"]),
        "loupectl counters after the connections",
    );
    ok(flood.wait_timeout(Duration::from_secs(45)), "the flood ends");
    let flood_report: Value = serde_json::from_str(flood.stdout().trim()).unwrap_or(Value::Null);
    eprintln!(
        "flood: {flood_report}\nlegitimate client: {report}\nloupe workers: {:#}",
        status["workers"]
    );
    eprintln!("most flows active {most_active}, most server connections {most_server_connections}");

    let achieved = flood_report["rate_achieved"].as_f64().unwrap_or(0.0);
    assert!(
        achieved >= 50_000.0,
        "the flood sent only {achieved:.0} SYN/s: {flood_report}"
    );
    assert!(
        closed_at < Duration::from_secs(14),
        "the legitimate connections ({legit_done:?}) outlasted the flood"
    );
    let completed = report["completed"].as_u64().unwrap_or(0);
    assert!(
        completed * 100 >= LEGIT_CONNECTIONS * 99,
        "only {completed} of {LEGIT_CONNECTIONS} connections succeeded under {achieved:.0} SYN/s: {report}"
    );
    assert!(
        most_active <= MAX_FLOWS,
        "{most_active} flows active, max_flows is {MAX_FLOWS}"
    );
    let evicted = worker_sum(&status, "half_open_evicted");
    assert!(evicted > 10_000, "only {evicted} half-open flows evicted: {status:#}");
    // The flood's SYNs were answered by loupe itself: the server never held them.
    assert!(
        most_server_connections < 100,
        "the server held {most_server_connections} connections during the flood: loupe passed the flood on"
    );

    // The flood's flows are counted, not logged: only the legitimate sessions are.
    let logged = t.records().len() - records_before;
    assert!(
        logged as u64 <= LEGIT_CONNECTIONS + 12,
        "{logged} records for {LEGIT_CONNECTIONS} connections: the flood was logged flow by flow"
    );

    // After the flood the half-open flows go (handshake timeout), still without records,
    // and loupe serves as before.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = ok(t.mid.loupectl_json(&["counters"]), "loupectl counters after the flood");
        if worker_sum(&status, "half_open") == 0 && worker_sum(&status, "flows_active") == 0 {
            assert!(worker_sum(&status, "handshake_timeouts") > 0, "{status:#}");
            break;
        }
        if Instant::now() > deadline {
            t.fail(None, &format!("half-open flows left 15 s after the flood:\n{status:#}"));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let logged = t.records().len() - records_before;
    assert!(
        logged as u64 <= LEGIT_CONNECTIONS + 12,
        "{logged} records after the flood's half-open flows timed out"
    );
    let after = t.curl(&["--cacert", t.dca(), "-o", "/dev/null", "https://server.lab/"]);
    assert!(
        after.status.success(),
        "a fetch after the flood failed: {}",
        after.stderr
    );
    ok(t.mid.check_alive(), "loupe alive at the end");
}
