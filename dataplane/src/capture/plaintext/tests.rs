//! Rotation, file modes and the writer thread; and the files read by tshark as clear
//! HTTP/1.1 and HTTP/2.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pcap_file::pcap::PcapReader;

use super::*;
use crate::inspect::export::SyntheticFlow;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("loupe-export-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn t(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + ms)
}

/// A packet whose frame is `len` bytes of `id`.
fn packet(id: u8, len: usize) -> SyntheticPacket {
    SyntheticPacket {
        at: t(u64::from(id)),
        frame: vec![id; len],
    }
}

/// The frames of a pcap file, checking the header (Ethernet, microseconds, 65535).
fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let file = File::open(path).unwrap();
    let mut reader = PcapReader::new(file).unwrap();
    let header = reader.header();
    assert_eq!(header.datalink, pcap_file::DataLink::ETHERNET);
    assert_eq!(header.snaplen, 65535);
    let mut frames = Vec::new();
    while let Some(packet) = reader.next_packet() {
        let packet = packet.unwrap();
        assert_eq!(packet.orig_len as usize, packet.data.len());
        frames.push(packet.data.into_owned());
    }
    frames
}

/// Export file numbers in `dir`, ascending.
fn numbers(dir: &Path) -> Vec<u64> {
    let mut found: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| number_of(e.unwrap().file_name().to_str()?))
        .collect();
    found.sort_unstable();
    found
}

#[test]
fn file_names() {
    assert_eq!(file_name(7), "plaintext-7.pcap");
    assert_eq!(number_of("plaintext-7.pcap"), Some(7));
    assert_eq!(number_of("plaintext-.pcap"), None);
    assert_eq!(number_of("plaintext-7.pcap.gz"), None);
    assert_eq!(number_of("plaintext-+7.pcap"), None);
    assert_eq!(number_of("keys.log"), None);
}

#[test]
fn rotates_at_the_size_cap_and_keeps_the_newest_files() {
    let dir = temp_dir("rotate").join("export");
    let max_bytes = MIN_FILE_BYTES + 1000;
    let mut w = PlaintextPcapWriter::open(&dir, max_bytes, 3).unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(w.current_path(), None, "no file before the first packet");
    assert!(numbers(&dir).is_empty());

    // 1000-byte frames: (max_bytes - 24) / 1016 records per file.
    let per_file = ((max_bytes - PCAP_HEADER_LEN) / (PCAP_RECORD_HEADER_LEN + 1000)) as usize;
    assert!(per_file >= 2);
    let total = per_file * 5 + 1;
    for id in 0..total {
        w.write(packet(id as u8, 1000)).unwrap();
    }
    w.flush().unwrap();
    // Six files were opened; the three newest are kept.
    assert_eq!(numbers(&dir), vec![4, 5, 6]);
    assert_eq!(w.files(), 3);
    assert_eq!(w.current_path(), Some(dir.join("plaintext-6.pcap")));
    assert_eq!(w.packets(), total as u64);
    let mut kept = Vec::new();
    for n in [4, 5, 6] {
        let path = dir.join(file_name(n));
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len <= max_bytes, "{} is {len} bytes", path.display());
        let frames = read_pcap(&path);
        if n < 6 {
            assert_eq!(frames.len(), per_file, "a full file holds as many as fit");
            assert!(
                len + PCAP_RECORD_HEADER_LEN + 1000 > max_bytes,
                "rotated only when the next would not fit"
            );
        }
        kept.extend(frames);
    }
    // The kept files hold the newest packets, whole and in order.
    let ids: Vec<u8> = kept.iter().map(|f| f[0]).collect();
    let expected: Vec<u8> = (per_file * 3..total).map(|id| id as u8).collect();
    assert_eq!(ids, expected);
    assert!(kept.iter().all(|f| f.len() == 1000 && f.iter().all(|b| *b == f[0])));
    drop(w);

    // A restart continues the numbering and counts the files already there.
    std::fs::write(dir.join("unrelated.txt"), b"x").unwrap();
    let mut w = PlaintextPcapWriter::open(&dir, max_bytes, 3).unwrap();
    w.write(packet(200, 100)).unwrap();
    w.flush().unwrap();
    assert_eq!(numbers(&dir), vec![5, 6, 7]);
    assert_eq!(read_pcap(&dir.join("plaintext-7.pcap")), vec![vec![200u8; 100]]);
    assert!(dir.join("unrelated.txt").exists(), "only export files are rotated");
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}

#[test]
fn refuses_caps_that_hold_no_packet() {
    let dir = temp_dir("caps");
    assert!(PlaintextPcapWriter::open(&dir, MIN_FILE_BYTES - 1, 3).is_err());
    assert!(PlaintextPcapWriter::open(&dir, MIN_FILE_BYTES, 0).is_err());
    let mut w = PlaintextPcapWriter::open(&dir, MIN_FILE_BYTES, 1).unwrap();
    // The largest synthetic frame fits a file of MIN_FILE_BYTES exactly.
    w.write(packet(1, MAX_FRAME)).unwrap();
    w.write(packet(2, MAX_FRAME)).unwrap();
    w.flush().unwrap();
    assert_eq!(numbers(&dir), vec![2]);
    assert_eq!(
        std::fs::metadata(dir.join("plaintext-2.pcap")).unwrap().len(),
        MIN_FILE_BYTES
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_full_channel_drops_whole_batches_and_counts_them() {
    let (batches, receiver) = crossbeam_channel::bounded(1);
    let stats = Arc::new(ExportStats::default());
    let tap = PlaintextTap {
        batches,
        stats: Arc::clone(&stats),
    };
    tap.send(vec![packet(1, 60), packet(2, 60)]);
    tap.send(vec![packet(3, 60), packet(4, 60), packet(5, 60)]);
    tap.send(Vec::new());
    assert_eq!(stats.dropped.load(Ordering::Relaxed), 3);
    assert_eq!(receiver.len(), 1);
    stats.stopped.store(true, Ordering::Relaxed);
    drop(receiver.try_recv());
    tap.send(vec![packet(6, 60)]);
    assert!(receiver.is_empty(), "a stopped export takes nothing");
    assert!(!tap.is_active());
}

#[test]
fn a_write_error_ends_the_export_and_is_reported() {
    let dir = temp_dir("error");
    let (export, tap) = PlaintextExport::start(&dir, MIN_FILE_BYTES, 2).unwrap();
    // The directory disappears under the writer: the first file cannot be created.
    std::fs::remove_dir_all(&dir).unwrap();
    tap.send(vec![packet(1, 60), packet(2, 60)]);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while tap.is_active() {
        assert!(std::time::Instant::now() < deadline, "the writer did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
    tap.send(vec![packet(3, 60)]);
    let summary = export.stop();
    assert_eq!(summary.packets, 0);
    assert_eq!(summary.dropped, 2, "{summary:?}");
    let error = summary.error.unwrap();
    assert!(error.contains("plaintext-1.pcap"), "{error}");
}

/// Runs tshark on `path` with `args`; returns its standard output.
fn tshark(path: &Path, args: &[&str]) -> String {
    let output = Command::new("tshark")
        .arg("-r")
        .arg(path)
        .args(args)
        .output()
        .expect("tshark runs");
    assert!(
        output.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The export as the daemon runs it: sessions' packets through the tap and the writer
/// thread; tshark reads the file as clear HTTP/1.1, with valid checksums.
#[test]
fn tshark_reads_http1_sessions_from_the_export() {
    let dir = temp_dir("http1");
    let (export, tap) = PlaintextExport::start(&dir, 100 << 20, 10).unwrap();
    let server: SocketAddr = "198.18.0.2:443".parse().unwrap();
    let workers: Vec<_> = (0..2u16)
        .map(|w| {
            let tap = tap.clone();
            std::thread::spawn(move || {
                let client: SocketAddr = format!("198.18.0.1:{}", 40000 + w).parse().unwrap();
                let mut flow = SyntheticFlow::new(client, server);
                let mut out = Vec::new();
                flow.open(t(0), &mut out);
                tap.send(std::mem::take(&mut out));
                for i in 0..3 {
                    let request = format!("GET /w{w}/r{i} HTTP/1.1\r\nHost: a.lab\r\n\r\n");
                    flow.client_data(t(1 + 2 * i), request.as_bytes(), &mut out);
                    tap.send(std::mem::take(&mut out));
                    let mut response = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n".to_vec();
                    response.extend(std::iter::repeat_n(b'a' + i as u8, 5000));
                    flow.server_data(t(2 + 2 * i), &response, &mut out);
                    tap.send(std::mem::take(&mut out));
                }
                flow.close(t(9), &mut out);
                tap.send(out);
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    let summary = export.stop();
    assert_eq!(summary.dropped, 0);
    assert_eq!(summary.error, None);
    let path = dir.join("plaintext-1.pcap");
    assert_eq!(summary.current.as_deref(), Some(path.as_path()));
    assert_eq!(summary.bytes, std::fs::metadata(&path).unwrap().len());
    assert_eq!(summary.files, 1);
    assert_eq!(mode(&path), 0o600);

    // Port 443 is TLS to tshark: tell it the stream is HTTP.
    let uris = tshark(
        &path,
        &[
            "-d",
            "tcp.port==443,http",
            "-Y",
            "http.request",
            "-T",
            "fields",
            "-e",
            "http.request.uri",
        ],
    );
    let mut uris: Vec<&str> = uris.lines().collect();
    uris.sort_unstable();
    assert_eq!(uris, vec!["/w0/r0", "/w0/r1", "/w0/r2", "/w1/r0", "/w1/r1", "/w1/r2"]);
    let codes = tshark(
        &path,
        &[
            "-d",
            "tcp.port==443,http",
            "-Y",
            "http.response",
            "-T",
            "fields",
            "-e",
            "http.response.code",
        ],
    );
    assert_eq!(codes.lines().filter(|c| *c == "200").count(), 6, "{codes}");

    // Checksums (tshark checks them when asked) and TCP analysis find nothing wrong.
    let checks = tshark(
        &path,
        &[
            "-o",
            "tcp.check_checksum:TRUE",
            "-o",
            "ip.check_checksum:TRUE",
            "-T",
            "fields",
            "-e",
            "ip.checksum.status",
            "-e",
            "tcp.checksum.status",
        ],
    );
    assert!(checks.lines().count() > 20);
    assert!(
        checks.lines().all(|l| l == "1\t1"),
        "checksum status (1 = good):\n{checks}"
    );
    let problems = tshark(&path, &["-Y", "tcp.analysis.flags && !tcp.analysis.window_update"]);
    assert_eq!(problems, "", "tshark's TCP analysis flags packets");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// HPACK, without Huffman coding or indexing: an indexed field or a literal with an
/// indexed name (RFC 7541 §6.1, §6.2.2).
fn hpack(fields: &[(u8, Option<&str>)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (index, value) in fields {
        match value {
            None => block.push(0x80 | index),
            Some(value) => {
                block.push(*index); // 0000 + 4-bit index (all used here are < 15)
                block.push(value.len() as u8);
                block.extend_from_slice(value.as_bytes());
            }
        }
    }
    block
}

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An h2 session (prior knowledge: the preface is in the stream) on port 443: tshark
/// reads the requests' paths when told the port carries HTTP/2.
#[test]
fn tshark_reads_h2_sessions_from_the_export() {
    const HEADERS: u8 = 1;
    const SETTINGS: u8 = 4;
    const DATA: u8 = 0;
    const END_STREAM: u8 = 1;
    const END_HEADERS: u8 = 4;
    const ACK: u8 = 1;
    let dir = temp_dir("h2");
    let mut w = PlaintextPcapWriter::open(&dir, 100 << 20, 10).unwrap();
    let client: SocketAddr = "198.18.0.1:40000".parse().unwrap();
    let server: SocketAddr = "198.18.0.2:443".parse().unwrap();
    let mut flow = SyntheticFlow::new(client, server);
    let mut out = Vec::new();
    let mut request = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    request.extend(h2_frame(SETTINGS, 0, 0, &[]));
    for (stream, path) in [(1, "/h2/one"), (3, "/h2/two")] {
        // :method GET (2), :scheme https (7), :path (4), :authority (1).
        let block = hpack(&[(2, None), (7, None), (4, Some(path)), (1, Some("a.lab"))]);
        request.extend(h2_frame(HEADERS, END_STREAM | END_HEADERS, stream, &block));
    }
    flow.client_data(t(1), &request, &mut out);
    let mut response = h2_frame(SETTINGS, 0, 0, &[]);
    response.extend(h2_frame(SETTINGS, ACK, 0, &[]));
    for stream in [1, 3] {
        // :status 200 (8).
        response.extend(h2_frame(HEADERS, END_HEADERS, stream, &hpack(&[(8, None)])));
        response.extend(h2_frame(DATA, END_STREAM, stream, b"hello"));
    }
    flow.server_data(t(2), &response, &mut out);
    flow.close(t(3), &mut out);
    for packet in out {
        w.write(packet).unwrap();
    }
    w.flush().unwrap();
    let path = w.current_path().unwrap();
    let paths = tshark(
        &path,
        &[
            "-d",
            "tcp.port==443,http2",
            "-Y",
            "http2.headers.path",
            "-T",
            "fields",
            "-e",
            "http2.headers.path",
        ],
    );
    let paths: Vec<&str> = paths.lines().flat_map(|l| l.split(',')).collect();
    assert_eq!(paths, vec!["/h2/one", "/h2/two"]);
    let statuses = tshark(
        &path,
        &[
            "-d",
            "tcp.port==443,http2",
            "-Y",
            "http2.headers.status",
            "-T",
            "fields",
            "-e",
            "http2.headers.status",
        ],
    );
    let statuses: Vec<&str> = statuses.lines().flat_map(|l| l.split(',')).collect();
    assert_eq!(statuses, vec!["200", "200"]);
    std::fs::remove_dir_all(&dir).unwrap();
}
