use std::collections::HashMap;
use std::io::Cursor;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::detect::{rule_matches, Buffers};
use super::load::{load_reader, load_rule_files, LoadedRules};
use super::network::{AddressSet, PortSet};
use super::rule::{Direction, Flowbit, Protocol, SizeCheck, ThresholdKind, Track};
use super::*;

fn vars() -> HashMap<String, String> {
    HashMap::from([
        ("HOME_NET".to_string(), "[198.18.0.0/24]".to_string()),
        ("EXTERNAL_NET".to_string(), "!$HOME_NET".to_string()),
        ("HTTP_PORTS".to_string(), "[80,443,8000:8080]".to_string()),
    ])
}

fn rule(text: &str) -> Rule {
    parse_rule(text, &vars()).unwrap_or_else(|e| panic!("{text}\n  does not parse: {e}"))
}

fn error(text: &str) -> RuleError {
    match parse_rule(text, &vars()) {
        Ok(_) => panic!("{text}\n  parsed, expected an error"),
        Err(e) => e,
    }
}

/// A transaction's buffers, for matching.
#[derive(Default)]
struct Fields(HashMap<Buffer, Vec<u8>>);

impl Fields {
    fn with(mut self, buffer: Buffer, value: &[u8]) -> Fields {
        self.0.insert(buffer, value.to_vec());
        self
    }
}

impl Buffers for Fields {
    fn get(&self, buffer: Buffer) -> Option<&[u8]> {
        self.0.get(&buffer).map(Vec::as_slice)
    }
}

fn uri(value: &str) -> Fields {
    Fields::default().with(Buffer::HttpUri, value.as_bytes())
}

/// Whether a rule whose only buffer is http.uri matches `value`.
fn uri_rule_matches(options: &str, value: &str) -> bool {
    let r = rule(&format!(
        "alert http any any -> any any (msg:\"t\"; http.uri; {options} sid:1;)"
    ));
    rule_matches(&r, &uri(value))
}

#[test]
fn an_et_style_rule_parses_into_its_header_meta_and_detections() {
    let r = rule(concat!(
        r#"alert http $HOME_NET any -> $EXTERNAL_NET $HTTP_PORTS (msg:"ET MALWARE Fake Updater CnC Checkin"; "#,
        r#"flow:established,to_server; http.method; content:"POST"; http.uri; content:"/gate.php"; startswith; "#,
        r#"fast_pattern; content:"id="; distance:0; http.user_agent; content:"Mozilla/4.0 (compatible|3b| MSIE 6.0)"; "#,
        r#"pcre:"/^[a-f0-9]{32}$/R"; reference:url,example.org/analysis; classtype:trojan-activity; "#,
        r#"sid:2030001; rev:3; metadata:affected_product Windows, created_at 2026_12_01;)"#
    ));
    assert_eq!(r.action, Action::Alert);
    assert_eq!(r.protocol, Protocol::Http);
    assert_eq!(r.meta.msg, "ET MALWARE Fake Updater CnC Checkin");
    assert_eq!((r.meta.gid, r.meta.sid, r.meta.rev), (1, 2030001, 3));
    assert_eq!(r.meta.classtype.as_deref(), Some("trojan-activity"));
    assert_eq!(r.meta.references, ["url,example.org/analysis"]);
    assert_eq!(r.meta.metadata, ["affected_product Windows", "created_at 2026_12_01"]);
    assert!(r.flow.established);
    assert_eq!(r.flow.direction, Some(Direction::ToServer));
    let buffers: Vec<Buffer> = r.detections.iter().map(|d| d.buffer).collect();
    assert_eq!(
        buffers,
        [
            Buffer::HttpMethod,
            Buffer::HttpUri,
            Buffer::HttpUri,
            Buffer::HttpUserAgent,
            Buffer::HttpUserAgent
        ]
    );
    let Detection::Content(ua) = &r.detections[3].detection else {
        panic!("the fourth detection is the user agent's content");
    };
    assert_eq!(ua.pattern, b"Mozilla/4.0 (compatible; MSIE 6.0)");
    let (buffer, fast) = r.fast_pattern().expect("a fast pattern");
    assert_eq!((buffer, fast.pattern.as_slice()), (Buffer::HttpUri, &b"/gate.php"[..]));
    // Header: from the home net to anything else, on the HTTP ports.
    let home: IpAddr = "198.18.0.7".parse().unwrap();
    let outside: IpAddr = "198.19.0.7".parse().unwrap();
    assert!(r.source.contains(home) && !r.source.contains(outside));
    assert!(r.destination.contains(outside) && !r.destination.contains(home));
    assert!(r.destination_ports.contains(443) && r.destination_ports.contains(8080));
    assert!(!r.destination_ports.contains(8081));
}

#[test]
fn escapes_and_hex_bytes_make_the_content_bytes() {
    let r =
        rule(r#"alert tcp any any -> any any (msg:"a \"quoted\" msg\; yes"; content:"a\;b|3B 0d0A|c\"d\\e"; sid:7;)"#);
    assert_eq!(r.meta.msg, "a \"quoted\" msg; yes");
    let Detection::Content(c) = &r.detections[0].detection else {
        panic!("a content");
    };
    assert_eq!(c.pattern, b"a;b;\r\nc\"d\\e");
    assert_eq!(r.protocol, Protocol::Tcp);
    assert_eq!(r.detections[0].buffer, Buffer::Payload);
}

#[test]
fn legacy_modifiers_move_the_content_into_their_buffer() {
    let r = rule(concat!(
        r#"alert http any any -> any any (msg:"legacy"; content:"GET"; http_method; "#,
        r#"content:"/cmd.exe"; http_uri; nocase; content:"evil"; http_header; uricontent:"dir"; sid:9;)"#
    ));
    let buffers: Vec<Buffer> = r.detections.iter().map(|d| d.buffer).collect();
    assert_eq!(
        buffers,
        [Buffer::HttpMethod, Buffer::HttpUri, Buffer::HttpHeader, Buffer::HttpUri]
    );
    let fields = Fields::default()
        .with(Buffer::HttpMethod, b"GET")
        .with(Buffer::HttpUri, b"/scripts/CMD.EXE?/c+dir")
        .with(Buffer::HttpHeader, b"X-Evil: evil\r\n");
    assert!(rule_matches(&r, &fields));
    let post = Fields::default()
        .with(Buffer::HttpMethod, b"POST")
        .with(Buffer::HttpUri, b"/scripts/CMD.EXE?/c+dir")
        .with(Buffer::HttpHeader, b"X-Evil: evil\r\n");
    assert!(!rule_matches(&r, &post));
}

#[test]
fn a_tcp_rule_with_http_buffers_is_an_http_rule_and_pcre_flags_pick_buffers() {
    let r = rule(r#"alert tcp any any -> any any (msg:"x"; pcre:"/\/admin\/[a-z]+\.php/Ui"; sid:3;)"#);
    assert_eq!(r.protocol, Protocol::Http);
    assert_eq!(r.detections[0].buffer, Buffer::HttpUri);
    assert!(rule_matches(&r, &uri("/ADMIN/login.PHP")));
    assert!(!rule_matches(&r, &uri("/admin/1.php")));
}

#[test]
fn offset_and_depth_bound_where_a_content_may_match() {
    assert!(uri_rule_matches(r#"content:"abc"; offset:2; depth:3;"#, "xxabcyy"));
    assert!(!uri_rule_matches(r#"content:"abc"; offset:3;"#, "xxabcyy"));
    assert!(!uri_rule_matches(r#"content:"abc"; depth:4;"#, "xxabcyy"));
    assert!(uri_rule_matches(r#"content:"abc"; depth:5;"#, "xxabcyy"));
}

#[test]
fn startswith_and_endswith_anchor_to_the_buffer() {
    assert!(uri_rule_matches(r#"content:"/api"; startswith;"#, "/api/v1"));
    assert!(!uri_rule_matches(r#"content:"/api"; startswith;"#, "/x/api/v1"));
    assert!(uri_rule_matches(r#"content:".exe"; endswith;"#, "/dl/setup.exe"));
    assert!(!uri_rule_matches(r#"content:".exe"; endswith;"#, "/dl/setup.exe?x=1"));
    // The last occurrence is the one that counts, not the first.
    assert!(uri_rule_matches(r#"content:"ab"; endswith;"#, "abxab"));
    assert!(uri_rule_matches(
        r#"content:"/a"; startswith; content:"z"; endswith;"#,
        "/a-z"
    ));
    assert!(!uri_rule_matches(
        r#"content:"/a"; startswith; content:"z"; endswith;"#,
        "/a-zz-"
    ));
}

#[test]
fn distance_and_within_place_a_match_after_the_previous_one() {
    let options = r#"content:"id="; content:"&cmd="; distance:2; within:10;"#;
    assert!(uri_rule_matches(options, "/g?id=12&cmd=run"));
    // Too close: distance 2 needs at least two bytes between them.
    assert!(!uri_rule_matches(options, "/g?id=1&cmd=run"));
    // Too far: the second must end within 10 bytes of where distance put it.
    assert!(uri_rule_matches(options, "/g?id=1234567&cmd=run"));
    assert!(!uri_rule_matches(options, "/g?id=123456789&cmd=run"));
    // Negative distance reaches back.
    assert!(uri_rule_matches(
        r#"content:"def"; content:"cd"; distance:-4; within:2;"#,
        "abcdefg"
    ));
}

#[test]
fn a_relative_match_that_fails_retries_the_previous_match_further_on() {
    // The first "key=" has no digits right after it; the second has: Suricata's
    // backtracking finds it, a first-occurrence-only matcher would not.
    let options = r#"content:"key="; content:"42"; distance:0; within:2;"#;
    assert!(uri_rule_matches(options, "/a?key=x&key=42"));
    assert!(!uri_rule_matches(options, "/a?key=x&key=x42"));
    // The same for pcre /R after a content.
    let options = r#"content:"v="; pcre:"/^\d{3}&/R";"#;
    assert!(uri_rule_matches(options, "/p?v=ab&v=123&"));
    assert!(!uri_rule_matches(options, "/p?v=ab&v=12&"));
}

#[test]
fn negated_contents_hold_where_the_pattern_is_absent() {
    assert!(uri_rule_matches(r#"content:"/dl/"; content:!"safe";"#, "/dl/evil.exe"));
    assert!(!uri_rule_matches(r#"content:"/dl/"; content:!"safe";"#, "/dl/safe.exe"));
    // Relative negation looks only in its window.
    let options = r#"content:"/dl/"; content:!".txt"; distance:0; within:8;"#;
    assert!(uri_rule_matches(options, "/dl/abcdefgh.txt"));
    assert!(!uri_rule_matches(options, "/dl/ab.txt"));
}

#[test]
fn nocase_matches_any_ascii_case() {
    assert!(uri_rule_matches(r#"content:"Select"; nocase;"#, "/q?x=sELECT+1"));
    assert!(!uri_rule_matches(r#"content:"Select";"#, "/q?x=sELECT+1"));
}

#[test]
fn bsize_urilen_and_isdataat_check_sizes() {
    assert!(uri_rule_matches("bsize:5;", "/abcd"));
    assert!(!uri_rule_matches("bsize:>5;", "/abcd"));
    assert!(uri_rule_matches("bsize:3<>6;", "/abcd"));
    assert!(!uri_rule_matches("bsize:5<>9;", "/abcd"));
    let r = rule(r#"alert http any any -> any any (msg:"u"; urilen:<4; sid:5;)"#);
    assert!(rule_matches(&r, &uri("/ab")));
    assert!(!rule_matches(&r, &uri("/abc")));
    assert!(uri_rule_matches(r#"content:"/a"; isdataat:2,relative;"#, "/abcd"));
    assert!(!uri_rule_matches(r#"content:"/a"; isdataat:3,relative;"#, "/abcd"));
    assert!(uri_rule_matches(r#"content:"/a"; isdataat:!3,relative;"#, "/abcd"));
    let Detection::Size(check) =
        &rule(r#"alert http any any -> any any (msg:"u"; urilen:>=10,raw; sid:5;)"#).detections[0].detection
    else {
        panic!("a size check");
    };
    assert_eq!(*check, SizeCheck::GreaterOrEqual(10));
}

#[test]
fn a_missing_buffer_means_no_match() {
    let r = rule(r#"alert http any any -> any any (msg:"ua"; http.user_agent; content:"curl"; sid:4;)"#);
    assert!(!rule_matches(&r, &uri("/curl")));
}

#[test]
fn pcre_runs_with_pcre2_semantics_lookarounds_and_backreferences_included() {
    // Both are PCRE features the regex crate lacks; Suricata's ET rules use them.
    assert!(uri_rule_matches(r#"pcre:"/(a+)b\1/";"#, "/aabaa"));
    assert!(!uri_rule_matches(r#"pcre:"/(a+)b\1/";"#, "/ab"));
    assert!(uri_rule_matches(r#"pcre:"/\/x(?!\.js)/";"#, "/x.php"));
    assert!(!uri_rule_matches(r#"pcre:"/\/x(?!\.js)/";"#, "/x.js"));
    assert!(uri_rule_matches(r#"pcre:!"/\.js$/";"#, "/x.php"));
    // /A anchors at the start, /G makes quantifiers lazy.
    assert!(!uri_rule_matches(r#"pcre:"/abc/A";"#, "/abc"));
    assert!(uri_rule_matches(r#"pcre:"/\/abc/A";"#, "/abc"));
}

#[test]
fn flow_flowbits_threshold_and_detection_filter_are_kept() {
    let r = rule(concat!(
        r#"alert http any any -> any any (msg:"f"; flow:to_client,established; "#,
        r#"flowbits:isset,ET.a|ET.b; flowbits:set,ET.c; flowbits:noalert; "#,
        r#"threshold: type limit, track by_src, count 1, seconds 60; "#,
        r#"detection_filter: track by_dst, count 5, seconds 10; http.stat_code; content:"200"; sid:6;)"#
    ));
    assert_eq!(r.flow.direction, Some(Direction::ToClient));
    assert_eq!(
        r.flowbits,
        [
            Flowbit::IsSet(vec!["ET.a".to_string(), "ET.b".to_string()]),
            Flowbit::Set("ET.c".to_string()),
            Flowbit::NoAlert
        ]
    );
    let threshold = r.threshold.expect("a threshold");
    assert_eq!(threshold.kind, Some(ThresholdKind::Limit));
    assert_eq!(
        (threshold.track, threshold.count, threshold.seconds),
        (Track::BySource, 1, 60)
    );
    let filter = r.detection_filter.expect("a detection filter");
    assert_eq!(
        (filter.kind, filter.track, filter.count),
        (None, Track::ByDestination, 5)
    );
    assert_eq!(r.direction(), Some(Direction::ToClient));
}

#[test]
fn errors_name_the_keyword_and_the_sid() {
    let e = error(r#"alert http any any -> any any (msg:"x"; content:"a"; bogus_kw:1; sid:77;)"#);
    assert_eq!(
        (e.keyword.as_deref(), e.sid, e.unsupported),
        (Some("bogus_kw"), Some(77), false)
    );
    assert_eq!(e.to_string(), "sid 77: bogus_kw: unknown keyword");

    let e = error(r#"alert http any any -> any any (msg:"x"; content:"a"; byte_test:4,>,1,0; sid:78;)"#);
    assert!(e.unsupported, "{e}");
    assert_eq!((e.keyword.as_deref(), e.sid), (Some("byte_test"), Some(78)));

    let e = error(r#"alert http any any -> any any (msg:"x"; pcre:"/(unclosed/"; sid:79;)"#);
    assert_eq!(e.keyword.as_deref(), Some("pcre"));
    assert!(e.reason.contains("does not compile"), "{e}");

    for (text, keyword, says) in [
        (
            r#"alert http any any -> any any (msg:"x"; content:"a";)"#,
            "sid",
            "needs a sid",
        ),
        (
            r#"alert http any any -> any any (msg:"x"; content:"|4|"; sid:1;)"#,
            "content",
            "odd number",
        ),
        (
            r#"alert http any any -> any any (msg:"x"; content:"|zz|"; sid:1;)"#,
            "content",
            "not a hex byte",
        ),
        (
            r#"alert http any any -> any any (msg:"x"; content:"abc"; depth:2; sid:1;)"#,
            "depth",
            "shorter",
        ),
        (
            r#"alert http any any -> any any (msg:"x"; nocase; sid:1;)"#,
            "nocase",
            "no content",
        ),
        (
            r#"alert http any any -> any any (msg:"x"; http.host; content:"Evil.com"; sid:1;)"#,
            "http.host",
            "lowercase",
        ),
        (
            r#"alert http any any -> any any (msg:"x"; content:"a"; flow:to_server,to_client; sid:1;)"#,
            "flow",
            "both directions",
        ),
        (
            r#"alert http any any -> any any (msg:"x"; threshold: type limit, count 1, seconds 5; sid:1;)"#,
            "threshold",
            "track",
        ),
        (
            r#"alert http any any -> any any (msg:"x"; content:"a\q"; sid:1;)"#,
            "content",
            "not an escape",
        ),
        (
            r#"alert http any any -> any any (msg:"x"; dotprefix; content:"a"; sid:1;)"#,
            "dotprefix",
            "no",
        ),
    ] {
        let e = error(text);
        assert_eq!(e.keyword.as_deref(), Some(keyword), "{text}: {e}");
        assert!(e.to_string().contains(says), "{text}: {e}");
    }
}

#[test]
fn header_errors_say_what_was_wrong() {
    for (text, says) in [
        (r#"alert http any any (msg:"x"; sid:1;)"#, "got 4 fields"),
        (
            r#"alarm http any any -> any any (msg:"x"; sid:1;)"#,
            "unknown action 'alarm'",
        ),
        (r#"alert http any any => any any (msg:"x"; sid:1;)"#, "not a direction"),
        (
            r#"alert http $NOPE any -> any any (msg:"x"; sid:1;)"#,
            "$NOPE is not defined",
        ),
        (
            r#"alert http 198.18.0.0/33 any -> any any (msg:"x"; sid:1;)"#,
            "prefix length",
        ),
        (r#"alert http any 70000 -> any any (msg:"x"; sid:1;)"#, "not a port"),
        (
            r#"alert http any any -> any any (msg:"x"; sid:1)"#,
            "does not end with ';'",
        ),
        (r#"alert http any any -> any any msg:"x"; sid:1;"#, "no '('"),
    ] {
        let e = error(text);
        assert!(e.to_string().contains(says), "{text}: {e}");
    }
    assert!(error(r#"alert udp any any -> any any (msg:"x"; sid:1;)"#).unsupported);
    assert!(error(r#"reject http any any -> any any (msg:"x"; sid:1;)"#).unsupported);
}

#[test]
fn address_and_port_sets_nest_negate_and_resolve_variables() {
    let vars = HashMap::from([
        ("LAN".to_string(), "[198.18.0.0/24, !198.18.0.9]".to_string()),
        ("LOOP".to_string(), "[$LOOP]".to_string()),
    ]);
    let set = AddressSet::parse("[$LAN, 198.19.1.1, 2001:db8::/32]", &vars).unwrap();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(set.contains(ip("198.18.0.1")));
    assert!(!set.contains(ip("198.18.0.9")));
    assert!(set.contains(ip("198.19.1.1")));
    assert!(set.contains(ip("2001:db8::1")));
    assert!(!set.contains(ip("198.18.1.1")));
    let not_lan = AddressSet::parse("!$LAN", &vars).unwrap();
    assert!(not_lan.contains(ip("198.18.1.1")) && !not_lan.contains(ip("198.18.0.1")));
    let e = AddressSet::parse("$LOOP", &vars).unwrap_err();
    assert!(e.contains("nest deeper"), "{e}");
    assert!(AddressSet::parse("[198.18.0.1", &vars)
        .unwrap_err()
        .contains("must end with ']'"));

    let ports = PortSet::parse("[1024:, !8080, 80]", &vars).unwrap();
    assert!(ports.contains(80) && ports.contains(1024) && ports.contains(65535));
    assert!(!ports.contains(8080) && !ports.contains(443));
    assert!(PortSet::parse(":1023", &vars).unwrap().contains(0));
    assert!(PortSet::parse("900:800", &vars).unwrap_err().contains("above its end"));
    assert!(PortSet::parse("!any", &vars).unwrap_err().contains("matches nothing"));
}

fn load_text(text: &str) -> LoadedRules {
    let mut loaded = LoadedRules::default();
    load_reader(
        Cursor::new(text.as_bytes()),
        Path::new("test.rules"),
        &vars(),
        &mut HashMap::new(),
        &mut loaded,
    );
    loaded
}

#[test]
fn a_file_loads_its_good_rules_and_reports_each_bad_line() {
    let loaded = load_text(concat!(
        "# ET-style test rules\n",
        "\n",
        "alert http any any -> any any (msg:\"one\"; http.uri; content:\"/a\"; sid:1;)\n",
        "# alert http any any -> any any (msg:\"disabled\"; sid:2;)\n",
        "alert http any any -> any any (msg:\"continued\"; \\\n",
        "    http.uri; content:\"/b\"; \\\n",
        "    sid:3;)\n",
        "alert http any any -> any any (msg:\"bad\"; byte_jump:4,0; sid:4;)\n",
        "alert http any any -> any any (msg:\"dup\"; http.uri; content:\"/c\"; sid:1;)\n",
        "alert http any any -> any any (msg:\"five\"; http.uri; content:\"/e\"; sid:5;)\n",
    ));
    let sids: Vec<u32> = loaded.rules.iter().map(|r| r.meta.sid).collect();
    assert_eq!(sids, [1, 3, 5]);
    assert_eq!(loaded.origins[1].1, 5, "a continued rule is reported at its first line");
    let skipped: Vec<String> = loaded.report.skipped.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        skipped,
        [
            "test.rules:8: sid 4: unsupported: byte_jump: byte arithmetic is not in loupe's subset",
            "test.rules:9: sid 1: duplicate: gid 1 sid 1 is already loaded from test.rules:3",
        ]
    );
    assert_eq!(loaded.report.loaded(), 3);
}

#[test]
fn a_file_ending_inside_a_continued_rule_says_so() {
    let loaded = load_text("alert http any any -> any any (msg:\"x\"; \\\n  sid:1; \\\n");
    assert!(loaded.rules.is_empty());
    assert_eq!(loaded.report.skipped.len(), 1);
    assert!(loaded.report.skipped[0].to_string().contains("ends inside a rule"));
}

#[test]
fn a_rule_file_of_100k_lines_loads_rule_by_rule() {
    let mut text = String::new();
    for sid in 1..=100_000u32 {
        if sid % 1000 == 0 {
            text.push_str(&format!(
                "alert http any any -> any any (msg:\"bad {sid}\"; nope; sid:{sid};)\n"
            ));
        } else {
            text.push_str(&format!(
                "alert http any any -> any any (msg:\"r{sid}\"; http.uri; content:\"/p{sid}\"; sid:{sid};)\n"
            ));
        }
    }
    let loaded = load_text(&text);
    assert_eq!(loaded.rules.len(), 99_900);
    assert_eq!(loaded.report.skipped.len(), 100);
    assert_eq!(loaded.report.skipped[0].line, 1000);
}

#[test]
fn globs_load_their_files_in_name_order_and_unreadable_entries_are_reported() {
    let dir = std::env::temp_dir().join(format!("loupe-rules-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, sid: u32| {
        std::fs::write(
            dir.join(name),
            format!("alert http any any -> any any (msg:\"{name}\"; http.uri; content:\"/x\"; sid:{sid};)\n"),
        )
        .unwrap();
    };
    write("b.rules", 2);
    write("a.rules", 1);
    write("c.txt", 3);
    let patterns = vec![dir.join("*.rules"), dir.join("missing.rules"), dir.join("*.none")];
    let loaded = load_rule_files(&patterns, &vars());
    std::fs::remove_dir_all(&dir).unwrap();
    let sids: Vec<u32> = loaded.rules.iter().map(|r| r.meta.sid).collect();
    assert_eq!(sids, [1, 2]);
    let files: Vec<PathBuf> = loaded.report.files.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(files, [dir.join("a.rules"), dir.join("b.rules")]);
    assert_eq!(loaded.report.unreadable.len(), 2, "{:?}", loaded.report.unreadable);
    assert!(loaded.report.unreadable[0].1.contains("No such file"));
    assert!(loaded.report.unreadable[1].1.contains("matches no file"));
}

#[test]
fn the_prefilter_names_only_rules_whose_fast_pattern_occurs() {
    let rules: Vec<Rule> = [
        r#"alert http any any -> any any (msg:"a"; http.uri; content:"/admin"; sid:1;)"#,
        r#"alert http any any -> any any (msg:"b"; http.uri; content:"/x"; content:"LOGIN"; nocase; sid:2;)"#,
        r#"alert http any any -> any any (msg:"c"; http.user_agent; content:"sqlmap"; sid:3;)"#,
        r#"alert http any any -> any any (msg:"d"; http.uri; pcre:"/\d{5}/"; sid:4;)"#,
        r#"alert http any any -> any any (msg:"e"; http.uri; content:"/backup"; content:"bak"; fast_pattern; sid:5;)"#,
    ]
    .iter()
    .map(|text| rule(text))
    .collect();
    let prefilter = super::prefilter::Prefilter::new(&rules).unwrap();
    let mut out = Vec::new();
    let mut candidates = |fields: &Fields| {
        prefilter.candidates(fields, &mut out);
        out.clone()
    };
    // sid 4 has no content: always a candidate. "LOGIN" is sid 2's longest content,
    // found whatever its case; sid 5's marked fast pattern is "bak", not the longer
    // "/backup".
    assert_eq!(candidates(&uri("/admin/login")), [0, 1, 3]);
    assert_eq!(candidates(&uri("/backup/x")), [3]);
    assert_eq!(candidates(&uri("/x.bak")), [3, 4]);
    assert_eq!(
        candidates(&Fields::default().with(Buffer::HttpUserAgent, b"sqlmap/1.7")),
        [2, 3]
    );
    // Scratch space is reset between calls.
    assert_eq!(candidates(&uri("/none")), [3]);
}

#[test]
fn a_large_prefilter_group_finds_overlapping_shared_and_case_folded_patterns() {
    // Over 64 patterns in a buffer: the double-array automaton, with the case-sensitive
    // patterns searched in the case-insensitive pass. Padding patterns are distinct and
    // absent from the inputs.
    let mut texts: Vec<String> = (0..100)
        .map(|i| {
            format!(
                r#"alert http any any -> any any (msg:"pad"; http.uri; content:"zq{i:03}qz"; sid:{};)"#,
                1000 + i
            )
        })
        .collect();
    texts.extend([
        // 100: nocase, found whatever the case of the URI.
        r#"alert http any any -> any any (msg:"a"; http.uri; content:"AdMiN"; nocase; sid:1;)"#.to_string(),
        // 101 and 102 share a pattern: both are candidates.
        r#"alert http any any -> any any (msg:"b"; http.uri; content:"/backup"; sid:2;)"#.to_string(),
        r#"alert http any any -> any any (msg:"c"; http.uri; content:"/backup"; content:"tar"; sid:3;)"#.to_string(),
        // 103's pattern ends inside 101's: found too (overlapping search).
        r#"alert http any any -> any any (msg:"d"; http.uri; content:"ckup"; sid:4;)"#.to_string(),
        // 104: case-sensitive, so a candidate for "/Shell" as well (a superset; the
        // full evaluation checks the case).
        r#"alert http any any -> any any (msg:"e"; http.uri; content:"shell"; sid:5;)"#.to_string(),
    ]);
    let rules: Vec<Rule> = texts.iter().map(|text| rule(text)).collect();
    let prefilter = super::prefilter::Prefilter::new(&rules).unwrap();
    let mut out = Vec::new();
    let mut candidates = |value: &str| {
        prefilter.candidates(&uri(value), &mut out);
        out.clone()
    };
    assert_eq!(candidates("/ADMIN/x"), [100]);
    assert_eq!(candidates("/backup.tar"), [101, 102, 103]);
    assert_eq!(candidates("/backup/backup"), [101, 102, 103]);
    assert_eq!(candidates("/Shell?zq042qz"), [42, 104]);
    assert_eq!(candidates("/nothing"), Vec::<u32>::new());
    let shell = &rules[104];
    assert!(!rule_matches(shell, &uri("/Shell")));
    assert!(rule_matches(shell, &uri("/shell")));
}

#[test]
fn a_first_relative_match_counts_from_the_buffer_start() {
    // ET writes `file.data; content:"MZ"; within:2;` for "the body starts with MZ".
    assert!(uri_rule_matches(r#"content:"/a"; within:2;"#, "/abc"));
    assert!(!uri_rule_matches(r#"content:"/a"; within:2;"#, "x/abc"));
}

#[test]
fn modifiers_after_a_size_check_apply_to_the_last_content() {
    // ET: `http.uri; content:"/panel/admin/login.php"; bsize:22; startswith; fast_pattern;`
    let r = rule(concat!(
        r#"alert http any any -> any any (msg:"m"; http.uri; content:"/panel/login.php"; bsize:16; "#,
        r#"startswith; fast_pattern; sid:1;)"#
    ));
    let Detection::Content(c) = &r.detections[0].detection else {
        panic!("a content first");
    };
    assert!(c.startswith && c.fast_pattern);
    assert!(rule_matches(&r, &uri("/panel/login.php")));
    assert!(!rule_matches(&r, &uri("/panel/login.php?x")));
}

#[test]
fn dotprefix_matches_a_domain_and_its_subdomains_only() {
    let r = rule(concat!(
        r#"alert tls any any -> any any (msg:"sni"; flow:established,to_server; tls.sni; dotprefix; "#,
        r#"content:".evil.example"; endswith; nocase; sid:1;)"#
    ));
    assert_eq!(r.protocol, Protocol::Tls);
    let sni = |name: &str| Fields::default().with(Buffer::TlsSni, name.as_bytes());
    assert!(rule_matches(&r, &sni("evil.example")));
    assert!(rule_matches(&r, &sni("cdn.EVIL.example")));
    assert!(!rule_matches(&r, &sni("notevil.example")));
    // The prefilter does not search a transformed buffer: the rule is always a candidate.
    assert!(r.fast_pattern().is_none());
}

#[test]
fn transforms_chain_in_order() {
    let r = rule(concat!(
        r#"alert http any any -> any any (msg:"t"; http.user_agent; strip_whitespace; to_lowercase; "#,
        r#"content:"evilbot/1.0"; bsize:11; sid:1;)"#
    ));
    let ua = |value: &str| Fields::default().with(Buffer::HttpUserAgent, value.as_bytes());
    assert!(rule_matches(&r, &ua("Evil Bot/1.0")));
    assert!(!rule_matches(&r, &ua("Evil Bot/1.01")));
}

#[test]
fn a_message_keeps_backslashes_that_escape_nothing() {
    let r = rule(r#"alert http any any -> any any (msg:"UA (\xa4) \; done"; http.user_agent; content:"|a4|"; sid:1;)"#);
    assert_eq!(r.meta.msg, "UA (\\xa4) ; done");
}

// ---- threshold and detection_filter ----------------------------------------------------

fn rate_of(text: &str) -> (rule::Rate, bool) {
    let rule = rule(text);
    match (rule.threshold, rule.detection_filter) {
        (Some(rate), None) => (rate, false),
        (None, Some(rate)) => (rate, true),
        other => panic!("one rate keyword expected: {other:?}"),
    }
}

/// Which of `times` (seconds from 0) pass, for matches from `source`.
fn passing(text: &str, times: &[u64], source: &str) -> Vec<u64> {
    let (rate, filter) = rate_of(text);
    let table = rate::RateTable::default();
    let source: IpAddr = source.parse().unwrap();
    let destination: IpAddr = "198.19.0.1".parse().unwrap();
    let epoch = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    times
        .iter()
        .copied()
        .filter(|&t| {
            table.passes(
                0,
                &rate,
                filter,
                epoch + std::time::Duration::from_secs(t),
                source,
                destination,
            )
        })
        .collect()
}

#[test]
fn threshold_limit_alerts_on_the_first_matches_of_each_period() {
    let text = r#"alert http any any -> any any (msg:"m"; content:"x"; threshold:type limit, track by_src, count 2, seconds 60; sid:1;)"#;
    assert_eq!(
        passing(text, &[0, 1, 2, 3, 59, 60, 61, 62], "198.18.0.1"),
        [0, 1, 60, 61]
    );
}

#[test]
fn threshold_type_threshold_alerts_on_every_nth_match() {
    let text = r#"alert http any any -> any any (msg:"m"; content:"x"; threshold:type threshold, track by_src, count 3, seconds 60; sid:1;)"#;
    assert_eq!(passing(text, &[0, 1, 2, 3, 4, 5, 6], "198.18.0.1"), [2, 5]);
}

#[test]
fn threshold_both_alerts_once_per_period_after_count() {
    let text = r#"alert http any any -> any any (msg:"m"; content:"x"; threshold:type both, track by_dst, count 2, seconds 10; sid:1;)"#;
    assert_eq!(passing(text, &[0, 1, 2, 3, 10, 11, 12], "198.18.0.1"), [1, 11]);
}

#[test]
fn detection_filter_alerts_after_the_first_count_matches() {
    let text = r#"alert http any any -> any any (msg:"m"; content:"x"; detection_filter:track by_src, count 2, seconds 60; sid:1;)"#;
    assert_eq!(passing(text, &[0, 1, 2, 3, 61, 62, 63], "198.18.0.1"), [2, 3, 63]);
}

#[test]
fn each_tracked_source_has_its_own_window() {
    let (rate, filter) = rate_of(
        r#"alert http any any -> any any (msg:"m"; content:"x"; threshold:type limit, track by_src, count 1, seconds 60; sid:1;)"#,
    );
    let table = rate::RateTable::default();
    let now = std::time::SystemTime::UNIX_EPOCH;
    let dst: IpAddr = "198.19.0.1".parse().unwrap();
    let (a, b): (IpAddr, IpAddr) = ("198.18.0.1".parse().unwrap(), "198.18.0.2".parse().unwrap());
    assert!(table.passes(0, &rate, filter, now, a, dst));
    assert!(!table.passes(0, &rate, filter, now, a, dst));
    assert!(
        table.passes(0, &rate, filter, now, b, dst),
        "another source is not held back"
    );
    assert!(table.passes(1, &rate, filter, now, a, dst), "nor is another rule");
}
