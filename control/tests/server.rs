//! The control socket end to end: a ControlServer on a temporary path with a fake
//! control thread, driven by ControlClient, raw sockets and the loupectl binary.
//! Runs as root (the permission tests switch to uid 65534 with setpriv).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use loupe_control::client::{ClientError, ControlClient};
use loupe_control::protocol::{ControlCall, ErrorKind, ReplyLine, Request};
use loupe_control::server::{ControlServer, ServerSettings};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A unique directory under the temp dir, reachable by every uid.
fn unique_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "loupe-ctl-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A running server with a fake control thread that answers `{"echo": VERB}`.
struct Harness {
    dir: PathBuf,
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Harness {
    fn start(tag: &str, tweak: impl FnOnce(&mut ServerSettings)) -> Harness {
        let dir = unique_dir(tag);
        let socket = dir.join("run").join("control.sock");
        let mut settings = ServerSettings {
            path: socket.clone(),
            log_file: dir.join("decryption.jsonl"),
            ..ServerSettings::default()
        };
        tweak(&mut settings);
        let server = ControlServer::bind(settings).expect("bind");
        let (calls, incoming) = crossbeam_channel::unbounded::<ControlCall>();
        std::thread::spawn(move || {
            for call in incoming {
                let verb = serde_json::to_value(&call.request).unwrap()["verb"].clone();
                let _ = call.reply.send(Ok(json!({ "echo": verb, "uid": call.peer.uid })));
            }
        });
        let stop = Arc::new(AtomicBool::new(false));
        let accept = server.spawn(calls, stop.clone()).expect("spawn");
        Harness {
            dir,
            socket,
            stop,
            accept: Some(accept),
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.join("decryption.jsonl")
    }

    fn raw(&self) -> (UnixStream, BufReader<UnixStream>) {
        let stream = UnixStream::connect(&self.socket).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        (stream, reader)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        let socket_left = self.socket.exists();
        let _ = std::fs::remove_dir_all(&self.dir);
        if !std::thread::panicking() {
            assert!(!socket_left, "the server left its socket behind");
        }
    }
}

fn read_reply(reader: &mut BufReader<UnixStream>) -> ReplyLine {
    let mut line = String::new();
    reader.read_line(&mut line).expect("a reply line");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply {line:?}: {e}"))
}

/// True when the server closed the connection (EOF or reset, never more data).
fn closed(reader: &mut BufReader<UnixStream>) -> bool {
    let mut rest = Vec::new();
    match reader.read_to_end(&mut rest) {
        Ok(_) => rest.is_empty(),
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

#[test]
fn status_round_trips() {
    let harness = Harness::start("status", |_| {});
    let mut client = ControlClient::connect(&harness.socket).unwrap();
    assert_eq!(
        client.call(Request::Status).unwrap(),
        json!({"echo": "status", "uid": 0})
    );
    // The same connection serves the next request too.
    assert_eq!(client.call(Request::Counters).unwrap()["echo"], "counters");
    // The socket is 0660.
    let mode = std::fs::metadata(&harness.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660);
}

#[test]
fn malformed_lines_get_errors_and_the_connection_stays() {
    let harness = Harness::start("badjson", |_| {});
    let (mut stream, mut reader) = harness.raw();
    stream.write_all(b"{this is not json\n").unwrap();
    let reply = read_reply(&mut reader);
    assert!(!reply.ok);
    assert_eq!(reply.error.unwrap().kind, ErrorKind::BadRequest);
    // Unknown verb: the id is echoed.
    stream
        .write_all(b"\n\r\n{\"v\":1,\"id\":4,\"verb\":\"launch\"}\n")
        .unwrap();
    let reply = read_reply(&mut reader);
    assert_eq!((reply.id, reply.error.unwrap().kind), (Some(4), ErrorKind::BadRequest));
    // Still served.
    stream.write_all(b"{\"v\":1,\"id\":5,\"verb\":\"status\"}\n").unwrap();
    let reply = read_reply(&mut reader);
    assert!(reply.ok, "{reply:?}");
    assert_eq!(reply.id, Some(5));
    assert_eq!(reply.result.unwrap()["echo"], "status");
}

#[test]
fn an_oversized_line_is_refused_and_closed_while_others_are_served() {
    let harness = Harness::start("toolarge", |_| {});
    let (mut big, mut big_reader) = harness.raw();
    let mut client = ControlClient::connect(&harness.socket).unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 20];
        let mut written = 0usize;
        for _ in 0..10 {
            match big.write_all(&chunk) {
                Ok(()) => written += chunk.len(),
                Err(_) => break, // the server closed on us, as it should
            }
        }
        written
    });
    let reply = read_reply(&mut big_reader);
    assert_eq!(reply.error.unwrap().kind, ErrorKind::TooLarge);
    assert!(closed(&mut big_reader), "connection still open after too-large");
    let written = writer.join().unwrap();
    // The server did not swallow the whole 10 MiB: it stopped at the cap.
    assert!(written < 10 << 20, "all {written} bytes were accepted");
    assert_eq!(client.call(Request::Status).unwrap()["echo"], "status");
}

#[test]
fn a_silent_client_times_out_while_others_are_served() {
    let harness = Harness::start("idle", |s| s.idle_timeout = Duration::from_secs(1));
    let started = Instant::now();
    let (_silent, mut silent_reader) = harness.raw();
    let mut client = ControlClient::connect(&harness.socket).unwrap();
    assert_eq!(client.call(Request::Status).unwrap()["echo"], "status");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "served only after the silent one"
    );
    let reply = read_reply(&mut silent_reader);
    let elapsed = started.elapsed();
    let error = reply.error.unwrap();
    assert_eq!(error.kind, ErrorKind::Timeout);
    assert!(error.message.contains("1 s"), "{}", error.message);
    assert!(
        elapsed >= Duration::from_millis(950) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    assert!(closed(&mut silent_reader));
}

#[test]
fn too_many_connections_are_refused() {
    let harness = Harness::start("busy", |s| s.max_connections = 1);
    let (_first, _first_reader) = harness.raw();
    std::thread::sleep(Duration::from_millis(300)); // the first is being served
    let (_second, mut second_reader) = harness.raw();
    let error = read_reply(&mut second_reader).error.unwrap();
    assert!(error.message.contains("too many connections"), "{}", error.message);
    assert!(closed(&mut second_reader));
}

#[test]
fn the_control_thread_gone_is_a_failed_reply() {
    let dir = unique_dir("gone");
    let socket = dir.join("control.sock");
    let server = ControlServer::bind(ServerSettings {
        path: socket.clone(),
        ..ServerSettings::default()
    })
    .unwrap();
    let (calls, incoming) = crossbeam_channel::unbounded::<ControlCall>();
    drop(incoming);
    let stop = Arc::new(AtomicBool::new(false));
    let accept = server.spawn(calls, stop.clone()).unwrap();
    let mut client = ControlClient::connect(&socket).unwrap();
    match client.call(Request::Status) {
        Err(ClientError::Refused(error)) => assert_eq!(error.kind, ErrorKind::Failed),
        other => panic!("{other:?}"),
    }
    stop.store(true, Ordering::Relaxed);
    accept.join().unwrap();
    assert!(!socket.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// loupectl, copied where uid 65534 can run it.
fn loupectl_for_all(dir: &Path) -> PathBuf {
    let bin = dir.join("loupectl");
    std::fs::copy(env!("CARGO_BIN_EXE_loupectl"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

fn loupectl_as(ids: &[&str], bin: &Path, socket: &Path, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(ids)
        .arg(bin)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("setpriv (util-linux) runs")
}

#[test]
fn a_non_root_uid_is_refused_by_peer_credentials() {
    let harness = Harness::start("nonroot", |_| {});
    // With mode 0660 root:root, uid 65534 could not even connect (EACCES) and the
    // SO_PEERCRED check would never be reached. Open the file mode up so that the
    // connect succeeds and the server's own refusal is what this test sees.
    std::fs::set_permissions(&harness.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let bin = loupectl_for_all(&harness.dir);
    let out = loupectl_as(
        &["--reuid", "65534", "--regid", "65534", "--clear-groups"],
        &bin,
        &harness.socket,
        &["status"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("uid 65534") && stderr.contains("not root"), "{stderr}");
    assert!(out.stdout.is_empty());
}

/// A throwaway system group, deleted on drop.
struct TempGroup {
    name: String,
    gid: u32,
}

impl TempGroup {
    fn create() -> TempGroup {
        let name = format!("loupe-test-{}", std::process::id());
        let _ = Command::new("groupdel").arg(&name).output();
        let status = Command::new("groupadd")
            .args(["--system", &name])
            .status()
            .expect("groupadd runs");
        assert!(status.success(), "groupadd {name} failed");
        let gid = loupe_control::server::lookup_group(&name).expect("the new group resolves");
        TempGroup { name, gid }
    }
}

impl Drop for TempGroup {
    fn drop(&mut self) {
        let _ = Command::new("groupdel").arg(&self.name).status();
    }
}

#[test]
fn members_of_the_control_group_are_served() {
    let group = TempGroup::create();
    let name = group.name.clone();
    let harness = Harness::start("group", |s| s.group = Some(name));
    let meta = std::fs::metadata(&harness.socket).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), group.gid);
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let bin = loupectl_for_all(&harness.dir);
    let gid = group.gid.to_string();
    // The group as the primary gid, and as a supplementary group only.
    for ids in [
        &["--reuid", "65534", "--regid", &gid, "--clear-groups"][..],
        &["--reuid", "65534", "--regid", "65534", "--groups", &gid][..],
    ] {
        let out = loupectl_as(ids, &bin, &harness.socket, &["--json", "status"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{ids:?}: {stderr}");
        let result: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(result, json!({"echo": "status", "uid": 65534}));
    }
    // Not in the group: the file mode already keeps it out (connection error, 2).
    let out = loupectl_as(
        &["--reuid", "65534", "--regid", "65534", "--clear-groups"],
        &bin,
        &harness.socket,
        &["status"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
}

fn record(id: u64, outcome: &str, sni: &str, error: Option<&str>) -> String {
    json!({
        "time": "2026-05-01T10:00:00Z", "session_id": id,
        "client_ip": "198.18.0.1", "client_port": 40000 + id, "server_ip": "198.18.0.2", "server_port": 443,
        "sni": sni, "rule": "all", "action": "decrypt", "outcome": outcome, "error": error
    })
    .to_string()
        + "\n"
}

fn tail(client: &mut ControlClient, lines: usize, errors: bool, sni: Option<&str>) -> Vec<u64> {
    let mut ids = Vec::new();
    client
        .stream(
            Request::LogTail {
                follow: false,
                errors,
                sni: sni.map(String::from),
                lines,
                http: false,
            },
            |record| {
                ids.push(record["session_id"].as_u64().unwrap());
                true
            },
        )
        .unwrap();
    ids
}

#[test]
fn log_tail_filters_and_follows() {
    let harness = Harness::start("log", |_| {});
    let mut client = ControlClient::connect(&harness.socket).unwrap();
    // No log yet: zero records, not an error.
    assert!(tail(&mut client, 5, false, None).is_empty());
    let mut text = String::new();
    for id in 1..=10 {
        text += &match id {
            3 => record(
                id,
                "aborted",
                "self.lab",
                Some("certificate verify failed: self signed certificate (code 18, depth 0)"),
            ),
            6 => record(id, "blocked", "bad.lab", None),
            8 => record(id, "spliced", "x.lab", Some("upstream reset")),
            _ => record(id, "decrypted", &format!("h{id}.lab"), None),
        };
    }
    std::fs::write(harness.log(), &text).unwrap();
    assert_eq!(tail(&mut client, 3, false, None), vec![8, 9, 10]);
    assert_eq!(tail(&mut client, 2, true, None), vec![6, 8]);
    assert_eq!(tail(&mut client, 20, true, None), vec![3, 6, 8]);
    assert_eq!(tail(&mut client, 20, false, Some("*.lab")).len(), 10);
    assert_eq!(tail(&mut client, 20, false, Some("self.lab")), vec![3]);

    // loupectl: one JSON record per line, and the human line.
    let out = Command::new(env!("CARGO_BIN_EXE_loupectl"))
        .arg("--socket")
        .arg(&harness.socket)
        .args(["--json", "log", "tail", "-n", "2", "--errors"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.iter().map(|r| r["session_id"].clone()).collect::<Vec<_>>(),
        [json!(6), json!(8)]
    );
    let out = Command::new(env!("CARGO_BIN_EXE_loupectl"))
        .arg("--socket")
        .arg(&harness.socket)
        .args(["log", "tail", "--sni", "self.lab"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "2026-05-01T10:00:00Z 3 aborted decrypt 198.18.0.1:40003 -> 198.18.0.2:443 self.lab rule=all \
         certificate verify failed: self signed certificate (code 18, depth 0)\n"
    );

    // Follow: the last record, then one appended later (written in two pieces).
    let (seen, records) = crossbeam_channel::unbounded();
    let socket = harness.socket.clone();
    let follower = std::thread::spawn(move || {
        let mut client = ControlClient::connect(&socket).unwrap();
        client.stream(
            Request::LogTail {
                follow: true,
                errors: false,
                sni: None,
                lines: 1,
                http: false,
            },
            |record| {
                let id = record["session_id"].as_u64().unwrap();
                seen.send(id).unwrap();
                id != 11
            },
        )
    });
    let wait = Duration::from_secs(5);
    assert_eq!(records.recv_timeout(wait).unwrap(), 10);
    let line = record(11, "decrypted", "late.lab", None);
    let mut log = std::fs::OpenOptions::new().append(true).open(harness.log()).unwrap();
    log.write_all(&line.as_bytes()[..20]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(records.try_recv().is_err(), "an unfinished line was sent");
    log.write_all(&line.as_bytes()[20..]).unwrap();
    assert_eq!(records.recv_timeout(wait).unwrap(), 11);
    follower.join().unwrap().unwrap();
}

#[test]
fn loupectl_reports_connection_errors_with_exit_2() {
    let dir = unique_dir("noserver");
    let socket = dir.join("control.sock");
    let out = Command::new(env!("CARGO_BIN_EXE_loupectl"))
        .arg("--socket")
        .arg(&socket)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "cannot connect to {}: No such file or directory (is loupe running?)",
            socket.display()
        )),
        "{stderr}"
    );
    // LOUPE_SOCKET is used when --socket is not given.
    let out = Command::new(env!("CARGO_BIN_EXE_loupectl"))
        .env("LOUPE_SOCKET", &socket)
        .arg("status")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains(&*socket.to_string_lossy()));
    // Usage errors are 2 as well.
    let out = Command::new(env!("CARGO_BIN_EXE_loupectl"))
        .arg("launch")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
