//! The configuration file (TOML). Every error names the file, the line and what was
//! expected: `loupe.toml:42: rule "banks": unknown profile "strict2" (known: default, strict)`.
//! Parse errors get their table and key from the spans of the document; checks after
//! parsing (`Config::validate`) find the line of the offending key the same way.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::de::{DeString, DeTable, DeValue};
use toml::Spanned;

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
    /// Half-open flows (the client has not completed its TCP handshake) one worker holds
    /// at most, within `max_flows`: a SYN beyond evicts the oldest, so a SYN flood cannot
    /// take the places of established sessions.
    pub max_half_open: usize,
    /// From this many half-open flows on (a SYN flood), loupe answers a SYN itself and
    /// connects to the server only once the client completed its handshake, so spoofed
    /// SYNs never reach the server (a closed server port then shows as a reset after
    /// the handshake, not as a refused connection).
    pub syn_proxy_above: usize,
    /// TCP buffer per direction and side of a flow, in bytes.
    pub tcp_buffer: usize,
    /// "native" (driver) or "generic" (skb) XDP.
    pub xdp_mode: String,
    /// First CPU core to pin workers to; worker q runs on core first_core + q.
    pub first_core: Option<usize>,
    /// Drop UDP to the inspected ports (QUIC) in XDP, so browsers fall back to TCP where
    /// loupe can inspect them.
    pub drop_quic: bool,
    /// A measurement mode, not for production: the workers copy every frame XDP steers
    /// to them to the other port unchanged, with no TCP stack, no TLS and no policy, so
    /// nothing is inspected or logged. It gives the AF_XDP floor of this host (the
    /// bench's `xsk-forward` mode) against which loupe's own per-frame work is measured.
    pub forward_only: bool,
    /// Microseconds a worker keeps polling its rings after the last frame before it
    /// sleeps in poll(2) (0: sleep at once). A request arriving within it costs no
    /// wakeup; the CPU spent spinning is the price.
    pub busy_poll_us: u64,
}

/// The longest `busy_poll_us` accepted: a worker spins at most this long per quiet spell.
pub const MAX_BUSY_POLL_US: u64 = 1_000;

impl Default for Dataplane {
    fn default() -> Self {
        Dataplane {
            inside: "in0".into(),
            outside: "out0".into(),
            inspect_ports: vec![443],
            queues: 1,
            fail: FailMode::Open,
            max_flows: 16_384,
            max_half_open: 4096,
            syn_proxy_above: 256,
            tcp_buffer: 64 * 1024,
            xdp_mode: "native".into(),
            first_core: None,
            drop_quic: true,
            forward_only: false,
            busy_poll_us: 0,
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

/// The control socket (`loupectl`) and what the control thread may do on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Control {
    /// The Unix socket; `loupe run --control-socket` wins over it.
    pub socket: PathBuf,
    /// Members of this group may use the socket besides root (it is created root:GROUP,
    /// mode 0660); none: root only.
    pub group: Option<String>,
    /// The client address `loupectl trust fetch` probes a server from when no handshake
    /// through loupe has shown its chain. loupe owns no address on the wire, so this must
    /// be a host behind the inside port that answers ARP for it (the server's answers are
    /// taken off the wire before they reach it); none: no probes.
    pub probe_source: Option<IpAddr>,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            socket: PathBuf::from(crate::protocol::DEFAULT_SOCKET),
            group: None,
            probe_source: None,
        }
    }
}

/// `[metrics]`: the Prometheus endpoint. Off unless `listen` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// Address and port `GET /metrics` is served on, e.g. `127.0.0.1:9469`. The page
    /// has no authentication: a loopback or management address, not the wire's side.
    #[serde(deserialize_with = "socket_address")]
    pub listen: Option<SocketAddr>,
}

/// An `address:port` string (`[::1]:9469` for IPv6), with what was expected on error.
fn socket_address<'de, D: serde::Deserializer<'de>>(value: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(value)?;
    text.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "expected an address and port such as \"127.0.0.1:9469\", got {text:?}"
        ))
    })
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

/// A named list of domains, one per line in `file` (read by `Config::load_categories`;
/// `#` comments; `example.com` also covers its subdomains).
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
    /// Server names: exact (`www.example.com`) or `*.example.com` (any name below
    /// `example.com`, not `example.com` itself). Stored lowercase.
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
    /// `decrypt` and `decrypt-inbound`: what is exported of the rule's sessions (see
    /// `[export]`); default: nothing.
    #[serde(default)]
    pub export: Vec<ExportKind>,
}

/// What a decrypting rule exports of its sessions (`export = ["pcap", "keylog"]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportKind {
    /// The plaintext both ways, as synthetic TCP flows in `plaintext-<n>.pcap` files.
    Pcap,
    /// The TLS secrets of both legs (NSS key log format) in the key log file.
    Keylog,
}

impl ExportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ExportKind::Pcap => "pcap",
            ExportKind::Keylog => "keylog",
        }
    }
}

/// Where the decrypted export writes (`[export]`); what is exported is chosen per rule
/// (`export = [...]`), nothing by default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Export {
    /// The directory of the pcap files (and of the default key log); none:
    /// `<log-dir>/export`.
    pub dir: Option<PathBuf>,
    /// Size cap of one pcap file, in bytes: a packet that would pass it starts a new file.
    pub pcap_max_bytes: u64,
    /// pcap files kept; opening one more deletes the oldest.
    pub pcap_max_files: usize,
    /// The key log; none: `keys.log` in the export directory.
    pub keylog_file: Option<PathBuf>,
}

impl Default for Export {
    fn default() -> Self {
        Export {
            dir: None,
            pcap_max_bytes: 100 << 20,
            pcap_max_files: 10,
            keylog_file: None,
        }
    }
}

impl Export {
    /// The export directory: `dir`, or `export` in the log directory.
    pub fn dir_in(&self, log_dir: &Path) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| log_dir.join("export"))
    }

    /// The key log: `keylog_file`, or `keys.log` in the export directory.
    pub fn keylog_path(&self, log_dir: &Path) -> PathBuf {
        self.keylog_file
            .clone()
            .unwrap_or_else(|| self.dir_in(log_dir).join("keys.log"))
    }
}

/// The smallest `[export] pcap_max_bytes`: 64 KiB (a file holds at least one packet).
pub const MIN_EXPORT_FILE_BYTES: u64 = 64 << 10;
/// The most `[export] pcap_max_files` may be.
pub const MAX_EXPORT_FILES: usize = 100_000;

/// What a URL rule does with the requests it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UrlAction {
    /// Let the request through; no later URL rule is tried.
    Allow,
    /// Let the request through and raise an alert.
    Alert,
    /// Refuse the request (the inspection engine answers it or ends the session).
    Block,
}

impl UrlAction {
    pub fn as_str(self) -> &'static str {
        match self {
            UrlAction::Allow => "allow",
            UrlAction::Alert => "alert",
            UrlAction::Block => "block",
        }
    }
}

/// A URL rule (`[[url_rule]]`), judged for every HTTP request inside a decrypted session.
/// Rules are tried in file order and the first that matches decides; a request no rule
/// matches is allowed. Every condition given must hold; an absent condition matches all;
/// within one condition any listed value will do.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlRule {
    pub name: String,
    /// Request hosts (`Host` or `:authority`, without the port): exact (`www.example.com`)
    /// or `*.example.com` (any name below `example.com`, not `example.com` itself). Stored
    /// lowercase.
    #[serde(default)]
    pub host: Vec<String>,
    /// Request paths (without the query), each starting with `/`. A pattern containing `*`
    /// or `?` is a glob matched against the whole path (`*`: any run of characters, `/`
    /// included; `?`: any one character), e.g. `/api/*/delete`; any other pattern is a
    /// prefix (`/admin/` matches `/admin/` and everything below it). Case-sensitive.
    #[serde(default)]
    pub path: Vec<String>,
    /// Request methods, compared in uppercase. Stored uppercase.
    #[serde(default)]
    pub method: Vec<String>,
    /// Category names (`[[category]]`), matched against the request host as rules match
    /// the SNI.
    #[serde(default)]
    pub category: Vec<String>,
    pub action: UrlAction,
}

/// What to do when a decrypted stream breaks the HTTP protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnProtocolError {
    /// Relay the rest of the session uninspected (and log why).
    #[default]
    Pass,
    /// End the session.
    Block,
}

impl OnProtocolError {
    pub fn as_str(self) -> &'static str {
        match self {
            OnProtocolError::Pass => "pass",
            OnProtocolError::Block => "block",
        }
    }
}

/// What the inspection engine does with the plaintext of decrypted sessions, and its
/// bounds. Applied by the inspection engine; every session keeps the settings of the
/// snapshot it started with.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Inspection {
    /// Inspect HTTP (1.1 and 2) inside decrypted sessions; off: relay the plaintext as is.
    pub http: bool,
    /// A stream that is not the HTTP it claims to be: `pass` or `block`.
    pub on_protocol_error: OnProtocolError,
    /// Largest HTTP/1.x head (request or status line, header lines), in bytes.
    pub max_header_bytes: usize,
    /// HTTP/2 streams open at once on one connection.
    pub max_streams: u32,
    /// Largest HPACK dynamic table a peer may use, in bytes.
    pub hpack_table_size: usize,
    /// Largest HTTP/2 header block (HEADERS or PUSH_PROMISE and its CONTINUATIONs), in
    /// bytes.
    pub max_header_block: usize,
    /// Answer a blocked request with loupe's 403 HTML page; off: refuse it without a page.
    pub block_page: bool,
    /// Suricata rule files, paths or globs (`/etc/loupe/rules/*.rules`), loaded in order;
    /// relative ones are relative to the configuration file. Empty: no signatures.
    pub rules: Vec<PathBuf>,
    /// Rule variables (`HOME_NET = "[198.18.0.0/15]"`), named without the `$`; they add
    /// to and override the defaults Suricata ships.
    pub vars: BTreeMap<String, String>,
    /// Body bytes each way, after content decoding, that signatures inspect.
    pub body_depth: usize,
}

impl Default for Inspection {
    fn default() -> Self {
        Inspection {
            http: true,
            on_protocol_error: OnProtocolError::Pass,
            max_header_bytes: 64 * 1024,
            max_streams: 4096,
            hpack_table_size: 64 * 1024,
            max_header_block: 100 * 1024,
            block_page: true,
            rules: Vec::new(),
            vars: BTreeMap::new(),
            body_depth: 1 << 20,
        }
    }
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

/// How long a session may sit without progress before loupe ends it, resetting both
/// connections and logging why. A live setting: a loaded policy applies to open sessions.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// No frame either way for this long ends a session, whatever its stage.
    #[serde(deserialize_with = "duration")]
    pub idle: Duration,
    /// From the client's SYN until the session is decided and, when decrypted, both TLS
    /// handshakes are done: a client that connects and says nothing holds a flow slot no
    /// longer than this.
    #[serde(deserialize_with = "duration")]
    pub handshake: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            idle: Duration::from_secs(3600),
            handshake: Duration::from_secs(30),
        }
    }
}

/// What to do when the server's certificate chain does not validate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Undecryptable {
    /// End the session with a logged reason.
    #[default]
    Block,
    /// End this session, remember the server in the exclusion cache, and splice the next
    /// ones uninspected.
    Bypass,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
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
    /// Offer servers everything this profile allows even where the client offered only
    /// stronger (versions, TLS 1.2 suites, groups, signature algorithms), to reach servers
    /// that speak only legacy TLS. Off: the upstream hello is never weaker than the client's.
    #[serde(default)]
    pub legacy_servers: bool,
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
            legacy_servers: false,
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

    /// The checks a profile's settings must pass by themselves (BoringSSL checks the
    /// cipher, group and signature names when the profile is built): the failing key and why.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let versions = "expected \"1.0\", \"1.1\", \"1.2\" or \"1.3\"";
        let min = Profile::wire_version(&self.min_version)
            .ok_or_else(|| ("min_version", format!("{versions}, got {:?}", self.min_version)))?;
        let max = Profile::wire_version(&self.max_version)
            .ok_or_else(|| ("max_version", format!("{versions}, got {:?}", self.max_version)))?;
        if min > max {
            let message = format!("{} is above max_version {}", self.min_version, self.max_version);
            return Err(("min_version", message));
        }
        if min < 0x0303 && !self.allow_sha1 {
            let message = format!(
                "TLS {} needs SHA-1 suites: set allow_sha1 = true as well",
                self.min_version
            );
            return Err(("min_version", message));
        }
        Ok(())
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
    #[serde(default, rename = "url_rule")]
    pub url_rules: Vec<UrlRule>,
    #[serde(default)]
    pub inspection: Inspection,
    #[serde(default)]
    pub exclusions: Exclusions,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub control: Control,
    #[serde(default)]
    pub export: Export,
    #[serde(default)]
    pub metrics: Metrics,
    /// The file and text this configuration was parsed from (empty for `Config::default()`),
    /// so that errors found later (category files, CA files) can name the line.
    #[serde(skip)]
    pub source: ConfigSource,
}

/// Where a configuration came from: the file name used in errors and the text, from which
/// the lines of tables and keys are found.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConfigSource {
    pub file: PathBuf,
    pub text: String,
}

impl fmt::Debug for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigSource")
            .field("file", &self.file)
            .field("text", &format_args!("<{} bytes>", self.text.len()))
            .finish()
    }
}

/// A category with its domains, read from its file: lowercase, without a leading `*.` or
/// `.`, each covering itself and every name below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedCategory {
    pub name: String,
    pub domains: Vec<String>,
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
        let expected =
            || format!("expected an address or a CIDR block like \"198.18.0.0/15\" or \"2001:db8::/32\", got {text:?}");
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

/// The document with the spans of its keys and values (whatever the syntax: headers,
/// dotted keys, inline tables, comments). `None` when the text is not TOML.
fn spans(text: &str) -> Option<DeTable<'_>> {
    DeTable::parse(text).ok().map(Spanned::into_inner)
}

fn entry<'t, 'i>(table: &'t DeTable<'i>, key: &str) -> Option<(&'t Spanned<DeString<'i>>, &'t Spanned<DeValue<'i>>)> {
    table.iter().find(|(k, _)| k.get_ref() == key)
}

/// The line of `key` in the `index`-th `[[table]]`; the line of that table's header when
/// the key is absent; `None` when there is no such table.
fn line_of_array_key(text: &str, table: &str, index: usize, key: &str) -> Option<usize> {
    let doc = spans(text)?;
    let (_, array) = entry(&doc, table)?;
    let DeValue::Array(items) = array.get_ref() else {
        return Some(line_of(text, array.span().start));
    };
    let item = items.get(index)?;
    let offset = match item.get_ref() {
        DeValue::Table(fields) => entry(fields, key).map_or(item.span().start, |(k, _)| k.span().start),
        _ => item.span().start,
    };
    Some(line_of(text, offset))
}

/// The line of `key` in `[table]`; the line of the table's header when the key is absent;
/// `None` when the table is absent too.
fn line_of_key(text: &str, table: &str, key: &str) -> Option<usize> {
    let doc = spans(text)?;
    let (name, value) = entry(&doc, table)?;
    let offset = match value.get_ref() {
        DeValue::Table(fields) => entry(fields, key).map_or(value.span().start, |(k, _)| k.span().start),
        _ => name.span().start,
    };
    Some(line_of(text, offset))
}

/// The line of `key` in `[table.subtable]`; the subtable's line when the key is not found.
fn line_of_subtable_key(text: &str, table: &str, subtable: &str, key: &str) -> Option<usize> {
    let doc = spans(text)?;
    let (_, value) = entry(&doc, table)?;
    let DeValue::Table(fields) = value.get_ref() else {
        return None;
    };
    let (name, value) = entry(fields, subtable)?;
    let offset = match value.get_ref() {
        DeValue::Table(fields) => entry(fields, key).map_or(name.span().start, |(k, _)| k.span().start),
        _ => name.span().start,
    };
    Some(line_of(text, offset))
}

/// What a parse error at `offset` lies in: the table (`[dataplane] `, `rule "banks": `, or
/// nothing at the top level) and the key whose value holds it (`None` when the error is
/// about a key itself or a whole table, e.g. an unknown or a missing key).
fn place_of(text: &str, offset: usize) -> (String, Option<String>) {
    let Some(doc) = spans(text) else {
        return (String::new(), None);
    };
    // `Some(None)`: the table itself; `Some(Some(key))`: the value of `key`.
    let inside = |fields: &DeTable<'_>, span: std::ops::Range<usize>| {
        for (key, value) in fields.iter() {
            if key.span().contains(&offset) {
                return Some(None);
            }
            if value.span().contains(&offset) {
                return Some(Some(key.get_ref().to_string()));
            }
        }
        span.contains(&offset).then_some(None)
    };
    for (name, value) in doc.iter() {
        if name.span().contains(&offset) {
            return (String::new(), None);
        }
        match value.get_ref() {
            DeValue::Table(fields) => {
                if let Some(key) = inside(fields, value.span()) {
                    return (format!("[{}] ", name.get_ref()), key);
                }
            }
            DeValue::Array(items) if items.iter().all(|item| matches!(item.get_ref(), DeValue::Table(_))) => {
                for (index, item) in items.iter().enumerate() {
                    let DeValue::Table(fields) = item.get_ref() else {
                        continue;
                    };
                    if let Some(key) = inside(fields, item.span()) {
                        let label = match entry(fields, "name").map(|(_, v)| v.get_ref()) {
                            Some(DeValue::String(item_name)) => {
                                format!("{} {:?}: ", name.get_ref(), item_name.as_ref())
                            }
                            _ => format!("{} #{}: ", name.get_ref(), index + 1),
                        };
                        return (label, key);
                    }
                }
            }
            _ => {}
        }
        if value.span().contains(&offset) {
            return (String::new(), Some(name.get_ref().to_string()));
        }
    }
    (String::new(), None)
}

/// serde's words for integer types, in an operator's words.
fn plain_words(key: Option<&str>, message: &str) -> String {
    if matches!(key, Some("ports" | "inspect_ports")) {
        if let Some(head) = message.strip_suffix("expected u16") {
            return format!("{head}expected a port from 1 to 65535");
        }
    }
    for (rust, words) in [
        ("u8", "an integer from 0 to 255"),
        ("u16", "an integer from 0 to 65535"),
        ("u32", "an integer from 0 to 4294967295"),
        ("u64", "a non-negative integer"),
        ("usize", "a non-negative integer"),
    ] {
        if let Some(head) = message.strip_suffix(&format!("expected {rust}")) {
            return format!("{head}expected {words}");
        }
    }
    message.to_string()
}

/// Whether `name` is a DNS name loupe can compare: labels of 1 to 63 ASCII letters,
/// digits, `-` or `_`, at most 253 characters in all (internationalised names in their
/// `xn--` form).
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Whether `pattern` is a rule's server name: a DNS name, or `*.` and a DNS name.
fn is_sni_pattern(pattern: &str) -> bool {
    is_dns_name(pattern.strip_prefix("*.").unwrap_or(pattern))
}

fn known_list(names: &[&str]) -> String {
    if names.is_empty() {
        "none configured".to_string()
    } else {
        format!("known: {}", names.join(", "))
    }
}

fn path_is_empty(path: &Path) -> bool {
    path.as_os_str().is_empty()
}

/// Builds errors that point into one configuration text.
struct Errors<'a> {
    text: &'a str,
    file: &'a Path,
}

impl Errors<'_> {
    /// An error about `key` of `[table]`: `[table] key: message`.
    fn key(&self, table: &str, key: &str, message: String) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            line: line_of_key(self.text, table, key),
            message: format!("[{table}] {key}: {message}"),
        }
    }

    /// An error in the `index`-th `[[table]]` named `name`, at `key`:
    /// `table "name": message` (the message names the key).
    fn item(&self, table: &str, index: usize, name: &str, key: &str, message: String) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            line: line_of_array_key(self.text, table, index, key),
            message: format!("{table} {name:?}: {message}"),
        }
    }
}

impl Config {
    /// Parses and validates a configuration. `file` only names it in errors: nothing is
    /// read from the filesystem, and relative paths stay as written (see [`Config::load`]).
    /// Rule server names (`sni`) and URL rule hosts are stored lowercase, URL rule methods
    /// uppercase.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|span| span.start);
            let (table, key) = offset.map_or((String::new(), None), |offset| place_of(text, offset));
            let message = plain_words(key.as_deref(), e.message().trim());
            ConfigError {
                file: file.to_path_buf(),
                line: offset.map(|offset| line_of(text, offset)),
                message: match key {
                    Some(key) => format!("{table}{key}: {message}"),
                    None => format!("{table}{message}"),
                },
            }
        })?;
        config.validate(text, file)?;
        for rule in &mut config.rules {
            for pattern in &mut rule.sni {
                pattern.make_ascii_lowercase();
            }
        }
        for rule in &mut config.url_rules {
            rule.host.iter_mut().for_each(|pattern| pattern.make_ascii_lowercase());
            rule.method.iter_mut().for_each(|method| method.make_ascii_uppercase());
        }
        config.source = ConfigSource {
            file: file.to_path_buf(),
            text: text.to_string(),
        };
        Ok(config)
    }

    /// Reads, parses and validates the file. Relative paths in it (`[ca]`, `[paths]`,
    /// `[trust] ca_files`, `[[category]] file`, a rule's `certificate` and `key`) are taken
    /// relative to the directory of the configuration file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            line: None,
            message: format!("cannot read: {e}"),
        })?;
        let mut config = Config::parse(&text, file)?;
        config.resolve_paths(file.parent().unwrap_or(Path::new("")));
        Ok(config)
    }

    /// Makes every relative path of the configuration relative to `dir` (what
    /// [`Config::load`] does with the configuration file's directory).
    pub fn resolve_paths(&mut self, dir: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() && !path_is_empty(path) {
                *path = dir.join(&*path);
            }
        };
        if let Some(ca) = &mut self.ca {
            resolve(&mut ca.cert);
            resolve(&mut ca.key);
        }
        resolve(&mut self.control.socket);
        self.paths.state_dir.iter_mut().for_each(resolve);
        self.paths.log_dir.iter_mut().for_each(resolve);
        self.trust.ca_files.iter_mut().for_each(resolve);
        self.categories.iter_mut().for_each(|c| resolve(&mut c.file));
        for rule in &mut self.rules {
            rule.certificate.iter_mut().for_each(resolve);
            rule.key.iter_mut().for_each(resolve);
        }
        self.export.dir.iter_mut().for_each(resolve);
        self.export.keylog_file.iter_mut().for_each(resolve);
        self.inspection.rules.iter_mut().for_each(resolve);
    }

    /// Whether some rule exports `kind` (what the daemon opens files for).
    pub fn exports(&self, kind: ExportKind) -> bool {
        self.rules.iter().any(|rule| rule.export.contains(&kind))
    }

    /// Reads every category's file (see [`LoadedCategory::parse`] for the format). A file
    /// that cannot be read is reported at the line of its `file` key in the configuration;
    /// a bad line at its line in the category file.
    pub fn load_categories(&self) -> Result<Vec<LoadedCategory>, ConfigError> {
        let mut loaded = Vec::with_capacity(self.categories.len());
        for (index, category) in self.categories.iter().enumerate() {
            let text = std::fs::read_to_string(&category.file).map_err(|e| ConfigError {
                file: self.source.file.clone(),
                line: line_of_array_key(&self.source.text, "category", index, "file"),
                message: format!(
                    "category {:?}: file \"{}\": cannot read: {e}",
                    category.name,
                    category.file.display()
                ),
            })?;
            loaded.push(LoadedCategory::parse(&category.name, &category.file, &text)?);
        }
        Ok(loaded)
    }

    /// The profile names a rule may use, in file order; the built-in `default` first when
    /// the file does not configure it.
    pub fn profile_names(&self) -> Vec<&str> {
        let mut names = Vec::with_capacity(self.profiles.len() + 1);
        if !self.profiles.iter().any(|p| p.name == "default") {
            names.push("default");
        }
        names.extend(self.profiles.iter().map(|p| p.name.as_str()));
        names
    }

    fn validate(&self, text: &str, file: &Path) -> Result<(), ConfigError> {
        let errors = Errors { text, file };
        self.validate_dataplane(&errors)?;
        self.validate_files(&errors)?;
        self.validate_profiles(&errors)?;
        self.validate_decryption(&errors)?;
        self.validate_exclusions(&errors)?;
        self.validate_categories(&errors)?;
        self.validate_rules(&errors)?;
        self.validate_url_rules(&errors)?;
        self.validate_inspection(&errors)?;
        self.validate_export(&errors)
    }

    fn validate_dataplane(&self, errors: &Errors) -> Result<(), ConfigError> {
        let d = &self.dataplane;
        let error = |key: &str, message: String| errors.key("dataplane", key, message);
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
        if d.max_half_open == 0 {
            return Err(error("max_half_open", "expected at least 1".into()));
        }
        if !(4096..=16 << 20).contains(&d.tcp_buffer) {
            return Err(error(
                "tcp_buffer",
                format!("expected 4096 to 16777216 bytes, got {}", d.tcp_buffer),
            ));
        }
        if d.busy_poll_us > MAX_BUSY_POLL_US {
            return Err(error(
                "busy_poll_us",
                format!("expected 0 to {MAX_BUSY_POLL_US} microseconds, got {}", d.busy_poll_us),
            ));
        }
        if d.xdp_mode != "native" && d.xdp_mode != "generic" {
            return Err(error(
                "xdp_mode",
                format!("expected \"native\" or \"generic\", got {:?}", d.xdp_mode),
            ));
        }
        Ok(())
    }

    /// File and directory names may not be empty (`""` would mean the current directory).
    fn validate_files(&self, errors: &Errors) -> Result<(), ConfigError> {
        if let Some(ca) = &self.ca {
            for (key, path) in [("cert", &ca.cert), ("key", &ca.key)] {
                if path_is_empty(path) {
                    return Err(errors.key("ca", key, "expected a file name, got \"\"".into()));
                }
            }
        }
        for (key, path) in [("state_dir", &self.paths.state_dir), ("log_dir", &self.paths.log_dir)] {
            if path.as_deref().is_some_and(path_is_empty) {
                return Err(errors.key("paths", key, "expected a directory, got \"\"".into()));
            }
        }
        if self.trust.ca_files.iter().any(|path| path_is_empty(path)) {
            return Err(errors.key("trust", "ca_files", "expected file names, got \"\"".into()));
        }
        if self.export.dir.as_deref().is_some_and(path_is_empty) {
            return Err(errors.key("export", "dir", "expected a directory, got \"\"".into()));
        }
        if self.export.keylog_file.as_deref().is_some_and(path_is_empty) {
            return Err(errors.key("export", "keylog_file", "expected a file name, got \"\"".into()));
        }
        Ok(())
    }

    fn validate_profiles(&self, errors: &Errors) -> Result<(), ConfigError> {
        let mut seen: Vec<&str> = Vec::new();
        for (index, profile) in self.profiles.iter().enumerate() {
            let error = |key: &str, message: String| {
                errors.item("profile", index, &profile.name, key, format!("{key}: {message}"))
            };
            if profile.name.is_empty() {
                return Err(error("name", "expected a non-empty name".into()));
            }
            if seen.contains(&profile.name.as_str()) {
                return Err(error("name", "defined twice".into()));
            }
            seen.push(&profile.name);
            profile.check().map_err(|(key, message)| error(key, message))?;
        }
        Ok(())
    }

    fn validate_decryption(&self, errors: &Errors) -> Result<(), ConfigError> {
        let d = &self.decryption;
        if d.default_action == RuleAction::DecryptInbound {
            return Err(errors.key(
                "decryption",
                "default_action",
                "expected \"decrypt\", \"no-decrypt\" or \"block\", got \"decrypt-inbound\" \
                 (it needs a server's certificate and key: write a [[rule]] for that server)"
                    .into(),
            ));
        }
        let known = self.profile_names();
        if !known.contains(&d.default_profile.as_str()) {
            return Err(errors.key(
                "decryption",
                "default_profile",
                format!("unknown profile {:?} ({})", d.default_profile, known_list(&known)),
            ));
        }
        Ok(())
    }

    fn validate_exclusions(&self, errors: &Errors) -> Result<(), ConfigError> {
        if self.exclusions.max_entries == 0 {
            return Err(errors.key("exclusions", "max_entries", "expected at least 1, got 0".into()));
        }
        Ok(())
    }

    fn validate_categories(&self, errors: &Errors) -> Result<(), ConfigError> {
        let mut seen: Vec<&str> = Vec::new();
        for (index, category) in self.categories.iter().enumerate() {
            let error = |key: &str, message: &str| {
                errors.item("category", index, &category.name, key, format!("{key}: {message}"))
            };
            if category.name.is_empty() {
                return Err(error("name", "expected a non-empty name"));
            }
            if seen.contains(&category.name.as_str()) {
                return Err(error("name", "defined twice"));
            }
            seen.push(&category.name);
            if path_is_empty(&category.file) {
                return Err(error("file", "expected a file name, got \"\""));
            }
        }
        Ok(())
    }

    fn validate_rules(&self, errors: &Errors) -> Result<(), ConfigError> {
        let profiles = self.profile_names();
        let categories: Vec<&str> = self.categories.iter().map(|c| c.name.as_str()).collect();
        let mut seen: Vec<&str> = Vec::new();
        for (index, rule) in self.rules.iter().enumerate() {
            let error = |key: &str, message: String| errors.item("rule", index, &rule.name, key, message);
            let action = rule.action.as_str();
            if rule.name.is_empty() {
                return Err(error("name", "name: expected a non-empty name".into()));
            }
            if seen.contains(&rule.name.as_str()) {
                return Err(error("name", "name: defined twice".into()));
            }
            seen.push(&rule.name);
            if rule.ports.contains(&0) {
                return Err(error("ports", "ports: expected ports from 1 to 65535, got 0".into()));
            }
            if let Some(pattern) = rule.sni.iter().find(|p| !is_sni_pattern(p)) {
                return Err(error(
                    "sni",
                    format!(
                        "sni: expected a server name like \"www.example.com\" or \"*.example.com\" \
                         (a wildcard only as the whole first label), got {pattern:?}"
                    ),
                ));
            }
            if let Some(name) = rule.category.iter().find(|c| !categories.contains(&c.as_str())) {
                return Err(error(
                    "category",
                    format!("unknown category {name:?} ({})", known_list(&categories)),
                ));
            }
            let decrypts = matches!(rule.action, RuleAction::Decrypt | RuleAction::DecryptInbound);
            if let Some(profile) = &rule.profile {
                if !decrypts {
                    return Err(error(
                        "profile",
                        format!(
                            "profile: only allowed with action \"decrypt\" or \"decrypt-inbound\", \
                             this rule's action is {action:?}"
                        ),
                    ));
                }
                if !profiles.contains(&profile.as_str()) {
                    return Err(error(
                        "profile",
                        format!("unknown profile {profile:?} ({})", known_list(&profiles)),
                    ));
                }
            }
            if !rule.export.is_empty() && !decrypts {
                return Err(error(
                    "export",
                    format!(
                        "export: only allowed with action \"decrypt\" or \"decrypt-inbound\" (only decrypted \
                         sessions have plaintext and keys), this rule's action is {action:?}"
                    ),
                ));
            }
            let repeated = (1..rule.export.len()).find(|&i| rule.export[..i].contains(&rule.export[i]));
            if let Some(i) = repeated {
                return Err(error(
                    "export",
                    format!("export: {:?} listed twice", rule.export[i].as_str()),
                ));
            }
            let pem_files = [
                (
                    "certificate",
                    &rule.certificate,
                    "the server's certificate chain, a PEM file",
                ),
                ("key", &rule.key, "the server's private key, a PEM file"),
            ];
            for (key, path, what) in pem_files {
                match (rule.action, path) {
                    (RuleAction::DecryptInbound, None) => {
                        return Err(error(key, format!("action \"decrypt-inbound\" needs {key} ({what})")));
                    }
                    (RuleAction::DecryptInbound, Some(path)) if path_is_empty(path) => {
                        return Err(error(key, format!("{key}: expected {what}, got \"\"")));
                    }
                    (RuleAction::DecryptInbound, Some(_)) | (_, None) => {}
                    (_, Some(_)) => {
                        return Err(error(
                            key,
                            format!(
                                "{key}: only allowed with action \"decrypt-inbound\", this rule's action is {action:?}"
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

impl Config {
    fn validate_url_rules(&self, errors: &Errors) -> Result<(), ConfigError> {
        let categories: Vec<&str> = self.categories.iter().map(|c| c.name.as_str()).collect();
        let mut seen: Vec<&str> = Vec::new();
        for (index, rule) in self.url_rules.iter().enumerate() {
            let error = |key: &str, message: String| errors.item("url_rule", index, &rule.name, key, message);
            if rule.name.is_empty() {
                return Err(error("name", "name: expected a non-empty name".into()));
            }
            if seen.contains(&rule.name.as_str()) {
                return Err(error("name", "name: defined twice".into()));
            }
            seen.push(&rule.name);
            if let Some(pattern) = rule.host.iter().find(|p| !is_sni_pattern(p)) {
                return Err(error(
                    "host",
                    format!(
                        "host: expected a host name like \"www.example.com\" or \"*.example.com\" \
                         (a wildcard only as the whole first label), got {pattern:?}"
                    ),
                ));
            }
            for pattern in &rule.path {
                check_path_pattern(pattern).map_err(|message| error("path", format!("path: {message}")))?;
            }
            if let Some(method) = rule.method.iter().find(|m| !is_method(m)) {
                return Err(error(
                    "method",
                    format!("method: expected an HTTP method like \"GET\" or \"POST\", got {method:?}"),
                ));
            }
            if let Some(name) = rule.category.iter().find(|c| !categories.contains(&c.as_str())) {
                return Err(error(
                    "category",
                    format!("unknown category {name:?} ({})", known_list(&categories)),
                ));
            }
        }
        Ok(())
    }

    fn validate_inspection(&self, errors: &Errors) -> Result<(), ConfigError> {
        let i = &self.inspection;
        let error = |key: &str, message: String| errors.key("inspection", key, message);
        let bytes = |key: &str, value: usize, min: usize| {
            if (min..=MAX_INSPECTION_BYTES).contains(&value) {
                Ok(())
            } else {
                Err(error(
                    key,
                    format!("expected {min} to {MAX_INSPECTION_BYTES} bytes, got {value}"),
                ))
            }
        };
        bytes("max_header_bytes", i.max_header_bytes, 1024)?;
        bytes("hpack_table_size", i.hpack_table_size, 4096)?;
        bytes("max_header_block", i.max_header_block, 1024)?;
        bytes("body_depth", i.body_depth, 0)?;
        for (name, value) in &i.vars {
            let var_error = |message: &str| ConfigError {
                file: errors.file.to_path_buf(),
                line: line_of_subtable_key(errors.text, "inspection", "vars", name),
                message: format!("[inspection.vars] {name}: {message}"),
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(var_error(
                    "a variable name is letters, digits and '_' (written without the '$')",
                ));
            }
            if value.trim().is_empty() {
                return Err(var_error("the value is empty"));
            }
        }
        if !(1..=MAX_STREAMS).contains(&i.max_streams) {
            return Err(error(
                "max_streams",
                format!("expected 1 to {MAX_STREAMS} streams, got {}", i.max_streams),
            ));
        }
        Ok(())
    }

    fn validate_export(&self, errors: &Errors) -> Result<(), ConfigError> {
        let e = &self.export;
        if e.pcap_max_bytes < MIN_EXPORT_FILE_BYTES {
            return Err(errors.key(
                "export",
                "pcap_max_bytes",
                format!(
                    "expected at least {MIN_EXPORT_FILE_BYTES} bytes (64 KiB), got {}",
                    e.pcap_max_bytes
                ),
            ));
        }
        if !(1..=MAX_EXPORT_FILES).contains(&e.pcap_max_files) {
            return Err(errors.key(
                "export",
                "pcap_max_files",
                format!("expected 1 to {MAX_EXPORT_FILES} files, got {}", e.pcap_max_files),
            ));
        }
        Ok(())
    }
}

/// The most any `[inspection]` byte bound may be: 16 MiB.
const MAX_INSPECTION_BYTES: usize = 16 << 20;
/// The most `[inspection] max_streams` may be.
const MAX_STREAMS: u32 = 65_536;

/// Whether `method` is an HTTP method: a token (RFC 9110 §5.6.2), at most 32 characters.
fn is_method(method: &str) -> bool {
    !method.is_empty()
        && method.len() <= 32
        && method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Checks a URL rule's path pattern: it starts with `/`, holds printable ASCII other than
/// `#` (anything else is percent-encoded on the wire, and compared as sent), and has no
/// `**` (a `*` already matches across `/`).
fn check_path_pattern(pattern: &str) -> Result<(), String> {
    if !pattern.starts_with('/') {
        return Err(format!(
            "expected a path starting with \"/\", like \"/admin/\" or \"/api/*/delete\", got {pattern:?}"
        ));
    }
    if !pattern.bytes().all(|b| b.is_ascii_graphic() && b != b'#') {
        return Err(format!(
            "expected printable ASCII without spaces or \"#\" (paths are compared as sent, percent-encoded), \
             got {pattern:?}"
        ));
    }
    if pattern.contains("**") {
        return Err(format!(
            "expected a glob with single \"*\" (one \"*\" already matches any run of characters, \"/\" \
             included), got {pattern:?}"
        ));
    }
    Ok(())
}

impl LoadedCategory {
    /// Reads a category file's text: one domain per line, lowercased; a leading `*.` or `.`
    /// is accepted and dropped (a domain always covers its subdomains); `#` starts a
    /// comment; blank lines are skipped; a domain listed twice is kept once. `file` only
    /// names the file in errors.
    pub fn parse(name: &str, file: &Path, text: &str) -> Result<LoadedCategory, ConfigError> {
        let mut domains: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (index, line) in text.lines().enumerate() {
            let content = line.split('#').next().unwrap_or_default().trim();
            if content.is_empty() {
                continue;
            }
            let domain = content
                .strip_prefix("*.")
                .or_else(|| content.strip_prefix('.'))
                .unwrap_or(content)
                .to_ascii_lowercase();
            if !is_dns_name(&domain) {
                return Err(ConfigError {
                    file: file.to_path_buf(),
                    line: Some(index + 1),
                    message: format!("category {name:?}: expected a domain name, got {content:?}"),
                });
            }
            if seen.insert(domain.clone()) {
                domains.push(domain);
            }
        }
        Ok(LoadedCategory {
            name: name.to_string(),
            domains,
        })
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

        let err = parse("[dataplane]\nbusy_poll_us = 5000\n").unwrap_err();
        assert_eq!(
            err,
            "loupe.toml:2: [dataplane] busy_poll_us: expected 0 to 1000 microseconds, got 5000"
        );
        assert_eq!(
            parse("[dataplane]\nbusy_poll_us = 50\n")
                .unwrap()
                .dataplane
                .busy_poll_us,
            50
        );

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

    const PROFILES: &str = "[[profile]]\nname = \"strict\"\n\n";

    #[test]
    fn serde_errors_name_the_table_and_key() {
        assert_eq!(
            parse("[dataplane]\ninside = \"in0\"\nfail = \"ajar\"\n").unwrap_err(),
            "loupe.toml:3: [dataplane] fail: unknown variant `ajar`, expected `open` or `closed`"
        );
        assert_eq!(
            parse("dataplane = { fail = \"ajar\" }\n").unwrap_err(),
            "loupe.toml:1: [dataplane] fail: unknown variant `ajar`, expected `open` or `closed`"
        );
        assert_eq!(
            parse("[dataplane]\ninspect_ports = [443, 70000]\n").unwrap_err(),
            "loupe.toml:2: [dataplane] inspect_ports: invalid value: integer `70000`, expected a port from 1 to 65535"
        );
        assert_eq!(
            parse("[dataplane]\nqueues = -1\n").unwrap_err(),
            "loupe.toml:2: [dataplane] queues: invalid value: integer `-1`, expected an integer from 0 to 4294967295"
        );
        assert_eq!(
            parse("[ca]\ncert = \"/etc/loupe/ca.crt\"\n").unwrap_err(),
            "loupe.toml:1: [ca] missing field `key`"
        );
        assert_eq!(
            parse("[dataplan]\n").unwrap_err(),
            "loupe.toml:1: unknown field `dataplan`, expected one of `dataplane`, `ca`, `decryption`, `profile`, \
             `paths`, `trust`, `category`, `rule`, `url_rule`, `inspection`, `exclusions`, `timeouts`, `control`, \
             `export`, `metrics`"
        );
        assert_eq!(
            parse("[[rule]]\nname = \"a\"\naction = \"block\"\n\n[[rule]]\naction = \"block\"\n").unwrap_err(),
            "loupe.toml:5: rule #2: missing field `name`"
        );
        assert_eq!(
            parse("[[rule]]\nname = \"a\"\naction = \"allow\"\n").unwrap_err(),
            "loupe.toml:3: rule \"a\": action: unknown variant `allow`, expected one of `decrypt`, `no-decrypt`, \
             `block`, `decrypt-inbound`"
        );
        // Not TOML at all: toml's own words.
        assert_eq!(
            parse("[dataplane]\nfail = \n").unwrap_err(),
            "loupe.toml:2: string values must be quoted, expected literal string"
        );
    }

    #[test]
    fn profile_values_come_with_their_line() {
        let text = "[[profile]]\nname = \"default\"\n\n[[profile]]\nname = \"strict\"\nexpired = \"allow\"\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "loupe.toml:6: profile \"strict\": expired: unknown variant `allow`, expected `block` or `forward-untrust`"
        );
        let text = "[[profile]]\nname = \"strict\"\nclient_auth = \"ignore\"\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "loupe.toml:3: profile \"strict\": client_auth: unknown variant `ignore`, expected `block` or `bypass`"
        );
        let text = "[[profile]]\nname = \"strict\"\nsigalgs = \"ECDSA+SHA256\"\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "loupe.toml:3: profile \"strict\": sigalgs: invalid type: string \"ECDSA+SHA256\", expected a sequence"
        );
        let text = "[[profile]]\nname = \"strict\"\n\n[[profile]]\nname = \"strict\"\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "loupe.toml:5: profile \"strict\": name: defined twice"
        );
    }

    #[test]
    fn reads_profile_actions() {
        let text = "[[profile]]\nname = \"strict\"\nsigalgs = [\"ECDSA+SHA256\"]\nexpired = \"forward-untrust\"\n\
                    unsupported_version = \"bypass\"\nunsupported_cipher = \"bypass\"\nclient_auth = \"block\"\n";
        let p = parse(text).unwrap().profile("strict").unwrap();
        assert_eq!(p.sigalgs, vec!["ECDSA+SHA256"]);
        assert_eq!(p.expired, Some(Untrusted::ForwardUntrust));
        assert_eq!(p.unsupported_version, Undecryptable::Bypass);
        assert_eq!(p.unsupported_cipher, Undecryptable::Bypass);
        assert_eq!(p.client_auth, Undecryptable::Block);
        let p = parse("[[profile]]\nname = \"x\"\n").unwrap().profile("x").unwrap();
        assert_eq!(p.client_auth, Undecryptable::Bypass);
        assert_eq!(p.unsupported_cipher, Undecryptable::Block);
        assert_eq!(p.expired, None);
    }

    #[test]
    fn rule_names_are_non_empty_and_unique() {
        let text = "[[rule]]\nname = \"x\"\naction = \"block\"\n\n[[rule]]\nname = \"x\"\naction = \"decrypt\"\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "loupe.toml:6: rule \"x\": name: defined twice"
        );
        let text = "[[rule]]\nname = \"\"\naction = \"block\"\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "loupe.toml:2: rule \"\": name: expected a non-empty name"
        );
    }

    #[test]
    fn rule_profile_must_be_known() {
        let text = format!("{PROFILES}[[rule]]\nname = \"banks\"\naction = \"decrypt\"\nprofile = \"strict2\"\n");
        assert_eq!(
            parse(&text).unwrap_err(),
            "loupe.toml:7: rule \"banks\": unknown profile \"strict2\" (known: default, strict)"
        );
        // A configured default keeps its place in the file.
        let text = "[[profile]]\nname = \"strict\"\n\n[[profile]]\nname = \"default\"\n\n\
                    [[rule]]\nname = \"banks\"\naction = \"decrypt\"\nprofile = \"x\"\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "loupe.toml:10: rule \"banks\": unknown profile \"x\" (known: strict, default)"
        );
        let text = format!("{PROFILES}[[rule]]\nname = \"a\"\naction = \"decrypt\"\nprofile = \"strict\"\n");
        assert_eq!(parse(&text).unwrap().rules[0].profile.as_deref(), Some("strict"));
        let text = "[[rule]]\nname = \"a\"\naction = \"decrypt\"\nprofile = \"default\"\n";
        assert!(parse(text).is_ok());
    }

    #[test]
    fn rule_profile_only_with_decrypting_actions() {
        let text = "[[rule]]\nname = \"a\"\naction = \"no-decrypt\"\nprofile = \"default\"\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "loupe.toml:4: rule \"a\": profile: only allowed with action \"decrypt\" or \"decrypt-inbound\", \
             this rule's action is \"no-decrypt\""
        );
        let text = "[[rule]]\nname = \"a\"\naction = \"block\"\nprofile = \"default\"\n";
        assert!(parse(text).unwrap_err().ends_with("this rule's action is \"block\""));
    }

    #[test]
    fn rule_categories_must_be_configured() {
        let categories = "[[category]]\nname = \"financial\"\nfile = \"financial.txt\"\n\n\
                          [[category]]\nname = \"health\"\nfile = \"health.txt\"\n\n";
        let text = format!("{categories}[[rule]]\nname = \"banks\"\ncategory = [\"financial\", \"finance\"]\naction = \"no-decrypt\"\n");
        assert_eq!(
            parse(&text).unwrap_err(),
            "loupe.toml:11: rule \"banks\": unknown category \"finance\" (known: financial, health)"
        );
        let text = "[[rule]]\nname = \"banks\"\ncategory = [\"financial\"]\naction = \"no-decrypt\"\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "loupe.toml:3: rule \"banks\": unknown category \"financial\" (none configured)"
        );
        let text =
            format!("{categories}[[rule]]\nname = \"banks\"\ncategory = [\"health\"]\naction = \"no-decrypt\"\n");
        assert_eq!(parse(&text).unwrap().rules[0].category, vec!["health"]);
    }

    #[test]
    fn decrypt_inbound_needs_certificate_and_key() {
        let text = "[[rule]]\nname = \"shop\"\naction = \"decrypt-inbound\"\ncertificate = \"shop.crt\"\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "loupe.toml:1: rule \"shop\": action \"decrypt-inbound\" needs key (the server's private key, a PEM file)"
        );
        let text = "[[rule]]\nname = \"shop\"\naction = \"decrypt-inbound\"\nkey = \"shop.key\"\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "loupe.toml:1: rule \"shop\": action \"decrypt-inbound\" needs certificate \
             (the server's certificate chain, a PEM file)"
        );
        let text = "[[rule]]\nname = \"shop\"\naction = \"decrypt-inbound\"\ncertificate = \"\"\nkey = \"k\"\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "loupe.toml:4: rule \"shop\": certificate: expected the server's certificate chain, a PEM file, got \"\""
        );
        let text = "[[rule]]\nname = \"shop\"\naction = \"decrypt\"\ncertificate = \"shop.crt\"\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "loupe.toml:4: rule \"shop\": certificate: only allowed with action \"decrypt-inbound\", \
             this rule's action is \"decrypt\""
        );
        let text = "[[rule]]\nname = \"shop\"\naction = \"block\"\nkey = \"shop.key\"\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "loupe.toml:4: rule \"shop\": key: only allowed with action \"decrypt-inbound\", \
             this rule's action is \"block\""
        );
        let text = "[[rule]]\nname = \"shop\"\naction = \"decrypt-inbound\"\ncertificate = \"/c\"\nkey = \"/k\"\n";
        let rule = &parse(text).unwrap().rules[0];
        assert_eq!(rule.certificate.as_deref(), Some(Path::new("/c")));
        assert_eq!(rule.key.as_deref(), Some(Path::new("/k")));
    }

    #[test]
    fn rule_ports_are_1_to_65535() {
        let text = "[[rule]]\nname = \"a\"\nports = [443, 0]\naction = \"block\"\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "loupe.toml:3: rule \"a\": ports: expected ports from 1 to 65535, got 0"
        );
        let text = "[[rule]]\nname = \"a\"\nports = [65536]\naction = \"block\"\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "loupe.toml:3: rule \"a\": ports: invalid value: integer `65536`, expected a port from 1 to 65535"
        );
        let text = "[[rule]]\nname = \"a\"\nports = [1, 65535]\naction = \"block\"\n";
        assert_eq!(parse(text).unwrap().rules[0].ports, vec![1, 65535]);
    }

    #[test]
    fn rule_sni_patterns() {
        let text = |sni: &str| format!("[[rule]]\nname = \"a\"\nsni = [\"ok.example\", {sni:?}]\naction = \"block\"\n");
        for bad in [
            "www.*.com",
            "*",
            "*.",
            "*example.com",
            "**.example.com",
            "*.*.example.com",
            "a..b",
            ".example.com",
            "example.com.",
            "bank .com",
            "",
            "bücher.de",
            "a/b",
        ] {
            assert_eq!(
                parse(&text(bad)).unwrap_err(),
                format!(
                    "loupe.toml:3: rule \"a\": sni: expected a server name like \"www.example.com\" or \
                     \"*.example.com\" (a wildcard only as the whole first label), got {bad:?}"
                ),
                "{bad}"
            );
        }
        let long_label = "a".repeat(64);
        assert!(parse(&text(&format!("{long_label}.com"))).is_err());
        let c = parse(&text("*.Example.COM")).unwrap();
        assert_eq!(c.rules[0].sni, vec!["ok.example", "*.example.com"]);
        for good in [
            "localhost",
            "xn--bcher-kva.de",
            "_dmarc.example.com",
            "*.a-b.example",
            "10.0.0.1",
        ] {
            assert!(parse(&text(good)).is_ok(), "{good}");
        }
    }

    #[test]
    fn rule_addresses_come_with_their_line() {
        let text = "[[rule]]\nname = \"a\"\naction = \"block\"\n\n[[rule]]\nname = \"b\"\naction = \"block\"\n\
                    destination = [\n  \"198.18.0.0/15\",\n  \"10.0.0.0/33\",\n]\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "loupe.toml:8: rule \"b\": destination: expected an address or a CIDR block like \"198.18.0.0/15\" \
             or \"2001:db8::/32\", got \"10.0.0.0/33\""
        );
        let text = "[[rule]]\nname = \"a\"\nsource = [\"198.18.0.1/24\", \"2001:db8::1\"]\naction = \"block\"\n";
        let rule = &parse(text).unwrap().rules[0];
        assert_eq!(rule.source[0].to_string(), "198.18.0.0/24");
        assert_eq!(rule.source[1].to_string(), "2001:db8::1/128");
        assert!(rule.source[0].contains("198.18.0.200".parse().unwrap()));
        assert!(!rule.source[0].contains("198.18.1.1".parse().unwrap()));
        assert!(!rule.source[0].contains("::1".parse().unwrap()));
    }

    #[test]
    fn unknown_key_in_a_rule() {
        let text = "[[rule]]\nname = \"a\"\naction = \"block\"\n\n[[rule]]\nname = \"b\"\nsorce = [\"10.0.0.0/8\"]\n\
                    action = \"block\"\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "loupe.toml:7: rule \"b\": unknown field `sorce`, expected one of `name`, `source`, `destination`, \
             `ports`, `sni`, `category`, `action`, `profile`, `certificate`, `key`, `export`"
        );
    }

    const CATEGORIES: &str = "[[category]]\nname = \"gambling\"\nfile = \"g.txt\"\n\n";

    #[test]
    fn reads_url_rules() {
        let text = format!(
            "{CATEGORIES}[[url_rule]]\nname = \"admin\"\nhost = [\"WWW.Example.com\", \"*.Shop.lab\"]\n\
             path = [\"/admin/\", \"/api/*/delete\"]\nmethod = [\"post\", \"DELETE\"]\ncategory = [\"gambling\"]\n\
             action = \"block\"\n\n[[url_rule]]\nname = \"watch\"\naction = \"alert\"\n\n\
             [[url_rule]]\nname = \"ok\"\naction = \"allow\"\n"
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.url_rules.len(), 3);
        let rule = &c.url_rules[0];
        assert_eq!(rule.name, "admin");
        assert_eq!(
            rule.host,
            vec!["www.example.com", "*.shop.lab"],
            "hosts stored lowercase"
        );
        assert_eq!(rule.path, vec!["/admin/", "/api/*/delete"]);
        assert_eq!(rule.method, vec!["POST", "DELETE"], "methods stored uppercase");
        assert_eq!(rule.category, vec!["gambling"]);
        let actions: Vec<&str> = c.url_rules.iter().map(|r| r.action.as_str()).collect();
        assert_eq!(actions, ["block", "alert", "allow"]);
        assert_eq!(c.url_rules[1].host, Vec::<String>::new(), "absent: any");
        assert!(parse("").unwrap().url_rules.is_empty());
    }

    #[test]
    fn url_rule_errors_name_the_line() {
        let rule = |body: &str| {
            format!("[[url_rule]]\nname = \"ok\"\naction = \"allow\"\n\n[[url_rule]]\nname = \"a\"\n{body}")
        };
        assert_eq!(
            parse(&rule("host = [\"ok.lab\", \"www.*.lab\"]\naction = \"block\"\n")).unwrap_err(),
            "loupe.toml:7: url_rule \"a\": host: expected a host name like \"www.example.com\" or \
             \"*.example.com\" (a wildcard only as the whole first label), got \"www.*.lab\""
        );
        for bad in ["*", "a..b", "a/b", "bücher.de", "", "lab:443"] {
            let err = parse(&rule(&format!("action = \"block\"\nhost = [{bad:?}]\n"))).unwrap_err();
            assert!(
                err.starts_with("loupe.toml:8: url_rule \"a\": host: expected a host name"),
                "{bad}: {err}"
            );
        }
        assert_eq!(
            parse(&rule("action = \"block\"\npath = [\"/ok\", \"admin/\"]\n")).unwrap_err(),
            "loupe.toml:8: url_rule \"a\": path: expected a path starting with \"/\", like \"/admin/\" or \
             \"/api/*/delete\", got \"admin/\""
        );
        assert_eq!(
            parse(&rule("path = [\"\"]\naction = \"block\"\n")).unwrap_err(),
            "loupe.toml:7: url_rule \"a\": path: expected a path starting with \"/\", like \"/admin/\" or \
             \"/api/*/delete\", got \"\""
        );
        assert_eq!(
            parse(&rule("path = [\"/api/**/delete\"]\naction = \"block\"\n")).unwrap_err(),
            "loupe.toml:7: url_rule \"a\": path: expected a glob with single \"*\" (one \"*\" already matches any \
             run of characters, \"/\" included), got \"/api/**/delete\""
        );
        for bad in ["/a b", "/caf\u{e9}", "/a#b", "/a\tb"] {
            assert_eq!(
                parse(&rule(&format!("path = [{bad:?}]\naction = \"block\"\n"))).unwrap_err(),
                format!(
                    "loupe.toml:7: url_rule \"a\": path: expected printable ASCII without spaces or \"#\" \
                     (paths are compared as sent, percent-encoded), got {bad:?}"
                )
            );
        }
        assert_eq!(
            parse(&rule("method = [\"GET\", \"GET /\"]\naction = \"block\"\n")).unwrap_err(),
            "loupe.toml:7: url_rule \"a\": method: expected an HTTP method like \"GET\" or \"POST\", got \"GET /\""
        );
        assert!(parse(&rule("method = [\"\"]\naction = \"block\"\n")).is_err());
        assert_eq!(
            parse(&rule("action = \"deny\"\n")).unwrap_err(),
            "loupe.toml:7: url_rule \"a\": action: unknown variant `deny`, expected one of `allow`, `alert`, `block`"
        );
        assert_eq!(
            parse(&rule("path = [\"/x\"]\n")).unwrap_err(),
            "loupe.toml:5: url_rule \"a\": missing field `action`"
        );
        assert_eq!(
            parse(&rule("action = \"block\"\nhosts = [\"a.lab\"]\n")).unwrap_err(),
            "loupe.toml:8: url_rule \"a\": unknown field `hosts`, expected one of `name`, `host`, `path`, `method`, \
             `category`, `action`"
        );
        assert_eq!(
            parse(&rule("path = \"/admin/\"\naction = \"block\"\n")).unwrap_err(),
            "loupe.toml:7: url_rule \"a\": path: invalid type: string \"/admin/\", expected a sequence"
        );
    }

    #[test]
    fn url_rule_names_and_categories() {
        let text = "[[url_rule]]\nname = \"x\"\naction = \"block\"\n\n[[url_rule]]\nname = \"x\"\naction = \"allow\"\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "loupe.toml:6: url_rule \"x\": name: defined twice"
        );
        let text = "[[url_rule]]\n\nname = \"\"\naction = \"block\"\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "loupe.toml:3: url_rule \"\": name: expected a non-empty name"
        );
        let text = "[[url_rule]]\naction = \"block\"\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "loupe.toml:1: url_rule #1: missing field `name`"
        );
        // A [[rule]] and a [[url_rule]] may share a name: they are told apart by kind.
        let text = "[[rule]]\nname = \"x\"\naction = \"block\"\n\n[[url_rule]]\nname = \"x\"\naction = \"block\"\n";
        assert!(parse(text).is_ok());
        let text = format!(
            "{CATEGORIES}[[url_rule]]\nname = \"bets\"\ncategory = [\"gambling\", \"betting\"]\naction = \"block\"\n"
        );
        assert_eq!(
            parse(&text).unwrap_err(),
            "loupe.toml:7: url_rule \"bets\": unknown category \"betting\" (known: gambling)"
        );
        let text = "[[url_rule]]\nname = \"bets\"\naction = \"block\"\ncategory = [\"gambling\"]\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "loupe.toml:4: url_rule \"bets\": unknown category \"gambling\" (none configured)"
        );
    }

    #[test]
    fn inspection_defaults_and_values() {
        let i = parse("").unwrap().inspection;
        assert_eq!(
            i,
            Inspection {
                http: true,
                on_protocol_error: OnProtocolError::Pass,
                max_header_bytes: 65_536,
                max_streams: 4096,
                hpack_table_size: 65_536,
                max_header_block: 102_400,
                block_page: true,
                rules: vec![],
                vars: BTreeMap::new(),
                body_depth: 1 << 20,
            }
        );
        let text = "[inspection]\nhttp = false\non_protocol_error = \"block\"\nmax_header_bytes = 8192\n\
                    max_streams = 100\nhpack_table_size = 4096\nmax_header_block = 16384\nblock_page = false\n\
                    rules = [\"/etc/loupe/rules/*.rules\", \"local.rules\"]\nbody_depth = 0\n\
                    [inspection.vars]\nHOME_NET = \"[198.18.0.0/15]\"\n";
        let i = parse(text).unwrap().inspection;
        assert_eq!(
            i,
            Inspection {
                http: false,
                on_protocol_error: OnProtocolError::Block,
                max_header_bytes: 8192,
                max_streams: 100,
                hpack_table_size: 4096,
                max_header_block: 16384,
                block_page: false,
                rules: vec![PathBuf::from("/etc/loupe/rules/*.rules"), PathBuf::from("local.rules")],
                vars: BTreeMap::from([("HOME_NET".to_string(), "[198.18.0.0/15]".to_string())]),
                body_depth: 0,
            }
        );
        assert_eq!(i.on_protocol_error.as_str(), "block");
    }

    #[test]
    fn inspection_errors_name_the_line() {
        assert_eq!(
            parse("[inspection]\non_protocol_error = \"reset\"\n").unwrap_err(),
            "loupe.toml:2: [inspection] on_protocol_error: unknown variant `reset`, expected `pass` or `block`"
        );
        assert_eq!(
            parse("[inspection]\nhttp = \"yes\"\n").unwrap_err(),
            "loupe.toml:2: [inspection] http: invalid type: string \"yes\", expected a boolean"
        );
        assert_eq!(
            parse("[inspection]\nsignatures = [\"local.rules\"]\n").unwrap_err(),
            "loupe.toml:2: [inspection] unknown field `signatures`, expected one of `http`, `on_protocol_error`, \
             `max_header_bytes`, `max_streams`, `hpack_table_size`, `max_header_block`, `block_page`, `rules`, \
             `vars`, `body_depth`"
        );
        assert_eq!(
            parse("[inspection]\nhttp = true\n[inspection.vars]\nHOME-NET = \"[198.18.0.0/15]\"\n").unwrap_err(),
            "loupe.toml:4: [inspection.vars] HOME-NET: a variable name is letters, digits and '_' \
             (written without the '$')"
        );
        assert_eq!(
            parse("[inspection.vars]\nHOME_NET = \" \"\n").unwrap_err(),
            "loupe.toml:2: [inspection.vars] HOME_NET: the value is empty"
        );
        assert_eq!(
            parse("[inspection]\nbody_depth = 99999999\n").unwrap_err(),
            "loupe.toml:2: [inspection] body_depth: expected 0 to 16777216 bytes, got 99999999"
        );
        assert_eq!(
            parse("[inspection]\nhttp = true\n\nmax_header_bytes = 100\n").unwrap_err(),
            "loupe.toml:4: [inspection] max_header_bytes: expected 1024 to 16777216 bytes, got 100"
        );
        assert_eq!(
            parse("[inspection]\nhpack_table_size = 1024\n").unwrap_err(),
            "loupe.toml:2: [inspection] hpack_table_size: expected 4096 to 16777216 bytes, got 1024"
        );
        assert_eq!(
            parse("[inspection]\nmax_header_block = 99999999\n").unwrap_err(),
            "loupe.toml:2: [inspection] max_header_block: expected 1024 to 16777216 bytes, got 99999999"
        );
        assert_eq!(
            parse("[inspection]\nmax_streams = 0\n").unwrap_err(),
            "loupe.toml:2: [inspection] max_streams: expected 1 to 65536 streams, got 0"
        );
        assert_eq!(
            parse("[inspection]\nmax_streams = -1\n").unwrap_err(),
            "loupe.toml:2: [inspection] max_streams: invalid value: integer `-1`, expected an integer from 0 to \
             4294967295"
        );
    }

    #[test]
    fn categories_are_named_once() {
        let text = "[[category]]\nname = \"x\"\nfile = \"x.txt\"\n\n[[category]]\nname = \"x\"\nfile = \"y.txt\"\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "loupe.toml:6: category \"x\": name: defined twice"
        );
        let text = "[[category]]\nname = \"\"\nfile = \"x.txt\"\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "loupe.toml:2: category \"\": name: expected a non-empty name"
        );
        let text = "[[category]]\nname = \"x\"\nfile = \"\"\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "loupe.toml:3: category \"x\": file: expected a file name, got \"\""
        );
        let text = "[[category]]\nname = \"x\"\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "loupe.toml:1: category \"x\": missing field `file`"
        );
    }

    #[test]
    fn decryption_defaults() {
        let d = parse("").unwrap().decryption;
        assert_eq!(
            (d.default_action, d.default_profile.as_str()),
            (RuleAction::Decrypt, "default")
        );
        let text = format!("{PROFILES}[decryption]\ndefault_action = \"no-decrypt\"\ndefault_profile = \"strict\"\n");
        let d = parse(&text).unwrap().decryption;
        assert_eq!(
            (d.default_action, d.default_profile.as_str()),
            (RuleAction::NoDecrypt, "strict")
        );
        let text = format!("{PROFILES}[decryption]\ndefault_profile = \"strict2\"\n");
        assert_eq!(
            parse(&text).unwrap_err(),
            "loupe.toml:5: [decryption] default_profile: unknown profile \"strict2\" (known: default, strict)"
        );
        let text = "[decryption]\nnot_tls = \"splice\"\ndefault_action = \"decrypt-inbound\"\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "loupe.toml:3: [decryption] default_action: expected \"decrypt\", \"no-decrypt\" or \"block\", got \
             \"decrypt-inbound\" (it needs a server's certificate and key: write a [[rule]] for that server)"
        );
    }

    #[test]
    fn timeouts() {
        let t = parse("").unwrap().timeouts;
        assert_eq!(
            (t.idle, t.handshake),
            (Duration::from_secs(3600), Duration::from_secs(30))
        );
        let t = parse("[timeouts]\nidle = \"10m\"\nhandshake = \"5s\"\n")
            .unwrap()
            .timeouts;
        assert_eq!(
            (t.idle, t.handshake),
            (Duration::from_secs(600), Duration::from_secs(5))
        );
        assert_eq!(
            parse("[timeouts]\nidle = \"0s\"\n").unwrap_err(),
            "loupe.toml:2: [timeouts] idle: expected a duration like \"90s\", \"30m\", \"12h\" or \"1d\", got \"0s\""
        );
        assert_eq!(
            parse("[timeouts]\nhandshake = 30\n").unwrap_err(),
            "loupe.toml:2: [timeouts] handshake: invalid type: integer `30`, expected a string"
        );
    }

    #[test]
    fn exclusions() {
        let e = parse("").unwrap().exclusions;
        assert_eq!((e.ttl, e.max_entries), (Duration::from_secs(12 * 3600), 4096));
        let e = parse("[exclusions]\nttl = \"30m\"\nmax_entries = 10\n")
            .unwrap()
            .exclusions;
        assert_eq!((e.ttl, e.max_entries), (Duration::from_secs(1800), 10));
        assert_eq!(
            parse("[exclusions]\nmax_entries = 0\n").unwrap_err(),
            "loupe.toml:2: [exclusions] max_entries: expected at least 1, got 0"
        );
        assert_eq!(
            parse("[exclusions]\n\nttl = \"12 hours\"\n").unwrap_err(),
            "loupe.toml:3: [exclusions] ttl: expected a duration like \"90s\", \"30m\", \"12h\" or \"1d\", \
             got \"12 hours\""
        );
        assert_eq!(
            parse("[exclusions]\nttl = 3600\n").unwrap_err(),
            "loupe.toml:2: [exclusions] ttl: invalid type: integer `3600`, expected a string"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        for bad in ["0h", "h", "12", "1.5h", "-1h", "12H", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn empty_file_names_are_refused() {
        assert_eq!(
            parse("[ca]\ncert = \"\"\nkey = \"k\"\n").unwrap_err(),
            "loupe.toml:2: [ca] cert: expected a file name, got \"\""
        );
        assert_eq!(
            parse("[trust]\nca_files = [\"a.pem\", \"\"]\n").unwrap_err(),
            "loupe.toml:2: [trust] ca_files: expected file names, got \"\""
        );
        assert_eq!(
            parse("[paths]\nlog_dir = \"\"\n").unwrap_err(),
            "loupe.toml:2: [paths] log_dir: expected a directory, got \"\""
        );
    }

    #[test]
    fn header_line_when_the_key_is_absent() {
        let text = "# loupe\n[dataplane]   # the wire\ninside = \"out0\"\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "loupe.toml:2: [dataplane] outside: expected a port other than inside (\"out0\")"
        );
        let text = "[[rule]]\nname = \"a\"\naction = \"block\"\n\n[[ rule ]]  # second\nname = \"b\"\n\
                    action = \"decrypt-inbound\"\nkey = \"k\"\n";
        assert_eq!(line_of_array_key(text, "rule", 1, "certificate"), Some(5));
        assert_eq!(line_of_array_key(text, "rule", 1, "key"), Some(8));
        assert_eq!(line_of_array_key(text, "rule", 2, "key"), None);
        assert_eq!(line_of_key(text, "dataplane", "inside"), None);
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let text = "[ca]\ncert = \"ca.crt\"\nkey = \"/abs/ca.key\"\n[paths]\nstate_dir = \"state\"\n\
                    [trust]\nca_files = [\"roots/a.pem\"]\n[[category]]\nname = \"c\"\nfile = \"c.txt\"\n\
                    [[rule]]\nname = \"r\"\naction = \"decrypt-inbound\"\ncertificate = \"r.crt\"\nkey = \"r.key\"\n";
        let mut c = parse(text).unwrap();
        assert_eq!(c.categories[0].file, PathBuf::from("c.txt"), "parse leaves paths alone");
        c.resolve_paths(Path::new("/etc/loupe"));
        let ca = c.ca.as_ref().unwrap();
        assert_eq!(ca.cert, PathBuf::from("/etc/loupe/ca.crt"));
        assert_eq!(ca.key, PathBuf::from("/abs/ca.key"));
        assert_eq!(c.paths.state_dir, Some(PathBuf::from("/etc/loupe/state")));
        assert_eq!(c.paths.log_dir, None);
        assert_eq!(c.trust.ca_files, vec![PathBuf::from("/etc/loupe/roots/a.pem")]);
        assert_eq!(c.categories[0].file, PathBuf::from("/etc/loupe/c.txt"));
        assert_eq!(c.rules[0].certificate, Some(PathBuf::from("/etc/loupe/r.crt")));
        assert_eq!(c.rules[0].key, Some(PathBuf::from("/etc/loupe/r.key")));
    }

    #[test]
    fn export_is_off_by_default() {
        let c = parse("[[rule]]\nname = \"a\"\naction = \"decrypt\"\n").unwrap();
        assert!(c.rules[0].export.is_empty());
        assert!(!c.exports(ExportKind::Pcap) && !c.exports(ExportKind::Keylog));
        assert_eq!(c.export, Export::default());
        let e = &c.export;
        assert_eq!(
            (e.dir.as_ref(), e.pcap_max_bytes, e.pcap_max_files),
            (None, 100 << 20, 10)
        );
        let log_dir = Path::new("/var/log/loupe");
        assert_eq!(e.dir_in(log_dir), PathBuf::from("/var/log/loupe/export"));
        assert_eq!(e.keylog_path(log_dir), PathBuf::from("/var/log/loupe/export/keys.log"));
    }

    #[test]
    fn reads_rule_export_and_the_export_table() {
        let text = "[[rule]]\nname = \"banks\"\naction = \"decrypt\"\nexport = [\"pcap\", \"keylog\"]\n\n\
                    [[rule]]\nname = \"inbound\"\naction = \"decrypt-inbound\"\ncertificate = \"c\"\nkey = \"k\"\n\
                    export = [\"keylog\"]\n\n\
                    [export]\ndir = \"/srv/export\"\npcap_max_bytes = 1048576\npcap_max_files = 3\n";
        let c = parse(text).unwrap();
        assert_eq!(c.rules[0].export, vec![ExportKind::Pcap, ExportKind::Keylog]);
        assert_eq!(c.rules[1].export, vec![ExportKind::Keylog]);
        assert!(c.exports(ExportKind::Pcap) && c.exports(ExportKind::Keylog));
        let e = &c.export;
        assert_eq!((e.pcap_max_bytes, e.pcap_max_files), (1 << 20, 3));
        let log_dir = Path::new("/var/log/loupe");
        assert_eq!(e.dir_in(log_dir), PathBuf::from("/srv/export"));
        assert_eq!(e.keylog_path(log_dir), PathBuf::from("/srv/export/keys.log"));
        let c = parse("[export]\nkeylog_file = \"/run/keys.log\"\n").unwrap();
        assert_eq!(c.export.keylog_path(log_dir), PathBuf::from("/run/keys.log"));
        assert_eq!(c.export.dir_in(log_dir), PathBuf::from("/var/log/loupe/export"));
    }

    #[test]
    fn rule_export_only_with_decrypting_actions() {
        let text = "[[rule]]\nname = \"a\"\naction = \"no-decrypt\"\nexport = [\"pcap\"]\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "loupe.toml:4: rule \"a\": export: only allowed with action \"decrypt\" or \"decrypt-inbound\" \
             (only decrypted sessions have plaintext and keys), this rule's action is \"no-decrypt\""
        );
        let text = "[[rule]]\nname = \"a\"\naction = \"block\"\n\nexport = [\"keylog\"]\n";
        let err = parse(text).unwrap_err();
        assert!(
            err.starts_with("loupe.toml:5: ") && err.ends_with("this rule's action is \"block\""),
            "{err}"
        );
        // An empty list says nothing, whatever the action.
        assert!(parse("[[rule]]\nname = \"a\"\naction = \"block\"\nexport = []\n").is_ok());
    }

    #[test]
    fn rule_export_errors_name_the_line() {
        let text = "[[rule]]\nname = \"a\"\naction = \"decrypt\"\nexport = [\"pcap\", \"pcapng\"]\n";
        let err = parse(text).unwrap_err();
        assert!(
            err.starts_with("loupe.toml:4: rule \"a\": export: unknown variant `pcapng`, expected `pcap` or `keylog`"),
            "{err}"
        );
        let text = "[[rule]]\nname = \"a\"\naction = \"decrypt\"\nexport = [\"pcap\", \"keylog\", \"pcap\"]\n";
        assert_eq!(
            parse(text).unwrap_err(),
            "loupe.toml:4: rule \"a\": export: \"pcap\" listed twice"
        );
        let text = "[[rule]]\nname = \"a\"\naction = \"decrypt\"\nexport = \"pcap\"\n";
        let err = parse(text).unwrap_err();
        assert!(
            err.starts_with("loupe.toml:4: rule \"a\": export: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn metrics_listen_is_an_address_and_port() {
        let config = parse("[metrics]\nlisten = \"127.0.0.1:9469\"\n").unwrap();
        assert_eq!(config.metrics.listen, Some("127.0.0.1:9469".parse().unwrap()));
        assert_eq!(parse("").unwrap().metrics.listen, None, "off unless set");
        assert_eq!(
            parse("[metrics]\n\nlisten = \"127.0.0.1\"\n").unwrap_err(),
            "loupe.toml:3: [metrics] listen: expected an address and port such as \"127.0.0.1:9469\", got \"127.0.0.1\""
        );
        let err = parse("[metrics]\nlisten = 9469\n").unwrap_err();
        assert!(err.starts_with("loupe.toml:2: [metrics] listen: "), "{err}");
    }

    #[test]
    fn export_table_errors_name_the_line() {
        assert_eq!(
            parse("[export]\npcap_max_bytes = 1000\n").unwrap_err(),
            "loupe.toml:2: [export] pcap_max_bytes: expected at least 65536 bytes (64 KiB), got 1000"
        );
        assert_eq!(
            parse("[export]\n\npcap_max_files = 0\n").unwrap_err(),
            "loupe.toml:3: [export] pcap_max_files: expected 1 to 100000 files, got 0"
        );
        assert_eq!(
            parse("[export]\ndir = \"\"\n").unwrap_err(),
            "loupe.toml:2: [export] dir: expected a directory, got \"\""
        );
        assert_eq!(
            parse("[export]\nkeylog_file = \"\"\n").unwrap_err(),
            "loupe.toml:2: [export] keylog_file: expected a file name, got \"\""
        );
        assert_eq!(
            parse("[export]\npcap_max_bytes = -1\n").unwrap_err(),
            "loupe.toml:2: [export] pcap_max_bytes: invalid value: integer `-1`, expected a non-negative integer"
        );
        let err = parse("[export]\nmax_bytes = 1\n").unwrap_err();
        assert!(
            err.starts_with("loupe.toml:2: [export] unknown field `max_bytes`"),
            "{err}"
        );
    }

    #[test]
    fn relative_export_paths_follow_the_config_file() {
        let mut c = parse("[export]\ndir = \"export\"\nkeylog_file = \"/abs/keys.log\"\n").unwrap();
        c.resolve_paths(Path::new("/etc/loupe"));
        assert_eq!(c.export.dir, Some(PathBuf::from("/etc/loupe/export")));
        assert_eq!(c.export.keylog_file, Some(PathBuf::from("/abs/keys.log")));
    }

    #[test]
    fn category_file_format() {
        let file = Path::new("/etc/loupe/categories/financial.txt");
        let text = "# banks\n\nExample-Bank.COM\n*.broker.example\n.pay.example   # payments\n  trailing.example  \n\
                    example-bank.com\n";
        let loaded = LoadedCategory::parse("financial", file, text).unwrap();
        assert_eq!(loaded.name, "financial");
        assert_eq!(
            loaded.domains,
            vec!["example-bank.com", "broker.example", "pay.example", "trailing.example"]
        );
        let bad = "a.example\n\n# c\n\n\n\nbank .com\n";
        assert_eq!(
            LoadedCategory::parse("financial", file, bad).unwrap_err().to_string(),
            "/etc/loupe/categories/financial.txt:7: category \"financial\": expected a domain name, got \"bank .com\""
        );
        for bad in ["*.*.x", "a.*.b", "*", "a..b", "x/y", "ü.de", "https://a.example"] {
            assert!(LoadedCategory::parse("c", file, bad).is_err(), "{bad}");
        }
        assert_eq!(
            LoadedCategory::parse("c", file, "").unwrap().domains,
            Vec::<String>::new()
        );
    }
}
