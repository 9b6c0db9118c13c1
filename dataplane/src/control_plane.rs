//! The control thread's work: it answers the requests the control socket hands over
//! (`loupe_control::server`), builds and publishes policy snapshots, asks the workers
//! for sessions and reports over their query channels, keeps the chains of failed
//! upstream verifications for `trust fetch`, and starts and stops captures. Nothing
//! here runs on a worker: workers only see new snapshots, queries and capture taps
//! between two batches.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use boring::stack::Stack;
use boring::x509::{X509StoreContext, X509};
use crossbeam_channel::Sender;
use loupe_control::config::{Config, FailMode};
use loupe_control::overrides::{apply_one, ProfileChange, ProfileOverride, ProfileOverrides};
use loupe_control::protocol::{
    name_matches, CaptureFilter, ControlCall, ControlError, ErrorKind, Request, SessionDetail, SessionFilter,
    SessionSummary, WorkerQuery, WorkerReport,
};
use serde_json::{json, Value};

use crate::capture::{Capture, CaptureTap};
use crate::eve::EveLog;
use crate::metrics::{ControlFacts, ForgerFigures};
use crate::policy::{unix_now, Exclusion, ExclusionCache, Policy};
use crate::relay::humanize;
use crate::tls::forge::Forger;
use crate::tls::record::{rfc3339_utc_ms, DecryptionLog};
use crate::tls::session::cert_fact;
use crate::tls::trust::{ImportedEntry, ImportedTrust};
use crate::wire::{Wire, XdpAttachMode};
use crate::worker::{ExclusionRequest, PresentedChain, WorkerStats};
use crate::xsk::XskBindMode;

/// How long a query waits for the workers' answers.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a policy change waits for every worker to run the new snapshot.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `trust fetch` waits for a probe (the worker gives up after 3 s).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Presented chains kept for `trust fetch` (the newest per server and name).
const RECENT_CHAINS: usize = 256;

type Reply = Result<Value, ControlError>;

fn invalid(message: impl Into<String>) -> ControlError {
    ControlError::new(ErrorKind::Invalid, message)
}

fn failed(message: impl Into<String>) -> ControlError {
    ControlError::new(ErrorKind::Failed, message)
}

fn not_found(message: impl Into<String>) -> ControlError {
    ControlError::new(ErrorKind::NotFound, message)
}

/// What the daemon hands the control thread about each worker.
pub struct WorkerHandle {
    pub queue: u32,
    pub core: Option<usize>,
    /// How the inside and the outside port's AF_XDP sockets were bound.
    pub af_xdp: [XskBindMode; 2],
    /// Whether each port's socket takes packets spanning several frames (multi-buffer).
    pub multi_buffer: [bool; 2],
    /// The IP MTU loupe's TCP uses on each port.
    pub ip_mtu: [usize; 2],
    pub stats: Arc<WorkerStats>,
    /// Newer policy snapshots; the worker takes the newest between batches.
    pub policy: Sender<Arc<Policy>>,
    /// The same queue's receiving end, so that a full queue's oldest snapshot can be
    /// dropped for the newest (a worker only ever needs the newest).
    pub policy_queue: crossbeam_channel::Receiver<Arc<Policy>>,
    pub queries: Sender<WorkerQuery>,
    /// `Some(tap)` while a capture runs, `None` to stop it.
    pub capture: Sender<Option<CaptureTap>>,
}

/// Everything a policy build needs besides the configuration.
pub struct PolicySources {
    pub trust_ca: Vec<PathBuf>,
    pub state_dir: PathBuf,
    /// Where the key log of rules that export keys goes (under `[export]`).
    pub log_dir: PathBuf,
}

/// The log files the daemon appends to, reopened together after log rotation
/// (`loupectl log reopen`, SIGHUP). The key logs are reached through
/// [`crate::tls::keylog::reopen_shared`]; the plaintext pcaps rotate themselves
/// (`[export] pcap_max_files`) and are never reopened.
pub struct LogFiles {
    pub decryption: Arc<DecryptionLog>,
    pub eve: Arc<EveLog>,
}

impl LogFiles {
    /// Reopens every file, each one whatever became of the others; the paths reopened,
    /// or every failure (the files that failed keep writing to their old file).
    pub fn reopen(&self) -> Result<Vec<PathBuf>, String> {
        self.reopen_those(false)
    }

    /// As [`LogFiles::reopen`], only the files that log rotation renamed or removed: what
    /// the daemon runs every few seconds, so that a rotation whose signal never came (a
    /// `postrotate` that could not reach loupe) loses nothing once the renamed file is
    /// compressed and removed.
    pub fn reopen_renamed(&self) -> Result<Vec<PathBuf>, String> {
        self.reopen_those(true)
    }

    fn reopen_those(&self, only_renamed: bool) -> Result<Vec<PathBuf>, String> {
        let mut outcomes = Vec::new();
        if !only_renamed || self.decryption.renamed_away() {
            let outcome = self.decryption.reopen().map_err(|e| e.to_string());
            outcomes.push((self.decryption.path().to_path_buf(), outcome));
        }
        if !only_renamed || self.eve.renamed_away() {
            let outcome = self.eve.reopen().map_err(|e| e.to_string());
            outcomes.push((self.eve.path().to_path_buf(), outcome));
        }
        outcomes.extend(
            crate::tls::keylog::reopen_shared(only_renamed)
                .into_iter()
                .map(|(path, outcome)| (path, outcome.map_err(|e| e.to_string()))),
        );
        let failures: Vec<String> = outcomes.iter().filter_map(|(_, o)| o.clone().err()).collect();
        if failures.is_empty() {
            Ok(outcomes.into_iter().map(|(path, _)| path).collect())
        } else {
            Err(failures.join("; "))
        }
    }
}

/// Logs the outcome of reopening log files and returns it.
fn log_reopened(why: &str, outcome: Result<Vec<PathBuf>, String>) -> Result<Vec<PathBuf>, String> {
    match &outcome {
        Ok(paths) => tracing::info!(why, files = paths.len(), "log files reopened"),
        Err(err) => tracing::error!(why, %err, "log files could not all be reopened; those keep their old file"),
    }
    outcome
}

pub struct ControlPlane {
    started: Instant,
    /// The configuration as loaded from its file, before profile overrides.
    config: Config,
    config_file: Option<PathBuf>,
    loaded_at: SystemTime,
    overrides: ProfileOverrides,
    sources: PolicySources,
    pub current: Arc<Policy>,
    workers: Vec<WorkerHandle>,
    chains: VecDeque<PresentedChain>,
    capture: Option<Capture>,
    /// Set once the daemon opened its logs (`attach_log_files`).
    log_files: Option<LogFiles>,
}

impl ControlPlane {
    pub fn new(
        config: Config,
        config_file: Option<PathBuf>,
        overrides: ProfileOverrides,
        sources: PolicySources,
        current: Arc<Policy>,
        workers: Vec<WorkerHandle>,
    ) -> ControlPlane {
        ControlPlane {
            started: Instant::now(),
            config,
            config_file,
            loaded_at: SystemTime::now(),
            overrides,
            sources,
            current,
            workers,
            chains: VecDeque::with_capacity(RECENT_CHAINS),
            capture: None,
            log_files: None,
        }
    }

    /// The log files `log-reopen` and [`ControlPlane::reopen_logs`] reopen.
    pub fn attach_log_files(&mut self, files: LogFiles) {
        self.log_files = Some(files);
    }

    /// Reopens the log files (log rotation renamed them); `why` names who asked, for the
    /// daemon's own log.
    pub fn reopen_logs(&self, why: &str) -> Result<Vec<PathBuf>, String> {
        let Some(files) = &self.log_files else {
            return Ok(Vec::new());
        };
        log_reopened(why, files.reopen())
    }

    /// Reopens the log files that log rotation renamed away, if any (logged when so).
    pub fn reopen_renamed_logs(&self) {
        let Some(files) = &self.log_files else { return };
        match files.reopen_renamed() {
            Ok(paths) if paths.is_empty() => {}
            outcome => {
                let _ = log_reopened("renamed away", outcome);
            }
        }
    }

    /// Answers one call; replies go back on the call's channel (a closed one is ignored:
    /// the client went away).
    pub fn serve(&mut self, call: ControlCall, wire: &mut Wire, forger: &Forger) {
        let verb = call.request.verb();
        let reply = self.answer(call.request, wire, forger);
        if let Err(err) = &reply {
            tracing::info!(verb, uid = call.peer.uid, kind = ?err.kind, %err, "control request failed");
        }
        let _ = call.reply.send(reply);
    }

    fn answer(&mut self, request: Request, wire: &mut Wire, forger: &Forger) -> Reply {
        match request {
            Request::Status => Ok(self.status(wire)),
            Request::Sessions { filter } => self.sessions(filter),
            Request::Session { session } => self.session(session),
            Request::Counters => Ok(self.counters(wire, forger)),
            Request::Metrics => Ok(json!({ "text": self.metrics(wire, forger) })),
            Request::PolicyCheck { file } => self.policy_check(&file),
            Request::PolicyLoad { file } => self.policy_load(&file, wire),
            Request::PolicyShow => Ok(self.policy_show()),
            Request::ProfileSet { profile, changes } => self.profile_set(&profile, &changes, wire),
            Request::TrustList => self.trust_list(),
            Request::TrustImport { pem, host } => self.trust_import(pem.as_bytes(), host.as_deref(), wire),
            Request::TrustRemove { sha256, host } => self.trust_remove(&sha256, host.as_deref(), wire),
            Request::TrustFetch {
                host,
                port,
                sni,
                accept,
            } => self.trust_fetch(&host, port, sni.as_deref(), accept, wire),
            Request::ExclusionsList => Ok(exclusions_json(&self.current.exclusions)),
            Request::ExclusionsClear { host } => self.exclusions_clear(host.as_deref(), wire),
            Request::CaptureStart { filter, out, max_bytes } => self.capture_start(filter, &out, max_bytes),
            Request::CaptureStop => self.capture_stop(),
            Request::RulesLoad => self.rules_load(wire),
            Request::RulesShow => Ok(self.rules_show()),
            Request::RulesStats => Ok(self.rules_stats()),
            Request::LogReopen => self
                .reopen_logs("loupectl log reopen")
                .map(|paths| json!({ "reopened": paths }))
                .map_err(failed),
            Request::LogTail { .. } => Err(ControlError::new(
                ErrorKind::BadRequest,
                "log-tail is served by the socket server, not the control thread",
            )),
        }
    }

    // ---- policy snapshots ----

    /// A worker reported a server it could not decrypt: a new snapshot with it excluded.
    pub fn exclude(&mut self, requests: impl IntoIterator<Item = ExclusionRequest>, wire: &mut Wire) {
        let mut cache = (*self.current.exclusions).clone();
        let now = unix_now();
        for request in requests {
            let evicted = cache.insert(request.key.clone(), request.why.clone(), now);
            tracing::info!(server = %request.key, why = %request.why, evicted, "server excluded from decryption");
        }
        self.save_exclusions(&cache);
        let next = Arc::new(self.current.with_exclusions(cache));
        // Workers pick it up between batches; nobody waits on an acknowledgement here.
        let _ = self.publish(next, wire, false);
    }

    fn save_exclusions(&self, cache: &ExclusionCache) {
        crate::daemon::save_exclusions(cache, &self.sources.state_dir);
    }

    /// The configuration with the profile overrides applied, compiled into snapshot
    /// `version`.
    fn build(&self, config: &Config, overrides: &ProfileOverrides, version: u64) -> Result<Policy, ControlError> {
        let effective = overrides.apply(config).map_err(invalid)?;
        crate::daemon::build_policy_logging(
            &effective,
            &self.sources.trust_ca,
            Some(&self.sources.state_dir),
            Some(&self.sources.log_dir),
            version,
            (*self.current.exclusions).clone(),
        )
        .map_err(|e| invalid(format!("{e:#}")))
    }

    /// Sends a snapshot to every worker, updates XDP's no-decrypt map when its rules
    /// changed, and (when `wait`) waits until every worker runs it. Returns how many did.
    fn publish(&mut self, policy: Arc<Policy>, wire: &mut Wire, wait: bool) -> Result<usize, ControlError> {
        let ports = &self.config.dataplane.inspect_ports;
        let entries = crate::daemon::xdp_entries(&policy, ports);
        if entries != crate::daemon::xdp_entries(&self.current, ports) {
            wire.set_no_decrypt(&entries)
                .map_err(|e| failed(format!("updating XDP's no-decrypt rules: {e:#}")))?;
            tracing::info!(entries = entries.len(), "no-decrypt rules enforced in XDP updated");
        }
        let version = policy.version;
        tracing::info!(config_version = version, "policy snapshot published");
        for worker in &self.workers {
            let mut next = Arc::clone(&policy);
            // A busy worker's queue may be full of older snapshots: make room, never block.
            while let Err(crossbeam_channel::TrySendError::Full(back)) = worker.policy.try_send(next) {
                let _ = worker.policy_queue.try_recv();
                next = back;
            }
        }
        self.current = policy;
        if !wait {
            return Ok(0);
        }
        let deadline = Instant::now() + ACK_TIMEOUT;
        loop {
            let acked = self
                .workers
                .iter()
                .filter(|w| w.stats.config_version.load(Ordering::Relaxed) >= version)
                .count();
            if acked == self.workers.len() {
                return Ok(acked);
            }
            if Instant::now() >= deadline {
                return Err(failed(format!(
                    "config version {version} is published but only {acked} of {} workers took it within {} s",
                    self.workers.len(),
                    ACK_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Rebuilds the snapshot from the same configuration (after a trust-store change).
    fn republish(&mut self, wire: &mut Wire) -> Result<u64, ControlError> {
        let next = self.build(&self.config, &self.overrides, self.current.version + 1)?;
        self.publish(Arc::new(next), wire, true)?;
        Ok(self.current.version)
    }

    fn policy_check(&self, file: &Path) -> Reply {
        let config = Config::load(file).map_err(|e| invalid(e.to_string()))?;
        let policy = self.build(&config, &self.overrides, 0)?;
        Ok(json!({
            "file": file,
            "rules": config.rules.len(),
            "profiles": config.profile_names().len(),
            "xdp_entries": crate::daemon::xdp_entries(&policy, &config.dataplane.inspect_ports).len(),
        }))
    }

    fn policy_load(&mut self, file: &Path, wire: &mut Wire) -> Reply {
        let config = Config::load(file).map_err(|e| invalid(e.to_string()))?;
        restart_needed(&self.config, &config).map_or(Ok(()), |what| {
            Err(invalid(format!(
                "{}: {what} differs from the running configuration; restart loupe to change it",
                file.display()
            )))
        })?;
        let next = self.build(&config, &self.overrides, self.current.version + 1)?;
        self.config = config;
        self.config_file = Some(file.to_path_buf());
        self.loaded_at = SystemTime::now();
        let acked = self.publish(Arc::new(next), wire, true)?;
        tracing::info!(file = %file.display(), config_version = self.current.version, "policy loaded");
        Ok(json!({ "config_version": self.current.version, "file": file, "workers_acked": acked }))
    }

    /// Loads the rule files of the running configuration again: a new snapshot, so
    /// sessions go on and take the new rules from their next transaction stage.
    fn rules_load(&mut self, wire: &mut Wire) -> Reply {
        if self.config.inspection.rules.is_empty() {
            return Err(invalid("[inspection] rules is empty: there are no rule files to load"));
        }
        let next = self.build(&self.config, &self.overrides, self.current.version + 1)?;
        let acked = self.publish(Arc::new(next), wire, true)?;
        let shown = self.rules_show();
        tracing::info!(
            config_version = self.current.version,
            loaded = %shown["loaded"],
            skipped = %shown["skipped_count"],
            "signatures loaded"
        );
        Ok(json!({
            "config_version": self.current.version,
            "workers_acked": acked,
            "loaded": shown["loaded"],
            "skipped": shown["skipped_count"],
        }))
    }

    fn rules_show(&self) -> Value {
        let Some(set) = &self.current.signatures else {
            return json!({ "config_version": self.current.version, "loaded": 0, "skipped_count": 0, "files": [], "skipped": [], "rules": [] });
        };
        let report = &set.report;
        let files: Vec<Value> = report
            .files
            .iter()
            .map(|(file, count)| json!({ "file": file, "loaded": count }))
            .collect();
        let skipped: Vec<Value> = report
            .skipped
            .iter()
            .map(|s| {
                json!({
                    "file": s.file,
                    "line": s.line,
                    "sid": s.error.sid,
                    "unsupported": s.error.unsupported,
                    "reason": s.error.to_string(),
                })
            })
            .collect();
        let rules: Vec<Value> = set
            .rules()
            .iter()
            .enumerate()
            .map(|(index, rule)| {
                let (file, line) = set.origin(index as u32);
                json!({
                    "gid": rule.meta.gid,
                    "sid": rule.meta.sid,
                    "rev": rule.meta.rev,
                    "action": rule.action.as_str(),
                    "msg": rule.meta.msg,
                    "file": file,
                    "line": line,
                })
            })
            .collect();
        json!({
            "config_version": self.current.version,
            "loaded": set.rules().len(),
            "skipped_count": report.skipped.len(),
            "files": files,
            "skipped": skipped,
            "rules": rules,
        })
    }

    fn rules_stats(&self) -> Value {
        let Some(set) = &self.current.signatures else {
            return json!({ "config_version": self.current.version, "total": 0, "rules": [] });
        };
        let mut hits: Vec<(u32, u64)> = set
            .hit_counts()
            .into_iter()
            .enumerate()
            .filter(|(_, hits)| *hits > 0)
            .map(|(index, hits)| (index as u32, hits))
            .collect();
        hits.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let total: u64 = hits.iter().map(|(_, h)| h).sum();
        let rules: Vec<Value> = hits
            .iter()
            .map(|&(index, hits)| {
                let rule = set.rule(index);
                json!({ "gid": rule.meta.gid, "sid": rule.meta.sid, "msg": rule.meta.msg, "action": rule.action.as_str(), "hits": hits })
            })
            .collect();
        json!({ "config_version": self.current.version, "total": total, "rules": rules })
    }

    fn effective_profiles(&self) -> Vec<Value> {
        let effective = self
            .overrides
            .apply(&self.config)
            .unwrap_or_else(|_| self.config.clone());
        effective
            .profile_names()
            .into_iter()
            .filter_map(|name| effective.profile(name))
            .map(|p| serde_json::to_value(p).unwrap_or(Value::Null))
            .collect()
    }

    fn policy_show(&self) -> Value {
        let hits = self.current.hits();
        let rules: Vec<Value> = self
            .config
            .rules
            .iter()
            .map(|rule| {
                let hits = hits.iter().find(|(name, _)| *name == rule.name).map_or(0, |(_, h)| *h);
                json!({ "name": rule.name, "action": rule.action.as_str(), "profile": rule.profile, "hits": hits })
            })
            .chain(std::iter::once(json!({
                "name": "default",
                "action": self.config.decryption.default_action.as_str(),
                "profile": self.config.decryption.default_profile,
                "hits": hits.last().map_or(0, |(_, h)| *h),
            })))
            .collect();
        json!({
            "config_version": self.current.version,
            "file": self.config_file,
            "loaded_at": rfc3339_utc_ms(self.loaded_at),
            "rules": rules,
            "timeouts": {
                "idle": humanize(self.config.timeouts.idle),
                "handshake": humanize(self.config.timeouts.handshake),
            },
            "profiles": self.effective_profiles(),
            "overrides": self.overrides.changes,
        })
    }

    fn profile_set(&mut self, profile: &str, changes: &[String], wire: &mut Wire) -> Reply {
        if changes.is_empty() {
            return Err(invalid("profile set needs at least one KEY=VALUE"));
        }
        let mut overrides = self.overrides.clone();
        let mut effective = self.overrides.apply(&self.config).map_err(invalid)?;
        for text in changes {
            let change: ProfileChange = text.parse().map_err(invalid)?;
            apply_one(&mut effective, profile, &change).map_err(invalid)?;
            overrides.changes.push(ProfileOverride {
                profile: profile.to_string(),
                change: text.clone(),
            });
        }
        // BoringSSL checks the cipher, group and signature names here.
        let next = self.build(&self.config, &overrides, self.current.version + 1)?;
        overrides.save(&self.sources.state_dir).map_err(failed)?;
        self.overrides = overrides;
        self.publish(Arc::new(next), wire, true)?;
        tracing::info!(
            profile,
            ?changes,
            config_version = self.current.version,
            "profile changed"
        );
        let settings = effective.profile(profile).map(serde_json::to_value).transpose();
        Ok(json!({ "config_version": self.current.version, "profile": settings.unwrap_or(None) }))
    }

    // ---- trust ----

    fn trust_list(&self) -> Reply {
        let imported = ImportedTrust::load(&self.sources.state_dir).map_err(|e| failed(e.to_string()))?;
        Ok(Value::from(imported.list().iter().map(entry_json).collect::<Vec<_>>()))
    }

    fn trust_import(&mut self, pem: &[u8], host: Option<&str>, wire: &mut Wire) -> Reply {
        let report = ImportedTrust::import_bytes(&self.sources.state_dir, Path::new("the certificate sent"), pem, host)
            .map_err(|e| invalid(e.to_string()))?;
        let version = self.republish(wire)?;
        let imported: Vec<Value> = report
            .entries
            .iter()
            .map(|i| {
                let mut entry = entry_json(&i.entry);
                entry["added"] = Value::Bool(i.added);
                entry
            })
            .collect();
        Ok(json!({ "imported": imported, "ignored": report.ignored, "config_version": version }))
    }

    fn trust_remove(&mut self, sha256: &str, host: Option<&str>, wire: &mut Wire) -> Reply {
        let removed =
            ImportedTrust::remove(&self.sources.state_dir, sha256, host).map_err(|e| not_found(e.to_string()))?;
        let version = self.republish(wire)?;
        Ok(json!({ "removed": removed.iter().map(entry_json).collect::<Vec<_>>(), "config_version": version }))
    }

    /// A worker saw a server's chain fail verification: remember the newest per server,
    /// port and name.
    pub fn remember_chain(&mut self, chain: PresentedChain) {
        self.chains
            .retain(|c| !(c.server == chain.server && c.sni == chain.sni));
        if self.chains.len() == RECENT_CHAINS {
            self.chains.pop_front();
        }
        self.chains.push_back(chain);
    }

    fn trust_fetch(&mut self, host: &str, port: u16, sni: Option<&str>, accept: bool, wire: &mut Wire) -> Reply {
        let ip: Option<IpAddr> = host.trim_start_matches('[').trim_end_matches(']').parse().ok();
        // A name stands for the SNI; an address for the server.
        let wanted_name = sni.or(if ip.is_none() { Some(host) } else { None });
        let recorded = self
            .chains
            .iter()
            .rev()
            .find(|c| {
                c.server.port() == port
                    && ip.is_none_or(|ip| c.server.ip() == ip)
                    && wanted_name.is_none_or(|name| c.sni.as_deref().is_some_and(|s| name_matches(name, s)))
            })
            .cloned();
        let (found, source) = match recorded {
            Some(found) => (found, "handshake"),
            None => (self.probe_chain(host, ip, port, wanted_name)?, "probe"),
        };
        let found = &found;
        let certs: Vec<X509> = found
            .chain_der
            .iter()
            .map(|der| X509::from_der(der))
            .collect::<Result<_, _>>()
            .map_err(|e| failed(format!("a recorded certificate does not parse: {e}")))?;
        let chain: Vec<Value> = certs
            .iter()
            .map(|c| {
                let fact = cert_fact(c);
                json!({ "subject": fact.subject, "issuer": fact.issuer, "sans": fact.sans,
                        "not_before": fact.not_before, "not_after": fact.not_after, "sha256": fact.sha256 })
            })
            .collect();
        let (server, seen_sni, error, seen) = (found.server, found.sni.clone(), found.verify_error.clone(), found.seen);
        let mut accepted = Value::Null;
        if accept {
            let leaf = certs
                .first()
                .ok_or_else(|| failed("the server presented no certificate"))?;
            let pin_host = seen_sni.clone().unwrap_or_else(|| server.ip().to_string());
            let pem = leaf.to_pem().map_err(|e| failed(e.to_string()))?;
            let report = ImportedTrust::import_bytes(
                &self.sources.state_dir,
                Path::new("the fetched certificate"),
                &pem,
                Some(&pin_host),
            )
            .map_err(|e| invalid(e.to_string()))?;
            self.republish(wire)?;
            let sha = report.entries.first().map(|i| i.entry.sha256.clone());
            tracing::info!(host = %pin_host, sha256 = ?sha, "fetched certificate pinned");
            accepted = json!({ "sha256": sha, "host": pin_host });
        }
        Ok(json!({
            "host": host,
            "port": port,
            "server": server,
            "sni": seen_sni,
            "source": source,
            "seen": rfc3339_utc_ms(seen),
            "chain": chain,
            "error": error,
            "accepted": accepted,
            "config_version": self.current.version,
        }))
    }

    /// No handshake through loupe showed the chain: a worker connects to the server from
    /// `[control] probe_source` and reports what it presented, verified here against the
    /// trust store.
    fn probe_chain(
        &self,
        host: &str,
        ip: Option<IpAddr>,
        port: u16,
        name: Option<&str>,
    ) -> Result<PresentedChain, ControlError> {
        let described = format!(
            "{host}:{port}{}",
            name.map(|n| format!(" (name {n})")).unwrap_or_default()
        );
        let Some(source) = self.config.control.probe_source else {
            return Err(not_found(format!(
                "no handshake through loupe has shown the chain of {described} yet, and no [control] \
                 probe_source is configured to probe it: connect to it through loupe once, then fetch again"
            )));
        };
        let Some(ip) = ip else {
            return Err(invalid(format!(
                "no handshake through loupe has shown the chain of {described}; to probe it, give its \
                 address (loupe resolves no names): trust fetch ADDRESS --sni {host}"
            )));
        };
        let server = SocketAddr::new(ip, port);
        let worker = self.workers.first().ok_or_else(|| failed("no worker runs"))?;
        let (reply, answer) = crossbeam_channel::bounded(1);
        worker
            .queries
            .try_send(WorkerQuery::FetchChain {
                server,
                sni: name.map(str::to_string),
                source,
                reply,
            })
            .map_err(|_| failed("the worker's query queue is full; try again"))?;
        let chain_der = answer
            .recv_timeout(PROBE_TIMEOUT)
            .map_err(|_| {
                failed(format!(
                    "the probe of {described} did not answer within {} s",
                    PROBE_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|why| failed(format!("probing {described} from {source}: {why}")))?;
        let verify_error = self.verify_presented(&chain_der, name.unwrap_or(host));
        Ok(PresentedChain {
            server,
            sni: name.map(str::to_string),
            chain_der,
            verify_error,
            seen: SystemTime::now(),
        })
    }

    /// Why a presented chain does not verify for `name` against the trust store (none
    /// when it does), in the decryption log's words.
    fn verify_presented(&self, chain_der: &[Vec<u8>], name: &str) -> Option<String> {
        let certs: Vec<X509> = chain_der.iter().filter_map(|der| X509::from_der(der).ok()).collect();
        let (leaf, rest) = certs.split_first()?;
        let (trust, _) =
            crate::daemon::trust_store(&self.config, &self.sources.trust_ca, Some(&self.sources.state_dir)).ok()?;
        let store = trust.build_store().ok()?;
        let mut intermediates = Stack::new().ok()?;
        for cert in rest {
            intermediates.push(cert.clone()).ok()?;
        }
        let mut context = X509StoreContext::new().ok()?;
        let (code, depth) = context
            .init(&store, leaf, &intermediates, |ctx| {
                if name.parse::<IpAddr>().is_err() {
                    ctx.verify_param_mut().set_host(name)?;
                }
                ctx.verify_cert()?;
                Ok((
                    ctx.verify_result().err().map(|e| (e.as_raw(), e.error_string())),
                    ctx.error_depth(),
                ))
            })
            .ok()?;
        let (code, reason) = code?;
        Some(format!(
            "certificate verify failed: {reason} (code {code}, depth {depth})"
        ))
    }

    // ---- exclusions ----

    fn exclusions_clear(&mut self, host: Option<&str>, wire: &mut Wire) -> Reply {
        let mut cache = (*self.current.exclusions).clone();
        let removed = cache.clear(host);
        if removed == 0 && host.is_some() {
            return Err(not_found(format!("no exclusion for {}", host.unwrap_or_default())));
        }
        self.save_exclusions(&cache);
        let next = Arc::new(self.current.with_exclusions(cache));
        self.publish(next, wire, true)?;
        Ok(json!({ "removed": removed, "config_version": self.current.version }))
    }

    // ---- queries ----

    /// Puts a query to the workers (`only`: one queue) and collects their answers.
    fn ask<T>(&self, only: Option<u32>, make: impl Fn(Sender<T>) -> WorkerQuery) -> Vec<T> {
        let (tx, rx) = crossbeam_channel::bounded(self.workers.len().max(1));
        let mut asked = 0;
        for worker in self.workers.iter().filter(|w| only.is_none_or(|q| q == w.queue)) {
            if worker.queries.try_send(make(tx.clone())).is_ok() {
                asked += 1;
            }
        }
        drop(tx);
        let deadline = Instant::now() + QUERY_TIMEOUT;
        let mut answers = Vec::with_capacity(asked);
        while answers.len() < asked {
            match rx.recv_deadline(deadline) {
                Ok(answer) => answers.push(answer),
                Err(_) => break,
            }
        }
        if answers.len() < asked {
            tracing::warn!(
                asked,
                answered = answers.len(),
                "workers did not answer a query in time"
            );
        }
        answers
    }

    fn sessions(&self, filter: SessionFilter) -> Reply {
        let limit = filter.limit.unwrap_or(SessionFilter::DEFAULT_LIMIT);
        let mut all: Vec<SessionSummary> = self
            .ask(None, |reply| WorkerQuery::Sessions {
                filter: filter.clone(),
                reply,
            })
            .into_iter()
            .flatten()
            .collect();
        all.sort_by_key(|s| (s.age_secs, std::cmp::Reverse(s.id)));
        all.truncate(limit);
        serde_json::to_value(all).map_err(|e| failed(e.to_string()))
    }

    fn session(&self, id: u64) -> Reply {
        // Ids carry their worker's queue in the top bits.
        let queue = u32::try_from(id >> 48).ok();
        let only = queue.filter(|q| self.workers.iter().any(|w| w.queue == *q));
        let found: Option<SessionDetail> = self
            .ask(only, |reply| WorkerQuery::Session { id, reply })
            .into_iter()
            .flatten()
            .next();
        match found {
            Some(detail) => serde_json::to_value(detail).map_err(|e| failed(e.to_string())),
            None => Err(not_found(format!(
                "no session {id}: not live, and not among the recently ended ones"
            ))),
        }
    }

    fn reports(&self) -> Vec<WorkerReport> {
        let mut reports = self.ask(None, |reply| WorkerQuery::Report { reply });
        reports.sort_by_key(|r| r.queue);
        reports
    }

    fn status(&self, wire: &Wire) -> Value {
        let d = &self.config.dataplane;
        let workers: Vec<Value> = self
            .workers
            .iter()
            .map(|w| {
                json!({
                    "queue": w.queue,
                    "core": w.core,
                    "af_xdp": { "inside": w.af_xdp[0].as_str(), "outside": w.af_xdp[1].as_str() },
                    "multi_buffer": { "inside": w.multi_buffer[0], "outside": w.multi_buffer[1] },
                    "mtu": { "inside": w.ip_mtu[0], "outside": w.ip_mtu[1] },
                    "flows": w.stats.flows_active.load(Ordering::Relaxed),
                    "load": w.stats.load_permille.load(Ordering::Relaxed) as f64 / 1000.0,
                    "config_version": w.stats.config_version.load(Ordering::Relaxed),
                })
            })
            .collect();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_secs": self.started.elapsed().as_secs(),
            "config_version": self.current.version,
            "config_file": self.config_file,
            "inside": d.inside,
            "outside": d.outside,
            "inspect_ports": d.inspect_ports,
            "queues": d.queues,
            "xdp_mode": match wire.mode() { XdpAttachMode::Native => "native", XdpAttachMode::Generic => "generic" },
            "fail_mode": match d.fail { FailMode::Open => "open", FailMode::Closed => "closed" },
            "forward_only": d.forward_only,
            "busy_poll_us": d.busy_poll_us,
            "workers": workers,
            "capture": self.capture.as_ref().map(|c| c.summary()),
        })
    }

    /// What the metrics endpoint's thread reads between two refreshes.
    pub fn control_facts(&self, wire: &Wire) -> ControlFacts {
        ControlFacts::read(wire, &self.current)
    }

    /// The exposition text, read now (the endpoint's is the same, with these facts up to
    /// a second old).
    fn metrics(&self, wire: &Wire, forger: &Forger) -> String {
        let workers: Vec<(u32, &WorkerStats)> = self.workers.iter().map(|w| (w.queue, w.stats.as_ref())).collect();
        crate::metrics::exposition(&self.control_facts(wire), &workers, &ForgerFigures::read(forger))
    }

    fn counters(&self, wire: &Wire, forger: &Forger) -> Value {
        let xdp: Value = wire
            .counters()
            .ok()
            .and_then(|c| serde_json::from_str(&c.to_json()).ok())
            .unwrap_or(Value::Null);
        let reports = self.reports();
        let sum = |f: fn(&WorkerStats) -> &std::sync::atomic::AtomicU64| -> u64 {
            self.workers.iter().map(|w| f(&w.stats).load(Ordering::Relaxed)).sum()
        };
        let workers: Vec<Value> = self
            .workers
            .iter()
            .map(|w| worker_counters(w.queue, &w.stats))
            .collect();
        let mut failures: Vec<(String, u64)> = Vec::new();
        for report in &reports {
            for (reason, count) in &report.failures {
                match failures.iter_mut().find(|(r, _)| r == reason) {
                    Some((_, total)) => *total += count,
                    None => failures.push((reason.clone(), *count)),
                }
            }
        }
        failures.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let forge = forger.stats();
        let xdp_hits = wire.rule_hits().unwrap_or_default();
        json!({
            "config_version": self.current.version,
            "xdp": xdp,
            "workers": workers,
            "rules": crate::daemon::rules_json(&self.current, &xdp_hits),
            "handshakes": {
                "decrypted": sum(|s| &s.sessions_decrypted),
                "spliced": sum(|s| &s.sessions_spliced),
                "blocked": sum(|s| &s.sessions_blocked),
                "aborted": sum(|s| &s.sessions_aborted),
            },
            "failures": failures.iter().map(|(reason, count)| json!({ "reason": reason, "count": count })).collect::<Vec<_>>(),
            "cert_cache": {
                "hits": forge.cache_hits, "misses": forge.cache_misses,
                "signed": forge.signed, "evictions": forge.evictions,
            },
            "exclusions": {
                "entries": self.current.exclusions.len(),
                "dropped": sum(|s| &s.exclusions_dropped),
            },
            "presented_chains": { "kept": self.chains.len(), "dropped": sum(|s| &s.chains_dropped) },
            "http": {
                "transactions": sum(|s| &s.http_transactions),
                "url_rule_hits": sum(|s| &s.url_rule_hits),
                "blocked": sum(|s| &s.http_blocked),
                "protocol_errors": sum(|s| &s.http_protocol_errors),
                "eve_write_errors": sum(|s| &s.eve_write_errors),
            },
            "timeouts": {
                "idle": sum(|s| &s.idle_timeouts),
                "handshake": sum(|s| &s.handshake_timeouts),
            },
        })
    }

    // ---- capture ----

    fn capture_start(&mut self, filter: CaptureFilter, out: &Path, max_bytes: u64) -> Reply {
        if let Some(running) = &self.capture {
            return Err(invalid(format!(
                "a capture to {} is already running: capture stop first",
                running.summary().out.display()
            )));
        }
        if !out.is_absolute() {
            return Err(invalid(format!(
                "{}: the capture file must be an absolute path",
                out.display()
            )));
        }
        let (capture, tap) = Capture::start(filter.clone(), out, max_bytes).map_err(|e| invalid(e.to_string()))?;
        for worker in &self.workers {
            let _ = worker.capture.try_send(Some(tap.clone()));
        }
        tracing::info!(out = %out.display(), ?filter, max_bytes, "capture started");
        self.capture = Some(capture);
        Ok(json!({ "out": out, "filter": filter, "max_bytes": max_bytes }))
    }

    fn capture_stop(&mut self) -> Reply {
        let Some(capture) = self.capture.take() else {
            return Err(not_found("no capture is running"));
        };
        for worker in &self.workers {
            let _ = worker.capture.try_send(None);
        }
        let summary = capture.stop();
        tracing::info!(out = %summary.out.display(), frames = summary.frames, bytes = summary.bytes, dropped = summary.dropped, "capture stopped");
        serde_json::to_value(summary).map_err(|e| failed(e.to_string()))
    }
}

/// What of `[dataplane]`, `[ca]` or `[control]` differs: those are set up at start.
fn restart_needed(running: &Config, next: &Config) -> Option<&'static str> {
    if running.dataplane != next.dataplane {
        Some("[dataplane]")
    } else if running.ca != next.ca {
        Some("[ca]")
    } else if running.control != next.control {
        Some("[control]")
    } else if running.paths != next.paths {
        Some("[paths]")
    } else if running.metrics != next.metrics {
        Some("[metrics]")
    } else {
        None
    }
}

fn entry_json(entry: &ImportedEntry) -> Value {
    json!({
        "sha256": entry.sha256,
        "kind": entry.kind.as_str(),
        "hosts": entry.host.iter().collect::<Vec<_>>(),
        "subject": entry.subject,
        "issuer": entry.issuer,
        "not_after": entry.not_after,
        "imported_at": entry.imported_at,
    })
}

fn exclusions_json(cache: &ExclusionCache) -> Value {
    let mut entries: Vec<&Exclusion> = cache.entries().collect();
    entries.sort_by_key(|e| e.added);
    Value::from(
        entries
            .into_iter()
            .map(|e| {
                json!({
                    "server": e.key.to_string(),
                    "why": e.why,
                    "added": rfc3339_utc_ms(SystemTime::UNIX_EPOCH + Duration::from_secs(e.added)),
                    "expires": rfc3339_utc_ms(SystemTime::UNIX_EPOCH + Duration::from_secs(e.expires)),
                })
            })
            .collect::<Vec<_>>(),
    )
}

fn worker_counters(queue: u32, s: &WorkerStats) -> Value {
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    json!({
        "queue": queue,
        "rx_frames": get(&s.rx_frames),
        "tx_frames": get(&s.tx_frames),
        "malformed_frames": get(&s.malformed_frames),
        "bad_checksum_frames": get(&s.bad_checksum_frames),
        "orphan_segments": get(&s.orphan_segments),
        "flows_opened": get(&s.flows_opened),
        "flows_closed": get(&s.flows_closed),
        "flows_active": get(&s.flows_active),
        "flows_refused_table_full": get(&s.flows_refused_table_full),
        "half_open": get(&s.half_open),
        "half_open_evicted": get(&s.half_open_evicted),
        "syn_proxied": get(&s.syn_proxied),
        "flows_reused": get(&s.flows_reused),
        "upstream_refused": get(&s.upstream_refused),
        "resets": get(&s.resets),
        "idle_timeouts": get(&s.idle_timeouts),
        "handshake_timeouts": get(&s.handshake_timeouts),
        "busy_polls": get(&s.busy_polls),
        "busy_poll_hits": get(&s.busy_poll_hits),
        "bytes_client_to_server": get(&s.bytes_client_to_server),
        "bytes_server_to_client": get(&s.bytes_server_to_client),
        "tx_no_frame": get(&s.tx_no_frame),
        "xsk_rx_dropped": get(&s.xsk_rx_dropped),
        "xsk_rx_ring_full": get(&s.xsk_rx_ring_full),
        "xsk_fill_ring_empty": get(&s.xsk_fill_ring_empty),
        "config_version": get(&s.config_version),
        "load": get(&s.load_permille) as f64 / 1000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_is_needed_for_dataplane_changes_only() {
        let a = Config::default();
        let mut b = Config::default();
        assert_eq!(restart_needed(&a, &b), None);
        b.decryption.default_action = loupe_control::config::RuleAction::NoDecrypt;
        assert_eq!(restart_needed(&a, &b), None);
        b.dataplane.queues = 2;
        assert_eq!(restart_needed(&a, &b), Some("[dataplane]"));
    }

    #[test]
    fn only_the_files_rotation_renamed_are_reopened() {
        let dir = std::env::temp_dir().join(format!("loupe-reopen-{}", std::process::id()));
        let files = LogFiles {
            decryption: Arc::new(DecryptionLog::open(&dir).unwrap()),
            eve: Arc::new(EveLog::open(&dir).unwrap()),
        };
        assert_eq!(files.reopen_renamed(), Ok(Vec::new()), "nothing renamed yet");

        let eve = files.eve.path().to_path_buf();
        std::fs::rename(&eve, dir.join("eve.json.1")).unwrap();
        assert_eq!(files.reopen_renamed(), Ok(vec![eve.clone()]));
        assert!(eve.exists(), "a fresh eve.json");
        assert!(!files.eve.renamed_away() && !files.decryption.renamed_away());
        assert_eq!(files.reopen_renamed(), Ok(Vec::new()), "reopened once");

        // Removed rather than renamed: reopened too.
        let decryption = files.decryption.path().to_path_buf();
        std::fs::remove_file(&decryption).unwrap();
        assert_eq!(files.reopen_renamed(), Ok(vec![decryption.clone()]));
        assert!(decryption.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
