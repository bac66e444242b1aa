//! weft-agent with a ClusterNetworkPolicy in its cluster state, through the
//! directory source and through the stand-in API with the CRD installed:
//! until the kernel enforces CNP the agent must not pretend, so it warns,
//! once per policy, that this version does not enforce it (root; skips
//! otherwise).

mod common;

use std::time::Duration;

use common::{pod_testbed, root_or_skip};

const CONVERGE: Duration = Duration::from_secs(20);

const GUARD: &str = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n\
    metadata: {name: guard}\nspec:\n  tier: Admin\n  priority: 5\n  subject: {namespaces: {}}\n  \
    ingress:\n    - {name: no-y, action: Deny, from: [{namespaces: {matchLabels: {ns: y}}}]}\n";

const POLICY: &str = "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\n\
    metadata: {name: deny-all, namespace: x}\nspec:\n  podSelector: {}\n";

const UNENFORCED: &str =
    "WARN weft-agent: ClusterNetworkPolicy guard (Admin tier, priority 5) is NOT enforced";

fn log(tb: &weft_e2e::Testbed) -> String {
    std::fs::read_to_string(weft_e2e::run::run_dir(&tb.run()).join("agent-n1.log")).unwrap_or_default()
}

/// Applies GUARD, then a NetworkPolicy (a second snapshot with GUARD in it),
/// and checks the warning came exactly once.
fn warned_once(tb: &weft_e2e::Testbed) {
    tb.apply(GUARD).unwrap();
    tb.wait_converged(CONVERGE).unwrap();
    assert!(weft_e2e::wait_until(CONVERGE, || log(tb).contains(UNENFORCED)), "{}", log(tb));
    tb.apply(POLICY).unwrap();
    tb.wait_converged(CONVERGE).unwrap();
    assert!(tb.stop_agent(1).unwrap());
    let log = log(tb);
    assert_eq!(log.lines().filter(|l| l.contains(UNENFORCED)).count(), 1, "once, not per snapshot:\n{log}");
}

#[test]
fn the_agent_says_once_that_a_cnp_from_a_file_is_not_enforced() {
    if !root_or_skip("the_agent_says_once_that_a_cnp_from_a_file_is_not_enforced") {
        return;
    }
    let mut tb = pod_testbed(1);
    tb.start_agents_with(&["--backend", "iptables"]).unwrap();
    tb.add_pod(1, "x/a").unwrap();
    warned_once(&tb);
}

#[test]
fn the_agent_reads_cnps_through_the_api_when_the_crd_is_served() {
    if !root_or_skip("the_agent_reads_cnps_through_the_api_when_the_crd_is_served") {
        return;
    }
    let mut tb = pod_testbed(1);
    tb.start_standin().unwrap();
    tb.standin().unwrap().serve_cnp(true).unwrap();
    tb.start_agents_with(&["--backend", "iptables"]).unwrap();
    tb.add_pod(1, "x/a").unwrap();
    // Converged: the agent's generation, which counts every CNP it holds, is the stand-in's.
    warned_once(&tb);
    assert_eq!(tb.standin().unwrap().stats().lists.get("ClusterNetworkPolicy"), Some(&1));
    assert!(log(&tb).contains("clusternetworkpolicies.policy.networking.k8s.io/v1alpha2 is served"));
}
