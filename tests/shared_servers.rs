//! The tests share their Redis with everything else on the machine (other
//! test runs, other projects, a developer's data). A test must never run a
//! command that walks or wipes the whole server: `KEYS pattern` blocks Redis
//! for everyone while it scans every key (one timed out against a Redis
//! holding 2.8 million unrelated keys), and `FLUSHDB`/`FLUSHALL` delete what
//! is not theirs. Clean up with `common::redis_delete_prefix` (`SCAN` with
//! `MATCH` and `COUNT`) or by letting keys expire.
//!
//! This test reads the test code of the workspace and fails on any of those
//! commands.

use std::path::{Path, PathBuf};

/// The commands no test may send, as `cmd("…")` calls of the redis crate.
/// Built from pieces so that this file does not match itself.
fn forbidden() -> Vec<String> {
    ["KEYS", "FLUSHDB", "FLUSHALL"]
        .iter()
        .map(|command| format!("cmd(\"{command}\")").to_ascii_lowercase())
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_test_scans_or_flushes_a_shared_redis() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in [
        "tests",
        "src/testing",
        "crates/klikit-cli/tests",
        "crates/klikit-handoff/tests",
    ] {
        rust_files(&root.join(dir), &mut files);
    }
    files.push(root.join("src/testing.rs"));
    assert!(files.len() > 10, "found the test code: {files:?}");

    let forbidden = forbidden();
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap().to_ascii_lowercase();
        for (number, line) in text.lines().enumerate() {
            let compact: String = line.split_whitespace().collect();
            for command in &forbidden {
                if compact.contains(command.as_str()) {
                    found.push(format!(
                        "{}:{}: {command}",
                        file.strip_prefix(root).unwrap_or(file).display(),
                        number + 1
                    ));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "commands that walk or wipe a shared Redis:\n{}",
        found.join("\n")
    );
}
