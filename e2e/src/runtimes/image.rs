//! The one image the runtime tests run, built here because no registry is
//! reachable: Debian's static busybox, as an OCI image layout packed in a tar
//! (an "oci-archive"), which `ctr images import` and `podman load` both read.
//!
//! The archive holds `oci-layout`, `index.json` (naming the image for both
//! runtimes) and `blobs/sha256/` with one uncompressed layer (`/bin/busybox`
//! and an applet symlink per command the tests use), the image config and
//! the manifest. Everything is built in memory and written once.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::RuntimeError;

/// Where Debian's busybox-static puts its binary.
pub const BUSYBOX: &str = "/bin/busybox";
/// The image's name in both runtimes (a local name: nothing is ever pulled).
pub const IMAGE: &str = "localhost/weft-e2e/busybox:1";
/// What a container of the image runs unless told otherwise: nothing but
/// waiting, as a pause container does. busybox is PID 1 here, which ignores
/// SIGTERM, so runtimes stop it with SIGKILL after their grace period (the
/// CRI stops a sandbox with SIGKILL anyway).
pub const IDLE: [&str; 3] = ["/bin/busybox", "sleep", "2147483647"];
/// The applets linked in /bin: a shell and what the tests run in containers.
const APPLETS: [&str; 8] = ["sh", "sleep", "nc", "ping", "ip", "cat", "hostname", "wget"];

const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// A content-addressed blob of the layout.
struct Blob {
    digest: String,
    bytes: Vec<u8>,
}

impl Blob {
    fn new(bytes: Vec<u8>) -> Blob {
        let digest = format!("sha256:{}", hex(&Sha256::digest(&bytes)));
        Blob { digest, bytes }
    }

    fn descriptor(&self, media_type: &str) -> Value {
        json!({"mediaType": media_type, "digest": self.digest, "size": self.bytes.len()})
    }

    fn path(&self) -> String {
        format!("blobs/{}", self.digest.replacen(':', "/", 1))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes the image archive of `busybox` (a static binary) to `dir/image.tar`
/// and returns its path.
pub fn write_archive(busybox: &Path, dir: &Path) -> Result<PathBuf, RuntimeError> {
    let io = |what: String| move |source| RuntimeError::Io { what, source };
    let binary = std::fs::read(busybox).map_err(io(format!("read {}", busybox.display())))?;
    let archive = archive(&binary).map_err(io("build the image archive".into()))?;
    let path = dir.join("image.tar");
    std::fs::write(&path, archive).map_err(io(format!("write {}", path.display())))?;
    Ok(path)
}

/// The oci-archive bytes of an image whose only layer holds `busybox`.
pub fn archive(busybox: &[u8]) -> std::io::Result<Vec<u8>> {
    let layer = Blob::new(layer(busybox)?);
    let config = Blob::new(config(&layer.digest).to_string().into_bytes());
    let manifest = Blob::new(
        json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": config.descriptor(CONFIG_TYPE),
            "layers": [layer.descriptor(LAYER_TYPE)],
        })
        .to_string()
        .into_bytes(),
    );
    let mut entry = manifest.descriptor(MANIFEST_TYPE);
    // containerd reads the first annotation, podman the second.
    entry["annotations"] = json!({
        "io.containerd.image.name": IMAGE,
        "org.opencontainers.image.ref.name": IMAGE,
    });
    let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                       "manifests": [entry]});
    let mut tar = tar::Builder::new(Vec::new());
    append_dir(&mut tar, "blobs/")?;
    append_dir(&mut tar, "blobs/sha256/")?;
    for blob in [&layer, &config, &manifest] {
        append_file(&mut tar, &blob.path(), &blob.bytes, 0o644)?;
    }
    append_file(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644)?;
    append_file(&mut tar, "index.json", index.to_string().as_bytes(), 0o644)?;
    tar.into_inner()
}

/// The image config: linux/amd64-or-whatever-we-run-on, idle by default.
fn config(layer_digest: &str) -> Value {
    json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": IDLE},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    })
}

/// The OCI name of this machine's architecture (runtimes refuse other platforms).
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The layer: /bin/busybox, its applet links, and the directories a
/// runtime mounts over (so none has to create them in the image).
fn layer(busybox: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for d in ["bin/", "etc/", "proc/", "sys/", "dev/", "tmp/"] {
        append_dir(&mut tar, d)?;
    }
    append_file(&mut tar, "bin/busybox", busybox, 0o755)?;
    for applet in APPLETS {
        let mut h = header(tar::EntryType::Symlink, 0o777);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    append_file(&mut tar, "etc/passwd", b"root:x:0:0:root:/:/bin/sh\n", 0o644)?;
    append_file(&mut tar, "etc/group", b"root:x:0:\n", 0o644)?;
    tar.into_inner()
}

fn header(kind: tar::EntryType, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(0);
    h
}

fn append_dir(tar: &mut tar::Builder<Vec<u8>>, path: &str) -> std::io::Result<()> {
    let mut h = header(tar::EntryType::Directory, 0o755);
    tar.append_data(&mut h, path, std::io::empty())
}

fn append_file(tar: &mut tar::Builder<Vec<u8>>, path: &str, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut h = header(tar::EntryType::Regular, mode);
    h.set_size(bytes.len() as u64);
    tar.append_data(&mut h, path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(tar_bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path().unwrap().display().to_string();
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut bytes).unwrap();
                (name, bytes)
            })
            .collect()
    }

    #[test]
    fn the_layout_is_content_addressed_and_names_the_image() {
        let bytes = archive(b"not really busybox").unwrap();
        let files = entries(&bytes);
        let get = |name: &str| files.iter().find(|(n, _)| n == name).map(|(_, b)| b.clone()).unwrap();
        // Every blob is stored under its own digest.
        for (name, content) in
            files.iter().filter(|(n, _)| n.starts_with("blobs/sha256/") && !n.ends_with('/'))
        {
            assert_eq!(name.trim_start_matches("blobs/sha256/"), hex(&Sha256::digest(content)));
        }
        let index: Value = serde_json::from_slice(&get("index.json")).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(m["annotations"]["io.containerd.image.name"], IMAGE);
        let manifest = get(&format!("blobs/{}", m["digest"].as_str().unwrap().replace(':', "/")));
        assert_eq!(m["size"], manifest.len());
        let manifest: Value = serde_json::from_slice(&manifest).unwrap();
        let config_digest = manifest["config"]["digest"].as_str().unwrap();
        let config: Value =
            serde_json::from_slice(&get(&format!("blobs/{}", config_digest.replace(':', "/")))).unwrap();
        // The uncompressed layer's digest is its diff ID.
        assert_eq!(config["rootfs"]["diff_ids"][0], manifest["layers"][0]["digest"]);
        assert_eq!(config["config"]["Cmd"], json!(IDLE));
        let layer =
            get(&format!("blobs/{}", manifest["layers"][0]["digest"].as_str().unwrap().replace(':', "/")));
        let layer = entries(&layer);
        assert!(layer.iter().any(|(n, b)| n == "bin/busybox" && b == b"not really busybox"));
        assert!(layer.iter().any(|(n, _)| n == "bin/sh"));
    }
}
