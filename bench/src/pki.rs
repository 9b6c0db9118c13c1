//! A throwaway PKI for the TLS tests: root and intermediate CAs, server certificates with
//! any names and any validity (an expired one needs a notAfter in the past, which the
//! `openssl` CLI of Debian 12 cannot set without a CA database), self-signed leaves. Built
//! with BoringSSL and written as PEM files that nginx, `openssl s_server`, curl and
//! `loupe --trust-ca` read.
//!
//! ```no_run
//! use loupe_bench::pki::{KeyType, LeafSpec, Pki};
//! let pki = Pki::new("/tmp/pki").unwrap();
//! let ca = pki.root_ca("origin-ca", "lab origin CA").unwrap();
//! let leaf = pki.leaf("server", Some(&ca), &LeafSpec::new(&["server.lab", "198.18.0.2"])).unwrap();
//! println!("{} {}", leaf.cert_file.display(), leaf.key_file.display());
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use boring::asn1::Asn1Time;
use boring::bn::BigNum;
use boring::ec::{EcGroup, EcKey};
use boring::hash::MessageDigest;
use boring::nid::Nid;
use boring::pkey::{PKey, Private};
use boring::rsa::Rsa;
use boring::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName, SubjectKeyIdentifier,
};
use boring::x509::{X509Name, X509};
use rand::RngCore;

const DAY: i64 = 86_400;

/// The key a certificate certifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    EcdsaP256,
    /// RSA 2048: needed by servers that only speak `ECDHE-RSA-…` or TLS 1.0 RSA suites.
    Rsa2048,
}

/// A server certificate to issue.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    /// Subject alternative names: IP literals become iPAddress entries, the rest dNSName.
    /// The first one is also the subject's commonName.
    pub names: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub key: KeyType,
}

impl LeafSpec {
    /// Valid from a day ago for 90 days, ECDSA P-256.
    pub fn new(names: &[&str]) -> LeafSpec {
        let now = unix_now();
        LeafSpec {
            names: names.iter().map(|n| n.to_string()).collect(),
            not_before: now - DAY,
            not_after: now + 90 * DAY,
            key: KeyType::EcdsaP256,
        }
    }

    /// Expired yesterday (valid for the 30 days before).
    pub fn expired(mut self) -> LeafSpec {
        let now = unix_now();
        self.not_before = now - 31 * DAY;
        self.not_after = now - DAY;
        self
    }

    /// Valid from a day ago for `days` days (3650: the ten-year leaf of an internal server).
    pub fn valid_for_days(mut self, days: i64) -> LeafSpec {
        self.not_before = unix_now() - DAY;
        self.not_after = self.not_before + days * DAY;
        self
    }

    pub fn rsa(mut self) -> LeafSpec {
        self.key = KeyType::Rsa2048;
        self
    }
}

/// A certificate with its key, and the PEM files they were written to.
pub struct Issued {
    pub cert: X509,
    pub key: PKey<Private>,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl Issued {
    /// Lowercase hex SHA-256 of the certificate's DER.
    pub fn sha256_hex(&self) -> String {
        let digest = self
            .cert
            .digest(MessageDigest::sha256())
            .expect("SHA-256 of a certificate");
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The subject's commonName.
    pub fn common_name(&self) -> String {
        common_name(&self.cert)
    }
}

/// Issues certificates into one directory: `<name>.crt` and `<name>.key` per certificate.
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    pub fn new(dir: impl Into<PathBuf>) -> Result<Pki> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Pki { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A self-signed root CA, valid from a day ago for ten years.
    pub fn root_ca(&self, name: &str, common_name: &str) -> Result<Issued> {
        let key = new_key(KeyType::EcdsaP256)?;
        let now = unix_now();
        let cert = build_ca(common_name, &key, None, now - DAY, now + 3650 * DAY, None)
            .with_context(|| format!("building root CA {common_name}"))?;
        self.write(name, cert, key)
    }

    /// A CA certificate signed by `issuer`, allowed to sign leaves only (pathlen 0).
    pub fn intermediate_ca(&self, name: &str, issuer: &Issued, common_name: &str) -> Result<Issued> {
        let key = new_key(KeyType::EcdsaP256)?;
        let now = unix_now();
        let cert = build_ca(common_name, &key, Some(issuer), now - DAY, now + 1825 * DAY, Some(0))
            .with_context(|| format!("building intermediate CA {common_name}"))?;
        self.write(name, cert, key)
    }

    /// A server certificate signed by `issuer`, or self-signed with `None`.
    pub fn leaf(&self, name: &str, issuer: Option<&Issued>, spec: &LeafSpec) -> Result<Issued> {
        let key = new_key(spec.key)?;
        let cert = build_leaf(spec, &key, issuer).with_context(|| format!("building leaf {name} {:?}", spec.names))?;
        self.write(name, cert, key)
    }

    /// Writes several certificates into one PEM file, in order (e.g. leaf then
    /// intermediate for a full-chain file); returns its path.
    pub fn bundle(&self, name: &str, certs: &[&Issued]) -> Result<PathBuf> {
        let mut pem = Vec::new();
        for c in certs {
            pem.extend(c.cert.to_pem()?);
        }
        let path = self.dir.join(format!("{name}.crt"));
        std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    fn write(&self, name: &str, cert: X509, key: PKey<Private>) -> Result<Issued> {
        let cert_file = self.dir.join(format!("{name}.crt"));
        let key_file = self.dir.join(format!("{name}.key"));
        std::fs::write(&cert_file, cert.to_pem()?).with_context(|| format!("writing {}", cert_file.display()))?;
        // Keys are 0600, as loupe demands of a CA key it loads.
        let pem = key.private_key_to_pem_pkcs8()?;
        let write_key = || -> std::io::Result<()> {
            use std::io::Write as _;
            use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&key_file)?;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            f.write_all(&pem)
        };
        write_key().with_context(|| format!("writing {}", key_file.display()))?;
        Ok(Issued {
            cert,
            key,
            cert_file,
            key_file,
        })
    }
}

/// The first commonName of a certificate's subject ("" when it has none).
pub fn common_name(cert: &X509) -> String {
    cert.subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().as_utf8().ok().map(|s| s.to_string()))
        .unwrap_or_default()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn new_key(kind: KeyType) -> Result<PKey<Private>> {
    Ok(match kind {
        KeyType::EcdsaP256 => {
            let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
            PKey::from_ec_key(EcKey::generate(&group)?)?
        }
        KeyType::Rsa2048 => PKey::from_rsa(Rsa::generate(2048)?)?,
    })
}

/// 16 random bytes with the top bit clear: a positive serial as RFC 5280 wants.
fn random_serial() -> Result<BigNum> {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(BigNum::from_slice(&bytes)?)
}

fn name(common_name: &str) -> Result<X509Name> {
    let mut n = X509Name::builder()?;
    n.append_entry_by_nid(Nid::COMMONNAME, common_name)?;
    n.append_entry_by_nid(Nid::ORGANIZATIONNAME, "loupe lab")?;
    Ok(n.build())
}

fn build_ca(
    common_name: &str,
    key: &PKey<Private>,
    issuer: Option<&Issued>,
    not_before: i64,
    not_after: i64,
    pathlen: Option<u32>,
) -> Result<X509> {
    let subject = name(common_name)?;
    let mut b = X509::builder()?;
    b.set_version(2)?;
    b.set_serial_number(&*random_serial()?.to_asn1_integer()?)?;
    b.set_subject_name(&subject)?;
    b.set_issuer_name(issuer.map_or(&*subject, |i| i.cert.subject_name()))?;
    b.set_pubkey(key)?;
    b.set_not_before(&*Asn1Time::from_unix(not_before)?)?;
    b.set_not_after(&*Asn1Time::from_unix(not_after)?)?;
    let mut bc = BasicConstraints::new();
    bc.critical().ca();
    if let Some(p) = pathlen {
        bc.pathlen(p);
    }
    b.append_extension(&*bc.build()?)?;
    b.append_extension(&*KeyUsage::new().critical().key_cert_sign().crl_sign().build()?)?;
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(issuer.map(|i| &*i.cert), None))?;
    b.append_extension(&ski)?;
    if let Some(issuer) = issuer {
        let aki = AuthorityKeyIdentifier::new()
            .keyid(true)
            .build(&b.x509v3_context(Some(&issuer.cert), None))?;
        b.append_extension(&aki)?;
    }
    b.sign(issuer.map_or(key, |i| &i.key), MessageDigest::sha256())?;
    Ok(b.build())
}

fn build_leaf(spec: &LeafSpec, key: &PKey<Private>, issuer: Option<&Issued>) -> Result<X509> {
    let first = spec.names.first().context("a leaf needs at least one name")?;
    let subject = name(first)?;
    let mut b = X509::builder()?;
    b.set_version(2)?;
    b.set_serial_number(&*random_serial()?.to_asn1_integer()?)?;
    b.set_subject_name(&subject)?;
    b.set_issuer_name(issuer.map_or(&*subject, |i| i.cert.subject_name()))?;
    b.set_pubkey(key)?;
    b.set_not_before(&*Asn1Time::from_unix(spec.not_before)?)?;
    b.set_not_after(&*Asn1Time::from_unix(spec.not_after)?)?;
    b.append_extension(&*BasicConstraints::new().critical().build()?)?;
    let mut ku = KeyUsage::new();
    ku.critical().digital_signature();
    if spec.key == KeyType::Rsa2048 {
        // RSA key transport suites (TLS 1.0 servers) encrypt the premaster with this key.
        ku.key_encipherment();
    }
    if issuer.is_none() {
        // A self-signed certificate signs itself: without keyCertSign, OpenSSL and
        // BoringSSL do not see it as its own issuer and report code 20, not 18.
        ku.key_cert_sign();
    }
    b.append_extension(&*ku.build()?)?;
    b.append_extension(&*ExtendedKeyUsage::new().server_auth().build()?)?;
    let mut san = SubjectAlternativeName::new();
    for n in &spec.names {
        if n.parse::<IpAddr>().is_ok() {
            san.ip(n);
        } else {
            san.dns(n);
        }
    }
    let ctx_issuer = issuer.map(|i| &*i.cert);
    let san = san.build(&b.x509v3_context(ctx_issuer, None))?;
    b.append_extension(&san)?;
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(ctx_issuer, None))?;
    b.append_extension(&ski)?;
    if let Some(issuer) = issuer {
        let aki = AuthorityKeyIdentifier::new()
            .keyid(true)
            .build(&b.x509v3_context(Some(&issuer.cert), None))?;
        b.append_extension(&aki)?;
    }
    b.sign(issuer.map_or(key, |i| &i.key), MessageDigest::sha256())?;
    Ok(b.build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use boring::stack::Stack;
    use boring::x509::store::X509StoreBuilder;
    use boring::x509::X509StoreContext;

    /// Verifies `leaf` (with `untrusted` intermediates) against `roots`; the OpenSSL code.
    fn verify(leaf: &X509, untrusted: &[&X509], roots: &[&X509]) -> i32 {
        let mut store = X509StoreBuilder::new().unwrap();
        for r in roots {
            store.add_cert((*r).clone()).unwrap();
        }
        let store = store.build();
        let mut chain = Stack::new().unwrap();
        for c in untrusted {
            chain.push((*c).clone()).unwrap();
        }
        let mut ctx = X509StoreContext::new().unwrap();
        ctx.init(&store, leaf, &chain, |c| {
            c.verify_cert()?;
            Ok(c.verify_result().err().map_or(0, |e| e.as_raw()))
        })
        .unwrap()
    }

    #[test]
    fn issues_what_the_tls_tests_need() {
        let dir = std::env::temp_dir().join(format!("loupe-pki-test-{}", std::process::id()));
        let pki = Pki::new(&dir).unwrap();
        let ca = pki.root_ca("ca", "test origin CA").unwrap();
        let good = pki
            .leaf("good", Some(&ca), &LeafSpec::new(&["a.lab", "198.18.0.2"]))
            .unwrap();
        assert_eq!(verify(&good.cert, &[], &[&ca.cert]), 0);
        let sans = good.cert.subject_alt_names().unwrap();
        assert_eq!(sans.iter().filter_map(|g| g.dnsname()).collect::<Vec<_>>(), ["a.lab"]);
        assert_eq!(
            sans.iter().filter_map(|g| g.ipaddress()).collect::<Vec<_>>(),
            [&[198, 18, 0, 2][..]]
        );

        let expired = pki
            .leaf("old", Some(&ca), &LeafSpec::new(&["a.lab"]).expired())
            .unwrap();
        assert_eq!(
            verify(&expired.cert, &[], &[&ca.cert]),
            10,
            "X509_V_ERR_CERT_HAS_EXPIRED"
        );

        let selfsigned = pki.leaf("self", None, &LeafSpec::new(&["a.lab"])).unwrap();
        assert_eq!(verify(&selfsigned.cert, &[], &[&ca.cert]), 18);

        let inter = pki.intermediate_ca("inter", &ca, "test intermediate").unwrap();
        let chained = pki
            .leaf("chained", Some(&inter), &LeafSpec::new(&["a.lab"]).rsa())
            .unwrap();
        assert_eq!(verify(&chained.cert, &[&inter.cert], &[&ca.cert]), 0);
        assert_eq!(verify(&chained.cert, &[], &[&ca.cert]), 20, "without the intermediate");
        assert_eq!(chained.common_name(), "a.lab");
        assert_eq!(chained.sha256_hex().len(), 64);
        let _ = std::fs::remove_dir_all(dir);
    }
}
