//! Masquerade with nftables: table `inet weft-masq`, one nat chain on the
//! postrouting hook at srcnat priority (where iptables' nat POSTROUTING
//! runs), its rules from `super::plan`. The table is replaced whole in one
//! `nft -f` transaction, so a re-apply never duplicates a rule and no packet
//! sees half of it. A table of its own: the policy backend's `inet weft`
//! table is replaced independently.

use ipnetwork::IpNetwork;

use super::{plan, sanitize_comment, Step};
use crate::kernel_error::KernelError;
use crate::tool;

/// weft's masquerade table (family inet).
pub const TABLE: &str = "weft-masq";
/// nft keeps at most 128 bytes of a rule's comment.
const MAX_COMMENT_LEN: usize = 127;

/// The chain's rules, as `nft list` prints them.
fn rules(pod_subnets: &[IpNetwork], cluster_cidrs: &[IpNetwork], comment: &str) -> Vec<String> {
    let comment = sanitize_comment(comment, MAX_COMMENT_LEN);
    let ip = |n: &IpNetwork| if n.is_ipv4() { "ip" } else { "ip6" };
    plan(pod_subnets, cluster_cidrs)
        .into_iter()
        .map(|step| match step {
            Step::Return { src, dst } => {
                format!("{p} saddr {src} {p} daddr {dst} return comment \"{comment}\"", p = ip(&src))
            }
            Step::Masquerade { src, except } => {
                format!(
                    "{p} saddr {src} {p} daddr != {except} masquerade comment \"{comment}\"",
                    p = ip(&src)
                )
            }
        })
        .collect()
}

/// The `nft -f` transaction that makes the table hold exactly these rules:
/// add (so the delete cannot fail), delete, add with the chain.
pub fn payload(pod_subnets: &[IpNetwork], cluster_cidrs: &[IpNetwork], comment: &str) -> String {
    let mut out = format!("table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n");
    out += "\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n";
    for r in rules(pod_subnets, cluster_cidrs, comment) {
        out += &format!("\t\t{r}\n");
    }
    out + "\t}\n}\n"
}

/// Installs the table for `pod_subnets`, replacing what it held.
pub fn ensure(
    pod_subnets: &[IpNetwork],
    cluster_cidrs: &[IpNetwork],
    comment: &str,
) -> Result<(), KernelError> {
    tool::restore("nft", &["-f", "-"], &payload(pod_subnets, cluster_cidrs, comment))
}

/// Whether the table holds every rule `ensure` would write (one listing).
pub fn present(
    pod_subnets: &[IpNetwork],
    cluster_cidrs: &[IpNetwork],
    comment: &str,
) -> Result<bool, KernelError> {
    if !table_exists()? {
        return Ok(false);
    }
    let listed = tool::output("nft", &["list", "table", "inet", TABLE], None)?;
    let listed: Vec<&str> = listed.lines().map(str::trim).collect();
    Ok(rules(pod_subnets, cluster_cidrs, comment).iter().all(|r| listed.contains(&r.as_str())))
}

/// Deletes the table if it exists; without `nft` there is none.
pub fn teardown() -> Result<(), KernelError> {
    if tool::find_tool("nft").is_err() || !table_exists()? {
        return Ok(());
    }
    tool::run("nft", &["delete", "table", "inet", TABLE], None)
}

fn table_exists() -> Result<bool, KernelError> {
    let tables = tool::output("nft", &["list", "tables", "inet"], None)?;
    Ok(tables.lines().any(|l| l.trim() == format!("table inet {TABLE}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn payload_golden() {
        let got = payload(&[net("10.244.1.7/24"), net("fd00:1::/64")], &[net("10.244.0.0/16")], "weft \"x\"");
        let want = "\
table inet weft-masq
delete table inet weft-masq
table inet weft-masq {
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return comment \"weft x\"
\t\tip saddr 10.244.1.0/24 ip daddr != 224.0.0.0/4 masquerade comment \"weft x\"
\t\tip6 saddr fd00:1::/64 ip6 daddr fd00:1::/64 return comment \"weft x\"
\t\tip6 saddr fd00:1::/64 ip6 daddr != ff00::/8 masquerade comment \"weft x\"
\t}
}
";
        assert_eq!(got, want);
    }
}
