//! Test isolation for kernel tests: every test moves its own thread into a fresh
//! netns before doing anything, and "pod" namespaces are bind-mounted under a
//! random name in /run/netns and removed on drop. The root netns is never touched.
//!
//! Pattern from containers/netavark src/test/netlink.rs (`test_setup!`) and
//! containernetworking/plugins pkg/testutils/netns_linux.go (`NewNS`).

#![allow(dead_code)]

use std::fs::{self, File};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use weft_netkit::netns::NetNs;

/// A test that has left the root netns: its thread is in a fresh netns with `lo`
/// up, and `rt` (created after the unshare) runs there.
pub struct Isolated {
    pub rt: tokio::runtime::Runtime,
    /// The netns the test thread started in (the root one); only ever read.
    pub root: NetNs,
}

/// Skips (None, with a message) unless root; otherwise unshares the calling
/// thread's netns, brings `lo` up and builds a current_thread runtime.
pub fn isolate(test: &str) -> Option<Isolated> {
    if !weft_test_support::root_or_skip(test, "CAP_NET_ADMIN + CAP_SYS_ADMIN") {
        return None;
    }
    let root = NetNs::current().expect("open own netns");
    if let Err(e) = unshare(CloneFlags::CLONE_NEWNET) {
        weft_test_support::skip(test, format!("unshare(CLONE_NEWNET) failed: {e}"));
        return None;
    }
    assert_ne!(ns_inode("/proc/thread-self/ns/net"), fd_inode(&root), "unshare did not switch netns");
    // The runtime is created after the unshare so that nothing it does lands in root.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let h = weft_netkit::netns::connect_current().unwrap();
        let lo = weft_netkit::link::get_link(&h, "lo").await.unwrap().expect("lo");
        weft_netkit::link::set_up(&h, lo.index).await.unwrap();
    });
    Some(Isolated { rt, root })
}

/// The inode of a namespace file: equal inodes mean the same namespace.
pub fn ns_inode(path: impl AsRef<Path>) -> u64 {
    fs::metadata(path).unwrap().ino()
}

/// The inode of an open namespace (its path may be thread-relative, e.g. thread-self).
pub fn fd_inode(ns: &NetNs) -> u64 {
    let fd = ns.as_fd().try_clone_to_owned().unwrap();
    File::from(fd).metadata().unwrap().ino()
}

/// A named netns at /run/netns/<random>, created on a dedicated thread; unmounted
/// and removed on drop.
pub struct PodNs {
    pub path: PathBuf,
}

impl PodNs {
    pub fn new() -> PodNs {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
        let name =
            format!("weft-test-{}-{}-{nanos:x}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        weft_netkit::netns::ensure_netns_dir(Path::new("/run/netns")).unwrap();
        let path = Path::new("/run/netns").join(name);
        File::create(&path).unwrap();
        let target = path.clone();
        std::thread::spawn(move || {
            // This thread only: the new netns lives on through the bind mount.
            unshare(CloneFlags::CLONE_NEWNET)?;
            mount(Some("/proc/thread-self/ns/net"), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        })
        .join()
        .unwrap()
        .unwrap_or_else(|e| {
            let _ = fs::remove_file(&path);
            panic!("create netns {}: {e}", path.display())
        });
        PodNs { path }
    }

    pub fn open(&self) -> NetNs {
        NetNs::open(&self.path).unwrap()
    }
}

impl Drop for PodNs {
    fn drop(&mut self) {
        let _ = umount2(&self.path, MntFlags::MNT_DETACH);
        let _ = fs::remove_file(&self.path);
    }
}

/// Runs a tool in the calling thread's netns and returns stdout (panics on failure).
pub fn tool_output(tool: &str, args: &[&str]) -> String {
    let path = weft_netkit::tool::find_tool(tool).unwrap();
    let out = std::process::Command::new(path).args(args).output().unwrap();
    assert!(out.status.success(), "{tool} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The lines of `text` that mention `needle`.
pub fn lines_with(text: &str, needle: &str) -> Vec<String> {
    text.lines().filter(|l| l.contains(needle)).map(str::to_string).collect()
}
