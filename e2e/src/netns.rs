//! Named network namespaces at /run/netns/NAME, as `ip netns add/del` makes them.
//!
//! Create: a throwaway thread unshares its netns and bind-mounts
//! /proc/thread-self/ns/net onto the (new, empty) file; the namespace lives on
//! through the mount after the thread ends. Nothing else happens in the root
//! netns. See plugin/tests/common/mod.rs (`PodNs`) and containernetworking/plugins
//! pkg/testutils/netns_linux.go (`NewNS`).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use weft_netkit::netns::NetNs;

use crate::error::{E2eError, Result};

/// Where named namespaces live (same place as `ip netns`).
pub const NETNS_DIR: &str = "/run/netns";

/// The path of the named netns `name`.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// How long `delete_netns` retries an unlink that a mount still holds (EBUSY).
const DELETE_BUSY_FOR: Duration = Duration::from_secs(2);

/// Creates the named netns `name`; not idempotent: `NetnsExists` if the file is there.
pub fn create_netns(name: &str) -> Result<PathBuf> {
    weft_netkit::netns::ensure_netns_dir(Path::new(NETNS_DIR))
        .map_err(E2eError::kernel(format!("prepare {NETNS_DIR}")))?;
    let path = netns_path(name);
    match File::options().write(true).create_new(true).open(&path) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(E2eError::NetnsExists { path }),
        Err(e) => return Err(E2eError::io(format!("create {}", path.display()))(e)),
    }
    let target = path.clone();
    let made = std::thread::Builder::new()
        .name("weft-e2e-netns".into())
        .spawn(move || -> nix::Result<()> {
            // This thread only, and it ends right after: the netns lives on through the mount.
            unshare(CloneFlags::CLONE_NEWNET)?;
            mount(Some("/proc/thread-self/ns/net"), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        })
        .map_err(E2eError::io("spawn netns thread"))?
        .join()
        .unwrap_or(Err(Errno::EIO));
    if let Err(errno) = made {
        let _ = fs::remove_file(&path);
        return Err(E2eError::io(format!("create netns {}", path.display()))(errno.into()));
    }
    Ok(path)
}

/// Deletes the named netns `name` (unmount, remove the file); `Ok(false)` if it
/// was already gone. The namespace itself ends when its last user does.
pub fn delete_netns(name: &str) -> Result<bool> {
    let path = netns_path(name);
    if !path.exists() {
        return Ok(false);
    }
    let deadline = Instant::now() + DELETE_BUSY_FOR;
    loop {
        match umount2(&path, MntFlags::MNT_DETACH) {
            // EINVAL: not a mount point (a file left by a create that failed half-way).
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
            Err(errno) => return Err(E2eError::io(format!("unmount {}", path.display()))(errno.into())),
        }
        match fs::remove_file(&path) {
            Ok(()) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            // EBUSY: more mounts stacked on the file here (propagated twice);
            // each round detaches the top one.
            Err(e) if e.raw_os_error() == Some(Errno::EBUSY as i32) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(E2eError::io(format!("remove {}", path.display()))(e)),
        }
    }
}

/// True if `name` is a live named netns (the file is an nsfs mount).
pub fn netns_exists(name: &str) -> bool {
    NetNs::open(netns_path(name)).is_ok()
}

/// Names in /run/netns that start with `prefix` (for cleaning up a run whose
/// state file is missing).
pub fn list_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(rd) = fs::read_dir(NETNS_DIR) else { return Vec::new() };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}
