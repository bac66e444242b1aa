//! Applying an `NftRendered` table in the calling thread's netns through
//! `nft -j -f -` (the JSON the `nftables` crate's types serialise to; run by
//! `weft_plugin::tool` so that nft's stderr reaches the error, which the
//! crate's own runner drops).
//!
//! Each change is one transaction, so the table is never half-written and a
//! refused transaction (a kernel without a feature, a bad element) leaves the
//! last good table in force:
//! - on every resync, and when the forward chain or the fixed sets change:
//!   the whole table is replaced (`add table; delete table; add ...`);
//! - when only groups came or went (a policy changed): their sets are added,
//!   the policy chains flushed and refilled, the sets no rule uses any more
//!   deleted, and the other sets' elements patched, in one transaction;
//! - otherwise only the set elements that changed are deleted and added.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use nftables::expr::Expression;
use nftables::schema::{Element, FlushObject, NfCmd, NfListObject, NfObject, Nftables, Table};
use nftables::types::NfFamily;
use weft_plugin::kernel_error::KernelError;
use weft_plugin::tool;

use super::render::{is_group_set, Elem, NftRendered, FORWARD_CHAIN, TABLE};

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
}

/// The table as this process last committed it.
#[derive(Debug, Default)]
pub struct Nft {
    last: Option<NftRendered>,
}

impl Nft {
    pub fn new() -> Nft {
        Nft::default()
    }

    /// Makes the kernel hold `r`; with `full`, the whole table is replaced
    /// even if only elements changed (a resync repairs any drift).
    pub fn apply(&mut self, r: &NftRendered, full: bool) -> Result<NftApplied, KernelError> {
        let delta = match &self.last {
            Some(last) if !full && last.skeleton == r.skeleton => {
                Some((delta(last, r, &BTreeSet::new()), false))
            }
            Some(last) if !full && fixed(&last.skeleton) == fixed(&r.skeleton) => {
                Some((regroup(last, r), true))
            }
            _ => None,
        };
        let done = match delta {
            Some(((tx, added, deleted), regrouped)) => {
                // A regroup may delete sets and rules without any element delta.
                if !tx.objects.is_empty() {
                    run(&tx)?;
                }
                NftApplied { replaced: false, regrouped, added, deleted }
            }
            None => {
                run(&r.full_transaction())?;
                NftApplied { replaced: true, ..NftApplied::default() }
            }
        };
        self.last = Some(r.clone());
        Ok(done)
    }

    /// Deletes weft's table if it exists.
    pub fn cleanup(&mut self) -> Result<(), KernelError> {
        self.last = None;
        remove_table().map(drop)
    }
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

/// The element deletions and additions that turn `old` into `new`, as one
/// transaction, for every set of `new` but the `fresh` ones (created with
/// their elements).
fn delta(
    old: &NftRendered,
    new: &NftRendered,
    fresh: &BTreeSet<String>,
) -> (Nftables<'static>, usize, usize) {
    let mut objects = Vec::new();
    let (mut added, mut deleted) = (0, 0);
    let empty = BTreeSet::new();
    for (name, new_elems) in new.sets.iter().filter(|(name, _)| !fresh.contains(*name)) {
        let old_elems = old.sets.get(name).unwrap_or(&empty);
        let gone: Vec<Expression<'static>> = old_elems.difference(new_elems).map(Elem::expr).collect();
        let came: Vec<Expression<'static>> = new_elems.difference(old_elems).map(Elem::expr).collect();
        let element = |elem: Vec<Expression<'static>>| {
            NfListObject::Element(Element {
                family: NfFamily::INet,
                table: TABLE.into(),
                name: name.clone().into(),
                elem: Cow::Owned(elem),
            })
        };
        // Deletions first: an added interval may reuse the space of a deleted one.
        if !gone.is_empty() {
            deleted += gone.len();
            objects.push(NfObject::CmdObject(NfCmd::Delete(element(gone))));
        }
        if !came.is_empty() {
            added += came.len();
            objects.push(NfObject::CmdObject(NfCmd::Add(element(came))));
        }
    }
    (Nftables { objects: Cow::Owned(objects) }, added, deleted)
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
/// longer used deleted, and the element deltas of the sets both have.
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
                let mut s = s.clone();
                let elems: Vec<Expression<'static>> = new
                    .sets
                    .get(s.name.as_ref())
                    .map(|m| m.iter().map(Elem::expr).collect())
                    .unwrap_or_default();
                added += elems.len();
                if !elems.is_empty() {
                    s.elem = Some(Cow::Owned(elems));
                }
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
    // Element deltas of the sets that stay (new ones came with theirs).
    let fresh: BTreeSet<String> = after.difference(&before).cloned().collect();
    let (tx, more, deleted) = delta(old, new, &fresh);
    objects.extend(tx.objects.iter().cloned());
    (Nftables { objects: Cow::Owned(objects) }, added + more, deleted)
}

/// Runs one transaction.
fn run(tx: &Nftables) -> Result<(), KernelError> {
    let json = serde_json::to_string(tx).map_err(|e| KernelError::ToolFailed {
        cmd: "nft -j -f -".into(),
        stderr: format!("cannot serialise the ruleset: {e}"),
    })?;
    tool::run("nft", &["-j", "-f", "-"], Some(&json))
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
