//! The policy benchmark (`make bench`, `benches/backends`) at a tiny scale,
//! so its code cannot rot: both backends apply the synthetic model and its
//! changes in namespaces of their own (root; skips otherwise), then resync
//! as the agent's loop does, its IR equal to a compile from scratch. No
//! figure is judged here.

#[allow(dead_code)]
#[path = "../benches/synthetic/mod.rs"]
mod synthetic;

use synthetic::ModelKind;

#[test]
fn the_backends_benchmark_runs_at_a_tiny_scale() {
    if !weft_test_support::root_or_skip(&weft_test_support::this_test(), "network namespaces") {
        return;
    }
    // With ClusterNetworkPolicies no churn run: a debug build recompiles
    // and re-renders them whole per cycle, too slow for the churn's checks.
    for (kind, cnps, churn) in
        [(ModelKind::Synthetic, 0, 1), (ModelKind::Mix, 0, 1), (ModelKind::Synthetic, 10, 0)]
    {
        check(kind, cnps, churn);
    }
}

fn check(kind: ModelKind, cnps: usize, churn_secs: u64) {
    // Every denied connection was explained and timed.
    let denied = synthetic::denied_cost(kind, 30, 10, cnps);
    assert!(denied.iter().all(|t| *t > std::time::Duration::ZERO), "{denied:?}");
    let figures = synthetic::backends(kind, 30, 10, cnps, churn_secs);
    assert_eq!(figures.iter().map(|f| f.backend.as_str()).collect::<Vec<_>>(), ["iptables", "nftables"]);
    for f in &figures {
        assert_eq!(f.error, None, "{kind:?} {cnps} CNPs: {f:?}");
        assert!(f.elements > 0 && f.rules > 0 && f.sets > 0, "{f:?}");
        assert!(f.full.apply > std::time::Duration::ZERO && f.peak_rss_kib > 0, "{f:?}");
        // The loop's resyncs ran (and the IR agreed with a compile from scratch: no error).
        assert!(f.loop_resync.iter().all(|r| r.apply > std::time::Duration::ZERO), "{f:?}");
        // The steady one's kernel check ran off the loop.
        assert!(f.off_loop_check[1] > std::time::Duration::ZERO, "{f:?}");
        // Every kind of change found its targets and was applied each time
        // (CNP changes only with CNPs in the model).
        for (i, c) in f.changes.iter().enumerate() {
            let expected = if i < 3 || cnps > 0 { synthetic::CHANGES } else { 0 };
            assert_eq!(c.samples, expected, "{kind:?} {cnps} CNPs, change {i}: {f:?}");
        }
        if churn_secs == 0 {
            continue;
        }
        let churn = f.churn.as_ref().expect("asked for a churn run");
        assert!(churn.changes >= 50 && churn.cycles > 0 && churn.p50 <= churn.max, "{churn:?}");
    }
    let table = synthetic::table(30, 10, cnps, &figures);
    assert_eq!(
        table.lines().filter(|l| l.starts_with("| iptables") || l.starts_with("| nftables")).count(),
        if churn_secs > 0 { 4 } else { 2 },
        "a row per backend in the sync table and in the churn table:\n{table}"
    );
}
