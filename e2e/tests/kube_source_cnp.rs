//! The kube source and ClusterNetworkPolicy, in process: a `KubeSource`
//! against the stand-in API server, with and without the CRD (root, for a
//! netns of its own whose loopback carries the API traffic; skips
//! otherwise). Without the CRD the source gives snapshots and says once that
//! CNP is off; with it, CNPs are listed, watched, validated (an invalid
//! update keeps the last good version) and deleted; a CRD installed or
//! removed later is found by the periodic discovery.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weft_agent::model::{Snapshot, Tier};
use weft_agent::source::kube::KubeSource;
use weft_agent::source::Source;
use weft_e2e::apiserver_standin::{kubeconfig, ApiStandin};
use weft_test_support::{root_or_skip, this_test};

/// Discovery is asked again this often here (60 s in the agent).
const RECHECK: Duration = Duration::from_millis(200);
/// Bound on the source reaching a state.
const WAIT: Duration = Duration::from_secs(15);

const NODE: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\nspec: {podCIDR: 10.244.1.0/24}\n";

fn cnp(priority: u32) -> String {
    format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: guard}}\n\
         spec:\n  tier: Admin\n  priority: {priority}\n  subject: {{namespaces: {{}}}}\n  \
         ingress:\n    - {{name: no-y, action: Deny, from: [{{namespaces: {{matchLabels: {{ns: y}}}}}}]}}\n"
    )
}

/// A log every line of this process goes to (nextest runs each test in its own).
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn install() -> Log {
        let log = Log::default();
        let sink = Mutex::new(log.clone());
        let sub = weft_agent::logging::subscriber("info", sink, true, None);
        tracing::subscriber::set_global_default(sub).expect("the only subscriber of this process");
        log
    }

    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap()).lines().filter(|l| l.contains(needle)).count()
    }
}

/// A netns of this thread's own with loopback up, a cluster dir with one
/// node (and `objects`), the stand-in serving it there, and a kubeconfig for it.
fn setup(objects: &[&str]) -> (tempfile::TempDir, ApiStandin, PathBuf) {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
    let up = std::process::Command::new("ip").args(["link", "set", "lo", "up"]).status().expect("ip");
    assert!(up.success(), "lo up in the test's netns");
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "node.yaml", NODE);
    for (i, o) in objects.iter().enumerate() {
        write(dir.path(), &format!("obj-{i}.yaml"), o);
    }
    let standin = ApiStandin::start(dir.path(), &[PathBuf::from("/proc/thread-self/ns/net")]).unwrap();
    let kc = dir.path().join(".kubeconfig");
    std::fs::write(&kc, kubeconfig(standin.port(0).unwrap())).unwrap();
    (dir, standin, kc)
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// Polls `source` until a snapshot of the stand-in's current generation satisfies `ok`.
fn wait_for(
    source: &mut KubeSource,
    standin: &ApiStandin,
    what: &str,
    ok: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(s) = source.poll() {
            last = Some(s);
        }
        if let Some(s) =
            last.as_ref().filter(|s| s.generation == standin.served().unwrap().generation && ok(s))
        {
            return s.clone();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what}: not within {WAIT:?}; last snapshot {last:#?}, stand-in {:?}", standin.served());
}

#[test]
fn without_the_crd_the_source_runs_and_says_once_that_cnp_is_off() {
    if !root_or_skip(&this_test(), "a network namespace of its own") {
        return;
    }
    let log = Log::install();
    let (_dir, standin, kc) = setup(&[&cnp(5)]);
    let mut source = KubeSource::start_with(Some(&kc), RECHECK).unwrap();
    let s =
        wait_for(&mut source, &standin, "a snapshot without CNP", |s| s.model.nodes.contains_key("node-1"));
    assert!(s.model.cluster_policies.is_empty() && s.errors.is_empty(), "{s:#?}");
    assert!(!standin.stats().lists.contains_key("ClusterNetworkPolicy"), "{:?}", standin.stats());
    // Discovery is asked again and again; the line is said once.
    let deadline = Instant::now() + WAIT;
    while standin.stats().cnp_discoveries < 4 {
        assert!(Instant::now() < deadline, "discovery is not asked again: {:?}", standin.stats());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(log.count("ClusterNetworkPolicy is off"), 1);
}

#[test]
fn with_the_crd_cnps_are_listed_validated_and_deleted() {
    if !root_or_skip(&this_test(), "a network namespace of its own") {
        return;
    }
    let (dir, standin, kc) = setup(&[&cnp(5)]);
    standin.serve_cnp(true).unwrap();
    let mut source = KubeSource::start_with(Some(&kc), RECHECK).unwrap();
    let s = wait_for(&mut source, &standin, "the CNP", |s| !s.model.cluster_policies.is_empty());
    let p = &s.model.cluster_policies["guard"];
    assert_eq!((p.tier, p.priority, p.ingress[0].name.as_deref()), (Tier::Admin, 5, Some("no-y")));
    assert_eq!(standin.stats().lists.get("ClusterNetworkPolicy"), Some(&1));

    // Invalid (priority out of range): reported, the last good version kept.
    write(dir.path(), "obj-0.yaml", &cnp(2000));
    standin.refresh().unwrap();
    let s = wait_for(&mut source, &standin, "the invalid update", |s| !s.errors.is_empty());
    assert_eq!(s.model.cluster_policies["guard"].priority, 5, "the last good version");
    assert!(s.errors[0].reason.contains("spec.priority 2000 is not in 0-1000"), "{:?}", s.errors);
    write(dir.path(), "obj-0.yaml", &cnp(7));
    standin.refresh().unwrap();
    let s = wait_for(&mut source, &standin, "the valid update", |s| s.errors.is_empty());
    assert_eq!(s.model.cluster_policies["guard"].priority, 7);

    std::fs::remove_file(dir.path().join("obj-0.yaml")).unwrap();
    standin.refresh().unwrap();
    wait_for(&mut source, &standin, "the deletion", |s| s.model.cluster_policies.is_empty());
}

#[test]
fn a_crd_installed_later_is_found_and_its_removal_too() {
    if !root_or_skip(&this_test(), "a network namespace of its own") {
        return;
    }
    let (_dir, standin, kc) = setup(&[&cnp(5)]);
    let mut source = KubeSource::start_with(Some(&kc), RECHECK).unwrap();
    wait_for(&mut source, &standin, "a snapshot without CNP", |s| s.model.cluster_policies.is_empty());
    standin.serve_cnp(true).unwrap();
    wait_for(&mut source, &standin, "the CNP once the CRD is there", |s| {
        s.model.cluster_policies.contains_key("guard")
    });
    standin.serve_cnp(false).unwrap();
    wait_for(&mut source, &standin, "no CNP once the CRD went", |s| s.model.cluster_policies.is_empty());
}

#[test]
fn discovery_that_failed_at_start_leaves_no_error_once_answered() {
    if !root_or_skip(&this_test(), "a network namespace of its own") {
        return;
    }
    for crd in [false, true] {
        let (_dir, standin, kc) = setup(&[&cnp(5)]);
        standin.serve_cnp(crd).unwrap();
        // Down before the source starts: its first discovery (and lists) are refused.
        standin.down();
        let mut source = KubeSource::start_with(Some(&kc), RECHECK).unwrap();
        standin.up().unwrap();
        let s = wait_for(&mut source, &standin, "a clean snapshot", |s| s.errors.is_empty());
        assert_eq!(s.model.cluster_policies.contains_key("guard"), crd, "{s:#?}");
    }
}
