//! CNI error codes and the error JSON a plugin prints on failure.

use serde::{Deserialize, Serialize};

use crate::version::Version;

/// The error codes of the CNI spec ("Error" section); 100+ are ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 1: incompatible CNI version.
    IncompatibleVersion,
    /// 2: unsupported field in network configuration.
    UnsupportedField,
    /// 3: container unknown or does not exist.
    UnknownContainer,
    /// 4: invalid necessary environment variables.
    InvalidEnvironment,
    /// 5: I/O failure.
    IoFailure,
    /// 6: failed to decode content.
    DecodingFailure,
    /// 7: invalid network config.
    InvalidNetworkConfig,
    /// 11: try again later.
    TryAgainLater,
    /// 50: the plugin is not available (STATUS).
    PluginNotAvailable,
    /// 51: the plugin is not available, existing containers may lose connectivity (STATUS).
    PluginNotAvailableLimited,
    /// 100+: weft's own failures (kernel refusals, exhausted ranges, ...).
    Plugin(u32),
}

/// weft's own codes (spec: 100 and above are plugin-specific).
pub mod codes {
    /// A kernel (netlink, sysctl, netfilter) operation failed.
    pub const KERNEL: u32 = 100;
    /// No free address is left in a range.
    pub const RANGE_EXHAUSTED: u32 = 101;
    /// An interface that ADD must create already exists and is not ours.
    pub const INTERFACE_EXISTS: u32 = 102;
    /// CHECK found the attachment differs from prevResult.
    pub const CHECK_FAILED: u32 = 103;
    /// A delegated IPAM plugin failed or could not be run.
    pub const IPAM_DELEGATE: u32 = 104;
}

impl ErrorCode {
    pub fn code(self) -> u32 {
        match self {
            ErrorCode::IncompatibleVersion => 1,
            ErrorCode::UnsupportedField => 2,
            ErrorCode::UnknownContainer => 3,
            ErrorCode::InvalidEnvironment => 4,
            ErrorCode::IoFailure => 5,
            ErrorCode::DecodingFailure => 6,
            ErrorCode::InvalidNetworkConfig => 7,
            ErrorCode::TryAgainLater => 11,
            ErrorCode::PluginNotAvailable => 50,
            ErrorCode::PluginNotAvailableLimited => 51,
            ErrorCode::Plugin(c) => c,
        }
    }
}

/// A CNI error: printed as JSON on stdout with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> CniError {
        CniError { code: code.code(), msg: msg.into(), details: String::new() }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// The error JSON of the spec, tagged with the version the caller asked for.
    pub fn to_json(&self, version: Version) -> serde_json::Value {
        let mut v = serde_json::json!({
            "cniVersion": version.as_str(),
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            v["details"] = self.details.clone().into();
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_codes() {
        let table = [
            (ErrorCode::IncompatibleVersion, 1),
            (ErrorCode::UnsupportedField, 2),
            (ErrorCode::UnknownContainer, 3),
            (ErrorCode::InvalidEnvironment, 4),
            (ErrorCode::IoFailure, 5),
            (ErrorCode::DecodingFailure, 6),
            (ErrorCode::InvalidNetworkConfig, 7),
            (ErrorCode::TryAgainLater, 11),
            (ErrorCode::PluginNotAvailable, 50),
            (ErrorCode::PluginNotAvailableLimited, 51),
            (ErrorCode::Plugin(101), 101),
        ];
        for (c, n) in table {
            assert_eq!(c.code(), n);
        }
    }

    #[test]
    fn error_json_has_the_spec_shape() {
        let e = CniError::new(ErrorCode::InvalidNetworkConfig, "bad subnet").with_details("x");
        let j = e.to_json(Version::V1_0_0);
        assert_eq!(
            j,
            serde_json::json!({"cniVersion": "1.0.0", "code": 7, "msg": "bad subnet", "details": "x"})
        );
        let j = CniError::new(ErrorCode::IoFailure, "m").to_json(Version::V0_4_0);
        assert!(j.get("details").is_none());
    }
}
