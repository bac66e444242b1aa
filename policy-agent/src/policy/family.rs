//! IPv4 and IPv6 as one interface for the compiler and the IR: every policy
//! compiles once per family, from the pods' addresses and the ipBlocks of
//! that family only, so an IPv4 block never matches IPv6 traffic (nor the
//! reverse) and a rule whose peers have no address of a family allows
//! nothing in it.

use std::fmt::{Debug, Display};
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::Serialize;

use crate::model::{Node, Pod};

/// An address family, implemented by its address type.
pub trait Family:
    Copy + Ord + Hash + Debug + Display + Serialize + Send + Sync + Into<IpAddr> + 'static
{
    /// A network of the family.
    type Net: Copy + Ord + Hash + Debug + Display + Serialize + Send + Sync + Into<IpNetwork> + 'static;

    /// Address width in bits.
    const BITS: u8;
    /// "IPv4" or "IPv6", for messages.
    const NAME: &'static str;

    /// `pod`'s address of this family.
    fn of_pod(pod: &Pod) -> Option<Self>;
    /// `node`'s pod CIDR of this family.
    fn pod_cidr(node: &Node) -> Option<Self::Net>;
    /// `ip` if it is of this family.
    fn of_ip(ip: IpAddr) -> Option<Self>;
    /// `net` if it is of this family.
    fn of_net(net: IpNetwork) -> Option<Self::Net>;

    /// The address as an integer (IPv4 in the low 32 bits).
    fn as_u128(self) -> u128;
    fn from_u128(bits: u128) -> Self;
    /// The network `addr`/`prefix` (host bits cleared); None for a prefix
    /// longer than `BITS`.
    fn net(addr: Self, prefix: u8) -> Option<Self::Net>;
    /// A network's first address.
    fn network(net: Self::Net) -> Self;
    fn prefix(net: Self::Net) -> u8;
}

/// `addr` as a network of one address.
pub fn host<A: Family>(addr: A) -> A::Net {
    // A prefix of BITS is always valid.
    A::net(addr, A::BITS).expect("a host prefix is valid")
}

/// The whole address space of the family: a rule without peers.
pub fn anywhere<A: Family>() -> A::Net {
    A::net(A::from_u128(0), 0).expect("prefix 0 is valid")
}

/// True if `net` holds `addr`.
pub fn contains<A: Family>(net: A::Net, addr: A) -> bool {
    let p = A::prefix(net);
    p == 0 || (A::network(net).as_u128() ^ addr.as_u128()) >> (A::BITS - p) == 0
}

/// The mask of the host bits of a `prefix` network.
fn host_bits<A: Family>(prefix: u8) -> u128 {
    let width = u32::from(A::BITS - prefix.min(A::BITS));
    if width == 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    }
}

impl Family for Ipv4Addr {
    type Net = Ipv4Network;
    const BITS: u8 = 32;
    const NAME: &'static str = "IPv4";

    fn of_pod(pod: &Pod) -> Option<Self> {
        pod.ip
    }
    fn pod_cidr(node: &Node) -> Option<Ipv4Network> {
        node.pod_cidr
    }
    fn of_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }
    }
    fn of_net(net: IpNetwork) -> Option<Ipv4Network> {
        match net {
            IpNetwork::V4(n) => Some(n),
            IpNetwork::V6(_) => None,
        }
    }
    fn as_u128(self) -> u128 {
        u128::from(u32::from(self))
    }
    fn from_u128(bits: u128) -> Self {
        // Only the low 32 bits are an IPv4 address.
        Ipv4Addr::from(bits as u32)
    }
    fn net(addr: Self, prefix: u8) -> Option<Ipv4Network> {
        let bits = addr.as_u128() & !host_bits::<Self>(prefix);
        Ipv4Network::new(Self::from_u128(bits), prefix).ok()
    }
    fn network(net: Ipv4Network) -> Self {
        net.network()
    }
    fn prefix(net: Ipv4Network) -> u8 {
        net.prefix()
    }
}

impl Family for Ipv6Addr {
    type Net = Ipv6Network;
    const BITS: u8 = 128;
    const NAME: &'static str = "IPv6";

    fn of_pod(pod: &Pod) -> Option<Self> {
        pod.ip6
    }
    fn pod_cidr(node: &Node) -> Option<Ipv6Network> {
        node.pod_cidr6
    }
    fn of_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        }
    }
    fn of_net(net: IpNetwork) -> Option<Ipv6Network> {
        match net {
            IpNetwork::V6(n) => Some(n),
            IpNetwork::V4(_) => None,
        }
    }
    fn as_u128(self) -> u128 {
        u128::from(self)
    }
    fn from_u128(bits: u128) -> Self {
        Ipv6Addr::from(bits)
    }
    fn net(addr: Self, prefix: u8) -> Option<Ipv6Network> {
        let bits = addr.as_u128() & !host_bits::<Self>(prefix);
        Ipv6Network::new(Self::from_u128(bits), prefix).ok()
    }
    fn network(net: Ipv6Network) -> Self {
        net.network()
    }
    fn prefix(net: Ipv6Network) -> u8 {
        net.prefix()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_and_membership_in_both_families() {
        let n4 = <Ipv4Addr as Family>::net("10.244.1.7".parse().unwrap(), 24).unwrap();
        assert_eq!(n4, "10.244.1.0/24".parse().unwrap(), "host bits cleared");
        assert!(contains(n4, Ipv4Addr::new(10, 244, 1, 255)));
        assert!(!contains(n4, Ipv4Addr::new(10, 244, 2, 0)));
        assert!(contains(anywhere::<Ipv4Addr>(), Ipv4Addr::BROADCAST));
        assert_eq!(host(Ipv4Addr::new(1, 2, 3, 4)), "1.2.3.4/32".parse().unwrap());
        let n6 = <Ipv6Addr as Family>::net("fd00:244:1::7".parse().unwrap(), 64).unwrap();
        assert_eq!(n6, "fd00:244:1::/64".parse().unwrap());
        assert!(contains(n6, "fd00:244:1::ffff".parse::<Ipv6Addr>().unwrap()));
        assert!(!contains(n6, "fd00:244:2::1".parse::<Ipv6Addr>().unwrap()));
        assert!(contains(anywhere::<Ipv6Addr>(), Ipv6Addr::LOCALHOST));
        assert_eq!(host("fd00::1".parse::<Ipv6Addr>().unwrap()), "fd00::1/128".parse().unwrap());
        assert!(<Ipv6Addr as Family>::net(Ipv6Addr::UNSPECIFIED, 129).is_none());
        let ip4: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!((Ipv4Addr::of_ip(ip4).is_some(), Ipv6Addr::of_ip(ip4).is_some()), (true, false));
    }
}
