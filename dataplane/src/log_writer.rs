//! The thread that appends the workers' log lines to `eve.json` and `decryption.jsonl`.
//!
//! A worker queues whole lines in a [`LogBatch`] and hands the batch over once it holds
//! [`BATCH_FLUSH_BYTES`] or its oldest line waited about 10 ms (the worker's timer), so
//! neither a transaction nor a session end costs the worker a system call or a wait on
//! the file system: in the bench, workers writing eve.json themselves showed request p99
//! latencies of about 30 ms where the same run without the writes had 7, and a
//! `write(2)` of the decryption record plus a wakeup of this thread per session were
//! about 8% of a split handshake's CPU.
//!
//! Order: the thread writes a batch's EVE lines before its decryption records, so a
//! reader who sees a session's record finds that session's EVE lines already in
//! eve.json. The price of batching: lines queued in a worker (at most ~10 ms' worth) are
//! lost if the process is killed; every batch is written before a clean exit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::eve::EveLog;
use crate::tls::record::DecryptionLog;

/// Batches the writer thread may hold before a worker waits for it: 40 MiB at most.
pub const WRITER_QUEUE: usize = 256;

/// Written batches the writer thread hands back for workers to fill again.
const SPARE_BATCHES: usize = 8;

/// How long the writer thread sleeps at most without a batch. It is unparked for each
/// one and by [`LogWriter::finish`]; this bounds how long it takes to see the channel
/// closed when the sinks go without `finish`.
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// The size at which a worker hands its batch over (either log's part).
pub const BATCH_FLUSH_BYTES: usize = 64 * 1024;

/// The capacity each part of a batch is made with: a worker hands it over once a part
/// holds [`BATCH_FLUSH_BYTES`], so only a line over 16 KiB (a very long URL) grows it.
/// Grown from empty, each was reallocated seven times over, copying twice its size,
/// and its last step (128 KiB) is where glibc's allocator maps fresh pages.
pub const BATCH_CAPACITY: usize = BATCH_FLUSH_BYTES + 16 * 1024;

/// Appends `value` as one JSON line (ended by `\n`) to `lines`; on failure `lines` is as
/// it was.
pub fn append_json_line<T: serde::Serialize + ?Sized>(lines: &mut Vec<u8>, value: &T) -> Result<(), serde_json::Error> {
    let mark = lines.len();
    match serde_json::to_writer(&mut *lines, value) {
        Ok(()) => {
            lines.push(b'\n');
            Ok(())
        }
        Err(err) => {
            lines.truncate(mark);
            Err(err)
        }
    }
}

/// Whole JSON lines (each ended by `\n`) for the two logs, written in one append each.
#[derive(Debug, Default)]
pub struct LogBatch {
    pub eve: Vec<u8>,
    pub decryption: Vec<u8>,
}

impl LogBatch {
    fn with_capacity() -> Self {
        LogBatch {
            eve: Vec::with_capacity(BATCH_CAPACITY),
            decryption: Vec::with_capacity(BATCH_CAPACITY),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.eve.is_empty() && self.decryption.is_empty()
    }

    /// Whether either part reached [`BATCH_FLUSH_BYTES`].
    pub fn is_full(&self) -> bool {
        self.eve.len().max(self.decryption.len()) >= BATCH_FLUSH_BYTES
    }

    /// Whether both parts have the capacity a fresh batch is made with.
    fn reusable(&self) -> bool {
        self.eve.capacity() >= BATCH_CAPACITY && self.decryption.capacity() >= BATCH_CAPACITY
    }
}

/// Appends the workers' batches on a thread of its own. The thread ends once every
/// [`LogSink`] is gone, after writing every batch handed over; [`LogWriter::finish`]
/// waits for that.
#[derive(Debug)]
pub struct LogWriter {
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A worker's way to the writer thread.
#[derive(Debug, Clone)]
pub struct LogSink {
    sender: crossbeam_channel::Sender<LogBatch>,
    spares: crossbeam_channel::Receiver<LogBatch>,
    failed: Arc<FailedCounters>,
    /// The writer thread, unparked after each batch.
    writer: std::thread::Thread,
}

#[derive(Debug, Default)]
struct FailedCounters {
    eve: AtomicU64,
    decryption: AtomicU64,
}

/// Batches (parts of batches) the thread failed to write, per log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FailedWrites {
    pub eve: u64,
    pub decryption: u64,
}

impl LogWriter {
    pub fn start(eve: Arc<EveLog>, decryption: Arc<DecryptionLog>) -> std::io::Result<(LogWriter, LogSink)> {
        let (sender, batches) = crossbeam_channel::bounded::<LogBatch>(WRITER_QUEUE);
        let (give_back, spares) = crossbeam_channel::bounded::<LogBatch>(SPARE_BATCHES);
        let failed = Arc::new(FailedCounters::default());
        let counters = failed.clone();
        let thread = std::thread::Builder::new()
            .name("loupe-logs".into())
            .spawn(move || loop {
                // Parked between batches rather than in the channel's blocking receive, which
                // spins and then yields the CPU several times before it sleeps: with a batch
                // every ~12 ms under load, those yields were a third of this thread's CPU and
                // each a context switch on a core the workers need.
                let mut batch = match batches.try_recv() {
                    Ok(batch) => batch,
                    Err(crossbeam_channel::TryRecvError::Empty) => {
                        std::thread::park_timeout(IDLE_WAKE);
                        continue;
                    }
                    Err(crossbeam_channel::TryRecvError::Disconnected) => break,
                };
                if !batch.eve.is_empty() {
                    if let Err(err) = eve.write_lines(&batch.eve) {
                        counters.eve.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(%err, "EVE log write failed");
                    }
                }
                if !batch.decryption.is_empty() {
                    if let Err(err) = decryption.write_lines(&batch.decryption) {
                        counters.decryption.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(%err, "decryption log write failed");
                    }
                }
                if batch.reusable() {
                    batch.eve.clear();
                    batch.decryption.clear();
                    // Enough spares waiting: this one is freed.
                    let _ = give_back.try_send(batch);
                }
            })?;
        let sink = LogSink {
            sender,
            spares,
            failed,
            writer: thread.thread().clone(),
        };
        Ok((LogWriter { thread: Some(thread) }, sink))
    }

    /// Waits until the thread wrote every batch: call it once every sink is dropped.
    pub fn finish(mut self) {
        if let Some(thread) = self.thread.take() {
            // It sees the channel closed when it next looks.
            thread.thread().unpark();
            if thread.join().is_err() {
                tracing::error!("the log writer thread panicked");
            }
        }
    }
}

impl LogSink {
    /// Hands over a batch. Waits only when the thread is [`WRITER_QUEUE`] batches
    /// behind: lines keep their order and none is dropped. `Err` gives the batch back
    /// when the thread is gone.
    pub fn send(&self, batch: LogBatch) -> Result<(), LogBatch> {
        self.sender.send(batch).map_err(|error| error.into_inner())?;
        self.writer.unpark();
        Ok(())
    }

    /// An empty batch to fill: one the thread wrote and gave back, or a new one with
    /// room for [`BATCH_FLUSH_BYTES`] and a last line in each part.
    pub fn empty_batch(&self) -> LogBatch {
        self.spares.try_recv().unwrap_or_else(|_| LogBatch::with_capacity())
    }

    /// Writes the thread failed since the last call, by any sink.
    pub fn take_failed_writes(&self) -> FailedWrites {
        FailedWrites {
            eve: self.failed.eve.swap(0, Ordering::Relaxed),
            decryption: self.failed.decryption.swap(0, Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests;
