//! weft-agent, the per-node daemon: watches cluster state (the Kubernetes API
//! or a manifests directory, behind `source::Source`) and
//! keeps a route to every other node's pod CIDR, host-gw or through a VXLAN
//! overlay (`overlay`), marked with weft's route protocol so it touches only
//! its own routes. Without the default feature `daemon` it is the pure policy
//! library alone (model, compiler, pod claims, NFLOG parsing).

pub mod model;
pub mod nflog;
pub mod pod_events;
pub mod policy;

// The daemon: kernel backends, sources, HTTP, CLI (feature `daemon`, on by default).
#[cfg(feature = "daemon")]
pub mod agent;
#[cfg(feature = "daemon")]
pub mod backend;
#[cfg(feature = "daemon")]
pub mod checks;
#[cfg(feature = "daemon")]
pub mod cni_config;
#[cfg(feature = "daemon")]
pub mod denied;
#[cfg(feature = "daemon")]
pub mod explain;
#[cfg(feature = "daemon")]
pub mod http;
#[cfg(feature = "daemon")]
pub mod iptables;
#[cfg(feature = "daemon")]
pub mod kube_rbac;
#[cfg(feature = "daemon")]
pub mod log_fold;
#[cfg(feature = "daemon")]
pub mod logging;
#[cfg(feature = "daemon")]
pub mod masquerade;
#[cfg(feature = "daemon")]
pub mod metrics;
#[cfg(feature = "daemon")]
pub mod nft;
#[cfg(feature = "daemon")]
pub mod overlay;
#[cfg(feature = "daemon")]
pub mod overlay_kernel;
#[cfg(feature = "daemon")]
pub mod parked_adds;
#[cfg(feature = "daemon")]
pub mod pod_socket;
#[cfg(feature = "daemon")]
pub mod private_socket;
#[cfg(feature = "daemon")]
pub mod route_table;
#[cfg(feature = "daemon")]
pub mod routes;
#[cfg(feature = "daemon")]
pub mod snapshot;
#[cfg(feature = "daemon")]
pub mod source;
#[cfg(feature = "daemon")]
pub mod status;

pub use model::{Model, Node, Snapshot};
