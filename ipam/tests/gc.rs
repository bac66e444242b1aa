//! gc: reclaims invalid attachments and tidies what killed processes leave.

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde_json::json;
use weft_ipam::{allocate, gc, held, release, IpamConfig, Store};

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

fn valid(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

fn ips(v: &[&str]) -> Vec<IpAddr> {
    v.iter().map(|s| s.parse().unwrap()).collect()
}

#[test]
fn gc_releases_attachments_not_in_the_valid_list() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = IpamConfig::parse(&json!({"type": "weft-ipam", "dataDir": dir.path(),
        "ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}]]}))
    .unwrap();
    let store = Store::open(dir.path(), "weft").unwrap();
    for id in ["a", "b", "c"] {
        allocate(&store, &cfg, id, "eth0").unwrap();
    }
    allocate(&store, &cfg, "a", "net1").unwrap();
    let released = gc(&store, &valid(&[("a", "eth0"), ("c", "eth0"), ("gone", "eth0")])).unwrap();
    assert_eq!(released, ips(&["10.0.0.3", "10.0.0.5", "fd00::3", "fd00::5"]));
    assert_eq!(
        names(store.dir()),
        [
            "10.0.0.2",
            "10.0.0.4",
            "attachments",
            "fd00::2",
            "fd00::4",
            "free",
            "last_reserved_ip.0",
            "last_reserved_ip.1",
            "lock"
        ]
    );
    assert_eq!(names(&store.dir().join("attachments")), ["a@eth0", "c@eth0"]);
    assert_eq!(names(&store.dir().join("free")), ["0", "1"], "the released records wait for reuse");
    assert_eq!(held(&store, "a", "eth0").unwrap(), ips(&["10.0.0.2", "fd00::2"]));
    assert!(gc(&store, &valid(&[("a", "eth0"), ("c", "eth0")])).unwrap().is_empty(), "idempotent");
    assert_eq!(gc(&store, &[]).unwrap().len(), 4);
    assert_eq!(
        names(store.dir()),
        ["attachments", "free", "last_reserved_ip.0", "last_reserved_ip.1", "lock"]
    );
    assert!(names(&store.dir().join("attachments")).is_empty());
    assert_eq!(names(&store.dir().join("free")), ["0", "1", "2", "3"]);
}

#[test]
fn gc_tidies_leftovers_and_rebuilds_missing_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg =
        IpamConfig::parse(&json!({"type": "weft-ipam", "ranges": [[{"subnet": "10.0.0.0/24"}]]})).unwrap();
    let store = Store::open(dir.path(), "weft").unwrap();
    allocate(&store, &cfg, "a", "eth0").unwrap();
    let d = store.dir();
    let att = d.join("attachments");
    fs::write(d.join("tmp.4242.7"), "x\r\neth0").unwrap();
    fs::write(d.join("10.0.0.9"), "").unwrap(); // host-local's leak: created, never written
    fs::write(d.join("10.0.0.10"), "hl\r\neth0").unwrap(); // written by host-local: no index
    fs::write(d.join("notes.txt"), "keep me").unwrap();
    fs::write(
        att.join("dead@eth0"),
        json!({"containerID": "dead", "ifname": "eth0", "ips": ["10.0.0.50"]}).to_string(),
    )
    .unwrap();
    fs::write(
        att.join("v@eth0"),
        json!({"containerID": "v", "ifname": "eth0", "ips": ["10.0.0.51"]}).to_string(),
    )
    .unwrap();
    fs::write(att.join("garbage@eth0"), "{not json").unwrap();
    fs::write(
        att.join("wrongname"),
        json!({"containerID": "a", "ifname": "eth0", "ips": ["10.0.0.2"]}).to_string(),
    )
    .unwrap();
    let keep = valid(&[("a", "eth0"), ("hl", "eth0"), ("v", "eth0")]);
    assert_eq!(gc(&store, &keep).unwrap(), ips(&["10.0.0.9"]));
    assert_eq!(
        names(d),
        ["10.0.0.10", "10.0.0.2", "attachments", "free", "last_reserved_ip.0", "lock", "notes.txt"]
    );
    assert_eq!(names(&att), ["a@eth0", "hl@eth0"], "dangling, corrupt and misnamed indexes are gone");
    // Each had no other name: pooled, content and all (it is never read).
    assert_eq!(names(&d.join("free")), ["0", "1", "2", "3"]);
    assert_eq!(held(&store, "hl", "eth0").unwrap(), ips(&["10.0.0.10"]));
    release(&store, "hl", "eth0").unwrap();
    assert!(!d.join("10.0.0.10").exists(), "release finds host-local's file through the rebuilt index");
    assert_eq!(held(&store, "a", "eth0").unwrap(), ips(&["10.0.0.2"]));
}

#[test]
fn gc_trims_the_pool_and_drops_pool_names_of_live_records() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = IpamConfig::parse(&json!({"type": "weft-ipam", "dataDir": dir.path(),
        "ranges": [[{"subnet": "10.0.0.0/24"}]]}))
    .unwrap();
    let store = Store::open(dir.path(), "weft").unwrap();
    allocate(&store, &cfg, "a", "eth0").unwrap();
    let free = store.dir().join("free");
    let index = store.dir().join("attachments/a@eth0");
    let record = fs::read(&index).unwrap();
    // 70 pooled files (more than the pool keeps), and a's record under a pool name.
    for i in 0..70 {
        fs::write(free.join(format!("{i:02}")), "stale").unwrap();
    }
    fs::hard_link(&index, free.join("zz-a")).unwrap();
    assert!(gc(&store, &valid(&[("a", "eth0")])).unwrap().is_empty());
    let left = names(&free);
    assert_eq!(left.len(), 64, "{left:?}");
    assert_eq!(left.last().unwrap(), "63", "the first 64 names are kept");
    assert!(left.iter().all(|n| fs::metadata(free.join(n)).unwrap().nlink() == 1));
    assert_eq!((fs::read(&index).unwrap(), fs::metadata(&index).unwrap().nlink()), (record, 2));
    assert_eq!(held(&store, "a", "eth0").unwrap(), ips(&["10.0.0.2"]));
    // A full pool: a release unlinks the index; an allocation reuses a pooled file.
    let ino = fs::metadata(&index).unwrap().ino();
    release(&store, "a", "eth0").unwrap();
    assert_eq!(names(&free).len(), 64);
    assert!(names(&free).iter().all(|n| fs::metadata(free.join(n)).unwrap().ino() != ino));
    let pooled: Vec<u64> = names(&free).iter().map(|n| fs::metadata(free.join(n)).unwrap().ino()).collect();
    allocate(&store, &cfg, "b", "eth0").unwrap();
    assert_eq!(names(&free).len(), 63);
    assert!(pooled.contains(&fs::metadata(store.dir().join("attachments/b@eth0")).unwrap().ino()));
    assert_eq!(held(&store, "b", "eth0").unwrap(), ips(&["10.0.0.3"]));
}
