//! Learning which manifests changed from inotify, so that a poll of the
//! directory source reads only the files named since the last one (stat-ing
//! every file costs 3-4 ms at 1,000 files, and the agent polls on every
//! event), and so that a change wakes the agent at once instead of waiting
//! for its next poll.
//!
//! A thread reads the events and keeps the names they give, bounded; what
//! inotify cannot vouch for turns into "look at everything": a queue
//! overflow, too many names, the directory itself deleted or moved (the
//! watch is then added again by path at the next poll, until it takes).

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use super::WakeFn;

/// Names kept between two polls, at most; past it the next poll looks at
/// every file (a process that creates files by the thousand costs one scan).
const MAX_NAMES: usize = 4096;

/// How long the thread waits for events before it checks whether its
/// source is gone.
const STOP_CHECK_MS: u16 = 500;

/// What the directory's watch reports.
fn mask() -> AddWatchFlags {
    AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR
}

/// What changed since the last `DirWatch::take`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Changed {
    /// Anything may have: look at every file.
    Anything,
    /// At most the files of these names (the events do not say whether a
    /// file is a manifest: `is_manifest` does).
    Names(BTreeSet<OsString>),
}

/// The events read and not yet taken.
#[derive(Debug)]
struct Pending {
    names: BTreeSet<OsString>,
    /// Something was lost: the next take is `Anything`.
    rescan: bool,
    /// The directory's watch is gone (the directory deleted or moved).
    lost: bool,
    /// The thread reads the events (started, and not ended by an error).
    reading: bool,
    /// The watch in force; events of an older one are stale.
    wd: WatchDescriptor,
}

/// An inotify watch on the manifest directory.
#[derive(Debug)]
pub(super) struct DirWatch {
    dir: PathBuf,
    inotify: Arc<Inotify>,
    pending: Arc<Mutex<Pending>>,
    /// Tells the thread to end (set when the source is dropped).
    stop: Arc<AtomicBool>,
    started: bool,
}

impl DirWatch {
    /// Watches `dir`. Events queue in the kernel until `start`; the first
    /// take is `Anything`, so a scan reads what was there before.
    pub fn new(dir: &Path) -> nix::Result<DirWatch> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        let wd = inotify.add_watch(dir, mask())?;
        let pending = Pending { names: BTreeSet::new(), rescan: true, lost: false, reading: false, wd };
        Ok(DirWatch {
            dir: dir.to_path_buf(),
            inotify: Arc::new(inotify),
            pending: Arc::new(Mutex::new(pending)),
            stop: Arc::new(AtomicBool::new(false)),
            started: false,
        })
    }

    /// Starts the thread that reads the events and calls `wake` when a file
    /// changed. A second call does nothing; false if the thread could not
    /// be started (every take is then `Anything`).
    pub fn start(&mut self, wake: WakeFn) -> bool {
        if self.started {
            return true;
        }
        let (inotify, pending, stop) = (self.inotify.clone(), self.pending.clone(), self.stop.clone());
        let spawned = std::thread::Builder::new()
            .name("weft-agent-dir-watch".into())
            .spawn(move || read_events(&inotify, &pending, &stop, &wake));
        self.started = spawned.is_ok();
        lock(&self.pending).reading = self.started;
        self.started
    }

    /// What changed since the last call. While no thread reads the events
    /// (before `start`, or after a read error) or the directory has no
    /// watch, always `Anything`; a lost watch is added again here, by path.
    pub fn take(&self) -> Changed {
        let mut p = lock(&self.pending);
        if p.lost {
            if let Ok(wd) = self.inotify.add_watch(&self.dir, mask()) {
                // A moved directory keeps its old watch: not ours to follow.
                if wd != p.wd {
                    let _ = self.inotify.rm_watch(p.wd);
                }
                (p.wd, p.lost) = (wd, false);
            }
            p.rescan = true;
        }
        if !p.reading || p.lost || std::mem::take(&mut p.rescan) {
            p.names.clear();
            return Changed::Anything;
        }
        Changed::Names(std::mem::take(&mut p.names))
    }

    /// The next take is `Anything` (a poll that could not finish its reads).
    pub fn rescan(&self) {
        lock(&self.pending).rescan = true;
    }
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn lock(pending: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    // The thread never panics holding it; a poisoned lock still holds names.
    pending.lock().unwrap_or_else(|p| p.into_inner())
}

/// The thread: reads events into `pending` until `stop`, waking the agent
/// when a manifest may have changed. An error reading the queue loses the
/// watch (every poll then scans) and ends the thread.
fn read_events(inotify: &Inotify, pending: &Mutex<Pending>, stop: &AtomicBool, wake: &WakeFn) {
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(STOP_CHECK_MS)) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(_) => return fail(pending, wake),
        }
        let events = match inotify.read_events() {
            Ok(events) => events,
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => continue,
            Err(_) => return fail(pending, wake),
        };
        let mut woken = false;
        let mut p = lock(pending);
        for ev in events {
            woken |= note(&mut p, ev.wd, ev.mask, ev.name.as_deref());
        }
        drop(p);
        if woken {
            wake();
        }
    }
}

/// The events can no longer be read: every poll scans from now on.
fn fail(pending: &Mutex<Pending>, wake: &WakeFn) {
    lock(pending).reading = false;
    wake();
}

/// Records one event; true if the agent should poll.
fn note(p: &mut Pending, wd: WatchDescriptor, mask: AddWatchFlags, name: Option<&OsStr>) -> bool {
    if mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
        p.rescan = true;
        return true;
    }
    if wd != p.wd {
        return false;
    }
    let gone = AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_IGNORED
        | AddWatchFlags::IN_UNMOUNT;
    if mask.intersects(gone) {
        p.lost = true;
        return true;
    }
    let Some(name) = name else { return false };
    if !super::dir::is_manifest(Path::new(name)) {
        return false;
    }
    if p.names.len() >= MAX_NAMES {
        p.names.clear();
        p.rescan = true;
    } else if !p.rescan {
        p.names.insert(name.to_os_string());
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn started(dir: &Path) -> (DirWatch, mpsc::Receiver<()>) {
        let mut w = DirWatch::new(dir).unwrap();
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        assert!(w.start(Box::new(move || {
            let _ = lock_tx(&tx).send(());
        })));
        assert_eq!(w.take(), Changed::Anything, "the first take scans what was there");
        (w, rx)
    }

    fn lock_tx(tx: &Mutex<mpsc::Sender<()>>) -> MutexGuard<'_, mpsc::Sender<()>> {
        tx.lock().unwrap()
    }

    fn names(of: &[&str]) -> Changed {
        Changed::Names(of.iter().map(OsString::from).collect())
    }

    /// Waits for a wake, then for the events of the same writes to settle.
    fn settled(woken: &mpsc::Receiver<()>) {
        woken.recv_timeout(Duration::from_secs(5)).expect("woken");
        std::thread::sleep(Duration::from_millis(50));
        while woken.try_recv().is_ok() {}
    }

    #[test]
    fn a_write_wakes_and_names_the_file_and_hidden_files_do_neither() {
        let dir = tempfile::tempdir().unwrap();
        let (w, woken) = started(dir.path());
        assert_eq!(w.take(), names(&[]));
        // A writer's temp file, then its rename: a wake, for the manifest.
        std::fs::write(dir.path().join(".a.yaml.tmp"), "x").unwrap();
        std::fs::rename(dir.path().join(".a.yaml.tmp"), dir.path().join("a.yaml")).unwrap();
        settled(&woken);
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        std::fs::write(dir.path().join("b.yml"), "x").unwrap();
        settled(&woken);
        assert_eq!(w.take(), names(&["a.yaml", "b.yml"]));
        assert_eq!(w.take(), names(&[]), "taken once");
        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        settled(&woken);
        assert_eq!(w.take(), names(&["a.yaml"]));
        // Hidden and other files wake nobody.
        std::fs::write(dir.path().join(".c.yaml.tmp"), "x").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "y").unwrap();
        assert!(woken.recv_timeout(Duration::from_millis(200)).is_err());
        assert_eq!(w.take(), names(&[]));
    }

    #[test]
    fn a_directory_moved_away_and_back_is_scanned_until_watched_again() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cluster");
        std::fs::create_dir(&dir).unwrap();
        let (w, woken) = started(&dir);
        std::fs::rename(&dir, tmp.path().join("moved")).unwrap();
        settled(&woken);
        assert_eq!(w.take(), Changed::Anything, "no directory at the path: scan (and fail)");
        assert_eq!(w.take(), Changed::Anything, "still none");
        std::fs::create_dir(&dir).unwrap();
        assert_eq!(w.take(), Changed::Anything, "watched again: this scan reads what is there");
        std::fs::write(dir.join("a.yaml"), "x").unwrap();
        settled(&woken);
        assert_eq!(w.take(), names(&["a.yaml"]));
        std::fs::write(tmp.path().join("moved/b.yaml"), "x").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(w.take(), names(&[]), "the old directory is no longer watched");
    }

    #[test]
    fn too_many_names_or_an_overflow_turn_into_a_scan() {
        let wd = {
            let dir = tempfile::tempdir().unwrap();
            DirWatch::new(dir.path()).unwrap().pending.lock().unwrap().wd
        };
        let mut p = Pending { names: BTreeSet::new(), rescan: false, lost: false, reading: true, wd };
        for i in 0..MAX_NAMES {
            assert!(note(&mut p, wd, AddWatchFlags::IN_CLOSE_WRITE, Some(OsStr::new(&format!("{i}.yaml")))));
        }
        assert!(!p.rescan);
        assert!(note(&mut p, wd, AddWatchFlags::IN_CLOSE_WRITE, Some(OsStr::new("one-more.yaml"))));
        assert!(p.rescan && p.names.is_empty(), "bounded");
        let mut p = Pending { names: BTreeSet::new(), rescan: false, lost: false, reading: true, wd };
        assert!(note(&mut p, wd, AddWatchFlags::IN_Q_OVERFLOW, None));
        assert!(p.rescan);
    }

    #[test]
    fn the_thread_ends_with_the_watch() {
        let dir = tempfile::tempdir().unwrap();
        let (w, _woken) = started(dir.path());
        let inotify = Arc::downgrade(&w.inotify);
        assert_eq!(inotify.strong_count(), 2, "the thread holds the watch");
        drop(w);
        let t = std::time::Instant::now();
        while inotify.upgrade().is_some() {
            assert!(t.elapsed() < Duration::from_secs(5), "the thread still holds the watch");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
