//! The upstream hello against the client's, for real clients' captured hellos: the hello
//! BoringSSL really sends upstream (taken from a split-TLS session's first flight and
//! parsed back) is compared per dimension with the client's.

use std::net::SocketAddr;

use boring::x509::store::X509StoreBuilder;

use super::*;
use crate::tls::client_hello::ClientHelloReader;
use crate::tls::forge::Forger;
use crate::tls::session::{PlaintextCounter, Profile, SplitTls, SplitTlsContext};

/// Real clients' first flights, captured on loopback (testdata/README.md says how).
const FIXTURES: &[(&str, &str)] = &[
    ("Chromium 156", include_str!("../testdata/chromium.hex")),
    ("Firefox ESR 153", include_str!("../testdata/firefox.hex")),
    ("curl 7.88 (TLS 1.3)", include_str!("../testdata/curl_tls13.hex")),
    ("curl 7.88 (--tls-max 1.2)", include_str!("../testdata/curl_tls12.hex")),
    ("openssl s_client 3.0", include_str!("../testdata/openssl_alpn.hex")),
    ("gnutls-cli 3.7", include_str!("../testdata/gnutls.hex")),
    ("Python 3.11 ssl (OpenSSL 3.0)", include_str!("../testdata/python.hex")),
    (
        "pyOpenSSL 26.4 (OpenSSL 4.0)",
        include_str!("../testdata/python_openssl35.hex"),
    ),
];

fn hello_of(flight: &[u8]) -> ClientHello {
    ClientHelloReader::new()
        .push(flight)
        .expect("the flight parses")
        .expect("the flight holds a whole ClientHello")
}

fn context(profile: &Profile) -> SplitTlsContext {
    let store = X509StoreBuilder::new().expect("store").build();
    SplitTlsContext::new(profile, store).expect("the profile builds")
}

/// What loupe sends upstream for this client, parsed from the bytes BoringSSL wrote.
fn upstream_hello(client: &ClientHello, flight: &[u8], ctx: &SplitTlsContext) -> ClientHello {
    let server: SocketAddr = "198.18.0.2:443".parse().expect("address");
    let mut session = SplitTls::start(client, flight, server, ctx);
    let mut forger = Forger::ephemeral(4).expect("forger");
    session.advance(&mut forger, &mut PlaintextCounter::default());
    assert!(
        session.outcome().is_none(),
        "the session failed to start: {:?}",
        session.outcome()
    );
    hello_of(session.pending_to_server())
}

/// Versions a hello offers (TLS 1.0 up to legacy_version without supported_versions).
fn versions(hello: &ClientHello) -> Vec<u16> {
    let offered: Vec<u16> = hello
        .supported_versions
        .iter()
        .copied()
        .filter(|v| v >> 8 == 3)
        .collect();
    if offered.is_empty() {
        (TLS1_0..=hello.legacy_version).collect()
    } else {
        offered
    }
}

fn tls12(suites: &[u16]) -> Vec<u16> {
    // Signalling values (renegotiation_info, fallback) are not suites.
    suites
        .iter()
        .copied()
        .filter(|s| !TLS13_SUITES.contains(s) && *s != 0x00ff && *s != 0x5600 && (*s >> 8) != 0x13)
        .collect()
}

fn tls13(suites: &[u16]) -> Vec<u16> {
    suites.iter().copied().filter(|s| (*s >> 8) == 0x13).collect()
}

fn subset(a: &[u16], b: &[u16]) -> bool {
    a.iter().all(|x| b.contains(x))
}

fn names_of(ids: &[u16], name: fn(u16) -> Option<&'static str>) -> String {
    ids.iter()
        .map(|id| name(*id).map_or_else(|| format!("{id:#06x}"), str::to_string))
        .collect::<Vec<_>>()
        .join(" ")
}

fn version_span(ids: &[u16]) -> String {
    let short = |v: u16| names::version_name(v).trim_start_matches("TLSv").to_string();
    match (ids.iter().min(), ids.iter().max()) {
        (Some(lo), Some(hi)) if lo == hi => short(*lo),
        (Some(lo), Some(hi)) => format!("{}–{}", short(*lo), short(*hi)),
        _ => "none".to_string(),
    }
}

/// One dimension in the table: the client's, then upstream's, or "same".
fn cell(client: &str, upstream: &str) -> String {
    if client == upstream {
        format!("{client} (same)")
    } else {
        format!("{client} → {upstream}")
    }
}

/// Checks every dimension for one client; returns the table row, or what was weaker.
fn compare(name: &str, client: &ClientHello, upstream: &ClientHello, allowed: &ProfileOffer) -> Result<String, String> {
    let mut weaker = Vec::new();
    let (cv, uv) = (versions(client), versions(upstream));
    if uv.iter().min() < cv.iter().min() {
        weaker.push(format!(
            "versions {} upstream, client {}",
            version_span(&uv),
            version_span(&cv)
        ));
    }
    let dropped_versions: Vec<u16> = cv
        .iter()
        .copied()
        .filter(|v| (allowed.min_version..=allowed.max_version).contains(v) && !uv.contains(v))
        .collect();
    if !dropped_versions.is_empty() {
        weaker.push(format!("dropped versions {dropped_versions:04x?}"));
    }

    let (c12, u12) = (tls12(&client.cipher_suites), tls12(&upstream.cipher_suites));
    let allowed12: Vec<u16> = allowed.tls12_suites.iter().map(|(id, _)| *id).collect();
    if !subset(&u12, &c12) {
        weaker.push(format!("TLS 1.2 suites the client did not offer: {:04x?}", u12));
    }
    let dropped12: Vec<u16> = c12
        .iter()
        .copied()
        .filter(|s| allowed12.contains(s) && !u12.contains(s))
        .collect();
    if !dropped12.is_empty() && uv.iter().any(|v| *v <= TLS1_2) {
        weaker.push(format!("dropped TLS 1.2 suites {dropped12:04x?}"));
    }
    let (c13, u13) = (tls13(&client.cipher_suites), tls13(&upstream.cipher_suites));
    if client.offers_tls13() && !subset(&u13, &c13) {
        weaker.push(format!("TLS 1.3 suites the client did not offer: {u13:04x?}"));
    }

    let added_groups: Vec<u16> = upstream
        .groups
        .iter()
        .copied()
        .filter(|g| !client.groups.contains(g) && !is_post_quantum(*g))
        .collect();
    if !client.groups.is_empty() && !added_groups.is_empty() {
        weaker.push(format!(
            "classical groups the client did not offer: {added_groups:04x?}"
        ));
    }
    let dropped_groups: Vec<u16> = client
        .groups
        .iter()
        .copied()
        .filter(|g| allowed.groups.contains(g) && !upstream.groups.contains(g))
        .collect();
    if !dropped_groups.is_empty() {
        weaker.push(format!("dropped groups {dropped_groups:04x?}"));
    }
    let client_pq_share = client.key_share_groups.iter().any(|g| is_post_quantum(*g));
    let upstream_pq_share = upstream.key_share_groups.iter().any(|g| is_post_quantum(*g));
    if client_pq_share && !upstream_pq_share {
        weaker.push("no post-quantum key share upstream, the client sent one".to_string());
    }
    if upstream
        .key_share_groups
        .iter()
        .any(|g| !is_post_quantum(*g) && !client.key_share_groups.contains(g))
        && !client.key_share_groups.is_empty()
    {
        weaker.push(format!(
            "classical key shares the client did not send: {:04x?}",
            upstream.key_share_groups
        ));
    }

    let (cs, us) = (&client.signature_algorithms, &upstream.signature_algorithms);
    if !cs.is_empty() && !subset(us, cs) {
        weaker.push(format!("signature algorithms the client did not offer: {us:04x?}"));
    }
    let dropped_sigalgs: Vec<u16> = cs
        .iter()
        .copied()
        .filter(|s| allowed.signature_algorithms.contains(s) && !us.contains(s))
        .collect();
    if !dropped_sigalgs.is_empty() {
        weaker.push(format!("dropped signature algorithms {dropped_sigalgs:04x?}"));
    }

    if !weaker.is_empty() {
        return Err(format!("{name}: {}", weaker.join("; ")));
    }
    Ok(format!(
        "| {name} | {} | {} | {} | {} | {} | {} |",
        cell(&version_span(&cv), &version_span(&uv)),
        cell(&c12.len().to_string(), &u12.len().to_string()),
        cell(
            &names_of(&client.groups, names::group_name),
            &names_of(&upstream.groups, names::group_name)
        ),
        cell(
            &names_of(&client.key_share_groups, names::group_name),
            &names_of(&upstream.key_share_groups, names::group_name)
        ),
        cell(&cs.len().to_string(), &us.len().to_string()),
        if client_pq_share || upstream_pq_share {
            "post-quantum upstream"
        } else {
            "classical"
        },
    ))
}

/// The issue's table: real clients' hellos against what loupe sends upstream with the
/// default profile. Run with `--nocapture` to see it; the README carries it.
#[test]
fn the_upstream_hello_is_never_weaker_than_real_clients_hellos() {
    let profile = Profile::default();
    let ctx = context(&profile);
    let allowed = &ctx_offer(&ctx);
    let mut rows = vec![
        "| client | versions | TLS 1.2 suites (count) | groups | key shares | signature algorithms (count) | key exchange |"
            .to_string(),
        "|---|---|---|---|---|---|---|".to_string(),
    ];
    let mut failures = Vec::new();
    for (name, text) in FIXTURES {
        let flight = hex::decode(text.trim()).expect("fixture hex");
        let client = hello_of(&flight);
        let upstream = upstream_hello(&client, &flight, &ctx);
        match compare(name, &client, &upstream, allowed) {
            Ok(row) => rows.push(row),
            Err(why) => failures.push(why),
        }
        if client.key_share_groups.contains(&0x11ec) {
            assert!(
                upstream.key_share_groups.contains(&0x11ec),
                "{name}: the client sent an X25519MLKEM768 share, upstream did not: {:04x?}",
                upstream.key_share_groups
            );
        }
        assert_eq!(
            upstream.groups.first(),
            Some(&0x11ec),
            "{name}: X25519MLKEM768 is not first upstream"
        );
        assert_eq!(upstream.sni, client.sni, "{name}: the server name changed");
        assert_eq!(upstream.alpn, client.alpn, "{name}: the ALPN list changed");
        assert!(
            upstream.extensions.contains(&5),
            "{name}: upstream asks for no stapled OCSP response (status_request)"
        );
    }
    eprintln!("{}", rows.join("\n"));
    assert!(
        failures.is_empty(),
        "upstream weaker than the client:\n{}",
        failures.join("\n")
    );
    assert_eq!(rows.len(), FIXTURES.len() + 2);
}

fn ctx_offer(ctx: &SplitTlsContext) -> ProfileOffer {
    ctx.profile_offer().clone()
}

/// A profile narrower than the client: the profile wins, and upstream still drops nothing
/// the profile allows and the client offered.
#[test]
fn a_narrow_profile_narrows_and_never_widens() {
    let profile = Profile {
        groups: "X25519MLKEM768:P-384".to_string(),
        cipher_list: "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384".to_string(),
        ..Profile::default()
    };
    let ctx = context(&profile);
    let (_, text) = FIXTURES[0];
    let flight = hex::decode(text.trim()).expect("hex");
    let client = hello_of(&flight);
    let upstream = upstream_hello(&client, &flight, &ctx);
    assert_eq!(upstream.groups, [0x11ec, 0x0018]);
    assert_eq!(tls12(&upstream.cipher_suites), [0xc02c, 0xc030]);
    compare("chromium, narrow profile", &client, &upstream, ctx.profile_offer()).expect("never weaker");
}

fn synthetic(groups: &[u16], shares: &[u16]) -> ClientHello {
    ClientHello {
        legacy_version: TLS1_2,
        supported_versions: vec![TLS1_3, TLS1_2],
        cipher_suites: vec![0x1301, 0x1302, 0xc02b, 0xc02f],
        groups: groups.to_vec(),
        signature_algorithms: vec![0x0403, 0x0804, 0x0401],
        key_share_groups: shares.to_vec(),
        ..ClientHello::default()
    }
}

fn default_offer() -> ProfileOffer {
    ctx_offer(&context(&Profile::default()))
}

#[test]
fn only_a_post_quantum_share_is_mirrored_exactly() {
    let offer = default_offer()
        .for_client(&synthetic(&[0x11ec, 0x001d], &[0x11ec]))
        .expect("offer");
    assert_eq!(offer.key_shares.as_deref(), Some(&[0x11ec][..]));
    assert_eq!(offer.groups, [0x11ec, 0x001d]);
}

#[test]
fn a_classical_client_gets_a_post_quantum_share_added() {
    let offer = default_offer()
        .for_client(&synthetic(&[0x001d, 0x0017], &[0x001d]))
        .expect("offer");
    assert_eq!(offer.groups, [0x11ec, 0x001d, 0x0017]);
    assert_eq!(offer.key_shares.as_deref(), Some(&[0x11ec, 0x001d][..]));
}

#[test]
fn a_tls13_only_client_gets_a_tls13_only_upstream() {
    let mut hello = synthetic(&[0x001d], &[0x001d]);
    hello.supported_versions = vec![TLS1_3];
    hello.cipher_suites = vec![0x1302];
    let offer = default_offer().for_client(&hello).expect("offer");
    assert_eq!((offer.min_version, offer.max_version), (TLS1_3, TLS1_3));
    assert_eq!(offer.tls13_suites, [0x1302]);
}

#[test]
fn a_tls12_client_without_groups_or_versions_gets_the_profile() {
    let hello = ClientHello {
        legacy_version: TLS1_2,
        cipher_suites: vec![0xc02f, 0x009c],
        ..ClientHello::default()
    };
    let allowed = default_offer();
    let offer = allowed.for_client(&hello).expect("offer");
    assert_eq!(offer.groups, allowed.groups);
    assert_eq!(offer.signature_algorithms, allowed.signature_algorithms);
    assert_eq!(
        offer.tls12_suites.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        [0xc02f]
    );
    // A TLS 1.2 client still gets TLS 1.3 upstream: stronger, so allowed.
    assert_eq!(offer.max_version, TLS1_3);
    assert_eq!(offer.tls13_suites, TLS13_SUITES);
}

#[test]
fn a_client_with_only_sha1_signatures_is_a_shortfall() {
    let mut hello = synthetic(&[0x001d], &[0x001d]);
    hello.signature_algorithms = vec![0x0201, 0x0203];
    let err = default_offer().for_client(&hello).expect_err("nothing in common");
    assert_eq!(
        err.to_string(),
        "the client offers no signature algorithm the profile allows"
    );
}

#[test]
fn a_tls12_client_with_no_allowed_suite_is_a_shortfall() {
    let hello = ClientHello {
        legacy_version: TLS1_2,
        cipher_suites: vec![0x002f],
        ..ClientHello::default()
    };
    let err = default_offer().for_client(&hello).expect_err("nothing in common");
    assert_eq!(
        err.to_string(),
        "the client offers no TLS version with a cipher suite the profile allows"
    );
}

#[test]
fn legacy_servers_offers_the_whole_profile_below_the_client() {
    let profile = Profile {
        min_version: 0x0301,
        allow_sha1: true,
        legacy_servers: true,
        cipher_list: format!("{}:ECDHE-RSA-AES128-SHA", Profile::default().cipher_list),
        ..Profile::default()
    };
    let allowed = ctx_offer(&context(&profile));
    let offer = allowed.for_client(&synthetic(&[0x001d], &[0x001d])).expect("offer");
    assert_eq!(offer.min_version, 0x0301);
    assert!(offer.tls12_suites.iter().any(|(id, _)| *id == 0xc013), "{offer:?}");
    assert_eq!(offer.signature_algorithms, allowed.signature_algorithms);
    assert_eq!(offer.groups, allowed.groups);
    // Key shares still follow the client, with the post-quantum one added.
    assert_eq!(offer.key_shares.as_deref(), Some(&[0x11ec, 0x001d][..]));
}

#[test]
fn signature_algorithm_names_parse_as_boringssl_does() {
    assert_eq!(signature_algorithm_id("ECDSA+SHA256"), Some(0x0403));
    assert_eq!(signature_algorithm_id("RSA-PSS+SHA384"), Some(0x0805));
    assert_eq!(signature_algorithm_id("PSS+SHA512"), Some(0x0806));
    assert_eq!(signature_algorithm_id("RSA+SHA1"), Some(0x0201));
    assert_eq!(signature_algorithm_id("rsa_pss_rsae_sha256"), Some(0x0804));
    assert_eq!(signature_algorithm_id("ed25519"), Some(0x0807));
    assert_eq!(signature_algorithm_id("PSS+SHA1"), None);
    assert_eq!(signature_algorithm_id("DSA+SHA256"), None);
    assert_eq!(group_id("P-256"), Some(0x0017));
    assert_eq!(group_id("X25519MLKEM768"), Some(0x11ec));
    assert_eq!(group_id("x448"), None);
}

/// Every `[[profile]]` table in the README's TOML examples, parsed as the daemon parses
/// a configuration file (one profile per file, so that same-named examples coexist).
fn readme_profiles() -> Vec<loupe_control::config::Config> {
    let readme = include_str!("../../../../README.md");
    let mut out = Vec::new();
    let mut in_toml = false;
    let mut table: Option<String> = None;
    let mut finish = |table: &mut Option<String>| {
        if let Some(text) = table.take() {
            let config = loupe_control::config::Config::parse(&text, std::path::Path::new("README.md"))
                .unwrap_or_else(|e| panic!("a README profile does not parse: {e}\n{text}"));
            out.push(config);
        }
    };
    for line in readme.lines() {
        if line.starts_with("```") {
            finish(&mut table);
            in_toml = line == "```toml";
            continue;
        }
        if !in_toml {
            continue;
        }
        let header = line.trim_start().starts_with('[');
        if header {
            finish(&mut table);
            if line.trim() == "[[profile]]" {
                table = Some(String::from("[[profile]]\n"));
            }
        } else if let Some(text) = table.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    finish(&mut table);
    out
}

/// Issue #15: the parity comparison against every profile the README shows. For each
/// profile and real client, loupe either refuses the client (nothing in common, the
/// client leg could not be negotiated either) or sends an upstream hello no weaker than
/// the client's, unless `loupe check` names the profile as one that may weaken it.
#[test]
fn readme_profiles_never_weaken_the_hello_unless_loupe_check_says_so() {
    let configs = readme_profiles();
    assert!(
        configs.len() >= 5,
        "only {} profiles found in the README",
        configs.len()
    );
    let mut weakening = Vec::new();
    for config in &configs {
        let settings = &config.profiles[0];
        let profile = Profile::from_config(settings);
        let ctx = context(&profile);
        let allowed = ctx_offer(&ctx);
        let notes = crate::daemon::check_notes(config);
        let named = notes.iter().any(|n| n.contains(&format!("{:?}", settings.name)));
        let mut served = 0;
        for (client_name, text) in FIXTURES {
            let flight = hex::decode(text.trim()).expect("fixture hex");
            let client = hello_of(&flight);
            if allowed.for_client(&client).is_err() {
                continue;
            }
            served += 1;
            let upstream = upstream_hello(&client, &flight, &ctx);
            if let Err(why) = compare(client_name, &client, &upstream, &allowed) {
                if !named {
                    weakening.push(format!("profile {:?}: {why}", settings.name));
                }
            }
        }
        assert!(
            served > 0,
            "profile {:?} served none of the real clients",
            settings.name
        );
    }
    assert!(
        weakening.is_empty(),
        "README profiles weaken the hello and `loupe check` does not say so:\n{}",
        weakening.join("\n")
    );
}

/// The test above can fail: a profile that widens the hello is caught unless named.
#[test]
fn a_weakening_profile_is_caught_and_named_by_check() {
    let text = "[[profile]]\nname = \"old\"\nmin_version = \"1.0\"\nallow_sha1 = true\nlegacy_servers = true\n";
    let config = loupe_control::config::Config::parse(text, std::path::Path::new("t.toml")).expect("parses");
    let profile = Profile::from_config(&config.profiles[0]);
    let ctx = context(&profile);
    let (name, hex_text) = FIXTURES[0];
    let flight = hex::decode(hex_text.trim()).expect("hex");
    let client = hello_of(&flight);
    let upstream = upstream_hello(&client, &flight, &ctx);
    assert!(
        compare(name, &client, &upstream, &ctx_offer(&ctx)).is_err(),
        "legacy_servers did not widen the hello below Chromium's"
    );
    let notes = crate::daemon::check_notes(&config);
    assert!(
        notes.iter().any(|n| n.contains("\"old\"") && n.contains("weaker")),
        "{notes:?}"
    );
}

#[test]
fn a_predicted_classical_share_replaces_the_post_quantum_one_and_keeps_the_groups() {
    let mut offer = default_offer()
        .for_client(&synthetic(&[0x001d, 0x0017], &[0x001d]))
        .expect("offer");
    assert!(offer.sends_post_quantum_share());
    assert!(offer.predict_key_share(0x001d));
    assert_eq!(offer.key_shares.as_deref(), Some(&[0x001d][..]));
    assert_eq!(
        offer.groups,
        [0x11ec, 0x001d, 0x0017],
        "the post-quantum group stays offered"
    );
    assert!(!offer.sends_post_quantum_share());
}

#[test]
fn a_prediction_outside_the_offer_or_post_quantum_changes_nothing() {
    let client = synthetic(&[0x11ec, 0x001d], &[0x11ec, 0x001d]);
    let untouched = default_offer().for_client(&client).expect("offer");
    for group in [0x0018, 0x11ec] {
        let mut offer = untouched.clone();
        assert!(!offer.predict_key_share(group), "{group:#06x}");
        assert_eq!(offer, untouched);
    }
}

#[test]
fn without_a_post_quantum_share_there_is_nothing_to_predict() {
    let profile = Profile {
        groups: "X25519:P-256".to_string(),
        ..Profile::default()
    };
    let mut offer = ctx_offer(&context(&profile))
        .for_client(&synthetic(&[0x001d, 0x0017], &[0x001d]))
        .expect("offer");
    assert!(!offer.sends_post_quantum_share());
    assert!(!offer.predict_key_share(0x0017));
    assert_eq!(offer.key_shares.as_deref(), Some(&[0x001d][..]));
}
