//! What the engine keeps to run content signatures on a session: the rule set of the
//! policy snapshot the session started with, per-session state (`flowbits`, `pass`), and
//! for each transaction its heads as rule buffers and its bodies, decoded as they come,
//! up to the inspection depth.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use crate::inspect::content_coding::{parse_content_encoding, BodyDecoder, DecodeStatus};
use crate::inspect::signatures::rule::Direction;
use crate::inspect::signatures::{
    Action, Endpoints, FlowSignatureState, HeadBuffers, SignatureHit, SignatureSet, Stage, TransactionBuffers,
    TxSignatureState, WantedBuffers,
};

/// Decoded body bytes a session holds at most across its open transactions, in
/// multiples of `body_depth`: a few bodies at full depth at once; past it (thousands of
/// HTTP/2 streams each sending a body) the bodies are judged as far as they came.
const SESSION_BODY_DEPTHS: usize = 4;

/// The session's signature matching.
pub struct SessionSignatures {
    pub set: Arc<SignatureSet>,
    endpoints: Endpoints,
    flow: FlowSignatureState,
    /// Decoded body bytes kept per message at most (`[inspection] body_depth`).
    body_depth: usize,
    /// Scratch for one evaluation's hits.
    hits: Vec<SignatureHit>,
    /// The server name the client asked for (`tls.sni`).
    sni: Option<Vec<u8>>,
    /// The current service round's time, for rate windows.
    now: SystemTime,
    /// Body bytes held by the session's open transactions (each gives its own back when
    /// it goes).
    held: Arc<AtomicUsize>,
    /// Bodies judged short of their end: cut at `body_depth` (a decompression bomb
    /// among them) or by the session's budget.
    pub bodies_cut: u64,
    /// Bodies whose content coding could not be decoded (judged as far as decoded).
    pub decode_errors: u64,
}

/// One body as the rules read it.
#[derive(Default)]
pub struct BodyCapture {
    pub bytes: Vec<u8>,
    decoder: Option<BodyDecoder>,
    /// Nothing more is added: the body ended, reached the depth, or could not be decoded.
    pub whole: bool,
    /// Why decoding stopped short, for the record.
    pub problem: Option<String>,
}

/// A transaction's content for the rules, and the rules it fired.
#[derive(Default)]
pub struct TxContent {
    pub request: Option<HeadBuffers>,
    pub response: Option<HeadBuffers>,
    pub request_body: BodyCapture,
    pub response_body: BodyCapture,
    state: TxSignatureState,
    /// The session's count of body bytes held, to give this transaction's back.
    held: Option<Arc<AtomicUsize>>,
    /// HTTP/2: the request side of the transaction, for alerts on it (HTTP/1.1 keeps it
    /// beside).
    pub summary: Option<crate::inspect::transaction::Transaction>,
    /// A `drop` answered the request: the server never saw it.
    pub dropped: bool,
}

impl fmt::Debug for TxContent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxContent")
            .field("request_body", &self.request_body.bytes.len())
            .field("response_body", &self.response_body.bytes.len())
            .finish_non_exhaustive()
    }
}

impl Drop for TxContent {
    fn drop(&mut self) {
        if let Some(held) = &self.held {
            held.fetch_sub(
                self.request_body.bytes.len() + self.response_body.bytes.len(),
                Ordering::Relaxed,
            );
        }
    }
}

impl TxContent {
    pub fn memory_bytes(&self) -> usize {
        self.request.as_ref().map_or(0, HeadBuffers::memory_bytes)
            + self.response.as_ref().map_or(0, HeadBuffers::memory_bytes)
            + self.request_body.bytes.capacity()
            + self.response_body.bytes.capacity()
    }
}

impl SessionSignatures {
    pub fn new(set: Arc<SignatureSet>, endpoints: Endpoints, body_depth: usize) -> Self {
        SessionSignatures {
            set,
            endpoints,
            flow: FlowSignatureState::default(),
            body_depth,
            hits: Vec::new(),
            sni: None,
            now: SystemTime::UNIX_EPOCH,
            held: Arc::new(AtomicUsize::new(0)),
            bodies_cut: 0,
            decode_errors: 0,
        }
    }

    pub fn set_now(&mut self, now: SystemTime) {
        self.now = now;
    }

    pub fn set_sni(&mut self, sni: Option<&str>) {
        self.sni = sni.map(|name| name.as_bytes().to_vec());
    }

    /// Both handshakes are done: the session's `tls` rules.
    pub fn handshake(&mut self, out: &mut Vec<SignatureHit>) {
        let mut content = TxContent::default();
        self.evaluate(&mut content, Stage::Handshake, None, out);
    }

    /// Another rule set from here on; the session's flowbits stay.
    pub fn replace_set(&mut self, set: Arc<SignatureSet>, body_depth: usize) {
        self.set = set;
        self.body_depth = body_depth;
    }

    /// Whether the parsers must report bodies.
    pub fn reads_bodies(&self) -> bool {
        self.body_depth > 0 && self.set.reads_bodies()
    }

    /// The buffers the heads given to this need to hold.
    pub fn wanted_buffers(&self) -> WantedBuffers {
        self.set.wanted_buffers()
    }

    /// A request head arrived: its content, and the rules it decides.
    pub fn request_head(&mut self, head: HeadBuffers, out: &mut Vec<SignatureHit>) -> Box<TxContent> {
        let mut content = Box::<TxContent>::default();
        content.held = Some(Arc::clone(&self.held));
        content.request_body = self.capture_for(&head);
        content.request = Some(head);
        self.evaluate(&mut content, Stage::RequestHead, None, out);
        content
    }

    /// The final response head arrived.
    pub fn response_head(&mut self, content: &mut TxContent, head: HeadBuffers, out: &mut Vec<SignatureHit>) {
        content.response_body = self.capture_for(&head);
        content.response = Some(head);
        self.evaluate(content, Stage::ResponseHead, None, out);
    }

    /// Body bytes of one direction (as sent: still content-encoded).
    pub fn body_data(
        &mut self,
        content: &mut TxContent,
        direction: Direction,
        data: &[u8],
        out: &mut Vec<SignatureHit>,
    ) {
        if !self.reads_bodies() {
            return;
        }
        let capture = match direction {
            Direction::ToServer => &mut content.request_body,
            Direction::ToClient => &mut content.response_body,
        };
        if capture.whole {
            return;
        }
        let before = capture.bytes.len();
        let decoder = capture
            .decoder
            .get_or_insert_with(|| BodyDecoder::new(Vec::new(), self.body_depth));
        if let Err(error) = decoder.feed(data, &mut capture.bytes) {
            capture.problem.get_or_insert_with(|| error.to_string());
            capture.whole = true;
            self.decode_errors += 1;
        }
        if matches!(decoder.status(), DecodeStatus::LimitReached { .. }) {
            capture.whole = true;
            self.bodies_cut += 1;
        }
        let budget = SESSION_BODY_DEPTHS * self.body_depth;
        let room = budget.saturating_sub(self.held.load(Ordering::Relaxed));
        if capture.bytes.len() - before > room {
            capture.bytes.truncate(before + room);
            if !capture.whole {
                capture.whole = true;
                self.bodies_cut += 1;
            }
        }
        let added = capture.bytes.len() - before;
        self.held.fetch_add(added, Ordering::Relaxed);
        let stage = match direction {
            Direction::ToServer => Stage::RequestBody,
            Direction::ToClient => Stage::ResponseBody,
        };
        if capture.whole {
            capture.decoder = None;
            self.evaluate(content, stage, None, out);
        } else if added > 0 {
            self.evaluate(content, stage, Some(added), out);
        }
    }

    /// A message's body ended (or the transaction did): the stage is decided whole.
    pub fn body_end(&mut self, content: &mut TxContent, direction: Direction, out: &mut Vec<SignatureHit>) {
        let (capture, stage, head_seen) = match direction {
            Direction::ToServer => (&mut content.request_body, Stage::RequestBody, content.request.is_some()),
            Direction::ToClient => (
                &mut content.response_body,
                Stage::ResponseBody,
                content.response.is_some(),
            ),
        };
        if capture.whole || !head_seen {
            return;
        }
        capture.whole = true;
        capture.decoder = None;
        self.evaluate(content, stage, None, out);
    }

    fn capture_for(&self, head: &HeadBuffers) -> BodyCapture {
        let mut capture = BodyCapture::default();
        if !self.reads_bodies() {
            capture.whole = true;
            return capture;
        }
        match head.content_encoding().map(parse_content_encoding) {
            None => {}
            Some(Ok(codings)) => capture.decoder = Some(BodyDecoder::new(codings, self.body_depth)),
            // Not a coding loupe decodes: the rules read the body as sent.
            Some(Err(error)) => capture.problem = Some(error.to_string()),
        }
        capture
    }

    fn evaluate(
        &mut self,
        content: &mut TxContent,
        stage: Stage,
        new_body: Option<usize>,
        out: &mut Vec<SignatureHit>,
    ) {
        if !self.set.has_stage(stage) {
            return;
        }
        fn body(capture: &BodyCapture, stage: Stage, from: Stage) -> Option<&[u8]> {
            (stage >= from && (capture.whole || !capture.bytes.is_empty())).then_some(&capture.bytes[..])
        }
        let buffers = TransactionBuffers {
            request: content.request.as_ref(),
            response: content.response.as_ref(),
            request_body: body(&content.request_body, stage, Stage::RequestBody),
            response_body: body(&content.response_body, stage, Stage::ResponseBody),
            direction: match stage {
                Stage::Handshake | Stage::RequestHead | Stage::RequestBody => Direction::ToServer,
                Stage::ResponseHead | Stage::ResponseBody => Direction::ToClient,
            },
            sni: self.sni.as_deref(),
        };
        self.hits.clear();
        let endpoints = self.endpoints;
        self.set.evaluate(
            stage,
            new_body,
            &buffers,
            endpoints,
            self.now,
            &mut self.flow,
            &mut content.state,
            &mut self.hits,
        );
        out.append(&mut self.hits);
    }
}

/// The first `drop` among `hits`.
pub fn first_drop(hits: &[SignatureHit]) -> Option<SignatureHit> {
    hits.iter().copied().find(|hit| hit.action == Action::Drop)
}
