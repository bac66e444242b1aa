//! allocate / release / held / free_counts: the per-attachment operations.
//!
//! Allocation order (steps as in `Step`), all under the store's lock:
//! 1. for every range set the attachment holds nothing in, find the next
//!    free candidate after `last_reserved_ip.<set>` (one `lstat` each;
//!    exact, since we hold the lock); nothing is written yet;
//! 2. write one record naming the held and chosen addresses to a file:
//!    - a pooled one, if `free/` has a file whose only name is its pool
//!      name: list `free/`, open an entry without `O_CREAT`, `fstat` it
//!      (another name: drop the pool name, `AllocPoolEntryDropped`, try the
//!      next), overwrite it (`AllocPooledRecordWritten`), cut it to the
//!      record's length if it was longer (`AllocPooledRecordTruncated`);
//!    - else a new temp file (`AllocRecordWritten`): a new inode;
//! 3. rename it over the index (`AllocPooledIndexWritten`, or
//!    `AllocIndexWritten` for a temp file): the intent, which a crash from
//!    here on leaves for release and gc to follow;
//! 4. hard-link the index as each chosen IP file (`AllocIpLinked`); the link
//!    is the atomic arbiter: it fails if the address is taken, by a writer
//!    that ignores our lock, and then (rare, only correct, not fast) we
//!    choose again for that set and go back to 2 for a new record;
//! 5. overwrite `last_reserved_ip.<set>` in place (`AllocLastReservedWritten`,
//!    then `AllocLastReservedTruncated`): only a hint.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use weft_conf::{CniResult, IpConfig};

use super::files::{remove_if_exists, Holder, IndexSteps};
use super::owner::Owner;
use super::pool::PoolSteps;
use super::{is_crash, Step, Store};
use crate::config::{IpamConfig, Range};
use crate::error::IpamError;
use crate::range::{candidates, describe_set, find_range, usable_in_set, Candidates};

const ALLOC_INDEX_STEPS: IndexSteps = IndexSteps {
    temp_written: Step::AllocRecordWritten,
    temp_renamed: Step::AllocIndexWritten,
    pooled: Some(PoolSteps {
        dropped: Step::AllocPoolEntryDropped,
        overwritten: Step::AllocPooledRecordWritten,
        truncated: Step::AllocPooledRecordTruncated,
        renamed: Step::AllocPooledIndexWritten,
    }),
};

/// Allocates one address per range set for (id, ifname). Idempotent: if the
/// attachment already holds addresses, returns them (and allocates only for
/// range sets it holds none in). On failure, undoes what this call claimed.
pub fn allocate(
    store: &Store,
    cfg: &IpamConfig,
    container_id: &str,
    ifname: &str,
) -> Result<Vec<IpConfig>, IpamError> {
    allocate_attachment(store, cfg, container_id, ifname).map(|a| a.ips)
}

/// What `allocate_attachment` gave: the addresses, and whether the
/// attachment held none before (so a caller's undo frees only what it made).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub ips: Vec<IpConfig>,
    pub fresh: bool,
}

/// `allocate`, also telling whether this call made the attachment's first
/// allocation, found under the same lock (no second read of the store).
pub fn allocate_attachment(
    store: &Store,
    cfg: &IpamConfig,
    container_id: &str,
    ifname: &str,
) -> Result<Allocation, IpamError> {
    let owner = Owner::new(container_id, ifname)?;
    let _guard = store.lock()?;
    let held = held_by(store, &owner)?;
    let mut chosen: Vec<Option<(&Range, IpAddr)>> = cfg
        .range_sets
        .iter()
        .map(|set| held.iter().find_map(|&ip| find_range(set, ip).map(|r| (r, ip))))
        .collect();
    let mut written = Written::default();
    if let Err(e) = claim_missing(store, cfg, &owner, &held, &mut chosen, &mut written) {
        if !is_crash(&e) && written.index {
            undo(store, &owner, &held, &written.ips);
        }
        return Err(e);
    }
    let ips = chosen.into_iter().flatten().map(|(r, ip)| ip_config(r, ip)).collect();
    Ok(Allocation { ips, fresh: held.is_empty() })
}

/// What a failed allocation has to undo: whether it replaced the index,
/// and the IP files it linked.
#[derive(Debug, Default)]
struct Written {
    index: bool,
    ips: Vec<IpAddr>,
}

/// The address chosen in one range set, and the candidates after it.
struct Pick<'c> {
    set_no: usize,
    range: &'c Range,
    ip: IpAddr,
    rest: Candidates<'c>,
    linked: bool,
}

/// Claims an address in every range set where `chosen` has none.
fn claim_missing<'c>(
    store: &Store,
    cfg: &'c IpamConfig,
    owner: &Owner,
    held: &[IpAddr],
    chosen: &mut [Option<(&'c Range, IpAddr)>],
    written: &mut Written,
) -> Result<(), IpamError> {
    let mut picks = Vec::new();
    for (set_no, set) in cfg.range_sets.iter().enumerate() {
        if chosen[set_no].is_none() {
            let mut rest = candidates(set, store.last_reserved(set_no));
            let (range, ip) = next_free(store, cfg, set_no, &mut rest)?;
            picks.push(Pick { set_no, range, ip, rest, linked: false });
        }
    }
    if picks.is_empty() {
        return Ok(());
    }
    while let Some(lost) = publish(store, owner, held, &mut picks, written)? {
        let p = &mut picks[lost];
        (p.range, p.ip) = next_free(store, cfg, p.set_no, &mut p.rest)?;
    }
    for p in &picks {
        chosen[p.set_no] = Some((p.range, p.ip));
        store.write_last_reserved(p.set_no, p.ip)?;
    }
    Ok(())
}

/// Writes one record naming `held` and the picks as the owner's index, then
/// links it as every pick's IP file not linked yet. `Some(i)`: the address
/// of `picks[i]` was taken meanwhile (its link failed).
fn publish(
    store: &Store,
    owner: &Owner,
    held: &[IpAddr],
    picks: &mut [Pick<'_>],
    written: &mut Written,
) -> Result<Option<usize>, IpamError> {
    let ips: Vec<IpAddr> = held.iter().copied().chain(picks.iter().map(|p| p.ip)).collect();
    written.index = true;
    store.write_index(owner, &ips, ALLOC_INDEX_STEPS)?;
    for (i, p) in picks.iter_mut().enumerate().filter(|(_, p)| !p.linked) {
        if !store.link_ip(p.ip, owner)? {
            return Ok(Some(i));
        }
        p.linked = true;
        written.ips.push(p.ip);
    }
    Ok(None)
}

/// The next candidate of set `set_no` without an IP file.
fn next_free<'c>(
    store: &Store,
    cfg: &'c IpamConfig,
    set_no: usize,
    it: &mut Candidates<'c>,
) -> Result<(&'c Range, IpAddr), IpamError> {
    for (range, ip) in it {
        if !store.is_taken(ip)? {
            return Ok((range, ip));
        }
    }
    Err(IpamError::Exhausted { set: set_no, ranges: describe_set(&cfg.range_sets[set_no]) })
}

/// Best effort: gives back the addresses a failed allocation claimed.
fn undo(store: &Store, owner: &Owner, held: &[IpAddr], claimed: &[IpAddr]) {
    for &ip in claimed {
        if matches!(store.holder(ip), Ok(Holder::Held(o)) if o == *owner) {
            let _ = remove_if_exists(&store.ip_path(ip));
        }
    }
    let _ = if held.is_empty() {
        remove_if_exists(&store.index_path(owner))
    } else {
        store.write_index(owner, held, ALLOC_INDEX_STEPS)
    };
}

fn ip_config(range: &Range, ip: IpAddr) -> IpConfig {
    // A prefix taken from a valid IpNetwork of the same family is valid.
    let address = IpNetwork::new(ip, range.subnet.prefix()).expect("prefix of the range's subnet");
    IpConfig { address, gateway: Some(range.gateway_addr()), interface: None }
}

/// The addresses of the owner's index that its IP files confirm it holds.
fn held_by(store: &Store, owner: &Owner) -> Result<Vec<IpAddr>, IpamError> {
    let Some(index) = store.read_index(owner)? else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for ip in index.ips {
        if !out.contains(&ip) && store.holder(ip)? == Holder::Held(owner.clone()) {
            out.push(ip);
        }
    }
    Ok(out)
}

/// Releases what (id, ifname) holds. Idempotent: Ok when nothing is held.
/// Only removes IP files that name that owner; the index goes last, into
/// the pool when it has no other name left and the pool has room.
pub fn release(store: &Store, container_id: &str, ifname: &str) -> Result<(), IpamError> {
    let owner = Owner::new(container_id, ifname)?;
    let _guard = store.lock()?;
    let index = match store.read_index(&owner) {
        Ok(Some(index)) => index,
        Ok(None) => return Ok(()),
        // A DEL that failed here forever would leak the address (a runtime
        // without GC never reclaims it): free what can be found instead.
        Err(IpamError::Corrupt { path, .. }) => return release_corrupt(store, &owner, &path),
        Err(e) => return Err(e),
    };
    for ip in index.ips {
        if store.holder(ip)? == Holder::Held(owner.clone()) {
            remove_if_exists(&store.ip_path(ip))?;
            store.reached(Step::ReleaseIpRemoved)?;
        }
    }
    let mut pool = store.pool()?;
    store.retire_index(
        &store.index_path(&owner),
        &mut pool,
        (Step::ReleaseIndexPooled, Step::ReleaseIndexRemoved),
    )
}

/// Release when the owner's index is unreadable: an IP file is the owner's
/// when it is a hard link of the index (same inode, so equally garbled) or
/// names the owner; those go, then the index (unlinked, never pooled).
fn release_corrupt(store: &Store, owner: &Owner, index: &std::path::Path) -> Result<(), IpamError> {
    use std::os::unix::fs::MetadataExt;
    let identity = |m: std::fs::Metadata| (m.dev(), m.ino());
    let index_id = std::fs::symlink_metadata(index).map(identity).ok();
    for ip in store.ip_files()? {
        let path = store.ip_path(ip);
        let linked = index_id.is_some() && std::fs::symlink_metadata(&path).map(identity).ok() == index_id;
        if linked || store.holder(ip)? == Holder::Held(owner.clone()) {
            remove_if_exists(&path)?;
            store.reached(Step::ReleaseIpRemoved)?;
        }
    }
    remove_if_exists(index)?;
    store.reached(Step::ReleaseIndexRemoved)
}

/// The addresses (id, ifname) holds (for CNI CHECK). Read-only.
pub fn held(store: &Store, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, IpamError> {
    let owner = Owner::new(container_id, ifname)?;
    let _guard = store.lock_shared()?;
    held_by(store, &owner)
}

/// Free addresses left per range set (for CNI STATUS). Read-only; lists
/// the network directory once.
pub fn free_counts(store: &Store, cfg: &IpamConfig) -> Result<Vec<u128>, IpamError> {
    let _guard = store.lock_shared()?;
    let taken = store.ip_files()?;
    Ok(cfg
        .range_sets
        .iter()
        .map(|set| {
            let used = taken.iter().filter(|&&ip| find_range(set, ip).is_some()).count();
            usable_in_set(set).saturating_sub(used as u128)
        })
        .collect())
}

/// The result the standalone `weft-ipam` plugin replies with: the addresses
/// and the config's routes, no interfaces. Pure.
pub fn ipam_result(cfg: &IpamConfig, ips: Vec<IpConfig>) -> CniResult {
    CniResult { ips, routes: cfg.routes.clone(), ..CniResult::default() }
}
