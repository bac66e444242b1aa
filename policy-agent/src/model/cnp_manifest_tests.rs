//! One test per schema or CEL rule of the CRD, and the fail-closed peers.

use super::*;
use crate::model::manifest::labels;
use crate::model::{parse_objects, LabelSelector, Object};

const HEAD: &str =
    "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: p}\n";

fn parse(spec: &str) -> Result<ClusterNetworkPolicy, String> {
    let text = format!("{HEAD}spec:\n{spec}");
    let mut r = parse_objects(&text).unwrap_or_else(|e| panic!("not YAML: {e}\n{text}"));
    assert_eq!(r.len(), 1, "{r:?}");
    match r.remove(0) {
        Ok(Object::ClusterNetworkPolicy(p)) => Ok(p),
        Ok(other) => panic!("{other:?}"),
        Err(e) => {
            assert_eq!(e.key.as_deref(), Some("ClusterNetworkPolicy p"));
            Err(e.reason)
        }
    }
}

fn ok(spec: &str) -> ClusterNetworkPolicy {
    parse(spec).unwrap_or_else(|e| panic!("{e}\n{spec}"))
}

fn err(spec: &str, want: &str) {
    match parse(spec) {
        Ok(p) => panic!("accepted, want an error with {want:?}:\n{spec}\n{p:?}"),
        Err(e) => assert!(e.contains(want), "{e:?} does not contain {want:?}\n{spec}"),
    }
}

/// A spec with `rules` as its egress, subject all namespaces.
fn egress(rules: &str) -> String {
    format!("  tier: Admin\n  priority: 1\n  subject: {{namespaces: {{}}}}\n  egress:\n{rules}")
}

fn ingress(rules: &str) -> String {
    format!("  tier: Admin\n  priority: 1\n  subject: {{namespaces: {{}}}}\n  ingress:\n{rules}")
}

#[test]
fn a_full_policy() {
    let p = ok("  tier: Baseline\n  priority: 1000\n  subject:\n    pods:\n      namespaceSelector: {matchLabels: {ns: x}}\n      podSelector: {matchLabels: {pod: a}}\n  ingress:\n    - name: from-y\n      action: Accept\n      from: [{namespaces: {matchLabels: {ns: y}}}]\n      protocols: [{tcp: {destinationPort: {number: 80}}}, {udp: {destinationPort: {range: {start: 80, end: 81}}}}]\n  egress:\n    - action: Deny\n      to: [{networks: [10.0.0.1/8, '::/0']}, {nodes: {}}, {pods: {podSelector: {}}}]\n    - action: Pass\n      to: [{pods: {namespaceSelector: {}, podSelector: {}}}]\n      protocols: [{destinationNamedPort: serve-80-tcp}, {sctp: {destinationPort: {number: 9}}}]\n");
    assert_eq!((p.tier, p.priority), (Tier::Baseline, 1000));
    let sel = |k: &str, v: &str| LabelSelector { match_labels: labels([(k, v)]), ..Default::default() };
    assert_eq!(
        p.subject,
        Subject::Pods(NamespacedPods { namespaces: sel("ns", "x"), pods: sel("pod", "a") })
    );
    assert_eq!(p.ingress[0].name.as_deref(), Some("from-y"));
    assert_eq!(p.ingress[0].peers, [CnpPeer::Namespaces(sel("ns", "y"))]);
    assert_eq!(
        p.ingress[0].ports,
        [
            CnpPort::Ports { protocol: Protocol::Tcp, start: 80, end: 80 },
            CnpPort::Ports { protocol: Protocol::Udp, start: 80, end: 81 }
        ]
    );
    // Host bits are cleared, as for ipBlock.
    assert_eq!(
        p.egress[0].peers[0],
        CnpPeer::Networks(vec!["10.0.0.0/8".parse().unwrap(), "::/0".parse().unwrap()])
    );
    assert_eq!(p.egress[0].peers[1], CnpPeer::Nodes(LabelSelector::default()));
    assert_eq!(p.egress[1].ports[0], CnpPort::Named("serve-80-tcp".into()));
    assert_eq!(p.rule_id(&p.ingress, 0), "cnp/p/from-y");
    assert_eq!(p.rule_id(&p.egress, 1), "cnp/p/1");
    assert!(!p.fails_closed());
}

#[test]
fn tier_and_priority_are_required_and_bounded() {
    let with = |tier: &str, prio: &str| format!("  {tier}\n  {prio}\n  subject: {{namespaces: {{}}}}\n");
    assert_eq!(ok(&with("tier: Admin", "priority: 0")).priority, 0);
    err(&with("tier: Admin", "priority: 1001"), "spec.priority 1001 is not in 0-1000");
    err(&with("tier: Admin", "priority: -1"), "spec.priority -1");
    err(&with("tier: Admin", "foo: 1"), "spec.priority is required");
    err(&with("tier: Developer", "priority: 1"), "spec.tier \"Developer\" is not Admin or Baseline");
    err(&with("foo: 1", "priority: 1"), "spec.tier is required");
    let r = parse_objects(HEAD).unwrap();
    assert!(matches!(&r[..], [Err(e)] if e.reason == "spec is required"), "{r:?}");
}

#[test]
fn exactly_one_subject() {
    let with = |s: &str| format!("  tier: Admin\n  priority: 1\n  subject: {s}\n");
    assert_eq!(ok(&with("{namespaces: {}}")).subject, Subject::Namespaces(LabelSelector::default()));
    err(&with("{}"), "spec.subject: one of namespaces or pods is required");
    err(&with("{namespaces: {}, pods: {podSelector: {}}}"), "spec.subject: exactly one");
    err(&with("{serviceAccounts: {}}"), "unknown: serviceAccounts");
    err(&with("{pods: {namespaceSelector: {}}}"), "spec.subject.pods.podSelector is required");
    err("  tier: Admin\n  priority: 1\n", "spec.subject is required");
}

#[test]
fn at_most_25_rules_peers_protocols_and_networks() {
    let rule = "    - {action: Deny, to: [{namespaces: {}}]}\n";
    assert_eq!(ok(&egress(&rule.repeat(25))).egress.len(), 25);
    err(&egress(&rule.repeat(26)), "spec.egress: 26 rules, at most 25");
    let peers = |n: usize| vec!["{namespaces: {}}"; n].join(", ");
    ok(&egress(&format!("    - {{action: Deny, to: [{}]}}\n", peers(25))));
    err(&egress(&format!("    - {{action: Deny, to: [{}]}}\n", peers(26))), "spec.egress[0].to: 26 items");
    err(&egress("    - {action: Deny, to: []}\n"), "spec.egress[0].to: at least one item");
    err(&ingress("    - {action: Deny}\n"), "spec.ingress[0].from is required");
    let protos = |n: usize| {
        (1..=n).map(|i| format!("{{tcp: {{destinationPort: {{number: {i}}}}}}}")).collect::<Vec<_>>()
    };
    ok(&egress(&format!(
        "    - {{action: Deny, to: [{{nodes: {{}}}}], protocols: [{}]}}\n",
        protos(25).join(", ")
    )));
    err(
        &egress(&format!(
            "    - {{action: Deny, to: [{{nodes: {{}}}}], protocols: [{}]}}\n",
            protos(26).join(", ")
        )),
        "spec.egress[0].protocols: 26 items",
    );
    err(&egress("    - {action: Deny, to: [{nodes: {}}], protocols: []}\n"), "protocols: at least one item");
    let nets = |n: usize| (0..n).map(|i| format!("10.{i}.0.0/16")).collect::<Vec<_>>().join(", ");
    ok(&egress(&format!("    - {{action: Deny, to: [{{networks: [{}]}}]}}\n", nets(25))));
    err(
        &egress(&format!("    - {{action: Deny, to: [{{networks: [{}]}}]}}\n", nets(26))),
        "networks: 26 items",
    );
}

#[test]
fn rule_names_and_actions() {
    let named = |n: usize| {
        egress(&format!("    - {{name: {}, action: Pass, to: [{{namespaces: {{}}}}]}}\n", "r".repeat(n)))
    };
    assert_eq!(ok(&named(100)).egress[0].name.as_deref(), Some("r".repeat(100).as_str()));
    err(&named(101), "spec.egress[0].name: 101 characters, at most 100");
    err(&egress("    - {action: Allow, to: [{namespaces: {}}]}\n"), "spec.egress[0].action \"Allow\"");
    err(&egress("    - {to: [{namespaces: {}}]}\n"), "spec.egress[0].action is required");
}

#[test]
fn ports_number_or_range() {
    let with =
        |p: &str| egress(&format!("    - {{action: Deny, to: [{{nodes: {{}}}}], protocols: [{p}]}}\n"));
    err(&with("{tcp: {}}"), "spec.egress[0].protocols[0].tcp: destinationPort is required");
    err(&with("{tcp: {destinationPort: {}}}"), "exactly one of number or range");
    err(
        &with("{tcp: {destinationPort: {number: 1, range: {start: 1, end: 2}}}}"),
        "exactly one of number or range",
    );
    err(&with("{tcp: {destinationPort: {number: 0}}}"), "destinationPort.number 0 is not in 1-65535");
    err(&with("{udp: {destinationPort: {number: 65536}}}"), "65536 is not in 1-65535");
    err(
        &with("{tcp: {destinationPort: {range: {start: 90, end: 90}}}}"),
        "Start port must be less than End port",
    );
    err(&with("{tcp: {destinationPort: {range: {start: 0, end: 90}}}}"), "range.start 0");
    err(
        &with("{tcp: {destinationPort: {number: 1}}, udp: {destinationPort: {number: 1}}}"),
        "exactly one of tcp",
    );
    err(&with("{}"), "one of tcp, udp, sctp or destinationNamedPort is required");
}

#[test]
fn named_ports_never_with_networks_or_nodes() {
    let with = |peer: &str| {
        egress(&format!("    - {{action: Deny, to: [{peer}], protocols: [{{destinationNamedPort: web}}]}}\n"))
    };
    ok(&with("{pods: {podSelector: {}}}"));
    ok(&with("{namespaces: {}}"));
    err(&with("{networks: [10.0.0.0/8]}"), "cannot be set with destinationNamedPort");
    err(&with("{nodes: {}}"), "cannot be set with destinationNamedPort");
    err(
        &egress("    - {action: Accept, to: [{domainNames: [example.com]}], protocols: [{destinationNamedPort: web}]}\n"),
        "cannot be set with destinationNamedPort",
    );
    err(&with("{namespaces: {}}").replace("web", "Web_1"), "destinationNamedPort: port name");
}

#[test]
fn networks_are_cidrs_once_each() {
    let with = |n: &str| egress(&format!("    - {{action: Deny, to: [{{networks: [{n}]}}]}}\n"));
    err(&with("10.0.0.1"), "Invalid CIDR format");
    err(&with("10.0.0.0/33"), "spec.egress[0].to[0].networks[0]");
    err(&with("10.0.0.0/8, 10.0.0.0/8"), "networks[1] \"10.0.0.0/8\": duplicate");
    err(&with("'0000:0000:0000:0000:0000:ffff:255.255.255.255/128'"), "49 characters, at most 43");
}

#[test]
fn exactly_one_field_per_peer() {
    err(&egress("    - {action: Deny, to: [{}]}\n"), "spec.egress[0].to[0]: a peer needs one field");
    err(
        &egress("    - {action: Deny, to: [{namespaces: {}, nodes: {}}]}\n"),
        "exactly one field per peer, not namespaces, nodes",
    );
    err(&egress("    - {action: Deny, to: [{namespaces: {}, future: {}}]}\n"), "not future, namespaces");
    err(
        &ingress("    - {action: Deny, from: [{pods: {namespaceSelector: {}}}]}\n"),
        "from[0].pods.podSelector is required",
    );
}

#[test]
fn domain_names_only_accept() {
    err(
        &egress("    - {action: Deny, to: [{domainNames: [example.com]}]}\n"),
        "domainNames: only in Accept rules",
    );
    // Not implemented: the Accept fails closed (matches nothing) rather than being dropped as invalid.
    let p = ok(&egress("    - {action: Accept, to: [{domainNames: [example.com]}]}\n"));
    assert_eq!(p.egress[0].peers, [CnpPeer::Unknown(vec!["domainNames".into()])]);
}

/// A peer or protocol with only fields weft does not know is kept, to fail closed.
#[test]
fn unknown_peers_and_protocols_fail_closed_as_data() {
    let p = ok(&egress("    - {action: Deny, to: [{serviceAccounts: {}}, {namespaces: {}}]}\n"));
    assert_eq!(p.egress[0].peers[0], CnpPeer::Unknown(vec!["serviceAccounts".into()]));
    assert!(p.egress[0].fails_closed() && p.fails_closed());
    // An egress-only peer in an ingress rule is, for ingress, a field it does not know.
    let p = ok(&ingress("    - {action: Pass, from: [{networks: [10.0.0.0/8]}]}\n"));
    assert_eq!(p.ingress[0].peers, [CnpPeer::Unknown(vec!["networks".into()])]);
    let p = ok(&ingress("    - {action: Accept, from: [{namespaces: {}}], protocols: [{icmp: {}}]}\n"));
    assert_eq!(p.ingress[0].ports, [CnpPort::Unknown(vec!["icmp".into()])]);
    let p = ok(&ingress(
        "    - {action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {sourcePort: {number: 1}}}]}\n",
    ));
    assert_eq!(p.ingress[0].ports, [CnpPort::Unknown(vec!["tcp.sourcePort".into()])]);
    assert!(!ok(&ingress("    - {action: Deny, from: [{namespaces: {}}]}\n")).fails_closed());
}

#[test]
fn selectors_are_validated_and_lists_unwrapped() {
    err(
        &ingress("    - {action: Deny, from: [{namespaces: {matchLabels: {ns: 'a b'}}}]}\n"),
        "spec.ingress[0].from[0].namespaces.matchLabels",
    );
    let text = "kind: ClusterNetworkPolicyList\nitems:\n- kind: ClusterNetworkPolicy\n  metadata: {name: a, namespace: ignored}\n  \
                spec: {tier: Admin, priority: 3, subject: {namespaces: {}}}\n";
    let r = parse_objects(text).unwrap();
    assert!(matches!(&r[..], [Ok(Object::ClusterNetworkPolicy(p))] if p.name == "a"), "{r:?}");
    assert_eq!(r[0].as_ref().unwrap().key(), "ClusterNetworkPolicy a");
}

/// metadata.generation is kept (the node reports it for the status); a
/// manifest without one has none.
#[test]
fn the_generation_is_read_from_the_metadata() {
    assert_eq!(ok(&egress("  - {action: Deny, to: [{namespaces: {}}]}\n")).generation, None);
    let text = "kind: ClusterNetworkPolicy\nmetadata: {name: g, generation: 7}\n\
                spec: {tier: Admin, priority: 1, subject: {namespaces: {}}}\n";
    match parse_objects(text).unwrap().remove(0) {
        Ok(Object::ClusterNetworkPolicy(p)) => assert_eq!(p.generation, Some(7)),
        other => panic!("{other:?}"),
    }
}
