//! Harness for privileged tests and benches: builds a lab with `scripts/lab.sh` under a
//! unique prefix, runs commands and background processes inside its namespaces, puts a
//! middle (kernel bridge or loupe) between the ports, and tears everything down on
//! drop, panics included.
//!
//! ```no_run
//! use loupe_bench::lab::{Lab, Middle, WireSpec};
//! let lab = Lab::up().unwrap();
//! let _middle = lab.start(&Middle::for_tests()).unwrap();
//! let out = lab.run_wire(&WireSpec { bytes: 1 << 20, ..WireSpec::default() }).unwrap();
//! assert_eq!(out.comparison.connections, 1);
//! ```

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use loupe_control::protocol::{ReplyLine, Request, RequestLine, PROTOCOL_VERSION};
use loupe_dataplane::wire::{pinned_counters, WireCounters};

use crate::size::ByteSize;
use crate::traffic::{compare_reports, read_report, Comparison, ConnReport};

static NEXT_LAB: AtomicUsize = AtomicUsize::new(0);
static NEXT_FILE: AtomicUsize = AtomicUsize::new(0);

/// Bound on any one helper command (`ip`, `ss`, `ethtool`, `lab.sh`).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Panics unless running as root: lab tests must fail loudly, never skip.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        panic!(
            "this test needs root (it creates network namespaces and attaches XDP); \
             euid is {euid}. Run it as root, e.g. through scripts/test.sh. It does not skip."
        );
    }
}

/// The repository root: `LOUPE_REPO`, or the parent of this crate's directory.
pub fn repo_root() -> PathBuf {
    if let Some(r) = std::env::var_os("LOUPE_REPO") {
        return PathBuf::from(r);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent")
        .to_path_buf()
}

/// The Python of the venv scripts/setup.sh makes for the post-quantum TLS peers, and the
/// peer script (`bench/tests/tls_peer.py`: an origin or a client on OpenSSL 3.5+).
pub fn tls_peer_command() -> Result<[PathBuf; 2]> {
    let root = repo_root();
    let python = root.join("target/tls-peer-venv/bin/python");
    if !python.exists() {
        bail!(
            "{} is missing: run scripts/setup.sh (it makes the venv with pyOpenSSL on the cryptography wheel's OpenSSL)",
            python.display()
        );
    }
    Ok([python, root.join("bench/tests/tls_peer.py")])
}

pub fn lab_script() -> PathBuf {
    repo_root().join("scripts").join("lab.sh")
}

/// The cargo profile directory holding the workspace binaries: an integration test runs
/// from `target/<profile>/deps/`, a binary from `target/<profile>/`.
pub fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the current executable")?;
    let dir = exe.parent().context("executable has no directory")?;
    Ok(if dir.file_name() == Some(OsStr::new("deps")) {
        dir.parent().context("deps/ has no parent")?.to_path_buf()
    } else {
        dir.to_path_buf()
    })
}

/// A workspace binary (`loupe`, `loupe-bench`, `loupectl`) built in the same profile.
pub fn binary(name: &str) -> Result<PathBuf> {
    let path = bin_dir()?.join(name);
    if !path.is_file() {
        bail!(
            "{name} not found at {}: build the workspace first (cargo build --release --workspace)",
            path.display()
        );
    }
    Ok(path)
}

/// The three namespaces of a lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ns {
    Client,
    App,
    Server,
}

impl Ns {
    fn suffix(self) -> &'static str {
        match self {
            Ns::Client => "client",
            Ns::App => "app",
            Ns::Server => "server",
        }
    }
}

/// Lab addresses (DESIGN.md): the client and the eight server addresses.
pub const CLIENT_ADDR: &str = "198.18.0.1";
pub const SERVER_ADDRS: [&str; 8] = [
    "198.18.0.2",
    "198.18.0.3",
    "198.18.0.4",
    "198.18.0.5",
    "198.18.0.6",
    "198.18.0.7",
    "198.18.0.8",
    "198.18.0.9",
];

/// What joins the lab's two app ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Middle {
    /// A Linux bridge enslaving in0 and out0: the baseline path without loupe.
    KernelBridge,
    /// `loupe run --state-dir … --log-dir … ARGS` in the app namespace.
    Loupe { args: Vec<String> },
}

impl Middle {
    /// The middle the wire tests run against: loupe, unless `LOUPE_TEST_MIDDLE=bridge`
    /// asks for the kernel bridge (to tell a harness problem from a loupe problem).
    pub fn for_tests() -> Middle {
        match std::env::var("LOUPE_TEST_MIDDLE").as_deref() {
            Ok("loupe") => Middle::Loupe { args: Vec::new() },
            Ok("bridge") => Middle::KernelBridge,
            Ok(other) => panic!("LOUPE_TEST_MIDDLE must be 'bridge' or 'loupe', not '{other}'"),
            Err(_) => Middle::Loupe { args: Vec::new() },
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Middle::KernelBridge => "kernel-bridge",
            Middle::Loupe { .. } => "loupe",
        }
    }
}

/// A lab with a unique prefix; `lab.sh down` runs when it is dropped.
pub struct Lab {
    prefix: String,
    dir: PathBuf,
}

impl Lab {
    /// A lab with one queue per port.
    pub fn up() -> Result<Lab> {
        Lab::up_with_queues(1)
    }

    pub fn up_with_queues(queues: u32) -> Result<Lab> {
        Lab::up_with(queues, 1500)
    }

    /// A lab with `queues` queues per veth and every wire end at `mtu`.
    pub fn up_with(queues: u32, mtu: u32) -> Result<Lab> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("building a lab needs root (network namespaces, XDP)");
        }
        sweep_stale_labs();
        // `lt<pid>x<n>-`: unique per test process and lab; interface names inside the
        // namespaces are fixed (in0, out0, eth0), so the prefix length does not matter
        // for IFNAMSIZ.
        let prefix = format!("lt{}x{}-", std::process::id(), NEXT_LAB.fetch_add(1, Ordering::Relaxed));
        let dir = std::env::temp_dir().join(format!("loupe-{prefix}lab"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // Constructed before `up` so a half-built lab is torn down too.
        let lab = Lab { prefix, dir };
        lab.script(&["up", "--queues", &queues.to_string(), "--mtu", &mtu.to_string()])?;
        Ok(lab)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Scratch directory for logs, reports and configs; removed on drop unless the
    /// test panicked (then its path is printed so the logs can be read).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The namespace name, e.g. `lt1234x0-client`.
    pub fn ns(&self, ns: Ns) -> String {
        format!("{}{}", self.prefix, ns.suffix())
    }

    fn script(&self, args: &[&str]) -> Result<String> {
        let mut c = Command::new("bash");
        c.arg(lab_script()).args(args).args(["--prefix", &self.prefix]);
        // The build this process belongs to attaches the steering of a multi-queue lab.
        if let Ok(bench) = binary("loupe-bench") {
            c.env("LOUPE_BENCH", bench);
        }
        run_bounded(c, &self.dir, COMMAND_TIMEOUT)
            .and_then(|o| o.success())
            .with_context(|| format!("lab.sh {} --prefix {}", args.join(" "), self.prefix))
    }

    /// `lab.sh bridge on|off`.
    pub fn bridge(&self, on: bool) -> Result<()> {
        self.script(&["bridge", if on { "on" } else { "off" }]).map(drop)
    }

    /// `ip netns exec NS argv…` as a Command, for callers that need full control.
    pub fn command<S: AsRef<OsStr>>(&self, ns: Ns, argv: &[S]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec"]).arg(self.ns(ns)).args(argv);
        c
    }

    /// The TCP connections to or from `port` in `ns` that are open or closing (TIME-WAIT
    /// aside), one `ss` line each.
    pub fn open_connections(&self, ns: Ns, port: u16) -> Result<Vec<String>> {
        let filter = format!("( sport = :{port} or dport = :{port} )");
        let argv = [
            "ss",
            "-Htn",
            "state",
            "connected",
            "exclude",
            "time-wait",
            filter.as_str(),
        ];
        Ok(self
            .exec(ns, &argv)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect())
    }

    /// Waits until [`Lab::open_connections`] is empty, for at most `within`; returns how
    /// many were left.
    pub fn wait_for_closed(&self, ns: Ns, port: u16, within: Duration) -> Result<usize> {
        let deadline = Instant::now() + within;
        loop {
            let left = self.open_connections(ns, port)?.len();
            if left == 0 || Instant::now() >= deadline {
                return Ok(left);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs a command in a namespace and returns its stdout; fails with its stderr if
    /// it exits non-zero. Bounded by 60 s.
    pub fn exec<S: AsRef<OsStr>>(&self, ns: Ns, argv: &[S]) -> Result<String> {
        self.exec_output(ns, argv)?
            .success()
            .with_context(|| format!("in {}: {}", self.ns(ns), show_argv(argv)))
    }

    /// Like [`Lab::exec`] but returns the outcome whatever the exit status.
    pub fn exec_output<S: AsRef<OsStr>>(&self, ns: Ns, argv: &[S]) -> Result<CommandOutput> {
        self.exec_output_within(ns, argv, COMMAND_TIMEOUT)
    }

    /// [`Lab::exec_output`] for commands that run longer than a minute on purpose.
    pub fn exec_output_within<S: AsRef<OsStr>>(&self, ns: Ns, argv: &[S], timeout: Duration) -> Result<CommandOutput> {
        run_bounded(self.command(ns, argv), &self.dir, timeout)
            .with_context(|| format!("in {}: {}", self.ns(ns), show_argv(argv)))
    }

    /// Starts a background process in a namespace; it is stopped (SIGTERM, then
    /// SIGKILL) when the handle drops. stdout/stderr go to files in [`Lab::dir`].
    ///
    /// Runs under `ip netns exec`: a private mount namespace with the namespace's own
    /// /sys and the lab's /etc/netns files (the client's hosts), but no bpffs.
    pub fn spawn<S: AsRef<OsStr>>(&self, ns: Ns, name: &str, argv: &[S]) -> Result<NsProcess<'_>> {
        // `ip netns exec` execs the program after setns, so the pid is the program's.
        self.spawn_command(ns, name, self.command(ns, argv), &show_argv(argv))
    }

    /// Like [`Lab::spawn`] but joins only the network namespace (`nsenter --net`): the
    /// process keeps the host's mounts, so what it pins under /sys/fs/bpf is visible
    /// to others and outlives it. /sys/class/net then shows the host's interfaces.
    pub fn spawn_net_only<S: AsRef<OsStr>>(&self, ns: Ns, name: &str, argv: &[S]) -> Result<NsProcess<'_>> {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns(ns))).arg("--").args(argv);
        // nsenter execs the program too (no --fork), so the pid is the program's.
        self.spawn_command(ns, name, c, &show_argv(argv))
    }

    fn spawn_command(&self, ns: Ns, name: &str, mut c: Command, shown: &str) -> Result<NsProcess<'_>> {
        let n = NEXT_FILE.fetch_add(1, Ordering::Relaxed);
        let out = self.dir.join(format!("{name}-{n}.out"));
        let err = self.dir.join(format!("{name}-{n}.err"));
        // Logs are read by people and by tests: no colour codes.
        c.env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::fs::File::create(&err)?);
        let child = c
            .spawn()
            .with_context(|| format!("spawning in {}: {shown}", self.ns(ns)))?;
        Ok(NsProcess {
            child,
            name: format!("{name} [{}]", self.ns(ns)),
            out,
            err,
            status: None,
            _lab: PhantomData,
        })
    }

    /// The bpffs directory a loupe started by this lab pins its links and maps in:
    /// unique per lab, because the daemon's default (/sys/fs/bpf/loupe) is global.
    pub fn loupe_pin_dir(&self) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/{}loupe", self.prefix))
    }

    /// Where `lab.sh up --queues N` (N > 1) pinned the flow steering of `ns`'s end
    /// (client or server).
    pub fn steer_pin_dir(&self, ns: Ns) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/{}lab-steer/{}", self.prefix, ns.suffix()))
    }

    /// Waits until something listens on `addr` (or the wildcard on its port) in `ns`.
    pub fn wait_listening(&self, ns: Ns, addr: SocketAddr, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let port = addr.port();
        let wanted = [
            addr.to_string(),
            format!("0.0.0.0:{port}"),
            format!("*:{port}"),
            format!("[::]:{port}"),
        ];
        loop {
            let out = self.exec(ns, &["ss", "-Hltn"])?;
            let listening = out
                .lines()
                .filter_map(|l| l.split_whitespace().nth(3))
                .any(|local| wanted.iter().any(|w| w == local));
            if listening {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("nothing listens on {addr} in {} after {timeout:?}", self.ns(ns));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// MAC address of an interface in a namespace.
    pub fn mac(&self, ns: Ns, ifname: &str) -> Result<String> {
        let path = format!("/sys/class/net/{ifname}/address");
        // `ip netns exec` remounts /sys for the namespace, so cat sees its interfaces.
        Ok(self.exec(ns, &["cat", &path])?.trim().to_string())
    }

    /// Whether an XDP program is attached to an interface in a namespace.
    pub fn has_xdp(&self, ns: Ns, ifname: &str) -> Result<bool> {
        let out = self.exec(ns, &["ip", "-d", "link", "show", "dev", ifname])?;
        Ok(out.contains("prog/xdp") || out.contains("xdp/id:") || out.contains("xdpgeneric/id:"))
    }

    /// Puts `middle` between in0 and out0 and waits until it carries traffic.
    pub fn start(&self, middle: &Middle) -> Result<MiddleGuard<'_>> {
        match middle {
            Middle::KernelBridge => {
                self.bridge(true)?;
                Ok(MiddleGuard::Bridge { lab: self })
            }
            Middle::Loupe { args } => {
                let loupe = binary("loupe")?;
                let state = self.dir.join("state");
                let logs = self.dir.join("log");
                let pins = self.loupe_pin_dir();
                let socket = self.control_socket();
                // sun_path holds 107 bytes and a NUL: a longer TMPDIR would fail the bind.
                if socket.as_os_str().len() > 107 {
                    bail!(
                        "the control socket path {} is too long for a Unix socket",
                        socket.display()
                    );
                }
                std::fs::create_dir_all(&state)?;
                std::fs::create_dir_all(&logs)?;
                let mut argv: Vec<OsString> = vec![
                    loupe.clone().into(),
                    "run".into(),
                    "--state-dir".into(),
                    state.clone().into(),
                    "--log-dir".into(),
                    logs.clone().into(),
                    "--pin-dir".into(),
                    pins.clone().into(),
                    // Each lab its own control socket: tests run in parallel, and the
                    // default (/run/loupe/control.sock) is global.
                    "--control-socket".into(),
                    socket.clone().into(),
                ];
                argv.extend(args.iter().map(OsString::from));
                let proc = self.spawn_loupe(&argv, &state)?;
                Ok(MiddleGuard::Loupe {
                    proc,
                    loupe,
                    argv,
                    state_dir: state,
                    log_dir: logs,
                    pin_dir: pins,
                    control_socket: socket,
                })
            }
        }
    }

    /// The control socket a loupe started by this lab listens on (`--control-socket`):
    /// `<lab dir>/control.sock`. A filesystem path, so reachable from the host namespace.
    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    /// Starts `loupe run` (argv) and waits until it serves the wire and, when argv has
    /// `--control-socket PATH`, until that socket answers `status`.
    fn spawn_loupe(&self, argv: &[OsString], state: &Path) -> Result<NsProcess<'_>> {
        // A counters file left by an earlier daemon must not pass for readiness.
        let _ = std::fs::remove_file(state.join("counters.json"));
        // Network namespace only: under `ip netns exec` the daemon would see no
        // bpffs, and its pins (and `loupe counters`) would die with it.
        let mut proc = self.spawn_net_only(Ns::App, "loupe", argv)?;
        // Ready = XDP attached to both ports and the sockets registered.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = proc.try_status()? {
                bail!("loupe exited during start-up with {st}\n{}", proc.logs());
            }
            // The daemon writes its counters file once its AF_XDP sockets are
            // registered: from then on inspected traffic goes through it, not
            // around it (fail-open bridging while it starts).
            if state.join("counters.json").exists() && self.has_xdp(Ns::App, "in0")? && self.has_xdp(Ns::App, "out0")? {
                break;
            }
            if Instant::now() >= deadline {
                bail!("loupe did not attach XDP to in0 and out0 within 30 s\n{}", proc.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(socket) = control_socket_arg(argv) {
            // A socket file left by an earlier daemon refuses connections, so only the
            // new daemon's answer counts.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(st) = proc.try_status()? {
                    bail!("loupe exited during start-up with {st}\n{}", proc.logs());
                }
                match control_status(&socket) {
                    Ok(()) => break,
                    Err(e) if Instant::now() >= deadline => bail!(
                        "loupe's control socket {} did not answer status within 30 s (last: {e:#})\n{}",
                        socket.display(),
                        proc.logs()
                    ),
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        Ok(proc)
    }

    /// Runs the wire traffic tool: a `wire-server` in the server namespace on
    /// `spec.servers`, a `wire-client` in the client namespace, then checks both
    /// reports against each other. Errors carry both processes' logs.
    pub fn run_wire(&self, spec: &WireSpec) -> Result<WireOutcome> {
        let bench = binary("loupe-bench")?;
        let n = NEXT_FILE.fetch_add(1, Ordering::Relaxed);
        let server_report = self.dir.join(format!("wire-{n}-server.jsonl"));
        let client_report = self.dir.join(format!("wire-{n}-client.jsonl"));
        let secs = spec.timeout.as_secs().max(1);

        let mut sargv: Vec<OsString> = vec![bench.clone().into(), "wire-server".into()];
        for a in &spec.servers {
            sargv.push("--listen".into());
            sargv.push(a.to_string().into());
        }
        sargv.extend([
            "--report".into(),
            server_report.clone().into(),
            "--max-conns".into(),
            spec.connections.to_string().into(),
            // The server outlives the client a little so it never cuts it short.
            "--timeout-secs".into(),
            (secs + 10).to_string().into(),
        ]);
        let mut server = self.spawn(Ns::Server, "wire-server", &sargv)?;
        for a in &spec.servers {
            if let Err(e) = self.wait_listening(Ns::Server, *a, Duration::from_secs(10)) {
                bail!("{e:#}\n{}", server.logs());
            }
        }

        let mut cargv: Vec<OsString> = vec![bench.into(), "wire-client".into()];
        for t in spec.targets() {
            cargv.push("--connect".into());
            cargv.push(t.into());
        }
        cargv.extend([
            "--bytes".into(),
            spec.bytes.to_string().into(),
            "--reply-bytes".into(),
            spec.reply_bytes.to_string().into(),
            "--connections".into(),
            spec.connections.to_string().into(),
            "--report".into(),
            client_report.clone().into(),
            "--timeout-secs".into(),
            secs.to_string().into(),
        ]);
        if spec.half_close {
            cargv.push("--half-close".into());
        }
        let start = Instant::now();
        let mut client = self.spawn(Ns::Client, "wire-client", &cargv)?;
        let client_status = client.wait_timeout(spec.timeout + Duration::from_secs(15));
        let elapsed = start.elapsed();
        let server_status = server.wait_timeout(Duration::from_secs(20));
        let logs = || format!("{}{}", client.logs(), server.logs());

        let client_reports = read_report(&client_report).unwrap_or_default();
        let server_reports = read_report(&server_report).unwrap_or_default();
        let comparison = compare_reports(&client_reports, &server_reports);
        let client_status = client_status.map_err(|e| anyhow!("{e:#}\n{}", logs()))?;
        let server_status = server_status.map_err(|e| anyhow!("{e:#}\n{}", logs()))?;
        let comparison = match comparison {
            Ok(c) if c.connections == spec.connections => c,
            Ok(c) => bail!(
                "{} of {} connections verified\n{}",
                c.connections,
                spec.connections,
                logs()
            ),
            Err(m) => bail!("{m}\n{}", logs()),
        };
        if !client_status.success() || !server_status.success() {
            bail!(
                "wire-client exited {client_status}, wire-server exited {server_status}\n{}",
                logs()
            );
        }
        let moved = comparison.client_to_server_bytes + comparison.server_to_client_bytes;
        eprintln!(
            "wire: {} conn(s), {} up + {} down in {:.2}s ({:.2} Gbit/s both ways){}",
            comparison.connections,
            ByteSize(comparison.client_to_server_bytes),
            ByteSize(comparison.server_to_client_bytes),
            elapsed.as_secs_f64(),
            moved as f64 * 8.0 / elapsed.as_secs_f64().max(1e-9) / 1e9,
            if spec.half_close { ", half-close" } else { "" },
        );
        Ok(WireOutcome {
            comparison,
            client: client_reports,
            server: server_reports,
            elapsed,
        })
    }

    /// Starts nginx in `ns` serving `root` over plain HTTP on `listen`, single process,
    /// everything it writes kept under [`Lab::dir`].
    pub fn spawn_nginx_http(&self, ns: Ns, listen: SocketAddr, root: &Path) -> Result<NsProcess<'_>> {
        let n = NEXT_FILE.fetch_add(1, Ordering::Relaxed);
        let base = self.dir.join(format!("nginx-{n}"));
        std::fs::create_dir_all(base.join("tmp"))?;
        let b = base.display();
        // keepalive_requests: nginx closes a connection after 1,000 requests by default;
        // squid's bumped client connection is pinned to its server connection and dies with
        // it mid-request, so every keep-alive client would see that as an error.
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {b}/nginx.pid;\n\
             error_log {b}/error.log info;\nevents {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  default_type application/octet-stream;\n\
             \x20 client_body_temp_path {b}/tmp/body;\n  proxy_temp_path {b}/tmp/proxy;\n\
             \x20 fastcgi_temp_path {b}/tmp/fastcgi;\n  uwsgi_temp_path {b}/tmp/uwsgi;\n\
             \x20 scgi_temp_path {b}/tmp/scgi;\n\
             \x20 server {{ listen {listen}; root {}; location / {{ }} }}\n}}\n",
            root.display()
        );
        let conf_path = base.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let mut p = self.spawn(
            ns,
            "nginx",
            &[OsStr::new("nginx"), OsStr::new("-c"), conf_path.as_os_str()],
        )?;
        if let Err(e) = self.wait_listening(ns, listen, Duration::from_secs(10)) {
            let err_log = std::fs::read_to_string(base.join("error.log")).unwrap_or_default();
            let _ = p.stop();
            bail!("{e:#}\nnginx error.log:\n{err_log}\n{}", p.logs());
        }
        Ok(p)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        remove_pins(&self.loupe_pin_dir());
        if let Err(e) = self.script(&["down"]) {
            eprintln!("lab {}: teardown failed: {e:#}", self.prefix);
        }
        if std::thread::panicking() || std::env::var_os("LOUPE_KEEP_LAB_DIR").is_some() {
            eprintln!("lab {}: logs kept in {}", self.prefix, self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Removes labs left by test processes that no longer exist (killed by a timeout or
/// SIGKILL, so their Drop never ran). Best-effort.
fn sweep_stale_labs() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    let mut stale = std::collections::BTreeSet::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("lt") else {
            continue;
        };
        let Some((tag, _role)) = rest.split_once('-') else {
            continue;
        };
        let Some((pid, n)) = tag.split_once('x') else {
            continue;
        };
        if pid.is_empty() || n.is_empty() || !pid.bytes().chain(n.bytes()).all(|b| b.is_ascii_digit()) {
            continue;
        }
        if !Path::new("/proc").join(pid).exists() {
            stale.insert(format!("lt{tag}-"));
        }
    }
    for prefix in stale {
        remove_pins(Path::new(&format!("/sys/fs/bpf/{prefix}loupe")));
        let mut c = Command::new("bash");
        c.arg(lab_script()).args(["down", "--prefix", &prefix]);
        match run_bounded(c, &std::env::temp_dir(), COMMAND_TIMEOUT) {
            Ok(o) if o.status.success() => eprintln!("lab: removed stale lab {prefix}"),
            Ok(o) => eprintln!("lab: removing stale lab {prefix} failed: {}", o.stderr),
            Err(e) => eprintln!("lab: removing stale lab {prefix} failed: {e:#}"),
        }
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("loupe-{prefix}lab")));
    }
}

/// Runs a command in the host's namespaces (no `ip netns exec`), bounded by `timeout`;
/// the outcome whatever the exit status. For tools that need no lab network: `setpriv`
/// in front of loupectl, `tshark -r`, `openssl x509`.
pub fn run_host<S: AsRef<OsStr>>(argv: &[S], timeout: Duration) -> Result<CommandOutput> {
    let (program, args) = argv.split_first().context("an empty command line")?;
    let mut c = Command::new(program);
    c.args(args);
    run_bounded(c, &std::env::temp_dir(), timeout).with_context(|| show_argv(argv))
}

/// The PATH of `--control-socket PATH` in a `loupe run` argv.
fn control_socket_arg(argv: &[OsString]) -> Option<PathBuf> {
    argv.iter()
        .position(|a| a == "--control-socket")
        .and_then(|i| argv.get(i + 1))
        .map(PathBuf::from)
}

/// One `status` request on the control socket, straight in the protocol (not through
/// loupectl): Ok when the daemon answers it with `"ok":true`.
fn control_status(socket: &Path) -> Result<()> {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;

    let mut stream = UnixStream::connect(socket).with_context(|| format!("connecting to {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let request = RequestLine {
        v: PROTOCOL_VERSION,
        id: Some(1),
        request: Request::Status,
    };
    let mut line = serde_json::to_string(&request)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer)?;
    let reply: ReplyLine = serde_json::from_str(answer.trim_end())
        .with_context(|| format!("a reply that is not a reply line: {answer:?}"))?;
    if !reply.ok {
        bail!("status refused: {answer}");
    }
    Ok(())
}

/// What a finished command printed.
#[derive(Clone, Debug)]
pub struct CommandOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    /// stdout if the command succeeded, otherwise an error with its status and stderr.
    pub fn success(self) -> Result<String> {
        if self.status.success() {
            Ok(self.stdout)
        } else {
            bail!("exited {}: {}{}", self.status, self.stderr.trim_end(), {
                let o = self.stdout.trim_end();
                if o.is_empty() {
                    String::new()
                } else {
                    format!("\nstdout: {o}")
                }
            })
        }
    }
}

/// Runs a command to completion with a time bound; output goes through files in `dir`
/// so a chatty command can never block on a full pipe.
fn run_bounded(mut c: Command, dir: &Path, timeout: Duration) -> Result<CommandOutput> {
    let n = NEXT_FILE.fetch_add(1, Ordering::Relaxed);
    let out = dir.join(format!(".cmd-{}-{n}.out", std::process::id()));
    let err = dir.join(format!(".cmd-{}-{n}.err", std::process::id()));
    c.stdin(Stdio::null())
        .stdout(std::fs::File::create(&out)?)
        .stderr(std::fs::File::create(&err)?);
    let mut child = c.spawn().with_context(|| format!("spawning {c:?}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&out);
            let _ = std::fs::remove_file(&err);
            bail!("{c:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = std::fs::read_to_string(&out).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(&err);
    Ok(CommandOutput { status, stdout, stderr })
}

fn show_argv<S: AsRef<OsStr>>(argv: &[S]) -> String {
    argv.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A process running inside a lab namespace. It cannot outlive its [`Lab`], and it is
/// stopped when dropped.
pub struct NsProcess<'lab> {
    child: Child,
    name: String,
    out: PathBuf,
    err: PathBuf,
    status: Option<ExitStatus>,
    _lab: PhantomData<&'lab Lab>,
}

impl NsProcess<'_> {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if it has exited, without waiting.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Waits for exit; on timeout stops the process and fails.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_status()? {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                self.stop();
                bail!("{} did not exit within {timeout:?}; stopped it", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, up to 5 s to exit, then SIGKILL.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(st)) = self.try_status() {
            return Some(st);
        }
        // SAFETY: signalling our own child by pid; it has not been reaped yet, so the
        // pid cannot have been reused.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.try_status() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        self.status = self.child.wait().ok();
        self.status
    }

    /// SIGKILL, as an operator's `kill -9` or a crash would, and reaps the process.
    pub fn kill_hard(&mut self) -> Result<ExitStatus> {
        if let Some(st) = self.try_status()? {
            bail!("{} had already exited with {st}", self.name);
        }
        self.child.kill()?;
        let st = self.child.wait()?;
        self.status = Some(st);
        Ok(st)
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Both streams, labelled and trimmed to their last 8 KiB, for error messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for (what, text) in [("stdout", self.stdout()), ("stderr", self.stderr())] {
            let t = text.trim_end();
            if t.is_empty() {
                continue;
            }
            let cut = t.len().saturating_sub(8192);
            let cut = (cut..t.len()).find(|i| t.is_char_boundary(*i)).unwrap_or(t.len());
            let _ = writeln!(
                s,
                "--- {} {what}{}:\n{}",
                self.name,
                if cut > 0 { " (tail)" } else { "" },
                &t[cut..]
            );
        }
        s
    }
}

impl Drop for NsProcess<'_> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The running middle; dropping it takes it out of the wire.
// One guard lives per test; boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum MiddleGuard<'lab> {
    Bridge {
        lab: &'lab Lab,
    },
    Loupe {
        proc: NsProcess<'lab>,
        /// The `loupe` binary, for `counters`.
        loupe: PathBuf,
        /// How it was started, for [`MiddleGuard::restart`].
        argv: Vec<OsString>,
        state_dir: PathBuf,
        log_dir: PathBuf,
        pin_dir: PathBuf,
        /// `--control-socket`, for [`MiddleGuard::loupectl`].
        control_socket: PathBuf,
    },
}

impl<'lab> MiddleGuard<'lab> {
    /// Stops loupe (SIGTERM) and starts it again the same way, as an operator does to apply
    /// a changed configuration or trust store; the state and log directories stay.
    pub fn restart(&mut self, lab: &'lab Lab) -> Result<()> {
        match self {
            MiddleGuard::Bridge { .. } => bail!("a kernel bridge has no daemon to restart"),
            MiddleGuard::Loupe {
                proc, argv, state_dir, ..
            } => {
                proc.stop();
                *proc = lab.spawn_loupe(argv, state_dir)?;
                Ok(())
            }
        }
    }

    /// The daemon's process id (loupe), for its CPU and memory in /proc.
    pub fn pid(&self) -> Option<u32> {
        match self {
            MiddleGuard::Bridge { .. } => None,
            MiddleGuard::Loupe { proc, .. } => Some(proc.pid()),
        }
    }

    /// Fails if the middle died since it started (loupe crashed).
    pub fn check_alive(&mut self) -> Result<()> {
        match self {
            MiddleGuard::Bridge { .. } => Ok(()),
            MiddleGuard::Loupe { proc, .. } => match proc.try_status()? {
                None => Ok(()),
                Some(st) => bail!("loupe exited with {st}\n{}", proc.logs()),
            },
        }
    }

    /// loupe's `--log-dir` (decryption.jsonl lives there).
    pub fn log_dir(&self) -> Option<&Path> {
        match self {
            MiddleGuard::Bridge { .. } => None,
            MiddleGuard::Loupe { log_dir, .. } => Some(log_dir),
        }
    }

    pub fn state_dir(&self) -> Option<&Path> {
        match self {
            MiddleGuard::Bridge { .. } => None,
            MiddleGuard::Loupe { state_dir, .. } => Some(state_dir),
        }
    }

    /// loupe's `--pin-dir` on the host's bpffs.
    pub fn pin_dir(&self) -> Option<&Path> {
        match self {
            MiddleGuard::Bridge { .. } => None,
            MiddleGuard::Loupe { pin_dir, .. } => Some(pin_dir),
        }
    }

    /// The daemon's control socket (`--control-socket`); None for the bridge.
    pub fn control_socket(&self) -> Option<PathBuf> {
        match self {
            MiddleGuard::Bridge { .. } => None,
            MiddleGuard::Loupe { control_socket, .. } => Some(control_socket.clone()),
        }
    }

    /// `loupectl --socket SOCKET ARGS…` in the host namespace (the socket is a path),
    /// bounded by 60 s; the outcome whatever the exit status (0 ok, 1 the daemon replied
    /// with an error, 2 usage or connection error).
    pub fn loupectl(&self, args: &[&str]) -> Result<CommandOutput> {
        let socket = self.control_socket().context("a kernel bridge has no control socket")?;
        let mut c = Command::new(binary("loupectl")?);
        c.arg("--socket").arg(&socket).args(args);
        run_bounded(c, &std::env::temp_dir(), COMMAND_TIMEOUT).with_context(|| format!("loupectl {}", args.join(" ")))
    }

    /// `loupectl --socket SOCKET --json ARGS…`, its stdout parsed as one JSON value. Fails
    /// with the exit status, stdout and stderr unless loupectl exits 0.
    pub fn loupectl_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut argv = vec!["--json"];
        argv.extend_from_slice(args);
        let out = self.loupectl(&argv)?;
        let shown = || {
            format!(
                "loupectl --json {} exited {}\nstdout: {}\nstderr: {}",
                args.join(" "),
                out.status,
                out.stdout.trim_end(),
                out.stderr.trim_end()
            )
        };
        if !out.status.success() {
            bail!("{}", shown());
        }
        serde_json::from_str(&out.stdout).with_context(|| format!("stdout is not one JSON value\n{}", shown()))
    }

    /// `loupe counters --pin-dir … ARGS` output (None for the bridge).
    pub fn counters(&self, args: &[&str]) -> Result<Option<String>> {
        match self {
            MiddleGuard::Bridge { .. } => Ok(None),
            MiddleGuard::Loupe { loupe, pin_dir, .. } => {
                let mut c = Command::new(loupe);
                c.arg("counters").arg("--pin-dir").arg(pin_dir).args(args);
                run_bounded(c, &std::env::temp_dir(), COMMAND_TIMEOUT)?
                    .success()
                    .map(Some)
                    .context("loupe counters")
            }
        }
    }

    /// The XDP counters, read from the pinned map (works after the daemon died too).
    pub fn wire_counters(&self) -> Result<WireCounters> {
        match self {
            MiddleGuard::Bridge { .. } => bail!("a kernel bridge has no XDP counters"),
            MiddleGuard::Loupe { pin_dir, .. } => pinned_counters(pin_dir),
        }
    }

    /// SIGKILLs the daemon; the wire it attached stays (see README: fail-open/closed).
    pub fn kill_daemon(&mut self) -> Result<ExitStatus> {
        match self {
            MiddleGuard::Bridge { .. } => bail!("a kernel bridge is no daemon"),
            MiddleGuard::Loupe { proc, .. } => proc.kill_hard(),
        }
    }

    /// SIGTERMs the daemon and waits for it (SIGKILL after 5 s), as `systemctl stop` does.
    pub fn stop_daemon(&mut self) -> Result<ExitStatus> {
        match self {
            MiddleGuard::Bridge { .. } => bail!("a kernel bridge is no daemon"),
            MiddleGuard::Loupe { proc, .. } => proc.stop().context("loupe's exit status was lost"),
        }
    }

    /// loupe's output so far (empty for the bridge).
    pub fn logs(&self) -> String {
        match self {
            MiddleGuard::Bridge { .. } => String::new(),
            MiddleGuard::Loupe { proc, .. } => proc.logs(),
        }
    }
}

impl Drop for MiddleGuard<'_> {
    fn drop(&mut self) {
        match self {
            MiddleGuard::Bridge { lab } => {
                if let Err(e) = lab.bridge(false) {
                    eprintln!("lab {}: removing the bridge failed: {e:#}", lab.prefix);
                }
            }
            MiddleGuard::Loupe { proc, pin_dir, .. } => {
                proc.stop();
                // The daemon pins its XDP links so the wire outlives it; unpinning
                // releases them (and detaches XDP) instead of leaking them in bpffs.
                remove_pins(pin_dir);
            }
        }
    }
}

/// Unlinks a pin directory on bpffs (plain unlink/rmdir work there). Best-effort.
fn remove_pins(dir: &Path) {
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            eprintln!("lab: removing pins in {} failed: {e}", dir.display());
        }
    }
}

/// One wire-traffic run (see [`Lab::run_wire`]).
#[derive(Clone, Debug)]
pub struct WireSpec {
    /// Addresses the server listens on; the client spreads connections over them.
    pub servers: Vec<SocketAddr>,
    /// Connect to these names instead (e.g. `s1.lab:443`, resolved through the lab's
    /// hosts file); empty means the server addresses.
    pub connect_names: Vec<String>,
    pub bytes: u64,
    pub reply_bytes: u64,
    pub connections: usize,
    pub half_close: bool,
    /// Bound on the client's whole run.
    pub timeout: Duration,
}

impl Default for WireSpec {
    fn default() -> Self {
        WireSpec {
            servers: vec![SocketAddr::from(([198, 18, 0, 2], 443))],
            connect_names: Vec::new(),
            bytes: 1 << 20,
            reply_bytes: 1 << 20,
            connections: 1,
            half_close: false,
            timeout: Duration::from_secs(120),
        }
    }
}

impl WireSpec {
    fn targets(&self) -> Vec<String> {
        if self.connect_names.is_empty() {
            self.servers.iter().map(|a| a.to_string()).collect()
        } else {
            self.connect_names.clone()
        }
    }
}

/// A verified wire run.
#[derive(Clone, Debug)]
pub struct WireOutcome {
    pub comparison: Comparison,
    pub client: Vec<ConnReport>,
    pub server: Vec<ConnReport>,
    /// Wall time of the client process.
    pub elapsed: Duration,
}

/// An nginx TLS origin (see [`Lab::spawn_nginx_tls`]).
#[derive(Clone, Debug)]
pub struct NginxTls {
    pub listen: SocketAddr,
    pub root: PathBuf,
    /// PEM certificate file (the leaf, followed by intermediates for a full chain).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// nginx `ssl_protocols`; nginx 1.22's default leaves TLS 1.3 out.
    pub protocols: String,
    /// Offer HTTP/2 through ALPN (`listen … ssl http2`, the nginx 1.22 syntax).
    pub http2: bool,
    /// Accept `PUT /upload/NAME` and store the body as `<root>/upload/NAME` (WebDAV),
    /// so a test can hash what arrived.
    pub uploads: bool,
    /// More directives for the server block, e.g. `ssl_verify_client on; …`.
    pub server_directives: String,
}

impl NginxTls {
    /// TLS 1.2 and 1.3, HTTP/2 and HTTP/1.1, uploads on.
    pub fn new(listen: SocketAddr, root: &Path, cert: &Path, key: &Path) -> NginxTls {
        NginxTls {
            listen,
            root: root.to_path_buf(),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            protocols: "TLSv1.2 TLSv1.3".to_string(),
            http2: true,
            uploads: true,
            server_directives: String::new(),
        }
    }
}

impl Lab {
    /// Starts nginx in `ns` serving `spec.root` over TLS, single process, everything it
    /// writes kept under [`Lab::dir`] (its error.log is in the returned error if it does
    /// not come up).
    pub fn spawn_nginx_tls(&self, ns: Ns, spec: &NginxTls) -> Result<NsProcess<'_>> {
        let n = NEXT_FILE.fetch_add(1, Ordering::Relaxed);
        let base = self.dir.join(format!("nginx-tls-{n}"));
        std::fs::create_dir_all(base.join("tmp"))?;
        let b = base.display();
        let listen = format!("{} ssl{}", spec.listen, if spec.http2 { " http2" } else { "" });
        let uploads = if spec.uploads {
            // Unlimited body size; the body is spooled under client_body_temp_path and
            // renamed into place when complete.
            "location /upload/ { dav_methods PUT; create_full_put_path on; client_max_body_size 0; }"
        } else {
            ""
        };
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {b}/nginx.pid;\n\
             error_log {b}/error.log info;\nworker_rlimit_nofile 20000;\nevents {{ worker_connections 19000; }}\n\
             http {{\n  access_log {b}/access.log;\n  default_type application/octet-stream;\n\
             \x20 keepalive_requests 1000000;\n\
             \x20 client_body_temp_path {b}/tmp/body;\n  proxy_temp_path {b}/tmp/proxy;\n\
             \x20 fastcgi_temp_path {b}/tmp/fastcgi;\n  uwsgi_temp_path {b}/tmp/uwsgi;\n\
             \x20 scgi_temp_path {b}/tmp/scgi;\n\
             \x20 server {{\n    listen {listen};\n    ssl_certificate {};\n    ssl_certificate_key {};\n\
             \x20   ssl_protocols {};\n    root {};\n    location / {{ }}\n    {uploads}\n    {}\n  }}\n}}\n",
            spec.cert.display(),
            spec.key.display(),
            spec.protocols,
            spec.root.display(),
            spec.server_directives
        );
        let conf_path = base.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let mut p = self.spawn(
            ns,
            "nginx-tls",
            &[OsStr::new("nginx"), OsStr::new("-c"), conf_path.as_os_str()],
        )?;
        if let Err(e) = self.wait_listening(ns, spec.listen, Duration::from_secs(10)) {
            let err_log = std::fs::read_to_string(base.join("error.log")).unwrap_or_default();
            let _ = p.stop();
            bail!("{e:#}\nnginx error.log:\n{err_log}\n{}", p.logs());
        }
        Ok(p)
    }

    /// Starts `openssl s_server -accept LISTEN -cert CERT -key KEY -www EXTRA…` in `ns`
    /// (it answers any GET with a status page) and waits until it listens. `extra` picks
    /// versions and suites, e.g. `["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"]`.
    pub fn spawn_s_server(
        &self,
        ns: Ns,
        listen: SocketAddr,
        cert: &Path,
        key: &Path,
        extra: &[&str],
    ) -> Result<NsProcess<'_>> {
        let mut argv: Vec<OsString> = vec![
            "openssl".into(),
            "s_server".into(),
            "-accept".into(),
            listen.to_string().into(),
            "-cert".into(),
            cert.into(),
            "-key".into(),
            key.into(),
            "-www".into(),
        ];
        argv.extend(extra.iter().map(OsString::from));
        let mut p = self.spawn(ns, "s_server", &argv)?;
        if let Err(e) = self.wait_listening(ns, listen, Duration::from_secs(10)) {
            let _ = p.stop();
            bail!("{e:#}\n{}", p.logs());
        }
        Ok(p)
    }
}
