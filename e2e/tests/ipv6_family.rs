//! ipv6 and dual runs (`up --family`): the plumbing under IPv6 policy. Pods
//! on two nodes reach each other over IPv6 (a real packet across the
//! agents' IPv6 host-gw routes, through the plan's addresses embedded in
//! fd00::/96), a pod that a default-deny policy isolates gets no IPv6
//! connection (the denial logged in policy terms) while a pod beside it that
//! no policy selects still does, an audit policy denies nothing and logs
//! what it would, and in dual IPv4 behaves as in an ipv4 run; once with the agents reading the
//! state through the stand-in API server, and a dual pod's ADD report makes
//! its IPv6 address known before the API shows it. The conformance suite in
//! ipv6 and in dual on both backends (tests/conformance.rs) covers policy:
//! `weft-e2e conformance run --family ipv6|dual --backend iptables|nftables e2e/cases`.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{bin, root_or_skip, weft_bin, CMD_TIMEOUT};
use weft_e2e::family::{embed, Family};
use weft_e2e::probe::{probe_in, Outcome, Proto};
use weft_e2e::{Pod, Testbed};

const PROBE: Duration = Duration::from_millis(1500);
const CONVERGE: Duration = Duration::from_secs(15);

fn probe(from: &Pod, to: IpAddr) -> Outcome {
    probe_in(&from.netns, SocketAddr::new(to, 80), Proto::Tcp, PROBE).unwrap()
}

/// Connects from `from` to `to`'s address in each family of the run, within `CONVERGE`.
fn reaches(from: &Pod, to: &Pod, family: Family) -> Vec<(IpAddr, Outcome)> {
    let want = Outcome::Connected(to.name.clone());
    let mut last = Vec::new();
    weft_e2e::wait_until(CONVERGE, || {
        last = family.addresses(to.ip).into_iter().map(|ip| (ip, probe(from, ip))).collect();
        last.iter().all(|(_, o)| *o == want)
    });
    last
}

fn blocked(from: &Pod, to: IpAddr) -> bool {
    matches!(probe(from, to), Outcome::Timeout | Outcome::Refused)
}

const ISOLATE_B: &str = "kind: NetworkPolicy\nmetadata: {name: deny-b, namespace: x}\n\
                         spec: {podSelector: {matchLabels: {pod: b}}, policyTypes: [Ingress]}\n";

const AUDIT_C: &str =
    "kind: NetworkPolicy\nmetadata: {name: try-c, namespace: x, annotations: {weft.io/audit: 'true'}}\n\
                       spec: {podSelector: {matchLabels: {pod: c}}, policyTypes: [Ingress]}\n";

/// Where the agents read the cluster state.
#[derive(PartialEq)]
enum Source {
    Dir,
    /// Through the stand-in API server: Nodes' podCIDRs and InternalIPs and
    /// Pods' podIPs of both families as an API server serves them.
    Kube,
}

fn check(family: Family, backend: &str, source: Source) {
    let mut tb = Testbed::up_in(2, family).unwrap();
    tb.set_weft_bin(weft_bin());
    tb.set_e2e_bin(bin());
    if source == Source::Kube {
        tb.start_standin().unwrap();
    }
    tb.start_agents_with(&["--backend", backend]).unwrap();
    // Pods added after the agents: each ADD reports both addresses to its node's agent.
    let a = tb.add_pod(1, "x/a").unwrap();
    let b = tb.add_pod(2, "x/b").unwrap();
    let c = tb.add_pod(2, "x/c").unwrap();
    assert_eq!(b.ip6, Some(embed(b.ip)), "{family}: the plan's address, embedded");
    let st = tb.wait_converged(CONVERGE).unwrap();
    assert!(st.iter().all(|s| s.errors.is_empty()), "{family}/{backend}: {st:?}");

    // Node 1 routes node 2's IPv6 pod CIDR via node 2's IPv6 InternalIP.
    let out =
        weft_e2e::exec_in(&tb.node_netns(1), &["ip", "-6", "route", "show", "proto", "87"], CMD_TIMEOUT);
    let routes = String::from_utf8_lossy(&out.unwrap().stdout).to_string();
    assert!(routes.contains("fd00::af4:200/120 via fd00::ac1f:c"), "{family}: {routes}");
    let seen = reaches(&a, &b, family);
    assert!(seen.iter().all(|(_, o)| *o == Outcome::Connected("x/b".into())), "{family}/{backend}: {seen:?}");

    // b isolated for ingress, nothing allowed: dropped in every family.
    tb.apply(ISOLATE_B).unwrap();
    tb.wait_converged(CONVERGE).unwrap();
    for ip in family.addresses(b.ip) {
        assert!(blocked(&a, ip), "{family}/{backend}: x/a reached the isolated x/b at {ip}");
    }
    // The IPv6 denial is logged by b's node, in policy terms, with a's IPv6 address.
    let a6 = embed(a.ip).to_string();
    let log_file = weft_e2e::run::run_dir(&tb.run()).join("agent-n2.log");
    let logged = || {
        let log = std::fs::read_to_string(&log_file).unwrap_or_default();
        log.lines().any(|l| l.contains("weft-agent: denied ") && l.contains(&a6) && l.contains("x/deny-b"))
    };
    assert!(
        weft_e2e::wait_until(Duration::from_secs(5), logged),
        "{family}/{backend}: no IPv6 denial of {a6} logged"
    );
    // c, beside b on node 2 and selected by no policy, is still reached in every family.
    let seen = reaches(&a, &c, family);
    assert!(seen.iter().all(|(_, o)| *o == Outcome::Connected("x/c".into())), "{family}/{backend}: {seen:?}");
    // An audit policy over c denies nothing in any family; what it would
    // deny in IPv6 is logged as audit.
    tb.apply(AUDIT_C).unwrap();
    tb.wait_converged(CONVERGE).unwrap();
    let seen = reaches(&a, &c, family);
    assert!(seen.iter().all(|(_, o)| *o == Outcome::Connected("x/c".into())), "{family}/{backend}: {seen:?}");
    let audited = || {
        let log = std::fs::read_to_string(&log_file).unwrap_or_default();
        log.lines().any(|l| l.contains("\"audit\":true") && l.contains(&a6) && l.contains("x/try-c"))
    };
    assert!(weft_e2e::wait_until(Duration::from_secs(5), audited), "{family}/{backend}: no IPv6 audit line");
}

#[test]
fn ipv6_pods_reach_across_nodes_and_an_isolated_pod_is_dropped_nftables() {
    if root_or_skip("ipv6_pods_reach_across_nodes_and_an_isolated_pod_is_dropped_nftables") {
        check(Family::Ipv6, "nftables", Source::Dir);
    }
}

#[test]
fn dual_pods_reach_across_nodes_and_an_isolated_pod_is_dropped_iptables() {
    if root_or_skip("dual_pods_reach_across_nodes_and_an_isolated_pod_is_dropped_iptables") {
        check(Family::Dual, "iptables", Source::Dir);
    }
}

#[test]
fn dual_through_the_kube_source() {
    if root_or_skip("dual_through_the_kube_source") {
        check(Family::Dual, "nftables", Source::Kube);
    }
}

/// A dual pod's CNI ADD reports both its addresses to the agent, which lays
/// them over the cluster state: with the API's events held back after the
/// pod showed as Pending, its IPv6 address is reachable at once (unknown, the
/// guard would drop it as an unknown address of the node's IPv6 pod CIDR).
#[test]
fn a_dual_pods_add_report_makes_its_ipv6_address_known_before_the_api_shows_it() {
    if !root_or_skip("a_dual_pods_add_report_makes_its_ipv6_address_known_before_the_api_shows_it") {
        return;
    }
    let mut tb = Testbed::up_in(1, Family::Dual).unwrap();
    tb.set_weft_bin(weft_bin());
    tb.set_e2e_bin(bin());
    let standin = tb.start_standin().unwrap();
    tb.start_agents_with(&["--backend", "iptables"]).unwrap();
    let a = tb.add_pod(1, "x/a").unwrap();
    // x/new scheduled, no address yet (what the testbed writes before the ADD), and seen.
    let labels = [("pod".to_string(), "new".to_string())].into();
    let ports = weft_e2e::manifests::serve_ports(&weft_e2e::pods::DEFAULT_PORTS);
    let pending = weft_e2e::manifests::pod("x", "new", &labels, 1, &ports, None);
    tb.write_manifest("pod-x-new.yaml", &weft_e2e::manifests::to_yaml(&pending)).unwrap();
    tb.wait_converged(CONVERGE).unwrap();
    standin.freeze();
    let new = tb.add_pod(1, "x/new").unwrap();
    let shown = standin.refresh().unwrap().generation;
    let agent = tb.agent_status(1).unwrap().generation;
    assert_ne!(agent, shown, "the agent must not have seen the pod's addresses from the API");
    let seen = reaches(&a, &new, Family::Dual);
    assert!(seen.iter().all(|(_, o)| *o == Outcome::Connected("x/new".into())), "{seen:?}");
}
