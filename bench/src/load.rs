//! `loupe-bench load`: the load generator. A TLS client (BoringSSL) that runs one
//! workload against a server for a warm-up and a fixed duration and reports what it
//! measured as one JSON object ([`LoadResult`]).
//!
//! The types here are the contract between the generator, the bench runner and the
//! report; the generator itself is `run_load`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Workload {
    /// A new TLS connection per request (no resumption), small response.
    Handshakes,
    /// Keep-alive HTTP/1.1 requests on `concurrency` connections.
    Requests,
    /// `streams` parallel downloads of one large object, each hashed.
    Bulk { streams: usize },
    /// Open `sessions` TLS sessions, hold them idle for the duration, close them.
    Idle { sessions: usize },
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
    /// Bulk: every stream's body matched `expect_sha256`.
    pub integrity_ok: Option<bool>,
    /// Idle: sessions that were open at the same time.
    pub sessions_held: Option<u64>,
}
