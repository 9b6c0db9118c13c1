//! HPACK (RFC 7541) header block decoder, one per direction of an HTTP/2 connection.
//!
//! Sans-IO: complete header blocks in, header lists out. Memory is bounded by
//! [`HpackLimits`]: the dynamic table never holds more than `max_table_size` bytes (RFC 7541
//! §4.1 size) and one decoded header list never exceeds `max_header_list_size` bytes
//! (RFC 9113 §6.5.2 size), whatever the peer sends; literal strings are at most as long as
//! the block that carries them.
//!
//! HPACK state is shared by every header block of a direction, so a block that fails to
//! decode leaves the table in a state the endpoints may not share (HTTP/2
//! COMPRESSION_ERROR). After an error the caller must stop inspecting that connection (relay
//! it or drop it, as policy says); the decoder refuses every later block with
//! [`HpackProblem::EarlierFailure`].

use std::collections::VecDeque;
use std::fmt;

#[cfg(test)]
mod tests;

/// What one decoder may hold and produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HpackLimits {
    /// The largest dynamic table the peer's encoder may ask for. A peer that announces a
    /// larger SETTINGS_HEADER_TABLE_SIZE and then uses it fails the connection's
    /// inspection. Values below the protocol default (4096) are raised to it, because an
    /// encoder may fill 4096 bytes without announcing anything.
    pub max_table_size: usize,
    /// The largest decoded header list, counted as RFC 9113 §6.5.2 counts it: name + value
    /// + 32 bytes per field. Caps what indexed fields can amplify a small block into.
    pub max_header_list_size: usize,
}

impl Default for HpackLimits {
    /// 64 KiB of table as Suricata allows, 100 KiB of header list.
    fn default() -> Self {
        HpackLimits {
            max_table_size: 64 * 1024,
            max_header_list_size: 100 * 1024,
        }
    }
}

/// One decoded header field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderField {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
    /// Sent as "never indexed" (RFC 7541 §6.2.3): the sender marked it sensitive, e.g. a
    /// cookie or an authorization, so logs should redact it.
    pub sensitive: bool,
}

/// Why a header block could not be decoded, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HpackError {
    /// Offset in the block (0 = its first byte) of the representation, integer or string
    /// that was wrong.
    pub offset: usize,
    pub problem: HpackProblem,
}

impl fmt::Display for HpackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problem {
            // Not about any byte of this block.
            HpackProblem::EarlierFailure => write!(f, "HPACK: {}", self.problem),
            _ => write!(f, "HPACK: {} (byte {} of the header block)", self.problem, self.offset),
        }
    }
}

impl std::error::Error for HpackError {}

/// What was wrong with a header block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HpackProblem {
    #[error("the block ends inside an integer")]
    TruncatedInteger,
    #[error("a string literal declares {declared} bytes but the block has {available} left")]
    TruncatedString { declared: usize, available: usize },
    #[error("an integer is larger than 2^32-1 or encoded in more than 6 bytes")]
    IntegerTooLarge,
    #[error("index 0 names no table entry")]
    IndexZero,
    #[error(
        "index {index} is beyond the {} static and {dynamic_entries} dynamic entries",
        STATIC_TABLE.len()
    )]
    IndexOutOfRange { index: usize, dynamic_entries: usize },
    #[error("a Huffman-coded string contains the EOS symbol")]
    HuffmanEos,
    #[error("a Huffman-coded string ends with {bits} bits that form no symbol (padding is 7 bits at most)")]
    HuffmanPaddingTooLong { bits: u8 },
    #[error("a Huffman-coded string ends with padding that is not all ones")]
    HuffmanPaddingNotOnes,
    #[error("a dynamic table size update follows a header field (it belongs at the start of the block)")]
    TableSizeUpdateNotAtStart,
    #[error(
        "a dynamic table size update asks for {requested} bytes, above the {setting} of SETTINGS_HEADER_TABLE_SIZE"
    )]
    TableSizeAboveSetting { requested: usize, setting: usize },
    #[error("a dynamic table size update asks for {requested} bytes, above loupe's limit of {limit}")]
    TableSizeAboveLimit { requested: usize, limit: usize },
    #[error("SETTINGS_HEADER_TABLE_SIZE was lowered to {setting}, below the table's {capacity} bytes, but the block does not start with the dynamic table size update that must follow")]
    MissingTableSizeUpdate { setting: usize, capacity: usize },
    #[error("the decoded header list exceeds the limit of {limit} bytes (name + value + 32 per field)")]
    HeaderListTooLarge { limit: usize },
    #[error("the decoder failed on an earlier block of this connection, so its table is unknown")]
    EarlierFailure,
}

/// The HPACK decoder for one direction of one connection.
#[derive(Debug)]
pub struct HpackDecoder {
    limits: HpackLimits,
    /// SETTINGS_HEADER_TABLE_SIZE of the receiving endpoint: the encoder may size its
    /// table up to this.
    table_size_setting: usize,
    table: DynamicTable,
    /// The setting fell below the table's capacity, so the next block must start with a
    /// size update (RFC 7541 §4.2).
    size_update_required: bool,
    failed: bool,
}

/// The protocol's SETTINGS_HEADER_TABLE_SIZE before any SETTINGS frame (RFC 9113 §6.5.2).
const DEFAULT_TABLE_SIZE: usize = 4096;

/// Bytes RFC 7541 §4.1 counts per table entry besides its name and value (and RFC 9113
/// §6.5.2 per header field).
const ENTRY_OVERHEAD: usize = 32;

impl HpackDecoder {
    pub fn new(limits: HpackLimits) -> Self {
        let limits = HpackLimits {
            max_table_size: limits.max_table_size.max(DEFAULT_TABLE_SIZE),
            ..limits
        };
        HpackDecoder {
            limits,
            table_size_setting: DEFAULT_TABLE_SIZE,
            table: DynamicTable::new(DEFAULT_TABLE_SIZE),
            size_update_required: false,
            failed: false,
        }
    }

    /// The SETTINGS_HEADER_TABLE_SIZE that the receiving endpoint of this direction
    /// announced, once the sending endpoint has acknowledged it (its SETTINGS ACK seen in
    /// this direction). The encoder may then use up to min(this, `max_table_size`); a
    /// value below the current table makes the next block start with a size update.
    pub fn set_max_table_size(&mut self, size: usize) {
        self.table_size_setting = size;
        if size < self.table.capacity {
            self.size_update_required = true;
        }
    }

    /// Decodes one complete header block (HEADERS or PUSH_PROMISE payload and its
    /// CONTINUATION payloads concatenated, padding and priority already removed).
    ///
    /// On error the connection's HPACK state is unknowable: stop inspecting the
    /// connection. This decoder refuses every later block.
    pub fn decode(&mut self, block: &[u8]) -> Result<Vec<HeaderField>, HpackError> {
        if self.failed {
            return Err(HpackError {
                offset: 0,
                problem: HpackProblem::EarlierFailure,
            });
        }
        let result = self.decode_block(block);
        self.failed = result.is_err();
        result
    }

    /// Bytes the dynamic table holds now (RFC 7541 §4.1 size), for memory accounting.
    pub fn table_size(&self) -> usize {
        self.table.size
    }

    fn decode_block(&mut self, block: &[u8]) -> Result<Vec<HeaderField>, HpackError> {
        let mut reader = BlockReader { block, pos: 0 };
        let mut fields = Vec::new();
        let mut list_size = 0usize;
        while let Some(first) = reader.peek() {
            let start = reader.pos;
            let fail = |problem| HpackError { offset: start, problem };
            if first & 0b1110_0000 == 0b0010_0000 {
                // RFC 7541 §6.3: dynamic table size update.
                if !fields.is_empty() {
                    return Err(fail(HpackProblem::TableSizeUpdateNotAtStart));
                }
                let requested = reader.integer(5)?;
                self.update_table_size(requested).map_err(fail)?;
                continue;
            }
            if self.size_update_required {
                return Err(fail(self.missing_size_update()));
            }
            let budget = self.limits.max_header_list_size.saturating_sub(list_size);
            let too_large = HpackProblem::HeaderListTooLarge {
                limit: self.limits.max_header_list_size,
            };
            let field = if first & 0b1000_0000 != 0 {
                // §6.1: indexed header field.
                let index = reader.integer(7)?;
                let (name, value) = self.lookup(index).map_err(fail)?;
                if field_size(name.len(), value.len()) > budget {
                    return Err(fail(too_large));
                }
                HeaderField {
                    name: name.to_vec(),
                    value: value.to_vec(),
                    sensitive: false,
                }
            } else {
                // §6.2: literal header field; the first byte says whether it enters the
                // table (01xxxxxx, 6-bit index), is never indexed (0001xxxx) or neither
                // (0000xxxx), the last two with a 4-bit index.
                let (prefix_bits, add_to_table, sensitive) = if first & 0b0100_0000 != 0 {
                    (6, true, false)
                } else {
                    (4, false, first & 0b0001_0000 != 0)
                };
                let name_index = reader.integer(prefix_bits)?;
                // Budgets keep the strings from outgrowing the header list limit while they
                // are decoded, before the field's overhead is added.
                let string_budget = budget.saturating_sub(ENTRY_OVERHEAD);
                let (name, value) = if name_index == 0 {
                    let name = reader.string(string_budget, too_large)?;
                    let value_budget = string_budget.saturating_sub(name.len());
                    (name, reader.string(value_budget, too_large)?)
                } else {
                    // Copied (at most one table entry) before the insertion below, which may
                    // evict the entry named.
                    let name = self.lookup(name_index).map_err(fail)?.0.to_vec();
                    let value_budget = string_budget.saturating_sub(name.len());
                    (name, reader.string(value_budget, too_large)?)
                };
                if field_size(name.len(), value.len()) > budget {
                    return Err(fail(too_large));
                }
                if add_to_table {
                    self.table.insert(&name, &value);
                }
                HeaderField { name, value, sensitive }
            };
            list_size += field_size(field.name.len(), field.value.len());
            fields.push(field);
        }
        if self.size_update_required {
            return Err(HpackError {
                offset: block.len(),
                problem: self.missing_size_update(),
            });
        }
        Ok(fields)
    }

    fn update_table_size(&mut self, requested: usize) -> Result<(), HpackProblem> {
        if requested > self.table_size_setting {
            return Err(HpackProblem::TableSizeAboveSetting {
                requested,
                setting: self.table_size_setting,
            });
        }
        if requested > self.limits.max_table_size {
            return Err(HpackProblem::TableSizeAboveLimit {
                requested,
                limit: self.limits.max_table_size,
            });
        }
        self.table.set_capacity(requested);
        self.size_update_required = false;
        Ok(())
    }

    fn missing_size_update(&self) -> HpackProblem {
        HpackProblem::MissingTableSizeUpdate {
            setting: self.table_size_setting,
            capacity: self.table.capacity,
        }
    }

    /// The entry at a 1-based index into the static table followed by the dynamic one
    /// (RFC 7541 §2.3.3).
    fn lookup(&self, index: usize) -> Result<(&[u8], &[u8]), HpackProblem> {
        if index == 0 {
            return Err(HpackProblem::IndexZero);
        }
        let found = match index.checked_sub(STATIC_TABLE.len() + 1) {
            None => STATIC_TABLE.get(index - 1).copied(),
            Some(dynamic_index) => self.table.get(dynamic_index),
        };
        found.ok_or(HpackProblem::IndexOutOfRange {
            index,
            dynamic_entries: self.table.entries.len(),
        })
    }
}

/// A header field's size as RFC 9113 §6.5.2 counts it for the header list limit.
fn field_size(name_len: usize, value_len: usize) -> usize {
    name_len.saturating_add(value_len).saturating_add(ENTRY_OVERHEAD)
}

/// The dynamic table (RFC 7541 §2.3.2, §4): newest entry first, evicted from the back.
#[derive(Debug)]
struct DynamicTable {
    /// Each entry's name and value in one allocation, with the name's length.
    entries: VecDeque<(Box<[u8]>, usize)>,
    /// Sum of the entries' §4.1 sizes; never above `capacity`.
    size: usize,
    /// The maximum size the encoder last set.
    capacity: usize,
}

impl DynamicTable {
    fn new(capacity: usize) -> Self {
        DynamicTable {
            entries: VecDeque::new(),
            size: 0,
            capacity,
        }
    }

    fn get(&self, index: usize) -> Option<(&[u8], &[u8])> {
        let (bytes, name_len) = self.entries.get(index)?;
        Some(bytes.split_at(*name_len))
    }

    fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
        self.evict_down_to(capacity);
    }

    /// §4.4: room is made by evicting the oldest entries; an entry larger than the whole
    /// table leaves it empty and is not added.
    fn insert(&mut self, name: &[u8], value: &[u8]) {
        let entry_size = field_size(name.len(), value.len());
        if entry_size > self.capacity {
            self.evict_down_to(0);
            return;
        }
        self.evict_down_to(self.capacity - entry_size);
        let bytes: Box<[u8]> = [name, value].concat().into_boxed_slice();
        self.entries.push_front((bytes, name.len()));
        self.size += entry_size;
    }

    fn evict_down_to(&mut self, target: usize) {
        while self.size > target {
            let Some((bytes, _)) = self.entries.pop_back() else {
                break;
            };
            self.size -= bytes.len() + ENTRY_OVERHEAD;
        }
    }
}

/// A cursor over one header block; errors carry the offset where the item began.
struct BlockReader<'a> {
    block: &'a [u8],
    pos: usize,
}

/// The largest integer accepted: every legitimate one (an index, a string length, a table
/// size from a 32-bit SETTINGS value) fits in 32 bits.
const MAX_INTEGER: u64 = u32::MAX as u64;

impl BlockReader<'_> {
    fn peek(&self) -> Option<u8> {
        self.block.get(self.pos).copied()
    }

    fn next_byte(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.pos += 1;
        Some(byte)
    }

    /// An integer with an N-bit prefix (RFC 7541 §5.1); the prefix's first byte's high bits
    /// belong to the caller.
    fn integer(&mut self, prefix_bits: u8) -> Result<usize, HpackError> {
        let start = self.pos;
        let fail = |problem| HpackError { offset: start, problem };
        let prefix_max = u8::MAX >> (8 - prefix_bits);
        let first = self.next_byte().ok_or(fail(HpackProblem::TruncatedInteger))?;
        let mut value = u64::from(first & prefix_max);
        if value == u64::from(prefix_max) {
            // Continuation bytes, 7 bits each, least significant first. Five of them reach
            // past 2^32, so a sixth (e.g. zero padding) is refused rather than looped over.
            let mut shift = 0u32;
            loop {
                let byte = self.next_byte().ok_or(fail(HpackProblem::TruncatedInteger))?;
                if shift > 28 {
                    return Err(fail(HpackProblem::IntegerTooLarge));
                }
                value += u64::from(byte & 0x7f) << shift;
                if value > MAX_INTEGER {
                    return Err(fail(HpackProblem::IntegerTooLarge));
                }
                if byte & 0x80 == 0 {
                    break;
                }
                shift += 7;
            }
        }
        usize::try_from(value).map_err(|_| fail(HpackProblem::IntegerTooLarge))
    }

    /// A string literal (RFC 7541 §5.2), refused with `too_large` once it decodes to more
    /// than `budget` bytes.
    fn string(&mut self, budget: usize, too_large: HpackProblem) -> Result<Vec<u8>, HpackError> {
        let start = self.pos;
        let fail = |problem| HpackError { offset: start, problem };
        let huffman = self.peek().is_some_and(|byte| byte & 0x80 != 0);
        let declared = self.integer(7)?;
        let available = self.block.len() - self.pos;
        if declared > available {
            return Err(fail(HpackProblem::TruncatedString { declared, available }));
        }
        let raw = &self.block[self.pos..self.pos + declared];
        self.pos += declared;
        if huffman {
            huffman_decode(raw, budget).map_err(|fault| {
                fail(match fault {
                    HuffmanFault::Eos => HpackProblem::HuffmanEos,
                    HuffmanFault::PaddingTooLong { bits } => HpackProblem::HuffmanPaddingTooLong { bits },
                    HuffmanFault::PaddingNotOnes => HpackProblem::HuffmanPaddingNotOnes,
                    HuffmanFault::OverBudget => too_large,
                })
            })
        } else if raw.len() > budget {
            Err(fail(too_large))
        } else {
            Ok(raw.to_vec())
        }
    }
}

/// RFC 7541 Appendix A.
static STATIC_TABLE: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// Code length in bits of each symbol of the RFC 7541 Appendix B Huffman code: bytes 0 to
/// 255, then EOS (256). The code is canonical (codes of one length are consecutive, in
/// symbol order, after all shorter ones), so the lengths alone define it.
static HUFFMAN_CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, // 0..16
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 16..32
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, // ' '..'0'
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, // '0'..'@'
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, // '@'..'P'
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, // 'P'..'`'
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, // '`'..'p'
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, // 'p'..128
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, // 128..144
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 144..160
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, // 160..176
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 176..192
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, // 192..208
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 208..224
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, // 224..240
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 240..256
    30, // EOS
];

const HUFFMAN_EOS: u16 = 256;
const HUFFMAN_MAX_CODE_LENGTH: usize = 30;

/// The canonical code's decoding tables, per code length.
struct CanonicalHuffman {
    /// The first (smallest) code of each length.
    first_code: [u32; HUFFMAN_MAX_CODE_LENGTH + 1],
    /// How many symbols have each length.
    count: [u32; HUFFMAN_MAX_CODE_LENGTH + 1],
    /// Where each length's symbols start in `symbols`.
    first_index: [usize; HUFFMAN_MAX_CODE_LENGTH + 1],
    /// Symbols sorted by (code length, symbol), i.e. by code.
    symbols: [u16; 257],
}

const fn build_canonical_huffman() -> CanonicalHuffman {
    let mut count = [0u32; HUFFMAN_MAX_CODE_LENGTH + 1];
    let mut symbol = 0;
    while symbol < 257 {
        count[HUFFMAN_CODE_LENGTHS[symbol] as usize] += 1;
        symbol += 1;
    }
    let mut first_code = [0u32; HUFFMAN_MAX_CODE_LENGTH + 1];
    let mut first_index = [0usize; HUFFMAN_MAX_CODE_LENGTH + 1];
    let mut code = 0u32;
    let mut index = 0usize;
    let mut length = 1;
    while length <= HUFFMAN_MAX_CODE_LENGTH {
        code = (code + count[length - 1]) << 1;
        first_code[length] = code;
        first_index[length] = index;
        index += count[length] as usize;
        length += 1;
    }
    let mut symbols = [0u16; 257];
    let mut next_index = first_index;
    symbol = 0;
    while symbol < 257 {
        let length = HUFFMAN_CODE_LENGTHS[symbol] as usize;
        symbols[next_index[length]] = symbol as u16;
        next_index[length] += 1;
        symbol += 1;
    }
    CanonicalHuffman {
        first_code,
        count,
        first_index,
        symbols,
    }
}

static HUFFMAN: CanonicalHuffman = build_canonical_huffman();

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HuffmanFault {
    Eos,
    PaddingTooLong { bits: u8 },
    PaddingNotOnes,
    OverBudget,
}

/// Decodes a Huffman-coded string (RFC 7541 §5.2), one bit at a time: header strings are
/// short, and this needs no table beyond the canonical code's 31 lengths.
fn huffman_decode(coded: &[u8], budget: usize) -> Result<Vec<u8>, HuffmanFault> {
    // The shortest code is 5 bits, so the output is at most 8/5 of the input.
    let mut decoded = Vec::with_capacity(budget.min(coded.len() * 8 / 5));
    // The bits read since the last symbol, and how many.
    let mut code = 0u32;
    let mut length = 0usize;
    for &byte in coded {
        for bit_index in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> bit_index) & 1);
            length += 1;
            let offset = code.wrapping_sub(HUFFMAN.first_code[length]);
            if offset < HUFFMAN.count[length] {
                let symbol = HUFFMAN.symbols[HUFFMAN.first_index[length] + offset as usize];
                if symbol == HUFFMAN_EOS {
                    return Err(HuffmanFault::Eos);
                }
                if decoded.len() == budget {
                    return Err(HuffmanFault::OverBudget);
                }
                decoded.push(symbol as u8);
                code = 0;
                length = 0;
            } else if length == HUFFMAN_MAX_CODE_LENGTH {
                // Every 30-bit string starts with a code (the code is complete), so this
                // cannot happen; refusing keeps `length` inside the tables regardless.
                return Err(HuffmanFault::PaddingTooLong { bits: 30 });
            }
        }
    }
    // §5.2: what is left must be a prefix of EOS (all ones), shorter than 8 bits.
    if length > 7 {
        return Err(HuffmanFault::PaddingTooLong { bits: length as u8 });
    }
    if code != (1u32 << length) - 1 {
        return Err(HuffmanFault::PaddingNotOnes);
    }
    Ok(decoded)
}
