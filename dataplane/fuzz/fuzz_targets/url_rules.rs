//! URL rule matching on arbitrary requests: `normalize_path` resolves every path into a
//! canonical one (and leaves plain ones alone), path patterns match as a plain reference
//! matcher says, and categories cover a host as a plain suffix check says.
//!
//! Input, as text (lossy UTF-8), in lines: a path pattern (`*`/`?` make it a glob, else a
//! prefix), a request path, a request host, a host pattern, then category domains (one
//! category per line, domains separated by spaces; empty ones, which the configuration
//! refuses, are left out).
#![no_main]

use libfuzzer_sys::fuzz_target;

// `url_rules.rs` takes its configuration types from `loupe_control::config`; the fuzz crate
// stands in for that crate with the few types it uses, mirroring `control/src/config.rs`.
extern crate self as loupe_control;

#[allow(dead_code)]
pub mod config {
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum UrlAction {
        Allow,
        Alert,
        Block,
    }

    #[derive(Debug, Clone)]
    pub struct UrlRule {
        pub name: String,
        pub host: Vec<String>,
        pub path: Vec<String>,
        pub method: Vec<String>,
        pub category: Vec<String>,
        pub action: UrlAction,
    }

    #[derive(Debug, Clone)]
    pub struct LoadedCategory {
        pub name: String,
        pub domains: Vec<String>,
    }
}

#[path = "../../src/inspect/url_rules.rs"]
#[allow(dead_code)]
mod url_rules;

use std::borrow::Cow;

use config::{LoadedCategory, UrlAction, UrlRule};
use url_rules::{normalize_host, normalize_path, Categories, HostPattern, UrlRequest, UrlRules};

/// `*`: any run of characters; `?`: one character; anything else itself. Plain dynamic
/// programming over characters.
fn reference_glob(glob: &[char], text: &[char]) -> bool {
    // matches[j]: glob[..i] matches text[..j].
    let mut matches = vec![false; text.len() + 1];
    matches[0] = true;
    for &g in glob {
        let mut next = vec![false; text.len() + 1];
        if g == '*' {
            let mut any = false;
            for j in 0..=text.len() {
                any |= matches[j];
                next[j] = any;
            }
        } else {
            for j in 1..=text.len() {
                next[j] = matches[j - 1] && (g == '?' || g == text[j - 1]);
            }
        }
        matches = next;
    }
    matches[text.len()]
}

fn check_normalized(path: &str) {
    let normalized = normalize_path(path);
    match &normalized {
        Cow::Borrowed(same) => assert_eq!(*same, path),
        Cow::Owned(out) => {
            assert!(out.starts_with('/'), "{path:?} → {out:?}");
            assert!(!out.contains("//"), "{path:?} → {out:?}");
            for segment in out.split('/') {
                assert!(segment != "." && segment != "..", "{path:?} → {out:?}");
            }
        }
    }
    // Without percent escapes nothing new can appear, so resolving again changes nothing.
    if !path.contains('%') {
        assert_eq!(normalize_path(&normalized), normalized, "{path:?} resolved twice");
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let pattern = lines.next().unwrap_or_default();
    let path = lines.next().unwrap_or_default();
    let host = lines.next().unwrap_or_default();
    let host_pattern = lines.next().unwrap_or_default();
    let loaded: Vec<LoadedCategory> = lines
        .take(3)
        .enumerate()
        .map(|(index, line)| LoadedCategory {
            name: format!("c{index}"),
            // Configured domains are DNS names (`LoadedCategory::parse`), never empty.
            domains: line
                .split(' ')
                .filter(|domain| !domain.is_empty())
                .map(str::to_string)
                .collect(),
        })
        .collect();

    check_normalized(path);
    check_normalized(pattern);

    if let Some(normalized) = normalize_host(host) {
        assert!(!normalized.is_empty() && host.contains(normalized));
    }
    let _ = HostPattern::new(host_pattern).matches(host);

    // Categories: a domain covers itself and the names below it.
    let categories = Categories::new(&loaded).expect("at most 3 categories");
    let lower = host.to_ascii_lowercase();
    let mut expected = 0u64;
    for (bit, category) in loaded.iter().enumerate() {
        for domain in &category.domains {
            let domain = domain.to_ascii_lowercase();
            let covers = lower == domain || lower.ends_with(&format!(".{domain}"));
            if covers && domain.len() <= 253 {
                expected |= 1 << bit;
            }
        }
    }
    assert_eq!(categories.of(host), expected, "categories of {host:?}");

    // A rule on the path pattern alone matches as the reference says, on the resolved path.
    let rules = UrlRules::new(
        &[UrlRule {
            name: "fuzz".into(),
            host: Vec::new(),
            path: vec![pattern.to_string()],
            method: Vec::new(),
            category: Vec::new(),
            action: UrlAction::Block,
        }],
        &[],
    )
    .expect("a rule without categories");
    let request = UrlRequest {
        host: Some(host),
        path,
        method: "GET",
    };
    let matched = rules.judge(&request).is_some();
    let resolved = normalize_path(path.split_once('?').map_or(path, |(path, _)| path));
    let expected = if pattern.contains(['*', '?']) {
        let glob: Vec<char> = pattern.chars().collect();
        let text: Vec<char> = resolved.chars().collect();
        reference_glob(&glob, &text)
    } else {
        resolved.starts_with(pattern)
    };
    assert_eq!(
        matched, expected,
        "pattern {pattern:?} on {path:?} (resolved {resolved:?})"
    );
});
