//! `gcpool demo` runs end to end and its report holds the comparison it promises.

use std::process::Command;

#[test]
fn demo_reports_without_and_with_gcpool() {
    let output = Command::new(env!("CARGO_BIN_EXE_gcpool"))
        .args([
            "demo",
            "--json",
            "--clients",
            "3",
            "--window",
            "1s",
            "--token-limit",
            "4",
            "--duration",
            "3s",
            "--rate",
            "24",
            "--burst",
            "12",
            "--max-wait",
            "1s",
            "--guard",
            "100ms",
        ])
        .output()
        .expect("run gcpool demo");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed:\n{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is the JSON report ({e}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    let without = &report["without_gcpool"];
    let with = &report["with_gcpool"];
    assert_eq!(report["pool_capacity_per_window"], 12);
    assert!(
        without["upstream_429"].as_u64().unwrap() > 0,
        "one client alone is throttled: {report}"
    );
    assert_eq!(
        with["upstream_429"], 0,
        "gcpool keeps the upstream from answering 429: {report}"
    );
    assert!(
        with["served"].as_u64().unwrap() > without["served"].as_u64().unwrap(),
        "{report}"
    );
    assert_eq!(
        with["sent"], without["sent"],
        "the same load in both phases"
    );
    assert!(
        stderr.contains("[with gcpool]"),
        "live summary lines go to stderr with --json"
    );
}
