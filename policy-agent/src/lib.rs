//! weft-agent, the per-node daemon: watches cluster state (the Kubernetes API
//! or a manifests directory, behind `source::Source`) and
//! keeps a route to every other node's pod CIDR, host-gw or through a VXLAN
//! overlay (`overlay`), marked with weft's route protocol so it touches only
//! its own routes.

pub mod agent;
pub mod backend;
pub mod checks;
pub mod cni_config;
pub mod denied;
pub mod explain;
pub mod http;
pub mod iptables;
pub mod kube_rbac;
pub mod log_fold;
pub mod logging;
pub mod masquerade;
pub mod metrics;
pub mod model;
pub mod nflog;
pub mod nft;
pub mod overlay;
pub mod overlay_kernel;
pub mod parked_adds;
pub mod pod_events;
pub mod pod_socket;
pub mod policy;
pub mod private_socket;
pub mod route_table;
pub mod routes;
pub mod snapshot;
pub mod source;
pub mod status;

pub use model::{Model, Node, Snapshot};
