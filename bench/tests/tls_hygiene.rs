//! TLS hygiene of loupe's client leg, judged by a scanner the project did not write:
//! Debian's `testssl.sh` (3.0.x, `/usr/bin/testssl`) runs in the client namespace against
//! `https://s2.lab` through loupe and writes its findings as flat JSON, which this test
//! reads. What a client is shown is loupe's: its protocols and suites (BoringSSL), its
//! forged leaf, issued by the decryption CA that testssl is given with `--add-ca`.
//!
//! The origin is nginx on 198.18.0.3 (`s2.lab`) with a ten-year leaf from the lab origin
//! CA, so a forgery that copied the origin's lifetime would show; loupe caps its forgeries
//! at 397 days. testssl 3.0.x itself rates a lifetime only beyond 825 days (MEDIUM; ≥ 5
//! years MEDIUM, ≥ 10 years HIGH), so the 397 days are checked here on the leaf it saw.
//!
//! testssl's checks: protocols, cipher categories, forward secrecy, server preferences,
//! server defaults (the certificate), HTTP headers and all vulnerabilities (about 60 s on
//! the 2-core lab machine). Its client simulation and per-cipher listing are left out:
//! they rate nothing, and a full run takes about 90 s. Needs root; fails without it.

mod common;

use common::*;

/// The origin behind loupe for this test: not the address `setup`'s nginx serves.
const HOST: &str = "s2.lab";
const HOST_IP: &str = "198.18.0.3";
/// The origin leaf's lifetime: ten years.
const ORIGIN_DAYS: i64 = 3650;
/// The longest validity a forged leaf may have.
const MAX_FORGED_DAYS: i32 = 397;
/// testssl's run is cut off after this (a hang guard: it takes about a minute).
const TESTSSL_TIMEOUT: Duration = Duration::from_secs(240);
/// The one finding at HIGH or above that is allowed: the forged leaf names no CRL and
/// no OCSP responder ("Neither CRL nor OCSP URI provided").
const ALLOWED_HIGH: &str = "cert_revocation";
/// testssl's findings on the validity window (see `certificate_info` in /usr/bin/testssl).
const VALIDITY_IDS: [&str; 4] = [
    "cert_expirationStatus",
    "cert_notBefore",
    "cert_notAfter",
    "cert_validityPeriod",
];

/// testssl finds nothing HIGH or CRITICAL on loupe's client leg but the missing
/// revocation information, nothing at all on the forged leaf's validity, and the leaf it
/// examined is loupe's forgery, trusted through the decryption CA, valid ≤ 397 days although
/// the origin's runs ten years.
#[test]
fn testssl_finds_nothing_high_on_the_client_leg() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let (t, _nginx) = setup(&lab);

    // The ten-year origin on s2.lab, signed by the origin CA loupe trusts.
    let pki = ok(Pki::new(lab.dir().join("pki")), "open the test PKI");
    let origin = ok(
        pki.leaf(
            "ten-year",
            Some(&t.pki.origin_ca),
            &LeafSpec::new(&[HOST, HOST_IP]).valid_for_days(ORIGIN_DAYS),
        ),
        "issue the ten-year origin leaf",
    );
    let _origin = ok(
        lab.spawn_nginx_tls(
            Ns::Server,
            &NginxTls::new(addr(HOST_IP), &t.www, &origin.cert_file, &origin.key_file),
        ),
        "start nginx (TLS) on s2.lab",
    );

    // loupe decrypts s2.lab: curl trusting only the decryption CA gets the page, and the
    // record shows the ten-year leaf verified on the server leg.
    let url = format!("https://{HOST}/");
    let c = t.curl(&["--cacert", t.dca(), &url]);
    let what = "curl to s2.lab trusting the decryption CA";
    if c.code() != Some(0) || c.stdout != INDEX {
        let rec = (c.port != 0).then(|| t.record(c.port, what));
        t.fail(rec.as_ref(), &format!("{what}: {}; body {:?}", c.show(), c.stdout));
    }
    let rec = t.record(c.port, what);
    t.expect_eq(&rec, "/outcome", "decrypted".into(), what);
    t.expect_eq(&rec, "/sni", HOST.into(), what);
    t.expect_eq(&rec, "/verify/trusted", true.into(), what);
    t.expect_eq(&rec, "/server_cert/sha256", origin.sha256_hex().into(), what);

    // testssl, non-interactive, no DNS (the address is given), trusting the decryption CA.
    // `timeout` kills its whole process group (the openssl children too) if it hangs.
    let json = lab.dir().join("testssl.json");
    let argv: Vec<String> = [
        "timeout",
        "--kill-after=10",
        &TESTSSL_TIMEOUT.as_secs().to_string(),
        "testssl",
        "--quiet",
        "--color",
        "0",
        "--warnings",
        "off",
        "--jsonfile",
        json.to_str().expect("utf-8 path"),
        "--add-ca",
        t.dca(),
        "--ip",
        HOST_IP,
        "--nodns",
        "none",
        "--connect-timeout",
        "5",
        "--openssl-timeout",
        "10",
        "--protocols",
        "--std",
        "--fs",
        "--server-preference",
        "--server-defaults",
        "--headers",
        "--vulnerable",
        &format!("https://{HOST}:443"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let start = Instant::now();
    let out = ok(
        lab.exec_output_within(Ns::Client, &argv, TESTSSL_TIMEOUT + Duration::from_secs(20)),
        "run testssl",
    );
    let elapsed = start.elapsed();
    eprintln!("testssl: {} after {:.0}s", out.status, elapsed.as_secs_f64());
    let tail = |n: usize| {
        let lines: Vec<&str> = out.stdout.lines().collect();
        format!(
            "testssl exited {} after {:.0}s; last {n} lines of its output:\n{}\nits stderr:\n{}",
            out.status,
            elapsed.as_secs_f64(),
            lines[lines.len().saturating_sub(n)..].join("\n"),
            out.stderr.trim()
        )
    };

    let text = std::fs::read_to_string(&json).unwrap_or_default();
    let findings: Vec<Finding> = match serde_json::from_str::<Vec<Value>>(&text) {
        Ok(v) => v.iter().map(Finding::of).collect(),
        Err(e) => t.fail(
            None,
            &format!(
                "{} is not testssl's flat JSON ({e}):\n{text}\n{}",
                json.display(),
                tail(40)
            ),
        ),
    };
    let all = || findings.iter().map(Finding::show).collect::<Vec<_>>().join("\n");
    eprintln!(
        "testssl: {} findings; not OK/INFO:\n{}",
        findings.len(),
        findings
            .iter()
            .filter(|f| !f.fine())
            .map(Finding::show)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let find = |id: &str| findings.iter().find(|f| f.id == id);

    // The run happened, through loupe, and covered what is judged below.
    let mut missing = Vec::new();
    for (id, wanted) in [
        ("TLS1_3", "offered"),
        ("cipherlist_STRONG", ""),
        ("PFS", ""),
        ("cipher_order", ""),
        ("cert_chain_of_trust", "passed"),
        ("cert_notBefore", ""),
        ("cert_notAfter", ""),
        ("cert_validityPeriod", ""),
        ("cert_crlDistributionPoints", ""),
        ("cert_ocspURL", ""),
        ("HSTS", ""),
        ("heartbleed", ""),
        ("ROBOT", ""),
        ("BEAST", ""),
    ] {
        if !find(id).is_some_and(|f| f.finding.starts_with(wanted)) {
            missing.push(format!("{id} (finding starting {wanted:?})"));
        }
    }
    if !missing.is_empty() || !out.status.success() {
        t.fail(
            None,
            &format!(
                "testssl's run is incomplete: missing {}\n--- all findings:\n{}\n{}",
                missing.join(", "),
                all(),
                tail(60)
            ),
        );
    }

    // Nothing HIGH or CRITICAL (nor a FATAL scan problem) but the revocation finding.
    let high: Vec<String> = findings
        .iter()
        .filter(|f| matches!(f.severity.as_str(), "HIGH" | "CRITICAL" | "FATAL") && f.id != ALLOWED_HIGH)
        .map(Finding::show)
        .collect();
    if !high.is_empty() {
        t.fail(
            None,
            &format!(
                "testssl rates these HIGH or worse on loupe's client leg:\n{}\n{}",
                high.join("\n"),
                tail(60)
            ),
        );
    }

    // Nothing on the validity window, whatever its severity (ids of a second leaf carry
    // a ` <hostCert#N>` suffix, hence the prefix match).
    let validity: Vec<String> = findings
        .iter()
        .filter(|f| VALIDITY_IDS.iter().any(|v| f.id.starts_with(v)) && !f.fine())
        .map(Finding::show)
        .collect();
    if !validity.is_empty() {
        t.fail(
            None,
            &format!(
                "testssl has findings on the forged leaf's validity (the origin's runs {ORIGIN_DAYS} days):\n{}\n{}",
                validity.join("\n"),
                tail(60)
            ),
        );
    }

    // The leaf testssl examined: loupe's forgery, issued by the decryption CA, not the
    // origin's ten-year leaf, and valid for at most 397 days.
    let Some(leaf) = find("cert").and_then(|f| pem_of(&f.finding)) else {
        t.fail(None, &format!("no parsable \"cert\" finding:\n{}", all()));
    };
    let dca = X509::from_pem(&std::fs::read(&t.decryption_ca).expect("read CA")).expect("decryption CA PEM");
    assert_eq!(
        leaf.issuer_name().to_der().expect("issuer DER"),
        dca.subject_name().to_der().expect("subject DER"),
        "the leaf testssl examined is not issued by the decryption CA"
    );
    let lifetime = leaf.not_before().diff(leaf.not_after()).expect("validity");
    let window = format!(
        "{} --> {} ({} days {} s)",
        leaf.not_before(),
        leaf.not_after(),
        lifetime.days,
        lifetime.secs
    );
    eprintln!("testssl saw the forged leaf valid {window}");
    if lifetime.days > MAX_FORGED_DAYS || (lifetime.days == MAX_FORGED_DAYS && lifetime.secs > 0) {
        t.fail(
            None,
            &format!(
                "the forged leaf is valid {window}: more than {MAX_FORGED_DAYS} days (the origin's: {ORIGIN_DAYS} days); testssl: {}",
                VALIDITY_IDS
                    .iter()
                    .filter_map(|id| find(id))
                    .map(Finding::show)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        );
    }
}

/// One entry of testssl's flat JSON.
struct Finding {
    id: String,
    severity: String,
    finding: String,
}

impl Finding {
    fn of(v: &Value) -> Finding {
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        Finding {
            id: s("id"),
            severity: s("severity"),
            finding: s("finding"),
        }
    }

    /// OK and INFO are not findings against the server.
    fn fine(&self) -> bool {
        matches!(self.severity.as_str(), "OK" | "INFO")
    }

    fn show(&self) -> String {
        format!("{} [{}] {}", self.id, self.severity, self.finding)
    }
}

/// testssl writes a PEM certificate with its line breaks turned into spaces.
fn pem_of(flat: &str) -> Option<X509> {
    let body = flat
        .strip_prefix("-----BEGIN CERTIFICATE-----")?
        .trim()
        .strip_suffix("-----END CERTIFICATE-----")?;
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        body.split_whitespace().collect::<Vec<_>>().join("\n")
    );
    X509::from_pem(pem.as_bytes()).ok()
}
