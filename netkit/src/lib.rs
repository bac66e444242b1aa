//! weft's kernel layer, shared by the CNI plugin and the node agent: thin,
//! typed I/O, one file per kind of object. Of CNI it knows only the error
//! codes its errors map to (`kernel_error`), as weft-ipam does.

pub mod addr;
pub mod bridge;
pub mod ipset_list;
mod ipset_proto;
pub mod ipset_write;
pub mod iptables_mode;
pub mod kernel_error;
pub mod link;
pub mod masquerade;
pub mod neighbour;
pub mod netlink_attrs;
pub mod netlink_dump;
pub mod netns;
pub mod nflog;
pub mod nfnl_dump;
pub mod process;
pub mod rule;
pub mod sysctl;
pub mod tool;
pub mod veth;
pub mod vxlan;
