use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;

fn v4(s: &str) -> u128 {
    s.parse::<Ipv4Addr>().unwrap().as_u128()
}

fn nets<A: Family>(lo: u128, hi: u128) -> Vec<A::Net> {
    let mut out = Vec::new();
    nets_into::<A>(lo, hi, &mut out);
    out
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

/// A set of classes' spans are found two ways (their intervals sorted,
/// or one pass over all intervals, by how many they hold): both give the
/// addresses a look at every interval's lists gives.
#[test]
fn a_set_of_classes_is_its_addresses_whichever_way_they_are_found() {
    let mut r = crate::policy::incremental::tests::Rng::new(11);
    // 40 lists of 1-4 spans over 0-999: hundreds of intervals, dozens of classes.
    let lists: Vec<Vec<Span>> = (0..40)
        .map(|_| {
            (0..1 + r.below(4))
                .map(|_| {
                    let lo = r.below(1000) as u128;
                    (lo, lo + r.below(40) as u128)
                })
                .collect()
        })
        .collect();
    let part = Partition::of::<Ipv6Addr>(&lists);
    let (mut sparse, mut dense) = (0, 0);
    for _ in 0..300 {
        let density = if r.chance(50) { 5 } else { 60 };
        let classes: Vec<u32> = (0..part.len() as u32).filter(|_| r.chance(density)).collect();
        let held: usize = classes.iter().map(|&c| part.members[c as usize].len()).sum();
        if held * 8 < part.intervals.len() {
            sparse += 1;
        } else {
            dense += 1;
        }
        // Each address's lists, as the classes were cut: in the set if its class is.
        let lists_at = |a: u128| -> Vec<usize> {
            (0..lists.len()).filter(|&l| lists[l].iter().any(|&(lo, hi)| (lo..=hi).contains(&a))).collect()
        };
        let chosen: Vec<Vec<usize>> = classes
            .iter()
            .map(|&c| lists_at(part.intervals[part.members[c as usize][0] as usize].0))
            .collect();
        let mut want: Vec<Span> = Vec::new();
        for a in 0..1100u128 {
            let l = lists_at(a);
            if l.is_empty() || !chosen.contains(&l) {
                continue;
            }
            match want.last_mut() {
                Some((_, end)) if *end + 1 == a => *end = a,
                _ => want.push((a, a)),
            }
        }
        assert_eq!(part.spans(&classes), want, "classes {classes:?}");
    }
    assert!(sparse > 20 && dense > 20, "both ways taken: {sparse} sparse, {dense} dense");
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
