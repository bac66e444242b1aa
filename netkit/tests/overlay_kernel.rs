//! The overlay's kernel objects against the real kernel, each test in a netns
//! of its own: the VXLAN device (created, adopted, recreated when its identity
//! changes), static FDB and neighbour entries, and source rules.

mod common;

use std::net::Ipv4Addr;

use common::isolate;
use rtnetlink::LinkVeth;
use weft_netkit::addr;
use weft_netkit::link::{get_link, set_up};
use weft_netkit::neighbour::{delete_entry, list_permanent, replace_entry, StaticEntry, Table};
use weft_netkit::netns::connect_current;
use weft_netkit::rule::{add_rule, delete_rule, list_rules, SourceRule};
use weft_netkit::vxlan::{ensure_vxlan, VxlanSpec};

/// An underlay link with 192.0.2.1/24 (one end of a veth pair), and the
/// spec of a VXLAN device on it.
async fn underlay(h: &rtnetlink::Handle) -> VxlanSpec {
    h.link().add(LinkVeth::new("under0", "under1").build()).execute().await.unwrap();
    let u = get_link(h, "under0").await.unwrap().unwrap();
    set_up(h, u.index).await.unwrap();
    addr::add_address(h, u.index, "192.0.2.1/24".parse().unwrap()).await.unwrap();
    let local = Ipv4Addr::new(192, 0, 2, 1);
    VxlanSpec { vni: 87, port: 4789, local, underlay: u.index, mtu: 1450, mac: [0x02, 0x57, 192, 0, 2, 1] }
}

#[test]
fn vxlan_device_is_created_adopted_and_recreated() {
    let Some(t) = isolate("vxlan_device_is_created_adopted_and_recreated") else { return };
    t.rt.block_on(async {
        let h = connect_current().unwrap();
        let spec = underlay(&h).await;
        let mac = spec.mac;
        let a = ensure_vxlan(&h, "weft.vxlan", &spec).await.unwrap();
        assert_eq!((a.kind.as_deref(), a.mtu, a.mac, a.up), (Some("vxlan"), 1450, Some(mac), true));
        // The same spec: adopted, not recreated (same index).
        let b = ensure_vxlan(&h, "weft.vxlan", &spec).await.unwrap();
        assert_eq!(b.index, a.index);
        // An MTU change is applied in place.
        let c = ensure_vxlan(&h, "weft.vxlan", &VxlanSpec { mtu: 1400, ..spec }).await.unwrap();
        assert_eq!((c.index, c.mtu), (a.index, 1400));
        // Another VNI cannot be changed on a live device: recreated.
        let d = ensure_vxlan(&h, "weft.vxlan", &VxlanSpec { vni: 88, ..spec }).await.unwrap();
        assert_ne!(d.index, a.index);
        // A link of another kind under the name is left alone.
        let e = ensure_vxlan(&h, "under0", &spec).await.unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        assert!(get_link(&h, "under0").await.unwrap().is_some());
    });
}

#[test]
fn static_fdb_and_neighbour_entries() {
    let Some(t) = isolate("static_fdb_and_neighbour_entries") else { return };
    t.rt.block_on(async {
        let h = connect_current().unwrap();
        let spec = underlay(&h).await;
        let under = spec.underlay;
        let dev = ensure_vxlan(&h, "weft.vxlan", &spec).await.unwrap().index;
        let e2 = StaticEntry { mac: [0x02, 0x57, 192, 0, 2, 2], ip: Ipv4Addr::new(192, 0, 2, 2) };
        let e3 = StaticEntry { mac: [0x02, 0x57, 192, 0, 2, 3], ip: Ipv4Addr::new(192, 0, 2, 3) };
        for table in [Table::Fdb, Table::Neighbour] {
            assert!(list_permanent(&h, table, dev).await.unwrap().is_empty(), "{table:?}");
            replace_entry(&h, table, dev, e2).await.unwrap();
            replace_entry(&h, table, dev, e2).await.unwrap();
            replace_entry(&h, table, dev, e3).await.unwrap();
            assert_eq!(list_permanent(&h, table, dev).await.unwrap(), [e2, e3], "{table:?}");
            assert!(delete_entry(&h, table, dev, e2).await.unwrap());
            assert!(!delete_entry(&h, table, dev, e2).await.unwrap(), "gone counts as done");
            assert_eq!(list_permanent(&h, table, dev).await.unwrap(), [e3], "{table:?}");
            // Another device's entries are not listed.
            assert!(list_permanent(&h, table, under).await.unwrap().iter().all(|e| *e != e3));
        }
    });
}

#[test]
fn source_rules_are_listed_by_owner() {
    let Some(t) = isolate("source_rules_are_listed_by_owner") else { return };
    t.rt.block_on(async {
        let h = connect_current().unwrap();
        let r = SourceRule { src: "10.244.1.0/24".parse().unwrap(), table: 87, priority: 32087 };
        assert!(list_rules(&h, 0x57).await.unwrap().is_empty());
        add_rule(&h, r, 0x57).await.unwrap();
        add_rule(&h, r, 0x57).await.unwrap();
        assert_eq!(list_rules(&h, 0x57).await.unwrap(), [r]);
        // The kernel's own rules (local, main, default) are not ours.
        assert!(list_rules(&h, 0x58).await.unwrap().is_empty());
        assert!(delete_rule(&h, r, 0x57).await.unwrap());
        assert!(!delete_rule(&h, r, 0x57).await.unwrap());
        assert!(list_rules(&h, 0x57).await.unwrap().is_empty());
    });
}
