//! The multi-pattern prefilter: each rule's fast pattern (see [`Rule::fast_pattern`]) goes
//! into one searcher per buffer, so a transaction is searched once per buffer whatever
//! the number of rules, and only the rules whose fast pattern occurs are evaluated in
//! full. Rules without a usable fast pattern are evaluated every time.

use std::collections::HashMap;
use std::sync::Mutex;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};
use hyperscan::prelude::{BlockDatabase, Builder, Matching, Scratch};
use hyperscan::{Literal, Literals};

use super::detect::Buffers;
use super::rule::{Buffer, Rule};

/// Up to this many patterns, a buffer's group is searched with the `aho-corasick` crate,
/// whose vectorised literal search (tens of GB/s here) finds a few literals faster than
/// anything else and needs no scratch space. Above it, with Hyperscan (the engine
/// Suricata uses for the same job): its literal matcher searched 1,000 case-insensitive
/// patterns at about 2.9 GB/s here, where an Aho-Corasick automaton walks one byte at a
/// time at 0.3 (`aho-corasick`'s DFA, or `daachorse`'s double array; a profile of the
/// bench with 5,000 rules put 60% of the signatures' added cost per request in that walk).
///
/// Content buffers (bodies, the raw payload) always go to Hyperscan: `aho-corasick`'s
/// prefilter looks for a pattern's rarest bytes, which in text are rare indeed (the
/// suite's body rules ran at 74 GB/s over HTML), but in bytes that look random (images,
/// archives, media) every byte value comes once in 256: the lab's random 1 KiB bodies
/// stopped it every hundred bytes or so for an automaton walk, and the suite's eight
/// rules cost more per request than 5,000 generated ones on Hyperscan.
const SMALL_GROUP_MAX: usize = 64;

/// How one group of patterns is searched.
enum Engine {
    AhoCorasick(AhoCorasick),
    /// Literals only (`hs_compile_lit_multi`), each reported once per scan.
    Hyperscan(BlockDatabase),
}

/// An engine over some of a group's patterns: `pattern_of[id]` is the group's pattern
/// index for the engine's pattern `id`.
struct Searcher {
    engine: Engine,
    pattern_of: Vec<u32>,
}

/// One buffer's searchers (for its `nocase` patterns or for the others) and, for each of
/// its distinct patterns, the rules it came from.
struct BufferPatterns {
    buffer: Buffer,
    searchers: Vec<Searcher>,
    /// `rules[pattern_rules[p]..pattern_rules[p + 1]]` are pattern `p`'s rules.
    pattern_rules: Vec<u32>,
    rules: Vec<u32>,
}

/// A buffer's group of patterns while it is being collected: each distinct pattern
/// (distinct ignoring case when the group ignores case) and its rules.
struct Group {
    buffer: Buffer,
    nocase: bool,
    patterns: Vec<Vec<u8>>,
    rules_of: Vec<Vec<u32>>,
    index_of: HashMap<Vec<u8>, usize>,
}

/// Hyperscan's scratch space: one per concurrent scan. Workers take one for a call and
/// give it back; a new one is cloned from `prototype` (sized for every database of the
/// set) when all are taken.
struct ScratchPool {
    prototype: Scratch,
    free: Vec<Scratch>,
}

/// Which rules may match what is being inspected.
pub struct Prefilter {
    buffers: Vec<BufferPatterns>,
    /// Rules with no non-negated content: always candidates.
    always: Vec<u32>,
    /// `None` when no group is searched with Hyperscan.
    scratch: Option<Mutex<ScratchPool>>,
}

impl Prefilter {
    pub fn new(rules: &[Rule]) -> Result<Prefilter, String> {
        // The buffers whose case-sensitive fast patterns are few enough for a group of
        // their own: many are searched in the buffer's case-insensitive pass instead
        // (a superset: the full evaluation that follows checks the case), since one pass
        // over the bytes beats two.
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
            .filter(|(_, count)| *count <= SMALL_GROUP_MAX)
            .map(|(buffer, _)| *buffer)
            .collect();
        let mut groups: Vec<Group> = Vec::new();
        let mut always = Vec::new();
        for (index, rule) in rules.iter().enumerate() {
            let index = u32::try_from(index).map_err(|_| "more than 2^32 rules".to_string())?;
            let Some((buffer, content)) = rule.fast_pattern().filter(|(_, c)| !c.pattern.is_empty()) else {
                always.push(index);
                continue;
            };
            let nocase = content.nocase || !case_sensitive_groups.contains(&buffer);
            let slot = match groups.iter().position(|g| g.buffer == buffer && g.nocase == nocase) {
                Some(slot) => slot,
                None => {
                    groups.push(Group {
                        buffer,
                        nocase,
                        patterns: Vec::new(),
                        rules_of: Vec::new(),
                        index_of: HashMap::new(),
                    });
                    groups.len() - 1
                }
            };
            let group = &mut groups[slot];
            let key = if nocase {
                content.pattern.to_ascii_lowercase()
            } else {
                content.pattern.clone()
            };
            let next = group.patterns.len();
            let p = *group.index_of.entry(key).or_insert(next);
            if p == next {
                // As written: `aho-corasick` picks its rare bytes for the prefilter by
                // case, and lowercasing them made it pick worse (the suite's request-head
                // search went from 5.5 to 1.3 million per second).
                group.patterns.push(content.pattern.clone());
                group.rules_of.push(Vec::new());
            }
            group.rules_of[p].push(index);
        }
        let mut buffers = Vec::with_capacity(groups.len());
        let mut scratch: Option<Scratch> = None;
        for group in groups {
            let name = group.buffer.name();
            let searchers = if group.patterns.len() <= SMALL_GROUP_MAX && !group.buffer.is_content() {
                let all = (0..group.patterns.len() as u32).collect();
                vec![aho_corasick_searcher(&group.patterns, all, group.nocase, name)?]
            } else {
                // Hyperscan takes its literals as `String`s: the few patterns that are
                // not UTF-8 (hex bytes) go to an automaton of their own.
                let (text, bytes): (Vec<u32>, Vec<u32>) = (0..group.patterns.len() as u32)
                    .partition(|&p| std::str::from_utf8(&group.patterns[p as usize]).is_ok());
                let mut searchers = Vec::new();
                if !text.is_empty() {
                    let searcher = hyperscan_searcher(&group.patterns, text, group.nocase, name)?;
                    if let Engine::Hyperscan(database) = &searcher.engine {
                        let scratch_error = |e| format!("Hyperscan scratch space for {name}: {e}");
                        match &mut scratch {
                            None => scratch = Some(database.alloc_scratch().map_err(scratch_error)?),
                            Some(grown) => {
                                database.realloc_scratch(grown).map_err(scratch_error)?;
                            }
                        }
                    }
                    searchers.push(searcher);
                }
                if !bytes.is_empty() {
                    searchers.push(aho_corasick_searcher(&group.patterns, bytes, group.nocase, name)?);
                }
                searchers
            };
            let mut pattern_rules = Vec::with_capacity(group.rules_of.len() + 1);
            let mut flat = Vec::new();
            pattern_rules.push(0);
            for rules_of_pattern in group.rules_of {
                flat.extend(rules_of_pattern);
                pattern_rules.push(u32::try_from(flat.len()).map_err(|_| "more than 2^32 rules".to_string())?);
            }
            buffers.push(BufferPatterns {
                buffer: group.buffer,
                searchers,
                pattern_rules,
                rules: flat,
            });
        }
        let scratch = scratch.map(|prototype| {
            Mutex::new(ScratchPool {
                prototype,
                free: Vec::new(),
            })
        });
        Ok(Prefilter {
            buffers,
            always,
            scratch,
        })
    }

    /// The candidate rules' indices, ascending (file order) and each once, into `out`.
    /// A call costs what the buffers hold and the candidates found, not the number of
    /// rules.
    pub fn candidates(&self, buffers: &dyn Buffers, out: &mut Vec<u32>) {
        out.clear();
        out.extend_from_slice(&self.always);
        let mut scratch: Option<Scratch> = None;
        for patterns in &self.buffers {
            let Some(data) = buffers.get(patterns.buffer) else {
                continue;
            };
            let rules_of = |pattern: u32| {
                let from = patterns.pattern_rules[pattern as usize] as usize;
                let to = patterns.pattern_rules[pattern as usize + 1] as usize;
                &patterns.rules[from..to]
            };
            for searcher in &patterns.searchers {
                match &searcher.engine {
                    Engine::AhoCorasick(automaton) => {
                        for found in automaton.find_overlapping_iter(data) {
                            out.extend_from_slice(rules_of(searcher.pattern_of[found.pattern().as_usize()]));
                        }
                    }
                    Engine::Hyperscan(database) => {
                        let scratch = scratch.get_or_insert_with(|| self.take_scratch());
                        let scanned = database.scan(data, scratch, |id: u32, _from, _to, _flags| {
                            out.extend_from_slice(rules_of(searcher.pattern_of[id as usize]));
                            Matching::Continue
                        });
                        if scanned.is_err() {
                            // Not expected (the scratch fits every database of the set);
                            // were it to happen, every rule of the group is evaluated.
                            for &pattern in &searcher.pattern_of {
                                out.extend_from_slice(rules_of(pattern));
                            }
                        }
                    }
                }
            }
        }
        if let (Some(scratch), Some(pool)) = (scratch, &self.scratch) {
            pool.lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .free
                .push(scratch);
        }
        // A pattern found several times, or rules sharing one, give duplicates: few,
        // since only candidates are here.
        out.sort_unstable();
        out.dedup();
    }

    /// A scratch space for one call: a free one, or a new clone.
    fn take_scratch(&self) -> Scratch {
        let pool = self.scratch.as_ref().expect("a Hyperscan database has scratch space");
        let mut pool = pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match pool.free.pop() {
            Some(scratch) => scratch,
            None => pool.prototype.clone(),
        }
    }

    /// Bytes the searchers hold (`loupe-bench signatures-micro` reports it).
    pub fn searcher_bytes(&self) -> usize {
        self.buffers
            .iter()
            .flat_map(|b| &b.searchers)
            .map(|searcher| match &searcher.engine {
                Engine::AhoCorasick(automaton) => automaton.memory_usage(),
                Engine::Hyperscan(database) => database.size().unwrap_or(0),
            })
            .sum()
    }
}

/// An `aho-corasick` automaton over `subset` of `patterns`.
fn aho_corasick_searcher(patterns: &[Vec<u8>], subset: Vec<u32>, nocase: bool, name: &str) -> Result<Searcher, String> {
    // Overlapping search needs the standard match semantics.
    let automaton = AhoCorasickBuilder::new()
        .ascii_case_insensitive(nocase)
        .kind(Some(AhoCorasickKind::DFA))
        .match_kind(MatchKind::Standard)
        .build(subset.iter().map(|&p| &patterns[p as usize]))
        .map_err(|e| format!("the prefilter for {name} does not build: {e}"))?;
    Ok(Searcher {
        engine: Engine::AhoCorasick(automaton),
        pattern_of: subset,
    })
}

/// A Hyperscan literal database over `subset` of `patterns` (all UTF-8).
fn hyperscan_searcher(patterns: &[Vec<u8>], subset: Vec<u32>, nocase: bool, name: &str) -> Result<Searcher, String> {
    let mut literals = Vec::with_capacity(subset.len());
    for (id, &p) in subset.iter().enumerate() {
        let text = String::from_utf8(patterns[p as usize].clone()).map_err(|_| "a pattern is not UTF-8".to_string())?;
        let mut literal = Literal::new(text).map_err(|e| e.to_string())?.single_match();
        if nocase {
            literal = literal.caseless();
        }
        literal.id = Some(id);
        literals.push(literal);
    }
    let database: BlockDatabase = Literals::from_iter(literals)
        .build()
        .map_err(|e| format!("the prefilter for {name} does not build: {e}"))?;
    Ok(Searcher {
        engine: Engine::Hyperscan(database),
        pattern_of: subset,
    })
}
