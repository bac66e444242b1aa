//! The two policy backends on one synthetic model, side by side: rules, sets
//! and set elements, and the time to apply (first full apply, a pod added, a
//! pod relabelled, a policy changed). Root: each backend runs in a network
//! namespace of its own, created here. Usage:
//!
//! ```sh
//! cargo run --release -p weft-agent --example backends -- [PODS] [POLICIES]
//! ```
//!
//! The model: PODS pods over 3 nodes in PODS/10 namespaces (labels app, role;
//! namespaces team), POLICIES policies of the usual shapes (per-app ingress
//! from a role in the namespace on one port, from other teams' namespaces on
//! another, a few default-denies, ipBlocks with excepts, egress to DNS-like
//! ports). The figures are for node-1's share.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use weft_agent::backend::PolicyBackend;
use weft_agent::iptables::Iptables;
use weft_agent::model::{
    LabelSelector, Labels, Model, Namespace, NetworkPolicy, Node, Peer, Pod, PolicyPort, PortRef, Protocol,
    Rule,
};
use weft_agent::nft::Nft;
use weft_agent::policy::compile;

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn model(pods: usize, policies: usize) -> Model {
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
        let l = labels(&[("team", format!("t{}", i % 10)), ("kubernetes.io/metadata.name", name.clone())]);
        m.namespaces.insert(name.clone(), Namespace { name, labels: l });
    }
    for p in 0..pods {
        let node = (p % 3) as u32;
        let k = (p / 3) as u32;
        let ip = Ipv4Addr::new(10, 100 + node as u8, (k / 250) as u8, (k % 250 + 2) as u8);
        let pod = Pod {
            namespace: format!("ns-{}", p % namespaces),
            name: format!("pod-{p}"),
            labels: labels(&[
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
fn in_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare: run as root");
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (pods, policies) = (args.first().copied().unwrap_or(1000), args.get(1).copied().unwrap_or(100));
    let m = model(pods, policies);
    let cluster = "10.100.0.0/14".parse().ok();
    let (ir, _) = compile(&m, "node-1", cluster);
    println!(
        "model: {pods} pods over 3 nodes, {} namespaces, {policies} policies; node-1: {} local pods, {} + {} isolated, {} triples, {} groups",
        m.namespaces.len(),
        ir.local.len(),
        ir.ingress.isolated.len(),
        ir.egress.isolated.len(),
        ir.ingress.triples.len() + ir.egress.triples.len(),
        ir.ingress.groups.len() + ir.egress.groups.len()
    );
    let ipt = weft_agent::iptables::render(&ir);
    let nft = weft_agent::nft::render(&ir);
    let ipt_rules = ipt.rules.lines().filter(|l| l.starts_with("-A")).count();
    let ipt_elems: usize = ipt.sets.iter().map(|s| s.members.len()).sum();
    let nft_rules =
        nft.skeleton.iter().filter(|o| matches!(o, nftables::schema::NfListObject::Rule(_))).count();
    let nft_elems: usize = nft.sets.values().map(|s| s.len()).sum();
    let mut rows: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for name in ["iptables", "nftables"] {
        let times = in_netns(|| {
            let mut backend: Box<dyn PolicyBackend> =
                if name == "iptables" { Box::new(Iptables::new()) } else { Box::new(Nft::new()) };
            let mut t = Vec::new();
            let mut run = |ir: &weft_agent::policy::PolicyIr, full| {
                let t0 = Instant::now();
                backend.apply(ir, full).expect("apply");
                t.push(t0.elapsed());
            };
            run(&ir, true);
            let mut m2 = m.clone();
            let mut new_pod = m2.pods["ns-0/pod-0"].clone();
            new_pod.name = "pod-new".into();
            new_pod.ip = Some(Ipv4Addr::new(10, 100, 200, 2));
            m2.pods.insert(new_pod.key(), new_pod);
            run(&compile(&m2, "node-1", cluster).0, false);
            if let Some(p) = m2.pods.get_mut("ns-0/pod-0") {
                p.labels.insert("role".into(), "server".into());
            }
            run(&compile(&m2, "node-1", cluster).0, false);
            if let Some(p) = m2.policies.get_mut("ns-1/policy-1") {
                if let Some(rules) = p.ingress.as_mut() {
                    rules[0].ports[0].port = Some(PortRef::Number(8081));
                }
            }
            run(&compile(&m2, "node-1", cluster).0, false);
            run(&compile(&m2, "node-1", cluster).0, true);
            backend.cleanup().expect("cleanup");
            t
        });
        let (rules, sets, elems) = match name {
            "iptables" => (ipt_rules, ipt.sets.len(), ipt_elems),
            _ => (nft_rules, nft.sets.len(), nft_elems),
        };
        let mut row = vec![rules.to_string(), sets.to_string(), elems.to_string()];
        row.extend(times.iter().map(|d| ms(*d)));
        rows.insert(name, row);
    }
    println!("| backend | rules | sets | elements | first apply ms | pod added ms | pod relabelled ms | policy changed ms | resync ms |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (name, row) in rows {
        println!("| {name} | {} |", row.join(" | "));
    }
}
