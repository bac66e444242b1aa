//! The routing sync by mode against the kernel, in a network namespace of the
//! test's own (root; skips otherwise): vxlan builds `weft.vxlan` with an FDB
//! and neighbour entry, a route and a reply route per other node and the
//! reply rule; a deleted node's entries go, as do stale ones a crashed agent
//! left; auto splits peers by subnet; host-gw removes the overlay.

use std::net::Ipv4Addr;

use weft_agent::agent::routing::{sync_routing, Synced};
use weft_agent::model::{Model, Node};
use weft_agent::overlay::{vtep_mac, Mode, Routing, REPLY_RULE_PRIORITY, REPLY_TABLE, VXLAN_DEVICE};
use weft_agent::route_table::list_weft_routes;
use weft_agent::routes::{Dev, Route, Table, WEFT_PROTO};
use weft_netkit::neighbour::{list_permanent, replace_entry, StaticEntry, Table as Entries};
use weft_netkit::netns::{connect_current, run_in_new};
use weft_netkit::rule::{list_rules, SourceRule};
use weft_netkit::{addr, link};

/// True when root; otherwise the test skips (fails under CI).
fn root() -> bool {
    weft_test_support::root_or_skip(&weft_test_support::this_test(), "a network namespace of its own")
}

fn node(n: u8, ip: &str) -> Node {
    Node {
        name: format!("node-{n}"),
        labels: Default::default(),
        pod_cidr: Some(format!("10.244.{n}.0/24").parse().unwrap()),
        pod_cidr6: None,
        internal_ip: Some(ip.parse().unwrap()),
        addresses: vec![],
        internal_ip6: None,
    }
}

fn model(nodes: &[Node]) -> Model {
    Model { nodes: nodes.iter().map(|n| (n.name.clone(), n.clone())).collect(), ..Model::default() }
}

fn route(table: Table, dst: &str, gw: &str, dev: Dev) -> Route {
    Route { table, dst: dst.parse().unwrap(), gw: gw.parse().unwrap(), dev }
}

fn vtep(ip: &str) -> StaticEntry {
    let ip: Ipv4Addr = ip.parse().unwrap();
    StaticEntry { mac: vtep_mac(ip), ip }
}

/// What the kernel holds of weft's: routes, FDB and neighbour entries, rules.
async fn kernel(h: &rtnetlink::Handle) -> (Vec<Route>, Vec<StaticEntry>, Vec<StaticEntry>, Vec<SourceRule>) {
    let dev = link::get_link(h, VXLAN_DEVICE).await.unwrap().map(|l| l.index);
    let routes = list_weft_routes(h, dev).await.unwrap();
    let (fdb, neigh) = match dev {
        Some(d) => (
            list_permanent(h, Entries::Fdb, d).await.unwrap(),
            list_permanent(h, Entries::Neighbour, d).await.unwrap(),
        ),
        None => (vec![], vec![]),
    };
    (routes, fdb, neigh, list_rules(h, WEFT_PROTO).await.unwrap())
}

/// Runs `test` with a netlink handle in a network namespace of its own (root; skips otherwise).
fn in_netns<F: std::future::Future<Output = ()>>(test: impl FnOnce(rtnetlink::Handle) -> F + Send) {
    if !root() {
        return;
    }
    run_in_new(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async { test(connect_current().unwrap()).await });
    })
    .unwrap();
}

/// Node 1's underlay: eth0 (a veth, up, with `addrs`) and lo up.
async fn underlay(h: &rtnetlink::Handle, addrs: &[&str]) {
    h.link().add(rtnetlink::LinkVeth::new("eth0", "eth0-peer").build()).execute().await.unwrap();
    for name in ["eth0", "eth0-peer", "lo"] {
        let l = link::get_link(h, name).await.unwrap().unwrap();
        link::set_up(h, l.index).await.unwrap();
    }
    let eth0 = link::get_link(h, "eth0").await.unwrap().unwrap().index;
    for a in addrs {
        addr::add_address(h, eth0, a.parse().unwrap()).await.unwrap();
    }
}

fn clean(s: &Synced) {
    assert!(s.errors.is_empty(), "{:?}", s.errors);
}

#[test]
fn modes_build_and_remove_the_overlay() {
    in_netns(|h| async move {
        // The underlay: eth0 with node 1's InternalIP, MTU 1500.
        underlay(&h, &["172.31.0.11/24"]).await;
        let (n1, n2, n3) = (node(1, "172.31.0.11"), node(2, "172.31.0.12"), node(3, "192.168.7.13"));
        let vxlan = Routing { mode: Mode::Vxlan, ..Routing::default() };
        let rule = SourceRule {
            src: "10.244.1.0/24".parse().unwrap(),
            table: REPLY_TABLE,
            priority: REPLY_RULE_PRIORITY,
        };

        // vxlan: every other node through the overlay.
        let s = sync_routing(&h, "node-1", &model(&[n1.clone(), n2.clone(), n3.clone()]), &vxlan, "g1").await;
        clean(&s);
        let o = s.overlay.clone().expect("overlay status");
        assert_eq!((s.routes, o.vteps, o.pod_mtu), (2, 2, 1450));
        let dev = link::get_link(&h, VXLAN_DEVICE).await.unwrap().expect("weft.vxlan");
        assert_eq!((dev.mtu, dev.mac, dev.up), (1450, Some(vtep_mac("172.31.0.11".parse().unwrap())), true));
        let mut addrs = addr::list_addresses(&h, dev.index).await.unwrap();
        addrs.retain(|a| a.is_ipv4());
        assert_eq!(addrs, ["172.31.0.11/32".parse().unwrap()], "the VTEP borrows the InternalIP");
        let mut want = vec![
            route(Table::Main, "10.244.2.0/24", "172.31.0.12", Dev::Overlay),
            route(Table::Main, "10.244.3.0/24", "192.168.7.13", Dev::Overlay),
            route(Table::Replies, "172.31.0.12/32", "172.31.0.12", Dev::Overlay),
            route(Table::Replies, "192.168.7.13/32", "192.168.7.13", Dev::Overlay),
        ];
        want.sort();
        let vteps = vec![vtep("172.31.0.12"), vtep("192.168.7.13")];
        assert_eq!(kernel(&h).await, (want, vteps.clone(), vteps, vec![rule]));

        // A crashed agent's leftovers (a stale VTEP) and a deleted node: converged away.
        replace_entry(&h, Entries::Fdb, dev.index, vtep("172.31.0.99")).await.unwrap();
        replace_entry(&h, Entries::Neighbour, dev.index, vtep("172.31.0.99")).await.unwrap();
        let s = sync_routing(&h, "node-1", &model(&[n1.clone(), n2.clone()]), &vxlan, "g2").await;
        clean(&s);
        let want = vec![
            route(Table::Main, "10.244.2.0/24", "172.31.0.12", Dev::Overlay),
            route(Table::Replies, "172.31.0.12/32", "172.31.0.12", Dev::Overlay),
        ];
        let vteps = vec![vtep("172.31.0.12")];
        assert_eq!(kernel(&h).await, (want, vteps.clone(), vteps, vec![rule]));
        let same = link::get_link(&h, VXLAN_DEVICE).await.unwrap().unwrap().index;
        assert_eq!(same, dev.index, "the device is adopted, not recreated");

        // auto: host-gw on 172.31.0.0/24, the overlay beyond it.
        let auto = Routing { mode: Mode::Auto, ..vxlan };
        let s = sync_routing(&h, "node-1", &model(&[n1.clone(), n2.clone(), n3.clone()]), &auto, "g3").await;
        clean(&s);
        assert_eq!(s.overlay.map(|o| (o.vteps, o.pod_mtu)), Some((1, 1450)));
        let mut want = vec![
            route(Table::Main, "10.244.2.0/24", "172.31.0.12", Dev::Underlay),
            route(Table::Main, "10.244.3.0/24", "192.168.7.13", Dev::Overlay),
            route(Table::Replies, "192.168.7.13/32", "192.168.7.13", Dev::Overlay),
        ];
        want.sort();
        let vteps = vec![vtep("192.168.7.13")];
        assert_eq!(kernel(&h).await, (want, vteps.clone(), vteps, vec![rule]));

        // host-gw: the overlay and its rule are gone, the routes go via the underlay.
        let host_gw = Routing { mode: Mode::HostGw, ..vxlan };
        let s = sync_routing(&h, "node-1", &model(&[n1.clone(), n2.clone()]), &host_gw, "g4").await;
        clean(&s);
        assert_eq!((s.routes, s.overlay), (1, None));
        let want = vec![route(Table::Main, "10.244.2.0/24", "172.31.0.12", Dev::Underlay)];
        assert_eq!(kernel(&h).await, (want, vec![], vec![], vec![]));
        assert!(link::get_link(&h, VXLAN_DEVICE).await.unwrap().is_none());

        // Straight from vxlan to host-gw: the route is replaced in the
        // same sync, before the device (and its routes) go.
        clean(&sync_routing(&h, "node-1", &model(&[n1.clone(), n2.clone()]), &vxlan, "g5").await);
        let s = sync_routing(&h, "node-1", &model(&[n1, n2]), &host_gw, "g6").await;
        clean(&s);
        assert_eq!(s.routes, 1);
        let want = vec![route(Table::Main, "10.244.2.0/24", "172.31.0.12", Dev::Underlay)];
        assert_eq!(kernel(&h).await, (want, vec![], vec![], vec![]));
    });
}

#[test]
fn without_an_underlay_nothing_is_routed_through_the_overlay() {
    in_netns(|h| async move {
        // No link holds node 1's InternalIP: fail closed, with the reason.
        let m = model(&[node(1, "172.31.0.11"), node(2, "172.31.0.12")]);
        let vxlan = Routing { mode: Mode::Vxlan, ..Routing::default() };
        let s = sync_routing(&h, "node-1", &m, &vxlan, "g1").await;
        assert!(
            s.errors.iter().any(|e| e.contains("no link holds this node's InternalIP 172.31.0.11")),
            "{:?}",
            s.errors
        );
        assert_eq!((s.routes, s.overlay), (0, None));
        assert_eq!(kernel(&h).await, (vec![], vec![], vec![], vec![]));
    });
}

#[test]
fn host_gw_routes_ipv6_pod_cidrs_beside_ipv4_and_cleans_them_up() {
    in_netns(|h| async move {
        underlay(&h, &["172.31.0.11/24", "fd00::ac1f:b/120"]).await;
        let dual = |n: u8, gw6: &str| Node {
            pod_cidr6: Some(format!("fd00::af4:{n}00/120").parse().unwrap()),
            internal_ip6: Some(gw6.parse().unwrap()),
            ..node(n, &format!("172.31.0.{}", 10 + n))
        };
        let host_gw = Routing { mode: Mode::HostGw, ..Routing::default() };
        // A route to an IPv6 pod CIDR that weft did not add stays as it is.
        let foreign = "fd00::af4:900/120".parse().unwrap();
        addr::add_route(&h, foreign, Some("fd00::ac1f:63".parse().unwrap()), None).await.unwrap();

        let m = model(&[dual(1, "fd00::ac1f:b"), dual(2, "fd00::ac1f:c"), dual(3, "fd00::ac1f:d")]);
        let s = sync_routing(&h, "node-1", &m, &host_gw, "g1").await;
        clean(&s);
        let mut want = vec![
            route(Table::Main, "10.244.2.0/24", "172.31.0.12", Dev::Underlay),
            route(Table::Main, "10.244.3.0/24", "172.31.0.13", Dev::Underlay),
            route(Table::Main, "fd00::af4:200/120", "fd00::ac1f:c", Dev::Underlay),
            route(Table::Main, "fd00::af4:300/120", "fd00::ac1f:d", Dev::Underlay),
        ];
        want.sort();
        assert_eq!((s.routes, kernel(&h).await.0), (4, want));
        // The kernel resolves an IPv6 pod address of node 2 via node 2's IPv6 InternalIP.
        let out = weft_netkit::tool::output("ip", &["-6", "route", "get", "fd00::af4:205"], None).unwrap();
        assert!(out.contains("via fd00::ac1f:c dev eth0"), "{out}");

        // Node 2 moves to another IPv6 address and node 3 goes: replaced and deleted.
        let m = model(&[dual(1, "fd00::ac1f:b"), dual(2, "fd00::ac1f:22")]);
        let s = sync_routing(&h, "node-1", &m, &host_gw, "g2").await;
        clean(&s);
        let want = vec![
            route(Table::Main, "10.244.2.0/24", "172.31.0.12", Dev::Underlay),
            route(Table::Main, "fd00::af4:200/120", "fd00::ac1f:22", Dev::Underlay),
        ];
        assert_eq!(kernel(&h).await.0, want);

        // vxlan carries IPv4 only: the IPv6 routes go, with the reason.
        let vxlan = Routing { mode: Mode::Vxlan, ..Routing::default() };
        let s = sync_routing(&h, "node-1", &m, &vxlan, "g3").await;
        clean(&s);
        assert!(s.warnings.iter().any(|w| w.contains("IPv6 in host-gw only")), "{:?}", s.warnings);
        assert!(kernel(&h).await.0.iter().all(|r| r.dst.is_ipv4()));

        // Cleanup deletes weft's routes of both families and nothing else.
        clean(&sync_routing(&h, "node-1", &m, &host_gw, "g4").await);
        assert!(weft_agent::route_table::delete_all(&h).await.is_empty());
        assert_eq!(kernel(&h).await.0, vec![]);
        let left = addr::list_routes(&h, addr::Family::V6).await.unwrap();
        assert!(left.iter().any(|r| r.dst == foreign), "the foreign route stays: {left:?}");
    });
}
