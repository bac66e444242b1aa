//! The property: whatever sequence of changes the engine is fed, its IR (and
//! its notes) equal a full compile of the model it ends up with. Models and
//! changes are drawn from a seeded generator over a small cluster, so that
//! changes collide: pods move between nodes, addresses are reused, peers
//! grow past the triple limit and shrink to nothing, audit policies come and go.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use super::*;
use crate::model::{
    Action, ClusterNetworkPolicy, CnpPeer, CnpPort, CnpRule, ContainerPort, Namespace, NamespacedPods,
    NetworkPolicy, Node, Peer, PolicyPort, PortRef, Protocol, Rule, Subject, Tier,
};
use crate::policy::compile_with;
use crate::policy::family::Family;
use crate::policy::ir::{FamilyDirty, FamilyIr};
use crate::policy::{Dirty, PolicyIr};

/// xorshift64*: deterministic, no dependency.
pub(crate) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const APPS: [&str; 3] = ["a", "b", "c"];

fn labels(pairs: &[(&str, &str)]) -> crate::model::Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn random_pod(r: &mut Rng, name: &str) -> Pod {
    let ns = *r.pick(&NAMESPACES);
    let node = format!("node-{}", 1 + r.below(2));
    // A small address pool, so addresses are reused and adjacent ones aggregate.
    let ip = r.chance(85).then(|| Ipv4Addr::new(10, 244, 1 + r.below(2) as u8, 1 + r.below(12) as u8));
    let ip6 = r
        .chance(40)
        .then(|| Ipv6Addr::new(0xfd00, 10, 244, 1 + r.below(2) as u16, 0, 0, 0, 1 + r.below(12) as u16));
    let http = if r.chance(50) { 80 } else { 8080 };
    Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: labels(&[("app", *r.pick(&APPS)), ("tier", *r.pick(&["web", "db"]))]),
        node: r.chance(95).then_some(node),
        ip,
        ip6,
        host_network: r.chance(5),
        // Some pods serve no `http`: a named port then resolves on some targets only.
        ports: [
            ContainerPort { name: Some("http".into()), port: http, protocol: Protocol::Tcp },
            ContainerPort { name: Some("dns".into()), port: 53, protocol: Protocol::Udp },
        ]
        .into_iter()
        .skip(usize::from(r.chance(25)))
        .collect(),
    }
}

fn random_peer(r: &mut Rng) -> Peer {
    let app = LabelSelector::of_labels([("app", *r.pick(&APPS))]);
    match r.below(6) {
        0 => Peer::Pods { namespaces: None, pods: app },
        1 => Peer::Pods { namespaces: Some(LabelSelector::default()), pods: app },
        2 => Peer::Pods {
            namespaces: Some(LabelSelector::of_labels([("team", *r.pick(&["t1", "t2"]))])),
            pods: LabelSelector::default(),
        },
        3 => Peer::Pods { namespaces: None, pods: LabelSelector::default() },
        4 => Peer::IpBlock {
            cidr: IpNetwork::V4("10.244.0.0/16".parse().unwrap()),
            except: vec![IpNetwork::V4(Ipv4Network::new(Ipv4Addr::new(10, 244, 1, 0), 28).unwrap())],
        },
        5 if r.chance(50) => Peer::IpBlock { cidr: "fd00::/64".parse().unwrap(), except: Vec::new() },
        // The IPv6 pods' network, minus node-1's.
        _ => Peer::IpBlock {
            cidr: "fd00:a:f4::/48".parse().unwrap(),
            except: vec!["fd00:a:f4:1::/64".parse().unwrap()],
        },
    }
}

fn random_port(r: &mut Rng) -> PolicyPort {
    let (port, end_port) = match r.below(5) {
        0 => (None, None),
        1 => (Some(PortRef::Number(80)), None),
        2 => (Some(PortRef::Number(8000)), Some(8003)),
        3 => (Some(PortRef::Number(9000)), Some(9999)),
        _ => (Some(PortRef::Name(r.pick(&["http", "dns"]).to_string())), None),
    };
    let protocol =
        if matches!(&port, Some(PortRef::Name(n)) if n == "dns") { Protocol::Udp } else { Protocol::Tcp };
    PolicyPort { protocol, port, end_port }
}

fn random_rules(r: &mut Rng) -> Vec<Rule> {
    (0..r.below(3))
        .map(|_| Rule {
            peers: (0..r.below(3)).map(|_| random_peer(r)).collect(),
            ports: (0..r.below(3)).map(|_| random_port(r)).collect(),
        })
        .collect()
}

fn random_policy(r: &mut Rng, name: &str) -> NetworkPolicy {
    NetworkPolicy {
        namespace: r.pick(&NAMESPACES).to_string(),
        name: name.into(),
        pod_selector: if r.chance(30) {
            LabelSelector::default()
        } else {
            LabelSelector::of_labels([("app", *r.pick(&APPS))])
        },
        ingress: r.chance(70).then(|| random_rules(r)),
        egress: r.chance(50).then(|| random_rules(r)),
        audit: r.chance(10),
    }
}

/// A ClusterNetworkPolicy over the same small cluster: subjects and peers
/// by team or app, networks, ports numbered and named, every action.
fn random_cnp(r: &mut Rng, name: &str) -> ClusterNetworkPolicy {
    let team = || LabelSelector::of_labels([("team", "t1")]);
    let app = |r: &mut Rng| LabelSelector::of_labels([("app", *r.pick(&APPS))]);
    let subject = match r.below(3) {
        0 => Subject::Namespaces(team()),
        1 => Subject::Namespaces(LabelSelector::default()),
        _ => Subject::Pods(NamespacedPods { namespaces: LabelSelector::default(), pods: app(r) }),
    };
    let rules = |r: &mut Rng, egress: bool| -> Vec<CnpRule> {
        (0..r.below(4))
            .map(|_| {
                let peer = match r.below(if egress { 5 } else { 3 }) {
                    0 => CnpPeer::Namespaces(team()),
                    1 => CnpPeer::Namespaces(LabelSelector::default()),
                    2 => CnpPeer::Pods(NamespacedPods { namespaces: LabelSelector::default(), pods: app(r) }),
                    3 => CnpPeer::Networks(vec![
                        "10.244.1.0/28".parse().unwrap(),
                        "fd00:a::/32".parse().unwrap(),
                    ]),
                    _ => CnpPeer::Nodes(LabelSelector::default()),
                };
                let ports = match r.below(4) {
                    0 => vec![],
                    1 => vec![CnpPort::Ports { protocol: Protocol::Tcp, start: 80, end: 80 }],
                    2 => vec![CnpPort::Ports { protocol: Protocol::Tcp, start: 1, end: 8080 }],
                    _ if matches!(peer, CnpPeer::Networks(_) | CnpPeer::Nodes(_)) => vec![],
                    _ => vec![CnpPort::Named("http".into())],
                };
                let action = *r.pick(&[Action::Accept, Action::Deny, Action::Pass]);
                CnpRule { name: None, action, peers: vec![peer], ports }
            })
            .collect()
    };
    ClusterNetworkPolicy {
        name: name.into(),
        generation: None,
        tier: *r.pick(&[Tier::Admin, Tier::Baseline]),
        priority: r.below(3) as u16,
        subject,
        ingress: rules(r, false),
        egress: rules(r, true),
    }
}

fn node(name: &str, third: u8) -> Node {
    Node {
        name: name.into(),
        labels: Default::default(),
        pod_cidr: Some(Ipv4Network::new(Ipv4Addr::new(10, 244, third, 0), 24).unwrap()),
        pod_cidr6: Some(
            Ipv6Network::new(Ipv6Addr::new(0xfd00, 10, 244, third.into(), 0, 0, 0, 0), 64).unwrap(),
        ),
        internal_ip: None,
        addresses: vec![],
        internal_ip6: None,
    }
}

pub(crate) fn random_model(r: &mut Rng) -> Model {
    let mut m = Model::default();
    for (n, third) in [("node-1", 1), ("node-2", 2)] {
        m.nodes.insert(n.into(), node(n, third));
    }
    for ns in NAMESPACES {
        let team = if r.chance(50) { "t1" } else { "t2" };
        m.namespaces.insert(ns.into(), Namespace { name: ns.into(), labels: labels(&[("team", team)]) });
    }
    for i in 0..r.below(10) {
        let p = random_pod(r, &format!("p{i}"));
        m.pods.insert(p.key(), p.into());
    }
    for i in 0..r.below(5) {
        let p = random_policy(r, &format!("n{i}"));
        Arc::make_mut(&mut m.policies).insert(p.key(), p.into());
    }
    for i in 0..r.below(3) {
        let p = random_cnp(r, &format!("c{i}"));
        m.cluster_policies.insert(p.name.clone(), p);
    }
    m
}

/// One random change: a pod, policy or cluster policy added, changed or
/// removed, a namespace relabelled, node-1's pod CIDRs changed or gone.
pub(crate) fn mutate(r: &mut Rng, m: &mut Model) {
    match r.below(11) {
        0..=3 => {
            let name = format!("p{}", r.below(12));
            let key = m.pods.keys().find(|k| k.ends_with(&format!("/{name}"))).cloned();
            match (key, r.below(4)) {
                (Some(k), 0) => {
                    m.pods.remove(&k);
                }
                (Some(k), 1) => {
                    let p = std::sync::Arc::make_mut(m.pods.get_mut(&k).unwrap());
                    p.labels.insert("app".into(), r.pick(&APPS).to_string());
                }
                (Some(k), 2) => {
                    let p = std::sync::Arc::make_mut(m.pods.get_mut(&k).unwrap());
                    p.ip = r
                        .chance(80)
                        .then(|| Ipv4Addr::new(10, 244, 1 + r.below(2) as u8, 1 + r.below(12) as u8));
                    p.node = Some(format!("node-{}", 1 + r.below(2)));
                }
                (k, _) => {
                    if let Some(k) = k {
                        m.pods.remove(&k);
                    }
                    let p = random_pod(r, &name);
                    m.pods.insert(p.key(), p.into());
                }
            }
        }
        4..=6 => {
            let name = format!("n{}", r.below(6));
            let key = m.policies.keys().find(|k| k.ends_with(&format!("/{name}"))).cloned();
            if let Some(k) = &key {
                Arc::make_mut(&mut m.policies).remove(k);
            }
            if key.is_none() || r.chance(60) {
                let p = random_policy(r, &name);
                Arc::make_mut(&mut m.policies).insert(p.key(), p.into());
            }
        }
        10 => {
            let name = format!("c{}", r.below(4));
            if m.cluster_policies.remove(&name).is_none() || r.chance(60) {
                m.cluster_policies.insert(name.clone(), random_cnp(r, &name));
            }
        }
        7 | 8 => {
            let ns = m.namespaces.get_mut(*r.pick(&NAMESPACES)).unwrap();
            let team = if r.chance(50) { "t1" } else { "t2" };
            ns.labels.insert("team".into(), team.into());
        }
        _ => {
            let third = *r.pick(&[1u8, 3]);
            let mut n = node("node-1", third);
            // Now and then without a pod network of one family or both
            // (policies without a target here are then not kept).
            match r.below(6) {
                0 => n.pod_cidr = None,
                1 => n.pod_cidr6 = None,
                2 => (n.pod_cidr, n.pod_cidr6) = (None, None),
                _ => {}
            }
            m.nodes.insert("node-1".into(), n);
        }
    }
}

pub(crate) fn cluster() -> Vec<IpNetwork> {
    ["10.244.0.0/16", "fd00:a::/32"].iter().filter_map(|c| c.parse().ok()).collect()
}

#[test]
fn any_sequence_of_updates_gives_what_a_full_compile_gives() {
    let mut steps = 0;
    for seed in 0..300u64 {
        let mut r = Rng::new(seed);
        let options = Options { triple_peers: r.below(3) };
        let mut model = random_model(&mut r);
        let mut engine = PolicyEngine::new(&model, "node-1", &cluster(), options);
        for step in 0..25 {
            let mut next = model.clone();
            for _ in 0..1 + r.below(3) {
                mutate(&mut r, &mut next);
            }
            engine.update(&model, &next);
            let (want, notes) = compile_with(&next, "node-1", &cluster(), options);
            assert_eq!(engine.ir(), &want, "seed {seed} step {step}");
            assert_eq!(engine.notes(), notes, "seed {seed} step {step}");
            let fresh = PolicyEngine::new(&next, "node-1", &cluster(), options);
            same_parts(&engine.v4, &fresh.v4, &format!("seed {seed} step {step} IPv4"));
            same_parts(&engine.v6, &fresh.v6, &format!("seed {seed} step {step} IPv6"));
            model = next;
            steps += 1;
        }
    }
    assert_eq!(steps, 300 * 25);
}

/// Each policy's kept contribution holds what a compile from scratch gives
/// it (targets added or taken one by one included), in any order; its uses
/// may name more peers (a target that went keeps its uses).
fn same_parts<A: Family>(got: &FamilyEngine<A>, want: &FamilyEngine<A>, ctx: &str) {
    fn sorted<T: Ord + Clone>(v: &[T]) -> Vec<T> {
        let mut v = v.to_vec();
        v.sort();
        v
    }
    let keys = |e: &FamilyEngine<A>| e.parts.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(got), keys(want), "{ctx}: policies kept");
    // The counted union too (what holds each element, and each group's peers).
    let views = |e: &FamilyEngine<A>| format!("{:?}", e.views);
    assert_eq!(views(got), views(want), "{ctx}: counted views");
    let with_pods =
        got.peers.defs.iter().filter(|(_, e)| e.def.iter().any(|(_, p)| matches!(p, Peer::Pods { .. })));
    assert_eq!(got.peers.indexed(), with_pods.map(|(k, _)| *k).collect(), "{ctx}: the peers' index");
    let noted = got.parts.iter().filter(|(_, c)| !c.notes.is_empty()).map(|(k, _)| k.clone());
    assert_eq!(got.noted, noted.collect(), "{ctx}: the policies with notes");
    let unused: Vec<_> = got.peers.defs.iter().filter(|(_, e)| e.users.is_empty()).map(|(k, _)| *k).collect();
    assert!(unused.is_empty(), "{ctx}: definitions no policy uses are kept: {unused:x?}");
    for (key, g) in &got.parts {
        let w = &want.parts[key];
        for (gp, wp) in [(&g.ingress, &w.ingress), (&g.egress, &w.egress)] {
            assert_eq!(sorted(&gp.isolated), sorted(&wp.isolated), "{ctx}: {key} isolated");
            assert_eq!(sorted(&gp.triples), sorted(&wp.triples), "{ctx}: {key} triples");
            assert_eq!(sorted(&gp.port_groups), sorted(&wp.port_groups), "{ctx}: {key} port groups");
            assert_eq!(sorted(&gp.groups), sorted(&wp.groups), "{ctx}: {key} groups");
            assert_eq!(gp.nets, wp.nets, "{ctx}: {key} peers of groups");
        }
        assert_eq!(g.rule_keys, w.rule_keys, "{ctx}: {key} rule keys");
        assert!(w.uses.keys().all(|k| g.uses.contains_key(k)), "{ctx}: {key} uses");
        for k in g.uses.keys() {
            assert!(
                got.peers.defs.get(k).is_some_and(|e| e.users.contains(key)),
                "{ctx}: {key} a user of {k:x}"
            );
        }
    }
}

/// A policy's targets come and go one at a time (added to and taken from
/// its contribution): what it keeps stays what a compile from scratch
/// gives, also when the target that goes was the only one serving a named
/// port (its port group's peers leave with it).
#[test]
fn targets_coming_and_going_leave_what_a_compile_gives() {
    let pod = |name: &str, host: u8, app: &str, http: bool| {
        let mut p = Pod {
            namespace: "x".into(),
            name: name.into(),
            labels: labels(&[("app", app)]),
            node: Some("node-1".into()),
            ip: Some(Ipv4Addr::new(10, 244, 1, host)),
            ip6: None,
            host_network: false,
            ports: vec![ContainerPort { name: Some("http".into()), port: 80, protocol: Protocol::Tcp }],
        };
        if !http {
            p.ports.clear();
        }
        Arc::new(p)
    };
    let mut model = Model::default();
    model.nodes.insert("node-1".into(), node("node-1", 1));
    model.namespaces.insert("x".into(), Namespace { name: "x".into(), labels: labels(&[]) });
    let every_pod = Peer::Pods { namespaces: None, pods: LabelSelector::default() };
    let named =
        PolicyPort { protocol: Protocol::Tcp, port: Some(PortRef::Name("http".into())), end_port: None };
    let policy = NetworkPolicy {
        namespace: "x".into(),
        name: "web".into(),
        pod_selector: LabelSelector::of_labels([("app", "web")]),
        ingress: Some(vec![Rule { peers: vec![every_pod.clone()], ports: vec![named] }]),
        egress: Some(vec![Rule { peers: vec![every_pod], ports: vec![] }]),
        audit: false,
    };
    Arc::make_mut(&mut model.policies).insert(policy.key(), policy.into());
    for (name, host, app, http) in
        [("web-1", 2, "web", true), ("web-2", 3, "web", false), ("c", 9, "client", true)]
    {
        model.pods.insert(format!("x/{name}"), pod(name, host, app, http));
    }
    // Peers past the triple limit: the named port is a port group.
    let options = Options { triple_peers: 0 };
    let mut engine = PolicyEngine::new(&model, "node-1", &cluster(), options);
    let steps: [(&str, Option<Arc<Pod>>); 5] = [
        ("x/web-3", Some(pod("web-3", 4, "web", false))),
        ("x/web-1", None),
        ("x/web-4", Some(pod("web-4", 5, "web", true))),
        ("x/web-2", Some(pod("web-2", 3, "client", false))),
        ("x/web-3", None),
    ];
    for (step, (key, version)) in steps.into_iter().enumerate() {
        let mut next = model.clone();
        match version {
            Some(p) => next.pods.insert(key.into(), p),
            None => next.pods.remove(key),
        };
        engine.update(&model, &next);
        let fresh = PolicyEngine::new(&next, "node-1", &cluster(), options);
        assert_eq!(engine.ir(), fresh.ir(), "step {step}: {key}");
        same_parts(&engine.v4, &fresh.v4, &format!("step {step}: {key}"));
        model = next;
    }
    let c = &engine.v4.parts["x/web"];
    assert_eq!(c.ingress.isolated.len(), 1, "web-4 is the policy's last target: {c:?}");
    assert_eq!(c.ingress.port_groups.len(), 1, "web-4 serves http: {c:?}");
}

#[test]
fn a_policy_without_a_target_here_is_kept_by_its_rules_in_the_nodes_families() {
    let pod = |name: &str, node: &str, host: u8| {
        let labels = labels(&[("app", "web")]);
        let third = if node == "node-1" { 1 } else { 2 };
        let ip = Some(Ipv4Addr::new(10, 244, third, host));
        let node = Some(node.into());
        let (namespace, name) = ("x".into(), name.into());
        Arc::new(Pod { namespace, name, labels, node, ip, ip6: None, host_network: false, ports: vec![] })
    };
    let mut model = random_model(&mut Rng::new(1));
    model.pods.clear();
    Arc::make_mut(&mut model.policies).clear();
    model.cluster_policies.clear();
    let mut v4_only = node("node-1", 1);
    v4_only.pod_cidr6 = None;
    model.nodes.insert("node-1".into(), v4_only);
    let clients = Peer::Pods { namespaces: None, pods: LabelSelector::of_labels([("app", "client")]) };
    let policy = NetworkPolicy {
        namespace: "x".into(),
        name: "web".into(),
        pod_selector: LabelSelector::of_labels([("app", "web")]),
        ingress: Some(vec![Rule { peers: vec![clients], ports: vec![] }]),
        egress: None,
        audit: false,
    };
    Arc::make_mut(&mut model.policies).insert(policy.key(), policy.into());
    model.pods.insert("x/remote".into(), pod("remote", "node-2", 2));
    let mut engine = PolicyEngine::new(&model, "node-1", &cluster(), Options::default());
    // Its target is on node-2: nothing in the IR, its peers resolved and used.
    let kept = |e: &PolicyEngine| {
        let c = e.v4.parts.get("x/web").expect("kept by its rules");
        let users = c.rule_keys.iter().map(|k| e.v4.peers.defs.get(k).map(|d| d.users.contains("x/web")));
        (c.has_targets(), users.collect::<Vec<_>>())
    };
    assert_eq!(kept(&engine), (false, vec![Some(true)]));
    assert!(engine.ir().v4.ingress.isolated.is_empty());
    // The IPv6 engine of a node without an IPv6 pod network keeps nothing.
    assert!(engine.v6.parts.is_empty(), "{:?}", engine.v6.parts.keys());
    // Its first target here comes as any other, and its last one goes.
    for (step, local) in [Some(pod("local", "node-1", 7)), None].into_iter().enumerate() {
        let mut next = model.clone();
        match local {
            Some(p) => next.pods.insert("x/local".into(), p),
            None => next.pods.remove("x/local"),
        };
        engine.update(&model, &next);
        let fresh = PolicyEngine::new(&next, "node-1", &cluster(), Options::default());
        assert_eq!(engine.ir(), fresh.ir(), "step {step}");
        same_parts(&engine.v4, &fresh.v4, &format!("step {step}"));
        assert_eq!(kept(&engine), (step == 0, vec![Some(true)]), "step {step}");
        model = next;
    }
    assert_eq!(engine.ir().v4.ingress.isolated.len(), 0);
}

#[test]
fn dirty_names_every_element_that_changed() {
    let mut v6_changes = 0;
    for seed in 0..200u64 {
        let mut r = Rng::new(seed);
        let options = Options { triple_peers: 1 };
        let mut model = random_model(&mut r);
        let mut engine = PolicyEngine::new(&model, "node-1", &cluster(), options);
        engine.take_dirty();
        for step in 0..20 {
            let before = engine.ir().clone();
            let mut next = model.clone();
            mutate(&mut r, &mut next);
            engine.update(&model, &next);
            let d = engine.take_dirty();
            let after = engine.ir();
            let ctx = format!("seed {seed} step {step}");
            if !d.structural {
                dirty_covers(&before.v4, &after.v4, &d.v4, &ctx);
                dirty_covers(&before.v6, &after.v6, &d.v6, &ctx);
            }
            // Changes to IPv6 allow rules, not only to who is isolated.
            let rules =
                |d: &Direction<Ipv6Addr>| (d.triples.clone(), d.groups.clone(), d.port_groups.clone());
            let (b6, a6) = (&before.v6, &after.v6);
            v6_changes += usize::from(
                rules(&b6.ingress) != rules(&a6.ingress) || rules(&b6.egress) != rules(&a6.egress),
            );
            model = next;
        }
    }
    assert!(v6_changes > 100, "only {v6_changes} changes touched IPv6 rules");
}

/// Asserts that `d` names every element that differs between `b` and `a`.
fn dirty_covers<A: Family>(b: &FamilyIr<A>, a: &FamilyIr<A>, d: &FamilyDirty<A>, ctx: &str) {
    let sym =
        |x: &BTreeSet<A>, y: &BTreeSet<A>| -> BTreeSet<A> { x.symmetric_difference(y).copied().collect() };
    assert!(sym(&b.local, &a.local).is_subset(&d.local), "{ctx}");
    assert!(
        !b.cluster.regions_differ(&a.cluster) || d.cluster,
        "{ctx}: ClusterNetworkPolicy's regions changed unnoticed"
    );
    assert!(sym(&b.cluster.known, &a.cluster.known).is_subset(&d.known), "{ctx}: known pods");
    for (b, a, dd) in [(&b.ingress, &a.ingress, &d.ingress), (&b.egress, &a.egress, &d.egress)] {
        assert!(sym(&b.isolated, &a.isolated).is_subset(&dd.isolated), "{ctx}");
        let pods: BTreeSet<A> = b.triples.symmetric_difference(&a.triples).map(|t| t.0).collect();
        assert!(pods.is_subset(&dd.triples), "{ctx}");
        // Without a structural change the groups are the same ones.
        assert_eq!(b.groups.len(), a.groups.len(), "{ctx}");
        for (gb, ga) in b.groups.iter().zip(&a.groups) {
            if gb.targets != ga.targets {
                assert!(dd.groups.contains(&(ga.key, ga.ports)), "{ctx}");
            }
            if gb.peers != ga.peers {
                assert!(dd.peers.contains(&ga.key), "{ctx}");
            }
        }
        for (gb, ga) in b.port_groups.iter().zip(&a.port_groups) {
            for t in gb.targets.symmetric_difference(&ga.targets) {
                assert!(dd.port_groups.contains(&(ga.key, t.0)), "{ctx}");
            }
            if gb.peers != ga.peers {
                assert!(dd.peers.contains(&ga.key), "{ctx}");
            }
        }
    }
}

/// Feeds `seeds` x `steps` random changes to an engine and hands each
/// resulting IR and its Dirty record to `on_change` (with a label for
/// messages); the first IR comes with a structural Dirty. The backends'
/// patch tests are built on it.
pub(crate) fn each_change(seeds: u64, steps: usize, mut on_change: impl FnMut(&PolicyIr, &Dirty, &str)) {
    for seed in 0..seeds {
        let mut r = Rng::new(seed);
        let mut model = random_model(&mut r);
        let mut engine =
            PolicyEngine::new(&model, "node-1", &cluster(), Options { triple_peers: r.below(3) });
        let dirty = engine.take_dirty();
        on_change(engine.ir(), &dirty, &format!("seed {seed} start"));
        for step in 0..steps {
            let mut next = model.clone();
            mutate(&mut r, &mut next);
            engine.update(&model, &next);
            let dirty = engine.take_dirty();
            on_change(engine.ir(), &dirty, &format!("seed {seed} step {step}"));
            model = next;
        }
    }
}
