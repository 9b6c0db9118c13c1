//! Decrypted export to pcap files: the synthetic TCP flows of [`crate::inspect::export`]
//! (the plaintext of sessions whose rule exports `pcap`) written to
//! `<dir>/plaintext-<n>.pcap`, classic libpcap like `loupectl capture` files.
//!
//! Files and rotation ([`PlaintextPcapWriter`]):
//! - `plaintext-1.pcap`, `plaintext-2.pcap`, …: the highest number is the newest; numbering
//!   continues after the highest file already in the directory (a restart never
//!   overwrites). A file is created when its first packet comes, not before.
//! - A new file starts when the next packet would take the current one past `max_bytes`
//!   (pcap header included): a packet is never split between files. At most `max_files`
//!   files are kept: opening one more deletes the oldest (lowest numbers) first.
//! - Files are created mode 0600, the directory (when loupe creates it) 0700: they hold
//!   decrypted traffic.
//!
//! Sharing between workers ([`PlaintextExport`], [`PlaintextTap`]): one writer thread
//! `loupe-export` owns the files; each worker holds a clone of the tap and sends the
//! packets of one session call as one batch over a bounded channel. The worker never
//! blocks on the disk or on a lock (as for captures); a batch is written whole and in
//! order (a flow lives on one worker, and the channel keeps each sender's order), so the
//! packets of concurrent sessions interleave only between batches. A full channel drops
//! the batch and counts its packets in [`ExportSummary::dropped`] (the reader then sees
//! a gap in that flow: "previous segment not captured"). The writer flushes at least every
//! [`FLUSH_INTERVAL`](super::FLUSH_INTERVAL). A write error ends the export (the taps go
//! inert) and is reported in [`ExportSummary::error`], as for captures.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde::Serialize;

use super::{CapturedFrame, PcapWriter, FLUSH_INTERVAL, PCAP_HEADER_LEN, PCAP_RECORD_HEADER_LEN};
use crate::inspect::export::{SyntheticPacket, MAX_FRAME};

/// Batches queued from the taps to the writer; beyond this a batch is dropped (counted).
pub const CHANNEL_BATCHES: usize = 4096;
/// The smallest `max_bytes`: the pcap header and one largest synthetic packet.
pub const MIN_FILE_BYTES: u64 = PCAP_HEADER_LEN + PCAP_RECORD_HEADER_LEN + MAX_FRAME as u64;
const PREFIX: &str = "plaintext-";
const SUFFIX: &str = ".pcap";

/// The file name of export file `n`.
pub fn file_name(n: u64) -> String {
    format!("{PREFIX}{n}{SUFFIX}")
}

/// The number of an export file name (`plaintext-12.pcap` → 12).
fn number_of(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Creates `dir` (and missing parents) mode 0700 unless it exists.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Writes synthetic packets to rotated pcap files in one directory. Does the file I/O
/// itself (the writer thread calls it; tests call it directly).
pub struct PlaintextPcapWriter {
    dir: PathBuf,
    max_bytes: u64,
    max_files: usize,
    /// The file being written and its number.
    current: Option<(u64, PcapWriter<BufWriter<File>>)>,
    /// Numbers of the files kept, oldest first (the current one last).
    files: VecDeque<u64>,
    next: u64,
    packets: u64,
    bytes: u64,
}

impl PlaintextPcapWriter {
    /// Creates `dir` (mode 0700) if missing and finds the export files already in it.
    /// `max_bytes` must hold one largest packet ([`MIN_FILE_BYTES`]); `max_files` at least 1.
    pub fn open(dir: &Path, max_bytes: u64, max_files: usize) -> io::Result<PlaintextPcapWriter> {
        if max_bytes < MIN_FILE_BYTES || max_files == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "expected max_bytes of at least {MIN_FILE_BYTES} and at least 1 file, got {max_bytes} bytes and \
                     {max_files} files"
                ),
            ));
        }
        let context =
            |what: &str, err: io::Error| io::Error::new(err.kind(), format!("{what} {}: {err}", dir.display()));
        create_private_dir(dir).map_err(|e| context("creating the export directory", e))?;
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| context("reading the export directory", e))? {
            let entry = entry.map_err(|e| context("reading the export directory", e))?;
            if let Some(n) = entry.file_name().to_str().and_then(number_of) {
                files.push(n);
            }
        }
        files.sort_unstable();
        let next = files.last().map_or(1, |n| n.saturating_add(1));
        Ok(PlaintextPcapWriter {
            dir: dir.to_path_buf(),
            max_bytes,
            max_files,
            current: None,
            files: files.into(),
            next,
            packets: 0,
            bytes: 0,
        })
    }

    /// Appends one packet, starting a new file first when it would not fit the current one.
    pub fn write(&mut self, packet: SyntheticPacket) -> io::Result<()> {
        // Synthetic frames are far below SNAPLEN: no copy, no cut.
        let frame = CapturedFrame {
            time: packet.at,
            wire_len: packet.frame.len() as u32,
            data: packet.frame,
        };
        if let Some((_, pcap)) = &mut self.current {
            let before = pcap.written();
            if pcap.write(&frame)? {
                self.packets += 1;
                self.bytes += pcap.written() - before;
                return Ok(());
            }
        }
        self.rotate()?;
        let (_, pcap) = self.current.as_mut().expect("rotate opened a file");
        let before = pcap.written();
        if !pcap.write(&frame)? {
            // Cannot happen: `open` refused a max_bytes that does not hold one packet.
            return Err(io::Error::other("a packet larger than an export file"));
        }
        self.packets += 1;
        self.bytes += pcap.written() - before;
        Ok(())
    }

    /// Closes the current file (flushed) and opens the next, deleting the oldest beyond
    /// `max_files`.
    fn rotate(&mut self) -> io::Result<()> {
        if let Some((_, mut pcap)) = self.current.take() {
            pcap.flush()?;
        }
        let n = self.next;
        self.next = n.saturating_add(1);
        let path = self.dir.join(file_name(n));
        let context =
            |what: &str, err: io::Error| io::Error::new(err.kind(), format!("{what} {}: {err}", path.display()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| context("creating", e))?;
        // The mode is exact whatever the umask.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| context("setting mode 0600 on", e))?;
        let pcap = PcapWriter::new(BufWriter::with_capacity(64 << 10, file), self.max_bytes)
            .map_err(|e| context("writing", e))?;
        self.bytes += pcap.written();
        self.current = Some((n, pcap));
        self.files.push_back(n);
        while self.files.len() > self.max_files {
            let Some(oldest) = self.files.pop_front() else {
                break;
            };
            let old = self.dir.join(file_name(oldest));
            match std::fs::remove_file(&old) {
                Ok(()) => tracing::debug!(file = %old.display(), "export: oldest file deleted"),
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => tracing::warn!(file = %old.display(), %err, "export: cannot delete the oldest file"),
            }
        }
        tracing::debug!(file = %path.display(), "export: new file");
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        match &mut self.current {
            Some((_, pcap)) => pcap.flush(),
            None => Ok(()),
        }
    }

    /// The file being written, if any.
    pub fn current_path(&self) -> Option<PathBuf> {
        self.current_number().map(|n| self.dir.join(file_name(n)))
    }

    /// The number of the file being written, if any.
    pub fn current_number(&self) -> Option<u64> {
        self.current.as_ref().map(|(n, _)| *n)
    }

    /// Files kept in the directory, the current one included.
    pub fn files(&self) -> usize {
        self.files.len()
    }

    /// Packets written.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Bytes written, pcap headers included, all files together.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// Figures shared by the taps, the writer thread and the control thread.
#[derive(Debug, Default)]
struct ExportStats {
    packets: AtomicU64,
    bytes: AtomicU64,
    dropped: AtomicU64,
    files: AtomicU64,
    stopped: AtomicBool,
    current: Mutex<Option<PathBuf>>,
    error: Mutex<Option<String>>,
}

/// The figures of the plaintext export (for `status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExportSummary {
    pub dir: PathBuf,
    /// The file being written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<PathBuf>,
    /// Export files in the directory.
    pub files: u64,
    /// Packets written since the export started.
    pub packets: u64,
    /// Bytes written since the export started, pcap headers included.
    pub bytes: u64,
    /// Packets not written: batches a full channel refused, and those lost to the write
    /// error that ended the export.
    pub dropped: u64,
    /// The write error that ended the export.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why the export could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("decrypted export: {0}")]
    Open(io::Error),
    #[error("cannot start the export thread: {0}")]
    Spawn(io::Error),
}

/// The worker's side of the export: clone one to every worker.
#[derive(Debug, Clone)]
pub struct PlaintextTap {
    batches: Sender<Vec<SyntheticPacket>>,
    stats: Arc<ExportStats>,
}

impl PlaintextTap {
    /// Queues the packets of one session call to be written together. Never blocks or
    /// locks: a full channel drops them (counted).
    pub fn send(&self, packets: Vec<SyntheticPacket>) {
        if packets.is_empty() || self.stats.stopped.load(Ordering::Relaxed) {
            return;
        }
        let count = packets.len() as u64;
        match self.batches.try_send(packets) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.stats.dropped.fetch_add(count, Ordering::Relaxed);
            }
            // The writer is gone (stopped, or a write error already counted).
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Whether the export still takes packets.
    pub fn is_active(&self) -> bool {
        !self.stats.stopped.load(Ordering::Relaxed)
    }
}

/// The running export: its writer thread and figures. Owned by the daemon.
pub struct PlaintextExport {
    dir: PathBuf,
    stats: Arc<ExportStats>,
    /// Dropped to tell the writer to finish.
    stop: Option<Sender<()>>,
    writer: Option<JoinHandle<()>>,
}

impl PlaintextExport {
    /// Opens the directory (see [`PlaintextPcapWriter::open`]) and starts the writer thread
    /// `loupe-export`. Returns the export and a tap to clone to every worker.
    pub fn start(dir: &Path, max_bytes: u64, max_files: usize) -> Result<(PlaintextExport, PlaintextTap), ExportError> {
        let writer = PlaintextPcapWriter::open(dir, max_bytes, max_files).map_err(ExportError::Open)?;
        let stats = Arc::new(ExportStats::default());
        stats.files.store(writer.files() as u64, Ordering::Relaxed);
        let (batches, receiver) = crossbeam_channel::bounded(CHANNEL_BATCHES);
        let (stop, stop_receiver) = crossbeam_channel::bounded::<()>(0);
        let thread_stats = Arc::clone(&stats);
        let handle = std::thread::Builder::new()
            .name("loupe-export".into())
            .spawn(move || run_writer(writer, receiver, stop_receiver, thread_stats))
            .map_err(ExportError::Spawn)?;
        tracing::info!(dir = %dir.display(), max_bytes, max_files, "decrypted export started");
        Ok((
            PlaintextExport {
                dir: dir.to_path_buf(),
                stats: Arc::clone(&stats),
                stop: Some(stop),
                writer: Some(handle),
            },
            PlaintextTap { batches, stats },
        ))
    }

    /// Stops: taps go inert, the writer writes what was queued, flushes and is joined.
    pub fn stop(mut self) -> ExportSummary {
        self.finish();
        self.summary()
    }

    /// The figures so far.
    pub fn summary(&self) -> ExportSummary {
        fn lock<T: Clone>(slot: &Mutex<Option<T>>) -> Option<T> {
            slot.lock().map(|v| v.clone()).unwrap_or_default()
        }
        ExportSummary {
            dir: self.dir.clone(),
            current: lock(&self.stats.current),
            files: self.stats.files.load(Ordering::Relaxed),
            packets: self.stats.packets.load(Ordering::Relaxed),
            bytes: self.stats.bytes.load(Ordering::Relaxed),
            dropped: self.stats.dropped.load(Ordering::Relaxed),
            error: lock(&self.stats.error),
        }
    }

    fn finish(&mut self) {
        self.stats.stopped.store(true, Ordering::Relaxed);
        drop(self.stop.take());
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::warn!("export writer thread panicked");
            }
        }
    }
}

impl Drop for PlaintextExport {
    fn drop(&mut self) {
        self.finish();
    }
}

fn run_writer(
    mut writer: PlaintextPcapWriter,
    batches: Receiver<Vec<SyntheticPacket>>,
    stop: Receiver<()>,
    stats: Arc<ExportStats>,
) {
    let result = write_loop(&mut writer, &batches, &stop, &stats);
    stats.stopped.store(true, Ordering::Relaxed);
    if let Err((err, lost)) = result {
        tracing::warn!(dir = %writer.dir.display(), %err, "decrypted export ended by a write error");
        let queued: usize = batches.try_iter().map(|b| b.len()).sum();
        stats.dropped.fetch_add(lost + queued as u64, Ordering::Relaxed);
        if let Ok(mut slot) = stats.error.lock() {
            *slot = Some(err.to_string());
        }
    }
}

/// Writes batches until stopped; on an error, returns it and the packets of the batch
/// that were not written.
fn write_loop(
    writer: &mut PlaintextPcapWriter,
    batches: &Receiver<Vec<SyntheticPacket>>,
    stop: &Receiver<()>,
    stats: &ExportStats,
) -> Result<(), (io::Error, u64)> {
    let mut last_flush = std::time::Instant::now();
    let mut dirty = false;
    let mut shown = None;
    let mut write = |writer: &mut PlaintextPcapWriter, batch: Vec<SyntheticPacket>| {
        let mut left = batch.len() as u64;
        for packet in batch {
            writer.write(packet).map_err(|e| (e, left))?;
            left -= 1;
        }
        stats.packets.store(writer.packets(), Ordering::Relaxed);
        stats.bytes.store(writer.bytes(), Ordering::Relaxed);
        stats.files.store(writer.files() as u64, Ordering::Relaxed);
        if shown != writer.current_number() {
            shown = writer.current_number();
            if let Ok(mut slot) = stats.current.lock() {
                *slot = writer.current_path();
            }
        }
        Ok(())
    };
    loop {
        crossbeam_channel::select! {
            recv(batches) -> batch => match batch {
                Ok(batch) => {
                    write(writer, batch)?;
                    dirty = true;
                }
                Err(_) => break,
            },
            // Disconnected: `PlaintextExport::stop` (or drop).
            recv(stop) -> _ => break,
            default(FLUSH_INTERVAL) => {}
        }
        if dirty && last_flush.elapsed() >= FLUSH_INTERVAL {
            writer.flush().map_err(|e| (e, 0))?;
            last_flush = std::time::Instant::now();
            dirty = false;
        }
    }
    // Write what the taps queued before they went inert.
    while let Ok(batch) = batches.try_recv() {
        write(writer, batch)?;
    }
    writer.flush().map_err(|e| (e, 0))
}

#[cfg(test)]
mod tests;
