//! Helpers shared by the tests that run the `cohort` binary as a user would.
// Each test binary uses a different subset.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs `cohort ARGS` to completion.
pub fn cohort(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(args)
        .output()
        .expect("the cohort binary runs")
}

/// Bytes as (lossy) UTF-8 text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A command's standard error.
pub fn stderr(o: &Output) -> String {
    text(&o.stderr)
}

/// A command's standard output.
pub fn stdout(o: &Output) -> String {
    text(&o.stdout)
}

/// A fresh, empty directory `cohort-PREFIX-NAME-PID` under the system temp dir.
pub fn tempdir(prefix: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cohort-{prefix}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}
