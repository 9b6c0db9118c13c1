//! `loupe-bench inspect-micro`: what HTTP inspection costs per transaction, in one
//! process, without a lab: the engine (`HttpInspector`) and the EVE line the worker writes
//! for each transaction, over the plaintext of the bench's own keep-alive exchanges
//! (HTTP/1.1 and HTTP/2, as `requests` and `requests-h2` send them and nginx answers).
//!
//! The lab's figure (loupe-inspect − loupe-decrypt per request) mixes this cost with its
//! effect on the rest of the worker and moves by about 3 CPU-µs between runs; this one
//! is the engine's own, repeatable to a few percent, for finding and checking changes.
//! Two measurements per protocol: `hot`, one session replayed again and again (everything
//! in cache), and `interleaved`, many sessions advanced one transaction each in turn, so
//! that each transaction finds its session's state out of the core's caches as a worker
//! serving thousands of connections does.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use loupe_control::config::Config;
use loupe_dataplane::eve::{self, EveFlow, HttpLoupeFacts};
use loupe_dataplane::inspect::engine::{recycle_finished, HttpInspector, InspectSettings};
use loupe_dataplane::inspect::hpack::{HeaderField, HpackEncoder};
use loupe_dataplane::inspect::url_rules::UrlRules;
use loupe_dataplane::inspect::{Inspector, Pass, Relay, SessionEnd};
use loupe_dataplane::tls::record::Action;

use crate::runner::INSPECT_CONFIG;

/// Which way a recorded chunk of plaintext went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ClientToServer,
    ServerToClient,
}

/// One keep-alive connection's plaintext, chunk by chunk as it crossed, cut into
/// transactions: `transactions[i]` holds the chunks from the start of request `i` up to
/// the end of its response (for HTTP/2 the first also holds the preface and settings).
#[derive(Debug, Clone)]
pub struct Exchange {
    pub alpn: &'static str,
    /// Requests, each answered: the transactions the engine must finish.
    requests: usize,
    /// The chunks in steps a session is fed one at a time: a transaction each (for
    /// HTTP/2 the connection's preface and settings may come as a step of their own).
    steps: Vec<Vec<(Direction, Vec<u8>)>>,
}

impl Exchange {
    pub fn requests(&self) -> usize {
        self.requests
    }

    pub fn bytes(&self) -> usize {
        self.steps.iter().flatten().map(|(_, chunk)| chunk.len()).sum()
    }
}

/// Requests one connection of the bench carries per second (8,000/s over 64 connections):
/// the `Date` a server sends changes every this many responses.
const REQUESTS_PER_SECOND_PER_CONNECTION: usize = 125;

/// The `Date` of the `n`th response on a connection.
fn lab_date(n: usize) -> String {
    let second = n / REQUESTS_PER_SECOND_PER_CONNECTION;
    format!("Mon, 07 Dec 2026 04:{:02}:{:02} GMT", (second / 60) % 60, second % 60)
}

/// The 1 KiB object's response head as nginx 1.22 sends it in the lab.
fn nginx_http1_head(body_len: usize, n: usize) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: {}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {body_len}\r\n\
         Last-Modified: Mon, 07 Dec 2026 03:58:12 GMT\r\nConnection: keep-alive\r\n\
         ETag: \"6934f9d4-400\"\r\nAccept-Ranges: bytes\r\n\r\n",
        lab_date(n)
    )
}

/// `count` HTTP/1.1 exchanges as `loupe-bench load --workload requests` makes them.
pub fn http1_exchange(count: usize) -> Exchange {
    let body = vec![b'x'; 1024];
    let steps = (0..count)
        .map(|i| {
            let request = b"GET /1k HTTP/1.1\r\nHost: server.lab\r\nUser-Agent: loupe-bench\r\nAccept: */*\r\n\r\n";
            let mut response = nginx_http1_head(body.len(), i).into_bytes();
            response.extend_from_slice(&body);
            vec![
                (Direction::ClientToServer, request.to_vec()),
                (Direction::ServerToClient, response),
            ]
        })
        .collect();
    Exchange {
        alpn: "http/1.1",
        requests: count,
        steps,
    }
}

/// `count` HTTP/2 exchanges on one connection, recorded between the `h2` crate's client
/// (as `requests-h2` sends them: one stream at a time, its HPACK encoder indexing as it
/// does against nginx) and a server that answers as nginx 1.22 does (see
/// [`nginx_response_block`]).
pub fn http2_exchange(count: usize) -> Result<Exchange> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(record_http2(count))
}

/// One HPACK string literal (RFC 7541 §5.2) of `text`, Huffman-coded when shorter, as
/// loupe's encoder writes it: taken from a "literal without indexing, new name" field
/// with a one-byte name.
fn hpack_string(text: &[u8]) -> Vec<u8> {
    let mut block = Vec::new();
    let field = HeaderField {
        name: b"x".to_vec(),
        value: text.to_vec(),
        sensitive: false,
    };
    HpackEncoder::new().encode(&[field], &mut block);
    assert_eq!(block[0], 0, "a literal field without indexing, new name");
    let name_len = usize::from(block[1] & 0x7f);
    block[2 + name_len..].to_vec()
}

/// The response head of the 1 KiB object as nginx 1.22's HTTP/2 module encodes it: `:status`
/// indexed; `server`, `date`, `content-type`, `content-length` and `last-modified` as
/// literals *with incremental indexing* (a static name, the value Huffman-coded), so every
/// response adds five entries to the client's dynamic table and a middlebox must decode
/// them all; other fields (`etag`, `accept-ranges`) as literals without indexing, new name.
fn nginx_response_block(date: &str) -> Vec<u8> {
    let mut block = vec![0x88];
    for (static_index, value) in [
        (54u8, "nginx/1.22.1"),
        (33, date),
        (31, "application/octet-stream"),
        (28, "1024"),
        (44, "Mon, 07 Dec 2026 03:58:12 GMT"),
    ] {
        block.push(0x40 | static_index);
        block.extend(hpack_string(value.as_bytes()));
    }
    for (name, value) in [("etag", "\"6934f9d4-400\""), ("accept-ranges", "bytes")] {
        block.push(0);
        block.extend(hpack_string(name.as_bytes()));
        block.extend(hpack_string(value.as_bytes()));
    }
    block
}

fn h2_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The server's side of the recording: its preface once the client's arrived, a SETTINGS
/// acknowledgement for each of the client's, and for each request (HEADERS ending the
/// stream) nginx's response head and the 1 KiB body in one DATA frame. What the server
/// writes for one batch of client bytes.
struct MiniServer {
    inbox: Vec<u8>,
    preface_seen: bool,
    answered: usize,
}

impl MiniServer {
    fn answer(&mut self, from_client: &[u8]) -> Result<Vec<u8>> {
        const SETTINGS: u8 = 0x4;
        const HEADERS: u8 = 0x1;
        const DATA: u8 = 0x0;
        const WINDOW_UPDATE: u8 = 0x8;
        let mut reply = Vec::new();
        self.inbox.extend_from_slice(from_client);
        if !self.preface_seen {
            if self.inbox.len() < H2_PREFACE.len() {
                return Ok(reply);
            }
            if !self.inbox.starts_with(H2_PREFACE) {
                bail!("the HTTP/2 client did not start with the preface");
            }
            self.inbox.drain(..H2_PREFACE.len());
            self.preface_seen = true;
            // nginx's: 128 concurrent streams, a 64 KiB initial window, a larger connection window.
            h2_frame(&mut reply, SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 128, 0, 4, 0, 1, 0, 0]);
            h2_frame(&mut reply, WINDOW_UPDATE, 0, 0, &0x7fff_0000u32.to_be_bytes());
        }
        while self.inbox.len() >= 9 {
            let len = usize::from(self.inbox[0]) << 16 | usize::from(self.inbox[1]) << 8 | usize::from(self.inbox[2]);
            if self.inbox.len() < 9 + len {
                break;
            }
            let (kind, flags) = (self.inbox[3], self.inbox[4]);
            let stream = u32::from_be_bytes([self.inbox[5], self.inbox[6], self.inbox[7], self.inbox[8]]) & 0x7fff_ffff;
            match kind {
                SETTINGS if flags & 1 == 0 => h2_frame(&mut reply, SETTINGS, 1, 0, &[]),
                HEADERS if flags & 1 != 0 => {
                    let block = nginx_response_block(&lab_date(self.answered));
                    h2_frame(&mut reply, HEADERS, 0x4, stream, &block);
                    h2_frame(&mut reply, DATA, 0x1, stream, &[b'x'; 1024]);
                    self.answered += 1;
                }
                _ => {}
            }
            self.inbox.drain(..9 + len);
        }
        Ok(reply)
    }
}

async fn record_http2(count: usize) -> Result<Exchange> {
    let (client_io, mut client_far) = tokio::io::duplex(1 << 20);
    let client = tokio::spawn(async move {
        let (send, conn) = h2::client::handshake(client_io).await?;
        let driver = tokio::spawn(conn);
        let mut send = send.ready().await?;
        for _ in 0..count {
            let request = http::Request::get("https://server.lab/1k")
                .header("user-agent", "loupe-bench")
                .header("accept", "*/*")
                .body(())?;
            let (response, _) = send.send_request(request, true)?;
            let mut body = response.await?.into_body();
            while let Some(chunk) = body.data().await {
                let chunk = chunk?;
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            // Marks the end of a transaction in the recording: the next request's bytes
            // come only after this one's response was read whole.
            send = send.ready().await?;
        }
        drop(send);
        driver.abort();
        anyhow::Ok(())
    });
    // What crosses is recorded, a step cut where the client speaks after the server did.
    let mut steps: Vec<Vec<(Direction, Vec<u8>)>> = vec![Vec::new()];
    let mut server = MiniServer {
        inbox: Vec::new(),
        preface_seen: false,
        answered: 0,
    };
    let mut up = vec![0u8; 1 << 16];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if Instant::now() > deadline {
            bail!("recording {count} HTTP/2 exchanges took over a minute");
        }
        let n = client_far.read(&mut up).await?;
        if n == 0 {
            break;
        }
        if steps
            .last()
            .is_some_and(|step| step.iter().any(|(d, _)| *d == Direction::ServerToClient))
        {
            steps.push(Vec::new());
        }
        let step = steps.last_mut().expect("one at least");
        step.push((Direction::ClientToServer, up[..n].to_vec()));
        let reply = server.answer(&up[..n])?;
        if !reply.is_empty() {
            client_far.write_all(&reply).await?;
            step.push((Direction::ServerToClient, reply));
        }
    }
    client.await.context("the HTTP/2 client task")??;
    if server.answered != count {
        bail!("{} of {count} HTTP/2 requests answered", server.answered);
    }
    // Window updates after the last response open a step nothing answers: left out.
    if steps
        .last()
        .is_some_and(|step| step.iter().all(|(d, _)| *d == Direction::ClientToServer))
    {
        steps.pop();
    }
    Ok(Exchange {
        alpn: "h2",
        requests: count,
        steps,
    })
}

/// What the worker does for one session: its engine and what it writes per transaction.
struct SessionUnderTest {
    engine: HttpInspector,
    to_server: Vec<u8>,
    to_client: Vec<u8>,
    flow: EveFlow,
    next: usize,
    transactions: u64,
}

impl SessionUnderTest {
    fn new(settings: &Arc<InspectSettings>, rules: &Arc<UrlRules>, alpn: &str, id: u64) -> Self {
        let mut engine = HttpInspector::new(Arc::clone(settings), Arc::clone(rules));
        engine.set_sni(Some("server.lab"));
        engine.established(Some(alpn));
        let client: SocketAddr = format!("198.18.0.1:{}", 10_000 + id % 50_000).parse().expect("address");
        SessionUnderTest {
            engine,
            to_server: Vec::new(),
            to_client: Vec::new(),
            flow: EveFlow {
                flow_id: id,
                session_id: id,
                client,
                server: "198.18.0.2:443".parse().expect("address"),
            },
            next: 0,
            transactions: 0,
        }
    }

    /// Feeds the next transaction's chunks and writes the EVE lines of what finished
    /// into `batch`. Returns false once the exchange is used up.
    fn step(&mut self, exchange: &Exchange, batch: &mut Vec<u8>) -> bool {
        let Some(chunks) = exchange.steps.get(self.next) else {
            return false;
        };
        self.next += 1;
        self.engine.set_now(SystemTime::now());
        let mut end = SessionEnd::Open;
        for (direction, chunk) in chunks {
            let mut relay = Relay {
                to_server: &mut self.to_server,
                to_client: &mut self.to_client,
                end_session: &mut end,
            };
            let pass = match direction {
                Direction::ClientToServer => self.engine.client_to_server(chunk, &mut relay),
                Direction::ServerToClient => self.engine.server_to_client(chunk, &mut relay),
            };
            // What the session would send on: taken bytes went to the queues.
            if pass == Pass::Taken {
                self.to_server.clear();
                self.to_client.clear();
            }
        }
        if self.engine.has_finished() {
            let finished = self.engine.take_finished();
            for done in &finished {
                let facts = HttpLoupeFacts::of(done, "default", Action::Decrypt);
                let at = done.end.unwrap_or_else(SystemTime::now);
                eve::http_event(at, &self.flow, &done.transaction, &facts).write_line(batch);
            }
            self.transactions += finished.len() as u64;
            recycle_finished(finished);
        }
        true
    }
}

/// The settings and URL rules of the bench's loupe-inspect mode.
fn inspect_policy() -> Result<(Arc<InspectSettings>, Arc<UrlRules>)> {
    let config = Config::parse(INSPECT_CONFIG, Path::new("loupe-inspect.toml"))
        .map_err(|e| anyhow::anyhow!("the bench's inspect configuration: {e}"))?;
    let rules = UrlRules::new(&config.url_rules, &[]).map_err(|e| anyhow::anyhow!("URL rules: {e}"))?;
    Ok((Arc::new(InspectSettings::default()), Arc::new(rules)))
}

#[derive(Debug, Clone, Serialize)]
pub struct InspectRun {
    pub protocol: &'static str,
    /// `hot` or `interleaved`.
    pub kind: &'static str,
    pub sessions: usize,
    pub transactions: u64,
    /// CPU time of this thread per transaction (engine and EVE line).
    pub ns_per_transaction: f64,
    pub eve_bytes_per_transaction: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct InspectMicroReport {
    pub seconds: f64,
    pub runs: Vec<InspectRun>,
}

#[derive(Debug, Clone)]
pub struct InspectMicroSpec {
    pub seconds: f64,
    /// Sessions advanced in turn in the interleaved measurement.
    pub sessions: usize,
    /// Transactions per recorded connection.
    pub transactions: usize,
    /// Only this protocol's measurements; `None`: both.
    pub protocol: Option<MicroProtocol>,
    /// Only this kind of measurement; `None`: both.
    pub kind: Option<MicroKind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MicroProtocol {
    Http1,
    Http2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MicroKind {
    Hot,
    Interleaved,
}

impl MicroKind {
    fn label(self) -> &'static str {
        match self {
            MicroKind::Hot => "hot",
            MicroKind::Interleaved => "interleaved",
        }
    }
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given and nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs whole rounds (`sessions` sessions through every transaction of `exchange`) until
/// `seconds` of CPU have gone by, after one round of warm-up.
fn measure(
    exchange: &Exchange,
    sessions: usize,
    seconds: f64,
    policy: &(Arc<InspectSettings>, Arc<UrlRules>),
) -> Result<(u64, Duration, usize)> {
    let mut batch = Vec::with_capacity(128 * 1024);
    let mut eve_bytes = 0usize;
    let round = |timed: bool, batch: &mut Vec<u8>, eve_bytes: &mut usize| -> Result<(u64, Duration)> {
        let mut open: Vec<SessionUnderTest> = (0..sessions)
            .map(|i| SessionUnderTest::new(&policy.0, &policy.1, exchange.alpn, i as u64))
            .collect();
        let start = thread_cpu();
        let mut active = true;
        while active {
            active = false;
            for session in &mut open {
                active |= session.step(exchange, batch);
                if batch.len() >= 64 * 1024 {
                    if timed {
                        *eve_bytes += batch.len();
                    }
                    batch.clear();
                }
            }
        }
        let took = thread_cpu() - start;
        let done: u64 = open.iter().map(|s| s.transactions).sum();
        let expected = (sessions * exchange.requests()) as u64;
        if done != expected {
            bail!("{done} transactions finished of {expected}: the engine lost some");
        }
        if let Some(session) = open.iter().find(|s| s.engine.stopped().is_some()) {
            bail!("inspection stopped: {:?}", session.engine.stopped());
        }
        if timed {
            *eve_bytes += batch.len();
        }
        batch.clear();
        Ok((done, took))
    };
    round(false, &mut batch, &mut eve_bytes)?;
    let (mut transactions, mut took) = (0u64, Duration::ZERO);
    while took.as_secs_f64() < seconds {
        let (done, t) = round(true, &mut batch, &mut eve_bytes)?;
        transactions += done;
        took += t;
    }
    Ok((transactions, took, eve_bytes))
}

pub fn run_micro(spec: &InspectMicroSpec) -> Result<InspectMicroReport> {
    let policy = inspect_policy()?;
    let wanted_protocol = |protocol| spec.protocol.is_none_or(|only| only == protocol);
    let mut exchanges = Vec::new();
    if wanted_protocol(MicroProtocol::Http1) {
        exchanges.push(("HTTP/1.1", http1_exchange(spec.transactions)));
    }
    if wanted_protocol(MicroProtocol::Http2) {
        exchanges.push(("HTTP/2", http2_exchange(spec.transactions)?));
    }
    let kinds = [MicroKind::Hot, MicroKind::Interleaved];
    let mut runs = Vec::new();
    for (protocol, exchange) in &exchanges {
        for &micro_kind in kinds.iter().filter(|&&k| spec.kind.is_none_or(|only| only == k)) {
            let kind = micro_kind.label();
            let sessions = match micro_kind {
                MicroKind::Hot => 1,
                MicroKind::Interleaved => spec.sessions,
            };
            let (transactions, took, eve_bytes) = measure(exchange, sessions, spec.seconds, &policy)?;
            runs.push(InspectRun {
                protocol,
                kind,
                sessions,
                transactions,
                ns_per_transaction: took.as_nanos() as f64 / transactions as f64,
                eve_bytes_per_transaction: eve_bytes as f64 / transactions as f64,
            });
        }
    }
    Ok(InspectMicroReport {
        seconds: spec.seconds,
        runs,
    })
}

impl InspectMicroReport {
    pub fn to_table(&self) -> String {
        let mut out = String::from(
            "HTTP inspection per transaction (engine + EVE line), one thread's CPU time\n\n\
             | protocol | kind | sessions | transactions | CPU-µs per transaction | EVE bytes per transaction |\n\
             |---|---|---:|---:|---:|---:|\n",
        );
        for run in &self.runs {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {:.3} | {:.0} |\n",
                run.protocol,
                run.kind,
                run.sessions,
                run.transactions,
                run.ns_per_transaction / 1000.0,
                run.eve_bytes_per_transaction
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_recorded_exchange_is_inspected_into_one_eve_line_per_request() {
        let policy = inspect_policy().expect("policy");
        for exchange in [http1_exchange(5), http2_exchange(5).expect("recording")] {
            assert!(exchange.steps.len() >= 5, "{}", exchange.alpn);
            let mut session = SessionUnderTest::new(&policy.0, &policy.1, exchange.alpn, 7);
            let mut batch = Vec::new();
            while session.step(&exchange, &mut batch) {}
            assert_eq!(session.transactions, exchange.requests() as u64, "{}", exchange.alpn);
            let text = String::from_utf8(batch).expect("utf-8");
            let lines: Vec<serde_json::Value> = text
                .lines()
                .map(|line| serde_json::from_str(line).expect("JSON line"))
                .collect();
            assert_eq!(lines.len(), exchange.requests(), "{}", exchange.alpn);
            for line in &lines {
                assert_eq!(line["http"]["hostname"], "server.lab", "{line}");
                assert_eq!(line["http"]["url"], "/1k", "{line}");
                assert_eq!(line["http"]["status"], 200, "{line}");
                assert_eq!(line["http"]["http_user_agent"], "loupe-bench", "{line}");
            }
        }
    }
}
