//! IPAM delegation both ways, as the spec describes it: weft exec'ing
//! another IPAM plugin found on CNI_PATH (host-local), and another main
//! plugin (the reference bridge) exec'ing the standalone weft-ipam.

#[path = "../../netkit/tests/common/mod.rs"]
mod common;
mod harness;

use common::PodNs;
use harness::{ping, pod_ip, reference_dir, weft, Node};
use serde_json::json;

#[test]
fn weft_delegates_to_host_local() {
    if !harness::root_or_skip("delegate_host_local") {
        return;
    }
    if reference_dir().is_none() {
        weft_test_support::skip(
            "delegate_host_local",
            "host-local (containernetworking-plugins) is not installed",
        );
        return;
    }
    let node = Node::new();
    let dir = node.data.path().join("host-local");
    let conf =
        node.conf("1.0.0", json!({"ipam": {"type": "host-local", "dataDir": dir.display().to_string()}}));
    let (a, b) = (PodNs::new(), PodNs::new());
    let ra = node.cni(&weft(), "ADD", "ha", Some(&a.path), &conf).ok().clone();
    let rb = node.cni(&weft(), "ADD", "hb", Some(&b.path), &conf).ok().clone();
    assert!(dir.join("weft").join(pod_ip(&ra)).exists(), "host-local holds the address");
    assert!(ping(&a.path, &pod_ip(&rb)));
    let mut chk = conf.clone();
    chk["prevResult"] = ra;
    assert_eq!(node.cni(&weft(), "CHECK", "ha", Some(&a.path), &chk).code, 0);
    for (id, p) in [("ha", &a), ("hb", &b)] {
        node.cni(&weft(), "DEL", id, Some(&p.path), &conf).ok();
    }
    let left: Vec<_> = std::fs::read_dir(dir.join("weft"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("10."))
        .collect();
    assert!(left.is_empty(), "host-local still holds {left:?}");
    // A delegate that is not on CNI_PATH is a clear error, and nothing is left.
    let missing = node.conf("1.0.0", json!({"ipam": {"type": "no-such-ipam"}}));
    let r = node.cni(&weft(), "ADD", "hc", Some(&a.path), &missing);
    assert_eq!(r.err_code(), 104, "{}", r.json);
    assert!(r.json["msg"].as_str().unwrap().contains("no-such-ipam"));
}

#[test]
fn the_reference_bridge_delegates_to_weft_ipam() {
    if !harness::root_or_skip("delegate_weft_ipam") {
        return;
    }
    let Some(refdir) = reference_dir() else {
        weft_test_support::skip("delegate_weft_ipam", "the reference bridge is not installed");
        return;
    };
    let weft_ipam = weft().with_file_name("weft-ipam");
    assert!(weft_ipam.is_file(), "{} is missing: build the workspace (make test does)", weft_ipam.display());
    let node = Node::new();
    let conf = json!({
        "cniVersion": "1.0.0", "name": "refnet", "type": "bridge", "bridge": "cni0", "isGateway": true,
        "ipam": {"type": "weft-ipam", "ranges": [[{"subnet": "10.244.7.0/24"}]],
                 "routes": [{"dst": "0.0.0.0/0"}], "dataDir": node.data.path().display().to_string()}
    });
    let bridge = refdir.join("bridge");
    let (a, b) = (PodNs::new(), PodNs::new());
    let ra = node.cni(&bridge, "ADD", "ra", Some(&a.path), &conf).ok().clone();
    let rb = node.cni(&bridge, "ADD", "rb", Some(&b.path), &conf).ok().clone();
    assert_eq!(ra["ips"][0]["gateway"], "10.244.7.1");
    assert!(node.data.path().join("refnet").join(pod_ip(&ra)).exists(), "weft-ipam holds the address");
    assert!(ping(&a.path, &pod_ip(&rb)));
    for (id, p) in [("ra", &a), ("rb", &b)] {
        node.cni(&bridge, "DEL", id, Some(&p.path), &conf).ok();
    }
    assert!(!node.data.path().join("refnet").join(pod_ip(&ra)).exists());
}
