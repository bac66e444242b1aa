//! Shared by the e2e tests: the root check, the binary, and "nothing left" checks.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use weft_e2e::{netns, run, RunState};

/// A case that expects x/a -> x/b to be blocked, and a UDP probe to be
/// denied, where nothing is enforced.
pub const WRONG: &str = r#"
name: deliberately-wrong
description: expects blocks where backend none lets everything through
steps:
  - probe:
      - port: 80
        expect: |2
              x/a x/b y/a
          x/a  .   X   .
          y/a  .   .   .
      - {from: y/a, to: x/c, port: 81, protocol: UDP, expect: deny}
"#;

/// Bound on any single command a test runs.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(10);

/// True when running as root; otherwise the test skips (fails under CI).
pub fn root_or_skip(test: &str) -> bool {
    weft_test_support::root_or_skip(test, "network namespaces, mounts in /run/netns")
}

/// The built `weft-e2e` binary.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_weft-e2e")
}

/// Asserts that nothing of `state`'s run is left: no netns file, no run dir.
pub fn assert_gone(state: &RunState) {
    for ns in state.namespaces() {
        let p = netns::netns_path(&ns);
        assert!(!p.exists(), "netns file {} is left behind", p.display());
    }
    let left = netns::list_with_prefix(&format!("{}-", state.run));
    assert!(left.is_empty(), "namespaces of run {} are left: {left:?}", state.run);
    assert!(!run::run_dir(&state.run).exists(), "run dir of {} is left", state.run);
}

/// Asserts that every namespace of `state`'s run is live.
pub fn assert_present(state: &RunState) {
    for ns in state.namespaces() {
        assert!(netns::netns_exists(&ns), "netns {ns} is missing");
    }
    assert!(run::run_dir(&state.run).join("state.json").is_file());
}

/// One ping with a 2 s bound from the netns at `from`.
pub fn ping(from: &Path, to: &str) -> bool {
    let out = weft_e2e::exec_in(from, &["ping", "-n", "-c", "1", "-W", "2", to], CMD_TIMEOUT)
        .unwrap_or_else(|e| panic!("ping (iputils-ping, installed by `make deps`): {e}"));
    out.status.success()
}

/// The workspace's `weft` binary, next to `weft-e2e` (cargo builds it with the
/// workspace, not with this package alone).
pub fn weft_bin() -> std::path::PathBuf {
    let p = Path::new(bin()).parent().expect("weft-e2e has a directory").join("weft");
    assert!(
        p.is_file(),
        "the weft plugin binary {} is missing: run `cargo build --workspace` (same profile and \
         CARGO_TARGET_DIR) before the e2e tests",
        p.display()
    );
    p
}

/// A testbed whose pods use the built `weft` and `weft-e2e` binaries.
pub fn pod_testbed(nodes: u32) -> weft_e2e::Testbed {
    let weft = weft_bin();
    let mut tb = weft_e2e::Testbed::up(nodes).unwrap();
    tb.set_weft_bin(weft);
    tb.set_e2e_bin(bin());
    tb
}
