//! Test aids shared by weft's tests (a dev-dependency only).
//!
//! The one switch for tests that cannot run here (not root, a runtime or a tool
//! missing): they skip, printing `SKIPPED: <test>: <why>` and appending that line
//! to the file named by `WEFT_SKIP_LOG` (the Makefile counts them), except in CI
//! (`CI=true`), where such a test fails, so a run that tested nothing is red.

use std::fmt::Display;
use std::io::Write;
use std::os::unix::fs::MetadataExt;

/// The environment variable naming the file skips are appended to.
pub const SKIP_LOG_ENV: &str = "WEFT_SKIP_LOG";

/// True under CI (`CI` is `true` or `1`, as .ci/run and most CI systems set it).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// True when this process runs as root.
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The running test's name: libtest names each test's thread after it.
pub fn this_test() -> String {
    std::thread::current().name().unwrap_or("unnamed test").to_string()
}

/// The line a skip prints and logs.
pub fn skip_line(test: &str, why: &dyn Display) -> String {
    format!("SKIPPED: {test}: {why}")
}

/// Skips `test` because of `why`: prints and logs the line; panics under CI.
pub fn skip(test: &str, why: impl Display) {
    let line = skip_line(test, &why);
    if in_ci() {
        panic!("{line} (CI=true: a test that cannot run fails)");
    }
    eprintln!("{line}");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        // One write per line, O_APPEND: lines of parallel tests do not interleave.
        let logged = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
        if let Err(e) = logged {
            panic!("{line}; cannot log it to {}: {e}", path.to_string_lossy());
        }
    }
}

/// True when root; otherwise skips `test` (fails it under CI), saying what needs root.
pub fn root_or_skip(test: &str, needs: &str) -> bool {
    let root = is_root();
    if !root {
        skip(test, format!("needs root ({needs})"));
    }
    root
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_skip_line_names_the_test_and_the_reason() {
        assert_eq!(skip_line("t1", &"no root"), "SKIPPED: t1: no root");
    }

    #[test]
    fn the_test_name_is_the_thread_name() {
        assert_eq!(this_test(), "tests::the_test_name_is_the_thread_name");
    }
}
