//! ClusterNetworkPolicy status end to end, in process: two nodes' API
//! sources (`KubeSource` with the status on) against the stand-in API
//! server, each on a listener of its own, so the stand-in sees who writes
//! (root, for a netns of its own whose loopback carries the API traffic;
//! skips otherwise). Each node reports what it "applied" as the agent does
//! after a successful sync; the one holding the Lease writes every CNP's
//! conditions, the other never does; a new generation shows fewer nodes
//! until they report it; an invalid CNP is not accepted, with the parser's
//! words; with the holder gone, the other node takes the Lease over.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use weft_agent::source::kube::cnp_status::lease::{REALIZED_ANNOTATION, WRITER_LEASE};
use weft_agent::source::kube::cnp_status::{StatusConfig, Timing};
use weft_agent::source::kube::{KubeSource, Options};
use weft_agent::source::{Realized, Source};
use weft_e2e::apiserver_standin::{kubeconfig, ApiStandin};
use weft_test_support::{root_or_skip, this_test};

const NS: &str = "kube-system";
/// Bound on the status reaching a state.
const WAIT: Duration = Duration::from_secs(20);
/// Fast enough for a test; the Lease still outlives several periods.
const TIMING: Timing = Timing {
    lease: Duration::from_secs(2),
    period: Duration::from_millis(200),
    request: Duration::from_secs(2),
};

fn node(name: &str) -> String {
    format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\n")
}

fn cnp(name: &str, priority: u32) -> String {
    format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\n\
         spec:\n  tier: Admin\n  priority: {priority}\n  subject: {{namespaces: {{}}}}\n  \
         ingress:\n    - {{action: Deny, from: [{{namespaces: {{matchLabels: {{ns: y}}}}}}]}}\n"
    )
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// One node: its source, and what it last reported.
struct Agent {
    name: &'static str,
    source: KubeSource,
}

impl Agent {
    fn start(name: &'static str, kc: &Path) -> Agent {
        let cfg = StatusConfig { node: name.into(), namespace: NS.into(), timing: TIMING };
        let opts = Options { cnp_recheck: Duration::from_millis(200), cnp_status: Some(cfg) };
        Agent { name, source: KubeSource::start_opts(Some(kc), opts).unwrap() }
    }

    /// Polls the source and, on a new snapshot, reports its CNPs as applied
    /// (what the agent does after a successful sync).
    fn sync(&mut self) {
        if let Some(s) = self.source.poll() {
            let realized: Realized = s
                .model
                .cluster_policies
                .values()
                .filter_map(|p| Some((p.name.clone(), p.generation?)))
                .collect();
            self.source.report_realized(&realized);
        }
    }
}

/// A condition of a served CNP: (status, reason, message, observedGeneration).
fn condition(standin: &ApiStandin, cnp: &str, type_: &str) -> Option<(String, String, String, i64)> {
    let obj = standin.object("ClusterNetworkPolicy", cnp)?;
    let c = obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)?.clone();
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((s("status"), s("reason"), s("message"), c["observedGeneration"].as_i64().unwrap_or(-1)))
}

/// Syncs `agents` until `ok` holds.
fn wait_for(agents: &mut [&mut Agent], standin: &ApiStandin, what: &str, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        for a in agents.iter_mut() {
            a.sync();
        }
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = |n: &str| standin.object("ClusterNetworkPolicy", n).map(|o| o["status"].clone());
    panic!(
        "{what}: not within {WAIT:?}; guard {:?}, bad {:?}, writer Lease {:?}, stats {:?}",
        status("guard"),
        status("bad"),
        standin.lease(NS, WRITER_LEASE),
        standin.stats()
    );
}

fn holder(standin: &ApiStandin) -> Option<String> {
    standin.lease(NS, WRITER_LEASE)?["spec"]["holderIdentity"].as_str().map(str::to_string)
}

fn patches(standin: &ApiStandin) -> (BTreeSet<usize>, u64) {
    let p = standin.stats().status_patches;
    (p.keys().copied().collect(), p.values().sum())
}

#[test]
fn one_elected_writer_says_which_cnps_are_accepted_and_on_how_many_nodes_they_are_realized() {
    if !root_or_skip(&this_test(), "a network namespace of its own") {
        return;
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
    let up = std::process::Command::new("ip").args(["link", "set", "lo", "up"]).status().expect("ip");
    assert!(up.success(), "lo up in the test's netns");
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "nodes.yaml", &format!("{}---\n{}", node("node-1"), node("node-2")));
    write(dir.path(), "guard.yaml", &cnp("guard", 5));
    write(dir.path(), "bad.yaml", &cnp("bad", 2000));
    // Two listeners in this netns: node-1's source uses the first, node-2's the second.
    let here = PathBuf::from("/proc/thread-self/ns/net");
    let standin = ApiStandin::start(dir.path(), &[here.clone(), here]).unwrap();
    standin.serve_cnp(true).unwrap();
    let kc = |i: usize, name: &str| {
        let path = dir.path().join(format!(".kubeconfig-{name}"));
        std::fs::write(&path, kubeconfig(standin.port(i).unwrap())).unwrap();
        path
    };
    let (kc1, kc2) = (kc(0, "node-1"), kc(1, "node-2"));
    let mut a = Agent::start("node-1", &kc1);
    let mut b = Agent::start("node-2", &kc2);

    let says = |cnp: &str, type_: &str, want: (&str, &str, &str, i64)| {
        condition(&standin, cnp, type_).is_some_and(|(s, r, m, g)| {
            (s.as_str(), r.as_str(), g) == (want.0, want.1, want.3) && m.starts_with(want.2)
        })
    };
    wait_for(&mut [&mut a, &mut b], &standin, "both nodes realize guard", || {
        says("guard", "Accepted", ("True", "Valid", "valid", 1))
            && says("guard", "Realized", ("True", "Realized", "realized on 2 of 2 nodes at generation 1", 1))
            && says(
                "bad",
                "Realized",
                ("False", "Invalid", "realized on 0 of 2 nodes at generation 1: invalid", 1),
            )
    });
    let (s, reason, message, _) = condition(&standin, "bad", "Accepted").unwrap();
    assert_eq!((s.as_str(), reason.as_str()), ("False", "Invalid"));
    assert_eq!(message, "spec.priority 2000 is not in 0-1000", "the parser's words");
    let report = standin.lease(NS, "weft-node-node-2").expect("node-2's report");
    assert_eq!(report["metadata"]["annotations"][REALIZED_ANNOTATION], r#"{"guard":1}"#);

    // Both compete (two ready nodes): only the holder wrote, on its own listener.
    let first = holder(&standin).expect("a holder");
    let at = |n: &str| if n == "node-1" { 0 } else { 1 };
    let (writers, count) = patches(&standin);
    assert_eq!(writers, BTreeSet::from([at(&first)]), "only {first} patches: {:?}", standin.stats());
    // Nothing changes: nothing is written, however many rounds pass.
    std::thread::sleep(TIMING.period * 5);
    a.sync();
    b.sync();
    assert_eq!(patches(&standin).1, count, "no write without a change");

    // A new generation: fewer nodes until they report it. node-2 does not sync yet.
    write(dir.path(), "guard.yaml", &cnp("guard", 7));
    standin.refresh().unwrap();
    wait_for(&mut [&mut a], &standin, "guard's generation 2 on node-1 only", || {
        says("guard", "Realized", ("False", "Pending", "realized on 1 of 2 nodes at generation 2", 2))
            && says("guard", "Accepted", ("True", "Valid", "valid", 2))
    });
    wait_for(&mut [&mut a, &mut b], &standin, "guard's generation 2 on both", || {
        says("guard", "Realized", ("True", "Realized", "realized on 2 of 2 nodes at generation 2", 2))
    });

    // The holder goes: once its Lease expires, the other node writes.
    let (mut rest, gone) = if first == "node-1" { (b, a) } else { (a, b) };
    drop(gone);
    write(dir.path(), "guard.yaml", &cnp("guard", 8));
    standin.refresh().unwrap();
    wait_for(&mut [&mut rest], &standin, "the other node takes over", || {
        says("guard", "Realized", ("False", "Pending", "realized on 1 of 2 nodes at generation 3", 3))
    });
    assert_eq!(holder(&standin).as_deref(), Some(rest.name));
    assert!(patches(&standin).0.contains(&at(rest.name)), "{:?}", standin.stats());
}
