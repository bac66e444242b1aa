//! weft against the reference bridge + host-local plugins (Debian's
//! containernetworking-plugins): the same inputs give results of the same
//! shape at every CNI version both speak, and both sets of pods work.

#[path = "../../netkit/tests/common/mod.rs"]
mod common;
mod harness;

use std::collections::BTreeSet;

use common::PodNs;
use harness::{ping, pod_ip, reference_dir, weft, Node};
use serde_json::{json, Value};

/// The JSON paths of a result, arrays collapsed to `[]` and empty objects
/// dropped (the reference prints `"dns": {}`, weft omits it).
fn shape(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if v.as_object().is_some_and(|o| o.is_empty()) {
                    continue;
                }
                let p = format!("{prefix}.{k}");
                out.insert(p.clone());
                shape(v, &p, out);
            }
        }
        Value::Array(a) => {
            for v in a {
                shape(v, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

fn shape_of(v: &Value) -> BTreeSet<String> {
    let mut s = BTreeSet::new();
    shape(v, "", &mut s);
    s
}

/// ADDs two pods with `bin`/`conf`, checks they reach each other, returns the results.
fn two_pods(node: &Node, bin: &std::path::Path, conf: &Value) -> (Value, Value) {
    let (a, b) = (PodNs::new(), PodNs::new());
    let ra = node.cni(bin, "ADD", "diff-a", Some(&a.path), conf).ok().clone();
    let rb = node.cni(bin, "ADD", "diff-b", Some(&b.path), conf).ok().clone();
    assert!(ping(&a.path, &pod_ip(&rb)), "{}: pod a cannot reach pod b", bin.display());
    assert!(ping(&b.path, &pod_ip(&ra)), "{}: pod b cannot reach pod a", bin.display());
    for (id, p) in [("diff-a", &a), ("diff-b", &b)] {
        node.cni(bin, "DEL", id, Some(&p.path), conf).ok();
    }
    (ra, rb)
}

#[test]
fn results_have_the_reference_shape_at_every_version() {
    if !harness::root_or_skip("differential") {
        return;
    }
    let Some(refdir) = reference_dir() else {
        weft_test_support::skip(
            "differential",
            "the reference plugins (containernetworking-plugins) are not installed",
        );
        return;
    };
    // Debian's plugins (1.1.1) speak up to 1.0.0; 1.1.0 has no reference to compare with.
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0"] {
        let wnode = Node::new();
        let rnode = Node::new();
        let wconf = wnode.conf(version, json!({"masquerade": false}));
        let rconf = json!({
            "cniVersion": version, "name": "ref", "type": "bridge", "bridge": "cni0",
            "isGateway": true, "ipMasq": false, "hairpinMode": true,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]],
                     "routes": [{"dst": "0.0.0.0/0"}],
                     "dataDir": rnode.data.path().display().to_string()}
        });
        let (w, _) = two_pods(&wnode, &weft(), &wconf);
        let (r, _) = two_pods(&rnode, &refdir.join("bridge"), &rconf);
        assert_eq!(w["cniVersion"], version);
        assert_eq!(r["cniVersion"], version);
        // weft also reports the MTU of its interfaces at 1.1.0 only, so at
        // these versions the shapes must be identical.
        assert_eq!(shape_of(&w), shape_of(&r), "version {version}\nweft: {w}\nref:  {r}");
        // And the same meaning: same sandbox interface index and gateway.
        assert_eq!(w["ips"][0]["interface"], r["ips"][0]["interface"], "version {version}");
        assert_eq!(w["ips"][0]["gateway"], r["ips"][0]["gateway"], "version {version}");
        assert_eq!(w["routes"], r["routes"], "version {version}");
    }
}
