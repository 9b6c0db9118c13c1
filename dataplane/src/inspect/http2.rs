//! HTTP/2 (RFC 9113) over one decrypted connection (ALPN `h2`), relayed between the two
//! peers with inspection and blocking, sans-IO.
//!
//! [`Http2Connection`] sits between the client and the server. It takes the plaintext of
//! each direction in whatever pieces the records delivered (down to single bytes) and
//! returns, in an [`Http2Output`], the bytes to send each way and [`Http2Event`]s: request
//! heads, response heads, whole [`Transaction`]s, resets, GOAWAYs and why inspection
//! stopped. Every frame type is parsed; HEADERS, PUSH_PROMISE and CONTINUATION are
//! assembled into header blocks and decoded with one HPACK decoder per direction, whose
//! tables follow the SETTINGS_HEADER_TABLE_SIZE each side announces (in effect once the
//! other side acknowledges it). A request's header block is shown to a judge before any
//! byte of it goes to the server, so that the stream can be answered by loupe instead.
//!
//! # Relaying
//!
//! Bytes are relayed faithfully. Server→client frames go out as they arrive (a frame's
//! 9-byte header once it is whole and valid, its payload piece by piece). Client→server
//! DATA and control frames do the same; a client header block (HEADERS and its
//! CONTINUATIONs) is held until it is whole and judged, and a connection-level
//! WINDOW_UPDATE until it is whole (it may need rewriting, see below). Frames loupe
//! writes to the client itself (answers, window credit, GOAWAY) are injected only at a
//! frame boundary of the server→client stream that is not inside a HEADERS…CONTINUATION
//! sequence; until then they wait, in order.
//! [`Http2Connection::relay_server_bytes`] relays the server's bytes without copying them
//! when they all go to the client as they came, which is nearly always: the caller sends
//! its own buffer.
//!
//! # Blocking: lazy re-encoding
//!
//! When the judge answers a stream ([`StreamVerdict::Answer`]), its header block must never
//! reach the server. But HPACK state is shared by every block of a direction: dropping a
//! block that added entries to the client's dynamic table leaves the server's decoder
//! without them, and every later block that references them would decode wrong or fail.
//! loupe therefore becomes the HPACK encoder toward the server from the first answered
//! stream on, for the rest of the connection:
//!
//! - Until then, client header blocks go to the server verbatim (and are decoded, as
//!   always, by loupe's client→server decoder, which is then an exact copy of the
//!   server's).
//! - At the first answered stream, loupe takes the server's table as it stands: the
//!   decoder's entries minus those the dropped block added (counted through
//!   [`HpackDecoder::insertions`]); entries the dropped block evicted are simply not known,
//!   and not referenced. The server's table is frozen from there.
//! - Every later client header block is decoded as always (the client's encoder carries
//!   on with its own table) and re-encoded by loupe's [`HpackEncoder`], which never
//!   inserts: static-table fields are indexed, frozen dynamic entries are referenced,
//!   everything else is a literal without indexing, and "never indexed" fields stay never
//!   indexed. The first re-encoded block starts with a dynamic table size update to the
//!   server's acknowledged setting (capped by loupe's table limit), which meets any update
//!   the server awaits. Blocks are split into HEADERS+CONTINUATION by the server's
//!   SETTINGS_MAX_FRAME_SIZE, keep the PRIORITY fields and END_STREAM, and lose their
//!   padding.
//! - Everything else the client sends on an answered stream is dropped: the server never
//!   knew the stream, and RST_STREAM or WINDOW_UPDATE on an idle stream is a connection
//!   error there (gaps in stream ids are legal). loupe remembers the last `max_streams`
//!   answered streams for this; a frame for an older one is forwarded.
//! - The client gets HEADERS (`:status`, the answer's headers and a content-length,
//!   encoded as literals without indexing, so the client's HPACK table is untouched),
//!   then the body in DATA frames ending the stream, and RST_STREAM(NO_ERROR) when its
//!   request had not ended (RFC 9113 §8.1). The body is sent only if it fits the flow
//!   control windows the client granted (its SETTINGS_INITIAL_WINDOW_SIZE for the stream;
//!   for the connection, 65,535 plus its connection WINDOW_UPDATEs minus the DATA sent to
//!   it); otherwise the HEADERS end the stream, with a content-length of 0.
//! - Window accounting: injected DATA uses the client's connection window, which the
//!   client credits back with a connection WINDOW_UPDATE addressed to the server. loupe
//!   subtracts the injected bytes from the next such increments, rewriting them (and
//!   dropping one that falls to zero), so the server's view stays right. Until the client
//!   has credited them, the server believes the window is larger by that much; a server
//!   that fills the client's whole window in that moment would overrun it (clients grant
//!   windows far larger than a block page, so this stays theoretical). DATA the client
//!   sent on an answered stream used its own send window: loupe credits it back to the
//!   client with connection WINDOW_UPDATEs of its own.
//!
//! # Decisions where the RFC leaves room
//!
//! - A header block on a stream that is already closed (trailers racing the server's
//!   RST_STREAM, say) is relayed without judging: the server must decode it to keep its
//!   HPACK table in step, and ignores or resets the stream (RFC 9113 §5.1). A request on an
//!   even stream id is an error; so is PUSH_PROMISE from the client.
//! - Requests the server promises (PUSH_PROMISE) become transactions of their own, with a
//!   [`Http2Event::RequestHead`], but are not judged: nothing reaches the server from them.
//! - Frame sizes are checked against the largest SETTINGS_MAX_FRAME_SIZE the receiver
//!   announced; frames loupe writes to the client are at most 16,384 bytes, which every
//!   client takes.
//! - How a transaction ended shows in the events before its
//!   [`Http2Event::TransactionComplete`]: [`Http2Event::StreamReset`],
//!   [`Http2Event::Answered`], [`Http2Event::GoAway`] or [`Http2Event::ProtocolError`].
//!
//! # Errors
//!
//! A bad client preface, a malformed frame (sizes, CONTINUATION out of sequence, invalid
//! settings, padding), a header block that fails to decode, and loupe's own bounds being
//! hit end inspection of the connection with one [`Http2Event::ProtocolError`]. Before the
//! first answered stream, everything is then relayed verbatim from there, held bytes
//! included, with no more events (the caller decides whether to allow that). After it,
//! passthrough is impossible (the server's HPACK table follows loupe's encoder): loupe
//! sends the client a GOAWAY with the matching error code (when the server→client stream
//! is at a frame boundary) and sets [`Http2Output::close`]. Open transactions are reported
//! complete, as they stand, just before the error. Nothing panics, whatever the input.
//!
//! # Bounds
//!
//! At most `max_streams` streams are tracked (a new one beyond is refused: before
//! re-encoding as an error, after it with RST_STREAM(REFUSED_STREAM) to the client, which
//! may retry). A header block's frames may be at most `max_header_block` bytes in all.
//! DATA payloads, GOAWAY debug data and unknown frame types are never buffered; control
//! frames are held whole (SETTINGS up to `max_frame_buffer` bytes, the others have fixed
//! sizes). HPACK tables are bounded by [`HpackLimits`]. [`Http2Connection::memory_bytes`]
//! adds it all up.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use compact_str::CompactString;

use super::hpack::{FieldList, HeaderField, HpackDecoder, HpackEncoder, HpackError, HpackLimits};
use super::http1::Direction;
use super::transaction::{HttpVersion, Transaction};

#[cfg(test)]
mod tests;

/// What a client sends first (RFC 9113 §3.4), followed by a SETTINGS frame.
pub const CLIENT_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Default bound on streams tracked at once.
pub const DEFAULT_MAX_STREAMS: usize = 4096;
/// Default bound on one header block (HEADERS or PUSH_PROMISE and its CONTINUATIONs).
pub const DEFAULT_MAX_HEADER_BLOCK: usize = 100 * 1024;
/// Default bound on a SETTINGS payload held to parse it (2,730 settings).
pub const DEFAULT_MAX_FRAME_BUFFER: usize = 16 * 1024;

/// Frame types (RFC 9113 §6).
mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags (RFC 9113 §6).
mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// Settings identifiers (RFC 9113 §6.5.2).
mod setting {
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    pub const ENABLE_PUSH: u16 = 0x2;
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub const MAX_FRAME_SIZE: u16 = 0x5;
}

const FRAME_HEADER_LEN: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE before any SETTINGS, and its smallest legal value: frames loupe
/// writes to the client never exceed it.
const MIN_MAX_FRAME_SIZE: u32 = 16_384;
const MAX_MAX_FRAME_SIZE: u32 = (1 << 24) - 1;
const DEFAULT_WINDOW: i64 = 65_535;
const MAX_WINDOW: u32 = (1 << 31) - 1;
/// SETTINGS_HEADER_TABLE_SIZE before any SETTINGS.
const DEFAULT_HEADER_TABLE_SIZE: usize = 4096;
/// SETTINGS frames one side may have sent and the other not yet acknowledged.
const MAX_UNACKED_SETTINGS: usize = 64;
/// Bytes of frames loupe may queue for the client while the server→client stream is
/// inside a frame (answers to many blocked requests while the server stalls mid-frame).
pub const MAX_QUEUED_FOR_CLIENT: usize = 256 * 1024;
/// A buffer that grew past this is freed once used, so that a connection which once
/// carried a large header block does not keep the memory while idle.
const RETAINED_BUFFER_BYTES: usize = 16 * 1024;

/// The bounds one connection keeps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Limits {
    /// Streams tracked at once: requests seen whose transactions are not complete,
    /// server pushes included.
    pub max_streams: usize,
    /// Largest header block, counted as the bytes of its frames (HEADERS or PUSH_PROMISE
    /// and CONTINUATIONs, frame headers, padding and priority fields included), so that a
    /// flood of empty CONTINUATIONs is bounded too.
    pub max_header_block: usize,
    /// Each direction's HPACK decoder.
    pub hpack: HpackLimits,
    /// Largest SETTINGS payload held to parse it. DATA (up to 16 MiB a frame), GOAWAY
    /// debug data and unknown frame types are never buffered, and the other control
    /// frames have fixed sizes.
    pub max_frame_buffer: usize,
}

impl Default for Http2Limits {
    fn default() -> Self {
        Http2Limits {
            max_streams: DEFAULT_MAX_STREAMS,
            max_header_block: DEFAULT_MAX_HEADER_BLOCK,
            hpack: HpackLimits::default(),
            max_frame_buffer: DEFAULT_MAX_FRAME_BUFFER,
        }
    }
}

/// Asked about each request header block (its transaction and decoded fields) before any
/// byte of it reaches the server.
pub type Judge<'a> = dyn FnMut(&Transaction, &FieldList) -> StreamVerdict + 'a;

/// What to do with a request, asked once per request header block, before any byte of it
/// reaches the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamVerdict {
    Forward,
    /// loupe answers the request itself; the server never sees the stream.
    Answer(Answer),
    /// loupe resets the stream toward the client with this code (a signature's drop);
    /// the server never sees it, the connection's other streams go on.
    Reset(ErrorCode),
}

/// A response loupe sends instead of the server's, e.g. 403 and a block page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// A final status, three digits (200 to 599).
    pub status: u16,
    /// Header names are sent in lower case; pseudo-headers, content-length (loupe writes
    /// its own) and connection-specific headers (RFC 9113 §8.2.2) are left out.
    pub headers: Vec<(String, String)>,
    /// Not sent to a HEAD request, nor with 204 or 304.
    pub body: Vec<u8>,
}

/// What one call produced. Bytes are appended: the caller may keep queued bytes in the
/// vectors between calls.
#[derive(Debug, Default)]
pub struct Http2Output {
    pub to_server: Vec<u8>,
    pub to_client: Vec<u8>,
    pub events: Vec<Http2Event>,
    /// loupe ends the connection: send what is queued, then close both sides.
    pub close: bool,
}

/// Who sent a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Client,
    Server,
    /// loupe itself, e.g. refusing a stream beyond its bounds or going away after an error.
    Loupe,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Peer::Client => "client",
            Peer::Server => "server",
            Peer::Loupe => "loupe",
        })
    }
}

/// An HTTP/2 error code (RFC 9113 §7); unknown codes are kept as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    pub const NO_ERROR: ErrorCode = ErrorCode(0x0);
    pub const PROTOCOL_ERROR: ErrorCode = ErrorCode(0x1);
    pub const INTERNAL_ERROR: ErrorCode = ErrorCode(0x2);
    pub const FLOW_CONTROL_ERROR: ErrorCode = ErrorCode(0x3);
    pub const SETTINGS_TIMEOUT: ErrorCode = ErrorCode(0x4);
    pub const STREAM_CLOSED: ErrorCode = ErrorCode(0x5);
    pub const FRAME_SIZE_ERROR: ErrorCode = ErrorCode(0x6);
    pub const REFUSED_STREAM: ErrorCode = ErrorCode(0x7);
    pub const CANCEL: ErrorCode = ErrorCode(0x8);
    pub const COMPRESSION_ERROR: ErrorCode = ErrorCode(0x9);
    pub const CONNECT_ERROR: ErrorCode = ErrorCode(0xa);
    pub const ENHANCE_YOUR_CALM: ErrorCode = ErrorCode(0xb);
    pub const INADEQUATE_SECURITY: ErrorCode = ErrorCode(0xc);
    pub const HTTP_1_1_REQUIRED: ErrorCode = ErrorCode(0xd);

    /// The RFC's name, for the codes it defines.
    pub fn name(self) -> Option<&'static str> {
        const NAMES: [&str; 14] = [
            "NO_ERROR",
            "PROTOCOL_ERROR",
            "INTERNAL_ERROR",
            "FLOW_CONTROL_ERROR",
            "SETTINGS_TIMEOUT",
            "STREAM_CLOSED",
            "FRAME_SIZE_ERROR",
            "REFUSED_STREAM",
            "CANCEL",
            "COMPRESSION_ERROR",
            "CONNECT_ERROR",
            "ENHANCE_YOUR_CALM",
            "INADEQUATE_SECURITY",
            "HTTP_1_1_REQUIRED",
        ];
        NAMES.get(self.0 as usize).copied()
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "error code {:#x}", self.0),
        }
    }
}

/// A frame, by type and stream, as errors name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef {
    pub kind: u8,
    pub stream_id: u32,
}

impl fmt::Display for FrameRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [&str; 10] = [
            "DATA",
            "HEADERS",
            "PRIORITY",
            "RST_STREAM",
            "SETTINGS",
            "PUSH_PROMISE",
            "PING",
            "GOAWAY",
            "WINDOW_UPDATE",
            "CONTINUATION",
        ];
        match NAMES.get(usize::from(self.kind)) {
            Some(name) => f.write_str(name)?,
            None => write!(f, "frame type {:#x}", self.kind)?,
        }
        if self.stream_id != 0 {
            write!(f, " of stream {}", self.stream_id)?;
        }
        Ok(())
    }
}

/// Why inspection of the connection stopped, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http2Error {
    pub direction: Direction,
    /// Offset in that direction's stream (0 = its first byte, the client preface
    /// included) of the frame, or preface byte, that was wrong.
    pub offset: u64,
    /// The code a GOAWAY for this error carries.
    pub code: ErrorCode,
    /// `None` for the client preface.
    pub frame: Option<FrameRef>,
    pub problem: Http2Problem,
}

impl fmt::Display for Http2Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.frame {
            Some(frame) => write!(f, "http2 {} in {frame}: {}", self.code, self.problem)?,
            None => write!(f, "http2 {} in the client preface: {}", self.code, self.problem)?,
        }
        write!(f, " (at byte {} {})", self.offset, self.direction)
    }
}

impl std::error::Error for Http2Error {}

/// What was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Http2Problem {
    #[error("not the HTTP/2 client preface")]
    BadPreface,
    #[error("{length} bytes exceed the receiver's SETTINGS_MAX_FRAME_SIZE of {max}")]
    FrameTooLarge { length: usize, max: u32 },
    #[error("{length} bytes is not a valid length for this frame type")]
    BadFrameLength { length: usize },
    #[error("the first frame must be SETTINGS")]
    SettingsExpected,
    #[error("a CONTINUATION of stream {stream_id} must come next")]
    ContinuationExpected { stream_id: u32 },
    #[error("CONTINUATION that follows no unfinished HEADERS or PUSH_PROMISE")]
    UnexpectedContinuation,
    #[error("this frame type needs a stream, but names stream 0")]
    StreamZero,
    #[error("this frame type belongs to the connection (stream 0)")]
    StreamNotZero,
    #[error("{padding} bytes of padding do not fit the payload")]
    PaddingTooLong { padding: u8 },
    #[error("PUSH_PROMISE from the client")]
    PushFromClient,
    #[error("a request on an even stream id (server streams are even)")]
    EvenClientStream,
    #[error("promised stream {promised} is not a new even stream id")]
    BadPromisedStream { promised: u32 },
    #[error("setting {id:#x} has the invalid value {value}")]
    BadSetting { id: u16, value: u32 },
    #[error("more than {limit} SETTINGS frames await acknowledgement")]
    TooManyUnackedSettings { limit: usize },
    #[error("{length} bytes of SETTINGS exceed loupe's frame buffer of {limit}")]
    FrameBufferExceeded { length: usize, limit: usize },
    #[error("the header block exceeds loupe's limit of {limit} bytes")]
    HeaderBlockTooLarge { limit: usize },
    #[error("more than {limit} streams open at once (loupe's limit)")]
    TooManyStreams { limit: usize },
    #[error("more than {limit} bytes of answers wait for the server to finish a frame")]
    QueuedForClient { limit: usize },
    #[error("{0}")]
    Hpack(HpackError),
}

/// What the bytes just fed made happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Http2Event {
    /// A request's header block (the client's, judged before this event, or one the
    /// server promised with PUSH_PROMISE, not judged). The transaction comes whole with
    /// [`Http2Event::TransactionComplete`].
    RequestHead { stream_id: u32 },
    /// A response header block with a status: `interim` for 1xx.
    ResponseHead { stream_id: u32, status: u16, interim: bool },
    /// loupe answered the stream instead of the server (the transaction completes next).
    Answered { stream_id: u32, status: u16 },
    /// The stream is done: both ends finished, or it was reset (a [`Http2Event::StreamReset`]
    /// comes just before), answered (just after [`Http2Event::Answered`]), left unprocessed
    /// by the server's GOAWAY (after [`Http2Event::GoAway`]), or cut short by the end of
    /// the connection or of inspection (before [`Http2Event::ProtocolError`]). Once per
    /// stream; its state is freed.
    TransactionComplete { transaction: Box<Transaction> },
    /// RST_STREAM from a peer (or from loupe, refusing a stream beyond its bounds).
    StreamReset {
        stream_id: u32,
        by: Peer,
        error_code: ErrorCode,
    },
    /// GOAWAY from a peer, or from loupe after an error.
    GoAway {
        by: Peer,
        last_stream_id: u32,
        error_code: ErrorCode,
    },
    /// Inspection stopped: see the module documentation for what is relayed from here.
    ProtocolError(Http2Error),
    /// A response header block's fields (interim ones and trailers too), just before its
    /// `ResponseHead`. Only after [`Http2Connection::report_content`].
    ResponseFields { stream_id: u32, fields: FieldList },
    /// DATA bytes of a stream, forwarded in this call: `start..end` of the output vector
    /// of `direction` (`to_server` or `to_client`), padding left out. Only after
    /// [`Http2Connection::report_content`].
    Data {
        stream_id: u32,
        direction: Direction,
        start: usize,
        end: usize,
    },
}

/// The HTTP/2 relay of one connection: both directions, fed separately.
#[derive(Debug)]
pub struct Http2Connection {
    limits: Http2Limits,
    phase: Phase,
    /// Bytes of the client preface seen so far.
    preface_matched: usize,
    client: Side,
    server: Side,
    /// Decodes client→server header blocks; follows the client's encoder.
    client_decoder: HpackDecoder,
    /// Decodes server→client header blocks (PUSH_PROMISE included).
    server_decoder: HpackDecoder,
    /// loupe's encoder toward the server, from the first answered stream on.
    reencoder: Option<HpackEncoder>,
    streams: BTreeMap<u32, Stream>,
    /// Streams loupe answered (the most recent `max_streams`): the client's frames for
    /// them are dropped.
    answered: BTreeSet<u32>,
    /// The highest stream id the client opened (forwarded, answered or refused).
    last_client_stream: u32,
    last_promised_stream: u32,
    /// SETTINGS_HEADER_TABLE_SIZE changes (smallest, last) of each SETTINGS frame a side
    /// sent, in order, until the other side acknowledges it.
    client_settings_unacked: VecDeque<Option<(u32, u32)>>,
    server_settings_unacked: VecDeque<Option<(u32, u32)>>,
    /// The server's SETTINGS_HEADER_TABLE_SIZE the client acknowledged.
    server_table_setting: usize,
    /// The server's SETTINGS_MAX_FRAME_SIZE, as last announced: re-encoded header blocks
    /// are split by it.
    server_frame_size: u32,
    /// The client's SETTINGS_INITIAL_WINDOW_SIZE: an answered stream's send window.
    client_initial_window: i64,
    /// What the client's connection receive window still accepts.
    client_connection_window: i64,
    /// DATA bytes loupe injected that the client's connection WINDOW_UPDATEs have not
    /// credited back yet: subtracted from them before they reach the server.
    injected_uncredited: u64,
    /// DATA bytes the client sent on answered streams, to credit back to it.
    dropped_client_data: u64,
    /// Frames loupe writes to the client, waiting for a server→client frame boundary.
    to_client: Vec<u8>,
    /// Scratch for re-encoded header blocks.
    scratch: Vec<u8>,
    client_done: bool,
    server_done: bool,
    /// The server closed inside a frame: nothing may be sent to the client after it.
    server_cut: bool,
    /// Response fields and DATA are reported as events (signatures read them).
    report_content: bool,
    /// Set while [`Http2Connection::relay_server_bytes`] runs: see there.
    deferral: Option<Deferral>,
}

/// The server bytes of one [`Http2Connection::relay_server_bytes`] call that went to the
/// client as they came, not copied: always a prefix of the call's input.
#[derive(Debug, Clone, Copy)]
struct Deferral {
    /// The input's first byte, as an offset in the server's stream.
    input_start: u64,
    /// How many of the input's first bytes are forwarded and not copied.
    deferred: usize,
}

/// What [`Http2Connection::relay_server_bytes`] did with its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerRelay {
    /// Every byte goes to the client unchanged and in order, and nothing else was queued
    /// for it: the caller sends the input itself; `to_client` is untouched.
    AsIs,
    /// What goes to the client (the input's bytes among it) is in `to_client`.
    Queued,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Inspecting,
    /// After an error before any re-encoding: everything relayed as is, no events.
    Passthrough,
    /// After an error once re-encoding started: loupe closes the connection.
    Closed,
}

/// One direction's parsing position.
#[derive(Debug)]
struct Side {
    direction: Direction,
    /// Bytes of this direction consumed so far.
    offset: u64,
    /// The frame header being read: bytes not yet relayed.
    head: [u8; FRAME_HEADER_LEN],
    head_len: usize,
    /// The frame whose payload is being read.
    frame: Option<InFrame>,
    /// A header block whose END_HEADERS has not come.
    sequence: Option<HeaderSequence>,
    /// The header block fragments of `sequence` so far.
    block: Vec<u8>,
    /// Bytes of the frames of `sequence` so far, frame headers included.
    sequence_bytes: usize,
    /// The start of the current frame's payload, for parsing it at its end.
    payload: Vec<u8>,
    /// Client→server only: received bytes not relayed yet (a header block's frames until
    /// judged, a connection WINDOW_UPDATE until rewritten).
    held: Vec<u8>,
    /// The first frame (SETTINGS) was seen.
    settings_seen: bool,
    /// The largest SETTINGS_MAX_FRAME_SIZE the receiver of this direction announced.
    receiver_max_frame_size: u32,
}

#[derive(Debug, Clone, Copy)]
struct FrameHeader {
    length: usize,
    kind: u8,
    flags: u8,
    stream_id: u32,
}

impl FrameHeader {
    fn parse(bytes: &[u8; FRAME_HEADER_LEN]) -> Self {
        FrameHeader {
            length: usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]),
            kind: bytes[3],
            flags: bytes[4],
            // The reserved bit is ignored (RFC 9113 §4.1).
            stream_id: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & MAX_WINDOW,
        }
    }

    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    fn reference(&self) -> FrameRef {
        FrameRef {
            kind: self.kind,
            stream_id: self.stream_id,
        }
    }
}

/// Where a frame's bytes go as they arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    Forward,
    Hold,
    Drop,
}

#[derive(Debug, Clone, Copy)]
struct InFrame {
    header: FrameHeader,
    /// Offset of the frame's first byte in its direction.
    offset: u64,
    remaining: usize,
    sink: Sink,
    /// How many payload bytes to copy into `Side::payload` for parsing.
    keep: usize,
}

#[derive(Debug, Clone, Copy)]
struct HeaderSequence {
    /// HEADERS or PUSH_PROMISE.
    kind: u8,
    stream_id: u32,
    /// Offset of the first frame.
    offset: u64,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    promised_stream: u32,
}

impl HeaderSequence {
    fn reference(&self) -> FrameRef {
        FrameRef {
            kind: self.kind,
            stream_id: self.stream_id,
        }
    }
}

#[derive(Debug)]
struct Stream {
    /// Boxed from the start: it leaves as the completion event's box without a copy, and
    /// the stream map's nodes stay small.
    transaction: Box<Transaction>,
    request_ended: bool,
    response_ended: bool,
}

/// A frame's problem: the code for GOAWAY and what was wrong.
type Fault = (ErrorCode, Http2Problem);

impl Http2Connection {
    pub fn new(limits: Http2Limits) -> Self {
        Http2Connection {
            limits,
            phase: Phase::Inspecting,
            preface_matched: 0,
            client: Side::new(Direction::ClientToServer),
            server: Side::new(Direction::ServerToClient),
            client_decoder: HpackDecoder::new(limits.hpack),
            server_decoder: HpackDecoder::new(limits.hpack),
            reencoder: None,
            streams: BTreeMap::new(),
            answered: BTreeSet::new(),
            last_client_stream: 0,
            last_promised_stream: 0,
            client_settings_unacked: VecDeque::new(),
            server_settings_unacked: VecDeque::new(),
            server_table_setting: DEFAULT_HEADER_TABLE_SIZE,
            server_frame_size: MIN_MAX_FRAME_SIZE,
            client_initial_window: DEFAULT_WINDOW,
            client_connection_window: DEFAULT_WINDOW,
            injected_uncredited: 0,
            dropped_client_data: 0,
            to_client: Vec::new(),
            scratch: Vec::new(),
            client_done: false,
            server_done: false,
            server_cut: false,
            report_content: false,
            deferral: None,
        }
    }

    /// From here, response header blocks come whole as [`Http2Event::ResponseFields`]
    /// and DATA as [`Http2Event::Data`] spans: what content signatures read.
    pub fn report_content(&mut self) {
        self.report_content = true;
    }

    /// Client→server plaintext, in stream order. `judge` is asked about each request's
    /// header block before any of it goes to the server.
    pub fn client_bytes(&mut self, bytes: &[u8], judge: &mut Judge<'_>, out: &mut Http2Output) {
        let mut rest = bytes;
        while !rest.is_empty() {
            match self.phase {
                Phase::Passthrough => {
                    out.to_server.extend_from_slice(rest);
                    return;
                }
                Phase::Closed => return,
                Phase::Inspecting if self.client_done => return,
                Phase::Inspecting => {}
            }
            let used = if self.preface_matched < CLIENT_PREFACE.len() {
                self.client_preface(rest, out)
            } else {
                self.client_step(rest, judge, out)
            };
            rest = &rest[used..];
        }
        self.flush_to_client(out);
    }

    /// As [`Http2Connection::server_bytes`], without copying the input when all of it goes
    /// to the client unchanged (the common case: whole frames relayed as the server sent
    /// them), which [`ServerRelay::AsIs`] says. `out.to_client` must be empty.
    ///
    /// Frame headers and payloads the server side forwards are counted, not copied, as
    /// long as they continue the input's forwarded prefix and nothing else was queued for
    /// the client; once anything is, the rest is copied as usual and the prefix is put in
    /// front of it at the end, which keeps the order: everything queued otherwise comes
    /// after the bytes that preceded it in the input.
    pub fn relay_server_bytes(&mut self, bytes: &[u8], out: &mut Http2Output) -> ServerRelay {
        if !out.to_client.is_empty() || self.report_content {
            // Offsets of DATA events point into `to_client`: everything is copied.
            self.server_bytes(bytes, out);
            return ServerRelay::Queued;
        }
        self.deferral = Some(Deferral {
            input_start: self.server.offset,
            deferred: 0,
        });
        self.server_bytes(bytes, out);
        let deferred = self.deferral.take().map_or(0, |deferral| deferral.deferred);
        if deferred == bytes.len() && out.to_client.is_empty() {
            return ServerRelay::AsIs;
        }
        out.to_client.splice(0..0, bytes[..deferred].iter().copied());
        ServerRelay::Queued
    }

    /// Sends server bytes that start at `offset` in its stream on to the client: deferred
    /// (see [`Http2Connection::relay_server_bytes`]) when they may be, copied otherwise.
    fn forward_to_client(deferral: &mut Option<Deferral>, offset: u64, chunk: &[u8], to_client: &mut Vec<u8>) {
        if let Some(deferral) = deferral {
            let continues_prefix = offset.checked_sub(deferral.input_start) == Some(deferral.deferred as u64);
            if continues_prefix && to_client.is_empty() {
                deferral.deferred += chunk.len();
                return;
            }
        }
        to_client.extend_from_slice(chunk);
    }

    /// Server→client plaintext, in stream order.
    pub fn server_bytes(&mut self, bytes: &[u8], out: &mut Http2Output) {
        let mut rest = bytes;
        while !rest.is_empty() {
            match self.phase {
                Phase::Passthrough => {
                    out.to_client.extend_from_slice(rest);
                    return;
                }
                Phase::Closed => return,
                Phase::Inspecting if self.server_done => return,
                Phase::Inspecting => {}
            }
            let used = self.server_step(rest, out);
            rest = &rest[used..];
        }
        self.flush_to_client(out);
    }

    /// The client sent its last byte. Its unfinished frame, if any, is relayed as far as
    /// it came (before re-encoding) and open transactions complete as they stand.
    pub fn client_closed(&mut self, out: &mut Http2Output) {
        if self.client_done {
            return;
        }
        self.client_done = true;
        if self.phase != Phase::Inspecting {
            return;
        }
        if self.reencoder.is_none() {
            out.to_server.extend_from_slice(&self.client.held);
            out.to_server
                .extend_from_slice(&self.client.head[..self.client.head_len]);
        }
        self.client.reset();
        self.finish_streams(out);
        self.flush_to_client(out);
    }

    /// The server sent its last byte: open transactions complete as they stand.
    pub fn server_closed(&mut self, out: &mut Http2Output) {
        if self.server_done {
            return;
        }
        self.server_done = true;
        if self.phase != Phase::Inspecting {
            return;
        }
        out.to_client
            .extend_from_slice(&self.server.head[..self.server.head_len]);
        // Nothing more comes from the server: what loupe has for the client can go, unless
        // the server stopped inside a frame, which nothing can follow.
        self.server_cut = self.server.frame.is_some();
        self.server.reset();
        self.finish_streams(out);
        self.flush_to_client(out);
    }

    /// Streams tracked now (requests whose transactions are not complete).
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// Approximate bytes held for the connection: buffers, streams, and both HPACK tables
    /// (and loupe's encoder's, once re-encoding).
    pub fn memory_bytes(&self) -> usize {
        let streams: usize = self
            .streams
            .values()
            .map(|stream| {
                std::mem::size_of::<Stream>()
                    + 32
                    + std::mem::size_of::<Transaction>()
                    + stream.transaction.heap_bytes()
            })
            .sum();
        std::mem::size_of::<Self>()
            + self.client.memory_bytes()
            + self.server.memory_bytes()
            + self.client_decoder.table_size()
            + self.server_decoder.table_size()
            + self.reencoder.as_ref().map_or(0, HpackEncoder::table_size)
            + streams
            + self.answered.len() * 16
            + (self.client_settings_unacked.capacity() + self.server_settings_unacked.capacity()) * 12
            + self.to_client.capacity()
            + self.scratch.capacity()
    }

    // ---- client → server -------------------------------------------------------------

    fn client_preface(&mut self, bytes: &[u8], out: &mut Http2Output) -> usize {
        let expected = &CLIENT_PREFACE[self.preface_matched..];
        let length = expected.len().min(bytes.len());
        let matching = bytes[..length]
            .iter()
            .zip(expected)
            .take_while(|(byte, expected)| byte == expected)
            .count();
        out.to_server.extend_from_slice(&bytes[..matching]);
        self.preface_matched += matching;
        self.client.offset += matching as u64;
        if matching < length {
            let at = self.client.offset;
            let fault = (ErrorCode::PROTOCOL_ERROR, Http2Problem::BadPreface);
            self.fail(Direction::ClientToServer, at, None, fault, out);
        }
        matching
    }

    fn client_step(&mut self, bytes: &[u8], judge: &mut Judge<'_>, out: &mut Http2Output) -> usize {
        if self.client.frame.is_none() {
            let used = self.client.fill_head(bytes);
            if self.client.head_len == FRAME_HEADER_LEN {
                self.client_frame_start(out);
                if self.client.frame.is_some_and(|frame| frame.remaining == 0) {
                    self.client_frame_end(judge, out);
                }
            }
            return used;
        }
        let before = out.to_server.len();
        let (used, forwarded) = self.client.take_payload(bytes);
        if let Some(chunk) = forwarded {
            out.to_server.extend_from_slice(chunk);
        }
        if self.report_content {
            report_data(&self.client, Direction::ClientToServer, before, used, out);
        }
        if self.client.frame.is_some_and(|frame| frame.remaining == 0) {
            self.client_frame_end(judge, out);
        }
        used
    }

    fn client_frame_start(&mut self, out: &mut Http2Output) {
        let header = FrameHeader::parse(&self.client.head);
        let offset = self.client.offset - FRAME_HEADER_LEN as u64;
        if let Err(fault) = self.check_frame(Direction::ClientToServer, &header) {
            return self.fail(Direction::ClientToServer, offset, Some(header.reference()), fault, out);
        }
        self.client.settings_seen = true;
        let answered = header.stream_id != 0 && self.answered.contains(&header.stream_id);
        let drop_if_answered = if answered { Sink::Drop } else { Sink::Forward };
        let (sink, keep) = match header.kind {
            kind::HEADERS | kind::CONTINUATION => {
                // Held until judged; after re-encoding started, never relayed as is.
                let sink = if self.reencoder.is_some() {
                    Sink::Drop
                } else {
                    Sink::Hold
                };
                (sink, header.length)
            }
            kind::DATA => {
                if answered {
                    self.dropped_client_data += header.length as u64;
                }
                (drop_if_answered, usize::from(header.has(flag::PADDED)))
            }
            kind::WINDOW_UPDATE if header.stream_id == 0 => (Sink::Hold, 4),
            other => (drop_if_answered, payload_to_parse(other, header.length)),
        };
        let head = &self.client.head;
        match sink {
            Sink::Forward => out.to_server.extend_from_slice(head),
            Sink::Hold => self.client.held.extend_from_slice(head),
            Sink::Drop => {}
        }
        self.client.start_frame(header, offset, sink, keep);
    }

    fn client_frame_end(&mut self, judge: &mut Judge<'_>, out: &mut Http2Output) {
        let Some(frame) = self.client.frame.take() else {
            return;
        };
        let payload = std::mem::take(&mut self.client.payload);
        let header = frame.header;
        let id = header.stream_id;
        let direction = Direction::ClientToServer;
        match header.kind {
            kind::DATA => match data_length(&header, &payload) {
                Err(fault) => self.fail(direction, frame.offset, Some(header.reference()), fault, out),
                Ok(length) if frame.sink == Sink::Forward => {
                    if let Some(stream) = self.streams.get_mut(&id) {
                        stream.transaction.request_body_len += length as u64;
                    }
                    if header.has(flag::END_STREAM) {
                        self.request_ended(id, out);
                    }
                }
                Ok(_) => {}
            },
            kind::HEADERS | kind::CONTINUATION => {
                if let Some(sequence) = self.header_frame_end(direction, &frame, &payload, out) {
                    self.client_block(sequence, judge, out);
                }
            }
            kind::RST_STREAM if frame.sink == Sink::Forward => {
                let error_code = ErrorCode(read_u32(&payload, 0));
                self.stream_reset(id, Peer::Client, error_code, out);
            }
            kind::SETTINGS => self.settings_end(direction, &frame, &payload, out),
            kind::GOAWAY => out.events.push(Http2Event::GoAway {
                by: Peer::Client,
                last_stream_id: read_u32(&payload, 0) & MAX_WINDOW,
                error_code: ErrorCode(read_u32(&payload, 4)),
            }),
            kind::WINDOW_UPDATE if id == 0 => {
                let increment = read_u32(&payload, 0) & MAX_WINDOW;
                self.client_connection_window += i64::from(increment);
                self.client_window_update(increment, out);
            }
            _ => {}
        }
        self.client.recycle_payload(payload);
    }

    /// Relays the client's connection WINDOW_UPDATE (held), less the injected DATA bytes
    /// it credits, which the server never sent.
    fn client_window_update(&mut self, increment: u32, out: &mut Http2Output) {
        if self.injected_uncredited == 0 || increment == 0 {
            out.to_server.extend_from_slice(&self.client.held);
        } else {
            let absorbed = self.injected_uncredited.min(u64::from(increment));
            self.injected_uncredited -= absorbed;
            let left = u64::from(increment) - absorbed;
            if left > 0 {
                write_window_update(&mut out.to_server, 0, left as u32);
            }
        }
        self.client.held.clear();
    }

    /// A whole client header block.
    fn client_block(&mut self, sequence: HeaderSequence, judge: &mut Judge<'_>, out: &mut Http2Output) {
        let block = std::mem::take(&mut self.client.block);
        let insertions_before = self.client_decoder.insertions();
        let mut fields = take_spare_fields();
        let decoded = self.client_decoder.decode_into(&block, &mut fields);
        self.client.recycle_block(block);
        match decoded {
            Ok(()) => self.client_fields(sequence, &fields, insertions_before, judge, out),
            Err(error) => {
                let fault = (ErrorCode::COMPRESSION_ERROR, Http2Problem::Hpack(error));
                let direction = Direction::ClientToServer;
                self.fail(direction, sequence.offset, Some(sequence.reference()), fault, out);
            }
        }
        give_back_spare_fields(fields);
    }

    /// A client header block's decoded fields: a request judged and relayed (or
    /// answered), trailers, or a block on a stream already closed.
    fn client_fields(
        &mut self,
        sequence: HeaderSequence,
        fields: &FieldList,
        insertions_before: u64,
        judge: &mut Judge<'_>,
        out: &mut Http2Output,
    ) {
        let id = sequence.stream_id;
        if self.streams.contains_key(&id) {
            // Trailers (or a second block on an open stream: the server judges that).
            self.relay_client_block(&sequence, fields, out);
            if sequence.end_stream {
                self.request_ended(id, out);
            }
            return;
        }
        if self.answered.contains(&id) {
            self.client.held.clear();
            return;
        }
        if id <= self.last_client_stream {
            // A closed stream: the server ignores it or resets it; its block still counts
            // for HPACK.
            return self.relay_client_block(&sequence, fields, out);
        }
        if id.is_multiple_of(2) {
            let fault = (ErrorCode::PROTOCOL_ERROR, Http2Problem::EvenClientStream);
            let direction = Direction::ClientToServer;
            return self.fail(direction, sequence.offset, Some(sequence.reference()), fault, out);
        }
        if self.streams.len() >= self.limits.max_streams {
            return self.refuse_stream(&sequence, out);
        }
        self.last_client_stream = id;
        let transaction = request_transaction(id, fields);
        out.events.push(Http2Event::RequestHead { stream_id: id });
        match judge(&transaction, fields) {
            StreamVerdict::Forward => {
                self.streams.insert(
                    id,
                    Stream {
                        transaction,
                        request_ended: sequence.end_stream,
                        response_ended: false,
                    },
                );
                self.relay_client_block(&sequence, fields, out);
            }
            StreamVerdict::Answer(answer) => {
                if self.reencoder.is_none() {
                    self.start_reencoding(insertions_before);
                }
                self.client.held.clear();
                self.answer(id, transaction, &answer, sequence.end_stream, out);
                self.check_queue(&sequence, out);
            }
            StreamVerdict::Reset(error_code) => {
                // As with an answer, the server must never see the block: loupe encodes
                // the client's blocks toward it from here.
                if self.reencoder.is_none() {
                    self.start_reencoding(insertions_before);
                }
                self.client.held.clear();
                write_frame(
                    &mut self.to_client,
                    kind::RST_STREAM,
                    0,
                    id,
                    &error_code.0.to_be_bytes(),
                );
                self.remember_answered(id);
                out.events.push(Http2Event::StreamReset {
                    stream_id: id,
                    by: Peer::Loupe,
                    error_code,
                });
                out.events.push(Http2Event::TransactionComplete { transaction });
                self.check_queue(&sequence, out);
            }
        }
    }

    /// Frames for the client wait only while the server is inside a frame; memory stays
    /// bounded if it stalls there while the client keeps getting answers.
    fn check_queue(&mut self, sequence: &HeaderSequence, out: &mut Http2Output) {
        self.flush_to_client(out);
        if self.to_client.len() > MAX_QUEUED_FOR_CLIENT {
            let fault = (
                ErrorCode::ENHANCE_YOUR_CALM,
                Http2Problem::QueuedForClient {
                    limit: MAX_QUEUED_FOR_CLIENT,
                },
            );
            let direction = Direction::ClientToServer;
            self.fail(direction, sequence.offset, Some(sequence.reference()), fault, out);
        }
    }

    /// A new stream beyond `max_streams`.
    fn refuse_stream(&mut self, sequence: &HeaderSequence, out: &mut Http2Output) {
        let id = sequence.stream_id;
        let limit = self.limits.max_streams;
        if self.reencoder.is_none() {
            let fault = (ErrorCode::REFUSED_STREAM, Http2Problem::TooManyStreams { limit });
            let direction = Direction::ClientToServer;
            return self.fail(direction, sequence.offset, Some(sequence.reference()), fault, out);
        }
        // The server has not seen it and never will: the client may retry it.
        self.last_client_stream = id;
        self.client.held.clear();
        self.remember_answered(id);
        write_frame(
            &mut self.to_client,
            kind::RST_STREAM,
            0,
            id,
            &ErrorCode::REFUSED_STREAM.0.to_be_bytes(),
        );
        out.events.push(Http2Event::StreamReset {
            stream_id: id,
            by: Peer::Loupe,
            error_code: ErrorCode::REFUSED_STREAM,
        });
        self.check_queue(sequence, out);
    }

    /// Sends a client header block on: as it came, or re-encoded by loupe.
    fn relay_client_block(&mut self, sequence: &HeaderSequence, fields: &FieldList, out: &mut Http2Output) {
        match &mut self.reencoder {
            None => out.to_server.extend_from_slice(&self.client.held),
            Some(encoder) => {
                self.scratch.clear();
                encoder.encode_list(fields, &mut self.scratch);
                write_header_block(
                    &mut out.to_server,
                    sequence.stream_id,
                    sequence.end_stream,
                    sequence.priority,
                    &self.scratch,
                    self.server_frame_size,
                );
                if self.scratch.capacity() > RETAINED_BUFFER_BYTES {
                    self.scratch = Vec::new();
                }
            }
        }
        self.client.held.clear();
    }

    /// loupe becomes the encoder toward the server. The block just decoded (the answered
    /// one) added `insertions() - insertions_before` entries the server never sees: the
    /// server's table is the decoder's without them.
    fn start_reencoding(&mut self, insertions_before: u64) {
        let added = self.client_decoder.insertions().saturating_sub(insertions_before);
        let skip = usize::try_from(added).unwrap_or(usize::MAX);
        let capacity = self
            .server_table_setting
            .min(self.limits.hpack.max_table_size.max(DEFAULT_HEADER_TABLE_SIZE));
        let encoder = HpackEncoder::resume(self.client_decoder.dynamic_entries().skip(skip), capacity);
        self.reencoder = Some(encoder);
    }

    /// Answers stream `id` instead of the server.
    fn answer(
        &mut self,
        id: u32,
        mut transaction: Box<Transaction>,
        answer: &Answer,
        request_ended: bool,
        out: &mut Http2Output,
    ) {
        let status = answer.status;
        let may_have_body =
            transaction.method != "HEAD" && status != 204 && status != 304 && !(100..200).contains(&status);
        let window = self.client_connection_window.min(self.client_initial_window);
        let body: &[u8] = if may_have_body && i64::try_from(answer.body.len()).is_ok_and(|length| length <= window) {
            &answer.body
        } else {
            &[]
        };
        let mut fields = vec![plain_field(b":status", status.to_string().as_bytes())];
        for (name, value) in &answer.headers {
            let name = name.to_ascii_lowercase();
            if name.starts_with(':') || is_connection_specific(&name) || name == "content-length" {
                continue;
            }
            if name == "content-type" {
                transaction.response_content_type = Some(value.as_str().into());
            }
            fields.push(plain_field(name.as_bytes(), value.as_bytes()));
        }
        if may_have_body || transaction.method == "HEAD" {
            let length = if transaction.method == "HEAD" {
                answer.body.len()
            } else {
                body.len()
            };
            fields.push(plain_field(b"content-length", length.to_string().as_bytes()));
        }
        // A fresh encoder references the static table only and never inserts: the
        // client's table stays as the server's encoder left it.
        let mut block = Vec::new();
        HpackEncoder::new().encode(&fields, &mut block);
        write_header_block(
            &mut self.to_client,
            id,
            body.is_empty(),
            None,
            &block,
            MIN_MAX_FRAME_SIZE,
        );
        let mut chunks = body.chunks(MIN_MAX_FRAME_SIZE as usize).peekable();
        while let Some(chunk) = chunks.next() {
            let flags = if chunks.peek().is_none() { flag::END_STREAM } else { 0 };
            write_frame(&mut self.to_client, kind::DATA, flags, id, chunk);
        }
        if !request_ended {
            write_frame(
                &mut self.to_client,
                kind::RST_STREAM,
                0,
                id,
                &ErrorCode::NO_ERROR.0.to_be_bytes(),
            );
        }
        self.client_connection_window -= body.len() as i64;
        self.injected_uncredited += body.len() as u64;
        self.remember_answered(id);
        transaction.status = Some(status);
        transaction.response_body_len = body.len() as u64;
        out.events.push(Http2Event::Answered { stream_id: id, status });
        out.events.push(Http2Event::TransactionComplete { transaction });
    }

    fn remember_answered(&mut self, id: u32) {
        self.answered.insert(id);
        while self.answered.len() > self.limits.max_streams.max(1) {
            self.answered.pop_first();
        }
    }

    // ---- server → client -------------------------------------------------------------

    fn server_step(&mut self, bytes: &[u8], out: &mut Http2Output) -> usize {
        if self.server.frame.is_none() {
            let used = self.server.fill_head(bytes);
            if self.server.head_len == FRAME_HEADER_LEN {
                self.server_frame_start(out);
                if self.server.frame.is_some_and(|frame| frame.remaining == 0) {
                    self.server_frame_end(out);
                }
            }
            return used;
        }
        let before = out.to_client.len();
        let offset = self.server.offset;
        let (used, forwarded) = self.server.take_payload(bytes);
        if let Some(chunk) = forwarded {
            Self::forward_to_client(&mut self.deferral, offset, chunk, &mut out.to_client);
        }
        if self.report_content {
            report_data(&self.server, Direction::ServerToClient, before, used, out);
        }
        if self.server.frame.is_some_and(|frame| frame.remaining == 0) {
            self.server_frame_end(out);
        }
        used
    }

    fn server_frame_start(&mut self, out: &mut Http2Output) {
        let header = FrameHeader::parse(&self.server.head);
        let offset = self.server.offset - FRAME_HEADER_LEN as u64;
        if let Err(fault) = self.check_frame(Direction::ServerToClient, &header) {
            return self.fail(Direction::ServerToClient, offset, Some(header.reference()), fault, out);
        }
        // Anything waiting goes before the frame (normally sent already), unless this is
        // the server's preface SETTINGS, which must come first.
        self.flush_to_client(out);
        self.server.settings_seen = true;
        let keep = match header.kind {
            kind::DATA => {
                self.client_connection_window -= header.length as i64;
                usize::from(header.has(flag::PADDED))
            }
            kind::HEADERS | kind::CONTINUATION => header.length,
            other => payload_to_parse(other, header.length),
        };
        Self::forward_to_client(&mut self.deferral, offset, &self.server.head, &mut out.to_client);
        self.server.start_frame(header, offset, Sink::Forward, keep);
    }

    fn server_frame_end(&mut self, out: &mut Http2Output) {
        let Some(frame) = self.server.frame.take() else {
            return;
        };
        let payload = std::mem::take(&mut self.server.payload);
        let header = frame.header;
        let id = header.stream_id;
        let direction = Direction::ServerToClient;
        match header.kind {
            kind::DATA => match data_length(&header, &payload) {
                Err(fault) => self.fail(direction, frame.offset, Some(header.reference()), fault, out),
                Ok(length) => {
                    if let Some(stream) = self.streams.get_mut(&id) {
                        stream.transaction.response_body_len += length as u64;
                    }
                    if header.has(flag::END_STREAM) {
                        self.response_ended(id, out);
                    }
                }
            },
            kind::HEADERS | kind::PUSH_PROMISE | kind::CONTINUATION => {
                if let Some(sequence) = self.header_frame_end(direction, &frame, &payload, out) {
                    self.server_block(sequence, out);
                }
            }
            kind::RST_STREAM => {
                let error_code = ErrorCode(read_u32(&payload, 0));
                self.stream_reset(id, Peer::Server, error_code, out);
            }
            kind::SETTINGS => self.settings_end(direction, &frame, &payload, out),
            kind::GOAWAY => {
                let last_stream_id = read_u32(&payload, 0) & MAX_WINDOW;
                out.events.push(Http2Event::GoAway {
                    by: Peer::Server,
                    last_stream_id,
                    error_code: ErrorCode(read_u32(&payload, 4)),
                });
                // Client streams above it were not processed and will not be.
                let unprocessed: Vec<u32> = self
                    .streams
                    .range(last_stream_id.saturating_add(1)..)
                    .map(|(&id, _)| id)
                    .filter(|id| !id.is_multiple_of(2))
                    .collect();
                for id in unprocessed {
                    self.complete(id, out);
                }
            }
            _ => {}
        }
        self.server.recycle_payload(payload);
        self.flush_to_client(out);
    }

    /// A whole server header block: a response head, trailers, or a promised request.
    fn server_block(&mut self, sequence: HeaderSequence, out: &mut Http2Output) {
        let block = std::mem::take(&mut self.server.block);
        let mut fields = take_spare_fields();
        // A response head or trailers: only `:status` and `content-type` are read (see
        // `server_fields`), and the block goes to the client as sent. A promised request
        // is read whole.
        let decoded = if sequence.kind == kind::PUSH_PROMISE || self.report_content {
            self.server_decoder.decode_into(&block, &mut fields)
        } else {
            let read = |name: &[u8]| name == b":status" || name == b"content-type";
            self.server_decoder.decode_into_keeping(&block, &mut fields, read)
        };
        self.server.recycle_block(block);
        match decoded {
            Ok(()) => self.server_fields(sequence, &fields, out),
            Err(error) => {
                let fault = (ErrorCode::COMPRESSION_ERROR, Http2Problem::Hpack(error));
                let direction = Direction::ServerToClient;
                self.fail(direction, sequence.offset, Some(sequence.reference()), fault, out);
            }
        }
        give_back_spare_fields(fields);
    }

    /// A server header block's decoded fields: a promised request, a response head or
    /// trailers.
    fn server_fields(&mut self, sequence: HeaderSequence, fields: &FieldList, out: &mut Http2Output) {
        let direction = Direction::ServerToClient;
        if sequence.kind == kind::PUSH_PROMISE {
            let promised = sequence.promised_stream;
            if promised == 0 || !promised.is_multiple_of(2) || promised <= self.last_promised_stream {
                let fault = (ErrorCode::PROTOCOL_ERROR, Http2Problem::BadPromisedStream { promised });
                return self.fail(direction, sequence.offset, Some(sequence.reference()), fault, out);
            }
            self.last_promised_stream = promised;
            if self.streams.len() >= self.limits.max_streams {
                let limit = self.limits.max_streams;
                let fault = (ErrorCode::REFUSED_STREAM, Http2Problem::TooManyStreams { limit });
                return self.fail(direction, sequence.offset, Some(sequence.reference()), fault, out);
            }
            let transaction = request_transaction(promised, fields);
            out.events.push(Http2Event::RequestHead { stream_id: promised });
            self.streams.insert(
                promised,
                Stream {
                    transaction,
                    request_ended: true,
                    response_ended: false,
                },
            );
            return;
        }
        let id = sequence.stream_id;
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        if self.report_content {
            out.events.push(Http2Event::ResponseFields {
                stream_id: id,
                fields: fields.clone(),
            });
        }
        let status = fields
            .value_of(b":status")
            .and_then(|value| std::str::from_utf8(value).ok())
            .and_then(|value| value.parse::<u16>().ok());
        if let Some(status) = status {
            let interim = (100..200).contains(&status);
            out.events.push(Http2Event::ResponseHead {
                stream_id: id,
                status,
                interim,
            });
            let transaction = &mut stream.transaction;
            if !interim && transaction.status.is_none() {
                transaction.status = Some(status);
                transaction.response_content_type =
                    fields.value_of(b"content-type").map(CompactString::from_utf8_lossy);
                if transaction.method == "CONNECT" && (200..300).contains(&status) {
                    transaction.marks.connect = true;
                }
            }
        }
        if sequence.end_stream {
            self.response_ended(id, out);
        }
    }

    // ---- both directions -------------------------------------------------------------

    /// The checks a frame header allows (RFC 9113 §4.2, §6), and loupe's bounds.
    fn check_frame(&self, direction: Direction, header: &FrameHeader) -> Result<(), Fault> {
        let side = self.side(direction);
        let length = header.length;
        let frame_size = ErrorCode::FRAME_SIZE_ERROR;
        let protocol = ErrorCode::PROTOCOL_ERROR;
        let bad_length = || Err((frame_size, Http2Problem::BadFrameLength { length }));
        if length > side.receiver_max_frame_size as usize {
            let max = side.receiver_max_frame_size;
            return Err((frame_size, Http2Problem::FrameTooLarge { length, max }));
        }
        if !side.settings_seen && (header.kind != kind::SETTINGS || header.has(flag::ACK)) {
            return Err((protocol, Http2Problem::SettingsExpected));
        }
        match side.sequence {
            Some(sequence) if header.kind != kind::CONTINUATION || header.stream_id != sequence.stream_id => {
                let stream_id = sequence.stream_id;
                return Err((protocol, Http2Problem::ContinuationExpected { stream_id }));
            }
            None if header.kind == kind::CONTINUATION => {
                return Err((protocol, Http2Problem::UnexpectedContinuation));
            }
            _ => {}
        }
        let on_stream = matches!(
            header.kind,
            kind::DATA | kind::HEADERS | kind::PRIORITY | kind::RST_STREAM | kind::PUSH_PROMISE | kind::CONTINUATION
        );
        let on_connection = matches!(header.kind, kind::SETTINGS | kind::PING | kind::GOAWAY);
        if on_stream && header.stream_id == 0 {
            return Err((protocol, Http2Problem::StreamZero));
        }
        if on_connection && header.stream_id != 0 {
            return Err((protocol, Http2Problem::StreamNotZero));
        }
        let padding = usize::from(header.has(flag::PADDED));
        match header.kind {
            kind::DATA if length < padding => return bad_length(),
            kind::HEADERS if length < padding + if header.has(flag::PRIORITY) { 5 } else { 0 } => return bad_length(),
            kind::PRIORITY if length != 5 => return bad_length(),
            kind::RST_STREAM | kind::WINDOW_UPDATE if length != 4 => return bad_length(),
            kind::SETTINGS if (header.has(flag::ACK) && length != 0) || !length.is_multiple_of(6) => {
                return bad_length()
            }
            kind::SETTINGS if length > self.limits.max_frame_buffer => {
                let limit = self.limits.max_frame_buffer;
                return Err((
                    ErrorCode::ENHANCE_YOUR_CALM,
                    Http2Problem::FrameBufferExceeded { length, limit },
                ));
            }
            kind::PUSH_PROMISE if direction == Direction::ClientToServer => {
                return Err((protocol, Http2Problem::PushFromClient));
            }
            kind::PUSH_PROMISE if length < padding + 4 => return bad_length(),
            kind::PING if length != 8 => return bad_length(),
            kind::GOAWAY if length < 8 => return bad_length(),
            _ => {}
        }
        if matches!(header.kind, kind::HEADERS | kind::PUSH_PROMISE | kind::CONTINUATION) {
            let limit = self.limits.max_header_block;
            let so_far = if header.kind == kind::CONTINUATION {
                side.sequence_bytes
            } else {
                0
            };
            if so_far + FRAME_HEADER_LEN + length > limit {
                return Err((
                    ErrorCode::ENHANCE_YOUR_CALM,
                    Http2Problem::HeaderBlockTooLarge { limit },
                ));
            }
        }
        Ok(())
    }

    /// The end of a HEADERS, PUSH_PROMISE or CONTINUATION frame: its fragment joins the
    /// block, which is returned once END_HEADERS says it is whole.
    fn header_frame_end(
        &mut self,
        direction: Direction,
        frame: &InFrame,
        payload: &[u8],
        out: &mut Http2Output,
    ) -> Option<HeaderSequence> {
        let header = frame.header;
        let parts = match header_frame_parts(&header, payload) {
            Ok(parts) => parts,
            Err(fault) => {
                self.fail(direction, frame.offset, Some(header.reference()), fault, out);
                return None;
            }
        };
        let side = self.side_mut(direction);
        if header.kind != kind::CONTINUATION {
            side.sequence = Some(HeaderSequence {
                kind: header.kind,
                stream_id: header.stream_id,
                offset: frame.offset,
                end_stream: header.has(flag::END_STREAM),
                priority: parts.priority,
                promised_stream: parts.promised_stream,
            });
        }
        side.block.extend_from_slice(parts.fragment);
        if header.has(flag::END_HEADERS) {
            side.sequence.take()
        } else {
            None
        }
    }

    fn settings_end(&mut self, direction: Direction, frame: &InFrame, payload: &[u8], out: &mut Http2Output) {
        let header = frame.header;
        if header.has(flag::ACK) {
            // The sender acknowledges the other side's oldest unacknowledged SETTINGS: a
            // table size there is now in effect for the blocks the sender writes.
            match direction {
                Direction::ClientToServer => {
                    if let Some(Some((smallest, last))) = self.server_settings_unacked.pop_front() {
                        for size in [smallest, last] {
                            let size = size as usize;
                            self.client_decoder.set_max_table_size(size);
                            if let Some(encoder) = &mut self.reencoder {
                                encoder.set_max_table_size(size);
                            }
                        }
                        self.server_table_setting = last as usize;
                    }
                }
                Direction::ServerToClient => {
                    if let Some(Some((smallest, last))) = self.client_settings_unacked.pop_front() {
                        self.server_decoder.set_max_table_size(smallest as usize);
                        self.server_decoder.set_max_table_size(last as usize);
                    }
                }
            }
            return;
        }
        let mut table_size: Option<(u32, u32)> = None;
        for entry in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([entry[0], entry[1]]);
            let value = read_u32(entry, 2);
            let invalid = match id {
                setting::HEADER_TABLE_SIZE => {
                    table_size = Some(table_size.map_or((value, value), |(smallest, _)| (smallest.min(value), value)));
                    None
                }
                setting::ENABLE_PUSH if value > 1 => Some(ErrorCode::PROTOCOL_ERROR),
                setting::INITIAL_WINDOW_SIZE if value > MAX_WINDOW => Some(ErrorCode::FLOW_CONTROL_ERROR),
                setting::INITIAL_WINDOW_SIZE => {
                    if direction == Direction::ClientToServer {
                        self.client_initial_window = i64::from(value);
                    }
                    None
                }
                setting::MAX_FRAME_SIZE if !(MIN_MAX_FRAME_SIZE..=MAX_MAX_FRAME_SIZE).contains(&value) => {
                    Some(ErrorCode::PROTOCOL_ERROR)
                }
                setting::MAX_FRAME_SIZE => {
                    // The sender receives frames of this size from now on: frames of the
                    // other direction are checked against the largest ever announced.
                    let other = self.side_mut(other_direction(direction));
                    other.receiver_max_frame_size = other.receiver_max_frame_size.max(value);
                    if direction == Direction::ServerToClient {
                        self.server_frame_size = value;
                    }
                    None
                }
                _ => None,
            };
            if let Some(code) = invalid {
                let fault = (code, Http2Problem::BadSetting { id, value });
                return self.fail(direction, frame.offset, Some(header.reference()), fault, out);
            }
        }
        let unacked = match direction {
            Direction::ClientToServer => &mut self.client_settings_unacked,
            Direction::ServerToClient => &mut self.server_settings_unacked,
        };
        if unacked.len() >= MAX_UNACKED_SETTINGS {
            let fault = (
                ErrorCode::ENHANCE_YOUR_CALM,
                Http2Problem::TooManyUnackedSettings {
                    limit: MAX_UNACKED_SETTINGS,
                },
            );
            return self.fail(direction, frame.offset, Some(header.reference()), fault, out);
        }
        unacked.push_back(table_size);
    }

    fn stream_reset(&mut self, id: u32, by: Peer, error_code: ErrorCode, out: &mut Http2Output) {
        out.events.push(Http2Event::StreamReset {
            stream_id: id,
            by,
            error_code,
        });
        self.complete(id, out);
    }

    fn request_ended(&mut self, id: u32, out: &mut Http2Output) {
        if let Some(stream) = self.streams.get_mut(&id) {
            stream.request_ended = true;
            if stream.response_ended {
                self.complete(id, out);
            }
        }
    }

    fn response_ended(&mut self, id: u32, out: &mut Http2Output) {
        if let Some(stream) = self.streams.get_mut(&id) {
            stream.response_ended = true;
            if stream.request_ended {
                self.complete(id, out);
            }
        }
    }

    fn complete(&mut self, id: u32, out: &mut Http2Output) {
        if let Some(stream) = self.streams.remove(&id) {
            out.events.push(Http2Event::TransactionComplete {
                transaction: stream.transaction,
            });
        }
    }

    /// Reports every open transaction as it stands, in stream order.
    fn finish_streams(&mut self, out: &mut Http2Output) {
        for (_, stream) in std::mem::take(&mut self.streams) {
            out.events.push(Http2Event::TransactionComplete {
                transaction: stream.transaction,
            });
        }
    }

    /// Sends what loupe has for the client, if the server→client stream is between
    /// frames and not inside a header block, and the server's preface (its SETTINGS)
    /// went first: a client must see SETTINGS as the server's first frame.
    fn flush_to_client(&mut self, out: &mut Http2Output) {
        if self.phase != Phase::Inspecting
            || !self.server.settings_seen
            || self.server.frame.is_some()
            || self.server.sequence.is_some()
            || self.server_cut
        {
            return;
        }
        while self.dropped_client_data > 0 {
            let increment = self.dropped_client_data.min(u64::from(MAX_WINDOW));
            self.dropped_client_data -= increment;
            write_window_update(&mut self.to_client, 0, increment as u32);
        }
        out.to_client.append(&mut self.to_client);
    }

    /// Inspection stops: see the module documentation.
    fn fail(
        &mut self,
        direction: Direction,
        offset: u64,
        frame: Option<FrameRef>,
        fault: Fault,
        out: &mut Http2Output,
    ) {
        if self.phase != Phase::Inspecting {
            return;
        }
        let (code, problem) = fault;
        self.finish_streams(out);
        out.events.push(Http2Event::ProtocolError(Http2Error {
            direction,
            offset,
            code,
            frame,
            problem,
        }));
        match self.reencoder {
            None => {
                // Everything received and not relayed yet goes now, in order.
                out.to_server.extend_from_slice(&self.client.held);
                out.to_server
                    .extend_from_slice(&self.client.head[..self.client.head_len]);
                out.to_client
                    .extend_from_slice(&self.server.head[..self.server.head_len]);
                out.to_client.append(&mut self.to_client);
                self.phase = Phase::Passthrough;
            }
            Some(_) => {
                let last_stream_id = self.last_client_stream;
                let mut goaway = [0u8; 8];
                goaway[..4].copy_from_slice(&last_stream_id.to_be_bytes());
                goaway[4..].copy_from_slice(&code.0.to_be_bytes());
                write_frame(&mut self.to_client, kind::GOAWAY, 0, 0, &goaway);
                out.events.push(Http2Event::GoAway {
                    by: Peer::Loupe,
                    last_stream_id,
                    error_code: code,
                });
                // Without a frame boundary the client gets no GOAWAY, only the close.
                self.flush_to_client(out);
                out.close = true;
                self.phase = Phase::Closed;
            }
        }
        self.release_memory();
    }

    /// Nothing more is parsed: free what parsing needed.
    fn release_memory(&mut self) {
        self.client = Side::new(Direction::ClientToServer);
        self.server = Side::new(Direction::ServerToClient);
        self.client_decoder = HpackDecoder::new(self.limits.hpack);
        self.server_decoder = HpackDecoder::new(self.limits.hpack);
        self.reencoder = None;
        self.streams = BTreeMap::new();
        self.answered = BTreeSet::new();
        self.client_settings_unacked = VecDeque::new();
        self.server_settings_unacked = VecDeque::new();
        self.to_client = Vec::new();
        self.scratch = Vec::new();
    }

    fn side(&self, direction: Direction) -> &Side {
        match direction {
            Direction::ClientToServer => &self.client,
            Direction::ServerToClient => &self.server,
        }
    }

    fn side_mut(&mut self, direction: Direction) -> &mut Side {
        match direction {
            Direction::ClientToServer => &mut self.client,
            Direction::ServerToClient => &mut self.server,
        }
    }
}

impl Side {
    fn new(direction: Direction) -> Self {
        Side {
            direction,
            offset: 0,
            head: [0; FRAME_HEADER_LEN],
            head_len: 0,
            frame: None,
            sequence: None,
            block: Vec::new(),
            sequence_bytes: 0,
            payload: Vec::new(),
            held: Vec::new(),
            settings_seen: false,
            receiver_max_frame_size: MIN_MAX_FRAME_SIZE,
        }
    }

    /// Forgets the frame in progress (the direction ended).
    fn reset(&mut self) {
        *self = Side {
            offset: self.offset,
            settings_seen: self.settings_seen,
            receiver_max_frame_size: self.receiver_max_frame_size,
            ..Side::new(self.direction)
        };
    }

    /// Adds bytes to the frame header being read; returns how many it took.
    fn fill_head(&mut self, bytes: &[u8]) -> usize {
        let used = (FRAME_HEADER_LEN - self.head_len).min(bytes.len());
        self.head[self.head_len..self.head_len + used].copy_from_slice(&bytes[..used]);
        self.head_len += used;
        self.offset += used as u64;
        used
    }

    fn start_frame(&mut self, header: FrameHeader, offset: u64, sink: Sink, keep: usize) {
        self.head_len = 0;
        match header.kind {
            kind::HEADERS | kind::PUSH_PROMISE => self.sequence_bytes = FRAME_HEADER_LEN + header.length,
            kind::CONTINUATION => self.sequence_bytes += FRAME_HEADER_LEN + header.length,
            _ => {}
        }
        self.frame = Some(InFrame {
            header,
            offset,
            remaining: header.length,
            sink,
            keep,
        });
    }

    /// Takes payload bytes of the current frame, holding them if its sink says so and
    /// keeping the start of it for parsing; returns how many it took and, if they go on
    /// to the other peer now, those bytes.
    fn take_payload<'b>(&mut self, bytes: &'b [u8]) -> (usize, Option<&'b [u8]>) {
        let Some(frame) = &mut self.frame else {
            return (0, None);
        };
        let used = frame.remaining.min(bytes.len());
        let chunk = &bytes[..used];
        let forwarded = match frame.sink {
            Sink::Forward => Some(chunk),
            Sink::Hold => {
                self.held.extend_from_slice(chunk);
                None
            }
            Sink::Drop => None,
        };
        let position = frame.header.length - frame.remaining;
        if position < frame.keep {
            let kept = (frame.keep - position).min(used);
            self.payload.extend_from_slice(&chunk[..kept]);
        }
        frame.remaining -= used;
        self.offset += used as u64;
        (used, forwarded)
    }

    fn recycle_payload(&mut self, mut payload: Vec<u8>) {
        if payload.capacity() <= RETAINED_BUFFER_BYTES {
            payload.clear();
            self.payload = payload;
        }
    }

    fn recycle_block(&mut self, mut block: Vec<u8>) {
        if block.capacity() <= RETAINED_BUFFER_BYTES {
            block.clear();
            self.block = block;
        }
        if self.held.capacity() > RETAINED_BUFFER_BYTES && self.held.is_empty() {
            self.held = Vec::new();
        }
    }

    fn memory_bytes(&self) -> usize {
        self.block.capacity() + self.payload.capacity() + self.held.capacity()
    }
}

fn other_direction(direction: Direction) -> Direction {
    match direction {
        Direction::ClientToServer => Direction::ServerToClient,
        Direction::ServerToClient => Direction::ClientToServer,
    }
}

/// How much of a control frame's payload is kept to parse it.
fn payload_to_parse(kind: u8, length: usize) -> usize {
    match kind {
        kind::PRIORITY => 0,
        kind::RST_STREAM | kind::WINDOW_UPDATE => 4,
        kind::SETTINGS | kind::PUSH_PROMISE => length,
        kind::GOAWAY => 8,
        _ => 0,
    }
}

/// Reports the DATA bytes among the `used` payload bytes a side just forwarded, which
/// went to the output vector at `before..`.
fn report_data(side: &Side, direction: Direction, before: usize, used: usize, out: &mut Http2Output) {
    let Some(frame) = &side.frame else { return };
    let header = &frame.header;
    if header.kind != kind::DATA || frame.sink != Sink::Forward || used == 0 {
        return;
    }
    // Payload positions of the chunk, and of the data within the payload.
    let chunk_end = header.length - frame.remaining;
    let chunk_start = chunk_end - used;
    let padded = header.has(flag::PADDED);
    let data_start = usize::from(padded);
    let pad = if padded {
        side.payload.first().map_or(0, |&p| p as usize)
    } else {
        0
    };
    let data_end = header.length.saturating_sub(pad).max(data_start);
    let (start, end) = (chunk_start.max(data_start), chunk_end.min(data_end));
    if start < end {
        out.events.push(Http2Event::Data {
            stream_id: header.stream_id,
            direction,
            start: before + (start - chunk_start),
            end: before + (end - chunk_start),
        });
    }
}

/// A DATA frame's data length, padding and pad length taken off.
fn data_length(header: &FrameHeader, payload: &[u8]) -> Result<usize, Fault> {
    if !header.has(flag::PADDED) {
        return Ok(header.length);
    }
    let padding = payload.first().copied().unwrap_or(0);
    header
        .length
        .checked_sub(1 + usize::from(padding))
        .ok_or((ErrorCode::PROTOCOL_ERROR, Http2Problem::PaddingTooLong { padding }))
}

/// A header block frame's payload, taken apart.
struct HeaderFrameParts<'a> {
    priority: Option<[u8; 5]>,
    promised_stream: u32,
    fragment: &'a [u8],
}

fn header_frame_parts<'a>(header: &FrameHeader, payload: &'a [u8]) -> Result<HeaderFrameParts<'a>, Fault> {
    let mut start = 0;
    let mut padding = 0u8;
    if header.kind != kind::CONTINUATION && header.has(flag::PADDED) {
        padding = payload.first().copied().unwrap_or(0);
        start = 1;
    }
    let mut priority = None;
    if header.kind == kind::HEADERS && header.has(flag::PRIORITY) {
        priority = payload.get(start..start + 5).and_then(|bytes| bytes.try_into().ok());
        start += 5;
    }
    let mut promised_stream = 0;
    if header.kind == kind::PUSH_PROMISE {
        promised_stream = read_u32(payload, start) & MAX_WINDOW;
        start += 4;
    }
    let end = payload
        .len()
        .checked_sub(usize::from(padding))
        .filter(|&end| end >= start)
        .ok_or((ErrorCode::PROTOCOL_ERROR, Http2Problem::PaddingTooLong { padding }))?;
    Ok(HeaderFrameParts {
        priority,
        promised_stream,
        fragment: &payload[start..end],
    })
}

/// A big-endian u32 at `at`, 0 where the bytes are missing.
fn read_u32(bytes: &[u8], at: usize) -> u32 {
    bytes
        .get(at..at + 4)
        .and_then(|bytes| bytes.try_into().ok())
        .map_or(0, u32::from_be_bytes)
}

/// The request's side of a transaction, from its header block.
fn request_transaction(stream_id: u32, fields: &FieldList) -> Box<Transaction> {
    let mut transaction = Box::new(Transaction {
        version: Some(HttpVersion::Http2),
        stream_id: Some(stream_id),
        ..Transaction::default()
    });
    let mut method = None;
    let mut authority = None;
    let mut host = None;
    let mut path = None;
    for field in fields.iter() {
        let text = || CompactString::from_utf8_lossy(field.value);
        match field.name {
            b":method" => _ = method.get_or_insert_with(text),
            b":scheme" => _ = transaction.scheme.get_or_insert_with(text),
            b":authority" if !field.value.is_empty() => _ = authority.get_or_insert_with(text),
            b":path" => _ = path.get_or_insert_with(text),
            b"host" if !field.value.is_empty() => _ = host.get_or_insert_with(text),
            b"user-agent" => _ = transaction.user_agent.get_or_insert_with(text),
            b"referer" => _ = transaction.referer.get_or_insert_with(text),
            b"content-type" => _ = transaction.request_content_type.get_or_insert_with(text),
            b"expect" if field.value.eq_ignore_ascii_case(b"100-continue") => {
                transaction.marks.expect_continue = true;
            }
            _ => {}
        }
    }
    transaction.method = method.unwrap_or_default();
    transaction.host = authority.or(host);
    if let Some(path) = path {
        match path.split_once('?') {
            Some((path, query)) => {
                transaction.path = path.into();
                transaction.query = Some(query.into());
            }
            None => transaction.path = path,
        }
    }
    transaction
}

thread_local! {
    /// One decoded header list per worker thread, lent to whichever connection is
    /// decoding a block: a list lives only while its block is handled, so an idle
    /// connection holds none.
    static SPARE_FIELDS: Cell<FieldList> = const { Cell::new(FieldList::new()) };
}

/// A spare list that grew past this (a huge header block) goes back to the allocator.
const SPARE_FIELDS_KEEP: usize = 16 * 1024;

fn take_spare_fields() -> FieldList {
    SPARE_FIELDS.take()
}

fn give_back_spare_fields(fields: FieldList) {
    if fields.heap_bytes() <= SPARE_FIELDS_KEEP {
        SPARE_FIELDS.set(fields);
    }
}

fn plain_field(name: &[u8], value: &[u8]) -> HeaderField {
    HeaderField {
        name: name.to_vec(),
        value: value.to_vec(),
        sensitive: false,
    }
}

/// Headers HTTP/2 forbids (RFC 9113 §8.2.2).
fn is_connection_specific(name: &str) -> bool {
    matches!(
        name,
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
    )
}

fn write_frame_header(out: &mut Vec<u8>, length: usize, kind: u8, flags: u8, stream_id: u32) {
    let length = (length as u32).to_be_bytes();
    out.extend_from_slice(&length[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream_id & MAX_WINDOW).to_be_bytes());
}

fn write_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream_id: u32, payload: &[u8]) {
    write_frame_header(out, payload.len(), kind, flags, stream_id);
    out.extend_from_slice(payload);
}

fn write_window_update(out: &mut Vec<u8>, stream_id: u32, increment: u32) {
    write_frame(out, kind::WINDOW_UPDATE, 0, stream_id, &increment.to_be_bytes());
}

/// A header block as HEADERS and CONTINUATION frames of at most `max_frame_size` bytes.
fn write_header_block(
    out: &mut Vec<u8>,
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    block: &[u8],
    max_frame_size: u32,
) {
    let max = max_frame_size.clamp(MIN_MAX_FRAME_SIZE, MAX_MAX_FRAME_SIZE) as usize;
    let priority_len = if priority.is_some() { 5 } else { 0 };
    let (first, mut rest) = block.split_at(block.len().min(max - priority_len));
    let mut flags = 0;
    if end_stream {
        flags |= flag::END_STREAM;
    }
    if priority.is_some() {
        flags |= flag::PRIORITY;
    }
    if rest.is_empty() {
        flags |= flag::END_HEADERS;
    }
    write_frame_header(out, priority_len + first.len(), kind::HEADERS, flags, stream_id);
    if let Some(priority) = priority {
        out.extend_from_slice(&priority);
    }
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(max));
        rest = tail;
        let flags = if rest.is_empty() { flag::END_HEADERS } else { 0 };
        write_frame(out, kind::CONTINUATION, flags, stream_id, chunk);
    }
}
