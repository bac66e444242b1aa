//! Scenario 5: pod egress to a client outside the cluster (the testbed's `ext`
//! namespace, on the lan) is masqueraded to the pod's node's lan address; pod
//! to pod traffic, across nodes (host-gw routes from the agents) and on one
//! node's bridge, keeps the pod's own address. The servers answer with the
//! source address they saw (`serve --echo-peer`), so each assertion is what the
//! receiving end observed, over TCP and UDP.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use common::{assert_gone, pod_testbed, root_or_skip};
use weft_e2e::probe::{probe_in, Outcome, Proto};

/// Probe bound: generous, since the first packet to a new veth waits for ARP.
const PROBE: Duration = Duration::from_secs(3);
/// Bound on the agents applying the cluster dir (they poll every 100 ms).
const CONVERGE: Duration = Duration::from_secs(10);
/// The port of the echo-peer servers (free in pods: their workload serves 80 and 81).
const ECHO_PORT: u16 = 8080;

/// Probes `to:ECHO_PORT` from the netns at `from` over TCP and UDP and asserts
/// that server `server` answered both and saw the source `seen`.
fn assert_seen(from: &Path, what: &str, to: Ipv4Addr, server: &str, seen: Ipv4Addr) {
    for proto in [Proto::Tcp, Proto::Udp] {
        let got = probe_in(from, SocketAddr::from((to, ECHO_PORT)), proto, PROBE).unwrap();
        assert_eq!(got, Outcome::Connected(format!("{server} {seen}")), "{what} {proto:?}");
    }
}

#[test]
fn pod_egress_is_masqueraded_and_pod_to_pod_is_not() {
    if !root_or_skip("pod_egress_is_masqueraded_and_pod_to_pod_is_not") {
        return;
    }
    let mut tb = pod_testbed(2);
    let a = tb.add_pod(1, "web/a").unwrap();
    let b = tb.add_pod(2, "web/b").unwrap();
    let c = tb.add_pod(1, "web/c").unwrap();
    tb.start_agents().unwrap();
    tb.wait_converged(CONVERGE).unwrap();
    tb.serve_ext(&[ECHO_PORT], true).unwrap();
    for p in [&a, &b, &c] {
        tb.serve_in(&p.netns, &p.name, &[ECHO_PORT], true).unwrap();
    }
    let ext = tb.ext_addr();
    let (n1, n2) = (tb.node_addr(1), tb.node_addr(2));
    assert_eq!((ext, n1, n2), ([172, 31, 0, 100].into(), [172, 31, 0, 11].into(), [172, 31, 0, 12].into()));

    // (a) Egress to the lan client leaves with the node's lan address, per node.
    assert_seen(&a.netns, "pod a (node 1) -> ext", ext, "ext", n1);
    assert_seen(&b.netns, "pod b (node 2) -> ext", ext, "ext", n2);

    // (b) Across nodes, both ways: the receiving pod sees the sender's pod IP.
    assert_seen(&a.netns, "pod a (node 1) -> pod b (node 2)", b.ip, "web/b", a.ip);
    assert_seen(&b.netns, "pod b (node 2) -> pod a (node 1)", a.ip, "web/a", b.ip);

    // (c) On one node's bridge, both ways: the peer's pod IP too.
    assert_seen(&a.netns, "pod a -> pod c (both node 1)", c.ip, "web/c", a.ip);
    assert_seen(&c.netns, "pod c -> pod a (both node 1)", a.ip, "web/a", c.ip);

    // The default workload's reply is unchanged (the name only).
    let got = probe_in(&a.netns, SocketAddr::from((b.ip, 80)), Proto::Tcp, PROBE).unwrap();
    assert_eq!(got, Outcome::Connected("web/b".into()));

    // down kills the extra servers with the pods and agents, and leaves nothing.
    let st = tb.state();
    assert_eq!(st.processes.iter().filter(|p| p.name.starts_with("serve ")).count(), 4, "{st:?}");
    tb.down().unwrap();
    assert_gone(&st);
    for p in &st.processes {
        assert!(!alive(p.pid as u32), "{} (pid {}) survived down", p.name, p.pid);
    }
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !matches!(s.rfind(')').and_then(|i| s[i + 1..].split_whitespace().next()), Some("Z" | "X")))
        .unwrap_or(false)
}
