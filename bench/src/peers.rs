//! The bench's comparison peers: Debian's `sslsplit` (0.5.5) and `squid-openssl` (5.7,
//! ssl-bump), and mitmproxy (`mitmdump --mode transparent`, [`MITMPROXY_VERSION`] from
//! PyPI in a venv of its own) as transparent TLS interceptors in the lab's app namespace.
//!
//! # Topology: a bridged-and-redirected variant of the lab
//!
//! loupe sits in the wire with no addresses; these proxies are ordinary sockets
//! programs, so for them the app namespace becomes a bridge with an address and a
//! netfilter redirect ([`start_interceptor`] sets it up, the guard removes it):
//!
//! ```text
//!  client 198.18.0.1 ── in0 ┐            ┌ out0 ── server 198.18.0.2-9
//!                           br0 198.18.0.254/24 (br_netfilter on)
//!          nat prerouting: iifname br0 tcp dport 443 redirect to :8443
//!                           └─► interceptor on 198.18.0.254:8443 ─► connects to the
//!                               original destination (SO_ORIGINAL_DST) from 198.18.0.254
//! ```
//!
//! In the app namespace, in this order (the exact commands, run by `ip netns exec`):
//! 1. `lab.sh bridge on` ([`Lab::bridge`]): `br0` over `in0` and `out0`, STP off;
//! 2. `sysctl net.ipv6.conf.br0.disable_ipv6=1` (no IPv6 chatter on the wire),
//!    `ip addr replace 198.18.0.254/24 dev br0`;
//! 3. `sysctl net.bridge.bridge-nf-call-iptables=1` (per namespace; bridged IPv4 frames
//!    then traverse the `ip` family hooks, so nat/prerouting sees them),
//!    `net.ipv4.tcp_tw_reuse=1` and `net.ipv4.ip_local_port_range=1024 65535` (the
//!    proxy is the active closer towards the origin: without them a handshake-per-
//!    request load runs out of ports to 198.18.0.2:443 within seconds);
//! 4. the daemon, listening on 198.18.0.254:8443;
//! 5. `nft -f` of `table ip loupe_peers { chain prerouting { type nat hook prerouting
//!    priority dstnat; iifname "br0" tcp dport 443 redirect to :8443 } }`. With
//!    br_netfilter a bridged frame whose destination was rewritten to a local address
//!    is delivered locally instead of forwarded; everything else stays bridged.
//!
//! What differs from loupe's wire: the origin sees connections from 198.18.0.254 (the
//! client's address is not kept), the proxy uses the kernel's TCP stack on both legs,
//! and non-443 traffic crosses a kernel bridge (as in the `direct` baseline).
//!
//! # Configuration (as each project documents it for production)
//!
//! **sslsplit** (`sslsplit -f sslsplit.conf`, foreground, privilege separation on: a
//! root parent and an unprivileged `nobody` child that does all the proxying):
//! `ProxySpec ssl 198.18.0.254 8443 netfilter`, `CACert`/`CAKey` = the interception CA,
//! `VerifyPeer yes` with `SSL_CERT_FILE` = the upstream CA (and `SSL_CERT_DIR` an empty
//! directory: 0.5.5 verifies "using default certificates", i.e. OpenSSL's default
//! paths, which those variables override), `AddSNIToCertificate no` (otherwise a
//! certificate for another name is "fixed" by adding the SNI and the client never
//! sees the mismatch; 0.5.5's VerifyPeer checks the chain only, not the name),
//! `LeafKey` = an ECDSA P-256 key made per run (its default is a random RSA-2048 key;
//! loupe and squid forge ECDSA leaves for this origin, so all three sign alike). `ssl`
//! rather than `https`: the `https` type rewrites headers and forces
//! `Connection: close`, which would turn the keep-alive workload into handshakes.
//! No content, connect or PCAP logs; in the foreground it still prints one line per
//! connection on stderr (into the lab directory; with `-d` those lines are dropped).
//!
//! **squid** (`squid -N -f squid.conf`: no daemon, one process, no SMP kids) runs as
//! `proxy`: `https_port 198.18.0.254:8443 intercept ssl-bump tls-cert=… tls-key=…
//! generate-host-certificates=on dynamic_cert_mem_cache_size=4MB`, `sslcrtd_program
//! security_file_certgen -s <dir>/ssl_db -M 4MB` (the documented default helpers,
//! `sslcrtd_children 32 startup=5 idle=1`), `ssl_bump peek step1` + `ssl_bump bump
//! all`, `tls_outgoing_options cafile=<upstream CA> default-ca=off`,
//! `sslproxy_cert_error deny all` (no `DONT_VERIFY_PEER`), `cache deny all` (we measure
//! interception, not caching: nginx's static files are cacheable and squid would
//! otherwise answer from memory), `access_log none`, names from the lab's hosts file
//! (`hosts_file`, no DNS), `shutdown_lifetime 1 second` (the default waits 30 s for
//! clients before exiting on SIGTERM), `max_filedescriptors` = the open-files limit
//! below. squid validates the chain and the name; a refused origin is answered with a
//! bumped `503` error page (`X-Squid-Error: ERR_SECURE_CONNECT_FAIL`), not a TLS failure.
//!
//! Both daemons start under `prlimit --nofile=N:N`, N = 262144 or, if lower, the hard
//! limit of the calling process: raising it needs CAP_SYS_RESOURCE. The bench VM has a
//! hard limit of 20000 and no CAP_SYS_RESOURCE; a proxy holds two sockets per session,
//! so the idle workload cannot pass ~9,990 sessions through either peer there.
//!
//! # What the numbers will show (measured while building this, not tuned away)
//!
//! - Both link OpenSSL 3.0, which has no ML-KEM: a client offering only an
//!   X25519MLKEM768 key share (BoringSSL's default, as `loupe-bench tls-handshakes`
//!   sends) gets a HelloRetryRequest: one more round trip per handshake than through
//!   loupe.
//! - sslsplit 0.5.5 peeks at most 1024 bytes for the SNI; a post-quantum ClientHello
//!   (about 1.5 KB, two segments) is never "complete", so it re-peeks 50 times and goes
//!   on after ~200 ms: every such handshake through sslsplit takes ~200 ms more (fixed
//!   upstream in droe/sslsplit PR #342, not in Debian). TLS 1.2 or X25519-only
//!   ClientHellos are not affected.
//! - sslsplit answers every client with P-256 (its default `ECDHCurve`, prime256v1, set
//!   on the client-side context as the only group), so a TLS 1.3 client whose key share
//!   is X25519 (both of the bench's hello shapes) gets a HelloRetryRequest. We leave the
//!   default as sslsplit's users get it; the report names the group each mode ended with.
//! - sslsplit builds a new upstream SSL_CTX per connection and, with VerifyPeer,
//!   re-reads the trust file each time (one file with one CA here: cheap).
//! - squid 5 does not use its in-memory generated-certificate cache when it peeks at
//!   step 1 (`getSslContextStart`): every bumped connection is a round trip to a
//!   `security_file_certgen` helper (which answers from its disk db) plus a fresh
//!   SSL_CTX, so its handshake cost includes helper CPU: measure [`InterceptorGuard::pids`].
//!
//! # Processes
//!
//! [`InterceptorGuard::pid`] is the process carrying the traffic: the `nobody` child
//! for sslsplit, the single `squid` process for squid. [`InterceptorGuard::pids`] adds
//! the rest: sslsplit's privileged parent (idle after start-up), squid's
//! `security_file_certgen` helpers (squid asks one for every bumped connection, above).
//!
//! ```no_run
//! use loupe_bench::lab::Lab;
//! use loupe_bench::peers::{start_interceptor, Interceptor};
//! # use std::path::Path;
//! let lab = Lab::up().unwrap();
//! let guard = start_interceptor(
//!     &lab,
//!     Interceptor::Squid,
//!     Path::new("ca.crt"),
//!     Path::new("ca.key"),
//!     Path::new("origin-ca.crt"),
//! )
//! .unwrap();
//! println!("{} works in pid {}", guard.name(), guard.pid());
//! ```

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use boring::ec::{EcGroup, EcKey};
use boring::nid::Nid;
use boring::pkey::PKey;

use crate::lab::{Lab, Ns, NsProcess};

/// The address the interceptors own on the app namespace's bridge.
pub const INTERCEPTOR_ADDR: &str = "198.18.0.254";
/// Their listening port; tcp/443 from the client side is redirected to it.
pub const INTERCEPTOR_PORT: u16 = 8443;
/// The bridge (the one `lab.sh bridge on` makes).
pub const BRIDGE: &str = "br0";
/// The nftables table holding the redirect.
pub const NFT_TABLE: &str = "loupe_peers";
/// The port intercepted.
pub const INTERCEPTED_PORT: u16 = 443;

/// One line for a report: how the peers are wired.
pub const TOPOLOGY: &str = "sslsplit, squid and mitmproxy run as transparent proxies in the app namespace: \
    a kernel bridge over in0/out0 with 198.18.0.254/24, br_netfilter and an nftables \
    REDIRECT of tcp/443 to the proxy, which connects to the original destination from \
    198.18.0.254 (a bridged-and-redirected variant of the lab; loupe keeps addresses and \
    uses no kernel TCP)";

/// Open-files limit wanted for the daemons (the idle workload holds two sockets per
/// session); capped by our own hard limit, which only CAP_SYS_RESOURCE could raise.
const NOFILE: u64 = 262_144;
/// Bound on waiting for a daemon to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A TLS interceptor to compare loupe with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Interceptor {
    /// Debian's `sslsplit` 0.5.5.
    Sslsplit,
    /// Debian's `squid-openssl` 5.7 with ssl-bump.
    Squid,
    /// mitmproxy's `mitmdump` ([`MITMPROXY_VERSION`] from PyPI, in [`mitmproxy_venv`]).
    Mitmproxy,
}

/// The mitmproxy release the bench runs (the newest for Debian 12's Python 3.11);
/// scripts/setup.sh installs the same one.
pub const MITMPROXY_VERSION: &str = "11.0.2";

/// Where mitmproxy's venv lives: `target/mitmproxy-venv` in the checkout.
pub fn mitmproxy_venv() -> PathBuf {
    crate::lab::repo_root().join("target/mitmproxy-venv")
}

/// `mitmdump` of [`mitmproxy_venv`], making the venv first (Debian's Python, pip from
/// PyPI, [`MITMPROXY_VERSION`]) when it is missing or holds another version.
pub fn ensure_mitmproxy() -> Result<PathBuf> {
    let venv = mitmproxy_venv();
    let mitmdump = venv.join("bin/mitmdump");
    let installed = |bin: &Path| {
        std::process::Command::new(bin)
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .is_some_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("Mitmproxy: {MITMPROXY_VERSION}")))
    };
    if installed(&mitmdump) {
        return Ok(mitmdump);
    }
    let venv_str = path_str(&venv)?;
    let _ = std::fs::remove_dir_all(&venv);
    let run = |argv: &[&str]| -> Result<()> {
        let out = std::process::Command::new(argv[0])
            .args(&argv[1..])
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| format!("running {}", argv.join(" ")))?;
        if !out.status.success() {
            bail!(
                "{} failed ({}):\n{}",
                argv.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    run(&["/usr/bin/python3", "-m", "venv", venv_str]).context("making mitmproxy's venv (package python3-venv)")?;
    let pip = venv.join("bin/pip");
    run(&[
        path_str(&pip)?,
        "install",
        "--quiet",
        &format!("mitmproxy=={MITMPROXY_VERSION}"),
    ])
    .context("installing mitmproxy from PyPI")?;
    if !installed(&mitmdump) {
        bail!(
            "{} does not report mitmproxy {MITMPROXY_VERSION} after installing it",
            mitmdump.display()
        );
    }
    Ok(mitmdump)
}

impl Interceptor {
    /// All, in the order the bench runs them.
    pub const ALL: [Interceptor; 3] = [Interceptor::Sslsplit, Interceptor::Squid, Interceptor::Mitmproxy];

    /// The mode name in reports: `sslsplit`, `squid`, `mitmproxy`.
    pub fn name(self) -> &'static str {
        match self {
            Interceptor::Sslsplit => "sslsplit",
            Interceptor::Squid => "squid",
            Interceptor::Mitmproxy => "mitmproxy",
        }
    }

    /// The executable: found on PATH, or mitmproxy's in its venv.
    pub fn program(self) -> PathBuf {
        match self {
            Interceptor::Sslsplit => "sslsplit".into(),
            Interceptor::Squid => "squid".into(),
            Interceptor::Mitmproxy => mitmproxy_venv().join("bin/mitmdump"),
        }
    }

    /// Where it comes from.
    pub fn package(self) -> String {
        match self {
            Interceptor::Sslsplit => "the Debian package sslsplit".into(),
            Interceptor::Squid => "the Debian package squid-openssl".into(),
            Interceptor::Mitmproxy => format!("mitmproxy {MITMPROXY_VERSION} from PyPI"),
        }
    }

    /// The installed version line (`SSLsplit 0.5.5 (built …)`, `Squid Cache: Version 5.7`,
    /// `Mitmproxy: 11.0.2`).
    pub fn version(self) -> Result<String> {
        let flag = match self {
            Interceptor::Sslsplit => "-V",
            Interceptor::Squid => "-v",
            Interceptor::Mitmproxy => "--version",
        };
        let out = std::process::Command::new(self.program())
            .arg(flag)
            .output()
            .with_context(|| {
                format!(
                    "running {} {flag} (install {}: scripts/setup.sh)",
                    self.program().display(),
                    self.package()
                )
            })?;
        // sslsplit prints its version on stderr.
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        text.lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_string)
            .with_context(|| format!("{} {flag} printed nothing", self.program().display()))
    }
}

impl std::fmt::Display for Interceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Interceptor {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Interceptor> {
        match s {
            "sslsplit" => Ok(Interceptor::Sslsplit),
            "squid" => Ok(Interceptor::Squid),
            "mitmproxy" => Ok(Interceptor::Mitmproxy),
            other => bail!("unknown interceptor {other:?}: expected sslsplit, squid or mitmproxy"),
        }
    }
}

/// A running interceptor and the wiring around it. Dropping it stops the daemon (and
/// any helper left), removes the redirect, the bridge and its address, and restores
/// the sysctls it changed, panics included.
pub struct InterceptorGuard<'lab> {
    lab: &'lab Lab,
    which: Interceptor,
    dir: PathBuf,
    /// What `ip netns exec` started: squid itself, or sslsplit's privileged parent.
    daemon: Option<NsProcess<'lab>>,
    /// The process carrying the traffic.
    worker: u32,
    /// Sysctls changed, with their values before.
    saved_sysctls: Vec<(String, String)>,
    bridge_on: bool,
    redirect_on: bool,
}

/// Sets up the bridged-and-redirected topology of the module doc in `lab`'s app
/// namespace and starts `which` there, forging leaves with `ca_cert`/`ca_key` and
/// validating origins against `upstream_ca` only. Returns once the daemon listens and
/// the redirect is in place. On error everything done so far is undone.
pub fn start_interceptor<'lab>(
    lab: &'lab Lab,
    which: Interceptor,
    ca_cert: &Path,
    ca_key: &Path,
    upstream_ca: &Path,
) -> Result<InterceptorGuard<'lab>> {
    for f in [ca_cert, ca_key, upstream_ca] {
        if !f.is_file() {
            bail!("{}: no such file", f.display());
        }
    }
    let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
    let dir = lab.dir().join(format!("{}-{n}", which.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Constructed first so a half-built setup is torn down by Drop.
    let mut g = InterceptorGuard {
        lab,
        which,
        dir,
        daemon: None,
        worker: 0,
        saved_sysctls: Vec::new(),
        bridge_on: false,
        redirect_on: false,
    };
    g.wire_up()?;
    let (daemon, worker) = match which {
        Interceptor::Sslsplit => g.start_sslsplit(ca_cert, ca_key, upstream_ca)?,
        Interceptor::Squid => g.start_squid(ca_cert, ca_key, upstream_ca)?,
        Interceptor::Mitmproxy => g.start_mitmproxy(ca_cert, ca_key, upstream_ca)?,
    };
    g.daemon = Some(daemon);
    g.worker = worker;
    g.redirect()?;
    Ok(g)
}

impl<'lab> InterceptorGuard<'lab> {
    /// The process doing the interception (the one to measure CPU and RSS of).
    pub fn pid(&self) -> u32 {
        self.worker
    }

    /// Every live process of the interceptor, [`InterceptorGuard::pid`] first: for
    /// sslsplit its privileged parent, for squid its certificate helpers (their number
    /// varies with load, so this is read from /proc on each call).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.worker];
        if let Some(d) = &self.daemon {
            let top = d.pid();
            for p in std::iter::once(top).chain(descendants(top)) {
                if !pids.contains(&p) && running_since(p).is_some() {
                    pids.push(p);
                }
            }
        }
        pids
    }

    /// `sslsplit`, `squid` or `mitmproxy`.
    pub fn name(&self) -> &'static str {
        self.which.name()
    }

    pub fn which(&self) -> Interceptor {
        self.which
    }

    /// Where its configuration, certificates and logs are (under [`Lab::dir`]).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where tcp/443 is redirected to.
    pub fn listen(&self) -> SocketAddr {
        SocketAddr::new(INTERCEPTOR_ADDR.parse().expect("a literal address"), INTERCEPTOR_PORT)
    }

    /// Fails if the daemon exited since it started.
    pub fn check_alive(&mut self) -> Result<()> {
        let Some(d) = self.daemon.as_mut() else {
            bail!("{} is not running", self.which);
        };
        match d.try_status()? {
            None => Ok(()),
            Some(st) => bail!("{} exited with {st}\n{}", self.which, self.logs()),
        }
    }

    /// The daemon's output and, for squid, the tail of its cache.log.
    pub fn logs(&self) -> String {
        let mut s = self.daemon.as_ref().map(NsProcess::logs).unwrap_or_default();
        if self.which == Interceptor::Squid {
            let log = std::fs::read_to_string(self.dir.join("cache.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            if !tail.is_empty() {
                let _ = writeln!(s, "--- squid cache.log (tail):\n{}", tail.join("\n"));
            }
        }
        s
    }

    fn app(&self, argv: &[&str]) -> Result<String> {
        self.lab.exec(Ns::App, argv)
    }

    /// Sets a sysctl in the app namespace, remembering its old value for Drop.
    fn sysctl(&mut self, key: &str, value: &str) -> Result<()> {
        let old = self.app(&["sysctl", "-n", key])?;
        // Values with several fields (ip_local_port_range) print tab-separated.
        let old = old.split_whitespace().collect::<Vec<_>>().join(" ");
        self.app(&["sysctl", "-qw", &format!("{key}={value}")])?;
        self.saved_sysctls.push((key.to_string(), old));
        Ok(())
    }

    fn wire_up(&mut self) -> Result<()> {
        self.lab.bridge(true).context("putting a bridge between in0 and out0")?;
        self.bridge_on = true;
        // Not restored: it dies with the bridge.
        self.app(&["sysctl", "-qw", &format!("net.ipv6.conf.{BRIDGE}.disable_ipv6=1")])?;
        self.app(&[
            "ip",
            "addr",
            "replace",
            &format!("{INTERCEPTOR_ADDR}/24"),
            "dev",
            BRIDGE,
        ])?;
        self.sysctl("net.bridge.bridge-nf-call-iptables", "1")
            .context("br_netfilter (CONFIG_BRIDGE_NETFILTER) is needed to redirect bridged traffic")?;
        self.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        self.sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
        Ok(())
    }

    fn redirect(&mut self) -> Result<()> {
        let rules = format!(
            "table ip {NFT_TABLE} {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n\
             \x20   iifname \"{BRIDGE}\" tcp dport {INTERCEPTED_PORT} redirect to :{INTERCEPTOR_PORT}\n  }}\n}}\n"
        );
        let file = self.dir.join("redirect.nft");
        std::fs::write(&file, rules)?;
        // Marked first: a failed load may still have created the table.
        self.redirect_on = true;
        self.app(&["nft", "-f", path_str(&file)?])
            .context("loading the nftables redirect (is nftables installed? scripts/setup.sh)")?;
        Ok(())
    }

    fn spawn_daemon(&self, name: &str, argv: &[OsString]) -> Result<NsProcess<'lab>> {
        let nofile = nofile_limit();
        let mut full: Vec<OsString> = vec!["prlimit".into(), format!("--nofile={nofile}:{nofile}").into()];
        full.extend(argv.iter().cloned());
        // prlimit execs the program, so the pid is the daemon's.
        let mut p = self.lab.spawn(Ns::App, name, &full)?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(st) = p.try_status()? {
                bail!("{name} exited during start-up with {st}\n{}", p.logs());
            }
            match self
                .lab
                .wait_listening(Ns::App, self.listen(), Duration::from_millis(200))
            {
                Ok(()) => return Ok(p),
                Err(e) if Instant::now() >= deadline => {
                    let _ = p.stop();
                    bail!("{name}: {e:#}\n{}", p.logs());
                }
                Err(_) => {}
            }
        }
    }

    fn start_sslsplit(&self, ca_cert: &Path, ca_key: &Path, upstream_ca: &Path) -> Result<(NsProcess<'lab>, u32)> {
        let d = &self.dir;
        // The unprivileged child opens the trust file for every upstream connection
        // (0.5.5 builds a fresh SSL_CTX per connection): keep a world-readable copy.
        let trust = d.join("upstream-ca.pem");
        std::fs::copy(upstream_ca, &trust).with_context(|| format!("copying {}", upstream_ca.display()))?;
        let no_dir = d.join("no-ca-dir");
        std::fs::create_dir_all(&no_dir)?;
        let leaf_key = d.join("leaf.key");
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
        let key = PKey::from_ec_key(EcKey::generate(&group)?)?;
        std::fs::write(&leaf_key, key.private_key_to_pem_pkcs8()?)?;
        set_mode(d, 0o755)?;
        set_mode(&trust, 0o644)?;
        set_mode(&no_dir, 0o755)?;
        set_mode(&leaf_key, 0o600)?;
        let conf = format!(
            "# written by loupe-bench (bench/src/peers.rs)\n\
             CACert {}\nCAKey {}\nLeafKey {}\n\
             VerifyPeer yes\nAddSNIToCertificate no\n\
             ProxySpec ssl {INTERCEPTOR_ADDR} {INTERCEPTOR_PORT} netfilter\n",
            path_str(ca_cert)?,
            path_str(ca_key)?,
            path_str(&leaf_key)?,
        );
        let conf_path = d.join("sslsplit.conf");
        std::fs::write(&conf_path, conf)?;
        let argv: Vec<OsString> = vec![
            "env".into(),
            format!("SSL_CERT_FILE={}", path_str(&trust)?).into(),
            format!("SSL_CERT_DIR={}", path_str(&no_dir)?).into(),
            "sslsplit".into(),
            "-f".into(),
            conf_path.into(),
        ];
        let mut p = self.spawn_daemon("sslsplit", &argv)?;
        // The parent forks the unprivileged worker after opening its listener.
        let deadline = Instant::now() + START_TIMEOUT;
        let worker = loop {
            if let Some(&c) = children(p.pid()).first() {
                break c;
            }
            if let Some(st) = p.try_status()? {
                bail!("sslsplit exited during start-up with {st}\n{}", p.logs());
            }
            if Instant::now() >= deadline {
                let _ = p.stop();
                bail!(
                    "sslsplit started no worker process within {START_TIMEOUT:?}\n{}",
                    p.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok((p, worker))
    }

    fn start_squid(&self, ca_cert: &Path, ca_key: &Path, upstream_ca: &Path) -> Result<(NsProcess<'lab>, u32)> {
        let d = &self.dir;
        // squid drops to `proxy` early, and its helpers run as `proxy` too: everything it
        // reads or writes is copied here and handed over.
        let (cert, key, trust) = (d.join("ca.crt"), d.join("ca.key"), d.join("upstream-ca.pem"));
        std::fs::copy(ca_cert, &cert).with_context(|| format!("copying {}", ca_cert.display()))?;
        std::fs::copy(ca_key, &key).with_context(|| format!("copying {}", ca_key.display()))?;
        std::fs::copy(upstream_ca, &trust).with_context(|| format!("copying {}", upstream_ca.display()))?;
        set_mode(&key, 0o600)?;
        let db = d.join("ssl_db");
        let certgen = "/usr/lib/squid/security_file_certgen";
        self.app(&[certgen, "-c", "-s", path_str(&db)?, "-M", "4MB"])
            .context("initialising squid's certificate database")?;
        let hosts = PathBuf::from(format!("/etc/netns/{}/hosts", self.lab.ns(Ns::Client)));
        let (cert, key, trust, db, hosts, ds) = (
            path_str(&cert)?,
            path_str(&key)?,
            path_str(&trust)?,
            path_str(&db)?,
            path_str(&hosts)?,
            path_str(d)?,
        );
        let conf = format!(
            "# written by loupe-bench (bench/src/peers.rs)\n\
             # A forward-proxy port is expected even when only intercepting.\n\
             http_port 127.0.0.1:3128\n\
             https_port {INTERCEPTOR_ADDR}:{INTERCEPTOR_PORT} intercept ssl-bump tls-cert={cert} tls-key={key} \
             generate-host-certificates=on dynamic_cert_mem_cache_size=4MB\n\
             sslcrtd_program {certgen} -s {db} -M 4MB\n\
             sslcrtd_children 32 startup=5 idle=1\n\
             tls_outgoing_options cafile={trust} default-ca=off\n\
             sslproxy_cert_error deny all\n\
             acl step1 at_step SslBump1\n\
             ssl_bump peek step1\n\
             ssl_bump bump all\n\
             acl lab src 198.18.0.0/15\n\
             http_access allow lab\n\
             http_access deny all\n\
             cache deny all\n\
             access_log none\n\
             cache_log {ds}/cache.log\n\
             pid_filename {ds}/squid.pid\n\
             coredump_dir {ds}\n\
             netdb_filename none\n\
             cache_effective_user proxy\n\
             visible_hostname squid.lab\n\
             hosts_file {hosts}\n\
             dns_nameservers 127.0.0.1\n\
             pinger_enable off\n\
             shutdown_lifetime 1 second\n\
             max_filedescriptors {nofile}\n",
            nofile = nofile_limit(),
        );
        let conf_path = d.join("squid.conf");
        std::fs::write(&conf_path, conf)?;
        self.app(&["chown", "-R", "proxy:proxy", ds])
            .context("handing squid's directory to the proxy user")?;
        let parsed = self
            .lab
            .exec_output(Ns::App, &["squid", "-k", "parse", "-f", path_str(&conf_path)?])?;
        if !parsed.status.success() {
            bail!(
                "squid -k parse rejected {}:\n{}{}",
                conf_path.display(),
                parsed.stdout,
                parsed.stderr
            );
        }
        let argv: Vec<OsString> = vec!["squid".into(), "-N".into(), "-f".into(), conf_path.into()];
        let p = self.spawn_daemon("squid", &argv)?;
        let pid = p.pid();
        Ok((p, pid))
    }
}

impl<'lab> InterceptorGuard<'lab> {
    fn start_mitmproxy(&self, ca_cert: &Path, ca_key: &Path, upstream_ca: &Path) -> Result<(NsProcess<'lab>, u32)> {
        let mitmdump = ensure_mitmproxy()?;
        let d = &self.dir;
        // mitmproxy reads its CA's key and certificate from one file in its confdir.
        let confdir = d.join("mitmproxy");
        std::fs::create_dir_all(&confdir)?;
        let mut ca = std::fs::read(ca_key).with_context(|| format!("reading {}", ca_key.display()))?;
        ca.extend(std::fs::read(ca_cert).with_context(|| format!("reading {}", ca_cert.display()))?);
        let ca_file = confdir.join("mitmproxy-ca.pem");
        std::fs::write(&ca_file, ca)?;
        set_mode(&ca_file, 0o600)?;
        let argv: Vec<OsString> = vec![
            mitmdump.into(),
            "--mode".into(),
            "transparent".into(),
            "--listen-host".into(),
            INTERCEPTOR_ADDR.into(),
            "--listen-port".into(),
            INTERCEPTOR_PORT.to_string().into(),
            "--set".into(),
            format!("confdir={}", path_str(&confdir)?).into(),
            "--set".into(),
            format!("ssl_verify_upstream_trusted_ca={}", path_str(upstream_ca)?).into(),
            // Bodies above 1 MB stream through instead of being buffered whole (the
            // default would hold each 1 GiB bulk object in memory before forwarding it).
            "--set".into(),
            "stream_large_bodies=1m".into(),
            // No line per flow on the terminal; warnings and errors still printed.
            "--set".into(),
            "flow_detail=0".into(),
            "--set".into(),
            "termlog_verbosity=warn".into(),
        ];
        let p = self.spawn_daemon("mitmproxy", &argv)?;
        let pid = p.pid();
        Ok((p, pid))
    }
}

impl Drop for InterceptorGuard<'_> {
    fn drop(&mut self) {
        let lab = self.lab;
        let warn = |what: &str, e: anyhow::Error| eprintln!("peers ({}): {what} failed: {e:#}", self.which);
        if self.redirect_on {
            if let Err(e) = lab.exec(Ns::App, &["nft", "delete", "table", "ip", NFT_TABLE]) {
                warn("removing the nftables redirect", e);
            }
        }
        if let Some(mut d) = self.daemon.take() {
            // Helpers (squid's certgen, sslsplit's worker) exit with their parent;
            // whatever is left after it stopped is killed, if it is still the same
            // process (same start time).
            let family: Vec<(u32, Option<u64>)> = descendants(d.pid())
                .into_iter()
                .map(|p| (p, running_since(p)))
                .collect();
            d.stop();
            let deadline = Instant::now() + Duration::from_secs(5);
            for (pid, started) in family {
                while started.is_some() && running_since(pid) == started && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if started.is_some() && running_since(pid) == started {
                    // SAFETY: plain kill(2) of a pid we just saw with the same start time.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                }
            }
        }
        if self.bridge_on {
            // Deleting the bridge takes its address with it.
            if let Err(e) = lab.bridge(false) {
                warn("removing the bridge", e);
            }
        }
        for (key, old) in self.saved_sysctls.drain(..).rev() {
            if let Err(e) = lab.exec(Ns::App, &["sysctl", "-qw", &format!("{key}={old}")]) {
                eprintln!("peers: restoring {key}={old} failed: {e:#}");
            }
        }
    }
}

/// [`NOFILE`], or our hard limit on open files if lower.
fn nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    NOFILE.min(lim.rlim_max)
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().with_context(|| format!("{} is not UTF-8", p.display()))
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", p.display()))
}

/// Fields of /proc/PID/stat after the command name (which may hold spaces and parens):
/// index 0 is the state, 1 the parent pid, 19 the start time.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The start time of `pid` if it is still running (a zombie has finished).
fn running_since(pid: u32) -> Option<u64> {
    let f = stat_fields(pid)?;
    if f.first().map(String::as_str) == Some("Z") {
        return None;
    }
    f.get(19)?.parse().ok()
}

/// The parent of every process, from /proc.
fn parents() -> BTreeMap<u32, u32> {
    let mut map = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return map;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(ppid) = stat_fields(pid).and_then(|f| f.get(1)?.parse().ok()) {
            map.insert(pid, ppid);
        }
    }
    map
}

fn children(pid: u32) -> Vec<u32> {
    parents()
        .into_iter()
        .filter(|&(_, pp)| pp == pid)
        .map(|(p, _)| p)
        .collect()
}

/// Children, grandchildren… of `pid` (not `pid` itself).
fn descendants(pid: u32) -> Vec<u32> {
    let map = parents();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    // Bounded: a pid appears once in the map, so the walk ends within map.len() steps.
    while let Some(p) = frontier.pop() {
        for (&c, _) in map.iter().filter(|&(_, &pp)| pp == p) {
            if !out.contains(&c) && c != pid {
                out.push(c);
                frontier.push(c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for i in Interceptor::ALL {
            assert_eq!(i.name().parse::<Interceptor>().unwrap(), i);
            assert_eq!(i.to_string(), i.name());
        }
        assert!("loupe".parse::<Interceptor>().is_err());
    }

    #[test]
    fn finds_its_own_process_tree() {
        let me = std::process::id();
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let kid = child.id();
        assert!(children(me).contains(&kid));
        assert!(descendants(me).contains(&kid));
        assert!(running_since(kid).is_some());
        assert_eq!(stat_fields(kid).unwrap()[1], me.to_string());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(running_since(kid).is_none());
    }
}
