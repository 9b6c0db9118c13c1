//! Decryption policy: one immutable, versioned snapshot of rules, profiles (with their TLS
//! contexts), categories, URL rules, inspection settings and the exclusion cache. Workers
//! hold an `Arc<Policy>`, swap it between batches, and every flow keeps the snapshot it
//! started with.
//!
//! Sans-IO: evaluation takes addresses and a server name and returns a [`Decision`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use loupe_control::config::{
    self, Cidr, Config, Inspection, LoadedCategory, NotTls, OnProtocolError, RuleAction, Timeouts,
};
use serde::{Deserialize, Serialize};

use boring::x509::store::X509Store;

use crate::inspect::engine::InspectSettings;
use crate::inspect::export::Exports;
use crate::inspect::hpack::HpackLimits;
use crate::inspect::http1::Http1Limits;
use crate::inspect::http2::Http2Limits;
use crate::inspect::signatures::{self, SignatureSet};
pub use crate::inspect::url_rules::{Categories, MAX_CATEGORIES};
use crate::inspect::url_rules::{HostPattern, UrlRules};
use crate::tls::forge::ForgedCert;
use crate::tls::session::{Profile, SplitTlsContext};
use crate::tls::trust::PinnedLeafs;

/// A profile as the workers use it: the operator's settings and the TLS contexts built
/// from them (shared by every worker).
pub struct ProfileContext {
    pub name: String,
    pub settings: config::Profile,
    pub profile: Profile,
    pub context: SplitTlsContext,
    /// TLS 1.2-and-older suites the client leg accepts, to refuse clients early.
    pub client_suites: Vec<u16>,
}

impl ProfileContext {
    pub fn new(settings: &config::Profile, trust: X509Store, pins: PinnedLeafs) -> Result<ProfileContext, String> {
        let profile = Profile::from_config(settings);
        let context = SplitTlsContext::new(&profile, trust)
            .map_err(|e| format!("profile {:?}: {e}", settings.name))?
            .with_pins(pins);
        Ok(ProfileContext {
            name: settings.name.clone(),
            settings: settings.clone(),
            client_suites: context.client_suite_ids(),
            profile,
            context,
        })
    }
}

struct CompiledRule {
    name: String,
    source: Vec<Cidr>,
    destination: Vec<Cidr>,
    ports: Vec<u16>,
    sni: Vec<HostPattern>,
    /// Bit set of categories; 0 = no category condition.
    categories: u64,
    action: RuleAction,
    profile: Option<Arc<ProfileContext>>,
    inbound: Option<Arc<ForgedCert>>,
    exports: Exports,
}

impl CompiledRule {
    fn needs_hello(&self) -> bool {
        !self.sni.is_empty() || self.categories != 0
    }

    fn matches_addresses(&self, client: SocketAddr, server: SocketAddr) -> bool {
        (self.source.is_empty() || self.source.iter().any(|c| c.contains(client.ip())))
            && (self.destination.is_empty() || self.destination.iter().any(|c| c.contains(server.ip())))
            && (self.ports.is_empty() || self.ports.contains(&server.port()))
    }

    /// With the ClientHello's name (lowercase); a rule with a name condition never matches
    /// a ClientHello without SNI.
    fn matches_name(&self, sni: Option<&str>, categories: &Categories) -> Option<String> {
        if !self.needs_hello() {
            return Some(String::new());
        }
        let sni = sni?;
        if !self.sni.is_empty() && !self.sni.iter().any(|p| p.matches(sni)) {
            return None;
        }
        if self.categories != 0 {
            let found = categories.of(sni) & self.categories;
            if found == 0 {
                return None;
            }
            return Some(format!(" (category {})", categories.names_in(found).join(", ")));
        }
        Some(String::new())
    }
}

/// What policy decided for a flow.
#[derive(Clone)]
pub struct Decision {
    /// The matching rule's name, or `default`.
    pub rule: String,
    /// Index of the rule (for its hit counter); `None` for the default action.
    pub rule_index: Option<usize>,
    pub action: RuleAction,
    /// The profile for `decrypt` and `decrypt-inbound`.
    pub profile: Option<Arc<ProfileContext>>,
    /// `decrypt-inbound`: the server's own certificate chain and key.
    pub inbound: Option<Arc<ForgedCert>>,
    /// Why, in words for the log (`rule "banks" matched (category financial)`).
    pub reason: String,
}

impl std::fmt::Debug for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decision")
            .field("rule", &self.rule)
            .field("action", &self.action)
            .field("profile", &self.profile.as_ref().map(|p| &p.name))
            .field("reason", &self.reason)
            .finish()
    }
}

/// Where an excluded server is found again: its name (SNI) when the client sent one,
/// else its address; and the port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ExclusionKey {
    pub server: String,
    pub port: u16,
}

impl ExclusionKey {
    pub fn new(sni: Option<&str>, server: SocketAddr) -> ExclusionKey {
        ExclusionKey {
            server: sni.map_or_else(|| server.ip().to_string(), str::to_ascii_lowercase),
            port: server.port(),
        }
    }
}

impl std::fmt::Display for ExclusionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.server.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            _ => write!(f, "{}:{}", self.server, self.port),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exclusion {
    pub key: ExclusionKey,
    /// Why loupe cannot decrypt it (`the server requested a client certificate`).
    pub why: String,
    /// Seconds since the Unix epoch.
    pub added: u64,
    pub expires: u64,
}

/// Servers loupe cannot decrypt, remembered for a TTL. Bounded: when full, the entry
/// closest to expiry goes first.
#[derive(Debug, Clone, Default)]
pub struct ExclusionCache {
    entries: HashMap<ExclusionKey, Exclusion>,
    ttl: Duration,
    max_entries: usize,
}

/// Seconds since the Unix epoch: the exclusion cache's clock (it is saved to disk).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ExclusionCache {
    pub fn new(ttl: Duration, max_entries: usize) -> ExclusionCache {
        ExclusionCache {
            entries: HashMap::new(),
            ttl,
            max_entries: max_entries.max(1),
        }
    }

    pub fn get(&self, key: &ExclusionKey, now: u64) -> Option<&Exclusion> {
        self.entries.get(key).filter(|e| e.expires > now)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> impl Iterator<Item = &Exclusion> {
        self.entries.values()
    }

    /// Adds (or renews) an exclusion; drops expired entries, then the soonest to expire
    /// while over the bound. Returns how many entries were evicted for room.
    pub fn insert(&mut self, key: ExclusionKey, why: String, now: u64) -> usize {
        self.entries.retain(|_, e| e.expires > now);
        let expires = now + self.ttl.as_secs();
        self.entries.insert(
            key.clone(),
            Exclusion {
                key,
                why,
                added: now,
                expires,
            },
        );
        let mut evicted = 0;
        while self.entries.len() > self.max_entries {
            let Some(soonest) = self.entries.values().min_by_key(|e| e.expires).map(|e| e.key.clone()) else {
                break;
            };
            self.entries.remove(&soonest);
            evicted += 1;
        }
        evicted
    }

    /// Entries read back from disk, those still valid, within the bound.
    /// Forgets the servers named `server` (a name or an address, any port), or every
    /// server; returns how many entries went.
    pub fn clear(&mut self, server: Option<&str>) -> usize {
        let before = self.entries.len();
        match server {
            Some(server) => self.entries.retain(|key, _| !key.server.eq_ignore_ascii_case(server)),
            None => self.entries.clear(),
        }
        before - self.entries.len()
    }

    pub fn restore(&mut self, saved: Vec<Exclusion>, now: u64) {
        for entry in saved.into_iter().filter(|e| e.expires > now) {
            self.entries.insert(entry.key.clone(), entry);
        }
        while self.entries.len() > self.max_entries {
            let Some(soonest) = self.entries.values().min_by_key(|e| e.expires).map(|e| e.key.clone()) else {
                break;
            };
            self.entries.remove(&soonest);
        }
    }
}

/// A no-decrypt rule XDP can enforce: server block and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XdpBypass {
    pub rule: usize,
    pub server: Cidr,
    pub port: u16,
}

/// The snapshot.
pub struct Policy {
    pub version: u64,
    rules: Arc<[CompiledRule]>,
    default_action: RuleAction,
    default_profile: Option<Arc<ProfileContext>>,
    profiles: Arc<[Arc<ProfileContext>]>,
    categories: Arc<Categories>,
    pub exclusions: Arc<ExclusionCache>,
    pub not_tls: NotTls,
    /// Applied by workers to every open flow, whichever snapshot it started with.
    pub timeouts: Timeouts,
    /// `[[url_rule]]`s, judged per HTTP request by the inspection engine (with their hit
    /// counters, shared by snapshots of the same rules).
    pub url_rules: Arc<UrlRules>,
    /// `[inspection]`: what the inspection engine does with decrypted sessions.
    pub inspection: Inspection,
    /// The same settings as the engine takes them.
    pub inspect_settings: Arc<InspectSettings>,
    /// `[inspection] rules`, loaded: content signatures every inspected session runs
    /// (`None` without rules). A reload loads the files again.
    pub signatures: Option<Arc<SignatureSet>>,
    /// The NSS key log that rules with `export = ["keylog"]` write to; set by the daemon
    /// (it knows the log directory), None while no rule exports keys.
    pub keylog: Option<Arc<crate::tls::keylog::KeyLog>>,
    /// Flows each rule decided (index = rule index), shared by snapshots of the same rules.
    hits: Arc<[AtomicU64]>,
    default_hits: Arc<AtomicU64>,
}

/// What the daemon hands [`Policy::build`] besides the configuration.
pub struct PolicyInputs {
    pub categories: Vec<LoadedCategory>,
    /// Built profiles by name (every configured one, and `default`).
    pub profiles: Vec<Arc<ProfileContext>>,
    /// Chains and keys of decrypt-inbound rules, by rule name.
    pub inbound: HashMap<String, Arc<ForgedCert>>,
}

impl Policy {
    /// Compiles the configuration (already validated by `loupe_control`) into snapshot
    /// version `version`.
    pub fn build(
        config: &Config,
        inputs: PolicyInputs,
        version: u64,
        exclusions: ExclusionCache,
    ) -> Result<Policy, String> {
        let categories = Arc::new(Categories::new(&inputs.categories)?);
        let profile = |name: &str| -> Result<Arc<ProfileContext>, String> {
            inputs
                .profiles
                .iter()
                .find(|p| p.name == name)
                .cloned()
                .ok_or_else(|| format!("unknown profile {name:?}"))
        };
        let mut rules = Vec::with_capacity(config.rules.len());
        for rule in &config.rules {
            let mut bits = 0;
            for name in &rule.category {
                bits |= categories
                    .bit(name)
                    .ok_or_else(|| format!("rule {:?}: unknown category {name:?}", rule.name))?;
            }
            let decrypts = matches!(rule.action, RuleAction::Decrypt | RuleAction::DecryptInbound);
            let inbound = match rule.action {
                RuleAction::DecryptInbound => Some(
                    inputs
                        .inbound
                        .get(&rule.name)
                        .cloned()
                        .ok_or_else(|| format!("rule {:?}: no certificate loaded", rule.name))?,
                ),
                _ => None,
            };
            rules.push(CompiledRule {
                name: rule.name.clone(),
                source: rule.source.clone(),
                destination: rule.destination.clone(),
                ports: rule.ports.clone(),
                sni: rule.sni.iter().map(|s| HostPattern::new(s)).collect(),
                categories: bits,
                action: rule.action,
                profile: if decrypts {
                    Some(
                        profile(rule.profile.as_deref().unwrap_or("default"))
                            .map_err(|e| format!("rule {:?}: {e}", rule.name))?,
                    )
                } else {
                    None
                },
                inbound,
                exports: Exports::from_config(&rule.export),
            });
        }
        let default_profile = match config.decryption.default_action {
            RuleAction::Decrypt | RuleAction::DecryptInbound => Some(profile(&config.decryption.default_profile)?),
            _ => None,
        };
        let hits: Arc<[AtomicU64]> = (0..rules.len()).map(|_| AtomicU64::new(0)).collect();
        let url_rules = UrlRules::with_categories(&config.url_rules, Arc::clone(&categories))?;
        let signatures = load_signatures(&config.inspection)?;
        Ok(Policy {
            version,
            rules: rules.into(),
            default_action: config.decryption.default_action,
            default_profile,
            profiles: inputs.profiles.into(),
            categories,
            exclusions: Arc::new(exclusions),
            not_tls: config.decryption.not_tls,
            timeouts: config.timeouts.clone(),
            url_rules: Arc::new(url_rules),
            inspection: config.inspection.clone(),
            inspect_settings: Arc::new(inspect_settings(&config.inspection)),
            signatures,
            keylog: None,
            hits,
            default_hits: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The next snapshot: the same rules (URL rules too), profiles, settings and counters,
    /// another exclusion cache.
    pub fn with_exclusions(&self, exclusions: ExclusionCache) -> Policy {
        Policy {
            version: self.version + 1,
            rules: Arc::clone(&self.rules),
            default_action: self.default_action,
            default_profile: self.default_profile.clone(),
            profiles: Arc::clone(&self.profiles),
            categories: Arc::clone(&self.categories),
            exclusions: Arc::new(exclusions),
            not_tls: self.not_tls,
            timeouts: self.timeouts.clone(),
            url_rules: Arc::clone(&self.url_rules),
            inspection: self.inspection.clone(),
            inspect_settings: Arc::clone(&self.inspect_settings),
            signatures: self.signatures.clone(),
            keylog: self.keylog.clone(),
            hits: Arc::clone(&self.hits),
            default_hits: Arc::clone(&self.default_hits),
        }
    }

    pub fn profile(&self, name: &str) -> Option<&Arc<ProfileContext>> {
        self.profiles.iter().find(|p| p.name == name)
    }

    /// How long an excluded server stays excluded.
    pub fn exclusion_ttl(&self) -> Duration {
        self.exclusions.ttl
    }

    /// A decision that needs no ClientHello: a no-decrypt rule on addresses and ports that
    /// no earlier rule could pre-empt. The flow is spliced from its first byte.
    pub fn at_connect(&self, client: SocketAddr, server: SocketAddr) -> Option<Decision> {
        for (index, rule) in self.rules.iter().enumerate() {
            if !rule.matches_addresses(client, server) {
                continue;
            }
            if rule.needs_hello() || rule.action != RuleAction::NoDecrypt {
                return None;
            }
            return Some(self.decision(index, String::new()));
        }
        None
    }

    /// The decision once the ClientHello's server name is known (`sni` as sent; compared
    /// case-insensitively).
    pub fn at_hello(&self, client: SocketAddr, server: SocketAddr, sni: Option<&str>) -> Decision {
        let sni = sni.map(str::to_ascii_lowercase);
        let mut decision = None;
        for (index, rule) in self.rules.iter().enumerate() {
            if !rule.matches_addresses(client, server) {
                continue;
            }
            if let Some(detail) = rule.matches_name(sni.as_deref(), &self.categories) {
                decision = Some(self.decision(index, detail));
                break;
            }
        }
        let mut decision = decision.unwrap_or_else(|| Decision {
            rule: "default".into(),
            rule_index: None,
            action: self.default_action,
            profile: self.default_profile.clone(),
            inbound: None,
            reason: format!("no rule matched: the default action ({})", self.default_action.as_str()),
        });
        if decision.action == RuleAction::Decrypt {
            let key = ExclusionKey::new(sni.as_deref(), server);
            if let Some(excluded) = self.exclusions.get(&key, unix_now()) {
                decision.action = RuleAction::NoDecrypt;
                decision.reason = format!("excluded: {}", excluded.why);
            }
        }
        decision
    }

    fn decision(&self, index: usize, detail: String) -> Decision {
        let rule = &self.rules[index];
        Decision {
            rule: rule.name.clone(),
            rule_index: Some(index),
            action: rule.action,
            profile: rule.profile.clone(),
            inbound: rule.inbound.clone(),
            reason: format!("rule {:?} matched{detail}", rule.name),
        }
    }

    /// What is exported of a session `decision` (made by this snapshot) decrypts: its
    /// rule's `export`; nothing for the default action, and nothing when the session is
    /// not decrypted (another action, or the exclusion cache turned it to no-decrypt).
    pub fn exports(&self, decision: &Decision) -> Exports {
        if !matches!(decision.action, RuleAction::Decrypt | RuleAction::DecryptInbound) {
            return Exports::default();
        }
        decision
            .rule_index
            .and_then(|index| self.rules.get(index))
            .map_or_else(Exports::default, |rule| rule.exports)
    }

    /// Counts a flow for the rule that decided it.
    pub fn count_hit(&self, decision: &Decision) {
        let counter = match decision.rule_index {
            Some(index) => &self.hits[index],
            None => &*self.default_hits,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// (rule name, flows decided in userspace), in rule order, then `default`.
    pub fn hits(&self) -> Vec<(String, u64)> {
        self.rules
            .iter()
            .zip(self.hits.iter())
            .map(|(rule, hits)| (rule.name.clone(), hits.load(Ordering::Relaxed)))
            .chain([("default".to_string(), self.default_hits.load(Ordering::Relaxed))])
            .collect()
    }

    /// No-decrypt rules XDP can enforce for `inspect_ports`: rules on server addresses and
    /// ports only (no source, name or category), that no earlier rule with another action
    /// could also match. The rest are decided in userspace.
    pub fn xdp_bypasses(&self, inspect_ports: &[u16]) -> Vec<XdpBypass> {
        let mut out = Vec::new();
        for (index, rule) in self.rules.iter().enumerate() {
            if rule.action != RuleAction::NoDecrypt || rule.needs_hello() || !rule.source.is_empty() {
                continue;
            }
            let pre_empted = self.rules[..index]
                .iter()
                .any(|earlier| earlier.action != RuleAction::NoDecrypt && overlaps(earlier, rule));
            if pre_empted {
                continue;
            }
            let ports: Vec<u16> = if rule.ports.is_empty() {
                inspect_ports.to_vec()
            } else {
                rule.ports
                    .iter()
                    .copied()
                    .filter(|p| inspect_ports.contains(p))
                    .collect()
            };
            let servers: Vec<Cidr> = if rule.destination.is_empty() {
                let any4: Cidr = "0.0.0.0/0".parse().expect("a valid block");
                let any6: Cidr = "::/0".parse().expect("a valid block");
                vec![any4, any6]
            } else {
                rule.destination.clone()
            };
            for port in ports {
                for server in &servers {
                    out.push(XdpBypass {
                        rule: index,
                        server: *server,
                        port,
                    });
                }
            }
        }
        out
    }

    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.name.as_str())
    }
}

/// `[inspection]` as the engine takes it; the bounds the file does not set keep the
/// parsers' defaults.
/// Loads `[inspection] rules`: rules that do not parse are skipped (the report says
/// which and why); a file or glob that cannot be read fails the build.
fn load_signatures(inspection: &Inspection) -> Result<Option<Arc<SignatureSet>>, String> {
    if inspection.rules.is_empty() {
        return Ok(None);
    }
    let vars = signatures::rule_vars(&inspection.vars);
    let loaded = signatures::load_rule_files(&inspection.rules, &vars);
    if !loaded.report.unreadable.is_empty() {
        let each: Vec<String> = loaded
            .report
            .unreadable
            .iter()
            .map(|(what, why)| format!("{what}: {why}"))
            .collect();
        return Err(format!("[inspection] rules cannot be read: {}", each.join("; ")));
    }
    for skipped in &loaded.report.skipped {
        tracing::warn!(rule = %skipped, "signature skipped");
    }
    Ok(Some(Arc::new(SignatureSet::new(loaded)?)))
}

fn inspect_settings(inspection: &Inspection) -> InspectSettings {
    let http2 = Http2Limits::default();
    InspectSettings {
        block_on_protocol_error: inspection.on_protocol_error == OnProtocolError::Block,
        block_page: inspection.block_page,
        http1: Http1Limits {
            max_head_bytes: inspection.max_header_bytes,
            ..Http1Limits::default()
        },
        http2: Http2Limits {
            max_streams: inspection.max_streams as usize,
            max_header_block: inspection.max_header_block,
            hpack: HpackLimits {
                max_table_size: inspection.hpack_table_size,
                ..http2.hpack
            },
            ..http2
        },
    }
}

/// Whether some flow could match both rules' address and port conditions.
fn overlaps(a: &CompiledRule, b: &CompiledRule) -> bool {
    let ports = a.ports.is_empty() || b.ports.is_empty() || a.ports.iter().any(|p| b.ports.contains(p));
    let blocks = |x: &[Cidr], y: &[Cidr]| {
        x.is_empty()
            || y.is_empty()
            || x.iter()
                .any(|c| y.iter().any(|d| c.contains(d.addr) || d.contains(c.addr)))
    };
    ports && blocks(&a.destination, &b.destination) && blocks(&a.source, &b.source)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(name: &str) -> Arc<ProfileContext> {
        let trust = boring::x509::store::X509StoreBuilder::new().unwrap().build();
        let mut settings = config::Profile::builtin_default();
        settings.name = name.into();
        Arc::new(ProfileContext::new(&settings, trust, PinnedLeafs::default()).unwrap())
    }

    fn policy(toml: &str, categories: Vec<LoadedCategory>) -> Policy {
        let config = Config::parse(toml, std::path::Path::new("t.toml")).unwrap();
        let mut profiles = vec![profile("default")];
        for p in &config.profiles {
            if p.name != "default" {
                profiles.push(profile(&p.name));
            }
        }
        let inputs = PolicyInputs {
            categories,
            profiles,
            inbound: HashMap::new(),
        };
        Policy::build(&config, inputs, 1, ExclusionCache::new(Duration::from_secs(60), 8)).unwrap()
    }

    fn at(ip: &str, port: u16) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), port)
    }

    const CLIENT: &str = "198.18.0.1";

    #[test]
    fn first_matching_rule_wins_and_the_default_takes_the_rest() {
        let p = policy(
            "[[category]]\nname = \"financial\"\nfile = \"f\"\n\n[[rule]]\nname = \"banks\"\ncategory = [\"financial\"]\naction = \"no-decrypt\"\n\n[[rule]]\nname = \"blocked\"\nsni = [\"*.bad.lab\"]\naction = \"block\"\n\n[[rule]]\nname = \"all\"\naction = \"decrypt\"\n",
            vec![LoadedCategory {
                name: "financial".into(),
                domains: vec!["bank.lab".into()],
            }],
        );
        let server = at("198.18.0.2", 443);
        let d = p.at_hello(at(CLIENT, 5000), server, Some("WWW.Bank.lab"));
        assert_eq!((d.rule.as_str(), d.action), ("banks", RuleAction::NoDecrypt));
        assert_eq!(d.reason, "rule \"banks\" matched (category financial)");
        let d = p.at_hello(at(CLIENT, 5000), server, Some("x.bad.lab"));
        assert_eq!((d.rule.as_str(), d.action), ("blocked", RuleAction::Block));
        // The wildcard covers names below it, not the apex.
        let d = p.at_hello(at(CLIENT, 5000), server, Some("bad.lab"));
        assert_eq!(d.rule, "all");
        let d = p.at_hello(at(CLIENT, 5000), server, None);
        assert_eq!((d.rule.as_str(), d.action), ("all", RuleAction::Decrypt));
        assert!(p.at_connect(at(CLIENT, 5000), server).is_none());
    }

    #[test]
    fn address_rules_decide_at_connect_and_go_to_xdp_unless_pre_empted() {
        let p = policy(
            "[[rule]]\nname = \"lab-a\"\ndestination = [\"198.18.0.3\"]\naction = \"no-decrypt\"\n\n[[rule]]\nname = \"named\"\ndestination = [\"198.18.0.4\"]\nsni = [\"a.lab\"]\naction = \"decrypt\"\n\n[[rule]]\nname = \"lab-b\"\ndestination = [\"198.18.0.0/24\"]\nports = [443]\naction = \"no-decrypt\"\n\n[[rule]]\nname = \"v6\"\ndestination = [\"2001:db8::/32\"]\naction = \"no-decrypt\"\n",
            vec![],
        );
        let d = p.at_connect(at(CLIENT, 1), at("198.18.0.3", 443)).unwrap();
        assert_eq!(d.rule, "lab-a");
        // The SNI rule before lab-b must see the ClientHello first; it pre-empts lab-b in
        // XDP too, but not the IPv6 rule, whose servers it cannot match.
        assert!(p.at_connect(at(CLIENT, 1), at("198.18.0.4", 443)).is_none());
        let xdp = p.xdp_bypasses(&[443, 8443]);
        let rules: Vec<usize> = xdp.iter().map(|b| b.rule).collect();
        assert_eq!(rules, vec![0, 0, 3, 3], "{xdp:?}");
        assert_eq!(xdp[0].server.to_string(), "198.18.0.3/32");
        assert_eq!((xdp[1].port, xdp[3].port), (8443, 8443));
    }

    #[test]
    fn excluded_servers_are_spliced_with_the_reason() {
        let p = policy("", vec![]);
        let server = at("198.18.0.2", 443);
        assert_eq!(
            p.at_hello(at(CLIENT, 1), server, Some("s.lab")).action,
            RuleAction::Decrypt
        );
        let mut cache = (*p.exclusions).clone();
        cache.insert(
            ExclusionKey::new(Some("S.lab"), server),
            "the server requested a client certificate".into(),
            unix_now(),
        );
        let next = p.with_exclusions(cache);
        assert_eq!(next.version, 2);
        let d = next.at_hello(at(CLIENT, 1), server, Some("s.lab"));
        assert_eq!(d.action, RuleAction::NoDecrypt);
        assert_eq!(d.reason, "excluded: the server requested a client certificate");
        // Another name on the same address is not excluded.
        assert_eq!(
            next.at_hello(at(CLIENT, 1), server, Some("t.lab")).action,
            RuleAction::Decrypt
        );
    }

    #[test]
    fn exports_come_from_the_deciding_rule_of_decrypted_sessions_only() {
        let p = policy(
            "[[rule]]\nname = \"debug\"\nsni = [\"d.lab\"]\naction = \"decrypt\"\nexport = [\"pcap\", \"keylog\"]\n\n\
             [[rule]]\nname = \"keys\"\nsni = [\"k.lab\"]\naction = \"decrypt\"\nexport = [\"keylog\"]\n",
            vec![],
        );
        let server = at("198.18.0.2", 443);
        let d = p.at_hello(at(CLIENT, 1), server, Some("d.lab"));
        assert_eq!(
            p.exports(&d),
            Exports {
                pcap: true,
                keylog: true
            }
        );
        let d = p.at_hello(at(CLIENT, 1), server, Some("k.lab"));
        assert_eq!(
            p.exports(&d),
            Exports {
                pcap: false,
                keylog: true
            }
        );
        let d = p.at_hello(at(CLIENT, 1), server, Some("other.lab"));
        assert_eq!((d.rule.as_str(), p.exports(&d).any()), ("default", false));
        // An excluded server is spliced: nothing to export.
        let mut cache = (*p.exclusions).clone();
        cache.insert(ExclusionKey::new(Some("d.lab"), server), "x".into(), unix_now());
        let next = p.with_exclusions(cache);
        let d = next.at_hello(at(CLIENT, 1), server, Some("d.lab"));
        assert_eq!((d.action, next.exports(&d).any()), (RuleAction::NoDecrypt, false));
    }

    #[test]
    fn exclusion_cache_is_bounded_and_expires() {
        let mut cache = ExclusionCache::new(Duration::from_secs(10), 2);
        let key = |n: u16| ExclusionKey::new(None, at("198.18.0.2", n));
        assert_eq!(cache.insert(key(1), "a".into(), 100), 0);
        assert_eq!(cache.insert(key(2), "b".into(), 101), 0);
        assert_eq!(cache.insert(key(3), "c".into(), 102), 1);
        assert!(cache.get(&key(1), 102).is_none(), "the soonest to expire went first");
        assert!(cache.get(&key(3), 111).is_some());
        assert!(cache.get(&key(3), 112).is_none(), "expired after the TTL");
    }

    #[test]
    fn a_reload_applies_new_url_rules_and_inspection_settings() {
        use crate::inspect::url_rules::{UrlAction, UrlRequest};
        let request = UrlRequest {
            host: Some("www.shop.lab:443"),
            path: "/admin/users",
            method: "GET",
        };
        let categories = || {
            vec![LoadedCategory {
                name: "shops".into(),
                domains: vec!["shop.lab".into()],
            }]
        };
        let category = "[[category]]\nname = \"shops\"\nfile = \"s\"\n\n";
        let first = policy(
            &format!("{category}[[url_rule]]\nname = \"admin\"\npath = [\"/admin/\"]\naction = \"alert\"\n"),
            categories(),
        );
        let m = first.url_rules.judge(&request).unwrap();
        assert_eq!((&*m.name, m.action), ("admin", UrlAction::Alert));
        assert_eq!(first.inspection, Inspection::default());
        // Another exclusion cache: the same URL rules, counters and settings.
        let next = first.with_exclusions(ExclusionCache::new(Duration::from_secs(60), 8));
        assert!(Arc::ptr_eq(&first.url_rules, &next.url_rules));
        assert_eq!(next.url_rules.hits(), vec![("admin".to_string(), 1)]);
        // A reload (what `loupectl policy load` builds): the new rules and settings decide.
        let reloaded = policy(
            &format!(
                "{category}[inspection]\non_protocol_error = \"block\"\nblock_page = false\n\n\
                 [[url_rule]]\nname = \"no-shops\"\ncategory = [\"shops\"]\naction = \"block\"\n"
            ),
            categories(),
        );
        let m = reloaded.url_rules.judge(&request).unwrap();
        assert_eq!((&*m.name, m.action, m.rule_index), ("no-shops", UrlAction::Block, 0));
        assert_eq!(reloaded.inspection.on_protocol_error, config::OnProtocolError::Block);
        assert!(!reloaded.inspection.block_page);
        assert!(reloaded.inspect_settings.block_on_protocol_error && !reloaded.inspect_settings.block_page);
        assert!(!first.inspect_settings.block_on_protocol_error && first.inspect_settings.block_page);
        assert!(reloaded
            .url_rules
            .judge(&UrlRequest {
                host: Some("other.lab"),
                ..request
            })
            .is_none());
        // And one without URL rules allows everything.
        assert!(policy("", vec![]).url_rules.judge(&request).is_none());
    }

    #[test]
    fn inspection_bounds_reach_the_parsers() {
        let p = policy(
            "[inspection]\nmax_header_bytes = 8192\nmax_streams = 10\nhpack_table_size = 8192\n\
             max_header_block = 4096\n",
            vec![],
        );
        let s = &p.inspect_settings;
        assert_eq!(s.http1.max_head_bytes, 8192);
        assert_eq!(s.http1.max_pipelined, Http1Limits::default().max_pipelined);
        assert_eq!((s.http2.max_streams, s.http2.max_header_block), (10, 4096));
        assert_eq!(s.http2.hpack.max_table_size, 8192);
        let d = policy("", vec![]);
        let (d, defaults) = (&d.inspect_settings, InspectSettings::default());
        assert_eq!(
            (d.http1, d.http2),
            (defaults.http1, defaults.http2),
            "the defaults agree"
        );
    }

    #[test]
    fn categories_cover_subdomains() {
        let c = Categories::new(&[
            LoadedCategory {
                name: "a".into(),
                domains: vec!["example.com".into()],
            },
            LoadedCategory {
                name: "b".into(),
                domains: vec!["www.example.com".into()],
            },
        ])
        .unwrap();
        assert_eq!(c.of("example.com"), 1);
        assert_eq!(c.of("www.example.com"), 3);
        assert_eq!(c.of("notexample.com"), 0);
        assert_eq!(c.of("com"), 0);
        assert_eq!(c.of("WWW.Example.COM"), 3);
    }
}
