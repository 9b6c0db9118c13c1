//! Helpers the HTTP targets share: reading the input's control bytes and cutting streams
//! into pieces the way TLS records might.
#![allow(dead_code)]

/// A small deterministic generator (xorshift64*), seeded from the input.
pub struct Prng(u64);

impl Prng {
    pub fn new(seed: u64) -> Self {
        // xorshift must not start at 0.
        Prng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A piece size: single bytes, small pieces and segment-sized ones.
    pub fn piece_size(&mut self) -> usize {
        let roll = self.next();
        match roll % 4 {
            0 => 1,
            1 => 2 + (roll >> 8) as usize % 7,
            2 => 9 + (roll >> 8) as usize % 64,
            _ => 500 + (roll >> 8) as usize % 2048,
        }
    }
}

/// Cuts `stream` into pieces whose sizes `prng` chooses.
pub fn pieces<'a>(stream: &'a [u8], prng: &mut Prng) -> Vec<&'a [u8]> {
    let mut rest = stream;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (piece, tail) = rest.split_at(prng.piece_size().min(rest.len()));
        out.push(piece);
        rest = tail;
    }
    out
}

/// Which stream a segment of a schedule belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// Splits the two streams into segments and interleaves them: the order in which a
/// connection sees its two directions. Each segment is a contiguous part of its stream,
/// and each stream's segments come in order.
pub fn interleave<'a>(client: &'a [u8], server: &'a [u8], prng: &mut Prng) -> Vec<(Side, &'a [u8])> {
    let mut client_pieces = pieces(client, prng).into_iter().peekable();
    let mut server_pieces = pieces(server, prng).into_iter().peekable();
    let mut out = Vec::new();
    loop {
        let take_client = match (client_pieces.peek(), server_pieces.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(_), Some(_)) => prng.next() % 3 != 0,
        };
        if take_client {
            out.push((Side::Client, client_pieces.next().unwrap_or_default()));
        } else {
            out.push((Side::Server, server_pieces.next().unwrap_or_default()));
        }
    }
    out
}

/// Splits `data` at the point its first two bytes name (little-endian, modulo its
/// length + 1): the client stream, then the server stream.
pub fn split_streams(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let (split, rest) = data.split_first_chunk::<2>()?;
    let at = usize::from(u16::from_le_bytes(*split)) % (rest.len() + 1);
    Some(rest.split_at(at))
}
