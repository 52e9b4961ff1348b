//! Helpers shared by the simulator's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The repository's `scenarios/` directory.
pub fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios")
}

/// Scenario text with its `duration` line replaced (to run a shipped scenario shorter).
pub fn with_duration(text: &str, duration: &str) -> String {
    text.lines()
        .map(|l| {
            if l.trim_start().starts_with("duration") {
                format!("duration = \"{duration}\"")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}
