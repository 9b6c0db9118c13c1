//! Peers that misbehave (issue #15), through loupe decrypting, in one lab. Needs root.
//!
//! - A server that resets right after loupe's upstream ClientHello, and one that resets
//!   in the middle of a response: the client is reset promptly and the record says
//!   `server reset` at the stage it happened.
//! - A server that stops reading for a minute while the client uploads: loupe's memory
//!   stays bounded and the client's window closes (its acknowledged bytes stop growing).
//! - A client that sends its ClientHello one byte every 5 s (slowloris): ended by the
//!   handshake timeout and logged.
//! - Half-close both ways: a client that sends close_notify and FIN after its upload and
//!   then reads the reply, and a server that does so after its response and then reads
//!   the client's upload; both directions arrive intact.
//!
//! Servers (`bench/tests/misbehaving_peer.py`; the lab's hosts file names them for the
//! client): 198.18.0.2 `server.lab` nginx; 198.18.0.3 `s2.lab` resets after the hello;
//! 198.18.0.4 `s3.lab` resets mid-response; 198.18.0.5 `s4.lab` stops reading;
//! 198.18.0.6 `s5.lab` half-closes (`bench/tests/tls_peer.py half-close-server`).

mod common;

use common::*;
use loupe_bench::costs::parse_status_rss;
use loupe_bench::lab::tls_peer_command;

/// The handshake timeout the slow client runs into.
const HANDSHAKE_TIMEOUT_S: u64 = 10;
/// What the half-closing client sends (the server sends half as much).
const HALF_CLOSE_BYTES: u64 = 4 << 20;
/// How long the server that stops reading holds the upload.
const STALL: Duration = Duration::from_secs(60);
/// What loupe may grow by while one upload is held: its buffers for one session are a
/// few hundred KiB, so anything near this means bytes are being queued without bound.
const STALL_RSS_GROWTH_MAX: u64 = 16 << 20;

fn peer<'lab>(t: &Tls<'lab>, ns: Ns, name: &str, args: &[&str]) -> NsProcess<'lab> {
    let [python, script] = ok(tls_peer_command(), "the TLS peer venv");
    let mut argv = vec![
        python.display().to_string(),
        script.with_file_name("misbehaving_peer.py").display().to_string(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    ok(t.lab.spawn(ns, name, &argv), name)
}

fn loupe_rss(t: &Tls) -> u64 {
    let pid = t.mid.pid().unwrap_or_else(|| t.fail(None, "loupe has no pid"));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("loupe's /proc status");
    ok(parse_status_rss(&status), "loupe's VmRSS")
}

/// `bytes_acked` of the client's connection to `server` (`ss -tin` in the client
/// namespace): what loupe has taken from the client so far.
fn client_bytes_acked(t: &Tls, server: &str) -> u64 {
    let out = ok(
        t.lab.exec(Ns::Client, &["ss", "-tinH", "dst", server]),
        "ss in the client namespace",
    );
    out.split_whitespace()
        .find_map(|w| w.strip_prefix("bytes_acked:"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| t.fail(None, &format!("no bytes_acked for the connection to {server}: {out:?}")))
}

/// The record of a session the server reset: its outcome, and the stage and error that
/// say where the reset came.
fn expect_server_reset(t: &Tls, rec: &Value, outcome: &str, stage: &str, error: &str, what: &str) {
    t.expect_eq(rec, "/outcome", outcome.into(), what);
    t.expect_eq(rec, "/end_reason", "server reset".into(), what);
    t.expect_eq(rec, "/stage", stage.into(), what);
    t.expect_contains(rec, "/error", &[error], what);
}

#[test]
fn misbehaving_servers_and_a_slowloris_client_end_promptly_bounded_and_logged() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let config = format!("[timeouts]\nhandshake = \"{HANDSHAKE_TIMEOUT_S}s\"\n");
    let (mut t, _nginx) = setup_with(&lab, Some(&config));
    let pki = ok(Pki::new(lab.dir().join("pki-misbehaving")), "a PKI directory");
    let leaf = |name: &str, host: &str, ip: &str| {
        ok(
            pki.leaf(name, Some(&t.pki.origin_ca), &LeafSpec::new(&[host, ip])),
            "issue a misbehaving server's certificate",
        )
    };
    let mid_reset_leaf = leaf("mid-response-reset", "s3.lab", "198.18.0.4");
    let stalled_leaf = leaf("stops-reading", "s4.lab", "198.18.0.5");
    let path = |p: &Path| p.display().to_string();
    let _after_hello = peer(
        &t,
        Ns::Server,
        "reset-after-hello",
        &["reset-after-hello", "198.18.0.3", "443"],
    );
    let _mid_response = peer(
        &t,
        Ns::Server,
        "reset-mid-response",
        &[
            "reset-mid-response",
            "198.18.0.4",
            "443",
            &path(&mid_reset_leaf.cert_file),
            &path(&mid_reset_leaf.key_file),
        ],
    );
    let mut stalled_server = peer(
        &t,
        Ns::Server,
        "stop-reading",
        &[
            "stop-reading",
            "198.18.0.5",
            "443",
            &path(&stalled_leaf.cert_file),
            &path(&stalled_leaf.key_file),
        ],
    );
    let half_close_leaf = leaf("half-close", "s5.lab", "198.18.0.6");
    let [python, tls_peer] = ok(tls_peer_command(), "the TLS peer venv");
    let (python, tls_peer) = (path(&python), path(&tls_peer));
    let half_close_server = ok(
        lab.spawn(
            Ns::Server,
            "half-close-server",
            &[
                python.as_str(),
                &tls_peer,
                "half-close-server",
                "198.18.0.6",
                "443",
                &path(&half_close_leaf.cert_file),
                &path(&half_close_leaf.key_file),
            ],
        ),
        "start the half-close server",
    );
    for ip in ["198.18.0.3", "198.18.0.4", "198.18.0.5", "198.18.0.6"] {
        ok(
            lab.wait_listening(Ns::Server, addr(ip), Duration::from_secs(10)),
            &format!("the misbehaving server on {ip} listens"),
        );
    }

    // The slow client and the stalled upload run side by side: both take a while.
    let slow_client = peer(
        &t,
        Ns::Client,
        "slow-hello",
        &["slow-hello", "198.18.0.2", "443", "server.lab", "5"],
    );
    let upload = format!(
        "head -c 1073741824 /dev/zero | exec curl -sS --cacert {} --max-time {} -T - https://s4.lab/upload",
        t.dca(),
        STALL.as_secs() + 30
    );
    let rss_before_stall = loupe_rss(&t);
    let mut uploader = ok(
        lab.spawn(Ns::Client, "stalled-upload", &["bash", "-c", &upload]),
        "start the upload",
    );
    let stalled_at = Instant::now();

    // A reset right after loupe's upstream ClientHello.
    let what = "a server that resets after the ClientHello";
    let c = t.curl(&["--cacert", t.dca(), "https://s2.lab/"]);
    if c.code() == Some(0) || c.elapsed > FAIL_FAST {
        t.fail(None, &format!("{what}: curl must fail promptly: {}", c.show()));
    }
    let rec = t.record(c.port, what);
    expect_server_reset(
        &t,
        &rec,
        "aborted",
        "upstream_handshake",
        "the server reset the connection during the TLS handshake with the server",
        what,
    );

    // A reset in the middle of a response body, after 64 KiB of 1 MiB.
    let what = "a server that resets mid-response";
    let body = lab.dir().join("mid-response-body");
    let c = t.curl(&["--cacert", t.dca(), "-o", &path(&body), "https://s3.lab/"]);
    let got = std::fs::metadata(&body).map(|m| m.len()).unwrap_or(0);
    if c.code() == Some(0) || c.elapsed > FAIL_FAST || !c.stderr.contains("reset") || got == 0 || got >= 1 << 20 {
        t.fail(
            None,
            &format!(
                "{what}: curl must be reset promptly with part of the body ({got} bytes): {}",
                c.show()
            ),
        );
    }
    let rec = t.record(c.port, what);
    let relaying = "the server reset the connection during relaying the decrypted stream";
    expect_server_reset(&t, &rec, "decrypted", "established", relaying, what);
    if rec["bytes_server_to_client"].as_u64().unwrap_or(0) < 65536 {
        t.fail(
            Some(&rec),
            &format!("{what}: the record must count the 64 KiB the server sent"),
        );
    }

    // Half-close through decryption, both ways: whichever side sends close_notify and FIN
    // first, the other side's data still flows to its end, intact, and the session ends
    // as closed.
    for (round, order) in ["client-first", "server-first", "client-first", "server-first"]
        .into_iter()
        .enumerate()
    {
        let what = format!("half-close {order} (connection {round})");
        let (to_server, to_client) = (HALF_CLOSE_BYTES.to_string(), (HALF_CLOSE_BYTES / 2).to_string());
        let out = ok(
            lab.exec_output_within(
                Ns::Client,
                &[
                    python.as_str(),
                    &tls_peer,
                    "half-close-client",
                    "198.18.0.6",
                    "443",
                    "s5.lab",
                    t.dca(),
                    order,
                    &to_server,
                    &to_client,
                ],
                Duration::from_secs(60),
            ),
            &what,
        );
        let client: Value = serde_json::from_str(out.stdout.trim()).unwrap_or_else(|_| {
            t.fail(
                None,
                &format!(
                    "{what}: the client printed no result: {out:?}\n{}",
                    half_close_server.logs()
                ),
            )
        });
        let wait_server = Instant::now() + Duration::from_secs(10);
        let server = loop {
            let said = half_close_server.stdout();
            let mine = said
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| {
                    v["peer"]
                        .as_str()
                        .is_some_and(|p| p.ends_with(&format!(":{}", client["local_port"])))
                });
            match mine {
                Some(v) => break v,
                None if Instant::now() < wait_server => std::thread::sleep(Duration::from_millis(50)),
                None => t.fail(
                    None,
                    &format!("{what}: the server logged nothing for {client}:\n{said}"),
                ),
            }
        };
        let intact = client["sent"] == HALF_CLOSE_BYTES
            && client["received"] == HALF_CLOSE_BYTES / 2
            && server["received"] == client["sent"]
            && server["received_sha"] == client["sent_sha"]
            && client["received"] == server["sent"]
            && client["received_sha"] == server["sent_sha"]
            && client["ended_by"] == "close_notify"
            && server["ended_by"] == "close_notify";
        if !intact {
            t.fail(
                None,
                &format!("{what}: both directions must arrive whole and end with close_notify\nclient {client}\nserver {server}"),
            );
        }
        let port = client["local_port"].as_u64().unwrap_or(0) as u16;
        let rec = t.record(port, &what);
        t.expect_eq(&rec, "/outcome", "decrypted".into(), &what);
        t.expect_eq(&rec, "/end_reason", "closed".into(), &what);
    }

    // Slowloris: one byte of ClientHello every 5 s, ended by the handshake timeout.
    let mut slow_client = slow_client;
    let status = ok(
        slow_client.wait_timeout(Duration::from_secs(HANDSHAKE_TIMEOUT_S + 15)),
        "the slow client ends",
    );
    let said = slow_client.stdout();
    let took: f64 = said
        .strip_prefix("ended after ")
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::MAX);
    let timeout = HANDSHAKE_TIMEOUT_S as f64;
    if !status.success() || !said.contains("reset") || !(timeout - 1.0..=timeout + 3.0).contains(&took) {
        t.fail(
            None,
            &format!(
                "the slow client must be reset about {timeout} s after connecting\n{}",
                slow_client.logs()
            ),
        );
    }
    let rec = t.wait_record("the slow client's handshake timeout", |r| {
        r["end_reason"]
            .as_str()
            .is_some_and(|e| e.starts_with("handshake timeout"))
            && r["server_ip"] == "198.18.0.2"
    });
    t.expect_eq(&rec, "/outcome", "aborted".into(), "the slow client");
    t.expect_eq(&rec, "/stage", "client_hello".into(), "the slow client");
    t.expect_contains(&rec, "/error", &["no complete ClientHello"], "the slow client");
    if rec["bytes_client_to_server"].as_u64().unwrap_or(0) == 0 {
        t.fail(
            Some(&rec),
            "the slow client: the record must count the hello bytes it got",
        );
    }

    // The server that stops reading: by now the upload has filled every buffer on the way.
    let wait_stalled = Instant::now() + Duration::from_secs(10);
    while !stalled_server.stdout().contains("stalled") {
        if Instant::now() >= wait_stalled {
            t.fail(
                None,
                &format!(
                    "the upload never reached the server\n{}\n{}",
                    uploader.logs(),
                    stalled_server.logs()
                ),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep((stalled_at + Duration::from_secs(20)).saturating_duration_since(Instant::now()));
    let acked_early = client_bytes_acked(&t, "198.18.0.5");
    let rss_early = loupe_rss(&t);
    std::thread::sleep((stalled_at + STALL).saturating_duration_since(Instant::now()));
    let acked_late = client_bytes_acked(&t, "198.18.0.5");
    let rss_late = loupe_rss(&t);
    if ok(uploader.try_status(), "the upload's status").is_some() {
        t.fail(
            None,
            &format!("the upload ended while the server held it\n{}", uploader.logs()),
        );
    }
    let growth = rss_late.max(rss_early).saturating_sub(rss_before_stall);
    if acked_late != acked_early || acked_late > 64 << 20 || growth > STALL_RSS_GROWTH_MAX {
        t.fail(
            None,
            &format!(
                "a server that stops reading: the client's acknowledged bytes must stop growing \
                 (after 20 s: {acked_early}, after {} s: {acked_late}) and loupe's memory stay bounded \
                 (VmRSS {rss_before_stall} before, {rss_early} and {rss_late} during)",
                STALL.as_secs()
            ),
        );
    }
    eprintln!(
        "stalled upload: the client's window closed at {acked_late} bytes; loupe VmRSS {} -> {} KiB",
        rss_before_stall >> 10,
        rss_late >> 10
    );
    // The server goes away with the upload unread: its kernel resets the connection, and
    // loupe passes the reset on to the client whose bytes it holds.
    stalled_server.stop();
    let status = ok(
        uploader.wait_timeout(FAIL_FAST),
        "the upload ends once the server is gone",
    );
    if status.success() || !uploader.stderr().contains("reset") {
        t.fail(
            None,
            &format!("the held upload must be reset with its server\n{}", uploader.logs()),
        );
    }
    let what = "the stalled upload, its server gone";
    let rec = t.wait_record(what, |r| r["server_ip"] == "198.18.0.5");
    expect_server_reset(&t, &rec, "decrypted", "established", relaying, what);
    ok(t.mid.check_alive(), "loupe is still running");
}
