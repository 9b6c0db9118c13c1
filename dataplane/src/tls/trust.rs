//! The trust store: the CA certificates the upstream TLS client validates servers against.
//! System roots (Debian's `ca-certificates` bundle) plus extra CA files given with
//! `--trust-ca FILE` or in the configuration. Each file may be a PEM bundle of many
//! certificates or a single DER certificate (what a browser's "export certificate" saves).
//!
//! Loading errors name the file and what is wrong with it, down to which certificate in a
//! bundle fails to parse and on which line its PEM block starts.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};

use boring::error::ErrorStack;
use boring::hash::MessageDigest;
use boring::x509::store::{X509Store, X509StoreBuilder};
use boring::x509::{X509Ref, X509};

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
    #[error("certificate file {path}: certificate #{index} (PEM block starting at line {line}) does not parse: {reason}")]
    BadCertificate {
        path: PathBuf,
        index: usize,
        line: usize,
        reason: String,
    },
    #[error("building the certificate store for upstream validation failed: {0}")]
    Store(ErrorStack),
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
}
