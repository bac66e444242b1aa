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
//!   are ignored by allocation and removed by `gc`.
//!
//! Why one inode: on ext4 creating an inode costs 170-500 µs, a `link` 15-25.
//! So an allocation writes its record once, to a temp file, renames it over
//! the index, and hard-links it as each IP file: every name appears with
//! its full content, and `link` fails if the address is taken, so there is
//! never a second owner nor an empty IP file. Records are never written
//! again: a change is a new record renamed over the index.
//!
//! Crash analysis (steps as in `Step`; see `allocate.rs` for the order):
//! - allocation: after `AllocRecordWritten` only a temp file exists (gc
//!   removes it); after `AllocIndexWritten` the index names addresses
//!   without IP files, which retry, release and gc skip (the owner check
//!   fails) and drop; after each `AllocIpLinked` the address is complete
//!   and held, so a retry returns it, release and gc reclaim it; after
//!   `AllocLastReservedWritten` the hint may be garbled until truncated,
//!   which reads as `None` or another address, and allocation stays correct.
//! - release removes the IP files before the index, so a repeated release
//!   still finds what is left; gc: see `gc.rs`.
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

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

pub use allocate::{allocate, free_counts, held, ipam_result, release};
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
    AllocRecordWritten,
    AllocIndexWritten,
    AllocIpLinked,
    AllocLastReservedWritten,
    AllocLastReservedTruncated,
    ReleaseIpRemoved,
    ReleaseIndexRemoved,
    GcTempRemoved,
    GcIpRemoved,
    GcIndexRemoved,
    GcIndexTmpWritten,
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
