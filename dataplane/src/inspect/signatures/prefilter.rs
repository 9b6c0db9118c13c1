//! The multi-pattern prefilter: each rule's fast pattern (see [`Rule::fast_pattern`]) goes
//! into one Aho-Corasick automaton per buffer, so a transaction is searched once per
//! buffer whatever the number of rules, and only the rules whose fast pattern occurs are
//! evaluated in full. Rules without a usable fast pattern are evaluated every time.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};

use super::detect::Buffers;
use super::rule::{Buffer, Rule};

/// One buffer's automaton (for its `nocase` patterns or for the others) and, for each of
/// its patterns, the rule it came from.
struct BufferPatterns {
    buffer: Buffer,
    automaton: AhoCorasick,
    rule_of_pattern: Vec<u32>,
}

/// A buffer, whether its patterns are searched ignoring case, its rules' fast patterns
/// and the index of each pattern's rule.
type PatternsOf<'a> = (Buffer, bool, Vec<&'a [u8]>, Vec<u32>);

/// A buffer's case-sensitive patterns get an automaton of their own only up to this
/// many: a few literals are found by the crate's vectorised literal search (tens of GB/s
/// here), which a case-insensitive automaton cannot use; many are not, and then one
/// case-insensitive pass over the buffer beats two (`loupe-bench signatures-micro`: 5,000
/// rules' body search went from 220 to 370 MB/s with one pass).
const CASE_SENSITIVE_GROUP_MAX: usize = 64;

/// Which rules may match what is being inspected.
pub struct Prefilter {
    buffers: Vec<BufferPatterns>,
    /// Rules with no non-negated content: always candidates.
    always: Vec<u32>,
    rule_count: usize,
}

impl Prefilter {
    pub fn new(rules: &[Rule]) -> Result<Prefilter, String> {
        // The buffers whose case-sensitive fast patterns are few enough for a group.
        let mut sensitive_counts: Vec<(Buffer, usize)> = Vec::new();
        for (buffer, content) in rules.iter().filter_map(Rule::fast_pattern) {
            if content.nocase {
                continue;
            }
            match sensitive_counts.iter_mut().find(|(b, _)| *b == buffer) {
                Some((_, count)) => *count += 1,
                None => sensitive_counts.push((buffer, 1)),
            }
        }
        let case_sensitive_groups: Vec<Buffer> = sensitive_counts
            .iter()
            .filter(|(_, count)| *count <= CASE_SENSITIVE_GROUP_MAX)
            .map(|(buffer, _)| *buffer)
            .collect();
        // Per buffer and case: its fast patterns, and the rule of each.
        let mut patterns: Vec<PatternsOf<'_>> = Vec::new();
        let mut always = Vec::new();
        for (index, rule) in rules.iter().enumerate() {
            let index = u32::try_from(index).map_err(|_| "more than 2^32 rules".to_string())?;
            match rule.fast_pattern() {
                Some((buffer, content)) => {
                    let nocase = content.nocase || !case_sensitive_groups.contains(&buffer);
                    let slot = match patterns.iter().position(|(b, n, _, _)| *b == buffer && *n == nocase) {
                        Some(slot) => slot,
                        None => {
                            patterns.push((buffer, nocase, Vec::new(), Vec::new()));
                            patterns.len() - 1
                        }
                    };
                    patterns[slot].2.push(&content.pattern);
                    patterns[slot].3.push(index);
                }
                None => always.push(index),
            }
        }
        let mut buffers = Vec::with_capacity(patterns.len());
        for (buffer, nocase, texts, rule_of_pattern) in patterns {
            // A profile of the bench with 5,000 rules spent a quarter of loupe's time in
            // this search: a DFA searches at twice the rate of the default NFA here, for
            // memory built once per rule set. A case-insensitive search is a superset:
            // the full evaluation that follows checks the case. Overlapping search needs
            // the standard match semantics.
            let automaton = AhoCorasickBuilder::new()
                .ascii_case_insensitive(nocase)
                .kind(Some(AhoCorasickKind::DFA))
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
