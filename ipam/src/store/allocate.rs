//! allocate / release / held / free_counts: the per-attachment operations.
//!
//! Allocation order per missing range set (steps as in `Step`):
//! 1. find the next free candidate after `last_reserved_ip.<set>` (one
//!    `lstat` each; exact, since we hold the lock);
//! 2. write the index naming it (intent: a crash from here on leaves a
//!    record that release and gc follow);
//! 3. hard-link a temp file holding the owner to the IP file (the link is
//!    the atomic arbiter: it fails if the address is taken, e.g. by a writer
//!    that ignores our lock, and we go on with the next candidate);
//! 4. record `last_reserved_ip.<set>`.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use weft_conf::{CniResult, IpConfig};

use super::files::{remove_if_exists, Holder};
use super::owner::Owner;
use super::{is_crash, Step, Store};
use crate::config::{IpamConfig, Range};
use crate::error::IpamError;
use crate::range::{candidates, describe_set, find_range, usable_in_set};

const ALLOC_INDEX_STEPS: (Step, Step) = (Step::AllocIndexTmpWritten, Step::AllocIndexWritten);

/// Allocates one address per range set for (id, ifname). Idempotent: if the
/// attachment already holds addresses, returns them (and allocates only for
/// range sets it holds none in). On failure, undoes what this call claimed.
pub fn allocate(
    store: &Store,
    cfg: &IpamConfig,
    container_id: &str,
    ifname: &str,
) -> Result<Vec<IpConfig>, IpamError> {
    let owner = Owner::new(container_id, ifname)?;
    let _guard = store.lock()?;
    let held = held_by(store, &owner)?;
    let mut chosen: Vec<Option<(&Range, IpAddr)>> = cfg
        .range_sets
        .iter()
        .map(|set| held.iter().find_map(|&ip| find_range(set, ip).map(|r| (r, ip))))
        .collect();
    let mut claimed = Vec::new();
    if let Err(e) = claim_missing(store, cfg, &owner, &held, &mut chosen, &mut claimed) {
        if !is_crash(&e) && !claimed.is_empty() {
            undo(store, &owner, &held, &claimed);
        }
        return Err(e);
    }
    Ok(chosen.into_iter().flatten().map(|(r, ip)| ip_config(r, ip)).collect())
}

/// Claims an address in every range set where `chosen` has none.
fn claim_missing<'c>(
    store: &Store,
    cfg: &'c IpamConfig,
    owner: &Owner,
    held: &[IpAddr],
    chosen: &mut [Option<(&'c Range, IpAddr)>],
    claimed: &mut Vec<IpAddr>,
) -> Result<(), IpamError> {
    let mut listed = held.to_vec();
    for (set_no, set) in cfg.range_sets.iter().enumerate() {
        if chosen[set_no].is_some() {
            continue;
        }
        let mut it = candidates(set, store.last_reserved(set_no));
        let (range, ip) = loop {
            let (range, ip) = match next_free(store, &mut it)? {
                Some(c) => c,
                None => return Err(IpamError::Exhausted { set: set_no, ranges: describe_set(set) }),
            };
            listed.push(ip);
            store.write_index(owner, &listed, ALLOC_INDEX_STEPS)?;
            if store.link_ip(ip, owner)? {
                break (range, ip);
            }
            listed.pop();
        };
        claimed.push(ip);
        chosen[set_no] = Some((range, ip));
        store.write_last_reserved(set_no, ip)?;
    }
    Ok(())
}

fn next_free<'a>(
    store: &Store,
    it: &mut impl Iterator<Item = (&'a Range, IpAddr)>,
) -> Result<Option<(&'a Range, IpAddr)>, IpamError> {
    for (range, ip) in it {
        if !store.is_taken(ip)? {
            return Ok(Some((range, ip)));
        }
    }
    Ok(None)
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
/// Only removes IP files whose content is that owner; the index goes last.
pub fn release(store: &Store, container_id: &str, ifname: &str) -> Result<(), IpamError> {
    let owner = Owner::new(container_id, ifname)?;
    let _guard = store.lock()?;
    let Some(index) = store.read_index(&owner)? else { return Ok(()) };
    for ip in index.ips {
        if store.holder(ip)? == Holder::Held(owner.clone()) {
            remove_if_exists(&store.ip_path(ip))?;
            store.reached(Step::ReleaseIpRemoved)?;
        }
    }
    remove_if_exists(&store.index_path(&owner))?;
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
