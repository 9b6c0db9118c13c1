//! Names of TLS code points, for the decryption log, the diagnosis and error messages.
//!
//! IANA names come from the TLS registries; OpenSSL names are what `openssl ciphers`
//! prints, because operators compare our log with OpenSSL-based tools and server
//! configurations (`ssl_ciphers` in nginx, `SSLCipherSuite` in Apache).

/// True for the GREASE values of RFC 8701 (0x0a0a, 0x1a1a, …, 0xfafa), which clients
/// sprinkle into every list to keep servers tolerant of unknown values.
pub fn is_grease(value: u16) -> bool {
    value & 0x0f0f == 0x0a0a && value >> 8 == value & 0xff
}

/// Protocol version as an operator says it: 0x0303 → "TLS 1.2".
pub fn version_name(version: u16) -> &'static str {
    match version {
        0x0002 => "SSL 2.0",
        0x0300 => "SSL 3.0",
        0x0301 => "TLS 1.0",
        0x0302 => "TLS 1.1",
        0x0303 => "TLS 1.2",
        0x0304 => "TLS 1.3",
        0x7f00..=0x7fff => "TLS 1.3 draft",
        0xfeff => "DTLS 1.0",
        0xfefd => "DTLS 1.2",
        0xfefc => "DTLS 1.3",
        v if is_grease(v) => "GREASE",
        _ => "unknown version",
    }
}

/// One row per cipher suite: code point, IANA name, OpenSSL name.
const CIPHER_SUITES: &[(u16, &str, &str)] = &[
    // TLS 1.3: OpenSSL uses the IANA names.
    (0x1301, "TLS_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256"),
    (0x1302, "TLS_AES_256_GCM_SHA384", "TLS_AES_256_GCM_SHA384"),
    (0x1303, "TLS_CHACHA20_POLY1305_SHA256", "TLS_CHACHA20_POLY1305_SHA256"),
    (0x1304, "TLS_AES_128_CCM_SHA256", "TLS_AES_128_CCM_SHA256"),
    (0x1305, "TLS_AES_128_CCM_8_SHA256", "TLS_AES_128_CCM_8_SHA256"),
    // ECDHE with ECDSA certificates.
    (
        0xc02b,
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
    ),
    (
        0xc02c,
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
    ),
    (
        0xcca9,
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ),
    (0xc009, "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA", "ECDHE-ECDSA-AES128-SHA"),
    (0xc00a, "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA", "ECDHE-ECDSA-AES256-SHA"),
    (
        0xc023,
        "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
        "ECDHE-ECDSA-AES128-SHA256",
    ),
    (
        0xc024,
        "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384",
        "ECDHE-ECDSA-AES256-SHA384",
    ),
    (0xc0ac, "TLS_ECDHE_ECDSA_WITH_AES_128_CCM", "ECDHE-ECDSA-AES128-CCM"),
    (0xc0ad, "TLS_ECDHE_ECDSA_WITH_AES_256_CCM", "ECDHE-ECDSA-AES256-CCM"),
    (
        0xc008,
        "TLS_ECDHE_ECDSA_WITH_3DES_EDE_CBC_SHA",
        "ECDHE-ECDSA-DES-CBC3-SHA",
    ),
    // ECDHE with RSA certificates.
    (
        0xc02f,
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
    ),
    (
        0xc030,
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
    ),
    (
        0xcca8,
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ),
    (0xc013, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", "ECDHE-RSA-AES128-SHA"),
    (0xc014, "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA", "ECDHE-RSA-AES256-SHA"),
    (
        0xc027,
        "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
        "ECDHE-RSA-AES128-SHA256",
    ),
    (
        0xc028,
        "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384",
        "ECDHE-RSA-AES256-SHA384",
    ),
    (0xc012, "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA", "ECDHE-RSA-DES-CBC3-SHA"),
    // Finite-field DHE with RSA certificates.
    (
        0x009e,
        "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256",
        "DHE-RSA-AES128-GCM-SHA256",
    ),
    (
        0x009f,
        "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384",
        "DHE-RSA-AES256-GCM-SHA384",
    ),
    (
        0xccaa,
        "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        "DHE-RSA-CHACHA20-POLY1305",
    ),
    (0x0033, "TLS_DHE_RSA_WITH_AES_128_CBC_SHA", "DHE-RSA-AES128-SHA"),
    (0x0039, "TLS_DHE_RSA_WITH_AES_256_CBC_SHA", "DHE-RSA-AES256-SHA"),
    (0x0067, "TLS_DHE_RSA_WITH_AES_128_CBC_SHA256", "DHE-RSA-AES128-SHA256"),
    (0x006b, "TLS_DHE_RSA_WITH_AES_256_CBC_SHA256", "DHE-RSA-AES256-SHA256"),
    (0xc09e, "TLS_DHE_RSA_WITH_AES_128_CCM", "DHE-RSA-AES128-CCM"),
    (0xc09f, "TLS_DHE_RSA_WITH_AES_256_CCM", "DHE-RSA-AES256-CCM"),
    (0x0016, "TLS_DHE_RSA_WITH_3DES_EDE_CBC_SHA", "DHE-RSA-DES-CBC3-SHA"),
    // Static RSA key exchange (no forward secrecy: passively decryptable with the key).
    (0x009c, "TLS_RSA_WITH_AES_128_GCM_SHA256", "AES128-GCM-SHA256"),
    (0x009d, "TLS_RSA_WITH_AES_256_GCM_SHA384", "AES256-GCM-SHA384"),
    (0x002f, "TLS_RSA_WITH_AES_128_CBC_SHA", "AES128-SHA"),
    (0x0035, "TLS_RSA_WITH_AES_256_CBC_SHA", "AES256-SHA"),
    (0x003c, "TLS_RSA_WITH_AES_128_CBC_SHA256", "AES128-SHA256"),
    (0x003d, "TLS_RSA_WITH_AES_256_CBC_SHA256", "AES256-SHA256"),
    (0xc09c, "TLS_RSA_WITH_AES_128_CCM", "AES128-CCM"),
    (0xc09d, "TLS_RSA_WITH_AES_256_CCM", "AES256-CCM"),
    (0x000a, "TLS_RSA_WITH_3DES_EDE_CBC_SHA", "DES-CBC3-SHA"),
    (0x0005, "TLS_RSA_WITH_RC4_128_SHA", "RC4-SHA"),
    (0x0004, "TLS_RSA_WITH_RC4_128_MD5", "RC4-MD5"),
];

/// Signalling values that sit in the cipher suite list but are not suites; OpenSSL has
/// no cipher name for them.
const SIGNALLING_SUITES: &[(u16, &str)] = &[
    (0x00ff, "TLS_EMPTY_RENEGOTIATION_INFO_SCSV"),
    (0x5600, "TLS_FALLBACK_SCSV"),
];

/// IANA name of a cipher suite: 0xc013 → "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA".
pub fn cipher_suite_name(suite: u16) -> Option<&'static str> {
    CIPHER_SUITES
        .iter()
        .find(|row| row.0 == suite)
        .map(|row| row.1)
        .or_else(|| SIGNALLING_SUITES.iter().find(|row| row.0 == suite).map(|row| row.1))
}

/// OpenSSL name of a cipher suite: 0xc013 → "ECDHE-RSA-AES128-SHA".
pub fn openssl_cipher_name(suite: u16) -> Option<&'static str> {
    CIPHER_SUITES.iter().find(|row| row.0 == suite).map(|row| row.2)
}

/// Named group (key exchange) as OpenSSL and the IANA registry call it.
pub fn group_name(group: u16) -> Option<&'static str> {
    Some(match group {
        0x0017 => "secp256r1",
        0x0018 => "secp384r1",
        0x0019 => "secp521r1",
        0x001a => "brainpoolP256r1",
        0x001b => "brainpoolP384r1",
        0x001c => "brainpoolP512r1",
        0x001d => "x25519",
        0x001e => "x448",
        0x0029 => "curveSM2",
        0x0100 => "ffdhe2048",
        0x0101 => "ffdhe3072",
        0x0102 => "ffdhe4096",
        0x0103 => "ffdhe6144",
        0x0104 => "ffdhe8192",
        0x0200 => "MLKEM512",
        0x0201 => "MLKEM768",
        0x0202 => "MLKEM1024",
        0x11eb => "SecP256r1MLKEM768",
        0x11ec => "X25519MLKEM768",
        0x11ed => "SecP384r1MLKEM1024",
        0x11ee => "curveSM2MLKEM768",
        // The pre-standard hybrid Chrome 124–130 and Firefox sent.
        0x6399 => "X25519Kyber768Draft00",
        _ => return None,
    })
}

/// Signature scheme (RFC 8446 §4.2.3 names).
pub fn signature_scheme_name(scheme: u16) -> Option<&'static str> {
    Some(match scheme {
        0x0201 => "rsa_pkcs1_sha1",
        0x0203 => "ecdsa_sha1",
        0x0401 => "rsa_pkcs1_sha256",
        0x0501 => "rsa_pkcs1_sha384",
        0x0601 => "rsa_pkcs1_sha512",
        0x0403 => "ecdsa_secp256r1_sha256",
        0x0503 => "ecdsa_secp384r1_sha384",
        0x0603 => "ecdsa_secp521r1_sha512",
        0x0804 => "rsa_pss_rsae_sha256",
        0x0805 => "rsa_pss_rsae_sha384",
        0x0806 => "rsa_pss_rsae_sha512",
        0x0807 => "ed25519",
        0x0808 => "ed448",
        0x0708 => "sm2sig_sm3",
        0x0904 => "mldsa44",
        0x0905 => "mldsa65",
        0x0906 => "mldsa87",
        0x0809 => "rsa_pss_pss_sha256",
        0x080a => "rsa_pss_pss_sha384",
        0x080b => "rsa_pss_pss_sha512",
        0x081a => "ecdsa_brainpoolP256r1tls13_sha256",
        0x081b => "ecdsa_brainpoolP384r1tls13_sha384",
        0x081c => "ecdsa_brainpoolP512r1tls13_sha512",
        _ => return None,
    })
}

/// Extension type as named in the IANA registry.
pub fn extension_name(extension: u16) -> Option<&'static str> {
    Some(match extension {
        0 => "server_name",
        1 => "max_fragment_length",
        5 => "status_request",
        10 => "supported_groups",
        11 => "ec_point_formats",
        13 => "signature_algorithms",
        14 => "use_srtp",
        15 => "heartbeat",
        16 => "application_layer_protocol_negotiation",
        18 => "signed_certificate_timestamp",
        21 => "padding",
        22 => "encrypt_then_mac",
        23 => "extended_master_secret",
        27 => "compress_certificate",
        28 => "record_size_limit",
        35 => "session_ticket",
        41 => "pre_shared_key",
        42 => "early_data",
        43 => "supported_versions",
        44 => "cookie",
        45 => "psk_key_exchange_modes",
        47 => "certificate_authorities",
        49 => "post_handshake_auth",
        50 => "signature_algorithms_cert",
        51 => "key_share",
        13172 => "next_protocol_negotiation",
        17513 => "application_settings_old",
        17613 => "application_settings",
        // Trust Anchor IDs (draft-ietf-tls-trust-anchor-ids), Chrome's experimental code point.
        0xca34 => "trust_anchors",
        0xfe0d => "encrypted_client_hello",
        0xff01 => "renegotiation_info",
        _ => return None,
    })
}

/// Record content type.
pub fn content_type_name(content_type: u8) -> Option<&'static str> {
    Some(match content_type {
        20 => "change_cipher_spec",
        21 => "alert",
        22 => "handshake",
        23 => "application_data",
        24 => "heartbeat",
        _ => return None,
    })
}

/// Handshake message type.
pub fn handshake_type_name(handshake_type: u8) -> Option<&'static str> {
    Some(match handshake_type {
        0 => "hello_request",
        1 => "client_hello",
        2 => "server_hello",
        4 => "new_session_ticket",
        5 => "end_of_early_data",
        8 => "encrypted_extensions",
        11 => "certificate",
        12 => "server_key_exchange",
        13 => "certificate_request",
        14 => "server_hello_done",
        15 => "certificate_verify",
        16 => "client_key_exchange",
        20 => "finished",
        24 => "key_update",
        254 => "message_hash",
        _ => return None,
    })
}

/// Alert description, as OpenSSL prints it after "alert" (`sslv3 alert handshake failure`
/// is description 40 here: "handshake_failure").
pub fn alert_description_name(description: u8) -> Option<&'static str> {
    Some(match description {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        21 => "decryption_failed",
        22 => "record_overflow",
        30 => "decompression_failure",
        40 => "handshake_failure",
        41 => "no_certificate",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        49 => "access_denied",
        50 => "decode_error",
        51 => "decrypt_error",
        60 => "export_restriction",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        86 => "inappropriate_fallback",
        90 => "user_canceled",
        100 => "no_renegotiation",
        109 => "missing_extension",
        110 => "unsupported_extension",
        111 => "certificate_unobtainable",
        112 => "unrecognized_name",
        113 => "bad_certificate_status_response",
        114 => "bad_certificate_hash_value",
        115 => "unknown_psk_identity",
        116 => "certificate_required",
        120 => "no_application_protocol",
        121 => "ech_required",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grease_values_are_exactly_the_sixteen_of_rfc_8701() {
        let all: Vec<u16> = (0..=u16::MAX).filter(|&v| is_grease(v)).collect();
        let expected: Vec<u16> = (0..16u16).map(|i| (i << 12) | 0x0a00 | (i << 4) | 0x0a).collect();
        assert_eq!(all, expected);
        assert!(is_grease(0x0a0a) && is_grease(0xfafa) && !is_grease(0x0a1a));
    }

    #[test]
    fn versions_have_operator_names() {
        assert_eq!(version_name(0x0303), "TLS 1.2");
        assert_eq!(version_name(0x0304), "TLS 1.3");
        assert_eq!(version_name(0x0300), "SSL 3.0");
        assert_eq!(version_name(0x7f1c), "TLS 1.3 draft");
        assert_eq!(version_name(0x5a5a), "GREASE");
        assert_eq!(version_name(0x1234), "unknown version");
    }

    #[test]
    fn cipher_suites_have_iana_and_openssl_names() {
        assert_eq!(cipher_suite_name(0xc013), Some("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"));
        assert_eq!(openssl_cipher_name(0xc013), Some("ECDHE-RSA-AES128-SHA"));
        assert_eq!(openssl_cipher_name(0x1301), Some("TLS_AES_128_GCM_SHA256"));
        assert_eq!(openssl_cipher_name(0x000a), Some("DES-CBC3-SHA"));
        assert_eq!(cipher_suite_name(0x00ff), Some("TLS_EMPTY_RENEGOTIATION_INFO_SCSV"));
        assert_eq!(openssl_cipher_name(0x00ff), None);
        assert_eq!(cipher_suite_name(0x0a0a), None);
    }

    #[test]
    fn cipher_table_has_no_duplicate_code_points_or_names() {
        let mut codes: Vec<u16> = CIPHER_SUITES.iter().map(|row| row.0).collect();
        codes.extend(SIGNALLING_SUITES.iter().map(|row| row.0));
        let mut names: Vec<&str> = CIPHER_SUITES.iter().map(|row| row.2).collect();
        let before = (codes.len(), names.len());
        codes.sort_unstable();
        codes.dedup();
        names.sort_unstable();
        names.dedup();
        assert_eq!(before, (codes.len(), names.len()));
        // IANA names spell out the key exchange, the OpenSSL names of TLS 1.2 suites use
        // dashes: a row with the columns swapped would break either rule.
        for (code, iana, openssl) in CIPHER_SUITES {
            assert!(iana.starts_with("TLS_"), "{code:#06x}");
            assert!(*code >> 8 == 0x13 || !openssl.contains('_'), "{code:#06x}");
        }
    }

    #[test]
    fn groups_and_other_code_points_have_names() {
        assert_eq!(group_name(0x11ec), Some("X25519MLKEM768"));
        assert_eq!(group_name(0x001d), Some("x25519"));
        assert_eq!(group_name(0x0100), Some("ffdhe2048"));
        assert_eq!(group_name(0x0a0a), None);
        assert_eq!(signature_scheme_name(0x0804), Some("rsa_pss_rsae_sha256"));
        assert_eq!(extension_name(0xfe0d), Some("encrypted_client_hello"));
        assert_eq!(alert_description_name(40), Some("handshake_failure"));
        assert_eq!(alert_description_name(48), Some("unknown_ca"));
        assert_eq!(content_type_name(23), Some("application_data"));
        assert_eq!(handshake_type_name(2), Some("server_hello"));
    }
}
