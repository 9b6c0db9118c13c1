//! The EVE log: `<log-dir>/eve.json`, one JSON event per line in Suricata's EVE format,
//! so that what already reads Suricata (Filebeat's and Logstash's Suricata modules, the
//! Elastic and Splunk dashboards, `jq` scripts) reads loupe unchanged.
//!
//! Every event starts with Suricata's common header: `timestamp` (Suricata's
//! `2026-12-03T13:35:00.123456+0000`, here always in UTC), `flow_id`, `in_iface` (when
//! known), `event_type`, `src_ip`/`src_port` (the client), `dest_ip`/`dest_port` (the
//! server), `proto` (`"TCP"`), `tx_id` (http), `app_proto`. Then the object named by the
//! event type under Suricata's field names, and last loupe's own facts under `loupe`
//! (`session_id` joins the decryption log). Absent values are left out, as Suricata
//! does, never written as `null`.
//!
//! - `http` ([`http_event`]), one per transaction. HTTP/1.x as Suricata's HTTP logger
//!   with `extended: yes` writes it: `hostname` (Host without the port, lowercase),
//!   `http_port` (only when the Host named a port), `url`, `http_user_agent`,
//!   `http_content_type` (the response's, cut at `;`), `http_refer`, `http_method`,
//!   `protocol`, `status`, `length` (response body bytes). HTTP/2 as Suricata 7 and 8 log
//!   it: the same event type with `app_proto` `"http2"`, `version` `"2"` and an `http2`
//!   object with the `stream_id`; loupe also fills the HTTP/1 names it knows for HTTP/2
//!   (`hostname` from `:authority`, `http_content_type`, `http_refer`, `protocol`
//!   `"HTTP/2"`), all of them fields of Suricata's `http` object.
//! - `tls` ([`tls_event`]), one per session, from its decryption record: Suricata's
//!   extended TLS fields for the server's certificate (`subject`, `issuerdn`,
//!   `subjectaltname`, `serial`, `fingerprint`, `notbefore`, `notafter`) and the session
//!   (`sni`, `version`).
//!
//! The events are typed structs that borrow from the transaction or record they describe
//! and serialize straight into the line; nothing is built as a `serde_json::Value`. The
//! `http` event, one per transaction, is written by hand ([`HttpEvent::write_line`]) to
//! the same bytes serde_json writes for it.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

use crate::inspect::engine::InspectedTransaction;
use crate::inspect::transaction::{HttpVersion, Transaction};
use crate::tls::record::{civil_date, Action, CertFact, DecryptionRecord, Outcome};

/// The flow an event is about. `client` is the side that opened the connection: it
/// becomes `src_*`, the server `dest_*`, as Suricata logs flow events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EveFlow {
    /// Suricata's `flow_id`: the same number on every event of one flow.
    pub flow_id: u64,
    /// loupe's session id, as in the decryption log (`loupe.session_id`).
    pub session_id: u64,
    pub client: SocketAddr,
    pub server: SocketAddr,
}

/// A point in time as Suricata's EVE `timestamp` writes it:
/// `2026-12-03T13:35:00.123456+0000` (microseconds and a numeric offset; loupe writes
/// UTC). Times before 1970 (a badly set clock) print as the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EveTime(pub SystemTime);

impl EveTime {
    /// The text, built by hand: four timestamps go into every http event, and the
    /// formatting machinery was the largest inspection cost in a profile of the bench.
    fn text(&self) -> [u8; 31] {
        let since_epoch = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since_epoch.as_secs();
        let (year, month, day) = civil_date(secs / 86_400);
        let of_day = secs % 86_400;
        let mut out = *b"0000-00-00T00:00:00.000000+0000";
        put_digits(&mut out[0..4], year.min(9999));
        put_digits(&mut out[5..7], month);
        put_digits(&mut out[8..10], day);
        put_digits(&mut out[11..13], of_day / 3600);
        put_digits(&mut out[14..16], of_day / 60 % 60);
        put_digits(&mut out[17..19], of_day % 60);
        put_digits(&mut out[EveTime::MICROS], u64::from(since_epoch.subsec_micros()));
        out
    }

    /// Where [`EveTime::text`] has the microseconds.
    const MICROS: std::ops::Range<usize> = 20..26;
}

/// Writes `value`'s last `field.len()` decimal digits into `field`, zero-padded.
fn put_digits(field: &mut [u8], mut value: u64) {
    for digit in field.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

impl fmt::Display for EveTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.text();
        // ASCII digits and punctuation only.
        f.write_str(std::str::from_utf8(&text).unwrap_or_default())
    }
}

impl Serialize for EveTime {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = self.text();
        serializer.serialize_str(std::str::from_utf8(&text).unwrap_or_default())
    }
}

fn serialize_time<S: Serializer>(time: &Option<SystemTime>, serializer: S) -> Result<S::Ok, S::Error> {
    match time {
        Some(time) => EveTime(*time).serialize(serializer),
        None => serializer.serialize_none(),
    }
}

/// Suricata's common header, shared by every event type.
#[derive(Debug, Clone, Serialize)]
pub struct EveHeader<'a> {
    pub timestamp: EveTime,
    pub flow_id: u64,
    /// The interface the flow came in on; left out when not set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_iface: Option<&'a str>,
    pub event_type: &'static str,
    pub src_ip: IpAddr,
    pub src_port: u16,
    pub dest_ip: IpAddr,
    pub dest_port: u16,
    /// `"TCP"`: Suricata writes the IP protocol's name in capitals.
    pub proto: &'static str,
    /// The transaction's number within the flow (http); Suricata writes it on every
    /// transaction event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_id: Option<u64>,
    /// `"http"`, `"http2"` or `"tls"`, Suricata's names of the application protocols.
    pub app_proto: &'static str,
}

impl<'a> EveHeader<'a> {
    fn new(at: SystemTime, flow: &EveFlow, event_type: &'static str, app_proto: &'static str) -> Self {
        EveHeader {
            timestamp: EveTime(at),
            flow_id: flow.flow_id,
            in_iface: None,
            event_type,
            src_ip: flow.client.ip(),
            src_port: flow.client.port(),
            dest_ip: flow.server.ip(),
            dest_port: flow.server.port(),
            proto: "TCP",
            tx_id: None,
            app_proto,
        }
    }
}

// ---------------------------------------------------------------------------------------
// http
// ---------------------------------------------------------------------------------------

/// The URL rule that decided a request (`loupe.url_rule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct UrlRuleVerdict<'a> {
    /// The rule's name.
    pub name: &'a str,
    /// What it did: `allow`, `alert` or `block` (the URL rule action's own name).
    pub action: &'a str,
}

/// What loupe knows of a transaction beyond the HTTP exchange: written under `loupe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpLoupeFacts<'a> {
    /// The policy rule that decided the session (`"default"` when none matched).
    pub rule: &'a str,
    /// The policy action of the session.
    pub action: Action,
    /// The URL rule that matched the request; left out when none did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url_rule: Option<UrlRuleVerdict<'a>>,
    /// The transaction's number within the session, from 0 in request order.
    pub transaction: u64,
    /// loupe answered the request itself; the server never saw it.
    pub blocked: bool,
    /// When the request's first byte arrived.
    #[serde(serialize_with = "serialize_time", skip_serializing_if = "Option::is_none")]
    pub request_start: Option<SystemTime>,
    /// When the response's first byte arrived.
    #[serde(serialize_with = "serialize_time", skip_serializing_if = "Option::is_none")]
    pub response_first_byte: Option<SystemTime>,
    /// When the transaction ended (its response's last byte, or its abort).
    #[serde(serialize_with = "serialize_time", skip_serializing_if = "Option::is_none")]
    pub end: Option<SystemTime>,
}

impl<'a> HttpLoupeFacts<'a> {
    /// A finished transaction's facts, in a session the policy rule `rule` decided.
    pub fn of(done: &'a InspectedTransaction, rule: &'a str, action: Action) -> Self {
        HttpLoupeFacts {
            rule,
            action,
            url_rule: done.url_rule.as_ref().map(|hit| UrlRuleVerdict {
                name: &hit.rule,
                action: hit.action.as_str(),
            }),
            transaction: done.index,
            blocked: done.blocked,
            request_start: done.request_start,
            response_first_byte: done.response_first_byte,
            end: done.end,
        }
    }
}

/// The `loupe` object of an http event.
#[derive(Debug, Clone, Serialize)]
pub struct HttpLoupe<'a> {
    pub session_id: u64,
    #[serde(flatten)]
    pub facts: &'a HttpLoupeFacts<'a>,
}

/// An EVE `http` event: one transaction.
#[derive(Debug, Clone, Serialize)]
pub struct HttpEvent<'a> {
    #[serde(flatten)]
    pub header: EveHeader<'a>,
    pub http: EveHttp<'a>,
    pub loupe: HttpLoupe<'a>,
}

/// Suricata's `http` object.
#[derive(Debug, Clone, Serialize)]
pub struct EveHttp<'a> {
    /// The Host header's (HTTP/2: `:authority`'s) host, lowercase, without the port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<Cow<'a, str>>,
    /// The port the Host header named; left out when it named none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_port: Option<u16>,
    /// The request target: path and query.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<EveUrl<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_user_agent: Option<&'a str>,
    /// The response's media type: its Content-Type up to any `;`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_content_type: Option<&'a str>,
    /// The Referer header (Suricata's spelling).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_refer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_method: Option<&'a str>,
    /// `HTTP/1.1`, `HTTP/1.0`, `HTTP/2`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<&'static str>,
    /// The final status code; left out until a response head was seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Response body bytes (after de-chunking, before content decoding).
    pub length: u64,
    /// `"2"` on HTTP/2, as Suricata's HTTP/2 logger writes it; left out otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http2: Option<EveHttp2>,
}

/// Suricata's `http.http2` object. Suricata also logs the frames' settings, priorities
/// and error codes there; loupe logs the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EveHttp2 {
    pub stream_id: u32,
}

/// A request target as `http.url`: the path and, when there is one, `?` and the query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EveUrl<'a> {
    pub path: &'a str,
    pub query: Option<&'a str>,
}

impl fmt::Display for EveUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.path)?;
        if let Some(query) = self.query {
            write!(f, "?{query}")?;
        }
        Ok(())
    }
}

impl Serialize for EveUrl<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.query {
            None => serializer.serialize_str(self.path),
            Some(_) => serializer.collect_str(self),
        }
    }
}

/// The `http` event of one transaction, stamped `at`.
pub fn http_event<'a>(
    at: SystemTime,
    flow: &EveFlow,
    tx: &'a Transaction,
    facts: &'a HttpLoupeFacts<'a>,
) -> HttpEvent<'a> {
    let mut header = EveHeader::new(at, flow, "http", http_app_proto(tx));
    header.tx_id = Some(facts.transaction);
    HttpEvent {
        header,
        http: eve_http(tx),
        loupe: HttpLoupe {
            session_id: flow.session_id,
            facts,
        },
    }
}

/// Suricata's `http` object of a transaction.
fn eve_http(tx: &Transaction) -> EveHttp<'_> {
    let http2 = tx.version == Some(HttpVersion::Http2);
    let (hostname, http_port) = match tx.host.as_deref() {
        Some(host) => split_host(host),
        None => (None, None),
    };
    let url = (!tx.path.is_empty() || tx.query.is_some()).then_some(EveUrl {
        path: &tx.path,
        query: tx.query.as_deref(),
    });
    EveHttp {
        hostname,
        http_port,
        url,
        http_user_agent: tx.user_agent.as_deref(),
        http_content_type: tx.response_content_type.as_deref().map(media_type),
        http_refer: tx.referer.as_deref(),
        http_method: Some(tx.method.as_str()).filter(|m| !m.is_empty()),
        protocol: tx.version.map(HttpVersion::as_str),
        status: tx.status.filter(|&s| s > 0),
        length: tx.response_body_len,
        version: http2.then_some("2"),
        http2: if http2 {
            tx.stream_id.map(|stream_id| EveHttp2 { stream_id })
        } else {
            None
        },
    }
}

/// Splits a Host value into Suricata's `hostname` and `http_port` as its HTTP parser
/// does: the host runs to the first `:` (an IPv6 literal keeps its brackets) and is
/// lowercased; the port is logged only when it is a number from 1 to 65535. An empty
/// host is no hostname.
fn split_host(host: &str) -> (Option<Cow<'_, str>>, Option<u16>) {
    let host = host.trim_matches(' ');
    let end = if host.starts_with('[') {
        host.find(']').map_or(host.len(), |i| i + 1)
    } else {
        host.find(':').unwrap_or(host.len())
    };
    let (name, rest) = host.split_at(end);
    let name = name.trim_end_matches(' ');
    let port = rest
        .strip_prefix(':')
        .map(|p| p.trim_matches(' '))
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|&p| p != 0);
    if name.is_empty() {
        return (None, port);
    }
    let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    };
    (Some(name), port)
}

/// A Content-Type value up to any `;` (Suricata leaves out the parameters).
fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or(content_type)
}

// ---------------------------------------------------------------------------------------
// alert
// ---------------------------------------------------------------------------------------

/// An EVE `alert` event: a signature that fired on a transaction, with the transaction's
/// `http` object, or on a TLS handshake, with a `tls` object, as Suricata writes it.
#[derive(Debug, Clone, Serialize)]
pub struct AlertEvent<'a> {
    #[serde(flatten)]
    pub header: EveHeader<'a>,
    pub alert: EveAlert<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<EveHttp<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<AlertTls<'a>>,
    pub loupe: AlertLoupe,
}

/// The `tls` object of an alert on a handshake: what a `tls` rule can have read.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct AlertTls<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<&'a str>,
    pub version: &'static str,
}

/// What a signature fired on.
#[derive(Debug, Clone, Copy)]
pub enum AlertSubject<'a> {
    /// Transaction `index` of the session, as far as it had come.
    Transaction { index: u64, tx: &'a Transaction },
    /// The TLS handshake: the ClientHello's server name and the client leg's version.
    Handshake {
        sni: Option<&'a str>,
        version: Option<&'a str>,
    },
}

/// Suricata's `alert` object.
#[derive(Debug, Clone, Serialize)]
pub struct EveAlert<'a> {
    /// `allowed`, or `blocked` when the rule's action was `drop`.
    pub action: &'static str,
    pub gid: u32,
    pub signature_id: u32,
    pub rev: u32,
    pub signature: &'a str,
    /// The classtype's description (Suricata's classification.config), empty without one.
    pub category: &'a str,
    pub severity: u8,
    /// The rule's `metadata`, each key with its values.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metadata: std::collections::BTreeMap<&'a str, Vec<&'a str>>,
}

/// The `loupe` object of an alert event.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct AlertLoupe {
    pub session_id: u64,
    /// The transaction's number within the session; left out for a handshake.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction: Option<u64>,
    /// The rule file's name and line are in `loupectl rules show`; the rule's action:
    pub rule_action: &'static str,
}

/// The `alert` event of `rule` firing on `subject`, stamped `at`.
pub fn alert_event<'a>(
    at: SystemTime,
    flow: &EveFlow,
    subject: AlertSubject<'a>,
    rule: &'a crate::inspect::signatures::Rule,
) -> AlertEvent<'a> {
    use crate::inspect::signatures::Action as RuleAction;
    let (header, http, tls, transaction) = match subject {
        AlertSubject::Transaction { index, tx } => {
            let mut header = EveHeader::new(at, flow, "alert", http_app_proto(tx));
            header.tx_id = Some(index);
            (header, Some(eve_http(tx)), None, Some(index))
        }
        AlertSubject::Handshake { sni, version } => {
            let header = EveHeader::new(at, flow, "alert", "tls");
            let tls = AlertTls {
                sni,
                version: suricata_tls_version(version),
            };
            (header, None, Some(tls), None)
        }
    };
    let (category, class_priority) = match rule.meta.classtype.as_deref() {
        Some(classtype) => classification(classtype).unwrap_or((classtype, 3)),
        None => ("", 3),
    };
    let mut metadata: std::collections::BTreeMap<&str, Vec<&str>> = std::collections::BTreeMap::new();
    for entry in &rule.meta.metadata {
        let entry = entry.trim();
        let (key, value) = entry.split_once(' ').unwrap_or((entry, ""));
        metadata.entry(key).or_default().push(value.trim());
    }
    AlertEvent {
        header,
        alert: EveAlert {
            action: if rule.action == RuleAction::Drop {
                "blocked"
            } else {
                "allowed"
            },
            gid: rule.meta.gid,
            signature_id: rule.meta.sid,
            rev: rule.meta.rev,
            signature: &rule.meta.msg,
            category,
            severity: rule.meta.priority.unwrap_or(class_priority),
            metadata,
        },
        http,
        tls,
        loupe: AlertLoupe {
            session_id: flow.session_id,
            transaction,
            rule_action: rule.action.as_str(),
        },
    }
}

fn http_app_proto(tx: &Transaction) -> &'static str {
    if tx.version == Some(HttpVersion::Http2) {
        "http2"
    } else {
        "http"
    }
}

/// Suricata's default classification.config: classtype, its description (the alert's
/// `category`) and priority (the alert's `severity` when the rule sets none).
const CLASSIFICATIONS: &[(&str, &str, u8)] = &[
    ("not-suspicious", "Not Suspicious Traffic", 3),
    ("unknown", "Unknown Traffic", 3),
    ("bad-unknown", "Potentially Bad Traffic", 2),
    ("attempted-recon", "Attempted Information Leak", 2),
    ("successful-recon-limited", "Information Leak", 2),
    ("successful-recon-largescale", "Large Scale Information Source Leak", 2),
    ("attempted-dos", "Attempted Denial of Service", 2),
    ("successful-dos", "Denial of Service", 2),
    ("attempted-user", "Attempted User Privilege Gain", 1),
    ("unsuccessful-user", "Unsuccessful User Privilege Gain", 1),
    ("successful-user", "Successful User Privilege Gain", 1),
    ("attempted-admin", "Attempted Administrator Privilege Gain", 1),
    ("successful-admin", "Successful Administrator Privilege Gain", 1),
    ("rpc-portmap-decode", "Decode of an RPC Query", 2),
    ("shellcode-detect", "Executable code was detected", 1),
    ("string-detect", "A suspicious string was detected", 3),
    ("suspicious-filename-detect", "A suspicious filename was detected", 2),
    (
        "suspicious-login",
        "An attempted login using a suspicious username was detected",
        2,
    ),
    ("system-call-detect", "A system call was detected", 2),
    ("tcp-connection", "A TCP connection was detected", 4),
    ("trojan-activity", "A Network Trojan was detected", 1),
    (
        "unusual-client-port-connection",
        "A client was using an unusual port",
        2,
    ),
    ("network-scan", "Detection of a Network Scan", 3),
    ("denial-of-service", "Detection of a Denial of Service Attack", 2),
    (
        "non-standard-protocol",
        "Detection of a non-standard protocol or event",
        2,
    ),
    ("protocol-command-decode", "Generic Protocol Command Decode", 3),
    (
        "web-application-activity",
        "access to a potentially vulnerable web application",
        2,
    ),
    ("web-application-attack", "Web Application Attack", 1),
    ("misc-activity", "Misc activity", 3),
    ("misc-attack", "Misc Attack", 2),
    ("icmp-event", "Generic ICMP event", 3),
    ("inappropriate-content", "Inappropriate Content was Detected", 1),
    ("policy-violation", "Potential Corporate Privacy Violation", 1),
    (
        "default-login-attempt",
        "Attempt to login by a default username and password",
        2,
    ),
    ("targeted-activity", "Targeted Malicious Activity was Detected", 1),
    ("exploit-kit", "Exploit Kit Activity Detected", 1),
    ("external-ip-check", "Device Retrieving External IP Address Detected", 2),
    ("domain-c2", "Domain Observed Used for C2 Detected", 1),
    ("pup-activity", "Possibly Unwanted Program Detected", 2),
    ("credential-theft", "Successful Credential Theft Detected", 1),
    ("social-engineering", "Possible Social Engineering Attempted", 2),
    ("coin-mining", "Crypto Currency Mining Activity Detected", 2),
    (
        "command-and-control",
        "Malware Command and Control Activity Detected",
        1,
    ),
];

/// A classtype's description and priority.
pub fn classification(classtype: &str) -> Option<(&'static str, u8)> {
    CLASSIFICATIONS
        .iter()
        .find(|(name, _, _)| *name == classtype)
        .map(|(_, description, priority)| (*description, *priority))
}

// ---------------------------------------------------------------------------------------
// tls
// ---------------------------------------------------------------------------------------

/// An EVE `tls` event: one TLS session.
#[derive(Debug, Clone, Serialize)]
pub struct TlsEvent<'a> {
    #[serde(flatten)]
    pub header: EveHeader<'a>,
    pub tls: EveTls<'a>,
    pub loupe: TlsLoupe<'a>,
}

/// Suricata's `tls` object (its extended fields, without JA3/JA4).
#[derive(Debug, Clone, Serialize)]
pub struct EveTls<'a> {
    /// The server certificate's subject, `C=US, O=Example, CN=www.example.com`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuerdn: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subjectaltname: Option<&'a [String]>,
    /// The serial number's DER bytes, uppercase hex separated by `:` (`0C:00:99`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// SHA-1 of the certificate's DER, lowercase hex separated by `:`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<ColonHex<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<&'a str>,
    /// `TLS 1.3`, `TLS 1.2`, `TLS 1.1`, `TLSv1`, `SSLv3`, or `UNDETERMINED`.
    pub version: &'static str,
    /// `2024-01-01T00:00:00` (UTC, no offset, as Suricata writes certificate dates).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notbefore: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notafter: Option<&'a str>,
}

/// The `loupe` object of a tls event.
#[derive(Debug, Clone, Serialize)]
pub struct TlsLoupe<'a> {
    pub session_id: u64,
    pub rule: &'a str,
    pub action: Action,
    pub outcome: Outcome,
}

/// Lowercase hex bytes separated by `:` (`8f:51:12`), from plain hex (`8f5112`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColonHex<'a>(&'a str);

impl fmt::Display for ColonHex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, pair) in self.0.as_bytes().chunks(2).enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            for &digit in pair {
                write!(f, "{}", char::from(digit.to_ascii_lowercase()))?;
            }
        }
        Ok(())
    }
}

impl Serialize for ColonHex<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The `tls` event of one session, stamped `at`, from its decryption record. The
/// certificate is the server's leaf as the server presented it (the real one, not
/// loupe's forgery); the version is the server leg's, or the client leg's when loupe did
/// not talk to the server.
pub fn tls_event<'a>(at: SystemTime, flow: &EveFlow, record: &'a DecryptionRecord) -> TlsEvent<'a> {
    let cert = record.server_cert.as_ref();
    let version = record
        .server_leg
        .version
        .as_deref()
        .or(record.client_leg.version.as_deref());
    let tls = EveTls {
        subject: cert.map(|c| c.subject.as_str()),
        issuerdn: cert.map(|c| c.issuer.as_str()),
        subjectaltname: cert.map(|c| c.sans.as_slice()).filter(|sans| !sans.is_empty()),
        serial: cert.and_then(|c| suricata_serial(&c.serial)),
        fingerprint: cert.and_then(fingerprint),
        sni: record.sni.as_deref(),
        version: suricata_tls_version(version),
        notbefore: cert.and_then(|c| suricata_cert_date(&c.not_before)),
        notafter: cert.and_then(|c| suricata_cert_date(&c.not_after)),
    };
    TlsEvent {
        header: EveHeader::new(at, flow, "tls", "tls"),
        tls,
        loupe: TlsLoupe {
            session_id: flow.session_id,
            rule: &record.rule,
            action: record.action,
            outcome: record.outcome,
        },
    }
}

fn fingerprint(cert: &CertFact) -> Option<ColonHex<'_>> {
    let sha1 = cert.sha1.as_str();
    (sha1.len() == 40 && sha1.bytes().all(|b| b.is_ascii_hexdigit())).then_some(ColonHex(sha1))
}

/// A negotiated version as BoringSSL names it (`TLSv1.3`) in Suricata's words
/// (`TLS 1.3`); `UNDETERMINED`, Suricata's word, when unknown.
pub fn suricata_tls_version(version: Option<&str>) -> &'static str {
    match version {
        Some("TLSv1.3") => "TLS 1.3",
        Some("TLSv1.2") => "TLS 1.2",
        Some("TLSv1.1") => "TLS 1.1",
        Some("TLSv1" | "TLSv1.0") => "TLSv1",
        Some("SSLv3") => "SSLv3",
        _ => "UNDETERMINED",
    }
}

/// A certificate date from the decryption log (`2024-01-01T00:00:00Z`) as Suricata
/// writes it (`2024-01-01T00:00:00`); `None` when it is not in that shape.
fn suricata_cert_date(rfc3339: &str) -> Option<&str> {
    let date = rfc3339.strip_suffix('Z')?;
    let shape = b"dddd-dd-ddTdd:dd:dd";
    let fits = date.len() == shape.len()
        && date.bytes().zip(shape).all(|(c, &s)| match s {
            b'd' => c.is_ascii_digit(),
            _ => c == s,
        });
    fits.then_some(date)
}

/// The decryption log's serial (the number in lowercase hex, as BoringSSL prints it:
/// whole bytes without leading zero bytes, `-` when negative) as Suricata writes it:
/// the bytes of its DER INTEGER content, two's complement and minimal, uppercase hex
/// separated by `:` (`1001` → `10:01`, `80` → `00:80`, `0` → `00`).
pub fn suricata_serial(hex: &str) -> Option<String> {
    let (negative, digits) = match hex.strip_prefix('-') {
        Some(digits) => (true, digits),
        None => (false, hex),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let padded: Cow<'_, str> = if digits.len() % 2 == 1 {
        Cow::Owned(format!("0{digits}"))
    } else {
        Cow::Borrowed(digits)
    };
    let mut bytes = hex::decode(padded.as_bytes()).ok()?;
    // Minimal magnitude: no leading zero bytes (but keep one byte).
    let zeros = bytes.iter().take_while(|&&b| b == 0).count().min(bytes.len() - 1);
    bytes.drain(..zeros);
    let negative = negative && bytes.iter().any(|&b| b != 0);
    if negative {
        // Two's complement of the magnitude, with a sign byte when the top bit is clear.
        for byte in bytes.iter_mut() {
            *byte = !*byte;
        }
        for byte in bytes.iter_mut().rev() {
            let (sum, carry) = byte.overflowing_add(1);
            *byte = sum;
            if !carry {
                break;
            }
        }
        if bytes[0] & 0x80 == 0 {
            bytes.insert(0, 0xff);
        }
        while bytes.len() > 1 && bytes[0] == 0xff && bytes[1] & 0x80 != 0 {
            bytes.remove(0);
        }
    } else if bytes[0] & 0x80 != 0 {
        bytes.insert(0, 0);
    }
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, byte) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        // Writing to a String cannot fail.
        let _ = write!(out, "{byte:02X}");
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------
// The log file
// ---------------------------------------------------------------------------------------

/// Failure to write the EVE log, with the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum EveLogError {
    #[error("EVE log {}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("EVE log {}: cannot serialize an event: {source}", path.display())]
    Serialize { path: PathBuf, source: serde_json::Error },
}

/// A line buffer kept per thread so that writing an event allocates nothing once warm.
/// One that grew past this (an event with a huge field) is let go after the write.
const SCRATCH_KEEP: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The EVE log: `<log-dir>/eve.json`, one event per line.
///
/// Concurrency (as the decryption log, `tls::record::DecryptionLog`): the file is opened
/// with O_APPEND and every event goes out as one `write_all` of the whole line including
/// its `\n`, i.e. one write(2) on a regular file. With O_APPEND the kernel moves the
/// offset to the end and writes the bytes as one step (POSIX: no other modification
/// between the two; Linux holds the inode lock for the write), so lines from several
/// writers — threads sharing this value, each worker holding its own `EveLog`, or another
/// process — never interleave or overwrite each other. A short write happens on a regular
/// file only when the write partly fails (disk full, file size limit); `write_all` then
/// reports the error. (Not promised on NFS, which emulates O_APPEND.)
///
/// Bounds: events go straight to the file, nothing is queued in memory; the line is
/// built in a per-thread buffer that is reused.
///
/// Rotation: logrotate's `copytruncate` is safe as is (with O_APPEND the next write lands
/// at the new end of the truncated file). For renaming rotation, call [`EveLog::reopen`]
/// when told to (a signal, a control request) or when [`EveLog::renamed_away`] finds
/// the file renamed (the daemon checks every few seconds); it takes `&self` and swaps
/// the descriptor atomically, so one log shared by all workers is reopened once for all
/// of them. Until then the log goes on appending to the
/// renamed file, so nothing is lost.
#[derive(Debug)]
pub struct EveLog {
    path: PathBuf,
    file: File,
}

impl EveLog {
    pub const FILE_NAME: &'static str = "eve.json";

    /// Opens (creating the directory and the file when missing) `<log_dir>/eve.json` for
    /// appending.
    pub fn open(log_dir: &Path) -> Result<Self, EveLogError> {
        std::fs::create_dir_all(log_dir).map_err(|source| EveLogError::Io {
            path: log_dir.to_path_buf(),
            what: "cannot create the log directory",
            source,
        })?;
        let path = log_dir.join(Self::FILE_NAME);
        let file = Self::open_file(&path)?;
        Ok(EveLog { path, file })
    }

    fn open_file(path: &Path) -> Result<File, EveLogError> {
        OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|source| EveLogError::Io {
                path: path.to_path_buf(),
                what: "cannot open for appending",
                source,
            })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the path again (creating it when the old file was renamed away) and writes
    /// there from now on. When the open fails the old file stays in use.
    ///
    /// `&self`, so a log shared by the workers (`Arc<EveLog>`) is reopened in place
    /// without a lock on the write path: dup2(2) makes the descriptor this log writes
    /// through refer to the new file in one atomic step, so a write running on another
    /// thread lands whole in the old file or whole in the new one.
    pub fn reopen(&self) -> Result<(), EveLogError> {
        let new = Self::open_file(&self.path)?;
        crate::reopen::replace_open_file(&self.file, new).map_err(|source| EveLogError::Io {
            path: self.path.clone(),
            what: "cannot reopen",
            source,
        })
    }

    /// Whether log rotation renamed (or removed) the file this log writes to.
    pub fn renamed_away(&self) -> bool {
        crate::reopen::renamed_away(&self.file, &self.path)
    }

    /// Appends `lines` (whole JSON lines, each ended by `\n`) with one write: a worker
    /// batches a service round's events so that a transaction costs no system call.
    pub fn write_lines(&self, lines: &[u8]) -> Result<(), EveLogError> {
        (&self.file).write_all(lines).map_err(|source| EveLogError::Io {
            path: self.path.clone(),
            what: "cannot write",
            source,
        })
    }

    /// Appends `event` as one line. `&self`: writes through a shared reference are fine,
    /// each is a single append (see the type's documentation).
    pub fn write<E: Serialize + ?Sized>(&self, event: &E) -> Result<(), EveLogError> {
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut line) => {
                let result = self.write_with(&mut line, event);
                if line.capacity() > SCRATCH_KEEP {
                    *line = Vec::new();
                }
                result
            }
            // Only when an event's serialization writes to the log itself.
            Err(_) => self.write_with(&mut Vec::new(), event),
        })
    }

    fn write_with<E: Serialize + ?Sized>(&self, line: &mut Vec<u8>, event: &E) -> Result<(), EveLogError> {
        line.clear();
        serde_json::to_writer(&mut *line, event).map_err(|source| EveLogError::Serialize {
            path: self.path.clone(),
            source,
        })?;
        line.push(b'\n');
        (&self.file).write_all(line).map_err(|source| EveLogError::Io {
            path: self.path.clone(),
            what: "cannot write",
            source,
        })
    }
}

mod line;

#[cfg(test)]
mod tests;
