//! `IpamError`: everything config parsing and the store can fail with, and
//! its mapping to CNI error codes.

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use weft_conf::error::codes;
use weft_conf::{CniError, ErrorCode};

/// An IPAM failure. Config variants map to code 7, I/O and store state to 5,
/// bad attachment identities to 4, and an exhausted range set to 101.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("ipam config: {field} {reason}")]
    BadField { field: String, reason: String },

    #[error("ipam config: {field} {value:?} is not a CIDR")]
    NotCidr { field: String, value: String },

    #[error("ipam config: {field} {value:?} is not an IP address")]
    NotAddress { field: String, value: String },

    #[error("ipam config: subnet {subnet} has host bits set; did you mean {network}/{}?", subnet.prefix())]
    SubnetNotAligned { subnet: IpNetwork, network: IpAddr },

    #[error("ipam config: subnet {subnet} is too small: {reason}")]
    SubnetTooSmall { subnet: IpNetwork, reason: String },

    #[error("ipam config: {field} {addr} is outside subnet {subnet}")]
    OutsideSubnet { field: String, addr: IpAddr, subnet: IpNetwork },

    #[error("ipam config: gateway {gateway} is the {what} address of subnet {subnet}")]
    GatewayNotHost { gateway: IpAddr, what: &'static str, subnet: IpNetwork },

    #[error("ipam config: rangeStart {start} is after rangeEnd {end} in subnet {subnet}")]
    StartAfterEnd { start: IpAddr, end: IpAddr, subnet: IpNetwork },

    #[error("ipam config: range {range} has no usable address (network, broadcast and gateway are never handed out)")]
    NoUsableAddress { range: String },

    #[error("ipam config: range {a} overlaps range {b}")]
    Overlap { a: String, b: String },

    #[error("ipam config: range set {set} mixes IPv4 and IPv6 ranges")]
    MixedFamilies { set: usize },

    #[error("ipam config: range set {set} is empty")]
    EmptyRangeSet { set: usize },

    #[error("ipam config: no ranges (give \"ranges\" or \"subnet\")")]
    NoRanges,

    #[error("invalid network name {name:?}: must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$")]
    BadNetworkName { name: String },

    #[error("invalid attachment ({container_id:?}, {ifname:?}): {reason}")]
    BadAttachment { container_id: String, ifname: String, reason: &'static str },

    #[error("no free address left in range set {set}")]
    Exhausted { set: usize, ranges: String },

    #[error("{op} {}: {source}", path.display())]
    Io { op: &'static str, path: PathBuf, source: io::Error },

    #[error("ipam store file {} is corrupt: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },

    #[error("ipam index file {} belongs to ({other_id:?}, {other_ifname:?}), not to this attachment", path.display())]
    IndexCollision { path: PathBuf, other_id: String, other_ifname: String },

    /// A test stopped the operation here, as if the process had died.
    #[cfg(test)]
    #[error("test crash after step {step:?}")]
    Crashed { step: crate::store::Step },
}

impl IpamError {
    /// Wraps an I/O error with the operation and the path it was about.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> IpamError {
        let path = path.into();
        move |source| IpamError::Io { op, path, source }
    }

    /// The CNI error code this maps to.
    pub fn code(&self) -> ErrorCode {
        match self {
            IpamError::Io { .. } | IpamError::Corrupt { .. } | IpamError::IndexCollision { .. } => {
                ErrorCode::IoFailure
            }
            #[cfg(test)]
            IpamError::Crashed { .. } => ErrorCode::IoFailure,
            IpamError::BadAttachment { .. } => ErrorCode::InvalidEnvironment,
            IpamError::Exhausted { .. } => ErrorCode::Plugin(codes::RANGE_EXHAUSTED),
            _ => ErrorCode::InvalidNetworkConfig,
        }
    }
}

impl From<IpamError> for CniError {
    fn from(e: IpamError) -> CniError {
        let code = e.code();
        match &e {
            IpamError::Exhausted { ranges, .. } => {
                CniError::new(code, e.to_string()).with_details(ranges.clone())
            }
            _ => CniError::new(code, e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_spec() {
        let io = IpamError::Io {
            op: "open",
            path: "/x".into(),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        let exhausted = IpamError::Exhausted { set: 0, ranges: "10.0.0.0/30 [10.0.0.2-10.0.0.2]".into() };
        let bad_id =
            IpamError::BadAttachment { container_id: String::new(), ifname: "eth0".into(), reason: "x" };
        let table: [(IpamError, u32); 4] = [(IpamError::NoRanges, 7), (io, 5), (exhausted, 101), (bad_id, 4)];
        for (e, want) in table {
            let msg = e.to_string();
            let c = CniError::from(e);
            assert_eq!(c.code, want, "{msg}");
            assert_eq!(c.msg, msg);
        }
        let c =
            CniError::from(IpamError::Exhausted { set: 1, ranges: "fd00::/120 [fd00::2-fd00::ff]".into() });
        assert_eq!(c.details, "fd00::/120 [fd00::2-fd00::ff]");
        assert!(c.msg.contains("range set 1"), "{}", c.msg);
    }
}
