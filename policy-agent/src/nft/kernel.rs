//! Applying an `NftRendered` table in the calling thread's netns through
//! `nft -j -f -` (the JSON the `nftables` crate's types serialise to; run by
//! `weft_netkit::tool` so that nft's stderr reaches the error, which the
//! crate's own runner drops).
//!
//! Each change is one transaction, so the table is never half-written and a
//! refused transaction (a kernel without a feature, a bad element) leaves the
//! last good table in force:
//! - when the forward chain or the fixed sets change, and on a resync that
//!   finds the kernel's table differs from what this process last wrote
//!   (read back over netlink, `readback`: milliseconds where `nft -j list`
//!   takes a second): the whole table is replaced (`add table; delete
//!   table; add ...`);
//! - when only groups came or went (a policy changed): their sets are added,
//!   the policy chains flushed and refilled, the sets no rule uses any more
//!   deleted, and the other sets' elements patched, in one transaction;
//! - otherwise only the set elements that changed are deleted and added, in
//!   one nf_tables netlink batch (netlink.rs: no `nft` cache to reload), or
//!   through `nft -j -f -` if that fails; a ClusterNetworkPolicy set whose
//!   deletions would cost the kernel more than writing it anew is deleted
//!   and added again in the same transaction, with the chains that look it
//!   up (`rewrite`), and so in a regroup.
//!
//! The periodic resync (`resync`) renders nothing: it reads the table back
//! and compares it with what was committed last; a set whose elements
//! drifted gets the missing ones added (or, holding some weft never wrote,
//! is flushed and refilled), in one transaction; a drifted chain, rule or
//! set declaration has the whole table replaced, as above.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use nftables::schema::{Element, FlushObject, NfCmd, NfListObject, NfObject, Nftables, Table};
use nftables::types::NfFamily;
use weft_netkit::kernel_error::KernelError;
use weft_netkit::tool;

use super::netlink::{self, NetlinkError, NftSocket, Op, SetDelta};
use super::patch;
use super::readback;
use super::render::{is_group_set, Elem, NftRendered, FORWARD_CHAIN, TABLE};
use super::rewrite;
use crate::policy::{Dirty, PolicyIr};

/// What one apply did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NftApplied {
    /// True if the whole table was replaced.
    pub replaced: bool,
    /// True if groups came or went (sets added or deleted, policy chains rewritten).
    pub regrouped: bool,
    /// Elements added and deleted by a delta.
    pub added: usize,
    pub deleted: usize,
    /// True if the element delta went over nf_tables netlink (the fast path).
    pub netlink: bool,
    /// True if a resync found the kernel's table changed behind weft's back
    /// (and replaced it).
    pub repaired: bool,
    /// Sets written again: by a resync, those whose elements drifted (the
    /// rest untouched); by a delta, those cheaper to write again than to
    /// patch (`rewrite`).
    pub rewritten: usize,
}

/// The table as this process last committed it.
#[derive(Debug, Default)]
pub struct Nft {
    /// Shared with a kernel check running off the loop (`check`).
    last: Option<Arc<NftRendered>>,
    /// `readback::KernelTable::skeleton` right after `last`'s chains and
    /// sets were written; None when unknown (a resync then replaces).
    fingerprint: Option<u64>,
    /// Opened by the first element delta, dropped after any netlink error.
    sock: Option<NftSocket>,
    /// Bumped by every write: a check taken before is stale.
    epoch: u64,
}

impl Nft {
    pub fn new() -> Nft {
        Nft::default()
    }

    /// Makes the kernel hold `r`; with `full`, the whole table is replaced
    /// even if only elements changed (a resync repairs any drift).
    pub fn apply(&mut self, r: &NftRendered, full: bool) -> Result<NftApplied, KernelError> {
        self.epoch += 1;
        // A resync checks the kernel against what was written last: as it
        // was, the rest is a change like any other.
        let mut repaired = false;
        let full = full && {
            let intact = self.intact();
            repaired = intact == Some(false);
            intact != Some(true)
        };
        let done = match &self.last {
            Some(last) if !full && last.skeleton == r.skeleton => {
                apply_elements(&mut self.sock, last, &changes(last, r, &BTreeSet::new()))?
            }
            Some(last) if !full && fixed(&last.skeleton) == fixed(&r.skeleton) => {
                let (tx, added, deleted) = regroup(last, r);
                // A regroup may delete sets and rules without any element delta.
                if !tx.objects.is_empty() {
                    run(&tx)?;
                }
                NftApplied { regrouped: true, added, deleted, ..NftApplied::default() }
            }
            _ => {
                self.fingerprint = None;
                run_json(&r.full_transaction_json())?;
                NftApplied { replaced: true, repaired, ..NftApplied::default() }
            }
        };
        if done.replaced || done.regrouped || done.rewritten > 0 {
            self.fingerprint = read_fingerprint();
        }
        self.last = Some(Arc::new(r.clone()));
        Ok(done)
    }

    /// Whether the kernel's table is what this process wrote last: its
    /// skeleton as fingerprinted then, and every set's elements. None when
    /// that cannot be known (nothing written yet, or no fingerprint).
    fn intact(&self) -> Option<bool> {
        Some(intact(self.last.as_ref()?, self.fingerprint?))
    }

    /// The check of a resync, to run off the agent's loop: the epoch it is
    /// taken at, and a closure that reads the table back (on any thread of
    /// this netns) and says whether it is what this process wrote last.
    /// None when that cannot be known (see `intact`).
    pub fn check(&self) -> Option<(u64, impl FnOnce() -> bool + Send + 'static)> {
        let (last, fingerprint) = (Arc::clone(self.last.as_ref()?), self.fingerprint?);
        Some((self.epoch, move || intact(&last, fingerprint)))
    }

    /// Bumped by every apply, patch, resync and cleanup.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The periodic resync: the table read back (milliseconds) and compared
    /// with what this process committed last, which `apply_changes` kept up
    /// to date, so nothing is rendered. Nothing drifted: nothing written.
    /// Elements drifted: only their sets rewritten, in one transaction. A
    /// chain, rule or set declaration drifted: the table replaced. None when
    /// the check cannot tell (nothing committed, no fingerprint, the table
    /// unreadable): the caller renders and applies in full.
    pub fn resync(&mut self) -> Result<Option<NftApplied>, KernelError> {
        self.epoch += 1;
        let (Some(last), Some(fingerprint)) = (self.last.as_ref(), self.fingerprint) else { return Ok(None) };
        let kernel = match readback::read(TABLE, true) {
            Ok(k) => k,
            Err(e) => {
                tracing::debug!("resync: reading weft's table back: {e}; applying in full");
                return Ok(None);
            }
        };
        let repairs = set_repairs(&kernel.sets, &last.sets).filter(|_| kernel.skeleton == fingerprint);
        let Some(repairs) = repairs.and_then(|r| set_repair_transaction(last, &r).map(|tx| (r.len(), tx)))
        else {
            // The chains or the sets themselves drifted.
            return replace(last, &mut self.fingerprint).map(Some);
        };
        let (rewritten, tx) = repairs;
        if rewritten > 0 {
            if let Err(e) = run(&tx) {
                // Refused (a kernel in a state weft cannot patch): replaced, lest it fail every time.
                tracing::warn!(
                    "resync: rewriting {rewritten} drifted sets failed ({e}): replacing the table"
                );
                return replace(last, &mut self.fingerprint).map(Some);
            }
        }
        Ok(Some(NftApplied { rewritten, ..NftApplied::default() }))
    }

    /// Patches the elements `dirty` names, as `ir` now has them, into the
    /// table this process committed last, in one transaction (over netlink,
    /// as any element delta). None when a patch cannot do (a structural
    /// change, nothing committed yet): the caller applies in full.
    pub fn apply_changes(&mut self, ir: &PolicyIr, dirty: &Dirty) -> Result<Option<NftApplied>, KernelError> {
        if dirty.structural {
            return Ok(None);
        }
        let Some(last) = self.last.as_mut() else { return Ok(None) };
        self.epoch += 1;
        let Some(changes) = patch::changes(ir, dirty, &last.sets) else { return Ok(None) };
        let mut deltas = Vec::new();
        for (name, c) in &changes {
            // Deletions first: an added interval may reuse the space of a deleted one.
            for (op, elems) in [(Op::Delete, &c.gone), (Op::Add, &c.came)] {
                if !elems.is_empty() {
                    deltas.push(SetDelta { set: name, op, elems: elems.iter().collect() });
                }
            }
        }
        match apply_elements(&mut self.sock, last, &deltas) {
            Ok(done) => {
                // A copy only if a check off the loop still holds the table.
                patch::remember(&mut Arc::make_mut(last).sets, &changes);
                if done.rewritten > 0 {
                    // Rules and sets written again have new handles.
                    self.fingerprint = read_fingerprint();
                }
                Ok(Some(done))
            }
            Err(e) => {
                // What the kernel holds is unknown now: the next apply replaces the table.
                self.last = None;
                self.fingerprint = None;
                Err(e)
            }
        }
    }

    /// Rules, sets and elements of the table as last committed.
    pub fn counts(&self) -> Option<crate::backend::ObjectCounts> {
        self.last.as_deref().map(NftRendered::counts)
    }

    /// Deletes weft's table if it exists.
    pub fn cleanup(&mut self) -> Result<(), KernelError> {
        self.epoch += 1;
        self.last = None;
        self.fingerprint = None;
        remove_table().map(drop)
    }
}

/// Whether the kernel's table is `last` (its skeleton as `fingerprint`
/// says, and every set's elements).
fn intact(last: &NftRendered, fingerprint: u64) -> bool {
    let Ok(kernel) = readback::read(TABLE, true) else { return false };
    let sets = set_repairs(&kernel.sets, &last.sets);
    kernel.skeleton == fingerprint && sets.is_some_and(|r| r.is_empty())
}

/// The kernel's fingerprint of the table's chains, rules and set
/// declarations (`readback`), right after weft wrote them; None if unreadable.
fn read_fingerprint() -> Option<u64> {
    readback::read(TABLE, false).ok().map(|k| k.skeleton)
}

/// A resync's repair of any drift: `last` replaces the table in one
/// transaction (atomic), and `fingerprint` is taken afresh.
fn replace(last: &NftRendered, fingerprint: &mut Option<u64>) -> Result<NftApplied, KernelError> {
    *fingerprint = None;
    run_json(&last.full_transaction_json())?;
    *fingerprint = read_fingerprint();
    Ok(NftApplied { replaced: true, repaired: true, ..NftApplied::default() })
}

/// How a resync repairs one set's elements.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SetRepair<'a> {
    /// Only elements weft wrote are gone: these go back.
    Add(Vec<&'a Elem>),
    /// The kernel holds elements weft never wrote: flushed and refilled.
    Refill,
}

/// The sets of `wanted` (as last committed) whose elements in `kernel`
/// differ, and how each is repaired; None if the sets themselves differ
/// (one gone or one added): only a replacement repairs that.
fn set_repairs<'a>(
    kernel: &BTreeMap<String, BTreeSet<readback::Key>>,
    wanted: &'a BTreeMap<String, BTreeSet<Elem>>,
) -> Option<Vec<(&'a str, SetRepair<'a>)>> {
    if kernel.len() != wanted.len() {
        return None;
    }
    let mut out = Vec::new();
    for (name, elems) in wanted {
        let have = kernel.get(name)?;
        let want = readback::keys(elems);
        if *have == want {
            continue;
        }
        let repair = if have.is_subset(&want) {
            // An element may take several keys (an interval's start and end).
            let missing = |e: &&Elem| readback::elem_keys(e).any(|k| !have.contains(&k));
            SetRepair::Add(elems.iter().filter(missing).collect())
        } else {
            SetRepair::Refill
        };
        out.push((name.as_str(), repair));
    }
    Some(out)
}

/// `repairs` as one transaction over `last`'s sets: flushes first, then the
/// elements; None if a set is not in `last`'s skeleton.
fn set_repair_transaction(last: &NftRendered, repairs: &[(&str, SetRepair)]) -> Option<Nftables<'static>> {
    let mut objects = Vec::new();
    let mut deltas = Vec::new();
    for (name, repair) in repairs {
        let elems = match repair {
            SetRepair::Add(elems) => elems.clone(),
            SetRepair::Refill => {
                let decl = last.skeleton.iter().find_map(|o| match o {
                    NfListObject::Set(s) if s.name == *name => Some(s),
                    _ => None,
                })?;
                let mut set = decl.clone();
                set.elem = None;
                objects.push(NfObject::CmdObject(NfCmd::Flush(FlushObject::Set(set))));
                last.sets.get(*name)?.iter().collect()
            }
        };
        if !elems.is_empty() {
            deltas.push(SetDelta { set: name, op: Op::Add, elems });
        }
    }
    objects.extend(element_transaction(&deltas).objects.iter().cloned());
    Some(Nftables { objects: Cow::Owned(objects) })
}

/// Deletes weft's table if it exists and says so (without `nft` there is
/// nothing to delete). Idempotent.
pub fn remove_table() -> Result<Vec<String>, KernelError> {
    if tool::find_tool("nft").is_err() || !table_exists()? {
        return Ok(Vec::new());
    }
    let table = NfListObject::Table(Table { family: NfFamily::INet, name: TABLE.into(), handle: None });
    run(&Nftables { objects: Cow::Owned(vec![NfObject::CmdObject(NfCmd::Delete(table))]) })?;
    Ok(vec![format!("table inet {TABLE}")])
}

/// The element deletions and additions that turn `old` into `new`, per set,
/// deletions first (an added interval may reuse the space of a deleted one),
/// for every set of `new` but the `fresh` ones (created with their elements).
fn changes<'a>(old: &'a NftRendered, new: &'a NftRendered, fresh: &BTreeSet<String>) -> Vec<SetDelta<'a>> {
    let mut out = Vec::new();
    for (name, new_elems) in new.sets.iter().filter(|(name, _)| !fresh.contains(*name)) {
        let Some(old_elems) = old.sets.get(name) else {
            out.push(SetDelta { set: name, op: Op::Add, elems: new_elems.iter().collect() });
            continue;
        };
        for (op, elems) in
            [(Op::Delete, old_elems.difference(new_elems)), (Op::Add, new_elems.difference(old_elems))]
        {
            let elems: Vec<&Elem> = elems.collect();
            if !elems.is_empty() {
                out.push(SetDelta { set: name, op, elems });
            }
        }
    }
    out.retain(|d| !d.elems.is_empty());
    out
}

/// Elements added and deleted by `changes`.
fn count(changes: &[SetDelta]) -> (usize, usize) {
    changes.iter().fold((0, 0), |(a, d), c| match c.op {
        Op::Add => (a + c.elems.len(), d),
        Op::Delete => (a, d + c.elems.len()),
    })
}

/// Element deltas as one `nft -j -f -` transaction.
pub fn element_transaction(changes: &[SetDelta]) -> Nftables<'static> {
    let objects = changes
        .iter()
        .map(|d| {
            let element = NfListObject::Element(Element {
                family: NfFamily::INet,
                table: TABLE.into(),
                name: d.set.to_string().into(),
                elem: Cow::Owned(d.elems.iter().map(|e| e.expr()).collect()),
            });
            NfObject::CmdObject(match d.op {
                Op::Delete => NfCmd::Delete(element),
                Op::Add => NfCmd::Add(element),
            })
        })
        .collect();
    Nftables { objects: Cow::Owned(objects) }
}

/// An element-only delta to the table `last` as one transaction: over
/// netlink, or through `nft -j -f -` if that fails (logged; the batch
/// changed nothing, or its outcome is unknown and the JSON transaction fails
/// on it). Sets cheaper to write again than to patch (`rewrite`) make it
/// one `nft -j -f -` transaction that writes them again.
fn apply_elements(
    sock: &mut Option<NftSocket>,
    last: &NftRendered,
    changes: &[SetDelta],
) -> Result<NftApplied, KernelError> {
    let (added, deleted) = count(changes);
    let done = NftApplied { added, deleted, ..NftApplied::default() };
    if changes.is_empty() {
        return Ok(done);
    }
    let heavy = rewrite::heavy(&last.sets, changes);
    if !heavy.is_empty() {
        run(&rewrite::transaction(&last.skeleton, &last.sets, &heavy, changes))?;
        return Ok(NftApplied { rewritten: heavy.len(), ..done });
    }
    let result = match sock {
        Some(s) => s.apply(TABLE, changes, netlink::DEADLINE),
        None => NftSocket::open().and_then(|s| sock.insert(s).apply(TABLE, changes, netlink::DEADLINE)),
    };
    match result {
        Ok(()) => return Ok(NftApplied { netlink: true, ..done }),
        Err(e @ NetlinkError::TooLarge { .. }) => tracing::debug!("nft element delta through nft -j: {e}"),
        Err(e) => {
            // Answers to this batch may still come: the next one starts afresh.
            *sock = None;
            tracing::warn!("nft element delta over netlink failed, applying it through nft -j: {e}");
        }
    }
    run(&element_transaction(changes))?;
    Ok(done)
}

/// The part of a skeleton that only a full replacement changes: everything
/// but group sets and the rules of the policy chains.
fn fixed<'a>(skeleton: &'a [NfListObject<'static>]) -> Vec<&'a NfListObject<'static>> {
    skeleton.iter().filter(|o| !dynamic(o)).collect()
}

fn dynamic(o: &NfListObject) -> bool {
    match o {
        NfListObject::Set(s) => is_group_set(&s.name),
        NfListObject::Rule(r) => r.chain != FORWARD_CHAIN,
        _ => false,
    }
}

/// `old` -> `new` when their fixed parts agree: new group sets added with
/// their elements, the policy chains flushed and refilled, group sets no
/// longer used deleted, and the element deltas of the sets both have (or,
/// cheaper, some of them written again while flushed: `rewrite`).
fn regroup(old: &NftRendered, new: &NftRendered) -> (Nftables<'static>, usize, usize) {
    let group_sets = |r: &NftRendered| -> BTreeSet<String> {
        r.skeleton
            .iter()
            .filter_map(|o| match o {
                NfListObject::Set(s) if is_group_set(&s.name) => Some(s.name.to_string()),
                _ => None,
            })
            .collect()
    };
    let (before, after) = (group_sets(old), group_sets(new));
    let mut objects = Vec::new();
    let mut added = 0;
    for obj in &new.skeleton {
        if let NfListObject::Set(s) = obj {
            if after.contains(s.name.as_ref()) && !before.contains(s.name.as_ref()) {
                let s = new.with_elements(s);
                added += s.elem.as_ref().map_or(0, |e| e.len());
                objects.push(NfObject::CmdObject(NfCmd::Add(NfListObject::Set(s))));
            }
        }
    }
    for obj in &new.skeleton {
        if let NfListObject::Chain(c) = obj {
            if c.name != FORWARD_CHAIN {
                objects.push(NfObject::CmdObject(NfCmd::Flush(FlushObject::Chain(c.clone()))));
            }
        }
    }
    // Element deltas of the sets that stay (new ones came with theirs);
    // those cheaper to write again are, while no rule looks them up.
    let fresh: BTreeSet<String> = after.difference(&before).cloned().collect();
    let mut deltas = changes(old, new, &fresh);
    let (more, deleted) = count(&deltas);
    let heavy = rewrite::heavy(&old.sets, &deltas);
    objects.extend(rewrite::written_again(&old.skeleton, &old.sets, &heavy, &deltas));
    deltas.retain(|d| !heavy.contains(d.set));
    objects.extend(
        new.skeleton
            .iter()
            .filter(|o| matches!(o, NfListObject::Rule(r) if r.chain != FORWARD_CHAIN))
            .map(|o| NfObject::CmdObject(NfCmd::Add(o.clone()))),
    );
    for obj in &old.skeleton {
        if let NfListObject::Set(s) = obj {
            if before.contains(s.name.as_ref()) && !after.contains(s.name.as_ref()) {
                objects.push(NfObject::CmdObject(NfCmd::Delete(NfListObject::Set(s.clone()))));
            }
        }
    }
    objects.extend(element_transaction(&deltas).objects.iter().cloned());
    (Nftables { objects: Cow::Owned(objects) }, added + more, deleted)
}

/// Runs one transaction through `nft -j -f -`.
pub fn run(tx: &Nftables) -> Result<(), KernelError> {
    run_json(&serde_json::to_string(tx))
}

/// Runs one transaction, serialised, through `nft -j -f -`.
fn run_json(json: &serde_json::Result<String>) -> Result<(), KernelError> {
    let json = json.as_ref().map_err(|e| KernelError::ToolFailed {
        cmd: "nft -j -f -".into(),
        stderr: format!("cannot serialise the ruleset: {e}"),
    })?;
    tool::run("nft", &["-j", "-f", "-"], Some(json))
}

fn table_exists() -> Result<bool, KernelError> {
    match tool::output("nft", &["list", "table", "inet", TABLE], None) {
        Ok(_) => Ok(true),
        Err(KernelError::ToolFailed { stderr, .. }) if stderr.contains("No such file") => Ok(false),
        Err(e) => Err(e),
    }
}

/// weft's table as nft lists it (JSON), for tests and `explain`.
pub fn list_table_json() -> Result<String, KernelError> {
    tool::output("nft", &["-j", "list", "table", "inet", TABLE], None)
}

/// weft's table read back from the kernel: each set's elements as canonical
/// JSON text, with protocol names turned back into the numbers weft writes,
/// so that it compares equal to `NftRendered::sets` when the kernel holds
/// exactly what was rendered.
pub fn read_back() -> Result<BTreeMap<String, BTreeSet<String>>, KernelError> {
    let bad =
        |why: String| KernelError::ToolFailed { cmd: "nft -j list table inet weft".into(), stderr: why };
    let text = list_table_json()?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let mut out = BTreeMap::new();
    for obj in v["nftables"].as_array().into_iter().flatten() {
        let Some(set) = obj.get("set") else { continue };
        let name = set["name"].as_str().unwrap_or_default().to_string();
        let elems = set["elem"].as_array().cloned().unwrap_or_default();
        out.insert(name, elems.into_iter().map(|e| canonical(e).to_string()).collect());
    }
    Ok(out)
}

/// Protocol names back to numbers inside concatenations.
fn canonical(mut e: serde_json::Value) -> serde_json::Value {
    if let Some(items) = e.get_mut("concat").and_then(|c| c.as_array_mut()) {
        for item in items.iter_mut() {
            let number = match item.as_str() {
                Some("tcp") => 6,
                Some("udp") => 17,
                Some("sctp") => 132,
                _ => continue,
            };
            *item = serde_json::Value::from(number);
        }
    }
    e
}
