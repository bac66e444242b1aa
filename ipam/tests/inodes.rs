//! The store's inode economy, counted rather than timed: creating an inode
//! is what costs on ext4 (170-500 µs, against 6-60 µs for a `link`, a
//! `rename` or opening an existing file), so an allocation creates at most
//! one, its record, which is the attachment's index and every one of its IP
//! files, and none when a released record waits in the pool (`free/`) for
//! reuse; `last_reserved_ip.<set>` is rewritten in place and keeps its inode.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde_json::{json, Value};
use tempfile::TempDir;
use weft_ipam::{allocate, release, IpamConfig, Store};

const N: usize = 40;
/// The pool's bound (`store::pool::POOL_MAX`).
const POOL_MAX: usize = 64;

fn setup(ranges: Value) -> (TempDir, IpamConfig, Store) {
    let dir = tempfile::tempdir().unwrap();
    let cfg =
        IpamConfig::parse(&json!({"type": "weft-ipam", "ranges": ranges, "dataDir": dir.path()})).unwrap();
    let store = Store::open(&cfg.data_dir, "weft").unwrap();
    (dir, cfg, store)
}

/// Every file of the store in use (network directory and `attachments/`),
/// by inode.
fn inodes(dir: &Path) -> HashMap<u64, Vec<String>> {
    files_by_inode(&[dir.to_path_buf(), dir.join("attachments")])
}

/// The inodes waiting in the pool.
fn pooled(dir: &Path) -> HashSet<u64> {
    files_by_inode(&[dir.join("free")]).into_keys().collect()
}

/// Every inode of the store: in use or pooled.
fn all_inodes(dir: &Path) -> HashSet<u64> {
    inodes(dir).into_keys().chain(pooled(dir)).collect()
}

fn files_by_inode(dirs: &[std::path::PathBuf]) -> HashMap<u64, Vec<String>> {
    let mut out: HashMap<u64, Vec<String>> = HashMap::new();
    for sub in dirs {
        for e in fs::read_dir(sub).unwrap() {
            let e = e.unwrap();
            let meta = fs::symlink_metadata(e.path()).unwrap();
            if meta.is_file() {
                out.entry(meta.ino()).or_default().push(e.file_name().into_string().unwrap());
            }
        }
    }
    out
}

fn ino(path: &Path) -> u64 {
    fs::metadata(path).unwrap().ino()
}

#[test]
fn each_allocation_adds_one_inode_and_the_hint_keeps_its_own() {
    let (_d, cfg, store) = setup(json!([[{"subnet": "10.244.0.0/22"}]]));
    let d = store.dir();
    allocate(&store, &cfg, "c0", "eth0").unwrap();
    let hint = ino(&d.join("last_reserved_ip.0"));
    // lock, last_reserved_ip.0, and c0's record.
    assert_eq!(inodes(d).len(), 3);
    for i in 1..N {
        allocate(&store, &cfg, &format!("c{i}"), "eth0").unwrap();
        assert_eq!(inodes(d).len(), 3 + i, "after allocation {i}: {:?}", inodes(d));
        assert_eq!(ino(&d.join("last_reserved_ip.0")), hint, "last_reserved_ip.0 rewritten in place");
    }
    // Every record is one attachment's index and its IP file: two names, one inode.
    for i in 0..N {
        let index = d.join(format!("attachments/c{i}@eth0"));
        let ip = allocate(&store, &cfg, &format!("c{i}"), "eth0").unwrap()[0].address.ip();
        let ip_file = fs::metadata(d.join(ip.to_string())).unwrap();
        assert_eq!((ip_file.ino(), ip_file.nlink()), (ino(&index), 2), "c{i}");
    }
    assert_eq!(inodes(d).len(), 2 + N, "idempotent allocations create nothing");
    let records: HashSet<u64> = (0..N).map(|i| ino(&d.join(format!("attachments/c{i}@eth0")))).collect();
    for i in 0..N {
        release(&store, &format!("c{i}"), "eth0").unwrap();
    }
    let left: HashSet<String> = inodes(d).into_values().flatten().collect();
    assert_eq!(left, HashSet::from(["lock".to_string(), "last_reserved_ip.0".to_string()]));
    assert_eq!(ino(&d.join("last_reserved_ip.0")), hint);
    assert_eq!(pooled(d), records, "every released record waits in the pool");
}

#[test]
fn after_releases_allocations_create_no_inode() {
    let (_d, cfg, store) = setup(json!([[{"subnet": "10.244.0.0/22"}]]));
    let d = store.dir();
    let index = |id: &str| d.join(format!("attachments/{id}@eth0"));
    // Longer IDs than the next ones: each reused file is cut to its new record.
    let old = |i: usize| format!("a-longer-container-id-{i}");
    for i in 0..N {
        allocate(&store, &cfg, &old(i), "eth0").unwrap();
    }
    let released: HashSet<u64> = (0..N).map(|i| ino(&index(&old(i)))).collect();
    for i in 0..N {
        release(&store, &old(i), "eth0").unwrap();
    }
    let store_inodes = all_inodes(d);
    let mut reused = HashSet::new();
    for i in 0..N {
        let id = format!("d{i}");
        let ip = allocate(&store, &cfg, &id, "eth0").unwrap()[0].address.ip();
        let record = ino(&index(&id));
        assert!(released.contains(&record), "{id}: a new inode");
        assert!(reused.insert(record), "{id}: an inode in use twice");
        let ip_file = fs::metadata(d.join(ip.to_string())).unwrap();
        assert_eq!((ip_file.ino(), ip_file.nlink()), (record, 2), "{id}: its IP file is its index");
        assert_eq!(all_inodes(d), store_inodes, "{id}: no inode created, none freed");
        assert_eq!(pooled(d).len(), N - 1 - i);
        let content: Value = serde_json::from_slice(&fs::read(index(&id)).unwrap()).unwrap();
        assert_eq!(content, json!({"containerID": id, "ifname": "eth0", "ips": [ip]}), "no old tail");
    }
    assert_eq!(reused, released);
}

#[test]
fn the_pool_keeps_at_most_pool_max_records() {
    let (_d, cfg, store) = setup(json!([[{"subnet": "10.244.0.0/22"}]]));
    let d = store.dir();
    let many = POOL_MAX + 6;
    for i in 0..many {
        allocate(&store, &cfg, &format!("c{i}"), "eth0").unwrap();
    }
    for i in 0..many {
        release(&store, &format!("c{i}"), "eth0").unwrap();
        assert_eq!(pooled(d).len(), (i + 1).min(POOL_MAX));
    }
    let before = all_inodes(d).len();
    for i in 0..many {
        allocate(&store, &cfg, &format!("d{i}"), "eth0").unwrap();
    }
    assert!(pooled(d).is_empty());
    assert_eq!(all_inodes(d).len(), before + many - POOL_MAX, "new inodes once the pool is empty");
}

#[test]
fn a_dual_stack_attachment_is_one_inode_under_three_names() {
    let (_d, cfg, store) = setup(json!([[{"subnet": "10.244.0.0/24"}], [{"subnet": "fd00:244::/64"}]]));
    let d = store.dir();
    for i in 0..N {
        allocate(&store, &cfg, &format!("c{i}"), "eth0").unwrap();
    }
    let by_inode = inodes(d);
    // lock, two hints, one record per attachment.
    assert_eq!(by_inode.len(), 3 + N);
    for i in 0..N {
        let index = format!("c{i}@eth0");
        let names = by_inode.values().find(|n| n.contains(&index)).unwrap();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(
            names.iter().any(|n| n.starts_with("10.244.0."))
                && names.iter().any(|n| n.starts_with("fd00:244::"))
        );
        assert_eq!(fs::metadata(d.join("attachments").join(&index)).unwrap().nlink(), 3);
    }
}
