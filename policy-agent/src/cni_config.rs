//! What a node needs before kubelet calls weft: the binaries in the CNI bin
//! dir (`weft-agent install-cni`, for an init container) and the conflist in
//! the CNI config dir, written by the agent once its node is ready to carry
//! pods (its pod CIDR known, routes and policy applied), as flannel and
//! kindnet do, so kubelet reports the node Ready only then. Both writes are
//! atomic (a temp file in the same dir, then rename) and skipped when the
//! content is already there.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use serde_json::{json, Value};

/// The conflist's file name (sorts before most others, as CNI picks the first).
pub const CONFLIST: &str = "10-weft.conflist";
/// The binaries `install-cni` copies.
pub const BINARIES: [&str; 2] = ["weft", "weft-ipam"];

/// The conflist for a node with pod CIDRs `pod_cidrs` (one range and one
/// default route per family): weft (with its IPAM in
/// process and the agent's socket, masquerading in `masquerade_backend`, the
/// agent's, and `mtu` when an overlay needs one), chained with portmap when
/// `portmap`.
pub fn conflist(
    pod_cidrs: &[IpNetwork],
    cluster: &[IpNetwork],
    agent_socket: &Path,
    portmap: bool,
    masquerade_backend: &str,
    mtu: Option<u32>,
) -> Value {
    let mut weft = json!({
        "type": "weft",
        "bridge": "weft0",
        "agentSocket": agent_socket.display().to_string(),
        "masqueradeBackend": masquerade_backend,
        "ipam": {
            "type": "weft-ipam",
            "ranges": pod_cidrs.iter().map(|c| json!([{"subnet": c.to_string()}])).collect::<Vec<_>>(),
            "routes": pod_cidrs
                .iter()
                .map(|c| json!({"dst": if c.is_ipv4() { "0.0.0.0/0" } else { "::/0" }}))
                .collect::<Vec<_>>(),
            "dataDir": "/var/lib/cni/weft",
        },
    });
    if let Some(c) = cluster.first() {
        weft["clusterCIDR"] = json!(c.to_string());
    }
    if cluster.len() > 1 {
        weft["clusterCIDRs"] = json!(cluster.iter().map(ToString::to_string).collect::<Vec<_>>());
    }
    if let Some(m) = mtu {
        weft["mtu"] = json!(m);
    }
    let mut plugins = vec![weft];
    if portmap {
        plugins.push(json!({"type": "portmap", "capabilities": {"portMappings": true}}));
    }
    // 1.0.0: the containerd and podman of Debian reject a 1.1.0 result.
    json!({"cniVersion": "1.0.0", "name": "weft", "plugins": plugins})
}

/// Writes `bytes` to `dir/name` atomically unless it already holds them; true if written.
pub fn write_if_changed(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> io::Result<bool> {
    let path = dir.join(name);
    if std::fs::read(&path).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.weft-tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, &path)?;
    Ok(true)
}

/// Copies `BINARIES` from `from` into `bin_dir`; returns the ones written.
pub fn install_binaries(from: &Path, bin_dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for name in BINARIES {
        let src = from.join(name);
        let bytes =
            std::fs::read(&src).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", src.display())))?;
        if write_if_changed(bin_dir, name, &bytes, 0o755)? {
            written.push(bin_dir.join(name));
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_conf::conflist::NetConfList;
    use weft_conf::NetConf;

    #[test]
    fn the_conflist_is_what_a_runtime_and_weft_accept() {
        let v = conflist(
            &["10.244.3.0/24".parse().unwrap(), "fd00::af4:300/120".parse().unwrap()],
            &["10.244.0.0/16".parse().unwrap(), "fd00::af4:0/112".parse().unwrap()],
            Path::new("/run/weft/agent.sock"),
            true,
            "nftables",
            Some(1450),
        );
        let list = NetConfList::parse(v.to_string().as_bytes()).unwrap();
        assert_eq!(list.plugins.len(), 2);
        let weft = NetConf::parse(list.plugin_config(0, None).unwrap().to_string().as_bytes()).unwrap();
        let both: Vec<IpNetwork> = vec!["10.244.0.0/16".parse().unwrap(), "fd00::af4:0/112".parse().unwrap()];
        assert_eq!(weft.cluster_cidrs, both, "the plugin masquerades as the agent does");
        assert_eq!(weft.agent_socket.as_deref(), Some(Path::new("/run/weft/agent.sock")));
        assert_eq!(weft.ipam.raw["ranges"][0][0]["subnet"], "10.244.3.0/24");
        assert_eq!(
            weft.ipam.raw["ranges"][1][0]["subnet"], "fd00::af4:300/120",
            "dual-stack: a range per family"
        );
        assert_eq!(weft.ipam.raw["routes"], json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]));
        assert_eq!(weft.masquerade_backend, weft_conf::MasqueradeBackend::Nftables);
        assert_eq!(weft.mtu, Some(1450), "the overlay's MTU");
        let alone = conflist(
            &["10.244.3.0/24".parse().unwrap()],
            &[],
            Path::new("/run/weft/agent.sock"),
            false,
            "iptables",
            None,
        );
        let alone = NetConfList::parse(alone.to_string().as_bytes()).unwrap();
        assert_eq!(alone.plugins.len(), 1);
        let weft = NetConf::parse(alone.plugin_config(0, None).unwrap().to_string().as_bytes()).unwrap();
        assert_eq!(weft.mtu, None, "host-gw: the plugin takes the node's");
    }

    #[test]
    fn writes_are_atomic_and_skipped_when_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("net.d");
        assert!(write_if_changed(&d, CONFLIST, b"one", 0o644).unwrap());
        assert!(!write_if_changed(&d, CONFLIST, b"one", 0o644).unwrap());
        assert!(write_if_changed(&d, CONFLIST, b"two", 0o644).unwrap());
        assert_eq!(std::fs::read(d.join(CONFLIST)).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "no temp file is left: {names:?}");

        let from = dir.path().join("image");
        std::fs::create_dir(&from).unwrap();
        for b in BINARIES {
            std::fs::write(from.join(b), b.as_bytes()).unwrap();
        }
        let bin = dir.path().join("bin");
        assert_eq!(install_binaries(&from, &bin).unwrap().len(), 2);
        assert!(install_binaries(&from, &bin).unwrap().is_empty(), "already installed");
        let mode = std::fs::metadata(bin.join("weft")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        std::fs::remove_file(from.join("weft-ipam")).unwrap();
        assert!(install_binaries(&from, &bin).unwrap_err().to_string().contains("weft-ipam"));
    }
}
