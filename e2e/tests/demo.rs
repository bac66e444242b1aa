//! `make demo` runs `weft-e2e demo`; this keeps it from rotting: it must
//! print every path ok, exit 0 and leave nothing behind.

mod common;

use std::process::Command;

#[test]
fn the_demo_prints_every_path_ok_and_cleans_up() {
    if !common::root_or_skip("demo") {
        return;
    }
    let out = Command::new(common::bin()).arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    let all = format!("{stdout}{stderr}");
    assert!(all.contains("paths ok"), "{all}");
    assert!(!all.contains("FAIL"), "{all}");
    let run = all
        .split_whitespace()
        .skip_while(|w| *w != "run")
        .nth(1)
        .expect("the demo names its run")
        .trim_end_matches(':')
        .to_string();
    let left: Vec<_> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(&format!("{run}-")))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "the demo left {left:?}");
    assert!(!std::path::Path::new("/run/weft-e2e").join(&run).exists());
}
