//! The relay checked from both peers' side: hand-built frames in, and the bytes each peer
//! receives parsed and HPACK-decoded as that peer would.

use std::collections::VecDeque;

use super::*;
use crate::inspect::hpack::encode_integer;

// ---- frames --------------------------------------------------------------------------

const END_STREAM: u8 = flag::END_STREAM;
const END_HEADERS: u8 = flag::END_HEADERS;
const PADDED: u8 = flag::PADDED;
const PRIORITY: u8 = flag::PRIORITY;

fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    write_frame(&mut bytes, kind, flags, stream_id, payload);
    bytes
}

fn settings(entries: &[(u16, u32)]) -> Vec<u8> {
    let payload: Vec<u8> = entries
        .iter()
        .flat_map(|(id, value)| id.to_be_bytes().into_iter().chain(value.to_be_bytes()))
        .collect();
    frame(kind::SETTINGS, 0, 0, &payload)
}

fn settings_ack() -> Vec<u8> {
    frame(kind::SETTINGS, flag::ACK, 0, &[])
}

fn headers(stream_id: u32, flags: u8, block: &[u8]) -> Vec<u8> {
    frame(kind::HEADERS, flags, stream_id, block)
}

fn continuation(stream_id: u32, flags: u8, block: &[u8]) -> Vec<u8> {
    frame(kind::CONTINUATION, flags, stream_id, block)
}

fn data(stream_id: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    frame(kind::DATA, flags, stream_id, payload)
}

fn window_update(stream_id: u32, increment: u32) -> Vec<u8> {
    frame(kind::WINDOW_UPDATE, 0, stream_id, &increment.to_be_bytes())
}

fn rst_stream(stream_id: u32, code: ErrorCode) -> Vec<u8> {
    frame(kind::RST_STREAM, 0, stream_id, &code.0.to_be_bytes())
}

fn goaway(last_stream_id: u32, code: ErrorCode) -> Vec<u8> {
    let mut payload = last_stream_id.to_be_bytes().to_vec();
    payload.extend(code.0.to_be_bytes());
    payload.extend(b"debug");
    frame(kind::GOAWAY, 0, 0, &payload)
}

fn client_start() -> Vec<u8> {
    let mut bytes = CLIENT_PREFACE.to_vec();
    bytes.extend(settings(&[
        (setting::ENABLE_PUSH, 0),
        (setting::INITIAL_WINDOW_SIZE, 1 << 20),
    ]));
    bytes
}

fn server_start() -> Vec<u8> {
    let mut bytes = settings(&[(0x3, 100), (setting::MAX_FRAME_SIZE, 16_384)]);
    bytes.extend(settings_ack());
    bytes
}

fn fields(pairs: &[(&str, &str)]) -> Vec<HeaderField> {
    pairs
        .iter()
        .map(|(name, value)| HeaderField {
            name: name.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            sensitive: false,
        })
        .collect()
}

fn get(path: &str) -> Vec<HeaderField> {
    fields(&[
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "www.example.com"),
        (":path", path),
        ("user-agent", "curl/8.5.0"),
        ("accept", "*/*"),
    ])
}

fn post(path: &str) -> Vec<HeaderField> {
    fields(&[
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "www.example.com"),
        (":path", path),
        ("content-type", "application/json"),
    ])
}

fn response(status: &str) -> Vec<HeaderField> {
    fields(&[
        (":status", status),
        ("content-type", "text/plain"),
        ("server", "origin"),
    ])
}

/// An encoder as browsers use it: every field enters the dynamic table, later uses
/// reference it, so that the peer's table matters.
struct IndexingEncoder {
    /// Newest first.
    table: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    capacity: usize,
    size_update: Option<usize>,
}

impl IndexingEncoder {
    fn new() -> Self {
        IndexingEncoder {
            table: VecDeque::new(),
            size: 0,
            capacity: 4096,
            size_update: None,
        }
    }

    fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
        self.size_update = Some(capacity);
        self.evict();
    }

    fn evict(&mut self) {
        while self.size > self.capacity {
            let (name, value) = self.table.pop_back().unwrap();
            self.size -= name.len() + value.len() + 32;
        }
    }

    fn encode(&mut self, fields: &[HeaderField]) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(size) = self.size_update.take() {
            encode_integer(&mut out, 0x20, 5, size);
        }
        for field in fields {
            if field.sensitive {
                out.push(0x10);
                encode_string(&mut out, &field.name);
                encode_string(&mut out, &field.value);
                continue;
            }
            let known = self
                .table
                .iter()
                .position(|(name, value)| *name == field.name && *value == field.value);
            match known {
                Some(position) => encode_integer(&mut out, 0x80, 7, 62 + position),
                None => {
                    out.push(0x40);
                    encode_string(&mut out, &field.name);
                    encode_string(&mut out, &field.value);
                    let size = field.name.len() + field.value.len() + 32;
                    if size <= self.capacity {
                        self.table.push_front((field.name.clone(), field.value.clone()));
                        self.size += size;
                        self.evict();
                    } else {
                        self.table.clear();
                        self.size = 0;
                    }
                }
            }
        }
        out
    }
}

fn encode_string(out: &mut Vec<u8>, text: &[u8]) {
    encode_integer(out, 0, 7, text.len());
    out.extend_from_slice(text);
}

// ---- the peers' view -----------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
struct Frame {
    kind: u8,
    flags: u8,
    stream_id: u32,
    payload: Vec<u8>,
}

/// Frames of a byte stream that must end at a frame boundary.
fn parse_frames(mut bytes: &[u8]) -> Vec<Frame> {
    if bytes.starts_with(CLIENT_PREFACE) {
        bytes = &bytes[CLIENT_PREFACE.len()..];
    }
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        assert!(bytes.len() >= 9, "a partial frame header at the end");
        let header = FrameHeader::parse(bytes[..9].try_into().unwrap());
        assert!(bytes.len() >= 9 + header.length, "a partial frame at the end");
        frames.push(Frame {
            kind: header.kind,
            flags: header.flags,
            stream_id: header.stream_id,
            payload: bytes[9..9 + header.length].to_vec(),
        });
        bytes = &bytes[9 + header.length..];
    }
    frames
}

/// A header block as the receiving peer decodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Block {
    kind: u8,
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fields: Vec<HeaderField>,
}

/// The receiving peer: assembles header blocks and decodes them with its own decoder,
/// applying table size settings when the other side's ACK arrives.
struct Receiver {
    decoder: HpackDecoder,
    /// Table sizes this peer announced, applied in order at each ACK it receives.
    announced: VecDeque<usize>,
    /// The stream may end inside a header block (the sender stopped there).
    unfinished_allowed: bool,
}

impl Receiver {
    fn new() -> Self {
        Receiver {
            decoder: HpackDecoder::new(HpackLimits::default()),
            announced: VecDeque::new(),
            unfinished_allowed: false,
        }
    }

    fn blocks(&mut self, frames: &[Frame]) -> Vec<Block> {
        let mut blocks = Vec::new();
        let mut pending: Option<(Block, Vec<u8>)> = None;
        for frame in frames {
            if frame.kind == kind::SETTINGS && frame.flags & flag::ACK != 0 {
                if let Some(size) = self.announced.pop_front() {
                    self.decoder.set_max_table_size(size);
                }
            }
            let header = FrameHeader {
                length: frame.payload.len(),
                kind: frame.kind,
                flags: frame.flags,
                stream_id: frame.stream_id,
            };
            let fragment = match frame.kind {
                kind::HEADERS | kind::PUSH_PROMISE => {
                    assert!(pending.is_none(), "a header block inside another");
                    let parts = header_frame_parts(&header, &frame.payload).unwrap();
                    let block = Block {
                        kind: frame.kind,
                        stream_id: if frame.kind == kind::PUSH_PROMISE {
                            parts.promised_stream
                        } else {
                            frame.stream_id
                        },
                        end_stream: frame.flags & END_STREAM != 0,
                        priority: parts.priority,
                        fields: Vec::new(),
                    };
                    pending = Some((block, Vec::new()));
                    parts.fragment.to_vec()
                }
                kind::CONTINUATION => frame.payload.clone(),
                _ => {
                    assert!(pending.is_none(), "a frame inside a header block");
                    continue;
                }
            };
            let (_, bytes) = pending.as_mut().expect("CONTINUATION without HEADERS");
            bytes.extend(fragment);
            if frame.flags & END_HEADERS != 0 {
                let (mut block, bytes) = pending.take().unwrap();
                block.fields = self.decoder.decode(&bytes).expect("the peer decodes every block");
                blocks.push(block);
            }
        }
        assert!(
            pending.is_none() || self.unfinished_allowed,
            "an unfinished header block"
        );
        blocks
    }
}

// ---- the relay -----------------------------------------------------------------------

/// Blocks paths that start with /blocked with a 403 page.
fn block_page(transaction: &Transaction, _: &FieldList) -> StreamVerdict {
    if transaction.path.starts_with("/blocked") {
        StreamVerdict::Answer(Answer {
            status: 403,
            headers: vec![
                ("Content-Type".to_string(), "text/html".to_string()),
                ("Connection".to_string(), "close".to_string()),
                ("content-length".to_string(), "999".to_string()),
            ],
            body: b"<h1>blocked by loupe</h1>".to_vec(),
        })
    } else {
        StreamVerdict::Forward
    }
}

/// One side's piece of a conversation.
#[derive(Debug, Clone)]
enum Step {
    Client(Vec<u8>),
    Server(Vec<u8>),
    ClientClosed,
    ServerClosed,
}

use Step::{Client, ClientClosed, Server, ServerClosed};

/// Runs the steps through a connection with `judge`, each piece fed whole or split into
/// pieces of `chunk` bytes; returns everything produced.
fn run_with(
    limits: Http2Limits,
    steps: &[Step],
    chunk: usize,
    judge: &mut Judge<'_>,
) -> (Http2Output, Http2Connection) {
    let mut connection = Http2Connection::new(limits);
    let mut out = Http2Output::default();
    for step in steps {
        match step {
            Client(bytes) => {
                for piece in bytes.chunks(chunk.max(1)) {
                    connection.client_bytes(piece, judge, &mut out);
                }
            }
            Server(bytes) => {
                for piece in bytes.chunks(chunk.max(1)) {
                    connection.server_bytes(piece, &mut out);
                }
            }
            ClientClosed => connection.client_closed(&mut out),
            ServerClosed => connection.server_closed(&mut out),
        }
    }
    (out, connection)
}

/// Feeds server bytes as the engine does, with [`Http2Connection::relay_server_bytes`] on
/// an empty queue, and adds what the client gets to `out.to_client`: the piece itself
/// when it went as is.
fn relay_server_piece(connection: &mut Http2Connection, piece: &[u8], out: &mut Http2Output) -> ServerRelay {
    let mut sent = std::mem::take(&mut out.to_client);
    let relayed = connection.relay_server_bytes(piece, out);
    match relayed {
        ServerRelay::AsIs => {
            assert!(
                out.to_client.is_empty(),
                "as is, yet {} bytes queued",
                out.to_client.len()
            );
            sent.extend_from_slice(piece);
        }
        ServerRelay::Queued => sent.append(&mut out.to_client),
    }
    out.to_client = sent;
    relayed
}

/// [`run_with`] with the server's pieces relayed as the engine relays them; also counts
/// the pieces that went as is.
fn run_relaying(steps: &[Step], chunk: usize) -> (Http2Output, usize) {
    let mut connection = Http2Connection::new(Http2Limits::default());
    let mut out = Http2Output::default();
    let mut as_is = 0;
    for step in steps {
        match step {
            Client(bytes) => {
                for piece in bytes.chunks(chunk.max(1)) {
                    connection.client_bytes(piece, &mut block_page, &mut out);
                }
            }
            Server(bytes) => {
                for piece in bytes.chunks(chunk.max(1)) {
                    as_is += usize::from(relay_server_piece(&mut connection, piece, &mut out) == ServerRelay::AsIs);
                }
            }
            ClientClosed => connection.client_closed(&mut out),
            ServerClosed => connection.server_closed(&mut out),
        }
    }
    (out, as_is)
}

fn run(steps: &[Step]) -> (Http2Output, Http2Connection) {
    run_with(Http2Limits::default(), steps, usize::MAX, &mut block_page)
}

fn client_bytes(steps: &[Step]) -> Vec<u8> {
    steps
        .iter()
        .filter_map(|step| match step {
            Client(bytes) => Some(bytes.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn server_bytes(steps: &[Step]) -> Vec<u8> {
    steps
        .iter()
        .filter_map(|step| match step {
            Server(bytes) => Some(bytes.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn completed(out: &Http2Output) -> Vec<Transaction> {
    out.events
        .iter()
        .filter_map(|event| match event {
            Http2Event::TransactionComplete { transaction } => Some((**transaction).clone()),
            _ => None,
        })
        .collect()
}

fn errors(out: &Http2Output) -> Vec<Http2Error> {
    out.events
        .iter()
        .filter_map(|event| match event {
            Http2Event::ProtocolError(error) => Some(error.clone()),
            _ => None,
        })
        .collect()
}

fn join(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

// ---- plain relaying ------------------------------------------------------------------

#[test]
fn preface_and_settings_exchange_pass_verbatim() {
    let steps = [
        Client(join(&[client_start(), window_update(0, 1 << 20)])),
        Server(server_start()),
        Client(settings_ack()),
        Server(frame(kind::PING, 0, 0, b"12345678")),
        Client(frame(kind::PING, flag::ACK, 0, b"12345678")),
    ];
    let (out, connection) = run(&steps);
    assert_eq!(out.to_server, client_bytes(&steps));
    assert_eq!(out.to_client, server_bytes(&steps));
    assert!(out.events.is_empty(), "{:?}", out.events);
    assert!(!out.close);
    assert_eq!(connection.open_streams(), 0);
}

#[test]
fn get_and_response_make_one_transaction_with_every_field() {
    let mut client = IndexingEncoder::new();
    let mut server = IndexingEncoder::new();
    let request = fields(&[
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "shop.example:8443"),
        (":path", "/search?q=loupe&page=2"),
        ("user-agent", "Mozilla/5.0"),
        ("referer", "https://shop.example/"),
        ("host", "ignored.example"),
    ]);
    let steps = [
        Client(join(&[
            client_start(),
            headers(1, END_HEADERS | END_STREAM, &client.encode(&request)),
        ])),
        Server(join(&[
            server_start(),
            headers(1, END_HEADERS, &server.encode(&response("200"))),
            data(1, 0, b"hello"),
            data(1, END_STREAM, b"abc"),
        ])),
    ];
    let mut judged = Vec::new();
    let (out, connection) = run_with(Http2Limits::default(), &steps, usize::MAX, &mut |transaction, _| {
        judged.push(transaction.clone());
        StreamVerdict::Forward
    });
    assert_eq!(out.to_server, client_bytes(&steps));
    assert_eq!(out.to_client, server_bytes(&steps));
    let expected = Transaction {
        version: Some(HttpVersion::Http2),
        stream_id: Some(1),
        method: "GET".into(),
        scheme: Some("https".into()),
        host: Some("shop.example:8443".into()),
        path: "/search".into(),
        query: Some("q=loupe&page=2".into()),
        user_agent: Some("Mozilla/5.0".into()),
        referer: Some("https://shop.example/".into()),
        request_content_type: None,
        response_content_type: Some("text/plain".into()),
        status: Some(200),
        request_body_len: 0,
        response_body_len: 8,
        marks: Default::default(),
    };
    let request_side = Transaction {
        response_content_type: None,
        status: None,
        response_body_len: 0,
        ..expected.clone()
    };
    assert_eq!(judged, vec![request_side]);
    assert_eq!(
        out.events,
        vec![
            Http2Event::RequestHead { stream_id: 1 },
            Http2Event::ResponseHead {
                stream_id: 1,
                status: 200,
                interim: false,
            },
            Http2Event::TransactionComplete {
                transaction: Box::new(expected),
            },
        ]
    );
    assert_eq!(connection.open_streams(), 0);
}

#[test]
fn host_header_stands_in_for_a_missing_authority() {
    let mut client = IndexingEncoder::new();
    let request = fields(&[
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/"),
        ("host", "fallback.example"),
    ]);
    let steps = [Client(join(&[
        client_start(),
        headers(1, END_HEADERS | END_STREAM, &client.encode(&request)),
    ]))];
    let mut judged = Vec::new();
    let mut judge = |request: &Transaction, _: &FieldList| {
        judged.push(request.clone());
        StreamVerdict::Forward
    };
    let (out, _) = run_with(Http2Limits::default(), &steps, usize::MAX, &mut judge);
    assert!(matches!(out.events[0], Http2Event::RequestHead { stream_id: 1 }));
    let [request] = &judged[..] else {
        panic!("{judged:?}");
    };
    assert_eq!(request.host.as_deref(), Some("fallback.example"));
    assert_eq!(request.query, None);
}

#[test]
fn many_concurrent_streams_interleave() {
    let mut client = IndexingEncoder::new();
    let mut server = IndexingEncoder::new();
    let ids: Vec<u32> = (0..20).map(|n| 2 * n + 1).collect();
    let mut client_part = client_start();
    for &id in &ids {
        client_part.extend(headers(
            id,
            END_HEADERS,
            &client.encode(&post(&format!("/upload/{id}"))),
        ));
    }
    // Request bodies, round robin: stream n sends n bytes in each of 3 frames.
    for round in 0..3 {
        for &id in &ids {
            let flags = if round == 2 { END_STREAM } else { 0 };
            client_part.extend(data(id, flags, &vec![b'x'; id as usize]));
        }
    }
    let mut server_part = server_start();
    for &id in ids.iter().rev() {
        server_part.extend(headers(id, END_HEADERS, &server.encode(&response("201"))));
    }
    for &id in &ids {
        server_part.extend(data(id, 0, b"0123"));
    }
    for &id in ids.iter().rev() {
        server_part.extend(data(id, END_STREAM, b"56"));
    }
    let steps = [Client(client_part), Server(server_part)];
    let (out, connection) = run(&steps);
    assert_eq!(out.to_server, client_bytes(&steps));
    assert_eq!(out.to_client, server_bytes(&steps));
    let done = completed(&out);
    assert_eq!(done.len(), ids.len());
    // Completed in the order of the last DATA frames: reversed.
    for (transaction, &id) in done.iter().zip(ids.iter().rev()) {
        assert_eq!(transaction.stream_id, Some(id));
        assert_eq!(transaction.path, format!("/upload/{id}"));
        assert_eq!(transaction.method, "POST");
        assert_eq!(transaction.request_content_type.as_deref(), Some("application/json"));
        assert_eq!(transaction.request_body_len, 3 * u64::from(id));
        assert_eq!(transaction.response_body_len, 6);
        assert_eq!(transaction.status, Some(201));
    }
    assert_eq!(connection.open_streams(), 0);
}

#[test]
fn continuation_frames_are_assembled_both_ways() {
    let mut client = IndexingEncoder::new();
    let mut server = IndexingEncoder::new();
    let mut request = get("/continued");
    request.push(HeaderField {
        name: b"x-long".to_vec(),
        value: vec![b'v'; 3000],
        sensitive: false,
    });
    let block = client.encode(&request);
    let (a, rest) = block.split_at(10);
    let (b, c) = rest.split_at(1000);
    let response_block = server.encode(&response("200"));
    let (d, e) = response_block.split_at(5);
    let steps = [
        Client(join(&[
            client_start(),
            headers(1, END_STREAM, a),
            continuation(1, 0, b),
            continuation(1, 0, &[]),
            continuation(1, END_HEADERS, c),
        ])),
        Server(join(&[
            server_start(),
            headers(1, 0, d),
            continuation(1, END_HEADERS, e),
            data(1, END_STREAM, b"ok"),
        ])),
    ];
    let (out, _) = run(&steps);
    assert_eq!(out.to_server, client_bytes(&steps));
    assert_eq!(out.to_client, server_bytes(&steps));
    let done = completed(&out);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].path, "/continued");
    assert_eq!(done[0].status, Some(200));
}

#[test]
fn padding_is_not_counted_as_body() {
    let mut client = IndexingEncoder::new();
    let mut server = IndexingEncoder::new();
    let padded = |body: &[u8], padding: usize| {
        let mut payload = vec![padding as u8];
        payload.extend_from_slice(body);
        payload.extend(vec![0; padding]);
        payload
    };
    let mut headers_payload = vec![7u8]; // pad length
    headers_payload.extend([0x80, 0, 0, 0, 15]); // exclusive dependency on 0, weight 16
    headers_payload.extend(client.encode(&post("/padded")));
    headers_payload.extend([0; 7]);
    let steps = [
        Client(join(&[
            client_start(),
            headers(1, END_HEADERS | PADDED | PRIORITY, &headers_payload),
            data(1, PADDED, &padded(b"12345", 10)),
            data(1, PADDED | END_STREAM, &padded(b"", 0)),
        ])),
        Server(join(&[
            server_start(),
            headers(1, END_HEADERS | PADDED, &padded(&server.encode(&response("200")), 3)),
            data(1, PADDED | END_STREAM, &padded(b"abc", 255)),
        ])),
    ];
    let (out, _) = run(&steps);
    assert_eq!(out.to_server, client_bytes(&steps));
    assert_eq!(out.to_client, server_bytes(&steps));
    let done = completed(&out);
    assert_eq!(done.len(), 1, "{:?}", out.events);
    assert_eq!(done[0].request_body_len, 5);
    assert_eq!(done[0].response_body_len, 3);
    assert_eq!(done[0].path, "/padded");
}

#[test]
fn padding_longer_than_the_payload_is_an_error() {
    let steps = [Client(join(&[client_start(), data(1, PADDED, &[5, 1, 2])]))];
    let (out, _) = run(&steps);
    let errors = errors(&out);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].code, ErrorCode::PROTOCOL_ERROR);
    assert_eq!(errors[0].problem, Http2Problem::PaddingTooLong { padding: 5 });
    assert_eq!(out.to_server, client_bytes(&steps));
}

#[test]
fn trailers_and_interim_responses() {
    let mut client = IndexingEncoder::new();
    let mut server = IndexingEncoder::new();
    let steps = [
        Client(join(&[
            client_start(),
            headers(
                1,
                END_HEADERS,
                &client.encode(&fields(&[
                    (":method", "PUT"),
                    (":scheme", "https"),
                    (":authority", "a.example"),
                    (":path", "/file"),
                    ("expect", "100-continue"),
                ])),
            ),
        ])),
        Server(join(&[
            server_start(),
            headers(1, END_HEADERS, &server.encode(&fields(&[(":status", "100")]))),
        ])),
        Client(join(&[
            data(1, 0, b"body"),
            headers(
                1,
                END_HEADERS | END_STREAM,
                &client.encode(&fields(&[("x-checksum", "1")])),
            ),
        ])),
        Server(join(&[
            headers(1, END_HEADERS, &server.encode(&fields(&[(":status", "103")]))),
            headers(1, END_HEADERS, &server.encode(&response("204"))),
            headers(
                1,
                END_HEADERS | END_STREAM,
                &server.encode(&fields(&[("grpc-status", "0")])),
            ),
        ])),
    ];
    let (out, _) = run(&steps);
    assert_eq!(out.to_server, client_bytes(&steps));
    assert_eq!(out.to_client, server_bytes(&steps));
    let heads: Vec<(u16, bool)> = out
        .events
        .iter()
        .filter_map(|event| match event {
            Http2Event::ResponseHead { status, interim, .. } => Some((*status, *interim)),
            _ => None,
        })
        .collect();
    assert_eq!(heads, vec![(100, true), (103, true), (204, false)]);
    let done = completed(&out);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].status, Some(204));
    assert_eq!(done[0].request_body_len, 4);
    assert!(done[0].marks.expect_continue);
}

#[test]
fn unknown_frames_priority_and_ping_pass_and_are_ignored() {
    let mut client = IndexingEncoder::new();
    let steps = [
        Client(join(&[
            client_start(),
            frame(0xfa, 0xff, 0, b"extension"),
            frame(kind::PRIORITY, 0, 9, &[0, 0, 0, 0, 200]),
            headers(1, END_HEADERS | END_STREAM, &client.encode(&get("/"))),
            frame(0x0c, 0, 1, &vec![7; 16_000]),
        ])),
        Server(join(&[
            server_start(),
            frame(kind::PING, 0, 0, b"pingping"),
            frame(0x0a, 0, 0, b"altsvc"),
        ])),
    ];
    let (out, connection) = run(&steps);
    assert_eq!(out.to_server, client_bytes(&steps));
    assert_eq!(out.to_client, server_bytes(&steps));
    assert!(errors(&out).is_empty());
    assert_eq!(connection.open_streams(), 1);
}

#[test]
fn rst_stream_either_way_completes_the_transaction() {
    let mut client = IndexingEncoder::new();
    let mut server = IndexingEncoder::new();
    let steps = [
        Client(join(&[
            client_start(),
            headers(1, END_HEADERS, &client.encode(&post("/a"))),
            headers(3, END_HEADERS | END_STREAM, &client.encode(&get("/b"))),
            data(1, 0, b"part"),
            rst_stream(1, ErrorCode::CANCEL),
        ])),
        Server(join(&[
            server_start(),
            headers(3, END_HEADERS, &server.encode(&response("200"))),
            rst_stream(3, ErrorCode::INTERNAL_ERROR),
        ])),
    ];
    let (out, connection) = run(&steps);
    assert_eq!(out.to_server, client_bytes(&steps));
    assert_eq!(out.to_client, server_bytes(&steps));
    let resets: Vec<&Http2Event> = out
        .events
        .iter()
        .filter(|event| matches!(event, Http2Event::StreamReset { .. }))
        .collect();
    assert_eq!(
        resets,
        vec![
            &Http2Event::StreamReset {
                stream_id: 1,
                by: Peer::Client,
                error_code: ErrorCode::CANCEL,
            },
            &Http2Event::StreamReset {
                stream_id: 3,
                by: Peer::Server,
                error_code: ErrorCode::INTERNAL_ERROR,
            },
        ]
    );
    let done = completed(&out);
    assert_eq!(done.len(), 2);
    assert_eq!((done[0].stream_id, done[0].request_body_len), (Some(1), 4));
    assert_eq!((done[1].stream_id, done[1].status), (Some(3), Some(200)));
    assert_eq!(connection.open_streams(), 0);
}

#[test]
fn goaway_is_reported_and_ends_unprocessed_streams() {
    let mut client = IndexingEncoder::new();
    let steps = [
        Client(join(&[
            client_start(),
            headers(1, END_HEADERS | END_STREAM, &client.encode(&get("/1"))),
            headers(3, END_HEADERS | END_STREAM, &client.encode(&get("/3"))),
            headers(5, END_HEADERS | END_STREAM, &client.encode(&get("/5"))),
        ])),
        Server(join(&[server_start(), goaway(1, ErrorCode::NO_ERROR)])),
        Client(goaway(0, ErrorCode::NO_ERROR)),
    ];
    let (out, connection) = run(&steps);
    assert_eq!(out.to_client, server_bytes(&steps));
    let goaways: Vec<&Http2Event> = out
        .events
        .iter()
        .filter(|event| matches!(event, Http2Event::GoAway { .. }))
        .collect();
    assert_eq!(
        goaways,
        vec![
            &Http2Event::GoAway {
                by: Peer::Server,
                last_stream_id: 1,
                error_code: ErrorCode::NO_ERROR,
            },
            &Http2Event::GoAway {
                by: Peer::Client,
                last_stream_id: 0,
                error_code: ErrorCode::NO_ERROR,
            },
        ]
    );
    let ended: Vec<Option<u32>> = completed(&out).iter().map(|t| t.stream_id).collect();
    assert_eq!(ended, vec![Some(3), Some(5)]);
    assert_eq!(connection.open_streams(), 1);
}

#[test]
fn server_push_makes_a_transaction_of_its_own() {
    let mut client = IndexingEncoder::new();
    let mut server = IndexingEncoder::new();
    let mut promise = 2u32.to_be_bytes().to_vec();
    promise.extend(server.encode(&get("/style.css")));
    let steps = [
        Client(join(&[
            client_start(),
            headers(1, END_HEADERS | END_STREAM, &client.encode(&get("/"))),
        ])),
        Server(join(&[
            server_start(),
            frame(kind::PUSH_PROMISE, END_HEADERS, 1, &promise),
            headers(1, END_HEADERS, &server.encode(&response("200"))),
            headers(2, END_HEADERS, &server.encode(&response("200"))),
            data(2, END_STREAM, b"body{}"),
            data(1, END_STREAM, b"<html>"),
        ])),
    ];
    let (out, _) = run(&steps);
    assert_eq!(out.to_client, server_bytes(&steps));
    let done = completed(&out);
    assert_eq!(done.len(), 2);
    assert_eq!((done[0].stream_id, done[0].path.as_str()), (Some(2), "/style.css"));
    assert_eq!(done[0].response_body_len, 6);
    assert_eq!((done[1].stream_id, done[1].path.as_str()), (Some(1), "/"));
}

#[test]
fn closing_completes_open_transactions() {
    let mut client = IndexingEncoder::new();
    let steps = [
        Client(join(&[
            client_start(),
            headers(1, END_HEADERS, &client.encode(&post("/a"))),
            headers(3, END_HEADERS, &client.encode(&post("/b"))),
        ])),
        Server(server_start()),
        ClientClosed,
        ServerClosed,
    ];
    let (out, connection) = run(&steps);
    let ended: Vec<Option<u32>> = completed(&out).iter().map(|t| t.stream_id).collect();
    assert_eq!(ended, vec![Some(1), Some(3)]);
    assert_eq!(connection.open_streams(), 0);
}

// ---- feeding -------------------------------------------------------------------------

/// A conversation with a bit of everything, a blocked stream included.
fn busy_conversation() -> Vec<Step> {
    let mut client = IndexingEncoder::new();
    let mut server = IndexingEncoder::new();
    // Blocks are encoded in the order they go on the wire.
    let upload = client.encode(&post("/upload"));
    let blocked = client.encode(&post("/blocked/upload"));
    let split = client.encode(&get("/split"));
    let (a, b) = split.split_at(4);
    vec![
        Client(join(&[
            client_start(),
            headers(1, END_HEADERS, &upload),
            data(1, PADDED, &[2, b'a', b'b', 0, 0]),
        ])),
        Server(join(&[server_start(), headers(1, 0, &server.encode(&response("200")))])),
        Client(join(&[
            headers(3, END_HEADERS, &blocked),
            data(3, 0, b"secret"),
            data(1, END_STREAM, b"cd"),
            headers(5, END_STREAM, a),
            continuation(5, END_HEADERS, b),
        ])),
        Server(join(&[
            continuation(1, END_HEADERS, &[]),
            data(1, END_STREAM, b"done"),
            headers(5, END_HEADERS, &server.encode(&response("404"))),
        ])),
        Client(join(&[
            window_update(0, 100),
            window_update(0, 100),
            rst_stream(3, ErrorCode::CANCEL),
        ])),
        Server(data(5, END_STREAM, &[1; 100])),
        ClientClosed,
    ]
}

#[test]
fn byte_at_a_time_gives_the_same_output_as_whole_pieces() {
    let steps = busy_conversation();
    let (whole, _) = run(&steps);
    assert!(
        whole
            .events
            .iter()
            .any(|event| matches!(event, Http2Event::Answered { .. })),
        "{:#?}",
        whole.events
    );
    assert!(errors(&whole).is_empty(), "{:?}", errors(&whole));
    for chunk in [1, 2, 3, 7, 13] {
        let (pieces, _) = run_with(Http2Limits::default(), &steps, chunk, &mut block_page);
        assert_eq!(pieces.to_server, whole.to_server, "pieces of {chunk}");
        assert_eq!(pieces.to_client, whole.to_client, "pieces of {chunk}");
        assert_eq!(pieces.events, whole.events, "pieces of {chunk}");
    }
}

#[test]
fn relaying_server_bytes_uncopied_sends_what_copying_sends() {
    let mut client = IndexingEncoder::new();
    let mut server = IndexingEncoder::new();
    let plain = vec![
        Client(join(&[
            client_start(),
            headers(1, END_HEADERS | END_STREAM, &client.encode(&get("/a"))),
        ])),
        Server(join(&[
            server_start(),
            settings_ack(),
            headers(1, END_HEADERS, &server.encode(&response("200"))),
            data(1, END_STREAM, &[7; 3000]),
        ])),
    ];
    let mut client = IndexingEncoder::new();
    let server_error = vec![
        Client(join(&[
            client_start(),
            headers(1, END_HEADERS, &client.encode(&post("/"))),
        ])),
        Server(join(&[server_start(), headers(1, END_HEADERS, &[0xc0])])),
        Server(data(1, END_STREAM, b"x")),
    ];
    let conversations = [
        ("plain", plain),
        ("busy", busy_conversation()),
        ("server error", server_error),
    ];
    for (name, steps) in &conversations {
        for chunk in [usize::MAX, 1, 2, 5, 9, 10, 100] {
            let (copied, _) = run_with(Http2Limits::default(), steps, chunk, &mut block_page);
            let (relayed, as_is) = run_relaying(steps, chunk);
            assert_eq!(relayed.to_client, copied.to_client, "{name}, pieces of {chunk}");
            assert_eq!(relayed.to_server, copied.to_server, "{name}, pieces of {chunk}");
            assert_eq!(relayed.events, copied.events, "{name}, pieces of {chunk}");
            assert_eq!(relayed.close, copied.close, "{name}, pieces of {chunk}");
            if chunk == usize::MAX && *name == "plain" {
                // Whole frames from the server, nothing for loupe to add: no copy.
                assert_eq!(as_is, 1, "{name}");
            }
        }
    }
    // In the busy conversation loupe answers a stream: its frames for the client wait for
    // a frame boundary and go between the server's, which then cannot go as they came.
    let (_, as_is) = run_relaying(&conversations[1].1, usize::MAX);
    assert!(
        as_is < 3,
        "{as_is} of 3 server pieces as is, though loupe had frames to add"
    );
}

// ---- blocking ------------------------------------------------------------------------

fn answered(out: &Http2Output) -> Vec<(u32, u16)> {
    out.events
        .iter()
        .filter_map(|event| match event {
            Http2Event::Answered { stream_id, status } => Some((*stream_id, *status)),
            _ => None,
        })
        .collect()
}

#[test]
fn blocked_stream_never_reaches_the_server_and_later_blocks_are_reencoded() {
    let mut client = IndexingEncoder::new();
    let mut server = IndexingEncoder::new();
    let with_secret = |path: &str| {
        let mut request = get(path);
        request.push(HeaderField {
            name: b"x-token".to_vec(),
            value: b"only-in-the-blocked-request".to_vec(),
            sensitive: false,
        });
        request
    };
    let mut cookie = get("/7");
    cookie.push(HeaderField {
        name: b"cookie".to_vec(),
        value: b"session=42".to_vec(),
        sensitive: true,
    });
    // Stream 3 adds x-token to the client's table; streams 5 and 9 reference it.
    let sent: Vec<(u32, Vec<HeaderField>)> = vec![
        (1, get("/1")),
        (3, with_secret("/blocked/3")),
        (5, with_secret("/5")),
        (7, cookie),
        (9, with_secret("/1")),
    ];
    let mut client_part = client_start();
    for (id, request) in &sent {
        client_part.extend(headers(*id, END_HEADERS | END_STREAM, &client.encode(request)));
    }
    let mut server_part = server_start();
    for id in [1, 5, 7, 9] {
        server_part.extend(headers(id, END_HEADERS, &server.encode(&response("200"))));
        server_part.extend(data(id, END_STREAM, b"fine"));
    }
    let steps = [Client(client_part), Server(server_part)];
    let (out, connection) = run(&steps);
    assert!(errors(&out).is_empty(), "{:?}", errors(&out));
    assert!(!out.close);
    assert_eq!(answered(&out), vec![(3, 403)]);

    // The server's view: no frame of stream 3, and every block decodes on a fresh decoder
    // to what the client sent.
    let to_server = parse_frames(&out.to_server);
    assert!(to_server.iter().all(|frame| frame.stream_id != 3));
    let blocks = Receiver::new().blocks(&to_server);
    let expected: Vec<(u32, Vec<HeaderField>)> = sent.iter().filter(|(id, _)| *id != 3).cloned().collect();
    let got: Vec<(u32, Vec<HeaderField>)> = blocks.iter().map(|b| (b.stream_id, b.fields.clone())).collect();
    assert_eq!(got, expected);
    assert!(blocks.iter().all(|block| block.end_stream));
    // Block 1 went verbatim; blocks after the answer were re-encoded.
    assert!(out
        .to_server
        .starts_with(&client_bytes(&steps)[..CLIENT_PREFACE.len() + 15]));

    // The client's view: the server's frames plus a 403 for stream 3, which decodes with
    // the client's table left as the server's encoder keeps it.
    let to_client = parse_frames(&out.to_client);
    let mut receiver = Receiver::new();
    let blocks = receiver.blocks(&to_client);
    let answer = blocks.iter().find(|block| block.stream_id == 3).unwrap();
    assert_eq!(
        answer.fields,
        fields(&[
            (":status", "403"),
            ("content-type", "text/html"),
            ("content-length", "25"),
        ])
    );
    assert!(!answer.end_stream);
    let body: Vec<&Frame> = to_client
        .iter()
        .filter(|f| f.stream_id == 3 && f.kind == kind::DATA)
        .collect();
    assert_eq!(body.len(), 1);
    assert_eq!(body[0].payload, b"<h1>blocked by loupe</h1>");
    assert_eq!(body[0].flags, END_STREAM);
    // The request had ended: no RST_STREAM.
    assert!(!to_client.iter().any(|f| f.kind == kind::RST_STREAM));
    // The server's responses still decode after the answer: the table was not touched.
    assert_eq!(blocks.iter().filter(|block| block.stream_id != 3).count(), 4);
    assert_eq!(receiver.decoder.insertions(), 3);

    let done = completed(&out);
    assert_eq!(done.len(), 5);
    assert_eq!((done[0].stream_id, done[0].status), (Some(3), Some(403)));
    assert_eq!(done[0].response_body_len, 25);
    assert_eq!(done[0].response_content_type.as_deref(), Some("text/html"));
    assert_eq!(connection.open_streams(), 0);
}

#[test]
fn blocked_upload_is_dropped_reset_and_its_window_credited() {
    let mut client = IndexingEncoder::new();
    let mut server = IndexingEncoder::new();
    let steps = [
        Client(join(&[
            client_start(),
            headers(1, END_HEADERS, &client.encode(&post("/blocked"))),
            data(1, 0, &[0; 1000]),
            window_update(1, 500),
            frame(kind::PRIORITY, 0, 1, &[0, 0, 0, 0, 1]),
            frame(0xee, 0, 1, b"unknown"),
            data(1, PADDED | END_STREAM, &[10; 50]),
            headers(3, END_HEADERS | END_STREAM, &client.encode(&get("/ok"))),
            rst_stream(1, ErrorCode::CANCEL),
        ])),
        Server(join(&[
            server_start(),
            headers(3, END_HEADERS, &server.encode(&response("200"))),
            data(3, END_STREAM, b"fine"),
        ])),
    ];
    let (out, _) = run(&steps);
    assert!(errors(&out).is_empty(), "{:?}", errors(&out));
    let to_server = parse_frames(&out.to_server);
    assert!(to_server.iter().all(|frame| frame.stream_id != 1));
    let blocks = Receiver::new().blocks(&to_server);
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].fields, get("/ok"));
    // No event for the client's RST_STREAM of a stream loupe already ended.
    assert!(!out
        .events
        .iter()
        .any(|event| matches!(event, Http2Event::StreamReset { .. })));

    let to_client = parse_frames(&out.to_client);
    let ours: Vec<(u8, u8, u32)> = to_client
        .iter()
        .filter(|f| f.stream_id == 1 || (f.kind == kind::WINDOW_UPDATE))
        .map(|f| (f.kind, f.flags, f.stream_id))
        .collect();
    assert_eq!(
        ours,
        vec![
            (kind::HEADERS, END_HEADERS, 1),
            (kind::DATA, END_STREAM, 1),
            (kind::RST_STREAM, 0, 1),
            (kind::WINDOW_UPDATE, 0, 0),
        ]
    );
    let reset = to_client.iter().find(|f| f.kind == kind::RST_STREAM).unwrap();
    assert_eq!(reset.payload, ErrorCode::NO_ERROR.0.to_be_bytes());
    let credit = to_client.iter().find(|f| f.kind == kind::WINDOW_UPDATE).unwrap();
    assert_eq!(credit.payload, 1050u32.to_be_bytes());
}

#[test]
fn client_window_updates_are_rewritten_for_injected_data() {
    let mut client = IndexingEncoder::new();
    let body_len = b"<h1>blocked by loupe</h1>".len() as u32;
    let steps = [
        Client(join(&[
            client_start(),
            headers(1, END_HEADERS | END_STREAM, &client.encode(&get("/blocked"))),
        ])),
        Server(server_start()),
        Client(join(&[
            window_update(0, 10),
            window_update(5, 10),
            window_update(0, 10),
            window_update(0, 1000),
            window_update(0, 7),
        ])),
    ];
    let (out, _) = run(&steps);
    let increments: Vec<(u32, u32)> = parse_frames(&out.to_server)
        .iter()
        .filter(|f| f.kind == kind::WINDOW_UPDATE)
        .map(|f| (f.stream_id, read_u32(&f.payload, 0)))
        .collect();
    // 25 injected bytes: the first two connection increments (10 + 10) are absorbed, the
    // third loses the 5 left; stream-level ones pass.
    assert_eq!(body_len, 25);
    assert_eq!(increments, vec![(5, 10), (0, 995), (0, 7)]);
}

#[test]
fn answer_body_that_does_not_fit_the_window_is_left_out() {
    let mut client = IndexingEncoder::new();
    let mut server = IndexingEncoder::new();
    let steps = [
        Client(join(&[
            CLIENT_PREFACE.to_vec(),
            settings(&[(setting::INITIAL_WINDOW_SIZE, 65_535)]),
            headers(1, END_HEADERS | END_STREAM, &client.encode(&get("/big"))),
        ])),
        // The server uses up the connection window but 10 bytes.
        Server(join(&[
            server_start(),
            headers(1, END_HEADERS, &server.encode(&response("200"))),
            data(1, 0, &[0; 16_384]),
            data(1, 0, &[0; 16_384]),
            data(1, 0, &[0; 16_384]),
            data(1, 0, &[0; 16_383 - 10]),
        ])),
        Client(headers(3, END_HEADERS | END_STREAM, &client.encode(&get("/blocked")))),
    ];
    let (out, _) = run(&steps);
    let to_client = parse_frames(&out.to_client);
    let ours: Vec<&Frame> = to_client.iter().filter(|f| f.stream_id == 3).collect();
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].flags, END_HEADERS | END_STREAM);
    let blocks = Receiver::new().blocks(&to_client);
    assert_eq!(
        blocks.last().unwrap().fields,
        fields(&[
            (":status", "403"),
            ("content-type", "text/html"),
            ("content-length", "0"),
        ])
    );
    assert_eq!(completed(&out)[0].response_body_len, 0);
}

#[test]
fn answers_wait_for_a_frame_boundary_toward_the_client() {
    let mut client = IndexingEncoder::new();
    let mut server = IndexingEncoder::new();
    let response_block = server.encode(&response("200"));
    let mut connection = Http2Connection::new(Http2Limits::default());
    let mut out = Http2Output::default();
    let mut judge = block_page;
    let start = join(&[client_start(), headers(1, END_HEADERS, &client.encode(&post("/up")))]);
    connection.client_bytes(&start, &mut judge, &mut out);
    // The server is inside a header block, then inside a DATA frame.
    let server_part = join(&[server_start(), headers(1, 0, &response_block)]);
    connection.server_bytes(&server_part, &mut out);
    let blocked = headers(3, END_HEADERS | END_STREAM, &client.encode(&get("/blocked")));
    connection.client_bytes(&blocked, &mut judge, &mut out);
    assert_eq!(out.to_client, server_part, "nothing injected inside a header block");
    let continued = continuation(1, END_HEADERS, &[]);
    let data_frame = data(1, 0, b"0123456789");
    connection.server_bytes(&join(&[continued.clone(), data_frame[..12].to_vec()]), &mut out);
    // The answer went right after the CONTINUATION, before the DATA frame.
    let frames_so_far = parse_frames(&out.to_client[..out.to_client.len() - 12]);
    assert_eq!(frames_so_far.last().unwrap().stream_id, 3);
    assert!(out.to_client.ends_with(&data_frame[..12]));
    // Client DATA on the answered stream: the credit waits for the DATA frame to end.
    let late = data(3, 0, b"late");
    connection.client_bytes(&late, &mut judge, &mut out);
    assert!(out.to_client.ends_with(&data_frame[..12]));
    connection.server_bytes(&data_frame[12..], &mut out);
    assert!(out.to_client.ends_with(&window_update(0, 4)));
    parse_frames(&out.to_client);
}

#[test]
fn reencoding_splits_large_blocks_keeps_priority_and_never_indexed() {
    let mut client = IndexingEncoder::new();
    let mut request = get("/large");
    request.push(HeaderField {
        name: b"x-large".to_vec(),
        value: vec![b'~'; 40_000],
        sensitive: false,
    });
    request.push(HeaderField {
        name: b"authorization".to_vec(),
        value: b"Basic czNjcjN0".to_vec(),
        sensitive: true,
    });
    let mut priority_payload = vec![0x80, 0, 0, 1, 41];
    let block = client.encode(&request);
    priority_payload.extend_from_slice(&block[..10_000]);
    let steps = [
        Client(join(&[
            client_start(),
            headers(1, END_HEADERS | END_STREAM, &client.encode(&get("/blocked"))),
            headers(3, END_STREAM | PRIORITY, &priority_payload),
            continuation(3, 0, &block[10_000..25_000]),
            continuation(3, END_HEADERS, &block[25_000..]),
        ])),
        Server(server_start()),
    ];
    let (out, _) = run(&steps);
    assert!(errors(&out).is_empty(), "{:?}", errors(&out));
    let to_server = parse_frames(&out.to_server);
    let stream_3: Vec<&Frame> = to_server.iter().filter(|f| f.stream_id == 3).collect();
    assert!(stream_3.len() >= 3, "{} frames", stream_3.len());
    assert!(stream_3.iter().all(|f| f.payload.len() <= 16_384));
    assert_eq!(stream_3[0].kind, kind::HEADERS);
    assert_eq!(stream_3[0].flags, END_STREAM | PRIORITY);
    assert!(stream_3[1..].iter().all(|f| f.kind == kind::CONTINUATION));
    let blocks = Receiver::new().blocks(&to_server);
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].priority, Some([0x80, 0, 0, 1, 41]));
    assert_eq!(blocks[0].fields, request);
    assert!(blocks[0].fields.last().unwrap().sensitive);
}

#[test]
fn reencoding_follows_the_servers_table_size_and_frame_size() {
    let mut client = IndexingEncoder::new();
    let mut server_view = Receiver::new();
    let mut big = get("/after");
    big.push(HeaderField {
        name: b"x-big".to_vec(),
        value: vec![b'q'; 30_000],
        sensitive: false,
    });
    let first = client.encode(&get("/1"));
    let blocked = client.encode(&get("/blocked"));
    let steps = [
        Client(join(&[
            client_start(),
            headers(1, END_HEADERS | END_STREAM, &first),
            headers(3, END_HEADERS | END_STREAM, &blocked),
        ])),
        // The server shrinks its table to 0 and takes frames up to 64 KiB.
        Server(join(&[
            settings(&[(setting::HEADER_TABLE_SIZE, 0), (setting::MAX_FRAME_SIZE, 65_536)]),
            settings_ack(),
        ])),
        Client(settings_ack()),
        Client({
            client.set_capacity(0);
            headers(5, END_HEADERS | END_STREAM, &client.encode(&big))
        }),
    ];
    server_view.announced.push_back(0);
    let (out, _) = run(&steps);
    assert!(errors(&out).is_empty(), "{:?}", errors(&out));
    let to_server = parse_frames(&out.to_server);
    let blocks = server_view.blocks(&to_server);
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[1].fields, big);
    let stream_5: Vec<&Frame> = to_server.iter().filter(|f| f.stream_id == 5).collect();
    assert_eq!(stream_5.len(), 1, "one HEADERS frame of up to 64 KiB");
    assert_eq!(stream_5[0].payload[0], 0x20, "size update to 0 first");
}

#[test]
fn answer_to_head_has_no_body_and_headers_are_cleaned() {
    let mut client = IndexingEncoder::new();
    let request = fields(&[
        (":method", "HEAD"),
        (":scheme", "https"),
        (":authority", "a"),
        (":path", "/blocked"),
    ]);
    let steps = [
        Client(join(&[
            client_start(),
            headers(1, END_HEADERS | END_STREAM, &client.encode(&request)),
        ])),
        Server(server_start()),
    ];
    let (out, _) = run(&steps);
    let to_client = parse_frames(&out.to_client);
    let ours: Vec<&Frame> = to_client.iter().filter(|f| f.stream_id == 1).collect();
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].flags, END_HEADERS | END_STREAM);
    let blocks = Receiver::new().blocks(&to_client);
    assert_eq!(
        blocks[0].fields,
        fields(&[
            (":status", "403"),
            ("content-type", "text/html"),
            ("content-length", "25"),
        ])
    );
}

#[test]
fn blocks_on_closed_streams_still_count_for_hpack() {
    let mut client = IndexingEncoder::new();
    let mut server = IndexingEncoder::new();
    let late = fields(&[("x-late", "added-by-a-closed-stream")]);
    let mut reuses = get("/3");
    reuses.extend(late.clone());
    let steps = [
        Client(join(&[
            client_start(),
            headers(1, END_HEADERS | END_STREAM, &client.encode(&get("/1"))),
        ])),
        Server(join(&[
            server_start(),
            headers(1, END_HEADERS | END_STREAM, &server.encode(&response("200"))),
        ])),
        Client(join(&[
            // Stream 1 is closed: the server ignores this, but its decoder takes it in.
            headers(1, END_HEADERS | END_STREAM, &client.encode(&late)),
            headers(3, END_HEADERS | END_STREAM, &client.encode(&get("/blocked"))),
            headers(1, END_HEADERS | END_STREAM, &client.encode(&late)),
            headers(5, END_HEADERS | END_STREAM, &client.encode(&reuses)),
        ])),
    ];
    let (out, _) = run(&steps);
    assert!(errors(&out).is_empty(), "{:?}", errors(&out));
    let blocks = Receiver::new().blocks(&parse_frames(&out.to_server));
    let got: Vec<(u32, Vec<HeaderField>)> = blocks.into_iter().map(|b| (b.stream_id, b.fields)).collect();
    assert_eq!(got, vec![(1, get("/1")), (1, late.clone()), (1, late), (5, reuses)]);
    assert_eq!(completed(&out).len(), 2);
}

#[test]
fn even_stream_ids_from_the_client_are_refused() {
    let mut client = IndexingEncoder::new();
    let steps = [Client(join(&[
        client_start(),
        headers(2, END_HEADERS | END_STREAM, &client.encode(&get("/"))),
    ]))];
    let (out, _) = run(&steps);
    assert_eq!(errors(&out)[0].problem, Http2Problem::EvenClientStream);
    assert_eq!(out.to_server, client_bytes(&steps));
}

#[test]
fn answers_queued_behind_a_stalled_server_frame_are_bounded() {
    let mut client = IndexingEncoder::new();
    let mut server = IndexingEncoder::new();
    let mut connection = Http2Connection::new(Http2Limits::default());
    let mut out = Http2Output::default();
    let mut judge = block_page;
    let start = join(&[client_start(), headers(1, END_HEADERS, &client.encode(&post("/up")))]);
    connection.client_bytes(&start, &mut judge, &mut out);
    // The server starts a DATA frame and stops inside it.
    let server_part = join(&[
        server_start(),
        headers(1, END_HEADERS, &server.encode(&response("200"))),
        data(1, 0, &[0; 1000])[..100].to_vec(),
    ]);
    connection.server_bytes(&server_part, &mut out);
    let mut id = 3;
    while !out.close && id < 100_000 {
        let blocked = headers(id, END_HEADERS | END_STREAM, &client.encode(&get("/blocked")));
        connection.client_bytes(&blocked, &mut judge, &mut out);
        id += 2;
    }
    assert!(out.close);
    assert_eq!(
        errors(&out)[0].problem,
        Http2Problem::QueuedForClient {
            limit: MAX_QUEUED_FOR_CLIENT
        }
    );
    // Nothing was injected inside the server's frame.
    assert_eq!(out.to_client, server_part);
    assert!(connection.memory_bytes() < 64 * 1024);
}

#[test]
fn nothing_follows_a_server_frame_cut_short() {
    let mut client = IndexingEncoder::new();
    let mut server = IndexingEncoder::new();
    let server_part = join(&[
        server_start(),
        headers(1, END_HEADERS, &server.encode(&response("200"))),
        data(1, 0, &[0; 1000])[..100].to_vec(),
    ]);
    let steps = [
        Client(join(&[
            client_start(),
            headers(1, END_HEADERS, &client.encode(&post("/up"))),
        ])),
        Server(server_part.clone()),
        Client(headers(3, END_HEADERS | END_STREAM, &client.encode(&get("/blocked")))),
        ServerClosed,
        Client(headers(5, END_HEADERS | END_STREAM, &client.encode(&get("/blocked")))),
    ];
    let (out, _) = run(&steps);
    assert_eq!(out.to_client, server_part);
    // Between frames, what waits goes when the server closes.
    let mut client = IndexingEncoder::new();
    let mut server = IndexingEncoder::new();
    let steps = [
        Client(join(&[
            client_start(),
            headers(1, END_HEADERS, &client.encode(&post("/up"))),
        ])),
        Server(join(&[server_start(), headers(1, 0, &server.encode(&response("200")))])),
        Client(headers(3, END_HEADERS | END_STREAM, &client.encode(&get("/blocked")))),
        ServerClosed,
    ];
    let (out, _) = run(&steps);
    assert!(parse_frames(&out.to_client).iter().any(|f| f.stream_id == 3));
}

// ---- errors --------------------------------------------------------------------------

#[test]
fn bad_preface_stops_inspection_and_passes_everything() {
    let steps = [
        Client(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        Server(b"HTTP/1.1 200 OK\r\n\r\n".to_vec()),
        Client(b"more".to_vec()),
    ];
    for chunk in [1, usize::MAX] {
        let (out, _) = run_with(Http2Limits::default(), &steps, chunk, &mut block_page);
        assert_eq!(out.to_server, client_bytes(&steps));
        assert_eq!(out.to_client, server_bytes(&steps));
        assert_eq!(out.events.len(), 1);
        let error = &errors(&out)[0];
        assert_eq!(error.problem, Http2Problem::BadPreface);
        assert_eq!(error.offset, 0);
        assert_eq!(
            error.to_string(),
            "http2 PROTOCOL_ERROR in the client preface: not the HTTP/2 client preface (at byte 0 client→server)"
        );
    }
    // A preface that goes wrong late.
    let (out, _) = run(&[Client(b"PRI * HTTP/2.0\r\n\r\nXX".to_vec())]);
    assert_eq!(errors(&out)[0].offset, 18);
    assert_eq!(out.to_server, b"PRI * HTTP/2.0\r\n\r\nXX");
}

#[test]
fn first_frame_must_be_settings() {
    let steps = [Client(join(&[
        CLIENT_PREFACE.to_vec(),
        frame(kind::PING, 0, 0, b"12345678"),
    ]))];
    let (out, _) = run(&steps);
    assert_eq!(errors(&out)[0].problem, Http2Problem::SettingsExpected);
    assert_eq!(out.to_server, client_bytes(&steps));
    let (out, _) = run(&[Server(window_update(0, 1))]);
    assert_eq!(errors(&out)[0].problem, Http2Problem::SettingsExpected);
    assert_eq!(errors(&out)[0].direction, Direction::ServerToClient);
}

#[test]
fn oversized_frame_is_a_frame_size_error_unless_announced() {
    let mut client = IndexingEncoder::new();
    let open = headers(1, END_HEADERS, &client.encode(&post("/")));
    let steps = [
        Client(join(&[client_start(), open.clone(), data(1, 0, &vec![0; 16_385])])),
        Client(b"anything after".to_vec()),
    ];
    let (out, _) = run(&steps);
    let error = &errors(&out)[0];
    assert_eq!(error.code, ErrorCode::FRAME_SIZE_ERROR);
    assert_eq!(
        error.problem,
        Http2Problem::FrameTooLarge {
            length: 16_385,
            max: 16_384
        }
    );
    assert!(error
        .to_string()
        .starts_with("http2 FRAME_SIZE_ERROR in DATA of stream 1: "));
    assert_eq!(out.to_server, client_bytes(&steps));
    // Once the server announced larger frames, they pass.
    let steps = [
        Server(settings(&[(setting::MAX_FRAME_SIZE, 1 << 20)])),
        Client(join(&[client_start(), open, data(1, END_STREAM, &vec![0; 100_000])])),
    ];
    let (out, _) = run(&steps);
    assert!(errors(&out).is_empty());
    assert_eq!(out.to_server, client_bytes(&steps));
}

#[test]
fn fixed_size_frames_with_other_sizes_are_refused() {
    for (bad, problem) in [
        (
            frame(kind::PING, 0, 0, b"1234567"),
            Http2Problem::BadFrameLength { length: 7 },
        ),
        (
            frame(kind::RST_STREAM, 0, 1, b"12345"),
            Http2Problem::BadFrameLength { length: 5 },
        ),
        (
            frame(kind::WINDOW_UPDATE, 0, 0, b""),
            Http2Problem::BadFrameLength { length: 0 },
        ),
        (
            frame(kind::SETTINGS, 0, 0, b"12345"),
            Http2Problem::BadFrameLength { length: 5 },
        ),
        (frame(kind::PING, 0, 1, b"12345678"), Http2Problem::StreamNotZero),
        (frame(kind::DATA, 0, 0, b""), Http2Problem::StreamZero),
        (
            frame(kind::PUSH_PROMISE, 4, 1, b"\0\0\0\x02"),
            Http2Problem::PushFromClient,
        ),
        (
            settings(&[(setting::MAX_FRAME_SIZE, 100)]),
            Http2Problem::BadSetting { id: 5, value: 100 },
        ),
        (
            settings(&[(setting::INITIAL_WINDOW_SIZE, 1 << 31)]),
            Http2Problem::BadSetting { id: 4, value: 1 << 31 },
        ),
    ] {
        let steps = [Client(join(&[client_start(), bad]))];
        let (out, _) = run(&steps);
        assert_eq!(errors(&out).len(), 1, "{problem:?}");
        assert_eq!(errors(&out)[0].problem, problem);
        assert_eq!(out.to_server, client_bytes(&steps));
    }
}

#[test]
fn continuation_out_of_sequence_is_a_protocol_error() {
    let mut client = IndexingEncoder::new();
    let block = client.encode(&get("/"));
    for (bytes, problem) in [
        (
            continuation(1, END_HEADERS, &block),
            Http2Problem::UnexpectedContinuation,
        ),
        (
            join(&[headers(1, 0, &block), data(1, 0, b"x")]),
            Http2Problem::ContinuationExpected { stream_id: 1 },
        ),
        (
            join(&[headers(1, 0, &block), continuation(3, END_HEADERS, &[])]),
            Http2Problem::ContinuationExpected { stream_id: 1 },
        ),
    ] {
        let steps = [Client(join(&[client_start(), bytes])), Server(server_start())];
        let (out, _) = run(&steps);
        let errors = errors(&out);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].code, ErrorCode::PROTOCOL_ERROR);
        assert_eq!(errors[0].problem, problem);
        // Verbatim from there, the held HEADERS included.
        assert_eq!(out.to_server, client_bytes(&steps));
        assert_eq!(out.to_client, server_bytes(&steps));
    }
}

#[test]
fn hpack_error_names_the_stream_and_passes_through() {
    let mut client = IndexingEncoder::new();
    let steps = [
        Client(join(&[
            client_start(),
            headers(1, END_HEADERS | END_STREAM, &client.encode(&get("/1"))),
            headers(3, END_HEADERS | END_STREAM, &client.encode(&get("/3"))),
            // Index 70: beyond the table.
            headers(5, END_HEADERS | END_STREAM, &[0x82, 0xc6]),
            headers(7, END_HEADERS | END_STREAM, &client.encode(&get("/7"))),
        ])),
        Server(server_start()),
    ];
    let (out, connection) = run(&steps);
    let errors = errors(&out);
    assert_eq!(errors.len(), 1);
    let text = errors[0].to_string();
    assert!(
        text.starts_with("http2 COMPRESSION_ERROR in HEADERS of stream 5: HPACK: index 70"),
        "{text}"
    );
    assert_eq!(errors[0].direction, Direction::ClientToServer);
    assert_eq!(out.to_server, client_bytes(&steps));
    assert_eq!(out.to_client, server_bytes(&steps));
    // The open requests were reported before the error; nothing after it.
    assert!(matches!(out.events.last(), Some(Http2Event::ProtocolError(_))));
    assert_eq!(completed(&out).len(), 2);
    assert_eq!(connection.open_streams(), 0);
}

#[test]
fn server_hpack_error_passes_both_directions_through() {
    let mut client = IndexingEncoder::new();
    let steps = [
        Client(join(&[
            client_start(),
            headers(1, END_HEADERS, &client.encode(&post("/"))),
        ])),
        Server(join(&[server_start(), headers(1, END_HEADERS, &[0xc0])])),
        Client(data(1, END_STREAM, b"body")),
        Server(data(1, END_STREAM, b"x")),
    ];
    let (out, _) = run(&steps);
    let errors = errors(&out);
    assert_eq!(errors.len(), 1);
    assert!(errors[0]
        .to_string()
        .starts_with("http2 COMPRESSION_ERROR in HEADERS of stream 1: "));
    assert_eq!(errors[0].direction, Direction::ServerToClient);
    assert_eq!(out.to_server, client_bytes(&steps));
    assert_eq!(out.to_client, server_bytes(&steps));
}

#[test]
fn errors_after_reencoding_send_goaway_and_close() {
    let mut client = IndexingEncoder::new();
    let steps = [
        Client(join(&[
            client_start(),
            headers(1, END_HEADERS | END_STREAM, &client.encode(&get("/blocked"))),
        ])),
        Server(server_start()),
        Client(join(&[
            headers(3, END_HEADERS, &client.encode(&post("/ok"))),
            headers(5, END_HEADERS | END_STREAM, &[0xff, 0x7f]),
            data(3, END_STREAM, b"never"),
        ])),
        Server(data(3, 0, b"dropped")),
    ];
    let (out, _) = run(&steps);
    assert!(out.close);
    assert_eq!(errors(&out).len(), 1);
    assert_eq!(errors(&out)[0].code, ErrorCode::COMPRESSION_ERROR);
    assert!(out.events.contains(&Http2Event::GoAway {
        by: Peer::Loupe,
        last_stream_id: 3,
        error_code: ErrorCode::COMPRESSION_ERROR,
    }));
    let to_client = parse_frames(&out.to_client);
    let last = to_client.last().unwrap();
    assert_eq!(last.kind, kind::GOAWAY);
    assert_eq!(read_u32(&last.payload, 0), 3);
    assert_eq!(read_u32(&last.payload, 4), ErrorCode::COMPRESSION_ERROR.0);
    // Nothing after the error reaches the server, and nothing undecodable did.
    let to_server = parse_frames(&out.to_server);
    assert!(to_server.iter().all(|f| f.stream_id != 5 && f.kind != kind::DATA));
    assert_eq!(Receiver::new().blocks(&to_server).len(), 1);
}

#[test]
fn stream_limit_before_and_after_reencoding() {
    let limits = Http2Limits {
        max_streams: 2,
        ..Http2Limits::default()
    };
    let mut client = IndexingEncoder::new();
    let steps = [
        Client(join(&[
            client_start(),
            headers(1, END_HEADERS, &client.encode(&post("/1"))),
            headers(3, END_HEADERS, &client.encode(&post("/3"))),
            headers(5, END_HEADERS, &client.encode(&post("/5"))),
        ])),
        Server(server_start()),
    ];
    let (out, _) = run_with(limits, &steps, usize::MAX, &mut block_page);
    let error = &errors(&out)[0];
    assert_eq!(error.code, ErrorCode::REFUSED_STREAM);
    assert_eq!(error.problem, Http2Problem::TooManyStreams { limit: 2 });
    assert_eq!(out.to_server, client_bytes(&steps));

    // After a block, the extra stream is refused on its own and the connection goes on.
    let mut client = IndexingEncoder::new();
    let steps = [
        Client(join(&[
            client_start(),
            headers(1, END_HEADERS | END_STREAM, &client.encode(&get("/blocked"))),
            headers(3, END_HEADERS, &client.encode(&post("/3"))),
            headers(5, END_HEADERS, &client.encode(&post("/5"))),
            headers(7, END_HEADERS, &client.encode(&post("/7"))),
            data(7, END_STREAM, b"dropped"),
        ])),
        Server(server_start()),
    ];
    let (out, connection) = run_with(limits, &steps, usize::MAX, &mut block_page);
    assert!(errors(&out).is_empty());
    assert!(out.events.contains(&Http2Event::StreamReset {
        stream_id: 7,
        by: Peer::Loupe,
        error_code: ErrorCode::REFUSED_STREAM,
    }));
    let to_server = parse_frames(&out.to_server);
    assert!(to_server.iter().all(|f| f.stream_id != 7 && f.stream_id != 1));
    assert_eq!(Receiver::new().blocks(&to_server).len(), 2);
    let refusal = parse_frames(&out.to_client)
        .into_iter()
        .find(|f| f.stream_id == 7)
        .unwrap();
    assert_eq!(refusal.kind, kind::RST_STREAM);
    assert_eq!(refusal.payload, ErrorCode::REFUSED_STREAM.0.to_be_bytes());
    assert_eq!(connection.open_streams(), 2);
}

#[test]
fn header_block_limit_counts_frames_and_stops_continuation_floods() {
    let limits = Http2Limits {
        max_header_block: 200,
        ..Http2Limits::default()
    };
    let mut client = IndexingEncoder::new();
    let mut large = get("/");
    large.push(HeaderField {
        name: b"x-pad".to_vec(),
        value: vec![b'p'; 300],
        sensitive: false,
    });
    let steps = [Client(join(&[
        client_start(),
        headers(1, END_HEADERS, &client.encode(&large)),
    ]))];
    let (out, _) = run_with(limits, &steps, usize::MAX, &mut block_page);
    assert_eq!(
        errors(&out)[0].problem,
        Http2Problem::HeaderBlockTooLarge { limit: 200 }
    );
    assert_eq!(errors(&out)[0].code, ErrorCode::ENHANCE_YOUR_CALM);
    assert_eq!(out.to_server, client_bytes(&steps));

    let mut flood = join(&[client_start(), headers(1, 0, &[0x82])]);
    for _ in 0..1000 {
        flood.extend(continuation(1, 0, &[]));
    }
    let (out, connection) = run_with(limits, &[Client(flood.clone())], usize::MAX, &mut block_page);
    assert_eq!(
        errors(&out)[0].problem,
        Http2Problem::HeaderBlockTooLarge { limit: 200 }
    );
    assert_eq!(out.to_server, flood);
    assert!(connection.memory_bytes() < 64 * 1024);
}

#[test]
fn settings_larger_than_the_frame_buffer_are_refused() {
    let limits = Http2Limits {
        max_frame_buffer: 60,
        ..Http2Limits::default()
    };
    let many: Vec<(u16, u32)> = (0..11).map(|n| (0x100 + n, 1)).collect();
    let steps = [Client(join(&[CLIENT_PREFACE.to_vec(), settings(&many)]))];
    let (out, _) = run_with(limits, &steps, usize::MAX, &mut block_page);
    assert_eq!(
        errors(&out)[0].problem,
        Http2Problem::FrameBufferExceeded { length: 66, limit: 60 }
    );
    assert_eq!(out.to_server, client_bytes(&steps));
}

// ---- memory and garbage --------------------------------------------------------------

#[test]
fn memory_follows_open_streams_and_tables() {
    let mut client = IndexingEncoder::new();
    let mut connection = Http2Connection::new(Http2Limits::default());
    let mut out = Http2Output::default();
    let idle = connection.memory_bytes();
    let mut bytes = client_start();
    for n in 0..100u32 {
        let mut request = post(&format!("/item/{n}"));
        request.push(HeaderField {
            name: b"x-unique".to_vec(),
            value: format!("{n:040}").into_bytes(),
            sensitive: false,
        });
        bytes.extend(headers(2 * n + 1, END_HEADERS, &client.encode(&request)));
    }
    connection.client_bytes(&bytes, &mut block_page, &mut out);
    assert_eq!(connection.open_streams(), 100);
    let busy = connection.memory_bytes();
    assert!(busy > idle + 100 * 50 + 4000, "idle {idle}, busy {busy}");
    let mut rst = Vec::new();
    for n in 0..100u32 {
        rst.extend(rst_stream(2 * n + 1, ErrorCode::CANCEL));
    }
    connection.client_bytes(&rst, &mut block_page, &mut out);
    assert_eq!(connection.open_streams(), 0);
    assert!(connection.memory_bytes() < busy);
}

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

/// A frame that is mostly well-formed, sometimes not.
fn random_frame(
    prng: &mut Prng,
    to_client: bool,
    client: &mut IndexingEncoder,
    server: &mut IndexingEncoder,
    next_stream: &mut u32,
    next_promise: &mut u32,
) -> Vec<u8> {
    let stream_id = if !to_client && prng.below(3) == 0 {
        *next_stream += 2;
        *next_stream
    } else {
        [1, 3, 5, 7, *next_stream, *next_stream][prng.below(6)]
    };
    let end_stream = if prng.below(2) == 0 { END_STREAM } else { 0 };
    match prng.below(60) {
        0..=19 => {
            let block = if to_client {
                server.encode(&response(&(100 + prng.below(500)).to_string()))
            } else {
                let path = format!("/{}", "p".repeat(prng.below(6)));
                client.encode(&if prng.below(2) == 0 { get(&path) } else { post(&path) })
            };
            if prng.below(3) == 0 && block.len() > 2 {
                let (a, b) = block.split_at(1 + prng.below(block.len() - 1));
                join(&[
                    headers(stream_id, end_stream, a),
                    continuation(stream_id, END_HEADERS, b),
                ])
            } else {
                headers(stream_id, END_HEADERS | end_stream, &block)
            }
        }
        20..=34 => {
            let body: Vec<u8> = vec![b'd'; prng.below(3000)];
            if prng.below(4) == 0 {
                let mut payload = vec![3];
                payload.extend(body);
                payload.extend([0; 3]);
                data(stream_id, PADDED | end_stream, &payload)
            } else {
                data(stream_id, end_stream, &body)
            }
        }
        35..=40 => window_update([0, stream_id][prng.below(2)], prng.below(100_000) as u32),
        41..=43 => rst_stream(stream_id, ErrorCode(prng.below(14) as u32)),
        44..=46 => frame(kind::PRIORITY, 0, stream_id, &[0, 0, 0, 1, 16]),
        47..=50 => [
            settings(&[(setting::INITIAL_WINDOW_SIZE, prng.below(70_000) as u32)]),
            settings_ack(),
        ][prng.below(2)]
        .clone(),
        51..=54 if to_client => {
            *next_promise += 2;
            let mut payload = next_promise.to_be_bytes().to_vec();
            payload.extend(server.encode(&get("/pushed")));
            frame(kind::PUSH_PROMISE, END_HEADERS, stream_id, &payload)
        }
        51..=54 => frame(0xbb, 0, stream_id, b"extension"),
        55..=58 => frame(kind::PING, 0, 0, b"pingpong"),
        _ => {
            let kind = prng.below(12) as u8;
            let flags = prng.next() as u8;
            let payload: Vec<u8> = (0..prng.below(40)).map(|_| prng.next() as u8).collect();
            frame(kind, flags, stream_id, &payload)
        }
    }
}

#[test]
fn random_frames_never_panic_and_stay_bounded() {
    let limits = Http2Limits {
        max_streams: 16,
        max_header_block: 4096,
        hpack: HpackLimits {
            max_table_size: 4096,
            max_header_list_size: 4096,
        },
        max_frame_buffer: 1024,
    };
    let mut prng = Prng(0x0123_4567_89ab_cdef);
    let (mut heads, mut answers, mut completions, mut failures, mut clean, mut verbatim) = (0, 0, 0, 0, 0, 0);
    let mut uncopied = 0;
    for _ in 0..2_000 {
        let mut client = IndexingEncoder::new();
        let mut server = IndexingEncoder::new();
        let mut next_stream = 1;
        let mut next_promise = 0;
        let mut connection = Http2Connection::new(limits);
        let mut out = Http2Output::default();
        // The same bytes through a twin relaying the server's without copies.
        let mut twin = Http2Connection::new(limits);
        let mut twin_out = Http2Output::default();
        let mut judge = |transaction: &Transaction, fields: &FieldList| {
            if transaction.path.len().is_multiple_of(3) {
                let blocked = Transaction {
                    path: "/blocked".into(),
                    ..transaction.clone()
                };
                block_page(&blocked, fields)
            } else {
                StreamVerdict::Forward
            }
        };
        let (mut client_sent, mut server_sent) = (client_start(), server_start());
        connection.client_bytes(&client_sent, &mut judge, &mut out);
        connection.server_bytes(&server_sent, &mut out);
        twin.client_bytes(&client_sent, &mut judge, &mut twin_out);
        relay_server_piece(&mut twin, &server_sent, &mut twin_out);
        for _ in 0..40 {
            let to_client = prng.below(2) == 0;
            let bytes = random_frame(
                &mut prng,
                to_client,
                &mut client,
                &mut server,
                &mut next_stream,
                &mut next_promise,
            );
            if to_client {
                server_sent.extend(&bytes);
            } else {
                client_sent.extend(&bytes);
            }
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let (piece, tail) = rest.split_at(1 + prng.below(rest.len()));
                rest = tail;
                if to_client {
                    connection.server_bytes(piece, &mut out);
                    if relay_server_piece(&mut twin, piece, &mut twin_out) == ServerRelay::AsIs {
                        uncopied += 1;
                    }
                } else {
                    connection.client_bytes(piece, &mut judge, &mut out);
                    twin.client_bytes(piece, &mut judge, &mut twin_out);
                }
            }
            assert!(connection.open_streams() <= limits.max_streams);
            assert!(connection.memory_bytes() < 256 * 1024, "{}", connection.memory_bytes());
        }
        if prng.below(2) == 0 {
            connection.client_closed(&mut out);
            twin.client_closed(&mut twin_out);
        }
        connection.server_closed(&mut out);
        twin.server_closed(&mut twin_out);
        assert_eq!(twin_out.to_client, out.to_client);
        assert_eq!(twin_out.to_server, out.to_server);
        assert_eq!(twin_out.events, out.events);
        assert_eq!(twin_out.close, out.close);
        assert_eq!(connection.open_streams(), 0);
        assert!(errors(&out).len() <= 1);
        if errors(&out).is_empty() {
            // Both peers can read everything they got, whatever was blocked and re-encoded.
            let mut receiver = Receiver::new();
            receiver.unfinished_allowed = true;
            receiver.blocks(&parse_frames(&out.to_server));
            let mut receiver = Receiver::new();
            receiver.unfinished_allowed = true;
            receiver.blocks(&parse_frames(&out.to_client));
            clean += 1;
        }
        if !out
            .events
            .iter()
            .any(|event| matches!(event, Http2Event::Answered { .. }))
        {
            // Nothing blocked: everything went as it came, errors or not.
            assert_eq!(out.to_server, client_sent);
            assert_eq!(out.to_client, server_sent);
            verbatim += 1;
        }
        for event in &out.events {
            match event {
                Http2Event::RequestHead { .. } => heads += 1,
                Http2Event::Answered { .. } => answers += 1,
                Http2Event::TransactionComplete { .. } => completions += 1,
                Http2Event::ProtocolError(_) => failures += 1,
                _ => {}
            }
        }
    }
    // The mutations must get deep enough to mean something.
    assert!(heads > 5_000 && answers > 500, "{heads} heads, {answers} answers");
    assert!(completions >= heads - 2_000 * 16, "{completions} of {heads} completed");
    assert!(failures > 100 && clean > 500, "{failures} failures, {clean} clean");
    assert!(verbatim > 500, "{verbatim} without answers");
    assert!(uncopied > 5_000, "{uncopied} server pieces relayed without a copy");
}

#[test]
fn pure_noise_never_panics() {
    let mut prng = Prng(0xfeed_beef_dead_f00d);
    for round in 0..2_000 {
        let mut connection = Http2Connection::new(Http2Limits::default());
        let mut out = Http2Output::default();
        let mut judge = |_: &Transaction, _: &FieldList| StreamVerdict::Forward;
        if round % 2 == 0 {
            connection.client_bytes(CLIENT_PREFACE, &mut judge, &mut out);
        }
        for _ in 0..20 {
            let noise: Vec<u8> = (0..prng.below(64)).map(|_| prng.next() as u8).collect();
            if prng.below(2) == 0 {
                connection.client_bytes(&noise, &mut judge, &mut out);
            } else {
                connection.server_bytes(&noise, &mut out);
            }
        }
        connection.client_closed(&mut out);
        connection.server_closed(&mut out);
    }
}

#[test]
fn a_reset_stream_never_reaches_the_server_and_the_others_go_on_in_step() {
    let mut client = IndexingEncoder::new();
    let mut server = IndexingEncoder::new();
    let mut dropped = get("/3");
    dropped.push(HeaderField {
        name: b"x-drop".to_vec(),
        value: b"yes".to_vec(),
        sensitive: false,
    });
    // Stream 3 inserts x-drop into the client's table; stream 5 references it.
    let mut after = get("/5");
    after.push(HeaderField {
        name: b"x-drop".to_vec(),
        value: b"yes".to_vec(),
        sensitive: false,
    });
    let sent: Vec<(u32, Vec<HeaderField>)> = vec![(1, get("/1")), (3, dropped), (5, after)];
    let mut client_part = client_start();
    for (id, request) in &sent {
        client_part.extend(headers(*id, END_HEADERS | END_STREAM, &client.encode(request)));
    }
    let mut server_part = server_start();
    for id in [1, 5] {
        server_part.extend(headers(id, END_HEADERS, &server.encode(&response("200"))));
        server_part.extend(data(id, END_STREAM, b"fine"));
    }
    let steps = [Client(client_part), Server(server_part)];
    let mut judge = |transaction: &Transaction, _: &FieldList| {
        if transaction.path == "/3" {
            StreamVerdict::Reset(ErrorCode::CANCEL)
        } else {
            StreamVerdict::Forward
        }
    };
    let (out, _) = run_with(Http2Limits::default(), &steps, usize::MAX, &mut judge);
    assert!(errors(&out).is_empty() && !out.close, "{:?}", errors(&out));
    let to_server = parse_frames(&out.to_server);
    assert!(to_server.iter().all(|frame| frame.stream_id != 3));
    let blocks = Receiver::new().blocks(&to_server);
    let got: Vec<(u32, Vec<HeaderField>)> = blocks.iter().map(|b| (b.stream_id, b.fields.clone())).collect();
    let expected: Vec<(u32, Vec<HeaderField>)> = sent.iter().filter(|(id, _)| *id != 3).cloned().collect();
    assert_eq!(got, expected, "the server's table stays in step with what it was sent");
    let reset = parse_frames(&out.to_client)
        .into_iter()
        .find(|frame| frame.kind == kind::RST_STREAM)
        .expect("a RST_STREAM to the client");
    assert_eq!(
        (reset.stream_id, reset.payload.as_slice()),
        (3, &8u32.to_be_bytes()[..])
    );
    assert!(out.events.iter().any(|event| matches!(
        event,
        Http2Event::StreamReset {
            stream_id: 3,
            by: Peer::Loupe,
            error_code: ErrorCode::CANCEL
        }
    )));
    let paths: Vec<String> = completed(&out).iter().map(|t| t.path.to_string()).collect();
    assert_eq!(paths.len(), 3, "every stream completes, the reset one too: {paths:?}");
}
