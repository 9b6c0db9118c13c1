//! The signature engine's microbench (`loupe-bench signatures-micro`) and the rule set it
//! runs: [`generated_content_rules`] writes any number of distinct rules in ET Open's style
//! that match none of the traffic the bench sends, so their cost is the cost of looking,
//! never of alerting.
//!
//! What is measured, each for `--seconds` and at most [`MAX_ITERATIONS`] times, after a
//! short warm-up, in one process:
//! - loading: parse time, build time of the [`SignatureSet`] and of its prefilter, and the
//!   process's RSS before and after (an approximation of the set's memory: allocator slack
//!   and freed parse scratch count too);
//! - [`Prefilter::candidates`] alone over a browser's request head and over a 64 KiB
//!   response body (`file.data`), with the suite's few rules and with the generated set,
//!   the latter as a ratio against the former;
//! - [`SignatureSet::evaluate`] over one transaction's four stages (request head, request
//!   body whole, response head, response body whole) as the engine calls it (a stage no
//!   rule decides is skipped, each transaction starts a fresh [`TxSignatureState`]), with
//!   no rules, the suite's rules and the generated set, as ratios against no rules and
//!   against the suite's. With no rules `evaluate` returns at once, so that baseline is
//!   the loop's own cost; the ratio against the suite's rules is the informative one.
//!
//! Figures are ratios against baselines of the same run, as everywhere in the bench: the
//! absolute rates say what this machine did while it ran, nothing more.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::hint::black_box;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use loupe_dataplane::inspect::signatures::load::{load_reader, LoadedRules};
use loupe_dataplane::inspect::signatures::prefilter::Prefilter;
use loupe_dataplane::inspect::signatures::rule::Direction;
use loupe_dataplane::inspect::signatures::{
    rule_vars, Endpoints, FlowSignatureState, HeadBuffers, SignatureHit, SignatureSet, Stage, TransactionBuffers,
    TxSignatureState, WantedBuffers,
};

/// The sid of the first generated rule; the others follow one by one.
pub const GENERATED_FIRST_SID: u32 = 9_500_000;

/// The seed `signatures-micro` generates its rules from.
pub const DEFAULT_SEED: u64 = 0x6c6f_7570_655f_7369;

/// Upper bound on the iterations of one measurement, whatever `--seconds` says.
pub const MAX_ITERATIONS: u64 = 200_000_000;

/// The signature suite's rules (`bench/tests/signatures.rs`), copied: the "few rules" a
/// deployment that writes its own starts with.
pub const SUITE_RULES: &str = r#"
alert http $EXTERNAL_NET any -> $HOME_NET any (msg:"LOUPE-LAB EICAR test string in a response body"; flow:established,to_client; file.data; content:"EICAR-STANDARD-ANTIVIRUS-TEST-FILE"; fast_pattern; classtype:trojan-activity; metadata:created_at 2026_12_06; sid:9300001; rev:1;)
drop http any any -> any any (msg:"LOUPE-LAB dropped download"; flow:established,to_client; http.response_body; content:"DROP-THIS-BODY"; sid:9300002; rev:1;)
alert http $HOME_NET any -> $EXTERNAL_NET any (msg:"LOUPE-LAB suspicious user agent"; flow:established,to_server; http.user_agent; content:"loupe-lab-agent/"; startswith; http.host; content:"server.lab"; endswith; sid:9300003; rev:1;)
alert http any any -> any any (msg:"LOUPE-LAB executable download path"; flow:established,to_server; http.method; content:"GET"; http.uri; content:"/download/"; startswith; content:".exe"; distance:8; within:4; endswith; pcre:"/^\/download\/[a-z0-9]{8}\.exe$/U"; classtype:bad-unknown; sid:9300004; rev:2;)
drop http any any -> any any (msg:"LOUPE-LAB dropped by header"; flow:established,to_server; http.header; content:"X-Loupe-Drop|3a 20|yes|0d 0a|"; nocase; sid:9300005; rev:1;)
alert tls $HOME_NET any -> $EXTERNAL_NET any (msg:"LOUPE-LAB server name"; tls.sni; content:"server.lab"; endswith; nocase; sid:9300008; rev:1;)
alert http any any -> any any (msg:"LOUPE-LAB login request"; flow:established,to_server; http.uri; content:"/login"; startswith; flowbits:set,lab.login; flowbits:noalert; sid:9300006; rev:1;)
alert http any any -> any any (msg:"LOUPE-LAB login answered 200"; flow:established,to_client; flowbits:isset,lab.login; http.stat_code; content:"200"; sid:9300007; rev:1;)
"#;

/// A browser's request for a script (Chrome's headers, about 400 bytes).
pub const REQUEST_HEAD: &[u8] = b"GET /static/js/main.8c41d2fa.chunk.js?v=20241203 HTTP/1.1\r\n\
Host: www.shop.example\r\n\
User-Agent: Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n\
Accept: */*\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Referer: https://www.shop.example/cart\r\n\
Cookie: session=4f1c9e27b3a8d605\r\n\
Sec-Fetch-Dest: script\r\n\
Connection: keep-alive\r\n\
\r\n";

/// nginx's answer with a 64 KiB page.
pub const RESPONSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\n\
Server: nginx/1.22.1\r\n\
Date: Tue, 03 Dec 2024 10:15:32 GMT\r\n\
Content-Type: text/html; charset=utf-8\r\n\
Content-Length: 65536\r\n\
Connection: keep-alive\r\n\
Cache-Control: private, max-age=0\r\n\
X-Content-Type-Options: nosniff\r\n\
\r\n";

/// Bytes of the response body the bench inspects.
pub const RESPONSE_BODY_BYTES: usize = 64 * 1024;

/// A product listing page of `len` bytes: HTML, inline script, varied numbers.
pub fn response_body(len: usize) -> Vec<u8> {
    let mut body = String::with_capacity(len + 1024);
    body.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Catalogue - Shop</title>\n\
         <link rel=\"stylesheet\" href=\"/static/css/main.3b1f77c2.css\">\n\
         <script>window.dataLayer=window.dataLayer||[];function gtag(){dataLayer.push(arguments);}</script>\n\
         </head><body><main class=\"catalogue\">\n",
    );
    let mut item = 0u64;
    while body.len() < len {
        item += 1;
        let price = 3 + (item * 7919) % 997;
        let _ = writeln!(
            body,
            "<article class=\"product-card\" data-id=\"{item}\" data-sku=\"SKU-{sku:06}\">\
             <a href=\"/products/{item}/details?ref=list&amp;page={page}\">\
             <img src=\"/media/thumbs/{item}.webp\" alt=\"Product {item}\" loading=\"lazy\" width=\"240\" height=\"240\"></a>\
             <h2>Product {item}</h2><span class=\"price\">${price}.99</span>\
             <p>Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt \
             ut labore et dolore magna aliqua.</p>\
             <button onclick=\"addToCart({item}, 1)\">Add to cart</button></article>",
            sku = item * 31 % 1_000_000,
            page = item / 24 + 1,
        );
    }
    let mut body = body.into_bytes();
    body.truncate(len);
    body
}

/// The distinct runs of letters and digits of the bench's traffic (request head,
/// response head, response body), lowercased, at least 6 long: a generated content (letters
/// and digits only) can occur in the traffic only inside one of them.
fn traffic_words() -> HashSet<String> {
    let body = response_body(RESPONSE_BODY_BYTES);
    let mut words = HashSet::new();
    for data in [REQUEST_HEAD, RESPONSE_HEAD, &body[..]] {
        for run in data.split(|b| !b.is_ascii_alphanumeric()) {
            if run.len() >= 6 {
                words.insert(String::from_utf8_lossy(run).to_ascii_lowercase());
            }
        }
    }
    words
}

/// SplitMix64: deterministic from the seed, the same on every machine and every version
/// of every crate (the suite may rely on a set being the same set).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// What a generated rule inspects.
#[derive(Clone, Copy)]
enum Target {
    Uri,
    Host,
    UserAgent,
    Header,
    FileData,
}

/// Per target: ET category, classtype and the msg's tail (`{f}`: the family).
type Flavour = (&'static str, &'static str, &'static str);

fn flavours(target: Target) -> &'static [Flavour] {
    match target {
        Target::Uri => &[
            ("MALWARE", "trojan-activity", "Win32/{f} CnC Checkin"),
            ("MALWARE", "trojan-activity", "{f} Stealer Exfiltration Attempt"),
            (
                "WEB_SPECIFIC_APPS",
                "web-application-attack",
                "{f} CMS Path Traversal Attempt",
            ),
            (
                "EXPLOIT",
                "attempted-admin",
                "{f} Gateway Remote Code Execution Attempt",
            ),
            ("HUNTING", "bad-unknown", "Suspicious {f} Request Path"),
            ("INFO", "misc-activity", "{f} Telemetry Beacon"),
        ],
        Target::Host => &[
            ("MALWARE", "trojan-activity", "Observed {f} Domain in HTTP Host"),
            ("PHISHING", "credential-theft", "{f} Credential Phish Landing Domain"),
            ("INFO", "misc-activity", "Observed {f} File Sharing Domain"),
            ("POLICY", "policy-violation", "{f} Remote Access Service Domain"),
        ],
        Target::UserAgent => &[
            ("MALWARE", "trojan-activity", "Win32/{f} User-Agent"),
            ("USER_AGENTS", "bad-unknown", "Suspicious User-Agent ({f})"),
            ("POLICY", "policy-violation", "{f} Updater User-Agent"),
            ("HUNTING", "bad-unknown", "Scripted Client {f} User-Agent"),
        ],
        Target::Header => &[
            ("MALWARE", "trojan-activity", "{f} Backdoor Custom HTTP Header"),
            ("HUNTING", "bad-unknown", "Suspicious HTTP Header ({f})"),
            ("EXPLOIT", "attempted-user", "{f} Header Injection Attempt"),
        ],
        Target::FileData => &[
            ("MALWARE", "trojan-activity", "{f} Payload Inbound"),
            ("WEB_CLIENT", "attempted-user", "{f} Exploit Kit Landing Page"),
            ("CURRENT_EVENTS", "social-engineering", "{f} Phishing Kit Landing Page"),
            ("HUNTING", "bad-unknown", "Obfuscated {f} Script Inbound"),
        ],
    }
}

const SYLLABLES: &[&str] = &[
    "var", "mor", "tel", "lok", "bra", "nim", "dar", "kos", "vin", "rux", "pel", "gor", "tam", "sil", "fen", "hal",
];

const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// Writes the rules, keeping the tokens distinct.
struct Generator {
    rng: Rng,
    tokens: HashSet<String>,
    /// See [`traffic_words`].
    traffic: Vec<String>,
}

impl Generator {
    /// 6 to 20 random lowercase letters and digits, found nowhere in the bench's traffic
    /// (in any case). No common marker: patterns sharing a byte would let the Aho-Corasick
    /// prefilter skip from one occurrence of it to the next (a rare-byte search), many
    /// times faster than over a real set's patterns.
    fn token(&mut self) -> String {
        loop {
            let len = 6 + self.rng.below(15) as usize;
            let token: String = (0..len).map(|_| self.rng.pick(ALNUM) as char).collect();
            if self.traffic.iter().any(|word| word.contains(&token)) {
                continue;
            }
            if self.tokens.insert(token.clone()) {
                return token;
            }
        }
    }

    fn family(&mut self) -> String {
        let mut family = String::new();
        for _ in 0..2 + self.rng.below(2) {
            family.push_str(self.rng.pick(SYLLABLES));
        }
        family[..1].to_ascii_uppercase() + &family[1..]
    }

    /// Year, month, day: 2018 to 2025.
    fn date(&mut self) -> (u64, u64, u64) {
        (2018 + self.rng.below(8), 1 + self.rng.below(12), 1 + self.rng.below(28))
    }

    /// A second content after the first, placed relative to it.
    fn relative(&mut self, options: &mut Vec<String>) {
        let token = self.token();
        options.push(format!("content:\"{token}\""));
        let distance = self.rng.below(32);
        options.push(format!("distance:{distance}"));
        if self.rng.chance(60) {
            options.push(format!("within:{}", token.len() as u64 + self.rng.below(48)));
        }
    }

    /// `flags`: the ET-style modifiers of the content just pushed.
    fn modifiers(&mut self, options: &mut Vec<String>, nocase: u64, fast_pattern: u64) {
        if self.rng.chance(nocase) {
            options.push("nocase".into());
        }
        if self.rng.chance(fast_pattern) {
            options.push("fast_pattern".into());
        }
    }

    fn rule(&mut self, sid: u32) -> String {
        let target = match self.rng.below(100) {
            0..=32 => Target::Uri,
            33..=44 => Target::Host,
            45..=57 => Target::UserAgent,
            58..=69 => Target::Header,
            _ => Target::FileData,
        };
        let (category, classtype, what) = self.rng.pick(flavours(target));
        let family = self.family();
        let mut msg = format!("ET {category} {}", what.replace("{f}", &family));
        if self.rng.chance(25) {
            let _ = write!(msg, " M{}", 1 + self.rng.below(4));
        }
        // A web application attack comes in to the home servers; the rest is the home
        // clients' traffic, each direction from the side that sends it.
        let header = match target {
            Target::FileData => "alert http $EXTERNAL_NET any -> $HOME_NET any",
            _ if category == "WEB_SPECIFIC_APPS" => "alert http $EXTERNAL_NET any -> $HOME_NET $HTTP_PORTS",
            _ => "alert http $HOME_NET any -> $EXTERNAL_NET any",
        };
        let mut options = vec![format!("msg:\"{msg}\"")];
        match target {
            Target::FileData => options.push("flow:established,to_client".into()),
            _ => options.push("flow:established,to_server".into()),
        }
        match target {
            Target::Uri => {
                let legacy = self.rng.chance(15);
                if self.rng.chance(30) {
                    let method = format!("content:\"{}\"", self.rng.pick(&["GET", "POST"]));
                    if legacy {
                        options.push(method);
                        options.push("http_method".into());
                    } else {
                        options.push("http.method".into());
                        options.push(method);
                    }
                }
                let token = self.token();
                let startswith = !legacy && self.rng.chance(15);
                if legacy {
                    // The pre-sticky-buffer spelling old ET rules still use.
                    options.push(format!("content:\"{token}\""));
                    options.push("http_uri".into());
                    self.modifiers(&mut options, 30, 0);
                } else {
                    options.push("http.uri".into());
                    if startswith {
                        options.push(format!("content:\"/{token}\""));
                        options.push("startswith".into());
                    } else {
                        options.push(format!("content:\"{token}\""));
                    }
                    self.modifiers(&mut options, 30, 40);
                    if self.rng.chance(25) {
                        self.relative(&mut options);
                    }
                }
                if legacy || self.rng.chance(20) {
                    let pcre = match (startswith, self.rng.below(3)) {
                        (true, _) => format!(r"/^\/{token}\/[a-f0-9]{{8,32}}(?:\?|$)/U"),
                        (false, 0) => format!(r"/\/{token}[a-z0-9]{{0,12}}\.(?:php|aspx|jsp)(?:\?|$)/U"),
                        (false, 1) => format!(r"/^\/[a-z0-9_-]{{2,16}}\/{token}/Ui"),
                        (false, _) => format!(r"/{token}[^&]{{4,64}}&[a-z]{{1,8}}=[0-9]{{4,10}}/U"),
                    };
                    options.push(format!("pcre:\"{pcre}\""));
                }
                if self.rng.chance(15) {
                    options.push("http.header_names".into());
                    options.push("content:!\"Referer\"".into());
                }
            }
            Target::Host => {
                options.push("http.host".into());
                options.push(format!("content:\"{}\"", self.token()));
                if self.rng.chance(40) {
                    options.push("endswith".into());
                }
                self.modifiers(&mut options, 0, 50);
            }
            Target::UserAgent => {
                options.push("http.user_agent".into());
                options.push(format!("content:\"{}\"", self.token()));
                match self.rng.below(10) {
                    0..=3 => options.push("startswith".into()),
                    4 => options.push("endswith".into()),
                    _ => {}
                }
                self.modifiers(&mut options, 30, 30);
                if self.rng.chance(20) {
                    options.push("http.header_names".into());
                    options.push("content:!\"Referer\"".into());
                }
            }
            Target::Header => {
                options.push("http.header".into());
                options.push(format!("content:\"{}\"", self.token()));
                self.modifiers(&mut options, 50, 30);
                if self.rng.chance(20) {
                    self.relative(&mut options);
                }
            }
            Target::FileData => {
                if self.rng.chance(20) {
                    options.push("http.stat_code".into());
                    options.push("content:\"200\"".into());
                }
                options.push("file.data".into());
                options.push(format!("content:\"{}\"", self.token()));
                if self.rng.chance(10) {
                    options.push("startswith".into());
                }
                self.modifiers(&mut options, 25, 40);
                if self.rng.chance(30) {
                    self.relative(&mut options);
                }
            }
        }
        if self.rng.chance(30) {
            let md5: String = (0..32).map(|_| self.rng.pick(b"0123456789abcdef") as char).collect();
            options.push(format!("reference:md5,{md5}"));
        }
        options.push(format!("classtype:{classtype}"));
        options.push(format!("sid:{sid}"));
        options.push(format!("rev:{}", 1 + self.rng.below(6)));
        let mut dates = [self.date(), self.date()];
        dates.sort();
        let [created, updated] = dates.map(|(y, m, d)| format!("{y}_{m:02}_{d:02}"));
        let severity = self.rng.pick(&["Informational", "Minor", "Major", "Critical"]);
        let mut metadata = String::new();
        if category.contains("MALWARE") {
            metadata.push_str("affected_product Windows_XP_Vista_7_8_10_Server_32_64_Bit, ");
        }
        let _ = write!(
            metadata,
            "attack_target {}, created_at {created}, deployment Perimeter, former_category {category}, ",
            if category == "WEB_SPECIFIC_APPS" {
                "Web_Server"
            } else {
                "Client_Endpoint"
            },
        );
        if category == "MALWARE" {
            let _ = write!(metadata, "malware_family {family}, ");
        }
        let _ = write!(
            metadata,
            "performance_impact Low, signature_severity {severity}, updated_at {updated}"
        );
        options.push(format!("metadata:{metadata}"));
        format!("{header} ({};)", options.join("; "))
    }
}

/// `count` distinct `alert http` rules in ET Open's style, one a line, sids from
/// [`GENERATED_FIRST_SID`] on: contents of 6 to 20 lowercase letters and digits in
/// `http.uri` (some with `startswith`, a second content at a `distance`/`within`, a
/// `pcre` with `/U`, the legacy `http_uri` spelling), `http.host` (some `endswith`),
/// `http.user_agent` (some `startswith`/`endswith`), `http.header` and `file.data`,
/// some `nocase`, with msg, classtype, metadata and rev as ET writes them. The same
/// `seed` gives the same text. Every rule needs at least one of these random contents, and
/// none occurs in the bench's traffic ([`REQUEST_HEAD`], [`RESPONSE_HEAD`],
/// [`response_body`]), so no rule matches it; other traffic is as unlikely to hold one
/// (36^6 or more tokens each) but not excluded.
pub fn generated_content_rules(count: usize, seed: u64) -> String {
    let mut generator = Generator {
        rng: Rng(seed),
        tokens: HashSet::with_capacity(count * 2),
        traffic: traffic_words().into_iter().collect(),
    };
    let mut text = String::with_capacity(count * 420);
    for index in 0..count {
        let sid = GENERATED_FIRST_SID + u32::try_from(index).expect("fewer than 2^32 rules");
        text.push_str(&generator.rule(sid));
        text.push('\n');
    }
    text
}

/// Rules text to a loaded set (Suricata's default variables); any rule skipped is an
/// error naming it.
pub fn load_rules(text: &str, name: &str) -> Result<LoadedRules> {
    let vars = rule_vars(&BTreeMap::new());
    let mut loaded = LoadedRules::default();
    let mut first_of_sid = HashMap::new();
    load_reader(text.as_bytes(), Path::new(name), &vars, &mut first_of_sid, &mut loaded);
    if let Some(skipped) = loaded.report.skipped.first() {
        bail!(
            "{} of the rules of {name} do not load, the first: {skipped}",
            loaded.report.skipped.len()
        );
    }
    if let Some((file, error)) = loaded.report.unreadable.first() {
        bail!("{file}: {error}");
    }
    Ok(loaded)
}

/// One transaction of the bench's traffic: the heads as the engine builds them, the body.
pub struct Traffic {
    pub request: HeadBuffers,
    pub response: HeadBuffers,
    pub response_body: Vec<u8>,
    pub endpoints: Endpoints,
}

impl Traffic {
    pub fn new() -> Traffic {
        let client: SocketAddr = "192.168.1.23:51234".parse().expect("an address");
        let server: SocketAddr = "93.184.216.34:443".parse().expect("an address");
        Traffic {
            request: HeadBuffers::http1_request(REQUEST_HEAD, WantedBuffers::ALL),
            response: HeadBuffers::http1_response(RESPONSE_HEAD, WantedBuffers::ALL),
            response_body: response_body(RESPONSE_BODY_BYTES),
            endpoints: Endpoints { client, server },
        }
    }

    /// The buffers of each stage, as the engine passes them: a body exists from its own
    /// stage on (the request's is empty: a GET), a head once it has arrived.
    pub fn stages(&self) -> [(Stage, TransactionBuffers<'_>); 4] {
        let buffers = |stage: Stage| TransactionBuffers {
            request: Some(&self.request),
            response: (stage >= Stage::ResponseHead).then_some(&self.response),
            request_body: (stage >= Stage::RequestBody).then_some(&[][..]),
            response_body: (stage >= Stage::ResponseBody).then_some(&self.response_body[..]),
            direction: if stage >= Stage::ResponseHead {
                Direction::ToClient
            } else {
                Direction::ToServer
            },
            sni: Some(b"www.shop.example"),
        };
        [
            Stage::RequestHead,
            Stage::RequestBody,
            Stage::ResponseHead,
            Stage::ResponseBody,
        ]
        .map(|stage| (stage, buffers(stage)))
    }

    /// The request head's buffers alone (what the prefilter sees at the request head).
    pub fn head_buffers(&self) -> TransactionBuffers<'_> {
        TransactionBuffers {
            request: Some(&self.request),
            response: None,
            request_body: None,
            response_body: None,
            direction: Direction::ToServer,
            sni: None,
        }
    }

    /// The response body alone, as `file.data`.
    pub fn body_buffers(&self) -> TransactionBuffers<'_> {
        TransactionBuffers {
            request: None,
            response: None,
            request_body: None,
            response_body: Some(&self.response_body),
            direction: Direction::ToClient,
            sni: None,
        }
    }
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic::new()
    }
}

/// One transaction's four stages through `set`, as the engine runs them: hits found.
pub fn evaluate_transaction(
    set: &SignatureSet,
    stages: &[(Stage, TransactionBuffers<'_>)],
    endpoints: Endpoints,
    now: SystemTime,
    flow: &mut FlowSignatureState,
    hits: &mut Vec<SignatureHit>,
) {
    let mut tx = TxSignatureState::default();
    for (stage, buffers) in stages {
        if !set.has_stage(*stage) {
            continue;
        }
        // A body comes as the engine sees it: once as new bytes (the one search of it),
        // then whole at its end.
        let body = match stage {
            Stage::RequestBody => buffers.request_body,
            Stage::ResponseBody => buffers.response_body,
            _ => None,
        };
        if let Some(body) = body.filter(|b| !b.is_empty()) {
            set.evaluate(*stage, Some(body.len()), buffers, endpoints, now, flow, &mut tx, hits);
        }
        set.evaluate(*stage, None, buffers, endpoints, now, flow, &mut tx, hits);
    }
}

/// What `signatures-micro` runs.
#[derive(Debug, Clone)]
pub struct MicroSpec {
    /// Generated rules.
    pub rules: usize,
    /// Each measurement's duration.
    pub seconds: f64,
    pub seed: u64,
}

/// One measurement: how many times, in how long.
#[derive(Debug, Clone, Serialize)]
pub struct Rate {
    pub iterations: u64,
    pub seconds: f64,
    pub per_second: f64,
    /// Of the bytes given as one iteration's (10^6 bytes).
    pub mb_per_second: f64,
}

/// The prefilter over one input: the suite's rules, the generated ones, and the ratio of
/// the generated set's rate to the suite's.
#[derive(Debug, Clone, Serialize)]
pub struct PrefilterRun {
    pub input_bytes: usize,
    pub suite: Rate,
    pub generated: Rate,
    pub generated_vs_suite: f64,
}

/// Full evaluation of one transaction with one set.
#[derive(Debug, Clone, Serialize)]
pub struct EvaluateRun {
    pub rules: usize,
    pub rate: Rate,
    pub micros_per_transaction: f64,
    /// This set's rate over the no-rule set's.
    pub vs_no_rules: f64,
    /// This set's rate over the suite's.
    pub vs_suite: f64,
    /// Alerts raised over all iterations (0 expected: no rule matches the traffic).
    pub hits: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MicroReport {
    pub seed: u64,
    pub seconds_per_measurement: f64,
    pub rules_generated: usize,
    pub rules_loaded: usize,
    pub suite_rules_loaded: usize,
    pub parse_ms: f64,
    /// `SignatureSet::new`: stages, prefilter, counters.
    pub set_build_ms: f64,
    /// `Prefilter::new` alone, over the same rules.
    pub prefilter_build_ms: f64,
    /// Process VmRSS before parsing and after the set is built (KiB): the delta
    /// approximates the set's memory, allocator slack and parse leftovers included.
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub rss_delta_kib: i64,
    /// What the generated set's prefilter searchers hold (automata, Hyperscan databases).
    pub prefilter_searcher_bytes: usize,
    pub prefilter_request_head: PrefilterRun,
    pub prefilter_response_body: PrefilterRun,
    /// No rules, the suite's, the generated set.
    pub evaluate: Vec<EvaluateRun>,
    pub transaction_bytes: usize,
}

/// The process's resident set (VmRSS), KiB.
fn rss_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/self/status")
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Runs `work` for `seconds` (after a warm-up of a tenth of that, at most 0.5 s) and at
/// most [`MAX_ITERATIONS`] times, reading the clock once per batch.
fn measure(seconds: f64, bytes_per_iteration: usize, mut work: impl FnMut()) -> Rate {
    let mut run = |limit: Duration| {
        let start = Instant::now();
        let mut done = 0u64;
        let mut batch = 1u64;
        let mut batch_start = start;
        loop {
            let this = batch.min(MAX_ITERATIONS - done);
            for _ in 0..this {
                work();
            }
            done += this;
            let now = Instant::now();
            let elapsed = now - start;
            if elapsed >= limit || done >= MAX_ITERATIONS {
                return (done, elapsed);
            }
            // Batches of about a millisecond: the clock costs nothing beside the work.
            if now - batch_start < Duration::from_millis(1) {
                batch = (batch * 2).min(1 << 20);
            }
            batch_start = now;
        }
    };
    run(Duration::from_secs_f64((seconds / 10.0).min(0.5)));
    let (iterations, elapsed) = run(Duration::from_secs_f64(seconds));
    let secs = elapsed.as_secs_f64();
    let per_second = iterations as f64 / secs;
    Rate {
        iterations,
        seconds: secs,
        per_second,
        mb_per_second: per_second * bytes_per_iteration as f64 / 1e6,
    }
}

fn prefilter_rate(prefilter: &Prefilter, buffers: &TransactionBuffers<'_>, bytes: usize, seconds: f64) -> Rate {
    let mut out = Vec::new();
    measure(seconds, bytes, || {
        prefilter.candidates(black_box(buffers), &mut out);
        black_box(&out);
    })
}

fn evaluate_run(set: &SignatureSet, traffic: &Traffic, seconds: f64, bytes: usize) -> EvaluateRun {
    let stages = traffic.stages();
    let now = SystemTime::now();
    let mut flow = FlowSignatureState::default();
    let mut hits = Vec::new();
    let mut total_hits = 0u64;
    let rate = measure(seconds, bytes, || {
        evaluate_transaction(set, black_box(&stages), traffic.endpoints, now, &mut flow, &mut hits);
        total_hits += hits.len() as u64;
        hits.clear();
    });
    EvaluateRun {
        rules: set.rules().len(),
        micros_per_transaction: 1e6 / rate.per_second,
        rate,
        vs_no_rules: 1.0,
        vs_suite: 1.0,
        hits: total_hits,
    }
}

/// The microbench: see the module's documentation.
pub fn run_micro(spec: &MicroSpec) -> Result<MicroReport> {
    anyhow::ensure!(
        spec.seconds.is_finite() && spec.seconds > 0.0,
        "--seconds must be a positive number, not {}",
        spec.seconds
    );
    anyhow::ensure!(spec.rules >= 1, "--rules must be 1 or more");
    let traffic = Traffic::new();

    // The generated set first, while the process is small and quiet: its memory.
    let text = generated_content_rules(spec.rules, spec.seed);
    let rss_before_kib = rss_kib()?;
    let started = Instant::now();
    let loaded = load_rules(&text, "generated.rules")?;
    let parse = started.elapsed();
    let rules_loaded = loaded.rules.len();
    let started = Instant::now();
    let generated = SignatureSet::new(loaded).map_err(anyhow::Error::msg)?;
    let set_build = started.elapsed();
    let rss_after_kib = rss_kib()?;
    drop(text);

    let started = Instant::now();
    let generated_prefilter = Prefilter::new(generated.rules()).map_err(anyhow::Error::msg)?;
    let prefilter_build = started.elapsed();
    // The generated rules are to cost looking, not matching: none is even a candidate.
    let mut candidates = Vec::new();
    for (stage, buffers) in traffic.stages() {
        generated_prefilter.candidates(&buffers, &mut candidates);
        anyhow::ensure!(
            candidates.is_empty(),
            "{} generated rules are candidates at {stage:?}: the traffic holds their patterns",
            candidates.len()
        );
    }

    let suite = SignatureSet::new(load_rules(SUITE_RULES, "suite.rules")?).map_err(anyhow::Error::msg)?;
    let suite_prefilter = Prefilter::new(suite.rules()).map_err(anyhow::Error::msg)?;
    let empty = SignatureSet::new(LoadedRules::default()).map_err(anyhow::Error::msg)?;

    let seconds = spec.seconds;
    let prefilter_run = |buffers: &TransactionBuffers<'_>, bytes: usize| {
        let suite = prefilter_rate(&suite_prefilter, buffers, bytes, seconds);
        let generated = prefilter_rate(&generated_prefilter, buffers, bytes, seconds);
        PrefilterRun {
            input_bytes: bytes,
            generated_vs_suite: generated.per_second / suite.per_second,
            suite,
            generated,
        }
    };
    let prefilter_request_head = prefilter_run(&traffic.head_buffers(), REQUEST_HEAD.len());
    let prefilter_response_body = prefilter_run(&traffic.body_buffers(), traffic.response_body.len());

    let transaction_bytes = REQUEST_HEAD.len() + RESPONSE_HEAD.len() + traffic.response_body.len();
    let mut evaluate: Vec<EvaluateRun> = [&empty, &suite, &generated]
        .into_iter()
        .map(|set| evaluate_run(set, &traffic, seconds, transaction_bytes))
        .collect();
    let (baseline, suite_rate) = (evaluate[0].rate.per_second, evaluate[1].rate.per_second);
    for run in &mut evaluate {
        run.vs_no_rules = run.rate.per_second / baseline;
        run.vs_suite = run.rate.per_second / suite_rate;
    }

    Ok(MicroReport {
        seed: spec.seed,
        seconds_per_measurement: seconds,
        rules_generated: spec.rules,
        rules_loaded,
        suite_rules_loaded: suite.rules().len(),
        parse_ms: ms(parse),
        set_build_ms: ms(set_build),
        prefilter_build_ms: ms(prefilter_build),
        rss_before_kib,
        rss_after_kib,
        rss_delta_kib: rss_after_kib as i64 - rss_before_kib as i64,
        prefilter_searcher_bytes: generated_prefilter.searcher_bytes(),
        prefilter_request_head,
        prefilter_response_body,
        evaluate,
        transaction_bytes,
    })
}

/// A rate in a few significant digits: 12.3 M, 456 k, 789.
fn human(n: f64) -> String {
    match n {
        n if n >= 1e9 => format!("{:.2} G", n / 1e9),
        n if n >= 1e6 => format!("{:.2} M", n / 1e6),
        n if n >= 1e3 => format!("{:.1} k", n / 1e3),
        n => format!("{n:.1} "),
    }
}

/// A ratio of rates: three decimals, or two significant digits when it is small.
fn ratio(r: f64) -> String {
    if r >= 0.01 {
        format!("{r:.3}x")
    } else {
        format!("{r:.1e}x")
    }
}

impl MicroReport {
    /// The human summary.
    pub fn to_table(&self) -> String {
        let mut t = String::new();
        let n = self.rules_loaded;
        let _ = writeln!(
            t,
            "signatures-micro: {} generated rules (seed {:#x}), {} s per measurement",
            self.rules_generated, self.seed, self.seconds_per_measurement
        );
        let _ = writeln!(
            t,
            "rules loaded        {n} generated ({} skipped), {} suite",
            self.rules_generated - n,
            self.suite_rules_loaded
        );
        let _ = writeln!(
            t,
            "load time           parse {:.1} ms, SignatureSet::new {:.1} ms (Prefilter::new alone {:.1} ms)",
            self.parse_ms, self.set_build_ms, self.prefilter_build_ms
        );
        let _ = writeln!(
            t,
            "memory              {:+.1} MiB RSS delta (VmRSS {:.1} -> {:.1} MiB; approximate: allocator slack included), of which the prefilter's searchers {:.1} MiB",
            self.rss_delta_kib as f64 / 1024.0,
            self.rss_before_kib as f64 / 1024.0,
            self.rss_after_kib as f64 / 1024.0,
            self.prefilter_searcher_bytes as f64 / (1024.0 * 1024.0)
        );
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "{:<38} {:>12} {:>8} {:>10}",
            "Prefilter::candidates", "rate", "MB/s", "vs suite"
        );
        for (what, run) in [
            (
                format!("request head ({} B)", self.prefilter_request_head.input_bytes),
                &self.prefilter_request_head,
            ),
            (
                format!(
                    "response body ({} KiB)",
                    self.prefilter_response_body.input_bytes / 1024
                ),
                &self.prefilter_response_body,
            ),
        ] {
            for (label, rate, vs_suite) in [
                (format!("  {what}, suite"), &run.suite, 1.0),
                (format!("  {what}, {n} rules"), &run.generated, run.generated_vs_suite),
            ] {
                let _ = writeln!(
                    t,
                    "{label:<38} {:>12} {:>8.0} {:>10}",
                    format!("{}/s", human(rate.per_second)),
                    rate.mb_per_second,
                    ratio(vs_suite)
                );
            }
        }
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "{:<38} {:>12} {:>8} {:>10} {:>10}",
            format!("SignatureSet::evaluate ({} KiB tx)", self.transaction_bytes / 1024),
            "tx/s",
            "µs/tx",
            "vs 0 rules",
            "vs suite"
        );
        for (label, run) in ["  0 rules".to_string(), "  suite".to_string(), format!("  {n} rules")]
            .into_iter()
            .zip(&self.evaluate)
        {
            let _ = writeln!(
                t,
                "{label:<38} {:>12} {:>8.2} {:>10} {:>10}",
                human(run.rate.per_second),
                run.micros_per_transaction,
                ratio(run.vs_no_rules),
                ratio(run.vs_suite)
            );
        }
        let hits: Vec<String> = self.evaluate.iter().map(|r| r.hits.to_string()).collect();
        let _ = writeln!(t, "alerts raised (0, suite, {n} rules): {}", hits.join(", "));
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use loupe_dataplane::inspect::signatures::parse_rule;

    #[test]
    fn five_thousand_generated_rules_parse_and_build() {
        let text = generated_content_rules(5000, DEFAULT_SEED);
        let vars = rule_vars(&BTreeMap::new());
        let mut sids = HashSet::new();
        let mut lines = 0;
        for line in text.lines() {
            lines += 1;
            assert!(line.starts_with("alert http "), "{line}");
            let rule = parse_rule(line, &vars).unwrap_or_else(|e| panic!("{line}\n{e}"));
            assert!(rule.fast_pattern().is_some(), "no fast pattern: {line}");
            assert!(sids.insert(rule.meta.sid), "sid twice: {line}");
        }
        assert_eq!(lines, 5000);
        assert_eq!(sids.iter().min(), Some(&GENERATED_FIRST_SID));
        assert_eq!(sids.iter().max(), Some(&(GENERATED_FIRST_SID + 4999)));
        let set = SignatureSet::new(load_rules(&text, "generated.rules").unwrap()).unwrap();
        assert_eq!(set.rules().len(), 5000);
        // The mix asked for is there.
        for needle in [
            "http.uri;",
            "http.host;",
            "http.user_agent;",
            "http.header;",
            "file.data;",
            "nocase;",
            "distance:",
            "within:",
            "/U\";",
            "startswith;",
            "endswith;",
            "http_uri;",
        ] {
            assert!(text.contains(needle), "no rule has {needle}");
        }
    }

    #[test]
    fn generation_is_deterministic() {
        assert_eq!(generated_content_rules(200, 7), generated_content_rules(200, 7));
        assert_ne!(generated_content_rules(200, 7), generated_content_rules(200, 8));
    }

    #[test]
    fn no_generated_rule_matches_the_bench_traffic() {
        let traffic = Traffic::new();
        assert_eq!(traffic.response_body.len(), RESPONSE_BODY_BYTES);
        assert!((350..=450).contains(&REQUEST_HEAD.len()), "{}", REQUEST_HEAD.len());
        let set = SignatureSet::new(load_rules(&generated_content_rules(5000, DEFAULT_SEED), "g").unwrap()).unwrap();
        let prefilter = Prefilter::new(set.rules()).unwrap();
        let mut out = Vec::new();
        for (_, buffers) in traffic.stages() {
            prefilter.candidates(&buffers, &mut out);
            assert!(out.is_empty(), "candidates {out:?}");
        }
        let mut flow = FlowSignatureState::default();
        let mut hits = Vec::new();
        evaluate_transaction(
            &set,
            &traffic.stages(),
            traffic.endpoints,
            SystemTime::now(),
            &mut flow,
            &mut hits,
        );
        assert!(hits.is_empty());
    }

    #[test]
    fn the_suite_rules_load() {
        assert_eq!(load_rules(SUITE_RULES, "suite").unwrap().rules.len(), 8);
    }
}
