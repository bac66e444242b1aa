//! `runtimeConfig`: capability arguments the runtime passes in (portMappings
//! and friends). containerd's CRI writes port mapping keys capitalised
//! (`HostPort`), podman lowercase (`hostPort`): both are accepted.

use serde::{Deserialize, Serialize};

/// Capability arguments (the `runtimeConfig` key).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    #[serde(default, alias = "PortMappings")]
    pub port_mappings: Vec<PortMapping>,
}

/// One host port forwarded to the pod (the `portMappings` capability).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    #[serde(alias = "HostPort")]
    pub host_port: u16,
    #[serde(alias = "ContainerPort")]
    pub container_port: u16,
    #[serde(default = "tcp", alias = "Protocol")]
    pub protocol: String,
    #[serde(default, alias = "HostIP", alias = "HostIp", rename = "hostIP")]
    pub host_ip: String,
}

fn tcp() -> String {
    "tcp".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_key_spellings() {
        let cri: RuntimeConfig = serde_json::from_str(
            r#"{"portMappings":[{"HostPort":8080,"ContainerPort":80,"Protocol":"tcp","HostIP":"0.0.0.0"}]}"#,
        )
        .unwrap();
        let podman: RuntimeConfig = serde_json::from_str(
            r#"{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":"0.0.0.0"}]}"#,
        )
        .unwrap();
        assert_eq!(cri, podman);
        assert_eq!(cri.port_mappings[0].host_port, 8080);
        let short: PortMapping = serde_json::from_str(r#"{"hostPort":1,"containerPort":2}"#).unwrap();
        assert_eq!((short.protocol.as_str(), short.host_ip.as_str()), ("tcp", ""));
    }

    #[test]
    fn bad_port_is_an_error() {
        assert!(serde_json::from_str::<PortMapping>(r#"{"hostPort":70000,"containerPort":2}"#).is_err());
    }
}
