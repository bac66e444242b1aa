//! weft's network configuration (what the runtime writes on our stdin).
//!
//! Unknown keys are ignored, as the spec allows; known keys are checked
//! strictly, so a typo'd value is an error rather than a silent default.

use std::path::PathBuf;
use std::str::FromStr;

use ipnetwork::IpNetwork;

use serde::Deserialize;

use crate::env::validate_ifname;
use crate::error::{CniError, ErrorCode};
use crate::result::{CniResult, Dns};
use crate::runtime_config::RuntimeConfig;
use crate::version::Version;

/// The default bridge name.
pub const DEFAULT_BRIDGE: &str = "weft0";
/// Where weft-agent listens for pods being added and deleted.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/weft/agent.sock";

/// A parsed network config for the `weft` plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: Version,
    pub name: String,
    pub plugin_type: String,
    pub bridge: String,
    /// None: the MTU of the node's default-route link, else 1500.
    pub mtu: Option<u32>,
    pub hairpin_mode: bool,
    pub is_gateway: bool,
    /// The cluster's pod networks, at most one per family (`clusterCIDR`,
    /// then `clusterCIDRs` for dual-stack): traffic to them is not masqueraded.
    pub cluster_cidrs: Vec<IpNetwork>,
    pub masquerade: bool,
    /// Where the masquerade rules go (`masqueradeBackend`): iptables (the
    /// default, in the host's mode) or nftables. The agent writes it after
    /// its policy backend, so the plugin and the agent never write two.
    pub masquerade_backend: MasqueradeBackend,
    /// The node agent's pod socket (`agentSocket`; "" turns it off): ADD tells
    /// the agent the pod's address there and waits, bounded, until its policy
    /// is in force; DEL tells it the address is going.
    pub agent_socket: Option<PathBuf>,
    /// The `ipam` section, kept raw: its owner parses it.
    pub ipam: IpamSection,
    pub dns: Dns,
    pub prev_result: Option<CniResult>,
    pub runtime_config: RuntimeConfig,
    /// `cni.dev/valid-attachments` of a GC request.
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// `masqueradeBackend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MasqueradeBackend {
    #[default]
    Iptables,
    Nftables,
}

impl MasqueradeBackend {
    /// Its name in a network config.
    pub fn as_str(self) -> &'static str {
        match self {
            MasqueradeBackend::Iptables => "iptables",
            MasqueradeBackend::Nftables => "nftables",
        }
    }
}

/// The `ipam` section: its type, and the whole object for the IPAM plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct IpamSection {
    pub ipam_type: String,
    pub raw: serde_json::Value,
}

/// One (container ID, ifname) pair of a GC request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The wire form, before validation.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    bridge: Option<String>,
    mtu: Option<u32>,
    hairpin_mode: Option<bool>,
    is_gateway: Option<bool>,
    #[serde(rename = "clusterCIDR")]
    cluster_cidr: Option<String>,
    #[serde(rename = "clusterCIDRs", default)]
    cluster_cidrs: Vec<String>,
    masquerade: Option<bool>,
    masquerade_backend: Option<String>,
    agent_socket: Option<String>,
    ipam: Option<serde_json::Value>,
    #[serde(default)]
    dns: Dns,
    prev_result: Option<serde_json::Value>,
    #[serde(default)]
    runtime_config: RuntimeConfig,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
}

/// `clusterCIDR` then `clusterCIDRs`, the same CIDR once, at most one per family.
fn cluster_cidrs(one: Option<&str>, list: &[String]) -> Result<Vec<IpNetwork>, CniError> {
    let mut out: Vec<IpNetwork> = Vec::with_capacity(2);
    for s in one.into_iter().chain(list.iter().map(String::as_str)) {
        let c = parse_cidr(s)?;
        match out.iter().find(|o| o.is_ipv4() == c.is_ipv4()) {
            Some(o) if *o == c => {}
            Some(o) => {
                return Err(invalid(format!("clusterCIDRs: {o} and {c} are of one family; one per family")))
            }
            None => out.push(c),
        }
    }
    Ok(out)
}

impl NetConf {
    /// The attachments a GC must keep. A GC request without
    /// `cni.dev/valid-attachments` is refused rather than read as "keep
    /// nothing", which would free every address of the network.
    pub fn gc_keep(&self) -> Result<&[Attachment], CniError> {
        self.valid_attachments.as_deref().ok_or_else(|| invalid("GC needs cni.dev/valid-attachments"))
    }

    /// Parses and validates stdin. `ipam` is required only when `needs_ipam`
    /// (VERSION and STATUS may arrive with less).
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        let raw: Raw = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(ErrorCode::DecodingFailure, "cannot decode network config")
                .with_details(e.to_string())
        })?;
        let cni_version = match raw.cni_version.as_deref() {
            Some(v) => v.parse()?,
            None => return Err(invalid("cniVersion is required")),
        };
        let name = raw.name.ok_or_else(|| invalid("name is required"))?;
        validate_network_name(&name)?;
        let plugin_type = raw.plugin_type.ok_or_else(|| invalid("type is required"))?;
        let bridge = raw.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        validate_ifname(&bridge).map_err(|e| {
            invalid(format!("bridge name {bridge:?} is not a valid interface name")).with_details(e.details)
        })?;
        if let Some(mtu) = raw.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(invalid(format!("mtu {mtu} is out of range 68-65535")));
            }
        }
        let cluster_cidrs = cluster_cidrs(raw.cluster_cidr.as_deref(), &raw.cluster_cidrs)?;
        let masquerade_backend = match raw.masquerade_backend.as_deref() {
            None => MasqueradeBackend::Iptables,
            Some(name) => [MasqueradeBackend::Iptables, MasqueradeBackend::Nftables]
                .into_iter()
                .find(|b| b.as_str() == name)
                .ok_or_else(|| invalid(format!("masqueradeBackend {name:?}: iptables or nftables")))?,
        };
        let ipam = raw.ipam.ok_or_else(|| invalid("ipam is required"))?;
        let ipam_type = ipam
            .get("type")
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| invalid("ipam.type is required"))?
            .to_string();
        let prev_result = raw
            .prev_result
            .map(|p| CniResult::from_json(&with_version(p, cni_version)).map(|(_, r)| r))
            .transpose()?;
        Ok(NetConf {
            cni_version,
            name,
            plugin_type,
            bridge,
            mtu: raw.mtu,
            hairpin_mode: raw.hairpin_mode.unwrap_or(true),
            is_gateway: raw.is_gateway.unwrap_or(true),
            cluster_cidrs,
            masquerade: raw.masquerade.unwrap_or(true),
            masquerade_backend,
            agent_socket: match raw.agent_socket.as_deref() {
                None => Some(PathBuf::from(DEFAULT_AGENT_SOCKET)),
                Some("") => None,
                Some(p) if !p.starts_with('/') => {
                    return Err(invalid(format!("agentSocket {p:?} must be an absolute path")))
                }
                Some(p) => Some(PathBuf::from(p)),
            },
            ipam: IpamSection { ipam_type, raw: ipam },
            dns: raw.dns,
            prev_result,
            runtime_config: raw.runtime_config,
            valid_attachments: raw.valid_attachments,
        })
    }

    /// Just the `cniVersion` of a config, best effort, so that even an error
    /// about the rest of it is written in the version the runtime asked for.
    pub fn peek_version(bytes: &[u8]) -> Option<Version> {
        #[derive(Deserialize)]
        struct V {
            #[serde(rename = "cniVersion")]
            v: String,
        }
        serde_json::from_slice::<V>(bytes).ok()?.v.parse().ok()
    }
}

/// A prevResult without its own cniVersion takes the config's (libcni
/// writes it, but hand-written configs often omit it).
fn with_version(mut p: serde_json::Value, v: Version) -> serde_json::Value {
    if let Some(o) = p.as_object_mut() {
        o.entry("cniVersion").or_insert_with(|| v.as_str().into());
    }
    p
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(ErrorCode::InvalidNetworkConfig, msg)
}

/// Parses a network CIDR; host bits must be zero (`10.244.0.0/16`, not `10.244.0.1/16`).
pub fn parse_cidr(s: &str) -> Result<IpNetwork, CniError> {
    let n =
        IpNetwork::from_str(s).map_err(|e| invalid(format!("bad CIDR {s:?}")).with_details(e.to_string()))?;
    if n.network() != n.ip() {
        return Err(invalid(format!("bad CIDR {s:?}")).with_details(format!(
            "host bits are set; did you mean {}/{}?",
            n.network(),
            n.prefix()
        )));
    }
    Ok(n)
}

/// The spec's rule for network names: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
fn validate_network_name(name: &str) -> Result<(), CniError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
        Ok(())
    } else {
        Err(invalid(format!("invalid network name {name:?}"))
            .with_details("must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<NetConf, CniError> {
        NetConf::parse(v.to_string().as_bytes())
    }

    fn minimal() -> serde_json::Value {
        json!({"cniVersion": "1.0.0", "name": "weft", "type": "weft",
               "ipam": {"type": "weft-ipam", "ranges": [[{"subnet": "10.244.1.0/24"}]]}})
    }

    #[test]
    fn defaults() {
        let c = parse(minimal()).unwrap();
        assert_eq!(c.bridge, "weft0");
        assert_eq!(c.mtu, None);
        assert!(c.hairpin_mode && c.is_gateway && c.masquerade);
        assert!(c.cluster_cidrs.is_empty());
        assert_eq!(c.ipam.ipam_type, "weft-ipam");
        assert_eq!(c.prev_result, None);
        assert!(c.runtime_config.port_mappings.is_empty());
        assert_eq!(c.agent_socket.as_deref(), Some(std::path::Path::new(DEFAULT_AGENT_SOCKET)));
    }

    #[test]
    fn masquerade_backend_is_iptables_unless_told() {
        let mut v = minimal();
        assert_eq!(parse(v.clone()).unwrap().masquerade_backend, MasqueradeBackend::Iptables);
        v["masqueradeBackend"] = json!("nftables");
        assert_eq!(parse(v.clone()).unwrap().masquerade_backend, MasqueradeBackend::Nftables);
        v["masqueradeBackend"] = json!("ipfw");
        let e = parse(v).unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("iptables or nftables"), "{}", e.msg);
    }

    #[test]
    fn cluster_cidrs_one_per_family() {
        let mut v = minimal();
        v["clusterCIDR"] = json!("10.244.0.0/16");
        v["clusterCIDRs"] = json!(["10.244.0.0/16", "fd00::af4:0/112"]);
        let want: Vec<IpNetwork> = vec!["10.244.0.0/16".parse().unwrap(), "fd00::af4:0/112".parse().unwrap()];
        assert_eq!(parse(v.clone()).unwrap().cluster_cidrs, want);
        v["clusterCIDRs"] = json!(["10.96.0.0/12"]);
        let e = parse(v.clone()).unwrap_err();
        assert!((e.code, e.msg.contains("one per family")) == (7, true), "{}", e.msg);
        v["clusterCIDRs"] = json!(["fd00::/300"]);
        assert_eq!(parse(v).unwrap_err().code, 7);
    }

    #[test]
    fn agent_socket_can_move_or_be_turned_off() {
        let mut v = minimal();
        v["agentSocket"] = json!("/run/x/agent.sock");
        assert_eq!(parse(v.clone()).unwrap().agent_socket, Some(PathBuf::from("/run/x/agent.sock")));
        v["agentSocket"] = json!("");
        assert_eq!(parse(v.clone()).unwrap().agent_socket, None);
        v["agentSocket"] = json!("relative.sock");
        assert_eq!(parse(v).unwrap_err().code, 7);
    }

    #[test]
    fn every_key_of_the_readme_example() {
        let c = parse(json!({
            "cniVersion": "1.0.0", "name": "weft", "type": "weft", "bridge": "br-pods",
            "mtu": 1450, "hairpinMode": false, "isGateway": false,
            "clusterCIDR": "10.244.0.0/16", "masquerade": false,
            "ipam": {"type": "weft-ipam", "ranges": [[{"subnet": "10.244.1.0/24"}]],
                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "/var/lib/cni/weft"},
            "dns": {"nameservers": ["10.96.0.10"]},
            "runtimeConfig": {"portMappings": [{"HostPort": 80, "ContainerPort": 8080, "Protocol": "tcp"}]},
            "somePluginKey": {"ignored": true}
        }))
        .unwrap();
        assert_eq!(c.bridge, "br-pods");
        assert_eq!(c.mtu, Some(1450));
        assert!(!c.hairpin_mode && !c.is_gateway && !c.masquerade);
        assert_eq!(c.cluster_cidrs, ["10.244.0.0/16".parse().unwrap()]);
        assert_eq!(c.dns.nameservers, ["10.96.0.10"]);
        assert_eq!(c.runtime_config.port_mappings[0].container_port, 8080);
    }

    #[test]
    fn prev_result_of_an_older_version_is_read() {
        let mut v = minimal();
        v["cniVersion"] = "0.4.0".into();
        v["prevResult"] = json!({"cniVersion": "0.4.0",
            "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}],
            "ips": [{"version": "4", "address": "10.244.1.2/24", "interface": 0}]});
        let p = parse(v).unwrap().prev_result.unwrap();
        assert_eq!(p.ips[0].address.to_string(), "10.244.1.2/24");
        assert_eq!(p.interfaces[0].sandbox.as_deref(), Some("/run/netns/x"));
    }

    #[test]
    fn gc_attachments() {
        let mut v = minimal();
        v["cniVersion"] = "1.1.0".into();
        v["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
        let a = parse(v.clone()).unwrap().valid_attachments.unwrap();
        assert_eq!(parse(v).unwrap().gc_keep().unwrap().len(), 1);
        assert_eq!(parse(minimal()).unwrap().gc_keep().unwrap_err().code, 7);
        assert_eq!(a, [Attachment { container_id: "c1".into(), ifname: "eth0".into() }]);
    }

    /// Each bad input and the spec code it must produce.
    #[test]
    fn errors_carry_spec_codes() {
        let with = |k: &str, val: serde_json::Value| {
            let mut v = minimal();
            v[k] = val;
            v
        };
        let without = |k: &str| {
            let mut v = minimal();
            v.as_object_mut().unwrap().remove(k);
            v
        };
        let cases: Vec<(serde_json::Value, u32)> = vec![
            (with("cniVersion", "0.2.0".into()), 1),
            (with("cniVersion", "2.0.0".into()), 1),
            (without("cniVersion"), 7),
            (without("name"), 7),
            (without("type"), 7),
            (without("ipam"), 7),
            (with("ipam", json!({"ranges": []})), 7),
            (with("name", "bad name".into()), 7),
            (with("bridge", "a-bridge-name-too-long".into()), 7),
            (with("mtu", 10.into()), 7),
            (with("mtu", "big".into()), 6),
            (with("clusterCIDR", "10.244.0.0/33".into()), 7),
            (with("clusterCIDR", "10.244.1.1/16".into()), 7),
            (with("hairpinMode", "yes".into()), 6),
            (with("prevResult", json!({"cniVersion": "1.0.0", "ips": [{"address": "x"}]})), 6),
        ];
        for (v, code) in cases {
            let e = parse(v.clone()).unwrap_err();
            assert_eq!(e.code, code, "{v}: {e}");
        }
        assert_eq!(NetConf::parse(b"{not json").unwrap_err().code, 6);
        assert_eq!(NetConf::parse(b"").unwrap_err().code, 6);
    }

    #[test]
    fn peek_version_survives_a_bad_config() {
        assert_eq!(NetConf::peek_version(br#"{"cniVersion":"0.3.1","mtu":"x"}"#), Some(Version::V0_3_1));
        assert_eq!(NetConf::peek_version(b"garbage"), None);
    }
}
