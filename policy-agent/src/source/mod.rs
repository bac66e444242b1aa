//! Where cluster state comes from. One trait; `dir::DirSource` reads a
//! directory of Kubernetes YAML manifests (the testbed's control plane), and
//! `kube::KubeSource` watches the Kubernetes API. `SourceSpec` is what the
//! command line chose.

pub mod dir;
mod dir_watch;
pub mod kube;

use std::path::PathBuf;

use self::kube::{KubeSource, KubeSourceError};
use crate::model::manifest::{Object, ObjectError};
use crate::model::Snapshot;
pub use dir::{read_dir, read_files, DirSource};

/// A source of cluster state.
pub trait Source {
    /// The current snapshot if the state changed since the last one returned
    /// (or on the first call), else None. Never blocks for long.
    fn poll(&mut self) -> Option<Snapshot>;

    /// Sets what a source that learns of changes by itself (a watch) calls
    /// when the state changes, so the agent polls at once; a polled source
    /// has nothing to call it on. Idempotent: a second call is ignored.
    fn set_wake(&mut self, _wake: WakeFn) {}

    /// What the last successful sync applied: CNP name -> metadata.generation
    /// (for the API source's ClusterNetworkPolicy status). Never blocks.
    fn report_realized(&mut self, _realized: &Realized) {}
}

/// CNP name -> the metadata.generation a node applied.
pub type Realized = std::collections::BTreeMap<String, i64>;

/// What a source calls to wake the agent loop to poll it.
pub type WakeFn = Box<dyn Fn() + Send + Sync>;

/// Which source the agent reads (`--source`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// `dir:PATH`: a directory of manifests.
    Dir(PathBuf),
    /// `kube`: the API server of the kubeconfig given, else of KUBECONFIG or
    /// ~/.kube/config, else the in-cluster service account's.
    Kube { kubeconfig: Option<PathBuf> },
}

/// What only the API source uses.
#[derive(Debug, Clone, Default)]
pub struct KubeExtras {
    /// ClusterNetworkPolicy status (reports and the elected writer); None: off.
    pub cnp_status: Option<self::kube::cnp_status::StatusConfig>,
}

impl SourceSpec {
    /// Opens the source. For a directory, it must be readable now; for the
    /// API, this loads the client configuration (an unreadable kubeconfig
    /// fails here) and starts the watchers, with `extras`.
    pub fn open(&self, extras: KubeExtras) -> Result<Box<dyn Source>, SourceOpenError> {
        Ok(match self {
            SourceSpec::Dir(dir) => {
                std::fs::read_dir(dir)
                    .map_err(|source| SourceOpenError::Dir { path: dir.clone(), source })?;
                Box::new(DirSource::watched(dir))
            }
            SourceSpec::Kube { kubeconfig } => {
                let opts = self::kube::Options { cnp_status: extras.cnp_status, ..Default::default() };
                Box::new(KubeSource::start_opts(kubeconfig.as_deref(), opts)?)
            }
        })
    }
}

/// Why the source could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SourceOpenError {
    #[error("cannot read the manifest directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Kube(#[from] KubeSourceError),
}

/// What stands for an object that no longer validates: its last good version,
/// if there is one, and the report (the same words whichever the source).
pub(crate) fn keep_last_good(e: &ObjectError, previous: Option<&Object>) -> (Option<Object>, String) {
    match previous {
        Some(o) => (Some(o.clone()), format!("{e}; keeping its last good version")),
        None => (None, format!("{e}; skipped")),
    }
}
