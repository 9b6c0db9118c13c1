//! The bench in miniature: `loupe-bench run --tiny` runs every mode and workload for about
//! a second each in a lab of its own. This checks the report's shape and that every mode
//! moved bytes (bulk objects checked by hash); it asserts no speed. Needs root.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use loupe_bench::lab::{binary, require_root};
use loupe_bench::report::BenchReport;

const MODES: [&str; 8] = [
    "direct",
    "loupe-bridge",
    "xsk-forward",
    "loupe-splice",
    "loupe-decrypt",
    "loupe-inspect",
    "sslsplit",
    "squid",
];
const WORKLOADS: [&str; 7] = [
    "handshakes",
    "requests",
    "requests-h2",
    "bulk-1",
    "bulk-2",
    "idle",
    "idle-h2",
];
/// Peers that do not negotiate HTTP/2: the bench skips the `-h2` workloads for them.
const NO_H2: [&str; 2] = ["sslsplit", "squid"];

#[test]
fn tiny_bench_measures_every_mode_and_writes_the_report() {
    require_root();
    let out = std::env::temp_dir().join(format!("loupe-bench-tiny-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let start = Instant::now();
    let run = Command::new(binary("loupe-bench").expect("loupe-bench binary"))
        .args(["run", "--tiny", "--out"])
        .arg(&out)
        .output()
        .expect("run loupe-bench");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "loupe-bench run --tiny failed: {}\n{stderr}",
        run.status
    );
    eprintln!("tiny bench took {:?}", start.elapsed());
    assert!(
        start.elapsed() < Duration::from_secs(600),
        "the tiny bench is meant to take minutes"
    );

    let files: Vec<PathBuf> = std::fs::read_dir(&out)
        .expect("the report directory")
        .map(|e| e.expect("entry").path())
        .collect();
    let with_ext = |ext: &str| {
        files
            .iter()
            .find(|p| p.extension().is_some_and(|e| e == ext))
            .unwrap_or_else(|| panic!("no .{ext} report in {}: {files:?}", out.display()))
    };
    let json = std::fs::read_to_string(with_ext("json")).expect("read the JSON report");
    let markdown = std::fs::read_to_string(with_ext("md")).expect("read the markdown report");
    let svg = std::fs::read_to_string(with_ext("svg")).expect("read the SVG chart");
    assert!(
        svg.starts_with("<svg") || svg.contains("<svg"),
        "not an SVG: {}",
        &svg[..svg.len().min(200)]
    );
    let report = BenchReport::from_json(&json).expect("the JSON report parses");

    assert_eq!(report.modes, MODES, "modes in their fixed order");
    let mut problems = Vec::new();
    for mode in MODES {
        assert!(markdown.contains(mode), "the markdown table lacks {mode}:\n{markdown}");
        for workload in WORKLOADS {
            if workload.ends_with("-h2") && NO_H2.contains(&mode) {
                continue;
            }
            let Some(cell) = report.cell(mode, workload) else {
                problems.push(format!("{mode} {workload}: no cell"));
                continue;
            };
            // Idle's figure is the appliance's memory per session: none for the kernel
            // bridge, zero for XDP; that the sessions were held is checked below.
            let positive = workload.starts_with("idle") || cell.headline.as_ref().is_some_and(|h| h.median > 0.0);
            if cell.failed() || !positive {
                problems.push(format!("{mode} {workload}: {:?} {:?}", cell.headline, cell.failures));
            }
            // CPU over the generator's measured interval: the whole machine's for every
            // mode, loupe's own read from its /proc entry by the generator.
            if !workload.starts_with("idle") {
                if !cell.machine_cost.is_some_and(|c| c.median > 0.0) {
                    problems.push(format!("{mode} {workload}: no whole-machine cost"));
                }
                if (mode.starts_with("loupe") || mode == "xsk-forward") && cell.cost.is_none() {
                    problems.push(format!("{mode} {workload}: no appliance cost"));
                }
            }
        }
    }
    // Every bulk run moved bytes and every stream's body hashed as the origin's object.
    for m in report.measurements.iter().filter(|m| m.workload.starts_with("bulk")) {
        if m.load.bytes == 0 || m.load.integrity_ok != Some(true) {
            problems.push(format!(
                "{} {}: {} bytes, integrity {:?}",
                m.mode, m.workload, m.load.bytes, m.load.integrity_ok
            ));
        }
    }
    for m in report.measurements.iter().filter(|m| m.workload.starts_with("idle")) {
        if m.load.sessions_held.unwrap_or(0) == 0 {
            problems.push(format!("{} idle: no session held: {:?}", m.mode, m.load.first_errors));
        }
    }
    assert!(report.floor.is_some(), "the crypto floor is part of the report");
    assert!(problems.is_empty(), "{}\n{markdown}\n{stderr}", problems.join("\n"));
    let _ = std::fs::remove_dir_all(&out);
}
