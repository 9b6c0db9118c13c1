//! loupe-bench: load generator, origin server and report tools.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

use loupe_bench::handshakes::{run_handshakes, HandshakeSpec};
use loupe_bench::load::{parse_duration, run_load, LoadSpec, Workload};
use loupe_bench::lossy;
use loupe_bench::size::ByteSize;
use loupe_bench::soak;
use loupe_bench::steer;
use loupe_bench::syn_flood;
use loupe_bench::traffic::{compare_reports, read_report, run_client, run_server, ClientConfig, Mode, ServerConfig};

#[derive(Parser, Debug)]
#[command(name = "loupe-bench", version, about = "loupe load generator, lab tools and reports")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Writes loupe-bench's man pages and shell completions to DIR (scripts/package.sh).
    #[command(hide = true)]
    GenerateDocs {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// The bench: every mode (direct, loupe-bridge, xsk-forward, loupe-splice, loupe-decrypt,
    /// loupe-inspect, sslsplit, squid, mitmproxy) × every workload in a lab of its own; writes the
    /// report to --out.
    Run {
        /// One repetition, short durations, a 256 MiB bulk object.
        #[arg(long)]
        quick: bool,
        /// Seconds per mode (the test suite's run).
        #[arg(long, conflicts_with = "quick")]
        tiny: bool,
        /// Only these modes (in the fixed order).
        #[arg(long, value_enum, value_delimiter = ',')]
        modes: Vec<loupe_bench::runner::Mode>,
        /// Repetitions of each workload (default: 3, or 1 with --quick/--tiny).
        #[arg(long)]
        reps: Option<usize>,
        /// Only these workloads: handshakes, handshakes-browser, requests, requests-browser,
        /// requests-h2, bulk-1, bulk-8 (bulk-N for any stream count N), idle, idle-h2.
        #[arg(long, value_delimiter = ',')]
        workloads: Vec<String>,
        /// Where the report goes.
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        /// requests and requests-h2: offer this many requests per second in all, on a fixed
        /// schedule (open loop), so that the modes compared carry the same load; it must be
        /// below what the slowest mode sustains (default: closed loop, as fast as answered).
        #[arg(long, value_parser = loupe_bench::load::parse_rate)]
        rate: Option<f64>,
        /// handshakes and handshakes-browser: offer this many new connections per second in
        /// all, on a fixed schedule (open loop), so that latency is compared at the same
        /// load; it must be below what the slowest mode sustains (default: closed loop).
        #[arg(long, value_parser = loupe_bench::load::parse_rate)]
        handshake_rate: Option<f64>,
        /// The MTU of every end of the lab's wire (1280 to 9000; veth takes native XDP up
        /// to about 3,500).
        #[arg(long, default_value_t = 1500)]
        mtu: u32,
        /// Queues per lab port and loupe workers (1 to 64); with more than one the lab
        /// steers each connection to a queue by a symmetric hash (both legs on one).
        #[arg(long, default_value_t = 1)]
        queues: u32,
    },
    /// Accept wire-client connections: send each its random reply while receiving its
    /// payload, hash both directions, write one JSON line per connection.
    WireServer {
        /// Address to listen on; repeat for several (e.g. every lab server address).
        #[arg(long, required = true, value_delimiter = ',')]
        listen: Vec<SocketAddr>,
        /// Append one JSON line per connection here (default: stdout).
        #[arg(long)]
        report: Option<PathBuf>,
        /// Exit after this many connections have finished.
        #[arg(long)]
        max_conns: Option<usize>,
        /// Exit after this long whatever happens.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
        /// Fail a connection that moves no byte either way for this long.
        #[arg(long, default_value_t = 30)]
        idle_secs: u64,
    },
    /// Open concurrent connections, each pushing its own random payload while receiving
    /// the server's reply; write one JSON line per connection with SHA-256 of both
    /// directions. Exits non-zero if any connection failed.
    WireClient {
        /// host:port to connect to; repeat to spread connections round-robin.
        #[arg(long, required = true, value_delimiter = ',')]
        connect: Vec<String>,
        /// Bytes each connection sends (suffixes: KiB, MiB, GiB, kB, MB, GB).
        #[arg(long)]
        bytes: ByteSize,
        /// Bytes the server sends back on each connection.
        #[arg(long, default_value = "0")]
        reply_bytes: ByteSize,
        /// Concurrent connections.
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// The server reads to EOF before it replies (tests half-closed TCP).
        #[arg(long)]
        half_close: bool,
        /// Append one JSON line per connection here (default: stdout).
        #[arg(long)]
        report: Option<PathBuf>,
        /// Bound on the whole run.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
        /// Fail a connection that moves no byte either way for this long.
        #[arg(long, default_value_t = 30)]
        idle_secs: u64,
    },
    /// Check a client report against a server report: every connection matched by id,
    /// hashes and byte counts equal both ways.
    WireCompare {
        #[arg(long)]
        client: PathBuf,
        #[arg(long)]
        server: PathBuf,
    },
    /// Drop a per-mille of the frames an interface (of the current network namespace)
    /// receives and sends, and duplicate, corrupt (bad checksum) or reorder a per-mille
    /// of those it sends. Without --pin-dir it runs until killed; with it, pins the
    /// injector there and returns.
    LossyWire {
        #[arg(long)]
        iface: String,
        /// Frames dropped per thousand, each way.
        #[arg(long, default_value_t = 0)]
        per_mille: u32,
        /// Frames sent twice, per thousand sent.
        #[arg(long, default_value_t = 0)]
        duplicate_per_mille: u32,
        /// Frames sent with a payload bit flipped and the checksum left wrong, per thousand.
        #[arg(long, default_value_t = 0)]
        corrupt_per_mille: u32,
        /// Frames sent late (through an ifb), behind later ones, per thousand.
        #[arg(long, default_value_t = 0)]
        reorder_per_mille: u32,
        #[arg(long)]
        pin_dir: Option<PathBuf>,
    },
    /// Remove a loss injector pinned with `lossy-wire --pin-dir`.
    LossyRemove {
        #[arg(long)]
        pin_dir: PathBuf,
    },
    /// Print the frames a pinned loss injector passed and dropped.
    LossyCounters {
        #[arg(long)]
        pin_dir: PathBuf,
    },
    /// Steer an endpoint veth's frames over --queues TX queues by a symmetric hash of
    /// each connection's addresses and ports (a NIC's symmetric RSS, for the lab); pins
    /// the tc program under --pin-dir and returns. `lab.sh up --queues N` runs this.
    LabSteer {
        /// The network namespace (under /run/netns) holding --iface; default: this one.
        #[arg(long)]
        netns: Option<String>,
        #[arg(long)]
        iface: String,
        #[arg(long)]
        queues: u32,
        #[arg(long)]
        pin_dir: PathBuf,
    },
    /// Remove steering pinned with `lab-steer --pin-dir`.
    LabSteerRemove {
        #[arg(long)]
        pin_dir: PathBuf,
    },
    /// Print the frames pinned steering sent on each queue.
    LabSteerCounters {
        #[arg(long)]
        pin_dir: PathBuf,
    },
    /// The soak: loupe decrypting and inspecting under a steady mix (paced handshakes and
    /// requests, HTTP/2, bulk downloads, idle churn) in a lab of its own; samples its
    /// memory, descriptors and flows; writes <date>-soak.md/.json to --out. Exits non-zero
    /// if memory or descriptors were not flat (±5% after the warm-up), a flow leaked,
    /// a generator saw an error or the daemon logged one.
    Soak {
        /// How long: 30m (the full soak), 4m (the suite's).
        #[arg(long, default_value = "30m", value_parser = parse_duration)]
        duration: Duration,
        /// Not held to flatness: 2m, 60s.
        #[arg(long, default_value = "2m", value_parser = parse_duration)]
        warmup: Duration,
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
    },
    /// TCP SYNs to --target from random spoofed sources in 198.18.128.0/17, paced at --rate
    /// per second for --duration, through a raw socket of the current network namespace;
    /// prints a JSON report. Targets outside 198.18.0.0/15 are refused.
    SynFlood {
        /// IPv4 address and port, inside 198.18.0.0/15.
        #[arg(long)]
        target: std::net::SocketAddrV4,
        /// SYNs per second.
        #[arg(long, default_value_t = 60_000)]
        rate: u64,
        /// How long: 10s, 1m (at most 10 minutes).
        #[arg(long, value_parser = parse_duration)]
        duration: Duration,
    },
    /// N sequential full TLS handshakes (new TCP connection each, no resumption),
    /// verified against --cafile only; prints a JSON report. Exits non-zero if any failed.
    TlsHandshakes {
        /// host:port to connect to.
        #[arg(long)]
        connect: String,
        /// Server name to send and verify (default: the host of --connect).
        #[arg(long)]
        sni: Option<String>,
        /// PEM file of the CAs to trust (the system roots are not used).
        #[arg(long)]
        cafile: PathBuf,
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Offer at most TLS 1.2.
        #[arg(long)]
        tls12: bool,
        /// Bound on each connection, in seconds.
        #[arg(long, default_value_t = 10)]
        timeout_secs: u64,
    },
    /// Run one workload against an HTTPS (HTTP/1.1, or HTTP/2 for the -h2 ones) server for a warm-up and a measured
    /// duration; print what it measured as one JSON line. Connection failures are counted
    /// in `errors`, not fatal. The idle workload writes `ready <n>` to stderr once its
    /// sessions are all open.
    Load {
        /// Server address (IP:PORT).
        #[arg(long)]
        connect: SocketAddr,
        /// Server name sent as SNI and Host, and verified in the certificate.
        #[arg(long)]
        sni: String,
        /// PEM file of the only CAs trusted.
        #[arg(long)]
        ca: PathBuf,
        #[arg(long, value_enum)]
        workload: LoadKind,
        /// Path requested.
        #[arg(long, default_value = "/1k")]
        path: String,
        /// Connections in flight (handshakes, requests; idle: sessions being opened).
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Bulk: parallel downloads.
        #[arg(long, default_value_t = 8)]
        streams: usize,
        /// Idle: sessions held open.
        #[arg(long, default_value_t = 10000)]
        sessions: usize,
        /// Run before measuring (handshakes, requests): 2s, 500ms, 1m.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        warmup: Duration,
        /// Measured time (bulk: upper bound; idle: how long the sessions are held).
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// Bulk: the object's SHA-256 (hex), checked for every stream.
        #[arg(long)]
        sha256: Option<String>,
        /// Also report the CPU these processes (the appliance's) used in the measured
        /// interval.
        #[arg(long, value_delimiter = ',')]
        watch_pids: Vec<u32>,
        /// Requests (handshakes): offer this many requests (new connections) per second in
        /// all, each connection on a fixed schedule (default: each sends when its last
        /// request is answered).
        #[arg(long)]
        rate: Option<f64>,
        /// The ClientHello's key shares: classic (X25519) or browser (X25519MLKEM768 and
        /// X25519).
        #[arg(long, value_enum, default_value = "classic")]
        hello: loupe_bench::load::HelloShape,
    },
    /// HTTP inspection alone, in this process, without a lab: CPU per transaction of the
    /// engine and its EVE line over the bench's HTTP/1.1 and HTTP/2 exchanges.
    InspectMicro {
        /// Seconds of CPU each of the four measurements runs.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Sessions advanced in turn in the interleaved measurements.
        #[arg(long, default_value_t = 2000)]
        sessions: usize,
        /// Transactions per session.
        #[arg(long, default_value_t = 50)]
        transactions: usize,
        /// Only this protocol's measurements (e.g. to profile one of them with perf).
        #[arg(long, value_enum)]
        protocol: Option<loupe_bench::inspect_bench::MicroProtocol>,
        /// Only this kind of measurement.
        #[arg(long, value_enum)]
        kind: Option<loupe_bench::inspect_bench::MicroKind>,
        /// Print the report as JSON (the table goes to stderr).
        #[arg(long)]
        json: bool,
    },
    /// The signature engine's microbench: a generated set of ET-style rules that match
    /// none of its traffic; prints load time, memory (RSS delta), the prefilter's rate over
    /// a request head and a 64 KiB body, and full evaluation of one transaction with 0
    /// rules, the suite's rules and the generated set, as ratios within the run.
    SignaturesMicro {
        /// Generated rules.
        #[arg(long, default_value_t = 5000)]
        rules: usize,
        /// Seconds each measurement runs (seven of them).
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Print the report as JSON (the table goes to stderr).
        #[arg(long)]
        json: bool,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum LoadKind {
    Handshakes,
    Requests,
    /// Keep-alive requests over HTTP/2 (ALPN h2), one at a time per connection.
    RequestsH2,
    Bulk,
    Idle,
    /// Idle HTTP/2 sessions (ALPN h2).
    IdleH2,
}

/// A microbench's report: its table, or with `--json` the JSON (the table to stderr).
fn print_micro_report(json: bool, table: &str, report: &impl serde::Serialize) -> Result<ExitCode> {
    if json {
        eprint!("{table}");
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{table}");
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loupe-bench: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cmd: Cmd) -> Result<ExitCode> {
    match cmd {
        Cmd::GenerateDocs { out } => {
            use clap::CommandFactory;
            let generated = loupe_control::docs::generate(Cli::command(), &out)?;
            for path in generated.man_pages.iter().chain(&generated.completions) {
                println!("{}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run {
            quick,
            tiny,
            modes,
            reps,
            workloads,
            out,
            rate,
            handshake_rate,
            mtu,
            queues,
        } => {
            use loupe_bench::runner::{BenchPlan, Mode};
            let mut plan = if tiny {
                BenchPlan::tiny(out)
            } else if quick {
                BenchPlan::quick(out)
            } else {
                BenchPlan::full(out)
            };
            if !modes.is_empty() {
                plan.modes = Mode::ORDER.into_iter().filter(|m| modes.contains(m)).collect();
            }
            if let Some(reps) = reps {
                plan.reps = reps.max(1);
            }
            if !workloads.is_empty() {
                plan.only_workloads(&workloads)?;
            }
            anyhow::ensure!((1280..=9000).contains(&mtu), "--mtu must be 1280 to 9000, not {mtu}");
            plan.mtu = mtu;
            anyhow::ensure!((1..=64).contains(&queues), "--queues must be 1 to 64, not {queues}");
            plan.queues = queues;
            plan.request_rate = rate;
            plan.handshake_rate = handshake_rate;
            let report = loupe_bench::runner::run(&plan)?;
            println!("{}", report.to_markdown());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::WireServer {
            listen,
            report,
            max_conns,
            timeout_secs,
            idle_secs,
        } => {
            let cfg = ServerConfig {
                listen,
                report,
                max_conns,
                timeout: Duration::from_secs(timeout_secs),
                idle: Duration::from_secs(idle_secs),
            };
            let s = run_server(&cfg, |bound| {
                let list: Vec<String> = bound.iter().map(|a| a.to_string()).collect();
                eprintln!("wire-server: listening on {}", list.join(", "));
            })?;
            eprintln!(
                "wire-server: {} connection(s), {} failed{}",
                s.accepted,
                s.failed,
                if s.incomplete {
                    format!(", timed out before --max-conns {}", cfg.max_conns.unwrap_or(0))
                } else {
                    String::new()
                }
            );
            Ok(if s.failed > 0 || s.incomplete {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Cmd::WireClient {
            connect,
            bytes,
            reply_bytes,
            connections,
            half_close,
            report,
            timeout_secs,
            idle_secs,
        } => {
            let cfg = ClientConfig {
                connect,
                bytes: bytes.0,
                reply_bytes: reply_bytes.0,
                connections,
                mode: if half_close { Mode::HalfClose } else { Mode::Duplex },
                report,
                timeout: Duration::from_secs(timeout_secs),
                idle: Duration::from_secs(idle_secs),
            };
            let s = run_client(&cfg)?;
            let failed = s.failed();
            eprintln!(
                "wire-client: {} connection(s), {} failed, {} sent + {} received in {:.2}s ({:.2} Gbit/s)",
                s.reports.len(),
                failed,
                ByteSize(s.reports.iter().map(|r| r.sent_bytes).sum()),
                ByteSize(s.reports.iter().map(|r| r.received_bytes).sum()),
                s.elapsed.as_secs_f64(),
                s.gbit_per_sec()
            );
            for r in s.reports.iter().filter(|r| !r.ok()).take(10) {
                eprintln!("  conn {}: {}", r.id, r.error.as_deref().unwrap_or(""));
            }
            Ok(if failed > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Cmd::LossyWire {
            iface,
            per_mille,
            duplicate_per_mille,
            corrupt_per_mille,
            reorder_per_mille,
            pin_dir,
        } => {
            let faults = lossy::Faults {
                loss: per_mille,
                duplicate: duplicate_per_mille,
                corrupt: corrupt_per_mille,
                reorder: reorder_per_mille,
            };
            lossy::run_faulty_wire(&iface, faults, pin_dir.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::LossyRemove { pin_dir } => {
            lossy::remove_lossy_wire(&pin_dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::LossyCounters { pin_dir } => {
            let c = lossy::lossy_counters(&pin_dir)?;
            println!(
                "ingress passed {} dropped {}, egress passed {} dropped {} duplicated {} corrupted {} reordered {}",
                c.ingress_passed,
                c.ingress_dropped,
                c.egress_passed,
                c.egress_dropped,
                c.egress_duplicated,
                c.egress_corrupted,
                c.egress_reordered
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::LabSteer {
            netns,
            iface,
            queues,
            pin_dir,
        } => {
            steer::run_lab_steer(netns.as_deref(), &iface, queues, &pin_dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::LabSteerRemove { pin_dir } => {
            steer::remove_lab_steer(&pin_dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::LabSteerCounters { pin_dir } => {
            let c = steer::lab_steer_counters(&pin_dir)?;
            let queues: Vec<String> = c
                .per_queue
                .iter()
                .enumerate()
                .map(|(q, n)| format!("queue {q} {n}"))
                .collect();
            println!("{}, unsteered {}", queues.join(", "), c.unsteered);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Soak { duration, warmup, out } => {
            let report = soak::run_soak(&soak::SoakSpec {
                duration,
                warmup,
                sample_every: Duration::from_secs(10),
            })?;
            let written = soak::write_report(&report, &out)?;
            eprintln!("wrote {}", written.display());
            let problems = report.problems();
            for p in &problems {
                eprintln!("soak: {p}");
            }
            Ok(if problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::SynFlood { target, rate, duration } => {
            let report = syn_flood::run_syn_flood(&syn_flood::FloodSpec { target, rate, duration })?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::TlsHandshakes {
            connect,
            sni,
            cafile,
            count,
            tls12,
            timeout_secs,
        } => {
            let sni = sni.unwrap_or_else(|| {
                connect
                    .rsplit_once(':')
                    .map_or(connect.as_str(), |(h, _)| h)
                    .to_string()
            });
            let spec = HandshakeSpec {
                connect,
                sni,
                ca_file: cafile,
                count,
                max_version: tls12.then_some(boring::ssl::SslVersion::TLS1_2),
                timeout: Duration::from_secs(timeout_secs),
            };
            let report = run_handshakes(&spec)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(if report.failed > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Cmd::Load {
            connect,
            sni,
            ca,
            workload,
            path,
            concurrency,
            streams,
            sessions,
            warmup,
            duration,
            sha256,
            watch_pids,
            rate,
            hello,
        } => {
            let spec = LoadSpec {
                target: connect,
                sni,
                ca_file: ca,
                path,
                workload: match workload {
                    LoadKind::Handshakes => Workload::Handshakes,
                    LoadKind::Requests => Workload::Requests,
                    LoadKind::RequestsH2 => Workload::RequestsH2,
                    LoadKind::Bulk => Workload::Bulk { streams },
                    LoadKind::Idle => Workload::Idle { sessions },
                    LoadKind::IdleH2 => Workload::IdleH2 { sessions },
                },
                concurrency,
                warmup,
                duration,
                expect_sha256: sha256,
                watch_pids,
                rate,
                hello,
            };
            let result = run_load(&spec)?;
            println!("{}", serde_json::to_string(&result)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::InspectMicro {
            seconds,
            sessions,
            transactions,
            protocol,
            kind,
            json,
        } => {
            use loupe_bench::inspect_bench::{run_micro, InspectMicroSpec};
            let report = run_micro(&InspectMicroSpec {
                seconds,
                sessions,
                transactions,
                protocol,
                kind,
            })?;
            print_micro_report(json, &report.to_table(), &report)
        }
        Cmd::SignaturesMicro { rules, seconds, json } => {
            use loupe_bench::signature_bench::{run_micro, MicroSpec, DEFAULT_SEED};
            let report = run_micro(&MicroSpec {
                rules,
                seconds,
                seed: DEFAULT_SEED,
            })?;
            print_micro_report(json, &report.to_table(), &report)
        }
        Cmd::WireCompare { client, server } => {
            let c = read_report(&client)?;
            let s = read_report(&server)?;
            match compare_reports(&c, &s) {
                Ok(cmp) => {
                    println!(
                        "ok: {} connection(s) verified, {} client→server, {} server→client",
                        cmp.connections,
                        ByteSize(cmp.client_to_server_bytes),
                        ByteSize(cmp.server_to_client_bytes)
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(m) => {
                    eprint!("{m}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}
