use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use loupe_control::config::Config;
use loupe_dataplane::{daemon, wire};

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
        #[arg(long, default_value = "/var/lib/loupe")]
        state_dir: PathBuf,
        #[arg(long, default_value = "/var/log/loupe")]
        log_dir: PathBuf,
        /// Where the XDP links and maps are pinned (bpffs).
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Validate a configuration file without starting anything.
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
            ExitCode::FAILURE
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
        } => {
            let parsed = match &config {
                Some(file) => Config::load(file)?,
                None => Config::default(),
            };
            daemon::run(daemon::RunOptions {
                config: parsed,
                config_file: config,
                state_dir,
                log_dir,
                pin_dir,
            })
        }
        Command::Check { file } => {
            Config::load(&file)?;
            println!("{}: ok", file.display());
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
    }
}
