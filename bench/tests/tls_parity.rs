//! TLS parity through loupe against real peers: post-quantum key exchange on both legs
//! with an origin that really negotiates X25519MLKEM768 (pyOpenSSL on the `cryptography`
//! wheel's OpenSSL, `bench/tests/tls_peer.py`), a client whose only key share is
//! post-quantum in front of a classical nginx, and stapled OCSP responses from
//! `openssl s_server -status_file` (good, revoked, signed by a stranger). Needs root.
//!
//! Servers (the lab's hosts file names them for the client): 198.18.0.2 `server.lab`
//! nginx (Debian's OpenSSL 3.0: no post-quantum groups); 198.18.0.3 `s2.lab` the
//! post-quantum origin; 198.18.0.4–6 `s3.lab`…`s5.lab` s_server stapling a revoked, a good
//! and a stranger-signed OCSP response.

mod common;

use common::*;
use loupe_bench::lab::tls_peer_command;

/// What the Python client printed: its TCP port, the group it negotiated, the body.
struct PeerFetch {
    port: u16,
    group: String,
    body: String,
}

fn peer_fetch(t: &Tls<'_>, ip: &str, sni: &str, groups: Option<&str>) -> PeerFetch {
    let [python, script] = ok(tls_peer_command(), "the TLS peer venv");
    let mut argv: Vec<String> = vec![
        python.display().to_string(),
        script.display().to_string(),
        "client".into(),
        ip.into(),
        "443".into(),
        sni.into(),
        t.dca().into(),
    ];
    argv.extend(groups.map(str::to_string));
    let out = ok(
        t.lab.exec_output_within(Ns::Client, &argv, Duration::from_secs(30)),
        "run the Python TLS client",
    );
    if !out.status.success() {
        t.fail(
            None,
            &format!("the Python client to {sni} failed: {}\n{}", out.stdout, out.stderr),
        );
    }
    let mut lines = out.stdout.lines();
    let first = lines.next().unwrap_or("");
    let field = |name: &str| {
        first
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name))
            .unwrap_or("")
            .to_string()
    };
    PeerFetch {
        port: field("local_port=").parse().unwrap_or(0),
        group: field("group="),
        body: lines.collect::<Vec<_>>().join("\n"),
    }
}

/// X25519MLKEM768 on both legs when both ends speak it; on the server leg when only the
/// server does; and a client whose only key share is post-quantum gets through to a
/// classical server with one HelloRetryRequest upstream, and none the next time (loupe
/// remembers the group the server chose).
#[test]
fn post_quantum_key_exchange_on_both_legs() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let (t, _nginx) = setup(&lab);
    let pki = ok(Pki::new(lab.dir().join("pki-parity")), "a PKI directory");
    let pq_leaf = ok(
        pki.leaf(
            "pq-origin",
            Some(&t.pki.origin_ca),
            &LeafSpec::new(&["s2.lab", "198.18.0.3"]),
        ),
        "issue the post-quantum origin's certificate",
    );
    let [python, script] = ok(tls_peer_command(), "the TLS peer venv");
    let _origin = ok(
        lab.spawn(
            Ns::Server,
            "pq-origin",
            &[
                python.as_os_str(),
                script.as_os_str(),
                "server".as_ref(),
                "198.18.0.3".as_ref(),
                "443".as_ref(),
                pq_leaf.cert_file.as_os_str(),
                pq_leaf.key_file.as_os_str(),
            ],
        ),
        "start the post-quantum origin",
    );
    ok(
        lab.wait_listening(Ns::Server, addr("198.18.0.3"), Duration::from_secs(10)),
        "the post-quantum origin listens",
    );

    // A post-quantum client and origin: both legs X25519MLKEM768.
    let what = "a post-quantum client to a post-quantum origin";
    let fetch = peer_fetch(&t, "198.18.0.3", "s2.lab", None);
    let rec = t.record(fetch.port, what);
    t.expect_eq(&rec, "/outcome", "decrypted".into(), what);
    t.expect_eq(&rec, "/client_leg/group", "X25519MLKEM768".into(), what);
    t.expect_eq(&rec, "/server_leg/group", "X25519MLKEM768".into(), what);
    t.expect_eq(&rec, "/server_leg/hello_retry", false.into(), what);
    if fetch.group != "X25519MLKEM768" || fetch.body.trim() != "group=X25519MLKEM768" {
        t.fail(
            Some(&rec),
            &format!(
                "{what}: the client saw group {:?} and the origin reported {:?}",
                fetch.group, fetch.body
            ),
        );
    }

    // A classical client (curl on OpenSSL 3.0): the server leg is still post-quantum.
    let what = "curl (X25519 only) to the post-quantum origin";
    let c = t.curl(&["--cacert", t.dca(), "https://s2.lab/"]);
    if c.code() != Some(0) || c.stdout.trim() != "group=X25519MLKEM768" {
        let rec = (c.port != 0).then(|| t.record(c.port, what));
        t.fail(rec.as_ref(), &format!("{what}: {}; body {:?}", c.show(), c.stdout));
    }
    let rec = t.record(c.port, what);
    t.expect_eq(&rec, "/client_leg/group", "X25519".into(), what);
    t.expect_eq(&rec, "/server_leg/group", "X25519MLKEM768".into(), what);

    // Only a post-quantum key share, to nginx on OpenSSL 3.0: loupe sends exactly that
    // share, nginx asks for X25519 with a HelloRetryRequest, the session goes on. loupe
    // learns that nginx takes X25519 over a post-quantum share: the same client again
    // gets through without the retry, its upstream hello carrying only X25519's share
    // (and still offering the hybrid).
    for (what, retried) in [
        ("a client with only a post-quantum key share to classical nginx", true),
        ("the same client to classical nginx again", false),
    ] {
        let fetch = peer_fetch(&t, "198.18.0.2", "server.lab", Some("X25519MLKEM768:X25519"));
        let rec = t.record(fetch.port, what);
        t.expect_decrypted(&rec, "TLSv1.3", what);
        t.expect_eq(&rec, "/client_leg/group", "X25519MLKEM768".into(), what);
        t.expect_eq(&rec, "/client_leg/hello_retry", false.into(), what);
        t.expect_eq(&rec, "/server_leg/group", "X25519".into(), what);
        t.expect_eq(&rec, "/server_leg/hello_retry", retried.into(), what);
        if fetch.body.trim() != INDEX.trim() {
            t.fail(Some(&rec), &format!("{what}: body {:?}", fetch.body));
        }
    }
}

/// An OCSP response for `leaf` from `signer`, made with `openssl ocsp` from an index file
/// saying `status` ("V" valid, or "R" revoked for keyCompromise).
fn ocsp_response(dir: &Path, name: &str, leaf: &Issued, issuer: &Issued, signer: &Issued, revoked: bool) -> PathBuf {
    let serial = leaf
        .cert
        .serial_number()
        .to_bn()
        .and_then(|bn| bn.to_hex_str().map(|s| s.to_uppercase()))
        .expect("serial as hex");
    let subject = format!("/CN={}", leaf.common_name());
    let line = if revoked {
        format!("R\t351231000000Z\t250102030405Z,keyCompromise\t{serial}\tunknown\t{subject}\n")
    } else {
        format!("V\t351231000000Z\t\t{serial}\tunknown\t{subject}\n")
    };
    let index = dir.join(format!("{name}.index"));
    std::fs::write(&index, line).expect("write the OCSP index");
    let response = dir.join(format!("{name}.der"));
    let path = |p: &Path| p.display().to_string();
    let argv = [
        "openssl".to_string(),
        "ocsp".into(),
        "-index".into(),
        path(&index),
        "-rsigner".into(),
        path(&signer.cert_file),
        "-rkey".into(),
        path(&signer.key_file),
        "-CA".into(),
        path(&issuer.cert_file),
        "-issuer".into(),
        path(&issuer.cert_file),
        "-cert".into(),
        path(&leaf.cert_file),
        "-respout".into(),
        path(&response),
        "-ndays".into(),
        "2".into(),
    ];
    ok(
        run_host(&argv, Duration::from_secs(20)).and_then(|o| o.success()),
        "openssl ocsp",
    );
    response
}

/// loupe asks for a stapled OCSP response and checks it against the issuer: revoked blocks
/// the session with code 23 (and forward-untrust applies as for any untrusted server);
/// good is recorded; one signed by someone else counts as none.
#[test]
fn stapled_ocsp_responses_are_checked_and_revoked_servers_are_untrusted() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let (t, _nginx) = setup(&lab);
    let dir = lab.dir().join("ocsp");
    std::fs::create_dir_all(&dir).expect("ocsp dir");
    let pki = ok(Pki::new(lab.dir().join("pki-parity")), "a PKI directory");
    let stranger = ok(
        pki.root_ca("ocsp-stranger", "a CA that did not issue the leaf"),
        "stranger CA",
    );
    let origin = &t.pki.origin_ca;
    let mut servers = Vec::new();
    for (ip, name, revoked, signer) in [
        ("198.18.0.4", "s3.lab", true, origin),
        ("198.18.0.5", "s4.lab", false, origin),
        ("198.18.0.6", "s5.lab", false, &stranger),
    ] {
        let leaf = ok(pki.leaf(name, Some(origin), &LeafSpec::new(&[name])), "issue a leaf");
        let response = ocsp_response(&dir, name, &leaf, origin, signer, revoked);
        let status_file = response.display().to_string();
        servers.push(ok(
            lab.spawn_s_server(
                Ns::Server,
                addr(ip),
                &leaf.cert_file,
                &leaf.key_file,
                &["-status_file", &status_file],
            ),
            &format!("openssl s_server stapling on {ip}"),
        ));
    }

    let what = "a server stapling a revoked response";
    let c = t.curl(&["--cacert", t.dca(), "https://s3.lab/"]);
    let rec = t.record(c.port, what);
    if c.code() == Some(0) {
        t.fail(Some(&rec), &format!("{what}: curl got through: {}", c.show()));
    }
    t.expect_eq(&rec, "/outcome", "blocked".into(), what);
    t.expect_eq(&rec, "/stage", "upstream_verify".into(), what);
    t.expect_eq(&rec, "/verify/code", 23.into(), what);
    t.expect_eq(&rec, "/verify/depth", 0.into(), what);
    t.expect_eq(&rec, "/verify/reason", "certificate revoked".into(), what);
    t.expect_eq(&rec, "/verify/trusted", false.into(), what);
    t.expect_eq(&rec, "/ocsp/status", "revoked".into(), what);
    t.expect_contains(&rec, "/ocsp/detail", &["keyCompromise"], what);
    t.expect_contains(&rec, "/error", &["certificate revoked (code 23, depth 0)"], what);
    t.expect_contains(&rec, "/diagnosis", &["revoked", "code 23"], what);

    let what = "a server stapling a good response";
    let c = t.curl(&["--cacert", t.dca(), "https://s4.lab/"]);
    let rec = t.record(c.port, what);
    if c.code() != Some(0) {
        t.fail(Some(&rec), &format!("{what}: {}", c.show()));
    }
    t.expect_eq(&rec, "/outcome", "decrypted".into(), what);
    t.expect_eq(&rec, "/ocsp/status", "good".into(), what);

    let what = "a server stapling a response signed by a stranger";
    let c = t.curl(&["--cacert", t.dca(), "https://s5.lab/"]);
    let rec = t.record(c.port, what);
    if c.code() != Some(0) {
        t.fail(Some(&rec), &format!("{what}: {}", c.show()));
    }
    t.expect_eq(&rec, "/outcome", "decrypted".into(), what);
    t.expect_eq(&rec, "/verify/code", 0.into(), what);
    t.expect_eq(&rec, "/ocsp/status", "invalid".into(), what);
    t.expect_contains(&rec, "/ocsp/detail", &["treated as no response"], what);

    let what = "nginx stapling nothing";
    let c = t.curl(&["--cacert", t.dca(), "https://server.lab/"]);
    let rec = t.record(c.port, what);
    t.expect_decrypted(&rec, "TLSv1.3", what);
    t.expect_eq(&rec, "/ocsp/status", "none".into(), what);

    // forward-untrust: the revoked server gets a forgery from the untrusted CA, which the
    // client (trusting only the decryption CA) refuses.
    let set = ok(
        t.mid
            .loupectl(&["profile", "set", "default", "untrusted=forward-untrust"]),
        "loupectl profile set",
    );
    assert!(
        set.status.success(),
        "profile set failed: {}\n{}",
        set.stdout,
        set.stderr
    );
    let what = "the revoked server under forward-untrust";
    let c = t.curl(&["--cacert", t.dca(), "https://s3.lab/"]);
    let rec = t.record(c.port, what);
    if c.code() != Some(60) {
        t.fail(
            Some(&rec),
            &format!(
                "{what}: curl should refuse the untrusted CA's forgery (exit 60): {}",
                c.show()
            ),
        );
    }
    t.expect_eq(&rec, "/verify/code", 23.into(), what);
    t.expect_eq(&rec, "/stage", "client_handshake".into(), what);
    drop(servers);
}
