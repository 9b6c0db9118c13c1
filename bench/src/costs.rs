//! What the appliance costs, and what the crypto alone would cost on this machine.
//!
//! [`ProcessSample`] reads a process's CPU time and resident memory from `/proc`; the
//! bench samples the process under test (loupe, sslsplit, squid and their helpers) before
//! and after a measured interval and divides the difference by the work done.
//!
//! [`CryptoFloor`] runs this machine's `openssl speed` for the primitives a split TLS
//! connection cannot avoid, so that each cost can be printed as a multiple of that floor.

use std::fs;
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

/// CPU time and resident memory of a process (or of several, summed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessSample {
    /// User + system CPU time of the process and all its threads, in seconds
    /// (`utime + stime` of `/proc/PID/stat`, which covers the whole thread group,
    /// divided by `sysconf(_SC_CLK_TCK)`). Children the process waited for are not in it.
    pub cpu_s: f64,
    /// Resident set size (`VmRSS` of `/proc/PID/status`), bytes.
    pub rss_bytes: u64,
}

/// The change between two [`ProcessSample`]s: CPU used in between, and how resident
/// memory moved (negative when it shrank).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessDelta {
    pub cpu_s: f64,
    pub rss_bytes: i64,
}

impl ProcessSample {
    /// Reads one process.
    pub fn read(pid: u32) -> Result<Self> {
        let stat =
            fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
        let status =
            fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("reading /proc/{pid}/status"))?;
        Ok(Self {
            cpu_s: parse_stat_cpu_s(&stat, clock_ticks_per_s()?)
                .with_context(|| format!("parsing /proc/{pid}/stat"))?,
            rss_bytes: parse_status_rss(&status).with_context(|| format!("parsing /proc/{pid}/status"))?,
        })
    }

    /// Reads several processes and sums them (e.g. squid's workers and helpers). Fails if
    /// any of them cannot be read (gone): a sum that silently lost a process would
    /// under-report the cost.
    pub fn read_many(pids: &[u32]) -> Result<Self> {
        let mut sum = Self::default();
        for &pid in pids {
            let s = Self::read(pid)?;
            sum.cpu_s += s.cpu_s;
            sum.rss_bytes += s.rss_bytes;
        }
        Ok(sum)
    }

    /// What changed from `earlier` to `self`.
    pub fn since(&self, earlier: &ProcessSample) -> ProcessDelta {
        ProcessDelta {
            cpu_s: self.cpu_s - earlier.cpu_s,
            rss_bytes: self.rss_bytes as i64 - earlier.rss_bytes as i64,
        }
    }
}

/// Busy CPU time of the whole machine, all cores, in seconds: what every process and the
/// kernel's interrupt work used, whoever the scheduler's tick billed it to.
pub fn machine_busy_s() -> Result<f64> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_machine_busy_s(&stat, clock_ticks_per_s()?).context("parsing /proc/stat")
}

/// The busy time of `/proc/stat`'s `cpu` line, in seconds: user, nice, system, irq and
/// softirq (guest time is already inside user). Idle and iowait are not busy; steal is
/// time the hypervisor ran someone else, not work done here.
pub fn parse_machine_busy_s(stat: &str, ticks_per_s: f64) -> Result<f64> {
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| anyhow!("no aggregate \"cpu\" line"))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse::<u64>().with_context(|| format!("cpu field {f:?}")))
        .collect::<Result<_>>()?;
    let [user, nice, system, _idle, _iowait, irq, softirq, ..] = fields[..] else {
        bail!("the cpu line has {} fields, expected at least 7", fields.len());
    };
    Ok((user + nice + system + irq + softirq) as f64 / ticks_per_s)
}

/// `sysconf(_SC_CLK_TCK)`: the unit of the times in `/proc/PID/stat`.
pub fn clock_ticks_per_s() -> Result<f64> {
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks <= 0 {
        bail!("sysconf(_SC_CLK_TCK) returned {ticks}");
    }
    Ok(ticks as f64)
}

/// `utime + stime` of a `/proc/PID/stat` line, in seconds.
pub fn parse_stat_cpu_s(stat: &str, ticks_per_s: f64) -> Result<f64> {
    // The command name (field 2) is in parentheses and may itself hold spaces and
    // parentheses: the fields after it start after the last ')'.
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| anyhow!("no ')' in stat line"))?;
    // rest starts at field 3 (state): utime is field 14, stime field 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        let s = fields.get(n - 3).ok_or_else(|| anyhow!("stat line has no field {n}"))?;
        s.parse::<u64>().with_context(|| format!("stat field {n} {s:?}"))
    };
    Ok((field(14)? + field(15)?) as f64 / ticks_per_s)
}

/// `VmRSS` of a `/proc/PID/status` text, in bytes. A process with no `VmRSS` line
/// (a zombie, a kernel thread) has 0.
pub fn parse_status_rss(status: &str) -> Result<u64> {
    for line in status.lines() {
        if let Some(v) = line.strip_prefix("VmRSS:") {
            let mut it = v.split_whitespace();
            let n: u64 = it
                .next()
                .ok_or_else(|| anyhow!("empty VmRSS line"))?
                .parse()
                .with_context(|| format!("VmRSS {v:?}"))?;
            let unit = it.next().unwrap_or("kB");
            let mult = match unit {
                "kB" => 1024,
                "mB" | "MB" => 1024 * 1024,
                "B" => 1,
                other => bail!("VmRSS unit {other:?}"),
            };
            return Ok(n * mult);
        }
    }
    Ok(0)
}

/// `pid` and all its descendants, alive now (parents before children). For a daemon
/// that forks workers and helpers (squid), sample this set.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(ppid) = fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| parse_stat_ppid(&s))
            {
                parent_of.push((p, ppid));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        let mut kids: Vec<u32> = parent_of
            .iter()
            .filter(|&&(p, pp)| pp == parent && p != parent)
            .map(|&(p, _)| p)
            .collect();
        kids.sort_unstable();
        tree.extend(kids);
        i += 1;
    }
    tree
}

/// Processes whose command name (`/proc/PID/comm`, at most 15 characters) is `comm`.
pub fn pids_by_name(comm: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim_end() == comm) {
                pids.push(p);
            }
        }
    }
    pids.sort_unstable();
    pids
}

fn parse_stat_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // Field 4 (ppid) is the second after the name.
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// This machine's speed, on one core, at the primitives a split TLS connection cannot
/// avoid: `openssl speed` figures (per second of CPU time, single-threaded).
///
/// Derived floors:
///
/// - [`CryptoFloor::split_handshake_cpu_us`]: one split handshake needs, on the client
///   leg, 1 X25519 (the key share) and 1 ECDSA P-256 sign (CertificateVerify with the
///   forged certificate's key; the forged certificate itself comes from the cache, so no
///   signature for it); on the server leg, 1 X25519 and the verification of the origin
///   (2 ECDSA P-256 verifies: its CertificateVerify and its leaf certificate's signature
///   by the CA; a longer chain adds one per intermediate). Floor =
///   `2 / x25519_per_s + 1 / ecdsa_p256_sign_per_s + 2 / ecdsa_p256_verify_per_s`.
///   Hashing, the key schedule and record protection of the handshake messages are left
///   out: small next to these.
/// - [`CryptoFloor::decrypted_gb_cpu_s`]: every decrypted byte is decrypted once (from
///   one leg) and encrypted once (to the other): 2 AES-128-GCM passes per byte, so
///   `2 × 10^9 / aes_128_gcm_bytes_per_s` CPU-seconds per GB (10^9 bytes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CryptoFloor {
    /// AES-128-GCM (EVP, 16 KiB buffers, i.e. full TLS records), bytes per second.
    pub aes_128_gcm_bytes_per_s: f64,
    /// X25519 key agreements (keygen + derive as `openssl speed ecdhx25519` counts
    /// them) per second.
    pub x25519_per_s: f64,
    pub ecdsa_p256_sign_per_s: f64,
    pub ecdsa_p256_verify_per_s: f64,
    /// `openssl speed`'s "version:" line (e.g. "3.0.19"), empty if it printed none.
    #[serde(default)]
    pub openssl_version: String,
}

impl CryptoFloor {
    /// Runs `openssl speed` twice (≈ 4 × `seconds` in all): AES-128-GCM on 16 KiB
    /// buffers, then X25519 and ECDSA P-256.
    pub fn measure(seconds: u32) -> Result<Self> {
        let secs = seconds.max(1).to_string();
        let aes = run_openssl(&["speed", "-seconds", &secs, "-bytes", "16384", "-evp", "aes-128-gcm"])?;
        let pk = run_openssl(&["speed", "-seconds", &secs, "ecdhx25519", "ecdsap256"])?;
        Self::parse(&aes, &pk)
    }

    /// Parses the standard output of `openssl speed -bytes 16384 -evp aes-128-gcm` and of
    /// `openssl speed ecdhx25519 ecdsap256` (the human-readable tables; OpenSSL 1.1.1 and
    /// 3.x print the same shapes).
    pub fn parse(aes_output: &str, pk_output: &str) -> Result<Self> {
        // The AES table: a header line "type  16384 bytes", then
        // "AES-128-GCM  3564797.95k" where the figure is in 1000s of bytes per second.
        let aes_line = aes_output
            .lines()
            .find(|l| l.trim_start().to_ascii_lowercase().starts_with("aes-128-gcm"))
            .ok_or_else(|| anyhow!("no AES-128-GCM line in the openssl speed output"))?;
        let last = aes_line
            .split_whitespace()
            .last()
            .ok_or_else(|| anyhow!("empty AES-128-GCM line"))?;
        let aes_128_gcm_bytes_per_s = match last.strip_suffix('k') {
            Some(k) => parse_f64(k)? * 1000.0,
            None => parse_f64(last)?,
        };

        // " 256 bits ecdsa (nistp256)   0.0000s   0.0001s  36983.7  12356.0"
        let ecdsa = pk_output
            .lines()
            .find(|l| l.contains("ecdsa (nistp256)"))
            .ok_or_else(|| anyhow!("no ecdsa (nistp256) line in the openssl speed output"))?;
        let nums: Vec<&str> = ecdsa.split_whitespace().collect();
        if nums.len() < 2 {
            bail!("short ecdsa line {ecdsa:?}");
        }
        let ecdsa_p256_sign_per_s = parse_f64(nums[nums.len() - 2])?;
        let ecdsa_p256_verify_per_s = parse_f64(nums[nums.len() - 1])?;

        // " 253 bits ecdh (X25519)   0.0000s  24806.0"
        let x = pk_output
            .lines()
            .find(|l| l.contains("ecdh (X25519)"))
            .ok_or_else(|| anyhow!("no ecdh (X25519) line in the openssl speed output"))?;
        let x25519_per_s = parse_f64(x.split_whitespace().last().unwrap_or(""))?;

        let openssl_version = aes_output
            .lines()
            .chain(pk_output.lines())
            .find_map(|l| l.strip_prefix("version:"))
            .map(|v| v.trim().to_string())
            .unwrap_or_default();

        let floor = Self {
            aes_128_gcm_bytes_per_s,
            x25519_per_s,
            ecdsa_p256_sign_per_s,
            ecdsa_p256_verify_per_s,
            openssl_version,
        };
        for (name, v) in [
            ("AES-128-GCM", floor.aes_128_gcm_bytes_per_s),
            ("X25519", floor.x25519_per_s),
            ("ECDSA sign", floor.ecdsa_p256_sign_per_s),
            ("ECDSA verify", floor.ecdsa_p256_verify_per_s),
        ] {
            if !(v.is_finite() && v > 0.0) {
                bail!("openssl speed: {name} figure {v} is not a positive number");
            }
        }
        Ok(floor)
    }

    /// CPU-µs of one split handshake's public-key crypto (formula on [`CryptoFloor`]).
    pub fn split_handshake_cpu_us(&self) -> f64 {
        1e6 * (2.0 / self.x25519_per_s + 1.0 / self.ecdsa_p256_sign_per_s + 2.0 / self.ecdsa_p256_verify_per_s)
    }

    /// CPU-seconds to decrypt and re-encrypt 10^9 bytes (formula on [`CryptoFloor`]).
    pub fn decrypted_gb_cpu_s(&self) -> f64 {
        2.0 * 1e9 / self.aes_128_gcm_bytes_per_s
    }
}

fn parse_f64(s: &str) -> Result<f64> {
    s.parse::<f64>().with_context(|| format!("number {s:?}"))
}

fn run_openssl(args: &[&str]) -> Result<String> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .with_context(|| format!("running openssl {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "openssl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).context("openssl speed output is not UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured on this project's machine (2 cores, Debian's OpenSSL 3.0.19):
    // `openssl speed -seconds 1 -bytes 16384 -evp aes-128-gcm` (standard output).
    const AES_OUT: &str = "\
version: 3.0.19
built on: Fri Apr  3 12:29:32 2026 UTC
options: bn(64,64)
compiler: gcc -fPIC -pthread -m64 -Wa,--noexecstack -Wall -fzero-call-used-regs=used-gpr -DOPENSSL_TLS_SECURITY_LEVEL=2 -Wa,--noexecstack -g -O2 -ffile-prefix-map=/build/reproducible-path/openssl-3.0.19=. -fstack-protector-strong -Wformat -Werror=format-security -DOPENSSL_USE_NODELETE -DL_ENDIAN -DOPENSSL_PIC -DOPENSSL_BUILDING_OPENSSL -DNDEBUG -Wdate-time -D_FORTIFY_SOURCE=2
CPUINFO: OPENSSL_ia32cap=0xfffa3203078bffff:0x400684219c07ab
The 'numbers' are in 1000s of bytes per second processed.
type          16384 bytes
AES-128-GCM    3564797.95k
";

    // `openssl speed -seconds 1 ecdhx25519 ecdsap256` (standard output), same machine.
    const PK_OUT: &str = "\
version: 3.0.19
built on: Fri Apr  3 12:29:32 2026 UTC
options: bn(64,64)
compiler: gcc -fPIC -pthread -m64 -Wa,--noexecstack -Wall -fzero-call-used-regs=used-gpr -DOPENSSL_TLS_SECURITY_LEVEL=2 -Wa,--noexecstack -g -O2 -ffile-prefix-map=/build/reproducible-path/openssl-3.0.19=. -fstack-protector-strong -Wformat -Werror=format-security -DOPENSSL_USE_NODELETE -DL_ENDIAN -DOPENSSL_PIC -DOPENSSL_BUILDING_OPENSSL -DNDEBUG -Wdate-time -D_FORTIFY_SOURCE=2
CPUINFO: OPENSSL_ia32cap=0xfffa3203078bffff:0x400684219c07ab
                              sign    verify    sign/s verify/s
 256 bits ecdsa (nistp256)   0.0000s   0.0001s  36983.7  12356.0
                              op      op/s
 253 bits ecdh (X25519)   0.0000s  24806.0
";

    #[test]
    fn parses_real_openssl_speed_output() {
        let f = CryptoFloor::parse(AES_OUT, PK_OUT).unwrap();
        assert_eq!(f.aes_128_gcm_bytes_per_s, 3_564_797_950.0);
        assert_eq!(f.ecdsa_p256_sign_per_s, 36983.7);
        assert_eq!(f.ecdsa_p256_verify_per_s, 12356.0);
        assert_eq!(f.x25519_per_s, 24806.0);
        assert_eq!(f.openssl_version, "3.0.19");
    }

    #[test]
    fn derived_floors_follow_the_formulas() {
        let f = CryptoFloor::parse(AES_OUT, PK_OUT).unwrap();
        let hs = 1e6 * (2.0 / 24806.0 + 1.0 / 36983.7 + 2.0 / 12356.0);
        assert!((f.split_handshake_cpu_us() - hs).abs() < 1e-9);
        // ≈ 80.6 + 27.0 + 161.9 µs.
        assert!(
            (f.split_handshake_cpu_us() - 269.6).abs() < 0.5,
            "{}",
            f.split_handshake_cpu_us()
        );
        assert!((f.decrypted_gb_cpu_s() - 2e9 / 3_564_797_950.0).abs() < 1e-12);
        // DESIGN.md's figures: 5 GB/s, 39k, 67k, 22k -> ≈ 0.4 s/GB, ≈ 157 µs.
        let d = CryptoFloor {
            aes_128_gcm_bytes_per_s: 5e9,
            x25519_per_s: 39e3,
            ecdsa_p256_sign_per_s: 67e3,
            ecdsa_p256_verify_per_s: 22e3,
            openssl_version: String::new(),
        };
        assert!((d.decrypted_gb_cpu_s() - 0.4).abs() < 1e-12);
        assert!((d.split_handshake_cpu_us() - 157.1).abs() < 0.5);
    }

    #[test]
    fn machine_busy_time_counts_work_not_idle_iowait_or_steal() {
        // user nice system idle iowait irq softirq steal guest guest_nice
        let stat = "cpu  300 10 100 5000 40 5 85 700 20 0\ncpu0 150 5 50 2500 20 3 40 350 10 0\nintr 1 2\n";
        let busy = parse_machine_busy_s(stat, 100.0).unwrap();
        assert!((busy - 5.0).abs() < 1e-9, "{busy}");
        assert!(parse_machine_busy_s("cpu0 1 2 3 4 5 6 7\n", 100.0).is_err());
        assert!(parse_machine_busy_s("cpu  1 2 3\n", 100.0).is_err());
        assert!(machine_busy_s().unwrap() > 0.0);
    }

    #[test]
    fn rejects_output_without_the_figures() {
        assert!(CryptoFloor::parse("", PK_OUT).is_err());
        assert!(CryptoFloor::parse(AES_OUT, "").is_err());
        let no_x = PK_OUT.replace("ecdh (X25519)", "ecdh (X448)");
        assert!(CryptoFloor::parse(AES_OUT, &no_x).is_err());
        let zero = AES_OUT.replace("3564797.95k", "0.00");
        assert!(CryptoFloor::parse(&zero, PK_OUT).is_err());
    }

    #[test]
    fn measures_this_machine() {
        // Runs the real `openssl speed` (≈ 4 s): the figures are checked for shape only.
        let f = CryptoFloor::measure(1).unwrap();
        assert!(f.aes_128_gcm_bytes_per_s > 1e6);
        assert!(f.x25519_per_s > 10.0 && f.ecdsa_p256_sign_per_s > 10.0 && f.ecdsa_p256_verify_per_s > 10.0);
    }

    #[test]
    fn parses_proc_stat_and_status() {
        // A command name with spaces and parentheses; utime 250, stime 50 ticks.
        let stat = "1234 (we (ird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 99 1000 200";
        assert_eq!(parse_stat_cpu_s(stat, 100.0).unwrap(), 3.0);
        assert_eq!(parse_stat_ppid(stat), Some(1));
        assert!(parse_stat_cpu_s("1234 (x) S 1", 100.0).is_err());
        let status = "Name:\tloupe\nVmPeak:\t  9000 kB\nVmRSS:\t    2048 kB\nThreads:\t3\n";
        assert_eq!(parse_status_rss(status).unwrap(), 2048 * 1024);
        assert_eq!(parse_status_rss("Name:\tkthreadd\n").unwrap(), 0);
    }

    #[test]
    fn samples_this_process() {
        let me = std::process::id();
        let a = ProcessSample::read(me).unwrap();
        // Burn a little CPU so the second sample is not behind the first.
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = ProcessSample::read(me).unwrap();
        assert!(a.rss_bytes > 0);
        assert!(b.since(&a).cpu_s >= 0.0);
        let two = ProcessSample::read_many(&[me, me]).unwrap();
        assert!(two.rss_bytes > a.rss_bytes && two.cpu_s >= 2.0 * a.cpu_s);
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert!(pids_by_name(comm.trim_end()).contains(&me));
        assert!(ProcessSample::read_many(&[]).unwrap() == ProcessSample::default());
        assert!(process_tree(me).first() == Some(&me));
        assert!(ProcessSample::read(u32::MAX).is_err());
    }
}
