//! The control plane end to end: `loupectl` against a running daemon on its lab's own
//! socket (`<lab dir>/control.sock`), with curl, openssl s_server, nginx and tshark as the
//! peers. Every fix here is applied live: the daemon's pid does not change unless a test
//! restarts it on purpose. Needs root; fails without it.

mod common;

use std::ffi::OsStr;
use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixStream;

use common::*;

/// `loupectl --json ARGS…`'s result; any failure (exit ≠ 0, not JSON) fails the test with
/// loupectl's output and the daemon's logs.
fn ctl(t: &Tls, args: &[&str]) -> Value {
    t.mid
        .loupectl_json(args)
        .unwrap_or_else(|e| t.fail(None, &format!("{e:#}")))
}

/// `loupectl ARGS…` (human output), which must exit 0; its stdout.
fn ctl_text(t: &Tls, args: &[&str]) -> String {
    let out = ok(t.mid.loupectl(args), "run loupectl");
    if !out.status.success() {
        t.fail(
            None,
            &format!(
                "loupectl {} exited {}\nstdout: {}\nstderr: {}",
                args.join(" "),
                out.status,
                out.stdout.trim_end(),
                out.stderr.trim_end()
            ),
        );
    }
    out.stdout
}

/// A `config_version` out of a result or a record.
fn version(t: &Tls, v: &Value, what: &str) -> u64 {
    v["config_version"]
        .as_u64()
        .unwrap_or_else(|| t.fail(Some(v), &format!("{what}: no numeric config_version")))
}

fn daemon_pid(t: &Tls) -> u32 {
    t.mid.pid().expect("loupe is the middle")
}

/// The SHA-256 (hex) of a PEM certificate's DER form, as openssl computes it.
fn openssl_sha256(cert: &Path) -> String {
    let script = format!("openssl x509 -in '{}' -outform DER | sha256sum", cert.display());
    let out = ok(
        run_host(&["bash", "-c", &script], Duration::from_secs(30)).and_then(|o| o.success()),
        "openssl x509 | sha256sum",
    );
    let sha = out.split_whitespace().next().unwrap_or("").to_string();
    assert_eq!(sha.len(), 64, "no SHA-256 from openssl for {}: {out:?}", cert.display());
    sha
}

/// The `loupe-test PORT …` line a `-w '%{stderr}loupe-test %{local_port}\n'` curl wrote.
fn curl_port(stderr: &str) -> u16 {
    stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("loupe-test "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// Established TCP connections from the client namespace to server.lab:443.
fn established_to_origin(t: &Tls) -> usize {
    let out = ok(
        t.lab.exec(
            Ns::Client,
            &[
                "ss",
                "-Htn",
                "state",
                "established",
                "dst",
                "198.18.0.2",
                "dport",
                "=",
                ":443",
            ],
        ),
        "ss in the client namespace",
    );
    out.lines().filter(|l| !l.trim().is_empty()).count()
}

/// The operator's seed workflow, live: a self-signed server is blocked; the error log
/// says why with OpenSSL's words; `trust fetch --accept` shows the chain recorded from the
/// blocked handshake and pins it; the next connection is decrypted under a newer
/// configuration, by the same daemon process.
#[test]
fn a_self_signed_server_is_trusted_live_by_fetch_and_accept() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let (mut t, _nginx) = setup(&lab);
    let leaf = &t.pki.self_signed;
    let _server = ok(
        lab.spawn_s_server(Ns::Server, addr("198.18.0.3"), &leaf.cert_file, &leaf.key_file, &[]),
        "openssl s_server on s2.lab",
    );
    let leaf_sha = openssl_sha256(&leaf.cert_file);
    let pid = daemon_pid(&t);

    let c = t.curl(&["--cacert", t.dca(), "https://s2.lab/"]);
    let blocked = (c.port != 0).then(|| t.record(c.port, "blocked"));
    if c.code() == Some(0) {
        t.fail(
            blocked.as_ref(),
            &format!("a self-signed server must be blocked: {}", c.show()),
        );
    }
    let blocked = blocked.unwrap_or_else(|| t.fail(None, &format!("no connection was made: {}", c.show())));
    t.expect_eq(&blocked, "/outcome", "blocked".into(), "blocked");
    t.expect_eq(&blocked, "/verify/code", 18.into(), "blocked");
    let blocked_version = version(&t, &blocked, "blocked record");

    let errors = ctl_text(&t, &["log", "tail", "--errors"]);
    if !errors.contains("self signed certificate (code 18, depth 0)") {
        t.fail(
            Some(&blocked),
            &format!("`loupectl log tail --errors` does not show the verify error:\n{errors}"),
        );
    }

    // The daemon has no DNS: the host is the address, the name goes in as the SNI.
    let fetched = ctl(&t, &["trust", "fetch", "198.18.0.3", "--sni", "s2.lab", "--accept"]);
    let show = serde_json::to_string_pretty(&fetched).unwrap_or_default();
    if fetched["source"] != "handshake" {
        t.fail(
            Some(&blocked),
            &format!("the chain must come from the recorded handshake:\n{show}"),
        );
    }
    if fetched["chain"][0]["sha256"] != leaf_sha.as_str() {
        t.fail(
            Some(&blocked),
            &format!("the chain's leaf is not the server's certificate ({leaf_sha}):\n{show}"),
        );
    }
    if fetched["accepted"].is_null()
        || fetched["accepted"]["sha256"] != leaf_sha.as_str()
        || fetched["accepted"]["host"] != "s2.lab"
    {
        t.fail(
            Some(&blocked),
            &format!("--accept must pin the leaf for s2.lab:\n{show}"),
        );
    }
    let accepted_version = version(&t, &fetched, "trust fetch --accept");
    if accepted_version <= blocked_version {
        t.fail(
            Some(&blocked),
            &format!("accepting must make a new configuration (blocked under {blocked_version}):\n{show}"),
        );
    }

    let c = t.curl(&["--cacert", t.dca(), "https://s2.lab/"]);
    let rec = (c.port != 0).then(|| t.record(c.port, "after the accept"));
    if c.code() != Some(0) || !c.stdout.contains("s_server") {
        t.fail(
            rec.as_ref(),
            &format!("after the accept, s2.lab must be decrypted: {}", c.show()),
        );
    }
    let rec = rec.expect("a record");
    t.expect_eq(&rec, "/outcome", "decrypted".into(), "after the accept");
    t.expect_eq(&rec, "/verify/trusted", true.into(), "after the accept");
    let new_version = version(&t, &rec, "record after the accept");
    if new_version <= blocked_version || new_version < accepted_version {
        t.fail(
            Some(&rec),
            &format!(
                "config_version {new_version}: must be above the blocked record's {blocked_version} \
                 and at least the accept's {accepted_version}"
            ),
        );
    }
    ok(t.mid.check_alive(), "loupe alive");
    assert_eq!(daemon_pid(&t), pid, "the fix must not need a restart");
}

/// `trust fetch` for a server no session through loupe has reached: loupe probes it from
/// `[control] probe_source` out of the outside port and shows the chain it presented, why
/// it does not verify, and `--accept` pins it; the first connection then decrypts.
#[test]
fn trust_fetch_probes_a_server_no_session_has_reached() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let (t, _nginx) = setup_with(&lab, Some("[control]\nprobe_source = \"198.18.0.1\"\n"));
    let leaf = &t.pki.self_signed;
    let _server = ok(
        lab.spawn_s_server(Ns::Server, addr("198.18.0.3"), &leaf.cert_file, &leaf.key_file, &[]),
        "openssl s_server on s2.lab",
    );
    let leaf_sha = openssl_sha256(&leaf.cert_file);
    // One flow through loupe teaches it the Ethernet addresses a probe sends with.
    let c = t.curl(&["--cacert", t.dca(), "https://server.lab/"]);
    if c.code() != Some(0) {
        t.fail(None, &format!("server.lab through loupe: {}", c.show()));
    }
    let before = ctl(&t, &["status"]);
    let fetched = ctl(&t, &["trust", "fetch", "198.18.0.3", "--sni", "s2.lab", "--accept"]);
    let show = serde_json::to_string_pretty(&fetched).unwrap_or_default();
    if fetched["source"] != "probe" || fetched["chain"][0]["sha256"] != leaf_sha.as_str() {
        t.fail(
            None,
            &format!("the probe must show s2.lab's own certificate ({leaf_sha}):\n{show}"),
        );
    }
    let error = fetched["error"].as_str().unwrap_or_default();
    if !error.contains("self signed certificate (code 18, depth 0)") {
        t.fail(None, &format!("the fetch must say why the chain fails:\n{show}"));
    }
    if fetched["accepted"]["host"] != "s2.lab" || version(&t, &fetched, "fetch") <= version(&t, &before, "status") {
        t.fail(
            None,
            &format!("--accept must pin the leaf for s2.lab in a new version:\n{show}"),
        );
    }
    let c = t.curl(&["--cacert", t.dca(), "https://s2.lab/"]);
    let rec = (c.port != 0).then(|| t.record(c.port, "after the probe's accept"));
    if c.code() != Some(0) {
        t.fail(rec.as_ref(), &format!("s2.lab must now be decrypted: {}", c.show()));
    }
    let rec = rec.expect("a record");
    t.expect_eq(&rec, "/outcome", "decrypted".into(), "after the probe's accept");
    // Without an address there is nothing to probe: loupe resolves no names.
    let out = ok(
        t.mid.loupectl(&["trust", "fetch", "other.lab"]),
        "loupectl trust fetch other.lab",
    );
    if out.status.code() != Some(1) || !out.stderr.contains("give its address") {
        t.fail(
            None,
            &format!("fetching a name nobody reached must say to give the address: {out:?}"),
        );
    }
}

/// The SHA1-only legacy server (ECDHE-RSA-AES128-SHA) is blocked by the default profile;
/// `profile set` fixes it live, and the change survives a restart.
#[test]
fn a_sha1_only_server_is_fixed_live_by_profile_set_and_stays_fixed() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let (mut t, _nginx) = setup(&lab);
    let leaf = &t.pki.sha1_rsa;
    let _sha1 = ok(
        lab.spawn_s_server(
            Ns::Server,
            addr("198.18.0.8"),
            &leaf.cert_file,
            &leaf.key_file,
            &["-cipher", "ECDHE-RSA-AES128-SHA", "-no_tls1_3"],
        ),
        "openssl s_server (SHA1 only) on s7.lab",
    );
    let pid = daemon_pid(&t);

    let c = t.curl(&["--cacert", t.dca(), "https://s7.lab/"]);
    let blocked = (c.port != 0).then(|| t.record(c.port, "default profile"));
    if c.code() != Some(35) {
        t.fail(
            blocked.as_ref(),
            &format!("the default profile must refuse SHA1: {}", c.show()),
        );
    }
    let blocked = blocked.expect("a record");
    t.expect_eq(&blocked, "/profile", "default".into(), "default profile");
    t.expect_eq(&blocked, "/outcome", "blocked".into(), "default profile");
    t.expect_contains(
        &blocked,
        "/reason",
        &["unsupported_cipher = \"block\""],
        "default profile",
    );
    let blocked_version = version(&t, &blocked, "blocked record");

    let set = ctl(
        &t,
        &[
            "profile",
            "set",
            "default",
            "allow_sha1=true",
            "ciphers+=ECDHE-RSA-AES128-SHA",
        ],
    );
    let set_version = version(&t, &set, "profile set");
    let shown = set["profile"].to_string();
    if set_version <= blocked_version || set["profile"]["allow_sha1"] != true || !shown.contains("ECDHE-RSA-AES128-SHA")
    {
        t.fail(
            Some(&blocked),
            &format!("profile set: expected a version above {blocked_version}, allow_sha1 and the suite: {set}"),
        );
    }

    let c = t.curl(&["--cacert", t.dca(), "https://s7.lab/"]);
    let rec = (c.port != 0).then(|| t.record(c.port, "after profile set"));
    if c.code() != Some(0) || !c.stdout.contains("s_server") {
        t.fail(rec.as_ref(), &format!("after profile set: {}", c.show()));
    }
    let rec = rec.expect("a record");
    t.expect_eq(&rec, "/profile", "default".into(), "after profile set");
    t.expect_eq(&rec, "/outcome", "decrypted".into(), "after profile set");
    t.expect_eq(&rec, "/config_version", set_version.into(), "after profile set");
    assert_eq!(daemon_pid(&t), pid, "profile set must not need a restart");

    ok(t.mid.restart(&lab), "restart loupe");
    assert_ne!(daemon_pid(&t), pid, "restart started a new daemon");
    let c = t.curl(&["--cacert", t.dca(), "https://s7.lab/"]);
    let rec = (c.port != 0).then(|| t.record(c.port, "after the restart"));
    if c.code() != Some(0) || !c.stdout.contains("s_server") {
        t.fail(
            rec.as_ref(),
            &format!("the profile change must survive a restart: {}", c.show()),
        );
    }
    t.expect_eq(
        rec.as_ref().expect("a record"),
        "/outcome",
        "decrypted".into(),
        "after the restart",
    );
}

/// A configuration that decrypts the origin by name, or by address; both trust the origin CA.
fn reload_config(t: &Tls, by_name: bool) -> String {
    let matcher = if by_name {
        "sni = [\"server.lab\"]"
    } else {
        "destination = [\"198.18.0.2/32\"]"
    };
    format!(
        "[trust]\nca_files = [\"{}\"]\n\n[[rule]]\nname = \"origin-{}\"\n{matcher}\naction = \"decrypt\"\n",
        t.origin_ca(),
        if by_name { "by-name" } else { "by-address" }
    )
}

/// 100 `policy load`s while a 256 MiB decrypted download and 50 keep-alive connections
/// run: every load answers with a newer version, every byte arrives, every keep-alive
/// connection serves all its requests on one connection, nothing is reset.
#[test]
fn policy_reloads_under_load_lose_no_byte_and_reset_no_connection() {
    const KEEPALIVE: usize = 50;
    const REQUESTS: usize = 40;
    const SMALL: usize = 64 << 10;
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let (mut t, _nginx) = setup(&lab);
    let big_sha = random_file(&t.www.join("big.bin"), 256 << 20);
    random_file(&t.www.join("small.bin"), SMALL);
    // All of one connection's bodies, one after the other, hash to this.
    let small = std::fs::read(t.www.join("small.bin")).expect("small.bin");
    let mut all = Sha256::new();
    for _ in 0..REQUESTS {
        all.update(&small);
    }
    let small_run_sha = hex(&all.finalize());
    let configs = [lab.dir().join("reload-a.toml"), lab.dir().join("reload-b.toml")];
    std::fs::write(&configs[0], reload_config(&t, true)).expect("reload-a.toml");
    std::fs::write(&configs[1], reload_config(&t, false)).expect("reload-b.toml");
    let pid = daemon_pid(&t);

    // Rate-limited so both outlast the reloads even when setting up the 51 connections
    // is slow (up to the 30 s allowed below): ~64 s for the download, ~2 s a request
    // (~80 s a keep-alive connection).
    let download = format!(
        "set -o pipefail; curl -sS --max-time 240 --limit-rate 4M --cacert {} \
         -w '%{{stderr}}loupe-test %{{local_port}}\\n' https://server.lab/big.bin | sha256sum",
        t.dca()
    );
    let mut download = ok(
        lab.spawn(Ns::Client, "curl-download", &["bash", "-c", &download]),
        "start the download",
    );
    let ka = lab.dir().join("keepalive");
    std::fs::create_dir_all(&ka).expect("keepalive dir");
    let keepalive = format!(
        "cd {dir}; for i in $(seq 1 {KEEPALIVE}); do \
           ( set -o pipefail; \
             curl -sS --max-time 240 --limit-rate 32k --cacert {ca} \
               -w '%{{stderr}}ka %{{http_code}} %{{size_download}} %{{num_connects}} %{{local_port}}\\n' \
               'https://server.lab/small.bin?n=[1-{REQUESTS}]' 2>$i.err | sha256sum >$i.sha; \
             echo $? >$i.rc ) & \
         done; wait",
        dir = ka.display(),
        ca = t.dca()
    );
    let mut keepalive = ok(
        lab.spawn(Ns::Client, "curl-keepalive", &["bash", "-c", &keepalive]),
        "start the keep-alive clients",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while established_to_origin(&t) < KEEPALIVE + 1 {
        if Instant::now() >= deadline {
            t.fail(
                None,
                &format!(
                    "only {} of {} connections established after 30 s\n{}{}",
                    established_to_origin(&t),
                    KEEPALIVE + 1,
                    download.logs(),
                    keepalive.logs()
                ),
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    let mut last = 0;
    let started = Instant::now();
    for i in 0..100 {
        let file = configs[i % 2].to_str().expect("path");
        let loaded = ctl(&t, &["policy", "load", file]);
        let v = version(&t, &loaded, "policy load");
        if v <= last {
            t.fail(
                None,
                &format!("policy load #{i}: config_version {v} after {last}: {loaded}"),
            );
        }
        last = v;
    }
    let reloads = started.elapsed();
    eprintln!("100 policy loads in {:.1}s", reloads.as_secs_f64());
    let still_up = established_to_origin(&t);
    if ok(download.try_status(), "download status").is_some()
        || ok(keepalive.try_status(), "keep-alive status").is_some()
        || still_up < KEEPALIVE + 1
    {
        t.fail(
            None,
            &format!(
                "the transfers must outlast the reloads ({reloads:?}); {still_up} connections up\n{}{}",
                download.logs(),
                keepalive.logs()
            ),
        );
    }

    let status = download.wait_timeout(Duration::from_secs(260));
    let got = download.stdout().split_whitespace().next().unwrap_or("").to_string();
    let download_port = curl_port(&download.stderr());
    if !matches!(status, Ok(s) if s.success()) || got != big_sha {
        let rec = (download_port != 0).then(|| t.record(download_port, "download"));
        t.fail(
            rec.as_ref(),
            &format!(
                "download across the reloads: {status:?}, sha256 {got} (want {big_sha})\n{}",
                download.logs()
            ),
        );
    }
    let status = keepalive.wait_timeout(Duration::from_secs(260));
    if !matches!(status, Ok(s) if s.success()) {
        t.fail(None, &format!("keep-alive clients: {status:?}\n{}", keepalive.logs()));
    }
    let mut ports = vec![download_port];
    for i in 1..=KEEPALIVE {
        let read = |ext: &str| std::fs::read_to_string(ka.join(format!("{i}.{ext}"))).unwrap_or_default();
        let (rc, sha, err) = (read("rc"), read("sha"), read("err"));
        let lines: Vec<Vec<&str>> = err
            .lines()
            .filter_map(|l| l.strip_prefix("ka "))
            .map(|l| l.split_whitespace().collect())
            .collect();
        let whole = lines.len() == REQUESTS
            && lines
                .iter()
                .all(|f| f.len() == 4 && f[0] == "200" && f[1] == SMALL.to_string());
        let connects: u32 = lines.iter().filter_map(|f| f.get(2)?.parse::<u32>().ok()).sum();
        let port_set: BTreeSet<&str> = lines.iter().filter_map(|f| f.get(3).copied()).collect();
        let port: u16 = port_set.iter().next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let problem = if rc.trim() != "0" {
            Some(format!("curl exited {}", rc.trim()))
        } else if !whole {
            Some(format!("not {REQUESTS} complete 200 responses of {SMALL} bytes"))
        } else if connects != 1 || port_set.len() != 1 {
            Some(format!("{connects} connects on ports {port_set:?}: keep-alive broke"))
        } else if sha.split_whitespace().next() != Some(small_run_sha.as_str()) {
            Some(format!("bodies hash to {sha:?}, want {small_run_sha}"))
        } else {
            None
        };
        if let Some(problem) = problem {
            let rec = (port != 0).then(|| t.record(port, "keep-alive"));
            t.fail(
                rec.as_ref(),
                &format!("keep-alive client {i}: {problem}\ncurl stderr:\n{err}"),
            );
        }
        ports.push(port);
    }
    for port in ports {
        let rec = t.record(port, "a flow across the reloads");
        t.expect_eq(&rec, "/outcome", "decrypted".into(), "a flow across the reloads");
        let end = rec["end_reason"].as_str().unwrap_or("");
        if end.contains("reset") {
            t.fail(Some(&rec), &format!("client port {port} ended with {end:?}"));
        }
    }
    ok(t.mid.check_alive(), "loupe alive");
    assert_eq!(daemon_pid(&t), pid, "reloads must not restart the daemon");
}

/// `sessions` finds a slow decrypted transfer; `session ID` a second apart shows it
/// live, decrypted, and moving.
#[test]
fn session_detail_shows_a_live_decrypted_transfer_moving() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let (t, _nginx) = setup(&lab);
    let want = random_file(&t.www.join("slow.bin"), 12 << 20);
    let script = format!(
        "set -o pipefail; curl -sS --max-time 120 --limit-rate 1M --cacert {} \
         -w '%{{stderr}}loupe-test %{{local_port}}\\n' https://server.lab/slow.bin | sha256sum",
        t.dca()
    );
    let mut slow = ok(
        lab.spawn(Ns::Client, "curl-slow", &["bash", "-c", &script]),
        "start the slow download",
    );

    let deadline = Instant::now() + Duration::from_secs(5);
    let summary = loop {
        let list = ctl(&t, &["sessions", "--sni", "server.lab"]);
        let sessions = list.as_array().cloned().unwrap_or_default();
        if let Some(s) = sessions.iter().find(|s| s["state"] == "decrypting") {
            if sessions.len() != 1 {
                t.fail(None, &format!("one transfer runs, but sessions lists: {list}"));
            }
            break s.clone();
        }
        if Instant::now() >= deadline {
            t.fail(
                None,
                &format!(
                    "no decrypting session for server.lab within 5 s: {list}\n{}",
                    slow.logs()
                ),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !summary["client"].as_str().is_some_and(|c| c.starts_with("198.18.0.1:"))
        || summary["server"] != "198.18.0.2:443"
        || summary["action"] != "decrypt"
    {
        t.fail(None, &format!("sessions: unexpected summary {summary}"));
    }
    let id = summary["id"]
        .as_u64()
        .unwrap_or_else(|| t.fail(None, &format!("sessions: no numeric id in {summary}")))
        .to_string();

    let first = ctl(&t, &["session", &id]);
    // curl --limit-rate reads in bursts and then sleeps to keep its average: right after
    // the first burst the windows can stay shut for a second or two, so wait for growth.
    let bytes = |d: &Value, dir: &str| d[dir]["bytes"].as_u64().unwrap_or(0);
    let grown_by = Instant::now() + Duration::from_secs(5);
    let second = loop {
        std::thread::sleep(Duration::from_millis(250));
        let now = ctl(&t, &["session", &id]);
        if bytes(&now, "s2c") > bytes(&first, "s2c") || Instant::now() >= grown_by {
            break now;
        }
    };
    for (when, d) in [("first", &first), ("second", &second)] {
        let bad = d["id"].as_u64().map(|i| i.to_string()) != Some(id.clone())
            || d["live"] != true
            || d["decrypted"] != true
            || d["state"] != "decrypting"
            || d["sni"] != "server.lab"
            || !d["tls_version"].is_string()
            || d["c2s"]["to"] != "198.18.0.2:443"
            || d["s2c"]["from"] != "198.18.0.2:443";
        if bad {
            t.fail(
                None,
                &format!(
                    "session {id} ({when} look): expected live, decrypted, decrypting, a TLS version:\n{}",
                    serde_json::to_string_pretty(d).unwrap_or_default()
                ),
            );
        }
    }
    if bytes(&second, "s2c") <= bytes(&first, "s2c") || bytes(&second, "c2s") < bytes(&first, "c2s") {
        t.fail(
            None,
            &format!("session {id}: byte counts must grow within 5 s of transfer:\nfirst: {first}\nsecond: {second}"),
        );
    }

    let status = slow.wait_timeout(Duration::from_secs(130));
    let got = slow.stdout().split_whitespace().next().unwrap_or("").to_string();
    let port = curl_port(&slow.stderr());
    if !matches!(status, Ok(s) if s.success()) || got != want {
        t.fail(
            None,
            &format!("slow download: {status:?}, sha256 {got} (want {want})\n{}", slow.logs()),
        );
    }
    // The session looked at was this download's.
    if first["c2s"]["from"] != format!("198.18.0.1:{port}").as_str() {
        t.fail(
            None,
            &format!("session {id} is not curl's connection from port {port}: {first}"),
        );
    }
    let rec = t.record(port, "slow download");
    t.expect_decrypted(&rec, "TLSv1.3", "slow download");
}

/// One raw request on the control socket and the first reply line, as JSON.
fn raw_reply(stream: &UnixStream, timeout: Duration) -> Result<Value, String> {
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| format!("reading the reply: {e}"))?;
    serde_json::from_str(line.trim_end()).map_err(|e| format!("reply is not JSON ({e}): {line:?}"))
}

fn error_kind(reply: &Result<Value, String>) -> Option<&str> {
    reply.as_ref().ok().filter(|r| r["ok"] == false)?["error"]["kind"].as_str()
}

/// The socket refuses a user who is neither root nor in the control group, and misbehaving
/// clients (a 10 MiB line, not JSON, silence) get precise errors while another client is
/// served at the same time.
#[test]
fn the_control_socket_refuses_strangers_and_survives_misbehaving_clients() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let (mut t, _nginx) = setup(&lab);
    let socket = t.mid.control_socket().expect("loupe has a control socket");

    // A copy nobody (65534) may execute: the workspace's target dir may be closed to it,
    // and then the exec would fail instead of loupectl.
    let ctl_copy = lab.dir().join("loupectl");
    std::fs::copy(binary("loupectl").expect("loupectl binary"), &ctl_copy).expect("copy loupectl");
    std::fs::set_permissions(&ctl_copy, std::fs::Permissions::from_mode(0o755)).expect("chmod loupectl");
    let argv = [
        OsStr::new("setpriv"),
        OsStr::new("--reuid"),
        OsStr::new("65534"),
        OsStr::new("--regid"),
        OsStr::new("65534"),
        OsStr::new("--clear-groups"),
        ctl_copy.as_os_str(),
        OsStr::new("--socket"),
        socket.as_os_str(),
        OsStr::new("status"),
    ];
    let stranger = ok(run_host(&argv, Duration::from_secs(30)), "loupectl as nobody");
    // Refused by the kernel (EACCES on connect: exit 2) or by the daemon (SO_PEERCRED: 1).
    if !matches!(stranger.status.code(), Some(1 | 2)) || !stranger.stderr.trim_start().starts_with("loupectl:") {
        t.fail(
            None,
            &format!(
                "loupectl as uid 65534 must be refused (by the socket's mode or by the daemon) with loupectl's own error: exited {}\nstdout: {}\nstderr: {}",
                stranger.status, stranger.stdout, stranger.stderr
            ),
        );
    }
    // veth has no zero-copy AF_XDP: loupe asked for it, fell back to copy mode, said so in
    // its log and says so in status.
    let status = ctl(&t, &["status"]);
    for worker in status["workers"].as_array().into_iter().flatten() {
        if worker["af_xdp"]["inside"] != "copy" || worker["af_xdp"]["outside"] != "copy" {
            t.fail(None, &format!("veth ports must run AF_XDP in copy mode: {status}"));
        }
    }
    if status["workers"].as_array().is_none_or(Vec::is_empty)
        || !["native", "generic"].contains(&status["xdp_mode"].as_str().unwrap_or(""))
    {
        t.fail(
            None,
            &format!("status must list the workers and the XDP mode in effect: {status}"),
        );
    }
    let logs = t.mid.logs();
    if !logs.contains("zero-copy AF_XDP refused: copy mode") {
        t.fail(None, &format!("the fallback to copy mode must be logged:\n{logs}"));
    }
    let text = ctl_text(&t, &["status"]);
    if !text.contains("copy/copy") {
        t.fail(
            None,
            &format!("loupectl status must show each port's AF_XDP mode:\n{text}"),
        );
    }

    let connect = || {
        UnixStream::connect(&socket).unwrap_or_else(|e| t.fail(None, &format!("connect to {}: {e}", socket.display())))
    };
    std::thread::scope(|s| {
        let silent = connect();
        let opened = Instant::now();
        let silent = s.spawn(move || (raw_reply(&silent, Duration::from_secs(30)), opened.elapsed()));

        let huge = connect();
        let mut writer = huge.try_clone().expect("clone the socket");
        // Bounded: a daemon that neither reads nor closes must not hang the test.
        writer
            .set_write_timeout(Some(Duration::from_secs(30)))
            .expect("write timeout");
        s.spawn(move || {
            use std::io::Write as _;
            let mut line = br#"{"v":1,"verb":"status","pad":""#.to_vec();
            line.resize(line.len() + (10 << 20), b'x');
            line.extend_from_slice(b"\"}\n");
            // The daemon stops reading past its limit and closes: a broken pipe is expected.
            let _ = writer.write_all(&line);
        });
        let huge = s.spawn(move || raw_reply(&huge, Duration::from_secs(30)));

        let garbage = connect();
        let garbage = s.spawn(move || {
            use std::io::Write as _;
            (&garbage)
                .write_all(b"this is {not json\n")
                .map_err(|e| e.to_string())?;
            raw_reply(&garbage, Duration::from_secs(30))
        });

        // Meanwhile, another client is served.
        let meanwhile = t.mid.loupectl_json(&["status"]);
        let silent_pending = !silent.is_finished();

        let huge = huge.join().expect("too-large client");
        let garbage = garbage.join().expect("bad-request client");
        let (silent, waited) = silent.join().expect("silent client");
        let mut problems = Vec::new();
        if let Err(e) = &meanwhile {
            problems.push(format!("status while the others misbehaved: {e:#}"));
        }
        if !silent_pending {
            problems.push("the silent client was answered before status was: not at the same time".to_string());
        }
        if error_kind(&huge) != Some("too-large") {
            problems.push(format!("a 10 MiB line: expected error.kind too-large, got {huge:?}"));
        }
        if error_kind(&garbage) != Some("bad-request") {
            problems.push(format!(
                "invalid JSON: expected error.kind bad-request, got {garbage:?}"
            ));
        }
        if error_kind(&silent) != Some("timeout") || waited < Duration::from_secs(9) || waited > Duration::from_secs(20)
        {
            problems.push(format!(
                "a silent client: expected error.kind timeout after the 10 s idle limit, got {silent:?} after {waited:?}"
            ));
        }
        if !problems.is_empty() {
            t.fail(None, &problems.join("\n"));
        }
    });
    ctl(&t, &["status"]);
    ok(t.mid.check_alive(), "loupe alive");
}

/// `capture start` on the server's address, one curl, `capture stop`: the pcap holds the
/// ClientHello and the ServerHello as tshark reads them.
#[test]
fn capture_records_the_handshake_for_tshark() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let (t, _nginx) = setup(&lab);
    let pcap = lab.dir().join("cap.pcap");
    let pcap_s = pcap.to_str().expect("utf-8 path");
    ctl(
        &t,
        &[
            "capture",
            "start",
            "--host",
            "198.18.0.2",
            "--port",
            "443",
            "--out",
            pcap_s,
        ],
    );
    let c = t.curl(&["--cacert", t.dca(), "https://server.lab/"]);
    if c.code() != Some(0) || c.stdout != INDEX {
        t.fail(None, &format!("curl during the capture: {}", c.show()));
    }
    let stopped = ctl(&t, &["capture", "stop"]);
    if stopped["out"] != pcap_s
        || stopped["frames"].as_u64().unwrap_or(0) == 0
        || stopped["bytes"].as_u64().unwrap_or(0) == 0
        || stopped["dropped"] != 0
    {
        t.fail(
            None,
            &format!("capture stop: expected frames and bytes in {pcap_s}, none dropped: {stopped}"),
        );
    }
    let tshark = |filter: &str, field: &str| {
        let out = ok(
            run_host(
                &["tshark", "-r", pcap_s, "-Y", filter, "-T", "fields", "-e", field],
                Duration::from_secs(60),
            ),
            "tshark",
        );
        if !out.status.success() {
            t.fail(
                None,
                &format!("tshark -r {pcap_s} -Y {filter} exited {}: {}", out.status, out.stderr),
            );
        }
        out.stdout
    };
    let hellos = tshark("tls.handshake.type==1", "tls.handshake.extensions_server_name");
    if !hellos.lines().any(|l| l.trim() == "server.lab") {
        t.fail(
            None,
            &format!("no ClientHello for server.lab in the capture: {hellos:?}"),
        );
    }
    let server_hellos = tshark("tls.handshake.type==2", "ip.src");
    if !server_hellos.lines().any(|l| l.trim() == "198.18.0.2") {
        t.fail(
            None,
            &format!("no ServerHello from 198.18.0.2 in the capture: {server_hellos:?}"),
        );
    }
}

/// A `[timeouts]` configuration with the origin CA trusted (as `reload_config`).
fn timeouts_config(t: &Tls, idle: &str, handshake: &str) -> String {
    format!(
        "[trust]\nca_files = [\"{}\"]\n\n[timeouts]\nidle = \"{idle}\"\nhandshake = \"{handshake}\"\n",
        t.origin_ca()
    )
}

/// Connections to the origin's 443 the server namespace still holds (TIME-WAIT aside).
fn origin_connections(t: &Tls) -> Vec<String> {
    ok(t.lab.open_connections(Ns::Server, 443), "ss in the server namespace")
}

/// The newest record whose end reason starts with `prefix` (waits for it).
fn record_ending(t: &Tls, prefix: &str) -> Value {
    t.wait_record(&format!("end reason {prefix:?}"), |r| {
        r["end_reason"].as_str().is_some_and(|e| e.starts_with(prefix))
    })
}

/// `[timeouts]`: a client that connects and never sends a ClientHello is reset after
/// `handshake`; a decrypted session quiet either way is reset on both sides after `idle`;
/// a loaded policy changes the idle timeout of a session already open, both ways.
#[test]
fn quiet_sessions_are_reset_after_the_configured_timeouts_and_loads_apply_to_open_ones() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let config = "[timeouts]\nidle = \"3s\"\nhandshake = \"2s\"\n";
    let (t, _nginx) = setup_with(&lab, Some(config));

    // A TCP client that says nothing: reset once `handshake` has passed since its SYN.
    let started = Instant::now();
    let mut silent = ok(
        lab.spawn(
            Ns::Client,
            "silent-client",
            &[
                "bash",
                "-c",
                "exec 3<>/dev/tcp/198.18.0.2/443 && exec timeout 20 cat <&3",
            ],
        ),
        "start the silent client",
    );
    let status = ok(silent.wait_timeout(Duration::from_secs(15)), "the silent client ends");
    let took = started.elapsed();
    if status.success() || !silent.stderr().contains("reset") || took < Duration::from_millis(1900) {
        t.fail(
            None,
            &format!(
                "the silent client must be reset about 2 s after connecting; it ended with {status} after {took:?}\n{}",
                silent.logs()
            ),
        );
    }
    let rec = record_ending(&t, "handshake timeout");
    t.expect_eq(&rec, "/outcome", "aborted".into(), "the silent client");
    t.expect_eq(&rec, "/stage", "client_hello".into(), "the silent client");
    t.expect_contains(&rec, "/error", &["no complete ClientHello", "2s"], "the silent client");

    // A decrypted session, idle after its handshake.
    let s_client = format!(
        "exec openssl s_client -connect 198.18.0.2:443 -servername server.lab -CAfile {} \
         -verify_return_error < <(sleep 60)",
        t.dca()
    );
    let mut quiet = ok(
        lab.spawn(Ns::Client, "s_client-quiet", &["bash", "-c", &s_client]),
        "start openssl s_client",
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !quiet.stdout().contains("Verify return code: 0 (ok)") {
        if Instant::now() >= deadline || ok(quiet.try_status(), "s_client status").is_some() {
            t.fail(
                None,
                &format!("s_client did not complete a verified handshake\n{}", quiet.logs()),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // Live: a longer idle timeout reaches the open session, which outlives the old one.
    let file = t.lab.dir().join("timeouts.toml");
    std::fs::write(&file, timeouts_config(&t, "1h", "2s")).expect("write the policy");
    let file = file.display().to_string();
    ctl(&t, &["policy", "load", &file]);
    std::thread::sleep(Duration::from_secs(5));
    if ok(quiet.try_status(), "s_client status").is_some() {
        t.fail(
            None,
            &format!(
                "with idle = \"1h\" loaded, the quiet session must stay open\n{}",
                quiet.logs()
            ),
        );
    }
    let sessions = ctl(&t, &["sessions", "--sni", "server.lab"]);
    let id = sessions
        .as_array()
        .and_then(|s| s.iter().find(|s| s["state"] == "decrypting"))
        .and_then(|s| s["id"].as_u64())
        .unwrap_or_else(|| t.fail(None, &format!("no decrypting session listed: {sessions}")))
        .to_string();
    let detail = ctl(&t, &["session", &id]);
    if detail["idle_timeout_secs"] != 3600 || detail["idle_secs"].as_u64().unwrap_or(0) < 4 {
        t.fail(
            None,
            &format!("session {id}: expected idle for 4 s or more under a 3600 s idle timeout: {detail}"),
        );
    }

    // And back: the open session has been idle longer than 3 s, so it goes at the next
    // sweep, the server's connection with it.
    std::fs::write(&file, timeouts_config(&t, "3s", "2s")).expect("write the policy");
    ctl(&t, &["policy", "load", &file]);
    let status = ok(
        quiet.wait_timeout(Duration::from_secs(5)),
        "s_client ends after the idle timeout",
    );
    // s_client exits with the errno of its failed read: 104 is ECONNRESET.
    if status.code() != Some(104) {
        t.fail(
            None,
            &format!("s_client was not reset: it ended with {status}\n{}", quiet.logs()),
        );
    }
    let rec = record_ending(&t, "idle timeout");
    t.expect_eq(&rec, "/outcome", "decrypted".into(), "the quiet session");
    t.expect_contains(&rec, "/end_reason", &["3s", "both sides reset"], "the quiet session");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = origin_connections(&t);
        if left.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            t.fail(
                Some(&rec),
                &format!("the origin still holds the timed-out session's connection: {left:?}"),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let counters = ctl(&t, &["counters"]);
    if counters["timeouts"]["idle"] != 1 || counters["timeouts"]["handshake"] != 1 {
        t.fail(
            None,
            &format!("counters: expected one timeout of each kind: {}", counters["timeouts"]),
        );
    }
}

/// A rate-limited download of `file` (from the origin's www) in the client namespace,
/// trusting `ca`; prints its SHA-256 and, on stderr, `loupe-test PORT`.
fn spawn_slow_download<'lab>(t: &Tls<'lab>, file: &str, ca: &str) -> NsProcess<'lab> {
    let script = format!(
        "set -o pipefail; curl -sS --max-time 60 --limit-rate 4M --cacert {ca} \
         -w '%{{stderr}}loupe-test %{{local_port}}\\n' https://server.lab/{file} | sha256sum"
    );
    ok(
        t.lab.spawn(Ns::Client, "curl-slow", &["bash", "-c", &script]),
        "start the slow download",
    )
}

/// Waits for a download from [`spawn_slow_download`]; fails unless it completed with
/// the wanted hash. Returns the client's port.
fn finish_download(t: &Tls, p: &mut NsProcess<'_>, want: &str, what: &str) -> u16 {
    let status = p.wait_timeout(Duration::from_secs(70));
    let got = p.stdout().split_whitespace().next().unwrap_or("").to_string();
    if !matches!(status, Ok(s) if s.success()) || got != want {
        t.fail(
            None,
            &format!("{what}: {status:?}, sha256 {got} (want {want})\n{}", p.logs()),
        );
    }
    curl_port(&p.stderr())
}

fn pinned_against_entries(t: &Tls) -> u64 {
    let c = ctl(t, &["counters"]);
    c["xdp"]["pinned_against_entries"]
        .as_u64()
        .unwrap_or_else(|| t.fail(None, &format!("counters: no xdp.pinned_against_entries in {c}")))
}

/// A policy load that adds or removes an address no-decrypt rule (an XDP entry) applies
/// to new connections only: a decrypted download under way is not bridged in the middle
/// of its stream, nor a bridged one thrown at a worker that never saw its handshake.
/// Both finish intact, and new connections follow the new policy.
#[test]
fn address_bypass_changes_leave_open_connections_as_they_started() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let (t, _nginx) = setup(&lab);
    let want = random_file(&t.www.join("slow.bin"), 12 << 20);
    let decrypting = format!("[trust]\nca_files = [\"{}\"]\n", t.origin_ca());
    let bypassing = format!(
        "{decrypting}\n[[rule]]\nname = \"origin-bypass\"\ndestination = [\"198.18.0.2/32\"]\naction = \"no-decrypt\"\n"
    );
    let file = lab.dir().join("policy.toml");
    let load = |text: &str| {
        std::fs::write(&file, text).expect("write the policy");
        ctl(&t, &["policy", "load", &file.display().to_string()]);
    };

    // Decrypted download; the bypass rule arrives in the middle of it.
    let mut download = spawn_slow_download(&t, "slow.bin", t.dca());
    std::thread::sleep(Duration::from_millis(1500));
    let pinned_before = pinned_against_entries(&t);
    load(&bypassing);
    let port = finish_download(
        &t,
        &mut download,
        &want,
        "the decrypted download across the bypass load",
    );
    let rec = t.record(port, "the decrypted download across the bypass load");
    t.expect_eq(&rec, "/outcome", "decrypted".into(), "the download across the load");
    t.expect_eq(&rec, "/end_reason", "closed".into(), "the download across the load");
    if pinned_against_entries(&t) <= pinned_before {
        t.fail(
            Some(&rec),
            "its segments after the load must count as pinned against the entries",
        );
    }
    // A new connection is bridged: the client sees the origin's own certificate.
    let c = t.curl(&["--cacert", t.origin_ca(), "https://server.lab/"]);
    if c.code() != Some(0) {
        t.fail(
            None,
            &format!("a new connection must be bridged after the load: {}", c.show()),
        );
    }

    // Bridged download; the rule goes away in the middle of it.
    let mut download = spawn_slow_download(&t, "slow.bin", t.origin_ca());
    std::thread::sleep(Duration::from_millis(1500));
    let pinned_before = pinned_against_entries(&t);
    load(&decrypting);
    finish_download(&t, &mut download, &want, "the bridged download across the removal");
    if pinned_against_entries(&t) <= pinned_before {
        t.fail(
            None,
            "the bridged download's segments after the removal must count as pinned",
        );
    }
    // A new connection is decrypted again.
    let c = t.curl(&["--cacert", t.dca(), "https://server.lab/"]);
    let rec = (c.port != 0).then(|| t.record(c.port, "a new connection after the removal"));
    if c.code() != Some(0) {
        t.fail(
            rec.as_ref(),
            &format!("a new connection must be decrypted after the removal: {}", c.show()),
        );
    }
    t.expect_eq(
        rec.as_ref().expect("a record"),
        "/outcome",
        "decrypted".into(),
        "after the removal",
    );
}

/// The capability sets of one thread from its /proc status: (name, hex mask) for
/// CapInh, CapPrm, CapEff, CapBnd, CapAmb, and NoNewPrivs.
fn thread_privileges(status: &str) -> Vec<(String, String)> {
    status
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(name, _)| name.starts_with("Cap") || *name == "NoNewPrivs")
        .map(|(name, value)| (name.to_string(), value.trim().to_string()))
        .collect()
}

/// After start-up the daemon keeps no capability (README, "Privileges"): every one of its
/// threads has empty inheritable, permitted, effective, ambient and bounding sets and
/// no_new_privs, although it was started with root's full sets, and it still decrypts,
/// applies a policy load that writes an XDP entry, and serves its socket.
#[test]
fn the_running_daemon_keeps_no_capability_in_any_thread() {
    require_root();
    let own = ok(
        std::fs::read_to_string("/proc/self/status").map_err(anyhow::Error::from),
        "read this test's /proc status",
    );
    let own_bounding = thread_privileges(&own)
        .into_iter()
        .find(|(name, _)| name == "CapBnd")
        .map(|(_, mask)| mask)
        .unwrap_or_default();
    assert_ne!(
        own_bounding.trim_start_matches('0'),
        "",
        "the test (the daemon's launcher) must hold capabilities for this to mean anything"
    );
    let lab = ok(Lab::up(), "lab up");
    let (t, _nginx) = setup(&lab);
    let c = t.curl(&["--cacert", t.dca(), "https://server.lab/"]);
    if c.code() != Some(0) {
        t.fail(None, &format!("decrypted fetch: {}", c.show()));
    }
    let file = lab.dir().join("policy.toml");
    std::fs::write(
        &file,
        format!(
            "[trust]\nca_files = [\"{}\"]\n\n[[rule]]\nname = \"origin-bypass\"\ndestination = [\"198.18.0.2/32\"]\naction = \"no-decrypt\"\n",
            t.origin_ca()
        ),
    )
    .expect("write the policy");
    ctl(&t, &["policy", "load", &file.display().to_string()]);
    let c = t.curl(&["--cacert", t.origin_ca(), "https://server.lab/"]);
    if c.code() != Some(0) {
        t.fail(None, &format!("bridged by the XDP entry the load wrote: {}", c.show()));
    }
    let tasks = format!("/proc/{}/task", daemon_pid(&t));
    let mut threads = Vec::new();
    for entry in ok(
        std::fs::read_dir(&tasks).map_err(anyhow::Error::from),
        "list the daemon's threads",
    ) {
        let dir = entry.expect("a task entry").path();
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        threads.push((name.trim().to_string(), thread_privileges(&status)));
    }
    assert!(
        threads.iter().any(|(name, _)| name.starts_with("loupe-worker")),
        "no worker thread among {threads:?}"
    );
    for (name, privileges) in &threads {
        assert_eq!(privileges.len(), 6, "thread {name}: {privileges:?}");
        for (set, value) in privileges {
            let want = if set == "NoNewPrivs" { "1" } else { "0000000000000000" };
            if value != want {
                t.fail(
                    None,
                    &format!("thread {name}: {set} is {value}, want {want}; all threads: {threads:?}"),
                );
            }
        }
    }
    if !t.mid.logs().contains("capabilities dropped") {
        t.fail(None, "the start-up log must say the capabilities were dropped");
    }
    eprintln!("{} daemon threads, none with a capability", threads.len());
}
