//! Which NetworkPolicy backend runs: iptables (ipsets and weft's FORWARD
//! chains) or nftables (one `inet weft` table), both fed the same PolicyIr.
//! `auto` picks nftables where the iptables in use is the nft flavour (or
//! there is none) and `nft` exists, iptables otherwise, and says why.
//!
//! A switch across a restart (iptables <-> nftables) opens no window: the
//! new backend's first apply is in force before the other backend's
//! leftovers are removed (`Handover`). Meanwhile both enforce the same
//! policy (the same IR; each one's fail-closed and transit rules match the
//! other's), so a packet must pass both: nothing either denies passes,
//! nothing both allow is dropped. `off` removes both backends' objects at
//! start (`remove_all`), so no rule of an earlier run, fail-closed drops
//! included, outlives enforcement.

use weft_netkit::iptables_mode::{self, IptablesMode};
use weft_netkit::kernel_error::KernelError;
use weft_netkit::tool;

use crate::iptables::{self, Iptables};
use crate::nft::kernel::NftApplied;
use crate::nft::{self, Nft};
use crate::policy::{Dirty, PolicyIr};

/// `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// No enforcement: the agent never touches FORWARD.
    Off,
    Iptables,
    Nftables,
    #[default]
    Auto,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<BackendChoice, String> {
        match s {
            "off" => Ok(BackendChoice::Off),
            "iptables" => Ok(BackendChoice::Iptables),
            "nftables" => Ok(BackendChoice::Nftables),
            "auto" => Ok(BackendChoice::Auto),
            _ => Err(format!("unknown policy backend {s:?}: iptables, nftables, auto or off")),
        }
    }
}

/// Rules, sets and set elements of what a backend rendered (for /metrics
/// and the benchmarks). Rules: the iptables `-A` lines of weft's chains, or
/// the rules of the nftables table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectCounts {
    pub rules: usize,
    pub sets: usize,
    pub elements: usize,
}

/// What one apply did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// A line for the log when something changed.
    pub change: Option<String>,
    /// What is now in force, counted from the rendering just applied.
    pub counts: ObjectCounts,
}

impl Outcome {
    /// This apply followed by `next`: both changes said, `next`'s counts.
    pub fn then(self, next: Outcome) -> Outcome {
        let change = match (self.change, next.change) {
            (Some(a), Some(b)) => Some(format!("{a}; {b}")),
            (a, b) => a.or(b),
        };
        Outcome { change, counts: next.counts }
    }
}

/// The kernel check of a resync, made off the agent's loop (reading a large
/// table back takes 50-150 ms, which a CNI ADD waiting on the loop must not).
pub struct KernelCheck {
    /// The backend's epoch when the check was taken: the answer is about
    /// what the backend had applied then, and says nothing once it moved on.
    pub epoch: u64,
    /// Reads the kernel and compares: true when it holds what the backend
    /// had applied. Runs on any thread in the loop's network namespace.
    pub run: Box<dyn FnOnce() -> bool + Send>,
}

impl std::fmt::Debug for KernelCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelCheck").field("epoch", &self.epoch).finish_non_exhaustive()
    }
}

/// A policy backend: applies the IR, removes everything it created.
pub trait PolicyBackend {
    fn name(&self) -> &'static str;
    /// Makes the kernel enforce `ir`; `full` checks or rewrites everything
    /// (a resync).
    fn apply(&mut self, ir: &PolicyIr, full: bool) -> Result<Outcome, KernelError>;
    /// Makes the kernel enforce `ir`, of which only what `dirty` names
    /// changed since the last apply: patched in place where the backend can,
    /// else applied as a change.
    fn apply_changes(&mut self, ir: &PolicyIr, dirty: &Dirty) -> Result<Outcome, KernelError> {
        let _ = dirty;
        self.apply(ir, false)
    }
    /// The periodic resync: checks the kernel against what this backend
    /// last applied, which the caller has brought up to `ir` (through
    /// `apply_changes`), and rewrites only what drifted, atomically; where
    /// the check cannot tell (nothing applied yet, a listing unreadable), a
    /// full apply of `ir`. Cheap when nothing drifted: no render, no rewrite.
    fn resync(&mut self, ir: &PolicyIr) -> Result<Outcome, KernelError> {
        self.apply(ir, true)
    }
    /// The check `resync` starts with, to run off the loop: if it finds the
    /// kernel intact at an unchanged `epoch`, the resync has nothing to do.
    /// None where only `resync` can tell.
    fn check(&self) -> Option<KernelCheck> {
        None
    }
    /// Changes with every write to the kernel (apply, patch, resync, cleanup).
    fn epoch(&self) -> u64 {
        0
    }
    /// What is in force, as last applied (zero before the first apply).
    fn counts(&self) -> ObjectCounts;
    fn cleanup(&mut self) -> Result<(), KernelError>;
}

impl PolicyBackend for Iptables {
    fn name(&self) -> &'static str {
        "iptables"
    }

    fn apply(&mut self, ir: &PolicyIr, full: bool) -> Result<Outcome, KernelError> {
        let rendered = iptables::render(ir);
        let done = Iptables::apply(self, &rendered, full)?;
        // A full apply always writes the chains: not a change by itself.
        Ok(Outcome { change: iptables_change(&done, !full, ""), counts: rendered.counts() })
    }

    fn resync(&mut self, ir: &PolicyIr) -> Result<Outcome, KernelError> {
        match Iptables::resync(self)? {
            Some(done) => {
                let change = iptables_change(&done, true, "drift repaired: ");
                Ok(Outcome { change, counts: self.counts() })
            }
            None => PolicyBackend::apply(self, ir, true),
        }
    }

    fn apply_changes(&mut self, ir: &PolicyIr, dirty: &Dirty) -> Result<Outcome, KernelError> {
        match Iptables::apply_changes(self, ir, dirty)? {
            Some(done) => {
                let how = if done.netlink { "over netlink" } else { "by ipset restore" };
                let change =
                    (done.sets_patched > 0).then(|| format!("{} sets patched {how}", done.sets_patched));
                Ok(Outcome { change, counts: self.counts() })
            }
            None => PolicyBackend::apply(self, ir, false),
        }
    }

    fn check(&self) -> Option<KernelCheck> {
        let (epoch, run) = Iptables::check(self)?;
        Some(KernelCheck { epoch, run: Box::new(run) })
    }

    fn epoch(&self) -> u64 {
        Iptables::epoch(self)
    }

    fn counts(&self) -> ObjectCounts {
        Iptables::counts(self)
    }

    fn cleanup(&mut self) -> Result<(), KernelError> {
        Iptables::cleanup(self)
    }
}

/// The log line for an iptables apply that changed something (`rules`:
/// whether rewritten chains count as a change), after `prefix`.
fn iptables_change(done: &iptables::kernel::Applied, rules: bool, prefix: &str) -> Option<String> {
    let changed = done.sets_written + done.sets_patched + done.sets_destroyed > 0
        || done.jump_moved
        || (done.rules_written && rules);
    changed.then(|| {
        format!(
            "{prefix}{} sets written, {} patched, {} destroyed, chains {}{}",
            done.sets_written,
            done.sets_patched,
            done.sets_destroyed,
            if done.rules_written { "written" } else { "unchanged" },
            if done.jump_moved { ", FORWARD jump put back first" } else { "" }
        )
    })
}

/// The elements an nftables delta added and deleted, and the sets it wrote again.
fn elements(done: &NftApplied) -> String {
    let again = match done.rewritten {
        0 => String::new(),
        n => format!(" ({n} sets written again)"),
    };
    format!("{} elements added, {} deleted{again}", done.added, done.deleted)
}

impl PolicyBackend for Nft {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn apply(&mut self, ir: &PolicyIr, full: bool) -> Result<Outcome, KernelError> {
        let rendered = nft::render(ir);
        let done = Nft::apply(self, &rendered, full)?;
        let elements = elements(&done);
        let change = match (done.replaced, done.regrouped, done.added + done.deleted) {
            (true, _, _) if done.repaired => {
                Some("the table had changed behind weft's back: replaced".into())
            }
            (true, _, _) if full => None,
            (true, _, _) => Some("table inet weft replaced".into()),
            (false, true, _) => Some(format!("groups changed (policy chains rewritten), {elements}")),
            (false, false, 0) => None,
            (false, false, _) => Some(elements),
        };
        Ok(Outcome { change, counts: rendered.counts() })
    }

    fn apply_changes(&mut self, ir: &PolicyIr, dirty: &Dirty) -> Result<Outcome, KernelError> {
        match Nft::apply_changes(self, ir, dirty)? {
            Some(done) => {
                let change = (done.added + done.deleted > 0).then(|| elements(&done));
                Ok(Outcome { change, counts: self.counts().unwrap_or_default() })
            }
            None => PolicyBackend::apply(self, ir, false),
        }
    }

    fn resync(&mut self, ir: &PolicyIr) -> Result<Outcome, KernelError> {
        match Nft::resync(self)? {
            Some(done) => {
                let change = match (done.replaced, done.rewritten) {
                    (true, _) => {
                        Some("drift repaired: the table had changed behind weft's back: replaced".into())
                    }
                    (false, 0) => None,
                    (false, n) => Some(format!("drift repaired: {n} sets rewritten")),
                };
                Ok(Outcome { change, counts: self.counts().unwrap_or_default() })
            }
            None => PolicyBackend::apply(self, ir, true),
        }
    }

    fn check(&self) -> Option<KernelCheck> {
        let (epoch, run) = Nft::check(self)?;
        Some(KernelCheck { epoch, run: Box::new(run) })
    }

    fn epoch(&self) -> u64 {
        Nft::epoch(self)
    }

    fn counts(&self) -> ObjectCounts {
        Nft::counts(self).unwrap_or_default()
    }

    fn cleanup(&mut self) -> Result<(), KernelError> {
        Nft::cleanup(self)
    }
}

/// The tools each backend runs.
const IPTABLES_TOOLS: [&str; 4] = ["iptables", "iptables-restore", "iptables-save", "ipset"];
const NFTABLES_TOOLS: [&str; 1] = ["nft"];

/// Resolves `choice` (auto picks) and says why; an error if a tool the
/// chosen backend runs is missing. Touches nothing in the kernel.
pub fn choose(choice: BackendChoice) -> Result<(BackendChoice, String), KernelError> {
    let (pick, why) = match choice {
        BackendChoice::Off => return Ok((BackendChoice::Off, "NetworkPolicy enforcement is off".into())),
        BackendChoice::Iptables => (BackendChoice::Iptables, "iptables, as asked".to_string()),
        BackendChoice::Nftables => (BackendChoice::Nftables, "nftables, as asked".to_string()),
        BackendChoice::Auto => auto(),
    };
    let tools: &[&str] = if pick == BackendChoice::Nftables { &NFTABLES_TOOLS } else { &IPTABLES_TOOLS };
    for t in tools {
        tool::find_tool(t)?;
    }
    Ok((pick, why))
}

/// The backend `choose` picked (None for off). It removes the other
/// backend's leftovers once its own first apply is in force.
pub fn start(pick: BackendChoice) -> Option<Box<dyn PolicyBackend>> {
    match pick {
        BackendChoice::Off => None,
        BackendChoice::Nftables => Some(Box::new(Handover {
            inner: Nft::new(),
            other: Some(("iptables", iptables::kernel::remove_objects)),
        })),
        _ => Some(Box::new(Handover {
            inner: Iptables::new(),
            other: Some(("nftables", nft::kernel::remove_table)),
        })),
    }
}

/// Removes both backends' objects (for `off`): what was removed, and the
/// errors. Idempotent.
pub fn remove_all() -> (Vec<String>, Vec<KernelError>) {
    let (mut removed, mut errors) = (Vec::new(), Vec::new());
    for remove in [iptables::kernel::remove_objects, nft::kernel::remove_table] {
        match remove() {
            Ok(r) => removed.extend(r),
            Err(e) => errors.push(e),
        }
    }
    (removed, errors)
}

/// Removes a backend's objects and says what they were.
type Remover = fn() -> Result<Vec<String>, KernelError>;

/// A backend that removes the other backend's leftovers after its own first
/// successful apply (retried at each full apply until it succeeds).
struct Handover<B> {
    inner: B,
    /// The other backend's name and remover, until it has run.
    other: Option<(&'static str, Remover)>,
}

impl<B: PolicyBackend> PolicyBackend for Handover<B> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn apply(&mut self, ir: &PolicyIr, full: bool) -> Result<Outcome, KernelError> {
        let out = self.inner.apply(ir, full)?;
        Ok(if full { self.hand_over(out) } else { out })
    }

    // Forwarded, not left to the trait's defaults: those would render and
    // apply in full where the inner backend patches or checks.
    fn apply_changes(&mut self, ir: &PolicyIr, dirty: &Dirty) -> Result<Outcome, KernelError> {
        self.inner.apply_changes(ir, dirty)
    }

    fn resync(&mut self, ir: &PolicyIr) -> Result<Outcome, KernelError> {
        let out = self.inner.resync(ir)?;
        Ok(self.hand_over(out))
    }

    /// None until the other backend's leftovers are removed: each resync
    /// retries that.
    fn check(&self) -> Option<KernelCheck> {
        if self.other.is_some() {
            return None;
        }
        self.inner.check()
    }

    fn epoch(&self) -> u64 {
        self.inner.epoch()
    }

    fn counts(&self) -> ObjectCounts {
        self.inner.counts()
    }

    fn cleanup(&mut self) -> Result<(), KernelError> {
        if let Some((_, remove)) = self.other.take() {
            let _ = remove();
        }
        self.inner.cleanup()
    }
}

impl<B: PolicyBackend> Handover<B> {
    /// After an apply or resync put `ir` in force: the other backend's
    /// leftovers removed (until that succeeds), said in `out`.
    fn hand_over(&mut self, mut out: Outcome) -> Outcome {
        let Some((other, remove)) = self.other else { return out };
        let note = match remove() {
            Ok(removed) => {
                self.other = None;
                (!removed.is_empty())
                    .then(|| format!("now in force; the {other} backend's {} removed", removed.join(", ")))
            }
            Err(e) => {
                Some(format!("now in force; removing the {other} backend's leftovers failed ({e}): retrying"))
            }
        };
        if let Some(note) = note {
            out.change = Some(out.change.map_or(note.clone(), |c| format!("{c}; {note}")));
        }
        out
    }
}

/// auto: nftables unless the host's rules are in iptables-legacy (which
/// nftables tables would not be ordered against), decided from the rules the
/// host holds, as kube-proxy's iptables-wrapper does, not from the flavour of
/// the agent image's own `iptables`; iptables if `nft` is missing.
fn auto() -> (BackendChoice, String) {
    if tool::find_tool("nft").is_err() {
        return (BackendChoice::Iptables, "auto: iptables (no nft binary)".into());
    }
    match iptables_mode::detect() {
        Ok(IptablesMode::Legacy) => {
            (BackendChoice::Iptables, "auto: iptables (the host's rules are in iptables-legacy)".into())
        }
        _ => (
            BackendChoice::Nftables,
            "auto: nftables (the host's iptables rules, if any, are nf_tables)".into(),
        ),
    }
}
