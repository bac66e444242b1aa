//! Services through the kube-proxy imitation (`weft_e2e::kube_proxy`), issue 4
//! scenarios 2-4: a ClusterIP whose endpoint shares the client's bridge needs
//! bridge-nf-call-iptables (set by weft's ADD; switched off here inside node 1's
//! netns only), hairpin, a node reaching a ClusterIP on another node, and
//! NodePorts from the external client with externalTrafficPolicy Cluster/Local.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use common::{assert_gone, pod_testbed, root_or_skip, CMD_TIMEOUT};
use weft_e2e::kube_proxy::{Service, TrafficPolicy};
use weft_e2e::probe::{probe_in, Outcome, Proto};

const PROBE: Duration = Duration::from_secs(3);
const CONVERGE: Duration = Duration::from_secs(10);
const ECHO_PORT: u16 = 8080;

fn sh(netns: &Path, argv: &[&str]) {
    let out = weft_e2e::exec_in(netns, argv, CMD_TIMEOUT).unwrap();
    assert!(out.status.success(), "{argv:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn tcp(from: &Path, to: Ipv4Addr, port: u16) -> Outcome {
    probe_in(from, SocketAddr::from((to, port)), Proto::Tcp, PROBE).unwrap()
}

fn bnf(node: &Path) -> String {
    let out = weft_e2e::exec_in(node, &["cat", "/proc/sys/net/bridge/bridge-nf-call-iptables"], CMD_TIMEOUT);
    String::from_utf8_lossy(&out.unwrap().stdout).trim().to_string()
}

/// No KUBE-* rule ever reaches the root netns.
fn assert_root_clean() {
    let out = std::process::Command::new("iptables-save").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("KUBE"), "KUBE rules in the root netns:\n{text}");
}

#[test]
fn same_node_cluster_ip_needs_bridge_nf_call_iptables_and_hairpin_works() {
    if !root_or_skip("same_node_cluster_ip_needs_bridge_nf_call_iptables_and_hairpin_works") {
        return;
    }
    let mut tb = pod_testbed(2);
    let n1 = tb.node_netns(1);
    let a = tb.add_pod(1, "web/a").unwrap();
    let b = tb.add_pod(1, "web/b").unwrap();
    tb.start_agents().unwrap();
    tb.wait_converged(CONVERGE).unwrap();
    let vip = Ipv4Addr::new(10, 96, 0, 10);
    tb.add_service(Service::cluster_ip("web", "b", vip, 80, 80), &["web/b"]).unwrap();
    // Applying again changes nothing (declared chains are flushed, jumps checked).
    let rules = |ns: &Path| {
        let out = weft_e2e::exec_in(ns, &["iptables-save"], CMD_TIMEOUT).unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("KUBE") && !l.starts_with('#'))
            .map(|l| l.split(" [").next().unwrap_or(l).to_string())
            .collect::<Vec<_>>()
    };
    let before = rules(&n1);
    tb.apply_services().unwrap();
    assert_eq!(rules(&n1), before);
    assert!(before.iter().any(|l| l.contains("-j KUBE-FORWARD")), "{before:?}");

    // weft's ADD set bridge-nf-call-iptables=1 in the node: the ClusterIP answers.
    assert_eq!(bnf(&n1), "1");
    assert_eq!(tcp(&a.netns, vip, 80), Outcome::Connected("web/b".into()), "a -> ClusterIP, bnf=1");
    // Hairpin: b reaches its own service.
    assert_eq!(tcp(&b.netns, vip, 80), Outcome::Connected("web/b".into()), "b -> own ClusterIP");

    // Off, inside node 1's netns only: b's reply is bridged past conntrack's
    // reverse NAT, so a sees it from b's own address and the connection fails.
    sh(&n1, &["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0"]);
    sh(&n1, &["conntrack", "-F"]);
    let got = tcp(&a.netns, vip, 80);
    assert!(matches!(got, Outcome::Timeout | Outcome::Refused), "a -> ClusterIP, bnf=0: {got:?}");
    // Direct pod to pod on the bridge still works (no NAT involved).
    assert_eq!(tcp(&a.netns, b.ip, 80), Outcome::Connected("web/b".into()));

    sh(&n1, &["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"]);
    sh(&n1, &["conntrack", "-F"]);
    assert_eq!(tcp(&a.netns, vip, 80), Outcome::Connected("web/b".into()), "a -> ClusterIP, bnf=1 again");

    // The legacy layout drops KUBE-FORWARD; the service still answers here.
    tb.set_kube_proxy_legacy(true).unwrap();
    assert!(!rules(&n1).iter().any(|l| l.contains("KUBE-FORWARD")), "{:?}", rules(&n1));
    assert_eq!(tcp(&a.netns, vip, 80), Outcome::Connected("web/b".into()), "legacy layout");

    assert_root_clean();
    let st = tb.state();
    tb.down().unwrap();
    assert_gone(&st);
}

#[test]
fn a_node_reaches_a_cluster_ip_on_another_node() {
    if !root_or_skip("a_node_reaches_a_cluster_ip_on_another_node") {
        return;
    }
    let mut tb = pod_testbed(2);
    let n1 = tb.node_netns(1);
    tb.add_pod(2, "web/c").unwrap();
    tb.start_agents().unwrap();
    tb.wait_converged(CONVERGE).unwrap();
    let vip = Ipv4Addr::new(10, 96, 0, 11);
    tb.add_service(Service::cluster_ip("web", "c", vip, 80, 80), &["web/c"]).unwrap();
    // The testbed's nodes have no default route (no traffic may leave the run);
    // a real node's default route covers the service CIDR, so stand in for it
    // with one via the lan, chosen before OUTPUT's DNAT as on a real node.
    sh(&n1, &["ip", "route", "add", "10.96.0.0/12", "dev", "eth0"]);
    assert_eq!(tcp(&n1, vip, 80), Outcome::Connected("web/c".into()), "node 1 -> ClusterIP on node 2");
    assert_root_clean();
    let st = tb.state();
    tb.down().unwrap();
    assert_gone(&st);
}

#[test]
fn external_client_to_node_ports_cluster_and_local() {
    if !root_or_skip("external_client_to_node_ports_cluster_and_local") {
        return;
    }
    let mut tb = pod_testbed(2);
    let ext = tb.ext_netns();
    // A pod on node 1 too (not an endpoint): weft's ADD is what turns
    // forwarding on in a node, as on a real node running pods.
    tb.add_pod(1, "web/a").unwrap();
    let c = tb.add_pod(2, "web/c").unwrap();
    tb.start_agents().unwrap();
    tb.wait_converged(CONVERGE).unwrap();
    tb.serve_in(&c.netns, &c.name, &[ECHO_PORT], true).unwrap();
    let (n1, n2, ext_ip) = (tb.node_addr(1), tb.node_addr(2), tb.ext_addr());
    let np = |name: &str, last: u8, port: u16, policy| {
        let mut s = Service::cluster_ip("web", name, Ipv4Addr::new(10, 96, 0, last), 80, ECHO_PORT);
        s.node_port = Some(port);
        s.external_traffic_policy = policy;
        s
    };
    tb.add_service(np("cluster", 20, 30080, TrafficPolicy::Cluster), &["web/c"]).unwrap();
    tb.add_service(np("local", 21, 30081, TrafficPolicy::Local), &["web/c"]).unwrap();

    // Cluster, via node 1 (endpoint on node 2): answers, the pod sees node 1.
    assert_eq!(tcp(&ext, n1, 30080), Outcome::Connected(format!("web/c {n1}")), "ext -> n1:30080 Cluster");
    // Local, via node 1, which has no local endpoint: no answer (dropped).
    assert_eq!(tcp(&ext, n1, 30081), Outcome::Timeout, "ext -> n1:30081 Local, no local endpoint");
    // Local, via node 2: answers, and the pod sees the client's own address.
    assert_eq!(tcp(&ext, n2, 30081), Outcome::Connected(format!("web/c {ext_ip}")), "ext -> n2:30081 Local");
    assert_root_clean();
    let st = tb.state();
    tb.down().unwrap();
    assert_gone(&st);
}
