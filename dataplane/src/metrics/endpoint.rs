//! `[metrics] listen`: `GET /metrics` over plain HTTP/1.1 from a thread of its own, one
//! connection at a time (Prometheus scrapes one at a time; each answer is built in
//! microseconds). A blocking std listener: no async runtime in the dataplane.
//!
//! The socket is bound before the daemon drops its capabilities (a port in use is an
//! error at start, naming the address); the thread is started after (threads started
//! before the drop would keep them).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{MetricsSources, CONTENT_TYPE};

/// How long a scraper may take to send its request and read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// A request head larger than this is refused (a scrape's is a few hundred bytes).
const MAX_REQUEST_HEAD: usize = 8192;
/// How often the idle thread looks at its stop flag.
const STOP_CHECK: Duration = Duration::from_millis(100);

pub struct MetricsListener {
    listener: TcpListener,
    address: SocketAddr,
}

impl MetricsListener {
    pub fn bind(address: SocketAddr) -> Result<MetricsListener> {
        let listener = TcpListener::bind(address)
            .with_context(|| format!("[metrics] listen = \"{address}\": cannot listen there"))?;
        // Accept polls, so the thread sees its stop flag without a connection coming.
        listener
            .set_nonblocking(true)
            .context("making the metrics socket non-blocking")?;
        Ok(MetricsListener {
            address: listener.local_addr().unwrap_or(address),
            listener,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Serves until `stop` is set.
    pub fn spawn(self, sources: MetricsSources, stop: Arc<AtomicBool>) -> Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("loupe-metrics".to_string())
            .spawn(move || self.serve(&sources, &stop))
            .context("spawning the metrics thread")
    }

    fn serve(self, sources: &MetricsSources, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    if let Err(err) = answer(stream, sources) {
                        tracing::debug!(%peer, %err, "metrics request not answered");
                    }
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(STOP_CHECK),
                Err(err) => {
                    // E.g. EMFILE: wait rather than spin.
                    tracing::warn!(%err, "metrics socket: accept failed");
                    std::thread::sleep(STOP_CHECK);
                }
            }
        }
    }
}

fn answer(mut stream: TcpStream, sources: &MetricsSources) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let head = read_head(&mut stream)?;
    let response = match request_line(&head) {
        Some(("GET", "/metrics")) => response("200 OK", CONTENT_TYPE, &sources.exposition()),
        Some(("GET", _)) => response("404 Not Found", "text/plain", "loupe serves /metrics only\n"),
        Some(_) => response("405 Method Not Allowed", "text/plain", "GET /metrics only\n"),
        None => response("400 Bad Request", "text/plain", "not an HTTP/1.x request\n"),
    };
    stream.write_all(response.as_bytes())?;
    stream.flush()
}

/// The request head, up to its blank line (the body of a GET is ignored).
fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_HEAD {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Ok(head)
}

/// Method and path (without a query string) of an HTTP/1.x request line.
pub(super) fn request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return None;
    }
    Some((method, target.split('?').next().unwrap_or(target)))
}

fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
