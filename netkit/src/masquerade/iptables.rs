//! Masquerade with iptables, in the host's mode (legacy or nft).
//!
//! Design (see kubernetes pkg/proxy/iptables/proxier.go `syncProxyRules`): the
//! whole chain is built in memory as an iptables-restore payload and applied with
//! one `iptables-restore --noflush`; declaring `:CHAIN - [0:0]` flushes it, so a
//! re-apply replaces our rules and never duplicates them. The jump from the
//! built-in POSTROUTING chain is ensured separately with `-C || -A`, because a
//! restore that names POSTROUTING would replace the whole built-in chain.
//! IPv4 subnets go to iptables, IPv6 subnets to ip6tables.
//! Binaries are found by absolute path: a CNI plugin may run with an empty PATH.

use ipnetwork::IpNetwork;

use super::{plan, sanitize_comment, Step};
use crate::iptables_mode::IptablesMode;
use crate::kernel_error::KernelError;
use crate::tool;

/// The chain weft owns in the nat table.
pub const MASQ_CHAIN: &str = "WEFT-POSTROUTING";
/// iptables chain names must fit in 28 characters.
pub const MAX_CHAIN_LEN: usize = 28;
/// xt_comment keeps at most 255 bytes.
const MAX_COMMENT_LEN: usize = 255;

/// The iptables binaries of one mode (the plain names where the mode's own
/// are not installed, as on hosts with a single iptables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub Option<IptablesMode>);

impl Mode {
    fn bin(self, base: &str) -> String {
        crate::iptables_mode::tool_in(self.0, base)
    }
}

/// IPv4 or IPv6, i.e. iptables or ip6tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn of(net: &IpNetwork) -> Family {
        if net.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
    fn base(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

/// Renders the iptables-restore file for `chain`: per pod subnet, RETURN for
/// traffic to the cluster (and to the subnet itself when the cluster CIDR does not
/// cover it), then MASQUERADE for everything else but multicast. Pass subnets of
/// one family; the `cluster_cidrs` of the other family are ignored.
pub fn masquerade_payload(
    chain: &str,
    pod_subnets: &[IpNetwork],
    cluster_cidrs: &[IpNetwork],
    comment: &str,
) -> String {
    let mut out = vec!["*nat".to_string(), format!(":{chain} - [0:0]")];
    for rule in chain_rules(pod_subnets, cluster_cidrs, comment) {
        out.push(format!("-A {chain} {}", payload_args(&rule)));
    }
    out.push("COMMIT".into());
    out.join("\n") + "\n"
}

/// The rules of the chain in order (`super::plan`), each as the arguments
/// after `-A CHAIN`, so the restore payload and the `-C` presence check can
/// never disagree. The comment is one (sanitized, unquoted) argument.
fn chain_rules(pod_subnets: &[IpNetwork], cluster_cidrs: &[IpNetwork], comment: &str) -> Vec<Vec<String>> {
    let comment = sanitize_comment(comment, MAX_COMMENT_LEN);
    let rule = |head: &[&str], verdict: &str| {
        let mut r: Vec<String> = head.iter().map(|a| a.to_string()).collect();
        r.extend(["-m", "comment", "--comment", &comment, "-j", verdict].map(String::from));
        r
    };
    plan(pod_subnets, cluster_cidrs)
        .into_iter()
        .map(|step| match step {
            Step::Return { src, dst } => rule(&["-s", &src.to_string(), "-d", &dst.to_string()], "RETURN"),
            Step::Masquerade { src, except } => {
                rule(&["-s", &src.to_string(), "!", "-d", &except.to_string()], "MASQUERADE")
            }
        })
        .collect()
}

/// Joins rule arguments for a restore payload, double-quoting the comment (which
/// may hold spaces; `sanitize_comment` removed quotes and backslashes).
fn payload_args(rule: &[String]) -> String {
    let mut out = Vec::with_capacity(rule.len());
    let mut quote_next = false;
    for arg in rule {
        out.push(if quote_next { format!("\"{arg}\"") } else { arg.clone() });
        quote_next = arg == "--comment";
    }
    out.join(" ")
}

/// Idempotently installs chain `MASQ_CHAIN` with the rules of `masquerade_payload`
/// and the single jump to it from nat POSTROUTING, for each family in `pod_subnets`.
pub fn ensure(
    mode: Mode,
    pod_subnets: &[IpNetwork],
    cluster_cidrs: &[IpNetwork],
    comment: &str,
) -> Result<(), KernelError> {
    let chain = MASQ_CHAIN;
    check_chain(chain)?;
    for (family, subs) in by_family(pod_subnets) {
        let payload = masquerade_payload(chain, &subs, cluster_cidrs, comment);
        restore(mode, family, &payload)?;
        ensure_jump(mode, family, chain)?;
    }
    Ok(())
}

/// `subnets` split by family, leaving out a family with none.
fn by_family(subnets: &[IpNetwork]) -> impl Iterator<Item = (Family, Vec<IpNetwork>)> + '_ {
    [Family::V4, Family::V6].into_iter().filter_map(|family| {
        let subs: Vec<IpNetwork> = subnets.iter().copied().filter(|s| Family::of(s) == family).collect();
        (!subs.is_empty()).then_some((family, subs))
    })
}

/// Whether everything `ensure_masquerade` would install is in place: the jump
/// from nat POSTROUTING and every rule of the chain, per family, checked with
/// `iptables -C` (no full dump of the nat table, which may hold thousands of
/// kube-proxy rules). Rule order and foreign extra rules in the chain are not
/// checked. Lets a caller that re-asserts the rule periodically skip the restore.
pub fn present(
    mode: Mode,
    pod_subnets: &[IpNetwork],
    cluster_cidrs: &[IpNetwork],
    comment: &str,
) -> Result<bool, KernelError> {
    let chain = MASQ_CHAIN;
    check_chain(chain)?;
    for (family, subs) in by_family(pod_subnets) {
        if !jump_exists(mode, family, chain)? {
            return Ok(false);
        }
        for rule in chain_rules(&subs, cluster_cidrs, comment) {
            let mut args = vec!["-w", "5", "-t", "nat", "-C", chain];
            args.extend(rule.iter().map(String::as_str));
            if !rule_exists(mode, family, &args)? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Removes the jump(s) to `MASQ_CHAIN` and the chain itself in both families; absent rules, chains and
/// a missing ip6tables count as done. Carries on after an error and returns the first.
pub fn teardown(mode: Mode) -> Result<(), KernelError> {
    let chain = MASQ_CHAIN;
    let mut first_err = None;
    for family in [Family::V4, Family::V6] {
        let res = match tool::find_tool(&mode.bin(&format!("{}-restore", family.base()))) {
            Err(_) if family == Family::V6 => continue,
            Err(e) => Err(e),
            Ok(_) => teardown_family(mode, family, chain),
        };
        if let Err(e) = res {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// One listing, then (if anything of weft's is there) one atomic restore
/// that deletes every jump (duplicates left by hand too) and the chain. A
/// mode that cannot list a nat table holds nothing of weft's; nothing is
/// written where nothing is, so no table is created in a mode the host does
/// not use.
fn teardown_family(mode: Mode, family: Family, chain: &str) -> Result<(), KernelError> {
    let Ok(listed) = tool::output(&mode.bin(family.base()), &["-w", "5", "-t", "nat", "-S"], None) else {
        return Ok(());
    };
    let jump = format!("-A POSTROUTING -j {chain}");
    let jumps = listed.lines().filter(|l| *l == jump).count();
    let declared = listed.lines().any(|l| l == format!("-N {chain}"));
    if jumps == 0 && !declared {
        return Ok(());
    }
    let mut payload = String::from("*nat\n");
    for _ in 0..jumps {
        payload += &format!("-D POSTROUTING -j {chain}\n");
    }
    payload += &format!(":{chain} - [0:0]\n-X {chain}\nCOMMIT\n");
    restore(mode, family, &payload)
}

fn jump_exists(mode: Mode, family: Family, chain: &str) -> Result<bool, KernelError> {
    rule_exists(mode, family, &["-w", "5", "-t", "nat", "-C", "POSTROUTING", "-j", chain])
}

/// Runs a `-C` command line; exit codes: 0 present, 1 no such rule, 2 no such chain.
fn rule_exists(mode: Mode, family: Family, args: &[&str]) -> Result<bool, KernelError> {
    tool::check(&mode.bin(family.base()), args)
}

fn ensure_jump(mode: Mode, family: Family, chain: &str) -> Result<(), KernelError> {
    if !jump_exists(mode, family, chain)? {
        let args = ["-w", "5", "-t", "nat", "-A", "POSTROUTING", "-j", chain];
        tool::run(&mode.bin(family.base()), &args, None)?;
    }
    Ok(())
}

fn restore(mode: Mode, family: Family, payload: &str) -> Result<(), KernelError> {
    tool::restore(&mode.bin(&format!("{}-restore", family.base())), &["--noflush", "-w", "5"], payload)
}

/// Chain names are limited to 28 characters; enforced here and only here.
fn check_chain(chain: &str) -> Result<(), KernelError> {
    if chain.len() > MAX_CHAIN_LEN {
        return Err(KernelError::NameTooLong { name: chain.into() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn payload_golden_with_cluster_cidr() {
        let got = masquerade_payload(
            MASQ_CHAIN,
            &[net("10.244.1.7/24")],
            &[net("10.244.0.0/16")],
            "weft node masquerade",
        );
        let want = "\
*nat
:WEFT-POSTROUTING - [0:0]
-A WEFT-POSTROUTING -s 10.244.1.0/24 -d 10.244.0.0/16 -m comment --comment \"weft node masquerade\" -j RETURN
-A WEFT-POSTROUTING -s 10.244.1.0/24 ! -d 224.0.0.0/4 -m comment --comment \"weft node masquerade\" -j MASQUERADE
COMMIT
";
        assert_eq!(got, want);
    }

    #[test]
    fn payload_golden_without_cluster_cidr_returns_own_subnet() {
        let got = masquerade_payload("WEFT-X", &[net("10.1.0.0/24"), net("10.2.0.0/24")], &[], "c");
        let want = "\
*nat
:WEFT-X - [0:0]
-A WEFT-X -s 10.1.0.0/24 -d 10.1.0.0/24 -m comment --comment \"c\" -j RETURN
-A WEFT-X -s 10.1.0.0/24 ! -d 224.0.0.0/4 -m comment --comment \"c\" -j MASQUERADE
-A WEFT-X -s 10.2.0.0/24 -d 10.2.0.0/24 -m comment --comment \"c\" -j RETURN
-A WEFT-X -s 10.2.0.0/24 ! -d 224.0.0.0/4 -m comment --comment \"c\" -j MASQUERADE
COMMIT
";
        assert_eq!(got, want);
    }

    #[test]
    fn payload_v6_and_foreign_family_cluster_cidr() {
        let got = masquerade_payload(MASQ_CHAIN, &[net("fd00:10:244:1::/64")], &[net("10.244.0.0/16")], "c");
        let want = "\
*nat
:WEFT-POSTROUTING - [0:0]
-A WEFT-POSTROUTING -s fd00:10:244:1::/64 -d fd00:10:244:1::/64 -m comment --comment \"c\" -j RETURN
-A WEFT-POSTROUTING -s fd00:10:244:1::/64 ! -d ff00::/8 -m comment --comment \"c\" -j MASQUERADE
COMMIT
";
        assert_eq!(got, want);
    }

    #[test]
    fn payload_empty_still_declares_chain() {
        assert_eq!(
            masquerade_payload(MASQ_CHAIN, &[], &[], "c"),
            "*nat\n:WEFT-POSTROUTING - [0:0]\nCOMMIT\n"
        );
    }

    #[test]
    fn check_rules_are_the_payload_rules_unquoted() {
        let subs = [net("10.244.1.7/24")];
        let rules = chain_rules(&subs, &[net("10.244.0.0/16")], "weft \"node\" masq");
        assert_eq!(
            rules[0],
            ["-s", "10.244.1.0/24", "-d", "10.244.0.0/16", "-m", "comment", "--comment", "weft node masq"]
                .into_iter()
                .chain(["-j", "RETURN"])
                .collect::<Vec<_>>()
        );
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[1][..4], ["-s", "10.244.1.0/24", "!", "-d"]);
        // Every -A line of the payload is exactly one rule, in the same order.
        let payload = masquerade_payload("C", &subs, &[net("10.244.0.0/16")], "weft \"node\" masq");
        let lines: Vec<String> =
            payload.lines().filter_map(|l| l.strip_prefix("-A C ")).map(String::from).collect();
        assert_eq!(lines, rules.iter().map(|r| payload_args(r)).collect::<Vec<_>>());
        assert!(lines[0].contains("--comment \"weft node masq\" -j RETURN"), "{lines:?}");
    }

    #[test]
    fn chain_length_limit() {
        assert!(check_chain(&"W".repeat(28)).is_ok());
        assert!(matches!(check_chain(&"W".repeat(29)), Err(KernelError::NameTooLong { .. })));
    }
}
