//! One rule's text to a [`Rule`]: `action proto src sport -> dst dport (options;)`, with
//! Suricata's escaping (`\;`, `\"`, `\\` in values; `|41 42|` hex in contents), sticky
//! buffers and the legacy content modifiers, and errors that name the keyword at fault.

use std::collections::HashMap;
use std::fmt;

use super::network::{AddressSet, PortSet};
use super::rule::{
    Action, Buffer, BufferDetection, Content, Detection, Direction, FlowCondition, Flowbit, Pcre, Protocol, Rate, Rule,
    RuleMeta, SizeCheck, ThresholdKind, Track, Transform, Transforms,
};

/// The longest content or pcre a rule may hold: beyond it a rule is a mistake or an attack
/// on the prefilter, not detection content.
const MAX_PATTERN_BYTES: usize = 4096;

/// Why a rule was not loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// The keyword at fault, when one is (`None`: the header or the rule's shape).
    pub keyword: Option<String>,
    pub reason: String,
    /// Whether the rule is valid Suricata that loupe does not run (reported as
    /// unsupported), rather than a mistake.
    pub unsupported: bool,
    /// The sid, when the rule got far enough to say it.
    pub sid: Option<u32>,
}

impl RuleError {
    fn syntax(keyword: Option<&str>, reason: impl Into<String>) -> RuleError {
        RuleError {
            keyword: keyword.map(str::to_string),
            reason: reason.into(),
            unsupported: false,
            sid: None,
        }
    }

    fn unsupported(keyword: &str, reason: impl Into<String>) -> RuleError {
        RuleError {
            keyword: Some(keyword.to_string()),
            reason: reason.into(),
            unsupported: true,
            sid: None,
        }
    }
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(sid) = self.sid {
            write!(f, "sid {sid}: ")?;
        }
        if self.unsupported {
            f.write_str("unsupported: ")?;
        }
        match &self.keyword {
            Some(keyword) => write!(f, "{keyword}: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

impl std::error::Error for RuleError {}

/// Parses one rule (comments and continuation lines already removed).
pub fn parse_rule(text: &str, vars: &HashMap<String, String>) -> Result<Rule, RuleError> {
    let text = text.trim();
    let open = text
        .find('(')
        .ok_or_else(|| RuleError::syntax(None, "no '(' opens the rule's options"))?;
    let options_text = text[open + 1..]
        .trim_end()
        .strip_suffix(')')
        .ok_or_else(|| RuleError::syntax(None, "the rule's options must end with ')'"))?;
    let options = split_options(options_text)?;
    // The sid first, so that every later error can name it.
    let sid = options
        .iter()
        .find(|o| o.name == "sid")
        .map(|o| parse_number::<u32>("sid", o.value.unwrap_or("")))
        .transpose()?;
    let with_sid = |mut e: RuleError| {
        e.sid = sid;
        e
    };
    let header = parse_header(&text[..open], vars).map_err(with_sid)?;
    let mut builder = Builder::new(header);
    for option in &options {
        builder.option(option).map_err(with_sid)?;
    }
    builder.finish().map_err(with_sid)
}

struct Header {
    action: Action,
    protocol: Protocol,
    source: AddressSet,
    source_ports: PortSet,
    destination: AddressSet,
    destination_ports: PortSet,
    bidirectional: bool,
}

fn parse_header(text: &str, vars: &HashMap<String, String>) -> Result<Header, RuleError> {
    let fields = split_header(text);
    let [action, protocol, source, source_ports, arrow, destination, destination_ports] = fields.as_slice() else {
        return Err(RuleError::syntax(
            None,
            format!(
                "the header must be 'action proto src sport -> dst dport', got {} fields in '{}'",
                fields.len(),
                text.trim()
            ),
        ));
    };
    let action = match *action {
        "alert" => Action::Alert,
        "drop" => Action::Drop,
        "pass" => Action::Pass,
        "reject" | "rejectsrc" | "rejectdst" | "rejectboth" => {
            return Err(RuleError::unsupported(
                action,
                "loupe's actions are alert, drop and pass (drop resets both ways)",
            ))
        }
        other => {
            return Err(RuleError::syntax(
                None,
                format!("unknown action '{other}' (alert, drop, pass)"),
            ))
        }
    };
    let protocol = match *protocol {
        "http" | "http1" | "http2" => Protocol::Http,
        "tls" => Protocol::Tls,
        "tcp" | "tcp-stream" | "tcp-pkt" => Protocol::Tcp,
        other => {
            return Err(RuleError::unsupported(
                other,
                "loupe inspects decrypted TLS: protocols http, tls and tcp",
            ))
        }
    };
    let bidirectional = match *arrow {
        "->" => false,
        "<>" => true,
        "<-" => {
            return Err(RuleError::syntax(
                None,
                "'<-' is not a direction: write the rule with '->'",
            ))
        }
        other => {
            return Err(RuleError::syntax(
                None,
                format!("'{other}' is not a direction ('->' or '<>')"),
            ))
        }
    };
    let address = |text: &str, what: &str| {
        AddressSet::parse(text, vars).map_err(|e| RuleError::syntax(None, format!("{what}: {e}")))
    };
    let ports = |text: &str, what: &str| {
        PortSet::parse(text, vars).map_err(|e| RuleError::syntax(None, format!("{what}: {e}")))
    };
    Ok(Header {
        action,
        protocol,
        source: address(source, "source address")?,
        source_ports: ports(source_ports, "source port")?,
        destination: address(destination, "destination address")?,
        destination_ports: ports(destination_ports, "destination port")?,
        bidirectional,
    })
}

/// Splits the header at whitespace outside brackets (`[1.2.3.4, 5.6.7.8]` is one field).
fn split_header(text: &str) -> Vec<&str> {
    let mut fields = Vec::new();
    let (mut depth, mut start) = (0usize, None);
    for (i, c) in text.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            c if c.is_whitespace() && depth == 0 => {
                if let Some(s) = start.take() {
                    fields.push(&text[s..i]);
                }
                continue;
            }
            _ => {}
        }
        start.get_or_insert(i);
    }
    if let Some(s) = start {
        fields.push(&text[s..]);
    }
    fields
}

/// One `name[:value]` option, the value trimmed and still escaped.
#[derive(Debug)]
struct RuleOption<'a> {
    name: &'a str,
    value: Option<&'a str>,
}

/// Splits at each `;` not escaped by a backslash (Suricata requires `\;` inside values,
/// quoted or not).
fn split_options(text: &str) -> Result<Vec<RuleOption<'_>>, RuleError> {
    let mut options = Vec::new();
    let bytes = text.as_bytes();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b';' => {
                push_option(&text[start..i], &mut options)?;
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    if !text[start.min(text.len())..].trim().is_empty() {
        return Err(RuleError::syntax(
            None,
            format!("the last option '{}' does not end with ';'", text[start..].trim()),
        ));
    }
    Ok(options)
}

fn push_option<'a>(text: &'a str, options: &mut Vec<RuleOption<'a>>) -> Result<(), RuleError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(());
    }
    let (name, value) = match text.split_once(':') {
        Some((name, value)) => (name.trim(), Some(value.trim())),
        None => (text, None),
    };
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return Err(RuleError::syntax(None, format!("'{name}' is not a keyword")));
    }
    options.push(RuleOption { name, value });
    Ok(())
}

/// The text between a value's double quotes.
fn quoted<'a>(keyword: &str, value: &'a str) -> Result<&'a str, RuleError> {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .filter(|_| value.len() >= 2)
        .ok_or_else(|| RuleError::syntax(Some(keyword), format!("the value must be quoted, got {value}")))
}

/// A quoted text value (`msg`) without its quotes, `\"`, `\;`, `\\`, `\:` and `\|`
/// unescaped; any other backslash is kept with the character after it, as people write
/// `(\xa4)` in a message.
fn unquote(keyword: &str, value: &str) -> Result<String, RuleError> {
    let inner = quoted(keyword, value)?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('"' | ';' | '\\' | ':' | '|')) => out.push(e),
                Some(e) => {
                    out.push('\\');
                    out.push(e);
                }
                None => return Err(RuleError::syntax(Some(keyword), "a value ends with '\\'")),
            },
            '"' => {
                return Err(RuleError::syntax(
                    Some(keyword),
                    "a '\"' inside the value must be escaped as \\\"",
                ))
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// A content's value: `"text|48 49|text"`, escapes allowed in the text parts.
fn content_bytes(keyword: &str, value: &str) -> Result<Vec<u8>, RuleError> {
    let inner = quoted(keyword, value)?;
    let mut out = Vec::with_capacity(inner.len());
    let bytes = inner.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'|' => {
                let end = inner[i + 1..]
                    .find('|')
                    .map(|e| i + 1 + e)
                    .ok_or_else(|| RuleError::syntax(Some(keyword), "a '|' opens hex bytes that no '|' closes"))?;
                let hex: Vec<u8> = inner[i + 1..end].bytes().filter(|b| !b.is_ascii_whitespace()).collect();
                if !hex.len().is_multiple_of(2) {
                    return Err(RuleError::syntax(
                        Some(keyword),
                        format!("'|{}|' holds an odd number of hex digits", &inner[i + 1..end]),
                    ));
                }
                for pair in hex.chunks(2) {
                    let digits = std::str::from_utf8(pair).unwrap_or("");
                    let byte = u8::from_str_radix(digits, 16).map_err(|_| {
                        RuleError::syntax(
                            Some(keyword),
                            format!("'{digits}' in '|{}|' is not a hex byte", &inner[i + 1..end]),
                        )
                    })?;
                    out.push(byte);
                }
                i = end + 1;
            }
            b'\\' => {
                match bytes.get(i + 1) {
                    Some(&e @ (b'"' | b';' | b'\\' | b':' | b'|')) => out.push(e),
                    Some(&e) => {
                        return Err(RuleError::syntax(
                            Some(keyword),
                            format!("'\\{}' is not an escape (only \\\", \\;, \\\\, \\: and \\|)", e as char),
                        ))
                    }
                    None => return Err(RuleError::syntax(Some(keyword), "a value ends with '\\'")),
                }
                i += 2;
            }
            b'"' => {
                return Err(RuleError::syntax(
                    Some(keyword),
                    "a '\"' inside the value must be escaped as \\\"",
                ))
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    if out.is_empty() {
        return Err(RuleError::syntax(Some(keyword), "an empty pattern matches nothing"));
    }
    if out.len() > MAX_PATTERN_BYTES {
        return Err(RuleError::syntax(
            Some(keyword),
            format!("{} bytes: patterns are limited to {MAX_PATTERN_BYTES}", out.len()),
        ));
    }
    Ok(out)
}

/// A `depth` or `within` must leave room for the whole content.
fn window_holds_content(keyword: &str, window: u32, content: &Content) -> Result<(), RuleError> {
    if (window as usize) < content.pattern.len() {
        return Err(RuleError::syntax(
            Some(keyword),
            format!("{window} is shorter than the content ({} bytes)", content.pattern.len()),
        ));
    }
    Ok(())
}

fn parse_number<T: std::str::FromStr>(keyword: &str, value: &str) -> Result<T, RuleError> {
    value
        .trim()
        .parse::<T>()
        .map_err(|_| RuleError::syntax(Some(keyword), format!("'{}' is not a number in range", value.trim())))
}

fn parse_size_check(keyword: &str, value: &str) -> Result<SizeCheck, RuleError> {
    let value = value.trim();
    let number = |text: &str| parse_number::<u64>(keyword, text);
    if let Some((low, high)) = value.split_once("<>") {
        let (low, high) = (number(low)?, number(high)?);
        if low >= high {
            return Err(RuleError::syntax(
                Some(keyword),
                format!("'{value}': the range's start must be below its end"),
            ));
        }
        return Ok(SizeCheck::Between(low, high));
    }
    Ok(if let Some(n) = value.strip_prefix("<=") {
        SizeCheck::LessOrEqual(number(n)?)
    } else if let Some(n) = value.strip_prefix(">=") {
        SizeCheck::GreaterOrEqual(number(n)?)
    } else if let Some(n) = value.strip_prefix('<') {
        SizeCheck::Less(number(n)?)
    } else if let Some(n) = value.strip_prefix('>') {
        SizeCheck::Greater(number(n)?)
    } else if let Some(n) = value.strip_prefix('=') {
        SizeCheck::Equal(number(n)?)
    } else {
        SizeCheck::Equal(number(value)?)
    })
}

/// Keywords Suricata has and loupe does not run, with why: reported, never ignored.
fn unsupported_reason(keyword: &str) -> Option<&'static str> {
    Some(match keyword {
        "byte_test" | "byte_jump" | "byte_extract" | "byte_math" | "entropy" => {
            "byte arithmetic is not in loupe's subset"
        }
        "base64_decode" | "base64_data" => "base64 decoding is not in loupe's subset",
        "url_decode"
        | "xor"
        | "to_md5"
        | "to_sha1"
        | "to_sha256"
        | "pcrexform"
        | "header_lowercase"
        | "strip_pseudo_headers"
        | "from_base64" => "buffer transforms are not in loupe's subset",
        "xbits"
        | "hostbits"
        | "ipv4.hdr"
        | "ipv6.hdr"
        | "tcp.hdr"
        | "ttl"
        | "tos"
        | "ipopts"
        | "fragbits"
        | "fragoffset"
        | "id"
        | "flags"
        | "seq"
        | "ack"
        | "window"
        | "icode"
        | "itype"
        | "icmp_id"
        | "icmp_seq"
        | "sameip"
        | "ip_proto"
        | "dsize"
        | "stream_size"
        | "flowint"
        | "flow.age"
        | "flow.pkts"
        | "flow.bytes"
        | "tag"
        | "geoip"
        | "iprep"
        | "datarep"
        | "dataset"
        | "lua"
        | "luajit"
        | "filestore"
        | "filemagic"
        | "filename"
        | "fileext"
        | "filesize"
        | "filemd5"
        | "filesha1"
        | "filesha256"
        | "app-layer-event"
        | "app-layer-protocol"
        | "tls.cert_subject"
        | "tls.cert_issuer"
        | "tls.cert_serial"
        | "tls.cert_fingerprint"
        | "tls.certs"
        | "tls.version"
        | "ja3.hash"
        | "ja3.string"
        | "ja3s.hash"
        | "ja4.hash"
        | "ja3_hash"
        | "ja3_string"
        | "ja3s_hash"
        | "ja3s_string"
        | "ja3s.string"
        | "tls_cert_subject"
        | "tls_cert_issuer"
        | "tls_cert_serial"
        | "tls_cert_fingerprint"
        | "tls_cert_notbefore"
        | "tls_cert_notafter"
        | "tls_cert_expired"
        | "tls_cert_valid"
        | "tls.store"
        | "http2.frametype"
        | "http2.errorcode"
        | "http2.priority"
        | "http2.window"
        | "http2.settings"
        | "http2.header_name"
        | "http2.header"
        | "replace" => "not in loupe's subset",
        _ => return None,
    })
}

/// Collects a rule's options in order, tracking the sticky buffer and the last
/// content for its modifiers.
struct Builder {
    header: Header,
    meta: RuleMeta,
    flow: FlowCondition,
    detections: Vec<BufferDetection>,
    flowbits: Vec<Flowbit>,
    threshold: Option<Rate>,
    detection_filter: Option<Rate>,
    /// The buffer later detections go to (the last sticky buffer), and the transforms
    /// given after it.
    sticky: Buffer,
    transforms: Transforms,
    /// Whether a `msg` was given (an empty one counts, so this is not `msg.is_empty()`).
    has_msg: bool,
}

impl Builder {
    fn new(header: Header) -> Builder {
        Builder {
            header,
            meta: RuleMeta {
                gid: 1,
                ..RuleMeta::default()
            },
            flow: FlowCondition::default(),
            detections: Vec::new(),
            flowbits: Vec::new(),
            threshold: None,
            detection_filter: None,
            sticky: Buffer::Payload,
            transforms: Transforms::new(),
            has_msg: false,
        }
    }

    fn value<'a>(keyword: &str, option: &RuleOption<'a>) -> Result<&'a str, RuleError> {
        option
            .value
            .filter(|v| !v.is_empty())
            .ok_or_else(|| RuleError::syntax(Some(keyword), "needs a value"))
    }

    fn no_value(keyword: &str, option: &RuleOption<'_>) -> Result<(), RuleError> {
        match option.value {
            None => Ok(()),
            Some(v) => Err(RuleError::syntax(Some(keyword), format!("takes no value, got '{v}'"))),
        }
    }

    /// The last content (the one a modifier applies to), wherever later size or position
    /// checks were put.
    fn last_content(&mut self, keyword: &str) -> Result<&mut Content, RuleError> {
        self.detections
            .iter_mut()
            .rev()
            .find_map(|d| match &mut d.detection {
                Detection::Content(content) => Some(content),
                _ => None,
            })
            .ok_or_else(|| RuleError::syntax(Some(keyword), "modifies a content, and no content comes before it"))
    }

    /// Adds a detection on `buffer`, with the sticky buffer's transforms when it is that
    /// buffer.
    fn push(&mut self, buffer: Buffer, detection: Detection) {
        let transforms = if buffer == self.sticky {
            self.transforms.clone()
        } else {
            Transforms::new()
        };
        self.detections.push(BufferDetection {
            buffer,
            transforms,
            detection,
        });
    }

    /// A legacy modifier (`http_uri`) moves the last content into its buffer.
    fn move_last_content(&mut self, keyword: &str, buffer: Buffer) -> Result<(), RuleError> {
        let last = self
            .detections
            .iter_mut()
            .rev()
            .find(|d| matches!(d.detection, Detection::Content(_)))
            .ok_or_else(|| RuleError::syntax(Some(keyword), "modifies a content, and no content comes before it"))?;
        if last.buffer != Buffer::Payload && last.buffer != buffer {
            return Err(RuleError::syntax(
                Some(keyword),
                format!("the content is already in {}", last.buffer.name()),
            ));
        }
        last.buffer = buffer;
        last.transforms = Transforms::new();
        Ok(())
    }

    fn option(&mut self, option: &RuleOption<'_>) -> Result<(), RuleError> {
        let keyword = option.name;
        if let Some(buffer) = sticky_buffer(keyword) {
            Self::no_value(keyword, option)?;
            self.sticky = buffer;
            self.transforms.clear();
            return Ok(());
        }
        if let Some(transform) = Transform::from_keyword(keyword) {
            Self::no_value(keyword, option)?;
            if self.sticky == Buffer::Payload {
                return Err(RuleError::syntax(
                    Some(keyword),
                    "transforms a sticky buffer, and none comes before it",
                ));
            }
            if self.transforms.len() == self.transforms.inline_size() {
                return Err(RuleError::unsupported(
                    keyword,
                    format!("more than {} transforms on one buffer", self.transforms.inline_size()),
                ));
            }
            self.transforms.push(transform);
            return Ok(());
        }
        if let Some(buffer) = legacy_modifier(keyword) {
            Self::no_value(keyword, option)?;
            return self.move_last_content(keyword, buffer);
        }
        match keyword {
            "msg" => {
                self.meta.msg = unquote(keyword, Self::value(keyword, option)?)?;
                self.has_msg = true;
            }
            "sid" => {
                self.meta.sid = parse_number(keyword, Self::value(keyword, option)?)?;
                if self.meta.sid == 0 {
                    return Err(RuleError::syntax(Some(keyword), "must be 1 or more"));
                }
            }
            "rev" => self.meta.rev = parse_number(keyword, Self::value(keyword, option)?)?,
            "gid" => self.meta.gid = parse_number(keyword, Self::value(keyword, option)?)?,
            "classtype" => {
                let value = Self::value(keyword, option)?;
                if !value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) {
                    return Err(RuleError::syntax(
                        Some(keyword),
                        format!("'{value}' is not a classification name"),
                    ));
                }
                self.meta.classtype = Some(value.to_string());
            }
            "priority" => {
                let priority: u8 = parse_number(keyword, Self::value(keyword, option)?)?;
                if !(1..=255).contains(&priority) {
                    return Err(RuleError::syntax(Some(keyword), "must be 1 to 255"));
                }
                self.meta.priority = Some(priority);
            }
            "reference" => self.meta.references.push(Self::value(keyword, option)?.to_string()),
            "metadata" => self.meta.metadata.extend(
                Self::value(keyword, option)?
                    .split(',')
                    .map(|m| m.trim().to_string())
                    .filter(|m| !m.is_empty()),
            ),
            "target" | "rawbytes" => {}
            "noalert" => {
                Self::no_value(keyword, option)?;
                self.flowbits.push(Flowbit::NoAlert);
            }
            "flow" => self.flow(Self::value(keyword, option)?)?,
            "content" | "uricontent" => {
                let value = Self::value(keyword, option)?;
                let (negated, value) = match value.strip_prefix('!') {
                    Some(rest) => (true, rest.trim_start()),
                    None => (false, value),
                };
                let content = Content::new(content_bytes(keyword, value)?, negated);
                // `uricontent` is the oldest spelling of `content` with `http_uri`.
                let buffer = if keyword == "uricontent" {
                    Buffer::HttpUri
                } else {
                    self.sticky
                };
                self.push(buffer, Detection::Content(content));
            }
            "nocase" => {
                Self::no_value(keyword, option)?;
                self.last_content(keyword)?.nocase = true;
            }
            "offset" | "depth" => {
                let n: u32 = parse_number(keyword, Self::value(keyword, option)?)?;
                let content = self.last_content(keyword)?;
                if content.is_relative() || content.startswith {
                    return Err(RuleError::syntax(
                        Some(keyword),
                        "cannot be combined with distance, within or startswith",
                    ));
                }
                if keyword == "offset" {
                    content.offset = Some(n);
                } else {
                    window_holds_content(keyword, n, content)?;
                    content.depth = Some(n);
                }
            }
            "distance" | "within" => {
                let value = Self::value(keyword, option)?;
                // A first match in its buffer is placed relative to the buffer's start.
                let content = self.last_content(keyword)?;
                if content.offset.is_some() || content.depth.is_some() || content.startswith {
                    return Err(RuleError::syntax(
                        Some(keyword),
                        "cannot be combined with offset, depth or startswith",
                    ));
                }
                if keyword == "distance" {
                    content.distance = Some(parse_number(keyword, value)?);
                } else {
                    let n: u32 = parse_number(keyword, value)?;
                    window_holds_content(keyword, n, content)?;
                    content.within = Some(n);
                }
            }
            "startswith" => {
                Self::no_value(keyword, option)?;
                let content = self.last_content(keyword)?;
                if content.is_relative() || content.offset.is_some() || content.depth.is_some() {
                    return Err(RuleError::syntax(
                        Some(keyword),
                        "cannot be combined with offset, depth, distance or within",
                    ));
                }
                content.startswith = true;
            }
            "endswith" => {
                Self::no_value(keyword, option)?;
                self.last_content(keyword)?.endswith = true;
            }
            "fast_pattern" => {
                // `fast_pattern:only` and `fast_pattern:offset,length` narrow what the
                // prefilter looks at; the whole content is always confirmed, so both
                // read as plain fast_pattern.
                self.last_content(keyword)?.fast_pattern = true;
            }
            "pcre" => {
                let (buffer, pcre) = parse_pcre(Self::value(keyword, option)?, self.sticky)?;
                self.push(buffer, Detection::Pcre(pcre));
            }
            "bsize" => {
                let check = parse_size_check(keyword, Self::value(keyword, option)?)?;
                self.push(self.sticky, Detection::Size(check));
            }
            "urilen" => {
                let value = Self::value(keyword, option)?;
                let (range, kind) = match value.split_once(',') {
                    Some((range, kind)) => (range, kind.trim()),
                    None => (value, "norm"),
                };
                let buffer = match kind {
                    "norm" => Buffer::HttpUri,
                    "raw" => Buffer::HttpUriRaw,
                    other => {
                        return Err(RuleError::syntax(
                            Some(keyword),
                            format!("'{other}' is neither norm nor raw"),
                        ))
                    }
                };
                let check = parse_size_check(keyword, range)?;
                self.push(buffer, Detection::Size(check));
            }
            "isdataat" => {
                let value = Self::value(keyword, option)?;
                let (negated, value) = match value.strip_prefix('!') {
                    Some(rest) => (true, rest),
                    None => (false, value),
                };
                let mut parts = value.split(',').map(str::trim);
                let position = parse_number(keyword, parts.next().unwrap_or(""))?;
                let relative = match parts.next() {
                    None => false,
                    Some("relative") => true,
                    Some("rawbytes") => false,
                    Some(other) => {
                        return Err(RuleError::syntax(Some(keyword), format!("'{other}' is not 'relative'")))
                    }
                };
                let buffer = match (relative, self.detections.last()) {
                    (true, Some(last)) => last.buffer,
                    (true, None) => {
                        return Err(RuleError::syntax(
                            Some(keyword),
                            "is relative, and no match comes before it",
                        ))
                    }
                    (false, _) => self.sticky,
                };
                self.push(
                    buffer,
                    Detection::DataAt {
                        position,
                        relative,
                        negated,
                    },
                );
            }
            "flowbits" => self.flowbits.push(parse_flowbit(Self::value(keyword, option)?)?),
            "threshold" => {
                if self.threshold.is_some() {
                    return Err(RuleError::syntax(Some(keyword), "given twice"));
                }
                self.threshold = Some(parse_rate(keyword, Self::value(keyword, option)?, true)?);
            }
            "detection_filter" => {
                if self.detection_filter.is_some() {
                    return Err(RuleError::syntax(Some(keyword), "given twice"));
                }
                self.detection_filter = Some(parse_rate(keyword, Self::value(keyword, option)?, false)?);
            }
            other => {
                return Err(match unsupported_reason(other) {
                    Some(reason) => RuleError::unsupported(other, reason),
                    None => RuleError::syntax(Some(other), "unknown keyword"),
                })
            }
        }
        Ok(())
    }

    fn flow(&mut self, value: &str) -> Result<(), RuleError> {
        for part in value.split(',').map(str::trim) {
            let direction = match part {
                "established" => {
                    self.flow.established = true;
                    None
                }
                "to_server" | "from_client" => Some(Direction::ToServer),
                "to_client" | "from_server" => Some(Direction::ToClient),
                // Everything loupe inspects is a reassembled stream of an established flow.
                "only_stream" | "no_frag" => None,
                "not_established" | "stateless" | "no_stream" | "only_frag" => {
                    return Err(RuleError::unsupported(
                        "flow",
                        format!("'{part}': loupe inspects reassembled streams of established flows"),
                    ))
                }
                other => return Err(RuleError::syntax(Some("flow"), format!("unknown option '{other}'"))),
            };
            if let Some(direction) = direction {
                if self.flow.direction.is_some_and(|d| d != direction) {
                    return Err(RuleError::syntax(Some("flow"), "names both directions"));
                }
                self.flow.direction = Some(direction);
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<Rule, RuleError> {
        // sid 0 is refused where it is parsed, so 0 here means no sid was given.
        if self.meta.sid == 0 {
            return Err(RuleError::syntax(Some("sid"), "every rule needs a sid"));
        }
        if !self.has_msg {
            return Err(RuleError::syntax(Some("msg"), "every rule needs a msg"));
        }
        let protocol = self.header.protocol;
        for d in &self.detections {
            if protocol == Protocol::Tls && d.buffer.is_http() {
                return Err(RuleError::syntax(
                    Some(d.buffer.name()),
                    "an HTTP buffer in a tls rule never matches",
                ));
            }
            if protocol == Protocol::Http && d.buffer == Buffer::TlsSni {
                return Err(RuleError::syntax(
                    Some("tls.sni"),
                    "a TLS buffer in an http rule never matches",
                ));
            }
            // Suricata normalises http.host to lowercase: an uppercase content there
            // would never match.
            if let (Buffer::HttpHost, Detection::Content(c)) = (d.buffer, &d.detection) {
                if !c.nocase && c.pattern.iter().any(u8::is_ascii_uppercase) {
                    return Err(RuleError::syntax(
                        Some("http.host"),
                        "the buffer is lowercase: write the content lowercase or add nocase",
                    ));
                }
            }
        }
        let protocol = match protocol {
            Protocol::Tcp if self.detections.iter().any(|d| d.buffer.is_http()) => Protocol::Http,
            Protocol::Tcp if self.detections.iter().any(|d| d.buffer == Buffer::TlsSni) => Protocol::Tls,
            p => p,
        };
        Ok(Rule {
            action: self.header.action,
            protocol,
            source: self.header.source,
            source_ports: self.header.source_ports,
            destination: self.header.destination,
            destination_ports: self.header.destination_ports,
            bidirectional: self.header.bidirectional,
            meta: self.meta,
            flow: self.flow,
            detections: self.detections,
            flowbits: self.flowbits,
            threshold: self.threshold,
            detection_filter: self.detection_filter,
        })
    }
}

/// Sticky buffer keywords (`http.uri;` then contents).
fn sticky_buffer(keyword: &str) -> Option<Buffer> {
    Some(match keyword {
        "http.method" => Buffer::HttpMethod,
        "http.uri" => Buffer::HttpUri,
        "http.uri.raw" => Buffer::HttpUriRaw,
        "http.host" => Buffer::HttpHost,
        "http.host.raw" => Buffer::HttpHostRaw,
        "http.user_agent" => Buffer::HttpUserAgent,
        "http.header" => Buffer::HttpHeader,
        "http.header.raw" => Buffer::HttpHeaderRaw,
        "http.header_names" | "http_header_names" => Buffer::HttpHeaderNames,
        "http.cookie" => Buffer::HttpCookie,
        "http.content_type" | "http_content_type" => Buffer::HttpContentType,
        "http.referer" | "http_referer" => Buffer::HttpReferer,
        "http.request_line" | "http_request_line" => Buffer::HttpRequestLine,
        "http.protocol" | "http_protocol" => Buffer::HttpProtocol,
        "http.stat_code" => Buffer::HttpStatCode,
        "http.stat_msg" => Buffer::HttpStatMsg,
        "http.response_line" | "http_response_line" => Buffer::HttpResponseLine,
        "http.server" => Buffer::HttpServer,
        "http.location" => Buffer::HttpLocation,
        "http.content_len" | "http_content_len" => Buffer::HttpContentLen,
        "http.accept" | "http_accept" => Buffer::HttpAccept,
        "http.accept_enc" | "http_accept_enc" => Buffer::HttpAcceptEnc,
        "http.accept_lang" | "http_accept_lang" => Buffer::HttpAcceptLang,
        "http.connection" | "http_connection" => Buffer::HttpConnection,
        "http.start" | "http_start" => Buffer::HttpStart,
        "http.request_body" | "http_client_body_sticky" => Buffer::HttpRequestBody,
        "http.response_body" | "file.data" | "file_data" => Buffer::HttpResponseBody,
        "tls.sni" | "tls_sni" => Buffer::TlsSni,
        "pkt_data" => Buffer::Payload,
        _ => return None,
    })
}

/// Legacy content modifiers (`content:"x"; http_uri;`).
fn legacy_modifier(keyword: &str) -> Option<Buffer> {
    Some(match keyword {
        "http_method" => Buffer::HttpMethod,
        "http_uri" => Buffer::HttpUri,
        "http_raw_uri" => Buffer::HttpUriRaw,
        "http_host" => Buffer::HttpHost,
        "http_raw_host" => Buffer::HttpHostRaw,
        "http_user_agent" => Buffer::HttpUserAgent,
        "http_header" => Buffer::HttpHeader,
        "http_raw_header" => Buffer::HttpHeaderRaw,
        "http_cookie" => Buffer::HttpCookie,
        "http_stat_code" => Buffer::HttpStatCode,
        "http_stat_msg" => Buffer::HttpStatMsg,
        "http_client_body" => Buffer::HttpRequestBody,
        "http_server_body" => Buffer::HttpResponseBody,
        _ => return None,
    })
}

/// `pcre:[!]"/pattern/flags"`: the pattern compiled with PCRE2 (Suricata's engine), the
/// buffer flags (`/U`, `/H`, …) mapped to their buffers.
fn parse_pcre(value: &str, sticky: Buffer) -> Result<(Buffer, Pcre), RuleError> {
    let keyword = "pcre";
    let (negated, value) = match value.strip_prefix('!') {
        Some(rest) => (true, rest.trim_start()),
        None => (false, value),
    };
    let inner = quoted(keyword, value)?;
    let body = inner
        .strip_prefix('/')
        .ok_or_else(|| RuleError::syntax(Some(keyword), "the pattern must start with '/'"))?;
    let close = body
        .rfind('/')
        .ok_or_else(|| RuleError::syntax(Some(keyword), "the pattern must end with '/' and flags"))?;
    let (pattern, flags) = (&body[..close], &body[close + 1..]);
    if pattern.len() > MAX_PATTERN_BYTES {
        return Err(RuleError::syntax(
            Some(keyword),
            format!("{} bytes: patterns are limited to {MAX_PATTERN_BYTES}", pattern.len()),
        ));
    }
    // The rule language escapes '"' and ';' (which PCRE would read as literals anyway).
    let pattern = pattern.replace("\\\"", "\"").replace("\\;", ";");
    let mut builder = pcre2::bytes::RegexBuilder::new();
    builder.jit_if_available(true);
    let (mut relative, mut anchored, mut ungreedy) = (false, false, false);
    let mut buffer: Option<Buffer> = None;
    for flag in flags.chars() {
        let flag_buffer = match flag {
            'i' => {
                builder.caseless(true);
                None
            }
            's' => {
                builder.dotall(true);
                None
            }
            'm' => {
                builder.multi_line(true);
                None
            }
            'x' => {
                builder.extended(true);
                None
            }
            'A' => {
                anchored = true;
                None
            }
            'G' => {
                ungreedy = true;
                None
            }
            'R' => {
                relative = true;
                None
            }
            // Suricata's match-limit override: PCRE2's defaults stay.
            'O' => None,
            'U' => Some(Buffer::HttpUri),
            'I' => Some(Buffer::HttpUriRaw),
            'P' => Some(Buffer::HttpRequestBody),
            'Q' => Some(Buffer::HttpResponseBody),
            'H' => Some(Buffer::HttpHeader),
            'D' => Some(Buffer::HttpHeaderRaw),
            'M' => Some(Buffer::HttpMethod),
            'C' => Some(Buffer::HttpCookie),
            'S' => Some(Buffer::HttpStatCode),
            'Y' => Some(Buffer::HttpStatMsg),
            'V' => Some(Buffer::HttpUserAgent),
            'W' => Some(Buffer::HttpHost),
            'Z' => Some(Buffer::HttpHostRaw),
            'E' | 'B' | 'K' => {
                return Err(RuleError::unsupported(
                    keyword,
                    format!("the /{flag} flag is not in loupe's subset"),
                ))
            }
            other => return Err(RuleError::syntax(Some(keyword), format!("unknown flag '{other}'"))),
        };
        if let Some(b) = flag_buffer {
            if buffer.is_some_and(|existing| existing != b) {
                return Err(RuleError::syntax(Some(keyword), "names two buffers with its flags"));
            }
            buffer = Some(b);
        }
    }
    if let (Some(b), true) = (buffer, sticky != Buffer::Payload) {
        if b != sticky {
            return Err(RuleError::syntax(
                Some(keyword),
                format!(
                    "its /flag names {}, after the sticky buffer {}",
                    b.name(),
                    sticky.name()
                ),
            ));
        }
    }
    let mut source = pattern.clone();
    if ungreedy {
        source = format!("(?U){source}");
    }
    if anchored {
        // \G: at the search's start, which is the buffer's start or, with /R, the
        // previous match's end.
        source = format!("\\G(?:{source})");
    }
    let regex = builder
        .build(&source)
        .map_err(|e| RuleError::syntax(Some(keyword), format!("/{pattern}/ does not compile: {e}")))?;
    Ok((
        buffer.unwrap_or(sticky),
        Pcre {
            source: inner.to_string(),
            regex,
            negated,
            relative,
        },
    ))
}

fn parse_flowbit(value: &str) -> Result<Flowbit, RuleError> {
    let keyword = "flowbits";
    let (command, names) = match value.split_once(',') {
        Some((command, names)) => (command.trim(), Some(names.trim())),
        None => (value.trim(), None),
    };
    let name = |names: Option<&str>| -> Result<String, RuleError> {
        let n = names
            .filter(|n| !n.is_empty())
            .ok_or_else(|| RuleError::syntax(Some(keyword), format!("'{command}' needs a name")))?;
        if n.contains(['|', '&']) {
            return Err(RuleError::syntax(
                Some(keyword),
                format!("'{command}' takes one name, got '{n}'"),
            ));
        }
        Ok(n.to_string())
    };
    let alternatives = |names: Option<&str>| -> Result<Vec<String>, RuleError> {
        let n = names
            .filter(|n| !n.is_empty())
            .ok_or_else(|| RuleError::syntax(Some(keyword), format!("'{command}' needs a name")))?;
        if n.contains('&') {
            return Err(RuleError::unsupported(
                keyword,
                "'&' between names is not in loupe's subset ('|' is)",
            ));
        }
        Ok(n.split('|').map(|n| n.trim().to_string()).collect())
    };
    Ok(match command {
        "set" => Flowbit::Set(name(names)?),
        "unset" => Flowbit::Unset(name(names)?),
        "toggle" => Flowbit::Toggle(name(names)?),
        "isset" => Flowbit::IsSet(alternatives(names)?),
        "isnotset" => Flowbit::IsNotSet(alternatives(names)?),
        "noalert" => Flowbit::NoAlert,
        other => {
            return Err(RuleError::syntax(
                Some(keyword),
                format!("unknown command '{other}' (set, unset, toggle, isset, isnotset, noalert)"),
            ))
        }
    })
}

/// `threshold: type T, track X, count N, seconds S` / `detection_filter: track X, count N,
/// seconds S`.
fn parse_rate(keyword: &str, value: &str, with_type: bool) -> Result<Rate, RuleError> {
    let (mut kind, mut track, mut count, mut seconds) = (None, None, None, None);
    for part in value.split(',').map(str::trim) {
        let (name, argument) = part
            .split_once(char::is_whitespace)
            .ok_or_else(|| RuleError::syntax(Some(keyword), format!("'{part}' is not 'name value'")))?;
        let argument = argument.trim();
        match name {
            "type" if with_type => {
                kind = Some(match argument {
                    "limit" => ThresholdKind::Limit,
                    "threshold" => ThresholdKind::Threshold,
                    "both" => ThresholdKind::Both,
                    other => {
                        return Err(RuleError::syntax(
                            Some(keyword),
                            format!("unknown type '{other}' (limit, threshold, both)"),
                        ))
                    }
                })
            }
            "track" => {
                track = Some(match argument {
                    "by_src" => Track::BySource,
                    "by_dst" => Track::ByDestination,
                    "by_rule" => Track::ByRule,
                    "by_both" => Track::ByBoth,
                    other => {
                        return Err(RuleError::syntax(
                            Some(keyword),
                            format!("unknown track '{other}' (by_src, by_dst, by_rule, by_both)"),
                        ))
                    }
                })
            }
            "count" => count = Some(parse_number::<u32>(keyword, argument)?),
            "seconds" => seconds = Some(parse_number::<u32>(keyword, argument)?),
            other => return Err(RuleError::syntax(Some(keyword), format!("unknown setting '{other}'"))),
        }
    }
    let missing = |what: &str| RuleError::syntax(Some(keyword), format!("needs '{what}'"));
    if with_type && kind.is_none() {
        return Err(missing("type"));
    }
    Ok(Rate {
        kind,
        track: track.ok_or_else(|| missing("track"))?,
        count: count.filter(|&c| c > 0).ok_or_else(|| missing("count (1 or more)"))?,
        seconds: seconds.ok_or_else(|| missing("seconds"))?,
    })
}
