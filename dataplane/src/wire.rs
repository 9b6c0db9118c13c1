//! The XDP virtual wire: loads `loupe_wire` (ebpf/src/bin/loupe-wire.rs), attaches it
//! to the inside and outside ports and pins the links so the wire outlives the daemon.
//!
//! What the kernel side needs (found on veth, true of real NICs where noted):
//! - Both ports in the current network namespace, without addresses.
//! - bpffs at /sys/fs/bpf (mounted here if missing) for the pins.
//! - `XDP_REDIRECT` into a veth delivers only if the veth's *peer* runs NAPI: an
//!   XDP program attached to it, or GRO enabled (`ethtool -K PEER gro on`).
//!   Otherwise the frame is dropped after the program returned, and no counter
//!   here sees it (`redirect_failed` only counts refusals inside the program).
//! - Senders whose frames are redirected must not leave checksums to offload
//!   (`ethtool -K IF tx off` on the endpoints in the lab): XDP does not carry
//!   CHECKSUM_PARTIAL state, so such frames arrive with bad checksums.
//! - Native mode on veth needs an MTU that fits a page (<= ~3500); generic mode
//!   works everywhere but runs after skb allocation (slower, for tests/old NICs).
//! - One XDP program per interface: a foreign XDP program makes attach fail (EBUSY).
//!
//! Map layout and names are in `loupe_common` (`maps`, `pins`, `counter`).
//!
//! No-decrypt rules that need only the server's address and port are enforced here:
//! [`Wire::set_no_decrypt`] fills an LPM trie keyed on (server port, server address),
//! and inspected TCP whose server matches is bridged like uninspected traffic. The
//! program decides per segment, not per flow: an entry added or removed while a
//! connection to that server is open moves the rest of that connection between
//! bridging and the workers (which do not know it), so that connection breaks.

use std::{
    borrow::{Borrow, BorrowMut},
    collections::BTreeMap,
    ffi::CString,
    fs, io,
    net::{IpAddr, Ipv6Addr},
    os::{fd::RawFd, unix::ffi::OsStrExt as _},
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{lpm_trie::Key, Array, DevMap, HashMap, LpmTrie, Map, MapData, PerCpuArray, XskMap},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
        Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use loupe_common::{
    counter, maps as map_names, pins, programs, xsk_key, NoDecryptKey, WireConfig, MAX_INSPECT_PORTS, MAX_NO_DECRYPT,
    MAX_QUEUES, MAX_RULE_HITS, NO_DECRYPT_NONE, PORT_INSIDE, PORT_OUTSIDE,
};

/// The wire's eBPF object (program `loupe_wire`), built by `build.rs`.
pub const EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/loupe-wire"));
/// The lab loss injector's eBPF object (`lossy_ingress` XDP, `lossy_egress` tc).
pub const LOSSY_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/loupe-lossy"));
/// The lab flow steering's eBPF object (`steer_egress` tc): symmetric queue choice on
/// the lab's endpoints, standing in for a NIC's symmetric RSS.
pub const LAB_STEER_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/loupe-lab-steer"));

/// Default pin directory.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/loupe";
const BPFFS_ROOT: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpAttachMode {
    /// In the driver (`XDP_FLAGS_DRV_MODE`): fast path, needs driver support.
    #[default]
    Native,
    /// On the skb (`XDP_FLAGS_SKB_MODE`): works on any interface, slower.
    Generic,
}

impl XdpAttachMode {
    fn flags(self) -> XdpMode {
        match self {
            Self::Native => XdpMode::Driver,
            Self::Generic => XdpMode::Skb,
        }
    }

    fn config_value(self) -> u32 {
        match self {
            Self::Native => WireConfig::ATTACH_NATIVE,
            Self::Generic => WireConfig::ATTACH_GENERIC,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
        }
    }
}

/// One of the two appliance ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortSide {
    /// Client-facing.
    Inside,
    /// Server-facing.
    Outside,
}

impl PortSide {
    /// `inside` or `outside`, as metrics and counters name the ports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inside => "inside",
            Self::Outside => "outside",
        }
    }

    fn index(self) -> u32 {
        match self {
            Self::Inside => PORT_INSIDE,
            Self::Outside => PORT_OUTSIDE,
        }
    }

    fn link_pin(self) -> &'static str {
        match self {
            Self::Inside => pins::LINK_INSIDE,
            Self::Outside => pins::LINK_OUTSIDE,
        }
    }
}

/// What [`Wire::attach`] sets up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireSettings {
    pub inside: String,
    pub outside: String,
    /// TCP ports steered to AF_XDP (either source or destination). Empty = pure bridge.
    pub inspect_ports: Vec<u16>,
    /// Drop inspected TCP when no socket serves the queue (default: bridge it).
    pub fail_closed: bool,
    /// Drop UDP to/from an inspected port so clients fall back from QUIC to TCP.
    pub drop_quic: bool,
    /// Where links and maps are pinned (on bpffs).
    pub pin_dir: PathBuf,
    pub mode: XdpAttachMode,
    /// Queues of each port the daemon serves: their XDP counters are kept per queue,
    /// those of any other queue together per port.
    pub queues: u32,
}

impl Default for WireSettings {
    fn default() -> Self {
        Self {
            inside: "in0".into(),
            outside: "out0".into(),
            inspect_ports: vec![443],
            fail_closed: false,
            drop_quic: false,
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
            mode: XdpAttachMode::Native,
            queues: 1,
        }
    }
}

impl WireSettings {
    /// Checks what can be checked without the kernel.
    pub fn validate(&self) -> Result<()> {
        for (role, name) in [("inside", &self.inside), ("outside", &self.outside)] {
            if name.is_empty() || name.len() > IFNAME_MAX || name.contains(['/', ' ', '\0']) {
                bail!("{role} port name {name:?} is not a valid interface name");
            }
        }
        if self.inside == self.outside {
            bail!(
                "inside and outside must be two different interfaces (both are {:?})",
                self.inside
            );
        }
        if self.inspect_ports.contains(&0) {
            bail!("inspected port 0 is not a TCP port");
        }
        let mut unique = self.inspect_ports.clone();
        unique.sort_unstable();
        unique.dedup();
        if unique.len() > MAX_INSPECT_PORTS as usize {
            bail!(
                "{} inspected ports, at most {MAX_INSPECT_PORTS} are supported",
                unique.len()
            );
        }
        if !self.pin_dir.is_absolute() {
            bail!("pin directory {} must be absolute", self.pin_dir.display());
        }
        Ok(())
    }

    fn config(&self, inside_ifindex: u32, outside_ifindex: u32, mode: XdpAttachMode) -> WireConfig {
        let mut flags = 0;
        if self.fail_closed {
            flags |= WireConfig::FLAG_FAIL_CLOSED;
        }
        if self.drop_quic {
            flags |= WireConfig::FLAG_DROP_QUIC;
        }
        WireConfig {
            inside_ifindex,
            outside_ifindex,
            flags,
            attach_mode: mode.config_value(),
            queues: self.queues,
        }
    }
}

/// Counters of the XDP program, summed over CPUs. `bridged` includes the frames
/// counted in `malformed`, `unserved`, `vlan`, `fragments` and `bridged_no_decrypt`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireCounters {
    /// Inspected TCP handed to an AF_XDP socket.
    pub steered: u64,
    /// Frames redirected to the peer port.
    pub bridged: u64,
    /// Inspected TCP dropped: no socket and fail-closed.
    pub dropped_fail_closed: u64,
    /// Truncated frames or bad header lengths (bridged).
    pub malformed: u64,
    /// Redirects refused inside the program (dropped).
    pub redirect_failed: u64,
    /// UDP to/from an inspected port dropped by `drop_quic`.
    pub dropped_quic: u64,
    /// Inspected TCP bridged uninspected: no socket, fail-open.
    pub unserved: u64,
    /// Frames on an interface that is not a configured port (passed to the stack).
    pub unknown_ingress: u64,
    /// VLAN-tagged frames (bridged).
    pub vlan: u64,
    /// IP fragments (bridged).
    pub fragments: u64,
    /// Inspected TCP bridged because its server matched a no-decrypt entry (at its
    /// connection's SYN).
    pub bridged_no_decrypt: u64,
    /// Inspected TCP that followed its connection's decision at the SYN against the
    /// current no-decrypt entries (changed by a policy load while it was open).
    pub pinned_against_entries: u64,
}

impl WireCounters {
    pub fn fields(&self) -> [(&'static str, u64); counter::COUNT as usize] {
        [
            ("steered", self.steered),
            ("bridged", self.bridged),
            ("dropped_fail_closed", self.dropped_fail_closed),
            ("malformed", self.malformed),
            ("redirect_failed", self.redirect_failed),
            ("dropped_quic", self.dropped_quic),
            ("unserved", self.unserved),
            ("unknown_ingress", self.unknown_ingress),
            ("vlan", self.vlan),
            ("fragments", self.fragments),
            ("bridged_no_decrypt", self.bridged_no_decrypt),
            ("pinned_against_entries", self.pinned_against_entries),
        ]
    }

    /// The sum of every row.
    pub fn total(rows: &[PlacedCounters]) -> Self {
        let mut sums = [0u64; counter::COUNT as usize];
        for row in rows {
            for (sum, (_, value)) in sums.iter_mut().zip(row.counters.fields()) {
                *sum = sum.wrapping_add(value);
            }
        }
        Self::from_sums(&sums)
    }

    /// Builds the struct from per-index sums (index = `loupe_common::counter::*`).
    fn from_sums(sums: &[u64]) -> Self {
        let at = |i: u32| sums.get(i as usize).copied().unwrap_or(0);
        Self {
            steered: at(counter::STEERED),
            bridged: at(counter::BRIDGED),
            dropped_fail_closed: at(counter::DROPPED_FAIL_CLOSED),
            malformed: at(counter::MALFORMED),
            redirect_failed: at(counter::REDIRECT_FAILED),
            dropped_quic: at(counter::DROPPED_QUIC),
            unserved: at(counter::UNSERVED),
            unknown_ingress: at(counter::UNKNOWN_INGRESS),
            vlan: at(counter::VLAN),
            fragments: at(counter::FRAGMENTS),
            bridged_no_decrypt: at(counter::BRIDGED_NO_DECRYPT),
            pinned_against_entries: at(counter::PINNED_AGAINST_ENTRIES),
        }
    }

    /// One JSON object, keys in a fixed order, e.g. `{"steered":0,"bridged":12,...}`.
    pub fn to_json(&self) -> String {
        let body: Vec<String> = self.fields().iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", body.join(","))
    }
}

/// A no-decrypt entry enforced in XDP: inspected TCP whose server (the side with
/// the inspected port) is `port` at an address in `addr/prefix` is bridged, never
/// steered to a worker. `rule` is the policy's rule index, below
/// [`loupe_common::MAX_RULE_HITS`]; a client's SYN that matches counts in
/// [`Wire::rule_hits`]`()[rule]`. Where entries overlap, the longest prefix wins;
/// for the very same block and port, the first entry given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NoDecryptEntry {
    pub addr: IpAddr,
    /// Prefix length: 0..=32 for IPv4, 0..=128 for IPv6. Host bits of `addr` are ignored.
    pub prefix: u8,
    /// Server port.
    pub port: u16,
    pub rule: u32,
}

/// Contents of the no-decrypt trie: (trie prefix length, key data) → rule index.
type NoDecryptTable = BTreeMap<(u32, NoDecryptKey), u32>;

/// The trie contents for `entries`, validated: what [`Wire::set_no_decrypt`] writes.
///
/// An IPv6 block that covers `::ffff:0:0/96` on a port would also cover the
/// IPv4-mapped keys of IPv4 servers; a [`NO_DECRYPT_NONE`] entry under that /96
/// (unless an IPv4 `/0` on the same port takes its place) keeps IPv6 rules to IPv6.
fn no_decrypt_table(entries: &[NoDecryptEntry]) -> Result<NoDecryptTable> {
    let mut table = NoDecryptTable::new();
    let mut mapped_ports = Vec::new();
    for e in entries {
        if e.port == 0 {
            bail!(
                "no-decrypt entry {}/{} (rule {}): port 0 is not a TCP port",
                e.addr,
                e.prefix,
                e.rule
            );
        }
        if e.rule >= MAX_RULE_HITS {
            bail!(
                "no-decrypt entry {}/{} port {}: rule index {} is beyond the {MAX_RULE_HITS} rules the wire counts",
                e.addr,
                e.prefix,
                e.port,
                e.rule
            );
        }
        let key = match e.addr {
            IpAddr::V4(a) => {
                if e.prefix > 32 {
                    bail!("no-decrypt entry {}/{}: an IPv4 prefix is at most 32", e.addr, e.prefix);
                }
                let mask = u32::MAX.checked_shl(32 - u32::from(e.prefix)).unwrap_or(0);
                let net = (u32::from(a) & mask).to_be_bytes();
                (NoDecryptKey::prefix_v4(e.prefix), NoDecryptKey::v4(e.port, net))
            }
            IpAddr::V6(a) => {
                if e.prefix > 128 {
                    bail!(
                        "no-decrypt entry {}/{}: an IPv6 prefix is at most 128",
                        e.addr,
                        e.prefix
                    );
                }
                let mask = u128::MAX.checked_shl(128 - u32::from(e.prefix)).unwrap_or(0);
                let net = u128::from(a) & mask;
                let mapped = u128::from(Ipv6Addr::from([0, 0, 0, 0, 0, 0xffff, 0, 0]));
                if e.prefix <= 96 && mapped & mask == net {
                    mapped_ports.push(e.port);
                }
                (
                    NoDecryptKey::prefix_v6(e.prefix),
                    NoDecryptKey::v6(e.port, net.to_be_bytes()),
                )
            }
        };
        table.entry(key).or_insert(e.rule);
    }
    for port in mapped_ports {
        table
            .entry((NoDecryptKey::prefix_v4(0), NoDecryptKey::v4(port, [0; 4])))
            .or_insert(NO_DECRYPT_NONE);
    }
    if table.len() > MAX_NO_DECRYPT as usize {
        bail!(
            "{} no-decrypt entries (blocks times ports), the wire holds at most {MAX_NO_DECRYPT}",
            table.len()
        );
    }
    Ok(table)
}

/// Makes the trie hold exactly `table`, writing only new or changed entries, in an order
/// that never uncovers a server that stays covered: new entries first, then stale ones
/// removed (the other way round only when the map has no room for both). Guards go in
/// before and out after the IPv6 blocks they fence off.
fn sync_no_decrypt<T: BorrowMut<MapData>>(
    trie: &mut LpmTrie<T, NoDecryptKey, u32>,
    table: &NoDecryptTable,
) -> Result<()> {
    let mut present = NoDecryptTable::new();
    for key in trie.keys() {
        let key = key.context("listing the no-decrypt map")?;
        let rule = match trie.get(&key, 0) {
            Ok(rule) => rule,
            // Gone between the listing and the lookup: nothing to compare.
            Err(aya::maps::MapError::KeyNotFound) => continue,
            Err(err) => return Err(err).context("reading the no-decrypt map"),
        };
        present.insert((key.prefix_len(), key.data()), rule);
    }
    let is_guard = |rule: &u32| *rule == NO_DECRYPT_NONE;
    let mut inserts: Vec<_> = table
        .iter()
        .filter(|(key, rule)| present.get(key) != Some(rule))
        .collect();
    inserts.sort_by_key(|(_, rule)| !is_guard(rule));
    let mut stale: Vec<_> = present.iter().filter(|(key, _)| !table.contains_key(key)).collect();
    stale.sort_by_key(|(_, rule)| is_guard(rule));

    let insert_all = |trie: &mut LpmTrie<T, NoDecryptKey, u32>| -> Result<()> {
        for (&(prefix, data), &rule) in &inserts {
            trie.insert(&Key::new(prefix, data), rule, 0)
                .with_context(|| format!("writing no-decrypt entry for rule {rule}"))?;
        }
        Ok(())
    };
    let remove_all = |trie: &mut LpmTrie<T, NoDecryptKey, u32>| -> Result<()> {
        for (&(prefix, data), _) in &stale {
            match trie.remove(&Key::new(prefix, data)) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(err) => return Err(err).context("removing a stale no-decrypt entry"),
            }
        }
        Ok(())
    };
    let added = inserts.iter().filter(|(key, _)| !present.contains_key(key)).count();
    if present.len() + added <= MAX_NO_DECRYPT as usize {
        insert_all(trie)?;
        remove_all(trie)
    } else {
        remove_all(trie)?;
        insert_all(trie)
    }
}

/// The attached wire. Dropping it leaves the wire attached (the links are pinned);
/// use [`detach`] to take it down.
pub struct Wire {
    // Keeps the program and the maps it owns open while the daemon runs.
    _ebpf: Ebpf,
    config: Array<MapData, WireConfig>,
    xsks: XskMap<MapData>,
    counters: PerCpuArray<MapData, u64>,
    no_decrypt: LpmTrie<MapData, NoDecryptKey, u32>,
    rule_hits: PerCpuArray<MapData, u64>,
    current: WireConfig,
    settings: WireSettings,
    mode: XdpAttachMode,
}

impl Wire {
    /// Loads the program, fills the maps, attaches to both ports and pins the links
    /// and the counters/config maps under `pin_dir`, replacing whatever a previous
    /// daemon left pinned there (so the wire survives the daemon, even SIGKILL).
    ///
    /// Replacing swaps the new program into the pinned links atomically
    /// (bpf_link_update), so the ports keep bridging through a restart.
    ///
    /// In [`XdpAttachMode::Native`], if the driver refuses native XDP, both ports
    /// are attached in generic mode instead (see [`Wire::mode`]) and a warning is
    /// logged.
    ///
    /// Every attach starts with new maps: no-decrypt entries and counters of a previous
    /// daemon do not carry over. Use [`Wire::attach_with_no_decrypt`] to have the
    /// entries in place before the program takes over the ports.
    pub fn attach(settings: &WireSettings) -> Result<Wire> {
        Self::attach_with_no_decrypt(settings, &[])
    }

    /// [`Wire::attach`] with the no-decrypt entries written before the links are
    /// created or swapped, so that across a daemon restart connections to those servers
    /// stay bridged without a moment of being steered to the new workers.
    pub fn attach_with_no_decrypt(settings: &WireSettings, no_decrypt: &[NoDecryptEntry]) -> Result<Wire> {
        settings.validate()?;
        let no_decrypt_table = no_decrypt_table(no_decrypt)?;
        let inside_ifindex = ifindex(&settings.inside)?;
        let outside_ifindex = ifindex(&settings.outside)?;
        ensure_bpffs(&settings.pin_dir)?;

        // `LOUPE_FLOWS` is pinned by name in the pin directory: a restart reuses the map, so
        // the connections opened through the restart keep their decisions (those bridged
        // while no daemon ran stay bridged). A pin left by a build with another map layout
        // cannot be reused: it goes and the map starts empty.
        let flows_pin = settings.pin_dir.join(map_names::FLOWS);
        let load = || {
            EbpfLoader::new()
                .map_pin_path(map_names::FLOWS, flows_pin.as_path())
                .load(EBPF_OBJECT)
        };
        let mut ebpf = match load() {
            Ok(ebpf) => ebpf,
            Err(err) if flows_pin.exists() => {
                tracing::warn!(%err, "the pinned flow map could not be reused; starting with an empty one");
                unpin(&settings.pin_dir, &[map_names::FLOWS])?;
                load().context("loading the loupe_wire eBPF object")?
            }
            Err(err) => return Err(err).context("loading the loupe_wire eBPF object"),
        };
        let program: &mut Xdp = ebpf
            .program_mut(programs::WIRE)
            .ok_or_else(|| anyhow!("program {} missing from the eBPF object", programs::WIRE))?
            .try_into()
            .context("loupe_wire is not an XDP program")?;
        program
            .load()
            .context("loading loupe_wire into the kernel (verifier)")?;

        // Maps are filled before the links exist, so no frame sees an empty config.
        let config_map = take_map(&mut ebpf, map_names::CONFIG)?;
        let mut inspect_map = take_map(&mut ebpf, map_names::INSPECT_PORTS)?;
        let ports_map = take_map(&mut ebpf, map_names::PORTS)?;
        let xsks_map = take_map(&mut ebpf, map_names::XSKS)?;
        let counters_map = take_map(&mut ebpf, map_names::COUNTERS)?;
        let mut no_decrypt_map = take_map(&mut ebpf, map_names::NO_DECRYPT)?;
        let rule_hits_map = take_map(&mut ebpf, map_names::RULE_HITS)?;
        sync_no_decrypt(
            &mut LpmTrie::try_from(&mut no_decrypt_map).context("no-decrypt map type")?,
            &no_decrypt_table,
        )?;
        {
            let mut inspect: HashMap<&mut MapData, u16, u8> =
                HashMap::try_from(&mut inspect_map).context("inspected-ports map type")?;
            for &port in &settings.inspect_ports {
                inspect
                    .insert(port, 1, 0)
                    .with_context(|| format!("adding inspected port {port}"))?;
            }
        }
        let mut ports: DevMap<MapData> = DevMap::try_from(ports_map).context("port devmap type")?;
        ports
            .set(PORT_INSIDE, inside_ifindex, None, 0)
            .with_context(|| format!("putting {} into the port devmap", settings.inside))?;
        ports
            .set(PORT_OUTSIDE, outside_ifindex, None, 0)
            .with_context(|| format!("putting {} into the port devmap", settings.outside))?;

        // The old maps go; the old links stay pinned until our program replaces theirs.
        remove_map_pins(&settings.pin_dir)?;
        let pin_all = || -> Result<()> {
            for (what, map, name) in [
                ("counters map", &counters_map, pins::COUNTERS),
                ("config map", &config_map, pins::CONFIG),
                ("inspected-ports map", &inspect_map, pins::INSPECT_PORTS),
                ("no-decrypt map", &no_decrypt_map, pins::NO_DECRYPT),
                ("rule-hits map", &rule_hits_map, pins::RULE_HITS),
            ] {
                let path = settings.pin_dir.join(name);
                map.pin(&path)
                    .with_context(|| format!("pinning the {what} at {}", path.display()))?;
            }
            Ok(())
        };
        if let Err(err) = pin_all() {
            let _ = remove_pins(&settings.pin_dir);
            return Err(err);
        }
        let mut config: Array<MapData, WireConfig> = Array::try_from(config_map).context("config map type")?;

        let program: &mut Xdp = ebpf
            .program_mut(programs::WIRE)
            .ok_or_else(|| anyhow!("program {} vanished", programs::WIRE))?
            .try_into()?;
        let attached = attach_ports(program, settings, &mut config, inside_ifindex, outside_ifindex);
        let (links, mode) = match attached {
            Ok(ok) => ok,
            Err(err) => {
                let _ = remove_pins(&settings.pin_dir);
                return Err(err);
            }
        };
        let current = settings.config(inside_ifindex, outside_ifindex, mode);

        let pin_links = || -> Result<()> {
            for (side, link) in links {
                let iface = settings.port(side);
                let fd_link = FdLink::try_from(link)
                    .with_context(|| format!("XDP on {iface} is not a bpf_link; cannot pin it"))?;
                let path = settings.pin_dir.join(side.link_pin());
                // The pin keeps the link; our fd closes when PinnedLink drops, so a
                // later `detach` really detaches even while this process lives.
                fd_link
                    .pin(&path)
                    .with_context(|| format!("pinning the XDP link of {iface} at {}", path.display()))?;
            }
            Ok(())
        };
        if let Err(err) = pin_links() {
            // Links not yet pinned detach when dropped; pinned ones must be unpinned.
            let _ = remove_pins(&settings.pin_dir);
            return Err(err);
        }

        let xsks = XskMap::try_from(xsks_map).context("XSKMAP type")?;
        let counters = PerCpuArray::try_from(counters_map).context("counters map type")?;
        let no_decrypt = LpmTrie::try_from(no_decrypt_map).context("no-decrypt map type")?;
        let rule_hits = PerCpuArray::try_from(rule_hits_map).context("rule-hits map type")?;
        Ok(Wire {
            _ebpf: ebpf,
            config,
            xsks,
            counters,
            no_decrypt,
            rule_hits,
            current,
            settings: settings.clone(),
            mode,
        })
    }

    /// Puts an AF_XDP socket into the XSKMAP slot of (`port`, `queue`). The socket
    /// must be bound to that interface and queue; the kernel removes it from the map
    /// when it is closed, and the wire falls back to the fail-open/closed policy.
    pub fn register_socket(&mut self, port: PortSide, queue: u32, fd: RawFd) -> Result<()> {
        let iface = self.settings.port(port);
        if queue >= MAX_QUEUES {
            bail!("{iface}: queue {queue} is beyond the {MAX_QUEUES} queues the wire serves");
        }
        self.xsks
            .set(xsk_key(port.index(), queue), fd, 0)
            .with_context(|| format!("{iface}: registering AF_XDP socket fd {fd} for queue {queue}"))
    }

    /// Removes the socket of (`port`, `queue`) from the XSKMAP (closing it does too).
    pub fn unregister_socket(&mut self, port: PortSide, queue: u32) -> Result<()> {
        let iface = self.settings.port(port);
        if queue >= MAX_QUEUES {
            bail!("{iface}: queue {queue} is beyond the {MAX_QUEUES} queues the wire serves");
        }
        self.xsks
            .unset(xsk_key(port.index(), queue))
            .with_context(|| format!("{iface}: unregistering the socket of queue {queue}"))
    }

    /// Counters summed over CPUs, ports and queues (they restart at zero with each `attach`).
    pub fn counters(&self) -> Result<WireCounters> {
        Ok(WireCounters::total(&self.placed_counters()?))
    }

    /// Counters summed over CPUs, for each port's served queues, each port's other
    /// queues, and frames on neither port.
    pub fn placed_counters(&self) -> Result<Vec<PlacedCounters>> {
        read_placed_counters(&self.counters, self.current.queues)
    }

    /// Switches between fail-open and fail-closed; takes effect on the next frame.
    pub fn set_fail_closed(&mut self, closed: bool) -> Result<()> {
        let mut next = self.current;
        if closed {
            next.flags |= WireConfig::FLAG_FAIL_CLOSED;
        } else {
            next.flags &= !WireConfig::FLAG_FAIL_CLOSED;
        }
        self.config
            .set(0, next, 0)
            .context("writing fail_closed to the wire config map")?;
        self.current = next;
        Ok(())
    }

    /// Replaces the no-decrypt entries (adds new and changed ones, removes the ones no
    /// longer listed) while traffic flows. The entries are checked first: on an error
    /// the map is left as it was. See [`NoDecryptEntry`].
    pub fn set_no_decrypt(&mut self, entries: &[NoDecryptEntry]) -> Result<()> {
        let table = no_decrypt_table(entries)?;
        sync_no_decrypt(&mut self.no_decrypt, &table)
    }

    /// Client SYNs bridged by each no-decrypt rule since `attach`, summed over CPUs;
    /// index = rule index, [`loupe_common::MAX_RULE_HITS`] entries.
    pub fn rule_hits(&self) -> Result<Vec<u64>> {
        read_rule_hits(&self.rule_hits)
    }

    /// Switches QUIC (UDP on an inspected port) dropping on or off.
    pub fn set_drop_quic(&mut self, drop: bool) -> Result<()> {
        let mut next = self.current;
        if drop {
            next.flags |= WireConfig::FLAG_DROP_QUIC;
        } else {
            next.flags &= !WireConfig::FLAG_DROP_QUIC;
        }
        self.config
            .set(0, next, 0)
            .context("writing drop_quic to the wire config map")?;
        self.current = next;
        Ok(())
    }

    /// The mode the links were actually created in.
    pub fn mode(&self) -> XdpAttachMode {
        self.mode
    }

    /// ifindexes of the inside and outside ports, as written to the config map.
    pub fn ifindexes(&self) -> (u32, u32) {
        (self.current.inside_ifindex, self.current.outside_ifindex)
    }
}

impl WireSettings {
    fn port(&self, side: PortSide) -> &str {
        match side {
            PortSide::Inside => &self.inside,
            PortSide::Outside => &self.outside,
        }
    }
}

type PortLinks = Vec<(PortSide, aya::programs::xdp::XdpLink)>;

/// Attaches to both ports in the requested mode, falling back to generic when
/// native is refused. Writes the config (with the mode used) before attaching.
fn attach_ports(
    program: &mut Xdp,
    settings: &WireSettings,
    config: &mut Array<MapData, WireConfig>,
    inside_ifindex: u32,
    outside_ifindex: u32,
) -> Result<(PortLinks, XdpAttachMode)> {
    let try_mode =
        |program: &mut Xdp, config: &mut Array<MapData, WireConfig>, mode: XdpAttachMode| -> Result<PortLinks> {
            config
                .set(0, settings.config(inside_ifindex, outside_ifindex, mode), 0)
                .context("writing the wire config map")?;
            let mut links = Vec::with_capacity(2);
            for (side, ifindex) in [(PortSide::Inside, inside_ifindex), (PortSide::Outside, outside_ifindex)] {
                let iface = settings.port(side);
                let id = match replace_pinned_link(program, &settings.pin_dir.join(side.link_pin())) {
                    Some(id) => id,
                    None => program
                        .attach_to_if_index(ifindex, mode.flags())
                        .map_err(|e| explain_attach_error(e, iface, mode))?,
                };
                // Taken out of the program so dropping the Ebpf object does not detach it.
                let link = program
                    .take_link(id)
                    .with_context(|| format!("taking the XDP link of {iface}"))?;
                links.push((side, link));
            }
            Ok(links)
        };
    match try_mode(program, config, settings.mode) {
        Ok(links) => Ok((links, settings.mode)),
        Err(native_err) if settings.mode == XdpAttachMode::Native && !is_busy(&native_err) => {
            tracing::warn!(error = %format!("{native_err:#}"), "native XDP refused; attaching in generic mode");
            match try_mode(program, config, XdpAttachMode::Generic) {
                Ok(links) => Ok((links, XdpAttachMode::Generic)),
                Err(generic_err) => Err(generic_err.context(format!("native mode failed first: {native_err:#}"))),
            }
        }
        Err(err) => Err(err),
    }
}

/// Swaps our program into the link a previous daemon pinned at `path`, atomically
/// (bpf_link_update): the port never stops bridging during a restart. None when there
/// is no such link or it cannot be reused (e.g. its interface was recreated); the old
/// link is then released and the caller attaches afresh.
fn replace_pinned_link(program: &mut Xdp, path: &Path) -> Option<XdpLinkId> {
    let pinned = PinnedLink::from_pin(path).ok()?;
    // We hold the link's fd, so unpinning does not release it; ours is pinned later.
    let fd_link = match pinned.unpin() {
        Ok(fd_link) => fd_link,
        Err(err) => {
            tracing::warn!(path = %path.display(), %err, "cannot unpin the previous XDP link");
            return None;
        }
    };
    let old = XdpLink::try_from(fd_link).ok()?;
    match program.attach_to_link(old) {
        Ok(id) => Some(id),
        Err(err) => {
            tracing::info!(path = %path.display(), %err, "previous XDP link not reusable; attaching afresh");
            None
        }
    }
}

fn is_busy(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
            .is_some_and(|code| code == libc::EBUSY || code == libc::EEXIST)
    })
}

fn explain_attach_error(err: aya::programs::ProgramError, iface: &str, mode: XdpAttachMode) -> anyhow::Error {
    let err = anyhow::Error::new(err);
    let hint = if is_busy(&err) {
        " (another XDP program is attached to it; see `ip link show`)"
    } else {
        ""
    };
    err.context(format!(
        "attaching loupe_wire to {iface} in {} mode{hint}",
        mode.as_str()
    ))
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
}

fn ifindex(name: &str) -> Result<u32> {
    let c = CString::new(name).with_context(|| format!("interface name {name:?}"))?;
    // SAFETY: valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        let err = io::Error::last_os_error();
        bail!("interface {name} not found in this network namespace: {err}");
    }
    Ok(index)
}

fn statfs_magic(path: &Path) -> io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: zeroed statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs.
    Ok(st.f_type as i64)
}

/// Makes sure `pin_dir` exists on a bpffs, mounting bpffs at /sys/fs/bpf if needed.
///
/// Under `ip netns exec` /sys is remounted without bpffs, in a private mount
/// namespace: a bpffs mounted there (and the pins in it) dies with the process.
/// Run the daemon with `nsenter --net=/run/netns/NS` to keep the host's bpffs.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    let root = Path::new(BPFFS_ROOT);
    if pin_dir.starts_with(root) && statfs_magic(root).ok() != Some(BPF_FS_MAGIC) {
        let src = CString::new("bpf").expect("no NUL");
        let target = CString::new(BPFFS_ROOT).expect("no NUL");
        let opts = CString::new("mode=0700").expect("no NUL");
        // SAFETY: valid C strings; mount(2) does not keep the pointers.
        let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), src.as_ptr(), 0, opts.as_ptr().cast()) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            bail!("bpffs is not mounted at {BPFFS_ROOT} and mounting it failed: {err} (needs root/CAP_SYS_ADMIN; or run `mount -t bpf bpf {BPFFS_ROOT}`)");
        }
    }
    if private_mount_namespace() {
        tracing::warn!(
            pin_dir = %pin_dir.display(),
            "running in a private mount namespace (ip netns exec?): pins last only as long as it does; use nsenter --net=/run/netns/NS"
        );
    }
    fs::create_dir_all(pin_dir).with_context(|| format!("creating the pin directory {}", pin_dir.display()))?;
    match statfs_magic(pin_dir) {
        Ok(BPF_FS_MAGIC) => Ok(()),
        Ok(_) => bail!(
            "pin directory {} is not on a bpf filesystem (mount -t bpf bpf DIR)",
            pin_dir.display()
        ),
        Err(err) => bail!("checking the pin directory {}: {err}", pin_dir.display()),
    }
}

/// True when this process's mount namespace differs from init's: we had to mount
/// bpffs ourselves, or someone else did in a namespace that may not outlive us.
fn private_mount_namespace() -> bool {
    match (fs::read_link("/proc/self/ns/mnt"), fs::read_link("/proc/1/ns/mnt")) {
        (Ok(ours), Ok(init)) => ours != init,
        _ => false,
    }
}

/// Unpins everything the wire pins. Removing a link's last reference detaches it.
fn remove_pins(pin_dir: &Path) -> Result<bool> {
    let links = unpin(pin_dir, &[pins::LINK_INSIDE, pins::LINK_OUTSIDE])?;
    // The flow map outlives restarts (see `Wire::attach_with_no_decrypt`), not a detach.
    let flows = unpin(pin_dir, &[map_names::FLOWS])?;
    Ok(remove_map_pins(pin_dir)? | links | flows)
}

fn remove_map_pins(pin_dir: &Path) -> Result<bool> {
    unpin(
        pin_dir,
        &[
            pins::COUNTERS,
            pins::CONFIG,
            pins::INSPECT_PORTS,
            pins::NO_DECRYPT,
            pins::RULE_HITS,
        ],
    )
}

fn unpin(pin_dir: &Path, names: &[&str]) -> Result<bool> {
    let mut removed = false;
    for name in names {
        let path = pin_dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => removed = true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("unpinning {}", path.display())),
        }
    }
    Ok(removed)
}

/// Where one row of the XDP counters counted frames (see `loupe_common::counter::row`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterPlace {
    /// A queue of a port that the daemon serves.
    Queue { port: PortSide, queue: u32 },
    /// Every other queue of a port.
    OtherQueues { port: PortSide },
    /// Frames that came in on neither port.
    NoPort,
}

impl CounterPlace {
    /// The places of the rows with `served` queues, with their row numbers.
    fn all(served: u32) -> Vec<(CounterPlace, u32)> {
        let mut places = Vec::new();
        for port in [PortSide::Inside, PortSide::Outside] {
            for queue in 0..served.min(MAX_QUEUES) {
                places.push((
                    CounterPlace::Queue { port, queue },
                    counter::row(port.index(), queue, served),
                ));
            }
            // No served queue is numbered MAX_QUEUES: `row` gives the port's shared row.
            let other = counter::row(port.index(), MAX_QUEUES, served);
            places.push((CounterPlace::OtherQueues { port }, other));
        }
        places.push((CounterPlace::NoPort, counter::NO_PORT_ROW));
        places
    }
}

/// One row of the XDP counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlacedCounters {
    pub place: CounterPlace,
    pub counters: WireCounters,
}

fn read_placed_counters<T: Borrow<MapData>>(map: &PerCpuArray<T, u64>, served: u32) -> Result<Vec<PlacedCounters>> {
    if map.len() < counter::ENTRIES {
        bail!(
            "the wire counters map has {} entries, not {}: it was made by another build of loupe (restart the daemon to replace it)",
            map.len(),
            counter::ENTRIES
        );
    }
    CounterPlace::all(served)
        .into_iter()
        .map(|(place, row)| {
            let mut sums = [0u64; counter::COUNT as usize];
            for (i, sum) in sums.iter_mut().enumerate() {
                let index = counter::index(row, i as u32);
                let per_cpu = map
                    .get(&index, 0)
                    .with_context(|| format!("reading wire counter {index}"))?;
                *sum = per_cpu.iter().fold(0u64, |acc, v| acc.wrapping_add(*v));
            }
            Ok(PlacedCounters {
                place,
                counters: WireCounters::from_sums(&sums),
            })
        })
        .collect()
}

fn read_rule_hits<T: Borrow<MapData>>(map: &PerCpuArray<T, u64>) -> Result<Vec<u64>> {
    (0..map.len())
        .map(|i| {
            let per_cpu = map
                .get(&i, 0)
                .with_context(|| format!("reading rule hit counter {i}"))?;
            Ok(per_cpu.iter().fold(0u64, |acc, v| acc.wrapping_add(*v)))
        })
        .collect()
}

/// Reads the pinned per-rule hit counters (see [`Wire::rule_hits`]) without a running daemon.
pub fn pinned_rule_hits(pin_dir: &Path) -> Result<Vec<u64>> {
    let path = pin_dir.join(pins::RULE_HITS);
    let data = MapData::from_pin(&path).with_context(|| format!("opening the pinned rule hits {}", path.display()))?;
    let map = Map::from_map_data(data).context("pinned rule-hits map")?;
    let hits: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(map).context("pinned rule-hits map has an unexpected type")?;
    read_rule_hits(&hits)
}

/// Reads the pinned counters map without a running daemon.
pub fn pinned_counters(pin_dir: &Path) -> Result<WireCounters> {
    let path = pin_dir.join(pins::COUNTERS);
    let data =
        MapData::from_pin(&path).with_context(|| format!("opening the pinned wire counters {}", path.display()))?;
    let map = Map::from_map_data(data).context("pinned counters map")?;
    let counters: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(map).context("pinned counters map has an unexpected type")?;
    // The served queues as the daemon configured them (the config map is pinned too).
    let config_path = pin_dir.join(pins::CONFIG);
    let served = MapData::from_pin(&config_path)
        .ok()
        .and_then(|data| Map::from_map_data(data).ok())
        .and_then(|map| Array::<MapData, WireConfig>::try_from(map).ok())
        .and_then(|config| config.get(&0, 0).ok())
        .map_or(MAX_QUEUES, |config| config.queues);
    Ok(WireCounters::total(&read_placed_counters(&counters, served)?))
}

/// Removes the pinned links and maps: the ports stop bridging (once no process
/// holds a link fd; [`Wire`] does not keep any). Idempotent.
pub fn detach(pin_dir: &Path) -> Result<()> {
    remove_pins(pin_dir)?;
    // Only our own directory, and only if nothing else lives there.
    match fs::remove_dir(pin_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", pin_dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_json_has_every_field_in_order() {
        let c = WireCounters {
            steered: 1,
            bridged: 2,
            dropped_fail_closed: 3,
            malformed: 4,
            redirect_failed: 5,
            dropped_quic: 6,
            unserved: 7,
            unknown_ingress: 8,
            vlan: 9,
            fragments: u64::MAX,
            bridged_no_decrypt: 11,
            pinned_against_entries: 12,
        };
        assert_eq!(
            c.to_json(),
            "{\"steered\":1,\"bridged\":2,\"dropped_fail_closed\":3,\"malformed\":4,\
             \"redirect_failed\":5,\"dropped_quic\":6,\"unserved\":7,\"unknown_ingress\":8,\
             \"vlan\":9,\"fragments\":18446744073709551615,\"bridged_no_decrypt\":11,\
             \"pinned_against_entries\":12}"
        );
        assert!(WireCounters::default().to_json().starts_with("{\"steered\":0,"));
    }

    #[test]
    fn counters_map_indices_to_fields() {
        let mut sums = [0u64; counter::COUNT as usize];
        for (i, s) in sums.iter_mut().enumerate() {
            *s = 100 + i as u64;
        }
        let c = WireCounters::from_sums(&sums);
        assert_eq!(c.steered, 100 + counter::STEERED as u64);
        assert_eq!(c.bridged, 100 + counter::BRIDGED as u64);
        assert_eq!(c.dropped_fail_closed, 100 + counter::DROPPED_FAIL_CLOSED as u64);
        assert_eq!(c.malformed, 100 + counter::MALFORMED as u64);
        assert_eq!(c.fragments, 100 + counter::FRAGMENTS as u64);
        assert_eq!(c.bridged_no_decrypt, 100 + counter::BRIDGED_NO_DECRYPT as u64);
        // Every counter index appears exactly once among the fields.
        let mut seen: Vec<u64> = c.fields().iter().map(|(_, v)| *v).collect();
        seen.sort_unstable();
        assert_eq!(seen, (100..100 + counter::COUNT as u64).collect::<Vec<_>>());
        // Short input (older map) reads as zero, not a panic.
        assert_eq!(WireCounters::from_sums(&[5]).steered, 5);
        assert_eq!(WireCounters::from_sums(&[5]).bridged, 0);
    }

    #[test]
    fn default_settings_are_the_lab_defaults_and_valid() {
        let s = WireSettings::default();
        assert_eq!((s.inside.as_str(), s.outside.as_str()), ("in0", "out0"));
        assert_eq!(s.inspect_ports, vec![443]);
        assert!(!s.fail_closed && !s.drop_quic);
        assert_eq!(s.pin_dir, PathBuf::from("/sys/fs/bpf/loupe"));
        assert_eq!(s.mode, XdpAttachMode::Native);
        s.validate().unwrap();
    }

    #[test]
    fn invalid_settings_are_rejected_with_the_reason() {
        let bad = |f: fn(&mut WireSettings)| {
            let mut s = WireSettings::default();
            f(&mut s);
            s.validate().unwrap_err().to_string()
        };
        assert!(bad(|s| s.outside = "in0".into()).contains("two different"));
        assert!(bad(|s| s.inside = "a-very-long-ifname".into()).contains("not a valid interface"));
        assert!(bad(|s| s.inside = String::new()).contains("inside"));
        assert!(bad(|s| s.inspect_ports = vec![443, 0]).contains("port 0"));
        assert!(bad(|s| s.inspect_ports = (1..=65).collect()).contains("at most"));
        assert!(bad(|s| s.pin_dir = "rel/dir".into()).contains("absolute"));
        // Duplicates do not count twice against the limit; empty = pure bridge.
        let mut s = WireSettings {
            inspect_ports: [443; 100].to_vec(),
            ..WireSettings::default()
        };
        s.validate().unwrap();
        s.inspect_ports.clear();
        s.validate().unwrap();
    }

    #[test]
    fn config_flags_follow_settings() {
        let mut s = WireSettings::default();
        let c = s.config(3, 4, XdpAttachMode::Generic);
        assert_eq!((c.inside_ifindex, c.outside_ifindex), (3, 4));
        assert!(!c.fail_closed() && !c.drop_quic());
        assert_eq!(c.attach_mode, WireConfig::ATTACH_GENERIC);
        s.fail_closed = true;
        s.drop_quic = true;
        let c = s.config(3, 4, XdpAttachMode::Native);
        assert!(c.fail_closed() && c.drop_quic());
        assert_eq!(c.attach_mode, WireConfig::ATTACH_NATIVE);
    }

    fn entry(addr: &str, prefix: u8, port: u16, rule: u32) -> NoDecryptEntry {
        NoDecryptEntry {
            addr: addr.parse().unwrap(),
            prefix,
            port,
            rule,
        }
    }

    #[test]
    fn no_decrypt_table_masks_host_bits_and_keeps_the_first_rule() {
        let t = no_decrypt_table(&[
            entry("198.18.0.77", 24, 443, 3),
            entry("198.18.0.0", 24, 443, 9),
            entry("198.18.0.2", 32, 8443, 4),
            entry("2001:db8::1", 32, 443, 5),
        ])
        .unwrap();
        let want: NoDecryptTable = [
            ((16 + 96 + 24, NoDecryptKey::v4(443, [198, 18, 0, 0])), 3),
            ((16 + 128, NoDecryptKey::v4(8443, [198, 18, 0, 2])), 4),
            (
                (
                    16 + 32,
                    NoDecryptKey::v6(443, "2001:db8::".parse::<Ipv6Addr>().unwrap().octets()),
                ),
                5,
            ),
        ]
        .into_iter()
        .collect();
        assert_eq!(t, want);
        assert!(no_decrypt_table(&[]).unwrap().is_empty());
    }

    #[test]
    fn no_decrypt_table_keeps_ipv6_blocks_off_ipv4() {
        // ::/0 and ::/64 cover ::ffff:0:0/96; 2001:db8::/32 does not.
        let t = no_decrypt_table(&[entry("::", 0, 443, 1), entry("2001:db8::", 32, 8443, 2)]).unwrap();
        assert_eq!(t.get(&(16 + 96, NoDecryptKey::v4(443, [0; 4]))), Some(&NO_DECRYPT_NONE));
        assert_eq!(t.get(&(16 + 96, NoDecryptKey::v4(8443, [0; 4]))), None);
        assert_eq!(t.len(), 3);
        // An IPv4 /0 on the same port is the entry there, not the guard.
        let t = no_decrypt_table(&[entry("::", 64, 443, 1), entry("0.0.0.0", 0, 443, 2)]).unwrap();
        assert_eq!(t.get(&(16 + 96, NoDecryptKey::v4(443, [0; 4]))), Some(&2));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn no_decrypt_table_rejects_bad_entries() {
        let err = |e: NoDecryptEntry| no_decrypt_table(&[e]).unwrap_err().to_string();
        assert!(err(entry("198.18.0.2", 33, 443, 0)).contains("at most 32"));
        assert!(err(entry("2001:db8::", 129, 443, 0)).contains("at most 128"));
        assert!(err(entry("198.18.0.2", 32, 0, 0)).contains("port 0"));
        assert!(err(entry("198.18.0.2", 32, 443, MAX_RULE_HITS)).contains("rule index"));
        let many: Vec<_> = (1..=MAX_NO_DECRYPT as u16 + 1)
            .map(|port| entry("198.18.0.2", 32, port, 0))
            .collect();
        assert!(no_decrypt_table(&many).unwrap_err().to_string().contains("at most"));
    }

    #[test]
    fn embedded_objects_are_bpf_elf() {
        for obj in [EBPF_OBJECT, LOSSY_OBJECT, LAB_STEER_OBJECT] {
            assert_eq!(&obj[..4], b"\x7fELF");
            // e_machine EM_BPF = 247, little endian.
            assert_eq!(u16::from_le_bytes([obj[18], obj[19]]), 247);
        }
    }

    #[test]
    fn pinned_counters_reports_the_path_when_nothing_is_pinned() {
        let err = pinned_counters(Path::new("/nonexistent/loupe-pins")).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/loupe-pins/counters"));
    }

    #[test]
    fn detach_of_a_missing_directory_is_a_no_op() {
        detach(Path::new("/nonexistent/loupe-pins")).unwrap();
    }
}
