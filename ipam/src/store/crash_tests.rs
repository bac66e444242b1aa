//! Kills allocate, release and gc after every step (the test hook returns
//! early and skips all cleanup, as a dead process would), with the pool
//! empty, holding released records, holding an entry that is also a live
//! record, or full; reopens the store and checks what is left: no IP file
//! without a full owner, no address held twice, no live record rewritten,
//! only files with one name in the pool, repeated release or gc reclaims
//! everything, and allocation works (reusing a pooled inode if there is
//! one). Also: a garbled `last_reserved_ip.<set>`, and a writer that
//! ignores the lock taking an address between our `lstat` and our `link`.

use std::collections::HashSet;
use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde_json::json;
use tempfile::TempDir;

use super::files::{ip_of_name, owner_of_ip_file, Record};
use super::owner::Owner;
use super::pool::POOL_MAX;
use super::*;
use crate::config::IpamConfig;

/// What `free/` holds when the operation that is killed starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pool {
    /// Nothing: allocation writes a new temp file.
    Empty,
    /// Two records that P1 and P2 (longer IDs than X's, so a rewrite leaves
    /// an old tail until truncated) released.
    Released,
    /// One entry that is also B's index and IP files: never to be rewritten.
    Poisoned,
    /// `POOL_MAX` junk files: no room for a released index.
    Full,
}

const ALLOC_STEPS: [(Pool, Step); 12] = [
    (Pool::Empty, Step::AllocRecordWritten),
    (Pool::Empty, Step::AllocIndexWritten),
    (Pool::Empty, Step::AllocIpLinked),
    (Pool::Empty, Step::AllocLastReservedWritten),
    (Pool::Empty, Step::AllocLastReservedTruncated),
    (Pool::Poisoned, Step::AllocPoolEntryDropped),
    (Pool::Poisoned, Step::AllocRecordWritten),
    (Pool::Released, Step::AllocPooledRecordWritten),
    (Pool::Released, Step::AllocPooledRecordTruncated),
    (Pool::Released, Step::AllocPooledIndexWritten),
    (Pool::Released, Step::AllocIpLinked),
    (Pool::Released, Step::AllocLastReservedTruncated),
];
const RELEASE_STEPS: [(Pool, Step); 5] = [
    (Pool::Empty, Step::ReleaseIpRemoved),
    (Pool::Empty, Step::ReleaseIndexPooled),
    (Pool::Released, Step::ReleaseIndexPooled),
    (Pool::Full, Step::ReleaseIpRemoved),
    (Pool::Full, Step::ReleaseIndexRemoved),
];
const GC_STEPS: [Step; 7] = [
    Step::GcTempRemoved,
    Step::GcPoolEntryRemoved,
    Step::GcIpRemoved,
    Step::GcIndexPooled,
    Step::GcIndexRemoved,
    Step::GcIndexTmpWritten,
    Step::GcIndexWritten,
];

/// Every step is killed at by one of the tests below. The match is
/// exhaustive: a new step does not compile here until it is handled.
#[test]
fn every_step_is_killed_at() {
    let alloc = |step| ALLOC_STEPS.iter().any(|&(_, s)| s == step);
    let release = |step| RELEASE_STEPS.iter().any(|&(_, s)| s == step);
    let all = ALLOC_STEPS.iter().chain(&RELEASE_STEPS).map(|&(_, s)| s).chain(GC_STEPS);
    let mut seen = HashSet::new();
    for step in all {
        seen.insert(format!("{step:?}"));
        let listed = match step {
            Step::AllocRecordWritten
            | Step::AllocIndexWritten
            | Step::AllocPoolEntryDropped
            | Step::AllocPooledRecordWritten
            | Step::AllocPooledRecordTruncated
            | Step::AllocPooledIndexWritten
            | Step::AllocIpLinked
            | Step::AllocLastReservedWritten
            | Step::AllocLastReservedTruncated => alloc(step),
            Step::ReleaseIpRemoved | Step::ReleaseIndexPooled | Step::ReleaseIndexRemoved => release(step),
            Step::GcTempRemoved
            | Step::GcPoolEntryRemoved
            | Step::GcIpRemoved
            | Step::GcIndexPooled
            | Step::GcIndexRemoved
            | Step::GcIndexTmpWritten
            | Step::GcIndexWritten => GC_STEPS.contains(&step),
        };
        assert!(listed, "{step:?} is killed at by the wrong operation's test");
    }
    assert_eq!(seen.len(), 19, "a step of the match is never killed at: {seen:?}");
}

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

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

fn owner(id: &str) -> Owner {
    Owner::new(id, "eth0").unwrap()
}

fn ino(path: &Path) -> u64 {
    fs::symlink_metadata(path).unwrap().ino()
}

/// The inodes in the pool.
fn pool_inodes(store: &Store) -> Vec<u64> {
    names(&store.free_dir()).iter().map(|n| ino(&store.free_dir().join(n))).collect()
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
            assert!(files.contains(&(ip, owner(o))), "{o}: {ip} not on disk");
            assert!(seen.insert(ip), "{ip} held twice");
        }
    }
}

/// The pool as our operations keep it: at most `POOL_MAX` files, each with
/// no other name (so none is an index or an IP file).
fn check_pool(store: &Store) {
    let entries = names(&store.free_dir());
    assert!(entries.len() <= POOL_MAX, "{} pool entries", entries.len());
    for n in entries {
        let meta = fs::symlink_metadata(store.free_dir().join(&n)).unwrap();
        assert!(meta.is_file() && meta.nlink() == 1, "free/{n}: {meta:?}");
    }
}

/// After gc(valid=[]): no allocation, no temp file, no index, a tidy pool;
/// then a fresh allocation works, its index and both IP files are one
/// inode, and that inode comes from the pool if the pool had any.
fn check_gc_empties(store: &Store, cfg: &IpamConfig) {
    gc(store, &[]).unwrap();
    assert!(ip_files(store).is_empty());
    assert!(names(store.dir()).iter().all(|n| !n.starts_with("tmp.")), "{:?}", names(store.dir()));
    assert!(names(&store.attachments_dir()).is_empty());
    check_pool(store);
    let pooled = pool_inodes(store);
    let got = allocate(store, cfg, "fresh", "eth0").unwrap();
    assert_eq!(got.len(), 2);
    let index = fs::metadata(store.index_path(&owner("fresh"))).unwrap();
    assert_eq!(index.nlink(), 3);
    for (ip, _) in ip_files(store) {
        assert_eq!(fs::metadata(store.ip_path(ip)).unwrap().ino(), index.ino(), "{ip}");
    }
    if !pooled.is_empty() {
        assert!(pooled.contains(&index.ino()), "a pooled inode is reused");
        assert_eq!(pool_inodes(store).len(), pooled.len() - 1);
    }
    check_pool(store);
}

/// Puts into the pool what `pool` says; B holds addresses.
fn fill_pool(store: &Store, cfg: &IpamConfig, pool: Pool) {
    match pool {
        Pool::Empty => {}
        Pool::Released => {
            let ids = ["P1-a-longer-container-id", "P2-a-longer-container-id"];
            for id in ids {
                allocate(store, cfg, id, "eth0").unwrap();
            }
            for id in ids {
                release(store, id, "eth0").unwrap();
            }
            assert_eq!(names(&store.free_dir()), ["0", "1"]);
        }
        Pool::Poisoned => {
            fs::hard_link(store.index_path(&owner("B")), store.free_dir().join("b-too")).unwrap();
        }
        Pool::Full => {
            for i in 0..POOL_MAX {
                fs::write(store.free_dir().join(format!("junk{i}")), "junk").unwrap();
            }
        }
    }
}

/// A store where A and B hold addresses, the pool is filled as `pool`
/// says, and X's allocation died after `step`.
fn crashed_allocation(pool: Pool, step: Step) -> (TempDir, IpamConfig, Store) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(&dir);
    let store = open(&dir);
    allocate(&store, &cfg, "A", "eth0").unwrap();
    allocate(&store, &cfg, "B", "eth0").unwrap();
    fill_pool(&store, &cfg, pool);
    let b = fs::read(store.index_path(&owner("B"))).unwrap();
    let pooled = pool_inodes(&store);
    store.crash_after(Some(step));
    let e = allocate(&store, &cfg, "X", "eth0").unwrap_err();
    assert!(matches!(e, IpamError::Crashed { step: s } if s == step), "{pool:?} {step:?}: {e}");
    drop(store);
    let store = open(&dir);
    check_invariants(&store, &["A", "B", "X"]);
    check_pool(&store);
    assert_eq!(
        fs::read(store.index_path(&owner("B"))).unwrap(),
        b,
        "{pool:?} {step:?}: B's record rewritten"
    );
    let x = store.index_path(&owner("X"));
    match step {
        // X's record and the tail of P's: garbage, in the pool only.
        Step::AllocPooledRecordWritten => {
            let garbled = names(&store.free_dir())
                .iter()
                .map(|n| fs::read(store.free_dir().join(n)).unwrap())
                .filter(|c| c.starts_with(br#"{"containerID":"X""#))
                .count();
            assert_eq!(garbled, 1, "one pool file holds X's record and an old tail");
            assert!(!x.exists());
        }
        Step::AllocPooledIndexWritten => assert!(pooled.contains(&ino(&x)), "X's index is a pooled inode"),
        _ => {}
    }
    (dir, cfg, store)
}

#[test]
fn allocation_killed_after_any_step() {
    for (pool, step) in ALLOC_STEPS {
        // Retrying ADD completes it without duplicates.
        let (_d, cfg, store) = crashed_allocation(pool, step);
        let before: Vec<_> = ["A", "B"].iter().map(|o| held(&store, o, "eth0").unwrap()).collect();
        let x = allocate(&store, &cfg, "X", "eth0").unwrap();
        assert_eq!(x.len(), 2, "{pool:?} {step:?}");
        check_invariants(&store, &["A", "B", "X"]);
        check_pool(&store);
        assert_eq!(allocate(&store, &cfg, "X", "eth0").unwrap(), x, "{pool:?} {step:?}: idempotent");
        let after: Vec<_> = ["A", "B"].iter().map(|o| held(&store, o, "eth0").unwrap()).collect();
        assert_eq!(before, after, "{pool:?} {step:?}: others untouched");

        // DEL after the failed ADD reclaims whatever it got.
        let (_d, cfg, store) = crashed_allocation(pool, step);
        release(&store, "X", "eth0").unwrap();
        assert!(ip_files(&store).iter().all(|(_, o)| o.id != "X"), "{pool:?} {step:?}: X still holds");
        assert!(!store.index_path(&owner("X")).exists(), "{pool:?} {step:?}");
        check_pool(&store);
        check_gc_empties(&store, &cfg);

        // GC alone reclaims it too.
        let (_d, cfg, store) = crashed_allocation(pool, step);
        check_gc_empties(&store, &cfg);
    }
}

#[test]
fn release_killed_after_any_step() {
    for (pool, step) in RELEASE_STEPS {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg(&dir);
        let store = open(&dir);
        for o in ["A", "X", "B"] {
            allocate(&store, &cfg, o, "eth0").unwrap();
        }
        fill_pool(&store, &cfg, pool);
        let a = held(&store, "A", "eth0").unwrap();
        let x = ino(&store.index_path(&owner("X")));
        store.crash_after(Some(step));
        let e = release(&store, "X", "eth0").unwrap_err();
        assert!(matches!(e, IpamError::Crashed { step: s } if s == step), "{pool:?} {step:?}: {e}");
        drop(store);
        let store = open(&dir);
        check_invariants(&store, &["A", "B", "X"]);
        check_pool(&store);
        release(&store, "X", "eth0").unwrap();
        assert!(ip_files(&store).iter().all(|(_, o)| o.id != "X"), "{pool:?} {step:?}");
        assert!(held(&store, "X", "eth0").unwrap().is_empty());
        assert!(!store.index_path(&owner("X")).exists());
        // X's record waits in the pool, unless the pool was full.
        assert_eq!(pool_inodes(&store).contains(&x), pool != Pool::Full, "{pool:?} {step:?}");
        check_pool(&store);
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
        for o in ["A", "X", "B", "P"] {
            allocate(&store, &cfg, o, "eth0").unwrap();
        }
        release(&store, "P", "eth0").unwrap();
        let a = held(&store, "A", "eth0").unwrap();
        // Leftovers gc must tidy: a temp file, A's missing index, and two
        // more names of A's record (its IP files): in the pool, and as a
        // misnamed index. Only those names may go.
        fs::write(store.dir().join("tmp.999999.0"), "junk").unwrap();
        fs::remove_file(store.index_path(&owner("A"))).unwrap();
        fs::hard_link(store.ip_path(a[0]), store.free_dir().join("a-too")).unwrap();
        fs::hard_link(store.ip_path(a[1]), store.attachments_dir().join("wrongname")).unwrap();
        let a_record = fs::read(store.ip_path(a[0])).unwrap();
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
        assert_eq!(names(&store.attachments_dir()), ["A@eth0"]);
        assert!(names(store.dir()).iter().all(|n| !n.starts_with("tmp.")));
        for ip in &a {
            let meta = fs::metadata(store.ip_path(*ip)).unwrap();
            assert_eq!(meta.nlink(), 2, "{step:?}: A's record is its two IP files again");
            assert_eq!(fs::read(store.ip_path(*ip)).unwrap(), a_record, "{step:?}");
        }
        // P's, X's and B's records wait in the pool.
        check_pool(&store);
        assert_eq!(pool_inodes(&store).len(), 3, "{step:?}: {:?}", names(&store.free_dir()));
        release(&store, "A", "eth0").unwrap();
        check_gc_empties(&store, &cfg);
    }
}

#[test]
fn records_with_another_name_are_never_pooled_nor_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(&dir);
    let store = open(&dir);
    for o in ["A", "X"] {
        allocate(&store, &cfg, o, "eth0").unwrap();
    }
    // X's record under a name we do not know: release unlinks the index.
    let notes = store.dir().join("notes");
    fs::hard_link(store.index_path(&owner("X")), &notes).unwrap();
    let x = fs::read(&notes).unwrap();
    release(&store, "X", "eth0").unwrap();
    assert!(names(&store.free_dir()).is_empty(), "not pooled");
    assert!(!store.index_path(&owner("X")).exists());
    assert_eq!(fs::metadata(&notes).unwrap().nlink(), 1);
    // A's record in the pool: allocation drops the pool name, uses a new inode.
    let a_index = store.index_path(&owner("A"));
    fs::hard_link(&a_index, store.free_dir().join("a-too")).unwrap();
    let a = fs::read(&a_index).unwrap();
    allocate(&store, &cfg, "Y", "eth0").unwrap();
    assert!(names(&store.free_dir()).is_empty(), "pool name dropped");
    assert_eq!(fs::read(&a_index).unwrap(), a, "A's record untouched");
    assert_eq!(fs::metadata(&a_index).unwrap().nlink(), 3, "A's index and two IP files");
    assert_ne!(ino(&store.index_path(&owner("Y"))), ino(&a_index));
    assert_eq!(fs::read(&notes).unwrap(), x);
    check_invariants(&store, &["A", "X", "Y"]);
    // A pooled symlink or FIFO is never opened; gc removes them (and leaves
    // a directory, which we never make, alone).
    std::os::unix::fs::symlink(&a_index, store.free_dir().join("link")).unwrap();
    fs::create_dir(store.free_dir().join("dir")).unwrap();
    assert!(std::process::Command::new("mkfifo")
        .arg(store.free_dir().join("fifo"))
        .status()
        .unwrap()
        .success());
    release(&store, "Y", "eth0").unwrap();
    allocate(&store, &cfg, "Z", "eth0").unwrap();
    assert_eq!(names(&store.free_dir()), ["dir", "fifo", "link"], "Y's record is Z's");
    assert_eq!(fs::read(&a_index).unwrap(), a);
    gc(&store, &[]).unwrap();
    assert_eq!(names(&store.free_dir()), ["0", "1", "dir"], "A's and Z's records");
    assert_eq!(fs::read(&notes).unwrap(), x);
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
    for pool in [Pool::Empty, Pool::Released] {
        for (hook, v6) in hooks {
            let dir = tempfile::tempdir().unwrap();
            let cfg = cfg(&dir);
            let store = open(&dir);
            allocate(&store, &cfg, "A", "eth0").unwrap();
            allocate(&store, &cfg, "B", "eth0").unwrap();
            fill_pool(&store, &cfg, pool);
            let pooled = pool_inodes(&store);
            let at =
                if pool == Pool::Empty { Step::AllocIndexWritten } else { Step::AllocPooledIndexWritten };
            store.on_step(at, hook);
            let x: Vec<IpAddr> =
                allocate(&store, &cfg, "X", "eth0").unwrap().iter().map(|c| c.address.ip()).collect();
            assert_eq!(x.len(), 2);
            let intruder = owner("intruder");
            let lost: Vec<IpAddr> =
                ip_files(&store).into_iter().filter(|(_, o)| *o == intruder).map(|(ip, _)| ip).collect();
            assert_eq!(lost.len(), 1, "{pool:?} {v6}: the intruder's file is untouched");
            assert_eq!(lost[0].is_ipv6(), v6);
            assert!(!x.contains(&lost[0]), "{pool:?} {v6}: {x:?}");
            check_invariants(&store, &["A", "B", "X"]);
            check_pool(&store);
            let index: Record =
                serde_json::from_slice(&fs::read(store.index_path(&owner("X"))).unwrap()).unwrap();
            assert_eq!(index.ips, x, "{pool:?} {v6}: the index names what X holds, not the lost address");
            if pool == Pool::Released {
                // Both records X wrote are pooled inodes.
                assert!(pooled.contains(&ino(&store.index_path(&owner("X")))));
                assert!(x.iter().all(|&ip| pooled.contains(&ino(&store.ip_path(ip)))));
                assert!(pool_inodes(&store).is_empty());
            }
            assert!(names(store.dir()).iter().all(|n| !n.starts_with("tmp.")));
            release(&store, "X", "eth0").unwrap();
            assert!(ip_files(&store).iter().all(|(_, o)| o.id != "X"), "{pool:?} {v6}");
            assert!(ip_files(&store).iter().any(|(ip, _)| *ip == lost[0]), "{pool:?} {v6}: release left it");
        }
    }
}
