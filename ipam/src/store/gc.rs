//! CNI GC: reclaims every address whose attachment is not in the runtime's
//! valid list, and tidies what a killed process may have left: temp files,
//! index entries naming addresses their owner does not hold, and missing
//! index entries (e.g. for IP files host-local wrote).
//!
//! Order: (1) temp files; (2) the pool, trimmed to `POOL_MAX` files that
//! have no other name (other entries lose their pool name: nothing else is
//! removed); (3) IP files of invalid owners; (4) index files, each retired
//! (into the pool, or unlinked if it has another name or the pool is full),
//! rewritten to what the IP files say, or kept; (5) an index for each valid
//! owner that holds addresses but had none. A crash between any two steps
//! leaves a state that the next gc, or release, finishes. Rewriting an
//! index is a new record (a new temp file: gc is rare, it leaves the pool
//! to allocations) renamed over it, never a write in place: the old record
//! may also be the owner's IP files.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use super::files::{ip_of_name, is_temp, read_index_file, remove_if_exists, Holder, IndexSteps};
use super::owner::Owner;
use super::pool::Pool;
use super::{Step, Store};
use crate::error::IpamError;
use crate::range::to_u128;

// Rare: a new inode is as good as a pooled one.
const GC_INDEX_STEPS: IndexSteps =
    IndexSteps { temp_written: Step::GcIndexTmpWritten, temp_renamed: Step::GcIndexWritten, pooled: None };

/// CNI GC: releases every allocation whose (id, ifname) is not in `valid`;
/// removes stray temp files and dangling index entries. Returns what it
/// released, in address order. Idempotent.
pub fn gc(store: &Store, valid: &[(String, String)]) -> Result<Vec<IpAddr>, IpamError> {
    let valid: HashSet<Owner> =
        valid.iter().map(|(id, ifname)| Owner { id: id.clone(), ifname: ifname.clone() }).collect();
    let _guard = store.lock()?;
    // 1. Temp files: no other process writes now, so every one is a leftover.
    let names = store.list(store.dir())?;
    for name in names.iter().filter(|n| is_temp(n)) {
        remove_if_exists(&store.dir().join(name))?;
        store.reached(Step::GcTempRemoved)?;
    }
    // 2. The pool: at most POOL_MAX files, each with no other name.
    let mut pool = store.tidy_pool(Step::GcPoolEntryRemoved)?;
    // 3. IP files: reclaim those of invalid owners, note the rest.
    let mut released = Vec::new();
    let mut kept: BTreeMap<Owner, Vec<IpAddr>> = BTreeMap::new();
    let mut ips: Vec<IpAddr> = names.iter().filter_map(|n| ip_of_name(n)).collect();
    ips.sort_by_key(|&ip| (ip.is_ipv6(), to_u128(ip)));
    for ip in ips {
        match store.holder(ip)? {
            Holder::Held(o) if valid.contains(&o) => kept.entry(o).or_default().push(ip),
            Holder::Free => {}
            Holder::Held(_) | Holder::Garbled => {
                remove_if_exists(&store.ip_path(ip))?;
                released.push(ip);
                store.reached(Step::GcIpRemoved)?;
            }
        }
    }
    // 4. Index files.
    for name in store.list(&store.attachments_dir())? {
        tidy_index(store, &name, &valid, &mut kept, &mut pool)?;
    }
    // 5. Valid owners whose addresses no index named.
    for (owner, ips) in kept {
        store.write_index(&owner, &ips, GC_INDEX_STEPS)?;
    }
    Ok(released)
}

/// Keeps, rewrites or removes (into the pool if it can) one index file;
/// takes the owner out of `kept` once its index is right.
fn tidy_index(
    store: &Store,
    name: &str,
    valid: &HashSet<Owner>,
    kept: &mut BTreeMap<Owner, Vec<IpAddr>>,
    pool: &mut Pool,
) -> Result<(), IpamError> {
    let path = store.attachments_dir().join(name);
    // Unreadable JSON is as good as absent: step 5 rewrites valid owners' indexes.
    let index = read_index_file(&path).ok().flatten();
    let owner = index.as_ref().map(|i| i.owner());
    let live = match (&index, &owner) {
        (Some(_), Some(o)) if o.index_name() == name && valid.contains(o) => kept.contains_key(o),
        _ => false,
    };
    if !live {
        // Its owner's IP files are gone (step 3), or not linked to it: a
        // misnamed index may still be a valid owner's IP file, and then
        // has another name, so it is unlinked rather than pooled.
        return store.retire_index(&path, pool, (Step::GcIndexPooled, Step::GcIndexRemoved));
    }
    // `live` implies both are Some and the owner is in `kept`.
    let (Some(index), Some(owner)) = (index, owner) else { return Ok(()) };
    let Some(actual) = kept.remove(&owner) else { return Ok(()) };
    // Keep the index's order (range set order), then any address it missed.
    let mut want: Vec<IpAddr> = Vec::new();
    for &ip in index.ips.iter().chain(&actual) {
        if actual.contains(&ip) && !want.contains(&ip) {
            want.push(ip);
        }
    }
    if want != index.ips {
        store.write_index(&owner, &want, GC_INDEX_STEPS)?;
    }
    Ok(())
}
