//! What the underlay lets through. By default the lan bridge forwards every
//! frame: one L2 segment that carries pod addresses, as host-gw needs.
//! `set_anti_spoofing(true)` makes it drop IPv4 frames whose source or
//! destination is neither a node nor the external client, as clouds'
//! source/destination checks, anti-spoofing switches and routed underlays do:
//! one nftables bridge table in the lan netns (never the root one), with a
//! counter of what it dropped. VXLAN crosses it (node to node); host-gw does not.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::error::{E2eError, Result};
use crate::{command_in, exec_command, Testbed};

/// The lan netns's table.
pub const TABLE: &str = "weft-e2e-underlay";
/// Bound on one nft command.
const NFT_TIMEOUT: Duration = Duration::from_secs(10);

/// The table (replacing any earlier one in the same transaction) that lets
/// IPv4 through only between `hosts`, and ARP; other IPv4 frames are counted
/// and dropped, IPv6 dropped.
pub fn ruleset(hosts: &[Ipv4Addr]) -> String {
    let set: Vec<String> = hosts.iter().map(Ipv4Addr::to_string).collect();
    let set = set.join(", ");
    format!(
        "table bridge {TABLE}\ndelete table bridge {TABLE}\ntable bridge {TABLE} {{\n\
         \tcounter spoofed {{ }}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority 0; policy accept;\n\
         \t\tether type arp accept\n\
         \t\tether type ip ip saddr {{ {set} }} ip daddr {{ {set} }} accept\n\
         \t\tether type ip counter name spoofed drop\n\
         \t\tether type ip6 drop\n\
         \t}}\n}}\n"
    )
}

/// The packet count in `nft list counter` output.
pub fn parse_counter(listing: &str) -> Option<u64> {
    let mut words = listing.split_whitespace();
    words.find(|w| *w == "packets")?;
    words.next()?.parse().ok()
}

impl Testbed {
    /// Turns the lan's anti-spoofing on (nodes and the external client only)
    /// or off; idempotent.
    pub fn set_anti_spoofing(&self, on: bool) -> Result<()> {
        let st = self.state();
        let mut hosts: Vec<Ipv4Addr> = st.nodes.iter().map(|h| h.lan_addr.ip()).collect();
        hosts.push(st.ext.lan_addr.ip());
        let script = match on {
            true => ruleset(&hosts),
            false => format!("table bridge {TABLE}\ndelete table bridge {TABLE}\n"),
        };
        self.lan_nft(&["-f", "-"], Some(&script)).map(drop)
    }

    /// IPv4 frames the anti-spoofing lan has dropped so far.
    pub fn underlay_drops(&self) -> Result<u64> {
        let out = self.lan_nft(&["list", "counter", "bridge", TABLE, "spoofed"], None)?;
        parse_counter(&out).ok_or_else(|| {
            E2eError::io(format!("no packet count in {out:?}"))(std::io::ErrorKind::InvalidData.into())
        })
    }

    /// Pods added from now on are attached with `mtu` (None: the plugin's
    /// default), as the conflist of an overlay's agent says.
    pub fn set_pod_mtu(&self, mtu: Option<u32>) -> Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.pod_mtu = mtu;
        crate::run::save(&st)
    }

    /// Runs `nft ARGS` in the lan netns (with `stdin`); its stdout.
    fn lan_nft(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let mut argv = vec!["nft"];
        argv.extend(args);
        let c = command_in(&self.lan_netns(), &argv)?;
        let what = format!("{argv:?} in the lan");
        let out = exec_command(c, &what, stdin.map(str::as_bytes), NFT_TIMEOUT)?;
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(E2eError::io(format!("{what}: {why}"))(std::io::ErrorKind::Other.into()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_lets_only_hosts_through() {
        let r = ruleset(&[Ipv4Addr::new(172, 31, 0, 11), Ipv4Addr::new(172, 31, 0, 100)]);
        assert!(
            r.starts_with("table bridge weft-e2e-underlay\ndelete table bridge weft-e2e-underlay\n"),
            "{r}"
        );
        assert!(
            r.contains(
                "ip saddr { 172.31.0.11, 172.31.0.100 } ip daddr { 172.31.0.11, 172.31.0.100 } accept"
            ),
            "{r}"
        );
        assert!(r.contains("ether type ip counter name spoofed drop"), "{r}");
    }

    #[test]
    fn counters_parse() {
        let listing =
            "table bridge weft-e2e-underlay {\n\tcounter spoofed {\n\t\tpackets 7 bytes 420\n\t}\n}\n";
        assert_eq!(parse_counter(listing), Some(7));
        assert_eq!(parse_counter("nothing"), None);
    }
}
