//! A signature as data: what [`super::parse`] builds and [`super::detect`] evaluates.

use super::network::{AddressSet, PortSet};

/// What a match does (Suricata's actions loupe runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Log an `alert` event; the transaction goes on.
    Alert,
    /// End the session (HTTP/2: the stream) and log the alert as `blocked`.
    Drop,
    /// Stop evaluating signatures for the flow.
    Pass,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Alert => "alert",
            Action::Drop => "drop",
            Action::Pass => "pass",
        }
    }
}

/// The application protocol a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.x and HTTP/2 alike, as Suricata's `http`.
    Http,
    /// The TLS handshake (`tls.sni`).
    Tls,
    /// Any decrypted stream (the payload buffer).
    Tcp,
}

/// Which way a flow's data goes (`flow:to_server` / `to_client`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToServer,
    ToClient,
}

/// The inspection buffers a detection reads (Suricata's sticky buffers and the legacy
/// content modifiers that name the same buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Buffer {
    /// The decrypted stream itself (no sticky buffer).
    Payload,
    HttpMethod,
    /// The normalised URI: percent-decoded where safe, dot segments removed.
    HttpUri,
    HttpUriRaw,
    /// The host, lowercased, without the port.
    HttpHost,
    HttpHostRaw,
    HttpUserAgent,
    /// Request (or response) headers as `Name: value\r\n` lines, Cookie excluded.
    HttpHeader,
    HttpHeaderRaw,
    /// `\r\n` then each header name followed by `\r\n`, then a final `\r\n`.
    HttpHeaderNames,
    HttpCookie,
    HttpContentType,
    HttpReferer,
    HttpRequestLine,
    HttpProtocol,
    HttpStatCode,
    HttpStatMsg,
    HttpResponseLine,
    HttpServer,
    HttpLocation,
    HttpContentLen,
    HttpAccept,
    HttpAcceptEnc,
    HttpAcceptLang,
    HttpConnection,
    /// The request or response line and its headers, as sent: `GET / HTTP/1.1\r\n...`.
    HttpStart,
    HttpRequestBody,
    /// The response body after content decoding (`http.response_body`, `file.data`).
    HttpResponseBody,
    TlsSni,
}

impl Buffer {
    /// Suricata's name for the buffer, as `loupectl rules show` and errors print it.
    pub fn name(self) -> &'static str {
        match self {
            Buffer::Payload => "payload",
            Buffer::HttpMethod => "http.method",
            Buffer::HttpUri => "http.uri",
            Buffer::HttpUriRaw => "http.uri.raw",
            Buffer::HttpHost => "http.host",
            Buffer::HttpHostRaw => "http.host.raw",
            Buffer::HttpUserAgent => "http.user_agent",
            Buffer::HttpHeader => "http.header",
            Buffer::HttpHeaderRaw => "http.header.raw",
            Buffer::HttpHeaderNames => "http.header_names",
            Buffer::HttpCookie => "http.cookie",
            Buffer::HttpContentType => "http.content_type",
            Buffer::HttpReferer => "http.referer",
            Buffer::HttpRequestLine => "http.request_line",
            Buffer::HttpProtocol => "http.protocol",
            Buffer::HttpStatCode => "http.stat_code",
            Buffer::HttpStatMsg => "http.stat_msg",
            Buffer::HttpResponseLine => "http.response_line",
            Buffer::HttpServer => "http.server",
            Buffer::HttpLocation => "http.location",
            Buffer::HttpContentLen => "http.content_len",
            Buffer::HttpAccept => "http.accept",
            Buffer::HttpAcceptEnc => "http.accept_enc",
            Buffer::HttpAcceptLang => "http.accept_lang",
            Buffer::HttpConnection => "http.connection",
            Buffer::HttpStart => "http.start",
            Buffer::HttpRequestBody => "http.request_body",
            Buffer::HttpResponseBody => "http.response_body",
            Buffer::TlsSni => "tls.sni",
        }
    }

    /// The direction whose data fills the buffer, `None` when both do (the payload, and
    /// header buffers, which Suricata fills from requests and from responses).
    pub fn direction(self) -> Option<Direction> {
        match self {
            Buffer::Payload
            | Buffer::HttpHeader
            | Buffer::HttpHeaderRaw
            | Buffer::HttpHeaderNames
            | Buffer::HttpContentType
            | Buffer::HttpContentLen
            | Buffer::HttpConnection
            | Buffer::HttpStart
            | Buffer::HttpProtocol => None,
            Buffer::HttpStatCode
            | Buffer::HttpStatMsg
            | Buffer::HttpResponseLine
            | Buffer::HttpServer
            | Buffer::HttpLocation
            | Buffer::HttpResponseBody => Some(Direction::ToClient),
            _ => Some(Direction::ToServer),
        }
    }

    /// Whether the buffer holds message content, which may be anything (images,
    /// archives, media: bytes that look random) rather than protocol text.
    pub fn is_content(self) -> bool {
        matches!(
            self,
            Buffer::Payload | Buffer::HttpRequestBody | Buffer::HttpResponseBody
        )
    }

    /// Whether the buffer belongs to HTTP (a `tls` rule cannot use it, and its presence
    /// makes a `tcp` rule an HTTP one).
    pub fn is_http(self) -> bool {
        !matches!(self, Buffer::Payload | Buffer::TlsSni)
    }
}

/// A `content` match and its modifiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    /// The bytes, `|hex|` decoded and escapes removed.
    pub pattern: Vec<u8>,
    pub negated: bool,
    pub nocase: bool,
    /// Absolute window: the match starts at `offset` or later and ends by
    /// `offset + depth`.
    pub offset: Option<u32>,
    pub depth: Option<u32>,
    /// Relative window after the previous match in the same buffer: starts at least
    /// `distance` (may be negative) past its end, and ends within `within` of it.
    pub distance: Option<i32>,
    pub within: Option<u32>,
    /// The match must start the buffer / end it.
    pub startswith: bool,
    pub endswith: bool,
    /// Chosen as the rule's prefilter pattern (`fast_pattern`); otherwise the longest
    /// content is.
    pub fast_pattern: bool,
}

impl Content {
    pub fn new(pattern: Vec<u8>, negated: bool) -> Content {
        Content {
            pattern,
            negated,
            nocase: false,
            offset: None,
            depth: None,
            distance: None,
            within: None,
            startswith: false,
            endswith: false,
            fast_pattern: false,
        }
    }

    /// Whether the match is placed after the previous one in its buffer.
    pub fn is_relative(&self) -> bool {
        self.distance.is_some() || self.within.is_some()
    }
}

/// A `pcre` match: the compiled pattern and the flags that are not PCRE's own.
#[derive(Debug, Clone)]
pub struct Pcre {
    /// As written in the rule, for reports.
    pub source: String,
    pub regex: pcre2::bytes::Regex,
    pub negated: bool,
    /// `/R`: searched from the end of the previous match in the buffer.
    pub relative: bool,
}

/// A size condition (`bsize`, `urilen`): `N`, `<N`, `>N`, `<=N`, `>=N` or `A<>B`
/// (exclusive bounds, as Suricata's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeCheck {
    Equal(u64),
    Less(u64),
    LessOrEqual(u64),
    Greater(u64),
    GreaterOrEqual(u64),
    Between(u64, u64),
}

impl SizeCheck {
    pub fn holds(self, size: u64) -> bool {
        match self {
            SizeCheck::Equal(n) => size == n,
            SizeCheck::Less(n) => size < n,
            SizeCheck::LessOrEqual(n) => size <= n,
            SizeCheck::Greater(n) => size > n,
            SizeCheck::GreaterOrEqual(n) => size >= n,
            SizeCheck::Between(low, high) => size > low && size < high,
        }
    }
}

/// One condition on one buffer, in the order the rule gives it.
#[derive(Debug, Clone)]
pub enum Detection {
    Content(Content),
    Pcre(Pcre),
    /// `bsize`: the buffer's length.
    Size(SizeCheck),
    /// `isdataat:[!]N[,relative]`.
    DataAt {
        position: u32,
        relative: bool,
        negated: bool,
    },
}

/// A transform applied to a sticky buffer before its detections read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transform {
    /// Prepends a `.`, so `.example.com` with `endswith` matches the domain and its
    /// subdomains but not `badexample.com`.
    DotPrefix,
    ToLowercase,
    ToUppercase,
    /// Removes every whitespace byte.
    StripWhitespace,
    /// Turns each run of whitespace into one space.
    CompressWhitespace,
}

impl Transform {
    pub fn from_keyword(keyword: &str) -> Option<Transform> {
        Some(match keyword {
            "dotprefix" => Transform::DotPrefix,
            "to_lowercase" => Transform::ToLowercase,
            "to_uppercase" => Transform::ToUppercase,
            "strip_whitespace" => Transform::StripWhitespace,
            "compress_whitespace" => Transform::CompressWhitespace,
            _ => return None,
        })
    }

    /// The transformed bytes of `input` into `output` (cleared first).
    pub fn apply(self, input: &[u8], output: &mut Vec<u8>) {
        output.clear();
        match self {
            Transform::DotPrefix => {
                output.push(b'.');
                output.extend_from_slice(input);
            }
            Transform::ToLowercase => output.extend(input.iter().map(u8::to_ascii_lowercase)),
            Transform::ToUppercase => output.extend(input.iter().map(u8::to_ascii_uppercase)),
            Transform::StripWhitespace => output.extend(input.iter().filter(|b| !b.is_ascii_whitespace())),
            Transform::CompressWhitespace => {
                for &b in input {
                    if b.is_ascii_whitespace() {
                        if output.last() != Some(&b' ') {
                            output.push(b' ');
                        }
                    } else {
                        output.push(b);
                    }
                }
            }
        }
    }
}

/// A buffer's transforms, in order (rules use one or two).
pub type Transforms = smallvec::SmallVec<[Transform; 2]>;

/// A detection and the buffer it reads.
#[derive(Debug, Clone)]
pub struct BufferDetection {
    pub buffer: Buffer,
    pub transforms: Transforms,
    pub detection: Detection,
}

/// `flow:` conditions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowCondition {
    pub established: bool,
    pub direction: Option<Direction>,
}

/// A `flowbits` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flowbit {
    Set(String),
    Unset(String),
    Toggle(String),
    /// Any of the names is set (`a|b`).
    IsSet(Vec<String>),
    /// None of the names is set.
    IsNotSet(Vec<String>),
    /// The rule sets bits but never alerts.
    NoAlert,
}

/// Whose events a threshold counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Track {
    BySource,
    ByDestination,
    ByRule,
    ByBoth,
}

/// `threshold` types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThresholdKind {
    /// Alert on the first `count` matches per period.
    Limit,
    /// Alert on every `count`-th match.
    Threshold,
    /// Alert once per period, after `count` matches.
    Both,
}

/// `threshold` / `detection_filter`: how many matches in how many seconds make an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// `None` for `detection_filter`: alerts on every match after the first `count`.
    pub kind: Option<ThresholdKind>,
    pub track: Track,
    pub count: u32,
    pub seconds: u32,
}

/// What a rule says about itself; logged with its alerts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleMeta {
    pub msg: String,
    pub gid: u32,
    pub sid: u32,
    pub rev: u32,
    pub classtype: Option<String>,
    pub priority: Option<u8>,
    pub references: Vec<String>,
    pub metadata: Vec<String>,
}

/// One signature.
#[derive(Debug, Clone)]
pub struct Rule {
    pub action: Action,
    pub protocol: Protocol,
    pub source: AddressSet,
    pub source_ports: PortSet,
    pub destination: AddressSet,
    pub destination_ports: PortSet,
    /// `<>`: the header matches either way round.
    pub bidirectional: bool,
    pub meta: RuleMeta,
    pub flow: FlowCondition,
    pub detections: Vec<BufferDetection>,
    pub flowbits: Vec<Flowbit>,
    pub threshold: Option<Rate>,
    pub detection_filter: Option<Rate>,
}

impl Rule {
    /// The content the prefilter looks for: the one marked `fast_pattern`, else the
    /// longest non-negated content. `None`: the rule is evaluated for every transaction.
    pub fn fast_pattern(&self) -> Option<(Buffer, &Content)> {
        // A transformed buffer is not what the prefilter searches.
        let contents = self.detections.iter().filter_map(|d| match &d.detection {
            Detection::Content(content) if !content.negated && d.transforms.is_empty() => Some((d.buffer, content)),
            _ => None,
        });
        let mut best: Option<(Buffer, &Content)> = None;
        for (buffer, content) in contents {
            if content.fast_pattern {
                return Some((buffer, content));
            }
            if best.is_none_or(|(_, b)| content.pattern.len() > b.pattern.len()) {
                best = Some((buffer, content));
            }
        }
        best
    }

    /// The direction the rule's data comes from: its `flow` keyword's, else its buffers'.
    pub fn direction(&self) -> Option<Direction> {
        self.flow
            .direction
            .or_else(|| self.detections.iter().find_map(|d| d.buffer.direction()))
    }
}
