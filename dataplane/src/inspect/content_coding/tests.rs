//! Round trips against the reference encoders (flate2, brotli), every split point, the
//! limit and bombs, corrupt streams, header parsing and chained codings.

use super::*;
use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
use flate2::Compression;
use std::io::Write;
use ContentCoding::{Brotli, Deflate, Gzip};

/// Compressible but not trivial: words with pseudo-random numbers between them.
fn content(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_u32;
    let mut text = Vec::with_capacity(len + 32);
    while text.len() < len {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let word = ["GET ", "/index.html ", "Content-Type ", "loupe ", "\n"][(state >> 16) as usize % 5];
        text.extend_from_slice(word.as_bytes());
        text.extend_from_slice((state % 1000).to_string().as_bytes());
    }
    text.truncate(len);
    text
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut encoder = ZlibEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn raw_deflate(data: &[u8]) -> Vec<u8> {
    let mut encoder = DeflateEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn br(data: &[u8]) -> Vec<u8> {
    let mut encoder = brotli::CompressorWriter::new(Vec::new(), 4096, 5, 22);
    encoder.write_all(data).unwrap();
    encoder.into_inner()
}

/// A gzip member with every optional header field (FEXTRA, FNAME, FCOMMENT, FHCRC).
fn gzip_all_fields(data: &[u8]) -> Vec<u8> {
    let mut member = vec![0x1f, 0x8b, 8, 0x02 | 0x04 | 0x08 | 0x10, 1, 2, 3, 4, 0, 3];
    member.extend_from_slice(&[0x2c, 0x01, b'A', b'B', 0x28, 0x01]); // XLEN 300: one subfield
    member.extend_from_slice(&[0; 296]); // NULs: a misread XLEN would end FNAME early
    member.extend_from_slice(b"report.txt\0a comment\0");
    let mut crc = flate2::Crc::new();
    crc.update(&member);
    member.extend_from_slice(&(crc.sum() as u16).to_le_bytes());
    member.extend_from_slice(&raw_deflate(data));
    let mut crc = flate2::Crc::new();
    crc.update(data);
    member.extend_from_slice(&crc.sum().to_le_bytes());
    member.extend_from_slice(&(data.len() as u32).to_le_bytes());
    member
}

/// Feeds `chunks` in turn; checks each return value against what was appended.
fn decode<'a>(
    codings: &[ContentCoding],
    limit: usize,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> (Vec<u8>, DecodeStatus) {
    let mut decoder = BodyDecoder::new(codings.to_vec(), limit);
    let mut out = b"prefix".to_vec();
    for chunk in chunks {
        let before = out.len();
        let appended = decoder.feed(chunk, &mut out).unwrap();
        assert_eq!(appended, out.len() - before);
    }
    (out.split_off(6), decoder.status())
}

fn whole(codings: &[ContentCoding], limit: usize, encoded: &[u8]) -> (Vec<u8>, DecodeStatus) {
    decode(codings, limit, [encoded])
}

fn bytewise(codings: &[ContentCoding], limit: usize, encoded: &[u8]) -> (Vec<u8>, DecodeStatus) {
    decode(codings, limit, encoded.chunks(1))
}

#[test]
fn round_trips_each_coding() {
    let data = content(200_000);
    let cases: [(&[ContentCoding], Vec<u8>); 5] = [
        (&[Gzip], gzip(&data)),
        (&[Deflate], zlib(&data)),
        (&[Deflate], raw_deflate(&data)),
        (&[Brotli], br(&data)),
        (&[], data.clone()),
    ];
    for (codings, encoded) in cases {
        let (decoded, status) = whole(codings, usize::MAX, &encoded);
        assert!(decoded == data, "{codings:?}: {} bytes decoded", decoded.len());
        let expected = if codings.is_empty() {
            DecodeStatus::Decoding
        } else {
            DecodeStatus::Finished
        };
        assert_eq!(status, expected, "{codings:?}");
    }
}

#[test]
fn gzip_header_fields_are_skipped() {
    let data = content(5_000);
    let member = gzip_all_fields(&data);
    // The member is valid for flate2's own (pull) decoder, which checks FHCRC.
    let mut reference = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&member[..]), &mut reference).unwrap();
    assert_eq!(reference, data);
    assert_eq!(
        whole(&[Gzip], usize::MAX, &member),
        (data.clone(), DecodeStatus::Finished)
    );
    assert_eq!(bytewise(&[Gzip], usize::MAX, &member), (data, DecodeStatus::Finished));
}

#[test]
fn every_split_matches_whole() {
    let data = content(3_000);
    let cases: [(&[ContentCoding], Vec<u8>); 6] = [
        (&[Gzip], gzip_all_fields(&data)),
        (&[Deflate], zlib(&data)),
        (&[Deflate], raw_deflate(&data)),
        (&[Brotli], br(&data)),
        (&[Gzip, Brotli], br(&gzip(&data))),
        (&[Brotli, Deflate], raw_deflate(&br(&data))),
    ];
    for (codings, encoded) in cases {
        let expected = whole(codings, usize::MAX, &encoded);
        assert_eq!(expected, (data.clone(), DecodeStatus::Finished), "{codings:?}");
        assert_eq!(
            bytewise(codings, usize::MAX, &encoded),
            expected,
            "{codings:?} bytewise"
        );
        for split in 0..=encoded.len() {
            let (head, tail) = encoded.split_at(split);
            assert_eq!(
                decode(codings, usize::MAX, [head, tail]),
                expected,
                "{codings:?} split at {split}"
            );
        }
    }
}

#[test]
fn limit_is_exact() {
    let data = content(100_000);
    let cases: [(&[ContentCoding], Vec<u8>); 5] = [
        (&[Gzip], gzip(&data)),
        (&[Deflate], zlib(&data)),
        (&[Brotli], br(&data)),
        (&[Gzip, Brotli], br(&gzip(&data))),
        (&[], data.clone()),
    ];
    for (codings, encoded) in cases {
        for limit in [0, 1, 12_345, SCRATCH, data.len() - 1] {
            let expected = (data[..limit].to_vec(), DecodeStatus::LimitReached { decoded: limit });
            assert!(whole(codings, limit, &encoded) == expected, "{codings:?} limit {limit}");
            assert!(
                bytewise(codings, limit, &encoded) == expected,
                "{codings:?} limit {limit} bytewise"
            );
        }
        if !codings.is_empty() {
            // A body exactly `limit` long is not cut.
            let (decoded, status) = whole(codings, data.len(), &encoded);
            assert!(
                decoded == data && status == DecodeStatus::Finished,
                "{codings:?}: {status:?}"
            );
        }
    }
}

#[test]
fn bomb_stops_at_limit_without_inflating_the_rest() {
    let zeros = vec![0; 64 << 20];
    let limit = 1 << 20;
    for (codings, encoded) in [([Gzip], gzip(&zeros)), ([Brotli], br(&zeros))] {
        let mut decoder = BodyDecoder::new(codings.to_vec(), limit);
        let mut out = Vec::new();
        assert_eq!(decoder.feed(&encoded, &mut out).unwrap(), limit);
        assert!(out.len() == limit && out.iter().all(|&byte| byte == 0));
        assert_eq!(decoder.status(), DecodeStatus::LimitReached { decoded: limit });
        assert_eq!(decoder.feed(&encoded, &mut out).unwrap(), 0);
        assert!(
            decoder.memory_bytes() < 8 << 20,
            "{codings:?}: {}",
            decoder.memory_bytes()
        );
        if codings == [Gzip] {
            // About 1/64 of the input inflates to 1 MiB: the rest was never looked at.
            assert!(
                decoder.codecs[0].taken < encoded.len() as u64 / 8,
                "{} of {}",
                decoder.codecs[0].taken,
                encoded.len()
            );
            assert!(decoder.memory_bytes() < 128 << 10, "{}", decoder.memory_bytes());
        }
    }
}

#[test]
fn chained_inner_stream_is_bounded_too() {
    // br over a gzip member whose FNAME never ends: decoded bytes never come, but the
    // br output the gzip header swallows stops at limit * 1.5 + MID_SLACK.
    let mut member = vec![0x1f, 0x8b, 8, 0x08, 0, 0, 0, 0, 0, 3];
    member.resize(50 << 20, b'a');
    let mut decoder = BodyDecoder::new(vec![Gzip, Brotli], 1000);
    let mut out = Vec::new();
    assert_eq!(decoder.feed(&br(&member), &mut out).unwrap(), 0);
    assert_eq!(decoder.status(), DecodeStatus::LimitReached { decoded: 0 });
    assert_eq!(decoder.mid_total, 1500 + MID_SLACK);
}

#[test]
fn corrupt_streams_name_coding_and_offset() {
    let data = content(10_000);
    let mut bad_magic = gzip(&data);
    bad_magic[1] = 0x8c;
    let mut bad_method = gzip(&data);
    bad_method[2] = 7;
    // A gzip header, then a block of the reserved type 3 (first byte 0b111).
    let mut bad_block = gzip(&data)[..10].to_vec();
    bad_block.extend_from_slice(&[0x07, 0, 0, 0]);
    let mut bad_adler = zlib(&data);
    let last = bad_adler.len() - 1;
    bad_adler[last] ^= 1;
    let cases: [(&[ContentCoding], Vec<u8>, &str, u64); 6] = [
        (&[Gzip], bad_magic, "gzip", 1),
        (&[Gzip], bad_method, "gzip", 2),
        (&[Gzip], bad_block, "gzip", 10),
        (&[Deflate], bad_adler, "deflate", last as u64),
        (&[Deflate], vec![0x07, 0, 0], "deflate", 0),
        (&[Brotli], vec![0xff; 8], "br", 0),
    ];
    for (codings, encoded, name, offset) in cases {
        for chunk in [encoded.len(), 1] {
            let mut decoder = BodyDecoder::new(codings.to_vec(), usize::MAX);
            let mut out = Vec::new();
            let error = encoded
                .chunks(chunk)
                .find_map(|piece| decoder.feed(piece, &mut out).err())
                .unwrap();
            let DecodeError::Corrupt { coding, at, .. } = &error else {
                panic!("{error:?}")
            };
            assert_eq!((*coding, *at), (name, offset), "chunk {chunk}");
            // Sticky: later input gets the same error.
            assert_eq!(decoder.feed(&gzip(b"fine"), &mut out), Err(error));
        }
    }
}

#[test]
fn trailing_garbage_after_the_stream_is_ignored() {
    let data = content(1_000);
    for (codings, mut encoded) in [([Gzip], gzip(&data)), ([Deflate], zlib(&data)), ([Brotli], br(&data))] {
        encoded.extend_from_slice(b"\xffgarbage after the end");
        assert_eq!(
            whole(&codings, usize::MAX, &encoded),
            (data.clone(), DecodeStatus::Finished)
        );
        assert_eq!(
            bytewise(&codings, usize::MAX, &encoded),
            (data.clone(), DecodeStatus::Finished)
        );
    }
}

#[test]
fn parses_content_encoding() {
    assert_eq!(parse_content_encoding(b"GZIP"), Ok(vec![Gzip]));
    assert_eq!(parse_content_encoding(b" gzip , br "), Ok(vec![Gzip, Brotli]));
    assert_eq!(parse_content_encoding(b"\tx-gzip"), Ok(vec![Gzip]));
    assert_eq!(parse_content_encoding(b"identity"), Ok(vec![]));
    assert_eq!(parse_content_encoding(b""), Ok(vec![]));
    assert_eq!(
        parse_content_encoding(b"Deflate, identity,,BR"),
        Ok(vec![Deflate, Brotli])
    );
    assert_eq!(
        parse_content_encoding(b"compress"),
        Err(DecodeError::UnknownCoding("compress".into()))
    );
    assert_eq!(
        parse_content_encoding(b"gzip, zstd"),
        Err(DecodeError::UnknownCoding("zstd".into()))
    );
    assert_eq!(
        parse_content_encoding(b"gzip, br, gzip"),
        Err(DecodeError::TooManyCodings(3))
    );
}

#[test]
fn three_codings_are_refused() {
    let mut decoder = BodyDecoder::new(vec![Gzip, Gzip, Gzip], 100);
    let mut out = Vec::new();
    assert_eq!(decoder.feed(b"x", &mut out), Err(DecodeError::TooManyCodings(3)));
    assert!(out.is_empty());
}
