//! The split-TLS test harness shared by the end-to-end test files: a lab with nginx as
//! the origin, loupe in the middle, a test PKI, curl in the client namespace, and readers
//! of loupe's decryption log. Each test file uses part of it.
#![allow(dead_code, unused_imports)]

pub use std::collections::BTreeSet;
pub use std::io::Write as _;
pub use std::net::SocketAddr;
pub use std::path::{Path, PathBuf};
pub use std::process::ExitStatus;
pub use std::time::{Duration, Instant};

pub use boring::x509::X509;
pub use loupe_bench::lab::{
    binary, require_root, run_host, CommandOutput, Lab, Middle, MiddleGuard, NginxTls, Ns, NsProcess,
};
pub use loupe_bench::pki::{common_name, Issued, LeafSpec, Pki};
pub use rand::RngCore;
pub use serde_json::Value;
pub use sha2::{Digest, Sha256};

/// What nginx serves at `/` on server.lab.
pub const INDEX: &str = "hello from the lab origin, over TLS\n";
/// Subject CN of the origin CA that loupe is told to trust (`--trust-ca`).
pub const ORIGIN_CA_CN: &str = "loupe lab origin CA";
/// How long a refused handshake may take before we call it a hang.
pub const FAIL_FAST: Duration = Duration::from_secs(5);

pub fn ok<T>(r: anyhow::Result<T>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:#}"))
}

pub fn addr(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), 443)
}

/// Every certificate the tests use, under `<lab dir>/pki`.
pub struct TestPki {
    pub origin_ca: Issued,
    /// server.lab, s1.lab, 198.18.0.2, signed by the origin CA.
    pub good: Issued,
    /// s2.lab, signed by itself.
    pub self_signed: Issued,
    /// s3.lab, signed by a root loupe does not trust (the root is not sent).
    pub unknown_root: Issued,
    /// s4.lab, signed by the origin CA, expired yesterday.
    pub expired: Issued,
    /// other.lab only, signed by the origin CA, served at s5.lab.
    pub other_name: Issued,
    /// s6.lab, signed by an intermediate of the origin CA; served without it.
    pub behind_intermediate: Issued,
    /// s7.lab, RSA (the server speaks only ECDHE-RSA-AES128-SHA).
    pub sha1_rsa: Issued,
    /// s8.lab, RSA (the server speaks only TLS 1.0).
    pub tls10_rsa: Issued,
}

impl TestPki {
    pub fn build(dir: &Path) -> anyhow::Result<TestPki> {
        let pki = Pki::new(dir)?;
        let origin_ca = pki.root_ca("origin-ca", ORIGIN_CA_CN)?;
        let stranger = pki.root_ca("unknown-root", "root nobody trusts")?;
        let intermediate = pki.intermediate_ca("intermediate", &origin_ca, "loupe lab intermediate CA")?;
        Ok(TestPki {
            good: pki.leaf(
                "good",
                Some(&origin_ca),
                &LeafSpec::new(&["server.lab", "s1.lab", "198.18.0.2"]),
            )?,
            self_signed: pki.leaf("self-signed", None, &LeafSpec::new(&["s2.lab", "198.18.0.3"]))?,
            unknown_root: pki.leaf("unknown-root-leaf", Some(&stranger), &LeafSpec::new(&["s3.lab"]))?,
            expired: pki.leaf("expired", Some(&origin_ca), &LeafSpec::new(&["s4.lab"]).expired())?,
            other_name: pki.leaf("other-name", Some(&origin_ca), &LeafSpec::new(&["other.lab"]))?,
            behind_intermediate: pki.leaf("no-intermediate", Some(&intermediate), &LeafSpec::new(&["s6.lab"]))?,
            sha1_rsa: pki.leaf("sha1-rsa", Some(&origin_ca), &LeafSpec::new(&["s7.lab"]).rsa())?,
            tls10_rsa: pki.leaf("tls10-rsa", Some(&origin_ca), &LeafSpec::new(&["s8.lab"]).rsa())?,
            origin_ca,
        })
    }
}

/// A lab with the origin (nginx on server.lab) and loupe decrypting, trusting the
/// origin CA. Built by [`setup`]; the pieces borrow the lab, hence the split.
pub struct Tls<'lab> {
    pub lab: &'lab Lab,
    pub mid: MiddleGuard<'lab>,
    pub pki: TestPki,
    /// The decryption CA as `loupe ca show` printed it.
    pub decryption_ca: PathBuf,
    pub www: PathBuf,
}

pub fn setup(lab: &Lab) -> (Tls<'_>, NsProcess<'_>) {
    setup_with(lab, None)
}

/// [`setup`], with loupe started from a configuration file holding `config`.
pub fn setup_with<'lab>(lab: &'lab Lab, config: Option<&str>) -> (Tls<'lab>, NsProcess<'lab>) {
    setup_with_origin(lab, config, "")
}

/// [`setup_with`], with more directives for nginx's server block (`ssl_buffer_size`,
/// `gzip`…).
pub fn setup_with_origin<'lab>(
    lab: &'lab Lab,
    config: Option<&str>,
    server_directives: &str,
) -> (Tls<'lab>, NsProcess<'lab>) {
    let pki = ok(TestPki::build(&lab.dir().join("pki")), "build the test PKI");
    let www = lab.dir().join("www");
    std::fs::create_dir_all(&www).expect("www dir");
    std::fs::write(www.join("index.html"), INDEX).expect("index.html");
    let mut origin = NginxTls::new(addr("198.18.0.2"), &www, &pki.good.cert_file, &pki.good.key_file);
    origin.server_directives = server_directives.to_string();
    let nginx = ok(
        lab.spawn_nginx_tls(Ns::Server, &origin),
        "start nginx (TLS) on server.lab",
    );
    let mut args = vec!["--trust-ca".to_string(), pki.origin_ca.cert_file.display().to_string()];
    let config_file = lab.dir().join("loupe.toml");
    if let Some(config) = config {
        std::fs::write(&config_file, config).expect("write the configuration");
        args.extend(["--config".to_string(), config_file.display().to_string()]);
    }
    let mid = ok(lab.start(&Middle::Loupe { args }), "start loupe");
    let state = mid.state_dir().expect("loupe has a state dir");
    let loupe = binary("loupe").expect("loupe binary");
    let mut show = vec![
        loupe.as_os_str(),
        "ca".as_ref(),
        "show".as_ref(),
        "--state-dir".as_ref(),
        state.as_os_str(),
    ];
    if config.is_some() {
        show.extend(["--config".as_ref(), config_file.as_os_str()]);
    }
    let shown = ok(lab.exec(Ns::App, &show), "loupe ca show");
    assert!(
        shown.contains("BEGIN CERTIFICATE"),
        "loupe ca show printed no PEM:\n{shown}"
    );
    let decryption_ca = lab.dir().join("decryption-ca.pem");
    std::fs::write(&decryption_ca, &shown).expect("write the decryption CA");
    (
        Tls {
            lab,
            mid,
            pki,
            decryption_ca,
            www,
        },
        nginx,
    )
}

/// One curl run: exit status, the `-w` line and how long it took.
pub struct Curl {
    pub status: ExitStatus,
    /// What curl wrote to stdout (the body unless `-o` redirected it).
    pub stdout: String,
    pub stderr: String,
    /// The client's TCP port (curl's `%{local_port}`), 0 if no connection was made.
    pub port: u16,
    /// `%{http_version}`: "1.1", "2".
    pub http_version: String,
    pub elapsed: Duration,
}

impl Curl {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn show(&self) -> String {
        format!(
            "curl exited {} after {:?}; port {}; stderr: {}",
            self.status,
            self.elapsed,
            self.port,
            self.stderr.trim()
        )
    }
}

impl Tls<'_> {
    pub fn log_path(&self) -> PathBuf {
        self.mid
            .log_dir()
            .expect("loupe has a log dir")
            .join("decryption.jsonl")
    }

    pub fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| self.fail(None, &format!("bad JSON line ({e}): {l}"))))
            .collect()
    }

    /// The record of the client's connection from `port`; waits for it (records are
    /// written when the session ends, just after the client closed).
    pub fn record(&self, port: u16, what: &str) -> Value {
        assert_ne!(
            port, 0,
            "{what}: curl reported no local port, so no connection was made"
        );
        self.wait_record(&format!("{what}: client port {port}"), |r| {
            r["client_port"].as_u64() == Some(u64::from(port)) && r["client_ip"] == "198.18.0.1"
        })
    }

    /// The newest record for which `wanted` holds; waits up to 10 s for it to be
    /// written, then fails naming `what`.
    pub fn wait_record(&self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(r) = self.records().into_iter().rev().find(|r| wanted(r)) {
                return r;
            }
            if Instant::now() >= deadline {
                self.fail(None, &format!("{what}: no decryption-log record within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Panics with the message, the record, the tail of the decryption log and loupe's output.
    pub fn fail(&self, record: Option<&Value>, msg: &str) -> ! {
        let record = record
            .map(|r| serde_json::to_string_pretty(r).unwrap_or_default())
            .unwrap_or_else(|| "(none)".to_string());
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        panic!(
            "{msg}\n--- the record:\n{record}\n--- last lines of decryption.jsonl (newest first):\n{}\n{}",
            tail.join("\n"),
            self.mid.logs()
        );
    }

    /// curl in the client namespace, bounded at 20 s (`--max-time`): a hang shows as exit 28.
    pub fn curl(&self, args: &[&str]) -> Curl {
        let mut argv: Vec<String> = [
            "curl",
            "-sS",
            "--connect-timeout",
            "5",
            "--max-time",
            "20",
            "-w",
            "%{stderr}\nloupe-test %{local_port} %{http_version}\n",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        argv.extend(args.iter().map(|s| s.to_string()));
        let start = Instant::now();
        let out = ok(self.lab.exec_output(Ns::Client, &argv), "run curl");
        let elapsed = start.elapsed();
        let wline = out
            .stderr
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("loupe-test "))
            .unwrap_or("");
        let mut it = wline.split_whitespace();
        let port = it.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let http_version = it.next().unwrap_or("").to_string();
        Curl {
            status: out.status,
            stdout: out.stdout,
            stderr: out.stderr,
            port,
            http_version,
            elapsed,
        }
    }

    pub fn dca(&self) -> &str {
        self.decryption_ca.to_str().expect("utf-8 path")
    }

    pub fn origin_ca(&self) -> &str {
        self.pki.origin_ca.cert_file.to_str().expect("utf-8 path")
    }

    /// Checks a record field by JSON pointer.
    pub fn expect_eq(&self, rec: &Value, pointer: &str, want: Value, what: &str) {
        let got = rec.pointer(pointer).cloned().unwrap_or(Value::Null);
        if got != want {
            self.fail(Some(rec), &format!("{what}: {pointer} is {got}, expected {want}"));
        }
    }

    pub fn expect_contains(&self, rec: &Value, pointer: &str, words: &[&str], what: &str) {
        let got = rec.pointer(pointer).and_then(Value::as_str).unwrap_or("");
        for w in words {
            if !got.contains(w) {
                self.fail(Some(rec), &format!("{what}: {pointer} does not contain {w:?}: {got:?}"));
            }
        }
    }

    /// A decrypted session: both handshakes done, nothing failed, the origin's own
    /// certificate verified against the origin CA.
    pub fn expect_decrypted(&self, rec: &Value, client_version: &str, what: &str) {
        self.expect_eq(rec, "/action", "decrypt".into(), what);
        self.expect_eq(rec, "/outcome", "decrypted".into(), what);
        self.expect_eq(rec, "/stage", Value::Null, what);
        self.expect_eq(rec, "/error", Value::Null, what);
        self.expect_eq(rec, "/server_ip", "198.18.0.2".into(), what);
        self.expect_eq(rec, "/server_port", 443.into(), what);
        self.expect_eq(rec, "/sni", "server.lab".into(), what);
        self.expect_eq(rec, "/client_leg/version", client_version.into(), what);
        self.expect_eq(rec, "/verify/code", 0.into(), what);
        self.expect_eq(rec, "/verify/trusted", true.into(), what);
        self.expect_eq(rec, "/server_cert/sha256", self.pki.good.sha256_hex().into(), what);
        self.expect_contains(rec, "/server_cert/issuer", &[ORIGIN_CA_CN], what);
        for v in ["/server_leg/version", "/server_leg/cipher", "/client_leg/cipher"] {
            if !rec.pointer(v).is_some_and(Value::is_string) {
                self.fail(Some(rec), &format!("{what}: {v} is not set"));
            }
        }
    }
}

/// Writes `size` random bytes to `path`; returns their SHA-256 (hex).
pub fn random_file(path: &Path, size: usize) -> String {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create random file"));
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut rng = rand::rng();
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len());
        rng.fill_bytes(&mut buf[..n]);
        hash.update(&buf[..n]);
        f.write_all(&buf[..n]).expect("write random file");
        left -= n;
    }
    f.flush().expect("flush random file");
    hex(&hash.finalize())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut hash = Sha256::new();
    std::io::copy(&mut f, &mut hash).expect("hash file");
    hex(&hash.finalize())
}

/// The schema loupe's EVE lines are checked against (`dataplane/tests/eve_schema.json`).
pub fn eve_validator() -> jsonschema::Validator {
    let schema: Value =
        serde_json::from_str(include_str!("../../../dataplane/tests/eve_schema.json")).expect("the EVE schema is JSON");
    jsonschema::draft202012::new(&schema).expect("the EVE schema compiles")
}

/// Every line of loupe's eve.json so far, each checked against the schema.
pub fn eve_events(t: &Tls<'_>, validator: &jsonschema::Validator) -> Vec<Value> {
    let path = t.mid.log_dir().expect("loupe has a log dir").join("eve.json");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let event: Value =
                serde_json::from_str(line).unwrap_or_else(|e| t.fail(None, &format!("bad EVE line ({e}): {line}")));
            if let Err(error) = validator.validate(&event) {
                t.fail(None, &format!("EVE line fails the schema: {error}\n{line}"));
            }
            event
        })
        .collect()
}
