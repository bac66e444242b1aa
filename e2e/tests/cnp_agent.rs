//! weft-agent with a ClusterNetworkPolicy in its cluster state, through the
//! directory source and through the stand-in API with the CRD installed:
//! the agent reads them, and warns once about two of one tier and priority
//! that share a pod (which applies first is undefined) (root; skips
//! otherwise). Through the API, the agents report the CNPs they applied and
//! the one holding the Lease writes their status. That the kernel enforces
//! them is the conformance suites' part (e2e/cases-cnp).

mod common;

use std::time::Duration;

use common::{pod_testbed, root_or_skip};

const CONVERGE: Duration = Duration::from_secs(20);

const GUARD: &str = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n\
    metadata: {name: guard}\nspec:\n  tier: Admin\n  priority: 5\n  subject: {namespaces: {}}\n  \
    ingress:\n    - {name: no-y, action: Deny, from: [{namespaces: {matchLabels: {ns: y}}}]}\n";

const POLICY: &str = "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\n\
    metadata: {name: deny-all, namespace: x}\nspec:\n  podSelector: {}\n";

/// A second policy of GUARD's tier and priority over the same pods.
const TWIN: &str = "---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n\
    metadata: {name: twin}\nspec:\n  tier: Admin\n  priority: 5\n  subject: {namespaces: {}}\n  \
    ingress:\n    - {action: Accept, from: [{namespaces: {matchLabels: {ns: z}}}]}\n";

const AMBIGUOUS: &str =
    "WARN weft-agent: ClusterNetworkPolicies guard and twin share the Admin tier, priority 5";

fn log(tb: &weft_e2e::Testbed) -> String {
    std::fs::read_to_string(weft_e2e::run::run_dir(&tb.run()).join("agent-n1.log")).unwrap_or_default()
}

/// Applies GUARD and TWIN, then a NetworkPolicy (a second snapshot with
/// them in it), and checks the warning came exactly once.
fn warned_once(tb: &weft_e2e::Testbed) {
    tb.apply(&format!("{GUARD}{TWIN}")).unwrap();
    tb.wait_converged(CONVERGE).unwrap();
    assert!(weft_e2e::wait_until(CONVERGE, || log(tb).contains(AMBIGUOUS)), "{}", log(tb));
    // ... and the status file, while the pair exists.
    let status = || {
        std::fs::read_to_string(weft_e2e::run::run_dir(&tb.run()).join("agent-n1.status.json"))
            .unwrap_or_default()
    };
    assert!(
        weft_e2e::wait_until(CONVERGE, || status().contains("ClusterNetworkPolicies guard and twin share")),
        "{}",
        status()
    );
    tb.apply(POLICY).unwrap();
    tb.wait_converged(CONVERGE).unwrap();
    assert!(tb.stop_agent(1).unwrap());
    let log = log(tb);
    assert_eq!(log.lines().filter(|l| l.contains(AMBIGUOUS)).count(), 1, "once, not per snapshot:\n{log}");
}

#[test]
fn the_agent_reads_cnps_from_files_and_warns_once_about_equal_priorities() {
    if !root_or_skip("the_agent_reads_cnps_from_files_and_warns_once_about_equal_priorities") {
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

/// Two real agents (default status timing: the writer's round every 5 s):
/// the CNP's status ends Accepted and realized on both nodes, written
/// through one node's listener only.
#[test]
fn the_agents_report_a_cnp_realized_and_one_of_them_writes_its_status() {
    if !root_or_skip("the_agents_report_a_cnp_realized_and_one_of_them_writes_its_status") {
        return;
    }
    let tb = pod_testbed(2);
    tb.start_standin().unwrap();
    let standin = tb.standin().unwrap();
    standin.serve_cnp(true).unwrap();
    tb.start_agents_with(&["--backend", "iptables"]).unwrap();
    tb.apply(GUARD).unwrap();
    tb.wait_converged(CONVERGE).unwrap();
    let condition = |type_: &str| {
        let obj = standin.object("ClusterNetworkPolicy", "guard")?;
        let c = obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)?.clone();
        Some(format!("{} {} {}", c["status"], c["reason"], c["message"]))
    };
    let done = weft_e2e::wait_until(Duration::from_secs(30), || {
        condition("Realized").as_deref()
            == Some(r#""True" "Realized" "realized on 2 of 2 nodes at generation 1""#)
    });
    assert!(done, "{:?} {:?} {:?}", condition("Accepted"), condition("Realized"), standin.stats());
    assert_eq!(condition("Accepted").as_deref(), Some(r#""True" "Valid" "valid""#));
    let writers = standin.stats().status_patches;
    assert_eq!(writers.len(), 1, "one writer: {writers:?}");
}
