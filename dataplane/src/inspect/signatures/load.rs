//! Rule files to a loaded set: globs expanded, comments and blank lines skipped, lines
//! ending in `\` joined, each rule parsed on its own so one bad rule costs only itself,
//! duplicate `gid:sid` pairs refused. Everything skipped is reported with file, line,
//! sid and reason.

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::parse::{parse_rule, RuleError};
use super::rule::Rule;

/// A rule longer than this (after joining continuation lines) is refused: no published
/// rule comes near it, and a runaway continuation must not take the whole file.
pub const MAX_RULE_BYTES: usize = 64 * 1024;

/// What was loaded: the rules, and where each came from.
#[derive(Debug, Default)]
pub struct LoadedRules {
    pub rules: Vec<Rule>,
    /// `origins[i]`: the file and first line of `rules[i]`.
    pub origins: Vec<(PathBuf, usize)>,
    pub report: LoadReport,
}

/// How loading went, file by file and rule by rule.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Each file read and how many rules it gave.
    pub files: Vec<(PathBuf, usize)>,
    pub skipped: Vec<SkippedRule>,
    /// Files (or globs) that could not be read at all.
    pub unreadable: Vec<(String, String)>,
}

impl LoadReport {
    pub fn loaded(&self) -> usize {
        self.files.iter().map(|(_, n)| n).sum()
    }
}

/// A rule that was not loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRule {
    pub file: PathBuf,
    /// The rule's first line (1-based).
    pub line: usize,
    pub error: RuleError,
}

impl fmt::Display for SkippedRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.error)
    }
}

/// Loads every file `patterns` name (paths or globs such as `/etc/loupe/rules/*.rules`),
/// in order; a glob's files in name order.
pub fn load_rule_files(patterns: &[PathBuf], vars: &HashMap<String, String>) -> LoadedRules {
    let mut loaded = LoadedRules::default();
    let mut first_of_sid: HashMap<(u32, u32), (PathBuf, usize)> = HashMap::new();
    for pattern in patterns {
        let paths = match expand(pattern) {
            Ok(paths) => paths,
            Err(e) => {
                loaded.report.unreadable.push((pattern.display().to_string(), e));
                continue;
            }
        };
        for path in paths {
            match std::fs::File::open(&path) {
                Ok(file) => load_reader(BufReader::new(file), &path, vars, &mut first_of_sid, &mut loaded),
                Err(e) => loaded
                    .report
                    .unreadable
                    .push((path.display().to_string(), e.to_string())),
            }
        }
    }
    loaded
}

/// A path, or a glob's matches sorted by name. A glob that matches nothing is an error:
/// an operator who wrote it expected rules.
fn expand(pattern: &Path) -> Result<Vec<PathBuf>, String> {
    let Some(text) = pattern.to_str() else {
        return Ok(vec![pattern.to_path_buf()]);
    };
    if !text.contains(['*', '?', '[']) {
        return Ok(vec![pattern.to_path_buf()]);
    }
    let pattern = text;
    let mut paths: Vec<PathBuf> = glob::glob(pattern)
        .map_err(|e| format!("not a valid glob: {e}"))?
        .filter_map(Result::ok)
        .filter(|p| p.is_file())
        .collect();
    if paths.is_empty() {
        return Err("the glob matches no file".to_string());
    }
    paths.sort();
    Ok(paths)
}

/// Loads the rules of one file's text (a reader, so tests need no files).
pub fn load_reader(
    reader: impl BufRead,
    path: &Path,
    vars: &HashMap<String, String>,
    first_of_sid: &mut HashMap<(u32, u32), (PathBuf, usize)>,
    loaded: &mut LoadedRules,
) {
    let mut count = 0;
    let mut pending = String::new();
    let mut pending_line = 0;
    let mut too_long = false;
    for (index, line) in reader.split(b'\n').enumerate() {
        let number = index + 1;
        let line = match line {
            Ok(bytes) => bytes,
            Err(e) => {
                loaded
                    .report
                    .unreadable
                    .push((path.display().to_string(), format!("line {number}: {e}")));
                break;
            }
        };
        let Ok(line) = String::from_utf8(line) else {
            loaded.report.skipped.push(SkippedRule {
                file: path.to_path_buf(),
                line: number,
                error: plain_error("the line is not UTF-8"),
            });
            continue;
        };
        let line = line.trim_end_matches('\r');
        if pending.is_empty() {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            pending_line = number;
        }
        let (text, continues) = match line.strip_suffix('\\') {
            Some(text) => (text, true),
            None => (line, false),
        };
        if pending.len() + text.len() > MAX_RULE_BYTES {
            too_long = true;
        } else {
            pending.push_str(text);
        }
        if continues {
            continue;
        }
        let rule_text = std::mem::take(&mut pending);
        let mut skip = |error: RuleError| {
            loaded.report.skipped.push(SkippedRule {
                file: path.to_path_buf(),
                line: pending_line,
                error,
            })
        };
        if std::mem::take(&mut too_long) {
            skip(plain_error(format!("the rule is longer than {MAX_RULE_BYTES} bytes")));
            continue;
        }
        match parse_rule(&rule_text, vars) {
            Ok(rule) => {
                let key = (rule.meta.gid, rule.meta.sid);
                if let Some((file, line)) = first_of_sid.get(&key) {
                    let mut error = plain_error(format!(
                        "duplicate: gid {} sid {} is already loaded from {}:{line}",
                        key.0,
                        key.1,
                        file.display()
                    ));
                    error.sid = Some(key.1);
                    skip(error);
                    continue;
                }
                first_of_sid.insert(key, (path.to_path_buf(), pending_line));
                loaded.origins.push((path.to_path_buf(), pending_line));
                loaded.rules.push(rule);
                count += 1;
            }
            Err(error) => skip(error),
        }
    }
    if !pending.is_empty() || too_long {
        loaded.report.skipped.push(SkippedRule {
            file: path.to_path_buf(),
            line: pending_line,
            error: plain_error("the file ends inside a rule continued with '\\'"),
        });
    }
    loaded.report.files.push((path.to_path_buf(), count));
}

fn plain_error(reason: impl Into<String>) -> RuleError {
    RuleError {
        keyword: None,
        reason: reason.into(),
        unsupported: false,
        sid: None,
    }
}
