//! ClusterNetworkPolicy's chains and sets in the iptables layout.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};

use super::*;
use crate::policy::Region;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn net(s: &str) -> Ipv4Network {
    s.parse().unwrap()
}

fn region(action: Action, cells: &[Cell], peers: &[&str]) -> Region {
    Region { action, cells: cells.to_vec(), peers: peers.iter().map(|p| net(p)).collect() }
}

const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;

/// a (10.244.1.2) the subject of Admin egress regions of every kind, b
/// (10.244.1.3) of a Baseline ingress Deny and Accept.
fn cluster_ir() -> PolicyIr {
    let (a, b) = (ip("10.244.1.2"), ip("10.244.1.3"));
    let mut ir = PolicyIr::default();
    ir.v4.local = [a, b].into();
    ir.v4.pod_cidr = Some(net("10.244.1.0/24"));
    ir.v4.egress.isolated.insert(a);
    ir.v4.cluster.admin_egress.push(Class {
        subjects: [a].into(),
        regions: vec![
            region(Action::Deny, &[Cell::Ports(TCP, 80, 80)], &["10.244.2.0/24"]),
            region(Action::Accept, &[Cell::Ports(TCP, 443, 444)], &["10.244.3.0/24", "10.244.9.9/32"]),
            region(Action::Pass, &[Cell::Ports(UDP, 53, 53)], &["0.0.0.0/0"]),
            region(Action::Deny, &[Cell::Ports(TCP, 1000, 9999)], &["10.244.2.0/24"]),
            region(Action::Accept, &[Cell::Ports(UDP, 0, u16::MAX), Cell::Other], &["10.244.4.0/24"]),
            region(Action::Deny, &EVERY_CELL, &["192.168.0.0/16"]),
        ],
        unknown: Vec::new(),
        key: 1,
    });
    ir.v4.cluster.baseline_ingress.push(Class {
        subjects: [b].into(),
        regions: vec![
            region(Action::Deny, &[Cell::Ports(TCP, 22, 22)], &["0.0.0.0/0"]),
            region(Action::Accept, &EVERY_CELL, &["10.244.5.0/24"]),
        ],
        unknown: Vec::new(),
        key: 2,
    });
    ir
}

/// The lines of `chain` in `rules`, without their `-A <chain> `.
fn chain<'r>(rules: &'r str, chain: &str) -> Vec<&'r str> {
    let head = format!("-A {chain} ");
    rules.lines().filter_map(|l| l.strip_prefix(head.as_str())).collect()
}

#[test]
fn every_local_pod_meets_the_tiers_before_network_policy() {
    let r = render(&cluster_ir());
    let forward = chain(&r.rules, FORWARD_CHAIN);
    assert_eq!(
        forward[3..6],
        [
            "-m set --match-set weft-local src -j WEFT-CNP-AOUT",
            "-m set --match-set weft-local dst -j WEFT-CNP-AIN",
            "-m set --match-set weft-local src -j ACCEPT",
        ],
        "{}",
        r.rules
    );
    assert!(!r.rules.contains("-j WEFT-EGRESS") && !r.rules.contains("-j WEFT-INGRESS"), "only gotos now");
    for c in CNP_CHAINS {
        assert!(r.rules.contains(&format!("\n:{c} - [0:0]\n")), "{c} declared");
    }
}

#[test]
fn admin_egress_sets_wide_rules_and_escapes() {
    let r = render(&cluster_ir());
    let set = |name: &str| r.sets.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("{name}"));
    let named = |prefix: &str, member: &str| {
        let s = r.sets.iter().find(|s| s.name.starts_with(prefix) && s.members.iter().any(|m| m == member));
        s.unwrap_or_else(|| panic!("{prefix} with {member}: {:?}", r.sets)).name.clone()
    };
    let cs = named("weft-cs-", "10.244.1.2");
    let (p2, p4, p192) = (
        named("weft-cp-", "10.244.2.0/24"),
        named("weft-cp-", "10.244.4.0/24"),
        named("weft-cp-", "192.168.0.0/16"),
    );
    assert_eq!(
        chain(&r.rules, "WEFT-CNP-AOUT"),
        [
            "-m set --match-set weft-cnp-podnets dst -m set ! --match-set weft-cnp-pods dst -m set --match-set weft-admin-out-unk src,dst,dst -j WEFT-CNP-DOUT".to_string(),
            "-m set --match-set weft-admin-out-deny src,dst,dst -j WEFT-CNP-DOUT".into(),
            "-m set --match-set weft-admin-out-accept src,dst,dst -j RETURN".into(),
            format!("-m set --match-set {cs} src -m set --match-set {p2} dst -p tcp -m tcp --dport 1000:9999 -j WEFT-CNP-DOUT"),
            format!("-m set --match-set {cs} src -m set --match-set {p4} dst -p udp -j RETURN"),
            format!("-m set --match-set {cs} src -m set --match-set {p192} dst -j WEFT-CNP-DOUT"),
            format!("-m set --match-set {cs} src -p tcp -g WEFT-CNP-NPOUT"),
            format!("-m set --match-set {cs} src -p udp -g WEFT-CNP-NPOUT"),
            format!("-m set --match-set {cs} src -p sctp -g WEFT-CNP-NPOUT"),
            format!("-m set --match-set {cs} src -m set --match-set {p4} dst -j RETURN"),
            "-g WEFT-CNP-NPOUT".into(),
        ],
        "{}",
        r.rules
    );
    assert_eq!(
        chain(&r.rules, "WEFT-CNP-NPOUT"),
        ["-m set --match-set weft-out-iso src -g WEFT-EGRESS", "-g WEFT-CNP-BOUT"]
    );
    assert_eq!(
        chain(&r.rules, "WEFT-CNP-BOUT"),
        [
            "-m set --match-set weft-cnp-podnets dst -m set ! --match-set weft-cnp-pods dst -m set --match-set weft-base-out-unk src,dst,dst -j WEFT-CNP-DOUT",
            "-m set --match-set weft-base-out-deny src,dst,dst -j WEFT-CNP-DOUT",
            "-j RETURN"
        ]
    );
    assert_eq!(
        chain(&r.rules, "WEFT-CNP-DOUT"),
        [
            "-m conntrack --ctstate NEW -m limit --limit 100/sec --limit-burst 200 -j NFLOG --nflog-group 87 --nflog-prefix weft-deny-out --nflog-size 64",
            "-m comment --comment \"weft: denied by ClusterNetworkPolicy\" -j DROP",
        ]
    );
    assert_eq!(set("weft-admin-out-deny").members, ["10.244.1.2,tcp:80,10.244.2.0/24"]);
    assert_eq!(set("weft-admin-out-deny").kind, SetType::HashIpPortNet);
    assert_eq!(
        set("weft-admin-out-accept").members,
        [
            "10.244.1.2,tcp:443,10.244.3.0/24",
            "10.244.1.2,tcp:443,10.244.9.9",
            "10.244.1.2,tcp:444,10.244.3.0/24",
            "10.244.1.2,tcp:444,10.244.9.9"
        ]
    );
    assert!(!r.sets.iter().any(|s| s.members.iter().any(|m| m.contains("udp:53"))), "Pass needs no member");
    assert_eq!(set(&cs).kind, SetType::HashIp);
    assert_eq!(set(&p2).kind, SetType::HashNet);
    assert!(
        !r.sets
            .iter()
            .any(|s| s.name.starts_with("weft-cp-") && s.members.iter().any(|m| m.contains("10.244.3."))),
        "a region of set members only has no peers set"
    );
}

#[test]
fn baseline_ingress_denies_and_lets_the_rest_return() {
    let r = render(&cluster_ir());
    let set = |name: &str| r.sets.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("{name}"));
    assert_eq!(
        chain(&r.rules, "WEFT-CNP-AIN"),
        [
            "-m set --match-set weft-cnp-podnets src -m set ! --match-set weft-cnp-pods src -m set --match-set weft-admin-in-unk dst,dst,src -j WEFT-CNP-DIN",
            "-m set --match-set weft-admin-in-deny dst,dst,src -j WEFT-CNP-DIN",
            "-m set --match-set weft-admin-in-accept dst,dst,src -j RETURN",
            "-g WEFT-CNP-NPIN"
        ]
    );
    assert_eq!(
        chain(&r.rules, "WEFT-CNP-NPIN"),
        ["-m set --match-set weft-in-iso dst -g WEFT-INGRESS", "-g WEFT-CNP-BIN"]
    );
    assert_eq!(
        chain(&r.rules, "WEFT-CNP-BIN"),
        [
            "-m set --match-set weft-cnp-podnets src -m set ! --match-set weft-cnp-pods src -m set --match-set weft-base-in-unk dst,dst,src -j WEFT-CNP-DIN",
            "-m set --match-set weft-base-in-deny dst,dst,src -j WEFT-CNP-DIN",
            "-j RETURN"
        ],
        "Baseline's Accept is the fall-through"
    );
    assert_eq!(
        set("weft-base-in-deny").members,
        ["10.244.1.3,tcp:22,0.0.0.0/1", "10.244.1.3,tcp:22,128.0.0.0/1"],
        "/0 as two halves"
    );
    assert!(chain(&r.rules, "WEFT-CNP-DIN")[0].contains("--nflog-prefix weft-deny-in "));
    assert!(set("weft-admin-in-deny").members.is_empty(), "declared empty");
}

#[test]
fn a_baseline_class_with_other_cells_escapes_to_return() {
    let mut ir = cluster_ir();
    let b = ip("10.244.1.3");
    ir.v4.cluster.baseline_ingress[0].regions.push(region(Action::Deny, &[Cell::Other], &["10.244.6.0/24"]));
    let r = render(&ir);
    let rules = chain(&r.rules, "WEFT-CNP-BIN");
    let cs = r.sets.iter().find(|s| s.name.starts_with("weft-cs-") && s.members == [b.to_string()]).unwrap();
    // After the unknown-pod rule and the Baseline deny set.
    assert_eq!(rules[2], format!("-m set --match-set {} dst -p tcp -j RETURN", cs.name));
    assert!(rules[5].ends_with(" src -j WEFT-CNP-DIN") && !rules[5].contains("-p "), "{rules:?}");
    assert_eq!(rules.len(), 7);
}

#[test]
fn without_cluster_policy_the_render_is_unchanged() {
    let mut ir = cluster_ir();
    ir.v4.cluster = ClusterIr::default();
    let plain = render(&ir);
    assert!(!plain.rules.contains("CNP") && !plain.sets.iter().any(|s| s.name.starts_with("weft-admin")));
    let with = render(&cluster_ir());
    assert_eq!(
        with.rules6, plain.rules6,
        "IPv6 has no ClusterNetworkPolicy here: its chains stay as they were"
    );
    assert_eq!(
        with.counts().sets,
        plain.counts().sets + 6 + 4 + 2 + 4,
        "three verdict sets and two unknown-pod sets per direction, the known pods and the pod networks, \
         and sets for a's wide rules: its class and 3 peers (b has none)"
    );
}

#[test]
fn ipv6_objects_carry_a_6_and_fit_ipset_names() {
    let mut ir = PolicyIr::default();
    let a: Ipv6Addr = "fd00:244:1::2".parse().unwrap();
    ir.v6.local = [a].into();
    ir.v6.cluster.admin_ingress.push(Class {
        subjects: [a].into(),
        regions: vec![Region {
            action: Action::Deny,
            cells: vec![Cell::Ports(TCP, 80, 80), Cell::Other],
            peers: vec!["fd00:244:2::/64".parse::<Ipv6Network>().unwrap()],
        }],
        unknown: Vec::new(),
        key: 3,
    });
    let r = render(&ir);
    assert!(!r.rules.contains("CNP"), "IPv4 has none");
    assert!(
        r.rules6.contains("-A WEFT-FORWARD -m set --match-set weft-local6 dst -j WEFT-CNP-AIN"),
        "{}",
        r.rules6
    );
    let v6: Vec<&SetSpec> = r.sets.iter().filter(|s| s.inet6).collect();
    let set = |name: &str| v6.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("{name}: {v6:?}"));
    assert_eq!(set("weft-admin-in-deny6").members, ["fd00:244:1::2,tcp:80,fd00:244:2::/64"]);
    assert!(
        v6.iter().any(|s| s.name.starts_with("weft-6s-"))
            && v6.iter().any(|s| s.name.starts_with("weft-6p-"))
    );
    assert!(r.sets.iter().all(|s| s.name.len() <= 24), "{:?}", r.sets);
}
