//! Diagnosis and remedy: the one place where the facts a TLS session left behind become
//! plain sentences an operator can act on, each with the command that fixes it when
//! there is one. Nothing else in loupe writes diagnosis or remedy text.
//!
//! `diagnose` tries the cases of `CASES` in order, the most specific cause first; the
//! first that recognizes the facts speaks, and a generic text that still names the stage,
//! the alert and its code catches the rest. New cases go into `CASES`.
//!
//! Remedies name the operator tools: `loupectl trust fetch HOST --accept`,
//! `loupectl profile set NAME KEY=VALUE`, `loupe ca show`, `loupe run --trust-ca FILE`.
//! Commands are quoted with single quotes, never backticks: a remedy pasted into a shell
//! as it is must not run anything by surprise. Names from the wire (SNI) only appear in
//! a command when they are plain host names.

use std::fmt::Write as _;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::client_hello::ClientHello;
use super::names::{cipher_suite_name, is_grease, openssl_cipher_name, version_name};
use super::record::{Action, AlertFact, CertFact, DecryptionRecord, Outcome, Peer, Stage, VerifyFact};

const TLS10: u16 = 0x0301;
const TLS12: u16 = 0x0303;
const TLS13: u16 = 0x0304;

// OpenSSL X509_V_ERR_* codes the cases below recognize.
const X509_UNABLE_TO_GET_ISSUER_CERT: i32 = 2;
const X509_CERT_NOT_YET_VALID: i32 = 9;
const X509_CERT_HAS_EXPIRED: i32 = 10;
const X509_DEPTH_ZERO_SELF_SIGNED_CERT: i32 = 18;
const X509_SELF_SIGNED_CERT_IN_CHAIN: i32 = 19;
const X509_UNABLE_TO_GET_ISSUER_CERT_LOCALLY: i32 = 20;
const X509_UNABLE_TO_VERIFY_LEAF_SIGNATURE: i32 = 21;
const X509_CERT_REVOKED: i32 = 23;
const X509_HOSTNAME_MISMATCH: i32 = 62;

// Alert descriptions.
const ALERT_HANDSHAKE_FAILURE: u8 = 40;
const ALERT_BAD_CERTIFICATE: u8 = 42;
const ALERT_CERTIFICATE_UNKNOWN: u8 = 46;
const ALERT_UNKNOWN_CA: u8 = 48;
const ALERT_PROTOCOL_VERSION: u8 = 70;
const ALERT_INSUFFICIENT_SECURITY: u8 = 71;
const ALERT_CERTIFICATE_REQUIRED: u8 = 116;

/// What went wrong and what to do about it, as stored in the record's `diagnosis` and
/// `remedy` fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnosis {
    pub diagnosis: String,
    pub remedy: String,
}

/// What a profile does with a server whose certificate does not verify.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UntrustedAction {
    /// Refuse the session.
    #[default]
    Block,
    /// Present the client a forgery signed by the untrusted CA: the client warns, the
    /// user decides.
    ForwardUntrust,
}

impl UntrustedAction {
    /// The value as written in `untrusted=…`.
    pub fn setting(self) -> &'static str {
        match self {
            UntrustedAction::Block => "block",
            UntrustedAction::ForwardUntrust => "forward-untrust",
        }
    }
}

/// The profile settings a diagnosis depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileFacts {
    pub name: String,
    /// SHA1 (CBC, RC4) cipher suites may be offered upstream.
    pub allow_sha1: bool,
    /// The whole profile is offered upstream even below the client's hello.
    #[serde(default)]
    pub legacy_servers: bool,
    /// Lowest and highest protocol version the profile allows (0x0301 … 0x0304).
    pub min_version: u16,
    pub max_version: u16,
    pub untrusted: UntrustedAction,
}

impl Default for ProfileFacts {
    fn default() -> Self {
        ProfileFacts {
            name: "default".to_string(),
            allow_sha1: false,
            legacy_servers: false,
            min_version: 0x0303,
            max_version: TLS13,
            untrusted: UntrustedAction::Block,
        }
    }
}

/// What loupe put in its ClientHello to the server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamOffer {
    pub min_version: u16,
    pub max_version: u16,
    /// OpenSSL names of the TLS 1.2-and-older suites, in the order offered.
    pub ciphers: Vec<String>,
}

/// What the client offered loupe (from its ClientHello, GREASE left out).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientOffer {
    pub versions: Vec<u16>,
    pub suites: Vec<u16>,
}

impl ClientOffer {
    pub fn from_client_hello(hello: &ClientHello) -> Self {
        let versions = if hello.supported_versions.is_empty() {
            vec![hello.legacy_version]
        } else {
            hello.supported_versions.clone()
        };
        ClientOffer {
            versions,
            suites: hello.cipher_suites.clone(),
        }
    }

    /// Highest real (0x03xx) version offered.
    pub fn max_version(&self) -> Option<u16> {
        self.versions.iter().copied().filter(|v| v >> 8 == 3).max()
    }
}

/// What the server chose when loupe probed it with a wide ClientHello (every version
/// and suite loupe can speak).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub version: u16,
    pub cipher: u16,
}

/// The shape of the chain the server presented.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainShape {
    /// Certificates presented, leaf included.
    pub len: usize,
    /// The last presented certificate is self-signed (a root).
    pub ends_self_signed: bool,
}

impl ChainShape {
    /// From the presented chain; "self-signed" is judged by subject = issuer, which is
    /// what a root looks like. Callers holding the X509 may set the flag more exactly.
    pub fn of(chain: &[CertFact]) -> Self {
        ChainShape {
            len: chain.len(),
            ends_self_signed: chain.last().is_some_and(|cert| cert.subject == cert.issuer),
        }
    }
}

/// Why the TCP connection to the server did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectFailure {
    /// The server answered the SYN with a RST.
    Refused,
    /// No answer to the SYN (and its retransmissions).
    TimedOut,
    /// The connection was reset before the handshake could start.
    Reset,
    /// An ICMP unreachable came back.
    Unreachable,
}

/// Everything a diagnosis may use. Build it with `from_record` and add what the record
/// does not hold (offers, probe, profile settings, flags).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiagnosisInput {
    /// Where the session failed; None when nothing failed.
    pub stage: Option<Stage>,
    pub action: Option<Action>,
    pub outcome: Option<Outcome>,
    pub rule: Option<String>,
    /// The SNI.
    pub host: Option<String>,
    pub server: Option<SocketAddr>,
    pub verify: Option<VerifyFact>,
    /// The server's leaf certificate.
    pub leaf: Option<CertFact>,
    pub chain: ChainShape,
    pub alerts: Vec<AlertFact>,
    /// What loupe offered the server.
    pub offered: Option<UpstreamOffer>,
    /// What the client offered loupe.
    pub client_offer: Option<ClientOffer>,
    pub probe: Option<ProbeResult>,
    pub profile: ProfileFacts,
    /// The server sent a CertificateRequest.
    pub client_cert_requested: bool,
    /// The stream on an inspected port was not TLS; what it looked like ("plain HTTP",
    /// or its first bytes).
    pub not_tls: Option<String>,
    pub connect_failure: Option<ConnectFailure>,
    pub end_reason: Option<String>,
    /// Why policy decided as it did (the record's `reason`).
    pub reason: Option<String>,
    /// The engine's error, for the generic text.
    pub error: Option<String>,
}

impl DiagnosisInput {
    /// The facts the record already holds; the profile's settings other than its name
    /// stay at their defaults until the caller sets them.
    pub fn from_record(record: &DecryptionRecord) -> Self {
        DiagnosisInput {
            stage: record.stage,
            action: Some(record.action),
            outcome: Some(record.outcome),
            rule: Some(record.rule.clone()),
            host: record.sni.clone(),
            server: Some(record.server()),
            verify: record.verify.clone(),
            leaf: record
                .server_cert
                .clone()
                .or_else(|| record.server_chain.first().cloned()),
            chain: ChainShape::of(&record.server_chain),
            alerts: record.alerts.clone(),
            profile: ProfileFacts {
                name: record.profile.clone().unwrap_or_default(),
                ..ProfileFacts::default()
            },
            end_reason: (!record.end_reason.is_empty()).then(|| record.end_reason.clone()),
            reason: record.reason.clone(),
            error: record.error.clone(),
            ..DiagnosisInput::default()
        }
    }

    fn first_fatal_from(&self, peer: Peer) -> Option<&AlertFact> {
        self.alerts.iter().find(|a| a.fatal && a.sender == peer)
    }

    fn failed_verify(&self) -> Option<&VerifyFact> {
        self.verify.as_ref().filter(|v| v.failed())
    }

    /// The server for sentences: `api.example.test (198.18.0.2:443)`.
    fn server_text(&self) -> String {
        match (&self.host, self.server) {
            (Some(host), Some(addr)) => format!("{host} ({addr})"),
            (Some(host), None) => host.clone(),
            (None, Some(addr)) => addr.to_string(),
            (None, None) => "the server".to_string(),
        }
    }

    /// The server for commands: the SNI when it is a plain host name, else the IP; the
    /// port only when it is not 443.
    fn server_arg(&self) -> String {
        let host = self
            .host
            .as_deref()
            .filter(|h| is_plain_word(h))
            .map(str::to_string)
            .or_else(|| self.server.map(|a| a.ip().to_string()))
            .unwrap_or_else(|| "HOST".to_string());
        match self.server.map(|a| a.port()) {
            Some(port) if port != 443 => format!("{host}:{port}"),
            _ => host,
        }
    }

    fn profile_arg(&self) -> &str {
        let name = self.profile.name.as_str();
        if is_plain_word(name) {
            name
        } else {
            "PROFILE"
        }
    }

    fn rule_text(&self) -> String {
        format!("'{}'", self.rule.as_deref().unwrap_or("default"))
    }
}

/// Safe to paste into a shell unquoted, and not an option: letters, digits, `.`, `-`,
/// `_`, not starting with `-`.
fn is_plain_word(word: &str) -> bool {
    !word.is_empty()
        && !word.starts_with('-')
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// The cases, most specific first. Each returns None when the facts are not its case.
const CASES: &[fn(&DiagnosisInput) -> Option<Diagnosis>] = &[
    not_tls,
    connect_failure,
    upstream_untrusted,
    client_certificate_requested,
    upstream_refused_offer,
    client_too_old,
    client_distrusts_ca,
    no_failure,
];

/// The diagnosis and remedy for a session's facts.
pub fn diagnose(input: &DiagnosisInput) -> Diagnosis {
    CASES
        .iter()
        .find_map(|case| case(input))
        .unwrap_or_else(|| generic(input))
}

fn found(diagnosis: String, remedy: String) -> Option<Diagnosis> {
    Some(Diagnosis { diagnosis, remedy })
}

/// `TLS 1.2` → `1.2`, the form profile settings take. None for versions loupe cannot
/// speak (SSL 3.0 and older).
fn setting_version(version: u16) -> Option<&'static str> {
    match version {
        0x0301 => Some("1.0"),
        0x0302 => Some("1.1"),
        0x0303 => Some("1.2"),
        0x0304 => Some("1.3"),
        _ => None,
    }
}

fn version_range(min: u16, max: u16) -> String {
    if min == max {
        format!("{} only", version_name(min))
    } else {
        format!("{} to {}", version_name(min), version_name(max))
    }
}

/// SHA1 suites: HMAC-SHA1 record protection (the CBC suites of TLS 1.0–1.2, RC4-SHA).
/// Their IANA names end in `_SHA`; SHA256/SHA384 suites do not.
fn is_sha1_suite(suite: u16) -> bool {
    cipher_suite_name(suite).is_some_and(|name| name.ends_with("_SHA"))
}

/// `ECDHE-RSA-AES128-SHA (TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA)`, or the code point.
fn suite_text(suite: u16) -> String {
    match (openssl_cipher_name(suite), cipher_suite_name(suite)) {
        (Some(openssl), Some(iana)) if openssl != iana => format!("{openssl} ({iana})"),
        (_, Some(iana)) => iana.to_string(),
        _ => format!("suite {suite:#06x}"),
    }
}

fn suites_text(suites: &[u16]) -> String {
    let names: Vec<String> = suites
        .iter()
        .filter(|&&s| !is_grease(s))
        .map(|&s| openssl_cipher_name(s).map_or_else(|| format!("{s:#06x}"), str::to_string))
        .collect();
    if names.is_empty() {
        "no cipher suites".to_string()
    } else {
        names.join(", ")
    }
}

/// "loupe offered TLS 1.2 to TLS 1.3 with A, B, C".
fn offer_text(input: &DiagnosisInput) -> String {
    match &input.offered {
        Some(offer) => {
            let suites = if offer.ciphers.is_empty() {
                "its default cipher suites".to_string()
            } else {
                offer.ciphers.join(", ")
            };
            format!(
                "loupe offered {} with {suites}",
                version_range(offer.min_version, offer.max_version)
            )
        }
        None => format!(
            "loupe offered {} (profile '{}')",
            version_range(input.profile.min_version, input.profile.max_version),
            input.profile.name
        ),
    }
}

/// What loupe did with a server that failed verification.
fn untrusted_consequence(input: &DiagnosisInput) -> String {
    let profile = &input.profile;
    let mut text = match profile.untrusted {
        UntrustedAction::Block => format!(
            "loupe blocked the session (profile '{}' has untrusted=block).",
            profile.name
        ),
        UntrustedAction::ForwardUntrust => format!(
            "loupe presented the client a certificate signed by its untrusted CA so the client \
             warns and the user decides (profile '{}' has untrusted=forward-untrust).",
            profile.name
        ),
    };
    if let Some(alert) = input.first_fatal_from(Peer::Client) {
        let _ = write!(
            text,
            " The client then refused that certificate ({} ({})), as intended.",
            alert.display_name(),
            alert.code
        );
    }
    text
}

/// Second half of remedies for certificates loupe must not simply trust.
fn let_users_decide(input: &DiagnosisInput) -> String {
    match input.profile.untrusted {
        UntrustedAction::Block => format!(
            " Meanwhile, to let users see the warning and decide instead of being blocked: \
             'loupectl profile set {} untrusted=forward-untrust'.",
            input.profile_arg()
        ),
        UntrustedAction::ForwardUntrust => String::new(),
    }
}

fn bypass_rule(input: &DiagnosisInput) -> String {
    format!(
        "add a no-decrypt rule for {} (match its server name or address) so loupe splices it untouched",
        input.server_arg()
    )
}

fn not_tls(input: &DiagnosisInput) -> Option<Diagnosis> {
    let looked_like = input.not_tls.as_deref()?;
    let port = input
        .server
        .map_or_else(|| "this port".to_string(), |a| format!("port {}", a.port()));
    found(
        format!(
            "The client sent {looked_like} to {}, not a TLS ClientHello, on an inspected port; \
             there was nothing to decrypt.",
            input.server_text()
        ),
        format!(
            "If {port} carries this protocol on purpose, remove it from [dataplane] inspect_ports or {}; \
             otherwise the client is speaking the wrong protocol to a TLS port.",
            bypass_rule(input)
        ),
    )
}

fn connect_failure(input: &DiagnosisInput) -> Option<Diagnosis> {
    let failure = input.connect_failure?;
    let server = input.server_text();
    let target = input
        .server
        .map_or_else(|| "HOST 443".to_string(), |a| format!("{} {}", a.ip(), a.port()));
    let what = match failure {
        ConnectFailure::Refused => format!(
            "{server} refused the TCP connection (RST in answer to loupe's SYN): nothing listens \
             there, or a firewall rejects it"
        ),
        ConnectFailure::TimedOut => format!(
            "{server} did not answer loupe's SYN: the host is down, or a firewall or route \
             between loupe's outside port and the server drops the packets"
        ),
        ConnectFailure::Reset => format!("{server} reset the TCP connection before TLS could start"),
        ConnectFailure::Unreachable => {
            format!("the network reported {server} unreachable (ICMP) when loupe connected")
        }
    };
    found(
        format!("{what}; TLS never started."),
        format!(
            "Check the server from the outside network, e.g. 'nc -vz -w 5 {target}'; loupe is not the \
             cause and needs no change."
        ),
    )
}

fn upstream_untrusted(input: &DiagnosisInput) -> Option<Diagnosis> {
    let verify = input.failed_verify()?;
    let server = input.server_text();
    let host = input.server_arg();
    let consequence = untrusted_consequence(input);
    let leaf = input.leaf.as_ref();
    let leaf_subject = leaf.map_or_else(|| "unknown subject".to_string(), |c| format!("'{}'", c.subject));
    let fingerprint = leaf.map_or_else(String::new, |c| format!(" (SHA-256 {})", c.sha256));
    let root_unknown = verify.code == X509_SELF_SIGNED_CERT_IN_CHAIN
        || (matches!(
            verify.code,
            X509_UNABLE_TO_GET_ISSUER_CERT | X509_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
        ) && input.chain.ends_self_signed);
    let intermediate_missing = !root_unknown
        && matches!(
            verify.code,
            X509_UNABLE_TO_GET_ISSUER_CERT
                | X509_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
                | X509_UNABLE_TO_VERIFY_LEAF_SIGNATURE
        );

    if verify.code == X509_DEPTH_ZERO_SELF_SIGNED_CERT {
        return found(
            format!(
                "{server} presents a self-signed certificate {leaf_subject}{fingerprint}: no CA vouches for it, \
                 so loupe cannot tell it from an impostor (code 18, depth 0). {consequence}"
            ),
            format!(
                "If this server is meant to use its own certificate, compare the SHA-256 with the server's \
                 admin and trust it: 'loupectl trust fetch {host} --accept'. If not, something other than the \
                 real server answered."
            ),
        );
    }
    if root_unknown {
        let root = if verify.code == X509_SELF_SIGNED_CERT_IN_CHAIN {
            format!("the root at depth {}", verify.depth)
        } else {
            "its last certificate, a root,".to_string()
        };
        return found(
            format!(
                "{server} presents a complete chain ({} certificates), but {root} is not in loupe's trust \
                 store: the server uses a private or corporate CA (code {}, depth {}). {consequence}",
                input.chain.len, verify.code, verify.depth
            ),
            format!(
                "Trust that root: 'loupectl trust fetch {host} --accept' (or start loupe with \
                 '--trust-ca ROOT.pem' holding the CA's certificate)."
            ),
        );
    }
    if intermediate_missing {
        let chain = if input.chain.len <= 1 {
            let issuer = leaf.map_or_else(|| "its issuer".to_string(), |c| format!("'{}'", c.issuer));
            format!(
                "{server} sends only its leaf certificate {leaf_subject}, without the intermediate \
                 certificate of {issuer} that links it to a trusted root"
            )
        } else {
            format!(
                "{server} sends {} certificates, but the issuer of the one at depth {} is neither among \
                 them nor a trusted root: an intermediate is missing, or the root is not trusted",
                input.chain.len, verify.depth
            )
        };
        return found(
            format!(
                "{chain} (code {}, depth {}). Browsers often hide this by fetching or caching intermediates; \
                 loupe verifies only what the server sends. {consequence}",
                verify.code, verify.depth
            ),
            format!(
                "Have the server send its full chain (leaf followed by the intermediate, e.g. nginx \
                 ssl_certificate with the fullchain file); meanwhile 'loupectl trust fetch {host} --accept' \
                 trusts what {host} presents."
            ),
        );
    }
    if verify.code == X509_CERT_HAS_EXPIRED {
        let when = date_of(" on", leaf.filter(|_| verify.depth == 0).map(|c| c.not_after.as_str()));
        let which = cert_at_depth(verify.depth);
        return found(
            format!(
                "{server} presents {which} expired{when} (code 10, depth {}). {consequence}",
                verify.depth
            ),
            format!(
                "Renew the certificate on {host}; loupe verifies it again on the next connection. If the date \
                 looks wrong, check loupe's clock ('timedatectl status').{}",
                let_users_decide(input)
            ),
        );
    }
    if verify.code == X509_CERT_NOT_YET_VALID {
        let when = date_of(
            " before",
            leaf.filter(|_| verify.depth == 0).map(|c| c.not_before.as_str()),
        );
        let when = if when.is_empty() { " yet".to_string() } else { when };
        let which = cert_at_depth(verify.depth);
        return found(
            format!(
                "{server} presents {which} is not valid{when} (code 9, depth {}): loupe's clock is \
                 behind, or the certificate was issued with a start in the future. {consequence}",
                verify.depth
            ),
            format!(
                "Check loupe's clock first ('timedatectl status'; turn on NTP if it is off); if the clock is \
                 right, reissue the certificate on {host} or wait until it starts.{}",
                let_users_decide(input)
            ),
        );
    }
    if verify.code == X509_CERT_REVOKED {
        return found(
            format!(
                "{server} presents a certificate {leaf_subject}{fingerprint} that its CA has revoked: the OCSP \
                 response the server itself stapled says so (code 23, depth {}). A revoked certificate usually \
                 means its key was stolen or it was issued in error; the record's 'ocsp' field has the time and \
                 reason. {consequence}",
                verify.depth
            ),
            format!(
                "Tell the owner of {host} to replace the certificate. Do not trust it by hand: an imported \
                 certificate ('loupectl trust fetch') does not outweigh its revocation.{}",
                let_users_decide(input)
            ),
        );
    }
    if verify.code == X509_HOSTNAME_MISMATCH {
        let names = leaf
            .filter(|c| !c.sans.is_empty())
            .map_or_else(|| "other names".to_string(), |c| c.sans.join(", "));
        return found(
            format!(
                "{server} presents a certificate for {names}, which does not cover '{}', the name the client \
                 asked for (code 62). {consequence}",
                verify.checked_name
            ),
            format!(
                "If '{}' is really served by this certificate, trust it for that name: 'loupectl trust fetch \
                 {host} --accept'; otherwise fix the server's certificate, or the client's DNS (it may reach \
                 the wrong server).",
                verify.checked_name
            ),
        );
    }
    found(
        format!(
            "The certificate chain of {server} did not verify: {} (code {}, depth {}). {consequence}",
            verify.reason, verify.code, verify.depth
        ),
        format!(
            "Inspect the chain with 'openssl s_client -connect {} -servername {host} -showcerts'; if it is \
             expected, trust it: 'loupectl trust fetch {host} --accept'.",
            connect_arg(input)
        ),
    )
}

/// Completed by a verb: "presents a certificate that expired".
fn cert_at_depth(depth: u32) -> String {
    match depth {
        0 => "a certificate that".to_string(),
        depth => format!("a chain in which the certificate at depth {depth}"),
    }
}

/// " on 2025-01-01T00:00:00Z", or nothing when the date is unknown.
fn date_of(preposition: &str, date: Option<&str>) -> String {
    date.filter(|d| !d.is_empty())
        .map_or_else(String::new, |d| format!("{preposition} {d}"))
}

/// `host:port` for openssl s_client.
fn connect_arg(input: &DiagnosisInput) -> String {
    let host = input.server_arg();
    if host.contains(':') {
        host
    } else {
        format!("{host}:443")
    }
}

fn client_certificate_requested(input: &DiagnosisInput) -> Option<Diagnosis> {
    let required = input
        .first_fatal_from(Peer::Server)
        .filter(|a| a.code == ALERT_CERTIFICATE_REQUIRED);
    let failed = input.stage.is_some_and(|s| s != Stage::Established);
    if !(required.is_some() || (input.client_cert_requested && failed)) {
        return None;
    }
    let how = match required {
        Some(alert) => format!(
            " and refused to go on without one ({} ({}))",
            alert.display_name(),
            alert.code
        ),
        None => " and the handshake failed after that request".to_string(),
    };
    found(
        format!(
            "{} asks for a client certificate (mutual TLS){how}. A split session cannot present the client's \
             certificate: its private key never leaves the client.",
            input.server_text()
        ),
        format!(
            "Bypass decryption for this server: {}. The client then authenticates to the server directly.",
            bypass_rule(input)
        ),
    )
}

/// The server refused what loupe offered (handshake_failure, protocol_version,
/// insufficient_security), read against what a wide probe showed it accepts.
fn upstream_refused_offer(input: &DiagnosisInput) -> Option<Diagnosis> {
    if input.stage != Some(Stage::UpstreamHandshake) {
        return None;
    }
    let refusal = input.first_fatal_from(Peer::Server).filter(|a| {
        matches!(
            a.code,
            ALERT_HANDSHAKE_FAILURE | ALERT_PROTOCOL_VERSION | ALERT_INSUFFICIENT_SECURITY
        )
    });
    if refusal.is_none() && input.probe.is_none() {
        return None;
    }
    let server = input.server_text();
    let profile = &input.profile;
    let refused = match refusal {
        Some(alert) => format!(
            "{server} refused loupe's handshake with fatal alert {} ({})",
            alert.display_name(),
            alert.code
        ),
        None => format!("The handshake with {server} failed"),
    };
    let offered = offer_text(input);
    // KEY=VALUE settings for 'loupectl profile set'.
    let mut settings: Vec<String> = Vec::new();

    let Some(probe) = input.probe else {
        // Without a probe only the alert speaks.
        if refusal.is_some_and(|a| a.code == ALERT_PROTOCOL_VERSION) {
            if profile.min_version > TLS10 {
                settings.push("min=1.0".to_string());
            }
            if profile.max_version < TLS13 {
                settings.push("max=1.3".to_string());
            }
            let remedy = if settings.is_empty() {
                format!(
                    "The server speaks none of the versions loupe can; {}.",
                    bypass_rule(input)
                )
            } else {
                format!(
                    "Widen the profile's versions: 'loupectl profile set {} {}' (no probe result says which \
                     version the server wants).",
                    input.profile_arg(),
                    settings.join(" ")
                )
            };
            return found(
                format!("{refused}: it speaks none of the protocol versions offered. {offered}."),
                remedy,
            );
        }
        return found(
            format!("{refused}: it accepts none of the cipher suites offered. {offered}."),
            format!(
                "See what the server picks: 'openssl s_client -connect {} -servername {} -cipher ALL' from the \
                 outside network, then 'loupectl profile set {} ciphers+=THAT-SUITE' (plus allow_sha1=true if \
                 it ends in -SHA).",
                connect_arg(input),
                input.server_arg(),
                input.profile_arg()
            ),
        );
    };

    let chose = format!(
        "probed with a wide ClientHello, the server chose {} with {}",
        version_name(probe.version),
        suite_text(probe.cipher)
    );
    // Something no profile setting fixes: a version below TLS 1.0, a suite loupe has no name for.
    let legacy_suite = probe.cipher >> 8 != 0x13;
    let cipher_name = openssl_cipher_name(probe.cipher);
    let unspeakable = if probe.version >> 8 != 3 || probe.version < TLS10 {
        Some(format!("loupe cannot speak {}", version_name(probe.version)))
    } else if legacy_suite && cipher_name.is_none() {
        Some(format!("loupe does not know suite {:#06x}", probe.cipher))
    } else {
        None
    };
    if let Some(finding) = unspeakable {
        return found(
            format!("{refused}. {offered}; {chose}: {finding}."),
            format!(
                "loupe cannot talk to this server; {} (and upgrade the server).",
                bypass_rule(input)
            ),
        );
    }

    let mut findings: Vec<String> = Vec::new();
    let as_setting = setting_version(probe.version);
    if let Some(v) = as_setting.filter(|_| probe.version < profile.min_version) {
        settings.push(format!("min={v}"));
        // Clients offer nothing below TLS 1.2 any more; loupe offers servers less than the
        // client only when told to.
        if probe.version < TLS12 && !profile.legacy_servers {
            settings.push("legacy_servers=true".to_string());
        }
        findings.push(format!(
            "{} is below the profile's minimum {}",
            version_name(probe.version),
            version_name(profile.min_version)
        ));
    }
    if let Some(v) = as_setting.filter(|_| probe.version > profile.max_version) {
        settings.push(format!("max={v}"));
        findings.push(format!(
            "{} is above the profile's maximum {}",
            version_name(probe.version),
            version_name(profile.max_version)
        ));
    }
    // TLS 1.3 suites are not configurable; only older suites go into `ciphers`.
    if let Some(name) = cipher_name.filter(|_| legacy_suite) {
        if is_sha1_suite(probe.cipher) && !profile.allow_sha1 {
            settings.push("allow_sha1=true".to_string());
            findings.push(format!(
                "{name} is a SHA1 suite and profile '{}' forbids SHA1 (allow_sha1=false)",
                profile.name
            ));
        }
        let offered_it = input
            .offered
            .as_ref()
            .is_some_and(|offer| offer.ciphers.iter().any(|c| c == name));
        if !offered_it {
            settings.push(format!("ciphers+={name}"));
            findings.push(format!("loupe did not offer {name}"));
        }
    }

    if settings.is_empty() {
        return found(
            format!(
                "{refused}. {offered}; {chose}, which loupe's offer includes, so the server objects to something \
                 else: key-exchange groups, signature algorithms, the server name or a missing client \
                 certificate."
            ),
            format!(
                "Compare with 'openssl s_client -connect {} -servername {}' from the outside network and report \
                 the difference; no profile change is known to help.",
                connect_arg(input),
                input.server_arg()
            ),
        );
    }
    found(
        format!("{refused}. {offered}; {chose}: {}.", findings.join("; ")),
        format!(
            "Allow what the server accepts: 'loupectl profile set {} {}'. This weakens the server side of every \
             session with this profile; better, upgrade the server.",
            input.profile_arg(),
            settings.join(" ")
        ),
    )
}

/// The client itself offers only versions below the profile's minimum.
fn client_too_old(input: &DiagnosisInput) -> Option<Diagnosis> {
    if input.stage != Some(Stage::ClientHandshake) {
        return None;
    }
    let offer = input.client_offer.as_ref()?;
    let max = offer.max_version()?;
    if max >= input.profile.min_version {
        return None;
    }
    let setting = setting_version(max)?;
    found(
        format!(
            "The client offers at most {} (suites: {}), below the minimum {} of profile '{}', so loupe could \
             not complete the handshake with it.",
            version_name(max),
            suites_text(&offer.suites),
            version_name(input.profile.min_version),
            input.profile.name
        ),
        format!(
            "Upgrade the client, or accept it: 'loupectl profile set {} min={setting}'.",
            input.profile_arg()
        ),
    )
}

fn client_distrusts_ca(input: &DiagnosisInput) -> Option<Diagnosis> {
    let alert = input.first_fatal_from(Peer::Client).filter(|a| {
        matches!(
            a.code,
            ALERT_UNKNOWN_CA | ALERT_BAD_CERTIFICATE | ALERT_CERTIFICATE_UNKNOWN
        )
    })?;
    found(
        format!(
            "The client refused the certificate loupe presented for {} with fatal alert {} ({}): it does not \
             trust loupe's decryption CA.",
            input.server_text(),
            alert.display_name(),
            alert.code
        ),
        format!(
            "To decrypt this client, install the CA from 'loupe ca show' on the client (its system trust store; \
             Firefox and Java keep their own). If the application pins certificates (many mobile apps do), {} \
             instead.",
            bypass_rule(input)
        ),
    )
}

/// No stage and no fatal alert: the session did what policy said.
fn no_failure(input: &DiagnosisInput) -> Option<Diagnosis> {
    if input.stage.is_some() || input.alerts.iter().any(|a| a.fatal) || input.outcome == Some(Outcome::Aborted) {
        return None;
    }
    let rule = input.rule_text();
    match (input.action, input.outcome) {
        (Some(Action::Block), _) => found(
            format!("Blocked by policy: rule {rule} says block; no TLS failure."),
            format!("None needed if intended; otherwise change rule {rule}."),
        ),
        (Some(Action::NoDecrypt), _) if input.reason.as_deref().is_some_and(|r| r.starts_with("excluded: ")) => found(
            format!(
                "Spliced without decryption: {} is in the exclusion cache ({}).",
                input.server_text(),
                input.reason.as_deref().unwrap_or_default()
            ),
            "None needed: the exclusion expires on its own; the record that added it explains why.".to_string(),
        ),
        (Some(Action::NoDecrypt), _) => found(
            format!("Not decrypted by policy: rule {rule} says no-decrypt, so loupe spliced the session."),
            format!("None needed if intended; to inspect it, make rule {rule} decrypt."),
        ),
        // Decrypt was asked for, yet the session was spliced: an exclusion applied.
        (_, Some(Outcome::Spliced)) => found(
            format!(
                "Spliced without decryption although rule {rule} says decrypt: {} is excluded from decryption.",
                input.server_text()
            ),
            "None needed if the exclusion is intended; the record that caused it explains why.".to_string(),
        ),
        // Blocked without a failing stage or a block rule: the facts do not say why.
        (_, Some(Outcome::Blocked)) => None,
        _ => found(
            "Decrypted and inspected: both handshakes completed.".to_string(),
            "None needed.".to_string(),
        ),
    }
}

/// Anything the cases above do not recognize, still naming stage, alert and code.
fn generic(input: &DiagnosisInput) -> Diagnosis {
    let mut text = match input.stage {
        Some(stage) => format!(
            "The session failed at stage {} ({}) with {}",
            stage.as_str(),
            stage.describe(),
            input.server_text()
        ),
        None => format!("The session with {} ended abnormally", input.server_text()),
    };
    let fatal: Vec<String> = input
        .alerts
        .iter()
        .filter(|a| a.fatal)
        .map(AlertFact::error_line)
        .collect();
    if fatal.is_empty() {
        text.push_str("; no fatal alert was exchanged");
    } else {
        let _ = write!(text, "; {}", fatal.join("; "));
    }
    if let Some(error) = input.error.as_deref().filter(|e| !e.is_empty()) {
        let _ = write!(text, "; error: {error}");
    }
    if let Some(reason) = input.end_reason.as_deref() {
        let _ = write!(text, "; end reason: {reason}");
    }
    text.push('.');
    Diagnosis {
        diagnosis: text,
        remedy: format!(
            "No specific remedy is known for this case yet: reproduce it from the outside network with 'openssl \
             s_client -connect {} -servername {}' and compare with this record.",
            connect_arg(input),
            input.server_arg()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(subject: &str, issuer: &str) -> CertFact {
        CertFact {
            subject: subject.to_string(),
            issuer: issuer.to_string(),
            sans: vec!["api.example.test".to_string()],
            not_before: "2024-01-01T00:00:00Z".to_string(),
            not_after: "2025-01-01T00:00:00Z".to_string(),
            sha256: "ab".repeat(32),
            sha1: "cd".repeat(20),
            serial: "01".to_string(),
        }
    }

    fn verify(code: i32, depth: u32, reason: &str) -> VerifyFact {
        VerifyFact {
            code,
            depth,
            reason: reason.to_string(),
            checked_name: "api.example.test".to_string(),
            trusted: false,
        }
    }

    fn base(stage: Stage) -> DiagnosisInput {
        DiagnosisInput {
            stage: Some(stage),
            action: Some(Action::Decrypt),
            outcome: Some(Outcome::Aborted),
            rule: Some("default".to_string()),
            host: Some("api.example.test".to_string()),
            server: Some("198.18.0.2:443".parse().unwrap()),
            ..DiagnosisInput::default()
        }
    }

    fn verify_input(code: i32, depth: u32, reason: &str, chain: &[CertFact]) -> DiagnosisInput {
        DiagnosisInput {
            verify: Some(verify(code, depth, reason)),
            leaf: chain.first().cloned(),
            chain: ChainShape::of(chain),
            ..base(Stage::UpstreamVerify)
        }
    }

    fn has(d: &Diagnosis, diagnosis: &[&str], remedy: &[&str]) {
        for key in diagnosis {
            assert!(d.diagnosis.contains(key), "diagnosis lacks {key:?}: {}", d.diagnosis);
        }
        for key in remedy {
            assert!(d.remedy.contains(key), "remedy lacks {key:?}: {}", d.remedy);
        }
    }

    fn offer() -> UpstreamOffer {
        UpstreamOffer {
            min_version: 0x0303,
            max_version: 0x0304,
            ciphers: vec![
                "ECDHE-ECDSA-AES128-GCM-SHA256".to_string(),
                "ECDHE-RSA-AES128-GCM-SHA256".to_string(),
            ],
        }
    }

    #[test]
    fn self_signed_leaf_is_pinned_with_trust_fetch() {
        let leaf = cert("CN=api.example.test", "CN=api.example.test");
        let d = diagnose(&verify_input(18, 0, "self signed certificate", &[leaf]));
        has(
            &d,
            &[
                "self-signed",
                "api.example.test (198.18.0.2:443)",
                "code 18",
                &"ab".repeat(32),
                "blocked",
            ],
            &["'loupectl trust fetch api.example.test --accept'"],
        );
    }

    #[test]
    fn leaf_without_intermediate_is_a_missing_intermediate() {
        let leaf = cert("CN=api.example.test", "CN=Example Intermediate CA");
        let d = diagnose(&verify_input(20, 0, "unable to get local issuer certificate", &[leaf]));
        has(
            &d,
            &["only its leaf", "intermediate", "CN=Example Intermediate CA", "code 20"],
            &["full chain", "loupectl trust fetch api.example.test --accept"],
        );
        assert!(!d.diagnosis.contains("private or corporate CA"));
        // Code 2 reads the same.
        let leaf = cert("CN=api.example.test", "CN=Example Intermediate CA");
        let d = diagnose(&verify_input(2, 0, "unable to get issuer certificate", &[leaf]));
        has(&d, &["only its leaf", "intermediate"], &["full chain"]);
    }

    #[test]
    fn chain_ending_in_an_unknown_root_is_a_root_problem() {
        let chain = [
            cert("CN=api.example.test", "CN=Corp Issuing CA"),
            cert("CN=Corp Issuing CA", "CN=Corp Root CA"),
            cert("CN=Corp Root CA", "CN=Corp Root CA"),
        ];
        for code in [19, 20] {
            let d = diagnose(&verify_input(
                code,
                2,
                "self signed certificate in certificate chain",
                &chain,
            ));
            has(
                &d,
                &[
                    "private or corporate CA",
                    "3 certificates",
                    "not in loupe's trust store",
                ],
                &[
                    "Trust that root",
                    "loupectl trust fetch api.example.test --accept",
                    "--trust-ca",
                ],
            );
            assert!(!d.diagnosis.contains("only its leaf"));
        }
    }

    #[test]
    fn a_revoked_certificate_points_at_its_owner_never_at_trusting_it() {
        let leaf = cert("CN=api.example.test", "CN=CA");
        let d = diagnose(&verify_input(23, 0, "certificate revoked", &[leaf]));
        has(
            &d,
            &["revoked", "OCSP", "code 23, depth 0", "loupe blocked the session"],
            &[
                "replace the certificate",
                "does not outweigh",
                "loupectl profile set default untrusted=forward-untrust",
            ],
        );
        assert!(!d.remedy.contains("--accept"), "{}", d.remedy);
    }

    #[test]
    fn expired_and_not_yet_valid_point_at_renewal_and_the_clock() {
        let leaf = cert("CN=api.example.test", "CN=CA");
        let d = diagnose(&verify_input(
            10,
            0,
            "certificate has expired",
            std::slice::from_ref(&leaf),
        ));
        has(
            &d,
            &["expired", "2025-01-01T00:00:00Z", "code 10"],
            &[
                "Renew",
                "timedatectl",
                "loupectl profile set default untrusted=forward-untrust",
            ],
        );
        let d = diagnose(&verify_input(9, 0, "certificate is not yet valid", &[leaf]));
        has(
            &d,
            &["not valid before 2024-01-01T00:00:00Z", "clock"],
            &["timedatectl", "reissue"],
        );
    }

    #[test]
    fn hostname_mismatch_names_both_sides() {
        let mut leaf = cert("CN=other.example.test", "CN=CA");
        leaf.sans = vec!["other.example.test".to_string(), "*.other.example.test".to_string()];
        let d = diagnose(&verify_input(62, 0, "Hostname mismatch", &[leaf]));
        has(
            &d,
            &[
                "other.example.test, *.other.example.test",
                "'api.example.test'",
                "code 62",
            ],
            &["loupectl trust fetch api.example.test --accept", "DNS"],
        );
    }

    #[test]
    fn forward_untrust_explains_the_clients_refusal_as_intended() {
        let mut input = verify_input(18, 0, "self signed certificate", &[cert("CN=a", "CN=a")]);
        input.profile.untrusted = UntrustedAction::ForwardUntrust;
        input.alerts = vec![AlertFact::new(Peer::Client, true, 48)];
        let d = diagnose(&input);
        has(
            &d,
            &["untrusted CA", "forward-untrust", "unknown_ca (48)", "as intended"],
            &["trust fetch"],
        );
        assert!(!d.remedy.contains("loupe ca show"));
    }

    fn sha1_server() -> DiagnosisInput {
        DiagnosisInput {
            alerts: vec![AlertFact::new(Peer::Server, true, 40)],
            offered: Some(offer()),
            probe: Some(ProbeResult {
                version: 0x0303,
                cipher: 0xc013,
            }),
            ..base(Stage::UpstreamHandshake)
        }
    }

    #[test]
    fn server_that_only_takes_a_sha1_suite_gets_the_profile_command() {
        let d = diagnose(&sha1_server());
        has(
            &d,
            &[
                "handshake_failure (40)",
                "TLS 1.2 to TLS 1.3",
                "ECDHE-ECDSA-AES128-GCM-SHA256, ECDHE-RSA-AES128-GCM-SHA256",
                "ECDHE-RSA-AES128-SHA (TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA)",
                "SHA1",
                "allow_sha1=false",
            ],
            &["'loupectl profile set default allow_sha1=true ciphers+=ECDHE-RSA-AES128-SHA'"],
        );
    }

    #[test]
    fn sha1_already_allowed_only_adds_the_suite() {
        let mut input = sha1_server();
        input.profile.allow_sha1 = true;
        let d = diagnose(&input);
        has(
            &d,
            &["did not offer ECDHE-RSA-AES128-SHA"],
            &["set default ciphers+=ECDHE-RSA-AES128-SHA'"],
        );
        assert!(!d.remedy.contains("allow_sha1"));
    }

    #[test]
    fn probe_within_the_offer_points_elsewhere() {
        let mut input = sha1_server();
        input.probe = Some(ProbeResult {
            version: 0x0303,
            cipher: 0xc02f,
        });
        let d = diagnose(&input);
        has(&d, &["something else", "signature algorithms"], &["openssl s_client"]);
        assert!(!d.remedy.contains("profile set"));
    }

    #[test]
    fn tls10_only_server_lowers_the_minimum() {
        let mut input = sha1_server();
        input.probe = Some(ProbeResult {
            version: 0x0301,
            cipher: 0xc013,
        });
        let d = diagnose(&input);
        has(
            &d,
            &["TLS 1.0", "below the profile's minimum TLS 1.2"],
            &[
                "min=1.0",
                "legacy_servers=true",
                "allow_sha1=true",
                "ciphers+=ECDHE-RSA-AES128-SHA",
            ],
        );
        // The protocol_version alert alone says as much, without a probe.
        let input = DiagnosisInput {
            alerts: vec![AlertFact::new(Peer::Server, true, 70)],
            offered: Some(offer()),
            ..base(Stage::UpstreamHandshake)
        };
        let d = diagnose(&input);
        has(
            &d,
            &["protocol_version (70)", "none of the protocol versions"],
            &["'loupectl profile set default min=1.0'"],
        );
    }

    #[test]
    fn ssl3_only_server_cannot_be_helped_by_the_profile() {
        let mut input = sha1_server();
        input.probe = Some(ProbeResult {
            version: 0x0300,
            cipher: 0x000a,
        });
        let d = diagnose(&input);
        has(&d, &["cannot speak SSL 3.0"], &["no-decrypt rule for api.example.test"]);
        assert!(!d.remedy.contains("profile set"));
    }

    #[test]
    fn handshake_failure_without_a_probe_tells_how_to_find_the_suite() {
        let mut input = sha1_server();
        input.probe = None;
        let d = diagnose(&input);
        has(
            &d,
            &["none of the cipher suites", "ECDHE-RSA-AES128-GCM-SHA256"],
            &[
                "openssl s_client -connect api.example.test:443",
                "ciphers+=",
                "allow_sha1=true",
            ],
        );
    }

    #[test]
    fn client_that_distrusts_the_ca_is_told_to_install_it() {
        for code in [48, 42, 46] {
            let input = DiagnosisInput {
                alerts: vec![AlertFact::new(Peer::Client, true, code)],
                ..base(Stage::ClientHandshake)
            };
            let d = diagnose(&input);
            has(
                &d,
                &["does not trust loupe's decryption CA", &format!("({code})")],
                &["install the CA from 'loupe ca show' on the client", "pins"],
            );
        }
    }

    #[test]
    fn client_certificate_request_means_bypass() {
        let by_alert = DiagnosisInput {
            alerts: vec![AlertFact::new(Peer::Server, true, 116)],
            ..base(Stage::UpstreamHandshake)
        };
        let by_flag = DiagnosisInput {
            alerts: vec![AlertFact::new(Peer::Server, true, 40)],
            client_cert_requested: true,
            ..base(Stage::UpstreamHandshake)
        };
        for input in [by_alert, by_flag] {
            let d = diagnose(&input);
            has(
                &d,
                &["client certificate", "mutual TLS"],
                &["Bypass", "no-decrypt rule for api.example.test"],
            );
        }
        // A request the server was happy to see declined is no failure.
        let fine = DiagnosisInput {
            stage: None,
            outcome: Some(Outcome::Decrypted),
            client_cert_requested: true,
            ..base(Stage::UpstreamHandshake)
        };
        has(&diagnose(&fine), &["Decrypted and inspected"], &["None needed"]);
    }

    #[test]
    fn not_tls_on_an_inspected_port() {
        let input = DiagnosisInput {
            not_tls: Some("plain HTTP".to_string()),
            ..base(Stage::ClientHello)
        };
        let d = diagnose(&input);
        has(
            &d,
            &["plain HTTP", "not a TLS ClientHello"],
            &["inspect_ports", "port 443"],
        );
    }

    #[test]
    fn connect_failures_point_away_from_loupe() {
        let mut input = DiagnosisInput {
            connect_failure: Some(ConnectFailure::Refused),
            ..base(Stage::UpstreamConnect)
        };
        let d = diagnose(&input);
        has(&d, &["refused the TCP connection"], &["nc -vz -w 5 198.18.0.2 443"]);
        input.connect_failure = Some(ConnectFailure::TimedOut);
        let d = diagnose(&input);
        has(&d, &["did not answer loupe's SYN"], &["nc -vz"]);
    }

    #[test]
    fn old_client_lowers_the_minimum() {
        let input = DiagnosisInput {
            client_offer: Some(ClientOffer {
                versions: vec![0x0301],
                suites: vec![0x0a0a, 0xc013, 0x002f],
            }),
            ..base(Stage::ClientHandshake)
        };
        let d = diagnose(&input);
        has(
            &d,
            &["at most TLS 1.0", "ECDHE-RSA-AES128-SHA, AES128-SHA"],
            &["loupectl profile set default min=1.0"],
        );
    }

    #[test]
    fn anything_else_still_names_stage_alert_and_code() {
        let input = DiagnosisInput {
            alerts: vec![
                AlertFact::new(Peer::Server, true, 50),
                AlertFact::new(Peer::Client, false, 0),
            ],
            error: Some("DECODE_ERROR".to_string()),
            ..base(Stage::Established)
        };
        let d = diagnose(&input);
        has(
            &d,
            &[
                "stage established",
                "alert received from server: fatal decode_error (50)",
                "DECODE_ERROR",
            ],
            &["openssl s_client -connect api.example.test:443"],
        );
        assert!(!d.diagnosis.contains("close_notify"));
    }

    #[test]
    fn policy_outcomes_without_failure() {
        let mut input = base(Stage::Established);
        input.stage = None;
        input.outcome = Some(Outcome::Blocked);
        input.action = Some(Action::Block);
        input.rule = Some("no-gambling".to_string());
        has(
            &diagnose(&input),
            &["rule 'no-gambling' says block"],
            &["change rule 'no-gambling'"],
        );
        input.action = Some(Action::NoDecrypt);
        input.outcome = Some(Outcome::Spliced);
        has(&diagnose(&input), &["spliced"], &["None needed"]);
    }

    #[test]
    fn hostile_names_never_reach_a_command() {
        let mut input = verify_input(18, 0, "self signed certificate", &[cert("CN=a", "CN=a")]);
        input.host = Some("x;reboot".to_string());
        input.profile.name = "$(id)".to_string();
        input.server = Some("198.18.0.2:8443".parse().unwrap());
        let d = diagnose(&input);
        has(&d, &[], &["loupectl trust fetch 198.18.0.2:8443 --accept"]);
        assert!(!d.remedy.contains("reboot"));
        let mut input = sha1_server();
        input.profile.name = "$(id)".to_string();
        has(
            &diagnose(&input),
            &[],
            &["loupectl profile set PROFILE allow_sha1=true"],
        );
    }

    #[test]
    fn chain_shape_reads_the_presented_chain() {
        assert_eq!(ChainShape::of(&[]), ChainShape::default());
        let shape = ChainShape::of(&[cert("CN=leaf", "CN=int"), cert("CN=root", "CN=root")]);
        assert_eq!(
            shape,
            ChainShape {
                len: 2,
                ends_self_signed: true
            }
        );
        assert!(is_sha1_suite(0xc013) && is_sha1_suite(0x0005));
        assert!(!is_sha1_suite(0xc027) && !is_sha1_suite(0xc02f) && !is_sha1_suite(0x0004));
    }
}
