//! The agent writes where the node's rules are (netkit's iptables mode
//! detection, as kube-proxy's iptables-wrapper): in a node namespace whose
//! rules are in iptables-legacy, its policy chains and masquerade go to
//! legacy; in one whose rules are in iptables-nft, to nft; with the nftables
//! policy backend, masquerade goes to nftables (and the plugin decides the
//! same, see plugin/tests/cni.rs). Each in a network namespace of the test's
//! own (root; skips otherwise).

use std::process::Command;

use weft_agent::backend::{self, BackendChoice};
use weft_agent::masquerade::{backend_for, MasqIn, Masquerade};
use weft_agent::policy::PolicyIr;
use weft_netkit::iptables_mode::IptablesMode;
use weft_netkit::masquerade::MasqBackend;
use weft_netkit::netns::run_in_new;

/// True when root; otherwise the test skips (fails under CI).
fn root() -> bool {
    weft_test_support::root_or_skip(&weft_test_support::this_test(), "a network namespace of its own")
}

fn out(argv: &[&str]) -> String {
    let o = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    assert!(o.status.success(), "{argv:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn the_agent_writes_in_the_mode_holding_the_nodes_rules() {
    if !root() {
        return;
    }
    let cases = [
        (BackendChoice::Iptables, "legacy", MasqBackend::Iptables(Some(IptablesMode::Legacy))),
        (BackendChoice::Iptables, "nft", MasqBackend::Iptables(Some(IptablesMode::Nft))),
        (BackendChoice::Nftables, "legacy", MasqBackend::Nftables),
    ];
    for (pick, node_mode, want) in cases {
        run_in_new(|| {
            out(&[&format!("iptables-{node_mode}"), "-A", "INPUT", "-s", "192.0.2.1/32", "-j", "ACCEPT"]);
            let backend = backend_for(pick).unwrap();
            assert_eq!(backend, want, "{pick:?} on a node whose rules are in {node_mode}");
            // Dual-stack: the IPv6 pod CIDR goes to ip6tables of the same mode.
            let cluster = vec!["10.244.0.0/16".parse().unwrap(), "fd00::af4:0/112".parse().unwrap()];
            let mut duty = Masquerade::new(cluster, "weft");
            let pods = ["10.244.1.0/24".parse().unwrap(), "fd00::af4:100/120".parse().unwrap()];
            duty.reconcile(&MasqIn(backend), &pods, true).unwrap();
            let held = |mode: &str| {
                let v4 =
                    out(&[&format!("iptables-{mode}-save"), "-t", "nat"]).contains("-A WEFT-POSTROUTING");
                let v6 = out(&[&format!("ip6tables-{mode}-save"), "-t", "nat"]);
                let v6 = v6.contains("-A WEFT-POSTROUTING -s fd00::af4:100/120 -d fd00::af4:0/112");
                assert_eq!(v4, v6, "both families in {mode}");
                v4
            };
            let nft = out(&["nft", "list", "tables"]).contains("inet weft-masq");
            if nft {
                let table = out(&["nft", "list", "table", "inet", "weft-masq"]);
                assert!(
                    table.contains("ip6 saddr fd00::af4:100/120 ip6 daddr fd00::af4:0/112 return"),
                    "{table}"
                );
            }
            let want_in = match want {
                MasqBackend::Iptables(Some(m)) => (m == IptablesMode::Legacy, m == IptablesMode::Nft, false),
                _ => (false, false, true),
            };
            assert_eq!((held("legacy"), held("nft"), nft), want_in, "{pick:?} on {node_mode}");
            if pick == BackendChoice::Iptables {
                let mut policy = backend::start(pick).unwrap();
                policy.apply(&PolicyIr::default(), true).unwrap();
                let chains = |mode: &str| {
                    out(&[&format!("iptables-{mode}-save"), "-t", "filter"]).contains("-A FORWARD -m comment")
                };
                assert_eq!(
                    (chains("legacy"), chains("nft")),
                    (want_in.0, want_in.1),
                    "policy on {node_mode}"
                );
                policy.cleanup().unwrap();
                assert!(!chains("legacy") && !chains("nft"), "cleanup removes them");
            }
        })
        .unwrap();
    }
}
