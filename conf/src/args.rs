//! `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`, as kubelet/containerd send
//! them (`IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;...`).

use crate::error::{CniError, ErrorCode};

/// The CNI_ARGS weft understands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub pod_infra_container_id: Option<String>,
    pub pod_uid: Option<String>,
    /// Unknown keys are an error unless `IgnoreUnknown` is true.
    pub ignore_unknown: bool,
}

impl CniArgs {
    /// Parses a CNI_ARGS string. An empty string gives no args.
    pub fn parse(s: &str) -> Result<CniArgs, CniError> {
        let mut args = CniArgs::default();
        let mut unknown = Vec::new();
        for pair in s.split(';').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                CniError::new(ErrorCode::InvalidEnvironment, "malformed CNI_ARGS")
                    .with_details(format!("{pair:?} is not KEY=VALUE"))
            })?;
            match k {
                "K8S_POD_NAMESPACE" => args.pod_namespace = Some(v.to_string()),
                "K8S_POD_NAME" => args.pod_name = Some(v.to_string()),
                "K8S_POD_INFRA_CONTAINER_ID" => args.pod_infra_container_id = Some(v.to_string()),
                "K8S_POD_UID" => args.pod_uid = Some(v.to_string()),
                "IgnoreUnknown" => args.ignore_unknown = parse_bool(v)?,
                _ => unknown.push(k.to_string()),
            }
        }
        if !unknown.is_empty() && !args.ignore_unknown {
            return Err(CniError::new(ErrorCode::InvalidEnvironment, "unknown CNI_ARGS")
                .with_details(format!("{} (set IgnoreUnknown=1 to allow)", unknown.join(", "))));
        }
        Ok(args)
    }
}

fn parse_bool(v: &str) -> Result<bool, CniError> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" => Ok(true),
        "0" | "false" | "" => Ok(false),
        _ => Err(CniError::new(ErrorCode::InvalidEnvironment, "malformed CNI_ARGS")
            .with_details(format!("IgnoreUnknown={v:?} is not a boolean"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_args() {
        let a = CniArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=a;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1",
        )
        .unwrap();
        assert_eq!(a.pod_namespace.as_deref(), Some("x"));
        assert_eq!(a.pod_name.as_deref(), Some("a"));
        assert_eq!(a.pod_infra_container_id.as_deref(), Some("abc"));
        assert_eq!(a.pod_uid.as_deref(), Some("u-1"));
        assert!(a.ignore_unknown);
    }

    #[test]
    fn unknown_keys_need_ignore_unknown() {
        assert_eq!(CniArgs::parse("FOO=1").unwrap_err().code, 4);
        assert!(CniArgs::parse("FOO=1;IgnoreUnknown=true").is_ok());
        assert!(CniArgs::parse("IgnoreUnknown=1;FOO=1").is_ok());
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
    }

    #[test]
    fn malformed_args_are_env_errors() {
        for bad in ["K8S_POD_NAME", "IgnoreUnknown=maybe"] {
            assert_eq!(CniArgs::parse(bad).unwrap_err().code, 4, "{bad}");
        }
    }
}
