//! Bad input never panics and always maps to a spec error code: every
//! truncation and many one-byte mutations of valid inputs go through each
//! parser (a deterministic stand-in for a fuzzer, cheap enough for `make test`).

use weft_conf::{CniArgs, CniEnv, CniResult, NetConf, NetConfList};

const CONF: &str = r#"{"cniVersion":"1.0.0","name":"weft","type":"weft","bridge":"weft0","mtu":1450,
"hairpinMode":true,"isGateway":true,"clusterCIDR":"10.244.0.0/16","masquerade":true,
"ipam":{"type":"weft-ipam","ranges":[[{"subnet":"10.244.1.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}]},
"runtimeConfig":{"portMappings":[{"HostPort":80,"ContainerPort":8080,"Protocol":"tcp"}]},
"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/run/netns/x"}],
"ips":[{"address":"10.244.1.5/24","gateway":"10.244.1.1","interface":0}],"routes":[{"dst":"0.0.0.0/0"}]},
"cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#;

const LIST: &str = r#"{"cniVersion":"1.0.0","cniVersions":["0.4.0","1.0.0"],"name":"weft",
"plugins":[{"type":"weft"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;

const ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=a;K8S_POD_UID=u";

/// The codes a parser may answer with: the spec's, and none of ours.
const SPEC_CODES: [u32; 8] = [1, 2, 3, 4, 5, 6, 7, 11];

/// Every prefix, and each byte replaced by a few troublesome ones.
fn mutations(s: &str) -> Vec<Vec<u8>> {
    let b = s.as_bytes();
    let mut out: Vec<Vec<u8>> = (0..b.len()).map(|i| b[..i].to_vec()).collect();
    for i in 0..b.len() {
        for r in [b'"', b'{', b']', b'0', b'/', 0xff, b'\\', b'-'] {
            let mut m = b.to_vec();
            m[i] = r;
            out.push(m);
        }
    }
    out
}

fn code_ok(code: u32, what: &str, input: &[u8]) {
    assert!(SPEC_CODES.contains(&code), "{what}: code {code} for {:?}", String::from_utf8_lossy(input));
}

#[test]
fn netconf_mutations_parse_or_give_spec_errors() {
    assert!(NetConf::parse(CONF.as_bytes()).is_ok());
    for m in mutations(CONF) {
        if let Err(e) = NetConf::parse(&m) {
            code_ok(e.code, "NetConf", &m);
        }
        let _ = NetConf::peek_version(&m);
    }
}

#[test]
fn conflist_mutations_parse_or_give_spec_errors() {
    assert!(NetConfList::parse(LIST.as_bytes()).is_ok());
    for m in mutations(LIST) {
        if let Err(e) = NetConfList::parse(&m) {
            code_ok(e.code, "NetConfList", &m);
        }
    }
}

#[test]
fn result_mutations_parse_or_give_spec_errors() {
    let prev = serde_json::from_str::<serde_json::Value>(CONF).unwrap()["prevResult"].to_string();
    for m in mutations(&prev) {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&m) {
            if let Err(e) = CniResult::from_json(&v) {
                code_ok(e.code, "CniResult", &m);
            }
        }
    }
}

#[test]
fn args_and_env_mutations_give_spec_errors() {
    for m in mutations(ARGS) {
        let s = String::from_utf8_lossy(&m);
        if let Err(e) = CniArgs::parse(&s) {
            code_ok(e.code, "CniArgs", &m);
        }
        let env = |k: &str| match k {
            "CNI_COMMAND" => Some("ADD".to_string()),
            "CNI_CONTAINERID" | "CNI_IFNAME" | "CNI_NETNS" | "CNI_PATH" => Some(s.to_string()),
            "CNI_ARGS" => Some(s.to_string()),
            _ => None,
        };
        if let Err(e) = CniEnv::from_lookup(env) {
            code_ok(e.code, "CniEnv", &m);
        }
    }
}
