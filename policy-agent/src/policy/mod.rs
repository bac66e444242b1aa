//! NetworkPolicy, the pure part: `compile` turns the cluster model into this
//! node's `PolicyIr` (which local pods are isolated in which direction, and
//! what each may send or receive), backend-neutral; the iptables renderer
//! (and, later, nftables) turn the IR into kernel state.

pub mod cidr;
pub mod compile;
pub mod evaluate;
pub mod ir;

pub use compile::{compile, compile_with, Options, DEFAULT_TRIPLE_PEERS};
pub use ir::{Direction, Group, GroupPorts, PeerKey, PolicyIr, PortGroup, Triple};
