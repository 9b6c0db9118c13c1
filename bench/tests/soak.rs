//! The suite's soak (issue #15): four minutes of the steady mixed load of
//! `loupe-bench soak` (paced handshakes and requests over HTTP/1.1 and HTTP/2, bulk
//! downloads, idle churn) through loupe decrypting and inspecting. After a minute's
//! warm-up its memory and descriptors stay within ±5%, every flow ends, no generator sees
//! an error and the daemon logs none. The full 30 minutes is the bench's
//! (`loupe-bench soak`). Needs root; fails without it.

use std::time::Duration;

use loupe_bench::lab::require_root;
use loupe_bench::soak::{run_soak, SoakSpec};

#[test]
fn four_minutes_of_mixed_load_keep_memory_and_descriptors_flat() {
    require_root();
    let report = run_soak(&SoakSpec {
        duration: Duration::from_secs(240),
        warmup: Duration::from_secs(60),
        sample_every: Duration::from_secs(5),
    })
    .unwrap_or_else(|e| panic!("the soak could not run: {e:#}"));
    eprintln!("{}", report.markdown());
    assert!(report.samples.len() >= 40, "only {} samples", report.samples.len());
    assert!(
        report.handshakes.completed >= 5_000,
        "the soak's handshakes did not run at their rate: {:?}",
        report.handshakes
    );
    let problems = report.problems();
    assert!(
        problems.is_empty(),
        "the soak did not hold:\n- {}",
        problems.join("\n- ")
    );
}
