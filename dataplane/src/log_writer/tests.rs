use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::*;
use crate::test_dir::TempDir;

fn read_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'));
    text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

fn start(dir: &TempDir) -> (Arc<EveLog>, Arc<DecryptionLog>, LogWriter, LogSink) {
    let eve = Arc::new(EveLog::open(&dir.0).unwrap());
    let decryption = Arc::new(DecryptionLog::open(&dir.0).unwrap());
    let (writer, sink) = LogWriter::start(eve.clone(), decryption.clone()).unwrap();
    (eve, decryption, writer, sink)
}

#[test]
fn the_writer_thread_writes_every_batch_to_its_logs_in_order_before_it_finishes() {
    let dir = TempDir::new("log-writer");
    let (eve, decryption, writer, sink) = start(&dir);
    let senders: Vec<_> = (0..2u64)
        .map(|worker| {
            let sink = sink.clone();
            std::thread::spawn(move || {
                // More batches than the queue holds: senders wait, nothing is dropped.
                for batch in 0..(WRITER_QUEUE as u64 * 2) {
                    let line = format!("{{\"worker\":{worker},\"batch\":{batch}}}\n");
                    let record = format!("{{\"session_id\":{batch},\"worker\":{worker}}}\n");
                    let batch = LogBatch {
                        eve: line.repeat(3).into_bytes(),
                        // Every other batch has no session ending in it.
                        decryption: if batch % 2 == 0 {
                            record.into_bytes()
                        } else {
                            Vec::new()
                        },
                    };
                    sink.send(batch).unwrap();
                }
            })
        })
        .collect();
    senders.into_iter().for_each(|sender| sender.join().unwrap());
    drop(sink);
    writer.finish();
    let events = read_lines(eve.path());
    assert_eq!(events.len(), 2 * 3 * 2 * WRITER_QUEUE);
    let records = read_lines(decryption.path());
    assert_eq!(records.len(), 2 * WRITER_QUEUE);
    for worker in 0..2u64 {
        let batches: Vec<u64> = events
            .iter()
            .filter(|e| e["worker"] == worker)
            .map(|e| e["batch"].as_u64().unwrap())
            .collect();
        let expected: Vec<u64> = (0..(WRITER_QUEUE as u64 * 2)).flat_map(|b| [b; 3]).collect();
        assert_eq!(batches, expected, "worker {worker}'s EVE lines in order");
        let sessions: Vec<u64> = records
            .iter()
            .filter(|r| r["worker"] == worker)
            .map(|r| r["session_id"].as_u64().unwrap())
            .collect();
        let expected: Vec<u64> = (0..(WRITER_QUEUE as u64 * 2)).step_by(2).collect();
        assert_eq!(sessions, expected, "worker {worker}'s records in order");
    }
}

#[test]
fn written_batches_come_back_empty_and_whole_for_the_workers_to_fill_again() {
    let dir = TempDir::new("log-spares");
    let (eve, decryption, writer, sink) = start(&dir);
    let fresh = sink.empty_batch();
    assert!(fresh.is_empty() && fresh.eve.capacity() >= BATCH_CAPACITY);
    assert!(fresh.decryption.capacity() >= BATCH_CAPACITY);
    let mut batch = fresh;
    batch.eve.extend_from_slice(b"{\"n\":1}\n");
    batch.decryption.extend_from_slice(b"{\"session_id\":1}\n");
    let address = batch.eve.as_ptr();
    sink.send(batch).unwrap();
    // A batch of another size (none a worker makes) is freed, not handed out.
    sink.send(LogBatch {
        eve: b"{\"n\":2}\n".to_vec(),
        decryption: Vec::new(),
    })
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let spare = loop {
        let spare = sink.empty_batch();
        if spare.eve.as_ptr() == address || Instant::now() > deadline {
            break spare;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(spare.eve.as_ptr(), address, "the written batch came back");
    assert!(spare.is_empty() && spare.eve.capacity() >= BATCH_CAPACITY);
    drop(sink);
    writer.finish();
    assert_eq!(read_lines(eve.path()).len(), 2, "both batches' EVE lines written");
    assert_eq!(read_lines(decryption.path()).len(), 1, "the record written");
}

#[test]
fn a_batch_is_full_once_either_log_holds_the_flush_size() {
    let mut batch = LogBatch::default();
    assert!(batch.is_empty() && !batch.is_full());
    batch.decryption.resize(BATCH_FLUSH_BYTES - 1, b' ');
    assert!(!batch.is_empty() && !batch.is_full());
    batch.decryption.push(b'\n');
    assert!(batch.is_full());
    let eve_only = LogBatch {
        eve: vec![b'\n'; BATCH_FLUSH_BYTES],
        decryption: Vec::new(),
    };
    assert!(eve_only.is_full());
}
