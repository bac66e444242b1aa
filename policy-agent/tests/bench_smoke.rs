//! The policy benchmark (`make bench`, `examples/backends`) at a tiny scale,
//! so its code cannot rot: both backends apply the synthetic model and its
//! changes in namespaces of their own (root; skips otherwise). No figure is
//! judged here.

use std::os::unix::fs::MetadataExt;

#[test]
fn the_backends_benchmark_runs_at_a_tiny_scale() {
    if std::fs::metadata("/proc/self").map(|m| m.uid() != 0).unwrap_or(true) {
        eprintln!("SKIP: needs root");
        return;
    }
    let figures = weft_agent::synthetic::backends(30, 10);
    assert_eq!(figures.iter().map(|f| f.backend).collect::<Vec<_>>(), ["iptables", "nftables"]);
    for f in &figures {
        assert_eq!(f.apply.len(), 5, "{f:?}");
        assert!(f.elements > 0 && f.rules > 0, "{f:?}");
    }
    let table = weft_agent::synthetic::table(30, 10, &figures);
    assert_eq!(
        table.lines().filter(|l| l.starts_with("| iptables") || l.starts_with("| nftables")).count(),
        2
    );
}
