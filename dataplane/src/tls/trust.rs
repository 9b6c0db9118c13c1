//! The trust store: the CA certificates the upstream TLS client validates servers against.
//! System roots (Debian's `ca-certificates` bundle) plus extra CA files given with
//! `--trust-ca FILE` or in the configuration. Each file may be a PEM bundle of many
//! certificates or a single DER certificate (what a browser's "export certificate" saves).
//!
//! Loading errors name the file and what is wrong with it, down to which certificate in a
//! bundle fails to parse and on which line its PEM block starts.
//!
//! On top of those, certificates imported with `loupe trust import` persist under
//! `<state-dir>/trust/`: each as `<sha256-hex>.pem` next to one `index.json` that lists what
//! each is trusted for. An imported CA is an anchor for every name; a *pinned* leaf (a
//! self-signed server's own certificate, say) is trusted only when the host it was imported
//! for presents exactly that certificate ([`PinnedLeafs`]).

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::net::IpAddr;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use boring::asn1::{Asn1Time, Asn1TimeRef};

use boring::error::ErrorStack;
use boring::hash::MessageDigest;
use boring::x509::store::{X509Store, X509StoreBuilder};
use boring::x509::{X509NameRef, X509Ref, X509};
use serde::{Deserialize, Serialize};

use crate::tls::ca::ca_extensions_allow_signing;
use crate::tls::record::rfc3339_utc_ms;
use crate::tls::session::name_line;

/// Debian's bundle of the system roots, from the package `ca-certificates`.
pub const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Largest CA file read (the Debian bundle is about 220 KiB).
pub const MAX_FILE_BYTES: u64 = 16 << 20;

const PEM_BEGIN: &[u8] = b"-----BEGIN ";
const PEM_CERTIFICATE_LABELS: [&[u8]; 2] = [b"CERTIFICATE", b"X509 CERTIFICATE"];

/// What went wrong loading trust anchors, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("the system trust bundle {path} does not exist: install the package ca-certificates (apt-get install ca-certificates)")]
    SystemBundleMissing { path: PathBuf },
    #[error("cannot read certificate file {path}: {source}")]
    Unreadable { path: PathBuf, source: io::Error },
    #[error("certificate file {path} is larger than {max} bytes; is it really a certificate bundle?", max = MAX_FILE_BYTES)]
    TooLarge { path: PathBuf },
    #[error("certificate file {path} holds no certificates: {detail}")]
    NoCertificates { path: PathBuf, detail: String },
    #[error(
        "certificate file {path}: certificate #{index} (PEM block starting at line {line}) does not parse: {reason}"
    )]
    BadCertificate {
        path: PathBuf,
        index: usize,
        line: usize,
        reason: String,
    },
    #[error("building the certificate store for upstream validation failed: {0}")]
    Store(ErrorStack),
    #[error("{path}: certificate #{index} ({subject}) cannot be a trust anchor: {why}; to trust it only for the server it belongs to, import it with --host NAME")]
    NotCa {
        path: PathBuf,
        index: usize,
        subject: String,
        why: String,
    },
    #[error("host {host:?} is not valid: {why}")]
    BadHost { host: String, why: String },
    #[error("cannot read the trust store file {path}: {source}")]
    StoreUnreadable { path: PathBuf, source: io::Error },
    #[error("the trust store index {path} is corrupt: {detail}; restore it from a backup, or move the trust directory away and import the certificates again")]
    CorruptIndex { path: PathBuf, detail: String },
    #[error("the trust store index lists certificate {sha256} but {path} is {problem}; import that certificate again, or drop it with `loupe trust remove {sha256}`")]
    BadStoredCertificate {
        path: PathBuf,
        sha256: String,
        problem: String,
    },
    #[error("cannot write the trust store file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{given:?} is not a SHA-256 fingerprint or a prefix of one (hex digits, colons allowed)")]
    BadFingerprint { given: String },
    #[error("no imported certificate matches {what} in {dir} (`loupe trust list` shows them)")]
    NotImported { what: String, dir: PathBuf },
    #[error("{prefix} matches {} imported certificates ({}); give more digits", matches.len(), matches.join(", "))]
    Ambiguous { prefix: String, matches: Vec<String> },
}

/// Where trust anchors came from and how many each file added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustSource {
    pub path: PathBuf,
    /// Certificates in the file.
    pub certificates: usize,
    /// Of those, how many were already in the store (the system bundle and an extra file
    /// often overlap).
    pub duplicates: usize,
}

/// The CA certificates trusted for upstream validation. Duplicates (by SHA-256) are kept
/// once. The policy layer will add per-host pinned leafs next to these anchors.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    anchors: Vec<X509>,
    fingerprints: HashSet<[u8; 32]>,
    sources: Vec<TrustSource>,
}

impl TrustStore {
    /// An empty store: trusts nothing until anchors are added.
    pub fn new() -> TrustStore {
        TrustStore::default()
    }

    /// The system roots (when `system`) plus every certificate in `extra`, in order.
    pub fn from_files(system: bool, extra: &[PathBuf]) -> Result<TrustStore, TrustError> {
        let mut store = TrustStore::new();
        if system {
            store.add_system_roots()?;
        }
        for path in extra {
            store.add_file(path)?;
        }
        Ok(store)
    }

    /// Adds the system roots from [`SYSTEM_BUNDLE`].
    pub fn add_system_roots(&mut self) -> Result<&TrustSource, TrustError> {
        let path = Path::new(SYSTEM_BUNDLE);
        if !path.exists() {
            return Err(TrustError::SystemBundleMissing {
                path: path.to_path_buf(),
            });
        }
        self.add_file(path)
    }

    /// Adds every certificate of a PEM bundle or a DER certificate file. Nothing is added
    /// when any certificate in it fails to parse.
    pub fn add_file(&mut self, path: &Path) -> Result<&TrustSource, TrustError> {
        let bytes = read_bounded(path)?;
        let certs = parse_certificates(path, &bytes)?;
        let certificates = certs.len();
        let mut duplicates = 0;
        for cert in certs {
            if !self.add_certificate(cert).map_err(TrustError::Store)? {
                duplicates += 1;
            }
        }
        self.sources.push(TrustSource {
            path: path.to_path_buf(),
            certificates,
            duplicates,
        });
        Ok(&self.sources[self.sources.len() - 1])
    }

    /// Adds the imported CA certificates as anchors (pinned leafs are not anchors: they go
    /// to [`PinnedLeafs`]). Recorded as a source named after the trust directory.
    pub fn add_imported(&mut self, imported: &ImportedTrust) -> Result<&TrustSource, TrustError> {
        let mut certificates = 0;
        let mut duplicates = 0;
        for cert in imported.ca_certificates() {
            certificates += 1;
            if !self.add_certificate(cert.to_owned()).map_err(TrustError::Store)? {
                duplicates += 1;
            }
        }
        self.sources.push(TrustSource {
            path: imported.dir().to_path_buf(),
            certificates,
            duplicates,
        });
        Ok(&self.sources[self.sources.len() - 1])
    }

    /// Adds one anchor; false when it was already there.
    pub fn add_certificate(&mut self, cert: X509) -> Result<bool, ErrorStack> {
        let digest = cert.digest(MessageDigest::sha256())?;
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(&digest);
        if !self.fingerprints.insert(fingerprint) {
            return Ok(false);
        }
        self.anchors.push(cert);
        Ok(true)
    }

    /// Distinct trusted certificates.
    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }

    pub fn anchors(&self) -> impl Iterator<Item = &X509Ref> {
        self.anchors.iter().map(|c| c.as_ref())
    }

    pub fn sources(&self) -> &[TrustSource] {
        &self.sources
    }

    /// A BoringSSL store holding every anchor, for the upstream verifier. Build it once per
    /// configuration and share it: it is immutable and reference-counted.
    pub fn build_store(&self) -> Result<X509Store, TrustError> {
        let mut builder = X509StoreBuilder::new().map_err(TrustError::Store)?;
        for cert in &self.anchors {
            builder.add_cert(cert).map_err(TrustError::Store)?;
        }
        Ok(builder.build())
    }
}

/// The directory under the state dir that holds imported certificates.
pub const TRUST_DIR: &str = "trust";
/// The index of imported certificates, in [`TRUST_DIR`].
pub const INDEX_FILE: &str = "index.json";
/// Taken shared to read the store and exclusive to change it, so concurrent imports do not
/// lose each other's entries.
const LOCK_FILE: &str = ".lock";
const INDEX_VERSION: u32 = 1;

/// Where imported certificates live for `state_dir`.
pub fn trust_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(TRUST_DIR)
}

/// What an imported certificate is trusted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrustKind {
    /// A trust anchor: servers whose chain leads to it validate for every name.
    Ca,
    /// A server's own certificate, trusted only when presented by its one host.
    Pinned,
}

impl TrustKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TrustKind::Ca => "ca",
            TrustKind::Pinned => "pinned",
        }
    }
}

/// One line of the index: a certificate and what it is trusted for. A certificate pinned for
/// two hosts has two entries (and one PEM file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedEntry {
    /// SHA-256 of the DER certificate, lower-case hex; the PEM file is `<sha256>.pem`.
    pub sha256: String,
    pub kind: TrustKind,
    /// The host a pinned leaf is trusted for (lower-case DNS name or canonical IP address);
    /// `None` for a CA.
    pub host: Option<String>,
    /// `C=US, O=Example, CN=www.example.com`, in certificate order.
    pub subject: String,
    pub issuer: String,
    /// RFC 3339 UTC, `2030-01-31T12:00:00Z`.
    pub not_after: String,
    /// RFC 3339 UTC with milliseconds.
    pub imported_at: String,
}

/// The index file as stored.
#[derive(Debug, Serialize, Deserialize)]
struct Index {
    version: u32,
    entries: Vec<ImportedEntry>,
}

/// One entry [`ImportedTrust::import`] asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub entry: ImportedEntry,
    /// False when the store already had it (importing is idempotent).
    pub added: bool,
}

/// What [`ImportedTrust::import`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportReport {
    pub entries: Vec<Imported>,
    /// Certificates of the file left out: with `--host` only the first one is pinned.
    pub ignored: usize,
}

/// The certificates imported into the state dir, loaded and checked against their hashes.
#[derive(Debug, Clone)]
pub struct ImportedTrust {
    dir: PathBuf,
    entries: Vec<ImportedEntry>,
    certs: HashMap<String, X509>,
}

impl ImportedTrust {
    /// Reads `<state_dir>/trust/`. A missing directory or index is an empty store; a corrupt
    /// index, or a listed certificate whose PEM file is missing, unreadable or does not hash
    /// to its name, is an error naming the file.
    pub fn load(state_dir: &Path) -> Result<ImportedTrust, TrustError> {
        let dir = trust_dir(state_dir);
        let _lock = StoreLock::shared(&dir)?;
        let entries = read_index(&dir)?;
        let mut certs = HashMap::new();
        for entry in &entries {
            if !certs.contains_key(&entry.sha256) {
                let cert = read_stored_certificate(&dir, &entry.sha256)?;
                certs.insert(entry.sha256.clone(), cert);
            }
        }
        Ok(ImportedTrust { dir, entries, certs })
    }

    /// Imports the certificates of `file` (a PEM bundle or one DER certificate).
    ///
    /// Without `host` every certificate must be a CA (basicConstraints CA:TRUE, keyUsage
    /// allowing certificate signing when present), and all of them become anchors; nothing
    /// is imported when one is not. With `host` (a DNS name or an IP address) the first
    /// certificate is pinned for that host and the others are ignored. Importing what is
    /// already there changes nothing; the same certificate for another host adds that host.
    pub fn import(state_dir: &Path, file: &Path, host: Option<&str>) -> Result<ImportReport, TrustError> {
        // A bad host is refused before anything is read.
        host.map(normalize_host).transpose()?;
        let bytes = read_bounded(file)?;
        Self::import_bytes(state_dir, file, &bytes, host)
    }

    /// [`ImportedTrust::import`] of a file's contents already read (`loupectl trust import`
    /// sends them over the control socket); `file` names them in errors.
    pub fn import_bytes(
        state_dir: &Path,
        file: &Path,
        bytes: &[u8],
        host: Option<&str>,
    ) -> Result<ImportReport, TrustError> {
        let host = host.map(normalize_host).transpose()?;
        let mut certs = parse_certificates(file, bytes)?;
        let mut ignored = 0;
        let kind = match host {
            Some(_) => {
                ignored = certs.len() - 1;
                certs.truncate(1);
                TrustKind::Pinned
            }
            None => {
                for (i, cert) in certs.iter().enumerate() {
                    let der = cert.to_der().map_err(|e| e.to_string());
                    if let Err(why) = der.and_then(|der| ca_extensions_allow_signing(&der)) {
                        return Err(TrustError::NotCa {
                            path: file.to_path_buf(),
                            index: i + 1,
                            subject: display_name(cert.subject_name()),
                            why,
                        });
                    }
                }
                TrustKind::Ca
            }
        };

        let dir = trust_dir(state_dir);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(|source| TrustError::Write {
                path: dir.clone(),
                source,
            })?;
        let _lock = StoreLock::exclusive(&dir)?;
        let mut entries = read_index(&dir)?;
        let imported_at = rfc3339_utc_ms(SystemTime::now());
        let mut report = Vec::new();
        let mut changed = false;
        for cert in &certs {
            let sha256 = sha256_hex(cert).map_err(TrustError::Store)?;
            // Content-addressed: rewrite the PEM unless it is there and intact.
            if read_stored_certificate(&dir, &sha256).is_err() {
                let pem = cert.to_pem().map_err(TrustError::Store)?;
                write_atomically(&dir.join(format!("{sha256}.pem")), &pem)?;
            }
            if let Some(existing) = entries
                .iter()
                .find(|e| e.sha256 == sha256 && e.kind == kind && e.host == host)
            {
                report.push(Imported {
                    entry: existing.clone(),
                    added: false,
                });
                continue;
            }
            let entry = ImportedEntry {
                sha256,
                kind,
                host: host.clone(),
                subject: name_line(cert.subject_name()),
                issuer: name_line(cert.issuer_name()),
                not_after: rfc3339_seconds(cert.not_after()),
                imported_at: imported_at.clone(),
            };
            entries.push(entry.clone());
            report.push(Imported { entry, added: true });
            changed = true;
        }
        if changed {
            write_index(&dir, entries)?;
        }
        Ok(ImportReport {
            entries: report,
            ignored,
        })
    }

    /// Removes the certificate whose SHA-256 starts with `sha256_prefix` (hex, colons and
    /// case ignored; it must match one certificate): all its entries, or with `host` only
    /// the pin for that host. The PEM file goes when no entry needs it any more. Works on
    /// the index alone, so it can also drop an entry whose PEM file is gone.
    pub fn remove(state_dir: &Path, sha256_prefix: &str, host: Option<&str>) -> Result<Vec<ImportedEntry>, TrustError> {
        let prefix: String = sha256_prefix
            .chars()
            .filter(|c| *c != ':')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if prefix.is_empty() || prefix.len() > 64 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TrustError::BadFingerprint {
                given: sha256_prefix.to_string(),
            });
        }
        let host = host.map(normalize_host).transpose()?;
        let dir = trust_dir(state_dir);
        let not_imported = |what: String| TrustError::NotImported { what, dir: dir.clone() };
        if !dir.join(INDEX_FILE).exists() {
            return Err(not_imported(format!("SHA-256 {prefix}")));
        }
        let _lock = StoreLock::exclusive(&dir)?;
        let entries = read_index(&dir)?;
        let mut matches: Vec<String> = entries
            .iter()
            .filter(|e| e.sha256.starts_with(&prefix))
            .map(|e| e.sha256.clone())
            .collect();
        matches.sort();
        matches.dedup();
        let sha256 = match matches.as_slice() {
            [] => return Err(not_imported(format!("SHA-256 {prefix}"))),
            [one] => one.clone(),
            _ => return Err(TrustError::Ambiguous { prefix, matches }),
        };
        let (removed, kept): (Vec<_>, Vec<_>) = entries
            .into_iter()
            .partition(|e| e.sha256 == sha256 && (host.is_none() || e.host == host));
        if removed.is_empty() {
            let host = host.unwrap_or_default();
            return Err(not_imported(format!("SHA-256 {prefix} pinned for {host}")));
        }
        let still_needed = kept.iter().any(|e| e.sha256 == sha256);
        write_index(&dir, kept)?;
        if !still_needed {
            let pem = dir.join(format!("{sha256}.pem"));
            match fs::remove_file(&pem) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(TrustError::Write { path: pem, source }),
            }
        }
        Ok(removed)
    }

    /// The entries, in the order they were imported.
    pub fn list(&self) -> &[ImportedEntry] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `<state_dir>/trust`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The certificate with this SHA-256 (full lower-case hex), if imported.
    pub fn certificate(&self, sha256: &str) -> Option<&X509Ref> {
        self.certs.get(sha256).map(|c| c.as_ref())
    }

    /// The imported CAs, each once, in import order.
    pub fn ca_certificates(&self) -> impl Iterator<Item = &X509Ref> {
        let mut seen = HashSet::new();
        self.entries
            .iter()
            .filter(move |e| e.kind == TrustKind::Ca && seen.insert(e.sha256.as_str()))
            .filter_map(|e| self.certificate(&e.sha256))
    }

    /// The pinned leafs, for the upstream verifier.
    pub fn pinned(&self) -> PinnedLeafs {
        PinnedLeafs::new(self)
    }
}

/// The pinned leaf certificates: which host may present which exact certificate. Cheap to
/// clone and share between workers (immutable, behind an `Arc`).
#[derive(Debug, Clone, Default)]
pub struct PinnedLeafs {
    by_sha256: Arc<HashMap<[u8; 32], Vec<PinnedHost>>>,
}

#[derive(Debug)]
struct PinnedHost {
    /// Lower-case DNS name or canonical IP address, as stored.
    name: String,
    ip: Option<IpAddr>,
}

impl PinnedLeafs {
    pub fn new(imported: &ImportedTrust) -> PinnedLeafs {
        let mut by_sha256: HashMap<[u8; 32], Vec<PinnedHost>> = HashMap::new();
        for entry in &imported.entries {
            let (TrustKind::Pinned, Some(host)) = (entry.kind, &entry.host) else {
                continue;
            };
            let mut sha256 = [0u8; 32];
            // The index was validated on load: 64 hex digits.
            if hex::decode_to_slice(&entry.sha256, &mut sha256).is_err() {
                continue;
            }
            by_sha256.entry(sha256).or_default().push(PinnedHost {
                name: host.clone(),
                ip: parse_ip(host),
            });
        }
        PinnedLeafs {
            by_sha256: Arc::new(by_sha256),
        }
    }

    /// The pinned host name when the leaf whose DER hashes to `leaf_der_sha256` was imported
    /// pinned for `host` (a DNS name, compared case-insensitively and without a trailing dot,
    /// or an IP address); `None` otherwise, including for the same certificate presented
    /// for another host.
    pub fn allows(&self, host: &str, leaf_der_sha256: &[u8; 32]) -> Option<&str> {
        let pins = self.by_sha256.get(leaf_der_sha256)?;
        let host = host.strip_suffix('.').unwrap_or(host);
        let ip = parse_ip(host);
        pins.iter()
            .find(|pin| match (pin.ip, ip) {
                (Some(a), Some(b)) => a == b,
                (None, None) => pin.name.eq_ignore_ascii_case(host),
                _ => false,
            })
            .map(|pin| pin.name.as_str())
    }

    /// Pins: (certificate, host) pairs.
    pub fn len(&self) -> usize {
        self.by_sha256.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_sha256.is_empty()
    }
}

/// The host a leaf is pinned for, in the form stored: a DNS name in lower case without a
/// trailing dot, or an IP address in canonical form (brackets around IPv6 allowed).
pub fn normalize_host(host: &str) -> Result<String, TrustError> {
    let bad = |why: &str| TrustError::BadHost {
        host: host.to_string(),
        why: why.to_string(),
    };
    let text = host.trim();
    let text = text.strip_suffix('.').unwrap_or(text);
    if let Some(ip) = parse_ip(text) {
        return Ok(ip.to_string());
    }
    if text.is_empty() {
        return Err(bad("it is empty"));
    }
    if text.contains('*') {
        return Err(bad(
            "wildcards cannot be pinned; import the certificate once for each host name",
        ));
    }
    if text.len() > 253 {
        return Err(bad("a DNS name has at most 253 characters"));
    }
    let name = text.to_ascii_lowercase();
    for label in name.split('.') {
        if label.is_empty() {
            return Err(bad("it has an empty label (two dots in a row?)"));
        }
        if label.len() > 63 {
            return Err(bad("a DNS label has at most 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(bad(
                "a DNS name has only letters, digits, hyphens and dots (internationalised names in their xn-- form)",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("a DNS label cannot start or end with a hyphen"));
        }
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad("it is neither an IP address nor a DNS name"));
    }
    Ok(name)
}

/// An IP address, IPv6 possibly in brackets, IPv4-mapped IPv6 as IPv4.
fn parse_ip(text: &str) -> Option<IpAddr> {
    let text = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text);
    text.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

fn sha256_hex(cert: &X509Ref) -> Result<String, ErrorStack> {
    Ok(hex::encode(&*cert.digest(MessageDigest::sha256())?))
}

/// The index entries; none when there is no index yet. Checks each entry's shape.
fn read_index(dir: &Path) -> Result<Vec<ImportedEntry>, TrustError> {
    let path = dir.join(INDEX_FILE);
    let unreadable = |source| TrustError::StoreUnreadable {
        path: path.clone(),
        source,
    };
    let file = match fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(unreadable(e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    let corrupt = |detail: String| TrustError::CorruptIndex {
        path: path.clone(),
        detail,
    };
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(corrupt(format!("it is larger than {MAX_FILE_BYTES} bytes")));
    }
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(corrupt(format!(
            "expected a JSON object {{\"version\": {INDEX_VERSION}, \"entries\": [...]}}"
        )));
    }
    let index: Index = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if index.version != INDEX_VERSION {
        return Err(corrupt(format!(
            "version {} is not the version {INDEX_VERSION} this loupe reads",
            index.version
        )));
    }
    let mut seen = HashSet::new();
    for (i, entry) in index.entries.iter().enumerate() {
        let n = i + 1;
        if entry.sha256.len() != 64
            || !entry
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(corrupt(format!(
                "entry #{n}: sha256 {:?} is not 64 lower-case hex digits",
                entry.sha256
            )));
        }
        match (entry.kind, &entry.host) {
            (TrustKind::Ca, None) => {}
            (TrustKind::Ca, Some(_)) => return Err(corrupt(format!("entry #{n}: a ca entry has no host"))),
            (TrustKind::Pinned, None) => return Err(corrupt(format!("entry #{n}: a pinned entry needs a host"))),
            (TrustKind::Pinned, Some(host)) => match normalize_host(host) {
                Ok(normal) if &normal == host => {}
                Ok(_) => return Err(corrupt(format!("entry #{n}: host {host:?} is not in normal form"))),
                Err(e) => return Err(corrupt(format!("entry #{n}: {e}"))),
            },
        }
        if !seen.insert((&entry.sha256, entry.kind, &entry.host)) {
            return Err(corrupt(format!("entry #{n} repeats an earlier one")));
        }
    }
    Ok(index.entries)
}

fn write_index(dir: &Path, entries: Vec<ImportedEntry>) -> Result<(), TrustError> {
    let path = dir.join(INDEX_FILE);
    let index = Index {
        version: INDEX_VERSION,
        entries,
    };
    let mut json = serde_json::to_vec_pretty(&index).map_err(|e| TrustError::Write {
        path: path.clone(),
        source: io::Error::other(e),
    })?;
    json.push(b'\n');
    write_atomically(&path, &json)
}

/// The stored PEM of `sha256`, checked to hold exactly that certificate.
fn read_stored_certificate(dir: &Path, sha256: &str) -> Result<X509, TrustError> {
    let path = dir.join(format!("{sha256}.pem"));
    let bad = |problem: String| TrustError::BadStoredCertificate {
        path: path.clone(),
        sha256: sha256.to_string(),
        problem,
    };
    let bytes = match read_bounded(&path) {
        Ok(bytes) => bytes,
        Err(TrustError::Unreadable { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Err(bad("missing".to_string()))
        }
        Err(e) => return Err(bad(format!("unreadable ({e})"))),
    };
    let mut certs = parse_certificates(&path, &bytes).map_err(|e| bad(format!("not a certificate ({e})")))?;
    if certs.len() != 1 {
        return Err(bad(format!("holding {} certificates instead of one", certs.len())));
    }
    let cert = certs.remove(0);
    let actual = sha256_hex(&cert).map_err(TrustError::Store)?;
    if actual != sha256 {
        return Err(bad(format!("a different certificate (SHA-256 {actual})")));
    }
    Ok(cert)
}

/// Writes `contents` to a temporary file, syncs it and renames it over `path`, then syncs the
/// directory: readers see the old file or the new one, never half of one.
fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), TrustError> {
    let write_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TrustError::Write { path, source }
    };
    let file_name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let temp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&temp)?;
        file.write_all(contents)?;
        file.sync_all()
    })()
    .map_err(write_error(&temp))
    .and_then(|()| fs::rename(&temp, path).map_err(write_error(path)));
    if result.is_err() {
        let _ = fs::remove_file(&temp);
        return result;
    }
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(write_error(dir))?;
    }
    Ok(())
}

/// An advisory lock on the trust directory, held until dropped.
struct StoreLock {
    _file: fs::File,
}

impl StoreLock {
    fn exclusive(dir: &Path) -> Result<StoreLock, TrustError> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(|source| TrustError::Write {
                path: path.clone(),
                source,
            })?;
        flock(&file, libc::LOCK_EX).map_err(|source| TrustError::Write { path, source })?;
        Ok(StoreLock { _file: file })
    }

    /// None when there is no lock file to take (no store yet, or written by an older loupe).
    fn shared(dir: &Path) -> Result<Option<StoreLock>, TrustError> {
        let path = dir.join(LOCK_FILE);
        let file = match fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(TrustError::StoreUnreadable { path, source }),
        };
        flock(&file, libc::LOCK_SH).map_err(|source| TrustError::StoreUnreadable { path, source })?;
        Ok(Some(StoreLock { _file: file }))
    }
}

fn flock(file: &fs::File, operation: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock on a descriptor this function borrows; it touches no memory.
        if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// [`name_line`] for messages: says so when the name is empty.
fn display_name(name: &X509NameRef) -> String {
    let line = name_line(name);
    if line.is_empty() {
        "empty subject".to_string()
    } else {
        line
    }
}

/// RFC 3339 UTC to the second; OpenSSL's form if the time cannot be read. Times before 1970
/// print as the epoch.
fn rfc3339_seconds(time: &Asn1TimeRef) -> String {
    let Some(diff) = Asn1Time::from_unix(0).ok().and_then(|epoch| epoch.diff(time).ok()) else {
        return time.to_string();
    };
    let secs = (i64::from(diff.days) * 86_400 + i64::from(diff.secs)).max(0);
    let with_ms = rfc3339_utc_ms(UNIX_EPOCH + Duration::from_secs(secs as u64));
    // Whole seconds: drop the ".000".
    with_ms.replacen(".000Z", "Z", 1)
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, TrustError> {
    let unreadable = |source| TrustError::Unreadable {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(unreadable)?;
    let mut bytes = Vec::new();
    // Read one byte past the bound to tell "exactly at the limit" from "too large".
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(TrustError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// Every certificate in a PEM bundle (other PEM blocks such as keys are skipped), or the
/// single certificate of a DER file.
fn parse_certificates(path: &Path, bytes: &[u8]) -> Result<Vec<X509>, TrustError> {
    if !contains(bytes, PEM_BEGIN) {
        if bytes.is_empty() {
            return Err(TrustError::NoCertificates {
                path: path.to_path_buf(),
                detail: "the file is empty".to_string(),
            });
        }
        return X509::from_der(bytes)
            .map(|cert| vec![cert])
            .map_err(|e| TrustError::NoCertificates {
                path: path.to_path_buf(),
                detail: format!("it is neither PEM (no -----BEGIN line) nor a DER certificate ({e})"),
            });
    }

    let mut certs = Vec::new();
    let mut other_labels: Vec<String> = Vec::new();
    // The PEM block being collected: its label, first line number and text.
    let mut open: Option<(Vec<u8>, usize, Vec<u8>)> = None;
    for (number, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line_no = number + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let trimmed = line.trim_ascii();
        if let Some((label, start, mut text)) = open.take() {
            text.extend_from_slice(trimmed);
            text.push(b'\n');
            if trimmed.starts_with(b"-----END ") {
                if PEM_CERTIFICATE_LABELS.contains(&label.as_slice()) {
                    let index = certs.len() + 1;
                    let cert = X509::from_pem(&text).map_err(|e| TrustError::BadCertificate {
                        path: path.to_path_buf(),
                        index,
                        line: start,
                        reason: e.to_string(),
                    })?;
                    certs.push(cert);
                } else {
                    let label = String::from_utf8_lossy(&label).into_owned();
                    if !other_labels.contains(&label) {
                        other_labels.push(label);
                    }
                }
            } else {
                open = Some((label, start, text));
            }
        } else if let Some(rest) = trimmed.strip_prefix(PEM_BEGIN) {
            let label = rest.strip_suffix(b"-----").unwrap_or(rest).to_vec();
            let mut text = trimmed.to_vec();
            text.push(b'\n');
            open = Some((label, line_no, text));
        }
    }
    if let Some((label, start, _)) = open {
        return Err(TrustError::BadCertificate {
            path: path.to_path_buf(),
            index: certs.len() + 1,
            line: start,
            reason: format!(
                "the {} block has no -----END line (truncated file?)",
                String::from_utf8_lossy(&label)
            ),
        });
    }
    if certs.is_empty() {
        return Err(TrustError::NoCertificates {
            path: path.to_path_buf(),
            detail: if other_labels.is_empty() {
                "no -----BEGIN CERTIFICATE----- block".to_string()
            } else {
                format!("it only has {} blocks", other_labels.join(", "))
            },
        });
    }
    Ok(certs)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::ca::{CaKeyType, CaRole, DecryptionCa};
    use crate::tls::forge::{CertSource, Forger, Verdict};
    use boring::stack::Stack;
    use boring::x509::X509StoreContext;

    fn temp_file(tag: &str, contents: &[u8]) -> PathBuf {
        let mut random = [0u8; 8];
        boring::rand::rand_bytes(&mut random).unwrap();
        let path = std::env::temp_dir().join(format!(
            "loupe-trust-{tag}-{}-{}.pem",
            std::process::id(),
            hex::encode(random)
        ));
        fs::write(&path, contents).unwrap();
        path
    }

    fn two_cas() -> (DecryptionCa, DecryptionCa) {
        (
            DecryptionCa::generate(CaRole::Decryption, CaKeyType::EcdsaP256).unwrap(),
            DecryptionCa::generate(CaRole::Untrusted, CaKeyType::EcdsaP256).unwrap(),
        )
    }

    #[test]
    fn loads_a_bundle_of_two_certificates() {
        let (a, b) = two_cas();
        let bundle = format!("# comment lines are fine\n{}\n{}", a.cert_pem(), b.cert_pem());
        let path = temp_file("bundle", bundle.as_bytes());
        let store = TrustStore::from_files(false, std::slice::from_ref(&path)).unwrap();
        assert_eq!(store.len(), 2);
        assert_eq!(store.sources()[0].certificates, 2);
        assert!(store.build_store().is_ok());

        // The same file twice: duplicates are kept once.
        let store = TrustStore::from_files(false, &[path.clone(), path.clone()]).unwrap();
        assert_eq!(store.len(), 2);
        assert_eq!(store.sources()[1].duplicates, 2);
        fs::remove_file(path).unwrap();
    }

    #[test]
    fn built_store_validates_what_its_anchors_signed() {
        let mut forger = Forger::ephemeral(4).unwrap();
        let path = temp_file("anchor", forger.decryption_ca().cert_pem().as_bytes());
        let store = TrustStore::from_files(false, std::slice::from_ref(&path)).unwrap();
        let x509_store = store.build_store().unwrap();
        // Any certificate will do as the "upstream": use the untrusted CA's.
        let upstream = forger.untrusted_ca().cert().to_owned();
        let forged = forger
            .certificate_for(&upstream, Verdict::Trusted, "example.test")
            .unwrap();
        let mut context = X509StoreContext::new().unwrap();
        let chain = Stack::new().unwrap();
        assert!(context
            .init(&x509_store, &forged.chain[0], &chain, |c| c.verify_cert())
            .unwrap());
        fs::remove_file(path).unwrap();
    }

    #[test]
    fn der_file_is_accepted() {
        let (a, _) = two_cas();
        let path = temp_file("der", &a.cert().to_der().unwrap());
        let store = TrustStore::from_files(false, std::slice::from_ref(&path)).unwrap();
        assert_eq!(store.len(), 1);
        fs::remove_file(path).unwrap();
    }

    #[test]
    fn broken_files_are_reported_with_name_and_position() {
        let (a, b) = two_cas();
        // Second certificate corrupted in its body.
        let broken_b = b.cert_pem().replacen("MII", "M!!", 1);
        let bundle = format!("{}{}", a.cert_pem(), broken_b);
        let path = temp_file("broken", bundle.as_bytes());
        let err = TrustStore::from_files(false, std::slice::from_ref(&path)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        let first_lines = a.cert_pem().lines().count();
        assert!(
            text.contains(&format!(
                "certificate #2 (PEM block starting at line {})",
                first_lines + 1
            )),
            "{text}"
        );
        fs::remove_file(path).unwrap();

        // Truncated block.
        let truncated = &a.cert_pem()[..a.cert_pem().len() / 2];
        let path = temp_file("truncated", truncated.as_bytes());
        let err = TrustStore::from_files(false, std::slice::from_ref(&path)).unwrap_err();
        assert!(err.to_string().contains("no -----END line"), "{err}");
        fs::remove_file(path).unwrap();

        // Only a key.
        let path = temp_file("key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
        let err = TrustStore::from_files(false, std::slice::from_ref(&path)).unwrap_err();
        assert!(matches!(err, TrustError::NoCertificates { .. }), "{err}");
        assert!(err.to_string().contains("PRIVATE KEY"), "{err}");
        fs::remove_file(path).unwrap();

        // Garbage.
        let path = temp_file("garbage", b"not a certificate at all");
        let err = TrustStore::from_files(false, std::slice::from_ref(&path)).unwrap_err();
        assert!(err.to_string().contains("neither PEM"), "{err}");
        fs::remove_file(path).unwrap();

        // Missing.
        let missing = PathBuf::from("/nonexistent/loupe-extra-ca.pem");
        let err = TrustStore::from_files(false, std::slice::from_ref(&missing)).unwrap_err();
        assert!(matches!(err, TrustError::Unreadable { .. }));
        assert!(err.to_string().contains("/nonexistent/loupe-extra-ca.pem"), "{err}");
    }

    #[test]
    fn system_bundle_loads() {
        // scripts/test.sh installs ca-certificates; without it this fails with the message
        // that names the package.
        let store = TrustStore::from_files(true, &[]).unwrap();
        assert!(store.len() > 50, "{}", store.len());
        let err = TrustError::SystemBundleMissing {
            path: PathBuf::from(SYSTEM_BUNDLE),
        };
        assert!(err.to_string().contains("ca-certificates"));
    }

    // --- The imported store under the state dir -------------------------------------------

    fn temp_state_dir(tag: &str) -> PathBuf {
        let mut random = [0u8; 8];
        boring::rand::rand_bytes(&mut random).unwrap();
        std::env::temp_dir().join(format!(
            "loupe-trust-state-{tag}-{}-{}",
            std::process::id(),
            hex::encode(random)
        ))
    }

    /// A self-signed server certificate; `basic` is its basicConstraints cA flag, if any.
    fn self_signed(common_name: &str, basic: Option<bool>) -> X509 {
        use boring::bn::BigNum;
        use boring::ec::{EcGroup, EcKey};
        use boring::nid::Nid;
        use boring::pkey::PKey;
        use boring::x509::extension::BasicConstraints;
        use boring::x509::X509Name;

        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let mut name = X509Name::builder().unwrap();
        name.append_entry_by_nid(Nid::COMMONNAME, common_name).unwrap();
        let name = name.build();
        let mut serial = [0u8; 4];
        boring::rand::rand_bytes(&mut serial).unwrap();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(
            &BigNum::from_u32(u32::from_be_bytes(serial) >> 1)
                .unwrap()
                .to_asn1_integer()
                .unwrap(),
        )
        .unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
        b.set_not_after(&Asn1Time::days_from_now(30).unwrap()).unwrap();
        match basic {
            Some(true) => b
                .append_extension(&BasicConstraints::new().critical().ca().build().unwrap())
                .unwrap(),
            Some(false) => b
                .append_extension(&BasicConstraints::new().critical().build().unwrap())
                .unwrap(),
            None => {}
        }
        b.sign(&key, MessageDigest::sha256()).unwrap();
        b.build()
    }

    fn pem_file(dir: &Path, name: &str, certs: &[&X509Ref]) -> PathBuf {
        fs::create_dir_all(dir).unwrap();
        let path = dir.join(name);
        let mut text = Vec::new();
        for cert in certs {
            text.extend(cert.to_pem().unwrap());
        }
        fs::write(&path, text).unwrap();
        path
    }

    fn sha(cert: &X509Ref) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(&cert.digest(MessageDigest::sha256()).unwrap());
        out
    }

    #[test]
    fn missing_state_dir_is_an_empty_store() {
        let state = temp_state_dir("missing");
        let imported = ImportedTrust::load(&state).unwrap();
        assert!(imported.is_empty());
        assert!(imported.pinned().is_empty());
        let mut store = TrustStore::new();
        assert_eq!(store.add_imported(&imported).unwrap().certificates, 0);
        assert!(!state.exists(), "loading must not create anything");
    }

    #[test]
    fn imported_ca_persists_and_becomes_an_anchor() {
        let state = temp_state_dir("ca");
        let mut forger = Forger::ephemeral(4).unwrap();
        let ca_file = pem_file(&state.join("in"), "ca.pem", &[forger.decryption_ca().cert()]);

        let report = ImportedTrust::import(&state, &ca_file, None).unwrap();
        assert_eq!(report.ignored, 0);
        assert_eq!(report.entries.len(), 1);
        let entry = &report.entries[0].entry;
        assert!(report.entries[0].added);
        assert_eq!(entry.kind, TrustKind::Ca);
        assert_eq!(entry.host, None);
        assert_eq!(entry.sha256, hex::encode(sha(forger.decryption_ca().cert())));
        assert!(entry.subject.contains("CN="), "{}", entry.subject);
        assert!(
            entry.not_after.ends_with('Z') && !entry.not_after.contains('.'),
            "{}",
            entry.not_after
        );
        assert!(state.join("trust").join(format!("{}.pem", entry.sha256)).is_file());

        // Reloaded from disk, as after a restart.
        let imported = ImportedTrust::load(&state).unwrap();
        assert_eq!(imported.list(), std::slice::from_ref(entry));
        assert!(imported.certificate(&entry.sha256).is_some());
        assert!(imported.pinned().is_empty());
        let mut store = TrustStore::new();
        let source = store.add_imported(&imported).unwrap().clone();
        assert_eq!((source.certificates, source.duplicates), (1, 0));
        assert_eq!(source.path, state.join("trust"));

        // What the imported CA signs validates against the built store.
        let upstream = forger.untrusted_ca().cert().to_owned();
        let forged = forger
            .certificate_for(&upstream, Verdict::Trusted, "example.test")
            .unwrap();
        let x509_store = store.build_store().unwrap();
        let mut context = X509StoreContext::new().unwrap();
        let chain = Stack::new().unwrap();
        assert!(context
            .init(&x509_store, &forged.chain[0], &chain, |c| c.verify_cert())
            .unwrap());
        fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn leaf_without_host_is_refused_and_nothing_is_imported() {
        let state = temp_state_dir("leaf");
        let mut forger = Forger::ephemeral(4).unwrap();
        let upstream = forger.untrusted_ca().cert().to_owned();
        let forged = forger
            .certificate_for(&upstream, Verdict::Trusted, "leaf.example.test")
            .unwrap();
        let leaf_file = pem_file(&state.join("in"), "leaf.pem", &[&forged.chain[0]]);
        let err = ImportedTrust::import(&state, &leaf_file, None).unwrap_err();
        assert!(matches!(err, TrustError::NotCa { index: 1, .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains(&leaf_file.display().to_string()), "{text}");
        assert!(text.contains(&name_line(forged.chain[0].subject_name())), "{text}");
        assert!(text.contains("is not a CA certificate"), "{text}");
        assert!(text.contains("import it with --host NAME"), "{text}");

        // A bundle with a CA first and a leaf second: all or nothing.
        let bundle = pem_file(
            &state.join("in"),
            "bundle.pem",
            &[forger.decryption_ca().cert(), &forged.chain[0]],
        );
        let err = ImportedTrust::import(&state, &bundle, None).unwrap_err();
        assert!(matches!(err, TrustError::NotCa { index: 2, .. }), "{err}");
        assert!(ImportedTrust::load(&state).unwrap().is_empty());

        // Self-signed without basicConstraints, or with CA:FALSE: not CAs either.
        for basic in [None, Some(false)] {
            let file = pem_file(&state.join("in"), "self.pem", &[&self_signed("self.test", basic)]);
            let err = ImportedTrust::import(&state, &file, None).unwrap_err();
            assert!(err.to_string().contains("basicConstraints CA:TRUE is missing"), "{err}");
        }
        // Self-signed with CA:TRUE (what `openssl req -x509` makes by default) is a CA.
        let file = pem_file(
            &state.join("in"),
            "self-ca.pem",
            &[&self_signed("self.test", Some(true))],
        );
        ImportedTrust::import(&state, &file, None).unwrap();
        fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn pinned_leaf_is_trusted_only_for_its_host() {
        let state = temp_state_dir("pin");
        let leaf = self_signed("nas.example.test", Some(false));
        let other = self_signed("nas.example.test", Some(false));
        // DER, as a browser's "export certificate" saves it.
        fs::create_dir_all(&state).unwrap();
        let der_file = state.join("nas.der");
        fs::write(&der_file, leaf.to_der().unwrap()).unwrap();

        let report = ImportedTrust::import(&state, &der_file, Some("NAS.Example.TEST.")).unwrap();
        let entry = &report.entries[0].entry;
        assert_eq!(entry.kind, TrustKind::Pinned);
        assert_eq!(entry.host.as_deref(), Some("nas.example.test"));

        let imported = ImportedTrust::load(&state).unwrap();
        let pinned = imported.pinned();
        assert_eq!(pinned.len(), 1);
        assert_eq!(pinned.allows("nas.example.test", &sha(&leaf)), Some("nas.example.test"));
        assert_eq!(
            pinned.allows("NAS.EXAMPLE.TEST.", &sha(&leaf)),
            Some("nas.example.test")
        );
        assert_eq!(pinned.allows("other.example.test", &sha(&leaf)), None);
        assert_eq!(pinned.allows("nas.example.test", &sha(&other)), None);
        assert_eq!(pinned.allows("198.18.0.2", &sha(&leaf)), None);
        // Pinned leafs are not anchors.
        let mut store = TrustStore::new();
        assert_eq!(store.add_imported(&imported).unwrap().certificates, 0);
        assert!(store.is_empty());

        // Pinned for an address: any spelling of that address.
        let ip_file = pem_file(&state.join("in"), "other.pem", &[&other]);
        let report = ImportedTrust::import(&state, &ip_file, Some("[2001:DB8::0:1]")).unwrap();
        assert_eq!(report.entries[0].entry.host.as_deref(), Some("2001:db8::1"));
        let pinned = ImportedTrust::load(&state).unwrap().pinned();
        assert_eq!(pinned.allows("2001:db8:0::1", &sha(&other)), Some("2001:db8::1"));
        assert_eq!(pinned.allows("[2001:db8::1]", &sha(&other)), Some("2001:db8::1"));
        assert_eq!(pinned.allows("2001:db8::2", &sha(&other)), None);
        assert_eq!(pinned.allows("nas.example.test", &sha(&other)), None);
        fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn with_host_only_the_first_certificate_is_pinned() {
        let state = temp_state_dir("chain");
        let mut forger = Forger::ephemeral(4).unwrap();
        let upstream = forger.untrusted_ca().cert().to_owned();
        let forged = forger.certificate_for(&upstream, Verdict::Trusted, "app.test").unwrap();
        let chain = pem_file(&state.join("in"), "chain.pem", &[&forged.chain[0], &forged.chain[1]]);
        let report = ImportedTrust::import(&state, &chain, Some("app.test")).unwrap();
        assert_eq!(report.entries.len(), 1);
        assert_eq!(report.ignored, 1);
        assert_eq!(report.entries[0].entry.sha256, hex::encode(sha(&forged.chain[0])));
        fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn importing_again_is_idempotent_and_another_host_adds_a_pin() {
        let state = temp_state_dir("idem");
        let leaf = self_signed("printer.test", Some(false));
        let file = pem_file(&state.join("in"), "printer.pem", &[&leaf]);
        let first = ImportedTrust::import(&state, &file, Some("printer.test")).unwrap();
        let again = ImportedTrust::import(&state, &file, Some("PRINTER.test")).unwrap();
        assert!(first.entries[0].added);
        assert!(!again.entries[0].added);
        assert_eq!(again.entries[0].entry, first.entries[0].entry, "imported_at kept");
        assert_eq!(ImportedTrust::load(&state).unwrap().len(), 1);

        let second = ImportedTrust::import(&state, &file, Some("printer2.test")).unwrap();
        assert!(second.entries[0].added);
        let imported = ImportedTrust::load(&state).unwrap();
        assert_eq!(imported.len(), 2);
        let pinned = imported.pinned();
        assert_eq!(pinned.len(), 2);
        assert_eq!(pinned.allows("printer.test", &sha(&leaf)), Some("printer.test"));
        assert_eq!(pinned.allows("printer2.test", &sha(&leaf)), Some("printer2.test"));
        assert_eq!(pinned.allows("printer3.test", &sha(&leaf)), None);
        let pems = fs::read_dir(state.join("trust"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "pem"))
            .count();
        assert_eq!(pems, 1, "one PEM per certificate");
        fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn remove_by_prefix_and_host() {
        let state = temp_state_dir("remove");
        let leaf = self_signed("box.test", Some(false));
        let file = pem_file(&state.join("in"), "box.pem", &[&leaf]);
        ImportedTrust::import(&state, &file, Some("box.test")).unwrap();
        ImportedTrust::import(&state, &file, Some("box2.test")).unwrap();
        let full = hex::encode(sha(&leaf));
        let pem = state.join("trust").join(format!("{full}.pem"));

        // One host's pin, by a browser-style prefix in upper case with colons.
        let browser_prefix = full[..8].to_ascii_uppercase();
        let browser_prefix = format!(
            "{}:{}:{}:{}",
            &browser_prefix[..2],
            &browser_prefix[2..4],
            &browser_prefix[4..6],
            &browser_prefix[6..8]
        );
        let removed = ImportedTrust::remove(&state, &browser_prefix, Some("box2.test")).unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].host.as_deref(), Some("box2.test"));
        assert!(pem.is_file(), "still pinned for box.test");
        let pinned = ImportedTrust::load(&state).unwrap().pinned();
        assert_eq!(pinned.allows("box2.test", &sha(&leaf)), None);
        assert_eq!(pinned.allows("box.test", &sha(&leaf)), Some("box.test"));

        let err = ImportedTrust::remove(&state, &full, Some("box2.test")).unwrap_err();
        assert!(matches!(err, TrustError::NotImported { .. }), "{err}");
        let removed = ImportedTrust::remove(&state, &full, None).unwrap();
        assert_eq!(removed.len(), 1);
        assert!(!pem.exists());
        assert!(ImportedTrust::load(&state).unwrap().is_empty());

        let err = ImportedTrust::remove(&state, &full, None).unwrap_err();
        assert!(matches!(err, TrustError::NotImported { .. }), "{err}");
        let err = ImportedTrust::remove(&state, "xyz", None).unwrap_err();
        assert!(matches!(err, TrustError::BadFingerprint { .. }), "{err}");
        let err = ImportedTrust::remove(&state, "", None).unwrap_err();
        assert!(matches!(err, TrustError::BadFingerprint { .. }), "{err}");
        fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn remove_needs_an_unambiguous_prefix_and_works_without_the_pem() {
        let state = temp_state_dir("ambiguous");
        let dir = state.join("trust");
        fs::create_dir_all(&dir).unwrap();
        let entry = |sha256: String| ImportedEntry {
            sha256,
            kind: TrustKind::Ca,
            host: None,
            subject: "CN=x".to_string(),
            issuer: "CN=x".to_string(),
            not_after: "2030-01-01T00:00:00Z".to_string(),
            imported_at: "2025-01-01T00:00:00.000Z".to_string(),
        };
        write_index(&dir, vec![entry("ab".repeat(32)), entry("ac".repeat(32))]).unwrap();
        let err = ImportedTrust::remove(&state, "a", None).unwrap_err();
        assert!(matches!(err, TrustError::Ambiguous { .. }), "{err}");
        assert!(err.to_string().contains("give more digits"), "{err}");
        // The PEM files are missing: load says which, remove still works.
        let err = ImportedTrust::load(&state).unwrap_err();
        assert!(matches!(err, TrustError::BadStoredCertificate { .. }), "{err}");
        assert!(err.to_string().contains(&format!("{}.pem", "ab".repeat(32))), "{err}");
        assert!(err.to_string().contains("missing"), "{err}");
        ImportedTrust::remove(&state, "ab", None).unwrap();
        ImportedTrust::remove(&state, "ac", None).unwrap();
        assert!(ImportedTrust::load(&state).unwrap().is_empty());
        fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn corrupt_index_and_tampered_pem_are_errors_naming_the_file() {
        let state = temp_state_dir("corrupt");
        let leaf = self_signed("x.test", Some(false));
        let file = pem_file(&state.join("in"), "x.pem", &[&leaf]);
        ImportedTrust::import(&state, &file, Some("x.test")).unwrap();
        let dir = state.join("trust");
        let index = dir.join(INDEX_FILE);
        let pem = dir.join(format!("{}.pem", hex::encode(sha(&leaf))));

        // Another certificate under this one's name.
        let good_pem = fs::read(&pem).unwrap();
        fs::write(&pem, self_signed("y.test", None).to_pem().unwrap()).unwrap();
        let err = ImportedTrust::load(&state).unwrap_err();
        assert!(err.to_string().contains(&pem.display().to_string()), "{err}");
        assert!(err.to_string().contains("a different certificate"), "{err}");
        // Importing again repairs it.
        ImportedTrust::import(&state, &file, Some("x.test")).unwrap();
        assert_eq!(fs::read(&pem).unwrap(), good_pem);
        ImportedTrust::load(&state).unwrap();

        let good_index = fs::read(&index).unwrap();
        for (bad, expect) in [
            (&b"{ not json"[..], "line 1"),
            (b"{\"version\": 9, \"entries\": []}", "version 9"),
            (b"[]", "expected a JSON object"),
            (b"", "expected a JSON object"),
        ] {
            fs::write(&index, bad).unwrap();
            let err = ImportedTrust::load(&state).unwrap_err();
            assert!(matches!(err, TrustError::CorruptIndex { .. }), "{err}");
            assert!(err.to_string().contains(&index.display().to_string()), "{err}");
            assert!(err.to_string().contains(expect), "{expect}: {err}");
            // Imports refuse to overwrite what they cannot read.
            assert!(ImportedTrust::import(&state, &file, Some("x.test")).is_err());
        }
        let text = String::from_utf8(good_index.clone()).unwrap();
        for (from, to, expect) in [
            ("\"x.test\"", "null", "needs a host"),
            ("\"x.test\"", "\"X.test\"", "normal form"),
            ("\"pinned\"", "\"anchor\"", "unknown variant"),
        ] {
            fs::write(&index, text.replacen(from, to, 1)).unwrap();
            let err = ImportedTrust::load(&state).unwrap_err();
            assert!(err.to_string().contains(expect), "{expect}: {err}");
        }
        fs::write(&index, &good_index).unwrap();
        ImportedTrust::load(&state).unwrap();
        fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn concurrent_imports_keep_every_entry() {
        let state = temp_state_dir("concurrent");
        let files: Vec<PathBuf> = (0..8)
            .map(|i| {
                pem_file(
                    &state.join("in"),
                    &format!("{i}.pem"),
                    &[&self_signed("c.test", Some(false))],
                )
            })
            .collect();
        std::thread::scope(|scope| {
            for (i, file) in files.iter().enumerate() {
                let state = &state;
                scope.spawn(move || {
                    ImportedTrust::import(state, file, Some(&format!("host{i}.test"))).unwrap();
                });
            }
        });
        let imported = ImportedTrust::load(&state).unwrap();
        assert_eq!(imported.len(), 8);
        assert_eq!(imported.pinned().len(), 8);
        fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn hosts_are_validated_and_normalised() {
        for (given, stored) in [
            ("Example.COM", "example.com"),
            ("example.com.", "example.com"),
            ("_svc.internal-host.lan", "_svc.internal-host.lan"),
            ("localhost", "localhost"),
            ("198.18.0.2", "198.18.0.2"),
            ("[::1]", "::1"),
            ("::ffff:198.18.0.2", "198.18.0.2"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ] {
            assert_eq!(normalize_host(given).unwrap(), stored, "{given}");
        }
        for (given, why) in [
            ("", "empty"),
            ("*.example.com", "wildcards"),
            ("a..b", "empty label"),
            ("-a.example", "hyphen"),
            ("exa mple.com", "letters, digits"),
            ("bücher.example", "xn--"),
            ("1.2.3", "neither an IP address"),
            ("256.1.1.1", "neither an IP address"),
        ] {
            let err = normalize_host(given).unwrap_err();
            assert!(matches!(err, TrustError::BadHost { .. }), "{given}: {err}");
            assert!(err.to_string().contains(why), "{given}: {err}");
        }
        let long_label = "a".repeat(64);
        assert!(normalize_host(&long_label).is_err());
        // Refused before anything is read or written.
        let state = temp_state_dir("badhost");
        let err = ImportedTrust::import(&state, Path::new("/nonexistent.pem"), Some("*.x.test")).unwrap_err();
        assert!(matches!(err, TrustError::BadHost { .. }), "{err}");
        assert!(!state.exists());
    }

    #[test]
    fn pinned_leafs_are_shareable() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        shareable::<PinnedLeafs>();
        assert!(PinnedLeafs::default().allows("x", &[0; 32]).is_none());
    }
}
