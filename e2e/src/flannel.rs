//! A reproduction of the set-up seed 003 happened on (test scaffolding, like
//! `weave.rs`): flannel's VXLAN backend, made by hand in each node's netns as
//! flanneld makes it (device `flannel.1`, VNI 1, port 8472, the node's pod
//! CIDR's network address as a /32 on it, per other node a route `podCIDR via
//! <its network address> dev flannel.1 onlink`, a permanent neighbour and an
//! FDB entry to its InternalIP), with a kube-proxy that has no cluster CIDR,
//! so a node's own traffic to a ClusterIP is not masqueraded. Nothing here
//! routes pods' replies to a node's underlay address through the overlay.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::error::{E2eError, Result};
use crate::{exec_in, plan, Testbed};

/// flanneld's device name.
pub const DEVICE: &str = "flannel.1";
/// Bound on one command.
const CMD: Duration = Duration::from_secs(10);

/// Node `n`'s VTEP MAC in the reproduction (flanneld picks a random one and
/// publishes it in a Node annotation).
fn mac(n: u32) -> String {
    format!("02:46:0a:f4:{n:02x}:00")
}

/// Node `n`'s VTEP address: its pod CIDR's network address.
fn vtep(n: u32) -> Ipv4Addr {
    plan::pod_cidr(n).network()
}

/// The commands that make node `n` of `nodes` a flannel VXLAN node.
pub fn commands(n: u32, nodes: u32) -> Vec<Vec<String>> {
    let local = plan::node_addr(n).ip().to_string();
    let mut c: Vec<String> =
        ["ip", "link", "add", DEVICE, "type", "vxlan", "id", "1", "dstport", "8472"].map(String::from).into();
    c.extend(["local", &local, "dev", plan::HOST_IFNAME, "nolearning"].map(String::from));
    let mut out = vec![c];
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<String>>();
    let mtu = (plan::MTU - 50).to_string();
    out.push(s(&["ip", "link", "set", DEVICE, "address", &mac(n), "mtu", &mtu, "up"]));
    out.push(s(&["ip", "addr", "add", &format!("{}/32", vtep(n)), "dev", DEVICE]));
    for m in (1..=nodes).filter(|m| *m != n) {
        let (cidr, gw) = (plan::pod_cidr(m).to_string(), vtep(m).to_string());
        out.push(s(&["ip", "neigh", "replace", &gw, "lladdr", &mac(m), "dev", DEVICE, "nud", "permanent"]));
        let dst = plan::node_addr(m).ip().to_string();
        out.push(s(&["bridge", "fdb", "append", &mac(m), "dev", DEVICE, "dst", &dst, "self", "permanent"]));
        out.push(s(&["ip", "route", "replace", &cidr, "via", &gw, "dev", DEVICE, "onlink"]));
    }
    out
}

impl Testbed {
    /// Sets up the flannel reproduction on every node (its agents must not
    /// route: stopped, or never started). Not idempotent.
    pub fn set_up_flannel(&self) -> Result<()> {
        for n in 1..=self.nodes() {
            for argv in commands(n, self.nodes()) {
                let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                checked(self, n, &argv)?;
            }
        }
        Ok(())
    }

    /// Removes `flannel.1` from every node (its routes and entries go with it).
    pub fn tear_down_flannel(&self) -> Result<()> {
        (1..=self.nodes()).try_for_each(|n| checked(self, n, &["ip", "link", "del", DEVICE]))
    }

    /// Removes, in node `n`, kube-proxy's masquerade mark for traffic to a
    /// ClusterIP from outside the cluster CIDR, as a kube-proxy without
    /// `clusterCIDR` writes no such rule. Until the next `apply_services`.
    pub fn kube_proxy_without_cluster_cidr(&self, n: u32) -> Result<usize> {
        let out = exec_in(&self.node_netns(n), &["iptables", "-w", "5", "-t", "nat", "-S"], CMD)?;
        let rules: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| {
                l.starts_with("-A KUBE-SVC-") && l.contains(" ! -s ") && l.ends_with("-j KUBE-MARK-MASQ")
            })
            .map(str::to_string)
            .collect();
        for r in &rules {
            let mut argv = vec!["iptables", "-w", "5", "-t", "nat", "-D"];
            // -S prints comments quoted; `shell_words` keeps them one argument.
            let words = shell_words(&r["-A ".len()..]);
            argv.extend(words.iter().map(String::as_str));
            checked(self, n, &argv)?;
        }
        Ok(rules.len())
    }
}

/// Splits an `iptables -S` rule into arguments, honouring double quotes.
fn shell_words(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    for ch in line.chars() {
        match ch {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Runs `argv` in node `n`; its failure is an error.
fn checked(tb: &Testbed, n: u32, argv: &[&str]) -> Result<()> {
    let out = exec_in(&tb.node_netns(n), argv, CMD)?;
    if out.status.success() {
        return Ok(());
    }
    let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(E2eError::io(format!("{argv:?} in node {n}: {why}"))(std::io::ErrorKind::Other.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_1_of_2_as_flanneld_sets_it_up() {
        let lines: Vec<String> = commands(1, 2).iter().map(|c| c.join(" ")).collect();
        assert_eq!(
            lines,
            [
                "ip link add flannel.1 type vxlan id 1 dstport 8472 local 172.31.0.11 dev eth0 nolearning",
                "ip link set flannel.1 address 02:46:0a:f4:01:00 mtu 1450 up",
                "ip addr add 10.244.1.0/32 dev flannel.1",
                "ip neigh replace 10.244.2.0 lladdr 02:46:0a:f4:02:00 dev flannel.1 nud permanent",
                "bridge fdb append 02:46:0a:f4:02:00 dev flannel.1 dst 172.31.0.12 self permanent",
                "ip route replace 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink",
            ]
        );
    }

    #[test]
    fn iptables_rules_split_like_a_shell() {
        assert_eq!(
            shell_words(
                r#"KUBE-SVC-X ! -s 10.244.0.0/16 -m comment --comment "web/c:80/tcp cluster IP" -j KUBE-MARK-MASQ"#
            ),
            [
                "KUBE-SVC-X",
                "!",
                "-s",
                "10.244.0.0/16",
                "-m",
                "comment",
                "--comment",
                "web/c:80/tcp cluster IP",
                "-j",
                "KUBE-MARK-MASQ"
            ]
        );
    }
}
