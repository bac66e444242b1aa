//! CNI results: one internal form, written in whichever version the runtime
//! asked for, and read back (as `prevResult`) from any version we accept.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::error::{CniError, ErrorCode};
use crate::version::Version;

/// A CNI result (ADD's reply, and CHECK/DEL's `prevResult`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

/// An interface the plugin created or configured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// 1.1.0 and later only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for a container interface; absent for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// 1.1.0 and later only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    /// 1.1.0 and later only.
    #[serde(default, rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

/// An address assigned to an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with prefix length, e.g. `10.244.1.5/24`.
    pub address: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route for the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// 1.1.0 and later only (this and the fields below).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
}

impl Route {
    /// A route to `dst`, via `gw` when given.
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>) -> Route {
        Route { dst, gw, mtu: None, advmss: None, priority: None, table: None, scope: None }
    }
}

/// DNS settings, passed through from the network config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

impl CniResult {
    /// The result as JSON in the shape of `version`: `ips[].version` before
    /// 1.0.0, and the 1.1.0-only fields dropped before 1.1.0.
    pub fn to_json(&self, version: Version) -> serde_json::Value {
        let mut r = self.clone();
        if version < Version::V1_1_0 {
            for i in &mut r.interfaces {
                i.mtu = None;
                i.socket_path = None;
                i.pci_id = None;
            }
            for rt in &mut r.routes {
                *rt = Route::new(rt.dst, rt.gw);
            }
        }
        // Serialising these plain data types cannot fail (no maps with
        // non-string keys, no custom serialisers that error).
        let mut v = serde_json::to_value(&r).expect("CniResult serialises");
        v["cniVersion"] = version.as_str().into();
        if version.has_ip_version_field() {
            if let Some(ips) = v.get_mut("ips").and_then(|i| i.as_array_mut()) {
                for (ip, cfg) in ips.iter_mut().zip(&r.ips) {
                    ip["version"] = if cfg.address.is_ipv4() { "4" } else { "6" }.into();
                }
            }
        }
        v
    }

    /// Parses a result of any supported version (a `prevResult`, or a
    /// delegated IPAM plugin's reply). Returns the version it was written in.
    pub fn from_json(v: &serde_json::Value) -> Result<(Version, CniResult), CniError> {
        let version = match v.get("cniVersion").and_then(|c| c.as_str()) {
            Some(s) => s.parse::<Version>()?,
            None => return Err(CniError::new(ErrorCode::DecodingFailure, "result has no cniVersion")),
        };
        // `ips[].version` of pre-1.0 results is implied by the address; serde
        // ignores it (unknown fields are allowed, as in libcni).
        let r: CniResult = serde_json::from_value(v.clone()).map_err(|e| {
            CniError::new(ErrorCode::DecodingFailure, "cannot decode CNI result").with_details(e.to_string())
        })?;
        r.validate()?;
        Ok((version, r))
    }

    /// Checks that every `ips[].interface` points into `interfaces`.
    pub fn validate(&self) -> Result<(), CniError> {
        for ip in &self.ips {
            if let Some(i) = ip.interface {
                if i >= self.interfaces.len() {
                    return Err(CniError::new(
                        ErrorCode::DecodingFailure,
                        format!("result ip {} names interface {i}, which does not exist", ip.address),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// One result with every field set, as the spec's example.
    pub(crate) fn full() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "weft0".into(),
                    mac: Some("0a:58:0a:f4:01:01".into()),
                    mtu: Some(1450),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("0a:58:0a:f4:01:05".into()),
                    mtu: Some(1450),
                    sandbox: Some("/var/run/netns/p1".into()),
                    socket_path: Some("/run/s.sock".into()),
                    pci_id: Some("0000:00:01.0".into()),
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.244.1.5/24".parse().unwrap(),
                    gateway: Some("10.244.1.1".parse().unwrap()),
                    interface: Some(1),
                },
                IpConfig { address: "fd00::5/64".parse().unwrap(), gateway: None, interface: Some(1) },
            ],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.244.1.1".parse().unwrap()),
                mtu: Some(1400),
                advmss: Some(1360),
                priority: Some(10),
                table: Some(100),
                scope: Some(0),
            }],
            dns: Dns {
                nameservers: vec!["10.96.0.10".into()],
                domain: Some("cluster.local".into()),
                search: vec!["svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            },
        }
    }

    fn golden(version: Version) -> serde_json::Value {
        let pre1 = version < Version::V1_0_0;
        let v11 = version >= Version::V1_1_0;
        let mut ips = json!([
            {"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 1},
            {"address": "fd00::5/64", "interface": 1}
        ]);
        if pre1 {
            ips[0]["version"] = "4".into();
            ips[1]["version"] = "6".into();
        }
        let mut eth0 = json!({"name": "eth0", "mac": "0a:58:0a:f4:01:05", "sandbox": "/var/run/netns/p1"});
        let mut br = json!({"name": "weft0", "mac": "0a:58:0a:f4:01:01"});
        let mut route = json!({"dst": "0.0.0.0/0", "gw": "10.244.1.1"});
        if v11 {
            eth0["mtu"] = 1450.into();
            eth0["socketPath"] = "/run/s.sock".into();
            eth0["pciID"] = "0000:00:01.0".into();
            br["mtu"] = 1450.into();
            route = json!({"dst": "0.0.0.0/0", "gw": "10.244.1.1", "mtu": 1400, "advmss": 1360,
                           "priority": 10, "table": 100, "scope": 0});
        }
        json!({
            "cniVersion": version.as_str(),
            "interfaces": [br, eth0],
            "ips": ips,
            "routes": [route],
            "dns": {"nameservers": ["10.96.0.10"], "domain": "cluster.local",
                    "search": ["svc.cluster.local"], "options": ["ndots:5"]}
        })
    }

    #[test]
    fn result_json_matches_the_spec_shape_of_every_version() {
        for v in Version::ALL {
            assert_eq!(full().to_json(v), golden(v), "version {v}");
        }
    }

    #[test]
    fn results_round_trip_through_every_version() {
        for v in Version::ALL {
            let (got_v, back) = CniResult::from_json(&full().to_json(v)).unwrap();
            assert_eq!(got_v, v);
            assert_eq!(back.to_json(v), full().to_json(v), "version {v}");
        }
    }

    #[test]
    fn empty_result_has_only_the_version() {
        assert_eq!(CniResult::default().to_json(Version::V0_3_1), json!({"cniVersion": "0.3.1"}));
    }

    #[test]
    fn bad_results_are_decoding_errors() {
        let cases = [
            json!({"ips": []}),
            json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.1/24"}}),
            json!({"cniVersion": "1.0.0", "ips": [{"address": "not-an-ip"}]}),
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24", "interface": 3}]}),
        ];
        let codes = [6, 1, 6, 6];
        for (c, code) in cases.iter().zip(codes) {
            assert_eq!(CniResult::from_json(c).unwrap_err().code, code, "{c}");
        }
    }
}
