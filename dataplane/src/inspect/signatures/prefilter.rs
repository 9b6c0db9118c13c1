//! The multi-pattern prefilter: each rule's fast pattern (see [`Rule::fast_pattern`]) goes
//! into one Aho-Corasick automaton per buffer, so a transaction is searched once per
//! buffer whatever the number of rules, and only the rules whose fast pattern occurs are
//! evaluated in full. Rules without a usable fast pattern are evaluated every time.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use super::detect::Buffers;
use super::rule::{Buffer, Rule};

/// One buffer's automaton and, for each of its patterns, the rule it came from.
struct BufferPatterns {
    buffer: Buffer,
    automaton: AhoCorasick,
    rule_of_pattern: Vec<u32>,
}

/// A buffer, its rules' fast patterns and the index of each pattern's rule.
type PatternsOf<'a> = (Buffer, Vec<&'a [u8]>, Vec<u32>);

/// Which rules may match what is being inspected.
pub struct Prefilter {
    buffers: Vec<BufferPatterns>,
    /// Rules with no non-negated content: always candidates.
    always: Vec<u32>,
    rule_count: usize,
}

impl Prefilter {
    pub fn new(rules: &[Rule]) -> Result<Prefilter, String> {
        // Per buffer: its fast patterns, and the rule of each.
        let mut patterns: Vec<PatternsOf<'_>> = Vec::new();
        let mut always = Vec::new();
        for (index, rule) in rules.iter().enumerate() {
            let index = u32::try_from(index).map_err(|_| "more than 2^32 rules".to_string())?;
            match rule.fast_pattern() {
                Some((buffer, content)) => {
                    let slot = match patterns.iter().position(|(b, _, _)| *b == buffer) {
                        Some(slot) => slot,
                        None => {
                            patterns.push((buffer, Vec::new(), Vec::new()));
                            patterns.len() - 1
                        }
                    };
                    patterns[slot].1.push(&content.pattern);
                    patterns[slot].2.push(index);
                }
                None => always.push(index),
            }
        }
        let mut buffers = Vec::with_capacity(patterns.len());
        for (buffer, texts, rule_of_pattern) in patterns {
            // Case-insensitive for every pattern: a nocase content needs it, and for the
            // others the full evaluation that follows checks the case. Overlapping
            // search needs the standard match semantics.
            let automaton = AhoCorasickBuilder::new()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::Standard)
                .build(&texts)
                .map_err(|e| format!("the prefilter for {} does not build: {e}", buffer.name()))?;
            buffers.push(BufferPatterns {
                buffer,
                automaton,
                rule_of_pattern,
            });
        }
        Ok(Prefilter {
            buffers,
            always,
            rule_count: rules.len(),
        })
    }

    /// The candidate rules' indices, ascending (file order), into `out`. `seen` is scratch
    /// space the caller keeps between calls (all false between them), so a call costs
    /// what the buffers hold and the candidates found, not the number of rules.
    pub fn candidates(&self, buffers: &dyn Buffers, seen: &mut Vec<bool>, out: &mut Vec<u32>) {
        out.clear();
        seen.resize(self.rule_count, false);
        out.extend_from_slice(&self.always);
        for patterns in &self.buffers {
            let Some(data) = buffers.get(patterns.buffer) else {
                continue;
            };
            for found in patterns.automaton.find_overlapping_iter(data) {
                let rule = patterns.rule_of_pattern[found.pattern().as_usize()];
                if !std::mem::replace(&mut seen[rule as usize], true) {
                    out.push(rule);
                }
            }
        }
        for &rule in out.iter() {
            seen[rule as usize] = false;
        }
        out.sort_unstable();
    }
}
