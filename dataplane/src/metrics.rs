//! Prometheus metrics: the counters `loupectl counters` shows, in the text exposition
//! format (version 0.0.4), served on `[metrics] listen` (see [`endpoint`]) and answered
//! to `loupectl metrics`.
//!
//! Workers' figures are read from their [`WorkerStats`] atomics at each scrape; what only
//! the control thread can read (the XDP maps, the running policy) comes from the
//! [`ControlFacts`] it refreshes every second. Nothing here waits on a worker.

pub mod endpoint;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::TextEncoder;

use crate::latency::{HistogramSample, LatencyHistogram};
use crate::policy::Policy;
use crate::tls::forge::Forger;
use crate::tls::record::{Action, Outcome};
use crate::wire::{CounterPlace, PlacedCounters, Wire, WireCounters};
use crate::worker::WorkerStats;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the control thread owns and the metrics need: read from the XDP maps and the
/// running policy snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ControlFacts {
    /// The XDP counters per port and queue; `None` when they could not be read (then
    /// they are left out).
    pub xdp: Option<Vec<PlacedCounters>>,
    /// Per policy rule (`default` last): sessions decided by the workers and client SYNs
    /// bridged by its no-decrypt entries in XDP.
    pub rules: Vec<RuleHits>,
    pub config_version: u64,
    pub exclusions: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleHits {
    pub rule: String,
    pub worker: u64,
    pub xdp: u64,
}

impl ControlFacts {
    /// Reads the facts now (on the control thread, which owns `wire`).
    pub fn read(wire: &Wire, policy: &Policy) -> ControlFacts {
        let xdp_hits = wire.rule_hits().unwrap_or_default();
        ControlFacts {
            xdp: wire.placed_counters().ok(),
            rules: policy
                .hits()
                .into_iter()
                .enumerate()
                .map(|(index, (rule, worker))| RuleHits {
                    rule,
                    worker,
                    xdp: xdp_hits.get(index).copied().unwrap_or(0),
                })
                .collect(),
            config_version: policy.version,
            exclusions: policy.exclusions.len(),
        }
    }
}

/// Everything the metrics endpoint's thread reads from.
pub struct MetricsSources {
    /// Each worker's queue and counters.
    pub workers: Vec<(u32, Arc<WorkerStats>)>,
    pub forger: Forger,
    /// Refreshed by the control thread every second.
    pub control: Arc<Mutex<ControlFacts>>,
}

impl MetricsSources {
    pub fn exposition(&self) -> String {
        let facts = self.control.lock().map(|facts| facts.clone()).unwrap_or_default();
        let workers: Vec<(u32, &WorkerStats)> = self.workers.iter().map(|(q, s)| (*q, s.as_ref())).collect();
        exposition(&facts, &workers, &ForgerFigures::read(&self.forger))
    }
}

/// The forged-certificate cache's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForgerFigures {
    pub signed: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub evictions: u64,
    pub cached: usize,
}

impl ForgerFigures {
    pub fn read(forger: &Forger) -> ForgerFigures {
        let stats = forger.stats();
        ForgerFigures {
            signed: stats.signed,
            cache_hits: stats.cache_hits,
            cache_misses: stats.cache_misses,
            evictions: stats.evictions,
            cached: forger.cached(),
        }
    }
}

/// A worker counter exported per queue: metric name, help, the field.
type WorkerCounter = (&'static str, &'static str, fn(&WorkerStats) -> &AtomicU64);

const WORKER_COUNTERS: &[WorkerCounter] = &[
    (
        "loupe_worker_rx_frames_total",
        "Frames a worker took off its AF_XDP RX rings (both ports).",
        |s| &s.rx_frames,
    ),
    (
        "loupe_worker_tx_frames_total",
        "Frames a worker put on its AF_XDP TX rings (both ports).",
        |s| &s.tx_frames,
    ),
    (
        "loupe_worker_tx_no_frame_total",
        "Frames a worker could not send: no free UMEM frame.",
        |s| &s.tx_no_frame,
    ),
    (
        "loupe_worker_malformed_frames_total",
        "Steered frames a worker could not parse (dropped).",
        |s| &s.malformed_frames,
    ),
    (
        "loupe_worker_bad_checksum_frames_total",
        "Steered frames with a wrong IPv4 or TCP checksum (dropped).",
        |s| &s.bad_checksum_frames,
    ),
    (
        "loupe_worker_orphan_segments_total",
        "TCP segments of no known flow that are not a SYN.",
        |s| &s.orphan_segments,
    ),
    (
        "loupe_worker_busy_polls_total",
        "Busy-poll spells a worker spun before sleeping ([dataplane] busy_poll_us).",
        |s| &s.busy_polls,
    ),
    (
        "loupe_worker_busy_poll_hits_total",
        "Busy-poll spells a frame ended.",
        |s| &s.busy_poll_hits,
    ),
    (
        "loupe_af_xdp_dropped_frames_total",
        "Frames the kernel dropped before the worker saw them (XDP_STATISTICS rx_dropped).",
        |s| &s.xsk_rx_dropped,
    ),
    (
        "loupe_af_xdp_rx_ring_full_frames_total",
        "Frames dropped because the AF_XDP RX ring was full.",
        |s| &s.xsk_rx_ring_full,
    ),
    (
        "loupe_af_xdp_fill_ring_empty_frames_total",
        "Frames dropped because the AF_XDP fill ring was empty.",
        |s| &s.xsk_fill_ring_empty,
    ),
    (
        "loupe_flows_opened_total",
        "TCP flows opened on an inspected port.",
        |s| &s.flows_opened,
    ),
    ("loupe_flows_closed_total", "TCP flows ended.", |s| &s.flows_closed),
    (
        "loupe_flows_refused_table_full_total",
        "SYNs refused because the flow table was full ([dataplane] max_flows).",
        |s| &s.flows_refused_table_full,
    ),
    (
        "loupe_flows_half_open_evicted_total",
        "Half-open flows ended to make room for a new SYN ([dataplane] max_half_open).",
        |s| &s.half_open_evicted,
    ),
    (
        "loupe_flows_syn_proxied_total",
        "SYNs loupe answered itself before connecting upstream ([dataplane] syn_proxy_above).",
        |s| &s.syn_proxied,
    ),
    (
        "loupe_flows_reused_total",
        "Flows ended early because their client reused the 4-tuple.",
        |s| &s.flows_reused,
    ),
    (
        "loupe_flows_upstream_refused_total",
        "Flows whose server refused the connection.",
        |s| &s.upstream_refused,
    ),
    ("loupe_flows_reset_total", "Flows ended by a reset.", |s| &s.resets),
    (
        "loupe_flows_idle_timeouts_total",
        "Flows loupe reset after [timeouts] idle.",
        |s| &s.idle_timeouts,
    ),
    (
        "loupe_flows_handshake_timeouts_total",
        "Flows loupe reset after [timeouts] handshake.",
        |s| &s.handshake_timeouts,
    ),
];

/// Worker counters exported as one sum over the workers: metric name, help, the field.
const SUMMED_COUNTERS: &[WorkerCounter] = &[
    (
        "loupe_http_transactions_total",
        "HTTP transactions seen in decrypted sessions.",
        |s| &s.http_transactions,
    ),
    ("loupe_url_rule_hits_total", "HTTP requests a URL rule matched.", |s| {
        &s.url_rule_hits
    }),
    (
        "loupe_http_blocked_total",
        "HTTP requests loupe answered itself (blocked by a URL rule or signature).",
        |s| &s.http_blocked,
    ),
    (
        "loupe_http_protocol_errors_total",
        "Sessions whose HTTP inspection stopped on malformed HTTP/1.1 or HTTP/2.",
        |s| &s.http_protocol_errors,
    ),
    (
        "loupe_exclusions_dropped_total",
        "Exclusions the control thread could not be told about (its queue was full).",
        |s| &s.exclusions_dropped,
    ),
    (
        "loupe_presented_chains_dropped_total",
        "Presented certificate chains the control thread could not be given.",
        |s| &s.chains_dropped,
    ),
    (
        "loupe_decryption_log_write_errors_total",
        "Decryption-log records that could not be written.",
        |s| &s.log_write_errors,
    ),
    (
        "loupe_eve_write_errors_total",
        "EVE events that could not be written.",
        |s| &s.eve_write_errors,
    ),
];

/// `port` and `queue` of an XDP counter row: a served queue by number, the port's other
/// queues as `other`, frames on neither port as `port="none"`.
fn xdp_place_labels(place: CounterPlace) -> Labels {
    let (port, queue) = match place {
        CounterPlace::Queue { port, queue } => (port.as_str(), queue.to_string()),
        CounterPlace::OtherQueues { port } => (port.as_str(), "other".to_string()),
        CounterPlace::NoPort => ("none", "none".to_string()),
    };
    vec![("port", port.to_string()), ("queue", queue)]
}

/// The help of each XDP counter (`WireCounters::fields` names).
fn xdp_help(name: &str) -> &'static str {
    match name {
        "steered" => "Inspected TCP frames the XDP program handed to an AF_XDP socket.",
        "bridged" => "Frames the XDP program redirected to the peer port (includes malformed, unserved, vlan, fragments and bridged_no_decrypt).",
        "dropped_fail_closed" => "Inspected TCP frames dropped: no socket serves the queue and the wire fails closed.",
        "malformed" => "Truncated frames or bad header lengths (bridged).",
        "redirect_failed" => "Redirects the kernel refused inside the XDP program (dropped).",
        "dropped_quic" => "UDP frames to or from an inspected port dropped by drop_quic.",
        "unserved" => "Inspected TCP frames bridged uninspected: no socket serves the queue, fail-open.",
        "unknown_ingress" => "Frames on an interface that is not a configured port (passed to the stack).",
        "vlan" => "VLAN-tagged frames (bridged).",
        "fragments" => "IP fragments (bridged).",
        "bridged_no_decrypt" => "Inspected TCP frames bridged because their server matched a no-decrypt entry.",
        "pinned_against_entries" => "Inspected TCP frames that kept their connection's decision against changed no-decrypt entries.",
        _ => "An XDP program counter.",
    }
}

/// The exposition text: every metric, `# HELP` and `# TYPE` first, names sorted.
pub fn exposition(facts: &ControlFacts, workers: &[(u32, &WorkerStats)], forger: &ForgerFigures) -> String {
    let mut out = Families::default();
    let load = |field: &AtomicU64| field.load(Ordering::Relaxed);
    let queue = |q: u32| vec![("queue", q.to_string())];

    out.gauge(
        "loupe_config_version",
        "Version of the running policy snapshot (1 at start, +1 per load).",
        [(vec![], facts.config_version as f64)],
    );
    if let Some(rows) = &facts.xdp {
        let names = WireCounters::default().fields().map(|(name, _)| name);
        for (field, name) in names.into_iter().enumerate() {
            out.counter(
                &format!("loupe_xdp_{name}_frames_total"),
                xdp_help(name),
                rows.iter()
                    .map(|row| (xdp_place_labels(row.place), row.counters.fields()[field].1)),
            );
        }
    }
    out.counter(
        "loupe_rule_hits_total",
        "Flows each policy rule decided: by the workers (decided_in=worker) or, for no-decrypt entries keyed on addresses, by client SYNs bridged in XDP (decided_in=xdp).",
        facts.rules.iter().flat_map(|hits| {
            [
                (vec![("rule", hits.rule.clone()), ("decided_in", "worker".to_string())], hits.worker),
                (vec![("rule", hits.rule.clone()), ("decided_in", "xdp".to_string())], hits.xdp),
            ]
        }),
    );
    for (name, help, field) in WORKER_COUNTERS {
        out.counter(name, help, workers.iter().map(|(q, s)| (queue(*q), load(field(s)))));
    }
    out.counter(
        "loupe_tcp_payload_bytes_total",
        "TCP payload bytes relayed on inspected flows, each way (as received by loupe).",
        workers.iter().flat_map(|(q, s)| {
            [
                (
                    vec![("queue", q.to_string()), ("direction", "client_to_server".to_string())],
                    load(&s.bytes_client_to_server),
                ),
                (
                    vec![("queue", q.to_string()), ("direction", "server_to_client".to_string())],
                    load(&s.bytes_server_to_client),
                ),
            ]
        }),
    );
    out.gauge(
        "loupe_flows_active",
        "TCP flows open now.",
        workers.iter().map(|(q, s)| (queue(*q), load(&s.flows_active) as f64)),
    );
    out.gauge(
        "loupe_flows_half_open",
        "Flows whose client has not completed its TCP handshake.",
        workers.iter().map(|(q, s)| (queue(*q), load(&s.half_open) as f64)),
    );
    out.gauge(
        "loupe_worker_load_ratio",
        "Share of wall time a worker spent outside poll(2) over the last second or so (0 to 1).",
        workers
            .iter()
            .map(|(q, s)| (queue(*q), load(&s.load_permille) as f64 / 1000.0)),
    );
    out.gauge(
        "loupe_worker_config_version",
        "Version of the policy snapshot each worker runs (its acknowledgement of a load).",
        workers.iter().map(|(q, s)| (queue(*q), load(&s.config_version) as f64)),
    );

    let mut sessions = Vec::new();
    for (a, action) in Action::ALL.iter().enumerate() {
        for (o, outcome) in Outcome::ALL.iter().enumerate() {
            let count = workers.iter().map(|(_, s)| load(&s.sessions_by_verdict[a][o])).sum();
            sessions.push((
                vec![
                    ("action", action.as_str().to_string()),
                    ("outcome", outcome.as_str().to_string()),
                ],
                count,
            ));
        }
    }
    out.counter(
        "loupe_sessions_total",
        "Ended TLS sessions by policy action (decrypt, no-decrypt, block, decrypt-inbound) and outcome (decrypted, spliced, blocked, aborted).",
        sessions,
    );
    out.histogram(
        "loupe_tls_handshake_duration_seconds",
        "From the client's SYN to both TLS handshakes done, per decrypted session.",
        &LatencyHistogram::sample_all(workers.iter().map(|(_, s)| &s.tls_handshake_latency)),
    );
    out.histogram(
        "loupe_http_request_duration_seconds",
        "From an HTTP request's first byte to its response's last, per transaction in decrypted sessions.",
        &LatencyHistogram::sample_all(workers.iter().map(|(_, s)| &s.http_request_latency)),
    );
    for (name, help, field) in SUMMED_COUNTERS {
        out.counter(
            name,
            help,
            [(vec![], workers.iter().map(|(_, s)| load(field(s))).sum())],
        );
    }
    out.counter(
        "loupe_signature_matches_total",
        "Signatures that fired on decrypted traffic, by their action (alert: logged; drop: session or stream ended).",
        [
            (
                vec![("action", "alert".to_string())],
                workers.iter().map(|(_, s)| load(&s.signature_alerts)).sum(),
            ),
            (
                vec![("action", "drop".to_string())],
                workers.iter().map(|(_, s)| load(&s.signature_drops)).sum(),
            ),
        ],
    );
    out.gauge(
        "loupe_exclusions",
        "Servers excluded from decryption now (the exclusion cache).",
        [(vec![], facts.exclusions as f64)],
    );
    out.counter(
        "loupe_forged_certificates_signed_total",
        "Leaf certificates the decryption CA signed.",
        [(vec![], forger.signed)],
    );
    out.counter(
        "loupe_forged_certificate_cache_hits_total",
        "Client handshakes served a forged certificate from the cache.",
        [(vec![], forger.cache_hits)],
    );
    out.counter(
        "loupe_forged_certificate_cache_misses_total",
        "Client handshakes that found no forged certificate in the cache.",
        [(vec![], forger.cache_misses)],
    );
    out.counter(
        "loupe_forged_certificate_cache_evictions_total",
        "Forged certificates pushed out of the full cache.",
        [(vec![], forger.evictions)],
    );
    out.gauge(
        "loupe_forged_certificates_cached",
        "Forged certificates in the cache now.",
        [(vec![], forger.cached as f64)],
    );
    out.encode()
}

/// Metric families being put together; empty ones are left out (the format has no
/// family without a sample).
#[derive(Default)]
struct Families(Vec<MetricFamily>);

type Labels = Vec<(&'static str, String)>;

impl Families {
    fn counter(&mut self, name: &str, help: &str, samples: impl IntoIterator<Item = (Labels, u64)>) {
        self.family(name, help, MetricType::COUNTER, samples, |metric, value| {
            let mut counter = Counter::default();
            counter.set_value(value as f64);
            metric.set_counter(counter);
        });
    }

    fn gauge(&mut self, name: &str, help: &str, samples: impl IntoIterator<Item = (Labels, f64)>) {
        self.family(name, help, MetricType::GAUGE, samples, |metric, value| {
            let mut gauge = Gauge::default();
            gauge.set_value(value);
            metric.set_gauge(gauge);
        });
    }

    fn histogram(&mut self, name: &str, help: &str, sample: &HistogramSample) {
        let mut histogram = Histogram::default();
        histogram.set_sample_count(sample.count);
        histogram.set_sample_sum(sample.sum_seconds);
        histogram.set_bucket(
            sample
                .cumulative
                .iter()
                .map(|(bound, count)| {
                    let mut bucket = Bucket::default();
                    bucket.set_upper_bound(*bound);
                    bucket.set_cumulative_count(*count);
                    bucket
                })
                .collect(),
        );
        self.family(
            name,
            help,
            MetricType::HISTOGRAM,
            [(vec![], histogram)],
            |metric, histogram| metric.set_histogram(histogram),
        );
    }

    fn family<V>(
        &mut self,
        name: &str,
        help: &str,
        kind: MetricType,
        samples: impl IntoIterator<Item = (Labels, V)>,
        set: impl Fn(&mut Metric, V),
    ) {
        let metrics: Vec<Metric> = samples
            .into_iter()
            .map(|(labels, value)| {
                let mut metric = Metric::default();
                metric.set_label(
                    labels
                        .into_iter()
                        .map(|(name, value)| {
                            let mut pair = LabelPair::default();
                            pair.set_name(name.to_string());
                            pair.set_value(value);
                            pair
                        })
                        .collect(),
                );
                set(&mut metric, value);
                metric
            })
            .collect();
        if metrics.is_empty() {
            return;
        }
        let mut family = MetricFamily::default();
        family.set_name(name.to_string());
        family.set_help(help.to_string());
        family.set_field_type(kind);
        family.set_metric(metrics);
        self.0.push(family);
    }

    fn encode(mut self) -> String {
        self.0.sort_by(|a, b| a.name().cmp(b.name()));
        let mut text = String::new();
        // Only fails on a family without samples or a name, which `family` never makes.
        if let Err(err) = TextEncoder::new().encode_utf8(&self.0, &mut text) {
            tracing::error!(%err, "encoding the metrics");
        }
        text
    }
}
