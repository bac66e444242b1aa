//! The CNI runtime environment (`CNI_COMMAND`, `CNI_CONTAINERID`, ...).
//! Parsed from a lookup function so tests never set process env vars.

use std::path::PathBuf;
use std::str::FromStr;

use crate::args::CniArgs;
use crate::error::{CniError, ErrorCode};
use crate::version::Version;

/// A CNI operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl FromStr for Command {
    type Err = CniError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const ALL: [Command; 6] =
            [Command::Add, Command::Del, Command::Check, Command::Version, Command::Status, Command::Gc];
        ALL.into_iter().find(|c| c.as_str() == s).ok_or_else(|| {
            CniError::new(ErrorCode::InvalidEnvironment, "unknown CNI_COMMAND")
                .with_details(format!("{s:?}: expected ADD, DEL, CHECK, VERSION, STATUS or GC"))
        })
    }
}

impl Command {
    /// The spelling of CNI_COMMAND.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }
}

impl Command {
    /// Refuses a command the config's version does not define: CHECK exists
    /// from 0.4.0, STATUS and GC from 1.1.0.
    pub fn require_version(self, v: Version) -> Result<(), CniError> {
        let ok = match self {
            Command::Check => v.has_check(),
            Command::Status | Command::Gc => v.has_status_and_gc(),
            _ => true,
        };
        if ok {
            Ok(())
        } else {
            Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                format!("{} is not defined for cniVersion {v}", self.as_str()),
            ))
        }
    }
}

/// What the runtime told us through the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Command,
    /// Empty for VERSION, STATUS and GC.
    pub container_id: String,
    /// Absent for DEL when the netns is already gone (containerd's second DEL).
    pub netns: Option<PathBuf>,
    /// Empty for VERSION, STATUS and GC.
    pub ifname: String,
    pub args: CniArgs,
    pub path: Vec<PathBuf>,
}

impl CniEnv {
    /// Reads and validates the CNI_* variables that `command` needs.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<CniEnv, CniError> {
        let get = |k: &str| get(k).filter(|v| !v.is_empty());
        let command: Command = get("CNI_COMMAND").ok_or_else(|| missing("CNI_COMMAND"))?.parse()?;
        let per_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let needs = |k: &'static str, needed: bool| -> Result<String, CniError> {
            match get(k) {
                Some(v) => Ok(v),
                None if needed => Err(missing(k)),
                None => Ok(String::new()),
            }
        };
        let container_id = needs("CNI_CONTAINERID", per_attachment)?;
        let ifname = needs("CNI_IFNAME", per_attachment)?;
        let netns = needs("CNI_NETNS", matches!(command, Command::Add | Command::Check))?;
        let path = needs("CNI_PATH", per_attachment || command == Command::Gc)?;
        if per_attachment {
            validate_container_id(&container_id)?;
            validate_ifname(&ifname)?;
        }
        Ok(CniEnv {
            command,
            container_id,
            netns: (!netns.is_empty()).then(|| PathBuf::from(netns)),
            ifname,
            args: CniArgs::parse(&get("CNI_ARGS").unwrap_or_default())?,
            path: std::env::split_paths(&path).filter(|p| !p.as_os_str().is_empty()).collect(),
        })
    }
}

fn missing(k: &str) -> CniError {
    CniError::new(ErrorCode::InvalidEnvironment, format!("required env variable {k} is not set"))
}

/// The spec's rule for container IDs: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
        Ok(())
    } else {
        Err(CniError::new(ErrorCode::InvalidEnvironment, "invalid CNI_CONTAINERID")
            .with_details(format!("{id:?} must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$")))
    }
}

/// The kernel's rule for interface names: 1..=15 bytes, no `/`, `:` or
/// white space, and not `.` or `..`.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(CniError::new(ErrorCode::InvalidEnvironment, "invalid interface name")
            .with_details(format!("{name:?}: 1-15 bytes, no '/', ':' or white space")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        CniEnv::from_lookup(|k| m.get(k).cloned())
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/p1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=a"),
    ];

    #[test]
    fn full_add_env() {
        let e = env(ADD).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.container_id, "c1");
        assert_eq!(e.netns, Some(PathBuf::from("/run/netns/p1")));
        assert_eq!(e.path, [PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]);
        assert_eq!(e.args.pod_name.as_deref(), Some("a"));
    }

    #[test]
    fn each_missing_variable_is_code_4() {
        for skip in ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"] {
            let pairs: Vec<_> = ADD.iter().copied().filter(|(k, _)| *k != skip).collect();
            let e = env(&pairs).unwrap_err();
            assert_eq!(e.code, 4, "{skip}");
            assert!(e.msg.contains(skip), "{}", e.msg);
        }
    }

    #[test]
    fn del_without_netns_is_fine() {
        let pairs: Vec<_> = ADD
            .iter()
            .map(|&(k, v)| if k == "CNI_COMMAND" { (k, "DEL") } else { (k, v) })
            .filter(|(k, _)| *k != "CNI_NETNS")
            .collect();
        assert_eq!(env(&pairs).unwrap().netns, None);
    }

    #[test]
    fn version_needs_only_the_command() {
        assert_eq!(env(&[("CNI_COMMAND", "VERSION")]).unwrap().command, Command::Version);
        assert_eq!(env(&[("CNI_COMMAND", "STATUS")]).unwrap().command, Command::Status);
        assert_eq!(env(&[("CNI_COMMAND", "GC")]).unwrap_err().code, 4);
        assert_eq!(env(&[("CNI_COMMAND", "FROB")]).unwrap_err().code, 4);
    }

    #[test]
    fn commands_need_their_version() {
        assert!(Command::Check.require_version(Version::V0_3_1).is_err());
        assert!(Command::Check.require_version(Version::V0_4_0).is_ok());
        assert_eq!(Command::Gc.require_version(Version::V1_0_0).unwrap_err().code, 1);
        assert!(Command::Status.require_version(Version::V1_1_0).is_ok());
        assert!(Command::Add.require_version(Version::V0_3_0).is_ok());
    }

    #[test]
    fn bad_ids_and_ifnames() {
        for bad in ["", "-x", "a/b", "a b"] {
            assert!(validate_container_id(bad).is_err(), "{bad:?}");
        }
        assert!(validate_container_id("abc_1.2-3").is_ok());
        for bad in ["", ".", "..", "a/b", "a:b", "eth 0", "sixteen-chars-xx"] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
        assert!(validate_ifname("eth0").is_ok());
    }
}
