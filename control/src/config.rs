//! The configuration file (TOML). Every error names the file, the line and what was
//! expected. The policy issue grows this schema (profiles, rules, trust, categories); the
//! dataplane section is what the virtual wire needs.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// No worker serving a queue: inspected traffic is bridged.
    Open,
    /// No worker serving a queue: inspected traffic is dropped (and counted).
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dataplane {
    pub inside: String,
    pub outside: String,
    pub inspect_ports: Vec<u16>,
    pub queues: u32,
    pub fail: FailMode,
    /// Flows one worker holds at most.
    pub max_flows: usize,
    /// TCP buffer per direction and side of a flow, in bytes.
    pub tcp_buffer: usize,
    /// "native" (driver) or "generic" (skb) XDP.
    pub xdp_mode: String,
    /// First CPU core to pin workers to; worker q runs on core first_core + q.
    pub first_core: Option<usize>,
}

impl Default for Dataplane {
    fn default() -> Self {
        Dataplane {
            inside: "in0".into(),
            outside: "out0".into(),
            inspect_ports: vec![443],
            queues: 1,
            fail: FailMode::Open,
            max_flows: 16_384,
            tcp_buffer: 64 * 1024,
            xdp_mode: "native".into(),
            first_core: None,
        }
    }
}

/// What to do with a stream on an inspected port that does not start with a TLS
/// ClientHello.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotTls {
    /// Reset both connections and log `not TLS` (the default).
    #[default]
    Block,
    /// Relay it byte for byte, uninspected, and log it as spliced.
    Splice,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Decryption {
    pub not_tls: NotTls,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub dataplane: Dataplane,
    #[serde(default)]
    pub decryption: Decryption,
}

/// A configuration error with its place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

/// Finds the line of `key = ` inside `[table]`, for errors found after parsing.
fn line_of_key(text: &str, table: &str, key: &str) -> Option<usize> {
    let mut in_table = false;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_table = trimmed.trim_start_matches('[').trim_end_matches(']').trim() == table;
            continue;
        }
        if in_table && trimmed.split('=').next().map(str::trim) == Some(key) {
            return Some(i + 1);
        }
    }
    None
}

impl Config {
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            line: e.span().map(|span| line_of(text, span.start)),
            message: e.message().trim().to_string(),
        })?;
        config.validate(text, file)?;
        Ok(config)
    }

    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            line: None,
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, file)
    }

    fn validate(&self, text: &str, file: &Path) -> Result<(), ConfigError> {
        let d = &self.dataplane;
        let error = |key: &str, message: String| ConfigError {
            file: file.to_path_buf(),
            line: line_of_key(text, "dataplane", key),
            message: format!("[dataplane] {key}: {message}"),
        };
        if d.inside.is_empty() || d.inside.len() > 15 {
            return Err(error(
                "inside",
                format!("expected an interface name of 1 to 15 characters, got {:?}", d.inside),
            ));
        }
        if d.outside.is_empty() || d.outside.len() > 15 {
            return Err(error(
                "outside",
                format!("expected an interface name of 1 to 15 characters, got {:?}", d.outside),
            ));
        }
        if d.inside == d.outside {
            return Err(error(
                "outside",
                format!("expected a port other than inside ({:?})", d.inside),
            ));
        }
        if d.inspect_ports.is_empty() || d.inspect_ports.contains(&0) {
            return Err(error(
                "inspect_ports",
                "expected a non-empty list of ports from 1 to 65535".into(),
            ));
        }
        if d.queues == 0 || d.queues > 64 {
            return Err(error("queues", format!("expected 1 to 64 queues, got {}", d.queues)));
        }
        if d.max_flows == 0 {
            return Err(error("max_flows", "expected at least 1".into()));
        }
        if !(4096..=16 << 20).contains(&d.tcp_buffer) {
            return Err(error(
                "tcp_buffer",
                format!("expected 4096 to 16777216 bytes, got {}", d.tcp_buffer),
            ));
        }
        if d.xdp_mode != "native" && d.xdp_mode != "generic" {
            return Err(error(
                "xdp_mode",
                format!("expected \"native\" or \"generic\", got {:?}", d.xdp_mode),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("loupe.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_file_gives_lab_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.dataplane.inside, "in0");
        assert_eq!(c.dataplane.outside, "out0");
        assert_eq!(c.dataplane.inspect_ports, vec![443]);
        assert_eq!(c.dataplane.fail, FailMode::Open);
    }

    #[test]
    fn reads_not_tls_policy() {
        assert_eq!(parse("").unwrap().decryption.not_tls, NotTls::Block);
        let c = parse("[decryption]\nnot_tls = \"splice\"\n").unwrap();
        assert_eq!(c.decryption.not_tls, NotTls::Splice);
        let err = parse("[decryption]\nnot_tls = \"allow\"\n").unwrap_err();
        assert!(
            err.starts_with("loupe.toml:2: ") && err.contains("block") && err.contains("splice"),
            "{err}"
        );
    }

    #[test]
    fn reads_dataplane() {
        let c = parse("[dataplane]\ninside = \"eth1\"\noutside = \"eth2\"\ninspect_ports = [443, 8443]\nqueues = 2\nfail = \"closed\"\n").unwrap();
        assert_eq!(c.dataplane.inspect_ports, vec![443, 8443]);
        assert_eq!(c.dataplane.queues, 2);
        assert_eq!(c.dataplane.fail, FailMode::Closed);
    }

    #[test]
    fn errors_name_file_line_and_expectation() {
        let err = parse("[dataplane]\ninside = \"in0\"\nfail = \"ajar\"\n").unwrap_err();
        assert!(err.starts_with("loupe.toml:3: "), "{err}");
        assert!(err.contains("open") && err.contains("closed"), "{err}");

        let err = parse("[dataplane]\nqueues = 0\n").unwrap_err();
        assert_eq!(err, "loupe.toml:2: [dataplane] queues: expected 1 to 64 queues, got 0");

        let err = parse("[dataplane]\n\ninspect_port = [443]\n").unwrap_err();
        assert!(
            err.starts_with("loupe.toml:3: ") && err.contains("inspect_port"),
            "{err}"
        );

        let err = parse("[dataplane]\noutside = \"in0\"\n").unwrap_err();
        assert_eq!(
            err,
            "loupe.toml:2: [dataplane] outside: expected a port other than inside (\"in0\")"
        );
    }
}
