//! Errors of the kernel I/O layer. Every variant names the object it is about;
//! the command handlers map them to CNI error codes.

use std::io;
use std::path::PathBuf;

use weft_conf::error::codes;
use weft_conf::{CniError, ErrorCode};

/// Errors from netns, netlink, sysctl and iptables operations.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("network namespace {path:?} does not exist")]
    NetnsNotFound { path: PathBuf },
    #[error("{path:?} is not a network namespace: {reason}")]
    NotANetns { path: PathBuf, reason: String },
    #[error("cannot enter network namespace {path:?}: {source}")]
    NetnsEnter { path: PathBuf, source: io::Error },
    #[error("link {name:?} not found")]
    LinkNotFound { name: String },
    #[error("link {name:?} already exists")]
    LinkExists { name: String },
    #[error("link {name:?} exists but is a {kind:?}, not a bridge")]
    NotABridge { name: String, kind: String },
    #[error("name {name:?} is too long")]
    NameTooLong { name: String },
    #[error("netlink {op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("sysctl {name}: {source}")]
    Sysctl {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("{name} not found in /usr/sbin, /sbin, /usr/bin or /bin")]
    ToolMissing { name: String },
    #[error("{cmd} failed: {stderr}")]
    ToolFailed { cmd: String, stderr: String },
    #[error("{cmd} did not finish within {deadline:?}: killed")]
    ToolTimedOut { cmd: String, deadline: std::time::Duration },
    #[error("{cmd} wrote more than {limit} bytes to stdout")]
    ToolOutputTooLarge { cmd: String, limit: usize },
    #[error("no tokio runtime: {what} must be called inside the plugin's runtime")]
    NoRuntime { what: &'static str },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl KernelError {
    /// The errno of a netlink NACK (positive, e.g. `libc::EEXIST`), if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            KernelError::Netlink { source, .. } => nl_errno(source),
            KernelError::NetnsEnter { source, .. }
            | KernelError::Sysctl { source, .. }
            | KernelError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// True for "the object is already gone" errors that DEL should count as done.
    pub fn is_gone(&self) -> bool {
        matches!(
            self,
            KernelError::NetnsNotFound { .. }
                | KernelError::NotANetns { .. }
                | KernelError::LinkNotFound { .. }
        )
    }
}

/// Each kernel error becomes a CNI error whose code says what kind of failure it was.
impl From<KernelError> for CniError {
    fn from(e: KernelError) -> CniError {
        let code = match &e {
            KernelError::NetnsNotFound { .. }
            | KernelError::NotANetns { .. }
            | KernelError::NetnsEnter { .. } => ErrorCode::UnknownContainer,
            KernelError::LinkExists { .. } | KernelError::NotABridge { .. } => {
                ErrorCode::Plugin(codes::INTERFACE_EXISTS)
            }
            KernelError::NameTooLong { .. } => ErrorCode::InvalidNetworkConfig,
            KernelError::Io { .. } => ErrorCode::IoFailure,
            _ => ErrorCode::Plugin(codes::KERNEL),
        };
        CniError::new(code, e.to_string())
    }
}

/// The positive errno carried by a netlink NACK.
pub(crate) fn nl_errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// Builds the `map_err` closure for a netlink call described by `op`.
pub(crate) fn netlink(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> KernelError {
    let op = op.into();
    move |source| KernelError::Netlink { op, source }
}
