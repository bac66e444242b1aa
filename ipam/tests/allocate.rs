//! allocate / release / held / free_counts / ipam_result on a temp store,
//! checked against the files they leave.

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;
use weft_conf::CniError;
use weft_ipam::{allocate, free_counts, held, ipam_result, release, IpamConfig, IpamError, Store};

fn setup(ranges: Value) -> (TempDir, IpamConfig, Store) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = IpamConfig::parse(&json!({"type": "weft-ipam", "ranges": ranges,
                                        "routes": [{"dst": "0.0.0.0/0"}], "dataDir": dir.path()}))
    .unwrap();
    let store = Store::open(&cfg.data_dir, "weft").unwrap();
    (dir, cfg, store)
}

fn alloc(store: &Store, cfg: &IpamConfig, id: &str) -> Vec<String> {
    allocate(store, cfg, id, "eth0").unwrap().iter().map(|c| c.address.to_string()).collect()
}

/// The IP files of the store, sorted, with their content (a JSON record).
fn ip_files(dir: &Path) -> Vec<(String, Value)> {
    let mut v: Vec<(String, Value)> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.parse::<IpAddr>().is_ok())
        .map(|n| (n.clone(), serde_json::from_slice(&fs::read(dir.join(&n)).unwrap()).unwrap()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn first_allocation_skips_network_and_gateway_and_writes_one_record_under_two_names() {
    let (_d, cfg, store) = setup(json!([[{"subnet": "10.244.1.0/24"}]]));
    let got = allocate(&store, &cfg, "c1", "eth0").unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].address.to_string(), "10.244.1.2/24");
    assert_eq!(got[0].gateway, Some("10.244.1.1".parse().unwrap()));
    assert_eq!(got[0].interface, None);
    let record = json!({"containerID": "c1", "ifname": "eth0", "ips": ["10.244.1.2"]});
    assert_eq!(ip_files(store.dir()), [("10.244.1.2".into(), record.clone())]);
    assert_eq!(fs::read_to_string(store.dir().join("last_reserved_ip.0")).unwrap(), "10.244.1.2");
    let index_path = store.dir().join("attachments/c1@eth0");
    let index: Value = serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
    assert_eq!(index, record);
    let (ip_meta, index_meta) =
        (fs::metadata(store.dir().join("10.244.1.2")).unwrap(), fs::metadata(index_path).unwrap());
    assert_eq!((ip_meta.ino(), ip_meta.nlink()), (index_meta.ino(), 2), "one inode, two names");
}

#[test]
fn dual_stack_gives_one_address_per_range_set() {
    let (_d, cfg, store) = setup(json!([[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:244:1::/64"}]]));
    assert_eq!(alloc(&store, &cfg, "c1"), ["10.244.1.2/24", "fd00:244:1::2/64"]);
    assert_eq!(alloc(&store, &cfg, "c2"), ["10.244.1.3/24", "fd00:244:1::3/64"]);
    let files = ip_files(store.dir());
    assert_eq!(
        files.iter().map(|f| f.0.as_str()).collect::<Vec<_>>(),
        ["10.244.1.2", "10.244.1.3", "fd00:244:1::2", "fd00:244:1::3"]
    );
    assert_eq!(fs::read_to_string(store.dir().join("last_reserved_ip.1")).unwrap(), "fd00:244:1::3");
}

#[test]
fn range_start_end_and_an_inside_gateway_are_honoured() {
    let (_d, cfg, store) = setup(json!([[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10",
                                          "rangeEnd": "10.0.0.13", "gateway": "10.0.0.11"}]]));
    let got: Vec<_> = ["a", "b", "c"].iter().map(|id| alloc(&store, &cfg, id)[0].clone()).collect();
    assert_eq!(got, ["10.0.0.10/24", "10.0.0.12/24", "10.0.0.13/24"]);
    assert_eq!(allocate(&store, &cfg, "a", "eth0").unwrap()[0].gateway, Some("10.0.0.11".parse().unwrap()));
}

#[test]
fn broadcast_is_never_handed_out_and_exhaustion_is_code_101() {
    let (_d, cfg, store) =
        setup(json!([[{"subnet": "10.0.0.0/29", "rangeStart": "10.0.0.0", "rangeEnd": "10.0.0.7"}]]));
    let got: Vec<_> = (0..5).map(|i| alloc(&store, &cfg, &format!("c{i}"))[0].clone()).collect();
    assert_eq!(got, ["10.0.0.2/29", "10.0.0.3/29", "10.0.0.4/29", "10.0.0.5/29", "10.0.0.6/29"]);
    let e = allocate(&store, &cfg, "late", "eth0").unwrap_err();
    assert!(matches!(e, IpamError::Exhausted { set: 0, .. }), "{e}");
    let c = CniError::from(e);
    assert_eq!(c.code, 101);
    assert_eq!(c.details, "10.0.0.0/29 [10.0.0.0-10.0.0.7]");
    assert_eq!(ip_files(store.dir()).len(), 5, "the failure left nothing behind");
    assert!(!store.dir().join("attachments/late@eth0").exists());
}

#[test]
fn ipv6_skips_the_subnet_router_anycast_address() {
    let (_d, cfg, store) = setup(json!([[{"subnet": "fd00::/126", "rangeStart": "fd00::"}]]));
    assert_eq!(alloc(&store, &cfg, "a"), ["fd00::2/126"]);
    assert_eq!(alloc(&store, &cfg, "b"), ["fd00::3/126"]);
    assert_eq!(CniError::from(allocate(&store, &cfg, "c", "eth0").unwrap_err()).code, 101);
}

#[test]
fn allocation_continues_after_the_last_reserved_address_and_wraps() {
    let (_d, cfg, store) =
        setup(json!([[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.12"}]]));
    assert_eq!(alloc(&store, &cfg, "a"), ["10.0.0.10/24"]);
    assert_eq!(alloc(&store, &cfg, "b"), ["10.0.0.11/24"]);
    release(&store, "a", "eth0").unwrap();
    assert_eq!(alloc(&store, &cfg, "c"), ["10.0.0.12/24"], "not the freed .10: after the last reserved");
    assert_eq!(alloc(&store, &cfg, "d"), ["10.0.0.10/24"], "wraps around");
    assert_eq!(CniError::from(allocate(&store, &cfg, "e", "eth0").unwrap_err()).code, 101);
}

#[test]
fn failed_second_range_set_undoes_the_first() {
    let (_d, cfg, store) = setup(json!([[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/126"}]]));
    alloc(&store, &cfg, "a");
    alloc(&store, &cfg, "b");
    let e = allocate(&store, &cfg, "c", "eth0").unwrap_err();
    assert!(matches!(e, IpamError::Exhausted { set: 1, .. }), "{e}");
    assert_eq!(ip_files(store.dir()).len(), 4, "c's IPv4 address was given back");
    assert!(held(&store, "c", "eth0").unwrap().is_empty());
    assert!(!store.dir().join("attachments/c@eth0").exists());
}

#[test]
fn a_store_in_the_previous_format_keeps_working() {
    let (_d, cfg, store) = setup(json!([[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00::/64"}]]));
    let d = store.dir();
    // As the previous weft wrote it: host-local's text in the IP file, a separate index.
    fs::write(d.join("10.244.1.2"), "old\r\neth0").unwrap();
    let index = json!({"containerID": "old", "ifname": "eth0", "ips": ["10.244.1.2"]});
    fs::write(d.join("attachments/old@eth0"), index.to_string()).unwrap();
    fs::write(d.join("last_reserved_ip.0"), "10.244.1.2").unwrap();
    assert_eq!(held(&store, "old", "eth0").unwrap(), ["10.244.1.2".parse::<IpAddr>().unwrap()]);
    // The config gained an IPv6 range set: the attachment keeps its IPv4 file and gets an IPv6 one.
    assert_eq!(alloc(&store, &cfg, "old"), ["10.244.1.2/24", "fd00::2/64"]);
    assert_eq!(fs::read_to_string(d.join("10.244.1.2")).unwrap(), "old\r\neth0");
    let index: Value = serde_json::from_slice(&fs::read(d.join("attachments/old@eth0")).unwrap()).unwrap();
    assert_eq!(index, json!({"containerID": "old", "ifname": "eth0", "ips": ["10.244.1.2", "fd00::2"]}));
    assert_eq!(
        fs::metadata(d.join("fd00::2")).unwrap().ino(),
        fs::metadata(d.join("attachments/old@eth0")).unwrap().ino()
    );
    assert_eq!(alloc(&store, &cfg, "new"), ["10.244.1.3/24", "fd00::3/64"]);
    release(&store, "old", "eth0").unwrap();
    assert!(!d.join("10.244.1.2").exists() && !d.join("fd00::2").exists());
    assert!(!d.join("attachments/old@eth0").exists());
    assert_eq!(ip_files(d).len(), 2, "new's addresses remain");
}

#[test]
fn allocate_is_idempotent_per_attachment() {
    let (_d, cfg, store) = setup(json!([[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00::/64"}]]));
    let first = allocate(&store, &cfg, "c1", "eth0").unwrap();
    assert_eq!(allocate(&store, &cfg, "c1", "eth0").unwrap(), first);
    assert_eq!(ip_files(store.dir()).len(), 2);
    assert_ne!(allocate(&store, &cfg, "c1", "net1").unwrap(), first, "another ifname is another attachment");
    assert_eq!(ip_files(store.dir()).len(), 4);
    let held_ips: Vec<String> = held(&store, "c1", "eth0").unwrap().iter().map(|i| i.to_string()).collect();
    assert_eq!(held_ips, ["10.244.1.2", "fd00::2"]);
}

#[test]
fn release_is_idempotent_and_owner_checked() {
    let (_d, cfg, store) = setup(json!([[{"subnet": "10.244.1.0/24"}]]));
    release(&store, "nobody", "eth0").unwrap();
    alloc(&store, &cfg, "a");
    alloc(&store, &cfg, "b");
    // a's index names b's address too (e.g. a stale intent): release must not touch b's file.
    // (A new index file, as the store writes: the old one is also a's IP file.)
    let index = store.dir().join("attachments/a@eth0");
    fs::remove_file(&index).unwrap();
    fs::write(
        &index,
        json!({"containerID": "a", "ifname": "eth0", "ips": ["10.244.1.2", "10.244.1.3"]}).to_string(),
    )
    .unwrap();
    release(&store, "a", "eth0").unwrap();
    let b = json!({"containerID": "b", "ifname": "eth0", "ips": ["10.244.1.3"]});
    assert_eq!(ip_files(store.dir()), [("10.244.1.3".into(), b)]);
    release(&store, "a", "eth0").unwrap();
    release(&store, "b", "net1").unwrap();
    assert_eq!(ip_files(store.dir()).len(), 1, "b on another ifname holds nothing");
    release(&store, "b", "eth0").unwrap();
    assert!(ip_files(store.dir()).is_empty());
    assert_eq!(fs::read_dir(store.dir().join("attachments")).unwrap().count(), 0);
}

#[test]
fn release_frees_what_it_finds_past_a_corrupt_record() {
    let (_d, cfg, store) = setup(json!([[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00::/64"}]]));
    let index = store.dir().join("attachments/a@eth0");
    // 1. Garbled in place: the IP files are the same inode, so garbled too.
    alloc(&store, &cfg, "a");
    alloc(&store, &cfg, "b");
    fs::write(&index, b"{\"containerID\": \"a\", \"ifn").unwrap();
    assert!(held(&store, "a", "eth0").is_err(), "the record is unreadable");
    release(&store, "a", "eth0").unwrap();
    let left: Vec<String> = ip_files(store.dir()).into_iter().map(|(ip, _)| ip).collect();
    assert_eq!(left, ["10.244.1.3", "fd00::3"], "only b's addresses stay");
    assert!(!index.exists());
    // 2. A garbled new index (another inode): the IP files still name a.
    alloc(&store, &cfg, "a");
    fs::remove_file(&index).unwrap();
    fs::write(&index, b"\xff\xfe not json").unwrap();
    release(&store, "a", "eth0").unwrap();
    assert_eq!(ip_files(store.dir()).len(), 2, "a's new addresses are freed, b's kept");
    release(&store, "a", "eth0").unwrap();
    // The next allocation continues after a's freed .4 (last_reserved_ip).
    assert_eq!(alloc(&store, &cfg, "c"), ["10.244.1.5/24", "fd00::5/64"]);
}

#[test]
fn held_reports_only_what_the_ip_files_confirm() {
    let (_d, cfg, store) = setup(json!([[{"subnet": "10.244.1.0/24"}]]));
    assert!(held(&store, "a", "eth0").unwrap().is_empty());
    alloc(&store, &cfg, "a");
    assert_eq!(held(&store, "a", "eth0").unwrap(), ["10.244.1.2".parse::<IpAddr>().unwrap()]);
    // Someone else's file in its place (host-local only ever creates new files).
    fs::remove_file(store.dir().join("10.244.1.2")).unwrap();
    fs::write(store.dir().join("10.244.1.2"), "intruder\r\neth0").unwrap();
    assert!(held(&store, "a", "eth0").unwrap().is_empty());
    assert_eq!(alloc(&store, &cfg, "a"), ["10.244.1.3/24"], "re-allocates what it lost");
}

#[test]
fn ids_with_odd_characters_and_long_ids_work() {
    let (_d, cfg, store) = setup(json!([[{"subnet": "10.244.1.0/24"}]]));
    let long = "k".repeat(300);
    for id in ["a/../../b", "x y\tz", "..", long.as_str()] {
        let got = allocate(&store, &cfg, id, "eth0").unwrap();
        assert_eq!(held(&store, id, "eth0").unwrap(), [got[0].address.ip()]);
        release(&store, id, "eth0").unwrap();
    }
    assert!(ip_files(store.dir()).is_empty());
    assert_eq!(fs::read_dir(store.dir().join("attachments")).unwrap().count(), 0);
    assert_eq!(CniError::from(allocate(&store, &cfg, "", "eth0").unwrap_err()).code, 4);
}

#[test]
fn free_counts_per_range_set() {
    let (_d, cfg, store) =
        setup(json!([[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.19"},
                                        {"subnet": "10.0.1.0/30"}],
                                       [{"subnet": "fd00::/64"}]]));
    assert_eq!(free_counts(&store, &cfg).unwrap(), [11, (1u128 << 64) - 2]);
    alloc(&store, &cfg, "a");
    alloc(&store, &cfg, "b");
    assert_eq!(free_counts(&store, &cfg).unwrap(), [9, (1u128 << 64) - 4]);
}

#[test]
fn ipam_result_carries_ips_and_routes_only() {
    let (_d, cfg, store) = setup(json!([[{"subnet": "10.244.1.0/24"}]]));
    let ips = allocate(&store, &cfg, "a", "eth0").unwrap();
    let r = ipam_result(&cfg, ips.clone());
    assert_eq!(r.ips, ips);
    assert_eq!(r.routes, cfg.routes);
    assert!(r.interfaces.is_empty());
    assert_eq!(
        r.to_json(weft_conf::Version::V1_0_0),
        json!({"cniVersion": "1.0.0", "ips": [{"address": "10.244.1.2/24", "gateway": "10.244.1.1"}],
                      "routes": [{"dst": "0.0.0.0/0"}]})
    );
}

#[test]
fn a_slash_16_allocates_in_order_and_quickly() {
    let (_d, cfg, store) = setup(json!([[{"subnet": "10.1.0.0/16"}]]));
    let t = Instant::now();
    for i in 0..600u32 {
        let want = format!("10.1.{}.{}/16", (i + 2) / 256, (i + 2) % 256);
        assert_eq!(alloc(&store, &cfg, &format!("c{i}")), [want]);
    }
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    // With a later last_reserved, the next one comes right after it.
    fs::write(store.dir().join("last_reserved_ip.0"), "10.1.200.7").unwrap();
    assert_eq!(alloc(&store, &cfg, "next"), ["10.1.200.8/16"]);
    fs::write(store.dir().join("last_reserved_ip.0"), "10.1.255.254").unwrap();
    assert_eq!(alloc(&store, &cfg, "wrap"), ["10.1.2.90/16"], "wraps past the 600 held from .0.2");
}
