//! Network configuration lists (`.conflist`), as a runtime reads them: the
//! version to speak (`cniVersions` of 1.1 lists, else `cniVersion`) and the
//! config each plugin of the chain receives on stdin.

use serde::Deserialize;

use crate::error::{CniError, ErrorCode};
use crate::version::Version;

/// A parsed conflist.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConfList {
    /// The version the runtime speaks to every plugin of the list.
    pub cni_version: Version,
    pub name: String,
    pub disable_check: bool,
    pub disable_gc: bool,
    pub plugins: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    cni_version: Option<String>,
    #[serde(default)]
    cni_versions: Vec<String>,
    name: String,
    #[serde(default)]
    disable_check: bool,
    #[serde(default, rename = "disableGC")]
    disable_gc: bool,
    plugins: Vec<serde_json::Value>,
}

impl NetConfList {
    /// Parses a conflist. With `cniVersions` (1.1), the highest version we
    /// support wins and `cniVersion` is ignored, as the spec says.
    pub fn parse(bytes: &[u8]) -> Result<NetConfList, CniError> {
        let raw: Raw = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(ErrorCode::DecodingFailure, "cannot decode network config list")
                .with_details(e.to_string())
        })?;
        let cni_version = if raw.cni_versions.is_empty() {
            raw.cni_version
                .as_deref()
                .ok_or_else(|| invalid("cniVersion or cniVersions is required"))?
                .parse()?
        } else {
            raw.cni_versions.iter().filter_map(|v| v.parse::<Version>().ok()).max().ok_or_else(|| {
                CniError::new(ErrorCode::IncompatibleVersion, "no supported version in cniVersions")
                    .with_details(raw.cni_versions.join(", "))
            })?
        };
        if raw.plugins.is_empty() {
            return Err(invalid("plugins must not be empty"));
        }
        for (i, p) in raw.plugins.iter().enumerate() {
            if p.get("type").and_then(|t| t.as_str()).is_none_or(str::is_empty) {
                return Err(invalid(format!("plugins[{i}] has no type")));
            }
        }
        Ok(NetConfList {
            cni_version,
            name: raw.name,
            disable_check: raw.disable_check,
            disable_gc: raw.disable_gc,
            plugins: raw.plugins,
        })
    }

    /// The stdin of plugin `i`, as libcni builds it: the plugin's own keys
    /// plus the list's `name` and `cniVersion`, and the previous plugin's
    /// result as `prevResult` when chaining.
    pub fn plugin_config(
        &self,
        i: usize,
        prev_result: Option<&serde_json::Value>,
    ) -> Option<serde_json::Value> {
        let mut c = self.plugins.get(i)?.clone();
        let o = c.as_object_mut()?;
        o.insert("name".into(), self.name.clone().into());
        o.insert("cniVersion".into(), self.cni_version.as_str().into());
        if let Some(p) = prev_result {
            o.insert("prevResult".into(), p.clone());
        }
        Some(c)
    }
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(ErrorCode::InvalidNetworkConfig, msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cni_versions_picks_the_highest_supported() {
        let l = NetConfList::parse(
            json!({"cniVersion": "0.4.0", "cniVersions": ["0.3.1", "1.0.0", "1.1.0", "7.0.0"],
                   "name": "weft", "plugins": [{"type": "weft"}]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(l.cni_version, Version::V1_1_0);
    }

    #[test]
    fn plugin_config_injects_name_version_and_prev_result() {
        let l = NetConfList::parse(
            json!({"cniVersion": "1.0.0", "name": "weft",
                   "plugins": [{"type": "weft"}, {"type": "portmap", "capabilities": {"portMappings": true}}]})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let prev = json!({"cniVersion": "1.0.0", "ips": []});
        let c = l.plugin_config(1, Some(&prev)).unwrap();
        assert_eq!(c["name"], "weft");
        assert_eq!(c["cniVersion"], "1.0.0");
        assert_eq!(c["type"], "portmap");
        assert_eq!(c["prevResult"], prev);
        assert!(l.plugin_config(2, None).is_none());
    }

    #[test]
    fn bad_lists() {
        let cases = [
            (json!({"name": "w", "plugins": [{"type": "weft"}]}), 7),
            (json!({"cniVersions": ["0.1.0"], "name": "w", "plugins": [{"type": "weft"}]}), 1),
            (json!({"cniVersion": "1.0.0", "name": "w", "plugins": []}), 7),
            (json!({"cniVersion": "1.0.0", "name": "w", "plugins": [{}]}), 7),
            (json!({"cniVersion": "1.0.0", "plugins": [{"type": "weft"}]}), 6),
        ];
        for (v, code) in cases {
            assert_eq!(NetConfList::parse(v.to_string().as_bytes()).unwrap_err().code, code, "{v}");
        }
    }
}
