//! The control protocol: JSON lines over the Unix socket, and the messages the control
//! thread exchanges with the workers over crossbeam channels. `control/PROTOCOL.md` is
//! the operator-facing description; this module is its source of truth.
//!
//! A request is one line: `{"v":1,"id":7,"verb":"session","session":…}` — `v` is the
//! protocol version, `id` (optional) is echoed in the reply, `verb` picks the request and
//! the remaining keys are its arguments. A reply is one line: `{"v":1,"id":7,"ok":true,
//! "result":…}` or `{"v":1,"id":7,"ok":false,"error":{"kind":…,"message":…}}`. Streaming
//! verbs (`log-tail`) send several replies with `"more":true` and end with `"more":false`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use compact_str::CompactString;
use crossbeam_channel::Sender;
use serde::{Deserialize, Serialize};

use crate::config::Cidr;

/// The protocol version this build speaks; requests with another `v` are refused.
pub const PROTOCOL_VERSION: u32 = 1;
/// The longest request line accepted; longer ones get a `too-large` error and the
/// connection is closed (the rest of the line is not read).
pub const MAX_REQUEST_BYTES: usize = 1 << 20;
/// The default socket path (DESIGN.md contract).
pub const DEFAULT_SOCKET: &str = "/run/loupe/control.sock";

/// One request line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestLine {
    pub v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    #[serde(flatten)]
    pub request: Request,
}

/// What a client asks for. Paths are absolute: the daemon does not share the client's
/// working directory (loupectl makes them absolute).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    Status,
    Sessions {
        #[serde(default)]
        filter: SessionFilter,
    },
    Session {
        session: u64,
    },
    Counters,
    /// The counters in Prometheus' text exposition format, as `[metrics] listen` serves
    /// them: `{"text": "# HELP …"}`.
    Metrics,
    PolicyCheck {
        file: PathBuf,
    },
    PolicyLoad {
        file: PathBuf,
    },
    PolicyShow,
    /// `changes` are `KEY=VALUE`, `KEY+=VALUE` or `KEY-=VALUE` (lists only).
    ProfileSet {
        profile: String,
        changes: Vec<String>,
    },
    TrustList,
    /// `pem`: the certificate file's contents (the client reads the file).
    TrustImport {
        pem: String,
        #[serde(default)]
        host: Option<String>,
    },
    TrustRemove {
        sha256: String,
        #[serde(default)]
        host: Option<String>,
    },
    TrustFetch {
        host: String,
        #[serde(default = "default_tls_port")]
        port: u16,
        #[serde(default)]
        sni: Option<String>,
        #[serde(default)]
        accept: bool,
    },
    ExclusionsList,
    ExclusionsClear {
        #[serde(default)]
        host: Option<String>,
    },
    LogTail {
        #[serde(default)]
        follow: bool,
        #[serde(default)]
        errors: bool,
        #[serde(default)]
        sni: Option<String>,
        /// Records from the end of the log to send first.
        #[serde(default = "default_tail_lines")]
        lines: usize,
        /// Tail the EVE log's `http` events (`<log-dir>/eve.json`) instead of the
        /// decryption log: `sni` then matches `http.hostname`, and `errors` keeps
        /// events with `loupe.blocked` true or `http.status` ≥ 400. Omitted when false,
        /// so a daemon that predates it still understands the request.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        http: bool,
    },
    CaptureStart {
        #[serde(default)]
        filter: CaptureFilter,
        out: PathBuf,
        #[serde(default = "default_capture_bytes")]
        max_bytes: u64,
    },
    CaptureStop,
    /// Reads `[inspection] rules` again and loads them as a new policy snapshot.
    RulesLoad,
    /// The signatures in force: files, counts, and every rule skipped with its reason.
    RulesShow,
    /// Matches per signature since it was loaded.
    RulesStats,
    /// Reopens the log files (decryption log, EVE log, key logs) after log rotation
    /// renamed them; what SIGHUP does too.
    LogReopen,
}

impl Request {
    /// The request's `verb` as it appears on the wire (for logs).
    pub fn verb(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Sessions { .. } => "sessions",
            Request::Session { .. } => "session",
            Request::Counters => "counters",
            Request::Metrics => "metrics",
            Request::PolicyCheck { .. } => "policy-check",
            Request::PolicyLoad { .. } => "policy-load",
            Request::PolicyShow => "policy-show",
            Request::ProfileSet { .. } => "profile-set",
            Request::TrustList => "trust-list",
            Request::TrustImport { .. } => "trust-import",
            Request::TrustRemove { .. } => "trust-remove",
            Request::TrustFetch { .. } => "trust-fetch",
            Request::ExclusionsList => "exclusions-list",
            Request::ExclusionsClear { .. } => "exclusions-clear",
            Request::LogTail { .. } => "log-tail",
            Request::CaptureStart { .. } => "capture-start",
            Request::CaptureStop => "capture-stop",
            Request::RulesLoad => "rules-load",
            Request::RulesShow => "rules-show",
            Request::RulesStats => "rules-stats",
            Request::LogReopen => "log-reopen",
        }
    }
}

fn default_tls_port() -> u16 {
    443
}

fn default_tail_lines() -> usize {
    20
}

/// 64 MiB: a capture stops on its own at this size unless told otherwise.
pub const DEFAULT_CAPTURE_BYTES: u64 = 64 << 20;

fn default_capture_bytes() -> u64 {
    DEFAULT_CAPTURE_BYTES
}

/// One reply line (or one of several for a streaming verb).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplyLine {
    pub v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    pub ok: bool,
    /// Streaming verbs: more replies follow this one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ControlError>,
}

impl ReplyLine {
    pub fn ok(id: Option<u64>, result: serde_json::Value) -> ReplyLine {
        ReplyLine {
            v: PROTOCOL_VERSION,
            id,
            ok: true,
            more: false,
            result: Some(result),
            error: None,
        }
    }

    pub fn error(id: Option<u64>, error: ControlError) -> ReplyLine {
        ReplyLine {
            v: PROTOCOL_VERSION,
            id,
            ok: false,
            more: false,
            result: None,
            error: Some(error),
        }
    }
}

/// Why a request failed; `kind` is stable for scripts, `message` is for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ControlError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ControlError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ControlError {
        ControlError {
            kind,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// Not JSON, not an object, unknown verb, missing or wrong-typed argument.
    BadRequest,
    /// A `v` this daemon does not speak.
    UnsupportedVersion,
    /// The request line exceeded `MAX_REQUEST_BYTES`.
    TooLarge,
    /// The peer is neither root nor in the control group.
    PermissionDenied,
    /// The request was understood but its content is wrong (a config error, an unknown
    /// profile or key, a certificate that does not parse).
    Invalid,
    /// No such thing (session id, profile, trust entry, recorded chain).
    NotFound,
    /// The daemon could not do it (I/O error, workers did not answer in time).
    Failed,
    /// The connection stayed silent past the idle limit.
    Timeout,
}

/// The process on the other end of a connection (SO_PEERCRED).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerCred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// A request handed from a connection thread to the control thread. The reply channel
/// takes one or more replies (streaming verbs); the connection writes each as a line.
#[derive(Debug)]
pub struct ControlCall {
    pub request: Request,
    pub peer: PeerCred,
    pub reply: Sender<Result<serde_json::Value, ControlError>>,
}

// ---- sessions ----

/// Which sessions `sessions` lists. Every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionFilter {
    /// Exact name, or `*.example.com` for any name below it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "cidr_text")]
    pub src: Option<Cidr>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "cidr_text")]
    pub dst: Option<Cidr>,
    /// A session state (`SessionState`'s names: `handshake`, `decrypting`, `spliced`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// At most this many, newest first; default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

impl SessionFilter {
    pub const DEFAULT_LIMIT: usize = 100;

    /// Whether a session with these facts passes the filter (`limit` aside).
    pub fn matches(&self, client: IpAddr, server: IpAddr, sni: Option<&str>, state: &str) -> bool {
        self.src.is_none_or(|c| c.contains(client))
            && self.dst.is_none_or(|c| c.contains(server))
            && self.state.as_deref().is_none_or(|s| s.eq_ignore_ascii_case(state))
            && self
                .sni
                .as_deref()
                .is_none_or(|pattern| sni.is_some_and(|name| name_matches(pattern, name)))
    }
}

/// `example.com` matches itself only; `*.example.com` matches names below it.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    let name = name.trim_end_matches('.');
    match pattern.strip_prefix("*.") {
        // Compared as bytes: slicing the `str` could split a multi-byte character of a
        // hostile name and panic.
        Some(domain) => {
            let (name, domain) = (name.as_bytes(), domain.as_bytes());
            name.len() > domain.len() + 1
                && name[name.len() - domain.len()..].eq_ignore_ascii_case(domain)
                && name[name.len() - domain.len() - 1] == b'.'
        }
        None => pattern.eq_ignore_ascii_case(name),
    }
}

mod cidr_text {
    use super::Cidr;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Cidr>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(cidr) => serializer.collect_str(cidr),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Cidr>, D::Error> {
        let text: Option<String> = Option::deserialize(deserializer)?;
        text.map(|t| t.parse().map_err(serde::de::Error::custom)).transpose()
    }
}

/// One line of `sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSummary {
    pub id: u64,
    pub worker: u32,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub sni: Option<String>,
    /// `SessionState` name.
    pub state: String,
    pub action: Option<String>,
    pub rule: Option<String>,
    pub bytes_client_to_server: u64,
    pub bytes_server_to_client: u64,
    /// Seconds since the SYN.
    pub age_secs: u64,
    /// HTTP transactions (request and response) inspected so far.
    #[serde(default)]
    pub transactions: u64,
    /// The last request in a few words: `GET shop.example/admin 403`.
    #[serde(default)]
    pub last_http: Option<String>,
}

/// One direction of a session as a firewall shows it: who sends, to whom, the TCP state
/// of loupe's endpoint facing the sender, and what went that way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowView {
    pub from: SocketAddr,
    pub to: SocketAddr,
    /// smoltcp's state name of loupe's socket facing `from` (`ESTABLISHED`, `FIN-WAIT-1`…).
    pub tcp_state: String,
    pub bytes: u64,
    pub packets: u64,
}

/// `session ID`: everything about one session, live or recently ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionDetail {
    pub id: u64,
    pub worker: u32,
    /// False for an ended session kept in the worker's ring of recent ones.
    pub live: bool,
    pub state: String,
    /// Client to server, and server to client.
    pub c2s: FlowView,
    pub s2c: FlowView,
    /// RFC 3339 UTC.
    pub started: String,
    /// Seconds without a frame either way.
    pub idle_secs: u64,
    /// After this many idle seconds the flow is ended (`[timeouts] idle`; 0 for an
    /// ended session).
    pub idle_timeout_secs: u64,
    pub rule: Option<String>,
    pub profile: Option<String>,
    pub action: Option<String>,
    pub reason: Option<String>,
    pub decrypted: bool,
    pub sni: Option<String>,
    pub tls_version: Option<String>,
    pub cipher: Option<String>,
    pub alpn: Option<String>,
    pub cert_subject: Option<String>,
    pub cert_issuer: Option<String>,
    /// Where it failed (`upstream_verify`…); null while nothing failed.
    pub stage: Option<String>,
    pub error: Option<String>,
    /// For ended sessions: why (`fin`, `client_reset`…).
    pub end_reason: Option<String>,
    pub config_version: u64,
    /// What HTTP inspection saw; null when the session was never inspected as HTTP
    /// (not decrypted, or still in the handshake).
    #[serde(default)]
    pub http: Option<HttpDetail>,
}

/// HTTP inspection of one decrypted session, for `session ID`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpDetail {
    /// `http/1.1`, `h2` or `unknown` (not recognised yet, or not HTTP).
    pub protocol: String,
    /// Transactions inspected so far.
    pub transactions: u64,
    /// Why inspection stopped while bytes kept flowing, e.g.
    /// `http2 COMPRESSION_ERROR in HEADERS of stream 5`.
    pub stopped: Option<String>,
    /// Why inspection ended the session (a block, a reset), if it did.
    pub ended: Option<String>,
    /// The last few transactions, oldest first.
    pub recent: Vec<HttpLine>,
}

/// One HTTP transaction as `session ID` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpLine {
    pub method: CompactString,
    /// The `Host` header or `:authority`.
    pub host: Option<CompactString>,
    /// The request target as sent (`/admin?x=1`).
    pub url: CompactString,
    /// The response status; null while none came (or the request was blocked).
    pub status: Option<u16>,
    /// The HTTP/2 stream; null for HTTP/1.1.
    pub stream_id: Option<u32>,
    /// The URL rule that matched, and its action (`block`, `alert`, `allow`…).
    pub url_rule: Option<CompactString>,
    pub url_action: Option<CompactString>,
    /// loupe answered or reset instead of forwarding the request.
    pub blocked: bool,
}

// ---- workers ----

/// A question the control thread puts to every worker; each answers on the channel it
/// carries, between two batches, so the data path never stops for it.
#[derive(Debug)]
pub enum WorkerQuery {
    Sessions {
        filter: SessionFilter,
        reply: Sender<Vec<SessionSummary>>,
    },
    Session {
        id: u64,
        reply: Sender<Option<SessionDetail>>,
    },
    /// Per-worker facts for `status` and `counters` that are not plain atomics.
    Report { reply: Sender<WorkerReport> },
    /// `trust fetch` without a recorded chain: connect to `server` from `source` (a
    /// client address behind the inside port) out of the outside port, complete a TLS
    /// handshake without verifying, and answer the chain presented (DER, leaf first).
    FetchChain {
        server: SocketAddr,
        sni: Option<String>,
        source: IpAddr,
        reply: Sender<Result<Vec<Vec<u8>>, String>>,
    },
}

/// What a worker reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerReport {
    pub queue: u32,
    /// The newest policy version this worker runs.
    pub config_version: u64,
    pub flows: u64,
    /// Sessions ended, by outcome (`decrypted`, `spliced`, `blocked`, `aborted`).
    pub outcomes: Vec<(String, u64)>,
    /// Failed or blocked sessions by their error or reason, most frequent first.
    pub failures: Vec<(String, u64)>,
}

/// What a capture keeps: every condition given must hold for a flow's frames.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureFilter {
    /// Either end of the flow has this address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<IpAddr>,
    /// Either end of the flow has this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The flow's ClientHello named this server (exact or `*.example.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Only the frames of one leg: `client` (client ↔ loupe) or `server` (loupe ↔
    /// server). Both legs share one 4-tuple, so tools that track TLS per connection
    /// (Wireshark with a key log) need one leg per file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leg: Option<CaptureLeg>,
}

/// One of the two TCP connections loupe joins for a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CaptureLeg {
    /// Between the client and loupe (the inside port).
    Client,
    /// Between loupe and the server (the outside port).
    Server,
}

/// Reads a request line, or says precisely what is wrong with it.
pub fn parse_request(line: &[u8]) -> Result<RequestLine, (Option<u64>, ControlError)> {
    let value: serde_json::Value = serde_json::from_slice(line)
        .map_err(|e| (None, ControlError::new(ErrorKind::BadRequest, format!("not JSON: {e}"))))?;
    let Some(object) = value.as_object() else {
        return Err((
            None,
            ControlError::new(ErrorKind::BadRequest, "a request is a JSON object"),
        ));
    };
    let id = object.get("id").and_then(serde_json::Value::as_u64);
    match object.get("v").map(|v| v.as_u64()) {
        None => {
            return Err((
                id,
                ControlError::new(ErrorKind::BadRequest, "missing \"v\" (the protocol version, 1)"),
            ))
        }
        Some(Some(v)) if v == u64::from(PROTOCOL_VERSION) => {}
        Some(_) => {
            return Err((
                id,
                ControlError::new(
                    ErrorKind::UnsupportedVersion,
                    format!(
                        "protocol version {} is not spoken here (this daemon speaks {PROTOCOL_VERSION})",
                        object["v"]
                    ),
                ),
            ))
        }
    }
    serde_json::from_value::<RequestLine>(value.clone())
        .map_err(|e| (id, ControlError::new(ErrorKind::BadRequest, e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let line = RequestLine {
            v: 1,
            id: Some(3),
            request: Request::Sessions {
                filter: SessionFilter {
                    sni: Some("*.lab".into()),
                    src: Some("198.18.0.0/24".parse().unwrap()),
                    ..SessionFilter::default()
                },
            },
        };
        let text = serde_json::to_string(&line).unwrap();
        assert_eq!(
            text,
            r#"{"v":1,"id":3,"verb":"sessions","filter":{"sni":"*.lab","src":"198.18.0.0/24"}}"#
        );
        assert_eq!(parse_request(text.as_bytes()).unwrap(), line);
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let kind = |line: &str| parse_request(line.as_bytes()).unwrap_err().1.kind;
        assert_eq!(kind("{"), ErrorKind::BadRequest);
        assert_eq!(kind("[1]"), ErrorKind::BadRequest);
        assert_eq!(kind(r#"{"verb":"status"}"#), ErrorKind::BadRequest);
        assert_eq!(kind(r#"{"v":2,"verb":"status"}"#), ErrorKind::UnsupportedVersion);
        let (id, err) = parse_request(br#"{"v":1,"id":9,"verb":"launch"}"#).unwrap_err();
        assert_eq!(id, Some(9));
        assert!(err.message.contains("launch"), "{}", err.message);
        let (_, err) = parse_request(br#"{"v":1,"verb":"session"}"#).unwrap_err();
        assert!(err.message.contains("session"), "{}", err.message);
    }

    #[test]
    fn unknown_arguments_and_odd_ids_are_bad_requests() {
        let kind = |line: &str| parse_request(line.as_bytes()).unwrap_err().1.kind;
        // Verbs without arguments ignore extra keys (serde: flattened unit variants).
        assert!(parse_request(br#"{"v":1,"verb":"status","extra":1}"#).is_ok());
        assert_eq!(
            kind(r#"{"v":1,"verb":"session","session":1,"extra":1}"#),
            ErrorKind::BadRequest
        );
        assert_eq!(kind(r#"{"v":1,"id":"x","verb":"status"}"#), ErrorKind::BadRequest);
        assert!(parse_request(br#"{"v":1,"verb":"log-tail"}"#).is_ok());
    }

    #[test]
    fn log_tail_of_http_events() {
        let parsed = parse_request(br#"{"v":1,"verb":"log-tail","http":true}"#).unwrap();
        assert_eq!(
            parsed.request,
            Request::LogTail {
                follow: false,
                errors: false,
                sni: None,
                lines: 20,
                http: true,
            }
        );
        let Request::LogTail { http, .. } = parse_request(br#"{"v":1,"verb":"log-tail"}"#).unwrap().request else {
            panic!("not a log-tail");
        };
        assert!(!http, "the decryption log unless asked");
        assert_eq!(
            parse_request(br#"{"v":1,"verb":"log-tail","http":"yes"}"#)
                .unwrap_err()
                .1
                .kind,
            ErrorKind::BadRequest
        );
        // `http: false` is left out, so daemons that predate it (unknown keys are
        // refused) still take a plain tail.
        let plain = Request::LogTail {
            follow: true,
            errors: false,
            sni: None,
            lines: 5,
            http: false,
        };
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            r#"{"verb":"log-tail","follow":true,"errors":false,"sni":null,"lines":5}"#
        );
    }

    #[test]
    fn sessions_from_daemons_without_http_still_read() {
        let summary: SessionSummary = serde_json::from_str(
            r#"{"id":1,"worker":0,"client":"198.18.0.1:40000","server":"198.18.0.2:443","sni":null,
                "state":"decrypting","action":"decrypt","rule":"all","bytes_client_to_server":1,
                "bytes_server_to_client":2,"age_secs":3}"#,
        )
        .unwrap();
        assert_eq!((summary.transactions, summary.last_http), (0, None));
    }

    #[test]
    fn session_detail_carries_http() {
        let http = HttpDetail {
            protocol: "h2".into(),
            transactions: 2,
            stopped: Some("http2 COMPRESSION_ERROR in HEADERS of stream 5".into()),
            ended: None,
            recent: vec![HttpLine {
                method: "GET".into(),
                host: Some("shop.example".into()),
                url: "/admin".into(),
                status: Some(403),
                stream_id: Some(3),
                url_rule: Some("no-admin".into()),
                url_action: Some("block".into()),
                blocked: true,
            }],
        };
        let wire = serde_json::to_value(&http).unwrap();
        assert_eq!(wire["recent"][0]["stream_id"], 3);
        assert_eq!(wire["ended"], serde_json::Value::Null);
        assert_eq!(serde_json::from_value::<HttpDetail>(wire).unwrap(), http);
    }

    #[test]
    fn verbs_are_the_wire_names() {
        for request in [
            Request::Status,
            Request::PolicyShow,
            Request::CaptureStop,
            Request::Session { session: 1 },
            Request::ExclusionsClear { host: None },
            Request::LogReopen,
        ] {
            let wire = serde_json::to_value(&request).unwrap();
            assert_eq!(wire["verb"], request.verb());
        }
    }

    #[test]
    fn name_patterns() {
        assert!(name_matches("a.lab", "A.lab"));
        assert!(!name_matches("a.lab", "b.a.lab"));
        assert!(name_matches("*.lab", "a.lab"));
        assert!(!name_matches("*.lab", "lab"));
        assert!(!name_matches("*.lab", "xlab"));
        // Non-ASCII names never split a character (this used to panic).
        assert!(!name_matches("*.b", "a\u{e9}"));
        assert!(!name_matches("*.\u{e9}", "ab.x"));
        assert!(name_matches("*.lab", "\u{e9}.lab"));
    }

    #[test]
    fn filters() {
        let filter = SessionFilter {
            dst: Some("198.18.0.2/32".parse().unwrap()),
            state: Some("decrypting".into()),
            ..SessionFilter::default()
        };
        let client = "198.18.0.1".parse().unwrap();
        assert!(filter.matches(client, "198.18.0.2".parse().unwrap(), None, "decrypting"));
        assert!(!filter.matches(client, "198.18.0.3".parse().unwrap(), None, "decrypting"));
        assert!(!filter.matches(client, "198.18.0.2".parse().unwrap(), None, "spliced"));
    }
}
