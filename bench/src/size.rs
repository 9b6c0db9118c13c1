//! Byte sizes on the command line: `4096`, `16KiB`, `256MiB`, `1GiB`, `10MB`.

use std::fmt;
use std::str::FromStr;

/// A byte count parsed from a human-friendly string.
///
/// Binary suffixes (`KiB`, `MiB`, `GiB`, `TiB`, and the bare `K`, `M`, `G`, `T`) are
/// powers of 1024; decimal ones (`kB`/`KB`, `MB`, `GB`, `TB`) powers of 1000.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit() && c != '_').unwrap_or(t.len());
        let (digits, suffix) = t.split_at(split);
        let digits: String = digits.chars().filter(|c| *c != '_').collect();
        if digits.is_empty() {
            return Err(format!("'{s}' is not a size (expected e.g. 4096, 16KiB, 256MiB)"));
        }
        let n: u64 = digits.parse().map_err(|_| format!("'{s}': number out of range"))?;
        let mult: u64 = match suffix.trim() {
            "" | "B" | "b" => 1,
            "K" | "k" | "KiB" | "kiB" => 1 << 10,
            "M" | "MiB" => 1 << 20,
            "G" | "GiB" => 1 << 30,
            "T" | "TiB" => 1 << 40,
            "kB" | "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            other => {
                return Err(format!(
                    "'{s}': unknown size suffix '{other}' (use B, KiB, MiB, GiB, kB, MB, GB)"
                ))
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("'{s}': size out of range"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
        for (name, unit) in UNITS {
            if self.0 >= unit {
                if self.0.is_multiple_of(unit) {
                    return write!(f, "{}{name}", self.0 / unit);
                }
                return write!(f, "{:.2}{name}", self.0 as f64 / unit as f64);
            }
        }
        write!(f, "{}B", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::ByteSize;

    fn p(s: &str) -> u64 {
        s.parse::<ByteSize>().unwrap().0
    }

    #[test]
    fn parses_suffixes() {
        assert_eq!(p("0"), 0);
        assert_eq!(p("4096"), 4096);
        assert_eq!(p("16KiB"), 16 * 1024);
        assert_eq!(p("256MiB"), 256 << 20);
        assert_eq!(p("256M"), 256 << 20);
        assert_eq!(p("1GiB"), 1 << 30);
        assert_eq!(p("10MB"), 10_000_000);
        assert_eq!(p("1_000"), 1000);
        assert_eq!(p(" 3 KiB "), 3072);
    }

    #[test]
    fn rejects_garbage() {
        for s in ["", "MiB", "12XB", "-1", "99999999999999999999", "20000000TiB"] {
            assert!(s.parse::<ByteSize>().is_err(), "{s} should not parse");
        }
    }

    #[test]
    fn displays_compactly() {
        assert_eq!(ByteSize(256 << 20).to_string(), "256MiB");
        assert_eq!(ByteSize(1536).to_string(), "1.50KiB");
        assert_eq!(ByteSize(12).to_string(), "12B");
    }
}
