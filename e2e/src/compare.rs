//! The weave-npc 1.9.6 seed side by side with weft: an external client
//! connects to a NodePort on node 1 whose only endpoint runs on node 2. The
//! same testbed, services and policies run first under weft's iptables
//! backend, then under weave-npc 1.9.6's rules (`weave.rs`): weave drops the
//! DNATed packet on node 1, where neither end is a local pod; weft accepts it
//! there as transit and enforces the endpoint's ingress policy on node 2.
//! In a dual-stack testbed weft is probed over IPv6 too; weave-npc 1.9.6
//! writes iptables only (IPv4), so its half stays IPv4.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use weft_agent::model::{PortRef, Protocol};

use crate::error::Result;
use crate::family::{embed, Family};
use crate::manifests::ServiceManifest;
use crate::probe::{probe_in, Outcome, Proto};
use crate::Testbed;

const CONVERGE: Duration = Duration::from_secs(20);
const PROBE: Duration = Duration::from_millis(2500);
const NODE_PORT: u16 = 30080;
const ENDPOINT: &str = "demo/c";

/// One situation and what each side did with it.
#[derive(Debug, Clone)]
pub struct Row {
    pub case: &'static str,
    /// What the NetworkPolicy API says: true if the connection must pass.
    pub allowed: bool,
    pub weave: Outcome,
    pub weft: Outcome,
    /// weft over IPv6 (a dual-stack testbed only).
    pub weft6: Option<Outcome>,
}

impl Row {
    /// weft did what the API says.
    pub fn weft_right(&self) -> bool {
        passed(&self.weft) == self.allowed
    }

    /// weft over IPv6 did what the API says (None: not probed).
    pub fn weft6_right(&self) -> Option<bool> {
        self.weft6.as_ref().map(|o| passed(o) == self.allowed)
    }
}

/// True if the endpoint answered.
pub fn passed(o: &Outcome) -> bool {
    *o == Outcome::Connected(ENDPOINT.into())
}

/// The cases: a policy on the endpoint (or none) and whether it admits the flow.
const CASES: [(&str, Option<&str>, bool); 3] = [
    ("no policy", None, true),
    (
        "policy on the endpoint allows TCP 80 from anywhere",
        Some("kind: NetworkPolicy\nmetadata: {name: web, namespace: demo}\nspec:\n  podSelector: {matchLabels: {pod: c}}\n  ingress: [{ports: [{port: 80}]}]\n"),
        true,
    ),
    (
        "policy on the endpoint allows only its own namespace",
        Some("kind: NetworkPolicy\nmetadata: {name: web, namespace: demo}\nspec:\n  podSelector: {matchLabels: {pod: c}}\n  ingress: [{from: [{podSelector: {}}]}]\n"),
        false,
    ),
];

/// Runs every case under weft, then under weave-npc 1.9.6, on one 2-node testbed.
pub fn nodeport_side_by_side() -> Result<Vec<Row>> {
    nodeport_side_by_side_in(false)
}

/// `nodeport_side_by_side`, on a dual-stack testbed if `dual`: weft probed
/// over IPv4 and IPv6, weave over IPv4 (its only family).
pub fn nodeport_side_by_side_in(dual: bool) -> Result<Vec<Row>> {
    let family = if dual { Family::Dual } else { Family::Ipv4 };
    let mut tb = Testbed::up_in(2, family)?;
    tb.add_pod(1, "demo/a")?;
    tb.add_pod(2, ENDPOINT)?;
    let svc = ServiceManifest::new("demo", "web", Ipv4Addr::new(10, 96, 0, 30), &[("pod", "c")])
        .port(80, Protocol::Tcp, PortRef::Number(80))
        .node_port(NODE_PORT);
    tb.apply(&svc.to_yaml())?;
    let to = SocketAddr::from((tb.node_addr(1), NODE_PORT));
    let to6 = dual.then(|| SocketAddr::new(IpAddr::V6(embed(tb.node_addr(1))), NODE_PORT));
    let ext = tb.ext_netns();

    tb.start_agents_with(&["--backend", "iptables"])?;
    let (mut weft, mut weft6) = (Vec::new(), Vec::new());
    for (_, policy, _) in CASES {
        set_policy(&tb, policy)?;
        tb.wait_converged(CONVERGE)?;
        weft.push(probe_in(&ext, to, Proto::Tcp, PROBE)?);
        weft6.push(to6.map(|to6| probe_in(&ext, to6, Proto::Tcp, PROBE)).transpose()?);
    }

    // The same cluster under weave: agents without policy (routes and
    // masquerade only), weave-npc 1.9.6's rules rendered from the state.
    for n in 1..=tb.nodes() {
        tb.stop_agent(n)?;
    }
    tb.start_agents_with(&["--backend", "off"])?;
    let mut weave = Vec::new();
    for (_, policy, _) in CASES {
        set_policy(&tb, policy)?;
        tb.wait_converged(CONVERGE)?;
        tb.apply_weave()?;
        weave.push(probe_in(&ext, to, Proto::Tcp, PROBE)?);
    }
    tb.down()?;
    Ok(CASES
        .iter()
        .zip(weave.into_iter().zip(weft.into_iter().zip(weft6)))
        .map(|((case, _, allowed), (weave, (weft, weft6)))| Row {
            case,
            allowed: *allowed,
            weave,
            weft,
            weft6,
        })
        .collect())
}

/// Makes `policy` the only NetworkPolicy of the demo namespace.
fn set_policy(tb: &Testbed, policy: Option<&str>) -> Result<()> {
    match policy {
        Some(p) => tb.apply(p).map(drop),
        None => tb.delete_object("NetworkPolicy", Some("demo"), "web").map(drop),
    }
}

/// The table a person reads.
pub fn table(rows: &[Row]) -> String {
    let show = |o: &Outcome| match o {
        Outcome::Connected(r) => format!("answered ({r})"),
        other => other.to_string(),
    };
    let w = rows.iter().map(|r| r.case.len()).max().unwrap_or(4);
    let mut out = format!(
        "external client -> NodePort {NODE_PORT} on node 1 -> endpoint {ENDPOINT} on node 2\n\
         {:<w$}  {:<20}  {:<20}  {}\n",
        "", "weave-npc 1.9.6", "weft", "NetworkPolicy says"
    );
    for r in rows {
        let verdict = if r.weft_right() { "" } else { "  <- weft WRONG" };
        out += &format!(
            "{:<w$}  {:<20}  {:<20}  {}{verdict}\n",
            r.case,
            show(&r.weave),
            show(&r.weft),
            if r.allowed { "allow" } else { "deny" }
        );
    }
    out
}
