//! Suricata rule files as loupe loads them: comments, `\` continuations, variables,
//! every option's value, duplicate sids.
//!
//! Input: a rules file's bytes, loaded by `load_reader` (the function the daemon and
//! `loupe check` use for each file) with `$HOME_NET`-style variables set.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::io::Cursor;
use std::path::Path;

use libfuzzer_sys::fuzz_target;

mod signatures;

use signatures::load::{load_reader, LoadedRules};

fn load(data: &[u8], vars: &HashMap<String, String>) -> LoadedRules {
    let mut loaded = LoadedRules::default();
    let mut first_of_sid = HashMap::new();
    load_reader(
        Cursor::new(data),
        Path::new("fuzz.rules"),
        vars,
        &mut first_of_sid,
        &mut loaded,
    );
    loaded
}

fuzz_target!(|data: &[u8]| {
    let vars: HashMap<String, String> = [
        ("HOME_NET", "[198.18.0.0/15,!198.18.0.1]"),
        ("EXTERNAL_NET", "!$HOME_NET"),
        ("HTTP_SERVERS", "$HOME_NET"),
        ("HTTP_PORTS", "[80,443,8000:8080]"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let loaded = load(data, &vars);
    let lines = data.split(|&b| b == b'\n').count();

    // Every rule is either loaded or reported, at a line of the file.
    assert_eq!(loaded.rules.len(), loaded.origins.len());
    assert_eq!(loaded.report.loaded(), loaded.rules.len());
    for (_, line) in &loaded.origins {
        assert!((1..=lines).contains(line), "origin line {line} of {lines}");
    }
    for skipped in &loaded.report.skipped {
        assert!((1..=lines).contains(&skipped.line), "{skipped}");
        assert!(!skipped.error.reason.is_empty(), "{skipped}: no reason");
    }
    assert!(loaded.report.unreadable.is_empty(), "{:?}", loaded.report.unreadable);

    // Loaded rules are unique by gid:sid.
    let mut keys = HashSet::new();
    for rule in &loaded.rules {
        assert!(
            keys.insert((rule.meta.gid, rule.meta.sid)),
            "gid {} sid {} loaded twice",
            rule.meta.gid,
            rule.meta.sid
        );
    }

    // Loading is a function of the text: a second load gives the same report.
    let again = load(data, &vars);
    assert_eq!(again.origins, loaded.origins);
    assert_eq!(again.report.skipped, loaded.report.skipped);
});
