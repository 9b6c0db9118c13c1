//! The RFC 7541 Appendix C examples, each malformed-input rule, the limits, and a
//! deterministic garbage loop.

use super::*;

/// Bytes from hex as the RFC prints it (groups separated by spaces and newlines).
fn block(hex_text: &str) -> Vec<u8> {
    let digits: String = hex_text.split_whitespace().collect();
    hex::decode(digits).expect("test hex is valid")
}

fn pairs(fields: &[HeaderField]) -> Vec<(&str, &str)> {
    fields
        .iter()
        .map(|field| {
            (
                std::str::from_utf8(&field.name).unwrap(),
                std::str::from_utf8(&field.value).unwrap(),
            )
        })
        .collect()
}

/// The dynamic table, newest entry first, as RFC 7541 Appendix C lists it.
fn table(decoder: &HpackDecoder) -> Vec<(String, String)> {
    (0..decoder.table.entries.len())
        .map(|index| {
            let (name, value) = decoder.table.get(index).unwrap();
            (
                String::from_utf8(name.to_vec()).unwrap(),
                String::from_utf8(value.to_vec()).unwrap(),
            )
        })
        .collect()
}

fn owned(entries: &[(&str, &str)]) -> Vec<(String, String)> {
    entries
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

fn problem(result: Result<Vec<HeaderField>, HpackError>) -> (usize, HpackProblem) {
    let error = result.expect_err("the block must be refused");
    (error.offset, error.problem)
}

/// An HPACK integer: `flags` are the first byte's bits above the prefix.
fn integer(flags: u8, prefix_bits: u8, value: usize) -> Vec<u8> {
    let prefix_max = usize::from(u8::MAX >> (8 - prefix_bits));
    if value < prefix_max {
        return vec![flags | value as u8];
    }
    let mut bytes = vec![flags | prefix_max as u8];
    let mut rest = value - prefix_max;
    while rest >= 0x80 {
        bytes.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    bytes.push(rest as u8);
    bytes
}

/// A raw (not Huffman-coded) string literal.
fn raw_string(text: &[u8]) -> Vec<u8> {
    let mut bytes = integer(0, 7, text.len());
    bytes.extend_from_slice(text);
    bytes
}

fn size_update(size: usize) -> Vec<u8> {
    integer(0b0010_0000, 5, size)
}

#[test]
fn rfc_c2_1_literal_with_indexing() {
    let mut decoder = HpackDecoder::new(HpackLimits::default());
    let fields = decoder
        .decode(&block(
            "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
        ))
        .unwrap();
    assert_eq!(pairs(&fields), [("custom-key", "custom-header")]);
    assert!(!fields[0].sensitive);
    assert_eq!(table(&decoder), owned(&[("custom-key", "custom-header")]));
    assert_eq!(decoder.table_size(), 55);
}

#[test]
fn rfc_c2_2_literal_without_indexing() {
    let mut decoder = HpackDecoder::new(HpackLimits::default());
    let fields = decoder.decode(&block("040c 2f73 616d 706c 652f 7061 7468")).unwrap();
    assert_eq!(pairs(&fields), [(":path", "/sample/path")]);
    assert!(table(&decoder).is_empty());
    assert_eq!(decoder.table_size(), 0);
}

#[test]
fn rfc_c2_3_literal_never_indexed_is_sensitive() {
    let mut decoder = HpackDecoder::new(HpackLimits::default());
    let fields = decoder
        .decode(&block("1008 7061 7373 776f 7264 0673 6563 7265 74"))
        .unwrap();
    assert_eq!(pairs(&fields), [("password", "secret")]);
    assert!(fields[0].sensitive);
    assert!(table(&decoder).is_empty());
}

#[test]
fn rfc_c2_4_indexed() {
    let mut decoder = HpackDecoder::new(HpackLimits::default());
    let fields = decoder.decode(&block("82")).unwrap();
    assert_eq!(pairs(&fields), [(":method", "GET")]);
    assert!(table(&decoder).is_empty());
}

/// C.3 and C.4 decode to the same header lists and tables; only the string coding differs.
fn check_rfc_requests(blocks: [&str; 3]) {
    let mut decoder = HpackDecoder::new(HpackLimits::default());

    let fields = decoder.decode(&block(blocks[0])).unwrap();
    assert_eq!(
        pairs(&fields),
        [
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
        ]
    );
    assert_eq!(table(&decoder), owned(&[(":authority", "www.example.com")]));
    assert_eq!(decoder.table_size(), 57);

    let fields = decoder.decode(&block(blocks[1])).unwrap();
    assert_eq!(
        pairs(&fields),
        [
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
            ("cache-control", "no-cache"),
        ]
    );
    assert_eq!(
        table(&decoder),
        owned(&[("cache-control", "no-cache"), (":authority", "www.example.com"),])
    );
    assert_eq!(decoder.table_size(), 110);

    let fields = decoder.decode(&block(blocks[2])).unwrap();
    assert_eq!(
        pairs(&fields),
        [
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/index.html"),
            (":authority", "www.example.com"),
            ("custom-key", "custom-value"),
        ]
    );
    assert_eq!(
        table(&decoder),
        owned(&[
            ("custom-key", "custom-value"),
            ("cache-control", "no-cache"),
            (":authority", "www.example.com"),
        ])
    );
    assert_eq!(decoder.table_size(), 164);
}

#[test]
fn rfc_c3_requests_without_huffman() {
    check_rfc_requests([
        "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        "8286 84be 5808 6e6f 2d63 6163 6865",
        "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
    ]);
}

#[test]
fn rfc_c4_requests_with_huffman() {
    check_rfc_requests([
        "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
        "8286 84be 5886 a8eb 1064 9cbf",
        "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
    ]);
}

/// C.5 and C.6 run with SETTINGS_HEADER_TABLE_SIZE 256, which the encoder signals here
/// with a block holding only a size update, then evict.
fn check_rfc_responses(blocks: [&str; 3]) {
    let mut decoder = HpackDecoder::new(HpackLimits::default());
    decoder.set_max_table_size(256);
    assert!(decoder.decode(&size_update(256)).unwrap().is_empty());

    let fields = decoder.decode(&block(blocks[0])).unwrap();
    assert_eq!(
        pairs(&fields),
        [
            (":status", "302"),
            ("cache-control", "private"),
            ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
            ("location", "https://www.example.com"),
        ]
    );
    assert_eq!(
        table(&decoder),
        owned(&[
            ("location", "https://www.example.com"),
            ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
            ("cache-control", "private"),
            (":status", "302"),
        ])
    );
    assert_eq!(decoder.table_size(), 222);

    let fields = decoder.decode(&block(blocks[1])).unwrap();
    assert_eq!(
        pairs(&fields),
        [
            (":status", "307"),
            ("cache-control", "private"),
            ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
            ("location", "https://www.example.com"),
        ]
    );
    assert_eq!(
        table(&decoder),
        owned(&[
            (":status", "307"),
            ("location", "https://www.example.com"),
            ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
            ("cache-control", "private"),
        ])
    );
    assert_eq!(decoder.table_size(), 222);

    let fields = decoder.decode(&block(blocks[2])).unwrap();
    assert_eq!(
        pairs(&fields),
        [
            (":status", "200"),
            ("cache-control", "private"),
            ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
            ("location", "https://www.example.com"),
            ("content-encoding", "gzip"),
            ("set-cookie", "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"),
        ]
    );
    assert_eq!(
        table(&decoder),
        owned(&[
            ("set-cookie", "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"),
            ("content-encoding", "gzip"),
            ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
        ])
    );
    assert_eq!(decoder.table_size(), 215);
}

#[test]
fn rfc_c5_responses_without_huffman_evict() {
    check_rfc_responses([
        "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
         2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
         6c65 2e63 6f6d",
        "4803 3330 37c1 c0bf",
        "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
         54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
         5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e
         3d31",
    ]);
}

#[test]
fn rfc_c6_responses_with_huffman_evict() {
    check_rfc_responses([
        "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
         2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
        "4883 640e ffc1 c0bf",
        "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
         77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
         9587 3160 65c0 03ed 4ee5 b106 3d50 07",
    ]);
}

#[test]
fn static_table_is_appendix_a() {
    assert_eq!(STATIC_TABLE.len(), 61);
    assert_eq!(STATIC_TABLE[0], (&b":authority"[..], &b""[..]));
    assert_eq!(STATIC_TABLE[15], (&b"accept-encoding"[..], &b"gzip, deflate"[..]));
    assert_eq!(STATIC_TABLE[60], (&b"www-authenticate"[..], &b""[..]));
}

/// The code a symbol gets from the canonical tables.
fn huffman_code(symbol: u16) -> (u32, usize) {
    let length = usize::from(HUFFMAN_CODE_LENGTHS[usize::from(symbol)]);
    let position = HUFFMAN.symbols[HUFFMAN.first_index[length]..]
        .iter()
        .position(|&candidate| candidate == symbol)
        .unwrap();
    (HUFFMAN.first_code[length] + position as u32, length)
}

#[test]
fn huffman_code_is_complete_and_matches_appendix_b() {
    // Kraft equality: the code is complete, so every 30-bit string starts with a code.
    let kraft: u64 = HUFFMAN_CODE_LENGTHS.iter().map(|&length| 1u64 << (30 - length)).sum();
    assert_eq!(kraft, 1 << 30);
    // Codes from RFC 7541 Appendix B, including the last of every length, which only come
    // out right if every length's count is right.
    let expected: [(u16, u32, usize); 26] = [
        (b'0'.into(), 0x0, 5),
        (b't'.into(), 0x9, 5),
        (b' '.into(), 0x14, 6),
        (b'u'.into(), 0x2d, 6),
        (b':'.into(), 0x5c, 7),
        (b'z'.into(), 0x7b, 7),
        (b'&'.into(), 0xf8, 8),
        (b'Z'.into(), 0xfd, 8),
        (b'?'.into(), 0x3fc, 10),
        (b'|'.into(), 0x7fc, 11),
        (b'>'.into(), 0xffb, 12),
        (b'~'.into(), 0x1ffd, 13),
        (b'}'.into(), 0x3ffd, 14),
        (b'{'.into(), 0x7ffe, 15),
        (208, 0x7fff2, 19),
        (226, 0xfffed, 20),
        (230, 0x1fffe8, 21),
        (233, 0x3fffeb, 22),
        (239, 0x7ffff4, 23),
        (237, 0xfffff5, 24),
        (235, 0x1ffffef, 25),
        (255, 0x3ffffee, 26),
        (254, 0x7fffff0, 27),
        (249, 0xffffffe, 28),
        (22, 0x3ffffffe, 30),
        (HUFFMAN_EOS, 0x3fffffff, 30),
    ];
    for (symbol, code, length) in expected {
        assert_eq!(huffman_code(symbol), (code, length), "symbol {symbol}");
    }
}

/// A test-only encoder over the same tables, padding with ones.
fn huffman_encode(text: &[u8]) -> Vec<u8> {
    let mut bits: Vec<bool> = Vec::new();
    for &byte in text {
        let (code, length) = huffman_code(byte.into());
        bits.extend((0..length).rev().map(|bit| (code >> bit) & 1 == 1));
    }
    while !bits.len().is_multiple_of(8) {
        bits.push(true);
    }
    bits.chunks(8)
        .map(|byte| byte.iter().fold(0u8, |acc, &bit| (acc << 1) | u8::from(bit)))
        .collect()
}

#[test]
fn huffman_decodes_every_byte_value() {
    let all: Vec<u8> = (0..=255).collect();
    assert_eq!(decode_huffman(&huffman_encode(&all), usize::MAX).unwrap(), all);
    assert_eq!(decode_huffman(&[], 10).unwrap(), b"");
}

/// A seeded xorshift64 generator: the same inputs on every run.
fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

#[test]
fn huffman_decodes_random_strings_whatever_their_codes_lengths() {
    // Header-like text (where codes pair up in the decoder's 12-bit table) and arbitrary
    // bytes (long codes in between), each cut at every budget short of its length.
    let mut next = xorshift(0x2545_f491_4f6c_dd1du64);
    let alphabets: [&[u8]; 2] = [b"0123456789 :,-abcdefghijklmnopqrstuvwxyzGMT/.=\"", &[]];
    for round in 0..400 {
        let alphabet = alphabets[round % 2];
        let len = (next() % 40) as usize;
        let text: Vec<u8> = (0..len)
            .map(|_| match alphabet {
                [] => next() as u8,
                letters => letters[(next() % letters.len() as u64) as usize],
            })
            .collect();
        let coded = huffman_encode(&text);
        assert_eq!(decode_huffman(&coded, usize::MAX).unwrap(), text, "{text:?}");
        for budget in 0..text.len() {
            assert_eq!(
                decode_huffman(&coded, budget),
                Err(HuffmanFault::OverBudget),
                "{text:?} within {budget}"
            );
        }
    }
}

#[test]
fn memoized_huffman_decoding_gives_what_plain_decoding_gives() {
    // More distinct strings than the memo has slots, so slots are shared and replaced;
    // each is decoded three times (a miss, then hits, or a miss again after a collision),
    // within and short of its budget, and faulty strings never enter the memo.
    let mut next = xorshift(0x9e37_79b9_7f4a_7c15u64);
    let decode = |memoized: bool, coded: &[u8], budget: usize| {
        let mut out = b"before".to_vec();
        let result = if memoized {
            huffman_decode_memoized(coded, budget, &mut out)
        } else {
            huffman_decode(coded, budget, &mut out)
        };
        result.map(|()| out)
    };
    let mut strings: Vec<Vec<u8>> = (0..2 * MEMO_SLOTS)
        .map(|_| {
            let len = (next() % 70) as usize;
            let text: Vec<u8> = (0..len).map(|_| next() as u8 % 96 + 32).collect();
            huffman_encode(&text)
        })
        .collect();
    // Faults: padding with a zero, and EOS, at lengths the memo would take.
    let mut bad_padding = huffman_encode(b"0123456789abcdef");
    *bad_padding.last_mut().expect("bytes") &= 0xfe;
    strings.push(bad_padding);
    strings.push(vec![0xff; 12]);
    let mut memoized_ones = 0;
    for _ in 0..3 {
        for coded in &strings {
            let whole = decode(false, coded, usize::MAX);
            assert_eq!(decode(true, coded, usize::MAX), whole, "{coded:?}");
            if let Ok(text) = &whole {
                let decoded_len = text.len() - b"before".len();
                if decoded_len > 0 {
                    assert_eq!(
                        decode(true, coded, decoded_len - 1),
                        Err(HuffmanFault::OverBudget),
                        "{coded:?}"
                    );
                }
                if (MEMO_CODED_MIN..=MEMO_CODED_MAX).contains(&coded.len()) {
                    memoized_ones += 1;
                }
            }
        }
    }
    assert!(
        memoized_ones > MEMO_SLOTS,
        "the strings exercised the memo: {memoized_ones}"
    );
    // What stays in the memo decodes to what it was stored with.
    HUFFMAN_MEMO.with(|memo| {
        for slot in memo.borrow().iter().filter(|slot| slot.coded_len > 0) {
            let coded = &slot.coded[..usize::from(slot.coded_len)];
            let mut text = Vec::new();
            huffman_decode(coded, usize::MAX, &mut text).expect("only whole decodings are kept");
            assert_eq!(text, &slot.decoded[..usize::from(slot.decoded_len)]);
        }
    });
}

#[test]
fn credentials_and_never_indexed_values_stay_out_of_the_memo() {
    // Literals entering the table, so their values are decoded: a cookie, a path with a
    // token and a never-indexed token are not remembered; an ordinary value is.
    let cookie_value = b"session=0123456789abcdefghijklmnop";
    let plain_value = b"application/octet-stream; charset=x";
    let mut block = Vec::new();
    for (first, name, value) in [
        (0x40u8, &b"cookie"[..], &cookie_value[..]),
        (0x40, b":path", b"/callback?code=0123456789abcdef"),
        (0x10, b"x-token", b"secret-secret-secret-secret"),
        (0x40, b"x-type", plain_value),
    ] {
        block.push(first);
        block.push(name.len() as u8);
        block.extend_from_slice(name);
        let coded = huffman_encode(value);
        block.push(0x80 | coded.len() as u8);
        block.extend_from_slice(&coded);
    }
    HUFFMAN_MEMO.with(|memo| memo.borrow_mut().clear());
    let mut decoder = HpackDecoder::new(HpackLimits::default());
    let fields = decoder.decode(&block).expect("block decodes");
    assert_eq!(fields[0].value, cookie_value);
    let remembered: Vec<Vec<u8>> = HUFFMAN_MEMO.with(|memo| {
        memo.borrow()
            .iter()
            .filter(|slot| slot.coded_len > 0)
            .map(|slot| slot.decoded[..usize::from(slot.decoded_len)].to_vec())
            .collect()
    });
    assert_eq!(remembered, vec![plain_value.to_vec()]);
}

#[test]
fn huffman_padding_and_eos_errors() {
    // 'a' is 00011: three bits of ones pad it to a byte.
    assert_eq!(decode_huffman(&[0x1f], 10).unwrap(), b"a");
    // Padding with a zero in it.
    assert_eq!(decode_huffman(&[0x18], 10), Err(HuffmanFault::PaddingNotOnes));
    // A whole byte of ones after 'a' (11 bits left): more than 7 bits of padding.
    assert_eq!(
        decode_huffman(&[0x1f, 0xff], 10),
        Err(HuffmanFault::PaddingTooLong { bits: 11 })
    );
    // 30 ones are the EOS symbol, which may not appear in a string.
    assert_eq!(decode_huffman(&[0xff, 0xff, 0xff, 0xff], 10), Err(HuffmanFault::Eos));
    // Output beyond the budget is refused as it is produced.
    assert_eq!(
        decode_huffman(&huffman_encode(b"abc"), 2),
        Err(HuffmanFault::OverBudget)
    );
}

#[test]
fn huffman_errors_in_a_block_name_the_string() {
    let mut decoder = HpackDecoder::new(HpackLimits::default());
    // Literal without indexing, name :path (index 4), Huffman value of one byte 0x18.
    let error = decoder.decode(&[0x82, 0x04, 0x81, 0x18]).unwrap_err();
    assert_eq!((error.offset, error.problem), (2, HpackProblem::HuffmanPaddingNotOnes));
    assert_eq!(
        error.to_string(),
        "HPACK: a Huffman-coded string ends with padding that is not all ones \
         (byte 2 of the header block)"
    );

    let mut decoder = HpackDecoder::new(HpackLimits::default());
    assert_eq!(
        problem(decoder.decode(&[0x04, 0x84, 0xff, 0xff, 0xff, 0xff])),
        (1, HpackProblem::HuffmanEos)
    );
}

#[test]
fn size_updates_at_the_start_resize_and_evict() {
    let mut decoder = HpackDecoder::new(HpackLimits::default());
    decoder
        .decode(&block(
            "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
        ))
        .unwrap();
    assert_eq!(decoder.table_size(), 55);
    // Two updates at the start (RFC 7541 §4.2 allows a shrink then a grow): the shrink to
    // 0 evicts everything.
    let mut updates = size_update(0);
    updates.extend(size_update(4096));
    updates.push(0x82);
    let fields = decoder.decode(&updates).unwrap();
    assert_eq!(pairs(&fields), [(":method", "GET")]);
    assert_eq!(decoder.table_size(), 0);
    assert_eq!(decoder.table.capacity, 4096);
}

#[test]
fn size_update_after_a_field_is_refused() {
    let mut decoder = HpackDecoder::new(HpackLimits::default());
    let mut bytes = vec![0x82];
    bytes.extend(size_update(100));
    assert_eq!(
        problem(decoder.decode(&bytes)),
        (1, HpackProblem::TableSizeUpdateNotAtStart)
    );
}

#[test]
fn size_update_above_the_setting_is_refused() {
    let mut decoder = HpackDecoder::new(HpackLimits::default());
    assert_eq!(
        problem(decoder.decode(&size_update(4097))),
        (
            0,
            HpackProblem::TableSizeAboveSetting {
                requested: 4097,
                setting: 4096
            }
        )
    );
}

#[test]
fn size_update_above_loupes_limit_is_refused() {
    let mut decoder = HpackDecoder::new(HpackLimits::default());
    decoder.set_max_table_size(1 << 20);
    // Up to the limit is fine once the setting allows it.
    decoder.decode(&size_update(65536)).unwrap();
    assert_eq!(decoder.table.capacity, 65536);
    let error = decoder.decode(&size_update(65537)).unwrap_err();
    assert_eq!(
        (error.offset, error.problem),
        (
            0,
            HpackProblem::TableSizeAboveLimit {
                requested: 65537,
                limit: 65536
            }
        )
    );
    assert_eq!(
        error.to_string(),
        "HPACK: a dynamic table size update asks for 65537 bytes, above loupe's limit of \
         65536 (byte 0 of the header block)"
    );
}

#[test]
fn limits_above_a_gibibyte_are_lowered_to_it() {
    // The table keeps 32-bit offsets into a buffer of up to twice its capacity.
    let mut decoder = HpackDecoder::new(HpackLimits {
        max_table_size: usize::MAX,
        max_header_list_size: 1024,
    });
    decoder.set_max_table_size(usize::MAX);
    decoder.decode(&size_update(1 << 30)).unwrap();
    assert_eq!(decoder.table.capacity, 1 << 30);
    let error = decoder.decode(&size_update((1 << 30) + 1)).unwrap_err();
    assert_eq!(
        error.problem,
        HpackProblem::TableSizeAboveLimit {
            requested: (1 << 30) + 1,
            limit: 1 << 30
        }
    );
}

#[test]
fn limits_below_the_protocol_default_are_raised_to_it() {
    let mut decoder = HpackDecoder::new(HpackLimits {
        max_table_size: 100,
        ..HpackLimits::default()
    });
    decoder.decode(&size_update(4096)).unwrap();
}

#[test]
fn lowered_setting_requires_a_size_update() {
    let mut decoder = HpackDecoder::new(HpackLimits::default());
    decoder.set_max_table_size(1000);
    assert_eq!(
        problem(decoder.decode(&[0x82])),
        (
            0,
            HpackProblem::MissingTableSizeUpdate {
                setting: 1000,
                capacity: 4096
            }
        )
    );
    // An empty block does not carry it either.
    let mut decoder = HpackDecoder::new(HpackLimits::default());
    decoder.set_max_table_size(1000);
    assert_eq!(
        problem(decoder.decode(&[])).1,
        HpackProblem::MissingTableSizeUpdate {
            setting: 1000,
            capacity: 4096
        }
    );

    let mut decoder = HpackDecoder::new(HpackLimits::default());
    decoder.set_max_table_size(1000);
    let mut bytes = size_update(1000);
    bytes.push(0x82);
    decoder.decode(&bytes).unwrap();
    // Once signalled, later blocks need none.
    decoder.decode(&[0x82]).unwrap();
}

#[test]
fn huge_integers_are_refused() {
    let mut decoder = HpackDecoder::new(HpackLimits::default());
    // An index far above 2^32.
    assert_eq!(
        problem(decoder.decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f])),
        (0, HpackProblem::IntegerTooLarge)
    );
    // A small value stretched with continuation bytes carrying nothing.
    let mut decoder = HpackDecoder::new(HpackLimits::default());
    assert_eq!(
        problem(decoder.decode(&[0xff, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00])),
        (0, HpackProblem::IntegerTooLarge)
    );
    // A never-ending integer stops at its sixth continuation byte.
    let mut endless = vec![0x3f];
    endless.extend([0x80; 1000]);
    let mut decoder = HpackDecoder::new(HpackLimits::default());
    assert_eq!(problem(decoder.decode(&endless)), (0, HpackProblem::IntegerTooLarge));
    // 2^32 - 1 itself is accepted (and here names no entry).
    let mut reader = BlockReader {
        block: &integer(0x80, 7, u32::MAX as usize),
        pos: 0,
    };
    assert_eq!(reader.integer(7), Ok(u32::MAX as usize));
}

#[test]
fn truncated_integers_and_strings_are_refused() {
    let mut decoder = HpackDecoder::new(HpackLimits::default());
    assert_eq!(
        problem(decoder.decode(&[0x82, 0xff])),
        (1, HpackProblem::TruncatedInteger)
    );
    let mut decoder = HpackDecoder::new(HpackLimits::default());
    assert_eq!(
        problem(decoder.decode(&[0xff, 0x80])),
        (0, HpackProblem::TruncatedInteger)
    );
    // A new name declared as 10 bytes with 1 present.
    let mut decoder = HpackDecoder::new(HpackLimits::default());
    assert_eq!(
        problem(decoder.decode(&[0x40, 0x0a, b'a'])),
        (
            1,
            HpackProblem::TruncatedString {
                declared: 10,
                available: 1
            }
        )
    );
    // The value's length is missing altogether.
    let mut decoder = HpackDecoder::new(HpackLimits::default());
    assert_eq!(problem(decoder.decode(&[0x44])), (1, HpackProblem::TruncatedInteger));
}

#[test]
fn index_zero_is_refused() {
    let mut decoder = HpackDecoder::new(HpackLimits::default());
    assert_eq!(problem(decoder.decode(&[0x82, 0x80])), (1, HpackProblem::IndexZero));
}

#[test]
fn index_out_of_range_is_refused() {
    let mut decoder = HpackDecoder::new(HpackLimits::default());
    decoder.decode(&block("418c f1e3 c2e5 f23a 6ba0 ab90 f4ff")).unwrap();
    let error = decoder.decode(&[0x82, 0x86, 0xbe, 0xbf]).unwrap_err();
    assert_eq!(
        (error.offset, error.problem),
        (
            3,
            HpackProblem::IndexOutOfRange {
                index: 63,
                dynamic_entries: 1
            }
        )
    );
    assert_eq!(
        error.to_string(),
        "HPACK: index 63 is beyond the 61 static and 1 dynamic entries (byte 3 of the header \
         block)"
    );
    // A literal's name index is checked the same way.
    let mut decoder = HpackDecoder::new(HpackLimits::default());
    assert_eq!(
        problem(decoder.decode(&[0x0f, 0x30, 0x00])),
        (
            0,
            HpackProblem::IndexOutOfRange {
                index: 63,
                dynamic_entries: 0
            }
        )
    );
}

#[test]
fn entry_larger_than_the_table_empties_it() {
    let mut decoder = HpackDecoder::new(HpackLimits::default());
    decoder.decode(&[0x82]).unwrap();
    decoder.decode(&block("400a 6375 7374 6f6d 2d6b 6579 0161")).unwrap();
    assert_eq!(decoder.table.entries.len(), 1);
    let mut bytes = vec![0x40];
    bytes.extend(raw_string(b"big"));
    bytes.extend(raw_string(&[b'x'; 5000]));
    let fields = decoder.decode(&bytes).unwrap();
    assert_eq!(fields[0].value.len(), 5000);
    assert_eq!(decoder.table_size(), 0);
    assert!(decoder.table.entries.is_empty());
}

#[test]
fn literal_naming_the_entry_it_evicts() {
    // Table of 100 bytes holding one 60-byte entry; a new entry reusing its name needs
    // the room, so the name must be copied before the eviction.
    let mut decoder = HpackDecoder::new(HpackLimits::default());
    let mut bytes = size_update(100);
    bytes.push(0x40);
    bytes.extend(raw_string(b"name-of-twenty-bytes"));
    bytes.extend(raw_string(b"12345678"));
    decoder.decode(&bytes).unwrap();
    assert_eq!(decoder.table_size(), 60);
    let mut bytes = vec![0x40 | 62];
    bytes.extend(raw_string(b"abcdefghijkl"));
    let fields = decoder.decode(&bytes).unwrap();
    assert_eq!(pairs(&fields), [("name-of-twenty-bytes", "abcdefghijkl")]);
    assert_eq!(table(&decoder), owned(&[("name-of-twenty-bytes", "abcdefghijkl")]));
}

#[test]
fn header_list_limit_stops_amplification_by_index() {
    // One 4033-byte entry, then a block that names it once per byte: 26 copies are more
    // than 100 KiB, refused before the 26th is copied.
    let mut decoder = HpackDecoder::new(HpackLimits::default());
    let mut bytes = vec![0x40];
    bytes.extend(raw_string(b"n"));
    bytes.extend(raw_string(&[b'x'; 4000]));
    decoder.decode(&bytes).unwrap();
    assert_eq!(decoder.table_size(), 4033);
    assert_eq!(decoder.decode(&[0xbe; 25]).unwrap().len(), 25);
    let error = decoder.decode(&[0xbe; 1000]).unwrap_err();
    assert_eq!(
        (error.offset, error.problem),
        (25, HpackProblem::HeaderListTooLarge { limit: 102400 })
    );
}

#[test]
fn header_list_limit_applies_to_literals_before_decoding() {
    let limits = HpackLimits {
        max_header_list_size: 100,
        ..HpackLimits::default()
    };
    // 32 + 30 + 38 = 100 is at the limit.
    let mut decoder = HpackDecoder::new(limits);
    let mut bytes = vec![0x00];
    bytes.extend(raw_string(&[b'n'; 30]));
    bytes.extend(raw_string(&[b'v'; 38]));
    decoder.decode(&bytes).unwrap();
    // One more raw byte is not.
    let mut decoder = HpackDecoder::new(limits);
    let mut bytes = vec![0x00];
    bytes.extend(raw_string(&[b'n'; 30]));
    let value_offset = bytes.len();
    bytes.extend(raw_string(&[b'v'; 39]));
    assert_eq!(
        problem(decoder.decode(&bytes)),
        (value_offset, HpackProblem::HeaderListTooLarge { limit: 100 })
    );
    // Nor one more Huffman-coded byte.
    let mut decoder = HpackDecoder::new(limits);
    let coded = huffman_encode(&[b'a'; 69]);
    let mut bytes = vec![0x10];
    bytes.extend(integer(0x80, 7, coded.len()));
    bytes.extend(coded);
    assert_eq!(
        problem(decoder.decode(&bytes)),
        (1, HpackProblem::HeaderListTooLarge { limit: 100 })
    );
}

#[test]
fn a_failed_decoder_refuses_later_blocks() {
    let mut decoder = HpackDecoder::new(HpackLimits::default());
    decoder.decode(&[0x80]).unwrap_err();
    let error = decoder.decode(&[0x82]).unwrap_err();
    assert_eq!(error.problem, HpackProblem::EarlierFailure);
    assert_eq!(
        error.to_string(),
        "HPACK: the decoder failed on an earlier block of this connection, so its table is \
         unknown"
    );
}

/// xorshift64: deterministic, no crate.
struct Prng(u64);

impl Prng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

#[test]
fn random_garbage_never_panics_and_stays_bounded() {
    let limits = HpackLimits {
        max_table_size: 8192,
        max_header_list_size: 4096,
    };
    let seeds = [
        block("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"),
        block("4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81"),
        block("3fe1 1f40 0a63 7573 746f 6d2d 6b65 7901 61be bebe"),
    ];
    let mut prng = Prng(0x1005_e0ca_fe00_beef);
    let mut decoder = HpackDecoder::new(limits);
    let mut decoded_blocks = 0;
    for round in 0..200_000 {
        let bytes: Vec<u8> = if round % 2 == 0 {
            // Pure noise.
            let length = prng.below(40);
            (0..length).map(|_| prng.next() as u8).collect()
        } else {
            // A valid block with a few bytes changed, to get past the first byte.
            let mut bytes = seeds[prng.below(seeds.len())].clone();
            for _ in 0..1 + prng.below(3) {
                let index = prng.below(bytes.len());
                bytes[index] = prng.next() as u8;
            }
            bytes.truncate(1 + prng.below(bytes.len()));
            bytes
        };
        if round % 7 == 0 {
            decoder.set_max_table_size(prng.below(20_000));
        }
        match decoder.decode(&bytes) {
            Ok(fields) => {
                decoded_blocks += 1;
                let list_size: usize = fields
                    .iter()
                    .map(|field| field.name.len() + field.value.len() + 32)
                    .sum();
                assert!(list_size <= limits.max_header_list_size);
            }
            Err(_) => decoder = HpackDecoder::new(limits),
        }
        assert!(decoder.table_size() <= limits.max_table_size);
        assert!(decoder.table_size() <= decoder.table.capacity);
    }
    // The mutations must reach past the first byte often enough to mean something.
    assert!(decoded_blocks > 10_000, "only {decoded_blocks} blocks decoded");
}

// ---------------------------------------------------------------------------------------
// Encoder

fn field(name: &str, value: &str) -> HeaderField {
    HeaderField {
        name: name.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        sensitive: false,
    }
}

fn encoded(encoder: &mut HpackEncoder, fields: &[HeaderField]) -> Vec<u8> {
    let mut out = Vec::new();
    encoder.encode(fields, &mut out);
    out
}

#[test]
fn encoder_huffman_matches_the_reference_and_rfc_c4() {
    let all: Vec<u8> = (0..=255).collect();
    for text in [&all[..], b"", b"a", b"www.example.com", b"no-cache", b"custom-value"] {
        let mut fast = Vec::new();
        super::huffman_encode(text, &mut fast);
        assert_eq!(fast, huffman_encode(text), "{text:?}");
        assert_eq!(fast.len(), huffman_encoded_len(text));
    }
    // RFC 7541 C.4.1: "www.example.com" as Huffman.
    let mut coded = Vec::new();
    super::huffman_encode(b"www.example.com", &mut coded);
    assert_eq!(coded, block("f1e3 c2e5 f23a 6ba0 ab90 f4ff"));
}

#[test]
fn encoder_indexes_static_fields_and_writes_the_rest_without_indexing() {
    let mut encoder = HpackEncoder::new();
    let fields = vec![
        field(":method", "GET"),
        field(":scheme", "https"),
        field(":path", "/"),
        field(":authority", "www.example.com"),
        field("x-custom", "value"),
    ];
    let bytes = encoded(&mut encoder, &fields);
    // RFC 7541 C.4.1's first three fields, then :authority as a literal without indexing
    // naming static entry 1 (0x01), Huffman-coded.
    assert_eq!(&bytes[..4], &block("8287 8401")[..]);
    assert_eq!(&bytes[4..5], &block("8c")[..]);
    assert_eq!(&bytes[5..17], &block("f1e3 c2e5 f23a 6ba0 ab90 f4ff")[..]);
    // A new name: 0000 0000 then the name and the value.
    assert_eq!(bytes[17], 0x00);
    let mut decoder = HpackDecoder::new(HpackLimits::default());
    assert_eq!(decoder.decode(&bytes).unwrap(), fields);
    assert_eq!(decoder.table_size(), 0);
    assert_eq!(decoder.insertions(), 0);
}

#[test]
fn encoder_keeps_never_indexed_fields_never_indexed() {
    let mut secret = field("authorization", "Bearer abc");
    secret.sensitive = true;
    // Even a field the static table holds whole stays a never-indexed literal.
    let mut method = field(":method", "GET");
    method.sensitive = true;
    let fields = vec![secret, method];
    let bytes = encoded(&mut HpackEncoder::new(), &fields);
    // authorization is static entry 23: 0001 1111 then 23 - 15 = 8.
    assert_eq!(&bytes[..2], &[0x1f, 0x08]);
    let decoded = HpackDecoder::new(HpackLimits::default()).decode(&bytes).unwrap();
    assert_eq!(decoded, fields);
    assert!(decoded.iter().all(|field| field.sensitive));
}

/// A decoder whose table holds `entries` (added oldest first), with the encoder that
/// takes it over.
fn decoder_with(entries: &[(&str, &str)]) -> HpackDecoder {
    let mut decoder = HpackDecoder::new(HpackLimits::default());
    let mut bytes = Vec::new();
    for (name, value) in entries {
        bytes.push(0x40);
        bytes.extend(raw_string(name.as_bytes()));
        bytes.extend(raw_string(value.as_bytes()));
    }
    decoder.decode(&bytes).unwrap();
    decoder
}

#[test]
fn resumed_encoder_references_known_dynamic_entries_and_never_inserts() {
    let mut decoder = decoder_with(&[("x-old", "1"), ("cookie", "a=b"), ("x-new", "2")]);
    let before = table(&decoder);
    let insertions = decoder.insertions();
    let mut encoder = HpackEncoder::resume(decoder.dynamic_entries(), 4096);
    let fields = vec![
        field("x-new", "2"),
        field("cookie", "a=b"),
        field("x-old", "1"),
        field("x-old", "other"),
        field("cookie", "c=d"),
    ];
    let bytes = encoded(&mut encoder, &fields);
    // Size update to 4096 (001 11111 then 4096 - 31), then indices 62, 63 and 64, then
    // literals naming dynamic entry 64 and static entry 32 (cookie).
    assert_eq!(&bytes[..6], &block("3fe1 1f be bf c0")[..]);
    assert_eq!(bytes[6], 0x0f);
    assert_eq!(decoder.decode(&bytes).unwrap(), fields);
    assert_eq!(table(&decoder), before);
    assert_eq!(decoder.insertions(), insertions);
    // Later blocks carry no size update.
    let again = encoded(&mut encoder, &fields[..1]);
    assert_eq!(again, vec![0xbe]);
    assert_eq!(decoder.decode(&again).unwrap(), fields[..1]);
}

#[test]
fn resumed_encoder_with_a_smaller_capacity_forgets_what_the_peer_evicts() {
    let mut decoder = decoder_with(&[("x-old", "1"), ("x-new", "2")]);
    // Each entry takes 5 + 1 + 32 = 38 bytes: 40 keeps the newest only.
    let mut encoder = HpackEncoder::resume(decoder.dynamic_entries(), 40);
    let fields = vec![field("x-new", "2"), field("x-old", "1")];
    let bytes = encoded(&mut encoder, &fields);
    assert_eq!(&bytes[..3], &[0x3f, 0x09, 0xbe]);
    assert_eq!(bytes[3], 0x00, "x-old is no longer referenced");
    assert_eq!(decoder.decode(&bytes).unwrap(), fields);
    assert_eq!(table(&decoder), owned(&[("x-new", "2")]));
}

#[test]
fn encoder_follows_a_lowered_table_size_setting() {
    let mut decoder = decoder_with(&[("x-a", "1"), ("x-b", "2")]);
    let mut encoder = HpackEncoder::resume(decoder.dynamic_entries(), 4096);
    decoder.decode(&encoded(&mut encoder, &[])).unwrap();
    // The peer lowers its setting to 0; both sides learn it from the acknowledgement.
    decoder.set_max_table_size(0);
    encoder.set_max_table_size(0);
    let fields = vec![field("x-a", "1")];
    let bytes = encoded(&mut encoder, &fields);
    assert_eq!(bytes[0], 0x20);
    assert_eq!(decoder.decode(&bytes).unwrap(), fields);
    assert_eq!(decoder.table_size(), 0);
    // Raising it again changes nothing: the encoder needs no room.
    encoder.set_max_table_size(8192);
    decoder.set_max_table_size(8192);
    let bytes = encoded(&mut encoder, &fields);
    assert_ne!(bytes[0] & 0xe0, 0x20);
    assert_eq!(decoder.decode(&bytes).unwrap(), fields);
    // A fresh encoder writes no update even when told of a setting at the default.
    let mut fresh = HpackEncoder::new();
    fresh.set_max_table_size(4096);
    assert_eq!(encoded(&mut fresh, &[]), Vec::<u8>::new());
}

#[test]
fn encoder_round_trips_random_fields() {
    let mut prng = Prng(0x005e_ed0f_e4c0_de42);
    let mut decoder = decoder_with(&[("x-known", "value"), (":path", "/known")]);
    let mut encoder = HpackEncoder::resume(decoder.dynamic_entries(), 4096);
    let names: [&[u8]; 6] = [b":path", b"x-known", b"cookie", b"content-type", b"x-random", b""];
    for _ in 0..2_000 {
        let count = prng.below(8);
        let fields: Vec<HeaderField> = (0..count)
            .map(|_| {
                let name = match names[prng.below(names.len())] {
                    b"" => (0..1 + prng.below(20)).map(|_| prng.next() as u8).collect(),
                    name => name.to_vec(),
                };
                let value = match prng.below(4) {
                    0 => b"/known".to_vec(),
                    1 => b"value".to_vec(),
                    _ => (0..prng.below(300)).map(|_| prng.next() as u8).collect(),
                };
                HeaderField {
                    name,
                    value,
                    sensitive: prng.below(5) == 0,
                }
            })
            .collect();
        let bytes = encoded(&mut encoder, &fields);
        assert_eq!(decoder.decode(&bytes).unwrap(), fields);
        assert_eq!(decoder.insertions(), 2);
    }
}

/// `huffman_decode` into a fresh vector.
fn decode_huffman(coded: &[u8], budget: usize) -> Result<Vec<u8>, HuffmanFault> {
    let mut decoded = Vec::new();
    huffman_decode(coded, budget, &mut decoded)?;
    Ok(decoded)
}

#[test]
fn decoding_into_reused_fields_gives_what_a_fresh_decode_gives() {
    // Blocks of differing sizes (RFC 7541 C.4, Huffman-coded, with dynamic-table
    // references), decoded into one vector whose entries are reused, against fresh decodes.
    let blocks = [
        "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
        "8286 84be 5886 a8eb 1064 9cbf",
        "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        "82",
    ];
    let mut fresh = HpackDecoder::new(HpackLimits::default());
    let mut reusing = HpackDecoder::new(HpackLimits::default());
    let mut fields = FieldList::new();
    for hex in blocks.iter().chain(blocks.iter().rev()) {
        let expected = fresh.decode(&block(hex));
        let got = reusing.decode_into(&block(hex), &mut fields);
        assert_eq!(got.map(|()| fields.to_fields()), expected, "block {hex}");
    }
}

/// The decoder as first written, bit by bit along the canonical code: the oracle the
/// window decoder is checked against.
fn bitwise_huffman_decode(coded: &[u8], budget: usize, decoded: &mut Vec<u8>) -> Result<(), HuffmanFault> {
    // The shortest code is 5 bits, so the output is at most 8/5 of the input.
    decoded.reserve(budget.min(coded.len() * 8 / 5));
    let budget = decoded.len().saturating_add(budget);
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
    Ok(())
}

#[test]
fn the_window_decoder_decodes_as_the_bitwise_one() {
    let mut rng = crate::test_rng::XorShift(0x2545_f491_4f6c_dd1du64);
    let mut next = move || rng.next();
    let mut inputs: Vec<(Vec<u8>, usize)> = Vec::new();
    for _ in 0..20_000 {
        // Random bytes: mostly errors (EOS, padding), some valid by chance.
        let len = (next() % 12) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        inputs.push((bytes, (next() % 20) as usize));
        // Encodings of random text (short and long codes), whole, cut, or with a bit
        // flipped, under a budget that may be too small.
        let text_len = (next() % 40) as usize;
        let text: Vec<u8> = (0..text_len)
            .map(|_| match next() % 4 {
                0 => next() as u8,
                _ => b"abcdefghijklmnopqrstuvwxyz0123456789/-.:"[(next() % 40) as usize],
            })
            .collect();
        let coded = huffman_encode(&text);
        let budget = if next() % 4 == 0 {
            (next() % 40) as usize
        } else {
            usize::MAX
        };
        inputs.push((coded.clone(), budget));
        if !coded.is_empty() {
            let mut cut = coded.clone();
            cut.truncate((next() % coded.len() as u64) as usize);
            inputs.push((cut, budget));
            let mut flipped = coded;
            let at = (next() % (flipped.len() as u64 * 8)) as usize;
            flipped[at / 8] ^= 0x80 >> (at % 8);
            inputs.push((flipped, budget));
        }
    }
    for (coded, budget) in &inputs {
        let mut window = b"kept".to_vec();
        let mut bitwise = b"kept".to_vec();
        let got = huffman_decode(coded, *budget, &mut window);
        let expected = bitwise_huffman_decode(coded, *budget, &mut bitwise);
        assert_eq!(got, expected, "{coded:02x?} budget {budget}");
        if expected.is_ok() {
            assert_eq!(window, bitwise, "{coded:02x?}");
        }
    }
}

/// The table's one-buffer storage against a plain list of owned entries, over insertions
/// of every size into a small table (so the buffer compacts often) and capacity changes.
#[test]
fn dynamic_table_matches_a_list_of_owned_entries() {
    let mut table = DynamicTable::new(256);
    let mut model: VecDeque<(Vec<u8>, Vec<u8>)> = VecDeque::new();
    let mut capacity = 256usize;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = |bound: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % bound) as usize
    };
    for round in 0..5_000u32 {
        if next(50) == 0 {
            capacity = next(400);
            table.set_capacity(capacity);
        } else {
            let name = vec![b'a' + (round % 26) as u8; next(40)];
            let value = vec![b'0' + (round % 10) as u8; next(200)];
            table.insert(&name, &value);
            model.push_front((name, value));
        }
        let mut size: usize = model
            .iter()
            .map(|(name, value)| field_size(name.len(), value.len()))
            .sum();
        while size > capacity {
            let (name, value) = model.pop_back().unwrap();
            size -= field_size(name.len(), value.len());
        }
        assert_eq!(table.size, size, "round {round}");
        assert_eq!(table.entries.len(), model.len(), "round {round}");
        for (index, (name, value)) in model.iter().enumerate() {
            assert_eq!(
                table.get(index),
                Some((name.as_slice(), value.as_slice())),
                "round {round}"
            );
        }
        assert!(
            table.bytes.len() <= 2 * capacity.max(1),
            "round {round}: {} bytes",
            table.bytes.len()
        );
    }
}

/// A response head with `:status` indexed and literals of every kind. Only the kept
/// values are decoded; a field entering the table is decoded whatever its name, so the
/// table stays the server's.
#[test]
fn keeping_decodes_only_the_wanted_values_and_every_table_insertion() {
    let mut response = vec![0x88]; // :status 200 (static 8)
                                   // date (static 33), literal without indexing, Huffman value.
    response.extend(integer(0, 4, 33));
    let date = huffman_encode(b"Fri, 04 Dec 2026 17:00:00 GMT");
    response.extend(integer(0x80, 7, date.len()));
    response.extend(&date);
    // content-type (static 31), literal without indexing, raw value.
    response.extend(integer(0, 4, 31));
    response.extend(raw_string(b"text/html"));
    // etag (static 34), literal with incremental indexing: decoded though not kept.
    response.extend(integer(0b0100_0000, 6, 34));
    response.extend(raw_string(b"\"abc\""));
    // server (static 54), never indexed, a Huffman value with bad padding: unchecked.
    response.extend([0x10 | 0x0f, 54 - 15, 0x81, 0x18]);

    let keep = |name: &[u8]| name == b":status" || name == b"content-type";
    let mut decoder = HpackDecoder::new(HpackLimits::default());
    let mut fields = FieldList::new();
    decoder.decode_into_keeping(&response, &mut fields, keep).unwrap();
    assert_eq!(
        pairs(&fields.to_fields()),
        [
            (":status", "200"),
            ("date", ""),
            ("content-type", "text/html"),
            ("etag", "\"abc\""),
            ("server", "")
        ]
    );
    assert_eq!(table(&decoder), owned(&[("etag", "\"abc\"")]));

    // Decoding everything finds the bad padding in `server`.
    let mut decoder = HpackDecoder::new(HpackLimits::default());
    let offset_of_server_value = response.len() - 2;
    assert_eq!(
        problem(decoder.decode(&response)),
        (offset_of_server_value, HpackProblem::HuffmanPaddingNotOnes)
    );
}

#[test]
fn skipped_values_count_toward_the_header_list_limit_and_must_be_whole() {
    let limits = HpackLimits {
        max_header_list_size: 100,
        ..HpackLimits::default()
    };
    // `date` (static 33) with a raw 80-byte value: 4 + 80 + 32 > 100 though never decoded.
    let mut block = integer(0, 4, 33);
    block.extend(raw_string(&[b'x'; 80]));
    let mut decoder = HpackDecoder::new(limits);
    let error = decoder
        .decode_into_keeping(&block, &mut FieldList::new(), |_| false)
        .unwrap_err();
    assert_eq!(error.problem, HpackProblem::HeaderListTooLarge { limit: 100 });

    // A value longer than the block is refused, skipped or not.
    let mut decoder = HpackDecoder::new(HpackLimits::default());
    let truncated = [0x0f, 33 - 15, 0x05, b'a'];
    let error = decoder
        .decode_into_keeping(&truncated, &mut FieldList::new(), |_| false)
        .unwrap_err();
    assert_eq!(
        (error.offset, error.problem),
        (
            2,
            HpackProblem::TruncatedString {
                declared: 5,
                available: 1
            }
        )
    );
}
