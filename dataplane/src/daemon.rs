//! `loupe run`: attaches the wire, opens the AF_XDP sockets, starts one pinned worker per
//! queue, and stops cleanly on SIGINT/SIGTERM. The XDP programs stay attached after the
//! daemon (pinned links), so the wire keeps bridging or dropping as configured.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use loupe_control::config::{Config, FailMode};

use crate::wire::{PortSide, Wire, WireSettings, XdpAttachMode};
use crate::worker::{Worker, WorkerSettings, WorkerStats};
use crate::xsk::{XskPort, XskSizes};

pub struct RunOptions {
    pub config: Config,
    pub config_file: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub log_dir: PathBuf,
    pub pin_dir: PathBuf,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_signal: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, request_stop as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, request_stop as *const () as libc::sighandler_t);
    }
}

pub fn run(options: RunOptions) -> Result<()> {
    let d = &options.config.dataplane;
    for (what, dir) in [("state", &options.state_dir), ("log", &options.log_dir)] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating the {what} directory {}", dir.display()))?;
    }
    install_signal_handlers();
    let settings = WireSettings {
        inside: d.inside.clone(),
        outside: d.outside.clone(),
        inspect_ports: d.inspect_ports.clone(),
        fail_closed: d.fail == FailMode::Closed,
        drop_quic: false,
        pin_dir: options.pin_dir.clone(),
        mode: if d.xdp_mode == "generic" {
            XdpAttachMode::Generic
        } else {
            XdpAttachMode::Native
        },
    };
    let mut wire =
        Wire::attach(&settings).with_context(|| format!("attaching the wire to {} and {}", d.inside, d.outside))?;
    tracing::info!(
        inside = %d.inside, outside = %d.outside, ports = ?d.inspect_ports, queues = d.queues,
        fail = ?d.fail, mode = ?wire.mode(),
        config = %options.config_file.as_ref().map_or("lab defaults".to_string(), |p| p.display().to_string()),
        "wire attached"
    );

    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut handles = Vec::new();
    let mut all_stats = Vec::new();
    for queue in 0..d.queues {
        let inside = XskPort::open(&d.inside, queue, XskSizes::default())?;
        let outside = XskPort::open(&d.outside, queue, XskSizes::default())?;
        wire.register_socket(PortSide::Inside, queue, inside.raw_fd())?;
        wire.register_socket(PortSide::Outside, queue, outside.raw_fd())?;
        let stats = Arc::new(WorkerStats::default());
        all_stats.push(stats.clone());
        let worker_settings = WorkerSettings {
            queue,
            inspect_ports: d.inspect_ports.clone(),
            max_flows: d.max_flows,
            tcp_buffer: d.tcp_buffer,
        };
        let core = match d.first_core {
            Some(first) => cores.iter().find(|c| c.id == first + queue as usize).copied(),
            None => (!cores.is_empty()).then(|| cores[queue as usize % cores.len()]),
        };
        let handle = std::thread::Builder::new()
            .name(format!("loupe-worker-{queue}"))
            .spawn(move || {
                if let Some(core) = core {
                    if !core_affinity::set_for_current(core) {
                        tracing::warn!(queue, core = core.id, "could not pin worker to its core");
                    }
                }
                Worker::new(worker_settings, inside, outside, stats).run(&STOP);
            })
            .context("spawning a worker thread")?;
        handles.push(handle);
    }
    tracing::info!(workers = handles.len(), "loupe running; SIGINT or SIGTERM stops it");

    while !STOP.load(Ordering::Relaxed) && handles.iter().all(|h| !h.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
    }
    STOP.store(true, Ordering::Relaxed);
    for handle in handles {
        if handle.join().is_err() {
            tracing::error!("a worker panicked");
        }
    }
    let counters = wire.counters()?;
    let mut flows_opened = 0;
    let mut bytes = (0, 0);
    for s in &all_stats {
        flows_opened += s.flows_opened.load(Ordering::Relaxed);
        bytes.0 += s.bytes_client_to_server.load(Ordering::Relaxed);
        bytes.1 += s.bytes_server_to_client.load(Ordering::Relaxed);
    }
    tracing::info!(
        flows_opened, bytes_c2s = bytes.0, bytes_s2c = bytes.1, xdp = %counters.to_json(),
        fail = ?d.fail, "loupe stopped; the wire stays attached and now {}",
        if d.fail == FailMode::Closed { "drops inspected traffic" } else { "bridges everything" }
    );
    Ok(())
}
