//! `loupe-bench load` against a real nginx (Debian's) on 127.0.0.1, over TLS with a
//! certificate from the test PKI: every workload for a second or two with small numbers,
//! checking that it completed work, made no error and filled its fields sensibly. Speed is
//! not asserted. Needs no root and no namespace: loopback only.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use loupe_bench::load::{run_load, HelloShape, LoadResult, LoadSpec, Workload};
use loupe_bench::pki::{LeafSpec, Pki};
use rand::RngCore;
use sha2::{Digest, Sha256};

const SNI: &str = "origin.test";
const BIG: usize = 64 << 20;

/// nginx serving `/1k` (1024 bytes) and `/64m` (64 MiB) over TLS on 127.0.0.1, killed and
/// its directory removed on drop.
struct Origin {
    dir: PathBuf,
    child: Child,
    addr: SocketAddr,
    ca: PathBuf,
    other_ca: PathBuf,
    big_sha256: String,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

impl Origin {
    fn start() -> Origin {
        let dir = std::env::temp_dir().join(format!(
            "loupe-load-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let www = dir.join("www");
        std::fs::create_dir_all(&www).unwrap();
        std::fs::create_dir_all(dir.join("tmp")).unwrap();

        let pki = Pki::new(dir.join("pki")).unwrap();
        let ca = pki.root_ca("ca", "load test CA").unwrap();
        let other = pki.root_ca("other-ca", "some other CA").unwrap();
        let leaf = pki
            .leaf("origin", Some(&ca), &LeafSpec::new(&[SNI, "127.0.0.1"]))
            .unwrap();

        let mut rng = rand::rng();
        let mut small = vec![0u8; 1024];
        rng.fill_bytes(&mut small);
        std::fs::write(www.join("1k"), &small).unwrap();
        let mut big = vec![0u8; BIG];
        rng.fill_bytes(&mut big);
        let big_sha256 = hex(&Sha256::digest(&big));
        std::fs::write(www.join("64m"), &big).unwrap();

        // A free port: bound by us, then released for nginx.
        let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let d = dir.display();
        // keepalive_requests 100: the requests workload must follow nginx's
        // `Connection: close` on the 100th response of a connection without an error.
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nworker_rlimit_nofile 4096;\n\
             events {{ worker_connections 2048; }}\n\
             http {{\n  access_log off;\n  default_type application/octet-stream;\n\
             \x20 client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n\
             \x20 fastcgi_temp_path {d}/tmp/fastcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n\
             \x20 scgi_temp_path {d}/tmp/scgi;\n  keepalive_requests 100;\n  keepalive_timeout 300s;\n\
             \x20 server {{\n    listen {addr} ssl;\n    ssl_certificate {};\n    ssl_certificate_key {};\n\
             \x20   ssl_protocols TLSv1.2 TLSv1.3;\n    root {};\n    location / {{ }}\n  }}\n}}\n",
            leaf.cert_file.display(),
            leaf.key_file.display(),
            www.display()
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nginx (Debian's nginx package)");
        let mut origin = Origin {
            dir: dir.clone(),
            child,
            addr,
            ca: ca.cert_file.clone(),
            other_ca: other.cert_file.clone(),
            big_sha256,
        };
        let until = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = origin.child.try_wait() {
                panic!("nginx exited ({status}): {}", origin.error_log());
            }
            assert!(
                Instant::now() < until,
                "nginx is not listening on {addr}: {}",
                origin.error_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        origin
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    fn spec(&self, workload: Workload, path: &str) -> LoadSpec {
        LoadSpec {
            target: self.addr,
            sni: SNI.to_string(),
            ca_file: self.ca.clone(),
            path: path.to_string(),
            workload,
            concurrency: 8,
            warmup: Duration::from_millis(500),
            duration: Duration::from_millis(1500),
            expect_sha256: None,
            watch_pids: Vec::new(),
            rate: None,
            hello: HelloShape::Classic,
        }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn run(origin: &Origin, spec: &LoadSpec) -> LoadResult {
    let r = run_load(spec).expect("run_load");
    eprintln!("{} {}", spec.workload.name(), serde_json::to_string(&r).unwrap());
    if r.errors != 0 {
        eprintln!("nginx error.log:\n{}", origin.error_log());
    }
    r
}

/// Fields every timed run must have sane.
fn check_common(r: &LoadResult, min_bytes_per_unit: u64, elapsed: f64) {
    assert!(r.completed > 0, "nothing completed: {r:?}");
    assert_eq!(r.errors, 0, "errors: {:?}", r.first_errors);
    assert!(r.first_errors.is_empty());
    assert!(
        (r.elapsed_s - elapsed).abs() < 0.2,
        "elapsed {} (expected {elapsed})",
        r.elapsed_s
    );
    assert!(
        (r.per_second - r.completed as f64 / r.elapsed_s).abs() < 1e-6 * r.per_second.max(1.0),
        "{r:?}"
    );
    assert!(r.bytes >= r.completed * min_bytes_per_unit, "{r:?}");
    assert!(r.client_cpu_s > 0.0 && r.client_cpu_s < 8.0 * r.elapsed_s, "{r:?}");
}

fn check_latency(l: &loupe_bench::load::Latency) {
    assert!(l.p50 > 0.0, "{l:?}");
    assert!(
        l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max,
        "{l:?}"
    );
}

#[test]
fn handshakes_workload() {
    let o = Origin::start();
    let r = run(&o, &o.spec(Workload::Handshakes, "/1k"));
    check_common(&r, 1024, 1.5);
    check_latency(&r.handshake_us.expect("handshake latency"));
    assert!(r.latency_us.is_none() && r.mb_per_s.is_none() && r.integrity_ok.is_none());
    assert!(r.sessions_held.is_none());
}

#[test]
fn requests_workload() {
    let o = Origin::start();
    let r = run(&o, &o.spec(Workload::Requests, "/1k"));
    check_common(&r, 1024, 1.5);
    // nginx closes each connection after 100 requests: more than 8 connections were used.
    assert!(r.completed > 800, "{r:?}");
    check_latency(&r.latency_us.expect("request latency"));
    assert!(r.handshake_us.is_none() && r.mb_per_s.is_none());
    assert_eq!(r.watched_cpu_s, None, "no process watched");
}

/// Runs `workload` offered at `rate` per second and checks it completed that rate, give or
/// take `tolerance` (a share) for the window's edges: a closed loop on loopback does
/// several times more.
fn run_at_fixed_rate(workload: Workload, rate: f64, tolerance: f64) -> LoadResult {
    let o = Origin::start();
    let mut spec = o.spec(workload, "/1k");
    spec.rate = Some(rate);
    let r = run(&o, &spec);
    assert_eq!(r.errors, 0, "{:?}", r.first_errors);
    assert_eq!(r.offered_rate, Some(rate));
    let expected = rate * r.elapsed_s;
    assert!((r.completed as f64 - expected).abs() <= tolerance * expected, "{r:?}");
    r
}

#[test]
fn requests_at_a_fixed_rate_complete_the_rate_and_no_more() {
    // This origin speaks HTTP/1.1 only; requests-h2 takes its turns from the same clock.
    let r = run_at_fixed_rate(Workload::Requests, 400.0, 0.05);
    check_latency(&r.latency_us.expect("request latency"));
}

#[test]
fn handshakes_at_a_fixed_rate_complete_the_rate_and_no_more() {
    let r = run_at_fixed_rate(Workload::Handshakes, 100.0, 0.1);
    check_latency(&r.handshake_us.expect("handshake latency"));
}

#[test]
fn cpu_of_watched_processes_and_of_the_machine_over_the_measured_interval() {
    let o = Origin::start();
    let mut spec = o.spec(Workload::Requests, "/1k");
    // The generator runs in this process: /proc's view of it must agree with getrusage's.
    spec.watch_pids = vec![std::process::id()];
    let r = run(&o, &spec);
    let watched = r.watched_cpu_s.expect("this process's CPU from /proc");
    // /proc counts in clock ticks (10 ms), read at slightly different instants.
    assert!((watched - r.client_cpu_s).abs() < 0.1, "{r:?}");
    let machine = r.machine_cpu_s.expect("the machine's busy time");
    // The whole machine did at least the generator's work, and at most every core's.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    assert!(
        machine + 0.05 >= r.client_cpu_s && machine <= cores * r.elapsed_s + 0.1,
        "{r:?}"
    );
    // A process that is not there: no figure rather than a wrong one.
    spec.watch_pids = vec![u32::MAX - 1];
    assert_eq!(run(&o, &spec).watched_cpu_s, None);
}

#[test]
fn bulk_workload_checks_every_stream_hash() {
    let o = Origin::start();
    let mut spec = o.spec(Workload::Bulk { streams: 2 }, "/64m");
    spec.duration = Duration::from_secs(60);
    spec.expect_sha256 = Some(o.big_sha256.to_uppercase());
    let r = run(&o, &spec);
    assert_eq!(r.completed, 2, "{r:?}");
    assert_eq!(r.errors, 0, "{:?}", r.first_errors);
    assert_eq!(r.integrity_ok, Some(true), "{r:?}");
    assert!(r.bytes > 2 * BIG as u64, "{r:?}");
    let mb = r.mb_per_s.expect("MB/s");
    let expect = 2.0 * BIG as f64 / 1e6 / r.elapsed_s;
    assert!((mb - expect).abs() < 1e-6 * expect, "{mb} vs {expect}");
    assert!(r.elapsed_s > 0.0 && r.elapsed_s < 60.0 && r.client_cpu_s > 0.0, "{r:?}");

    let mut wrong = spec.clone();
    wrong.expect_sha256 = Some("00".repeat(32));
    let r = run(&o, &wrong);
    assert_eq!(r.completed, 2, "{r:?}");
    assert_eq!(r.integrity_ok, Some(false), "{r:?}");

    // Without an expected hash nothing is claimed.
    let mut none = spec.clone();
    none.expect_sha256 = None;
    none.path = "/1k".into();
    let r = run(&o, &none);
    assert_eq!((r.completed, r.errors, r.integrity_ok), (2, 0, None), "{r:?}");
}

/// Through the CLI: `ready 200` once on stderr while the sessions are held, then the
/// result as one JSON line on stdout.
#[test]
fn idle_workload_cli() {
    let o = Origin::start();
    let mut child = Command::new(env!("CARGO_BIN_EXE_loupe-bench"))
        .args(["load", "--connect", &o.addr.to_string(), "--sni", SNI, "--ca"])
        .arg(&o.ca)
        .args([
            "--workload",
            "idle",
            "--sessions",
            "200",
            "--concurrency",
            "32",
            "--duration",
            "1s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let stderr_lines: Vec<String> = stderr.lines().map_while(Result::ok).collect();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?} {stderr_lines:?}", out.status);
    let ready: Vec<_> = stderr_lines.iter().filter(|l| l.starts_with("ready")).collect();
    assert_eq!(ready, ["ready 200"], "stderr: {stderr_lines:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let r: LoadResult = serde_json::from_str(stdout.trim()).unwrap();
    eprintln!("idle {stdout}");
    assert_eq!(r.completed, 200, "{r:?}");
    assert_eq!(r.sessions_held, Some(200), "{r:?}");
    assert_eq!(r.errors, 0, "{:?}", r.first_errors);
    assert!((r.elapsed_s - 1.0).abs() < 0.2 && r.bytes >= 200 * 1024, "{r:?}");
}

/// A certificate the client does not trust and a refused port: counted, the first few
/// kept in words, the run completes.
#[test]
fn failures_are_counted_not_fatal() {
    let o = Origin::start();
    let mut spec = o.spec(Workload::Handshakes, "/1k");
    spec.ca_file = o.other_ca.clone();
    spec.warmup = Duration::ZERO;
    spec.duration = Duration::from_millis(500);
    let r = run_load(&spec).unwrap();
    assert_eq!(r.completed, 0, "{r:?}");
    assert!(r.errors > 0, "{r:?}");
    assert!(!r.first_errors.is_empty() && r.first_errors.len() <= 5, "{r:?}");
    assert!(r.first_errors[0].contains("certificate"), "{r:?}");

    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    spec.target = closed;
    spec.ca_file = o.ca.clone();
    spec.workload = Workload::Requests;
    let r = run_load(&spec).unwrap();
    assert_eq!(r.completed, 0, "{r:?}");
    assert!(r.errors > 0 && r.first_errors[0].contains("connecting"), "{r:?}");

    // A path nginx does not have: a 404 is an error.
    spec.target = o.addr;
    spec.path = "/missing".into();
    let r = run_load(&spec).unwrap();
    assert_eq!(r.completed, 0, "{r:?}");
    assert!(r.errors > 0 && r.first_errors[0].contains("404"), "{r:?}");

    assert!(Path::new(&o.ca).exists());
}
