use serde_json::json;

use super::*;

/// A `counters` result with one worker, shaped as the daemon sends it.
fn counters(ended: [u64; 4], opened: u64, c2s: u64, s2c: u64, rx: u64) -> Value {
    json!({
        "config_version": 3,
        "handshakes": {"decrypted": ended[0], "spliced": ended[1], "blocked": ended[2], "aborted": ended[3]},
        "workers": [
            {"queue": 0, "rx_frames": rx, "tx_frames": rx / 2, "flows_opened": opened, "flows_active": 2,
             "bytes_client_to_server": c2s, "bytes_server_to_client": s2c, "load": 0.25},
        ],
    })
}

fn snapshot(value: &Value) -> CounterSnapshot {
    CounterSnapshot::from_counters(value).expect("a counters object")
}

fn distrusting_client(session_id: u64, time: &str) -> Value {
    json!({
        "time": time, "session_id": session_id, "sni": "server.lab",
        "server_ip": "198.18.0.2", "server_port": 443,
        "outcome": "aborted", "stage": "client_handshake",
        "error": "alert received from client: fatal unknown_ca (48)",
        "diagnosis": "The client refused the certificate loupe presented for server.lab with fatal alert unknown_ca (48): it does not trust loupe's decryption CA.",
        "remedy": "To decrypt this client, install the CA from 'loupe ca show' on the client.",
    })
}

fn decrypted(session_id: u64, sni: &str) -> Value {
    json!({"time": "2026-05-01T10:00:00.000Z", "session_id": session_id, "sni": sni,
           "outcome": "decrypted", "stage": null, "error": null})
}

/// Two refreshes one second apart: 2 sessions/s, 1.5 kB/s up, one failure.
pub(in crate::top) fn dashboard_with_traffic() -> Dashboard {
    let mut dashboard = Dashboard::new("/run/loupe/control.sock".into(), Duration::from_secs(1));
    let first = Sample {
        counters: counters([10, 0, 0, 1], 11, 10_000, 100_000, 500),
        ..Sample::default()
    };
    dashboard.update(&first, Duration::ZERO).expect("first refresh");
    let second = Sample {
        counters: counters([11, 0, 0, 2], 13, 11_500, 200_000, 700),
        sessions: json!([{"sni": "server.lab"}, {"sni": "shop.lab"}]),
        records: json!([decrypted(1, "server.lab"), decrypted(2, "server.lab")]),
        failures: json!([distrusting_client(3, "2026-05-01T10:00:01.250Z")]),
        http: json!([{"event_type": "http", "http": {"hostname": "shop.lab"}}]),
    };
    dashboard
        .update(&second, Duration::from_secs(1))
        .expect("second refresh");
    dashboard
}

#[test]
fn rates_are_differences_over_the_elapsed_time() {
    let before = snapshot(&counters([10, 1, 0, 0], 100, 1_000, 5_000, 1_000));
    let after = snapshot(&counters([14, 1, 2, 0], 110, 3_000, 25_000, 1_400));
    let r = rates(&before, &after, Duration::from_secs(2)).expect("rates");
    assert_eq!(r.sessions, 3.0);
    assert_eq!((r.decrypted, r.spliced, r.blocked, r.aborted), (2.0, 0.0, 1.0, 0.0));
    assert_eq!(r.new_flows, 5.0);
    assert_eq!(r.bytes_client_to_server, 1_000.0);
    assert_eq!(r.bytes_server_to_client, 10_000.0);
    assert_eq!(r.workers.len(), 1);
    assert_eq!((r.workers[0].rx_frames, r.workers[0].tx_frames), (200.0, 100.0));
    assert_eq!(r.workers[0].new_flows, 5.0);
    assert_eq!(r.workers[0].load, 0.25);
    assert_eq!(r.workers[0].flows_active, 2);
}

#[test]
fn no_rates_across_a_restart_or_without_elapsed_time() {
    let before = snapshot(&counters([10, 0, 0, 0], 100, 1_000, 5_000, 1_000));
    let restarted = snapshot(&counters([1, 0, 0, 0], 2, 10, 50, 20));
    assert_eq!(rates(&before, &restarted, Duration::from_secs(1)), None);
    assert_eq!(rates(&before, &before, Duration::ZERO), None);
    assert!(rates(&before, &before, Duration::from_secs(1)).is_some());
}

#[test]
fn a_new_worker_has_no_rate_until_it_was_seen_twice() {
    let before = snapshot(&json!({"workers": []}));
    let after = snapshot(&counters([0, 0, 0, 0], 5, 0, 0, 50));
    let r = rates(&before, &after, Duration::from_secs(1)).expect("rates");
    assert_eq!(r.workers[0].rx_frames, 0.0);
    assert_eq!(r.workers[0].flows_active, 2);
}

#[test]
fn counters_that_are_not_an_object_are_an_error_and_missing_ones_zero() {
    assert!(CounterSnapshot::from_counters(&json!("nonsense")).is_err());
    assert_eq!(snapshot(&json!({})), CounterSnapshot::default());
}

#[test]
fn ranking_counts_both_sources_most_first_then_by_name() {
    let ranked = rank(["b.lab", "a.lab", ""], ["c.lab", "c.lab", "b.lab", "a.lab", "c.lab"], 2);
    assert_eq!(
        ranked,
        vec![
            Ranked {
                name: "c.lab".into(),
                live: 0,
                recent: 3
            },
            Ranked {
                name: "a.lab".into(),
                live: 1,
                recent: 1
            },
        ]
    );
    assert!(rank([], [], 5).is_empty());
}

#[test]
fn failures_are_blocked_aborted_or_errors_newest_first() {
    let mut with_error = decrypted(5, "odd.lab");
    with_error["error"] = json!("the server reset the connection");
    let blocked = json!({"session_id": 4, "outcome": "blocked", "sni": "s2.lab", "error": null});
    let records = vec![
        decrypted(1, "server.lab"),
        distrusting_client(2, "2026-05-01T10:00:02.000Z"),
        blocked,
        json!({"session_id": 3, "outcome": "spliced", "error": null}),
        with_error,
    ];
    let failures = latest_failures(&records, 10);
    let ids: Vec<u64> = failures.iter().map(|f| f.session_id).collect();
    assert_eq!(ids, vec![5, 4, 2]);
    assert_eq!(latest_failures(&records, 1).len(), 1);
    let client = &failures[2];
    assert_eq!(client.time, "10:00:02");
    assert_eq!(client.server, "198.18.0.2:443");
    assert_eq!(
        client.headline(),
        "10:00:02 server.lab aborted at client_handshake: alert received from client: fatal unknown_ca (48)"
    );
    assert!(client.diagnosis.contains("does not trust loupe's decryption CA"));
    assert!(client.remedy.starts_with("To decrypt this client"));
}

#[test]
fn the_dashboard_follows_the_newest_failure_or_keeps_the_picked_one() {
    let mut dashboard = dashboard_with_traffic();
    assert_eq!(dashboard.rates.as_ref().map(|r| r.sessions), Some(2.0));
    assert_eq!(dashboard.config_version, Some(3));
    assert_eq!(dashboard.snis[0].name, "server.lab");
    assert_eq!((dashboard.snis[0].live, dashboard.snis[0].recent), (1, 2));
    assert_eq!(dashboard.hosts[0].name, "shop.lab");
    assert_eq!(dashboard.failures.len(), 1);

    let failures = |ids: &[u64]| {
        Value::Array(
            ids.iter()
                .map(|&id| distrusting_client(id, "2026-05-01T10:00:03.000Z"))
                .collect(),
        )
    };
    let mut sample = Sample {
        counters: counters([12, 0, 0, 3], 14, 12_000, 210_000, 800),
        failures: failures(&[3, 4]),
        ..Sample::default()
    };
    dashboard.update(&sample, Duration::from_secs(1)).unwrap();
    assert_eq!(
        dashboard.failures[dashboard.selected].session_id, 4,
        "follows the newest"
    );
    dashboard.select_older();
    dashboard.select_older();
    assert_eq!(dashboard.failures[dashboard.selected].session_id, 3);
    sample.failures = failures(&[3, 4, 5]);
    dashboard.update(&sample, Duration::from_secs(1)).unwrap();
    assert_eq!(
        dashboard.failures[dashboard.selected].session_id, 3,
        "keeps the picked one"
    );
    dashboard.select_newer();
    dashboard.select_newer();
    dashboard.select_newer();
    assert_eq!(dashboard.selected, 0);
    // A single streamed record arrives as an object, not an array.
    sample.failures = distrusting_client(9, "2026-05-01T10:00:04.000Z");
    dashboard.update(&sample, Duration::from_secs(1)).unwrap();
    assert_eq!(dashboard.failures.len(), 1);
}
