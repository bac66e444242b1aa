use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;

fn v4(s: &str) -> u128 {
    s.parse::<Ipv4Addr>().unwrap().as_u128()
}

#[test]
fn ranges_become_the_fewest_networks() {
    let n = |lo, hi| nets::<Ipv4Addr>(v4(lo), v4(hi)).iter().map(|n| n.to_string()).collect::<Vec<_>>();
    assert_eq!(n("10.0.0.0", "10.0.0.255"), ["10.0.0.0/24"]);
    assert_eq!(n("10.0.0.1", "10.0.0.1"), ["10.0.0.1/32"]);
    assert_eq!(n("10.0.0.1", "10.0.0.6"), ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]);
    assert_eq!(n("0.0.0.0", "255.255.255.255"), ["0.0.0.0/0"]);
    // As Python's ipaddress.summarize_address_range counts it.
    assert_eq!(n("10.0.0.3", "255.255.255.255").len(), 29);
    let all6 = nets::<Ipv6Addr>(0, u128::MAX);
    assert_eq!(all6.len(), 1);
    assert_eq!(all6[0].prefix(), 0);
    let tail6 = nets::<Ipv6Addr>(u128::MAX - 1, u128::MAX);
    assert_eq!(
        tail6.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        ["ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/127"]
    );
}

#[test]
fn painting_keeps_what_earlier_rules_painted() {
    let mut p = BTreeMap::new();
    paint(&mut p, (10, 20), Action::Accept);
    paint(&mut p, (0, 100), Action::Deny);
    paint(&mut p, (15, 30), Action::Pass);
    paint(&mut p, (u128::MAX - 3, u128::MAX), Action::Pass);
    paint(&mut p, (0, u128::MAX), Action::Accept);
    assert_eq!(
        coalesce(p),
        vec![
            ((0, 9), Action::Deny),
            ((10, 20), Action::Accept),
            ((21, 100), Action::Deny),
            ((101, u128::MAX - 4), Action::Accept),
            ((u128::MAX - 3, u128::MAX), Action::Pass),
        ]
    );
}

#[test]
fn a_port_rule_before_a_catch_all_splits_the_port_space() {
    let spans = Arc::new(vec![(v4("10.0.0.0"), v4("10.0.0.255"))]);
    let rules = vec![
        (Action::Accept, vec![Atom { spans: spans.clone(), cells: vec![(0, 80, 80)] }]),
        (Action::Deny, vec![Atom { spans, cells: (0..=OTHER).map(|l| (l, 0, u16::MAX)).collect() }]),
    ];
    let regions = cut::<Ipv4Addr>(&rules);
    let net: Vec<<Ipv4Addr as Family>::Net> = vec!["10.0.0.0/24".parse().unwrap()];
    assert_eq!(
        regions,
        vec![
            Region {
                action: Action::Accept,
                cells: vec![Cell::Ports(Protocol::Tcp, 80, 80)],
                peers: net.clone()
            },
            Region {
                action: Action::Deny,
                cells: vec![
                    Cell::Ports(Protocol::Tcp, 0, 79),
                    Cell::Ports(Protocol::Tcp, 81, 65535),
                    Cell::Ports(Protocol::Udp, 0, 65535),
                    Cell::Ports(Protocol::Sctp, 0, 65535),
                    Cell::Other,
                ],
                peers: net,
            },
        ]
    );
}

#[test]
fn networks_become_spans_in_both_families_host_networks_included() {
    let n4 = |s: &str| span::<Ipv4Addr>(s.parse().unwrap());
    assert_eq!(n4("10.0.0.0/24"), (v4("10.0.0.0"), v4("10.0.0.255")));
    assert_eq!(n4("10.0.0.7/32"), (v4("10.0.0.7"), v4("10.0.0.7")));
    assert_eq!(n4("0.0.0.0/0"), (0, v4("255.255.255.255")));
    let n6 = |s: &str| span::<Ipv6Addr>(s.parse().unwrap());
    let a = "fd00::af4:202".parse::<Ipv6Addr>().unwrap().as_u128();
    assert_eq!(n6("fd00::af4:202/128"), (a, a));
    assert_eq!(n6("fd00::af4:100/120"), (a - 0x102, a - 0x102 + 0xff));
    assert_eq!(n6("::/0"), (0, u128::MAX));
}
