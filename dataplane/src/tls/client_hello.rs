//! Sans-IO reader of the client's first TLS flight: the ClientHello.
//!
//! The appliance must know what a client asks for (server name, versions, suites, ALPN)
//! before it decides to decrypt, splice or block. The bytes come from a TCP stream in
//! whatever chunks the network delivered, and one ClientHello may span several TLS
//! records (post-quantum key shares make 1.5–2 KiB hellos common). [`ClientHelloReader`]
//! buffers the stream, reassembles the handshake message across records and parses it
//! once complete, keeping every raw byte so the caller can replay them to a TLS server
//! or forward them verbatim.
//!
//! Every length read from the wire is checked against what remains and against the
//! configured bounds before anything is allocated or sliced: hostile input yields a
//! [`ClientHelloError`], never a panic and never an allocation beyond the bounds.

use std::fmt;

use super::names::{self, is_grease};

/// Default bound on the ClientHello handshake message (header excluded). Real hellos are
/// under 2 KiB even with a post-quantum key share; 16 KiB (one full record) leaves room
/// for padding and large PSK identities while bounding what a hostile client can pin.
pub const DEFAULT_MAX_HANDSHAKE_LEN: usize = 16 * 1024;

const RECORD_HEADER_LEN: usize = 5;
const HANDSHAKE_HEADER_LEN: usize = 4;
/// Largest plaintext record fragment (RFC 8446 §5.1: 2^14).
const MAX_RECORD_FRAGMENT: usize = 1 << 14;
/// Raw bytes allowed per byte of handshake bound: room for the record headers of a
/// finely fragmented hello and for bytes the client sends after it, yet bounded.
const RAW_BYTES_PER_HANDSHAKE_BYTE: usize = 4;

const CONTENT_CHANGE_CIPHER_SPEC: u8 = 20;
const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_HEARTBEAT: u8 = 24;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;

const EXT_SERVER_NAME: u16 = 0;
const EXT_SUPPORTED_GROUPS: u16 = 10;
const EXT_SIGNATURE_ALGORITHMS: u16 = 13;
const EXT_ALPN: u16 = 16;
const EXT_SESSION_TICKET: u16 = 35;
const EXT_PRE_SHARED_KEY: u16 = 41;
const EXT_EARLY_DATA: u16 = 42;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
const EXT_KEY_SHARE: u16 = 51;
const EXT_ENCRYPTED_CLIENT_HELLO: u16 = 0xfe0d;

const TLS13: u16 = 0x0304;

/// What a ClientHello says, as far as policy, logs and diagnosis need it.
///
/// Every list keeps the client's order and omits GREASE values (RFC 8701);
/// `grease_seen` records whether any were present.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// Version in the header of the first record (usually 0x0301 for compatibility).
    pub record_version: u16,
    /// `legacy_version` of the hello (0x0303 for TLS 1.2 and 1.3 clients).
    pub legacy_version: u16,
    /// From the supported_versions extension; empty when the client sent none.
    pub supported_versions: Vec<u16>,
    pub cipher_suites: Vec<u16>,
    /// From supported_groups.
    pub groups: Vec<u16>,
    pub signature_algorithms: Vec<u16>,
    /// Groups for which the client already sent a key share.
    pub key_share_groups: Vec<u16>,
    /// The host_name of server_name, lowercased, one trailing dot removed.
    pub sni: Option<String>,
    /// ALPN protocol names; bytes outside printable ASCII are written `\xNN`.
    pub alpn: Vec<String>,
    /// A non-empty session_ticket extension: the client tries TLS 1.2 ticket resumption.
    /// (An empty one only says it supports tickets; see `extensions`.)
    pub has_session_ticket: bool,
    /// pre_shared_key present: the client tries TLS 1.3 resumption.
    pub has_psk: bool,
    /// early_data present: 0-RTT data may follow the ClientHello.
    pub has_early_data: bool,
    /// Any GREASE value in suites, groups, versions, key shares, signature algorithms or
    /// extension types.
    pub grease_seen: bool,
    /// Extension types in the order sent, for fingerprints and logs.
    pub extensions: Vec<u16>,
    /// encrypted_client_hello (0xfe0d) present. Real ECH and Chrome's GREASE ECH look
    /// alike from outside: true means the server name may be a decoy.
    pub ech: bool,
}

impl ClientHello {
    /// Highest TLS/SSL version offered: the highest 0x03xx of supported_versions, or
    /// `legacy_version` when the extension is absent (TLS 1.2 and older clients).
    /// Pre-standard TLS 1.3 drafts (0x7fxx) do not count.
    pub fn max_version(&self) -> u16 {
        self.supported_versions
            .iter()
            .copied()
            .filter(|v| v >> 8 == 3)
            .max()
            .unwrap_or(self.legacy_version)
    }

    pub fn offers_tls13(&self) -> bool {
        self.supported_versions.contains(&TLS13)
    }

    /// Parses a ClientHello handshake body (after the 4-byte handshake header).
    fn parse(body: &[u8], record_version: u16) -> Result<Self, ClientHelloError> {
        let mut hello = ClientHello {
            record_version,
            ..ClientHello::default()
        };
        let mut body = Cursor::new(body);
        hello.legacy_version = body.u16("legacy_version")?;
        body.take(32, "random")?;
        let session_id = body.vec8("session_id")?;
        if session_id.len() > 32 {
            return Err(malformed(
                "session_id",
                Malformation::TooLong {
                    len: session_id.len(),
                    max: 32,
                },
            ));
        }
        hello.cipher_suites = u16_list(body.vec16("cipher_suites")?, "cipher_suites", &mut hello.grease_seen)?;
        let compression = body.vec8("compression_methods")?;
        if compression.is_empty() {
            return Err(malformed("compression_methods", Malformation::Empty));
        }
        if !compression.rest().contains(&0) {
            return Err(malformed(
                "compression_methods",
                Malformation::Invalid("lacks the null method every client must offer"),
            ));
        }
        // Clients older than TLS 1.2 may end the hello here, without extensions.
        if body.is_empty() {
            return Ok(hello);
        }
        let extensions = body.vec16("extensions")?;
        body.finish("extensions")?;
        hello.read_extensions(extensions)?;
        Ok(hello)
    }

    fn read_extensions(&mut self, mut extensions: Cursor<'_>) -> Result<(), ClientHelloError> {
        // Every type, GREASE included, to find duplicates once at the end.
        let mut all_types = Vec::with_capacity(extensions.len() / 4);
        while !extensions.is_empty() {
            let ext_type = extensions.u16("extension type")?;
            let data = extensions.vec16(names::extension_name(ext_type).unwrap_or("extension"))?;
            if self.has_psk {
                // RFC 8446 §4.2.11: the binders cover everything before them.
                return Err(malformed("pre_shared_key", Malformation::NotLast));
            }
            all_types.push(ext_type);
            if is_grease(ext_type) {
                self.grease_seen = true;
                continue;
            }
            self.extensions.push(ext_type);
            match ext_type {
                EXT_SERVER_NAME => self.sni = server_name(data)?,
                EXT_SUPPORTED_GROUPS => {
                    let field = "supported_groups";
                    self.groups = u16_list(whole_vec16(data, field)?, field, &mut self.grease_seen)?;
                }
                EXT_SIGNATURE_ALGORITHMS => {
                    let field = "signature_algorithms";
                    self.signature_algorithms = u16_list(whole_vec16(data, field)?, field, &mut self.grease_seen)?;
                }
                EXT_ALPN => self.alpn = alpn(data)?,
                EXT_SUPPORTED_VERSIONS => {
                    let field = "supported_versions";
                    let mut data = data;
                    let list = data.vec8(field)?;
                    data.finish(field)?;
                    self.supported_versions = u16_list(list, field, &mut self.grease_seen)?;
                }
                EXT_KEY_SHARE => {
                    self.key_share_groups = key_share_groups(data, &mut self.grease_seen)?;
                }
                EXT_SESSION_TICKET => self.has_session_ticket = !data.is_empty(),
                EXT_PRE_SHARED_KEY => {
                    check_pre_shared_key(data)?;
                    self.has_psk = true;
                }
                EXT_EARLY_DATA => {
                    // Empty in a ClientHello (RFC 8446 §4.2.10).
                    data.finish("early_data")?;
                    self.has_early_data = true;
                }
                EXT_ENCRYPTED_CLIENT_HELLO => self.ech = true,
                _ => {}
            }
        }
        all_types.sort_unstable();
        let duplicate = all_types.windows(2).find_map(|pair| match *pair {
            [a, b] if a == b => Some(a),
            _ => None,
        });
        if let Some(ext_type) = duplicate {
            return Err(malformed("extensions", Malformation::Duplicate(ext_type)));
        }
        Ok(())
    }
}

fn server_name(mut data: Cursor<'_>) -> Result<Option<String>, ClientHelloError> {
    let field = "server_name";
    let mut list = data.vec16(field)?;
    data.finish(field)?;
    if list.is_empty() {
        return Err(malformed(field, Malformation::Empty));
    }
    let mut host = None;
    while !list.is_empty() {
        let name_type = list.u8(field)?;
        let name = list.vec16(field)?;
        // Only host_name (0) is defined; other types are skipped as RFC 6066 intends.
        if name_type == 0 {
            if host.is_some() {
                return Err(malformed(field, Malformation::Invalid("names more than one host")));
            }
            host = Some(host_name(name.rest())?);
        }
    }
    Ok(host)
}

/// Validates a DNS host name and normalizes it for policy matching: lowercase, without
/// the trailing dot of a fully qualified name. Underscores are accepted because real
/// names carry them and clients send them.
fn host_name(name: &[u8]) -> Result<String, ClientHelloError> {
    let field = "server_name";
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() {
        return Err(malformed(field, Malformation::Empty));
    }
    if name.len() > 253 {
        return Err(malformed(
            field,
            Malformation::TooLong {
                len: name.len(),
                max: 253,
            },
        ));
    }
    for label in name.split(|&b| b == b'.') {
        if label.is_empty() {
            return Err(malformed(
                field,
                Malformation::Invalid("has a host name with an empty label"),
            ));
        }
        if label.len() > 63 {
            return Err(malformed(
                field,
                Malformation::Invalid("has a host name label longer than 63 bytes"),
            ));
        }
        if !label
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(malformed(
                field,
                Malformation::Invalid("has a host name with a character other than letters, digits, '-', '_' and '.'"),
            ));
        }
    }
    Ok(name.iter().map(|&b| char::from(b.to_ascii_lowercase())).collect())
}

fn alpn(mut data: Cursor<'_>) -> Result<Vec<String>, ClientHelloError> {
    let field = "application_layer_protocol_negotiation";
    let mut list = data.vec16(field)?;
    data.finish(field)?;
    if list.is_empty() {
        return Err(malformed(field, Malformation::Empty));
    }
    let mut protocols = Vec::new();
    while !list.is_empty() {
        let protocol = list.vec8(field)?;
        if protocol.is_empty() {
            return Err(malformed(field, Malformation::Invalid("has an empty protocol name")));
        }
        protocols.push(protocol_name(protocol.rest()));
    }
    Ok(protocols)
}

/// Protocol names are opaque bytes; keep them readable in logs without losing bytes.
fn protocol_name(bytes: &[u8]) -> String {
    let mut name = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_graphic() && b != b'\\' {
            name.push(char::from(b));
        } else {
            name.push_str(&format!("\\x{b:02x}"));
        }
    }
    name
}

fn key_share_groups(mut data: Cursor<'_>, grease_seen: &mut bool) -> Result<Vec<u16>, ClientHelloError> {
    let field = "key_share";
    let mut shares = data.vec16(field)?;
    data.finish(field)?;
    // An empty list is legal: the client asks the server to pick (HelloRetryRequest).
    let mut groups = Vec::new();
    while !shares.is_empty() {
        let group = shares.u16(field)?;
        let key_exchange = shares.vec16(field)?;
        if key_exchange.is_empty() {
            return Err(malformed(field, Malformation::Invalid("has an empty key_exchange")));
        }
        if is_grease(group) {
            *grease_seen = true;
        } else {
            groups.push(group);
        }
    }
    Ok(groups)
}

fn check_pre_shared_key(mut data: Cursor<'_>) -> Result<(), ClientHelloError> {
    let field = "pre_shared_key";
    let identities = data.vec16(field)?;
    let binders = data.vec16(field)?;
    data.finish(field)?;
    if identities.is_empty() || binders.is_empty() {
        return Err(malformed(field, Malformation::Empty));
    }
    Ok(())
}

/// A u16-length-prefixed list that must fill the extension exactly.
fn whole_vec16<'a>(mut data: Cursor<'a>, field: &'static str) -> Result<Cursor<'a>, ClientHelloError> {
    let list = data.vec16(field)?;
    data.finish(field)?;
    Ok(list)
}

/// A non-empty list of 16-bit code points, GREASE removed.
fn u16_list(mut list: Cursor<'_>, field: &'static str, grease_seen: &mut bool) -> Result<Vec<u16>, ClientHelloError> {
    if !list.len().is_multiple_of(2) {
        return Err(malformed(field, Malformation::OddLength(list.len())));
    }
    if list.is_empty() {
        return Err(malformed(field, Malformation::Empty));
    }
    let mut values = Vec::with_capacity(list.len() / 2);
    while !list.is_empty() {
        let value = list.u16(field)?;
        if is_grease(value) {
            *grease_seen = true;
        } else {
            values.push(value);
        }
    }
    Ok(values)
}

/// Checked reads over a byte slice: every read that would pass the end is an error.
#[derive(Clone, Copy)]
struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn len(&self) -> usize {
        self.bytes.len()
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn rest(&self) -> &'a [u8] {
        self.bytes
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], ClientHelloError> {
        let Some((head, tail)) = self.bytes.split_at_checked(n) else {
            return Err(malformed(
                field,
                Malformation::Truncated {
                    needed: n,
                    remaining: self.bytes.len(),
                },
            ));
        };
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, ClientHelloError> {
        let (&byte, tail) = self.bytes.split_first().ok_or(malformed(
            field,
            Malformation::Truncated {
                needed: 1,
                remaining: 0,
            },
        ))?;
        self.bytes = tail;
        Ok(byte)
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, ClientHelloError> {
        let bytes = self.take(2, field)?;
        Ok(bytes.iter().fold(0u16, |acc, &b| (acc << 8) | u16::from(b)))
    }

    /// A sub-cursor over a u8-length-prefixed vector.
    fn vec8(&mut self, field: &'static str) -> Result<Cursor<'a>, ClientHelloError> {
        let len = self.u8(field)?;
        self.take(usize::from(len), field).map(Cursor::new)
    }

    /// A sub-cursor over a u16-length-prefixed vector.
    fn vec16(&mut self, field: &'static str) -> Result<Cursor<'a>, ClientHelloError> {
        let len = self.u16(field)?;
        self.take(usize::from(len), field).map(Cursor::new)
    }

    /// The structure is over: any byte left is an error.
    fn finish(self, field: &'static str) -> Result<(), ClientHelloError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(malformed(field, Malformation::TrailingBytes(self.bytes.len())))
        }
    }
}

fn malformed(field: &'static str, malformation: Malformation) -> ClientHelloError {
    ClientHelloError::Malformed { field, malformation }
}

/// Buffers the client's first bytes until they hold a complete ClientHello.
///
/// Feed stream bytes with [`push`](Self::push) in any chunking. All bytes pushed are kept
/// in [`raw`](Self::raw), including those after the ClientHello (0-RTT data, for
/// instance): after the hello is returned the reader goes on buffering, within its
/// bound, until the caller has decided what to do with the connection.
///
/// Memory is bounded: the handshake message by `max_handshake_len`, the raw bytes by
/// four times that (plus headers). Bounds are reported as errors, never by dropping.
#[derive(Debug)]
pub struct ClientHelloReader {
    raw: Vec<u8>,
    raw_limit: usize,
    /// End of the complete records already taken from `raw`.
    records_end: usize,
    record_version: u16,
    handshake: HandshakeAssembly,
    /// Set once the ClientHello is complete: the length of its records in `raw`.
    hello_end: Option<usize>,
    /// Errors are sticky: once the stream is known bad, more bytes cannot mend it.
    failed: Option<ClientHelloError>,
}

impl Default for ClientHelloReader {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientHelloReader {
    /// A reader accepting ClientHellos up to [`DEFAULT_MAX_HANDSHAKE_LEN`] bytes and
    /// buffering about 64 KiB of raw stream.
    pub fn new() -> Self {
        Self::with_limit(DEFAULT_MAX_HANDSHAKE_LEN)
    }

    /// A reader accepting ClientHello messages of at most `max_handshake_len` bytes
    /// (handshake header excluded). Raw bytes are bounded at four times
    /// `max_handshake_len` plus the headers.
    pub fn with_limit(max_handshake_len: usize) -> Self {
        let raw_limit = max_handshake_len
            .saturating_add(HANDSHAKE_HEADER_LEN + RECORD_HEADER_LEN)
            .saturating_mul(RAW_BYTES_PER_HANDSHAKE_BYTE);
        Self {
            raw: Vec::new(),
            raw_limit,
            records_end: 0,
            record_version: 0,
            handshake: HandshakeAssembly {
                bytes: Vec::new(),
                max_len: max_handshake_len,
            },
            hello_end: None,
            failed: None,
        }
    }

    /// Feeds stream bytes. Returns `Ok(Some(hello))` once, when the ClientHello is
    /// complete; `Ok(None)` while more bytes are needed or after the hello was returned.
    ///
    /// The bytes are appended to [`raw`](Self::raw), except when they would pass the raw
    /// bound: then none of them are, and the error is
    /// [`ClientHelloError::BufferFull`]. After an error, every call returns the same
    /// error and takes no bytes.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Option<ClientHello>, ClientHelloError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        if bytes.len() > self.raw_limit.saturating_sub(self.raw.len()) {
            return Err(self.fail(ClientHelloError::BufferFull { limit: self.raw_limit }));
        }
        self.raw.extend_from_slice(bytes);
        if self.hello_end.is_some() {
            return Ok(None);
        }
        self.read_records().map_err(|error| self.fail(error))
    }

    /// Every byte accepted so far, ClientHello records and anything after them.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Hands over the raw bytes without copying them.
    pub fn into_raw(self) -> Vec<u8> {
        self.raw
    }

    /// Once the ClientHello is complete: how many bytes of [`raw`](Self::raw) its records
    /// take. Bytes past this offset were sent after the hello.
    pub fn hello_records_len(&self) -> Option<usize> {
        self.hello_end
    }

    /// The bound on [`raw`](Self::raw), for the operator's counters and messages.
    pub fn raw_limit(&self) -> usize {
        self.raw_limit
    }

    fn fail(&mut self, error: ClientHelloError) -> ClientHelloError {
        self.failed = Some(error);
        error
    }

    /// Takes every complete record out of the buffer until the hello is whole.
    fn read_records(&mut self) -> Result<Option<ClientHello>, ClientHelloError> {
        loop {
            let rest = self.raw.get(self.records_end..).unwrap_or_default();
            let first_record = self.records_end == 0;
            if first_record {
                check_first_bytes(rest)?;
            }
            let Some(&[content_type, major, minor, len_hi, len_lo]) = rest.first_chunk::<RECORD_HEADER_LEN>() else {
                return Ok(None);
            };
            let version = u16::from_be_bytes([major, minor]);
            let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
            if major != 3 && first_record {
                // A content-type byte followed by anything but 0x03: not TLS at all.
                return Err(ClientHelloError::NotTls {
                    prefix: StreamPrefix::new(rest),
                });
            }
            if major != 3 || minor > 4 {
                return Err(ClientHelloError::UnsupportedRecordVersion(version));
            }
            if len == 0 {
                // RFC 8446 §5.1 forbids empty handshake fragments; alerts need 2 bytes.
                return Err(malformed("record", Malformation::Empty));
            }
            if len > MAX_RECORD_FRAGMENT {
                return Err(malformed(
                    "record",
                    Malformation::TooLong {
                        len,
                        max: MAX_RECORD_FRAGMENT,
                    },
                ));
            }
            match content_type {
                CONTENT_HANDSHAKE => {}
                CONTENT_ALERT => {
                    // Read level and description only inside this record: bytes past
                    // its end belong to the next one.
                    if len < 2 {
                        return Err(malformed(
                            "alert",
                            Malformation::Truncated {
                                needed: 2,
                                remaining: len,
                            },
                        ));
                    }
                    let Some(&[level, description]) = rest
                        .get(RECORD_HEADER_LEN..)
                        .and_then(|fragment| fragment.first_chunk::<2>())
                    else {
                        return Ok(None);
                    };
                    return Err(ClientHelloError::Alert { level, description });
                }
                other if first_record => {
                    return Err(ClientHelloError::UnexpectedRecord { content_type: other });
                }
                other => {
                    return Err(malformed("record", Malformation::Interrupted { content_type: other }));
                }
            }
            let record_end = RECORD_HEADER_LEN + len;
            let Some(fragment) = rest.get(RECORD_HEADER_LEN..record_end) else {
                // Judge the handshake header without waiting for up to 16 KiB of record.
                let partial = rest.get(RECORD_HEADER_LEN..).unwrap_or_default();
                self.handshake.check_header(partial)?;
                return Ok(None);
            };
            if first_record {
                self.record_version = version;
            }
            let complete = self.handshake.append(fragment)?;
            self.records_end += record_end;
            if complete {
                self.hello_end = Some(self.records_end);
                // The message is parsed once; its buffer need not live as long as the
                // session does.
                let message = std::mem::take(&mut self.handshake.bytes);
                let body = message.get(HANDSHAKE_HEADER_LEN..).unwrap_or_default();
                return ClientHello::parse(body, self.record_version).map(Some);
            }
        }
    }
}

/// Rules out non-TLS streams from their first bytes, before any record is complete.
fn check_first_bytes(stream: &[u8]) -> Result<(), ClientHelloError> {
    match stream.first() {
        None | Some(&(CONTENT_CHANGE_CIPHER_SPEC..=CONTENT_HEARTBEAT)) => Ok(()),
        Some(&first) if first & 0x80 != 0 => {
            // SSLv2 record: 2-byte length with the top bit set, then message type 1
            // (CLIENT-HELLO) and the highest version the client speaks.
            let Some(&[_, _, message_type, major, minor]) = stream.first_chunk::<5>() else {
                return Ok(());
            };
            if message_type == 1 && major <= 3 {
                Err(ClientHelloError::Sslv2Hello {
                    version: u16::from_be_bytes([major, minor]),
                })
            } else {
                Err(ClientHelloError::NotTls {
                    prefix: StreamPrefix::new(stream),
                })
            }
        }
        Some(_) => Err(ClientHelloError::NotTls {
            prefix: StreamPrefix::new(stream),
        }),
    }
}

/// The handshake message being reassembled from record fragments.
#[derive(Debug)]
struct HandshakeAssembly {
    bytes: Vec<u8>,
    max_len: usize,
}

impl HandshakeAssembly {
    /// Checks the handshake header as far as it is known from the bytes stored and
    /// those of a record still incomplete, so a wrong type or a hostile length is
    /// refused as soon as it arrives.
    fn check_header(&self, partial_fragment: &[u8]) -> Result<(), ClientHelloError> {
        let mut header = [0u8; HANDSHAKE_HEADER_LEN];
        let mut known = 0;
        for (slot, &byte) in header.iter_mut().zip(self.bytes.iter().chain(partial_fragment)) {
            *slot = byte;
            known += 1;
        }
        if known >= 1 && header[0] != HANDSHAKE_CLIENT_HELLO {
            return Err(ClientHelloError::NotClientHello {
                handshake_type: header[0],
            });
        }
        if known == HANDSHAKE_HEADER_LEN {
            let declared = u24(&header);
            if declared > self.max_len {
                return Err(ClientHelloError::TooLarge {
                    declared,
                    limit: self.max_len,
                });
            }
        }
        Ok(())
    }

    /// Appends one record's fragment. `Ok(true)` once the message is complete; the
    /// declared length is checked against the bound before any body byte is stored.
    fn append(&mut self, mut fragment: &[u8]) -> Result<bool, ClientHelloError> {
        while self.bytes.len() < HANDSHAKE_HEADER_LEN {
            let Some((&byte, tail)) = fragment.split_first() else {
                return Ok(false);
            };
            if self.bytes.is_empty() && byte != HANDSHAKE_CLIENT_HELLO {
                return Err(ClientHelloError::NotClientHello { handshake_type: byte });
            }
            self.bytes.push(byte);
            fragment = tail;
        }
        let declared = u24(&self.bytes);
        if declared > self.max_len {
            return Err(ClientHelloError::TooLarge {
                declared,
                limit: self.max_len,
            });
        }
        let missing = (HANDSHAKE_HEADER_LEN + declared).saturating_sub(self.bytes.len());
        if fragment.len() > missing {
            // Nothing may follow the ClientHello before the server answers; bytes hidden
            // here would escape inspection.
            return Err(malformed(
                "handshake",
                Malformation::TrailingBytes(fragment.len() - missing),
            ));
        }
        self.bytes.extend_from_slice(fragment);
        Ok(self.bytes.len() == HANDSHAKE_HEADER_LEN + declared)
    }
}

/// The 24-bit length of a handshake header.
fn u24(header: &[u8]) -> usize {
    header
        .get(1..HANDSHAKE_HEADER_LEN)
        .unwrap_or_default()
        .iter()
        .fold(0, |acc, &b| (acc << 8) | usize::from(b))
}

/// Why the client's first bytes are not a usable ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientHelloError {
    /// The stream does not start with a TLS record (plain HTTP, SSH, anything else).
    NotTls { prefix: StreamPrefix },
    /// An SSLv2-format ClientHello, as very old clients and some scanners send.
    Sslv2Hello { version: u16 },
    /// A TLS record whose version is not SSL 3.0 to TLS 1.3.
    UnsupportedRecordVersion(u16),
    /// The first record is not a handshake (change_cipher_spec, application_data…).
    UnexpectedRecord { content_type: u8 },
    /// The client sent an alert where the ClientHello should be.
    Alert { level: u8, description: u8 },
    /// The first handshake message is not a ClientHello.
    NotClientHello { handshake_type: u8 },
    /// The ClientHello declares more bytes than the reader accepts.
    TooLarge { declared: usize, limit: usize },
    /// More raw bytes arrived than the reader buffers.
    BufferFull { limit: usize },
    /// The bytes break the TLS grammar.
    Malformed {
        field: &'static str,
        malformation: Malformation,
    },
}

/// How a field of the ClientHello breaks the grammar; displayed as a predicate of the
/// field ("cipher_suites" "length 7 is odd").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformation {
    Truncated {
        needed: usize,
        remaining: usize,
    },
    OddLength(usize),
    Empty,
    TooLong {
        len: usize,
        max: usize,
    },
    TrailingBytes(usize),
    /// An extension type sent twice.
    Duplicate(u16),
    /// pre_shared_key not in last position.
    NotLast,
    /// A record of another content type inside the ClientHello's records.
    Interrupted {
        content_type: u8,
    },
    Invalid(&'static str),
}

/// The first bytes of a stream that turned out not to be TLS, kept for the message.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct StreamPrefix {
    bytes: [u8; 8],
    len: u8,
}

impl StreamPrefix {
    fn new(stream: &[u8]) -> Self {
        let mut bytes = [0u8; 8];
        let len = stream.len().min(bytes.len());
        for (slot, &b) in bytes.iter_mut().zip(stream) {
            *slot = b;
        }
        Self {
            bytes,
            len: u8::try_from(len).unwrap_or(8),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or(&self.bytes)
    }

    /// The protocol these bytes most likely belong to, when recognizable.
    pub fn looks_like(&self) -> Option<&'static str> {
        const HTTP: &[&[u8]] = &[
            b"GET ",
            b"POST ",
            b"HEAD ",
            b"PUT ",
            b"DELETE ",
            b"OPTIONS ",
            b"PATCH ",
            b"CONNECT ",
            b"TRACE ",
            b"PRI * HTTP/2",
        ];
        let bytes = self.as_bytes();
        // Matches a whole marker, or a prefix of one long enough not to be chance.
        let matches = |marker: &[u8]| bytes.starts_with(marker) || (bytes.len() >= 3 && marker.starts_with(bytes));
        if HTTP.iter().any(|marker| matches(marker)) {
            Some("plain HTTP")
        } else if matches(b"SSH-") {
            Some("an SSH banner")
        } else {
            None
        }
    }

    fn is_text(&self) -> bool {
        let bytes = self.as_bytes();
        !bytes.is_empty()
            && bytes
                .iter()
                .all(|&b| b.is_ascii_graphic() || matches!(b, b' ' | b'\r' | b'\n' | b'\t'))
    }
}

impl fmt::Debug for StreamPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamPrefix(\"{}\")", self.as_bytes().escape_ascii())
    }
}

impl fmt::Display for StreamPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_text() {
            write!(f, "\"{}\"", self.as_bytes().escape_ascii())
        } else {
            for (i, b) in self.as_bytes().iter().enumerate() {
                if i > 0 {
                    f.write_str(" ")?;
                }
                write!(f, "{b:02x}")?;
            }
            Ok(())
        }
    }
}

/// "name (code)" when the code has a name, else the bare code.
struct Named {
    name: Option<&'static str>,
    code: u32,
}

impl fmt::Display for Named {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name {
            Some(name) => write!(f, "{name} ({})", self.code),
            None => write!(f, "unknown type {}", self.code),
        }
    }
}

fn content_type(code: u8) -> Named {
    Named {
        name: names::content_type_name(code),
        code: code.into(),
    }
}

impl fmt::Display for Malformation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Malformation::Truncated { needed, remaining } => {
                write!(f, "needs {needed} bytes but only {remaining} remain")
            }
            Malformation::OddLength(len) => write!(f, "length {len} is odd"),
            Malformation::Empty => f.write_str("is empty"),
            Malformation::TooLong { len, max } => write!(f, "length {len} exceeds {max}"),
            Malformation::TrailingBytes(n) => write!(f, "is followed by {n} unexpected bytes"),
            Malformation::Duplicate(ext_type) => write!(
                f,
                "lists {} twice",
                Named {
                    name: names::extension_name(ext_type),
                    code: ext_type.into(),
                }
            ),
            Malformation::NotLast => f.write_str("is not the last extension"),
            Malformation::Interrupted { content_type: code } => {
                write!(f, "of type {} interrupts the ClientHello", content_type(code))
            }
            Malformation::Invalid(reason) => f.write_str(reason),
        }
    }
}

impl ClientHelloError {
    /// The stream is some other protocol, not a broken or hostile TLS ClientHello.
    pub fn is_not_tls(&self) -> bool {
        matches!(self, ClientHelloError::NotTls { .. })
    }
}

impl fmt::Display for ClientHelloError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ClientHelloError::NotTls { prefix } => match prefix.looks_like() {
                Some(protocol) => {
                    write!(f, "not TLS: first bytes look like {protocol} ({prefix})")
                }
                None if prefix.is_text() => write!(f, "not TLS: first bytes are text {prefix}"),
                None => write!(f, "not TLS: first bytes {prefix} are not a TLS record"),
            },
            ClientHelloError::Sslv2Hello { version } => write!(
                f,
                "SSLv2-format ClientHello offering up to {} ({version:#06x}): only TLS-format \
                 ClientHellos can be inspected (very old client or a scanner)",
                names::version_name(version)
            ),
            ClientHelloError::UnsupportedRecordVersion(version) => {
                write!(f, "record version {version:#06x} is not SSL 3.0 to TLS 1.3")
            }
            ClientHelloError::UnexpectedRecord { content_type: code } => write!(
                f,
                "the client sent a {} record before any ClientHello",
                content_type(code)
            ),
            ClientHelloError::Alert { level, description } => {
                let level = match level {
                    1 => "warning",
                    2 => "fatal",
                    _ => "unknown-level",
                };
                write!(
                    f,
                    "the client sent a {level} alert {} instead of a ClientHello",
                    Named {
                        name: names::alert_description_name(description),
                        code: description.into(),
                    }
                )
            }
            ClientHelloError::NotClientHello { handshake_type } => write!(
                f,
                "the client's first handshake message is {}, not a ClientHello",
                Named {
                    name: names::handshake_type_name(handshake_type),
                    code: handshake_type.into(),
                }
            ),
            ClientHelloError::TooLarge { declared, limit } => {
                write!(f, "ClientHello of {declared} bytes exceeds the {limit}-byte limit")
            }
            ClientHelloError::BufferFull { limit } => write!(
                f,
                "the client sent more than {limit} bytes before a decision was made \
                 (ClientHello split into too many records, or too much data after it)"
            ),
            ClientHelloError::Malformed { field, malformation } => {
                write!(f, "malformed ClientHello: {field} {malformation}")
            }
        }
    }
}

impl std::error::Error for ClientHelloError {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured on this project's machines from real clients talking to a loopback
    /// listener; testdata/README.md says how each was produced.
    const FIXTURES: &[(&str, &str)] = &[
        ("chromium", include_str!("testdata/chromium.hex")),
        ("curl_tls12", include_str!("testdata/curl_tls12.hex")),
        ("curl_tls13", include_str!("testdata/curl_tls13.hex")),
        ("firefox", include_str!("testdata/firefox.hex")),
        ("gnutls", include_str!("testdata/gnutls.hex")),
        ("openssl_alpn", include_str!("testdata/openssl_alpn.hex")),
        ("openssl_fragmented", include_str!("testdata/openssl_fragmented.hex")),
        (
            "openssl_resume_psk_early",
            include_str!("testdata/openssl_resume_psk_early.hex"),
        ),
        (
            "openssl_resume_tls12_ticket",
            include_str!("testdata/openssl_resume_tls12_ticket.hex"),
        ),
        ("python", include_str!("testdata/python.hex")),
        ("python_openssl35", include_str!("testdata/python_openssl35.hex")),
    ];

    fn unhex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text
            .bytes()
            .filter(|b| !b.is_ascii_whitespace())
            .map(|b| match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                b'A'..=b'F' => b - b'A' + 10,
                _ => panic!("bad hex digit {b:#04x}"),
            })
            .collect();
        assert_eq!(digits.len() % 2, 0, "odd number of hex digits");
        digits.chunks(2).map(|pair| pair[0] << 4 | pair[1]).collect()
    }

    fn fixture(name: &str) -> Vec<u8> {
        let (_, text) = FIXTURES
            .iter()
            .find(|(fixture, _)| *fixture == name)
            .expect("known fixture");
        unhex(text)
    }

    type Outcome = Result<Option<ClientHello>, ClientHelloError>;

    fn read_whole(stream: &[u8]) -> Outcome {
        ClientHelloReader::new().push(stream)
    }

    /// Feeds `stream` in chunks of `chunk` bytes; the first hello or error wins.
    fn read_chunked(stream: &[u8], chunk: usize) -> Outcome {
        let mut reader = ClientHelloReader::new();
        for piece in stream.chunks(chunk) {
            if let Some(hello) = reader.push(piece)? {
                return Ok(Some(hello));
            }
        }
        Ok(None)
    }

    fn parse(name: &str) -> ClientHello {
        read_whole(&fixture(name))
            .expect("fixture parses")
            .expect("fixture is a complete ClientHello")
    }

    /// Splits a record stream into its content type and reassembled fragments.
    fn handshake_message(stream: &[u8]) -> Vec<u8> {
        let mut message = Vec::new();
        let mut rest = stream;
        while !rest.is_empty() {
            let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
            message.extend_from_slice(&rest[5..5 + len]);
            rest = &rest[5 + len..];
        }
        message
    }

    /// Wraps a handshake message in handshake records of at most `sizes[i]` bytes
    /// each (the last size repeats).
    fn records(message: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut stream = Vec::new();
        let mut rest = message;
        let mut i = 0;
        while !rest.is_empty() {
            let size = sizes[i.min(sizes.len() - 1)].min(rest.len());
            stream.extend_from_slice(&[CONTENT_HANDSHAKE, 3, 1]);
            stream.extend_from_slice(&(size as u16).to_be_bytes());
            stream.extend_from_slice(&rest[..size]);
            rest = &rest[size..];
            i += 1;
        }
        stream
    }

    fn vec8(bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }

    fn vec16(bytes: &[u8]) -> Vec<u8> {
        let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(bytes);
        out
    }

    fn u16s(values: &[u16]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_be_bytes()).collect()
    }

    fn sni_ext(host: &[u8]) -> (u16, Vec<u8>) {
        let mut entry = vec![0];
        entry.extend(vec16(host));
        (EXT_SERVER_NAME, vec16(&entry))
    }

    /// A synthetic ClientHello body with the given suites and extensions; `None`
    /// leaves the extensions block out, as pre-TLS-1.2 clients may.
    fn hello_body(suites: &[u16], extensions: Option<&[(u16, Vec<u8>)]>) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[0x42; 32]);
        body.extend(vec8(&[0x17; 32]));
        body.extend(vec16(&u16s(suites)));
        body.extend(vec8(&[0]));
        if let Some(extensions) = extensions {
            let mut block = Vec::new();
            for (ext_type, data) in extensions {
                block.extend_from_slice(&ext_type.to_be_bytes());
                block.extend(vec16(data));
            }
            body.extend(vec16(&block));
        }
        body
    }

    fn handshake(body: &[u8]) -> Vec<u8> {
        let len = body.len() as u32;
        let mut message = vec![HANDSHAKE_CLIENT_HELLO];
        message.extend_from_slice(&len.to_be_bytes()[1..]);
        message.extend_from_slice(body);
        message
    }

    fn synthetic(extensions: &[(u16, Vec<u8>)]) -> Outcome {
        let body = hello_body(&[0x1301, 0xc02f], Some(extensions));
        read_whole(&records(&handshake(&body), &[MAX_RECORD_FRAGMENT]))
    }

    fn malformed_parts(outcome: Outcome) -> (&'static str, Malformation) {
        match outcome {
            Err(ClientHelloError::Malformed { field, malformation }) => (field, malformation),
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn chromium_hello_with_grease_ech_and_post_quantum_key_share() {
        let stream = fixture("chromium");
        // One record larger than a 1500-byte MTU: it spans TCP segments.
        assert!(stream.len() > 1500);
        let hello = parse("chromium");
        assert_eq!(hello.sni.as_deref(), Some("chrome.example.test"));
        assert_eq!(hello.alpn, ["h2", "http/1.1"]);
        assert_eq!(hello.supported_versions, [0x0304, 0x0303]);
        assert_eq!(hello.max_version(), 0x0304);
        assert!(hello.offers_tls13());
        assert!(hello.grease_seen);
        assert_eq!(hello.cipher_suites.len(), 15);
        assert_eq!(hello.cipher_suites[0], 0x1301);
        assert!(!hello.cipher_suites.iter().any(|&s| is_grease(s)));
        assert_eq!(hello.groups, [0x11ec, 0x001d, 0x0017, 0x0018]);
        assert_eq!(hello.key_share_groups, [0x11ec, 0x001d]);
        // Chrome GREASEs signature algorithms too, and offers ML-DSA (0x0904–0x0906).
        assert_eq!(hello.signature_algorithms.len(), 11);
        assert_eq!(hello.signature_algorithms[..3], [0x0904, 0x0905, 0x0906]);
        assert!(hello.ech);
        // Trust Anchor IDs (0xca34) looks GREASE-like at a glance but is a real code point.
        assert!(hello.extensions.contains(&0xca34));
        assert!(!hello.has_session_ticket && !hello.has_psk && !hello.has_early_data);
        assert_eq!(
            hello.extensions,
            [
                0x000b, 0xca34, 0x002d, 0x0010, 0x0000, 0xff01, 0x44cd, 0x0033, 0x002b, 0x0005, 0x000a, 0x0012, 0x0017,
                0x0023, 0x001b, 0xfe0d, 0x000d
            ]
        );
        assert_eq!(hello.record_version, 0x0301);
        assert_eq!(hello.legacy_version, 0x0303);
    }

    #[test]
    fn curl_tls12_only_hello() {
        let hello = parse("curl_tls12");
        assert_eq!(hello.sni.as_deref(), Some("api.example.test"));
        assert_eq!(hello.alpn, ["h2", "http/1.1"]);
        assert!(hello.supported_versions.is_empty());
        assert_eq!(hello.max_version(), 0x0303);
        assert!(!hello.offers_tls13());
        assert_eq!(hello.cipher_suites.len(), 28);
        assert_eq!(hello.cipher_suites.last(), Some(&0x00ff));
        assert!(hello.cipher_suites.contains(&0xc013));
        assert_eq!(hello.groups, [0x001d, 0x0017, 0x001e, 0x0019, 0x0018]);
        assert!(hello.key_share_groups.is_empty());
        assert_eq!(hello.signature_algorithms.len(), 20);
        assert_eq!(hello.extensions, [0, 11, 10, 16, 22, 23, 13]);
        assert!(!hello.grease_seen && !hello.ech);
    }

    #[test]
    fn curl_tls13_hello() {
        let hello = parse("curl_tls13");
        assert_eq!(hello.sni.as_deref(), Some("www.example.test"));
        assert_eq!(hello.supported_versions, [0x0304, 0x0303, 0x0302, 0x0301]);
        assert_eq!(hello.max_version(), 0x0304);
        assert_eq!(hello.cipher_suites.len(), 31);
        assert_eq!(&hello.cipher_suites[..3], [0x1302, 0x1303, 0x1301]);
        assert_eq!(hello.key_share_groups, [0x001d]);
        assert_eq!(hello.groups.len(), 10);
        // OpenSSL pads the hello (extension 21) to dodge a buggy-server length range.
        assert_eq!(hello.extensions.last(), Some(&21));
        assert!(!hello.grease_seen);
    }

    #[test]
    fn gnutls_hello() {
        let hello = parse("gnutls");
        assert_eq!(hello.sni.as_deref(), Some("gnutls.example.test"));
        assert_eq!(hello.alpn, ["h2", "http/1.1"]);
        assert_eq!(hello.cipher_suites.len(), 29);
        assert_eq!(hello.key_share_groups, [0x0017, 0x001d]);
        assert_eq!(hello.supported_versions, [0x0304, 0x0303, 0x0302, 0x0301]);
        assert_eq!(hello.signature_algorithms.len(), 16);
        assert!(hello.extensions.contains(&28)); // record_size_limit
        assert!(!hello.has_session_ticket);
    }

    #[test]
    fn openssl_s_client_hello_with_alpn() {
        let hello = parse("openssl_alpn");
        assert_eq!(hello.sni.as_deref(), Some("example.test"));
        assert_eq!(hello.alpn, ["h2", "http/1.1"]);
        assert_eq!(hello.cipher_suites.len(), 31);
        assert_eq!(hello.key_share_groups, [0x001d]);
        // An empty session_ticket extension advertises support, it is no resumption.
        assert!(hello.extensions.contains(&EXT_SESSION_TICKET));
        assert!(!hello.has_session_ticket);
    }

    #[test]
    fn openssl_hello_fragmented_across_three_records() {
        let stream = fixture("openssl_fragmented");
        let mut reader = ClientHelloReader::new();
        let hello = reader.push(&stream).unwrap().unwrap();
        assert_eq!(reader.hello_records_len(), Some(stream.len()));
        assert_eq!(handshake_message(&stream).len() + 3 * RECORD_HEADER_LEN, stream.len());
        assert_eq!(hello.sni.as_deref(), Some("fragmented.example.test"));
        assert_eq!(hello.alpn.len(), 42);
        assert_eq!(hello.alpn[..2], ["h2", "http/1.1"]);
        assert_eq!(hello.alpn[41], "proto-039-padding-padding");
        assert!(hello.offers_tls13());
    }

    #[test]
    fn openssl_tls13_resumption_with_early_data() {
        let hello = parse("openssl_resume_psk_early");
        assert_eq!(hello.sni.as_deref(), Some("resume.example.test"));
        assert!(hello.has_psk && hello.has_early_data);
        assert_eq!(hello.extensions.last(), Some(&EXT_PRE_SHARED_KEY));
    }

    #[test]
    fn openssl_tls12_ticket_resumption() {
        let hello = parse("openssl_resume_tls12_ticket");
        assert!(hello.has_session_ticket);
        assert!(!hello.has_psk && !hello.offers_tls13());
        assert_eq!(hello.max_version(), 0x0303);
        assert_eq!(hello.cipher_suites.len(), 28);
    }

    #[test]
    fn firefox_hello_with_ech_grease_and_three_key_shares() {
        let stream = fixture("firefox");
        // Like Chromium's, one record larger than a 1500-byte MTU.
        assert!(stream.len() > 1500);
        assert_eq!(handshake_message(&stream).len() + RECORD_HEADER_LEN, stream.len());
        let hello = parse("firefox");
        assert_eq!(hello.sni.as_deref(), Some("firefox.example.test"));
        assert_eq!(hello.alpn, ["h2", "http/1.1"]);
        assert_eq!(hello.supported_versions, [0x0304, 0x0303]);
        // Firefox sends no GREASE, but does send ECH GREASE.
        assert!(!hello.grease_seen);
        assert!(hello.ech);
        assert_eq!(hello.cipher_suites.len(), 16);
        assert_eq!(hello.cipher_suites[..3], [0x1301, 0x1303, 0x1302]);
        assert_eq!(hello.groups, [0x11ec, 0x001d, 0x0017, 0x0018, 0x0019, 0x0100, 0x0101]);
        assert_eq!(hello.key_share_groups, [0x11ec, 0x001d, 0x0017]);
        // Ends with the SHA-1 pair ecdsa_sha1, rsa_pkcs1_sha1.
        assert_eq!(hello.signature_algorithms.len(), 11);
        assert_eq!(hello.signature_algorithms[9..], [0x0203, 0x0201]);
        assert!(!hello.has_session_ticket && !hello.has_psk && !hello.has_early_data);
        // delegated_credentials (0x22) and record_size_limit (0x1c) set it apart.
        assert_eq!(
            hello.extensions,
            [
                0x0000, 0x0017, 0xff01, 0x000a, 0x000b, 0x0023, 0x0010, 0x0005, 0x0022, 0x0012, 0x0033, 0x002b, 0x000d,
                0x002d, 0x001c, 0x001b, 0xfe0d
            ]
        );
    }

    #[test]
    fn python_ssl_hello() {
        // Debian's python3 on OpenSSL 3.0: the same offer as openssl s_client.
        let hello = parse("python");
        assert_eq!(hello.sni.as_deref(), Some("python.example.test"));
        assert_eq!(hello.alpn, ["h2", "http/1.1"]);
        assert_eq!(hello.supported_versions, [0x0304, 0x0303, 0x0302, 0x0301]);
        assert_eq!(hello.cipher_suites.len(), 31);
        assert_eq!(hello.groups.len(), 10);
        assert_eq!(hello.key_share_groups, [0x001d]);
        assert_eq!(hello.signature_algorithms.len(), 20);
        assert_eq!(hello.extensions.last(), Some(&21));
        assert!(!hello.grease_seen && !hello.ech);
    }

    #[test]
    fn pyopenssl_hello_with_post_quantum_key_share() {
        // cryptography's bundled OpenSSL (4.0.3 at capture): X25519MLKEM768 first, with a
        // key share, plus a classical X25519 one.
        let hello = parse("python_openssl35");
        assert_eq!(hello.sni.as_deref(), Some("pq.example.test"));
        assert_eq!(hello.alpn, ["h2", "http/1.1"]);
        assert_eq!(hello.supported_versions, [0x0304, 0x0303]);
        assert_eq!(hello.cipher_suites.len(), 30);
        assert_eq!(hello.cipher_suites[..3], [0x1302, 0x1303, 0x1301]);
        assert_eq!(
            hello.groups,
            [0x11ec, 0x11eb, 0x11ee, 0x001d, 0x0017, 0x001e, 0x0018, 0x0019, 0x0029, 0x0100, 0x0101]
        );
        assert_eq!(hello.key_share_groups, [0x11ec, 0x001d]);
        // Offers ML-DSA (0x0904–0x0906) first.
        assert_eq!(hello.signature_algorithms.len(), 27);
        assert_eq!(hello.signature_algorithms[..3], [0x0905, 0x0906, 0x0904]);
        assert_eq!(
            hello.extensions,
            [0xff01, 0x000b, 0x000a, 0x0023, 0x0016, 0x0017, 0x000d, 0x002b, 0x002d, 0x0033, 0x0000, 0x0010]
        );
        assert!(!hello.grease_seen && !hello.ech);
        assert!(!hello.has_session_ticket && !hello.has_psk && !hello.has_early_data);
    }

    #[test]
    fn any_chunking_gives_the_same_hello() {
        for (name, _) in FIXTURES {
            let stream = fixture(name);
            let whole = read_whole(&stream).unwrap().unwrap();
            for chunk in [1, 2, 3, 7, 100, 1400] {
                assert_eq!(
                    read_chunked(&stream, chunk).unwrap().as_ref(),
                    Some(&whole),
                    "{name} {chunk}"
                );
            }
        }
    }

    #[test]
    fn any_record_fragmentation_gives_the_same_hello() {
        for (name, _) in FIXTURES {
            let stream = fixture(name);
            let whole = read_whole(&stream).unwrap().unwrap();
            let message = handshake_message(&stream);
            let third = message.len() / 3;
            // Three records, split inside the handshake header, and one byte per record.
            for sizes in [&[third, third, message.len()][..], &[2, 300], &[1]] {
                let refragmented = records(&message, sizes);
                assert_eq!(read_whole(&refragmented).unwrap().as_ref(), Some(&whole), "{name}");
                assert_eq!(read_chunked(&refragmented, 5).unwrap().as_ref(), Some(&whole), "{name}");
            }
        }
    }

    #[test]
    fn every_truncation_needs_more_bytes() {
        for (name, _) in FIXTURES {
            let stream = fixture(name);
            for len in 0..stream.len() {
                assert_eq!(read_whole(&stream[..len]), Ok(None), "{name} cut at {len}");
            }
        }
    }

    #[test]
    fn every_single_byte_mutation_parses_or_errors_the_same_way_in_any_chunking() {
        // Same verdict whole or in pieces; NotTls keeps the bytes in hand, so only its
        // kind is compared.
        fn verdict(outcome: &Outcome) -> Outcome {
            match outcome {
                Err(ClientHelloError::NotTls { .. }) => Err(ClientHelloError::NotTls {
                    prefix: StreamPrefix::new(&[]),
                }),
                other => other.clone(),
            }
        }
        let mut errors = 0;
        for (name, _) in FIXTURES {
            let stream = fixture(name);
            for position in 0..stream.len() {
                let original = stream[position];
                for value in [0x00, 0xff, original ^ 0x01, original ^ 0x80, original.wrapping_add(1)] {
                    let mut mutated = stream.clone();
                    mutated[position] = value;
                    let whole = read_whole(&mutated);
                    if let Err(error) = &whole {
                        assert!(!error.to_string().is_empty());
                        errors += 1;
                    }
                    if position % 3 == 0 {
                        assert_eq!(
                            verdict(&read_chunked(&mutated, 3)),
                            verdict(&whole),
                            "{name} byte {position} = {value:#04x}"
                        );
                    }
                }
            }
        }
        assert!(errors > 1000, "mutations should break many hellos, broke {errors}");
    }

    #[test]
    fn plain_http_is_not_tls() {
        let error = read_whole(b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n").unwrap_err();
        assert!(matches!(error, ClientHelloError::NotTls { .. }));
        assert_eq!(
            error.to_string(),
            "not TLS: first bytes look like plain HTTP (\"GET / HT\")"
        );
        let error = read_whole(b"POST /api HTTP/1.1\r\n").unwrap_err();
        assert!(error.to_string().contains("plain HTTP"), "{error}");
        let error = read_whole(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap_err();
        assert!(error.to_string().contains("plain HTTP"), "{error}");
    }

    #[test]
    fn ssh_banner_is_not_tls() {
        let error = read_whole(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "not TLS: first bytes look like an SSH banner (\"SSH-2.0-\")"
        );
    }

    #[test]
    fn other_protocols_are_not_tls() {
        let error = read_whole(b"EHLO mail.example.test\r\n").unwrap_err();
        assert_eq!(error.to_string(), "not TLS: first bytes are text \"EHLO mai\"");
        let error = read_whole(&[0x00, 0x01, 0x02]).unwrap_err();
        assert_eq!(error.to_string(), "not TLS: first bytes 00 01 02 are not a TLS record");
        // A TLS content type followed by a non-TLS version.
        let error = read_whole(&[CONTENT_HANDSHAKE, 0x47, 0x45, 0x54, 0x20]).unwrap_err();
        assert!(matches!(error, ClientHelloError::NotTls { .. }), "{error:?}");
    }

    #[test]
    fn sslv2_format_hello_is_recognized() {
        // 2-byte SSLv2 header (top bit set), CLIENT-HELLO, version 3.1, then specs.
        let stream = [0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10];
        assert_eq!(read_chunked(&stream[..4], 1), Ok(None));
        let error = read_whole(&stream).unwrap_err();
        assert_eq!(error, ClientHelloError::Sslv2Hello { version: 0x0301 });
        assert!(error
            .to_string()
            .starts_with("SSLv2-format ClientHello offering up to TLS 1.0"));
        // Top bit set but no CLIENT-HELLO: just not TLS.
        let error = read_whole(&[0x80, 0x2e, 0x07, 0x03, 0x01]).unwrap_err();
        assert!(matches!(error, ClientHelloError::NotTls { .. }));
    }

    #[test]
    fn other_first_records_are_named() {
        let alert = [CONTENT_ALERT, 3, 3, 0, 2, 2, 40];
        let error = read_whole(&alert).unwrap_err();
        assert_eq!(
            error,
            ClientHelloError::Alert {
                level: 2,
                description: 40
            }
        );
        assert_eq!(
            error.to_string(),
            "the client sent a fatal alert handshake_failure (40) instead of a ClientHello"
        );
        assert_eq!(read_chunked(&alert, 1), Err(error));

        // A one-byte alert is short even when the next record's bytes follow it (found
        // by the fuzzer: the description was read from the next record).
        let short_alert = [CONTENT_ALERT, 3, 3, 0, 1, 2, CONTENT_HANDSHAKE, 3, 3];
        let expected = Err(malformed(
            "alert",
            Malformation::Truncated {
                needed: 2,
                remaining: 1,
            },
        ));
        assert_eq!(read_whole(&short_alert), expected);
        assert_eq!(read_chunked(&short_alert, 1), expected);

        let error = read_whole(&[CONTENT_CHANGE_CIPHER_SPEC, 3, 3, 0, 1, 1]).unwrap_err();
        assert_eq!(error, ClientHelloError::UnexpectedRecord { content_type: 20 });
        assert!(error.to_string().contains("change_cipher_spec (20)"));

        let error = read_whole(&[CONTENT_HANDSHAKE, 3, 3, 0, 4, 2, 0, 0, 0]).unwrap_err();
        assert_eq!(error, ClientHelloError::NotClientHello { handshake_type: 2 });
        assert!(error.to_string().contains("server_hello (2), not a ClientHello"));

        let error = read_whole(&[CONTENT_HANDSHAKE, 3, 9, 0, 4]).unwrap_err();
        assert_eq!(error, ClientHelloError::UnsupportedRecordVersion(0x0309));
    }

    #[test]
    fn hostile_lengths_are_bounded() {
        // The largest handshake length a header can declare.
        let error = read_whole(&[CONTENT_HANDSHAKE, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff]).unwrap_err();
        assert_eq!(
            error,
            ClientHelloError::TooLarge {
                declared: 0xff_ffff,
                limit: DEFAULT_MAX_HANDSHAKE_LEN
            }
        );
        assert_eq!(
            error.to_string(),
            "ClientHello of 16777215 bytes exceeds the 16384-byte limit"
        );

        // A real hello above a tighter limit, arriving in segments.
        let mut reader = ClientHelloReader::with_limit(256);
        let stream = fixture("chromium");
        let error = stream.chunks(100).find_map(|piece| reader.push(piece).err()).unwrap();
        assert_eq!(
            error,
            ClientHelloError::TooLarge {
                declared: 1918,
                limit: 256
            }
        );
        // Known from the first 9 bytes, before the record is complete.
        let error = ClientHelloReader::with_limit(256).push(&stream[..9]).unwrap_err();
        assert_eq!(
            error,
            ClientHelloError::TooLarge {
                declared: 1918,
                limit: 256
            }
        );
        let error = read_whole(&[CONTENT_HANDSHAKE, 3, 1, 0x40, 0, 2]).unwrap_err();
        assert_eq!(error, ClientHelloError::NotClientHello { handshake_type: 2 });
        // One push larger than the raw bound is refused whole.
        let error = ClientHelloReader::with_limit(256).push(&stream).unwrap_err();
        assert_eq!(error, ClientHelloError::BufferFull { limit: (256 + 9) * 4 });

        // Record lengths beyond 2^14 and empty records.
        let error = read_whole(&[CONTENT_HANDSHAKE, 3, 1, 0xff, 0xff]).unwrap_err();
        assert_eq!(
            malformed_parts(Err(error)),
            (
                "record",
                Malformation::TooLong {
                    len: 0xffff,
                    max: MAX_RECORD_FRAGMENT
                }
            )
        );
        let error = read_whole(&[CONTENT_HANDSHAKE, 3, 1, 0, 0]).unwrap_err();
        assert_eq!(malformed_parts(Err(error)), ("record", Malformation::Empty));

        // A cipher_suites length that runs past the message.
        let mut body = hello_body(&[0x1301], None);
        body[2 + 32 + 33] = 0xff;
        body[2 + 32 + 34] = 0xfe;
        let outcome = read_whole(&records(&handshake(&body), &[MAX_RECORD_FRAGMENT]));
        assert_eq!(
            malformed_parts(outcome),
            (
                "cipher_suites",
                Malformation::Truncated {
                    needed: 0xfffe,
                    remaining: 4
                }
            )
        );
    }

    #[test]
    fn odd_cipher_suites_length_is_reported_in_words() {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[0; 32]);
        body.push(0);
        body.extend(vec16(&[0x13, 0x01, 0x13, 0x02, 0x13, 0x03, 0x00]));
        body.extend(vec8(&[0]));
        let error = read_whole(&records(&handshake(&body), &[500])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "malformed ClientHello: cipher_suites length 7 is odd"
        );
    }

    #[test]
    fn finely_fragmented_flood_hits_the_raw_bound() {
        // A 16000-byte hello announced, then sent one byte per record.
        let mut message = handshake(&vec![0; 16_000]);
        message.truncate(HANDSHAKE_HEADER_LEN + 16_000);
        let stream = records(&message, &[1]);
        let mut reader = ClientHelloReader::new();
        let mut outcome = Ok(None);
        for piece in stream.chunks(1000) {
            outcome = reader.push(piece);
            if outcome.is_err() {
                break;
            }
        }
        let limit = reader.raw_limit();
        assert_eq!(outcome, Err(ClientHelloError::BufferFull { limit }));
        assert!(reader.raw().len() <= limit);
        assert!((64 * 1024..70 * 1024).contains(&limit));
        // Sticky: nothing more is taken.
        assert_eq!(reader.push(b"x"), Err(ClientHelloError::BufferFull { limit }));
    }

    #[test]
    fn bytes_after_the_hello_are_kept_for_the_caller() {
        let mut stream = fixture("openssl_resume_psk_early");
        let hello_len = stream.len();
        // Early data follows in the same segment, and more arrives later.
        stream.extend_from_slice(&[0x17, 3, 3, 0, 3, 1, 2, 3]);
        let mut reader = ClientHelloReader::new();
        assert!(reader.push(&stream).unwrap().unwrap().has_early_data);
        assert_eq!(reader.hello_records_len(), Some(hello_len));
        assert_eq!(reader.push(b"more"), Ok(None));
        stream.extend_from_slice(b"more");
        assert_eq!(reader.raw(), &stream[..]);
        assert_eq!(reader.into_raw(), stream);
    }

    #[test]
    fn raw_keeps_every_byte_until_an_error() {
        let mut reader = ClientHelloReader::new();
        let stream = fixture("curl_tls13");
        assert_eq!(reader.push(&stream[..100]), Ok(None));
        assert_eq!(reader.raw(), &stream[..100]);
        assert_eq!(reader.hello_records_len(), None);
        let error = reader.push(&[0xff; 600]).unwrap_err();
        assert_eq!(reader.push(&stream[100..]), Err(error));
        assert_eq!(reader.raw().len(), 700);
    }

    #[test]
    fn records_must_not_be_interleaved_or_overflow_the_hello() {
        let message = handshake(&hello_body(&[0x1301], Some(&[])));
        let mut stream = records(&message[..10], &[10]);
        stream.extend_from_slice(&[0x17, 3, 3, 0, 1, 0]);
        let (field, malformation) = malformed_parts(read_whole(&stream));
        assert_eq!(field, "record");
        assert_eq!(malformation, Malformation::Interrupted { content_type: 23 });

        let mut with_extra = message.clone();
        with_extra.extend_from_slice(&[1, 0, 0, 0]);
        let outcome = read_whole(&records(&with_extra, &[MAX_RECORD_FRAGMENT]));
        assert_eq!(malformed_parts(outcome), ("handshake", Malformation::TrailingBytes(4)));
    }

    #[test]
    fn server_name_is_normalized_and_validated() {
        let hello = synthetic(&[sni_ext(b"WWW.Example.TEST.")]).unwrap().unwrap();
        assert_eq!(hello.sni.as_deref(), Some("www.example.test"));
        let hello = synthetic(&[sni_ext(b"_dmarc.x-1.example")]).unwrap().unwrap();
        assert_eq!(hello.sni.as_deref(), Some("_dmarc.x-1.example"));

        for bad in [&b"exa mple.test"[..], b"a..b", b".", b"", b"caf\xc3\xa9.test", b"[::1]"] {
            let (field, _) = malformed_parts(synthetic(&[sni_ext(bad)]));
            assert_eq!(field, "server_name", "{:?}", bad.escape_ascii().to_string());
        }
        let long_label = [b'a'; 64];
        assert!(synthetic(&[sni_ext(&long_label)]).is_err());
        let long_name: Vec<u8> = [&[b'a'; 60][..], b"."].concat().repeat(5);
        assert_eq!(
            malformed_parts(synthetic(&[sni_ext(&long_name)])),
            ("server_name", Malformation::TooLong { len: 304, max: 253 })
        );
        let error = synthetic(&[sni_ext(b"a b")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "malformed ClientHello: server_name has a host name with a character other than \
             letters, digits, '-', '_' and '.'"
        );
    }

    #[test]
    fn extension_rules() {
        // Duplicates.
        let error = synthetic(&[sni_ext(b"a.test"), sni_ext(b"b.test")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "malformed ClientHello: extensions lists server_name (0) twice"
        );

        // pre_shared_key must come last.
        let psk = [vec16(&[0, 1, 0xaa, 0, 0, 0, 0]), vec16(&vec8(&[0; 32]))].concat();
        let hello = synthetic(&[sni_ext(b"a.test"), (EXT_PRE_SHARED_KEY, psk.clone())])
            .unwrap()
            .unwrap();
        assert!(hello.has_psk);
        let outcome = synthetic(&[(EXT_PRE_SHARED_KEY, psk), sni_ext(b"a.test")]);
        assert_eq!(malformed_parts(outcome), ("pre_shared_key", Malformation::NotLast));

        // ALPN protocol names may not be empty; odd bytes are escaped, not lost.
        let outcome = synthetic(&[(EXT_ALPN, vec16(&[vec8(b"h2"), vec8(b"")].concat()))]);
        assert_eq!(malformed_parts(outcome).0, "application_layer_protocol_negotiation");
        let hello = synthetic(&[(EXT_ALPN, vec16(&vec8(b"a\\b\x00")))]).unwrap().unwrap();
        assert_eq!(hello.alpn, ["a\\x5cb\\x00"]);

        // A key share must carry a key; an empty list asks for HelloRetryRequest.
        let outcome = synthetic(&[(EXT_KEY_SHARE, vec16(&[0, 0x1d, 0, 0]))]);
        assert_eq!(malformed_parts(outcome).0, "key_share");
        let hello = synthetic(&[(EXT_KEY_SHARE, vec16(&[]))]).unwrap().unwrap();
        assert!(hello.key_share_groups.is_empty());

        // Lists of code points must be whole.
        let outcome = synthetic(&[(EXT_SUPPORTED_VERSIONS, vec8(&[3, 4, 3]))]);
        assert_eq!(
            malformed_parts(outcome),
            ("supported_versions", Malformation::OddLength(3))
        );
        let outcome = synthetic(&[(EXT_SUPPORTED_GROUPS, [vec16(&[0, 0x1d]), vec![0]].concat())]);
        assert_eq!(
            malformed_parts(outcome),
            ("supported_groups", Malformation::TrailingBytes(1))
        );
        let outcome = synthetic(&[(EXT_EARLY_DATA, vec![0])]);
        assert_eq!(malformed_parts(outcome), ("early_data", Malformation::TrailingBytes(1)));
    }

    #[test]
    fn grease_is_removed_and_noted() {
        let hello = synthetic(&[
            (0x3a3a, vec![]),
            (EXT_SUPPORTED_VERSIONS, vec8(&u16s(&[0x7a7a, 0x0304, 0x0303]))),
            (EXT_SUPPORTED_GROUPS, vec16(&u16s(&[0xdada, 0x001d]))),
            (
                EXT_KEY_SHARE,
                vec16(&[u16s(&[0xdada, 1]), vec![0], u16s(&[0x001d, 1]), vec![9]].concat()),
            ),
        ])
        .unwrap()
        .unwrap();
        assert!(hello.grease_seen);
        assert_eq!(
            hello.extensions,
            [EXT_SUPPORTED_VERSIONS, EXT_SUPPORTED_GROUPS, EXT_KEY_SHARE]
        );
        assert_eq!(hello.supported_versions, [0x0304, 0x0303]);
        assert_eq!(hello.groups, [0x001d]);
        assert_eq!(hello.key_share_groups, [0x001d]);
    }

    #[test]
    fn versions_without_supported_versions_or_with_drafts() {
        // A TLS 1.0 client without any extension at all.
        let mut body = hello_body(&[0x002f, 0x000a], None);
        body[1] = 1;
        let hello = read_whole(&records(&handshake(&body), &[1000])).unwrap().unwrap();
        assert_eq!(hello.max_version(), 0x0301);
        assert!(hello.extensions.is_empty() && hello.sni.is_none());

        let hello = synthetic(&[(EXT_SUPPORTED_VERSIONS, vec8(&u16s(&[0x7f1c, 0x0303])))])
            .unwrap()
            .unwrap();
        assert_eq!(hello.max_version(), 0x0303);
        assert!(!hello.offers_tls13());
    }
}
