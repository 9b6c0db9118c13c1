//! The Debian packages as an administrator meets them: `scripts/package.sh` builds them,
//! lintian and `systemd-analyze verify` accept them, `dpkg -i` installs loupe with its
//! files and modes, `loupe check` passes on the shipped configuration and names the line
//! of a broken one, `dpkg --purge` leaves nothing behind. And log rotation against a
//! running daemon: after a rename, `loupectl log reopen` or SIGHUP moves the new lines to
//! a fresh file and the renamed one gets none, and so does a rename loupe is not told of,
//! within seconds. Needs root; fails without it.

mod common;

use std::os::unix::fs::PermissionsExt as _;

use common::*;
use loupe_bench::lab::repo_root;

/// Bound on one packaging tool (cargo-deb's build waits on the target directory lock).
const TOOL_TIMEOUT: Duration = Duration::from_secs(600);

fn sh(script: &str) -> CommandOutput {
    ok(run_host(&["bash", "-c", script], TOOL_TIMEOUT), script)
}

fn sh_ok(script: &str) -> String {
    let out = sh(script);
    assert!(
        out.status.success(),
        "`{script}` exited {}\nstdout: {}\nstderr: {}",
        out.status,
        out.stdout,
        out.stderr
    );
    out.stdout
}

fn mode(path: &str) -> u32 {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    meta.permissions().mode() & 0o7777
}

/// Purges the loupe package when the test ends, also when it fails half way.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = run_host(&["dpkg", "--purge", "loupe"], TOOL_TIMEOUT);
    }
}

const INSTALLED_FILES: &[&str] = &[
    "/usr/bin/loupe",
    "/usr/bin/loupectl",
    "/etc/loupe/loupe.toml",
    "/etc/logrotate.d/loupe",
    "/usr/lib/systemd/system/loupe.service",
    "/usr/share/man/man1/loupe.1.gz",
    "/usr/share/man/man1/loupe-run.1.gz",
    "/usr/share/man/man1/loupe-ca-init.1.gz",
    "/usr/share/man/man1/loupectl.1.gz",
    "/usr/share/man/man1/loupectl-log-reopen.1.gz",
    "/usr/share/man/man1/loupectl-policy-load.1.gz",
    "/usr/share/bash-completion/completions/loupe",
    "/usr/share/bash-completion/completions/loupectl",
    "/usr/share/zsh/vendor-completions/_loupe",
    "/usr/share/zsh/vendor-completions/_loupectl",
    "/usr/share/fish/vendor_completions.d/loupe.fish",
    "/usr/share/fish/vendor_completions.d/loupectl.fish",
    "/usr/share/doc/loupe/copyright",
    "/usr/share/doc/loupe/changelog.Debian.gz",
];

#[test]
fn the_debian_package_passes_lintian_installs_checks_and_purges_cleanly() {
    require_root();
    let started = Instant::now();
    let repo = repo_root();
    let built = sh_ok(&format!("cd '{}' && scripts/package.sh", repo.display()));
    let debs: Vec<&str> = built.lines().filter(|l| l.ends_with(".deb")).collect();
    let loupe_deb = debs
        .iter()
        .find(|d| d.contains("/loupe_"))
        .unwrap_or_else(|| panic!("package.sh printed no loupe .deb: {built}"));
    let bench_deb = debs
        .iter()
        .find(|d| d.contains("/loupe-bench_"))
        .unwrap_or_else(|| panic!("package.sh printed no loupe-bench .deb: {built}"));

    // Lintian: no error. Warnings tolerated: initial-upload-closes-no-bugs (no Debian bug
    // tracker entry to close for a package that is not in Debian).
    let lintian = sh(&format!(
        "lintian --no-tag-display-limit '{loupe_deb}' '{bench_deb}' 2>&1"
    ));
    let errors: Vec<&str> = lintian.stdout.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{}", lintian.stdout);
    let bench_files = sh_ok(&format!("dpkg-deb -c '{bench_deb}'"));
    for wanted in ["./usr/bin/loupe-bench", "loupe-bench.1.gz", "completions/loupe-bench"] {
        assert!(
            bench_files.contains(wanted),
            "loupe-bench lacks {wanted}:\n{bench_files}"
        );
    }

    let _ = run_host(&["dpkg", "--purge", "loupe"], TOOL_TIMEOUT);
    let installed = Installed;
    sh_ok(&format!("dpkg -i '{loupe_deb}'"));

    for file in INSTALLED_FILES {
        assert!(Path::new(file).is_file(), "{file} is not installed");
    }
    assert_eq!(mode("/usr/bin/loupe"), 0o755);
    assert_eq!(mode("/usr/bin/loupectl"), 0o755);
    assert_eq!(mode("/etc/loupe/loupe.toml"), 0o644);
    assert!(Path::new("/var/lib/loupe").is_dir() && Path::new("/var/log/loupe").is_dir());
    assert_eq!(mode("/var/lib/loupe"), 0o700, "/var/lib/loupe holds the CA key");
    assert_eq!(mode("/var/log/loupe") & 0o007, 0, "/var/log/loupe is open to others");
    let conffiles = sh_ok("dpkg-query -W -f='${Conffiles}' loupe");
    for conffile in ["/etc/loupe/loupe.toml", "/etc/logrotate.d/loupe"] {
        assert!(conffiles.contains(conffile), "{conffile} is no conffile: {conffiles}");
    }
    // Installed, not enabled: the ports must be configured first.
    let enabled = sh("systemctl is-enabled loupe.service");
    assert_eq!(enabled.stdout.trim(), "disabled", "{enabled:?}");

    // systemd-analyze verify (works on files without systemd as PID 1): nothing to say
    // about the unit, its commands exist, its man pages resolve.
    let verify = sh("systemd-analyze verify /usr/lib/systemd/system/loupe.service 2>&1");
    let about_loupe: Vec<&str> = verify.stdout.lines().filter(|l| l.contains("loupe")).collect();
    assert!(
        verify.status.success() && about_loupe.is_empty(),
        "systemd-analyze verify: {}\n{}",
        verify.status,
        verify.stdout
    );
    let unit = std::fs::read_to_string("/usr/lib/systemd/system/loupe.service").expect("the unit");
    for line in [
        "Type=notify",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "RuntimeDirectory=loupe",
        "RestartPreventExitStatus=78",
        "ExecReload=/usr/bin/loupectl --socket /run/loupe/control.sock policy load /etc/loupe/loupe.toml",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line}");
    }

    for page in [
        "loupe.1.gz",
        "loupe-run.1.gz",
        "loupectl.1.gz",
        "loupectl-log-reopen.1.gz",
    ] {
        let text = sh_ok(&format!("MANWIDTH=80 man -l /usr/share/man/man1/{page} 2>&1 | col -b"));
        assert!(
            text.contains("NAME") && text.contains("SYNOPSIS"),
            "man -l {page}:\n{text}"
        );
    }
    let reopen_page = sh_ok("MANWIDTH=80 man -l /usr/share/man/man1/loupectl-log-reopen.1.gz | col -b");
    assert!(reopen_page.contains("rotation"), "{reopen_page}");
    let completion = sh_ok(
        "source /usr/share/bash-completion/completions/loupectl && complete -p loupectl && \
         COMP_WORDS=(loupectl log r) COMP_CWORD=2 COMP_LINE='loupectl log r' COMP_POINT=14 && \
         _loupectl loupectl r log && printf '%s\\n' \"${COMPREPLY[@]}\"",
    );
    assert!(
        completion.contains("reopen"),
        "bash completion of `loupectl log r`: {completion}"
    );
    assert!(!completion.contains("generate-docs"), "{completion}");
    let fish = std::fs::read_to_string("/usr/share/fish/vendor_completions.d/loupe.fish").expect("fish");
    assert!(
        fish.contains("complete -c loupe") && !fish.contains("generate-docs"),
        "{fish}"
    );

    let rotate = sh("logrotate -d /etc/logrotate.d/loupe 2>&1");
    assert!(
        rotate.status.success() && !rotate.stdout.to_lowercase().contains("error"),
        "logrotate -d: {}\n{}",
        rotate.status,
        rotate.stdout
    );
    assert!(rotate.stdout.contains("/var/log/loupe/eve.json"), "{}", rotate.stdout);

    let checked = sh("loupe check /etc/loupe/loupe.toml");
    assert!(
        checked.status.success() && checked.stdout.contains("/etc/loupe/loupe.toml: ok"),
        "loupe check on the shipped configuration: {checked:?}"
    );

    // A broken configuration: `loupe check` and `loupe run` name file and line, and
    // `loupe run` exits 78, the status the unit does not restart on (also when the file
    // parses but its policy cannot be built).
    let dir = std::env::temp_dir().join(format!("loupe-package-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let broken = dir.join("broken.toml");
    std::fs::write(&broken, "[dataplane]\nqueues = 0\n").expect("write broken.toml");
    let check = sh(&format!("loupe check '{}'", broken.display()));
    let where_ = format!("{}:2:", broken.display());
    assert!(
        !check.status.success() && check.stderr.contains(&where_) && check.stderr.contains("queues"),
        "loupe check on a broken file: {check:?}"
    );
    // A file that parses but names what cannot be read: the policy cannot be built, and
    // restarting would not help either.
    let unreadable_category = dir.join("category.toml");
    std::fs::write(
        &unreadable_category,
        "[[category]]\nname = \"finance\"\nfile = \"/nonexistent/loupe-finance.txt\"\n",
    )
    .expect("write category.toml");
    for config in [broken.clone(), dir.join("missing.toml"), unreadable_category] {
        let run = sh(&format!(
            "loupe run --config '{}' --state-dir '{dir}/state' --log-dir '{dir}/log'",
            config.display(),
            dir = dir.display()
        ));
        assert_eq!(
            run.status.code(),
            Some(78),
            "loupe run --config {}: {run:?}",
            config.display()
        );
        assert!(run.stderr.contains(&config.display().to_string()), "{run:?}");
    }
    std::fs::remove_dir_all(&dir).expect("remove the temp dir");

    drop(installed);
    let status = sh("dpkg-query -W -f='${db:Status-Status}' loupe 2>&1");
    assert!(
        !status.stdout.contains("installed") || status.stdout.contains("not-installed"),
        "loupe still installed after the purge: {}",
        status.stdout
    );
    for path in INSTALLED_FILES
        .iter()
        .chain(&["/var/lib/loupe", "/var/log/loupe", "/etc/loupe"])
    {
        assert!(!Path::new(path).exists(), "{path} left behind by dpkg --purge");
    }
    eprintln!("package test: {:?}", started.elapsed());
}

/// Lines of a file, 0 when it does not exist.
fn line_count(path: &Path) -> usize {
    std::fs::read_to_string(path).map(|t| t.lines().count()).unwrap_or(0)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn log_rotation_moves_new_lines_to_fresh_files() {
    require_root();
    let lab = ok(Lab::up(), "lab up");
    let (mut t, _nginx) = setup(&lab);
    let log_dir = t.mid.log_dir().expect("loupe's log dir").to_path_buf();
    let decryption = log_dir.join("decryption.jsonl");
    let eve = log_dir.join("eve.json");
    let pid = t.mid.pid().expect("loupe is the middle");

    // One session, wholly logged (its record and its EVE events) before any rotation.
    let fetch = |t: &Tls, what: &str| {
        let c = t.curl(&["--cacert", t.dca(), "https://server.lab/"]);
        if c.code() != Some(0) || c.stdout != INDEX {
            t.fail(None, &format!("{what}: {}", c.show()));
        }
        t.record(c.port, what)
    };
    fetch(&t, "before rotation");
    wait_for("eve.json's events of the first session", || line_count(&eve) > 0);

    // The third rotation tells loupe nothing (a postrotate that could not reach it): its
    // check for renamed files reopens them within seconds.
    for (rotation, how) in [(1, "loupectl log reopen"), (2, "SIGHUP"), (3, "nothing")] {
        let old_decryption = log_dir.join(format!("decryption.jsonl.{rotation}"));
        let old_eve = log_dir.join(format!("eve.json.{rotation}"));
        std::fs::rename(&decryption, &old_decryption).expect("rename decryption.jsonl");
        std::fs::rename(&eve, &old_eve).expect("rename eve.json");
        let (old_records, old_events) = (line_count(&old_decryption), line_count(&old_eve));
        assert!(
            old_records > 0 && old_events > 0,
            "nothing was logged before rotation {rotation}"
        );

        if how == "SIGHUP" {
            // SAFETY: kill(2) on the daemon this test started.
            assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0, "kill -HUP");
        } else if how == "loupectl log reopen" {
            let out = ok(t.mid.loupectl(&["log", "reopen"]), "loupectl log reopen");
            assert!(
                out.status.success() && out.stdout.contains("reopened") && out.stdout.contains("eve.json"),
                "loupectl log reopen: {out:?}"
            );
        }
        wait_for(&format!("{how}: new decryption.jsonl and eve.json"), || {
            decryption.exists() && eve.exists()
        });

        let record = fetch(&t, &format!("after {how}"));
        wait_for(&format!("{how}: eve.json's events of the new session"), || {
            line_count(&eve) > 0
        });
        assert!(
            t.records().iter().any(|r| r["session_id"] == record["session_id"]),
            "{how}: the new session's record is not in the new decryption.jsonl"
        );
        assert_eq!(
            line_count(&old_decryption),
            old_records,
            "{how}: the renamed decryption log grew"
        );
        assert_eq!(line_count(&old_eve), old_events, "{how}: the renamed eve.json grew");
        if let Err(e) = t.mid.check_alive() {
            t.fail(None, &format!("{how}: loupe is gone: {e:#}"));
        }
    }
    assert_eq!(t.mid.pid(), Some(pid), "loupe restarted");
}
