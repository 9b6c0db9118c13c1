use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use loupe_control::config::Config;
use loupe_dataplane::daemon::{self, InvalidConfiguration};
use loupe_dataplane::policy::ExclusionCache;
use loupe_dataplane::tls::ca::{self, CaKeyType, CaRole, DecryptionCa};
use loupe_dataplane::tls::trust::{self, ImportedEntry, ImportedTrust, TrustKind};
use loupe_dataplane::wire;

#[derive(Parser)]
#[command(name = "loupe", version, about = "loupe: kernel-bypass TLS inspection appliance")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

use loupe_dataplane::wire::DEFAULT_PIN_DIR;

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (lab defaults without --config).
    Run {
        #[arg(long)]
        config: Option<PathBuf>,
        /// State (CA, trust store, exclusions); default: `[paths] state_dir`, else /var/lib/loupe.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Logs (decryption.jsonl); default: `[paths] log_dir`, else /var/log/loupe.
        #[arg(long)]
        log_dir: Option<PathBuf>,
        /// Where the XDP links and maps are pinned (bpffs).
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Also trust the CA certificates in FILE (PEM bundle or DER) for upstream validation,
        /// on top of the system roots and the configured ones. Repeatable.
        #[arg(long = "trust-ca", value_name = "FILE")]
        trust_ca: Vec<PathBuf>,
        /// The control socket loupectl talks to; default: `[control] socket`, else
        /// /run/loupe/control.sock.
        #[arg(long, value_name = "PATH")]
        control_socket: Option<PathBuf>,
    },
    /// The decryption CA: create it, or print its certificate for clients to trust.
    Ca {
        #[command(subcommand)]
        action: CaCommand,
    },
    /// Imported certificates: CAs trusted for every name, or a server's own certificate
    /// pinned for its host. Kept under the state directory; works without a running daemon.
    Trust {
        #[command(subcommand)]
        action: TrustCommand,
    },
    /// Validate a configuration file without starting anything: the file, the category
    /// files, the CA and certificate files it names, and every profile against BoringSSL.
    Check { file: PathBuf },
    /// Print the XDP counters from the pinned maps (works without a running daemon).
    Counters {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Remove the XDP programs from the ports: the wire stops passing traffic.
    Detach {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Writes loupe's man pages and shell completions to DIR (scripts/package.sh).
    #[command(hide = true)]
    GenerateDocs {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// `loupe run`'s exit status when the configuration file cannot be read or is invalid:
/// sysexits' EX_CONFIG, which systemd shows as `status=78/CONFIG`. The unit lists it in
/// `RestartPreventExitStatus=`: a broken file fails the unit once, with the `file:line`
/// error in the journal, instead of being restarted over and over.
const EXIT_CONFIG: u8 = 78;

#[derive(Subcommand)]
enum CaCommand {
    /// Generate the decryption CA (and the untrusted CA) into the state directory.
    Init {
        #[arg(long, default_value = "/var/lib/loupe")]
        state_dir: PathBuf,
        /// RSA 2048 instead of ECDSA P-256, for clients that cannot validate ECDSA chains.
        #[arg(long)]
        rsa: bool,
        /// Replace an existing CA (clients trusting the old one must be given the new one).
        #[arg(long)]
        force: bool,
    },
    /// Print the decryption CA certificate (PEM) for clients to trust.
    Show {
        #[arg(long, default_value = "/var/lib/loupe")]
        state_dir: PathBuf,
        /// Show the CA this configuration names in `[ca]` (if it names one).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TrustCommand {
    /// Import the certificates of FILE (PEM bundle or DER). Without --host each must be a
    /// CA and is trusted for every name; with --host the first one (a server's own
    /// certificate, self-signed for instance) is trusted only when that host presents it.
    Import {
        file: PathBuf,
        /// Pin the certificate for this host (DNS name or IP address) instead.
        #[arg(long, value_name = "NAME")]
        host: Option<String>,
        #[arg(long, default_value = "/var/lib/loupe")]
        state_dir: PathBuf,
    },
    /// List the imported certificates.
    List {
        #[arg(long, default_value = "/var/lib/loupe")]
        state_dir: PathBuf,
        /// A JSON array of the entries, as stored in the index.
        #[arg(long)]
        json: bool,
    },
    /// Remove an imported certificate by its SHA-256 (or a unique prefix of it).
    Remove {
        sha256: String,
        /// Only remove the pin for this host, keeping the others.
        #[arg(long, value_name = "NAME")]
        host: Option<String>,
        #[arg(long, default_value = "/var/lib/loupe")]
        state_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOUPE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("loupe: {err:#}");
            if err.is::<InvalidConfiguration>() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            config,
            state_dir,
            log_dir,
            pin_dir,
            trust_ca,
            control_socket,
        } => {
            let parsed = match &config {
                Some(file) => Config::load(file).map_err(|e| InvalidConfiguration(e.into()))?,
                None => Config::default(),
            };
            let state_dir = state_dir
                .or_else(|| parsed.paths.state_dir.clone())
                .unwrap_or_else(|| PathBuf::from("/var/lib/loupe"));
            let log_dir = log_dir
                .or_else(|| parsed.paths.log_dir.clone())
                .unwrap_or_else(|| PathBuf::from("/var/log/loupe"));
            daemon::run(daemon::RunOptions {
                config: parsed,
                config_file: config,
                state_dir,
                log_dir,
                pin_dir,
                trust_ca,
                control_socket,
            })
        }
        Command::Ca { action } => ca(action),
        Command::Trust { action } => trust(action),
        Command::Check { file } => {
            let config = Config::load(&file)?;
            // The signature report first: it names every rule file that cannot be read,
            // which also fails the policy build below.
            if !config.inspection.rules.is_empty() {
                report_signatures(&config.inspection)?;
            }
            let policy = daemon::build_policy(&config, &[], None, 1, ExclusionCache::default())
                .with_context(|| format!("{}", file.display()))?;
            let bypassed = policy.xdp_bypasses(&config.dataplane.inspect_ports);
            println!(
                "{}: ok ({} rules, {} url rules, {} profiles; {} no-decrypt entries enforced in XDP)",
                file.display(),
                config.rules.len(),
                config.url_rules.len(),
                config.profiles.len().max(1),
                bypassed.len()
            );
            for note in daemon::check_notes(&config) {
                println!("{note}");
            }
            Ok(())
        }
        Command::Counters { pin_dir, json } => {
            let c = wire::pinned_counters(&pin_dir)?;
            if json {
                println!("{}", c.to_json());
            } else {
                for (name, value) in c.fields() {
                    println!("{name:<20} {value}");
                }
            }
            Ok(())
        }
        Command::Detach { pin_dir } => {
            wire::detach(&pin_dir)?;
            println!("detached: the ports no longer pass traffic");
            Ok(())
        }
        Command::GenerateDocs { out } => {
            use clap::CommandFactory;
            let generated = loupe_control::docs::generate(Cli::command(), &out)
                .with_context(|| format!("writing the man pages and completions to {}", out.display()))?;
            for path in generated.man_pages.iter().chain(&generated.completions) {
                println!("{}", path.display());
            }
            Ok(())
        }
    }
}

fn ca(action: CaCommand) -> anyhow::Result<()> {
    match action {
        CaCommand::Init { state_dir, rsa, force } => {
            let key_type = if rsa { CaKeyType::Rsa2048 } else { CaKeyType::EcdsaP256 };
            let ca = DecryptionCa::init(&state_dir, CaRole::Decryption, key_type, force)?;
            // The untrusted CA is never shown to clients; keep an existing one unless forced.
            let untrusted_exists = ca::cert_path(&state_dir, CaRole::Untrusted).exists()
                || ca::key_path(&state_dir, CaRole::Untrusted).exists();
            if force || !untrusted_exists {
                DecryptionCa::init(&state_dir, CaRole::Untrusted, CaKeyType::EcdsaP256, force)?;
            }
            println!(
                "decryption CA written to {} (key {}, mode 0600)",
                ca::cert_path(&state_dir, CaRole::Decryption).display(),
                ca::key_path(&state_dir, CaRole::Decryption).display()
            );
            println!("SHA-256 fingerprint {}", ca.fingerprint_sha256());
            println!(
                "clients must trust it: `loupe ca show --state-dir {}` prints it",
                state_dir.display()
            );
            Ok(())
        }
        CaCommand::Show { state_dir, config } => {
            let configured = match &config {
                Some(file) => Config::load(file)?.ca,
                None => None,
            };
            let ca = match configured {
                Some(files) => DecryptionCa::from_pem_files(CaRole::Decryption, &files.cert, &files.key)?,
                None => DecryptionCa::load(&state_dir, CaRole::Decryption)?,
            };
            print!("{}", ca.cert_pem());
            Ok(())
        }
    }
}

fn trust(action: TrustCommand) -> anyhow::Result<()> {
    match action {
        TrustCommand::Import { file, host, state_dir } => {
            let report = ImportedTrust::import(&state_dir, &file, host.as_deref())?;
            // Only to look at what was stored; the import itself has succeeded.
            let stored = ImportedTrust::load(&state_dir).ok();
            for imported in &report.entries {
                let entry = &imported.entry;
                let what = describe(entry);
                if imported.added {
                    println!("imported: {what}");
                } else {
                    println!("already imported: {what}");
                }
                print_details(entry);
                let cert = stored.as_ref().and_then(|s| s.certificate(&entry.sha256));
                if let (Some(cert), Some(host)) = (cert, &entry.host) {
                    let names_host = if host.parse::<std::net::IpAddr>().is_ok() {
                        cert.check_ip_asc(host)
                    } else {
                        cert.check_host(host)
                    };
                    if names_host.ok() == Some(false) {
                        println!(
                            "  note: the certificate does not name {host}; it is trusted for {host} anyway, as pinned"
                        );
                    }
                }
                if let Some(cert) = cert {
                    if boring::asn1::Asn1Time::days_from_now(0).is_ok_and(|now| cert.not_after() < now) {
                        println!("  note: the certificate has expired ({})", entry.not_after);
                    }
                }
            }
            if report.ignored > 0 {
                println!(
                    "note: {} holds {} more certificate(s) after the first; only the first is pinned",
                    file.display(),
                    report.ignored
                );
            }
            println!(
                "stored in {}; `loupe run` loads it when it starts",
                trust::trust_dir(&state_dir).display()
            );
            Ok(())
        }
        TrustCommand::List { state_dir, json } => {
            let imported = ImportedTrust::load(&state_dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(imported.list())?);
                return Ok(());
            }
            if imported.is_empty() {
                println!(
                    "no imported certificates in {} (add one with `loupe trust import FILE`)",
                    imported.dir().display()
                );
                return Ok(());
            }
            let rows: Vec<[&str; 5]> = imported
                .list()
                .iter()
                .map(|e| {
                    [
                        e.kind.as_str(),
                        e.host.as_deref().unwrap_or("any"),
                        &e.not_after,
                        &e.sha256,
                        &e.subject,
                    ]
                })
                .collect();
            let header = ["KIND", "HOST", "NOT AFTER", "SHA-256", "SUBJECT"];
            let mut widths = header.map(str::len);
            for row in &rows {
                for (width, cell) in widths.iter_mut().zip(row) {
                    *width = (*width).max(cell.len());
                }
            }
            for row in std::iter::once(&header).chain(&rows) {
                let line: Vec<String> = row
                    .iter()
                    .zip(widths)
                    .map(|(cell, width)| format!("{cell:<width$}"))
                    .collect();
                println!("{}", line.join("  ").trim_end());
            }
            Ok(())
        }
        TrustCommand::Remove {
            sha256,
            host,
            state_dir,
        } => {
            for entry in ImportedTrust::remove(&state_dir, &sha256, host.as_deref())? {
                println!("removed: {}", describe(&entry));
                print_details(&entry);
            }
            Ok(())
        }
    }
}

/// `CA trusted for every name, CN=…` or `pinned for host h, CN=…`.
fn describe(entry: &ImportedEntry) -> String {
    let subject = if entry.subject.is_empty() {
        "(empty subject)"
    } else {
        &entry.subject
    };
    match (entry.kind, &entry.host) {
        (TrustKind::Pinned, Some(host)) => format!("pinned for host {host}: {subject}"),
        _ => format!("CA trusted for every name: {subject}"),
    }
}

fn print_details(entry: &ImportedEntry) {
    println!("  sha256     {}", entry.sha256);
    println!("  issuer     {}", entry.issuer);
    println!("  not after  {}", entry.not_after);
}

/// `loupe check`'s account of the signature files: how many rules each gave, and every
/// rule or file that was skipped, with file, line, sid and reason. Skipped rules do not
/// fail the check (the daemon loads the rest the same way); a file that cannot be read
/// does, as the configuration names something that is not there.
fn report_signatures(inspection: &loupe_control::config::Inspection) -> anyhow::Result<()> {
    use loupe_dataplane::inspect::signatures;
    let vars = signatures::rule_vars(&inspection.vars);
    let loaded = signatures::load_rule_files(&inspection.rules, &vars);
    let report = &loaded.report;
    let unsupported = report.skipped.iter().filter(|s| s.error.unsupported).count();
    println!(
        "signatures: {} loaded from {} files, {} skipped ({} unsupported, {} invalid){}",
        report.loaded(),
        report.files.len(),
        report.skipped.len(),
        unsupported,
        report.skipped.len() - unsupported,
        if report.unreadable.is_empty() {
            String::new()
        } else {
            format!(", {} unreadable", report.unreadable.len())
        }
    );
    for (file, count) in &report.files {
        println!("  {}: {count} rules", file.display());
    }
    for (what, why) in &report.unreadable {
        println!("error: {what}: {why}");
    }
    for skipped in &report.skipped {
        println!("skipped: {skipped}");
    }
    if !report.unreadable.is_empty() {
        anyhow::bail!("[inspection] rules: {} entries cannot be read", report.unreadable.len());
    }
    Ok(())
}
