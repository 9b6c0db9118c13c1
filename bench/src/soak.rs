//! The soak (issue #15): loupe decrypting and inspecting under a steady mix of load for a
//! long time, watched from outside. Paced new connections (handshakes), paced keep-alive
//! requests over HTTP/1.1 and HTTP/2, a 64 MiB download every few seconds, and idle
//! sessions opened and closed in rounds (churn), all at once, against nginx through loupe
//! in a lab of its own. Every few seconds the daemon's resident memory, open file
//! descriptors and flow counters are sampled.
//!
//! What must hold (`SoakReport::problems`): after the warm-up, RSS and descriptors stay
//! within ±5% of their mean; once the load stops every flow ends (opened = closed, none
//! active); no generator saw an error; the daemon logged no warning or error.
//!
//! The suite runs a few minutes of it (bench/tests/soak.rs); `loupe-bench soak
//! --duration 30m` is the full one, with a report in bench/results.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use crate::costs::parse_status_rss;
use crate::lab::{binary, Lab, Middle, NginxTls, Ns};
use crate::load::LoadResult;
use crate::pki::{LeafSpec, Pki};
use crate::runner::{write_decryption_ca, write_object, INSPECT_CONFIG};

/// The steady mix: new connections and requests per second (paced), how often a bulk
/// download starts, and the idle rounds.
const HANDSHAKES_PER_S: u32 = 40;
const REQUESTS_PER_S: u32 = 300;
const REQUESTS_H2_PER_S: u32 = 100;
const BULK_BYTES: u64 = 64 << 20;
const BULK_EVERY: Duration = Duration::from_secs(10);
const IDLE_SESSIONS: u32 = 200;
const IDLE_HOLD: Duration = Duration::from_secs(5);
/// The most RSS and descriptors may stray from their post-warm-up mean.
pub const FLAT_WITHIN: f64 = 0.05;

#[derive(Debug, Clone)]
pub struct SoakSpec {
    pub duration: Duration,
    /// Samples before this are not held to flatness (pools, caches and the allocator's
    /// arenas fill first).
    pub warmup: Duration,
    pub sample_every: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakSample {
    pub secs: f64,
    pub rss_bytes: u64,
    pub fds: u64,
    pub flows_active: u64,
    pub flows_opened: u64,
    pub flows_closed: u64,
}

/// One generator's runs over the soak, summed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GeneratorTotals {
    pub runs: u64,
    pub completed: u64,
    pub errors: u64,
    pub first_errors: Vec<String>,
}

impl GeneratorTotals {
    fn add(&mut self, r: &LoadResult) {
        self.runs += 1;
        self.completed += r.completed;
        self.errors += r.errors;
        for e in &r.first_errors {
            if self.first_errors.len() < 5 {
                self.first_errors.push(e.clone());
            }
        }
    }

    fn failed_run(&mut self, why: String) {
        self.runs += 1;
        self.errors += 1;
        if self.first_errors.len() < 5 {
            self.first_errors.push(why);
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Spread {
    pub mean: f64,
    pub min: u64,
    pub max: u64,
    /// Largest distance from the mean, as a fraction of it.
    pub deviation: f64,
}

fn spread(values: &[u64]) -> Option<Spread> {
    if values.is_empty() {
        return None;
    }
    let mean = values.iter().sum::<u64>() as f64 / values.len() as f64;
    let min = *values.iter().min()?;
    let max = *values.iter().max()?;
    let deviation = (mean - min as f64).max(max as f64 - mean) / mean.max(1.0);
    Some(Spread {
        mean,
        min,
        max,
        deviation,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub duration_s: f64,
    pub warmup_s: f64,
    pub samples: Vec<SoakSample>,
    pub rss_after_warmup: Option<Spread>,
    pub fds_after_warmup: Option<Spread>,
    pub handshakes: GeneratorTotals,
    pub requests: GeneratorTotals,
    pub requests_h2: GeneratorTotals,
    pub bulk: GeneratorTotals,
    pub idle: GeneratorTotals,
    /// After the load stopped and every flow ended.
    pub flows_opened: u64,
    pub flows_closed: u64,
    pub flows_active: u64,
    /// The daemon's WARN and ERROR lines.
    pub daemon_warnings: Vec<String>,
}

impl SoakReport {
    fn generators(&self) -> [(&'static str, &GeneratorTotals); 5] {
        [
            ("handshakes", &self.handshakes),
            ("requests", &self.requests),
            ("requests-h2", &self.requests_h2),
            ("bulk", &self.bulk),
            ("idle", &self.idle),
        ]
    }

    /// What did not hold, in words; empty when the soak passed.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (what, s) in [
            ("RSS", &self.rss_after_warmup),
            ("open descriptors", &self.fds_after_warmup),
        ] {
            match s {
                None => out.push(format!("no {what} sample after the warm-up")),
                Some(s) if s.deviation > FLAT_WITHIN => out.push(format!(
                    "{what} not flat after the warm-up: {} to {} around {:.0} (±{:.1}%)",
                    s.min,
                    s.max,
                    s.mean,
                    s.deviation * 100.0
                )),
                Some(_) => {}
            }
        }
        if self.flows_active != 0 || self.flows_opened != self.flows_closed {
            out.push(format!(
                "flows leaked: {} opened, {} closed, {} still active after the load",
                self.flows_opened, self.flows_closed, self.flows_active
            ));
        }
        for (what, g) in self.generators() {
            if g.completed == 0 {
                out.push(format!("{what}: nothing completed"));
            }
            if g.errors > 0 {
                out.push(format!("{what}: {} errors {:?}", g.errors, g.first_errors));
            }
        }
        if !self.daemon_warnings.is_empty() {
            out.push(format!(
                "the daemon logged {} warnings or errors, first: {}",
                self.daemon_warnings.len(),
                self.daemon_warnings[0]
            ));
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# loupe soak: {:.0} s of mixed load\n\nLoad, all at once for the whole time: {HANDSHAKES_PER_S} new \
             TLS connections/s, {REQUESTS_PER_S} keep-alive HTTP/1.1 requests/s, {REQUESTS_H2_PER_S} HTTP/2 \
             requests/s, a {} MiB download every {} s, rounds of {IDLE_SESSIONS} idle sessions held {} s. \
             loupe decrypting and inspecting HTTP (the bench's loupe-inspect configuration).\n\n",
            self.duration_s,
            BULK_BYTES >> 20,
            BULK_EVERY.as_secs(),
            IDLE_HOLD.as_secs()
        );
        let row = |what: &str, sp: &Option<Spread>| match sp {
            Some(sp) => format!(
                "| {what} | {:.0} | {} | {} | ±{:.1}% |\n",
                sp.mean,
                sp.min,
                sp.max,
                sp.deviation * 100.0
            ),
            None => format!("| {what} | - | - | - | - |\n"),
        };
        s += &format!(
            "After the {:.0} s warm-up:\n\n| | mean | min | max | from the mean |\n|---|---|---|---|---|\n",
            self.warmup_s
        );
        s += &row("RSS (bytes)", &self.rss_after_warmup);
        s += &row("open descriptors", &self.fds_after_warmup);
        s += "\n| generator | runs | completed | errors |\n|---|---|---|---|\n";
        for (what, g) in self.generators() {
            s += &format!("| {what} | {} | {} | {} |\n", g.runs, g.completed, g.errors);
        }
        s += &format!(
            "\nFlows after the load: {} opened, {} closed, {} active. Daemon warnings and errors: {}.\n",
            self.flows_opened,
            self.flows_closed,
            self.flows_active,
            self.daemon_warnings.len()
        );
        let problems = self.problems();
        s += &if problems.is_empty() {
            "\n**Held**: flat memory and descriptors, no leaked flow, no error.\n".to_string()
        } else {
            format!("\n**Did not hold**:\n\n- {}\n", problems.join("\n- "))
        };
        s += "\n| s | RSS bytes | fds | flows active | opened | closed |\n|---|---|---|---|---|---|\n";
        for x in &self.samples {
            s += &format!(
                "| {:.0} | {} | {} | {} | {} | {} |\n",
                x.secs, x.rss_bytes, x.fds, x.flows_active, x.flows_opened, x.flows_closed
            );
        }
        s
    }
}

fn worker_sum(counters: &serde_json::Value, field: &str) -> u64 {
    counters["workers"]
        .as_array()
        .map(|ws| ws.iter().map(|w| w[field].as_u64().unwrap_or(0)).sum())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> Result<u64> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64)
}

/// One `loupe-bench load` run in the client namespace, bounded.
fn load_once(lab: &Lab, ca: &Path, args: &[&str], bound: Duration) -> Result<LoadResult> {
    let bench = binary("loupe-bench")?;
    let ca = ca.display().to_string();
    let mut argv = vec![
        bench.display().to_string(),
        "load".into(),
        "--connect".into(),
        "198.18.0.2:443".into(),
        "--sni".into(),
        "server.lab".into(),
        "--ca".into(),
        ca,
        "--warmup".into(),
        "0s".into(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    let out = lab.exec_output_within(Ns::Client, &argv, bound)?;
    let line = out.stdout.lines().last().unwrap_or("");
    serde_json::from_str(line)
        .with_context(|| format!("load {args:?}: no result ({}): {}", out.status, out.stderr.trim()))
}

/// Runs the soak in a lab of its own and reports what it saw.
pub fn run_soak(spec: &SoakSpec) -> Result<SoakReport> {
    if spec.warmup >= spec.duration {
        bail!(
            "the warm-up ({:?}) must be shorter than the soak ({:?})",
            spec.warmup,
            spec.duration
        );
    }
    let lab = Lab::up().context("bringing the lab up")?;
    let pki = Pki::new(lab.dir().join("pki"))?;
    let origin_ca = pki.root_ca("origin-ca", "loupe soak origin CA")?;
    let origin = pki.leaf(
        "origin",
        Some(&origin_ca),
        &LeafSpec::new(&["server.lab", "198.18.0.2"]),
    )?;
    let www = lab.dir().join("www");
    std::fs::create_dir_all(&www)?;
    write_object(&www.join("1k"), 1 << 10)?;
    let bulk_sha = write_object(&www.join("bulk"), BULK_BYTES)?;
    let mut nginx_spec = NginxTls::new("198.18.0.2:443".parse()?, &www, &origin.cert_file, &origin.key_file);
    nginx_spec.http2 = true;
    nginx_spec.uploads = false;
    let _nginx = lab.spawn_nginx_tls(Ns::Server, &nginx_spec)?;

    let config = lab.dir().join("loupe-soak.toml");
    std::fs::write(&config, INSPECT_CONFIG)?;
    let args = vec![
        "--config".to_string(),
        config.display().to_string(),
        "--trust-ca".to_string(),
        origin_ca.cert_file.display().to_string(),
    ];
    let loupe = lab.start(&Middle::Loupe { args })?;
    let pid = loupe.pid().context("loupe's pid")?;
    let client_ca = write_decryption_ca(&lab, &loupe)?;

    let started = Instant::now();
    let deadline = started + spec.duration;
    let secs = format!("{}s", spec.duration.as_secs());
    let bound = spec.duration + Duration::from_secs(60);
    let stop = AtomicBool::new(false);
    let ca = client_ca.as_path();
    let (handshakes, requests, requests_h2, bulk, idle, samples) = std::thread::scope(|scope| {
        let paced = |workload: &'static str, concurrency: &'static str, rate: u32| {
            let lab = &lab;
            let secs = secs.clone();
            scope.spawn(move || {
                let rate = rate.to_string();
                let mut totals = GeneratorTotals::default();
                let args = [
                    "--workload",
                    workload,
                    "--concurrency",
                    concurrency,
                    "--rate",
                    rate.as_str(),
                    "--duration",
                    secs.as_str(),
                ];
                match load_once(lab, ca, &args, bound) {
                    Ok(r) => totals.add(&r),
                    Err(e) => totals.failed_run(format!("{e:#}")),
                }
                totals
            })
        };
        let handshakes = paced("handshakes", "4", HANDSHAKES_PER_S);
        let requests = paced("requests", "16", REQUESTS_PER_S);
        let requests_h2 = paced("requests-h2", "4", REQUESTS_H2_PER_S);
        let stop = &stop;
        let lab_ref = &lab;
        let bulk_path = "/bulk".to_string();
        let bulk = scope.spawn(move || {
            let mut totals = GeneratorTotals::default();
            while Instant::now() + BULK_EVERY <= deadline && !stop.load(Ordering::Relaxed) {
                let round = Instant::now();
                let args = [
                    "--workload",
                    "bulk",
                    "--streams",
                    "1",
                    "--path",
                    bulk_path.as_str(),
                    "--sha256",
                    bulk_sha.as_str(),
                    "--duration",
                    "60s",
                ];
                match load_once(lab_ref, ca, &args, Duration::from_secs(90)) {
                    Ok(r) => totals.add(&r),
                    Err(e) => totals.failed_run(format!("{e:#}")),
                }
                std::thread::sleep(BULK_EVERY.saturating_sub(round.elapsed()));
            }
            totals
        });
        let idle = scope.spawn(move || {
            let mut totals = GeneratorTotals::default();
            let sessions = IDLE_SESSIONS.to_string();
            let hold = format!("{}s", IDLE_HOLD.as_secs());
            while Instant::now() + IDLE_HOLD * 3 <= deadline && !stop.load(Ordering::Relaxed) {
                let args = [
                    "--workload",
                    "idle",
                    "--sessions",
                    sessions.as_str(),
                    "--concurrency",
                    "8",
                    "--duration",
                    hold.as_str(),
                ];
                match load_once(lab_ref, ca, &args, Duration::from_secs(60)) {
                    Ok(r) => totals.add(&r),
                    Err(e) => totals.failed_run(format!("{e:#}")),
                }
            }
            totals
        });
        let mut samples = Vec::new();
        let mut next = started;
        while Instant::now() < deadline {
            next += spec.sample_every;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            // Descriptors first: the counters query opens a control connection.
            let fds = open_fds(pid);
            let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .map_err(anyhow::Error::from)
                .and_then(|s| parse_status_rss(&s));
            let counters = loupe.loupectl_json(&["counters"]);
            match (fds, rss, counters) {
                (Ok(fds), Ok(rss_bytes), Ok(c)) => samples.push(SoakSample {
                    secs: started.elapsed().as_secs_f64(),
                    rss_bytes,
                    fds,
                    flows_active: worker_sum(&c, "flows_active"),
                    flows_opened: worker_sum(&c, "flows_opened"),
                    flows_closed: worker_sum(&c, "flows_closed"),
                }),
                (fds, rss, c) => {
                    stop.store(true, Ordering::Relaxed);
                    let why = format!(
                        "sampling loupe failed (did it die?): fds {:?}, rss {:?}, counters {:?}",
                        fds.err(),
                        rss.err(),
                        c.err()
                    );
                    return Err(anyhow::anyhow!(why));
                }
            }
        }
        let join = |h: std::thread::ScopedJoinHandle<'_, GeneratorTotals>| h.join().unwrap_or_default();
        Ok((
            join(handshakes),
            join(requests),
            join(requests_h2),
            join(bulk),
            join(idle),
            samples,
        ))
    })?;

    // Every flow must end once the load is gone (closed sessions linger 50 ms).
    let settle = Instant::now() + Duration::from_secs(30);
    let counters = loop {
        let c = loupe.loupectl_json(&["counters"])?;
        if worker_sum(&c, "flows_active") == 0 || Instant::now() > settle {
            break c;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let after_warmup: Vec<&SoakSample> = samples.iter().filter(|s| s.secs >= spec.warmup.as_secs_f64()).collect();
    let daemon_warnings = loupe
        .logs()
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .map(str::to_string)
        .collect();
    Ok(SoakReport {
        duration_s: spec.duration.as_secs_f64(),
        warmup_s: spec.warmup.as_secs_f64(),
        rss_after_warmup: spread(&after_warmup.iter().map(|s| s.rss_bytes).collect::<Vec<_>>()),
        fds_after_warmup: spread(&after_warmup.iter().map(|s| s.fds).collect::<Vec<_>>()),
        samples,
        handshakes,
        requests,
        requests_h2,
        bulk,
        idle,
        flows_opened: worker_sum(&counters, "flows_opened"),
        flows_closed: worker_sum(&counters, "flows_closed"),
        flows_active: worker_sum(&counters, "flows_active"),
        daemon_warnings,
    })
}

/// Writes the report as `<dir>/<date>-<commit>-soak.md` and `.json`; returns the
/// Markdown's path.
pub fn write_report(report: &SoakReport, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let commit = crate::report::git_commit(Path::new(env!("CARGO_MANIFEST_DIR")));
    let stamp = format!("{}-{commit}", chrono_free_date());
    let md = dir.join(format!("{stamp}-soak.md"));
    std::fs::write(&md, format!("Build: {commit}\n\n{}", report.markdown()))?;
    std::fs::write(
        dir.join(format!("{stamp}-soak.json")),
        serde_json::to_string_pretty(report)?,
    )?;
    Ok(md)
}

/// Today's date (UTC) as YYYY-MM-DD, from `date` (no date crate for one line).
fn chrono_free_date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "undated".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_the_largest_distance_from_the_mean() {
        let s = spread(&[100, 104, 96, 100]).unwrap();
        assert_eq!((s.min, s.max), (96, 104));
        assert!((s.deviation - 0.04).abs() < 1e-9, "{s:?}");
        assert!(spread(&[]).is_none());
    }

    #[test]
    fn problems_name_what_did_not_hold() {
        let flat = Some(Spread {
            mean: 100.0,
            min: 99,
            max: 101,
            deviation: 0.01,
        });
        let ok = GeneratorTotals {
            runs: 1,
            completed: 10,
            ..Default::default()
        };
        let mut r = SoakReport {
            duration_s: 60.0,
            warmup_s: 10.0,
            samples: Vec::new(),
            rss_after_warmup: flat.clone(),
            fds_after_warmup: flat,
            handshakes: ok.clone(),
            requests: ok.clone(),
            requests_h2: ok.clone(),
            bulk: ok.clone(),
            idle: ok,
            flows_opened: 5,
            flows_closed: 5,
            flows_active: 0,
            daemon_warnings: Vec::new(),
        };
        assert!(r.problems().is_empty(), "{:?}", r.problems());
        r.flows_closed = 4;
        r.rss_after_warmup = Some(Spread {
            mean: 100.0,
            min: 80,
            max: 120,
            deviation: 0.2,
        });
        let p = r.problems().join("\n");
        assert!(p.contains("RSS not flat") && p.contains("flows leaked"), "{p}");
    }
}
