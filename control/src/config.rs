//! The configuration file (TOML). Every error names the file, the line and what was
//! expected. The policy issue grows this schema (profiles, rules, trust, categories); the
//! dataplane section is what the virtual wire needs.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// No worker serving a queue: inspected traffic is bridged.
    Open,
    /// No worker serving a queue: inspected traffic is dropped (and counted).
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dataplane {
    pub inside: String,
    pub outside: String,
    pub inspect_ports: Vec<u16>,
    pub queues: u32,
    pub fail: FailMode,
    /// Flows one worker holds at most.
    pub max_flows: usize,
    /// TCP buffer per direction and side of a flow, in bytes.
    pub tcp_buffer: usize,
    /// "native" (driver) or "generic" (skb) XDP.
    pub xdp_mode: String,
    /// First CPU core to pin workers to; worker q runs on core first_core + q.
    pub first_core: Option<usize>,
    /// Drop UDP to the inspected ports (QUIC) in XDP, so browsers fall back to TCP where
    /// loupe can inspect them.
    pub drop_quic: bool,
}

impl Default for Dataplane {
    fn default() -> Self {
        Dataplane {
            inside: "in0".into(),
            outside: "out0".into(),
            inspect_ports: vec![443],
            queues: 1,
            fail: FailMode::Open,
            max_flows: 16_384,
            tcp_buffer: 64 * 1024,
            xdp_mode: "native".into(),
            first_core: None,
            drop_quic: true,
        }
    }
}

/// What to do with a stream on an inspected port that does not start with a TLS
/// ClientHello.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotTls {
    /// Reset both connections and log `not TLS` (the default).
    #[default]
    Block,
    /// Relay it byte for byte, uninspected, and log it as spliced.
    Splice,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Decryption {
    pub not_tls: NotTls,
    /// What a flow that matches no rule gets (`decrypt`, `no-decrypt` or `block`).
    pub default_action: RuleAction,
    /// The profile of the default action when it decrypts.
    pub default_profile: String,
}

impl Default for Decryption {
    fn default() -> Self {
        Decryption {
            not_tls: NotTls::Block,
            default_action: RuleAction::Decrypt,
            default_profile: "default".into(),
        }
    }
}

/// Where loupe keeps its state (CA, trust store, exclusions) and writes its logs. The
/// command line's `--state-dir` and `--log-dir` win over these.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Paths {
    pub state_dir: Option<PathBuf>,
    pub log_dir: Option<PathBuf>,
}

/// Upstream trust on top of the system roots and the certificates imported with
/// `loupe trust import` (kept in the state directory).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Trust {
    /// Whether the system's root bundle is trusted.
    pub system_roots: bool,
    /// PEM (or DER) files of CA certificates trusted for every name.
    pub ca_files: Vec<PathBuf>,
}

impl Default for Trust {
    fn default() -> Self {
        Trust {
            system_roots: true,
            ca_files: Vec::new(),
        }
    }
}

/// A named list of domains, one per line in `file` (`#` comments; `example.com` also
/// covers its subdomains).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Category {
    pub name: String,
    pub file: PathBuf,
}

/// What a rule does with the flows it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleAction {
    /// Split TLS with the rule's profile.
    Decrypt,
    /// Leave TLS alone: bridged in XDP when the rule needs only addresses and ports,
    /// spliced byte for byte after the ClientHello otherwise.
    NoDecrypt,
    /// Refuse: a TLS alert after the ClientHello (a reset before it), and a log record.
    Block,
    /// Decrypt-known-key: present the server's own certificate (`certificate`, `key`) to
    /// the client and open loupe's own TLS connection to the server.
    DecryptInbound,
}

impl RuleAction {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleAction::Decrypt => "decrypt",
            RuleAction::NoDecrypt => "no-decrypt",
            RuleAction::Block => "block",
            RuleAction::DecryptInbound => "decrypt-inbound",
        }
    }
}

/// An address block: `198.18.0.0/15`, `2001:db8::/32`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network address (host bits cleared).
    pub addr: IpAddr,
    pub prefix: u8,
}

/// A policy rule. Every condition given must hold; an absent condition matches all.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    /// Client address blocks.
    #[serde(default)]
    pub source: Vec<Cidr>,
    /// Server address blocks.
    #[serde(default)]
    pub destination: Vec<Cidr>,
    /// Server ports.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Server names: exact (`www.example.com`) or `*.example.com` (any subdomain).
    #[serde(default)]
    pub sni: Vec<String>,
    /// Category names (`[[category]]`).
    #[serde(default)]
    pub category: Vec<String>,
    pub action: RuleAction,
    /// The decryption profile (`decrypt` and `decrypt-inbound`); default: `default`.
    pub profile: Option<String>,
    /// `decrypt-inbound`: the server's certificate chain (PEM, leaf first).
    pub certificate: Option<PathBuf>,
    /// `decrypt-inbound`: the server's private key (PEM).
    pub key: Option<PathBuf>,
}

impl Rule {
    /// Whether the rule can be decided from addresses and ports alone (no SNI, no category).
    pub fn needs_only_addresses(&self) -> bool {
        self.sni.is_empty() && self.category.is_empty()
    }
}

/// The exclusion cache: servers that cannot be decrypted, remembered and spliced.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Exclusions {
    /// How long a server stays excluded: `12h`, `30m`, `90s`, `1d`.
    #[serde(deserialize_with = "duration")]
    pub ttl: Duration,
    /// Servers remembered at most; the one closest to expiry is dropped first.
    pub max_entries: usize,
}

impl Default for Exclusions {
    fn default() -> Self {
        Exclusions {
            ttl: Duration::from_secs(12 * 3600),
            max_entries: 4096,
        }
    }
}

/// What to do when the server's certificate chain does not validate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Untrusted {
    /// Refuse the session: the client gets a TLS alert.
    #[default]
    Block,
    /// Decrypt, but present a certificate from loupe's untrusted CA, so the client shows
    /// the warning the real server deserves.
    ForwardUntrust,
}

/// A decryption profile: how loupe talks TLS to servers (and what it accepts from them).
/// What to do with a session loupe cannot decrypt for a reason the profile names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Undecryptable {
    /// End the session with a logged reason.
    #[default]
    Block,
    /// End this session, remember the server in the exclusion cache, and splice the next
    /// ones uninspected.
    Bypass,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    /// "1.0", "1.1", "1.2" or "1.3".
    #[serde(default = "default_min_version")]
    pub min_version: String,
    #[serde(default = "default_max_version")]
    pub max_version: String,
    /// SHA-1 suites and signatures (TLS 1.0/1.1 need them).
    #[serde(default)]
    pub allow_sha1: bool,
    #[serde(default)]
    pub untrusted: Untrusted,
    /// TLS 1.2-and-older suites by OpenSSL name; empty means the modern AEAD default.
    #[serde(default)]
    pub ciphers: Vec<String>,
    /// Key-exchange groups (`X25519`, `P-256`, `P-384`); empty means those three.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Signature algorithms offered upstream, OpenSSL names (`ECDSA+SHA256`,
    /// `RSA-PSS+SHA256`); empty means the built-in list.
    #[serde(default)]
    pub sigalgs: Vec<String>,
    /// An expired (or not yet valid) server certificate; default: as `untrusted`.
    #[serde(default)]
    pub expired: Option<Untrusted>,
    /// The server (or the client) speaks no version the profile allows.
    #[serde(default)]
    pub unsupported_version: Undecryptable,
    /// The server (or the client) shares no suite with the profile.
    #[serde(default)]
    pub unsupported_cipher: Undecryptable,
    /// The server asks for a client certificate (loupe cannot present the client's).
    #[serde(default = "default_client_auth")]
    pub client_auth: Undecryptable,
}

fn default_client_auth() -> Undecryptable {
    Undecryptable::Bypass
}

fn default_min_version() -> String {
    "1.2".into()
}

fn default_max_version() -> String {
    "1.3".into()
}

impl Profile {
    /// The built-in `default` profile: TLS 1.2–1.3, modern AEAD suites, no SHA-1, block
    /// untrusted servers.
    pub fn builtin_default() -> Profile {
        Profile {
            name: "default".into(),
            min_version: default_min_version(),
            max_version: default_max_version(),
            allow_sha1: false,
            untrusted: Untrusted::Block,
            ciphers: Vec::new(),
            groups: Vec::new(),
            sigalgs: Vec::new(),
            expired: None,
            unsupported_version: Undecryptable::Block,
            unsupported_cipher: Undecryptable::Block,
            client_auth: default_client_auth(),
        }
    }

    /// A version setting as on the wire (0x0301 = TLS 1.0 … 0x0304 = TLS 1.3).
    pub fn wire_version(text: &str) -> Option<u16> {
        match text {
            "1.0" => Some(0x0301),
            "1.1" => Some(0x0302),
            "1.2" => Some(0x0303),
            "1.3" => Some(0x0304),
            _ => None,
        }
    }
}

/// The decryption CA from PEM files of the operator's (default: generated in the state
/// directory).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ca {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub dataplane: Dataplane,
    pub ca: Option<Ca>,
    #[serde(default)]
    pub decryption: Decryption,
    #[serde(default, rename = "profile")]
    pub profiles: Vec<Profile>,
    #[serde(default)]
    pub paths: Paths,
    #[serde(default)]
    pub trust: Trust,
    #[serde(default, rename = "category")]
    pub categories: Vec<Category>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub exclusions: Exclusions,
}

impl Config {
    /// The profile named `name`: a configured one, or the built-in default.
    pub fn profile(&self, name: &str) -> Option<Profile> {
        self.profiles
            .iter()
            .find(|p| p.name == name)
            .cloned()
            .or_else(|| (name == "default").then(Profile::builtin_default))
    }
}

impl Cidr {
    /// Whether `ip` lies in the block (an IPv4 block never holds an IPv6 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let expected = || format!("expected an address or a CIDR block like \"198.18.0.0/15\" or \"2001:db8::/32\", got {text:?}");
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| expected())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(expected)?,
            None => max,
        };
        let addr = match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Cidr, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses `90s`, `30m`, `12h`, `1d` (a number and one unit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let expected = || format!("expected a duration like \"90s\", \"30m\", \"12h\" or \"1d\", got {text:?}");
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(expected)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| expected())?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(expected()),
    };
    number
        .checked_mul(seconds)
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .ok_or_else(expected)
}

fn duration<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// A configuration error with its place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

/// Finds the line of `key = ` in the `index`-th `[[table]]`, else the table's header.
fn line_of_array_key(text: &str, table: &str, index: usize, key: &str) -> Option<usize> {
    let header = format!("[[{table}]]");
    let mut count = 0;
    let mut inside = false;
    let mut header_line = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            inside = false;
            if trimmed == header {
                count += 1;
                if count == index + 1 {
                    inside = true;
                    header_line = Some(i + 1);
                }
            }
            continue;
        }
        if inside && trimmed.split('=').next().map(str::trim) == Some(key) {
            return Some(i + 1);
        }
    }
    header_line
}

/// Finds the line of `key = ` inside `[table]`, for errors found after parsing.
fn line_of_key(text: &str, table: &str, key: &str) -> Option<usize> {
    let mut in_table = false;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_table = trimmed.trim_start_matches('[').trim_end_matches(']').trim() == table;
            continue;
        }
        if in_table && trimmed.split('=').next().map(str::trim) == Some(key) {
            return Some(i + 1);
        }
    }
    None
}

impl Config {
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            line: e.span().map(|span| line_of(text, span.start)),
            message: e.message().trim().to_string(),
        })?;
        config.validate(text, file)?;
        Ok(config)
    }

    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            line: None,
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, file)
    }

    fn validate(&self, text: &str, file: &Path) -> Result<(), ConfigError> {
        let d = &self.dataplane;
        let error = |key: &str, message: String| ConfigError {
            file: file.to_path_buf(),
            line: line_of_key(text, "dataplane", key),
            message: format!("[dataplane] {key}: {message}"),
        };
        if d.inside.is_empty() || d.inside.len() > 15 {
            return Err(error(
                "inside",
                format!("expected an interface name of 1 to 15 characters, got {:?}", d.inside),
            ));
        }
        if d.outside.is_empty() || d.outside.len() > 15 {
            return Err(error(
                "outside",
                format!("expected an interface name of 1 to 15 characters, got {:?}", d.outside),
            ));
        }
        if d.inside == d.outside {
            return Err(error(
                "outside",
                format!("expected a port other than inside ({:?})", d.inside),
            ));
        }
        if d.inspect_ports.is_empty() || d.inspect_ports.contains(&0) {
            return Err(error(
                "inspect_ports",
                "expected a non-empty list of ports from 1 to 65535".into(),
            ));
        }
        if d.queues == 0 || d.queues > 64 {
            return Err(error("queues", format!("expected 1 to 64 queues, got {}", d.queues)));
        }
        if d.max_flows == 0 {
            return Err(error("max_flows", "expected at least 1".into()));
        }
        if !(4096..=16 << 20).contains(&d.tcp_buffer) {
            return Err(error(
                "tcp_buffer",
                format!("expected 4096 to 16777216 bytes, got {}", d.tcp_buffer),
            ));
        }
        if d.xdp_mode != "native" && d.xdp_mode != "generic" {
            return Err(error(
                "xdp_mode",
                format!("expected \"native\" or \"generic\", got {:?}", d.xdp_mode),
            ));
        }
        self.validate_profiles(text, file)
    }

    fn validate_profiles(&self, text: &str, file: &Path) -> Result<(), ConfigError> {
        let mut seen: Vec<&str> = Vec::new();
        for (index, profile) in self.profiles.iter().enumerate() {
            let error = |key: &str, message: String| ConfigError {
                file: file.to_path_buf(),
                line: line_of_array_key(text, "profile", index, key),
                message: format!("profile {:?}: {key}: {message}", profile.name),
            };
            if profile.name.is_empty() {
                return Err(error("name", "expected a non-empty name".into()));
            }
            if seen.contains(&profile.name.as_str()) {
                return Err(error("name", "defined twice".into()));
            }
            seen.push(&profile.name);
            let versions = "expected \"1.0\", \"1.1\", \"1.2\" or \"1.3\"";
            let min = Profile::wire_version(&profile.min_version)
                .ok_or_else(|| error("min_version", format!("{versions}, got {:?}", profile.min_version)))?;
            let max = Profile::wire_version(&profile.max_version)
                .ok_or_else(|| error("max_version", format!("{versions}, got {:?}", profile.max_version)))?;
            if min > max {
                let message = format!("{} is above max_version {}", profile.min_version, profile.max_version);
                return Err(error("min_version", message));
            }
            if min < 0x0303 && !profile.allow_sha1 {
                let message = format!(
                    "TLS {} needs SHA-1 suites: set allow_sha1 = true as well",
                    profile.min_version
                );
                return Err(error("min_version", message));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("loupe.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_file_gives_lab_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.dataplane.inside, "in0");
        assert_eq!(c.dataplane.outside, "out0");
        assert_eq!(c.dataplane.inspect_ports, vec![443]);
        assert_eq!(c.dataplane.fail, FailMode::Open);
    }

    #[test]
    fn reads_not_tls_policy() {
        assert_eq!(parse("").unwrap().decryption.not_tls, NotTls::Block);
        let c = parse("[decryption]\nnot_tls = \"splice\"\n").unwrap();
        assert_eq!(c.decryption.not_tls, NotTls::Splice);
        let err = parse("[decryption]\nnot_tls = \"allow\"\n").unwrap_err();
        assert!(
            err.starts_with("loupe.toml:2: ") && err.contains("block") && err.contains("splice"),
            "{err}"
        );
    }

    #[test]
    fn reads_ca_files() {
        let c = parse("[ca]\ncert = \"/etc/loupe/ca.crt\"\nkey = \"/etc/loupe/ca.key\"\n").unwrap();
        let ca = c.ca.unwrap();
        assert_eq!(ca.cert, PathBuf::from("/etc/loupe/ca.crt"));
        assert_eq!(ca.key, PathBuf::from("/etc/loupe/ca.key"));
        let err = parse("[ca]\ncert = \"/etc/loupe/ca.crt\"\n").unwrap_err();
        assert!(err.starts_with("loupe.toml:1: ") && err.contains("key"), "{err}");
    }

    #[test]
    fn reads_profiles() {
        let c = parse("[[profile]]\nname = \"default\"\nuntrusted = \"forward-untrust\"\n").unwrap();
        let p = c.profile("default").unwrap();
        assert_eq!(p.untrusted, Untrusted::ForwardUntrust);
        assert_eq!((p.min_version.as_str(), p.max_version.as_str()), ("1.2", "1.3"));
        assert_eq!(parse("").unwrap().profile("default"), Some(Profile::builtin_default()));
        assert_eq!(parse("").unwrap().profile("strict"), None);
    }

    #[test]
    fn profile_errors_name_the_line() {
        let text = "[[profile]]\nname = \"default\"\n\n[[profile]]\nname = \"legacy\"\nmin_version = \"1.0\"\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "loupe.toml:6: profile \"legacy\": min_version: TLS 1.0 needs SHA-1 suites: set allow_sha1 = true as well"
        );
        let err = parse("[[profile]]\nname = \"x\"\nmax_version = \"2.0\"\n").unwrap_err();
        assert!(
            err.starts_with("loupe.toml:3: profile \"x\": max_version: expected"),
            "{err}"
        );
        let err = parse("[[profile]]\nname = \"x\"\nuntrusted = \"allow\"\n").unwrap_err();
        assert!(
            err.starts_with("loupe.toml:3: ") && err.contains("forward-untrust"),
            "{err}"
        );
    }

    #[test]
    fn reads_dataplane() {
        let c = parse("[dataplane]\ninside = \"eth1\"\noutside = \"eth2\"\ninspect_ports = [443, 8443]\nqueues = 2\nfail = \"closed\"\n").unwrap();
        assert_eq!(c.dataplane.inspect_ports, vec![443, 8443]);
        assert_eq!(c.dataplane.queues, 2);
        assert_eq!(c.dataplane.fail, FailMode::Closed);
    }

    #[test]
    fn errors_name_file_line_and_expectation() {
        let err = parse("[dataplane]\ninside = \"in0\"\nfail = \"ajar\"\n").unwrap_err();
        assert!(err.starts_with("loupe.toml:3: "), "{err}");
        assert!(err.contains("open") && err.contains("closed"), "{err}");

        let err = parse("[dataplane]\nqueues = 0\n").unwrap_err();
        assert_eq!(err, "loupe.toml:2: [dataplane] queues: expected 1 to 64 queues, got 0");

        let err = parse("[dataplane]\n\ninspect_port = [443]\n").unwrap_err();
        assert!(
            err.starts_with("loupe.toml:3: ") && err.contains("inspect_port"),
            "{err}"
        );

        let err = parse("[dataplane]\noutside = \"in0\"\n").unwrap_err();
        assert_eq!(
            err,
            "loupe.toml:2: [dataplane] outside: expected a port other than inside (\"in0\")"
        );
    }
}
