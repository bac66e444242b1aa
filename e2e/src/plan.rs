//! The run name and the fixed address plan (the conformance cases rely on it): lan
//! 172.31.0.0/24, node N at 172.31.0.(10+N) with pod CIDR 10.244.N.0/24, the
//! external client at 172.31.0.100. Pure functions, no I/O except the random name.

use std::io::Read;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use crate::error::{E2eError, Result};

/// Longest run name: `<run>-n89` must fit in an interface name (15 bytes).
pub const MAX_RUN_LEN: usize = 8;
/// Most nodes: node N sits at 172.31.0.(10+N), below the external client at .100.
pub const MAX_NODES: u32 = 89;
/// Prefix length of the lan.
pub const LAN_PREFIX: u8 = 24;
/// MTU of every testbed link.
pub const MTU: u32 = 1500;
/// The interface name of a host's lan link inside its own netns.
pub const HOST_IFNAME: &str = "eth0";

/// Checks a run name: 1..=8 chars of [a-z0-9], starting with a letter.
pub fn check_run_name(name: &str) -> Result<()> {
    let bad = |why| Err(E2eError::InvalidRunName { name: name.into(), why });
    if name.is_empty() || name.len() > MAX_RUN_LEN {
        return bad("must be 1 to 8 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        return bad("only a-z and 0-9 are allowed");
    }
    if !name.as_bytes()[0].is_ascii_lowercase() {
        return bad("must start with a letter");
    }
    Ok(())
}

/// Checks a node count against the address plan.
pub fn check_nodes(nodes: u32) -> Result<()> {
    if nodes == 0 || nodes > MAX_NODES {
        return Err(E2eError::InvalidNodeCount { nodes, max: MAX_NODES });
    }
    Ok(())
}

/// A fresh run name: `wt` + 4 random hex chars.
pub fn random_run_name() -> Result<String> {
    let mut b = [0u8; 2];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(E2eError::io("read /dev/urandom"))?;
    Ok(format!("wt{:02x}{:02x}", b[0], b[1]))
}

/// The lan netns (and the bridge inside it): `<run>-lan`.
pub fn lan_name(run: &str) -> String {
    format!("{run}-lan")
}

/// Node `n`'s netns (and its port on the lan bridge): `<run>-n<n>`.
pub fn node_name(run: &str, n: u32) -> String {
    format!("{run}-n{n}")
}

/// The external client's netns (and its port on the lan bridge): `<run>-ext`.
pub fn ext_name(run: &str) -> String {
    format!("{run}-ext")
}

/// Node `n`'s lan address, 172.31.0.(10+n)/24.
pub fn node_addr(n: u32) -> Ipv4Network {
    lan_addr(10 + n as u8)
}

/// The external client's lan address, 172.31.0.100/24.
pub fn ext_addr() -> Ipv4Network {
    lan_addr(100)
}

/// Node `n`'s pod CIDR, 10.244.n.0/24.
pub fn pod_cidr(n: u32) -> Ipv4Network {
    Ipv4Network::new(Ipv4Addr::new(10, 244, n as u8, 0), 24).expect("/24 is a valid prefix")
}

fn lan_addr(host: u8) -> Ipv4Network {
    Ipv4Network::new(Ipv4Addr::new(172, 31, 0, host), LAN_PREFIX).expect("/24 is a valid prefix")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_names() {
        for ok in ["wt1a2b", "a", "abcdefgh", "x9"] {
            assert!(check_run_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "abcdefghi", "Wt12", "wt-1", "9abc", "wt_1", "wt 1", "wt/1"] {
            assert!(check_run_name(bad).is_err(), "{bad}");
        }
        let r = random_run_name().unwrap();
        check_run_name(&r).unwrap();
        assert!(r.starts_with("wt") && r.len() == 6);
    }

    #[test]
    fn names_fit_an_ifname() {
        let run = "abcdefgh";
        for name in [lan_name(run), node_name(run, MAX_NODES), ext_name(run)] {
            weft_netkit::link::check_ifname(&name).unwrap();
        }
    }

    #[test]
    fn address_plan() {
        assert_eq!(node_addr(1).to_string(), "172.31.0.11/24");
        assert_eq!(node_addr(MAX_NODES).to_string(), "172.31.0.99/24");
        assert_eq!(ext_addr().to_string(), "172.31.0.100/24");
        assert_eq!(pod_cidr(2).to_string(), "10.244.2.0/24");
        assert!(check_nodes(0).is_err() && check_nodes(MAX_NODES + 1).is_err());
        assert!(check_nodes(1).is_ok() && check_nodes(MAX_NODES).is_ok());
    }
}
