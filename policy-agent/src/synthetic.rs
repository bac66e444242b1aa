//! A synthetic cluster for the policy benchmarks (`make bench`) and their
//! tiny-scale test: PODS pods over 3 nodes in PODS/10 namespaces (labels app
//! and role; namespaces labelled team), POLICIES policies of the usual
//! shapes: per-app ingress from a role of the namespace on one port and from
//! another team's namespaces on another, default denies, ipBlocks with an
//! except, egress to DNS and the namespace. `backends` applies node-1's share
//! with each backend in a network namespace of its own and measures.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::backend::PolicyBackend;
use crate::iptables::Iptables;
use crate::model::manifest::labels;
use crate::model::{
    LabelSelector, Model, Namespace, NetworkPolicy, Node, Peer, Pod, PolicyPort, PortRef, Protocol, Rule,
};
use crate::nft::Nft;
use crate::policy::{compile, PolicyIr};

/// The synthetic model.
pub fn model(pods: usize, policies: usize) -> Model {
    let mut m = Model::default();
    for n in 0..3u32 {
        let cidr = format!("10.{}.0.0/16", 100 + n).parse().ok();
        let name = format!("node-{}", n + 1);
        m.nodes.insert(
            name.clone(),
            Node { name, pod_cidr: cidr, internal_ip: Some(Ipv4Addr::new(172, 31, 0, 11 + n as u8)) },
        );
    }
    let namespaces = (pods / 10).max(1);
    for i in 0..namespaces {
        let name = format!("ns-{i}");
        let l = labels([("team", format!("t{}", i % 10)), ("kubernetes.io/metadata.name", name.clone())]);
        m.namespaces.insert(name.clone(), Namespace { name, labels: l });
    }
    for p in 0..pods {
        let node = (p % 3) as u32;
        let k = (p / 3) as u32;
        let ip = Ipv4Addr::new(10, 100 + node as u8, (k / 250) as u8, (k % 250 + 2) as u8);
        let pod = Pod {
            namespace: format!("ns-{}", p % namespaces),
            name: format!("pod-{p}"),
            labels: labels([
                ("app", format!("a{}", p % 5)),
                ("role", ["client", "server"][p % 2].to_string()),
            ]),
            node: Some(format!("node-{}", node + 1)),
            ip: Some(ip),
            host_network: false,
            ports: vec![],
        };
        m.pods.insert(pod.key(), pod);
    }
    for i in 0..policies {
        let ns = format!("ns-{}", i % namespaces);
        let port = |n: u16, protocol| PolicyPort { protocol, port: Some(PortRef::Number(n)), end_port: None };
        let sel = |k: &str, v: String| LabelSelector::of_labels([(k, v.as_str())]);
        let (ingress, egress) = match i % 10 {
            // A default deny.
            0 => (Some(vec![]), None),
            // Egress to DNS and to the app's own namespace.
            7 => (
                None,
                Some(vec![
                    Rule { peers: vec![], ports: vec![port(53, Protocol::Udp), port(53, Protocol::Tcp)] },
                    Rule {
                        peers: vec![Peer::Pods { namespaces: None, pods: LabelSelector::default() }],
                        ports: vec![],
                    },
                ]),
            ),
            // ipBlock with an except, one port.
            8 => (
                Some(vec![Rule {
                    peers: vec![Peer::IpBlock {
                        cidr: "10.0.0.0/8".parse().unwrap(),
                        except: vec!["10.100.0.0/16".parse().unwrap()],
                    }],
                    ports: vec![port(9090, Protocol::Tcp)],
                }]),
                None,
            ),
            // The common shape: a role of the namespace on 8080, other teams on 443.
            _ => (
                Some(vec![
                    Rule {
                        peers: vec![Peer::Pods { namespaces: None, pods: sel("role", "client".into()) }],
                        ports: vec![port(8080, Protocol::Tcp)],
                    },
                    Rule {
                        peers: vec![Peer::Pods {
                            namespaces: Some(sel("team", format!("t{}", (i + 1) % 10))),
                            pods: LabelSelector::default(),
                        }],
                        ports: vec![port(443, Protocol::Tcp)],
                    },
                ]),
                None,
            ),
        };
        let p = NetworkPolicy {
            namespace: ns,
            name: format!("policy-{i}"),
            pod_selector: sel("app", format!("a{}", i % 5)),
            ingress,
            egress,
            audit: false,
        };
        m.policies.insert(p.key(), p);
    }
    m
}

/// Runs `f` on a thread in a new network namespace (the tools it runs live there too).
pub fn in_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare: run as root");
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// One backend's figures.
#[derive(Debug, Clone)]
pub struct Figures {
    pub backend: &'static str,
    pub rules: usize,
    pub sets: usize,
    pub elements: usize,
    /// first apply, pod added, pod relabelled, policy changed, resync.
    pub apply: Vec<Duration>,
    /// Compile (model -> IR) of the whole model for node-1.
    pub compile: Duration,
}

/// Applies node-1's share of `model(pods, policies)` with both backends
/// (root: each in a new network namespace) and measures.
pub fn backends(pods: usize, policies: usize) -> Vec<Figures> {
    let m = model(pods, policies);
    let cluster = "10.100.0.0/14".parse().ok();
    let t0 = Instant::now();
    let (ir, _) = compile(&m, "node-1", cluster);
    let compile_time = t0.elapsed();
    let ipt = crate::iptables::render(&ir);
    let nft = crate::nft::render(&ir);
    let counts = [
        (
            "iptables",
            ipt.rules.lines().filter(|l| l.starts_with("-A")).count(),
            ipt.sets.len(),
            ipt.sets.iter().map(|s| s.members.len()).sum::<usize>(),
        ),
        (
            "nftables",
            nft.skeleton.iter().filter(|o| matches!(o, nftables::schema::NfListObject::Rule(_))).count(),
            nft.sets.len(),
            nft.sets.values().map(|s| s.len()).sum(),
        ),
    ];
    counts
        .into_iter()
        .map(|(name, rules, sets, elements)| {
            let apply = in_netns(|| {
                let mut backend: Box<dyn PolicyBackend> =
                    if name == "iptables" { Box::new(Iptables::new()) } else { Box::new(Nft::new()) };
                changes(&m, &ir, cluster, backend.as_mut())
            });
            Figures { backend: name, rules, sets, elements, apply, compile: compile_time }
        })
        .collect()
}

/// Applies `ir`, then a pod added, a pod relabelled, a policy changed, a resync; the times.
fn changes(
    m: &Model,
    ir: &PolicyIr,
    cluster: Option<ipnetwork::Ipv4Network>,
    backend: &mut dyn PolicyBackend,
) -> Vec<Duration> {
    let mut t = Vec::new();
    let mut run = |ir: &PolicyIr, full| {
        let t0 = Instant::now();
        backend.apply(ir, full).expect("apply");
        t.push(t0.elapsed());
    };
    run(ir, true);
    let mut m2 = m.clone();
    if let Some(mut new_pod) = m2.pods.values().next().cloned() {
        new_pod.name = "pod-new".into();
        new_pod.node = Some("node-1".into());
        new_pod.ip = Some(Ipv4Addr::new(10, 100, 200, 2));
        m2.pods.insert(new_pod.key(), new_pod);
    }
    run(&compile(&m2, "node-1", cluster).0, false);
    if let Some(p) = m2.pods.values_mut().next() {
        p.labels.insert("role".into(), "server".into());
    }
    run(&compile(&m2, "node-1", cluster).0, false);
    if let Some(rules) = m2.policies.values_mut().find_map(|p| p.ingress.as_mut().filter(|r| !r.is_empty())) {
        if let Some(port) = rules[0].ports.first_mut() {
            port.port = Some(PortRef::Number(8081));
        }
    }
    run(&compile(&m2, "node-1", cluster).0, false);
    run(&compile(&m2, "node-1", cluster).0, true);
    let _ = backend.cleanup();
    t
}

/// The figures as a Markdown table.
pub fn table(pods: usize, policies: usize, figures: &[Figures]) -> String {
    let ms = |d: &Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
    let mut s = format!(
        "{pods} pods, {policies} policies (node-1's share; compile of the model {} ms)\n\
         | backend | rules | sets | elements | first apply ms | pod added ms | pod relabelled ms | policy changed ms | resync ms |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        figures.first().map(|f| ms(&f.compile)).unwrap_or_default()
    );
    for f in figures {
        let times: Vec<String> = f.apply.iter().map(ms).collect();
        s += &format!(
            "| {} | {} | {} | {} | {} |\n",
            f.backend,
            f.rules,
            f.sets,
            f.elements,
            times.join(" | ")
        );
    }
    s
}
