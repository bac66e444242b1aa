//! The scenarios (weft_e2e::scenarios), one test each; the same code
//! runs as `weft-e2e run NAME`. Each test fails with the list of failed checks.

mod common;

use common::root_or_skip;
use weft_e2e::scenarios::find;

fn scenario(name: &str) {
    if !root_or_skip(name) {
        return;
    }
    let s = find(name).unwrap_or_else(|| panic!("no scenario {name}"));
    let checks = (s.run)().unwrap_or_else(|e| panic!("scenario {name}: {e}"));
    for c in &checks {
        eprintln!("{c}");
    }
    assert!(!checks.is_empty(), "scenario {name} checked nothing");
    let failed: Vec<String> = checks.iter().filter(|c| !c.ok).map(ToString::to_string).collect();
    assert!(failed.is_empty(), "scenario {name}:\n{}", failed.join("\n"));
}

#[test]
fn scenario_1_pod_to_pod() {
    scenario("pod-to-pod");
}

#[test]
fn scenario_2_same_node_cluster_ip() {
    scenario("same-node-clusterip");
}

#[test]
fn scenario_3_node_to_cluster_ip() {
    scenario("node-to-clusterip");
}

#[test]
fn scenario_4_node_port() {
    scenario("nodeport");
}

#[test]
fn scenario_5_masquerade() {
    scenario("masquerade");
}

#[test]
fn scenario_6_cleanup() {
    scenario("cleanup");
}

#[test]
fn scenario_7_weave_vs_weft() {
    scenario("weave-vs-weft");
}

#[test]
fn scenario_8_overlay_seed_003() {
    scenario("overlay-seed-003");
}
