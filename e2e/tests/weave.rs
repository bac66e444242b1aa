//! The weave-npc 1.9.6 reproduction (weft_e2e::weave) in a live testbed: the
//! seed failure (an external client's NodePort connection to a pod on another
//! node times out), what still works under 1.9.6, its local-only sets
//! (a remote pod never matches a pod-selector peer), the one rule weft adds
//! that makes the NodePort answer, and that `remove_weave` restores everything.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use common::{assert_gone, pod_testbed, root_or_skip, CMD_TIMEOUT};
use weft_agent::model::{Labels, PortRef, Protocol};
use weft_e2e::manifests::{serve_ports, ServiceManifest};
use weft_e2e::pods::DEFAULT_PORTS;
use weft_e2e::probe::{probe_in, Outcome, Proto};
use weft_e2e::{exec_in, weave};

/// Probe bound: generous, since the first packet to a new veth waits for ARP.
const PROBE: Duration = Duration::from_secs(3);
/// Bound on the agents' first convergence (their routes).
const CONVERGE: Duration = Duration::from_secs(10);
const NODE_PORT: u16 = 30080;

/// y/b admits x/a only (any port): the AND of a namespace and a pod selector.
const ALLOW_A: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-a, namespace: y}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}
      podSelector: {matchLabels: {pod: a}}
";

fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

fn probe(from: &Path, to: SocketAddr, proto: Proto) -> Outcome {
    probe_in(from, to, proto, PROBE).unwrap_or_else(|e| panic!("probe {to}: {e}"))
}

fn answers(what: &str, from: &Path, to: SocketAddr, proto: Proto, reply: &str) {
    let got = probe(from, to, proto);
    assert_eq!(got, Outcome::Connected(reply.into()), "{what}");
    eprintln!("ok  {what}: {got}");
}

fn times_out(what: &str, from: &Path, to: SocketAddr) {
    let got = probe(from, to, Proto::Tcp);
    assert_eq!(got, Outcome::Timeout, "{what}");
    eprintln!("ok  {what}: {got}");
}

/// Runs `argv` in `netns`; Ok(stdout) if it succeeded, Err(stderr) if not.
fn sh(netns: &Path, argv: &[&str]) -> Result<String, String> {
    let out = exec_in(netns, argv, CMD_TIMEOUT).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    }
}

fn forward(netns: &Path) -> Vec<String> {
    let out = sh(netns, &["iptables", "-S", "FORWARD"]).unwrap();
    out.lines().filter(|l| l.starts_with("-A ")).map(str::to_string).collect()
}

fn weave_sets(netns: &Path) -> Vec<String> {
    let out = sh(netns, &["ipset", "list", "-n"]).unwrap();
    out.lines().filter(|l| l.starts_with(weave::SET_PREFIX)).map(str::to_string).collect()
}

/// The members of set `name` in `netns`.
fn members(netns: &Path, name: &str) -> Vec<String> {
    let out = sh(netns, &["ipset", "list", name]).unwrap();
    out.lines().skip_while(|l| !l.starts_with("Members:")).skip(1).map(|l| l.trim().to_string()).collect()
}

/// The packets the DROP hook (FORWARD rule 2) has dropped in `netns`.
fn dropped(netns: &Path) -> u64 {
    let out = sh(netns, &["iptables", "-L", "FORWARD", "2", "-v", "-x", "-n"]).unwrap();
    assert!(out.contains("DROP"), "FORWARD rule 2 is not the DROP hook: {out}");
    out.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{out}"))
}

/// Asserts that weave's two hooks are the first two rules of FORWARD, once each.
fn assert_hooks_on_top(netns: &Path) {
    let want = ["-A FORWARD -d 10.244.0.0/16 -j WEAVE-NPC", "-A FORWARD -d 10.244.0.0/16 -j DROP"];
    let rules = forward(netns);
    assert_eq!(rules.get(..2), Some(&want.map(String::from)[..]), "{rules:#?}");
    let copies = rules.iter().filter(|r| want.contains(&r.as_str())).count();
    assert_eq!(copies, 2, "{rules:#?}");
}

#[test]
fn weave_1_9_6_side_by_side() {
    if !root_or_skip("weave_1_9_6_side_by_side") {
        return;
    }
    let mut tb = pod_testbed(2);
    let a = tb.add_pod(1, "x/a").unwrap();
    let b = tb.add_pod(2, "y/b").unwrap();
    // Routes only: weave-npc 1.9.6's rules are the only policy here.
    tb.start_agents_with(&["--backend", "off"]).unwrap();
    tb.wait_converged(CONVERGE).unwrap();
    let svc = ServiceManifest::new("y", "np", Ipv4Addr::new(10, 96, 0, 30), &[("pod", "b")])
        .port(80, Protocol::Tcp, PortRef::Number(80))
        .node_port(NODE_PORT);
    tb.apply(&svc.to_yaml()).unwrap();
    let (ext, n1, n2) = (tb.ext_netns(), tb.node_netns(1), tb.node_netns(2));
    let np1 = at(tb.node_addr(1), NODE_PORT);
    let np2 = at(tb.node_addr(2), NODE_PORT);

    // Without weave's rules: the paths all work.
    answers("no weave: ext -> node 1 NodePort -> y/b on node 2", &ext, np1, Proto::Tcp, "y/b");
    answers("no weave: x/a -> y/b across nodes", &a.netns, at(b.ip, 80), Proto::Tcp, "y/b");

    // weave-npc 1.9.6's rules; applying twice changes nothing.
    tb.apply_weave().unwrap();
    let sets = weave_sets(&n1);
    tb.apply_weave().unwrap();
    for n in [&n1, &n2] {
        assert_hooks_on_top(n);
    }
    assert_eq!(weave_sets(&n1), sets, "re-applying the same model changes the sets");
    assert_eq!(members(&n1, weave::LOCAL_PODS), [a.ip.to_string()]);
    assert_eq!(members(&n2, weave::LOCAL_PODS), [b.ip.to_string()]);

    // The seed: on node 1, the DNATed packet's source (ext) is no local pod
    // and its destination (y/b) is not local either: no rule accepts it.
    let before = dropped(&n1);
    times_out("weave: ext -> node 1 NodePort -> y/b on node 2 (the seed)", &ext, np1);
    assert!(dropped(&n1) > before, "the seed's SYNs are dropped on node 1, the NodePort's node");
    // The endpoint's own node admits it: y/b is default-allowed there.
    answers("weave: ext -> node 2 NodePort -> y/b on node 2", &ext, np2, Proto::Tcp, "y/b");
    // Pod to pod across nodes: a local source to a remote pod passes on the
    // sending node, a default-allowed destination on the receiving one.
    answers("weave: x/a -> y/b across nodes (tcp)", &a.netns, at(b.ip, 80), Proto::Tcp, "y/b");
    answers("weave: x/a -> y/b across nodes (udp)", &a.netns, at(b.ip, 81), Proto::Udp, "y/b");
    answers("weave: y/b -> x/a across nodes", &b.netns, at(a.ip, 80), Proto::Tcp, "x/a");

    // What weft does differently (the sketch's fix): accept transit, a
    // destination that is not a local pod, whatever the source.
    let transit = ["-m", "set", "!", "--match-set", weave::LOCAL_PODS, "dst", "-j", "ACCEPT"];
    let mut insert = vec!["iptables", "-I", weave::MAIN_CHAIN, "4"];
    insert.extend(transit);
    sh(&n1, &insert).unwrap();
    answers("weave + transit accept: ext -> node 1 NodePort -> y/b", &ext, np1, Proto::Tcp, "y/b");
    // Re-applying replaces the chain: the hand-made rule is gone, the seed is back.
    tb.apply_weave().unwrap();
    let main = sh(&n1, &["iptables", "-S", weave::MAIN_CHAIN]).unwrap();
    assert_eq!(main.lines().count(), 5, "{main}"); // -N and 4 rules
    times_out("weave re-applied: ext -> node 1 NodePort -> y/b", &ext, np1);

    // A policy isolating y/b that admits x/a, and a second pod labelled
    // pod=a in x, this one on y/b's node.
    tb.apply(ALLOW_A).unwrap();
    let labels = Labels::from([("pod".to_string(), "a".to_string())]);
    let a2 = tb.add_pod_with(2, "x/a2", labels, serve_ports(&DEFAULT_PORTS)).unwrap();
    tb.apply_weave().unwrap();
    // On node 2 the rule's source set holds only node 2's pods: x/a2, never x/a.
    let ingress = sh(&n2, &["iptables", "-S", weave::INGRESS_CHAIN]).unwrap();
    let rule = ingress.lines().find(|l| l.starts_with("-A ")).unwrap_or_else(|| panic!("{ingress}"));
    let set_after = |dir: &str| {
        let words: Vec<&str> = rule.split_whitespace().collect();
        let i = words.windows(2).position(|w| w[1] == dir).unwrap_or_else(|| panic!("{rule}"));
        words[i].to_string()
    };
    assert_eq!(members(&n2, &set_after("src")), [a2.ip.to_string()], "{rule}");
    assert_eq!(members(&n2, &set_after("dst")), [b.ip.to_string()], "{rule}");
    // Node 1 has the same rule, with x/a as the source and no destination.
    assert!(members(&n1, &set_after("dst")).is_empty());
    assert_eq!(members(&n1, &set_after("src")), [a.ip.to_string()]);

    // So 1.9.6 blocks what the policy allows, from the remote pod only.
    let before = (dropped(&n1), dropped(&n2));
    times_out("weave + allow-a: x/a (node 1) -> y/b (node 2), allowed by policy", &a.netns, at(b.ip, 80));
    assert_eq!(dropped(&n1), before.0, "node 1 passes x/a's SYNs (a local source)");
    assert!(dropped(&n2) > before.1, "node 2, y/b's node, drops them");
    answers("weave + allow-a: x/a2 (node 2) -> y/b (node 2)", &a2.netns, at(b.ip, 80), Proto::Tcp, "y/b");
    times_out("weave + allow-a: ext -> node 2 NodePort -> y/b (not allowed)", &ext, np2);
    answers("weave + allow-a: y/b -> x/a (not isolated)", &b.netns, at(a.ip, 80), Proto::Tcp, "x/a");

    // Without the policy, a re-apply drops its rule and destroys its sets.
    assert!(tb.delete_object("NetworkPolicy", Some("y"), "allow-a").unwrap());
    tb.apply_weave().unwrap();
    for n in [&n1, &n2] {
        let left = weave_sets(n);
        assert!(!left.contains(&set_after("src")) && !left.contains(&set_after("dst")), "{left:?}");
        let ingress = sh(n, &["iptables", "-S", weave::INGRESS_CHAIN]).unwrap();
        assert_eq!(ingress.lines().count(), 1, "{ingress}"); // -N only
    }
    answers("weave, policy deleted: x/a -> y/b", &a.netns, at(b.ip, 80), Proto::Tcp, "y/b");

    // remove_weave (twice: idempotent) restores every path.
    tb.remove_weave().unwrap();
    tb.remove_weave().unwrap();
    for n in [&n1, &n2] {
        let rules = forward(n);
        assert!(!rules.iter().any(|r| r.contains("WEAVE") || r.ends_with("-j DROP")), "{rules:#?}");
        for chain in [weave::MAIN_CHAIN, weave::DEFAULT_CHAIN, weave::INGRESS_CHAIN] {
            assert!(sh(n, &["iptables", "-S", chain]).is_err(), "{chain} is left");
        }
        assert!(weave_sets(n).is_empty(), "{:?}", weave_sets(n));
    }
    answers("weave removed: ext -> node 1 NodePort -> y/b", &ext, np1, Proto::Tcp, "y/b");
    answers("weave removed: x/a -> y/b", &a.netns, at(b.ip, 80), Proto::Tcp, "y/b");

    let st = tb.state();
    tb.down().unwrap();
    assert_gone(&st);
}
