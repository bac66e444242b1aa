//! Address families of a run (`--family ipv4|ipv6|dual`) and the translation
//! that lets one case, written in IPv4, run in each: an IPv4 address a.b.c.d
//! becomes `fd00::` followed by its 32 bits (10.244.1.5 -> fd00::af4:105) and
//! an IPv4 CIDR of length L the embedded prefix of length 96+L
//! (10.244.1.0/24 -> fd00::af4:100/120). In ipv6 a policy's IPv4 CIDRs are
//! replaced by their translation; in dual an ipBlock (or a CNP network) keeps
//! its IPv4 form and gains its translated twin as one more peer of the same
//! rule, so each family sees the case as written. Pure.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The prefix IPv4 addresses are embedded in: fd00::/96.
const EMBED_PREFIX: u128 = 0xfd00 << 112;

/// Which families a run's pods, nodes and probes use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    #[default]
    Ipv4,
    Ipv6,
    Dual,
}

impl Family {
    /// True if pods and nodes have IPv4 addresses.
    pub fn v4(self) -> bool {
        self != Family::Ipv6
    }

    /// True if pods and nodes have IPv6 addresses.
    pub fn v6(self) -> bool {
        self != Family::Ipv4
    }

    /// The single families a probe runs in: ipv4, ipv6, or both for dual.
    pub fn singles(self) -> Vec<Family> {
        match self {
            Family::Dual => vec![Family::Ipv4, Family::Ipv6],
            f => vec![f],
        }
    }

    /// Plan address `ip` in a single family (dual: its IPv4 form).
    pub fn address(self, ip: Ipv4Addr) -> IpAddr {
        match self {
            Family::Ipv6 => IpAddr::V6(embed(ip)),
            _ => IpAddr::V4(ip),
        }
    }

    /// The addresses a probe of plan address `ip` goes to, one per family of the run.
    pub fn addresses(self, ip: Ipv4Addr) -> Vec<IpAddr> {
        let v4 = self.v4().then_some(IpAddr::V4(ip));
        v4.into_iter().chain(self.v6().then(|| IpAddr::V6(embed(ip)))).collect()
    }
}

impl FromStr for Family {
    type Err = String;
    fn from_str(s: &str) -> Result<Family, String> {
        match s {
            "ipv4" => Ok(Family::Ipv4),
            "ipv6" => Ok(Family::Ipv6),
            "dual" => Ok(Family::Dual),
            _ => Err(format!("unknown family {s:?} (ipv4, ipv6 or dual)")),
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
            Family::Dual => "dual",
        })
    }
}

/// 10.244.1.5 -> fd00::af4:105.
pub fn embed(ip: Ipv4Addr) -> Ipv6Addr {
    Ipv6Addr::from(EMBED_PREFIX | u128::from(u32::from(ip)))
}

/// The plan address embedded in `ip`, if it is in fd00::/96.
pub fn unembed(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    (bits >> 32 == EMBED_PREFIX >> 32).then(|| Ipv4Addr::from(bits as u32))
}

/// 10.244.1.0/24 -> fd00::af4:100/120.
pub fn embed_net(net: Ipv4Network) -> Ipv6Network {
    // 96 + at most 32 is a valid IPv6 prefix.
    Ipv6Network::new(embed(net.network()), 96 + net.prefix()).expect("96+L <= 128")
}

/// An interface address: 172.31.0.11/24 -> fd00::ac1f:b/120 (host bits kept).
pub fn embed_host(addr: Ipv4Network) -> Ipv6Network {
    // 96 + at most 32 is a valid IPv6 prefix.
    Ipv6Network::new(embed(addr.ip()), 96 + addr.prefix()).expect("96+L <= 128")
}

/// The translation of one IPv4 CIDR (or address) string; None if it is not IPv4.
pub fn translate_cidr(s: &str) -> Option<String> {
    if let Ok(ip) = s.parse::<Ipv4Addr>() {
        return Some(embed(ip).to_string());
    }
    let net: Ipv4Network = s.parse().ok()?;
    let host_bits = net.ip() != net.network();
    // Host bits are kept as written, so the agent judges the translation as it judges the original.
    let ip = if host_bits { net.ip() } else { net.network() };
    Some(format!("{}/{}", embed(ip), 96 + net.prefix()))
}

/// `yaml` (one object) as the runner applies it in `family`: a
/// NetworkPolicy's or ClusterNetworkPolicy's CIDRs translated
/// (`translate_policy`), anything else as it is.
pub fn translate_manifest(yaml: &str, family: Family) -> Result<String, String> {
    if family == Family::Ipv4 {
        return Ok(yaml.to_string());
    }
    let mut doc: Value = serde_norway::from_str(yaml).map_err(|e| format!("not YAML: {e}"))?;
    if !matches!(doc.get("kind").and_then(Value::as_str), Some("NetworkPolicy" | "ClusterNetworkPolicy")) {
        return Ok(yaml.to_string());
    }
    translate_policy(&mut doc, family);
    // A serde_json::Value always serialises.
    Ok(serde_norway::to_string(&doc).unwrap_or_default())
}

/// Translates the CIDRs of a NetworkPolicy (ipBlock `cidr` and `except` of
/// every ingress `from` and egress `to` peer) or a ClusterNetworkPolicy
/// (`networks` of every peer) for `family`: ipv4 leaves it, ipv6 replaces
/// each IPv4 CIDR, dual adds each peer's translated twin right after it.
pub fn translate_policy(doc: &mut Value, family: Family) {
    if family == Family::Ipv4 {
        return;
    }
    let Some(spec) = doc.get_mut("spec") else { return };
    for (rules, peers) in [("ingress", "from"), ("egress", "to")] {
        let Some(rules) = spec.get_mut(rules).and_then(Value::as_array_mut) else { continue };
        for rule in rules {
            if let Some(list) = rule.get_mut(peers).and_then(Value::as_array_mut) {
                translate_peers(list, family);
            }
        }
    }
}

/// Translates (ipv6) or twins (dual) each peer of `peers` that holds IPv4 CIDRs.
fn translate_peers(peers: &mut Vec<Value>, family: Family) {
    let mut out = Vec::with_capacity(peers.len());
    for peer in peers.drain(..) {
        let mut twin = peer.clone();
        let changed = translate_peer(&mut twin);
        match (changed, family) {
            (true, Family::Dual) => out.extend([peer, twin]),
            (true, _) => out.push(twin),
            (false, _) => out.push(peer),
        }
    }
    *peers = out;
}

/// Translates the IPv4 CIDRs of one peer in place; true if it had any.
fn translate_peer(peer: &mut Value) -> bool {
    let mut changed = false;
    let mut one = |v: &mut Value| {
        if let Some(t) = v.as_str().and_then(translate_cidr) {
            *v = Value::String(t);
            changed = true;
        }
    };
    if let Some(block) = peer.get_mut("ipBlock") {
        if let Some(cidr) = block.get_mut("cidr") {
            one(cidr);
        }
        for e in block.get_mut("except").and_then(Value::as_array_mut).into_iter().flatten() {
            one(e);
        }
    }
    for n in peer.get_mut("networks").and_then(Value::as_array_mut).into_iter().flatten() {
        one(n);
    }
    changed
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_plan_embeds_in_fd00_96() {
        let ip: Ipv4Addr = "10.244.1.5".parse().unwrap();
        assert_eq!(embed(ip).to_string(), "fd00::af4:105");
        assert_eq!(unembed(embed(ip)), Some(ip));
        assert_eq!(unembed("fd01::af4:105".parse().unwrap()), None);
        assert_eq!(embed("172.31.0.11".parse().unwrap()).to_string(), "fd00::ac1f:b");
        assert_eq!(embed_net("10.244.1.0/24".parse().unwrap()).to_string(), "fd00::af4:100/120");
        assert_eq!(embed_net("10.96.0.0/12".parse().unwrap()).to_string(), "fd00::a60:0/108");
        assert_eq!(embed_host("172.31.0.11/24".parse().unwrap()).to_string(), "fd00::ac1f:b/120");
        assert_eq!(translate_cidr("0.0.0.0/0").as_deref(), Some("fd00::/96"));
        assert_eq!(translate_cidr("10.244.1.5/32").as_deref(), Some("fd00::af4:105/128"));
        assert_eq!(translate_cidr("10.244.1.5").as_deref(), Some("fd00::af4:105"));
        assert_eq!(translate_cidr("fd00::/64"), None);
        assert_eq!(translate_cidr("a-name"), None);
    }

    #[test]
    fn families() {
        let ip: Ipv4Addr = "10.244.2.7".parse().unwrap();
        let v6: IpAddr = "fd00::af4:207".parse().unwrap();
        assert_eq!(Family::Ipv4.addresses(ip), [IpAddr::V4(ip)]);
        assert_eq!(Family::Ipv6.addresses(ip), [v6]);
        assert_eq!(Family::Dual.addresses(ip), [IpAddr::V4(ip), v6]);
        assert_eq!(Family::Dual.singles(), [Family::Ipv4, Family::Ipv6]);
        assert_eq!(Family::Ipv6.singles().iter().map(|f| f.address(ip)).collect::<Vec<_>>(), [v6]);
        for f in [Family::Ipv4, Family::Ipv6, Family::Dual] {
            assert_eq!(f.to_string().parse::<Family>(), Ok(f));
        }
        assert!("ipv5".parse::<Family>().is_err());
    }

    fn policy() -> Value {
        json!({"kind": "NetworkPolicy", "spec": {
            "ingress": [{"from": [
                {"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.1.0/24"]}},
                {"podSelector": {}},
            ]}],
            "egress": [{"to": [{"ipBlock": {"cidr": "172.31.0.100/32"}}], "ports": [{"port": 80}]}],
        }})
    }

    #[test]
    fn ipv6_replaces_each_ipv4_cidr_and_leaves_the_rest() {
        let mut p = policy();
        translate_policy(&mut p, Family::Ipv6);
        assert_eq!(
            p["spec"]["ingress"][0]["from"],
            json!([
                {"ipBlock": {"cidr": "fd00::af4:0/112", "except": ["fd00::af4:100/120"]}},
                {"podSelector": {}},
            ])
        );
        assert_eq!(p["spec"]["egress"][0]["to"], json!([{"ipBlock": {"cidr": "fd00::ac1f:64/128"}}]));
        assert_eq!(p["spec"]["egress"][0]["ports"], json!([{"port": 80}]));
        let mut same = policy();
        translate_policy(&mut same, Family::Ipv4);
        assert_eq!(same, policy());
    }

    #[test]
    fn manifests_are_translated_by_kind() {
        let np = "kind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n\
                  spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}}]}]}\n";
        let got = translate_manifest(np, Family::Ipv6).unwrap();
        assert!(got.contains("cidr: fd00::a00:0/104") && !got.contains("10.0.0.0/8"), "{got}");
        let svc = "kind: Service\nmetadata: {name: s, namespace: x}\nspec: {clusterIP: 10.96.0.10}\n";
        assert_eq!(translate_manifest(svc, Family::Ipv6).unwrap(), svc, "services keep their plan address");
        assert_eq!(translate_manifest(np, Family::Ipv4).unwrap(), np);
        assert!(translate_manifest("a: [", Family::Dual).is_err());
    }

    #[test]
    fn dual_gives_each_ip_block_its_twin_in_the_same_rule() {
        let mut p = policy();
        translate_policy(&mut p, Family::Dual);
        assert_eq!(
            p["spec"]["ingress"][0]["from"],
            json!([
                {"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.1.0/24"]}},
                {"ipBlock": {"cidr": "fd00::af4:0/112", "except": ["fd00::af4:100/120"]}},
                {"podSelector": {}},
            ])
        );
        assert_eq!(p["spec"]["egress"][0]["to"].as_array().unwrap().len(), 2);
        // A ClusterNetworkPolicy's networks are twinned the same way.
        let mut cnp = json!({"spec": {"egress": [{"to": [{"networks": ["192.0.2.0/24"]}]}]}});
        translate_policy(&mut cnp, Family::Dual);
        let want = json!([{"networks": ["192.0.2.0/24"]}, {"networks": ["fd00::c000:200/120"]}]);
        assert_eq!(cnp["spec"]["egress"][0]["to"], want);
    }
}
