//! Content signatures in Suricata's rule language (a documented subset), sans-IO: rule
//! text in, [`Rule`]s or errors naming the file, line, sid and keyword out; buffers in,
//! matches out.
//!
//! - [`rule`]: what a rule says, as data (header, meta, detections, flow conditions).
//! - [`parse`]: one rule's text to a [`Rule`], Suricata's syntax and escaping rules.
//! - [`network`]: address and port sets of a rule's header, with variables resolved.
//! - [`buffers`]: the sticky buffers of a transaction, built from its heads and bodies.
//! - [`matcher`]: a loaded set run over transactions, stage by stage, with `flowbits`.
//! - [`detect`]: a rule's detections evaluated over the buffers of a transaction
//!   (content with its modifiers, pcre, bsize, urilen, isdataat), with Suricata's
//!   backtracking over relative matches.
//! - [`rate`]: `threshold` and `detection_filter` windows, per tracked address.
//! - [`prefilter`]: every rule's fast pattern in one pass per buffer (Hyperscan for large
//!   groups, Aho-Corasick for small ones); only the rules whose pattern occurs are
//!   evaluated.
//! - [`load`]: rule files (comments, continuation lines, duplicate sids) to a loaded set
//!   and a line-by-line report of what was skipped and why.
//!
//! Nothing here reads a clock or a socket; [`load`] reads the rule files it is given, the
//! one I/O it does, so `loupe check` and the daemon report the same errors.

use std::collections::{BTreeMap, HashMap};

pub mod buffers;
pub mod detect;
pub mod load;
pub mod matcher;
pub mod network;
pub mod parse;
pub mod prefilter;
pub mod rate;
pub mod rule;

#[cfg(test)]
mod tests;

pub use buffers::{HeadBuffers, TransactionBuffers, WantedBuffers};
pub use load::{load_rule_files, LoadReport, LoadedRules, SkippedRule};
pub use matcher::{Endpoints, FlowSignatureState, SignatureHit, SignatureSet, Stage, TxSignatureState};
pub use parse::{parse_rule, RuleError};
pub use rule::{Action, Buffer, Detection, Rule};

/// The address and port groups Suricata's default configuration defines, which published
/// rules refer to, so they load without an operator defining each. `HTTP_PORTS` adds 443:
/// loupe's HTTP is the decrypted HTTPS.
const DEFAULT_VARS: &[(&str, &str)] = &[
    ("HOME_NET", "[192.168.0.0/16,10.0.0.0/8,172.16.0.0/12]"),
    ("EXTERNAL_NET", "!$HOME_NET"),
    ("HTTP_SERVERS", "$HOME_NET"),
    ("SMTP_SERVERS", "$HOME_NET"),
    ("SQL_SERVERS", "$HOME_NET"),
    ("DNS_SERVERS", "$HOME_NET"),
    ("TELNET_SERVERS", "$HOME_NET"),
    ("AIM_SERVERS", "$EXTERNAL_NET"),
    ("DC_SERVERS", "$HOME_NET"),
    ("DNP3_SERVER", "$HOME_NET"),
    ("DNP3_CLIENT", "$HOME_NET"),
    ("MODBUS_CLIENT", "$HOME_NET"),
    ("MODBUS_SERVER", "$HOME_NET"),
    ("ENIP_CLIENT", "$HOME_NET"),
    ("ENIP_SERVER", "$HOME_NET"),
    ("HTTP_PORTS", "[80,443]"),
    ("SHELLCODE_PORTS", "!80"),
    ("ORACLE_PORTS", "1521"),
    ("SSH_PORTS", "22"),
    ("DNP3_PORTS", "20000"),
    ("MODBUS_PORTS", "502"),
    ("FILE_DATA_PORTS", "[$HTTP_PORTS,110,143]"),
    ("FTP_PORTS", "21"),
    ("GENEVE_PORTS", "6081"),
    ("VXLAN_PORTS", "4789"),
    ("TEREDO_PORTS", "3544"),
];

/// The variables rules see: Suricata's defaults, then `[inspection.vars]` over them.
pub fn rule_vars(configured: &BTreeMap<String, String>) -> HashMap<String, String> {
    let mut vars: HashMap<String, String> = DEFAULT_VARS
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    vars.extend(configured.iter().map(|(n, v)| (n.clone(), v.clone())));
    vars
}
