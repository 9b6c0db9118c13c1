//! Split TLS through loupe against real peers: curl, `openssl s_client`/`s_server` and
//! nginx in the lab's namespaces, with a test PKI generated per run (`loupe_bench::pki`).
//! Every test reads what loupe wrote to `decryption.jsonl` for the very connection it made
//! (matched by the client's TCP port, which curl reports), and every failure message
//! carries that record and loupe's own output. Needs root; fails without it.
//!
//! Server addresses (the lab's hosts file names them for the client):
//! 198.18.0.2 `server.lab`/`s1.lab`: nginx with a good certificate from the lab origin CA;
//! 198.18.0.3–9 `s2.lab`…`s8.lab`: one broken server each (see `failing_servers_…`).

mod common;

use common::*;
/// The client trusts only the decryption CA and gets the page over TLS 1.3 and TLS 1.2;
/// the certificate it sees is loupe's forgery of the origin's; trusting only the origin CA
/// it refuses that forgery.
#[test]
fn decrypts_tls13_and_tls12_with_a_forged_certificate() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let (mut t, _nginx) = setup(&lab);

    for (flags, version) in [
        (&["--tlsv1.3"][..], "TLSv1.3"),
        (&["--tlsv1.2", "--tls-max", "1.2"][..], "TLSv1.2"),
    ] {
        let mut args = vec!["--cacert", t.dca()];
        args.extend_from_slice(flags);
        args.push("https://server.lab/");
        let c = t.curl(&args);
        let what = format!("curl {version} trusting the decryption CA");
        if c.code() != Some(0) || c.stdout != INDEX {
            let rec = (c.port != 0).then(|| t.record(c.port, &what));
            t.fail(rec.as_ref(), &format!("{what}: {}; body {:?}", c.show(), c.stdout));
        }
        let rec = t.record(c.port, &what);
        t.expect_decrypted(&rec, version, &what);
    }

    // What the client is shown: a certificate issued by the decryption CA, signed by its
    // key, carrying the origin's subject and SANs (DNS and IP), not the origin's own.
    let out = ok(
        lab.exec_output(
            Ns::Client,
            &[
                "openssl",
                "s_client",
                "-connect",
                "server.lab:443",
                "-servername",
                "server.lab",
                "-showcerts",
                "-CAfile",
                t.dca(),
                "-verify_return_error",
            ],
        ),
        "openssl s_client -showcerts",
    );
    let chain = X509::stack_from_pem(out.stdout.as_bytes()).unwrap_or_default();
    let Some(leaf) = chain.first() else {
        t.fail(
            None,
            &format!("s_client showed no certificate: {}\n{}", out.stdout, out.stderr),
        );
    };
    let dca = X509::from_pem(&std::fs::read(&t.decryption_ca).expect("read CA")).expect("decryption CA PEM");
    assert!(
        out.status.success() && out.stdout.contains("Verify return code: 0 (ok)"),
        "s_client did not verify loupe's certificate against the decryption CA:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(
        leaf.issuer_name().to_der().expect("issuer DER"),
        dca.subject_name().to_der().expect("subject DER"),
        "the leaf the client sees is not issued by the decryption CA (issuer CN {:?})",
        leaf.issuer_name()
            .entries_by_nid(boring::nid::Nid::COMMONNAME)
            .next()
            .map(|e| e.data().as_utf8().map(|s| s.to_string()))
    );
    assert!(
        leaf.verify(&dca.public_key().expect("CA key")).unwrap_or(false),
        "the leaf is not signed by the decryption CA's key"
    );
    assert_ne!(
        leaf.digest(boring::hash::MessageDigest::sha256())
            .expect("digest")
            .to_vec(),
        t.pki
            .good
            .cert
            .digest(boring::hash::MessageDigest::sha256())
            .expect("digest")
            .to_vec(),
        "the client was shown the origin's own certificate, not a forgery"
    );
    assert_eq!(
        common_name(leaf),
        "server.lab",
        "the forgery does not mirror the origin's subject"
    );
    let (dns, ips) = sans(leaf);
    assert_eq!(
        dns,
        BTreeSet::from(["s1.lab".to_string(), "server.lab".to_string()]),
        "DNS SANs of the forgery"
    );
    assert_eq!(
        ips,
        BTreeSet::from(["198.18.0.2".to_string()]),
        "IP SANs of the forgery"
    );

    // Trusting only the origin CA, curl refuses the forgery: exit 60, promptly.
    let c = t.curl(&["--cacert", t.origin_ca(), "https://server.lab/"]);
    if c.code() != Some(60) || c.elapsed > FAIL_FAST {
        let rec = (c.port != 0).then(|| t.record(c.port, "origin-CA-only curl"));
        t.fail(
            rec.as_ref(),
            &format!(
                "curl trusting only the origin CA: expected exit 60 within {FAIL_FAST:?}; {}",
                c.show()
            ),
        );
    }
    ok(t.mid.check_alive(), "loupe alive at the end");
}

/// DNS and IP subject alternative names of a certificate.
fn sans(cert: &X509) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut dns = BTreeSet::new();
    let mut ips = BTreeSet::new();
    for g in cert.subject_alt_names().into_iter().flatten() {
        if let Some(d) = g.dnsname() {
            dns.insert(d.to_string());
        }
        if let Some(ip) = g.ipaddress() {
            if let Ok(b) = <[u8; 4]>::try_from(ip) {
                ips.insert(std::net::Ipv4Addr::from(b).to_string());
            }
        }
    }
    (dns, ips)
}

/// 256 MiB down and 64 MiB up through the decrypting path, each checked by SHA-256 of
/// every byte: what curl received against the file nginx served, and the file nginx
/// stored against what curl sent.
#[test]
fn bulk_download_and_upload_arrive_intact() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let (mut t, _nginx) = setup(&lab);
    let down_size = 256usize << 20;
    let up_size = 64usize << 20;
    let down_sha = random_file(&t.www.join("big.bin"), down_size);
    let up_file = lab.dir().join("upload.bin");
    let up_sha = random_file(&up_file, up_size);

    // Download: curl's output goes straight into sha256sum, nothing touches the disk.
    let script = format!(
        "set -o pipefail; curl -sS --max-time 150 --cacert {} \
         -w '%{{stderr}}loupe-test %{{local_port}} %{{size_download}} %{{speed_download}}\\n' \
         https://server.lab/big.bin | sha256sum",
        t.dca()
    );
    let start = Instant::now();
    let mut p = ok(
        lab.spawn(Ns::Client, "curl-download", &["bash", "-c", &script]),
        "start download",
    );
    let status = p.wait_timeout(Duration::from_secs(170));
    let elapsed = start.elapsed();
    let line = p
        .stderr()
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("loupe-test ").map(str::to_string));
    let port: u16 = line
        .as_deref()
        .and_then(|l| l.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let got_sha = p.stdout().split_whitespace().next().unwrap_or("").to_string();
    match status {
        Ok(st) if st.success() && got_sha == down_sha => {}
        other => {
            let rec = (port != 0).then(|| t.record(port, "download"));
            t.fail(
                rec.as_ref(),
                &format!(
                    "256 MiB download: {other:?}, sha256 {got_sha} (want {down_sha}), curl says {line:?}\n{}",
                    p.logs()
                ),
            );
        }
    }
    eprintln!(
        "download: 256 MiB in {:.1}s ({:.0} MB/s)",
        elapsed.as_secs_f64(),
        down_size as f64 / elapsed.as_secs_f64() / 1e6
    );
    let rec = t.record(port, "download");
    t.expect_decrypted(&rec, "TLSv1.3", "download");
    let moved = rec["bytes_server_to_client"].as_u64().unwrap_or(0);
    if moved < down_size as u64 {
        t.fail(
            Some(&rec),
            &format!("bytes_server_to_client {moved} < the {down_size} bytes delivered"),
        );
    }

    // Upload: nginx (WebDAV PUT) stores the body as www/upload/up.bin.
    let c = t.curl(&[
        "--cacert",
        t.dca(),
        "--max-time",
        "120",
        "--fail",
        "-o",
        "/dev/null",
        "-T",
        up_file.to_str().expect("path"),
        "https://server.lab/upload/up.bin",
    ]);
    let stored = t.www.join("upload").join("up.bin");
    if c.code() != Some(0) || !stored.is_file() {
        let rec = (c.port != 0).then(|| t.record(c.port, "upload"));
        t.fail(
            rec.as_ref(),
            &format!("64 MiB upload: {}; stored file present: {}", c.show(), stored.is_file()),
        );
    }
    let stored_sha = sha256_file(&stored);
    let rec = t.record(c.port, "upload");
    if stored_sha != up_sha {
        t.fail(
            Some(&rec),
            &format!("upload arrived with sha256 {stored_sha}, sent {up_sha}"),
        );
    }
    t.expect_decrypted(&rec, "TLSv1.3", "upload");
    let moved = rec["bytes_client_to_server"].as_u64().unwrap_or(0);
    if moved < up_size as u64 {
        t.fail(
            Some(&rec),
            &format!("bytes_client_to_server {moved} < the {up_size} bytes uploaded"),
        );
    }
    ok(t.mid.check_alive(), "loupe alive at the end");
}

/// ALPN passes through: curl asking for HTTP/2 speaks HTTP/2 to loupe (which offers what
/// nginx selected), and HTTP/1.1 stays HTTP/1.1.
#[test]
fn alpn_h2_and_http11_pass_through() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let (mut t, _nginx) = setup(&lab);
    for (flag, http_version, alpn) in [("--http2", "2", "h2"), ("--http1.1", "1.1", "http/1.1")] {
        let what = format!("curl {flag}");
        let c = t.curl(&["--cacert", t.dca(), flag, "https://server.lab/"]);
        if c.code() != Some(0) || c.stdout != INDEX || c.http_version != http_version {
            let rec = (c.port != 0).then(|| t.record(c.port, &what));
            t.fail(
                rec.as_ref(),
                &format!(
                    "{what}: expected HTTP/{http_version} and the page, got HTTP/{} {:?}; {}",
                    c.http_version,
                    c.stdout,
                    c.show()
                ),
            );
        }
        let rec = t.record(c.port, &what);
        t.expect_decrypted(&rec, "TLSv1.3", &what);
        t.expect_eq(&rec, "/client_leg/alpn", alpn.into(), &what);
        t.expect_eq(&rec, "/server_leg/alpn", alpn.into(), &what);
    }
    ok(t.mid.check_alive(), "loupe alive at the end");
}

/// One broken server and what the record must say about it.
struct Broken<'a> {
    name: &'a str,
    ip: &'a str,
    /// `blocked` when loupe refused the server by policy: an untrusted chain with
    /// untrusted=block, or a server the profile cannot talk to with unsupported_*=block.
    outcome: &'a str,
    stage: &'a str,
    /// Expected `verify.code` and `verify.depth` (None: the handshake fails before verification).
    verify: Option<(i64, i64)>,
    /// Expected alert from the server (code).
    server_alert: Option<(u64, &'a str)>,
    /// The alert curl reports (OpenSSL's words): access_denied when loupe blocks, the
    /// server's own alert passed on when the server refused the handshake.
    client_alert: &'a str,
    /// Words the `error` line must contain.
    error: &'a [&'a str],
    /// Words the diagnosis or remedy must contain.
    explains: &'a [&'a str],
}

/// Each broken server: the client gets a TLS alert at once (curl exit 35, not a hang),
/// and the record names the stage, the OpenSSL code or the alert, in the words operators
/// search for.
#[test]
fn failing_servers_get_an_alert_and_a_precise_record() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let (mut t, _nginx) = setup(&lab);
    let p = &t.pki;
    let s = |ip: &str, leaf: &Issued, extra: &[&str]| {
        ok(
            lab.spawn_s_server(Ns::Server, addr(ip), &leaf.cert_file, &leaf.key_file, extra),
            &format!("openssl s_server on {ip}"),
        )
    };
    let _servers = [
        s("198.18.0.3", &p.self_signed, &[]),
        s("198.18.0.4", &p.unknown_root, &[]),
        s("198.18.0.5", &p.expired, &[]),
        s("198.18.0.6", &p.other_name, &[]),
        // Only the leaf: s_server sends no chain unless told to.
        s("198.18.0.7", &p.behind_intermediate, &[]),
        s(
            "198.18.0.8",
            &p.sha1_rsa,
            &["-cipher", "ECDHE-RSA-AES128-SHA", "-no_tls1_3"],
        ),
        s("198.18.0.9", &p.tls10_rsa, &["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"]),
    ];

    let cases = [
        Broken {
            name: "s2.lab",
            ip: "198.18.0.3",
            outcome: "blocked",
            client_alert: "alert access denied",
            stage: "upstream_verify",
            verify: Some((18, 0)),
            server_alert: None,
            error: &["certificate verify failed: self signed certificate (code 18, depth 0)"],
            explains: &["self-signed"],
        },
        Broken {
            name: "s3.lab",
            ip: "198.18.0.4",
            outcome: "blocked",
            client_alert: "alert access denied",
            stage: "upstream_verify",
            verify: Some((20, 0)),
            server_alert: None,
            error: &["certificate verify failed: unable to get local issuer certificate (code 20, depth 0)"],
            explains: &["root nobody trusts"],
        },
        Broken {
            name: "s4.lab",
            ip: "198.18.0.5",
            outcome: "blocked",
            client_alert: "alert access denied",
            stage: "upstream_verify",
            verify: Some((10, 0)),
            server_alert: None,
            error: &["certificate verify failed: certificate has expired (code 10, depth 0)"],
            explains: &["expired"],
        },
        Broken {
            name: "s5.lab",
            ip: "198.18.0.6",
            outcome: "blocked",
            client_alert: "alert access denied",
            stage: "upstream_verify",
            verify: Some((62, 0)),
            server_alert: None,
            error: &["certificate verify failed: Hostname mismatch (code 62, depth 0)"],
            explains: &["other.lab", "'s5.lab'"],
        },
        Broken {
            name: "s6.lab",
            ip: "198.18.0.7",
            outcome: "blocked",
            client_alert: "alert access denied",
            stage: "upstream_verify",
            verify: Some((20, 0)),
            server_alert: None,
            error: &["certificate verify failed: unable to get local issuer certificate (code 20, depth 0)"],
            explains: &["intermediate", "loupe lab intermediate CA"],
        },
        Broken {
            name: "s7.lab",
            ip: "198.18.0.8",
            outcome: "blocked",
            stage: "upstream_handshake",
            verify: None,
            server_alert: Some((40, "handshake_failure")),
            client_alert: "alert handshake failure",
            error: &["alert received from server: fatal handshake_failure (40)"],
            // loupe probes the server with a wide ClientHello: the diagnosis names what it
            // offered, what the server chose, and the switch that fixes it.
            explains: &[
                "handshake_failure (40)",
                "loupe offered TLS 1.2 to TLS 1.3",
                "the server chose TLS 1.2 with ECDHE-RSA-AES128-SHA",
                "allow_sha1=true ciphers+=ECDHE-RSA-AES128-SHA",
            ],
        },
        Broken {
            name: "s8.lab",
            ip: "198.18.0.9",
            outcome: "blocked",
            stage: "upstream_handshake",
            verify: None,
            server_alert: Some((70, "protocol_version")),
            client_alert: "alert protocol version",
            error: &["alert received from server: fatal protocol_version (70)"],
            explains: &["protocol_version (70)", "the server chose TLS 1.0", "min=1.0"],
        },
    ];

    let mut failures = Vec::new();
    for case in &cases {
        if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check_broken(&t, case))) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("===== {} ({}):\n{msg}", case.name, case.ip));
        }
    }
    ok(t.mid.check_alive(), "loupe alive at the end");
    assert!(
        failures.is_empty(),
        "{} of {} broken-server cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn check_broken(t: &Tls, case: &Broken) {
    let url = format!("https://{}/", case.name);
    let c = t.curl(&["--cacert", t.dca(), &url]);
    let what = format!("{} ({})", case.name, case.ip);
    let rec = (c.port != 0).then(|| t.record(c.port, &what));
    // A TLS alert ends curl with exit 35 (SSL connect error); a hang would be 28 after 20 s.
    if c.code() != Some(35) || c.elapsed > FAIL_FAST || !c.stderr.contains(case.client_alert) {
        t.fail(
            rec.as_ref(),
            &format!(
                "{what}: expected curl exit 35 with {:?} within {FAIL_FAST:?}; {}",
                case.client_alert,
                c.show()
            ),
        );
    }
    let rec = rec.expect("a record");
    eprintln!(
        "{what}: {} in {:?}: {}",
        c.status,
        c.elapsed,
        c.stderr.lines().next().unwrap_or("").trim()
    );
    t.expect_eq(&rec, "/server_ip", case.ip.into(), &what);
    t.expect_eq(&rec, "/sni", case.name.into(), &what);
    t.expect_eq(&rec, "/action", "decrypt".into(), &what);
    t.expect_eq(&rec, "/outcome", case.outcome.into(), &what);
    t.expect_eq(&rec, "/stage", case.stage.into(), &what);
    match case.verify {
        Some((code, depth)) => {
            t.expect_eq(&rec, "/verify/code", code.into(), &what);
            t.expect_eq(&rec, "/verify/depth", depth.into(), &what);
            t.expect_eq(&rec, "/verify/trusted", false.into(), &what);
            t.expect_eq(&rec, "/verify/checked_name", case.name.into(), &what);
            if rec["server_cert"]["sha256"].as_str().is_none_or(|s| s.len() != 64) {
                t.fail(Some(&rec), &format!("{what}: server_cert.sha256 missing"));
            }
        }
        None => t.expect_eq(&rec, "/client_leg/version", Value::Null, &what),
    }
    if let Some((code, name)) = case.server_alert {
        let alerts = rec["alerts"].as_array().cloned().unwrap_or_default();
        let found = alerts.iter().any(|a| {
            a["sender"] == "server" && a["code"].as_u64() == Some(code) && a["name"] == name && a["fatal"] == true
        });
        if !found {
            t.fail(
                Some(&rec),
                &format!("{what}: no fatal {name} ({code}) alert from the server in alerts"),
            );
        }
    }
    t.expect_contains(&rec, "/error", case.error, &what);
    let explained = format!(
        "{} {}",
        rec["diagnosis"].as_str().unwrap_or(""),
        rec["remedy"].as_str().unwrap_or("")
    );
    for w in case.explains {
        if !explained.contains(w) {
            t.fail(Some(&rec), &format!("{what}: diagnosis/remedy does not mention {w:?}"));
        }
    }
}

/// A client that does not trust the decryption CA refuses loupe's certificate with a
/// fatal unknown_ca alert, and the record says so: stage client_handshake, the client's
/// alert, over TLS 1.3 and TLS 1.2.
#[test]
fn client_distrusting_the_decryption_ca_is_logged_with_its_alert() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let (mut t, _nginx) = setup(&lab);
    for (flags, version) in [
        (&["--tlsv1.3"][..], "TLSv1.3"),
        (&["--tlsv1.2", "--tls-max", "1.2"][..], "TLSv1.2"),
    ] {
        let what = format!("curl {version} trusting only the origin CA");
        let mut args = vec!["--cacert", t.origin_ca()];
        args.extend_from_slice(flags);
        args.push("https://server.lab/");
        let c = t.curl(&args);
        let rec = (c.port != 0).then(|| t.record(c.port, &what));
        if c.code() != Some(60) || c.elapsed > FAIL_FAST {
            t.fail(
                rec.as_ref(),
                &format!(
                    "{what}: expected exit 60 (certificate not trusted) within {FAIL_FAST:?}; {}",
                    c.show()
                ),
            );
        }
        let rec = rec.expect("a record");
        t.expect_eq(&rec, "/action", "decrypt".into(), &what);
        t.expect_eq(&rec, "/outcome", "aborted".into(), &what);
        t.expect_eq(&rec, "/stage", "client_handshake".into(), &what);
        // The server side was fine: its certificate verified.
        t.expect_eq(&rec, "/verify/code", 0.into(), &what);
        let alerts = rec["alerts"].as_array().cloned().unwrap_or_default();
        let from_client: Vec<&Value> = alerts.iter().filter(|a| a["sender"] == "client").collect();
        let unknown_ca = from_client
            .iter()
            .any(|a| a["code"] == 48 && a["name"] == "unknown_ca" && a["fatal"] == true);
        if !unknown_ca {
            t.fail(
                Some(&rec),
                &format!("{what}: no fatal unknown_ca (48) alert from the client"),
            );
        }
        t.expect_contains(
            &rec,
            "/error",
            &["alert received from client: fatal unknown_ca (48)"],
            &what,
        );
        // client_leg holds what the client handshake negotiated: null when it did not
        // finish; if loupe fills it in, it must be the version the client spoke.
        let leg = rec["client_leg"]["version"].as_str().unwrap_or("");
        if !leg.is_empty() && leg != version {
            t.fail(
                Some(&rec),
                &format!("{what}: client_leg.version {leg:?}, the client spoke {version}"),
            );
        }
    }
    ok(t.mid.check_alive(), "loupe alive at the end");
}

/// `loupe-bench tls-handshakes` from the client to server.lab: `count` sequential full
/// handshakes trusting only the decryption CA; its JSON report. Fails unless all completed.
fn handshakes(t: &Tls, count: u64) -> Value {
    let bench = ok(binary("loupe-bench"), "loupe-bench binary");
    let count_arg = count.to_string();
    let argv = [
        bench.to_str().expect("path"),
        "tls-handshakes",
        "--connect",
        "server.lab:443",
        "--cafile",
        t.dca(),
        "--count",
        &count_arg,
    ];
    let start = Instant::now();
    let mut p = ok(t.lab.spawn(Ns::Client, "tls-handshakes", &argv), "start tls-handshakes");
    let status = p.wait_timeout(Duration::from_secs(150));
    let elapsed = start.elapsed();
    let report: Value = serde_json::from_str(p.stdout().trim()).unwrap_or(Value::Null);
    if !matches!(status, Ok(st) if st.success()) || report["completed"] != count {
        t.fail(
            None,
            &format!("{count} handshakes: {status:?}, report {report}\n{}", p.logs()),
        );
    }
    eprintln!(
        "{count} sequential handshakes in {:.1}s ({:.2} ms each)",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / count as f64
    );
    report
}

/// 2,000 sequential full handshakes (new TCP connection, no resumption) to one origin:
/// loupe signs one forged certificate and serves the other 1,999 from its cache.
#[test]
fn two_thousand_handshakes_sign_one_forged_certificate() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let (mut t, _nginx) = setup(&lab);
    let count = 2000;
    let report = handshakes(&t, count);
    assert_eq!(report["resumed"], 0, "some handshakes were resumptions: {report}");
    let leaves = report["leaf_sha256"].as_object().cloned().unwrap_or_default();
    assert_eq!(
        leaves.len(),
        1,
        "the client saw {} different certificates: {report}",
        leaves.len()
    );

    // Counters: written every second; wait until they cover every session.
    let path = t.mid.state_dir().expect("state dir").join("counters.json");
    let deadline = Instant::now() + Duration::from_secs(10);
    let counters = loop {
        let c: Value = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null);
        if c["sessions_decrypted"].as_u64().unwrap_or(0) >= count || Instant::now() >= deadline {
            break c;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let n = |k: &str| counters[k].as_u64();
    let problem = if n("forged_signed") != Some(1) {
        Some("forged_signed is not 1")
    } else if n("forged_cache_hits") < Some(count - 1) {
        Some("forged_cache_hits < 1999")
    } else if n("sessions_decrypted") < Some(count) {
        Some("sessions_decrypted < 2000")
    } else {
        None
    };
    if let Some(p) = problem {
        t.fail(
            None,
            &format!("after {count} handshakes: {p}; counters.json: {counters}"),
        );
    }
    // One record per session, all decrypted. Records reach the file within about 10 ms
    // of the counters (the worker batches them).
    let deadline = Instant::now() + Duration::from_secs(10);
    let records: Vec<Value> = loop {
        let records: Vec<Value> = t
            .records()
            .into_iter()
            .filter(|r| r["server_ip"] == "198.18.0.2")
            .collect();
        if records.len() >= count as usize || Instant::now() >= deadline {
            break records;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let decrypted = records.iter().filter(|r| r["outcome"] == "decrypted").count();
    if records.len() != count as usize || decrypted != count as usize {
        let odd = records.iter().find(|r| r["outcome"] != "decrypted");
        t.fail(
            odd,
            &format!("{} records for {count} sessions, {decrypted} decrypted", records.len()),
        );
    }
    ok(t.mid.check_alive(), "loupe alive at the end");
}

/// Sessions that end right after the handshake (the client sends close_notify and FIN at
/// once, while the server is still sending its session tickets) must still close both TCP
/// legs: the origin must not be left with sockets waiting for an ACK of its FIN
/// (LAST-ACK) or holding unacknowledged data.
#[test]
fn sessions_closed_after_the_handshake_leave_no_server_socket_behind() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let (mut t, _nginx) = setup(&lab);
    let count = 300;
    handshakes(&t, count);
    // A clean close takes a round trip (microseconds here); allow a few seconds.
    let deadline = Instant::now() + Duration::from_secs(3);
    let lingering = loop {
        // Every server-side socket of a finished connection except TIME-WAIT (harmless,
        // and the server is the passive closer anyway).
        let out = ok(
            lab.exec(
                Ns::Server,
                &["ss", "-Htan", "state", "connected", "exclude", "time-wait"],
            ),
            "ss in the server namespace",
        );
        let lines: Vec<String> = out
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect();
        if lines.is_empty() || Instant::now() >= deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if !lingering.is_empty() {
        let counters =
            std::fs::read_to_string(t.mid.state_dir().expect("state dir").join("counters.json")).unwrap_or_default();
        let shown: Vec<&str> = lingering.iter().map(String::as_str).take(10).collect();
        t.fail(
            None,
            &format!(
                "{} of {count} server-side connections still open 3 s after their sessions ended \
                 (their FIN or data never acknowledged by loupe); first ones:\n{}\ncounters.json: {counters}",
                lingering.len(),
                shown.join("\n")
            ),
        );
    }
    ok(t.mid.check_alive(), "loupe alive at the end");
}

/// With `untrusted = "forward-untrust"`, a self-signed server is decrypted but the client
/// is shown a certificate from loupe's untrusted CA: verification fails as it would have
/// against the real server, and a client that skips verification gets the page.
#[test]
fn forward_untrust_shows_the_client_the_warning_the_server_deserves() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let profile = "[[profile]]\nname = \"default\"\nuntrusted = \"forward-untrust\"\n";
    let (t, _nginx) = setup_with(&lab, Some(profile));
    let p = &t.pki;
    let _server = ok(
        lab.spawn_s_server(
            Ns::Server,
            addr("198.18.0.3"),
            &p.self_signed.cert_file,
            &p.self_signed.key_file,
            &[],
        ),
        "openssl s_server on s2.lab",
    );

    let verified = t.curl(&["--cacert", t.dca(), "https://s2.lab/"]);
    if verified.code() != Some(60) {
        t.fail(
            None,
            &format!(
                "curl trusting the decryption CA must fail verification (60):\n{}",
                verified.show()
            ),
        );
    }
    let unverified = t.curl(&["-k", "https://s2.lab/"]);
    if unverified.code() != Some(0) || !unverified.stdout.contains("s_server") {
        t.fail(None, &format!("curl -k must get the page:\n{}", unverified.show()));
    }

    // The certificate the client saw: issued by the untrusted CA, with the server's name.
    let shown = ok(
        lab.exec_output(
            Ns::Client,
            &[
                "openssl",
                "s_client",
                "-connect",
                "198.18.0.3:443",
                "-servername",
                "s2.lab",
                "-showcerts",
            ],
        ),
        "openssl s_client",
    );
    let issuer_line = shown
        .stdout
        .lines()
        .find(|l| l.contains("i:"))
        .unwrap_or("")
        .to_string();
    if !issuer_line.contains("loupe UNTRUSTED") {
        t.fail(
            None,
            &format!("the presented leaf is not from the untrusted CA: {issuer_line:?}"),
        );
    }

    let rec = t.record(unverified.port, "curl -k through forward-untrust");
    t.expect_eq(&rec, "/outcome", Value::from("decrypted"), "forward-untrust");
    t.expect_eq(&rec, "/verify/code", Value::from(18), "forward-untrust");
    t.expect_eq(&rec, "/verify/trusted", Value::from(false), "forward-untrust");
}

/// The operator's own CA, named in `[ca]` as PEM files, signs the forgeries: a client that
/// trusts only that CA gets the page.
#[test]
fn an_operator_ca_from_pem_files_signs_the_forgeries() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let operator = ok(Pki::new(lab.dir().join("operator")), "operator PKI");
    let ca = ok(operator.root_ca("operator-ca", "operator decryption CA"), "operator CA");
    let config = format!(
        "[ca]\ncert = {:?}\nkey = {:?}\n",
        ca.cert_file.display().to_string(),
        ca.key_file.display().to_string()
    );
    let (t, _nginx) = setup_with(&lab, Some(&config));
    let shown = X509::from_pem(&std::fs::read(&t.decryption_ca).expect("shown CA")).expect("PEM");
    assert_eq!(
        shown.to_der().unwrap(),
        ca.cert.to_der().unwrap(),
        "'loupe ca show --config' shows another CA"
    );
    let operator_ca = ca.cert_file.display().to_string();
    let got = t.curl(&["--cacert", &operator_ca, "https://server.lab/"]);
    if got.code() != Some(0) || got.stdout != INDEX {
        t.fail(
            None,
            &format!(
                "a client trusting only the operator's CA must get the page:\n{}",
                got.show()
            ),
        );
    }
    let rec = t.record(got.port, "curl trusting the operator CA");
    t.expect_decrypted(&rec, "TLSv1.3", "operator CA");
}
