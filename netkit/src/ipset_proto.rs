//! The ipset netlink protocol's numbers that both the listing
//! (`ipset_list`) and the writes (`ipset_write`) use, and the protocol
//! names of members: include/uapi/linux/netfilter/ipset/ip_set.h.

pub(crate) const NFNL_SUBSYS_IPSET: u16 = 6;
pub(crate) const IPSET_PROTOCOL: u8 = 7;
// Command-level attributes.
pub(crate) const IPSET_ATTR_PROTOCOL: u16 = 1;
pub(crate) const IPSET_ATTR_SETNAME: u16 = 2;
pub(crate) const IPSET_ATTR_DATA: u16 = 7;
pub(crate) const IPSET_ATTR_ADT: u16 = 8;
// A member's attributes (inside IPSET_ATTR_DATA).
pub(crate) const IPSET_ATTR_IP: u16 = 1;
pub(crate) const IPSET_ATTR_CIDR: u16 = 3;
pub(crate) const IPSET_ATTR_PORT: u16 = 4;
pub(crate) const IPSET_ATTR_PROTO: u16 = 7;
pub(crate) const IPSET_ATTR_IP2: u16 = 20;
pub(crate) const IPSET_ATTR_CIDR2: u16 = 21;
// Inside an address nest.
pub(crate) const IPSET_ATTR_IPADDR_IPV4: u16 = 1;
pub(crate) const IPSET_ATTR_IPADDR_IPV6: u16 = 2;

/// The protocols of weft's port members, as `ipset save` names them.
pub(crate) const PROTOCOLS: [(&str, u8); 3] = [("tcp", 6), ("udp", 17), ("sctp", 132)];
