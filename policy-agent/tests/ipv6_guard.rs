//! IPv6 fails closed on both backends, with real packets: dual-stack pods on
//! a bridge in a node namespace of the test's own (each pod a namespace of
//! its own, held by a child process), the agent's engine compiled from a
//! model and applied by the backend. A pod a policy isolates gets no new
//! IPv6 connection in that direction, an address of the node's IPv6 pod
//! CIDR that no pod holds gets nothing, and pods no policy selects, and
//! replies, pass; a pod that appears is admitted by the incremental path.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weft_agent::backend::{self, BackendChoice};
use weft_agent::model::{parse_manifests, Model};
use weft_agent::policy::{Options, PolicyEngine};
use weft_netkit::netns::run_in_new;

const NODE: &str = "
kind: Node
metadata: {name: node-1}
spec: {podCIDRs: [10.244.1.0/24, 'fd00:244:1::/64']}
---
kind: NetworkPolicy
metadata: {name: a-no-ingress, namespace: x}
spec: {podSelector: {matchLabels: {app: a}}}
---
kind: NetworkPolicy
metadata: {name: b-no-egress, namespace: x}
spec: {podSelector: {matchLabels: {app: b}}, policyTypes: [Egress]}
";

/// A pod of namespace x on node-1 with `app: name`, at 10.244.1.`n` and fd00:244:1::`n`.
fn pod(name: &str, n: u8) -> String {
    format!(
        "---\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{app: {name}}}}}\n\
         spec: {{nodeName: node-1}}\nstatus: {{podIPs: [{{ip: 10.244.1.{n}}}, {{ip: 'fd00:244:1::{n}'}}]}}\n"
    )
}

fn model(pods: &[(&str, u8)]) -> Model {
    let text = NODE.to_string() + &pods.iter().map(|(name, n)| pod(name, *n)).collect::<String>();
    parse_manifests(&text).unwrap().into_iter().collect()
}

/// True when root; otherwise the test skips (fails under CI).
fn root() -> bool {
    weft_test_support::root_or_skip(&weft_test_support::this_test(), "network namespaces of its own")
}

/// Runs `argv`, in the calling thread's netns, to success.
fn run(argv: &[&str]) {
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    assert!(out.status.success(), "{argv:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A pod: a network namespace held by a child process, its eth0 the peer of
/// a veth on the node's bridge.
struct PodNs {
    child: Child,
}

impl PodNs {
    fn new(name: &str, n: u8) -> PodNs {
        let child = Command::new("unshare").args(["-n", "sleep", "60"]).stdin(Stdio::null()).spawn().unwrap();
        let ns = |pid: String| std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
        let deadline = Instant::now() + Duration::from_secs(5);
        while ns(child.id().to_string()) == ns("thread-self".into()) {
            assert!(Instant::now() < deadline, "unshare did not take its namespace");
            std::thread::sleep(Duration::from_millis(5));
        }
        let pod = PodNs { child };
        let pid = pod.child.id().to_string();
        let host = format!("veth-{name}");
        run(&["ip", "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &pid]);
        run(&["ip", "link", "set", &host, "master", "br0", "up"]);
        pod.exec(&["ip", "link", "set", "lo", "up"]);
        pod.exec(&["ip", "link", "set", "eth0", "up"]);
        pod.exec(&["ip", "-6", "addr", "add", &format!("fd00:244:1::{n}/64"), "dev", "eth0", "nodad"]);
        pod
    }

    fn exec(&self, argv: &[&str]) {
        let pid = self.child.id().to_string();
        run(&[&["nsenter", "-t", &pid, "-n"][..], argv].concat());
    }

    /// True if an IPv6 echo to fd00:244:1::`n` is answered within a second.
    fn pings(&self, n: u8) -> bool {
        let pid = self.child.id().to_string();
        let to = format!("fd00:244:1::{n}");
        Command::new("nsenter")
            .args(["-t", &pid, "-n", "ping", "-6", "-c1", "-W1", &to])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    }
}

impl Drop for PodNs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn isolated_pods_get_no_ipv6(choice: BackendChoice) {
    run_in_new(|| {
        run(&["ip", "link", "add", "br0", "type", "bridge"]);
        run(&["ip", "link", "set", "br0", "up"]);
        // As the plugin sets it on a node: bridged IPv6 goes through the firewall.
        std::fs::write("/proc/sys/net/bridge/bridge-nf-call-ip6tables", "1").unwrap();
        let (a, b, c, u) = (PodNs::new("a", 2), PodNs::new("b", 3), PodNs::new("c", 4), PodNs::new("u", 9));
        assert!(c.pings(2) && u.pings(4), "before weft applies anything, IPv6 is open");

        let known = model(&[("a", 2), ("b", 3), ("c", 4)]);
        let mut engine = PolicyEngine::new(&known, "node-1", &[], Options::default());
        engine.take_dirty();
        let mut backend = backend::start(choice).unwrap();
        backend.apply(engine.ir(), true).unwrap();
        assert!(!c.pings(2), "a is isolated for ingress");
        assert!(a.pings(4), "a may open connections, and their replies pass");
        assert!(!b.pings(4), "b is isolated for egress");
        assert!(c.pings(3), "b may be reached");
        assert!(!u.pings(4) && !c.pings(9), "no known pod holds u's address");

        // u's pod appears: the change is patched in, and u is a pod like c.
        let now = model(&[("a", 2), ("b", 3), ("c", 4), ("u", 9)]);
        engine.update(&known, &now);
        let dirty = engine.take_dirty();
        assert!(!dirty.v6.is_empty() && !dirty.structural, "{dirty:?}");
        backend.apply_changes(engine.ir(), &dirty).unwrap();
        assert!(u.pings(4) && c.pings(9), "u is known now");
        assert!(!u.pings(2), "and a stays isolated");

        backend.cleanup().unwrap();
        assert!(c.pings(2), "cleanup removes the guard with the rest");
    })
    .expect("a netns of its own");
}

#[test]
fn isolated_pods_get_no_ipv6_on_iptables() {
    if root() {
        isolated_pods_get_no_ipv6(BackendChoice::Iptables);
    }
}

#[test]
fn isolated_pods_get_no_ipv6_on_nftables() {
    if root() {
        isolated_pods_get_no_ipv6(BackendChoice::Nftables);
    }
}
