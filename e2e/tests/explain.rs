//! `weft-agent explain --check` names each misconfiguration behind the
//! classic failures when it is injected into a node of the testbed, and says
//! whether it is in play for the connection explained. The agents are killed
//! first (their rules stay), so nothing repairs the node behind the test's back.

mod common;

use std::path::Path;

use common::{pod_testbed, root_or_skip, CMD_TIMEOUT};
use weft_e2e::agents::AGENT_BIN_ENV;
use weft_e2e::family::Family;
use weft_e2e::pods::find_binary;
use weft_e2e::Testbed;

fn sh(ns: &Path, argv: &[&str]) {
    let out = weft_e2e::exec_in(ns, argv, CMD_TIMEOUT).unwrap();
    assert!(out.status.success(), "{argv:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Starts the agents with `backend`, waits for them, then kills them (their
/// rules stay); returns `weft-agent explain --check` of x/a -> y/b:80 run in
/// node 1 with `extra` arguments.
fn explainer<'a>(tb: &'a Testbed, backend: &str, extra: &'a [&'a str]) -> impl Fn() -> String + 'a {
    tb.start_agents_with(&["--backend", backend]).unwrap();
    tb.wait_converged(std::time::Duration::from_secs(10)).unwrap();
    tb.kill_agent(1).unwrap();
    tb.kill_agent(2).unwrap();
    let n1 = tb.node_netns(1);
    let agent = find_binary("weft-agent", AGENT_BIN_ENV).unwrap().display().to_string();
    let source = format!("dir:{}", tb.cluster_dir().display());
    move || {
        let mut argv = vec![agent.as_str(), "explain", "--check", "--node", "node-1", "--source", &source];
        argv.extend(extra);
        argv.extend(["x/a", "y/b:80"]);
        let out = weft_e2e::exec_in(&n1, &argv, CMD_TIMEOUT).unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// (inject, undo, what explain names, whether in play for the connection).
type Case<'a> = (Vec<&'a str>, Vec<&'a str>, &'a str, bool);

/// Injects each case into node 1: explain names it, in play or not as said,
/// and nothing once it is undone.
fn each_is_named(n1: &Path, explain: impl Fn() -> String, cases: Vec<Case>) {
    for (inject, undo, named, in_play) in cases {
        sh(n1, &inject);
        let out = explain();
        let line = out
            .lines()
            .find(|l| l.contains(named))
            .unwrap_or_else(|| panic!("{inject:?}: not named:\n{out}"));
        let marker = if in_play { "IN PLAY:" } else { "also:" };
        assert!(line.trim_start().starts_with(marker), "{inject:?}: want {marker}\n{out}");
        sh(n1, &undo);
        assert!(
            explain().contains("nothing wrong found"),
            "{undo:?} did not restore the node:\n{}",
            explain()
        );
    }
}

#[test]
fn explain_names_each_injected_misconfiguration() {
    if !root_or_skip("explain_names_each_injected_misconfiguration") {
        return;
    }
    let mut tb = pod_testbed(2);
    let xa = tb.add_pod(1, "x/a").unwrap();
    tb.add_pod(2, "y/b").unwrap();
    let explain = explainer(&tb, "iptables", &["--cluster-cidr", "10.244.0.0/16"]);
    let n1 = tb.node_netns(1);
    let clean = explain();
    assert!(clean.contains("allowed") && clean.contains("checks on node-1: nothing wrong found"), "{clean}");

    let veth = xa.host_veth.clone().expect("the ADD result names the host veth");
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        (vec!["sysctl", "-qw", "net.ipv4.ip_forward=0"], vec!["sysctl", "-qw", "net.ipv4.ip_forward=1"],
         "net.ipv4.ip_forward is 0", true),
        (vec!["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0"], vec!["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"],
         "bridge-nf-call-iptables is 0", false),
        (vec!["bridge", "link", "set", "dev", &veth, "hairpin", "off"], vec!["bridge", "link", "set", "dev", &veth, "hairpin", "on"],
         "hairpin is off on bridge port", false),
        (vec!["iptables", "-I", "FORWARD", "1", "-j", "ACCEPT"], vec!["iptables", "-D", "FORWARD", "1"],
         "FORWARD jump is not first", true),
        (vec!["iptables", "-t", "nat", "-D", "POSTROUTING", "-j", "WEFT-POSTROUTING"], vec!["iptables", "-t", "nat", "-A", "POSTROUTING", "-j", "WEFT-POSTROUTING"],
         "masquerade rules (WEFT-POSTROUTING, or table inet weft-masq) are missing", false),
        (vec!["ipset", "create", "weft-stale", "hash:ip"], vec!["ipset", "destroy", "weft-stale"],
         "stale ipset weft-stale", false),
        (vec!["ip", "route", "del", "10.244.2.0/24"], vec!["ip", "route", "add", "10.244.2.0/24", "via", "172.31.0.12", "proto", "87"],
         "route to 10.244.2.0/24 via 172.31.0.12", true),
    ];
    each_is_named(&n1, &explain, cases);
    drop(explain);
    let st = tb.state();
    tb.down().unwrap();
    common::assert_gone(&st);
}

#[test]
fn explain_names_the_ipv6_misconfigurations_of_a_dual_node() {
    if !root_or_skip("explain_names_the_ipv6_misconfigurations_of_a_dual_node") {
        return;
    }
    let mut tb = Testbed::up_in(2, Family::Dual).unwrap();
    tb.set_weft_bin(common::weft_bin());
    tb.set_e2e_bin(common::bin());
    tb.add_pod(1, "x/a").unwrap();
    tb.add_pod(2, "y/b").unwrap();
    let explain = explainer(&tb, "nftables", &[]);
    let clean = explain();
    assert!(clean.contains("checks on node-1: nothing wrong found"), "{clean}");
    // IPv6 findings are never in play: the connection explained is IPv4.
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        (vec!["sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"], vec!["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"],
         "net.ipv6.conf.all.forwarding is 0", false),
        (vec!["sysctl", "-qw", "net.bridge.bridge-nf-call-ip6tables=0"], vec!["sysctl", "-qw", "net.bridge.bridge-nf-call-ip6tables=1"],
         "bridge-nf-call-ip6tables is 0", false),
        (vec!["ip", "-6", "route", "del", "fd00::af4:200/120"], vec!["ip", "-6", "route", "add", "fd00::af4:200/120", "via", "fd00::ac1f:c", "proto", "87"],
         "route to fd00::af4:200/120 via fd00::ac1f:c", false),
    ];
    each_is_named(&tb.node_netns(1), &explain, cases);
}
