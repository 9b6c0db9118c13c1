//! `loupe check` on real rule files: loupe's own ET-style rules (tests/data/et-style.rules)
//! and several hundred more generated in the same style, through a configuration's
//! `[inspection] rules` globs. What loaded is counted per file; every rule that did not is
//! named with file, line, sid and reason; a rules entry that names no file fails the check.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("loupe-rules-check-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(path.join("rules")).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn check(config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loupe"))
        .arg("check")
        .arg(config)
        .env("LOUPE_LOG", "warn")
        .output()
        .expect("running loupe check")
}

const GENERATED: usize = 400;

/// Rules in the styles ET writes most: URI with pcre, user agent, header with
/// distance/within, SNI with dotprefix, body with legacy modifiers.
fn generated_rules() -> String {
    let mut text = String::from("# generated: ET-style variations\n");
    for n in 0..GENERATED {
        let sid = 9_200_000 + n;
        let family = format!("Family{n:03}");
        let rule = match n % 5 {
            0 => format!(
                "alert http $HOME_NET any -> $EXTERNAL_NET any (msg:\"LOUPE GEN {family} CnC URI\"; \
                 flow:established,to_server; http.method; content:\"POST\"; http.uri; content:\"/{n}/gate\"; \
                 startswith; fast_pattern; pcre:\"/^\\/{n}\\/gate\\?id=[0-9a-f]{{8}}$/\"; classtype:command-and-control; \
                 sid:{sid}; rev:1;)"
            ),
            1 => format!(
                "alert http $HOME_NET any -> $EXTERNAL_NET any (msg:\"LOUPE GEN {family} User-Agent\"; \
                 flow:established,to_server; http.user_agent; content:\"{family}Bot/\"; startswith; \
                 classtype:trojan-activity; sid:{sid}; rev:1;)"
            ),
            2 => format!(
                "alert http $HOME_NET any -> $EXTERNAL_NET any (msg:\"LOUPE GEN {family} Header\"; \
                 flow:established,to_server; http.header; content:\"X-{family}|3a 20|\"; content:\"|0d 0a|\"; \
                 distance:8; within:2; classtype:bad-unknown; sid:{sid}; rev:1;)"
            ),
            3 => format!(
                "alert tls $HOME_NET any -> $EXTERNAL_NET any (msg:\"LOUPE GEN {family} SNI\"; \
                 flow:established,to_server; tls.sni; dotprefix; content:\".{}.example\"; endswith; nocase; \
                 classtype:command-and-control; sid:{sid}; rev:1;)",
                family.to_lowercase()
            ),
            _ => format!(
                "alert http $EXTERNAL_NET any -> $HOME_NET any (msg:\"LOUPE GEN {family} Body Marker\"; \
                 flow:established,to_client; content:\"{family}-MARKER\"; http_server_body; \
                 content:\"200\"; http_stat_code; classtype:trojan-activity; sid:{sid}; rev:1;)"
            ),
        };
        writeln!(text, "{rule}").unwrap();
    }
    text
}

#[test]
fn loupe_check_counts_the_rules_and_names_each_skipped_line() {
    let dir = TempDir::new("ok");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/et-style.rules");
    fs::copy(&fixture, dir.0.join("rules/et-style.rules")).unwrap();
    fs::write(dir.0.join("rules/generated.rules"), generated_rules()).unwrap();
    let config = dir.0.join("loupe.toml");
    fs::write(
        &config,
        "[inspection]\nrules = [\"rules/*.rules\"]\n\n[inspection.vars]\nHOME_NET = \"[198.18.0.0/24]\"\n",
    )
    .unwrap();
    let output = check(&config);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "loupe check failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rules_dir = dir.0.join("rules");
    let loaded = 23 + GENERATED;
    assert!(
        stdout.contains(&format!(
            "signatures: {loaded} loaded from 2 files, 6 skipped (3 unsupported, 3 invalid)"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("  {}: 23 rules", rules_dir.join("et-style.rules").display())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "  {}: {GENERATED} rules",
            rules_dir.join("generated.rules").display()
        )),
        "{stdout}"
    );
    let file = rules_dir.join("et-style.rules");
    let text = fs::read_to_string(&file).unwrap();
    let line_of = |sid: &str| {
        text.lines()
            .position(|l| {
                !l.starts_with('#')
                    && l.contains(&format!("sid:{sid};"))
                    && l.contains(match sid {
                        "9100001" => "duplicate",
                        _ => "",
                    })
            })
            .map(|i| i + 1)
            .unwrap_or_else(|| panic!("sid {sid} is in the fixture"))
    };
    for (sid, reason) in [
        (
            "9100025",
            "unsupported: byte_test: byte arithmetic is not in loupe's subset",
        ),
        ("9100026", "unsupported: ja3.hash: not in loupe's subset"),
        ("9100027", "unsupported: xbits: not in loupe's subset"),
        ("9100028", "pcre: /(unclosed/ does not compile"),
        ("9100029", "contnet: unknown keyword"),
    ] {
        let expected = format!("skipped: {}:{}: sid {sid}: {reason}", file.display(), line_of(sid));
        assert!(stdout.contains(&expected), "missing {expected:?} in\n{stdout}");
    }
    let duplicate = format!(
        "skipped: {}:{}: sid 9100001: duplicate: gid 1 sid 9100001 is already loaded from {}:4",
        file.display(),
        line_of("9100001"),
        file.display()
    );
    assert!(stdout.contains(&duplicate), "missing {duplicate:?} in\n{stdout}");
}

#[test]
fn loupe_check_fails_on_a_rules_entry_that_names_no_file() {
    let dir = TempDir::new("missing");
    let config = dir.0.join("loupe.toml");
    fs::write(&config, "[inspection]\nrules = [\"rules/*.rules\", \"absent.rules\"]\n").unwrap();
    let output = check(&config);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "loupe check passed\nstdout: {stdout}");
    assert!(
        stdout.contains(&format!(
            "error: {}: the glob matches no file",
            dir.0.join("rules/*.rules").display()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "error: {}: No such file or directory",
            dir.0.join("absent.rules").display()
        )),
        "{stdout}"
    );
    assert!(
        stderr.contains("[inspection] rules: 2 entries cannot be read"),
        "{stderr}"
    );
}
