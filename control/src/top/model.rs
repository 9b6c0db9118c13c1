//! What `loupectl top` shows, computed from the daemon's replies without any I/O: rates
//! from two `counters` snapshots, the busiest server names and HTTP hosts, and the
//! latest failures with their diagnosis. The terminal loop feeds it; tests feed it JSON.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

/// How many names each top list keeps.
pub const TOP_NAMES: usize = 10;
/// How many failures are kept (newest first).
pub const FAILURES_KEPT: usize = 20;

/// The cumulative counters `top` turns into rates, summed over workers where the
/// daemon reports them per worker.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CounterSnapshot {
    /// Sessions that ended, by outcome: decrypted, spliced, blocked, aborted.
    pub ended: Outcomes,
    pub flows_opened: u64,
    pub flows_active: u64,
    pub bytes_client_to_server: u64,
    pub bytes_server_to_client: u64,
    pub workers: Vec<WorkerSnapshot>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Outcomes {
    pub decrypted: u64,
    pub spliced: u64,
    pub blocked: u64,
    pub aborted: u64,
}

impl Outcomes {
    fn total(&self) -> u64 {
        self.decrypted + self.spliced + self.blocked + self.aborted
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerSnapshot {
    pub queue: u64,
    pub rx_frames: u64,
    pub tx_frames: u64,
    pub flows_opened: u64,
    pub flows_active: u64,
    /// Share of the last second the worker spent working, 0.0–1.0 (the daemon's figure).
    pub load: f64,
}

fn count(value: &Value, key: &str) -> u64 {
    value.get(key).and_then(Value::as_u64).unwrap_or(0)
}

impl CounterSnapshot {
    /// Reads a `counters` result. Counters the daemon does not report count as zero, so
    /// an older daemon still gives what it has; a result that is not an object is an error.
    pub fn from_counters(counters: &Value) -> Result<CounterSnapshot, String> {
        if !counters.is_object() {
            return Err(format!("the counters reply is not an object: {counters}"));
        }
        let handshakes = &counters["handshakes"];
        let workers: Vec<WorkerSnapshot> = counters["workers"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|w| WorkerSnapshot {
                queue: count(w, "queue"),
                rx_frames: count(w, "rx_frames"),
                tx_frames: count(w, "tx_frames"),
                flows_opened: count(w, "flows_opened"),
                flows_active: count(w, "flows_active"),
                load: w.get("load").and_then(Value::as_f64).unwrap_or(0.0),
            })
            .collect();
        let sum = |key: &str| -> u64 {
            counters["workers"]
                .as_array()
                .map(|ws| ws.iter().map(|w| count(w, key)).sum())
                .unwrap_or(0)
        };
        Ok(CounterSnapshot {
            ended: Outcomes {
                decrypted: count(handshakes, "decrypted"),
                spliced: count(handshakes, "spliced"),
                blocked: count(handshakes, "blocked"),
                aborted: count(handshakes, "aborted"),
            },
            flows_opened: sum("flows_opened"),
            flows_active: sum("flows_active"),
            bytes_client_to_server: sum("bytes_client_to_server"),
            bytes_server_to_client: sum("bytes_server_to_client"),
            workers,
        })
    }
}

/// Per-second figures between two snapshots.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rates {
    /// Sessions that ended per second, all outcomes together.
    pub sessions: f64,
    pub decrypted: f64,
    pub spliced: f64,
    pub blocked: f64,
    pub aborted: f64,
    pub new_flows: f64,
    pub bytes_client_to_server: f64,
    pub bytes_server_to_client: f64,
    pub workers: Vec<WorkerRates>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerRates {
    pub queue: u64,
    pub load: f64,
    pub flows_active: u64,
    pub rx_frames: f64,
    pub tx_frames: f64,
    pub new_flows: f64,
}

/// The rates from `earlier` to `later`, `elapsed` apart. None when no time passed or a
/// counter went backwards: the daemon restarted in between, and a difference across a
/// restart means nothing (the next pair of snapshots gives rates again).
pub fn rates(earlier: &CounterSnapshot, later: &CounterSnapshot, elapsed: Duration) -> Option<Rates> {
    let seconds = elapsed.as_secs_f64();
    if seconds <= 0.0 {
        return None;
    }
    let per_second = |before: u64, after: u64| -> Option<f64> { after.checked_sub(before).map(|d| d as f64 / seconds) };
    let mut workers = Vec::with_capacity(later.workers.len());
    for now in &later.workers {
        // Workers are matched by queue; one that was not there before has no rate yet.
        let worker = match earlier.workers.iter().find(|w| w.queue == now.queue) {
            Some(before) => WorkerRates {
                queue: now.queue,
                load: now.load,
                flows_active: now.flows_active,
                rx_frames: per_second(before.rx_frames, now.rx_frames)?,
                tx_frames: per_second(before.tx_frames, now.tx_frames)?,
                new_flows: per_second(before.flows_opened, now.flows_opened)?,
            },
            None => WorkerRates {
                queue: now.queue,
                load: now.load,
                flows_active: now.flows_active,
                ..WorkerRates::default()
            },
        };
        workers.push(worker);
    }
    let (a, b) = (&earlier.ended, &later.ended);
    Some(Rates {
        sessions: per_second(a.total(), b.total())?,
        decrypted: per_second(a.decrypted, b.decrypted)?,
        spliced: per_second(a.spliced, b.spliced)?,
        blocked: per_second(a.blocked, b.blocked)?,
        aborted: per_second(a.aborted, b.aborted)?,
        new_flows: per_second(earlier.flows_opened, later.flows_opened)?,
        bytes_client_to_server: per_second(earlier.bytes_client_to_server, later.bytes_client_to_server)?,
        bytes_server_to_client: per_second(earlier.bytes_server_to_client, later.bytes_server_to_client)?,
        workers,
    })
}

/// One name in a top list, with how often it was seen in each source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ranked {
    pub name: String,
    /// Live sessions with this name (the `sessions` list); 0 for hosts.
    pub live: u64,
    /// Records with this name among the recent log records read.
    pub recent: u64,
}

impl Ranked {
    pub fn total(&self) -> u64 {
        self.live + self.recent
    }
}

/// The `limit` names seen most often, most first; ties in name order so the list does
/// not shuffle between refreshes. Empty names are left out.
pub fn rank<'a>(
    live: impl IntoIterator<Item = &'a str>,
    recent: impl IntoIterator<Item = &'a str>,
    limit: usize,
) -> Vec<Ranked> {
    let mut counts: HashMap<&str, (u64, u64)> = HashMap::new();
    for name in live.into_iter().filter(|n| !n.is_empty()) {
        counts.entry(name).or_default().0 += 1;
    }
    for name in recent.into_iter().filter(|n| !n.is_empty()) {
        counts.entry(name).or_default().1 += 1;
    }
    let mut ranked: Vec<Ranked> = counts
        .into_iter()
        .map(|(name, (live, recent))| Ranked {
            name: name.to_string(),
            live,
            recent,
        })
        .collect();
    ranked.sort_by(|a, b| b.total().cmp(&a.total()).then_with(|| a.name.cmp(&b.name)));
    ranked.truncate(limit);
    ranked
}

/// A session that did not end cleanly, as its decryption-log record tells it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Failure {
    pub session_id: u64,
    /// `HH:MM:SS` (UTC) of the record's time.
    pub time: String,
    pub sni: String,
    pub server: String,
    pub outcome: String,
    pub stage: String,
    pub error: String,
    pub diagnosis: String,
    pub remedy: String,
}

/// Whether a decryption-log record is a failure: blocked or aborted, or with an error
/// (the same rule as `log tail --errors`).
pub fn is_failure(record: &Value) -> bool {
    matches!(record["outcome"].as_str(), Some("blocked" | "aborted")) || !record["error"].is_null()
}

fn text(record: &Value, key: &str) -> String {
    match &record[key] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

impl Failure {
    pub fn from_record(record: &Value) -> Failure {
        let time = text(record, "time");
        // RFC 3339 with milliseconds: the clock time sits between 'T' and the fraction.
        let clock = time
            .split_once('T')
            .map(|(_, t)| t.get(..8).unwrap_or(t).to_string())
            .unwrap_or(time);
        let server = match (record["server_ip"].as_str(), record["server_port"].as_u64()) {
            (Some(ip), Some(port)) if ip.contains(':') => format!("[{ip}]:{port}"),
            (Some(ip), Some(port)) => format!("{ip}:{port}"),
            _ => String::new(),
        };
        Failure {
            session_id: count(record, "session_id"),
            time: clock,
            sni: text(record, "sni"),
            server,
            outcome: text(record, "outcome"),
            stage: text(record, "stage"),
            error: text(record, "error"),
            diagnosis: text(record, "diagnosis"),
            remedy: text(record, "remedy"),
        }
    }

    /// One line: what failed, where, and the error in OpenSSL's words.
    pub fn headline(&self) -> String {
        let name = if self.sni.is_empty() { &self.server } else { &self.sni };
        let mut line = format!("{} {} {}", self.time, name, self.outcome);
        if !self.stage.is_empty() {
            line.push_str(&format!(" at {}", self.stage));
        }
        if !self.error.is_empty() {
            line.push_str(&format!(": {}", self.error));
        }
        line
    }
}

/// The failures among `records` (oldest first, as the log gives them), newest first,
/// at most `limit`.
pub fn latest_failures(records: &[Value], limit: usize) -> Vec<Failure> {
    records
        .iter()
        .rev()
        .filter(|r| is_failure(r))
        .take(limit)
        .map(Failure::from_record)
        .collect()
}

/// The replies of one refresh, as the daemon sent them.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// The `counters` result.
    pub counters: Value,
    /// The `sessions` result: live sessions.
    pub sessions: Value,
    /// `log-tail` of the decryption log: the most recent records.
    pub records: Value,
    /// `log-tail` with `errors`: the most recent failures (kept apart so that a rare
    /// failure is not pushed out by many clean sessions).
    pub failures: Value,
    /// `log-tail` with `http`: the most recent EVE `http` events.
    pub http: Value,
}

/// A streamed reply as a list: null (nothing streamed), one object, or an array.
fn as_list(value: &Value) -> &[Value] {
    match value {
        Value::Array(items) => items,
        Value::Null => &[],
        one => std::slice::from_ref(one),
    }
}

/// Everything the screen shows.
#[derive(Clone, Debug, Default)]
pub struct Dashboard {
    pub socket: String,
    pub interval: Duration,
    pub config_version: Option<u64>,
    /// The latest counters, and the rates since the ones before (None on the first
    /// refresh and across a daemon restart).
    pub counters: Option<CounterSnapshot>,
    pub rates: Option<Rates>,
    pub snis: Vec<Ranked>,
    pub hosts: Vec<Ranked>,
    /// How many decryption-log records and HTTP events the top lists were counted over.
    pub records_read: usize,
    pub http_read: usize,
    pub failures: Vec<Failure>,
    /// Which failure's diagnosis is shown in full (0: the newest).
    pub selected: usize,
    /// Why the last refresh failed (the daemon went away…); the figures are the last good ones.
    pub problem: Option<String>,
}

impl Dashboard {
    pub fn new(socket: String, interval: Duration) -> Dashboard {
        Dashboard {
            socket,
            interval,
            ..Dashboard::default()
        }
    }

    /// Takes one refresh's replies, `elapsed` after the previous one.
    pub fn update(&mut self, sample: &Sample, elapsed: Duration) -> Result<(), String> {
        let snapshot = CounterSnapshot::from_counters(&sample.counters)?;
        self.rates = self
            .counters
            .as_ref()
            .and_then(|before| rates(before, &snapshot, elapsed));
        self.counters = Some(snapshot);
        self.config_version = sample.counters["config_version"].as_u64();

        let sessions = as_list(&sample.sessions);
        let records = as_list(&sample.records);
        let http = as_list(&sample.http);
        self.snis = rank(
            sessions.iter().filter_map(|s| s["sni"].as_str()),
            records.iter().filter_map(|r| r["sni"].as_str()),
            TOP_NAMES,
        );
        self.hosts = rank(
            std::iter::empty(),
            http.iter().filter_map(|e| e["http"]["hostname"].as_str()),
            TOP_NAMES,
        );
        self.records_read = records.len();
        self.http_read = http.len();

        // The failure the operator picked stays picked as newer ones arrive; at 0 they
        // follow the newest.
        let picked = (self.selected > 0)
            .then(|| self.failures.get(self.selected).map(|f| f.session_id))
            .flatten();
        self.failures = latest_failures(as_list(&sample.failures), FAILURES_KEPT);
        self.selected = picked
            .and_then(|id| self.failures.iter().position(|f| f.session_id == id))
            .unwrap_or(0);
        self.problem = None;
        Ok(())
    }

    pub fn select_older(&mut self) {
        if self.selected + 1 < self.failures.len() {
            self.selected += 1;
        }
    }

    pub fn select_newer(&mut self) {
        self.selected = self.selected.saturating_sub(1);
    }
}

#[cfg(test)]
pub(super) mod tests;
