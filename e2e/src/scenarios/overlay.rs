//! Seed 003 as it happened, on an underlay that drops frames with pod
//! addresses (`underlay.rs`): host-gw cannot work there; flannel's overlay
//! carries pod to pod, but a node reaching a ClusterIP whose endpoint is on
//! another node sends from its underlay address and the endpoint's reply,
//! routed onto the underlay with the pod's address, is dropped; weft's vxlan
//! mode carries all of it: NodePort from outside, a pod to another node's
//! address, NetworkPolicy and its denied log included.

use std::net::Ipv4Addr;

use weft_agent::model::{PortRef, Protocol};
use weft_agent::overlay::VXLAN_OVERHEAD;

use super::{at, down_clean, sh, Check, Checks, CONVERGE, ECHO_PORT};
use crate::error::Result;
use crate::manifests::ServiceManifest;
use crate::probe::Proto;
use crate::{plan, wait_until, Testbed};

/// Pod c admits nothing.
const DENY_C: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-c, namespace: web}
spec:
  podSelector: {matchLabels: {pod: c}}
  policyTypes: [Ingress]
";

/// IPv4 only (the scenario table refuses other families): the overlay carries IPv4.
pub(super) fn overlay_seed_003(_ipv4: crate::family::Family) -> Result<Vec<Check>> {
    let mut c = Checks::default();
    let mut tb = Testbed::up(2)?;
    tb.set_anti_spoofing(true)?;
    tb.set_pod_mtu(Some(plan::MTU - VXLAN_OVERHEAD))?;
    let a = tb.add_pod(1, "web/a")?;
    let pc = tb.add_pod(2, "web/c")?;
    let (n1, ext) = (tb.node_netns(1), tb.ext_netns());
    let vip = Ipv4Addr::new(10, 96, 0, 11);
    let svc = ServiceManifest::new("web", "c", vip, &[("pod", "c")])
        .port(80, Protocol::Tcp, PortRef::Number(80))
        .node_port(30080);
    tb.apply(&svc.to_yaml())?;
    // As in node-to-clusterip: a real node's default route covers the service CIDR.
    sh(&n1, &["ip", "route", "add", "10.96.0.0/12", "dev", plan::HOST_IFNAME])?;
    let node_port = at(tb.node_addr(1), 30080);

    // 1. host-gw: pod addresses on the lan, dropped.
    tb.start_agents()?;
    tb.wait_converged(CONVERGE)?;
    let before = tb.underlay_drops()?;
    c.blocked("host-gw: pod a (node 1) -> pod c (node 2)", &a.netns, at(pc.ip, 80), Proto::Tcp)?;
    c.blocked("host-gw: node 1 -> ClusterIP, endpoint on node 2", &n1, at(vip, 80), Proto::Tcp)?;
    c.blocked("host-gw: ext -> NodePort on node 1, endpoint on node 2", &ext, node_port, Proto::Tcp)?;
    let dropped = tb.underlay_drops()?;
    c.that("the lan dropped frames with pod addresses", dropped > before, format!("{before} -> {dropped}"));
    for n in 1..=2 {
        // Routes, rules and sets go with the agents (--cleanup-on-exit).
        let stopped = tb.stop_agent(n)?;
        c.that(&format!("node {n}'s agent stops cleanly"), stopped, stopped.to_string());
    }

    // 2. flannel with a kube-proxy without clusterCIDR: the seed.
    tb.set_up_flannel()?;
    let unmarked = tb.kube_proxy_without_cluster_cidr(1)?;
    c.that(
        "node 1's kube-proxy does not masquerade its own traffic",
        unmarked == 1,
        format!("{unmarked} rule removed"),
    );
    c.answers("flannel: pod a -> pod c through the overlay", &a.netns, at(pc.ip, 80), Proto::Tcp, "web/c")?;
    let before = tb.underlay_drops()?;
    c.blocked("flannel: node 1 -> ClusterIP, endpoint on node 2 (the seed)", &n1, at(vip, 80), Proto::Tcp)?;
    let dropped = tb.underlay_drops()?;
    c.that(
        "the lan dropped pod c's reply to node 1's address",
        dropped > before,
        format!("{before} -> {dropped}"),
    );
    tb.tear_down_flannel()?;

    // 3. weft's vxlan mode, the same kube-proxy.
    for n in 1..=2 {
        tb.start_agent(n, &["--mode", "vxlan"])?;
    }
    tb.wait_converged(CONVERGE)?;
    c.answers("vxlan: pod a -> pod c", &a.netns, at(pc.ip, 80), Proto::Tcp, "web/c")?;
    c.answers("vxlan: pod c -> pod a", &pc.netns, at(a.ip, 81), Proto::Udp, "web/a")?;
    // A pod to another node's own address (kubelet, a hostNetwork pod):
    // masqueraded to its node's InternalIP, through the overlay; with loose
    // reverse-path filtering (Debian's default), which it needs (docs/modes.md).
    let n2 = tb.node_netns(2);
    for n in [&n1, &n2] {
        sh(n, &["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=2"])?;
    }
    tb.serve_in(&n2, "node-2", &[ECHO_PORT], true)?;
    let seen = format!("node-2 {}", tb.node_addr(1));
    c.answers(
        "vxlan: pod a -> node 2's address",
        &a.netns,
        at(tb.node_addr(2), ECHO_PORT),
        Proto::Tcp,
        &seen,
    )?;
    c.answers(
        "vxlan: node 1 -> ClusterIP, endpoint on node 2, kube-proxy without clusterCIDR",
        &n1,
        at(vip, 80),
        Proto::Tcp,
        "web/c",
    )?;
    // What carries the reply is node 2's rule: without it (its agent killed),
    // the seed again; its restarted agent puts it back.
    tb.kill_agent(2)?;
    let prio = weft_agent::overlay::REPLY_RULE_PRIORITY.to_string();
    sh(&tb.node_netns(2), &["ip", "rule", "del", "priority", &prio])?;
    c.blocked("vxlan without node 2's reply rule: node 1 -> ClusterIP", &n1, at(vip, 80), Proto::Tcp)?;
    tb.start_agent(2, &["--mode", "vxlan"])?;
    tb.wait_converged(CONVERGE)?;
    c.answers("vxlan, node 2's agent restarted: node 1 -> ClusterIP", &n1, at(vip, 80), Proto::Tcp, "web/c")?;
    tb.apply_services()?;
    c.answers(
        "vxlan: node 1 -> ClusterIP, kube-proxy with clusterCIDR",
        &n1,
        at(vip, 80),
        Proto::Tcp,
        "web/c",
    )?;
    // The endpoint sees node 1's InternalIP, as in host-gw (the VTEP borrows it).
    tb.serve_in(&pc.netns, &pc.name, &[ECHO_PORT], true)?;
    let svc = ServiceManifest::new("web", "c-echo", Ipv4Addr::new(10, 96, 0, 12), &[("pod", "c")])
        .port(80, Protocol::Tcp, PortRef::Number(ECHO_PORT))
        .node_port(30081);
    tb.apply(&svc.to_yaml())?;
    let seen = format!("web/c {}", tb.node_addr(1));
    c.answers(
        "vxlan: ext -> NodePort on node 1, endpoint on node 2",
        &ext,
        at(tb.node_addr(1), 30081),
        Proto::Tcp,
        &seen,
    )?;
    // Policy applies to what the overlay delivers, and the denied log names it.
    tb.apply(DENY_C)?;
    tb.wait_converged(CONVERGE)?;
    c.blocked("vxlan: pod a -> pod c under c's deny-ingress", &a.netns, at(pc.ip, 80), Proto::Tcp)?;
    let want = format!("\"src\":\"web/a ({})\"", a.ip);
    let logged =
        wait_until(CONVERGE, || tb.agent_get(2, "/denied?since=0").is_ok_and(|(_, d)| d.contains(&want)));
    c.that(
        "node 2's denied log names pod a",
        logged,
        tb.agent_get(2, "/denied?since=0").map(|(_, body)| body).unwrap_or_else(|e| e.to_string()),
    );
    let overlay = tb.agent_status(1).and_then(|s| s.overlay);
    let want = Some((1, plan::MTU - VXLAN_OVERHEAD));
    c.that(
        "node 1's status: one VTEP, pods at MTU 1450",
        overlay.as_ref().map(|o| (o.vteps, o.pod_mtu)) == want,
        format!("{overlay:?}"),
    );
    down_clean(&mut c, tb)?;
    Ok(c.0)
}
