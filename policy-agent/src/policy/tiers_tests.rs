//! The tier walk, table-driven: a small cluster, policies as manifests, and
//! for each connection the verdict of each direction and the deciding rule.

use std::net::Ipv4Addr;

use super::*;
use crate::model::manifest::labels;
use crate::model::{parse_manifests, ContainerPort, Namespace, Node, Object};
use crate::policy::evaluate::decide;

/// Namespaces x and y (labelled ns=<name>); pods x/a, x/b, y/a (pod=<name>,
/// serving "web" on 80/TCP), y/h on the host network; node-1 (role=infra)
/// at 172.31.0.11.
fn cluster(manifests: &str) -> Model {
    let mut m = Model::default();
    for ns in ["x", "y"] {
        let labels = labels([("ns", ns), ("kubernetes.io/metadata.name", ns)]);
        m.namespaces.insert(ns.into(), Namespace { name: ns.into(), labels });
    }
    for (i, key) in ["x/a", "x/b", "y/a", "y/h"].into_iter().enumerate() {
        let (ns, name) = key.split_once('/').unwrap();
        let pod = Pod {
            namespace: ns.into(),
            name: name.into(),
            labels: labels([("pod", name)]),
            node: Some("node-1".into()),
            ip: Some(if name == "h" {
                Ipv4Addr::new(172, 31, 0, 11)
            } else {
                Ipv4Addr::new(10, 244, 1, 2 + i as u8)
            }),
            ip6: None,
            host_network: name == "h",
            ports: vec![ContainerPort { name: Some("web".into()), port: 80, protocol: Protocol::Tcp }],
        };
        m.pods.insert(key.into(), pod.into());
    }
    let node = Node {
        name: "node-1".into(),
        labels: labels([("role", "infra")]),
        pod_cidr: Some("10.244.1.0/24".parse().unwrap()),
        pod_cidr6: None,
        internal_ip: Some(Ipv4Addr::new(172, 31, 0, 11)),
        internal_ip6: None,
        addresses: vec!["172.31.0.11".parse().unwrap()],
    };
    m.nodes.insert(node.name.clone(), node);
    for o in parse_manifests(manifests).unwrap_or_else(|e| panic!("{e}\n{manifests}")) {
        assert!(matches!(o, Object::ClusterNetworkPolicy(_) | Object::NetworkPolicy(_)), "{o:?}");
        assert!(m.insert(o));
    }
    assert_compiled_agrees(&m);
    m
}

/// Every test's cluster also checks the kernel's view: for each local pod
/// as subject, in each tier and direction, the region `policy::cluster`
/// compiled holds the action the walk on the model finds.
fn assert_compiled_agrees(m: &Model) {
    let ir = crate::policy::cluster::compile::<Ipv4Addr>(m, "node-1");
    let others: Vec<Party> = m
        .pods
        .values()
        .map(|p| Party::Pod(p))
        .chain(["172.31.0.11", "8.8.8.8", "10.244.1.200"].map(|a| Party::Addr(a.parse().unwrap())))
        .collect();
    for me in m.pods.values().filter(|p| !p.host_network) {
        let mine = me.ip.unwrap();
        for other in &others {
            let Some(std::net::IpAddr::V4(peer)) = other.ip() else { continue };
            if peer == mine {
                continue;
            }
            for (way, ingress) in [(Way::Ingress, true), (Way::Egress, false)] {
                for proto in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
                    for port in [1, 53, 79, 80, 81, 443, 8080, 65535] {
                        let c = Conn { model: m, way, me, other: *other, proto, port, via_service: false };
                        for tier in [Tier::Admin, Tier::Baseline] {
                            assert_eq!(
                                ir.decide(tier, ingress, mine, peer, Some(proto), port),
                                tier_action(&c, tier),
                                "{tier} {way:?} of {} with {other:?} on {proto:?}/{port}",
                                me.key()
                            );
                        }
                    }
                }
            }
        }
    }
}

fn cnp(name: &str, tier: &str, prio: u16, subject: &str, dir: &str, rules: &str) -> String {
    format!(
        "---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\n\
         spec:\n  tier: {tier}\n  priority: {prio}\n  subject: {subject}\n  {dir}:\n{rules}\n"
    )
}

/// NetworkPolicy `name` in `ns` isolating every pod for ingress, admitting `from`.
fn np_ingress(ns: &str, name: &str, from: &str) -> String {
    format!(
        "---\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  podSelector: {{}}\n  \
         ingress: [{{from: [{from}]}}]\n"
    )
}

const ALL: &str = "{namespaces: {}}";

fn party<'m>(m: &'m Model, s: &str) -> Party<'m> {
    match s.parse::<Ipv4Addr>() {
        Ok(ip) => Party::Addr(ip.into()),
        Err(_) => Party::Pod(&m.pods[s]),
    }
}

/// (egress allows, ingress allows) of src -> dst:port/TCP; None for a side that is not a pod.
fn verdicts(m: &Model, src: &str, dst: &str, port: u16) -> (Option<bool>, Option<bool>) {
    let (e, i) = decide(m, party(m, src), party(m, dst), Protocol::Tcp, port);
    (e.map(|d| d.allows()), i.map(|d| d.allows()))
}

fn ingress_of(m: &Model, src: &str, dst: &str) -> Decision {
    decide(m, party(m, src), party(m, dst), Protocol::Tcp, 80).1.expect("dst is a pod")
}

#[test]
fn admin_decides_before_network_policy_and_baseline_after() {
    let np = np_ingress(
        "y",
        "only-x-b",
        "{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: b}}}",
    );
    let deny_from_x_b = cnp("deny-x-b", "Admin", 1, ALL, "ingress", "    - {name: no-b, action: Deny, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {pod: b}}}}]}");
    let accept_x_a = cnp("accept-x-a", "Admin", 2, ALL, "ingress", "    - {action: Accept, from: [{pods: {namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}}]}");
    let base_deny =
        cnp("base", "Baseline", 1, ALL, "ingress", "    - {action: Deny, from: [{namespaces: {}}]}");
    let m = cluster(&[np.as_str(), &deny_from_x_b, &accept_x_a, &base_deny].concat());
    // Admin Deny beats the NetworkPolicy's allow; Admin Accept beats its isolation.
    assert_eq!(verdicts(&m, "x/b", "y/a", 80).1, Some(false));
    assert_eq!(verdicts(&m, "x/a", "y/a", 80).1, Some(true));
    let d = ingress_of(&m, "x/b", "y/a");
    assert_eq!(d.cluster_verdict.as_ref().map(|v| v.rule.as_str()), Some("cnp/deny-x-b/no-b"));
    assert_eq!(d.walk_line(), "Admin Deny by cnp/deny-x-b/no-b");
    // y/a is isolated by the NetworkPolicy: Baseline is never reached for it ...
    let d = ingress_of(&m, "y/a", "y/a");
    assert!(d.cluster_verdict.is_none(), "own address: {d:?}");
    // ... but x/b (no NetworkPolicy in x) meets the Baseline Deny.
    assert_eq!(verdicts(&m, "y/a", "x/b", 80), (Some(true), Some(false)));
    assert_eq!(
        ingress_of(&m, "y/a", "x/b").walk_line(),
        "Admin: no rule matches -> NetworkPolicy: not isolated -> Baseline Deny by cnp/base/0"
    );
}

#[test]
fn pass_skips_the_rest_of_its_tier_only() {
    let pass = cnp(
        "pass",
        "Admin",
        1,
        ALL,
        "ingress",
        "    - {action: Pass, from: [{namespaces: {matchLabels: {ns: x}}}]}",
    );
    let deny = cnp("deny", "Admin", 2, ALL, "ingress", "    - {action: Deny, from: [{namespaces: {}}]}");
    let base_accept =
        cnp("base", "Baseline", 1, ALL, "ingress", "    - {action: Accept, from: [{namespaces: {}}]}");
    let np = np_ingress("y", "none", "{podSelector: {matchLabels: {pod: nothing}}}");
    let m = cluster(&[pass.as_str(), &deny, &base_accept, &np].concat());
    // x -> y: Admin Pass, then the NetworkPolicy denies.
    assert_eq!(
        ingress_of(&m, "x/a", "y/a").walk_line(),
        "Admin Pass by cnp/pass/0 -> NetworkPolicy denied by y/none"
    );
    assert_eq!(verdicts(&m, "x/a", "y/a", 80).1, Some(false));
    // x -> x/b: Admin Pass, not isolated, Baseline Accept.
    assert_eq!(verdicts(&m, "x/a", "x/b", 80).1, Some(true));
    // y -> x/a: the Pass does not match, the lower Admin Deny does.
    assert_eq!(ingress_of(&m, "y/a", "x/a").cluster_verdict.unwrap().rule, "cnp/deny/0");
}

#[test]
fn priority_then_rule_order() {
    let low = cnp("z-first", "Admin", 5, ALL, "ingress", "    - {action: Accept, from: [{namespaces: {}}]}");
    let high = cnp("a-second", "Admin", 6, ALL, "ingress", "    - {action: Deny, from: [{namespaces: {}}]}");
    let m = cluster(&[low.as_str(), &high].concat());
    assert_eq!(ingress_of(&m, "x/a", "y/a").cluster_verdict.unwrap().rule, "cnp/z-first/0");
    let ordered = cnp("ordered", "Admin", 1, ALL, "ingress", "    - {action: Deny, from: [{namespaces: {matchLabels: {ns: y}}}]}\n    - {action: Accept, from: [{namespaces: {}}]}\n    - {action: Deny, from: [{namespaces: {}}]}");
    let m = cluster(&ordered);
    assert_eq!(verdicts(&m, "y/a", "x/a", 80).1, Some(false));
    assert_eq!(ingress_of(&m, "x/b", "x/a").cluster_verdict.unwrap().rule, "cnp/ordered/1");
}

#[test]
fn egress_accept_leaves_ingress_to_the_destination() {
    let accept = cnp("out", "Admin", 1, ALL, "egress", "    - {action: Accept, to: [{namespaces: {}}]}");
    let deny_in = cnp(
        "in",
        "Admin",
        2,
        ALL,
        "ingress",
        "    - {action: Deny, from: [{namespaces: {matchLabels: {ns: x}}}]}",
    );
    let m = cluster(&[accept.as_str(), &deny_in].concat());
    assert_eq!(verdicts(&m, "x/a", "y/a", 80), (Some(true), Some(false)));
    assert_eq!(verdicts(&m, "y/a", "x/a", 80), (Some(true), Some(true)));
}

#[test]
fn host_network_pods_are_neither_subjects_nor_pod_peers_and_own_address_is_exempt() {
    let deny = cnp("deny", "Admin", 1, ALL, "ingress", "    - {action: Deny, from: [{namespaces: {}}]}");
    let deny_out = cnp("deny-out", "Admin", 1, ALL, "egress", "    - {action: Deny, to: [{namespaces: {}}]}");
    let m = cluster(&[deny.as_str(), &deny_out].concat());
    // y/h is no subject (no decision) and no `namespaces` peer (the ingress of x/a is not denied).
    assert_eq!(verdicts(&m, "y/h", "x/a", 80), (None, Some(true)));
    assert_eq!(verdicts(&m, "x/a", "y/h", 80), (Some(true), None));
    assert_eq!(verdicts(&m, "x/a", "x/b", 80), (Some(false), Some(false)));
    assert_eq!(verdicts(&m, "x/a", "10.244.1.2", 80).0, Some(true), "x/a's own address");
}

#[test]
fn networks_match_pods_and_nodes_match_node_addresses() {
    let nets = cnp("nets", "Admin", 1, ALL, "egress", "    - {action: Deny, to: [{networks: [10.244.1.4/32]}]}\n    - {action: Deny, to: [{nodes: {matchLabels: {role: infra}}}]}");
    let m = cluster(&nets);
    assert_eq!(verdicts(&m, "x/a", "y/a", 80).0, Some(false), "y/a is 10.244.1.4");
    assert_eq!(verdicts(&m, "x/a", "x/b", 80).0, Some(true));
    assert_eq!(verdicts(&m, "x/a", "172.31.0.11", 80).0, Some(false), "node-1's address");
    assert_eq!(verdicts(&m, "x/a", "172.31.0.12", 80).0, Some(true));
    let other_role = nets.replace("role: infra", "role: edge");
    assert_eq!(verdicts(&cluster(&other_role), "x/a", "172.31.0.11", 80).0, Some(true));
}

#[test]
fn ports_ranges_and_named_ports() {
    let r = cnp("ports", "Admin", 1, ALL, "ingress", "    - {action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {range: {start: 81, end: 90}}}}, {destinationNamedPort: web}]}");
    let m = cluster(&r);
    for (port, allowed) in [(79, true), (80, false), (81, false), (90, false), (91, true)] {
        assert_eq!(verdicts(&m, "x/a", "x/b", port).1, Some(allowed), "port {port}");
    }
    // UDP 80 is not the named TCP port.
    let (_, i) = decide(&m, party(&m, "x/a"), party(&m, "x/b"), Protocol::Udp, 80);
    assert!(i.unwrap().allows());
}

#[test]
fn unknown_peers_fail_closed() {
    let with = |action: &str| {
        cnp(
            "future",
            "Admin",
            1,
            ALL,
            "ingress",
            &format!("    - {{action: {action}, from: [{{serviceAccounts: {{}}}}]}}"),
        )
    };
    let deny_all = np_ingress("x", "deny-all", "{podSelector: {matchLabels: {pod: nothing}}}");
    // Accept matches nothing: the NetworkPolicy still denies.
    let m = cluster(&[with("Accept").as_str(), &deny_all].concat());
    assert_eq!(verdicts(&m, "y/a", "x/a", 80).1, Some(false));
    assert!(ingress_of(&m, "y/a", "x/a").cluster_verdict.is_none());
    // Deny and Pass deny everything, even what nothing else would deny.
    for action in ["Deny", "Pass"] {
        let m = cluster(&with(action));
        assert_eq!(verdicts(&m, "y/a", "x/a", 80).1, Some(false), "{action}");
        assert_eq!(ingress_of(&m, "y/a", "x/a").walk_line(), "Admin Deny by cnp/future/0", "{action}");
    }
}

#[test]
fn no_cluster_policy_no_walk() {
    let m = cluster(&np_ingress("x", "deny-all", "{podSelector: {matchLabels: {pod: nothing}}}"));
    let d = ingress_of(&m, "y/a", "x/a");
    assert!(!d.allows() && d.walk.is_empty() && d.cluster_verdict.is_none());
}

#[test]
fn equal_priorities_that_share_a_pod_are_found() {
    let a = cnp(
        "a",
        "Admin",
        3,
        "{namespaces: {matchLabels: {ns: x}}}",
        "ingress",
        "    - {action: Deny, from: [{namespaces: {}}]}",
    );
    let b = cnp(
        "b",
        "Admin",
        3,
        "{pods: {namespaceSelector: {}, podSelector: {matchLabels: {pod: a}}}}",
        "ingress",
        "    - {action: Accept, from: [{namespaces: {}}]}",
    );
    let c = cnp("c", "Baseline", 3, ALL, "ingress", "    - {action: Deny, from: [{namespaces: {}}]}");
    let d = cnp("d", "Admin", 4, ALL, "ingress", "    - {action: Deny, from: [{namespaces: {}}]}");
    let e = cnp(
        "e",
        "Admin",
        3,
        "{namespaces: {matchLabels: {ns: nowhere}}}",
        "ingress",
        "    - {action: Deny, from: [{namespaces: {}}]}",
    );
    let m = cluster(&[a.as_str(), &b, &c, &d, &e].concat());
    assert_eq!(same_priority_overlaps(&m), [("a".to_string(), "b".to_string())]);
    // The host-network pod is no subject, so it makes no overlap.
    let h = cnp(
        "h",
        "Admin",
        3,
        "{pods: {namespaceSelector: {}, podSelector: {matchLabels: {pod: h}}}}",
        "ingress",
        "    - {action: Deny, from: [{namespaces: {}}]}",
    );
    let m = cluster(&[e.as_str(), &h].concat());
    assert!(same_priority_overlaps(&m).is_empty());
}

#[test]
fn many_equal_priorities_are_bounded_and_fast() {
    let mut text = String::new();
    for i in 0..100 {
        text += &cnp(
            &format!("p{i:03}"),
            "Admin",
            7,
            ALL,
            "ingress",
            "    - {action: Deny, from: [{namespaces: {}}]}",
        );
    }
    let mut m = cluster(&text);
    for i in 0..2000u32 {
        let mut p = Pod::clone(&m.pods["x/a"]);
        p.name = format!("r{i}");
        p.labels = labels([("app", format!("a{}", i % 10))]);
        m.pods.insert(p.key(), p.into());
    }
    let t = std::time::Instant::now();
    let pairs = same_priority_overlaps(&m);
    let took = t.elapsed();
    assert_eq!(pairs.len(), MAX_OVERLAP_PAIRS, "4,950 pairs, listed up to the bound");
    assert_eq!(pairs[0], ("p000".to_string(), "p001".to_string()));
    // 2,000 pods of 13 label sets: 13 x 100 subject checks, not 2,000 x 100 x 100.
    assert!(took < std::time::Duration::from_secs(1), "{took:?}");
}

#[test]
fn a_pod_reaching_itself_through_a_service_is_subject() {
    let deny = cnp(
        "deny-x",
        "Admin",
        1,
        ALL,
        "ingress",
        "    - {action: Deny, from: [{namespaces: {matchLabels: {ns: x}}}]}",
    );
    let m = cluster(&deny);
    let me = party(&m, "x/a");
    let direct = crate::policy::evaluate::decide_via(&m, me, me, Protocol::Tcp, 80, false).1.unwrap();
    assert!(direct.allows() && direct.walk_line().starts_with("own address"), "{direct:?}");
    let hairpin = crate::policy::evaluate::decide_via(&m, me, me, Protocol::Tcp, 80, true).1.unwrap();
    assert_eq!(hairpin.walk_line(), "Admin Deny by cnp/deny-x/0");
}
