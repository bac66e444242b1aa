//! How the plugin's failures reach the runtime: each kernel error becomes a
//! CNI error whose code says what kind of failure it was.

use weft_conf::error::codes;
use weft_conf::{CniError, ErrorCode};

use crate::kernel_error::KernelError;

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

/// Prefixes an error's message with the step that failed.
pub fn context<E: Into<CniError>>(step: &str) -> impl FnOnce(E) -> CniError + '_ {
    move |e| {
        let mut e = e.into();
        e.msg = format!("{step}: {}", e.msg);
        e
    }
}
