//! The hello loupe sends upstream, derived per connection from the client's hello: never
//! weaker than what the client offered, and dropping nothing the client offered that the
//! profile allows (the measure Durumeric et al., NDSS 2017, grade interception boxes by).
//!
//! Sans-IO: [`ProfileOffer`] is what a profile allows, as protocol ids; [`ProfileOffer::for_client`]
//! narrows it by one [`ClientHello`] into an [`UpstreamOffer`]; only [`UpstreamOffer::apply`]
//! touches BoringSSL. Per dimension:
//!
//! - versions: from the lowest version the client offered (never below), up to the
//!   profile's highest (a newer version than the client's is stronger, so allowed);
//! - TLS 1.2 suites, TLS 1.3 suites, signature algorithms: the profile's, in its order,
//!   restricted to the ones the client offered;
//! - groups: the profile's restricted to the client's, plus the profile's post-quantum
//!   hybrids even when the client lacks them (strictly stronger);
//! - key shares: the client's (within the groups above), plus a post-quantum share when
//!   the client sent none, so a classical client still gets a post-quantum server leg. A
//!   client that sent only a post-quantum share gets exactly that upstream: a server
//!   without it answers with one HelloRetryRequest.

use std::ffi::CString;

use boring::ssl::{SslContext, SslRef, SslSignatureAlgorithm, SslVersion};
use foreign_types::ForeignTypeRef;

use super::client_hello::ClientHello;
use super::names;

const TLS1_0: u16 = 0x0301;
const TLS1_2: u16 = 0x0303;
const TLS1_3: u16 = 0x0304;

/// The TLS 1.3 suites BoringSSL implements, in its default order.
pub const TLS13_SUITES: [u16; 3] = [0x1301, 0x1302, 0x1303];

/// Groups BoringSSL implements: (id, the names `set_curves_list` accepts).
const GROUPS: [(u16, &str, &str); 6] = [
    (0x0017, "P-256", "prime256v1"),
    (0x0018, "P-384", "secp384r1"),
    (0x0019, "P-521", "secp521r1"),
    (0x001d, "X25519", "x25519"),
    (0x11ec, "X25519MLKEM768", "X25519MLKEM768"),
    (0x0202, "MLKEM1024", "MLKEM1024"),
];

/// Post-quantum (hybrid or pure ML-KEM) key exchange groups.
pub fn is_post_quantum(group: u16) -> bool {
    matches!(group, 0x11eb..=0x11ed | 0x0200..=0x0202 | 0x6399)
}

/// The id of a group name as BoringSSL's `set_curves_list` spells it.
pub fn group_id(name: &str) -> Option<u16> {
    GROUPS
        .iter()
        .find(|(_, short, long)| *short == name || *long == name)
        .map(|(id, _, _)| *id)
}

/// The id of one element of an OpenSSL-syntax signature algorithm list, as BoringSSL
/// parses it: `KEY+HASH` (`RSA`, `RSA-PSS`/`PSS`, `ECDSA`; `SHA1` … `SHA512`) or a TLS 1.3
/// name (`rsa_pss_rsae_sha256`).
pub fn signature_algorithm_id(element: &str) -> Option<u16> {
    if let Some((key, hash)) = element.split_once('+') {
        let hash_index = ["SHA1", "SHA256", "SHA384", "SHA512"].iter().position(|h| *h == hash)?;
        let ids: [u16; 4] = match key {
            "RSA" => [0x0201, 0x0401, 0x0501, 0x0601],
            "RSA-PSS" | "PSS" => [0, 0x0804, 0x0805, 0x0806],
            "ECDSA" => [0x0203, 0x0403, 0x0503, 0x0603],
            _ => return None,
        };
        return Some(ids[hash_index]).filter(|id| *id != 0);
    }
    (0..=u16::MAX).find(|id| names::signature_scheme_name(*id) == Some(element))
}

/// What a profile allows on the upstream leg, as protocol ids in the profile's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileOffer {
    pub min_version: u16,
    pub max_version: u16,
    /// TLS 1.2-and-older suites: (IANA id, BoringSSL name).
    pub tls12_suites: Vec<(u16, String)>,
    pub tls13_suites: Vec<u16>,
    pub groups: Vec<u16>,
    pub signature_algorithms: Vec<u16>,
    /// The profile's `legacy_servers`: versions, TLS 1.2 suites, groups and signature
    /// algorithms are offered whole, even below the client's (the operator's explicit
    /// choice, for servers that speak only legacy TLS).
    pub legacy_servers: bool,
}

/// The upstream hello for one client: a narrowing of [`ProfileOffer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamOffer {
    pub min_version: u16,
    pub max_version: u16,
    pub tls12_suites: Vec<(u16, String)>,
    pub tls13_suites: Vec<u16>,
    pub groups: Vec<u16>,
    /// `None`: BoringSSL's choice (the first post-quantum and the first classical group).
    pub key_shares: Option<Vec<u16>>,
    pub signature_algorithms: Vec<u16>,
}

/// The client and the profile have nothing in common in one dimension: the client leg
/// could not be negotiated either, so the session ends before anything is sent upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the client offers {what} the profile allows")]
pub struct OfferShortfall {
    /// e.g. "no signature algorithm".
    pub what: &'static str,
}

impl ProfileOffer {
    /// Reads the suites of `upstream` (the profile's context, SHA-1 already struck out
    /// there) and takes the rest from the profile's settings.
    pub fn new(
        min_version: u16,
        max_version: u16,
        upstream: &SslContext,
        groups: &str,
        signature_algorithms: &[u16],
        legacy_servers: bool,
    ) -> Result<ProfileOffer, String> {
        let tls12_suites = upstream
            .ciphers()
            .map(|stack| {
                stack
                    .iter()
                    .map(|cipher| (cipher.protocol_id(), cipher.name().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let groups = groups
            .split(':')
            .map(|name| group_id(name).ok_or_else(|| format!("groups: {name:?} is not a group BoringSSL implements")))
            .collect::<Result<Vec<u16>, String>>()?;
        Ok(ProfileOffer {
            min_version,
            max_version,
            tls12_suites,
            tls13_suites: TLS13_SUITES.to_vec(),
            groups,
            signature_algorithms: signature_algorithms.to_vec(),
            legacy_servers,
        })
    }

    /// The upstream hello for `hello`'s client.
    pub fn for_client(&self, hello: &ClientHello) -> Result<UpstreamOffer, OfferShortfall> {
        let shortfall = |what| OfferShortfall { what };
        let client_lowest = hello
            .supported_versions
            .iter()
            .copied()
            .filter(|v| v >> 8 == 3)
            .min()
            // Without supported_versions a client accepts any version up to legacy_version.
            .unwrap_or(TLS1_0);
        let mut min_version = self.min_version.max(client_lowest);
        let mut max_version = self.max_version;

        let tls12_suites: Vec<(u16, String)> = self
            .tls12_suites
            .iter()
            .filter(|(id, _)| hello.cipher_suites.contains(id))
            .cloned()
            .collect();
        let tls13_suites: Vec<u16> = if hello.offers_tls13() {
            self.tls13_suites
                .iter()
                .copied()
                .filter(|id| hello.cipher_suites.contains(id))
                .collect()
        } else {
            // The client cannot do TLS 1.3 at all: all of it is stronger than its offer.
            self.tls13_suites.clone()
        };
        // The client leg needs one version both sides can use with a suite both know.
        let client_versions = |v: u16| {
            hello.supported_versions.contains(&v) || (hello.supported_versions.is_empty() && v <= hello.legacy_version)
        };
        let profile_versions = self.min_version..=self.max_version;
        let client_can_tls13 =
            client_versions(TLS1_3) && profile_versions.contains(&TLS1_3) && !tls13_suites.is_empty();
        let client_can_tls12 =
            !tls12_suites.is_empty() && (TLS1_0..=TLS1_2).any(|v| client_versions(v) && profile_versions.contains(&v));
        if !client_can_tls12 && !client_can_tls13 {
            return Err(shortfall("no TLS version with a cipher suite"));
        }
        if self.legacy_servers {
            // The operator's explicit choice: the whole profile, whatever the client offered.
            return Ok(UpstreamOffer {
                min_version: self.min_version,
                max_version: self.max_version,
                tls12_suites: self.tls12_suites.clone(),
                tls13_suites: self.tls13_suites.clone(),
                key_shares: key_shares_for(&self.groups, hello),
                groups: self.groups.clone(),
                signature_algorithms: self.signature_algorithms.clone(),
            });
        }
        if tls12_suites.is_empty() {
            min_version = min_version.max(TLS1_3);
        }
        if tls13_suites.is_empty() {
            max_version = max_version.min(TLS1_2);
        }

        let groups: Vec<u16> = if hello.groups.is_empty() {
            // No supported_groups: the client takes any group (RFC 8422 §4).
            self.groups.clone()
        } else {
            let common: Vec<u16> = self
                .groups
                .iter()
                .copied()
                .filter(|g| hello.groups.contains(g) || is_post_quantum(*g))
                .collect();
            // Only added post-quantum groups, or nothing: the client speaks no group of
            // ours; ECDHE is then still stronger than what the client could get.
            if common.iter().all(|g| !hello.groups.contains(g)) {
                self.groups.clone()
            } else {
                common
            }
        };
        let key_shares = key_shares_for(&groups, hello);

        let signature_algorithms: Vec<u16> = if hello.signature_algorithms.is_empty() {
            // Clients before TLS 1.2 send none; the profile's list is what TLS 1.2 allows.
            self.signature_algorithms.clone()
        } else {
            self.signature_algorithms
                .iter()
                .copied()
                .filter(|s| hello.signature_algorithms.contains(s))
                .collect()
        };
        if signature_algorithms.is_empty() {
            return Err(shortfall("no signature algorithm"));
        }
        Ok(UpstreamOffer {
            min_version,
            max_version,
            tls12_suites,
            tls13_suites,
            groups,
            key_shares,
            signature_algorithms,
        })
    }
}

/// The client's key shares within `groups`, plus the first post-quantum group of `groups`
/// when the client sent no post-quantum share; `None` (BoringSSL's choice) when the client
/// sent no usable share.
fn key_shares_for(groups: &[u16], hello: &ClientHello) -> Option<Vec<u16>> {
    if hello.key_share_groups.is_empty() {
        return None;
    }
    let client_pq_share = hello.key_share_groups.iter().any(|g| is_post_quantum(*g));
    let first_pq = groups.iter().copied().find(|g| is_post_quantum(*g));
    // In the order of `groups`: BoringSSL wants a subsequence of it.
    let shares: Vec<u16> = groups
        .iter()
        .copied()
        .filter(|g| hello.key_share_groups.contains(g) || (!client_pq_share && Some(*g) == first_pq))
        .collect();
    (!shares.is_empty()).then_some(shares)
}

impl UpstreamOffer {
    /// Whether the hello carries a post-quantum key share: by far the costliest part of
    /// making a hello (an ML-KEM key pair), wasted when the server picks another group.
    pub fn sends_post_quantum_share(&self) -> bool {
        match &self.key_shares {
            Some(shares) => shares.iter().any(|g| is_post_quantum(*g)),
            None => self.groups.iter().any(|g| is_post_quantum(*g)),
        }
    }

    /// Sends only `group`'s key share, `group` being the classical group this server chose
    /// the last time it was sent a post-quantum share, when the hello would carry one and
    /// offers `group`. The groups offered stay as they are: a server that has since come
    /// to prefer a post-quantum group asks for its share (HelloRetryRequest, one more
    /// round trip) and gets it. Returns whether the shares changed.
    pub fn predict_key_share(&mut self, group: u16) -> bool {
        if is_post_quantum(group) || !self.groups.contains(&group) || !self.sends_post_quantum_share() {
            return false;
        }
        self.key_shares = Some(vec![group]);
        true
    }

    /// Configures one upstream connection (before its handshake) to send this hello.
    pub fn apply(&self, ssl: &mut SslRef) -> Result<(), String> {
        let version = |v: u16| SslVersion::try_from(v).map_err(|_| format!("TLS version {v:#06x}"));
        ssl.set_min_proto_version(Some(version(self.min_version)?))
            .map_err(|e| format!("setting the minimum TLS version: {e}"))?;
        ssl.set_max_proto_version(Some(version(self.max_version)?))
            .map_err(|e| format!("setting the maximum TLS version: {e}"))?;
        if !self.tls12_suites.is_empty() {
            let names: Vec<&str> = self.tls12_suites.iter().map(|(_, name)| name.as_str()).collect();
            let list = CString::new(names.join(":")).map_err(|_| "a suite name holds a NUL".to_string())?;
            // SAFETY: `ssl` is a live SSL; the list is a NUL-terminated string BoringSSL copies.
            let ok = unsafe { boring_sys::SSL_set_strict_cipher_list(ssl.as_ptr(), list.as_ptr()) };
            if ok != 1 {
                return Err(format!("setting the suites {names:?}"));
            }
        }
        if !self.tls13_suites.is_empty() {
            // SAFETY: as above; BoringSSL copies the ids.
            let ok = unsafe {
                boring_sys::SSL_set1_tls13_ciphers(
                    ssl.as_ptr(),
                    self.tls13_suites.as_ptr(),
                    std::ptr::null(),
                    self.tls13_suites.len(),
                )
            };
            if ok != 1 {
                return Err(format!("setting the TLS 1.3 suites {:04x?}", self.tls13_suites));
            }
        }
        // Never empty (an empty list means BoringSSL's defaults): `for_client` keeps one.
        // SAFETY: as above.
        let ok = unsafe { boring_sys::SSL_set1_group_ids(ssl.as_ptr(), self.groups.as_ptr(), self.groups.len()) };
        if ok != 1 || self.groups.is_empty() {
            return Err(format!("setting the groups {:04x?}", self.groups));
        }
        if let Some(shares) = &self.key_shares {
            // SAFETY: as above; the shares are a subsequence of the groups just set.
            let ok = unsafe { boring_sys::SSL_set1_client_key_shares(ssl.as_ptr(), shares.as_ptr(), shares.len()) };
            if ok != 1 {
                return Err(format!("setting the key shares {shares:04x?}"));
            }
        }
        let prefs: Vec<SslSignatureAlgorithm> = self
            .signature_algorithms
            .iter()
            .map(|id| SslSignatureAlgorithm::from(*id))
            .collect();
        ssl.set_verify_algorithm_prefs(&prefs)
            .map_err(|e| format!("setting the signature algorithms: {e}"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
