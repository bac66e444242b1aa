//! Sysctls under /proc/sys: read first, write only if different, and name the
//! sysctl in every error (see containers/netavark src/network/sysctl.rs).
//!
//! /proc/sys/net resolves against the netns of the calling *thread*: to change a
//! pod's sysctl, call these inside `netns::run_in`.

use std::fs;
use std::io;
use std::path::PathBuf;

use crate::kernel_error::KernelError;

/// Reads a sysctl given as a path under /proc/sys ("net/ipv4/ip_forward"), trimmed.
pub fn read_sysctl(name: &str) -> Result<String, KernelError> {
    let path = sysctl_path(name)?;
    fs::read_to_string(&path)
        .map(|v| v.trim().to_string())
        .map_err(|source| KernelError::Sysctl { name: name.into(), source })
}

/// Idempotently sets a sysctl ("net/ipv4/ip_forward", "1"); returns whether it
/// had to be written.
pub fn ensure_sysctl(name: &str, value: &str) -> Result<bool, KernelError> {
    if read_sysctl(name)? == value.trim() {
        return Ok(false);
    }
    let path = sysctl_path(name)?;
    fs::write(&path, value.trim()).map_err(|source| KernelError::Sysctl { name: name.into(), source })?;
    Ok(true)
}

/// Maps "net/ipv4/ip_forward" to /proc/sys/net/ipv4/ip_forward, refusing anything
/// that could escape /proc/sys. Dots are not translated: interface names may hold them.
fn sysctl_path(name: &str) -> Result<PathBuf, KernelError> {
    let bad = name.is_empty() || name.starts_with('/') || name.split('/').any(|c| c.is_empty() || c == "..");
    if bad {
        return Err(KernelError::Sysctl {
            name: name.into(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a path under /proc/sys"),
        });
    }
    Ok(PathBuf::from("/proc/sys").join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            sysctl_path("net/ipv4/ip_forward").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.100/rp_filter").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/rp_filter")
        );
        for bad in ["", "/etc/passwd", "net/../../etc", "net//x"] {
            assert!(sysctl_path(bad).is_err(), "{bad}");
        }
    }
}
