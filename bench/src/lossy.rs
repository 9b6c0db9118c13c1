//! Lab loss injector (test tooling, not on the product path): drops a per-mille of
//! the frames an interface receives (XDP `lossy_ingress`) and sends (tc
//! `lossy_egress`), chosen by `bpf_get_prandom_u32()`. The programs are in
//! ebpf/src/bin/loupe-lossy.rs; the object comes from `loupe_dataplane::wire`.
//!
//! Lifetime: without a pin directory the programs stay attached while the calling
//! process lives (both are bpf_links: XDP link + TCX egress link on kernels >= 6.6),
//! so `loupe-bench lossy-wire` runs until killed, even by SIGKILL. With a pin
//! directory they are pinned there and the call returns; [`remove_lossy_wire`]
//! takes them off.
//!
//! Caveats: the interface can carry only one XDP program, so put the injector on
//! an endpoint veth (client/server `eth0`), not on the appliance ports. An XDP
//! program on a veth also gives it NAPI, which XDP_REDIRECT into it needs anyway.
//! On kernels < 6.6 the egress side falls back to a clsact netlink filter, which
//! is not a link: it survives the process and cannot be pinned.

use std::{io, path::Path, thread, time::Duration};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{Array, MapData, PerCpuArray},
    programs::{links::FdLink, tc, SchedClassifier, TcAttachType, TcError, Xdp, XdpMode},
    Ebpf,
};
use loupe_common::{lossy, maps, pins, programs};
use loupe_dataplane::wire::{ensure_bpffs, LOSSY_OBJECT};

/// Frames seen, dropped and otherwise damaged by the injector, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LossyCounters {
    pub ingress_passed: u64,
    pub ingress_dropped: u64,
    pub egress_passed: u64,
    pub egress_dropped: u64,
    pub egress_duplicated: u64,
    pub egress_corrupted: u64,
    pub egress_reordered: u64,
}

/// What the injector does, each in frames per thousand: `loss` both ways; the others to
/// the frames the interface sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    pub loss: u32,
    pub duplicate: u32,
    pub corrupt: u32,
    pub reorder: u32,
}

/// The ifb device reordered frames take a detour through (one per network namespace).
pub const REORDER_IFB: &str = "loupe-reorder";

/// Sends the frames the injector marks for reordering through [`REORDER_IFB`]: a u32
/// filter on `iface`'s clsact egress matches the mark and mirrors them to the ifb, which
/// hands them back to `iface` from its own queue, behind the frames sent meanwhile.
/// (netem, the usual tool, is not in this kernel: CONFIG_NET_SCH_NETEM is off.)
fn add_reorder_detour(iface: &str) -> Result<()> {
    let run = |argv: &[&str]| -> Result<()> {
        let out = std::process::Command::new(argv[0])
            .args(&argv[1..])
            .output()
            .with_context(|| format!("running {}", argv.join(" ")))?;
        if !out.status.success() {
            bail!("{}: {}", argv.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    };
    let _ = std::process::Command::new("ip")
        .args(["link", "del", REORDER_IFB])
        .output();
    run(&["ip", "link", "add", REORDER_IFB, "type", "ifb"])?;
    run(&["ip", "link", "set", REORDER_IFB, "up"])?;
    let mark = format!("{:#x}", lossy::REORDER_MARK);
    run(&[
        "tc",
        "filter",
        "replace",
        "dev",
        iface,
        "egress",
        "protocol",
        "all",
        "prio",
        "1",
        "u32",
        "match",
        "mark",
        &mark,
        "0xffffffff",
        "action",
        "mirred",
        "egress",
        "redirect",
        "dev",
        REORDER_IFB,
    ])
}

/// Attaches the loss injector to `iface` in the current network namespace, dropping
/// `per_mille` (0..=1000) of frames each way. With `pin_dir`, pins the links and
/// maps there (replacing an earlier injector pinned there) and returns; without,
/// blocks until the process is killed, which detaches everything.
pub fn run_lossy_wire(iface: &str, per_mille: u32, pin_dir: Option<&Path>) -> Result<()> {
    run_faulty_wire(
        iface,
        Faults {
            loss: per_mille,
            ..Faults::default()
        },
        pin_dir,
    )
}

/// [`run_lossy_wire`] with every kind of fault.
pub fn run_faulty_wire(iface: &str, faults: Faults, pin_dir: Option<&Path>) -> Result<()> {
    for (what, v) in [
        ("--per-mille", faults.loss),
        ("--duplicate-per-mille", faults.duplicate),
        ("--corrupt-per-mille", faults.corrupt),
        ("--reorder-per-mille", faults.reorder),
    ] {
        if v > lossy::PER_MILLE {
            bail!("{what} {v} is more than 1000");
        }
    }
    let per_mille = faults.loss;
    let mut ebpf = Ebpf::load(LOSSY_OBJECT).context("loading the loss injector eBPF object")?;
    let mut config = ebpf
        .take_map(maps::LOSSY_CONFIG)
        .ok_or_else(|| anyhow!("map {} missing", maps::LOSSY_CONFIG))?;
    {
        let mut rates = Array::<&mut MapData, u32>::try_from(&mut config)?;
        for (index, v) in [
            (lossy::CONFIG_LOSS, faults.loss),
            (lossy::CONFIG_DUPLICATE, faults.duplicate),
            (lossy::CONFIG_CORRUPT, faults.corrupt),
            (lossy::CONFIG_REORDER, faults.reorder),
        ] {
            rates.set(index, v, 0).context("writing the fault rates")?;
        }
    }
    let counters = ebpf
        .take_map(maps::LOSSY_COUNTERS)
        .ok_or_else(|| anyhow!("map {} missing", maps::LOSSY_COUNTERS))?;

    if let Some(dir) = pin_dir {
        // Removing an earlier injector also removes its (empty) directory: first.
        remove_lossy_wire(dir)?;
        ensure_bpffs(dir)?;
    }

    let xdp: &mut Xdp = ebpf
        .program_mut(programs::LOSSY_INGRESS)
        .ok_or_else(|| anyhow!("program {} missing", programs::LOSSY_INGRESS))?
        .try_into()?;
    xdp.load().context("loading lossy_ingress (verifier)")?;
    // Default mode: native where the driver has it (veth does), generic otherwise.
    let id = xdp
        .attach(iface, XdpMode::Default)
        .with_context(|| format!("attaching lossy_ingress (XDP) to {iface}"))?;
    let ingress = FdLink::try_from(xdp.take_link(id)?).with_context(|| format!("XDP on {iface} is not a bpf_link"))?;

    // clsact is only needed by the netlink fallback (kernels < 6.6); harmless otherwise.
    match tc::qdisc_add_clsact(iface) {
        Ok(()) | Err(TcError::AlreadyAttached) => {}
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(err) => eprintln!("lossy-wire: warning: adding clsact to {iface}: {err}"),
    }
    let cls: &mut SchedClassifier = ebpf
        .program_mut(programs::LOSSY_EGRESS)
        .ok_or_else(|| anyhow!("program {} missing", programs::LOSSY_EGRESS))?
        .try_into()?;
    cls.load().context("loading lossy_egress (verifier)")?;
    let id = cls
        .attach(iface, TcAttachType::Egress)
        .with_context(|| format!("attaching lossy_egress (tc egress) to {iface}"))?;
    let egress = cls.take_link(id)?;
    if faults.reorder > 0 {
        add_reorder_detour(iface)?;
    }

    match pin_dir {
        Some(dir) => {
            let egress = FdLink::try_from(egress).with_context(|| {
                format!("tc egress on {iface} is a netlink filter (kernel < 6.6); it cannot be pinned")
            })?;
            let pin = |what: &str, res: Result<(), aya::pin::PinError>| {
                res.with_context(|| format!("pinning {what} under {}", dir.display()))
            };
            let pinned = (|| -> Result<()> {
                pin("the config map", config.pin(dir.join(pins::LOSSY_CONFIG)))?;
                pin("the counters map", counters.pin(dir.join(pins::LOSSY_COUNTERS)))?;
                ingress
                    .pin(dir.join(pins::LOSSY_INGRESS_LINK))
                    .context("pinning the XDP link")?;
                egress
                    .pin(dir.join(pins::LOSSY_EGRESS_LINK))
                    .context("pinning the tc link")?;
                Ok(())
            })();
            if pinned.is_err() {
                let _ = remove_lossy_wire(dir);
            }
            pinned?;
            eprintln!(
                "lossy-wire: on {iface}, dropping {per_mille}/1000 of frames (XDP ingress, tc egress), \
                 duplicating {}/1000, corrupting {}/1000, reordering {}/1000 of those sent; pinned under {}",
                faults.duplicate,
                faults.corrupt,
                faults.reorder,
                dir.display()
            );
            Ok(())
        }
        None => {
            eprintln!(
                "lossy-wire: dropping {per_mille}/1000 of frames on {iface} (XDP ingress, tc egress) until killed"
            );
            // The links (and the eBPF object) must live as long as the process.
            let _keep = (ebpf, ingress, egress, config, counters);
            loop {
                thread::sleep(Duration::from_secs(3600));
            }
        }
    }
}

/// Detaches a pinned injector (removes its pins). Idempotent.
pub fn remove_lossy_wire(pin_dir: &Path) -> Result<()> {
    for name in [
        pins::LOSSY_INGRESS_LINK,
        pins::LOSSY_EGRESS_LINK,
        pins::LOSSY_CONFIG,
        pins::LOSSY_COUNTERS,
    ] {
        let path = pin_dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("unpinning {}", path.display())),
        }
    }
    // The directory itself, when nothing else was pinned there.
    let _ = std::fs::remove_dir(pin_dir);
    Ok(())
}

/// Reads the counters of an injector pinned under `pin_dir`.
pub fn lossy_counters(pin_dir: &Path) -> Result<LossyCounters> {
    let path = pin_dir.join(pins::LOSSY_COUNTERS);
    let data =
        MapData::from_pin(&path).with_context(|| format!("opening the pinned loss counters {}", path.display()))?;
    let map: PerCpuArray<MapData, u64> = PerCpuArray::try_from(aya::maps::Map::from_map_data(data)?)?;
    let sum = |i: u32| -> Result<u64> {
        Ok(map
            .get(&i, 0)
            .with_context(|| format!("reading loss counter {i}"))?
            .iter()
            .fold(0u64, |a, v| a.wrapping_add(*v)))
    };
    Ok(LossyCounters {
        ingress_passed: sum(lossy::INGRESS_PASSED)?,
        ingress_dropped: sum(lossy::INGRESS_DROPPED)?,
        egress_passed: sum(lossy::EGRESS_PASSED)?,
        egress_dropped: sum(lossy::EGRESS_DROPPED)?,
        egress_duplicated: sum(lossy::EGRESS_DUPLICATED)?,
        egress_corrupted: sum(lossy::EGRESS_CORRUPTED)?,
        egress_reordered: sum(lossy::EGRESS_REORDERED)?,
    })
}
