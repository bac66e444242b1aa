//! weft-agent's first duty, end to end: one agent per node (in the node's
//! netns) keeps host-gw routes to the other nodes' pod CIDRs, marked with
//! weft's route protocol; pods on different nodes reach each other (scenario
//! 1); a removed Node loses its route; a manifest that turns malformed is
//! reported and its last good version keeps the route; SIGTERM with --cleanup-on-exit removes them; `down`
//! leaves no agent.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use common::{pod_testbed, root_or_skip, CMD_TIMEOUT};
use weft_agent::routes::WEFT_PROTO;
use weft_e2e::probe::{probe_in, Outcome, Proto};

/// Probe bound: generous, since the first packet to a new veth waits for ARP.
const PROBE: Duration = Duration::from_secs(2);
/// Bound on the agents applying a change of the cluster dir (they poll every 100 ms).
const CONVERGE: Duration = Duration::from_secs(10);
/// Bound on an agent's periodic resync noticing drift.
const RESYNC: Duration = Duration::from_secs(15);

/// weft's routes in the netns at `ns`, as `ip route show proto 87` prints them.
fn weft_routes(ns: &Path) -> Vec<String> {
    let proto = WEFT_PROTO.to_string();
    let out = weft_e2e::exec_in(ns, &["ip", "-4", "route", "show", "proto", &proto], CMD_TIMEOUT).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_string()).collect()
}

fn route_to(dst: &str, gw: Ipv4Addr) -> String {
    format!("{dst} via {gw} dev eth0")
}

fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !matches!(s.rfind(')').and_then(|i| s[i + 1..].split_whitespace().next()), Some("Z" | "X")))
        .unwrap_or(false)
}

#[test]
fn agents_route_pods_across_nodes_and_follow_the_cluster_state() {
    if !root_or_skip("agents_route_pods_across_nodes_and_follow_the_cluster_state") {
        return;
    }
    let mut tb = pod_testbed(2);
    let (n1, n2) = (tb.node_netns(1), tb.node_netns(2));
    let a = tb.add_pod(1, "web/a").unwrap();
    let b = tb.add_pod(2, "web/b").unwrap();
    let agents = tb.start_agents().unwrap();
    let statuses = tb.wait_converged(CONVERGE).unwrap();
    for s in &statuses {
        assert_eq!((s.routes, s.errors.as_slice()), (1, &[][..]), "{s:?}");
        // The plugin's ADD turned forwarding on in both nodes.
        assert!(s.ip_forward, "{s:?}");
    }

    // 1. Each node routes the other's pod CIDR via its lan address, marked as weft's.
    assert_eq!(weft_routes(&n1), [route_to("10.244.2.0/24", tb.node_addr(2))]);
    assert_eq!(weft_routes(&n2), [route_to("10.244.1.0/24", tb.node_addr(1))]);

    // 2. Pods on different nodes reach each other (all of scenario 1: tests/scenarios.rs).
    let got = probe_in(&a.netns, SocketAddr::from((b.ip, 80)), Proto::Tcp, PROBE).unwrap();
    assert_eq!(got, Outcome::Connected(b.name.clone()), "a -> b across nodes");

    // 3. Node 2's manifest turns malformed: reported (file and reason), and
    //    the agent keeps the route its last good version gave; a new
    //    malformed file is reported and skipped.
    tb.write_manifest("node-2.yaml", "kind: Node\nmetadata: {name: [\n").unwrap();
    tb.write_manifest("broken.yaml", "kind: Node\nmetadata: {name: n9}\nspec: {podCIDR: 10.244.9.0/33}\n")
        .unwrap();
    let s1 = tb.wait_converged(CONVERGE).unwrap().remove(0);
    let reported = |file: &str| s1.errors.iter().any(|e| e.contains(file));
    assert!(reported("node-2.yaml") && reported("broken.yaml"), "{s1:?}");
    assert!(s1.errors.iter().any(|e| e.contains("keeping the last good version")), "{s1:?}");
    assert!(s1.errors.iter().any(|e| e.contains("podCIDR")), "{s1:?}");
    assert_eq!(s1.routes, 1, "{s1:?}");
    assert_eq!(weft_routes(&n1), [route_to("10.244.2.0/24", tb.node_addr(2))]);
    tb.remove_manifest("broken.yaml").unwrap();
    tb.write_manifest("node-2.yaml", &weft_e2e::agents::node_manifest(2)).unwrap();
    assert!(tb.wait_converged(CONVERGE).unwrap().iter().all(|s| s.errors.is_empty()));

    // 4. Node 2 leaves the cluster state: node 1's agent deletes its route, and
    //    only its own (the connected lan and bridge routes stay).
    tb.remove_manifest("node-2.yaml").unwrap();
    let s1 = tb.wait_converged(CONVERGE).unwrap().remove(0);
    assert_eq!((s1.routes, s1.errors.len()), (0, 0), "{s1:?}");
    assert!(weft_routes(&n1).is_empty(), "{:?}", weft_routes(&n1));
    let all = weft_e2e::exec_in(&n1, &["ip", "-4", "route", "show"], CMD_TIMEOUT).unwrap();
    let all = String::from_utf8_lossy(&all.stdout).to_string();
    assert!(all.contains("172.31.0.0/24") && all.contains("10.244.1.0/24"), "{all}");

    // 5. It comes back: the route is added again.
    tb.write_manifest("node-2.yaml", &weft_e2e::agents::node_manifest(2)).unwrap();
    tb.wait_converged(CONVERGE).unwrap();
    assert_eq!(weft_routes(&n1), [route_to("10.244.2.0/24", tb.node_addr(2))]);

    // 6. SIGTERM with --cleanup-on-exit: node 2's agent removes its routes and exits 0.
    assert!(tb.stop_agent(2).unwrap(), "node 2's agent did not exit cleanly");
    assert!(weft_routes(&n2).is_empty(), "{:?}", weft_routes(&n2));

    // 7. down leaves no agent process.
    let st = tb.state();
    tb.down().unwrap();
    common::assert_gone(&st);
    for pid in agents {
        assert!(!process_alive(pid), "agent {pid} survived down");
    }
}

#[test]
fn an_agent_leaves_foreign_routes_alone() {
    if !root_or_skip("an_agent_leaves_foreign_routes_alone") {
        return;
    }
    let tb = pod_testbed(3);
    let n1 = tb.node_netns(1);
    // Someone else's routes: one to node 3's pod CIDR (so weft cannot add its
    // own there), one that looks like a stale pod route with another protocol.
    for argv in [
        ["ip", "route", "add", "10.244.3.0/24", "via", "172.31.0.13", "proto", "static"],
        ["ip", "route", "add", "10.244.9.0/24", "via", "172.31.0.19", "proto", "static"],
    ] {
        let out = weft_e2e::exec_in(&n1, &argv, CMD_TIMEOUT).unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let agents = tb.start_agents().unwrap();
    let s1 = tb.wait_converged(CONVERGE).unwrap().remove(0);
    // The agent turned forwarding on at start; someone turns it off later (in
    // the node's netns): the agent reports it at its next resync, and leaves it.
    assert!(s1.ip_forward, "{s1:?}");
    let off = ["sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward"];
    assert!(weft_e2e::exec_in(&n1, &off, CMD_TIMEOUT).unwrap().status.success());
    let reported = weft_e2e::wait_until(RESYNC, || tb.agent_status(1).is_some_and(|s| !s.ip_forward));
    assert!(reported, "{:?}", tb.agent_status(1));
    assert_eq!(s1.routes, 1, "{s1:?}");
    assert!(s1.errors.iter().any(|e| e.contains("10.244.3.0/24") && e.contains("does not own")), "{s1:?}");
    assert_eq!(weft_routes(&n1), [route_to("10.244.2.0/24", tb.node_addr(2))]);
    let all = weft_e2e::exec_in(&n1, &["ip", "-4", "route", "show"], CMD_TIMEOUT).unwrap();
    let all = String::from_utf8_lossy(&all.stdout).to_string();
    assert!(all.contains("10.244.3.0/24 via 172.31.0.13 dev eth0 proto static"), "{all}");
    assert!(all.contains("10.244.9.0/24 via 172.31.0.19 dev eth0 proto static"), "{all}");
    let log = std::fs::read_to_string(weft_e2e::run::run_dir(&tb.run()).join("agent-n1.log")).unwrap();
    assert!(log.contains("ip_forward is off"), "{log}");
    let st = tb.state();
    tb.down().unwrap();
    common::assert_gone(&st);
    for pid in agents {
        assert!(!process_alive(pid), "agent {pid} survived down");
    }
}
