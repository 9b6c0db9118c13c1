use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use loupe_control::config::Config;

use super::*;

/// The engine between two byte sinks, as the split-TLS session drives it.
struct Harness {
    engine: HttpInspector,
    to_server: Vec<u8>,
    to_client: Vec<u8>,
    end_session: SessionEnd,
}

impl Harness {
    fn new(url_rules: &str, alpn: Option<&str>) -> Harness {
        Harness::with_settings(url_rules, alpn, InspectSettings::default())
    }

    fn with_settings(url_rules: &str, alpn: Option<&str>, settings: InspectSettings) -> Harness {
        let mut engine = HttpInspector::new(Arc::new(settings), Arc::new(rules(url_rules)));
        engine.established(alpn);
        Harness {
            engine,
            to_server: Vec::new(),
            to_client: Vec::new(),
            end_session: SessionEnd::Open,
        }
    }

    fn client(&mut self, bytes: &[u8]) -> Pass {
        let mut relay = Relay {
            to_server: &mut self.to_server,
            to_client: &mut self.to_client,
            end_session: &mut self.end_session,
        };
        let pass = self.engine.client_to_server(bytes, &mut relay);
        if pass == Pass::Forward {
            self.to_server.extend_from_slice(bytes);
        }
        pass
    }

    fn server(&mut self, bytes: &[u8]) -> Pass {
        let mut relay = Relay {
            to_server: &mut self.to_server,
            to_client: &mut self.to_client,
            end_session: &mut self.end_session,
        };
        let pass = self.engine.server_to_client(bytes, &mut relay);
        if pass == Pass::Forward {
            self.to_client.extend_from_slice(bytes);
        }
        pass
    }

    fn client_ended(&mut self) {
        let mut relay = Relay {
            to_server: &mut self.to_server,
            to_client: &mut self.to_client,
            end_session: &mut self.end_session,
        };
        self.engine.client_ended(&mut relay);
    }

    fn finished(&mut self) -> Vec<InspectedTransaction> {
        self.engine.take_finished()
    }
}

fn rules(url_rules: &str) -> UrlRules {
    let config = Config::parse(url_rules, Path::new("test.toml")).expect("url rules parse");
    UrlRules::new(&config.url_rules, &[]).expect("url rules compile")
}

const BLOCK_ADMIN: &str = r#"
[[url_rule]]
name = "no-admin"
host = ["shop.example"]
path = ["/admin"]
action = "block"

[[url_rule]]
name = "watch-api"
path = ["/api/*"]
action = "alert"
"#;

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: t/1\r\n\r\n").into_bytes()
}

const OK_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

#[test]
fn an_allowed_request_reaches_the_server_whole_and_makes_a_transaction() {
    let mut h = Harness::new(BLOCK_ADMIN, Some("http/1.1"));
    h.client(&get("/index.html"));
    assert_eq!(h.to_server, get("/index.html"));
    assert_eq!(h.server(OK_RESPONSE), Pass::Forward);
    assert_eq!(h.to_client, OK_RESPONSE);
    let finished = h.finished();
    assert_eq!(finished.len(), 1);
    let tx = &finished[0];
    assert_eq!(tx.index, 0);
    assert_eq!(tx.transaction.path, "/index.html");
    assert_eq!(tx.transaction.host.as_deref(), Some("shop.example"));
    assert_eq!(tx.transaction.status, Some(200));
    assert!(!tx.blocked);
    assert_eq!(tx.url_rule, None);
    assert_eq!(h.end_session, SessionEnd::Open);
    assert_eq!(h.engine.protocol(), AppProtocol::Http1);
}

#[test]
fn a_head_is_held_until_complete_then_released_in_one_piece() {
    let mut h = Harness::new(BLOCK_ADMIN, None);
    let request = get("/index.html");
    for byte in &request[..request.len() - 1] {
        assert_eq!(h.client(std::slice::from_ref(byte)), Pass::Taken);
        assert!(h.to_server.is_empty(), "no byte of an unjudged head leaves");
    }
    h.client(&request[request.len() - 1..]);
    assert_eq!(h.to_server, request);
}

#[test]
fn body_bytes_pass_without_a_copy() {
    let mut h = Harness::new(BLOCK_ADMIN, None);
    let head = b"POST /upload HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 10\r\n\r\n";
    h.client(head);
    assert_eq!(h.client(b"01234"), Pass::Forward);
    assert_eq!(h.client(b"56789"), Pass::Forward);
    let mut expected = head.to_vec();
    expected.extend_from_slice(b"0123456789");
    assert_eq!(h.to_server, expected);
}

#[test]
fn a_blocked_request_never_reaches_the_server_and_the_client_gets_a_403_naming_the_rule() {
    let mut h = Harness::new(BLOCK_ADMIN, None);
    h.engine.set_now(SystemTime::UNIX_EPOCH + Duration::from_secs(100));
    h.client(&get("/admin/users"));
    assert!(
        h.to_server.is_empty(),
        "server got {:?}",
        String::from_utf8_lossy(&h.to_server)
    );
    let answer = String::from_utf8(h.to_client.clone()).unwrap();
    assert!(answer.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{answer}");
    assert!(answer.contains("Connection: close\r\n"));
    assert!(answer.contains("no-admin"), "the page names the rule: {answer}");
    assert_eq!(h.end_session, SessionEnd::CloseNotify);
    let finished = h.finished();
    assert_eq!(finished.len(), 1);
    assert!(finished[0].blocked);
    assert_eq!(finished[0].transaction.status, Some(403));
    assert_eq!(
        finished[0].url_rule,
        Some(UrlHit {
            rule: "no-admin".into(),
            action: UrlAction::Block
        })
    );
    assert_eq!(h.engine.ended(), Some("request blocked by url rule \"no-admin\""));
    // Whatever the client sends next goes nowhere.
    h.client(&get("/index.html"));
    assert!(h.to_server.is_empty());
}

#[test]
fn a_blocked_pipelined_request_is_answered_after_the_responses_before_it() {
    let mut h = Harness::new(BLOCK_ADMIN, None);
    let mut pipelined = get("/a");
    pipelined.extend_from_slice(&get("/admin"));
    pipelined.extend_from_slice(&get("/b"));
    h.client(&pipelined);
    assert_eq!(h.to_server, get("/a"), "only the request before the blocked one goes");
    assert!(h.to_client.is_empty(), "the 403 waits for /a's response");
    assert_eq!(h.end_session, SessionEnd::Open);
    h.server(&OK_RESPONSE[..10]);
    assert_eq!(h.end_session, SessionEnd::Open);
    h.server(&OK_RESPONSE[10..]);
    assert_eq!(h.end_session, SessionEnd::CloseNotify);
    assert!(h.to_client.starts_with(OK_RESPONSE));
    assert!(h.to_client[OK_RESPONSE.len()..].starts_with(b"HTTP/1.1 403 Forbidden\r\n"));
    let finished = h.finished();
    let paths: Vec<_> = finished
        .iter()
        .map(|t| (t.transaction.path.as_str(), t.blocked))
        .collect();
    assert_eq!(paths, [("/a", false), ("/admin", true)]);
}

#[test]
fn an_alert_rule_lets_the_request_through_and_marks_it() {
    let mut h = Harness::new(BLOCK_ADMIN, None);
    h.client(&get("/api/v1/items"));
    assert_eq!(h.to_server, get("/api/v1/items"));
    h.server(OK_RESPONSE);
    let finished = h.finished();
    assert_eq!(
        finished[0].url_rule,
        Some(UrlHit {
            rule: "watch-api".into(),
            action: UrlAction::Alert
        })
    );
    assert!(!finished[0].blocked);
    assert_eq!(h.engine.counts().url_rule_hits, 1);
}

#[test]
fn a_stream_that_is_not_http_is_relayed_unchanged_and_marked_unknown() {
    let mut h = Harness::new(BLOCK_ADMIN, None);
    let noise = b"\x00\x01binary protocol\r\n\r\n";
    h.client(noise);
    h.client(b"more");
    h.server(b"reply");
    assert_eq!(h.to_server, b"\x00\x01binary protocol\r\n\r\nmore");
    assert_eq!(h.to_client, b"reply");
    assert_eq!(h.engine.protocol(), AppProtocol::Unknown);
    assert_eq!(h.end_session, SessionEnd::Open);
    assert_eq!(h.engine.counts().protocol_errors, 0);
}

#[test]
fn malformed_http_after_a_good_transaction_is_passed_through_with_the_reason_kept() {
    let mut h = Harness::new(BLOCK_ADMIN, None);
    h.client(&get("/a"));
    h.server(OK_RESPONSE);
    let bad = b"GET /b HTTP/1.1\r\nHost shop.example\r\n\r\n";
    h.client(bad);
    let mut expected = get("/a");
    expected.extend_from_slice(bad);
    assert_eq!(h.to_server, expected, "every byte still reaches the server");
    assert_eq!(h.end_session, SessionEnd::Open);
    let stopped = h.engine.stopped().unwrap();
    assert!(stopped.contains("header line without a colon"), "{stopped}");
    assert_eq!(h.engine.counts().protocol_errors, 1);
}

#[test]
fn malformed_http_ends_the_session_when_the_settings_say_block() {
    let settings = InspectSettings {
        block_on_protocol_error: true,
        ..InspectSettings::default()
    };
    let mut h = Harness::with_settings(BLOCK_ADMIN, None, settings);
    h.client(&get("/a"));
    h.server(OK_RESPONSE);
    h.client(b"GET /b HTTP/1.1\r\nHost shop.example\r\n\r\n");
    assert_eq!(h.to_server, get("/a"));
    assert_eq!(h.end_session, SessionEnd::CloseNotify);
    assert!(h.engine.ended().unwrap().contains("protocol error"));
}

#[test]
fn a_smuggling_attempt_never_reaches_the_server() {
    let mut h = Harness::new(BLOCK_ADMIN, None);
    let smuggle =
        b"POST / HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    h.client(smuggle);
    assert!(h.to_server.is_empty());
    assert_eq!(h.end_session, SessionEnd::CloseNotify);
    assert!(h
        .engine
        .ended()
        .unwrap()
        .contains("both Content-Length and Transfer-Encoding"));
}

#[test]
fn a_half_sent_head_is_released_when_the_client_ends() {
    let mut h = Harness::new(BLOCK_ADMIN, None);
    h.client(b"GET /a HTTP/1.1\r\nHost: shop");
    assert!(h.to_server.is_empty());
    h.client_ended();
    assert_eq!(h.to_server, b"GET /a HTTP/1.1\r\nHost: shop");
}

#[test]
fn transactions_carry_the_times_of_their_rounds() {
    let mut h = Harness::new(BLOCK_ADMIN, None);
    let at = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
    h.engine.set_now(at(10));
    h.client(b"GET /a HTTP/1.1\r\n");
    h.engine.set_now(at(11));
    h.client(b"Host: shop.example\r\n\r\n");
    h.engine.set_now(at(12));
    h.server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n");
    h.engine.set_now(at(13));
    h.server(b"ok");
    let tx = &h.finished()[0];
    assert_eq!(tx.request_start, Some(at(10)));
    assert_eq!(tx.response_first_byte, Some(at(12)));
    assert_eq!(tx.end, Some(at(13)));
}

#[test]
fn a_websocket_upgrade_becomes_a_tunnel_and_every_byte_goes_through() {
    let mut h = Harness::new(BLOCK_ADMIN, None);
    let upgrade = b"GET /chat HTTP/1.1\r\nHost: shop.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    h.client(upgrade);
    h.server(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi");
    h.client(b"\x81\x82abcdXY");
    let mut expected = upgrade.to_vec();
    expected.extend_from_slice(b"\x81\x82abcdXY");
    assert_eq!(h.to_server, expected);
    assert!(h.to_client.ends_with(b"\x81\x02hi"));
    assert!(h.engine.stopped().unwrap().contains("tunnel"));
    let finished = h.finished();
    assert_eq!(finished.len(), 1, "the upgrade is a transaction: {finished:?}");
    assert_eq!(finished[0].transaction.status, Some(101));
    assert!(finished[0].transaction.marks.upgrade);
}

#[test]
fn looks_like_http1_accepts_methods_and_refuses_binary() {
    assert!(looks_like_http1(b"GET / HTTP/1.1"));
    assert!(looks_like_http1(b"M-SEARCH * HTTP/1.1"));
    assert!(looks_like_http1(b"PROPFIND"));
    assert!(!looks_like_http1(b"\x16\x03\x01"));
    assert!(!looks_like_http1(b"get / HTTP/1.1"));
    assert!(!looks_like_http1(b""));
}

// ---- HTTP/2 ------------------------------------------------------------------------

use crate::inspect::hpack::{HeaderField, HpackDecoder, HpackEncoder, HpackLimits};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const SETTINGS: u8 = 4;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn block(encoder: &mut HpackEncoder, fields: &[(&str, &str)]) -> Vec<u8> {
    let fields: Vec<HeaderField> = fields
        .iter()
        .map(|(name, value)| HeaderField {
            name: name.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            sensitive: false,
        })
        .collect();
    let mut out = Vec::new();
    encoder.encode(&fields, &mut out);
    out
}

fn request(encoder: &mut HpackEncoder, stream: u32, path: &str) -> Vec<u8> {
    let fields = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "shop.example"),
        (":path", path),
    ];
    frame(HEADERS, END_STREAM | END_HEADERS, stream, &block(encoder, &fields))
}

/// The frames in `bytes` (after the client preface, if there is one): type, flags,
/// stream, payload.
fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    bytes = bytes.strip_prefix(PREFACE).unwrap_or(bytes);
    let mut out = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff;
        out.push((bytes[3], bytes[4], stream, bytes[9..9 + len].to_vec()));
        bytes = &bytes[9 + len..];
    }
    out
}

#[test]
fn an_http2_stream_is_answered_with_a_403_while_the_others_reach_the_server() {
    let mut h = Harness::new(BLOCK_ADMIN, Some("h2"));
    assert_eq!(h.engine.protocol(), AppProtocol::Http2);
    let mut client_encoder = HpackEncoder::new();
    let mut client = PREFACE.to_vec();
    client.extend(frame(SETTINGS, 0, 0, &[]));
    client.extend(request(&mut client_encoder, 1, "/index.html"));
    client.extend(request(&mut client_encoder, 3, "/admin/users"));
    client.extend(request(&mut client_encoder, 5, "/index.html?after=1"));
    h.client(&client);

    let to_server = frames(&h.to_server);
    let streams: Vec<u32> = to_server.iter().filter(|f| f.0 == HEADERS).map(|f| f.2).collect();
    assert_eq!(streams, [1, 5], "stream 3 never reaches the server");
    // The server decodes what it got with a table that follows loupe's blocks.
    let mut server_decoder = HpackDecoder::new(HpackLimits::default());
    let paths: Vec<Vec<u8>> = to_server
        .iter()
        .filter(|f| f.0 == HEADERS)
        .map(|f| {
            let fields = server_decoder.decode(&f.3).expect("the server decodes loupe's blocks");
            fields.into_iter().find(|x| x.name == b":path").expect(":path").value
        })
        .collect();
    assert_eq!(paths, [b"/index.html".to_vec(), b"/index.html?after=1".to_vec()]);

    let mut server_encoder = HpackEncoder::new();
    let mut server = frame(SETTINGS, 0, 0, &[]);
    for stream in [1, 5] {
        server.extend(frame(
            HEADERS,
            END_HEADERS,
            stream,
            &block(&mut server_encoder, &[(":status", "200")]),
        ));
        server.extend(frame(DATA, END_STREAM, stream, b"ok"));
    }
    h.server(&server);

    let to_client = frames(&h.to_client);
    let answer: Vec<&(u8, u8, u32, Vec<u8>)> = to_client.iter().filter(|f| f.2 == 3).collect();
    assert!(answer.len() >= 2, "HEADERS and DATA on stream 3: {to_client:?}");
    let mut client_decoder = HpackDecoder::new(HpackLimits::default());
    let status = client_decoder
        .decode(&answer[0].3)
        .expect("the client decodes the answer");
    assert_eq!(status[0].value, b"403");
    let body: Vec<u8> = answer
        .iter()
        .filter(|f| f.0 == DATA)
        .flat_map(|f| f.3.clone())
        .collect();
    assert!(String::from_utf8_lossy(&body).contains("no-admin"));
    assert_eq!(h.end_session, SessionEnd::Open, "the connection goes on");

    let mut finished = h.finished();
    finished.sort_by_key(|t| t.transaction.stream_id);
    let summary: Vec<(Option<u32>, Option<u16>, bool)> = finished
        .iter()
        .map(|t| (t.transaction.stream_id, t.transaction.status, t.blocked))
        .collect();
    assert_eq!(
        summary,
        [
            (Some(1), Some(200), false),
            (Some(3), Some(403), true),
            (Some(5), Some(200), false)
        ]
    );
    assert_eq!(
        finished[1].url_rule.as_ref().map(|hit| hit.rule.as_str()),
        Some("no-admin")
    );
}

#[test]
fn a_bad_http2_preface_is_relayed_and_marked() {
    let mut h = Harness::new(BLOCK_ADMIN, Some("h2"));
    h.client(b"GET / HTTP/1.1\r\nHost: shop.example\r\n\r\n");
    assert_eq!(h.to_server, b"GET / HTTP/1.1\r\nHost: shop.example\r\n\r\n");
    assert!(h.engine.stopped().is_some());
    assert_eq!(h.end_session, SessionEnd::Open);
}

#[test]
fn an_http2_answer_waits_for_the_servers_settings_to_go_first() {
    let mut h = Harness::new(BLOCK_ADMIN, Some("h2"));
    let mut client_encoder = HpackEncoder::new();
    let mut client = PREFACE.to_vec();
    client.extend(frame(SETTINGS, 0, 0, &[]));
    client.extend(request(&mut client_encoder, 1, "/admin/"));
    h.client(&client);
    assert!(
        h.to_client.is_empty(),
        "nothing reaches the client before the server's SETTINGS"
    );
    h.server(&frame(SETTINGS, 0, 0, &[]));
    let to_client = frames(&h.to_client);
    assert_eq!((to_client[0].0, to_client[0].2), (SETTINGS, 0), "{to_client:?}");
    assert!(to_client.iter().any(|f| f.0 == HEADERS && f.2 == 1), "{to_client:?}");
}

// ---- content signatures ----------------------------------------------------------------

/// The EICAR test file's 68 bytes, which antivirus engines (and ET's rules) detect.
const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

const SIGNATURES: &str = r#"
alert http any any -> any any (msg:"EICAR in a response body"; flow:established,to_client; file.data; content:"EICAR-STANDARD-ANTIVIRUS-TEST-FILE"; classtype:trojan-activity; sid:9200001; rev:2;)
drop http any any -> any any (msg:"blocked tool"; flow:to_server; http.user_agent; content:"evil-agent"; startswith; sid:9200002;)
alert http any any -> any any (msg:"admin path"; http.uri; content:"/admin/"; startswith; pcre:"/\/admin\/[a-z]+\.php$/U"; flowbits:set,saw.admin; sid:9200003;)
alert http any any -> any any (msg:"admin answered"; flow:to_client; flowbits:isset,saw.admin; http.stat_code; content:"200"; sid:9200004;)
"#;

fn signature_set(text: &str) -> Arc<SignatureSet> {
    use crate::inspect::signatures::{load, rule_vars, LoadedRules};
    let mut loaded = LoadedRules::default();
    let vars = rule_vars(&Default::default());
    load::load_reader(
        text.as_bytes(),
        Path::new("test.rules"),
        &vars,
        &mut Default::default(),
        &mut loaded,
    );
    assert!(loaded.report.skipped.is_empty(), "{:?}", loaded.report.skipped);
    Arc::new(SignatureSet::new(loaded).expect("rules compile"))
}

fn with_signatures(alpn: Option<&str>) -> Harness {
    let mut harness = Harness::new("", None);
    let endpoints = Endpoints {
        client: "198.18.0.1:40000".parse().unwrap(),
        server: "198.19.0.1:443".parse().unwrap(),
    };
    let engine = HttpInspector::new(Arc::new(InspectSettings::default()), Arc::new(rules("")));
    harness.engine = engine.with_signatures(signature_set(SIGNATURES), endpoints, 1 << 20);
    harness.engine.established(alpn);
    harness
}

fn fired(harness: &mut Harness) -> Vec<u32> {
    let set = Arc::clone(harness.engine.signature_set().unwrap());
    harness
        .engine
        .take_alerts()
        .iter()
        .map(|alert| set.rule(alert.hit.rule).meta.sid)
        .collect()
}

#[test]
fn eicar_split_across_two_pieces_fires_once_in_the_piece_that_completes_it() {
    let mut h = with_signatures(None);
    h.client(b"GET /eicar.com HTTP/1.1\r\nHost: files.example\r\n\r\n");
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", EICAR.len());
    h.server(head.as_bytes());
    h.server(&EICAR[..30]);
    assert_eq!(fired(&mut h), Vec::<u32>::new(), "half the pattern fires nothing");
    h.server(&EICAR[30..]);
    assert_eq!(fired(&mut h), vec![9200001]);
    assert_eq!(h.finished().len(), 1);
    // A second transaction on the connection is matched afresh, once.
    h.client(b"GET /again HTTP/1.1\r\nHost: files.example\r\n\r\n");
    let chunked = format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n20\r\n{}\r\n",
        std::str::from_utf8(&EICAR[..32]).unwrap()
    );
    h.server(chunked.as_bytes());
    let rest = format!(
        "{:x}\r\n{}\r\n0\r\n\r\n",
        EICAR.len() - 32,
        std::str::from_utf8(&EICAR[32..]).unwrap()
    );
    h.server(rest.as_bytes());
    assert_eq!(fired(&mut h), vec![9200001], "across chunks, once");
}

#[test]
fn eicar_in_a_gzip_body_fires() {
    use std::io::Write as _;
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(b"some text before ").unwrap();
    gzip.write_all(EICAR).unwrap();
    let body = gzip.finish().unwrap();
    let mut h = with_signatures(None);
    h.client(b"GET /eicar.gz HTTP/1.1\r\nHost: files.example\r\n\r\n");
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    h.server(head.as_bytes());
    for byte in &body {
        h.server(std::slice::from_ref(byte));
    }
    assert_eq!(fired(&mut h), vec![9200001]);
}

#[test]
fn a_drop_rule_on_the_request_head_keeps_it_from_the_server_and_resets_the_session() {
    let mut h = with_signatures(None);
    h.client(b"GET / HTTP/1.1\r\nHost: a.example\r\nUser-Agent: evil-agent/1.0\r\n\r\n");
    assert_eq!(fired(&mut h), vec![9200002]);
    assert!(h.to_server.is_empty(), "nothing of the request went to the server");
    assert_eq!(h.end_session, SessionEnd::Reset, "a drop resets both ways");
    assert_eq!(h.engine.ended(), Some("dropped by signature sid 9200002"));
    assert_eq!(
        (h.engine.counts().signature_alerts, h.engine.counts().signature_drops),
        (1, 1)
    );
    let done = h.finished();
    assert!(done[0].blocked);
}

#[test]
fn a_near_miss_fires_nothing_and_flowbits_carry_from_request_to_response() {
    let mut h = with_signatures(None);
    h.client(b"GET /admin/index.phpx HTTP/1.1\r\nHost: a.example\r\nUser-Agent: not-evil-agent\r\n\r\n");
    h.server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(fired(&mut h), Vec::<u32>::new());
    h.client(b"GET /admin/%69ndex.php HTTP/1.1\r\nHost: a.example\r\n\r\n");
    h.server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(
        fired(&mut h),
        vec![9200003, 9200004],
        "normalised URI, then the flowbit"
    );
}

#[test]
fn open_transactions_share_a_session_budget_of_body_bytes() {
    let set = signature_set(SIGNATURES);
    let endpoints = Endpoints {
        client: "198.18.0.1:40000".parse().unwrap(),
        server: "198.19.0.1:443".parse().unwrap(),
    };
    let depth = 1000;
    let mut signatures = SessionSignatures::new(set, endpoints, depth);
    let mut hits = Vec::new();
    let head = || {
        HeadBuffers::http1_request(
            b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n",
            crate::inspect::signatures::WantedBuffers::ALL,
        )
    };
    let response = || {
        HeadBuffers::http1_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n",
            crate::inspect::signatures::WantedBuffers::ALL,
        )
    };
    let mut open: Vec<Box<TxContent>> = Vec::new();
    for _ in 0..5 {
        let mut content = signatures.request_head(head(), &mut hits);
        signatures.response_head(&mut content, response(), &mut hits);
        signatures.body_data(&mut content, Direction::ToClient, &[b'a'; 1000], &mut hits);
        open.push(content);
    }
    let kept: Vec<usize> = open.iter().map(|c| c.response_body.bytes.len()).collect();
    assert_eq!(kept, [1000, 1000, 1000, 1000, 0], "four depths per session");
    assert_eq!(signatures.bodies_cut, 1);
    // A transaction that ends gives its bytes back.
    open.remove(0);
    let mut content = signatures.request_head(head(), &mut hits);
    signatures.response_head(&mut content, response(), &mut hits);
    signatures.body_data(&mut content, Direction::ToClient, &[b'a'; 1500], &mut hits);
    assert_eq!(content.response_body.bytes.len(), 1000, "room again, up to the depth");
    assert!(hits.is_empty(), "{hits:?}");
}

#[test]
fn a_candidate_found_in_one_stage_is_decided_in_its_own() {
    // Response rules whose fast pattern is in the request (the URI) or in the response
    // head, while their other conditions read the response head or body.
    let rules = r#"
alert http any any -> any any (msg:"404 on special"; flow:to_client; http.uri; content:"/special-path"; http.stat_code; content:"404"; sid:9200101;)
alert http any any -> any any (msg:"secret in a 200"; flow:to_client; http.response_line; content:"HTTP/1.1 200 OK"; fast_pattern; file.data; content:"secret"; sid:9200102;)
"#;
    let mut h = Harness::new("", None);
    let endpoints = Endpoints {
        client: "198.18.0.1:40000".parse().unwrap(),
        server: "198.19.0.1:443".parse().unwrap(),
    };
    let engine = HttpInspector::new(Arc::new(InspectSettings::default()), Arc::new(super::tests::rules("")));
    h.engine = engine.with_signatures(signature_set(rules), endpoints, 1 << 20);
    h.engine.established(None);
    h.client(b"GET /special-path HTTP/1.1\r\nHost: a.example\r\n\r\n");
    h.server(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\npublic");
    assert_eq!(fired(&mut h), Vec::<u32>::new(), "a 200 with a public body");
    h.client(b"GET /special-path HTTP/1.1\r\nHost: a.example\r\n\r\n");
    h.server(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(fired(&mut h), vec![9200101]);
    h.client(b"GET /other HTTP/1.1\r\nHost: a.example\r\n\r\n");
    h.server(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nthe sec");
    h.server(b"ret!!");
    assert_eq!(fired(&mut h), vec![9200102], "across pieces, from the head's candidate");
}
