//! The directory source reads ClusterNetworkPolicy manifests like the other
//! kinds: a valid one joins the model, an invalid update is reported by name
//! and the last good version stays, a deleted file withdraws it.

use weft_agent::model::Tier;
use weft_agent::source::{DirSource, Source};

fn cnp(tier: &str, priority: i64) -> String {
    format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: guard}}\n\
         spec:\n  tier: {tier}\n  priority: {priority}\n  subject: {{namespaces: {{}}}}\n  \
         egress:\n    - {{action: Deny, to: [{{networks: [10.0.0.0/8]}}]}}\n"
    )
}

#[test]
fn cluster_network_policies_from_files_keep_their_last_good_version() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("guard.yaml");
    std::fs::write(&file, cnp("Baseline", 10)).unwrap();
    let mut src = DirSource::new(dir.path());
    let good = src.poll().expect("a first snapshot");
    assert!(good.errors.is_empty(), "{:?}", good.errors);
    let p = &good.model.cluster_policies["guard"];
    assert_eq!((p.tier, p.priority, p.egress.len()), (Tier::Baseline, 10, 1));

    std::fs::write(&file, cnp("Developer", 10)).unwrap();
    let bad = src.poll().expect("the file changed");
    assert_eq!(bad.model.cluster_policies, good.model.cluster_policies, "the last good version stays");
    assert_eq!(bad.errors.len(), 1, "{:?}", bad.errors);
    assert!(
        bad.errors[0].reason.starts_with("ClusterNetworkPolicy guard: spec.tier \"Developer\""),
        "{:?}",
        bad.errors
    );
    assert!(bad.errors[0].reason.contains("keeping its last good version"), "{:?}", bad.errors);

    std::fs::write(&file, cnp("Admin", 3)).unwrap();
    let fixed = src.poll().expect("the file changed");
    assert!(fixed.errors.is_empty() && fixed.model.cluster_policies["guard"].tier == Tier::Admin);

    std::fs::remove_file(&file).unwrap();
    assert!(src.poll().expect("the file went").model.cluster_policies.is_empty());
}
