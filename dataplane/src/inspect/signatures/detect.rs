//! A rule's detections over a transaction's buffers, as Suricata evaluates them: per
//! buffer, in rule order, each relative match placed after the previous one, and when a
//! relative match fails the previous match is retried further on (backtracking), within
//! a bounded number of steps.

use memchr::memmem;

use smallvec::SmallVec;

use super::rule::{Buffer, Content, Detection, Rule, Transforms};

/// Matching steps one buffer may take before the rule is given up on: backtracking over
/// hostile input must not cost unbounded time (Suricata bounds it the same way).
pub const MAX_STEPS_PER_BUFFER: u32 = 3000;

/// The buffers of what is being inspected (a transaction, a TLS handshake, a stream
/// chunk). `None`: the buffer does not exist here, and rules that read it do not match.
pub trait Buffers {
    fn get(&self, buffer: Buffer) -> Option<&[u8]>;
}

/// Whether every detection of `rule` holds over `buffers`.
pub fn rule_matches(rule: &Rule, buffers: &dyn Buffers) -> bool {
    let mut seen: SmallVec<[(Buffer, &Transforms); 4]> = SmallVec::new();
    let mut transformed = Vec::new();
    let mut scratch = Vec::new();
    for d in &rule.detections {
        let key = (d.buffer, &d.transforms);
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let list: SmallVec<[&Detection; 8]> = rule
            .detections
            .iter()
            .filter(|o| o.buffer == d.buffer && o.transforms == d.transforms)
            .map(|o| &o.detection)
            .collect();
        let Some(mut data) = buffers.get(d.buffer) else {
            return false;
        };
        if !d.transforms.is_empty() {
            transformed.clear();
            transformed.extend_from_slice(data);
            for transform in &d.transforms {
                transform.apply(&transformed, &mut scratch);
                std::mem::swap(&mut transformed, &mut scratch);
            }
            data = &transformed;
        }
        let mut steps = 0;
        if !match_from(&list, data, 0, &mut steps) {
            return false;
        }
    }
    true
}

/// Whether `list` holds over `data` with the previous match ending at `previous_end`.
fn match_from(list: &[&Detection], data: &[u8], previous_end: usize, steps: &mut u32) -> bool {
    let Some((first, rest)) = list.split_first() else {
        return true;
    };
    *steps += 1;
    if *steps > MAX_STEPS_PER_BUFFER {
        return false;
    }
    // Whether the next detection depends on where this one matched: only then is it worth
    // trying this one further on when the rest fails.
    let next_is_relative = rest.first().is_some_and(|d| match d {
        Detection::Content(c) => c.is_relative(),
        Detection::Pcre(p) => p.relative,
        Detection::DataAt { relative, .. } => *relative,
        Detection::Size(_) => false,
    });
    match first {
        Detection::Size(check) => check.holds(data.len() as u64) && match_from(rest, data, previous_end, steps),
        Detection::DataAt {
            position,
            relative,
            negated,
        } => {
            let at = if *relative { previous_end } else { 0 } + *position as usize;
            (at < data.len()) != *negated && match_from(rest, data, previous_end, steps)
        }
        Detection::Content(content) => {
            let Some((start, end)) = window(content, data.len(), previous_end) else {
                return content.negated && match_from(rest, data, previous_end, steps);
            };
            if content.negated {
                return find_content(content, data, start, end).is_none()
                    && match_from(rest, data, previous_end, steps);
            }
            let mut from = start;
            while let Some(found) = find_content(content, data, from, end) {
                let found_end = found + content.pattern.len();
                if match_from(rest, data, found_end, steps) {
                    return true;
                }
                if !next_is_relative || *steps > MAX_STEPS_PER_BUFFER {
                    return false;
                }
                from = found + 1;
            }
            false
        }
        Detection::Pcre(pcre) => {
            // A relative pattern sees the buffer from the previous match on, as Suricata
            // passes it: `^` anchors there.
            let start = if pcre.relative { previous_end } else { 0 };
            let Some(subject) = data.get(start..) else {
                return pcre.negated && match_from(rest, data, previous_end, steps);
            };
            if pcre.negated {
                let found = matches!(pcre.regex.find(subject), Ok(Some(_)));
                return !found && match_from(rest, data, previous_end, steps);
            }
            let mut from = 0;
            while from <= subject.len() {
                let Ok(Some(found)) = pcre.regex.find_at(subject, from) else {
                    return false;
                };
                if match_from(rest, data, start + found.end(), steps) {
                    return true;
                }
                if !next_is_relative || *steps > MAX_STEPS_PER_BUFFER {
                    return false;
                }
                *steps += 1;
                from = found.start() + 1;
            }
            false
        }
    }
}

/// Where `content` may match in a buffer of `len` bytes: `[start, end)` must hold the
/// whole match. `None`: nowhere.
fn window(content: &Content, len: usize, previous_end: usize) -> Option<(usize, usize)> {
    let pattern_len = content.pattern.len();
    let (start, mut end) = if content.is_relative() {
        let distance = content.distance.unwrap_or(0) as i64;
        let start = (previous_end as i64 + distance).max(0) as usize;
        let end = match content.within {
            Some(within) => ((previous_end as i64 + distance).max(0) as usize).saturating_add(within as usize),
            None => len,
        };
        (start, end)
    } else if content.startswith {
        (0, pattern_len)
    } else {
        let start = content.offset.unwrap_or(0) as usize;
        let end = match content.depth {
            Some(depth) => start.saturating_add(depth as usize),
            None => len,
        };
        (start, end)
    };
    end = end.min(len);
    if content.endswith {
        // Only the occurrence that ends the buffer counts.
        let last = len.checked_sub(pattern_len)?;
        if last < start || len > end {
            return None;
        }
        return Some((last, len));
    }
    (start < end && end - start >= pattern_len).then_some((start, end))
}

/// The first occurrence of `content` wholly inside `data[from..end]`.
fn find_content(content: &Content, data: &[u8], from: usize, end: usize) -> Option<usize> {
    if from >= end || end - from < content.pattern.len() {
        return None;
    }
    let haystack = &data[from..end];
    let at = if content.nocase {
        find_ignoring_ascii_case(haystack, &content.pattern)
    } else {
        memmem::find(haystack, &content.pattern)
    };
    at.map(|at| from + at)
}

fn find_ignoring_ascii_case(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let (lower, upper) = (first.to_ascii_lowercase(), first.to_ascii_uppercase());
    let last_start = haystack.len().checked_sub(needle.len())?;
    let mut from = 0;
    while from <= last_start {
        let at = from + memchr::memchr2(lower, upper, &haystack[from..=last_start])?;
        if haystack[at + 1..at + needle.len()].eq_ignore_ascii_case(rest) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}
