//! The store's file primitives: atomic publication (temp file, then rename
//! or hard link), reading IP files, index files and `last_reserved_ip.<set>`.
//! Callers hold the store's lock.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::owner::Owner;
use super::{Step, Store};
use crate::error::IpamError;

pub(super) const ATTACHMENTS: &str = "attachments";
pub(super) const LOCK: &str = "lock";
const LAST_RESERVED: &str = "last_reserved_ip.";
const TEMP_PREFIX: &str = "tmp.";

/// Who an IP file says holds its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Holder {
    Free,
    Held(Owner),
    /// The file exists but names no owner (e.g. host-local's empty file).
    Garbled,
}

/// An index file: which addresses an attachment holds (or is about to).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Index {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    pub ips: Vec<IpAddr>,
}

impl Index {
    pub fn owner(&self) -> Owner {
        Owner { id: self.container_id.clone(), ifname: self.ifname.clone() }
    }
}

/// Whether a directory entry is a temp file.
pub(super) fn is_temp(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX)
}

/// The address an entry of the network directory is the IP file of, if any
/// (only canonical spellings, so each address has one file name).
pub(super) fn ip_of_name(name: &str) -> Option<IpAddr> {
    name.parse::<IpAddr>().ok().filter(|ip| ip.to_string() == name)
}

impl Store {
    pub(super) fn ip_path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    pub(super) fn index_path(&self, owner: &Owner) -> PathBuf {
        self.dir.join(ATTACHMENTS).join(owner.index_name())
    }

    pub(super) fn attachments_dir(&self) -> PathBuf {
        self.dir.join(ATTACHMENTS)
    }

    /// Whether `ip` has an IP file (one `lstat`).
    pub(super) fn is_taken(&self, ip: IpAddr) -> Result<bool, IpamError> {
        let path = self.ip_path(ip);
        match fs::symlink_metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(IpamError::io("stat", path)(e)),
        }
    }

    pub(super) fn holder(&self, ip: IpAddr) -> Result<Holder, IpamError> {
        let path = self.ip_path(ip);
        match fs::read(&path) {
            Ok(bytes) => Ok(String::from_utf8(bytes)
                .ok()
                .and_then(|s| Owner::from_ip_file(&s))
                .map_or(Holder::Garbled, Holder::Held)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Holder::Free),
            Err(e) => Err(IpamError::io("read", path)(e)),
        }
    }

    /// Writes `content` to a fresh temp file in the network directory.
    fn write_temp(&self, content: &[u8]) -> Result<PathBuf, IpamError> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let name = format!("{TEMP_PREFIX}{}.{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let path = self.dir.join(name);
        // A leftover of a dead process with our pid may be a second link to
        // a live IP file: unlink it, never open it for writing.
        remove_if_exists(&path)?;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(IpamError::io("create", &path))?;
        f.write_all(content).map_err(IpamError::io("write", &path))?;
        Ok(path)
    }

    /// Creates the IP file of `ip` holding `owner`, atomically with its
    /// content. `Ok(false)`: the address already has an IP file.
    pub(super) fn link_ip(&self, ip: IpAddr, owner: &Owner) -> Result<bool, IpamError> {
        let tmp = self.write_temp(owner.ip_file_content().as_bytes())?;
        self.reached(Step::AllocOwnerTmpWritten)?;
        let path = self.ip_path(ip);
        match fs::hard_link(&tmp, &path) {
            Ok(()) => {}
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return match e.kind() {
                    ErrorKind::AlreadyExists => Ok(false),
                    _ => Err(IpamError::io("link", path)(e)),
                };
            }
        }
        self.reached(Step::AllocLinked)?;
        fs::remove_file(&tmp).map_err(IpamError::io("remove", &tmp))?;
        self.reached(Step::AllocTmpRemoved)?;
        Ok(true)
    }

    /// Replaces `path` with `content` (temp file, then rename).
    fn replace(&self, path: &Path, content: &[u8], tmp_step: Step, done: Step) -> Result<(), IpamError> {
        let tmp = self.write_temp(content)?;
        self.reached(tmp_step)?;
        if let Err(e) = fs::rename(&tmp, path) {
            let _ = fs::remove_file(&tmp);
            return Err(IpamError::io("rename into", path)(e));
        }
        self.reached(done)
    }

    /// The owner's index, if it has one.
    pub(super) fn read_index(&self, owner: &Owner) -> Result<Option<Index>, IpamError> {
        let path = self.index_path(owner);
        let Some(index) = read_index_file(&path)? else { return Ok(None) };
        if index.owner() != *owner {
            return Err(IpamError::IndexCollision {
                path,
                other_id: index.container_id,
                other_ifname: index.ifname,
            });
        }
        Ok(Some(index))
    }

    /// Replaces the owner's index with `ips`.
    pub(super) fn write_index(
        &self,
        owner: &Owner,
        ips: &[IpAddr],
        steps: (Step, Step),
    ) -> Result<(), IpamError> {
        let index = Index { container_id: owner.id.clone(), ifname: owner.ifname.clone(), ips: ips.to_vec() };
        // A struct of strings and addresses always serialises.
        let json = serde_json::to_vec(&index).expect("Index serialises");
        self.replace(&self.index_path(owner), &json, steps.0, steps.1)
    }

    /// The address last allocated from set `set`; a hint, so unreadable is `None`.
    pub(super) fn last_reserved(&self, set: usize) -> Option<IpAddr> {
        let s = fs::read_to_string(self.dir.join(format!("{LAST_RESERVED}{set}"))).ok()?;
        s.trim().parse().ok()
    }

    pub(super) fn write_last_reserved(&self, set: usize, ip: IpAddr) -> Result<(), IpamError> {
        let path = self.dir.join(format!("{LAST_RESERVED}{set}"));
        self.replace(
            &path,
            ip.to_string().as_bytes(),
            Step::AllocLastReservedTmpWritten,
            Step::AllocLastReservedWritten,
        )
    }

    /// Names in a directory of the store (missing directory: none).
    pub(super) fn list(&self, dir: &Path) -> Result<Vec<String>, IpamError> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(IpamError::io("list", dir)(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(IpamError::io("list", dir))?;
            // Names we did not write may be non-UTF-8; none of ours are.
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// Every address with an IP file.
    pub(super) fn ip_files(&self) -> Result<Vec<IpAddr>, IpamError> {
        Ok(self.list(&self.dir)?.iter().filter_map(|n| ip_of_name(n)).collect())
    }
}

/// Reads an index file; `None` when missing.
pub(super) fn read_index_file(path: &Path) -> Result<Option<Index>, IpamError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(IpamError::io("read", path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| IpamError::Corrupt { path: path.to_path_buf(), reason: e.to_string() })
}

/// Removes a file; already gone counts as done.
pub(super) fn remove_if_exists(path: &Path) -> Result<(), IpamError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(IpamError::io("remove", path)(e)),
        _ => Ok(()),
    }
}
