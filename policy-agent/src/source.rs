//! Where cluster state comes from. One trait; `DirSource` reads a directory of
//! Kubernetes YAML manifests (the testbed's control plane). The Kubernetes API
//! source (kube-rs watch) comes later behind the same trait.
//!
//! The directory is polled: each `poll` reads every `*.yaml`/`*.yml` file and
//! re-parses only when the raw bytes changed. A malformed file is reported in
//! the snapshot's errors and skipped, never fatal. `read_dir` is a pure
//! function of the directory's contents, so the testbed computes the same
//! generation as the agent.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::model::{parse_manifests, Model, Snapshot, SourceError};

/// A source of cluster state.
pub trait Source {
    /// The current snapshot if it differs from the last one returned (or on the
    /// first call), else None. Never blocks for long.
    fn poll(&mut self) -> Option<Snapshot>;
}

/// A directory of manifests, polled.
pub struct DirSource {
    dir: PathBuf,
    /// The raw files seen last time (path, bytes), to skip re-parsing.
    last_raw: Option<Vec<(PathBuf, Vec<u8>)>>,
    last: Option<Snapshot>,
}

impl DirSource {
    /// A source over `dir` (which may not exist yet: an empty model then).
    pub fn new(dir: impl Into<PathBuf>) -> DirSource {
        DirSource { dir: dir.into(), last_raw: None, last: None }
    }
}

impl Source for DirSource {
    fn poll(&mut self) -> Option<Snapshot> {
        let (raw, mut errors) = read_files(&self.dir);
        if self.last_raw.as_ref() == Some(&raw) {
            return None;
        }
        let snap = snapshot_of(&raw, &mut errors);
        self.last_raw = Some(raw);
        if self.last.as_ref() == Some(&snap) {
            return None;
        }
        self.last = Some(snap.clone());
        Some(snap)
    }
}

/// The snapshot of the manifests in `dir` right now (what `DirSource::poll` would return).
pub fn read_dir(dir: &Path) -> Snapshot {
    let (raw, mut errors) = read_files(dir);
    snapshot_of(&raw, &mut errors)
}

fn is_manifest(p: &Path) -> bool {
    let hidden = p.file_name().and_then(|n| n.to_str()).is_none_or(|n| n.starts_with('.'));
    !hidden && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml") | Some("yml"))
}

/// The manifest files of `dir`, sorted by path, with their bytes. A file that
/// vanishes between listing and reading is simply not there.
fn read_files(dir: &Path) -> (Vec<(PathBuf, Vec<u8>)>, Vec<SourceError>) {
    let mut errors = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Vec::new(), errors),
        Err(e) => {
            errors.push(SourceError { file: dir.display().to_string(), reason: e.to_string() });
            return (Vec::new(), errors);
        }
    };
    let mut paths: Vec<PathBuf> =
        entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| is_manifest(p)).collect();
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        match std::fs::read(&p) {
            Ok(bytes) => out.push((p, bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(SourceError { file: p.display().to_string(), reason: e.to_string() }),
        }
    }
    (out, errors)
}

fn snapshot_of(raw: &[(PathBuf, Vec<u8>)], errors: &mut Vec<SourceError>) -> Snapshot {
    let mut model = Model::default();
    // Which file declared each node, to name both in a duplicate's error.
    let mut origin: BTreeMap<String, String> = BTreeMap::new();
    for (path, bytes) in raw {
        let file = path.display().to_string();
        let parsed = std::str::from_utf8(bytes).map_err(|e| e.to_string()).and_then(parse_manifests);
        let nodes = match parsed {
            Ok(nodes) => nodes,
            Err(reason) => {
                errors.push(SourceError { file, reason });
                continue;
            }
        };
        for node in nodes {
            match model.nodes.entry(node.name.clone()) {
                Entry::Vacant(v) => {
                    origin.insert(node.name.clone(), file.clone());
                    v.insert(node);
                }
                // The first file (by path) wins.
                Entry::Occupied(_) => errors.push(SourceError {
                    file: file.clone(),
                    reason: format!("Node {} is already declared in {}", node.name, origin[&node.name]),
                }),
            }
        }
    }
    Snapshot::new(model, std::mem::take(errors))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_yaml(n: u32) -> String {
        format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-{n}\nspec:\n  podCIDR: 10.244.{n}.0/24\n\
             status:\n  addresses:\n  - type: InternalIP\n    address: 172.31.0.{}\n",
            10 + n
        )
    }

    #[test]
    fn a_malformed_file_is_reported_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("node-1.yaml"), node_yaml(1)).unwrap();
        std::fs::write(dir.path().join("node-2.yml"), node_yaml(2)).unwrap();
        let good = read_dir(dir.path());
        assert_eq!(good.model.nodes.keys().collect::<Vec<_>>(), ["node-1", "node-2"]);
        assert!(good.errors.is_empty(), "{:?}", good.errors);

        std::fs::write(dir.path().join("broken.yaml"), "kind: Node\nmetadata: {name: [\n").unwrap();
        // Not manifests: ignored.
        std::fs::write(dir.path().join("notes.txt"), "{{{").unwrap();
        std::fs::write(dir.path().join(".node-3.yaml.tmp"), "{{{").unwrap();
        let snap = read_dir(dir.path());
        assert_eq!(snap.model, good.model);
        assert_eq!(snap.generation, good.generation, "a skipped file changes nothing");
        assert_eq!(snap.errors.len(), 1, "{:?}", snap.errors);
        assert!(snap.errors[0].file.ends_with("broken.yaml"));
    }

    #[test]
    fn poll_reports_changes_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut src = DirSource::new(dir.path().join("cluster"));
        let empty = src.poll().expect("the first poll always reports");
        assert!(empty.model.nodes.is_empty());
        std::fs::create_dir(dir.path().join("cluster")).unwrap();
        assert_eq!(src.poll(), None, "still empty");
        let p = dir.path().join("cluster/node-1.yaml");
        std::fs::write(&p, node_yaml(1)).unwrap();
        let one = src.poll().unwrap();
        assert_ne!(one.generation, empty.generation);
        assert_eq!(src.poll(), None);
        // Same content, other formatting: same model, nothing to report.
        std::fs::write(&p, format!("# a comment\n{}", node_yaml(1))).unwrap();
        assert_eq!(src.poll(), None);
        std::fs::remove_file(&p).unwrap();
        assert_eq!(src.poll().unwrap().generation, empty.generation);
    }

    #[test]
    fn duplicate_nodes_keep_the_first() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), node_yaml(1)).unwrap();
        std::fs::write(dir.path().join("b.yaml"), node_yaml(1).replace("172.31.0.11", "172.31.0.99"))
            .unwrap();
        let snap = read_dir(dir.path());
        assert_eq!(snap.model.nodes["node-1"].internal_ip, Some("172.31.0.11".parse().unwrap()));
        assert_eq!(snap.errors.len(), 1);
        assert!(snap.errors[0].reason.contains("already declared"), "{:?}", snap.errors);
    }
}
