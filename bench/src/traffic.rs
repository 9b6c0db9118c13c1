//! Wire traffic: a client and a server that push random bytes both ways over TCP and
//! record SHA-256 hashes of everything they sent and received, so that two reports
//! prove (or disprove) that the path between them delivered every byte intact.
//!
//! Protocol, per connection: the client sends a fixed [`Header`] announcing how many
//! bytes it will send and how many it wants back, then its payload. In duplex mode both
//! sides send at the same time; in half-close mode the server reads to EOF first and
//! only then replies. Each side half-closes (`shutdown(Write)`) after its last byte and
//! reads until EOF, so every byte is accounted for and connections end with FINs.
//!
//! Every run is bounded: an overall deadline plus an idle limit per connection. Socket
//! timeouts are short ticks so blocked threads notice the deadline.

use std::fs::OpenOptions;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bytes of the per-connection header.
pub const HEADER_LEN: usize = 40;
const MAGIC: [u8; 4] = *b"LPWB";
const VERSION: u8 = 1;
/// Payload is generated, hashed and written in chunks of this size.
const CHUNK: usize = 64 * 1024;
/// Socket read/write timeout: how often a blocked thread rechecks the deadline.
const TICK: Duration = Duration::from_millis(200);
/// Connection threads need little stack: buffers live on the heap.
const CONN_STACK: usize = 256 * 1024;
const LISTEN_BACKLOG: libc::c_int = 1024;

/// How the two directions of a connection are ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Both sides send at once.
    Duplex,
    /// The server reads until the client's FIN, then replies.
    HalfClose,
}

/// Which end wrote a report line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Client,
    Server,
}

/// The header a client sends first on every connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Random per client run, so ids from different runs never collide.
    pub run: u64,
    /// Connection index within the run.
    pub index: u32,
    pub mode: Mode,
    /// Bytes the client sends after the header.
    pub client_bytes: u64,
    /// Bytes the server must send back.
    pub reply_bytes: u64,
}

impl Header {
    /// The connection id used to match client and server reports.
    pub fn id(&self) -> String {
        format!("{:016x}-{}", self.run, self.index)
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = match self.mode {
            Mode::Duplex => 0,
            Mode::HalfClose => 1,
        };
        b[8..16].copy_from_slice(&self.run.to_be_bytes());
        b[16..20].copy_from_slice(&self.index.to_be_bytes());
        b[24..32].copy_from_slice(&self.client_bytes.to_be_bytes());
        b[32..40].copy_from_slice(&self.reply_bytes.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header> {
        if b[0..4] != MAGIC {
            bail!("bad magic {:02x?}: not a loupe-bench wire client", &b[0..4]);
        }
        if b[4] != VERSION {
            bail!("unsupported wire protocol version {}", b[4]);
        }
        let mode = match b[5] {
            0 => Mode::Duplex,
            1 => Mode::HalfClose,
            m => bail!("unknown mode {m}"),
        };
        let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Ok(Header {
            run: u64_at(8),
            index: u32::from_be_bytes(b[16..20].try_into().expect("4 bytes")),
            mode,
            client_bytes: u64_at(24),
            reply_bytes: u64_at(32),
        })
    }
}

/// One JSON line per connection, written by both ends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnReport {
    pub role: Role,
    /// `run-index`; `"unknown"` if the server never got a full header.
    pub id: String,
    pub mode: Option<Mode>,
    pub local: Option<String>,
    pub peer: Option<String>,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub expected_sent_bytes: u64,
    pub expected_received_bytes: u64,
    /// SHA-256 (hex) of exactly the payload bytes written, header excluded.
    pub sent_sha256: String,
    /// SHA-256 (hex) of exactly the payload bytes read, header excluded.
    pub received_sha256: String,
    pub elapsed_secs: f64,
    pub error: Option<String>,
}

impl ConnReport {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// Reads a report file written by either end (one JSON object per line).
pub fn read_report(path: &Path) -> Result<Vec<ConnReport>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading report {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}: not a connection report", path.display(), i + 1))
        })
        .collect()
}

/// What matched when comparing client and server reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comparison {
    pub connections: usize,
    pub client_to_server_bytes: u64,
    pub server_to_client_bytes: u64,
}

/// Everything that did not match, one sentence per problem.
#[derive(Clone, Debug)]
pub struct ReportMismatch {
    pub problems: Vec<String>,
}

impl std::fmt::Display for ReportMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} problem(s) comparing client and server reports:",
            self.problems.len()
        )?;
        for p in self.problems.iter().take(50) {
            writeln!(f, "  - {p}")?;
        }
        if self.problems.len() > 50 {
            writeln!(f, "  … and {} more", self.problems.len() - 50)?;
        }
        Ok(())
    }
}

impl std::error::Error for ReportMismatch {}

/// Matches client and server reports by connection id and checks that each direction
/// arrived whole: the client's sent hash and count equal the server's received ones,
/// and the other way round. Errors on either side, unmatched or duplicate ids are
/// problems too.
pub fn compare_reports(
    client: &[ConnReport],
    server: &[ConnReport],
) -> std::result::Result<Comparison, ReportMismatch> {
    use std::collections::HashMap;
    let mut problems = Vec::new();
    let mut by_id: HashMap<&str, &ConnReport> = HashMap::new();
    for s in server {
        if let Some(e) = &s.error {
            problems.push(format!("server conn {} (peer {:?}): {e}", s.id, s.peer));
        }
        if by_id.insert(s.id.as_str(), s).is_some() {
            problems.push(format!("server reports conn {} more than once", s.id));
        }
    }
    let mut cmp = Comparison {
        connections: 0,
        client_to_server_bytes: 0,
        server_to_client_bytes: 0,
    };
    for c in client {
        if let Some(e) = &c.error {
            problems.push(format!("client conn {}: {e}", c.id));
        }
        let Some(s) = by_id.remove(c.id.as_str()) else {
            problems.push(format!("client conn {}: no server report with that id", c.id));
            continue;
        };
        let mut good = true;
        if c.sent_bytes != s.received_bytes || c.sent_sha256 != s.received_sha256 {
            good = false;
            problems.push(format!(
                "conn {}: client→server differs: client sent {} bytes sha256 {}, server received {} bytes sha256 {}",
                c.id, c.sent_bytes, c.sent_sha256, s.received_bytes, s.received_sha256
            ));
        }
        if s.sent_bytes != c.received_bytes || s.sent_sha256 != c.received_sha256 {
            good = false;
            problems.push(format!(
                "conn {}: server→client differs: server sent {} bytes sha256 {}, client received {} bytes sha256 {}",
                c.id, s.sent_bytes, s.sent_sha256, c.received_bytes, c.received_sha256
            ));
        }
        if c.expected_sent_bytes != c.sent_bytes || c.expected_received_bytes != c.received_bytes {
            good = false;
            problems.push(format!(
                "conn {}: client moved {}/{} bytes, expected {}/{} (sent/received)",
                c.id, c.sent_bytes, c.received_bytes, c.expected_sent_bytes, c.expected_received_bytes
            ));
        }
        if good && c.ok() && s.ok() {
            cmp.connections += 1;
            cmp.client_to_server_bytes += c.sent_bytes;
            cmp.server_to_client_bytes += s.sent_bytes;
        }
    }
    let mut extra: Vec<&str> = by_id.into_keys().collect();
    extra.sort_unstable();
    for id in extra {
        problems.push(format!("server conn {id}: no client report with that id"));
    }
    if problems.is_empty() {
        Ok(cmp)
    } else {
        Err(ReportMismatch { problems })
    }
}

/// Where report lines go: a file (appended) or stdout.
pub struct ReportSink {
    out: Mutex<Box<dyn Write + Send>>,
}

impl ReportSink {
    pub fn open(path: Option<&Path>) -> Result<ReportSink> {
        let out: Box<dyn Write + Send> = match path {
            Some(p) => Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("opening report {}", p.display()))?,
            ),
            None => Box::new(io::stdout()),
        };
        Ok(ReportSink { out: Mutex::new(out) })
    }

    /// Writes and flushes one line, so a killed process loses no finished connection.
    pub fn write(&self, r: &ConnReport) {
        let line = serde_json::to_string(r).expect("report serializes");
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = writeln!(out, "{line}").and_then(|_| out.flush()) {
            eprintln!("loupe-bench: writing report failed: {e}");
        }
    }
}

/// Deadline and idle bookkeeping shared by the two directions of one connection.
struct ConnClock {
    start: Instant,
    deadline: Instant,
    idle: Duration,
    last_progress_ms: AtomicU64,
}

impl ConnClock {
    fn new(deadline: Instant, idle: Duration) -> ConnClock {
        ConnClock {
            start: Instant::now(),
            deadline,
            idle,
            last_progress_ms: AtomicU64::new(0),
        }
    }

    fn progress(&self) {
        self.last_progress_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Called whenever a socket call timed out: decides whether to keep waiting.
    fn check(&self) -> io::Result<()> {
        let now = Instant::now();
        if now >= self.deadline {
            return Err(io::Error::new(ErrorKind::TimedOut, "run deadline reached"));
        }
        let last = Duration::from_millis(self.last_progress_ms.load(Ordering::Relaxed));
        let idle_for = now.duration_since(self.start).saturating_sub(last);
        if idle_for > self.idle {
            return Err(io::Error::new(
                ErrorKind::TimedOut,
                format!("no progress in either direction for {:.1}s", idle_for.as_secs_f64()),
            ));
        }
        Ok(())
    }
}

fn retryable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

/// Writes all of `buf`; returns how much was written before any error.
fn write_all_bounded(mut s: &TcpStream, buf: &[u8], clock: &ConnClock) -> (usize, Option<io::Error>) {
    let mut done = 0;
    while done < buf.len() {
        match s.write(&buf[done..]) {
            Ok(0) => return (done, Some(io::Error::new(ErrorKind::WriteZero, "peer stopped reading"))),
            Ok(n) => {
                done += n;
                clock.progress();
            }
            Err(e) if retryable(&e) => {
                if let Err(e) = clock.check() {
                    return (done, Some(e));
                }
            }
            Err(e) => return (done, Some(e)),
        }
    }
    (done, None)
}

fn read_exact_bounded(mut s: &TcpStream, buf: &mut [u8], clock: &ConnClock) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match s.read(&mut buf[done..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!("connection closed after {done} of {} header bytes", buf.len()),
                ))
            }
            Ok(n) => {
                done += n;
                clock.progress();
            }
            Err(e) if retryable(&e) => clock.check()?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Outcome of one direction.
struct Leg {
    bytes: u64,
    sha256: String,
    error: Option<String>,
}

/// Sends `n` pseudo-random bytes seeded with `seed`, hashing exactly what was written,
/// then half-closes.
fn send_payload(s: &TcpStream, n: u64, seed: u64, clock: &ConnClock) -> Leg {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut buf = vec![0u8; CHUNK];
    let mut hasher = Sha256::new();
    let mut sent = 0u64;
    let mut error = None;
    while sent < n {
        let len = (n - sent).min(CHUNK as u64) as usize;
        rng.fill_bytes(&mut buf[..len]);
        let (w, e) = write_all_bounded(s, &buf[..len], clock);
        hasher.update(&buf[..w]);
        sent += w as u64;
        if let Some(e) = e {
            error = Some(format!("send failed after {sent} of {n} bytes: {e}"));
            break;
        }
    }
    if error.is_none() {
        if let Err(e) = s.shutdown(Shutdown::Write) {
            error = Some(format!("shutdown(write) failed: {e}"));
        }
    }
    Leg {
        bytes: sent,
        sha256: hex(&hasher.finalize()),
        error,
    }
}

/// Reads until EOF, hashing everything.
fn receive_all(mut s: &TcpStream, clock: &ConnClock) -> Leg {
    let mut buf = vec![0u8; CHUNK];
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    let mut error = None;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                received += n as u64;
                clock.progress();
            }
            Err(e) if retryable(&e) => {
                if let Err(e) = clock.check() {
                    error = Some(format!("receive failed after {received} bytes: {e}"));
                    break;
                }
            }
            Err(e) => {
                error = Some(format!("receive failed after {received} bytes: {e}"));
                break;
            }
        }
    }
    Leg {
        bytes: received,
        sha256: hex(&hasher.finalize()),
        error,
    }
}

/// Runs both directions on one stream: the send leg on a second thread while this one
/// reads (`&TcpStream` is both `Read` and `Write`). With `reply_after_eof` the send
/// starts only after the peer's FIN.
fn run_legs(s: &TcpStream, send_bytes: u64, clock: &ConnClock, reply_after_eof: bool) -> (Leg, Leg) {
    let seed: u64 = rand::rng().random();
    if reply_after_eof {
        let recv = receive_all(s, clock);
        let send = if recv.error.is_none() {
            send_payload(s, send_bytes, seed, clock)
        } else {
            Leg {
                bytes: 0,
                sha256: hex(&Sha256::digest([])),
                error: Some("not sent: receiving failed".into()),
            }
        };
        return (send, recv);
    }
    thread::scope(|sc| {
        let sender = thread::Builder::new()
            .name("wire-send".into())
            .stack_size(CONN_STACK)
            .spawn_scoped(sc, || send_payload(s, send_bytes, seed, clock));
        let recv = receive_all(s, clock);
        let send = match sender {
            Ok(h) => h.join().unwrap_or_else(|_| Leg {
                bytes: 0,
                sha256: String::new(),
                error: Some("sender thread panicked".into()),
            }),
            Err(e) => Leg {
                bytes: 0,
                sha256: String::new(),
                error: Some(format!("could not start sender thread: {e}")),
            },
        };
        (send, recv)
    })
}

fn set_ticks(s: &TcpStream) -> io::Result<()> {
    s.set_read_timeout(Some(TICK))?;
    s.set_write_timeout(Some(TICK))
}

fn first_error(errors: impl IntoIterator<Item = Option<String>>) -> Option<String> {
    let all: Vec<String> = errors.into_iter().flatten().collect();
    if all.is_empty() {
        None
    } else {
        Some(all.join("; "))
    }
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

// ---------------------------------------------------------------------------------
// Server

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    pub report: Option<PathBuf>,
    /// Stop accepting after this many connections and exit once they finish.
    pub max_conns: Option<usize>,
    /// Overall lifetime of the server.
    pub timeout: Duration,
    /// A connection with no progress for this long fails.
    pub idle: Duration,
}

#[derive(Clone, Debug, Default)]
pub struct ServerSummary {
    pub accepted: usize,
    pub failed: usize,
    /// `max_conns` was set and not reached before the timeout.
    pub incomplete: bool,
}

/// A listening socket with a deep backlog (std uses 128, too few for a burst of
/// hundreds of connects) and SO_REUSEADDR so a restarted server can rebind at once.
pub fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let domain = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket syscalls on a descriptor we own; the sockaddr built below
    // matches the length passed.
    unsafe {
        let fd = libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let listener = TcpListener::from_raw_fd(fd);
        let one: libc::c_int = 1;
        if libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of_val(&one) as libc::socklen_t,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        let (sa, len) = sockaddr_of(addr);
        if libc::bind(fd, &sa as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::listen(fd, LISTEN_BACKLOG) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(listener)
    }
}

fn sockaddr_of(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// Serves wire connections until `max_conns` have finished or the timeout passes.
/// `on_ready` is called once all listeners are bound.
pub fn run_server(cfg: &ServerConfig, on_ready: impl FnOnce(&[SocketAddr])) -> Result<ServerSummary> {
    if cfg.listen.is_empty() {
        bail!("no --listen address");
    }
    let deadline = Instant::now() + cfg.timeout;
    let listeners = cfg
        .listen
        .iter()
        .map(|a| {
            let l = bind_listener(*a).with_context(|| format!("listening on {a}"))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .collect::<Result<Vec<_>>>()?;
    let bound: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr()).collect::<io::Result<_>>()?;
    let sink = Arc::new(ReportSink::open(cfg.report.as_deref())?);
    let failed = Arc::new(AtomicUsize::new(0));
    on_ready(&bound);

    let mut handles = Vec::new();
    let mut accepted = 0usize;
    let mut pollfds: Vec<libc::pollfd> = listeners
        .iter()
        .map(|l| libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let want = cfg.max_conns.unwrap_or(usize::MAX);
    'accept: while accepted < want {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let wait_ms = deadline.duration_since(now).as_millis().min(100) as libc::c_int;
        // SAFETY: pollfds is a valid array of pollfd for its length.
        let n = unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, wait_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("poll on listeners");
        }
        for l in &listeners {
            loop {
                match l.accept() {
                    Ok((stream, peer)) => {
                        accepted += 1;
                        let sink = Arc::clone(&sink);
                        let failed = Arc::clone(&failed);
                        let idle = cfg.idle;
                        let h = thread::Builder::new()
                            .name("wire-conn".into())
                            .stack_size(CONN_STACK)
                            .spawn(move || {
                                let r = serve_conn(stream, peer, deadline, idle);
                                if !r.ok() {
                                    failed.fetch_add(1, Ordering::Relaxed);
                                }
                                sink.write(&r);
                            })
                            .context("spawning a connection thread")?;
                        handles.push(h);
                        if accepted >= want {
                            break 'accept;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    // A connection reset before accept: not our problem.
                    Err(e) if e.kind() == ErrorKind::ConnectionAborted => continue,
                    Err(e) => return Err(e).context("accept"),
                }
            }
        }
    }
    drop(listeners);
    // Connection threads stop by themselves at the deadline at the latest.
    for h in handles {
        if h.join().is_err() {
            failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(ServerSummary {
        accepted,
        failed: failed.load(Ordering::Relaxed),
        incomplete: cfg.max_conns.is_some_and(|m| accepted < m),
    })
}

fn serve_conn(stream: TcpStream, peer: SocketAddr, deadline: Instant, idle: Duration) -> ConnReport {
    let clock = ConnClock::new(deadline, idle);
    let mut report = ConnReport {
        role: Role::Server,
        id: "unknown".into(),
        mode: None,
        local: stream.local_addr().ok().map(|a| a.to_string()),
        peer: Some(peer.to_string()),
        sent_bytes: 0,
        received_bytes: 0,
        expected_sent_bytes: 0,
        expected_received_bytes: 0,
        sent_sha256: String::new(),
        received_sha256: String::new(),
        elapsed_secs: 0.0,
        error: None,
    };
    // The listener is non-blocking; accepted sockets must not be.
    let setup = stream.set_nonblocking(false).and_then(|_| set_ticks(&stream));
    if let Err(e) = setup {
        report.error = Some(format!("socket setup: {e}"));
        return report;
    }
    let mut hb = [0u8; HEADER_LEN];
    let header = read_exact_bounded(&stream, &mut hb, &clock)
        .map_err(|e| format!("reading header: {e}"))
        .and_then(|_| Header::decode(&hb).map_err(|e| format!("bad header: {e}")));
    let header = match header {
        Ok(h) => h,
        Err(e) => {
            report.error = Some(e);
            report.elapsed_secs = clock.start.elapsed().as_secs_f64();
            return report;
        }
    };
    report.id = header.id();
    report.mode = Some(header.mode);
    report.expected_sent_bytes = header.reply_bytes;
    report.expected_received_bytes = header.client_bytes;
    let (send, recv) = run_legs(&stream, header.reply_bytes, &clock, header.mode == Mode::HalfClose);
    report.sent_bytes = send.bytes;
    report.sent_sha256 = send.sha256;
    report.received_bytes = recv.bytes;
    report.received_sha256 = recv.sha256;
    let count_err = (recv.error.is_none() && recv.bytes != header.client_bytes).then(|| {
        format!(
            "received {} bytes, client announced {}",
            recv.bytes, header.client_bytes
        )
    });
    report.error = first_error([recv.error, send.error, count_err]);
    report.elapsed_secs = clock.start.elapsed().as_secs_f64();
    report
}

// ---------------------------------------------------------------------------------
// Client

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Connections are spread round-robin over these targets (`host:port`).
    pub connect: Vec<String>,
    pub bytes: u64,
    pub reply_bytes: u64,
    pub connections: usize,
    pub mode: Mode,
    pub report: Option<PathBuf>,
    pub timeout: Duration,
    pub idle: Duration,
}

#[derive(Clone, Debug)]
pub struct ClientSummary {
    pub reports: Vec<ConnReport>,
    pub elapsed: Duration,
}

impl ClientSummary {
    pub fn failed(&self) -> usize {
        self.reports.iter().filter(|r| !r.ok()).count()
    }

    pub fn bytes_moved(&self) -> u64 {
        self.reports.iter().map(|r| r.sent_bytes + r.received_bytes).sum()
    }

    /// Goodput over the whole run, both directions together.
    pub fn gbit_per_sec(&self) -> f64 {
        self.bytes_moved() as f64 * 8.0 / self.elapsed.as_secs_f64().max(1e-9) / 1e9
    }
}

/// Opens `connections` connections at once, each with its own random payload, and
/// reports one line per connection.
pub fn run_client(cfg: &ClientConfig) -> Result<ClientSummary> {
    if cfg.connect.is_empty() {
        bail!("no --connect address");
    }
    if cfg.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let targets: Vec<SocketAddr> = cfg
        .connect
        .iter()
        .map(|t| {
            t.to_socket_addrs()
                .with_context(|| format!("resolving {t}"))?
                .next()
                .with_context(|| format!("{t} resolves to no address"))
        })
        .collect::<Result<_>>()?;
    let sink = ReportSink::open(cfg.report.as_deref())?;
    let run: u64 = rand::rng().random();
    let start = Instant::now();
    let deadline = start + cfg.timeout;
    let reports: Vec<ConnReport> = thread::scope(|sc| {
        let handles: Vec<_> = (0..cfg.connections)
            .map(|i| {
                let header = Header {
                    run,
                    index: i as u32,
                    mode: cfg.mode,
                    client_bytes: cfg.bytes,
                    reply_bytes: cfg.reply_bytes,
                };
                let target = targets[i % targets.len()];
                let sink = &sink;
                let idle = cfg.idle;
                thread::Builder::new()
                    .name("wire-client".into())
                    .stack_size(CONN_STACK)
                    .spawn_scoped(sc, move || {
                        let r = client_conn(target, header, deadline, idle);
                        sink.write(&r);
                        r
                    })
                    .map_err(|e| (header, e))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h.join().expect("client connection thread panicked"),
                Err((header, e)) => {
                    let mut r = empty_client_report(&header);
                    r.error = Some(format!("could not start a thread: {e}"));
                    sink.write(&r);
                    r
                }
            })
            .collect()
    });
    Ok(ClientSummary {
        reports,
        elapsed: start.elapsed(),
    })
}

fn empty_client_report(h: &Header) -> ConnReport {
    ConnReport {
        role: Role::Client,
        id: h.id(),
        mode: Some(h.mode),
        local: None,
        peer: None,
        sent_bytes: 0,
        received_bytes: 0,
        expected_sent_bytes: h.client_bytes,
        expected_received_bytes: h.reply_bytes,
        sent_sha256: String::new(),
        received_sha256: String::new(),
        elapsed_secs: 0.0,
        error: None,
    }
}

fn client_conn(target: SocketAddr, header: Header, deadline: Instant, idle: Duration) -> ConnReport {
    let clock = ConnClock::new(deadline, idle);
    let mut report = empty_client_report(&header);
    report.peer = Some(target.to_string());
    let connect_budget = deadline
        .saturating_duration_since(Instant::now())
        .min(idle)
        .max(Duration::from_millis(1));
    let stream = match TcpStream::connect_timeout(&target, connect_budget) {
        Ok(s) => s,
        Err(e) => {
            report.error = Some(format!("connect to {target}: {e}"));
            report.elapsed_secs = clock.start.elapsed().as_secs_f64();
            return report;
        }
    };
    clock.progress();
    report.local = stream.local_addr().ok().map(|a| a.to_string());
    if let Err(e) = set_ticks(&stream) {
        report.error = Some(format!("socket setup: {e}"));
        return report;
    }
    let (w, e) = write_all_bounded(&stream, &header.encode(), &clock);
    if let Some(e) = e {
        report.error = Some(format!("sending header ({w} of {HEADER_LEN} bytes written): {e}"));
        report.elapsed_secs = clock.start.elapsed().as_secs_f64();
        return report;
    }
    // The client always sends and receives at once; in half-close mode the server
    // simply stays silent until our FIN.
    let (send, recv) = run_legs(&stream, header.client_bytes, &clock, false);
    report.sent_bytes = send.bytes;
    report.sent_sha256 = send.sha256;
    report.received_bytes = recv.bytes;
    report.received_sha256 = recv.sha256;
    let count_err = (recv.error.is_none() && recv.bytes != header.reply_bytes)
        .then(|| format!("received {} bytes, asked for {}", recv.bytes, header.reply_bytes));
    report.error = first_error([send.error, recv.error, count_err]);
    report.elapsed_secs = clock.start.elapsed().as_secs_f64();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = Header {
            run: 0x0123_4567_89ab_cdef,
            index: 199,
            mode: Mode::HalfClose,
            client_bytes: 256 << 20,
            reply_bytes: 7,
        };
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
        assert_eq!(h.id(), "0123456789abcdef-199");
    }

    #[test]
    fn header_rejects_garbage() {
        let mut b = [0u8; HEADER_LEN];
        b[..4].copy_from_slice(b"\x16\x03\x01\x02");
        assert!(Header::decode(&b).is_err());
        let mut ok = Header {
            run: 1,
            index: 0,
            mode: Mode::Duplex,
            client_bytes: 0,
            reply_bytes: 0,
        }
        .encode();
        ok[5] = 9;
        assert!(Header::decode(&ok).is_err());
    }

    fn loopback_round(mode: Mode, conns: usize, bytes: u64, reply: u64) -> (ClientSummary, Vec<ConnReport>) {
        let dir = std::env::temp_dir().join(format!("loupe-bench-ut-{}-{conns}-{bytes}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let srv_report = dir.join("server.jsonl");
        let _ = std::fs::remove_file(&srv_report);
        let (tx, rx) = std::sync::mpsc::channel();
        let cfg = ServerConfig {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            report: Some(srv_report.clone()),
            max_conns: Some(conns),
            timeout: Duration::from_secs(60),
            idle: Duration::from_secs(20),
        };
        let server = thread::spawn(move || run_server(&cfg, |a| tx.send(a[0]).unwrap()).unwrap());
        let addr = rx.recv().unwrap();
        let client = run_client(&ClientConfig {
            connect: vec![addr.to_string()],
            bytes,
            reply_bytes: reply,
            connections: conns,
            mode,
            report: Some(dir.join("client.jsonl")),
            timeout: Duration::from_secs(60),
            idle: Duration::from_secs(20),
        })
        .unwrap();
        let summary = server.join().unwrap();
        assert_eq!(summary.accepted, conns);
        assert_eq!(summary.failed, 0);
        let server_reports = read_report(&srv_report).unwrap();
        assert_eq!(read_report(&dir.join("client.jsonl")).unwrap().len(), conns);
        let _ = std::fs::remove_dir_all(&dir);
        (client, server_reports)
    }

    #[test]
    fn loopback_duplex_large_and_uneven() {
        let (client, server) = loopback_round(Mode::Duplex, 2, 24 << 20, 3 << 20 | 17);
        assert_eq!(client.failed(), 0, "{:?}", client.reports);
        let cmp = compare_reports(&client.reports, &server).unwrap();
        assert_eq!(cmp.connections, 2);
        assert_eq!(cmp.client_to_server_bytes, 2 * (24 << 20));
        assert_eq!(cmp.server_to_client_bytes, 2 * ((3 << 20) | 17));
    }

    #[test]
    fn loopback_half_close_and_zero_bytes() {
        let (client, server) = loopback_round(Mode::HalfClose, 3, 1 << 20, 0);
        assert_eq!(client.failed(), 0, "{:?}", client.reports);
        compare_reports(&client.reports, &server).unwrap();
        assert!(server.iter().all(|r| r.mode == Some(Mode::HalfClose)));
    }

    #[test]
    fn loopback_many_connections() {
        let (client, server) = loopback_round(Mode::Duplex, 64, 64 << 10, 96 << 10);
        assert_eq!(client.failed(), 0);
        assert_eq!(compare_reports(&client.reports, &server).unwrap().connections, 64);
    }

    #[test]
    fn compare_flags_corruption_and_strays() {
        let base = ConnReport {
            role: Role::Client,
            id: "a-0".into(),
            mode: Some(Mode::Duplex),
            local: None,
            peer: None,
            sent_bytes: 10,
            received_bytes: 20,
            expected_sent_bytes: 10,
            expected_received_bytes: 20,
            sent_sha256: "c2s".into(),
            received_sha256: "s2c".into(),
            elapsed_secs: 0.1,
            error: None,
        };
        let server = ConnReport {
            role: Role::Server,
            sent_bytes: 20,
            received_bytes: 10,
            expected_sent_bytes: 20,
            expected_received_bytes: 10,
            sent_sha256: "s2c".into(),
            received_sha256: "c2s".into(),
            ..base.clone()
        };
        assert!(compare_reports(std::slice::from_ref(&base), std::slice::from_ref(&server)).is_ok());

        let mut bad = server.clone();
        bad.received_sha256 = "flipped".into();
        let err = compare_reports(std::slice::from_ref(&base), &[bad]).unwrap_err();
        assert!(err.to_string().contains("client→server differs"), "{err}");

        let mut stray = server.clone();
        stray.id = "b-1".into();
        let err = compare_reports(std::slice::from_ref(&base), &[server.clone(), stray]).unwrap_err();
        assert!(err.to_string().contains("b-1: no client report"), "{err}");

        let err = compare_reports(&[base], &[]).unwrap_err();
        assert!(err.to_string().contains("no server report"), "{err}");
    }
}
