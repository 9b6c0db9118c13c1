//! One HTTP transaction: a request and its response, as the EVE `http` event and the
//! decryption log need them. Filled in by the HTTP/1.1 and HTTP/2 parsers.
//!
//! The text fields are `CompactString`s: a value of up to 24 bytes (a method, most hosts
//! and content types, short paths) lives inside the field, so most requests' fields cost
//! no allocation; longer ones go to the heap as a `String` would.

use compact_str::CompactString;

/// The HTTP version a transaction ran over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    Http10,
    Http11,
    Http2,
}

impl HttpVersion {
    /// As Suricata's EVE `http.protocol` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpVersion::Http10 => "HTTP/1.0",
            HttpVersion::Http11 => "HTTP/1.1",
            HttpVersion::Http2 => "HTTP/2",
        }
    }
}

/// What is special about a transaction's exchange.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransactionMarks {
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
    /// The connection switched protocols (101, e.g. WebSocket): the rest is relayed as is.
    pub upgrade: bool,
    /// A CONNECT request that succeeded: the rest is a tunnel, relayed as is.
    pub connect: bool,
}

/// One request and (once seen) its response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transaction {
    pub version: Option<HttpVersion>,
    /// HTTP/2 stream id; `None` on HTTP/1.x.
    pub stream_id: Option<u32>,
    pub method: CompactString,
    /// `:scheme` on HTTP/2; `None` on HTTP/1.x (the connection's TLS makes it https).
    pub scheme: Option<CompactString>,
    /// `Host` (HTTP/1.x) or `:authority` (HTTP/2).
    pub host: Option<CompactString>,
    /// The request target's path, without the query.
    pub path: CompactString,
    /// The query, without the `?`.
    pub query: Option<CompactString>,
    pub user_agent: Option<CompactString>,
    pub referer: Option<CompactString>,
    /// Content-Type of the request and of the response.
    pub request_content_type: Option<CompactString>,
    pub response_content_type: Option<CompactString>,
    /// Final status (1xx interim responses are not it); `None` until the response head.
    pub status: Option<u16>,
    /// Body bytes (after de-chunking, before any content decoding) each way.
    pub request_body_len: u64,
    pub response_body_len: u64,
    pub marks: TransactionMarks,
}

impl Transaction {
    /// The request target as Suricata's `http.url` shows it: path and query.
    pub fn url(&self) -> String {
        match &self.query {
            Some(query) => format!("{}?{query}", self.path),
            None => self.path.to_string(),
        }
    }

    /// Bytes its text fields hold on the heap (none for text that fits inline), for
    /// memory accounting.
    pub fn heap_bytes(&self) -> usize {
        let optional = [
            &self.scheme,
            &self.host,
            &self.query,
            &self.user_agent,
            &self.referer,
            &self.request_content_type,
            &self.response_content_type,
        ];
        text_heap_bytes(&self.method)
            + text_heap_bytes(&self.path)
            + optional
                .iter()
                .map(|text| text.as_ref().map_or(0, text_heap_bytes))
                .sum::<usize>()
    }

    /// [`Transaction::url`], made of the path's own buffer: path and query are left empty.
    pub fn take_url(&mut self) -> CompactString {
        let mut url = std::mem::take(&mut self.path);
        if let Some(query) = self.query.take() {
            url.push('?');
            url.push_str(&query);
        }
        url
    }
}

fn text_heap_bytes(text: &CompactString) -> usize {
    if text.is_heap_allocated() {
        text.capacity()
    } else {
        0
    }
}
