use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::endpoint::{request_line, MetricsListener};
use super::*;
use crate::wire::PortSide;

fn busy_worker() -> WorkerStats {
    let stats = WorkerStats::default();
    stats.rx_frames.store(120, Ordering::Relaxed);
    stats.flows_opened.store(7, Ordering::Relaxed);
    stats.flows_active.store(2, Ordering::Relaxed);
    stats.bytes_client_to_server.store(1000, Ordering::Relaxed);
    stats.bytes_server_to_client.store(250_000, Ordering::Relaxed);
    stats.load_permille.store(125, Ordering::Relaxed);
    stats.sessions_by_verdict[0][0].store(5, Ordering::Relaxed); // decrypt, decrypted
    stats.sessions_by_verdict[1][1].store(2, Ordering::Relaxed); // no-decrypt, spliced
    stats.tls_handshake_latency.observe(Duration::from_millis(3));
    stats.tls_handshake_latency.observe(Duration::from_millis(40));
    stats.signature_alerts.store(4, Ordering::Relaxed);
    stats
}

fn facts() -> ControlFacts {
    ControlFacts {
        xdp: Some(vec![
            PlacedCounters {
                place: CounterPlace::Queue {
                    port: PortSide::Inside,
                    queue: 0,
                },
                counters: WireCounters {
                    steered: 300,
                    bridged: 12,
                    ..WireCounters::default()
                },
            },
            PlacedCounters {
                place: CounterPlace::OtherQueues {
                    port: PortSide::Outside,
                },
                counters: WireCounters {
                    unserved: 7,
                    ..WireCounters::default()
                },
            },
            PlacedCounters {
                place: CounterPlace::NoPort,
                counters: WireCounters {
                    unknown_ingress: 2,
                    ..WireCounters::default()
                },
            },
        ]),
        rules: vec![
            RuleHits {
                rule: "banks \"eu\"".to_string(),
                worker: 1,
                xdp: 9,
            },
            RuleHits {
                rule: "default".to_string(),
                worker: 6,
                xdp: 0,
            },
        ],
        config_version: 3,
        exclusions: 1,
    }
}

/// The value of the sample line that starts with `series` (name and labels, exactly).
fn sample(text: &str, series: &str) -> f64 {
    let line = text
        .lines()
        .find(|line| line.strip_prefix(series).is_some_and(|rest| rest.starts_with(' ')))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"));
    line[series.len()..].trim().parse().unwrap()
}

#[test]
fn exposition_has_every_family_typed_and_the_figures() {
    let (a, b) = (busy_worker(), WorkerStats::default());
    b.rx_frames.store(1, Ordering::Relaxed);
    let forger = ForgerFigures {
        signed: 2,
        cache_hits: 5,
        cache_misses: 2,
        evictions: 0,
        cached: 2,
    };
    let text = exposition(&facts(), &[(0, &a), (1, &b)], &forger);

    assert_eq!(sample(&text, "loupe_config_version"), 3.0);
    assert_eq!(
        sample(&text, "loupe_xdp_steered_frames_total{port=\"inside\",queue=\"0\"}"),
        300.0
    );
    assert_eq!(
        sample(
            &text,
            "loupe_xdp_unserved_frames_total{port=\"outside\",queue=\"other\"}"
        ),
        7.0
    );
    assert_eq!(
        sample(
            &text,
            "loupe_xdp_unknown_ingress_frames_total{port=\"none\",queue=\"none\"}"
        ),
        2.0
    );
    assert_eq!(
        sample(&text, "loupe_xdp_steered_frames_total{port=\"none\",queue=\"none\"}"),
        0.0
    );
    assert_eq!(sample(&text, "loupe_worker_rx_frames_total{queue=\"0\"}"), 120.0);
    assert_eq!(sample(&text, "loupe_worker_rx_frames_total{queue=\"1\"}"), 1.0);
    assert_eq!(
        sample(
            &text,
            "loupe_tcp_payload_bytes_total{queue=\"0\",direction=\"server_to_client\"}"
        ),
        250000.0
    );
    assert_eq!(sample(&text, "loupe_flows_active{queue=\"0\"}"), 2.0);
    assert_eq!(sample(&text, "loupe_worker_load_ratio{queue=\"0\"}"), 0.125);
    assert_eq!(
        sample(&text, "loupe_sessions_total{action=\"decrypt\",outcome=\"decrypted\"}"),
        5.0
    );
    assert_eq!(
        sample(&text, "loupe_sessions_total{action=\"no-decrypt\",outcome=\"spliced\"}"),
        2.0
    );
    assert_eq!(
        sample(&text, "loupe_sessions_total{action=\"block\",outcome=\"aborted\"}"),
        0.0
    );
    assert_eq!(
        sample(&text, "loupe_tls_handshake_duration_seconds_bucket{le=\"0.005\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "loupe_tls_handshake_duration_seconds_bucket{le=\"+Inf\"}"),
        2.0
    );
    assert_eq!(sample(&text, "loupe_tls_handshake_duration_seconds_count"), 2.0);
    assert!((sample(&text, "loupe_tls_handshake_duration_seconds_sum") - 0.043).abs() < 1e-9);
    assert_eq!(sample(&text, "loupe_http_request_duration_seconds_count"), 0.0);
    assert_eq!(sample(&text, "loupe_signature_matches_total{action=\"alert\"}"), 4.0);
    assert_eq!(sample(&text, "loupe_forged_certificate_cache_hits_total"), 5.0);
    assert_eq!(sample(&text, "loupe_exclusions"), 1.0);
    // Label values are escaped as the format wants.
    assert_eq!(
        sample(
            &text,
            "loupe_rule_hits_total{rule=\"banks \\\"eu\\\"\",decided_in=\"xdp\"}"
        ),
        9.0
    );

    // Every sample belongs to a family announced by HELP and TYPE, counters end in
    // _total, and each family appears once.
    let mut families: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(!families.iter().any(|(n, _)| n == name), "{name} twice");
            assert!(text.contains(&format!("# HELP {name} ")), "{name} has no HELP");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter {name} without _total");
            }
            families.push((name.to_string(), kind.to_string()));
        } else if !line.starts_with('#') {
            let series = line.split([' ', '{']).next().unwrap();
            let (family, kind) = families.last().expect("a sample before any TYPE");
            let own = series == family
                || (kind == "histogram"
                    && ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|suffix| series.strip_suffix(suffix) == Some(family)));
            assert!(own, "{series} under {family}");
            assert!(series.starts_with("loupe_"), "{series}");
        }
    }
    assert!(families.len() > 40, "{} families", families.len());
}

#[test]
fn request_lines_are_read_strictly() {
    assert_eq!(
        request_line(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
        Some(("GET", "/metrics"))
    );
    assert_eq!(
        request_line(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
        Some(("GET", "/metrics"))
    );
    assert_eq!(request_line(b"POST / HTTP/1.1\r\n"), Some(("POST", "/")));
    assert_eq!(request_line(b"GET /metrics\r\n"), None);
    assert_eq!(request_line(b"\xff\xfe HTTP/1.1\r\n"), None);
    assert_eq!(request_line(b"GET /metrics SPDY/3\r\n"), None);
}

fn fetch(address: std::net::SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn the_endpoint_serves_get_metrics_and_refuses_the_rest() {
    let listener = MetricsListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let address = listener.address();
    // A second listener on the same address is an error that names it.
    let taken = MetricsListener::bind(address).err().expect("the port is taken");
    assert!(format!("{taken:#}").contains(&address.to_string()), "{taken:#}");

    let stats = Arc::new(busy_worker());
    let forger = Forger::ephemeral(4).unwrap();
    let sources = MetricsSources {
        workers: vec![(0, stats)],
        forger,
        control: Arc::new(Mutex::new(facts())),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let thread = listener.spawn(sources, stop.clone()).unwrap();

    let ok = fetch(address, "GET /metrics HTTP/1.1\r\nHost: loupe\r\n\r\n");
    let (head, body) = ok.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains(&format!("Content-Type: {CONTENT_TYPE}")), "{head}");
    assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");
    assert_eq!(sample(body, "loupe_config_version"), 3.0);
    assert!(fetch(address, "GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
    assert!(fetch(address, "DELETE /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405 "));
    assert!(fetch(address, "hello\r\n\r\n").starts_with("HTTP/1.1 400 "));

    stop.store(true, Ordering::Relaxed);
    thread.join().unwrap();
}
