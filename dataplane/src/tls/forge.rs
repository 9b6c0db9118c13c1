//! Forged certificates: leaf certificates that mirror the upstream leaf (subject, SANs),
//! signed by the decryption CA (or by the untrusted CA when the upstream chain failed
//! validation and the profile says `forward-untrust`), cached by upstream leaf and verdict.
//!
//! What a forgery copies and what it chooses:
//! - subject: copied byte for byte; an empty subject becomes `CN=<fallback name>`.
//! - names: the upstream's DNS and IP SANs. A leaf without SANs is named by its commonName
//!   when that looks like a host name or address (what legacy name matching accepted), and
//!   only otherwise by the fallback name (SNI or server address). A forgery never names a
//!   host the upstream certificate itself does not name, unless the upstream names nothing.
//! - validity: the intersection of the upstream's and the signing CA's windows, at most
//!   [`MAX_FORGED_LIFETIME`] (397 days, the CA/Browser Forum's cap for publicly trusted
//!   leaves, which scanners such as testssl.sh hold every leaf to) placed so it holds the
//!   time of forging: a 10-year origin certificate gets a 397-day forgery, never an 8-year
//!   one. A cached forgery past its end is signed afresh. An upstream that is expired (or
//!   not yet valid) yields a forgery that is expired (or not yet valid) too: the honest
//!   mirror.
//! - not copied: OCSP must-staple (we do not staple), SCTs (they sign the real certificate),
//!   name constraints, policies.
//! - key: one ECDSA P-256 key per process, generated in [`Forger::new`] (so rotated on
//!   restart): a forgery costs one signature, not a key generation.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use boring::asn1::{Asn1Time, Asn1TimeRef};
use boring::ec::{EcGroup, EcKey};
use boring::error::ErrorStack;
use boring::hash::MessageDigest;
use boring::nid::Nid;
use boring::pkey::{PKey, Private};
use boring::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName, SubjectKeyIdentifier,
};
use boring::x509::{X509Name, X509Ref, X509};

use super::ca::{random_serial, CaError, CaKeyType, CaRole, DecryptionCa};

/// The longest validity a forgery gets: 397 days.
pub const MAX_FORGED_LIFETIME: i64 = 397 * 86_400;
/// How far before the time of forging a capped forgery starts, for clients whose clocks
/// run a little behind.
const CLOCK_SKEW_ALLOWANCE: i64 = 86_400;

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Whether the upstream chain validated: decides which CA signs the forgery. A trusted
/// forgery is never issued for an untrusted upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    Trusted,
    Untrusted,
}

/// A forged leaf and what the client-side TLS server presents with it.
#[derive(Debug, Clone)]
pub struct ForgedCert {
    /// Leaf first, then the signing CA.
    pub chain: Vec<X509>,
    pub key: PKey<Private>,
}

/// What the split-TLS session asks for a certificate to present to the client.
pub trait CertSource {
    /// `fallback_name` names the leaf when the upstream leaf has no usable subject/SAN
    /// (the SNI, or the server IP).
    fn certificate_for(
        &mut self,
        upstream_leaf: &X509Ref,
        verdict: Verdict,
        fallback_name: &str,
    ) -> Result<Arc<ForgedCert>, String>;
}

/// Counters of the forger, shared by all its clones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForgeStats {
    /// Certificates signed (cache misses that produced a certificate).
    pub signed: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Entries pushed out of the full cache.
    pub evictions: u64,
}

/// What went wrong setting up the forger or forging one certificate.
#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    #[error("the forged-certificate cache needs a capacity of at least 1")]
    ZeroCapacity,
    #[error("the forger was given the {found} where the {expected} belongs")]
    WrongRole { expected: CaRole, found: CaRole },
    #[error("the decryption CA and the untrusted CA are the same certificate; untrusted upstreams would get trusted forgeries")]
    SameCa,
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("generating the process-wide key of forged certificates failed: {0}")]
    LeafKey(ErrorStack),
    #[error("forging a certificate for {name}: {what} failed: {source}")]
    Crypto {
        name: String,
        what: &'static str,
        source: ErrorStack,
    },
    #[error("forging a certificate for {name:?}: the upstream certificate names no host (no SAN, no usable commonName) and the fallback name is not a host name or address")]
    NoName { name: String },
}

/// Signs forged leaf certificates and caches them.
///
/// Cloning is cheap and every clone shares the CAs, the leaf key, the cache and the counters
/// (give each worker a clone). The cache lock is taken twice per client handshake at most
/// (look-up, then insert after a miss) and never per packet; signing happens outside it.
#[derive(Clone)]
pub struct Forger {
    shared: Arc<Shared>,
}

struct Shared {
    ca: DecryptionCa,
    untrusted_ca: DecryptionCa,
    leaf_key: PKey<Private>,
    cache: Mutex<ForgeCache>,
}

impl Forger {
    /// `ca` signs forgeries for trusted upstreams, `untrusted_ca` for untrusted ones; their
    /// roles are checked so the two can never be swapped. `capacity` bounds the cache.
    pub fn new(ca: DecryptionCa, untrusted_ca: DecryptionCa, capacity: usize) -> Result<Forger, ForgeError> {
        if capacity == 0 {
            return Err(ForgeError::ZeroCapacity);
        }
        for (ca, expected) in [(&ca, CaRole::Decryption), (&untrusted_ca, CaRole::Untrusted)] {
            if ca.role() != expected {
                return Err(ForgeError::WrongRole {
                    expected,
                    found: ca.role(),
                });
            }
        }
        if ca.cert_pem() == untrusted_ca.cert_pem() {
            return Err(ForgeError::SameCa);
        }
        let leaf_key = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)
            .and_then(|group| EcKey::generate(&group))
            .and_then(PKey::from_ec_key)
            .map_err(ForgeError::LeafKey)?;
        Ok(Forger {
            shared: Arc::new(Shared {
                ca,
                untrusted_ca,
                leaf_key,
                cache: Mutex::new(ForgeCache::new(capacity)),
            }),
        })
    }

    /// Loads both CAs from `state_dir`, generating (and logging) those that do not exist yet.
    pub fn from_state_dir(state_dir: &std::path::Path, capacity: usize) -> Result<Forger, ForgeError> {
        let ca = DecryptionCa::load_or_init(state_dir, CaRole::Decryption)?;
        let untrusted_ca = DecryptionCa::load_or_init(state_dir, CaRole::Untrusted)?;
        Forger::new(ca, untrusted_ca, capacity)
    }

    /// A forger with both CAs generated in memory, nothing on disk. For tests (here and in
    /// other modules); the daemon always uses CAs from the state directory, which clients
    /// can be told to trust.
    pub fn ephemeral(capacity: usize) -> Result<Forger, ForgeError> {
        let ca = DecryptionCa::generate(CaRole::Decryption, CaKeyType::EcdsaP256)?;
        let untrusted_ca = DecryptionCa::generate(CaRole::Untrusted, CaKeyType::EcdsaP256)?;
        Forger::new(ca, untrusted_ca, capacity)
    }

    pub fn decryption_ca(&self) -> &DecryptionCa {
        &self.shared.ca
    }

    pub fn untrusted_ca(&self) -> &DecryptionCa {
        &self.shared.untrusted_ca
    }

    pub fn stats(&self) -> ForgeStats {
        self.cache().stats
    }

    /// Certificates currently cached.
    pub fn cached(&self) -> usize {
        self.cache().slots.len()
    }

    pub fn capacity(&self) -> usize {
        self.cache().capacity
    }

    fn cache(&self) -> MutexGuard<'_, ForgeCache> {
        // The cache holds no invariant a panicking holder could break halfway that matters
        // more than serving on, so a poisoned lock is still used.
        self.shared.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Signs a fresh forgery, bypassing the cache. Returns whether the fallback name was
    /// used (then the certificate depends on it, not only on the upstream leaf).
    fn forge(
        &self,
        upstream: &X509Ref,
        verdict: Verdict,
        fallback_name: &str,
    ) -> Result<(ForgedCert, bool), ForgeError> {
        let signer = match verdict {
            Verdict::Trusted => &self.shared.ca,
            Verdict::Untrusted => &self.shared.untrusted_ca,
        };
        let names = LeafNames::mirror(upstream, fallback_name)?;
        let crypto = |what| {
            let name = names.describe();
            move |source| ForgeError::Crypto { name, what, source }
        };
        let upstream_validity = Validity::of(upstream).map_err(crypto("reading the upstream validity"))?;
        let ca_validity = Validity::of(signer.cert()).map_err(crypto("reading the CA validity"))?;
        let validity = upstream_validity
            .clamp_within(ca_validity)
            .capped_around(unix_now(), MAX_FORGED_LIFETIME);
        let leaf = build_leaf(upstream, signer, &self.shared.leaf_key, &names, validity, fallback_name)
            .map_err(crypto("signing the leaf"))?;
        let forged = ForgedCert {
            chain: vec![leaf, signer.cert().to_owned()],
            key: self.shared.leaf_key.clone(),
        };
        Ok((forged, names.used_fallback))
    }
}

impl CertSource for Forger {
    fn certificate_for(
        &mut self,
        upstream_leaf: &X509Ref,
        verdict: Verdict,
        fallback_name: &str,
    ) -> Result<Arc<ForgedCert>, String> {
        let digest = upstream_leaf
            .digest(MessageDigest::sha256())
            .map_err(|e| format!("forging a certificate for {fallback_name}: hashing the upstream leaf failed: {e}"))?;
        let mut upstream_sha256 = [0u8; 32];
        upstream_sha256.copy_from_slice(&digest);
        let key = CacheKey {
            upstream_sha256,
            verdict,
        };
        if let Some(hit) = self.cache().lookup(&key, fallback_name) {
            // A forgery capped short of its upstream's end runs out while cached: re-sign.
            let now = unix_now();
            let expired_early = match (
                hit.chain.first().map(|leaf| Validity::of(leaf)),
                Validity::of(upstream_leaf),
            ) {
                (Some(Ok(forged)), Ok(upstream)) => forged.not_after < now && upstream.not_after > forged.not_after,
                _ => false,
            };
            if !expired_early {
                return Ok(hit);
            }
        }
        let (forged, used_fallback) = self
            .forge(upstream_leaf, verdict, fallback_name)
            .map_err(|e| e.to_string())?;
        let forged = Arc::new(forged);
        let fallback = used_fallback.then(|| fallback_name.to_string());
        self.cache().insert(key, Arc::clone(&forged), fallback);
        Ok(forged)
    }
}

/// Cache key: the upstream leaf (by SHA-256 of its DER) and the verdict, because the same
/// leaf may be trusted on one path and not on another (a per-host pin, a changed store).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct CacheKey {
    upstream_sha256: [u8; 32],
    verdict: Verdict,
}

struct CacheSlot {
    key: CacheKey,
    cert: Arc<ForgedCert>,
    /// The fallback name the forgery carries, when the upstream leaf named no host: a
    /// request under another name must not get it.
    fallback: Option<String>,
    /// CLOCK reference bit: set on a hit, cleared as the hand passes.
    referenced: bool,
}

/// A bounded cache with CLOCK (second-chance) eviction: hits only set a bit, eviction is
/// amortised O(1), and an entry used since the hand last passed survives one more round.
struct ForgeCache {
    capacity: usize,
    index: HashMap<CacheKey, usize>,
    slots: Vec<CacheSlot>,
    hand: usize,
    stats: ForgeStats,
    full_reported: bool,
}

impl ForgeCache {
    fn new(capacity: usize) -> ForgeCache {
        ForgeCache {
            capacity,
            index: HashMap::with_capacity(capacity.min(4096)),
            slots: Vec::with_capacity(capacity.min(4096)),
            hand: 0,
            stats: ForgeStats::default(),
            full_reported: false,
        }
    }

    fn lookup(&mut self, key: &CacheKey, fallback_name: &str) -> Option<Arc<ForgedCert>> {
        let hit = self
            .index
            .get(key)
            .map(|&i| &mut self.slots[i])
            .filter(|slot| match &slot.fallback {
                Some(name) => name == fallback_name,
                None => true,
            });
        match hit {
            Some(slot) => {
                slot.referenced = true;
                self.stats.cache_hits += 1;
                Some(Arc::clone(&slot.cert))
            }
            None => {
                self.stats.cache_misses += 1;
                None
            }
        }
    }

    fn insert(&mut self, key: CacheKey, cert: Arc<ForgedCert>, fallback: Option<String>) {
        self.stats.signed += 1;
        let slot = CacheSlot {
            key,
            cert,
            fallback,
            referenced: false,
        };
        if let Some(&i) = self.index.get(&key) {
            // Another worker forged the same leaf meanwhile, or the fallback name changed.
            self.slots[i] = slot;
            return;
        }
        if self.slots.len() < self.capacity {
            self.index.insert(key, self.slots.len());
            self.slots.push(slot);
            return;
        }
        // Full: one pass clears every reference bit at most, so this ends within two turns.
        loop {
            let candidate = &mut self.slots[self.hand];
            if candidate.referenced {
                candidate.referenced = false;
                self.hand = (self.hand + 1) % self.capacity;
                continue;
            }
            self.index.remove(&candidate.key);
            *candidate = slot;
            self.index.insert(key, self.hand);
            self.hand = (self.hand + 1) % self.capacity;
            self.stats.evictions += 1;
            break;
        }
        if !self.full_reported {
            self.full_reported = true;
            tracing::info!(
                "forged-certificate cache full ({} certificates): evicting the least recently used; \
                 the evictions counter tracks how often",
                self.capacity
            );
        }
    }
}

/// A validity window in seconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Validity {
    not_before: i64,
    not_after: i64,
}

impl Validity {
    fn of(cert: &X509Ref) -> Result<Validity, ErrorStack> {
        Ok(Validity {
            not_before: unix_seconds(cert.not_before())?,
            not_after: unix_seconds(cert.not_after())?,
        })
    }

    /// The intersection with the CA's window, so the leaf is never valid when its issuer
    /// is not. When the two do not overlap (an upstream that expired before the CA was
    /// made, or starts after it ends) the result collapses onto the upstream's notAfter
    /// clamped to the CA's: still notBefore <= notAfter, still invalid now, and an expired
    /// forgery still shows the real expiry date.
    fn clamp_within(self, ca: Validity) -> Validity {
        let not_after = self.not_after.min(ca.not_after);
        let not_before = self.not_before.max(ca.not_before).min(not_after);
        Validity { not_before, not_after }
    }
}

impl Validity {
    /// At most `lifetime` long, holding `now` where the window allows: starting a little
    /// before `now`, or at the window's start or end - `lifetime` when `now` is near them
    /// or outside (an expired upstream keeps its real end).
    fn capped_around(self, now: i64, lifetime: i64) -> Validity {
        if self.not_after - self.not_before <= lifetime {
            return self;
        }
        let latest_start = self.not_after - lifetime;
        let not_before = (now - CLOCK_SKEW_ALLOWANCE).clamp(self.not_before, latest_start);
        Validity {
            not_before,
            not_after: not_before + lifetime,
        }
    }
}

fn unix_seconds(time: &Asn1TimeRef) -> Result<i64, ErrorStack> {
    let epoch = Asn1Time::from_unix(0)?;
    let diff = epoch.diff(time)?;
    Ok(i64::from(diff.days) * 86_400 + i64::from(diff.secs))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LeafName {
    Dns(String),
    Ip(IpAddr),
}

impl LeafName {
    /// A name that looks like a host name (wildcards allowed) or an address; commonNames
    /// such as "Acme Corp Server" are not names.
    fn parse(text: &str) -> Option<LeafName> {
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Some(LeafName::Ip(ip));
        }
        let host_like = !text.is_empty()
            && text.len() <= 253
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'*' | b'_'));
        host_like.then(|| LeafName::Dns(text.to_string()))
    }
}

struct LeafNames {
    names: Vec<LeafName>,
    used_fallback: bool,
}

impl LeafNames {
    fn mirror(upstream: &X509Ref, fallback_name: &str) -> Result<LeafNames, ForgeError> {
        let mut names = Vec::new();
        if let Some(sans) = upstream.subject_alt_names() {
            for san in &sans {
                if let Some(dns) = san.dnsname() {
                    names.push(LeafName::Dns(dns.to_string()));
                } else if let Some(ip) = san.ipaddress() {
                    if let Ok(v4) = <[u8; 4]>::try_from(ip) {
                        names.push(LeafName::Ip(IpAddr::from(v4)));
                    } else if let Ok(v6) = <[u8; 16]>::try_from(ip) {
                        names.push(LeafName::Ip(IpAddr::from(v6)));
                    }
                }
            }
        }
        if names.is_empty() {
            for entry in upstream.subject_name().entries_by_nid(Nid::COMMONNAME) {
                if let Some(name) = entry.data().as_utf8().ok().and_then(|cn| LeafName::parse(&cn)) {
                    names.push(name);
                }
            }
        }
        if !names.is_empty() {
            return Ok(LeafNames {
                names,
                used_fallback: false,
            });
        }
        match LeafName::parse(fallback_name) {
            Some(name) => Ok(LeafNames {
                names: vec![name],
                used_fallback: true,
            }),
            None => Err(ForgeError::NoName {
                name: fallback_name.to_string(),
            }),
        }
    }

    /// The first name, for error messages.
    fn describe(&self) -> String {
        match self.names.first() {
            Some(LeafName::Dns(name)) => name.clone(),
            Some(LeafName::Ip(ip)) => ip.to_string(),
            None => "(no name)".to_string(),
        }
    }
}

fn build_leaf(
    upstream: &X509Ref,
    signer: &DecryptionCa,
    leaf_key: &PKey<Private>,
    names: &LeafNames,
    validity: Validity,
    fallback_name: &str,
) -> Result<X509, ErrorStack> {
    let mut builder = X509::builder()?;
    builder.set_version(2)?;
    builder.set_serial_number(&*random_serial()?.to_asn1_integer()?)?;
    builder.set_issuer_name(signer.cert().subject_name())?;
    // RFC 5280: with an empty subject the SAN extension must be critical.
    let mut subject_empty = false;
    if upstream.subject_name().entries().next().is_some() {
        builder.set_subject_name(upstream.subject_name())?;
    } else {
        let mut name = X509Name::builder()?;
        // A commonName holds 64 characters at most; a longer name lives in the SAN only.
        if name.append_entry_by_nid(Nid::COMMONNAME, fallback_name).is_ok() {
            builder.set_subject_name(&name.build())?;
        } else {
            subject_empty = true;
        }
    }
    builder.set_pubkey(leaf_key)?;
    builder.set_not_before(&*Asn1Time::from_unix(validity.not_before)?)?;
    builder.set_not_after(&*Asn1Time::from_unix(validity.not_after)?)?;
    builder.append_extension(&*BasicConstraints::new().critical().build()?)?;
    // ECDSA key: digitalSignature only (keyEncipherment is for RSA key transport).
    builder.append_extension(&*KeyUsage::new().critical().digital_signature().build()?)?;
    builder.append_extension(&*ExtendedKeyUsage::new().server_auth().build()?)?;
    let mut san = SubjectAlternativeName::new();
    if subject_empty {
        san.critical();
    }
    for name in &names.names {
        match name {
            LeafName::Dns(dns) => san.dns(dns),
            LeafName::Ip(ip) => san.ip(&ip.to_string()),
        };
    }
    let san = san.build(&builder.x509v3_context(Some(signer.cert()), None))?;
    builder.append_extension(&san)?;
    let ski = SubjectKeyIdentifier::new().build(&builder.x509v3_context(Some(signer.cert()), None))?;
    builder.append_extension(&ski)?;
    // A configured CA may lack a subjectKeyIdentifier; then there is no key id to point at.
    if signer.cert().subject_key_id().is_some() {
        let aki = AuthorityKeyIdentifier::new()
            .keyid(true)
            .build(&builder.x509v3_context(Some(signer.cert()), None))?;
        builder.append_extension(&aki)?;
    }
    builder.sign(signer.key(), MessageDigest::sha256())?;
    Ok(builder.build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::ca::unix_now;
    use boring::stack::Stack;
    use boring::x509::store::X509StoreBuilder;
    use boring::x509::{X509NameRef, X509StoreContext};

    const DAY: i64 = 86_400;

    struct Upstream<'a> {
        subject: &'a [(Nid, &'a str)],
        dns: &'a [&'a str],
        ips: &'a [&'a str],
        not_before: i64,
        not_after: i64,
    }

    impl Default for Upstream<'_> {
        fn default() -> Self {
            let now = unix_now();
            Upstream {
                subject: &[
                    (Nid::COMMONNAME, "example.test"),
                    (Nid::ORGANIZATIONNAME, "Example Org"),
                ],
                dns: &["example.test", "www.example.test"],
                ips: &["198.18.0.2"],
                not_before: now - 30 * DAY,
                not_after: now + 60 * DAY,
            }
        }
    }

    /// A self-signed upstream leaf: enough for forging, which never validates it.
    fn upstream(spec: &Upstream<'_>) -> X509 {
        let key =
            PKey::from_ec_key(EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap())
                .unwrap();
        let mut name = X509Name::builder().unwrap();
        for (nid, value) in spec.subject {
            name.append_entry_by_nid(*nid, value).unwrap();
        }
        let name = name.build();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&random_serial().unwrap().to_asn1_integer().unwrap())
            .unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::from_unix(spec.not_before).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::from_unix(spec.not_after).unwrap()).unwrap();
        if !spec.dns.is_empty() || !spec.ips.is_empty() {
            let mut san = SubjectAlternativeName::new();
            for d in spec.dns {
                san.dns(d);
            }
            for ip in spec.ips {
                san.ip(ip);
            }
            let san = san.build(&b.x509v3_context(None, None)).unwrap();
            b.append_extension(&san).unwrap();
        }
        b.sign(&key, MessageDigest::sha256()).unwrap();
        b.build()
    }

    fn verifies_against(ca: &X509Ref, forged: &ForgedCert) -> Result<(), String> {
        let mut store = X509StoreBuilder::new().unwrap();
        store.add_cert(ca).unwrap();
        let store = store.build();
        let mut chain = Stack::new().unwrap();
        for cert in &forged.chain[1..] {
            chain.push(cert.clone()).unwrap();
        }
        let mut context = X509StoreContext::new().unwrap();
        let (ok, result) = context
            .init(&store, &forged.chain[0], &chain, |c| {
                Ok((c.verify_cert()?, c.verify_result()))
            })
            .unwrap();
        match (ok, result) {
            (true, _) => Ok(()),
            (false, Err(e)) => Err(e.to_string()),
            (false, Ok(())) => Err("failed without a reason".to_string()),
        }
    }

    fn san_strings(cert: &X509Ref) -> Vec<String> {
        cert.subject_alt_names()
            .map(|sans| {
                sans.iter()
                    .map(|n| {
                        n.dnsname().map(str::to_string).unwrap_or_else(|| {
                            let ip = n.ipaddress().unwrap();
                            match ip.len() {
                                4 => IpAddr::from(<[u8; 4]>::try_from(ip).unwrap()).to_string(),
                                _ => IpAddr::from(<[u8; 16]>::try_from(ip).unwrap()).to_string(),
                            }
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn subject_der(name: &X509NameRef) -> Vec<u8> {
        name.to_der().unwrap()
    }

    #[test]
    fn trusted_forgery_verifies_against_the_ca_and_mirrors_subject_and_sans() {
        let mut forger = Forger::ephemeral(16).unwrap();
        let up = upstream(&Upstream::default());
        let forged = forger.certificate_for(&up, Verdict::Trusted, "example.test").unwrap();
        assert_eq!(forged.chain.len(), 2);
        verifies_against(forger.decryption_ca().cert(), &forged).unwrap();
        let leaf = &forged.chain[0];
        assert_eq!(subject_der(leaf.subject_name()), subject_der(up.subject_name()));
        assert_eq!(san_strings(leaf), ["example.test", "www.example.test", "198.18.0.2"]);
        assert_eq!(
            subject_der(leaf.issuer_name()),
            subject_der(forger.decryption_ca().cert().subject_name())
        );
        assert!(leaf.check_host("www.example.test").unwrap());
        assert!(leaf.public_key().unwrap().public_eq(&forged.key));
        assert_eq!(
            forged.chain[1].to_der().unwrap(),
            forger.decryption_ca().cert().to_der().unwrap()
        );
        assert_eq!(
            leaf.authority_key_id().unwrap().as_slice(),
            forger.decryption_ca().cert().subject_key_id().unwrap().as_slice()
        );
        // Signing the upstream again gives the same key: one process-wide key pair.
        let other = upstream(&Upstream {
            dns: &["other.test"],
            ..Upstream::default()
        });
        let second = forger.certificate_for(&other, Verdict::Trusted, "other.test").unwrap();
        assert!(second.key.public_eq(&forged.key));
    }

    #[test]
    fn untrusted_verdict_is_signed_by_the_untrusted_ca_only() {
        let mut forger = Forger::ephemeral(16).unwrap();
        let up = upstream(&Upstream::default());
        let forged = forger.certificate_for(&up, Verdict::Untrusted, "example.test").unwrap();
        verifies_against(forger.untrusted_ca().cert(), &forged).unwrap();
        let err = verifies_against(forger.decryption_ca().cert(), &forged).unwrap_err();
        assert!(!err.is_empty());
        assert_eq!(
            subject_der(forged.chain[0].issuer_name()),
            subject_der(forger.untrusted_ca().cert().subject_name())
        );
        // The same leaf with the other verdict is a different cache entry.
        let trusted = forger.certificate_for(&up, Verdict::Trusted, "example.test").unwrap();
        assert!(!Arc::ptr_eq(&trusted, &forged));
        verifies_against(forger.decryption_ca().cert(), &trusted).unwrap();
        assert_eq!(forger.stats().signed, 2);
    }

    #[test]
    fn validity_is_clamped_within_the_ca_and_the_upstream() {
        let mut forger = Forger::ephemeral(16).unwrap();
        let ca = Validity::of(forger.decryption_ca().cert()).unwrap();

        // Starts before the CA and outlives it: within the CA's window, 397 days around now.
        let long = upstream(&Upstream {
            not_before: ca.not_before - 10 * DAY,
            not_after: ca.not_after + 1000 * DAY,
            ..Upstream::default()
        });
        let forged = forger.certificate_for(&long, Verdict::Trusted, "example.test").unwrap();
        let v = Validity::of(&forged.chain[0]).unwrap();
        assert_eq!(v.not_after - v.not_before, MAX_FORGED_LIFETIME);
        assert!(
            v.not_before >= ca.not_before && v.not_after <= ca.not_after,
            "{v:?} outside {ca:?}"
        );
        assert!(
            v.not_before <= unix_now() && unix_now() < v.not_after,
            "{v:?} does not hold now"
        );
        verifies_against(forger.decryption_ca().cert(), &forged).unwrap();

        // Inside the CA's window: mirrored exactly.
        let inside = Upstream {
            not_before: ca.not_before + 3600,
            not_after: ca.not_before + 90 * DAY,
            ..Upstream::default()
        };
        let short = upstream(&inside);
        let forged = forger
            .certificate_for(&short, Verdict::Trusted, "example.test")
            .unwrap();
        assert_eq!(
            Validity::of(&forged.chain[0]).unwrap(),
            Validity {
                not_before: inside.not_before,
                not_after: inside.not_after
            }
        );

        // Expired long before the CA existed: still forged, expired, notBefore <= notAfter.
        let expired = upstream(&Upstream {
            not_before: ca.not_before - 400 * DAY,
            not_after: ca.not_before - 30 * DAY,
            ..Upstream::default()
        });
        let forged = forger
            .certificate_for(&expired, Verdict::Untrusted, "example.test")
            .unwrap();
        let v = Validity::of(&forged.chain[0]).unwrap();
        assert_eq!(v.not_after, ca.not_before - 30 * DAY);
        assert!(v.not_before <= v.not_after);
        let err = verifies_against(forger.untrusted_ca().cert(), &forged).unwrap_err();
        assert!(err.contains("expired"), "{err}");
    }

    #[test]
    fn a_ten_year_origin_gets_a_397_day_forgery_holding_now() {
        let mut forger = Forger::ephemeral(16).unwrap();
        let now = unix_now();
        let ten_years = Upstream {
            not_before: now - 2 * 365 * DAY,
            not_after: now + 8 * 365 * DAY,
            ..Upstream::default()
        };
        let forged = forger
            .certificate_for(&upstream(&ten_years), Verdict::Trusted, "example.test")
            .unwrap();
        let v = Validity::of(&forged.chain[0]).unwrap();
        assert_eq!(v.not_after - v.not_before, 397 * DAY);
        assert!(
            (now - v.not_before - DAY).abs() < 60,
            "starts a day before now: {v:?}, now {now}"
        );
        verifies_against(forger.decryption_ca().cert(), &forged).unwrap();
    }

    #[test]
    fn capping_keeps_windows_inside_and_expired_ones_honest() {
        let w = |not_before, not_after| Validity { not_before, not_after };
        let cap = 397 * DAY;
        // Short windows are untouched.
        assert_eq!(w(0, 90 * DAY).capped_around(10 * DAY, cap), w(0, 90 * DAY));
        // Now near the start: the window's start.
        assert_eq!(w(0, 3650 * DAY).capped_around(0, cap), w(0, cap));
        // Now in the middle: a day before now.
        assert_eq!(
            w(0, 3650 * DAY).capped_around(1000 * DAY, cap),
            w(999 * DAY, 999 * DAY + cap)
        );
        // Now past the end (expired upstream): the last 397 days, still expired.
        assert_eq!(
            w(0, 3650 * DAY).capped_around(5000 * DAY, cap),
            w(3650 * DAY - cap, 3650 * DAY)
        );
        // Not yet valid: the first 397 days.
        assert_eq!(
            w(100 * DAY, 3650 * DAY).capped_around(0, cap),
            w(100 * DAY, 100 * DAY + cap)
        );
    }

    #[test]
    fn clamp_rules() {
        let ca = Validity {
            not_before: 1000,
            not_after: 2000,
        };
        let clamp = |nb, na| {
            Validity {
                not_before: nb,
                not_after: na,
            }
            .clamp_within(ca)
        };
        assert_eq!(
            clamp(1200, 1800),
            Validity {
                not_before: 1200,
                not_after: 1800
            }
        );
        assert_eq!(clamp(500, 3000), ca);
        assert_eq!(
            clamp(100, 900),
            Validity {
                not_before: 900,
                not_after: 900
            }
        );
        assert_eq!(
            clamp(2500, 3000),
            Validity {
                not_before: 2000,
                not_after: 2000
            }
        );
    }

    #[test]
    fn serials_are_random() {
        let mut forger = Forger::ephemeral(16).unwrap();
        let up = upstream(&Upstream::default());
        let a = forger.certificate_for(&up, Verdict::Trusted, "example.test").unwrap();
        let b = forger.certificate_for(&up, Verdict::Untrusted, "example.test").unwrap();
        let (sa, sb) = (
            a.chain[0].serial_number().to_bn().unwrap(),
            b.chain[0].serial_number().to_bn().unwrap(),
        );
        assert_ne!(sa.to_vec(), sb.to_vec());
        assert!(!sa.is_negative());
        assert_eq!(sa.to_vec().len(), 16);
    }

    #[test]
    fn cache_returns_the_same_certificate_and_counts() {
        let mut forger = Forger::ephemeral(16).unwrap();
        let up = upstream(&Upstream::default());
        let first = forger.certificate_for(&up, Verdict::Trusted, "example.test").unwrap();
        let second = forger.certificate_for(&up, Verdict::Trusted, "example.test").unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(
            forger.stats(),
            ForgeStats {
                signed: 1,
                cache_hits: 1,
                cache_misses: 1,
                evictions: 0
            }
        );
        // 2,000 handshakes to the same origin sign exactly one certificate, across clones.
        let mut worker = forger.clone();
        for _ in 0..2000 {
            let again = worker.certificate_for(&up, Verdict::Trusted, "example.test").unwrap();
            assert!(Arc::ptr_eq(&first, &again));
        }
        let stats = forger.stats();
        assert_eq!(stats.signed, 1);
        assert_eq!(stats.cache_hits, 2001);
        assert_eq!(forger.cached(), 1);
    }

    #[test]
    fn cache_evicts_beyond_capacity_keeping_recently_used() {
        let mut forger = Forger::ephemeral(2).unwrap();
        let a = upstream(&Upstream {
            dns: &["a.test"],
            ..Upstream::default()
        });
        let b = upstream(&Upstream {
            dns: &["b.test"],
            ..Upstream::default()
        });
        let c = upstream(&Upstream {
            dns: &["c.test"],
            ..Upstream::default()
        });
        let fa = forger.certificate_for(&a, Verdict::Trusted, "a.test").unwrap();
        forger.certificate_for(&b, Verdict::Trusted, "b.test").unwrap();
        // `a` is used again, so `b` is the one to go when `c` arrives.
        forger.certificate_for(&a, Verdict::Trusted, "a.test").unwrap();
        forger.certificate_for(&c, Verdict::Trusted, "c.test").unwrap();
        assert_eq!(forger.cached(), 2);
        assert_eq!(forger.stats().evictions, 1);
        let fa_again = forger.certificate_for(&a, Verdict::Trusted, "a.test").unwrap();
        assert!(Arc::ptr_eq(&fa, &fa_again));
        let signed = forger.stats().signed;
        forger.certificate_for(&b, Verdict::Trusted, "b.test").unwrap();
        assert_eq!(forger.stats().signed, signed + 1);
        assert_eq!(forger.cached(), 2);
        assert_eq!(forger.stats().evictions, 2);
    }

    #[test]
    fn names_come_from_sans_then_common_name_then_fallback() {
        let mut forger = Forger::ephemeral(16).unwrap();

        // No SAN, a host-like CN: the CN, not the fallback.
        let cn_only = upstream(&Upstream {
            subject: &[(Nid::COMMONNAME, "legacy.test")],
            dns: &[],
            ips: &[],
            ..Upstream::default()
        });
        let forged = forger
            .certificate_for(&cn_only, Verdict::Untrusted, "sni.test")
            .unwrap();
        assert_eq!(san_strings(&forged.chain[0]), ["legacy.test"]);

        // No SAN, no usable CN: the fallback, as DNS or IP.
        let nameless = upstream(&Upstream {
            subject: &[(Nid::ORGANIZATIONNAME, "Acme")],
            dns: &[],
            ips: &[],
            ..Upstream::default()
        });
        let forged = forger.certificate_for(&nameless, Verdict::Trusted, "sni.test").unwrap();
        assert_eq!(san_strings(&forged.chain[0]), ["sni.test"]);
        assert_eq!(
            subject_der(forged.chain[0].subject_name()),
            subject_der(nameless.subject_name())
        );
        // Same leaf reached under another name: re-signed for that name, not served stale.
        let forged = forger
            .certificate_for(&nameless, Verdict::Trusted, "198.18.0.3")
            .unwrap();
        assert_eq!(san_strings(&forged.chain[0]), ["198.18.0.3"]);
        assert!(forged.chain[0].check_ip_asc("198.18.0.3").unwrap());

        // Empty subject: CN = fallback.
        let empty = upstream(&Upstream {
            subject: &[],
            dns: &[],
            ips: &[],
            ..Upstream::default()
        });
        let forged = forger.certificate_for(&empty, Verdict::Trusted, "empty.test").unwrap();
        let cn = forged.chain[0]
            .subject_name()
            .entries_by_nid(Nid::COMMONNAME)
            .next()
            .unwrap();
        assert_eq!(cn.data().as_utf8().unwrap().to_string(), "empty.test");
        verifies_against(forger.decryption_ca().cert(), &forged).unwrap();

        // Nothing at all to name the leaf with: an error naming the problem.
        let err = forger.certificate_for(&empty, Verdict::Trusted, "").unwrap_err();
        assert!(err.contains("names no host"), "{err}");
    }

    #[test]
    fn roles_cannot_be_swapped() {
        let ca = DecryptionCa::generate(CaRole::Decryption, CaKeyType::EcdsaP256).unwrap();
        let untrusted = DecryptionCa::generate(CaRole::Untrusted, CaKeyType::EcdsaP256).unwrap();
        let err = Forger::new(untrusted.clone(), ca.clone(), 4).err().unwrap();
        assert!(matches!(err, ForgeError::WrongRole { .. }), "{err}");
        assert!(matches!(
            Forger::new(ca.clone(), untrusted.clone(), 0),
            Err(ForgeError::ZeroCapacity)
        ));
        assert!(Forger::new(ca, untrusted, 4).is_ok());
    }

    #[test]
    fn rsa_ca_signs_verifiable_forgeries() {
        let ca = DecryptionCa::generate(CaRole::Decryption, CaKeyType::Rsa2048).unwrap();
        let untrusted = DecryptionCa::generate(CaRole::Untrusted, CaKeyType::EcdsaP256).unwrap();
        let mut forger = Forger::new(ca, untrusted, 4).unwrap();
        let up = upstream(&Upstream::default());
        let forged = forger.certificate_for(&up, Verdict::Trusted, "example.test").unwrap();
        verifies_against(forger.decryption_ca().cert(), &forged).unwrap();
    }
}
