//! `loupectl top` against a daemon that is not running: one line naming the socket, exit
//! code 2, and nothing written to the terminal (no alternate screen, no raw mode). The
//! live view itself is tested under tmux in bench/tests/top.rs.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;

fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("loupectl-top-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn top_against(socket: &Path, expected_reason: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_loupectl"))
        .arg("--socket")
        .arg(socket)
        .arg("top")
        .output()
        .expect("run loupectl top");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "exit status {}; stderr: {stderr}",
        out.status
    );
    assert!(
        out.stdout.is_empty(),
        "wrote to stdout: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr:?}");
    let line = stderr.trim_end();
    for words in [
        socket.to_str().expect("utf-8 path"),
        expected_reason,
        "is loupe running?",
    ] {
        assert!(line.contains(words), "{words:?} missing from {line:?}");
    }
}

#[test]
fn top_without_a_socket_says_so_in_one_line_and_exits_2() {
    let dir = scratch_dir("missing");
    top_against(&dir.join("control.sock"), "No such file or directory");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn top_on_a_socket_nobody_listens_on_says_so_in_one_line_and_exits_2() {
    let dir = scratch_dir("stale");
    let socket = dir.join("control.sock");
    // A daemon that died leaves its socket file behind: connecting is refused.
    drop(UnixListener::bind(&socket).expect("bind a socket"));
    top_against(&socket, "Connection refused");
    let _ = std::fs::remove_dir_all(&dir);
}
