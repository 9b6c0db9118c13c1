//! Arbitrary client and server streams through the HTTP/2 relay, with a judge that may
//! answer some streams itself: no panic, memory stays within what the limits allow, the
//! outcome does not depend on how each direction was cut, and while no stream is answered
//! the relay is verbatim both ways (errors included: inspection then stops and the rest
//! is passed through).
//!
//! Input: a flags byte (bit 0: answer the streams whose id is 3 mod 4; bit 1: put the
//! client preface before the client stream; bit 2: interleave the two directions instead
//! of the client stream whole, then the server's; bit 3: small limits; bit 4: the server
//! closes first), a seed byte for the cuts, two bytes naming the split point, then the
//! client stream and the server stream. `seeds/http2/` has whole conversations.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;
mod inspect;

use common::{interleave, pieces, split_streams, Prng, Side};
use inspect::hpack::{FieldList, HpackLimits};
use inspect::http2::{
    Answer, Http2Connection, Http2Event, Http2Limits, Http2Output, StreamVerdict, CLIENT_PREFACE, MAX_QUEUED_FOR_CLIENT,
};
use inspect::transaction::Transaction;

/// What one run produced.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    to_server: Vec<u8>,
    to_client: Vec<u8>,
    events: Vec<Http2Event>,
    close: bool,
    answered: usize,
}

/// An upper bound on `memory_bytes()` from the limits: every buffer at most twice what
/// it may hold (a `Vec` grows by doubling), plus what is kept for reuse.
fn memory_bound(limits: &Http2Limits) -> usize {
    const RETAINED: usize = 16 * 1024;
    let block = limits.max_header_block;
    let list = limits.hpack.max_header_list_size;
    let table = limits.hpack.max_table_size.max(4096);
    // Per direction: the header block, the payload kept to parse (a header frame or a
    // SETTINGS), the client bytes held (a header block's frames or a WINDOW_UPDATE).
    let side = 2 * block + 2 * block.max(limits.max_frame_buffer) + 2 * (block + 16) + 3 * RETAINED;
    // A stream: its state and the strings of its transaction, from one request list and
    // one response list (invalid UTF-8 grows threefold into U+FFFD).
    let stream = 256 + 32 + 2 * 3 * 2 * list;
    std::mem::size_of::<Http2Connection>()
        + 2 * side
        + 3 * table
        + limits.max_streams * (stream + 16)
        + 2 * 128 * 12
        + 2 * (MAX_QUEUED_FOR_CLIENT + 64 * 1024)
        + 2 * 2 * list
        + RETAINED
}

fn answer() -> Answer {
    Answer {
        status: 403,
        headers: vec![
            ("Content-Type".into(), "text/html".into()),
            ("Connection".into(), "close".into()),
        ],
        body: b"<h1>blocked by loupe</h1>".to_vec(),
    }
}

/// Feeds the schedule, each segment whole (`prng` None) or cut in pieces, then both closes.
fn run(
    limits: Http2Limits,
    schedule: &[(Side, &[u8])],
    answer_some: bool,
    server_first: bool,
    mut prng: Option<Prng>,
) -> Outcome {
    let mut connection = Http2Connection::new(limits);
    let mut out = Http2Output::default();
    let mut answered = 0;
    let mut judge = |transaction: &Transaction, fields: &FieldList| {
        let _ = fields.len();
        let _ = transaction.url();
        match transaction.stream_id {
            Some(id) if answer_some && id % 4 == 3 => {
                answered += 1;
                StreamVerdict::Answer(answer())
            }
            _ => StreamVerdict::Forward,
        }
    };
    let bound = memory_bound(&limits);
    let check = |connection: &Http2Connection| {
        let memory = connection.memory_bytes();
        assert!(memory <= bound, "memory_bytes() {memory} > {bound}");
    };
    for &(side, segment) in schedule {
        let cut = match &mut prng {
            Some(prng) => pieces(segment, prng),
            None => vec![segment],
        };
        for piece in cut {
            match side {
                Side::Client => connection.client_bytes(piece, &mut judge, &mut out),
                Side::Server => connection.server_bytes(piece, &mut out),
            }
            check(&connection);
        }
    }
    if server_first {
        connection.server_closed(&mut out);
        connection.client_closed(&mut out);
    } else {
        connection.client_closed(&mut out);
        connection.server_closed(&mut out);
    }
    check(&connection);
    let _ = connection.open_streams();
    for event in &out.events {
        if let Http2Event::ProtocolError(error) = event {
            let _ = error.to_string();
        }
    }
    Outcome {
        to_server: out.to_server,
        to_client: out.to_client,
        events: out.events,
        close: out.close,
        answered,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&[flags, seed], data)) = data.split_first_chunk::<2>().map(|(head, rest)| (head, rest)) else {
        return;
    };
    let Some((client, server)) = split_streams(data) else {
        return;
    };
    let answer_some = flags & 1 != 0;
    let client: Vec<u8> = if flags & 2 != 0 {
        [CLIENT_PREFACE.as_slice(), client].concat()
    } else {
        client.to_vec()
    };
    let limits = if flags & 8 != 0 {
        Http2Limits {
            max_streams: 3,
            max_header_block: 300,
            hpack: HpackLimits {
                max_table_size: 256,
                max_header_list_size: 300,
            },
            max_frame_buffer: 60,
        }
    } else {
        Http2Limits::default()
    };
    let server_first = flags & 16 != 0;

    // The same order of directions, each segment whole and in pieces: the same outcome.
    let sequential = [(Side::Client, client.as_slice()), (Side::Server, server)];
    let whole = run(limits, &sequential, answer_some, server_first, None);
    let chunked = run(
        limits,
        &sequential,
        answer_some,
        server_first,
        Some(Prng::new(u64::from(seed))),
    );
    assert_eq!(whole, chunked, "outcome differs whole and in pieces");

    let interleaved;
    let outcomes = if flags & 4 != 0 {
        let schedule = interleave(&client, server, &mut Prng::new(u64::from(seed) << 8 | 1));
        interleaved = run(
            limits,
            &schedule,
            answer_some,
            server_first,
            Some(Prng::new(u64::from(seed) << 16 | 2)),
        );
        vec![&whole, &interleaved]
    } else {
        vec![&whole]
    };
    for outcome in outcomes {
        if outcome.answered == 0 {
            // No stream answered: loupe only watched, so every byte went through as it came.
            assert!(outcome.to_server == client, "client bytes not relayed verbatim");
            assert!(outcome.to_client == server, "server bytes not relayed verbatim");
            assert!(!outcome.close);
        }
    }
});
