//! `[metrics] listen` end to end: loupe in the lab's middle namespace serves
//! 127.0.0.1:9469 there; curl, promtool and a real Prometheus server (Debian's
//! `prometheus` package) read it from that namespace, `loupectl metrics` over the control
//! socket. Needs root; fails without it.

mod common;

use common::*;

const LISTEN: &str = "127.0.0.1:9469";
/// Where the lab's Prometheus serves its API (in the middle namespace too).
const PROMETHEUS: &str = "127.0.0.1:9090";
/// How long Prometheus scrapes loupe while traffic flows.
const SCRAPED_FOR: Duration = Duration::from_secs(60);

/// The value of the sample line that starts with `series` (name and labels, exactly);
/// None when there is no such line.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.strip_prefix(series).is_some_and(|rest| rest.starts_with(' ')))
        .and_then(|line| line[series.len()..].trim().parse().ok())
}

/// `GET /metrics` with curl in the middle namespace: the body.
fn scrape(t: &Tls) -> String {
    let url = format!("http://{LISTEN}/metrics");
    let out = ok(
        t.lab
            .exec_output(Ns::App, &["curl", "-sS", "--max-time", "5", "-D", "/dev/stderr", &url]),
        "curl the metrics",
    );
    if !out.status.success() || !out.stderr.contains("text/plain; version=0.0.4") {
        t.fail(
            None,
            &format!("GET {url}: exit {}\n{}\n{}", out.status, out.stderr, out.stdout),
        );
    }
    out.stdout
}

/// The metric names (families) a text announces with `# TYPE`.
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect()
}

/// `promtool check metrics` on `text`: no parse error and no lint problem.
fn promtool_check(t: &Tls, text: &str, what: &str) {
    let file = t.lab.dir().join(format!("{what}.prom"));
    std::fs::write(&file, text).expect("write the exposition");
    let script = format!("promtool check metrics < '{}'", file.display());
    let out = ok(run_host(&["bash", "-c", &script], Duration::from_secs(30)), "promtool");
    if !out.status.success() || !out.stderr.trim().is_empty() {
        t.fail(
            None,
            &format!(
                "promtool check metrics ({what}) exited {}:\n{}{}",
                out.status, out.stdout, out.stderr
            ),
        );
    }
}

/// One decrypted fetch from the client; its body must be the file.
fn fetch(t: &Tls, path: &str, expected_sha: &str) {
    let body = t.lab.dir().join("fetched.bin");
    let url = format!("https://server.lab/{path}");
    let c = t.curl(&["--cacert", t.dca(), "-o", body.to_str().expect("utf-8"), &url]);
    if c.code() != Some(0) || sha256_file(&body) != expected_sha {
        t.fail(None, &format!("decrypted fetch of {url}: {}", c.show()));
    }
}

/// A Prometheus instant query through the HTTP API; the first result's value.
fn query(t: &Tls, promql: &str) -> Option<f64> {
    let url = format!("http://{PROMETHEUS}/api/v1/query");
    let expr = format!("query={promql}");
    let out = ok(
        t.lab.exec(
            Ns::App,
            &["curl", "-sS", "--max-time", "5", "--data-urlencode", &expr, &url],
        ),
        "query Prometheus",
    );
    let answer: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{promql}: not JSON ({e}): {out}"));
    assert_eq!(answer["status"], "success", "{promql}: {answer}");
    answer["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[test]
fn prometheus_scrapes_the_metrics_for_a_minute_and_finds_a_rate() {
    require_root();
    let started = Instant::now();
    let lab = ok(Lab::up(), "lab up");
    let config = format!("[metrics]\nlisten = \"{LISTEN}\"\n");
    let (mut t, _nginx) = setup_with(&lab, Some(&config));
    let big_sha = random_file(&t.www.join("big.bin"), 256 * 1024);

    let before = scrape(&t);
    promtool_check(&t, &before, "idle");
    let bytes = |text: &str| {
        sample(
            text,
            "loupe_tcp_payload_bytes_total{queue=\"0\",direction=\"server_to_client\"}",
        )
        .unwrap_or(0.0)
    };
    let decrypted = |text: &str| sample(text, "loupe_sessions_total{action=\"decrypt\",outcome=\"decrypted\"}");
    for _ in 0..3 {
        fetch(&t, "big.bin", &big_sha);
    }
    // Sessions are counted when they end (the records are written then); the XDP
    // counters are refreshed by the control thread every 250 ms.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let text = scrape(&t);
        let steered = sample(&text, "loupe_xdp_steered_frames_total{port=\"inside\",queue=\"0\"}").unwrap_or(0.0);
        if (decrypted(&text).unwrap_or(0.0) >= 3.0 && steered > 0.0) || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let moved = bytes(&after) - bytes(&before);
    if moved < 3.0 * 256.0 * 1024.0 {
        t.fail(None, &format!("server-to-client bytes moved by {moved} only:\n{after}"));
    }
    if decrypted(&after) != Some(3.0) {
        t.fail(None, &format!("3 decrypted sessions expected:\n{after}"));
    }
    for series in [
        "loupe_tls_handshake_duration_seconds_count",
        "loupe_http_request_duration_seconds_count",
        "loupe_forged_certificate_cache_hits_total",
        "loupe_flows_opened_total{queue=\"0\"}",
        "loupe_xdp_steered_frames_total{port=\"inside\",queue=\"0\"}",
    ] {
        if sample(&after, series).unwrap_or(0.0) < 1.0 {
            t.fail(None, &format!("{series} did not move:\n{after}"));
        }
    }
    promtool_check(&t, &after, "after-fetches");

    // loupectl prints the same families over the control socket.
    let printed = t.mid.loupectl(&["metrics"]).expect("loupectl metrics");
    assert!(printed.status.success(), "loupectl metrics: {}", printed.stderr);
    assert_eq!(
        families(&printed.stdout),
        families(&after),
        "loupectl metrics and GET /metrics differ"
    );
    assert!(decrypted(&printed.stdout) >= Some(3.0), "{}", printed.stdout);
    promtool_check(&t, &printed.stdout, "loupectl");

    // A real Prometheus scrapes every second while a fetch a second flows.
    let data = lab.dir().join("prometheus");
    std::fs::create_dir_all(&data).expect("prometheus data dir");
    let prometheus_config = lab.dir().join("prometheus.yml");
    std::fs::write(
        &prometheus_config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: loupe\n    static_configs:\n      - targets: ['{LISTEN}']\n"
        ),
    )
    .expect("write prometheus.yml");
    let _prometheus = ok(
        lab.spawn(
            Ns::App,
            "prometheus",
            &[
                "prometheus".to_string(),
                format!("--config.file={}", prometheus_config.display()),
                format!("--storage.tsdb.path={}", data.display()),
                format!("--web.listen-address={PROMETHEUS}"),
            ],
        ),
        "start prometheus",
    );
    let scraping_since = Instant::now();
    let mut fetches = 0;
    while scraping_since.elapsed() < SCRAPED_FOR {
        let round = Instant::now();
        fetch(&t, "big.bin", &big_sha);
        fetches += 1;
        std::thread::sleep(Duration::from_secs(1).saturating_sub(round.elapsed()));
    }
    ok(t.mid.check_alive(), "loupe is still running");
    let up = query(&t, "up{job=\"loupe\"}");
    let scrapes = query(&t, "count_over_time(up{job=\"loupe\"}[1m])");
    let rate = query(
        &t,
        "sum(rate(loupe_tcp_payload_bytes_total{direction=\"server_to_client\"}[30s]))",
    );
    let sessions = query(&t, "sum(rate(loupe_sessions_total[30s]))");
    eprintln!(
        "metrics: {fetches} fetches; Prometheus: up={up:?}, {scrapes:?} scrapes in the last minute, \
         rate(bytes)={rate:?} B/s, rate(sessions)={sessions:?}/s; {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(up, Some(1.0), "Prometheus does not see loupe up");
    assert!(scrapes >= Some(45.0), "too few scrapes: {scrapes:?}");
    assert!(rate > Some(100_000.0), "rate of decrypted bytes: {rate:?} B/s");
    assert!(sessions > Some(0.0), "rate of sessions: {sessions:?}/s");
}

#[test]
fn a_metrics_port_already_in_use_stops_the_start_with_the_address() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let config = format!("[metrics]\nlisten = \"{LISTEN}\"\n");
    let (mut t, _nginx) = setup_with(&lab, Some(&config));
    ok(t.mid.stop_daemon(), "stop loupe");
    // Another program holds the port (in the middle namespace) when loupe starts again.
    let holder = format!(
        "import socket, time\ns = socket.socket()\ns.bind(('127.0.0.1', {}))\ns.listen()\nopen('{}', 'w').close()\ntime.sleep(60)\n",
        LISTEN.rsplit(':').next().expect("port"),
        lab.dir().join("holder.ready").display()
    );
    let _holder = ok(
        lab.spawn(Ns::App, "port-holder", &["python3", "-c", &holder]),
        "hold the port",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lab.dir().join("holder.ready").exists() {
        assert!(Instant::now() < deadline, "the port holder did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    let err = match t.mid.restart(&lab) {
        Ok(()) => t.fail(None, "loupe started although its metrics port is taken"),
        Err(err) => format!("{err:#}"),
    };
    for words in [
        "exited during start-up",
        &format!("[metrics] listen = \"{LISTEN}\": cannot listen there"),
        "Address already in use",
    ] {
        assert!(err.contains(words), "no {words:?} in:\n{err}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the refusal took {:?}",
        started.elapsed()
    );
}
