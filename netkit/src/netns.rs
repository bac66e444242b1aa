//! Network namespaces: open a netns file, get a netlink handle inside it, run
//! blocking work inside it.
//!
//! Design: setns(2) changes only the calling thread, and a netlink socket stays
//! in the netns it was created in. So a pod netns is reached by opening a second
//! netlink socket on a short-lived std::thread that setns()'d into the pod netns
//! and then exits. No long-lived thread (in particular no tokio worker) ever
//! changes netns. Threads spawned by a thread inherit that thread's netns; the
//! tests in tests/kernel.rs check this.
//! See containernetworking/plugins pkg/ns/ns_linux.go and netavark
//! src/network/core_utils.rs (`open_netlink_sockets`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::libc;
use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::statfs::{fstatfs, NSFS_MAGIC};

use crate::kernel_error::KernelError;

/// An open network namespace file (e.g. `/var/run/netns/cni-…`, `/proc/<pid>/ns/net`).
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Opens a netns file; `NetnsNotFound` if it does not exist, `NotANetns` if it is
    /// not a network namespace (a stale bind-mount target, another kind of
    /// namespace, a FIFO). Never blocks: the file is opened with `O_NONBLOCK`.
    pub fn open(path: impl AsRef<Path>) -> Result<NetNs, KernelError> {
        let path = path.as_ref().to_path_buf();
        // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
        let file = match OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(KernelError::NetnsNotFound { path }),
            Err(source) => {
                return Err(KernelError::Io { what: format!("open netns {}", path.display()), source })
            }
        };
        let io_err = |what: &str, errno: nix::Error| KernelError::Io {
            what: format!("{what} netns {}", path.display()),
            source: errno.into(),
        };
        let st = fstatfs(&file).map_err(|e| io_err("fstatfs", e))?;
        if st.filesystem_type() != NSFS_MAGIC {
            let reason = "not a namespace file: stale or unmounted netns file?";
            return Err(KernelError::NotANetns { path, reason: reason.into() });
        }
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd, which `file` keeps open.
        let kind = unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE) };
        if kind < 0 {
            return Err(io_err("NS_GET_NSTYPE on", nix::Error::last()));
        }
        if kind != libc::CLONE_NEWNET {
            let reason = format!("a {} namespace", namespace_kind(kind));
            return Err(KernelError::NotANetns { path, reason });
        }
        Ok(NetNs { file, path })
    }

    /// Whether `self` and `other` are the same namespace (same nsfs inode).
    pub fn same_as(&self, other: &NetNs) -> Result<bool, KernelError> {
        let id = |ns: &NetNs| {
            let m = ns.file.metadata().map_err(|source| KernelError::Io {
                what: format!("fstat netns {}", ns.path.display()),
                source,
            })?;
            Ok::<_, KernelError>((m.dev(), m.ino()))
        };
        Ok(id(self)? == id(other)?)
    }

    /// A second handle on the same netns (for a thread that outlives the borrow).
    pub fn try_clone(&self) -> Result<NetNs, KernelError> {
        let file = self.file.try_clone().map_err(|source| KernelError::Io {
            what: format!("dup netns {}", self.path.display()),
            source,
        })?;
        Ok(NetNs { file, path: self.path.clone() })
    }

    /// Opens the netns of the calling thread (`/proc/thread-self/ns/net`).
    pub fn current() -> Result<NetNs, KernelError> {
        NetNs::open("/proc/thread-self/ns/net")
    }

    /// The path this netns was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw fd, valid as long as `self` lives (for `IFLA_NET_NS_FD`).
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Moves the calling thread into this netns. Only for threads that end right after.
    fn enter(&self) -> Result<(), KernelError> {
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|errno| KernelError::NetnsEnter { path: self.path.clone(), source: errno.into() })
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// The name of a namespace type as NS_GET_NSTYPE returns it (a CLONE_NEW* flag).
fn namespace_kind(kind: i32) -> &'static str {
    match kind {
        libc::CLONE_NEWNS => "mount",
        libc::CLONE_NEWPID => "pid",
        libc::CLONE_NEWUTS => "uts",
        libc::CLONE_NEWIPC => "ipc",
        libc::CLONE_NEWUSER => "user",
        libc::CLONE_NEWCGROUP => "cgroup",
        libc::CLONE_NEWTIME => "time",
        _ => "non-network",
    }
}

/// Opens a netlink connection in the calling thread's netns and spawns it on the
/// current tokio runtime. Call it from inside the runtime (e.g. in `block_on`).
pub fn connect_current() -> Result<rtnetlink::Handle, KernelError> {
    let rt = tokio::runtime::Handle::try_current()
        .map_err(|_| KernelError::NoRuntime { what: "connect_current" })?;
    spawn_connection(&rt)
}

/// Opens a netlink connection inside `ns` from a throwaway thread and spawns it on
/// the current tokio runtime; the socket stays in `ns` after the thread exits.
pub fn connect_in(ns: &NetNs) -> Result<rtnetlink::Handle, KernelError> {
    let rt =
        tokio::runtime::Handle::try_current().map_err(|_| KernelError::NoRuntime { what: "connect_in" })?;
    run_in(ns, || spawn_connection(&rt))?
}

/// A netlink connection being opened inside a netns on a background thread.
pub struct PendingConnection(std::thread::JoinHandle<Result<rtnetlink::Handle, KernelError>>);

impl PendingConnection {
    /// Waits for the connection; the thread has left by then.
    pub fn wait(self) -> Result<rtnetlink::Handle, KernelError> {
        match self.0.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// Starts `connect_in(ns)` on a throwaway thread and returns at once, so the
/// thread spawn and setns overlap the caller's other work (CNI ADD's hot path).
/// Call it inside the runtime the connection should run on.
pub fn connect_in_background(ns: &NetNs) -> Result<PendingConnection, KernelError> {
    let rt = tokio::runtime::Handle::try_current()
        .map_err(|_| KernelError::NoRuntime { what: "connect_in_background" })?;
    let ns = ns.try_clone()?;
    let worker = std::thread::Builder::new()
        .name("weft-netns".into())
        .spawn(move || {
            ns.enter()?;
            spawn_connection(&rt)
        })
        .map_err(|source| KernelError::Io { what: "spawn netns thread".into(), source })?;
    Ok(PendingConnection(worker))
}

/// Runs blocking `f` on a throwaway thread that has entered `ns` (e.g. to read a
/// pod's sysctl). Threads and processes that `f` starts are in `ns` too.
pub fn run_in<T: Send>(ns: &NetNs, f: impl FnOnce() -> T + Send) -> Result<T, KernelError> {
    on_thread(|| ns.enter(), f)
}

/// Runs blocking `f` on a throwaway thread in a new, empty netns of its own
/// (a benchmark's or test's scratch node); the caller's netns is untouched.
pub fn run_in_new<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T, KernelError> {
    let unshare_net = || {
        unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| KernelError::Io { what: "unshare(CLONE_NEWNET)".into(), source: e.into() })
    };
    on_thread(unshare_net, f)
}

/// Runs `f` on a scoped thread after `enter` moved that thread to its netns.
fn on_thread<T: Send>(
    enter: impl FnOnce() -> Result<(), KernelError> + Send,
    f: impl FnOnce() -> T + Send,
) -> Result<T, KernelError> {
    std::thread::scope(|s| {
        let worker = std::thread::Builder::new()
            .name("weft-netns".into())
            .spawn_scoped(s, || {
                enter()?;
                Ok(f())
            })
            .map_err(|source| KernelError::Io { what: "spawn netns thread".into(), source })?;
        match worker.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Makes `dir` (e.g. /run/netns) a shared mount point before a named netns is
/// mounted in it, binding it over itself first if it is a plain directory: what
/// iproute2's `netns_add` does (ip/ipnetns.c). Idempotent.
///
/// Without it, another tool's first `ip netns add` binds the directory over
/// itself mid-run, hiding the mounts already in it: their unmount finds no mount
/// point and the unlink fails with EBUSY. Shared, an unmount also reaches the
/// copies other mount namespaces (`ip netns exec`) hold. A lock on the directory
/// keeps two of our processes from both binding it.
pub fn ensure_netns_dir(dir: &Path) -> Result<(), KernelError> {
    let io = |what: &str| {
        let what = format!("{what} {}", dir.display());
        move |errno: Errno| KernelError::Io { what, source: errno.into() }
    };
    std::fs::create_dir_all(dir)
        .map_err(|source| KernelError::Io { what: format!("create {}", dir.display()), source })?;
    let handle = File::open(dir)
        .map_err(|source| KernelError::Io { what: format!("open {}", dir.display()), source })?;
    let _lock = Flock::lock(handle, FlockArg::LockExclusive).map_err(|(_, errno)| io("lock")(errno))?;
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    let make_shared = || mount(None::<&str>, dir, Some("none"), shared, None::<&str>);
    match make_shared() {
        Ok(()) => return Ok(()),
        // EINVAL: not a mount point yet.
        Err(Errno::EINVAL) => {}
        Err(errno) => return Err(io("make shared")(errno)),
    }
    let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
    mount(Some(dir), dir, Some("none"), bind, None::<&str>).map_err(io("bind over itself"))?;
    make_shared().map_err(io("make shared"))
}

/// Creates the rtnetlink socket on this thread (so in this thread's netns) and runs
/// its connection task on `rt`; the socket registers with `rt`'s reactor on creation.
fn spawn_connection(rt: &tokio::runtime::Handle) -> Result<rtnetlink::Handle, KernelError> {
    let _guard = rt.enter();
    let (conn, handle, _) = rtnetlink::new_connection()
        .map_err(|source| KernelError::Io { what: "open netlink socket".into(), source })?;
    rt.spawn(conn);
    Ok(handle)
}
