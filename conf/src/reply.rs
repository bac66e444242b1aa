//! What a plugin prints: a result (or nothing), or the error JSON, and how
//! it exits. Shared by `weft` and `weft-ipam`.

use crate::env::{CniEnv, Command};
use crate::error::CniError;
use crate::netconf::NetConf;
use crate::version::{Version, VersionInfo};

/// A plugin's stdout and exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub exit_code: i32,
    pub stdout: String,
}

impl Reply {
    /// The reply to a command whose stdin was `stdin`. Errors are written in
    /// the version the runtime asked for, even when the rest of the config is bad.
    pub fn new(stdin: &[u8], outcome: Result<Option<serde_json::Value>, CniError>) -> Reply {
        match outcome {
            Ok(v) => Reply { exit_code: 0, stdout: v.map(|v| v.to_string()).unwrap_or_default() },
            Err(e) => {
                let version = NetConf::peek_version(stdin).unwrap_or(Version::DEFAULT);
                Reply { exit_code: 1, stdout: e.to_json(version).to_string() }
            }
        }
    }
}

/// Runs one CNI command as every plugin does: reads the CNI_* environment
/// through `lookup`, answers VERSION itself, and hands any other command to
/// `handle`, which returns the result to print (if any).
pub fn serve(
    lookup: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
    handle: impl FnOnce(&CniEnv) -> Result<Option<serde_json::Value>, CniError>,
) -> Reply {
    let outcome = CniEnv::from_lookup(lookup).and_then(|env| match env.command {
        Command::Version => Ok(Some(version_reply(stdin))),
        _ => handle(&env),
    });
    Reply::new(stdin, outcome)
}

/// The reply to VERSION. It never fails on the config, so a runtime can
/// always learn what we speak.
pub fn version_reply(stdin: &[u8]) -> serde_json::Value {
    let requested = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(String::from));
    // VersionInfo is plain strings: serialising it cannot fail.
    serde_json::to_value(VersionInfo::reply(requested.as_deref())).expect("VersionInfo serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn errors_use_the_requested_version_and_exit_non_zero() {
        let r = Reply::new(
            br#"{"cniVersion":"0.3.1","name":"x"}"#,
            Err(CniError::new(ErrorCode::InvalidNetworkConfig, "bad")),
        );
        assert_eq!(r.exit_code, 1);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(v, serde_json::json!({"cniVersion": "0.3.1", "code": 7, "msg": "bad"}));
        assert_eq!(Reply::new(b"", Ok(None)), Reply { exit_code: 0, stdout: String::new() });
    }

    #[test]
    fn version_reply_of_garbage_is_still_a_reply() {
        assert_eq!(version_reply(b"garbage")["cniVersion"], "1.1.0");
        assert_eq!(version_reply(br#"{"cniVersion":"0.4.0"}"#)["cniVersion"], "0.4.0");
    }
}
