//! `threshold` and `detection_filter`: how many matches, in how many seconds, per tracked
//! address, make an alert. One table per loaded rule set, shared by every worker, so a
//! client's matches count across its sessions and whichever core serves them, as
//! Suricata's host table does. Bounded: past [`MAX_TRACKED`] live windows, matches of new
//! keys alert as if untracked (and the table says so in its count of overflows).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::rule::{Rate, ThresholdKind, Track};

/// Windows kept at most (rule, keyword and tracked addresses each).
pub const MAX_TRACKED: usize = 65_536;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct RateKey {
    rule: u32,
    /// `threshold` or `detection_filter` of the rule.
    filter: bool,
    source: Option<IpAddr>,
    destination: Option<IpAddr>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: SystemTime,
    count: u32,
    /// `type both`: the window's one alert was given.
    alerted: bool,
}

/// The windows of one rule set.
#[derive(Debug, Default)]
pub struct RateTable {
    windows: Mutex<HashMap<RateKey, Window>>,
    /// Matches that found the table full and were not tracked.
    overflows: AtomicU64,
}

impl RateTable {
    /// Whether a match of rule `rule` at `now`, sent by `source` to `destination`, passes
    /// its `detection_filter` (`filter`) or its `threshold`.
    pub fn passes(
        &self,
        rule: u32,
        rate: &Rate,
        filter: bool,
        now: SystemTime,
        source: IpAddr,
        destination: IpAddr,
    ) -> bool {
        let (source, destination) = match rate.track {
            Track::BySource => (Some(source), None),
            Track::ByDestination => (None, Some(destination)),
            Track::ByRule => (None, None),
            Track::ByBoth => (Some(source), Some(destination)),
        };
        let key = RateKey {
            rule,
            filter,
            source,
            destination,
        };
        let period = Duration::from_secs(rate.seconds.into());
        let mut windows = self.windows.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if windows.len() >= MAX_TRACKED && !windows.contains_key(&key) {
            // Windows that ended can go; each knows its own period only through its
            // rule, so the longest period a rule can give bounds them all: an hour.
            windows.retain(|_, w| now.duration_since(w.start).unwrap_or_default() < Duration::from_secs(3600));
            if windows.len() >= MAX_TRACKED {
                self.overflows.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
        let window = windows.entry(key).or_insert(Window {
            start: now,
            count: 0,
            alerted: false,
        });
        if now.duration_since(window.start).unwrap_or_default() >= period {
            *window = Window {
                start: now,
                count: 0,
                alerted: false,
            };
        }
        window.count = window.count.saturating_add(1);
        match rate.kind {
            // detection_filter: every match after the first `count`.
            None => window.count > rate.count,
            Some(ThresholdKind::Limit) => window.count <= rate.count,
            Some(ThresholdKind::Threshold) => {
                let due = window.count >= rate.count;
                if due {
                    window.count = 0;
                }
                due
            }
            Some(ThresholdKind::Both) => {
                let due = window.count >= rate.count && !window.alerted;
                window.alerted |= due;
                due
            }
        }
    }

    /// Matches not tracked because the table was full.
    pub fn overflows(&self) -> u64 {
        self.overflows.load(Ordering::Relaxed)
    }
}
