//! The store's file primitives: an attachment's record (written to a pooled
//! file or a new temp file, renamed to its index, hard-linked as its IP
//! files), reading owners back, and the `last_reserved_ip.<set>` hint.
//! Callers hold the store's lock.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::owner::Owner;
use super::pool::PoolSteps;
use super::{Step, Store};
use crate::error::IpamError;

pub(super) const ATTACHMENTS: &str = "attachments";
pub(super) const LOCK: &str = "lock";
const LAST_RESERVED: &str = "last_reserved_ip.";
const TEMP_PREFIX: &str = "tmp.";

/// The steps `Store::write_index` reaches.
#[derive(Debug, Clone, Copy)]
pub(super) struct IndexSteps {
    /// A new temp file holds the record.
    pub temp_written: Step,
    /// The temp file was renamed over the index.
    pub temp_renamed: Step,
    /// Taking the file from the pool instead; `None`: never.
    pub pooled: Option<PoolSteps>,
}

/// Who an IP file says holds its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Holder {
    Free,
    Held(Owner),
    /// The file exists but names no owner (e.g. host-local's empty file).
    Garbled,
}

/// An attachment's record: its index, and the content of its IP files
/// (the same inode). Never changed while it has a name outside `free/` (see
/// `pool.rs`); the index is replaced by a new record, so an IP file linked
/// earlier may list fewer or stale addresses: only its owner counts, the
/// index's `ips` are the truth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Record {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    pub ips: Vec<IpAddr>,
}

impl Record {
    pub fn owner(&self) -> Owner {
        Owner { id: self.container_id.clone(), ifname: self.ifname.clone() }
    }
}

/// The owner an IP file's content names: our JSON record, or host-local's
/// (and older weft's) `"<id>\r\n<ifname>"`. `None` if it names none.
pub(super) fn owner_of_ip_file(bytes: &[u8]) -> Option<Owner> {
    if let Ok(record) = serde_json::from_slice::<Record>(bytes) {
        return (!record.container_id.is_empty()).then(|| record.owner());
    }
    Owner::from_host_local(std::str::from_utf8(bytes).ok()?)
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
            Ok(bytes) => Ok(owner_of_ip_file(&bytes).map_or(Holder::Garbled, Holder::Held)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Holder::Free),
            Err(e) => Err(IpamError::io("read", path)(e)),
        }
    }

    /// Writes `content` to a fresh temp file in the network directory.
    fn write_temp(&self, content: &[u8]) -> Result<PathBuf, IpamError> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let name = format!("{TEMP_PREFIX}{}.{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let path = self.dir.join(name);
        let create = || OpenOptions::new().write(true).create_new(true).open(&path);
        // Never open an existing file for writing: a dead process's leftover
        // with our pid may be a link to a live record. Unlink it, try again.
        let mut f = match create() {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                remove_if_exists(&path)?;
                create()
            }
            r => r,
        }
        .map_err(IpamError::io("create", &path))?;
        if let Err(e) = f.write_all(content) {
            // A full disk (ENOSPC) must not leave a temp file behind.
            let _ = fs::remove_file(&path);
            return Err(IpamError::io("write", path)(e));
        }
        Ok(path)
    }

    /// The owner's index, if it has one.
    pub(super) fn read_index(&self, owner: &Owner) -> Result<Option<Record>, IpamError> {
        let path = self.index_path(owner);
        let Some(record) = read_index_file(&path)? else { return Ok(None) };
        if record.owner() != *owner {
            return Err(IpamError::IndexCollision {
                path,
                other_id: record.container_id,
                other_ifname: record.ifname,
            });
        }
        Ok(Some(record))
    }

    /// Replaces the owner's index with a new record naming `ips`: written
    /// to a pooled file when `steps.pooled` allows and the pool has one, else
    /// to a temp file (a new inode), then renamed over the index.
    pub(super) fn write_index(
        &self,
        owner: &Owner,
        ips: &[IpAddr],
        steps: IndexSteps,
    ) -> Result<(), IpamError> {
        let record =
            Record { container_id: owner.id.clone(), ifname: owner.ifname.clone(), ips: ips.to_vec() };
        // A struct of strings and addresses always serialises.
        let json = serde_json::to_vec(&record).expect("Record serialises");
        let path = self.index_path(owner);
        if let Some(pooled) = steps.pooled {
            if let Some(file) = self.take_pooled(&json, pooled)? {
                // On failure it stays in the pool, where its content does not matter.
                fs::rename(&file, &path).map_err(IpamError::io("rename into", &path))?;
                return self.reached(pooled.renamed);
            }
        }
        let tmp = self.write_temp(&json)?;
        self.reached(steps.temp_written)?;
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(IpamError::io("rename into", path)(e));
        }
        self.reached(steps.temp_renamed)
    }

    /// Hard-links the owner's index (its current record) as the IP file of
    /// `ip`: the file appears with its full content, and the link fails if
    /// the address is taken. `Ok(false)`: the address already has an IP file.
    pub(super) fn link_ip(&self, ip: IpAddr, owner: &Owner) -> Result<bool, IpamError> {
        let path = self.ip_path(ip);
        match fs::hard_link(self.index_path(owner), &path) {
            Ok(()) => self.reached(Step::AllocIpLinked).map(|()| true),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(IpamError::io("link", path)(e)),
        }
    }

    fn last_reserved_path(&self, set: usize) -> PathBuf {
        self.dir.join(format!("{LAST_RESERVED}{set}"))
    }

    /// The address last allocated from set `set`. Only where the search
    /// starts: missing, unreadable or garbled is `None`, never an error.
    pub(super) fn last_reserved(&self, set: usize) -> Option<IpAddr> {
        let bytes = fs::read(self.last_reserved_path(set)).ok()?;
        std::str::from_utf8(&bytes).ok()?.trim().parse().ok()
    }

    /// Records `ip` as set `set`'s last allocation, overwriting the file in
    /// place (no new inode after the first time). A process killed between
    /// the write and the `set_len` leaves the new text followed by the old
    /// one's tail, e.g. "10.0.0.9" over "10.0.0.10" reads "10.0.0.90": that
    /// parses to `None` or to some address, and is only a hint; the `lstat`
    /// and the `link` decide what is free, so allocation stays correct.
    pub(super) fn write_last_reserved(&self, set: usize, ip: IpAddr) -> Result<(), IpamError> {
        let path = self.last_reserved_path(set);
        let text = ip.to_string();
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(IpamError::io("open", &path))?;
        f.write_all(text.as_bytes()).map_err(IpamError::io("write", &path))?;
        self.reached(Step::AllocLastReservedWritten)?;
        f.set_len(text.len() as u64).map_err(IpamError::io("truncate", &path))?;
        self.reached(Step::AllocLastReservedTruncated)
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
pub(super) fn read_index_file(path: &Path) -> Result<Option<Record>, IpamError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_of_ip_files_in_every_format() {
        let o = |id: &str, ifname: &str| Some(Owner { id: id.into(), ifname: ifname.into() });
        let table: [(&[u8], Option<Owner>); 7] = [
            (br#"{"containerID":"c1","ifname":"eth0","ips":["10.0.0.2"]}"#, o("c1", "eth0")),
            (br#"{"ips":[],"ifname":"net1","containerID":"c 2","later":1}"#, o("c 2", "net1")),
            (b"c3\r\neth0", o("c3", "eth0")),
            (b"c4", o("c4", "")),
            (b"", None),
            (br#"{"containerID":"","ifname":"eth0","ips":[]}"#, None),
            (b"\xff\r\neth0", None),
        ];
        for (content, want) in table {
            assert_eq!(owner_of_ip_file(content), want, "{:?}", String::from_utf8_lossy(content));
        }
    }
}
