//! The NetworkPolicy conformance runner (format: case.rs): cases are
//! YAML files (e2e/cases/), each a starting cluster state and steps of changes
//! and probes with the expected outcome; the runner executes them on one
//! testbed, reset between cases, against a chosen enforcement backend, and
//! prints expected and observed matrices side by side where they differ.
//!
//! `weft-e2e conformance run [--backend B] [--source dir|kube] [--mode M
//! [--anti-spoofing]] PATH...` and `run_paths(&[PathBuf], Backend)` (for
//! tests) do the same. With `--source kube` the agents read the cluster state
//! through the stand-in API server (`apiserver_standin`) instead of the
//! directory; `--mode vxlan --anti-spoofing` runs the suite over the overlay
//! on a lan that drops pod addresses.

pub mod case;
mod exec;
pub mod matrix;
pub mod pure;

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use case::{parse_case, Case};
pub use exec::PROBE_TIMEOUT;
pub use weft_agent::overlay::Mode;

use crate::error::{E2eError, Result};
use crate::family::Family;

/// Which enforcement the agents (or the reproduction) put in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// weft-agent --backend iptables.
    #[default]
    Iptables,
    /// weft-agent --backend nftables.
    Nftables,
    /// Agents without policy, plus the reproduction of weave-npc 1.9.6's rules
    /// (`Testbed::apply_weave`) after every change.
    Weave196,
    /// Agents without policy: nothing is enforced (for testing the runner).
    None,
}

impl Backend {
    pub const ALL: [Backend; 4] = [Backend::Iptables, Backend::Nftables, Backend::Weave196, Backend::None];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Iptables => "iptables",
            Backend::Nftables => "nftables",
            Backend::Weave196 => "weave-1.9.6",
            Backend::None => "none",
        }
    }

    /// The extra arguments of every node's `weft-agent`.
    pub fn agent_args(self) -> &'static [&'static str] {
        match self {
            Backend::Iptables => &["--backend", "iptables"],
            Backend::Nftables => &["--backend", "nftables"],
            // Routes and masquerade only: weave's rules, or nothing, enforce.
            Backend::Weave196 | Backend::None => &["--backend", "off"],
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Backend, String> {
        Backend::ALL.into_iter().find(|b| b.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Backend::ALL.iter().map(|b| b.name()).collect();
            format!("unknown backend {s:?} (one of: {})", names.join(", "))
        })
    }
}

/// Where the agents read the cluster state from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StateSource {
    /// `--source dir:PATH`: the testbed's cluster dir.
    #[default]
    Dir,
    /// `--source kube`: the same state served by the stand-in API server.
    Kube,
}

impl StateSource {
    pub fn name(self) -> &'static str {
        match self {
            StateSource::Dir => "dir",
            StateSource::Kube => "kube",
        }
    }
}

impl fmt::Display for StateSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for StateSource {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<StateSource, String> {
        [StateSource::Dir, StateSource::Kube]
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| format!("unknown source {s:?} (dir or kube)"))
    }
}

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub backend: Backend,
    /// Where the agents read the cluster state from.
    pub source: StateSource,
    /// Some: leave the (last) testbed up at the end, named as given or randomly.
    pub keep: Option<Option<String>>,
    /// Checked between steps and cases: once true, the run stops with `Cancelled`
    /// (the testbed is torn down unless kept).
    pub cancel: Option<&'static AtomicBool>,
    /// Cross-check every probed pod-to-pod matrix cell against `weft-agent
    /// explain`'s verdict from the same cluster state: a cell where they
    /// differ fails the case.
    pub explain: bool,
    /// More weft-agent flags (e.g. `--triple-peers 1`).
    pub agent_args: Vec<String>,
    /// How the agents route between nodes (`--mode`); vxlan and auto attach
    /// pods with the overlay's MTU.
    pub mode: Mode,
    /// The lan drops frames whose source or destination is not a host
    /// (`Testbed::set_anti_spoofing`): only an overlay crosses it.
    pub anti_spoofing: bool,
    /// The address families the cases run in (`family.rs`: the plan embedded
    /// in fd00::/96, ipBlocks translated; in dual every probe in both).
    pub family: Family,
}

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub name: String,
    pub file: PathBuf,
    pub passed: bool,
    pub elapsed: Duration,
    /// What was printed for it: the PASS/FAIL line and, if it failed, why.
    pub report: String,
}

/// The outcome of a run.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub results: Vec<CaseResult>,
    /// The run left up by `keep`.
    pub kept: Option<String>,
}

impl Summary {
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.passed).count()
    }

    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }

    /// True if every case passed.
    pub fn ok(&self) -> bool {
        self.failed() == 0
    }

    /// The last line the runner prints.
    pub fn line(&self) -> String {
        format!("conformance: {} passed, {} failed", self.passed(), self.failed())
    }

    /// The result of case `name`.
    pub fn get(&self, name: &str) -> Option<&CaseResult> {
        self.results.iter().find(|r| r.name == name)
    }
}

/// Loads the cases of `paths`: files as given, directories by their `*.yaml`
/// and `*.yml` files in name order (not recursing, so a sub-directory such
/// as cases/baseline/ is a suite of its own). Every file must be a valid
/// case and names must be unique.
pub fn load_paths(paths: &[PathBuf]) -> Result<Vec<Case>> {
    let mut files = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(E2eError::io(format!("case path {}", p.display())))?;
        if !meta.is_dir() {
            files.push(p.clone());
            continue;
        }
        let rd =
            std::fs::read_dir(p).map_err(E2eError::io(format!("read case directory {}", p.display())))?;
        let mut found: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|f| f.is_file() && matches!(f.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
            .collect();
        found.sort();
        if found.is_empty() {
            return Err(E2eError::Case {
                file: p.clone(),
                reason: "no *.yaml case files in this directory".into(),
            });
        }
        files.extend(found);
    }
    let mut cases: Vec<Case> = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(E2eError::io(format!("read case {}", f.display())))?;
        let case = parse_case(&text, &f)?;
        if let Some(other) = cases.iter().find(|c| c.name == case.name) {
            return Err(E2eError::Case {
                file: f,
                reason: format!("name: {:?} is also the name of {}", case.name, other.file.display()),
            });
        }
        cases.push(case);
    }
    Ok(cases)
}

/// Loads and runs the cases of `paths` on `backend`, printing to stdout.
pub fn run_paths(paths: &[PathBuf], backend: Backend) -> Result<Summary> {
    let opts = Options { backend, ..Options::default() };
    run(paths, &opts, &mut std::io::stdout())
}

/// Loads and runs the cases of `paths`, printing each result to `out` as it
/// comes and the summary line last. Err only when the cases cannot be loaded
/// or a testbed cannot be brought up (a case that fails, even with an
/// error, is a failed case).
pub fn run(paths: &[PathBuf], opts: &Options, out: &mut dyn Write) -> Result<Summary> {
    let cases = load_paths(paths)?;
    run_cases(&cases, opts, out)
}

/// Runs `cases`, those with the same node count together (in order of
/// first appearance), so the testbed is brought up once per node count.
pub fn run_cases(cases: &[Case], opts: &Options, out: &mut dyn Write) -> Result<Summary> {
    let mut counts: Vec<u32> = Vec::new();
    for c in cases {
        if !counts.contains(&c.nodes) {
            counts.push(c.nodes);
        }
    }
    let ordered = counts.iter().flat_map(|n| cases.iter().filter(move |c| c.nodes == *n));
    let mut runner = exec::Runner::new(opts);
    let mut summary = Summary::default();
    let say = |out: &mut dyn Write, text: &str| {
        write!(out, "{text}").and_then(|()| out.flush()).map_err(E2eError::io("write the conformance report"))
    };
    for case in ordered {
        if opts.cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
            return Err(E2eError::Cancelled);
        }
        let t0 = Instant::now();
        // A testbed that cannot come up is no verdict on any case: stop.
        let tb = runner.ensure(case.nodes)?;
        let outcome = exec::run_case(tb, case, opts);
        let elapsed = t0.elapsed();
        // The report names the family it ran in (nothing for the default, ipv4).
        let name = match opts.family {
            Family::Ipv4 => case.name.clone(),
            f => format!("{} [{f}]", case.name),
        };
        let (passed, report) = match outcome {
            Ok(failures) if failures.is_empty() => {
                (true, format!("PASS {name} ({:.1}s)\n", elapsed.as_secs_f64()))
            }
            Ok(failures) => {
                let mut r = format!("FAIL {name} ({:.1}s)\n", elapsed.as_secs_f64());
                for f in failures {
                    r.push_str(&indent(&f, "  "));
                }
                (false, r)
            }
            Err(E2eError::Cancelled) => return Err(E2eError::Cancelled),
            Err(e) => {
                // The testbed is in an unknown state: the next case gets a fresh one.
                runner.discard()?;
                (false, format!("FAIL {name} ({:.1}s)\n  error: {e}\n", elapsed.as_secs_f64()))
            }
        };
        say(out, &report)?;
        summary.results.push(CaseResult {
            name: case.name.clone(),
            file: case.file.clone(),
            passed,
            elapsed,
            report,
        });
    }
    summary.kept = runner.finish()?;
    if let Some(run) = &summary.kept {
        say(out, &format!("kept run {run} (`weft-e2e down {run}` removes it)\n"))?;
    }
    say(out, &format!("{}\n", summary.line()))?;
    Ok(summary)
}

fn indent(text: &str, prefix: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        out.push_str(prefix);
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// One line per case: name, nodes, steps, probes, file.
pub fn list(cases: &[Case]) -> String {
    let width = cases.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for c in cases {
        let probes: usize = c.steps.iter().map(|s| s.probes.len()).sum();
        out.push_str(&format!(
            "{:<width$}  nodes {}  steps {}  probes {:>2}  {}\n",
            c.name,
            c.nodes,
            c.steps.len(),
            probes,
            c.file.display()
        ));
    }
    out
}

static CANCEL: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    CANCEL.store(true, Ordering::SeqCst);
}

/// Makes SIGINT/SIGTERM set a flag instead of killing the process, so the
/// runner stops after the probe in flight and tears the testbed down; returns
/// the flag for `Options::cancel`. A handler, not a blocked mask: the agents
/// and workloads the runner starts must keep default signal handling, and
/// exec resets handlers but not masks.
pub fn cancel_on_signals() -> &'static AtomicBool {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let act = SigAction::new(SigHandler::Handler(on_signal), SaFlags::SA_RESTART, SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        let _ = unsafe { sigaction(sig, &act) };
    }
    &CANCEL
}

/// The directory of the repository's cases (e2e/cases), for tests and tools.
pub fn cases_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/cases"))
}

/// The ClusterNetworkPolicy cases (e2e/cases-cnp): checked on the model only
/// until the kernel backends enforce ClusterNetworkPolicy, so the kernel
/// suites do not run them yet.
pub fn cnp_cases_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/cases-cnp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends() {
        for b in Backend::ALL {
            assert_eq!(b.name().parse::<Backend>(), Ok(b));
        }
        assert_eq!(Backend::default(), Backend::Iptables);
        assert_eq!(Backend::Iptables.agent_args(), ["--backend", "iptables"]);
        assert_eq!(Backend::Nftables.agent_args(), ["--backend", "nftables"]);
        assert_eq!(Backend::Weave196.agent_args(), ["--backend", "off"]);
        assert_eq!(Backend::None.agent_args(), ["--backend", "off"]);
        assert!("weave".parse::<Backend>().unwrap_err().contains("weave-1.9.6"));
        assert_eq!("kube".parse::<StateSource>(), Ok(StateSource::Kube));
        assert_eq!("dir".parse::<StateSource>(), Ok(StateSource::Dir));
        assert_eq!(StateSource::default(), StateSource::Dir);
        assert!("etcd".parse::<StateSource>().is_err());
    }

    #[test]
    fn summary_line() {
        let r = |passed| CaseResult {
            name: "c".into(),
            file: "c.yaml".into(),
            passed,
            elapsed: Duration::ZERO,
            report: String::new(),
        };
        let s = Summary { results: vec![r(true), r(false), r(true)], kept: None };
        assert_eq!(s.line(), "conformance: 2 passed, 1 failed");
        assert!(!s.ok());
        assert!(Summary::default().ok());
    }

    /// Every case in the repository loads: a typo in a case fails here, in
    /// `cargo test`, without root.
    #[test]
    fn the_repositorys_cases_load() {
        let cases = load_paths(&[cases_dir().to_path_buf()]).unwrap_or_else(|e| panic!("{e}"));
        assert!(cases.len() >= 60, "{} cases", cases.len());
        let baseline = load_paths(&[cases_dir().join("baseline")]).unwrap_or_else(|e| panic!("{e}"));
        assert!(!baseline.is_empty());
        for c in &cases {
            let stem = c.file.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
            let (num, rest) = stem.split_once('-').unwrap_or_default();
            assert!(
                num.len() == 2 && num.bytes().all(|b| b.is_ascii_digit()),
                "{stem}: name it NN-short-name"
            );
            assert_eq!(rest, c.name, "{}: the name field should match the file name", c.file.display());
            assert!(!c.description.is_empty(), "{}: say what it checks", c.file.display());
        }
    }

    #[test]
    fn loading_rejects_duplicates_and_empty_dirs() {
        let dir = std::env::temp_dir().join(format!("weft-conformance-load-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let e = load_paths(std::slice::from_ref(&dir)).unwrap_err().to_string();
        assert!(e.contains("no *.yaml case files"), "{e}");
        let case = "name: same\nsteps:\n  - probe:\n      - {from: x/a, to: x/b, port: 80, expect: allow}\n";
        std::fs::write(dir.join("01-a.yaml"), case).unwrap();
        std::fs::write(dir.join("02-b.yaml"), case).unwrap();
        std::fs::write(dir.join("notes.txt"), "not a case").unwrap();
        let e = load_paths(std::slice::from_ref(&dir)).unwrap_err().to_string();
        assert!(e.contains("02-b.yaml") && e.contains("also the name of") && e.contains("01-a.yaml"), "{e}");
        std::fs::remove_file(dir.join("02-b.yaml")).unwrap();
        assert_eq!(load_paths(std::slice::from_ref(&dir)).unwrap().len(), 1);
        let e = load_paths(&[dir.join("missing.yaml")]).unwrap_err().to_string();
        assert!(e.contains("missing.yaml"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
