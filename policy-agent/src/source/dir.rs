//! `DirSource`: cluster state from a directory of Kubernetes YAML manifests
//! (the testbed's control plane).
//!
//! The manifests are the `*.yaml`/`*.yml` files (hidden files, such as a
//! writer's temp file, are not manifests). A poll looks at the files inotify
//! named since the last one (`dir_watch`; every file at first, when inotify
//! lost track, every `FULL_SCAN`, and at every poll without inotify), reads
//! those whose identity changed and re-parses those whose bytes changed; the
//! agent is woken when a file changes. A file that is not YAML, or an
//! object in it that does not validate, is reported and skipped, and its last
//! good version stays in the model: a typo in a manifest never withdraws the
//! routes or rules it used to give. The generation hashes the files' names and
//! bytes, so the testbed computes it (`read_dir`) without parsing anything.
//!
//! The model is kept, not rebuilt: a file read again takes its old objects
//! out and puts its new ones in (an object declared by several files is the
//! first file's by path, then the next one's when that goes), so a change
//! costs its file, not every object of the directory.
//!
//! A read that fails (the directory moved away or unreadable, a file that
//! cannot be opened or read: EMFILE, EACCES, EIO) is not an empty cluster:
//! the last good state stays in force, and the snapshot's errors say why
//! until a read succeeds again. Only a directory that reads fine and holds
//! no manifest is an empty cluster.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use weft_conf::hash::Fnv1a;

use super::dir_watch::{Changed, DirWatch};
use super::{keep_last_good, Source, WakeFn};
use crate::model::manifest::{parse_objects, Object};
use crate::model::{Model, Snapshot, SourceError};

/// How often a watched directory is scanned whole all the same: a guard
/// against changes inotify does not see (a network filesystem's), at the
/// cost of one scan a minute.
const FULL_SCAN: Duration = Duration::from_secs(60);

/// What one file gave last time.
#[derive(Debug, Clone)]
struct FileState {
    /// Its identity when read: a file whose stamp has not changed is not
    /// read again (a scan of 1000 unchanged files costs 1000 stats).
    stamp: Stamp,
    bytes: Vec<u8>,
    /// FNV-1a 64 of the bytes, for the generation.
    hash: u64,
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
    /// The generation of the last snapshot returned.
    last: Option<String>,
    /// Why the last read failed, until one succeeds (the state in force is
    /// then the last good one).
    failing: Option<String>,
    /// Which files changed, from inotify; without it every poll scans.
    watch: Option<DirWatch>,
    /// When every file was last looked at.
    scanned: Option<Instant>,
    /// The objects of `files`, the first declaration of each.
    model: Model,
    /// Who declares each object (`Object::key`): (file, position in it), in
    /// that order; the first one's object is the model's.
    declared: BTreeMap<String, Vec<(OsString, usize)>>,
}

/// What identifies a file's content without reading it: device, inode (a
/// writer's rename makes a new one), size, and modification and change times.
type Stamp = (u64, u64, u64, i64, i64, i64, i64);

fn stamp(m: &std::fs::Metadata) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec())
}

/// What a look found of one file.
enum Update {
    Gone,
    /// The same bytes under a new stamp.
    Restamped(Stamp),
    Read(Stamp, Vec<u8>),
}

impl DirSource {
    /// A source over `dir` that looks at every file at each poll. Until a
    /// first read of it succeeds, `poll` gives nothing (a missing directory
    /// is not an empty cluster).
    pub fn new(dir: impl Into<PathBuf>) -> DirSource {
        DirSource {
            dir: dir.into(),
            files: BTreeMap::new(),
            last: None,
            failing: None,
            watch: None,
            scanned: None,
            model: Model::default(),
            declared: BTreeMap::new(),
        }
    }

    /// A source over `dir` that learns from inotify which files changed
    /// (`dir_watch`) once `set_wake` has started its thread, and wakes the
    /// agent when one does: a poll then reads the files named since the
    /// last one, and scans them all only at first, when inotify lost track,
    /// and every `FULL_SCAN`. Without inotify (no instance or watch left:
    /// max_user_instances, max_user_watches) it scans at every poll, as `new`.
    pub fn watched(dir: impl Into<PathBuf>) -> DirSource {
        let mut source = DirSource::new(dir);
        match DirWatch::new(&source.dir) {
            Ok(w) => source.watch = Some(w),
            Err(e) => tracing::warn!(
                dir = %source.dir.display(),
                "cannot watch the manifest directory ({e}): reading every file at each poll"
            ),
        }
        source
    }

    /// The files to look at now: every one, or those inotify named.
    fn changed(&self) -> Changed {
        let due = self.scanned.is_none_or(|t| t.elapsed() >= FULL_SCAN);
        // Taken even when a scan is due: the scan covers what it named.
        match self.watch.as_ref().map(DirWatch::take) {
            Some(named) if !due => named,
            _ => Changed::Anything,
        }
    }

    /// Looks at the files `changed` names (every manifest of the directory
    /// for `Anything`), reading only those whose stamp moved. Err if the
    /// directory or a file in it could not be read (a file that vanished
    /// after the listing was deleted, which is no error).
    fn look(&self, changed: &Changed) -> Result<Vec<(OsString, Update)>, String> {
        let mut updates = Vec::new();
        let paths: Vec<OsString> = match changed {
            Changed::Anything => {
                let listed = list_manifests(&self.dir)?;
                let listed: Vec<OsString> = listed.into_iter().map(PathBuf::into_os_string).collect();
                for known in self.files.keys() {
                    if listed.binary_search(known).is_err() {
                        updates.push((known.clone(), Update::Gone));
                    }
                }
                listed
            }
            Changed::Names(names) => names
                .iter()
                .filter(|n| is_manifest(Path::new(n)))
                .map(|n| self.dir.join(n).into_os_string())
                .collect(),
        };
        let unreadable = |p: &OsStr, e: std::io::Error| format!("{}: {e}", Path::new(p).display());
        for p in paths {
            let known = self.files.get(&p);
            let meta = match std::fs::metadata(&p) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if known.is_some() {
                        updates.push((p, Update::Gone));
                    }
                    continue;
                }
                Err(e) => return Err(unreadable(&p, e)),
            };
            let st = stamp(&meta);
            if known.is_some_and(|f| f.stamp == st) {
                continue;
            }
            let update = match std::fs::read(&p) {
                Ok(bytes) if known.is_some_and(|f| f.bytes == bytes) => Update::Restamped(st),
                Ok(bytes) => Update::Read(st, bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Update::Gone,
                Err(e) => return Err(unreadable(&p, e)),
            };
            updates.push((p, update));
        }
        Ok(updates)
    }

    /// Takes `updates` in; true if a file came, went or has new bytes.
    fn take_in(&mut self, updates: Vec<(OsString, Update)>) -> bool {
        let mut changed = false;
        for (path, update) in updates {
            match update {
                Update::Gone => {
                    if let Some(f) = self.files.remove(&path) {
                        self.withdraw(&path, &f.objects);
                        changed = true;
                    }
                }
                Update::Restamped(st) => {
                    if let Some(f) = self.files.get_mut(&path) {
                        f.stamp = st;
                    }
                }
                Update::Read(stamp, bytes) => {
                    let previous = self.files.remove(&path).map(|f| f.objects).unwrap_or_default();
                    self.withdraw(&path, &previous);
                    let state = parse_file(stamp, bytes, previous);
                    self.declare(&path, &state.objects);
                    self.files.insert(path, state);
                    changed = true;
                }
            }
        }
        changed
    }

    /// The generation of the files as last read.
    fn generation(&self) -> String {
        generation_of(self.files.iter().map(|(p, f)| (p.as_os_str(), f.bytes.len(), f.hash)))
    }

    /// Takes the `objects` of file `path` (no longer in `files`) out of the
    /// declarations: an object the model had from it goes, or gives way to
    /// the next file's declaration of it.
    fn withdraw(&mut self, path: &OsStr, objects: &[Object]) {
        for obj in objects {
            let key = obj.key();
            let Some(decl) = self.declared.get_mut(&key) else { continue };
            let was_first = decl.first().is_some_and(|(p, _)| p == path);
            // Every declaration of `key` by this file at once (a later
            // duplicate in the file then finds none).
            decl.retain(|(p, _)| p != path);
            if !was_first {
                continue;
            }
            self.model.remove(obj);
            let next = decl.first().and_then(|(p, i)| self.files.get(p)?.objects.get(*i));
            match next {
                Some(o) => self.model.replace(o.clone()),
                None => drop(self.declared.remove(&key)),
            }
        }
    }

    /// Adds the `objects` of file `path` to the declarations: an object goes
    /// into the model unless a file before it (or an earlier place in it)
    /// declares it.
    fn declare(&mut self, path: &OsStr, objects: &[Object]) {
        for (i, obj) in objects.iter().enumerate() {
            let decl = self.declared.entry(obj.key()).or_default();
            let at = decl.partition_point(|(p, j)| (p.as_os_str(), *j) < (path, i));
            decl.insert(at, (path.to_os_string(), i));
            if at == 0 {
                self.model.replace(obj.clone());
            }
        }
    }

    /// The model of the files as last parsed, and their errors: each file's
    /// own, then each object it declares after an earlier declaration.
    fn model(&self) -> (Model, Vec<SourceError>) {
        let name = |p: &OsStr| Path::new(p).display().to_string();
        let mut again: Vec<(&OsString, usize, &String, &OsString)> = self
            .declared
            .iter()
            .filter(|(_, d)| d.len() > 1)
            .flat_map(|(key, d)| d[1..].iter().map(move |(p, i)| (p, *i, key, &d[0].0)))
            .collect();
        again.sort_unstable();
        let mut again = again.into_iter().peekable();
        let mut errors = Vec::new();
        for (path, state) in &self.files {
            errors.extend(
                state.errors.iter().map(|reason| SourceError { file: name(path), reason: reason.clone() }),
            );
            while let Some((_, _, key, first)) = again.next_if(|(p, ..)| *p == path) {
                let reason = format!("{key} is already declared in {}", name(first));
                errors.push(SourceError { file: name(path), reason });
            }
        }
        (self.model.clone(), errors)
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

impl Source for DirSource {
    fn poll(&mut self) -> Option<Snapshot> {
        let changed = self.changed();
        let updates = match self.look(&changed) {
            Ok(u) => u,
            Err(reason) => {
                // What inotify named is taken: the next poll looks at everything.
                if let Some(w) = &self.watch {
                    w.rescan();
                }
                return self.failed(reason);
            }
        };
        if changed == Changed::Anything {
            self.scanned = Some(Instant::now());
        }
        let changed = self.take_in(updates);
        let recovered = self.failing.take().is_some();
        if recovered {
            tracing::info!(dir = %self.dir.display(), "the manifest directory reads again");
        }
        if !changed && !recovered && self.last.is_some() {
            return None;
        }
        let generation = self.generation();
        if self.last.as_ref() == Some(&generation) && !recovered {
            return None;
        }
        let (model, errors) = self.model();
        self.last = Some(generation.clone());
        Some(Snapshot { generation, model, errors })
    }

    fn set_wake(&mut self, wake: WakeFn) {
        if let Some(w) = &mut self.watch {
            if !w.start(wake) {
                tracing::warn!(dir = %self.dir.display(), "cannot start the manifest directory's watch: reading every file at each poll");
            }
        }
    }
}

/// Parses one file's new bytes; `previous` is what it gave last time, whose
/// objects stand in for the ones that no longer parse.
fn parse_file(stamp: Stamp, bytes: Vec<u8>, previous: Vec<Object>) -> FileState {
    let hash = Fnv1a::new().write(&bytes).finish();
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
            return FileState { stamp, bytes, hash, objects: previous, errors };
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
    FileState { stamp, bytes, hash, objects, errors }
}

/// The snapshot of the manifests in `dir` right now, as a fresh `DirSource`
/// would see it (no last good versions); if `dir` cannot be read, an empty
/// model whose errors say why.
pub fn read_dir(dir: &Path) -> Snapshot {
    let mut source = DirSource::new(dir);
    source.poll().unwrap_or_else(|| Snapshot {
        generation: generation_of(std::iter::empty()),
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
    let files: Vec<(PathBuf, Vec<u8>)> = list_manifests(dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| std::fs::read(&p).ok().map(|bytes| (p, bytes)))
        .collect();
    let hashed = files.iter().map(|(p, b)| (p.as_os_str(), b.len(), Fnv1a::new().write(b).finish()));
    let generation = generation_of(hashed);
    (files, generation)
}

/// The generation of these files (path, length, FNV-1a 64 of the bytes), in
/// path order: FNV-1a 64 over each file's name (not the directory, so it
/// does not depend on where the dir is), length and hash. A change of the
/// directory hashes one file's bytes, not all of them.
fn generation_of<'a>(files: impl Iterator<Item = (&'a OsStr, usize, u64)>) -> String {
    let mut h = Fnv1a::new();
    for (path, len, hash) in files {
        let name = Path::new(path).file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default();
        h = h.write(&(name.len() as u64).to_le_bytes()).write(name);
        h = h.write(&(len as u64).to_le_bytes()).write(&hash.to_le_bytes());
    }
    format!("{:016x}", h.finish())
}

/// True for a manifest's name: `*.yaml` or `*.yml`, not hidden (a writer's
/// temp file is not a manifest).
pub(super) fn is_manifest(p: &Path) -> bool {
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
    fn a_watched_source_is_woken_and_sees_what_a_scan_sees() {
        use std::sync::{mpsc, Mutex};
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("node-1.yaml"), node_yaml(1)).unwrap();
        let mut src = DirSource::watched(dir.path());
        assert!(src.watch.is_some(), "inotify works here");
        let (tx, woken) = mpsc::channel();
        let tx = Mutex::new(tx);
        src.set_wake(Box::new(move || {
            let _ = tx.lock().unwrap().send(());
        }));
        let first = src.poll().expect("the first poll scans");
        assert_eq!(first.generation, read_dir(dir.path()).generation);
        assert_eq!(src.poll(), None);
        let write = |name: &str, text: &str| {
            let tmp = dir.path().join(format!(".{name}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, dir.path().join(name)).unwrap();
        };
        let steps: Vec<Box<dyn Fn()>> = vec![
            Box::new(|| write("deny.yaml", POLICY)),
            Box::new(|| write("node-1.yaml", &node_yaml(2).replace("node-2", "node-1"))),
            Box::new(|| std::fs::write(dir.path().join("node-3.yml"), node_yaml(3)).unwrap()),
            Box::new(|| std::fs::remove_file(dir.path().join("deny.yaml")).unwrap()),
            Box::new(|| write("broken.yaml", "kind: Node\nmetadata: {name: [\n")),
        ];
        for (i, step) in steps.iter().enumerate() {
            step();
            woken.recv_timeout(Duration::from_secs(5)).unwrap_or_else(|_| panic!("step {i}: not woken"));
            // The thread may wake once per event of a step: take them all.
            std::thread::sleep(Duration::from_millis(20));
            while woken.try_recv().is_ok() {}
            let snap = src.poll().unwrap_or_else(|| panic!("step {i}: no snapshot"));
            let scan = read_dir(dir.path());
            assert_eq!((&snap.generation, &snap.model), (&scan.generation, &scan.model), "step {i}");
            assert_eq!(snap.errors.len(), scan.errors.len(), "step {i}");
            assert_eq!(src.poll(), None, "step {i}: nothing more");
        }
        // A change of something other than a manifest neither wakes nor changes anything.
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        assert!(woken.recv_timeout(Duration::from_millis(200)).is_err());
        assert_eq!(src.poll(), None);
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

    /// A source kept up change by change holds what a fresh read of the
    /// directory gives, errors included, through files that declare the
    /// same objects (across files and twice in one), rewritten and removed
    /// in a fixed pseudo-random walk.
    #[test]
    fn a_kept_model_equals_a_fresh_read_through_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let mut src = DirSource::new(dir.path());
        // A fixed pseudo-random walk, so a failure repeats.
        let mut rng = crate::policy::incremental::tests::Rng::new(7);
        let mut next = |n: u32| rng.below(n as usize) as u32;
        let (mut dups, mut polls) = (0, 0);
        for step in 0..150 {
            let file = dir.path().join(format!("f{}.yaml", next(5)));
            if next(4) == 0 {
                let _ = std::fs::remove_file(&file);
            } else {
                // Nodes 0-5, each with an address that says which file and step wrote it.
                let docs: Vec<String> = (0..1 + next(4))
                    .map(|_| {
                        let n = next(6);
                        node_yaml(n)
                            .replace(&format!("172.31.0.{}", 10 + n), &format!("172.31.{}.{}", step, n))
                    })
                    .collect();
                std::fs::write(&file, docs.join("---\n")).unwrap();
            }
            let Some(snap) = src.poll() else { continue };
            polls += 1;
            let fresh = read_dir(dir.path());
            assert_eq!(snap.model, fresh.model, "step {step}");
            assert_eq!(snap.errors, fresh.errors, "step {step}");
            dups += usize::from(snap.errors.iter().any(|e| e.reason.contains("already declared")));
        }
        assert!(polls > 100 && dups > 50, "the walk met duplicates: {dups} of {polls}");
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
