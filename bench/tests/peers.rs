//! The bench's comparison peers (`loupe_bench::peers`): sslsplit, squid and mitmproxy as
//! transparent interceptors in the lab's app namespace. For each: curl in the client
//! namespace, trusting only the interception CA, gets nginx's page from server.lab
//! through a leaf the interception CA signed; an origin whose certificate the lab origin
//! CA did not sign (self-signed, on s2.lab) is refused, because upstream validation is
//! on; and dropping the guard leaves the lab as it was. Needs root; fails without it.

use std::net::SocketAddr;
use std::path::Path;

use boring::x509::X509;
use loupe_bench::lab::{require_root, CommandOutput, Lab, NginxTls, Ns};
use loupe_bench::peers::{start_interceptor, Interceptor, InterceptorGuard, NFT_TABLE};
use loupe_bench::pki::{common_name, Issued, LeafSpec, Pki};

const INDEX: &str = "hello from the lab origin, through a peer interceptor\n";
const ORIGIN_CA_CN: &str = "loupe lab origin CA";
const INTERCEPTION_CA_CN: &str = "loupe bench interception CA";

fn ok<T>(r: anyhow::Result<T>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:#}"))
}

fn addr(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), 443)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// curl in the client namespace, bounded; returns its output and the `-w` line it
/// appends to stderr: the HTTP code and squid's `X-Squid-Error` header, if any.
fn curl(lab: &Lab, cacert: &Path, url: &str) -> (CommandOutput, String) {
    let out = ok(
        lab.exec_output(
            Ns::Client,
            &[
                "curl",
                "-sS",
                "--connect-timeout",
                "5",
                "--max-time",
                "20",
                "-w",
                "%{stderr}\npeers-test %{http_code} %header{x-squid-error}\n",
                "--cacert",
                path(cacert),
                url,
            ],
        ),
        "run curl",
    );
    let code = out
        .stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("peers-test "))
        .unwrap_or("")
        .to_string();
    (out, code)
}

fn show(out: &CommandOutput, guard: &InterceptorGuard<'_>) -> String {
    format!(
        "curl exited {}; stdout {:?}; stderr:\n{}\n{}",
        out.status,
        out.stdout,
        out.stderr.trim_end(),
        guard.logs()
    )
}

/// The chain the client is shown for `name`, as `openssl s_client -showcerts` prints it.
fn shown_chain(lab: &Lab, name: &str, cafile: &Path) -> Vec<X509> {
    let out = ok(
        lab.exec_output(
            Ns::Client,
            &[
                "openssl",
                "s_client",
                "-connect",
                &format!("{name}:443"),
                "-servername",
                name,
                "-showcerts",
                "-CAfile",
                path(cafile),
                "-verify_return_error",
            ],
        ),
        "openssl s_client -showcerts",
    );
    X509::stack_from_pem(out.stdout.as_bytes()).unwrap_or_default()
}

/// Running, that is: present in /proc and not a zombie.
fn process_exists(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next());
    state.is_some_and(|s| s != "Z")
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn intercepts_and_validates(which: Interceptor) {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let pki = ok(Pki::new(lab.dir().join("pki")), "pki dir");
    let origin_ca = ok(pki.root_ca("origin-ca", ORIGIN_CA_CN), "origin CA");
    let good = ok(
        pki.leaf(
            "good",
            Some(&origin_ca),
            &LeafSpec::new(&["server.lab", "s1.lab", "198.18.0.2"]),
        ),
        "server.lab certificate",
    );
    let self_signed: Issued = ok(
        pki.leaf("self-signed", None, &LeafSpec::new(&["s2.lab", "198.18.0.3"])),
        "self-signed s2.lab certificate",
    );
    let ica = ok(pki.root_ca("interception-ca", INTERCEPTION_CA_CN), "interception CA");
    let www = lab.dir().join("www");
    std::fs::create_dir_all(&www).expect("www dir");
    std::fs::write(www.join("index.html"), INDEX).expect("index.html");
    let _good_origin = ok(
        lab.spawn_nginx_tls(
            Ns::Server,
            &NginxTls::new(addr("198.18.0.2"), &www, &good.cert_file, &good.key_file),
        ),
        "nginx on server.lab",
    );
    let _bad_origin = ok(
        lab.spawn_nginx_tls(
            Ns::Server,
            &NginxTls::new(addr("198.18.0.3"), &www, &self_signed.cert_file, &self_signed.key_file),
        ),
        "nginx on s2.lab (self-signed)",
    );

    let mut guard = ok(
        start_interceptor(&lab, which, &ica.cert_file, &ica.key_file, &origin_ca.cert_file),
        &format!("start {which}"),
    );
    assert_eq!(guard.name(), which.name());
    let pid = guard.pid();
    let pids = guard.pids();
    assert_eq!(pids.first(), Some(&pid), "pids() starts with pid(): {pids:?}");
    for p in &pids {
        assert!(process_exists(*p), "{which}: pid {p} of {pids:?} does not exist");
    }
    match which {
        Interceptor::Sslsplit => {
            assert_eq!(comm(pid), "sslsplit");
            assert!(pids.len() >= 2, "sslsplit: worker and privileged parent, got {pids:?}");
            let uid = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            assert!(
                uid.lines().any(|l| l.starts_with("Uid:") && !l.contains("\t0\t")),
                "sslsplit's worker should run unprivileged:\n{uid}"
            );
        }
        Interceptor::Squid => {
            assert_eq!(comm(pid), "squid");
            assert!(
                pids[1..].iter().any(|p| comm(*p).starts_with("security_file")),
                "squid: no security_file_certgen helper among {pids:?}"
            );
        }
        Interceptor::Mitmproxy => {
            assert_eq!(comm(pid), "mitmdump");
            let version = ok(which.version(), "mitmdump --version");
            assert!(
                version.contains(loupe_bench::peers::MITMPROXY_VERSION),
                "mitmproxy: the pinned version, got {version:?}"
            );
        }
    }

    // Through the interceptor, trusting only the interception CA.
    let (out, code) = curl(&lab, &ica.cert_file, "https://server.lab/");
    if !out.status.success() || out.stdout != INDEX || code.trim() != "200" {
        panic!("{which}: curl https://server.lab/ failed: {}", show(&out, &guard));
    }
    // Trusting only the origin CA, the client refuses the forgery.
    let (out, _) = curl(&lab, &origin_ca.cert_file, "https://server.lab/");
    assert_eq!(
        out.status.code(),
        Some(60),
        "{which}: a client trusting only the origin CA must reject the forged leaf: {}",
        show(&out, &guard)
    );
    // What the client is shown: a leaf for server.lab issued and signed by the
    // interception CA, not the origin's certificate.
    let chain = shown_chain(&lab, "server.lab", &ica.cert_file);
    let leaf = chain
        .first()
        .unwrap_or_else(|| panic!("{which}: s_client showed no certificate\n{}", guard.logs()));
    let issuer = leaf
        .issuer_name()
        .entries_by_nid(boring::nid::Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().as_utf8().ok().map(|s| s.to_string()))
        .unwrap_or_default();
    assert_eq!(
        issuer, INTERCEPTION_CA_CN,
        "{which}: issuer of the leaf the client sees"
    );
    assert!(
        leaf.verify(&ica.key).unwrap_or(false),
        "{which}: the leaf is not signed by the interception CA's key"
    );
    assert_eq!(
        common_name(leaf),
        "server.lab",
        "{which}: the forged leaf mirrors the origin's subject"
    );
    assert_ne!(
        leaf.digest(boring::hash::MessageDigest::sha256()).unwrap().to_vec(),
        good.cert
            .digest(boring::hash::MessageDigest::sha256())
            .unwrap()
            .to_vec(),
        "{which}: the client was shown the origin's own certificate"
    );

    // Upstream validation: the self-signed origin is refused. sslsplit resets the client
    // connection during the handshake; squid and mitmproxy complete it with a forged
    // leaf and answer with their error page.
    let (out, code) = curl(&lab, &ica.cert_file, "https://s2.lab/");
    assert!(
        !out.stdout.contains(INDEX),
        "{which}: served the self-signed origin's page: {}",
        show(&out, &guard)
    );
    match which {
        Interceptor::Sslsplit => assert!(
            !out.status.success() && code.starts_with("000"),
            "{which}: expected a failed handshake towards s2.lab: {}",
            show(&out, &guard)
        ),
        Interceptor::Squid => assert!(
            code.starts_with("503 ERR_SECURE_CONNECT_FAIL"),
            "{which}: expected 503 ERR_SECURE_CONNECT_FAIL for s2.lab: {}",
            show(&out, &guard)
        ),
        Interceptor::Mitmproxy => assert!(
            code.starts_with("502"),
            "{which}: expected its 502 Bad Gateway for s2.lab: {}",
            show(&out, &guard)
        ),
    }
    // Still serving after the refusal.
    let (out, _) = curl(&lab, &ica.cert_file, "https://server.lab/");
    assert_eq!(out.stdout, INDEX, "{which}: after the refusal: {}", show(&out, &guard));
    ok(guard.check_alive(), "interceptor alive at the end");

    // Teardown leaves the lab as it was: no processes, no redirect, no bridge, so the
    // client cannot reach the server any more.
    drop(guard);
    for p in &pids {
        assert!(
            !process_exists(*p),
            "{which}: pid {p} ({}) survived the guard",
            comm(*p)
        );
    }
    let tables = ok(lab.exec(Ns::App, &["nft", "list", "tables"]), "nft list tables");
    assert!(!tables.contains(NFT_TABLE), "{which}: redirect left behind: {tables}");
    let links = ok(lab.exec(Ns::App, &["ip", "-br", "link"]), "ip link");
    assert!(!links.contains("br0"), "{which}: bridge left behind:\n{links}");
    let range = ok(
        lab.exec(Ns::App, &["sysctl", "-n", "net.ipv4.ip_local_port_range"]),
        "sysctl",
    );
    assert_eq!(
        range.split_whitespace().collect::<Vec<_>>(),
        ["32768", "60999"],
        "{which}: port range not restored"
    );
    let out = ok(
        lab.exec_output(
            Ns::Client,
            &[
                "curl",
                "-sS",
                "--connect-timeout",
                "2",
                "--max-time",
                "3",
                "-k",
                "https://server.lab/",
            ],
        ),
        "curl after teardown",
    );
    assert!(
        !out.status.success(),
        "{which}: the client still reaches the server after teardown: {}",
        out.stdout
    );
}

#[test]
fn mitmproxy_intercepts_with_upstream_validation() {
    intercepts_and_validates(Interceptor::Mitmproxy);
}

#[test]
fn sslsplit_intercepts_with_upstream_validation() {
    intercepts_and_validates(Interceptor::Sslsplit);
}

#[test]
fn squid_intercepts_with_upstream_validation() {
    intercepts_and_validates(Interceptor::Squid);
}

/// A failed start (a CA file that does not exist, a CA key that does not match) and a
/// panic while an interceptor runs both leave nothing behind.
#[test]
fn failed_start_and_panic_leave_the_lab_as_it_was() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let missing = lab.dir().join("missing.pem");
    for which in Interceptor::ALL {
        let e = start_interceptor(&lab, which, &missing, &missing, &missing).err();
        let e = e.unwrap_or_else(|| panic!("{which} started without a CA"));
        assert!(format!("{e:#}").contains("missing.pem"), "{which}: {e:#}");
    }
    // A CA whose key does not match: sslsplit refuses to start; the wiring is undone.
    let pki = ok(Pki::new(lab.dir().join("pki")), "pki dir");
    let a = ok(pki.root_ca("a", "CA a"), "CA a");
    let b = ok(pki.root_ca("b", "CA b"), "CA b");
    let r = start_interceptor(&lab, Interceptor::Sslsplit, &a.cert_file, &b.key_file, &a.cert_file);
    match r {
        Ok(_) => panic!("sslsplit started with a mismatched CA key"),
        Err(e) => eprintln!("as expected, sslsplit did not start: {e:#}"),
    }
    let clean = |what: &str| {
        let links = ok(lab.exec(Ns::App, &["ip", "-br", "link"]), "ip link");
        assert!(!links.contains("br0"), "{what}: bridge left behind:\n{links}");
        let tables = ok(lab.exec(Ns::App, &["nft", "list", "tables"]), "nft list tables");
        assert!(!tables.contains(NFT_TABLE), "{what}: redirect left behind: {tables}");
    };
    clean("after a failed start");

    // A panic with squid running: unwinding drops the guard.
    let mut seen = Vec::new();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let g = ok(
            start_interceptor(&lab, Interceptor::Squid, &a.cert_file, &a.key_file, &a.cert_file),
            "start squid",
        );
        seen = g.pids();
        panic!("a test failing while squid runs");
    }));
    assert!(r.is_err());
    assert!(seen.len() >= 2, "squid and its helpers: {seen:?}");
    for p in &seen {
        assert!(!process_exists(*p), "pid {p} ({}) survived", comm(*p));
    }
    clean("after a panic");
}
