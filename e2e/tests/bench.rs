//! The data-path benchmark (`make bench`) at a tiny scale so its code cannot
//! rot: every backend and path gives a row; the weft backends connect with
//! the admitting policy, and with the ClusterNetworkPolicies, in force, over
//! IPv4 and over IPv6. No figure is judged.

mod common;

use std::time::Duration;

use common::root_or_skip;
use weft_e2e::bench::Figures;
use weft_e2e::family::Family;

#[test]
fn the_datapath_benchmark_runs_at_a_tiny_scale() {
    if !root_or_skip("the_datapath_benchmark_runs_at_a_tiny_scale") {
        return;
    }
    // 20 measurements: iperf3's shortest run (1 s) and 0.15 s of connections each.
    let rows = weft_e2e::bench::datapath(2, 3, Duration::from_millis(150), 1, Family::Dual)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rows.len(), 16, "(weave 2 loads, weft 3 loads with CNPs) x 2 paths: {rows:?}");
    let admitted = |f: Option<Figures>| f.is_some_and(|f| f.gbits.is_some_and(|g| g > 0.0) && f.conns > 0.0);
    for r in &rows {
        if r.backend == "weave-1.9.6" {
            // 1.9.6 filtered IPv4 only: its IPv6 path is not measured.
            assert!(r.v4.is_some() && r.v6.is_none(), "{r:?}");
        } else {
            assert!(admitted(r.v4) && admitted(r.v6), "weft admits the clients in both families: {r:?}");
        }
    }
    let table = weft_e2e::bench::table(&rows);
    assert_eq!(table.lines().count(), 18, "{table}");
    for row in ["| nftables | 2 | 0 | across nodes |", "| iptables | 0 | 3 | across nodes |"] {
        let weft = table.lines().find(|l| l.starts_with(row));
        assert!(weft.is_some_and(|l| !l.contains(" - ")), "every cell of {row} filled in: {table}");
    }
}

#[test]
fn the_add_benchmark_runs_at_a_tiny_scale() {
    if !root_or_skip("the_add_benchmark_runs_at_a_tiny_scale") {
        return;
    }
    let rows = weft_e2e::bench::add_cost(2, 2).unwrap_or_else(|e| panic!("{e}"));
    let agents: Vec<&str> = rows.iter().map(|r| r.agent).collect();
    assert_eq!(agents, ["no agent", "iptables", "nftables"]);
    for r in &rows {
        for t in [r.first, r.next] {
            assert!(t.median > std::time::Duration::ZERO && t.median <= t.p90, "{r:?}");
        }
    }
    let table = weft_e2e::bench::add_table(&rows);
    assert_eq!(table.lines().count(), 5, "{table}");
}

/// Both modes connect across nodes, each at its conflist's MTU.
#[test]
fn the_modes_benchmark_runs_at_a_tiny_scale() {
    if !root_or_skip("the_modes_benchmark_runs_at_a_tiny_scale") {
        return;
    }
    let rows = weft_e2e::bench::modes(1, 1).unwrap_or_else(|e| panic!("{e}"));
    let got: Vec<(String, u32)> = rows.iter().map(|r| (r.mode.to_string(), r.mtu)).collect();
    assert_eq!(got, [("host-gw".to_string(), 1500), ("vxlan".to_string(), 1450)]);
    for r in &rows {
        assert!(r.gbits.is_some() && r.conns > 0.0, "{r:?}");
    }
    let table = weft_e2e::bench::modes_table(&rows);
    assert_eq!(table.lines().count(), 4, "{table}");
}
