//! Applying a `Rendered` policy in the calling thread's netns.
//!
//! Order, so that no intermediate state admits what both the old and the new
//! policy deny: (1) every changed set is patched in place (small changes) or
//! built, under a temporary name and swapped in if it exists (each swap is
//! atomic); (2) the chains are replaced, in the mangle and the filter table
//! (`TABLES`), in one `iptables-restore --noflush` (atomic per table); (3)
//! weft's jump is made the first rule of each table's FORWARD; (4) weft's sets that nothing references any more are
//! destroyed. Mixing old and new sets during (1) is safe: a pod's isolation
//! and its allows change independently, and a packet both policies deny is
//! denied under either mix. Only weft's own chains and `weft-` sets are
//! touched; stale ones from an earlier run are removed by the same steps.
//!
//! The jump's position is checked at every apply, and between applies by
//! the `jump_guard` thread (started by the first apply), so a rule another
//! program inserts in front of it is moved behind it within milliseconds.
//! Both go through `JUMP_LOCK`, so they never race each other or `cleanup`.
//!
//! The periodic resync (`resync`) renders nothing and writes only what
//! drifted from this process's last apply: sets compared member by member
//! from one netlink dump (a drifted one patched in place or swapped, as
//! above), each family's chains compared with a fingerprint of the
//! `iptables-save` listing taken after they were last written (restored,
//! as above, only on a difference), the jumps checked on the same listing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use weft_netkit::ipset_write::{self, Change, Op};
use weft_netkit::iptables_mode::{self, IptablesMode};
use weft_netkit::kernel_error::KernelError;
use weft_netkit::tool;

use super::jump_guard::{self, JumpGuard};
use super::patch;
use super::render::{Rendered, SetSpec, CHAINS, CNP_CHAINS, FORWARD_CHAIN, SET_PREFIX};
use crate::policy::{Dirty, PolicyIr};

/// Held while weft's FORWARD jump is checked, moved or removed.
static JUMP_LOCK: Mutex<()> = Mutex::new(());

/// The comment on weft's jump from FORWARD.
const JUMP_COMMENT: &str = "weft: NetworkPolicy";
/// The tables weft's chains are in, each jumped to first from its FORWARD.
/// mangle's FORWARD hook (priority -150) runs before filter's (0), and
/// nothing else commonly writes it (kube-proxy never does): a rule another
/// program puts before weft's jump in filter FORWARD (kube-proxy's ACCEPT
/// for marked packets) finds every packet policy denies already dropped.
/// The filter copy keeps enforcing if mangle's is bypassed the same way.
pub const TABLES: [&str; 2] = ["mangle", "filter"];

/// The commands of one address family's iptables in one mode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Family {
    v6: bool,
    iptables: String,
    restore: String,
    save: String,
}

impl Family {
    fn new(mode: Option<IptablesMode>, v6: bool) -> Family {
        let base = if v6 { "ip6tables" } else { "iptables" };
        let bin = |suffix: &str| iptables_mode::tool_in(mode, &format!("{base}{suffix}"));
        Family { v6, iptables: bin(""), restore: bin("-restore"), save: bin("-save") }
    }
}

/// The families this kernel forwards, in `mode`: IPv6 unless it was turned
/// off (`ipv6.disable=1` leaves no IPv6 traffic to guard, and no ip6tables).
fn families(mode: Option<IptablesMode>) -> Vec<Family> {
    let v6 = std::path::Path::new("/proc/sys/net/ipv6").exists();
    let mut out = vec![Family::new(mode, false)];
    if v6 {
        out.push(Family::new(mode, true));
    }
    out
}

/// Suffix of a fixed-name set's temporary twin while it is rebuilt.
const TMP_SUFFIX: &str = "-new";
/// Smallest hashsize and maxelem; both grow with the set (maxelem: twice the
/// members, so adds between rebuilds never hit the ceiling).
const MIN_HASHSIZE: usize = 1024;
const MIN_MAXELEM: usize = 65536;

/// What one apply changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Sets (re)built.
    pub sets_written: usize,
    /// Sets changed in place, member by member.
    pub sets_patched: usize,
    /// Sets destroyed (stale).
    pub sets_destroyed: usize,
    /// True if the chains were rewritten.
    pub rules_written: bool,
    /// True if weft's FORWARD jump had to be (re)placed first.
    pub jump_moved: bool,
    /// True if a patch's members went over netlink (the fast path).
    pub netlink: bool,
}

/// The iptables backend's kernel state as this process last wrote it.
#[derive(Debug)]
pub struct Iptables {
    /// The host's iptables mode (None: the plain tools): weft's chains go
    /// where kube-proxy's are, so one rule set orders both.
    mode: Option<IptablesMode>,
    /// The mode's commands per family, found once (the jump guard checks
    /// with them too).
    families: Vec<Family>,
    /// Shared with a kernel check running off the loop (`check`).
    sets: Arc<BTreeMap<String, SetSpec>>,
    /// The maxelem each set was created with.
    capacity: BTreeMap<String, usize>,
    rules: Option<String>,
    /// The ip6tables payload as last applied.
    rules6: Option<String>,
    /// Per family (IPv4, IPv6): `chains_fingerprint` of weft's chains as
    /// listed right after this process last wrote them, by a thread
    /// (`list_later`) or a resync; empty until then (a resync then
    /// rewrites them).
    printed: [Arc<OnceLock<u64>>; 2],
    /// ip6tables' chains are in use (written by this process): until a node
    /// has IPv6 to guard, none are written, listed or watched, so an
    /// IPv4-only node pays nothing for them.
    v6: Arc<AtomicBool>,
    /// An earlier run's ip6tables chains were removed or found absent.
    v6_checked: bool,
    /// Keeps the jump first between applies; None until the first apply.
    guard: Option<JumpGuard>,
    /// Bumped by every write: a check taken before is stale.
    epoch: u64,
}

impl Default for Iptables {
    fn default() -> Self {
        Iptables::new()
    }
}

impl Iptables {
    /// The backend in the host's mode, detected from the rules it holds.
    pub fn new() -> Iptables {
        let mode = iptables_mode::detect().ok();
        Iptables {
            mode,
            families: families(mode),
            sets: Arc::default(),
            capacity: BTreeMap::new(),
            rules: None,
            rules6: None,
            printed: Default::default(),
            epoch: 0,
            v6: Arc::default(),
            v6_checked: false,
            guard: None,
        }
    }

    /// Makes the kernel match `r`. Idempotent; with `full` (a resync, and the
    /// first apply) every set, the chains and the FORWARD jump are checked
    /// against the kernel; otherwise only what changed since this process's
    /// last apply is written.
    pub fn apply(&mut self, r: &Rendered, full: bool) -> Result<Applied, KernelError> {
        self.epoch += 1;
        let mut done = Applied::default();
        // Between resyncs, trust what this process wrote last: a change (a CNI
        // ADD waits for one) costs one `ipset restore`, not listings of the
        // kernel's sets and of FORWARD besides.
        let fresh = !full && self.rules.is_some();
        // On a resync, one `ipset save` of every set: their names, and their
        // members to compare (a listing per set costs a process each).
        let kernel: BTreeMap<String, Vec<String>> = if fresh {
            self.sets.keys().map(|k| (k.clone(), Vec::new())).collect()
        } else if full {
            kernel_sets()?
        } else {
            list_sets()?.into_iter().map(|k| (k, Vec::new())).collect()
        };
        let existing: BTreeSet<String> = kernel.keys().cloned().collect();
        // 1. Sets.
        let mut payload = String::new();
        for s in &r.sets {
            let in_kernel = existing.contains(&s.name);
            let prev = self.sets.get(&s.name).filter(|_| in_kernel);
            let current = match prev {
                // On a resync, trust the kernel's listing, not our memory of it.
                Some(p) if p == s => !full || kernel.get(&s.name) == Some(&s.members),
                _ => false,
            };
            if current {
                continue;
            }
            let room = self.capacity.get(&s.name).copied().unwrap_or(0);
            match prev {
                Some(p) if p != s && s.members.len() <= room && small_change(p, s) => {
                    write_changes(&mut payload, p, s);
                    done.sets_patched += 1;
                }
                _ => {
                    let maxelem = write_set(&mut payload, s, in_kernel);
                    self.capacity.insert(s.name.clone(), maxelem);
                    done.sets_written += 1;
                }
            }
        }
        if !payload.is_empty() {
            tool::restore("ipset", &["restore"], &payload)?;
        }
        let sets = Arc::make_mut(&mut self.sets);
        for s in &r.sets {
            sets.insert(s.name.clone(), s.clone());
        }
        // 2. Chains, in both tables, in one restore per family; ip6tables'
        // only once there is IPv6 to guard (an earlier run's are removed).
        if !r.v6 && !self.v6_checked && self.rules6.is_none() {
            let (_, error) = remove_chains(|f| f.v6);
            error.map_or(Ok(()), Err)?;
        }
        self.v6_checked = true;
        let v6 = r.v6 || self.rules6.is_some();
        for family in self.families.iter().filter(|f| v6 || !f.v6) {
            let (wanted, applied) =
                if family.v6 { (&r.rules6, &mut self.rules6) } else { (&r.rules, &mut self.rules) };
            if full || applied.as_deref() != Some(wanted.as_str()) {
                // ClusterNetworkPolicy's chains go with the last policy: they
                // may be left from this process's last apply or, on a first
                // apply or a resync, from an earlier run.
                let stale =
                    !has_cnp_chains(wanted) && (full || applied.as_deref().is_none_or(has_cnp_chains));
                self.printed[usize::from(family.v6)] = Default::default();
                restore_chains(family, wanted, stale)?;
                self.printed[usize::from(family.v6)] = list_later(family.clone());
                *applied = Some(wanted.clone());
                done.rules_written = true;
            }
        }
        // 3. The jumps, first in each FORWARD: checked at every apply (one
        // listing per table), and from now on watched in between.
        self.v6.store(v6, Ordering::SeqCst);
        done.jump_moved = {
            let _held = JUMP_LOCK.lock().unwrap_or_else(|p| p.into_inner());
            ensure_jump_first(&self.families, v6)?
        };
        if self.guard.is_none() {
            self.guard = start_guard(self.mode, self.families.clone(), self.v6.clone());
        }
        // 4. Stale sets.
        let wanted: BTreeSet<&str> = r.sets.iter().map(|s| s.name.as_str()).collect();
        for name in existing.iter().filter(|n| !wanted.contains(n.as_str())) {
            tool::run("ipset", &["destroy", name], None)?;
            Arc::make_mut(&mut self.sets).remove(name);
            self.capacity.remove(name);
            done.sets_destroyed += 1;
        }
        Ok(done)
    }

    /// The periodic resync: the kernel compared with this process's last
    /// apply (kept up to date by `apply_changes`, so nothing is rendered),
    /// and only what drifted rewritten: a set's members (patched in place,
    /// or a twin swapped in), a family's chains (one restore, atomic), the
    /// jumps. Costs one set dump and one `iptables-save` per table when
    /// nothing drifted. None when nothing was applied yet (or a failed patch
    /// left the kernel unknown): the caller renders and applies in full.
    pub fn resync(&mut self) -> Result<Option<Applied>, KernelError> {
        let Some(rules) = self.rules.clone() else { return Ok(None) };
        self.epoch += 1;
        let mut done = Applied::default();
        // 1. Sets: what drifted is rewritten the way a change would be.
        let kernel = kernel_sets()?;
        let mut payload = String::new();
        for s in self.sets.values() {
            let Some(members) = kernel.get(&s.name) else {
                let maxelem = write_set(&mut payload, s, false);
                self.capacity.insert(s.name.clone(), maxelem);
                done.sets_written += 1;
                continue;
            };
            if *members == s.members {
                continue;
            }
            let have = SetSpec { members: members.clone(), ..s.clone() };
            let room = self.capacity.get(&s.name).copied().unwrap_or(0);
            if s.members.len() <= room && small_change(&have, s) {
                write_changes(&mut payload, &have, s);
                done.sets_patched += 1;
            } else {
                let maxelem = write_set(&mut payload, s, true);
                self.capacity.insert(s.name.clone(), maxelem);
                done.sets_written += 1;
            }
        }
        if !payload.is_empty() {
            tool::restore("ipset", &["restore"], &payload)?;
        }
        // 2. Chains and jumps, per family in use, from one listing per table.
        let v6 = self.rules6.is_some();
        for family in self.families.iter().filter(|f| v6 || !f.v6) {
            let wanted = if family.v6 { self.rules6.as_deref().unwrap_or_default() } else { rules.as_str() };
            let mut saves = list_tables(family)?;
            let slot = &mut self.printed[usize::from(family.v6)];
            let known = slot.get().copied();
            if known != Some(chains_fingerprint(&saves)) {
                // Unknown (no listing since written) or drifted: written
                // again, stale ClusterNetworkPolicy chains dropped with it.
                // Only a difference from a known listing is drift to report.
                restore_chains(family, wanted, !has_cnp_chains(wanted))?;
                done.rules_written |= known.is_some();
                saves = list_tables(family)?;
                *slot = Arc::new(OnceLock::from(chains_fingerprint(&saves)));
            }
            if saves.iter().any(|(table, save)| jump_move(table, save).is_some()) {
                let _held = JUMP_LOCK.lock().unwrap_or_else(|p| p.into_inner());
                // Listed again under the lock: the guard may have moved it meanwhile.
                done.jump_moved |= ensure_jump_first(std::slice::from_ref(family), true)?;
            }
        }
        // 3. Sets no rule names any more (an earlier run's, a `-new` twin left over).
        for name in kernel.keys().filter(|n| !self.sets.contains_key(*n)) {
            tool::run("ipset", &["destroy", name], None)?;
            self.capacity.remove(name);
            done.sets_destroyed += 1;
        }
        Ok(Some(done))
    }

    /// The check of a resync, to run off the agent's loop: the epoch it is
    /// taken at, and a closure that reads the sets and each family's chains
    /// as `resync` does (on any thread of this netns) and says whether they
    /// are as this process last wrote them: every set with its members and
    /// no other, the chains' fingerprint, the jumps first. None where only
    /// `resync` can tell: nothing applied yet, or chains whose listing after
    /// their write is not done (or failed).
    pub fn check(&self) -> Option<(u64, impl FnOnce() -> bool + Send + 'static)> {
        self.rules.as_ref()?;
        let v6 = self.rules6.is_some();
        let families = self.families.iter().filter(|f| v6 || !f.v6);
        let listed: Vec<(Family, u64)> = families
            .map(|f| Some((f.clone(), *self.printed[usize::from(f.v6)].get()?)))
            .collect::<Option<_>>()?;
        let sets = Arc::clone(&self.sets);
        let intact = move || {
            let same_sets = kernel_sets().is_ok_and(|kernel| {
                kernel.len() == sets.len() && sets.values().all(|s| kernel.get(&s.name) == Some(&s.members))
            });
            same_sets
                && listed.iter().all(|(family, printed)| {
                    list_tables(family).is_ok_and(|saves| {
                        chains_fingerprint(&saves) == *printed
                            && saves.iter().all(|(table, save)| jump_move(table, save).is_none())
                    })
                })
        };
        Some((self.epoch, intact))
    }

    /// Bumped by every apply, patch, resync and cleanup.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Patches the members `dirty` names, as `ir` now has them, into the
    /// sets this process applied last. None when a patch cannot do (a
    /// structural change, nothing applied yet, a set that would outgrow its
    /// maxelem): the caller applies in full. Adds and deletes in place are
    /// safe in any order (see `small_change`).
    pub fn apply_changes(&mut self, ir: &PolicyIr, dirty: &Dirty) -> Result<Option<Applied>, KernelError> {
        // A change to ClusterNetworkPolicy's rules (not only its members)
        // makes `changes` None: that renders in full, and writes what differs.
        if dirty.structural || self.rules.is_none() {
            return Ok(None);
        }
        self.epoch += 1;
        let Some(changes) = patch::changes(ir, dirty, &self.sets) else { return Ok(None) };
        let mut ops = Vec::new();
        for (name, c) in &changes {
            let have = self.sets.get(name).map_or(0, |s| s.members.len());
            if have + c.add.len() > self.capacity.get(name).copied().unwrap_or(0) {
                return Ok(None);
            }
            ops.push(Change { set: name, op: Op::Add, members: &c.add });
            ops.push(Change { set: name, op: Op::Del, members: &c.del });
        }
        // Over netlink (a CNI ADD waits for this; an `ipset` process is most
        // of a small patch's cost), else the same lines through `ipset restore`.
        let netlink = ipset_write::apply(&ops);
        if let Err(e) = &netlink {
            tracing::debug!("patching ipsets over netlink: {e}; through `ipset restore`");
            let mut payload = String::new();
            for c in &ops {
                let verb = if c.op == Op::Add { "add" } else { "del" };
                for m in c.members {
                    let _ = writeln!(payload, "{verb} {} {m} -exist", c.set);
                }
            }
            if let Err(e) = tool::restore("ipset", &["restore"], &payload) {
                // What the kernel holds is unknown now: the next apply checks it all.
                self.rules = None;
                return Err(e);
            }
        }
        patch::remember(Arc::make_mut(&mut self.sets), &changes);
        Ok(Some(Applied { sets_patched: changes.len(), netlink: netlink.is_ok(), ..Applied::default() }))
    }

    /// Rules, sets and members as last applied.
    pub fn counts(&self) -> crate::backend::ObjectCounts {
        crate::backend::ObjectCounts {
            rules: self.rules.as_deref().map_or(0, |r| r.lines().filter(|l| l.starts_with("-A")).count()),
            sets: self.sets.len(),
            elements: self.sets.values().map(|s| s.members.len()).sum(),
        }
    }

    /// Removes weft's jump, chains and sets (stopping the guard first).
    /// Idempotent; see `remove_objects`.
    pub fn cleanup(&mut self) -> Result<(), KernelError> {
        self.guard = None;
        self.epoch += 1;
        self.sets = Arc::default();
        self.capacity.clear();
        self.rules = None;
        self.rules6 = None;
        self.printed = Default::default();
        self.v6.store(false, Ordering::SeqCst);
        self.v6_checked = false;
        remove_objects().map(drop)
    }
}

/// Removes whatever of weft's iptables objects the kernel holds (its FORWARD
/// jumps and chains in each of `TABLES`, found by one `iptables-save` per
/// table, and its `weft-` sets, by one `ipset list`) and says what they
/// were. A table's jumps and chains go in one restore (never a jump to a
/// deleted chain). Writes nothing when there is nothing, so it creates no
/// table on a node that has none; without the tools there is nothing to
/// remove. Idempotent; carries on after an error and returns the first.
pub fn remove_objects() -> Result<Vec<String>, KernelError> {
    let (mut removed, mut first) = remove_chains(|_| true);
    let mut keep = |r: Result<(), KernelError>| {
        if let Err(e) = r {
            first.get_or_insert(e);
        }
    };
    if tool::find_tool("ipset").is_ok() {
        match list_sets() {
            Ok(sets) if sets.is_empty() => {}
            Ok(sets) => {
                for name in &sets {
                    keep(tool::run("ipset", &["destroy", name], None));
                }
                removed.push(format!("{} ipsets", sets.len()));
            }
            Err(e) => keep(Err(e)),
        }
    }
    first.map_or(Ok(removed), Err)
}

/// `remove_objects`' jumps and chains, in the families `which` picks, in
/// every installed mode: what was removed, and the first error.
fn remove_chains(which: impl Fn(&Family) -> bool) -> (Vec<String>, Option<KernelError>) {
    let mut removed = Vec::new();
    let mut first: Option<KernelError> = None;
    let mut keep = |r: Result<(), KernelError>| {
        if let Err(e) = r {
            first.get_or_insert(e);
        }
    };
    let families = iptables_mode::installed().into_iter().flat_map(families).filter(|f| which(f));
    let tables: Vec<(Family, &str)> = families.flat_map(|f| TABLES.map(|t| (f.clone(), t))).collect();
    for (family, table) in tables.iter().filter(|(f, _)| tool::find_tool(&f.save).is_ok()) {
        let save = match tool::output(&family.save, &["-t", table], None) {
            Ok(save) => save,
            Err(e) => {
                keep(Err(e));
                continue;
            }
        };
        let (jumps, chains) = weft_chains(&save);
        if jumps == 0 && chains.is_empty() {
            continue;
        }
        let rule = jump_spec();
        let rule = rule.trim_start_matches("-A FORWARD ");
        let mut payload = format!("*{table}\n");
        for _ in 0..jumps {
            let _ = writeln!(payload, "-D FORWARD {rule}");
        }
        for c in &chains {
            let _ = writeln!(payload, ":{c} - [0:0]");
        }
        for c in &chains {
            let _ = writeln!(payload, "-X {c}");
        }
        payload.push_str("COMMIT\n");
        let _held = JUMP_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        keep(tool::restore(&family.restore, &["--noflush", "-w", "5"], &payload));
        removed.push(format!(
            "{} {table}: {jumps} FORWARD jump(s), chains {}",
            family.iptables,
            chains.join(" ")
        ));
    }
    (removed, first)
}

/// Writes `family`'s chains as `wanted` (a rendered payload) has them, in
/// both tables, in one restore; with `stale`, ClusterNetworkPolicy's chains
/// are deleted in the same transaction.
fn restore_chains(family: &Family, wanted: &str, stale: bool) -> Result<(), KernelError> {
    let payload = in_both_tables(&if stale { dropping_cnp_chains(wanted) } else { wanted.to_string() });
    tool::restore(&family.restore, &["--noflush", "-w", "5"], &payload)
}

/// `iptables-save -t TABLE` of each of `TABLES` in `family`.
fn list_tables(family: &Family) -> Result<Vec<(&'static str, String)>, KernelError> {
    TABLES.iter().map(|t| Ok((*t, tool::output(&family.save, &["-t", t], None)?))).collect()
}

/// The fingerprint of `family`'s chains, listed on a thread now that they
/// are written: an `iptables-save` of a large table takes 50-150 ms, which
/// a policy change need not wait for, and the first resync after it then
/// compares instead of writing the chains again. Empty if the listing
/// fails or no thread starts (that resync then writes them again).
fn list_later(family: Family) -> Arc<OnceLock<u64>> {
    let printed = Arc::new(OnceLock::new());
    let fill = printed.clone();
    let spawned = std::thread::Builder::new().name("iptables-list".into()).spawn(move || {
        if let Ok(saves) = list_tables(&family) {
            let _ = fill.set(chains_fingerprint(&saves));
        }
    });
    if let Err(e) = spawned {
        tracing::debug!("no listing of weft's chains until the next resync: {e}");
    }
    printed
}

/// A fingerprint of weft's chains and their rules in `saves` (per table,
/// an `iptables-save` listing): other programs' chains, FORWARD and the
/// listing's comments and dates leave it unchanged.
fn chains_fingerprint(saves: &[(&str, String)]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (table, save) in saves {
        table.hash(&mut h);
        for line in save.lines() {
            // A chain's line ends in its counters: only its name counts.
            if let Some(chain) = line.strip_prefix(":WEFT-") {
                chain.split(' ').next().hash(&mut h);
            } else if line.starts_with("-A WEFT-") {
                line.hash(&mut h);
            }
        }
    }
    h.finish()
}

/// The rendered `*filter` payload, preceded by the same chains and rules
/// for the mangle table with every ACCEPT a RETURN: there weft's chains
/// only drop what policy denies and hand everything else back to mangle
/// FORWARD, so other programs' rules after the jump (MSS clamping, marks)
/// still see the packet; filter decides as before.
fn in_both_tables(rules: &str) -> String {
    let mangle = rules.replacen("*filter\n", "*mangle\n", 1).replace(" -j ACCEPT\n", " -j RETURN\n");
    format!("{mangle}{rules}")
}

/// True if restore payload `rules` declares ClusterNetworkPolicy's chains.
fn has_cnp_chains(rules: &str) -> bool {
    rules.lines().any(|l| {
        l.strip_prefix(':').and_then(|l| l.split(' ').next()).is_some_and(|c| CNP_CHAINS.contains(&c))
    })
}

/// `rules` (which declares no ClusterNetworkPolicy chain) that also flushes
/// and deletes ClusterNetworkPolicy's chains, in its one transaction: they
/// reference sets that are destroyed next. Declaring a chain creates it if
/// absent, so the deletes hold whether or not the kernel has them.
fn dropping_cnp_chains(rules: &str) -> String {
    let declare: String = CNP_CHAINS.iter().map(|c| format!(":{c} - [0:0]\n")).collect();
    let delete: String = CNP_CHAINS.iter().map(|c| format!("-X {c}\n")).collect();
    rules.replacen("*filter\n", &format!("*filter\n{declare}"), 1).replacen(
        "COMMIT\n",
        &format!("{delete}COMMIT\n"),
        1,
    )
}

/// From an `iptables-save -t TABLE` listing: how many FORWARD rules jump to
/// weft's chain, and which of weft's chains exist.
fn weft_chains(save: &str) -> (usize, Vec<String>) {
    let jump = format!("-j {FORWARD_CHAIN}");
    let jumps = save.lines().filter(|l| l.starts_with("-A FORWARD ") && l.ends_with(&jump)).count();
    let chains = save
        .lines()
        .filter_map(|l| l.strip_prefix(':')?.split(' ').next())
        .filter(|c| CHAINS.contains(c) || CNP_CHAINS.contains(c))
        .map(String::from)
        .collect();
    (jumps, chains)
}

/// Starts the thread that keeps the jump first between applies; None (and
/// a warning: the jump is then checked at each apply only) if it cannot.
fn start_guard(mode: Option<IptablesMode>, families: Vec<Family>, v6: Arc<AtomicBool>) -> Option<JumpGuard> {
    let nft_flavour = match mode {
        Some(m) => m == IptablesMode::Nft,
        None => tool::output("iptables", &["--version"], None).is_ok_and(|v| v.contains("nf_tables")),
    };
    start_guard_for(families, v6, nft_flavour)
}

/// `start_guard` for iptables of the nft flavour (notifications) or not (a
/// period); ip6tables' jump too while `v6` says its chains are in use.
fn start_guard_for(families: Vec<Family>, v6: Arc<AtomicBool>, nft_flavour: bool) -> Option<JumpGuard> {
    let check = move |stop: &AtomicBool| {
        let _held = JUMP_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        if stop.load(Ordering::SeqCst) {
            return true;
        }
        match ensure_jump_first(&families, v6.load(Ordering::SeqCst)) {
            Ok(moved) => {
                if moved {
                    tracing::warn!("a rule was inserted before weft's FORWARD jump: put the jump back first");
                }
                true
            }
            Err(e) => {
                tracing::warn!("checking weft's FORWARD jump: {e}");
                false
            }
        }
    };
    match jump_guard::spawn(nft_flavour, check) {
        Ok((guard, how)) => {
            tracing::info!("weft's FORWARD jump is kept first, watched through {how}");
            Some(guard)
        }
        Err(e) => {
            tracing::warn!("no FORWARD jump guard ({e}): the jump is checked at each sync only");
            None
        }
    }
}

/// True if turning `old` into `new` member by member is cheaper than a rebuild.
/// In-place adds and deletes are safe in any order: every intermediate set
/// lies between the old and the new one, so a packet both deny stays denied.
fn small_change(old: &SetSpec, new: &SetSpec) -> bool {
    let (a, b): (BTreeSet<&String>, BTreeSet<&String>) =
        (old.members.iter().collect(), new.members.iter().collect());
    let changes = a.symmetric_difference(&b).count();
    changes <= (new.members.len() / 2).max(64)
}

/// The `ipset restore` lines that turn set `old` into `new` in place: adds first.
fn write_changes(out: &mut String, old: &SetSpec, new: &SetSpec) {
    let (a, b): (BTreeSet<&String>, BTreeSet<&String>) =
        (old.members.iter().collect(), new.members.iter().collect());
    for m in b.difference(&a) {
        let _ = writeln!(out, "add {} {m} -exist", new.name);
    }
    for m in a.difference(&b) {
        let _ = writeln!(out, "del {} {m} -exist", new.name);
    }
}

/// The `ipset restore` lines that make set `s` hold exactly its members;
/// returns the maxelem it is created with.
fn write_set(out: &mut String, s: &SetSpec, exists: bool) -> usize {
    let n = s.members.len();
    let hashsize = (n / 2).next_power_of_two().max(MIN_HASHSIZE);
    let maxelem = (n * 2).next_power_of_two().max(MIN_MAXELEM);
    let params = format!("{} family {} hashsize {hashsize} maxelem {maxelem}", s.kind.as_str(), s.family());
    // A set that exists and is referenced by a rule cannot be destroyed or
    // re-created: fill a twin and swap, which is atomic for the rules.
    let target = if exists { format!("{}{TMP_SUFFIX}", s.name) } else { s.name.clone() };
    let _ = writeln!(out, "create {target} {params} -exist");
    let _ = writeln!(out, "flush {target}");
    for m in &s.members {
        let _ = writeln!(out, "add {target} {m}");
    }
    if target != s.name {
        let _ = writeln!(out, "swap {target} {}", s.name);
        let _ = writeln!(out, "destroy {target}");
    }
    maxelem
}

/// weft's sets in the kernel, by name.
fn list_sets() -> Result<BTreeSet<String>, KernelError> {
    let out = tool::output("ipset", &["list", "-n"], None)?;
    Ok(out.lines().map(str::trim).filter(|l| l.starts_with(SET_PREFIX)).map(String::from).collect())
}

/// weft's sets in the kernel and their members, sorted: one netlink dump
/// (milliseconds for 70k members, where `ipset save` and its parse take
/// 300 ms), or `ipset save` if the dump fails.
fn kernel_sets() -> Result<BTreeMap<String, Vec<String>>, KernelError> {
    match weft_netkit::ipset_list::list_sets(SET_PREFIX) {
        Ok(sets) => Ok(sets.into_iter().map(|(name, s)| (name, s.members)).collect()),
        Err(e) => {
            tracing::debug!("listing weft's ipsets over netlink: {e}; reading `ipset save`");
            let out = tool::output("ipset", &["save"], None)?;
            Ok(parse_save(&out))
        }
    }
}

/// The `weft-` sets of an `ipset save` listing and their members, sorted.
fn parse_save(out: &str) -> BTreeMap<String, Vec<String>> {
    let mut sets: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in out.lines() {
        let mut words = line.splitn(3, ' ');
        let (Some(verb), Some(name)) = (words.next(), words.next()) else { continue };
        if !name.starts_with(SET_PREFIX) {
            continue;
        }
        let members = sets.entry(name.to_string()).or_default();
        if verb == "add" {
            members.extend(words.next().map(|m| m.trim().to_string()));
        }
    }
    for members in sets.values_mut() {
        members.sort();
    }
    sets
}

/// The FORWARD rule that jumps to weft's chain, as `iptables -S` prints it.
fn jump_spec() -> String {
    format!("-A FORWARD -m comment --comment \"{JUMP_COMMENT}\" -j {FORWARD_CHAIN}")
}

/// Makes weft's jump the first rule of FORWARD in each of `TABLES`, in
/// each family (something, e.g. kube-proxy's KUBE-FORWARD, may have been inserted in
/// front of it). True if one moved. One listing per table, and when one
/// must move, one `iptables-restore --noflush` that deletes every copy and
/// inserts it first: atomic, so no packet ever sees FORWARD without the
/// jump. The caller holds `JUMP_LOCK`.
fn ensure_jump_first(families: &[Family], v6: bool) -> Result<bool, KernelError> {
    let mut moved = false;
    for family in families.iter().filter(|f| v6 || !f.v6) {
        let mut payload = String::new();
        for table in TABLES {
            let listing = tool::output(&family.iptables, &["-w", "5", "-t", table, "-S", "FORWARD"], None)?;
            payload.extend(jump_move(table, &listing));
        }
        if !payload.is_empty() {
            tool::restore(&family.restore, &["--noflush", "-w", "5"], &payload)?;
            moved = true;
        }
    }
    Ok(moved)
}

/// The restore payload that makes weft's jump the only copy and first in
/// `table`'s FORWARD, given its `iptables -S FORWARD`; None if it already is.
fn jump_move(table: &str, listing: &str) -> Option<String> {
    let rules: Vec<&str> = listing.lines().filter(|l| l.starts_with("-A FORWARD")).collect();
    let spec = jump_spec();
    let copies = rules.iter().filter(|r| **r == spec).count();
    if rules.first() == Some(&spec.as_str()) && copies == 1 {
        return None;
    }
    let rule = spec.trim_start_matches("-A FORWARD ");
    let mut payload = format!("*{table}\n");
    for _ in 0..copies {
        let _ = writeln!(payload, "-D FORWARD {rule}");
    }
    let _ = writeln!(payload, "-I FORWARD 1 {rule}\nCOMMIT");
    Some(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iptables::render::SetType;

    #[test]
    fn save_listing_parses_to_weft_sets_only() {
        let save = "create weft-in hash:ip,port,net family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x1\n\
                    add weft-in 10.244.1.2,tcp:80,10.244.2.0/24\n\
                    create other hash:ip family inet\nadd other 1.2.3.4\n\
                    create weft-local hash:ip family inet hashsize 1024 maxelem 65536\n\
                    add weft-local 10.244.1.3\nadd weft-local 10.244.1.2\n\
                    create weft-out hash:ip,port,net family inet hashsize 1024 maxelem 65536\n";
        let sets = parse_save(save);
        assert_eq!(sets.keys().collect::<Vec<_>>(), ["weft-in", "weft-local", "weft-out"]);
        assert_eq!(sets["weft-local"], ["10.244.1.2", "10.244.1.3"], "sorted");
        assert_eq!(sets["weft-in"], ["10.244.1.2,tcp:80,10.244.2.0/24"]);
        assert!(sets["weft-out"].is_empty(), "an empty set is still listed");
    }

    /// The period the guard falls back to (iptables-legacy, or no
    /// notifications) also has the jump first again within 100 ms (median).
    #[test]
    fn without_notifications_the_guard_polls_within_100ms() {
        if !weft_test_support::root_or_skip(&weft_test_support::this_test(), "a network namespace of its own")
        {
            return;
        }
        weft_netkit::netns::run_in_new(|| {
            let mut ipt = Iptables::new();
            ipt.apply(&super::super::render(&crate::policy::PolicyIr::default()), true).unwrap();
            ipt.guard = start_guard_for(ipt.families.clone(), ipt.v6.clone(), false);
            let first = || {
                let rules = tool::output("iptables", &["-S", "FORWARD"], None).unwrap();
                rules
                    .lines()
                    .find(|l| l.starts_with("-A FORWARD"))
                    .unwrap_or_default()
                    .contains(FORWARD_CHAIN)
            };
            let mut took = Vec::new();
            for _ in 0..5 {
                tool::run("iptables", &["-I", "FORWARD", "1", "-j", "ACCEPT"], None).unwrap();
                let t0 = std::time::Instant::now();
                while !first() && t0.elapsed() < std::time::Duration::from_secs(2) {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                took.push(t0.elapsed());
            }
            // The median meets the target; a loaded machine may delay one.
            took.sort();
            let ms = std::time::Duration::from_millis;
            assert!(took[2] <= ms(100) && took[4] <= ms(500), "{took:?}");
            ipt.cleanup().unwrap();
        })
        .expect("a netns of its own");
    }

    #[test]
    fn the_jump_moves_first_in_one_restore() {
        let jump = "-A FORWARD -m comment --comment \"weft: NetworkPolicy\" -j WEFT-FORWARD";
        let kube = "-A FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT";
        assert_eq!(
            jump_move("filter", &format!("-P FORWARD ACCEPT\n{jump}\n{kube}\n")),
            None,
            "first already"
        );
        let moved = "*filter\n-D FORWARD -m comment --comment \"weft: NetworkPolicy\" -j WEFT-FORWARD\n\
                     -I FORWARD 1 -m comment --comment \"weft: NetworkPolicy\" -j WEFT-FORWARD\nCOMMIT\n";
        assert_eq!(
            jump_move("filter", &format!("-P FORWARD ACCEPT\n{kube}\n{jump}\n")).as_deref(),
            Some(moved)
        );
        let twice = jump_move("mangle", &format!("{jump}\n{jump}\n")).unwrap();
        assert!(twice.starts_with("*mangle\n"), "{twice}");
        assert_eq!(twice.matches("-D FORWARD").count(), 2, "{twice}");
        let none = jump_move("filter", "-P FORWARD ACCEPT\n").unwrap();
        assert!(!none.contains("-D") && none.contains("-I FORWARD 1"), "{none}");
    }

    #[test]
    fn the_chains_go_into_mangle_then_filter() {
        let rules = "*filter\n:WEFT-FORWARD - [0:0]\n-A WEFT-FORWARD -s 10.0.0.1 -j ACCEPT\n\
                     -A WEFT-FORWARD -j DROP\nCOMMIT\n";
        assert_eq!(
            in_both_tables(rules),
            format!(
                "*mangle\n:WEFT-FORWARD - [0:0]\n-A WEFT-FORWARD -s 10.0.0.1 -j RETURN\n\
                 -A WEFT-FORWARD -j DROP\nCOMMIT\n{rules}"
            ),
            "mangle only drops; what filter accepts goes on through mangle FORWARD"
        );
    }

    #[test]
    fn cluster_policy_chains_go_in_the_same_transaction() {
        let rules = "*filter\n:WEFT-FORWARD - [0:0]\n-A WEFT-FORWARD -j DROP\nCOMMIT\n";
        assert!(!has_cnp_chains(rules));
        let dropping = dropping_cnp_chains(rules);
        let lines: Vec<&str> = dropping.lines().collect();
        assert_eq!(
            lines[..3],
            ["*filter", ":WEFT-CNP-AIN - [0:0]", ":WEFT-CNP-NPIN - [0:0]"],
            "declared first"
        );
        assert_eq!(lines[lines.len() - 2..], ["-X WEFT-CNP-DOUT", "COMMIT"], "deleted last");
        assert_eq!(dropping.matches("-X WEFT-CNP-").count(), CNP_CHAINS.len());
        assert!(has_cnp_chains(&dropping));
        let both = in_both_tables(&dropping);
        assert_eq!(both.matches("-X WEFT-CNP-AOUT\n").count(), 2, "mangle and filter: {both}");
        let save = "*filter\n:WEFT-FORWARD - [0:0]\n:WEFT-CNP-AOUT - [0:0]\nCOMMIT\n";
        assert_eq!(weft_chains(save).1, ["WEFT-FORWARD", "WEFT-CNP-AOUT"], "cleanup finds them");
    }

    #[test]
    fn weft_objects_are_found_in_a_save_listing() {
        let save = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:KUBE-FORWARD - [0:0]\n\
                    :WEFT-FORWARD - [0:0]\n:WEFT-INGRESS - [0:0]\n:WEFT-FORWARDX - [0:0]\n\
                    -A FORWARD -j KUBE-FORWARD\n\
                    -A FORWARD -m comment --comment \"weft: NetworkPolicy\" -j WEFT-FORWARD\n\
                    -A FORWARD -j WEFT-FORWARDX\n-A WEFT-FORWARD -j WEFT-INGRESS\nCOMMIT\n";
        assert_eq!(weft_chains(save), (1, vec!["WEFT-FORWARD".to_string(), "WEFT-INGRESS".to_string()]));
        assert_eq!(weft_chains("*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n"), (0, vec![]));
    }

    #[test]
    fn existing_sets_are_swapped_new_ones_created() {
        let fixed = SetSpec {
            name: "weft-in-iso".into(),
            kind: SetType::HashIp,
            inet6: false,
            members: vec!["10.244.1.2".into()],
        };
        let mut out = String::new();
        write_set(&mut out, &fixed, true);
        assert_eq!(
            out,
            "create weft-in-iso-new hash:ip family inet hashsize 1024 maxelem 65536 -exist\nflush weft-in-iso-new\n\
             add weft-in-iso-new 10.244.1.2\nswap weft-in-iso-new weft-in-iso\ndestroy weft-in-iso-new\n"
        );
        let mut out = String::new();
        write_set(&mut out, &fixed, false);
        assert!(out.starts_with("create weft-in-iso hash:ip") && !out.contains("swap"), "{out}");
        let big = SetSpec { members: (0..100_000).map(|i| format!("m{i}")).collect(), ..fixed };
        let mut out = String::new();
        write_set(&mut out, &big, false);
        assert!(
            out.starts_with("create weft-in-iso hash:ip family inet hashsize 65536 maxelem 262144"),
            "{}",
            &out[..80]
        );
    }
}
