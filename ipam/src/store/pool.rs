//! The pool of released records, `free/`: up to `POOL_MAX` record files
//! that no other name refers to, so that an allocation overwrites one
//! instead of creating an inode (170-500 µs on ext4, against 6-60 µs for
//! the open, write and rename of an existing file). Callers hold the
//! store's lock.
//!
//! The rule that keeps records immutable while they are used: a file is
//! written in place only while `free/<n>` is its one name (`nlink == 1`,
//! checked with `fstat` on the open file), and a name moves into the pool
//! only when it is its file's one name (`lstat`, just before the rename).
//! So an index or an IP file never changes while it exists, as before the
//! pool: a record is complete before it gets a name outside `free/`, and
//! keeps its content until it has no name outside `free/` any more. A
//! pooled file's content is never read: a process killed while rewriting
//! one leaves garbage in the pool, which the next allocation overwrites.
//!
//! Pool names are small numbers (`0`, `1`, ...), the least one unused. Entries
//! that do not follow the rule are never reused: allocation drops the pool
//! name of a file that has another name, and gc removes every entry that is
//! not a file with one name (except directories, which we never make), and
//! the files beyond `POOL_MAX`.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::files::remove_if_exists;
use super::{Step, Store};
use crate::error::IpamError;

pub(super) const FREE: &str = "free";

/// At most this many released records wait for reuse: far more than a
/// node's churn between two allocations, and few enough that listing
/// `free/` (each allocation and release does; ~0.25 µs an entry on ext4
/// here, against 170-500 µs to create an inode) stays cheap when it is full.
pub(super) const POOL_MAX: usize = 64;

/// The steps of an allocation that takes its record's file from the pool.
#[derive(Debug, Clone, Copy)]
pub(super) struct PoolSteps {
    /// A pool entry not fit for reuse lost its pool name.
    pub dropped: Step,
    /// A pooled file was overwritten with the record (the tail of a longer
    /// old content may follow it).
    pub overwritten: Step,
    /// It was cut to the record's length (or needed no cut).
    pub truncated: Step,
    /// It was renamed over the index.
    pub renamed: Step,
}

/// The names in `free/`: whether there is room for one more, and which name.
#[derive(Debug, Default)]
pub(super) struct Pool {
    names: Vec<String>,
}

impl Pool {
    fn has_room(&self) -> bool {
        self.names.len() < POOL_MAX
    }

    fn unused_name(&self) -> String {
        // At most `names.len()` of the first `names.len() + 1` numbers are taken.
        (0..=self.names.len()).map(|n| n.to_string()).find(|n| !self.names.contains(n)).unwrap_or_default()
    }
}

impl Store {
    pub(super) fn free_dir(&self) -> PathBuf {
        self.dir.join(FREE)
    }

    /// The pool as it is on disk.
    pub(super) fn pool(&self) -> Result<Pool, IpamError> {
        Ok(Pool { names: self.list(&self.free_dir())? })
    }

    /// Takes a pooled file for a new record: overwrites it with `content`
    /// and returns its path, for the caller to rename over the index.
    /// `None` when the pool holds no file fit for reuse.
    pub(super) fn take_pooled(&self, content: &[u8], steps: PoolSteps) -> Result<Option<PathBuf>, IpamError> {
        let dir = self.free_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(IpamError::io("list", dir)(e)),
        };
        // Lazily: stopping at the first fit file spares reading the listing's end.
        for entry in entries {
            let entry = entry.map_err(IpamError::io("list", &dir))?;
            // Only regular files, by the listing's type (no `lstat`): a
            // symlink is never followed, a FIFO never opened (it would block).
            if !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let path = entry.path();
            let Some((mut f, old_len)) = open_if_sole_name(&path, entry.ino()) else {
                // It has another name (reusing it would rewrite a live
                // record), or cannot be opened: give up the pool name only.
                remove_if_exists(&path)?;
                self.reached(steps.dropped)?;
                continue;
            };
            f.write_all(content).map_err(IpamError::io("write", &path))?;
            self.reached(steps.overwritten)?;
            let len = content.len() as u64;
            if old_len > len {
                f.set_len(len).map_err(IpamError::io("truncate", &path))?;
            }
            self.reached(steps.truncated)?;
            return Ok(Some(path));
        }
        Ok(None)
    }

    /// Removes an index whose IP files are gone: into the pool if it is a
    /// file with no other name and the pool has room, else unlinked.
    /// Reaches `steps.0` or `steps.1` accordingly.
    pub(super) fn retire_index(
        &self,
        path: &Path,
        pool: &mut Pool,
        steps: (Step, Step),
    ) -> Result<(), IpamError> {
        let sole_name = match fs::symlink_metadata(path) {
            Ok(meta) => meta.is_file() && meta.nlink() == 1,
            Err(e) if e.kind() == ErrorKind::NotFound => false,
            Err(e) => return Err(IpamError::io("stat", path)(e)),
        };
        if sole_name && pool.has_room() {
            let name = pool.unused_name();
            // Cannot fail but for a broken `free/`; unlinking is then as good.
            if fs::rename(path, self.free_dir().join(&name)).is_ok() {
                pool.names.push(name);
                return self.reached(steps.0);
            }
        }
        remove_if_exists(path)?;
        self.reached(steps.1)
    }

    /// gc's part: keeps the first `POOL_MAX` files (by name) that have no
    /// other name, removes the other entries but directories (only their
    /// pool names: a file linked elsewhere stays there), reaching `removed`
    /// after each. Returns the pool left.
    pub(super) fn tidy_pool(&self, removed: Step) -> Result<Pool, IpamError> {
        let dir = self.free_dir();
        let mut names = self.list(&dir)?;
        names.sort();
        let mut pool = Pool::default();
        for name in names {
            let path = dir.join(&name);
            let meta = match fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(IpamError::io("stat", path)(e)),
            };
            if meta.is_dir() || (meta.is_file() && meta.nlink() == 1 && pool.has_room()) {
                pool.names.push(name);
            } else {
                remove_if_exists(&path)?;
                self.reached(removed)?;
            }
        }
        Ok(pool)
    }
}

/// Opens a pooled file for writing, without creating it, if it is still
/// the listed inode and `fstat` says the pool name is its only name; with
/// its length. `None` otherwise, or if it cannot be opened.
fn open_if_sole_name(path: &Path, ino: u64) -> Option<(File, u64)> {
    let f = OpenOptions::new().write(true).open(path).ok()?;
    let meta = f.metadata().ok()?;
    (meta.is_file() && meta.nlink() == 1 && meta.ino() == ino).then_some((f, meta.len()))
}
