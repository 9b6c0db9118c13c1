//! Decryption policy end to end: rules (no-decrypt in XDP and after the ClientHello,
//! block by category, decrypt-inbound), profile settings (client_auth, allow_sha1,
//! min_version), the exclusion cache and pinned trust, against nginx, openssl s_server and
//! curl in the lab's namespaces. Needs root; fails without it.

mod common;

use common::*;

/// The SHA-256 (hex) of the certificate the client is shown for `host` at `ip`:443,
/// straight from `openssl s_client` in the client namespace.
fn certificate_seen(t: &Tls, host: &str, ip: &str) -> String {
    let script = format!(
        "openssl s_client -connect {ip}:443 -servername {host} -showcerts </dev/null 2>/dev/null \
         | openssl x509 -outform DER | sha256sum"
    );
    let out = ok(t.lab.exec(Ns::Client, &["bash", "-c", &script]), "openssl s_client");
    let sha = out.split_whitespace().next().unwrap_or("").to_string();
    assert_eq!(sha.len(), 64, "no certificate from {host} ({ip}): {out:?}");
    sha
}

/// The daemon's counters file (rewritten every second).
fn daemon_counters(t: &Tls) -> Value {
    let path = t.mid.state_dir().expect("state dir").join("counters.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", path.display()))
}

/// Waits until the daemon's counters satisfy `check` (they are written once a second).
fn wait_counters(t: &Tls, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let c = daemon_counters(t);
        if check(&c) {
            return c;
        }
        if Instant::now() >= deadline {
            t.fail(None, &format!("{what}: counters never got there: {c}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wire_counter(t: &Tls, name: &str) -> u64 {
    let c = ok(t.mid.wire_counters(), "XDP counters");
    c.fields()
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no XDP counter {name}: {:?}", c.fields()))
}

fn rule_hits(counters: &Value, rule: &str) -> u64 {
    counters["rules"]
        .as_array()
        .and_then(|rules| rules.iter().find(|r| r["name"] == rule))
        .and_then(|r| r["hits"].as_u64())
        .unwrap_or_else(|| panic!("no rule {rule:?} in {counters}"))
}

/// A no-decrypt rule on the server's address never leaves XDP: the client sees nginx's
/// own certificate, the flows count as bridged by a rule and none is steered. QUIC
/// (UDP/443) is dropped and counted by default.
#[test]
fn no_decrypt_rule_on_the_server_address_stays_in_xdp() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let config = "[[rule]]\nname = \"origin-bypass\"\ndestination = [\"198.18.0.2/32\"]\naction = \"no-decrypt\"\n\n\
                  [[rule]]\nname = \"everything-else\"\naction = \"decrypt\"\n";
    let (t, _nginx) = setup_with(&lab, Some(config));
    let steered_before = wire_counter(&t, "steered");
    let c = t.curl(&["--cacert", t.origin_ca(), "https://server.lab/"]);
    if c.code() != Some(0) || c.stdout != INDEX {
        t.fail(None, &format!("curl trusting only the origin CA: {}", c.show()));
    }
    assert_eq!(
        certificate_seen(&t, "server.lab", "198.18.0.2"),
        t.pki.good.sha256_hex(),
        "the client must see nginx's own certificate"
    );
    assert!(wire_counter(&t, "bridged_no_decrypt") > 0, "flows bridged by the rule");
    assert_eq!(
        wire_counter(&t, "steered"),
        steered_before,
        "no segment of the bypassed server may reach userspace"
    );
    // No session was decrypted or logged: the flows never left XDP; the rule counts the
    // client's SYNs (curl and s_client) as its hits there.
    let counters = wait_counters(&t, "XDP rule hits", |c| rule_hits(c, "origin-bypass") >= 2);
    assert_eq!(counters["flows_opened"], 0, "{counters}");
    assert_eq!(rule_hits(&counters, "everything-else"), 0, "{counters}");

    // QUIC: a UDP datagram to 443 is dropped in XDP (browsers fall back to TCP).
    let quic_before = wire_counter(&t, "dropped_quic");
    ok(
        t.lab.exec(
            Ns::Client,
            &[
                "bash",
                "-c",
                "for i in 1 2 3; do echo quic > /dev/udp/198.18.0.2/443; done",
            ],
        ),
        "send UDP/443",
    );
    assert!(
        wire_counter(&t, "dropped_quic") >= quic_before + 3,
        "UDP/443 dropped and counted"
    );
}

/// A no-decrypt rule on the SNI: loupe reads the ClientHello, then splices the TCP
/// streams byte for byte. The client sees the origin's certificate, and 256 MiB arrive
/// intact; the record names the rule.
#[test]
fn no_decrypt_rule_on_the_sni_splices_byte_for_byte() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let config = "[[rule]]\nname = \"origin-by-name\"\nsni = [\"server.lab\"]\naction = \"no-decrypt\"\n";
    let (t, _nginx) = setup_with(&lab, Some(config));
    assert_eq!(
        certificate_seen(&t, "server.lab", "198.18.0.2"),
        t.pki.good.sha256_hex(),
        "the client must see nginx's own certificate"
    );
    let size = 256usize << 20;
    let want = random_file(&t.www.join("big.bin"), size);
    let script = format!(
        "set -o pipefail; curl -sS --max-time 150 --cacert {} \
         -w '%{{stderr}}loupe-test %{{local_port}}\\n' https://server.lab/big.bin | sha256sum",
        t.origin_ca()
    );
    let mut p = ok(
        lab.spawn(Ns::Client, "curl-download", &["bash", "-c", &script]),
        "download",
    );
    let status = p.wait_timeout(Duration::from_secs(170));
    let got = p.stdout().split_whitespace().next().unwrap_or("").to_string();
    let port: u16 = p
        .stderr()
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("loupe-test "))
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    if !matches!(status, Ok(s) if s.success()) || got != want {
        t.fail(
            None,
            &format!("spliced download: {status:?}, sha256 {got} (want {want})\n{}", p.logs()),
        );
    }
    let rec = t.record(port, "spliced download");
    t.expect_eq(&rec, "/rule", "origin-by-name".into(), "spliced");
    t.expect_eq(&rec, "/action", "no-decrypt".into(), "spliced");
    t.expect_eq(&rec, "/outcome", "spliced".into(), "spliced");
    t.expect_eq(&rec, "/sni", "server.lab".into(), "spliced");
    t.expect_eq(&rec, "/profile", Value::Null, "spliced");
    t.expect_contains(&rec, "/reason", &["rule \"origin-by-name\" matched"], "spliced");
    if rec["bytes_server_to_client"].as_u64().unwrap_or(0) < size as u64 {
        t.fail(Some(&rec), "bytes_server_to_client below what was delivered");
    }
    assert!(
        wire_counter(&t, "steered") > 0,
        "the spliced flow went through userspace"
    );
    assert_eq!(wire_counter(&t, "bridged_no_decrypt"), 0, "nothing for XDP to bypass");
    let counters = wait_counters(&t, "rule hits", |c| rule_hits(c, "origin-by-name") >= 2);
    assert_eq!(counters["sessions_decrypted"], 0, "{counters}");
}

/// A block rule on a category: curl fails with a TLS alert, the record names the rule and
/// the category; a name outside the category is decrypted.
#[test]
fn block_rule_on_a_category_sends_an_alert_and_names_the_rule() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let list = lab.dir().join("health.txt");
    std::fs::write(&list, "# a category file\ns1.lab\nclinic.example\n").expect("category file");
    let config = format!(
        "[[category]]\nname = \"health\"\nfile = \"{}\"\n\n[[rule]]\nname = \"no-health\"\ncategory = [\"health\"]\naction = \"block\"\n",
        list.display()
    );
    let (t, _nginx) = setup_with(&lab, Some(&config));
    let c = t.curl(&["--cacert", t.dca(), "https://s1.lab/"]);
    let rec = (c.port != 0).then(|| t.record(c.port, "blocked"));
    if c.code() != Some(35) || !c.stderr.contains("alert access denied") || c.elapsed > FAIL_FAST {
        t.fail(rec.as_ref(), &format!("expected a TLS alert at once: {}", c.show()));
    }
    let rec = rec.expect("a record");
    t.expect_eq(&rec, "/rule", "no-health".into(), "blocked");
    t.expect_eq(&rec, "/action", "block".into(), "blocked");
    t.expect_eq(&rec, "/outcome", "blocked".into(), "blocked");
    t.expect_eq(&rec, "/sni", "s1.lab".into(), "blocked");
    t.expect_contains(
        &rec,
        "/reason",
        &["rule \"no-health\" matched (category health)"],
        "blocked",
    );
    t.expect_eq(&rec, "/config_version", 1.into(), "blocked");

    let c = t.curl(&["--cacert", t.dca(), "https://server.lab/"]);
    if c.code() != Some(0) || c.stdout != INDEX {
        t.fail(None, &format!("server.lab is outside the category: {}", c.show()));
    }
    let rec = t.record(c.port, "default");
    t.expect_eq(&rec, "/rule", "default".into(), "default");
    t.expect_eq(&rec, "/profile", "default".into(), "default");
    t.expect_decrypted(&rec, "TLSv1.3", "default");
}

/// nginx with `ssl_verify_client on` on s2.lab (198.18.0.3): under a profile with
/// `client_auth = "block"` (rule for s2.lab) the session is blocked with that reason.
/// Under the default profile (`client_auth = "bypass"`), reached by the address, the first
/// connection fails, the server lands in the exclusion cache, and the next connection is
/// spliced: the client sees nginx's own certificate, and the record says why.
#[test]
fn servers_asking_for_client_certificates_are_blocked_or_excluded() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let extra = ok(Pki::new(lab.dir().join("pki-mtls")), "mTLS PKI");
    let mtls_ca = ok(extra.root_ca("mtls-ca", "loupe lab mTLS CA"), "mTLS CA");
    let mtls_leaf = ok(
        extra.leaf("mtls", Some(&mtls_ca), &LeafSpec::new(&["s2.lab", "198.18.0.3"])),
        "mTLS server certificate",
    );
    let config = format!(
        "[trust]\nca_files = [\"{}\"]\n\n\
         [[profile]]\nname = \"default\"\nclient_auth = \"bypass\"\n\n\
         [[profile]]\nname = \"strict\"\nclient_auth = \"block\"\n\n\
         [[rule]]\nname = \"mtls-by-name\"\nsni = [\"s2.lab\"]\naction = \"decrypt\"\nprofile = \"strict\"\n",
        mtls_ca.cert_file.display()
    );
    let (t, _nginx) = setup_with(&lab, Some(&config));
    let mut spec = NginxTls::new(addr("198.18.0.3"), &t.www, &mtls_leaf.cert_file, &mtls_leaf.key_file);
    spec.server_directives = format!(
        "ssl_verify_client on; ssl_client_certificate {};",
        mtls_ca.cert_file.display()
    );
    let _mtls = ok(
        lab.spawn_nginx_tls(Ns::Server, &spec),
        "nginx with ssl_verify_client on",
    );

    // Blocked by the strict profile.
    let c = t.curl(&["--cacert", t.dca(), "https://s2.lab/"]);
    let rec = (c.port != 0).then(|| t.record(c.port, "client_auth=block"));
    if c.code() != Some(35) || c.elapsed > FAIL_FAST {
        t.fail(
            rec.as_ref(),
            &format!("client_auth=block: expected a TLS alert: {}", c.show()),
        );
    }
    let rec = rec.expect("a record");
    t.expect_eq(&rec, "/rule", "mtls-by-name".into(), "client_auth=block");
    t.expect_eq(&rec, "/profile", "strict".into(), "client_auth=block");
    t.expect_eq(&rec, "/outcome", "blocked".into(), "client_auth=block");
    t.expect_contains(
        &rec,
        "/error",
        &["the server requested a client certificate"],
        "client_auth=block",
    );
    t.expect_contains(&rec, "/reason", &["client_auth = \"block\""], "client_auth=block");

    // The default profile bypasses: first connection (no SNI: curl to the address) fails.
    let ip_url = "https://198.18.0.3/";
    let c = t.curl(&["--cacert", t.dca(), ip_url]);
    let rec = (c.port != 0).then(|| t.record(c.port, "client_auth=bypass, first"));
    if c.code() == Some(0) {
        t.fail(
            rec.as_ref(),
            "the first connection cannot succeed: loupe holds no client certificate",
        );
    }
    let rec = rec.expect("a record");
    t.expect_eq(&rec, "/rule", "default".into(), "bypass first");
    t.expect_eq(&rec, "/outcome", "blocked".into(), "bypass first");
    t.expect_contains(
        &rec,
        "/reason",
        &["excluded from decryption for 12h", "client_auth = \"bypass\""],
        "bypass first",
    );
    let counters = wait_counters(&t, "exclusion", |c| c["exclusions"] == 1);
    assert_eq!(
        counters["config_version"], 2,
        "an exclusion makes a new snapshot: {counters}"
    );

    // The next connection is spliced: nginx's own certificate, which the origin CA
    // of the mTLS PKI validates; nginx answers 400 (no client certificate sent) over it.
    let c = t.curl(&["--cacert", mtls_ca.cert_file.to_str().expect("path"), ip_url]);
    let rec = (c.port != 0).then(|| t.record(c.port, "client_auth=bypass, next"));
    if c.code() != Some(0) || !c.stdout.contains("No required SSL certificate was sent") {
        t.fail(
            rec.as_ref(),
            &format!("the excluded server must be reached as is: {}", c.show()),
        );
    }
    let rec = rec.expect("a record");
    t.expect_eq(&rec, "/action", "no-decrypt".into(), "bypass next");
    t.expect_eq(&rec, "/outcome", "spliced".into(), "bypass next");
    t.expect_eq(&rec, "/config_version", 2.into(), "bypass next");
    t.expect_contains(
        &rec,
        "/reason",
        &["excluded: the server requested a client certificate"],
        "bypass next",
    );
    assert_eq!(certificate_seen(&t, "198.18.0.3", "198.18.0.3"), mtls_leaf.sha256_hex());
    // The exclusion survives in the state directory.
    let saved = t.mid.state_dir().expect("state dir").join("exclusions.json");
    let text = std::fs::read_to_string(&saved).unwrap_or_default();
    assert!(
        text.contains("198.18.0.3") && text.contains("client certificate"),
        "{text}"
    );
}

/// Old servers: the SHA1-only one (ECDHE-RSA-AES128-SHA) and the TLS 1.0-only one are
/// blocked by the default profile with the unsupported_* reason, and decrypted under
/// profiles that allow them.
#[test]
fn legacy_servers_are_blocked_by_default_and_decrypted_by_a_legacy_profile() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let config = "[[profile]]\nname = \"sha1\"\nallow_sha1 = true\n\
                  ciphers = [\"ECDHE-RSA-AES128-GCM-SHA256\", \"ECDHE-RSA-AES128-SHA\"]\n\n\
                  [[profile]]\nname = \"tls10\"\nmin_version = \"1.0\"\nallow_sha1 = true\nlegacy_servers = true\n\
                  ciphers = [\"ECDHE-RSA-AES128-GCM-SHA256\", \"ECDHE-RSA-AES128-SHA\", \"ECDHE-RSA-AES256-SHA\"]\n\n\
                  [[rule]]\nname = \"legacy-sha1\"\nsni = [\"s7.lab\"]\naction = \"decrypt\"\nprofile = \"sha1\"\n\n\
                  [[rule]]\nname = \"legacy-tls10\"\nsni = [\"s8.lab\"]\naction = \"decrypt\"\nprofile = \"tls10\"\n";
    let (t, _nginx) = setup_with(&lab, Some(config));
    let p = &t.pki;
    let s = |ip: &str, leaf: &Issued, extra: &[&str]| {
        ok(
            lab.spawn_s_server(Ns::Server, addr(ip), &leaf.cert_file, &leaf.key_file, extra),
            &format!("openssl s_server on {ip}"),
        )
    };
    let _sha1 = s(
        "198.18.0.8",
        &p.sha1_rsa,
        &["-cipher", "ECDHE-RSA-AES128-SHA", "-no_tls1_3"],
    );
    let _tls10 = s("198.18.0.9", &p.tls10_rsa, &["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"]);

    // By address (no SNI, so no rule): the default profile blocks both.
    for (ip, name, reason) in [
        ("198.18.0.8", "sha1", "unsupported_cipher = \"block\""),
        ("198.18.0.9", "tls1.0", "unsupported_version = \"block\""),
    ] {
        let c = t.curl(&[
            "--cacert",
            t.dca(),
            "--resolve",
            &format!("legacy.lab:443:{ip}"),
            "https://legacy.lab/",
        ]);
        let rec = (c.port != 0).then(|| t.record(c.port, name));
        if c.code() != Some(35) {
            t.fail(rec.as_ref(), &format!("{name}: expected a TLS alert: {}", c.show()));
        }
        let rec = rec.expect("a record");
        t.expect_eq(&rec, "/profile", "default".into(), name);
        t.expect_eq(&rec, "/outcome", "blocked".into(), name);
        t.expect_eq(&rec, "/stage", "upstream_handshake".into(), name);
        t.expect_contains(&rec, "/reason", &[reason], name);
    }
    // By name: the legacy profiles decrypt them.
    for (host, rule, version) in [
        ("s7.lab", "legacy-sha1", "TLSv1.2"),
        ("s8.lab", "legacy-tls10", "TLSv1"),
    ] {
        let c = t.curl(&["--cacert", t.dca(), &format!("https://{host}/")]);
        let rec = (c.port != 0).then(|| t.record(c.port, host));
        if c.code() != Some(0) || !c.stdout.contains("s_server") {
            t.fail(
                rec.as_ref(),
                &format!("{host}: expected the s_server page: {}", c.show()),
            );
        }
        let rec = rec.expect("a record");
        t.expect_eq(&rec, "/rule", rule.into(), host);
        t.expect_eq(&rec, "/outcome", "decrypted".into(), host);
        t.expect_eq(&rec, "/server_leg/version", version.into(), host);
    }
}

/// Decrypt-known-key: with the origin's own certificate and key in a decrypt-inbound rule,
/// a client trusting only the origin CA gets the page through loupe, sees the origin's
/// certificate, and the record shows the session decrypted.
#[test]
fn inbound_rule_presents_the_servers_own_certificate() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let (cert, key) = {
        // The harness builds the PKI; build a twin first to know the paths it will use.
        let dir = lab.dir().join("pki");
        (dir.join("good.crt"), dir.join("good.key"))
    };
    let config = format!(
        "[[rule]]\nname = \"origin-inbound\"\ndestination = [\"198.18.0.2\"]\naction = \"decrypt-inbound\"\n\
         certificate = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let (t, _nginx) = setup_with(&lab, Some(&config));
    assert_eq!(t.pki.good.cert_file, cert, "the PKI's file layout changed");
    let c = t.curl(&["--cacert", t.origin_ca(), "https://server.lab/"]);
    let rec = (c.port != 0).then(|| t.record(c.port, "inbound"));
    if c.code() != Some(0) || c.stdout != INDEX {
        t.fail(rec.as_ref(), &format!("inbound: {}", c.show()));
    }
    let rec = rec.expect("a record");
    t.expect_eq(&rec, "/rule", "origin-inbound".into(), "inbound");
    t.expect_eq(&rec, "/action", "decrypt-inbound".into(), "inbound");
    t.expect_eq(&rec, "/outcome", "decrypted".into(), "inbound");
    t.expect_eq(&rec, "/verify/trusted", true.into(), "inbound");
    assert_eq!(
        certificate_seen(&t, "server.lab", "198.18.0.2"),
        t.pki.good.sha256_hex()
    );
}

/// A self-signed server is blocked; once its certificate is imported pinned to its host
/// (`loupe trust import --host`, then a restart), it is decrypted under that name, and
/// still blocked under another name presenting the same certificate.
#[test]
fn a_pinned_self_signed_certificate_is_trusted_for_its_host_only() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let (mut t, _nginx) = setup(&lab);
    let leaf = &t.pki.self_signed;
    let _server = ok(
        lab.spawn_s_server(Ns::Server, addr("198.18.0.3"), &leaf.cert_file, &leaf.key_file, &[]),
        "openssl s_server on s2.lab",
    );
    let c = t.curl(&["--cacert", t.dca(), "https://s2.lab/"]);
    let rec = (c.port != 0).then(|| t.record(c.port, "before the import"));
    if c.code() != Some(35) {
        t.fail(rec.as_ref(), &format!("self-signed before the import: {}", c.show()));
    }
    t.expect_eq(
        rec.as_ref().expect("a record"),
        "/verify/code",
        18.into(),
        "before the import",
    );

    let state = t.mid.state_dir().expect("state dir").to_path_buf();
    let loupe = binary("loupe").expect("loupe binary");
    let import = std::process::Command::new(&loupe)
        .args(["trust", "import"])
        .arg(&leaf.cert_file)
        .args(["--host", "s2.lab", "--state-dir"])
        .arg(&state)
        .output()
        .expect("run loupe trust import");
    assert!(
        import.status.success(),
        "loupe trust import: {}",
        String::from_utf8_lossy(&import.stderr)
    );
    ok(t.mid.restart(&lab), "restart loupe");

    let c = t.curl(&["--cacert", t.dca(), "https://s2.lab/"]);
    let rec = (c.port != 0).then(|| t.record(c.port, "pinned"));
    if c.code() != Some(0) || !c.stdout.contains("s_server") {
        t.fail(rec.as_ref(), &format!("pinned for s2.lab: {}", c.show()));
    }
    let rec = rec.expect("a record");
    t.expect_eq(&rec, "/outcome", "decrypted".into(), "pinned");
    t.expect_eq(&rec, "/verify/trusted", true.into(), "pinned");
    t.expect_contains(
        &rec,
        "/verify/reason",
        &["imported for s2.lab", "self signed certificate"],
        "pinned",
    );

    let c = t.curl(&[
        "--cacert",
        t.dca(),
        "--resolve",
        "other.lab:443:198.18.0.3",
        "https://other.lab/",
    ]);
    let rec = (c.port != 0).then(|| t.record(c.port, "another name"));
    if c.code() != Some(35) {
        t.fail(rec.as_ref(), &format!("the pin must not cover other.lab: {}", c.show()));
    }
    let rec = rec.expect("a record");
    t.expect_eq(&rec, "/outcome", "blocked".into(), "another name");
    t.expect_eq(&rec, "/verify/trusted", false.into(), "another name");
}
