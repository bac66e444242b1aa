//! The nftables backend's interval sets are split in shards by the low bits
//! of the local pod's address, each looked up from a chain that a verdict map
//! picks. With real packets: every shard admits what its pods' cells allow
//! and nothing else, in both directions and families, when written in full
//! and when patched; a cell deleted from its shard stops admitting.

#[path = "support/pods.rs"]
mod pods;

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};
use weft_agent::model::Protocol;
use weft_agent::nft::render::{pod_shard, POD_SHARDS};
use weft_agent::nft::{render, Nft};
use weft_agent::policy::{Dirty, DirtyDirection, FamilyDirty, PolicyIr};
use weft_netkit::netns::run_in_new;

use pods::{addr4, addr6, bridge, PodNs};

/// True when root; otherwise the test skips (fails under CI).
fn root() -> bool {
    weft_test_support::root_or_skip(&weft_test_support::this_test(), "network namespaces of its own")
}

/// 10.244.1.16 .. 10.244.1.31: one target in each shard.
const TARGETS: std::ops::Range<u8> = 16..32;
/// The peer c (10.244.1.4) is in the targets' allowed network, d (.8) is not.
const C: u8 = 4;
const D: u8 = 8;
/// e (.5) is isolated for egress and may reach the targets only.
const E: u8 = 5;
/// IPv6 targets fd00:244:1::10, ::13, ::39 (`addr6` reads hex digits):
/// shards 0, 3, 9. (Each pod has both families: their IPv4 addresses are
/// outside `TARGETS`.)
const TARGETS6: [u8; 3] = [10, 13, 39];

/// Every target admits TCP 80 from 10.244.1.4/30 (a network, so a cell of
/// an interval set); e may open TCP 80 to 10.244.1.16/28 only.
fn ir() -> PolicyIr {
    let mut ir = PolicyIr::default();
    ir.v4.pod_cidr = Some("10.244.1.0/24".parse().unwrap());
    ir.v4.local = TARGETS.chain([C, D, E]).map(addr4).collect();
    let peers: Ipv4Network = "10.244.1.4/30".parse().unwrap();
    for t in TARGETS.map(addr4) {
        ir.v4.ingress.isolated.insert(t);
        ir.v4.ingress.triples.insert((t, Protocol::Tcp, 80, peers));
    }
    ir.v4.egress.isolated.insert(addr4(E));
    ir.v4.egress.triples.insert((addr4(E), Protocol::Tcp, 80, "10.244.1.16/28".parse().unwrap()));

    ir.v6.pod_cidr = Some("fd00:244:1::/64".parse().unwrap());
    ir.v6.local = TARGETS6.into_iter().chain([C, D]).map(addr6).collect();
    let peers6: Ipv6Network = "fd00:244:1::4/126".parse().unwrap();
    for t in TARGETS6.map(addr6) {
        ir.v6.ingress.isolated.insert(t);
        ir.v6.ingress.triples.insert((t, Protocol::Tcp, 80, peers6));
    }
    ir
}

fn shards4() -> Vec<u8> {
    TARGETS.map(|n| pod_shard::<Ipv4Addr>(addr4(n))).collect()
}

#[test]
fn every_shard_admits_its_pods_cells_and_nothing_else() {
    if !root() {
        return;
    }
    assert_eq!(shards4(), (0..POD_SHARDS).collect::<Vec<_>>(), "one target per shard");
    let shards6: Vec<u8> = TARGETS6.map(|n| pod_shard::<Ipv6Addr>(addr6(n))).to_vec();
    assert_eq!(shards6, [0, 3, 9]);
    run_in_new(|| {
        bridge();
        let targets: Vec<PodNs> = TARGETS.map(|n| PodNs::new(&format!("t{n}"), n)).collect();
        let targets6: Vec<PodNs> = TARGETS6.map(|n| PodNs::new(&format!("s{n}"), n)).into();
        let (c, d, e) = (PodNs::new("c", C), PodNs::new("d", D), PodNs::new("e", E));
        let mut servers = Vec::new();
        for (t, n) in targets.iter().zip(TARGETS) {
            servers.push(t.serve(addr4(n), 80));
        }
        for (t, n) in targets6.iter().zip(TARGETS6) {
            servers.push(t.serve(addr6(n), 80));
        }
        servers.push(c.serve(addr4(C), 80));

        let mut ir = ir();
        let mut nft = Nft::new();
        assert!(nft.apply(&render(&ir), false).unwrap().replaced);
        for n in TARGETS {
            assert!(c.connects(addr4(n), 80), "c reaches 10.244.1.{n} through its shard");
        }
        for n in TARGETS6 {
            assert!(c.connects(addr6(n), 80), "c reaches fd00:244:1::{n} through its shard");
        }
        // A miss in a shard goes on to the groups chain, which drops.
        for n in [16, 23, 31] {
            assert!(!d.connects(addr4(n), 80), "d is outside the cells of 10.244.1.{n}");
        }
        assert!(!d.connects(addr6(TARGETS6[1]), 80), "d is outside the IPv6 cells too");
        assert!(e.connects(addr4(20), 80), "e's egress cell, in e's shard");
        assert!(!e.connects(addr4(C), 80), "and nothing else from e");

        // Two targets lose their cells and one gains a port: patched, each
        // in its own shard.
        for n in [17, 30] {
            ir.v4.ingress.triples.retain(|t| t.0 != addr4(n));
        }
        ir.v4.ingress.triples.insert((addr4(21), Protocol::Tcp, 81, "10.244.1.4/30".parse().unwrap()));
        let _more = targets[5].serve(addr4(21), 81);
        let dirty = Dirty {
            v4: FamilyDirty {
                ingress: DirtyDirection {
                    triples: [17, 21, 30].map(addr4).into(),
                    ..DirtyDirection::default()
                },
                ..FamilyDirty::default()
            },
            ..Dirty::default()
        };
        let done = nft.apply_changes(&ir, &dirty).unwrap().expect("a patch");
        assert!(done.netlink && done.added > 0 && done.deleted > 0, "{done:?}");
        assert!(!c.connects(addr4(17), 80) && !c.connects(addr4(30), 80), "their cells are gone");
        assert!(c.connects(addr4(21), 81) && c.connects(addr4(21), 80), "21 admits both ports");
        assert!(c.connects(addr4(16), 80) && c.connects(addr4(31), 80), "the other shards are as they were");
        nft.cleanup().unwrap();
    })
    .expect("a netns of its own");
}
