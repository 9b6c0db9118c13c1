//! HPACK (RFC 7541) header block decoder, one per direction of an HTTP/2 connection, and
//! [`HpackEncoder`], an encoder that never adds to the peer's dynamic table (loupe uses it
//! when it must write header blocks itself: see `inspect::http2`).
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

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::hash::BuildHasher;

#[cfg(test)]
mod tests;

/// What one decoder may hold and produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HpackLimits {
    /// The largest dynamic table the peer's encoder may ask for. A peer that announces a
    /// larger SETTINGS_HEADER_TABLE_SIZE and then uses it fails the connection's
    /// inspection. Values below the protocol default (4096) are raised to it, because an
    /// encoder may fill 4096 bytes without announcing anything; values above 1 GiB are
    /// lowered to it (the table's offsets are 32-bit).
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderField {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
    /// Sent as "never indexed" (RFC 7541 §6.2.3): the sender marked it sensitive, e.g. a
    /// cookie or an authorization, so logs should redact it.
    pub sensitive: bool,
}

impl HeaderField {
    pub fn as_ref(&self) -> FieldRef<'_> {
        FieldRef {
            name: &self.name,
            value: &self.value,
            sensitive: self.sensitive,
        }
    }
}

/// One field of a [`FieldList`], borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldRef<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
    pub sensitive: bool,
}

/// A header list as the decoder writes it: every name and value back to back in one
/// buffer, and where each ends: two allocations for the whole list, where a
/// [`HeaderField`] per field takes two per field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldList {
    bytes: Vec<u8>,
    fields: Vec<FieldEnds>,
}

/// Where a field's name and value end in [`FieldList::bytes`]; its name starts where the
/// previous field's value ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FieldEnds {
    name_end: u32,
    value_end: u32,
    sensitive: bool,
}

impl FieldList {
    pub const fn new() -> FieldList {
        FieldList {
            bytes: Vec::new(),
            fields: Vec::new(),
        }
    }

    pub fn to_fields(&self) -> Vec<HeaderField> {
        self.iter()
            .map(|field| HeaderField {
                name: field.name.to_vec(),
                value: field.value.to_vec(),
                sensitive: field.sensitive,
            })
            .collect()
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.fields.clear();
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Closes the field whose name ends at `name_end` and whose value runs to the end of
    /// the bytes appended so far.
    fn end_field(&mut self, name_end: u32, sensitive: bool) {
        let value_end = self.bytes.len() as u32;
        self.fields.push(FieldEnds {
            name_end,
            value_end,
            sensitive,
        });
    }

    /// Where the next field's name starts.
    fn next_start(&self) -> usize {
        self.fields.last().map_or(0, |ends| ends.value_end as usize)
    }

    /// Each field, in order.
    pub fn iter(&self) -> impl Iterator<Item = FieldRef<'_>> + '_ {
        let mut start = 0;
        self.fields.iter().map(move |ends| {
            let (name_end, value_end) = (ends.name_end as usize, ends.value_end as usize);
            let field = FieldRef {
                name: &self.bytes[start..name_end],
                value: &self.bytes[name_end..value_end],
                sensitive: ends.sensitive,
            };
            start = value_end;
            field
        })
    }

    /// The value of the first field named `name`.
    pub fn value_of(&self, name: &[u8]) -> Option<&[u8]> {
        self.iter().find(|field| field.name == name).map(|field| field.value)
    }

    /// Bytes held on the heap, for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + self.fields.capacity() * std::mem::size_of::<FieldEnds>()
    }
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

/// The largest table a decoder accepts whatever its limits say: the table's buffer (at
/// most twice this) keeps its offsets in 32 bits. The configuration allows 16 MiB.
const MAX_TABLE_SIZE: usize = 1 << 30;

/// Bytes RFC 7541 §4.1 counts per table entry besides its name and value (and RFC 9113
/// §6.5.2 per header field).
const ENTRY_OVERHEAD: usize = 32;

impl HpackDecoder {
    pub fn new(limits: HpackLimits) -> Self {
        let limits = HpackLimits {
            max_table_size: limits.max_table_size.clamp(DEFAULT_TABLE_SIZE, MAX_TABLE_SIZE),
            // A decoded list's offsets are u32 (see `FieldList`).
            max_header_list_size: limits.max_header_list_size.min(u32::MAX as usize),
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
        let mut fields = FieldList::new();
        self.decode_into(block, &mut fields)?;
        Ok(fields.to_fields())
    }

    /// As [`HpackDecoder::decode`], into `fields` (emptied first; its buffers are reused,
    /// so a connection's blocks allocate only when one is larger than any before). On
    /// error `fields` holds a part of the block.
    pub fn decode_into(&mut self, block: &[u8], fields: &mut FieldList) -> Result<(), HpackError> {
        self.decode_into_keeping(block, fields, |_| true)
    }

    /// As [`HpackDecoder::decode_into`], but the value of a literal field that does not
    /// enter the dynamic table is decoded only when `keep_value(name)` says so; otherwise
    /// it is left empty, unchecked (a Huffman fault in it goes unnoticed), and counts
    /// toward the header list limit with its encoded length. For a block whose reader
    /// needs a few fields (a response head: `:status`, `content-type`) and relays the
    /// block verbatim: nginx 1.22, for one, sends `etag` and `accept-ranges` as such
    /// literals in every response (and `date`, `server`, `content-type`… as literals
    /// entering the table, which must be decoded).
    pub fn decode_into_keeping(
        &mut self,
        block: &[u8],
        fields: &mut FieldList,
        keep_value: impl Fn(&[u8]) -> bool,
    ) -> Result<(), HpackError> {
        fields.clear();
        if self.failed {
            return Err(HpackError {
                offset: 0,
                problem: HpackProblem::EarlierFailure,
            });
        }
        let result = self.decode_block(block, fields, keep_value);
        self.failed = result.is_err();
        result
    }

    /// Bytes the dynamic table holds now (RFC 7541 §4.1 size), for memory accounting.
    pub fn table_size(&self) -> usize {
        self.table.size
    }

    /// The dynamic table's entries as (name, value), newest first: the first is index 62.
    pub fn dynamic_entries(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        (0..self.table.entries.len()).filter_map(|index| self.table.get(index))
    }

    /// How many entries have entered the dynamic table since the decoder was made. The
    /// difference across one block tells how many of the newest entries that block added,
    /// which is how a caller finds the table as it stood before the block.
    pub fn insertions(&self) -> u64 {
        self.table.insertions
    }

    fn decode_block(
        &mut self,
        block: &[u8],
        fields: &mut FieldList,
        keep_value: impl Fn(&[u8]) -> bool,
    ) -> Result<(), HpackError> {
        let mut reader = BlockReader { block, pos: 0 };
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
            let name_start = fields.next_start();
            // The field's name and value lengths (the value's decoded or, skipped, encoded).
            let (name_len, value_len, sensitive) = if first & 0b1000_0000 != 0 {
                // §6.1: indexed header field.
                let index = reader.integer(7)?;
                let (name, value) = self.lookup(index).map_err(fail)?;
                if field_size(name.len(), value.len()) > budget {
                    return Err(fail(too_large));
                }
                fields.bytes.extend_from_slice(name);
                fields.bytes.extend_from_slice(value);
                (name.len(), value.len(), false)
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
                if name_index == 0 {
                    reader.string_into(string_budget, too_large, Memoize::Yes, &mut fields.bytes)?;
                } else {
                    // Copied (at most one table entry) before the insertion below, which may
                    // evict the entry named.
                    fields.bytes.extend_from_slice(self.lookup(name_index).map_err(fail)?.0);
                }
                let name_len = fields.bytes.len() - name_start;
                let value_budget = string_budget.saturating_sub(name_len);
                let value_len = if add_to_table || keep_value(&fields.bytes[name_start..]) {
                    let memoize = if sensitive || may_carry_credentials(&fields.bytes[name_start..]) {
                        Memoize::No
                    } else {
                        Memoize::Yes
                    };
                    reader.string_into(value_budget, too_large, memoize, &mut fields.bytes)?;
                    fields.bytes.len() - name_start - name_len
                } else {
                    reader.skip_string()?
                };
                if field_size(name_len, value_len) > budget {
                    return Err(fail(too_large));
                }
                if add_to_table {
                    let (name, value) = fields.bytes[name_start..].split_at(name_len);
                    self.table.insert(name, value);
                }
                (name_len, value_len, sensitive)
            };
            fields.end_field((name_start + name_len) as u32, sensitive);
            list_size += field_size(name_len, value_len);
        }
        if self.size_update_required {
            return Err(HpackError {
                offset: block.len(),
                problem: self.missing_size_update(),
            });
        }
        Ok(())
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
///
/// Every entry's name and value live in one byte buffer, oldest first, and an entry is
/// appended at its end. Evicting only drops the entry's record; the dead bytes at the
/// buffer's start are reclaimed by moving the live ones down once the buffer would pass
/// twice the table's capacity. So a peer that adds `date` or `etag` with every
/// message costs no allocation or free per field, and lookups touch one buffer instead
/// of one heap block per entry (the profile showed those blocks' cache misses).
#[derive(Debug)]
struct DynamicTable {
    /// Where each entry's bytes are in `bytes`, newest first; starts ascend from back to
    /// front.
    entries: VecDeque<EntrySpan>,
    bytes: Vec<u8>,
    /// Sum of the entries' §4.1 sizes; never above `capacity`.
    size: usize,
    /// The maximum size the encoder last set.
    capacity: usize,
    /// Entries added since the table was made (evicted or not).
    insertions: u64,
}

/// One entry's name and value, consecutive in [`DynamicTable::bytes`]. Offsets are u32
/// (a decoder's table is at most [`MAX_TABLE_SIZE`], 1 GiB, so its buffer at most 2 GiB;
/// an encoder's holds a decoder's entries): five records to a cache line instead of two
/// and a half, so a lookup or an eviction loads fewer lines when the connection's turn
/// comes round again and its table has gone cold.
#[derive(Debug, Clone, Copy)]
struct EntrySpan {
    start: u32,
    name_len: u32,
    value_len: u32,
}

impl EntrySpan {
    fn start(&self) -> usize {
        self.start as usize
    }

    fn name_len(&self) -> usize {
        self.name_len as usize
    }

    fn value_len(&self) -> usize {
        self.value_len as usize
    }

    fn end(&self) -> usize {
        self.start() + self.name_len() + self.value_len()
    }
}

impl DynamicTable {
    fn new(capacity: usize) -> Self {
        DynamicTable {
            entries: VecDeque::new(),
            bytes: Vec::new(),
            size: 0,
            capacity,
            insertions: 0,
        }
    }

    fn get(&self, index: usize) -> Option<(&[u8], &[u8])> {
        let span = self.entries.get(index)?;
        let bytes = &self.bytes[span.start()..span.end()];
        Some(bytes.split_at(span.name_len()))
    }

    fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
        self.evict_down_to(capacity);
        if self.bytes.len() > self.buffer_limit() {
            self.compact();
        }
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
        if self.bytes.len() + name.len() + value.len() > self.buffer_limit() {
            self.compact();
        }
        self.append_newest(name, value);
        self.insertions += 1;
    }

    /// The most `bytes` may hold: twice the capacity, so compaction (which moves at most
    /// a capacity of live bytes) runs at most once per capacity of bytes inserted.
    fn buffer_limit(&self) -> usize {
        self.capacity.saturating_mul(2)
    }

    /// Adds an entry as the newest without evicting anything.
    fn append_newest(&mut self, name: &[u8], value: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(name);
        self.bytes.extend_from_slice(value);
        // In range: see `EntrySpan`.
        self.entries.push_front(EntrySpan {
            start: start as u32,
            name_len: name.len() as u32,
            value_len: value.len() as u32,
        });
        self.size = self.size.saturating_add(field_size(name.len(), value.len()));
    }

    /// Moves the live entries' bytes to the buffer's start, oldest first. The live bytes
    /// are at most `capacity`, so the buffer then has room for any entry that fits the
    /// table without passing twice the capacity.
    fn compact(&mut self) {
        let mut packed = 0;
        for span in self.entries.iter_mut().rev() {
            let end = span.end();
            // Starts ascend from the oldest, so the destination never overtakes a live
            // byte not yet moved.
            self.bytes.copy_within(span.start()..end, packed);
            span.start = packed as u32;
            packed += span.name_len() + span.value_len();
        }
        self.bytes.truncate(packed);
    }

    fn evict_down_to(&mut self, target: usize) {
        while self.size > target {
            let Some(span) = self.entries.pop_back() else {
                break;
            };
            self.size -= field_size(span.name_len(), span.value_len());
        }
        if self.entries.is_empty() {
            self.bytes.clear();
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

    /// Steps over a string without decoding it; returns its encoded length.
    fn skip_string(&mut self) -> Result<usize, HpackError> {
        let start = self.pos;
        let declared = self.integer(7)?;
        let available = self.block.len() - self.pos;
        if declared > available {
            return Err(HpackError {
                offset: start,
                problem: HpackProblem::TruncatedString { declared, available },
            });
        }
        self.pos += declared;
        Ok(declared)
    }

    /// A string literal (RFC 7541 §5.2), refused with `too_large` once it decodes to more
    /// than `budget` bytes.
    /// Appends the string's octets (Huffman-decoded when so marked) to `out`.
    fn string_into(
        &mut self,
        budget: usize,
        too_large: HpackProblem,
        memoize: Memoize,
        out: &mut Vec<u8>,
    ) -> Result<(), HpackError> {
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
            let decoded = match memoize {
                Memoize::Yes => huffman_decode_memoized(raw, budget, out),
                Memoize::No => huffman_decode(raw, budget, out),
            };
            decoded.map_err(|fault| {
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
            out.extend_from_slice(raw);
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------
// Encoder

/// An HPACK encoder that never inserts into the peer's dynamic table.
///
/// Each field is written as an indexed field when the static table, or a dynamic entry the
/// encoder knows the peer's decoder holds, has it whole; otherwise as a literal without
/// indexing (naming a table entry when one has the name); a field the sender marked
/// sensitive stays "never indexed" (RFC 7541 §6.2.3). Strings are Huffman-coded when that
/// is shorter. Since nothing is ever added, the peer's table only changes through the
/// dynamic table size updates this encoder writes, and any number of blocks may be encoded
/// without knowing what the peer's own encoder state is.
#[derive(Debug)]
pub struct HpackEncoder {
    /// The newest entries of the peer decoder's table, which blocks may reference; the
    /// peer may hold older ones too, unknown and never referenced. `capacity` is the
    /// maximum size the peer's table has as far as this encoder set it.
    table: DynamicTable,
    /// A dynamic table size update the next block must start with.
    pending_size_update: Option<usize>,
}

impl Default for HpackEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl HpackEncoder {
    /// An encoder that references the static table only (the peer's dynamic table is
    /// unknown or empty) and writes no size update.
    pub fn new() -> Self {
        HpackEncoder {
            table: DynamicTable::new(DEFAULT_TABLE_SIZE),
            pending_size_update: None,
        }
    }

    /// Takes over a direction whose blocks another encoder wrote until now. `entries` are
    /// (name, value) of the peer decoder's table, newest first, as far as known (a prefix
    /// of it: any older entries the peer holds are simply never referenced). The first
    /// block starts with a dynamic table size update to `capacity`, which must be at most
    /// the peer's SETTINGS_HEADER_TABLE_SIZE in effect: this meets any update the peer
    /// awaits, and evicts the known entries that would not fit as the peer evicts them.
    pub fn resume<'a>(entries: impl IntoIterator<Item = (&'a [u8], &'a [u8])>, capacity: usize) -> Self {
        let mut table = DynamicTable::new(usize::MAX);
        // Given newest first; appended oldest first, as the peer added them.
        let entries: Vec<(&[u8], &[u8])> = entries.into_iter().collect();
        for (name, value) in entries.into_iter().rev() {
            table.append_newest(name, value);
        }
        table.set_capacity(capacity);
        HpackEncoder {
            table,
            pending_size_update: Some(capacity),
        }
    }

    /// The peer's SETTINGS_HEADER_TABLE_SIZE changed, acknowledged (the decoder side's
    /// [`HpackDecoder::set_max_table_size`]). A value below the table's current maximum
    /// makes the next block start with a size update to it (RFC 7541 §4.2); a larger one
    /// changes nothing, since this encoder has no use for more room.
    pub fn set_max_table_size(&mut self, size: usize) {
        if size < self.table.capacity {
            self.table.set_capacity(size);
            self.pending_size_update = Some(size);
        }
    }

    /// Bytes of the known dynamic entries (RFC 7541 §4.1 size), for memory accounting.
    pub fn table_size(&self) -> usize {
        self.table.size
    }

    /// Appends one header block carrying `fields` to `out`.
    pub fn encode(&mut self, fields: &[HeaderField], out: &mut Vec<u8>) {
        self.encode_fields(fields.iter().map(HeaderField::as_ref), out);
    }

    /// As [`HpackEncoder::encode`], from a decoded list.
    pub fn encode_list(&mut self, fields: &FieldList, out: &mut Vec<u8>) {
        self.encode_fields(fields.iter(), out);
    }

    fn encode_fields<'a>(&mut self, fields: impl Iterator<Item = FieldRef<'a>>, out: &mut Vec<u8>) {
        if let Some(size) = self.pending_size_update.take() {
            encode_integer(out, 0b0010_0000, 5, size);
        }
        for field in fields {
            self.encode_field(field, out);
        }
    }

    fn encode_field(&self, field: FieldRef<'_>, out: &mut Vec<u8>) {
        let (whole, name_index) = self.find(field.name, field.value);
        if field.sensitive {
            // §6.2.3: never indexed, whatever the tables hold, so that intermediaries
            // downstream keep it out of their tables too.
            encode_literal(out, 0b0001_0000, name_index, field);
            return;
        }
        match whole {
            Some(index) => encode_integer(out, 0b1000_0000, 7, index),
            None => encode_literal(out, 0b0000_0000, name_index, field),
        }
    }

    /// The 1-based index of an entry holding the whole field, and of one holding its
    /// name (0 = none); the static table is preferred, as it cannot be evicted.
    fn find(&self, name: &[u8], value: &[u8]) -> (Option<usize>, usize) {
        let mut name_index = 0;
        for (position, (entry_name, entry_value)) in STATIC_TABLE.iter().enumerate() {
            if *entry_name == name {
                if *entry_value == value {
                    return (Some(position + 1), position + 1);
                }
                if name_index == 0 {
                    name_index = position + 1;
                }
            }
        }
        for position in 0..self.table.entries.len() {
            let Some((entry_name, entry_value)) = self.table.get(position) else {
                break;
            };
            if entry_name == name {
                let index = STATIC_TABLE.len() + 1 + position;
                if entry_value == value {
                    return (Some(index), index);
                }
                if name_index == 0 {
                    name_index = index;
                }
            }
        }
        (None, name_index)
    }
}

/// A literal field (§6.2.2 or §6.2.3: 4-bit name index prefix): the name by index when
/// `name_index` is not 0, else as a string, then the value.
fn encode_literal(out: &mut Vec<u8>, flags: u8, name_index: usize, field: FieldRef<'_>) {
    encode_integer(out, flags, 4, name_index);
    if name_index == 0 {
        encode_string(out, field.name);
    }
    encode_string(out, field.value);
}

/// An integer with an N-bit prefix (§5.1); `flags` are the first byte's bits above it.
pub(crate) fn encode_integer(out: &mut Vec<u8>, flags: u8, prefix_bits: u8, value: usize) {
    let prefix_max = usize::from(u8::MAX >> (8 - prefix_bits));
    if value < prefix_max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | prefix_max as u8);
    let mut rest = value - prefix_max;
    while rest >= 0x80 {
        out.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// A string literal (§5.2), Huffman-coded when that is shorter.
fn encode_string(out: &mut Vec<u8>, text: &[u8]) {
    let coded_len = huffman_encoded_len(text);
    if coded_len < text.len() {
        encode_integer(out, 0b1000_0000, 7, coded_len);
        huffman_encode(text, out);
    } else {
        encode_integer(out, 0, 7, text.len());
        out.extend_from_slice(text);
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

/// Whether a decoded string may stay in this thread's [`HUFFMAN_MEMO`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Memoize {
    Yes,
    /// A value its sender marked never-indexed, or one that may hold a credential: it
    /// leaves no copy behind once its connection is gone.
    No,
}

/// Header fields whose values are or may hold credentials (a path's or a redirect's query
/// can carry a token), kept out of [`HUFFMAN_MEMO`] even when not marked never-indexed
/// (clients commonly index cookies). Values that repeat across responses are not among them.
fn may_carry_credentials(name: &[u8]) -> bool {
    [
        &b"cookie"[..],
        b"set-cookie",
        b"authorization",
        b"proxy-authorization",
        b":path",
        b"location",
    ]
    .iter()
    .any(|credential| name.eq_ignore_ascii_case(credential))
}

/// Coded strings shorter than this decode in a few table lookups: not worth a slot.
const MEMO_CODED_MIN: usize = 8;
/// Longer coded strings are decoded every time (a 29-character HTTP date codes to 22 bytes).
const MEMO_CODED_MAX: usize = 48;
/// The longest decoding of [`MEMO_CODED_MAX`] bytes: the shortest code is 5 bits.
const MEMO_DECODED_MAX: usize = MEMO_CODED_MAX * 8 / 5;
/// Slots per thread (a power of two): 256 × 126 bytes, about 32 KiB, within L2.
const MEMO_SLOTS: usize = 256;

/// One coded string and what it decodes to.
#[derive(Clone, Copy)]
struct MemoSlot {
    coded_len: u8,
    decoded_len: u8,
    coded: [u8; MEMO_CODED_MAX],
    decoded: [u8; MEMO_DECODED_MAX],
}

const EMPTY_MEMO_SLOT: MemoSlot = MemoSlot {
    coded_len: 0,
    decoded_len: 0,
    coded: [0; MEMO_CODED_MAX],
    decoded: [0; MEMO_DECODED_MAX],
};

thread_local! {
    /// Huffman-coded strings this thread decoded lately, direct-mapped by a hash of their
    /// coded bytes. Servers re-send the same values with every response as literals
    /// entering the table (nginx: `server`, `content-type`, `last-modified`, `date` within
    /// a second), so most of a response head's strings were decoded moments before, on
    /// this connection or another. Decoding is a pure function of the coded bytes, so a
    /// slot serves every connection; it holds only strings that decoded without a fault.
    static HUFFMAN_MEMO: RefCell<Vec<MemoSlot>> = const { RefCell::new(Vec::new()) };
}

fn memo_slot_index(coded: &[u8]) -> usize {
    // A fixed seed is enough: strings that collide only share a slot, which costs a decode.
    let hash = foldhash::fast::FixedState::with_seed(0).hash_one(coded);
    (hash >> (64 - MEMO_SLOTS.trailing_zeros())) as usize
}

/// [`huffman_decode`] through this thread's [`HUFFMAN_MEMO`]: same output, same faults.
/// A remembered string decoded whole without a fault, so the only fault it can meet
/// again is a smaller budget.
fn huffman_decode_memoized(coded: &[u8], budget: usize, decoded: &mut Vec<u8>) -> Result<(), HuffmanFault> {
    if !(MEMO_CODED_MIN..=MEMO_CODED_MAX).contains(&coded.len()) {
        return huffman_decode(coded, budget, decoded);
    }
    HUFFMAN_MEMO.with(|memo| {
        let mut slots = memo.borrow_mut();
        if slots.is_empty() {
            slots.resize(MEMO_SLOTS, EMPTY_MEMO_SLOT);
        }
        let slot = &mut slots[memo_slot_index(coded)];
        if usize::from(slot.coded_len) == coded.len() && slot.coded[..coded.len()] == *coded {
            let text = &slot.decoded[..usize::from(slot.decoded_len)];
            if text.len() > budget {
                return Err(HuffmanFault::OverBudget);
            }
            decoded.extend_from_slice(text);
            return Ok(());
        }
        let start = decoded.len();
        huffman_decode(coded, budget, decoded)?;
        let text = &decoded[start..];
        slot.coded[..coded.len()].copy_from_slice(coded);
        slot.coded_len = coded.len() as u8;
        slot.decoded[..text.len()].copy_from_slice(text);
        slot.decoded_len = text.len() as u8;
        Ok(())
    })
}

/// Decodes a Huffman-coded string (RFC 7541 §5.2), appending the decoded octets to
/// `decoded` (at most `budget` of them).
///
/// Reads the input through a 64-bit window: one lookup of its top 12 bits gives the code of
/// up to 12 bits they start with (every letter, digit and common punctuation), and the
/// next one too when both fit; a longer code is found by the canonical code's first code
/// per length. The profile of the HTTP/2 bench put the
/// bit-by-bit decoder first among inspection's costs, and later the one-code-per-lookup
/// one at a quarter of the HTTP/2 engine's time against nginx, which adds five
/// Huffman-coded values to the table with every response.
fn huffman_decode(coded: &[u8], budget: usize, decoded: &mut Vec<u8>) -> Result<(), HuffmanFault> {
    // The shortest code is 5 bits, so the output is at most 8/5 of the input.
    decoded.reserve(budget.min(coded.len() * 8 / 5));
    let budget = decoded.len().saturating_add(budget);
    // Unread bits, most significant first, and how many of the window's top bits they are.
    let mut window = 0u64;
    let mut bits = 0u32;
    let mut next = 0;
    loop {
        while bits <= 56 && next < coded.len() {
            window |= u64::from(coded[next]) << (56 - bits);
            bits += 8;
            next += 1;
        }
        // Most of a header value's codes are 5 to 7 bits: two at a time when both are whole
        // within the bits read and the budget has room for both, else the first alone.
        let entry = HUFFMAN_PAIRS[(window >> (64 - HUFFMAN_PAIR_BITS)) as usize];
        let (count, first_len, consumed) = ((entry >> 16) & 0x3, (entry >> 18) & 0x3f, entry >> 24);
        if count == 2 && consumed <= bits && decoded.len() + 2 <= budget {
            decoded.push(entry as u8);
            decoded.push((entry >> 8) as u8);
            window <<= consumed;
            bits -= consumed;
            continue;
        }
        let (symbol, length) = if count != 0 && first_len <= bits {
            (entry & 0xff, first_len)
        } else {
            // A code longer than the table's bits, or none within the bits left (a code
            // that fits them is the one the table found).
            let longer = (HUFFMAN_PAIR_BITS + 1..=bits.min(HUFFMAN_MAX_CODE_LENGTH as u32)).find_map(|length| {
                let code = (window >> (64 - length)) as u32;
                let offset = code.wrapping_sub(HUFFMAN.first_code[length as usize]);
                (offset < HUFFMAN.count[length as usize]).then(|| {
                    (
                        u32::from(HUFFMAN.symbols[HUFFMAN.first_index[length as usize] + offset as usize]),
                        length,
                    )
                })
            });
            match longer {
                Some(found) => found,
                // No code ends within the bits left: they are the padding.
                None if next == coded.len() => break,
                // Every 30-bit string starts with a code, so a full window always has one.
                None => return Err(HuffmanFault::PaddingTooLong { bits: 30 }),
            }
        };
        if symbol == u32::from(HUFFMAN_EOS) {
            return Err(HuffmanFault::Eos);
        }
        if decoded.len() == budget {
            return Err(HuffmanFault::OverBudget);
        }
        decoded.push(symbol as u8);
        window <<= length;
        bits -= length;
    }
    // §5.2: what is left must be a prefix of EOS (all ones), shorter than 8 bits.
    if bits > 7 {
        return Err(HuffmanFault::PaddingTooLong { bits: bits as u8 });
    }
    let padding = if bits == 0 { 0 } else { (window >> (64 - bits)) as u32 };
    if padding != (1u32 << bits) - 1 {
        return Err(HuffmanFault::PaddingNotOnes);
    }
    Ok(())
}

/// Bits of the window [`HUFFMAN_PAIRS`] is indexed by: 16 KiB of table, and two codes of
/// up to 6 bits (digits, lowercase letters, space) fit.
const HUFFMAN_PAIR_BITS: u32 = 12;

/// The symbol whose code starts the `available` low bits of `bits` (most significant
/// first), with its length; none when no code is that short.
const fn huffman_code_at(canonical: &CanonicalHuffman, bits: usize, available: usize) -> Option<(usize, usize)> {
    let mut length = 1;
    while length <= available {
        let code = (bits >> (available - length)) as u32;
        if code >= canonical.first_code[length] && code - canonical.first_code[length] < canonical.count[length] {
            let index = canonical.first_index[length] + (code - canonical.first_code[length]) as usize;
            return Some((canonical.symbols[index] as usize, length));
        }
        length += 1;
    }
    None
}

/// For each value of a window's top [`HUFFMAN_PAIR_BITS`] bits, the whole codes it starts
/// with: `consumed << 24 | first_len << 18 | count << 16 | second << 8 | first`, where
/// `count` is 2 when a second code follows the first within those bits (`consumed` is
/// both lengths), 1 when only the first fits and 0 when not even that (a longer code,
/// which the decoder finds by the canonical code's first code per length).
const fn build_huffman_pairs() -> [u32; 1 << HUFFMAN_PAIR_BITS] {
    let canonical = build_canonical_huffman();
    let width = HUFFMAN_PAIR_BITS as usize;
    let mut table = [0u32; 1 << HUFFMAN_PAIR_BITS];
    let mut index = 0;
    while index < table.len() {
        if let Some((first, first_len)) = huffman_code_at(&canonical, index, width) {
            let rest_len = width - first_len;
            let rest = index & ((1 << rest_len) - 1);
            table[index] = match huffman_code_at(&canonical, rest, rest_len) {
                Some((second, second_len)) => {
                    (((first_len + second_len) << 24) | (first_len << 18) | (2 << 16) | (second << 8) | first) as u32
                }
                None => ((first_len << 24) | (first_len << 18) | (1 << 16) | first) as u32,
            };
        }
        index += 1;
    }
    table
}

static HUFFMAN_PAIRS: [u32; 1 << HUFFMAN_PAIR_BITS] = build_huffman_pairs();

/// Each symbol's code (its `HUFFMAN_CODE_LENGTHS` low bits): the canonical code gives the
/// symbols of one length consecutive codes in symbol order, from that length's first code.
const fn build_huffman_codes() -> [u32; 257] {
    let canonical = build_canonical_huffman();
    let mut next_code = canonical.first_code;
    let mut codes = [0u32; 257];
    let mut symbol = 0;
    while symbol < 257 {
        let length = HUFFMAN_CODE_LENGTHS[symbol] as usize;
        codes[symbol] = next_code[length];
        next_code[length] += 1;
        symbol += 1;
    }
    codes
}

static HUFFMAN_CODES: [u32; 257] = build_huffman_codes();

/// Bytes `text` takes Huffman-coded, padding included.
fn huffman_encoded_len(text: &[u8]) -> usize {
    let bits: usize = text
        .iter()
        .map(|&byte| usize::from(HUFFMAN_CODE_LENGTHS[usize::from(byte)]))
        .sum();
    bits.div_ceil(8)
}

/// Appends `text` Huffman-coded (§5.2), padded with the most significant bits of EOS (ones).
fn huffman_encode(text: &[u8], out: &mut Vec<u8>) {
    // Bits not yet written, in the low `pending` bits: at most 7 plus one 30-bit code.
    let mut bits = 0u64;
    let mut pending = 0u32;
    for &byte in text {
        let length = u32::from(HUFFMAN_CODE_LENGTHS[usize::from(byte)]);
        bits = (bits << length) | u64::from(HUFFMAN_CODES[usize::from(byte)]);
        pending += length;
        while pending >= 8 {
            pending -= 8;
            out.push((bits >> pending) as u8);
        }
        bits &= (1u64 << pending) - 1;
    }
    if pending > 0 {
        out.push(((bits << (8 - pending)) as u8) | (0xff >> pending));
    }
}
