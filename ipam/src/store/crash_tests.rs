//! Kills allocate, release and gc after every step (the test hook returns
//! early and skips all cleanup, as a dead process would), reopens the store
//! and checks what is left: no IP file without a full owner, no address held
//! twice, repeated release or gc reclaims everything, and allocation works.
//! Also: a garbled `last_reserved_ip.<set>`, and a writer that ignores the
//! lock taking an address between our `lstat` and our `link`.

use std::collections::HashSet;
use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;

use serde_json::json;
use tempfile::TempDir;

use super::files::{ip_of_name, owner_of_ip_file, Record};
use super::owner::Owner;
use super::*;
use crate::config::IpamConfig;

const ALLOC_STEPS: [Step; 5] = [
    Step::AllocRecordWritten,
    Step::AllocIndexWritten,
    Step::AllocIpLinked,
    Step::AllocLastReservedWritten,
    Step::AllocLastReservedTruncated,
];
const RELEASE_STEPS: [Step; 2] = [Step::ReleaseIpRemoved, Step::ReleaseIndexRemoved];
const GC_STEPS: [Step; 5] = [
    Step::GcTempRemoved,
    Step::GcIpRemoved,
    Step::GcIndexRemoved,
    Step::GcIndexTmpWritten,
    Step::GcIndexWritten,
];

/// Two range sets (one address each per attachment), small enough to fill.
fn cfg(dir: &TempDir) -> IpamConfig {
    IpamConfig::parse(&json!({
        "type": "weft-ipam",
        "ranges": [[{"subnet": "10.0.0.0/29"}], [{"subnet": "fd00::/125"}]],
        "dataDir": dir.path(),
    }))
    .unwrap()
}

fn open(dir: &TempDir) -> Store {
    Store::open(dir.path(), "net").unwrap()
}

/// Every IP file with the owner it names; panics on a partial owner.
fn ip_files(store: &Store) -> Vec<(IpAddr, Owner)> {
    let mut out = Vec::new();
    for e in fs::read_dir(store.dir()).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if let Some(ip) = ip_of_name(&name) {
            let content = fs::read(store.dir().join(&name)).unwrap();
            let owner = owner_of_ip_file(&content).filter(|o| !o.ifname.is_empty());
            let shown = String::from_utf8_lossy(&content);
            out.push((ip, owner.unwrap_or_else(|| panic!("IP file {name} holds {shown:?}"))));
        }
    }
    out
}

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

/// No partial owners, at most one address per range set per owner, and
/// what `held` reports is backed by the IP files and never shared.
fn check_invariants(store: &Store, owners: &[&str]) {
    let files = ip_files(store);
    for o in owners {
        let mine: Vec<IpAddr> = files.iter().filter(|(_, f)| f.id == *o).map(|(ip, _)| *ip).collect();
        assert!(mine.iter().filter(|ip| ip.is_ipv4()).count() <= 1, "{o} holds {mine:?}");
        assert!(mine.iter().filter(|ip| ip.is_ipv6()).count() <= 1, "{o} holds {mine:?}");
    }
    let mut seen = HashSet::new();
    for o in owners {
        for ip in held(store, o, "eth0").unwrap() {
            assert!(files.contains(&(ip, Owner::new(o, "eth0").unwrap())), "{o}: {ip} not on disk");
            assert!(seen.insert(ip), "{ip} held twice");
        }
    }
}

/// After gc(valid=[]): no allocation, no temp file, no index; then a fresh
/// allocation works, and its index and both IP files are one inode.
fn check_gc_empties(store: &Store, cfg: &IpamConfig) {
    gc(store, &[]).unwrap();
    assert!(ip_files(store).is_empty());
    assert!(names(store.dir()).iter().all(|n| !n.starts_with("tmp.")), "{:?}", names(store.dir()));
    assert!(names(&store.dir().join("attachments")).is_empty());
    let got = allocate(store, cfg, "fresh", "eth0").unwrap();
    assert_eq!(got.len(), 2);
    let index = fs::metadata(store.index_path(&Owner::new("fresh", "eth0").unwrap())).unwrap();
    assert_eq!(index.nlink(), 3);
    for (ip, _) in ip_files(store) {
        assert_eq!(fs::metadata(store.ip_path(ip)).unwrap().ino(), index.ino(), "{ip}");
    }
}

/// A store where A and B hold addresses and X's allocation died after `step`.
fn crashed_allocation(step: Step) -> (TempDir, IpamConfig, Store) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(&dir);
    let store = open(&dir);
    allocate(&store, &cfg, "A", "eth0").unwrap();
    allocate(&store, &cfg, "B", "eth0").unwrap();
    store.crash_after(Some(step));
    let e = allocate(&store, &cfg, "X", "eth0").unwrap_err();
    assert!(matches!(e, IpamError::Crashed { step: s } if s == step), "{step:?}: {e}");
    drop(store);
    let store = open(&dir);
    check_invariants(&store, &["A", "B", "X"]);
    (dir, cfg, store)
}

#[test]
fn allocation_killed_after_any_step() {
    for step in ALLOC_STEPS {
        // Retrying ADD completes it without duplicates.
        let (_d, cfg, store) = crashed_allocation(step);
        let before: Vec<_> = ["A", "B"].iter().map(|o| held(&store, o, "eth0").unwrap()).collect();
        let x = allocate(&store, &cfg, "X", "eth0").unwrap();
        assert_eq!(x.len(), 2, "{step:?}");
        check_invariants(&store, &["A", "B", "X"]);
        assert_eq!(allocate(&store, &cfg, "X", "eth0").unwrap(), x, "{step:?}: idempotent");
        let after: Vec<_> = ["A", "B"].iter().map(|o| held(&store, o, "eth0").unwrap()).collect();
        assert_eq!(before, after, "{step:?}: others untouched");

        // DEL after the failed ADD reclaims whatever it got.
        let (_d, cfg, store) = crashed_allocation(step);
        release(&store, "X", "eth0").unwrap();
        assert!(ip_files(&store).iter().all(|(_, o)| o.id != "X"), "{step:?}: X still holds an address");
        assert!(!store.index_path(&Owner::new("X", "eth0").unwrap()).exists(), "{step:?}");
        check_gc_empties(&store, &cfg);

        // GC alone reclaims it too.
        let (_d, cfg, store) = crashed_allocation(step);
        check_gc_empties(&store, &cfg);
    }
}

#[test]
fn release_killed_after_any_step() {
    for step in RELEASE_STEPS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg(&dir);
        let store = open(&dir);
        for o in ["A", "X", "B"] {
            allocate(&store, &cfg, o, "eth0").unwrap();
        }
        let a = held(&store, "A", "eth0").unwrap();
        store.crash_after(Some(step));
        let e = release(&store, "X", "eth0").unwrap_err();
        assert!(matches!(e, IpamError::Crashed { step: s } if s == step), "{step:?}: {e}");
        drop(store);
        let store = open(&dir);
        check_invariants(&store, &["A", "B", "X"]);
        release(&store, "X", "eth0").unwrap();
        assert!(ip_files(&store).iter().all(|(_, o)| o.id != "X"), "{step:?}");
        assert!(held(&store, "X", "eth0").unwrap().is_empty());
        assert_eq!(held(&store, "A", "eth0").unwrap(), a);
        assert_eq!(allocate(&store, &cfg, "Y", "eth0").unwrap().len(), 2);
        check_invariants(&store, &["A", "B", "X", "Y"]);
        check_gc_empties(&store, &cfg);
    }
}

#[test]
fn gc_killed_after_any_step() {
    for step in GC_STEPS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg(&dir);
        let store = open(&dir);
        for o in ["A", "X", "B"] {
            allocate(&store, &cfg, o, "eth0").unwrap();
        }
        let a = held(&store, "A", "eth0").unwrap();
        // Leftovers gc must tidy: a temp file and A's missing index.
        fs::write(store.dir().join("tmp.999999.0"), "junk").unwrap();
        fs::remove_file(store.index_path(&Owner::new("A", "eth0").unwrap())).unwrap();
        let valid = [("A".to_string(), "eth0".to_string())];
        store.crash_after(Some(step));
        let e = gc(&store, &valid).unwrap_err();
        assert!(matches!(e, IpamError::Crashed { step: s } if s == step), "{step:?}: {e}");
        drop(store);
        let store = open(&dir);
        check_invariants(&store, &["A", "B", "X"]);
        let mut released = gc(&store, &valid).unwrap();
        released.extend(gc(&store, &valid).unwrap());
        assert!(released.iter().all(|ip| !a.contains(ip)), "{step:?}");
        let left: Vec<IpAddr> = ip_files(&store).into_iter().map(|(ip, _)| ip).collect();
        assert_eq!(left.len(), 2, "{step:?}: only A's addresses remain");
        assert!(a.iter().all(|ip| left.contains(ip)));
        assert_eq!(held(&store, "A", "eth0").unwrap(), a, "{step:?}: index rebuilt");
        assert_eq!(names(&store.dir().join("attachments")), ["A@eth0"]);
        assert!(names(store.dir()).iter().all(|n| !n.starts_with("tmp.")));
        release(&store, "A", "eth0").unwrap();
        check_gc_empties(&store, &cfg);
    }
}

#[test]
fn a_garbled_last_reserved_is_only_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(&dir);
    let store = open(&dir);
    allocate(&store, &cfg, "A", "eth0").unwrap();
    let hint = store.dir().join("last_reserved_ip.0");
    assert_eq!(fs::read_to_string(&hint).unwrap(), "10.0.0.2");
    let inode = fs::metadata(&hint).unwrap().ino();
    // Whatever it holds reads as no hint or as some address (maybe of the
    // other family, or outside the set), and the allocation is still right.
    for junk in [&b"10.0.0.2 and a longer tail"[..], b"", b"\xff\xfe", b"fd00::9", b"10.0.0.99", b"10.0.0.2"]
    {
        fs::write(&hint, junk).unwrap();
        let got = allocate(&store, &cfg, "J", "eth0").unwrap();
        assert_eq!(got[0].address.ip(), "10.0.0.3".parse::<IpAddr>().unwrap(), "{junk:?}");
        check_invariants(&store, &["A", "J"]);
        release(&store, "J", "eth0").unwrap();
    }
    assert_eq!(store.last_reserved(0), Some("10.0.0.3".parse().unwrap()));
    // Killed between the in-place write and the truncation: the new address
    // followed by the old text's tail, which reads as no hint.
    fs::write(&hint, "10.0.0.2 and a longer tail").unwrap();
    store.crash_after(Some(Step::AllocLastReservedWritten));
    assert!(allocate(&store, &cfg, "X", "eth0").is_err());
    store.crash_after(None);
    assert_eq!(fs::read_to_string(&hint).unwrap(), "10.0.0.3 and a longer tail");
    assert_eq!(store.last_reserved(0), None);
    check_invariants(&store, &["A", "X"]);
    // The lstat and the link decide: the next allocation skips A's and X's.
    let y = allocate(&store, &cfg, "Y", "eth0").unwrap();
    assert_eq!(y[0].address.ip(), "10.0.0.4".parse::<IpAddr>().unwrap());
    assert_eq!(fs::read_to_string(&hint).unwrap(), "10.0.0.4");
    assert_eq!(fs::metadata(&hint).unwrap().ino(), inode, "overwritten in place");
    check_invariants(&store, &["A", "X", "Y"]);
}

/// Writes host-local's text, as a process ignoring our lock would, into the
/// IP file of every address of family `v6` that X's new index names.
fn intrude(dir: &std::path::Path, v6: bool) {
    let index: Record = serde_json::from_slice(&fs::read(dir.join("attachments/X@eth0")).unwrap()).unwrap();
    for ip in index.ips.iter().filter(|ip| ip.is_ipv6() == v6) {
        fs::write(dir.join(ip.to_string()), "intruder\r\neth0").unwrap();
    }
}

#[test]
fn an_address_taken_behind_our_back_is_chosen_again() {
    let hooks: [(StepHook, bool); 2] = [(|d| intrude(d, false), false), (|d| intrude(d, true), true)];
    for (hook, v6) in hooks {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg(&dir);
        let store = open(&dir);
        allocate(&store, &cfg, "A", "eth0").unwrap();
        store.on_step(Step::AllocIndexWritten, hook);
        let x: Vec<IpAddr> =
            allocate(&store, &cfg, "X", "eth0").unwrap().iter().map(|c| c.address.ip()).collect();
        let lost: IpAddr = if v6 { "fd00::3" } else { "10.0.0.3" }.parse().unwrap();
        assert!(!x.contains(&lost), "{v6}: {x:?}");
        assert_eq!(x.len(), 2);
        let intruder = Owner::new("intruder", "eth0").unwrap();
        assert!(ip_files(&store).contains(&(lost, intruder)), "{v6}: the intruder's file is untouched");
        check_invariants(&store, &["A", "X"]);
        let index: Record =
            serde_json::from_slice(&fs::read(store.dir().join("attachments/X@eth0")).unwrap()).unwrap();
        assert_eq!(index.ips, x, "{v6}: the index names what X holds, not the lost address");
        assert!(names(store.dir()).iter().all(|n| !n.starts_with("tmp.")));
        release(&store, "X", "eth0").unwrap();
        assert!(ip_files(&store).iter().all(|(_, o)| o.id != "X"), "{v6}");
        assert!(ip_files(&store).iter().any(|(ip, _)| *ip == lost), "{v6}: release left the intruder's file");
    }
}
