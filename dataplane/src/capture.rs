//! Packet captures for `loupectl capture start|stop`: the raw Ethernet frames of the flows
//! a [`CaptureFilter`] selects, both directions and both ports (frames loupe receives from
//! the client and the server, and frames it transmits to each), written to a classic
//! libpcap file (LINKTYPE_ETHERNET, microsecond timestamps, snaplen 65535) that
//! `tshark -r` and Wireshark read.
//!
//! Layers:
//! - [`decide`] (sans-IO): whether a frame of a flow is kept, skipped, or held pending
//!   because the filter names an SNI and the flow's ClientHello has not been parsed yet.
//! - [`PendingFrames`] (sans-IO): the frames held per flow until its SNI is known; bounded
//!   ([`PENDING_FRAMES_PER_FLOW`], [`PENDING_BYTES_PER_FLOW`], [`PENDING_FLOWS`]).
//! - [`PcapWriter`]: the file format (the `pcap-file` crate's header and record types)
//!   over any `Write`, bounded by `max_bytes`.
//! - [`CaptureTap`] (worker side) sends frames over a bounded channel to the writer
//!   thread `loupe-capture` that [`Capture`] owns.
//! - [`plaintext`]: the decrypted export's pcap files (synthetic flows of decrypted
//!   sessions, rotated), on the same [`PcapWriter`].
//!
//! Cost when no capture runs: the worker holds `Option<CaptureTap>`, so one `Option` check
//! per frame. While a capture runs, each matching frame is copied into a `Vec<u8>`: this
//! is a deliberate exception to "the per-packet path allocates nothing". A capture is an
//! explicit diagnostic an operator starts and stops, and it is bounded (the channel, the
//! pending frames, the file size). The tap never blocks and never locks: a full channel
//! drops the frame and counts it in `dropped`.
//!
//! Bounds and what is counted in [`CaptureSummary::dropped`]: frames a full channel
//! refused, pending frames past a flow's bound, the pending frames of the oldest flow
//! evicted when [`PENDING_FLOWS`] flows are pending, and every kept frame once the file is
//! full. The file never exceeds `max_bytes` (header included): the first record that
//! does not fit ends the writing (`full`), later records are only counted. Frames of
//! flows that ended (or were still pending at stop) before their SNI was known are
//! discarded without counting: as far as loupe knows they did not match.
//!
//! How a worker calls it (`tap: Option<CaptureTap>`, replaced between batches from the
//! control thread's channel):
//! - received frame of a known (or just opened) flow, in `handle_frame` after the lookup:
//!   `tap.frame(key, knowledge, leg, frame)` with the whole Ethernet frame;
//! - transmitted frame, in the TX token once the Ethernet header is written:
//!   `tap.frame(key, knowledge, leg, frame)` with the frame as it leaves;
//! - flow removed (`finish`): `tap.flow_ended(key, knowledge)`.
//!
//! `knowledge` is `SniKnowledge::NotYet` until the session parsed the ClientHello, then
//! `Known(session.sni())`; `Known(None)` also once the session gave up on a ClientHello
//! (not TLS), so such flows stop being held.

use std::borrow::Cow;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use byteorder_slice::LittleEndian;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use loupe_control::protocol::{name_matches, CaptureFilter, CaptureLeg};
use pcap_file::pcap::{PcapHeader, RawPcapPacket};
use pcap_file::{DataLink, Endianness, PcapError, TsResolution};
use serde::Serialize;

use crate::flow::FlowKey;

pub mod plaintext;

/// Events queued from the taps to the writer; beyond this a frame is dropped (counted).
pub const CHANNEL_EVENTS: usize = 4096;
/// Pending frames kept per flow while its SNI is unknown (the first ones are kept).
pub const PENDING_FRAMES_PER_FLOW: usize = 64;
/// Pending bytes kept per flow while its SNI is unknown.
pub const PENDING_BYTES_PER_FLOW: usize = 256 << 10;
/// Flows with pending frames; one more evicts the oldest (its frames are counted dropped).
pub const PENDING_FLOWS: usize = 1024;
/// The writer flushes at least this often while frames come in, and when idle.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Bytes of a frame kept in a record (longer frames are truncated; never on AF_XDP).
pub const SNAPLEN: usize = 65535;
/// The pcap global header.
pub const PCAP_HEADER_LEN: u64 = 24;
/// The pcap per-record header.
pub const PCAP_RECORD_HEADER_LEN: u64 = 16;

/// What the worker knows of a flow's SNI when it hands over a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SniKnowledge<'a> {
    /// The ClientHello has not been parsed yet.
    NotYet,
    /// The ClientHello was parsed (`Some(name)`), or it had no SNI or the flow is not TLS
    /// (`None`).
    Known(Option<&'a str>),
}

/// What to do with a frame of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    Skip,
    /// The filter names an SNI and the flow's is not known yet: hold the frame.
    Pending,
}

/// Decides a frame of flow `key` against `filter`: every condition given must hold.
pub fn decide(filter: &CaptureFilter, key: FlowKey, sni: SniKnowledge<'_>) -> Verdict {
    if let Some(host) = filter.host {
        let host = host.to_canonical();
        if key.client.ip().to_canonical() != host && key.server.ip().to_canonical() != host {
            return Verdict::Skip;
        }
    }
    if let Some(port) = filter.port {
        if key.client.port() != port && key.server.port() != port {
            return Verdict::Skip;
        }
    }
    let Some(pattern) = filter.sni.as_deref() else {
        return Verdict::Keep;
    };
    match sni {
        SniKnowledge::NotYet => Verdict::Pending,
        SniKnowledge::Known(Some(name)) if name_matches(pattern, name) => Verdict::Keep,
        SniKnowledge::Known(_) => Verdict::Skip,
    }
}

/// One frame as it will be written: when the tap saw it, its first `SNAPLEN` bytes and its
/// length on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedFrame {
    pub time: SystemTime,
    pub data: Vec<u8>,
    pub wire_len: u32,
}

impl CapturedFrame {
    /// Copies a frame (the allocation this module is allowed; see the module doc).
    pub fn copy(frame: &[u8], time: SystemTime) -> CapturedFrame {
        CapturedFrame {
            time,
            data: frame[..frame.len().min(SNAPLEN)].to_vec(),
            wire_len: u32::try_from(frame.len()).unwrap_or(u32::MAX),
        }
    }

    /// Bytes this frame takes in the file.
    pub fn record_len(&self) -> u64 {
        PCAP_RECORD_HEADER_LEN + self.data.len() as u64
    }
}

/// A lock-free, approximate "may this flow have pending frames" table, so a tap sends the
/// writer a discard for a non-matching flow only while frames of it may be held. Written
/// by the writer thread alone (counts of pending flows per hash slot), read by taps.
/// A collision only costs a needless discard event; a lag (frames still in the channel)
/// only delays the discard to the flow's next frame or its end.
#[derive(Debug)]
pub struct PendingHint {
    slots: Box<[AtomicU16]>,
}

const HINT_SLOTS: usize = 4096;

impl Default for PendingHint {
    fn default() -> Self {
        PendingHint {
            slots: (0..HINT_SLOTS).map(|_| AtomicU16::new(0)).collect(),
        }
    }
}

impl PendingHint {
    fn slot(&self, key: &FlowKey) -> &AtomicU16 {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        &self.slots[hasher.finish() as usize % HINT_SLOTS]
    }

    pub fn may_hold(&self, key: &FlowKey) -> bool {
        self.slot(key).load(Ordering::Relaxed) != 0
    }

    // Single writer: load + store, no read-modify-write needed.
    fn add(&self, key: &FlowKey) {
        let slot = self.slot(key);
        slot.store(slot.load(Ordering::Relaxed).saturating_add(1), Ordering::Relaxed);
    }

    fn remove(&self, key: &FlowKey) {
        let slot = self.slot(key);
        slot.store(slot.load(Ordering::Relaxed).saturating_sub(1), Ordering::Relaxed);
    }
}

/// Limits of [`PendingFrames`]; the defaults are the module's constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingLimits {
    pub frames_per_flow: usize,
    pub bytes_per_flow: usize,
    pub flows: usize,
}

impl Default for PendingLimits {
    fn default() -> Self {
        PendingLimits {
            frames_per_flow: PENDING_FRAMES_PER_FLOW,
            bytes_per_flow: PENDING_BYTES_PER_FLOW,
            flows: PENDING_FLOWS,
        }
    }
}

struct PendingFlow {
    /// Insertion order, the key of `PendingFrames::age`.
    age: u64,
    frames: Vec<CapturedFrame>,
    bytes: usize,
}

/// Frames of flows whose SNI is not known yet, in arrival order per flow. Sans-IO.
pub struct PendingFrames {
    flows: HashMap<FlowKey, PendingFlow>,
    /// Oldest first, for eviction.
    age: BTreeMap<u64, FlowKey>,
    next_age: u64,
    limits: PendingLimits,
    hint: Arc<PendingHint>,
}

impl PendingFrames {
    pub fn new(limits: PendingLimits, hint: Arc<PendingHint>) -> PendingFrames {
        PendingFrames {
            flows: HashMap::with_capacity(limits.flows),
            age: BTreeMap::new(),
            next_age: 0,
            limits,
            hint,
        }
    }

    /// Holds a frame of `key`. Returns how many frames were dropped doing so: this one if
    /// its flow is at its bound, or the frames of the oldest flow evicted to make room.
    pub fn hold(&mut self, key: FlowKey, frame: CapturedFrame) -> u64 {
        let mut dropped = 0;
        if !self.flows.contains_key(&key) {
            if self.flows.len() >= self.limits.flows {
                if let Some((_, oldest)) = self.age.pop_first() {
                    if let Some(flow) = self.flows.remove(&oldest) {
                        self.hint.remove(&oldest);
                        dropped += flow.frames.len() as u64;
                        tracing::debug!(flow = %oldest, frames = flow.frames.len(), "capture: oldest pending flow dropped");
                    }
                }
            }
            if self.limits.flows == 0 {
                return dropped + 1;
            }
            let age = self.next_age;
            self.next_age += 1;
            self.age.insert(age, key);
            self.hint.add(&key);
            self.flows.insert(
                key,
                PendingFlow {
                    age,
                    frames: Vec::new(),
                    bytes: 0,
                },
            );
        }
        let flow = self.flows.get_mut(&key).expect("inserted above");
        if flow.frames.len() >= self.limits.frames_per_flow
            || flow.bytes + frame.data.len() > self.limits.bytes_per_flow
        {
            return dropped + 1;
        }
        flow.bytes += frame.data.len();
        flow.frames.push(frame);
        dropped
    }

    /// Removes and returns a flow's held frames, oldest first (to write or to discard).
    pub fn take(&mut self, key: &FlowKey) -> Option<Vec<CapturedFrame>> {
        let flow = self.flows.remove(key)?;
        self.age.remove(&flow.age);
        self.hint.remove(key);
        Some(flow.frames)
    }

    /// Flows holding frames.
    pub fn flows(&self) -> usize {
        self.flows.len()
    }

    /// Frames held, all flows together.
    pub fn frames(&self) -> usize {
        self.flows.values().map(|f| f.frames.len()).sum()
    }

    /// Forgets everything (at stop: those flows never showed a matching SNI).
    pub fn clear(&mut self) {
        for key in self.flows.keys() {
            self.hint.remove(key);
        }
        self.flows.clear();
        self.age.clear();
    }
}

/// Writes the libpcap format to `out`, never past `max_bytes` (header included).
pub struct PcapWriter<W: Write> {
    out: W,
    max_bytes: u64,
    written: u64,
    full: bool,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the global header. `max_bytes` must leave room for it.
    pub fn new(mut out: W, max_bytes: u64) -> io::Result<PcapWriter<W>> {
        if max_bytes < PCAP_HEADER_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("max_bytes {max_bytes} leaves no room for the {PCAP_HEADER_LEN}-byte pcap header"),
            ));
        }
        // Version 2.4, no time zone correction or accuracy, microsecond timestamps.
        let header = PcapHeader {
            snaplen: SNAPLEN as u32,
            datalink: DataLink::ETHERNET,
            ts_resolution: TsResolution::MicroSecond,
            endianness: Endianness::Little,
            ..PcapHeader::default()
        };
        header.write_to(&mut out).map_err(pcap_error)?;
        Ok(PcapWriter {
            out,
            max_bytes,
            written: PCAP_HEADER_LEN,
            full: false,
        })
    }

    /// Appends a record. `Ok(false)`: it did not fit, nothing more will be written.
    pub fn write(&mut self, frame: &CapturedFrame) -> io::Result<bool> {
        if self.full || self.written + frame.record_len() > self.max_bytes {
            self.full = true;
            return Ok(false);
        }
        let since = frame.time.duration_since(UNIX_EPOCH).unwrap_or_default();
        // The raw record: seconds wrap past 2106 rather than fail, and `CapturedFrame::copy`
        // already cut the data at SNAPLEN.
        let record = RawPcapPacket {
            ts_sec: since.as_secs() as u32,
            ts_frac: since.subsec_micros(),
            incl_len: frame.data.len() as u32,
            orig_len: frame.wire_len,
            data: Cow::Borrowed(&frame.data),
        };
        record.write_to::<_, LittleEndian>(&mut self.out).map_err(pcap_error)?;
        self.written += frame.record_len();
        Ok(true)
    }

    /// Bytes of the file so far, header included.
    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn is_full(&self) -> bool {
        self.full
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// pcap-file's errors as I/O errors (writing only fails in the writer underneath).
fn pcap_error(err: PcapError) -> io::Error {
    match err {
        PcapError::IoError(err) => err,
        other => io::Error::other(other),
    }
}

/// What a tap sends the writer.
#[derive(Debug)]
pub enum CaptureEvent {
    /// A frame to write (after any held frames of its flow), or to hold (`pending`).
    Frame {
        key: FlowKey,
        pending: bool,
        frame: CapturedFrame,
    },
    /// The flow's SNI is known (or it ended): write its held frames (`keep`) or discard them.
    Resolve { key: FlowKey, keep: bool },
}

/// Totals of a capture (the reply to `capture stop`, and live in `status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaptureSummary {
    pub out: PathBuf,
    /// Frames written.
    pub frames: u64,
    /// Bytes of the file, pcap header included.
    pub bytes: u64,
    /// Frames that matched (or might have) but are not in the file; see the module doc.
    pub dropped: u64,
    /// The file reached `max_bytes`: nothing more is written.
    pub full: bool,
    /// The write error that ended the capture early.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Figures shared by the taps, the writer thread and the control thread.
#[derive(Debug, Default)]
struct CaptureStats {
    frames: AtomicU64,
    bytes: AtomicU64,
    dropped: AtomicU64,
    full: AtomicBool,
    /// The writer no longer takes frames (stopped, or a write failed).
    stopped: AtomicBool,
    /// Only the writer (once) and `summary` touch it; never a tap.
    error: Mutex<Option<String>>,
}

/// Applies events to the pending frames and the pcap writer. Sans-IO apart from `W`.
struct Recorder<W: Write> {
    pcap: PcapWriter<W>,
    pending: PendingFrames,
    stats: Arc<CaptureStats>,
}

impl<W: Write> Recorder<W> {
    fn apply(&mut self, event: CaptureEvent) -> io::Result<()> {
        match event {
            CaptureEvent::Frame {
                key,
                pending: true,
                frame,
            } => {
                let dropped = self.pending.hold(key, frame);
                self.stats.dropped.fetch_add(dropped, Ordering::Relaxed);
            }
            CaptureEvent::Frame {
                key,
                pending: false,
                frame,
            } => {
                if let Some(held) = self.pending.take(&key) {
                    self.write_all(held)?;
                }
                self.write_all(Some(frame))?;
            }
            CaptureEvent::Resolve { key, keep } => {
                if let Some(held) = self.pending.take(&key) {
                    if keep {
                        self.write_all(held)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn write_all(&mut self, frames: impl IntoIterator<Item = CapturedFrame>) -> io::Result<()> {
        for frame in frames {
            if self.pcap.write(&frame)? {
                self.stats.frames.fetch_add(1, Ordering::Relaxed);
                self.stats.bytes.store(self.pcap.written(), Ordering::Relaxed);
            } else {
                if !self.stats.full.swap(true, Ordering::Relaxed) {
                    tracing::info!(bytes = self.pcap.written(), "capture: file reached its size limit");
                }
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

/// The worker's side of a running capture. Clone one to every worker; the worker holds
/// `Option<CaptureTap>` and calls [`CaptureTap::frame`] for every frame of a flow it
/// receives or transmits, and [`CaptureTap::flow_ended`] when it removes a flow.
/// Neither call blocks, locks, or allocates unless the frame is captured.
#[derive(Debug, Clone)]
pub struct CaptureTap {
    filter: Arc<CaptureFilter>,
    events: Sender<CaptureEvent>,
    stats: Arc<CaptureStats>,
    hint: Arc<PendingHint>,
}

impl CaptureTap {
    /// One call per received or transmitted Ethernet frame of flow `key`.
    pub fn frame(&self, key: FlowKey, sni: SniKnowledge<'_>, leg: CaptureLeg, frame: &[u8]) {
        if self.stats.stopped.load(Ordering::Relaxed) {
            return;
        }
        if self.filter.leg.is_some_and(|wanted| wanted != leg) {
            return;
        }
        let verdict = decide(&self.filter, key, sni);
        if self.stats.full.load(Ordering::Relaxed) {
            // Nothing more is written; count what is left out (held frames cannot be judged).
            if verdict == Verdict::Keep {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        let pending = match verdict {
            Verdict::Keep => false,
            Verdict::Pending => true,
            Verdict::Skip => {
                // A flow whose SNI turned out not to match: free what the writer holds.
                if self.filter.sni.is_some() && matches!(sni, SniKnowledge::Known(_)) && self.hint.may_hold(&key) {
                    self.send(CaptureEvent::Resolve { key, keep: false });
                }
                return;
            }
        };
        let frame = CapturedFrame::copy(frame, SystemTime::now());
        if !self.send(CaptureEvent::Frame { key, pending, frame }) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The worker removed flow `key`: resolves its held frames (written if `sni` matches,
    /// discarded otherwise, including when the SNI never became known).
    pub fn flow_ended(&self, key: FlowKey, sni: SniKnowledge<'_>) {
        if self.filter.sni.is_none() || self.stats.stopped.load(Ordering::Relaxed) {
            return;
        }
        let keep = match decide(&self.filter, key, sni) {
            Verdict::Keep => true,
            Verdict::Pending => false,
            // Skipped for its addresses: nothing of it was ever held.
            Verdict::Skip if matches!(sni, SniKnowledge::NotYet) => return,
            Verdict::Skip => false,
        };
        // A lost resolve leaves the frames held until evicted (counted) or the stop.
        self.send(CaptureEvent::Resolve { key, keep });
    }

    /// Whether the capture still takes frames; a worker may drop its tap once false.
    pub fn is_active(&self) -> bool {
        !self.stats.stopped.load(Ordering::Relaxed)
    }

    fn send(&self, event: CaptureEvent) -> bool {
        match self.events.try_send(event) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => false,
            // The writer is gone (stopped or failed): the frame is not "dropped".
            Err(TrySendError::Disconnected(_)) => true,
        }
    }
}

/// Why a capture could not start.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot create the capture file {}: {source}", path.display())]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot write the capture file {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("max_bytes {max_bytes} leaves no room for the {PCAP_HEADER_LEN}-byte pcap header")]
    TooSmall { max_bytes: u64 },
    #[error("cannot start the capture thread: {0}")]
    Spawn(io::Error),
}

/// A running capture: the writer thread and its figures. Owned by the control thread.
pub struct Capture {
    out: PathBuf,
    stats: Arc<CaptureStats>,
    /// Dropped to tell the writer to finish.
    stop: Option<Sender<()>>,
    writer: Option<JoinHandle<()>>,
}

impl Capture {
    /// Creates (or truncates) `out`, writes the pcap header and starts the writer thread
    /// `loupe-capture`. Returns the capture and a tap to clone to every worker.
    pub fn start(filter: CaptureFilter, out: &Path, max_bytes: u64) -> Result<(Capture, CaptureTap), CaptureError> {
        if max_bytes < PCAP_HEADER_LEN {
            return Err(CaptureError::TooSmall { max_bytes });
        }
        let write_error = |source| CaptureError::Write {
            path: out.to_path_buf(),
            source,
        };
        let file = File::create(out).map_err(|source| CaptureError::Create {
            path: out.to_path_buf(),
            source,
        })?;
        let mut pcap = PcapWriter::new(BufWriter::with_capacity(64 << 10, file), max_bytes).map_err(write_error)?;
        pcap.flush().map_err(write_error)?;
        let stats = Arc::new(CaptureStats::default());
        stats.bytes.store(pcap.written(), Ordering::Relaxed);
        let hint = Arc::new(PendingHint::default());
        let (events, receiver) = crossbeam_channel::bounded(CHANNEL_EVENTS);
        let (stop, stop_receiver) = crossbeam_channel::bounded(0);
        let recorder = Recorder {
            pcap,
            pending: PendingFrames::new(PendingLimits::default(), Arc::clone(&hint)),
            stats: Arc::clone(&stats),
        };
        let path = out.to_path_buf();
        let writer = std::thread::Builder::new()
            .name("loupe-capture".into())
            .spawn(move || run_writer(recorder, receiver, stop_receiver, &path))
            .map_err(CaptureError::Spawn)?;
        tracing::info!(out = %out.display(), max_bytes, ?filter, "capture started");
        let tap = CaptureTap {
            filter: Arc::new(filter),
            events,
            stats: Arc::clone(&stats),
            hint,
        };
        Ok((
            Capture {
                out: out.to_path_buf(),
                stats,
                stop: Some(stop),
                writer: Some(writer),
            },
            tap,
        ))
    }

    /// Stops: taps go inert, the writer writes what was queued, flushes and is joined.
    pub fn stop(mut self) -> CaptureSummary {
        self.finish();
        let summary = self.summary();
        tracing::info!(out = %summary.out.display(), frames = summary.frames, bytes = summary.bytes, dropped = summary.dropped, "capture stopped");
        summary
    }

    /// The figures so far.
    pub fn summary(&self) -> CaptureSummary {
        CaptureSummary {
            out: self.out.clone(),
            frames: self.stats.frames.load(Ordering::Relaxed),
            bytes: self.stats.bytes.load(Ordering::Relaxed),
            dropped: self.stats.dropped.load(Ordering::Relaxed),
            full: self.stats.full.load(Ordering::Relaxed),
            error: self.stats.error.lock().map(|e| e.clone()).unwrap_or_default(),
        }
    }

    fn finish(&mut self) {
        self.stats.stopped.store(true, Ordering::Relaxed);
        drop(self.stop.take());
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::warn!("capture writer thread panicked");
            }
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.finish();
    }
}

fn run_writer<W: Write>(mut recorder: Recorder<W>, events: Receiver<CaptureEvent>, stop: Receiver<()>, path: &Path) {
    let result = write_loop(&mut recorder, &events, &stop);
    recorder.stats.stopped.store(true, Ordering::Relaxed);
    recorder.pending.clear();
    if let Err(err) = result {
        tracing::warn!(out = %path.display(), %err, "capture ended by a write error");
        // The frame being written, and the frames still queued, are left out.
        let queued = events
            .try_iter()
            .filter(|e| matches!(e, CaptureEvent::Frame { pending: false, .. }))
            .count();
        recorder.stats.dropped.fetch_add(1 + queued as u64, Ordering::Relaxed);
        if let Ok(mut slot) = recorder.stats.error.lock() {
            *slot = Some(format!("writing {}: {err}", path.display()));
        }
    }
}

fn write_loop<W: Write>(
    recorder: &mut Recorder<W>,
    events: &Receiver<CaptureEvent>,
    stop: &Receiver<()>,
) -> io::Result<()> {
    let mut last_flush = std::time::Instant::now();
    let mut dirty = false;
    loop {
        crossbeam_channel::select! {
            recv(events) -> event => match event {
                Ok(event) => {
                    recorder.apply(event)?;
                    dirty = true;
                }
                Err(_) => break,
            },
            // Disconnected: `Capture::stop` (or drop).
            recv(stop) -> _ => break,
            default(FLUSH_INTERVAL) => {}
        }
        if dirty && last_flush.elapsed() >= FLUSH_INTERVAL {
            recorder.pcap.flush()?;
            last_flush = std::time::Instant::now();
            dirty = false;
        }
    }
    // Write what the taps queued before they went inert.
    while let Ok(event) = events.try_recv() {
        recorder.apply(event)?;
    }
    recorder.pcap.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::process::Command;

    fn key(client: &str, server: &str) -> FlowKey {
        FlowKey {
            client: client.parse().unwrap(),
            server: server.parse().unwrap(),
        }
    }

    fn filter(host: Option<&str>, port: Option<u16>, sni: Option<&str>) -> CaptureFilter {
        CaptureFilter {
            host: host.map(|h| h.parse().unwrap()),
            port,
            sni: sni.map(str::to_string),
            leg: None,
        }
    }

    fn frame(n: u8, len: usize) -> CapturedFrame {
        CapturedFrame {
            time: UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_000 + u64::from(n)),
            data: vec![n; len],
            wire_len: len as u32,
        }
    }

    #[test]
    fn decides_by_host_port_and_sni() {
        use SniKnowledge::{Known, NotYet};
        use Verdict::{Keep, Pending, Skip};
        let k = key("198.18.0.1:40000", "198.18.0.2:443");
        let any = filter(None, None, None);
        assert_eq!(decide(&any, k, NotYet), Keep);
        assert_eq!(decide(&any, k, Known(None)), Keep);

        // Host: either end.
        assert_eq!(decide(&filter(Some("198.18.0.1"), None, None), k, NotYet), Keep);
        assert_eq!(decide(&filter(Some("198.18.0.2"), None, None), k, NotYet), Keep);
        assert_eq!(decide(&filter(Some("198.18.0.3"), None, None), k, NotYet), Skip);
        assert_eq!(
            decide(&filter(Some("::ffff:198.18.0.2"), None, None), k, NotYet),
            Keep,
            "an IPv4-mapped address names the same host"
        );
        // Port: either end.
        assert_eq!(decide(&filter(None, Some(443), None), k, NotYet), Keep);
        assert_eq!(decide(&filter(None, Some(40000), None), k, NotYet), Keep);
        assert_eq!(decide(&filter(None, Some(8443), None), k, NotYet), Skip);

        // SNI: pending until known, then by name (exact or wildcard).
        let sni = filter(None, None, Some("*.lab"));
        assert_eq!(decide(&sni, k, NotYet), Pending);
        assert_eq!(decide(&sni, k, Known(Some("a.lab"))), Keep);
        assert_eq!(decide(&sni, k, Known(Some("lab"))), Skip);
        assert_eq!(decide(&sni, k, Known(None)), Skip, "no SNI never matches an SNI filter");

        // Every condition must hold; an address mismatch is decided before the SNI is known.
        let all = filter(Some("198.18.0.2"), Some(443), Some("a.lab"));
        assert_eq!(decide(&all, k, NotYet), Pending);
        assert_eq!(decide(&all, k, Known(Some("A.LAB"))), Keep);
        assert_eq!(decide(&all, k, Known(Some("b.lab"))), Skip);
        let wrong_port = filter(Some("198.18.0.2"), Some(80), Some("a.lab"));
        assert_eq!(decide(&wrong_port, k, NotYet), Skip);
        assert_eq!(decide(&wrong_port, k, Known(Some("a.lab"))), Skip);
        let wrong_host = filter(Some("198.18.0.9"), Some(443), Some("a.lab"));
        assert_eq!(decide(&wrong_host, k, NotYet), Skip);
    }

    fn recorder(max_bytes: u64, limits: PendingLimits) -> Recorder<Vec<u8>> {
        Recorder {
            pcap: PcapWriter::new(Vec::new(), max_bytes).unwrap(),
            pending: PendingFrames::new(limits, Arc::new(PendingHint::default())),
            stats: Arc::new(CaptureStats::default()),
        }
    }

    /// The first data byte of each record in a pcap image (frames are filled with their number).
    fn record_ids(pcap: &[u8]) -> Vec<u8> {
        assert_eq!(&pcap[0..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        let mut ids = Vec::new();
        let mut at = PCAP_HEADER_LEN as usize;
        while at < pcap.len() {
            let caplen = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().unwrap()) as usize;
            ids.push(pcap[at + 16]);
            at += 16 + caplen;
        }
        assert_eq!(at, pcap.len(), "records end at the end of the file");
        ids
    }

    fn held(key: FlowKey, n: u8) -> CaptureEvent {
        CaptureEvent::Frame {
            key,
            pending: true,
            frame: frame(n, 60),
        }
    }

    fn kept(key: FlowKey, n: u8) -> CaptureEvent {
        CaptureEvent::Frame {
            key,
            pending: false,
            frame: frame(n, 60),
        }
    }

    #[test]
    fn pending_frames_are_written_in_order_on_a_match_and_discarded_on_a_mismatch() {
        let a = key("198.18.0.1:40000", "198.18.0.2:443");
        let b = key("198.18.0.1:40001", "198.18.0.2:443");
        let c = key("198.18.0.1:40002", "198.18.0.2:443");
        let mut r = recorder(1 << 20, PendingLimits::default());
        let hint = Arc::clone(&r.pending.hint);
        for event in [held(a, 1), held(b, 101), held(a, 2), held(c, 201), held(a, 3)] {
            r.apply(event).unwrap();
        }
        assert!(hint.may_hold(&a) && hint.may_hold(&b));
        assert_eq!((r.pending.flows(), r.pending.frames()), (3, 5));
        assert!(record_ids(r.pcap.image()).is_empty(), "nothing written while pending");

        // a's SNI matched: its held frames come first, in order, then the new one.
        r.apply(kept(a, 4)).unwrap();
        // b's did not: discarded. c ended matching: written.
        r.apply(CaptureEvent::Resolve { key: b, keep: false }).unwrap();
        r.apply(CaptureEvent::Resolve { key: c, keep: true }).unwrap();
        r.apply(kept(b, 102)).unwrap(); // (a late kept frame of b writes only itself)
        assert_eq!(record_ids(r.pcap.image()), vec![1, 2, 3, 4, 201, 102]);
        assert_eq!(r.pending.flows(), 0);
        assert!(!hint.may_hold(&a) && !hint.may_hold(&b) && !hint.may_hold(&c));
        assert_eq!(r.stats.frames.load(Ordering::Relaxed), 6);
        assert_eq!(r.stats.dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn pending_bounds_drop_and_count() {
        let limits = PendingLimits {
            frames_per_flow: 3,
            bytes_per_flow: 250,
            flows: 2,
        };
        let mut p = PendingFrames::new(limits, Arc::new(PendingHint::default()));
        let a = key("10.0.0.1:1", "10.0.0.2:443");
        // Frames per flow: the first three are kept, later ones dropped.
        for n in 1..=5 {
            let dropped = p.hold(a, frame(n, 10));
            assert_eq!(dropped, u64::from(n > 3), "frame {n}");
        }
        // Bytes per flow: 100 + 100 fit in 250, the third 100 does not.
        let b = key("10.0.0.1:2", "10.0.0.2:443");
        assert_eq!(p.hold(b, frame(11, 100)), 0);
        assert_eq!(p.hold(b, frame(12, 100)), 0);
        assert_eq!(p.hold(b, frame(13, 100)), 1);
        assert_eq!(p.hold(b, frame(14, 50)), 0, "a smaller frame still fits");
        // A third flow evicts the oldest (a, with its 3 frames).
        let c = key("10.0.0.1:3", "10.0.0.2:443");
        assert_eq!(p.hold(c, frame(21, 10)), 3);
        assert_eq!(p.flows(), 2);
        assert!(p.take(&a).is_none(), "the oldest flow was evicted");
        let b_frames: Vec<u8> = p.take(&b).unwrap().iter().map(|f| f.data[0]).collect();
        assert_eq!(b_frames, vec![11, 12, 14]);
        // Taking b made room: d does not evict c.
        let d = key("10.0.0.1:4", "10.0.0.2:443");
        assert_eq!(p.hold(d, frame(31, 10)), 0);
        assert_eq!(p.take(&c).unwrap().len(), 1);
    }

    #[test]
    fn evictions_are_counted_as_dropped() {
        let mut r = recorder(
            1 << 20,
            PendingLimits {
                flows: 1,
                ..PendingLimits::default()
            },
        );
        let a = key("10.0.0.1:1", "10.0.0.2:443");
        let b = key("10.0.0.1:2", "10.0.0.2:443");
        r.apply(held(a, 1)).unwrap();
        r.apply(held(a, 2)).unwrap();
        r.apply(held(b, 3)).unwrap();
        assert_eq!(r.stats.dropped.load(Ordering::Relaxed), 2);
        r.apply(kept(a, 4)).unwrap();
        assert_eq!(record_ids(r.pcap.image()), vec![4]);
    }

    #[test]
    fn the_file_never_exceeds_max_bytes() {
        // Header + two 60-byte frames (76 bytes each) fit exactly; the third does not.
        let max = PCAP_HEADER_LEN + 2 * (PCAP_RECORD_HEADER_LEN + 60);
        let mut r = recorder(max, PendingLimits::default());
        let k = key("10.0.0.1:1", "10.0.0.2:443");
        for n in 1..=3 {
            r.apply(kept(k, n)).unwrap();
        }
        // Once full, even a frame that would fit is left out (no gaps inside the file).
        r.apply(CaptureEvent::Frame {
            key: k,
            pending: false,
            frame: frame(4, 1),
        })
        .unwrap();
        let image = r.pcap.image();
        assert_eq!(image.len() as u64, max);
        assert_eq!(record_ids(image), vec![1, 2]);
        assert!(r.stats.full.load(Ordering::Relaxed));
        assert_eq!(r.stats.frames.load(Ordering::Relaxed), 2);
        assert_eq!(r.stats.bytes.load(Ordering::Relaxed), max);
        assert_eq!(r.stats.dropped.load(Ordering::Relaxed), 2);
        assert!(PcapWriter::new(Vec::new(), PCAP_HEADER_LEN - 1).is_err());
    }

    #[test]
    fn pcap_format_is_exact() {
        let mut w = PcapWriter::new(Vec::new(), 1 << 20).unwrap();
        let f = CapturedFrame {
            time: UNIX_EPOCH + Duration::new(0x0102_0304, 5_006_000),
            data: vec![0xaa, 0xbb],
            wire_len: 2,
        };
        assert!(w.write(&f).unwrap());
        let image = w.into_inner();
        let expected: Vec<u8> = [
            &[0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0][..],
            &[0; 8],
            &[0xff, 0xff, 0, 0, 1, 0, 0, 0],
            &[0x04, 0x03, 0x02, 0x01],
            &5006u32.to_le_bytes(),
            &[2, 0, 0, 0, 2, 0, 0, 0, 0xaa, 0xbb],
        ]
        .concat();
        assert_eq!(image, expected);
        let long = CapturedFrame::copy(&vec![0u8; SNAPLEN + 10], UNIX_EPOCH);
        assert_eq!((long.data.len(), long.wire_len), (SNAPLEN, SNAPLEN as u32 + 10));
    }

    impl PcapWriter<Vec<u8>> {
        fn image(&self) -> &[u8] {
            &self.out
        }
    }

    #[test]
    fn a_full_channel_drops_and_counts_and_never_blocks() {
        let (events, receiver) = crossbeam_channel::bounded(1);
        let stats = Arc::new(CaptureStats::default());
        let tap = CaptureTap {
            filter: Arc::new(CaptureFilter::default()),
            events,
            stats: Arc::clone(&stats),
            hint: Arc::new(PendingHint::default()),
        };
        let k = key("10.0.0.1:1", "10.0.0.2:443");
        for _ in 0..3 {
            tap.frame(k, SniKnowledge::NotYet, CaptureLeg::Client, &[0u8; 60]);
        }
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 2);
        assert_eq!(receiver.len(), 1);
        // A stopped capture takes nothing and counts nothing.
        stats.stopped.store(true, Ordering::Relaxed);
        drop(receiver.try_recv());
        tap.frame(k, SniKnowledge::NotYet, CaptureLeg::Client, &[0u8; 60]);
        assert!(receiver.is_empty());
        assert!(!tap.is_active());
    }

    #[test]
    fn a_tap_discards_held_frames_of_a_non_matching_flow_only_while_some_may_be_held() {
        let (events, receiver) = crossbeam_channel::bounded(16);
        let hint = Arc::new(PendingHint::default());
        let tap = CaptureTap {
            filter: Arc::new(filter(None, None, Some("a.lab"))),
            events,
            stats: Arc::new(CaptureStats::default()),
            hint: Arc::clone(&hint),
        };
        let k = key("10.0.0.1:1", "10.0.0.2:443");
        tap.frame(k, SniKnowledge::Known(Some("b.lab")), CaptureLeg::Client, &[0u8; 60]);
        assert!(receiver.is_empty(), "nothing held: no discard sent");
        hint.add(&k);
        tap.frame(k, SniKnowledge::Known(Some("b.lab")), CaptureLeg::Client, &[0u8; 60]);
        assert!(matches!(
            receiver.try_recv(),
            Ok(CaptureEvent::Resolve { keep: false, .. })
        ));
        tap.flow_ended(k, SniKnowledge::NotYet);
        assert!(matches!(
            receiver.try_recv(),
            Ok(CaptureEvent::Resolve { keep: false, .. })
        ));
        tap.flow_ended(k, SniKnowledge::Known(Some("a.lab")));
        assert!(matches!(
            receiver.try_recv(),
            Ok(CaptureEvent::Resolve { keep: true, .. })
        ));
    }

    // ---- an end-to-end capture read back by tshark ----

    use crate::frame::{write_ethernet_header, ETHERNET_HEADER_LEN};
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber};

    /// An Ethernet/IPv4/TCP frame with valid IP and TCP checksums.
    fn tcp_frame(
        from: SocketAddr,
        to: SocketAddr,
        control: TcpControl,
        seq: i32,
        ack: Option<i32>,
        payload: &[u8],
    ) -> Vec<u8> {
        let (SocketAddr::V4(from), SocketAddr::V4(to)) = (from, to) else {
            panic!("IPv4 only")
        };
        let tcp = TcpRepr {
            src_port: from.port(),
            dst_port: to.port(),
            control,
            seq_number: TcpSeqNumber(seq),
            ack_number: ack.map(TcpSeqNumber),
            window_len: 64240,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        let ip = Ipv4Repr {
            src_addr: *from.ip(),
            dst_addr: *to.ip(),
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let mut bytes = vec![0u8; ETHERNET_HEADER_LEN + ip.buffer_len() + tcp.buffer_len()];
        let mac = |ip: &std::net::Ipv4Addr| [2, 0, 0, 0, 0, ip.octets()[3]];
        write_ethernet_header(&mut bytes, mac(to.ip()), mac(from.ip()), 4);
        let mut packet = Ipv4Packet::new_unchecked(&mut bytes[ETHERNET_HEADER_LEN..]);
        let caps = ChecksumCapabilities::default();
        ip.emit(&mut packet, &caps);
        let mut segment = TcpPacket::new_unchecked(packet.payload_mut());
        tcp.emit(
            &mut segment,
            &IpAddress::Ipv4(*from.ip()),
            &IpAddress::Ipv4(*to.ip()),
            &caps,
        );
        bytes
    }

    /// A minimal TLS 1.2 ClientHello record naming `sni`.
    fn client_hello(sni: &str) -> Vec<u8> {
        let name = sni.as_bytes();
        let mut server_name = Vec::new();
        server_name.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes()); // list length
        server_name.push(0); // host_name
        server_name.extend_from_slice(&(name.len() as u16).to_be_bytes());
        server_name.extend_from_slice(name);
        let mut extensions = vec![0, 0]; // server_name
        extensions.extend_from_slice(&(server_name.len() as u16).to_be_bytes());
        extensions.extend_from_slice(&server_name);

        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[0x5a; 32]); // random
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0xc0, 0x2f]); // TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
        body.extend_from_slice(&extensions);

        let mut handshake = vec![1]; // client_hello
        handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        handshake.extend_from_slice(&body);
        let mut record = vec![0x16, 0x03, 0x01];
        record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
        record.extend_from_slice(&handshake);
        record
    }

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("loupe-capture-{}-{name}.pcap", std::process::id()))
    }

    #[test]
    fn a_capture_reads_back_in_tshark() {
        assert!(
            Command::new("tshark")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
            "tshark is required by this test (scripts/setup.sh installs it)"
        );
        let path = temp_path("tshark");
        let (capture, tap) = Capture::start(filter(None, Some(443), Some("a.lab")), &path, 1 << 20).unwrap();
        let worker_tap = tap.clone();

        let client: SocketAddr = "198.18.0.1:40000".parse().unwrap();
        let server: SocketAddr = "198.18.0.2:443".parse().unwrap();
        let other: SocketAddr = "198.18.0.1:40001".parse().unwrap();
        let a = FlowKey { client, server };
        let b = FlowKey { client: other, server };
        let hello_a = client_hello("a.lab");
        let hello_b = client_hello("b.lab");
        use SniKnowledge::{Known, NotYet};
        // Flow a matches once its ClientHello is parsed; flow b never does; interleaved.
        let steps: Vec<(FlowKey, SniKnowledge<'_>, Vec<u8>)> = vec![
            (a, NotYet, tcp_frame(client, server, TcpControl::Syn, 1000, None, b"")),
            (b, NotYet, tcp_frame(other, server, TcpControl::Syn, 5000, None, b"")),
            (
                a,
                NotYet,
                tcp_frame(server, client, TcpControl::Syn, 9000, Some(1001), b""),
            ),
            (
                a,
                NotYet,
                tcp_frame(client, server, TcpControl::None, 1001, Some(9001), b""),
            ),
            (
                b,
                NotYet,
                tcp_frame(server, other, TcpControl::Syn, 7000, Some(5001), b""),
            ),
            (
                a,
                NotYet,
                tcp_frame(client, server, TcpControl::Psh, 1001, Some(9001), &hello_a),
            ),
            (
                b,
                NotYet,
                tcp_frame(other, server, TcpControl::Psh, 5001, Some(7001), &hello_b),
            ),
            (
                b,
                Known(Some("b.lab")),
                tcp_frame(
                    server,
                    other,
                    TcpControl::None,
                    7001,
                    Some(5001 + hello_b.len() as i32),
                    b"",
                ),
            ),
            (
                a,
                Known(Some("a.lab")),
                tcp_frame(
                    server,
                    client,
                    TcpControl::None,
                    9001,
                    Some(1001 + hello_a.len() as i32),
                    b"",
                ),
            ),
            (
                a,
                Known(Some("a.lab")),
                tcp_frame(
                    client,
                    server,
                    TcpControl::Fin,
                    1001 + hello_a.len() as i32,
                    Some(9001),
                    b"",
                ),
            ),
        ];
        std::thread::scope(|s| {
            s.spawn(|| {
                for (key, sni, bytes) in &steps {
                    worker_tap.frame(*key, *sni, CaptureLeg::Client, bytes);
                }
                worker_tap.flow_ended(b, Known(Some("b.lab")));
            });
        });
        let summary = capture.stop();
        assert_eq!(summary.frames, 6, "{summary:?}");
        assert_eq!(summary.dropped, 0);
        assert_eq!(summary.bytes, std::fs::metadata(&path).unwrap().len());
        // After stop a tap sends nothing and counts nothing.
        tap.frame(a, Known(Some("a.lab")), CaptureLeg::Client, &[0u8; 60]);
        assert!(!tap.is_active());
        assert_eq!(tap.stats.dropped.load(Ordering::Relaxed), 0);

        let output = Command::new("tshark")
            .arg("-r")
            .arg(&path)
            .args(["-T", "fields", "-E", "separator=,"])
            .args([
                "-e",
                "ip.src",
                "-e",
                "tcp.dstport",
                "-e",
                "tcp.flags.syn",
                "-e",
                "tls.handshake.extensions_server_name",
            ])
            .output()
            .expect("tshark runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "tshark failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            lines,
            vec![
                "198.18.0.1,443,1,",
                "198.18.0.2,40000,1,",
                "198.18.0.1,443,0,",
                "198.18.0.1,443,0,a.lab",
                "198.18.0.2,40000,0,",
                "198.18.0.1,443,0,",
            ],
            "tshark stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        // tshark also validates the checksums it is asked about.
        let checks = Command::new("tshark")
            .arg("-r")
            .arg(&path)
            .args(["-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE"])
            .args(["-T", "fields", "-e", "ip.checksum.status", "-e", "tcp.checksum.status"])
            .output()
            .expect("tshark runs");
        let checks = String::from_utf8_lossy(&checks.stdout);
        assert_eq!(checks.lines().count(), 6);
        assert!(
            checks.lines().all(|l| l == "1\t1"),
            "checksum status (1 = good, 0 = bad):\n{checks}"
        );
        std::fs::remove_file(&path).unwrap();
    }

    /// Accepts `room` bytes, then fails every write.
    struct FailingDisk {
        room: usize,
    }

    impl Write for FailingDisk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::Error::other("disk full"));
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_write_error_ends_the_capture_without_panicking() {
        let stats = Arc::new(CaptureStats::default());
        let recorder = Recorder {
            pcap: PcapWriter::new(FailingDisk { room: 24 + 76 }, 1 << 20).unwrap(),
            pending: PendingFrames::new(PendingLimits::default(), Arc::new(PendingHint::default())),
            stats: Arc::clone(&stats),
        };
        let (events, receiver) = crossbeam_channel::bounded(8);
        let (_stop, stop_receiver) = crossbeam_channel::bounded::<()>(0);
        let k = key("10.0.0.1:1", "10.0.0.2:443");
        for n in 1..=4 {
            events.try_send(kept(k, n)).unwrap();
        }
        run_writer(recorder, receiver, stop_receiver, Path::new("/x.pcap"));
        assert_eq!(stats.frames.load(Ordering::Relaxed), 1);
        assert_eq!(
            stats.dropped.load(Ordering::Relaxed),
            3,
            "the failed frame and the two queued"
        );
        assert!(stats.stopped.load(Ordering::Relaxed));
        let error = stats.error.lock().unwrap().clone().unwrap();
        assert!(error.contains("/x.pcap") && error.contains("disk full"), "{error}");
        // Taps of a failed capture go inert: the receiver is gone, nothing is counted.
        let tap = CaptureTap {
            filter: Arc::new(CaptureFilter::default()),
            events,
            stats: Arc::clone(&stats),
            hint: Arc::new(PendingHint::default()),
        };
        tap.frame(k, SniKnowledge::NotYet, CaptureLeg::Client, &[0u8; 60]);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn start_names_the_path_it_cannot_create() {
        let path = Path::new("/nonexistent-loupe-dir/x.pcap");
        let err = Capture::start(CaptureFilter::default(), path, 1 << 20)
            .err()
            .expect("fails");
        assert!(err.to_string().contains("/nonexistent-loupe-dir/x.pcap"), "{err}");
        let small = temp_path("small");
        let err = Capture::start(CaptureFilter::default(), &small, 10)
            .err()
            .expect("fails");
        assert!(matches!(err, CaptureError::TooSmall { max_bytes: 10 }), "{err}");
        assert!(!small.exists(), "nothing is created for a refused capture");
    }

    #[test]
    fn a_file_read_during_a_capture_is_valid_and_stop_writes_the_queue() {
        let path = temp_path("live");
        let (capture, tap) = Capture::start(CaptureFilter::default(), &path, 1 << 20).unwrap();
        let k = key("10.0.0.1:1", "10.0.0.2:443");
        tap.frame(k, SniKnowledge::NotYet, CaptureLeg::Client, &[7u8; 60]);
        // The writer flushes within FLUSH_INTERVAL of an event, even with nothing after it.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let len = std::fs::metadata(&path).unwrap().len();
            if len == PCAP_HEADER_LEN + PCAP_RECORD_HEADER_LEN + 60 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "not flushed: {len} bytes");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(capture.summary().frames, 1);
        for _ in 0..100 {
            tap.frame(k, SniKnowledge::NotYet, CaptureLeg::Client, &[8u8; 60]);
        }
        let summary = capture.stop();
        assert_eq!(summary.frames + summary.dropped, 101);
        assert_eq!(summary.frames, 101, "stop writes everything queued: {summary:?}");
        let image = std::fs::read(&path).unwrap();
        assert_eq!(image.len() as u64, summary.bytes);
        assert_eq!(record_ids(&image).len(), 101);
        std::fs::remove_file(&path).unwrap();
    }
}
