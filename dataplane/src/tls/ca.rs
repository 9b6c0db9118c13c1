//! The decryption CA: the certificate authority whose forged leaf certificates clients are
//! told to trust, and its sibling the *untrusted* CA, which signs forgeries for upstream
//! servers whose own chain failed validation (clients are never told to trust it, so their
//! browsers show the warning the real server deserves).
//!
//! Both live in the state directory as a PEM certificate (mode 0644) and a PEM PKCS#8 key
//! (mode 0600, created with that mode so it is never readable by others, not even briefly).
//! Loading checks what operators get wrong: a missing file, a file that is not PEM, a key
//! that does not belong to the certificate, a certificate that cannot act as a CA.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use boring::asn1::Asn1Time;
use boring::bn::BigNum;
use boring::ec::{EcGroup, EcKey};
use boring::error::ErrorStack;
use boring::hash::MessageDigest;
use boring::nid::Nid;
use boring::pkey::{Id, PKey, PKeyRef, Private};
use boring::rsa::Rsa;
use boring::stack::Stack;
use boring::x509::extension::{AuthorityKeyIdentifier, BasicConstraints, KeyUsage, SubjectKeyIdentifier};
use boring::x509::store::X509StoreBuilder;
use boring::x509::{X509Name, X509NameRef, X509Ref, X509StoreContext, X509};

/// How long a generated CA is valid: ten years (with leap days).
const CA_LIFETIME_SECS: i64 = 3652 * 86_400;
/// Generated certificates start one day in the past so clients with a slow clock accept them.
const BACKDATE_SECS: i64 = 86_400;
/// X.520 upper bound for a commonName; BoringSSL refuses longer ones.
const MAX_COMMON_NAME: usize = 64;

/// Which of the two CAs: decides file names, subject and wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CaRole {
    /// Signs forgeries of upstream servers whose chain validated; clients trust it.
    Decryption,
    /// Signs forgeries of upstream servers whose chain failed validation
    /// (`untrusted = "forward-untrust"`); clients are never told to trust it.
    Untrusted,
}

impl CaRole {
    pub fn cert_file_name(self) -> &'static str {
        match self {
            CaRole::Decryption => "ca.crt",
            CaRole::Untrusted => "untrusted-ca.crt",
        }
    }

    pub fn key_file_name(self) -> &'static str {
        match self {
            CaRole::Decryption => "ca.key",
            CaRole::Untrusted => "untrusted-ca.key",
        }
    }

    fn common_name(self) -> String {
        match self {
            CaRole::Decryption => {
                // The host name tells apart the CAs of several appliances in a client's trust list.
                let prefix = "loupe decryption CA (";
                let room = MAX_COMMON_NAME - prefix.len() - 1;
                let host: String = host_name().chars().take(room).collect();
                format!("{prefix}{host})")
            }
            CaRole::Untrusted => "loupe UNTRUSTED upstream (certificate not verified)".to_string(),
        }
    }
}

impl fmt::Display for CaRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CaRole::Decryption => "decryption CA",
            CaRole::Untrusted => "untrusted CA",
        })
    }
}

/// Key algorithm of a generated CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CaKeyType {
    /// ECDSA on P-256: small, fast to sign with (the forged-leaf hot path), accepted everywhere.
    #[default]
    EcdsaP256,
    /// RSA 2048 for clients that still cannot validate ECDSA chains.
    Rsa2048,
}

/// What went wrong creating, storing or loading a CA, naming the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{role} {what} {path} does not exist{hint}")]
    Missing {
        role: CaRole,
        what: &'static str,
        path: PathBuf,
        hint: &'static str,
    },
    #[error("cannot read {role} {what} {path}: {source}")]
    Unreadable {
        role: CaRole,
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{role} {what} {path} is not a PEM {expected}: {source}")]
    NotPem {
        role: CaRole,
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
        source: ErrorStack,
    },
    #[error("{role} key {path} is open to other users (mode {mode:04o}): run `chmod 600 {path}` (loupe refuses a CA key anyone but its owner can read or change)")]
    KeyExposed { role: CaRole, path: PathBuf, mode: u32 },
    #[error("{role} key {key} does not belong to the certificate {cert} (their public keys differ)")]
    KeyMismatch { role: CaRole, cert: PathBuf, key: PathBuf },
    #[error("{role} key {path} is a {found} key; only ECDSA and RSA keys can sign forged certificates")]
    UnsupportedKey { role: CaRole, path: PathBuf, found: String },
    #[error("{role} certificate {path} cannot act as a CA: {reason}")]
    NotCa {
        role: CaRole,
        path: PathBuf,
        reason: String,
    },
    #[error("refusing to overwrite the existing {role} file {path} (pass --force to replace the CA; clients trusting the old one must then be given the new one)")]
    Exists { role: CaRole, path: PathBuf },
    #[error("cannot write {role} file {path}: {source}")]
    Write {
        role: CaRole,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{role}: {what} failed: {source}")]
    Crypto {
        role: CaRole,
        what: &'static str,
        source: ErrorStack,
    },
}

/// A CA that signs forged leaf certificates: its certificate and private key.
///
/// The same type serves both roles ([`CaRole`]); the role only changes where it is stored
/// and how it is named.
#[derive(Clone)]
pub struct DecryptionCa {
    role: CaRole,
    cert: X509,
    key: PKey<Private>,
    pem: String,
}

impl fmt::Debug for DecryptionCa {
    // The private key stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecryptionCa")
            .field("role", &self.role)
            .field("subject", &self.cert.subject_name())
            .field("not_after", &self.cert.not_after().to_string())
            .finish_non_exhaustive()
    }
}

impl DecryptionCa {
    /// Generates a new self-signed CA in memory (nothing touches the disk).
    pub fn generate(role: CaRole, key_type: CaKeyType) -> Result<DecryptionCa, CaError> {
        let crypto = |what| move |source| CaError::Crypto { role, what, source };
        let key = match key_type {
            CaKeyType::EcdsaP256 => EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)
                .and_then(|group| EcKey::generate(&group))
                .and_then(PKey::from_ec_key),
            CaKeyType::Rsa2048 => Rsa::generate(2048).and_then(PKey::from_rsa),
        }
        .map_err(crypto("generating the key"))?;
        let cert = self_signed(role, &key).map_err(crypto("building the CA certificate"))?;
        DecryptionCa::from_parts(role, cert, key)
    }

    /// Generates a CA and writes it into `state_dir` (created if missing). Refuses to
    /// replace an existing certificate or key unless `force`.
    pub fn init(state_dir: &Path, role: CaRole, key_type: CaKeyType, force: bool) -> Result<DecryptionCa, CaError> {
        if !force {
            for path in [cert_path(state_dir, role), key_path(state_dir, role)] {
                if path.exists() {
                    return Err(CaError::Exists { role, path });
                }
            }
        }
        let ca = DecryptionCa::generate(role, key_type)?;
        ca.store(state_dir, force)?;
        Ok(ca)
    }

    /// Loads the CA of `role` from `state_dir`.
    pub fn load(state_dir: &Path, role: CaRole) -> Result<DecryptionCa, CaError> {
        DecryptionCa::from_pem_files(role, &cert_path(state_dir, role), &key_path(state_dir, role))
    }

    /// Loads a CA from explicit PEM files (a configured CA instead of the generated one).
    pub fn from_pem_files(role: CaRole, cert_file: &Path, key_file: &Path) -> Result<DecryptionCa, CaError> {
        let cert_pem = read_file(role, "certificate", cert_file)?;
        let key_pem = read_file(role, "key", key_file)?;
        let cert = X509::from_pem(&cert_pem).map_err(|source| CaError::NotPem {
            role,
            what: "certificate",
            path: cert_file.to_path_buf(),
            expected: "certificate (-----BEGIN CERTIFICATE-----)",
            source,
        })?;
        let key = PKey::private_key_from_pem(&key_pem).map_err(|source| CaError::NotPem {
            role,
            what: "key",
            path: key_file.to_path_buf(),
            expected: "private key (-----BEGIN PRIVATE KEY----- or EC/RSA PRIVATE KEY)",
            source,
        })?;
        if key.id() != Id::EC && key.id() != Id::RSA {
            return Err(CaError::UnsupportedKey {
                role,
                path: key_file.to_path_buf(),
                found: format!("{:?}", key.id()),
            });
        }
        let cert_key = cert.public_key().map_err(|source| CaError::NotPem {
            role,
            what: "certificate",
            path: cert_file.to_path_buf(),
            expected: "certificate with a readable public key",
            source,
        })?;
        if !cert_key.public_eq(&key) {
            return Err(CaError::KeyMismatch {
                role,
                cert: cert_file.to_path_buf(),
                key: key_file.to_path_buf(),
            });
        }
        refuse_exposed_key(role, key_file)?;
        let not_ca = |reason| CaError::NotCa {
            role,
            path: cert_file.to_path_buf(),
            reason,
        };
        // Verifiers do not check a trust anchor's own extensions, but browsers do.
        let der = cert
            .to_der()
            .map_err(|e| not_ca(format!("re-encoding it failed: {e}")))?;
        ca_extensions_allow_signing(&der).map_err(not_ca)?;
        let ca = DecryptionCa::from_parts(role, cert, key)?;
        ca.check_can_issue().map_err(|reason| CaError::NotCa {
            role,
            path: cert_file.to_path_buf(),
            reason,
        })?;
        Ok(ca)
    }

    /// Loads the CA of `role` from `state_dir`, generating (ECDSA P-256) and storing it when
    /// neither its certificate nor its key exists yet. This is what `loupe run` uses. When
    /// only one of the two files exists the state is damaged and this fails rather than
    /// silently replacing a CA clients may already trust.
    pub fn load_or_init(state_dir: &Path, role: CaRole) -> Result<DecryptionCa, CaError> {
        let (cert, key) = (cert_path(state_dir, role), key_path(state_dir, role));
        if cert.exists() || key.exists() {
            return DecryptionCa::load(state_dir, role);
        }
        let ca = DecryptionCa::init(state_dir, role, CaKeyType::default(), false)?;
        tracing::info!(
            "generated the {role} {} (SHA-256 {}){}",
            cert.display(),
            ca.fingerprint_sha256(),
            match role {
                CaRole::Decryption => "; clients must trust it: `loupe ca show` prints it",
                CaRole::Untrusted => "; it signs forgeries of unverified servers, never give it to clients",
            }
        );
        Ok(ca)
    }

    /// Writes the certificate (0644) and the key (0600) into `state_dir`. Without `force`
    /// an existing file is never replaced, even one created concurrently.
    pub fn store(&self, state_dir: &Path, force: bool) -> Result<(), CaError> {
        let role = self.role;
        if !state_dir.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(state_dir)
                .map_err(|source| CaError::Write {
                    role,
                    path: state_dir.to_path_buf(),
                    source,
                })?;
        }
        let key_pem = self.key.private_key_to_pem_pkcs8().map_err(|source| CaError::Crypto {
            role,
            what: "encoding the private key",
            source,
        })?;
        // Key first: a crash in between leaves a key without certificate, which load reports,
        // never a certificate clients might trust whose key is gone.
        write_atomically(role, &key_path(state_dir, role), &key_pem, 0o600, force)?;
        write_atomically(role, &cert_path(state_dir, role), self.pem.as_bytes(), 0o644, force)
    }

    pub fn role(&self) -> CaRole {
        self.role
    }

    pub fn cert(&self) -> &X509Ref {
        &self.cert
    }

    /// The signing key. Only the forger needs it.
    pub(crate) fn key(&self) -> &PKeyRef<Private> {
        &self.key
    }

    /// The CA certificate in PEM, what clients are told to trust (`loupe ca show`).
    pub fn cert_pem(&self) -> &str {
        &self.pem
    }

    /// SHA-256 of the certificate, colon-separated upper-case hex as browsers show it.
    pub fn fingerprint_sha256(&self) -> String {
        match self.cert.digest(MessageDigest::sha256()) {
            Ok(digest) => digest.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":"),
            Err(_) => "(unavailable)".to_string(),
        }
    }

    fn from_parts(role: CaRole, cert: X509, key: PKey<Private>) -> Result<DecryptionCa, CaError> {
        let pem = cert
            .to_pem()
            .ok()
            .and_then(|pem| String::from_utf8(pem).ok())
            .ok_or_else(|| CaError::Crypto {
                role,
                what: "encoding the certificate as PEM",
                source: ErrorStack::get(),
            })?;
        Ok(DecryptionCa { role, cert, key, pem })
    }

    /// Signs a throwaway leaf and verifies it against this CA alone: proves the certificate
    /// is a usable CA (basicConstraints, keyUsage, validity) the way clients will judge it.
    fn check_can_issue(&self) -> Result<(), String> {
        let probe = probe_leaf(self).map_err(|e| format!("signing a test certificate failed: {e}"))?;
        let mut store = X509StoreBuilder::new().map_err(|e| e.to_string())?;
        store.add_cert(&self.cert).map_err(|e| e.to_string())?;
        let store = store.build();
        let chain = Stack::new().map_err(|e| e.to_string())?;
        let mut context = X509StoreContext::new().map_err(|e| e.to_string())?;
        let outcome = context
            .init(&store, &probe, &chain, |c| {
                Ok((c.verify_cert()?, c.verify_result(), c.error_depth()))
            })
            .map_err(|e| e.to_string())?;
        match outcome {
            (true, _, _) => Ok(()),
            (false, Err(error), depth) => Err(format!(
                "a certificate it signs does not verify: {error} (depth {depth}){}",
                if depth == 1 {
                    "; a CA needs basicConstraints CA:TRUE, keyUsage keyCertSign and a current validity"
                } else {
                    ""
                }
            )),
            (false, Ok(()), _) => Err("a certificate it signs does not verify".to_string()),
        }
    }
}

/// Checks the two extensions that make a certificate a CA for clients: basicConstraints
/// with cA TRUE, and keyUsage (when present) with keyCertSign. BoringSSL's safe API does not
/// expose them, so this walks the DER (bounded: it only descends the fixed structure).
pub(crate) fn ca_extensions_allow_signing(cert_der: &[u8]) -> Result<(), String> {
    const BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
    const KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x0f];
    let malformed = |what: &str| format!("its DER encoding is malformed ({what})");
    let certificate = Der(cert_der).expect(0x30).ok_or_else(|| malformed("certificate"))?;
    let mut tbs = Der(Der(certificate)
        .expect(0x30)
        .ok_or_else(|| malformed("tbsCertificate"))?);
    let mut extensions = None;
    while let Some((tag, content)) = tbs.next_element() {
        if tag == 0xa3 {
            extensions = Some(Der(content).expect(0x30).ok_or_else(|| malformed("extensions"))?);
        }
    }
    let mut is_ca = false;
    let mut key_cert_sign = None;
    let mut list = Der(extensions.unwrap_or_default());
    while let Some((tag, extension)) = list.next_element() {
        if tag != 0x30 {
            return Err(malformed("extension"));
        }
        let mut fields = Der(extension);
        let oid = fields.expect(0x06).ok_or_else(|| malformed("extension id"))?;
        let mut value = fields.next_element();
        if let Some((0x01, _critical)) = value {
            value = fields.next_element();
        }
        let Some((0x04, value)) = value else {
            return Err(malformed("extension value"));
        };
        if oid == BASIC_CONSTRAINTS {
            let constraints = Der(value).expect(0x30).ok_or_else(|| malformed("basicConstraints"))?;
            is_ca = matches!(Der(constraints).next_element(), Some((0x01, [flag])) if *flag != 0);
        } else if oid == KEY_USAGE {
            let bits = Der(value).expect(0x03).ok_or_else(|| malformed("keyUsage"))?;
            // bits[0] counts unused bits; keyCertSign is bit 5 of the first byte (0x04).
            key_cert_sign = Some(bits.get(1).is_some_and(|b| b & 0x04 != 0));
        }
    }
    if !is_ca {
        return Err("it is not a CA certificate (basicConstraints CA:TRUE is missing)".to_string());
    }
    if key_cert_sign == Some(false) {
        return Err("its keyUsage does not include keyCertSign".to_string());
    }
    Ok(())
}

/// A minimal DER reader over one level of TLVs (single-byte tags, definite lengths).
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    fn next_element(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.0.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 || rest.len() < count {
                return None;
            }
            let (bytes, after) = rest.split_at(count);
            rest = after;
            bytes.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
        };
        if rest.len() < len {
            return None;
        }
        let (content, after) = rest.split_at(len);
        self.0 = after;
        Some((tag, content))
    }

    /// The next element's content when it carries `tag`.
    fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
        match self.next_element()? {
            (found, content) if found == tag => Some(content),
            _ => None,
        }
    }
}

/// Where the certificate of `role` lives in `state_dir`.
pub fn cert_path(state_dir: &Path, role: CaRole) -> PathBuf {
    state_dir.join(role.cert_file_name())
}

/// Where the key of `role` lives in `state_dir`.
pub fn key_path(state_dir: &Path, role: CaRole) -> PathBuf {
    state_dir.join(role.key_file_name())
}

/// A fresh random serial: 16 bytes, positive, never zero and always 16 bytes long
/// (the top byte is forced into 0x40..=0x7f), so 126 bits of randomness.
pub(crate) fn random_serial() -> Result<BigNum, ErrorStack> {
    let mut bytes = [0u8; 16];
    boring::rand::rand_bytes(&mut bytes)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    BigNum::from_slice(&bytes)
}

/// Seconds since the Unix epoch, now.
pub(crate) fn unix_now() -> i64 {
    // A clock before 1970 is a broken host; treat it as the epoch rather than panicking.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn self_signed(role: CaRole, key: &PKeyRef<Private>) -> Result<X509, ErrorStack> {
    let mut name = X509Name::builder()?;
    name.append_entry_by_nid(Nid::COMMONNAME, &role.common_name())?;
    name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "loupe")?;
    let name = name.build();

    let now = unix_now();
    let mut builder = X509::builder()?;
    builder.set_version(2)?;
    builder.set_serial_number(&*random_serial()?.to_asn1_integer()?)?;
    builder.set_subject_name(&name)?;
    builder.set_issuer_name(&name)?;
    builder.set_pubkey(key)?;
    builder.set_not_before(&*Asn1Time::from_unix(now - BACKDATE_SECS)?)?;
    builder.set_not_after(&*Asn1Time::from_unix(now + CA_LIFETIME_SECS)?)?;
    // pathlen 0: this CA signs leaves only, never another CA.
    builder.append_extension(&*BasicConstraints::new().critical().ca().pathlen(0).build()?)?;
    builder.append_extension(&*KeyUsage::new().critical().key_cert_sign().crl_sign().build()?)?;
    let ski = SubjectKeyIdentifier::new().build(&builder.x509v3_context(None, None))?;
    builder.append_extension(&ski)?;
    let aki = AuthorityKeyIdentifier::new()
        .keyid(true)
        .build(&builder.x509v3_context(None, None))?;
    builder.append_extension(&aki)?;
    builder.sign(key, MessageDigest::sha256())?;
    Ok(builder.build())
}

fn probe_leaf(ca: &DecryptionCa) -> Result<X509, ErrorStack> {
    let mut name = X509Name::builder()?;
    name.append_entry_by_nid(Nid::COMMONNAME, "loupe CA self-test")?;
    let name: X509Name = name.build();
    let subject: &X509NameRef = &name;
    let now = unix_now();
    let mut builder = X509::builder()?;
    builder.set_version(2)?;
    builder.set_serial_number(&*random_serial()?.to_asn1_integer()?)?;
    builder.set_subject_name(subject)?;
    builder.set_issuer_name(ca.cert.subject_name())?;
    // The CA's own public key keeps the probe free of a key generation.
    builder.set_pubkey(&ca.key)?;
    builder.set_not_before(&*Asn1Time::from_unix(now - 60)?)?;
    builder.set_not_after(&*Asn1Time::from_unix(now + 60)?)?;
    builder.append_extension(&*BasicConstraints::new().build()?)?;
    builder.sign(&ca.key, MessageDigest::sha256())?;
    Ok(builder.build())
}

fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown host".to_string())
}

fn read_file(role: CaRole, what: &'static str, path: &Path) -> Result<Vec<u8>, CaError> {
    fs::read(path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            CaError::Missing {
                role,
                what,
                path: path.to_path_buf(),
                hint: match role {
                    CaRole::Decryption => " (create it with `loupe ca init`)",
                    CaRole::Untrusted => " (`loupe ca init` creates it)",
                },
            }
        } else {
            CaError::Unreadable {
                role,
                what,
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// A CA key that other users can read or change lets them forge certificates every
/// client behind loupe trusts: refused, not merely warned about.
fn refuse_exposed_key(role: CaRole, key_file: &Path) -> Result<(), CaError> {
    let meta = fs::metadata(key_file).map_err(|source| CaError::Unreadable {
        role,
        what: "key",
        path: key_file.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CaError::KeyExposed {
            role,
            path: key_file.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Writes `contents` to a temporary file created with `mode` (so the key is never exposed),
/// then moves it into place: `rename` when replacing is allowed, `link` (which fails on an
/// existing target) when it is not.
fn write_atomically(role: CaRole, path: &Path, contents: &[u8], mode: u32, replace: bool) -> Result<(), CaError> {
    let write_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CaError::Write { role, path, source }
    };
    let file_name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let temp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    // A leftover from a crashed run of this very process id is ours to remove.
    let _ = fs::remove_file(&temp);
    let result = (|| {
        let mut file: File = OpenOptions::new().write(true).create_new(true).mode(mode).open(&temp)?;
        // The umask may have removed bits from `mode`; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()
    })()
    .map_err(write_error(&temp));
    let placed = result.and_then(|()| {
        if replace {
            fs::rename(&temp, path).map_err(write_error(path))
        } else {
            fs::hard_link(&temp, path).map_err(|source| {
                if source.kind() == io::ErrorKind::AlreadyExists {
                    CaError::Exists {
                        role,
                        path: path.to_path_buf(),
                    }
                } else {
                    CaError::Write {
                        role,
                        path: path.to_path_buf(),
                        source,
                    }
                }
            })
        }
    });
    let _ = fs::remove_file(&temp);
    placed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "loupe-ca-test-{tag}-{}-{}",
            std::process::id(),
            random_serial().unwrap().to_hex_str().unwrap()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn der_contains(cert: &X509Ref, needle: &[u8]) -> bool {
        // The safe API has no X509_print; the DER holds the encoded extensions we look for.
        let der = cert.to_der().unwrap();
        der.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn init_writes_files_with_modes_and_loads_back_identical() {
        let dir = temp_dir("init");
        let ca = DecryptionCa::init(&dir, CaRole::Decryption, CaKeyType::EcdsaP256, false).unwrap();
        assert_eq!(mode(&dir.join("ca.crt")), 0o644);
        assert_eq!(mode(&dir.join("ca.key")), 0o600);
        let loaded = DecryptionCa::load(&dir, CaRole::Decryption).unwrap();
        assert_eq!(loaded.cert().to_der().unwrap(), ca.cert().to_der().unwrap());
        assert!(loaded.key().public_eq(ca.key()));
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn init_refuses_to_overwrite_unless_forced() {
        let dir = temp_dir("overwrite");
        let first = DecryptionCa::init(&dir, CaRole::Decryption, CaKeyType::EcdsaP256, false).unwrap();
        let err = DecryptionCa::init(&dir, CaRole::Decryption, CaKeyType::EcdsaP256, false).unwrap_err();
        assert!(matches!(err, CaError::Exists { .. }), "{err}");
        assert!(err.to_string().contains("--force"), "{err}");
        let unchanged = DecryptionCa::load(&dir, CaRole::Decryption).unwrap();
        assert_eq!(unchanged.cert_pem(), first.cert_pem());

        let second = DecryptionCa::init(&dir, CaRole::Decryption, CaKeyType::Rsa2048, true).unwrap();
        let loaded = DecryptionCa::load(&dir, CaRole::Decryption).unwrap();
        assert_eq!(loaded.cert_pem(), second.cert_pem());
        assert_ne!(loaded.cert_pem(), first.cert_pem());
        assert_eq!(loaded.key().id(), Id::RSA);
        assert_eq!(mode(&dir.join("ca.key")), 0o600);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_ca_key_others_can_read_is_refused_with_the_fix() {
        let dir = temp_dir("exposed");
        DecryptionCa::init(&dir, CaRole::Decryption, CaKeyType::EcdsaP256, false).unwrap();
        let key = dir.join("ca.key");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let Err(err) = DecryptionCa::load(&dir, CaRole::Decryption) else {
            panic!("a 0644 key was loaded");
        };
        let text = err.to_string();
        assert!(text.contains("mode 0644") && text.contains("chmod 600"), "{text}");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(
            DecryptionCa::load(&dir, CaRole::Decryption).is_err(),
            "a group-readable key loaded"
        );
        fs::set_permissions(&key, fs::Permissions::from_mode(0o400)).unwrap();
        DecryptionCa::load(&dir, CaRole::Decryption).expect("an owner-only key loads");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn generated_ca_has_subject_extensions_and_validity() {
        let ca = DecryptionCa::generate(CaRole::Decryption, CaKeyType::EcdsaP256).unwrap();
        let cn = ca.cert().subject_name().entries_by_nid(Nid::COMMONNAME).next().unwrap();
        let cn = cn.data().as_utf8().unwrap().to_string();
        assert!(cn.starts_with("loupe decryption CA ("), "{cn}");
        assert!(cn.len() <= MAX_COMMON_NAME);
        assert!(ca.cert().subject_key_id().is_some());
        assert!(ca.cert().authority_key_id().is_some());
        assert_eq!(ca.key().id(), Id::EC);
        let now = Asn1Time::from_unix(unix_now()).unwrap();
        assert!(ca.cert().not_before() < now);
        let nine_years = Asn1Time::days_from_now(9 * 365).unwrap();
        assert!(ca.cert().not_after() > nine_years);
        // basicConstraints OID 2.5.29.19 = 55 1d 13, critical, CA:TRUE, pathlen 0.
        assert!(der_contains(
            ca.cert(),
            b"\x55\x1d\x13\x01\x01\xff\x04\x08\x30\x06\x01\x01\xff\x02\x01\x00"
        ));
        // keyUsage 2.5.29.15 = 55 1d 0f, critical.
        assert!(der_contains(ca.cert(), b"\x55\x1d\x0f\x01\x01\xff"));
        ca.check_can_issue().unwrap();

        let untrusted = DecryptionCa::generate(CaRole::Untrusted, CaKeyType::EcdsaP256).unwrap();
        let cn = untrusted
            .cert()
            .subject_name()
            .entries_by_nid(Nid::COMMONNAME)
            .next()
            .unwrap();
        assert_eq!(
            cn.data().as_utf8().unwrap().to_string(),
            "loupe UNTRUSTED upstream (certificate not verified)"
        );
    }

    #[test]
    fn load_errors_name_the_file_and_the_problem() {
        let dir = temp_dir("errors");
        let err = DecryptionCa::load(&dir, CaRole::Decryption).unwrap_err();
        assert!(matches!(err, CaError::Missing { .. }));
        assert!(
            err.to_string().contains(&dir.join("ca.crt").display().to_string()),
            "{err}"
        );
        assert!(err.to_string().contains("loupe ca init"), "{err}");

        let a = DecryptionCa::init(&dir, CaRole::Decryption, CaKeyType::EcdsaP256, false).unwrap();
        let b = DecryptionCa::init(&dir, CaRole::Untrusted, CaKeyType::EcdsaP256, false).unwrap();
        assert_ne!(a.cert_pem(), b.cert_pem());

        // Key of another CA.
        let err = DecryptionCa::from_pem_files(CaRole::Decryption, &dir.join("ca.crt"), &dir.join("untrusted-ca.key"))
            .unwrap_err();
        assert!(matches!(err, CaError::KeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains("untrusted-ca.key"), "{err}");

        // Not PEM.
        let garbage = dir.join("garbage.pem");
        fs::write(&garbage, b"hello, not a certificate\n").unwrap();
        let err = DecryptionCa::from_pem_files(CaRole::Decryption, &garbage, &dir.join("ca.key")).unwrap_err();
        assert!(matches!(err, CaError::NotPem { .. }), "{err}");
        assert!(err.to_string().contains("garbage.pem"), "{err}");
        let err = DecryptionCa::from_pem_files(CaRole::Decryption, &dir.join("ca.crt"), &garbage).unwrap_err();
        assert!(matches!(err, CaError::NotPem { what: "key", .. }), "{err}");

        // A leaf (not a CA) with its own key.
        let leaf_key =
            PKey::from_ec_key(EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap())
                .unwrap();
        let leaf_ca = DecryptionCa::from_parts(
            CaRole::Decryption,
            {
                let mut name = X509Name::builder().unwrap();
                name.append_entry_by_nid(Nid::COMMONNAME, "not a ca").unwrap();
                let name = name.build();
                let mut b = X509::builder().unwrap();
                b.set_version(2).unwrap();
                b.set_serial_number(&random_serial().unwrap().to_asn1_integer().unwrap())
                    .unwrap();
                b.set_subject_name(&name).unwrap();
                b.set_issuer_name(&name).unwrap();
                b.set_pubkey(&leaf_key).unwrap();
                b.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
                b.set_not_after(&Asn1Time::days_from_now(30).unwrap()).unwrap();
                b.append_extension(&BasicConstraints::new().critical().build().unwrap())
                    .unwrap();
                b.sign(&leaf_key, MessageDigest::sha256()).unwrap();
                b.build()
            },
            leaf_key,
        )
        .unwrap();
        let leaf_dir = dir.join("leaf");
        leaf_ca.store(&leaf_dir, false).unwrap();
        let err = DecryptionCa::load(&leaf_dir, CaRole::Decryption).unwrap_err();
        assert!(matches!(err, CaError::NotCa { .. }), "{err}");
        assert!(
            err.to_string().contains(&leaf_dir.join("ca.crt").display().to_string()),
            "{err}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ca_extension_check_reads_basic_constraints_and_key_usage() {
        let ca = DecryptionCa::generate(CaRole::Decryption, CaKeyType::EcdsaP256).unwrap();
        ca_extensions_allow_signing(&ca.cert().to_der().unwrap()).unwrap();
        let err = ca_extensions_allow_signing(&probe_leaf(&ca).unwrap().to_der().unwrap()).unwrap_err();
        assert!(err.contains("basicConstraints CA:TRUE"), "{err}");
        assert!(ca_extensions_allow_signing(b"\x30\x05\x30")
            .unwrap_err()
            .contains("malformed"));
        assert!(ca_extensions_allow_signing(b"").is_err());
    }

    #[test]
    fn load_or_init_generates_once_then_loads() {
        let dir = temp_dir("load-or-init");
        let state = dir.join("state");
        let first = DecryptionCa::load_or_init(&state, CaRole::Decryption).unwrap();
        let again = DecryptionCa::load_or_init(&state, CaRole::Decryption).unwrap();
        assert_eq!(first.cert_pem(), again.cert_pem());
        // Half a CA (key without certificate) is reported, never silently replaced.
        fs::remove_file(state.join("ca.crt")).unwrap();
        let err = DecryptionCa::load_or_init(&state, CaRole::Decryption).unwrap_err();
        assert!(matches!(err, CaError::Missing { .. }), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn serials_are_positive_sixteen_bytes_and_differ() {
        let a = random_serial().unwrap();
        let b = random_serial().unwrap();
        assert_ne!(a.to_vec(), b.to_vec());
        assert_eq!(a.to_vec().len(), 16);
        assert!(!a.is_negative());
    }
}
