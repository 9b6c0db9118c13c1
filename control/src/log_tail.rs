//! Reading a JSON-lines log for `log-tail` (the decryption log, or the EVE log's `http`
//! events): the last records of a file that may be large, read backwards from its end
//! a chunk at a time, and then the complete lines appended to it, across truncation and
//! rotation.
//!
//! Only complete lines (ended by `\n`) are records: a line being written is picked up
//! once its newline is there. A line longer than [`MAX_RECORD_BYTES`] is skipped without
//! being held in memory.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::protocol::name_matches;

/// Bytes read from the file at a time.
const CHUNK: usize = 64 << 10;
/// Longer log lines are skipped (a decryption record is a few KiB).
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// Which log `log-tail` reads; both live in the daemon's log directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogKind {
    /// `decryption.jsonl`: one record per TLS session.
    #[default]
    Decryption,
    /// `eve.json`, its `event_type: "http"` events only: one per HTTP transaction.
    Http,
}

impl LogKind {
    /// The file's name in the log directory.
    pub fn file_name(self) -> &'static str {
        match self {
            LogKind::Decryption => "decryption.jsonl",
            LogKind::Http => "eve.json",
        }
    }

    /// The log in words, for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            LogKind::Decryption => "the decryption log",
            LogKind::Http => "the EVE log",
        }
    }
}

/// Which records `log-tail` sends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordFilter {
    /// Which log the lines come from (and so what the other conditions look at).
    pub log: LogKind,
    /// Only failures. Decryption log: `outcome` is `blocked` or `aborted`, or `error`
    /// is set. HTTP events: `loupe.blocked` is true or `http.status` is 400 or more.
    pub errors: bool,
    /// Only records for this server name (exact or `*.example.com`). Decryption log:
    /// `sni`; HTTP events: `http.hostname` (without a `:port`).
    pub sni: Option<String>,
}

impl RecordFilter {
    /// The record in `line` when it is a JSON object that passes the filter.
    pub fn select(&self, line: &[u8]) -> Option<Value> {
        let value: Value = serde_json::from_slice(line).ok()?;
        let record = value.as_object()?;
        let selected = match self.log {
            LogKind::Decryption => self.decryption_passes(record),
            LogKind::Http => self.http_passes(record),
        };
        selected.then_some(value)
    }

    fn decryption_passes(&self, record: &Map<String, Value>) -> bool {
        if self.errors {
            let failed_outcome = matches!(
                record.get("outcome").and_then(Value::as_str),
                Some("blocked" | "aborted")
            );
            let has_error = record.get("error").is_some_and(|e| !e.is_null());
            if !failed_outcome && !has_error {
                return false;
            }
        }
        self.name_passes(record.get("sni").and_then(Value::as_str))
    }

    fn http_passes(&self, event: &Map<String, Value>) -> bool {
        if event.get("event_type").and_then(Value::as_str) != Some("http") {
            return false;
        }
        let http = event.get("http").and_then(Value::as_object);
        if self.errors {
            let blocked = event
                .get("loupe")
                .and_then(|loupe| loupe.get("blocked"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let failed_status = http
                .and_then(|h| h.get("status"))
                .and_then(Value::as_u64)
                .is_some_and(|status| status >= 400);
            if !blocked && !failed_status {
                return false;
            }
        }
        let hostname = http.and_then(|h| h.get("hostname")).and_then(Value::as_str);
        self.name_passes(hostname.map(without_port))
    }

    fn name_passes(&self, name: Option<&str>) -> bool {
        self.sni
            .as_deref()
            .is_none_or(|pattern| name.is_some_and(|name| name_matches(pattern, name)))
    }
}

/// `shop.example:8443` as `shop.example`; names without a port (and bare IPv6
/// addresses) as they are.
fn without_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
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
            ..RecordFilter::default()
        };
        assert_eq!(ids(&last_records(&path, 2, &errors).unwrap()), vec![4991, 4998]);
        let sni = RecordFilter {
            sni: Some("h10.lab".into()),
            ..RecordFilter::default()
        };
        assert_eq!(ids(&last_records(&path, 5, &sni).unwrap()), vec![10]);
        std::fs::remove_file(&path).unwrap();
    }

    /// An EVE line as Suricata (and loupe) writes it.
    fn eve(flow_id: u64, event_type: &str, hostname: &str, status: Option<u16>, blocked: bool) -> String {
        let status = status.map_or("null".to_string(), |s| s.to_string());
        format!(
            r#"{{"timestamp":"2026-12-03T13:35:00.123456+0000","flow_id":{flow_id},"event_type":"{event_type}","src_ip":"198.18.0.1","src_port":40000,"dest_ip":"198.18.0.2","dest_port":443,"proto":"TCP","app_proto":"http","http":{{"hostname":"{hostname}","url":"/admin?x=1","http_method":"GET","protocol":"HTTP/1.1","status":{status},"length":0}},"loupe":{{"session_id":{flow_id},"blocked":{blocked},"transaction":0}}}}"#
        )
    }

    fn flow_ids(records: &[Value]) -> Vec<u64> {
        records.iter().map(|r| r["flow_id"].as_u64().unwrap()).collect()
    }

    #[test]
    fn http_filter_keeps_http_events() {
        let http = RecordFilter {
            log: LogKind::Http,
            ..RecordFilter::default()
        };
        let pass = |filter: &RecordFilter, line: &str| filter.select(line.as_bytes()).is_some();
        assert!(pass(&http, &eve(1, "http", "shop.example", Some(200), false)));
        assert!(!pass(&http, &eve(2, "tls", "shop.example", None, false)));
        assert!(!pass(&http, &eve(3, "alert", "shop.example", None, false)));
        assert!(!pass(&http, r#"{"timestamp":"x","flow_id":4}"#));
        // A decryption record is not an http event, and an http event is not a
        // decryption record (it has no `sni`: a name filter never passes it).
        assert!(!pass(&http, &record(5, "decrypted", "shop.example")));
        let decryption_sni = RecordFilter {
            sni: Some("shop.example".into()),
            ..RecordFilter::default()
        };
        assert!(!pass(
            &decryption_sni,
            &eve(6, "http", "shop.example", Some(200), false)
        ));
        // The whole event comes through unchanged.
        let line = eve(7, "http", "shop.example", Some(403), true);
        let selected = http.select(line.as_bytes()).unwrap();
        assert_eq!(selected, serde_json::from_str::<Value>(&line).unwrap());
    }

    #[test]
    fn http_errors_are_blocks_and_failed_statuses() {
        let errors = RecordFilter {
            log: LogKind::Http,
            errors: true,
            ..RecordFilter::default()
        };
        let pass = |line: String| errors.select(line.as_bytes()).is_some();
        assert!(pass(eve(1, "http", "a.lab", Some(403), true)));
        assert!(pass(eve(2, "http", "a.lab", None, true)), "blocked before any response");
        assert!(pass(eve(3, "http", "a.lab", Some(404), false)));
        assert!(pass(eve(4, "http", "a.lab", Some(502), false)));
        assert!(!pass(eve(5, "http", "a.lab", Some(200), false)));
        assert!(!pass(eve(6, "http", "a.lab", Some(399), false)));
        assert!(!pass(eve(7, "http", "a.lab", None, false)), "no response yet");
        assert!(!pass(eve(8, "tls", "a.lab", Some(500), true)));
        // Odd shapes are not errors (and do not panic).
        assert!(!pass(
            r#"{"event_type":"http","http":{"status":"500"},"loupe":{"blocked":"yes"}}"#.into()
        ));
        assert!(!pass(r#"{"event_type":"http","http":null,"loupe":7}"#.into()));
    }

    #[test]
    fn http_name_filter_matches_the_hostname() {
        let named = |pattern: &str| RecordFilter {
            log: LogKind::Http,
            sni: Some(pattern.into()),
            ..RecordFilter::default()
        };
        let pass = |filter: RecordFilter, line: String| filter.select(line.as_bytes()).is_some();
        assert!(pass(
            named("shop.example"),
            eve(1, "http", "SHOP.example", Some(200), false)
        ));
        assert!(pass(
            named("shop.example"),
            eve(2, "http", "shop.example:8443", Some(200), false)
        ));
        assert!(pass(
            named("*.example"),
            eve(3, "http", "shop.example", Some(200), false)
        ));
        assert!(!pass(named("*.example"), eve(4, "http", "example", Some(200), false)));
        assert!(!pass(
            named("other.example"),
            eve(5, "http", "shop.example", Some(200), false)
        ));
        assert!(!pass(
            named("shop.example"),
            r#"{"event_type":"http","http":{"url":"/"}}"#.into()
        ));
        assert_eq!(without_port("[2001:db8::2]:443"), "[2001:db8::2]:443");
        assert_eq!(without_port("2001:db8::2"), "2001:db8::2");
        assert_eq!(without_port("a.lab:"), "a.lab:");
        // Combined with errors: both must hold.
        let both = RecordFilter {
            errors: true,
            ..named("*.example")
        };
        assert!(pass(both.clone(), eve(6, "http", "shop.example", Some(500), false)));
        assert!(!pass(both, eve(7, "http", "shop.example", Some(204), false)));
    }

    #[test]
    fn tail_of_the_eve_log_counts_http_events_only() {
        let path = temp_path("eve");
        let mut text = String::new();
        for i in 0..300u64 {
            let status = [200, 301, 404, 500, 204][i as usize % 5];
            let (kind, status) = if i % 3 == 0 {
                ("tls", None)
            } else {
                ("http", Some(status))
            };
            text.push_str(&eve(i, kind, &format!("h{}.lab", i % 4), status, i == 296));
            text.push('\n');
        }
        std::fs::write(&path, &text).unwrap();
        let http = RecordFilter {
            log: LogKind::Http,
            ..RecordFilter::default()
        };
        assert_eq!(flow_ids(&last_records(&path, 3, &http).unwrap()), vec![296, 298, 299]);
        let errors = RecordFilter {
            errors: true,
            ..http.clone()
        };
        // Status 404 (i % 5 == 2), 500 (i % 5 == 3), or blocked (296).
        assert_eq!(
            flow_ids(&last_records(&path, 4, &errors).unwrap()),
            vec![292, 293, 296, 298]
        );
        let named = RecordFilter {
            sni: Some("h2.lab".into()),
            ..http
        };
        assert_eq!(flow_ids(&last_records(&path, 2, &named).unwrap()), vec![290, 298]);
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
