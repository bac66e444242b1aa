//! Many plugin processes at once: 16 threads, each with its own Store (its
//! own lock file descriptor, as separate processes have), 20 allocations
//! each, then their releases, then 20 more allocations each (reusing the
//! pooled records) and their releases.

use std::collections::HashSet;
use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::thread;

use serde_json::{json, Value};
use weft_ipam::{allocate, release, IpamConfig, Store};

const THREADS: usize = 16;
const PER_THREAD: usize = 20;

fn ip_files(dir: &std::path::Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.parse::<IpAddr>().is_ok())
        .collect()
}

#[test]
fn concurrent_allocations_are_distinct_and_all_released() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Arc::new(
        IpamConfig::parse(&json!({"type": "weft-ipam", "dataDir": dir.path(),
            "ranges": [[{"subnet": "10.244.0.0/23"}], [{"subnet": "fd00:244::/64"}]]}))
        .unwrap(),
    );
    let run = |f: fn(&Store, &IpamConfig, String) -> Vec<IpAddr>| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let cfg = Arc::clone(&cfg);
                thread::spawn(move || {
                    let store = Store::open(&cfg.data_dir, "weft").unwrap();
                    (0..PER_THREAD).flat_map(|i| f(&store, &cfg, format!("c-{t}-{i}"))).collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect::<Vec<IpAddr>>()
    };
    let got = run(|s, c, id| allocate(s, c, &id, "eth0").unwrap().iter().map(|c| c.address.ip()).collect());
    let distinct: HashSet<IpAddr> = got.iter().copied().collect();
    assert_eq!(got.len(), 2 * THREADS * PER_THREAD);
    assert_eq!(distinct.len(), got.len(), "an address was handed out twice");
    let store = Store::open(&cfg.data_dir, "weft").unwrap();
    assert_eq!(ip_files(store.dir()).len(), got.len());

    let release_all = || {
        run(|s, _, id| {
            release(s, &id, "eth0").unwrap();
            Vec::new()
        });
        assert!(ip_files(store.dir()).is_empty());
        assert_eq!(fs::read_dir(store.dir().join("attachments")).unwrap().count(), 0);
        assert!(fs::read_dir(store.dir()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("tmp.")));
        assert_eq!(fs::read_dir(store.dir().join("free")).unwrap().count(), 64, "the pool is full");
    };
    release_all();

    // Again, from the pool: each address's file is its owner's record, linked once more as its index.
    let got = run(|s, c, id| {
        let ips: Vec<IpAddr> = allocate(s, c, &id, "eth0").unwrap().iter().map(|c| c.address.ip()).collect();
        let index = s.dir().join(format!("attachments/{id}@eth0"));
        let record: Value = serde_json::from_slice(&fs::read(&index).unwrap()).unwrap();
        assert_eq!(record, json!({"containerID": id, "ifname": "eth0", "ips": ips}));
        for ip in &ips {
            let meta = fs::metadata(s.dir().join(ip.to_string())).unwrap();
            assert_eq!((meta.ino(), meta.nlink()), (fs::metadata(&index).unwrap().ino(), 3));
        }
        ips
    });
    let distinct: HashSet<IpAddr> = got.iter().copied().collect();
    assert_eq!(distinct.len(), 2 * THREADS * PER_THREAD, "an address was handed out twice");
    release_all();
}
