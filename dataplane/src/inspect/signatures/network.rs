//! A rule header's address and port sets: `any`, `198.18.0.0/15`, `[a,b,!c]`, `$HOME_NET`,
//! `!80`, `1024:`, nested lists and variables resolved from `[inspection.vars]`.

use std::collections::HashMap;
use std::net::IpAddr;

/// Variables nest (`HOME_NET = "[$DMZ,$LAN]"`); a loop is an error, not a stack overflow.
const MAX_VARIABLE_DEPTH: usize = 16;

/// An address or network: the first `prefix` bits of `address`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub address: IpAddr,
    pub prefix: u8,
}

impl Network {
    fn parse(text: &str) -> Result<Network, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("'{text}' is not an IP address or network"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("'{text}': the prefix length must be 0 to {max}")),
            },
        };
        Ok(Network { address, prefix })
    }
}

/// Sorted, disjoint, inclusive ranges of numbers up to a maximum: the exact sets a rule
/// header's lists describe, so that `!$HOME_NET` is the complement of whatever
/// `HOME_NET` holds, exceptions included.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    ranges: Vec<(u128, u128)>,
}

impl RangeSet {
    fn all(max: u128) -> RangeSet {
        RangeSet { ranges: vec![(0, max)] }
    }

    fn single(low: u128, high: u128) -> RangeSet {
        RangeSet {
            ranges: vec![(low, high)],
        }
    }

    pub fn contains(&self, value: u128) -> bool {
        let at = self.ranges.partition_point(|&(_, high)| high < value);
        self.ranges.get(at).is_some_and(|&(low, _)| low <= value)
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    fn union(&self, other: &RangeSet) -> RangeSet {
        let mut all: Vec<(u128, u128)> = self.ranges.iter().chain(&other.ranges).copied().collect();
        all.sort_unstable();
        let mut ranges: Vec<(u128, u128)> = Vec::with_capacity(all.len());
        for (low, high) in all {
            match ranges.last_mut() {
                Some(last) if low <= last.1.saturating_add(1) => last.1 = last.1.max(high),
                _ => ranges.push((low, high)),
            }
        }
        RangeSet { ranges }
    }

    fn complement(&self, max: u128) -> RangeSet {
        let mut ranges = Vec::with_capacity(self.ranges.len() + 1);
        let mut next = Some(0u128);
        for &(low, high) in &self.ranges {
            if let Some(start) = next {
                if low > start {
                    ranges.push((start, low - 1));
                }
            }
            next = high.checked_add(1);
        }
        if let Some(start) = next.filter(|&start| start <= max) {
            ranges.push((start, max));
        }
        RangeSet { ranges }
    }

    fn minus(&self, other: &RangeSet, max: u128) -> RangeSet {
        self.complement(max).union(other).complement(max)
    }
}

/// A set of one number space: built from list leaves, with `[a, !b]` meaning a minus b
/// (everything minus b when only negations are listed) and `!x` the complement.
trait Space {
    const MAX: u128;
    /// A leaf (`198.18.0.0/15`, `1024:`) as a range, or why it is not one.
    fn leaf(text: &str) -> Result<RangeSet, String>;
}

fn evaluate<S: Space>(text: &str, vars: &HashMap<String, String>, depth: usize) -> Result<RangeSet, String> {
    if depth > MAX_VARIABLE_DEPTH {
        return Err(format!(
            "variables nest deeper than {MAX_VARIABLE_DEPTH} (a variable that refers to itself?)"
        ));
    }
    let text = text.trim();
    if let Some(rest) = text.strip_prefix('!') {
        return Ok(evaluate::<S>(rest, vars, depth)?.complement(S::MAX));
    }
    if let Some(name) = text.strip_prefix('$') {
        let value = vars
            .get(name)
            .ok_or_else(|| format!("variable ${name} is not defined in [inspection.vars]"))?;
        return evaluate::<S>(value, vars, depth + 1);
    }
    if let Some(inner) = text.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| format!("'{text}': a list opened with '[' must end with ']'"))?;
        let (mut included, mut excluded) = (None::<RangeSet>, RangeSet::default());
        for element in split_top_level(inner)? {
            let element = element.trim();
            match element.strip_prefix('!') {
                Some(negated) => excluded = excluded.union(&evaluate::<S>(negated, vars, depth)?),
                None => {
                    let set = evaluate::<S>(element, vars, depth)?;
                    included = Some(match included {
                        Some(i) => i.union(&set),
                        None => set,
                    });
                }
            }
        }
        let included = included.unwrap_or_else(|| RangeSet::all(S::MAX));
        return Ok(included.minus(&excluded, S::MAX));
    }
    match text {
        "" => Err("an empty address or port".to_string()),
        "any" => Ok(RangeSet::all(S::MAX)),
        leaf => S::leaf(leaf),
    }
}

fn parse_set<S: Space>(text: &str, vars: &HashMap<String, String>) -> Result<RangeSet, String> {
    let set = evaluate::<S>(text, vars, 0)?;
    if set.is_empty() {
        return Err(format!("'{}' matches nothing", text.trim()));
    }
    Ok(set)
}

/// IPv4 addresses as numbers; IPv6 addresses in a space of their own.
struct Ipv4Space;
struct Ipv6Space;

impl Space for Ipv4Space {
    const MAX: u128 = u32::MAX as u128;
    fn leaf(text: &str) -> Result<RangeSet, String> {
        network_range(text, true)
    }
}

impl Space for Ipv6Space {
    const MAX: u128 = u128::MAX;
    fn leaf(text: &str) -> Result<RangeSet, String> {
        network_range(text, false)
    }
}

/// A network as a range in its family's space; the other family's networks are empty.
fn network_range(text: &str, v4: bool) -> Result<RangeSet, String> {
    let network = Network::parse(text)?;
    let (value, width) = match network.address {
        IpAddr::V4(a) if v4 => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) if !v4 => (u128::from(a), 128),
        _ => return Ok(RangeSet::default()),
    };
    let host_bits = width - u32::from(network.prefix);
    let mask = if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    Ok(RangeSet::single(value & !mask, value | mask))
}

/// Which addresses a header side matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressSet {
    v4: RangeSet,
    v6: RangeSet,
}

impl AddressSet {
    pub fn any() -> AddressSet {
        AddressSet {
            v4: RangeSet::all(Ipv4Space::MAX),
            v6: RangeSet::all(Ipv6Space::MAX),
        }
    }

    pub fn parse(text: &str, vars: &HashMap<String, String>) -> Result<AddressSet, String> {
        let set = AddressSet {
            v4: evaluate::<Ipv4Space>(text, vars, 0)?,
            v6: evaluate::<Ipv6Space>(text, vars, 0)?,
        };
        if set.v4.is_empty() && set.v6.is_empty() {
            return Err(format!("'{}' matches nothing", text.trim()));
        }
        Ok(set)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.v4.contains(u32::from(a).into()),
            IpAddr::V6(a) => self.v6.contains(u128::from(a)),
        }
    }
}

/// Which ports a header side matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSet {
    ports: RangeSet,
}

struct PortSpace;

impl Space for PortSpace {
    const MAX: u128 = u16::MAX as u128;
    fn leaf(text: &str) -> Result<RangeSet, String> {
        let (low, high) = parse_port_range(text)?;
        Ok(RangeSet::single(low.into(), high.into()))
    }
}

impl PortSet {
    pub fn any() -> PortSet {
        PortSet {
            ports: RangeSet::all(PortSpace::MAX),
        }
    }

    pub fn parse(text: &str, vars: &HashMap<String, String>) -> Result<PortSet, String> {
        Ok(PortSet {
            ports: parse_set::<PortSpace>(text, vars)?,
        })
    }

    pub fn contains(&self, port: u16) -> bool {
        self.ports.contains(port.into())
    }
}

fn parse_port_range(item: &str) -> Result<(u16, u16), String> {
    let port = |text: &str, default: u16| -> Result<u16, String> {
        if text.is_empty() {
            return Ok(default);
        }
        text.parse::<u16>()
            .map_err(|_| format!("'{item}' is not a port, a range (a:b, a:, :b) or a list"))
    };
    let (low, high) = match item.split_once(':') {
        Some((low, high)) => (port(low, 0)?, port(high, u16::MAX)?),
        None if !item.is_empty() => {
            let p = port(item, 0)?;
            (p, p)
        }
        None => return Err("an empty port".to_string()),
    };
    if low > high {
        return Err(format!("'{item}': the range's start is above its end"));
    }
    Ok((low, high))
}

/// Splits a list's inside at the commas outside nested brackets.
fn split_top_level(inner: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in inner.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| format!("'[{inner}]': a ']' closes nothing"))?
            }
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("'[{inner}]': a '[' is not closed"));
    }
    parts.push(&inner[start..]);
    Ok(parts)
}
