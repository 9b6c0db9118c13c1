//! Lab flow steering (test tooling, not on the product path): a tc egress program on
//! an endpoint veth (client's or server's `eth0`) that sends each TCP/UDP frame on the
//! queue a symmetric RSS would give its connection, so a multi-queue lab delivers both
//! legs of a session to one loupe worker (ebpf/src/bin/loupe-lab-steer.rs). `lab.sh up
//! --queues N` attaches it with N > 1; the object comes from `loupe_dataplane::wire`.
//!
//! The program is a TCX link pinned under a bpffs directory, so it outlives this
//! process; [`remove_lab_steer`] takes it off (deleting the namespace does too, but
//! leaves the pins).

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{Array, MapData, PerCpuArray},
    programs::{links::FdLink, tc, SchedClassifier, TcAttachType, TcError},
    Ebpf,
};
use loupe_common::{
    maps, pins, programs,
    steer::{self, MAX_QUEUES},
};
use loupe_dataplane::wire::{ensure_bpffs, LAB_STEER_OBJECT};

/// Frames the steering sent on each queue, and frames it left to the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SteerCounters {
    pub per_queue: Vec<u64>,
    pub unsteered: u64,
}

/// Steers `iface` over `queues` TX queues and pins the link and maps under `pin_dir`,
/// replacing steering pinned there before. `netns` names the network namespace (under
/// /run/netns) that holds `iface`; this process joins it but stays in its own mount
/// namespace, so the pins land in the host's bpffs and outlive it (under `ip netns exec`
/// they would vanish with its private mount namespace, and the link with them).
///
/// XPS maps on `iface` would override the steering (they pick the queue from the
/// sending CPU); veths have none unless someone writes one, and `lab.sh` checks.
pub fn run_lab_steer(netns: Option<&str>, iface: &str, queues: u32, pin_dir: &Path) -> Result<()> {
    if !(2..=MAX_QUEUES).contains(&queues) {
        bail!("--queues {queues}: steering needs 2 to {MAX_QUEUES} queues");
    }
    if let Some(name) = netns {
        enter_network_namespace(name)?;
    }
    let tx_queues = tx_queue_count(iface)?;
    if tx_queues < queues {
        bail!("{iface} has {tx_queues} TX queue(s), fewer than the {queues} to steer over");
    }
    let mut ebpf = Ebpf::load(LAB_STEER_OBJECT).context("loading the lab steering eBPF object")?;
    let mut config = ebpf
        .take_map(maps::STEER_CONFIG)
        .ok_or_else(|| anyhow!("map {} missing", maps::STEER_CONFIG))?;
    Array::<&mut MapData, u32>::try_from(&mut config)?
        .set(0, queues, 0)
        .context("writing the queue count")?;
    let counters = ebpf
        .take_map(maps::STEER_COUNTERS)
        .ok_or_else(|| anyhow!("map {} missing", maps::STEER_COUNTERS))?;

    remove_lab_steer(pin_dir)?;
    ensure_bpffs(pin_dir)?;
    match tc::qdisc_add_clsact(iface) {
        Ok(()) | Err(TcError::AlreadyAttached) => {}
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(err) => eprintln!("lab-steer: warning: adding clsact to {iface}: {err}"),
    }
    let cls: &mut SchedClassifier = ebpf
        .program_mut(programs::STEER_EGRESS)
        .ok_or_else(|| anyhow!("program {} missing", programs::STEER_EGRESS))?
        .try_into()?;
    cls.load().context("loading steer_egress (verifier)")?;
    let id = cls
        .attach(iface, TcAttachType::Egress)
        .with_context(|| format!("attaching steer_egress (tc egress) to {iface}"))?;
    let link = FdLink::try_from(cls.take_link(id)?)
        .with_context(|| format!("tc egress on {iface} is a netlink filter (kernel < 6.6); it cannot be pinned"))?;
    let pinned = (|| -> Result<()> {
        config
            .pin(pin_dir.join(pins::STEER_CONFIG))
            .context("pinning the config map")?;
        counters
            .pin(pin_dir.join(pins::STEER_COUNTERS))
            .context("pinning the counters map")?;
        link.pin(pin_dir.join(pins::STEER_EGRESS_LINK))
            .context("pinning the tc link")?;
        Ok(())
    })();
    if pinned.is_err() {
        let _ = remove_lab_steer(pin_dir);
    }
    pinned.with_context(|| format!("under {}", pin_dir.display()))?;
    eprintln!(
        "lab-steer: {iface} sends each connection on one of {queues} queues (symmetric hash); pinned under {}",
        pin_dir.display()
    );
    Ok(())
}

/// Detaches steering pinned under `pin_dir` (removes its pins). Idempotent.
pub fn remove_lab_steer(pin_dir: &Path) -> Result<()> {
    for name in [pins::STEER_EGRESS_LINK, pins::STEER_CONFIG, pins::STEER_COUNTERS] {
        let path = pin_dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("unpinning {}", path.display())),
        }
    }
    let _ = std::fs::remove_dir(pin_dir);
    Ok(())
}

/// Reads the counters of steering pinned under `pin_dir`.
pub fn lab_steer_counters(pin_dir: &Path) -> Result<SteerCounters> {
    let path = pin_dir.join(pins::STEER_COUNTERS);
    let data =
        MapData::from_pin(&path).with_context(|| format!("opening the pinned steering counters {}", path.display()))?;
    let map: PerCpuArray<MapData, u64> = PerCpuArray::try_from(aya::maps::Map::from_map_data(data)?)?;
    let sum = |i: u32| -> Result<u64> {
        Ok(map
            .get(&i, 0)
            .with_context(|| format!("reading steering counter {i}"))?
            .iter()
            .fold(0u64, |a, v| a.wrapping_add(*v)))
    };
    let config_path = pin_dir.join(pins::STEER_CONFIG);
    let config = MapData::from_pin(&config_path)
        .with_context(|| format!("opening the pinned steering config {}", config_path.display()))?;
    let config: Array<MapData, u32> = Array::try_from(aya::maps::Map::from_map_data(config)?)?;
    let queues = config
        .get(&0, 0)
        .context("reading the queue count")?
        .min(steer::MAX_QUEUES);
    Ok(SteerCounters {
        per_queue: (0..queues).map(sum).collect::<Result<_>>()?,
        unsteered: sum(MAX_QUEUES)?,
    })
}

/// Moves this thread (the only one) into the network namespace /run/netns/`name`.
fn enter_network_namespace(name: &str) -> Result<()> {
    let path = Path::new("/run/netns").join(name);
    let ns = std::fs::File::open(&path).with_context(|| format!("opening {} (no such namespace?)", path.display()))?;
    // SAFETY: a valid namespace fd; setns(2) does not keep it.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("entering network namespace {name}"));
    }
    Ok(())
}

/// The TX queues `iface` uses, as ethtool's channel counts report them (`ethtool -l`).
/// Asked over a socket of this namespace, not sysfs: /sys shows the namespace it was
/// mounted from.
fn tx_queue_count(iface: &str) -> Result<u32> {
    #[repr(C)]
    #[derive(Default)]
    struct EthtoolChannels {
        cmd: u32,
        max_rx: u32,
        max_tx: u32,
        max_other: u32,
        max_combined: u32,
        rx_count: u32,
        tx_count: u32,
        other_count: u32,
        combined_count: u32,
    }
    const ETHTOOL_GCHANNELS: u32 = 0x3c;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;

    let name = iface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        bail!(
            "interface name {iface:?} is empty or longer than {} bytes",
            libc::IFNAMSIZ - 1
        );
    }
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("opening a socket for ethtool");
    }
    // SAFETY: fd is a fresh socket nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut channels = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..Default::default()
    };
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    request.ifr_ifru.ifru_data = (&mut channels as *mut EthtoolChannels).cast();
    // SAFETY: SIOCETHTOOL reads the name and writes at most one ethtool_channels
    // through ifru_data, which points at `channels` for the whole call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), SIOCETHTOOL, &mut request) } != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("asking {iface} for its channel counts (is it in this namespace?)"));
    }
    Ok(channels.tx_count + channels.combined_count)
}
