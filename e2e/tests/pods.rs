//! Pods attached by the real `weft` binary, exec'd in a node's netns with the
//! CNI env and config as a kubelet would: same-node pod-to-pod and node-to-pod
//! traffic, release on delete, and nothing left behind when a Testbed with pods
//! is dropped. Cross-node pod traffic needs the agent's routes: tests/routing.rs.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::{assert_gone, bin, pod_testbed, root_or_skip, CMD_TIMEOUT};
use weft_e2e::probe::{probe_in, Outcome, Proto};
use weft_e2e::{netns, pods, Testbed};

/// Probe bound: generous, since the first packet to a new veth waits for ARP.
const PROBE: Duration = Duration::from_secs(2);

fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

fn connected(name: &str) -> Outcome {
    Outcome::Connected(name.into())
}

/// The IP files in node `node`'s IPAM store (network "weft").
fn ip_files(tb: &Testbed, node: u32) -> Vec<String> {
    let dir = pods::ipam_dir(&tb.run(), node).join("weft");
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<Ipv4Addr>().is_ok())
        .collect();
    v.sort();
    v
}

/// True if link `name` exists in the netns at `ns`.
fn link_exists(ns: &std::path::Path, name: &str) -> bool {
    let out = weft_e2e::exec_in(ns, &["ip", "link", "show", "dev", name], CMD_TIMEOUT).unwrap();
    out.status.success()
}

#[test]
fn two_pods_on_a_node_get_distinct_addresses_and_reach_each_other() {
    if !root_or_skip("two_pods_on_a_node_get_distinct_addresses_and_reach_each_other") {
        return;
    }
    let mut tb = pod_testbed(1);
    let a = tb.add_pod(1, "web/a").unwrap();
    let b = tb.add_pod(1, "web/b").unwrap();
    let cidr = weft_e2e::plan::pod_cidr(1);
    assert_ne!(a.ip, b.ip);
    for p in [&a, &b] {
        assert!(cidr.contains(p.ip), "{} got {} outside {cidr}", p.name, p.ip);
        assert_eq!(tb.pod(&p.name).unwrap().ip, Some(p.ip), "recorded in the state");
    }
    assert_eq!(ip_files(&tb, 1), {
        let mut v = vec![a.ip.to_string(), b.ip.to_string()];
        v.sort();
        v
    });
    for (from, to) in [(&a, &b), (&b, &a)] {
        for (port, proto) in [(80, Proto::Tcp), (81, Proto::Udp)] {
            let got = probe_in(&from.netns, at(to.ip, port), proto, PROBE).unwrap();
            assert_eq!(got, connected(&to.name), "{} -> {}:{port} {proto:?}", from.name, to.name);
        }
    }
    // A closed port is refused, not silently dropped.
    assert_eq!(probe_in(&a.netns, at(b.ip, 82), Proto::Tcp, PROBE).unwrap(), Outcome::Refused);
    tb.down().unwrap();
}

#[test]
fn the_node_reaches_its_local_pod() {
    if !root_or_skip("the_node_reaches_its_local_pod") {
        return;
    }
    let mut tb = pod_testbed(2);
    let a = tb.add_pod(1, "web/a").unwrap();
    let got = probe_in(&tb.node_netns(1), at(a.ip, 80), Proto::Tcp, PROBE).unwrap();
    assert_eq!(got, connected("web/a"));
    // Node 2's pod comes from node 2's own range and store.
    let b = tb.add_pod(2, "web/b").unwrap();
    assert!(weft_e2e::plan::pod_cidr(2).contains(b.ip), "{}", b.ip);
    assert_eq!(ip_files(&tb, 2), [b.ip.to_string()]);
    let got = probe_in(&tb.node_netns(2), at(b.ip, 81), Proto::Udp, PROBE).unwrap();
    assert_eq!(got, connected("web/b"));
    tb.down().unwrap();
}

#[test]
fn delete_pod_releases_the_address_the_veth_and_the_netns() {
    if !root_or_skip("delete_pod_releases_the_address_the_veth_and_the_netns") {
        return;
    }
    let mut tb = pod_testbed(1);
    let a = tb.add_pod(1, "web/a").unwrap();
    let rec = tb.pod("web/a").unwrap();
    let veth = a.host_veth.clone().expect("the ADD result names the host veth");
    let node = tb.node_netns(1);
    assert!(link_exists(&node, &veth));
    assert_eq!(ip_files(&tb, 1), [a.ip.to_string()]);

    let deleted = tb.delete_pod("web/a").unwrap();
    assert_eq!(deleted.ip, Some(a.ip));
    assert!(ip_files(&tb, 1).is_empty(), "address left allocated: {:?}", ip_files(&tb, 1));
    assert!(!link_exists(&node, &veth), "host veth {veth} left in the node");
    assert!(!a.netns.exists() && !netns::netns_exists(&rec.netns), "pod netns left");
    assert!(tb.pod("web/a").is_none() && tb.state().processes.is_empty(), "state still has it");
    assert!(!process_alive(a.pid), "workload {} still runs", a.pid);
    assert!(tb.delete_pod("web/a").is_err(), "a second delete finds no pod");

    // The allocator searches on from its hint (host-local's last_reserved_ip);
    // pointing it just before the released address shows that address is free.
    let before = Ipv4Addr::from(u32::from(a.ip) - 1);
    std::fs::write(pods::ipam_dir(&tb.run(), 1).join("weft/last_reserved_ip.0"), before.to_string()).unwrap();
    let again = tb.add_pod(1, "web/again").unwrap();
    assert_eq!(again.ip, a.ip, "the released address is allocated again");
    let got = probe_in(&node, at(again.ip, 80), Proto::Tcp, PROBE).unwrap();
    assert_eq!(got, connected("web/again"));
    tb.down().unwrap();
}

#[test]
fn a_bad_pod_is_refused_and_leaves_nothing() {
    if !root_or_skip("a_bad_pod_is_refused_and_leaves_nothing") {
        return;
    }
    let mut tb = pod_testbed(1);
    assert!(tb.add_pod(2, "web/a").is_err(), "no node 2");
    assert!(tb.add_pod(1, "web").is_err(), "not ns/name");
    tb.add_pod(1, "web/a").unwrap();
    assert!(matches!(tb.add_pod(1, "web/a"), Err(weft_e2e::E2eError::PodExists { .. })));
    assert_eq!(tb.pods().len(), 1);
    assert_eq!(netns::list_with_prefix(&format!("{}-p", tb.run())).len(), 1);
    tb.down().unwrap();

    // The plugin itself fails (node 2's IPAM data dir is a file): the error
    // carries its CNI error JSON, and the pod's netns and record are undone.
    let mut tb = pod_testbed(2);
    std::fs::write(pods::ipam_dir(&tb.run(), 2), "not a directory").unwrap();
    let err = tb.add_pod(2, "web/b").unwrap_err().to_string();
    assert!(err.contains("weft ADD of pod web/b on node 2 failed") && err.contains("\"code\""), "{err}");
    assert!(tb.pods().is_empty() && tb.state().processes.is_empty(), "{:?}", tb.state());
    assert!(netns::list_with_prefix(&format!("{}-p", tb.run())).is_empty(), "pod netns left");
    // The node is still usable for pods that can be attached.
    tb.add_pod(1, "web/c").unwrap();
    tb.down().unwrap();
}

#[test]
fn dropping_a_testbed_with_pods_leaves_nothing() {
    if !root_or_skip("dropping_a_testbed_with_pods_leaves_nothing") {
        return;
    }
    let mut tb = pod_testbed(2);
    let run = tb.run();
    // The run name as the pods' namespace puts it in every workload's command line.
    let a = tb.add_pod(1, &format!("{run}/a")).unwrap();
    let b = tb.add_pod(2, &format!("{run}/b")).unwrap();
    assert_eq!(processes_mentioning(&run).len(), 2, "both workloads run");
    let st = tb.state();
    drop(tb);
    assert_gone(&st);
    for p in &st.pods {
        assert!(!p.path.exists(), "pod netns {} left", p.netns);
    }
    assert!(!process_alive(a.pid) && !process_alive(b.pid));
    let left = processes_mentioning(&run);
    assert!(left.is_empty(), "processes of run {run} left: {left:?}");
}

#[test]
fn cli_pod_add_and_del() {
    if !root_or_skip("cli_pod_add_and_del") {
        return;
    }
    common::weft_bin();
    let tb = Testbed::up(1).unwrap();
    let run = tb.run();
    let add = cli(&["pod", "add", &run, "1", "web/cli"]);
    assert!(add.status.success(), "{}", String::from_utf8_lossy(&add.stderr));
    let ip: Ipv4Addr = String::from_utf8(add.stdout).unwrap().trim().parse().unwrap();
    let st = weft_e2e::run::load(&run).unwrap().unwrap();
    assert_eq!(st.pods.len(), 1);
    assert_eq!(st.pods[0].ip, Some(ip));
    let pid = st.processes[0].pid as u32;
    // The workload outlives the CLI that started it.
    let got = probe_in(&tb.node_netns(1), at(ip, 80), Proto::Tcp, PROBE).unwrap();
    assert_eq!(got, connected("web/cli"));
    assert!(weft_e2e::topology::status(&run).unwrap().contains("pod web/cli on node 1"));

    let dup = cli(&["pod", "add", &run, "1", "web/cli"]);
    assert!(!dup.status.success(), "a second add of the same pod fails");
    let del = cli(&["pod", "del", &run, "web/cli"]);
    assert!(del.status.success(), "{}", String::from_utf8_lossy(&del.stderr));
    assert_eq!(String::from_utf8_lossy(&del.stdout).trim(), ip.to_string());
    assert!(ip_files(&tb, 1).is_empty());
    assert!(!process_alive(pid), "workload {pid} still runs");
    let st = weft_e2e::run::load(&run).unwrap().unwrap();
    assert!(st.pods.is_empty() && st.processes.is_empty());
    assert!(!cli(&["pod", "del", &run, "web/cli"]).status.success(), "nothing left to delete");

    // A pod added by the CLI and never deleted is released by down.
    let add = cli(&["pod", "add", &run, "1", "web/left"]);
    assert!(add.status.success(), "{}", String::from_utf8_lossy(&add.stderr));
    let st = weft_e2e::run::load(&run).unwrap().unwrap();
    let pid = st.processes[0].pid as u32;
    tb.down().unwrap();
    assert_gone(&st);
    assert!(!process_alive(pid), "workload {pid} survived down");
}

fn cli(args: &[&str]) -> std::process::Output {
    let mut argv = vec![bin()];
    argv.extend_from_slice(args);
    let me = std::path::PathBuf::from(format!("/proc/{}/ns/net", std::process::id()));
    // Longer than one CNI call's bound, so a stuck plugin shows as the CLI's error.
    weft_e2e::exec_in(&me, &argv, Duration::from_secs(60)).unwrap()
}

/// True while `pid` exists and is not a zombie.
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next());
            !matches!(state, Some("Z") | Some("X"))
        }
        Err(_) => false,
    }
}

/// Live processes (other than this one) whose command line mentions `word`.
fn processes_mentioning(word: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && process_alive(pid))
        .filter_map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(word).then_some((pid, cmd))
        })
        .collect()
}
