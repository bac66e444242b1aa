//! The standalone `weft-ipam` binary as a runtime's main plugin would exec
//! it: the CNI env, the whole network config on stdin, a result or a CNI
//! error on stdout. An IPAM plugin touches no netns, so no root is needed.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

fn ipam(cmd: &str, id: &str, conf: &Value) -> (i32, Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft-ipam"))
        .env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", "/run/netns/unused")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v = if stdout.trim().is_empty() { Value::Null } else { serde_json::from_str(&stdout).unwrap() };
    (out.status.code().unwrap_or(-1), v)
}

/// A bridge-plugin config delegating to weft-ipam, as the reference bridge would receive it.
fn conf(dir: &std::path::Path, version: &str) -> Value {
    json!({"cniVersion": version, "name": "net1", "type": "bridge", "bridge": "cni0",
           "ipam": {"type": "weft-ipam", "ranges": [[{"subnet": "10.22.0.0/29"}]],
                    "routes": [{"dst": "0.0.0.0/0"}], "dataDir": dir.display().to_string()}})
}

#[test]
fn add_check_del_gc_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf(dir.path(), "1.1.0");
    let (code, r) = ipam("ADD", "c1", &c);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["cniVersion"], "1.1.0");
    assert_eq!(r["ips"][0]["address"], "10.22.0.2/29");
    assert_eq!(r["ips"][0]["gateway"], "10.22.0.1");
    assert_eq!(r["routes"], json!([{"dst": "0.0.0.0/0"}]));
    assert!(r.get("interfaces").is_none(), "an IPAM result has no interfaces: {r}");
    assert!(dir.path().join("net1/10.22.0.2").exists());
    // The same attachment again gets the same address.
    assert_eq!(ipam("ADD", "c1", &c).1["ips"][0]["address"], "10.22.0.2/29");

    let mut chk = c.clone();
    chk["prevResult"] = r.clone();
    assert_eq!(ipam("CHECK", "c1", &chk).0, 0);
    assert_eq!(ipam("CHECK", "c2", &chk).1["code"], 103, "c2 does not hold c1's address");

    assert_eq!(ipam("DEL", "c1", &c).0, 0);
    assert!(!dir.path().join("net1/10.22.0.2").exists());
    assert_eq!(ipam("DEL", "c1", &c).0, 0, "DEL twice succeeds");

    // GC keeps only the valid attachment.
    ipam("ADD", "keep", &c);
    ipam("ADD", "drop", &c);
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    assert_eq!(ipam("GC", "", &c).1["code"], 7, "a GC without the valid list is refused");
    assert_eq!(ipam("GC", "", &gc).0, 0);
    let (_, kept) = ipam("ADD", "keep", &c);
    assert!(dir
        .path()
        .join("net1")
        .join(kept["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap())
        .exists());
    let held: Vec<_> = std::fs::read_dir(dir.path().join("net1"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect();
    assert_eq!(held.len(), 1, "{held:?}");
}

#[test]
fn status_exhaustion_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf(dir.path(), "1.1.0");
    assert_eq!(ipam("STATUS", "", &c).0, 0);
    // A /29 has 5 usable addresses after network, gateway and broadcast.
    for i in 0..5 {
        assert_eq!(ipam("ADD", &format!("c{i}"), &c).0, 0);
    }
    let (code, e) = ipam("ADD", "c5", &c);
    assert_ne!(code, 0);
    assert_eq!(e["code"], 101, "{e}");
    assert_eq!(ipam("STATUS", "", &c).1["code"], 50);
    // Bad input: the spec's codes, in the requested version.
    let (_, e) = ipam(
        "ADD",
        "x",
        &json!({"cniVersion": "0.4.0", "name": "n", "ipam": {"type": "weft-ipam", "ranges": [[{"subnet": "10.0.0.1/24"}]]}}),
    );
    assert_eq!((e["code"].as_u64(), e["cniVersion"].as_str()), (Some(7), Some("0.4.0")), "{e}");
    let (_, e) = ipam("ADD", "x", &json!("not a config"));
    assert_eq!(e["code"], 6);
    assert_eq!(ipam("GC", "", &conf(dir.path(), "1.0.0")).1["code"], 1, "GC needs 1.1.0");
    let (code, v) = ipam("VERSION", "", &json!({"cniVersion": "0.3.1"}));
    assert_eq!((code, v["cniVersion"].as_str()), (0, Some("0.3.1")));
}
