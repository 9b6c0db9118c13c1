//! The split-TLS session: loupe as the TLS client of the server and as the TLS server of
//! the client, with the plaintext passing through an inspection hook in between.
//!
//! Sans-IO. The caller (the worker's TCP glue) hands in the ciphertext each TCP endpoint
//! received and takes out the ciphertext each endpoint must send; nothing here touches a
//! socket or a clock. Both TLS engines are BoringSSL, run over in-memory byte queues.
//!
//! The life of a session:
//!
//! 1. [`SplitTls::start`] with the parsed ClientHello and every byte the client sent so
//!    far. The upstream client takes the client's SNI and ALPN list; versions, suites,
//!    groups, key shares and signature algorithms are the [`Profile`]'s narrowed by the
//!    client's hello, never weaker than it ([`super::offer`]). It asks for a stapled OCSP
//!    response; a response saying revoked makes the server untrusted (code 23).
//! 2. Upstream handshake ([`Stage::UpstreamHandshake`]). The server's chain is verified
//!    against the trust store and its name against the SNI (the server IP without SNI);
//!    BoringSSL is told to finish the handshake whatever the result, and the first error
//!    (OpenSSL code, depth) is recorded, so the decision is ours.
//! 3. Verdict ([`Stage::UpstreamVerify`]). Trusted: a forgery signed by the decryption CA.
//!    Untrusted: blocked (default; the client gets a fatal `access_denied` alert) or, with
//!    [`UntrustedAction::ForwardUntrust`], a forgery signed by the untrusted CA. Never a
//!    trusted forgery for an untrusted server.
//! 4. Client handshake ([`Stage::ClientHandshake`]): a BoringSSL server is created now, when
//!    the certificate is known, and fed the buffered ClientHello. It offers the ALPN the
//!    server selected.
//! 5. [`Stage::Established`]: plaintext both ways through the [`Inspector`]. close_notify is
//!    passed on as close_notify, a bare TCP FIN as a bare FIN (a truncation stays visible).
//!
//! Every buffer is bounded ([`BUFFER_CAP`] per direction and side): `push_*` take only what
//! fits, and plaintext is pulled from one leg only while the other leg's outgoing queue
//! has room for a whole record, so a slow side closes the other side's TCP window.
//!
//! Resumption works on both legs: upstream sessions (tickets or IDs) are cached per
//! (server name, port) together with their verification result; the client leg issues
//! tickets from two BoringSSL contexts, one per [`Verdict`], so a session born under an
//! untrusted forgery can never be resumed as a trusted one (nor the other way round).
//! Beside each server's session, the group it chose over a post-quantum key share is
//! remembered, so the next hellos to it skip making a share it would not take.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use boring::asn1::{Asn1Time, Asn1TimeRef};
use boring::error::ErrorStack;
use boring::ex_data::Index;
use boring::hash::MessageDigest;
use boring::ssl::{
    AlpnError, ErrorCode, Ssl, SslContext, SslContextBuilder, SslMethod, SslMode, SslOptions, SslRef, SslSession,
    SslSessionCacheMode, SslSignatureAlgorithm, SslStream, SslVerifyMode, SslVersion,
};
use boring::x509::store::X509Store;
use boring::x509::{X509NameRef, X509Ref, X509StoreContext, X509VerifyError};

use super::client_hello::ClientHello;
use super::forge::{CertSource, ForgedCert, Verdict};
use super::keylog::{self, KeyLog};
use super::names;
use super::ocsp::{check_staple, StapleVerdict};
use super::offer::{is_post_quantum, signature_algorithm_id, ProfileOffer, UpstreamOffer};
use super::record::{AlertFact, CertFact, NegotiatedFact, OcspFact, OcspStatus, Peer, Stage, VerifyFact};
use super::trust::PinnedLeafs;
pub use crate::inspect::{Inspector, Pass, Relay, SessionEnd};

/// Cap of each of the four ciphertext queues (in and out, client and server side).
pub const BUFFER_CAP: usize = 64 * 1024;
/// Largest plaintext pulled from one leg at a time: one maximal TLS record.
const READ_CHUNK: usize = 16 * 1024;
/// Upper bound of what sealing `READ_CHUNK` bytes adds: record headers, explicit IV, MAC,
/// CBC padding, and a second record for the TLS 1.0 1/n-1 split.
const RECORD_EXPANSION: usize = 1024;
/// Servers whose session (for resumption) and chosen group (for the key share) are
/// remembered, per context.
pub const DEFAULT_SESSION_CACHE: usize = 4096;

/// `ERR_LIB_SSL`: errors from BoringSSL's TLS code.
const ERR_LIB_SSL: i32 = 16;
/// BoringSSL reports a fatal alert received from the peer as reason 1000 + description.
const SSL_AD_REASON_OFFSET: i32 = 1000;

/// Alert loupe sends a client whose session it refuses by policy or because the server
/// failed validation: "a valid certificate was received, but when access control was
/// applied, the sender decided not to proceed" (RFC 5246 7.2.2); browsers show it as
/// ERR_SSL_PROTOCOL_ERROR / SSL_ERROR_ACCESS_DENIED_ALERT rather than waiting forever.
pub const ALERT_ACCESS_DENIED: u8 = 49;
/// Alert sent to the client when the server's handshake failed without an alert of its own.
pub const ALERT_HANDSHAKE_FAILURE: u8 = 40;
/// Alert sent to the client when loupe itself could not go on (forgery, setup).
pub const ALERT_INTERNAL_ERROR: u8 = 80;

const TLS1_0: u16 = 0x0301;
const TLS1_2: u16 = 0x0303;
const TLS1_3: u16 = 0x0304;

// ---------------------------------------------------------------------------------------
// Profile and contexts
// ---------------------------------------------------------------------------------------

/// Post-quantum first (harvest-now-decrypt-later), then what every client speaks. P-521
/// too, so no client that offers it loses it upstream.
pub const DEFAULT_GROUPS: &str = "X25519MLKEM768:X25519:P-256:P-384:P-521";

/// Signature algorithms offered upstream when the profile names none: BoringSSL's
/// verification defaults without SHA-1, SHA-1 last when the profile allows it.
fn default_signature_algorithms(allow_sha1: bool) -> Vec<u16> {
    let mut prefs = vec![
        0x0403, // ecdsa_secp256r1_sha256
        0x0804, // rsa_pss_rsae_sha256
        0x0401, // rsa_pkcs1_sha256
        0x0503, // ecdsa_secp384r1_sha384
        0x0805, // rsa_pss_rsae_sha384
        0x0501, // rsa_pkcs1_sha384
        0x0603, // ecdsa_secp521r1_sha512
        0x0806, // rsa_pss_rsae_sha512
        0x0601, // rsa_pkcs1_sha512
        0x0807, // ed25519
    ];
    if allow_sha1 {
        prefs.extend([0x0201, 0x0203]); // rsa_pkcs1_sha1, ecdsa_sha1
    }
    prefs
}

/// What to do when the server's chain or name does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UntrustedAction {
    /// Refuse the session: the client gets a fatal access_denied alert.
    #[default]
    Block,
    /// Present a forgery signed by the untrusted CA, so the client shows its own warning.
    ForwardUntrust,
}

/// The decryption profile: what loupe accepts on both legs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// Lowest TLS version, as on the wire (0x0301 = TLS 1.0 … 0x0304 = TLS 1.3).
    pub min_version: u16,
    pub max_version: u16,
    /// Suites for TLS 1.2 and older, OpenSSL syntax. (TLS 1.3 suites are BoringSSL's
    /// fixed AEAD set: AES-GCM and ChaCha20-Poly1305.)
    pub cipher_list: String,
    /// Key exchange groups in preference order, BoringSSL names
    /// (`X25519MLKEM768:X25519:P-256:P-384:P-521`).
    pub groups: String,
    /// Signature algorithms offered upstream, OpenSSL syntax (`ECDSA+SHA256:RSA-PSS+SHA256`).
    /// `None`: BoringSSL's list, without SHA-1 unless `allow_sha1`.
    pub sigalgs: Option<String>,
    /// SHA-1 in suites (`…-SHA`) and handshake signatures. Required for TLS 1.0/1.1.
    pub allow_sha1: bool,
    /// Offer servers the whole profile even below the client's hello (legacy servers);
    /// otherwise the upstream hello is never weaker than the client's.
    pub legacy_servers: bool,
    pub untrusted: UntrustedAction,
    /// An expired or not-yet-valid server certificate (an untrusted case of its own).
    pub expired: UntrustedAction,
}

impl Default for Profile {
    /// TLS 1.2–1.3, ECDHE with AES-GCM or ChaCha20-Poly1305 only, the post-quantum hybrid
    /// X25519MLKEM768 first, then X25519 and the NIST curves; no SHA-1, untrusted servers
    /// blocked.
    fn default() -> Self {
        Profile {
            min_version: TLS1_2,
            max_version: TLS1_3,
            cipher_list: [
                "ECDHE-ECDSA-AES128-GCM-SHA256",
                "ECDHE-RSA-AES128-GCM-SHA256",
                "ECDHE-ECDSA-AES256-GCM-SHA384",
                "ECDHE-RSA-AES256-GCM-SHA384",
                "ECDHE-ECDSA-CHACHA20-POLY1305",
                "ECDHE-RSA-CHACHA20-POLY1305",
            ]
            .join(":"),
            groups: DEFAULT_GROUPS.to_string(),
            sigalgs: None,
            allow_sha1: false,
            legacy_servers: false,
            untrusted: UntrustedAction::Block,
            expired: UntrustedAction::Block,
        }
    }
}

impl Profile {
    /// The engine's profile for a configured one (versions already validated there).
    pub fn from_config(config: &loupe_control::config::Profile) -> Profile {
        let defaults = Profile::default();
        let version = |text: &str, fallback| loupe_control::config::Profile::wire_version(text).unwrap_or(fallback);
        Profile {
            min_version: version(&config.min_version, defaults.min_version),
            max_version: version(&config.max_version, defaults.max_version),
            cipher_list: if config.ciphers.is_empty() {
                defaults.cipher_list
            } else {
                config.ciphers.join(":")
            },
            groups: if config.groups.is_empty() {
                defaults.groups
            } else {
                config.groups.join(":")
            },
            sigalgs: (!config.sigalgs.is_empty()).then(|| config.sigalgs.join(":")),
            allow_sha1: config.allow_sha1,
            legacy_servers: config.legacy_servers,
            untrusted: untrusted_action(config.untrusted),
            expired: untrusted_action(config.expired.unwrap_or(config.untrusted)),
        }
    }
}

fn untrusted_action(setting: loupe_control::config::Untrusted) -> UntrustedAction {
    match setting {
        loupe_control::config::Untrusted::Block => UntrustedAction::Block,
        loupe_control::config::Untrusted::ForwardUntrust => UntrustedAction::ForwardUntrust,
    }
}

/// A profile BoringSSL cannot be configured with, in the operator's terms.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("TLS version {0:#06x} is not one loupe speaks (TLS 1.0 = 0x0301 to TLS 1.3 = 0x0304)")]
    Version(u16),
    #[error("the minimum TLS version ({min}) is above the maximum ({max})")]
    VersionOrder { min: &'static str, max: &'static str },
    #[error("{0} signs its handshake with SHA-1 (MD5+SHA-1): enable allow_sha1 to use it")]
    LegacyNeedsSha1(&'static str),
    #[error("the signature algorithm list names SHA-1 while allow_sha1 is off")]
    Sha1Sigalgs,
    #[error("ciphers: {0:?} is not a suite BoringSSL knows (OpenSSL or IANA names, e.g. ECDHE-RSA-AES128-SHA)")]
    UnknownCipher(String),
    #[error("{0}")]
    Offer(String),
    #[error("{what}: {source}")]
    Boring {
        what: &'static str,
        #[source]
        source: ErrorStack,
    },
}

impl Profile {
    /// Checks what BoringSSL would not tell in words.
    pub fn validate(&self) -> Result<(), ProfileError> {
        for version in [self.min_version, self.max_version] {
            if !(TLS1_0..=TLS1_3).contains(&version) {
                return Err(ProfileError::Version(version));
            }
        }
        if self.min_version > self.max_version {
            return Err(ProfileError::VersionOrder {
                min: names::version_name(self.min_version),
                max: names::version_name(self.max_version),
            });
        }
        if self.min_version < TLS1_2 && !self.allow_sha1 {
            return Err(ProfileError::LegacyNeedsSha1(names::version_name(self.min_version)));
        }
        if let Some(sigalgs) = &self.sigalgs {
            if !self.allow_sha1 && sigalgs.to_ascii_uppercase().contains("SHA1") {
                return Err(ProfileError::Sha1Sigalgs);
            }
        }
        Ok(())
    }

    /// The suite list handed to BoringSSL: SHA-1 suites struck out unless allowed.
    fn effective_cipher_list(&self) -> String {
        if self.allow_sha1 {
            self.cipher_list.clone()
        } else {
            format!("{}:!SHA1", self.cipher_list)
        }
    }

    fn apply_common(&self, builder: &mut SslContextBuilder) -> Result<(), ProfileError> {
        let boring = |what| move |source| ProfileError::Boring { what, source };
        let version = |v: u16| SslVersion::try_from(v).map_err(|_| ProfileError::Version(v));
        builder
            .set_min_proto_version(Some(version(self.min_version)?))
            .map_err(boring("setting the minimum TLS version"))?;
        builder
            .set_max_proto_version(Some(version(self.max_version)?))
            .map_err(boring("setting the maximum TLS version"))?;
        // Strict: a misspelt suite is an error, not silently left out of the list.
        if builder.set_strict_cipher_list(&self.effective_cipher_list()).is_err() {
            let unknown = self
                .cipher_list
                .split(':')
                .find(|name| {
                    SslContextBuilder::new(SslMethod::tls()).is_ok_and(|mut b| b.set_strict_cipher_list(name).is_err())
                })
                .unwrap_or_default();
            return Err(ProfileError::UnknownCipher(unknown.to_string()));
        }
        builder
            .set_curves_list(&self.groups)
            .map_err(boring("groups names a group BoringSSL does not support"))?;
        Ok(())
    }
}

/// Per-connection data of an upstream `Ssl`, for the verify and new-session callbacks.
struct UpstreamExtra {
    key: SessionKey,
    /// First verification error seen during the handshake, packed by `pack_verify`.
    first_error: AtomicU64,
    /// Verification of the cached session offered for resumption.
    inherited: Option<(i32, u32)>,
    /// The stapled OCSP response as judged at depth 0 of the verification (once).
    ocsp: Mutex<Option<OcspFact>>,
    /// Whether the hello carried a post-quantum key share, and where to note the group
    /// the server chose (see [`UpstreamMemory::learn_group`]).
    post_quantum_sent: bool,
    memory: Arc<Mutex<UpstreamMemory>>,
}

/// X509_V_ERR_CERT_REVOKED.
pub const X509_CERT_REVOKED: i32 = 23;

/// Judges the server's stapled OCSP response once, when the verifier reaches the leaf
/// with the chain built: a revoked leaf becomes the connection's verification error.
fn check_stapled_response(ssl: &SslRef, store: &boring::x509::X509StoreContextRef, extra: &UpstreamExtra) {
    let mut slot = extra.ocsp.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if slot.is_some() {
        return;
    }
    let fact = |status, detail: Option<String>| OcspFact { status, detail };
    let judged = match (ssl.ocsp_status(), store.chain()) {
        (None, _) => fact(OcspStatus::None, None),
        (Some(response), chain) => {
            let leaf = chain.and_then(|c| c.get(0));
            let issuer = chain.and_then(|c| c.get(1));
            match (leaf, issuer) {
                (Some(leaf), Some(issuer)) => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs() as i64);
                    match check_staple(response, leaf, issuer, now) {
                        StapleVerdict::Good { .. } => fact(OcspStatus::Good, None),
                        StapleVerdict::Unknown => fact(
                            OcspStatus::Unknown,
                            Some("the responder does not know the certificate; treated as no response".to_string()),
                        ),
                        StapleVerdict::Invalid(why) => {
                            fact(OcspStatus::Invalid, Some(format!("{why}; treated as no response")))
                        }
                        StapleVerdict::Revoked { revoked_at, reason } => {
                            let _ = extra.first_error.compare_exchange(
                                VERIFY_UNSET,
                                pack_verify(X509_CERT_REVOKED, 0),
                                Ordering::Relaxed,
                                Ordering::Relaxed,
                            );
                            let when = Asn1Time::from_unix(revoked_at)
                                .map(|t| t.to_string())
                                .unwrap_or_else(|_| revoked_at.to_string());
                            let reason = reason.map_or_else(String::new, |r| format!(" ({r})"));
                            fact(OcspStatus::Revoked, Some(format!("revoked {when}{reason}")))
                        }
                    }
                }
                _ => fact(
                    OcspStatus::Invalid,
                    Some("no issuer of the leaf to check the response against; treated as no response".to_string()),
                ),
            }
        }
    };
    *slot = Some(judged);
}

/// Per-connection data of a client-leg `Ssl`: the server's ALPN choice, to offer the client.
struct ClientExtra {
    alpn: Option<Vec<u8>>,
}

const VERIFY_UNSET: u64 = u64::MAX;

fn pack_verify(code: i32, depth: u32) -> u64 {
    (u64::from(code as u32) << 32) | u64::from(depth)
}

fn unpack_verify(packed: u64) -> Option<(i32, u32)> {
    (packed != VERIFY_UNSET).then_some(((packed >> 32) as u32 as i32, packed as u32))
}

static UPSTREAM_EXTRA: OnceLock<Index<Ssl, UpstreamExtra>> = OnceLock::new();
static CLIENT_EXTRA: OnceLock<Index<Ssl, ClientExtra>> = OnceLock::new();

fn ex_index<T: 'static + Send + Sync>(cell: &OnceLock<Index<Ssl, T>>) -> Result<Index<Ssl, T>, ErrorStack> {
    if let Some(index) = cell.get() {
        return Ok(*index);
    }
    let fresh = Ssl::new_ex_index::<T>()?;
    // Two threads racing here waste one index slot; both then use the winner's.
    Ok(*cell.get_or_init(|| fresh))
}

/// Upstream sessions are reused per server name (SNI, or the IP without SNI) and port.
type SessionKey = (String, u16);

struct CachedSession {
    session: SslSession,
    /// Verification result of the handshake that created the session: a resumed
    /// handshake verifies nothing, so the facts come from here.
    verify: (i32, u32),
}

/// Per server, bounded: the oldest inserted server is evicted first. An entry is replaced
/// in place, never removed, so the eviction order holds each server once.
struct PerServer<V> {
    entries: HashMap<SessionKey, V>,
    order: VecDeque<SessionKey>,
    capacity: usize,
}

impl<V> PerServer<V> {
    fn new(capacity: usize) -> Self {
        PerServer {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    fn insert(&mut self, key: SessionKey, entry: V) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.insert(key.clone(), entry).is_none() {
            self.order.push_back(key);
        }
        while self.entries.len() > self.capacity {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.entries.remove(&oldest);
                }
                None => break,
            }
        }
    }
}

/// A classical group a server chose over the post-quantum key share loupe sent it.
#[derive(Debug, Clone, Copy)]
struct LearnedGroup {
    group: u16,
    /// Hellos that may still send only this group's share. At zero the next hello sends
    /// the whole set again and learns afresh, so a server that gained a post-quantum group
    /// but does not ask for its share (it takes a share it was sent) is found again.
    predictions_left: u32,
}

/// Hellos sent with only a learned group's share before one sends the whole set again.
const PREDICTIONS_PER_LEARNING: u32 = 64;

/// What the upstream context remembers per server: a session to resume, and the group
/// the server chose when offered a post-quantum share.
struct UpstreamMemory {
    sessions: PerServer<CachedSession>,
    groups: PerServer<LearnedGroup>,
}

impl UpstreamMemory {
    fn session(&self, key: &SessionKey) -> Option<(SslSession, (i32, u32))> {
        self.sessions.entries.get(key).map(|e| (e.session.clone(), e.verify))
    }

    /// Makes `offer` send only the share of the group learned for this server, when one
    /// is learned with predictions left and `offer` can send it alone (it offers that
    /// group and would carry a post-quantum share). Only such a hello uses a prediction:
    /// one from a client that cannot offer the group leaves the count as it was.
    fn predict_key_share(&mut self, key: &SessionKey, offer: &mut UpstreamOffer) {
        let Some(learned) = self.groups.entries.get_mut(key) else {
            return;
        };
        if learned.predictions_left > 0 && offer.predict_key_share(learned.group) {
            learned.predictions_left -= 1;
        }
    }

    /// After a handshake with this server: `chosen` is the group it negotiated, and
    /// `post_quantum_sent` whether the hello carried a post-quantum share.
    fn learn_group(&mut self, key: &SessionKey, chosen: u16, post_quantum_sent: bool) {
        if is_post_quantum(chosen) {
            // It takes post-quantum shares: send them again from now on.
            if let Some(learned) = self.groups.entries.get_mut(key) {
                learned.predictions_left = 0;
            }
        } else if post_quantum_sent {
            let learned = LearnedGroup {
                group: chosen,
                predictions_left: PREDICTIONS_PER_LEARNING,
            };
            self.groups.insert(key.clone(), learned);
        }
    }
}

fn lock(memory: &Mutex<UpstreamMemory>) -> std::sync::MutexGuard<'_, UpstreamMemory> {
    // The memory is consistent after every statement; a panic elsewhere cannot break it.
    memory.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Everything split-TLS sessions of one profile share: the upstream client context with
/// the trust store and session cache, and the two client-leg server contexts (ticket keys
/// per verdict). Build one per (worker, profile); `SslContext`s are reference-counted, so
/// sessions keep what they need. Rebuild it when the trust store or profile changes (that
/// also drops cached upstream sessions and their verification results).
pub struct SplitTlsContext {
    upstream: SslContext,
    /// What the profile allows upstream; narrowed per client by its hello.
    offer: ProfileOffer,
    client_trusted: SslContext,
    client_untrusted: SslContext,
    memory: Arc<Mutex<UpstreamMemory>>,
    untrusted: UntrustedAction,
    expired: UntrustedAction,
    /// Server certificates the operator imported for one host each.
    pins: PinnedLeafs,
}

impl fmt::Debug for SplitTlsContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SplitTlsContext")
            .field("untrusted", &self.untrusted)
            .field("cached_sessions", &lock(&self.memory).sessions.entries.len())
            .finish_non_exhaustive()
    }
}

impl SplitTlsContext {
    pub fn new(profile: &Profile, trust: X509Store) -> Result<SplitTlsContext, ProfileError> {
        SplitTlsContext::with_session_cache(profile, trust, DEFAULT_SESSION_CACHE)
    }

    pub fn with_session_cache(
        profile: &Profile,
        trust: X509Store,
        session_cache: usize,
    ) -> Result<SplitTlsContext, ProfileError> {
        profile.validate()?;
        let boring = |what| move |source| ProfileError::Boring { what, source };
        let upstream_index = ex_index(&UPSTREAM_EXTRA).map_err(boring("allocating TLS state"))?;
        let client_index = ex_index(&CLIENT_EXTRA).map_err(boring("allocating TLS state"))?;
        let memory = Arc::new(Mutex::new(UpstreamMemory {
            sessions: PerServer::new(session_cache),
            groups: PerServer::new(session_cache),
        }));

        let mut up = SslContextBuilder::new(SslMethod::tls()).map_err(boring("creating the upstream context"))?;
        profile.apply_common(&mut up)?;
        let signature_algorithms = match &profile.sigalgs {
            Some(list) => {
                up.set_sigalgs_list(list)
                    .map_err(boring("sigalgs names an algorithm BoringSSL does not support"))?;
                list.split(':')
                    .map(|element| {
                        signature_algorithm_id(element).ok_or_else(|| {
                            ProfileError::Offer(format!("sigalgs: {element:?} has no TLS code point loupe knows"))
                        })
                    })
                    .collect::<Result<Vec<u16>, ProfileError>>()?
            }
            None => {
                let ids = default_signature_algorithms(profile.allow_sha1);
                let prefs: Vec<SslSignatureAlgorithm> = ids.iter().map(|id| SslSignatureAlgorithm::from(*id)).collect();
                up.set_verify_algorithm_prefs(&prefs)
                    .map_err(boring("setting signature algorithms"))?;
                ids
            }
        };
        up.enable_ocsp_stapling();
        up.set_cert_store(trust);
        // Verification runs in full, but never stops the handshake: the first error is
        // recorded and the verdict is taken afterwards.
        up.set_verify_callback(SslVerifyMode::PEER, move |preverify_ok, store| {
            let ssl = X509StoreContext::ssl_idx().ok().and_then(|idx| store.ex_data(idx));
            let slot = ssl.and_then(|ssl| ssl.ex_data(upstream_index));
            if let (Some(ssl), Some(extra)) = (ssl, slot) {
                if store.error_depth() == 0 {
                    check_stapled_response(ssl, store, extra);
                }
            }
            if preverify_ok {
                return true;
            }
            // X509_V_ERR_UNSPECIFIED when BoringSSL flags an error without a code.
            let code = store.verify_result().err().map_or(1, |e| e.as_raw());
            let depth = store.error_depth();
            match slot {
                Some(extra) => {
                    let _ = extra.first_error.compare_exchange(
                        VERIFY_UNSET,
                        pack_verify(code, depth),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    true
                }
                // Nowhere to record the failure: fail closed.
                None => false,
            }
        });
        // A server asking for a client certificate suspends the handshake (loupe holds none
        // of the client's), so the session can end with that reason before any data flows.
        // SAFETY: the context is alive; the callback is a plain function with the right ABI.
        unsafe { boring_sys::SSL_CTX_set_client_cert_cb(up.as_ptr(), Some(suspend_on_certificate_request)) };
        up.set_session_cache_mode(SslSessionCacheMode::CLIENT | SslSessionCacheMode::NO_INTERNAL);
        let cache = Arc::clone(&memory);
        up.set_new_session_callback(move |ssl, session| {
            let Some(extra) = ssl.ex_data(upstream_index) else {
                return;
            };
            let verify = verification_of(ssl, extra);
            let key = extra.key.clone();
            lock(&cache).sessions.insert(key, CachedSession { session, verify });
        });
        // The key-log callback is on every context; it writes only for connections whose
        // rule exports keys (`keylog::enable`).
        keylog::install(&mut up).map_err(|source| ProfileError::Boring {
            what: "installing the key-log callback",
            source,
        })?;
        let upstream = up.build();
        let offer = ProfileOffer::new(
            profile.min_version,
            profile.max_version,
            &upstream,
            &profile.groups,
            &signature_algorithms,
            profile.legacy_servers,
        )
        .map_err(ProfileError::Offer)?;

        let client_trusted = client_context(profile, b"loupe/trusted", client_index)?;
        let client_untrusted = client_context(profile, b"loupe/untrusted", client_index)?;
        Ok(SplitTlsContext {
            upstream,
            offer,
            client_trusted,
            client_untrusted,
            memory,
            untrusted: profile.untrusted,
            expired: profile.expired,
            pins: PinnedLeafs::default(),
        })
    }

    /// Trust these certificates for the hosts they were imported for (`loupe trust import
    /// --host`), whatever their chain says.
    pub fn with_pins(mut self, pins: PinnedLeafs) -> SplitTlsContext {
        self.pins = pins;
        self
    }

    /// The TLS 1.2-and-older suites the client leg accepts (IANA ids).
    pub fn client_suite_ids(&self) -> Vec<u16> {
        self.client_trusted
            .ciphers()
            .map(|stack| stack.iter().map(|c| c.protocol_id()).collect())
            .unwrap_or_default()
    }

    /// What the profile allows upstream, before a client's hello narrows it.
    pub fn profile_offer(&self) -> &ProfileOffer {
        &self.offer
    }

    /// Upstream sessions currently cached for resumption.
    pub fn cached_sessions(&self) -> usize {
        lock(&self.memory).sessions.entries.len()
    }

    /// The upstream `Ssl` for one connection, offering a cached session for the server.
    fn upstream_ssl(&self, hello: &ClientHello, server: SocketAddr, checked_name: &str) -> Result<Ssl, String> {
        let index = ex_index(&UPSTREAM_EXTRA).map_err(|e| format!("allocating TLS state: {e}"))?;
        let mut ssl = Ssl::new(&self.upstream).map_err(|e| format!("creating the upstream TLS client: {e}"))?;
        ssl.set_mode(SslMode::ENABLE_PARTIAL_WRITE | SslMode::ACCEPT_MOVING_WRITE_BUFFER);
        shed_config_after_handshake(&mut ssl);
        let key: SessionKey = (checked_name.to_string(), server.port());
        let mut offer = self
            .offer
            .for_client(hello)
            .map_err(|shortfall| shortfall.to_string())?;
        let cached = {
            let mut memory = lock(&self.memory);
            memory.predict_key_share(&key, &mut offer);
            memory.session(&key)
        };
        offer.apply(&mut ssl)?;
        match &hello.sni {
            Some(sni) => {
                ssl.set_hostname(sni)
                    .map_err(|e| format!("sending server name {sni:?}: {e}"))?;
                let checked = match sni.parse::<IpAddr>() {
                    Ok(ip) => ssl.param_mut().set_ip(ip),
                    Err(_) => ssl.param_mut().set_host(sni),
                };
                checked.map_err(|e| format!("checking the certificate for {sni:?}: {e}"))?;
            }
            None => ssl
                .param_mut()
                .set_ip(server.ip())
                .map_err(|e| format!("checking the certificate for {}: {e}", server.ip()))?,
        }
        let alpn = alpn_wire(&hello.alpn);
        if !alpn.is_empty() {
            ssl.set_alpn_protos(&alpn)
                .map_err(|e| format!("offering the client's ALPN list: {e}"))?;
        }
        let mut inherited = None;
        if let Some((session, verify)) = cached {
            // SAFETY: every cached session was created by a connection of `self.upstream`,
            // the context this `Ssl` belongs to (the cache is private to this context).
            if unsafe { ssl.set_session(&session) }.is_ok() {
                inherited = Some(verify);
            }
        }
        ssl.set_ex_data(
            index,
            UpstreamExtra {
                key,
                first_error: AtomicU64::new(VERIFY_UNSET),
                inherited,
                ocsp: Mutex::new(None),
                post_quantum_sent: offer.sends_post_quantum_share(),
                memory: Arc::clone(&self.memory),
            },
        );
        Ok(ssl)
    }
}

/// Called by BoringSSL when the server sends a CertificateRequest: -1 suspends the
/// handshake with SSL_ERROR_WANT_X509_LOOKUP, which the session turns into
/// [`SessionFailure::ClientCertificateRequested`].
unsafe extern "C" fn suspend_on_certificate_request(
    _ssl: *mut boring_sys::SSL,
    _x509: *mut *mut boring_sys::X509,
    _key: *mut *mut boring_sys::EVP_PKEY,
) -> std::os::raw::c_int {
    -1
}

/// Lets BoringSSL free what was set on `ssl` for its handshake (certificate chain, key,
/// cipher and group lists, ALPN, verification parameters) once the handshake is done:
/// an idle session keeps only what it derived. Nothing reads that configuration back
/// afterwards, and renegotiation, which would need it, is never enabled.
fn shed_config_after_handshake(ssl: &mut Ssl) {
    // SAFETY: a valid SSL owned by `ssl`; the call only sets a flag.
    unsafe { boring_sys::SSL_set_shed_handshake_config(foreign_types::ForeignTypeRef::as_ptr(&**ssl), 1) };
}

/// `ssl`, writing its secrets to `keylog` when there is one.
fn with_keylog(mut ssl: Ssl, keylog: Option<Arc<KeyLog>>) -> Result<Ssl, String> {
    if let Some(log) = keylog {
        keylog::enable(&mut ssl, log).map_err(|e| format!("enabling the key log: {e}"))?;
    }
    Ok(ssl)
}

/// The client-leg `Ssl`: presents `forged`, offers the server's ALPN choice.
fn client_ssl(ctx: &SslContext, forged: &ForgedCert, upstream_alpn: Option<Vec<u8>>) -> Result<Ssl, String> {
    let index = ex_index(&CLIENT_EXTRA).map_err(|e| format!("allocating TLS state: {e}"))?;
    let mut ssl = Ssl::new(ctx).map_err(|e| format!("creating the client-side TLS server: {e}"))?;
    ssl.set_mode(SslMode::ENABLE_PARTIAL_WRITE | SslMode::ACCEPT_MOVING_WRITE_BUFFER);
    shed_config_after_handshake(&mut ssl);
    let (leaf, chain) = forged
        .chain
        .split_first()
        .ok_or_else(|| "the forged certificate chain is empty".to_string())?;
    ssl.set_certificate(leaf)
        .map_err(|e| format!("presenting the forged certificate: {e}"))?;
    ssl.set_private_key(&forged.key)
        .map_err(|e| format!("the forged certificate's key does not fit it: {e}"))?;
    for cert in chain {
        ssl.add_chain_cert(cert)
            .map_err(|e| format!("presenting the forged chain: {e}"))?;
    }
    ssl.set_ex_data(index, ClientExtra { alpn: upstream_alpn });
    Ok(ssl)
}

fn client_context(
    profile: &Profile,
    session_id_context: &[u8],
    index: Index<Ssl, ClientExtra>,
) -> Result<SslContext, ProfileError> {
    let boring = |what| move |source| ProfileError::Boring { what, source };
    let mut builder = SslContextBuilder::new(SslMethod::tls()).map_err(boring("creating the client-side context"))?;
    profile.apply_common(&mut builder)?;
    builder.set_options(SslOptions::CIPHER_SERVER_PREFERENCE);
    builder
        .set_session_id_context(session_id_context)
        .map_err(boring("setting the session id context"))?;
    builder.set_session_cache_mode(SslSessionCacheMode::SERVER);
    builder.set_alpn_select_callback(move |ssl, client_list| {
        let chosen = ssl.ex_data(index).and_then(|extra| extra.alpn.as_deref());
        chosen
            .and_then(|protocol| find_alpn(client_list, protocol))
            .ok_or(AlpnError::NOACK)
    });
    keylog::install(&mut builder).map_err(boring("installing the key-log callback"))?;
    Ok(builder.build())
}

/// Verification of an upstream connection: (OpenSSL code, depth); code 0 is trusted.
fn verification_of(ssl: &SslRef, extra: &UpstreamExtra) -> (i32, u32) {
    if ssl.session_reused() {
        if let Some(inherited) = extra.inherited {
            return inherited;
        }
    }
    match (
        unpack_verify(extra.first_error.load(Ordering::Relaxed)),
        ssl.verify_result(),
    ) {
        (Some(recorded), _) => recorded,
        (None, Ok(())) => (0, 0),
        (None, Err(e)) => (e.as_raw(), 0),
    }
}

/// X509_V_ERR_CERT_NOT_YET_VALID and X509_V_ERR_CERT_HAS_EXPIRED: the profile's
/// `expired` setting applies instead of `untrusted`.
const EXPIRY_CODES: [i32; 2] = [9, 10];

fn same_certificate(a: &X509Ref, b: &X509Ref) -> bool {
    match (a.digest(MessageDigest::sha256()), b.digest(MessageDigest::sha256())) {
        (Ok(a), Ok(b)) => *a == *b,
        _ => false,
    }
}

fn verify_reason(code: i32) -> String {
    // SAFETY: `code` is 0 or was produced by BoringSSL's verifier (X509_STORE_CTX_get_error
    // or the session's verify_result), so it is a code BoringSSL knows.
    match unsafe { X509VerifyError::from_raw(code) } {
        Ok(()) => "ok".to_string(),
        Err(e) => e.error_string().to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Inspection
// ---------------------------------------------------------------------------------------

/// Counts plaintext bytes each way and lets every byte through: the inspector of
/// sessions whose HTTP is not inspected, and of tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PlaintextCounter {
    pub client_to_server: u64,
    pub server_to_client: u64,
}

impl Inspector for PlaintextCounter {
    fn client_to_server(&mut self, plaintext: &[u8], _relay: &mut Relay<'_>) -> Pass {
        self.client_to_server += plaintext.len() as u64;
        Pass::Forward
    }

    fn server_to_client(&mut self, plaintext: &[u8], _relay: &mut Relay<'_>) -> Pass {
        self.server_to_client += plaintext.len() as u64;
        Pass::Forward
    }
}

// ---------------------------------------------------------------------------------------
// Facts and failures
// ---------------------------------------------------------------------------------------

/// Bytes through the session. Ciphertext counts what crossed each TCP endpoint (as far as
/// this session is concerned: taken by `push_*`, handed out by `consume_*`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TlsBytes {
    pub from_client: u64,
    pub to_client: u64,
    pub from_server: u64,
    pub to_server: u64,
    pub plaintext_client_to_server: u64,
    pub plaintext_server_to_client: u64,
}

/// How one peer ended its sending side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegEnd {
    /// close_notify: a clean end.
    CloseNotify,
    /// TCP FIN without close_notify: the stream may be truncated.
    Eof,
    /// A TLS error (bad record, fatal alert) or loupe gave up on the leg.
    Error,
}

/// What the decryption log needs from a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionFacts {
    /// The furthest stage reached (the failing one if the session failed).
    pub stage: Stage,
    /// The name the server certificate was checked against: the SNI, or the server IP.
    pub checked_name: String,
    /// loupe ↔ server.
    pub upstream: NegotiatedFact,
    /// client ↔ loupe.
    pub client: NegotiatedFact,
    pub upstream_resumed: bool,
    pub client_resumed: bool,
    pub verify: Option<VerifyFact>,
    /// The server's stapled OCSP response as judged; `None` before the upstream handshake
    /// completed and on a resumed one (nothing is verified then).
    pub ocsp: Option<OcspFact>,
    /// Which CA signed the forgery presented to the client.
    pub verdict: Option<Verdict>,
    /// The server's chain as it presented it, leaf first.
    pub server_chain: Vec<CertFact>,
    /// The DER of `server_chain`, kept only when it did not verify (so the operator can
    /// accept it with `loupectl trust fetch HOST --accept`); empty otherwise.
    pub server_chain_der: Vec<Vec<u8>>,
    /// Fatal alerts received from either peer.
    pub alerts: Vec<AlertFact>,
    /// The alert loupe itself sent the client when refusing the session.
    pub alert_sent_to_client: Option<u8>,
    pub client_end: Option<LegEnd>,
    pub server_end: Option<LegEnd>,
    pub bytes: TlsBytes,
    /// The inspector ended the session (a blocked request was answered, a refusal).
    pub ended_by_inspection: bool,
}

/// Why a session did not (or no longer does) carry data. Each names its stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionFailure {
    /// BoringSSL refused the per-session setup (a server name it cannot send, memory).
    Setup { stage: Stage, detail: String },
    /// The handshake with the server failed: an alert, nothing in common, a protocol error.
    UpstreamHandshake { detail: String },
    /// The server's chain or name did not verify and the profile blocks such servers.
    UpstreamUntrusted { code: i32, depth: u32, reason: String },
    /// The server asked for a client certificate: loupe cannot present the client's.
    ClientCertificateRequested,
    /// No certificate could be forged for the client.
    Forge { detail: String },
    /// The handshake with the client failed (it distrusts the CA, nothing in common …).
    ClientHandshake { detail: String },
    /// A peer closed its TCP connection before its handshake was done.
    PeerClosed { peer: Peer, stage: Stage },
    /// A TLS error after both handshakes (bad record MAC, a fatal alert …).
    Stream { peer: Peer, detail: String },
}

impl SessionFailure {
    pub fn stage(&self) -> Stage {
        match self {
            SessionFailure::Setup { stage, .. } => *stage,
            SessionFailure::UpstreamHandshake { .. } | SessionFailure::ClientCertificateRequested => {
                Stage::UpstreamHandshake
            }
            SessionFailure::UpstreamUntrusted { .. } => Stage::UpstreamVerify,
            SessionFailure::Forge { .. } | SessionFailure::ClientHandshake { .. } => Stage::ClientHandshake,
            SessionFailure::PeerClosed { stage, .. } => *stage,
            SessionFailure::Stream { .. } => Stage::Established,
        }
    }
}

impl fmt::Display for SessionFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionFailure::Setup { detail, .. } => write!(f, "setting up the session: {detail}"),
            SessionFailure::UpstreamHandshake { detail } => write!(f, "handshake with the server failed: {detail}"),
            SessionFailure::UpstreamUntrusted { code, depth, reason } => write!(
                f,
                "server certificate not trusted: {reason} (code {code}, depth {depth}); blocked by the profile"
            ),
            SessionFailure::ClientCertificateRequested => {
                write!(f, "the server requested a client certificate")
            }
            SessionFailure::Forge { detail } => write!(f, "forging the certificate failed: {detail}"),
            SessionFailure::ClientHandshake { detail } => write!(f, "handshake with the client failed: {detail}"),
            SessionFailure::PeerClosed { peer, stage } => {
                write!(
                    f,
                    "the {} closed the connection during {}",
                    peer.as_str(),
                    stage.describe()
                )
            }
            SessionFailure::Stream { peer, detail } => {
                write!(f, "TLS error on the {} side of the stream: {detail}", peer.as_str())
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Byte queues and the in-memory transport BoringSSL runs over
// ---------------------------------------------------------------------------------------

/// A FIFO of bytes whose pending part is always one contiguous slice (what a TCP send
/// wants). Grows on demand up to its user's cap; memory is reused once drained.
#[derive(Default)]
struct ByteQueue {
    buf: Vec<u8>,
    head: usize,
}

impl ByteQueue {
    fn len(&self) -> usize {
        self.buf.len() - self.head
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn as_slice(&self) -> &[u8] {
        &self.buf[self.head..]
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.head > 0 && self.buf.len() + bytes.len() > self.buf.capacity() {
            self.buf.drain(..self.head);
            self.head = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    fn consume(&mut self, n: usize) {
        self.head += n.min(self.len());
        if self.head == self.buf.len() {
            self.buf.clear();
            self.head = 0;
        }
    }

    /// Gives the allocation back when nothing is queued.
    fn release_if_empty(&mut self) {
        if self.is_empty() {
            self.buf = Vec::new();
            self.head = 0;
        }
    }

    fn take_into(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.len());
        out[..n].copy_from_slice(&self.buf[self.head..self.head + n]);
        self.consume(n);
        n
    }
}

/// One TCP endpoint as BoringSSL sees it: reads drain `incoming` (would-block when empty,
/// end of stream once the peer's FIN was seen), writes fill `outgoing` up to the cap.
#[derive(Default)]
pub(crate) struct Wire {
    incoming: ByteQueue,
    outgoing: ByteQueue,
    peer_fin: bool,
    /// The last bytes the peer sent, to recognise a plaintext alert record (below).
    tail: [u8; ALERT_RECORD_LEN],
    /// Where BoringSSL's reads stand in the peer's TLS records.
    records: RecordCursor,
}

/// A TLS record header: type, version (2), length (2).
const RECORD_HEADER_LEN: usize = 5;
/// Largest record body any TLS version allows (2^14 plaintext + 2048 of expansion).
const MAX_RECORD_BODY: usize = (1 << 14) + 2048;

/// Follows the record framing of the bytes BoringSSL has taken from `incoming`, so that
/// [`Wire::record_ready`] can tell whether an `SSL_read` could finish a record. A read that
/// cannot only reports would-block, and costs a call through BoringSSL's error queue: the
/// request profile counted about eight of those per frame received.
#[derive(Default)]
struct RecordCursor {
    /// Header bytes of the current record taken so far (all five once its body started).
    header: [u8; RECORD_HEADER_LEN],
    header_taken: usize,
    /// Body bytes of the current record not taken yet.
    body_left: usize,
    /// The bytes did not look like TLS records: every read is let through.
    lost: bool,
}

impl RecordCursor {
    /// Follows `taken`, the next bytes BoringSSL read.
    fn advance(&mut self, mut taken: &[u8]) {
        while !taken.is_empty() && !self.lost {
            if self.header_taken < RECORD_HEADER_LEN {
                let n = (RECORD_HEADER_LEN - self.header_taken).min(taken.len());
                self.header[self.header_taken..self.header_taken + n].copy_from_slice(&taken[..n]);
                self.header_taken += n;
                taken = &taken[n..];
                if self.header_taken == RECORD_HEADER_LEN {
                    match record_body_len(&self.header) {
                        Some(len) => self.body_left = len,
                        None => self.lost = true,
                    }
                }
            } else {
                let n = self.body_left.min(taken.len());
                self.body_left -= n;
                taken = &taken[n..];
            }
            if self.header_taken == RECORD_HEADER_LEN && self.body_left == 0 {
                self.header_taken = 0;
            }
        }
    }

    /// Whether `queued` (the bytes BoringSSL has not taken) completes the current record,
    /// or holds a whole next one.
    fn completes_a_record(&self, queued: &ByteQueue) -> bool {
        if self.lost {
            return true;
        }
        if self.header_taken == RECORD_HEADER_LEN {
            return queued.len() >= self.body_left;
        }
        let missing = RECORD_HEADER_LEN - self.header_taken;
        let Some(rest) = queued.as_slice().get(..missing) else {
            return false;
        };
        let mut header = self.header;
        header[self.header_taken..].copy_from_slice(rest);
        // A header BoringSSL will reject: let it read, and say so.
        record_body_len(&header).is_none_or(|body| queued.len() >= missing + body)
    }
}

/// The body length a record header announces, or None when it is no TLS record header.
fn record_body_len(header: &[u8; RECORD_HEADER_LEN]) -> Option<usize> {
    let [content_type, major, _, high, low] = *header;
    let len = usize::from(u16::from_be_bytes([high, low]));
    ((20..=24).contains(&content_type) && major == 3 && len <= MAX_RECORD_BODY).then_some(len)
}

/// A TLS alert record: type 21, version, length 2, level, description.
const ALERT_RECORD_LEN: usize = 7;

impl Wire {
    fn release_idle_buffers(&mut self) {
        self.incoming.release_if_empty();
        self.outgoing.release_if_empty();
    }

    /// Takes what fits of what the peer sent; returns how much.
    pub(crate) fn accept_incoming(&mut self, bytes: &[u8]) -> usize {
        push(self, bytes, false)
    }

    pub(crate) fn peer_closed(&mut self) {
        self.peer_fin = true;
    }

    pub(crate) fn outgoing_bytes(&self) -> &[u8] {
        self.outgoing.as_slice()
    }

    pub(crate) fn consume_outgoing(&mut self, n: usize) {
        self.outgoing.consume(n.min(self.outgoing.len()));
    }

    fn note_tail(&mut self, bytes: &[u8]) {
        let keep = bytes.len().min(ALERT_RECORD_LEN);
        self.tail.copy_within(keep.., 0);
        self.tail[ALERT_RECORD_LEN - keep..].copy_from_slice(&bytes[bytes.len() - keep..]);
    }

    /// A plaintext alert the peer sent last, as (fatal, description). OpenSSL clients send
    /// the alert that rejects our certificate in TLS 1.3 in plaintext (before installing
    /// their handshake keys); BoringSSL then only reports a record it could not decrypt.
    fn plaintext_alert(&self) -> Option<(bool, u8)> {
        match self.tail {
            [21, 3, 1..=4, 0, 2, level @ 1..=2, description] => Some((level == 2, description)),
            _ => None,
        }
    }

    fn incoming_room(&self) -> usize {
        BUFFER_CAP.saturating_sub(self.incoming.len())
    }

    fn outgoing_room(&self) -> usize {
        BUFFER_CAP.saturating_sub(self.outgoing.len())
    }

    fn at_eof(&self) -> bool {
        self.peer_fin && self.incoming.is_empty()
    }

    /// Whether an `SSL_read` could get anywhere: a record can be finished from what is
    /// queued, or the peer's end of stream is there to be seen.
    fn record_ready(&self) -> bool {
        self.peer_fin || self.records.completes_a_record(&self.incoming)
    }
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.incoming.is_empty() {
            return if self.peer_fin {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = self.incoming.take_into(buf);
        self.records.advance(&buf[..n]);
        Ok(n)
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.outgoing_room());
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.outgoing.push(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One leg: bare bytes until its TLS engine exists, then the engine over the same wire.
enum Leg {
    Bare(Wire),
    Tls(SslStream<Wire>),
}

impl Leg {
    fn wire(&self) -> &Wire {
        match self {
            Leg::Bare(wire) => wire,
            Leg::Tls(stream) => stream.get_ref(),
        }
    }

    fn wire_mut(&mut self) -> &mut Wire {
        match self {
            Leg::Bare(wire) => wire,
            Leg::Tls(stream) => stream.get_mut(),
        }
    }

    /// Wraps the wire in a TLS engine. On failure the leg stays bare (without its input).
    fn attach(&mut self, ssl: Ssl) -> Result<&mut SslStream<Wire>, String> {
        let wire = match std::mem::replace(self, Leg::Bare(Wire::default())) {
            Leg::Bare(wire) => wire,
            Leg::Tls(stream) => {
                *self = Leg::Tls(stream);
                return Err("the leg already runs TLS".to_string());
            }
        };
        let stream = SslStream::new(ssl, wire).map_err(|e| format!("attaching TLS to the connection: {e}"))?;
        *self = Leg::Tls(stream);
        match self {
            Leg::Tls(stream) => Ok(stream),
            Leg::Bare(_) => Err("the leg lost its TLS engine".to_string()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The session
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    UpstreamHandshake,
    ClientHandshake,
    Established,
    /// Nothing more will be read; queued bytes drain, then both sides close.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Open,
    Ended(LegEnd),
    /// The inspector ended the session: nothing more is read from this source.
    Stopped,
}

/// One direction of plaintext: from the source leg's TLS to the sink leg's TLS.
struct Direction {
    /// Plaintext read from the source that the sink's TLS has not accepted yet.
    pending: Vec<u8>,
    source: Source,
    /// close_notify must go to the sink once `pending` is empty.
    notify_sink: bool,
    /// The sink's sending side is finished: after its queue drains, send FIN.
    sink_closed: bool,
}

impl Direction {
    fn new() -> Direction {
        Direction {
            pending: Vec::new(),
            source: Source::Open,
            notify_sink: false,
            sink_closed: false,
        }
    }
}

/// What went wrong inside `pump`, and on which leg.
struct LegError {
    on_source: bool,
    error: boring::ssl::Error,
}

/// One split-TLS session. See the module documentation for the life cycle and
/// [`SplitTls::advance`] for how to drive it.
pub struct SplitTls {
    phase: Phase,
    upstream: Leg,
    client: Leg,
    client_trusted: SslContext,
    client_untrusted: SslContext,
    untrusted_action: UntrustedAction,
    expired_action: UntrustedAction,
    /// decrypt-inbound: the server's own chain and key, presented to the client as is.
    inbound: Option<Arc<ForgedCert>>,
    /// Where both legs' secrets go when the session's rule exports keys.
    keylog: Option<Arc<KeyLog>>,
    pins: PinnedLeafs,
    /// Record version for an alert loupe writes to the client itself.
    alert_record_version: u16,
    /// Client → server plaintext.
    to_server: Direction,
    /// Server → client plaintext.
    to_client: Direction,
    /// Which ends of the plaintext the inspector has been told about.
    inspector_told: InspectorTold,
    facts: SessionFacts,
    failure: Option<SessionFailure>,
    /// The handshakes' queues were freed (see `release_handshake_queues`).
    handshake_queues_released: bool,
    /// The inspector ended the session with a reset both ways (see [`SessionEnd::Reset`]).
    reset_by_inspection: bool,
}

#[derive(Debug, Default, Clone, Copy)]
struct InspectorTold {
    established: bool,
    client_ended: bool,
    server_ended: bool,
}

impl fmt::Debug for SplitTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SplitTls")
            .field("phase", &self.phase)
            .field("facts", &self.facts)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

impl SplitTls {
    /// Starts a session for a client whose ClientHello is `hello`, parsed from
    /// `client_bytes` (every byte the client sent so far, ClientHelloReader::raw()), towards
    /// `server`. Never fails: a session that cannot start is returned failed, with a fatal
    /// alert queued for the client. `client_bytes` beyond [`BUFFER_CAP`] fail the session.
    pub fn start(hello: &ClientHello, client_bytes: &[u8], server: SocketAddr, ctx: &SplitTlsContext) -> SplitTls {
        SplitTls::start_with(hello, client_bytes, server, ctx, None, None)
    }

    /// As [`SplitTls::start`]; with `inbound`, the client is shown that chain (the server's
    /// own, decrypt-known-key) instead of a forgery, and the server is trusted when it
    /// presents that leaf. With `keylog`, both legs' secrets go to that NSS key log.
    pub fn start_with(
        hello: &ClientHello,
        client_bytes: &[u8],
        server: SocketAddr,
        ctx: &SplitTlsContext,
        inbound: Option<Arc<ForgedCert>>,
        keylog: Option<Arc<KeyLog>>,
    ) -> SplitTls {
        let checked_name = hello.sni.clone().unwrap_or_else(|| server.ip().to_string());
        let mut session = SplitTls {
            phase: Phase::UpstreamHandshake,
            upstream: Leg::Bare(Wire::default()),
            client: Leg::Bare(Wire::default()),
            client_trusted: ctx.client_trusted.clone(),
            client_untrusted: ctx.client_untrusted.clone(),
            untrusted_action: ctx.untrusted,
            expired_action: ctx.expired,
            inbound,
            keylog,
            pins: ctx.pins.clone(),
            alert_record_version: hello.max_version().clamp(TLS1_0, TLS1_2),
            to_server: Direction::new(),
            to_client: Direction::new(),
            inspector_told: InspectorTold::default(),
            reset_by_inspection: false,
            facts: SessionFacts {
                stage: Stage::UpstreamHandshake,
                checked_name: checked_name.clone(),
                upstream: NegotiatedFact::default(),
                client: NegotiatedFact::default(),
                upstream_resumed: false,
                client_resumed: false,
                verify: None,
                ocsp: None,
                verdict: None,
                server_chain: Vec::new(),
                server_chain_der: Vec::new(),
                alerts: Vec::new(),
                alert_sent_to_client: None,
                client_end: None,
                server_end: None,
                ended_by_inspection: false,
                bytes: TlsBytes::default(),
            },
            failure: None,
            handshake_queues_released: false,
        };
        if client_bytes.len() > BUFFER_CAP {
            session.fail_before_client_leg(
                SessionFailure::Setup {
                    stage: Stage::UpstreamHandshake,
                    detail: format!(
                        "{} bytes before the handshake exceed the {BUFFER_CAP}-byte buffer",
                        client_bytes.len()
                    ),
                },
                ALERT_INTERNAL_ERROR,
                false,
            );
            return session;
        }
        session.client.wire_mut().incoming.push(client_bytes);
        session.facts.bytes.from_client = client_bytes.len() as u64;
        let keylog = session.keylog.clone();
        let attached = ctx
            .upstream_ssl(hello, server, &checked_name)
            .and_then(|ssl| with_keylog(ssl, keylog))
            .and_then(|ssl| session.upstream.attach(ssl).map(|_| ()));
        if let Err(detail) = attached {
            let failure = SessionFailure::Setup {
                stage: Stage::UpstreamHandshake,
                detail,
            };
            session.fail_before_client_leg(failure, ALERT_INTERNAL_ERROR, false);
        }
        session
    }

    /// Ciphertext received from the client. Returns how much was taken: less than offered
    /// when the buffer is full (leave the rest in the TCP socket). Once the session no longer
    /// reads from the client, everything is taken and dropped.
    pub fn push_from_client(&mut self, bytes: &[u8]) -> usize {
        let discard = self.to_server.source != Source::Open || self.phase == Phase::Done;
        let n = push(self.client.wire_mut(), bytes, discard);
        self.facts.bytes.from_client += n as u64;
        n
    }

    /// Ciphertext received from the server; as [`SplitTls::push_from_client`].
    pub fn push_from_server(&mut self, bytes: &[u8]) -> usize {
        let discard = self.to_client.source != Source::Open || self.phase == Phase::Done;
        let n = push(self.upstream.wire_mut(), bytes, discard);
        self.facts.bytes.from_server += n as u64;
        n
    }

    /// The client's FIN was seen (no more bytes will come from it).
    pub fn client_closed(&mut self) {
        self.client.wire_mut().peer_fin = true;
    }

    /// The server's FIN was seen.
    pub fn server_closed(&mut self) {
        self.upstream.wire_mut().peer_fin = true;
    }

    /// Ciphertext to send to the client.
    pub fn pending_to_client(&self) -> &[u8] {
        self.client.wire().outgoing.as_slice()
    }

    /// `n` bytes of [`SplitTls::pending_to_client`] were sent.
    pub fn consume_to_client(&mut self, n: usize) {
        let wire = self.client.wire_mut();
        let n = n.min(wire.outgoing.len());
        wire.outgoing.consume(n);
        self.facts.bytes.to_client += n as u64;
        self.release_handshake_queues_once();
    }

    /// Ciphertext to send to the server.
    pub fn pending_to_server(&self) -> &[u8] {
        self.upstream.wire().outgoing.as_slice()
    }

    /// `n` bytes of [`SplitTls::pending_to_server`] were sent.
    pub fn consume_to_server(&mut self, n: usize) {
        let wire = self.upstream.wire_mut();
        let n = n.min(wire.outgoing.len());
        wire.outgoing.consume(n);
        self.facts.bytes.to_server += n as u64;
        self.release_handshake_queues_once();
    }

    /// Nothing more will be sent to the client and nothing is pending: close (FIN) the
    /// client connection.
    pub fn wants_close_client(&self) -> bool {
        self.to_client.sink_closed && self.pending_to_client().is_empty()
    }

    /// Nothing more will be sent to the server and nothing is pending: close (FIN) it.
    pub fn wants_close_server(&self) -> bool {
        self.to_server.sink_closed && self.pending_to_server().is_empty()
    }

    /// The inspector ended the session with a drop: reset both TCP connections now,
    /// sending nothing more.
    pub fn wants_reset(&self) -> bool {
        self.reset_by_inspection
    }

    /// Both sides are closed from our end: once the TCP endpoints finish closing, log the
    /// facts and drop the session.
    pub fn is_finished(&self) -> bool {
        self.wants_close_client() && self.wants_close_server()
    }

    /// The stage reached, or the one that failed.
    pub fn stage(&self) -> Stage {
        self.facts.stage
    }

    pub fn outcome(&self) -> Option<&SessionFailure> {
        self.failure.as_ref()
    }

    /// The DER chain the server presented, leaf first, when it did not verify; empty
    /// otherwise. Moved out: a second call returns nothing.
    pub fn take_server_chain_der(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.facts.server_chain_der)
    }

    pub fn facts(&self) -> &SessionFacts {
        &self.facts
    }

    /// Frees every empty queue of the session: the wires' bytes in and out of both legs
    /// and the plaintext waiting for either sink. They grow again on the next bytes.
    pub fn release_idle_buffers(&mut self) {
        self.upstream.wire_mut().release_idle_buffers();
        self.client.wire_mut().release_idle_buffers();
        for direction in [&mut self.to_server, &mut self.to_client] {
            if direction.pending.is_empty() {
                direction.pending = Vec::new();
            }
        }
    }

    /// Runs both TLS engines as far as the buffered input and the free output allow. Call
    /// after any `push_*`, `consume_*` or `*_closed`; it returns when nothing more can
    /// move without the caller (more input, or room made by sending output).
    pub fn advance(&mut self, certs: &mut dyn CertSource, inspector: &mut dyn Inspector) {
        loop {
            let progressed = match self.phase {
                Phase::UpstreamHandshake => self.drive_upstream_handshake(certs),
                Phase::ClientHandshake => self.drive_client_handshake(),
                Phase::Established => {
                    if !self.inspector_told.established {
                        self.inspector_told.established = true;
                        inspector.established(self.facts.client.alpn.as_deref());
                    }
                    self.relay(inspector)
                }
                Phase::Done => false,
            };
            if !progressed {
                break;
            }
        }
        self.release_handshake_queues_once();
    }

    /// Once both handshakes are done and their flights have drained (the last flight
    /// drains when the caller sends it: checked after `advance` and each `consume_*`),
    /// frees the queues they grew, about 6 KB over both legs, once per session. An idle
    /// session would otherwise hold them until the worker's idle sweep, and sessions
    /// opened meanwhile could not reuse the memory.
    fn release_handshake_queues_once(&mut self) {
        if self.phase != Phase::Established || self.handshake_queues_released {
            return;
        }
        let legs = [self.upstream.wire_mut(), self.client.wire_mut()];
        if legs
            .iter()
            .all(|wire| wire.incoming.is_empty() && wire.outgoing.is_empty())
        {
            for wire in legs {
                wire.release_idle_buffers();
            }
            self.handshake_queues_released = true;
        }
    }

    fn drive_upstream_handshake(&mut self, certs: &mut dyn CertSource) -> bool {
        if self.client.wire().peer_fin {
            // The client cannot finish a handshake after its FIN: stop before forging.
            self.facts.client_end = Some(LegEnd::Eof);
            self.fail_before_client_leg(
                SessionFailure::PeerClosed {
                    peer: Peer::Client,
                    stage: Stage::UpstreamHandshake,
                },
                ALERT_HANDSHAKE_FAILURE,
                false,
            );
            return true;
        }
        let Leg::Tls(upstream) = &mut self.upstream else {
            return false;
        };
        match upstream.connect() {
            Ok(()) => {
                self.on_upstream_handshake_done(certs);
                true
            }
            Err(e) if would_block(&e) => false,
            Err(e) if e.code() == ErrorCode::WANT_X509_LOOKUP => {
                self.facts.server_end = Some(LegEnd::Error);
                self.fail_before_client_leg(
                    SessionFailure::ClientCertificateRequested,
                    ALERT_HANDSHAKE_FAILURE,
                    false,
                );
                true
            }
            Err(e) => {
                let eof = upstream.get_ref().at_eof();
                let alerts = received_alerts(&e, Peer::Server);
                let server_alert = alerts.first().map(|a| a.code);
                self.facts.alerts.extend(alerts);
                let failure = if server_alert.is_none() && eof {
                    self.facts.server_end = Some(LegEnd::Eof);
                    SessionFailure::PeerClosed {
                        peer: Peer::Server,
                        stage: Stage::UpstreamHandshake,
                    }
                } else {
                    self.facts.server_end = Some(LegEnd::Error);
                    SessionFailure::UpstreamHandshake {
                        detail: error_detail(&e),
                    }
                };
                // Pass the server's own alert on; without one, handshake_failure.
                self.fail_before_client_leg(failure, server_alert.unwrap_or(ALERT_HANDSHAKE_FAILURE), false);
                true
            }
        }
    }

    fn on_upstream_handshake_done(&mut self, certs: &mut dyn CertSource) {
        self.facts.stage = Stage::UpstreamVerify;
        let Leg::Tls(upstream) = &self.upstream else {
            return;
        };
        let ssl = upstream.ssl();
        self.facts.upstream = negotiated(ssl);
        self.facts.upstream_resumed = ssl.session_reused();
        if let Some(chain) = ssl.peer_cert_chain() {
            self.facts.server_chain = chain.iter().map(cert_fact).collect();
        }
        let (code, depth) = match ex_index(&UPSTREAM_EXTRA).ok().and_then(|idx| ssl.ex_data(idx)) {
            Some(extra) => {
                if !ssl.session_reused() {
                    let judged = extra
                        .ocsp
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .clone();
                    self.facts.ocsp = judged;
                }
                if let Some(chosen) = ssl.curve() {
                    lock(&extra.memory).learn_group(&extra.key, chosen, extra.post_quantum_sent);
                }
                verification_of(ssl, extra)
            }
            // Our state vanished: treat as unverified (X509_V_ERR_UNSPECIFIED).
            None => (1, 0),
        };
        let leaf = ssl.peer_certificate();
        // decrypt-inbound: the server is the one whose certificate the operator configured.
        // Neither an imported nor a configured certificate outweighs its CA revoking it.
        let revoked = code == X509_CERT_REVOKED;
        let known_leaf = match (&self.inbound, &leaf) {
            (Some(inbound), Some(leaf)) if !revoked => {
                inbound.chain.first().is_some_and(|known| same_certificate(known, leaf))
            }
            _ => false,
        };
        let leaf_sha256: Option<[u8; 32]> = leaf
            .as_ref()
            .and_then(|l| l.digest(MessageDigest::sha256()).ok())
            .and_then(|d| <[u8; 32]>::try_from(&*d).ok());
        let pinned_for = match (code, leaf_sha256) {
            (0 | X509_CERT_REVOKED, _) | (_, None) => None,
            (_, Some(sha)) => self.pins.allows(&self.facts.checked_name, &sha).map(str::to_string),
        };
        let trusted = code == 0 || known_leaf || pinned_for.is_some();
        if !trusted {
            if let Some(chain) = ssl.peer_cert_chain() {
                self.facts.server_chain_der = chain.iter().filter_map(|cert| cert.to_der().ok()).collect();
            }
        }
        let reason = if code != 0 && known_leaf {
            format!(
                "the configured certificate of the decrypt-inbound rule (the chain alone: {})",
                verify_reason(code)
            )
        } else if let Some(host) = pinned_for {
            format!(
                "certificate imported for {host} (loupe trust import --host); the chain alone: {}",
                verify_reason(code)
            )
        } else {
            verify_reason(code)
        };
        self.facts.verify = Some(VerifyFact {
            code: if trusted { 0 } else { code },
            depth,
            reason: reason.clone(),
            checked_name: self.facts.checked_name.clone(),
            trusted,
        });
        let upstream_alpn = ssl.selected_alpn_protocol().map(<[u8]>::to_vec);
        let action = if EXPIRY_CODES.contains(&code) {
            self.expired_action
        } else {
            self.untrusted_action
        };

        if !trusted && action == UntrustedAction::Block {
            self.fail_before_client_leg(
                SessionFailure::UpstreamUntrusted { code, depth, reason },
                ALERT_ACCESS_DENIED,
                true,
            );
            return;
        }
        let verdict = if trusted { Verdict::Trusted } else { Verdict::Untrusted };
        self.facts.verdict = Some(verdict);
        self.facts.stage = Stage::ClientHandshake;
        let forged = match (&self.inbound, leaf) {
            (Some(inbound), _) => Ok(Arc::clone(inbound)),
            (None, Some(leaf)) => certs.certificate_for(&leaf, verdict, &self.facts.checked_name),
            (None, None) => Err("the server presented no certificate".to_string()),
        };
        let forged = match forged {
            Ok(forged) => forged,
            Err(detail) => {
                self.fail_before_client_leg(SessionFailure::Forge { detail }, ALERT_INTERNAL_ERROR, true);
                return;
            }
        };
        let ctx = match verdict {
            Verdict::Trusted => &self.client_trusted,
            Verdict::Untrusted => &self.client_untrusted,
        };
        let keylog = self.keylog.clone();
        let attached = client_ssl(ctx, &forged, upstream_alpn)
            .and_then(|ssl| with_keylog(ssl, keylog))
            .and_then(|ssl| self.client.attach(ssl).map(|_| ()));
        match attached {
            Ok(()) => self.phase = Phase::ClientHandshake,
            Err(detail) => {
                let failure = SessionFailure::Setup {
                    stage: Stage::ClientHandshake,
                    detail,
                };
                self.fail_before_client_leg(failure, ALERT_INTERNAL_ERROR, true);
            }
        }
    }

    fn drive_client_handshake(&mut self) -> bool {
        let Leg::Tls(client) = &mut self.client else {
            return false;
        };
        match client.accept() {
            Ok(()) => {
                let ssl = client.ssl();
                self.facts.client = negotiated(ssl);
                self.facts.client_resumed = ssl.session_reused();
                self.facts.stage = Stage::Established;
                self.phase = Phase::Established;
                true
            }
            Err(e) if would_block(&e) => false,
            Err(e) => {
                let eof = client.get_ref().at_eof();
                let mut alerts = received_alerts(&e, Peer::Client);
                let mut detail = error_detail(&e);
                if alerts.is_empty() {
                    if let Some((fatal, code)) = client.get_ref().plaintext_alert() {
                        let alert = AlertFact::new(Peer::Client, fatal, code);
                        detail = format!("the client sent {} alert {} ({code})", alert_level(fatal), alert.name);
                        alerts.push(alert);
                    }
                }
                let failure = if alerts.is_empty() && eof {
                    self.facts.client_end = Some(LegEnd::Eof);
                    SessionFailure::PeerClosed {
                        peer: Peer::Client,
                        stage: Stage::ClientHandshake,
                    }
                } else {
                    self.facts.client_end = Some(LegEnd::Error);
                    SessionFailure::ClientHandshake { detail }
                };
                self.facts.alerts.extend(alerts);
                // BoringSSL queued its own alert for the client, if any; send it, then FIN.
                self.to_client.sink_closed = true;
                self.close_upstream(true);
                self.finish(failure);
                true
            }
        }
    }

    /// Moves plaintext both ways through the inspector; handles the ends of each direction.
    fn relay(&mut self, inspector: &mut dyn Inspector) -> bool {
        let (Leg::Tls(client), Leg::Tls(server)) = (&mut self.client, &mut self.upstream) else {
            return false;
        };
        // Left uninitialised: zeroing 16 KiB on every relay showed in the request profile.
        let mut scratch = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let bytes = &mut self.facts.bytes;
        let mut end_session = SessionEnd::Open;
        let (to_server, to_client) = (&mut self.to_server, &mut self.to_client);
        let up = pump(client, server, to_server, &mut scratch, &mut |p, pending| {
            bytes.plaintext_client_to_server += p.len() as u64;
            let mut relay = Relay {
                to_server: pending,
                to_client: &mut to_client.pending,
                end_session: &mut end_session,
            };
            inspector.client_to_server(p, &mut relay)
        });
        let down = pump(server, client, to_client, &mut scratch, &mut |p, pending| {
            bytes.plaintext_server_to_client += p.len() as u64;
            let mut relay = Relay {
                to_server: &mut to_server.pending,
                to_client: pending,
                end_session: &mut end_session,
            };
            inspector.server_to_client(p, &mut relay)
        });
        let mut progressed = false;
        for (result, source_peer) in [(up, Peer::Client), (down, Peer::Server)] {
            match result {
                Ok(moved) => progressed |= moved,
                Err(LegError { on_source, error }) => {
                    let peer = match (source_peer, on_source) {
                        (Peer::Client, true) | (Peer::Server, false) => Peer::Client,
                        _ => Peer::Server,
                    };
                    self.stream_error(peer, &error);
                    return true;
                }
            }
        }
        if let Source::Ended(end) = self.to_server.source {
            self.facts.client_end.get_or_insert(end);
            if !self.inspector_told.client_ended {
                self.inspector_told.client_ended = true;
                let mut relay = Relay {
                    to_server: &mut self.to_server.pending,
                    to_client: &mut self.to_client.pending,
                    end_session: &mut end_session,
                };
                inspector.client_ended(&mut relay);
                progressed = true;
            }
        }
        if let Source::Ended(end) = self.to_client.source {
            self.facts.server_end.get_or_insert(end);
            if !self.inspector_told.server_ended {
                self.inspector_told.server_ended = true;
                let mut relay = Relay {
                    to_server: &mut self.to_server.pending,
                    to_client: &mut self.to_client.pending,
                    end_session: &mut end_session,
                };
                inspector.server_ended(&mut relay);
                progressed = true;
            }
        }
        if end_session == SessionEnd::Reset {
            // A drop: nothing queued goes, nothing more is read; the TCP layer resets both
            // connections (see `wants_reset`).
            for direction in [&mut self.to_server, &mut self.to_client] {
                direction.pending.clear();
                if direction.source == Source::Open {
                    direction.source = Source::Stopped;
                }
                direction.sink_closed = true;
            }
            self.facts.ended_by_inspection = true;
            self.reset_by_inspection = true;
            self.phase = Phase::Done;
            return true;
        }
        if end_session == SessionEnd::CloseNotify {
            // The inspector answered or refused: what is queued goes, then close_notify to
            // both peers; nothing more is read.
            for direction in [&mut self.to_server, &mut self.to_client] {
                if direction.source == Source::Open {
                    direction.source = Source::Stopped;
                    direction.notify_sink = true;
                }
            }
            self.facts.ended_by_inspection = true;
            progressed = true;
        }
        let (Leg::Tls(client), Leg::Tls(server)) = (&mut self.client, &mut self.upstream) else {
            return progressed;
        };
        progressed |= close_sink(server, &mut self.to_server);
        progressed |= close_sink(client, &mut self.to_client);
        if self.to_server.sink_closed && self.to_client.sink_closed {
            self.phase = Phase::Done;
            progressed = true;
        }
        progressed
    }

    /// A TLS error on `peer`'s leg after the handshakes: both directions end. Bytes already
    /// queued still go out; neither side gets a close_notify (the abort stays visible).
    fn stream_error(&mut self, peer: Peer, error: &boring::ssl::Error) {
        let alerts = received_alerts(error, peer);
        self.facts.alerts.extend(alerts);
        let end = Some(LegEnd::Error);
        match peer {
            Peer::Client => self.facts.client_end = self.facts.client_end.or(end),
            Peer::Server => self.facts.server_end = self.facts.server_end.or(end),
        }
        for direction in [&mut self.to_server, &mut self.to_client] {
            direction.source = Source::Ended(LegEnd::Error);
            direction.sink_closed = true;
        }
        self.finish(SessionFailure::Stream {
            peer,
            detail: error_detail(error),
        });
    }

    /// Fails the session before the client leg has spoken TLS: a fatal alert is queued for
    /// the client, and the server gets close_notify when its handshake completed.
    fn fail_before_client_leg(&mut self, failure: SessionFailure, alert: u8, upstream_done: bool) {
        let [major, minor] = self.alert_record_version.to_be_bytes();
        let record = [21, major, minor, 0, 2, 2, alert];
        let client = self.client.wire_mut();
        client.incoming.consume(usize::MAX);
        client.outgoing.push(&record);
        self.facts.alert_sent_to_client = Some(alert);
        self.to_client.sink_closed = true;
        self.close_upstream(upstream_done);
        self.finish(failure);
    }

    /// Ends the server leg: close_notify first when its handshake completed, then FIN.
    fn close_upstream(&mut self, polite: bool) {
        if polite {
            if let Leg::Tls(upstream) = &mut self.upstream {
                // Best effort: a full queue or a dead connection only loses the close_notify.
                let _ = upstream.shutdown();
            }
        }
        self.to_server.sink_closed = true;
    }

    fn finish(&mut self, failure: SessionFailure) {
        self.facts.stage = failure.stage();
        for direction in [&mut self.to_server, &mut self.to_client] {
            if direction.source == Source::Open {
                direction.source = Source::Ended(LegEnd::Error);
            }
            direction.sink_closed = true;
        }
        self.failure.get_or_insert(failure);
        self.phase = Phase::Done;
    }
}

fn push(wire: &mut Wire, bytes: &[u8], discard: bool) -> usize {
    if discard {
        return bytes.len();
    }
    let n = bytes.len().min(wire.incoming_room());
    wire.incoming.push(&bytes[..n]);
    wire.note_tail(&bytes[..n]);
    n
}

fn alert_level(fatal: bool) -> &'static str {
    if fatal {
        "fatal"
    } else {
        "warning"
    }
}

fn would_block(error: &boring::ssl::Error) -> bool {
    matches!(error.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE)
}

/// Moves plaintext from `source` to `sink` while the sink's queue has room for a record.
/// Returns whether anything moved.
fn pump(
    source: &mut SslStream<Wire>,
    sink: &mut SslStream<Wire>,
    direction: &mut Direction,
    scratch: &mut [MaybeUninit<u8>],
    inspect: &mut dyn FnMut(&[u8], &mut Vec<u8>) -> Pass,
) -> Result<bool, LegError> {
    let mut progressed = false;
    loop {
        if !direction.pending.is_empty() {
            match sink.ssl_write(&direction.pending) {
                Ok(n) => {
                    direction.pending.drain(..n.min(direction.pending.len()));
                    progressed = true;
                    continue;
                }
                Err(e) if would_block(&e) => return Ok(progressed),
                Err(error) => {
                    return Err(LegError {
                        on_source: false,
                        error,
                    })
                }
            }
        }
        if direction.source != Source::Open || direction.sink_closed {
            return Ok(progressed);
        }
        if sink.get_ref().outgoing_room() < READ_CHUNK + RECORD_EXPANSION {
            return Ok(progressed);
        }
        if source.ssl().pending() == 0 && !source.get_ref().record_ready() {
            return Ok(progressed);
        }
        match source.ssl_read_uninit(scratch) {
            Ok(n) => {
                let read = &scratch[..n.min(scratch.len())];
                // SAFETY: `ssl_read_uninit` guarantees that the first `n` bytes it reports
                // are initialised, and `read` is no longer than that.
                let plaintext = unsafe { &*(read as *const [MaybeUninit<u8>] as *const [u8]) };
                progressed = true;
                if inspect(plaintext, &mut direction.pending) == Pass::Taken {
                    // Whatever the inspector let through is in `pending`: written above.
                    continue;
                }
                match sink.ssl_write(plaintext) {
                    Ok(written) => direction
                        .pending
                        .extend_from_slice(&plaintext[written.min(plaintext.len())..]),
                    Err(e) if would_block(&e) => direction.pending.extend_from_slice(plaintext),
                    Err(error) => {
                        return Err(LegError {
                            on_source: false,
                            error,
                        })
                    }
                }
            }
            Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                direction.source = Source::Ended(LegEnd::CloseNotify);
                direction.notify_sink = true;
                return Ok(true);
            }
            Err(e) if would_block(&e) => return Ok(progressed),
            Err(e) if source.get_ref().at_eof() && e.ssl_error().is_none() => {
                direction.source = Source::Ended(LegEnd::Eof);
                return Ok(true);
            }
            Err(error) => {
                return Err(LegError { on_source: true, error });
            }
        }
    }
}

/// Once a direction's source ended and its plaintext is through, ends the sink: with
/// close_notify when the source ended with one, with a bare FIN otherwise.
fn close_sink(sink: &mut SslStream<Wire>, direction: &mut Direction) -> bool {
    if direction.sink_closed || direction.source == Source::Open || !direction.pending.is_empty() {
        return false;
    }
    if direction.notify_sink {
        match sink.shutdown() {
            Ok(_) => {}
            // No room for the alert yet: try again once the caller drained the queue.
            Err(e) if would_block(&e) => return false,
            Err(_) => {}
        }
    }
    direction.sink_closed = true;
    true
}

/// Fatal alerts the peer sent, as BoringSSL reported them (reason 1000 + description).
fn received_alerts(error: &boring::ssl::Error, sender: Peer) -> Vec<AlertFact> {
    let mut alerts: Vec<AlertFact> = Vec::new();
    let Some(stack) = error.ssl_error() else {
        return alerts;
    };
    for e in stack.errors() {
        if e.library_code() != ERR_LIB_SSL {
            continue;
        }
        let Ok(code) = u8::try_from(e.reason_code() - SSL_AD_REASON_OFFSET) else {
            continue;
        };
        if code != 0 && !alerts.iter().any(|a| a.code == code) {
            alerts.push(AlertFact::new(sender, true, code));
        }
    }
    alerts
}

/// BoringSSL's words for an error, as operators grep for them.
fn error_detail(error: &boring::ssl::Error) -> String {
    match (error.ssl_error(), error.io_error()) {
        (Some(stack), _) => {
            let reasons: Vec<&str> = stack.errors().iter().filter_map(|e| e.reason()).collect();
            if reasons.is_empty() {
                error.to_string()
            } else {
                reasons.join("; ")
            }
        }
        (None, Some(io)) => io.to_string(),
        (None, None) if error.code() == ErrorCode::SYSCALL => "connection closed unexpectedly".to_string(),
        (None, None) => error.to_string(),
    }
}

fn negotiated(ssl: &SslRef) -> NegotiatedFact {
    NegotiatedFact {
        version: Some(ssl.version_str().to_string()),
        cipher: ssl.current_cipher().map(|cipher| {
            names::cipher_suite_name(cipher.protocol_id())
                .or(cipher.standard_name())
                .unwrap_or(cipher.name())
                .to_string()
        }),
        group: ssl.curve_name().map(str::to_string).or_else(|| {
            ssl.curve()
                .map(|g| names::group_name(g).unwrap_or("unknown").to_string())
        }),
        alpn: ssl.selected_alpn_protocol().map(escape_protocol),
        hello_retry: ssl.used_hello_retry_request(),
    }
}

// ---------------------------------------------------------------------------------------
// ALPN helpers
// ---------------------------------------------------------------------------------------

/// The ClientHello parser writes protocol bytes outside printable ASCII (and the
/// backslash) as `\xNN`; this undoes it. `None` for a malformed escape.
fn unescape_protocol(name: &str) -> Option<Vec<u8>> {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            let hex = bytes.get(i + 1..i + 4)?;
            if hex[0] != b'x' {
                return None;
            }
            let text = std::str::from_utf8(&hex[1..]).ok()?;
            out.push(u8::from_str_radix(text, 16).ok()?);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Same form as the ClientHello parser: printable ASCII as is, the rest as `\xNN`.
fn escape_protocol(protocol: &[u8]) -> String {
    let mut out = String::with_capacity(protocol.len());
    for &b in protocol {
        if (0x20..0x7f).contains(&b) && b != b'\\' {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// The client's ALPN list in wire format (length-prefixed names); unusable names dropped.
fn alpn_wire(protocols: &[String]) -> Vec<u8> {
    let mut wire = Vec::new();
    for protocol in protocols {
        let Some(bytes) = unescape_protocol(protocol) else {
            continue;
        };
        let Ok(len) = u8::try_from(bytes.len()) else {
            continue;
        };
        if len == 0 || wire.len() + 1 + bytes.len() > usize::from(u16::MAX) {
            continue;
        }
        wire.push(len);
        wire.extend_from_slice(&bytes);
    }
    wire
}

/// `protocol` as a slice of the client's wire-format list, if the client offered it.
fn find_alpn<'a>(client_list: &'a [u8], protocol: &[u8]) -> Option<&'a [u8]> {
    let mut rest = client_list;
    while let Some((&len, tail)) = rest.split_first() {
        let name = tail.get(..usize::from(len))?;
        if name == protocol {
            return Some(name);
        }
        rest = &tail[usize::from(len)..];
    }
    None
}

// ---------------------------------------------------------------------------------------
// Certificate facts
// ---------------------------------------------------------------------------------------

/// A certificate as the decryption log shows it.
pub fn cert_fact(cert: &X509Ref) -> CertFact {
    CertFact {
        subject: name_line(cert.subject_name()),
        issuer: name_line(cert.issuer_name()),
        sans: subject_alt_names(cert),
        not_before: rfc3339(cert.not_before()),
        not_after: rfc3339(cert.not_after()),
        sha256: cert
            .digest(MessageDigest::sha256())
            .map(|d| hex::encode(&*d))
            .unwrap_or_default(),
        sha1: cert
            .digest(MessageDigest::sha1())
            .map(|d| hex::encode(&*d))
            .unwrap_or_default(),
        serial: cert
            .serial_number()
            .to_bn()
            .and_then(|bn| bn.to_hex_str().map(|s| s.to_ascii_lowercase()))
            .unwrap_or_default(),
    }
}

/// `C=US, O=Example, CN=www.example.com`, in certificate order.
pub(crate) fn name_line(name: &X509NameRef) -> String {
    let parts: Vec<String> = name
        .entries()
        .map(|entry| {
            let key = entry
                .object()
                .nid()
                .short_name()
                .map(str::to_string)
                .unwrap_or_else(|_| entry.object().to_string());
            let value = entry
                .data()
                .as_utf8()
                .map(|s| s.to_string())
                .unwrap_or_else(|_| String::from_utf8_lossy(entry.data().as_slice()).into_owned());
            format!("{key}={value}")
        })
        .collect();
    parts.join(", ")
}

fn subject_alt_names(cert: &X509Ref) -> Vec<String> {
    let Some(names) = cert.subject_alt_names() else {
        return Vec::new();
    };
    names
        .iter()
        .filter_map(|name| {
            if let Some(dns) = name.dnsname() {
                return Some(dns.to_string());
            }
            if let Some(ip) = name.ipaddress() {
                return match ip.len() {
                    4 => <[u8; 4]>::try_from(ip).ok().map(|a| IpAddr::from(a).to_string()),
                    16 => <[u8; 16]>::try_from(ip).ok().map(|a| IpAddr::from(a).to_string()),
                    _ => Some(hex::encode(ip)),
                };
            }
            name.email().or(name.uri()).map(str::to_string)
        })
        .collect()
}

/// RFC 3339 UTC (`2025-01-31T12:00:00Z`); OpenSSL's form if the time cannot be read.
fn rfc3339(time: &Asn1TimeRef) -> String {
    let Some(diff) = Asn1Time::from_unix(0).ok().and_then(|epoch| epoch.diff(time).ok()) else {
        return time.to_string();
    };
    let secs = i64::from(diff.days) * 86_400 + i64::from(diff.secs);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests;
