//! Errors of the testbed. Every variant names the object it is about.

use std::io;
use std::path::PathBuf;

use weft_netkit::kernel_error::KernelError;

/// Errors from setting up, inspecting and tearing down a testbed run.
#[derive(Debug, thiserror::Error)]
pub enum E2eError {
    #[error("invalid run name {name:?}: {why}")]
    InvalidRunName { name: String, why: &'static str },
    #[error("invalid node count {nodes}: must be 1..={max}")]
    InvalidNodeCount { nodes: u32, max: u32 },
    #[error("run {run:?} already exists ({dir:?})")]
    RunExists { run: String, dir: PathBuf },
    #[error("run {run:?} not found (no {dir:?})")]
    RunNotFound { run: String, dir: PathBuf },
    #[error("network namespace {path:?} already exists")]
    NetnsExists { path: PathBuf },
    #[error("{what}: {source}")]
    Kernel {
        what: String,
        /// Boxed: KernelError carries a whole netlink message and would bloat every Result.
        #[source]
        source: Box<KernelError>,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("state file {path:?}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("process {what} not ready within {ms} ms")]
    NotReady { what: String, ms: u128 },
    #[error("run {run:?} has no node {node}")]
    NoSuchNode { run: String, node: u32 },
    #[error("invalid pod name {name:?}: {why}")]
    InvalidPodName { name: String, why: &'static str },
    #[error("pod {name:?} already exists in run {run:?}")]
    PodExists { run: String, name: String },
    #[error("pod {name:?} not found in run {run:?}")]
    PodNotFound { run: String, name: String },
    #[error("{what}: {detail}")]
    Cni { what: String, detail: String },
    #[error(
        "binary {name:?} not found (tried {tried:?}; build it with `cargo build --workspace` or set {env})"
    )]
    BinaryMissing { name: String, env: &'static str, tried: Vec<PathBuf> },
    #[error("agents of run {run:?} not converged on generation {generation} within {ms} ms: {detail}")]
    NotConverged { run: String, generation: String, ms: u128, detail: String },
    #[error("node {node}'s agent did not complete {want} more syncs within {ms} ms (it did {done})")]
    NoSync { node: u32, want: u64, done: u64, ms: u128 },
    #[error("manifest: {reason}")]
    Manifest { reason: String },
    /// A conformance case file that cannot be read or is not a valid case
    /// (the reason names the field, e.g. `steps[1].probe[0].expect: ...`).
    #[error("case {}: {reason}", file.display())]
    Case { file: PathBuf, reason: String },
    #[error("cancelled by a signal")]
    Cancelled,
    /// A scenario asked for in a family it cannot run in.
    #[error("scenario {scenario} does not run in {family}: {why}")]
    ScenarioFamily { scenario: &'static str, family: crate::family::Family, why: &'static str },
    #[error("teardown of run {run:?} left {} error(s): {}", errors.len(), join(errors))]
    Teardown { run: String, errors: Vec<E2eError> },
}

impl E2eError {
    /// Wraps an io::Error with what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> E2eError {
        let what = what.into();
        move |source| E2eError::Io { what, source }
    }

    /// Wraps a KernelError with what was being done.
    pub fn kernel(what: impl Into<String>) -> impl FnOnce(KernelError) -> E2eError {
        let what = what.into();
        move |source| E2eError::Kernel { what, source: Box::new(source) }
    }
}

fn join(errors: &[E2eError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// Results of this crate.
pub type Result<T, E = E2eError> = std::result::Result<T, E>;
