//! The on-disk allocation store: host-local's layout (one file per address,
//! `last_reserved_ip.<set>`, a lock), crash-safe.
//!
//! Layout of `<dataDir>/<network>/`:
//! - `attachments/<id>@<ifname>` (escaped, see `owner.rs`): the index, one
//!   record per attachment, JSON `{"containerID", "ifname", "ips"}`, so
//!   release never scans the IP files;
//! - `<ip>`: one file per allocated address (`10.244.1.5`, `fd00::5`), a
//!   hard link to its attachment's record: the same inode as the index (or
//!   an earlier record of the same owner). Files holding host-local's
//!   `"<id>\r\n<ifname>"` (host-local's, or older weft's) are read too.
//!   host-local sees our files as taken but, comparing their whole text,
//!   as nobody's: its DEL does not free them (our release and gc do);
//! - `last_reserved_ip.<set>`: the address last allocated from range set
//!   `<set>`, overwritten in place; only where the next search starts;
//! - `lock`: every operation holds a `flock` on it (exclusive to change the
//!   store, shared to read it), so concurrent plugin processes serialise;
//! - `tmp.<pid>.<n>`: a record being written; leftovers of a dead process
//!   are ignored by allocation and removed by `gc`;
//! - `free/<n>`: the pool, up to `POOL_MAX` released records' files, each
//!   with no other name, for allocations to overwrite (see `pool.rs`).
//!   Allocation, `held` and `free_counts` never look there for owners.
//!
//! Why no new inode: on ext4 creating an inode costs 170-500 µs, a `link`,
//! a `rename` or opening an existing file 6-60 µs. So an allocation writes its
//! record once, to a released record's file taken from the pool (or, when
//! the pool is empty, to a new temp file), renames it over the index, and
//! hard-links it as each IP file: every name appears with its full content,
//! and `link` fails if the address is taken, so there is never a second
//! owner nor an empty IP file. A record is never written while it has a
//! name outside `free/`: a change is a new record renamed over the index,
//! and a pooled file is only rewritten after `fstat` says the pool name is
//! its only one. Release moves the index into the pool once the IP files
//! are gone, when it has no other name and the pool has room.
//!
//! Crash analysis (steps as in `Step`; see `allocate.rs` for the order):
//! - allocation: after `AllocRecordWritten` only a temp file exists (gc
//!   removes it); after `AllocPoolEntryDropped` a pool entry that had
//!   another name lost its pool name, and nothing else changed; after
//!   `AllocPooledRecordWritten` and `AllocPooledRecordTruncated` a pool
//!   file holds part or all of the new record, under its pool name only:
//!   garbage that nobody reads, overwritten by the next allocation; after
//!   `AllocIndexWritten` or `AllocPooledIndexWritten` the index (the
//!   complete record) names addresses without IP files, which retry,
//!   release and gc skip (the owner check fails) and drop; after each
//!   `AllocIpLinked` the address is complete and held, so a retry returns
//!   it, release and gc reclaim it; after `AllocLastReservedWritten` the
//!   hint may be garbled until truncated, which reads as `None` or another
//!   address, and allocation stays correct.
//! - release removes the IP files (`ReleaseIpRemoved`) before the index, so
//!   a repeated release still finds what is left; the index then leaves in
//!   one step, renamed into the pool (`ReleaseIndexPooled`) or unlinked
//!   (`ReleaseIndexRemoved`): either way the release is complete, and a
//!   record in the pool has no other name. gc: see `gc.rs`.
//!
//! This guards against process death (kill -9), not power loss: nothing is
//! fsynced.
//!
//! Locking is internal: each public function takes the lock for its own
//! duration, so callers never hold it and cannot deadlock on it.

mod allocate;
mod files;
mod gc;
mod owner;
mod pool;

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

pub use allocate::{allocate, allocate_attachment, free_counts, held, ipam_result, release, Allocation};
pub use gc::gc;

use crate::error::IpamError;

/// An open store for one network. Cheap to open; one per process (or thread).
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    lock_file: File,
    /// Test hook: stop at this step as if the process had died.
    #[cfg(test)]
    crash_after: std::cell::Cell<Option<Step>>,
    /// Test hook: run once at this step, given the store's directory (e.g.
    /// to act as a process that ignores the lock).
    #[cfg(test)]
    on_step: std::cell::Cell<Option<(Step, StepHook)>>,
}

/// A test's action at a step, given the store's directory.
#[cfg(test)]
pub(crate) type StepHook = fn(&Path);

/// Holds the store's lock until dropped.
#[derive(Debug)]
pub(crate) struct StoreGuard<'a> {
    file: &'a File,
}

impl Drop for StoreGuard<'_> {
    fn drop(&mut self) {
        // Closing the file (or the process dying) would release it too.
        let _ = self.file.unlock();
    }
}

/// The points of `allocate`, `release` and `gc` at which a test can stop
/// the operation, as if the process had been killed right after the step.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The new record is written to a new temp file (nothing to reuse in the pool).
    AllocRecordWritten,
    /// The temp file is renamed over the index.
    AllocIndexWritten,
    /// A pool entry with another name lost its pool name, unused.
    AllocPoolEntryDropped,
    /// A pooled file is overwritten with the new record (old tail left).
    AllocPooledRecordWritten,
    /// The pooled file is cut to the record's length.
    AllocPooledRecordTruncated,
    /// The pooled file is renamed over the index.
    AllocPooledIndexWritten,
    /// The index is hard-linked as one chosen IP file.
    AllocIpLinked,
    /// `last_reserved_ip.<set>` is overwritten in place.
    AllocLastReservedWritten,
    /// ...and cut to the address's length.
    AllocLastReservedTruncated,
    /// One of the attachment's IP files is removed.
    ReleaseIpRemoved,
    /// The index is renamed into the pool.
    ReleaseIndexPooled,
    /// The index is unlinked (the pool is full, or it has another name).
    ReleaseIndexRemoved,
    /// A temp file is removed.
    GcTempRemoved,
    /// A pool entry (beyond `POOL_MAX`, or not a file with one name) is removed.
    GcPoolEntryRemoved,
    /// An invalid owner's IP file is removed.
    GcIpRemoved,
    /// A dead index is renamed into the pool.
    GcIndexPooled,
    /// A dead index is unlinked.
    GcIndexRemoved,
    /// A rebuilt index's record is written to a temp file.
    GcIndexTmpWritten,
    /// ...and renamed over the index.
    GcIndexWritten,
}

impl Store {
    /// Opens (creating its directories when missing, idempotently) the store
    /// of `network` under `data_dir`.
    pub fn open(data_dir: &Path, network: &str) -> Result<Store, IpamError> {
        validate_network_name(network)?;
        let dir = data_dir.join(network);
        let attachments = dir.join(files::ATTACHMENTS);
        fs::create_dir_all(&attachments).map_err(IpamError::io("create directory", &attachments))?;
        let free = dir.join(pool::FREE);
        fs::create_dir_all(&free).map_err(IpamError::io("create directory", &free))?;
        let lock_path = dir.join(files::LOCK);
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(IpamError::io("open", &lock_path))?;
        Ok(Store {
            dir,
            lock_file,
            #[cfg(test)]
            crash_after: std::cell::Cell::new(None),
            #[cfg(test)]
            on_step: std::cell::Cell::new(None),
        })
    }

    /// The network's directory, `<dataDir>/<network>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Blocks until this process holds the store exclusively.
    pub(crate) fn lock(&self) -> Result<StoreGuard<'_>, IpamError> {
        self.lock_file.lock().map_err(IpamError::io("lock", self.dir.join(files::LOCK)))?;
        Ok(StoreGuard { file: &self.lock_file })
    }

    /// Blocks until no other process changes the store.
    pub(crate) fn lock_shared(&self) -> Result<StoreGuard<'_>, IpamError> {
        self.lock_file.lock_shared().map_err(IpamError::io("lock", self.dir.join(files::LOCK)))?;
        Ok(StoreGuard { file: &self.lock_file })
    }

    /// Marks that `step` is done; a test may stop the operation here.
    pub(crate) fn reached(&self, step: Step) -> Result<(), IpamError> {
        #[cfg(test)]
        {
            if let Some((_, hook)) = self.on_step.get().filter(|(at, _)| *at == step) {
                self.on_step.set(None);
                hook(&self.dir);
            }
            if self.crash_after.get() == Some(step) {
                return Err(IpamError::Crashed { step });
            }
        }
        let _ = step;
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn crash_after(&self, step: Option<Step>) {
        self.crash_after.set(step);
    }

    #[cfg(test)]
    pub(crate) fn on_step(&self, step: Step, hook: StepHook) {
        self.on_step.set(Some((step, hook)));
    }
}

/// Whether an error is a test's simulated death, after which nothing may be undone.
pub(crate) fn is_crash(e: &IpamError) -> bool {
    #[cfg(test)]
    if matches!(e, IpamError::Crashed { .. }) {
        return true;
    }
    let _ = e;
    false
}

/// The spec's rule for network names, which also makes them safe path
/// components: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`, at most 255 bytes.
fn validate_network_name(name: &str) -> Result<(), IpamError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && name.len() <= 255 && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
        Ok(())
    } else {
        Err(IpamError::BadNetworkName { name: name.to_string() })
    }
}

#[cfg(test)]
mod crash_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_creates_the_layout_and_checks_the_name() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path(), "weft.net-1").unwrap();
        assert!(s.dir().join("lock").is_file());
        assert!(s.dir().join("attachments").is_dir());
        assert!(s.dir().join("free").is_dir());
        Store::open(tmp.path(), "weft.net-1").unwrap();
        for bad in ["", ".", "..", "a/b", "../x", "-x", ".hidden", "a b", &"x".repeat(256)] {
            let e = Store::open(tmp.path(), bad).unwrap_err();
            assert!(matches!(e, IpamError::BadNetworkName { .. }), "{bad:?}: {e}");
        }
    }

    #[test]
    fn the_lock_excludes_other_stores() {
        let tmp = tempfile::tempdir().unwrap();
        let a = Store::open(tmp.path(), "n").unwrap();
        let b = Store::open(tmp.path(), "n").unwrap();
        let g = a.lock().unwrap();
        assert!(b.lock_file.try_lock().is_err(), "exclusive while a holds it");
        drop(g);
        assert!(b.lock_file.try_lock().is_ok());
        b.lock_file.unlock().unwrap();
        let _r1 = a.lock_shared().unwrap();
        let _r2 = b.lock_shared().unwrap();
    }
}
