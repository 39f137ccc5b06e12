//! The CI smoke run of the peer benchmark: `peer-bench --quick` (tiny sizes, one repeat, every
//! target) must finish and exit 0, which it does only when every run against every system completed.
//! Run as a test so that it is built with the workspace's test build (the same features) instead of
//! compiling the dependency graph a second time for a `cargo run`.

use std::process::Command;

#[test]
fn quick_run_completes_against_every_system() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let output = Command::new(env!("CARGO_BIN_EXE_peer-bench"))
        .args(["--quick", "--out"])
        .arg(dir.path().join("quick.md"))
        .output()
        .expect("peer-bench starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "peer-bench --quick failed ({})\n{stdout}\n{stderr}", output.status);
    let report = std::fs::read_to_string(dir.path().join("quick.md")).expect("the report is written");
    for workload in ["W1", "W2", "W3", "W4", "W5", "W6"] {
        assert!(report.contains(workload), "the report covers {workload}:\n{report}");
    }
    for system in ["streamkit", "NATS JetStream", "Redis Streams"] {
        assert!(report.contains(system), "the report covers {system}:\n{report}");
    }
}
