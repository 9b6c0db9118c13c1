//! Arbitrary header blocks into the HPACK decoder with small limits: no panic, the dynamic
//! table and every decoded header list stay within their limits, a failed decoder refuses
//! everything after, and whatever decodes survives a round trip: re-encoded by
//! `HpackEncoder` (fresh, and resumed from the decoder's table as the HTTP/2 relay does),
//! it decodes to the same fields.
//!
//! Input: a limits byte (bits 0-1: table size limit; bits 2-3: header list size limit),
//! then operations, each an opcode byte:
//! - `0xxxxxxx`: a header block of that many bytes (0 to 127) follows;
//! - `10xxxxxx yyyyyyyy`: a header block of `xxxxxx yyyyyyyy` bytes follows;
//! - `11xxxxxx hhhhhhhh llllllll`: SETTINGS_HEADER_TABLE_SIZE becomes `hh ll` (acknowledged).
//!
//! A block longer than what is left of the input is cut short.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod inspect;

use inspect::hpack::{HeaderField, HpackDecoder, HpackEncoder, HpackLimits, HpackProblem};

const TABLE_LIMITS: [usize; 4] = [0, 4096, 6000, 300];
const LIST_LIMITS: [usize; 4] = [40, 200, 1024, 8192];
/// Below this a table limit is raised to it (the protocol default).
const DEFAULT_TABLE_SIZE: usize = 4096;

enum Op<'a> {
    Block(&'a [u8]),
    SetMaxTableSize(usize),
}

fn parse_ops(mut data: &[u8]) -> Vec<Op<'_>> {
    let mut ops = Vec::new();
    while let Some((&op, rest)) = data.split_first() {
        data = rest;
        let length = match op >> 6 {
            0 | 1 => usize::from(op),
            2 => {
                let Some((&low, rest)) = data.split_first() else { break };
                data = rest;
                usize::from(op & 0x3f) << 8 | usize::from(low)
            }
            _ => {
                let Some((size, rest)) = data.split_first_chunk::<2>() else {
                    break;
                };
                data = rest;
                ops.push(Op::SetMaxTableSize(usize::from(u16::from_be_bytes(*size))));
                continue;
            }
        };
        let (block, rest) = data.split_at(length.min(data.len()));
        data = rest;
        ops.push(Op::Block(block));
    }
    ops
}

fn list_size(fields: &[HeaderField]) -> usize {
    fields
        .iter()
        .map(|field| field.name.len() + field.value.len() + 32)
        .sum()
}

fn check_table(decoder: &HpackDecoder, table_limit: usize) {
    let size = decoder.table_size();
    assert!(size <= table_limit, "table holds {size} bytes, limit {table_limit}");
    let counted: usize = decoder
        .dynamic_entries()
        .map(|(name, value)| name.len() + value.len() + 32)
        .sum();
    assert_eq!(counted, size, "table_size() is not the size of its entries");
}

fuzz_target!(|data: &[u8]| {
    let Some((&config, data)) = data.split_first() else {
        return;
    };
    let limits = HpackLimits {
        max_table_size: TABLE_LIMITS[usize::from(config & 3)],
        max_header_list_size: LIST_LIMITS[usize::from(config >> 2 & 3)],
    };
    let table_limit = limits.max_table_size.max(DEFAULT_TABLE_SIZE);
    let ops = parse_ops(data);

    // `mirror` gets the same operations: the peer's decoder, for the resumed encoder.
    let mut decoder = HpackDecoder::new(limits);
    let mut mirror = HpackDecoder::new(limits);
    let mut setting = DEFAULT_TABLE_SIZE;
    let mut failed = false;
    let mut decoded: Vec<Vec<HeaderField>> = Vec::new();
    for op in &ops {
        match *op {
            Op::SetMaxTableSize(size) => {
                decoder.set_max_table_size(size);
                mirror.set_max_table_size(size);
                setting = size;
            }
            Op::Block(block) => {
                let insertions = decoder.insertions();
                let result = decoder.decode(block);
                assert_eq!(mirror.decode(block), result, "two decoders disagree");
                match result {
                    Ok(fields) => {
                        assert!(!failed, "a block decoded after a failure");
                        let size = list_size(&fields);
                        assert!(
                            size <= limits.max_header_list_size,
                            "header list of {size} bytes, limit {}",
                            limits.max_header_list_size
                        );
                        // A fresh encoder references the static table only.
                        let mut encoded = Vec::new();
                        HpackEncoder::new().encode(&fields, &mut encoded);
                        let again = HpackDecoder::new(HpackLimits::default()).decode(&encoded);
                        assert_eq!(again.as_ref(), Ok(&fields), "round trip through a fresh encoder");
                        decoded.push(fields);
                    }
                    Err(error) => {
                        let _ = error.to_string();
                        if failed {
                            assert_eq!(error.problem, HpackProblem::EarlierFailure);
                            assert_eq!(decoder.insertions(), insertions);
                        }
                        failed = true;
                    }
                }
                check_table(&decoder, table_limit);
            }
        }
    }
    if failed {
        return;
    }

    // The relay's takeover: an encoder resumed from the decoder's table writes blocks the
    // peer's decoder (the mirror, in the same state) reads back as the same fields.
    let capacity = setting.min(table_limit);
    let mut encoder = HpackEncoder::resume(decoder.dynamic_entries(), capacity);
    assert!(encoder.table_size() <= capacity);
    for fields in decoded.iter().rev().take(8) {
        let mut encoded = Vec::new();
        encoder.encode(fields, &mut encoded);
        let again = mirror.decode(&encoded);
        assert_eq!(again.as_ref(), Ok(fields), "round trip through a resumed encoder");
        check_table(&mirror, table_limit);
    }
});
