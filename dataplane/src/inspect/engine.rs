//! The inspection engine of one decrypted session: the split-TLS session hands it each
//! direction's plaintext, it frames HTTP/1.1 or HTTP/2, judges every request against the
//! URL rules, and says what goes on: forward the bytes, hold them until a request head is
//! complete, answer the client itself (a 403 page), or end the session.
//!
//! Sans-IO: bytes in, bytes and transactions out. The caller gives it the wall-clock time
//! of each service round ([`HttpInspector::set_now`]) so that transactions carry their
//! timing without the engine reading a clock.
//!
//! Which protocol: the client leg's ALPN says `h2` or not. Without `h2` the stream is read
//! as HTTP/1.1; a stream whose first bytes are not a request line is relayed unchanged and
//! marked `unknown` (TLS carries more than HTTP). A parse error later is a protocol error:
//! by default the rest is relayed uninspected and the reason is kept for the record;
//! `on_protocol_error = "block"` ends the session instead.
//!
//! Holding (HTTP/1.1): client bytes that belong to a request head not yet complete are
//! held, so that a head is judged before any byte of it reaches the server; bodies and
//! judged heads pass without a copy. A blocked request never reaches the server: the
//! client gets the 403 once the responses to the requests before it are through (HTTP/1.1
//! answers in order), then both legs close, because the server never saw that request
//! and the connection cannot carry on in step.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::LocalKey;
use std::time::SystemTime;

use compact_str::CompactString;

use super::hpack::FieldList;
use super::http1::{Direction as StreamDirection, Http1Connection, Http1Error, Http1Event, Http1Limits};
use super::http2::{
    Answer, ErrorCode, Http2Connection, Http2Event, Http2Limits, Http2Output, ServerRelay, StreamVerdict,
};
use super::signatures::rule::Direction;
use super::signatures::{Endpoints, HeadBuffers, SignatureHit, SignatureSet};
use super::transaction::Transaction;
use super::url_rules::{UrlAction, UrlRequest, UrlRules};
use super::{Inspector, Pass, Relay, SessionEnd};

/// An HTTP/2 head's fields as the signature buffers take them, on the stack when few.
type FieldPairs<'a> = smallvec::SmallVec<[(&'a [u8], &'a [u8]); 24]>;

mod signature_flow;
use signature_flow::{first_drop, SessionSignatures, TxContent};

/// What the engine of one session may do and hold.
#[derive(Debug, Clone)]
pub struct InspectSettings {
    /// End the session on malformed HTTP instead of relaying the rest uninspected.
    pub block_on_protocol_error: bool,
    /// Serve an HTML page naming the rule with a block's 403 (otherwise an empty body).
    pub block_page: bool,
    pub http1: Http1Limits,
    pub http2: Http2Limits,
}

impl Default for InspectSettings {
    fn default() -> Self {
        InspectSettings {
            block_on_protocol_error: false,
            block_page: true,
            http1: Http1Limits::default(),
            http2: Http2Limits::default(),
        }
    }
}

/// The application protocol found inside the TLS session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppProtocol {
    Http1,
    Http2,
    /// Neither: relayed unchanged.
    Unknown,
}

impl AppProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            AppProtocol::Http1 => "http/1.1",
            AppProtocol::Http2 => "h2",
            AppProtocol::Unknown => "unknown",
        }
    }
}

/// The URL rule that matched a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlHit {
    /// The rule's name: inline for names of up to 24 bytes, so a hit costs no allocation.
    pub rule: CompactString,
    pub action: UrlAction,
}

/// A finished transaction with what the engine decided about it and when it happened.
#[derive(Debug, Clone, PartialEq)]
pub struct InspectedTransaction {
    /// Numbers the session's transactions from 0 in request order.
    pub index: u64,
    pub transaction: Transaction,
    pub url_rule: Option<UrlHit>,
    /// loupe answered the request itself; the server never saw it.
    pub blocked: bool,
    pub request_start: Option<SystemTime>,
    pub response_first_byte: Option<SystemTime>,
    pub end: Option<SystemTime>,
}

/// A signature that fired on a transaction (or on the handshake, for `tls` rules):
/// written as an EVE `alert` when it fires.
#[derive(Debug, Clone)]
pub struct SignatureAlert {
    pub hit: SignatureHit,
    /// The transaction's number within the session and the transaction as far as it had
    /// come; `None` for a `tls` rule, which fires on the handshake.
    pub transaction: Option<(u64, Transaction)>,
    pub at: Option<SystemTime>,
}

/// Counts for the session's record and the worker's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct InspectCounts {
    pub transactions: u64,
    pub url_rule_hits: u64,
    pub blocked: u64,
    pub protocol_errors: u64,
    pub signature_alerts: u64,
    pub signature_drops: u64,
    /// Bodies signatures judged short of their end (`body_depth`, or the session's
    /// budget across its open transactions), and bodies that could not be decoded.
    pub bodies_cut: u64,
    pub body_decode_errors: u64,
}

/// Inspects one decrypted session; see the module documentation.
pub struct HttpInspector {
    settings: Arc<InspectSettings>,
    url_rules: Arc<UrlRules>,
    now: Option<SystemTime>,
    mode: Mode,
    protocol: AppProtocol,
    /// Why inspection stopped early (protocol error, refusal, tunnel), for the record.
    stopped: Option<String>,
    /// Why the engine ended the session, if it did.
    ended: Option<String>,
    /// A `drop` signature ended it: with a reset both ways, not close_notify.
    dropped: bool,
    finished: Vec<InspectedTransaction>,
    counts: InspectCounts,
    /// The protocol was chosen (at `established`, or at the first byte without it).
    started: bool,
    /// Content signatures, when the policy loaded rules.
    signatures: Option<SessionSignatures>,
    /// Signatures fired since the last [`HttpInspector::take_alerts`].
    alerts: Vec<SignatureAlert>,
    /// The server name the client asked for, for `tls.sni`.
    sni: Option<String>,
}

enum Mode {
    Http1(Box<Http1Flow>),
    Http2(Box<Http2Flow>),
    /// Everything relayed as is from here.
    Passthrough,
    /// The engine ended the session: nothing more goes anywhere.
    Ended,
}

/// What the engine knows of an open HTTP/1.1 exchange beyond the parser's transaction.
#[derive(Debug)]
struct ExchangeMeta {
    index: u64,
    url_rule: Option<UrlHit>,
    request_start: Option<SystemTime>,
    response_first_byte: Option<SystemTime>,
    /// What signatures read of the transaction (with signatures on).
    content: Option<Box<TxContent>>,
}

/// A request loupe answers itself, waiting for the responses before it.
#[derive(Debug)]
struct PendingAnswer {
    index: u64,
    response: Vec<u8>,
    transaction: Transaction,
    meta: ExchangeMeta,
}

struct Http1Flow {
    parser: Http1Connection,
    /// Client bytes from `released` to `received`, not yet sent to the server.
    held: Vec<u8>,
    /// Client stream offset up to which bytes went to the server.
    released: u64,
    received: u64,
    /// When the first byte of the next request was seen (before its head completed).
    next_start: Option<SystemTime>,
    /// Requests forwarded whose transactions are not complete, oldest first.
    open: VecDeque<OpenRequest>,
    answer: Option<PendingAnswer>,
    /// Client bytes at the start of the stream, kept until the protocol is known.
    first_bytes: Vec<u8>,
    /// Server stream bytes received (body spans are stream offsets).
    server_received: u64,
    /// The last head the parser reported, until its head event.
    head: Vec<u8>,
}

/// A request forwarded to the server: its side of the transaction, until the parser's
/// outcome completes it.
#[derive(Debug)]
struct OpenRequest {
    meta: ExchangeMeta,
    request: Box<Transaction>,
}

struct Http2Flow {
    connection: Http2Connection,
    output: Http2Output,
    streams: VecDeque<(u32, ExchangeMeta)>,
    next_index: u64,
}

impl HttpInspector {
    /// An engine for a session whose handshakes are not done yet: the client leg's ALPN,
    /// given by [`Inspector::established`], selects HTTP/2 or HTTP/1.1.
    pub fn new(settings: Arc<InspectSettings>, url_rules: Arc<UrlRules>) -> HttpInspector {
        HttpInspector {
            settings,
            url_rules,
            now: None,
            mode: Mode::Passthrough,
            protocol: AppProtocol::Unknown,
            stopped: None,
            ended: None,
            dropped: false,
            finished: Vec::new(),
            counts: InspectCounts::default(),
            started: false,
            signatures: None,
            alerts: Vec::new(),
            sni: None,
        }
    }

    /// The server name of the ClientHello, for `tls.sni` rules.
    pub fn set_sni(&mut self, sni: Option<&str>) {
        self.sni = sni.map(str::to_string);
        if let Some(signatures) = &mut self.signatures {
            signatures.set_sni(sni);
        }
    }

    /// Runs `set` on the session's transactions; `body_depth`: decoded body bytes the
    /// rules read at most per message.
    pub fn with_signatures(mut self, set: Arc<SignatureSet>, endpoints: Endpoints, body_depth: usize) -> Self {
        let mut signatures = SessionSignatures::new(set, endpoints, body_depth);
        signatures.set_sni(self.sni.as_deref());
        if let Some(now) = self.now {
            signatures.set_now(now);
        }
        self.signatures = Some(signatures);
        self
    }

    /// Runs `set` from here on (a rule reload; `None`: rules removed). Open transactions
    /// keep their heads and bodies and are judged by the new rules from their next
    /// stage (a rule that fired on one already, by gid and sid, does not fire again);
    /// `flowbits` carry over, by name.
    pub fn replace_signatures(&mut self, set: Option<Arc<SignatureSet>>, endpoints: Endpoints, body_depth: usize) {
        let Some(set) = set else {
            self.signatures = None;
            return;
        };
        match &mut self.signatures {
            Some(signatures) => signatures.replace_set(set, body_depth),
            None => {
                let mut signatures = SessionSignatures::new(set, endpoints, body_depth);
                signatures.set_sni(self.sni.as_deref());
                if let Some(now) = self.now {
                    signatures.set_now(now);
                }
                self.signatures = Some(signatures);
            }
        }
        match &mut self.mode {
            Mode::Http1(flow) => flow.parser.report_content(),
            Mode::Http2(flow) => flow.connection.report_content(),
            Mode::Passthrough | Mode::Ended => {}
        }
    }

    /// The rule set the session runs, to name the rules of its alerts.
    pub fn signature_set(&self) -> Option<&Arc<SignatureSet>> {
        self.signatures.as_ref().map(|s| &s.set)
    }

    /// Signatures fired since the last call, in the order they fired.
    pub fn take_alerts(&mut self) -> Vec<SignatureAlert> {
        std::mem::take(&mut self.alerts)
    }

    /// Whether alerts are waiting in [`HttpInspector::take_alerts`].
    pub fn has_alerts(&self) -> bool {
        !self.alerts.is_empty()
    }

    fn start(&mut self, alpn: Option<&str>) {
        self.started = true;
        if alpn == Some("h2") {
            let mut connection = Http2Connection::new(self.settings.http2);
            if self.signatures.is_some() {
                connection.report_content();
            }
            let flow = Http2Flow {
                connection,
                output: Http2Output::default(),
                streams: VecDeque::new(),
                next_index: 0,
            };
            self.mode = Mode::Http2(Box::new(flow));
            self.protocol = AppProtocol::Http2;
        } else {
            let mut parser = Http1Connection::new(self.settings.http1);
            if self.signatures.is_some() {
                parser.report_content();
            }
            let flow = Http1Flow {
                parser,
                held: Vec::new(),
                released: 0,
                received: 0,
                next_start: None,
                open: VecDeque::new(),
                answer: None,
                first_bytes: Vec::new(),
                server_received: 0,
                head: Vec::new(),
            };
            self.mode = Mode::Http1(Box::new(flow));
            self.protocol = AppProtocol::Http1;
        }
    }

    /// The wall-clock time of the current service round, stamped on what happens in it.
    pub fn set_now(&mut self, now: SystemTime) {
        self.now = Some(now);
        if let Some(signatures) = &mut self.signatures {
            signatures.set_now(now);
        }
    }

    pub fn protocol(&self) -> AppProtocol {
        self.protocol
    }

    /// Why inspection stopped before the session ended (the rest was relayed as is).
    pub fn stopped(&self) -> Option<&str> {
        self.stopped.as_deref()
    }

    /// Why the engine ended the session.
    pub fn ended(&self) -> Option<&str> {
        self.ended.as_deref()
    }

    pub fn counts(&self) -> InspectCounts {
        let mut counts = self.counts;
        if let Some(signatures) = &self.signatures {
            counts.bodies_cut = signatures.bodies_cut;
            counts.body_decode_errors = signatures.decode_errors;
        }
        counts
    }

    /// Transactions finished since the last call, in the order they finished.
    pub fn take_finished(&mut self) -> Vec<InspectedTransaction> {
        std::mem::take(&mut self.finished)
    }

    /// Whether transactions are waiting in [`HttpInspector::take_finished`].
    pub fn has_finished(&self) -> bool {
        !self.finished.is_empty()
    }

    /// Approximate bytes the engine holds for the session beyond its own size.
    pub fn memory_bytes(&self) -> usize {
        match &self.mode {
            Mode::Http1(flow) => {
                flow.held.capacity()
                    + flow.first_bytes.capacity()
                    + flow.open.capacity() * 64
                    + flow.open.iter().map(|open| content_bytes(&open.meta)).sum::<usize>()
            }
            Mode::Http2(flow) => {
                flow.connection.memory_bytes()
                    + flow.streams.len() * 64
                    + flow.streams.iter().map(|(_, meta)| content_bytes(meta)).sum::<usize>()
            }
            Mode::Passthrough | Mode::Ended => 0,
        }
    }

    fn judge(&mut self, transaction: &Transaction) -> Option<UrlHit> {
        let request = UrlRequest {
            host: transaction.host.as_deref(),
            path: &transaction.path,
            method: &transaction.method,
        };
        let hit = self.url_rules.judge(&request)?;
        self.counts.url_rule_hits += 1;
        Some(UrlHit {
            rule: CompactString::from(&*hit.name),
            action: hit.action,
        })
    }

    fn finish(&mut self, transaction: Transaction, meta: ExchangeMeta, blocked: bool) {
        self.counts.transactions += 1;
        if self.finished.capacity() == 0 {
            self.finished = SPARE_FINISHED.take();
            if self.finished.capacity() == 0 {
                // Taken every round: most rounds finish one transaction, not four.
                self.finished.reserve_exact(1);
            }
        }
        self.finished.push(InspectedTransaction {
            index: meta.index,
            transaction,
            url_rule: meta.url_rule,
            blocked,
            request_start: meta.request_start,
            response_first_byte: meta.response_first_byte,
            end: self.now,
        });
    }

    /// Records the signatures that fired on transaction `index` as alerts; a `drop` among
    /// them ends the session (unless it already ended). `transaction`: the transaction
    /// as far as it came, when the caller has it at hand; otherwise it is looked up.
    fn signature_hits(
        &mut self,
        index: u64,
        hits: Vec<SignatureHit>,
        transaction: Option<&Transaction>,
        relay: &mut Relay<'_>,
    ) {
        if hits.is_empty() {
            return;
        }
        let transaction = match transaction {
            Some(transaction) => transaction.clone(),
            None => self.open_transaction(index).unwrap_or_default(),
        };
        let dropped = first_drop(&hits);
        for hit in hits {
            self.counts.signature_alerts += 1;
            self.alerts.push(SignatureAlert {
                hit,
                transaction: Some((index, transaction.clone())),
                at: self.now,
            });
        }
        if let Some(dropped) = dropped {
            if !matches!(self.mode, Mode::Ended) {
                self.end_dropped(dropped, relay);
            }
        }
    }

    /// A transaction ended: the rules of its body stages not decided yet are decided over
    /// the bodies as they came. True when a `drop` among them ended the session.
    fn bodies_end(
        &mut self,
        index: u64,
        meta: &mut ExchangeMeta,
        transaction: &Transaction,
        relay: &mut Relay<'_>,
    ) -> bool {
        let (Some(signatures), Some(content)) = (&mut self.signatures, &mut meta.content) else {
            return false;
        };
        let mut hits = Vec::new();
        signatures.body_end(content, Direction::ToServer, &mut hits);
        signatures.body_end(content, Direction::ToClient, &mut hits);
        self.signature_hits(index, hits, Some(transaction), relay);
        matches!(self.mode, Mode::Ended)
    }

    /// The request side of an open transaction.
    fn open_transaction(&self, index: u64) -> Option<Transaction> {
        match &self.mode {
            Mode::Http1(flow) => flow
                .open
                .iter()
                .find(|open| open.meta.index == index)
                .map(|open| (*open.request).clone()),
            Mode::Http2(flow) => flow
                .streams
                .iter()
                .find(|(_, meta)| meta.index == index)
                .and_then(|(_, meta)| meta.content.as_ref()?.summary.clone()),
            _ => None,
        }
    }

    /// A `drop` signature fired: the session ends, nothing more goes either way.
    fn end_dropped(&mut self, dropped: SignatureHit, relay: &mut Relay<'_>) {
        self.counts.signature_drops += 1;
        let sid = self
            .signatures
            .as_ref()
            .map_or(0, |signatures| signatures.set.rule(dropped.rule).meta.sid);
        self.flush_open_http1();
        self.ended.get_or_insert(format!("dropped by signature sid {sid}"));
        self.dropped = true;
        self.mode = Mode::Ended;
        *relay.end_session = SessionEnd::Reset;
    }

    /// Stops inspecting: `Some` when the settings say to end the session instead.
    fn protocol_error(&mut self, what: String) -> bool {
        self.counts.protocol_errors += 1;
        self.stopped.get_or_insert(what);
        self.settings.block_on_protocol_error
    }

    /// How an ended session ends.
    fn ending(&self) -> SessionEnd {
        match self.dropped {
            true => SessionEnd::Reset,
            false => SessionEnd::CloseNotify,
        }
    }

    fn end(&mut self, why: String, relay: &mut Relay<'_>) {
        self.ended.get_or_insert(why);
        self.mode = Mode::Ended;
        *relay.end_session = SessionEnd::CloseNotify;
    }

    // ---- HTTP/1.1 --------------------------------------------------------------------

    fn http1_client(&mut self, bytes: &[u8], relay: &mut Relay<'_>) -> Pass {
        let Mode::Http1(flow) = &mut self.mode else {
            unreachable!("http1 mode")
        };
        if flow.answer.is_some() {
            // After a blocked request the client's bytes never reach the server.
            return Pass::Taken;
        }
        let start = flow.received;
        if flow.next_start.is_none() && flow.parser.client_bytes_framed() == start {
            flow.next_start = self.now;
        }
        flow.received += bytes.len() as u64;
        if start < 64 && self.counts.transactions == 0 && flow.open.is_empty() {
            let keep = bytes.len().min(64 - start as usize);
            flow.first_bytes.extend_from_slice(&bytes[..keep]);
        }
        let events = flow.parser.client_bytes(bytes);
        let only_body = events
            .iter()
            .all(|event| matches!(event, Http1Event::RequestComplete { .. } | Http1Event::BodyData { .. }));
        let piece = Piece { bytes, start };
        if only_body
            && flow.held.is_empty()
            && flow.released == start
            && flow.parser.client_bytes_framed() == flow.received
        {
            // Body bytes: straight through, no copy.
            flow.released = flow.received;
            for event in events {
                self.http1_event(event, piece, relay);
            }
            return match self.mode {
                // A signature dropped the session on these bytes: they do not go.
                Mode::Ended => Pass::Taken,
                _ => Pass::Forward,
            };
        }
        // From here the call's bytes are held like the rest and leave through `release`.
        if flow.held.capacity() == 0 {
            flow.held = SPARE_HELD.take();
        }
        flow.held.extend_from_slice(bytes);
        for event in events {
            self.http1_event(event, piece, relay);
        }
        let Mode::Http1(flow) = &mut self.mode else {
            // Passthrough or ended: the held bytes were released or dropped on the way.
            return Pass::Taken;
        };
        match &flow.answer {
            Some(_) => give_back_held(std::mem::take(&mut flow.held)),
            None => {
                let framed = flow.parser.client_bytes_framed();
                release(flow, framed, relay.to_server);
            }
        }
        Pass::Taken
    }

    fn http1_server(&mut self, bytes: &[u8], relay: &mut Relay<'_>) -> Pass {
        let Mode::Http1(flow) = &mut self.mode else {
            unreachable!("http1 mode")
        };
        // With an answer waiting, these bytes may complete the response before it: they
        // must be queued before the answer is.
        let queue_first = flow.answer.is_some();
        let events = flow.parser.server_bytes(bytes);
        let piece = Piece {
            bytes,
            start: flow.server_received,
        };
        flow.server_received += bytes.len() as u64;
        if queue_first {
            relay.to_client.extend_from_slice(bytes);
        }
        for event in events {
            self.http1_event(event, piece, relay);
        }
        match self.mode {
            _ if queue_first => Pass::Taken,
            // Ended on these bytes (a refused or malformed response): they do not go.
            Mode::Ended => Pass::Taken,
            _ => Pass::Forward,
        }
    }

    fn http1_event(&mut self, event: Http1Event, piece: Piece<'_>, relay: &mut Relay<'_>) {
        let Mode::Http1(flow) = &mut self.mode else { return };
        match event {
            Http1Event::Head { head, .. } => flow.head = head,
            Http1Event::BodyData {
                index,
                direction,
                start,
                end,
            } => {
                let (Some(signatures), Some(data)) = (&mut self.signatures, piece.span(start, end)) else {
                    return;
                };
                let Some(open) = flow.open.iter_mut().find(|open| open.meta.index == index) else {
                    return;
                };
                let Some(content) = &mut open.meta.content else { return };
                let mut hits = Vec::new();
                signatures.body_data(content, direction.into(), data, &mut hits);
                self.signature_hits(index, hits, None, relay);
            }
            Http1Event::RequestHead {
                index,
                head_start,
                request,
                ..
            } => {
                if flow.answer.is_some() {
                    // Pipelined behind a blocked request: never forwarded, never answered.
                    return;
                }
                let request_start = flow.next_start.take().or(self.now);
                // A request line was seen: the protocol is known, the sniffed bytes go.
                flow.first_bytes = Vec::new();
                let head = std::mem::take(&mut flow.head);
                let url_rule = self.judge(&request);
                let mut hits = Vec::new();
                let content = self.signatures.as_mut().map(|signatures| {
                    signatures.request_head(
                        HeadBuffers::http1_request(&head, signatures.wanted_buffers()),
                        &mut hits,
                    )
                });
                if first_drop(&hits).is_some() {
                    // The request never reaches the server; the session ends.
                    let Mode::Http1(flow) = &mut self.mode else { return };
                    release(flow, head_start, relay.to_server);
                    let meta = ExchangeMeta {
                        index,
                        url_rule,
                        request_start,
                        response_first_byte: None,
                        content: None,
                    };
                    // Logs the alerts and ends the session.
                    self.signature_hits(index, hits, Some(&request), relay);
                    self.finish(*request, meta, true);
                    return;
                }
                self.signature_hits(index, hits, Some(&request), relay);
                let Mode::Http1(flow) = &mut self.mode else { return };
                let meta = ExchangeMeta {
                    index,
                    url_rule: url_rule.clone(),
                    request_start,
                    response_first_byte: None,
                    content,
                };
                match url_rule {
                    Some(hit) if hit.action == UrlAction::Block => {
                        self.counts.blocked += 1;
                        let response = http1_block_response(&request, &hit.rule, self.settings.block_page);
                        release(flow, head_start, relay.to_server);
                        flow.answer = Some(PendingAnswer {
                            index,
                            response,
                            transaction: *request,
                            meta,
                        });
                        self.answer_when_due(relay);
                    }
                    _ => {
                        if flow.open.capacity() == 0 {
                            // One slot, kept while the connection lives.
                            flow.open.reserve_exact(1);
                        }
                        flow.open.push_back(OpenRequest { meta, request });
                    }
                }
            }
            Http1Event::RequestComplete { index, .. } => {
                if flow.answer.is_none() {
                    flow.next_start = None;
                }
                let open = flow.open.iter_mut().find(|open| open.meta.index == index);
                if let (Some(signatures), Some(content)) =
                    (&mut self.signatures, open.and_then(|o| o.meta.content.as_mut()))
                {
                    let mut hits = Vec::new();
                    signatures.body_end(content, Direction::ToServer, &mut hits);
                    self.signature_hits(index, hits, None, relay);
                }
            }
            Http1Event::ResponseHead { index, interim, .. } => {
                let head = std::mem::take(&mut flow.head);
                let Some(open) = flow.open.iter_mut().find(|open| open.meta.index == index) else {
                    return;
                };
                open.meta
                    .response_first_byte
                    .get_or_insert_with(|| self.now.unwrap_or(SystemTime::UNIX_EPOCH));
                if let (Some(signatures), Some(content), false) =
                    (&mut self.signatures, &mut open.meta.content, interim)
                {
                    let mut hits = Vec::new();
                    let head = HeadBuffers::http1_response(&head, signatures.wanted_buffers());
                    signatures.response_head(content, head, &mut hits);
                    self.signature_hits(index, hits, None, relay);
                }
            }
            Http1Event::TransactionComplete { index, outcome } => {
                let open = match flow.open.iter().position(|open| open.meta.index == index) {
                    Some(position) => flow.open.remove(position),
                    None => None,
                };
                if flow.open.is_empty() && flow.open.capacity() > 1 {
                    // Pipelining grew the queue: an idle keep-alive connection keeps one slot.
                    flow.open = VecDeque::new();
                }
                // Every forwarded request is open; the fallback only keeps the count true.
                let OpenRequest { mut meta, request } = open.unwrap_or_else(|| OpenRequest {
                    meta: ExchangeMeta {
                        index,
                        url_rule: None,
                        request_start: None,
                        response_first_byte: None,
                        content: None,
                    },
                    request: Box::default(),
                });
                let mut transaction = *request;
                outcome.complete(&mut transaction);
                if self.bodies_end(index, &mut meta, &transaction, relay) {
                    return;
                }
                self.finish(transaction, meta, false);
                self.answer_when_due(relay);
            }
            Http1Event::Tunnel { .. } => {
                // 101 or CONNECT: the parser counts every byte as framed; let them all go.
                let flow_end = flow.received;
                release(flow, flow_end, relay.to_server);
                self.stopped
                    .get_or_insert_with(|| "tunnel: relayed uninspected".to_string());
                self.flush_open_http1();
                self.mode = Mode::Passthrough;
            }
            Http1Event::ProtocolError(error) => self.http1_error(error, false, relay),
            Http1Event::Refused(error) => self.http1_error(error, true, relay),
        }
    }

    /// Sends a pending answer once every request before it has its response, then ends.
    fn answer_when_due(&mut self, relay: &mut Relay<'_>) {
        let Mode::Http1(flow) = &mut self.mode else { return };
        let Some(answer) = &flow.answer else { return };
        if flow.open.iter().any(|open| open.meta.index < answer.index) {
            return;
        }
        let Some(answer) = flow.answer.take() else { return };
        relay.to_client.extend_from_slice(&answer.response);
        let mut transaction = answer.transaction;
        transaction.status = Some(response_status(&answer.response));
        let rule = answer
            .meta
            .url_rule
            .as_ref()
            .map(|hit| hit.rule.clone())
            .unwrap_or_default();
        self.finish(transaction, answer.meta, true);
        self.end(format!("request blocked by url rule {rule:?}"), relay);
    }

    fn http1_error(&mut self, error: Http1Error, refused: bool, relay: &mut Relay<'_>) {
        let Mode::Http1(flow) = &mut self.mode else { return };
        let nothing_parsed = self.counts.transactions == 0 && flow.open.is_empty() && flow.answer.is_none();
        if nothing_parsed && !refused && !looks_like_http1(&flow.first_bytes) {
            // Not HTTP at all: relayed unchanged, marked unknown.
            self.protocol = AppProtocol::Unknown;
            let all = flow.received;
            release(flow, all, relay.to_server);
            self.stopped.get_or_insert_with(|| format!("not HTTP: {error}"));
            self.mode = Mode::Passthrough;
            return;
        }
        if refused {
            self.counts.protocol_errors += 1;
            self.stopped.get_or_insert_with(|| format!("refused: {error}"));
            self.flush_open_http1();
            self.end(format!("refused: {error}"), relay);
            return;
        }
        if self.protocol_error(error.to_string()) {
            self.flush_open_http1();
            self.end(format!("protocol error: {error}"), relay);
            return;
        }
        let Mode::Http1(flow) = &mut self.mode else { return };
        if flow.answer.is_none() {
            let all = flow.received;
            release(flow, all, relay.to_server);
        }
        self.flush_open_http1();
        self.mode = Mode::Passthrough;
    }

    /// Forgets the exchanges still open when inspection stops: the record says why.
    fn flush_open_http1(&mut self) {
        if let Mode::Http1(flow) = &mut self.mode {
            flow.open.clear();
        }
    }

    // ---- HTTP/2 ----------------------------------------------------------------------

    fn http2_bytes(&mut self, bytes: &[u8], from_client: bool, relay: &mut Relay<'_>) -> Pass {
        let Mode::Http2(flow) = &mut self.mode else {
            unreachable!("http2 mode")
        };
        // The connection writes straight into the session's queues.
        std::mem::swap(&mut flow.output.to_server, relay.to_server);
        std::mem::swap(&mut flow.output.to_client, relay.to_client);
        let url_rules = &self.url_rules;
        let block_page = self.settings.block_page;
        let mut hits: Vec<(u32, UrlHit)> = Vec::new();
        let mut contents: Vec<(u32, Box<TxContent>, Vec<SignatureHit>)> = Vec::new();
        let signatures = &mut self.signatures;
        let (to_server_before, to_client_before) = (relay.to_server.len(), relay.to_client.len());
        let mut relayed = ServerRelay::Queued;
        if from_client {
            let mut judge = |transaction: &Transaction, fields: &FieldList| {
                let request = UrlRequest {
                    host: transaction.host.as_deref(),
                    path: &transaction.path,
                    method: &transaction.method,
                };
                if let Some(signatures) = signatures.as_mut() {
                    let pairs: FieldPairs<'_> = fields.iter().map(|f| (f.name, f.value)).collect();
                    let head = HeadBuffers::http2(&pairs, Direction::ToServer, signatures.wanted_buffers());
                    let mut fired = Vec::new();
                    let mut content = signatures.request_head(head, &mut fired);
                    content.summary = Some(transaction.clone());
                    let dropped = first_drop(&fired).is_some();
                    content.dropped = dropped;
                    contents.push((transaction.stream_id.unwrap_or(0), content, fired));
                    if dropped {
                        // The server never sees the stream; the client sees it reset.
                        return StreamVerdict::Reset(ErrorCode::CANCEL);
                    }
                }
                match url_rules.judge(&request) {
                    None => StreamVerdict::Forward,
                    Some(hit) => {
                        let stream = transaction.stream_id.unwrap_or(0);
                        let url_hit = UrlHit {
                            rule: CompactString::from(&*hit.name),
                            action: hit.action,
                        };
                        hits.push((stream, url_hit));
                        if hit.action == UrlAction::Block {
                            StreamVerdict::Answer(http2_block_answer(transaction, &hit.name, block_page))
                        } else {
                            StreamVerdict::Forward
                        }
                    }
                }
            };
            flow.connection.client_bytes(bytes, &mut judge, &mut flow.output);
        } else {
            relayed = flow.connection.relay_server_bytes(bytes, &mut flow.output);
        }
        std::mem::swap(&mut flow.output.to_server, relay.to_server);
        std::mem::swap(&mut flow.output.to_client, relay.to_client);
        self.counts.url_rule_hits += hits.len() as u64;
        self.http2_events(hits, contents, relay);
        if relayed == ServerRelay::AsIs {
            // The session sends the bytes itself, from its own buffer, unless handling the
            // events queued something for the client or ended the session: then they go
            // first in the queue, where the connection would have put them.
            let untouched = relay.to_client.len() == to_client_before;
            if untouched && *relay.end_session == SessionEnd::Open && !self.dropped {
                return Pass::Forward;
            }
            relay
                .to_client
                .splice(to_client_before..to_client_before, bytes.iter().copied());
        }
        if self.dropped {
            // What this call queued carried the match: none of it goes.
            relay.to_server.truncate(to_server_before);
            relay.to_client.truncate(to_client_before);
        }
        Pass::Taken
    }

    fn http2_closed(&mut self, from_client: bool, relay: &mut Relay<'_>) {
        let Mode::Http2(flow) = &mut self.mode else { return };
        std::mem::swap(&mut flow.output.to_server, relay.to_server);
        std::mem::swap(&mut flow.output.to_client, relay.to_client);
        if from_client {
            flow.connection.client_closed(&mut flow.output);
        } else {
            flow.connection.server_closed(&mut flow.output);
        }
        std::mem::swap(&mut flow.output.to_server, relay.to_server);
        std::mem::swap(&mut flow.output.to_client, relay.to_client);
        self.http2_events(Vec::new(), Vec::new(), relay);
    }

    fn http2_events(
        &mut self,
        mut hits: Vec<(u32, UrlHit)>,
        mut contents: Vec<(u32, Box<TxContent>, Vec<SignatureHit>)>,
        relay: &mut Relay<'_>,
    ) {
        let Mode::Http2(flow) = &mut self.mode else { return };
        let mut events = std::mem::take(&mut flow.output.events);
        let close = std::mem::take(&mut flow.output.close);
        for event in events.drain(..) {
            let Mode::Http2(flow) = &mut self.mode else { return };
            match event {
                Http2Event::RequestHead { stream_id, .. } => {
                    let url_rule = hits
                        .iter()
                        .position(|(stream, _)| *stream == stream_id)
                        .map(|at| hits.swap_remove(at).1);
                    let index = flow.next_index;
                    flow.next_index += 1;
                    let (content, fired) = match contents.iter().position(|(stream, _, _)| *stream == stream_id) {
                        Some(at) => {
                            let (_, content, fired) = contents.swap_remove(at);
                            (Some(content), fired)
                        }
                        None => (None, Vec::new()),
                    };
                    let summary = content.as_ref().and_then(|c| c.summary.clone());
                    flow.streams.push_back((
                        stream_id,
                        ExchangeMeta {
                            index,
                            url_rule,
                            request_start: self.now,
                            response_first_byte: None,
                            content,
                        },
                    ));
                    if !fired.is_empty() {
                        // A dropped stream was answered: the session goes on.
                        let dropped = first_drop(&fired).is_some();
                        for hit in fired {
                            self.counts.signature_alerts += 1;
                            self.alerts.push(SignatureAlert {
                                hit,
                                transaction: Some((index, summary.clone().unwrap_or_default())),
                                at: self.now,
                            });
                        }
                        if dropped {
                            self.counts.signature_drops += 1;
                        }
                    }
                }
                Http2Event::ResponseFields { stream_id, fields } => {
                    let Some(signatures) = &mut self.signatures else {
                        continue;
                    };
                    let Some((_, meta)) = flow.streams.iter_mut().find(|(id, _)| *id == stream_id) else {
                        continue;
                    };
                    let Some(content) = &mut meta.content else { continue };
                    let interim = fields
                        .iter()
                        .any(|field| field.name == b":status" && field.value.first() == Some(&b'1'));
                    if interim || content.response.is_some() {
                        continue;
                    }
                    let pairs: FieldPairs<'_> = fields.iter().map(|f| (f.name, f.value)).collect();
                    let mut fired = Vec::new();
                    let head = HeadBuffers::http2(&pairs, Direction::ToClient, signatures.wanted_buffers());
                    signatures.response_head(content, head, &mut fired);
                    let index = meta.index;
                    self.signature_hits(index, fired, None, relay);
                }
                Http2Event::Data {
                    stream_id,
                    direction,
                    start,
                    end,
                } => {
                    let Some(signatures) = &mut self.signatures else {
                        continue;
                    };
                    let Some((_, meta)) = flow.streams.iter_mut().find(|(id, _)| *id == stream_id) else {
                        continue;
                    };
                    let Some(content) = &mut meta.content else { continue };
                    let queue: &Vec<u8> = match direction {
                        StreamDirection::ClientToServer => relay.to_server,
                        StreamDirection::ServerToClient => relay.to_client,
                    };
                    let Some(data) = queue.get(start..end) else { continue };
                    let mut fired = Vec::new();
                    signatures.body_data(content, direction.into(), data, &mut fired);
                    let index = meta.index;
                    self.signature_hits(index, fired, None, relay);
                }
                Http2Event::ResponseHead { stream_id, .. } => {
                    if let Some((_, meta)) = flow.streams.iter_mut().find(|(id, _)| *id == stream_id) {
                        if meta.response_first_byte.is_none() {
                            meta.response_first_byte = self.now;
                        }
                    }
                }
                Http2Event::Answered { .. } => self.counts.blocked += 1,
                Http2Event::TransactionComplete { transaction } => {
                    let stream_id = transaction.stream_id.unwrap_or(0);
                    let meta = flow
                        .streams
                        .iter()
                        .position(|(id, _)| *id == stream_id)
                        .and_then(|at| flow.streams.remove(at))
                        .map(|(_, meta)| meta);
                    let index = meta.as_ref().map_or(flow.next_index, |m| m.index);
                    let mut meta = meta.unwrap_or(ExchangeMeta {
                        index,
                        url_rule: None,
                        request_start: None,
                        response_first_byte: None,
                        content: None,
                    });
                    let dropped = meta.content.as_ref().is_some_and(|content| content.dropped);
                    let blocked = dropped || meta.url_rule.as_ref().is_some_and(|hit| hit.action == UrlAction::Block);
                    if self.bodies_end(index, &mut meta, &transaction, relay) {
                        return;
                    }
                    self.finish(*transaction, meta, blocked);
                }
                Http2Event::StreamReset { .. } | Http2Event::GoAway { .. } => {}
                Http2Event::ProtocolError(error) => {
                    let what = error.to_string();
                    if self.protocol_error(what.clone()) {
                        self.end(format!("protocol error: {what}"), relay);
                        return;
                    }
                }
            }
        }
        match &mut self.mode {
            // The vector's room serves the next call: events come with nearly every one.
            Mode::Http2(flow) if flow.output.events.is_empty() => flow.output.events = events,
            _ => {}
        }
        if close {
            let why = self
                .stopped
                .clone()
                .unwrap_or_else(|| "http2 connection error".to_string());
            self.end(why, relay);
        }
    }
}

impl Inspector for HttpInspector {
    fn established(&mut self, client_alpn: Option<&str>) {
        if !self.started {
            self.start(client_alpn);
        }
        let Some(signatures) = &mut self.signatures else { return };
        let mut hits = Vec::new();
        signatures.handshake(&mut hits);
        let dropped = first_drop(&hits);
        for hit in hits {
            self.counts.signature_alerts += 1;
            self.alerts.push(SignatureAlert {
                hit,
                transaction: None,
                at: self.now,
            });
        }
        if let Some(dropped) = dropped {
            self.counts.signature_drops += 1;
            let sid = signatures.set.rule(dropped.rule).meta.sid;
            // No plaintext has moved yet: nothing goes either way from here.
            self.ended.get_or_insert(format!("dropped by signature sid {sid}"));
            self.dropped = true;
            self.mode = Mode::Ended;
        }
    }

    fn client_to_server(&mut self, plaintext: &[u8], relay: &mut Relay<'_>) -> Pass {
        if !self.started {
            self.start(None);
        }
        match self.mode {
            Mode::Http1(_) => self.http1_client(plaintext, relay),
            Mode::Http2(_) => self.http2_bytes(plaintext, true, relay),
            Mode::Passthrough => Pass::Forward,
            Mode::Ended => {
                // Ended before this (a `tls` rule's drop at the handshake): say so now.
                *relay.end_session = self.ending();
                Pass::Taken
            }
        }
    }

    fn server_to_client(&mut self, plaintext: &[u8], relay: &mut Relay<'_>) -> Pass {
        if !self.started {
            self.start(None);
        }
        match self.mode {
            Mode::Http1(_) => self.http1_server(plaintext, relay),
            Mode::Http2(_) => self.http2_bytes(plaintext, false, relay),
            Mode::Passthrough => Pass::Forward,
            Mode::Ended => {
                // Ended before this (a `tls` rule's drop at the handshake): say so now.
                *relay.end_session = self.ending();
                Pass::Taken
            }
        }
    }

    fn client_ended(&mut self, relay: &mut Relay<'_>) {
        match &mut self.mode {
            Mode::Http1(flow) => {
                let events = flow.parser.client_closed();
                for event in events {
                    self.http1_event(event, Piece::NONE, relay);
                }
                // Whatever is still held goes: the client will send nothing more.
                if let Mode::Http1(flow) = &mut self.mode {
                    if flow.answer.is_none() {
                        let all = flow.received;
                        release(flow, all, relay.to_server);
                    }
                }
            }
            Mode::Http2(_) => self.http2_closed(true, relay),
            Mode::Passthrough | Mode::Ended => {}
        }
    }

    fn server_ended(&mut self, relay: &mut Relay<'_>) {
        match &mut self.mode {
            Mode::Http1(flow) => {
                let events = flow.parser.server_closed();
                for event in events {
                    self.http1_event(event, Piece::NONE, relay);
                }
            }
            Mode::Http2(_) => self.http2_closed(false, relay),
            Mode::Passthrough | Mode::Ended => {}
        }
    }
}

fn content_bytes(meta: &ExchangeMeta) -> usize {
    meta.content.as_ref().map_or(0, |content| content.memory_bytes())
}

/// The bytes of one call and the stream offset of the first, so that body spans (stream
/// offsets) can be read from them.
#[derive(Clone, Copy)]
struct Piece<'a> {
    bytes: &'a [u8],
    start: u64,
}

impl<'a> Piece<'a> {
    const NONE: Piece<'static> = Piece { bytes: &[], start: 0 };

    /// Stream bytes `start..end`, if all are in the piece.
    fn span(&self, start: u64, end: u64) -> Option<&'a [u8]> {
        let from = usize::try_from(start.checked_sub(self.start)?).ok()?;
        let to = usize::try_from(end.checked_sub(self.start)?).ok()?;
        self.bytes.get(from..to)
    }
}

impl From<StreamDirection> for Direction {
    fn from(direction: StreamDirection) -> Self {
        match direction {
            StreamDirection::ClientToServer => Direction::ToServer,
            StreamDirection::ServerToClient => Direction::ToClient,
        }
    }
}

/// Sends held client bytes up to stream offset `limit` to the server.
fn release(flow: &mut Http1Flow, limit: u64, to_server: &mut Vec<u8>) {
    if limit <= flow.released {
        return;
    }
    let count = ((limit - flow.released) as usize).min(flow.held.len());
    to_server.extend_from_slice(&flow.held[..count]);
    flow.held.drain(..count);
    flow.released += count as u64;
    if flow.held.is_empty() {
        // Heads are held only until judged: an idle connection keeps no buffer.
        give_back_held(std::mem::take(&mut flow.held));
    }
}

thread_local! {
    /// One hold buffer per worker thread, lent to whichever HTTP/1.1 session is judging
    /// a head and taken back once released: a session keeps a buffer only while a head of
    /// it is incomplete, and a request costs no allocation for it.
    static SPARE_HELD: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    /// The same for the list of finished transactions, which the worker drains every round.
    static SPARE_FINISHED: Cell<Vec<InspectedTransaction>> = const { Cell::new(Vec::new()) };
}

/// A spare grown past this many elements goes back to the allocator (a huge head was
/// held, many transactions finished in one round).
const SPARE_HELD_KEEP: usize = 16 * 1024;
const SPARE_FINISHED_KEEP: usize = 64;

/// Makes `list` the thread's spare in `slot`, emptied, unless it has no room (it would
/// replace a spare that has) or more than `keep`.
fn give_back<T: 'static>(slot: &'static LocalKey<Cell<Vec<T>>>, mut list: Vec<T>, keep: usize) {
    if list.capacity() > 0 && list.capacity() <= keep {
        list.clear();
        slot.set(list);
    }
}

fn give_back_held(held: Vec<u8>) {
    give_back(&SPARE_HELD, held, SPARE_HELD_KEEP);
}

/// Returns a drained list from [`HttpInspector::take_finished`] for the next session to
/// fill, so that finishing a transaction costs no allocation for the list.
pub fn recycle_finished(list: Vec<InspectedTransaction>) {
    give_back(&SPARE_FINISHED, list, SPARE_FINISHED_KEEP);
}

/// Whether a stream starts like an HTTP/1.x request line: a method token and a space.
fn looks_like_http1(first: &[u8]) -> bool {
    let token_len = first
        .iter()
        .take_while(|b| b.is_ascii_uppercase() || **b == b'-')
        .count();
    (1..=20).contains(&token_len) && first.get(token_len).is_none_or(|b| *b == b' ')
}

fn response_status(response: &[u8]) -> u16 {
    response
        .get(9..12)
        .and_then(|code| std::str::from_utf8(code).ok())
        .and_then(|code| code.parse().ok())
        .unwrap_or(403)
}

/// The page a blocked request gets: it names the rule, so a user can tell the helpdesk.
fn block_page(transaction: &Transaction, rule: &str) -> String {
    let host = transaction.host.as_deref().unwrap_or("");
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>403 Blocked</title></head>\n\
         <body><h1>Blocked</h1>\n<p>The request for <code>{}{}</code> was blocked by the inspection \
         policy (URL rule <code>{}</code>).</p>\n<p>If you need it, ask your network administrator \
         and quote the rule name.</p></body></html>\n",
        html_escape(host),
        html_escape(&transaction.url()),
        html_escape(rule)
    )
}

fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An HTTP/1.1 403 that closes the connection.
fn http1_block_response(transaction: &Transaction, rule: &str, with_page: bool) -> Vec<u8> {
    let body = if with_page {
        block_page(transaction, rule)
    } else {
        String::new()
    };
    let version = match transaction.version {
        Some(super::transaction::HttpVersion::Http10) => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    let mut response = format!(
        "{version} 403 Forbidden\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if transaction.method != "HEAD" {
        response.extend_from_slice(body.as_bytes());
    }
    response
}

fn http2_block_answer(transaction: &Transaction, rule: &str, with_page: bool) -> Answer {
    let body = if with_page && transaction.method != "HEAD" {
        block_page(transaction, rule).into_bytes()
    } else {
        Vec::new()
    };
    Answer {
        status: 403,
        headers: vec![
            ("content-type".to_string(), "text/html; charset=utf-8".to_string()),
            ("cache-control".to_string(), "no-store".to_string()),
        ],
        body,
    }
}

#[cfg(test)]
mod tests;
