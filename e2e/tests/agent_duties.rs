//! weft-agent's node duties, end to end, on nodes without pods (so the plugin's
//! ADD never ran and everything seen is the agent's doing): at start it turns
//! ip_forward on (a later flip is reported, not fought); with --cluster-cidr it
//! owns the node's masquerade chain, re-asserts a jump or rules deleted by hand
//! within a resync, skips the restore while they are intact, and removes them
//! on SIGTERM with --cleanup-on-exit. The root namespace is only read.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{assert_gone, root_or_skip, CMD_TIMEOUT};

/// Bound on the agents applying the cluster dir (they poll every 100 ms).
const CONVERGE: Duration = Duration::from_secs(10);
/// Bound on a repair: start_agents passes --resync-ms 500.
const RESYNC: Duration = Duration::from_secs(5);
const JUMP: &str = "-A POSTROUTING -j WEFT-POSTROUTING";

/// Runs `argv` in the netns at `ns`, asserts success, returns stdout.
fn sh(ns: &Path, argv: &[&str]) -> String {
    let out = weft_e2e::exec_in(ns, argv, CMD_TIMEOUT).unwrap();
    assert!(out.status.success(), "{argv:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The nat table of the netns at `ns`, rule and chain lines only.
fn nat(ns: &Path) -> Vec<String> {
    sh(ns, &["iptables-save", "-t", "nat"])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(String::from)
        .collect()
}

fn weft_lines(ns: &Path) -> Vec<String> {
    nat(ns).into_iter().filter(|l| l.contains("WEFT-POSTROUTING")).collect()
}

fn ip_forward(ns: &Path) -> String {
    sh(ns, &["sysctl", "-n", "net.ipv4.ip_forward"]).trim().to_string()
}

/// Asserts that node `ns`'s nat table holds exactly weft's chain for `pod_cidr`
/// (RETURN to the cluster, then MASQUERADE) and one jump to it.
fn assert_masquerade(ns: &Path, pod_cidr: &str) {
    let lines = weft_lines(ns);
    let rules: Vec<&String> = lines.iter().filter(|l| l.starts_with("-A WEFT-POSTROUTING ")).collect();
    assert_eq!(rules.len(), 2, "{lines:#?}");
    let ret = format!("-A WEFT-POSTROUTING -s {pod_cidr} -d 10.244.0.0/16 ");
    assert!(rules[0].starts_with(&ret) && rules[0].ends_with("-j RETURN"), "{lines:#?}");
    let masq = format!("-A WEFT-POSTROUTING -s {pod_cidr} ! -d 224.0.0.0/4 ");
    assert!(rules[1].starts_with(&masq) && rules[1].ends_with("-j MASQUERADE"), "{lines:#?}");
    assert!(rules.iter().all(|r| r.contains("--comment weft ")), "{lines:#?}");
    assert!(lines.iter().any(|l| l.starts_with(":WEFT-POSTROUTING ")), "{lines:#?}");
    assert_eq!(lines.iter().filter(|l| *l == JUMP).count(), 1, "{lines:#?}");
}

/// The root namespace, read only: its nat table has no weft chain.
fn assert_root_has_no_weft_chain() {
    let out = std::process::Command::new("iptables-save").args(["-t", "nat"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("WEFT-POSTROUTING"), "weft's chain in the root netns:\n{text}");
}

#[test]
fn agent_turns_forwarding_on_and_owns_the_masquerade_rule() {
    if !root_or_skip("agent_turns_forwarding_on_and_owns_the_masquerade_rule") {
        return;
    }
    let root_fwd = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let tb = weft_e2e::Testbed::up(2).unwrap();
    let (n1, n2) = (tb.node_netns(1), tb.node_netns(2));
    let log1 = weft_e2e::run::run_dir(&tb.run()).join("agent-n1.log");
    let log2 = weft_e2e::run::run_dir(&tb.run()).join("agent-n2.log");
    let log = |p: &Path| std::fs::read_to_string(p).unwrap();

    // Before the agents: node 2 does not forward (set here, in its netns, so the
    // test does not depend on what a new netns inherits) and no node has the chain.
    sh(&n2, &["sysctl", "-w", "net.ipv4.ip_forward=0"]);
    assert_eq!(ip_forward(&n2), "0");
    assert!(weft_lines(&n1).is_empty(), "{:?}", weft_lines(&n1));

    // With the iptables policy backend, masquerade is iptables' chain too
    // (with nftables it is a table of its own: the backend switch test).
    tb.start_agents_with(&["--backend", "iptables"]).unwrap();
    let statuses = tb.wait_converged(CONVERGE).unwrap();

    // 1. Forwarding is on in node 2 (a node with no pods still forwards NodePort transit).
    assert_eq!(ip_forward(&n2), "1");
    for (s, cidr) in statuses.iter().zip(["10.244.1.0/24", "10.244.2.0/24"]) {
        assert!(s.ip_forward, "{s:?}");
        assert_eq!((s.masquerade.as_deref(), s.errors.as_slice()), (Some(cidr), &[][..]), "{s:?}");
    }
    assert!(log(&log2).contains("net.ipv4.ip_forward was off: turned it on"), "{}", log(&log2));

    // 2. Each node has weft's chain for its own pod CIDR and one jump to it.
    assert_masquerade(&n1, "10.244.1.0/24");
    assert_masquerade(&n2, "10.244.2.0/24");

    // 3. Steady state: resyncs find the rules intact and do not rewrite them.
    let ensures = |p: &Path| log(p).matches("masquerade for 10.244.1.0/24 ensured").count();
    assert_eq!(ensures(&log1), 1, "{}", log(&log1));
    tb.wait_syncs(1, 3, RESYNC).unwrap();
    assert_eq!(ensures(&log1), 1, "{}", log(&log1));

    // 4. The jump, deleted by hand, is back within a resync.
    sh(&n1, &["iptables", "-t", "nat", "-D", "POSTROUTING", "-j", "WEFT-POSTROUTING"]);
    assert!(!nat(&n1).iter().any(|l| l == JUMP));
    let back = weft_e2e::wait_until(RESYNC, || nat(&n1).iter().any(|l| l == JUMP));
    assert!(back, "the jump was not re-asserted: {:#?}\n{}", nat(&n1), log(&log1));
    assert_masquerade(&n1, "10.244.1.0/24");
    assert!(log(&log1).contains("re-asserted (rules were missing)"), "{}", log(&log1));

    // 5. So are the chain's rules, flushed by hand.
    sh(&n1, &["iptables", "-t", "nat", "-F", "WEFT-POSTROUTING"]);
    let back = weft_e2e::wait_until(RESYNC, || {
        weft_lines(&n1).iter().filter(|l| l.starts_with("-A WEFT")).count() == 2
    });
    assert!(back, "the rules were not re-asserted: {:#?}", weft_lines(&n1));
    assert_masquerade(&n1, "10.244.1.0/24");

    // 6. A later flip of ip_forward is reported, not fought.
    sh(&n2, &["sysctl", "-w", "net.ipv4.ip_forward=0"]);
    let reported = weft_e2e::wait_until(RESYNC, || tb.agent_status(2).is_some_and(|s| !s.ip_forward));
    assert!(reported, "{:?}", tb.agent_status(2));
    tb.wait_syncs(2, 2, RESYNC).unwrap();
    assert_eq!(ip_forward(&n2), "0");
    assert!(log(&log2).contains("ip_forward is off"), "{}", log(&log2));

    // 7. SIGTERM with --cleanup-on-exit: node 1's chain and jump are gone; node 2's stay.
    assert!(tb.stop_agent(1).unwrap(), "node 1's agent did not exit cleanly");
    assert!(weft_lines(&n1).is_empty(), "{:#?}", weft_lines(&n1));
    assert!(log(&log1).contains("cleanup: weft's masquerade rules deleted"), "{}", log(&log1));
    assert_masquerade(&n2, "10.244.2.0/24");

    // 8. The root namespace was only read.
    assert_root_has_no_weft_chain();
    assert_eq!(std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(), root_fwd);

    let st = tb.state();
    tb.down().unwrap();
    assert_gone(&st);
}

/// With --cni-conf-dir, the agent writes the conflist once its node is ready:
/// weft with the node's pod CIDR and the agent's socket, portmap chained when
/// the bin dir has it; a runtime's parser and weft's own accept it.
#[test]
fn the_agent_writes_the_conflist_once_the_node_is_ready() {
    if !common::root_or_skip("the_agent_writes_the_conflist_once_the_node_is_ready") {
        return;
    }
    let tb = common::pod_testbed(1);
    let run_dir = weft_e2e::run::run_dir(&tb.run());
    let (conf, bin) = (run_dir.join("net.d"), run_dir.join("cni-bin"));
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("portmap"), "").unwrap();
    let (conf_s, bin_s) = (conf.display().to_string(), bin.display().to_string());
    tb.start_agent(1, &["--cni-conf-dir", &conf_s, "--cni-bin-dir", &bin_s]).unwrap();
    tb.wait_converged(std::time::Duration::from_secs(10)).unwrap();
    let text = std::fs::read_to_string(conf.join("10-weft.conflist")).expect("the conflist is written");
    let list = weft_conf::NetConfList::parse(text.as_bytes()).unwrap();
    assert_eq!(list.plugins.len(), 2, "portmap chained: {text}");
    let weft =
        weft_conf::NetConf::parse(list.plugin_config(0, None).unwrap().to_string().as_bytes()).unwrap();
    assert_eq!(weft.ipam.raw["ranges"][0][0]["subnet"], "10.244.1.0/24");
    assert_eq!(weft.agent_socket, Some(weft_e2e::agents::pod_socket(&tb.run(), 1)));
    let st = tb.state();
    tb.down().unwrap();
    common::assert_gone(&st);
}
