//! A loaded rule set run over transactions: which rules become decidable at each stage of
//! a session (its TLS handshake, for `tls` rules) and of each transaction (request head,
//! request body, response head, response body), the
//! prefilter to pick candidates, the rule header's addresses and ports, `flow`, and
//! `flowbits` kept per session. A rule fires at most once per transaction.
//!
//! Each byte is searched by the prefilter once: a stage searches only what is new at it
//! (the request head's buffers, then the response head's; a body piece by piece), and a
//! candidate found for a later stage (a response rule whose fast pattern is in the URI)
//! waits in the transaction for its stage.
//!
//! Bodies are matched as they grow: on each new piece the prefilter searches only the new
//! bytes (and the bytes before them that a pattern could straddle), and the rules whose
//! fast pattern is there are evaluated over the whole body so far, so a match is seen in
//! the piece that completes it, before that piece is relayed. When the body ends (or
//! reaches the inspection depth) the candidates of its stage are decided once more, over
//! the whole body.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use smallvec::SmallVec;

use super::buffers::{TransactionBuffers, WantedBuffers};
use super::detect::{rule_matches, Buffers};
use super::load::{LoadReport, LoadedRules};
use super::prefilter::Prefilter;
use super::rate::RateTable;
use super::rule::{Action, Buffer, Direction, Flowbit, Protocol, Rule};

/// How far a transaction has come: the buffers a rule needs exist from its stage on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Both handshakes are done: `tls` rules (`tls.sni`), once per session.
    Handshake,
    RequestHead,
    RequestBody,
    ResponseHead,
    ResponseBody,
}

impl Stage {
    fn direction(self) -> Direction {
        match self {
            Stage::Handshake | Stage::RequestHead | Stage::RequestBody => Direction::ToServer,
            Stage::ResponseHead | Stage::ResponseBody => Direction::ToClient,
        }
    }

    fn body(self) -> Option<Buffer> {
        match self {
            Stage::RequestBody => Some(Buffer::HttpRequestBody),
            Stage::ResponseBody => Some(Buffer::HttpResponseBody),
            _ => None,
        }
    }
}

/// A rule set ready to run, shared by every session of a policy snapshot.
pub struct SignatureSet {
    rules: Vec<Rule>,
    origins: Vec<(PathBuf, usize)>,
    stages: Vec<Stage>,
    /// Whether a stage has anything to do (indexed by `Stage as usize`): a rule decided
    /// at it, or a fast pattern in a buffer it brings.
    stage_used: [bool; 5],
    prefilter: Prefilter,
    /// Matches per rule since the set was loaded (`loupectl rules stats`).
    hits: Vec<AtomicU64>,
    /// Longest fast pattern: how far back a new body piece's search starts.
    longest_pattern: usize,
    /// The buffers any rule reads.
    wanted: WantedBuffers,
    /// `threshold` and `detection_filter` windows.
    rates: RateTable,
    pub report: LoadReport,
}

/// A rule that fired on a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignatureHit {
    /// Index into the set's rules.
    pub rule: u32,
    pub action: Action,
}

/// What a session keeps between its transactions.
#[derive(Debug, Default)]
pub struct FlowSignatureState {
    flowbits: Vec<String>,
    /// A `pass` rule fired: nothing more is evaluated on the session.
    passed: bool,
}

/// What a transaction keeps between its stages.
#[derive(Debug, Default)]
pub struct TxSignatureState {
    /// Rules that fired on the transaction, by gid and sid: each only once, also when
    /// the rule set is reloaded while the transaction is open.
    fired: SmallVec<[(u32, u32); 2]>,
    /// Candidates found by an earlier search, for a stage not decided yet (or, for a
    /// body stage, to decide again when the body is whole), in rule order.
    pending: Vec<u32>,
    /// The rule set `pending` indexes into (its address): a reload empties it.
    pending_set: usize,
    /// Scratch for the prefilter, kept to avoid reallocating per call.
    candidates: Vec<u32>,
}

/// The session's two ends: the rule header's addresses and ports are checked against them.
#[derive(Debug, Clone, Copy)]
pub struct Endpoints {
    pub client: SocketAddr,
    pub server: SocketAddr,
}

impl SignatureSet {
    pub fn new(loaded: LoadedRules) -> Result<SignatureSet, String> {
        let LoadedRules { rules, origins, report } = loaded;
        let prefilter = Prefilter::new(&rules)?;
        let stages: Vec<Stage> = rules.iter().map(rule_stage).collect();
        let mut stage_used = [false; 5];
        for (rule, stage) in rules.iter().zip(&stages) {
            stage_used[*stage as usize] = true;
            if let Some((buffer, _)) = rule.fast_pattern() {
                for searched in searched_at(buffer) {
                    stage_used[*searched as usize] = true;
                }
            }
        }
        let hits = rules.iter().map(|_| AtomicU64::new(0)).collect();
        let wanted = WantedBuffers::of(rules.iter().flat_map(|rule| rule.detections.iter().map(|d| d.buffer)));
        let longest_pattern = rules
            .iter()
            .filter_map(|rule| rule.fast_pattern().map(|(_, content)| content.pattern.len()))
            .max()
            .unwrap_or(0);
        Ok(SignatureSet {
            rules,
            origins,
            stages,
            stage_used,
            prefilter,
            hits,
            longest_pattern,
            wanted,
            rates: RateTable::default(),
            report,
        })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn rule(&self, index: u32) -> &Rule {
        &self.rules[index as usize]
    }

    /// The file and line a rule was loaded from.
    pub fn origin(&self, index: u32) -> &(PathBuf, usize) {
        &self.origins[index as usize]
    }

    /// Matches per rule, in load order.
    pub fn hit_counts(&self) -> Vec<u64> {
        self.hits.iter().map(|h| h.load(Ordering::Relaxed)).collect()
    }

    /// The buffers the head builders need to make for this set.
    pub fn wanted_buffers(&self) -> WantedBuffers {
        self.wanted
    }

    /// Whether `stage` has anything to do: a rule decided at it, or a fast pattern in a
    /// buffer it brings.
    pub fn has_stage(&self, stage: Stage) -> bool {
        self.stage_used[stage as usize]
    }

    /// Whether any rule reads a body (else the parsers need not report bodies).
    pub fn reads_bodies(&self) -> bool {
        self.stages
            .iter()
            .any(|s| matches!(s, Stage::RequestBody | Stage::ResponseBody))
    }

    /// Evaluates what `stage` decides. `new_body`: for a body stage, how many bytes at
    /// the end of the body are new since the last call; `None` when the body is whole
    /// (ended, or at the inspection depth): every rule of the stage is decided then.
    /// `now` times `threshold` and `detection_filter` windows.
    #[allow(clippy::too_many_arguments)]
    pub fn evaluate(
        &self,
        stage: Stage,
        new_body: Option<usize>,
        buffers: &TransactionBuffers<'_>,
        endpoints: Endpoints,
        now: SystemTime,
        flow: &mut FlowSignatureState,
        tx: &mut TxSignatureState,
        hits: &mut Vec<SignatureHit>,
    ) {
        if flow.passed || self.rules.is_empty() {
            return;
        }
        let set_id = self as *const SignatureSet as usize;
        if tx.pending_set != set_id {
            tx.pending.clear();
            tx.pending_set = set_id;
        }
        let mut candidates = std::mem::take(&mut tx.candidates);
        match (stage.body(), new_body) {
            (Some(body), Some(new)) => {
                // Only the new bytes, and the pattern-length-less-one bytes before them.
                let Some(whole) = buffers.get(body) else { return };
                let from = whole.len().saturating_sub(new + self.longest_pattern.saturating_sub(1));
                let window = BodyWindow {
                    buffer: body,
                    bytes: &whole[from..],
                };
                self.prefilter.candidates(&window, &mut candidates);
                candidates.retain(|&rule| {
                    self.stages[rule as usize] == stage
                        && self.rules[rule as usize].fast_pattern().is_some_and(|(b, _)| b == body)
                });
                // Decided again over the whole body at its end, unless they fire now; the
                // stage's candidates from the heads are decided on each piece too, so
                // that a drop comes before the piece that completes its match goes.
                merge_sorted(&mut tx.pending, &candidates);
                let due: Vec<u32> = tx
                    .pending
                    .iter()
                    .copied()
                    .filter(|&rule| self.stages[rule as usize] == stage)
                    .collect();
                merge_sorted(&mut candidates, &due);
            }
            _ => {
                // What is new at this stage; what earlier searches found for it.
                let view = NewAtStage { buffers, stage };
                self.prefilter.candidates(&view, &mut candidates);
                let later: Vec<u32> = candidates
                    .iter()
                    .copied()
                    .filter(|&rule| self.stages[rule as usize] > stage)
                    .collect();
                candidates.retain(|&rule| self.stages[rule as usize] == stage);
                let due: Vec<u32> = tx
                    .pending
                    .iter()
                    .copied()
                    .filter(|&rule| self.stages[rule as usize] == stage)
                    .collect();
                tx.pending.retain(|&rule| self.stages[rule as usize] > stage);
                merge_sorted(&mut tx.pending, &later);
                merge_sorted(&mut candidates, &due);
            }
        }
        for &index in &candidates {
            if flow.passed {
                break;
            }
            let rule = &self.rules[index as usize];
            let id = (rule.meta.gid, rule.meta.sid);
            if tx.fired.contains(&id) {
                continue;
            }
            if !addresses_match(rule, stage.direction(), endpoints)
                || rule.flow.direction.is_some_and(|d| d != stage.direction())
                || !flowbits_hold(rule, flow)
                || !rule_matches(rule, buffers)
            {
                continue;
            }
            tx.fired.push(id);
            apply_flowbits(rule, flow);
            self.hits[index as usize].fetch_add(1, Ordering::Relaxed);
            if rule.action == Action::Pass {
                flow.passed = true;
            }
            // A match the rate keywords hold back sets its flowbits but logs nothing; a
            // drop still drops.
            let (source, destination) = match stage.direction() {
                Direction::ToServer => (endpoints.client.ip(), endpoints.server.ip()),
                Direction::ToClient => (endpoints.server.ip(), endpoints.client.ip()),
            };
            let passes = |rate: &Option<super::rule::Rate>, filter: bool| {
                rate.as_ref()
                    .is_none_or(|rate| self.rates.passes(index, rate, filter, now, source, destination))
            };
            let logged = passes(&rule.detection_filter, true) && passes(&rule.threshold, false);
            if !rule.flowbits.contains(&Flowbit::NoAlert) && (logged || rule.action == Action::Drop) {
                hits.push(SignatureHit {
                    rule: index,
                    action: rule.action,
                });
            }
        }
        tx.candidates = candidates;
    }
}

/// The stages whose search reads `buffer` (see [`NewAtStage`]).
fn searched_at(buffer: Buffer) -> &'static [Stage] {
    match buffer {
        Buffer::TlsSni => &[Stage::Handshake, Stage::RequestHead],
        Buffer::HttpRequestBody => &[Stage::RequestBody],
        Buffer::HttpResponseBody => &[Stage::ResponseBody],
        b => match b.direction() {
            Some(Direction::ToServer) => &[Stage::RequestHead],
            Some(Direction::ToClient) => &[Stage::ResponseHead],
            None => &[Stage::RequestHead, Stage::ResponseHead],
        },
    }
}

/// Adds `more` (ascending) to `list` (ascending), without duplicates.
fn merge_sorted(list: &mut Vec<u32>, more: &[u32]) {
    if more.is_empty() {
        return;
    }
    list.extend_from_slice(more);
    list.sort_unstable();
    list.dedup();
}

/// The buffers a head stage brings, as the prefilter sees them: the request head's at the
/// request head (with the server name), the response head's at the response head, the
/// server name at the handshake; bodies are searched piece by piece as they come.
struct NewAtStage<'a, 'b> {
    buffers: &'a TransactionBuffers<'b>,
    stage: Stage,
}

impl Buffers for NewAtStage<'_, '_> {
    fn get(&self, buffer: Buffer) -> Option<&[u8]> {
        let new = match (self.stage, buffer) {
            (Stage::Handshake | Stage::RequestHead, Buffer::TlsSni) => true,
            (_, Buffer::TlsSni | Buffer::HttpRequestBody | Buffer::HttpResponseBody) => false,
            (Stage::RequestHead, b) => b.direction() != Some(Direction::ToClient),
            (Stage::ResponseHead, b) => b.direction() != Some(Direction::ToServer),
            (Stage::Handshake | Stage::RequestBody | Stage::ResponseBody, _) => false,
        };
        if new {
            self.buffers.get(buffer)
        } else {
            None
        }
    }
}

/// The new part of a body, as the only buffer the prefilter sees.
struct BodyWindow<'a> {
    buffer: Buffer,
    bytes: &'a [u8],
}

impl Buffers for BodyWindow<'_> {
    fn get(&self, buffer: Buffer) -> Option<&[u8]> {
        (buffer == self.buffer).then_some(self.bytes)
    }
}

/// The stage from which every buffer a rule reads exists.
fn rule_stage(rule: &Rule) -> Stage {
    let direction = rule.direction().unwrap_or(Direction::ToServer);
    let mut stage = match direction {
        Direction::ToServer => Stage::RequestHead,
        Direction::ToClient => Stage::ResponseHead,
    };
    for detection in &rule.detections {
        let needs = match detection.buffer {
            Buffer::HttpRequestBody => Stage::RequestBody,
            Buffer::HttpResponseBody => Stage::ResponseBody,
            buffer => match buffer.direction().unwrap_or(direction) {
                Direction::ToServer => Stage::RequestHead,
                Direction::ToClient => Stage::ResponseHead,
            },
        };
        stage = stage.max(needs);
    }
    if rule.protocol == Protocol::Tls && rule.detections.iter().all(|d| d.buffer == Buffer::TlsSni) {
        // A session's handshake is decided once, before any transaction.
        return Stage::Handshake;
    }
    stage
}

/// The rule header's addresses and ports against the sender and receiver of what is
/// inspected (`<>`: either way round).
fn addresses_match(rule: &Rule, direction: Direction, endpoints: Endpoints) -> bool {
    let (from, to) = match direction {
        Direction::ToServer => (endpoints.client, endpoints.server),
        Direction::ToClient => (endpoints.server, endpoints.client),
    };
    let matches = |from: SocketAddr, to: SocketAddr| {
        rule.source.contains(from.ip())
            && rule.source_ports.contains(from.port())
            && rule.destination.contains(to.ip())
            && rule.destination_ports.contains(to.port())
    };
    matches(from, to) || (rule.bidirectional && matches(to, from))
}

fn flowbits_hold(rule: &Rule, flow: &FlowSignatureState) -> bool {
    let is_set = |name: &String| flow.flowbits.iter().any(|bit| bit == name);
    rule.flowbits.iter().all(|bit| match bit {
        Flowbit::IsSet(names) => names.iter().any(is_set),
        Flowbit::IsNotSet(names) => !names.iter().any(is_set),
        _ => true,
    })
}

fn apply_flowbits(rule: &Rule, flow: &mut FlowSignatureState) {
    for bit in &rule.flowbits {
        match bit {
            Flowbit::Set(name) if !flow.flowbits.contains(name) => flow.flowbits.push(name.clone()),
            Flowbit::Unset(name) => flow.flowbits.retain(|b| b != name),
            Flowbit::Toggle(name) => match flow.flowbits.iter().position(|b| b == name) {
                Some(at) => _ = flow.flowbits.swap_remove(at),
                None => flow.flowbits.push(name.clone()),
            },
            _ => {}
        }
    }
}
