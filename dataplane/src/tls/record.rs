//! The decryption log: one JSON line per TLS session (decrypted, spliced, blocked or
//! aborted) at `<log-dir>/decryption.jsonl`.
//!
//! The facts types here are filled by the split-TLS session (`session.rs`) and turned
//! into a `DecryptionRecord` with a diagnosis and remedy (`diagnosis.rs`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::diagnosis::{diagnose, DiagnosisInput};
use super::names;

/// Where in the life of a TLS session something happened (or failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    ClientHello,
    UpstreamConnect,
    UpstreamHandshake,
    UpstreamVerify,
    ClientHandshake,
    Established,
}

/// Who sent an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Peer {
    Client,
    Server,
}

/// A TLS alert seen on either leg (received from the peer, or sent by us to it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertFact {
    /// Who sent the alert: the client or the server (never loupe itself).
    pub sender: Peer,
    pub fatal: bool,
    /// The alert description code (e.g. 40 for handshake_failure).
    pub code: u8,
    /// The alert's name (`handshake_failure`).
    pub name: String,
}

/// The upstream certificate chain verification result, in OpenSSL's terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyFact {
    /// X509_V_OK (0) when the chain and the name verified.
    pub code: i32,
    /// Depth in the chain of the certificate the error is about (0 = leaf).
    pub depth: u32,
    /// OpenSSL's words for the code (`self signed certificate`).
    pub reason: String,
    /// The name checked against the leaf (SNI, or the IP without SNI).
    pub checked_name: String,
    pub trusted: bool,
}

/// A certificate as the operator needs to see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertFact {
    pub subject: String,
    pub issuer: String,
    pub sans: Vec<String>,
    /// RFC 3339 UTC.
    pub not_before: String,
    pub not_after: String,
    /// Lowercase hex of the DER's SHA-256.
    pub sha256: String,
    /// Lowercase hex of the DER's SHA-1: what Suricata's EVE `tls.fingerprint` shows
    /// (`eve.rs`). Empty in records written before it was kept.
    #[serde(default)]
    pub sha1: String,
    pub serial: String,
}

/// What the handshake(s) negotiated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NegotiatedFact {
    /// e.g. "TLSv1.3".
    pub version: Option<String>,
    /// IANA name, e.g. "TLS_AES_128_GCM_SHA256".
    pub cipher: Option<String>,
    /// e.g. "X25519".
    pub group: Option<String>,
    pub alpn: Option<String>,
    /// The server answered the first ClientHello with a HelloRetryRequest (it wanted a
    /// key share for another group): one extra round trip.
    #[serde(default)]
    pub hello_retry: bool,
}

/// HTTP inspection of one decrypted session, for its decryption record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpFact {
    /// `http/1.1`, `h2`, or `unknown` (the plaintext was neither: relayed unchanged).
    pub protocol: String,
    pub transactions: u64,
    /// Requests a URL rule matched, and those loupe answered itself.
    pub url_rule_hits: u64,
    pub blocked: u64,
    pub protocol_errors: u64,
    /// Why inspection stopped while the bytes went on uninspected (e.g. `http2
    /// COMPRESSION_ERROR in HEADERS of stream 5`).
    pub stopped: Option<String>,
    /// Why inspection ended the session (a blocked request, a refused message).
    pub ended: Option<String>,
    /// Content signatures that fired, and those that dropped (ended the session or,
    /// on HTTP/2, reset a stream).
    #[serde(default)]
    pub signature_alerts: u64,
    #[serde(default)]
    pub signature_drops: u64,
    /// Bodies signatures read only in part: cut at `[inspection] body_depth` (a
    /// decompression bomb stops there) or by the session's budget, or not decodable.
    #[serde(default)]
    pub bodies_cut: u64,
    #[serde(default)]
    pub body_decode_errors: u64,
}

/// What loupe made of the OCSP response the server stapled (it always asks for one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OcspStatus {
    /// Nothing stapled (or a resumed session, which staples nothing new).
    None,
    Good,
    /// The certificate's CA says it is revoked: the session is untrusted (code 23).
    Revoked,
    /// The responder does not know the certificate; treated as no response.
    Unknown,
    /// The response did not parse, was for another certificate, expired or was signed by
    /// someone else; treated as no response, never as good.
    Invalid,
}

/// The stapled OCSP response of the server's leaf.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OcspFact {
    pub status: OcspStatus,
    /// Why it was invalid, or the revocation time and reason.
    pub detail: Option<String>,
}

impl Stage {
    /// The name the log uses (`upstream_verify`); matches the serde form.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::ClientHello => "client_hello",
            Stage::UpstreamConnect => "upstream_connect",
            Stage::UpstreamHandshake => "upstream_handshake",
            Stage::UpstreamVerify => "upstream_verify",
            Stage::ClientHandshake => "client_handshake",
            Stage::Established => "established",
        }
    }

    /// What loupe was doing at this stage, in an operator's words.
    pub fn describe(self) -> &'static str {
        match self {
            Stage::ClientHello => "reading the client's ClientHello",
            Stage::UpstreamConnect => "opening the TCP connection to the server",
            Stage::UpstreamHandshake => "the TLS handshake with the server",
            Stage::UpstreamVerify => "verifying the server's certificate chain",
            Stage::ClientHandshake => "the TLS handshake with the client",
            Stage::Established => "relaying the decrypted stream",
        }
    }
}

impl Peer {
    pub fn as_str(self) -> &'static str {
        match self {
            Peer::Client => "client",
            Peer::Server => "server",
        }
    }
}

impl AlertFact {
    /// An alert with its registry name filled in (`unknown_alert` for unassigned codes).
    pub fn new(sender: Peer, fatal: bool, code: u8) -> Self {
        AlertFact {
            sender,
            fatal,
            code,
            name: names::alert_description_name(code)
                .unwrap_or("unknown_alert")
                .to_string(),
        }
    }

    /// The name to print: the recorded one, or the registry's when none was recorded.
    pub fn display_name(&self) -> &str {
        if self.name.is_empty() {
            names::alert_description_name(self.code).unwrap_or("unknown_alert")
        } else {
            &self.name
        }
    }

    /// `alert received from server: fatal handshake_failure (40)`; warnings read
    /// `warning close_notify (0)`. loupe only records alerts it received, hence "received".
    pub fn error_line(&self) -> String {
        let level = if self.fatal { "fatal" } else { "warning" };
        format!(
            "alert received from {}: {level} {} ({})",
            self.sender.as_str(),
            self.display_name(),
            self.code
        )
    }
}

impl VerifyFact {
    /// X509_V_OK is 0; anything else is a verification failure.
    pub fn failed(&self) -> bool {
        self.code != 0
    }

    /// `certificate verify failed: self signed certificate (code 18, depth 0)`: the
    /// OpenSSL phrasing, because that is what operators paste into search engines.
    pub fn error_line(&self) -> String {
        let reason = if self.reason.is_empty() {
            "unknown verification error"
        } else {
            &self.reason
        };
        format!(
            "certificate verify failed: {reason} (code {}, depth {})",
            self.code, self.depth
        )
    }
}

/// The one-line technical error for a session from its facts: a failed verification
/// first (it is the cause; a client's alert after it is a consequence), then the first
/// fatal alert from the server, then the first fatal alert from the client. Warning
/// alerts (close_notify at the end of a good session) are not errors.
pub fn error_line(verify: Option<&VerifyFact>, alerts: &[AlertFact]) -> Option<String> {
    if let Some(verify) = verify.filter(|v| v.failed()) {
        return Some(verify.error_line());
    }
    [Peer::Server, Peer::Client]
        .iter()
        .find_map(|&peer| alerts.iter().find(|a| a.fatal && a.sender == peer))
        .map(AlertFact::error_line)
}

/// What policy decided for the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Decrypt,
    NoDecrypt,
    Block,
    /// Decrypt-known-key: the client saw the server's own certificate.
    DecryptInbound,
}

/// How the session ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Both handshakes completed and the plaintext went through inspection.
    Decrypted,
    /// Relayed as opaque bytes, not decrypted (policy, exclusion, or not TLS).
    Spliced,
    /// Refused on purpose (policy, or an untrusted server with `untrusted=block`).
    Blocked,
    /// Something failed before or during the session; `stage` says where.
    Aborted,
}

impl Action {
    pub const ALL: [Action; 4] = [
        Action::Decrypt,
        Action::NoDecrypt,
        Action::Block,
        Action::DecryptInbound,
    ];

    /// The name the log uses (`no-decrypt`); matches the serde form.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Decrypt => "decrypt",
            Action::NoDecrypt => "no-decrypt",
            Action::Block => "block",
            Action::DecryptInbound => "decrypt-inbound",
        }
    }
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [Outcome::Decrypted, Outcome::Spliced, Outcome::Blocked, Outcome::Aborted];

    /// The name the log uses (`decrypted`); matches the serde form.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Decrypted => "decrypted",
            Outcome::Spliced => "spliced",
            Outcome::Blocked => "blocked",
            Outcome::Aborted => "aborted",
        }
    }
}

/// Transport protocol of the 5-tuple. Only TCP is inspected today; an enum keeps the
/// field's values closed and its JSON form (`"tcp"`) stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Tcp,
}

/// One line of `decryption.jsonl`: everything known about one TLS session. Unknown
/// values are `null` (or empty lists), never left out, so `jq` filters see every key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecryptionRecord {
    /// When the record was written: RFC 3339, UTC, milliseconds (`2025-01-31T12:00:00.123Z`).
    pub time: String,
    /// The session's id, unique within one run of the daemon.
    pub session_id: u64,
    /// Client IP address (the inside port's side), e.g. `"198.18.0.1"`.
    pub client_ip: IpAddr,
    /// Client TCP port.
    pub client_port: u16,
    /// Server IP address (the outside port's side).
    pub server_ip: IpAddr,
    /// Server TCP port (an inspected port, 443 by default).
    pub server_port: u16,
    /// Always `"tcp"` for now.
    pub protocol: Transport,
    /// Server name from the ClientHello; null when the client sent none.
    pub sni: Option<String>,
    /// Name of the rule that matched; `"default"` when none did (the default action).
    pub rule: String,
    /// Name of the decryption profile applied; null when the session was not decrypted by
    /// policy (no-decrypt, block).
    pub profile: Option<String>,
    /// Policy decision: `decrypt`, `no-decrypt`, `block` or `decrypt-inbound`.
    pub action: Action,
    /// Why policy decided so (`rule "banks" matched (category financial)`,
    /// `excluded: the server requested a client certificate`), and what a profile setting
    /// did about a server it cannot decrypt.
    pub reason: Option<String>,
    /// Result: `decrypted`, `spliced`, `blocked` or `aborted`.
    pub outcome: Outcome,
    /// Where the session failed; null when nothing failed.
    pub stage: Option<Stage>,
    /// What the client-side handshake (client ↔ loupe) negotiated: version, cipher, group, ALPN.
    pub client_leg: NegotiatedFact,
    /// What the server-side handshake (loupe ↔ server) negotiated.
    pub server_leg: NegotiatedFact,
    /// The server's leaf certificate; null when the server presented none (or no
    /// upstream handshake happened).
    pub server_cert: Option<CertFact>,
    /// The chain exactly as the server presented it, leaf first (empty when none).
    pub server_chain: Vec<CertFact>,
    /// The chain verification result; null when loupe did not verify (no upstream handshake).
    pub verify: Option<VerifyFact>,
    /// The server's stapled OCSP response; null when no full upstream handshake happened.
    pub ocsp: Option<OcspFact>,
    /// Every alert received from either peer, in order.
    pub alerts: Vec<AlertFact>,
    /// TCP payload bytes from the client towards the server, as received by loupe.
    pub bytes_client_to_server: u64,
    /// TCP payload bytes from the server towards the client, as received by loupe.
    pub bytes_server_to_client: u64,
    /// Frames of this flow received from the client.
    pub packets_client_to_server: u64,
    /// Frames of this flow received from the server.
    pub packets_server_to_client: u64,
    /// Why the session ended (e.g. `fin`, `client_reset`, `idle_timeout`, `handshake_failed`).
    pub end_reason: String,
    /// Version of the configuration snapshot the session was decided under.
    pub config_version: u64,
    /// What HTTP inspection saw in the decrypted stream; null when the session was not
    /// decrypted or HTTP is not inspected. Its transactions are in `eve.json`, joined by
    /// `loupe.session_id`.
    #[serde(default)]
    pub http: Option<HttpFact>,
    /// The one-line technical error (`certificate verify failed: … (code 18, depth 0)`,
    /// `alert received from server: fatal handshake_failure (40)`); null when none.
    pub error: Option<String>,
    /// What happened, in plain sentences.
    pub diagnosis: Option<String>,
    /// What the operator can do about it, with the command when there is one.
    pub remedy: Option<String>,
}

impl DecryptionRecord {
    /// Appends the record as one JSON line (ended by `\n`) to `lines`; on failure `lines`
    /// is as it was.
    pub fn append_line(&self, lines: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        crate::log_writer::append_json_line(lines, self)
    }

    /// A record stamped now, with rule and profile `"default"` and every fact empty.
    pub fn new(session_id: u64, client: SocketAddr, server: SocketAddr, action: Action, outcome: Outcome) -> Self {
        DecryptionRecord {
            time: rfc3339_utc_ms(SystemTime::now()),
            session_id,
            client_ip: client.ip(),
            client_port: client.port(),
            server_ip: server.ip(),
            server_port: server.port(),
            protocol: Transport::Tcp,
            sni: None,
            rule: "default".to_string(),
            profile: None,
            action,
            reason: None,
            outcome,
            stage: None,
            client_leg: NegotiatedFact::default(),
            server_leg: NegotiatedFact::default(),
            server_cert: None,
            server_chain: Vec::new(),
            verify: None,
            ocsp: None,
            alerts: Vec::new(),
            bytes_client_to_server: 0,
            bytes_server_to_client: 0,
            packets_client_to_server: 0,
            packets_server_to_client: 0,
            end_reason: String::new(),
            config_version: 0,
            http: None,
            error: None,
            diagnosis: None,
            remedy: None,
        }
    }

    pub fn client(&self) -> SocketAddr {
        SocketAddr::new(self.client_ip, self.client_port)
    }

    pub fn server(&self) -> SocketAddr {
        SocketAddr::new(self.server_ip, self.server_port)
    }

    /// Fills `error`, `diagnosis` and `remedy`. The verification/alert wording wins over
    /// an engine error already set (it is what operators search for); the engine's
    /// error stays when there is neither (connect failures, not TLS).
    pub fn explain(&mut self, input: &DiagnosisInput) {
        if let Some(line) = error_line(self.verify.as_ref(), &self.alerts) {
            self.error = Some(line);
        }
        let found = diagnose(input);
        self.diagnosis = Some(found.diagnosis);
        self.remedy = Some(found.remedy);
    }

    /// The record as one JSON line, without the newline.
    pub fn to_json_line(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }
}

/// `time` formatted as RFC 3339 in UTC with milliseconds: `2023-11-14T22:13:20.123Z`.
/// Times before 1970 (a badly set clock) print as the epoch rather than failing.
pub fn rfc3339_utc_ms(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (year, month, day) = civil_date(secs / 86_400);
    let of_day = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since_epoch.subsec_millis()
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01. Counting from 0000-03-01
/// puts the leap day at the end of each year, so a year is 365 days plus one every 4,
/// minus one every 100, plus one every 400 (an "era" of 146,097 days).
pub(crate) fn civil_date(days_since_epoch: u64) -> (u64, u64, u64) {
    // 719,468 days from 0000-03-01 to 1970-01-01.
    let days = days_since_epoch + 719_468;
    let era = days / 146_097;
    let day_of_era = days % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months from March, of 31/30 days in a five-month rhythm: 153 days per 5 months.
    let march_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * march_month + 2) / 5 + 1;
    let month = if march_month < 10 {
        march_month + 3
    } else {
        march_month - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

/// Failure to write the decryption log, with the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("decryption log {}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("decryption log {}: cannot serialize the record of session {session_id}: {source}", path.display())]
    Serialize {
        path: PathBuf,
        session_id: u64,
        source: serde_json::Error,
    },
}

/// The decryption log: `<log-dir>/decryption.jsonl`, one JSON record per line.
///
/// Concurrency: the file is opened with O_APPEND and every record goes out as one
/// `write_all` of the whole line including its `\n`, i.e. one write(2) on a regular
/// file. With O_APPEND the kernel moves the offset to the end and writes the bytes as
/// one step (POSIX: no other modification between the two; Linux holds the inode lock
/// for the write), so lines from several writers — workers sharing this value, or
/// each holding its own `DecryptionLog`, or another process — never interleave or
/// overwrite each other. A short write happens on a regular file only when the write
/// partly fails (disk full, file size limit); `write_all` then reports the error. (Not
/// promised on NFS, which emulates O_APPEND.)
///
/// Bounds: the daemon's workers queue records in their batch for at most about 10 ms
/// and the log writer thread appends them ([`crate::log_writer`]); this type queues
/// nothing itself. Rotation is
/// left to logrotate, renaming: [`DecryptionLog::reopen`] (on SIGHUP or `loupectl log
/// reopen`) then moves every writer to the new file at once; until then records go on
/// to the renamed one, so none is lost. (`copytruncate` would be safe too, since with
/// O_APPEND the next write lands at the new end of the truncated file, but it loses the
/// lines written between its copy and its truncation.)
#[derive(Debug)]
pub struct DecryptionLog {
    path: PathBuf,
    file: File,
}

impl DecryptionLog {
    pub const FILE_NAME: &'static str = "decryption.jsonl";

    /// Opens (creating the directory and the file when missing) `<log_dir>/decryption.jsonl`
    /// for appending.
    pub fn open(log_dir: &Path) -> Result<Self, LogError> {
        let path = log_dir.join(Self::FILE_NAME);
        std::fs::create_dir_all(log_dir).map_err(|source| LogError::Io {
            path: log_dir.to_path_buf(),
            what: "cannot create the log directory",
            source,
        })?;
        let file = Self::open_file(&path)?;
        Ok(DecryptionLog { path, file })
    }

    fn open_file(path: &Path) -> Result<File, LogError> {
        OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|source| LogError::Io {
                path: path.to_path_buf(),
                what: "cannot open for appending",
                source,
            })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether log rotation renamed (or removed) the file this log writes to.
    pub fn renamed_away(&self) -> bool {
        crate::reopen::renamed_away(&self.file, &self.path)
    }

    /// Opens the path again (a new file when rotation renamed the old one away) and
    /// writes there from now on, for every worker sharing this log: see
    /// [`crate::reopen::replace_open_file`]. When the open fails the old file stays in use.
    pub fn reopen(&self) -> Result<(), LogError> {
        let new = Self::open_file(&self.path)?;
        crate::reopen::replace_open_file(&self.file, new).map_err(|source| LogError::Io {
            path: self.path.clone(),
            what: "cannot reopen",
            source,
        })
    }

    /// Appends `record` as one line. `&self`: writes through a shared reference are
    /// fine, each is a single append (see the type's documentation).
    pub fn write(&self, record: &DecryptionRecord) -> Result<(), LogError> {
        let mut line = Vec::new();
        record.append_line(&mut line).map_err(|source| LogError::Serialize {
            path: self.path.clone(),
            session_id: record.session_id,
            source,
        })?;
        self.write_lines(&line)
    }

    /// Appends `lines` (whole records, each ended by `\n`, as
    /// [`DecryptionRecord::append_line`] makes them) with one write.
    pub fn write_lines(&self, lines: &[u8]) -> Result<(), LogError> {
        (&self.file).write_all(lines).map_err(|source| LogError::Io {
            path: self.path.clone(),
            what: "cannot write",
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::test_dir::TempDir;
    use crate::tls::diagnosis::{ChainShape, ProfileFacts};

    fn self_signed_verify() -> VerifyFact {
        VerifyFact {
            code: 18,
            depth: 0,
            reason: "self signed certificate".to_string(),
            checked_name: "api.example.test".to_string(),
            trusted: false,
        }
    }

    fn self_signed_cert() -> CertFact {
        CertFact {
            subject: "CN=api.example.test".to_string(),
            issuer: "CN=api.example.test".to_string(),
            sans: vec!["api.example.test".to_string()],
            not_before: "2025-01-01T00:00:00Z".to_string(),
            not_after: "2026-01-01T00:00:00Z".to_string(),
            sha256: "0f".repeat(32),
            sha1: "0e".repeat(20),
            serial: "1a2b".to_string(),
        }
    }

    /// A session blocked because the server's certificate is self-signed.
    fn blocked_self_signed() -> DecryptionRecord {
        let mut record = DecryptionRecord::new(
            7,
            "198.18.0.1:50000".parse().unwrap(),
            "198.18.0.2:443".parse().unwrap(),
            Action::Decrypt,
            Outcome::Blocked,
        );
        record.sni = Some("api.example.test".to_string());
        record.stage = Some(Stage::UpstreamVerify);
        record.server_leg = NegotiatedFact {
            version: Some("TLSv1.3".to_string()),
            cipher: Some("TLS_AES_128_GCM_SHA256".to_string()),
            group: Some("X25519".to_string()),
            alpn: None,
            hello_retry: false,
        };
        record.server_cert = Some(self_signed_cert());
        record.server_chain = vec![self_signed_cert()];
        record.verify = Some(self_signed_verify());
        record.alerts = vec![AlertFact::new(Peer::Client, false, 0)];
        record.bytes_client_to_server = 517;
        record.bytes_server_to_client = 7;
        record.packets_client_to_server = 4;
        record.packets_server_to_client = 3;
        record.end_reason = "blocked_untrusted".to_string();
        record.config_version = 3;
        let mut input = DiagnosisInput::from_record(&record);
        input.profile = ProfileFacts::default();
        record.explain(&input);
        record
    }

    #[test]
    fn verify_failure_reads_like_openssl() {
        assert_eq!(
            self_signed_verify().error_line(),
            "certificate verify failed: self signed certificate (code 18, depth 0)"
        );
    }

    #[test]
    fn alerts_read_with_sender_level_name_and_code() {
        assert_eq!(
            AlertFact::new(Peer::Server, true, 40).error_line(),
            "alert received from server: fatal handshake_failure (40)"
        );
        assert_eq!(
            AlertFact::new(Peer::Client, true, 48).error_line(),
            "alert received from client: fatal unknown_ca (48)"
        );
        assert_eq!(
            AlertFact::new(Peer::Server, false, 0).error_line(),
            "alert received from server: warning close_notify (0)"
        );
        // A fact filled without a name still prints one.
        let bare = AlertFact {
            sender: Peer::Server,
            fatal: true,
            code: 70,
            name: String::new(),
        };
        assert_eq!(
            bare.error_line(),
            "alert received from server: fatal protocol_version (70)"
        );
        assert_eq!(AlertFact::new(Peer::Server, true, 255).name, "unknown_alert");
    }

    #[test]
    fn the_error_line_prefers_the_cause() {
        let verify = self_signed_verify();
        let alerts = [
            AlertFact::new(Peer::Client, false, 0),
            AlertFact::new(Peer::Client, true, 48),
            AlertFact::new(Peer::Server, true, 40),
        ];
        assert_eq!(error_line(Some(&verify), &alerts), Some(verify.error_line()));
        assert_eq!(
            error_line(None, &alerts).as_deref(),
            Some("alert received from server: fatal handshake_failure (40)")
        );
        assert_eq!(
            error_line(None, &alerts[..2]).as_deref(),
            Some("alert received from client: fatal unknown_ca (48)")
        );
        assert_eq!(error_line(None, &alerts[..1]), None);
        let ok = VerifyFact {
            code: 0,
            reason: "ok".to_string(),
            trusted: true,
            ..self_signed_verify()
        };
        assert_eq!(error_line(Some(&ok), &[]), None);
    }

    #[test]
    fn blocked_self_signed_session_serializes_with_stage_and_code() {
        let record = blocked_self_signed();
        let line = record.to_json_line().unwrap();
        assert!(!line.contains('\n'));
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(json["stage"], "upstream_verify");
        assert_eq!(json["verify"]["code"], 18);
        assert_eq!(json["verify"]["depth"], 0);
        assert!(line.contains(r#""stage":"upstream_verify""#));
        assert!(line.contains(r#""code":18"#));
        assert_eq!(json["action"], "decrypt");
        assert_eq!(json["outcome"], "blocked");
        assert_eq!(json["protocol"], "tcp");
        assert_eq!(json["client_ip"], "198.18.0.1");
        assert_eq!(json["server_port"], 443);
        assert_eq!(json["alerts"][0]["sender"], "client");
        assert_eq!(
            json["error"],
            "certificate verify failed: self signed certificate (code 18, depth 0)"
        );
        let diagnosis = json["diagnosis"].as_str().unwrap();
        assert!(diagnosis.contains("self-signed"), "{diagnosis}");
        let remedy = json["remedy"].as_str().unwrap();
        assert!(
            remedy.contains("loupectl trust fetch api.example.test --accept"),
            "{remedy}"
        );
        // Unknown values are present as null, not left out.
        assert!(json["client_leg"]["version"].is_null());
        assert!(json.as_object().unwrap().contains_key("sni"));
    }

    #[test]
    fn every_field_is_present_under_its_stable_name() {
        let json: serde_json::Value = serde_json::to_value(DecryptionRecord::new(
            1,
            "[2001:db8::1]:1".parse().unwrap(),
            "[2001:db8::2]:443".parse().unwrap(),
            Action::NoDecrypt,
            Outcome::Spliced,
        ))
        .unwrap();
        let keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        let mut expected = vec![
            "time",
            "session_id",
            "client_ip",
            "client_port",
            "server_ip",
            "server_port",
            "protocol",
            "sni",
            "rule",
            "profile",
            "action",
            "reason",
            "outcome",
            "stage",
            "client_leg",
            "server_leg",
            "server_cert",
            "server_chain",
            "verify",
            "ocsp",
            "alerts",
            "bytes_client_to_server",
            "bytes_server_to_client",
            "packets_client_to_server",
            "packets_server_to_client",
            "end_reason",
            "config_version",
            "http",
            "error",
            "diagnosis",
            "remedy",
        ];
        let mut keys_sorted = keys.clone();
        keys_sorted.sort_unstable();
        expected.sort_unstable();
        assert_eq!(keys_sorted, expected);
        assert_eq!(json["action"], "no-decrypt");
        assert_eq!(json["outcome"], "spliced");
        assert_eq!(json["client_ip"], "2001:db8::1");
    }

    #[test]
    fn a_record_round_trips_through_json() {
        let record = blocked_self_signed();
        let line = record.to_json_line().unwrap();
        let back: DecryptionRecord = serde_json::from_str(&line).unwrap();
        assert_eq!(back, record);
    }

    #[test]
    fn action_and_outcome_names_match_their_json_form() {
        for action in [
            Action::Decrypt,
            Action::NoDecrypt,
            Action::Block,
            Action::DecryptInbound,
        ] {
            assert_eq!(
                serde_json::to_string(&action).unwrap(),
                format!("\"{}\"", action.as_str())
            );
        }
        for outcome in Outcome::ALL {
            assert_eq!(
                serde_json::to_string(&outcome).unwrap(),
                format!("\"{}\"", outcome.as_str())
            );
        }
    }

    #[test]
    fn stage_names_match_their_json_form() {
        for stage in [
            Stage::ClientHello,
            Stage::UpstreamConnect,
            Stage::UpstreamHandshake,
            Stage::UpstreamVerify,
            Stage::ClientHandshake,
            Stage::Established,
        ] {
            assert_eq!(
                serde_json::to_string(&stage).unwrap(),
                format!("\"{}\"", stage.as_str())
            );
        }
    }

    #[test]
    fn time_is_rfc3339_utc_with_milliseconds() {
        let at = |secs: u64, ms: u64| rfc3339_utc_ms(UNIX_EPOCH + Duration::from_millis(secs * 1000 + ms));
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_700_000_000, 123), "2023-11-14T22:13:20.123Z");
        assert_eq!(at(4_107_542_399, 999), "2100-02-28T23:59:59.999Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000Z");
        assert_eq!(at(1_735_689_599, 0), "2024-12-31T23:59:59.000Z");
        // A clock before 1970 prints the epoch.
        assert_eq!(
            rfc3339_utc_ms(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00.000Z"
        );
        // Days agree with a plain day-by-day count across four centuries.
        let mut date = (1970u64, 1u64, 1u64);
        for days in 0..(400 * 366) {
            assert_eq!(civil_date(days), date, "day {days}");
            let leap = date.0.is_multiple_of(4) && (!date.0.is_multiple_of(100) || date.0.is_multiple_of(400));
            let month_len = match date.1 {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            date = if date.2 < month_len {
                (date.0, date.1, date.2 + 1)
            } else if date.1 < 12 {
                (date.0, date.1 + 1, 1)
            } else {
                (date.0 + 1, 1, 1)
            };
        }
    }

    #[test]
    fn the_log_appends_one_line_per_record() {
        let dir = TempDir::new("log");
        let log_dir = dir.0.join("nested/log");
        let first = blocked_self_signed();
        let mut second = blocked_self_signed();
        second.session_id = 8;
        second.outcome = Outcome::Decrypted;

        let log = DecryptionLog::open(&log_dir).unwrap();
        assert_eq!(log.path(), log_dir.join("decryption.jsonl"));
        log.write(&first).unwrap();
        drop(log);
        // Reopening appends rather than truncating.
        DecryptionLog::open(&log_dir).unwrap().write(&second).unwrap();

        let text = std::fs::read_to_string(log_dir.join("decryption.jsonl")).unwrap();
        assert!(text.ends_with('\n'));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let parsed: Vec<DecryptionRecord> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(parsed, vec![first, second]);
    }

    #[test]
    fn concurrent_writers_never_interleave_lines() {
        let dir = TempDir::new("concurrent");
        let log = std::sync::Arc::new(DecryptionLog::open(&dir.0).unwrap());
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                // Half share one handle, half open their own: both are single appends.
                let log = if t % 2 == 0 {
                    log.clone()
                } else {
                    std::sync::Arc::new(DecryptionLog::open(&dir.0).unwrap())
                };
                std::thread::spawn(move || {
                    let mut record = blocked_self_signed();
                    for i in 0..50 {
                        record.session_id = t * 1000 + i;
                        log.write(&record).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let text = std::fs::read_to_string(log.path()).unwrap();
        let mut ids: Vec<u64> = text
            .lines()
            .map(|l| serde_json::from_str::<DecryptionRecord>(l).unwrap().session_id)
            .collect();
        ids.sort_unstable();
        let mut expected: Vec<u64> = (0..4u64).flat_map(|t| (0..50).map(move |i| t * 1000 + i)).collect();
        expected.sort_unstable();
        assert_eq!(ids, expected);
    }

    #[test]
    fn errors_name_the_path() {
        let dir = TempDir::new("err");
        std::fs::create_dir_all(&dir.0).unwrap();
        // A file where the directory should be.
        let blocker = dir.0.join("not-a-dir");
        std::fs::write(&blocker, b"x").unwrap();
        let error = DecryptionLog::open(&blocker).unwrap_err().to_string();
        assert!(error.contains("not-a-dir"), "{error}");
        assert!(error.starts_with("decryption log "), "{error}");
    }

    #[test]
    fn from_record_carries_the_chain_shape() {
        let record = blocked_self_signed();
        let input = DiagnosisInput::from_record(&record);
        assert_eq!(
            input.chain,
            ChainShape {
                len: 1,
                ends_self_signed: true
            }
        );
        assert_eq!(input.stage, Some(Stage::UpstreamVerify));
        assert_eq!(input.host.as_deref(), Some("api.example.test"));
    }
}
