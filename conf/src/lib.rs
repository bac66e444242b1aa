//! CNI spec types for weft: network configuration, runtime environment,
//! results and their conversion between spec versions, error codes and
//! version negotiation. Pure data and parsing: no I/O.

pub mod error;
pub mod result;
pub mod version;

pub use error::{CniError, ErrorCode};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use version::{Version, VersionInfo};
