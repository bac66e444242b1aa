//! The iptables backend: `render` maps the PolicyIr to ipsets and weft's
//! filter chains (pure), `kernel` applies them with `ipset restore` and
//! `iptables-restore --noflush` and keeps weft's FORWARD jump first, with
//! `jump_guard` watching it between applies.

pub mod jump_guard;
pub mod kernel;
pub mod patch;
pub mod render;

pub use kernel::Iptables;
pub use render::{render, Rendered, SetSpec, SetType};
