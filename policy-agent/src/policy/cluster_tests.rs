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
fn addresses_the_same_lists_hold_are_one_class() {
    let lists = vec![
        vec![(10, 20), (40, 40)],
        vec![(15, 30), (40, 40)],
        vec![(0, u128::MAX)],
        vec![(u128::MAX, u128::MAX)],
    ];
    let part = Partition::of::<Ipv6Addr>(&lists);
    let class = |spans: &[Span]| (0..part.len() as u32).find(|&c| part.spans(&[c]) == spans).unwrap();
    let only_all = class(&[(0, 9), (31, 39), (41, u128::MAX - 1)]);
    let first = class(&[(10, 14)]);
    let both = class(&[(15, 20), (40, 40)]);
    let second = class(&[(21, 30)]);
    let last = class(&[(u128::MAX, u128::MAX)]);
    assert_eq!(part.len(), 5);
    assert_eq!(part.spans(&[first, both, second]), [(10, 30), (40, 40)], "neighbours joined");
    assert_eq!(part.of_list[0], [first, both]);
    assert_eq!(part.of_list[1], [both, second]);
    assert_eq!(part.of_list[3], [last]);
    let all = part.of_list[2].clone();
    let mut every = vec![only_all, first, both, second, last];
    every.sort();
    assert_eq!(all, every);
}

#[test]
fn earlier_rules_keep_what_they_painted() {
    let lists = vec![vec![(10, 20)], vec![(0, 100)], vec![(15, 30)], vec![(0, u128::MAX)]];
    let part = Partition::of::<Ipv6Addr>(&lists);
    let all = |list| Atom { list, cells: vec![(OTHER, 0, u16::MAX)] };
    let rules = vec![
        (Action::Accept, vec![all(0)]),
        (Action::Deny, vec![all(1)]),
        (Action::Pass, vec![all(2)]),
        (Action::Accept, vec![all(3)]),
    ];
    let regions = cut::<Ipv6Addr>(&rules, &part, &mut PeerNets::<Ipv6Addr>::new());
    let spans = |a: Action| {
        let r = regions.iter().find(|r| r.action == a).unwrap();
        assert_eq!(r.cells, [Cell::Other]);
        let mut out: Vec<Span> = Vec::new();
        for (lo, hi) in r.peers.iter().map(|n| span::<Ipv6Addr>(*n)) {
            match out.last_mut() {
                Some((_, end)) if *end + 1 == lo => *end = hi,
                _ => out.push((lo, hi)),
            }
        }
        out
    };
    assert_eq!(regions.len(), 2);
    assert_eq!(spans(Action::Accept), [(10, 20), (101, u128::MAX)]);
    assert_eq!(spans(Action::Deny), [(0, 9), (21, 100)]);
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
