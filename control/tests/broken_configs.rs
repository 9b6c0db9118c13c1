//! Configuration files on disk, broken in the ways operators break them: each error must
//! come out exactly, with the file, the line and what was expected. And one file with
//! every table and key, to see that each value lands where it belongs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use loupe_control::config::{Config, FailMode, LoadedCategory, NotTls, RuleAction, Undecryptable, Untrusted};

/// A directory of its own under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let unique = format!(
            "loupe-config-{}-{}-{test}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(&dir).expect("create the test directory");
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create a subdirectory");
        }
        std::fs::write(&path, text).expect("write a test file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `text` as `loupe.toml` and returns the path and the error `Config::load` gives.
fn load_error(dir: &TempDir, text: &str) -> (PathBuf, String) {
    let path = dir.write("loupe.toml", text);
    let err = Config::load(&path).expect_err("the configuration must be refused");
    (path.clone(), err.to_string())
}

/// The line (1-based) of the first line of `text` containing `needle`.
fn line_with(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).expect("needle in text") + 1
}

/// The issue's configuration: two profiles, two categories, four rules.
const ISSUE_CONFIG: &str = r#"# loupe.toml: the shape of the policy issue's example
[dataplane]
inside = "in0"
outside = "out0"
inspect_ports = [443]

[ca]
cert = "/etc/loupe/ca.crt"
key = "/etc/loupe/ca.key"

[trust]
system_roots = true

[decryption]
default_action = "decrypt"
default_profile = "default"

[[profile]]
name = "strict"
min_version = "1.3"
unsupported_version = "bypass"

[[category]]
name = "financial"
file = "/etc/loupe/categories/financial.txt"

[[category]]
name = "health"
file = "/etc/loupe/categories/health.txt"

[[rule]]
name = "no-inspection-lab"
source = ["198.18.0.0/24"]
destination = ["198.18.0.9"]
ports = [443]
action = "no-decrypt"

[[rule]]
name = "banks"
category = ["financial"]
action = "decrypt"
profile = "strict"

[[rule]]
name = "games"
sni = ["*.games.example"]
action = "block"

[[rule]]
name = "everything-else"
action = "decrypt"
"#;

#[test]
fn the_issue_config_loads() {
    let dir = TempDir::new("issue");
    let path = dir.write("loupe.toml", ISSUE_CONFIG);
    let config = Config::load(&path).unwrap();
    assert_eq!(config.rules.len(), 4);
    assert_eq!(config.rules[1].profile.as_deref(), Some("strict"));
}

#[test]
fn unknown_profile_as_in_the_issue() {
    let dir = TempDir::new("unknown-profile");
    let text = ISSUE_CONFIG.replace("profile = \"strict\"", "profile = \"strict2\"");
    assert_eq!(line_with(&text, "strict2"), 42);
    let (path, err) = load_error(&dir, &text);
    assert_eq!(
        err,
        format!(
            "{}:42: rule \"banks\": unknown profile \"strict2\" (known: default, strict)",
            path.display()
        )
    );
}

#[test]
fn unknown_category() {
    let dir = TempDir::new("unknown-category");
    let text = ISSUE_CONFIG.replace("category = [\"financial\"]", "category = [\"finance\"]");
    let (path, err) = load_error(&dir, &text);
    assert_eq!(
        err,
        format!(
            "{}:40: rule \"banks\": unknown category \"finance\" (known: financial, health)",
            path.display()
        )
    );
}

#[test]
fn bad_cidr() {
    let dir = TempDir::new("bad-cidr");
    let text = ISSUE_CONFIG.replace("\"198.18.0.0/24\"", "\"198.18.0.0/33\"");
    let (path, err) = load_error(&dir, &text);
    assert_eq!(
        err,
        format!(
            "{}:33: rule \"no-inspection-lab\": source: expected an address or a CIDR block like \
             \"198.18.0.0/15\" or \"2001:db8::/32\", got \"198.18.0.0/33\"",
            path.display()
        )
    );
}

#[test]
fn bad_duration() {
    let dir = TempDir::new("bad-duration");
    let text = ISSUE_CONFIG.replace("[trust]\n", "[exclusions]\nttl = \"12 hours\"\n\n[trust]\n");
    let (path, err) = load_error(&dir, &text);
    assert_eq!(
        err,
        format!(
            "{}:12: [exclusions] ttl: expected a duration like \"90s\", \"30m\", \"12h\" or \"1d\", got \"12 hours\"",
            path.display()
        )
    );
}

#[test]
fn bad_sni_wildcard() {
    let dir = TempDir::new("bad-sni");
    let text = ISSUE_CONFIG.replace("\"*.games.example\"", "\"games.*.example\"");
    let (path, err) = load_error(&dir, &text);
    assert_eq!(
        err,
        format!(
            "{}:46: rule \"games\": sni: expected a server name like \"www.example.com\" or \"*.example.com\" \
             (a wildcard only as the whole first label), got \"games.*.example\"",
            path.display()
        )
    );
}

#[test]
fn decrypt_inbound_without_key() {
    let dir = TempDir::new("inbound-no-key");
    let text = format!(
        "{ISSUE_CONFIG}\n[[rule]]\nname = \"shop-inbound\"\ndestination = [\"198.18.0.5\"]\n\
         action = \"decrypt-inbound\"\ncertificate = \"/etc/loupe/shop.crt\"\n"
    );
    let (path, err) = load_error(&dir, &text);
    assert_eq!(
        err,
        format!(
            "{}:53: rule \"shop-inbound\": action \"decrypt-inbound\" needs key (the server's private key, a PEM file)",
            path.display()
        )
    );
}

#[test]
fn unknown_key_in_a_rule() {
    let dir = TempDir::new("unknown-key");
    let text = ISSUE_CONFIG.replace("ports = [443]\naction", "port = [443]\naction");
    let (path, err) = load_error(&dir, &text);
    assert_eq!(
        err,
        format!(
            "{}:35: rule \"no-inspection-lab\": unknown field `port`, expected one of `name`, `source`, \
             `destination`, `ports`, `sni`, `category`, `action`, `profile`, `certificate`, `key`, `export`",
            path.display()
        )
    );
}

#[test]
fn missing_config_file() {
    let dir = TempDir::new("missing");
    let path = dir.0.join("nowhere.toml");
    assert_eq!(
        Config::load(&path).unwrap_err().to_string(),
        format!(
            "{}: cannot read: No such file or directory (os error 2)",
            path.display()
        )
    );
}

#[test]
fn bad_category_file_line() {
    let dir = TempDir::new("bad-category-line");
    let list = dir.write(
        "categories/financial.txt",
        "# banks and brokers\nexample-bank.com\n\n*.broker.example\n# more\n\nbank .com\n",
    );
    dir.write("categories/health.txt", "clinic.example\n");
    let config = dir.write(
        "loupe.toml",
        "[[category]]\nname = \"financial\"\nfile = \"categories/financial.txt\"\n\n\
         [[category]]\nname = \"health\"\nfile = \"categories/health.txt\"\n",
    );
    let config = Config::load(&config).unwrap();
    assert_eq!(
        config.load_categories().unwrap_err().to_string(),
        format!(
            "{}:7: category \"financial\": expected a domain name, got \"bank .com\"",
            list.display()
        )
    );
}

#[test]
fn unreadable_category_file() {
    let dir = TempDir::new("unreadable-category");
    dir.write("categories/financial.txt", "example-bank.com\n");
    let path = dir.write(
        "loupe.toml",
        "[[category]]\nname = \"financial\"\nfile = \"categories/financial.txt\"\n\n\
         [[category]]\nname = \"health\"\n# the list comes later\nfile = \"categories/health.txt\"\n",
    );
    let config = Config::load(&path).unwrap();
    assert_eq!(
        config.load_categories().unwrap_err().to_string(),
        format!(
            "{}:8: category \"health\": file \"{}\": cannot read: No such file or directory (os error 2)",
            path.display(),
            dir.0.join("categories/health.txt").display()
        )
    );
}

/// Every table and every key, none at its default.
const FULL_CONFIG: &str = r#"[dataplane]
inside = "eth1"
outside = "eth2"
inspect_ports = [443, 8443]
queues = 2
fail = "closed"
max_flows = 8192
tcp_buffer = 131072
busy_poll_us = 40
xdp_mode = "generic"
first_core = 4
drop_quic = false

[paths]
state_dir = "state"
log_dir = "/var/log/loupe-test"

[ca]
cert = "ca/ca.crt"
key = "/secrets/ca.key"

[trust]
system_roots = false
ca_files = ["roots/internal.pem", "/etc/ssl/partner.pem"]

[decryption]
not_tls = "splice"
default_action = "no-decrypt"
default_profile = "legacy"

[exclusions]
ttl = "2d"
max_entries = 100

[[profile]]
name = "default"
min_version = "1.2"
max_version = "1.3"
allow_sha1 = false
untrusted = "forward-untrust"
ciphers = []
groups = ["X25519"]
sigalgs = []
expired = "block"
unsupported_version = "block"
unsupported_cipher = "block"
client_auth = "bypass"

[[profile]]
name = "legacy"
min_version = "1.0"
max_version = "1.2"
allow_sha1 = true
untrusted = "block"
ciphers = ["ECDHE-RSA-AES128-SHA", "AES128-SHA"]
groups = ["P-256", "P-384"]
sigalgs = ["RSA+SHA1", "RSA+SHA256"]
expired = "forward-untrust"
unsupported_version = "bypass"
unsupported_cipher = "bypass"
client_auth = "block"

[[category]]
name = "financial"
file = "categories/financial.txt"

[[category]]
name = "health"
file = "/etc/loupe/health.txt"

[[rule]]
name = "lab"
source = ["198.18.0.0/24", "2001:db8::/32"]
destination = ["198.18.0.9"]
ports = [443, 8443]
sni = ["Legacy.Example", "*.old.example"]
category = ["financial", "health"]
action = "decrypt"
profile = "legacy"

[[rule]]
name = "shop"
destination = ["198.18.0.5"]
action = "decrypt-inbound"
profile = "default"
certificate = "shop/chain.pem"
key = "shop/key.pem"

[[rule]]
name = "games"
sni = ["*.games.example"]
action = "block"
"#;

#[test]
fn a_full_config_lands_in_the_right_fields() {
    let dir = TempDir::new("full");
    let path = dir.write("loupe.toml", FULL_CONFIG);
    let c = Config::load(&path).unwrap();
    let d = &c.dataplane;
    assert_eq!((d.inside.as_str(), d.outside.as_str()), ("eth1", "eth2"));
    assert_eq!(d.inspect_ports, vec![443, 8443]);
    assert_eq!((d.queues, d.fail.clone()), (2, FailMode::Closed));
    assert_eq!((d.max_flows, d.tcp_buffer, d.busy_poll_us), (8192, 131_072, 40));
    assert_eq!(
        (d.xdp_mode.as_str(), d.first_core, d.drop_quic),
        ("generic", Some(4), false)
    );

    assert_eq!(c.paths.state_dir, Some(dir.0.join("state")));
    assert_eq!(c.paths.log_dir, Some(PathBuf::from("/var/log/loupe-test")));
    let ca = c.ca.as_ref().unwrap();
    assert_eq!(ca.cert, dir.0.join("ca/ca.crt"));
    assert_eq!(ca.key, PathBuf::from("/secrets/ca.key"));
    assert!(!c.trust.system_roots);
    assert_eq!(
        c.trust.ca_files,
        vec![dir.0.join("roots/internal.pem"), PathBuf::from("/etc/ssl/partner.pem")]
    );

    assert_eq!(c.decryption.not_tls, NotTls::Splice);
    assert_eq!(c.decryption.default_action, RuleAction::NoDecrypt);
    assert_eq!(c.decryption.default_profile, "legacy");
    assert_eq!(c.exclusions.ttl, Duration::from_secs(2 * 86_400));
    assert_eq!(c.exclusions.max_entries, 100);

    assert_eq!(c.profile_names(), vec!["default", "legacy"]);
    let default = c.profile("default").unwrap();
    assert_eq!(default.untrusted, Untrusted::ForwardUntrust);
    assert_eq!(default.groups, vec!["X25519"]);
    assert_eq!(default.expired, Some(Untrusted::Block));
    assert_eq!(default.client_auth, Undecryptable::Bypass);
    let legacy = c.profile("legacy").unwrap();
    assert_eq!(
        (legacy.min_version.as_str(), legacy.max_version.as_str()),
        ("1.0", "1.2")
    );
    assert!(legacy.allow_sha1);
    assert_eq!(legacy.untrusted, Untrusted::Block);
    assert_eq!(legacy.ciphers, vec!["ECDHE-RSA-AES128-SHA", "AES128-SHA"]);
    assert_eq!(legacy.groups, vec!["P-256", "P-384"]);
    assert_eq!(legacy.sigalgs, vec!["RSA+SHA1", "RSA+SHA256"]);
    assert_eq!(legacy.expired, Some(Untrusted::ForwardUntrust));
    assert_eq!(legacy.unsupported_version, Undecryptable::Bypass);
    assert_eq!(legacy.unsupported_cipher, Undecryptable::Bypass);
    assert_eq!(legacy.client_auth, Undecryptable::Block);

    assert_eq!(c.categories.len(), 2);
    assert_eq!(c.categories[0].name, "financial");
    assert_eq!(c.categories[0].file, dir.0.join("categories/financial.txt"));
    assert_eq!(c.categories[1].file, PathBuf::from("/etc/loupe/health.txt"));

    let names: Vec<&str> = c.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["lab", "shop", "games"]);
    let lab = &c.rules[0];
    let source: Vec<String> = lab.source.iter().map(ToString::to_string).collect();
    assert_eq!(source, vec!["198.18.0.0/24", "2001:db8::/32"]);
    assert_eq!(lab.destination[0].to_string(), "198.18.0.9/32");
    assert_eq!(lab.ports, vec![443, 8443]);
    assert_eq!(lab.sni, vec!["legacy.example", "*.old.example"]);
    assert_eq!(lab.category, vec!["financial", "health"]);
    assert_eq!(
        (lab.action, lab.profile.as_deref()),
        (RuleAction::Decrypt, Some("legacy"))
    );
    assert_eq!((&lab.certificate, &lab.key), (&None, &None));
    assert!(!lab.needs_only_addresses());
    let shop = &c.rules[1];
    assert_eq!(shop.action, RuleAction::DecryptInbound);
    assert_eq!(shop.certificate, Some(dir.0.join("shop/chain.pem")));
    assert_eq!(shop.key, Some(dir.0.join("shop/key.pem")));
    assert!(shop.needs_only_addresses());
    assert_eq!(c.rules[2].action, RuleAction::Block);

    assert_eq!(c.source.file, path);
    assert_eq!(c.source.text, FULL_CONFIG);
}

#[test]
fn load_categories_reads_every_file() {
    let dir = TempDir::new("categories");
    dir.write(
        "categories/financial.txt",
        "# banks\nExample-Bank.com\n*.broker.example   # and every name below\n.pay.example\n\n",
    );
    let health = dir.write("elsewhere/health.txt", "clinic.example\r\nhospital.example\n");
    let config = format!(
        "[[category]]\nname = \"financial\"\nfile = \"categories/financial.txt\"\n\n\
         [[category]]\nname = \"health\"\nfile = {:?}\n",
        health.display().to_string()
    );
    let path = dir.write("loupe.toml", &config);
    let loaded = Config::load(&path).unwrap().load_categories().unwrap();
    assert_eq!(
        loaded,
        vec![
            LoadedCategory {
                name: "financial".into(),
                domains: vec!["example-bank.com".into(), "broker.example".into(), "pay.example".into()],
            },
            LoadedCategory {
                name: "health".into(),
                domains: vec!["clinic.example".into(), "hospital.example".into()],
            },
        ]
    );
    assert_eq!(Config::default().load_categories().unwrap(), Vec::new());
}

#[test]
fn parse_reads_no_files() {
    // The same text through parse: relative paths stay as written, no file is touched.
    let c = Config::parse(FULL_CONFIG, Path::new("loupe.toml")).unwrap();
    assert_eq!(c.categories[0].file, PathBuf::from("categories/financial.txt"));
    assert_eq!(c.rules[1].certificate, Some(PathBuf::from("shop/chain.pem")));
}
