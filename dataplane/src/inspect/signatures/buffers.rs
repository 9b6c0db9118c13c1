//! The buffers rules read, built from what the HTTP parsers saw: a message head (HTTP/1.1
//! as sent, or HTTP/2's decoded fields) becomes one [`HeadBuffers`], every sticky buffer
//! of it a span of one allocation; bodies are kept as they grow. [`TransactionBuffers`]
//! puts a transaction's two heads and two bodies behind [`Buffers`], for one direction:
//! `http.header` and the other buffers both messages have read the request's in a
//! to-server rule and the response's in a to-client one, as Suricata does.

use smallvec::SmallVec;

use super::detect::Buffers;
use super::rule::{Buffer, Direction};

/// How many [`Buffer`] variants there are: the span table's size.
const BUFFER_COUNT: usize = Buffer::TlsSni as usize + 1;
const _: () = assert!(BUFFER_COUNT <= 64, "WantedBuffers is a u64 bit set");

/// The buffers a rule set reads: the head builders copy only these (a head's header
/// lines were copied four times over for buffers no rule read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WantedBuffers(u64);

impl WantedBuffers {
    pub const ALL: WantedBuffers = WantedBuffers(u64::MAX);

    pub fn of(buffers: impl IntoIterator<Item = Buffer>) -> WantedBuffers {
        let mut bits = 0;
        for buffer in buffers {
            bits |= 1 << buffer as u64;
            if buffer == Buffer::Payload {
                // A transaction's payload is its head as sent (see `TransactionBuffers`).
                bits |= 1 << Buffer::HttpStart as u64;
            }
        }
        WantedBuffers(bits)
    }

    pub fn has(self, buffer: Buffer) -> bool {
        self.0 & (1 << buffer as u64) != 0
    }
}

/// A head's header fields, on the stack for heads of usual size.
type Fields<'a> = SmallVec<[Field<'a>; 24]>;

/// The buffers of one message head.
#[derive(Debug, Clone)]
pub struct HeadBuffers {
    data: Vec<u8>,
    /// `spans[buffer as usize]`: where the buffer is in `data`; `None`: not in this head.
    spans: [Option<(u32, u32)>; BUFFER_COUNT],
    /// The Content-Encoding value: how the body that follows must be decoded.
    content_encoding: Option<Vec<u8>>,
    /// The buffers made; the others stay `None`.
    wanted: WantedBuffers,
}

impl Default for HeadBuffers {
    fn default() -> Self {
        HeadBuffers::wanting(WantedBuffers::ALL)
    }
}

/// A header as the builders take it: name and value, as sent.
type Field<'a> = (&'a [u8], &'a [u8]);

impl HeadBuffers {
    pub fn get(&self, buffer: Buffer) -> Option<&[u8]> {
        let (start, end) = self.spans[buffer as usize]?;
        Some(&self.data[start as usize..end as usize])
    }

    /// The head's Content-Encoding, if it has one.
    pub fn content_encoding(&self) -> Option<&[u8]> {
        self.content_encoding.as_deref()
    }

    /// Bytes held, for memory accounting.
    pub fn memory_bytes(&self) -> usize {
        self.data.capacity()
    }

    fn wanting(wanted: WantedBuffers) -> HeadBuffers {
        HeadBuffers {
            data: Vec::new(),
            spans: [None; BUFFER_COUNT],
            content_encoding: None,
            wanted,
        }
    }

    /// An HTTP/1.x request head as sent (request line to blank line).
    pub fn http1_request(head: &[u8], wanted: WantedBuffers) -> HeadBuffers {
        let mut buffers = HeadBuffers::wanting(wanted);
        buffers.data.reserve(head.len() * 2);
        let (line, rest) = split_start_line(head);
        let mut parts = line.splitn(3, |&b| b == b' ');
        let method = parts.next().unwrap_or_default();
        let target = parts.next().unwrap_or_default();
        let protocol = parts.next().unwrap_or_default();
        buffers.put(Buffer::HttpStart, head);
        buffers.put(Buffer::HttpRequestLine, line);
        buffers.put(Buffer::HttpMethod, method);
        buffers.put(Buffer::HttpUriRaw, target);
        buffers.put_normalised_uri(target);
        buffers.put(Buffer::HttpProtocol, protocol);
        buffers.put(Buffer::HttpHeaderRaw, rest);
        let fields: Fields<'_> = header_lines(rest).collect();
        buffers.put_headers(&fields, Direction::ToServer);
        buffers
    }

    /// An HTTP/1.x response head as sent.
    pub fn http1_response(head: &[u8], wanted: WantedBuffers) -> HeadBuffers {
        let mut buffers = HeadBuffers::wanting(wanted);
        buffers.data.reserve(head.len() * 2);
        let (line, rest) = split_start_line(head);
        let mut parts = line.splitn(3, |&b| b == b' ');
        let protocol = parts.next().unwrap_or_default();
        let status = parts.next().unwrap_or_default();
        let message = parts.next().unwrap_or_default();
        buffers.put(Buffer::HttpStart, head);
        buffers.put(Buffer::HttpResponseLine, line);
        buffers.put(Buffer::HttpProtocol, protocol);
        buffers.put(Buffer::HttpStatCode, status);
        buffers.put(Buffer::HttpStatMsg, message);
        buffers.put(Buffer::HttpHeaderRaw, rest);
        let fields: Fields<'_> = header_lines(rest).collect();
        buffers.put_headers(&fields, Direction::ToClient);
        buffers
    }

    /// An HTTP/2 header block's decoded fields. The pseudo-headers fill the buffers
    /// Suricata fills from them (`http.uri` from `:path`, `http.host` from `:authority`,
    /// `http.method`, `http.stat_code`); the request and response lines are made up as
    /// Suricata makes them (`GET /path HTTP/2`, `HTTP/2 200`), and the raw header buffer
    /// is the regular fields as `name: value` lines (HPACK left no "as sent").
    pub fn http2(fields: &[(&[u8], &[u8])], direction: Direction, wanted: WantedBuffers) -> HeadBuffers {
        let mut buffers = HeadBuffers::wanting(wanted);
        // Room for the buffers usually made (URI, host, headers, a few single ones) at
        // once, rather than growing a step at a time.
        let size: usize = fields.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
        buffers.data.reserve(size * 2 + 64);
        let want_start = [Buffer::HttpRequestLine, Buffer::HttpResponseLine, Buffer::HttpStart]
            .into_iter()
            .any(|buffer| wanted.has(buffer));
        let pseudo = |name: &[u8]| fields.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        let regular: Fields<'_> = fields.iter().copied().filter(|(n, _)| !n.starts_with(b":")).collect();
        let mut start = Vec::new();
        match direction {
            Direction::ToServer => {
                let method = pseudo(b":method").unwrap_or_default();
                let path = pseudo(b":path").unwrap_or_default();
                buffers.put(Buffer::HttpMethod, method);
                buffers.put(Buffer::HttpUriRaw, path);
                buffers.put_normalised_uri(path);
                if want_start {
                    for part in [method, b" ", path, b" HTTP/2"] {
                        start.extend_from_slice(part);
                    }
                    buffers.put(Buffer::HttpRequestLine, &start);
                }
                if let Some(authority) = pseudo(b":authority") {
                    buffers.put(Buffer::HttpHostRaw, authority);
                    buffers.put_host(authority);
                }
            }
            Direction::ToClient => {
                let status = pseudo(b":status").unwrap_or_default();
                buffers.put(Buffer::HttpStatCode, status);
                if want_start {
                    start.extend_from_slice(b"HTTP/2 ");
                    start.extend_from_slice(status);
                    buffers.put(Buffer::HttpResponseLine, &start);
                }
            }
        }
        buffers.put(Buffer::HttpProtocol, b"HTTP/2");
        if wanted.has(Buffer::HttpHeaderRaw) || wanted.has(Buffer::HttpStart) {
            let mut raw = Vec::new();
            for (name, value) in &regular {
                for part in [*name, b": ", *value, b"\r\n"] {
                    raw.extend_from_slice(part);
                }
            }
            raw.extend_from_slice(b"\r\n");
            buffers.put(Buffer::HttpHeaderRaw, &raw);
            start.extend_from_slice(b"\r\n");
            start.extend_from_slice(&raw);
            buffers.put(Buffer::HttpStart, &start);
        }
        buffers.put_headers(&regular, direction);
        buffers
    }

    fn put(&mut self, buffer: Buffer, bytes: &[u8]) {
        if !self.wanted.has(buffer) {
            return;
        }
        let start = self.data.len();
        self.data.extend_from_slice(bytes);
        self.spans[buffer as usize] = Some((start as u32, self.data.len() as u32));
    }

    /// Appends to the buffer being built last (its span must end `data`).
    fn extend(&mut self, buffer: Buffer, bytes: &[u8]) {
        match &mut self.spans[buffer as usize] {
            Some((_, end)) if *end as usize == self.data.len() => {
                self.data.extend_from_slice(bytes);
                *end = self.data.len() as u32;
            }
            _ => self.put(buffer, bytes),
        }
    }

    /// The header buffers: `http.header` (`Name: value\r\n` lines, the cookie left out as
    /// Suricata does), `http.header_names`, `http.cookie` and the single-header ones.
    fn put_headers(&mut self, fields: &[Field<'_>], direction: Direction) {
        let cookie_name: &[u8] = match direction {
            Direction::ToServer => b"cookie",
            Direction::ToClient => b"set-cookie",
        };
        if self.wanted.has(Buffer::HttpHeader) {
            self.put(Buffer::HttpHeader, b"");
            for (name, value) in fields {
                if !name.eq_ignore_ascii_case(cookie_name) {
                    for part in [*name, b": ", *value, b"\r\n"] {
                        self.extend(Buffer::HttpHeader, part);
                    }
                }
            }
        }
        if self.wanted.has(Buffer::HttpHeaderNames) {
            self.put(Buffer::HttpHeaderNames, b"\r\n");
            for (name, _) in fields {
                self.extend(Buffer::HttpHeaderNames, name);
                self.extend(Buffer::HttpHeaderNames, b"\r\n");
            }
            self.extend(Buffer::HttpHeaderNames, b"\r\n");
        }
        let single: &[(&[u8], Buffer)] = &[
            (b"user-agent", Buffer::HttpUserAgent),
            (b"content-type", Buffer::HttpContentType),
            (b"content-length", Buffer::HttpContentLen),
            (b"referer", Buffer::HttpReferer),
            (b"server", Buffer::HttpServer),
            (b"location", Buffer::HttpLocation),
            (b"accept", Buffer::HttpAccept),
            (b"accept-encoding", Buffer::HttpAcceptEnc),
            (b"accept-language", Buffer::HttpAcceptLang),
            (b"connection", Buffer::HttpConnection),
        ];
        for (name, value) in fields {
            if name.eq_ignore_ascii_case(b"content-encoding") && self.content_encoding.is_none() {
                self.content_encoding = Some(value.to_vec());
            }
            if name.eq_ignore_ascii_case(cookie_name) {
                // Several cookie headers are one buffer, `; `-joined (HTTP/2 splits them).
                if self.spans[Buffer::HttpCookie as usize].is_some() {
                    self.extend(Buffer::HttpCookie, b"; ");
                    self.extend(Buffer::HttpCookie, value);
                } else {
                    self.put(Buffer::HttpCookie, value);
                }
            } else if direction == Direction::ToServer && name.eq_ignore_ascii_case(b"host") {
                if self.spans[Buffer::HttpHostRaw as usize].is_none() && self.spans[Buffer::HttpHost as usize].is_none()
                {
                    self.put(Buffer::HttpHostRaw, value);
                    self.put_host(value);
                }
            } else if let Some((_, buffer)) = single.iter().find(|(n, _)| name.eq_ignore_ascii_case(n)) {
                if self.spans[*buffer as usize].is_none() {
                    self.put(*buffer, value);
                }
            }
        }
    }

    /// `http.host`: lowercased, without the port.
    fn put_host(&mut self, host: &[u8]) {
        if !self.wanted.has(Buffer::HttpHost) {
            return;
        }
        let end = if host.starts_with(b"[") {
            host.iter().position(|&b| b == b']').map_or(host.len(), |i| i + 1)
        } else {
            host.iter().position(|&b| b == b':').unwrap_or(host.len())
        };
        let start = self.data.len();
        self.data.extend(host[..end].iter().map(u8::to_ascii_lowercase));
        self.spans[Buffer::HttpHost as usize] = Some((start as u32, self.data.len() as u32));
    }

    /// `http.uri`: the target percent-decoded (`%XX` with two hex digits) and the path's
    /// dot segments removed, as libhtp normalises it for Suricata; the query is decoded
    /// but keeps its place.
    fn put_normalised_uri(&mut self, target: &[u8]) {
        if !self.wanted.has(Buffer::HttpUri) {
            return;
        }
        let (path, query) = match target.iter().position(|&b| b == b'?') {
            Some(at) => (&target[..at], Some(&target[at..])),
            None => (target, None),
        };
        let dot_segment = path
            .split(|&b| b == b'/')
            .any(|segment| segment == b"." || segment == b"..");
        if !dot_segment && memchr::memchr(b'%', target).is_none() {
            // Nothing to decode, no dot segment: the usual target is already normal.
            self.put(Buffer::HttpUri, target);
            return;
        }
        let mut decoded = Vec::with_capacity(target.len());
        percent_decode(path, &mut decoded);
        let mut normalised = remove_dot_segments(&decoded);
        if let Some(query) = query {
            percent_decode(query, &mut normalised);
        }
        self.put(Buffer::HttpUri, &normalised);
    }
}

fn split_start_line(head: &[u8]) -> (&[u8], &[u8]) {
    match memchr::memchr(b'\n', head) {
        Some(lf) => {
            let line = &head[..lf];
            (line.strip_suffix(b"\r").unwrap_or(line), &head[lf + 1..])
        }
        None => (head, &[]),
    }
}

/// The header lines of a head after its start line: name and value, OWS trimmed.
fn header_lines(rest: &[u8]) -> impl Iterator<Item = Field<'_>> {
    rest.split(|&b| b == b'\n').filter_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        let value = &line[colon + 1..];
        let start = value
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t'))
            .unwrap_or(value.len());
        let end = value
            .iter()
            .rposition(|b| !matches!(b, b' ' | b'\t'))
            .map_or(start, |i| i + 1);
        Some((&line[..colon], &value[start..end.max(start)]))
    })
}

fn percent_decode(input: &[u8], out: &mut Vec<u8>) {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' && i + 2 < input.len() {
            if let (Some(high), Some(low)) = (hex(input[i + 1]), hex(input[i + 2])) {
                out.push(high << 4 | low);
                i += 3;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
}

/// RFC 3986 §5.2.4 on a path.
fn remove_dot_segments(path: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(path.len());
    let mut segments: Vec<&[u8]> = Vec::new();
    let absolute = path.starts_with(b"/");
    let trailing = path.ends_with(b"/") || path.ends_with(b"/.") || path.ends_with(b"/..");
    for segment in path.split(|&b| b == b'/') {
        match segment {
            b"." => {}
            b".." => {
                segments.pop();
            }
            _ => segments.push(segment),
        }
    }
    // Empty segments from the leading `/` (and `//`) stay, as libhtp keeps them.
    for (i, segment) in segments.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(segment);
    }
    if absolute && !out.starts_with(b"/") {
        out.insert(0, b'/');
    }
    if trailing && !out.ends_with(b"/") {
        out.push(b'/');
    }
    out
}

/// A transaction's buffers for one direction's rules: its heads so far and its bodies
/// (decoded, up to the inspection depth).
pub struct TransactionBuffers<'a> {
    pub request: Option<&'a HeadBuffers>,
    pub response: Option<&'a HeadBuffers>,
    pub request_body: Option<&'a [u8]>,
    pub response_body: Option<&'a [u8]>,
    /// The direction of the rules being evaluated: which head the shared buffers read.
    pub direction: Direction,
    /// The SNI the client sent (`tls.sni`).
    pub sni: Option<&'a [u8]>,
}

impl Buffers for TransactionBuffers<'_> {
    fn get(&self, buffer: Buffer) -> Option<&[u8]> {
        match buffer {
            Buffer::HttpRequestBody => self.request_body,
            Buffer::HttpResponseBody => self.response_body,
            Buffer::TlsSni => self.sni,
            // The closest thing to the stream a transaction has: its head as sent.
            Buffer::Payload => match self.direction {
                Direction::ToServer => self.request?.get(Buffer::HttpStart),
                Direction::ToClient => self.response?.get(Buffer::HttpStart),
            },
            _ => {
                let head = match buffer.direction() {
                    Some(Direction::ToServer) => self.request,
                    Some(Direction::ToClient) => self.response,
                    None => match self.direction {
                        Direction::ToServer => self.request,
                        Direction::ToClient => self.response,
                    },
                };
                head?.get(buffer)
            }
        }
    }
}
