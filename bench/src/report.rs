//! The bench report: every measurement of a run, aggregated per (mode, workload) into
//! figures, costs, multiples of the crypto floor and ratios against the baseline and the
//! peers; written as markdown, JSON and an SVG chart.
//!
//! Modes are free strings: `direct` is the baseline, `loupe-*` and `xsk-forward` are
//! ours, `sslsplit*`, `squid*` and `mitmproxy*` are the peers. Workloads are
//! `handshakes[-browser]`, `requests[-browser]`, `requests-h2`, `bulk-N` and `idle[-h2]`
//! (others are reported as plain rates). Each figure is the median over the clean
//! repetitions, with their min–max. A repetition with errors, a failed integrity check
//! or nothing completed is not clean: it is listed under "Failed runs", its cell says how
//! many failed, and a cell with no clean repetition shows FAILED instead of a figure.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};

use crate::costs::CryptoFloor;
use crate::load::{Latency, LoadResult};

/// One run of one workload against one mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    pub mode: String,
    /// "handshakes", "handshakes-browser", "requests", "requests-browser", "requests-h2",
    /// "bulk-1", "bulk-8", "idle", "idle-h2".
    pub workload: String,
    /// Repetition number (0-based or 1-based, only shown).
    pub rep: usize,
    pub load: LoadResult,
    /// CPU seconds the appliance's processes used over the same interval as
    /// `load.elapsed_s`; `None` where there is no appliance process (`direct`).
    pub appliance_cpu_s: Option<f64>,
    /// Idle: the appliance's RSS while the sessions were held minus its RSS before.
    pub appliance_rss_bytes: Option<u64>,
    /// The mode ran in the routed variant of the lab.
    pub routed: bool,
}

/// Where the run happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub kernel: String,
    pub cpu_model: String,
    pub xdp_mode: String,
    /// `git rev-parse --short=12 HEAD`, with "-dirty" when tracked files differ.
    pub git_commit: String,
    /// UTC, RFC 3339 ("2026-04-05T14:03:22Z").
    pub date: String,
}

impl Machine {
    /// This machine, now: /proc for cores, CPU model and kernel, git for the commit of
    /// the source tree loupe-bench was built from. What cannot be read is "unknown".
    pub fn detect(xdp_mode: &str) -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let mut cores = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
        if cores == 0 {
            cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
        }
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self {
            cores,
            kernel,
            cpu_model,
            xdp_mode: xdp_mode.to_string(),
            git_commit: git_commit(Path::new(env!("CARGO_MANIFEST_DIR"))),
            date: rfc3339_utc(now),
        }
    }
}

pub(crate) fn git_commit(dir: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(c) if !c.is_empty() => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{c}-dirty")
            } else {
                c
            }
        }
        _ => "unknown".into(),
    }
}

/// Seconds since the epoch as "YYYY-MM-DDTHH:MM:SSZ".
fn rfc3339_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Median and range of one figure over repetitions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Repetitions the figure comes from.
    pub n: usize,
}

impl Stat {
    /// Over the finite values; `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Stat> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }
}

/// Latency percentiles (µs), each the median over the clean repetitions. p90 and p99.9
/// are given for `requests` only.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub p50_us: f64,
    pub p90_us: Option<f64>,
    pub p99_us: f64,
    pub p999_us: Option<f64>,
}

/// `loupe figure ÷ the other mode's figure`. For throughput above 1 is better; for costs,
/// memory per session and latency below 1 is better.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    /// The mode compared against.
    pub against: String,
    pub value: f64,
}

/// A loupe cell against one other mode (or, for the peers, the best peer per figure).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The headline figure (conn/s, req/s, MB/s, bytes per session).
    pub headline: Option<Ratio>,
    pub cost: Option<Ratio>,
    /// Whole-machine CPU per unit of work.
    #[serde(default)]
    pub machine_cost: Option<Ratio>,
    pub p50: Option<Ratio>,
    pub p99: Option<Ratio>,
}

/// A repetition that did not run clean.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepFailure {
    pub rep: usize,
    /// In words: "3 errors", "integrity check failed", "completed nothing".
    pub reason: String,
    pub first_errors: Vec<String>,
}

/// Everything reported for one (mode, workload).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub mode: String,
    pub workload: String,
    pub routed: bool,
    /// Repetitions run, and how many ran clean (the figures come from those).
    pub reps: usize,
    pub ok_reps: usize,
    pub failures: Vec<RepFailure>,
    /// conn/s (handshakes), req/s (requests), MB/s (bulk), bytes per session (idle).
    pub headline: Option<Stat>,
    pub headline_unit: String,
    pub latency: Option<LatencySummary>,
    /// CPU-µs per handshake or request, CPU-seconds per GB (10^9 bytes) moved, or RSS
    /// bytes per idle session; `None` without an appliance process.
    pub cost: Option<Stat>,
    pub cost_unit: String,
    /// The CPU of the whole machine (all cores, every process and the kernel's interrupt
    /// work: generator, origin and appliance) per handshake, request or GB; `None` for
    /// idle. Unlike `cost`, it does not depend on whom the scheduler billed softirq work to.
    #[serde(default)]
    pub machine_cost: Option<Stat>,
    /// `cost.median` ÷ the crypto floor for the same unit (handshakes and bulk).
    pub floor_multiple: Option<f64>,
    /// CPU used by the load generator and by the appliance, in cores (CPU-seconds per
    /// second of the measured interval), medians.
    pub client_cpu_share: Option<f64>,
    pub appliance_cpu_share: Option<f64>,
    /// Set for `loupe-*` modes only.
    pub vs_direct: Comparison,
    pub vs_best_peer: Comparison,
}

impl Cell {
    /// No clean repetition.
    pub fn failed(&self) -> bool {
        self.ok_reps == 0
    }
}

/// The crypto floor as measured and its derived per-unit floors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FloorSummary {
    pub measured: CryptoFloor,
    /// [`CryptoFloor::split_handshake_cpu_us`].
    pub split_handshake_cpu_us: f64,
    /// [`CryptoFloor::decrypted_gb_cpu_s`].
    pub decrypted_gb_cpu_s: f64,
}

/// A whole run, aggregated. Build it with [`BenchReport::new`]; the fields are public
/// for reading (and for serde), the aggregates are not recomputed if they change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    pub machine: Machine,
    pub floor: Option<FloorSummary>,
    /// In the order they ran (first appearance).
    pub modes: Vec<String>,
    /// handshakes, requests, bulk-*, idle first, then any other in order of appearance.
    pub workloads: Vec<String>,
    /// One per (mode, workload) measured, modes major.
    pub cells: Vec<Cell>,
    pub notes: Vec<String>,
    /// loupe-inspect against loupe-decrypt, per workload both ran (empty unless both did).
    #[serde(default)]
    pub inspection: Vec<InspectionCost>,
    /// loupe-signatures against loupe-inspect, per workload both ran (same shape: the
    /// `decrypt` field holds loupe-inspect's cost, `inspect` loupe-signatures').
    #[serde(default)]
    pub signatures: Vec<InspectionCost>,
    /// loupe-signatures-suite (the suite's eight real-style rules) against loupe-inspect,
    /// in the same shape; no target.
    #[serde(default)]
    pub suite_signatures: Vec<InspectionCost>,
    /// The raw measurements.
    pub measurements: Vec<Measurement>,
}

/// Where [`BenchReport::write_all`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportPaths {
    pub markdown: PathBuf,
    pub json: PathBuf,
    pub svg: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Handshakes,
    Requests,
    Bulk,
    Idle,
    Other,
}

fn kind(workload: &str) -> Kind {
    match workload {
        "handshakes" | "handshakes-browser" => Kind::Handshakes,
        "requests" | "requests-browser" | "requests-h2" => Kind::Requests,
        "idle" | "idle-h2" => Kind::Idle,
        w if w.starts_with("bulk") => Kind::Bulk,
        _ => Kind::Other,
    }
}

fn units(workload: &str) -> (&'static str, &'static str) {
    match kind(workload) {
        Kind::Handshakes => ("conn/s", "CPU-µs/handshake"),
        Kind::Requests => ("req/s", "CPU-µs/request"),
        Kind::Bulk => ("MB/s", "CPU-s/GB"),
        Kind::Idle => ("B/session", "RSS B/session"),
        Kind::Other => ("/s", "CPU-µs/unit"),
    }
}

/// `direct`: the baseline.
pub fn is_baseline(mode: &str) -> bool {
    mode == "direct"
}

/// `loupe-*`: ours.
pub fn is_loupe(mode: &str) -> bool {
    mode.starts_with("loupe")
}

/// `sslsplit*`, `squid*`, `mitmproxy*`: the peers.
pub fn is_peer(mode: &str) -> bool {
    mode.starts_with("sslsplit") || mode.starts_with("squid") || mode.starts_with("mitmproxy")
}

/// Higher is better for the headline (throughput), except memory per session.
fn headline_higher_is_better(workload: &str) -> bool {
    kind(workload) != Kind::Idle
}

fn rep_failure(m: &Measurement) -> Option<RepFailure> {
    let l = &m.load;
    let mut why = Vec::new();
    if l.errors > 0 {
        why.push(format!("{} error{}", l.errors, if l.errors == 1 { "" } else { "s" }));
    }
    if l.integrity_ok == Some(false) {
        why.push("integrity check failed".to_string());
    }
    if l.completed == 0 {
        why.push("completed nothing".to_string());
    } else if kind(&m.workload) == Kind::Bulk && l.bytes == 0 {
        why.push("moved no bytes".to_string());
    }
    if !(l.elapsed_s.is_finite() && l.elapsed_s > 0.0) {
        why.push(format!("measured interval {} s", l.elapsed_s));
    }
    (!why.is_empty()).then(|| RepFailure {
        rep: m.rep,
        reason: why.join(", "),
        first_errors: l.first_errors.clone(),
    })
}

fn per_session(m: &Measurement) -> Option<f64> {
    let sessions = m.load.sessions_held.unwrap_or(m.load.completed);
    let rss = m.appliance_rss_bytes?;
    (sessions > 0).then(|| rss as f64 / sessions as f64)
}

fn headline_value(m: &Measurement) -> Option<f64> {
    let l = &m.load;
    match kind(&m.workload) {
        Kind::Bulk => l
            .mb_per_s
            .or_else(|| (l.elapsed_s > 0.0).then(|| l.bytes as f64 / l.elapsed_s / 1e6)),
        Kind::Idle => per_session(m),
        _ => {
            if l.per_second > 0.0 {
                Some(l.per_second)
            } else {
                (l.elapsed_s > 0.0).then(|| l.completed as f64 / l.elapsed_s)
            }
        }
    }
}

fn cost_value(m: &Measurement) -> Option<f64> {
    let l = &m.load;
    match kind(&m.workload) {
        Kind::Idle => per_session(m),
        Kind::Bulk => {
            let cpu = m.appliance_cpu_s?;
            (l.bytes > 0).then(|| cpu / (l.bytes as f64 / 1e9))
        }
        _ => {
            let cpu = m.appliance_cpu_s?;
            (l.completed > 0).then(|| cpu * 1e6 / l.completed as f64)
        }
    }
}

/// CPU-µs of the whole machine per handshake or request, CPU-s per GB for bulk.
fn machine_cost_value(m: &Measurement) -> Option<f64> {
    let l = &m.load;
    let cpu = l.machine_cpu_s?;
    match kind(&m.workload) {
        Kind::Idle => None,
        Kind::Bulk => (l.bytes > 0).then(|| cpu / (l.bytes as f64 / 1e9)),
        _ => (l.completed > 0).then(|| cpu * 1e6 / l.completed as f64),
    }
}

fn latency_of(m: &Measurement) -> Option<Latency> {
    match kind(&m.workload) {
        Kind::Handshakes => m.load.handshake_us,
        Kind::Requests => m.load.latency_us,
        Kind::Other => m.load.latency_us.or(m.load.handshake_us),
        Kind::Bulk | Kind::Idle => None,
    }
}

fn median(values: &[f64]) -> Option<f64> {
    Stat::of(values).map(|s| s.median)
}

fn aggregate(mode: &str, workload: &str, ms: &[&Measurement], floor: Option<&FloorSummary>) -> Cell {
    let (headline_unit, cost_unit) = units(workload);
    let failures: Vec<RepFailure> = ms.iter().filter_map(|m| rep_failure(m)).collect();
    let ok: Vec<&Measurement> = ms.iter().copied().filter(|m| rep_failure(m).is_none()).collect();
    let collect = |f: &dyn Fn(&Measurement) -> Option<f64>| -> Vec<f64> { ok.iter().filter_map(|m| f(m)).collect() };

    let headline = Stat::of(&collect(&headline_value));
    let cost = Stat::of(&collect(&cost_value));
    let machine_cost = Stat::of(&collect(&machine_cost_value));
    let lats: Vec<Latency> = ok.iter().filter_map(|m| latency_of(m)).collect();
    let latency = (!lats.is_empty()).then(|| {
        let med = |f: fn(&Latency) -> f64| median(&lats.iter().map(f).collect::<Vec<_>>()).unwrap_or(0.0);
        let detailed = kind(workload) == Kind::Requests;
        LatencySummary {
            p50_us: med(|l| l.p50),
            p90_us: detailed.then(|| med(|l| l.p90)),
            p99_us: med(|l| l.p99),
            p999_us: detailed.then(|| med(|l| l.p999)),
        }
    });
    let share = |cpu: &dyn Fn(&Measurement) -> Option<f64>| {
        median(&collect(&|m: &Measurement| {
            let c = cpu(m)?;
            (m.load.elapsed_s > 0.0).then(|| c / m.load.elapsed_s)
        }))
    };
    let client_cpu_share = share(&|m| Some(m.load.client_cpu_s));
    let appliance_cpu_share = share(&|m| m.appliance_cpu_s);
    let floor_multiple = match (cost, floor, kind(workload)) {
        (Some(c), Some(f), Kind::Handshakes) => ratio_value(c.median, f.split_handshake_cpu_us),
        (Some(c), Some(f), Kind::Bulk) => ratio_value(c.median, f.decrypted_gb_cpu_s),
        _ => None,
    };
    Cell {
        mode: mode.to_string(),
        workload: workload.to_string(),
        routed: ms.iter().any(|m| m.routed),
        reps: ms.len(),
        ok_reps: ok.len(),
        failures,
        headline,
        headline_unit: headline_unit.to_string(),
        latency,
        cost,
        cost_unit: cost_unit.to_string(),
        machine_cost,
        floor_multiple,
        client_cpu_share,
        appliance_cpu_share,
        vs_direct: Comparison::default(),
        vs_best_peer: Comparison::default(),
    }
}

fn ratio_value(a: f64, b: f64) -> Option<f64> {
    let r = a / b;
    (b > 0.0 && r.is_finite()).then_some(r)
}

fn ratio(a: Option<f64>, b: Option<f64>, against: &str) -> Option<Ratio> {
    ratio_value(a?, b?).map(|value| Ratio {
        against: against.to_string(),
        value,
    })
}

/// The best of `others` for one figure, as a ratio.
fn best_ratio(mine: Option<f64>, others: &[(&str, Option<f64>)], higher_is_better: bool) -> Option<Ratio> {
    let best = others
        .iter()
        .filter_map(|&(mode, v)| v.filter(|v| v.is_finite() && *v > 0.0).map(|v| (mode, v)))
        .reduce(|a, b| {
            let b_better = if higher_is_better { b.1 > a.1 } else { b.1 < a.1 };
            if b_better {
                b
            } else {
                a
            }
        })?;
    ratio(mine, Some(best.1), best.0)
}

fn headline_of(c: &Cell) -> Option<f64> {
    c.headline.map(|s| s.median)
}
fn machine_cost_of(c: &Cell) -> Option<f64> {
    c.machine_cost.map(|s| s.median)
}

fn cost_of(c: &Cell) -> Option<f64> {
    c.cost.map(|s| s.median)
}
fn p50_of(c: &Cell) -> Option<f64> {
    c.latency.map(|l| l.p50_us)
}
fn p99_of(c: &Cell) -> Option<f64> {
    c.latency.map(|l| l.p99_us)
}

const WORKLOAD_ORDER: [&str; 9] = [
    "handshakes",
    "handshakes-browser",
    "requests",
    "requests-browser",
    "requests-h2",
    "bulk-1",
    "bulk-8",
    "idle",
    "idle-h2",
];

/// The mode with HTTP inspection on, and its baseline: the same loupe with it off.
/// The AF_XDP floor: loupe's wire copying frames port to port with no TCP stack.
pub const FORWARD_MODE: &str = "xsk-forward";
/// The modes measured against [`FORWARD_MODE`], each with its bulk target (issue 13):
/// the relay with no TLS, and decryption.
const OVER_FORWARD: [(&str, f64); 2] = [("loupe-splice", 1.5), ("loupe-decrypt", 2.0)];
/// loupe-decrypt's whole-machine CPU per GB at most this multiple of `direct`'s.
const DECRYPT_MACHINE_OVER_DIRECT: f64 = 1.15;

pub const INSPECT_MODE: &str = "loupe-inspect";
pub const INSPECT_BASELINE: &str = "loupe-decrypt";
/// Signatures are measured on top of HTTP inspection: loupe-signatures against
/// loupe-inspect.
pub const SIGNATURES_MODE: &str = "loupe-signatures";
/// The suite's own handful of real-style rules, against loupe-inspect too.
pub const SUITE_SIGNATURES_MODE: &str = "loupe-signatures-suite";

/// What HTTP inspection adds: a loupe-inspect cost against loupe-decrypt's for the same
/// workload of the same run (medians of their clean repetitions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InspectionCost {
    pub workload: String,
    /// The cost's unit ("CPU-µs/request", "CPU-s/GB", "RSS B/session").
    pub unit: String,
    pub decrypt: f64,
    pub inspect: f64,
    /// `inspect − decrypt`, in `unit`.
    pub added: f64,
    /// `inspect ÷ decrypt`; `None` when decrypt's cost is not positive.
    pub ratio: Option<f64>,
    /// The issue's target, in words ("≤ 3 CPU-µs", "≤ +10%"); `None` without one.
    pub target: Option<String>,
    /// The figure meets the target (measured once, on a shared machine: noisy).
    pub within_target: Option<bool>,
}

/// The target on inspection's added cost for a workload.
#[derive(Debug, Clone, Copy, PartialEq)]
enum InspectTarget {
    /// `added` at most this (in the cost's unit).
    Added(f64),
    /// `ratio` at most this.
    Ratio(f64),
}

fn inspect_target(workload: &str) -> Option<InspectTarget> {
    match (kind(workload), workload) {
        (Kind::Requests, _) => Some(InspectTarget::Added(3.0)),
        (Kind::Bulk, _) => Some(InspectTarget::Ratio(1.10)),
        (Kind::Idle, "idle-h2") => Some(InspectTarget::Added(16.0 * 1024.0)),
        (Kind::Idle, _) => Some(InspectTarget::Added(2.0 * 1024.0)),
        _ => None,
    }
}

/// The issue's targets on what 5,000 signatures add (issue 14): per request, per GB.
fn signatures_target(workload: &str) -> Option<InspectTarget> {
    match kind(workload) {
        Kind::Requests => Some(InspectTarget::Added(5.0)),
        Kind::Bulk => Some(InspectTarget::Added(0.3)),
        _ => None,
    }
}

fn inspection_cost(decrypt: &Cell, inspect: &Cell) -> Option<InspectionCost> {
    compared_cost(decrypt, inspect, inspect_target(&decrypt.workload))
}

/// `mode`'s cost against `baseline`'s for one workload, and whether it meets `target`.
fn compared_cost(decrypt: &Cell, inspect: &Cell, target: Option<InspectTarget>) -> Option<InspectionCost> {
    let (d, i) = (cost_of(decrypt)?, cost_of(inspect)?);
    if decrypt.failed() || inspect.failed() {
        return None;
    }
    let added = i - d;
    let ratio = ratio_value(i, d);
    let (text, within) = match target {
        Some(InspectTarget::Added(max)) => {
            let unit = match kind(&decrypt.workload) {
                Kind::Idle => format!("{} B ({} KiB)", fmt_num(max), max / 1024.0),
                Kind::Bulk => format!("+{max} CPU-s/GB"),
                _ => format!("{max} CPU-µs"),
            };
            (Some(format!("≤ {unit}")), Some(added <= max))
        }
        Some(InspectTarget::Ratio(max)) => (Some(format!("≤ +{:.0}%", (max - 1.0) * 100.0)), ratio.map(|r| r <= max)),
        None => (None, None),
    };
    Some(InspectionCost {
        workload: decrypt.workload.clone(),
        unit: decrypt.cost_unit.clone(),
        decrypt: d,
        inspect: i,
        added,
        ratio,
        target: text,
        within_target: within,
    })
}

impl BenchReport {
    /// Aggregates `measurements` (any order; modes keep their order of first
    /// appearance) and writes the notes the figures call for.
    pub fn new(machine: Machine, floor: Option<CryptoFloor>, measurements: Vec<Measurement>) -> Self {
        let floor = floor.map(|f| FloorSummary {
            split_handshake_cpu_us: f.split_handshake_cpu_us(),
            decrypted_gb_cpu_s: f.decrypted_gb_cpu_s(),
            measured: f,
        });
        let mut modes: Vec<String> = Vec::new();
        let mut seen_workloads: Vec<String> = Vec::new();
        for m in &measurements {
            if !modes.contains(&m.mode) {
                modes.push(m.mode.clone());
            }
            if !seen_workloads.contains(&m.workload) {
                seen_workloads.push(m.workload.clone());
            }
        }
        let rank = |w: &str| {
            // Every bulk-N where bulk-1 stands (ordered by N below), others last.
            let at = |name: &str| WORKLOAD_ORDER.iter().position(|o| *o == name);
            match kind(w) {
                Kind::Bulk => at("bulk-1"),
                _ => at(w),
            }
            .unwrap_or(WORKLOAD_ORDER.len())
        };
        let mut workloads = seen_workloads.clone();
        workloads.sort_by_key(|w| {
            (
                rank(w),
                if kind(w) == Kind::Bulk { bulk_streams(w) } else { 0 },
                seen_workloads.iter().position(|s| s == w),
            )
        });

        let mut cells = Vec::new();
        for mode in &modes {
            for w in &workloads {
                let ms: Vec<&Measurement> = measurements
                    .iter()
                    .filter(|m| &m.mode == mode && &m.workload == w)
                    .collect();
                if !ms.is_empty() {
                    cells.push(aggregate(mode, w, &ms, floor.as_ref()));
                }
            }
        }

        // Ratios of the loupe cells.
        let snapshot = cells.clone();
        for c in cells.iter_mut().filter(|c| is_loupe(&c.mode)) {
            let same: Vec<&Cell> = snapshot.iter().filter(|o| o.workload == c.workload).collect();
            if let Some(d) = same.iter().find(|o| is_baseline(&o.mode)) {
                c.vs_direct = Comparison {
                    headline: ratio(headline_of(c), headline_of(d), &d.mode),
                    cost: ratio(cost_of(c), cost_of(d), &d.mode),
                    machine_cost: ratio(machine_cost_of(c), machine_cost_of(d), &d.mode),
                    p50: ratio(p50_of(c), p50_of(d), &d.mode),
                    p99: ratio(p99_of(c), p99_of(d), &d.mode),
                };
            }
            let peers: Vec<&&Cell> = same.iter().filter(|o| is_peer(&o.mode)).collect();
            let pick = |f: fn(&Cell) -> Option<f64>| -> Vec<(&str, Option<f64>)> {
                peers.iter().map(|o| (o.mode.as_str(), f(o))).collect()
            };
            c.vs_best_peer = Comparison {
                headline: best_ratio(
                    headline_of(c),
                    &pick(headline_of),
                    headline_higher_is_better(&c.workload),
                ),
                cost: best_ratio(cost_of(c), &pick(cost_of), false),
                machine_cost: best_ratio(machine_cost_of(c), &pick(machine_cost_of), false),
                p50: best_ratio(p50_of(c), &pick(p50_of), false),
                p99: best_ratio(p99_of(c), &pick(p99_of), false),
            };
        }

        let inspection = workloads
            .iter()
            .filter_map(|w| {
                let find = |mode: &str| cells.iter().find(|c| c.mode == mode && &c.workload == w);
                inspection_cost(find(INSPECT_BASELINE)?, find(INSPECT_MODE)?)
            })
            .collect();
        let signatures = workloads
            .iter()
            .filter_map(|w| {
                let find = |mode: &str| cells.iter().find(|c| c.mode == mode && &c.workload == w);
                compared_cost(find(INSPECT_MODE)?, find(SIGNATURES_MODE)?, signatures_target(w))
            })
            .collect();
        let suite_signatures = workloads
            .iter()
            .filter_map(|w| {
                let find = |mode: &str| cells.iter().find(|c| c.mode == mode && &c.workload == w);
                compared_cost(find(INSPECT_MODE)?, find(SUITE_SIGNATURES_MODE)?, None)
            })
            .collect();
        let mut report = Self {
            machine,
            floor,
            modes,
            workloads,
            cells,
            notes: Vec::new(),
            inspection,
            signatures,
            suite_signatures,
            measurements,
        };
        report.notes = report.auto_notes();
        report
    }

    fn auto_notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        let routed: Vec<&String> = self
            .modes
            .iter()
            .filter(|m| self.cells.iter().any(|c| &c.mode == *m && c.routed))
            .collect();
        if !routed.is_empty() {
            let names = match routed.as_slice() {
                [init @ .., last] if !init.is_empty() => format!(
                    "{} and {last}",
                    init.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                ),
                _ => routed[0].to_string(),
            };
            notes.push(format!(
                "{names} ran in the routed variant of the lab (the host in the middle routes between client and origin instead of bridging them)."
            ));
        }
        let any_loupe = self.modes.iter().any(|m| is_loupe(m));
        if any_loupe && !self.modes.iter().any(|m| is_baseline(m)) {
            notes.push("No `direct` run: no ratios against the baseline.".into());
        }
        if any_loupe && !self.modes.iter().any(|m| is_peer(m)) {
            notes.push("No peer (sslsplit, squid, mitmproxy) was measured: no ratios against a peer.".into());
        }
        for mode in &self.modes {
            let mine: Vec<&Cell> = self.cells.iter().filter(|c| &c.mode == mode).collect();
            let measured_any = mine.iter().any(|c| c.ok_reps > 0);
            if measured_any && mine.iter().all(|c| c.cost.is_none() && c.appliance_cpu_share.is_none()) {
                notes.push(if is_baseline(mode) {
                    format!("`{mode}` is a kernel bridge: no appliance process, so no appliance costs (the whole machine's are measured).")
                } else {
                    format!("`{mode}`: no appliance process was sampled, so no costs.")
                });
            }
        }
        if self.floor.is_none() {
            notes.push("The crypto floor was not measured (openssl speed): no floor multiples.".into());
        }
        let busy: Vec<String> = self
            .cells
            .iter()
            .filter(|c| c.client_cpu_share.is_some_and(|s| s >= 0.9))
            .map(|c| format!("{}/{}", c.mode, c.workload))
            .collect();
        if !busy.is_empty() {
            notes.push(format!(
                "The load generator used 0.9 core or more in {}: check it did not limit those figures.",
                busy.join(", ")
            ));
        }
        for (workload_kind, what) in [(Kind::Requests, "request"), (Kind::Handshakes, "handshake")] {
            let Some(rate) = self
                .measurements
                .iter()
                .filter(|m| kind(&m.workload) == workload_kind)
                .find_map(|m| m.load.offered_rate)
            else {
                continue;
            };
            // A request's response and a handshake's one request both count: the offered
            // rate is what a mode keeping up completes; 5% short of it is past scheduling
            // noise.
            let behind: Vec<String> = self
                .cells
                .iter()
                .filter(|c| kind(&c.workload) == workload_kind)
                .filter(|c| c.headline.is_some_and(|h| h.median < 0.95 * rate))
                .map(|c| format!("{}/{}", c.mode, c.workload))
                .collect();
            notes.push(format!(
                "The {what} workloads were offered {} {what}s/s in all on a fixed schedule (open loop): the modes \
                 compared carried the same load, and latency counts from each {what}'s scheduled time.{}",
                fmt_num(rate),
                if behind.is_empty() {
                    " Every mode kept up.".to_string()
                } else {
                    format!(" Fell behind (under 95% of it): {}.", behind.join(", "))
                }
            ));
        }
        if let Some(note) = self.hello_shapes_note() {
            notes.push(note);
        }
        let failed: usize = self.cells.iter().map(|c| c.failures.len()).sum();
        if failed > 0 {
            notes.push(format!(
                "{failed} repetition{} did not run clean (see Failed runs): figures come from the clean ones only.",
                if failed == 1 { "" } else { "s" }
            ));
        }
        notes
    }

    /// What the `-browser` workloads offered, and the key exchange each mode settled on
    /// with the generator in them and in the classic ones (None when no `-browser`
    /// workload ran).
    fn hello_shapes_note(&self) -> Option<String> {
        if !self.workloads.iter().any(|w| w.ends_with("-browser")) {
            return None;
        }
        let chosen = |mode: &str, browser: bool| {
            let mut groups: BTreeMap<&str, u64> = BTreeMap::new();
            for m in &self.measurements {
                if m.mode == mode && m.workload.ends_with("-browser") == browser && kind(&m.workload) != Kind::Other {
                    for (group, n) in &m.load.key_exchange {
                        *groups.entry(group.as_str()).or_default() += n;
                    }
                }
            }
            match groups.len() {
                0 => "—".to_string(),
                1 => groups.keys().next().map(|g| g.to_string()).unwrap_or_default(),
                _ => groups
                    .iter()
                    .map(|(g, n)| format!("{g} ×{n}"))
                    .collect::<Vec<_>>()
                    .join(" + "),
            }
        };
        let per_mode: Vec<String> = self
            .modes
            .iter()
            .map(|mode| format!("{mode}: {} (classic: {})", chosen(mode, true), chosen(mode, false)))
            .collect();
        Some(format!(
            "The `-browser` workloads send a ClientHello as current browsers do, with an X25519MLKEM768 and an X25519 \
             key share (about 1.5 KB, two TCP segments); the others one X25519 share. The crypto floor counts X25519 \
             only. Key exchange the generator's handshakes ended with, browser hello: {}. A group the hello carried no \
             share for (sslsplit's P-256) costs a HelloRetryRequest: one more round trip per handshake.",
            per_mode.join("; ")
        ))
    }

    /// The workloads, in order, of which some cell has what `has` looks for.
    fn workloads_with(&self, has: impl Fn(&Cell) -> bool) -> Vec<&String> {
        self.workloads
            .iter()
            .filter(|w| self.cells.iter().any(|c| &c.workload == *w && has(c)))
            .collect()
    }

    /// The cell of (mode, workload), if measured.
    pub fn cell(&self, mode: &str, workload: &str) -> Option<&Cell> {
        self.cells.iter().find(|c| c.mode == mode && c.workload == workload)
    }

    /// Adds a note (e.g. "quick run: one repetition, short durations").
    pub fn add_note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// `<date>-<commit>`, e.g. "2026-04-05-1a2b3c4d5e6f".
    pub fn file_stem(&self) -> String {
        let date: String = self.machine.date.chars().take(10).collect();
        sanitize(&format!("{date}-{}", self.machine.git_commit))
    }

    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).context("serializing the report")
    }

    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).context("parsing a report")
    }

    /// Writes `<date>-<commit>.md`, `.json` and `.svg` into `dir` (created if missing);
    /// when a report of that name is already there, `<date>-<commit>-2` and so on.
    pub fn write_all(&self, dir: &Path) -> Result<ReportPaths> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let stem = self.file_stem();
        let paths = (1..)
            .map(|k| {
                let s = if k == 1 { stem.clone() } else { format!("{stem}-{k}") };
                ReportPaths {
                    markdown: dir.join(format!("{s}.md")),
                    json: dir.join(format!("{s}.json")),
                    svg: dir.join(format!("{s}.svg")),
                }
            })
            .find(|p| !p.markdown.exists() && !p.json.exists() && !p.svg.exists())
            .expect("an unused name");
        fs::write(&paths.markdown, self.to_markdown())
            .with_context(|| format!("writing {}", paths.markdown.display()))?;
        fs::write(&paths.json, self.to_json()?).with_context(|| format!("writing {}", paths.json.display()))?;
        self.to_svg(&paths.svg)?;
        Ok(paths)
    }

    /// The report as markdown: throughput, latency, costs, CPU use, the ratios of the
    /// loupe modes, the crypto floor, failed runs and notes.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(out, "# loupe bench: {}, commit {}\n", m.date, m.git_commit);
        let _ = writeln!(
            out,
            "Machine: {} cores ({}), kernel {}, XDP mode {}.\n",
            m.cores, m.cpu_model, m.kernel, m.xdp_mode
        );
        let max_reps = self.cells.iter().map(|c| c.reps).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "Each figure is the median of the clean repetitions ({max_reps} per cell at most), with (min–max) when there were several. \
             FAILED: no clean repetition; n/a: not applicable to the mode (no appliance process); —: not measured.\n"
        );

        // Throughput.
        out.push_str("## Throughput\n\n");
        let mut header = vec!["mode".to_string()];
        for w in &self.workloads {
            let (unit, _) = units(w);
            let better = if headline_higher_is_better(w) {
                ""
            } else {
                ", lower is better"
            };
            header.push(format!("{w} ({unit}{better})"));
        }
        let rows = self
            .modes
            .iter()
            .map(|mode| {
                let mut row = vec![mode.clone()];
                for w in &self.workloads {
                    row.push(self.figure(mode, w, |c| c.headline, fmt_stat));
                }
                row
            })
            .collect();
        out.push_str(&md_table(&header, rows));

        // Latency.
        let lat_workloads = self.workloads_with(|c| c.latency.is_some());
        if !lat_workloads.is_empty() {
            out.push_str("\n## Latency\n\n");
            out.push_str(
                "Handshakes: TCP connect to handshake done. Requests: corrected for coordinated omission.\n\n",
            );
            let mut header = vec!["mode".to_string()];
            let mut cols: Vec<(&String, &str)> = Vec::new();
            for w in &lat_workloads {
                let ps: &[&str] = if kind(w) == Kind::Requests {
                    &["p50", "p90", "p99", "p99.9"]
                } else {
                    &["p50", "p99"]
                };
                for p in ps {
                    header.push(format!("{w} {p}"));
                    cols.push((w, p));
                }
            }
            let rows = self
                .modes
                .iter()
                .map(|mode| {
                    let mut row = vec![mode.clone()];
                    for (w, p) in &cols {
                        let pick = |c: &Cell| {
                            c.latency.and_then(|l| match *p {
                                "p50" => Some(l.p50_us),
                                "p90" => l.p90_us,
                                "p99" => Some(l.p99_us),
                                _ => l.p999_us,
                            })
                        };
                        row.push(self.figure(mode, w, pick, fmt_us));
                    }
                    row
                })
                .collect();
            out.push_str(&md_table(&header, rows));
        }

        // Costs.
        out.push_str("\n## Costs of the appliance (per unit of work, lower is better)\n\n");
        if self.floor.is_some() {
            out.push_str("In parentheses: the multiple of this machine's crypto floor for that unit.\n\n");
        }
        let mut header = vec!["mode".to_string()];
        for w in &self.workloads {
            let (_, unit) = units(w);
            header.push(match kind(w) {
                Kind::Bulk | Kind::Other => format!("{unit} ({w})"),
                // Several workloads of a kind (HTTP/1.1 and HTTP/2, the two hello
                // shapes): name all but the first.
                _ if w.ends_with("-h2") || w.ends_with("-browser") => format!("{unit} ({w})"),
                _ => unit.to_string(),
            });
        }
        let rows = self
            .modes
            .iter()
            .map(|mode| {
                let mut row = vec![mode.clone()];
                for w in &self.workloads {
                    let text = self.figure(mode, w, |c| c.cost.map(|s| s.median), fmt_num);
                    let text = match self
                        .cell(mode, w)
                        .and_then(|c| c.floor_multiple.filter(|_| c.cost.is_some()))
                    {
                        Some(x) => format!("{text} ({}× floor)", fmt_num(x)),
                        None => text,
                    };
                    row.push(text);
                }
                row
            })
            .collect();
        out.push_str(&md_table(&header, rows));

        // The whole machine.
        let machine_workloads = self.workloads_with(|c| c.machine_cost.is_some());
        if !machine_workloads.is_empty() {
            out.push_str("\n## Costs of the whole machine (per unit of work, lower is better)\n\n");
            out.push_str(
                "The busy time of all cores in `/proc/stat` (user, nice, system, irq, softirq; not idle, iowait or steal) over the \
                 measured interval, divided by the work done: generator, origin, appliance and the kernel between them, minus nothing. \
                 It is the figure modes are compared on, `direct` included. The appliance figure above is the CPU time of the \
                 appliance's processes over the same interval; on veth it also holds the peers' kernel TCP work that runs as \
                 softirq while the appliance sends, billed to it by the scheduler's tick.\n\n",
            );
            let mut header = vec!["mode".to_string()];
            header.extend(machine_workloads.iter().map(|w| format!("{} ({w})", units(w).1)));
            let rows = self
                .modes
                .iter()
                .map(|mode| {
                    let mut row = vec![mode.clone()];
                    for w in &machine_workloads {
                        row.push(self.figure(mode, w, |c| c.machine_cost, fmt_stat));
                    }
                    row
                })
                .collect();
            out.push_str(&md_table(&header, rows));
        }

        // CPU use.
        out.push_str("\n## CPU use (cores: load generator / appliance)\n\n");
        let mut header = vec!["mode".to_string()];
        header.extend(self.workloads.iter().cloned());
        let rows = self
            .modes
            .iter()
            .map(|mode| {
                let mut row = vec![mode.clone()];
                for w in &self.workloads {
                    row.push(match self.cell(mode, w) {
                        None => "—".into(),
                        Some(c) if c.failed() => "FAILED".into(),
                        Some(c) => format!(
                            "{} / {}",
                            c.client_cpu_share.map_or("n/a".into(), |s| format!("{s:.2}")),
                            c.appliance_cpu_share.map_or("n/a".into(), |s| format!("{s:.2}"))
                        ),
                    });
                }
                row
            })
            .collect();
        out.push_str(&md_table(&header, rows));

        // Ratios.
        let loupe: Vec<&Cell> = self.cells.iter().filter(|c| is_loupe(&c.mode)).collect();
        if !loupe.is_empty() {
            out.push_str("\n## loupe against the baseline and the best peer\n\n");
            out.push_str(
                "loupe's figure ÷ the other's. The figure is the one of the first table (memory per session for idle); cost is the \
                 appliance's, machine the whole machine's. For throughput above 1 is better; for cost, memory and latency below 1 is \
                 better. The best peer is the best of sslsplit, squid and mitmproxy for each figure.\n\n",
            );
            let header: Vec<String> = [
                "mode",
                "workload",
                "figure vs direct",
                "figure vs best peer",
                "cost vs direct",
                "cost vs best peer",
                "machine vs direct",
                "machine vs best peer",
                "p99 vs direct",
                "p99 vs best peer",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let rows = loupe
                .iter()
                .map(|c| {
                    let r = |r: &Option<Ratio>, with_name: bool| match r {
                        _ if c.failed() => "FAILED".to_string(),
                        Some(r) if with_name => format!("{:.2}× ({})", r.value, r.against),
                        Some(r) => format!("{:.2}×", r.value),
                        None => "—".to_string(),
                    };
                    vec![
                        c.mode.clone(),
                        c.workload.clone(),
                        r(&c.vs_direct.headline, false),
                        r(&c.vs_best_peer.headline, true),
                        r(&c.vs_direct.cost, false),
                        r(&c.vs_best_peer.cost, true),
                        r(&c.vs_direct.machine_cost, false),
                        r(&c.vs_best_peer.machine_cost, true),
                        r(&c.vs_direct.p99, false),
                        r(&c.vs_best_peer.p99, true),
                    ]
                })
                .collect();
            out.push_str(&md_table_left(&header, rows, 2));
        }

        // Inspection.
        if !self.signatures.is_empty() {
            out.push_str(&self.signatures_markdown());
        }
        if !self.suite_signatures.is_empty() {
            out.push_str(&self.suite_signatures_markdown());
        }
        if !self.inspection.is_empty() {
            out.push_str(&self.inspection_markdown());
        }

        // loupe's relays against the AF_XDP floor and the kernel path.
        if self.modes.iter().any(|m| m == FORWARD_MODE) {
            out.push_str(&self.forward_floor_markdown());
        }

        // Floor.
        out.push_str("\n## Crypto floor\n\n");
        match &self.floor {
            None => out.push_str("Not measured.\n"),
            Some(f) => {
                let c = &f.measured;
                let version = if c.openssl_version.is_empty() {
                    String::new()
                } else {
                    format!(" {}", c.openssl_version)
                };
                let _ = writeln!(
                    out,
                    "This machine's `openssl speed`{version}, one core, per CPU-second:\n"
                );
                out.push_str(&md_table(
                    &[
                        "AES-128-GCM (16 KiB)".into(),
                        "X25519".into(),
                        "ECDSA P-256 sign".into(),
                        "ECDSA P-256 verify".into(),
                    ],
                    vec![vec![
                        format!("{} MB/s", fmt_num(c.aes_128_gcm_bytes_per_s / 1e6)),
                        format!("{}/s", fmt_num(c.x25519_per_s)),
                        format!("{}/s", fmt_num(c.ecdsa_p256_sign_per_s)),
                        format!("{}/s", fmt_num(c.ecdsa_p256_verify_per_s)),
                    ]],
                ));
                let _ = writeln!(
                    out,
                    "\n- Split handshake: 2 X25519 (one per leg) + 1 ECDSA sign (client leg, forged certificate from the cache) \
                     + 2 ECDSA verify (server leg: CertificateVerify and the leaf's signature) = **{} CPU-µs**.\n\
                     - Decrypted GB (10^9 bytes): 2 AES-128-GCM passes (decrypt, re-encrypt) = **{} CPU-s**.",
                    fmt_num(f.split_handshake_cpu_us),
                    fmt_num(f.decrypted_gb_cpu_s)
                );
            }
        }

        // Failures.
        let failed: Vec<&Cell> = self.cells.iter().filter(|c| !c.failures.is_empty()).collect();
        if !failed.is_empty() {
            out.push_str("\n## Failed runs\n\n");
            for c in failed {
                for f in &c.failures {
                    let _ = write!(out, "- {} / {} rep {}: {}", c.mode, c.workload, f.rep, f.reason);
                    if !f.first_errors.is_empty() {
                        let errs: Vec<String> = f
                            .first_errors
                            .iter()
                            .take(3)
                            .map(|e| format!("\"{}\"", one_line(e)))
                            .collect();
                        let _ = write!(out, "; first errors: {}", errs.join(", "));
                    }
                    out.push('\n');
                }
            }
        }

        if !self.notes.is_empty() {
            out.push_str("\n## Notes\n\n");
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        out
    }

    /// The "What signatures cost" section.
    fn signatures_markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n## What signatures cost ({SIGNATURES_MODE} against {INSPECT_MODE})\n\n\
             Both ran in this run with the same loupe and configuration, but {SIGNATURES_MODE} loads 5,000 generated \
             content signatures in ET Open's style (URI, host, user agent, header and body contents, some with \
             pcre, none matching the bench's traffic): every transaction's heads and bodies go through the \
             prefilter. Added: {SIGNATURES_MODE}'s median cost minus {INSPECT_MODE}'s. One run on a shared machine: \
             each figure is given with the min–max of its repetitions.\n"
        );
        out.push_str(&self.comparison_table(&self.signatures, INSPECT_MODE, SIGNATURES_MODE, "signatures ÷ inspect"));
        out
    }

    /// The "What the suite's rules cost" section.
    fn suite_signatures_markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n## What the suite's rules cost ({SUITE_SIGNATURES_MODE} against {INSPECT_MODE})\n\n\
             Both ran in this run with the same loupe and configuration, but {SUITE_SIGNATURES_MODE} loads the \
             signature suite's eight rules in ET Open's style (URI, header, user agent, body and `tls.sni` \
             contents, `pcre`, `distance`/`within`, `flowbits`; none matching the bench's traffic): a deployment's \
             own handful of rules. Added: {SUITE_SIGNATURES_MODE}'s median cost minus {INSPECT_MODE}'s, each \
             given with the min–max of its repetitions.\n"
        );
        out.push_str(&self.comparison_table(
            &self.suite_signatures,
            INSPECT_MODE,
            SUITE_SIGNATURES_MODE,
            "suite ÷ inspect",
        ));
        out
    }

    /// The "What HTTP inspection costs" section.
    fn inspection_markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n## What HTTP inspection costs ({INSPECT_MODE} against {INSPECT_BASELINE})\n\n\
             Both ran in this run with the same loupe; their configurations differ only by inspection: \
             {INSPECT_BASELINE} has `[inspection] http = false`, {INSPECT_MODE} has it on with URL rules \
             that match none of the bench's requests (every request is judged and allowed, and logged to eve.json). \
             Export is off in both. Added: {INSPECT_MODE}'s median cost minus {INSPECT_BASELINE}'s (CPU of loupe's \
             process; memory: its resident growth per idle session). One run on a shared machine: a difference of a \
             few CPU-µs can be within the noise of either figure: each is given with the min–max of its repetitions.\n"
        );
        out.push_str(&self.comparison_table(&self.inspection, INSPECT_BASELINE, INSPECT_MODE, "inspect ÷ decrypt"));
        out
    }

    /// One row per workload: `baseline`'s and `mode`'s costs (medians with the min–max of
    /// their repetitions), the difference, the ratio, the target and whether it is met.
    fn comparison_table(&self, costs: &[InspectionCost], baseline: &str, mode: &str, ratio_name: &str) -> String {
        let header: Vec<String> = ["workload", "unit", baseline, mode, "added", ratio_name, "target", "met"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let rows = costs
            .iter()
            .map(|c| {
                let signed = |v: f64| {
                    if v >= 0.0 {
                        format!("+{}", fmt_num(v))
                    } else {
                        format!("−{}", fmt_num(-v))
                    }
                };
                // The medians, with the min–max of the repetitions: the noise to weigh
                // the difference against.
                let cost = |mode: &str, median: f64| {
                    self.cell(mode, &c.workload)
                        .and_then(|cell| cell.cost)
                        .map_or_else(|| fmt_num(median), fmt_stat)
                };
                vec![
                    c.workload.clone(),
                    c.unit.clone(),
                    cost(baseline, c.decrypt),
                    cost(mode, c.inspect),
                    signed(c.added),
                    c.ratio.map_or("—".into(), |r| {
                        format!(
                            "{r:.3}× ({}{:.1}%)",
                            if r >= 1.0 { "+" } else { "−" },
                            (r - 1.0).abs() * 100.0
                        )
                    }),
                    c.target.clone().unwrap_or_else(|| "—".into()),
                    match c.within_target {
                        Some(true) => "yes".into(),
                        Some(false) => "no".into(),
                        None => "—".into(),
                    },
                ]
            })
            .collect();
        md_table_left(&header, rows, 2)
    }

    /// The "against the AF_XDP floor" section: loupe-splice's and loupe-decrypt's costs
    /// as multiples of xsk-forward's (the appliance's CPU) and of direct's (the whole
    /// machine), per workload, with issue 13's bulk targets.
    fn forward_floor_markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n## loupe against the AF_XDP floor and the kernel path\n\n\
             {FORWARD_MODE} is loupe with `[dataplane] forward_only`: the same XDP program and AF_XDP rings, each frame \
             copied to the other port as it came, no TCP stack, no TLS. What loupe-splice costs beyond it is loupe's TCP \
             relay; what loupe-decrypt costs beyond that is TLS. The first table divides the appliance's CPU by \
             {FORWARD_MODE}'s; the second divides the whole machine's by `direct`'s (the kernel bridge). Medians of this \
             run; a ratio is left out (—) where either cell failed or was not measured.\n"
        );
        let ratio_text = |mine: Option<f64>, floor: Option<f64>| match (mine, floor) {
            (Some(a), Some(b)) => ratio_value(a, b).map_or("—".to_string(), |r| format!("{r:.2}×")),
            _ => "—".to_string(),
        };
        let clean = |mode: &str, workload: &str, pick: fn(&Cell) -> Option<f64>| {
            self.cell(mode, workload).filter(|c| !c.failed()).and_then(pick)
        };
        let workloads = self.workloads_with(|c| c.mode == FORWARD_MODE && kind(&c.workload) != Kind::Idle);
        let mut header = vec!["workload".to_string(), "unit".to_string(), FORWARD_MODE.to_string()];
        for (mode, _) in OVER_FORWARD {
            header.push(mode.to_string());
            header.push(format!("{mode} ÷ {FORWARD_MODE}"));
        }
        header.push("target (bulk)".into());
        let rows = workloads
            .iter()
            .map(|w| {
                let floor = clean(FORWARD_MODE, w, cost_of);
                let mut row = vec![
                    w.to_string(),
                    units(w).1.to_string(),
                    self.figure(FORWARD_MODE, w, |c| c.cost, fmt_stat),
                ];
                let mut met = Vec::new();
                for (mode, target) in OVER_FORWARD {
                    let mine = clean(mode, w, cost_of);
                    row.push(self.figure(mode, w, |c| c.cost, fmt_stat));
                    row.push(ratio_text(mine, floor));
                    if kind(w) == Kind::Bulk {
                        if let (Some(a), Some(b)) = (mine, floor) {
                            let r = a / b;
                            met.push(format!(
                                "{mode} ≤ {target}×: {}",
                                if r <= target { "met" } else { "no" }
                            ));
                        }
                    }
                }
                row.push(if met.is_empty() { "—".into() } else { met.join("; ") });
                row
            })
            .collect();
        out.push_str(&md_table_left(&header, rows, 2));

        let mut header = vec!["workload".to_string(), "unit".to_string(), "direct".to_string()];
        let machine_modes = [FORWARD_MODE, "loupe-splice", "loupe-decrypt"];
        for mode in machine_modes {
            header.push(format!("{mode} ÷ direct"));
        }
        header.push("target (bulk)".into());
        let rows = workloads
            .iter()
            .map(|w| {
                let direct = clean("direct", w, machine_cost_of);
                let mut row = vec![
                    w.to_string(),
                    units(w).1.to_string(),
                    self.figure("direct", w, |c| c.machine_cost, fmt_stat),
                ];
                for mode in machine_modes {
                    row.push(ratio_text(clean(mode, w, machine_cost_of), direct));
                }
                let decrypt = clean("loupe-decrypt", w, machine_cost_of);
                row.push(match (kind(w), decrypt, direct) {
                    (Kind::Bulk, Some(a), Some(b)) if b > 0.0 => format!(
                        "loupe-decrypt ≤ {DECRYPT_MACHINE_OVER_DIRECT}×: {}",
                        if a / b <= DECRYPT_MACHINE_OVER_DIRECT {
                            "met"
                        } else {
                            "no"
                        }
                    ),
                    _ => "—".into(),
                });
                row
            })
            .collect();
        out.push('\n');
        out.push_str(&md_table_left(&header, rows, 2));
        out
    }

    /// One table cell: "—" unmeasured, "FAILED (n/n)" with no clean repetition, "n/a"
    /// without the figure, else the figure with "⚠ k/n failed" when some failed.
    fn figure<T>(&self, mode: &str, workload: &str, pick: impl Fn(&Cell) -> Option<T>, fmt: fn(T) -> String) -> String {
        let Some(c) = self.cell(mode, workload) else {
            return "—".into();
        };
        if c.failed() {
            return format!("FAILED ({}/{})", c.reps, c.reps);
        }
        let text = pick(c).map_or_else(|| "n/a".to_string(), fmt);
        if c.failures.is_empty() {
            text
        } else {
            format!("{text} ⚠ {}/{} failed", c.failures.len(), c.reps)
        }
    }

    /// The chart: one panel per workload with the headline figure per mode (bars at the
    /// median, whiskers over min–max), and one per workload with latencies (p50 and p99
    /// per mode, ms).
    pub fn to_svg(&self, path: &Path) -> Result<()> {
        enum Panel<'a> {
            Headline(&'a str),
            Latency(&'a str),
        }
        let mut panels: Vec<Panel> = self
            .workloads
            .iter()
            .filter(|w| self.cells.iter().any(|c| &c.workload == *w))
            .map(|w| Panel::Headline(w))
            .collect();
        panels.extend(
            self.workloads
                .iter()
                .filter(|w| self.cells.iter().any(|c| &c.workload == *w && c.latency.is_some()))
                .map(|w| Panel::Latency(w)),
        );
        const COLS: usize = 3;
        const PANEL_W: u32 = 520;
        const PANEL_H: u32 = 360;
        let rows = panels.len().div_ceil(COLS).max(1);
        let cols = panels.len().clamp(1, COLS);
        let size = (PANEL_W * cols as u32, PANEL_H * rows as u32 + 40);
        let root = SVGBackend::new(path, size).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let m = &self.machine;
        let title = format!(
            "loupe bench {} · {} · {} cores, kernel {}, XDP {}",
            m.date, m.git_commit, m.cores, m.kernel, m.xdp_mode
        );
        let body = root.titled(&title, ("sans-serif", 18)).map_err(plot_err)?;
        if panels.is_empty() {
            body.draw(&Text::new("no measurements", (20, 20), ("sans-serif", 16)))
                .map_err(plot_err)?;
        }
        let areas = body.split_evenly((rows, cols));
        for (panel, area) in panels.iter().zip(areas.iter()) {
            match panel {
                Panel::Headline(w) => self.draw_headline_panel(area, w)?,
                Panel::Latency(w) => self.draw_latency_panel(area, w)?,
            }
        }
        root.present().map_err(plot_err)?;
        drop(areas);
        drop(body);
        drop(root);
        let len = fs::metadata(path)
            .with_context(|| format!("{} not written", path.display()))?
            .len();
        anyhow::ensure!(len > 0, "{} is empty", path.display());
        Ok(())
    }

    fn draw_headline_panel(&self, area: &DrawingArea<SVGBackend, Shift>, workload: &str) -> Result<()> {
        let (unit, _) = units(workload);
        let better = if headline_higher_is_better(workload) {
            ""
        } else {
            ", lower is better"
        };
        let bars: Vec<Bar> = self
            .modes
            .iter()
            .map(|mode| match self.cell(mode, workload) {
                None => Bar::Missing,
                Some(c) if c.failed() => Bar::Failed,
                Some(c) => match c.headline {
                    None => Bar::NotApplicable,
                    Some(s) => Bar::Value(vec![(s.median, s.min, s.max)], failed_note(c)),
                },
            })
            .collect();
        self.draw_bars(area, &format!("{workload} ({unit}{better})"), &bars, &[])
    }

    fn draw_latency_panel(&self, area: &DrawingArea<SVGBackend, Shift>, workload: &str) -> Result<()> {
        // ms, or µs when every p99 is under a millisecond.
        let worst = self
            .cells
            .iter()
            .filter(|c| c.workload == workload && !c.failed())
            .filter_map(|c| c.latency.map(|l| l.p99_us))
            .fold(0.0, f64::max);
        let (div, unit) = if worst < 1000.0 { (1.0, "µs") } else { (1e3, "ms") };
        let bars: Vec<Bar> = self
            .modes
            .iter()
            .map(|mode| match self.cell(mode, workload) {
                None => Bar::Missing,
                Some(c) if c.failed() => Bar::Failed,
                Some(c) => match c.latency {
                    None => Bar::NotApplicable,
                    Some(l) => Bar::Value(
                        vec![
                            (l.p50_us / div, l.p50_us / div, l.p50_us / div),
                            (l.p99_us / div, l.p99_us / div, l.p99_us / div),
                        ],
                        failed_note(c),
                    ),
                },
            })
            .collect();
        self.draw_bars(
            area,
            &format!("{workload} latency ({unit}, lower is better)"),
            &bars,
            &["p50", "p99"],
        )
    }

    /// Bars per mode; each `Bar::Value` holds one (median, min, max) per group member
    /// (`groups` names them for the legend when there are several).
    fn draw_bars(
        &self,
        area: &DrawingArea<SVGBackend, Shift>,
        title: &str,
        bars: &[Bar],
        groups: &[&str],
    ) -> Result<()> {
        let n = self.modes.len().max(1);
        // Values 0..=x_end, one segment each (at least two, so the range is not empty).
        let x_end = if n >= 2 { n - 1 } else { 1 };
        let ymax = bars
            .iter()
            .filter_map(|b| match b {
                Bar::Value(v, _) => v.iter().map(|t| t.2).reduce(f64::max),
                _ => None,
            })
            .fold(0.0, f64::max);
        let ymax = if ymax > 0.0 { ymax * 1.2 } else { 1.0 };
        let modes = &self.modes;
        let label = |v: &SegmentValue<usize>| match v {
            SegmentValue::Exact(i) | SegmentValue::CenterOf(i) => modes.get(*i).cloned().unwrap_or_default(),
            SegmentValue::Last => String::new(),
        };
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 15))
            .margin(12)
            .x_label_area_size(28)
            .y_label_area_size(64)
            .build_cartesian_2d((0..x_end).into_segmented(), 0.0..ymax)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .x_labels(x_end + 1)
            .x_label_formatter(&label)
            .x_label_style(("sans-serif", 11))
            .y_label_formatter(&|v| fmt_num(*v))
            .draw()
            .map_err(plot_err)?;

        let seg_px = chart.plotting_area().dim_in_pixel().0 as f64 / (x_end + 1) as f64;
        let groups_n = groups.len().max(1);
        let pad = (seg_px * 0.12) as u32;
        let inner = (seg_px - 2.0 * pad as f64).max(2.0);
        let edge = |i: usize| -> SegmentValue<usize> {
            if i <= x_end {
                SegmentValue::Exact(i)
            } else {
                SegmentValue::Last
            }
        };
        let small = ("sans-serif", 11).into_font();
        let mut legend_done = vec![false; groups_n];
        for (i, bar) in bars.iter().enumerate() {
            let base = mode_color(&self.modes[i]);
            let at = |y: f64| (SegmentValue::CenterOf(i), y);
            match bar {
                Bar::Missing | Bar::NotApplicable | Bar::Failed => {
                    let (text, color) = match bar {
                        Bar::Failed => ("FAILED", RED),
                        Bar::NotApplicable => ("n/a", RGBColor(110, 110, 110)),
                        _ => ("not run", RGBColor(110, 110, 110)),
                    };
                    chart
                        .draw_series(std::iter::once(Text::new(
                            text.to_string(),
                            at(ymax * 0.04),
                            small.color(&color).pos(Pos::new(HPos::Center, VPos::Bottom)),
                        )))
                        .map_err(plot_err)?;
                }
                Bar::Value(values, partly_failed) => {
                    for (g, &(median, min, max)) in values.iter().enumerate() {
                        // Group member g takes its slice of the segment.
                        let w = inner / groups_n as f64;
                        let left = pad + (w * g as f64) as u32;
                        let right = (seg_px - pad as f64 - w * (g + 1) as f64).max(0.0) as u32;
                        let shade = if groups_n > 1 && g == 0 {
                            base.mix(0.45)
                        } else {
                            base.mix(1.0)
                        };
                        let mut rect =
                            Rectangle::new([(SegmentValue::Exact(i), 0.0), (edge(i + 1), median)], shade.filled());
                        rect.set_margin(0, 0, left, right);
                        let series = chart.draw_series(std::iter::once(rect)).map_err(plot_err)?;
                        if groups.len() > 1 && !legend_done[g] {
                            legend_done[g] = true;
                            let legend_shade = if g == 0 { BLACK.mix(0.3) } else { BLACK.mix(0.8) };
                            series.label(groups[g]).legend(move |(x, y)| {
                                Rectangle::new([(x, y - 5), (x + 12, y + 5)], legend_shade.filled())
                            });
                        }
                        if max > min {
                            chart
                                .draw_series(std::iter::once(PathElement::new(
                                    vec![at(min), at(max)],
                                    BLACK.stroke_width(1),
                                )))
                                .map_err(plot_err)?;
                        }
                        let text = if groups.len() > 1 {
                            format!("{}: {}", groups[g], fmt_num(median))
                        } else {
                            fmt_num(median)
                        };
                        // Labels of grouped bars stack above the tallest member.
                        let top = values.iter().map(|t| t.2).fold(0.0, f64::max);
                        let y = if groups.len() > 1 { top } else { max };
                        let dy = (values.len() - 1 - g) as i32 * 13;
                        chart
                            .draw_series(std::iter::once(
                                EmptyElement::at(at(y))
                                    + Text::new(
                                        text,
                                        (0, -2 - dy),
                                        small.color(&BLACK).pos(Pos::new(HPos::Center, VPos::Bottom)),
                                    ),
                            ))
                            .map_err(plot_err)?;
                    }
                    if let Some(note) = partly_failed {
                        // Above the value labels.
                        let top = values.iter().map(|t| t.2).fold(0.0, f64::max);
                        chart
                            .draw_series(std::iter::once(
                                EmptyElement::at(at(top))
                                    + Text::new(
                                        note.clone(),
                                        (0, -2 - values.len() as i32 * 13),
                                        small.color(&RED).pos(Pos::new(HPos::Center, VPos::Bottom)),
                                    ),
                            ))
                            .map_err(plot_err)?;
                    }
                }
            }
        }
        if groups.len() > 1 && legend_done.iter().any(|d| *d) {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.5))
                .label_font(("sans-serif", 11))
                .draw()
                .map_err(plot_err)?;
        }
        Ok(())
    }
}

/// One mode's bar(s) in a panel.
enum Bar {
    Missing,
    Failed,
    NotApplicable,
    /// (median, min, max) per group member; "⚠ k/n failed" when some repetitions failed.
    Value(Vec<(f64, f64, f64)>, Option<String>),
}

fn failed_note(c: &Cell) -> Option<String> {
    (!c.failures.is_empty()).then(|| format!("⚠ {}/{} failed", c.failures.len(), c.reps))
}

fn plot_err<E: std::error::Error + Send + Sync + 'static>(e: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart: {e}")
}

fn mode_color(mode: &str) -> RGBColor {
    if is_baseline(mode) {
        RGBColor(120, 120, 120)
    } else if mode == FORWARD_MODE {
        RGBColor(158, 202, 225)
    } else if is_loupe(mode) {
        match mode {
            "loupe-bridge" => RGBColor(107, 174, 214),
            "loupe-splice" => RGBColor(49, 130, 189),
            "loupe-decrypt" => RGBColor(8, 69, 148),
            _ => RGBColor(33, 113, 181),
        }
    } else if mode.starts_with("sslsplit") {
        RGBColor(230, 85, 13)
    } else if mode.starts_with("squid") {
        RGBColor(166, 54, 3)
    } else if mode.starts_with("mitmproxy") {
        RGBColor(253, 174, 107)
    } else {
        RGBColor(117, 107, 177)
    }
}

fn bulk_streams(w: &str) -> usize {
    w.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(usize::MAX)
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn one_line(s: &str) -> String {
    let s: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if s.chars().count() > 200 {
        format!("{}…", s.chars().take(200).collect::<String>())
    } else {
        s
    }
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
}

fn md_table(header: &[String], rows: Vec<Vec<String>>) -> String {
    md_table_left(header, rows, 1)
}

/// A table whose first `left` columns are left-aligned, the others right-aligned.
fn md_table_left(header: &[String], rows: Vec<Vec<String>>, left: usize) -> String {
    let mut out = String::new();
    let line = |cells: &[String]| {
        format!(
            "| {} |\n",
            cells.iter().map(|c| md_escape(c)).collect::<Vec<_>>().join(" | ")
        )
    };
    out.push_str(&line(header));
    let align: Vec<String> = (0..header.len())
        .map(|i| {
            if i < left {
                "---".to_string()
            } else {
                "---:".to_string()
            }
        })
        .collect();
    out.push_str(&format!("|{}|\n", align.join("|")));
    for r in rows {
        out.push_str(&line(&r));
    }
    out
}

/// A figure for a table: thousands separated from 1,000 up, fewer decimals as it grows.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "?".into();
    }
    let a = v.abs();
    if a.round() >= 1000.0 {
        let r = v.round() as i64;
        let digits = r.unsigned_abs().to_string();
        let mut grouped = String::new();
        for (i, ch) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(ch);
        }
        if r < 0 {
            format!("-{grouped}")
        } else {
            grouped
        }
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a == 0.0 {
        "0".into()
    } else {
        format!("{v:.3}")
    }
}

fn fmt_stat(s: Stat) -> String {
    if s.n > 1 && s.max > s.min {
        format!("{} ({}–{})", fmt_num(s.median), fmt_num(s.min), fmt_num(s.max))
    } else {
        fmt_num(s.median)
    }
}

fn fmt_us(us: f64) -> String {
    if us >= 1000.0 {
        format!("{} ms", fmt_num(us / 1000.0))
    } else {
        format!("{} µs", fmt_num(us))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Machine {
        Machine {
            cores: 2,
            kernel: "6.1.0-test".into(),
            cpu_model: "Test CPU".into(),
            xdp_mode: "skb".into(),
            git_commit: "abcdef123456".into(),
            date: "2026-04-05T14:03:22Z".into(),
        }
    }

    fn floor() -> CryptoFloor {
        CryptoFloor {
            aes_128_gcm_bytes_per_s: 4e9,
            x25519_per_s: 40_000.0,
            ecdsa_p256_sign_per_s: 50_000.0,
            ecdsa_p256_verify_per_s: 20_000.0,
            openssl_version: "3.0.19".into(),
        }
    }

    fn lat(p50: f64, p99: f64) -> Latency {
        Latency {
            p50,
            p90: p50 * 1.5,
            p99,
            p999: p99 * 2.0,
            max: p99 * 3.0,
        }
    }

    /// One repetition of `workload` at `rate` (per second, or MB/s for bulk, or bytes
    /// per session for idle) over 10 s, with `cpu` appliance CPU-seconds.
    fn meas(mode: &str, workload: &str, rep: usize, rate: f64, cpu: Option<f64>) -> Measurement {
        let elapsed = 10.0;
        let mut load = LoadResult {
            elapsed_s: elapsed,
            client_cpu_s: 4.0,
            // The whole machine: 1.5 cores busy whatever the mode.
            machine_cpu_s: Some(15.0),
            ..Default::default()
        };
        let mut rss = None;
        match kind(workload) {
            Kind::Handshakes => {
                load.completed = (rate * elapsed) as u64;
                load.per_second = rate;
                load.bytes = load.completed * 1024;
                load.handshake_us = Some(lat(1e6 / rate, 10e6 / rate));
            }
            Kind::Requests => {
                load.completed = (rate * elapsed) as u64;
                load.per_second = rate;
                load.bytes = load.completed * 1024;
                load.latency_us = Some(lat(1e5 / rate, 1e6 / rate));
            }
            Kind::Bulk => {
                load.completed = 1;
                load.bytes = (rate * 1e6 * elapsed) as u64;
                load.mb_per_s = Some(rate);
                load.integrity_ok = Some(true);
            }
            Kind::Idle => {
                load.completed = 1000;
                load.sessions_held = Some(1000);
                rss = cpu.map(|_| (rate * 1000.0) as u64);
            }
            Kind::Other => unreachable!(),
        }
        Measurement {
            mode: mode.into(),
            workload: workload.into(),
            rep,
            load,
            appliance_cpu_s: cpu,
            appliance_rss_bytes: rss,
            routed: is_peer(mode),
        }
    }

    fn full_run() -> Vec<Measurement> {
        let mut ms = Vec::new();
        // (mode, handshakes conn/s, requests req/s, bulk MB/s, idle B/session, cpu)
        type Row = (&'static str, f64, f64, f64, f64, Option<f64>);
        let modes: [Row; 5] = [
            ("direct", 4000.0, 40_000.0, 1000.0, 0.0, None),
            ("loupe-decrypt", 2000.0, 20_000.0, 500.0, 20_000.0, Some(8.0)),
            ("sslsplit", 1000.0, 10_000.0, 250.0, 40_000.0, Some(9.0)),
            ("squid", 800.0, 12_000.0, 300.0, 80_000.0, Some(9.5)),
            ("loupe-bridge", 3900.0, 39_000.0, 990.0, 1000.0, Some(0.5)),
        ];
        for rep in 0..3 {
            let k = 1.0 + 0.1 * rep as f64; // reps 1.0, 1.1, 1.2 × the base figure
            for (mode, hs, rq, bulk, idle, cpu) in modes {
                ms.push(meas(mode, "handshakes", rep, hs * k, cpu));
                ms.push(meas(mode, "requests", rep, rq * k, cpu));
                ms.push(meas(mode, "bulk-1", rep, bulk * k, cpu));
                ms.push(meas(mode, "bulk-8", rep, bulk * 1.5 * k, cpu));
                ms.push(meas(mode, "idle", rep, idle * k, cpu));
            }
        }
        ms
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
    }

    #[test]
    fn stat_median_min_max() {
        assert_eq!(
            Stat::of(&[3.0, 1.0, 2.0]),
            Some(Stat {
                median: 2.0,
                min: 1.0,
                max: 3.0,
                n: 3
            })
        );
        assert_eq!(Stat::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert_eq!(Stat::of(&[f64::NAN, 5.0]).unwrap().n, 1);
        assert_eq!(Stat::of(&[]), None);
    }

    #[test]
    fn whole_machine_costs_for_every_mode_and_their_ratios() {
        let r = BenchReport::new(machine(), Some(floor()), full_run());
        // 15 busy CPU-s over the median rep's 10 s × rate.
        let direct = r.cell("direct", "requests").unwrap();
        assert!(close(direct.machine_cost.unwrap().median, 15e6 / 440_000.0));
        assert_eq!(direct.cost, None, "direct has no appliance process");
        let decrypt = r.cell("loupe-decrypt", "requests").unwrap();
        assert!(close(decrypt.machine_cost.unwrap().median, 15e6 / 220_000.0));
        // Half the requests for the same busy time: twice direct's cost per request.
        let vs_direct = decrypt.vs_direct.machine_cost.as_ref().unwrap();
        assert!(
            close(vs_direct.value, 2.0) && vs_direct.against == "direct",
            "{vs_direct:?}"
        );
        // The best peer per request is squid (12,000 req/s against sslsplit's 10,000).
        let vs_peer = decrypt.vs_best_peer.machine_cost.as_ref().unwrap();
        assert!(
            close(vs_peer.value, 12.0 / 20.0) && vs_peer.against == "squid",
            "{vs_peer:?}"
        );
        // Bulk per GB; nothing for idle.
        let bulk = r.cell("direct", "bulk-1").unwrap();
        assert!(close(bulk.machine_cost.unwrap().median, 15.0 / 11.0));
        assert_eq!(r.cell("direct", "idle").unwrap().machine_cost, None);
        let md = r.to_markdown();
        assert!(md.contains("## Costs of the whole machine"), "{md}");
        assert!(md.contains("machine vs direct"), "{md}");
    }

    #[test]
    fn aggregates_per_mode_and_workload() {
        let r = BenchReport::new(machine(), Some(floor()), full_run());
        assert_eq!(
            r.modes,
            ["direct", "loupe-decrypt", "sslsplit", "squid", "loupe-bridge"]
        );
        assert_eq!(r.workloads, ["handshakes", "requests", "bulk-1", "bulk-8", "idle"]);
        assert_eq!(r.cells.len(), 25);

        let c = r.cell("loupe-decrypt", "handshakes").unwrap();
        assert_eq!((c.reps, c.ok_reps), (3, 3));
        let h = c.headline.unwrap();
        assert!(
            close(h.median, 2200.0) && close(h.min, 2000.0) && close(h.max, 2400.0),
            "{h:?}"
        );
        assert_eq!(c.headline_unit, "conn/s");
        // Latency: the median of the per-rep p50s (1e6/rate µs).
        assert!(close(c.latency.unwrap().p50_us, 1e6 / 2200.0));
        assert_eq!(c.latency.unwrap().p90_us, None);
        // CPU-µs per handshake: 8 s / (rate × 10 s): median rep at 2200/s.
        assert!(close(c.cost.unwrap().median, 8e6 / 22_000.0));
        assert_eq!(c.cost_unit, "CPU-µs/handshake");
        let fl = floor();
        assert!(close(
            c.floor_multiple.unwrap(),
            (8e6 / 22_000.0) / fl.split_handshake_cpu_us()
        ));
        assert!(close(c.client_cpu_share.unwrap(), 0.4));
        assert!(close(c.appliance_cpu_share.unwrap(), 0.8));

        let rq = r.cell("loupe-decrypt", "requests").unwrap();
        let l = rq.latency.unwrap();
        assert!(l.p90_us.is_some() && l.p999_us.is_some());
        assert!(close(rq.headline.unwrap().median, 22_000.0));

        let b = r.cell("loupe-decrypt", "bulk-8").unwrap();
        assert!(close(b.headline.unwrap().median, 825.0));
        // CPU-s per GB: 8 s over 825 MB/s × 10 s = 8.25 GB.
        assert!(close(b.cost.unwrap().median, 8.0 / 8.25));
        assert!(close(b.floor_multiple.unwrap(), (8.0 / 8.25) / fl.decrypted_gb_cpu_s()));

        let i = r.cell("loupe-decrypt", "idle").unwrap();
        assert!(close(i.headline.unwrap().median, 22_000.0));
        assert!(close(i.cost.unwrap().median, 22_000.0));
        assert_eq!(i.headline_unit, "B/session");

        // direct has no appliance process: figures but no costs.
        let d = r.cell("direct", "handshakes").unwrap();
        assert!(d.headline.is_some() && d.cost.is_none() && d.appliance_cpu_share.is_none());
        assert!(r.cell("direct", "idle").unwrap().headline.is_none());
        assert!(r.cell("sslsplit", "bulk-1").unwrap().routed);
        assert!(!r.cell("loupe-decrypt", "bulk-1").unwrap().routed);
    }

    #[test]
    fn ratios_against_direct_and_the_best_peer() {
        let r = BenchReport::new(machine(), Some(floor()), full_run());
        let c = r.cell("loupe-decrypt", "handshakes").unwrap();
        let vd = c.vs_direct.headline.as_ref().unwrap();
        assert_eq!(vd.against, "direct");
        assert!(close(vd.value, 0.5));
        assert!(c.vs_direct.cost.is_none(), "direct has no cost");
        assert!(close(c.vs_direct.p99.as_ref().unwrap().value, 2.0), "latency 1/rate");
        // Best peer per figure: sslsplit has more conn/s (1100 vs 880 median).
        let vp = c.vs_best_peer.headline.as_ref().unwrap();
        assert_eq!(vp.against, "sslsplit");
        assert!(close(vp.value, 2.0));
        // Cost: sslsplit's 9 s over 11,000 < squid's 9.5 s over 8,800.
        let cp = c.vs_best_peer.cost.as_ref().unwrap();
        assert_eq!(cp.against, "sslsplit");
        assert!(close(cp.value, (8.0 / 22_000.0) / (9.0 / 11_000.0)));
        // Requests: squid is the better peer.
        let q = r.cell("loupe-decrypt", "requests").unwrap();
        assert_eq!(q.vs_best_peer.headline.as_ref().unwrap().against, "squid");
        assert!(close(q.vs_best_peer.headline.as_ref().unwrap().value, 20.0 / 12.0));
        // Idle: lower is better, so the best peer is sslsplit's 40 KB.
        let i = r.cell("loupe-decrypt", "idle").unwrap();
        let ip = i.vs_best_peer.headline.as_ref().unwrap();
        assert_eq!(ip.against, "sslsplit");
        assert!(close(ip.value, 0.5));
        // Non-loupe cells get no ratios.
        assert_eq!(
            r.cell("sslsplit", "handshakes").unwrap().vs_direct,
            Comparison::default()
        );
        assert!(r.cell("loupe-bridge", "bulk-1").unwrap().vs_direct.headline.is_some());
    }

    #[test]
    fn missing_modes_and_failed_runs_are_shown() {
        let mut ms: Vec<Measurement> = full_run()
            .into_iter()
            .filter(|m| m.mode != "direct" && m.mode != "squid" && m.workload != "bulk-8")
            .collect();
        // sslsplit's handshakes: every rep with errors; loupe's bulk-1 rep 1: bad hash.
        for m in ms.iter_mut() {
            if m.mode == "sslsplit" && m.workload == "handshakes" {
                m.load.errors = 7;
                m.load.first_errors = vec!["connect: Connection refused\n(os error 111)".into()];
            }
            if m.mode == "loupe-decrypt" && m.workload == "bulk-1" && m.rep == 1 {
                m.load.integrity_ok = Some(false);
            }
        }
        // loupe-decrypt never ran requests.
        ms.retain(|m| !(m.mode == "loupe-decrypt" && m.workload == "requests"));
        let r = BenchReport::new(machine(), Some(floor()), ms);

        let s = r.cell("sslsplit", "handshakes").unwrap();
        assert!(s.failed() && s.headline.is_none() && s.failures.len() == 3);
        let b = r.cell("loupe-decrypt", "bulk-1").unwrap();
        assert_eq!((b.reps, b.ok_reps), (3, 2));
        // Reps 0 and 2 only: 500 and 600 MB/s.
        assert!(close(b.headline.unwrap().median, 550.0));
        assert!(r.cell("loupe-decrypt", "requests").is_none());
        // No peer for handshakes (sslsplit failed, squid absent), no direct at all.
        let h = r.cell("loupe-decrypt", "handshakes").unwrap();
        assert!(h.vs_best_peer.headline.is_none() && h.vs_direct.headline.is_none());

        let md = r.to_markdown();
        assert!(md.contains("| sslsplit | FAILED (3/3) |"), "{md}");
        assert!(md.contains("⚠ 1/3 failed"), "{md}");
        assert!(md.contains("## Failed runs"));
        assert!(md.contains(
            "sslsplit / handshakes rep 0: 7 errors; first errors: \"connect: Connection refused (os error 111)\""
        ));
        assert!(md.contains("loupe-decrypt / bulk-1 rep 1: integrity check failed"));
        assert!(md.contains("No `direct` run"));
        // loupe-decrypt's requests cell: not measured.
        let row = md.lines().find(|l| l.starts_with("| loupe-decrypt |")).unwrap();
        assert!(row.contains("| — |"), "{row}");
        assert!(!md.contains("bulk-8"));
        let dir = tempdir("failed");
        let p = dir.join("r.svg");
        r.to_svg(&p).unwrap();
        assert!(fs::read_to_string(&p).unwrap().contains("FAILED"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn markdown_has_the_expected_rows() {
        let r = BenchReport::new(machine(), Some(floor()), full_run());
        let md = r.to_markdown();
        for section in [
            "## Throughput",
            "## Latency",
            "## Costs of the appliance",
            "## CPU use",
            "## loupe against the baseline and the best peer",
            "## Crypto floor",
            "## Notes",
        ] {
            assert!(md.contains(section), "{section} missing:\n{md}");
        }
        assert!(!md.contains("## Failed runs"));
        assert!(md.contains(
            "| mode | handshakes (conn/s) | requests (req/s) | bulk-1 (MB/s) | bulk-8 (MB/s) | idle (B/session, lower is better) |"
        ));
        assert!(
            md.contains("| direct | 4,400 (4,000–4,800) | 44,000 (40,000–48,000) | 1,100 (1,000–1,200) |"),
            "{md}"
        );
        assert!(
            md.contains("| loupe-decrypt | handshakes | 0.50× | 2.00× (sslsplit) | — | 0.44× (sslsplit) | 2.00× | 0.50× (sslsplit) | 2.00× |"),
            "{md}"
        );
        for mode in ["direct", "loupe-decrypt", "sslsplit", "squid", "loupe-bridge"] {
            // Throughput, latency, both costs and CPU tables each have a row per mode;
            // the ratios table one per loupe mode and workload.
            let rows = md.lines().filter(|l| l.starts_with(&format!("| {mode} |"))).count();
            assert_eq!(rows, if is_loupe(mode) { 5 + 5 } else { 5 }, "{mode}:\n{md}");
        }
        assert!(
            md.contains("sslsplit and squid ran in the routed variant of the lab"),
            "{md}"
        );
        assert!(md.contains("`direct` is a kernel bridge: no appliance process, so no appliance costs (the whole machine's are measured)."));
        assert!(md.contains("× floor)"));
        assert!(md.contains("Split handshake"));
        assert!(md.contains("openssl speed` 3.0.19"));
        // direct's idle memory: not applicable.
        let direct_row = md.lines().find(|l| l.starts_with("| direct |")).unwrap();
        assert!(direct_row.ends_with("| n/a |"), "{direct_row}");
    }

    /// loupe-decrypt and loupe-inspect over the workloads inspection has targets for:
    /// (workload, decrypt figure, inspect figure) with 8 CPU-s (requests: req/s; bulk:
    /// MB/s; idle: B/session). Requests: 10 s × rate requests over 8 CPU-s.
    fn inspection_run() -> Vec<Measurement> {
        let rows: [(&str, f64, f64); 6] = [
            // 8 CPU-s over 10 s × rate requests: 40 and 41.67 CPU-µs per request.
            ("requests", 20_000.0, 19_200.0),
            ("requests-h2", 16_000.0, 8e6 / 10.0 / (8e6 / 16_000.0 / 10.0 + 2.5)),
            ("bulk-8", 800.0, 800.0 / 1.05),
            ("bulk-1", 800.0, 800.0 / 1.25),
            ("idle", 50_000.0, 50_000.0 + 2048.0),
            ("idle-h2", 60_000.0, 60_000.0 + 20_000.0),
        ];
        let mut ms = Vec::new();
        for (w, d, i) in rows {
            ms.push(meas(INSPECT_BASELINE, w, 1, d, Some(8.0)));
            ms.push(meas(INSPECT_MODE, w, 1, i, Some(8.0)));
        }
        ms
    }

    #[test]
    fn signatures_are_reported_against_loupe_inspect_with_the_issues_targets() {
        // 8 CPU-s over 10 s: requests at 20,000/s cost 40 CPU-µs, at 19,000/s 42.1
        // (+2.1, within 5); bulk at 800 MB/s costs 1.0 CPU-s/GB, at 500 MB/s 1.6 (+0.6,
        // over 0.3).
        let ms = vec![
            meas(INSPECT_MODE, "requests", 1, 20_000.0, Some(8.0)),
            meas(SIGNATURES_MODE, "requests", 1, 19_000.0, Some(8.0)),
            meas(INSPECT_MODE, "bulk-8", 1, 800.0, Some(8.0)),
            meas(SIGNATURES_MODE, "bulk-8", 1, 500.0, Some(8.0)),
            meas(INSPECT_MODE, "idle", 1, 50_000.0, Some(8.0)),
        ];
        let report = BenchReport::new(machine(), None, ms);
        let met: Vec<(String, Option<bool>)> = report
            .signatures
            .iter()
            .map(|c| (c.workload.clone(), c.within_target))
            .collect();
        assert_eq!(
            met,
            [
                ("requests".to_string(), Some(true)),
                ("bulk-8".to_string(), Some(false))
            ],
            "{:?}",
            report.signatures
        );
        let md = report.to_markdown();
        assert!(
            md.contains("## What signatures cost (loupe-signatures against loupe-inspect)"),
            "{md}"
        );
        assert!(md.contains("≤ +0.3 CPU-s/GB") && md.contains("≤ 5 CPU-µs"), "{md}");
        assert!(report.inspection.is_empty(), "no loupe-decrypt: no inspection section");
    }

    #[test]
    fn the_suites_rules_are_reported_against_loupe_inspect_without_a_target() {
        // 8 CPU-s over 10 s: 40 CPU-µs per request, then 40.5 (+0.5).
        let ms = vec![
            meas(INSPECT_MODE, "requests", 1, 20_000.0, Some(8.0)),
            meas(SUITE_SIGNATURES_MODE, "requests", 1, 8e6 / 10.0 / 40.5, Some(8.0)),
            meas(INSPECT_MODE, "requests-h2", 1, 20_000.0, Some(8.0)),
        ];
        let report = BenchReport::new(machine(), None, ms);
        assert!(
            report.signatures.is_empty(),
            "no loupe-signatures: {:?}",
            report.signatures
        );
        let [only] = &report.suite_signatures[..] else {
            panic!("one workload both ran: {:?}", report.suite_signatures);
        };
        assert_eq!(
            (only.workload.as_str(), only.target.clone(), only.within_target),
            ("requests", None, None)
        );
        assert!((only.added - 0.5).abs() < 0.01, "{only:?}");
        let md = report.to_markdown();
        assert!(
            md.contains("## What the suite's rules cost (loupe-signatures-suite against loupe-inspect)"),
            "{md}"
        );
        assert!(!md.contains("## What signatures cost"), "{md}");
    }

    #[test]
    fn splice_and_decrypt_as_multiples_of_the_forward_floor_and_of_direct() {
        // (mode, workload, rate, appliance CPU-s): the whole machine is 15 CPU-s in each.
        let rows: [(&str, &str, f64, Option<f64>); 8] = [
            ("direct", "bulk-1", 1000.0, None),
            (FORWARD_MODE, "bulk-1", 1000.0, Some(2.0)),
            ("loupe-splice", "bulk-1", 1000.0, Some(2.6)),
            ("loupe-decrypt", "bulk-1", 800.0, Some(4.0)),
            ("direct", "requests", 10_000.0, None),
            (FORWARD_MODE, "requests", 10_000.0, Some(1.0)),
            ("loupe-splice", "requests", 10_000.0, Some(2.0)),
            ("loupe-decrypt", "requests", 10_000.0, Some(4.0)),
        ];
        let ms = rows.iter().map(|&(m, w, rate, cpu)| meas(m, w, 1, rate, cpu)).collect();
        let md = BenchReport::new(machine(), Some(floor()), ms).to_markdown();
        let section = md
            .split("## loupe against the AF_XDP floor and the kernel path")
            .nth(1)
            .unwrap_or_else(|| panic!("no floor section:\n{md}"));
        let row = |workload: &str, nth: usize| {
            section
                .lines()
                .filter(|l| l.starts_with(&format!("| {workload} |")))
                .nth(nth)
                .unwrap_or_else(|| panic!("no row {nth} for {workload}:\n{section}"))
                .to_string()
        };
        // Bulk: 0.2 CPU-s/GB forwarding, 0.26 splicing (1.30×, within 1.5×), 0.5
        // decrypting at 800 MB/s (2.50×, over 2×).
        let bulk = row("bulk-1", 0);
        assert!(bulk.contains("| 1.30× |") && bulk.contains("| 2.50× |"), "{bulk}");
        assert!(
            bulk.contains("loupe-splice ≤ 1.5×: met; loupe-decrypt ≤ 2×: no"),
            "{bulk}"
        );
        // The whole machine per GB: 1.5 CPU-s for direct and 1000 MB/s modes; decrypt at
        // 800 MB/s 1.875 (1.25×, over 1.15×).
        let whole = row("bulk-1", 1);
        assert!(whole.contains("| 1.00× | 1.00× | 1.25× |"), "{whole}");
        assert!(whole.contains("loupe-decrypt ≤ 1.15×: no"), "{whole}");
        // Requests: 10, 20 and 40 CPU-µs; no bulk target.
        let requests = row("requests", 0);
        assert!(
            requests.contains("| 2.00× |") && requests.contains("| 4.00× |"),
            "{requests}"
        );
        assert!(requests.ends_with("| — |"), "{requests}");

        // Without the floor mode in the run there is no such section.
        let without = BenchReport::new(machine(), Some(floor()), inspection_run()).to_markdown();
        assert!(!without.contains("AF_XDP floor"), "{without}");
    }

    #[test]
    fn inspection_costs_against_decrypt_of_the_same_run() {
        let r = BenchReport::new(machine(), Some(floor()), inspection_run());
        assert_eq!(
            r.workloads,
            ["requests", "requests-h2", "bulk-1", "bulk-8", "idle", "idle-h2"]
        );
        let names: Vec<&str> = r.inspection.iter().map(|c| c.workload.as_str()).collect();
        assert_eq!(names, r.workloads);
        let get = |w: &str| r.inspection.iter().find(|c| c.workload == w).unwrap();

        // HTTP/1.1: 40 CPU-µs/request without inspection, 8e6 / 192,000 = 41.67 µs with
        // it: +1.67, within ≤ 3.
        let q = get("requests");
        assert_eq!(q.unit, "CPU-µs/request");
        assert!(close(q.decrypt, 40.0), "{q:?}");
        assert!((q.added - (8e6 / 192_000.0 - 40.0)).abs() < 1e-3, "{q:?}");
        assert_eq!(q.target.as_deref(), Some("≤ 3 CPU-µs"));
        assert_eq!(q.within_target, Some(true));
        // HTTP/2: 50 → 52.5 CPU-µs per request, +2.5: within ≤ 3 (rounding of the
        // completed count aside).
        let h = get("requests-h2");
        assert!((h.added - 2.5).abs() < 1e-3, "{h:?}");
        assert_eq!(h.within_target, Some(true));

        // Bulk: CPU per GB is the inverse of the throughput at equal CPU.
        let b8 = get("bulk-8");
        assert_eq!(b8.unit, "CPU-s/GB");
        assert!((b8.ratio.unwrap() - 1.05).abs() < 1e-9, "{b8:?}");
        assert_eq!(b8.target.as_deref(), Some("≤ +10%"));
        assert_eq!(b8.within_target, Some(true));
        let b1 = get("bulk-1");
        assert!((b1.ratio.unwrap() - 1.25).abs() < 1e-9, "{b1:?}");
        assert_eq!(b1.within_target, Some(false));

        // Memory: exactly 2 KiB more per HTTP/1.1 session is within ≤ 2 KiB; 20,000 B
        // more per HTTP/2 session is over ≤ 16 KiB.
        let i = get("idle");
        assert_eq!(i.unit, "RSS B/session");
        assert!(close(i.added, 2048.0), "{i:?}");
        assert_eq!(i.target.as_deref(), Some("≤ 2,048 B (2 KiB)"));
        assert_eq!(i.within_target, Some(true));
        let i2 = get("idle-h2");
        assert!(close(i2.added, 20_000.0), "{i2:?}");
        assert_eq!(i2.target.as_deref(), Some("≤ 16,384 B (16 KiB)"));
        assert_eq!(i2.within_target, Some(false));

        let md = r.to_markdown();
        assert!(
            md.contains("## What HTTP inspection costs (loupe-inspect against loupe-decrypt)"),
            "{md}"
        );
        assert!(md.contains("`[inspection] http = false`"), "{md}");
        assert!(
            md.contains("| bulk-8 | CPU-s/GB | 1.00 | 1.05 | +0.050 | 1.050× (+5.0%) | ≤ +10% | yes |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| idle-h2 | RSS B/session | 60,000 | 80,000 | +20,000 | 1.333× (+33.3%) | ≤ 16,384 B (16 KiB) | no |"
            ),
            "{md}"
        );
        // The costs table names the HTTP/2 columns.
        assert!(
            md.contains("| mode | CPU-µs/request | CPU-µs/request (requests-h2) | CPU-s/GB (bulk-1) |"),
            "{md}"
        );
        // Both modes still get their ordinary rows, and a round trip keeps the section.
        assert!(md.contains("| loupe-inspect | requests-h2 |"), "{md}");
        assert_eq!(BenchReport::from_json(&r.to_json().unwrap()).unwrap(), r);
    }

    #[test]
    fn inspection_costs_need_both_modes_clean() {
        // Without loupe-inspect: no section.
        let r = BenchReport::new(machine(), Some(floor()), full_run());
        assert!(r.inspection.is_empty());
        assert!(!r.to_markdown().contains("What HTTP inspection costs"));
        // A failed loupe-inspect cell gives no row for its workload; the others stay.
        let mut ms = inspection_run();
        for m in ms.iter_mut() {
            if m.mode == INSPECT_MODE && m.workload == "requests-h2" {
                m.load.errors = 2;
            }
        }
        let r = BenchReport::new(machine(), Some(floor()), ms);
        assert!(r.inspection.iter().all(|c| c.workload != "requests-h2"));
        assert_eq!(r.inspection.len(), 5);
        // Handshakes have no target: a row, nothing claimed.
        let ms = vec![
            meas(INSPECT_BASELINE, "handshakes", 1, 1000.0, Some(8.0)),
            meas(INSPECT_MODE, "handshakes", 1, 1000.0, Some(8.4)),
        ];
        let r = BenchReport::new(machine(), Some(floor()), ms);
        let h = &r.inspection[0];
        assert!((h.added - 40.0).abs() < 1e-9, "{h:?}");
        assert_eq!((h.target.as_deref(), h.within_target), (None, None));
        let md = r.to_markdown();
        assert!(
            md.contains("| handshakes | CPU-µs/handshake | 800 | 840 | +40.0 | 1.050× (+5.0%) | — | — |"),
            "{md}"
        );
        // Repetitions: the medians are compared, each shown with its min–max.
        let ms = vec![
            meas(INSPECT_BASELINE, "idle", 1, 50_000.0, Some(8.0)),
            meas(INSPECT_BASELINE, "idle", 2, 52_000.0, Some(8.0)),
            meas(INSPECT_MODE, "idle", 1, 53_000.0, Some(8.0)),
        ];
        let r2 = BenchReport::new(machine(), Some(floor()), ms);
        assert!(close(r2.inspection[0].added, 2_000.0), "{:?}", r2.inspection);
        let md2 = r2.to_markdown();
        assert!(
            md2.contains("| idle | RSS B/session | 51,000 (50,000–52,000) | 53,000 | +2,000 | 1.039× (+3.9%) | ≤ 2,048 B (2 KiB) | yes |"),
            "{md2}"
        );
        // A report written before the section existed still reads.
        let mut v: serde_json::Value = serde_json::from_str(&r.to_json().unwrap()).unwrap();
        v.as_object_mut().unwrap().remove("inspection");
        assert!(BenchReport::from_json(&v.to_string()).unwrap().inspection.is_empty());
    }

    #[test]
    fn json_round_trips() {
        let mut r = BenchReport::new(machine(), Some(floor()), full_run());
        r.add_note("quick run");
        let text = r.to_json().unwrap();
        let back = BenchReport::from_json(&text).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.to_json().unwrap(), text);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(v["cells"][0]["headline"]["median"].is_f64());
        assert!(v["floor"]["split_handshake_cpu_us"].is_f64());
        // Without a floor, too.
        let r = BenchReport::new(machine(), None, full_run());
        assert_eq!(BenchReport::from_json(&r.to_json().unwrap()).unwrap(), r);
        assert!(r.notes.iter().any(|n| n.contains("crypto floor was not measured")));
    }

    #[test]
    fn offered_rates_are_noted_per_kind_of_workload_with_the_modes_that_fell_behind() {
        let mut ms = Vec::new();
        for rep in 1..=3 {
            for (mode, handshakes) in [("direct", 600.0), ("loupe-decrypt", 500.0)] {
                let mut m = meas(mode, "handshakes", rep, handshakes, Some(5.0));
                m.load.offered_rate = Some(600.0);
                ms.push(m);
                let mut m = meas(mode, "requests", rep, 8000.0, Some(5.0));
                m.load.offered_rate = Some(8000.0);
                ms.push(m);
            }
        }
        let r = BenchReport::new(machine(), None, ms);
        let note = |what: &str| r.notes.iter().find(|n| n.contains(what)).cloned().unwrap_or_default();
        let handshakes = note("offered 600 handshakes/s");
        assert!(
            handshakes.contains("Fell behind (under 95% of it): loupe-decrypt/handshakes."),
            "{handshakes}"
        );
        let requests = note("offered 8,000 requests/s");
        assert!(requests.contains("Every mode kept up."), "{requests}");
        // Closed loop: no such note.
        let closed = BenchReport::new(machine(), None, full_run());
        assert!(
            closed.notes.iter().all(|n| !n.contains("fixed schedule")),
            "{:?}",
            closed.notes
        );
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("loupe-report-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn svg_and_all_files_are_written() {
        let r = BenchReport::new(machine(), Some(floor()), full_run());
        let dir = tempdir("all");
        let paths = r.write_all(&dir.join("results")).unwrap();
        assert_eq!(paths.markdown, dir.join("results/2026-04-05-abcdef123456.md"));
        assert_eq!(paths.json, dir.join("results/2026-04-05-abcdef123456.json"));
        let svg = fs::read_to_string(&paths.svg).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("loupe-decrypt") && svg.contains("handshakes latency"));
        assert_eq!(fs::read_to_string(&paths.markdown).unwrap(), r.to_markdown());
        assert_eq!(
            BenchReport::from_json(&fs::read_to_string(&paths.json).unwrap()).unwrap(),
            r
        );
        // A second report of the same date and commit does not overwrite the first.
        let again = r.write_all(&dir.join("results")).unwrap();
        assert_eq!(again.svg, dir.join("results/2026-04-05-abcdef123456-2.svg"));
        // An empty run still gives a (non-empty) chart.
        let empty = BenchReport::new(machine(), None, Vec::new());
        let p = dir.join("empty.svg");
        empty.to_svg(&p).unwrap();
        assert!(fs::metadata(&p).unwrap().len() > 0);
        assert!(empty.to_markdown().contains("## Throughput"));
        // A single mode.
        let one: Vec<Measurement> = full_run().into_iter().filter(|m| m.mode == "loupe-bridge").collect();
        let p = dir.join("one.svg");
        BenchReport::new(machine(), None, one).to_svg(&p).unwrap();
        assert!(fs::metadata(&p).unwrap().len() > 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn machine_and_dates() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_775_397_802), "2026-04-05T14:03:22Z");
        let m = Machine::detect("native");
        assert!(m.cores >= 1);
        assert_eq!(m.xdp_mode, "native");
        assert_eq!(m.date.len(), 20);
        assert!(!m.kernel.is_empty() && !m.git_commit.is_empty());
    }

    #[test]
    fn numbers_format() {
        assert_eq!(fmt_num(1_234_567.4), "1,234,567");
        assert_eq!(fmt_num(999.6), "1,000");
        assert_eq!(fmt_num(123.4), "123");
        assert_eq!(fmt_num(12.34), "12.3");
        assert_eq!(fmt_num(1.234), "1.23");
        assert_eq!(fmt_num(0.4211), "0.421");
        assert_eq!(fmt_num(-2500.0), "-2,500");
        assert_eq!(fmt_us(1500.0), "1.50 ms");
        assert_eq!(fmt_us(250.0), "250 µs");
    }

    #[test]
    fn browser_hello_workloads_get_their_own_columns_and_a_note_of_the_key_exchange() {
        let with_groups = |mode: &str, workload: &str, groups: &[(&str, u64)]| {
            let mut m = meas(mode, workload, 1, 1_000.0, Some(5.0));
            m.load.key_exchange = groups.iter().map(|(g, n)| (g.to_string(), *n)).collect();
            m
        };
        let ms = vec![
            with_groups("loupe-decrypt", "handshakes", &[("X25519", 900)]),
            with_groups("loupe-decrypt", "handshakes-browser", &[("X25519MLKEM768", 800)]),
            with_groups("sslsplit", "handshakes", &[("P-256", 300)]),
            with_groups("sslsplit", "handshakes-browser", &[("P-256", 20), ("X25519", 5)]),
        ];
        let r = BenchReport::new(machine(), Some(floor()), ms);
        assert_eq!(r.workloads, ["handshakes", "handshakes-browser"]);
        assert_eq!(kind("handshakes-browser"), Kind::Handshakes);
        let md = r.to_markdown();
        assert!(
            md.contains("| mode | CPU-µs/handshake | CPU-µs/handshake (handshakes-browser) |"),
            "{md}"
        );
        let note = r
            .notes
            .iter()
            .find(|n| n.contains("browser hello"))
            .expect("a hello-shape note");
        assert!(
            note.contains("loupe-decrypt: X25519MLKEM768 (classic: X25519)"),
            "{note}"
        );
        assert!(
            note.contains("sslsplit: P-256 ×20 + X25519 ×5 (classic: P-256)"),
            "{note}"
        );
        let classic_only = BenchReport::new(
            machine(),
            Some(floor()),
            vec![meas("direct", "handshakes", 1, 1e3, None)],
        );
        assert!(classic_only.notes.iter().all(|n| !n.contains("browser hello")));
    }

    #[test]
    fn workloads_are_ordered_by_kind_and_bulk_streams() {
        let ms = [
            "idle",
            "bulk-16",
            "requests-browser",
            "bulk-2",
            "bulk-8",
            "handshakes",
            "bulk-1",
            "requests",
        ]
        .iter()
        .map(|w| meas("direct", w, 1, 100.0, None))
        .collect();
        let r = BenchReport::new(machine(), Some(floor()), ms);
        assert_eq!(
            r.workloads,
            [
                "handshakes",
                "requests",
                "requests-browser",
                "bulk-1",
                "bulk-2",
                "bulk-8",
                "bulk-16",
                "idle"
            ]
        );
    }
}
