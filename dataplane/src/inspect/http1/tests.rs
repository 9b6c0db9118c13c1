//! The framing rules, each fed whole and in every kind of split (down to single bytes):
//! the events must not depend on how TLS records cut the streams.

use super::*;

#[derive(Debug, Clone, Copy)]
enum Step<'a> {
    Client(&'a [u8]),
    Server(&'a [u8]),
    ClientClosed,
    ServerClosed,
}

use Step::{Client, ClientClosed, Server, ServerClosed};

/// A small deterministic generator (xorshift64*), enough to cut streams and make garbage.
struct Prng(u64);

impl Prng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound.max(1) as u64) as usize
    }
}

/// Feeds the steps, each byte step cut into pieces whose sizes `piece_size` chooses.
fn feed(limits: Http1Limits, steps: &[Step<'_>], mut piece_size: impl FnMut() -> usize) -> Vec<Http1Event> {
    let mut connection = Http1Connection::new(limits);
    let mut events = Vec::new();
    for step in steps {
        match *step {
            Client(mut bytes) | Server(mut bytes) => {
                let to_client = matches!(step, Client(_));
                while !bytes.is_empty() {
                    let (piece, rest) = bytes.split_at(piece_size().clamp(1, bytes.len()));
                    events.extend(if to_client {
                        connection.client_bytes(piece)
                    } else {
                        connection.server_bytes(piece)
                    });
                    bytes = rest;
                }
            }
            ClientClosed => events.extend(connection.client_closed()),
            ServerClosed => events.extend(connection.server_closed()),
        }
    }
    events
}

/// The events of the steps fed whole, after checking that every split gives the same.
fn run_with(limits: Http1Limits, steps: &[Step<'_>]) -> Vec<Http1Event> {
    let whole = feed(limits, steps, || usize::MAX);
    for size in [1, 2, 3, 5, 8, 13, 64] {
        assert_eq!(feed(limits, steps, || size), whole, "pieces of {size} bytes");
    }
    for seed in 1..=8 {
        let mut prng = Prng(seed);
        assert_eq!(
            feed(limits, steps, || 1 + prng.below(40)),
            whole,
            "random pieces, seed {seed}"
        );
    }
    whole
}

fn run(steps: &[Step<'_>]) -> Vec<Http1Event> {
    run_with(Http1Limits::default(), steps)
}

/// Events as short lines, so that a test reads as the exchange it checks.
fn summary(events: &[Http1Event]) -> Vec<String> {
    events
        .iter()
        .map(|event| match event {
            Http1Event::RequestHead { index, head_end, .. } => format!("request {index} head ..{head_end}"),
            Http1Event::RequestComplete { index, end } => format!("request {index} complete ..{end}"),
            Http1Event::ResponseHead { index, status, interim } => {
                format!("response {index} {status}{}", if *interim { " interim" } else { "" })
            }
            Http1Event::TransactionComplete { index, .. } => format!("transaction {index}"),
            Http1Event::Tunnel { index, why } => format!("tunnel {index}: {why}"),
            Http1Event::ProtocolError(error) => format!("error: {error}"),
            Http1Event::Refused(error) => format!("refused: {error}"),
            Http1Event::Head { index, direction, head } => format!("{direction:?} {index} head {} bytes", head.len()),
            Http1Event::BodyData {
                index,
                direction,
                start,
                end,
            } => format!("{direction:?} {index} body {start}..{end}"),
        })
        .collect()
}

/// The completed transactions: each request (from its head event) completed by its
/// outcome, as the engine puts them together.
fn transactions(events: &[Http1Event]) -> Vec<Transaction> {
    let request = |wanted: u64| {
        events.iter().find_map(|event| match event {
            Http1Event::RequestHead { index, request, .. } if *index == wanted => Some((**request).clone()),
            _ => None,
        })
    };
    events
        .iter()
        .filter_map(|event| match event {
            Http1Event::TransactionComplete { index, outcome } => {
                let mut transaction = request(*index).expect("a head event before its transaction");
                outcome.clone().complete(&mut transaction);
                Some(transaction)
            }
            _ => None,
        })
        .collect()
}

/// The error or refusal that ended the events, with whether it was a refusal.
fn last_error(events: &[Http1Event]) -> (bool, Http1Error) {
    match events.last() {
        Some(Http1Event::Refused(error)) => (true, error.clone()),
        Some(Http1Event::ProtocolError(error)) => (false, error.clone()),
        other => panic!("expected an error last, got {other:?} in {:#?}", summary(events)),
    }
}

fn refused(steps: &[Step<'_>]) -> Http1Error {
    let events = run(steps);
    let (was_refused, error) = last_error(&events);
    assert!(was_refused, "expected a refusal: {error}");
    error
}

fn malformed(steps: &[Step<'_>]) -> Http1Error {
    let events = run(steps);
    let (was_refused, error) = last_error(&events);
    assert!(!was_refused, "expected a protocol error, got a refusal: {error}");
    error
}

fn offset_of(haystack: &[u8], needle: &[u8]) -> u64 {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
        .expect("needle in haystack") as u64
}

fn len(bytes: &[u8]) -> u64 {
    bytes.len() as u64
}

const GET: &[u8] = b"GET /index.html?lang=en HTTP/1.1\r\nHost: example.test\r\nUser-Agent: curl/8.5\r\n\
Referer: https://ref.test/\r\nAccept: */*\r\n\r\n";
const OK_HELLO: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello";

// ---------------------------------------------------------------------------------------
// Exchanges that frame

#[test]
fn a_get_and_its_response_fill_the_transaction() {
    let events = run(&[Client(GET), Server(OK_HELLO)]);
    let end = len(GET);
    assert_eq!(
        summary(&events),
        [
            format!("request 0 head ..{end}"),
            format!("request 0 complete ..{end}"),
            "response 0 200".into(),
            "transaction 0".into(),
        ]
    );
    let Http1Event::RequestHead { request, .. } = &events[0] else {
        panic!("request head first");
    };
    assert_eq!(request.method, "GET");
    assert_eq!(request.status, None);
    let [transaction] = &transactions(&events)[..] else {
        panic!("one transaction");
    };
    assert_eq!(transaction.version, Some(HttpVersion::Http11));
    assert_eq!(transaction.method, "GET");
    assert_eq!(transaction.host.as_deref(), Some("example.test"));
    assert_eq!(transaction.path, "/index.html");
    assert_eq!(transaction.query.as_deref(), Some("lang=en"));
    assert_eq!(transaction.url(), "/index.html?lang=en");
    assert_eq!(transaction.user_agent.as_deref(), Some("curl/8.5"));
    assert_eq!(transaction.referer.as_deref(), Some("https://ref.test/"));
    assert_eq!(transaction.request_content_type, None);
    assert_eq!(transaction.response_content_type.as_deref(), Some("text/plain"));
    assert_eq!(transaction.status, Some(200));
    assert_eq!(transaction.request_body_len, 0);
    assert_eq!(transaction.response_body_len, 5);
    assert_eq!(transaction.stream_id, None);
    assert_eq!(transaction.scheme, None);
    assert_eq!(transaction.marks, TransactionMarks::default());
}

#[test]
fn three_pipelined_requests_pair_with_responses_in_order() {
    let requests = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n\
POST /b HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}\
GET /c HTTP/1.1\r\nHost: h\r\n\r\n";
    let responses = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na\
HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n\
HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let events = run(&[Client(requests), Server(responses)]);
    let first_end = offset_of(requests, b"POST");
    let second_head_end = offset_of(requests, b"{}");
    let second_end = second_head_end + 2;
    let third_end = len(requests);
    assert_eq!(
        summary(&events),
        [
            format!("request 0 head ..{first_end}"),
            format!("request 0 complete ..{first_end}"),
            format!("request 1 head ..{second_head_end}"),
            format!("request 1 complete ..{second_end}"),
            format!("request 2 head ..{third_end}"),
            format!("request 2 complete ..{third_end}"),
            "response 0 200".into(),
            "transaction 0".into(),
            "response 1 201".into(),
            "transaction 1".into(),
            "response 2 404".into(),
            "transaction 2".into(),
        ]
    );
    let done = transactions(&events);
    let paths: Vec<_> = done
        .iter()
        .map(|t| (t.path.as_str(), t.status, t.response_body_len))
        .collect();
    assert_eq!(
        paths,
        [("/a", Some(200), 1), ("/b", Some(201), 0), ("/c", Some(404), 3)]
    );
    assert_eq!(done[1].request_body_len, 2);
    assert_eq!(done[1].request_content_type.as_deref(), Some("application/json"));
}

#[test]
fn a_chunked_upload_with_extensions_and_trailers_counts_decoded_bytes() {
    let request = b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
5;name=value;quoted=\"a;b\"\r\nhello\r\nA\r\n0123456789\r\n0;last\r\nX-Checksum: 42\r\nX-Other: y\r\n\r\n";
    let after = b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n";
    let events = run(&[
        Client(request),
        Client(after),
        Server(b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ]);
    let head_end = offset_of(request, b"5;name");
    let end = len(request);
    assert_eq!(
        summary(&events)[..4],
        [
            format!("request 0 head ..{head_end}"),
            format!("request 0 complete ..{end}"),
            format!("request 1 head ..{}", end + len(after)),
            format!("request 1 complete ..{}", end + len(after)),
        ]
    );
    let done = transactions(&events);
    assert_eq!(done.len(), 2);
    assert_eq!(done[0].request_body_len, 15);
    assert_eq!(done[0].status, Some(204));
    assert_eq!(done[1].path, "/next");
}

#[test]
fn a_chunked_response_with_uppercase_sizes_is_counted() {
    let response =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n";
    let events = run(&[Client(GET), Server(response)]);
    assert_eq!(transactions(&events)[0].response_body_len, 26);
}

#[test]
fn content_length_list_of_equal_values_is_one_length() {
    let request = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\nabc";
    let events = run(&[Client(request), Server(OK_HELLO)]);
    assert_eq!(transactions(&events)[0].request_body_len, 3);
}

#[test]
fn a_head_request_gets_no_body_whatever_its_content_length() {
    let events = run(&[
        Client(b"HEAD /big HTTP/1.1\r\nHost: h\r\n\r\nGET /small HTTP/1.1\r\nHost: h\r\n\r\n"),
        Server(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: video/mp4\r\n\r\n"),
        Server(OK_HELLO),
    ]);
    let done = transactions(&events);
    assert_eq!(done.len(), 2);
    assert_eq!((done[0].method.as_str(), done[0].response_body_len), ("HEAD", 0));
    assert_eq!(done[0].response_content_type.as_deref(), Some("video/mp4"));
    assert_eq!((done[1].path.as_str(), done[1].response_body_len), ("/small", 5));
}

#[test]
fn responses_204_and_304_have_no_body() {
    let events = run(&[
        Client(
            b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\nGET /3 HTTP/1.1\r\nHost: h\r\n\r\n",
        ),
        Server(b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n"),
        Server(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 999\r\nETag: \"x\"\r\n\r\n"),
        Server(OK_HELLO),
    ]);
    let statuses: Vec<_> = transactions(&events)
        .iter()
        .map(|t| (t.status, t.response_body_len))
        .collect();
    assert_eq!(statuses, [(Some(204), 0), (Some(304), 0), (Some(200), 5)]);
}

#[test]
fn expect_100_continue_waits_for_the_final_response() {
    let head = b"PUT /file HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n";
    let events = run(&[
        Client(head),
        Server(b"HTTP/1.1 100 Continue\r\n\r\n"),
        Client(b"data"),
        Server(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
    ]);
    let head_end = len(head);
    assert_eq!(
        summary(&events),
        [
            format!("request 0 head ..{head_end}"),
            "response 0 100 interim".into(),
            format!("request 0 complete ..{}", head_end + 4),
            "response 0 201".into(),
            "transaction 0".into(),
        ]
    );
    let transaction = &transactions(&events)[0];
    assert!(transaction.marks.expect_continue);
    assert_eq!((transaction.status, transaction.request_body_len), (Some(201), 4));
}

#[test]
fn early_hints_103_do_not_complete_the_transaction() {
    let events = run(&[
        Client(GET),
        Server(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"),
        Server(OK_HELLO),
    ]);
    assert_eq!(
        summary(&events)[2..],
        ["response 0 103 interim", "response 0 200", "transaction 0"]
    );
    assert_eq!(transactions(&events)[0].status, Some(200));
}

#[test]
fn a_101_upgrade_makes_both_directions_a_tunnel() {
    let upgrade = b"GET /chat HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let events = run(&[
        Client(upgrade),
        Server(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello"),
        Client(b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58 and not HTTP at all\r\n\r\n"),
        Server(b"HTTP/1.1 200 OK\r\n\r\n garbage that is not a response"),
        ClientClosed,
        ServerClosed,
    ]);
    let end = len(upgrade);
    assert_eq!(
        summary(&events),
        [
            format!("request 0 head ..{end}"),
            format!("request 0 complete ..{end}"),
            "response 0 101".into(),
            "transaction 0".into(),
            "tunnel 0: 101 Switching Protocols".into(),
        ]
    );
    let transaction = &transactions(&events)[0];
    assert!(transaction.marks.upgrade);
    assert_eq!(transaction.status, Some(101));
}

#[test]
fn an_upgrade_turned_down_makes_the_held_bytes_http_again() {
    let upgrade = b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n";
    let next = b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n";
    let mut connection = Http1Connection::new(Http1Limits::default());
    connection.client_bytes(upgrade);
    assert!(
        summary(&connection.client_bytes(next)).is_empty(),
        "held until the answer"
    );
    assert_eq!(connection.client_bytes_framed(), len(upgrade));

    let events = run(&[Client(upgrade), Client(next), Server(OK_HELLO), Server(OK_HELLO)]);
    let end = len(upgrade) + len(next);
    assert_eq!(
        summary(&events)[2..],
        [
            // Released at the head's status, before the turned-down response's body.
            "response 0 200".into(),
            format!("request 1 head ..{end}"),
            format!("request 1 complete ..{end}"),
            "transaction 0".into(),
            "response 1 200".into(),
            "transaction 1".into(),
        ]
    );
    assert!(!transactions(&events)[0].marks.upgrade);
}

#[test]
fn a_2xx_answer_to_connect_makes_a_tunnel() {
    let connect = b"CONNECT backend.test:443 HTTP/1.1\r\nHost: backend.test:443\r\n\r\n";
    let events = run(&[
        Client(connect),
        Client(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
        Server(b"HTTP/1.1 200 Connection Established\r\n\r\n\x16\x03\x03\x00\x7a"),
        Client(b"more TLS"),
    ]);
    let end = len(connect);
    assert_eq!(
        summary(&events),
        [
            format!("request 0 head ..{end}"),
            format!("request 0 complete ..{end}"),
            "response 0 200".into(),
            "transaction 0".into(),
            "tunnel 0: 2xx answer to CONNECT".into(),
        ]
    );
    let transaction = &transactions(&events)[0];
    assert!(transaction.marks.connect);
    assert_eq!(transaction.method, "CONNECT");
    assert_eq!(transaction.host.as_deref(), Some("backend.test:443"));
    assert_eq!(transaction.url(), "backend.test:443");
}

#[test]
fn a_connect_turned_down_reads_what_follows_as_http() {
    let connect = b"CONNECT backend.test:443 HTTP/1.1\r\nHost: backend.test:443\r\n\r\n";
    let events = run(&[
        Client(connect),
        Server(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 3\r\n\r\nno!"),
        Client(GET),
        Server(OK_HELLO),
    ]);
    let done = transactions(&events);
    assert_eq!(done.len(), 2);
    assert_eq!((done[0].status, done[0].marks.connect), (Some(407), false));
    assert_eq!(done[1].path, "/index.html");
}

#[test]
fn a_response_without_length_ends_when_the_server_closes() {
    let events = run(&[
        Client(GET),
        Server(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nthe body runs "),
        Server(b"until the server closes"),
        ServerClosed,
    ]);
    assert_eq!(summary(&events)[2..], ["response 0 200", "transaction 0"]);
    assert_eq!(transactions(&events)[0].response_body_len, 37);
}

#[test]
fn a_response_whose_final_coding_is_not_chunked_is_read_until_close() {
    let events = run(&[
        Client(GET),
        Server(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n\x1f\x8b\x08"),
        ServerClosed,
    ]);
    assert_eq!(transactions(&events)[0].response_body_len, 3);
}

#[test]
fn http_1_0_is_recorded_as_such() {
    let events = run(&[
        Client(b"GET /old HTTP/1.0\r\nHost: h\r\n\r\n"),
        Server(b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<html>"),
        ServerClosed,
    ]);
    let transaction = &transactions(&events)[0];
    assert_eq!(transaction.version, Some(HttpVersion::Http10));
    assert_eq!(transaction.response_body_len, 6);

    let events = run(&[Client(GET), Server(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")]);
    assert_eq!(transactions(&events)[0].version, Some(HttpVersion::Http10));
}

#[test]
fn an_absolute_form_target_gives_the_host() {
    let events = run(&[
        Client(b"GET http://user@Example.test:8080?q=1 HTTP/1.1\r\nHost: example.test:8080\r\n\r\n"),
        Server(OK_HELLO),
    ]);
    let transaction = &transactions(&events)[0];
    assert_eq!(transaction.host.as_deref(), Some("example.test:8080"));
    assert_eq!(
        (transaction.path.as_str(), transaction.query.as_deref()),
        ("/", Some("q=1"))
    );

    let events = run(&[Client(b"GET https://other.test/a/b HTTP/1.1\r\n\r\n"), Server(OK_HELLO)]);
    let transaction = &transactions(&events)[0];
    assert_eq!(transaction.host.as_deref(), Some("other.test"));
    assert_eq!(
        (transaction.path.as_str(), transaction.query.as_deref()),
        ("/a/b", None)
    );
}

#[test]
fn blank_lines_before_a_request_line_are_skipped() {
    let events = run(&[Client(b"\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"), Server(OK_HELLO)]);
    assert_eq!(transactions(&events)[0].path, "/");
}

#[test]
fn bare_lf_is_accepted_in_a_response_head() {
    let events = run(&[Client(GET), Server(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok")]);
    assert_eq!(transactions(&events)[0].response_body_len, 2);
}

#[test]
fn a_response_before_the_upload_ends_completes_with_the_request() {
    let head = b"POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n";
    let early = b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n";
    let events = run(&[Client(head), Client(b"01234"), Server(early), Client(b"56789")]);
    assert_eq!(
        summary(&events)[1..],
        [
            "response 0 413".into(),
            format!("request 0 complete ..{}", len(head) + 10),
            "transaction 0".into(),
        ]
    );
    assert_eq!(transactions(&events)[0].request_body_len, 10);

    // The client gives up instead: the transaction completes with what was sent.
    let events = run(&[Client(head), Client(b"012"), Server(early), ClientClosed]);
    assert_eq!(summary(&events)[1..], ["response 0 413", "transaction 0"]);
    assert_eq!(transactions(&events)[0].request_body_len, 3);
}

#[test]
fn a_half_close_between_requests_is_normal() {
    let events = run(&[Client(GET), ClientClosed, Server(OK_HELLO), ServerClosed]);
    assert_eq!(transactions(&events).len(), 1);
    assert!(!events
        .iter()
        .any(|e| matches!(e, Http1Event::ProtocolError(_) | Http1Event::Refused(_))));
}

#[test]
fn client_bytes_framed_stops_at_an_incomplete_head() {
    let mut connection = Http1Connection::new(Http1Limits::default());
    let post = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\n";
    connection.client_bytes(&post[..10]);
    assert_eq!(connection.client_bytes_framed(), 0);
    connection.client_bytes(&post[10..]);
    assert_eq!(connection.client_bytes_framed(), len(post));
    connection.client_bytes(b"ab");
    assert_eq!(connection.client_bytes_framed(), len(post) + 2);
    connection.client_bytes(b"cdGET / HT");
    assert_eq!(connection.client_bytes_framed(), len(post) + 4);
    connection.client_bytes(b"TP/1.1\r\n\r\n");
    assert_eq!(connection.client_bytes_framed(), len(post) + 4 + 18);
}

// ---------------------------------------------------------------------------------------
// Refused: framing another parser could read differently

fn request_with(headers: &str, body: &str) -> Vec<u8> {
    format!("POST /x HTTP/1.1\r\nHost: h\r\n{headers}\r\n{body}").into_bytes()
}

/// Refuses the request built from `headers`, at the header line that starts with `at`.
fn assert_request_refused(headers: &str, at: &str, problem: Http1Problem) {
    let request = request_with(headers, "");
    let error = refused(&[Client(&request)]);
    assert_eq!(
        (error.direction, error.offset, error.problem),
        (Direction::ClientToServer, offset_of(&request, at.as_bytes()), problem),
        "{headers:?}"
    );
}

#[test]
fn content_length_with_transfer_encoding_is_refused() {
    use Http1Problem::ContentLengthAndTransferEncoding as Both;
    assert_request_refused(
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding",
        Both,
    );
    assert_request_refused(
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        "Content-Length",
        Both,
    );
    let response = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
    let error = refused(&[Client(GET), Server(response)]);
    assert_eq!(
        (error.direction, error.offset, error.problem),
        (Direction::ServerToClient, offset_of(response, b"Transfer"), Both)
    );
}

#[test]
fn content_lengths_that_differ_are_refused() {
    assert_request_refused(
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Content-Length: 6",
        Http1Problem::ConflictingContentLengths,
    );
    assert_request_refused(
        "Content-Length: 5, 6\r\n",
        "Content-Length",
        Http1Problem::ConflictingContentLengths,
    );
}

#[test]
fn a_content_length_that_is_not_digits_is_refused() {
    for value in ["+5", "5a", "0x5", "-1", "", "5,", "1 2", "99999999999999999999"] {
        assert_request_refused(
            &format!("Content-Length: {value}\r\n"),
            "Content-Length",
            Http1Problem::InvalidContentLength,
        );
    }
}

#[test]
fn a_request_whose_final_coding_is_not_chunked_is_refused() {
    for value in ["gzip", "chunked, gzip", "", "chunked;x=1", "identity"] {
        assert_request_refused(
            &format!("Transfer-Encoding: {value}\r\n"),
            "Transfer-Encoding",
            Http1Problem::ChunkedNotFinal,
        );
    }
    assert_request_refused(
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n",
        "Transfer-Encoding",
        Http1Problem::ChunkedNotFinal,
    );
}

#[test]
fn chunked_twice_is_refused() {
    assert_request_refused(
        "Transfer-Encoding: chunked, chunked\r\n",
        "Transfer-Encoding",
        Http1Problem::ChunkedTwice,
    );
}

#[test]
fn transfer_encoding_in_http_1_0_is_refused() {
    let request = b"POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let error = refused(&[Client(request)]);
    assert_eq!(
        (error.offset, error.problem),
        (offset_of(request, b"Transfer"), Http1Problem::TransferEncodingInHttp10)
    );
}

#[test]
fn obsolete_line_folding_is_refused() {
    assert_request_refused(
        "X-Folded: first\r\n second\r\n",
        " second",
        Http1Problem::ObsoleteLineFolding,
    );
    // Whitespace before the first header line: the classic smuggling variant.
    let request = b"GET / HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: h\r\n\r\n";
    let error = refused(&[Client(request)]);
    assert_eq!((error.offset, error.problem), (16, Http1Problem::ObsoleteLineFolding));

    let response = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX: a\r\n\tb\r\n\r\n";
    let error = refused(&[Client(GET), Server(response)]);
    assert_eq!(
        (error.direction, error.offset, error.problem),
        (
            Direction::ServerToClient,
            offset_of(response, b"\tb"),
            Http1Problem::ObsoleteLineFolding
        )
    );
}

#[test]
fn whitespace_before_a_colon_is_refused() {
    assert_request_refused(
        "Transfer-Encoding : chunked\r\n",
        "Transfer-Encoding",
        Http1Problem::WhitespaceBeforeColon,
    );
    assert_request_refused(
        "Content-Length\t: 5\r\n",
        "Content-Length",
        Http1Problem::WhitespaceBeforeColon,
    );
    let response = b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello";
    let error = refused(&[Client(GET), Server(response)]);
    assert_eq!(
        (error.offset, error.problem),
        (offset_of(response, b"Content"), Http1Problem::WhitespaceBeforeColon)
    );
}

#[test]
fn a_bare_lf_in_a_request_head_is_refused() {
    let request = b"GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n";
    let error = refused(&[Client(request)]);
    assert_eq!(
        (error.offset, error.problem),
        (offset_of(request, b"\nX"), Http1Problem::BareLineFeedInRequestHead)
    );
    let error = refused(&[Client(b"GET / HTTP/1.1\nHost: h\n\n")]);
    assert_eq!(
        (error.offset, error.problem),
        (14, Http1Problem::BareLineFeedInRequestHead)
    );
}

/// The error ending a request with the chunked body `body`, and the stream offset of the
/// last `at` in the body (where the test expects it).
fn chunked_body_error(body: &str, at: &str) -> (u64, Http1Error) {
    let request = request_with("Transfer-Encoding: chunked\r\n", body);
    let events = run(&[Client(&request)]);
    let (_, error) = last_error(&events);
    let body_start = len(&request) - body.len() as u64;
    let at = body_start + body.rfind(at).expect("marker in body") as u64;
    (at, error)
}

#[test]
fn bare_line_endings_in_chunked_framing_are_refused() {
    for (body, at) in [
        ("5\nhello\r\n0\r\n\r\n", "5"),
        ("5;ext\nhello\r\n0\r\n\r\n", "5"),
        ("5;a\rb\r\nhello\r\n0\r\n\r\n", "5"),
        ("5\r\nhello\r\n0\r\n\n", "\n"),
        ("5\r\nhello\r\n0\r\nX: y\n\r\n", "X"),
    ] {
        let (offset, error) = chunked_body_error(body, at);
        assert_eq!(
            (error.offset, error.problem),
            (offset, Http1Problem::BareLineEndingInChunkedBody),
            "{body:?}"
        );
        assert!(error.problem.is_framing_ambiguity());
    }
}

#[test]
fn chunk_data_not_followed_by_crlf_is_refused() {
    for (body, at) in [
        ("5\r\nhello!\r\n0\r\n\r\n", "!"),
        ("5\r\nhello\n0\r\n\r\n", "\n0"),
        ("5\r\nhello\rX0\r\n\r\n", "X"),
    ] {
        let (offset, error) = chunked_body_error(body, at);
        assert_eq!(
            (error.offset, error.problem),
            (offset, Http1Problem::ChunkDataNotFollowedByCrlf),
            "{body:?}"
        );
    }
}

#[test]
fn host_values_that_differ_are_refused() {
    let request = b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n";
    let error = refused(&[Client(request)]);
    assert_eq!(
        (error.offset, error.problem),
        (offset_of(request, b"Host: b"), Http1Problem::ConflictingHosts)
    );
    let request = b"GET http://a.test/ HTTP/1.1\r\nHost: b.test\r\n\r\n";
    let error = refused(&[Client(request)]);
    assert_eq!(
        (error.offset, error.problem),
        (offset_of(request, b"Host"), Http1Problem::ConflictingHosts)
    );
    // The same host twice, in another case, is one host.
    let events = run(&[
        Client(b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: A.test\r\n\r\n"),
        Server(OK_HELLO),
    ]);
    assert_eq!(transactions(&events)[0].host.as_deref(), Some("a.test"));
}

// ---------------------------------------------------------------------------------------
// Malformed: protocol errors naming where

#[test]
fn an_error_names_protocol_direction_offset_and_reason() {
    let request = request_with("Transfer-Encoding: chunked\r\n", "zz\r\n");
    let error = malformed(&[Client(&request)]);
    let at = len(&request) - 4;
    assert_eq!(
        error.to_string(),
        format!("HTTP/1.1 client→server at byte {at}: bad chunk size")
    );
    let error = malformed(&[Client(GET), Server(b"HTTP/1.1 200 OK\r\nBroken\r\n\r\n")]);
    assert_eq!(
        error.to_string(),
        "HTTP/1.1 server→client at byte 17: header line without a colon"
    );
}

#[test]
fn bad_chunk_sizes_are_errors() {
    for body in [
        "zz\r\n",
        "\r\n",
        ";ext\r\n",
        "0x5\r\nhello\r\n",
        " 5\r\nhello\r\n",
        "-1\r\n",
        "12345678901234567\r\n",
    ] {
        let (offset, error) = chunked_body_error(body, body);
        assert_eq!(
            (error.offset, error.problem),
            (offset, Http1Problem::BadChunkSize),
            "{body:?}"
        );
    }
    // After a good chunk.
    let (offset, error) = chunked_body_error("3\r\nabc\r\nq\r\n", "q");
    assert_eq!((error.offset, error.problem), (offset, Http1Problem::BadChunkSize));
}

#[test]
fn a_header_line_without_a_colon_is_an_error() {
    let request = b"GET / HTTP/1.1\r\nHost: h\r\nNoColonHere\r\n\r\n";
    let error = malformed(&[Client(request)]);
    assert_eq!(
        (error.offset, error.problem),
        (offset_of(request, b"NoColon"), Http1Problem::HeaderWithoutColon)
    );
}

#[test]
fn a_start_line_that_is_not_http_stops_parsing_before_the_head_ends() {
    // A protocol that sends one line and waits for the answer: no blank line will come,
    // so waiting for the head's end would hold the line until the head limit.
    let events = run(&[Client(b"server-first 4194304 2097152\n")]);
    assert_eq!(
        summary(&events),
        ["error: HTTP/1.1 client→server at byte 0: invalid HTTP version"]
    );
    let events = run(&[Client(b"\r\nHELLO\r\n")]);
    let (was_refused, error) = last_error(&events);
    assert!(!was_refused);
    assert_eq!((error.offset, error.problem), (2, Http1Problem::InvalidRequestLine));
    // A server's answer to a request, the same.
    let events = run(&[Client(GET), Server(b"OK then\r\n")]);
    let (_, error) = last_error(&events);
    assert_eq!(
        (error.direction, error.offset, error.problem),
        (Direction::ServerToClient, 0, Http1Problem::InvalidVersion)
    );
    // A valid start line still waits for the rest of its head, however it is cut.
    let events = run(&[Client(b"GET / HTTP/1.1\r\nHost: example.test\r\n")]);
    assert!(events.is_empty(), "{:?}", summary(&events));
    // An invalid start line wins over a later bad field line, whole or cut.
    let error = malformed(&[Client(b"G(T / HTTP/1.1\r\nNoColon\r\n\r\n")]);
    assert_eq!((error.offset, error.problem), (0, Http1Problem::InvalidRequestLine));
}

#[test]
fn invalid_heads_are_errors_at_their_line() {
    let cases: [(&[u8], &[u8], Http1Problem); 8] = [
        (b"G(T / HTTP/1.1\r\n\r\n", b"G(T", Http1Problem::InvalidRequestLine),
        (b"GET / HTTP/2.0\r\n\r\n", b"GET", Http1Problem::InvalidVersion),
        (b"GET / HTTP/1.2\r\n\r\n", b"GET", Http1Problem::InvalidVersion),
        (b"GET /\r\n\r\n", b"GET", Http1Problem::InvalidRequestLine),
        (
            b"GET / HTTP/1.1\r\nHost: h\r\nBad Name: x\r\n\r\n",
            b"Bad",
            Http1Problem::InvalidHeaderName,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x01b\r\n\r\n",
            b"X:",
            Http1Problem::InvalidHeaderValue,
        ),
        // httparse calls a bare CR in a value an invalid value, and one after the
        // version an invalid line ending.
        (
            b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n",
            b"X:",
            Http1Problem::InvalidHeaderValue,
        ),
        (b"GET / HTTP/1.1\rX\r\n\r\n", b"GET", Http1Problem::InvalidLineEnding),
    ];
    for (request, at, problem) in cases {
        let error = malformed(&[Client(request)]);
        assert_eq!(
            (error.offset, error.problem),
            (offset_of(request, at), problem),
            "{}",
            String::from_utf8_lossy(request)
        );
    }
    let error = malformed(&[Client(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")]);
    assert_eq!(error.problem, Http1Problem::InvalidVersion);
}

#[test]
fn invalid_status_lines_are_errors() {
    for response in [
        &b"HTTP/1.1 2000 OK\r\n\r\n"[..],
        b"HTTP/1.1 OK\r\n\r\n",
        b"HTTP/1.1 099 Low\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
    ] {
        let error = malformed(&[Client(GET), Server(response)]);
        assert_eq!(error.direction, Direction::ServerToClient);
        assert_eq!(error.offset, 0);
        assert!(
            matches!(
                error.problem,
                Http1Problem::InvalidStatusLine | Http1Problem::InvalidVersion
            ),
            "{error}"
        );
    }
}

#[test]
fn too_many_header_lines_is_an_error() {
    let mut request = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..=MAX_HEADER_LINES {
        request.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    let error = malformed(&[Client(&request)]);
    assert_eq!(
        (error.offset, error.problem),
        (
            0,
            Http1Problem::TooManyHeaders {
                limit: MAX_HEADER_LINES
            }
        )
    );
}

#[test]
fn a_head_larger_than_the_limit_is_an_error() {
    let limits = Http1Limits {
        max_head_bytes: 64,
        ..Http1Limits::default()
    };
    let fits = b"GET / HTTP/1.1\r\nHost: h\r\nX-Pad: 0123456789012345678901234567\r\n\r\n";
    assert_eq!(fits.len(), 64);
    let events = run_with(limits, &[Client(fits), Server(OK_HELLO)]);
    assert_eq!(transactions(&events).len(), 1);

    let too_big = b"GET / HTTP/1.1\r\nHost: h\r\nX-Pad: 01234567890123456789012345678\r\n\r\n";
    let events = run_with(limits, &[Client(fits), Server(OK_HELLO), Client(too_big)]);
    let (was_refused, error) = last_error(&events);
    assert!(!was_refused);
    assert_eq!(
        (error.offset, error.problem),
        (len(fits), Http1Problem::HeadTooLarge { limit: 64 })
    );
    // A stream that never ends its head is stopped at the bound, not buffered on.
    let events = run_with(limits, &[Client(fits), Server(&[b'x'; 1000])]);
    let (_, error) = last_error(&events);
    assert_eq!(
        (error.direction, error.offset, error.problem),
        (Direction::ServerToClient, 0, Http1Problem::HeadTooLarge { limit: 64 })
    );
}

#[test]
fn long_chunk_lines_and_trailers_are_bounded() {
    let limits = Http1Limits {
        max_head_bytes: 128,
        ..Http1Limits::default()
    };
    let extension = "x".repeat(200);
    let request = request_with("Transfer-Encoding: chunked\r\n", &format!("5;{extension}\r\nhello\r\n"));
    let events = run_with(limits, &[Client(&request)]);
    let (_, error) = last_error(&events);
    assert_eq!(
        (error.offset, error.problem),
        (
            offset_of(&request, b"5;"),
            Http1Problem::ChunkLineTooLong { limit: 128 }
        )
    );

    let trailers = "X-T: 0123456789\r\n".repeat(10);
    let request = request_with("Transfer-Encoding: chunked\r\n", &format!("0\r\n{trailers}\r\n"));
    let events = run_with(limits, &[Client(&request)]);
    let (_, error) = last_error(&events);
    assert_eq!(error.problem, Http1Problem::TrailersTooLarge { limit: 128 });
}

#[test]
fn a_trailer_line_without_a_colon_is_an_error() {
    let (offset, error) = chunked_body_error("0\r\nX-Sum: 1\r\nbroken\r\n\r\n", "broken");
    assert_eq!(
        (error.offset, error.problem),
        (offset, Http1Problem::HeaderWithoutColon)
    );
    let (offset, error) = chunked_body_error("0\r\n folded: 1\r\n\r\n", " folded");
    assert_eq!(
        (error.offset, error.problem),
        (offset, Http1Problem::ObsoleteLineFolding)
    );
}

#[test]
fn a_response_with_no_request_is_an_error() {
    let error = malformed(&[Server(b"HTTP/1.1 408 Request Timeout\r\n\r\n")]);
    assert_eq!(
        (error.direction, error.offset, error.problem),
        (Direction::ServerToClient, 0, Http1Problem::ResponseWithoutRequest)
    );
    let second = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let error = malformed(&[Client(GET), Server(OK_HELLO), Server(second)]);
    assert_eq!(
        (error.offset, error.problem),
        (len(OK_HELLO), Http1Problem::ResponseWithoutRequest)
    );
}

#[test]
fn a_101_to_a_request_that_asked_for_none_is_an_error() {
    let error = malformed(&[Client(GET), Server(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")]);
    assert_eq!(error.problem, Http1Problem::UnrequestedSwitch);
}

#[test]
fn too_many_pipelined_requests_is_an_error() {
    let limits = Http1Limits {
        max_pipelined: 2,
        ..Http1Limits::default()
    };
    let request = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
    let three = [&request[..], request, request].concat();
    let events = run_with(limits, &[Client(&three)]);
    let (_, error) = last_error(&events);
    assert_eq!(
        (error.offset, error.problem),
        (2 * len(request), Http1Problem::TooManyPipelined { limit: 2 })
    );
    // Answered in between, the same three are fine.
    let events = run_with(
        limits,
        &[Client(&three[..2 * request.len()]), Server(OK_HELLO), Client(request)],
    );
    assert!(matches!(
        events.last(),
        Some(Http1Event::RequestComplete { index: 2, .. })
    ));
}

#[test]
fn client_bytes_held_for_a_switch_are_bounded() {
    let limits = Http1Limits {
        max_head_bytes: 256,
        ..Http1Limits::default()
    };
    let connect = b"CONNECT b.test:443 HTTP/1.1\r\nHost: b.test:443\r\n\r\n";
    let events = run_with(limits, &[Client(connect), Client(&[0x16; 300])]);
    let (_, error) = last_error(&events);
    assert_eq!(
        (error.offset, error.problem),
        (len(connect), Http1Problem::TooMuchBeforeSwitch { limit: 256 })
    );
}

#[test]
fn closing_inside_a_message_is_an_error() {
    let error = malformed(&[Client(b"GET / HTTP/1.1\r\nHo"), ClientClosed]);
    assert_eq!((error.offset, error.problem), (0, Http1Problem::ClosedMidMessage));
    let head = b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n";
    let error = malformed(&[Client(head), Client(b"abc"), ClientClosed]);
    assert_eq!(
        (error.offset, error.problem),
        (len(head) + 3, Http1Problem::ClosedMidMessage)
    );
    let error = malformed(&[
        Client(GET),
        Server(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"),
        ServerClosed,
    ]);
    assert_eq!(error.direction, Direction::ServerToClient);
    assert_eq!(error.problem, Http1Problem::ClosedMidMessage);
}

#[test]
fn after_an_error_nothing_more_is_reported() {
    let mut connection = Http1Connection::new(Http1Limits::default());
    let events = connection.client_bytes(b"GET / HTTP/1.1\r\nNoColon\r\n\r\n");
    assert!(matches!(events[..], [Http1Event::ProtocolError(_)]));
    assert!(connection.client_bytes(GET).is_empty());
    assert!(connection.server_bytes(OK_HELLO).is_empty());
    assert!(connection.client_closed().is_empty());
    assert!(connection.server_closed().is_empty());
    assert_eq!(connection.client_bytes_framed(), 0);
}

// ---------------------------------------------------------------------------------------
// Hostile input

#[test]
fn random_garbage_never_panics() {
    let mut prng = Prng(0x9e37_79b9_7f4a_7c15);
    for round in 0..2000 {
        let limits = Http1Limits {
            max_head_bytes: [0, 1, 16, 300, DEFAULT_MAX_HEAD_BYTES][round % 5],
            max_pipelined: [0, 1, 3, 64][round % 4],
        };
        let mut connection = Http1Connection::new(limits);
        for _ in 0..prng.below(12) {
            let size = [1, 7, 64, 1500, 20_000][prng.below(5)];
            let bytes: Vec<u8> = (0..prng.below(size) + 1).map(|_| prng.next() as u8).collect();
            match prng.below(10) {
                0 => drop(connection.client_closed()),
                1 => drop(connection.server_closed()),
                2..=5 => drop(connection.client_bytes(&bytes)),
                _ => drop(connection.server_bytes(&bytes)),
            }
        }
        let _ = connection.client_bytes_framed();
    }
}

#[test]
fn mutated_exchanges_never_panic() {
    let client_stream = [
        &b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"[..],
        b"5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n",
        b"GET http://h/b?c HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n",
        b"CONNECT h:443 HTTP/1.1\r\n\r\n",
        b"HEAD / HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc",
    ]
    .concat();
    let server_stream = [
        &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        b"3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 407 No\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\n",
    ]
    .concat();
    let specials = b"\r\n:; \t0aF,\x00\xff";
    let mut prng = Prng(42);
    for _ in 0..3000 {
        let mut client = client_stream.clone();
        let mut server = server_stream.clone();
        for _ in 0..1 + prng.below(4) {
            let stream = if prng.below(2) == 0 { &mut client } else { &mut server };
            let at = prng.below(stream.len());
            match prng.below(3) {
                0 => stream[at] = specials[prng.below(specials.len())],
                1 => drop(stream.remove(at)),
                _ => stream.insert(at, specials[prng.below(specials.len())]),
            }
        }
        let limits = Http1Limits {
            max_head_bytes: 40 + prng.below(200),
            max_pipelined: 1 + prng.below(6),
        };
        let mut connection = Http1Connection::new(limits);
        let (mut c, mut s) = (&client[..], &server[..]);
        while !c.is_empty() || !s.is_empty() {
            if prng.below(2) == 0 && !c.is_empty() {
                let (piece, rest) = c.split_at(1 + prng.below(c.len().min(30)));
                connection.client_bytes(piece);
                c = rest;
            } else if !s.is_empty() {
                let (piece, rest) = s.split_at(1 + prng.below(s.len().min(30)));
                connection.server_bytes(piece);
                s = rest;
            }
        }
        connection.client_closed();
        connection.server_closed();
    }
}

#[test]
fn mutated_exchanges_frame_the_same_in_any_split() {
    let client = b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;x\r\nhello\r\n0\r\nT: 1\r\n\r\n\
GET /b HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi";
    let server = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let specials = b"\r\n:; \t0aF,";
    let mut prng = Prng(7);
    for _ in 0..500 {
        let (mut client, mut server) = (client.to_vec(), server.to_vec());
        let stream = if prng.below(2) == 0 { &mut client } else { &mut server };
        let at = prng.below(stream.len());
        stream[at] = specials[prng.below(specials.len())];
        let steps = [Client(&client), Server(&server), ClientClosed, ServerClosed];
        let limits = Http1Limits::default();
        let whole = feed(limits, &steps, || usize::MAX);
        assert_eq!(
            feed(limits, &steps, || 1),
            whole,
            "{:?}",
            String::from_utf8_lossy(&client)
        );
        let mut split = Prng(at as u64 + 1);
        assert_eq!(feed(limits, &steps, || 1 + split.below(9)), whole);
    }
}
