//! `loupe-bench tls-handshakes`: N sequential full TLS handshakes, each on a new TCP
//! connection with no session resumption, verified against a CA file. It drives the
//! forged-certificate cache far faster than a loop of `openssl s_client` processes, and
//! reports which leaf certificates it saw so a test can tell one forgery from many.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use boring::hash::MessageDigest;
use boring::ssl::{Ssl, SslContext, SslMethod, SslSessionCacheMode, SslVerifyMode, SslVersion};
use serde::Serialize;

#[derive(Clone, Debug)]
pub struct HandshakeSpec {
    /// `host:port`, resolved once.
    pub connect: String,
    /// Server name sent and checked against the certificate.
    pub sni: String,
    /// The only CAs trusted (no system roots).
    pub ca_file: PathBuf,
    pub count: usize,
    /// Highest TLS version offered (`None`: TLS 1.3).
    pub max_version: Option<SslVersion>,
    /// Bound on one connection (connect + handshake + close).
    pub timeout: Duration,
}

/// What `tls-handshakes` prints (one JSON object).
#[derive(Clone, Debug, Default, Serialize)]
pub struct HandshakeReport {
    pub attempted: usize,
    pub completed: usize,
    pub failed: usize,
    /// The first few failures, with the attempt number.
    pub errors: Vec<String>,
    /// Leaf certificate SHA-256 (hex) → handshakes that presented it.
    pub leaf_sha256: BTreeMap<String, usize>,
    /// Negotiated version → handshakes.
    pub versions: BTreeMap<String, usize>,
    /// Handshakes the server said were resumed (must stay 0: every one is full).
    pub resumed: usize,
    pub elapsed_secs: f64,
}

const MAX_ERRORS: usize = 10;

pub fn run_handshakes(spec: &HandshakeSpec) -> Result<HandshakeReport> {
    let addr: SocketAddr = spec
        .connect
        .to_socket_addrs()
        .with_context(|| format!("resolving {}", spec.connect))?
        .next()
        .with_context(|| format!("{} resolves to no address", spec.connect))?;
    let mut ctx = SslContext::builder(SslMethod::tls())?;
    ctx.set_ca_file(&spec.ca_file)
        .with_context(|| format!("loading CA file {}", spec.ca_file.display()))?;
    ctx.set_verify(SslVerifyMode::PEER);
    // No client-side session cache and no tickets: every handshake is a full one, so the
    // middlebox has to present (and, unless cached, sign) a certificate every time.
    ctx.set_session_cache_mode(SslSessionCacheMode::OFF);
    ctx.set_options(boring::ssl::SslOptions::NO_TICKET);
    ctx.set_max_proto_version(spec.max_version)?;
    let ctx = ctx.build();

    let mut report = HandshakeReport {
        attempted: spec.count,
        ..HandshakeReport::default()
    };
    let start = Instant::now();
    for i in 0..spec.count {
        match one_handshake(&ctx, addr, spec) {
            Ok((leaf, version, resumed)) => {
                report.completed += 1;
                *report.leaf_sha256.entry(leaf).or_default() += 1;
                *report.versions.entry(version).or_default() += 1;
                report.resumed += usize::from(resumed);
            }
            Err(e) => {
                report.failed += 1;
                if report.errors.len() < MAX_ERRORS {
                    report.errors.push(format!("handshake {i}: {e:#}"));
                }
            }
        }
    }
    report.elapsed_secs = start.elapsed().as_secs_f64();
    Ok(report)
}

/// One connection: (leaf SHA-256, version, resumed).
fn one_handshake(ctx: &SslContext, addr: SocketAddr, spec: &HandshakeSpec) -> Result<(String, String, bool)> {
    let tcp = TcpStream::connect_timeout(&addr, spec.timeout).with_context(|| format!("connecting to {addr}"))?;
    tcp.set_read_timeout(Some(spec.timeout))?;
    tcp.set_write_timeout(Some(spec.timeout))?;
    tcp.set_nodelay(true)?;
    let mut ssl = Ssl::new(ctx)?;
    ssl.set_hostname(&spec.sni)?;
    ssl.param_mut().set_host(&spec.sni)?;
    let mut stream = match ssl.connect(tcp) {
        Ok(s) => s,
        Err(e) => bail!("TLS handshake: {e}"),
    };
    let s = stream.ssl();
    let leaf = s.peer_certificate().context("the server presented no certificate")?;
    let sha: String = leaf
        .digest(MessageDigest::sha256())?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let version = s.version_str().to_string();
    let resumed = s.session_reused();
    // close_notify, then close: a clean end the middlebox logs as a finished session.
    let _ = stream.shutdown();
    Ok((sha, version, resumed))
}
