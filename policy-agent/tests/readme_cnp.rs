//! The README's ClusterNetworkPolicy example means what the README says:
//! its manifests parse, and on a small cluster the policies and the
//! compiled rules (`explain`, which checks both) decide as it describes.

use weft_agent::explain::explain;
use weft_agent::model::{parse_manifests, Model, Protocol};

/// The first ```yaml block after the README's ClusterNetworkPolicy heading.
fn example() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = readme.split("\n## ClusterNetworkPolicy\n").nth(1).expect("the README has the section");
    let block = section.split("```yaml\n").nth(1).expect("with a yaml example");
    block.split("```").next().unwrap().to_string()
}

/// Namespaces monitoring, team-a (team: apps, its own NetworkPolicy: only
/// team-a's pods reach web) and shop; pods on node-1, each serving 80 and 9090.
fn cluster() -> Model {
    let pod = |ns: &str, name: &str, n: u8| {
        format!(
            "---\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{nodeName: node-1, containers: \
             [{{name: c, ports: [{{containerPort: 80}}, {{containerPort: 9090}}]}}]}}\nstatus: {{podIP: 10.244.1.{n}}}\n"
        )
    };
    let text = format!(
        "kind: Node\nmetadata: {{name: node-1}}\nspec: {{podCIDR: 10.244.1.0/24}}\n\
         ---\nkind: Namespace\nmetadata: {{name: monitoring}}\n\
         ---\nkind: Namespace\nmetadata: {{name: team-a, labels: {{team: apps}}}}\n\
         ---\nkind: Namespace\nmetadata: {{name: shop}}\n\
         {}{}{}{}\
         ---\nkind: NetworkPolicy\nmetadata: {{name: own, namespace: team-a}}\n\
         spec: {{podSelector: {{}}, ingress: [{{from: [{{podSelector: {{}}}}]}}]}}\n---\n{}",
        pod("monitoring", "prom", 2),
        pod("team-a", "web", 3),
        pod("team-a", "client", 4),
        pod("shop", "api", 5),
        example()
    );
    parse_manifests(&text).unwrap_or_else(|e| panic!("{e}\n{text}")).into_iter().collect()
}

#[test]
fn the_readme_example_decides_as_the_readme_says() {
    let m = cluster();
    assert_eq!(m.cluster_policies.len(), 2, "both policies of the example are read");
    let cidrs = ["10.244.0.0/16".parse().unwrap()];
    let allowed = |src: &str, dst: &str, port: u16| {
        let e = explain(&m, &cidrs, src, dst, port, Protocol::Tcp).unwrap();
        assert_eq!(e.disagreement, None, "{e}");
        assert_eq!(e.allowed, e.allowed_by_policy, "{e}");
        e.allowed
    };
    // Prometheus reaches 9090 everywhere, past team-a's own isolation ...
    assert!(allowed("monitoring/prom", "shop/api", 9090));
    assert!(allowed("monitoring/prom", "team-a/web", 9090));
    // ... and nothing else: the Baseline deny where nothing isolates, team-a's policy where it does.
    assert!(!allowed("monitoring/prom", "shop/api", 80));
    assert!(!allowed("monitoring/prom", "team-a/web", 80));
    // team-a passes to its owners' NetworkPolicy, which admits its own pods ...
    assert!(allowed("team-a/client", "team-a/web", 80));
    // ... and meets the Baseline deny where no NetworkPolicy isolates.
    assert!(!allowed("team-a/client", "shop/api", 80));
    assert!(!allowed("shop/api", "team-a/web", 80));
}
