//! The scenarios (weft_e2e::scenarios), one test each; the same code
//! runs as `weft-e2e run NAME [--family F]`. Each test fails with the list of
//! failed checks. IPv4 runs each; the family-aware ones run once more in dual
//! (every probe over IPv4 and IPv6, so IPv6 is covered without a third run).

mod common;

use common::root_or_skip;
use weft_e2e::family::Family;
use weft_e2e::scenarios::find;

fn scenario(name: &str) {
    scenario_in(name, Family::Ipv4);
}

fn scenario_in(name: &str, family: Family) {
    if !root_or_skip(name) {
        return;
    }
    let s = find(name).unwrap_or_else(|| panic!("no scenario {name}"));
    let checks = s.run_in(family).unwrap_or_else(|e| panic!("scenario {name} ({family}): {e}"));
    for c in &checks {
        eprintln!("{c}");
    }
    assert!(!checks.is_empty(), "scenario {name} checked nothing");
    let failed: Vec<String> = checks.iter().filter(|c| !c.ok).map(ToString::to_string).collect();
    assert!(failed.is_empty(), "scenario {name} ({family}):\n{}", failed.join("\n"));
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

#[test]
fn scenario_1_pod_to_pod_dual() {
    scenario_in("pod-to-pod", Family::Dual);
}

#[test]
fn scenario_2_same_node_cluster_ip_dual() {
    scenario_in("same-node-clusterip", Family::Dual);
}

#[test]
fn scenario_2_same_node_cluster_ip_ipv6() {
    scenario_in("same-node-clusterip", Family::Ipv6);
}

#[test]
fn scenario_3_node_to_cluster_ip_dual() {
    scenario_in("node-to-clusterip", Family::Dual);
}

#[test]
fn scenario_4_node_port_dual() {
    scenario_in("nodeport", Family::Dual);
}

#[test]
fn scenario_5_masquerade_dual() {
    scenario_in("masquerade", Family::Dual);
}

#[test]
fn scenario_6_cleanup_dual() {
    scenario_in("cleanup", Family::Dual);
}

#[test]
fn scenario_7_weave_vs_weft_dual() {
    scenario_in("weave-vs-weft", Family::Dual);
}

/// Asked for a family it cannot run in, a scenario says why (no pass, no testbed).
#[test]
fn ipv4_only_scenarios_refuse_other_families() {
    for (name, family) in [
        ("weave-vs-weft", Family::Ipv6),
        ("overlay-seed-003", Family::Ipv6),
        ("overlay-seed-003", Family::Dual),
    ] {
        let s = find(name).unwrap();
        let err = s.run_in(family).expect_err(name).to_string();
        assert!(err.contains("does not run in") && err.contains("IPv4"), "{name} ({family}): {err}");
    }
}
