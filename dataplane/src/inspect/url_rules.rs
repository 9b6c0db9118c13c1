//! URL rules (`[[url_rule]]`), sans-IO: an HTTP request's host, path and method in, the
//! first matching rule's action out. No match means the request is allowed.
//!
//! Also the name matching the decryption policy shares: [`HostPattern`] (`www.example.com`
//! or `*.example.com`) and [`Categories`] (named domain lists). It lives here, below the
//! policy, so that the policy imports the inspection side and never the other way round.
//!
//! Judging allocates nothing: patterns are compiled once per policy snapshot (hosts
//! lowercase, methods uppercase), the request's host is normalised by slicing, and names
//! are compared ASCII-case-insensitively. Paths are compared as the client sent them:
//! case-sensitive, not percent-decoded, dot segments not removed.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use loupe_control::config::{LoadedCategory, UrlRule};

pub use loupe_control::config::UrlAction;

#[cfg(test)]
mod tests;

/// The longest DNS name (RFC 1035 §2.3.4, without the trailing dot). Categories hold
/// nothing longer, so a longer name is looked up by its suffixes that fit.
const MAX_NAME: usize = 253;

/// A name condition: `www.example.com` exactly, or `*.example.com` (any name below
/// `example.com`, not `example.com` itself). Compared ASCII-case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    Below(String),
}

impl HostPattern {
    /// From a validated pattern (`sni` of a `[[rule]]`, `host` of a `[[url_rule]]`).
    pub fn new(text: &str) -> HostPattern {
        let text = text.to_ascii_lowercase();
        match text.strip_prefix("*.") {
            Some(suffix) => HostPattern::Below(suffix.to_string()),
            None => HostPattern::Exact(text),
        }
    }

    /// Whether `name` (without port or trailing dot, any case) matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            HostPattern::Exact(exact) => name.eq_ignore_ascii_case(exact),
            HostPattern::Below(suffix) => {
                let (name, suffix) = (name.as_bytes(), suffix.as_bytes());
                name.len() > suffix.len() + 1
                    && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                    && name[name.len() - suffix.len() - 1] == b'.'
            }
        }
    }
}

/// Named domain lists; a domain covers itself and every name below it.
#[derive(Debug, Default)]
pub struct Categories {
    names: Vec<String>,
    /// Domain (lowercase) → bit set of the categories listing it.
    domains: HashMap<String, u64>,
}

/// Categories a policy can hold (one bit each).
pub const MAX_CATEGORIES: usize = 64;

impl Categories {
    pub fn new(loaded: &[LoadedCategory]) -> Result<Categories, String> {
        if loaded.len() > MAX_CATEGORIES {
            return Err(format!(
                "{} categories configured; loupe holds at most {MAX_CATEGORIES}",
                loaded.len()
            ));
        }
        let mut categories = Categories::default();
        for (bit, category) in loaded.iter().enumerate() {
            categories.names.push(category.name.clone());
            for domain in &category.domains {
                *categories.domains.entry(domain.to_ascii_lowercase()).or_default() |= 1 << bit;
            }
        }
        Ok(categories)
    }

    /// The bit of the category `name`.
    pub fn bit(&self, name: &str) -> Option<u64> {
        self.names.iter().position(|n| n == name).map(|i| 1 << i)
    }

    /// The categories `name` belongs to (any case, without port or trailing dot): its own
    /// entry and those of every parent domain. Allocates nothing.
    pub fn of(&self, name: &str) -> u64 {
        if self.domains.is_empty() {
            return 0;
        }
        // The longest suffix that starts a label and fits a DNS name, lowercased.
        let bytes = name.as_bytes();
        let mut start = bytes.len().saturating_sub(MAX_NAME);
        if start > 0 && bytes[start - 1] != b'.' {
            match bytes[start..].iter().position(|&b| b == b'.') {
                Some(dot) => start += dot + 1,
                None => return 0,
            }
        }
        let mut buffer = [0u8; MAX_NAME];
        let tail = &bytes[start..];
        let lower = &mut buffer[..tail.len()];
        lower.copy_from_slice(tail);
        lower.make_ascii_lowercase();
        // `start` is 0 or follows a '.', so the tail is whole characters.
        let Ok(mut name) = std::str::from_utf8(lower) else {
            return 0;
        };
        let mut set = 0;
        loop {
            set |= self.domains.get(name).copied().unwrap_or(0);
            match name.split_once('.') {
                Some((_, parent)) if !parent.is_empty() => name = parent,
                _ => return set,
            }
        }
    }

    /// The names of the categories in `set`, in configuration order.
    pub fn names_in(&self, set: u64) -> Vec<&str> {
        self.names
            .iter()
            .enumerate()
            .filter(|(i, _)| set & (1 << i) != 0)
            .map(|(_, n)| n.as_str())
            .collect()
    }
}

/// The host of a `Host` header or an `:authority` as URL rules compare it: without
/// userinfo, port, IPv6 brackets and one trailing dot (`WWW.Example.com.:8443` →
/// `WWW.Example.com`; `[2001:db8::1]:443` → `2001:db8::1`). Case is left alone (every
/// comparison ignores it). `None` when nothing is left.
pub fn normalize_host(host: &str) -> Option<&str> {
    let host = host.trim_matches(|c: char| c.is_ascii_whitespace());
    let host = host.rsplit_once('@').map_or(host, |(_, host)| host);
    let host = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split_once(']').map_or(bracketed, |(inside, _)| inside),
        None => match host.split_once(':') {
            // A second ':' makes it an IPv6 literal without brackets: no port to strip.
            Some((name, port)) if !port.contains(':') => name,
            _ => host,
        },
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    (!host.is_empty()).then_some(host)
}

/// A request as URL rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UrlRequest<'a> {
    /// `Host` (HTTP/1.x) or `:authority` (HTTP/2) as sent; normalised by [`normalize_host`].
    pub host: Option<&'a str>,
    /// The request target's path, as sent (anything from a `?` on is ignored).
    pub path: &'a str,
    /// The method, as sent (compared ASCII-case-insensitively).
    pub method: &'a str,
}

/// The rule that matched a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlMatch {
    /// The rule's index in the configuration (`[[url_rule]]` order).
    pub rule_index: usize,
    pub name: Arc<str>,
    pub action: UrlAction,
}

/// A path condition: a prefix, or a glob matched against the whole path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PathPattern {
    Prefix(Box<str>),
    /// `*`: any run of characters, `/` included; `?`: any one character.
    Glob(Box<[u8]>),
}

impl PathPattern {
    /// A pattern with `*` or `?` is a glob, any other a prefix (as `config::UrlRule` says).
    fn new(text: &str) -> PathPattern {
        if text.contains(['*', '?']) {
            PathPattern::Glob(text.as_bytes().into())
        } else {
            PathPattern::Prefix(text.into())
        }
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Prefix(prefix) => path.starts_with(&**prefix),
            PathPattern::Glob(glob) => glob_matches(glob, path.as_bytes()),
        }
    }
}

/// The length of the UTF-8 character that starts with `lead`.
fn char_len(lead: u8) -> usize {
    match lead {
        0x00..=0xbf => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

/// Whether `text` matches all of `glob`. Iterative, with one backtracking point (the last
/// `*`): O(glob × text) at worst, no recursion, no allocation. `text` is UTF-8; `?` and
/// what a `*` swallows advance it a whole character at a time.
fn glob_matches(glob: &[u8], text: &[u8]) -> bool {
    let (mut g, mut t) = (0, 0);
    // After the last `*`: where the glob resumes, and where in the text it is tried next.
    let mut resume: Option<(usize, usize)> = None;
    while t < text.len() {
        match glob.get(g) {
            Some(b'*') => {
                g += 1;
                resume = Some((g, t));
            }
            Some(b'?') => {
                g += 1;
                t += char_len(text[t]);
            }
            Some(&literal) if literal == text[t] => {
                g += 1;
                t += 1;
            }
            _ => match resume {
                Some((after_star, tried)) => {
                    let next = (tried + char_len(text[tried])).min(text.len());
                    resume = Some((after_star, next));
                    g = after_star;
                    t = next;
                }
                None => return false,
            },
        }
    }
    glob[g.min(glob.len())..].iter().all(|&b| b == b'*')
}

struct CompiledUrlRule {
    name: Arc<str>,
    hosts: Box<[HostPattern]>,
    paths: Box<[PathPattern]>,
    /// Uppercase.
    methods: Box<[Box<str>]>,
    /// Bit set of categories; 0 = no category condition.
    categories: u64,
    action: UrlAction,
}

impl CompiledUrlRule {
    fn needs_host(&self) -> bool {
        !self.hosts.is_empty() || self.categories != 0
    }
}

/// The URL rules of one policy snapshot, compiled, with a hit counter per rule.
pub struct UrlRules {
    rules: Box<[CompiledUrlRule]>,
    categories: Arc<Categories>,
    /// Requests each rule decided (index = rule index).
    hits: Box<[AtomicU64]>,
}

impl Default for UrlRules {
    /// No rules: every request is allowed.
    fn default() -> Self {
        UrlRules {
            rules: Box::new([]),
            categories: Arc::default(),
            hits: Box::new([]),
        }
    }
}

impl fmt::Debug for UrlRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.rules.iter().map(|r| &r.name)).finish()
    }
}

impl UrlRules {
    /// Compiles `rules` (validated by `loupe_control`: names, patterns) with the loaded
    /// `categories` they name; a category not among them is an error.
    pub fn new(rules: &[UrlRule], categories: &[LoadedCategory]) -> Result<UrlRules, String> {
        UrlRules::with_categories(rules, Arc::new(Categories::new(categories)?))
    }

    /// As [`UrlRules::new`], sharing categories already built (the policy's).
    pub fn with_categories(rules: &[UrlRule], categories: Arc<Categories>) -> Result<UrlRules, String> {
        let mut compiled = Vec::with_capacity(rules.len());
        for rule in rules {
            let mut bits = 0;
            for name in &rule.category {
                bits |= categories
                    .bit(name)
                    .ok_or_else(|| format!("url_rule {:?}: unknown category {name:?}", rule.name))?;
            }
            compiled.push(CompiledUrlRule {
                name: rule.name.as_str().into(),
                hosts: rule.host.iter().map(|h| HostPattern::new(h)).collect(),
                paths: rule.path.iter().map(|p| PathPattern::new(p)).collect(),
                methods: rule.method.iter().map(|m| m.to_ascii_uppercase().into()).collect(),
                categories: bits,
                action: rule.action,
            });
        }
        Ok(UrlRules {
            hits: compiled.iter().map(|_| AtomicU64::new(0)).collect(),
            rules: compiled.into(),
            categories,
        })
    }

    /// The first rule that matches `request`, counted in its hits; `None` (allowed) when
    /// none does. The path is matched as servers resolve it ([`normalize_path`]), so that
    /// `/%61dmin/` or `/x/../admin/` cannot slip past a rule on `/admin/`. A rule with `host` or `category` never matches a request without a host.
    pub fn judge(&self, request: &UrlRequest<'_>) -> Option<UrlMatch> {
        let host = request.host.and_then(normalize_host);
        let raw_path = request.path.split_once('?').map_or(request.path, |(path, _)| path);
        let normalized = normalize_path(raw_path);
        let path: &str = &normalized;
        // The host's categories, looked up once, when a rule first asks.
        let mut host_categories: Option<u64> = None;
        for (index, rule) in self.rules.iter().enumerate() {
            if !rule.methods.is_empty() && !rule.methods.iter().any(|m| m.eq_ignore_ascii_case(request.method)) {
                continue;
            }
            if !rule.paths.is_empty() && !rule.paths.iter().any(|p| p.matches(path)) {
                continue;
            }
            if rule.needs_host() {
                let Some(host) = host else {
                    continue;
                };
                if !rule.hosts.is_empty() && !rule.hosts.iter().any(|p| p.matches(host)) {
                    continue;
                }
                if rule.categories != 0 {
                    let set = *host_categories.get_or_insert_with(|| self.categories.of(host));
                    if set & rule.categories == 0 {
                        continue;
                    }
                }
            }
            self.hits[index].fetch_add(1, Ordering::Relaxed);
            return Some(UrlMatch {
                rule_index: index,
                name: Arc::clone(&rule.name),
                action: rule.action,
            });
        }
        None
    }

    /// (rule name, requests it decided), in rule order.
    pub fn hits(&self) -> Vec<(String, u64)> {
        self.rules
            .iter()
            .zip(self.hits.iter())
            .map(|(rule, hits)| (rule.name.to_string(), hits.load(Ordering::Relaxed)))
            .collect()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| &*r.name)
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// A request path as a server resolves it before routing: percent escapes decoded
/// (`%61` is `a`), backslashes read as slashes (IIS does), runs of slashes merged (nginx
/// does), and `.` and `..` segments removed (RFC 3986 §5.2.4). Borrows when there is
/// nothing to do, which is the common case.
pub fn normalize_path(path: &str) -> std::borrow::Cow<'_, str> {
    let needs_work = path.contains(['%', '\\']) || path.contains("//") || path.contains("/.");
    if !needs_work {
        return std::borrow::Cow::Borrowed(path);
    }
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    // `%5c` is a backslash too: read as a slash, like a raw one.
                    let byte = (high * 16 + low) as u8;
                    decoded.push(if byte == b'\\' { b'/' } else { byte });
                    i += 3;
                    continue;
                }
                _ => decoded.push(b'%'),
            },
            b'\\' => decoded.push(b'/'),
            other => decoded.push(other),
        }
        i += 1;
    }
    let text = String::from_utf8_lossy(&decoded);
    let mut segments: Vec<&str> = Vec::new();
    for segment in text.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut out = String::with_capacity(text.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    // A trailing slash (or a trailing `.`/`..` segment) names a directory: keep it, so
    // that a prefix rule on `/admin/` still matches `/admin/.`.
    let ends_as_directory = text.ends_with('/') || text.ends_with("/.") || text.ends_with("/..");
    if out.is_empty() || ends_as_directory {
        out.push('/');
    }
    std::borrow::Cow::Owned(out)
}
