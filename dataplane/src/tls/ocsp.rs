//! Stapled OCSP responses (RFC 6960): what the upstream server's CA says about its leaf.
//!
//! [`check_staple`] judges the DER `OCSPResponse` a server stapled against the leaf and the
//! issuer the verifier built, at a time the caller gives (nothing here reads a clock or does
//! I/O). BoringSSL has no OCSP parser, so the structures come from RustCrypto's `x509-ocsp`;
//! hashes and signatures are BoringSSL's.
//!
//! A response counts only when all of this holds:
//! - `responseStatus` is successful and the body is a basic OCSP response;
//! - it is signed by the leaf's issuer, or by a responder certificate included in the
//!   response that the issuer signed and gave extendedKeyUsage OCSPSigning (RFC 6960
//!   4.2.2.2), valid now; `responderID` names that signer, and the signature over the exact
//!   bytes of `tbsResponseData` verifies;
//! - one `SingleResponse` has the leaf's CertID (serial, issuer name hash, issuer key hash);
//! - `thisUpdate` is not in the future and `nextUpdate` not in the past, both give or take
//!   [`CLOCK_SKEW_SECS`]. A response without `nextUpdate` ("newer information is always
//!   available", RFC 6960 4.2.2.1) is taken as current for [`NO_NEXT_UPDATE_LIFETIME_SECS`]
//!   after `thisUpdate`: the shortest validity CAs may give a response is 8 hours and
//!   servers refresh staples well before expiry, so one that is older than a day is stale.
//!
//! Anything else is [`StapleVerdict::Invalid`], with one line saying what was wrong.

use std::time::Duration;

use boring::hash::{hash, MessageDigest};
use boring::pkey::{Id, PKey, PKeyRef, Public};
use boring::sign::Verifier;
use boring::x509::{X509Ref, X509};
use der::asn1::{BitStringRef, ObjectIdentifier};
use der::oid::db::{rfc5280, rfc5912, rfc6960, rfc8410, DB};
use der::{DateTime, Decode, Encode, Header, Reader, SliceReader, Tag, TagNumber};
use x509_cert::ext::pkix::{CrlReason, ExtendedKeyUsage};
use x509_cert::name::Name;
use x509_cert::Certificate;
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspGeneralizedTime, OcspResponse, OcspResponseStatus, ResponderId,
};

/// How far the responder's clock and ours may disagree.
pub const CLOCK_SKEW_SECS: i64 = 5 * 60;
/// How long a response without `nextUpdate` is taken as current after its `thisUpdate`.
pub const NO_NEXT_UPDATE_LIFETIME_SECS: i64 = 24 * 60 * 60;

/// What a stapled OCSP response says about the leaf, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StapleVerdict {
    /// The CA vouches for the leaf (times in Unix seconds).
    Good { this_update: i64, next_update: Option<i64> },
    /// The CA revoked the leaf at `revoked_at` (Unix seconds), for `reason` when it gave one
    /// (the RFC 5280 CRLReason name, as `keyCompromise`).
    Revoked {
        revoked_at: i64,
        reason: Option<&'static str>,
    },
    /// The responder does not know the leaf.
    Unknown,
    /// The response says nothing that can be trusted about this leaf now; why, in one line.
    Invalid(String),
}

/// Judges `response_der`, the DER `OCSPResponse` the server stapled, for `leaf` issued by
/// `issuer`, at `now` (Unix seconds). Never panics, whatever the bytes.
pub fn check_staple(response_der: &[u8], leaf: &X509Ref, issuer: &X509Ref, now: i64) -> StapleVerdict {
    judge(response_der, leaf, issuer, now).unwrap_or_else(StapleVerdict::Invalid)
}

fn judge(response_der: &[u8], leaf: &X509Ref, issuer: &X509Ref, now: i64) -> Result<StapleVerdict, String> {
    let unparsable = |e: der::Error| format!("the stapled OCSP response does not parse: {e}");
    let response = OcspResponse::from_der(response_der).map_err(unparsable)?;
    if response.response_status != OcspResponseStatus::Successful {
        return Err(format!(
            "the stapled OCSP response is the responder's error '{}', not a certificate status",
            response_status_name(response.response_status)
        ));
    }
    let Some(body) = response.response_bytes else {
        return Err("the stapled OCSP response says 'successful' but carries no response".to_string());
    };
    if body.response_type != rfc6960::ID_PKIX_OCSP_BASIC {
        return Err(format!(
            "the stapled OCSP response is of type {}, not a basic OCSP response",
            oid_name(&body.response_type)
        ));
    }
    let basic_der = body.response.as_bytes();
    let basic = BasicOcspResponse::from_der(basic_der).map_err(unparsable)?;
    let signed_bytes = response_data_bytes(basic_der).map_err(unparsable)?;

    let leaf_der = leaf
        .to_der()
        .map_err(|e| format!("the leaf certificate does not encode: {e}"))?;
    let leaf_fields = CertFields::parse(&leaf_der).map_err(|e| format!("the leaf certificate does not parse: {e}"))?;
    let issuer_der = issuer
        .to_der()
        .map_err(|e| format!("the issuer certificate does not encode: {e}"))?;
    let issuer_fields =
        CertFields::parse(&issuer_der).map_err(|e| format!("the issuer certificate does not parse: {e}"))?;
    let issuer_key = issuer
        .public_key()
        .map_err(|e| format!("the issuer certificate's public key is unusable: {e}"))?;

    // Authenticity first: nothing an unauthenticated response says is worth reporting.
    let signer = find_signer(&basic, &issuer_fields, &issuer_key, now)?;
    verify_signature(&basic, signed_bytes, &signer)?;

    let responses = &basic.tbs_response_data.responses;
    let Some(single) = responses
        .iter()
        .find(|single| cert_id_matches(&single.cert_id, &leaf_fields, &issuer_fields))
    else {
        return Err(not_for_this_leaf(
            responses.iter().map(|single| &single.cert_id),
            &leaf_fields,
        ));
    };

    let this_update = unix_seconds(&single.this_update);
    let next_update = single.next_update.as_ref().map(unix_seconds);
    if this_update > now.saturating_add(CLOCK_SKEW_SECS) {
        return Err(format!(
            "the stapled OCSP response is not yet valid: its thisUpdate is {}",
            utc_text(this_update)
        ));
    }
    match next_update {
        Some(next) if next < now.saturating_sub(CLOCK_SKEW_SECS) => {
            return Err(format!("the stapled OCSP response expired at {}", utc_text(next)));
        }
        None if this_update.saturating_add(NO_NEXT_UPDATE_LIFETIME_SECS) < now.saturating_sub(CLOCK_SKEW_SECS) => {
            return Err(format!(
                "the stapled OCSP response is stale: it has no nextUpdate and its thisUpdate {} is more than a day old",
                utc_text(this_update)
            ));
        }
        _ => {}
    }

    Ok(match &single.cert_status {
        CertStatus::Good(_) => StapleVerdict::Good {
            this_update,
            next_update,
        },
        CertStatus::Revoked(info) => StapleVerdict::Revoked {
            revoked_at: unix_seconds(&info.revocation_time),
            reason: info.revocation_reason.map(crl_reason_name),
        },
        CertStatus::Unknown(_) => StapleVerdict::Unknown,
    })
}

/// The parts of a certificate OCSP looks at, as the certificate encodes them.
struct CertFields<'a> {
    /// The content octets of the serial number INTEGER.
    serial: &'a [u8],
    /// The whole DER of the subject Name.
    subject: &'a [u8],
    /// The subjectPublicKey BIT STRING's value, without the unused-bits octet.
    public_key_bits: &'a [u8],
}

impl<'a> CertFields<'a> {
    /// Walks the certificate's DER rather than decoding it whole, so that a certificate
    /// BoringSSL accepted is not refused here over an extension the strict decoder dislikes.
    fn parse(cert_der: &'a [u8]) -> der::Result<Self> {
        let mut reader = SliceReader::new(cert_der)?;
        let fields = reader.sequence(|cert| {
            let fields = cert.sequence(|tbs| {
                let explicit_version = Tag::ContextSpecific {
                    constructed: true,
                    number: TagNumber::N0,
                };
                if tbs.peek_tag()? == explicit_version {
                    tbs.tlv_bytes()?;
                }
                let serial_header = Header::decode(tbs)?;
                serial_header.tag.assert_eq(Tag::Integer)?;
                let serial = tbs.read_slice(serial_header.length)?;
                let _signature_algorithm = tbs.tlv_bytes()?;
                let _issuer = tbs.tlv_bytes()?;
                let _validity = tbs.tlv_bytes()?;
                let subject = tbs.tlv_bytes()?;
                let public_key_bits = tbs.sequence(|spki| {
                    let _algorithm = spki.tlv_bytes()?;
                    Ok(BitStringRef::decode(spki)?.raw_bytes())
                })?;
                skip_rest(tbs)?;
                Ok(CertFields {
                    serial,
                    subject,
                    public_key_bits,
                })
            })?;
            skip_rest(cert)?;
            Ok(fields)
        })?;
        reader.finish(fields)
    }
}

fn skip_rest<'r, R: Reader<'r>>(reader: &mut R) -> der::Result<()> {
    while !reader.is_finished() {
        reader.tlv_bytes()?;
    }
    Ok(())
}

/// The exact bytes of `tbsResponseData`, the part the signature covers: re-encoding the
/// decoded structure could differ from what the responder signed.
fn response_data_bytes(basic_der: &[u8]) -> der::Result<&[u8]> {
    let mut reader = SliceReader::new(basic_der)?;
    let tbs = reader.sequence(|basic| {
        let tbs = basic.tlv_bytes()?;
        skip_rest(basic)?;
        Ok(tbs)
    })?;
    reader.finish(tbs)
}

/// The key that must have signed the response: the issuer's when `responderID` names the
/// issuer, else that of an included certificate `responderID` names, if the issuer
/// authorized it to answer for its certificates.
fn find_signer(
    basic: &BasicOcspResponse,
    issuer: &CertFields<'_>,
    issuer_key: &PKey<Public>,
    now: i64,
) -> Result<PKey<Public>, String> {
    let responder_id = &basic.tbs_response_data.responder_id;
    if responder_id_names(responder_id, issuer) {
        return Ok(issuer_key.clone());
    }
    for cert in basic.certs.iter().flatten() {
        let Ok(cert_der) = cert.to_der() else { continue };
        let Ok(fields) = CertFields::parse(&cert_der) else {
            continue;
        };
        if responder_id_names(responder_id, &fields) {
            return authorized_responder_key(cert, &cert_der, issuer, issuer_key, now);
        }
    }
    Err(format!(
        "the stapled OCSP response is signed by someone else: {} is neither the leaf's issuer {} nor a \
         responder certificate included in the response",
        responder_id_text(responder_id),
        name_text(issuer.subject)
    ))
}

fn responder_id_names(responder_id: &ResponderId, cert: &CertFields<'_>) -> bool {
    match responder_id {
        ResponderId::ByName(name) => name.to_der().is_ok_and(|der| der == cert.subject),
        ResponderId::ByKey(key_hash) => {
            digest(MessageDigest::sha1(), cert.public_key_bits).is_some_and(|h| h == key_hash.as_bytes())
        }
    }
}

/// A delegated responder's key, if the leaf's issuer signed its certificate for OCSP
/// signing (RFC 6960 4.2.2.2) and it is valid now.
fn authorized_responder_key(
    cert: &Certificate,
    cert_der: &[u8],
    issuer: &CertFields<'_>,
    issuer_key: &PKey<Public>,
    now: i64,
) -> Result<PKey<Public>, String> {
    let tbs = &cert.tbs_certificate;
    let subject = tbs.subject.to_string();
    let someone_else = |why: String| format!("the stapled OCSP response is signed by someone else: {why}");
    let responder = X509::from_der(cert_der)
        .map_err(|e| someone_else(format!("the responder certificate {subject} does not parse: {e}")))?;
    let issued_by_issuer =
        tbs.issuer.to_der().is_ok_and(|der| der == issuer.subject) && responder.verify(issuer_key).unwrap_or(false);
    if !issued_by_issuer {
        return Err(someone_else(format!(
            "the responder {subject} is not certified by the leaf's issuer {}",
            name_text(issuer.subject)
        )));
    }
    let ocsp_signing = tbs
        .extensions
        .iter()
        .flatten()
        .filter(|ext| ext.extn_id == rfc5280::ID_CE_EXT_KEY_USAGE)
        .filter_map(|ext| ExtendedKeyUsage::from_der(ext.extn_value.as_bytes()).ok())
        .any(|usage| usage.0.contains(&rfc5280::ID_KP_OCSP_SIGNING));
    if !ocsp_signing {
        return Err(someone_else(format!(
            "{subject} is certified by the leaf's issuer, but not for OCSP signing (no OCSPSigning \
             extended key usage)"
        )));
    }
    let not_before = seconds_since_epoch(tbs.validity.not_before.to_unix_duration());
    let not_after = seconds_since_epoch(tbs.validity.not_after.to_unix_duration());
    if not_before > now.saturating_add(CLOCK_SKEW_SECS) {
        return Err(someone_else(format!(
            "the responder certificate {subject} is not valid before {}",
            utc_text(not_before)
        )));
    }
    if not_after < now.saturating_sub(CLOCK_SKEW_SECS) {
        return Err(someone_else(format!(
            "the responder certificate {subject} expired at {}",
            utc_text(not_after)
        )));
    }
    responder
        .public_key()
        .map_err(|e| someone_else(format!("the responder certificate {subject} has an unusable key: {e}")))
}

fn verify_signature(basic: &BasicOcspResponse, signed_bytes: &[u8], key: &PKeyRef<Public>) -> Result<(), String> {
    let algorithm = &basic.signature_algorithm.oid;
    let (key_type, digest) = signature_scheme(algorithm).ok_or_else(|| {
        format!(
            "the stapled OCSP response is signed with {}, which loupe does not check",
            oid_name(algorithm)
        )
    })?;
    let Some(signature) = basic.signature.as_bytes() else {
        return Err("the stapled OCSP response's signature is not a whole number of bytes".to_string());
    };
    let verified = key.id() == key_type
        && match digest {
            Some(digest) => Verifier::new(digest, key)
                .and_then(|mut verifier| {
                    verifier.update(signed_bytes)?;
                    verifier.verify(signature)
                })
                .unwrap_or(false),
            None => Verifier::new_without_digest(key)
                .and_then(|mut verifier| verifier.verify_oneshot(signature, signed_bytes))
                .unwrap_or(false),
        };
    if verified {
        Ok(())
    } else {
        Err(format!(
            "the stapled OCSP response's {} signature does not verify: it was altered or signed by someone else",
            oid_name(algorithm)
        ))
    }
}

/// The key type and digest of a signature algorithm; no digest for Ed25519, which hashes
/// internally. RSASSA-PSS is not handled (its parameters would need decoding): responders
/// use PKCS#1 v1.5 or ECDSA.
fn signature_scheme(algorithm: &ObjectIdentifier) -> Option<(Id, Option<MessageDigest>)> {
    let scheme = match *algorithm {
        rfc5912::SHA_1_WITH_RSA_ENCRYPTION => (Id::RSA, Some(MessageDigest::sha1())),
        rfc5912::SHA_256_WITH_RSA_ENCRYPTION => (Id::RSA, Some(MessageDigest::sha256())),
        rfc5912::SHA_384_WITH_RSA_ENCRYPTION => (Id::RSA, Some(MessageDigest::sha384())),
        rfc5912::SHA_512_WITH_RSA_ENCRYPTION => (Id::RSA, Some(MessageDigest::sha512())),
        rfc5912::ECDSA_WITH_SHA_256 => (Id::EC, Some(MessageDigest::sha256())),
        rfc5912::ECDSA_WITH_SHA_384 => (Id::EC, Some(MessageDigest::sha384())),
        rfc5912::ECDSA_WITH_SHA_512 => (Id::EC, Some(MessageDigest::sha512())),
        rfc8410::ID_ED_25519 => (Id::ED25519, None),
        _ => return None,
    };
    Some(scheme)
}

/// The digest a CertID names for its issuer hashes.
fn cert_id_digest(algorithm: &ObjectIdentifier) -> Option<MessageDigest> {
    match *algorithm {
        rfc5912::ID_SHA_1 => Some(MessageDigest::sha1()),
        rfc5912::ID_SHA_256 => Some(MessageDigest::sha256()),
        rfc5912::ID_SHA_384 => Some(MessageDigest::sha384()),
        rfc5912::ID_SHA_512 => Some(MessageDigest::sha512()),
        _ => None,
    }
}

fn cert_id_matches(cert_id: &CertId, leaf: &CertFields<'_>, issuer: &CertFields<'_>) -> bool {
    if minimal_integer(cert_id.serial_number.as_bytes()) != minimal_integer(leaf.serial) {
        return false;
    }
    let Some(hash_algorithm) = cert_id_digest(&cert_id.hash_algorithm.oid) else {
        return false;
    };
    digest(hash_algorithm, issuer.subject).is_some_and(|h| h == cert_id.issuer_name_hash.as_bytes())
        && digest(hash_algorithm, issuer.public_key_bits).is_some_and(|h| h == cert_id.issuer_key_hash.as_bytes())
}

/// Why no SingleResponse is the leaf's: another serial, or the leaf's serial from another CA.
fn not_for_this_leaf<'r>(cert_ids: impl Iterator<Item = &'r CertId>, leaf: &CertFields<'_>) -> String {
    let leaf_serial = serial_text(leaf.serial);
    let serials: Vec<String> = cert_ids.map(|id| serial_text(id.serial_number.as_bytes())).collect();
    if serials.is_empty() {
        "the stapled OCSP response lists no certificate".to_string()
    } else if serials.contains(&leaf_serial) {
        format!(
            "the stapled OCSP response is for another certificate: serial {leaf_serial} of another issuer \
             (or hashed with an algorithm loupe does not know)"
        )
    } else {
        format!(
            "the stapled OCSP response is for another certificate (serial {}; the leaf's is {leaf_serial})",
            serials.join(", ")
        )
    }
}

/// INTEGER content octets without redundant leading sign octets, so that a non-minimal
/// encoding on either side still compares equal.
fn minimal_integer(mut bytes: &[u8]) -> &[u8] {
    while let [first, second, ..] = bytes {
        let redundant = (*first == 0x00 && *second < 0x80) || (*first == 0xff && *second >= 0x80);
        if !redundant {
            break;
        }
        bytes = &bytes[1..];
    }
    bytes
}

fn serial_text(bytes: &[u8]) -> String {
    let bytes = minimal_integer(bytes);
    let bytes = match bytes {
        [0x00, rest @ ..] if !rest.is_empty() => rest,
        _ => bytes,
    };
    hex::encode_upper(bytes)
}

fn digest(algorithm: MessageDigest, data: &[u8]) -> Option<Vec<u8>> {
    hash(algorithm, data).ok().map(|h| h.to_vec())
}

fn unix_seconds(time: &OcspGeneralizedTime) -> i64 {
    seconds_since_epoch(time.0.to_unix_duration())
}

fn seconds_since_epoch(since_epoch: Duration) -> i64 {
    i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX)
}

fn utc_text(unix: i64) -> String {
    u64::try_from(unix)
        .ok()
        .and_then(|secs| DateTime::from_unix_duration(Duration::from_secs(secs)).ok())
        .map_or_else(|| format!("{unix} (Unix time)"), |time| time.to_string())
}

fn name_text(name_der: &[u8]) -> String {
    Name::from_der(name_der).map_or_else(|_| "(an undecodable name)".to_string(), |name| name.to_string())
}

fn responder_id_text(responder_id: &ResponderId) -> String {
    match responder_id {
        ResponderId::ByName(name) => format!("the responder {name}"),
        ResponderId::ByKey(key_hash) => format!("the responder with key SHA-1 {}", hex::encode(key_hash.as_bytes())),
    }
}

fn oid_name(oid: &ObjectIdentifier) -> String {
    DB.by_oid(oid).map_or_else(|| oid.to_string(), str::to_string)
}

fn response_status_name(status: OcspResponseStatus) -> &'static str {
    match status {
        OcspResponseStatus::Successful => "successful",
        OcspResponseStatus::MalformedRequest => "malformedRequest",
        OcspResponseStatus::InternalError => "internalError",
        OcspResponseStatus::TryLater => "tryLater",
        OcspResponseStatus::SigRequired => "sigRequired",
        OcspResponseStatus::Unauthorized => "unauthorized",
    }
}

/// The RFC 5280 name of a revocation reason.
fn crl_reason_name(reason: CrlReason) -> &'static str {
    match reason {
        CrlReason::Unspecified => "unspecified",
        CrlReason::KeyCompromise => "keyCompromise",
        CrlReason::CaCompromise => "cACompromise",
        CrlReason::AffiliationChanged => "affiliationChanged",
        CrlReason::Superseded => "superseded",
        CrlReason::CessationOfOperation => "cessationOfOperation",
        CrlReason::CertificateHold => "certificateHold",
        CrlReason::RemoveFromCRL => "removeFromCRL",
        CrlReason::PrivilegeWithdrawn => "privilegeWithdrawn",
        CrlReason::AaCompromise => "aACompromise",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2030-01-01T00:00:00Z: inside every fixture's window (see testdata/ocsp/make.sh).
    const NOW: i64 = 1_893_456_000;

    fn cert(der: &[u8]) -> X509 {
        X509::from_der(der).unwrap()
    }

    fn leaf() -> X509 {
        cert(include_bytes!("testdata/ocsp/leaf.der"))
    }

    fn issuer() -> X509 {
        cert(include_bytes!("testdata/ocsp/ca.der"))
    }

    fn check(response: &[u8], now: i64) -> StapleVerdict {
        check_staple(response, &leaf(), &issuer(), now)
    }

    fn invalid_reason(verdict: StapleVerdict) -> String {
        match verdict {
            StapleVerdict::Invalid(why) => why,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn this_update_of(response: &[u8]) -> i64 {
        let outer = OcspResponse::from_der(response).unwrap();
        let basic = BasicOcspResponse::from_der(outer.response_bytes.unwrap().response.as_bytes()).unwrap();
        unix_seconds(&basic.tbs_response_data.responses[0].this_update)
    }

    const GOOD_BY_ISSUER: &[u8] = include_bytes!("testdata/ocsp/good_by_issuer.der");

    #[test]
    fn good_signed_by_the_issuer_with_ecdsa_p256() {
        match check(GOOD_BY_ISSUER, NOW) {
            StapleVerdict::Good {
                this_update,
                next_update: Some(next_update),
            } => {
                assert!(this_update <= NOW && NOW <= next_update, "{this_update} {next_update}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn good_signed_by_a_delegated_responder_with_rsa() {
        let verdict = check(include_bytes!("testdata/ocsp/good_by_responder.der"), NOW);
        assert!(
            matches!(
                verdict,
                StapleVerdict::Good {
                    next_update: Some(_),
                    ..
                }
            ),
            "{verdict:?}"
        );
    }

    #[test]
    fn good_with_a_sha256_cert_id() {
        let verdict = check(include_bytes!("testdata/ocsp/good_sha256_certid.der"), NOW);
        assert!(matches!(verdict, StapleVerdict::Good { .. }), "{verdict:?}");
    }

    #[test]
    fn revoked_for_key_compromise() {
        assert_eq!(
            check(include_bytes!("testdata/ocsp/revoked.der"), NOW),
            StapleVerdict::Revoked {
                revoked_at: 1_772_366_400, // 2026-03-01T12:00:00Z, from make.sh's index
                reason: Some("keyCompromise"),
            }
        );
    }

    #[test]
    fn unknown_to_the_responder() {
        assert_eq!(
            check(include_bytes!("testdata/ocsp/unknown.der"), NOW),
            StapleVerdict::Unknown
        );
    }

    #[test]
    fn response_for_another_serial() {
        let why = invalid_reason(check(include_bytes!("testdata/ocsp/other_serial.der"), NOW));
        assert!(why.contains("is for another certificate"), "{why}");
        assert!(why.contains("serial 1002; the leaf's is 1001"), "{why}");
    }

    #[test]
    fn checked_against_another_issuer() {
        let other_ca = cert(include_bytes!("testdata/ocsp/other_ca.der"));
        let why = invalid_reason(check_staple(GOOD_BY_ISSUER, &leaf(), &other_ca, NOW));
        assert!(why.contains("signed by someone else"), "{why}");
    }

    #[test]
    fn signed_by_another_ca() {
        let why = invalid_reason(check(include_bytes!("testdata/ocsp/signed_by_other_ca.der"), NOW));
        assert!(why.contains("signed by someone else"), "{why}");
        assert!(why.contains("Other Test CA"), "{why}");
    }

    #[test]
    fn signed_by_a_ca_certificate_without_ocsp_signing() {
        let why = invalid_reason(check(include_bytes!("testdata/ocsp/signed_without_eku.der"), NOW));
        assert!(why.contains("signed by someone else"), "{why}");
        assert!(why.contains("OCSPSigning"), "{why}");
    }

    #[test]
    fn altered_after_signing() {
        let mut altered = GOOD_BY_ISSUER.to_vec();
        // producedAt is the first GeneralizedTime (tag 0x18, 15 bytes): change its last second digit.
        let at = altered.windows(2).position(|w| w == [0x18, 0x0f]).unwrap() + 2 + 13;
        altered[at] = if altered[at] == b'0' { b'1' } else { b'0' };
        let why = invalid_reason(check(&altered, NOW));
        assert!(why.contains("signature does not verify"), "{why}");
    }

    #[test]
    fn expired_after_next_update() {
        let why = invalid_reason(check(include_bytes!("testdata/ocsp/expired.der"), NOW));
        assert!(why.starts_with("the stapled OCSP response expired at 20"), "{why}");
    }

    #[test]
    fn within_the_skew_of_next_update() {
        let response = include_bytes!("testdata/ocsp/expired.der");
        // `-nmin 1`: nextUpdate is a minute after thisUpdate.
        let next_update = this_update_of(response) + 60;
        let verdict = check(response, next_update + CLOCK_SKEW_SECS - 1);
        assert!(matches!(verdict, StapleVerdict::Good { .. }), "{verdict:?}");
        let why = invalid_reason(check(response, next_update + CLOCK_SKEW_SECS + 1));
        assert!(why.contains("expired at"), "{why}");
    }

    #[test]
    fn not_yet_valid() {
        let why = invalid_reason(check(GOOD_BY_ISSUER, 1_704_067_200)); // 2024-01-01
        assert!(why.contains("not yet valid"), "{why}");
    }

    #[test]
    fn without_next_update_good_for_a_day() {
        let response = include_bytes!("testdata/ocsp/good_no_next_update.der");
        let this_update = this_update_of(response);
        assert_eq!(
            check(response, this_update + 3600),
            StapleVerdict::Good {
                this_update,
                next_update: None
            }
        );
        let why = invalid_reason(check(response, NOW));
        assert!(why.contains("no nextUpdate"), "{why}");
    }

    #[test]
    fn garbage_does_not_parse() {
        for garbage in [&b""[..], b"\x00", b"hello, world", &[0xff; 64], b"\x30\x80\x00\x00"] {
            let why = invalid_reason(check(garbage, NOW));
            assert!(why.starts_with("the stapled OCSP response does not parse: "), "{why}");
        }
    }

    #[test]
    fn every_truncation_is_invalid() {
        for len in 0..GOOD_BY_ISSUER.len() {
            invalid_reason(check(&GOOD_BY_ISSUER[..len], NOW));
        }
    }

    #[test]
    fn trailing_bytes_are_invalid() {
        let mut padded = GOOD_BY_ISSUER.to_vec();
        padded.push(0);
        invalid_reason(check(&padded, NOW));
    }

    #[test]
    fn any_single_corrupted_byte_never_panics() {
        for at in 0..GOOD_BY_ISSUER.len() {
            let mut corrupted = GOOD_BY_ISSUER.to_vec();
            corrupted[at] ^= 0xff;
            let _ = check(&corrupted, NOW);
        }
    }

    #[test]
    fn responder_error_statuses() {
        // OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED } with no responseBytes.
        let why = invalid_reason(check(&[0x30, 0x03, 0x0a, 0x01, 0x01], NOW));
        assert!(why.contains("'malformedRequest'"), "{why}");
        let why = invalid_reason(check(&[0x30, 0x03, 0x0a, 0x01, 0x03], NOW));
        assert!(why.contains("'tryLater'"), "{why}");
        let why = invalid_reason(check(&[0x30, 0x03, 0x0a, 0x01, 0x00], NOW));
        assert!(why.contains("carries no response"), "{why}");
    }

    #[test]
    fn minimal_integers() {
        assert_eq!(minimal_integer(&[0x00, 0x10, 0x01]), &[0x10, 0x01]);
        assert_eq!(minimal_integer(&[0x00, 0x80]), &[0x00, 0x80]);
        assert_eq!(minimal_integer(&[0xff, 0xff, 0x80]), &[0x80]);
        assert_eq!(minimal_integer(&[0xff, 0x7f]), &[0xff, 0x7f]);
        assert_eq!(minimal_integer(&[0x00]), &[0x00]);
        assert_eq!(serial_text(&[0x00, 0x80, 0x01]), "8001");
    }
}
