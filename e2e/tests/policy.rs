//! NetworkPolicy on the iptables backend, end to end: the agents' chains and
//! sets in each node, isolation per direction, allows by namespace and port,
//! NodePort transit through a node to a pod on another node, and cleanup;
//! on both backends, a set member deleted by hand put back by a resync.
//! The breadth of the semantics is the conformance suite's (tests/conformance.rs).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::{pod_testbed, root_or_skip, CMD_TIMEOUT};
use weft_e2e::probe::{probe_in, Outcome, Proto};
use weft_e2e::Pod;

const PROBE: Duration = Duration::from_millis(1500);
const CONVERGE: Duration = Duration::from_secs(10);

fn probe(from: &Pod, to: &Pod, port: u16, proto: Proto) -> Outcome {
    probe_in(&from.netns, SocketAddr::from((to.ip, port)), proto, PROBE).unwrap()
}

fn connects(from: &Pod, to: &Pod, port: u16, proto: Proto) -> bool {
    probe(from, to, port, proto) == Outcome::Connected(to.name.clone())
}

fn blocked(from: &Pod, to: &Pod, port: u16, proto: Proto) -> bool {
    matches!(probe(from, to, port, proto), Outcome::Timeout | Outcome::Refused)
}

/// `ipset test` inside the netns at `ns`.
fn in_set(ns: &Path, set: &str, ip: std::net::Ipv4Addr) -> bool {
    let ip = ip.to_string();
    weft_e2e::exec_in(ns, &["ipset", "test", set, &ip], CMD_TIMEOUT).unwrap().status.success()
}

fn save(ns: &Path, argv: &[&str]) -> String {
    let out = weft_e2e::exec_in(ns, argv, CMD_TIMEOUT).unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn ingress_isolation_namespace_and_port_allows_and_cleanup() {
    if !root_or_skip("ingress_isolation_namespace_and_port_allows_and_cleanup") {
        return;
    }
    let mut tb = pod_testbed(2);
    let xa = tb.add_pod(1, "x/a").unwrap();
    let xb = tb.add_pod(2, "x/b").unwrap();
    let ya = tb.add_pod(1, "y/a").unwrap();
    let yb = tb.add_pod(2, "y/b").unwrap();
    tb.apply("kind: Namespace\nmetadata: {name: y, labels: {ns: y}}\n").unwrap();
    tb.start_agents_with(&["--backend", "iptables"]).unwrap();
    let st = tb.wait_converged(CONVERGE).unwrap();
    assert!(st.iter().all(|s| s.errors.is_empty() && s.policy.is_some()), "{st:?}");
    let n1 = tb.node_netns(1);
    let rules = save(&n1, &["iptables", "-S", "FORWARD"]);
    let first = rules.lines().find(|l| l.starts_with("-A FORWARD")).unwrap_or_default();
    assert!(first.contains("-j WEFT-FORWARD"), "weft's jump is first: {rules}");
    // kube-proxy's KUBE-FORWARD (which accepts packets marked for masquerade)
    // is inserted in front of weft's jump: the agent puts its jump back first.
    let svc =
        weft_e2e::manifests::ServiceManifest::new("x", "a", "10.96.0.40".parse().unwrap(), &[("pod", "a")])
            .port(80, weft_agent::model::Protocol::Tcp, weft_agent::model::PortRef::Number(80));
    tb.apply(&svc.to_yaml()).unwrap();
    let first_rule = || {
        let rules = save(&n1, &["iptables", "-S", "FORWARD"]);
        rules.lines().find(|l| l.starts_with("-A FORWARD")).unwrap_or_default().to_string()
    };
    // (By hand too, with no change of the cluster state: the agent watches
    // FORWARD between syncs; tests/fail_closed.rs times it.)
    let push = ["iptables", "-I", "FORWARD", "1", "-j", "KUBE-FORWARD"];
    assert!(weft_e2e::exec_in(&n1, &push, CMD_TIMEOUT).unwrap().status.success());
    assert!(
        weft_e2e::wait_until(Duration::from_secs(5), || first_rule().contains("WEFT-FORWARD")),
        "{}",
        first_rule()
    );
    let rules = save(&n1, &["iptables", "-S", "FORWARD"]);
    assert_eq!(
        rules.matches("-j KUBE-FORWARD").count(),
        2,
        "both KUBE-FORWARD jumps stay, behind weft's: {rules}"
    );
    for (from, to) in [(&ya, &xa), (&yb, &xa), (&xb, &xa), (&xa, &yb)] {
        assert!(connects(from, to, 80, Proto::Tcp), "no policy: {} -> {}", from.name, to.name);
    }

    // Deny all ingress in x: nobody reaches x's pods, x's pods still reach out.
    tb.apply("kind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}}\n").unwrap();
    tb.wait_converged(CONVERGE).unwrap();
    assert!(blocked(&ya, &xa, 80, Proto::Tcp), "same node");
    assert!(blocked(&yb, &xa, 80, Proto::Tcp), "across nodes");
    assert!(blocked(&xb, &xa, 81, Proto::Udp), "own namespace, UDP");
    assert!(connects(&xa, &yb, 80, Proto::Tcp), "egress is not isolated");
    assert!(connects(&xa, &ya, 81, Proto::Udp), "egress is not isolated (UDP, same node)");

    // Plus: from namespace y on TCP 80 only.
    let allow = "kind: NetworkPolicy\nmetadata: {name: from-y, namespace: x}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n    ports: [{port: 80}]\n";
    tb.apply(allow).unwrap();
    tb.wait_converged(CONVERGE).unwrap();
    assert!(connects(&ya, &xa, 80, Proto::Tcp), "y -> x:80 same node");
    assert!(connects(&yb, &xa, 80, Proto::Tcp), "y -> x:80 across nodes");
    assert!(connects(&ya, &xb, 80, Proto::Tcp), "y -> x/b:80 on node 2");
    assert!(blocked(&ya, &xa, 81, Proto::Tcp), "port 81 not allowed");
    assert!(blocked(&ya, &xa, 80, Proto::Udp), "UDP 80 not allowed");
    assert!(blocked(&xb, &xa, 80, Proto::Tcp), "x is not y");

    // The policy turns invalid: reported (object and reason), and the rules in force stay.
    let bad = allow.replace("matchLabels: {ns: y}", "matchExpressions: [{key: ns, operator: Near}]");
    tb.write_manifest("networkpolicy-x-from-y.yaml", &bad).unwrap();
    let st = tb.wait_converged(CONVERGE).unwrap();
    for s in &st {
        assert!(s.errors.iter().any(|e| e.contains("NetworkPolicy x/from-y") && e.contains("Near")), "{s:?}");
    }
    assert!(connects(&ya, &xa, 80, Proto::Tcp), "the last good version still allows y -> x:80");
    assert!(blocked(&ya, &xa, 81, Proto::Tcp), "and still denies 81");
    tb.apply(allow).unwrap();

    // Relabel y's namespace: the allow follows the labels.
    tb.apply("kind: Namespace\nmetadata: {name: y, labels: {ns: other}}\n").unwrap();
    tb.wait_converged(CONVERGE).unwrap();
    assert!(blocked(&ya, &xa, 80, Proto::Tcp), "y no longer matches ns=y");

    // Delete the policies: open again.
    tb.delete_object("NetworkPolicy", Some("x"), "deny").unwrap();
    tb.delete_object("NetworkPolicy", Some("x"), "from-y").unwrap();
    tb.wait_converged(CONVERGE).unwrap();
    assert!(connects(&ya, &xa, 81, Proto::Tcp));

    // SIGTERM with --cleanup-on-exit: no chain, jump or set of weft's is left.
    assert!(tb.stop_agent(1).unwrap());
    assert!(!save(&n1, &["iptables-save", "-t", "filter"]).contains("WEFT"), "chains left");
    assert!(!save(&n1, &["ipset", "list", "-n"]).contains("weft-"), "sets left");
    let root = std::process::Command::new("ipset").args(["list", "-n"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&root.stdout).contains("weft-"), "a weft set in the root netns");
    let st = tb.state();
    tb.down().unwrap();
    common::assert_gone(&st);
}

#[test]
fn a_new_pod_is_isolated_from_its_first_packet_with_the_agent_up_or_down() {
    if !root_or_skip("a_new_pod_is_isolated_from_its_first_packet_with_the_agent_up_or_down") {
        return;
    }
    let mut tb = pod_testbed(2);
    let ya = tb.add_pod(1, "y/a").unwrap();
    tb.apply("kind: Namespace\nmetadata: {name: y, labels: {ns: y}}\n").unwrap();
    let policies = "kind: NetworkPolicy\nmetadata: {name: from-y-80, namespace: x}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n    ports: [{port: 80}]\n";
    tb.apply(policies).unwrap();
    let policy = ["--backend", "iptables"];
    tb.start_agents_with(&policy).unwrap();
    tb.wait_converged(CONVERGE).unwrap();

    // Agent up: ADD returns once the new pod's rules are in force. No waiting
    // here: the very first probes see the pod's policy, both ways.
    let fresh = tb.add_pod(1, "x/fresh").unwrap();
    // The instant ADD returned, the kernel already knew the pod (a probe alone
    // could pass on a SYN retransmitted after the agent caught up).
    let n1 = tb.node_netns(1);
    assert!(in_set(&n1, "weft-local", fresh.ip) && in_set(&n1, "weft-in-iso", fresh.ip));
    assert!(connects(&ya, &fresh, 80, Proto::Tcp), "allowed at once: y -> x/fresh:80");
    assert!(blocked(&ya, &fresh, 81, Proto::Tcp), "isolated at once: y -> x/fresh:81");
    assert!(connects(&fresh, &ya, 80, Proto::Tcp), "its egress is not isolated");
    let remote = tb.add_pod(2, "x/remote").unwrap();
    assert!(connects(&ya, &remote, 80, Proto::Tcp), "allowed at once across nodes");
    assert!(blocked(&ya, &remote, 81, Proto::Udp), "isolated at once across nodes");

    // Agent down (killed: its rules stay, nobody answers the plugin): ADD
    // goes on, and the pod's address is dropped (fail closed), so isolation
    // holds and allowed traffic waits for the agent.
    tb.kill_agent(1).unwrap();
    let late = tb.add_pod(1, "x/late").unwrap();
    assert!(!in_set(&n1, "weft-local", late.ip), "nobody told the kernel");
    assert!(blocked(&ya, &late, 81, Proto::Tcp), "isolated with the agent down");
    assert!(blocked(&ya, &late, 80, Proto::Tcp), "fail closed: allowed traffic waits for the agent");
    assert!(connects(&ya, &fresh, 80, Proto::Tcp), "pods the agent knew keep their rules");
    tb.start_agent(1, &policy).unwrap();
    tb.wait_converged(CONVERGE).unwrap();
    assert!(connects(&ya, &late, 80, Proto::Tcp), "the agent is back: allowed");
    assert!(blocked(&ya, &late, 81, Proto::Tcp), "and still isolated");
    let st = tb.state();
    tb.down().unwrap();
    common::assert_gone(&st);
}

#[test]
fn switching_backends_removes_the_other_backends_rules_and_auto_says_which() {
    if !root_or_skip("switching_backends_removes_the_other_backends_rules_and_auto_says_which") {
        return;
    }
    let mut tb = pod_testbed(2);
    let xa = tb.add_pod(1, "x/a").unwrap();
    let ya = tb.add_pod(1, "y/a").unwrap();
    tb.apply("kind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}}\n").unwrap();
    let n1 = tb.node_netns(1);
    let iptables_objects = || {
        let chains = save(&n1, &["iptables-save", "-t", "filter"]).contains("WEFT-FORWARD");
        let sets = save(&n1, &["ipset", "list", "-n"]).contains("weft-");
        chains || sets
    };
    let nft_table = || save(&n1, &["nft", "list", "tables"]).lines().any(|l| l == "table inet weft");
    // Masquerade goes with the policy backend, and leaves the other.
    let masq_iptables = || save(&n1, &["iptables-save", "-t", "nat"]).contains("WEFT-POSTROUTING");
    let masq_nft = || save(&n1, &["nft", "list", "tables"]).contains("inet weft-masq");
    tb.serve_ext(&[7777], true).unwrap();
    let to_ext = SocketAddr::from((tb.ext_addr(), 7777));
    let node_seen = Outcome::Connected(format!("ext {}", tb.node_addr(1)));
    for (backend, other) in [("iptables", "nftables"), ("nftables", "iptables"), ("auto", "iptables")] {
        tb.start_agent(1, &["--backend", backend]).unwrap();
        tb.start_agent(2, &["--backend", backend]).unwrap();
        let st = tb.wait_converged(CONVERGE).unwrap();
        let used = st[0].policy.as_ref().map(|p| p.backend.clone()).unwrap_or_default();
        let want = if backend == "auto" { "nftables" } else { backend };
        assert_eq!(used, want, "{st:?}");
        assert_eq!(iptables_objects(), want == "iptables", "{backend}: iptables objects");
        assert_eq!(nft_table(), want == "nftables", "{backend}: the nft table (after {other})");
        assert_eq!(
            (masq_iptables(), masq_nft()),
            (want == "iptables", want == "nftables"),
            "{backend}: masquerade"
        );
        let got = probe_in(&ya.netns, to_ext, Proto::Tcp, PROBE).unwrap();
        assert_eq!(got, node_seen, "{backend}: a pod reaches the outside as its node");
        assert!(blocked(&ya, &xa, 80, Proto::Tcp), "{backend} enforces");
        // Killed, as a crash or an upgrade would: its rules stay for the next one to remove.
        tb.kill_agent(1).unwrap();
        tb.kill_agent(2).unwrap();
    }
    let log = std::fs::read_to_string(weft_e2e::run::run_dir(&tb.run()).join("agent-n1.log")).unwrap();
    assert!(log.contains("auto: nftables"), "auto says which it picked and why:\n{log}");
    let st = tb.state();
    tb.down().unwrap();
    common::assert_gone(&st);
}

#[test]
fn a_denied_connection_is_logged_once_with_its_policy() {
    if !root_or_skip("a_denied_connection_is_logged_once_with_its_policy") {
        return;
    }
    for backend in ["iptables", "nftables"] {
        let mut tb = pod_testbed(2);
        let xa = tb.add_pod(1, "x/a").unwrap();
        let yb = tb.add_pod(2, "y/b").unwrap();
        tb.apply("kind: NetworkPolicy\nmetadata: {name: web-only, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: 80}]}]\n").unwrap();
        tb.start_agents_with(&["--backend", backend]).unwrap();
        tb.wait_converged(CONVERGE).unwrap();
        // One connection: its SYN and the retransmit within the probe's 1.5 s.
        assert!(blocked(&yb, &xa, 81, Proto::Tcp), "{backend}");
        assert!(connects(&yb, &xa, 80, Proto::Tcp), "{backend}");
        let log_file = weft_e2e::run::run_dir(&tb.run()).join("agent-n1.log");
        let lines = || -> Vec<String> {
            let log = std::fs::read_to_string(&log_file).unwrap_or_default();
            log.lines().filter(|l| l.contains("weft-agent: denied ")).map(String::from).collect()
        };
        assert!(
            weft_e2e::wait_until(Duration::from_secs(5), || !lines().is_empty()),
            "{backend}: nothing logged"
        );
        // A later denied connection (port 82): once its line is there, the
        // agent has read every packet the kernel logged before it, in order.
        assert!(blocked(&yb, &xa, 82, Proto::Tcp), "{backend}");
        assert!(
            weft_e2e::wait_until(Duration::from_secs(5), || lines()
                .iter()
                .any(|l| l.contains("\"port\":82"))),
            "{backend}: the later denial was not logged: {:?}",
            lines()
        );
        let lines = lines();
        assert_eq!(lines.len(), 2, "{backend}: one line for each connection: {lines:?}");
        let line = &lines[0];
        for want in [
            "\"direction\":\"ingress\"",
            "\"port\":81",
            "\"policies\":[\"x/web-only\"]",
            "is isolated for ingress by x/web-only; no rule admits y/b",
        ] {
            assert!(line.contains(want), "{backend}: {want} not in {line}");
        }
        let (head, denied) = tb.agent_get(1, "/denied?since=0").unwrap();
        assert!(head.contains("application/x-ndjson") && denied.contains("x/web-only"), "{head}\n{denied}");
        let metrics = tb.agent_get(1, "/metrics").unwrap().1;
        assert!(
            metrics.contains("weft_denied_connections_total{policy=\"x/web-only\",direction=\"ingress\"} 2"),
            "{metrics}"
        );
        let st = tb.state();
        tb.down().unwrap();
        common::assert_gone(&st);
    }
}

#[test]
fn an_audit_policy_logs_what_it_would_deny_and_lets_it_pass() {
    if !root_or_skip("an_audit_policy_logs_what_it_would_deny_and_lets_it_pass") {
        return;
    }
    for backend in ["iptables", "nftables"] {
        let mut tb = pod_testbed(2);
        let xa = tb.add_pod(1, "x/a").unwrap();
        let yb = tb.add_pod(2, "y/b").unwrap();
        tb.apply("kind: NetworkPolicy\nmetadata: {name: try-deny, namespace: x, annotations: {weft.io/audit: 'true'}}\nspec: {podSelector: {}}\n").unwrap();
        tb.start_agents_with(&["--backend", backend]).unwrap();
        tb.wait_converged(CONVERGE).unwrap();
        assert!(connects(&yb, &xa, 81, Proto::Tcp), "{backend}: an audit policy lets it pass");
        let log_file = weft_e2e::run::run_dir(&tb.run()).join("agent-n1.log");
        let line = || {
            std::fs::read_to_string(&log_file)
                .unwrap_or_default()
                .lines()
                .find(|l| l.contains("weft-agent: denied ") && l.contains("\"audit\":true"))
                .map(String::from)
        };
        assert!(
            weft_e2e::wait_until(Duration::from_secs(5), || line().is_some()),
            "{backend}: no audit line"
        );
        let line = line().unwrap_or_default();
        assert!(
            line.contains("\"policies\":[\"x/try-deny\"]") && line.contains("would be isolated"),
            "{line}"
        );
        // The same policy enforced: denied.
        tb.apply("kind: NetworkPolicy\nmetadata: {name: try-deny, namespace: x}\nspec: {podSelector: {}}\n")
            .unwrap();
        tb.wait_converged(CONVERGE).unwrap();
        assert!(blocked(&yb, &xa, 81, Proto::Tcp), "{backend}: enforced now");
        let st = tb.state();
        tb.down().unwrap();
        common::assert_gone(&st);
    }
}

/// The agent's periodic resync (every 500 ms here) finds weft's set drifted
/// behind its back (an isolated pod deleted from the isolation set by hand,
/// which lets y reach it) and puts it right without a change of the cluster
/// state, on both backends; the log says what it repaired.
#[test]
fn a_set_member_deleted_by_hand_is_restored_by_the_next_resync() {
    if !root_or_skip("a_set_member_deleted_by_hand_is_restored_by_the_next_resync") {
        return;
    }
    for backend in ["iptables", "nftables"] {
        let mut tb = pod_testbed(1);
        let xa = tb.add_pod(1, "x/a").unwrap();
        let ya = tb.add_pod(1, "y/a").unwrap();
        tb.apply("kind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}}\n")
            .unwrap();
        tb.start_agents_with(&["--backend", backend]).unwrap();
        let st = tb.wait_converged(CONVERGE).unwrap();
        assert!(st.iter().all(|s| s.errors.is_empty() && s.policy.is_some()), "{backend}: {st:?}");
        assert!(blocked(&ya, &xa, 80, Proto::Tcp), "{backend}: x is isolated");
        let n1 = tb.node_netns(1);
        let ip = xa.ip.to_string();
        let element = format!("{{ {ip} }}");
        let drop: Vec<&str> = match backend {
            "iptables" => vec!["ipset", "del", "weft-in-iso", &ip],
            _ => vec!["nft", "delete", "element", "inet", "weft", "in_iso", &element],
        };
        let out = weft_e2e::exec_in(&n1, &drop, CMD_TIMEOUT).unwrap();
        assert!(out.status.success(), "{backend}: {}", String::from_utf8_lossy(&out.stderr));
        let log = weft_e2e::run::run_dir(&tb.run()).join("agent-n1.log");
        let repaired = weft_e2e::wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("drift repaired"))
        });
        assert!(repaired, "{backend}: {}", std::fs::read_to_string(&log).unwrap_or_default());
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(blocked(&ya, &xa, 80, Proto::Tcp), "{backend}: x is isolated again: {log}");
        // The first resync had a thread compile the state from scratch too: no disagreement.
        assert!(!log.contains("differs from a compile from scratch"), "{backend}: {log}");
        let st = tb.state();
        tb.down().unwrap();
        common::assert_gone(&st);
    }
}
