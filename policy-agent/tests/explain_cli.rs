//! `weft-agent explain` as a user runs it: text or JSON, exit 0 allowed,
//! 1 denied, 64 bad input. No root needed: it evaluates a manifests directory.

use std::process::Command;

const STATE: &str = "
kind: Node
metadata: {name: node-1}
spec: {podCIDR: 10.244.1.0/24}
---
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {nodeName: node-1}
status: {podIP: 10.244.1.2}
---
kind: Pod
metadata: {name: b, namespace: y}
spec: {nodeName: node-1}
status: {podIP: 10.244.1.3}
---
kind: NetworkPolicy
metadata: {name: web-only, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 80}]}]
";

fn explain(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weft-agent"))
        .arg("explain")
        .arg("--source")
        .arg(format!("dir:{}", dir.display()))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn verdicts_exit_codes_and_json() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("state.yaml"), STATE).unwrap();
    let (code, out, _) = explain(dir.path(), &["y/b", "x/a:81"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("DENIED") && out.contains("isolated by x/web-only; no rule admits"), "{out}");
    let (code, out, _) = explain(dir.path(), &["y/b", "x/a:80/tcp"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("admitted by x/web-only rule 1"), "{out}");
    let (code, out, _) = explain(dir.path(), &["--json", "10.244.1.3", "x/a:80/udp"]);
    assert_eq!(code, Some(1));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["allowed"].as_bool(), v["protocol"].as_str()), (Some(false), Some("UDP")), "{out}");
    let (code, _, err) = explain(dir.path(), &["x/nobody", "x/a:80"]);
    assert_eq!(code, Some(64));
    assert!(err.contains("no pod x/nobody"), "{err}");
}
