//! The real `weft` binary, exec'd as a runtime does, in node and pod
//! namespaces each test creates. Every assertion reads the kernel or the
//! store: a packet crossed, a flag is set, an address is held once.

#[path = "../../netkit/tests/common/mod.rs"]
mod common;
mod harness;

use std::collections::HashSet;
use std::path::Path;

use common::PodNs;
use harness::{ping, pod_ip, weft, Node};
use serde_json::json;
use weft_netkit::link::LinkState;
use weft_netkit::netns::{self, NetNs};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Reads a link of the node over netlink (None: absent); its `hairpin` is
/// the bridge port's IFLA_BRPORT_MODE as the kernel reports it.
fn node_link(node: &Node, name: &str) -> Option<LinkState> {
    let ns = NetNs::open(&node.ns.path).unwrap();
    rt().block_on(async {
        let h = netns::connect_in(&ns).unwrap();
        weft_netkit::link::get_link(&h, name).await.unwrap()
    })
}

/// The names of the bridge weft0's ports in the node.
fn bridge_ports(node: &Node) -> Vec<String> {
    let ns = NetNs::open(&node.ns.path).unwrap();
    rt().block_on(async {
        let h = netns::connect_in(&ns).unwrap();
        let Some(br) = weft_netkit::link::get_link(&h, "weft0").await.unwrap() else { return vec![] };
        let links = weft_netkit::link::list_links(&h).await.unwrap();
        links.into_iter().filter(|l| l.controller == Some(br.index)).map(|l| l.name).collect()
    })
}

/// A config whose range holds a single address, 10.244.1.10.
fn one_address(node: &Node, version: &str) -> serde_json::Value {
    let range = json!({"subnet": "10.244.1.0/24", "rangeStart": "10.244.1.10", "rangeEnd": "10.244.1.10"});
    node.conf(version, json!({"ipam": {"ranges": [[range]]}}))
}

fn host_veth(id: &str) -> String {
    weft_plugin::names::host_veth(id, "eth0")
}

#[test]
fn two_pods_reach_each_other_and_the_gateway_with_hairpin_on() {
    if !harness::root_or_skip("two_pods") {
        return;
    }
    let node = Node::new();
    let (a, b) = (PodNs::new(), PodNs::new());
    let conf = node.conf("1.0.0", json!({}));
    let ra = node.cni(&weft(), "ADD", "pod-a", Some(&a.path), &conf).ok().clone();
    let rb = node.cni(&weft(), "ADD", "pod-b", Some(&b.path), &conf).ok().clone();
    assert_ne!(pod_ip(&ra), pod_ip(&rb));
    assert_eq!(ra["interfaces"][2]["sandbox"], a.path.display().to_string());
    assert_eq!(ra["ips"][0]["interface"], 2);
    assert_eq!(ra["ips"][0]["gateway"], "10.244.1.1");
    assert!(ping(&a.path, &pod_ip(&rb)), "pod a cannot reach pod b");
    assert!(ping(&b.path, &pod_ip(&ra)), "pod b cannot reach pod a");
    assert!(ping(&a.path, "10.244.1.1"), "pod a cannot reach the gateway");
    let bridge = node_link(&node, "weft0").expect("bridge exists");
    for id in ["pod-a", "pod-b"] {
        let port = node_link(&node, &host_veth(id)).expect("host veth exists");
        assert_eq!(port.hairpin, Some(true), "hairpin off on {id}'s port");
        assert_eq!(port.controller, Some(bridge.index), "{id}'s veth is not on the bridge");
    }
}

#[test]
fn sysctls_are_set_in_the_node_and_the_root_is_untouched() {
    if !harness::root_or_skip("sysctls") {
        return;
    }
    let read = |p: &str| std::fs::read_to_string(p).unwrap().trim().to_string();
    let root_before =
        (read("/proc/sys/net/ipv4/ip_forward"), read("/proc/sys/net/bridge/bridge-nf-call-iptables"));
    let node = Node::new();
    // A fresh netns starts with forwarding off, and bridged traffic through
    // the firewall on; the node is set the other way: the ADD must turn all on.
    assert_eq!(node.sh(&["cat", "/proc/sys/net/ipv4/ip_forward"]).trim(), "0");
    let bridge_nf = ["iptables", "ip6tables"].map(|f| format!("/proc/sys/net/bridge/bridge-nf-call-{f}"));
    for path in &bridge_nf {
        node.sh(&["sh", "-c", &format!("echo 0 > {path}")]);
        assert_eq!(node.sh(&["cat", path]).trim(), "0");
    }
    let pod = PodNs::new();
    node.cni(&weft(), "ADD", "p", Some(&pod.path), &node.conf("1.0.0", json!({}))).ok();
    assert_eq!(node.sh(&["cat", "/proc/sys/net/ipv4/ip_forward"]).trim(), "1");
    for path in &bridge_nf {
        assert_eq!(node.sh(&["cat", path]).trim(), "1", "{path}");
    }
    let root_after =
        (read("/proc/sys/net/ipv4/ip_forward"), read("/proc/sys/net/bridge/bridge-nf-call-iptables"));
    assert_eq!(root_before, root_after, "the root netns's sysctls changed");
}

#[test]
fn masquerade_rule_is_written_once_per_node() {
    if !harness::root_or_skip("masquerade") {
        return;
    }
    let node = Node::new();
    let conf = node.conf("1.0.0", json!({}));
    let pods: Vec<PodNs> = (0..3).map(|_| PodNs::new()).collect();
    for (i, p) in pods.iter().enumerate() {
        node.cni(&weft(), "ADD", &format!("m{i}"), Some(&p.path), &conf).ok();
    }
    let nat = node.sh(&["iptables-save", "-t", "nat"]);
    let masq: Vec<_> = nat.lines().filter(|l| l.contains("-j MASQUERADE")).collect();
    assert_eq!(masq.len(), 1, "one masquerade rule per node, got:\n{nat}");
    assert!(masq[0].contains("-s 10.244.1.0/24"), "{}", masq[0]);
    assert!(nat.contains("-d 10.244.0.0/16") && nat.contains("-j RETURN"), "{nat}");
    let jumps = nat.lines().filter(|l| l.starts_with("-A POSTROUTING") && l.contains("WEFT")).count();
    assert_eq!(jumps, 1, "{nat}");
}

/// The masquerade goes to the iptables mode that holds the node's rules
/// (the agent decides the same way), or to nftables when the conflist says
/// so, and leaves the others: a node never holds two.
#[test]
fn masquerade_follows_the_nodes_iptables_mode_and_the_configured_backend() {
    if !harness::root_or_skip("masquerade_modes") {
        return;
    }
    let in_mode = |node: &Node, mode: &str| {
        node.sh(&[&format!("iptables-{mode}-save"), "-t", "nat"]).contains("-A WEFT-POSTROUTING")
    };
    let in_nft = |node: &Node| node.sh(&["nft", "list", "tables"]).contains("inet weft-masq");
    for (mode, other) in [("legacy", "nft"), ("nft", "legacy")] {
        let node = Node::new();
        // The node's own rules, as kube-proxy would have written them.
        node.sh(&[&format!("iptables-{mode}"), "-A", "INPUT", "-s", "192.0.2.1/32", "-j", "ACCEPT"]);
        let pod = PodNs::new();
        let conf = node.conf("1.0.0", json!({}));
        node.cni(&weft(), "ADD", "m", Some(&pod.path), &conf).ok();
        assert!(in_mode(&node, mode), "a node whose rules are in {mode} gets its masquerade there");
        assert!(!in_mode(&node, other) && !in_nft(&node), "and nowhere else");
        node.cni(&weft(), "DEL", "m", Some(&pod.path), &conf).ok();
        // The agent's conflist says nftables: the node is set up again, once.
        let conf = node.conf("1.0.0", json!({"masqueradeBackend": "nftables"}));
        node.cni(&weft(), "ADD", "m", Some(&pod.path), &conf).ok();
        assert!(in_nft(&node), "nftables as configured");
        assert!(!in_mode(&node, mode) && !in_mode(&node, other), "the iptables rules are gone");
        node.cni(&weft(), "DEL", "m", Some(&pod.path), &conf).ok();
    }
}

#[test]
fn check_passes_after_add_and_fails_when_the_address_is_gone() {
    if !harness::root_or_skip("check") {
        return;
    }
    let node = Node::new();
    let pod = PodNs::new();
    for version in ["0.4.0", "1.0.0", "1.1.0"] {
        let id = format!("chk-{}", version.replace('.', ""));
        let conf = node.conf(version, json!({}));
        let res = node.cni(&weft(), "ADD", &id, Some(&pod.path), &conf).ok().clone();
        let mut with_prev = conf.clone();
        with_prev["prevResult"] = res.clone();
        let r = node.cni(&weft(), "CHECK", &id, Some(&pod.path), &with_prev);
        assert_eq!(r.code, 0, "CHECK after ADD failed at {version}: {}", r.json);
        let addr = res["ips"][0]["address"].as_str().unwrap();
        harness::sh_in(&pod.path, &["ip", "addr", "del", addr, "dev", "eth0"]);
        let r = node.cni(&weft(), "CHECK", &id, Some(&pod.path), &with_prev);
        assert_eq!(r.err_code(), 103, "{}", r.json);
        assert!(r.json["msg"].as_str().unwrap().contains(addr.split('/').next().unwrap()), "{}", r.json);
        node.cni(&weft(), "DEL", &id, Some(&pod.path), &conf).ok();
    }
}

#[test]
fn del_is_idempotent_and_frees_the_address_even_without_the_netns() {
    if !harness::root_or_skip("del") {
        return;
    }
    let node = Node::new();
    let conf = node.conf("1.0.0", json!({}));
    let pod = PodNs::new();
    node.cni(&weft(), "ADD", "d1", Some(&pod.path), &conf).ok();
    assert_eq!(node.allocations().len(), 1);
    node.cni(&weft(), "DEL", "d1", Some(&pod.path), &conf).ok();
    assert!(node.allocations().is_empty());
    assert!(node_link(&node, &host_veth("d1")).is_none(), "veth left after DEL");
    // containerd's second DEL: no netns, no prevResult.
    node.cni(&weft(), "DEL", "d1", None, &conf).ok();
    node.cni(&weft(), "DEL", "d1", Some(&pod.path), &conf).ok();

    // The pod netns is deleted before DEL: DEL still succeeds and frees the address.
    let gone = PodNs::new();
    node.cni(&weft(), "ADD", "d2", Some(&gone.path), &conf).ok();
    let path = gone.path.clone();
    drop(gone);
    assert!(!path.exists());
    node.cni(&weft(), "DEL", "d2", Some(&path), &conf).ok();
    assert!(node.allocations().is_empty());
}

#[test]
fn add_into_an_exhausted_range_fails_cleanly() {
    if !harness::root_or_skip("exhausted") {
        return;
    }
    let node = Node::new();
    let conf = one_address(&node, "1.0.0");
    let (p1, p2) = (PodNs::new(), PodNs::new());
    node.cni(&weft(), "ADD", "x1", Some(&p1.path), &conf).ok();
    let r = node.cni(&weft(), "ADD", "x2", Some(&p2.path), &conf);
    assert_eq!(r.err_code(), 101, "{}", r.json);
    assert_eq!(r.json["cniVersion"], "1.0.0");
    assert_eq!(node.allocations(), ["10.244.1.10"]);
    assert!(node_link(&node, &host_veth("x2")).is_none(), "failed ADD left a veth");
    let links = harness::sh_in(&p2.path, &["ip", "-o", "link"]);
    assert!(!links.contains("eth0"), "failed ADD left eth0 in the pod: {links}");
}

/// Each bad input gives the spec's error JSON, a non-zero exit, and leaves nothing behind.
#[test]
fn bad_inputs_give_error_json_and_leave_nothing() {
    if !harness::root_or_skip("bad_inputs") {
        return;
    }
    let node = Node::new();
    let pod = PodNs::new();
    let good = node.conf("1.0.0", json!({}));
    let cases: Vec<(&str, serde_json::Value, Option<&Path>, u64)> = vec![
        ("malformed json", json!("{not json"), Some(&pod.path), 6),
        ("unknown version", node.conf("0.2.0", json!({})), Some(&pod.path), 1),
        (
            "bad cidr",
            node.conf("1.0.0", json!({"ipam": {"ranges": [[{"subnet": "10.244.1.0/33"}]]}})),
            Some(&pod.path),
            7,
        ),
        (
            "bridge name too long",
            node.conf("1.0.0", json!({"bridge": "a-very-long-bridge"})),
            Some(&pod.path),
            7,
        ),
        ("missing netns", good.clone(), Some(Path::new("/run/netns/weft-no-such-netns")), 3),
        ("no netns env", good.clone(), None, 4),
    ];
    for (what, conf, netns, code) in cases {
        let r = if let serde_json::Value::String(raw) = &conf {
            node.cni_raw("ADD", "bad", netns, raw)
        } else {
            node.cni(&weft(), "ADD", "bad", netns, &conf)
        };
        assert_eq!(r.err_code(), code, "{what}: {}", r.json);
        assert!(r.json["msg"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {}", r.json);
        assert!(node.allocations().is_empty(), "{what} leaked an address");
        assert!(node_link(&node, &host_veth("bad")).is_none(), "{what} leaked a veth");
    }
    // An interface in the way: the pod already has an eth0.
    harness::sh_in(&pod.path, &["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"]);
    let r = node.cni(&weft(), "ADD", "bad", Some(&pod.path), &good);
    assert_eq!(r.err_code(), 102, "{}", r.json);
    assert!(node.allocations().is_empty(), "interface in the way leaked an address");
    assert!(node_link(&node, &host_veth("bad")).is_none(), "interface in the way leaked a veth");
}

#[test]
fn two_hundred_concurrent_adds_get_distinct_addresses_and_dels_empty_the_store() {
    if !harness::root_or_skip("concurrent") {
        return;
    }
    const N: usize = 200;
    let node = Node::new();
    let conf = node.conf("1.0.0", json!({"ipam": {"ranges": [[{"subnet": "10.244.0.0/22"}]]}}));
    let pods: Vec<PodNs> = (0..N).map(|_| PodNs::new()).collect();
    let children: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| node.cni_child(&weft(), "ADD", &format!("c{i}"), Some(&p.path), &conf))
        .collect();
    let mut ips = HashSet::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(ips.insert(pod_ip(&v)), "duplicate address {}", pod_ip(&v));
    }
    assert_eq!(ips.len(), N);
    assert_eq!(node.allocations().len(), N);
    let dels: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| node.cni_child(&weft(), "DEL", &format!("c{i}"), Some(&p.path), &conf))
        .collect();
    for c in dels {
        assert!(c.wait_with_output().unwrap().status.success());
    }
    assert!(node.allocations().is_empty(), "{:?}", node.allocations());
}

#[test]
fn kill_9_during_adds_leaves_nothing_gc_does_not_reclaim() {
    if !harness::root_or_skip("kill9") {
        return;
    }
    const N: usize = 40;
    let node = Node::new();
    let conf = node.conf("1.1.0", json!({}));
    let pods: Vec<PodNs> = (0..N).map(|_| PodNs::new()).collect();
    // How long one ADD takes here, so the kill points spread over all of it.
    let calib = PodNs::new();
    let t = std::time::Instant::now();
    node.cni(&weft(), "ADD", "calib", Some(&calib.path), &conf).ok();
    let full = t.elapsed();
    node.cni(&weft(), "DEL", "calib", Some(&calib.path), &conf).ok();
    let mut survivors = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        let mut c = node.cni_child(&weft(), "ADD", &format!("k{i}"), Some(&p.path), &conf);
        // Kill points from right after the spawn to past the reply.
        std::thread::sleep(full.mul_f64(1.3 * i as f64 / N as f64));
        let _ = c.kill();
        let out = c.wait_with_output().unwrap();
        if out.status.success() {
            survivors
                .push((format!("k{i}"), serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()));
        }
    }
    // No address is held twice, and every finished ADD holds its own.
    let held = node.allocations();
    let unique: HashSet<_> = held.iter().collect();
    assert_eq!(unique.len(), held.len());
    for (_, r) in &survivors {
        assert!(held.contains(&pod_ip(r)), "finished ADD lost its address");
    }
    // GC with the finished attachments as valid reclaims everything else.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] =
        survivors.iter().map(|(id, _)| json!({"containerID": id, "ifname": "eth0"})).collect();
    let r = node.cni(&weft(), "GC", "", None, &gc);
    assert_eq!(r.code, 0, "{}", r.json);
    let after: HashSet<String> = node.allocations().into_iter().collect();
    let want: HashSet<String> = survivors.iter().map(|(_, r)| pod_ip(r)).collect();
    assert_eq!(after, want);
    // ...and the bridge ports killed ADDs left behind: only finished ones stay.
    let ports: HashSet<String> = bridge_ports(&node).into_iter().collect();
    let want_ports: HashSet<String> = survivors.iter().map(|(id, _)| host_veth(id)).collect();
    assert_eq!(ports, want_ports);
    // A fresh ADD still works and does not reuse a held address.
    let fresh = PodNs::new();
    let r = node.cni(&weft(), "ADD", "fresh", Some(&fresh.path), &conf).ok().clone();
    assert!(!want.contains(&pod_ip(&r)));
    eprintln!(
        "kill9: {} of {N} ADDs finished before the kill, {} partial ones reclaimed",
        survivors.len(),
        N - survivors.len()
    );
    // The kills must have hit both sides of the reply, or the test proves little.
    assert!(
        !survivors.is_empty() && survivors.len() < N,
        "kill timings missed: {} of {N} finished",
        survivors.len()
    );
}

#[test]
fn version_lists_every_version_in_the_requested_one() {
    let node_less = |stdin: &str| {
        let out = std::process::Command::new(weft())
            .env_clear()
            .env("CNI_COMMAND", "VERSION")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(stdin.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        assert!(out.status.success());
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    for v in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let r = node_less(&format!(r#"{{"cniVersion":"{v}"}}"#));
        assert_eq!(r["cniVersion"], v);
        assert_eq!(r["supportedVersions"], json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]));
    }
}

#[test]
fn status_reports_an_exhausted_range_with_code_50() {
    if !harness::root_or_skip("status") {
        return;
    }
    let node = Node::new();
    let conf = one_address(&node, "1.1.0");
    assert_eq!(node.cni(&weft(), "STATUS", "", None, &conf).code, 0);
    let pod = PodNs::new();
    node.cni(&weft(), "ADD", "s1", Some(&pod.path), &conf).ok();
    assert_eq!(node.cni(&weft(), "STATUS", "", None, &conf).err_code(), 50);
}

#[test]
fn config_keys_take_effect_in_the_kernel() {
    if !harness::root_or_skip("config_keys") {
        return;
    }
    let node = Node::new();
    let pod = PodNs::new();
    let conf = node.conf(
        "1.0.0",
        json!({"mtu": 1400, "hairpinMode": false, "isGateway": false, "bridge": "br-pods",
               "ipam": {"routes": null}}),
    );
    let r = node.cni(&weft(), "ADD", "cfg", Some(&pod.path), &conf).ok().clone();
    // mtu: the bridge and both veth ends.
    let mtu = |ns: &Path, dev: &str| {
        let out = harness::sh_in(ns, &["cat", &format!("/sys/class/net/{dev}/mtu")]);
        out.trim().to_string()
    };
    assert_eq!(mtu(&pod.path, "eth0"), "1400");
    // /sys reflects the netns of whoever mounted it, so read the node's links over netlink.
    let ns = NetNs::open(&node.ns.path).unwrap();
    let (br_mtu, host_mtu) = rt().block_on(async {
        let h = netns::connect_in(&ns).unwrap();
        let br = weft_netkit::link::get_link(&h, "br-pods").await.unwrap().unwrap();
        let host = weft_netkit::link::get_link(&h, &host_veth("cfg")).await.unwrap().unwrap();
        (br.mtu, host.mtu)
    });
    assert_eq!((br_mtu, host_mtu), (1400, 1400));
    // hairpinMode false: off on the port.
    assert_eq!(node_link(&node, &host_veth("cfg")).unwrap().hairpin, Some(false));
    // isGateway false: the bridge holds no address.
    let addrs = node.sh(&["ip", "-o", "addr", "show", "dev", "br-pods"]);
    assert!(!addrs.contains("inet "), "{addrs}");
    // No configured routes: a default route via the gateway, in the pod and in the result.
    let routes = harness::sh_in(&pod.path, &["ip", "route"]);
    assert!(routes.contains("default via 10.244.1.1 dev eth0"), "{routes}");
    assert_eq!(r["routes"], json!([{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}]));
}

#[test]
fn a_repeated_add_fails_without_breaking_the_live_attachment() {
    if !harness::root_or_skip("repeated_add") {
        return;
    }
    let node = Node::new();
    let conf = node.conf("1.0.0", json!({}));
    let (a, b) = (PodNs::new(), PodNs::new());
    let ra = node.cni(&weft(), "ADD", "dup", Some(&a.path), &conf).ok().clone();
    node.cni(&weft(), "ADD", "other", Some(&b.path), &conf).ok();
    let r = node.cni(&weft(), "ADD", "dup", Some(&a.path), &conf);
    assert_eq!(r.err_code(), 102, "{}", r.json);
    // The first ADD's address and veth are untouched.
    assert!(node.allocations().contains(&pod_ip(&ra)), "the repeated ADD freed the live address");
    assert!(node_link(&node, &host_veth("dup")).is_some());
    assert!(ping(&b.path, &pod_ip(&ra)));
}

#[test]
fn dual_stack_pods_reach_each_other_over_both_families() {
    if !harness::root_or_skip("dual_stack") {
        return;
    }
    let node = Node::new();
    let conf = node.conf(
        "1.0.0",
        json!({"ipam": {"ranges": [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]],
                        "routes": null}}),
    );
    let (a, b) = (PodNs::new(), PodNs::new());
    let ra = node.cni(&weft(), "ADD", "ds-a", Some(&a.path), &conf).ok().clone();
    let rb = node.cni(&weft(), "ADD", "ds-b", Some(&b.path), &conf).ok().clone();
    let v6 = |r: &serde_json::Value| {
        r["ips"][1]["address"].as_str().unwrap().split('/').next().unwrap().to_string()
    };
    assert_eq!(ra["ips"][1]["gateway"], "fd00:10:244:1::1");
    assert_eq!(
        ra["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}, {"dst": "::/0", "gw": "fd00:10:244:1::1"}])
    );
    assert!(ping(&a.path, &pod_ip(&rb)), "v4");
    assert!(ping(&a.path, &v6(&rb)), "pod a cannot reach pod b over IPv6");
    assert!(ping(&b.path, "fd00:10:244:1::1"), "pod b cannot reach the IPv6 gateway");
    let mut chk = conf.clone();
    chk["prevResult"] = ra.clone();
    assert_eq!(node.cni(&weft(), "CHECK", "ds-a", Some(&a.path), &chk).code, 0);
    let forwarding = node.sh(&["sysctl", "-n", "net.ipv6.conf.all.forwarding"]);
    assert_eq!(forwarding.trim(), "1", "a node with IPv6 pods routes IPv6");
    let nat6 = node.sh(&["ip6tables-save", "-t", "nat"]);
    assert_eq!(nat6.lines().filter(|l| l.contains("-j MASQUERADE")).count(), 1, "{nat6}");
    for (id, p) in [("ds-a", &a), ("ds-b", &b)] {
        node.cni(&weft(), "DEL", id, Some(&p.path), &conf).ok();
    }
    assert!(node.allocations().is_empty(), "{:?}", node.allocations());
}
