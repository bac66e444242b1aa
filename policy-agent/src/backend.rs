//! Which NetworkPolicy backend runs: iptables (ipsets and weft's FORWARD
//! chains) or nftables (one `inet weft` table), both fed the same PolicyIr.
//! `auto` picks nftables where the iptables in use is the nft flavour (or
//! there is none) and `nft` exists, iptables otherwise, and says why.
//! Starting one backend removes what the other left behind, so switching
//! never leaves two sets of rules in force.

use weft_netkit::kernel_error::KernelError;
use weft_netkit::tool;

use crate::iptables::{self, Iptables};
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
    fn cleanup(&mut self) -> Result<(), KernelError>;
}

impl PolicyBackend for Iptables {
    fn name(&self) -> &'static str {
        "iptables"
    }

    fn apply(&mut self, ir: &PolicyIr, full: bool) -> Result<Outcome, KernelError> {
        let rendered = iptables::render(ir);
        let done = Iptables::apply(self, &rendered, full)?;
        let changed = done.sets_written + done.sets_patched + done.sets_destroyed > 0
            || done.jump_moved
            || (done.rules_written && !full);
        let change = changed.then(|| {
            format!(
                "{} sets written, {} patched, {} destroyed, chains {}{}",
                done.sets_written,
                done.sets_patched,
                done.sets_destroyed,
                if done.rules_written { "written" } else { "unchanged" },
                if done.jump_moved { ", FORWARD jump put back first" } else { "" }
            )
        });
        Ok(Outcome { change, counts: rendered.counts() })
    }

    fn apply_changes(&mut self, ir: &PolicyIr, dirty: &Dirty) -> Result<Outcome, KernelError> {
        match Iptables::apply_changes(self, ir, dirty)? {
            Some(done) => {
                let change = (done.sets_patched > 0).then(|| format!("{} sets patched", done.sets_patched));
                Ok(Outcome { change, counts: self.counts() })
            }
            None => PolicyBackend::apply(self, ir, false),
        }
    }

    fn cleanup(&mut self) -> Result<(), KernelError> {
        Iptables::cleanup(self)
    }
}

impl PolicyBackend for Nft {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn apply(&mut self, ir: &PolicyIr, full: bool) -> Result<Outcome, KernelError> {
        let rendered = nft::render(ir);
        let done = Nft::apply(self, &rendered, full)?;
        let elements = format!("{} elements added, {} deleted", done.added, done.deleted);
        let change = match (done.replaced, done.regrouped, done.added + done.deleted) {
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
                let change = (done.added + done.deleted > 0)
                    .then(|| format!("{} elements added, {} deleted", done.added, done.deleted));
                Ok(Outcome { change, counts: self.counts().unwrap_or_default() })
            }
            None => PolicyBackend::apply(self, ir, false),
        }
    }

    fn cleanup(&mut self) -> Result<(), KernelError> {
        Nft::cleanup(self)
    }
}

/// The backend for `choice` (None for off) and why it was picked. Removes
/// the other backend's objects (best effort: its tool may not even exist).
pub fn start(choice: BackendChoice) -> (Option<Box<dyn PolicyBackend>>, String) {
    let (pick, why) = match choice {
        BackendChoice::Off => return (None, "NetworkPolicy enforcement is off".into()),
        BackendChoice::Iptables => (BackendChoice::Iptables, "iptables, as asked".to_string()),
        BackendChoice::Nftables => (BackendChoice::Nftables, "nftables, as asked".to_string()),
        BackendChoice::Auto => auto(),
    };
    let backend: Box<dyn PolicyBackend> = match pick {
        BackendChoice::Nftables => {
            let _ = Iptables::new().cleanup();
            Box::new(Nft::new())
        }
        _ => {
            let _ = Nft::new().cleanup();
            Box::new(Iptables::new())
        }
    };
    (Some(backend), why)
}

/// auto: nftables unless the iptables in use is the legacy one (which the
/// nft tables would not be ordered against) or `nft` is missing.
fn auto() -> (BackendChoice, String) {
    let nft = tool::find_tool("nft").is_ok();
    let flavour = tool::output("iptables", &["--version"], None).ok();
    match (nft, flavour.as_deref()) {
        (false, _) => (BackendChoice::Iptables, "auto: iptables (no nft binary)".into()),
        (true, None) => (BackendChoice::Nftables, "auto: nftables (no iptables)".into()),
        (true, Some(v)) if v.contains("nf_tables") => {
            (BackendChoice::Nftables, format!("auto: nftables ({} is the nft flavour)", v.trim()))
        }
        (true, Some(v)) => (BackendChoice::Iptables, format!("auto: iptables ({} is in use)", v.trim())),
    }
}
