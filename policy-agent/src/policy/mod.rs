//! NetworkPolicy, the pure part: `compile` turns the cluster model into this
//! node's `PolicyIr` (per address family: which local pods are isolated in
//! which direction, and what each may send or receive), backend-neutral; the
//! iptables and nftables renderers turn the IR into kernel state.
//! ClusterNetworkPolicy's Admin and Baseline tiers are evaluated on the
//! model by `tiers` (explain's walk) and compiled into the IR by `cluster`
//! (disjoint regions per subject class, what the backends render);
//! `class_change` says what a change did to a class, for the backends' patches.

mod aggregate;
pub mod cidr;
pub mod class_change;
pub mod cluster;
pub mod compile;
pub mod evaluate;
pub mod family;
pub mod incremental;
pub mod ir;
// Logs (tracing): part of the daemon, not of the pure library.
#[cfg(feature = "daemon")]
pub mod tier_notices;
pub mod tiers;

pub use compile::{compile, compile_with, Options, DEFAULT_TRIPLE_PEERS};
pub use family::Family;
pub use incremental::PolicyEngine;
pub use ir::{
    Cell, Class, ClassDelta, ClusterIr, Direction, Dirty, DirtyDirection, FamilyDirty, FamilyIr, Group,
    GroupPorts, PeerKey, PolicyIr, PortGroup, Region, Triple,
};
