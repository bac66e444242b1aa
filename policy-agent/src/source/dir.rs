//! `DirSource`: cluster state from a directory of Kubernetes YAML manifests
//! (the testbed's control plane).
//!
//! The directory is polled: each `poll` reads every `*.yaml`/`*.yml` file
//! (hidden files, such as a writer's temp file, are not manifests) and
//! re-parses only the files whose bytes changed. A file that is not YAML, or an
//! object in it that does not validate, is reported and skipped, and its last
//! good version stays in the model: a typo in a manifest never withdraws the
//! routes or rules it used to give. The generation hashes the files' names and
//! bytes, so the testbed computes it (`read_dir`) without parsing anything.
//!
//! A read that fails (the directory moved away or unreadable, a file that
//! cannot be opened or read: EMFILE, EACCES, EIO) is not an empty cluster:
//! the last good state stays in force, and the snapshot's errors say why
//! until a read succeeds again. Only a directory that reads fine and holds
//! no manifest is an empty cluster.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use weft_conf::hash::Fnv1a;

use super::{keep_last_good, Source};
use crate::model::manifest::{parse_objects, Object};
use crate::model::{Model, Snapshot, SourceError};

/// What one file gave last time.
#[derive(Debug, Clone)]
struct FileState {
    bytes: Vec<u8>,
    /// Its objects: the good ones, and the last good version of bad ones.
    objects: Vec<Object>,
    errors: Vec<String>,
}

/// A directory of manifests, polled.
pub struct DirSource {
    dir: PathBuf,
    /// Keyed by path as bytes: every file is in `dir`, so byte order is path
    /// order, and comparing bytes costs far less than comparing components
    /// (a poll of 1000 files does some 20,000 comparisons).
    files: BTreeMap<OsString, FileState>,
    /// Each file's identity and bytes as last read: a file whose stamp has
    /// not changed is not read again (a poll of 1000 unchanged files costs
    /// 1000 stats, not 1000 reads and a hash of them all).
    seen: BTreeMap<OsString, (Stamp, Vec<u8>)>,
    /// The generation of the last snapshot returned.
    last: Option<String>,
    /// Why the last read failed, until one succeeds (the state in force is
    /// then the last good one).
    failing: Option<String>,
}

/// A manifest file and its bytes.
type RawFile = (PathBuf, Vec<u8>);

/// What identifies a file's content without reading it: device, inode (a
/// writer's rename makes a new one), size, and modification and change times.
type Stamp = (u64, u64, u64, i64, i64, i64, i64);

fn stamp(m: &std::fs::Metadata) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec())
}

impl DirSource {
    /// A source over `dir`. Until a first read of it succeeds, `poll` gives
    /// nothing (a missing directory is not an empty cluster).
    pub fn new(dir: impl Into<PathBuf>) -> DirSource {
        DirSource {
            dir: dir.into(),
            files: BTreeMap::new(),
            seen: BTreeMap::new(),
            last: None,
            failing: None,
        }
    }

    /// The manifest files and their bytes, reading only files whose stamp
    /// changed; Ok(None) if nothing changed since the last call. Err if the
    /// directory or a file in it could not be read (a file that vanished
    /// after the listing was deleted, which is no error).
    fn read_changed(&mut self) -> Result<Option<Vec<RawFile>>, String> {
        let paths = list_manifests(&self.dir)?;
        let mut old = std::mem::take(&mut self.seen);
        let mut seen = BTreeMap::new();
        let mut changed = paths.len() != old.len() || self.failing.is_some();
        let result = read_stamped(paths, &mut old, &mut seen, &mut changed);
        if result.is_err() {
            // Keep the cache whole: what was read stays read.
            old.extend(seen);
            self.seen = old;
            return result.map(|()| None);
        }
        changed |= !old.is_empty();
        self.seen = seen;
        if !changed && self.last.is_some() {
            return Ok(None);
        }
        Ok(Some(self.seen.iter().map(|(p, (_, b))| (PathBuf::from(p), b.clone())).collect()))
    }

    /// The model of the files as last parsed, and their errors.
    fn model(&self) -> (Model, Vec<SourceError>) {
        let mut model = Model::default();
        let mut errors = Vec::new();
        let name = |p: &OsString| Path::new(p).display().to_string();
        for (path, state) in &self.files {
            errors.extend(
                state.errors.iter().map(|reason| SourceError { file: name(path), reason: reason.clone() }),
            );
            for obj in &state.objects {
                // The first file (by path) wins.
                if !model.insert(obj.clone()) {
                    let key = obj.key();
                    let first = self
                        .files
                        .iter()
                        .find(|(_, st)| st.objects.iter().any(|o| o.key() == key))
                        .map_or_else(|| "another file".to_string(), |(p, _)| name(p));
                    errors.push(SourceError {
                        file: name(path),
                        reason: format!("{key} is already declared in {first}"),
                    });
                }
            }
        }
        (model, errors)
    }

    /// A failed read: the last good state with the failure among its errors,
    /// once per distinct failure (None before any good read: nothing to keep).
    fn failed(&mut self, reason: String) -> Option<Snapshot> {
        if self.failing.as_ref() == Some(&reason) {
            return None;
        }
        let dir = self.dir.display().to_string();
        let Some(generation) = self.last.clone() else {
            tracing::warn!(dir = %dir, "cannot read the manifest directory ({reason}): no cluster state yet");
            self.failing = Some(reason);
            return None;
        };
        // Among the snapshot's errors, which the agent logs once.
        let (model, mut errors) = self.model();
        errors.push(SourceError {
            file: dir,
            reason: format!("cannot read the manifest directory: {reason}; keeping the last good state (generation {generation})"),
        });
        self.failing = Some(reason);
        Some(Snapshot { generation, model, errors })
    }
}

/// Moves each of `paths` from `old` to `seen` with its stamp and bytes,
/// reading it only if its stamp changed (and setting `changed` then).
fn read_stamped(
    paths: Vec<PathBuf>,
    old: &mut BTreeMap<OsString, (Stamp, Vec<u8>)>,
    seen: &mut BTreeMap<OsString, (Stamp, Vec<u8>)>,
    changed: &mut bool,
) -> Result<(), String> {
    let unreadable = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    for p in paths {
        let meta = match std::fs::metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(unreadable(&p, e)),
        };
        let st = stamp(&meta);
        let p = p.into_os_string();
        match old.remove(&p) {
            Some((was, bytes)) if was == st => {
                seen.insert(p, (st, bytes));
            }
            _ => {
                *changed = true;
                match std::fs::read(&p) {
                    Ok(bytes) => {
                        seen.insert(p, (st, bytes));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(unreadable(Path::new(&p), e)),
                }
            }
        }
    }
    Ok(())
}

impl Source for DirSource {
    fn poll(&mut self) -> Option<Snapshot> {
        let raw = match self.read_changed() {
            Ok(raw) => raw?,
            Err(reason) => return self.failed(reason),
        };
        let generation = generation_of(&raw);
        let recovered = self.failing.take().is_some();
        if recovered {
            tracing::info!(dir = %self.dir.display(), "the manifest directory reads again");
        }
        if self.last.as_ref() == Some(&generation) && !recovered {
            return None;
        }
        let mut files = BTreeMap::new();
        for (path, bytes) in raw {
            let path = path.into_os_string();
            let state = match self.files.remove(&path) {
                Some(old) if old.bytes == bytes => old,
                old => parse_file(bytes, old.map(|o| o.objects).unwrap_or_default()),
            };
            files.insert(path, state);
        }
        self.files = files;
        let (model, errors) = self.model();
        self.last = Some(generation.clone());
        Some(Snapshot { generation, model, errors })
    }
}

/// Parses one file's new bytes; `previous` is what it gave last time, whose
/// objects stand in for the ones that no longer parse.
fn parse_file(bytes: Vec<u8>, previous: Vec<Object>) -> FileState {
    let parsed = std::str::from_utf8(&bytes).map_err(|e| e.to_string()).and_then(parse_objects);
    let keep = |what: &str| {
        if previous.is_empty() {
            String::new()
        } else {
            format!("; keeping the last good version of {what}")
        }
    };
    let results = match parsed {
        Ok(r) => r,
        Err(reason) => {
            let errors = vec![format!("not a manifest ({reason}){}", keep("its objects"))];
            return FileState { bytes, objects: previous, errors };
        }
    };
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(obj) => objects.push(obj),
            Err(e) => {
                let old = e.key.as_ref().and_then(|k| previous.iter().find(|o| &o.key() == k));
                let (kept, report) = keep_last_good(&e, old);
                objects.extend(kept);
                errors.push(report);
            }
        }
    }
    FileState { bytes, objects, errors }
}

/// The snapshot of the manifests in `dir` right now, as a fresh `DirSource`
/// would see it (no last good versions); if `dir` cannot be read, an empty
/// model whose errors say why.
pub fn read_dir(dir: &Path) -> Snapshot {
    let mut source = DirSource::new(dir);
    source.poll().unwrap_or_else(|| Snapshot {
        generation: generation_of(&[]),
        model: Model::default(),
        errors: source
            .failing
            .map(|reason| SourceError { file: dir.display().to_string(), reason })
            .into_iter()
            .collect(),
    })
}

/// The manifest files of `dir` (sorted by path) with their bytes, and their
/// generation as `read_dir` computes it, from one read: for a reader that
/// needs the objects themselves (the testbed's stand-in API server). Files
/// that cannot be read are left out.
pub fn read_files(dir: &Path) -> (Vec<(PathBuf, Vec<u8>)>, String) {
    let files: Vec<RawFile> = list_manifests(dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| std::fs::read(&p).ok().map(|bytes| (p, bytes)))
        .collect();
    let generation = generation_of(&files);
    (files, generation)
}

/// The generation of these files: FNV-1a 64 over each file name (not the
/// directory, so it does not depend on where the dir is) and its bytes.
fn generation_of(raw: &[(PathBuf, Vec<u8>)]) -> String {
    let mut h = Fnv1a::new();
    for (path, bytes) in raw {
        let name = path.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default();
        h = h.write(&(name.len() as u64).to_le_bytes()).write(name);
        h = h.write(&(bytes.len() as u64).to_le_bytes()).write(bytes);
    }
    format!("{:016x}", h.finish())
}

fn is_manifest(p: &Path) -> bool {
    let hidden = p.file_name().and_then(|n| n.to_str()).is_none_or(|n| n.starts_with('.'));
    !hidden && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml") | Some("yml"))
}

/// The manifest files of `dir`, sorted by path; Err if the directory (or
/// any entry of it) cannot be read, a missing directory included.
fn list_manifests(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| e.to_string())?;
    let mut paths = Vec::new();
    for entry in entries {
        let p = entry.map_err(|e| e.to_string())?.path();
        if is_manifest(&p) {
            paths.push(p);
        }
    }
    // One directory: byte order is path order, and much cheaper.
    paths.sort_unstable_by(|a, b| a.as_os_str().cmp(b.as_os_str()));
    Ok(paths)
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

    const POLICY: &str =
        "kind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec:\n  podSelector: {}\n";

    #[test]
    fn a_malformed_file_is_reported_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("node-1.yaml"), node_yaml(1)).unwrap();
        std::fs::write(dir.path().join("node-2.yml"), node_yaml(2)).unwrap();
        let good = read_dir(dir.path());
        assert_eq!(good.model.nodes.keys().collect::<Vec<_>>(), ["node-1", "node-2"]);
        assert!(good.errors.is_empty(), "{:?}", good.errors);

        std::fs::write(dir.path().join("broken.yaml"), "kind: Node\nmetadata: {name: [\n").unwrap();
        // Not manifests: ignored, and not part of the generation.
        std::fs::write(dir.path().join("notes.txt"), "{{{").unwrap();
        std::fs::write(dir.path().join(".node-3.yaml.tmp"), "{{{").unwrap();
        let snap = read_dir(dir.path());
        assert_eq!(snap.model, good.model);
        assert_ne!(snap.generation, good.generation, "the directory changed");
        assert_eq!(snap.errors.len(), 1, "{:?}", snap.errors);
        assert!(snap.errors[0].file.ends_with("broken.yaml"));
        std::fs::remove_file(dir.path().join("broken.yaml")).unwrap();
        assert_eq!(read_dir(dir.path()).generation, good.generation);
    }

    #[test]
    fn a_file_that_turns_bad_keeps_its_last_good_objects() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cluster.yaml");
        std::fs::write(&p, format!("{}---\n{POLICY}", node_yaml(2))).unwrap();
        let mut src = DirSource::new(dir.path());
        let good = src.poll().unwrap();
        assert_eq!(good.model.nodes.len(), 1);
        assert_eq!(good.model.policies.len(), 1);

        // Not YAML any more: everything it held stays.
        std::fs::write(&p, "kind: Node\nmetadata: {name: [\n").unwrap();
        let bad = src.poll().unwrap();
        assert_eq!(bad.model, good.model);
        assert!(bad.errors[0].reason.contains("keeping the last good version"), "{:?}", bad.errors);
        // A fresh reader has no last good version.
        assert!(read_dir(dir.path()).model.nodes.is_empty());

        // YAML again, but the policy is invalid: the node follows the file, the policy keeps its last good form.
        let bad_policy =
            POLICY.replace("podSelector: {}", "podSelector: {matchExpressions: [{key: a, operator: Near}]}");
        std::fs::write(&p, format!("{}---\n{bad_policy}", node_yaml(3))).unwrap();
        let mixed = src.poll().unwrap();
        assert_eq!(mixed.model.nodes.keys().collect::<Vec<_>>(), ["node-3"]);
        assert_eq!(mixed.model.policies, good.model.policies);
        assert_eq!(mixed.errors.len(), 1, "{:?}", mixed.errors);
        assert!(mixed.errors[0].reason.starts_with("NetworkPolicy x/deny: "), "{:?}", mixed.errors);
        assert!(mixed.errors[0].reason.contains("Near"), "{:?}", mixed.errors);

        // Deleting the file withdraws everything it gave.
        std::fs::remove_file(&p).unwrap();
        let gone = src.poll().unwrap();
        assert!(gone.model.nodes.is_empty() && gone.model.policies.is_empty());
    }

    #[test]
    fn poll_reports_changes_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut src = DirSource::new(dir.path().join("cluster"));
        assert_eq!(src.poll(), None, "a missing directory is not an empty cluster");
        std::fs::create_dir(dir.path().join("cluster")).unwrap();
        let empty = src.poll().expect("the first good read reports");
        assert!(empty.model.nodes.is_empty() && empty.errors.is_empty(), "{empty:?}");
        assert_eq!(src.poll(), None, "still empty");
        let p = dir.path().join("cluster/node-1.yaml");
        std::fs::write(&p, node_yaml(1)).unwrap();
        let one = src.poll().unwrap();
        assert_ne!(one.generation, empty.generation);
        assert_eq!(one.generation, read_dir(&dir.path().join("cluster")).generation, "the testbed's view");
        assert_eq!(src.poll(), None);
        // Same content, other formatting: a new generation of the same model.
        std::fs::write(&p, format!("# a comment\n{}", node_yaml(1))).unwrap();
        let again = src.poll().unwrap();
        assert_ne!(again.generation, one.generation);
        assert_eq!(again.model, one.model);
        std::fs::remove_file(&p).unwrap();
        assert_eq!(src.poll().unwrap().generation, empty.generation);
    }

    #[test]
    fn a_failed_read_keeps_the_last_good_state_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = dir.path().join("cluster");
        std::fs::create_dir(&cluster).unwrap();
        std::fs::write(cluster.join("node-1.yaml"), node_yaml(1)).unwrap();
        std::fs::write(cluster.join("deny.yaml"), POLICY).unwrap();
        let mut src = DirSource::new(&cluster);
        let good = src.poll().unwrap();
        assert_eq!((good.model.nodes.len(), good.model.policies.len()), (1, 1));
        let kept_with = |snap: &Snapshot, what: &str| {
            assert_eq!(snap.model, good.model, "the last good state stays");
            assert_eq!(snap.generation, good.generation);
            assert!(
                snap.errors
                    .iter()
                    .any(|e| e.reason.contains(what) && e.reason.contains("keeping the last good state")),
                "{:?}",
                snap.errors
            );
        };

        // The directory moved away (ENOENT of the dir itself).
        std::fs::rename(&cluster, dir.path().join("moved")).unwrap();
        kept_with(&src.poll().expect("the failure is reported"), "No such file");
        assert_eq!(src.poll(), None, "once, not at every poll");
        std::fs::rename(dir.path().join("moved"), &cluster).unwrap();
        let back = src.poll().expect("reading again is a snapshot even with the same generation");
        assert_eq!((back.model, back.errors.len()), (good.model.clone(), 0));

        // A manifest that cannot be read (a directory by that name: EISDIR, as EMFILE or EACCES would).
        std::fs::create_dir(cluster.join("pods.yaml")).unwrap();
        kept_with(&src.poll().unwrap(), "pods.yaml");
        std::fs::remove_dir(cluster.join("pods.yaml")).unwrap();
        assert!(src.poll().unwrap().errors.is_empty());

        // Only a read that succeeds and finds nothing empties the cluster.
        std::fs::remove_file(cluster.join("node-1.yaml")).unwrap();
        std::fs::remove_file(cluster.join("deny.yaml")).unwrap();
        let empty = src.poll().unwrap();
        assert!(empty.model.nodes.is_empty() && empty.model.policies.is_empty() && empty.errors.is_empty());
        // A fresh reader of a missing directory reports it.
        let missing = read_dir(&dir.path().join("nowhere"));
        assert!(missing.model.nodes.is_empty() && missing.errors.len() == 1, "{missing:?}");
    }

    #[test]
    fn unchanged_files_are_not_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node-1.yaml");
        std::fs::write(&p, node_yaml(1)).unwrap();
        let mut src = DirSource::new(dir.path());
        assert!(src.poll().is_some());
        assert_eq!(src.poll(), None, "nothing changed: no snapshot");
        // A rewrite of the same size through a rename (as writers do) is a new
        // inode, so it is read even if the times had not moved.
        let tmp = dir.path().join(".node-1.yaml.tmp");
        std::fs::write(&tmp, node_yaml(2).replace("node-2", "node-1")).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        let snap = src.poll().expect("a new inode is a change");
        assert_eq!(snap.model.nodes["node-1"].pod_cidr, Some("10.244.2.0/24".parse().unwrap()));
    }

    #[test]
    fn read_files_gives_the_bytes_and_the_generation_of_read_dir() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("node-2.yaml"), node_yaml(2)).unwrap();
        std::fs::write(dir.path().join("node-1.yaml"), node_yaml(1)).unwrap();
        std::fs::write(dir.path().join(".node-3.yaml.tmp"), node_yaml(3)).unwrap();
        let (files, generation) = read_files(dir.path());
        let names: Vec<_> = files.iter().map(|(p, _)| p.file_name().unwrap().to_str().unwrap()).collect();
        assert_eq!(names, ["node-1.yaml", "node-2.yaml"]);
        assert_eq!(files[0].1, node_yaml(1).into_bytes());
        assert_eq!(generation, read_dir(dir.path()).generation);
    }

    #[test]
    fn duplicate_objects_keep_the_first() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), node_yaml(1)).unwrap();
        std::fs::write(dir.path().join("b.yaml"), node_yaml(1).replace("172.31.0.11", "172.31.0.99"))
            .unwrap();
        let snap = read_dir(dir.path());
        assert_eq!(snap.model.nodes["node-1"].internal_ip, Some("172.31.0.11".parse().unwrap()));
        assert_eq!(snap.errors.len(), 1);
        let e = &snap.errors[0];
        assert!(e.file.ends_with("b.yaml"), "{e:?}");
        assert!(
            e.reason.contains("Node node-1 is already declared in") && e.reason.ends_with("a.yaml"),
            "{e:?}"
        );
    }
}
