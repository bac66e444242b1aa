//! The pod socket's wire format: the plugin tells the node agent about a pod
//! (`PodEvent`) and the agent answers (`AgentReply`), one JSON line each way
//! over a unix stream socket. Types only: the client is the plugin's
//! `agent_client`, the server the agent's `pod_socket`.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// What the plugin tells the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum PodEvent {
    /// A pod got `ips` (ADD succeeded up to the result).
    Add {
        #[serde(rename = "containerId")]
        container_id: String,
        ifname: String,
        namespace: String,
        name: String,
        ips: Vec<IpAddr>,
    },
    /// The attachment is being deleted.
    Del {
        #[serde(rename = "containerId")]
        container_id: String,
        ifname: String,
    },
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentReply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let add = PodEvent::Add {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            namespace: "x".into(),
            name: "a".into(),
            ips: vec!["10.244.1.2".parse().unwrap()],
        };
        let text = serde_json::to_string(&add).unwrap();
        assert_eq!(
            text,
            r#"{"op":"add","containerId":"c1","ifname":"eth0","namespace":"x","name":"a","ips":["10.244.1.2"]}"#
        );
        assert_eq!(serde_json::from_str::<PodEvent>(&text).unwrap(), add);
        let del: PodEvent =
            serde_json::from_str(r#"{"op":"del","containerId":"c1","ifname":"eth0"}"#).unwrap();
        assert!(matches!(del, PodEvent::Del { .. }));
    }

    #[test]
    fn a_dual_stack_add_carries_both_families() {
        let text = r#"{"op":"add","containerId":"c1","ifname":"eth0","namespace":"x","name":"a","ips":["10.244.1.2","fd00::af4:102"]}"#;
        let PodEvent::Add { ips, .. } = serde_json::from_str(text).unwrap() else { panic!("not an add") };
        assert_eq!(ips, ["10.244.1.2".parse::<IpAddr>().unwrap(), "fd00::af4:102".parse().unwrap()]);
    }
}
