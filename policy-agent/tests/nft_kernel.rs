//! The nftables backend against the kernel, in a network namespace of the
//! test's own (root; skips otherwise): the table nft lists is the golden one
//! (elements in the order weft adds them, which nft keeps),
//! what was applied reads back equal, pod churn is an element delta, a
//! transaction the kernel refuses leaves the last good table, cleanup removes it;
//! element deltas go over netlink for every kind of set and read back as
//! rendered, a refused batch changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use nix::errno::Errno;
use weft_agent::model::Protocol;
use weft_agent::nft::kernel::read_back;
use weft_agent::nft::netlink::{self, NetlinkError, NftSocket, Op, SetDelta};
use weft_agent::nft::{render, Elem, FamilyElem, Nft, NftRendered, TABLE};
use weft_agent::policy::{FamilyIr, Group, GroupPorts, PolicyIr, PortGroup};
use weft_netkit::netns::run_in_new;

/// True when root; otherwise the test skips (fails under CI).
fn root() -> bool {
    weft_test_support::root_or_skip(&weft_test_support::this_test(), "a network namespace of its own")
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn ir() -> PolicyIr {
    let a = ip("10.244.1.2");
    let mut ir = PolicyIr {
        v4: FamilyIr {
            local: [a, ip("10.244.1.3")].into(),
            pod_cidr: Some("10.244.1.0/24".parse().unwrap()),
            cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
            ..FamilyIr::default()
        },
        ..PolicyIr::default()
    };
    ir.v4.ingress.isolated.insert(a);
    ir.v4.ingress.triples.insert((a, Protocol::Tcp, 80, "10.244.2.0/24".parse().unwrap()));
    ir.v4.ingress.triples.insert((a, Protocol::Tcp, 80, "10.244.2.3/32".parse().unwrap()));
    ir.v4.ingress.groups.push(Group {
        key: 1,
        targets: [a].into(),
        peers: vec!["0.0.0.0/0".parse().unwrap()],
        ports: GroupPorts::Protocol(Protocol::Udp),
    });
    ir.v4.ingress.groups.push(Group {
        key: 2,
        targets: [a].into(),
        peers: vec!["172.31.0.0/24".parse().unwrap()],
        ports: GroupPorts::All,
    });
    ir.v4.ingress.port_groups.push(PortGroup {
        key: 2,
        targets: [(a, Protocol::Tcp, 443), (a, Protocol::Udp, 53)].into(),
        peers: vec!["172.31.0.0/24".parse().unwrap()],
    });
    ir.v4.egress.isolated.insert(ip("10.244.1.3"));
    let (a6, b6): (std::net::Ipv6Addr, std::net::Ipv6Addr) =
        ("fd00:244:1::2".parse().unwrap(), "fd00:244:1::3".parse().unwrap());
    ir.v6.pod_cidr = Some("fd00:244:1::/64".parse().unwrap());
    ir.v6.cluster_cidr = Some("fd00:244::/48".parse().unwrap());
    ir.v6.local = [a6, b6].into();
    ir.v6.ingress.isolated.insert(a6);
    ir.v6.egress.isolated.insert(b6);
    // The same policy in IPv6: a triple of each kind, a group, a port group.
    ir.v6.ingress.triples.insert((a6, Protocol::Tcp, 80, "fd00:244:2::/64".parse().unwrap()));
    ir.v6.ingress.triples.insert((a6, Protocol::Tcp, 80, "fd00:244:2::3/128".parse().unwrap()));
    ir.v6.ingress.groups.push(Group {
        key: 1,
        targets: [a6].into(),
        peers: vec!["::/0".parse().unwrap()],
        ports: GroupPorts::Protocol(Protocol::Udp),
    });
    ir.v6.ingress.port_groups.push(PortGroup {
        key: 2,
        targets: [(a6, Protocol::Tcp, 443)].into(),
        peers: vec!["fd00:31::/64".parse().unwrap()],
    });
    ir
}

/// `nft list table inet weft` of `ir()`, as written (`WEFT_PRINT_GOLDEN=1`
/// prints it again).
const GOLDEN: &str = include_str!("golden/nft_table.txt");

fn listing() -> String {
    let out = std::process::Command::new("nft").args(["list", "table", "inet", "weft"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rendered_sets(r: &NftRendered) -> BTreeMap<String, BTreeSet<String>> {
    r.sets.iter().map(|(k, v)| (k.clone(), v.iter().map(Elem::json).collect())).collect()
}

#[test]
fn golden_round_trip_delta_refusal_and_cleanup() {
    if !root() {
        return;
    }
    run_in_new(|| {
        let mut nft = Nft::new();
        let good = render(&ir());
        assert!(nft.apply(&good, false).unwrap().replaced);
        let got = listing();
        if std::env::var_os("WEFT_PRINT_GOLDEN").is_some() {
            println!("{got}");
        }
        assert_eq!(got, GOLDEN);
        assert_eq!(read_back().unwrap(), rendered_sets(&good), "what was applied reads back equal");

        // A new local pod: one element in one set, as a delta.
        let mut more = ir();
        more.v4.local.insert(ip("10.244.1.9"));
        let r = render(&more);
        let done = nft.apply(&r, false).unwrap();
        assert!(!done.replaced && done.added == 1 && done.deleted == 0, "{done:?}");
        assert_eq!(read_back().unwrap(), rendered_sets(&r));

        // A policy changed: one group goes (its sets with it), a port group
        // comes, in one transaction that does not replace the table.
        let mut regrouped = more.clone();
        regrouped.v4.ingress.groups.retain(|g| g.key != 1);
        regrouped.v4.ingress.port_groups.push(PortGroup {
            key: 5,
            targets: [(ip("10.244.1.9"), Protocol::Tcp, 8080)].into(),
            peers: vec!["10.244.3.0/24".parse().unwrap()],
        });
        let r = render(&regrouped);
        let done = nft.apply(&r, false).unwrap();
        assert!(
            !done.replaced && done.regrouped && done.added == 2,
            "the port group's two elements: {done:?}"
        );
        assert_eq!(read_back().unwrap(), rendered_sets(&r), "the sets are exactly the new ones");
        let got = listing();
        assert!(!got.contains("inp_0000000000000001"), "the gone group's peers are deleted:\n{got}");
        assert!(
            got.contains("ip daddr . meta l4proto . th dport @ins_0000000000000005 ip saddr @inp_0000000000000005 return\n\t\tip daddr @int_"),
            "the new rule, in order:\n{got}"
        );
        assert_eq!(
            got.matches("return").count(),
            (7 + 6) + 2 * 2 * 15,
            "in_exact, in_allow, two port groups, one group, out_exact, out_allow, \
             and in IPv6 the same with one port group; each allow set in 16 shards:\n{got}"
        );

        // Groups only go (no element changes anywhere else): still applied.
        let mut fewer = regrouped.clone();
        fewer.v4.ingress.port_groups.retain(|g| g.key != 5);
        let r = render(&fewer);
        let done = nft.apply(&r, false).unwrap();
        assert!(done.regrouped && done.added + done.deleted == 0, "{done:?}");
        assert_eq!(read_back().unwrap(), rendered_sets(&r));
        assert!(!listing().contains("_0000000000000005"), "the port group's rule and sets are gone");

        // A table the kernel refuses (a rule naming a set that does not exist):
        // the error says why, and the last good table stays.
        let mut broken = render(&ir());
        let bad_rule = serde_json::json!({"rule": {"family": "inet", "table": "weft", "chain": "ingress",
            "expr": [{"match": {"left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@missing", "op": "=="}}, {"accept": null}]}});
        broken.skeleton.push(serde_json::from_value(bad_rule).unwrap());
        let err = nft.apply(&broken, true).unwrap_err().to_string();
        assert!(err.contains("nft") && err.to_lowercase().contains("no such file"), "{err}");
        assert_eq!(read_back().unwrap(), rendered_sets(&r), "the last good table is in force");

        nft.cleanup().unwrap();
        assert!(listing().is_empty());
        nft.cleanup().unwrap();
    })
    .expect("a network namespace of its own");
}

/// `ir()` with an element more of every kind of set the renderer writes: an
/// address (local, in_iso, a group's pods), a concatenation (a port group's
/// targets), an interval of addresses next to an existing one (the peers) and
/// a concatenation with ranges (ports 80-81 merge into one element).
fn ir_more() -> PolicyIr {
    let mut ir = ir();
    let b = ip("10.244.1.9");
    ir.v4.local.insert(b);
    ir.v4.ingress.isolated.insert(b);
    ir.v4.ingress.triples.insert((b, Protocol::Tcp, 80, "10.244.4.0/24".parse().unwrap()));
    ir.v4.ingress.triples.insert((b, Protocol::Tcp, 81, "10.244.4.0/24".parse().unwrap()));
    ir.v4.egress.triples.insert((ip("10.244.1.3"), Protocol::Udp, 53, "0.0.0.0/0".parse().unwrap()));
    for g in &mut ir.v4.ingress.groups {
        g.targets.insert(b);
    }
    let peers = vec!["172.31.0.0/24".parse().unwrap(), "172.31.1.0/24".parse().unwrap()];
    ir.v4.ingress.groups[1].peers = peers.clone();
    ir.v4.ingress.port_groups[0].peers = peers;
    ir.v4.ingress.port_groups[0].targets.insert((b, Protocol::Sctp, 9000));
    let b6: std::net::Ipv6Addr = "fd00:244:1::9".parse().unwrap();
    ir.v6.local.insert(b6);
    ir.v6.ingress.isolated.insert(b6);
    ir.v6.ingress.triples.insert((b6, Protocol::Tcp, 80, "fd00:244:4::/64".parse().unwrap()));
    ir.v6.ingress.triples.insert((b6, Protocol::Tcp, 81, "fd00:244:4::/64".parse().unwrap()));
    ir.v6.ingress.triples.insert((b6, Protocol::Udp, 53, "fd00:244:4::1/128".parse().unwrap()));
    ir.v6.ingress.groups[0].targets.insert(b6);
    ir.v6.ingress.port_groups[0].targets.insert((b6, Protocol::Sctp, 9000));
    ir.v6.ingress.port_groups[0].peers.push("fd00:32::/64".parse().unwrap());
    ir
}

/// Runs `f` in a netns of its own (root; skips otherwise) on `ir()`'s table.
fn with_table(f: impl FnOnce(&mut Nft, NftRendered) + Send) {
    if !root() {
        return;
    }
    run_in_new(|| {
        let mut nft = Nft::new();
        let base = render(&ir());
        nft.apply(&base, false).unwrap();
        f(&mut nft, base)
    })
    .expect("a netns of its own")
}

#[test]
fn element_deltas_go_over_netlink_and_read_back() {
    with_table(|nft, base| {
        let more = render(&ir_more());
        assert_eq!(more.skeleton, base.skeleton, "an element-only change");
        let done = nft.apply(&more, false).unwrap();
        assert!(done.netlink && !done.replaced && done.deleted == 0, "{done:?}");
        assert_eq!(
            done.added, 15,
            "local, in_iso, in_allow, out_allow, 2 group pods, peers, port target; \
             local6, in_iso6, in_allow6, in_exact6, group pod, peers, port target: {done:?}"
        );
        assert_eq!(read_back().unwrap(), rendered_sets(&more), "what netlink added is what nft lists");
        assert!(listing().contains("10.244.1.9 . tcp . 80-81 . 10.244.4.0/24"), "{}", listing());
        assert!(listing().contains("fd00:244:1::9 . tcp . 80-81 . fd00:244:4::/64"), "{}", listing());

        let done = nft.apply(&base, false).unwrap();
        assert!(done.netlink && done.added == 0 && done.deleted == 15, "{done:?}");
        assert_eq!(read_back().unwrap(), rendered_sets(&base), "and what it deleted is gone");
    });
}

#[test]
fn a_refused_batch_changes_nothing() {
    with_table(|_, base| {
        let (new, absent) =
            (Elem::from(FamilyElem::Addr(ip("10.244.1.77"))), Elem::from(FamilyElem::Addr(ip("10.9.9.9"))));
        let deltas = [
            SetDelta { set: "local", op: Op::Add, elems: vec![&new] },
            SetDelta { set: "in_iso", op: Op::Delete, elems: vec![&absent] },
        ];
        let mut sock = NftSocket::open().unwrap();
        let err = sock.apply(TABLE, &deltas, netlink::DEADLINE).unwrap_err();
        assert!(
            matches!(&err, NetlinkError::Refused { op: Op::Delete, set, errno: Errno::ENOENT, .. } if set == "in_iso"),
            "{err}"
        );
        assert_eq!(read_back().unwrap(), rendered_sets(&base), "the add before the refused delete is undone");

        // The same socket goes on: the refused batch's late answers are not taken for the next one's.
        sock.apply(TABLE, &deltas[..1], netlink::DEADLINE).unwrap();
        assert!(read_back().unwrap()["local"].contains(&new.json()), "the next batch lands");
    });
}

#[test]
fn a_delta_too_large_for_one_send_goes_through_nft() {
    with_table(|nft, _| {
        let mut big = ir();
        let peer: ipnetwork::Ipv4Network = "10.244.2.0/24".parse().unwrap();
        for i in 0..3000u32 {
            big.v4.ingress.triples.insert((Ipv4Addr::from(0x0af5_0000 + i), Protocol::Tcp, 80, peer));
        }
        let r = render(&big);
        let done = nft.apply(&r, false).unwrap();
        assert!(!done.netlink && done.added == 3000, "{done:?}");
        assert_eq!(read_back().unwrap(), rendered_sets(&r));
    });
}

/// The read-back over netlink holds exactly the keys of the rendered
/// elements, whether `nft` wrote them (a full replace) or netlink (a
/// delta); its skeleton fingerprint is stable until a rule changes.
#[test]
fn the_netlink_read_back_is_the_rendered_table() {
    use weft_agent::nft::readback::{keys, read};
    let expect = |r: &NftRendered| -> BTreeMap<String, _> {
        r.sets.iter().map(|(name, elems)| (name.clone(), keys(elems))).collect()
    };
    with_table(|nft, base| {
        let first = read(TABLE, true).unwrap();
        assert_eq!(first.sets, expect(&base), "after nft wrote the table");
        assert_eq!(read(TABLE, true).unwrap().skeleton, first.skeleton, "stable");
        let more = render(&ir_more());
        assert!(nft.apply(&more, false).unwrap().netlink);
        let after = read(TABLE, true).unwrap();
        assert_eq!(after.sets, expect(&more), "after a netlink delta");
        assert_eq!(after.skeleton, first.skeleton, "elements are not the skeleton");
        let rule = ["add", "rule", "inet", TABLE, "egress", "ip", "daddr", "10.9.9.9", "accept"];
        assert!(std::process::Command::new("nft").args(rule).status().unwrap().success());
        assert_ne!(read(TABLE, true).unwrap().skeleton, first.skeleton, "a rule added behind weft's back");
    });
}

/// A delta whose deletions from a ClusterNetworkPolicy set would cost the
/// kernel more than writing the set anew writes it anew, with the rules
/// that look it up, in one transaction: the kernel then holds exactly the
/// rendered elements and the same rules, and the resync's check finds it
/// intact. A small delta to the same set stays an element patch, and so
/// do NetworkPolicy's sets, whatever their deletions.
#[test]
fn a_cluster_set_cheaper_to_write_again_is_written_again() {
    use weft_agent::model::Action;
    use weft_agent::policy::{Cell, Class, Region};
    let a = ip("10.244.1.2");
    // a is denied UDP 1000 from n /30s by an Admin CNP, and admitted UDP
    // 2000 from as many others by NetworkPolicy.
    let with_peers = |n: u32, np: u32| {
        let mut ir = ir();
        let nets = |from: u32, n: u32| -> Vec<ipnetwork::Ipv4Network> {
            (0..n).map(|i| ipnetwork::Ipv4Network::new(Ipv4Addr::from(from + i * 4), 30).unwrap()).collect()
        };
        let cells = vec![Cell::Ports(Protocol::Udp, 1000, 1000)];
        let deny = Region { action: Action::Deny, cells, peers: nets(0x0a0a_0000, n) };
        ir.v4.cluster.admin_ingress =
            vec![Class { subjects: [a].into(), regions: vec![deny], unknown: vec![], key: 1 }];
        for peer in nets(0x0a0b_0000, np) {
            ir.v4.ingress.triples.insert((a, Protocol::Udp, 2000, peer));
        }
        ir
    };
    let chain = || {
        let out = std::process::Command::new("nft")
            .args(["list", "chain", "inet", TABLE, "cnp_ain_2"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    with_table(|nft, _| {
        nft.apply(&render(&with_peers(600, 600)), false).unwrap();
        let rules = chain();
        assert!(rules.contains("@cnp_ain_deny_2"), "{rules}");

        let done = nft.apply(&render(&with_peers(590, 600)), false).unwrap();
        assert!(done.netlink && done.rewritten == 0 && done.deleted == 10, "a few deletions: {done:?}");
        let done = nft.apply(&render(&with_peers(590, 100)), false).unwrap();
        assert!(done.netlink && done.rewritten == 0 && done.deleted == 500, "NetworkPolicy's: {done:?}");

        let rest = render(&with_peers(100, 100));
        let done = nft.apply(&rest, false).unwrap();
        assert_eq!((done.rewritten, done.deleted, done.netlink), (1, 490, false), "{done:?}");
        assert_eq!(
            read_back().unwrap(),
            rendered_sets(&rest),
            "the set written again holds what was rendered"
        );
        assert_eq!(chain(), rules, "the chain that looks it up is as it was");
        let (_, intact) = nft.check().expect("a check");
        assert!(intact(), "the resync's check finds the table as written");
    });
}
