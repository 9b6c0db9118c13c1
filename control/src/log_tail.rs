//! Reading the decryption log (JSON lines) for `log-tail`: the last records of a file
//! that may be large, read backwards from its end a chunk at a time, and then the
//! complete lines appended to it, across truncation and rotation.
//!
//! Only complete lines (ended by `\n`) are records: a line being written is picked up
//! once its newline is there. A line longer than [`MAX_RECORD_BYTES`] is skipped without
//! being held in memory.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::protocol::name_matches;

/// Bytes read from the file at a time.
const CHUNK: usize = 64 << 10;
/// Longer log lines are skipped (a decryption record is a few KiB).
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// Which records `log-tail` sends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordFilter {
    /// Only failures: `outcome` is `blocked` or `aborted`, or `error` is set.
    pub errors: bool,
    /// Only records whose `sni` matches (exact or `*.example.com`).
    pub sni: Option<String>,
}

impl RecordFilter {
    /// The record in `line` when it is a JSON object that passes the filter.
    pub fn select(&self, line: &[u8]) -> Option<Value> {
        let value: Value = serde_json::from_slice(line).ok()?;
        let record = value.as_object()?;
        if self.errors {
            let failed_outcome = matches!(
                record.get("outcome").and_then(Value::as_str),
                Some("blocked" | "aborted")
            );
            let has_error = record.get("error").is_some_and(|e| !e.is_null());
            if !failed_outcome && !has_error {
                return None;
            }
        }
        if let Some(pattern) = &self.sni {
            let sni = record.get("sni").and_then(Value::as_str)?;
            if !name_matches(pattern, sni) {
                return None;
            }
        }
        Some(value)
    }
}

/// Reads `buf.len()` bytes at `offset`, or fewer when the file ends first (it may have
/// been truncated meanwhile). Returns how many were read.
fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// The offset where the last `want` selected complete lines of `file[..end]` begin
/// (0 when there are fewer). Reads backwards from `end`, a chunk at a time, and stops
/// as soon as it has found them.
pub fn tail_start(file: &File, end: u64, want: usize, filter: &RecordFilter) -> io::Result<u64> {
    if want == 0 {
        return Ok(end);
    }
    let mut found = 0;
    // File bytes [buf_off, buf_off + buf.len()); the end of `buf` is a line end (just
    // before a newline already consumed), except at first (`partial`): the bytes after
    // the file's last newline are an empty or unfinished line, never a record.
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_off = end;
    let mut partial = true;
    // Inside a line longer than MAX_RECORD_BYTES: drop bytes until its start.
    let mut skipping = false;
    loop {
        if !skipping {
            while let Some(nl) = buf.iter().rposition(|&b| b == b'\n') {
                let line = &buf[nl + 1..];
                if !partial && !line.is_empty() && filter.select(line).is_some() {
                    found += 1;
                    if found == want {
                        return Ok(buf_off + nl as u64 + 1);
                    }
                }
                partial = false;
                buf.truncate(nl);
            }
            if buf.len() > MAX_RECORD_BYTES {
                buf.clear();
                skipping = true;
            }
        }
        if buf_off == 0 {
            // `buf` (if complete) is the file's first line; the answer is 0 either way.
            return Ok(0);
        }
        let size = CHUNK.min(buf_off as usize);
        let mut chunk = vec![0; size];
        let got = read_at_most(file, &mut chunk, buf_off - size as u64)?;
        if got < size {
            // Truncated under us: nothing sensible to tail from this file.
            return Ok(end);
        }
        buf_off -= size as u64;
        if skipping {
            if let Some(nl) = chunk.iter().rposition(|&b| b == b'\n') {
                // The long line starts after `nl`; what precedes ends a line.
                chunk.truncate(nl);
                buf = chunk;
                skipping = false;
                partial = false;
            }
        } else {
            chunk.extend_from_slice(&buf);
            buf = chunk;
        }
    }
}

/// Calls `each` with every complete line of `file[from..end]` (without its newline)
/// until it returns false. Returns the offset after the last line handed over (the
/// start of an unfinished line, if any) and whether `each` wants more. `skipping` says
/// `from` is inside an overlong line; it is updated for the next call.
pub fn read_lines(
    file: &File,
    from: u64,
    end: u64,
    skipping: &mut bool,
    mut each: impl FnMut(&[u8]) -> bool,
) -> io::Result<(u64, bool)> {
    let mut buf: Vec<u8> = Vec::new();
    let mut off = from; // file offset of buf[0]
    while off + (buf.len() as u64) < end {
        let read_from = off + buf.len() as u64;
        let size = CHUNK.min((end - read_from) as usize);
        let old = buf.len();
        buf.resize(old + size, 0);
        let got = read_at_most(file, &mut buf[old..], read_from)?;
        buf.truncate(old + got);
        let mut start = 0;
        while let Some(rel) = buf[start.max(old)..].iter().position(|&b| b == b'\n') {
            let nl = start.max(old) + rel;
            let line = &buf[start..nl];
            start = nl + 1;
            if std::mem::take(skipping) {
                continue;
            }
            if !line.is_empty() && !each(line) {
                return Ok((off + start as u64, false));
            }
        }
        buf.drain(..start);
        off += start as u64;
        if buf.len() > MAX_RECORD_BYTES || (*skipping && !buf.is_empty()) {
            off += buf.len() as u64;
            buf.clear();
            *skipping = true;
        }
        if got < size {
            break; // truncated under us; the follower notices the shrink
        }
    }
    Ok((off, true))
}

/// The last `lines` selected records of the file at `path`, oldest first; none when
/// the file does not exist.
pub fn last_records(path: &Path, lines: usize, filter: &RecordFilter) -> io::Result<Vec<Value>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let end = file.metadata()?.len();
    let start = tail_start(&file, end, lines, filter)?;
    let mut records = Vec::new();
    read_lines(&file, start, end, &mut false, |line| {
        if let Some(record) = filter.select(line) {
            records.push(record);
        }
        true
    })?;
    Ok(records)
}

/// Follows the log at a path: the tail first, then lines as they are appended. Polled
/// by the caller; reopens the file when it is replaced (another inode) or shrinks, and
/// waits for it when it does not exist yet.
#[derive(Debug)]
pub struct LogFollower {
    path: PathBuf,
    file: Option<File>,
    inode: (u64, u64),
    pos: u64,
    skipping: bool,
}

impl LogFollower {
    pub fn new(path: &Path) -> LogFollower {
        LogFollower {
            path: path.to_path_buf(),
            file: None,
            inode: (0, 0),
            pos: 0,
            skipping: false,
        }
    }

    /// Opens the file (if it exists) and hands over its last `lines` selected records.
    pub fn start(
        &mut self,
        lines: usize,
        filter: &RecordFilter,
        mut each: impl FnMut(Value) -> bool,
    ) -> io::Result<bool> {
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        let end = meta.len();
        let start = tail_start(&file, end, lines, filter)?;
        let (pos, more) = read_lines(&file, start, end, &mut self.skipping, |line| {
            match filter.select(line) {
                Some(record) => each(record),
                None => true,
            }
        })?;
        self.pos = pos;
        self.inode = (meta.dev(), meta.ino());
        self.file = Some(file);
        Ok(more)
    }

    /// Hands over the selected records appended since the last call. Returns whether
    /// `each` wants more.
    pub fn poll(&mut self, filter: &RecordFilter, mut each: impl FnMut(Value) -> bool) -> io::Result<bool> {
        let mut pass = |line: &[u8]| match filter.select(line) {
            Some(record) => each(record),
            None => true,
        };
        let current = match std::fs::metadata(&self.path) {
            Ok(meta) => Some(meta),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let replaced = match (&self.file, &current) {
            (Some(_), Some(meta)) => (meta.dev(), meta.ino()) != self.inode,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if replaced {
            // Rotated away: finish what was appended to the old file first.
            if let Some(old) = self.file.take() {
                let end = old.metadata()?.len();
                if end >= self.pos {
                    let (_, more) = read_lines(&old, self.pos, end, &mut self.skipping, &mut pass)?;
                    if !more {
                        return Ok(false);
                    }
                }
            }
        }
        if self.file.is_none() {
            if current.is_none() {
                return Ok(true);
            }
            let file = match File::open(&self.path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
                Err(e) => return Err(e),
            };
            let meta = file.metadata()?;
            self.inode = (meta.dev(), meta.ino());
            self.pos = 0;
            self.skipping = false;
            self.file = Some(file);
        }
        let Some(file) = &self.file else {
            return Ok(true);
        };
        let end = file.metadata()?.len();
        if end < self.pos {
            // Truncated in place: start over from its beginning.
            self.pos = 0;
            self.skipping = false;
        }
        let (pos, more) = read_lines(file, self.pos, end, &mut self.skipping, &mut pass)?;
        self.pos = pos;
        Ok(more)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("loupe-logtail-{}-{name}", std::process::id()))
    }

    fn record(i: usize, outcome: &str, sni: &str) -> String {
        format!(r#"{{"session_id":{i},"outcome":"{outcome}","sni":"{sni}","error":null}}"#)
    }

    fn ids(records: &[Value]) -> Vec<u64> {
        records.iter().map(|r| r["session_id"].as_u64().unwrap()).collect()
    }

    #[test]
    fn tail_reads_the_last_records_across_chunks() {
        let path = temp_path("chunks");
        let mut text = String::new();
        // ~100 bytes a line, 5000 lines: many 64 KiB chunks.
        for i in 0..5000 {
            let outcome = if i % 7 == 0 { "aborted" } else { "decrypted" };
            text.push_str(&record(i, outcome, &format!("h{i}.lab")));
            text.push_str(&" ".repeat(40));
            text.push('\n');
        }
        text.push_str(r#"{"session_id":99999,"outcome":"abor"#); // unfinished
        std::fs::write(&path, &text).unwrap();
        let all = RecordFilter::default();
        assert_eq!(ids(&last_records(&path, 3, &all).unwrap()), vec![4997, 4998, 4999]);
        assert_eq!(last_records(&path, 0, &all).unwrap().len(), 0);
        assert_eq!(last_records(&path, 100_000, &all).unwrap().len(), 5000);
        let errors = RecordFilter {
            errors: true,
            sni: None,
        };
        assert_eq!(ids(&last_records(&path, 2, &errors).unwrap()), vec![4991, 4998]);
        let sni = RecordFilter {
            errors: false,
            sni: Some("h10.lab".into()),
        };
        assert_eq!(ids(&last_records(&path, 5, &sni).unwrap()), vec![10]);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn overlong_and_garbage_lines_are_skipped() {
        let path = temp_path("long");
        let mut text = record(1, "decrypted", "a.lab") + "\n";
        text.push_str(&"x".repeat(3 * MAX_RECORD_BYTES));
        text.push('\n');
        text.push_str("not json\n\n[1,2]\n");
        text.push_str(&(record(2, "decrypted", "a.lab") + "\n"));
        std::fs::write(&path, &text).unwrap();
        let all = RecordFilter::default();
        assert_eq!(ids(&last_records(&path, 10, &all).unwrap()), vec![1, 2]);
        assert_eq!(ids(&last_records(&path, 1, &all).unwrap()), vec![2]);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn missing_file_has_no_records() {
        let all = RecordFilter::default();
        assert!(last_records(&temp_path("missing"), 5, &all).unwrap().is_empty());
    }

    #[test]
    fn follower_sees_appends_creation_truncation_and_rotation() {
        let path = temp_path("follow");
        let _ = std::fs::remove_file(&path);
        let all = RecordFilter::default();
        let mut seen = Vec::new();
        let mut follower = LogFollower::new(&path);
        assert!(follower
            .start(5, &all, |r| {
                seen.push(r);
                true
            })
            .unwrap());
        assert!(follower
            .poll(&all, |r| {
                seen.push(r);
                true
            })
            .unwrap());
        assert!(seen.is_empty());

        // Created later, written in two pieces: the line counts once complete.
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        write!(file, "{}", &record(1, "decrypted", "a.lab")[..10]).unwrap();
        follower
            .poll(&all, |r| {
                seen.push(r);
                true
            })
            .unwrap();
        assert!(seen.is_empty());
        writeln!(file, "{}", &record(1, "decrypted", "a.lab")[10..]).unwrap();
        follower
            .poll(&all, |r| {
                seen.push(r);
                true
            })
            .unwrap();
        assert_eq!(ids(&seen), vec![1]);

        // Truncated and rewritten shorter.
        std::fs::write(&path, record(2, "aborted", "b.lab") + "\n").unwrap();
        follower
            .poll(&all, |r| {
                seen.push(r);
                true
            })
            .unwrap();
        assert_eq!(ids(&seen), vec![1, 2]);

        // Rotated: a line lands in the old file after the rename, then a new file.
        let rotated = temp_path("follow.1");
        std::fs::rename(&path, &rotated).unwrap();
        let mut old = std::fs::OpenOptions::new().append(true).open(&rotated).unwrap();
        writeln!(old, "{}", record(3, "decrypted", "c.lab")).unwrap();
        std::fs::write(&path, record(4, "decrypted", "d.lab") + "\n").unwrap();
        follower
            .poll(&all, |r| {
                seen.push(r);
                true
            })
            .unwrap();
        assert_eq!(ids(&seen), vec![1, 2, 3, 4]);

        // `each` saying stop is reported.
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        write!(file, "{}\n{}\n", record(5, "x", "e"), record(6, "x", "e")).unwrap();
        let mut count = 0;
        assert!(!follower
            .poll(&all, |_| {
                count += 1;
                false
            })
            .unwrap());
        assert_eq!(count, 1);
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_file(&rotated).unwrap();
    }
}
