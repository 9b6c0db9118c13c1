use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::inspect::transaction::TransactionMarks;
use crate::test_dir::TempDir;
use crate::tls::record::NegotiatedFact;

/// Suricata's field names and types for the http and tls events, closed objects.
const SCHEMA: &str = include_str!("../../tests/eve_schema.json");

fn validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let schema: Value = serde_json::from_str(SCHEMA).expect("the schema is JSON");
        jsonschema::draft202012::meta::validate(&schema).expect("the schema is a valid 2020-12 schema");
        jsonschema::draft202012::new(&schema).expect("the schema compiles")
    })
}

fn schema_errors(event: &Value) -> Vec<String> {
    validator()
        .iter_errors(event)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[track_caller]
fn assert_valid(event: &Value) {
    let errors = schema_errors(event);
    assert!(errors.is_empty(), "{errors:#?}\n{event:#}");
}

#[track_caller]
fn assert_no_nulls(value: &Value) {
    match value {
        Value::Null => panic!("a null value"),
        Value::Array(items) => items.iter().for_each(assert_no_nulls),
        Value::Object(map) => {
            for (key, value) in map {
                assert!(!value.is_null(), "{key} is null");
                assert_no_nulls(value);
            }
        }
        _ => {}
    }
}

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys
}

fn to_value(event: &impl Serialize) -> Value {
    serde_json::to_value(event).unwrap()
}

/// 2023-11-14T22:13:20.123456789Z.
fn at() -> SystemTime {
    UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789)
}

fn flow() -> EveFlow {
    EveFlow {
        flow_id: 1_234_567_890_123,
        session_id: 42,
        client: "198.18.0.1:50000".parse().unwrap(),
        server: "198.18.0.2:443".parse().unwrap(),
    }
}

fn http11_get() -> Transaction {
    Transaction {
        version: Some(HttpVersion::Http11),
        stream_id: None,
        method: "GET".into(),
        scheme: None,
        host: Some("WWW.Example.com:8443".into()),
        path: "/search".into(),
        query: Some("q=loupe&lang=en".into()),
        user_agent: Some("curl/8.14.1".into()),
        referer: Some("https://www.example.com/".into()),
        request_content_type: Some("application/json".into()),
        response_content_type: Some("text/html; charset=utf-8".into()),
        status: Some(200),
        request_body_len: 12,
        response_body_len: 310,
        marks: TransactionMarks::default(),
    }
}

fn http2_post() -> Transaction {
    Transaction {
        version: Some(HttpVersion::Http2),
        stream_id: Some(5),
        method: "POST".into(),
        scheme: Some("https".into()),
        host: Some("api.example.test".into()),
        path: "/v1/items".into(),
        query: None,
        user_agent: Some("nghttp2/1.64.0".into()),
        referer: None,
        request_content_type: Some("application/json".into()),
        response_content_type: Some("application/json".into()),
        status: Some(201),
        request_body_len: 17,
        response_body_len: 2,
        marks: TransactionMarks::default(),
    }
}

fn facts() -> HttpLoupeFacts<'static> {
    HttpLoupeFacts {
        rule: "inspect",
        action: Action::Decrypt,
        url_rule: Some(UrlRuleVerdict {
            name: "audit-search",
            action: "alert",
        }),
        transaction: 3,
        blocked: false,
        request_start: Some(UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_001)),
        response_first_byte: Some(UNIX_EPOCH + Duration::from_micros(1_700_000_000_020_000)),
        end: Some(UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_000)),
    }
}

fn bare_facts() -> HttpLoupeFacts<'static> {
    HttpLoupeFacts {
        rule: "default",
        action: Action::Decrypt,
        url_rule: None,
        transaction: 0,
        blocked: false,
        request_start: None,
        response_first_byte: None,
        end: None,
    }
}

#[test]
fn an_http11_transaction_is_suricatas_http_event() {
    let tx = http11_get();
    let facts = facts();
    let event = http_event(at(), &flow(), &tx, &facts);
    let value = to_value(&event);
    assert_eq!(
        value,
        json!({
            "timestamp": "2023-11-14T22:13:20.123456+0000",
            "flow_id": 1_234_567_890_123_u64,
            "event_type": "http",
            "src_ip": "198.18.0.1",
            "src_port": 50000,
            "dest_ip": "198.18.0.2",
            "dest_port": 443,
            "proto": "TCP",
            "tx_id": 3,
            "app_proto": "http",
            "http": {
                "hostname": "www.example.com",
                "http_port": 8443,
                "url": "/search?q=loupe&lang=en",
                "http_user_agent": "curl/8.14.1",
                "http_content_type": "text/html",
                "http_refer": "https://www.example.com/",
                "http_method": "GET",
                "protocol": "HTTP/1.1",
                "status": 200,
                "length": 310
            },
            "loupe": {
                "session_id": 42,
                "rule": "inspect",
                "action": "decrypt",
                "url_rule": { "name": "audit-search", "action": "alert" },
                "transaction": 3,
                "blocked": false,
                "request_start": "2023-11-14T22:13:20.000001+0000",
                "response_first_byte": "2023-11-14T22:13:20.020000+0000",
                "end": "2023-11-14T22:13:20.123000+0000"
            }
        })
    );
    assert_valid(&value);
    // Suricata's order: the header first, timestamp leading.
    let line = serde_json::to_string(&event).unwrap();
    assert!(
        line.starts_with(r#"{"timestamp":"2023-11-14T22:13:20.123456+0000","flow_id":1234567890123,"event_type":"http","src_ip":"198.18.0.1","src_port":50000,"dest_ip":"198.18.0.2","dest_port":443,"proto":"TCP","tx_id":3,"app_proto":"http","http":{"hostname":"www.example.com","#),
        "{line}"
    );
}

#[test]
fn an_http2_transaction_is_an_http_event_with_app_proto_http2() {
    let tx = http2_post();
    let facts = bare_facts();
    let value = to_value(&http_event(at(), &flow(), &tx, &facts));
    assert_eq!(value["event_type"], "http");
    assert_eq!(value["app_proto"], "http2");
    assert_eq!(value["tx_id"], 0);
    assert_eq!(
        value["http"],
        json!({
            "hostname": "api.example.test",
            "url": "/v1/items",
            "http_user_agent": "nghttp2/1.64.0",
            "http_content_type": "application/json",
            "http_method": "POST",
            "protocol": "HTTP/2",
            "status": 201,
            "length": 2,
            "version": "2",
            "http2": { "stream_id": 5 }
        })
    );
    assert_valid(&value);
}

#[test]
fn absent_fields_are_left_out_not_null() {
    let tx = Transaction {
        version: Some(HttpVersion::Http11),
        method: "GET".into(),
        path: "/".into(),
        ..Transaction::default()
    };
    let facts = bare_facts();
    let value = to_value(&http_event(at(), &flow(), &tx, &facts));
    assert_no_nulls(&value);
    assert_eq!(
        keys(&value),
        [
            "app_proto",
            "dest_ip",
            "dest_port",
            "event_type",
            "flow_id",
            "http",
            "loupe",
            "proto",
            "src_ip",
            "src_port",
            "timestamp",
            "tx_id"
        ]
    );
    assert_eq!(
        value["http"],
        json!({ "url": "/", "http_method": "GET", "protocol": "HTTP/1.1", "length": 0 })
    );
    assert_eq!(
        value["loupe"],
        json!({ "session_id": 42, "rule": "default", "action": "decrypt", "transaction": 0, "blocked": false })
    );
    assert_valid(&value);

    // Nothing known at all (a request cut short before its head was read).
    let empty = Transaction::default();
    let value = to_value(&http_event(at(), &flow(), &empty, &facts));
    assert_no_nulls(&value);
    assert_eq!(value["http"], json!({ "length": 0 }));
    assert_eq!(value["app_proto"], "http");
    assert_valid(&value);
}

#[test]
fn a_blocked_request_says_so_under_loupe() {
    let mut tx = http11_get();
    tx.status = Some(403);
    tx.response_content_type = Some("text/html".into());
    tx.response_body_len = 0;
    let facts = HttpLoupeFacts {
        url_rule: Some(UrlRuleVerdict {
            name: "no-admin",
            action: "block",
        }),
        blocked: true,
        response_first_byte: None,
        ..facts()
    };
    let value = to_value(&http_event(at(), &flow(), &tx, &facts));
    assert_eq!(value["loupe"]["blocked"], true);
    assert_eq!(
        value["loupe"]["url_rule"],
        json!({ "name": "no-admin", "action": "block" })
    );
    assert!(value["loupe"].get("response_first_byte").is_none());
    assert_eq!(value["http"]["status"], 403);
    assert_valid(&value);
}

#[test]
fn in_iface_is_written_when_set() {
    let tx = http11_get();
    let facts = facts();
    let mut event = http_event(at(), &flow(), &tx, &facts);
    event.header.in_iface = Some("in0");
    let value = to_value(&event);
    assert_eq!(value["in_iface"], "in0");
    assert_valid(&value);
    let line = serde_json::to_string(&event).unwrap();
    assert!(
        line.contains(r#""flow_id":1234567890123,"in_iface":"in0","event_type":"http""#),
        "{line}"
    );
}

#[test]
fn ipv6_flows_print_compressed_addresses() {
    let flow = EveFlow {
        client: "[2001:db8::1]:40000".parse().unwrap(),
        server: "[2001:db8::2]:443".parse().unwrap(),
        ..flow()
    };
    let tx = http11_get();
    let facts = bare_facts();
    let value = to_value(&http_event(at(), &flow, &tx, &facts));
    assert_eq!(value["src_ip"], "2001:db8::1");
    assert_eq!(value["dest_ip"], "2001:db8::2");
    assert_valid(&value);
}

#[test]
fn the_host_splits_into_hostname_and_port_as_suricata_does() {
    let cases: &[(&str, Option<&str>, Option<u16>)] = &[
        ("example.com", Some("example.com"), None),
        ("Example.COM:8443", Some("example.com"), Some(8443)),
        ("example.com:443", Some("example.com"), Some(443)),
        ("[2001:DB8::1]:8443", Some("[2001:db8::1]"), Some(8443)),
        ("[::1]", Some("[::1]"), None),
        ("host:", Some("host"), None),
        ("host:99999", Some("host"), None),
        ("host:0", Some("host"), None),
        ("host:8a", Some("host"), None),
        ("198.18.0.2:8080", Some("198.18.0.2"), Some(8080)),
        ("", None, None),
    ];
    for &(host, name, port) in cases {
        let (got_name, got_port) = split_host(host);
        assert_eq!((got_name.as_deref(), got_port), (name, port), "{host:?}");
    }
    // Lowercase hosts are borrowed, not copied.
    assert!(matches!(split_host("example.com:1").0, Some(Cow::Borrowed(_))));
}

#[test]
fn the_content_type_loses_its_parameters() {
    assert_eq!(media_type("text/html; charset=utf-8"), "text/html");
    assert_eq!(media_type("application/json"), "application/json");
    assert_eq!(media_type("multipart/form-data;boundary=x"), "multipart/form-data");
}

#[test]
fn timestamps_are_suricatas_with_microseconds_and_offset() {
    let time = |nanos: u64| EveTime(UNIX_EPOCH + Duration::from_nanos(nanos)).to_string();
    assert_eq!(time(0), "1970-01-01T00:00:00.000000+0000");
    assert_eq!(time(1_700_000_000_123_456_789), "2023-11-14T22:13:20.123456+0000");
    assert_eq!(time(1_700_000_000_000_005_000), "2023-11-14T22:13:20.000005+0000");
    assert_eq!(time(951_782_400_999_999_999), "2000-02-29T00:00:00.999999+0000");
    assert_eq!(time(4_107_542_399_000_000_000), "2100-02-28T23:59:59.000000+0000");
    // A clock before 1970 prints the epoch.
    assert_eq!(
        EveTime(UNIX_EPOCH - Duration::from_millis(1500)).to_string(),
        "1970-01-01T00:00:00.000000+0000"
    );
    assert_eq!(
        serde_json::to_string(&EveTime(at())).unwrap(),
        "\"2023-11-14T22:13:20.123456+0000\""
    );
}

fn leaf_cert() -> CertFact {
    let der = include_bytes!("../tls/testdata/ocsp/leaf.der");
    let cert = boring::x509::X509::from_der(der).unwrap();
    crate::tls::session::cert_fact(&cert)
}

fn decrypted_record() -> DecryptionRecord {
    let mut record = DecryptionRecord::new(42, flow().client, flow().server, Action::Decrypt, Outcome::Decrypted);
    record.sni = Some("ocsp-leaf.example.test".to_string());
    record.rule = "inspect".to_string();
    record.server_leg = NegotiatedFact {
        version: Some("TLSv1.3".to_string()),
        cipher: Some("TLS_AES_128_GCM_SHA256".to_string()),
        group: Some("X25519".to_string()),
        alpn: Some("h2".to_string()),
        hello_retry: false,
    };
    record.client_leg.version = Some("TLSv1.2".to_string());
    record.server_cert = Some(leaf_cert());
    record
}

#[test]
fn the_certificate_fact_keeps_the_sha1_openssl_prints() {
    // `openssl x509 -inform der -in leaf.der -noout -fingerprint -sha1`.
    assert_eq!(leaf_cert().sha1, "ce5432ab2c5a36b2833962121a1469e9e508feeb");
}

#[test]
fn a_tls_session_is_suricatas_tls_event() {
    let record = decrypted_record();
    let event = tls_event(at(), &flow(), &record);
    let value = to_value(&event);
    assert_eq!(
        value,
        json!({
            "timestamp": "2023-11-14T22:13:20.123456+0000",
            "flow_id": 1_234_567_890_123_u64,
            "event_type": "tls",
            "src_ip": "198.18.0.1",
            "src_port": 50000,
            "dest_ip": "198.18.0.2",
            "dest_port": 443,
            "proto": "TCP",
            "app_proto": "tls",
            "tls": {
                "subject": "CN=ocsp-leaf.example.test",
                "issuerdn": "CN=Loupe OCSP Test CA, O=Loupe Test",
                "subjectaltname": ["ocsp-leaf.example.test"],
                "serial": "10:01",
                "fingerprint": "ce:54:32:ab:2c:5a:36:b2:83:39:62:12:1a:14:69:e9:e5:08:fe:eb",
                "sni": "ocsp-leaf.example.test",
                "version": "TLS 1.3",
                "notbefore": "2025-01-01T00:00:00",
                "notafter": "2035-12-31T23:59:59"
            },
            "loupe": {
                "session_id": 42,
                "rule": "inspect",
                "action": "decrypt",
                "outcome": "decrypted"
            }
        })
    );
    assert_valid(&value);
}

#[test]
fn a_tls_session_without_a_certificate_leaves_the_certificate_out() {
    let mut record = DecryptionRecord::new(9, flow().client, flow().server, Action::NoDecrypt, Outcome::Spliced);
    let value = to_value(&tls_event(at(), &flow(), &record));
    assert_no_nulls(&value);
    // Suricata writes the version even when it could not tell it.
    assert_eq!(value["tls"], json!({ "version": "UNDETERMINED" }));
    assert_eq!(value["loupe"]["outcome"], "spliced");
    assert_eq!(value["loupe"]["action"], "no-decrypt");
    assert!(value.get("tx_id").is_none());
    assert_valid(&value);

    // Only the client leg known: its version; a certificate with facts missing: those
    // fields left out.
    record.client_leg.version = Some("TLSv1.2".to_string());
    record.server_cert = Some(CertFact {
        subject: "CN=x".to_string(),
        issuer: "CN=x".to_string(),
        sans: Vec::new(),
        not_before: String::new(),
        not_after: "Jan  1 00:00:00 2030 GMT".to_string(),
        sha256: String::new(),
        sha1: String::new(),
        serial: String::new(),
    });
    let value = to_value(&tls_event(at(), &flow(), &record));
    assert_eq!(
        value["tls"],
        json!({ "subject": "CN=x", "issuerdn": "CN=x", "version": "TLS 1.2" })
    );
    assert_valid(&value);
}

#[test]
fn tls_versions_read_as_suricata_writes_them() {
    assert_eq!(suricata_tls_version(Some("TLSv1.3")), "TLS 1.3");
    assert_eq!(suricata_tls_version(Some("TLSv1.2")), "TLS 1.2");
    assert_eq!(suricata_tls_version(Some("TLSv1.1")), "TLS 1.1");
    assert_eq!(suricata_tls_version(Some("TLSv1")), "TLSv1");
    assert_eq!(suricata_tls_version(Some("SSLv3")), "SSLv3");
    assert_eq!(suricata_tls_version(Some("unknown")), "UNDETERMINED");
    assert_eq!(suricata_tls_version(None), "UNDETERMINED");
}

#[test]
fn serials_are_the_der_bytes_in_uppercase_hex() {
    let cases = [
        ("1001", Some("10:01")),
        ("1a2b", Some("1A:2B")),
        ("abc", Some("0A:BC")),
        ("80", Some("00:80")),
        (
            "0c0099b7d754c9f67726317ebaea7c1c",
            Some("0C:00:99:B7:D7:54:C9:F6:77:26:31:7E:BA:EA:7C:1C"),
        ),
        ("0", Some("00")),
        ("00", Some("00")),
        ("0001", Some("01")),
        ("-1", Some("FF")),
        ("-80", Some("80")),
        ("-81", Some("FF:7F")),
        ("-100", Some("FF:00")),
        ("-0", Some("00")),
        ("", None),
        ("-", None),
        ("xyz", None),
    ];
    for (hex, expected) in cases {
        assert_eq!(suricata_serial(hex).as_deref(), expected, "{hex:?}");
    }
}

#[test]
fn the_schema_refuses_misspelt_names_nulls_and_bad_formats() {
    let tx = http11_get();
    let facts = facts();
    let http = to_value(&http_event(at(), &flow(), &tx, &facts));
    let record = decrypted_record();
    let tls = to_value(&tls_event(at(), &flow(), &record));
    assert_valid(&http);
    assert_valid(&tls);

    let broken = |base: &Value, change: &dyn Fn(&mut Value)| {
        let mut value = base.clone();
        change(&mut value);
        value
    };
    let refused = [
        broken(&http, &|v| v["http"]["http_referer"] = json!("x")),
        broken(&http, &|v| v["http"]["hostname"] = Value::Null),
        broken(&http, &|v| v["http"]["status"] = json!("200")),
        broken(&http, &|v| v["loupe"]["blocked"] = json!("no")),
        broken(&http, &|v| v["loupe"]["url_rules"] = json!({})),
        broken(&http, &|v| v["timestamp"] = json!("2023-11-14T22:13:20.123Z")),
        broken(&http, &|v| v["proto"] = json!("tcp")),
        broken(&http, &|v| v["srcip"] = json!("198.18.0.1")),
        broken(&http, &|v| {
            v.as_object_mut().unwrap().remove("tx_id");
        }),
        broken(&tls, &|v| v["tls"]["fingerprints"] = json!("x")),
        broken(&tls, &|v| {
            v["tls"]["fingerprint"] = json!("CE:54:32:AB:2C:5A:36:B2:83:39:62:12:1A:14:69:E9:E5:08:FE:EB")
        }),
        broken(&tls, &|v| v["tls"]["notafter"] = json!("2035-12-31T23:59:59Z")),
        broken(&tls, &|v| v["tls"]["version"] = json!("TLSv1.3")),
        broken(&tls, &|v| v["app_proto"] = json!("http")),
        broken(&tls, &|v| v["loupe"]["transaction"] = json!(0)),
    ];
    for value in &refused {
        assert!(!schema_errors(value).is_empty(), "accepted: {value:#}");
    }
}

fn read_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'));
    text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

#[test]
fn the_log_appends_one_parseable_line_per_event() {
    let dir = TempDir::new("log");
    let log_dir = dir.0.join("nested/log");
    let tx = http11_get();
    let tx2 = http2_post();
    let facts = facts();
    let record = decrypted_record();

    let log = EveLog::open(&log_dir).unwrap();
    assert_eq!(log.path(), log_dir.join("eve.json"));
    log.write(&tls_event(at(), &flow(), &record)).unwrap();
    log.write(&http_event(at(), &flow(), &tx, &facts)).unwrap();
    drop(log);
    // Opening again appends rather than truncating.
    EveLog::open(&log_dir)
        .unwrap()
        .write(&http_event(at(), &flow(), &tx2, &facts))
        .unwrap();

    let events = read_lines(&log_dir.join("eve.json"));
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e["event_type"].as_str().unwrap(), e["app_proto"].as_str().unwrap()))
        .collect();
    assert_eq!(kinds, [("tls", "tls"), ("http", "http"), ("http", "http2")]);
    for event in &events {
        assert_valid(event);
        assert_eq!(event["loupe"]["session_id"], 42);
    }
    assert_eq!(events[1], to_value(&http_event(at(), &flow(), &tx, &facts)));
}

#[test]
fn reopening_follows_a_renaming_rotation() {
    let dir = TempDir::new("rotate");
    let tx = http11_get();
    let facts = facts();
    let event = http_event(at(), &flow(), &tx, &facts);

    // Shared as the workers share it: reopening needs no `&mut`.
    let log = Arc::new(EveLog::open(&dir.0).unwrap());
    log.write(&event).unwrap();
    assert!(!log.renamed_away());

    let rotated = dir.0.join("eve.json.1");
    std::fs::rename(log.path(), &rotated).unwrap();
    // Until it reopens, the log goes on appending to the renamed file.
    log.write(&event).unwrap();
    assert!(log.renamed_away());
    log.reopen().unwrap();
    assert!(!log.renamed_away());
    log.write(&event).unwrap();
    assert_eq!(read_lines(&rotated).len(), 2);
    assert_eq!(read_lines(log.path()).len(), 1);

    // An explicit reopen of the same path keeps appending to it.
    log.reopen().unwrap();
    log.write(&event).unwrap();
    assert_eq!(read_lines(log.path()).len(), 2);
}

#[test]
fn reopening_while_others_write_loses_and_tears_no_line() {
    let dir = TempDir::new("reopen-race");
    let log = Arc::new(EveLog::open(&dir.0).unwrap());
    let rotated = dir.0.join("eve.json.1");
    let writers: Vec<_> = (0..2u64)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                let tx = http11_get();
                for i in 0..200 {
                    let facts = HttpLoupeFacts {
                        transaction: t * 1000 + i,
                        ..facts()
                    };
                    log.write(&http_event(at(), &flow(), &tx, &facts)).unwrap();
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1));
    std::fs::rename(log.path(), &rotated).unwrap();
    log.reopen().unwrap();
    for writer in writers {
        writer.join().unwrap();
    }
    let mut ids: Vec<u64> = read_lines(&rotated)
        .iter()
        .chain(read_lines(log.path()).iter())
        .map(|e| e["tx_id"].as_u64().unwrap())
        .collect();
    ids.sort_unstable();
    let mut expected: Vec<u64> = (0..2u64).flat_map(|t| (0..200).map(move |i| t * 1000 + i)).collect();
    expected.sort_unstable();
    assert_eq!(ids, expected);
}

#[test]
fn concurrent_writers_never_interleave_lines() {
    let dir = TempDir::new("concurrent");
    let log = Arc::new(EveLog::open(&dir.0).unwrap());
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            // Half share one handle, half open their own: both are single appends.
            let log = if t % 2 == 0 {
                log.clone()
            } else {
                Arc::new(EveLog::open(&dir.0).unwrap())
            };
            std::thread::spawn(move || {
                let tx = http11_get();
                for i in 0..50 {
                    let facts = HttpLoupeFacts {
                        transaction: t * 1000 + i,
                        ..facts()
                    };
                    log.write(&http_event(at(), &flow(), &tx, &facts)).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let mut ids: Vec<u64> = read_lines(log.path())
        .iter()
        .map(|e| e["tx_id"].as_u64().unwrap())
        .collect();
    ids.sort_unstable();
    let mut expected: Vec<u64> = (0..4u64).flat_map(|t| (0..50).map(move |i| t * 1000 + i)).collect();
    expected.sort_unstable();
    assert_eq!(ids, expected);
}

#[test]
fn errors_name_the_path() {
    let dir = TempDir::new("err");
    std::fs::create_dir_all(&dir.0).unwrap();
    // A file where the directory should be.
    let blocker = dir.0.join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let error = EveLog::open(&blocker).unwrap_err().to_string();
    assert!(error.starts_with("EVE log "), "{error}");
    assert!(error.contains("not-a-dir"), "{error}");
}

// ---- the hand-written http line against serde_json ----------------------------------

#[track_caller]
fn assert_line_matches_serde(event: &HttpEvent<'_>) {
    let mut expected = serde_json::to_vec(event).unwrap();
    expected.push(b'\n');
    let mut line = b"earlier lines\n".to_vec();
    event.write_line(&mut line);
    assert_eq!(
        String::from_utf8_lossy(&line["earlier lines\n".len()..]),
        String::from_utf8_lossy(&expected)
    );
}

#[test]
fn the_written_http_line_is_what_serde_json_writes() {
    let ipv6 = EveFlow {
        client: "[2001:db8::1]:40000".parse().unwrap(),
        server: "[::ffff:198.18.0.2]:443".parse().unwrap(),
        ..flow()
    };
    let mut blocked = facts();
    blocked.blocked = true;
    blocked.response_first_byte = None;
    // Timestamps in other seconds than the event's (the writer reuses a second's text
    // within an event and from one event to the next on a thread).
    let mut spread = facts();
    spread.request_start = Some(UNIX_EPOCH + Duration::from_micros(1_699_999_999_999_999));
    spread.end = Some(UNIX_EPOCH + Duration::from_micros(1_700_086_400_000_007));
    for tx in [http11_get(), http2_post(), Transaction::default()] {
        for facts in [facts(), bare_facts(), blocked.clone(), spread.clone()] {
            for flow in [flow(), ipv6] {
                let mut event = http_event(at(), &flow, &tx, &facts);
                assert_line_matches_serde(&event);
                event.header.in_iface = Some("in\"0");
                assert_line_matches_serde(&event);
            }
        }
    }
}

#[test]
fn the_written_http_line_escapes_as_serde_json_does() {
    // Every control character, quotes, backslashes, DEL, and multi-byte UTF-8, alone and
    // amid plain runs, in every string field.
    let mut awkward: String = (0u8..0x20).map(char::from).collect();
    awkward.push_str("\"\\\u{7f}é✓𝄞 plain\\\"end");
    let mut rng = crate::test_rng::XorShift(0x9e37_79b9_7f4a_7c15u64);
    let mut next = move || rng.next();
    // Plain runs of several lengths put escapes at every offset of the writer's blocks.
    let pieces: Vec<&str> = vec![
        "a",
        "/",
        "?",
        "\"",
        "\\",
        "\n",
        "\u{1}",
        "\u{1f}",
        "é",
        "𝄞",
        "\u{7f}",
        " ",
        ":",
        ";",
        "0123456789abcde",
        "0123456789abcdefghi",
        "plain-run",
    ];
    let mut random = || -> String {
        let len = next() % 24;
        (0..len)
            .map(|_| pieces[(next() % pieces.len() as u64) as usize])
            .collect()
    };
    let mut cases = vec![awkward.clone()];
    cases.extend((0..600).map(|_| random()));
    for text in cases {
        let tx = Transaction {
            method: text.as_str().into(),
            host: Some(format!("Host{text}:80").into()),
            path: text.as_str().into(),
            query: Some(text.as_str().into()),
            user_agent: Some(text.as_str().into()),
            referer: Some(text.as_str().into()),
            response_content_type: Some(format!("{text};x").into()),
            ..http11_get()
        };
        let facts = HttpLoupeFacts {
            rule: &text,
            url_rule: Some(UrlRuleVerdict {
                name: &text,
                action: "block",
            }),
            ..facts()
        };
        assert_line_matches_serde(&http_event(at(), &flow(), &tx, &facts));
    }
}

fn parsed_rule(text: &str) -> crate::inspect::signatures::Rule {
    let vars = crate::inspect::signatures::rule_vars(&Default::default());
    crate::inspect::signatures::parse_rule(text, &vars).expect("the rule parses")
}

#[test]
fn a_signature_is_suricatas_alert_event_with_the_transactions_http() {
    let rule = parsed_rule(
        r#"alert http any any -> any any (msg:"ET MALWARE test"; http.uri; content:"/a"; classtype:trojan-activity; metadata:affected_product Windows, created_at 2024_01_01; sid:2000001; rev:3;)"#,
    );
    let tx = http11_get();
    let value = to_value(&alert_event(
        at(),
        &flow(),
        AlertSubject::Transaction { index: 7, tx: &tx },
        &rule,
    ));
    assert_valid(&value);
    assert_no_nulls(&value);
    assert_eq!(value["event_type"], "alert");
    assert_eq!(value["tx_id"], 7);
    assert_eq!(value["app_proto"], "http");
    assert_eq!(
        value["alert"],
        json!({
            "action": "allowed",
            "gid": 1,
            "signature_id": 2000001,
            "rev": 3,
            "signature": "ET MALWARE test",
            "category": "A Network Trojan was detected",
            "severity": 1,
            "metadata": { "affected_product": ["Windows"], "created_at": ["2024_01_01"] },
        })
    );
    assert_eq!(value["http"]["hostname"], "www.example.com");
    assert_eq!(
        value["loupe"],
        json!({ "session_id": 42, "transaction": 7, "rule_action": "alert" })
    );
}

#[test]
fn a_drop_alert_is_blocked_and_a_rule_priority_is_the_severity() {
    let rule = parsed_rule(r#"drop http any any -> any any (msg:"x"; content:"y"; priority:2; sid:5;)"#);
    let tx = http2_post();
    let value = to_value(&alert_event(
        at(),
        &flow(),
        AlertSubject::Transaction { index: 0, tx: &tx },
        &rule,
    ));
    assert_valid(&value);
    assert_eq!(value["alert"]["action"], "blocked");
    assert_eq!(value["alert"]["severity"], 2);
    assert_eq!(value["alert"]["category"], "");
    assert_eq!(value["app_proto"], "http2");
    assert!(value["alert"].get("metadata").is_none());
}

#[test]
fn a_tls_rule_alerts_on_the_handshake_with_a_tls_object() {
    let rule = parsed_rule(r#"alert tls any any -> any any (msg:"sni"; tls.sni; content:"bad.example"; sid:6;)"#);
    let subject = AlertSubject::Handshake {
        sni: Some("bad.example"),
        version: Some("TLSv1.3"),
    };
    let value = to_value(&alert_event(at(), &flow(), subject, &rule));
    assert_valid(&value);
    assert_eq!(value["app_proto"], "tls");
    assert_eq!(value["tls"], json!({ "sni": "bad.example", "version": "TLS 1.3" }));
    assert!(value.get("http").is_none() && value.get("tx_id").is_none(), "{value}");
    assert_eq!(value["loupe"], json!({ "session_id": 42, "rule_action": "alert" }));
}

#[test]
fn the_schema_refuses_an_alert_object_on_an_http_event() {
    let mut value = to_value(&http_event(at(), &flow(), &http11_get(), &facts()));
    value["alert"] = json!({ "action": "allowed", "gid": 1, "signature_id": 1, "rev": 0, "signature": "", "category": "", "severity": 3 });
    assert!(!schema_errors(&value).is_empty());
}
