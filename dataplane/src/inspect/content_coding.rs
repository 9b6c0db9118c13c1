//! `Content-Encoding` bodies (RFC 9110 §8.4) decoded as they stream, sans-IO: gzip,
//! deflate (zlib or raw, as servers send both) and br, at most two stacked.
//!
//! Bounded for inspection: at most `limit` decoded bytes ever come out, and once they
//! have, no decompressor runs again, so a bomb costs the inspection depth and no more.
//! Working memory does not grow with the body: a deflate window (32 KiB) or a brotli one
//! (the stream declares it, at most 16 MiB) per coding, and one 16 KiB buffer between
//! two codings.

use brotli_decompressor::{BrotliDecompressStream, BrotliResult, BrotliState, SliceWrapper, StandardAlloc};
use flate2::{Decompress, FlushDecompress, Status};

#[cfg(test)]
mod tests;

/// Stacked codings decoded: each holds its own window (up to 16 MiB for br), so a header
/// listing many would multiply the memory one body may take.
const MAX_CODINGS: usize = 2;
/// Decoded bytes per decompressor call, and the buffer between two codings.
const SCRATCH: usize = 16 * 1024;
/// miniz_oxide's inflate state (32 KiB window and Huffman tables), roughly.
const INFLATE_STATE_BYTES: usize = 43 * 1024;
/// Between two codings, the inner one's input is bounded too (by `limit * 1.5` plus
/// this): compressed data that long always decodes past `limit`, unless it is padding
/// (header fields, empty blocks) a bomb could repeat to burn CPU.
const MID_SLACK: usize = 64 * 1024;

/// One content coding of a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentCoding {
    Gzip,
    Deflate,
    Brotli,
}

impl ContentCoding {
    /// The token, as errors name it.
    pub fn name(self) -> &'static str {
        match self {
            ContentCoding::Gzip => "gzip",
            ContentCoding::Deflate => "deflate",
            ContentCoding::Brotli => "br",
        }
    }
}

/// Why a body cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A coding loupe does not decode (compress, zstd, ...): the body cannot be inspected.
    #[error("unsupported content coding {0:?}")]
    UnknownCoding(String),
    /// More stacked codings than [`MAX_CODINGS`]: refused to bound decoder memory.
    #[error("{0} stacked content codings (at most 2 are decoded)")]
    TooManyCodings(usize),
    /// The data is not valid for `coding`. `at`: the byte where that was found (a little
    /// past the bad bits, as decompressors read ahead), offset in that coding's input: the
    /// body for the outer coding, the outer one's output for the inner one.
    #[error("corrupt {coding} body at encoded byte {at}: {reason}")]
    Corrupt {
        coding: &'static str,
        at: u64,
        reason: String,
    },
}

/// Where a [`BodyDecoder`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeStatus {
    /// More input may decode to more bytes (identity bodies stay here: framing ends them).
    Decoding,
    /// The body decodes past the limit: `decoded` bytes came out (`limit`, or fewer when
    /// the stream between two codings overran its own bound); the rest is ignored.
    LimitReached { decoded: usize },
    /// The compressed stream ended within the limit; anything after it is ignored.
    Finished,
}

/// Parses a `Content-Encoding` value into the codings in the order they were applied
/// (so decoded in reverse). Case-insensitive, OWS trimmed, `x-gzip` is gzip, `identity`
/// and empty list elements are skipped: no coding gives `Ok(vec![])`.
pub fn parse_content_encoding(value: &[u8]) -> Result<Vec<ContentCoding>, DecodeError> {
    const NAMES: [(&str, Option<ContentCoding>); 5] = [
        ("identity", None),
        ("gzip", Some(ContentCoding::Gzip)),
        ("x-gzip", Some(ContentCoding::Gzip)),
        ("deflate", Some(ContentCoding::Deflate)),
        ("br", Some(ContentCoding::Brotli)),
    ];
    let mut codings = Vec::new();
    for name in value.split(|&byte| byte == b',').map(<[u8]>::trim_ascii) {
        if name.is_empty() {
            continue;
        }
        let (_, coding) = NAMES
            .iter()
            .find(|(known, _)| name.eq_ignore_ascii_case(known.as_bytes()))
            .ok_or_else(|| DecodeError::UnknownCoding(String::from_utf8_lossy(name).into_owned()))?;
        codings.extend(*coding);
    }
    if codings.len() > MAX_CODINGS {
        return Err(DecodeError::TooManyCodings(codings.len()));
    }
    Ok(codings)
}

/// One body's decoder: encoded bytes in, at most `limit` decoded bytes out.
pub struct BodyDecoder {
    /// Wire side first (the header's order reversed); none for identity.
    codecs: Vec<Codec>,
    /// Two codings: the outer one's output the inner one has not taken, `mid[start..end]`.
    mid: Box<[u8]>,
    mid_start: usize,
    mid_end: usize,
    /// The outer coding's output so far, at most `mid_cap`.
    mid_total: usize,
    mid_cap: usize,
    budget: Budget,
    /// Set once: every later feed returns it.
    failed: Option<DecodeError>,
}

impl BodyDecoder {
    /// `codings` as [`parse_content_encoding`] returns them; `limit`: at most this many
    /// decoded bytes are ever produced (the inspection depth); more input past the limit
    /// is ignored and reported by [`BodyDecoder::status`]. Over two codings: feeds fail.
    pub fn new(codings: Vec<ContentCoding>, limit: usize) -> BodyDecoder {
        let failed = (codings.len() > MAX_CODINGS).then_some(DecodeError::TooManyCodings(codings.len()));
        let codecs: Vec<Codec> = match failed {
            Some(_) => Vec::new(),
            None => codings.iter().rev().map(|&coding| Codec::new(coding)).collect(),
        };
        let mid = if codecs.len() == 2 {
            vec![0; SCRATCH].into_boxed_slice()
        } else {
            Box::default()
        };
        BodyDecoder {
            codecs,
            mid,
            mid_start: 0,
            mid_end: 0,
            mid_total: 0,
            mid_cap: limit.saturating_add(limit / 2).saturating_add(MID_SLACK),
            budget: Budget {
                limit,
                decoded: 0,
                status: DecodeStatus::Decoding,
            },
            failed,
        }
    }

    /// Decodes `encoded` (any split gives the same result) and appends the decoded bytes to
    /// `out`, never past `limit` in total; returns how many it appended. On an error, what
    /// decoded before the bad byte stays appended.
    pub fn feed(&mut self, encoded: &[u8], out: &mut Vec<u8>) -> Result<usize, DecodeError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let before = self.budget.decoded;
        let result = match self.codecs.len() {
            _ if self.budget.status != DecodeStatus::Decoding => Ok(()),
            0 => {
                let kept = self.budget.account(encoded.len(), false);
                out.extend_from_slice(&encoded[..kept]);
                Ok(())
            }
            1 => self.single(encoded, out),
            _ => self.chained(encoded, out),
        };
        match result {
            Ok(()) => Ok(self.budget.decoded - before),
            Err(error) => Err(self.failed.insert(error).clone()),
        }
    }

    /// Where decoding stands.
    pub fn status(&self) -> DecodeStatus {
        self.budget.status
    }

    /// Bytes of working memory held (for memory accounting), roughly.
    pub fn memory_bytes(&self) -> usize {
        size_of::<Self>() + self.mid.len() + self.codecs.iter().map(Codec::memory_bytes).sum::<usize>()
    }

    fn single(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
        loop {
            let step = self.budget.emit(&mut self.codecs[0], input, out)?;
            input = &input[step.taken..];
            if self.budget.status != DecodeStatus::Decoding || step.taken + step.made == 0 {
                return Ok(());
            }
        }
    }

    /// Outer coding into `mid`, inner one from `mid` into `out`, the inner drained first.
    fn chained(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
        loop {
            let last = self
                .budget
                .emit(&mut self.codecs[1], &self.mid[self.mid_start..self.mid_end], out)?;
            self.mid_start += last.taken;
            if self.budget.status != DecodeStatus::Decoding {
                return Ok(());
            }
            if self.mid_start > 0 && (self.mid_start == self.mid_end || self.mid_end == self.mid.len()) {
                self.mid.copy_within(self.mid_start..self.mid_end, 0);
                self.mid_end -= self.mid_start;
                self.mid_start = 0;
            }
            let window = (self.mid.len() - self.mid_end).min(self.mid_cap - self.mid_total);
            let first = &mut self.codecs[0];
            let mut fill = Step::default();
            if !first.finished && window > 0 {
                fill = first.step(input, &mut self.mid[self.mid_end..self.mid_end + window])?;
                input = &input[fill.taken..];
                self.mid_end += fill.made;
                self.mid_total += fill.made;
            }
            if last.taken + last.made + fill.taken + fill.made == 0 {
                if !first.finished && self.mid_total == self.mid_cap {
                    self.budget.status = DecodeStatus::LimitReached {
                        decoded: self.budget.decoded,
                    };
                }
                return Ok(());
            }
        }
    }
}

/// The decoded-bytes limit and the status it sets.
struct Budget {
    limit: usize,
    decoded: usize,
    status: DecodeStatus,
}

impl Budget {
    /// Counts `made` new bytes and returns how many of them to keep.
    fn account(&mut self, made: usize, finished: bool) -> usize {
        let room = self.limit - self.decoded;
        if made > room {
            self.decoded = self.limit;
            self.status = DecodeStatus::LimitReached { decoded: self.limit };
            return room;
        }
        self.decoded += made;
        if finished {
            self.status = DecodeStatus::Finished;
        }
        made
    }

    /// Runs the innermost `codec` into `out`, at most one byte past the limit: that byte,
    /// dropped, tells a longer body from one exactly `limit` long. The window (zeroed
    /// first) follows the input's size, so small feeds stay cheap; callers loop.
    fn emit(&mut self, codec: &mut Codec, input: &[u8], out: &mut Vec<u8>) -> Result<Step, DecodeError> {
        let window = input.len().saturating_mul(4).clamp(1024, SCRATCH);
        let start = out.len();
        out.resize(start + window.min((self.limit - self.decoded).saturating_add(1)), 0);
        let step = codec.step(input, &mut out[start..]);
        let kept = step.as_ref().map_or(0, |step| self.account(step.made, step.finished));
        out.truncate(start + kept);
        step
    }
}

/// What one decompressor call did.
#[derive(Debug, Default)]
struct Step {
    taken: usize,
    made: usize,
    finished: bool,
}

/// Where a call failed: the last byte the decompressor took, from the start of the call's
/// input (negative: bytes held before it), and why.
struct Fault {
    at: i64,
    reason: String,
}

/// One coding's decompressor, fed the stream that coding produced.
struct Codec {
    coding: ContentCoding,
    state: CodecState,
    /// Input taken so far: error offsets.
    taken: u64,
    finished: bool,
}

enum CodecState {
    /// Header parsed here, then raw deflate (flate2's gzip parser is pull-only). The CRC-32
    /// and ISIZE trailer, and any further member, are ignored: inspection wants the bytes.
    Gzip(GzipHeader, Decompress),
    /// zlib (RFC 1950) or raw deflate (RFC 1951), told by the first two bytes, a lone first
    /// byte held until the second comes. zlib's Adler-32 is checked by the inflater.
    Deflate {
        held: Option<u8>,
        inflater: Option<Decompress>,
    },
    /// RFC 7932 windows only (at most 16 MiB): the large-window extension is refused.
    Brotli(Box<BrotliState<StandardAlloc, StandardAlloc, StandardAlloc>>),
}

impl Codec {
    fn new(coding: ContentCoding) -> Codec {
        let state = match coding {
            ContentCoding::Gzip => CodecState::Gzip(GzipHeader::new(), Decompress::new(false)),
            ContentCoding::Deflate => CodecState::Deflate {
                held: None,
                inflater: None,
            },
            ContentCoding::Brotli => CodecState::Brotli(Box::new(BrotliState::new_strict(
                StandardAlloc::default(),
                StandardAlloc::default(),
                StandardAlloc::default(),
            ))),
        };
        Codec {
            coding,
            state,
            taken: 0,
            finished: false,
        }
    }

    fn step(&mut self, input: &[u8], output: &mut [u8]) -> Result<Step, DecodeError> {
        let result = match &mut self.state {
            CodecState::Gzip(header, inflater) => header.parse(input).and_then(|parsed| {
                let rest = match header.part {
                    Part::Done => inflate(inflater, &input[parsed..], output).map_err(|fault| Fault {
                        at: parsed as i64 + fault.at,
                        ..fault
                    })?,
                    _ => Step::default(),
                };
                Ok(Step {
                    taken: parsed + rest.taken,
                    ..rest
                })
            }),
            CodecState::Deflate { held, inflater } => deflate_step(held, inflater, input, output),
            CodecState::Brotli(state) => {
                let (mut in_left, mut in_at, mut out_left, mut out_at, mut total) =
                    (input.len(), 0, output.len(), 0, 0);
                let result = BrotliDecompressStream(
                    &mut in_left,
                    &mut in_at,
                    input,
                    &mut out_left,
                    &mut out_at,
                    output,
                    &mut total,
                    state,
                );
                match result {
                    BrotliResult::ResultFailure => Err(Fault {
                        at: in_at as i64 - 1,
                        reason: format!("{:?}", state.error_code),
                    }),
                    _ => Ok(Step {
                        taken: in_at,
                        made: out_at,
                        finished: matches!(result, BrotliResult::ResultSuccess),
                    }),
                }
            }
        };
        match result {
            Ok(step) => {
                self.taken += step.taken as u64;
                self.finished = step.finished;
                Ok(step)
            }
            Err(fault) => Err(DecodeError::Corrupt {
                coding: self.coding.name(),
                at: self.taken.saturating_add_signed(fault.at),
                reason: fault.reason,
            }),
        }
    }

    fn memory_bytes(&self) -> usize {
        match &self.state {
            CodecState::Gzip(..) | CodecState::Deflate { inflater: Some(_), .. } => INFLATE_STATE_BYTES,
            CodecState::Deflate { inflater: None, .. } => 0,
            CodecState::Brotli(state) => {
                let groups = [&state.literal_hgroup, &state.insert_copy_hgroup, &state.distance_hgroup];
                size_of_val::<BrotliState<_, _, _>>(state)
                    + state.ringbuffer.slice().len()
                    + state.context_map.slice().len()
                    + state.dist_context_map.slice().len()
                    + groups
                        .iter()
                        .map(|group| size_of_val(group.codes.slice()) + size_of_val(group.htrees.slice()))
                        .sum::<usize>()
            }
        }
    }
}

/// One inflate call, as a [`Step`].
fn inflate(inflater: &mut Decompress, input: &[u8], output: &mut [u8]) -> Result<Step, Fault> {
    let (in_before, out_before) = (inflater.total_in(), inflater.total_out());
    let status = inflater.decompress(input, output, FlushDecompress::None);
    let taken = (inflater.total_in() - in_before) as usize;
    let made = (inflater.total_out() - out_before) as usize;
    match status {
        Ok(status) => Ok(Step {
            taken,
            made,
            finished: status == Status::StreamEnd,
        }),
        Err(error) => Err(Fault {
            at: taken as i64 - 1,
            reason: error.to_string(),
        }),
    }
}

fn deflate_step(
    held: &mut Option<u8>,
    inflater: &mut Option<Decompress>,
    input: &[u8],
    output: &mut [u8],
) -> Result<Step, Fault> {
    let inflater = match inflater {
        Some(inflater) => inflater,
        None => {
            let (cmf, flg) = match (*held, input) {
                (Some(cmf), &[flg, ..]) | (None, &[cmf, flg, ..]) => (cmf, flg),
                (None, &[cmf]) => {
                    *held = Some(cmf);
                    return Ok(Step {
                        taken: 1,
                        ..Step::default()
                    });
                }
                _ => return Ok(Step::default()),
            };
            // RFC 1950's header check, as browsers tell zlib from raw deflate.
            let zlib = cmf & 0x0f == 8 && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0;
            inflater.insert(Decompress::new(zlib))
        }
    };
    let mut made = 0;
    if let Some(byte) = *held {
        let first = inflate(inflater, &[byte], output).map_err(|fault| Fault {
            at: fault.at - 1,
            ..fault
        })?;
        if first.taken == 0 || first.finished {
            return Ok(Step { taken: 0, ..first });
        }
        *held = None;
        made = first.made;
    }
    let rest = inflate(inflater, input, &mut output[made..])?;
    Ok(Step {
        made: made + rest.made,
        ..rest
    })
}

/// An RFC 1952 member header (ID1 ID2 CM FLG MTIME XFL OS, then the optional fields),
/// parsed as it arrives.
struct GzipHeader {
    part: Part,
    flags: u8,
    extra_len: usize,
    /// Bytes left in a fixed-length part.
    left: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Part {
    Fixed,
    ExtraLen,
    Extra,
    Name,
    Comment,
    HeaderCrc,
    Done,
}

impl GzipHeader {
    fn new() -> GzipHeader {
        GzipHeader {
            part: Part::Fixed,
            flags: 0,
            extra_len: 0,
            left: 10,
        }
    }

    /// Takes header bytes from `input`; returns how many.
    fn parse(&mut self, input: &[u8]) -> Result<usize, Fault> {
        let mut at = 0;
        while at < input.len() && self.part != Part::Done {
            let rest = &input[at..];
            let (take, done) = match self.part {
                Part::Name | Part::Comment => {
                    memchr::memchr(0, rest).map_or((rest.len(), false), |nul| (nul + 1, true))
                }
                part => {
                    let take = self.left.min(rest.len());
                    let fixed = match part {
                        Part::Fixed => 10,
                        Part::ExtraLen => 2,
                        _ => 0, // skipped whole
                    };
                    for (index, &byte) in rest[..take.min(fixed)].iter().enumerate() {
                        let position = fixed - self.left + index;
                        let reason = match (part, position) {
                            (Part::Fixed, 0 | 1) if byte != [0x1f, 0x8b][position] => "not a gzip stream",
                            (Part::Fixed, 2) if byte != 8 => "compression method is not deflate",
                            (Part::Fixed, 3) if byte & 0xe0 != 0 => "reserved header flags set",
                            (Part::Fixed, 3) => {
                                self.flags = byte;
                                continue;
                            }
                            (Part::ExtraLen, _) => {
                                self.extra_len |= usize::from(byte) << (8 * position);
                                continue;
                            }
                            _ => continue,
                        };
                        let reason = format!("{reason} (header byte {position} is {byte:#04x})");
                        return Err(Fault {
                            at: (at + index) as i64,
                            reason,
                        });
                    }
                    self.left -= take;
                    (take, self.left == 0)
                }
            };
            at += take;
            if done {
                self.advance();
            }
        }
        Ok(at)
    }

    fn advance(&mut self) {
        const ORDER: [(Part, u8); 5] = [
            (Part::ExtraLen, 0x04),
            (Part::Extra, 0x04),
            (Part::Name, 0x08),
            (Part::Comment, 0x10),
            (Part::HeaderCrc, 0x02), // CRC-16 of the header: skipped, like the trailer
        ];
        self.part = ORDER
            .iter()
            .find(|&&(part, flag)| {
                part > self.part && self.flags & flag != 0 && (part != Part::Extra || self.extra_len > 0)
            })
            .map_or(Part::Done, |&(part, _)| part);
        self.left = match self.part {
            Part::ExtraLen | Part::HeaderCrc => 2,
            Part::Extra => self.extra_len,
            _ => 0,
        };
    }
}
