//! CNI spec versions weft speaks, and version negotiation.
//!
//! Every reply is written in the version the runtime asked for. libcni 1.1.2
//! (containerd 1.6 and podman 4.3 on Debian) rejects a 1.1.0 result, which is
//! why examples and defaults use 1.0.0.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{CniError, ErrorCode};

/// A CNI spec version weft accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl Version {
    /// Every version weft accepts, oldest first (the VERSION reply).
    pub const ALL: [Version; 5] =
        [Version::V0_3_0, Version::V0_3_1, Version::V0_4_0, Version::V1_0_0, Version::V1_1_0];

    /// The version used where a config does not say (and in examples).
    pub const DEFAULT: Version = Version::V1_0_0;

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// CHECK exists from 0.4.0 on.
    pub fn has_check(self) -> bool {
        self >= Version::V0_4_0
    }

    /// STATUS and GC exist from 1.1.0 on.
    pub fn has_status_and_gc(self) -> bool {
        self >= Version::V1_1_0
    }

    /// Results before 1.0.0 carry `version` on each IP entry.
    pub fn has_ip_version_field(self) -> bool {
        self < Version::V1_0_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Version {
    type Err = CniError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Version::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| {
            CniError::new(ErrorCode::IncompatibleVersion, format!("unsupported CNI version {s:?}"))
                .with_details(format!("weft supports {}", supported_list()))
        })
    }
}

fn supported_list() -> String {
    Version::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|e: CniError| serde::de::Error::custom(e.msg))
    }
}

/// The reply to VERSION: `{"cniVersion": ..., "supportedVersions": [...]}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    pub cni_version: String,
    pub supported_versions: Vec<String>,
}

impl VersionInfo {
    /// The VERSION reply, in the version the caller asked for (or the newest,
    /// when it asked for none or for one we do not know: VERSION never fails
    /// on the version, so the runtime can see what we do support).
    pub fn reply(requested: Option<&str>) -> VersionInfo {
        let cni_version = requested.and_then(|r| r.parse::<Version>().ok()).unwrap_or(Version::V1_1_0);
        VersionInfo {
            cni_version: cni_version.to_string(),
            supported_versions: Version::ALL.iter().map(|v| v.to_string()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_supported_version_and_rejects_others() {
        for v in Version::ALL {
            assert_eq!(v.as_str().parse::<Version>().unwrap(), v);
        }
        for bad in ["0.1.0", "0.2.0", "1.2.0", "", "1.0", "latest"] {
            let e = bad.parse::<Version>().unwrap_err();
            assert_eq!(e.code, ErrorCode::IncompatibleVersion.code(), "{bad}");
        }
    }

    #[test]
    fn feature_gates_follow_the_spec() {
        assert!(!Version::V0_3_1.has_check());
        assert!(Version::V0_4_0.has_check());
        assert!(!Version::V1_0_0.has_status_and_gc());
        assert!(Version::V1_1_0.has_status_and_gc());
        assert!(Version::V0_4_0.has_ip_version_field());
        assert!(!Version::V1_0_0.has_ip_version_field());
    }

    #[test]
    fn version_reply_lists_all_and_echoes_the_request() {
        let r = VersionInfo::reply(Some("0.4.0"));
        assert_eq!(r.cni_version, "0.4.0");
        assert_eq!(r.supported_versions, ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
        assert_eq!(VersionInfo::reply(None).cni_version, "1.1.0");
        assert_eq!(VersionInfo::reply(Some("9.9.9")).cni_version, "1.1.0");
    }
}
