//! `loupe run`: attaches the wire, opens the AF_XDP sockets, starts one pinned worker per
//! queue, and stops cleanly on SIGINT/SIGTERM. The XDP programs stay attached after the
//! daemon (pinned links), so the wire keeps bridging or dropping as configured.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use loupe_control::config::{Config, FailMode};

use crate::tls::ca::{CaRole, DecryptionCa};
use crate::tls::forge::Forger;
use crate::tls::probe::ProbeContext;
use crate::tls::record::DecryptionLog;
use crate::tls::session::{Profile, SplitTlsContext};
use crate::tls::trust::TrustStore;
use crate::wire::{PortSide, Wire, WireSettings, XdpAttachMode};
use crate::worker::{Worker, WorkerSettings, WorkerStats, WorkerTls};
use crate::xsk::{XskPort, XskSizes};

pub struct RunOptions {
    pub config: Config,
    pub config_file: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub log_dir: PathBuf,
    pub pin_dir: PathBuf,
    /// Extra CA files (`--trust-ca`) trusted for upstream validation on top of the system
    /// roots and the configured ones.
    pub trust_ca: Vec<PathBuf>,
}

static STOP: AtomicBool = AtomicBool::new(false);

/// Forged certificates kept (per process; the workers share the cache).
const FORGED_CERT_CACHE: usize = 4096;
/// How often `<state-dir>/counters.json` is rewritten.
const COUNTERS_INTERVAL: Duration = Duration::from_secs(1);

/// Publishes the counters as one JSON object in a file, replaced atomically (rename), so
/// scripts and tests can read them until the control socket serves them.
fn write_counters(path: &std::path::Path, wire: &Wire, workers: &[Arc<WorkerStats>], forger: &Forger) {
    let xdp = wire
        .counters()
        .map(|c| c.to_json())
        .unwrap_or_else(|e| format!("{{\"error\":{:?}}}", e.to_string()));
    let sum = |field: fn(&WorkerStats) -> &std::sync::atomic::AtomicU64| -> u64 {
        workers.iter().map(|w| field(w).load(Ordering::Relaxed)).sum()
    };
    let forge = forger.stats();
    let text = format!(
        "{{\"xdp\":{xdp},\"flows_opened\":{},\"flows_active\":{},\"orphan_segments\":{},\"malformed_frames\":{},\
         \"sessions_decrypted\":{},\"sessions_blocked\":{},\"sessions_aborted\":{},\"log_write_errors\":{},\
         \"forged_signed\":{},\"forged_cache_hits\":{},\"forged_cache_misses\":{},\"forged_evictions\":{}}}\n",
        sum(|w| &w.flows_opened),
        sum(|w| &w.flows_active),
        sum(|w| &w.orphan_segments),
        sum(|w| &w.malformed_frames),
        sum(|w| &w.sessions_decrypted),
        sum(|w| &w.sessions_blocked),
        sum(|w| &w.sessions_aborted),
        sum(|w| &w.log_write_errors),
        forge.signed,
        forge.cache_hits,
        forge.cache_misses,
        forge.evictions,
    );
    let tmp = path.with_extension("json.tmp");
    if let Err(err) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, path)) {
        tracing::warn!(path = %path.display(), %err, "cannot write the counters file");
    }
}

extern "C" fn request_stop(_signal: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, request_stop as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, request_stop as *const () as libc::sighandler_t);
    }
}

pub fn run(options: RunOptions) -> Result<()> {
    let d = &options.config.dataplane;
    for (what, dir) in [("state", &options.state_dir), ("log", &options.log_dir)] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating the {what} directory {}", dir.display()))?;
    }
    install_signal_handlers();
    let settings = WireSettings {
        inside: d.inside.clone(),
        outside: d.outside.clone(),
        inspect_ports: d.inspect_ports.clone(),
        fail_closed: d.fail == FailMode::Closed,
        drop_quic: false,
        pin_dir: options.pin_dir.clone(),
        mode: if d.xdp_mode == "generic" {
            XdpAttachMode::Generic
        } else {
            XdpAttachMode::Native
        },
    };
    let mut wire =
        Wire::attach(&settings).with_context(|| format!("attaching the wire to {} and {}", d.inside, d.outside))?;
    tracing::info!(
        inside = %d.inside, outside = %d.outside, ports = ?d.inspect_ports, queues = d.queues,
        fail = ?d.fail, mode = ?wire.mode(),
        config = %options.config_file.as_ref().map_or("lab defaults".to_string(), |p| p.display().to_string()),
        "wire attached"
    );

    // TLS: the trust store, the decryption CA (generated on first run), the forger whose
    // clones share one certificate cache, and the decryption log.
    let trust = TrustStore::from_files(true, &options.trust_ca).context("loading the trust store")?;
    let forger = match &options.config.ca {
        // The operator's CA; the untrusted CA still lives in the state directory.
        Some(files) => Forger::new(
            DecryptionCa::from_pem_files(CaRole::Decryption, &files.cert, &files.key)?,
            DecryptionCa::load_or_init(&options.state_dir, CaRole::Untrusted)?,
            FORGED_CERT_CACHE,
        )?,
        None => Forger::from_state_dir(&options.state_dir, FORGED_CERT_CACHE).context("loading the decryption CA")?,
    };
    tracing::info!(
        ca_sha256 = %forger.decryption_ca().fingerprint_sha256(), trust_anchors = trust.len(),
        "decryption CA ready; clients must trust the output of 'loupe ca show'"
    );
    let log = Arc::new(DecryptionLog::open(&options.log_dir)?);
    tracing::info!(path = %log.path().display(), "decryption log");
    let profile_config = options
        .config
        .profile("default")
        .expect("the default profile always exists");
    let profile = Profile::from_config(&profile_config);
    profile
        .validate()
        .map_err(|e| anyhow::anyhow!("profile \"default\": {e}"))?;

    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut handles = Vec::new();
    let mut all_stats = Vec::new();
    for queue in 0..d.queues {
        let inside = XskPort::open(&d.inside, queue, XskSizes::default())?;
        let outside = XskPort::open(&d.outside, queue, XskSizes::default())?;
        wire.register_socket(PortSide::Inside, queue, inside.raw_fd())?;
        wire.register_socket(PortSide::Outside, queue, outside.raw_fd())?;
        let tls = WorkerTls {
            profile: profile.clone(),
            context: SplitTlsContext::new(&profile, trust.build_store()?)
                .map_err(|e| anyhow::anyhow!("profile \"default\": {e}"))?,
            forger: forger.clone(),
            log: log.clone(),
        };
        let probe = ProbeContext::new().map_err(|e| anyhow::anyhow!("the TLS probe: {e}"))?;
        let stats = Arc::new(WorkerStats::default());
        all_stats.push(stats.clone());
        let worker_settings = WorkerSettings {
            queue,
            inspect_ports: d.inspect_ports.clone(),
            max_flows: d.max_flows,
            tcp_buffer: d.tcp_buffer,
            not_tls: options.config.decryption.not_tls,
        };
        let core = match d.first_core {
            Some(first) => cores.iter().find(|c| c.id == first + queue as usize).copied(),
            None => (!cores.is_empty()).then(|| cores[queue as usize % cores.len()]),
        };
        let handle = std::thread::Builder::new()
            .name(format!("loupe-worker-{queue}"))
            .spawn(move || {
                if let Some(core) = core {
                    if !core_affinity::set_for_current(core) {
                        tracing::warn!(queue, core = core.id, "could not pin worker to its core");
                    }
                }
                Worker::new(worker_settings, inside, outside, stats, tls, probe).run(&STOP);
            })
            .context("spawning a worker thread")?;
        handles.push(handle);
    }
    tracing::info!(workers = handles.len(), "loupe running; SIGINT or SIGTERM stops it");

    let counters_file = options.state_dir.join("counters.json");
    let mut last_write = std::time::Instant::now() - COUNTERS_INTERVAL;
    while !STOP.load(Ordering::Relaxed) && handles.iter().all(|h| !h.is_finished()) {
        if last_write.elapsed() >= COUNTERS_INTERVAL {
            write_counters(&counters_file, &wire, &all_stats, &forger);
            last_write = std::time::Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    STOP.store(true, Ordering::Relaxed);
    for handle in handles {
        if handle.join().is_err() {
            tracing::error!("a worker panicked");
        }
    }
    write_counters(&counters_file, &wire, &all_stats, &forger);
    let counters = wire.counters()?;
    let mut flows_opened = 0;
    let mut bytes = (0, 0);
    for s in &all_stats {
        flows_opened += s.flows_opened.load(Ordering::Relaxed);
        bytes.0 += s.bytes_client_to_server.load(Ordering::Relaxed);
        bytes.1 += s.bytes_server_to_client.load(Ordering::Relaxed);
    }
    tracing::info!(
        flows_opened, bytes_c2s = bytes.0, bytes_s2c = bytes.1, xdp = %counters.to_json(),
        fail = ?d.fail, "loupe stopped; the wire stays attached and now {}",
        if d.fail == FailMode::Closed { "drops inspected traffic" } else { "bridges everything" }
    );
    Ok(())
}
