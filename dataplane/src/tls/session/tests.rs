//! Split-TLS sessions between real BoringSSL peers in memory: a client that trusts only
//! the decryption CA, an origin server whose certificate an origin CA signed, and the
//! session in the middle, with bytes shuttled by hand. No sockets.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use boring::asn1::Asn1Time;
use boring::bn::{BigNum, MsbOption};
use boring::ec::{EcGroup, EcKey};
use boring::nid::Nid;
use boring::pkey::{PKey, Private};
use boring::rsa::Rsa;
use boring::ssl::{
    select_next_proto, SslConnector, SslContext, SslContextBuilder, SslMethod, SslVerifyMode, SslVersion,
};
use boring::x509::extension::{BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName};
use boring::x509::store::{X509Store, X509StoreBuilder};
use boring::x509::{X509Name, X509Ref, X509};

use super::*;
use crate::tls::client_hello::ClientHelloReader;
use crate::tls::forge::Forger;
use crate::tls::trust::TrustStore;

const HOST: &str = "origin.test";
const DAY: i64 = 86_400;

fn server_addr() -> SocketAddr {
    "198.18.0.2:443".parse().expect("address literal")
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

// ---------------------------------------------------------------------------------------
// Test PKI
// ---------------------------------------------------------------------------------------

fn ec_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

fn rsa_key() -> PKey<Private> {
    PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap()
}

struct Spec<'a> {
    cn: &'a str,
    sans: &'a [&'a str],
    ca: bool,
    not_before: i64,
    not_after: i64,
}

impl<'a> Spec<'a> {
    fn leaf(cn: &'a str) -> Self {
        Spec {
            cn,
            sans: &[],
            ca: false,
            not_before: now() - DAY,
            not_after: now() + 30 * DAY,
        }
    }

    fn ca(cn: &'a str) -> Self {
        Spec {
            ca: true,
            ..Spec::leaf(cn)
        }
    }
}

/// A certificate for `key`, signed by `issuer` (self-signed without one).
fn issue(spec: &Spec<'_>, key: &PKey<Private>, issuer: Option<(&X509Ref, &PKey<Private>)>) -> X509 {
    let mut name = X509Name::builder().unwrap();
    name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "loupe tests").unwrap();
    name.append_entry_by_nid(Nid::COMMONNAME, spec.cn).unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.pseudo_rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap()).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(issuer.map_or(&*name, |(cert, _)| cert.subject_name()))
        .unwrap();
    b.set_pubkey(key).unwrap();
    b.set_not_before(&Asn1Time::from_unix(spec.not_before).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(spec.not_after).unwrap()).unwrap();
    let mut constraints = BasicConstraints::new();
    constraints.critical();
    if spec.ca {
        constraints.ca();
    }
    b.append_extension(&constraints.build().unwrap()).unwrap();
    if spec.ca {
        let mut usage = KeyUsage::new();
        usage.critical().key_cert_sign().crl_sign();
        b.append_extension(&usage.build().unwrap()).unwrap();
    } else if issuer.is_some() {
        let mut usage = KeyUsage::new();
        usage.critical().digital_signature().key_encipherment();
        b.append_extension(&usage.build().unwrap()).unwrap();
        b.append_extension(&ExtendedKeyUsage::new().server_auth().build().unwrap())
            .unwrap();
    }
    // A self-signed leaf carries no key usage, like `openssl req -x509` makes them: with a
    // key usage lacking keyCertSign, OpenSSL/BoringSSL do not call it self-signed (code 20
    // instead of 18).
    if !spec.sans.is_empty() {
        let mut san = SubjectAlternativeName::new();
        for s in spec.sans {
            if s.parse::<IpAddr>().is_ok() {
                san.ip(s);
            } else {
                san.dns(s);
            }
        }
        let ext = san.build(&b.x509v3_context(issuer.map(|(c, _)| c), None)).unwrap();
        b.append_extension(&ext).unwrap();
    }
    let signer = issuer.map_or(key, |(_, k)| k);
    b.sign(signer, MessageDigest::sha256()).unwrap();
    b.build()
}

/// The origin side: a CA the appliance trusts, and a server certificate it signed.
struct Origin {
    root: X509,
    root_key: PKey<Private>,
    key: PKey<Private>,
}

impl Origin {
    fn new() -> Origin {
        let root_key = ec_key();
        let root = issue(&Spec::ca("origin root CA"), &root_key, None);
        Origin {
            root,
            root_key,
            key: ec_key(),
        }
    }

    fn trust_store(&self) -> X509Store {
        let mut trust = TrustStore::new();
        trust.add_certificate(self.root.clone()).unwrap();
        trust.build_store().unwrap()
    }

    /// Leaf for `HOST` signed by the origin root.
    fn good_leaf(&self) -> X509 {
        let spec = Spec {
            sans: &[HOST],
            ..Spec::leaf(HOST)
        };
        issue(&spec, &self.key, Some((&self.root, &self.root_key)))
    }
}

/// The real forger, with both CAs generated in memory.
fn new_forger() -> Forger {
    Forger::ephemeral(64).expect("an in-memory forger")
}

// ---------------------------------------------------------------------------------------
// Peers
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum ReadEnd {
    CloseNotify,
    Eof,
    Error(String),
}

/// A real BoringSSL endpoint with a little application on top: it sends `outbox`, keeps
/// what it reads in `inbox`, and optionally closes (close_notify, then FIN) when done.
struct TestPeer {
    stream: SslStream<Wire>,
    is_client: bool,
    handshaken: bool,
    failure: Option<boring::ssl::Error>,
    outbox: Vec<u8>,
    sent: usize,
    inbox: Vec<u8>,
    read_end: Option<ReadEnd>,
    /// After sending everything: close_notify, then FIN.
    close_when_sent: bool,
    /// After sending everything: a bare FIN (a truncation).
    fin_when_sent: bool,
    fin: bool,
}

impl TestPeer {
    fn new(ssl: Ssl, is_client: bool) -> TestPeer {
        TestPeer {
            stream: SslStream::new(ssl, Wire::default()).unwrap(),
            is_client,
            handshaken: false,
            failure: None,
            outbox: Vec::new(),
            sent: 0,
            inbox: Vec::new(),
            read_end: None,
            close_when_sent: false,
            fin_when_sent: false,
            fin: false,
        }
    }

    fn ssl(&self) -> &SslRef {
        self.stream.ssl()
    }

    fn step(&mut self) {
        if self.failure.is_some() {
            return;
        }
        if !self.handshaken {
            let result = if self.is_client {
                self.stream.connect()
            } else {
                self.stream.accept()
            };
            match result {
                Ok(()) => self.handshaken = true,
                Err(e) if would_block(&e) => return,
                Err(e) => {
                    self.failure = Some(e);
                    return;
                }
            }
        }
        while self.sent < self.outbox.len() {
            let end = self.outbox.len().min(self.sent + 20_000);
            match self.stream.ssl_write(&self.outbox[self.sent..end]) {
                Ok(n) => self.sent += n,
                Err(e) if would_block(&e) => break,
                Err(e) => {
                    self.failure = Some(e);
                    return;
                }
            }
        }
        let mut buf = [0u8; 16_384];
        while self.read_end.is_none() {
            match self.stream.ssl_read(&mut buf) {
                Ok(n) => self.inbox.extend_from_slice(&buf[..n]),
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => self.read_end = Some(ReadEnd::CloseNotify),
                Err(e) if would_block(&e) => break,
                Err(e) if self.stream.get_ref().at_eof() && e.ssl_error().is_none() => {
                    self.read_end = Some(ReadEnd::Eof)
                }
                Err(e) => self.read_end = Some(ReadEnd::Error(error_detail(&e))),
            }
        }
        if self.sent == self.outbox.len() && !self.fin {
            // close_notify then FIN, or a bare FIN (a truncation).
            let closed = self.close_when_sent && self.stream.shutdown().is_ok();
            self.fin = closed || self.fin_when_sent;
        }
    }

    fn wire(&mut self) -> &mut Wire {
        self.stream.get_mut()
    }

    fn fingerprint(&self) -> (bool, bool, usize, usize, bool, usize, usize, bool) {
        let wire = self.stream.get_ref();
        (
            self.handshaken,
            self.failure.is_some(),
            self.sent,
            self.inbox.len(),
            self.read_end.is_some(),
            wire.incoming.len(),
            wire.outgoing.len(),
            self.fin,
        )
    }

    /// The fatal alert this peer received, if its handshake failed with one.
    fn received_alert(&self) -> Option<u8> {
        self.failure
            .as_ref()
            .and_then(|e| received_alerts(e, Peer::Server).first().map(|a| a.code))
    }
}

#[derive(Default)]
struct ClientOptions<'a> {
    /// The only CA the client trusts; `None`: no verification at all.
    trust: Option<&'a X509Ref>,
    alpn: Option<&'a [u8]>,
    max_version: Option<SslVersion>,
    session: Option<SslSession>,
}

/// A test client and the sessions its server gave it (for resumption).
fn test_client(options: ClientOptions<'_>) -> (Ssl, Arc<Mutex<Vec<SslSession>>>) {
    let mut builder = SslConnector::builder(SslMethod::tls()).unwrap();
    match options.trust {
        Some(ca) => builder.cert_store_mut().add_cert(ca).unwrap(),
        None => builder.set_verify(SslVerifyMode::NONE),
    }
    if let Some(alpn) = options.alpn {
        builder.set_alpn_protos(alpn).unwrap();
    }
    builder.set_max_proto_version(options.max_version).unwrap();
    let sessions = Arc::new(Mutex::new(Vec::new()));
    let store = Arc::clone(&sessions);
    builder.set_session_cache_mode(SslSessionCacheMode::CLIENT);
    builder.set_new_session_callback(move |_, session| store.lock().unwrap().push(session));
    let connector = builder.build();
    let mut ssl = connector
        .configure()
        .unwrap()
        .verify_hostname(options.trust.is_some())
        .into_ssl(HOST)
        .unwrap();
    if let Some(session) = &options.session {
        // SAFETY: the session came from a connector with this configuration; BoringSSL
        // only uses it as an offer.
        unsafe { ssl.set_session(session) }.unwrap();
    }
    (ssl, sessions)
}

/// An origin server context presenting `chain` (leaf first).
fn origin_context(chain: &[X509], key: &PKey<Private>, tweak: impl FnOnce(&mut SslContextBuilder)) -> SslContext {
    let mut builder = SslContextBuilder::new(SslMethod::tls()).unwrap();
    builder.set_certificate(&chain[0]).unwrap();
    for cert in &chain[1..] {
        builder.add_extra_chain_cert(cert.clone()).unwrap();
    }
    builder.set_private_key(key).unwrap();
    builder.set_min_proto_version(Some(SslVersion::TLS1_2)).unwrap();
    builder
        .set_alpn_select_callback(|_, client| select_next_proto(b"\x02h2\x08http/1.1", client).ok_or(AlpnError::NOACK));
    tweak(&mut builder);
    builder.build()
}

/// An origin with an RSA leaf for HOST (the legacy ECDHE-RSA and static-RSA suites need
/// one), set up by `tweak`.
fn rsa_origin(world: &World, tweak: impl FnOnce(&mut SslContextBuilder)) -> SslContext {
    let rsa = rsa_key();
    let spec = Spec {
        sans: &[HOST],
        ..Spec::leaf(HOST)
    };
    let leaf = issue(&spec, &rsa, Some((&world.origin.root, &world.origin.root_key)));
    origin_context(&[leaf], &rsa, tweak)
}

/// A harness whose client trusts only loupe's decryption CA (the real forger's), talking
/// through the session to `server`.
fn harness_trusting_loupe(world: &World, server: &SslContext) -> Harness {
    let forger = new_forger();
    let (client, _) = test_client(ClientOptions {
        trust: Some(forger.decryption_ca().cert()),
        ..Default::default()
    });
    Harness::new(client, server, &world.ctx, forger)
}

/// Client, session and server, with the bytes between them moved by hand.
struct Harness {
    client: TestPeer,
    server: TestPeer,
    split: SplitTls,
    forger: Forger,
    inspector: PlaintextCounter,
    told_client_fin: bool,
    told_server_fin: bool,
    /// Whether bytes from the session reach the client (backpressure tests turn it off).
    deliver_to_client: bool,
}

impl Harness {
    /// Starts the client, parses its ClientHello as the worker would, starts the session.
    fn new(client: Ssl, server: &SslContext, ctx: &SplitTlsContext, forger: Forger) -> Harness {
        let mut client = TestPeer::new(client, true);
        client.step();
        let mut reader = ClientHelloReader::new();
        let hello = reader
            .push(client.wire().outgoing.as_slice())
            .expect("a valid ClientHello")
            .expect("a complete ClientHello");
        let split = SplitTls::start(&hello, reader.raw(), server_addr(), ctx);
        let n = client.wire().outgoing.len();
        client.wire().outgoing.consume(n);
        let server = TestPeer::new(Ssl::new(server).unwrap(), false);
        Harness {
            client,
            server,
            split,
            forger,
            inspector: PlaintextCounter::default(),
            told_client_fin: false,
            told_server_fin: false,
            deliver_to_client: true,
        }
    }

    fn fingerprint(&self) -> impl PartialEq {
        (
            self.client.fingerprint(),
            self.server.fingerprint(),
            self.split.facts().bytes,
            self.split.stage(),
            self.split.wants_close_client(),
            self.split.wants_close_server(),
            self.split.pending_to_client().len(),
            self.split.pending_to_server().len(),
        )
    }

    fn round(&mut self) {
        self.client.step();
        self.server.step();

        let out = self.client.wire();
        let taken = self.split.push_from_client(out.outgoing.as_slice());
        out.outgoing.consume(taken);
        if self.client.fin && self.client.wire().outgoing.is_empty() && !self.told_client_fin {
            self.split.client_closed();
            self.told_client_fin = true;
        }
        let out = self.server.wire();
        let taken = self.split.push_from_server(out.outgoing.as_slice());
        out.outgoing.consume(taken);
        if self.server.fin && self.server.wire().outgoing.is_empty() && !self.told_server_fin {
            self.split.server_closed();
            self.told_server_fin = true;
        }

        self.split.advance(&mut self.forger, &mut self.inspector);

        if self.deliver_to_client {
            let wire = self.client.stream.get_mut();
            let pending = self.split.pending_to_client();
            let n = pending.len().min(wire.incoming_room());
            wire.incoming.push(&pending[..n]);
            self.split.consume_to_client(n);
            if self.split.wants_close_client() {
                wire.peer_fin = true;
            }
        }
        let wire = self.server.stream.get_mut();
        let pending = self.split.pending_to_server();
        let n = pending.len().min(wire.incoming_room());
        wire.incoming.push(&pending[..n]);
        self.split.consume_to_server(n);
        if self.split.wants_close_server() {
            wire.peer_fin = true;
        }
    }

    /// Rounds until nothing moves any more.
    fn settle(&mut self) {
        let mut quiet = 0;
        for _ in 0..200_000 {
            let before = self.fingerprint();
            self.round();
            if before == self.fingerprint() {
                quiet += 1;
                if quiet == 3 {
                    return;
                }
            } else {
                quiet = 0;
            }
        }
        panic!("the session never settled: {:?}", self.split);
    }
}

struct World {
    origin: Origin,
    ctx: SplitTlsContext,
}

impl World {
    fn new(profile: &Profile) -> World {
        let origin = Origin::new();
        let ctx = SplitTlsContext::new(profile, origin.trust_store()).expect("profile accepted");
        World { origin, ctx }
    }

    fn good_server(&self) -> SslContext {
        origin_context(&[self.origin.good_leaf()], &self.origin.key, |_| {})
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Runs a request/response exchange with clean closes on both sides.
fn exchange(h: &mut Harness, request: &[u8], response: &[u8]) {
    h.client.outbox = request.to_vec();
    h.server.outbox = response.to_vec();
    h.settle();
    assert!(h.client.failure.is_none(), "client: {:?}", h.client.failure);
    assert!(h.server.failure.is_none(), "server: {:?}", h.server.failure);
    assert_eq!(h.server.inbox.len(), request.len(), "request length");
    assert!(h.server.inbox == request, "request bytes differ");
    assert_eq!(h.client.inbox.len(), response.len(), "response length");
    assert!(h.client.inbox == response, "response bytes differ");
    h.client.close_when_sent = true;
    h.server.close_when_sent = true;
    h.settle();
    assert_eq!(h.client.read_end, Some(ReadEnd::CloseNotify));
    assert_eq!(h.server.read_end, Some(ReadEnd::CloseNotify));
    assert!(h.split.is_finished(), "{:?}", h.split);
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn tls13_request_and_response_pass_intact_and_are_counted() {
    let world = World::new(&Profile::default());
    let mut h = harness_trusting_loupe(&world, &world.good_server());
    let mut request = b"GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n".to_vec();
    request.extend(pattern(1 << 20, 1));
    let mut response = b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n".to_vec();
    response.extend(pattern(1 << 20, 2));
    exchange(&mut h, &request, &response);

    let facts = h.split.facts();
    assert_eq!(h.split.stage(), Stage::Established);
    assert!(h.split.outcome().is_none(), "{:?}", h.split.outcome());
    assert_eq!(facts.upstream.version.as_deref(), Some("TLSv1.3"));
    assert_eq!(facts.client.version.as_deref(), Some("TLSv1.3"));
    assert!(
        facts.upstream.cipher.as_deref().is_some_and(|c| c.starts_with("TLS_")),
        "{facts:?}"
    );
    // Both BoringSSL peers speak the post-quantum hybrid: so does loupe, on both legs.
    assert_eq!(facts.upstream.group.as_deref(), Some("X25519MLKEM768"));
    assert_eq!(facts.client.group.as_deref(), Some("X25519MLKEM768"));
    assert_eq!(facts.verdict, Some(Verdict::Trusted));
    let verify = facts.verify.as_ref().expect("verification recorded");
    assert_eq!(
        (verify.code, verify.trusted, verify.checked_name.as_str()),
        (0, true, HOST)
    );
    assert_eq!(facts.server_chain.len(), 1);
    assert_eq!(facts.server_chain[0].sans, [HOST]);
    assert!(facts.server_chain[0].subject.ends_with("CN=origin.test"));
    assert_eq!(facts.server_chain[0].sha256.len(), 64);
    assert!(facts.server_chain[0].not_after.ends_with('Z'));
    assert_eq!(h.inspector.client_to_server, request.len() as u64);
    assert_eq!(h.inspector.server_to_client, response.len() as u64);
    assert_eq!(facts.bytes.plaintext_client_to_server, request.len() as u64);
    assert_eq!(facts.bytes.plaintext_server_to_client, response.len() as u64);
    assert!(facts.bytes.from_client > request.len() as u64);
    assert!(facts.bytes.to_server > request.len() as u64);
    assert!(facts.bytes.from_server > response.len() as u64);
    assert!(facts.bytes.to_client > response.len() as u64);
    assert_eq!(facts.client_end, Some(LegEnd::CloseNotify));
    assert_eq!(facts.server_end, Some(LegEnd::CloseNotify));
    assert!(facts.alerts.is_empty(), "{:?}", facts.alerts);

    // The client saw the forgery: the origin's name, the decryption CA as issuer.
    let presented = h.client.ssl().peer_certificate().unwrap();
    assert_eq!(cert_fact(&presented).sans, [HOST]);
    assert_eq!(
        cert_fact(&presented).issuer,
        name_line(h.forger.decryption_ca().cert().subject_name())
    );
}

#[test]
fn client_forcing_tls12_gets_tls12_while_the_server_leg_uses_the_profile() {
    let world = World::new(&Profile::default());
    let forger = new_forger();
    let (client, _) = test_client(ClientOptions {
        trust: Some(forger.decryption_ca().cert()),
        max_version: Some(SslVersion::TLS1_2),
        ..Default::default()
    });
    let mut h = Harness::new(client, &world.good_server(), &world.ctx, forger);
    exchange(&mut h, b"ping", b"pong");
    let facts = h.split.facts();
    assert_eq!(facts.client.version.as_deref(), Some("TLSv1.2"));
    assert_eq!(facts.upstream.version.as_deref(), Some("TLSv1.3"));
    assert_eq!(
        facts.client.cipher.as_deref(),
        Some("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"),
        "IANA name from tls::names"
    );
    assert_eq!(h.client.ssl().version_str(), "TLSv1.2");
}

#[test]
fn alpn_h2_goes_upstream_and_the_servers_choice_comes_back() {
    let world = World::new(&Profile::default());
    let forger = new_forger();
    let (client, _) = test_client(ClientOptions {
        trust: Some(forger.decryption_ca().cert()),
        alpn: Some(b"\x02h2\x08http/1.1"),
        ..Default::default()
    });
    let mut h = Harness::new(client, &world.good_server(), &world.ctx, forger);
    exchange(&mut h, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"settings");
    assert_eq!(h.server.ssl().selected_alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(h.client.ssl().selected_alpn_protocol(), Some(&b"h2"[..]));
    let facts = h.split.facts();
    assert_eq!(facts.upstream.alpn.as_deref(), Some("h2"));
    assert_eq!(facts.client.alpn.as_deref(), Some("h2"));

    // A server that only speaks HTTP/1.1: the client is told http/1.1, not h2.
    let server = origin_context(&[world.origin.good_leaf()], &world.origin.key, |b| {
        b.set_alpn_select_callback(|_, client| select_next_proto(b"\x08http/1.1", client).ok_or(AlpnError::NOACK));
    });
    let forger = new_forger();
    let (client, _) = test_client(ClientOptions {
        trust: Some(forger.decryption_ca().cert()),
        alpn: Some(b"\x02h2\x08http/1.1"),
        ..Default::default()
    });
    let mut h = Harness::new(client, &server, &world.ctx, forger);
    exchange(&mut h, b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 204 No Content\r\n\r\n");
    assert_eq!(h.client.ssl().selected_alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(h.split.facts().client.alpn.as_deref(), Some("http/1.1"));
}

/// Runs a session against `server` and returns it settled (the client never trusts more
/// than the decryption CA).
fn blocked_session(world: &World, server: &SslContext) -> Harness {
    let forger = new_forger();
    let (client, _) = test_client(ClientOptions {
        trust: Some(forger.decryption_ca().cert()),
        ..Default::default()
    });
    let mut h = Harness::new(client, server, &world.ctx, forger);
    h.client.outbox = b"GET / HTTP/1.1\r\n\r\n".to_vec();
    h.settle();
    h
}

fn assert_blocked_at_verify(h: &Harness, code: i32, depth: u32, reason: &str) {
    assert_eq!(h.split.stage(), Stage::UpstreamVerify, "{:?}", h.split);
    let verify = h.split.facts().verify.as_ref().expect("verification recorded");
    assert_eq!(
        (verify.code, verify.depth, verify.trusted),
        (code, depth, false),
        "{verify:?}"
    );
    assert_eq!(verify.reason, reason);
    assert!(
        matches!(h.split.outcome(), Some(SessionFailure::UpstreamUntrusted { code: c, .. }) if *c == code),
        "{:?}",
        h.split.outcome()
    );
    // The client got a fatal alert instead of a hang, and no forgery was made.
    assert!(h.client.failure.is_some(), "client handshake should fail");
    assert_eq!(h.client.received_alert(), Some(ALERT_ACCESS_DENIED));
    assert_eq!(h.split.facts().alert_sent_to_client, Some(ALERT_ACCESS_DENIED));
    assert_eq!(h.forger.stats().signed, 0);
    // The server saw a close (close_notify, then FIN), and no client byte.
    assert_eq!(h.server.read_end, Some(ReadEnd::CloseNotify));
    assert!(h.server.inbox.is_empty());
    assert!(h.split.is_finished());
}

#[test]
fn self_signed_server_is_blocked_with_code_18_depth_0() {
    let world = World::new(&Profile::default());
    let spec = Spec {
        sans: &[HOST],
        ..Spec::leaf(HOST)
    };
    let leaf = issue(&spec, &world.origin.key, None);
    let server = origin_context(&[leaf], &world.origin.key, |_| {});
    let h = blocked_session(&world, &server);
    assert_blocked_at_verify(&h, 18, 0, "self signed certificate");
    assert_eq!(h.split.facts().server_chain.len(), 1);
    let cert = &h.split.facts().server_chain[0];
    assert_eq!(cert.subject, cert.issuer);
}

#[test]
fn server_signed_by_an_unknown_root_is_blocked_with_code_20() {
    let world = World::new(&Profile::default());
    let stranger_key = ec_key();
    let stranger = issue(&Spec::ca("stranger root"), &stranger_key, None);
    let spec = Spec {
        sans: &[HOST],
        ..Spec::leaf(HOST)
    };
    let leaf = issue(&spec, &world.origin.key, Some((&stranger, &stranger_key)));
    let server = origin_context(&[leaf], &world.origin.key, |_| {});
    let h = blocked_session(&world, &server);
    assert_blocked_at_verify(&h, 20, 0, "unable to get local issuer certificate");
}

#[test]
fn expired_server_certificate_is_blocked_with_code_10() {
    let world = World::new(&Profile::default());
    let spec = Spec {
        sans: &[HOST],
        not_before: now() - 60 * DAY,
        not_after: now() - DAY,
        ..Spec::leaf(HOST)
    };
    let leaf = issue(
        &spec,
        &world.origin.key,
        Some((&world.origin.root, &world.origin.root_key)),
    );
    let server = origin_context(&[leaf], &world.origin.key, |_| {});
    let h = blocked_session(&world, &server);
    assert_blocked_at_verify(&h, 10, 0, "certificate has expired");
}

#[test]
fn certificate_for_another_name_is_blocked_with_code_62() {
    let world = World::new(&Profile::default());
    let spec = Spec {
        sans: &["elsewhere.test"],
        ..Spec::leaf("elsewhere.test")
    };
    let leaf = issue(
        &spec,
        &world.origin.key,
        Some((&world.origin.root, &world.origin.root_key)),
    );
    let server = origin_context(&[leaf], &world.origin.key, |_| {});
    let h = blocked_session(&world, &server);
    assert_blocked_at_verify(&h, 62, 0, "Hostname mismatch");
    assert_eq!(h.split.facts().verify.as_ref().unwrap().checked_name, HOST);
}

#[test]
fn server_with_only_a_sha1_suite_answers_handshake_failure() {
    let world = World::new(&Profile::default());
    let server = rsa_origin(&world, |b| {
        b.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap();
        b.set_cipher_list("ECDHE-RSA-AES128-SHA").unwrap();
    });
    let h = blocked_session(&world, &server);
    assert_eq!(h.split.stage(), Stage::UpstreamHandshake);
    assert!(
        matches!(h.split.outcome(), Some(SessionFailure::UpstreamHandshake { .. })),
        "{:?}",
        h.split.outcome()
    );
    assert_eq!(h.split.facts().alerts, [AlertFact::new(Peer::Server, true, 40)]);
    assert_eq!(h.split.facts().alerts[0].name, "handshake_failure");
    // The client is told the same: handshake_failure.
    assert_eq!(h.client.received_alert(), Some(40));
    assert!(h.split.is_finished());
}

#[test]
fn tls10_only_server_answers_protocol_version() {
    let world = World::new(&Profile::default());
    let server = rsa_origin(&world, |b| {
        b.set_min_proto_version(Some(SslVersion::TLS1)).unwrap();
        b.set_max_proto_version(Some(SslVersion::TLS1)).unwrap();
        b.set_cipher_list("ECDHE-RSA-AES128-SHA").unwrap();
    });
    let h = blocked_session(&world, &server);
    assert_eq!(h.split.stage(), Stage::UpstreamHandshake);
    assert_eq!(h.split.facts().alerts, [AlertFact::new(Peer::Server, true, 70)]);
    assert_eq!(h.client.received_alert(), Some(70));
}

#[test]
fn legacy_profile_reaches_a_tls10_server() {
    // What the policy issue will let an operator enable: TLS 1.0 needs SHA-1 and a CBC
    // suite, nothing else (no special BoringSSL build feature).
    let profile = Profile {
        min_version: 0x0301,
        allow_sha1: true,
        // The client offers nothing below TLS 1.2: only this makes loupe go lower upstream.
        legacy_servers: true,
        cipher_list: format!("{}:ECDHE-RSA-AES128-SHA", Profile::default().cipher_list),
        ..Profile::default()
    };
    let world = World::new(&profile);
    let server = rsa_origin(&world, |b| {
        b.set_min_proto_version(Some(SslVersion::TLS1)).unwrap();
        b.set_max_proto_version(Some(SslVersion::TLS1)).unwrap();
        b.set_cipher_list("ECDHE-RSA-AES128-SHA").unwrap();
    });
    let mut h = harness_trusting_loupe(&world, &server);
    exchange(&mut h, &pattern(100_000, 3), &pattern(100_000, 4));
    let facts = h.split.facts();
    assert_eq!(facts.upstream.version.as_deref(), Some("TLSv1"));
    assert_eq!(
        facts.upstream.cipher.as_deref(),
        Some("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA")
    );
    assert_eq!(facts.client.version.as_deref(), Some("TLSv1.3"));

    // And the default profile refuses TLS 1.0 unless SHA-1 is allowed.
    let refused = Profile {
        min_version: 0x0301,
        ..Profile::default()
    };
    assert!(matches!(refused.validate(), Err(ProfileError::LegacyNeedsSha1(_))));
}

#[test]
fn triple_des_is_reachable_only_when_named() {
    // BoringSSL keeps one 3DES suite, TLS_RSA_WITH_3DES_EDE_CBC_SHA (static RSA key
    // exchange), outside every default and alias but "3DES"/its own name.
    let world = World::new(&Profile {
        allow_sha1: true,
        // The client offers no 3DES suite: only this makes loupe offer it upstream.
        legacy_servers: true,
        cipher_list: format!("{}:DES-CBC3-SHA", Profile::default().cipher_list),
        ..Profile::default()
    });
    let server = rsa_origin(&world, |b| {
        b.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap();
        b.set_cipher_list("DES-CBC3-SHA").unwrap();
    });
    let mut h = harness_trusting_loupe(&world, &server);
    exchange(&mut h, b"old", b"server");
    assert_eq!(
        h.split.facts().upstream.cipher.as_deref(),
        Some("TLS_RSA_WITH_3DES_EDE_CBC_SHA")
    );
}

#[test]
fn forward_untrust_presents_a_forgery_from_the_untrusted_ca() {
    let profile = Profile {
        untrusted: UntrustedAction::ForwardUntrust,
        ..Profile::default()
    };
    let world = World::new(&profile);
    let spec = Spec {
        sans: &[HOST],
        ..Spec::leaf(HOST)
    };
    let leaf = issue(&spec, &world.origin.key, None);
    let server = origin_context(&[leaf], &world.origin.key, |_| {});

    // A client trusting the decryption CA refuses the forgery.
    let mut h = harness_trusting_loupe(&world, &server);
    h.settle();
    assert!(h.client.failure.is_some());
    assert_eq!(h.split.facts().verdict, Some(Verdict::Untrusted));
    assert_eq!(h.split.facts().verify.as_ref().map(|v| v.code), Some(18));
    assert_eq!(h.split.stage(), Stage::ClientHandshake);
    assert_eq!(h.split.facts().alerts, [AlertFact::new(Peer::Client, true, 48)]);
    let untrusted_subject = name_line(h.forger.untrusted_ca().cert().subject_name());

    // A client that verifies nothing completes, and sees the untrusted CA as issuer.
    let forger = new_forger();
    let untrusted_subject_2 = name_line(forger.untrusted_ca().cert().subject_name());
    let (client, _) = test_client(ClientOptions::default());
    let mut h = Harness::new(client, &server, &world.ctx, forger);
    exchange(&mut h, b"hello", b"world");
    let presented = h.client.ssl().peer_certificate().unwrap();
    assert_eq!(cert_fact(&presented).issuer, untrusted_subject_2);
    assert_ne!(
        cert_fact(&presented).issuer,
        name_line(h.forger.decryption_ca().cert().subject_name())
    );
    assert!(untrusted_subject.contains("UNTRUSTED"));
    assert_eq!(h.split.facts().verdict, Some(Verdict::Untrusted));
    assert!(!h.split.facts().verify.as_ref().unwrap().trusted);
}

#[test]
fn client_that_distrusts_the_decryption_ca_sends_unknown_ca() {
    let world = World::new(&Profile::default());
    // Another CA (with another name: a CA of the same name would fail the signature
    // check instead, decrypt_error).
    let stranger = issue(&Spec::ca("some other CA"), &ec_key(), None);
    let forger = new_forger();
    let (client, _) = test_client(ClientOptions {
        trust: Some(&stranger),
        ..Default::default()
    });
    let mut h = Harness::new(client, &world.good_server(), &world.ctx, forger);
    h.client.outbox = b"secret".to_vec();
    h.settle();
    assert_eq!(h.split.stage(), Stage::ClientHandshake);
    assert_eq!(h.split.facts().alerts, [AlertFact::new(Peer::Client, true, 48)]);
    assert!(
        matches!(h.split.outcome(), Some(SessionFailure::ClientHandshake { .. })),
        "{:?}",
        h.split.outcome()
    );
    assert_eq!(h.split.facts().verdict, Some(Verdict::Trusted));
    // The server leg was closed politely; nothing of the client reached it.
    assert_eq!(h.server.read_end, Some(ReadEnd::CloseNotify));
    assert!(h.server.inbox.is_empty());
    assert!(h.split.is_finished());
}

#[test]
fn second_session_resumes_on_both_legs() {
    let world = World::new(&Profile::default());
    let server = world.good_server();
    let mut forger = new_forger();
    let decryption = forger.decryption_ca().cert().to_owned();
    let mut client_session = None;
    for round in 0..2 {
        let (client, sessions) = test_client(ClientOptions {
            trust: Some(&decryption),
            session: client_session.clone(),
            ..Default::default()
        });
        let mut h = Harness::new(client, &server, &world.ctx, forger);
        exchange(&mut h, b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n");
        let facts = h.split.facts().clone();
        if round == 0 {
            assert!(!facts.upstream_resumed && !facts.client_resumed);
            assert!(world.ctx.cached_sessions() == 1, "the upstream ticket is cached");
        } else {
            assert!(h.server.ssl().session_reused(), "origin resumed");
            assert!(h.client.ssl().session_reused(), "client resumed");
            assert!(facts.upstream_resumed && facts.client_resumed, "{facts:?}");
            // A resumed upstream verifies nothing; the facts come from the first session.
            let verify = facts.verify.as_ref().unwrap();
            assert!(verify.trusted && verify.code == 0);
            assert_eq!(facts.server_chain.len(), 1, "the chain is known on resumption");
            // The forgery was made once and reused.
            assert_eq!(h.forger.stats().signed, 1);
        }
        client_session = sessions.lock().unwrap().last().cloned();
        assert!(client_session.is_some(), "the client got a ticket");
        forger = h.forger;
    }
}

#[test]
fn untrusted_ticket_never_resumes_as_trusted() {
    // A client that resumed a session born under the untrusted forgery must not get a
    // trusted-looking resumption; with separate ticket keys per verdict it cannot.
    let profile = Profile {
        untrusted: UntrustedAction::ForwardUntrust,
        ..Profile::default()
    };
    let world = World::new(&profile);
    let leaf = issue(
        &Spec {
            sans: &[HOST],
            ..Spec::leaf(HOST)
        },
        &world.origin.key,
        None,
    );
    let bad_server = origin_context(&[leaf], &world.origin.key, |_| {});
    let (client, sessions) = test_client(ClientOptions::default());
    let mut h = Harness::new(client, &bad_server, &world.ctx, new_forger());
    exchange(&mut h, b"a", b"b");
    let ticket = sessions.lock().unwrap().last().cloned().expect("ticket");
    let forger = h.forger;
    let (client, _) = test_client(ClientOptions {
        session: Some(ticket),
        ..Default::default()
    });
    let mut h = Harness::new(client, &world.good_server(), &world.ctx, forger);
    exchange(&mut h, b"a", b"b");
    assert_eq!(h.split.facts().verdict, Some(Verdict::Trusted));
    assert!(!h.split.facts().client_resumed);
}

#[test]
fn close_notify_and_bare_fin_are_passed_on_as_they_came() {
    let world = World::new(&Profile::default());
    let mut h = harness_trusting_loupe(&world, &world.good_server());
    h.client.outbox = b"request".to_vec();
    h.server.outbox = b"partial respon".to_vec();
    h.server.fin_when_sent = true;
    h.settle();
    assert_eq!(h.client.inbox, b"partial respon");
    assert_eq!(h.client.read_end, Some(ReadEnd::Eof), "a truncation stays a truncation");
    assert_eq!(h.split.facts().server_end, Some(LegEnd::Eof));
    assert!(h.split.wants_close_client());
    // Half-close: the client can still talk to the server, then closes cleanly.
    h.client.outbox.extend_from_slice(b" and more");
    h.client.close_when_sent = true;
    h.settle();
    assert_eq!(h.server.inbox, b"request and more");
    assert_eq!(h.server.read_end, Some(ReadEnd::CloseNotify));
    assert_eq!(h.split.facts().client_end, Some(LegEnd::CloseNotify));
    assert!(h.split.is_finished());
    assert!(h.split.outcome().is_none());
}

#[test]
fn buffers_stay_bounded_when_the_client_does_not_read() {
    let world = World::new(&Profile::default());
    let mut h = harness_trusting_loupe(&world, &world.good_server());
    h.client.outbox = b"GET /big".to_vec();
    h.settle();
    assert_eq!(h.split.stage(), Stage::Established);
    let response = pattern(2 << 20, 9);
    h.server.outbox = response.clone();
    h.deliver_to_client = false;
    h.settle();
    assert!(h.split.pending_to_client().len() <= BUFFER_CAP);
    assert!(h.server.sent < response.len(), "the server was held back");
    let full = h.split.push_from_server(&[0x17; 100]);
    assert_eq!(full, 0, "a full session takes nothing more");
    h.deliver_to_client = true;
    h.settle();
    assert!(h.client.inbox == response, "all bytes arrive once the client reads");
}

#[test]
fn push_takes_only_what_fits() {
    let world = World::new(&Profile::default());
    let (client, _) = test_client(ClientOptions::default());
    let mut h = Harness::new(client, &world.good_server(), &world.ctx, new_forger());
    // Before the upstream handshake the client's bytes only queue.
    let taken = h.split.push_from_client(&vec![0x16; 3 * BUFFER_CAP]);
    assert!(taken < BUFFER_CAP && taken > 0, "took {taken}");
    assert_eq!(h.split.push_from_client(b"more"), 0);
}

#[test]
fn garbage_from_the_server_fails_the_handshake_without_panicking() {
    let world = World::new(&Profile::default());
    for seed in 0..32u8 {
        let (client, _) = test_client(ClientOptions::default());
        let mut h = Harness::new(client, &world.good_server(), &world.ctx, new_forger());
        let mut certs = new_forger();
        let mut inspector = PlaintextCounter::default();
        h.split.advance(&mut certs, &mut inspector);
        let hello_len = h.split.pending_to_server().len();
        assert!(hello_len > 0, "ClientHello to the server");
        h.split.consume_to_server(hello_len);
        let mut garbage = pattern(usize::from(seed) * 97 + 1, seed);
        if seed % 2 == 0 {
            // Looks like a handshake record, then nonsense.
            garbage.splice(0..0, [0x16, 0x03, 0x03, 0x00, 0x40]);
        }
        h.split.push_from_server(&garbage);
        h.split.server_closed();
        h.split.advance(&mut certs, &mut inspector);
        assert_eq!(h.split.stage(), Stage::UpstreamHandshake, "seed {seed}");
        assert!(h.split.outcome().is_some(), "seed {seed}");
        assert!(h.split.facts().alert_sent_to_client.is_some());
        // Whatever alert BoringSSL queued for the server goes out, then both sides close.
        h.split.consume_to_server(h.split.pending_to_server().len());
        h.split.consume_to_client(h.split.pending_to_client().len());
        assert!(h.split.is_finished(), "seed {seed}");
    }
}

#[test]
fn server_hanging_up_during_the_handshake_is_told_apart() {
    let world = World::new(&Profile::default());
    let (client, _) = test_client(ClientOptions::default());
    let mut h = Harness::new(client, &world.good_server(), &world.ctx, new_forger());
    let mut certs = new_forger();
    let mut inspector = PlaintextCounter::default();
    h.split.advance(&mut certs, &mut inspector);
    h.split.server_closed();
    h.split.advance(&mut certs, &mut inspector);
    assert_eq!(
        h.split.outcome(),
        Some(&SessionFailure::PeerClosed {
            peer: Peer::Server,
            stage: Stage::UpstreamHandshake
        })
    );
    assert_eq!(h.split.facts().alert_sent_to_client, Some(ALERT_HANDSHAKE_FAILURE));
}

#[test]
fn alpn_names_survive_the_parsers_escaping() {
    let names = vec!["h2".to_string(), "a\\x5cb\\x00".to_string(), "bad\\x4".to_string()];
    assert_eq!(alpn_wire(&names), b"\x02h2\x04a\\b\x00");
    assert_eq!(escape_protocol(b"a\\b\x00"), "a\\x5cb\\x00");
    assert_eq!(find_alpn(b"\x02h2\x08http/1.1", b"http/1.1"), Some(&b"http/1.1"[..]));
    assert_eq!(find_alpn(b"\x09h2", b"h2"), None, "truncated list");
    assert_eq!(find_alpn(b"", b"h2"), None);
}

#[test]
fn rfc3339_dates() {
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(19_723), (2024, 1, 1));
    assert_eq!(civil_from_days(-1), (1969, 12, 31));
    let t = Asn1Time::from_unix(1_709_210_096).unwrap();
    assert_eq!(rfc3339(&t), "2024-02-29T12:34:56Z");
}

#[test]
fn profile_validation_speaks_plainly() {
    assert!(Profile::default().validate().is_ok());
    let p = Profile {
        min_version: 0x0304,
        max_version: 0x0303,
        ..Profile::default()
    };
    assert_eq!(
        p.validate().unwrap_err().to_string(),
        "the minimum TLS version (TLS 1.3) is above the maximum (TLS 1.2)"
    );
    let p = Profile {
        max_version: 0x0305,
        ..Profile::default()
    };
    assert!(matches!(p.validate(), Err(ProfileError::Version(0x0305))));
    let p = Profile {
        cipher_list: "NOT-A-CIPHER".to_string(),
        ..Profile::default()
    };
    let store = X509StoreBuilder::new().unwrap().build();
    assert!(matches!(
        SplitTlsContext::new(&p, store),
        Err(ProfileError::UnknownCipher(name)) if name == "NOT-A-CIPHER"
    ));
    // One misspelt name among good ones is not silently dropped.
    let p = Profile {
        cipher_list: "ECDHE-RSA-AES128-SHA:BOGUS-CIPHER".to_string(),
        allow_sha1: true,
        ..Profile::default()
    };
    let store = X509StoreBuilder::new().unwrap().build();
    assert!(matches!(
        SplitTlsContext::new(&p, store),
        Err(ProfileError::UnknownCipher(name)) if name == "BOGUS-CIPHER"
    ));
    let p = Profile {
        sigalgs: Some("RSA+SHA1".to_string()),
        ..Profile::default()
    };
    assert!(matches!(p.validate(), Err(ProfileError::Sha1Sigalgs)));
}

#[test]
fn sessions_and_contexts_can_move_between_threads() {
    fn assert_send<T: Send>() {}
    fn assert_sync<T: Sync>() {}
    assert_send::<SplitTls>();
    assert_send::<SplitTlsContext>();
    assert_sync::<SplitTlsContext>();
}

#[test]
fn a_plaintext_alert_sent_last_is_recognised_across_pushes() {
    let mut wire = Wire::default();
    assert_eq!(wire.plaintext_alert(), None);
    // An encrypted record, then the alert split over two pushes.
    wire.note_tail(&[23, 3, 3, 0, 3, 9, 9, 9]);
    wire.note_tail(&[21, 3, 3]);
    wire.note_tail(&[0, 2, 2, 48]);
    assert_eq!(wire.plaintext_alert(), Some((true, 48)));
    // Anything after it means it was not the last word.
    wire.note_tail(&[1]);
    assert_eq!(wire.plaintext_alert(), None);
    // A warning-level close_notify.
    wire.note_tail(&[21, 3, 1, 0, 2, 1, 0]);
    assert_eq!(wire.plaintext_alert(), Some((false, 0)));
}

/// Runs the wide-offer probe against `server`, moving bytes by hand.
fn probe_against(server: &SslContext) -> crate::tls::probe::ProbeOutcome {
    use crate::tls::probe::{ProbeContext, ProbeTls};
    let context = ProbeContext::new().expect("probe context");
    let mut probe = ProbeTls::start(&context, Some(HOST)).expect("probe");
    let mut origin = SslStream::new(Ssl::new(server).unwrap(), Wire::default()).unwrap();
    for _ in 0..50 {
        if let Some(outcome) = probe.advance() {
            return outcome.clone();
        }
        let n = origin.get_mut().accept_incoming(probe.pending_to_server());
        probe.consume_to_server(n);
        let _ = origin.accept();
        let n = probe.push_from_server(origin.get_ref().outgoing_bytes());
        origin.get_mut().consume_outgoing(n);
    }
    panic!("the probe learnt nothing in 50 rounds");
}

#[test]
fn probe_learns_the_sha1_suite_a_server_insists_on() {
    let world = World::new(&Profile::default());
    let server = rsa_origin(&world, |b| {
        b.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap();
        b.set_cipher_list("ECDHE-RSA-AES128-SHA").unwrap();
    });
    let outcome = probe_against(&server);
    assert_eq!(
        outcome,
        crate::tls::probe::ProbeOutcome::Picked(crate::tls::diagnosis::ProbeResult {
            version: 0x0303,
            cipher: 0xc013
        })
    );
}

#[test]
fn probe_learns_that_a_server_speaks_only_tls10() {
    let world = World::new(&Profile::default());
    let server = rsa_origin(&world, |b| {
        b.set_min_proto_version(Some(SslVersion::TLS1)).unwrap();
        b.set_max_proto_version(Some(SslVersion::TLS1)).unwrap();
        b.set_cipher_list("ECDHE-RSA-AES128-SHA").unwrap();
    });
    match probe_against(&server) {
        crate::tls::probe::ProbeOutcome::Picked(result) => assert_eq!(result.version, 0x0301),
        other => panic!("expected a TLS 1.0 pick, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Record framing of what BoringSSL reads

/// Records of the given body lengths, each with a valid header.
fn record_stream(bodies: &[usize]) -> (Vec<u8>, Vec<usize>) {
    let (mut stream, mut ends) = (Vec::new(), Vec::new());
    for (i, &len) in bodies.iter().enumerate() {
        stream.extend_from_slice(&[23, 3, 3]);
        stream.extend_from_slice(&(len as u16).to_be_bytes());
        stream.extend((0..len).map(|j| (i + j) as u8));
        ends.push(stream.len());
    }
    (stream, ends)
}

#[test]
fn the_record_cursor_says_ready_exactly_when_a_record_can_be_finished() {
    let bodies = [0, 1, 17, 5, 300, MAX_RECORD_BODY, 2, 16 * 1024 + 16, 0, 40];
    let (stream, ends) = record_stream(&bodies);
    let mut rng = crate::test_rng::XorShift(0x6a09_e667_f3bc_c909u64);
    for round in 0..200 {
        let mut wire = Wire::default();
        let (mut queued_to, mut scratch) = (0, vec![0u8; 20_000]);
        while queued_to < stream.len() || !wire.incoming.is_empty() {
            // The peer delivers a chunk of any size; BoringSSL then takes a chunk of any size.
            let deliver = (rng.next() as usize % 7_000).min(stream.len() - queued_to);
            queued_to += wire.accept_incoming(&stream[queued_to..queued_to + deliver]);
            let taken_to = queued_to - wire.incoming.len();
            // Oracle: the first record end after what was taken is within what is queued.
            let next_end = ends.iter().copied().find(|&end| end > taken_to);
            let expected = next_end.is_some_and(|end| end <= queued_to);
            assert_eq!(
                wire.record_ready(),
                expected,
                "round {round}: taken {taken_to}, queued {queued_to}, next record end {next_end:?}"
            );
            let take = rng.next() as usize % 20_000;
            let _ = wire.read(&mut scratch[..take]);
        }
    }
}

#[test]
fn the_record_cursor_lets_every_read_through_once_the_bytes_are_not_tls() {
    let mut wire = Wire::default();
    let (stream, _) = record_stream(&[10]);
    wire.accept_incoming(&stream);
    wire.accept_incoming(b"GET / HTTP/1.1\r\n");
    let mut scratch = [0u8; 64];
    assert_eq!(wire.read(&mut scratch[..stream.len()]).expect("queued"), stream.len());
    // "GET /" is no record header: BoringSSL is left to reject it.
    assert!(wire.record_ready());
    wire.read_exact(&mut scratch[..6]).expect("queued");
    assert!(wire.records.lost);
    assert!(wire.record_ready());
}

#[test]
fn the_record_cursor_lets_a_read_see_the_end_of_stream() {
    let mut wire = Wire::default();
    let (stream, _) = record_stream(&[100]);
    wire.accept_incoming(&stream[..50]);
    assert!(!wire.record_ready());
    wire.peer_closed();
    assert!(wire.record_ready());
}

/// Bytes of queue capacity the session holds on both legs' wires.
fn wire_capacity(split: &SplitTls) -> usize {
    [split.upstream.wire(), split.client.wire()]
        .iter()
        .map(|wire| wire.incoming.buf.capacity() + wire.outgoing.buf.capacity())
        .sum()
}

/// The same, and the plaintext queues.
fn queue_capacity(split: &SplitTls) -> usize {
    wire_capacity(split) + split.to_server.pending.capacity() + split.to_client.pending.capacity()
}

#[test]
fn an_idle_session_holds_no_queue_memory_and_goes_on() {
    let world = World::new(&Profile::default());
    let mut h = harness_trusting_loupe(&world, &world.good_server());
    h.settle();
    assert_eq!(h.split.stage(), Stage::Established);
    // The handshakes' flights (several KB over both legs) were freed once drained.
    assert_eq!(wire_capacity(&h.split), 0, "handshake queues kept after the handshake");

    // A burst grows the queues again; released when idle, the session carries on intact.
    let request = pattern(200_000, 3);
    let response = pattern(300_000, 4);
    h.client.outbox = request.clone();
    h.server.outbox = response.clone();
    h.settle();
    assert!(h.server.inbox == request && h.client.inbox == response);
    assert!(queue_capacity(&h.split) > 0, "the burst left no queue to release");
    h.split.release_idle_buffers();
    assert_eq!(queue_capacity(&h.split), 0);
    for peer in [&mut h.client, &mut h.server] {
        peer.inbox.clear();
        peer.outbox.clear();
        peer.sent = 0;
    }
    exchange(
        &mut h,
        b"GET /again HTTP/1.1\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
    );
}

/// One session to `server` through `world`'s context: the hello loupe sent upstream, the
/// group the upstream leg negotiated and whether the server asked for another share.
fn upstream_key_exchange(world: &World, server: &SslContext, forger: Forger) -> (ClientHello, String, bool, Forger) {
    let (client, _) = test_client(ClientOptions {
        trust: Some(forger.decryption_ca().cert()),
        ..Default::default()
    });
    let mut h = Harness::new(client, server, &world.ctx, forger);
    h.split.advance(&mut h.forger, &mut h.inspector);
    let hello = ClientHelloReader::new()
        .push(h.split.pending_to_server())
        .expect("the upstream hello parses")
        .expect("the upstream hello is whole");
    exchange(&mut h, b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 204 No Content\r\n\r\n");
    let upstream = &h.split.facts().upstream;
    let group = upstream.group.clone().expect("a group was negotiated");
    (hello, group, upstream.hello_retry, h.forger)
}

fn server_with_groups(world: &World, groups: &str) -> SslContext {
    origin_context(&[world.origin.good_leaf()], &world.origin.key, |builder| {
        builder.set_curves_list(groups).unwrap();
    })
}

const X25519: u16 = 0x001d;
const X25519_MLKEM768: u16 = 0x11ec;

#[test]
fn a_server_that_declines_the_post_quantum_share_is_sent_only_its_group_next_time() {
    let world = World::new(&Profile::default());
    let classical = server_with_groups(&world, "X25519:P-256");
    let (first, group, retry, forger) = upstream_key_exchange(&world, &classical, new_forger());
    assert_eq!(first.key_share_groups, [X25519_MLKEM768, X25519]);
    assert_eq!((group.as_str(), retry), ("X25519", false));

    let (second, group, retry, _) = upstream_key_exchange(&world, &classical, forger);
    assert_eq!(second.key_share_groups, [X25519], "no ML-KEM key pair made for nothing");
    assert_eq!(second.groups, first.groups, "the post-quantum group is still offered");
    assert_eq!((group.as_str(), retry), ("X25519", false));
}

#[test]
fn a_server_that_takes_the_post_quantum_share_keeps_getting_it() {
    let world = World::new(&Profile::default());
    let server = world.good_server();
    let mut forger = new_forger();
    for round in 0..3 {
        let (hello, group, retry, next) = upstream_key_exchange(&world, &server, forger);
        forger = next;
        assert!(hello.key_share_groups.contains(&X25519_MLKEM768), "round {round}");
        assert_eq!((group.as_str(), retry), ("X25519MLKEM768", false), "round {round}");
    }
}

#[test]
fn a_server_that_gained_post_quantum_asks_for_its_share_and_gets_it_again_after() {
    let world = World::new(&Profile::default());
    let (_, group, _, forger) = upstream_key_exchange(&world, &server_with_groups(&world, "X25519"), new_forger());
    assert_eq!(group, "X25519");

    // The same server name and port, now insisting on the hybrid.
    let upgraded = server_with_groups(&world, "X25519MLKEM768");
    let (predicted, group, retry, forger) = upstream_key_exchange(&world, &upgraded, forger);
    assert_eq!(predicted.key_share_groups, [X25519]);
    assert_eq!(
        (group.as_str(), retry),
        ("X25519MLKEM768", true),
        "one HelloRetryRequest"
    );

    let (after, group, retry, _) = upstream_key_exchange(&world, &upgraded, forger);
    assert!(
        after.key_share_groups.contains(&X25519_MLKEM768),
        "{:04x?}",
        after.key_share_groups
    );
    assert_eq!((group.as_str(), retry), ("X25519MLKEM768", false));
}

#[test]
fn a_learned_group_is_checked_again_after_its_predictions() {
    let world = World::new(&Profile::default());
    let classical = server_with_groups(&world, "X25519");
    let mut forger = new_forger();
    let mut full_hellos = Vec::new();
    for round in 0..=2 * (PREDICTIONS_PER_LEARNING + 1) {
        let (hello, group, _, next) = upstream_key_exchange(&world, &classical, forger);
        forger = next;
        assert_eq!(group, "X25519");
        if hello.key_share_groups.contains(&X25519_MLKEM768) {
            full_hellos.push(round);
        }
    }
    let period = PREDICTIONS_PER_LEARNING + 1;
    assert_eq!(full_hellos, [0, period, 2 * period]);
}

/// A learned group is used only by hellos that can send its share alone: a client that
/// does not offer the group takes no prediction from the next one that does.
#[test]
fn a_hello_that_cannot_send_the_learned_share_uses_no_prediction() {
    let ctx = SplitTlsContext::new(&Profile::default(), X509StoreBuilder::new().unwrap().build())
        .expect("the default profile");
    let hello = |groups: &[u16]| ClientHello {
        legacy_version: 0x0303,
        supported_versions: vec![0x0304, 0x0303],
        cipher_suites: vec![0x1301, 0x1302, 0xc02b, 0xc02f],
        groups: groups.to_vec(),
        signature_algorithms: vec![0x0403, 0x0804, 0x0401],
        key_share_groups: vec![groups[0]],
        ..ClientHello::default()
    };
    let key: SessionKey = ("server.lab".to_string(), 443);
    let mut memory = UpstreamMemory {
        sessions: PerServer::new(4),
        groups: PerServer::new(4),
    };
    // The server chose P-256 over the post-quantum share.
    memory.learn_group(&key, 0x0017, true);
    let left = |memory: &UpstreamMemory| memory.groups.entries[&key].predictions_left;

    let mut without_p256 = ctx.profile_offer().for_client(&hello(&[0x001d])).expect("offer");
    assert!(without_p256.sends_post_quantum_share());
    let before = without_p256.clone();
    memory.predict_key_share(&key, &mut without_p256);
    assert_eq!(
        without_p256, before,
        "a hello without P-256 cannot send its share alone"
    );
    assert_eq!(left(&memory), PREDICTIONS_PER_LEARNING, "and used no prediction");

    let mut with_p256 = ctx
        .profile_offer()
        .for_client(&hello(&[0x001d, 0x0017]))
        .expect("offer");
    memory.predict_key_share(&key, &mut with_p256);
    assert_eq!(with_p256.key_shares, Some(vec![0x0017]));
    assert_eq!(left(&memory), PREDICTIONS_PER_LEARNING - 1);
}
