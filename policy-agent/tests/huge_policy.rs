//! One huge valid policy (10,000 ports, 7 targets, 5 peer networks: 350,000
//! (pod, port, peer) triples if compiled naively) costs what its (pod, port)
//! targets cost, on both backends: it reaches the kernel as one port group,
//! a resync with no drift writes nothing, and removing it leaves nothing.
//! Root; each backend in a network namespace of its own. The times are
//! printed; the bound asserted is loose (the naive form took 114 s on
//! nftables and 10.9 s on iptables), so a noisy machine cannot fail it.

use std::time::{Duration, Instant};

use weft_agent::backend::PolicyBackend;
use weft_agent::iptables::Iptables;
use weft_agent::model::{parse_manifests, Model};
use weft_agent::nft::kernel::read_back;
use weft_agent::nft::Nft;
use weft_agent::policy::{compile, PolicyIr};
use weft_netkit::netns::run_in_new;

const PORTS: u32 = 10_000;
/// Far above what a port group costs, far below the naive triples.
const LOOSE_BOUND: Duration = Duration::from_secs(10);

/// True when root; otherwise the test skips (fails under CI).
fn root() -> bool {
    weft_test_support::root_or_skip(&weft_test_support::this_test(), "a network namespace of its own")
}

/// Node-1 with 7 pods a policy with 10,000 ports selects, from 5 peer networks.
fn model(with_policy: bool) -> Model {
    let mut text = String::from("kind: Node\nmetadata: {name: node-1}\nspec: {podCIDR: 10.244.1.0/24}\n");
    text += "---\nkind: Namespace\nmetadata: {name: x}\n";
    for i in 0..7 {
        text += &format!(
            "---\nkind: Pod\nmetadata: {{name: p{i}, namespace: x, labels: {{app: big}}}}\n\
             spec: {{nodeName: node-1}}\nstatus: {{podIP: 10.244.1.{}}}\n",
            10 + 2 * i
        );
    }
    if with_policy {
        let ports: Vec<String> = (0..PORTS).map(|p| format!("{{port: {}}}", 1024 + 3 * p)).collect();
        let peers: Vec<String> =
            (0..5).map(|n| format!("{{ipBlock: {{cidr: 172.{}.0.0/16}}}}", 16 + 2 * n)).collect();
        text += &format!(
            "---\nkind: NetworkPolicy\nmetadata: {{name: huge, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{app: big}}}}\n  \
             ingress:\n  - from: [{}]\n    ports: [{}]\n",
            peers.join(", "),
            ports.join(", ")
        );
    }
    parse_manifests(&text).expect("the manifests parse").into_iter().collect()
}

fn ir(with_policy: bool) -> PolicyIr {
    compile(&model(with_policy), "node-1", &["10.244.0.0/16".parse().unwrap()]).0
}

/// Set elements weft holds in this netns's kernel, as `ipset save` or the
/// nftables table lists them.
fn kernel_elements(backend: &str) -> usize {
    if backend == "nftables" {
        return read_back().expect("weft's table reads back").values().map(|s| s.len()).sum();
    }
    let out = std::process::Command::new("ipset").arg("save").output().expect("ipset save");
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("add weft-")).count()
}

fn check(backend: &mut dyn PolicyBackend) {
    let huge = ir(true);
    assert!(huge.v4.ingress.triples.is_empty(), "no triples: {}", huge.v4.ingress.triples.len());
    assert_eq!(huge.v4.ingress.port_groups.len(), 1);
    assert_eq!(huge.v4.ingress.port_groups[0].targets.len(), 7 * PORTS as usize);
    let t0 = Instant::now();
    let applied = backend.apply(&huge, true).expect("the huge policy applies");
    let first = t0.elapsed();
    assert!(applied.counts.elements >= 7 * PORTS as usize, "{:?}", applied.counts);
    assert_eq!(kernel_elements(backend.name()), applied.counts.elements, "the kernel holds them");
    let t1 = Instant::now();
    let resync = backend.apply(&huge, true).expect("a resync");
    let again = t1.elapsed();
    assert_eq!(resync.change, None, "a resync with no drift reports no change");
    assert_eq!(kernel_elements(backend.name()), applied.counts.elements, "and the kernel holds the same");
    eprintln!(
        "{}: 10,000-port policy applied in {first:?} ({} elements), resync without drift {again:?}",
        backend.name(),
        applied.counts.elements
    );
    assert!(first < LOOSE_BOUND && again < LOOSE_BOUND, "{first:?} / {again:?}");
    // Drift behind weft's back (the local pods' set emptied): a resync finds and repairs it.
    let flush: &[&str] = if backend.name() == "nftables" {
        &["nft", "flush", "set", "inet", "weft", "local"]
    } else {
        &["ipset", "flush", "weft-local"]
    };
    assert!(std::process::Command::new(flush[0]).args(&flush[1..]).status().unwrap().success());
    assert_eq!(kernel_elements(backend.name()), applied.counts.elements - 7, "the drift is in the kernel");
    let repaired = backend.apply(&huge, true).expect("a resync");
    assert!(repaired.change.is_some(), "a resync that repaired drift says so");
    assert_eq!(kernel_elements(backend.name()), applied.counts.elements, "the kernel holds them again");
    // The policy goes: its elements go with it.
    let gone = backend.apply(&ir(false), false).expect("the policy removed");
    assert!(gone.counts.elements < 100, "{:?}", gone.counts);
    assert_eq!(kernel_elements(backend.name()), gone.counts.elements, "its elements left the kernel");
    backend.cleanup().expect("cleanup");
}

#[test]
fn a_10000_port_policy_is_a_port_group_on_iptables() {
    if root() {
        run_in_new(|| check(&mut Iptables::new())).expect("a netns of its own");
    }
}

#[test]
fn a_10000_port_policy_is_a_port_group_on_nftables() {
    if root() {
        run_in_new(|| check(&mut Nft::new())).expect("a netns of its own");
    }
}
