//! An imitation of kube-proxy in iptables mode (test scaffolding; weft itself
//! never writes KUBE-* chains). `render` is pure: from services and their
//! endpoints it builds the `iptables-restore` payload one node would get (nat
//! table, and filter table for KUBE-FORWARD / KUBE-EXTERNAL-SERVICES). `apply`
//! loads it inside a node's netns with `iptables-restore --noflush` and ensures
//! the jumps from the built-in chains with `-C || -I`; declaring a chain in the
//! payload flushes it, so applying again replaces the rules (idempotent).
//!
//! In ipv6 and dual runs the same rules go to ip6tables too, every address
//! (cluster IP, endpoints, the cluster CIDR) embedded in fd00::/96, as a
//! dual-stack kube-proxy writes one payload per family.
//!
//! Simplifications against the real kube-proxy: chain hashes are FNV-1a (not
//! sha256/base32); a service without endpoints gets no rules (no REJECT); Local
//! NodePorts select among local endpoints inside KUBE-EXT-* (no KUBE-SVL-*);
//! chains of services that disappear are left empty-unreferenced, not deleted.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use weft_agent::model::{Model, Protocol};

use crate::error::{E2eError, Result};
use crate::family::{embed, embed_net, unembed};
use crate::pods::CLUSTER_CIDR;
use crate::services::{self, TrafficPolicy};

/// The masquerade mark kube-proxy uses.
pub const MASQ_MARK: &str = "0x4000/0x4000";
/// Bound on one iptables command inside a node.
const CMD_TIMEOUT: Duration = Duration::from_secs(10);

/// One service port (a Service with several ports is several of these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    pub node_port: Option<u16>,
    pub external_traffic_policy: TrafficPolicy,
}

impl Service {
    /// A TCP ClusterIP service port, policy Cluster, no NodePort.
    pub fn cluster_ip(namespace: &str, name: &str, ip: Ipv4Addr, port: u16) -> Service {
        Service {
            namespace: namespace.into(),
            name: name.into(),
            cluster_ip: ip,
            port,
            protocol: Protocol::Tcp,
            node_port: None,
            external_traffic_policy: TrafficPolicy::Cluster,
        }
    }

    /// "namespace/name:port/proto", the identity the chain hashes are made of.
    fn key(&self) -> String {
        format!("{}/{}:{}/{}", self.namespace, self.name, self.port, self.protocol.as_str())
    }

    fn svc_chain(&self) -> String {
        chain("KUBE-SVC-", &self.key())
    }

    fn ext_chain(&self) -> String {
        chain("KUBE-EXT-", &self.key())
    }

    fn sep_chain(&self, ep: &Endpoint) -> String {
        chain("KUBE-SEP-", &format!("{}>{}:{}", self.key(), ep.ip, ep.port))
    }
}

/// One ready endpoint of a service port: the pod's IP (its plan address: in
/// an ipv6 run the one its IPv6 address embeds), the target port on that pod
/// (a named targetPort may differ per pod), and the node it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub node: u32,
}

/// The ports of `services` with a cluster IP, each with its endpoints: the
/// pods of `model` its selector picks (same namespace, with an IP, on a
/// `node-N`), with the target port resolved on each pod; a pod that lacks a
/// named target port is not an endpoint of that port, as in kube-proxy.
pub fn endpoints<'s>(
    services: impl IntoIterator<Item = &'s services::Service>,
    model: &Model,
) -> Vec<(Service, Vec<Endpoint>)> {
    let mut out = Vec::new();
    for svc in services {
        let Some(cluster_ip) = svc.cluster_ip else { continue };
        for sp in &svc.ports {
            let eps = model
                .pods
                .values()
                .filter(|p| svc.selects(p))
                .filter_map(|p| {
                    let node = p.node.as_deref()?.strip_prefix("node-")?.parse().ok()?;
                    let ip = p.ip.or_else(|| p.ip6.and_then(unembed))?;
                    Some(Endpoint { ip, port: p.resolve_port(&sp.target_port, sp.protocol)?, node })
                })
                .collect();
            let service = Service {
                namespace: svc.namespace.clone(),
                name: svc.name.clone(),
                cluster_ip,
                port: sp.port,
                protocol: sp.protocol,
                node_port: sp.node_port,
                external_traffic_policy: svc.external_traffic_policy,
            };
            out.push((service, eps));
        }
    }
    out
}

/// `prefix` + 16 hex digits of a stable 64-bit FNV-1a hash of `key` (<= 28 chars).
fn chain(prefix: &str, key: &str) -> String {
    format!("{prefix}{:016X}", weft_conf::hash::fnv1a64(key.as_bytes()))
}

/// The rules that pick one of `seps` at random, as kube-proxy writes them.
fn pick(out: &mut Vec<String>, from: &str, comment: &str, seps: &[String]) {
    let n = seps.len();
    for (i, sep) in seps.iter().enumerate() {
        if i + 1 < n {
            let p = 1.0 / (n - i) as f64;
            out.push(format!(
                "-A {from} -m comment --comment \"{comment}\" -m statistic --mode random --probability {p:.10} -j {sep}"
            ));
        } else {
            out.push(format!("-A {from} -m comment --comment \"{comment}\" -j {sep}"));
        }
    }
}

/// Which of iptables and ip6tables a payload is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    V4,
    /// Every address embedded in fd00::/96.
    V6,
}

impl Stack {
    /// The tool of this family: "iptables" -> "ip6tables".
    fn tool(self, base: &str) -> String {
        match self {
            Stack::V4 => base.to_string(),
            Stack::V6 => base.replacen("iptables", "ip6tables", 1),
        }
    }

    /// One host as a CIDR: 10.96.0.10/32 or fd00::a60:a/128.
    fn host(self, ip: Ipv4Addr) -> String {
        match self {
            Stack::V4 => format!("{ip}/32"),
            Stack::V6 => format!("{}/128", embed(ip)),
        }
    }

    /// A DNAT destination: 10.244.1.2:80 or [fd00::af4:102]:80.
    fn to(self, ip: Ipv4Addr, port: u16) -> String {
        match self {
            Stack::V4 => format!("{ip}:{port}"),
            Stack::V6 => format!("[{}]:{port}", embed(ip)),
        }
    }

    fn cluster(self) -> String {
        match self {
            Stack::V4 => CLUSTER_CIDR.to_string(),
            // CLUSTER_CIDR is a constant that parses.
            Stack::V6 => embed_net(CLUSTER_CIDR.parse().expect("a CIDR")).to_string(),
        }
    }
}

/// The `iptables-restore` payload for node `node`: the nat table, then the
/// filter table. `legacy_layout` leaves out KUBE-FORWARD (older kube-proxy).
pub fn render(node: u32, services: &[(Service, Vec<Endpoint>)], legacy_layout: bool) -> String {
    render_in(Stack::V4, node, services, legacy_layout)
}

/// `render` for iptables or (`Stack::V6`) ip6tables.
pub fn render_in(
    stack: Stack,
    node: u32,
    services: &[(Service, Vec<Endpoint>)],
    legacy_layout: bool,
) -> String {
    let cluster = stack.cluster();
    let mut chains: Vec<String> =
        ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"].map(String::from).into();
    let mut rules: Vec<String> = vec![
        format!("-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK} -j RETURN"),
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000".into(),
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully".into(),
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000".into(),
    ];
    let mut drops: Vec<String> = Vec::new();
    for (svc, eps) in services {
        if eps.is_empty() {
            continue;
        }
        let (svc_chain, proto, name) = (svc.svc_chain(), svc.protocol.as_str(), svc.key());
        let seps: Vec<String> = eps.iter().map(|e| svc.sep_chain(e)).collect();
        chains.push(svc_chain.clone());
        let cluster_ip = stack.host(svc.cluster_ip);
        rules.push(format!(
            "-A KUBE-SERVICES -d {cluster_ip} -p {proto} -m comment --comment \"{name} cluster IP\" -m {proto} --dport {} -j {svc_chain}",
            svc.port
        ));
        rules.push(format!(
            "-A {svc_chain} ! -s {cluster} -d {cluster_ip} -p {proto} -m comment --comment \"{name} cluster IP\" -m {proto} --dport {} -j KUBE-MARK-MASQ",
            svc.port
        ));
        pick(&mut rules, &svc_chain, &format!("{name} -> endpoints"), &seps);
        for (ep, sep) in eps.iter().zip(&seps) {
            chains.push(sep.clone());
            rules.push(format!(
                "-A {sep} -s {} -m comment --comment \"{name}\" -j KUBE-MARK-MASQ",
                stack.host(ep.ip)
            ));
            rules.push(format!(
                "-A {sep} -p {proto} -m comment --comment \"{name}\" -m {proto} -j DNAT --to-destination {}",
                stack.to(ep.ip, ep.port)
            ));
        }
        let Some(np) = svc.node_port else { continue };
        let local: Vec<String> =
            eps.iter().zip(&seps).filter(|(e, _)| e.node == node).map(|(_, s)| s.clone()).collect();
        if svc.external_traffic_policy == TrafficPolicy::Local && local.is_empty() {
            // As kube-proxy: no local endpoint, the NodePort drops new connections.
            drops.push(format!(
                "-A KUBE-EXTERNAL-SERVICES -p {proto} -m comment --comment \"{name} has no local endpoints\" -m addrtype --dst-type LOCAL -m {proto} --dport {np} -j DROP"
            ));
            continue;
        }
        let ext = svc.ext_chain();
        chains.push(ext.clone());
        rules.push(format!(
            "-A KUBE-NODEPORTS -p {proto} -m comment --comment \"{name} node port\" -m {proto} --dport {np} -j {ext}"
        ));
        match svc.external_traffic_policy {
            TrafficPolicy::Cluster => {
                rules.push(format!(
                    "-A {ext} -m comment --comment \"masquerade traffic for {name} external destinations\" -j KUBE-MARK-MASQ"
                ));
                rules.push(format!("-A {ext} -j {svc_chain}"));
            }
            TrafficPolicy::Local => {
                rules.push(format!(
                    "-A {ext} -s {cluster} -m comment --comment \"pod traffic for {name} external destinations\" -j {svc_chain}"
                ));
                rules.push(format!(
                    "-A {ext} -m comment --comment \"masquerade LOCAL traffic for {name} external destinations\" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ"
                ));
                rules.push(format!(
                    "-A {ext} -m comment --comment \"route LOCAL traffic for {name} external destinations\" -m addrtype --src-type LOCAL -j {svc_chain}"
                ));
                pick(&mut rules, &ext, &format!("{name} -> local endpoints"), &local);
            }
        }
    }
    rules.push(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
            .into(),
    );
    let mut out = String::from("*nat\n");
    for c in &chains {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    for r in &rules {
        let _ = writeln!(out, "{r}");
    }
    out.push_str("COMMIT\n*filter\n:KUBE-EXTERNAL-SERVICES - [0:0]\n");
    if !legacy_layout {
        out.push_str(":KUBE-FORWARD - [0:0]\n");
    }
    for d in &drops {
        let _ = writeln!(out, "{d}");
    }
    if !legacy_layout {
        let _ = writeln!(
            out,
            "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK} -j ACCEPT"
        );
        out.push_str(
            "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n",
        );
    }
    out.push_str("COMMIT\n");
    out
}

/// The jumps from built-in chains: (table, chain, rule spec after `-j`-less match).
fn jumps(legacy_layout: bool) -> Vec<(&'static str, &'static str, Vec<&'static str>)> {
    let svc = |c: &'static str| {
        ("nat", c, vec!["-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"])
    };
    let ext = |c: &'static str| {
        (
            "filter",
            c,
            vec![
                "-m",
                "conntrack",
                "--ctstate",
                "NEW",
                "-m",
                "comment",
                "--comment",
                "kubernetes externally-visible service portals",
                "-j",
                "KUBE-EXTERNAL-SERVICES",
            ],
        )
    };
    let mut j = vec![
        svc("PREROUTING"),
        svc("OUTPUT"),
        (
            "nat",
            "POSTROUTING",
            vec!["-m", "comment", "--comment", "kubernetes postrouting rules", "-j", "KUBE-POSTROUTING"],
        ),
        ext("INPUT"),
        ext("FORWARD"),
    ];
    if !legacy_layout {
        j.push((
            "filter",
            "FORWARD",
            vec!["-m", "comment", "--comment", "kubernetes forwarding rules", "-j", "KUBE-FORWARD"],
        ));
    }
    j
}

fn run(netns: &Path, argv: &[&str], stdin: Option<&[u8]>) -> Result<std::process::Output> {
    let c = crate::command_in(netns, argv)?;
    crate::exec_command(c, &format!("{argv:?} in {}", netns.display()), stdin, CMD_TIMEOUT)
}

fn check(out: std::process::Output, what: &str) -> Result<()> {
    if out.status.success() {
        return Ok(());
    }
    Err(E2eError::io(format!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim()))(
        std::io::ErrorKind::Other.into(),
    ))
}

/// Loads `render(node, services, legacy_layout)` into the node netns at
/// `netns` and ensures the jumps from PREROUTING, OUTPUT, POSTROUTING (nat)
/// and INPUT, FORWARD (filter). Idempotent. In the legacy layout a FORWARD
/// jump to KUBE-FORWARD and the chain left by an earlier modern apply are removed.
pub fn apply(
    netns: &Path,
    node: u32,
    services: &[(Service, Vec<Endpoint>)],
    legacy_layout: bool,
) -> Result<()> {
    apply_in(Stack::V4, netns, node, services, legacy_layout)
}

/// `apply` with iptables or (`Stack::V6`) ip6tables.
pub fn apply_in(
    stack: Stack,
    netns: &Path,
    node: u32,
    services: &[(Service, Vec<Endpoint>)],
    legacy_layout: bool,
) -> Result<()> {
    let (ipt, restore) = (stack.tool("iptables"), stack.tool("iptables-restore"));
    let payload = render_in(stack, node, services, legacy_layout);
    let out = run(netns, &[&restore, "--noflush", "-w", "5"], Some(payload.as_bytes()))?;
    check(out, &format!("{restore} in {}", netns.display()))?;
    for (table, chain, spec) in jumps(legacy_layout) {
        let mut c = vec![ipt.as_str(), "-w", "5", "-t", table, "-C", chain];
        c.extend(&spec);
        if run(netns, &c, None)?.status.success() {
            continue;
        }
        let mut i = vec![ipt.as_str(), "-w", "5", "-t", table, "-I", chain];
        i.extend(&spec);
        check(run(netns, &i, None)?, &format!("insert jump from {table} {chain}"))?;
    }
    if legacy_layout {
        let spec = ["-m", "comment", "--comment", "kubernetes forwarding rules", "-j", "KUBE-FORWARD"];
        let mut d = vec![ipt.as_str(), "-w", "5", "-t", "filter", "-D", "FORWARD"];
        d.extend(spec);
        while run(netns, &d, None)?.status.success() {}
        // The chain itself goes too (absent already: nothing to do).
        if run(netns, &[&ipt, "-w", "5", "-t", "filter", "-F", "KUBE-FORWARD"], None)?.status.success() {
            check(
                run(netns, &[&ipt, "-w", "5", "-t", "filter", "-X", "KUBE-FORWARD"], None)?,
                "delete KUBE-FORWARD",
            )?;
        }
    }
    Ok(())
}

impl crate::Testbed {
    /// Selects the older layout without KUBE-FORWARD (true) or the modern one,
    /// and re-applies every node's rules.
    pub fn set_kube_proxy_legacy(&self, legacy: bool) -> Result<()> {
        {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.kube_proxy_legacy = legacy;
            crate::run::save(&st)?;
        }
        self.apply_services()
    }

    /// Writes into every node the kube-proxy rules of the Services in the
    /// cluster dir and the pods that back them, as kube-proxy does on each
    /// change of Services or endpoints.
    pub fn apply_services(&self) -> Result<()> {
        let st = self.state();
        let dir = self.cluster_dir();
        let model = weft_agent::source::read_dir(&dir).model;
        let services = endpoints(services::read(&dir)?.values(), &model);
        let v4 = st.family.v4().then_some(Stack::V4);
        for stack in v4.into_iter().chain(st.family.v6().then_some(Stack::V6)) {
            for (i, host) in st.nodes.iter().enumerate() {
                apply_in(stack, &host.path, i as u32 + 1, &services, st.kube_proxy_legacy)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Vec<(Service, Vec<Endpoint>)> {
        let web = Service::cluster_ip("web", "b", Ipv4Addr::new(10, 96, 0, 10), 80);
        let mut np = Service::cluster_ip("web", "np", Ipv4Addr::new(10, 96, 0, 12), 80);
        np.node_port = Some(30080);
        let mut local = np.clone();
        local.name = "np-local".into();
        local.cluster_ip = Ipv4Addr::new(10, 96, 0, 13);
        local.node_port = Some(30081);
        local.external_traffic_policy = TrafficPolicy::Local;
        let ep = |a, n, port| Endpoint { ip: Ipv4Addr::new(10, 244, n as u8, a), port, node: n };
        vec![
            (web, vec![ep(3, 1, 80)]),
            (np, vec![ep(2, 2, 8080), ep(4, 1, 8080)]),
            (local, vec![ep(2, 2, 8080)]),
            (Service::cluster_ip("web", "empty", Ipv4Addr::new(10, 96, 0, 14), 80), vec![]),
        ]
    }

    #[test]
    fn endpoints_come_from_selectors_with_named_ports_resolved_per_pod() {
        use crate::manifests::{pod, serve_ports, to_yaml, ServiceManifest};
        use weft_agent::model::{parse_manifests, PortRef};
        let mut text = String::new();
        let labels = |v: &str| [("app".to_string(), v.to_string())].into();
        let mut odd = serve_ports(&[80]);
        odd[0].port = 8080; // serve-80-tcp is 8080 on this pod
        let docs = [
            pod("web", "a", &labels("web"), 1, &serve_ports(&[80]), Some(Ipv4Addr::new(10, 244, 1, 2))),
            pod("web", "b", &labels("web"), 2, &odd, Some(Ipv4Addr::new(10, 244, 2, 2))),
            pod("web", "pending", &labels("web"), 2, &serve_ports(&[80]), None),
            pod("web", "other", &labels("db"), 1, &serve_ports(&[80]), Some(Ipv4Addr::new(10, 244, 1, 3))),
            pod("db", "a", &labels("web"), 1, &serve_ports(&[80]), Some(Ipv4Addr::new(10, 244, 1, 4))),
        ];
        for d in &docs {
            text += &format!("---\n{}", to_yaml(d));
        }
        let svc = ServiceManifest::new("web", "s", Ipv4Addr::new(10, 96, 0, 10), &[("app", "web")])
            .port(80, Protocol::Tcp, PortRef::Name("serve-80-tcp".into()))
            .node_port(30080)
            .port(81, Protocol::Udp, PortRef::Name("serve-81-udp".into()));
        let mut model = Model::default();
        for o in parse_manifests(&text).unwrap() {
            assert!(model.insert(o));
        }
        let svc = services::parse(serde_norway::from_str(&svc.to_yaml()).unwrap()).unwrap();
        let got = endpoints([&svc], &model);
        assert_eq!(got.len(), 2);
        let (tcp, eps) = &got[0];
        assert_eq!((tcp.port, tcp.node_port), (80, Some(30080)));
        assert_eq!(
            eps,
            &vec![
                Endpoint { ip: Ipv4Addr::new(10, 244, 1, 2), port: 80, node: 1 },
                Endpoint { ip: Ipv4Addr::new(10, 244, 2, 2), port: 8080, node: 2 },
            ]
        );
        assert!(got[1].1.is_empty(), "no pod declares serve-81-udp: no endpoints");
    }

    #[test]
    fn chain_names_are_stable_and_short() {
        let s = &model()[0].0;
        assert_eq!(s.svc_chain(), chain("KUBE-SVC-", "web/b:80/tcp"));
        assert_eq!(s.svc_chain(), s.svc_chain());
        assert_ne!(s.svc_chain(), model()[1].0.svc_chain());
        let sep = s.sep_chain(&Endpoint { ip: Ipv4Addr::new(10, 244, 1, 3), port: 80, node: 1 });
        for c in [s.svc_chain(), s.ext_chain(), sep] {
            assert_eq!(c.len(), 25, "{c}");
        }
        assert_eq!(chain("KUBE-SVC-", ""), "KUBE-SVC-CBF29CE484222325");
    }

    /// The golden payload for node 1, with the hashes replaced by names.
    #[test]
    fn golden_node_1() {
        let m = model();
        let mut got = render(1, &m, false);
        let names = [
            (m[0].0.svc_chain(), "KUBE-SVC-B"),
            (m[1].0.svc_chain(), "KUBE-SVC-NP"),
            (m[1].0.ext_chain(), "KUBE-EXT-NP"),
            (m[2].0.svc_chain(), "KUBE-SVC-NPL"),
            (m[0].0.sep_chain(&m[0].1[0]), "KUBE-SEP-B1"),
            (m[1].0.sep_chain(&m[1].1[0]), "KUBE-SEP-NP2"),
            (m[1].0.sep_chain(&m[1].1[1]), "KUBE-SEP-NP1"),
            (m[2].0.sep_chain(&m[2].1[0]), "KUBE-SEP-NPL2"),
        ];
        for (h, n) in &names {
            got = got.replace(h.as_str(), n);
        }
        let want = r#"*nat
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-B - [0:0]
:KUBE-SEP-B1 - [0:0]
:KUBE-SVC-NP - [0:0]
:KUBE-SEP-NP2 - [0:0]
:KUBE-SEP-NP1 - [0:0]
:KUBE-EXT-NP - [0:0]
:KUBE-SVC-NPL - [0:0]
:KUBE-SEP-NPL2 - [0:0]
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "web/b:80/tcp cluster IP" -m tcp --dport 80 -j KUBE-SVC-B
-A KUBE-SVC-B ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp -m comment --comment "web/b:80/tcp cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-B -m comment --comment "web/b:80/tcp -> endpoints" -j KUBE-SEP-B1
-A KUBE-SEP-B1 -s 10.244.1.3/32 -m comment --comment "web/b:80/tcp" -j KUBE-MARK-MASQ
-A KUBE-SEP-B1 -p tcp -m comment --comment "web/b:80/tcp" -m tcp -j DNAT --to-destination 10.244.1.3:80
-A KUBE-SERVICES -d 10.96.0.12/32 -p tcp -m comment --comment "web/np:80/tcp cluster IP" -m tcp --dport 80 -j KUBE-SVC-NP
-A KUBE-SVC-NP ! -s 10.244.0.0/16 -d 10.96.0.12/32 -p tcp -m comment --comment "web/np:80/tcp cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-NP -m comment --comment "web/np:80/tcp -> endpoints" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-NP2
-A KUBE-SVC-NP -m comment --comment "web/np:80/tcp -> endpoints" -j KUBE-SEP-NP1
-A KUBE-SEP-NP2 -s 10.244.2.2/32 -m comment --comment "web/np:80/tcp" -j KUBE-MARK-MASQ
-A KUBE-SEP-NP2 -p tcp -m comment --comment "web/np:80/tcp" -m tcp -j DNAT --to-destination 10.244.2.2:8080
-A KUBE-SEP-NP1 -s 10.244.1.4/32 -m comment --comment "web/np:80/tcp" -j KUBE-MARK-MASQ
-A KUBE-SEP-NP1 -p tcp -m comment --comment "web/np:80/tcp" -m tcp -j DNAT --to-destination 10.244.1.4:8080
-A KUBE-NODEPORTS -p tcp -m comment --comment "web/np:80/tcp node port" -m tcp --dport 30080 -j KUBE-EXT-NP
-A KUBE-EXT-NP -m comment --comment "masquerade traffic for web/np:80/tcp external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-NP -j KUBE-SVC-NP
-A KUBE-SERVICES -d 10.96.0.13/32 -p tcp -m comment --comment "web/np-local:80/tcp cluster IP" -m tcp --dport 80 -j KUBE-SVC-NPL
-A KUBE-SVC-NPL ! -s 10.244.0.0/16 -d 10.96.0.13/32 -p tcp -m comment --comment "web/np-local:80/tcp cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-NPL -m comment --comment "web/np-local:80/tcp -> endpoints" -j KUBE-SEP-NPL2
-A KUBE-SEP-NPL2 -s 10.244.2.2/32 -m comment --comment "web/np-local:80/tcp" -j KUBE-MARK-MASQ
-A KUBE-SEP-NPL2 -p tcp -m comment --comment "web/np-local:80/tcp" -m tcp -j DNAT --to-destination 10.244.2.2:8080
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
COMMIT
*filter
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
-A KUBE-EXTERNAL-SERVICES -p tcp -m comment --comment "web/np-local:80/tcp has no local endpoints" -m addrtype --dst-type LOCAL -m tcp --dport 30081 -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
"#;
        assert_eq!(got, want, "\n{got}");
    }

    #[test]
    fn ip6tables_gets_the_same_rules_with_embedded_addresses() {
        let (v4, v6) = (render(1, &model(), false), render_in(Stack::V6, 1, &model(), false));
        assert_eq!(v4.lines().count(), v6.lines().count(), "one rule for one rule");
        let web = Service::cluster_ip("web", "b", Ipv4Addr::new(10, 96, 0, 10), 80);
        let svc = web.svc_chain();
        for want in [
            format!("-A KUBE-SERVICES -d fd00::a60:a/128 -p tcp -m comment --comment \"web/b:80/tcp cluster IP\" -m tcp --dport 80 -j {svc}"),
            format!("-A {svc} ! -s fd00::af4:0/112 -d fd00::a60:a/128 -p tcp -m comment --comment \"web/b:80/tcp cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ"),
        ] {
            assert!(v6.lines().any(|l| l == want), "{want}\nnot in\n{v6}");
        }
        assert!(v6.contains("-j DNAT --to-destination [fd00::af4:103]:80"), "{v6}");
        assert!(!v6.contains("10.2"), "no IPv4 address left: {v6}");
        assert_eq!(
            (Stack::V6.tool("iptables-restore"), Stack::V4.tool("iptables")),
            ("ip6tables-restore".into(), "iptables".into())
        );
    }

    #[test]
    fn local_node_with_endpoints_and_legacy_layout() {
        let m = model();
        let got = render(2, &m, true);
        assert!(!got.contains("KUBE-FORWARD"), "{got}");
        assert!(!got.contains("DROP"), "{got}");
        let ext = m[2].0.ext_chain();
        let sep = m[2].0.sep_chain(&m[2].1[0]);
        assert!(got.contains(&format!("--dport 30081 -j {ext}\n")), "{got}");
        assert!(
            got.contains(&format!(
                "-A {ext} -m comment --comment \"web/np-local:80/tcp -> local endpoints\" -j {sep}\n"
            )),
            "{got}"
        );
        assert!(!got.lines().any(|l| l.starts_with(&format!("-A {ext} -j KUBE-MARK-MASQ"))), "{got}");
    }
}
