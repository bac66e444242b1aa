//! Kernel I/O against the real kernel. Each test skips unless root, then moves its
//! own thread into a fresh netns (common::isolate) before touching anything; the
//! root netns is only ever read, to prove it did not change.

mod common;

use std::net::IpAddr;
use std::time::Instant;

use common::{fd_inode, isolate, lines_with, ns_inode, tool_output, PodNs};
use ipnetwork::IpNetwork;
use rtnetlink::LinkVeth;
use weft_netkit::addr::{self, Family, RouteEntry};
use weft_netkit::bridge::{ensure_bridge, set_alias};
use weft_netkit::kernel_error::KernelError;
use weft_netkit::link::{self, delete_link, get_link, hairpin};
use weft_netkit::masquerade::{self, MASQ_CHAIN};
use weft_netkit::netns::{connect_current, connect_in, run_in, NetNs};
use weft_netkit::sysctl::{ensure_sysctl, read_sysctl};
use weft_netkit::veth::{create_veth, set_hairpin};

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

#[test]
fn threads_inherit_netns_and_sockets_stay_where_opened() {
    let Some(t) = isolate("threads_inherit_netns_and_sockets_stay_where_opened") else { return };
    let me = ns_inode("/proc/thread-self/ns/net");
    assert_ne!(me, fd_inode(&t.root));
    // A thread spawned by the unshared thread starts in the unshared netns, not root.
    let child = std::thread::spawn(|| ns_inode("/proc/thread-self/ns/net")).join().unwrap();
    assert_eq!(child, me);
    // /proc/self is the thread-group leader (libtest's main thread): still root.
    assert_eq!(ns_inode("/proc/self/ns/net"), fd_inode(&t.root));

    let pod = PodNs::new();
    let pod_ns = pod.open();
    let pod_ino = fd_inode(&pod_ns);
    assert_ne!(pod_ino, me);
    // run_in's thread is in the pod netns, and so is a thread it spawns.
    let (inside, grandchild) = run_in(&pod_ns, || {
        let g = std::thread::spawn(|| ns_inode("/proc/thread-self/ns/net")).join().unwrap();
        (ns_inode("/proc/thread-self/ns/net"), g)
    })
    .unwrap();
    assert_eq!((inside, grandchild), (pod_ino, pod_ino));
    // ...and the calling thread did not move.
    assert_eq!(ns_inode("/proc/thread-self/ns/net"), me);

    t.rt.block_on(async {
        let node = connect_current().unwrap();
        let pod_h = connect_in(&pod_ns).unwrap();
        // The pod socket outlives its (exited) thread and still talks to the pod netns.
        let v = LinkVeth::new("veth-node", "veth-node-p").build();
        node.link().add(v).execute().await.unwrap();
        assert!(get_link(&node, "veth-node").await.unwrap().is_some());
        assert!(get_link(&pod_h, "veth-node").await.unwrap().is_none());
        assert!(get_link(&pod_h, "lo").await.unwrap().is_some());
    });
}

#[test]
fn netns_open_errors() {
    let Some(_t) = isolate("netns_open_errors") else { return };
    let missing = NetNs::open("/run/netns/weft-test-does-not-exist").unwrap_err();
    assert!(matches!(missing, KernelError::NetnsNotFound { .. }), "{missing:?}");
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("not-a-netns");
    std::fs::write(&plain, b"").unwrap();
    let e = NetNs::open(&plain).unwrap_err();
    assert!(matches!(e, KernelError::NotANetns { .. }), "{e:?}");
    assert!(missing.is_gone() && e.is_gone());
    // A FIFO: opening it for reading would wait for a writer; NetNs::open must not.
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let t = std::time::Instant::now();
    let e = NetNs::open(&fifo).unwrap_err();
    assert!(matches!(e, KernelError::NotANetns { .. }), "{e:?}");
    assert!(t.elapsed() < std::time::Duration::from_secs(1), "open took {:?}", t.elapsed());
    // A namespace file of another kind.
    let e = NetNs::open("/proc/self/ns/mnt").unwrap_err();
    assert!(e.to_string().contains("a mount namespace"), "{e}");
    // The same netns opened twice is the same; a fresh one is not.
    let (a, b) = (NetNs::current().unwrap(), NetNs::open("/proc/thread-self/ns/net").unwrap());
    assert!(a.same_as(&b).unwrap());
    let other = weft_netkit::netns::run_in_new(NetNs::current).unwrap().unwrap();
    assert!(!a.same_as(&other).unwrap());
}

#[test]
fn ensure_bridge_is_idempotent() {
    let Some(t) = isolate("ensure_bridge_is_idempotent") else { return };
    t.rt.block_on(async {
        let h = connect_current().unwrap();
        let gw = net("10.250.0.1/24");
        let started = Instant::now();
        let b1 = ensure_bridge(&h, "weft0", 1400, Some(gw)).await.unwrap();
        let created = started.elapsed();
        let started = Instant::now();
        let b2 = ensure_bridge(&h, "weft0", 1400, Some(gw)).await.unwrap();
        let again = started.elapsed();
        eprintln!("ensure_bridge: create {created:?}, already there {again:?}");
        assert_eq!(b1.index, b2.index);
        let b = get_link(&h, "weft0").await.unwrap().unwrap();
        assert_eq!((b.kind.as_deref(), b.mtu, b.up), (Some("bridge"), 1400, true));
        assert_eq!(addr::list_addresses(&h, b.index).await.unwrap(), vec![gw]);

        // Other addresses survive; MTU drift and admin-down are repaired.
        addr::add_address(&h, b.index, net("10.251.0.1/24")).await.unwrap();
        link::set_mtu(&h, b.index, 1300).await.unwrap();
        let down = rtnetlink::LinkUnspec::new_with_index(b.index).down().build();
        h.link().change(down).execute().await.unwrap();
        let b3 = ensure_bridge(&h, "weft0", 1400, Some(gw)).await.unwrap();
        assert_eq!((b3.mtu, b3.up), (1400, true));
        let b = get_link(&h, "weft0").await.unwrap().unwrap();
        assert_eq!((b.mtu, b.up), (1400, true));
        let mut addrs = addr::list_addresses(&h, b.index).await.unwrap();
        addrs.sort();
        assert_eq!(addrs, vec![gw, net("10.251.0.1/24")]);

        // The config stamp round-trips through the same GETLINK.
        assert_eq!(b.alias, None);
        set_alias(&h, b.index, "weft:cfg=0123456789abcdef").await.unwrap();
        let b = get_link(&h, "weft0").await.unwrap().unwrap();
        assert_eq!(b.alias.as_deref(), Some("weft:cfg=0123456789abcdef"));

        // Exactly one bridge exists.
        let all: Vec<_> =
            futures::TryStreamExt::try_collect::<Vec<_>>(h.link().get().execute()).await.unwrap();
        let bridges =
            all.iter().map(link::LinkState::from_message).filter(|l| l.kind.as_deref() == Some("bridge"));
        assert_eq!(bridges.count(), 1);
    });
}

#[test]
fn ensure_bridge_refuses_other_kinds_and_long_names() {
    let Some(t) = isolate("ensure_bridge_refuses_other_kinds_and_long_names") else { return };
    t.rt.block_on(async {
        let h = connect_current().unwrap();
        // (This kernel has no dummy driver; a veth end and an ipip-less "lo" do.)
        h.link().add(LinkVeth::new("weft0", "weft0-peer").build()).execute().await.unwrap();
        let e = ensure_bridge(&h, "weft0", 1500, None).await.unwrap_err();
        assert!(
            matches!(&e, KernelError::NotABridge { name, kind } if name == "weft0" && kind == "veth"),
            "{e:?}"
        );
        let e = ensure_bridge(&h, "lo", 1500, None).await.unwrap_err();
        assert!(matches!(&e, KernelError::NotABridge { name, .. } if name == "lo"), "{e:?}");
        let e = ensure_bridge(&h, "weft-bridge-name-16", 1500, None).await.unwrap_err();
        assert!(matches!(e, KernelError::NameTooLong { .. }), "{e:?}");
        // Nothing was changed on the impostors.
        let impostor = get_link(&h, "weft0").await.unwrap().unwrap();
        assert_eq!((impostor.kind.as_deref(), impostor.mtu), (Some("veth"), 1500));
    });
}

#[test]
fn create_veth_puts_peer_in_pod_netns() {
    let Some(t) = isolate("create_veth_puts_peer_in_pod_netns") else { return };
    let pod = PodNs::new();
    let pod_ns = pod.open();
    t.rt.block_on(async {
        let h = connect_current().unwrap();
        let br = ensure_bridge(&h, "weft0", 1400, Some(net("10.250.0.1/24"))).await.unwrap();
        let started = Instant::now();
        let pair = create_veth(&h, "vethweft0", "eth0", &pod_ns, 1400, br.index, true).await.unwrap();
        eprintln!("create_veth (create + hairpin + read back): {:?}", started.elapsed());

        let host = &pair.host;
        assert_eq!(host.name, "vethweft0");
        assert_eq!((host.controller, host.mtu, host.up), (Some(br.index), 1400, true));
        assert_eq!(host.hairpin, Some(true));
        assert!(hairpin(&h, host.index).await.unwrap());
        // The peer was never in the node netns.
        assert!(get_link(&h, "eth0").await.unwrap().is_none());

        let started = Instant::now();
        let pod_h = connect_in(&pod_ns).unwrap();
        eprintln!("connect_in (thread + setns + socket): {:?}", started.elapsed());
        let peer = get_link(&pod_h, "eth0").await.unwrap().expect("eth0 in pod netns");
        assert_eq!(peer.index, pair.peer_index);
        assert_eq!(peer.mac, Some(pair.peer_mac));
        assert_eq!((peer.mtu, peer.up, peer.kind.as_deref()), (1400, false, Some("veth")));
        link::set_up(&pod_h, peer.index).await.unwrap();
        assert!(get_link(&pod_h, "eth0").await.unwrap().unwrap().up);
        assert_eq!(pair.peer_mac[0] & 0x03, 0x02, "locally administered unicast");

        // The bridge keeps its own MAC when ports join (it was set explicitly).
        assert_eq!(get_link(&h, "weft0").await.unwrap().unwrap().mac, br.mac);

        // Hairpin can be switched off and on again; read back each time.
        set_hairpin(&h, host.index, false).await.unwrap();
        assert!(!hairpin(&h, host.index).await.unwrap());
        set_hairpin(&h, host.index, true).await.unwrap();
        assert!(hairpin(&h, host.index).await.unwrap());

        // Same host name again: LinkExists naming the host end.
        let e = create_veth(&h, "vethweft0", "eth1", &pod_ns, 1400, br.index, true).await.unwrap_err();
        assert!(matches!(&e, KernelError::LinkExists { name } if name == "vethweft0"), "{e:?}");
        // Same peer name in the pod netns: LinkExists naming the peer, nothing left behind.
        let e = create_veth(&h, "vethweft1", "eth0", &pod_ns, 1400, br.index, true).await.unwrap_err();
        assert!(matches!(&e, KernelError::LinkExists { name } if name == "eth0"), "{e:?}");
        assert!(get_link(&h, "vethweft1").await.unwrap().is_none());
        assert!(get_link(&pod_h, "eth1").await.unwrap().is_none());
        // The peer name only has to be free in the pod netns: "weft0" is the node's bridge.
        let pair2 = create_veth(&h, "vethweft2", "weft0", &pod_ns, 1400, br.index, true).await.unwrap();
        assert_eq!(get_link(&pod_h, "weft0").await.unwrap().unwrap().index, pair2.peer_index);
        assert_eq!(get_link(&h, "weft0").await.unwrap().unwrap().kind.as_deref(), Some("bridge"));
    });
}

#[test]
fn fifty_veths_on_one_bridge_are_created_and_deleted() {
    let Some(t) = isolate("fifty_veths") else { return };
    let pod = PodNs::new();
    let pod_ns = pod.open();
    t.rt.block_on(async {
        let h = connect_current().unwrap();
        let br = ensure_bridge(&h, "weft0", 1500, None).await.unwrap();
        let n = 50;
        let started = Instant::now();
        for i in 0..n {
            create_veth(&h, &format!("vethw{i}"), &format!("eth{i}"), &pod_ns, 1500, br.index, true)
                .await
                .unwrap();
        }
        let per = started.elapsed() / n;
        let ports = |links: Vec<weft_netkit::link::LinkState>| {
            links.iter().filter(|l| l.controller == Some(br.index)).count()
        };
        assert_eq!(ports(weft_netkit::link::list_links(&h).await.unwrap()), n as usize);
        let started = Instant::now();
        for i in 0..n {
            assert!(delete_link(&h, &format!("vethw{i}")).await.unwrap());
        }
        let del = started.elapsed() / n;
        assert_eq!(ports(weft_netkit::link::list_links(&h).await.unwrap()), 0);
        // Figures for the curious; the benchmark (`make bench`) is where they count.
        eprintln!(
            "create_veth+hairpin+readback: {per:?} per pair; delete_link: {del:?} per pair ({n} pairs)"
        );
    });
}

#[test]
fn addresses_and_routes_in_pod_netns() {
    let Some(t) = isolate("addresses_and_routes_in_pod_netns") else { return };
    let pod = PodNs::new();
    let pod_ns = pod.open();
    t.rt.block_on(async {
        let h = connect_current().unwrap();
        let br = ensure_bridge(&h, "weft0", 1500, Some(net("10.250.0.1/24"))).await.unwrap();
        let pair = create_veth(&h, "vethweft0", "eth0", &pod_ns, 1500, br.index, true).await.unwrap();
        let p = connect_in(&pod_ns).unwrap();
        let idx = pair.peer_index;
        // IPv4 installs the connected route (needed by the gateway) only on an up link.
        link::set_up(&p, idx).await.unwrap();
        // Each address is added twice: the second add must be a no-op.
        let (a4, a6) = (net("10.250.0.5/24"), net("fd00:250::5/64"));
        for _ in 0..2 {
            addr::add_address(&p, idx, a4).await.unwrap();
            addr::add_address(&p, idx, a6).await.unwrap();
        }
        let addrs = addr::list_addresses(&p, idx).await.unwrap();
        assert!(addrs.contains(&a4) && addrs.contains(&a6), "{addrs:?}");
        assert_eq!(addrs.iter().filter(|a| **a == a4).count(), 1);

        let gw4: IpAddr = "10.250.0.1".parse().unwrap();
        let gw6: IpAddr = "fd00:250::1".parse().unwrap();
        for _ in 0..2 {
            addr::add_route(&p, net("0.0.0.0/0"), Some(gw4), Some(idx)).await.unwrap();
            addr::add_route(&p, net("::/0"), Some(gw6), Some(idx)).await.unwrap();
            // A host bit in dst is masked off, as `ip route` does.
            addr::add_route(&p, net("10.96.0.7/12"), None, Some(idx)).await.unwrap();
        }
        let r4 = addr::list_routes(&p, Family::V4).await.unwrap();
        let want = |dst: &str, gw: Option<IpAddr>| RouteEntry { dst: net(dst), gw, oif: Some(idx) };
        assert!(r4.contains(&want("0.0.0.0/0", Some(gw4))), "{r4:?}");
        assert!(r4.contains(&want("10.250.0.0/24", None)), "{r4:?}");
        assert!(r4.contains(&want("10.96.0.0/12", None)), "{r4:?}");
        assert_eq!(r4.len(), 3, "{r4:?}");
        let r6 = addr::list_routes(&p, Family::V6).await.unwrap();
        assert!(r6.contains(&want("::/0", Some(gw6))), "{r6:?}");
        // Nothing of this reached the node netns.
        let node_routes = addr::list_routes(&h, Family::V4).await.unwrap();
        assert!(node_routes.iter().all(|r| r.gw.is_none()), "{node_routes:?}");

        assert!(addr::del_address(&p, idx, a4).await.unwrap());
        assert!(!addr::del_address(&p, idx, a4).await.unwrap());
    });
}

#[test]
fn delete_link_twice() {
    let Some(t) = isolate("delete_link_twice") else { return };
    let pod = PodNs::new();
    let pod_ns = pod.open();
    t.rt.block_on(async {
        let h = connect_current().unwrap();
        let br = ensure_bridge(&h, "weft0", 1500, None).await.unwrap();
        create_veth(&h, "vethweft0", "eth0", &pod_ns, 1500, br.index, true).await.unwrap();
        assert!(delete_link(&h, "vethweft0").await.unwrap());
        assert!(!delete_link(&h, "vethweft0").await.unwrap());
        // Deleting the host end took the pod end with it.
        let p = connect_in(&pod_ns).unwrap();
        assert!(get_link(&p, "eth0").await.unwrap().is_none());
        // And from the pod side: deleting eth0 removes the host end.
        create_veth(&h, "vethweft0", "eth0", &pod_ns, 1500, br.index, true).await.unwrap();
        assert!(delete_link(&p, "eth0").await.unwrap());
        assert!(get_link(&h, "vethweft0").await.unwrap().is_none());
        assert!(!delete_link(&p, "eth0").await.unwrap());
    });
}

#[test]
fn sysctls_change_only_the_calling_threads_netns() {
    let Some(t) = isolate("sysctls_change_only_the_calling_threads_netns") else { return };
    let key = "net/ipv4/ip_forward";
    let root_before = run_in(&t.root, || read_sysctl(key)).unwrap().unwrap();
    let pod = PodNs::new();
    let pod_ns = pod.open();

    // Start from the opposite of root, so a leak to root would be visible.
    let want = if root_before == "1" { "0" } else { "1" };
    assert!(ensure_sysctl(key, want).unwrap());
    assert!(!ensure_sysctl(key, want).unwrap(), "second write must be a no-op");
    assert_eq!(read_sysctl(key).unwrap(), want);
    // A pod netns has its own value, changed only through run_in.
    let pod_val = run_in(&pod_ns, || read_sysctl(key)).unwrap().unwrap();
    assert_eq!(pod_val, root_before, "a new netns inherits init_net's ipv4 conf");
    assert!(run_in(&pod_ns, || ensure_sysctl("net/ipv4/conf/all/rp_filter", "0")).unwrap().is_ok());

    let e = ensure_sysctl("net/ipv4/does_not_exist", "1").unwrap_err();
    assert!(matches!(&e, KernelError::Sysctl { name, .. } if name == "net/ipv4/does_not_exist"), "{e}");
    assert!(e.to_string().contains("net/ipv4/does_not_exist"));

    let root_after = run_in(&t.root, || read_sysctl(key)).unwrap().unwrap();
    assert_eq!(root_after, root_before, "root netns sysctl changed");
}

/// The plain `iptables`, whatever mode it is.
const PLAIN: masquerade::MasqBackend = masquerade::MasqBackend::Iptables(None);

#[test]
fn masquerade_is_idempotent_and_torn_down() {
    let Some(t) = isolate("masquerade_is_idempotent_and_torn_down") else { return };
    if weft_netkit::tool::find_tool("iptables-restore").is_err() {
        weft_test_support::skip(
            "masquerade_is_idempotent_and_torn_down",
            "iptables-restore is not installed",
        );
        return;
    }
    let comment = "weft test-net masquerade";
    let root_before =
        run_in(&t.root, || lines_with(&tool_output("iptables-save", &["-t", "nat"]), "WEFT")).unwrap();

    let subnets = [net("10.250.0.0/24"), net("fd00:250::/64")];
    let cluster = &[net("10.250.0.0/16")][..];
    let started = Instant::now();
    masquerade::ensure_masquerade(PLAIN, &subnets, cluster, comment).unwrap();
    let first = started.elapsed();
    let started = Instant::now();
    masquerade::ensure_masquerade(PLAIN, &subnets, cluster, comment).unwrap();
    eprintln!("ensure_masquerade (v4+v6): first {first:?}, again {:?}", started.elapsed());

    let saved = tool_output("iptables-save", &["-t", "nat"]);
    let want = vec![
        format!(":{MASQ_CHAIN} - [0:0]"),
        format!("-A POSTROUTING -j {MASQ_CHAIN}"),
        format!("-A {MASQ_CHAIN} -s 10.250.0.0/24 -d 10.250.0.0/16 -m comment --comment \"{comment}\" -j RETURN"),
        format!("-A {MASQ_CHAIN} -s 10.250.0.0/24 ! -d 224.0.0.0/4 -m comment --comment \"{comment}\" -j MASQUERADE"),
    ];
    assert_eq!(lines_with(&saved, "WEFT"), want, "{saved}");
    let saved6 = tool_output("ip6tables-save", &["-t", "nat"]);
    assert_eq!(lines_with(&saved6, "WEFT").len(), 4, "{saved6}");
    assert_eq!(lines_with(&saved6, "-A POSTROUTING -j WEFT").len(), 1, "{saved6}");

    masquerade::teardown_masquerade().unwrap();
    masquerade::teardown_masquerade().unwrap();
    assert!(lines_with(&tool_output("iptables-save", &["-t", "nat"]), "WEFT").is_empty());
    assert!(lines_with(&tool_output("ip6tables-save", &["-t", "nat"]), "WEFT").is_empty());

    let root_after =
        run_in(&t.root, || lines_with(&tool_output("iptables-save", &["-t", "nat"]), "WEFT")).unwrap();
    assert_eq!(root_after, root_before, "root netns nat table changed");
    assert!(root_after.iter().all(|l| !l.contains(comment)));
}

#[test]
fn nft_masquerade_is_one_table_replaced_whole_and_torn_down() {
    use masquerade::MasqBackend::Nftables;
    let Some(t) = isolate("nft_masquerade_is_one_table_replaced_whole_and_torn_down") else { return };
    let comment = "weft test-net masquerade";
    let root_before = run_in(&t.root, || tool_output("nft", &["list", "tables"])).unwrap();
    let (subnets, cluster) = ([net("10.250.0.0/24"), net("fd00:250::/64")], &[net("10.250.0.0/16")][..]);
    assert!(!masquerade::masquerade_present(Nftables, &subnets, cluster, comment).unwrap());
    masquerade::ensure_masquerade(Nftables, &subnets, cluster, comment).unwrap();
    masquerade::ensure_masquerade(Nftables, &subnets, cluster, comment).unwrap();
    assert!(masquerade::masquerade_present(Nftables, &subnets, cluster, comment).unwrap());
    let listed = tool_output("nft", &["list", "table", "inet", "weft-masq"]);
    assert_eq!(lines_with(&listed, " masquerade comment").len(), 2, "one per subnet, not doubled: {listed}");
    assert!(listed.contains("ip saddr 10.250.0.0/24 ip daddr 10.250.0.0/16 return"), "{listed}");
    assert!(listed.contains("type nat hook postrouting priority srcnat; policy accept;"), "{listed}");
    // The plain iptables holds nothing of it; a different subnet replaces it.
    assert!(lines_with(&tool_output("iptables-save", &["-t", "nat"]), "WEFT").is_empty());
    masquerade::ensure_masquerade(Nftables, &[net("10.251.0.0/24")], cluster, comment).unwrap();
    assert!(!masquerade::masquerade_present(Nftables, &subnets, cluster, comment).unwrap());
    // Clearing the other backends leaves it; a full teardown removes it, twice.
    masquerade::teardown_masquerade_except(Some(Nftables)).unwrap();
    assert!(tool_output("nft", &["list", "tables"]).contains("weft-masq"));
    masquerade::teardown_masquerade().unwrap();
    masquerade::teardown_masquerade().unwrap();
    assert!(!tool_output("nft", &["list", "tables"]).contains("weft-masq"));
    assert_eq!(run_in(&t.root, || tool_output("nft", &["list", "tables"])).unwrap(), root_before);
}

/// A node netns holding legacy rules reads as legacy, one holding nft rules as
/// nft: the mode the host's own rules are in (iptables-wrapper's rule).
#[test]
fn iptables_mode_follows_the_rules_the_netns_holds() {
    use weft_netkit::iptables_mode::{detect, IptablesMode};
    let Some(_t) = isolate("iptables_mode_follows_the_rules_the_netns_holds") else { return };
    for (mode, tool) in [(IptablesMode::Legacy, "iptables-legacy"), (IptablesMode::Nft, "iptables-nft")] {
        let node = PodNs::new();
        let ns = node.open();
        let got = run_in(&ns, || {
            if weft_netkit::tool::find_tool(tool).is_err() {
                return None;
            }
            tool_output(tool, &["-w", "5", "-A", "INPUT", "-s", "192.0.2.1/32", "-j", "ACCEPT"]);
            Some(detect().unwrap())
        })
        .unwrap();
        match got {
            None => {
                weft_test_support::skip(&weft_test_support::this_test(), format!("{tool} is not installed"))
            }
            Some(got) => assert_eq!(got, mode, "a netns whose rules were written by {tool}"),
        }
    }
}
