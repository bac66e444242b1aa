//! The CNI edges an operator meets: STATUS codes 50/51, a CNI_NETNS that is
//! not a pod's, a full disk during ADD, a corrupt attachment record at DEL,
//! and a route that already existed. The real `weft` binary, exec'd in node
//! and pod namespaces each test creates; assertions read the kernel or the store.

#[path = "../../netkit/tests/common/mod.rs"]
mod common;
mod harness;

use std::path::Path;
use std::time::{Duration, Instant};

use common::PodNs;
use harness::{pod_ip, weft, Node, Reply};
use serde_json::json;

/// Runs ADD and waits at most `limit`; kills the plugin if it takes longer.
fn add_within(node: &Node, id: &str, netns: &Path, limit: Duration) -> Reply {
    let conf = node.conf("1.0.0", json!({}));
    let mut child = node.cni_child(&weft(), "ADD", id, Some(netns), &conf);
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("ADD with CNI_NETNS={} still running after {limit:?}", netns.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    Reply {
        code: out.status.code().unwrap_or(-1),
        json: serde_json::from_slice(&out.stdout).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn status_is_50_when_the_store_is_unusable_and_51_when_pods_are_cut_off() {
    if !harness::root_or_skip("status_codes") {
        return;
    }
    let node = Node::new();
    let conf = node.conf("1.1.0", json!({}));
    // dataDir is a regular file: no ADD can work.
    let file = node.data.path().join("not-a-dir");
    std::fs::write(&file, b"").unwrap();
    let broken = node.conf("1.1.0", json!({"ipam": {"dataDir": file.display().to_string()}}));
    let r = node.cni(&weft(), "STATUS", "", None, &broken);
    assert_eq!(r.err_code(), 50, "{}", r.json);
    assert!(r.json["details"].as_str().unwrap().contains("not-a-dir"), "{}", r.json);
    // Before any ADD the bridge does not exist yet: that is fine.
    assert_eq!(node.cni(&weft(), "STATUS", "", None, &conf).code, 0);
    let pod = PodNs::new();
    node.cni(&weft(), "ADD", "st", Some(&pod.path), &conf).ok();
    assert_eq!(node.cni(&weft(), "STATUS", "", None, &conf).code, 0);
    // The pods' bridge goes down: existing pods are cut off.
    node.sh(&["ip", "link", "set", "weft0", "down"]);
    let r = node.cni(&weft(), "STATUS", "", None, &conf);
    assert_eq!(r.err_code(), 51, "{}", r.json);
    node.sh(&["ip", "link", "set", "weft0", "up"]);
    assert_eq!(node.cni(&weft(), "STATUS", "", None, &conf).code, 0);
    node.sh(&["ip", "link", "del", "weft0"]);
    let r = node.cni(&weft(), "STATUS", "", None, &conf);
    assert_eq!(r.err_code(), 51, "{}", r.json);
    assert!(r.json["msg"].as_str().unwrap().contains("weft0 is gone"), "{}", r.json);
}

#[test]
fn add_refuses_a_netns_that_is_not_a_pods_without_blocking() {
    if !harness::root_or_skip("refuse_netns") {
        return;
    }
    let node = Node::new();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let cases: [(&str, &Path, u64, &str); 3] = [
        ("the node's own netns", &node.ns.path, 4, "the node's own network namespace"),
        ("a FIFO", &fifo, 3, "not a network namespace"),
        ("a mount namespace", Path::new("/proc/self/ns/mnt"), 3, "a mount namespace"),
    ];
    for (what, path, code, says) in cases {
        let r = add_within(&node, "own", path, Duration::from_secs(10));
        assert_eq!(r.err_code(), code, "{what}: {}", r.json);
        assert!(r.json["msg"].as_str().unwrap().contains(says), "{what}: {}", r.json);
        assert!(node.allocations().is_empty(), "{what} leaked an address");
    }
    // Nothing reached the node: no pod address, no default route, no veth.
    let addrs = node.sh(&["ip", "-o", "addr"]);
    assert!(!addrs.contains("10.244.1."), "{addrs}");
    assert!(node.sh(&["ip", "route"]).trim().is_empty(), "{}", node.sh(&["ip", "route"]));
    assert!(!node.sh(&["ip", "-o", "link"]).contains("veth"));
}

#[test]
fn a_full_disk_during_add_leaves_no_temp_file() {
    if !harness::root_or_skip("enospc") {
        return;
    }
    let node = Node::new();
    let data = node.data.path().join("small");
    std::fs::create_dir(&data).unwrap();
    let conf = node.conf("1.0.0", json!({"ipam": {"dataDir": data.display().to_string()}}));
    let pod = PodNs::new();
    // A 64 KiB tmpfs, visible only in the plugin's private mount namespace,
    // filled up; the plugin runs in it, then the store's names are listed on stderr.
    let script = format!(
        "mount -t tmpfs -o size=64k tmpfs {d} && mkdir -p {d}/weft/attachments {d}/weft/free && \
         (cat /dev/zero > {d}/fill 2>/dev/null; true) && \
         {w}; rc=$?; ls -A {d}/weft >&2; exit $rc",
        d = data.display(),
        w = weft().display()
    );
    let r = node.cni_wrapped(
        &["unshare", "--mount", "--propagation", "private", "sh", "-c", &script],
        "ADD",
        "full",
        Some(&pod.path),
        &conf,
    );
    assert_eq!(r.err_code(), 5, "{}", r.json);
    assert!(r.json["msg"].as_str().unwrap().contains("No space left"), "{}", r.json);
    let names: Vec<&str> = r.stderr.split_whitespace().collect();
    assert!(names.contains(&"lock"), "the listing ran: {names:?}");
    assert!(!names.iter().any(|n| n.starts_with("tmp.")), "temp file left: {names:?}");
    assert!(!names.iter().any(|n| n.parse::<std::net::IpAddr>().is_ok()), "address held: {names:?}");
}

#[test]
fn del_succeeds_past_a_corrupt_record_and_frees_the_address() {
    if !harness::root_or_skip("corrupt_del") {
        return;
    }
    let node = Node::new();
    let conf = node.conf("1.0.0", json!({}));
    let pod = PodNs::new();
    node.cni(&weft(), "ADD", "bad-record", Some(&pod.path), &conf).ok();
    assert_eq!(node.allocations().len(), 1);
    // Garbled in place: the IP file is the same inode, so it reads garbled too.
    let index = node.data.path().join("weft/attachments/bad-record@eth0");
    std::fs::write(&index, b"{\"containerID\":").unwrap();
    let r = node.cni(&weft(), "DEL", "bad-record", Some(&pod.path), &conf);
    assert_eq!(r.code, 0, "{} {}", r.json, r.stderr);
    assert!(node.allocations().is_empty(), "{:?}", node.allocations());
    assert!(!index.exists());
    assert!(!node.sh(&["ip", "-o", "link"]).contains(&weft_plugin::names::host_veth("bad-record", "eth0")));
}

#[test]
fn a_route_that_already_existed_is_not_reported_as_added() {
    if !harness::root_or_skip("existing_route") {
        return;
    }
    let node = Node::new();
    // The subnet's route exists as soon as the address is on eth0 (proto kernel).
    let conf = node.conf(
        "1.0.0",
        json!({"ipam": {"routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.244.1.0/24"}, {"dst": "10.96.0.0/12"}]}}),
    );
    let pod = PodNs::new();
    let r = node.cni(&weft(), "ADD", "routes", Some(&pod.path), &conf).ok().clone();
    assert_eq!(r["routes"], json!([{"dst": "0.0.0.0/0"}, {"dst": "10.96.0.0/12"}]), "{r}");
    let routes = harness::sh_in(&pod.path, &["ip", "route"]);
    assert!(routes.contains("10.96.0.0/12 via 10.244.1.1"), "{routes}");
    assert!(routes.contains("10.244.1.0/24 dev eth0 proto kernel"), "{routes}");
    assert!(harness::ping(&pod.path, "10.244.1.1"), "pod {} cannot reach its gateway", pod_ip(&r));
}
