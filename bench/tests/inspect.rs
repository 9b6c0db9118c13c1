//! HTTP inspection inside decrypted TLS, with real clients and a real server: curl over
//! HTTP/1.1 and HTTP/2, nghttp2's `nghttp`, openssl s_client pipelining, against nginx
//! with HTTP/2 on. URL rules block one path (403 on HTTP/1.1, then the connection closes;
//! a 403 on its stream on HTTP/2 while the connection's other streams go on), nginx's
//! access log proves the blocked requests never arrived, and every transaction is an EVE
//! `http` event checked against the schema. Needs root.

mod common;

use common::*;

const CONFIG: &str = r#"
[[rule]]
name = "lab-export"
sni = ["server.lab"]
action = "decrypt"
export = ["pcap", "keylog"]

[[url_rule]]
name = "no-secret"
host = ["server.lab"]
path = ["/secret/"]
action = "block"

[[url_rule]]
name = "watch-index"
path = ["/index.html"]
action = "alert"
"#;

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// Waits up to 10 s until `enough` holds for the http events; returns them.
fn wait_http_events(
    t: &Tls<'_>,
    validator: &jsonschema::Validator,
    what: &str,
    enough: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let http: Vec<Value> = eve_events(t, validator)
            .into_iter()
            .filter(|e| e["event_type"] == "http")
            .collect();
        if enough(&http) {
            return http;
        }
        if Instant::now() >= deadline {
            let tail: Vec<String> = http.iter().rev().take(5).map(Value::to_string).collect();
            t.fail(
                None,
                &format!(
                    "{what}: not in eve.json within 10 s; last http events:\n{}",
                    tail.join("\n")
                ),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Everything nginx logged as served, from every nginx the lab started.
fn access_log(lab: &Lab) -> String {
    let mut all = String::new();
    for entry in std::fs::read_dir(lab.dir()).expect("lab dir").flatten() {
        if entry.file_name().to_string_lossy().starts_with("nginx-tls-") {
            all.push_str(&std::fs::read_to_string(entry.path().join("access.log")).unwrap_or_default());
        }
    }
    all
}

/// One transfer of a curl run with several URLs: `-w` per URL.
#[derive(Debug)]
struct Transfer {
    code: u16,
    local_port: u16,
    new_connections: u32,
}

/// curl in the client namespace, fetching `urls` in order (one `-o` per URL).
fn curl_many(t: &Tls<'_>, version: &str, urls: &[(&str, &Path)]) -> Vec<Transfer> {
    let mut argv: Vec<String> = [
        "curl",
        "-sS",
        version,
        "--cacert",
        t.dca(),
        "--max-time",
        "30",
        "-w",
        "%{http_code} %{local_port} %{num_connects}\n",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (url, out) in urls {
        argv.extend(["-o".to_string(), out.display().to_string(), url.to_string()]);
    }
    let out = ok(t.lab.exec_output(Ns::Client, &argv), "run curl");
    let transfers: Vec<Transfer> = out
        .stdout
        .lines()
        .filter_map(|line| {
            let mut it = line.split_whitespace().map(|f| f.parse::<u32>().ok());
            Some(Transfer {
                code: it.next()??.try_into().ok()?,
                local_port: it.next()??.try_into().ok()?,
                new_connections: it.next()??,
            })
        })
        .collect();
    if transfers.len() != urls.len() {
        t.fail(
            None,
            &format!(
                "curl {version}: {} transfers for {} URLs\nstdout: {}\nstderr: {}",
                transfers.len(),
                urls.len(),
                out.stdout,
                out.stderr
            ),
        );
    }
    transfers
}

#[test]
fn http_inside_tls_is_parsed_filtered_and_logged_as_eve() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let (t, _nginx) = setup_with(&lab, Some(CONFIG));
    let validator = eve_validator();
    let dir = lab.dir().to_path_buf();
    let sink = Path::new("/dev/null");

    // HTTP/1.1: the blocked request gets a 403 naming the rule, then the connection
    // closes; the next request opens a new one and works.
    let blocked_h1 = dir.join("blocked-h1.html");
    let h1 = curl_many(
        &t,
        "--http1.1",
        &[
            ("https://server.lab/index.html", sink),
            ("https://server.lab/secret/h1?x=1", &blocked_h1),
            ("https://server.lab/index.html", sink),
        ],
    );
    let codes: Vec<u16> = h1.iter().map(|x| x.code).collect();
    assert_eq!(codes, [200, 403, 200], "HTTP/1.1 transfers: {h1:?}");
    assert_eq!(
        h1[1].new_connections, 0,
        "the blocked request went on the first connection: {h1:?}"
    );
    assert_eq!(
        h1[2].new_connections, 1,
        "loupe closed the connection after the 403: {h1:?}"
    );
    let page = std::fs::read_to_string(&blocked_h1).expect("the 403 page");
    assert!(page.contains("no-secret"), "the 403 page names the rule:\n{page}");

    // HTTP/2: a 403 on the blocked stream; the connection's other streams go on.
    let blocked_h2 = dir.join("blocked-h2.html");
    let h2 = curl_many(
        &t,
        "--http2",
        &[
            ("https://server.lab/index.html", sink),
            ("https://server.lab/secret/h2", &blocked_h2),
            ("https://server.lab/index.html?after=1", sink),
        ],
    );
    let codes: Vec<u16> = h2.iter().map(|x| x.code).collect();
    assert_eq!(codes, [200, 403, 200], "HTTP/2 transfers: {h2:?}");
    let connections: Vec<u32> = h2.iter().map(|x| x.new_connections).collect();
    assert_eq!(connections, [1, 0, 0], "one connection for all three streams: {h2:?}");
    assert!(h2.iter().all(|x| x.local_port == h2[0].local_port), "{h2:?}");
    let page = std::fs::read_to_string(&blocked_h2).expect("the HTTP/2 403 page");
    assert!(
        page.contains("no-secret"),
        "the HTTP/2 403 page names the rule:\n{page}"
    );

    // nghttp: two requests on one connection, concurrently.
    let nghttp = ok(
        lab.exec_output_within(
            Ns::Client,
            &[
                "nghttp",
                "-v",
                "-n",
                "https://server.lab/index.html?nghttp=1",
                "https://server.lab/secret/nghttp",
            ],
            Duration::from_secs(30),
        ),
        "run nghttp",
    );
    assert!(
        nghttp.stdout.contains(":status: 403") && nghttp.stdout.contains(":status: 200"),
        "nghttp saw a 200 and a 403:\n{}\n{}",
        nghttp.stdout,
        nghttp.stderr
    );

    // Pipelining: three requests in one write, three responses in order.
    let pipelined = "GET /index.html?p=1 HTTP/1.1\\r\\nHost: server.lab\\r\\n\\r\\n\
                     GET /index.html?p=2 HTTP/1.1\\r\\nHost: server.lab\\r\\n\\r\\n\
                     GET /index.html?p=3 HTTP/1.1\\r\\nHost: server.lab\\r\\nConnection: close\\r\\n\\r\\n";
    let script = format!(
        "printf '{pipelined}' | openssl s_client -quiet -CAfile {} -connect 198.18.0.2:443 -servername server.lab 2>/dev/null",
        t.dca()
    );
    let piped = ok(
        lab.exec_output_within(Ns::Client, &["sh", "-c", &script], Duration::from_secs(30)),
        "pipeline through openssl s_client",
    );
    assert_eq!(
        piped.stdout.matches("HTTP/1.1 200 OK").count(),
        3,
        "three responses to three pipelined requests:\n{}",
        piped.stdout
    );
    assert_eq!(
        piped.stdout.matches(INDEX).count(),
        3,
        "three bodies:\n{}",
        piped.stdout
    );

    // A chunked upload arrives intact, and comes back intact over HTTP/2.
    let upload = dir.join("chunked-upload.bin");
    let sent = random_file(&upload, 3 << 20);
    let put = t.curl(&[
        "--http1.1",
        "--cacert",
        t.dca(),
        "-H",
        "Transfer-Encoding: chunked",
        "-T",
        upload.to_str().expect("utf-8 path"),
        "https://server.lab/upload/chunked.bin",
    ]);
    assert!(put.status.success(), "chunked upload: {}", put.show());
    assert_eq!(
        sha256_file(&t.www.join("upload/chunked.bin")),
        sent,
        "the upload arrived intact"
    );
    let back = dir.join("chunked-back.bin");
    let get = t.curl(&[
        "--http2",
        "--cacert",
        t.dca(),
        "-o",
        back.to_str().expect("utf-8 path"),
        "https://server.lab/upload/chunked.bin",
    ]);
    assert!(get.status.success(), "download: {}", get.show());
    assert_eq!(sha256_file(&back), sent, "the download arrived intact");

    // A WebSocket upgrade through loupe: 101, then every byte both ways (SHA-256).
    let pki = ok(Pki::new(lab.dir().join("pki")), "open the test PKI");
    let ws_leaf = ok(
        pki.leaf("ws", Some(&t.pki.origin_ca), &LeafSpec::new(&["s2.lab"])),
        "issue the WebSocket origin leaf",
    );
    let python = repo_file("target/tls-peer-venv/bin/python");
    let ws_peer = repo_file("bench/tests/ws_peer.py");
    let mut ws_server = ok(
        lab.spawn(
            Ns::Server,
            "ws-peer",
            &[
                python.as_os_str(),
                ws_peer.as_os_str(),
                "server".as_ref(),
                "198.18.0.3".as_ref(),
                "443".as_ref(),
                ws_leaf.cert_file.as_os_str(),
                ws_leaf.key_file.as_os_str(),
            ],
        ),
        "start the WebSocket server",
    );
    ok(
        lab.wait_listening(Ns::Server, addr("198.18.0.3"), Duration::from_secs(10)),
        "the WebSocket server listens",
    );
    let ws = ok(
        lab.exec_output_within(
            Ns::Client,
            &[
                python.to_str().expect("utf-8 path"),
                ws_peer.to_str().expect("utf-8 path"),
                "client",
                "s2.lab",
                "443",
                t.dca(),
                &(2 << 20).to_string(),
            ],
            Duration::from_secs(60),
        ),
        "run the WebSocket client",
    );
    let hashes: std::collections::BTreeMap<&str, &str> = ws
        .stdout
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect();
    if !ws.status.success() || hashes.len() != 4 {
        t.fail(
            None,
            &format!("the WebSocket client failed:\n{}\n{}", ws.stdout, ws.stderr),
        );
    }
    assert_eq!(
        hashes["client_sent"], hashes["server_received"],
        "client → server intact"
    );
    assert_eq!(
        hashes["server_sent"], hashes["client_received"],
        "server → client intact"
    );
    let _ = ws_server.stop();
    let events = wait_http_events(&t, &validator, "the WebSocket upgrade", |events| {
        events.iter().any(|e| e["http"]["hostname"] == "s2.lab")
    });
    let upgrade = events
        .iter()
        .find(|e| e["http"]["hostname"] == "s2.lab")
        .expect("upgrade event");
    assert_eq!(upgrade["http"]["status"], 101, "{upgrade}");

    // 1,000 keep-alive requests: 1,000 http events with the right host, path and status.
    const KEEPALIVE: usize = 1000;
    let curl_config = dir.join("keepalive.curl");
    let mut lines = String::new();
    for i in 0..KEEPALIVE {
        lines.push_str(&format!(
            "url = \"https://server.lab/index.html?n={i}\"\noutput = \"/dev/null\"\n"
        ));
    }
    std::fs::write(&curl_config, lines).expect("curl config");
    let many = ok(
        lab.exec_output_within(
            Ns::Client,
            &[
                "curl",
                "-sS",
                "--http1.1",
                "--cacert",
                t.dca(),
                "-w",
                "%{http_code} %{local_port}\n",
                "-K",
                curl_config.to_str().expect("utf-8 path"),
            ],
            Duration::from_secs(120),
        ),
        "1,000 keep-alive requests",
    );
    let ports: BTreeSet<&str> = many
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(many.stdout.matches("200 ").count(), KEEPALIVE, "{}", many.stderr);
    assert_eq!(ports.len(), 1, "all on one connection: {ports:?}");
    let keepalive_port: u64 = ports.iter().next().and_then(|p| p.parse().ok()).expect("a port");
    let events = wait_http_events(&t, &validator, "1,000 keep-alive transactions", |events| {
        events.iter().filter(|e| e["src_port"] == keepalive_port).count() >= KEEPALIVE
    });
    let keepalive: Vec<&Value> = events.iter().filter(|e| e["src_port"] == keepalive_port).collect();
    assert_eq!(keepalive.len(), KEEPALIVE);
    for (i, event) in keepalive.iter().enumerate() {
        let http = &event["http"];
        assert_eq!(http["hostname"], "server.lab", "{event}");
        assert_eq!(http["url"], format!("/index.html?n={i}"), "{event}");
        assert_eq!(http["status"], 200, "{event}");
        assert_eq!(http["http_method"], "GET", "{event}");
        assert_eq!(http["protocol"], "HTTP/1.1", "{event}");
        assert_eq!(event["loupe"]["url_rule"]["name"], "watch-index", "{event}");
        assert_eq!(event["loupe"]["transaction"], i as u64, "{event}");
    }
    let record = t.record(keepalive_port as u16, "the keep-alive session");
    t.expect_eq(
        &record,
        "/http/transactions",
        Value::from(KEEPALIVE as u64),
        "keep-alive transactions",
    );
    t.expect_eq(
        &record,
        "/http/protocol",
        Value::from("http/1.1"),
        "keep-alive protocol",
    );

    // The blocked requests are in eve.json as such, and never reached nginx.
    let events = wait_http_events(&t, &validator, "the blocked requests", |events| {
        events.iter().filter(|e| e["loupe"]["blocked"] == true).count() >= 3
    });
    let blocked: Vec<&Value> = events.iter().filter(|e| e["loupe"]["blocked"] == true).collect();
    for event in &blocked {
        assert_eq!(event["http"]["status"], 403, "{event}");
        assert_eq!(event["loupe"]["url_rule"]["name"], "no-secret", "{event}");
        assert_eq!(event["loupe"]["url_rule"]["action"], "block", "{event}");
    }
    let h1_blocked = blocked
        .iter()
        .find(|e| e["http"]["url"] == "/secret/h1?x=1")
        .unwrap_or_else(|| t.fail(None, "no EVE event for /secret/h1?x=1"));
    assert_eq!(h1_blocked["app_proto"], "http");
    let h2_blocked = blocked
        .iter()
        .find(|e| e["http"]["url"] == "/secret/h2")
        .unwrap_or_else(|| t.fail(None, "no EVE event for /secret/h2"));
    assert_eq!(h2_blocked["app_proto"], "http2");
    assert_eq!(h2_blocked["http"]["protocol"], "HTTP/2");
    let served = access_log(&lab);
    assert!(
        served.contains("/index.html?after=1"),
        "nginx logged the stream after the block:\n{served}"
    );
    assert!(
        !served.contains("/secret"),
        "a blocked request reached nginx:\n{served}"
    );

    // Every decrypted session has its tls event.
    let tls_events = eve_events(&t, &validator)
        .into_iter()
        .filter(|e| e["event_type"] == "tls" && e["tls"]["sni"] == "server.lab")
        .count();
    assert!(tls_events >= 5, "tls events for server.lab: {tls_events}");

    // The plaintext pcap: tshark reads the HTTP/1.1 and HTTP/2 requests as clear text.
    let export_dir = t.mid.log_dir().expect("log dir").join("export");
    let tshark_fields = |file: &Path, extra: &[&str], filter: &str, field: &str| -> String {
        let mut argv = vec!["tshark", "-n", "-r", file.to_str().expect("utf-8 path")];
        argv.extend_from_slice(extra);
        argv.extend(["-Y", filter, "-T", "fields", "-e", field]);
        let out = ok(run_host(&argv, Duration::from_secs(60)), "tshark");
        assert!(out.status.success(), "tshark {argv:?}: {}", out.stderr);
        out.stdout
    };
    let pcap = export_dir.join("plaintext-1.pcap");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut h1_uris = String::new();
    while Instant::now() < deadline {
        h1_uris = tshark_fields(&pcap, &[], "http.request", "http.request.uri");
        if h1_uris.contains("/index.html?n=999") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for uri in [
        "/secret/h1?x=1",
        "/index.html?n=0",
        "/index.html?n=999",
        "/index.html?p=3",
    ] {
        assert!(
            // A segment carrying several pipelined requests lists them comma-separated.
            h1_uris.lines().flat_map(|l| l.split(',')).any(|l| l == uri),
            "{uri} not in the plaintext pcap:\n{h1_uris}"
        );
    }
    let h2_paths = tshark_fields(
        &pcap,
        &["-d", "tcp.port==443,http2"],
        "http2.headers.path",
        "http2.headers.path",
    );
    for path in ["/secret/h2", "/index.html?after=1"] {
        assert!(
            h2_paths.contains(path),
            "{path} not in the plaintext pcap's HTTP/2:\n{h2_paths}"
        );
    }

    // The key log decrypts a capture of the client leg of such a session.
    let capture = dir.join("keylog-capture.pcap");
    let capture_s = capture.to_str().expect("utf-8 path");
    let started = ok(
        t.mid.loupectl_json(&[
            "capture",
            "start",
            "--host",
            "198.18.0.2",
            "--port",
            "443",
            "--leg",
            "client",
            "--out",
            capture_s,
        ]),
        "capture start",
    );
    assert_eq!(started["out"], capture_s, "{started}");
    let c = t.curl(&[
        "--http1.1",
        "--cacert",
        t.dca(),
        "https://server.lab/index.html?captured=1",
    ]);
    assert!(c.status.success(), "curl during the capture: {}", c.show());
    ok(t.mid.loupectl_json(&["capture", "stop"]), "capture stop");
    let keys = export_dir.join("keys.log");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&keys).expect("keys.log").permissions());
    assert_eq!(mode & 0o777, 0o600, "the key log is private");
    let keylog_opt = format!("tls.keylog_file:{}", keys.display());
    let decrypted = tshark_fields(&capture, &["-o", &keylog_opt], "http.request", "http.request.uri");
    assert!(
        decrypted.contains("/index.html?captured=1"),
        "tshark with the key log decrypts the capture:\n{decrypted}"
    );
    let without = tshark_fields(&capture, &[], "http.request", "http.request.uri");
    assert!(
        !without.contains("captured"),
        "without the key log nothing is readable:\n{without}"
    );

    // Operators see it: the keep-alive session's last transactions, and the http log.
    let id = record["session_id"].as_u64().expect("a session id").to_string();
    let detail = ok(t.mid.loupectl_json(&["session", &id]), "loupectl session ID");
    assert_eq!(detail["http"]["transactions"], KEEPALIVE as u64, "{detail}");
    assert_eq!(detail["http"]["protocol"], "http/1.1", "{detail}");
    let recent = detail["http"]["recent"].as_array().expect("recent transactions");
    assert_eq!(
        recent.last().map(|line| line["url"].clone()),
        Some(Value::from(format!("/index.html?n={}", KEEPALIVE - 1))),
        "{detail}"
    );
    let tail = ok(
        t.mid.loupectl(&["log", "tail", "--http", "--errors", "-n", "5"]),
        "loupectl log tail --http",
    );
    assert!(
        tail.status.success() && tail.stdout.contains("/secret/h1?x=1") && tail.stdout.contains("no-secret"),
        "log tail --http --errors shows the blocked request:\n{}\n{}",
        tail.stdout,
        tail.stderr
    );
}
