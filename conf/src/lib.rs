//! CNI spec types for weft: network configuration, runtime environment,
//! results and their conversion between spec versions, error codes and
//! version negotiation, and the pod socket's messages between the plugin
//! and the agent. Pure data and parsing: no I/O.

pub mod args;
pub mod conflist;
pub mod env;
pub mod error;
pub mod hash;
pub mod netconf;
pub mod pod_socket;
pub mod reply;
pub mod result;
pub mod runtime_config;
pub mod version;

pub use args::CniArgs;
pub use conflist::NetConfList;
pub use env::{CniEnv, Command};
pub use error::{CniError, ErrorCode};
pub use netconf::{Attachment, IpamSection, MasqueradeBackend, NetConf};
pub use reply::{serve, version_reply, Reply};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use runtime_config::{PortMapping, RuntimeConfig};
pub use version::{Version, VersionInfo};
