use std::path::Path;
use std::sync::Arc;

use loupe_control::config::{Config, LoadedCategory};

use super::*;

/// URL rules from a configuration's `[[url_rule]]`s, with `categories` (name, domains)
/// configured and loaded.
fn rules_with(url_rules: &str, categories: &[(&str, &[&str])]) -> UrlRules {
    let mut text = String::new();
    for (name, _) in categories {
        text.push_str(&format!("[[category]]\nname = {name:?}\nfile = \"{name}.txt\"\n\n"));
    }
    text.push_str(url_rules);
    let config = Config::parse(&text, Path::new("t.toml")).unwrap();
    let loaded: Vec<LoadedCategory> = categories
        .iter()
        .map(|(name, domains)| LoadedCategory {
            name: name.to_string(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
        })
        .collect();
    UrlRules::new(&config.url_rules, &loaded).unwrap()
}

fn rules(url_rules: &str) -> UrlRules {
    rules_with(url_rules, &[])
}

/// The name of the rule that matches, if any.
fn judge(rules: &UrlRules, host: Option<&str>, method: &str, path: &str) -> Option<String> {
    rules
        .judge(&UrlRequest { host, path, method })
        .map(|m| m.name.to_string())
}

fn get(rules: &UrlRules, host: &str, path: &str) -> Option<String> {
    judge(rules, Some(host), "GET", path)
}

#[test]
fn exact_host() {
    let r = rules("[[url_rule]]\nname = \"a\"\nhost = [\"www.example.com\"]\naction = \"block\"\n");
    assert_eq!(get(&r, "www.example.com", "/").as_deref(), Some("a"));
    assert_eq!(get(&r, "example.com", "/"), None);
    assert_eq!(get(&r, "x.www.example.com", "/"), None);
    assert_eq!(get(&r, "www.example.com.evil", "/"), None);
    assert_eq!(judge(&r, None, "GET", "/"), None, "a host condition needs a host");
}

#[test]
fn wildcard_host_covers_names_below_not_the_apex() {
    let r = rules("[[url_rule]]\nname = \"a\"\nhost = [\"*.Example.com\"]\naction = \"block\"\n");
    assert_eq!(get(&r, "www.example.com", "/").as_deref(), Some("a"));
    assert_eq!(get(&r, "a.b.example.com", "/").as_deref(), Some("a"));
    assert_eq!(get(&r, "example.com", "/"), None);
    assert_eq!(get(&r, "notexample.com", "/"), None);
    assert_eq!(get(&r, ".example.com", "/"), None);
}

#[test]
fn hosts_are_normalised() {
    let r = rules("[[url_rule]]\nname = \"a\"\nhost = [\"www.example.com\", \"10.0.0.1\"]\naction = \"block\"\n");
    for host in [
        "www.example.com:443",
        "WWW.Example.COM",
        "www.example.com.",
        "WWW.EXAMPLE.COM.:8443",
        " www.example.com ",
        "user@www.example.com",
        "10.0.0.1:80",
    ] {
        assert_eq!(get(&r, host, "/").as_deref(), Some("a"), "{host}");
    }
    for host in ["www.example.com..", "", ":443", "www.example.co"] {
        assert_eq!(get(&r, host, "/"), None, "{host:?}");
    }
    assert_eq!(normalize_host("[2001:db8::1]:443"), Some("2001:db8::1"));
    assert_eq!(normalize_host("[2001:DB8::1]"), Some("2001:DB8::1"));
    assert_eq!(normalize_host("2001:db8::1"), Some("2001:db8::1"));
    assert_eq!(normalize_host("Example.com.:8443"), Some("Example.com"));
    assert_eq!(normalize_host("[]:443"), None);
    assert_eq!(normalize_host("."), None);
}

#[test]
fn prefix_paths() {
    let r = rules("[[url_rule]]\nname = \"admin\"\npath = [\"/admin/\", \"/wp-login.php\"]\naction = \"block\"\n");
    assert_eq!(get(&r, "h", "/admin/").as_deref(), Some("admin"));
    assert_eq!(get(&r, "h", "/admin/users/1").as_deref(), Some("admin"));
    assert_eq!(get(&r, "h", "/wp-login.php?redirect=1").as_deref(), Some("admin"));
    assert_eq!(
        judge(&r, None, "GET", "/admin/x").as_deref(),
        Some("admin"),
        "no host needed"
    );
    assert_eq!(get(&r, "h", "/admin"), None);
    assert_eq!(get(&r, "h", "/Admin/"), None, "paths are case-sensitive");
    assert_eq!(get(&r, "h", "/x/admin/"), None);
}

#[test]
fn glob_paths() {
    let r = rules("[[url_rule]]\nname = \"delete\"\npath = [\"/api/*/delete\", \"/v?/x\"]\naction = \"block\"\n");
    assert_eq!(get(&r, "h", "/api/users/delete").as_deref(), Some("delete"));
    assert_eq!(
        get(&r, "h", "/api/users/7/delete").as_deref(),
        Some("delete"),
        "* crosses /"
    );
    assert_eq!(get(&r, "h", "/api/%2a/delete").as_deref(), Some("delete"));
    // Servers merge slashes (nginx's merge_slashes): `/api//delete` is `/api/delete`.
    assert_eq!(get(&r, "h", "/api//delete"), None);
    assert_eq!(get(&r, "h", "/api/users/delete?now=1").as_deref(), Some("delete"));
    assert_eq!(get(&r, "h", "/api/users/delete/"), None, "a glob is the whole path");
    assert_eq!(get(&r, "h", "/api/delete"), None);
    assert_eq!(get(&r, "h", "/v1/x").as_deref(), Some("delete"));
    assert_eq!(get(&r, "h", "/vé/x").as_deref(), Some("delete"), "? is one character");
    assert_eq!(get(&r, "h", "/v12/x"), None);
    assert_eq!(get(&r, "h", "/v/x"), None);
}

#[test]
fn glob_matching() {
    let cases = [
        ("*", "", true),
        ("*", "/anything", true),
        ("/a*", "/a", true),
        ("/a*b*c", "/aXbYc", true),
        ("/a*b*c", "/abcbc", true),
        ("/a*b*c", "/abcb", false),
        ("/a*c", "/abcbd", false),
        ("/*.php", "/x/y.php", true),
        ("/*.php", "/x/y.php5", false),
        ("/?", "/", false),
        ("/?*", "/ü", true),
        ("/a?c", "/aüc", true),
        ("/a?c", "/aüüc", false),
    ];
    for (glob, text, expected) in cases {
        assert_eq!(
            glob_matches(glob.as_bytes(), text.as_bytes()),
            expected,
            "{glob} {text}"
        );
    }
    // No exponential blow-up on a hostile path.
    let path = format!("/{}", "a".repeat(10_000));
    assert!(!glob_matches(b"/*a*a*a*a*a*b", path.as_bytes()));
}

#[test]
fn methods_compare_in_uppercase() {
    let r = rules("[[url_rule]]\nname = \"writes\"\nmethod = [\"post\", \"DELETE\"]\naction = \"alert\"\n");
    assert_eq!(judge(&r, Some("h"), "POST", "/").as_deref(), Some("writes"));
    assert_eq!(judge(&r, Some("h"), "delete", "/").as_deref(), Some("writes"));
    assert_eq!(judge(&r, Some("h"), "GET", "/"), None);
    assert_eq!(judge(&r, Some("h"), "POSTX", "/"), None);
}

#[test]
fn categories_match_the_host() {
    let r = rules_with(
        "[[url_rule]]\nname = \"gambling\"\ncategory = [\"gambling\"]\naction = \"block\"\n",
        &[
            ("news", &["news.example"]),
            ("gambling", &["casino.example", "bet.lab"]),
        ],
    );
    assert_eq!(get(&r, "casino.example", "/").as_deref(), Some("gambling"));
    assert_eq!(get(&r, "WWW.Casino.Example.:443", "/").as_deref(), Some("gambling"));
    assert_eq!(get(&r, "a.b.bet.lab", "/").as_deref(), Some("gambling"));
    assert_eq!(get(&r, "news.example", "/"), None, "another category");
    assert_eq!(get(&r, "notcasino.example", "/"), None);
    assert_eq!(judge(&r, None, "GET", "/"), None);
    // A name longer than any DNS name is still looked up by the suffixes that fit.
    let long = format!("{}.casino.example", ["x"; 200].join("."));
    assert!(long.len() > 253);
    assert_eq!(get(&r, &long, "/").as_deref(), Some("gambling"));
}

#[test]
fn every_condition_must_hold() {
    let r = rules(
        "[[url_rule]]\nname = \"a\"\nhost = [\"*.shop.lab\"]\npath = [\"/cart/\"]\nmethod = [\"POST\"]\n\
         action = \"block\"\n",
    );
    assert_eq!(
        judge(&r, Some("www.shop.lab"), "POST", "/cart/add").as_deref(),
        Some("a")
    );
    assert_eq!(judge(&r, Some("www.shop.lab"), "GET", "/cart/add"), None);
    assert_eq!(judge(&r, Some("www.shop.lab"), "POST", "/list"), None);
    assert_eq!(judge(&r, Some("www.other.lab"), "POST", "/cart/add"), None);
}

#[test]
fn first_match_wins_and_no_match_is_none() {
    let r = rules(
        "[[url_rule]]\nname = \"open-docs\"\nhost = [\"docs.lab\"]\npath = [\"/admin/help\"]\naction = \"allow\"\n\n\
         [[url_rule]]\nname = \"admin\"\npath = [\"/admin/\"]\naction = \"block\"\n\n\
         [[url_rule]]\nname = \"watch\"\nhost = [\"docs.lab\"]\naction = \"alert\"\n",
    );
    let m = r
        .judge(&UrlRequest {
            host: Some("docs.lab"),
            path: "/admin/help/x",
            method: "GET",
        })
        .unwrap();
    assert_eq!(
        (m.rule_index, &*m.name, m.action, m.action.as_str()),
        (0, "open-docs", UrlAction::Allow, "allow")
    );
    let m = r
        .judge(&UrlRequest {
            host: Some("docs.lab"),
            path: "/admin/users",
            method: "GET",
        })
        .unwrap();
    assert_eq!((m.rule_index, &*m.name, m.action.as_str()), (1, "admin", "block"));
    let m = r
        .judge(&UrlRequest {
            host: Some("docs.lab"),
            path: "/",
            method: "GET",
        })
        .unwrap();
    assert_eq!((m.rule_index, m.action.as_str()), (2, "alert"));
    assert_eq!(get(&r, "other.lab", "/"), None, "no match: allowed by default");
    assert_eq!(
        r.hits(),
        vec![
            ("open-docs".to_string(), 1),
            ("admin".to_string(), 1),
            ("watch".to_string(), 1)
        ]
    );
    get(&r, "x", "/admin/");
    assert_eq!(r.hits()[1].1, 2);
    assert_eq!(r.names().collect::<Vec<_>>(), ["open-docs", "admin", "watch"]);
}

#[test]
fn no_rules_allow_everything() {
    let r = UrlRules::default();
    assert!(r.is_empty());
    assert_eq!(get(&r, "x", "/"), None);
    assert!(r.hits().is_empty());
    let r = rules("[[url_rule]]\nname = \"all\"\naction = \"block\"\n");
    assert_eq!(
        judge(&r, None, "GET", "*").as_deref(),
        Some("all"),
        "no condition matches all"
    );
}

#[test]
fn unknown_category_is_an_error() {
    let config = Config::parse(
        "[[category]]\nname = \"c\"\nfile = \"c.txt\"\n\n\
         [[url_rule]]\nname = \"a\"\ncategory = [\"c\"]\naction = \"block\"\n",
        Path::new("t.toml"),
    )
    .unwrap();
    let err = UrlRules::new(&config.url_rules, &[]).unwrap_err();
    assert_eq!(err, "url_rule \"a\": unknown category \"c\"");
    let err = UrlRules::with_categories(&config.url_rules, Arc::default()).unwrap_err();
    assert_eq!(err, "url_rule \"a\": unknown category \"c\"");
}

#[test]
fn host_patterns_ignore_case() {
    assert!(HostPattern::new("*.EXAMPLE.com").matches("A.example.COM"));
    assert!(HostPattern::new("Example.com").matches("example.COM"));
    assert!(!HostPattern::new("*.example.com").matches("aexample.com"));
}

#[test]
fn paths_are_matched_as_servers_resolve_them() {
    let r = rules("[[url_rule]]\nname = \"admin\"\npath = [\"/admin/\"]\naction = \"block\"\n");
    for evasion in [
        "/%61dmin/users",
        "/x/../admin/users",
        "/./admin/users",
        "//admin//users",
        "/admin%2fusers",
        "\\admin\\users",
        "/admin/.",
        "/static/%2e%2e/admin/",
        "/a%5c..%5cadmin/",
    ] {
        assert_eq!(get(&r, "h", evasion).as_deref(), Some("admin"), "{evasion}");
    }
    for innocent in ["/administrator", "/x/admin/", "/%zzadmin/", "/admin"] {
        assert_eq!(get(&r, "h", innocent), None, "{innocent}");
    }
}

#[test]
fn normalize_path_borrows_plain_paths_and_resolves_the_rest() {
    assert!(matches!(normalize_path("/a/b.html"), std::borrow::Cow::Borrowed(_)));
    assert_eq!(normalize_path("/a/./b/../c"), "/a/c");
    assert_eq!(normalize_path("/../../etc/passwd"), "/etc/passwd");
    assert_eq!(normalize_path("/a//b///"), "/a/b/");
    assert_eq!(normalize_path("/%7euser/%"), "/~user/%");
    assert_eq!(normalize_path("/%e2%82%ac"), "/€");
    assert_eq!(normalize_path("/a/.."), "/");
}
