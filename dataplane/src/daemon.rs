//! `loupe run`: attaches the wire, opens the AF_XDP sockets, starts one pinned worker per
//! queue, and stops cleanly on SIGINT/SIGTERM. The XDP programs stay attached after the
//! daemon (pinned links), so the wire keeps bridging or dropping as configured.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use boring::pkey::PKey;
use boring::x509::X509;
use loupe_control::config::{Config, ExportKind, FailMode, RuleAction};

use crate::policy::{unix_now, Exclusion, ExclusionCache, Policy, PolicyInputs, ProfileContext};
use crate::tls::forge::ForgedCert;

use crate::capture::plaintext::PlaintextExport;
use crate::control_plane::{ControlPlane, LogFiles, PolicySources, WorkerHandle};
use crate::eve::EveLog;
use crate::log_writer::LogWriter;
use crate::metrics::endpoint::MetricsListener;
use crate::metrics::MetricsSources;
use crate::privileges;
use crate::tls::ca::{CaRole, DecryptionCa};
use crate::tls::forge::Forger;
use crate::tls::probe::ProbeContext;
use crate::tls::record::DecryptionLog;
use crate::tls::trust::{ImportedTrust, PinnedLeafs, TrustStore};
use crate::wire::{NoDecryptEntry, PortSide, Wire, WireSettings, XdpAttachMode};
use crate::worker::{
    ExclusionRequest, PresentedChain, Worker, WorkerControl, WorkerPolicy, WorkerSettings, WorkerStats, WorkerTls,
    CHAIN_QUEUE, QUERY_QUEUE,
};
use crate::xsk::{XskPort, XskSizes};
use loupe_control::overrides::ProfileOverrides;
use loupe_control::protocol::ControlCall;
use loupe_control::server::{ControlServer, ServerSettings};

pub struct RunOptions {
    pub config: Config,
    pub config_file: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub log_dir: PathBuf,
    pub pin_dir: PathBuf,
    /// Extra CA files (`--trust-ca`) trusted for upstream validation on top of the system
    /// roots and the configured ones.
    pub trust_ca: Vec<PathBuf>,
    /// The control socket (`--control-socket`); default: `[control] socket`.
    pub control_socket: Option<PathBuf>,
}

static STOP: AtomicBool = AtomicBool::new(false);

/// Forged certificates kept (per process; the workers share the cache).
const FORGED_CERT_CACHE: usize = 4096;
/// A control connection silent this long is told so and closed.
const CONTROL_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Control connections served at once.
const CONTROL_CONNECTIONS: usize = 32;
/// How long a control connection waits for the control thread's answer.
const CONTROL_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often `<state-dir>/counters.json` is rewritten.
const COUNTERS_INTERVAL: Duration = Duration::from_secs(1);
/// How often the log files are checked for a rotation that renamed them without telling
/// loupe (SIGHUP or `loupectl log reopen` are the prompt ways).
const ROTATION_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// How often the control thread refreshes what the metrics endpoint cannot read itself
/// (XDP counters, rule hits): a scrape sees them at most this old.
const METRICS_FACTS_INTERVAL: Duration = Duration::from_millis(250);

/// Publishes the counters as one JSON object in a file, replaced atomically (rename), so
/// scripts and tests can read them until the control socket serves them.
fn write_counters(path: &Path, wire: &Wire, workers: &[Arc<WorkerStats>], forger: &Forger, policy: &Policy) {
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
         \"sessions_decrypted\":{},\"sessions_spliced\":{},\"sessions_blocked\":{},\"sessions_aborted\":{},\"log_write_errors\":{},\
         \"forged_signed\":{},\"forged_cache_hits\":{},\"forged_cache_misses\":{},\"forged_evictions\":{},\
         \"config_version\":{},\"exclusions\":{},\"exclusions_dropped\":{},\"rules\":{}}}\n",
        sum(|w| &w.flows_opened),
        sum(|w| &w.flows_active),
        sum(|w| &w.orphan_segments),
        sum(|w| &w.malformed_frames),
        sum(|w| &w.sessions_decrypted),
        sum(|w| &w.sessions_spliced),
        sum(|w| &w.sessions_blocked),
        sum(|w| &w.sessions_aborted),
        sum(|w| &w.log_write_errors),
        forge.signed,
        forge.cache_hits,
        forge.cache_misses,
        forge.evictions,
        policy.version,
        policy.exclusions.len(),
        sum(|w| &w.exclusions_dropped),
        rules_json(policy, &wire.rule_hits().unwrap_or_default()),
    );
    let tmp = path.with_extension("json.tmp");
    if let Err(err) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, path)) {
        tracing::warn!(path = %path.display(), %err, "cannot write the counters file");
    }
}

/// `[{"name":"banks","hits":3,"hits_xdp":0}, …, {"name":"default",…}]`: flows each rule
/// decided, in userspace or (its client SYNs) in XDP.
pub(crate) fn rules_json(policy: &Policy, xdp_hits: &[u64]) -> String {
    let rules: Vec<serde_json::Value> = policy
        .hits()
        .into_iter()
        .enumerate()
        .map(|(index, (name, hits))| {
            let xdp = xdp_hits.get(index).copied().unwrap_or(0);
            serde_json::json!({ "name": name, "hits": hits + xdp, "hits_xdp": xdp })
        })
        .collect();
    serde_json::Value::from(rules).to_string()
}

/// The trust store for upstream validation: system roots (unless turned off), the
/// configured CA files, `--trust-ca` files and the CAs imported into the state directory;
/// and the server certificates imported pinned to their hosts.
pub(crate) fn trust_store(
    config: &Config,
    trust_ca: &[PathBuf],
    state_dir: Option<&Path>,
) -> Result<(TrustStore, PinnedLeafs)> {
    let mut files = config.trust.ca_files.clone();
    files.extend(trust_ca.iter().cloned());
    let mut store = TrustStore::from_files(config.trust.system_roots, &files).context("loading the trust store")?;
    let pins = match state_dir {
        Some(dir) => {
            let imported = ImportedTrust::load(dir).context("loading the imported certificates")?;
            store.add_imported(&imported)?;
            imported.pinned()
        }
        None => PinnedLeafs::default(),
    };
    Ok((store, pins))
}

/// A decrypt-inbound rule's chain (leaf first) and key, checked to belong together.
fn inbound_certificate(rule: &str, cert: &Path, key: &Path) -> Result<ForgedCert> {
    let read = |path: &Path| std::fs::read(path).with_context(|| format!("rule {rule:?}: reading {}", path.display()));
    let chain = X509::stack_from_pem(&read(cert)?)
        .with_context(|| format!("rule {rule:?}: {}: not a PEM certificate chain", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("rule {rule:?}: {}: holds no certificate", cert.display());
    }
    let key_pem = read(key)?;
    let pkey = PKey::private_key_from_pem(&key_pem)
        .with_context(|| format!("rule {rule:?}: {}: not a PEM private key", key.display()))?;
    let public = chain[0].public_key()?;
    if !public.public_eq(&pkey) {
        anyhow::bail!(
            "rule {rule:?}: the key {} does not belong to the certificate {}",
            key.display(),
            cert.display()
        );
    }
    Ok(ForgedCert { chain, key: pkey })
}

/// Compiles the configuration into a policy snapshot: profiles with their TLS contexts,
/// categories from their files, inbound certificates. `loupe check` runs this too, so a
/// file that checks is a file that runs.
/// What `loupe check` says about a configuration beyond "ok": a profile that lets the
/// upstream hello be weaker than the client's is named (`legacy_servers`).
pub fn check_notes(config: &Config) -> Vec<String> {
    config
        .profiles
        .iter()
        .filter(|p| p.legacy_servers)
        .map(|profile| {
            format!(
                "note: profile {:?} has legacy_servers = true: its upstream hello may be weaker than the \
                 client's (versions down to TLS {}, suites, groups and signature algorithms the client did \
                 not offer)",
                profile.name, profile.min_version
            )
        })
        .collect()
}

pub fn build_policy(
    config: &Config,
    trust_ca: &[PathBuf],
    state_dir: Option<&Path>,
    version: u64,
    exclusions: ExclusionCache,
) -> Result<Policy> {
    build_policy_logging(config, trust_ca, state_dir, None, version, exclusions)
}

/// [`build_policy`] for a running daemon: with its log directory, rules that export keys
/// get the key log (opened once per path and shared by every later snapshot).
pub fn build_policy_logging(
    config: &Config,
    trust_ca: &[PathBuf],
    state_dir: Option<&Path>,
    log_dir: Option<&Path>,
    version: u64,
    exclusions: ExclusionCache,
) -> Result<Policy> {
    let (trust, pins) = trust_store(config, trust_ca, state_dir)?;
    tracing::info!(trust_anchors = trust.len(), pinned = pins.len(), "trust store loaded");
    let mut settings = config.profiles.clone();
    if !settings.iter().any(|p| p.name == "default") {
        settings.insert(0, loupe_control::config::Profile::builtin_default());
    }
    let mut profiles = Vec::new();
    for profile in &settings {
        let context = ProfileContext::new(profile, trust.build_store()?, pins.clone()).map_err(anyhow::Error::msg)?;
        profiles.push(Arc::new(context));
    }
    let mut inbound = HashMap::new();
    for rule in config.rules.iter().filter(|r| r.action == RuleAction::DecryptInbound) {
        let (Some(cert), Some(key)) = (&rule.certificate, &rule.key) else {
            anyhow::bail!("rule {:?}: decrypt-inbound needs certificate and key", rule.name);
        };
        inbound.insert(rule.name.clone(), Arc::new(inbound_certificate(&rule.name, cert, key)?));
    }
    let categories = config.load_categories()?;
    let inputs = PolicyInputs {
        categories,
        profiles,
        inbound,
    };
    let mut policy = Policy::build(config, inputs, version, exclusions).map_err(anyhow::Error::msg)?;
    if let Some(log_dir) = log_dir.filter(|_| config.exports(ExportKind::Keylog)) {
        let path = config.export.keylog_path(log_dir);
        policy.keylog =
            Some(crate::tls::keylog::shared(&path).with_context(|| format!("opening the key log {}", path.display()))?);
    }
    Ok(policy)
}

/// The policy's XDP-enforceable no-decrypt rules as map entries.
pub(crate) fn xdp_entries(policy: &Policy, inspect_ports: &[u16]) -> Vec<NoDecryptEntry> {
    policy
        .xdp_bypasses(inspect_ports)
        .into_iter()
        .map(|b| NoDecryptEntry {
            addr: b.server.addr,
            prefix: b.server.prefix,
            port: b.port,
            rule: b.rule as u32,
        })
        .collect()
}

/// The profile changes made with `loupectl profile set` (kept in the state directory) and
/// the configuration with them applied. Changes that no longer apply (the file changed
/// under them) are dropped with a warning rather than keeping the daemon from starting.
fn saved_overrides(config: &Config, state_dir: &Path) -> (ProfileOverrides, Config) {
    let overrides = ProfileOverrides::load(state_dir).unwrap_or_else(|err| {
        tracing::warn!(%err, "ignoring the saved profile changes");
        ProfileOverrides::default()
    });
    match overrides.apply(config) {
        Ok(effective) => {
            if !overrides.changes.is_empty() {
                tracing::info!(changes = overrides.changes.len(), "saved profile changes applied");
            }
            (overrides, effective)
        }
        Err(err) => {
            tracing::warn!(%err, "the saved profile changes do not apply to this configuration; ignoring them");
            (ProfileOverrides::default(), config.clone())
        }
    }
}

/// Where the exclusion cache is kept across restarts.
fn exclusions_path(state_dir: &Path) -> PathBuf {
    state_dir.join("exclusions.json")
}

fn load_exclusions(config: &Config, state_dir: &Path) -> ExclusionCache {
    let mut cache = ExclusionCache::new(config.exclusions.ttl, config.exclusions.max_entries);
    let path = exclusions_path(state_dir);
    match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice::<Vec<Exclusion>>(&bytes) {
            Ok(saved) => cache.restore(saved, unix_now()),
            Err(err) => tracing::warn!(path = %path.display(), %err, "ignoring an unreadable exclusion cache"),
        },
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => tracing::warn!(path = %path.display(), %err, "cannot read the exclusion cache"),
    }
    cache
}

pub(crate) fn save_exclusions(cache: &ExclusionCache, state_dir: &Path) {
    let path = exclusions_path(state_dir);
    let entries: Vec<&Exclusion> = cache.entries().collect();
    let tmp = path.with_extension("json.tmp");
    let written = serde_json::to_vec_pretty(&entries)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|_| std::fs::rename(&tmp, &path));
    if let Err(err) = written {
        tracing::warn!(path = %path.display(), %err, "cannot save the exclusion cache");
    }
}

/// Tells systemd (`$NOTIFY_SOCKET`) how start-up or shutdown goes; outside systemd there
/// is no socket and nothing is sent.
fn notify_service_manager(state: sd_notify::NotifyState) {
    if let Err(err) = sd_notify::notify(&[state]) {
        tracing::warn!(%err, "cannot notify the service manager");
    }
}

extern "C" fn request_stop(_signal: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// SIGHUP: log rotation renamed the log files. The control loop reopens them (opening
/// files is no work for a signal handler).
static REOPEN_LOGS: AtomicBool = AtomicBool::new(false);

extern "C" fn request_log_reopen(_signal: libc::c_int) {
    REOPEN_LOGS.store(true, Ordering::Relaxed);
}

fn install_signal_handlers() {
    // SAFETY: the handlers only store to atomics, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, request_stop as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, request_stop as *const () as libc::sighandler_t);
        // Not the default (terminate): logrotate's postrotate and `systemctl kill -s HUP`
        // ask for a reopen, as with most daemons.
        libc::signal(libc::SIGHUP, request_log_reopen as *const () as libc::sighandler_t);
    }
}

/// A configuration error `loupe run` met before starting anything: the file itself, or a
/// policy that cannot be built from it (a category list, certificate or key it names that
/// cannot be read, a URL rule that does not compile). Starting again cannot help, so
/// `loupe run` exits with EX_CONFIG for it.
#[derive(Debug)]
pub struct InvalidConfiguration(pub anyhow::Error);

impl std::fmt::Display for InvalidConfiguration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for InvalidConfiguration {}

pub fn run(options: RunOptions) -> Result<()> {
    let d = &options.config.dataplane;
    for (what, dir) in [("state", &options.state_dir), ("log", &options.log_dir)] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating the {what} directory {}", dir.display()))?;
    }
    install_signal_handlers();
    let exclusions = load_exclusions(&options.config, &options.state_dir);
    let (overrides, effective) = saved_overrides(&options.config, &options.state_dir);
    let policy = Arc::new(
        build_policy_logging(
            &effective,
            &options.trust_ca,
            Some(&options.state_dir),
            Some(&options.log_dir),
            1,
            exclusions,
        )
        .map_err(InvalidConfiguration)?,
    );
    tracing::info!(
        config_version = policy.version,
        rules = policy.rule_names().count(),
        excluded = policy.exclusions.len(),
        "policy loaded"
    );
    let bypasses = xdp_entries(&policy, &d.inspect_ports);
    let settings = WireSettings {
        inside: d.inside.clone(),
        outside: d.outside.clone(),
        inspect_ports: d.inspect_ports.clone(),
        fail_closed: d.fail == FailMode::Closed,
        drop_quic: d.drop_quic,
        pin_dir: options.pin_dir.clone(),
        queues: d.queues,
        mode: if d.xdp_mode == "generic" {
            XdpAttachMode::Generic
        } else {
            XdpAttachMode::Native
        },
    };
    let mut wire = Wire::attach_with_no_decrypt(&settings, &bypasses)
        .with_context(|| format!("attaching the wire to {} and {}", d.inside, d.outside))?;
    tracing::info!(entries = bypasses.len(), "no-decrypt rules enforced in XDP");
    tracing::info!(
        inside = %d.inside, outside = %d.outside, ports = ?d.inspect_ports, queues = d.queues,
        fail = ?d.fail, mode = ?wire.mode(),
        config = %options.config_file.as_ref().map_or("lab defaults".to_string(), |p| p.display().to_string()),
        "wire attached"
    );
    if d.forward_only {
        tracing::warn!(
            "[dataplane] forward_only: the workers copy steered frames port to port; nothing is decrypted, inspected or logged"
        );
    }

    // TLS: the trust store, the decryption CA (generated on first run), the forger whose
    // clones share one certificate cache, and the decryption log.
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
        ca_sha256 = %forger.decryption_ca().fingerprint_sha256(),
        "decryption CA ready; clients must trust the output of 'loupe ca show'"
    );
    let log = Arc::new(DecryptionLog::open(&options.log_dir)?);
    tracing::info!(path = %log.path().display(), "decryption log");
    let eve = Arc::new(EveLog::open(&options.log_dir)?);
    tracing::info!(path = %eve.path().display(), "EVE log");
    let log_files = LogFiles {
        decryption: Arc::clone(&log),
        eve: Arc::clone(&eve),
    };
    // Every AF_XDP socket before the capabilities go (CAP_NET_RAW, locked UMEM).
    let mut queue_ports = Vec::new();
    for queue in 0..d.queues {
        let inside = XskPort::open(&d.inside, queue, XskSizes::default())?;
        let outside = XskPort::open(&d.outside, queue, XskSizes::default())?;
        for port in [&inside, &outside] {
            match port.zero_copy_refused() {
                Some(reason) => {
                    tracing::info!(port = %port.name, queue, %reason, "zero-copy AF_XDP refused: copy mode")
                }
                None => tracing::info!(port = %port.name, queue, "zero-copy AF_XDP"),
            }
            if let Some(reason) = port.multi_buffer_refused() {
                tracing::warn!(port = %port.name, queue, %reason, "multi-buffer AF_XDP refused: one frame per packet");
            }
            if port.ip_mtu() < port.interface_mtu() {
                tracing::warn!(
                    port = %port.name,
                    mtu = port.interface_mtu(),
                    used = port.ip_mtu(),
                    multi_buffer = port.multi_buffer(),
                    "the interface's MTU exceeds what the port carries: loupe's TCP segments stay within {} bytes",
                    port.ip_mtu()
                );
            } else {
                tracing::info!(port = %port.name, queue, mtu = port.ip_mtu(), multi_buffer = port.multi_buffer(), "TCP on this port follows its MTU");
            }
        }
        wire.register_socket(PortSide::Inside, queue, inside.raw_fd())?;
        wire.register_socket(PortSide::Outside, queue, outside.raw_fd())?;
        queue_ports.push((queue, inside, outside));
    }
    let socket = options
        .control_socket
        .clone()
        .unwrap_or_else(|| options.config.control.socket.clone());
    let server = ControlServer::bind(ServerSettings {
        path: socket.clone(),
        group: options.config.control.group.clone(),
        idle_timeout: CONTROL_IDLE_TIMEOUT,
        max_connections: CONTROL_CONNECTIONS,
        log_file: log.path().to_path_buf(),
        call_timeout: CONTROL_CALL_TIMEOUT,
    })
    .with_context(|| format!("opening the control socket {}", socket.display()))?;
    // Bound now, so a port already in use stops the start with the address named; served
    // by a thread started after the capabilities are gone.
    let metrics_listener = options.config.metrics.listen.map(MetricsListener::bind).transpose()?;

    // Still one thread: the capabilities go here, for every thread started below.
    let dropped = privileges::drop_all().context("dropping capabilities after start-up")?;
    tracing::info!(
        bounding_set_emptied = dropped.bounding_set_emptied,
        "capabilities dropped: the daemon keeps none after start-up"
    );

    // Finished once the workers are: the thread then writes what they handed over.
    let (log_writer, logs) = LogWriter::start(eve, log).context("starting the log writer thread")?;
    // Kept to the end of `run`: dropping it finishes the writer thread's last file.
    let (_plaintext_export, export_tap) = if effective.exports(ExportKind::Pcap) {
        let dir = effective.export.dir_in(&options.log_dir);
        let (export, tap) =
            PlaintextExport::start(&dir, effective.export.pcap_max_bytes, effective.export.pcap_max_files)
                .map_err(|e| anyhow::anyhow!("starting the plaintext pcap export in {}: {e}", dir.display()))?;
        tracing::info!(dir = %dir.display(), "plaintext pcap export");
        (Some(export), Some(tap))
    } else {
        (None, None)
    };
    let (exclusion_tx, exclusion_rx) = crossbeam_channel::bounded::<ExclusionRequest>(1024);
    let (chain_tx, chain_rx) = crossbeam_channel::bounded::<PresentedChain>(CHAIN_QUEUE);
    let mut worker_handles = Vec::new();
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut handles = Vec::new();
    let mut all_stats = Vec::new();
    for (queue, inside, outside) in queue_ports {
        let af_xdp = [inside.mode(), outside.mode()];
        let multi_buffer = [inside.multi_buffer(), outside.multi_buffer()];
        let ip_mtu = [inside.ip_mtu(), outside.ip_mtu()];
        let tls = WorkerTls {
            forger: forger.clone(),
            logs: logs.clone(),
            export: export_tap.clone(),
        };
        let (policy_tx, policy_rx) = crossbeam_channel::bounded(8);
        let policy_queue = policy_rx.clone();
        let (query_tx, query_rx) = crossbeam_channel::bounded(QUERY_QUEUE);
        let (capture_tx, capture_rx) = crossbeam_channel::bounded(4);
        let worker_policy = WorkerPolicy {
            current: Arc::clone(&policy),
            updates: policy_rx,
            exclusions: exclusion_tx.clone(),
        };
        let worker_control = WorkerControl {
            queries: query_rx,
            chains: chain_tx.clone(),
            capture: capture_rx,
        };
        let probe = ProbeContext::new().map_err(|e| anyhow::anyhow!("the TLS probe: {e}"))?;
        let stats = Arc::new(WorkerStats::default());
        all_stats.push(stats.clone());
        let worker_settings = WorkerSettings {
            queue,
            inspect_ports: d.inspect_ports.clone(),
            max_flows: d.max_flows,
            max_half_open: d.max_half_open,
            syn_proxy_above: d.syn_proxy_above,
            tcp_buffer: d.tcp_buffer,
            forward_only: d.forward_only,
            busy_poll: std::time::Duration::from_micros(d.busy_poll_us),
        };
        let core = match d.first_core {
            Some(first) => cores.iter().find(|c| c.id == first + queue as usize).copied(),
            None => (!cores.is_empty()).then(|| cores[queue as usize % cores.len()]),
        };
        worker_handles.push(WorkerHandle {
            queue,
            core: core.map(|c| c.id),
            af_xdp,
            multi_buffer,
            ip_mtu,
            stats: stats.clone(),
            policy: policy_tx,
            policy_queue,
            queries: query_tx,
            capture: capture_tx,
        });
        let handle = std::thread::Builder::new()
            .name(format!("loupe-worker-{queue}"))
            .spawn(move || {
                if let Some(core) = core {
                    if !core_affinity::set_for_current(core) {
                        tracing::warn!(queue, core = core.id, "could not pin worker to its core");
                    }
                }
                Worker::new(
                    worker_settings,
                    inside,
                    outside,
                    stats,
                    tls,
                    worker_policy,
                    worker_control,
                    probe,
                )
                .run(&STOP);
            })
            .context("spawning a worker thread")?;
        handles.push(handle);
    }
    tracing::info!(workers = handles.len(), "loupe running; SIGINT or SIGTERM stops it");

    let mut plane = ControlPlane::new(
        options.config.clone(),
        options.config_file.clone(),
        overrides,
        PolicySources {
            trust_ca: options.trust_ca.clone(),
            state_dir: options.state_dir.clone(),
            log_dir: options.log_dir.clone(),
        },
        Arc::clone(&policy),
        worker_handles,
    );
    plane.attach_log_files(log_files);
    let server_stop = Arc::new(AtomicBool::new(false));
    let (call_tx, call_rx) = crossbeam_channel::bounded::<ControlCall>(64);
    let server = server
        .spawn(call_tx, server_stop.clone())
        .context("starting the control socket's thread")?;
    tracing::info!(socket = %socket.display(), group = ?options.config.control.group, "control socket ready");
    let control_facts = Arc::new(std::sync::Mutex::new(plane.control_facts(&wire)));
    let metrics_stop = Arc::new(AtomicBool::new(false));
    let metrics_thread = match metrics_listener {
        Some(listener) => {
            let address = listener.address();
            let sources = MetricsSources {
                workers: all_stats
                    .iter()
                    .zip(0..d.queues)
                    .map(|(s, q)| (q, Arc::clone(s)))
                    .collect(),
                forger: forger.clone(),
                control: Arc::clone(&control_facts),
            };
            let thread = listener.spawn(sources, metrics_stop.clone())?;
            tracing::info!(%address, "Prometheus metrics on http://{address}/metrics");
            Some(thread)
        }
        None => None,
    };
    // Type=notify: systemd counts the unit started only now, with the wire attached,
    // the workers running and loupectl answered. No-op outside systemd.
    notify_service_manager(sd_notify::NotifyState::Ready);

    let counters_file = options.state_dir.join("counters.json");
    let mut last_write = std::time::Instant::now() - COUNTERS_INTERVAL;
    let mut last_facts = std::time::Instant::now();
    let mut last_rotation_check = std::time::Instant::now();
    while !STOP.load(Ordering::Relaxed) && handles.iter().all(|h| !h.is_finished()) {
        if REOPEN_LOGS.swap(false, Ordering::Relaxed) {
            // A failure is logged there; the files that failed keep their old file.
            let _ = plane.reopen_logs("SIGHUP");
        }
        if last_rotation_check.elapsed() >= ROTATION_CHECK_INTERVAL {
            plane.reopen_renamed_logs();
            last_rotation_check = std::time::Instant::now();
        }
        if last_write.elapsed() >= COUNTERS_INTERVAL {
            write_counters(&counters_file, &wire, &all_stats, &forger, &plane.current);
            last_write = std::time::Instant::now();
        }
        if metrics_thread.is_some() && last_facts.elapsed() >= METRICS_FACTS_INTERVAL {
            let facts = plane.control_facts(&wire);
            if let Ok(mut shared) = control_facts.lock() {
                *shared = facts;
            }
            last_facts = std::time::Instant::now();
        }
        crossbeam_channel::select! {
            recv(call_rx) -> call => if let Ok(call) = call {
                // Chains logged before the call was made must be visible to it.
                chain_rx.try_iter().for_each(|chain| plane.remember_chain(chain));
                plane.serve(call, &mut wire, &forger);
            },
            recv(exclusion_rx) -> request => if let Ok(first) = request {
                let more: Vec<ExclusionRequest> = exclusion_rx.try_iter().collect();
                plane.exclude(std::iter::once(first).chain(more), &mut wire);
            },
            recv(chain_rx) -> chain => if let Ok(chain) = chain {
                plane.remember_chain(chain);
            },
            default(Duration::from_millis(100)) => {}
        }
    }
    notify_service_manager(sd_notify::NotifyState::Stopping);
    server_stop.store(true, Ordering::Relaxed);
    if server.join().is_err() {
        tracing::error!("the control socket's thread panicked");
    }
    metrics_stop.store(true, Ordering::Relaxed);
    if metrics_thread.is_some_and(|thread| thread.join().is_err()) {
        tracing::error!("the metrics thread panicked");
    }
    STOP.store(true, Ordering::Relaxed);
    for handle in handles {
        if handle.join().is_err() {
            tracing::error!("a worker panicked");
        }
    }
    drop(logs);
    log_writer.finish();
    write_counters(&counters_file, &wire, &all_stats, &forger, &plane.current);
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
