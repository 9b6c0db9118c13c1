//! The `http` event written by hand, straight into the worker's batch: one event per
//! transaction made it the largest inspection cost in a profile of the bench when it went
//! through serde (`flatten` serializes through a map, addresses through `fmt`). The
//! output is byte for byte what serde_json writes for [`HttpEvent`]; the derive stays as
//! the reference the tests compare this writer with.

use std::cell::Cell;
use std::io::Write as _;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{put_digits, EveHeader, EveHttp, EveTime, EveUrl, HttpEvent};

impl HttpEvent<'_> {
    /// Appends the event as one JSON line, ended by `\n`.
    pub fn write_line(&self, out: &mut Vec<u8>) {
        // Room for a typical event at once, not grown piece by piece.
        out.reserve(1024);
        let mut stamps = Stamps {
            last: LAST_SECOND.get(),
        };
        let mut event = Object::open(out);
        write_header(&mut event, &self.header, &mut stamps);
        write_http(event.object("http"), &self.http);
        let loupe = event.object("loupe");
        loupe.u64("session_id", self.loupe.session_id);
        let facts = self.loupe.facts;
        loupe.str("rule", facts.rule);
        loupe.str("action", facts.action.as_str());
        if let Some(verdict) = &facts.url_rule {
            let url_rule = loupe.object("url_rule");
            url_rule.str("name", verdict.name);
            url_rule.str("action", verdict.action);
            url_rule.close();
        }
        loupe.u64("transaction", facts.transaction);
        loupe.bool("blocked", facts.blocked);
        for (name, time) in [
            ("request_start", facts.request_start),
            ("response_first_byte", facts.response_first_byte),
            ("end", facts.end),
        ] {
            if let Some(time) = time {
                loupe.time(name, stamps.text(time));
            }
        }
        loupe.close();
        event.close();
        out.push(b'\n');
        LAST_SECOND.set(stamps.last);
    }
}

thread_local! {
    /// The second the thread's last event was stamped in, and its text: consecutive
    /// events nearly always share it, so the date and time of day are formatted about
    /// once a second rather than once an event.
    static LAST_SECOND: Cell<Option<(u64, [u8; 31])>> = const { Cell::new(None) };
}

fn write_header(event: &mut Object<'_>, header: &EveHeader<'_>, stamps: &mut Stamps) {
    event.time("timestamp", stamps.text(header.timestamp.0));
    event.u64("flow_id", header.flow_id);
    if let Some(in_iface) = header.in_iface {
        event.str("in_iface", in_iface);
    }
    event.str("event_type", header.event_type);
    event.ip("src_ip", header.src_ip);
    event.u64("src_port", header.src_port.into());
    event.ip("dest_ip", header.dest_ip);
    event.u64("dest_port", header.dest_port.into());
    event.str("proto", header.proto);
    if let Some(tx_id) = header.tx_id {
        event.u64("tx_id", tx_id);
    }
    event.str("app_proto", header.app_proto);
}

fn write_http(http: &mut Object<'_>, fields: &EveHttp<'_>) {
    if let Some(hostname) = &fields.hostname {
        http.str("hostname", hostname);
    }
    if let Some(port) = fields.http_port {
        http.u64("http_port", port.into());
    }
    if let Some(url) = &fields.url {
        http.url("url", url);
    }
    for (name, value) in [
        ("http_user_agent", fields.http_user_agent),
        ("http_content_type", fields.http_content_type),
        ("http_refer", fields.http_refer),
        ("http_method", fields.http_method),
        ("protocol", fields.protocol),
    ] {
        if let Some(value) = value {
            http.str(name, value);
        }
    }
    if let Some(status) = fields.status {
        http.u64("status", status.into());
    }
    http.u64("length", fields.length);
    if let Some(version) = fields.version {
        http.str("version", version);
    }
    if let Some(http2) = &fields.http2 {
        let object = http.object("http2");
        object.u64("stream_id", http2.stream_id.into());
        object.close();
    }
    http.close();
}

/// The timestamps of one event (and of the thread's events one after another) nearly
/// always fall in the same second: its date and time of day are formatted once, and only
/// the microseconds for the others.
struct Stamps {
    last: Option<(u64, [u8; 31])>,
}

impl Stamps {
    fn text(&mut self, time: SystemTime) -> [u8; 31] {
        let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        match self.last {
            Some((secs, mut text)) if secs == since_epoch.as_secs() => {
                put_digits(&mut text[EveTime::MICROS], since_epoch.subsec_micros().into());
                text
            }
            _ => {
                let text = EveTime(time).text();
                self.last = Some((since_epoch.as_secs(), text));
                text
            }
        }
    }
}

/// A JSON object being written: members are appended in order, `,` between them.
struct Object<'o> {
    out: &'o mut Vec<u8>,
    empty: bool,
}

impl<'o> Object<'o> {
    fn open(out: &'o mut Vec<u8>) -> Self {
        out.push(b'{');
        Object { out, empty: true }
    }

    #[inline(always)]
    fn key(&mut self, name: &str) {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    /// A member whose value is an object; members go into the returned writer (which
    /// borrows this one's output), closed with [`Object::close`].
    #[inline(always)]
    fn object(&mut self, name: &str) -> &mut Self {
        self.key(name);
        self.out.push(b'{');
        self.empty = true;
        self
    }

    /// Closes the innermost open object. After closing a nested object the outer one
    /// has members, so the next member gets its `,`.
    fn close(&mut self) {
        self.out.push(b'}');
        self.empty = false;
    }

    #[inline(always)]
    fn str(&mut self, name: &str, value: &str) {
        self.key(name);
        self.out.push(b'"');
        escape_into(self.out, value);
        self.out.push(b'"');
    }

    fn url(&mut self, name: &str, url: &EveUrl<'_>) {
        self.key(name);
        self.out.push(b'"');
        escape_into(self.out, url.path);
        if let Some(query) = url.query {
            self.out.push(b'?');
            escape_into(self.out, query);
        }
        self.out.push(b'"');
    }

    /// `text` is an [`EveTime`]'s: digits and punctuation only, nothing to escape.
    #[inline(always)]
    fn time(&mut self, name: &str, text: [u8; 31]) {
        self.key(name);
        self.out.push(b'"');
        self.out.extend_from_slice(&text);
        self.out.push(b'"');
    }

    #[inline(always)]
    fn u64(&mut self, name: &str, value: u64) {
        self.key(name);
        push_decimal(self.out, value);
    }

    #[inline(always)]
    fn bool(&mut self, name: &str, value: bool) {
        self.key(name);
        self.out.extend_from_slice(if value { b"true" } else { b"false" });
    }

    fn ip(&mut self, name: &str, ip: IpAddr) {
        self.key(name);
        self.out.push(b'"');
        match ip {
            IpAddr::V4(v4) => {
                let mut text = [0u8; 15];
                let mut len = 0;
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text[len] = b'.';
                        len += 1;
                    }
                    let digits = [octet / 100, octet / 10 % 10, octet % 10];
                    let skip = if octet >= 100 {
                        0
                    } else if octet >= 10 {
                        1
                    } else {
                        2
                    };
                    for digit in &digits[skip..] {
                        text[len] = b'0' + digit;
                        len += 1;
                    }
                }
                self.out.extend_from_slice(&text[..len]);
            }
            // Compressed form as `Display` writes it; writing to a Vec cannot fail.
            IpAddr::V6(v6) => {
                let _ = write!(self.out, "{v6}");
            }
        }
        self.out.push(b'"');
    }
}

#[inline(always)]
fn push_decimal(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

/// Whether JSON needs `byte` escaped (serde_json escapes exactly these).
fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// Bytes tested at once: a fixed-size block without an early exit, which the compiler
/// turns into a few vector instructions. Header values seldom need an escape, and the
/// byte-at-a-time loop was the largest single item of the EVE line in a profile.
const ESCAPE_BLOCK: usize = 16;

/// Appends `text` as the inside of a JSON string, escaped as serde_json escapes it: `"`
/// and `\` with a backslash, control characters as `\b \t \n \f \r` or `\u00XX`; the rest
/// (DEL and non-ASCII included) as is. Runs that need nothing are copied whole.
pub(super) fn escape_into(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = text.as_bytes();
    let mut copied = 0;
    let mut at = 0;
    while at < bytes.len() {
        let end = match bytes.get(at..at + ESCAPE_BLOCK) {
            Some(block) if !block.iter().fold(false, |dirty, &byte| dirty | needs_escape(byte)) => {
                at += ESCAPE_BLOCK;
                continue;
            }
            Some(_) => at + ESCAPE_BLOCK,
            None => bytes.len(),
        };
        for (offset, &byte) in bytes[at..end].iter().enumerate() {
            if !needs_escape(byte) {
                continue;
            }
            let position = at + offset;
            out.extend_from_slice(&bytes[copied..position]);
            copied = position + 1;
            match byte {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                0x08 => out.extend_from_slice(b"\\b"),
                b'\t' => out.extend_from_slice(b"\\t"),
                b'\n' => out.extend_from_slice(b"\\n"),
                0x0c => out.extend_from_slice(b"\\f"),
                b'\r' => out.extend_from_slice(b"\\r"),
                _ => out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(byte >> 4)],
                    HEX[usize::from(byte & 0xf)],
                ]),
            }
        }
        at = end;
    }
    out.extend_from_slice(&bytes[copied..]);
}
