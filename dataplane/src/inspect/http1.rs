//! HTTP/1.1 message framing (RFC 9112) over one decrypted connection, sans-IO.
//!
//! [`Http1Connection`] takes the plaintext of each direction of one TLS session in
//! whatever pieces the records delivered (down to single bytes), finds where every
//! request and response begins and ends, pairs responses with requests in order
//! (pipelining), and reports [`Http1Event`]s: a head seen, a request complete, a whole
//! [`Transaction`], a switch to an opaque tunnel, or why it stopped. httparse reads the
//! heads and chunk sizes; the framing rules (RFC 9112 §6.3) are ours.
//!
//! Memory is bounded: only a head that spans pieces is buffered (up to
//! `max_head_bytes`, which also bounds a chunk-size line and a trailer section), bodies
//! are counted and never stored, at most `max_pipelined` exchanges are open, and client
//! bytes sent after a CONNECT or Upgrade request are held (up to `max_head_bytes`) only
//! until the server's answer says whether they are HTTP or tunnel.
//!
//! Two outcomes end inspection of the connection; both directions then yield no events:
//! - [`Http1Event::Refused`]: another parser could frame the message differently
//!   (request smuggling, response splitting). The caller must block it, never relay it.
//! - [`Http1Event::ProtocolError`]: the bytes are not HTTP/1.1 as RFC 9112 allows. The
//!   caller decides whether to pass the rest through uninspected or to reset.
//!
//! Decisions where the RFC leaves room, each taken because two parsers could disagree:
//! - Bare LF line endings are accepted in response heads (old servers send them and every
//!   user agent reads them), refused in request heads (no mainstream client sends them,
//!   and servers differ: most end a line at LF, naive ones look for CRLF CRLF) and
//!   anywhere in chunked framing, where parsers demonstrably disagree on them ("funky
//!   chunks": a bare LF inside a chunk extension, after chunk data or in a trailer).
//! - A chunk size must start with a hex digit (httparse alone reads an empty size as 0,
//!   the last chunk), and chunk data must be followed by exactly CRLF.
//! - `Content-Length: 5, 5` is one length (RFC 9110 §8.6); differing values are refused.
//! - `chunked` applied twice, and Transfer-Encoding in an HTTP/1.0 message (RFC 9112 §6.1:
//!   "faulty framing"), are refused.
//! - Host headers that differ from each other, or from the authority of an absolute-form
//!   target, are refused: servers route by one or the other, and URL rules must see the
//!   host the server will.
//! - The ambiguity rules apply to responses too (except that a response whose final
//!   coding is not chunked is read until close, as RFC 9112 says): a server that frames
//!   ambiguously could otherwise hide a response from inspection.

use std::collections::VecDeque;
use std::fmt;
use std::mem::MaybeUninit;

use compact_str::CompactString;
use smallvec::SmallVec;

use super::transaction::{HttpVersion, Transaction, TransactionMarks};

/// Default bound on one head, on one chunk-size line, on one trailer section and on the
/// client bytes held while a CONNECT or Upgrade awaits its answer.
pub const DEFAULT_MAX_HEAD_BYTES: usize = 64 * 1024;
/// Default bound on the exchanges open at once (requests seen, transaction not complete).
pub const DEFAULT_MAX_PIPELINED: usize = 64;
/// Header lines one head may carry: httparse fills a fixed array on the stack.
pub const MAX_HEADER_LINES: usize = 128;
/// A buffer that grew past this is freed once its head is parsed, so that a connection
/// which once carried a large head does not keep the memory while idle.
const RETAINED_BUFFER_BYTES: usize = 4 * 1024;

/// The bounds one connection's parser keeps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http1Limits {
    /// Largest head (start line, header lines and blank line), chunk-size line, trailer
    /// section, and client bytes held while a CONNECT or Upgrade awaits its answer.
    pub max_head_bytes: usize,
    /// Most requests whose heads were seen and whose transactions are not complete.
    pub max_pipelined: usize,
}

impl Default for Http1Limits {
    fn default() -> Self {
        Http1Limits {
            max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
            max_pipelined: DEFAULT_MAX_PIPELINED,
        }
    }
}

/// Which of the connection's two byte streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ClientToServer,
    ServerToClient,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::ClientToServer => "client→server",
            Direction::ServerToClient => "server→client",
        })
    }
}

/// Why the parser stopped, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("HTTP/1.1 {direction} at byte {offset}: {problem}")]
pub struct Http1Error {
    pub direction: Direction,
    /// Offset in that direction's stream (0 = its first byte) of the head, line or byte
    /// that was wrong.
    pub offset: u64,
    pub problem: Http1Problem,
}

/// What was wrong with the bytes. [`Http1Problem::is_framing_ambiguity`] tells the
/// messages another parser could frame differently (refused) from the merely malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Http1Problem {
    #[error("head larger than {limit} bytes")]
    HeadTooLarge { limit: usize },
    #[error("more than {limit} header lines")]
    TooManyHeaders { limit: usize },
    #[error("invalid request line")]
    InvalidRequestLine,
    #[error("invalid status line")]
    InvalidStatusLine,
    #[error("invalid HTTP version")]
    InvalidVersion,
    #[error("invalid header name")]
    InvalidHeaderName,
    #[error("header line without a colon")]
    HeaderWithoutColon,
    #[error("invalid byte in a header value")]
    InvalidHeaderValue,
    #[error("invalid line ending")]
    InvalidLineEnding,
    #[error("bad chunk size")]
    BadChunkSize,
    #[error("chunk-size line longer than {limit} bytes")]
    ChunkLineTooLong { limit: usize },
    #[error("trailer section larger than {limit} bytes")]
    TrailersTooLarge { limit: usize },
    #[error("a response with no request")]
    ResponseWithoutRequest,
    #[error("more than {limit} requests awaiting responses")]
    TooManyPipelined { limit: usize },
    #[error("101 Switching Protocols to a request that asked for no upgrade")]
    UnrequestedSwitch,
    #[error("more than {limit} bytes sent before the server answered CONNECT or Upgrade")]
    TooMuchBeforeSwitch { limit: usize },
    #[error("connection closed in the middle of a message")]
    ClosedMidMessage,
    #[error("both Content-Length and Transfer-Encoding")]
    ContentLengthAndTransferEncoding,
    #[error("Content-Length values that differ")]
    ConflictingContentLengths,
    #[error("Content-Length that is not a number")]
    InvalidContentLength,
    #[error("Transfer-Encoding whose final coding is not chunked")]
    ChunkedNotFinal,
    #[error("chunked applied more than once")]
    ChunkedTwice,
    #[error("Transfer-Encoding in an HTTP/1.0 message")]
    TransferEncodingInHttp10,
    #[error("obsolete line folding (a header line starting with whitespace)")]
    ObsoleteLineFolding,
    #[error("whitespace between a header name and its colon")]
    WhitespaceBeforeColon,
    #[error("bare LF line ending in a request head")]
    BareLineFeedInRequestHead,
    #[error("chunk-size or trailer line not ended by CRLF")]
    BareLineEndingInChunkedBody,
    #[error("chunk data not followed by CRLF")]
    ChunkDataNotFollowedByCrlf,
    #[error("Host values that differ")]
    ConflictingHosts,
}

impl Http1Problem {
    /// True when another parser (the server's, a cache's) could frame or route the
    /// message differently: such a message must be blocked, never relayed.
    pub fn is_framing_ambiguity(self) -> bool {
        use Http1Problem::*;
        matches!(
            self,
            ContentLengthAndTransferEncoding
                | ConflictingContentLengths
                | InvalidContentLength
                | ChunkedNotFinal
                | ChunkedTwice
                | TransferEncodingInHttp10
                | ObsoleteLineFolding
                | WhitespaceBeforeColon
                | BareLineFeedInRequestHead
                | BareLineEndingInChunkedBody
                | ChunkDataNotFollowedByCrlf
                | ConflictingHosts
        )
    }
}

/// What the bytes just fed made happen. `index` numbers the transactions of the
/// connection from 0 in request order; offsets are client stream offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Http1Event {
    /// A request head is complete: it spans `head_start..head_end` of the client stream.
    /// The caller may judge it (URL rules) and then release the client bytes up to there.
    /// `request` is the request's side of the transaction, the caller's to keep: the
    /// parser keeps only what the response adds ([`ExchangeOutcome`]).
    RequestHead {
        index: u64,
        head_start: u64,
        head_end: u64,
        request: Box<Transaction>,
    },
    /// The request's body (if any) ended at `end`.
    RequestComplete { index: u64, end: u64 },
    /// A response head to request `index`; `interim` for 1xx other than 101.
    ResponseHead { index: u64, status: u16, interim: bool },
    /// The request and its final response are both complete. (A response may complete
    /// first when the server answers before the upload ends; the transaction then waits
    /// for the request's end, or for the client to close.)
    TransactionComplete { index: u64, outcome: ExchangeOutcome },
    /// From here both directions are opaque (101 Switching Protocols, or a 2xx answer to
    /// CONNECT), including client bytes sent after the request that asked for it.
    Tunnel { index: u64, why: &'static str },
    /// Not HTTP/1.1: nothing more is inspected; the caller decides what to do.
    ProtocolError(Http1Error),
    /// Framing another parser could read differently: the caller must block it.
    Refused(Http1Error),
    /// A head as sent (start line to blank line), just before its `RequestHead` or
    /// `ResponseHead` (interim ones too). Only after [`Http1Connection::report_content`].
    Head {
        index: u64,
        direction: Direction,
        head: Vec<u8>,
    },
    /// Body bytes of message `index` (after de-chunking) are the stream bytes
    /// `start..end` of `direction`, all in the piece just fed. Only after
    /// [`Http1Connection::report_content`].
    BodyData {
        index: u64,
        direction: Direction,
        start: u64,
        end: u64,
    },
}

/// The events of one call. A piece of a keep-alive exchange makes at most three (head,
/// request complete, transaction complete): they stay on the stack.
pub type Http1Events = SmallVec<[Http1Event; 4]>;

/// The HTTP/1.1 parser of one connection: both directions, fed separately.
#[derive(Debug)]
pub struct Http1Connection {
    limits: Http1Limits,
    phase: Phase,
    client: Side,
    server: Side,
    /// Requests whose transactions are not complete, oldest first.
    exchanges: VecDeque<Exchange>,
    next_request_index: u64,
    /// The request the next response head answers.
    next_response_index: u64,
    client_closed: bool,
    server_closed: bool,
    /// Heads and body spans are reported as events (signatures read them).
    report_content: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Inspecting,
    /// Both directions opaque after a protocol switch.
    Tunnel,
    /// After an error or a refusal: nothing more is parsed.
    Stopped,
}

/// One direction's reading position.
#[derive(Debug)]
struct Side {
    /// All bytes fed in this direction, parsed or not.
    received: u64,
    /// Stream offset of the next byte to parse; bytes before it are parsed or buffered.
    offset: u64,
    /// Where the head being read (or the next one) starts.
    head_start: u64,
    reading: Reading,
    /// The part of a head (or of a chunk-size or trailer line) that arrived in an earlier
    /// piece; on the client, the bytes held while a switch awaits its answer.
    pending: Vec<u8>,
    scan: HeadScan,
}

#[derive(Debug, Clone, Copy)]
enum Reading {
    Head,
    Body {
        index: u64,
        body: BodyFraming,
    },
    /// Client only: after a CONNECT or Upgrade request whose final answer has not come,
    /// the bytes that follow may be HTTP or tunnel; they wait in `pending`.
    AwaitingSwitch {
        index: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFraming {
    Length {
        remaining: u64,
    },
    Chunked(ChunkedPhase),
    /// A response read until the server closes (no length, no chunked).
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkedPhase {
    SizeLine,
    Data {
        remaining: u64,
    },
    /// Expecting the CR, then the LF, that end a chunk's data.
    DataCr,
    DataLf,
    Trailers {
        bytes_so_far: usize,
    },
}

/// What an exchange adds to its request's side of the transaction: the response, and
/// the bodies' lengths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExchangeOutcome {
    /// The final status; `None` when the exchange ended without a final response.
    pub status: Option<u16>,
    pub response_content_type: Option<CompactString>,
    pub request_body_len: u64,
    pub response_body_len: u64,
    /// The response was HTTP/1.0: the transaction ran over HTTP/1.0.
    pub http10_response: bool,
    /// Switched protocols (101).
    pub upgrade: bool,
    /// A CONNECT answered 2xx: a tunnel.
    pub connect: bool,
}

impl ExchangeOutcome {
    /// Fills the response side into `transaction`, which has the request's side.
    pub fn complete(self, transaction: &mut Transaction) {
        transaction.status = self.status;
        transaction.response_content_type = self.response_content_type;
        transaction.request_body_len = self.request_body_len;
        transaction.response_body_len = self.response_body_len;
        if self.http10_response {
            transaction.version = Some(HttpVersion::Http10);
        }
        transaction.marks.upgrade |= self.upgrade;
        transaction.marks.connect |= self.connect;
    }
}

/// A request whose transaction is not complete yet.
#[derive(Debug)]
struct Exchange {
    index: u64,
    outcome: ExchangeOutcome,
    is_head: bool,
    is_connect: bool,
    asks_upgrade: bool,
    request_complete: bool,
    final_response_seen: bool,
    response_complete: bool,
}

impl Http1Connection {
    pub fn new(limits: Http1Limits) -> Self {
        Http1Connection {
            limits,
            phase: Phase::Inspecting,
            client: Side::new(),
            server: Side::new(),
            exchanges: VecDeque::new(),
            next_request_index: 0,
            next_response_index: 0,
            client_closed: false,
            server_closed: false,
            report_content: false,
        }
    }

    /// From here, every head comes whole in an [`Http1Event::Head`] and every body's
    /// bytes as [`Http1Event::BodyData`] spans: what content signatures read.
    pub fn report_content(&mut self) {
        self.report_content = true;
    }

    /// Client→server plaintext, in stream order.
    pub fn client_bytes(&mut self, bytes: &[u8]) -> Http1Events {
        let mut events = Http1Events::new();
        self.client.received += bytes.len() as u64;
        if self.phase == Phase::Inspecting {
            self.feed_client(bytes, &mut events);
        }
        events
    }

    /// Server→client plaintext, in stream order.
    pub fn server_bytes(&mut self, bytes: &[u8]) -> Http1Events {
        let mut events = Http1Events::new();
        self.server.received += bytes.len() as u64;
        if self.phase == Phase::Inspecting {
            self.feed_server(bytes, &mut events);
        }
        events
    }

    /// The client sent its last byte (close_notify or FIN). A half-close between
    /// requests is normal; one inside a message is an error, unless the server already
    /// answered that request (the transaction then completes with the body so far).
    pub fn client_closed(&mut self) -> Http1Events {
        let mut events = Http1Events::new();
        if self.phase == Phase::Inspecting && !self.client_closed {
            self.client_closed = true;
            self.end_of_client(&mut events);
        }
        events
    }

    /// The server sent its last byte: this ends a response read until close.
    pub fn server_closed(&mut self) -> Http1Events {
        let mut events = Http1Events::new();
        if self.phase == Phase::Inspecting && !self.server_closed {
            self.server_closed = true;
            match self.server.reading {
                Reading::Head | Reading::AwaitingSwitch { .. } => {
                    if self.server.scan.has_content() {
                        let at = self.server.head_start;
                        self.fail(
                            Direction::ServerToClient,
                            at,
                            Http1Problem::ClosedMidMessage,
                            &mut events,
                        );
                    }
                }
                Reading::Body {
                    index,
                    body: BodyFraming::UntilClose,
                } => self.complete_response(index, &mut events),
                Reading::Body { .. } => {
                    let at = self.server.offset;
                    self.fail(
                        Direction::ServerToClient,
                        at,
                        Http1Problem::ClosedMidMessage,
                        &mut events,
                    );
                }
            }
        }
        events
    }

    /// How many bytes at the start of the client stream are framed: complete request
    /// heads and the bodies that follow them. Bytes past it belong to a head not yet
    /// complete, or wait for the server's answer to a CONNECT or Upgrade; a caller that
    /// holds client bytes until their head is judged may release everything before it.
    /// In a tunnel it is every byte received; after an error it stays where parsing
    /// stopped.
    pub fn client_bytes_framed(&self) -> u64 {
        if self.phase == Phase::Tunnel {
            return self.client.received;
        }
        match self.client.reading {
            Reading::Head => self.client.head_start,
            Reading::Body { .. } | Reading::AwaitingSwitch { .. } => self.client.offset,
        }
    }

    fn feed_client(&mut self, bytes: &[u8], events: &mut Http1Events) {
        let max = self.limits.max_head_bytes;
        let mut rest = bytes;
        while !rest.is_empty() && self.phase == Phase::Inspecting {
            match self.client.reading {
                Reading::AwaitingSwitch { .. } => {
                    if self.client.pending.len() + rest.len() > max {
                        let at = self.client.offset;
                        let problem = Http1Problem::TooMuchBeforeSwitch { limit: max };
                        self.fail(Direction::ClientToServer, at, problem, events);
                    } else {
                        self.client.pending.extend_from_slice(rest);
                    }
                    rest = &[];
                }
                Reading::Head => {
                    let head_start = self.client.head_start;
                    let report = self.report_content;
                    let parse = |head: &[u8]| (parse_request_head(head), report.then(|| head.to_vec()));
                    match self.client.read_head(rest, max, Direction::ClientToServer, parse) {
                        HeadRead::NeedMore => rest = &[],
                        HeadRead::InvalidStartLine { at, problem } => {
                            self.fail(Direction::ClientToServer, head_start + at as u64, problem, events);
                        }
                        HeadRead::TooLarge => {
                            let problem = Http1Problem::HeadTooLarge { limit: max };
                            self.fail(Direction::ClientToServer, head_start, problem, events);
                        }
                        HeadRead::Complete {
                            consumed,
                            parsed: (parsed, head),
                        } => {
                            rest = &rest[consumed..];
                            if let Some(head) = head {
                                let (index, direction) = (self.next_request_index, Direction::ClientToServer);
                                events.push(Http1Event::Head { index, direction, head });
                            }
                            self.on_request_head(head_start, parsed, events);
                        }
                    }
                }
                Reading::Body { index, body } => {
                    let consumed = self.read_body(Direction::ClientToServer, index, body, rest, events);
                    rest = &rest[consumed..];
                }
            }
        }
    }

    fn feed_server(&mut self, bytes: &[u8], events: &mut Http1Events) {
        let max = self.limits.max_head_bytes;
        let mut rest = bytes;
        while !rest.is_empty() && self.phase == Phase::Inspecting {
            match self.server.reading {
                Reading::Head | Reading::AwaitingSwitch { .. } => {
                    let head_start = self.server.head_start;
                    let index = self.next_response_index;
                    // Checked at a head's first byte: nothing a server sends unasked is HTTP.
                    if self.server.pending.is_empty() && self.position(index).is_none() {
                        let at = self.server.offset;
                        self.fail(
                            Direction::ServerToClient,
                            at,
                            Http1Problem::ResponseWithoutRequest,
                            events,
                        );
                        break;
                    }
                    let report = self.report_content;
                    let parse = |head: &[u8]| (parse_response_head(head), report.then(|| head.to_vec()));
                    match self.server.read_head(rest, max, Direction::ServerToClient, parse) {
                        HeadRead::NeedMore => rest = &[],
                        HeadRead::InvalidStartLine { at, problem } => {
                            self.fail(Direction::ServerToClient, head_start + at as u64, problem, events);
                        }
                        HeadRead::TooLarge => {
                            let problem = Http1Problem::HeadTooLarge { limit: max };
                            self.fail(Direction::ServerToClient, head_start, problem, events);
                        }
                        HeadRead::Complete {
                            consumed,
                            parsed: (parsed, head),
                        } => {
                            rest = &rest[consumed..];
                            if let Some(head) = head {
                                let direction = Direction::ServerToClient;
                                events.push(Http1Event::Head { index, direction, head });
                            }
                            self.on_response_head(index, head_start, parsed, events);
                        }
                    }
                }
                Reading::Body { index, body } => {
                    let consumed = self.read_body(Direction::ServerToClient, index, body, rest, events);
                    rest = &rest[consumed..];
                }
            }
        }
    }

    /// Reads body bytes of message `index`, framed by `body`; returns how many of
    /// `bytes` it took.
    fn read_body(
        &mut self,
        direction: Direction,
        index: u64,
        mut body: BodyFraming,
        bytes: &[u8],
        events: &mut Http1Events,
    ) -> usize {
        let limit = self.limits.max_head_bytes;
        let mut spans = DataSpans::new();
        let report = self.report_content.then_some(&mut spans);
        let side = self.side_mut(direction);
        match read_body_bytes(&mut body, &mut side.pending, bytes, side.offset, limit, report) {
            Err((at, problem)) => {
                self.fail(direction, at, problem, events);
                bytes.len()
            }
            Ok(read) => {
                side.offset += read.consumed as u64;
                side.reading = Reading::Body { index, body };
                for (start, end) in spans {
                    events.push(Http1Event::BodyData {
                        index,
                        direction,
                        start,
                        end,
                    });
                }
                if let Some(position) = self.position(index) {
                    let outcome = &mut self.exchanges[position].outcome;
                    match direction {
                        Direction::ClientToServer => outcome.request_body_len += read.data,
                        Direction::ServerToClient => outcome.response_body_len += read.data,
                    }
                }
                if read.done {
                    match direction {
                        Direction::ClientToServer => self.complete_request(index, events),
                        Direction::ServerToClient => self.complete_response(index, events),
                    }
                }
                read.consumed
            }
        }
    }

    fn on_request_head(&mut self, head_start: u64, parsed: HeadResult<ParsedRequest>, events: &mut Http1Events) {
        let request = match parsed {
            Ok(request) => request,
            Err((at, problem)) => return self.fail(Direction::ClientToServer, head_start + at as u64, problem, events),
        };
        if self.exchanges.len() >= self.limits.max_pipelined {
            let problem = Http1Problem::TooManyPipelined {
                limit: self.limits.max_pipelined,
            };
            return self.fail(Direction::ClientToServer, head_start, problem, events);
        }
        let index = self.next_request_index;
        self.next_request_index += 1;
        events.push(Http1Event::RequestHead {
            index,
            head_start,
            head_end: self.client.offset,
            request: Box::new(request.transaction),
        });
        if self.exchanges.capacity() == 0 {
            // One slot, kept while the connection lives: most carry one request at a time.
            self.exchanges.reserve_exact(1);
        }
        self.exchanges.push_back(Exchange {
            index,
            outcome: ExchangeOutcome::default(),
            is_head: request.is_head,
            is_connect: request.is_connect,
            asks_upgrade: request.asks_upgrade,
            request_complete: false,
            final_response_seen: false,
            response_complete: false,
        });
        match request.body {
            None => self.complete_request(index, events),
            Some(body) => self.client.reading = Reading::Body { index, body },
        }
    }

    fn on_response_head(
        &mut self,
        index: u64,
        head_start: u64,
        parsed: HeadResult<ParsedResponse>,
        events: &mut Http1Events,
    ) {
        let direction = Direction::ServerToClient;
        let mut response = match parsed {
            Ok(response) => response,
            Err((at, problem)) => return self.fail(direction, head_start + at as u64, problem, events),
        };
        let Some(position) = self.position(index) else {
            return self.fail(direction, head_start, Http1Problem::ResponseWithoutRequest, events);
        };
        let status = response.status;
        let exchange = &mut self.exchanges[position];
        if status == 101 {
            if !exchange.asks_upgrade {
                return self.fail(direction, head_start, Http1Problem::UnrequestedSwitch, events);
            }
            exchange.record_final_response(&mut response);
            exchange.outcome.upgrade = true;
            events.push(Http1Event::ResponseHead {
                index,
                status,
                interim: false,
            });
            return self.switch_to_tunnel(index, "101 Switching Protocols", events);
        }
        if (100..200).contains(&status) {
            // 100 Continue, 103 Early Hints: the final response is still to come.
            events.push(Http1Event::ResponseHead {
                index,
                status,
                interim: true,
            });
            self.server.start_head();
            return;
        }
        exchange.record_final_response(&mut response);
        events.push(Http1Event::ResponseHead {
            index,
            status,
            interim: false,
        });
        if exchange.is_connect && (200..300).contains(&status) {
            exchange.outcome.connect = true;
            return self.switch_to_tunnel(index, "2xx answer to CONNECT", events);
        }
        let has_no_body = exchange.is_head || status == 204 || status == 304;
        match response.framing.response_body().filter(|_| !has_no_body) {
            None => self.complete_response(index, events),
            Some(body) => self.server.reading = Reading::Body { index, body },
        }
        // A CONNECT or Upgrade turned down: what the client sent after it is HTTP again.
        if matches!(self.client.reading, Reading::AwaitingSwitch { index: waiting } if waiting == index) {
            self.release_held_client_bytes(events);
        }
    }

    fn complete_request(&mut self, index: u64, events: &mut Http1Events) {
        events.push(Http1Event::RequestComplete {
            index,
            end: self.client.offset,
        });
        let mut awaits_switch = false;
        if let Some(position) = self.position(index) {
            let exchange = &mut self.exchanges[position];
            exchange.request_complete = true;
            awaits_switch = (exchange.is_connect || exchange.asks_upgrade) && !exchange.final_response_seen;
            self.finish_if_complete(index, events);
        }
        self.client.start_head();
        if awaits_switch {
            self.client.reading = Reading::AwaitingSwitch { index };
        }
    }

    fn complete_response(&mut self, index: u64, events: &mut Http1Events) {
        if let Some(position) = self.position(index) {
            self.exchanges[position].response_complete = true;
        }
        self.next_response_index = index + 1;
        self.server.start_head();
        self.finish_if_complete(index, events);
    }

    /// Removes an exchange. A queue that pipelining grew goes with its last exchange, so
    /// that an idle keep-alive connection holds no more than the one slot.
    fn take_exchange(&mut self, position: usize) -> Option<Exchange> {
        let exchange = self.exchanges.remove(position);
        if self.exchanges.is_empty() && self.exchanges.capacity() > 1 {
            self.exchanges = VecDeque::new();
        }
        exchange
    }

    fn finish_if_complete(&mut self, index: u64, events: &mut Http1Events) {
        let Some(position) = self.position(index) else {
            return;
        };
        let exchange = &self.exchanges[position];
        if exchange.request_complete && exchange.response_complete {
            if let Some(exchange) = self.take_exchange(position) {
                events.push(Http1Event::TransactionComplete {
                    index,
                    outcome: exchange.outcome,
                });
            }
        }
    }

    fn switch_to_tunnel(&mut self, index: u64, why: &'static str, events: &mut Http1Events) {
        if let Some(exchange) = self.position(index).and_then(|position| self.take_exchange(position)) {
            events.push(Http1Event::TransactionComplete {
                index,
                outcome: exchange.outcome,
            });
        }
        events.push(Http1Event::Tunnel { index, why });
        self.phase = Phase::Tunnel;
        self.release_memory();
    }

    /// Parses the client bytes held while a switch awaited its answer, now that the
    /// answer said they are HTTP.
    fn release_held_client_bytes(&mut self, events: &mut Http1Events) {
        let held = std::mem::take(&mut self.client.pending);
        self.client.start_head();
        self.feed_client(&held, events);
        if self.client_closed && self.phase == Phase::Inspecting {
            self.end_of_client(events);
        }
    }

    fn end_of_client(&mut self, events: &mut Http1Events) {
        let direction = Direction::ClientToServer;
        match self.client.reading {
            Reading::Head => {
                if self.client.scan.has_content() {
                    let at = self.client.head_start;
                    self.fail(direction, at, Http1Problem::ClosedMidMessage, events);
                }
            }
            // Decided when the server answers.
            Reading::AwaitingSwitch { .. } => {}
            Reading::Body { index, .. } => {
                let answered = self.position(index).filter(|&p| self.exchanges[p].response_complete);
                match answered.and_then(|position| self.take_exchange(position)) {
                    Some(exchange) => {
                        events.push(Http1Event::TransactionComplete {
                            index,
                            outcome: exchange.outcome,
                        });
                        self.client.start_head();
                    }
                    None => {
                        let at = self.client.offset;
                        self.fail(direction, at, Http1Problem::ClosedMidMessage, events);
                    }
                }
            }
        }
    }

    fn fail(&mut self, direction: Direction, offset: u64, problem: Http1Problem, events: &mut Http1Events) {
        let error = Http1Error {
            direction,
            offset,
            problem,
        };
        events.push(if problem.is_framing_ambiguity() {
            Http1Event::Refused(error)
        } else {
            Http1Event::ProtocolError(error)
        });
        self.phase = Phase::Stopped;
        self.release_memory();
    }

    /// Nothing more is parsed: free what parsing needed.
    fn release_memory(&mut self) {
        self.client.pending = Vec::new();
        self.server.pending = Vec::new();
        self.exchanges = VecDeque::new();
    }

    fn position(&self, index: u64) -> Option<usize> {
        self.exchanges.iter().position(|exchange| exchange.index == index)
    }

    fn side_mut(&mut self, direction: Direction) -> &mut Side {
        match direction {
            Direction::ClientToServer => &mut self.client,
            Direction::ServerToClient => &mut self.server,
        }
    }
}

impl Exchange {
    fn record_final_response(&mut self, response: &mut ParsedResponse) {
        self.final_response_seen = true;
        self.outcome.status = Some(response.status);
        self.outcome.response_content_type = response.content_type.take();
        self.outcome.http10_response = response.version == HttpVersion::Http10;
    }
}

// ---------------------------------------------------------------------------------------
// Heads

enum HeadRead<T> {
    NeedMore,
    TooLarge,
    /// The head is incomplete but its start line is whole and not HTTP's.
    InvalidStartLine {
        at: usize,
        problem: Http1Problem,
    },
    /// The head ended `consumed` bytes into the piece.
    Complete {
        consumed: usize,
        parsed: T,
    },
}

impl Side {
    fn new() -> Self {
        Side {
            received: 0,
            offset: 0,
            head_start: 0,
            reading: Reading::Head,
            pending: Vec::new(),
            scan: HeadScan::default(),
        }
    }

    fn start_head(&mut self) {
        self.reading = Reading::Head;
        self.head_start = self.offset;
        self.scan = HeadScan::default();
    }

    /// Looks for the end of the current head in `bytes` and parses the head once whole.
    /// A head within one piece is parsed in place; only one spanning pieces is copied.
    fn read_head<T>(
        &mut self,
        bytes: &[u8],
        max: usize,
        direction: Direction,
        parse: impl FnOnce(&[u8]) -> T,
    ) -> HeadRead<T> {
        let room = max.saturating_sub(self.pending.len());
        let window = &bytes[..bytes.len().min(room)];
        match self.scan.find_end(window) {
            Some(end) => {
                let parsed = if self.pending.is_empty() {
                    parse(&window[..end])
                } else {
                    self.pending.extend_from_slice(&window[..end]);
                    let parsed = parse(&self.pending);
                    self.clear_pending();
                    parsed
                };
                self.scan = HeadScan::default();
                self.offset += end as u64;
                HeadRead::Complete { consumed: end, parsed }
            }
            None => {
                // Any end would come later, past the bound.
                let too_large = self.pending.len() + window.len() >= max;
                self.pending.extend_from_slice(window);
                if let Some((at, problem)) = self.start_line_error(direction) {
                    return HeadRead::InvalidStartLine { at, problem };
                }
                if too_large {
                    return HeadRead::TooLarge;
                }
                self.offset += window.len() as u64;
                HeadRead::NeedMore
            }
        }
    }

    /// The start line of the incomplete head in `pending`, checked once as soon as it
    /// ends: a client that sends one short line that is not HTTP's and waits for an
    /// answer must be let through now, not held until the head limit. Only errors httparse
    /// finds in the start line itself count, as `head_verdict` reports them first too, so
    /// the verdict does not depend on where the stream was cut.
    fn start_line_error(&mut self, direction: Direction) -> Option<(usize, Http1Problem)> {
        if self.scan.start_line_checked || !self.scan.seen_start_line {
            return None;
        }
        self.scan.start_line_checked = true;
        let start = start_line_offset(&self.pending);
        let end = start + memchr::memchr(b'\n', &self.pending[start..])? + 1;
        let line = &self.pending[..end];
        let parsed = match direction {
            Direction::ClientToServer => httparse::Request::new(&mut []).parse(line).map(drop),
            Direction::ServerToClient => httparse::Response::new(&mut []).parse(line).map(drop),
        };
        match parsed {
            Err(error) if is_start_line_error(error) => Some(locate_httparse_error(line, error, direction)),
            _ => None,
        }
    }

    fn clear_pending(&mut self) {
        if self.pending.capacity() > RETAINED_BUFFER_BYTES {
            self.pending = Vec::new();
        } else {
            self.pending.clear();
        }
    }
}

/// Progress of the search for a head's end (its first blank line) across pieces.
#[derive(Debug, Clone, Copy, Default)]
struct HeadScan {
    /// The current line has a byte other than CR.
    line_has_content: bool,
    /// A non-blank line was seen: blank lines before it are skipped (RFC 9112 §2.2).
    seen_start_line: bool,
    /// `Side::start_line_error` looked at this head's start line.
    start_line_checked: bool,
}

impl HeadScan {
    /// One past the LF that ends the head, if it is in `bytes`.
    fn find_end(&mut self, bytes: &[u8]) -> Option<usize> {
        // From LF to LF: a line's first byte nearly always says it has content.
        let has_content = |line: &[u8]| line.iter().any(|&b| b != b'\r');
        let mut line_start = 0;
        for lf in memchr::memchr_iter(b'\n', bytes) {
            if self.line_has_content || has_content(&bytes[line_start..lf]) {
                self.seen_start_line = true;
            } else if self.seen_start_line {
                return Some(lf + 1);
            }
            self.line_has_content = false;
            line_start = lf + 1;
        }
        self.line_has_content |= has_content(&bytes[line_start..]);
        None
    }

    fn has_content(self) -> bool {
        self.seen_start_line || self.line_has_content
    }
}

/// A head's problem and where in the head it is.
type HeadResult<T> = Result<T, (usize, Http1Problem)>;

#[derive(Debug)]
struct ParsedRequest {
    transaction: Transaction,
    /// `None` when the request has no body.
    body: Option<BodyFraming>,
    is_head: bool,
    is_connect: bool,
    asks_upgrade: bool,
}

#[derive(Debug)]
struct ParsedResponse {
    status: u16,
    version: HttpVersion,
    content_type: Option<CompactString>,
    framing: FramingHeaders,
}

/// Room for httparse's header slices, left uninitialized: zeroing 128 of them per head
/// showed in the bench's profile.
fn header_slots<'b>() -> [MaybeUninit<httparse::Header<'b>>; MAX_HEADER_LINES] {
    [const { MaybeUninit::uninit() }; MAX_HEADER_LINES]
}

/// What httparse's verdict on a head means. `check_field_lines` runs only when httparse
/// refused the head: everything it catches httparse refuses too (checked under test and
/// fuzzing), and it names the problem httparse reports as a bare "invalid header name".
fn head_verdict(
    head: &[u8],
    parsed: Result<httparse::Status<usize>, httparse::Error>,
    direction: Direction,
) -> HeadResult<()> {
    match parsed {
        Ok(httparse::Status::Complete(len)) if len == head.len() => {
            #[cfg(any(test, fuzzing))]
            assert_eq!(
                check_field_lines(head),
                Ok(()),
                "httparse accepted a head check_field_lines refuses"
            );
            Ok(())
        }
        Ok(_) => {
            check_field_lines(head)?;
            Err((start_line_offset(head), Http1Problem::InvalidLineEnding))
        }
        // The start line comes first in the stream, so its error is the one reported.
        Err(error) if is_start_line_error(error) => Err(locate_httparse_error(head, error, direction)),
        Err(error) => {
            check_field_lines(head)?;
            Err(locate_httparse_error(head, error, direction))
        }
    }
}

/// httparse errors that can only come from a start line (request or status line).
fn is_start_line_error(error: httparse::Error) -> bool {
    matches!(
        error,
        httparse::Error::Token | httparse::Error::Status | httparse::Error::Version
    )
}

fn parse_request_head(head: &[u8]) -> HeadResult<ParsedRequest> {
    let mut slots = header_slots();
    let mut request = httparse::Request::new(&mut []);
    let parsed = request.parse_with_uninit_headers(head, &mut slots);
    head_verdict(head, parsed, Direction::ClientToServer)?;
    // After httparse, so that only a head that is otherwise HTTP is refused for it.
    if let Some(at) = find_bare_lf(head) {
        return Err((at, Http1Problem::BareLineFeedInRequestHead));
    }
    let method = request.method.unwrap_or_default();
    let target = request.path.unwrap_or_default();
    let version = if request.version == Some(0) {
        HttpVersion::Http10
    } else {
        HttpVersion::Http11
    };
    let headers: &[httparse::Header<'_>] = request.headers;
    let framing = framing_headers(head, headers, version, Direction::ClientToServer)?;
    let is_connect = method == "CONNECT";
    let target = split_target(target, is_connect);

    // One pass over the header lines for the fields the transaction and the framing need;
    // for each, the first line that has it (Host: every line, they must agree).
    let mut host: Option<(&[u8], usize)> = None;
    let (mut expect, mut upgrade, mut user_agent, mut referer, mut content_type) = (None, None, None, None, None);
    for header in headers {
        let first = match RequestField::of(header.name) {
            Some(RequestField::Host) => {
                match host {
                    Some((first, _)) if !first.eq_ignore_ascii_case(header.value) => {
                        return Err((
                            offset_within(head, header.name.as_bytes()),
                            Http1Problem::ConflictingHosts,
                        ));
                    }
                    Some(_) => {}
                    None => host = Some((header.value, offset_within(head, header.name.as_bytes()))),
                }
                continue;
            }
            Some(RequestField::Expect) => &mut expect,
            Some(RequestField::Upgrade) => &mut upgrade,
            Some(RequestField::UserAgent) => &mut user_agent,
            Some(RequestField::Referer) => &mut referer,
            Some(RequestField::ContentType) => &mut content_type,
            None => continue,
        };
        first.get_or_insert(header.value);
    }
    // RFC 9112 §3.2.2: an absolute-form target's authority replaces Host.
    if let (Some(authority), Some((host, at))) = (target.authority, host) {
        if !target.is_authority_form && !authority.as_bytes().eq_ignore_ascii_case(host) {
            return Err((at, Http1Problem::ConflictingHosts));
        }
    }
    // Equal to an absolute-form authority when both are present (checked above).
    let host = host
        .map(|(host, _)| lossy(host))
        .or_else(|| target.authority.map(CompactString::from));

    let expect_continue = expect.is_some_and(|value| trim_ows(value).eq_ignore_ascii_case(b"100-continue"));
    let asks_upgrade = upgrade.is_some_and(|value| !trim_ows(value).is_empty());
    let body = match framing.transfer {
        Some(TransferCoding::ChunkedFinal) => Some(BodyFraming::Chunked(ChunkedPhase::SizeLine)),
        // Refused in framing_headers: a request's final coding must be chunked.
        Some(TransferCoding::Other) => None,
        None => framing
            .content_length
            .filter(|&length| length > 0)
            .map(|remaining| BodyFraming::Length { remaining }),
    };
    let transaction = Transaction {
        version: Some(version),
        method: method.into(),
        host,
        path: target.path,
        query: target.query.map(CompactString::from),
        user_agent: user_agent.map(lossy),
        referer: referer.map(lossy),
        request_content_type: content_type.map(lossy),
        marks: TransactionMarks {
            expect_continue,
            ..TransactionMarks::default()
        },
        ..Transaction::default()
    };
    Ok(ParsedRequest {
        transaction,
        body,
        is_head: method == "HEAD",
        is_connect,
        asks_upgrade,
    })
}

fn parse_response_head(head: &[u8]) -> HeadResult<ParsedResponse> {
    let mut slots = header_slots();
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut response, head, &mut slots);
    head_verdict(head, parsed, Direction::ServerToClient)?;
    let status = response.code.unwrap_or_default();
    if status < 100 {
        return Err((start_line_offset(head), Http1Problem::InvalidStatusLine));
    }
    let version = if response.version == Some(0) {
        HttpVersion::Http10
    } else {
        HttpVersion::Http11
    };
    let headers: &[httparse::Header<'_>] = response.headers;
    Ok(ParsedResponse {
        status,
        version,
        content_type: header_value(headers, "content-type").map(lossy),
        framing: framing_headers(head, headers, version, Direction::ServerToClient)?,
    })
}

/// The request header fields a transaction records or the framing depends on (beyond
/// Content-Length and Transfer-Encoding, which `framing_headers` reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestField {
    Host,
    Expect,
    Upgrade,
    UserAgent,
    Referer,
    ContentType,
}

impl RequestField {
    fn of(name: &str) -> Option<RequestField> {
        let (field, spelled) = match name.len() {
            4 => (RequestField::Host, "host"),
            6 => (RequestField::Expect, "expect"),
            7 if name.as_bytes()[0].eq_ignore_ascii_case(&b'u') => (RequestField::Upgrade, "upgrade"),
            7 => (RequestField::Referer, "referer"),
            10 => (RequestField::UserAgent, "user-agent"),
            12 => (RequestField::ContentType, "content-type"),
            _ => return None,
        };
        name.eq_ignore_ascii_case(spelled).then_some(field)
    }
}

/// What Content-Length and Transfer-Encoding say, once checked for ambiguity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FramingHeaders {
    content_length: Option<u64>,
    transfer: Option<TransferCoding>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TransferCoding {
    ChunkedFinal,
    /// Transfer-Encoding present, final coding not chunked.
    Other,
}

impl FramingHeaders {
    /// A response's body framing (RFC 9112 §6.3 rules 4 to 7), for a status that has one.
    fn response_body(self) -> Option<BodyFraming> {
        match (self.transfer, self.content_length) {
            (Some(TransferCoding::ChunkedFinal), _) => Some(BodyFraming::Chunked(ChunkedPhase::SizeLine)),
            (Some(TransferCoding::Other), _) | (None, None) => Some(BodyFraming::UntilClose),
            (None, Some(0)) => None,
            (None, Some(remaining)) => Some(BodyFraming::Length { remaining }),
        }
    }
}

fn framing_headers(
    head: &[u8],
    headers: &[httparse::Header<'_>],
    version: HttpVersion,
    direction: Direction,
) -> HeadResult<FramingHeaders> {
    let mut content_length: Option<u64> = None;
    let mut content_length_at: Option<usize> = None;
    let mut transfer_encoding_at: Option<usize> = None;
    let mut chunked_count = 0;
    let mut final_is_chunked = false;
    for header in headers {
        let at = offset_within(head, header.name.as_bytes());
        if header.name.eq_ignore_ascii_case("content-length") {
            content_length_at.get_or_insert(at);
            for element in header.value.split(|&b| b == b',') {
                let length = parse_decimal(trim_ows(element)).ok_or((at, Http1Problem::InvalidContentLength))?;
                if content_length.is_some_and(|first| first != length) {
                    return Err((at, Http1Problem::ConflictingContentLengths));
                }
                content_length = Some(length);
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding_at.get_or_insert(at);
            // Empty list elements are allowed (RFC 9110 §5.6.1) and mean nothing.
            for coding in header
                .value
                .split(|&b| b == b',')
                .map(trim_ows)
                .filter(|c| !c.is_empty())
            {
                final_is_chunked = coding.eq_ignore_ascii_case(b"chunked");
                chunked_count += usize::from(final_is_chunked);
            }
        }
    }
    let Some(transfer_encoding_at) = transfer_encoding_at else {
        return Ok(FramingHeaders {
            content_length,
            transfer: None,
        });
    };
    if version == HttpVersion::Http10 {
        return Err((transfer_encoding_at, Http1Problem::TransferEncodingInHttp10));
    }
    if let Some(content_length_at) = content_length_at {
        let later = content_length_at.max(transfer_encoding_at);
        return Err((later, Http1Problem::ContentLengthAndTransferEncoding));
    }
    if chunked_count > 1 {
        return Err((transfer_encoding_at, Http1Problem::ChunkedTwice));
    }
    if !final_is_chunked && direction == Direction::ClientToServer {
        return Err((transfer_encoding_at, Http1Problem::ChunkedNotFinal));
    }
    Ok(FramingHeaders {
        content_length: None,
        transfer: Some(if final_is_chunked {
            TransferCoding::ChunkedFinal
        } else {
            TransferCoding::Other
        }),
    })
}

/// The request target split as the transaction records it.
struct RequestTarget<'a> {
    /// From an absolute-form or authority-form (CONNECT) target.
    authority: Option<&'a str>,
    is_authority_form: bool,
    path: CompactString,
    query: Option<&'a str>,
}

fn split_target(target: &str, is_connect: bool) -> RequestTarget<'_> {
    if is_connect {
        // Authority-form: the target is the host and port; EVE shows it as the URL.
        return RequestTarget {
            authority: Some(target),
            is_authority_form: true,
            path: target.into(),
            query: None,
        };
    }
    let (authority, path_and_query) = match absolute_form_rest(target) {
        Some(rest) => {
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let authority = &rest[..end];
            // Userinfo is not part of the host.
            let authority = authority.rsplit('@').next().unwrap_or(authority);
            (Some(authority), &rest[end..])
        }
        None => (None, target),
    };
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    let path = if path.is_empty() && authority.is_some() {
        "/"
    } else {
        path
    };
    RequestTarget {
        authority,
        is_authority_form: false,
        path: path.into(),
        query,
    }
}

/// What follows `scheme://` when `target` is in absolute form.
fn absolute_form_rest(target: &str) -> Option<&str> {
    let (scheme, rest) = target.split_once("://")?;
    let mut chars = scheme.chars();
    let starts_alpha = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let scheme_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    (starts_alpha && scheme_ok).then_some(rest)
}

/// Refuses obs-fold and whitespace before a colon, and finds a line with no colon, in
/// the head's header lines; httparse reports all three as the same "invalid header name".
fn check_field_lines(head: &[u8]) -> HeadResult<()> {
    for (at, line) in field_lines(head) {
        check_field_line(line).map_err(|problem| (at, problem))?;
    }
    Ok(())
}

/// One header or trailer line, without its line ending.
fn check_field_line(line: &[u8]) -> Result<(), Http1Problem> {
    if matches!(line.first(), Some(b' ' | b'\t')) {
        return Err(Http1Problem::ObsoleteLineFolding);
    }
    match line.iter().position(|&b| b == b':') {
        None if line.is_empty() => Ok(()),
        None => Err(Http1Problem::HeaderWithoutColon),
        Some(0) => Err(Http1Problem::InvalidHeaderName),
        Some(colon) if matches!(line[colon - 1], b' ' | b'\t') => Err(Http1Problem::WhitespaceBeforeColon),
        Some(_) => Ok(()),
    }
}

/// httparse says what was wrong, not where: find the first line it could mean.
fn locate_httparse_error(head: &[u8], error: httparse::Error, direction: Direction) -> (usize, Http1Problem) {
    let start = start_line_offset(head);
    let first_field_line = |bad: &dyn Fn(&[u8], &[u8]) -> bool| {
        field_lines(head)
            .find(|(_, line)| {
                let (name, value) = split_field(line);
                bad(name, value)
            })
            .map_or(start, |(at, _)| at)
    };
    match error {
        httparse::Error::Token if direction == Direction::ClientToServer => (start, Http1Problem::InvalidRequestLine),
        httparse::Error::Token | httparse::Error::Status => (start, Http1Problem::InvalidStatusLine),
        httparse::Error::Version => (start, Http1Problem::InvalidVersion),
        httparse::Error::TooManyHeaders => (
            start,
            Http1Problem::TooManyHeaders {
                limit: MAX_HEADER_LINES,
            },
        ),
        httparse::Error::HeaderName => (
            first_field_line(&|name, _| !name.iter().all(|&b| is_token_byte(b))),
            Http1Problem::InvalidHeaderName,
        ),
        httparse::Error::HeaderValue => (
            first_field_line(&|_, value| !value.iter().all(|&b| is_field_value_byte(b))),
            Http1Problem::InvalidHeaderValue,
        ),
        httparse::Error::NewLine => {
            // Lines come without their line ending: a CR left in one is bare.
            let at = head_lines(head)
                .find(|(_, line)| line.contains(&b'\r'))
                .map_or(start, |(at, _)| at);
            (at, Http1Problem::InvalidLineEnding)
        }
    }
}

/// Each line of a head with its offset, without its LF or CRLF.
fn head_lines(head: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut next_at = 0;
    head.split_inclusive(|&b| b == b'\n').map(move |raw| {
        let at = next_at;
        next_at += raw.len();
        let line = raw.strip_suffix(b"\n").unwrap_or(raw);
        (at, line.strip_suffix(b"\r").unwrap_or(line))
    })
}

/// The header lines: after the start line (and any blank lines before it), up to the
/// blank line that ends the head.
fn field_lines(head: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    head_lines(head)
        .skip_while(|(_, line)| line.is_empty())
        .skip(1)
        .take_while(|(_, line)| !line.is_empty())
}

fn start_line_offset(head: &[u8]) -> usize {
    head_lines(head)
        .find(|(_, line)| !line.is_empty())
        .map_or(0, |(at, _)| at)
}

fn split_field(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|&b| b == b':') {
        Some(colon) => (&line[..colon], &line[colon + 1..]),
        None => (line, &[]),
    }
}

/// Offset of an LF not preceded by CR.
fn find_bare_lf(head: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\n', head).find(|&i| i == 0 || head[i - 1] != b'\r')
}

/// RFC 9110 §5.6.2 tchar.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 9110 §5.5 field-vchar, SP and HTAB (obs-text included).
fn is_field_value_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

/// Where `part`, a slice httparse took out of `head`, starts in it.
fn offset_within(head: &[u8], part: &[u8]) -> usize {
    (part.as_ptr() as usize)
        .saturating_sub(head.as_ptr() as usize)
        .min(head.len())
}

fn header_value<'h>(headers: &'h [httparse::Header<'_>], name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

fn lossy(bytes: &[u8]) -> CompactString {
    CompactString::from_utf8_lossy(bytes)
}

/// Strips optional whitespace (SP, HTAB) at both ends.
fn trim_ows(bytes: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| matches!(b, b' ' | b'\t');
    let start = bytes.iter().position(|b| !is_ows(b)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !is_ows(b)).map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// Digits only (no sign, no space): what Content-Length allows.
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |value, &b| {
        let digit = b.checked_sub(b'0').filter(|&d| d <= 9)?;
        value.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

// ---------------------------------------------------------------------------------------
// Bodies

struct BodyRead {
    /// Bytes of the piece that belong to the body (framing included).
    consumed: usize,
    /// Body bytes among them, after de-chunking.
    data: u64,
    done: bool,
}

/// Stream offsets `start..end` of body data (de-chunked) within one piece.
type DataSpans = SmallVec<[(u64, u64); 2]>;

/// Reads one piece of body. `line` holds a chunk-size or trailer line spanning pieces;
/// `base` is the stream offset of `bytes[0]`. Errors carry their stream offset. With
/// `spans`, where the data bytes are is added to it.
fn read_body_bytes(
    body: &mut BodyFraming,
    line: &mut Vec<u8>,
    bytes: &[u8],
    base: u64,
    limit: usize,
    mut spans: Option<&mut DataSpans>,
) -> Result<BodyRead, (u64, Http1Problem)> {
    let read = match body {
        BodyFraming::UntilClose => BodyRead {
            consumed: bytes.len(),
            data: bytes.len() as u64,
            done: false,
        },
        BodyFraming::Length { remaining } => {
            let taken = usize::try_from(*remaining).unwrap_or(usize::MAX).min(bytes.len());
            *remaining -= taken as u64;
            BodyRead {
                consumed: taken,
                data: taken as u64,
                done: *remaining == 0,
            }
        }
        BodyFraming::Chunked(phase) => return read_chunked(phase, line, bytes, base, limit, spans),
    };
    if let Some(spans) = spans.as_mut().filter(|_| read.data > 0) {
        spans.push((base, base + read.data));
    }
    Ok(read)
}

fn read_chunked(
    phase: &mut ChunkedPhase,
    line: &mut Vec<u8>,
    bytes: &[u8],
    base: u64,
    limit: usize,
    mut spans: Option<&mut DataSpans>,
) -> Result<BodyRead, (u64, Http1Problem)> {
    let mut pos = 0;
    let mut data = 0u64;
    while pos < bytes.len() {
        match phase {
            ChunkedPhase::Data { remaining } => {
                let taken = usize::try_from(*remaining).unwrap_or(usize::MAX).min(bytes.len() - pos);
                *remaining -= taken as u64;
                data += taken as u64;
                if let Some(spans) = spans.as_mut().filter(|_| taken > 0) {
                    let start = base + pos as u64;
                    spans.push((start, start + taken as u64));
                }
                pos += taken;
                if *remaining == 0 {
                    *phase = ChunkedPhase::DataCr;
                }
            }
            ChunkedPhase::DataCr | ChunkedPhase::DataLf => {
                let expected = if *phase == ChunkedPhase::DataCr { b'\r' } else { b'\n' };
                if bytes[pos] != expected {
                    return Err((base + pos as u64, Http1Problem::ChunkDataNotFollowedByCrlf));
                }
                pos += 1;
                *phase = if *phase == ChunkedPhase::DataCr {
                    ChunkedPhase::DataLf
                } else {
                    ChunkedPhase::SizeLine
                };
            }
            ChunkedPhase::SizeLine | ChunkedPhase::Trailers { .. } => {
                let line_start = base + pos as u64 - line.len() as u64;
                let (line_limit, too_long) = match *phase {
                    ChunkedPhase::Trailers { bytes_so_far } => (
                        limit.saturating_sub(bytes_so_far),
                        Http1Problem::TrailersTooLarge { limit },
                    ),
                    _ => (limit, Http1Problem::ChunkLineTooLong { limit }),
                };
                let rest = &bytes[pos..];
                let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
                    // The line goes on past this piece, so it ends past the bound.
                    if line.len() + rest.len() >= line_limit {
                        return Err((line_start, too_long));
                    }
                    line.extend_from_slice(rest);
                    pos = bytes.len();
                    break;
                };
                if line.len() + lf + 1 > line_limit {
                    return Err((line_start, too_long));
                }
                line.extend_from_slice(&rest[..=lf]);
                pos += lf + 1;
                let outcome = end_of_chunked_line(phase, line);
                line.clear();
                match outcome {
                    Err(problem) => return Err((line_start, problem)),
                    Ok(true) => {
                        return Ok(BodyRead {
                            consumed: pos,
                            data,
                            done: true,
                        })
                    }
                    Ok(false) => {}
                }
            }
        }
    }
    Ok(BodyRead {
        consumed: pos,
        data,
        done: false,
    })
}

/// Acts on a whole chunk-size or trailer line (LF included); true when it ended the body.
fn end_of_chunked_line(phase: &mut ChunkedPhase, line: &[u8]) -> Result<bool, Http1Problem> {
    let Some(content) = line.strip_suffix(b"\r\n") else {
        return Err(Http1Problem::BareLineEndingInChunkedBody);
    };
    if content.contains(&b'\r') {
        return Err(Http1Problem::BareLineEndingInChunkedBody);
    }
    match *phase {
        ChunkedPhase::Trailers { bytes_so_far } => {
            if content.is_empty() {
                return Ok(true);
            }
            check_field_line(content)?;
            *phase = ChunkedPhase::Trailers {
                bytes_so_far: bytes_so_far + line.len(),
            };
            Ok(false)
        }
        _ => {
            // httparse reads an empty size (or one before ";ext") as 0, the last chunk.
            if !content.first().is_some_and(u8::is_ascii_hexdigit) {
                return Err(Http1Problem::BadChunkSize);
            }
            match httparse::parse_chunk_size(line) {
                Ok(httparse::Status::Complete((len, size))) if len == line.len() => {
                    *phase = if size == 0 {
                        ChunkedPhase::Trailers { bytes_so_far: 0 }
                    } else {
                        ChunkedPhase::Data { remaining: size }
                    };
                    Ok(false)
                }
                _ => Err(Http1Problem::BadChunkSize),
            }
        }
    }
}

#[cfg(test)]
mod tests;
