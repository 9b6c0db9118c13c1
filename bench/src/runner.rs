//! `loupe-bench run`: the bench. Brings up its own lab, starts the origin (nginx with the
//! lab origin CA, objects generated for the run), then for each mode in a fixed order
//! starts the middle in the app namespace, runs every workload from the client namespace
//! with `loupe-bench load`, samples the middle's CPU and memory from /proc, and writes the
//! report (markdown, JSON, SVG). Everything it started is torn down on return, also after
//! Ctrl-C (the signal ends the current step; the guards then clean up).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::costs::{CryptoFloor, ProcessSample};
use crate::lab::{binary, Lab, Middle, MiddleGuard, NginxTls, Ns};
use crate::load::{HelloShape, LoadResult};
use crate::peers::{start_interceptor, Interceptor, InterceptorGuard};
use crate::pki::{Issued, LeafSpec, Pki};
use crate::report::{BenchReport, Machine, Measurement};
use crate::signature_bench::{generated_content_rules, DEFAULT_SEED, SUITE_RULES};

/// The modes, in the order they always run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// A kernel bridge in the app namespace: the baseline.
    Direct,
    /// loupe with a no-decrypt address rule for everything: XDP only.
    LoupeBridge,
    /// loupe with `forward_only`: the same XDP program and AF_XDP rings, frames copied
    /// port to port with no TCP stack: the floor of loupe-splice and loupe-decrypt.
    XskForward,
    /// loupe with an SNI no-decrypt rule: userspace TCP relay, no TLS.
    LoupeSplice,
    /// loupe decrypting with the default profile, HTTP inspection off: the baseline of
    /// loupe-inspect.
    LoupeDecrypt,
    /// loupe-decrypt with `[dataplane] busy_poll_us = 50`: the worker spins on its rings
    /// for 50 µs after the last frame before it sleeps. Opt-in (`--modes`), not in a run's
    /// default set: a measurement of the setting against `loupe-decrypt`.
    LoupeBusyPoll,
    /// loupe decrypting with HTTP inspection on (HTTP/1.1 and HTTP/2, eve.json) and URL
    /// rules that match none of the bench's requests: every request judged and allowed.
    LoupeInspect,
    /// loupe-inspect with 5,000 generated content signatures (ET style, none matching the
    /// bench's traffic): every transaction's heads and bodies go through the prefilter.
    /// Opt-in: a measurement of signatures against loupe-inspect.
    LoupeSignatures,
    /// loupe-inspect with the signature suite's eight rules in ET Open's style (URI,
    /// header, user-agent, body and `tls.sni` contents, `pcre`, `flowbits`; none matching
    /// the bench's traffic): what a deployment's own handful of rules costs. Opt-in.
    LoupeSignaturesSuite,
    Sslsplit,
    Squid,
    Mitmproxy,
}

impl Mode {
    /// Every mode in the fixed order a run takes them in (the default set of
    /// [`Mode::all`] and the opt-in ones).
    pub const ORDER: [Mode; 12] = [
        Mode::Direct,
        Mode::LoupeBridge,
        Mode::XskForward,
        Mode::LoupeSplice,
        Mode::LoupeDecrypt,
        Mode::LoupeBusyPoll,
        Mode::LoupeInspect,
        Mode::LoupeSignatures,
        Mode::LoupeSignaturesSuite,
        Mode::Sslsplit,
        Mode::Squid,
        Mode::Mitmproxy,
    ];

    /// The modes a run takes without `--modes`: all but the opt-in ones, in order.
    pub fn all() -> Vec<Mode> {
        Mode::ORDER.into_iter().filter(|m| !m.opt_in()).collect()
    }

    /// Measurements of a setting rather than of a product mode: run only when asked.
    fn opt_in(self) -> bool {
        matches!(
            self,
            Mode::LoupeBusyPoll | Mode::LoupeSignatures | Mode::LoupeSignaturesSuite
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::LoupeBridge => "loupe-bridge",
            Mode::XskForward => "xsk-forward",
            Mode::LoupeSplice => "loupe-splice",
            Mode::LoupeDecrypt => "loupe-decrypt",
            Mode::LoupeBusyPoll => "loupe-busy-poll",
            Mode::LoupeInspect => "loupe-inspect",
            Mode::LoupeSignatures => "loupe-signatures",
            Mode::LoupeSignaturesSuite => "loupe-signatures-suite",
            Mode::Sslsplit => "sslsplit",
            Mode::Squid => "squid",
            Mode::Mitmproxy => "mitmproxy",
        }
    }

    /// The interceptors run in the routed (bridge + redirect) variant of the lab.
    fn routed(self) -> bool {
        matches!(self, Mode::Sslsplit | Mode::Squid | Mode::Mitmproxy)
    }

    /// The mode speaks HTTP/2 to the client: sslsplit 0.5.5's and squid's (ssl-bump)
    /// transparent proxies do not negotiate h2, so the -h2 workloads skip them.
    fn speaks_h2(self) -> bool {
        !matches!(self, Mode::Sslsplit | Mode::Squid)
    }

    /// loupe's configuration for the mode. loupe-decrypt and loupe-inspect differ only by
    /// `[inspection] http` and the URL rules (export is off in both: the default).
    fn loupe_config(self) -> Option<&'static str> {
        match self {
            Mode::LoupeBridge => {
                Some("[[rule]]\nname = \"bench-bridge\"\ndestination = [\"0.0.0.0/0\"]\naction = \"no-decrypt\"\n")
            }
            Mode::LoupeSplice => {
                Some("[[rule]]\nname = \"bench-splice\"\nsni = [\"*.lab\", \"server.lab\"]\naction = \"no-decrypt\"\n")
            }
            Mode::XskForward => Some("[dataplane]\nforward_only = true\n"),
            Mode::LoupeDecrypt => Some("[inspection]\nhttp = false\n"),
            Mode::LoupeBusyPoll => Some("[inspection]\nhttp = false\n\n[dataplane]\nbusy_poll_us = 50\n"),
            Mode::LoupeInspect | Mode::LoupeSignatures | Mode::LoupeSignaturesSuite => Some(INSPECT_CONFIG),
            _ => None,
        }
    }
}

/// A mode's loupe configuration with `queues` workers (`[dataplane] queues`), put into
/// its `[dataplane]` table when it has one.
fn with_queues(config: &str, queues: u32) -> String {
    if queues <= 1 {
        return config.to_string();
    }
    let line = format!("[dataplane]\nqueues = {queues}\n");
    if config.contains("[dataplane]\n") {
        config.replacen("[dataplane]\n", &line, 1)
    } else {
        format!("{line}\n{config}")
    }
}

/// Generated content signatures loupe-signatures loads (the figure of record).
const SIGNATURE_RULES: usize = 5000;

/// loupe-inspect: inspection on (the default, said anyway) and a handful of URL rules of
/// each kind of condition, none matching the bench's `GET https://server.lab/<object>`:
/// every request is judged against all of them and allowed.
pub(crate) const INSPECT_CONFIG: &str = "[inspection]
http = true

[[url_rule]]
name = \"bench-host\"
host = [\"blocked.example\", \"*.blocked.example\"]
action = \"block\"

[[url_rule]]
name = \"bench-admin\"
host = [\"server.lab\"]
path = [\"/admin/\", \"/api/*/delete\"]
action = \"block\"

[[url_rule]]
name = \"bench-upload\"
method = [\"POST\", \"PUT\", \"DELETE\"]
path = [\"/upload/\"]
action = \"alert\"

[[url_rule]]
name = \"bench-nope\"
host = [\"*.lab\"]
path = [\"/nope/\", \"/*.exe\"]
action = \"block\"
";

/// How big and how long.
#[derive(Debug, Clone)]
pub struct BenchPlan {
    pub modes: Vec<Mode>,
    pub reps: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub concurrency: usize,
    /// requests and requests-h2: the offered rate (requests per second, open loop); None:
    /// closed loop.
    pub request_rate: Option<f64>,
    /// handshakes and handshakes-browser: the offered rate (new connections per second,
    /// open loop); None: closed loop.
    pub handshake_rate: Option<f64>,
    /// Bulk: object size in bytes (generated) and the stream counts.
    pub bulk_bytes: u64,
    pub bulk_streams: Vec<usize>,
    pub idle_sessions: usize,
    /// The MTU of every end of the lab's wire.
    pub mtu: u32,
    /// Queues per lab port, and loupe workers (`[dataplane] queues`); with more than
    /// one, the lab steers connections like a symmetric RSS.
    pub queues: u32,
    /// Workloads in the fixed order: handshakes, handshakes-browser, requests,
    /// requests-browser, requests-h2, bulk-N, idle, idle-h2 (the -h2 ones only for modes
    /// that speak HTTP/2; -browser: the ClientHello carries an X25519MLKEM768 and an
    /// X25519 key share, where the others carry X25519 alone).
    pub handshakes: bool,
    pub handshakes_browser: bool,
    pub requests: bool,
    pub requests_browser: bool,
    pub requests_h2: bool,
    pub idle: bool,
    pub idle_h2: bool,
    pub out_dir: PathBuf,
}

impl BenchPlan {
    /// The full run: 3 repetitions, 5 s warm-up, 15 s measured, the 1 GiB object.
    pub fn full(out_dir: PathBuf) -> BenchPlan {
        BenchPlan {
            modes: Mode::all(),
            reps: 3,
            warmup: Duration::from_secs(5),
            duration: Duration::from_secs(15),
            concurrency: 64,
            request_rate: None,
            handshake_rate: None,
            bulk_bytes: 1 << 30,
            bulk_streams: vec![1, 8],
            // This VM's hard open-file limit is 20,000 (no CAP_SYS_RESOURCE), and a proxy
            // holds two sockets per session: 9,000 keeps sslsplit and squid under it.
            idle_sessions: 9_000,
            mtu: 1500,
            queues: 1,
            handshakes: true,
            handshakes_browser: true,
            requests: true,
            requests_browser: true,
            requests_h2: true,
            idle: true,
            idle_h2: true,
            out_dir,
        }
    }

    /// Keeps only the named workloads (`handshakes`, `handshakes-browser`, `requests`,
    /// `requests-browser`, `requests-h2`, `bulk-N`, `idle`, `idle-h2`).
    pub fn only_workloads(&mut self, names: &[String]) -> Result<()> {
        let mut kept = BenchPlan {
            handshakes: false,
            handshakes_browser: false,
            requests: false,
            requests_browser: false,
            requests_h2: false,
            idle: false,
            idle_h2: false,
            bulk_streams: Vec::new(),
            ..self.clone()
        };
        for name in names {
            match name.as_str() {
                "handshakes" => kept.handshakes = true,
                "handshakes-browser" => kept.handshakes_browser = true,
                "requests" => kept.requests = true,
                "requests-browser" => kept.requests_browser = true,
                "requests-h2" => kept.requests_h2 = true,
                "idle" => kept.idle = true,
                "idle-h2" => kept.idle_h2 = true,
                other => match other.strip_prefix("bulk-").map(str::parse::<usize>) {
                    Some(Ok(streams)) if streams > 0 => kept.bulk_streams.push(streams),
                    _ => bail!(
                        "unknown workload {other:?}: expected handshakes, handshakes-browser, requests, requests-browser, requests-h2, bulk-N (N streams, N ≥ 1), idle or idle-h2"
                    ),
                },
            }
        }
        kept.bulk_streams.sort_unstable();
        kept.bulk_streams.dedup();
        *self = kept;
        Ok(())
    }

    /// `--quick`: one repetition, short durations, a 256 MiB object: under 10 minutes here.
    pub fn quick(out_dir: PathBuf) -> BenchPlan {
        BenchPlan {
            reps: 1,
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(5),
            bulk_bytes: 256 << 20,
            idle_sessions: 2_000,
            ..BenchPlan::full(out_dir)
        }
    }

    /// `--tiny`: seconds per mode, for the test suite.
    pub fn tiny(out_dir: PathBuf) -> BenchPlan {
        BenchPlan {
            reps: 1,
            warmup: Duration::from_millis(300),
            duration: Duration::from_secs(1),
            concurrency: 8,
            bulk_bytes: 8 << 20,
            bulk_streams: vec![1, 2],
            idle_sessions: 100,
            ..BenchPlan::full(out_dir)
        }
    }
}

/// Longest a bulk download may take before it counts as failed.
const BULK_BOUND: Duration = Duration::from_secs(300);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted: tearing the lab down");
    }
    Ok(())
}

/// The origin's objects: path → (size, SHA-256).
struct Objects {
    small: String,
    bulk: String,
    bulk_sha256: String,
}

pub(crate) fn write_object(path: &Path, size: u64) -> Result<String> {
    use rand::RngCore;
    use sha2::{Digest, Sha256};
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut rng = rand::rng();
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        hash.update(&buf[..n]);
        file.write_all(&buf[..n])?;
        left -= n as u64;
    }
    file.flush()?;
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn make_objects(www: &Path, bulk_bytes: u64) -> Result<Objects> {
    std::fs::create_dir_all(www)?;
    for (name, size) in [("1k", 1u64 << 10), ("100k", 100 << 10), ("10m", 10 << 20)] {
        write_object(&www.join(name), size)?;
    }
    let bulk_name = if bulk_bytes == 1 << 30 {
        "1g".to_string()
    } else {
        format!("{}m", bulk_bytes >> 20)
    };
    let sha = write_object(&www.join(&bulk_name), bulk_bytes)?;
    Ok(Objects {
        small: "/1k".into(),
        bulk: format!("/{bulk_name}"),
        bulk_sha256: sha,
    })
}

/// The middle of one mode and the processes whose cost is the appliance's.
enum Running<'lab> {
    /// The kernel bridge (no process: its cost is the kernel's) or loupe.
    Middle(MiddleGuard<'lab>),
    Interceptor(InterceptorGuard<'lab>),
}

impl Running<'_> {
    /// The last lines of the appliance's output (and squid's cache.log): why a
    /// repetition had errors is usually there.
    fn log_tail(&self, lines: usize) -> String {
        let all = match self {
            Running::Middle(guard) => guard.logs(),
            Running::Interceptor(guard) => guard.logs(),
        };
        let kept: Vec<&str> = all.lines().collect();
        kept[kept.len().saturating_sub(lines)..].join("\n")
    }

    fn pids(&self) -> Vec<u32> {
        match self {
            Running::Middle(guard) => guard.pid().into_iter().collect(),
            Running::Interceptor(guard) => guard.pids(),
        }
    }
}

fn sample(pids: &[u32]) -> Option<ProcessSample> {
    if pids.is_empty() {
        return None;
    }
    ProcessSample::read_many(pids).ok()
}

/// Runs the plan; returns the report (already written to `plan.out_dir`).
pub fn run(plan: &BenchPlan) -> Result<BenchReport> {
    // SAFETY: the handler only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_interrupt as *const () as libc::sighandler_t) };
    let lab = Lab::up_with(plan.queues, plan.mtu).context("bringing the lab up")?;
    let pki = Pki::new(lab.dir().join("pki"))?;
    let origin_ca = pki.root_ca("origin-ca", "loupe bench origin CA")?;
    let origin = pki.leaf(
        "origin",
        Some(&origin_ca),
        &LeafSpec::new(&["server.lab", "198.18.0.2"]),
    )?;
    let interceptor_ca = pki.root_ca("interceptor-ca", "loupe bench interceptor CA")?;
    let www = lab.dir().join("www");
    progress(&format!(
        "generating the origin's objects ({} MiB bulk)",
        plan.bulk_bytes >> 20
    ));
    let objects = make_objects(&www, plan.bulk_bytes)?;
    // HTTP/2 on for the -h2 workloads; the HTTP/1.1 ones offer http/1.1 alone in ALPN.
    let mut nginx_spec = NginxTls::new("198.18.0.2:443".parse()?, &www, &origin.cert_file, &origin.key_file);
    nginx_spec.http2 = true;
    nginx_spec.uploads = false;
    let _nginx = lab.spawn_nginx_tls(Ns::Server, &nginx_spec)?;
    progress("measuring the crypto floor (openssl speed)");
    let floor = CryptoFloor::measure(1).context("openssl speed")?;

    let mut measurements = Vec::new();
    let workloads = workloads(plan);
    let runs = |mode: Mode, step: &Step| mode.speaks_h2() || !step.workload.is_h2();
    let steps = plan
        .modes
        .iter()
        .map(|&m| workloads.iter().filter(|s| runs(m, s)).count() * plan.reps)
        .sum::<usize>() as u64;
    let bar = indicatif::ProgressBar::new(steps).with_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    // Repetitions go round the modes (rep 1 of every mode, then rep 2, …), each in a fresh
    // process: drift in the machine's background load during a run then falls on every
    // mode alike instead of on whichever ran last (two runs of this machine differed by
    // 3× in one mode's requests while the other's held).
    for rep in 1..=plan.reps {
        for &mode in &plan.modes {
            check_interrupted()?;
            bar.set_message(format!("{}: starting", mode.name()));
            let (mut running, mut client_ca) = start_mode(&lab, plan, mode, &origin_ca, &interceptor_ca)?;
            let mut used = false;
            for step in workloads.iter().filter(|s| runs(mode, s)) {
                let (name, workload) = (&step.name, &step.workload);
                check_interrupted()?;
                // Memory per idle session is the growth of a fresh process: one that ran
                // earlier workloads already holds the pages (flow slots, buffers, caches)
                // the idle sessions would otherwise have touched.
                if workload.is_idle() && used {
                    bar.set_message(format!("{}: restarting for idle", mode.name()));
                    drop(running);
                    (running, client_ca) = start_mode(&lab, plan, mode, &origin_ca, &interceptor_ca)?;
                }
                used = true;
                bar.set_message(format!("{} · {name} · rep {rep}/{}", mode.name(), plan.reps));
                let m = measure(&lab, plan, &objects, &client_ca, &running, mode, step, rep)
                    .with_context(|| format!("{} {name} rep {rep}", mode.name()))?;
                if m.load.completed == 0 || m.load.errors > 0 {
                    // eprintln under suspend, not bar.println: indicatif drops println when
                    // stderr is no terminal (CI, the suite), where this line matters most.
                    bar.suspend(|| {
                        eprintln!(
                            "{} {name}: {} completed, {} errors {:?}\n--- {} output (last lines):\n{}",
                            mode.name(),
                            m.load.completed,
                            m.load.errors,
                            m.load.first_errors,
                            mode.name(),
                            running.log_tail(30)
                        )
                    });
                }
                measurements.push(m);
                bar.inc(1);
            }
            drop(running);
        }
    }
    bar.finish_with_message("done");
    let machine = Machine::detect(&xdp_mode(&lab));
    let mut report = BenchReport::new(machine, Some(floor), measurements);
    if plan.queues > 1 {
        report.add_note(format!(
            "The lab's ports ran {0} queues each, connections steered to them by a symmetric hash \
             (both legs of a session on one queue, as with a NIC's symmetric RSS); loupe ran {0} \
             workers, one per queue.",
            plan.queues
        ));
    }
    if plan.mtu != 1500 {
        report.add_note(format!(
            "The lab's wire ran at MTU {} (every veth end; loupe's TCP follows the ports' MTU).",
            plan.mtu
        ));
    }
    let written = report.write_all(&plan.out_dir)?;
    for path in [&written.markdown, &written.json, &written.svg] {
        progress(&format!("wrote {}", path.display()));
    }
    Ok(report)
}

fn xdp_mode(_lab: &Lab) -> String {
    // The lab's veths take native XDP (loupe's default mode).
    "native (veth)".to_string()
}

fn progress(line: &str) {
    eprintln!("[loupe-bench] {line}");
}

/// One workload of the plan as the report names it, and how the generator runs it.
#[derive(Debug, Clone)]
struct Step {
    name: String,
    workload: crate::load::Workload,
    hello: HelloShape,
}

fn workloads(plan: &BenchPlan) -> Vec<Step> {
    use crate::load::Workload;
    let sessions = plan.idle_sessions;
    let bulk = plan
        .bulk_streams
        .iter()
        .map(|&streams| (true, Workload::Bulk { streams }, HelloShape::Classic));
    let wanted = [
        (plan.handshakes, Workload::Handshakes, HelloShape::Classic),
        (plan.handshakes_browser, Workload::Handshakes, HelloShape::Browser),
        (plan.requests, Workload::Requests, HelloShape::Classic),
        (plan.requests_browser, Workload::Requests, HelloShape::Browser),
        (plan.requests_h2, Workload::RequestsH2, HelloShape::Classic),
    ]
    .into_iter()
    .chain(bulk)
    .chain([
        (plan.idle, Workload::Idle { sessions }, HelloShape::Classic),
        (plan.idle_h2, Workload::IdleH2 { sessions }, HelloShape::Classic),
    ]);
    wanted
        .filter(|(on, _, _)| *on)
        .map(|(_, workload, hello)| {
            let base = match workload {
                Workload::Bulk { streams } => format!("bulk-{streams}"),
                w => w.name().to_string(),
            };
            let name = match hello {
                HelloShape::Classic => base,
                HelloShape::Browser => format!("{base}-browser"),
            };
            Step { name, workload, hello }
        })
        .collect()
}

fn start_mode<'lab>(
    lab: &'lab Lab,
    plan: &BenchPlan,
    mode: Mode,
    origin_ca: &Issued,
    interceptor_ca: &Issued,
) -> Result<(Running<'lab>, PathBuf)> {
    match mode {
        Mode::Direct => Ok((
            Running::Middle(lab.start(&Middle::KernelBridge)?),
            origin_ca.cert_file.clone(),
        )),
        Mode::LoupeBridge
        | Mode::XskForward
        | Mode::LoupeSplice
        | Mode::LoupeDecrypt
        | Mode::LoupeBusyPoll
        | Mode::LoupeInspect
        | Mode::LoupeSignatures
        | Mode::LoupeSignaturesSuite => {
            let config = lab.dir().join(format!("{}.toml", mode.name()));
            let mut text = mode.loupe_config().unwrap_or_default().to_string();
            let signatures = match mode {
                Mode::LoupeSignatures => Some(generated_content_rules(SIGNATURE_RULES, DEFAULT_SEED)),
                Mode::LoupeSignaturesSuite => Some(SUITE_RULES.to_string()),
                _ => None,
            };
            if let Some(signatures) = signatures {
                let rules = lab.dir().join(format!("{}.rules", mode.name()));
                std::fs::write(&rules, signatures)?;
                let line = format!("[inspection]\nrules = [\"{}\"]\n", rules.display());
                text = text.replacen("[inspection]\n", &line, 1);
            }
            std::fs::write(&config, with_queues(&text, plan.queues))?;
            let args = vec![
                "--config".to_string(),
                config.display().to_string(),
                "--trust-ca".to_string(),
                origin_ca.cert_file.display().to_string(),
            ];
            let guard = lab.start(&Middle::Loupe { args })?;
            let client_ca = if matches!(
                mode,
                Mode::LoupeDecrypt
                    | Mode::LoupeBusyPoll
                    | Mode::LoupeInspect
                    | Mode::LoupeSignatures
                    | Mode::LoupeSignaturesSuite
            ) {
                write_decryption_ca(lab, &guard)?
            } else {
                origin_ca.cert_file.clone()
            };
            Ok((Running::Middle(guard), client_ca))
        }
        Mode::Sslsplit | Mode::Squid | Mode::Mitmproxy => {
            let which = match mode {
                Mode::Sslsplit => Interceptor::Sslsplit,
                Mode::Squid => Interceptor::Squid,
                _ => Interceptor::Mitmproxy,
            };
            let guard = start_interceptor(
                lab,
                which,
                &interceptor_ca.cert_file,
                &interceptor_ca.key_file,
                &origin_ca.cert_file,
            )?;
            Ok((Running::Interceptor(guard), interceptor_ca.cert_file.clone()))
        }
    }
}

/// Writes the decryption CA of a running loupe (`loupe ca show`) to the lab directory,
/// for clients to trust; returns the file.
pub(crate) fn write_decryption_ca(lab: &Lab, loupe: &MiddleGuard<'_>) -> Result<PathBuf> {
    let state = loupe.state_dir().context("loupe state dir")?;
    let shown = lab.exec(
        Ns::App,
        &[
            binary("loupe")?.as_os_str(),
            "ca".as_ref(),
            "show".as_ref(),
            "--state-dir".as_ref(),
            state.as_os_str(),
        ],
    )?;
    let path = lab.dir().join("loupe-ca.pem");
    std::fs::write(&path, shown)?;
    Ok(path)
}

/// How long a measurement waits for the load's connections to finish closing.
const CLOSE_WAIT_BOUND: Duration = Duration::from_secs(10);

#[allow(clippy::too_many_arguments)]
fn measure(
    lab: &Lab,
    plan: &BenchPlan,
    objects: &Objects,
    client_ca: &Path,
    running: &Running<'_>,
    mode: Mode,
    step: &Step,
    rep: usize,
) -> Result<Measurement> {
    use crate::load::Workload;
    let (name, workload) = (step.name.as_str(), step.workload);
    let bench = binary("loupe-bench")?;
    let (path, sha) = match workload {
        Workload::Bulk { .. } => (objects.bulk.as_str(), Some(objects.bulk_sha256.as_str())),
        _ => (objects.small.as_str(), None),
    };
    let mut argv: Vec<String> = vec![
        bench.display().to_string(),
        "load".into(),
        "--connect".into(),
        "198.18.0.2:443".into(),
        "--sni".into(),
        "server.lab".into(),
        "--ca".into(),
        client_ca.display().to_string(),
        "--path".into(),
        path.into(),
        "--concurrency".into(),
        plan.concurrency.to_string(),
        "--warmup".into(),
        format!("{}ms", plan.warmup.as_millis()),
        "--duration".into(),
        // Bulk streams run to the end of the object: the duration only bounds them.
        match workload {
            Workload::Bulk { .. } => format!("{}s", BULK_BOUND.as_secs()),
            _ => format!("{}ms", plan.duration.as_millis()),
        },
    ];
    let offered_rate = match workload {
        Workload::Handshakes => plan.handshake_rate,
        Workload::Requests | Workload::RequestsH2 => plan.request_rate,
        _ => None,
    };
    if let Some(rate) = offered_rate {
        argv.extend(["--rate".into(), rate.to_string()]);
    }
    match workload {
        Workload::Handshakes | Workload::Requests | Workload::RequestsH2 => {
            argv.extend(["--workload".into(), workload.name().into()]);
        }
        Workload::Bulk { streams } => argv.extend([
            "--workload".into(),
            "bulk".into(),
            "--streams".into(),
            streams.to_string(),
            "--sha256".into(),
            sha.unwrap_or_default().into(),
        ]),
        Workload::Idle { sessions } | Workload::IdleH2 { sessions } => argv.extend([
            "--workload".into(),
            if workload.is_h2() { "idle-h2" } else { "idle" }.into(),
            "--sessions".into(),
            sessions.to_string(),
        ]),
    }
    if step.hello == HelloShape::Browser {
        argv.extend(["--hello".into(), "browser".into()]);
    }
    let pids = running.pids();
    if !pids.is_empty() {
        // The generator reads their CPU at the ends of its measured interval; the runner
        // only samples memory (idle), whose growth is read against the sample below.
        argv.push("--watch-pids".into());
        argv.push(pids.iter().map(u32::to_string).collect::<Vec<_>>().join(","));
    }
    let before = sample(&pids);
    let (load, held_rss) = if workload.is_idle() {
        let mut p = lab.spawn(Ns::Client, "load-idle", &argv)?;
        // Memory is sampled while the sessions are held (the generator says "ready").
        let deadline = Instant::now() + plan.duration + Duration::from_secs(120);
        let mut held = None;
        let mut ready_at = None;
        loop {
            check_interrupted()?;
            if ready_at.is_none() && p.stderr().lines().any(|l| l.starts_with("ready ")) {
                ready_at = Some(Instant::now());
            }
            // Sampled halfway through the hold: the sessions have then been idle for a
            // while, as an appliance's idle sessions are (loupe gives an idle flow's
            // buffer pages back after a second), not just opened.
            if held.is_none() && ready_at.is_some_and(|at| at.elapsed() >= plan.duration / 2) {
                held = sample(&pids);
            }
            if let Some(status) = p.try_status()? {
                if !status.success() {
                    bail!("loupe-bench load exited with {status}\n{}", p.logs());
                }
                break;
            }
            if Instant::now() >= deadline {
                bail!("loupe-bench load (idle) did not finish in time\n{}", p.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        (parse_result(&p.stdout())?, held)
    } else {
        // The generator stops itself after warm-up and duration (the bulk bound for bulk);
        // the slack covers start-up and a slow last stream.
        let runs_for = match workload {
            Workload::Bulk { .. } => BULK_BOUND,
            _ => plan.duration,
        };
        let out = lab.exec_output_within(Ns::Client, &argv, plan.warmup + runs_for + Duration::from_secs(60))?;
        if !out.status.success() {
            bail!("loupe-bench load exited with {}: {}", out.status, out.stderr.trim());
        }
        (parse_result(&out.stdout)?, None)
    };
    // The generator has closed its sockets, but their FIN exchanges may still be under
    // way, and the middle may be torn down next (a mode's last workload). Cut mid-close,
    // a connection stays open at the server, and a later connection from the same port
    // meets it: a challenge ACK instead of a SYN-ACK, a 1 s SYN retry in its handshake.
    for ns in [Ns::Client, Ns::Server] {
        let left = lab.wait_for_closed(ns, 443, CLOSE_WAIT_BOUND)?;
        if left > 0 {
            eprintln!(
                "[loupe-bench] {} {name} rep {rep}: {left} connections in {ns:?} still open or closing {CLOSE_WAIT_BOUND:?} after the load",
                mode.name()
            );
        }
    }
    // None when a process of the appliance could not be read at an end of the interval
    // (gone): the report then has no cost for the repetition rather than a part of it.
    let appliance_cpu_s = load.watched_cpu_s;
    let appliance_rss_bytes = match (&before, held_rss) {
        (Some(b), Some(h)) => Some(h.rss_bytes.saturating_sub(b.rss_bytes)),
        _ => None,
    };
    Ok(Measurement {
        mode: mode.name().to_string(),
        workload: name.to_string(),
        rep,
        load,
        appliance_cpu_s,
        appliance_rss_bytes,
        routed: mode.routed(),
    })
}

fn parse_result(stdout: &str) -> Result<LoadResult> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .context("loupe-bench load printed no JSON result")?;
    serde_json::from_str(line).with_context(|| format!("parsing the load result {line}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decrypt_and_inspect_differ_only_by_inspection() {
        assert_eq!(Mode::LoupeDecrypt.loupe_config(), Some("[inspection]\nhttp = false\n"));
        let inspect = Mode::LoupeInspect.loupe_config().unwrap();
        assert!(inspect.starts_with("[inspection]\nhttp = true\n"), "{inspect}");
        assert!(inspect.matches("[[url_rule]]").count() >= 3, "{inspect}");
        assert!(
            !inspect.contains("[[rule]]") && !inspect.contains("export"),
            "{inspect}"
        );
        assert!(Mode::LoupeInspect.speaks_h2() && !Mode::Sslsplit.speaks_h2());
        assert!(Mode::Mitmproxy.speaks_h2() && Mode::Mitmproxy.routed());
        // The default set is ORDER without the opt-in modes, in its order.
        let all = Mode::all();
        assert_eq!(all.len(), Mode::ORDER.len() - 3);
        assert!(!all.contains(&Mode::LoupeBusyPoll) && !all.contains(&Mode::LoupeSignatures));
        assert!(!all.contains(&Mode::LoupeSignaturesSuite));
        assert_eq!(Mode::LoupeSignaturesSuite.loupe_config(), Some(inspect));
        // loupe-signatures is loupe-inspect's configuration, with rules added at start.
        assert_eq!(Mode::LoupeSignatures.loupe_config(), Some(inspect));
        assert!(all.windows(2).all(|w| {
            let at = |m| Mode::ORDER.iter().position(|o| *o == m);
            at(w[0]) < at(w[1])
        }));
        let spin = Mode::LoupeBusyPoll.loupe_config().unwrap_or_default();
        assert!(
            spin.contains("busy_poll_us = 50") && spin.contains("http = false"),
            "{spin}"
        );
    }

    #[test]
    fn queues_go_into_each_modes_dataplane_table() {
        for mode in Mode::ORDER {
            let Some(config) = mode.loupe_config() else { continue };
            assert_eq!(with_queues(config, 1), config);
            let two = with_queues(config, 2);
            // One [dataplane] table (TOML refuses a second), holding the queue count.
            assert_eq!(two.matches("[dataplane]").count(), 1, "{}: {two}", mode.name());
            assert!(two.contains("[dataplane]\nqueues = 2\n"), "{}: {two}", mode.name());
            // Nothing else the mode set is lost.
            let without = two.replacen("queues = 2\n", "", 1);
            let expected = if config.contains("[dataplane]") {
                config.to_string()
            } else {
                format!("[dataplane]\n\n{config}")
            };
            assert_eq!(without, expected, "{}", mode.name());
        }
    }

    fn names(plan: &BenchPlan) -> Vec<String> {
        workloads(plan).into_iter().map(|step| step.name).collect()
    }

    #[test]
    fn workloads_keep_the_fixed_order_whatever_the_order_asked() {
        let mut plan = BenchPlan::quick(PathBuf::from("out"));
        assert_eq!(
            names(&plan),
            [
                "handshakes",
                "handshakes-browser",
                "requests",
                "requests-browser",
                "requests-h2",
                "bulk-1",
                "bulk-8",
                "idle",
                "idle-h2"
            ]
        );
        plan.only_workloads(&["idle".into(), "bulk-4".into(), "handshakes".into(), "bulk-4".into()])
            .unwrap();
        assert_eq!(names(&plan), ["handshakes", "bulk-4", "idle"]);
        plan.only_workloads(&["idle-h2".into(), "requests-h2".into(), "requests".into()])
            .unwrap();
        assert_eq!(names(&plan), ["requests", "requests-h2", "idle-h2"]);
        plan.only_workloads(&["requests-browser".into(), "handshakes-browser".into()])
            .unwrap();
        assert_eq!(names(&plan), ["handshakes-browser", "requests-browser"]);
    }

    #[test]
    fn an_unknown_workload_is_named_in_the_error() {
        let mut plan = BenchPlan::quick(PathBuf::from("out"));
        for bad in ["bulk-0", "bulk-x", "handshake", "requests-h3", "idle-browser"] {
            let e = plan.only_workloads(&[bad.to_string()]).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }
}
