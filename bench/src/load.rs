//! `loupe-bench load`: the load generator. A TLS client (BoringSSL) that runs one
//! workload against a server for a warm-up and a fixed duration and reports what it
//! measured as one JSON object ([`LoadResult`]).
//!
//! The types here are the contract between the generator, the bench runner and the
//! report; the generator itself is `run_load`.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
// BoringSSL's SHA-256 (SHA-NI): about 15% faster here than the sha2 crate's, and the
// bulk workload hashes every byte it receives.
use crate::costs::{machine_busy_s, ProcessSample};
use boring::sha::Sha256;
use boring::ssl::{Ssl, SslContext, SslMethod, SslOptions, SslSessionCacheMode, SslVerifyMode};
use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Barrier, Semaphore};
use tokio::task::JoinHandle;
use tokio_boring::SslStream;

/// What to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Workload {
    /// A new TLS connection per request (no resumption), small response.
    Handshakes,
    /// Keep-alive HTTP/1.1 requests on `concurrency` connections.
    Requests,
    /// The same over HTTP/2 (ALPN h2): one request at a time on each connection.
    RequestsH2,
    /// `streams` parallel downloads of one large object, each hashed.
    Bulk { streams: usize },
    /// Open `sessions` TLS sessions, hold them idle for the duration, close them.
    Idle { sessions: usize },
    /// The same with HTTP/2 sessions (ALPN h2, one request each before the hold).
    IdleH2 { sessions: usize },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadSpec {
    /// Where to connect (the server's address; the appliance sits in the path).
    pub target: SocketAddr,
    /// Server name sent (SNI, Host) and checked against the certificate.
    pub sni: String,
    /// The only CA trusted (the decryption CA, or the origin CA when not decrypting).
    pub ca_file: PathBuf,
    /// Path requested (`/1k`, `/1g`).
    pub path: String,
    pub workload: Workload,
    /// Connections in flight (handshakes, requests).
    pub concurrency: usize,
    /// Run before measuring; nothing recorded.
    pub warmup: Duration,
    /// Measured time (for idle: how long the sessions are held once all are open).
    pub duration: Duration,
    /// Bulk: the object's SHA-256 (hex), checked for every stream.
    pub expect_sha256: Option<String>,
    /// Requests and handshakes: the offered rate over all connections (per second), each
    /// connection sending on a fixed schedule whether or not the last answer was quick
    /// (open loop); None: each sends its next request when the last is answered.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Processes (the appliance's) whose CPU is sampled at the ends of the measured
    /// interval, with the generator's own.
    #[serde(default)]
    pub watch_pids: Vec<u32>,
    /// The key shares the ClientHello carries.
    #[serde(default)]
    pub hello: HelloShape,
}

/// What the generator's ClientHello offers for the key exchange. Middleboxes differ in
/// which shape they handle well (an ML-KEM hybrid share makes the hello about 1.5 KB, two
/// segments; OpenSSL 3.0 has no ML-KEM and takes the X25519 share), so the handshake and
/// request workloads run with both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum HelloShape {
    /// One X25519 key share (P-256 and P-384 also listed as groups).
    #[default]
    Classic,
    /// As current browsers send: an X25519MLKEM768 share and an X25519 share.
    Browser,
}

impl HelloShape {
    /// The groups offered, in preference order. BoringSSL sends a key share for the first
    /// and, when the first is post-quantum, one for the first classical group after it.
    fn groups(self) -> &'static str {
        match self {
            HelloShape::Classic => "X25519:P-256:P-384",
            HelloShape::Browser => "X25519MLKEM768:X25519:P-256:P-384",
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// What the generator measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadResult {
    /// Completed units: handshakes, requests, streams, or sessions opened (idle).
    pub completed: u64,
    pub errors: u64,
    /// The first few errors, in words.
    pub first_errors: Vec<String>,
    /// The measured interval, seconds.
    pub elapsed_s: f64,
    /// Application bytes received (response bodies and headers) in the interval.
    pub bytes: u64,
    /// `completed / elapsed_s`.
    pub per_second: f64,
    /// Bulk: MB/s (10^6 bytes) of response bodies.
    pub mb_per_s: Option<f64>,
    /// Requests: latency corrected for coordinated omission.
    pub latency_us: Option<Latency>,
    /// Handshakes: TCP connect to handshake done.
    pub handshake_us: Option<Latency>,
    /// CPU seconds (user + system) the generator used in the measured interval.
    pub client_cpu_s: f64,
    /// CPU seconds the `watch_pids` used in the same interval (None without any, or when
    /// one of them could not be read).
    #[serde(default)]
    pub watched_cpu_s: Option<f64>,
    /// Busy CPU seconds of the whole machine (all cores, `/proc/stat`) in the interval.
    #[serde(default)]
    pub machine_cpu_s: Option<f64>,
    /// Requests and handshakes: the rate offered on a fixed schedule ([`LoadSpec::rate`]).
    #[serde(default)]
    pub offered_rate: Option<f64>,
    /// Bulk: every stream's body matched `expect_sha256`.
    pub integrity_ok: Option<bool>,
    /// Idle: sessions that were open at the same time.
    pub sessions_held: Option<u64>,
    /// Handshakes completed (warm-up included) by the key-exchange group the server side
    /// chose, as BoringSSL names it ("X25519", "X25519MLKEM768").
    #[serde(default)]
    pub key_exchange: BTreeMap<String, u64>,
}

// ---------------------------------------------------------------------------------------
// The generator.
//
// One tokio multi-thread runtime with a worker per core; every connection is a task doing
// non-blocking I/O through tokio-boring, so one thread drives thousands of sessions and the
// client spends its CPU on TLS, not on threads. Each task keeps its own counters and
// histograms (nothing shared on the hot path but the error counter) and hands them back
// when the run ends; the runner merges them.

/// Bound on one step that should be quick: TCP connect plus handshake, sending a request,
/// or a pause between two reads of a response. Past it the step counts as an error.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How many errors [`LoadResult::first_errors`] keeps.
pub const FIRST_ERRORS: usize = 5;
/// Pause of a task after an error before it tries again, so that a refused or broken
/// target costs a few hundred attempts a second, not a busy loop.
const ERROR_PAUSE: Duration = Duration::from_millis(10);
/// Handshakes: how long the server has to close after its `Connection: close` response.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Latencies are recorded in nanoseconds, up to a minute, three significant digits.
const HIST_MAX_NS: u64 = 60_000_000_000;
/// Read buffer of a connection: one TLS record; bulk downloads use a larger one.
const BUF_SMALL: usize = 16 * 1024;
const BUF_BULK: usize = 256 * 1024;
/// Buffer between BoringSSL and the socket; idle sessions get a small one (it stays
/// allocated while they are held).
const SOCKET_BUF: usize = 64 * 1024;
const SOCKET_BUF_IDLE: usize = 4 * 1024;
/// Longest response head accepted.
const MAX_HEAD: usize = BUF_SMALL;

impl Workload {
    /// The name used on the command line and in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Handshakes => "handshakes",
            Workload::Requests => "requests",
            Workload::RequestsH2 => "requests-h2",
            Workload::Bulk { .. } => "bulk",
            Workload::Idle { .. } => "idle",
            Workload::IdleH2 { .. } => "idle-h2",
        }
    }

    /// Idle sessions held open (HTTP/1.1 or HTTP/2).
    pub fn is_idle(&self) -> bool {
        matches!(self, Workload::Idle { .. } | Workload::IdleH2 { .. })
    }

    /// Spoken over HTTP/2 (ALPN h2 only).
    pub fn is_h2(&self) -> bool {
        matches!(self, Workload::RequestsH2 | Workload::IdleH2 { .. })
    }
}

/// Parses `2s`, `500ms`, `1.5s`, `2m`, `100us` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().with_context(|| format!("bad duration {s:?}"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" | "µs" => n / 1e6,
        "m" | "min" => n * 60.0,
        u => bail!("bad duration {s:?}: unknown unit {u:?} (s, ms, us, m)"),
    };
    Duration::try_from_secs_f64(secs).with_context(|| format!("bad duration {s:?}"))
}

/// Parses an offered rate per second: a positive, finite number (`8000`, `2.5`).
pub fn parse_rate(s: &str) -> Result<f64> {
    let rate: f64 = s.trim().parse().with_context(|| format!("bad rate {s:?}"))?;
    anyhow::ensure!(
        rate > 0.0 && rate.is_finite(),
        "the rate must be a positive number per second, not {s:?}"
    );
    Ok(rate)
}

/// Runs `spec` and returns what it measured. For [`Workload::Idle`] it writes the line
/// `ready <n>` to stderr once all sessions are open (see [`run_load_with`]).
///
/// Connection, TLS and HTTP failures do not end the run: they are counted in
/// [`LoadResult::errors`]. An `Err` means the run could not start (a bad CA file, no
/// runtime, too few file descriptors).
pub fn run_load(spec: &LoadSpec) -> Result<LoadResult> {
    run_load_with(spec, |n| {
        let mut e = std::io::stderr().lock();
        let _ = writeln!(e, "ready {n}");
        let _ = e.flush();
    })
}

/// [`run_load`], calling `on_ready(n)` instead of writing `ready <n>` when the idle
/// workload holds its `n` sessions (it is called from a runtime thread; the hold starts
/// when it returns).
pub fn run_load_with(spec: &LoadSpec, on_ready: impl FnOnce(u64) + Send + 'static) -> Result<LoadResult> {
    if spec.concurrency == 0 {
        bail!("concurrency must be at least 1");
    }
    let fds = match spec.workload {
        Workload::Idle { sessions } | Workload::IdleH2 { sessions } => sessions + spec.concurrency,
        Workload::Bulk { streams } => streams,
        Workload::Handshakes | Workload::Requests | Workload::RequestsH2 => spec.concurrency,
    };
    raise_nofile(fds as u64 + 256)?;
    let shared = Arc::new(Shared::new(spec)?);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("loupe-load")
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let result = rt.block_on(async move {
        match shared.spec.workload {
            Workload::Handshakes => timed(shared, handshakes_task).await,
            Workload::Requests => timed(shared, requests_task).await,
            Workload::RequestsH2 => timed(shared, requests_h2_task).await,
            Workload::Bulk { streams } => bulk(shared, streams).await,
            Workload::Idle { sessions } | Workload::IdleH2 { sessions } => idle(shared, sessions, on_ready).await,
        }
    });
    // Tasks still closing sessions are dropped with the runtime, without waiting.
    rt.shutdown_background();
    Ok(result)
}

/// What every task of one run shares: the spec, the TLS context, the request bytes and
/// the error counter.
struct Shared {
    spec: LoadSpec,
    ctx: SslContext,
    /// `GET path` on a keep-alive connection.
    request: Vec<u8>,
    /// The same with `Connection: close` (handshakes: the server closes first, so its
    /// side, not ours, keeps the TIME_WAIT and the client never runs out of ports).
    request_close: Vec<u8>,
    /// HTTP/2: `https://<sni><path>` (its scheme and authority become `:scheme` and
    /// `:authority`).
    uri: http::Uri,
    errors: AtomicU64,
    first_errors: Mutex<Vec<String>>,
    /// Handshakes by negotiated group (one lock per handshake: thousands per second at
    /// most, against a handshake's hundreds of microseconds).
    key_exchange: Mutex<BTreeMap<String, u64>>,
    /// Tasks that took their place in the rate's schedule so far.
    paced_tasks: AtomicU64,
}

impl Shared {
    fn new(spec: &LoadSpec) -> Result<Shared> {
        let mut ctx = SslContext::builder(SslMethod::tls())?;
        ctx.set_ca_file(&spec.ca_file)
            .with_context(|| format!("loading CA file {}", spec.ca_file.display()))?;
        ctx.set_verify(SslVerifyMode::PEER);
        // No client session cache and no tickets: every handshake is a full one.
        ctx.set_session_cache_mode(SslSessionCacheMode::OFF);
        ctx.set_options(SslOptions::NO_TICKET);
        // The HTTP/2 workloads offer h2 alone: a server or middlebox that does not take it
        // fails the session instead of quietly measuring HTTP/1.1.
        if spec.workload.is_h2() {
            ctx.set_alpn_protos(b"\x02h2")?;
        } else {
            ctx.set_alpn_protos(b"\x08http/1.1")?;
        }
        ctx.set_curves_list(spec.hello.groups())
            .with_context(|| format!("setting the groups {:?}", spec.hello.groups()))?;
        let req = |extra: &str| {
            format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: loupe-bench\r\nAccept: */*\r\n{extra}\r\n",
                spec.path, spec.sni
            )
            .into_bytes()
        };
        Ok(Shared {
            spec: spec.clone(),
            ctx: ctx.build(),
            request: req(""),
            request_close: req("Connection: close\r\n"),
            uri: format!("https://{}{}", spec.sni, spec.path)
                .parse()
                .with_context(|| format!("bad URI for {} {}", spec.sni, spec.path))?,
            errors: AtomicU64::new(0),
            first_errors: Mutex::new(Vec::new()),
            key_exchange: Mutex::new(BTreeMap::new()),
            paced_tasks: AtomicU64::new(0),
        })
    }

    fn error(&self, e: &anyhow::Error) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_errors.lock().unwrap_or_else(|p| p.into_inner());
        if first.len() < FIRST_ERRORS {
            first.push(format!("{e:#}"));
        }
    }

    /// The result with the error fields filled in.
    fn result(&self) -> LoadResult {
        LoadResult {
            errors: self.errors.load(Ordering::Relaxed),
            first_errors: self.first_errors.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            key_exchange: self.key_exchange.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            ..LoadResult::default()
        }
    }
}

/// The measured interval of a timed workload: what completes inside it is counted.
#[derive(Clone, Copy, Debug)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn contains(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }
}

/// When a request task sends: as soon as its last request was answered (closed loop), or
/// every `concurrency / rate` seconds (open loop, [`LoadSpec::rate`]), the tasks' schedules
/// spread evenly over one period.
enum RequestClock {
    AfterAnswer,
    Paced { next: Instant, period: Duration },
}

impl RequestClock {
    fn new(shared: &Shared) -> RequestClock {
        let Some(rate) = shared.spec.rate.filter(|r| *r > 0.0) else {
            return RequestClock::AfterAnswer;
        };
        let tasks = shared.spec.concurrency as f64;
        let period = Duration::from_secs_f64(tasks / rate);
        let place = shared.paced_tasks.fetch_add(1, Ordering::Relaxed) as f64;
        RequestClock::Paced {
            next: Instant::now() + period.mul_f64(place / tasks),
            period,
        }
    }

    /// Waits for the next request's turn; returns when its latency counts from: the
    /// scheduled instant when paced, so that a late answer also delays the requests
    /// queued behind it in the count (no coordinated omission).
    async fn turn(&mut self) -> Instant {
        match self {
            RequestClock::AfterAnswer => Instant::now(),
            RequestClock::Paced { next, period } => {
                let due = *next;
                tokio::time::sleep_until(due.into()).await;
                *next += *period;
                due
            }
        }
    }

    /// The latencies as reported: closed-loop ones corrected for coordinated omission
    /// with their mean as the expected interval; paced ones already count from the
    /// schedule.
    fn finish(&self, raw: Histogram<u64>) -> Option<Histogram<u64>> {
        if raw.is_empty() {
            return None;
        }
        Some(match self {
            RequestClock::AfterAnswer => raw.clone_correct((raw.mean() as u64).max(1)),
            RequestClock::Paced { .. } => raw,
        })
    }
}

/// What one task of a timed workload measured.
#[derive(Default)]
struct TaskStats {
    completed: u64,
    bytes: u64,
    /// Requests: per-request latency (ns), already corrected for coordinated omission.
    latency: Option<Histogram<u64>>,
    /// Handshakes: connect start to handshake done (ns).
    handshake: Option<Histogram<u64>>,
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_NS, 3).expect("valid histogram bounds")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_nanos() as u64).max(1));
}

fn latency(h: &Histogram<u64>) -> Option<Latency> {
    if h.is_empty() {
        return None;
    }
    let us = |ns: u64| ns as f64 / 1e3;
    Some(Latency {
        p50: us(h.value_at_quantile(0.50)),
        p90: us(h.value_at_quantile(0.90)),
        p99: us(h.value_at_quantile(0.99)),
        p999: us(h.value_at_quantile(0.999)),
        max: us(h.max()),
    })
}

fn merge(into: &mut Option<Histogram<u64>>, h: Option<Histogram<u64>>) {
    match (into.as_mut(), h) {
        (Some(a), Some(b)) => a.add(&b).expect("histograms of the same bounds"),
        (None, Some(b)) => *into = Some(b),
        (_, None) => {}
    }
}

/// Handshakes and requests: `concurrency` tasks run from now through the warm-up and the
/// measured window; CPU is sampled at both ends of the window.
async fn timed<F, Fut>(shared: Arc<Shared>, task: F) -> LoadResult
where
    F: Fn(Arc<Shared>, Window) -> Fut,
    Fut: Future<Output = TaskStats> + Send + 'static,
{
    let start = Instant::now() + shared.spec.warmup;
    let w = Window {
        start,
        end: start + shared.spec.duration,
    };
    let handles: Vec<_> = (0..shared.spec.concurrency)
        .map(|_| tokio::spawn(task(shared.clone(), w)))
        .collect();
    tokio::time::sleep_until(w.start.into()).await;
    let cpu0 = CpuReading::now(&shared.spec.watch_pids);
    tokio::time::sleep_until(w.end.into()).await;
    let cpu1 = CpuReading::now(&shared.spec.watch_pids);
    // Every task stops at the end of the window; a step in flight is cut there.
    let stats = join_all(&shared, handles, w.end + Duration::from_secs(5)).await;

    let mut r = shared.result();
    r.elapsed_s = (w.end - w.start).as_secs_f64();
    if matches!(
        shared.spec.workload,
        Workload::Requests | Workload::RequestsH2 | Workload::Handshakes
    ) {
        r.offered_rate = shared.spec.rate;
    }
    cpu1.record_since(&cpu0, &mut r);
    let (mut lat, mut hs) = (None, None);
    for s in stats {
        r.completed += s.completed;
        r.bytes += s.bytes;
        merge(&mut lat, s.latency);
        merge(&mut hs, s.handshake);
    }
    r.per_second = per(r.completed as f64, r.elapsed_s);
    r.latency_us = lat.as_ref().and_then(latency);
    r.handshake_us = hs.as_ref().and_then(latency);
    r
}

fn per(x: f64, secs: f64) -> f64 {
    if secs > 0.0 {
        x / secs
    } else {
        0.0
    }
}

/// Waits for the tasks until `until`, then aborts those left; a task that panicked counts
/// as an error.
async fn join_all<T>(shared: &Shared, handles: Vec<JoinHandle<T>>, until: Instant) -> Vec<T> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        let abort = h.abort_handle();
        match tokio::time::timeout_at(until.into(), h).await {
            Ok(Ok(v)) => out.push(v),
            Ok(Err(e)) => shared.error(&anyhow!("load task failed: {e}")),
            Err(_) => abort.abort(),
        }
    }
    out
}

/// Handshakes: new TCP connection, full handshake, one `Connection: close` request, the
/// whole response, the server's close; again until the window ends.
async fn handshakes_task(shared: Arc<Shared>, w: Window) -> TaskStats {
    let mut s = TaskStats {
        completed: 0,
        bytes: 0,
        latency: None,
        handshake: Some(new_hist()),
    };
    // Paced like requests when a rate is given: a steady stream of new connections.
    let mut clock = RequestClock::new(&shared);
    while Instant::now() < w.end {
        // Paced, the handshake counts from its scheduled instant: one that starts late
        // because the last was slow waited that long too.
        let t0 = clock.turn().await;
        let step = async {
            let mut c = Conn::connect(&shared, w.end, BUF_SMALL, SOCKET_BUF).await?;
            let handshake_done = Instant::now();
            let r = c.request(&shared.request_close, None, w.end).await?;
            // Let the server close first (its close_notify and FIN, or its FIN alone).
            let close_by = Instant::now() + CLOSE_WAIT;
            if !c.wait_close(close_by.min(w.end)).await && Instant::now() < w.end {
                bail!(
                    "the server did not close the connection within {CLOSE_WAIT:?} of its `Connection: close` response"
                );
            }
            anyhow::Ok((handshake_done, r))
        };
        match step.await {
            Ok((hs_done, r)) => {
                if w.contains(hs_done) {
                    if let Some(h) = s.handshake.as_mut() {
                        record(h, hs_done - t0);
                    }
                }
                if w.contains(Instant::now()) {
                    s.completed += 1;
                    s.bytes += r.header_bytes + r.body_bytes;
                }
            }
            Err(e) if e.is::<Cut>() => break,
            Err(e) => {
                shared.error(&e);
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
    s
}

/// Requests: one keep-alive connection sending requests back to back (a new connection
/// when the server closes it or after an error).
///
/// Coordinated omission: the loop is closed (the next request waits for the previous
/// response), so a stall of the server delays requests that a real client population
/// would have sent meanwhile, and a plain histogram hides them. Each connection records
/// its raw latencies; at the end they are corrected with hdrhistogram's `clone_correct`
/// (the same as `record_correct` for every value) using that connection's mean latency as
/// the expected interval between requests: a request that took k mean intervals also
/// stands for the k−1 requests that would have been sent, and waited, during it (the
/// approach of wrk). Only completed requests are recorded, so a request cut by the end of
/// the window is not; connection setup time is not part of any request's latency.
async fn requests_task(shared: Arc<Shared>, w: Window) -> TaskStats {
    let mut raw = new_hist();
    let mut s = TaskStats::default();
    let mut clock = RequestClock::new(&shared);
    let mut conn: Option<Conn> = None;
    while Instant::now() < w.end {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::connect(&shared, w.end, BUF_SMALL, SOCKET_BUF).await {
                Ok(c) => conn.insert(c),
                Err(e) if e.is::<Cut>() => break,
                Err(e) => {
                    shared.error(&e);
                    tokio::time::sleep(ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let t0 = clock.turn().await;
        if t0 >= w.end {
            break;
        }
        match c.request(&shared.request, None, w.end).await {
            Ok(r) => {
                let done = Instant::now();
                if w.contains(done) {
                    s.completed += 1;
                    s.bytes += r.header_bytes + r.body_bytes;
                    record(&mut raw, done - t0);
                }
                if r.close {
                    conn = None;
                }
            }
            Err(e) if e.is::<Cut>() => break,
            Err(e) => {
                conn = None;
                shared.error(&e);
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
    s.latency = clock.finish(raw);
    s
}

/// What one bulk stream did.
struct StreamOutcome {
    complete: bool,
    bytes: u64,
    body_bytes: u64,
    sha256: Option<String>,
}

/// Bulk: `streams` connections are set up (connect and handshake, not timed), then all
/// request the object at once; the interval runs from there until the last body ends, or
/// `duration` (a stream cut there is an error, and integrity cannot be claimed).
async fn bulk(shared: Arc<Shared>, streams: usize) -> LoadResult {
    let go = Arc::new(Barrier::new(streams + 1));
    let handles: Vec<_> = (0..streams)
        .map(|_| tokio::spawn(bulk_stream(shared.clone(), go.clone())))
        .collect();
    go.wait().await;
    let t0 = Instant::now();
    let cpu0 = CpuReading::now(&shared.spec.watch_pids);
    let outcomes = join_all(&shared, handles, t0 + shared.spec.duration + STEP_TIMEOUT).await;
    let cpu1 = CpuReading::now(&shared.spec.watch_pids);
    let elapsed = t0.elapsed().as_secs_f64();

    let mut r = shared.result();
    r.elapsed_s = elapsed;
    cpu1.record_since(&cpu0, &mut r);
    let mut body = 0u64;
    for o in &outcomes {
        r.completed += u64::from(o.complete);
        r.bytes += o.bytes;
        body += o.body_bytes;
    }
    r.per_second = per(r.completed as f64, elapsed);
    r.mb_per_s = Some(per(body as f64 / 1e6, elapsed));
    r.integrity_ok = shared.spec.expect_sha256.as_ref().map(|want| {
        let want = want.trim().to_ascii_lowercase();
        outcomes.len() == streams
            && outcomes
                .iter()
                .all(|o| o.complete && o.sha256.as_deref() == Some(want.as_str()))
    });
    r
}

async fn bulk_stream(shared: Arc<Shared>, go: Arc<Barrier>) -> StreamOutcome {
    let conn = Conn::connect(&shared, Instant::now() + STEP_TIMEOUT, BUF_BULK, SOCKET_BUF).await;
    go.wait().await;
    let deadline = Instant::now() + shared.spec.duration;
    let mut out = StreamOutcome {
        complete: false,
        bytes: 0,
        body_bytes: 0,
        sha256: None,
    };
    let mut c = match conn {
        Ok(c) => c,
        Err(e) => {
            shared.error(&e);
            return out;
        }
    };
    let mut hasher = Sha256::new();
    let r = c.request(&shared.request, Some(&mut hasher), deadline).await;
    out.bytes = c.received;
    out.body_bytes = c.body_received;
    match r {
        Ok(_) => {
            out.complete = true;
            out.sha256 = Some(hex(&hasher.finish()));
        }
        Err(e) if e.is::<Cut>() => shared.error(&anyhow!(
            "stream cut by --duration ({:?}) after {} body bytes",
            shared.spec.duration,
            c.body_received
        )),
        Err(e) => shared.error(&e),
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Idle: `sessions` tasks open their session `concurrency` at a time (connect, handshake,
/// one request on a keep-alive connection), then wait. When every task has opened or
/// failed, `on_ready(n)` is called and the sessions are held for `duration`, watched for
/// the server closing them; then each sends close_notify and closes. `completed` is the
/// sessions opened, `sessions_held` those still open at the end of the hold, and the
/// measured interval (elapsed, CPU) is the hold.
async fn idle(shared: Arc<Shared>, sessions: usize, on_ready: impl FnOnce(u64)) -> LoadResult {
    let gate = Arc::new(Semaphore::new(shared.spec.concurrency));
    let (opened_tx, mut opened_rx) = mpsc::unbounded_channel::<bool>();
    let (close_tx, close_rx) = watch::channel(false);
    let handles: Vec<_> = (0..sessions)
        .map(|_| {
            let (shared, gate, opened, close) = (shared.clone(), gate.clone(), opened_tx.clone(), close_rx.clone());
            if shared.spec.workload.is_h2() {
                tokio::spawn(idle_session_h2(shared, gate, opened, close))
            } else {
                tokio::spawn(idle_session(shared, gate, opened, close))
            }
        })
        .collect();
    drop(opened_tx);
    // Every session reports once, opened or failed (a task that died reports nothing and
    // drops its sender).
    let mut opened = 0u64;
    for _ in 0..sessions {
        match opened_rx.recv().await {
            Some(ok) => opened += u64::from(ok),
            None => break,
        }
    }
    on_ready(opened);
    let t0 = Instant::now();
    let cpu0 = CpuReading::now(&shared.spec.watch_pids);
    tokio::time::sleep(shared.spec.duration).await;
    let cpu1 = CpuReading::now(&shared.spec.watch_pids);
    let elapsed = t0.elapsed().as_secs_f64();
    let _ = close_tx.send(true);
    let held = join_all(&shared, handles, Instant::now() + STEP_TIMEOUT).await;

    let mut r = shared.result();
    r.completed = opened;
    r.elapsed_s = elapsed;
    cpu1.record_since(&cpu0, &mut r);
    r.per_second = per(opened as f64, elapsed);
    r.bytes = held.iter().map(|h| h.1).sum();
    r.sessions_held = Some(held.iter().filter(|h| h.0).count() as u64);
    r
}

/// One idle session: (held to the end, application bytes received).
async fn idle_session(
    shared: Arc<Shared>,
    gate: Arc<Semaphore>,
    opened: mpsc::UnboundedSender<bool>,
    mut close: watch::Receiver<bool>,
) -> (bool, u64) {
    let permit = gate.acquire_owned().await;
    let deadline = Instant::now() + STEP_TIMEOUT;
    let open = async {
        let mut c = Conn::connect(&shared, deadline, BUF_SMALL, SOCKET_BUF_IDLE).await?;
        let r = c.request(&shared.request, None, deadline).await?;
        if r.close {
            bail!("the server closed the session after its first response");
        }
        anyhow::Ok(c)
    };
    let res = open.await;
    drop(permit);
    let Some(mut c) = report_opened(&shared, res, opened) else {
        return (false, 0);
    };
    // The read buffer is not needed while idle: keep the client's memory per session small.
    c.buf = Vec::new();
    c.pos = 0;
    c.len = 0;
    let mut byte = [0u8; 1];
    tokio::select! {
        // (The guard wait_for returns is not Send: drop it inside.)
        _ = async { drop(close.wait_for(|&v| v).await) } => {
            let _ = tokio::time::timeout(Duration::from_secs(2), c.tls.shutdown()).await;
            (true, c.received)
        }
        r = c.tls.read(&mut byte) => {
            let what = match r {
                Ok(0) => "closed".to_string(),
                Ok(_) => "sent unexpected data on".to_string(),
                Err(e) => format!("broke ({e})"),
            };
            shared.error(&anyhow!("the server {what} an idle session while it was held"));
            (false, c.received)
        }
    }
}

/// A step cut by the end of the measured window (or of a bulk stream's duration): not an
/// error of the target, the run is over.
#[derive(Debug)]
struct Cut;

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cut by the deadline")
    }
}

impl std::error::Error for Cut {}

/// `Cut` when `deadline` has passed, else the step's own timeout.
fn timed_out(deadline: Instant, what: &str) -> anyhow::Error {
    if Instant::now() >= deadline {
        Cut.into()
    } else {
        anyhow!("{what}: no progress in {STEP_TIMEOUT:?}")
    }
}

/// Runs `f` until `deadline` or for at most [`STEP_TIMEOUT`].
/// Tells the idle workload whether a session opened, after counting the error when not
/// (the workload may read the errors as soon as every session answered); the sender is
/// dropped either way.
fn report_opened<T>(shared: &Shared, opening: Result<T>, opened: mpsc::UnboundedSender<bool>) -> Option<T> {
    let session = match opening {
        Ok(session) => Some(session),
        Err(e) => {
            let e = if e.is::<Cut>() {
                anyhow!("opening the session took over {STEP_TIMEOUT:?}")
            } else {
                e
            };
            shared.error(&e);
            None
        }
    };
    let _ = opened.send(session.is_some());
    session
}

async fn step<T>(deadline: Instant, what: &str, f: impl Future<Output = Result<T>>) -> Result<T> {
    let until = deadline.min(Instant::now() + STEP_TIMEOUT);
    match tokio::time::timeout_at(until.into(), f).await {
        Ok(r) => r,
        Err(_) => Err(timed_out(deadline, what)),
    }
}

/// One HTTP/1.1 response read.
struct Response {
    header_bytes: u64,
    body_bytes: u64,
    /// The server will close the connection after it.
    close: bool,
}

/// A TLS connection with its read buffer (`buf[pos..len]` not yet consumed).
struct Conn {
    tls: SslStream<BufReader<TcpStream>>,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    /// Application bytes received, and of them response bodies.
    received: u64,
    body_received: u64,
}

/// TCP connect and full TLS handshake, the certificate verified for the SNI name (ALPN as
/// the workload asks).
async fn tls_connect(shared: &Shared, deadline: Instant, socket_buf: usize) -> Result<SslStream<BufReader<TcpStream>>> {
    let spec = &shared.spec;
    step(deadline, "connect and handshake", async {
        let tcp = TcpStream::connect(spec.target)
            .await
            .with_context(|| format!("connecting to {}", spec.target))?;
        tcp.set_nodelay(true)?;
        let mut ssl = Ssl::new(&shared.ctx)?;
        ssl.set_hostname(&spec.sni)?;
        ssl.param_mut().set_host(&spec.sni)?;
        // BoringSSL reads a record's header and then its body: the buffer turns
        // those two reads into one system call (usually less, several records).
        let stream = tokio_boring::SslStreamBuilder::new(ssl, BufReader::with_capacity(socket_buf, tcp))
            .connect()
            .await
            .map_err(|e| anyhow!("TLS handshake with {}: {e}", spec.target))?;
        let group = stream.ssl().curve_name().unwrap_or("none");
        let mut groups = shared.key_exchange.lock().unwrap_or_else(|p| p.into_inner());
        *groups.entry(group.to_string()).or_default() += 1;
        drop(groups);
        Ok(stream)
    })
    .await
}

impl Conn {
    /// TCP connect and full TLS handshake, the certificate verified for the SNI name.
    async fn connect(shared: &Shared, deadline: Instant, buf: usize, socket_buf: usize) -> Result<Conn> {
        let tls = tls_connect(shared, deadline, socket_buf).await?;
        Ok(Conn {
            tls,
            buf: vec![0; buf],
            pos: 0,
            len: 0,
            received: 0,
            body_received: 0,
        })
    }

    /// Reads once more into the buffer; `Ok(0)` at the end of the stream.
    async fn read_more(&mut self, deadline: Instant) -> Result<usize> {
        if self.pos == self.len {
            self.pos = 0;
            self.len = 0;
        } else if self.len == self.buf.len() {
            self.buf.copy_within(self.pos..self.len, 0);
            self.len -= self.pos;
            self.pos = 0;
        }
        if self.len == self.buf.len() {
            bail!("response head longer than {MAX_HEAD} bytes");
        }
        let until = deadline.min(Instant::now() + STEP_TIMEOUT);
        let n = match tokio::time::timeout_at(until.into(), self.tls.read(&mut self.buf[self.len..])).await {
            Ok(r) => r.context("reading the response")?,
            Err(_) => return Err(timed_out(deadline, "reading the response")),
        };
        self.len += n;
        self.received += n as u64;
        Ok(n)
    }

    /// Sends `req` and reads the whole response, its body fed to `hash`. A status other
    /// than 200 is an error.
    async fn request(&mut self, req: &[u8], mut hash: Option<&mut Sha256>, deadline: Instant) -> Result<Response> {
        let tls = &mut self.tls;
        step(deadline, "sending the request", async {
            tls.write_all(req).await?;
            tls.flush().await?;
            Ok(())
        })
        .await
        .context("sending the request")?;

        // The head: up to the blank line. `scanned` is relative to `pos`, which a
        // compaction of the buffer moves.
        let mut scanned: usize = 0;
        let head_len = loop {
            let avail = &self.buf[self.pos..self.len];
            let from = scanned.saturating_sub(3);
            if let Some(i) = avail[from..].windows(4).position(|w| w == b"\r\n\r\n") {
                break from + i + 4;
            }
            scanned = avail.len();
            if self.read_more(deadline).await? == 0 {
                bail!("connection closed before the end of the response head");
            }
        };
        let head = parse_head(&self.buf[self.pos..self.pos + head_len])?;
        self.pos += head_len;

        let mut body = 0u64;
        loop {
            if let Some(total) = head.length {
                if body == total {
                    break;
                }
            }
            if self.pos == self.len && self.read_more(deadline).await? == 0 {
                match head.length {
                    Some(total) => bail!("connection closed after {body} of {total} body bytes"),
                    None => break,
                }
            }
            let avail = (self.len - self.pos) as u64;
            let take = head.length.map_or(avail, |t| avail.min(t - body)) as usize;
            if let Some(h) = hash.as_deref_mut() {
                h.update(&self.buf[self.pos..self.pos + take]);
            }
            self.pos += take;
            body += take as u64;
            self.body_received += take as u64;
        }
        Ok(Response {
            header_bytes: head_len as u64,
            body_bytes: body,
            close: head.close || head.length.is_none(),
        })
    }

    /// Reads until the peer closes, discarding what comes: false if `deadline` came first.
    /// A close without close_notify (a TCP FIN or reset) counts as closed.
    async fn wait_close(&mut self, deadline: Instant) -> bool {
        loop {
            match self.read_more(deadline).await {
                Ok(0) => return true,
                Ok(_) => self.pos = self.len,
                Err(e) => return !e.is::<Cut>(),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP/2: the h2 crate over the same TLS streams (ALPN h2 only).

/// An HTTP/2 connection: the handle requests are sent on; a task drives the connection.
struct H2Conn {
    send: h2::client::SendRequest<Bytes>,
    driver: JoinHandle<std::result::Result<(), h2::Error>>,
}

impl H2Conn {
    /// TCP connect, full TLS handshake with ALPN h2, the HTTP/2 preface and settings.
    async fn connect(shared: &Shared, deadline: Instant, socket_buf: usize) -> Result<H2Conn> {
        let tls = tls_connect(shared, deadline, socket_buf).await?;
        if tls.ssl().selected_alpn_protocol() != Some(b"h2".as_slice()) {
            bail!("the server did not select ALPN h2");
        }
        let (send, conn) = step(deadline, "HTTP/2 handshake", async {
            h2::client::handshake(tls).await.context("HTTP/2 handshake")
        })
        .await?;
        Ok(H2Conn {
            send,
            driver: tokio::spawn(conn),
        })
    }

    /// Sends `GET uri` (one stream) and reads the whole response: the body's bytes
    /// (HEADERS and frame headers are not counted). A status other than 200 is an error.
    async fn request(&mut self, uri: &http::Uri, deadline: Instant) -> Result<u64> {
        let send = &mut self.send;
        step(deadline, "the HTTP/2 request", async {
            let req = http::Request::get(uri.clone())
                .header("user-agent", "loupe-bench")
                .header("accept", "*/*")
                .body(())?;
            std::future::poll_fn(|cx| send.poll_ready(cx))
                .await
                .context("opening a stream")?;
            let (resp, _) = send.send_request(req, true).context("sending the request")?;
            let resp = resp.await.context("reading the response")?;
            if resp.status() != http::StatusCode::OK {
                bail!("HTTP status {}", resp.status());
            }
            let mut body = resp.into_body();
            let mut n = 0u64;
            while let Some(chunk) = body.data().await {
                let chunk = chunk.context("reading the response body")?;
                n += chunk.len() as u64;
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            anyhow::Ok(n)
        })
        .await
    }

    /// Still usable: the connection has not ended.
    fn usable(&self) -> bool {
        !self.driver.is_finished()
    }
}

/// A graceful GOAWAY (e.g. nginx's `keepalive_requests`, a million in the lab): the
/// client moves to a new connection, as the HTTP/1.1 one does after `Connection: close`.
fn is_graceful_goaway(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<h2::Error>())
        .any(|h| h.is_go_away() && h.reason() == Some(h2::Reason::NO_ERROR))
}

/// Requests over HTTP/2: as [`requests_task`], one request at a time on one connection
/// (a new one when the server ends it or after an error), so that CPU per request
/// compares with HTTP/1.1's.
async fn requests_h2_task(shared: Arc<Shared>, w: Window) -> TaskStats {
    let mut raw = new_hist();
    let mut s = TaskStats::default();
    let mut clock = RequestClock::new(&shared);
    let mut conn: Option<H2Conn> = None;
    while Instant::now() < w.end {
        if conn.as_ref().is_some_and(|c| !c.usable()) {
            conn = None;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match H2Conn::connect(&shared, w.end, SOCKET_BUF).await {
                Ok(c) => conn.insert(c),
                Err(e) if e.is::<Cut>() => break,
                Err(e) => {
                    shared.error(&e);
                    tokio::time::sleep(ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let t0 = clock.turn().await;
        if t0 >= w.end {
            break;
        }
        match c.request(&shared.uri, w.end).await {
            Ok(body) => {
                let done = Instant::now();
                if w.contains(done) {
                    s.completed += 1;
                    s.bytes += body;
                    record(&mut raw, done - t0);
                }
            }
            Err(e) if e.is::<Cut>() => break,
            Err(e) if is_graceful_goaway(&e) => conn = None,
            Err(e) => {
                conn = None;
                shared.error(&e);
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
    s.latency = clock.finish(raw);
    s
}

/// One idle HTTP/2 session (as [`idle_session`]): connect, one request, hold; at the end
/// the client's handle is dropped, and the connection sends its GOAWAY and closes.
async fn idle_session_h2(
    shared: Arc<Shared>,
    gate: Arc<Semaphore>,
    opened: mpsc::UnboundedSender<bool>,
    mut close: watch::Receiver<bool>,
) -> (bool, u64) {
    let permit = gate.acquire_owned().await;
    let deadline = Instant::now() + STEP_TIMEOUT;
    let open = async {
        let mut c = H2Conn::connect(&shared, deadline, SOCKET_BUF_IDLE).await?;
        let n = c.request(&shared.uri, deadline).await?;
        anyhow::Ok((c, n))
    };
    let res = open.await;
    drop(permit);
    let Some((c, received)) = report_opened(&shared, res, opened) else {
        return (false, 0);
    };
    let H2Conn { send, mut driver, .. } = c;
    tokio::select! {
        _ = async { drop(close.wait_for(|&v| v).await) } => {
            drop(send);
            if tokio::time::timeout(Duration::from_secs(2), &mut driver).await.is_err() {
                driver.abort();
            }
            (true, received)
        }
        r = &mut driver => {
            let what = match r {
                Ok(Ok(())) => "closed".to_string(),
                Ok(Err(e)) => format!("broke ({e})"),
                Err(e) => format!("lost its driver ({e})"),
            };
            shared.error(&anyhow!("the server {what} an idle HTTP/2 session while it was held"));
            (false, received)
        }
    }
}

/// What the generator needs of a response head.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    /// `Content-Length`; `None`: the body runs to the end of the connection.
    length: Option<u64>,
    close: bool,
}

fn parse_head(head: &[u8]) -> Result<Head> {
    let text = std::str::from_utf8(head).context("response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let mut parts = status.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1 response: {status:?}");
    }
    if code != "200" {
        bail!("HTTP status {status:?}");
    }
    let mut h = Head {
        length: None,
        close: version == "HTTP/1.0",
    };
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            bail!("bad header line {line:?}");
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            h.length = Some(value.parse().with_context(|| format!("bad Content-Length {value:?}"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") && !value.eq_ignore_ascii_case("identity") {
            bail!("Transfer-Encoding {value:?} is not supported (serve objects with a Content-Length)");
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                h.close = true;
            } else if v.contains("keep-alive") {
                h.close = false;
            }
        }
    }
    Ok(h)
}

/// User plus system CPU seconds of this process (all threads) so far.
/// CPU clocks read at one end of the measured interval.
struct CpuReading {
    client: f64,
    watched: Option<f64>,
    machine: Option<f64>,
}

impl CpuReading {
    fn now(watch: &[u32]) -> CpuReading {
        let watched = match watch {
            [] => None,
            pids => ProcessSample::read_many(pids).ok().map(|s| s.cpu_s),
        };
        CpuReading {
            client: cpu_seconds(),
            watched,
            machine: machine_busy_s().ok(),
        }
    }

    /// Fills the result's CPU figures with what was used from `start` to `self`.
    fn record_since(&self, start: &CpuReading, r: &mut LoadResult) {
        let used = |end: Option<f64>, begin: Option<f64>| Some((end? - begin?).max(0.0));
        r.client_cpu_s = self.client - start.client;
        r.watched_cpu_s = used(self.watched, start.watched);
        r.machine_cpu_s = used(self.machine, start.machine);
    }
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Raises RLIMIT_NOFILE to at least `need` (the hard limit too when allowed, as root).
fn raise_nofile(need: u64) -> Result<()> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct they are given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if rl.rlim_cur >= need {
        return Ok(());
    }
    let want = libc::rlimit {
        rlim_cur: need,
        rlim_max: rl.rlim_max.max(need),
    };
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
        return Ok(());
    }
    if rl.rlim_max >= need {
        let soft = libc::rlimit {
            rlim_cur: need,
            rlim_max: rl.rlim_max,
        };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) } == 0 {
            return Ok(());
        }
    }
    bail!(
        "this run needs {need} file descriptors and RLIMIT_NOFILE allows {} (hard {}); raise it",
        rl.rlim_cur,
        rl.rlim_max
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("8000").unwrap(), 8000.0);
        assert_eq!(parse_rate("2.5").unwrap(), 2.5);
        for bad in ["0", "-1", "inf", "NaN", "fast"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn response_heads() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 1024\r\n\r\n").unwrap();
        assert_eq!(
            h,
            Head {
                length: Some(1024),
                close: false
            }
        );
        let h = parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nConnection: close\r\n\r\n").unwrap();
        assert!(h.close);
        assert_eq!(h.length, Some(5));
        let e = parse_head(b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\n").unwrap_err();
        assert!(format!("{e}").contains("404"), "{e}");
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }

    #[test]
    fn result_round_trips_as_json() {
        let r = LoadResult {
            completed: 3,
            latency_us: Some(Latency::default()),
            ..LoadResult::default()
        };
        let back: LoadResult = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
