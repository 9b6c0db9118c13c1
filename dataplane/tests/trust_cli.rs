//! `loupe trust import|list|remove` run as the real binary on a temporary state directory,
//! with certificates made by `openssl req -x509` the way an operator would.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!("loupe-trust-cli-{tag}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn loupe(args: &[&str], state: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loupe"))
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .env("LOUPE_LOG", "warn")
        .output()
        .expect("running loupe")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn succeeds(args: &[&str], state: &Path) -> String {
    let output = loupe(args, state);
    assert!(
        output.status.success(),
        "loupe {args:?} failed\nstdout: {}\nstderr: {}",
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

fn fails(args: &[&str], state: &Path) -> String {
    let output = loupe(args, state);
    assert!(
        !output.status.success(),
        "loupe {args:?} should fail\nstdout: {}",
        stdout(&output)
    );
    stderr(&output)
}

/// A self-signed certificate for `name` made by `openssl req -x509`; `extensions` are
/// extra `-addext` values (without them OpenSSL marks it CA:TRUE). Returns the PEM path and
/// its SHA-256 in lower-case hex.
fn openssl_self_signed(dir: &Path, file: &str, name: &str, extensions: &[&str]) -> (PathBuf, String) {
    let cert = dir.join(file);
    let key = dir.join(format!("{file}.key"));
    let mut command = Command::new("openssl");
    command
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-days", "30", "-subj", &format!("/CN={name}")]);
    for extension in extensions {
        command.args(["-addext", extension]);
    }
    let output = command
        .output()
        .expect("the openssl command line tool is needed (apt-get install openssl)");
    assert!(output.status.success(), "openssl req: {}", stderr(&output));
    let output = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    assert!(output.status.success(), "openssl x509: {}", stderr(&output));
    // "sha256 Fingerprint=AB:CD:..."
    let text = stdout(&output);
    let fingerprint = text
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_ascii_lowercase();
    assert_eq!(fingerprint.len(), 64, "{text}");
    (cert, fingerprint)
}

fn list_json(state: &Path) -> Vec<serde_json::Value> {
    let text = succeeds(&["trust", "list", "--json"], state);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("list --json is not JSON ({e}): {text}"))
}

#[test]
fn pinned_leaf_import_list_and_remove() {
    let tmp = TempDir::new("pin");
    let state = tmp.0.join("state");
    let (leaf, sha256) = openssl_self_signed(
        &tmp.0,
        "nas.pem",
        "nas.lab.test",
        &["basicConstraints=critical,CA:FALSE", "subjectAltName=DNS:nas.lab.test"],
    );
    let leaf = leaf.to_str().unwrap();

    // A leaf without --host: refused, naming the file, the subject and the fix.
    let err = fails(&["trust", "import", leaf], &state);
    assert!(err.contains(leaf), "{err}");
    assert!(err.contains("CN=nas.lab.test"), "{err}");
    assert!(err.contains("is not a CA certificate"), "{err}");
    assert!(err.contains("import it with --host NAME"), "{err}");
    assert!(list_json(&state).is_empty());

    let out = succeeds(&["trust", "import", leaf, "--host", "NAS.lab.test"], &state);
    assert!(
        out.contains("imported: pinned for host nas.lab.test: CN=nas.lab.test"),
        "{out}"
    );
    assert!(out.contains(&sha256), "{out}");

    // Again: nothing changes. Another host: a second pin of the same certificate.
    let out = succeeds(&["trust", "import", leaf, "--host", "nas.lab.test"], &state);
    assert!(out.contains("already imported"), "{out}");
    let out = succeeds(&["trust", "import", leaf, "--host", "198.18.0.5"], &state);
    assert!(out.contains("pinned for host 198.18.0.5"), "{out}");
    assert!(out.contains("does not name 198.18.0.5"), "{out}");

    // Persisted: a new process lists both pins.
    let entries = list_json(&state);
    assert_eq!(entries.len(), 2, "{entries:?}");
    for (entry, host) in entries.iter().zip(["nas.lab.test", "198.18.0.5"]) {
        assert_eq!(entry["kind"], "pinned");
        assert_eq!(entry["host"], host);
        assert_eq!(entry["sha256"], sha256.as_str());
        assert_eq!(entry["subject"], "CN=nas.lab.test");
        assert!(entry["not_after"].as_str().unwrap().ends_with('Z'), "{entry}");
        assert!(entry["imported_at"].is_string(), "{entry}");
    }
    assert!(state.join("trust").join(format!("{sha256}.pem")).is_file());

    let table = succeeds(&["trust", "list"], &state);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("KIND"), "{table}");
    assert!(lines[1].starts_with("pinned") && lines[1].contains("nas.lab.test") && lines[1].contains(&sha256));

    // Remove one pin by a short prefix, then the rest.
    let out = succeeds(&["trust", "remove", &sha256[..12], "--host", "198.18.0.5"], &state);
    assert!(out.contains("removed: pinned for host 198.18.0.5"), "{out}");
    assert_eq!(list_json(&state).len(), 1);
    succeeds(&["trust", "remove", &sha256], &state);
    assert!(list_json(&state).is_empty());
    assert!(!state.join("trust").join(format!("{sha256}.pem")).exists());
    let err = fails(&["trust", "remove", &sha256], &state);
    assert!(err.contains("no imported certificate matches"), "{err}");
}

#[test]
fn ca_import_and_empty_list() {
    let tmp = TempDir::new("ca");
    let state = tmp.0.join("state");
    let out = succeeds(&["trust", "list"], &state);
    assert!(out.contains("no imported certificates"), "{out}");
    assert_eq!(succeeds(&["trust", "list", "--json"], &state).trim(), "[]");

    // `openssl req -x509` marks its certificate CA:TRUE unless told otherwise.
    let (ca, sha256) = openssl_self_signed(&tmp.0, "ca.pem", "Lab Root CA", &[]);
    let out = succeeds(&["trust", "import", ca.to_str().unwrap()], &state);
    assert!(
        out.contains("imported: CA trusted for every name: CN=Lab Root CA"),
        "{out}"
    );
    let entries = list_json(&state);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["kind"], "ca");
    assert!(entries[0]["host"].is_null());
    assert_eq!(entries[0]["sha256"], sha256.as_str());

    // DER works too, and is the same certificate.
    let der = tmp.0.join("ca.der");
    let output = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(&ca)
        .arg("-out")
        .arg(&der)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let out = succeeds(&["trust", "import", der.to_str().unwrap()], &state);
    assert!(out.contains("already imported"), "{out}");
}

#[test]
fn errors_name_the_file_and_the_problem() {
    let tmp = TempDir::new("errors");
    let state = tmp.0.join("state");

    let missing = tmp.0.join("missing.pem");
    let err = fails(&["trust", "import", missing.to_str().unwrap()], &state);
    assert!(err.contains(missing.to_str().unwrap()), "{err}");
    assert!(err.contains("No such file"), "{err}");

    let key_only = tmp.0.join("key.pem");
    fs::write(
        &key_only,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = fails(
        &["trust", "import", key_only.to_str().unwrap(), "--host", "x.test"],
        &state,
    );
    assert!(
        err.contains(key_only.to_str().unwrap()) && err.contains("PRIVATE KEY"),
        "{err}"
    );

    let (leaf, _) = openssl_self_signed(&tmp.0, "leaf.pem", "leaf.test", &["basicConstraints=CA:FALSE"]);
    let err = fails(
        &["trust", "import", leaf.to_str().unwrap(), "--host", "*.leaf.test"],
        &state,
    );
    assert!(err.contains("\"*.leaf.test\"") && err.contains("wildcards"), "{err}");
    let err = fails(&["trust", "remove", "not-hex"], &state);
    assert!(err.contains("not a SHA-256 fingerprint"), "{err}");

    // A corrupt index is reported with its path by every command.
    succeeds(
        &["trust", "import", leaf.to_str().unwrap(), "--host", "leaf.test"],
        &state,
    );
    let index = state.join("trust").join("index.json");
    fs::write(&index, "{\"version\": 1, \"entries\": [").unwrap();
    for args in [
        &["trust", "list"][..],
        &["trust", "import", leaf.to_str().unwrap(), "--host", "leaf.test"],
    ] {
        let err = fails(args, &state);
        assert!(
            err.contains(index.to_str().unwrap()) && err.contains("is corrupt"),
            "{err}"
        );
    }
}
