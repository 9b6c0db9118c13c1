//! loupectl: drives a running loupe over its control socket.
//!
//! Exit codes: 0 success; 1 the daemon replied with an error; 2 usage or connection
//! error.

mod render;
mod top;

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use loupe_control::client::{ClientError, ControlClient};
use loupe_control::config::Cidr;
use loupe_control::protocol::{
    CaptureFilter, CaptureLeg, Request, SessionFilter, DEFAULT_CAPTURE_BYTES, DEFAULT_SOCKET,
};

#[derive(Debug, Parser)]
#[command(name = "loupectl", version, about = "Drive a running loupe over its control socket")]
struct Cli {
    /// The control socket [default: $LOUPE_SOCKET, else /run/loupe/control.sock].
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Print the daemon's result as JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Daemon, ports and workers.
    Status,
    /// List sessions, newest first.
    Sessions(SessionsArgs),
    /// Everything about one session.
    Session { id: u64 },
    /// All counters.
    Counters,
    /// The counters in Prometheus' text format (what `[metrics] listen` serves).
    Metrics,
    /// Check, load or show the policy.
    #[command(subcommand)]
    Policy(PolicyVerb),
    /// Change a decryption profile at run time.
    #[command(subcommand)]
    Profile(ProfileVerb),
    /// The trust store: CA and pinned server certificates.
    #[command(subcommand)]
    Trust(TrustVerb),
    /// Hosts excluded from decryption after failures.
    #[command(subcommand)]
    Exclusions(ExclusionsVerb),
    /// The decryption log, and the HTTP events of the EVE log.
    #[command(subcommand)]
    Log(LogVerb),
    /// Packet capture of inspected flows.
    #[command(subcommand)]
    Capture(CaptureVerb),
    /// Content signatures (`[inspection] rules`): reload, show, per-rule hits.
    #[command(subcommand)]
    Rules(RulesVerb),
    /// A live view: sessions and flows per second, throughput each way, worker load,
    /// the top SNIs and HTTP hosts, the latest failures with their diagnosis. Keys: q,
    /// Esc or Ctrl-C quit; Up and Down pick the failure whose diagnosis is shown.
    Top {
        /// Seconds between refreshes (0.2 to 60).
        #[arg(long, value_name = "SECONDS", default_value = "1", value_parser = top::parse_interval)]
        interval: std::time::Duration,
    },
    /// Writes loupectl's man pages and shell completions to DIR (scripts/package.sh).
    #[command(hide = true)]
    GenerateDocs {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum RulesVerb {
    /// Read the rule files again and load them; sessions go on.
    Load,
    /// What loaded, per file, and every rule skipped with its file, line and reason.
    Show,
    /// Matches per signature since the rules were loaded.
    Stats,
}

#[derive(Debug, Args)]
struct SessionsArgs {
    /// Server name: exact or `*.example.com`.
    #[arg(long)]
    sni: Option<String>,
    /// Client address block (CIDR).
    #[arg(long, value_name = "CIDR")]
    src: Option<String>,
    /// Server address block (CIDR).
    #[arg(long, value_name = "CIDR")]
    dst: Option<String>,
    /// Session state (`handshake`, `decrypting`, `spliced`, …).
    #[arg(long)]
    state: Option<String>,
    /// At most this many (default 100).
    #[arg(long)]
    limit: Option<usize>,
}

#[derive(Debug, Subcommand)]
enum PolicyVerb {
    /// Validate a policy file without loading it.
    Check { file: PathBuf },
    /// Load a policy file into the running daemon.
    Load { file: PathBuf },
    /// The policy in force, with rule hits.
    Show,
}

#[derive(Debug, Subcommand)]
enum ProfileVerb {
    /// `profile set NAME KEY=VALUE…` (also KEY+=VALUE, KEY-=VALUE for lists).
    Set {
        name: String,
        #[arg(required = true, value_name = "KEY=VALUE")]
        changes: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum TrustVerb {
    /// Trusted CAs and pinned certificates.
    List,
    /// Trust a certificate (PEM file), optionally pinned to one host.
    Import {
        file: PathBuf,
        #[arg(long)]
        host: Option<String>,
    },
    /// Remove a trusted certificate (or only its pin to one host).
    Remove {
        sha256: String,
        #[arg(long)]
        host: Option<String>,
    },
    /// Show a server's certificate chain and why it fails verification; --accept trusts it.
    Fetch {
        /// HOST, HOST:PORT or [IPv6]:PORT (port default 443).
        target: String,
        #[arg(long)]
        sni: Option<String>,
        #[arg(long)]
        accept: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ExclusionsVerb {
    /// The servers excluded, why and until when.
    List,
    /// Clear one host's exclusion, or all.
    Clear { host: Option<String> },
}

#[derive(Debug, Subcommand)]
enum LogVerb {
    /// The last records of the decryption log (`decryption.jsonl`, one per TLS
    /// session), or with --http the last HTTP transactions of the EVE log (`eve.json`),
    /// optionally following new ones.
    Tail {
        /// Keep printing records as they are appended.
        #[arg(short, long)]
        follow: bool,
        /// Only failures. Decryption log: blocked or aborted sessions and sessions with
        /// an error. With --http: transactions loupe blocked (`loupe.blocked`) or
        /// answered with status 400 or more.
        #[arg(long)]
        errors: bool,
        /// Only this server name, exact or `*.example.com`. Decryption log: the TLS SNI;
        /// with --http: the request's host (`http.hostname`).
        #[arg(long, value_name = "NAME")]
        sni: Option<String>,
        /// Records to print from the end of the log.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
        /// The EVE log's `http` events (one per transaction) instead of the decryption
        /// log; --json prints each EVE object unchanged.
        #[arg(short = 'H', long)]
        http: bool,
    },
    /// Reopen the log files (decryption log, eve.json, key log) after log rotation
    /// renamed them: lines written so far are in the old files, later ones in new files
    /// at the same paths. Also done on SIGHUP.
    Reopen,
}

#[derive(Debug, Subcommand)]
enum CaptureVerb {
    /// Start capturing inspected flows to a pcap file.
    Start {
        #[arg(long)]
        host: Option<IpAddr>,
        #[arg(long)]
        port: Option<u16>,
        #[arg(long)]
        sni: Option<String>,
        /// Only one leg: `client` (client ↔ loupe) or `server` (loupe ↔ server); Wireshark
        /// decrypts a one-leg capture with the key log of `export = ["keylog"]`.
        #[arg(long, value_enum)]
        leg: Option<CaptureLeg>,
        /// Default: ./loupe-capture-<unix time>.pcap
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = DEFAULT_CAPTURE_BYTES)]
        max_bytes: u64,
    },
    /// Stop the capture; says how many frames went in and how many were left out.
    Stop,
}

/// Why loupectl failed, and its exit code.
enum Failure {
    /// Exit 2: bad arguments, unreadable files, no connection.
    Usage(String),
    /// Exit 1: the daemon said no.
    Refused(String),
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Failure {
        match error {
            ClientError::Refused(error) => Failure::Refused(error.message),
            other => Failure::Usage(other.to_string()),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Refused(message)) => {
            eprintln!("loupectl: {message}");
            ExitCode::from(1)
        }
        Err(Failure::Usage(message)) => {
            eprintln!("loupectl: {message}");
            ExitCode::from(2)
        }
    }
}

fn socket_path(cli: &Cli) -> PathBuf {
    cli.socket
        .clone()
        .or_else(|| {
            std::env::var_os("LOUPE_SOCKET")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// How a result is shown to people.
type Renderer = Box<dyn Fn(&Value) -> String>;

fn run(cli: Cli) -> Result<(), Failure> {
    let socket = socket_path(&cli);
    let json = cli.json;
    let verb = match cli.verb {
        Verb::Log(LogVerb::Reopen) => Verb::Log(LogVerb::Reopen),
        Verb::Log(tail) => return log_tail(&socket, log_tail_request(tail), json),
        Verb::GenerateDocs { out } => return generate_docs(&out),
        Verb::Top { interval } => return top::run(&socket, interval).map_err(Failure::Usage),
        verb => verb,
    };
    let (request, renderer) = request_for(verb)?;
    let mut client = ControlClient::connect(&socket)?;
    let result = client.call(request)?;
    let text = if json {
        let mut text = serde_json::to_string_pretty(&result).unwrap_or_else(|_| result.to_string());
        text.push('\n');
        text
    } else {
        renderer(&result)
    };
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
    Ok(())
}

fn log_tail(socket: &Path, request: Request, json: bool) -> Result<(), Failure> {
    let mut client = ControlClient::connect(socket)?;
    let mut stdout = std::io::stdout();
    client.stream(request, |record| {
        let line = if json {
            record.to_string()
        } else {
            render::log_record(&record)
        };
        // Stop when stdout is gone (`| head`).
        writeln!(stdout, "{line}").and_then(|()| stdout.flush()).is_ok()
    })?;
    Ok(())
}

fn generate_docs(out: &Path) -> Result<(), Failure> {
    use clap::CommandFactory;
    let generated = loupe_control::docs::generate(Cli::command(), out).map_err(|e| {
        Failure::Usage(format!(
            "writing the man pages and completions to {}: {e}",
            out.display()
        ))
    })?;
    for path in generated.man_pages.iter().chain(&generated.completions) {
        println!("{}", path.display());
    }
    Ok(())
}

fn log_tail_request(verb: LogVerb) -> Request {
    match verb {
        LogVerb::Tail {
            follow,
            errors,
            sni,
            lines,
            http,
        } => Request::LogTail {
            follow,
            errors,
            sni,
            lines,
            http,
        },
        LogVerb::Reopen => Request::LogReopen,
    }
}

/// The request a verb sends, and how its result is shown.
fn request_for(verb: Verb) -> Result<(Request, Renderer), Failure> {
    let generic: Renderer = Box::new(render::generic);
    Ok(match verb {
        Verb::Status => (Request::Status, Box::new(render::status)),
        Verb::Sessions(args) => {
            let filter = SessionFilter {
                sni: args.sni,
                src: args.src.as_deref().map(|c| parse_cidr("--src", c)).transpose()?,
                dst: args.dst.as_deref().map(|c| parse_cidr("--dst", c)).transpose()?,
                state: args.state,
                limit: args.limit,
            };
            (Request::Sessions { filter }, Box::new(render::sessions))
        }
        Verb::Session { id } => (Request::Session { session: id }, Box::new(render::session)),
        Verb::Counters => (Request::Counters, generic),
        Verb::Metrics => (
            Request::Metrics,
            Box::new(|v: &Value| v["text"].as_str().unwrap_or_default().to_string()),
        ),
        Verb::Policy(PolicyVerb::Check { file }) => (
            Request::PolicyCheck { file: absolute(&file)? },
            Box::new(render::policy_check),
        ),
        Verb::Policy(PolicyVerb::Load { file }) => (
            Request::PolicyLoad { file: absolute(&file)? },
            Box::new(render::policy_load),
        ),
        Verb::Policy(PolicyVerb::Show) => (Request::PolicyShow, Box::new(render::policy_show)),
        Verb::Profile(ProfileVerb::Set { name, changes }) => {
            if let Some(bad) = changes.iter().find(|c| !c.contains('=')) {
                return Err(Failure::Usage(format!("{bad:?} is not KEY=VALUE")));
            }
            let shown = name.clone();
            (
                Request::ProfileSet { profile: name, changes },
                Box::new(move |v: &Value| render::profile_set(&shown, v)),
            )
        }
        Verb::Trust(TrustVerb::List) => (Request::TrustList, Box::new(render::trust_list)),
        Verb::Trust(TrustVerb::Import { file, host }) => {
            let pem = std::fs::read_to_string(&file)
                .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", file.display())))?;
            (Request::TrustImport { pem, host }, generic)
        }
        Verb::Trust(TrustVerb::Remove { sha256, host }) => (Request::TrustRemove { sha256, host }, generic),
        Verb::Trust(TrustVerb::Fetch { target, sni, accept }) => {
            let (host, port) = parse_host_port(&target).map_err(Failure::Usage)?;
            (
                Request::TrustFetch {
                    host,
                    port,
                    sni,
                    accept,
                },
                Box::new(render::trust_fetch),
            )
        }
        Verb::Rules(RulesVerb::Load) => (Request::RulesLoad, Box::new(render::rules_load)),
        Verb::Rules(RulesVerb::Show) => (Request::RulesShow, Box::new(render::rules_show)),
        Verb::Rules(RulesVerb::Stats) => (Request::RulesStats, Box::new(render::rules_stats)),
        Verb::Exclusions(ExclusionsVerb::List) => (Request::ExclusionsList, generic),
        Verb::Exclusions(ExclusionsVerb::Clear { host }) => (Request::ExclusionsClear { host }, generic),
        Verb::Log(LogVerb::Reopen) => (Request::LogReopen, Box::new(render::log_reopen)),
        Verb::GenerateDocs { .. } => return Err(Failure::Usage("generate-docs needs no daemon".into())),
        Verb::Top { .. } => return Err(Failure::Usage("top is a view, not a request".into())),
        Verb::Log(tail) => (
            log_tail_request(tail),
            Box::new(|v: &Value| format!("{}\n", render::log_record(v))),
        ),
        Verb::Capture(CaptureVerb::Start {
            host,
            port,
            sni,
            leg,
            out,
            max_bytes,
        }) => {
            let out = match out {
                Some(out) => out,
                None => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    PathBuf::from(format!("loupe-capture-{now}.pcap"))
                }
            };
            (
                Request::CaptureStart {
                    filter: CaptureFilter { host, port, sni, leg },
                    out: absolute(&out)?,
                    max_bytes,
                },
                Box::new(render::capture_start),
            )
        }
        Verb::Capture(CaptureVerb::Stop) => (Request::CaptureStop, Box::new(render::capture_stop)),
    })
}

fn absolute(path: &Path) -> Result<PathBuf, Failure> {
    std::path::absolute(path).map_err(|e| Failure::Usage(format!("cannot make {} absolute: {e}", path.display())))
}

fn parse_cidr(option: &str, text: &str) -> Result<Cidr, Failure> {
    text.parse()
        .map_err(|e| Failure::Usage(format!("{option} {text:?}: {e}")))
}

/// `HOST`, `HOST:PORT`, `[V6]`, `[V6]:PORT` or a bare IPv6 address; the port defaults
/// to 443.
fn parse_host_port(text: &str) -> Result<(String, u16), String> {
    let bad_port = |port: &str| format!("{text:?}: {port:?} is not a port (1-65535)");
    let parse_port = |port: &str| match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad_port(port)),
        Ok(port) => Ok(port),
    };
    if let Some(rest) = text.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(format!("{text:?}: missing ']'"));
        };
        if host.is_empty() {
            return Err(format!("{text:?}: empty host"));
        }
        return match after {
            "" => Ok((host.to_string(), 443)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host.to_string(), parse_port(port)?)),
                None => Err(format!("{text:?}: expected ':PORT' after ']'")),
            },
        };
    }
    if text.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok((text.to_string(), 443));
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => (host, parse_port(port)?),
        None => (text, 443),
    };
    if host.is_empty() || host.contains(':') {
        return Err(format!("{text:?} is not HOST, HOST:PORT or [IPv6]:PORT"));
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port() {
        let ok = |text: &str| parse_host_port(text).unwrap();
        assert_eq!(ok("self.lab"), ("self.lab".into(), 443));
        assert_eq!(ok("self.lab:8443"), ("self.lab".into(), 8443));
        assert_eq!(ok("198.18.0.2:444"), ("198.18.0.2".into(), 444));
        assert_eq!(ok("[2001:db8::2]:8443"), ("2001:db8::2".into(), 8443));
        assert_eq!(ok("[2001:db8::2]"), ("2001:db8::2".into(), 443));
        assert_eq!(ok("2001:db8::2"), ("2001:db8::2".into(), 443));
        for bad in [
            "",
            ":443",
            "a.lab:",
            "a.lab:0",
            "a.lab:65536",
            "a.lab:x",
            "[::1",
            "[]:1",
            "[::1]x",
            "a:b:c",
        ] {
            assert!(parse_host_port(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn arguments_become_requests() {
        let parse = |args: &[&str]| {
            let cli = Cli::try_parse_from(std::iter::once("loupectl").chain(args.iter().copied())).unwrap();
            request_for(cli.verb).ok().map(|(request, _)| request)
        };
        assert_eq!(
            parse(&["trust", "fetch", "[::1]:8443", "--accept"]),
            Some(Request::TrustFetch {
                host: "::1".into(),
                port: 8443,
                sni: None,
                accept: true
            })
        );
        let Some(Request::PolicyCheck { file }) = parse(&["policy", "check", "p.toml"]) else {
            panic!("not a policy check");
        };
        assert!(file.is_absolute() && file.ends_with("p.toml"), "{}", file.display());
        assert!(parse(&["profile", "set", "default", "nonsense"]).is_none());
        assert!(parse(&["sessions", "--src", "not-a-cidr"]).is_none());
        assert_eq!(
            parse(&["sessions", "--dst", "198.18.0.2/32", "--limit", "5"]),
            Some(Request::Sessions {
                filter: SessionFilter {
                    dst: Some("198.18.0.2/32".parse().unwrap()),
                    limit: Some(5),
                    ..SessionFilter::default()
                }
            })
        );
        let Some(Request::CaptureStart { out, max_bytes, .. }) = parse(&["capture", "start"]) else {
            panic!("not a capture start");
        };
        assert!(out.is_absolute() && out.to_string_lossy().ends_with(".pcap"));
        assert_eq!(max_bytes, DEFAULT_CAPTURE_BYTES);
        assert!(Cli::try_parse_from(["loupectl", "profile", "set", "default"]).is_err());
    }

    #[test]
    fn log_tail_arguments() {
        let parse = |args: &[&str]| {
            let cli = Cli::try_parse_from(std::iter::once("loupectl").chain(args.iter().copied())).unwrap();
            request_for(cli.verb).ok().map(|(request, _)| request)
        };
        assert_eq!(
            parse(&["log", "tail"]),
            Some(Request::LogTail {
                follow: false,
                errors: false,
                sni: None,
                lines: 20,
                http: false,
            })
        );
        let http = Some(Request::LogTail {
            follow: true,
            errors: true,
            sni: Some("*.example".into()),
            lines: 5,
            http: true,
        });
        assert_eq!(
            parse(&[
                "log",
                "tail",
                "--http",
                "-f",
                "--errors",
                "--sni",
                "*.example",
                "-n",
                "5"
            ]),
            http
        );
        assert_eq!(
            parse(&["log", "tail", "-Hf", "--errors", "--sni=*.example", "-n5"]),
            http
        );
        // --json is global: it may come after the verb.
        let cli = Cli::try_parse_from(["loupectl", "log", "tail", "-H", "--json"]).unwrap();
        assert!(cli.json);
    }
}
