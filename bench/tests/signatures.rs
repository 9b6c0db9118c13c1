//! Content signatures on decrypted HTTP, with real clients and a real server: Suricata
//! rules in ET Open's style, written for the suite, run by loupe on what curl and nghttp
//! fetch from nginx over HTTP/1.1 and HTTP/2. nginx sends TLS records of 64 bytes
//! (`ssl_buffer_size`), so the 68-byte EICAR string always spans two records, and gzips
//! bodies when asked, so a body is matched after decoding. Each alert is an EVE `alert`
//! event checked against the schema; a `drop` ends the session and nginx's access log
//! shows what never arrived. Needs root.

mod common;

use common::*;

/// The EICAR test file: 68 bytes that antivirus engines, and ET's rules, detect.
const EICAR: &str = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// Rules in ET Open's style (this suite's own; ET Open's licence keeps its files out).
const RULES: &str = r#"
# Bodies
alert http $EXTERNAL_NET any -> $HOME_NET any (msg:"LOUPE-LAB EICAR test string in a response body"; flow:established,to_client; file.data; content:"EICAR-STANDARD-ANTIVIRUS-TEST-FILE"; fast_pattern; classtype:trojan-activity; metadata:created_at 2026_12_06; sid:9300001; rev:1;)
drop http any any -> any any (msg:"LOUPE-LAB dropped download"; flow:established,to_client; http.response_body; content:"DROP-THIS-BODY"; sid:9300002; rev:1;)
# Request heads
alert http $HOME_NET any -> $EXTERNAL_NET any (msg:"LOUPE-LAB suspicious user agent"; flow:established,to_server; http.user_agent; content:"loupe-lab-agent/"; startswith; http.host; content:"server.lab"; endswith; sid:9300003; rev:1;)
alert http any any -> any any (msg:"LOUPE-LAB executable download path"; flow:established,to_server; http.method; content:"GET"; http.uri; content:"/download/"; startswith; content:".exe"; distance:8; within:4; endswith; pcre:"/^\/download\/[a-z0-9]{8}\.exe$/U"; classtype:bad-unknown; sid:9300004; rev:2;)
drop http any any -> any any (msg:"LOUPE-LAB dropped by header"; flow:established,to_server; http.header; content:"X-Loupe-Drop|3a 20|yes|0d 0a|"; nocase; sid:9300005; rev:1;)
# The handshake: fires once per decrypted session
alert tls $HOME_NET any -> $EXTERNAL_NET any (msg:"LOUPE-LAB server name"; tls.sni; content:"server.lab"; endswith; nocase; sid:9300008; rev:1;)
# Flowbits: a login request, then its answer
alert http any any -> any any (msg:"LOUPE-LAB login request"; flow:established,to_server; http.uri; content:"/login"; startswith; flowbits:set,lab.login; flowbits:noalert; sid:9300006; rev:1;)
alert http any any -> any any (msg:"LOUPE-LAB login answered 200"; flow:established,to_client; flowbits:isset,lab.login; http.stat_code; content:"200"; sid:9300007; rev:1;)
"#;

/// The `tls.sni` rule: it fires on every session's handshake, so the transaction
/// checks leave it out and count it apart.
const HANDSHAKE_SID: u64 = 9300008;

/// What an alert names: sid, transaction url (or server name) and action.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Alert {
    sid: u64,
    url: String,
    sni: String,
    action: String,
    app_proto: String,
    flow_id: u64,
    tx_id: u64,
}

/// The alert events in eve.json, each checked against the schema.
fn alerts(t: &Tls<'_>, validator: &jsonschema::Validator) -> Vec<Alert> {
    eve_events(t, validator)
        .into_iter()
        .filter(|event| event["event_type"] == "alert")
        .map(|event| Alert {
            sid: event["alert"]["signature_id"].as_u64().unwrap_or(0),
            url: event["http"]["url"].as_str().unwrap_or("").to_string(),
            sni: event["tls"]["sni"].as_str().unwrap_or("").to_string(),
            action: event["alert"]["action"].as_str().unwrap_or("").to_string(),
            app_proto: event["app_proto"].as_str().unwrap_or("").to_string(),
            flow_id: event["flow_id"].as_u64().unwrap_or(0),
            tx_id: event["tx_id"].as_u64().unwrap_or(0),
        })
        .collect()
}

/// Waits (at most 10 s) until there are `count` transaction alerts past the first
/// `seen`; returns them, and fails if more than `count` came.
fn new_alerts(
    t: &Tls<'_>,
    validator: &jsonschema::Validator,
    seen: &mut usize,
    count: usize,
    what: &str,
) -> Vec<Alert> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut all = alerts(t, validator);
        all.retain(|alert| alert.sid != HANDSHAKE_SID);
        if all.len() >= *seen + count || Instant::now() >= deadline {
            let fresh = all[(*seen).min(all.len())..].to_vec();
            if fresh.len() != count {
                t.fail(None, &format!("{what}: {count} alerts expected, got {fresh:#?}"));
            }
            *seen = all.len();
            return fresh;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sids(alerts: &[Alert]) -> Vec<u64> {
    alerts.iter().map(|alert| alert.sid).collect()
}

#[test]
fn suricata_rules_fire_on_decrypted_http11_and_http2() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let rules = lab.dir().join("lab.rules");
    std::fs::write(&rules, RULES).expect("write the rules");
    // The lab's client (198.18.0.1) is the home net; the origin is outside it.
    let config = format!(
        "[[rule]]\nname = \"lab\"\nsni = [\"server.lab\"]\naction = \"decrypt\"\n\n\
         [inspection]\nrules = [\"{}\"]\n\n[inspection.vars]\nHOME_NET = \"198.18.0.1/32\"\n",
        rules.display()
    );
    let origin = "ssl_buffer_size 64; gzip on; gzip_min_length 1; gzip_types application/octet-stream;";
    let (t, _nginx) = setup_with_origin(&lab, Some(&config), origin);
    let validator = eve_validator();
    let www = &t.www;
    std::fs::write(www.join("eicar.com"), EICAR).expect("eicar.com");
    std::fs::write(
        www.join("eicar.txt"),
        format!("text before it\n{EICAR}\ntext after it\n"),
    )
    .expect("eicar.txt");
    std::fs::write(www.join("near-miss.com"), &EICAR[..60]).expect("near-miss.com");
    std::fs::write(
        www.join("dropped.bin"),
        format!("{}DROP-THIS-BODY{}", "a".repeat(4000), "b".repeat(4000)),
    )
    .expect("dropped.bin");
    std::fs::create_dir_all(www.join("download")).expect("download dir");
    for name in ["abcd1234.exe", "abcd12345.exe", "abcd1234.exe.txt"] {
        std::fs::write(www.join("download").join(name), "MZ").expect("download file");
    }
    std::fs::write(www.join("login"), "welcome").expect("login");
    let dca = t.dca().to_string();
    let mut seen = 0;

    // EICAR over HTTP/1.1, split across TLS records: one alert, the download works.
    let got = t.curl(&["--http1.1", "--cacert", &dca, "https://server.lab/eicar.com"]);
    assert!(got.status.success() && got.stdout == EICAR, "{}", got.stderr);
    let fired = new_alerts(&t, &validator, &mut seen, 1, "EICAR over HTTP/1.1");
    assert_eq!(fired[0].sid, 9300001);
    let handshakes: Vec<Alert> = alerts(&t, &validator)
        .into_iter()
        .filter(|alert| alert.sid == HANDSHAKE_SID)
        .collect();
    assert!(
        handshakes.len() == 1 && handshakes[0].sni == "server.lab" && handshakes[0].app_proto == "tls",
        "the tls.sni rule fired on the session's handshake: {handshakes:#?}"
    );
    assert_eq!(handshakes[0].flow_id, fired[0].flow_id, "the same session");
    assert_eq!(
        (fired[0].url.as_str(), fired[0].action.as_str()),
        ("/eicar.com", "allowed")
    );

    // The same string gzip-encoded (curl asks for gzip, nginx compresses): found after
    // decoding. A near miss (the string cut short) fires nothing.
    let got = t.curl(&[
        "--http1.1",
        "--compressed",
        "-D",
        "-",
        "--cacert",
        &dca,
        "https://server.lab/eicar.txt",
    ]);
    assert!(
        got.status.success() && got.stdout.to_ascii_lowercase().contains("content-encoding: gzip"),
        "nginx sent gzip: {}{}",
        got.stdout,
        got.stderr
    );
    let got_near = t.curl(&["--http1.1", "--cacert", &dca, "https://server.lab/near-miss.com"]);
    assert!(got_near.status.success(), "{}", got_near.stderr);
    let fired = new_alerts(&t, &validator, &mut seen, 1, "EICAR gzip-encoded, then a near miss");
    assert_eq!((fired[0].sid, fired[0].url.as_str()), (9300001, "/eicar.txt"));

    // EICAR over HTTP/2 with nghttp: DATA frames split across records, one alert.
    let nghttp = ok(
        lab.exec_output_within(
            Ns::Client,
            &["nghttp", "-n", "--no-dep", "https://server.lab/eicar.com"],
            Duration::from_secs(30),
        ),
        "run nghttp",
    );
    assert!(nghttp.status.success(), "nghttp: {}{}", nghttp.stdout, nghttp.stderr);
    let fired = new_alerts(&t, &validator, &mut seen, 1, "EICAR over HTTP/2");
    assert_eq!((fired[0].sid, fired[0].app_proto.as_str()), (9300001, "http2"));

    // Request rules over HTTP/2: two requests on one connection with the same user agent;
    // the second's header comes from the HPACK dynamic table, and fires too.
    let agent = "loupe-lab-agent/1.0";
    let got = t.curl(&[
        "--http2",
        "-A",
        agent,
        "--cacert",
        &dca,
        "-o",
        "/dev/null",
        "https://server.lab/index.html?first",
        "-o",
        "/dev/null",
        "https://server.lab/download/abcd1234.exe",
    ]);
    assert!(got.status.success() && got.http_version == "2", "{}", got.stderr);
    let mut fired = new_alerts(&t, &validator, &mut seen, 3, "user agent twice and the download path");
    fired.sort_by_key(|alert| (alert.tx_id, alert.sid));
    assert_eq!(sids(&fired), [9300003, 9300003, 9300004], "{fired:#?}");
    assert_eq!(fired[0].flow_id, fired[2].flow_id, "one connection: {fired:#?}");
    assert_ne!(fired[0].tx_id, fired[1].tx_id, "two transactions: {fired:#?}");
    assert_eq!(fired[2].url, "/download/abcd1234.exe");

    // Near misses over HTTP/1.1: a ninth character, a suffix after .exe, another agent.
    for path in ["/download/abcd12345.exe", "/download/abcd1234.exe.txt"] {
        let got = t.curl(&[
            "--http1.1",
            "-A",
            "lab-agent/1.0",
            "--cacert",
            &dca,
            "-o",
            "/dev/null",
            &format!("https://server.lab{path}"),
        ]);
        assert!(got.status.success(), "{path}: {}", got.stderr);
    }
    // The same download path over HTTP/1.1 fires the path rule.
    let got = t.curl(&[
        "--http1.1",
        "--cacert",
        &dca,
        "-o",
        "/dev/null",
        "https://server.lab/download/abcd1234.exe",
    ]);
    assert!(got.status.success(), "{}", got.stderr);
    let fired = new_alerts(
        &t,
        &validator,
        &mut seen,
        1,
        "near misses, then the download path over HTTP/1.1",
    );
    assert_eq!((fired[0].sid, fired[0].app_proto.as_str()), (9300004, "http"));

    // Flowbits: the login request sets a bit (no alert); its 200 answer alerts.
    let got = t.curl(&["--http1.1", "--cacert", &dca, "https://server.lab/login"]);
    assert!(got.status.success(), "{}", got.stderr);
    let fired = new_alerts(&t, &validator, &mut seen, 1, "login answered");
    assert_eq!(fired[0].sid, 9300007);

    // drop on a request header: the request never reaches nginx, curl gets a reset.
    let got = t.curl(&[
        "--http1.1",
        "-H",
        "X-Loupe-Drop: yes",
        "--cacert",
        &dca,
        "https://server.lab/index.html?dropped-request",
    ]);
    assert!(
        !got.status.success() && got.stderr.contains("reset by peer"),
        "a dropped request is answered with a reset: {}",
        got.stderr
    );
    let fired = new_alerts(&t, &validator, &mut seen, 1, "header drop");
    assert_eq!((fired[0].sid, fired[0].action.as_str()), (9300005, "blocked"));
    expect_dropped_by(&t, got.port, 9300005);

    // The same drop over HTTP/2: the stream is reset (CANCEL), the server never sees it.
    let got = t.curl(&[
        "--http2",
        "-H",
        "X-Loupe-Drop: yes",
        "--cacert",
        &dca,
        "https://server.lab/index.html?dropped-stream",
    ]);
    assert!(
        !got.status.success() && got.stderr.contains("CANCEL"),
        "a dropped stream is reset: {}",
        got.stderr
    );
    let fired = new_alerts(&t, &validator, &mut seen, 1, "header drop over HTTP/2");
    assert_eq!(
        (fired[0].sid, fired[0].action.as_str(), fired[0].app_proto.as_str()),
        (9300005, "blocked", "http2")
    );

    // drop on a response body: the download fails part way.
    let got = t.curl(&[
        "--http1.1",
        "--cacert",
        &dca,
        "-o",
        "/dev/null",
        "https://server.lab/dropped.bin",
    ]);
    assert!(!got.status.success(), "a dropped download fails: {}", got.stderr);
    let fired = new_alerts(&t, &validator, &mut seen, 1, "body drop");
    assert_eq!((fired[0].sid, fired[0].action.as_str()), (9300002, "blocked"));
    expect_dropped_by(&t, got.port, 9300002);

    let served = access_log(&lab);
    assert!(
        !served.contains("dropped-request") && !served.contains("dropped-stream"),
        "nginx never saw the dropped request:\n{served}"
    );
    assert!(
        served.contains("/eicar.com"),
        "nginx's access log is where the test looks:\n{served}"
    );

    // A live reload under load: keep-alive requests run on one connection while a rule is
    // added; the requests after the reload fire it, the session is never reset.
    let shown = ok(t.mid.loupectl_json(&["rules", "show"]), "loupectl rules show");
    assert_eq!(shown["loaded"], 8, "{shown}");
    let requests = 24;
    let mut argv: Vec<String> = ["--http1.1", "--rate", "8/s", "--cacert", &dca]
        .map(String::from)
        .to_vec();
    for n in 0..requests {
        argv.extend([
            "-o".into(),
            "/dev/null".into(),
            format!("https://server.lab/index.html?live={n}"),
        ]);
    }
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let (load, reloaded_after) = std::thread::scope(|scope| {
        let load = scope.spawn(|| t.curl(&argv));
        // Some requests are through before the reload, some after.
        let deadline = Instant::now() + Duration::from_secs(10);
        let served_live = || access_log(&lab).matches("live=").count();
        while served_live() < 4 {
            assert!(Instant::now() < deadline, "keep-alive requests did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let added = "alert http any any -> any any (msg:\"LOUPE-LAB added live\"; flow:to_server; http.uri; content:\"live=\"; sid:9300010; rev:1;)\n";
        std::fs::write(&rules, format!("{RULES}{added}")).expect("rewrite the rules");
        let before = served_live();
        let loaded = ok(t.mid.loupectl_json(&["rules", "load"]), "loupectl rules load");
        assert_eq!(loaded["loaded"], 9, "{loaded}");
        (load.join().expect("curl thread"), before)
    });
    let ports: Vec<&str> = load
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("loupe-test "))
        .collect();
    assert!(
        load.status.success() && ports.len() == requests,
        "every request answered: {}",
        load.stderr
    );
    assert!(
        ports.iter().all(|p| *p == ports[0]),
        "one connection, never reset: {ports:?}"
    );
    // Every match is counted at once; its EVE line is written by the log thread soon after.
    let stats = ok(t.mid.loupectl_json(&["rules", "stats"]), "loupectl rules stats");
    let live = stats["rules"]
        .as_array()
        .and_then(|rules| rules.iter().find(|r| r["sid"] == 9300010))
        .cloned();
    let hits = live.and_then(|r| r["hits"].as_u64()).unwrap_or(0) as usize;
    let fired = new_alerts(
        &t,
        &validator,
        &mut seen,
        hits,
        "the added rule's alerts, as many as its hits",
    );
    assert!(
        hits > 0 && hits <= requests - reloaded_after + 1 && fired.iter().all(|a| a.sid == 9300010),
        "the added rule fired on requests after the reload ({reloaded_after} before it): {fired:#?}"
    );
}

/// The decryption record of the session from client port `port` says rule `sid` ended it.
fn expect_dropped_by(t: &Tls<'_>, port: u16, sid: u64) {
    let record = t.record(port, &format!("the session sid {sid} dropped"));
    let why = format!("dropped by signature sid {sid}");
    t.expect_contains(&record, "/http/ended", &[why.as_str()], "a drop");
    t.expect_eq(&record, "/http/signature_drops", Value::from(1), "a drop");
    t.expect_contains(
        &record,
        "/end_reason",
        &["dropped by inspection: both sides reset"],
        "a drop",
    );
}

/// Everything nginx logged as served.
fn access_log(lab: &Lab) -> String {
    std::fs::read_dir(lab.dir())
        .expect("lab dir")
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("nginx-tls-"))
        .map(|entry| std::fs::read_to_string(entry.path().join("access.log")).unwrap_or_default())
        .collect()
}
