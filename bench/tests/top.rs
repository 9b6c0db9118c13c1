//! `loupectl top` as an operator sees it: the live view runs inside tmux (a 120x40 pane)
//! against a lab daemon's socket while curl makes decrypted sessions and one client that
//! does not trust the decryption CA fails, then while the daemon is stopped; the screen
//! is read with `tmux capture-pane`. Needs root; fails without it.

mod common;

use common::*;

/// Pane size the view is drawn at.
const COLUMNS: u16 = 120;
const ROWS: u16 = 40;
/// How long the screen may take to show what the traffic did.
const SCREEN_DEADLINE: Duration = Duration::from_secs(20);

/// A tmux server of this test's own (its socket under the lab directory), so that no
/// other tmux is touched; killed, with everything it runs, when dropped.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> CommandOutput {
        let mut argv = vec!["tmux", "-S", self.socket.to_str().expect("utf-8 path")];
        argv.extend_from_slice(args);
        ok(run_host(&argv, Duration::from_secs(10)), "run tmux")
    }

    /// What the pane shows now, one line per row.
    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"]).stdout
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = run_host(
            &["tmux", "-S", self.socket.to_str().unwrap_or_default(), "kill-server"],
            Duration::from_secs(10),
        );
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// A process stopped with SIGSTOP for as long as this lives; continued when dropped (a
/// failed assertion included), so the lab can stop it as usual.
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Stopped {
        // SAFETY: kill(2) on the daemon this test started.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0, "kill -STOP {pid}");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}

/// The screen as running text: borders dropped and rows joined, so a sentence wrapped
/// over several rows of a panel reads whole.
fn running_text(screen: &str) -> String {
    screen
        .replace(['│', '─', '┌', '┐', '└', '┘'], " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The figure after `sessions/s ` on the screen, if it is a number.
fn sessions_per_second(screen: &str) -> Option<f64> {
    let (_, after) = screen.split_once("sessions/s ")?;
    after.split_whitespace().next()?.parse().ok()
}

#[test]
fn top_shows_rates_snis_and_a_diagnosed_failure_and_quits_on_q() {
    require_root();
    let started = Instant::now();
    let lab = ok(Lab::up(), "lab up");
    let (mut t, _nginx) = setup(&lab);
    let socket = t.mid.control_socket().expect("loupe has a control socket");
    let loupectl = ok(binary("loupectl"), "loupectl binary");
    let exit_file = lab.dir().join("top.exit");
    let tmux = Tmux {
        socket: lab.dir().join("tmux.sock"),
    };
    // The shell writes loupectl's exit status where the test can read it after `q`.
    let command = format!(
        "'{}' --socket '{}' top; echo $? > '{}'",
        loupectl.display(),
        socket.display(),
        exit_file.display()
    );
    let (columns, rows) = (COLUMNS.to_string(), ROWS.to_string());
    let created = tmux.run(&["new-session", "-d", "-s", "top", "-x", &columns, "-y", &rows, &command]);
    assert!(created.status.success(), "tmux new-session: {}", created.stderr);

    // One client that refuses loupe's certificate (it trusts only the origin CA)...
    let refused = t.curl(&["--cacert", t.origin_ca(), "https://server.lab/"]);
    if refused.code() != Some(60) {
        t.fail(
            None,
            &format!("the distrusting client must fail with 60: {}", refused.show()),
        );
    }
    // ...and a few seconds of decrypted fetches, so that rates move while the view refreshes.
    let dca = t.dca();
    let fetches = format!(
        "for i in $(seq 60); do curl -s -o /dev/null --max-time 5 --cacert '{dca}' https://server.lab/; sleep 0.1; done"
    );
    let mut traffic = ok(
        lab.spawn(Ns::Client, "curl-loop", &["bash", "-c", &fetches]),
        "start the fetch loop",
    );

    let deadline = Instant::now() + SCREEN_DEADLINE;
    let mut seen_rate = None;
    let screen = loop {
        let screen = tmux.screen();
        let text = running_text(&screen);
        if let Some(rate) = sessions_per_second(&screen).filter(|r| *r > 0.0) {
            seen_rate = Some(rate);
        }
        let complete = seen_rate.is_some()
            && screen.contains("server.lab")
            && text.contains("aborted at client_handshake: alert received from client: fatal unknown_ca (48)")
            && text.contains("it does not trust loupe's decryption CA")
            && text.contains("install the CA from 'loupe ca show'");
        if complete {
            break screen;
        }
        if Instant::now() >= deadline {
            t.fail(
                None,
                &format!(
                    "within {SCREEN_DEADLINE:?} loupectl top did not show a non-zero sessions/s (seen: {seen_rate:?}), \
                     server.lab and the distrusting client's failure with its diagnosis; the screen:\n{screen}"
                ),
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("the screen:\n{screen}");
    let snis = screen
        .lines()
        .find(|l| l.contains("server.lab") && !l.contains("aborted"));
    assert!(snis.is_some(), "server.lab is not in the top SNIs:\n{screen}");

    let _ = traffic.stop();

    // A daemon that stops answering (stopped here with SIGSTOP, as a hung one would be)
    // leaves the view responsive: within seconds it says so, and q still quits at once
    // (the refresh waiting for the daemon runs on a thread of its own).
    let pid = t.mid.pid().expect("loupe is the middle");
    let stopped = Stopped::new(pid);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !running_text(&tmux.screen()).contains("the daemon has not answered") {
        if Instant::now() >= deadline {
            panic!(
                "with loupe stopped, loupectl top did not say so within 10 s; the screen:\n{}",
                tmux.screen()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    tmux.run(&["send-keys", "-t", "top", "q"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Ok(status) = std::fs::read_to_string(&exit_file) {
            if status.ends_with('\n') {
                break status;
            }
        }
        if Instant::now() >= deadline {
            panic!(
                "loupectl top did not exit within 5 s of q; the screen:\n{}",
                tmux.screen()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.trim(), "0", "loupectl top exit status after q");
    drop(stopped);
    ok(t.mid.check_alive(), "loupe alive at the end");
    eprintln!("top under tmux: {:?}", started.elapsed());
}
