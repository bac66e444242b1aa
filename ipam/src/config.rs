//! The `ipam` section, host-local compatible: `ranges` (a list of range
//! sets, one address allocated per set), the legacy single range given by
//! top-level `subnet`/`rangeStart`/`rangeEnd`/`gateway`, `routes` and
//! `dataDir`. Unknown keys are ignored; known keys are checked strictly.
//!
//! See containernetworking/plugins `plugins/ipam/host-local/backend/allocator/config.go`
//! and `range.go` for the format this follows.

use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use ipnetwork::IpNetwork;
use serde::Deserialize;
use weft_conf::Route;

use crate::error::IpamError;
use crate::range::to_u128;

/// Where allocations live when the config has no `dataDir`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/weft";

/// A parsed and validated `ipam` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConfig {
    pub ipam_type: String,
    /// At least one set, each with at least one range, none overlapping.
    pub range_sets: Vec<RangeSet>,
    pub routes: Vec<Route>,
    pub data_dir: PathBuf,
}

/// Ranges of one address family; one address is allocated per range set.
pub type RangeSet = Vec<Range>;

/// One range of a subnet. After [`IpamConfig::parse`] every `Option` is
/// `Some`, holding the effective value (defaults filled in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNetwork,
    pub range_start: Option<IpAddr>,
    pub range_end: Option<IpAddr>,
    pub gateway: Option<IpAddr>,
}

/// The wire form of the section, before validation.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(rename = "type")]
    ipam_type: Option<String>,
    #[serde(flatten)]
    legacy: RawRange,
    ranges: Option<serde_json::Value>,
    routes: Option<serde_json::Value>,
    data_dir: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRange {
    subnet: Option<String>,
    range_start: Option<String>,
    range_end: Option<String>,
    gateway: Option<String>,
}

impl IpamConfig {
    /// Parses and validates the `ipam` object of a network config.
    pub fn parse(ipam: &serde_json::Value) -> Result<IpamConfig, IpamError> {
        if !ipam.is_object() {
            return Err(bad("ipam", "must be a JSON object"));
        }
        let raw: Raw = serde_json::from_value(ipam.clone()).map_err(|e| malformed("ipam", e))?;
        let ipam_type = raw.ipam_type.filter(|t| !t.is_empty()).ok_or_else(|| bad("type", "is required"))?;
        let mut range_sets = Vec::new();
        // host-local puts the legacy top-level range first, before `ranges`.
        if raw.legacy.subnet.is_some() {
            range_sets.push(vec![parse_range(&raw.legacy, "")?]);
        } else if let Some(f) = legacy_without_subnet(&raw.legacy) {
            return Err(bad(f, "needs a top-level subnet"));
        }
        if let Some(v) = raw.ranges {
            let sets: Vec<Vec<RawRange>> = serde_json::from_value(v).map_err(|e| malformed("ranges", e))?;
            for (i, set) in sets.iter().enumerate() {
                let set_no = range_sets.len();
                if set.is_empty() {
                    return Err(IpamError::EmptyRangeSet { set: set_no });
                }
                let parsed = set
                    .iter()
                    .enumerate()
                    .map(|(j, r)| parse_range(r, &format!("ranges[{i}][{j}].")))
                    .collect::<Result<RangeSet, _>>()?;
                if parsed.windows(2).any(|w| w[0].subnet.is_ipv4() != w[1].subnet.is_ipv4()) {
                    return Err(IpamError::MixedFamilies { set: set_no });
                }
                range_sets.push(parsed);
            }
        }
        if range_sets.is_empty() {
            return Err(IpamError::NoRanges);
        }
        check_overlaps(&range_sets)?;
        let routes = match raw.routes {
            Some(v) => serde_json::from_value(v).map_err(|e| malformed("routes", e))?,
            None => Vec::new(),
        };
        let data_dir = match raw.data_dir {
            Some(d) if d.is_empty() => return Err(bad("dataDir", "is empty")),
            Some(d) => PathBuf::from(d),
            None => PathBuf::from(DEFAULT_DATA_DIR),
        };
        Ok(IpamConfig { ipam_type, range_sets, routes, data_dir })
    }
}

fn bad(field: &str, reason: impl ToString) -> IpamError {
    IpamError::BadField { field: field.to_string(), reason: reason.to_string() }
}

fn malformed(field: &str, e: serde_json::Error) -> IpamError {
    bad(field, format!("is malformed: {e}"))
}

fn legacy_without_subnet(r: &RawRange) -> Option<&'static str> {
    [("rangeStart", &r.range_start), ("rangeEnd", &r.range_end), ("gateway", &r.gateway)]
        .into_iter()
        .find_map(|(f, v)| v.is_some().then_some(f))
}

/// Parses one range (`at` prefixes field names in errors) and fills in its defaults.
fn parse_range(raw: &RawRange, at: &str) -> Result<Range, IpamError> {
    let field = |f: &str| format!("{at}{f}");
    let subnet_s = raw.subnet.as_deref().ok_or_else(|| bad(&field("subnet"), "is required"))?;
    let subnet = parse_cidr(subnet_s, &field("subnet"))?;
    let addr = |v: &Option<String>, f: &str| -> Result<Option<IpAddr>, IpamError> {
        v.as_deref()
            .map(|s| {
                IpAddr::from_str(s)
                    .map_err(|_| IpamError::NotAddress { field: field(f), value: s.to_string() })
            })
            .transpose()
    };
    let mut r = Range {
        subnet,
        range_start: addr(&raw.range_start, "rangeStart")?,
        range_end: addr(&raw.range_end, "rangeEnd")?,
        gateway: addr(&raw.gateway, "gateway")?,
    };
    validate_range(&r, at)?;
    r.range_start = Some(r.start());
    r.range_end = Some(r.end());
    r.gateway = Some(r.gateway_addr());
    Ok(r)
}

/// A network CIDR: must have a prefix and no host bits set.
fn parse_cidr(s: &str, field: &str) -> Result<IpNetwork, IpamError> {
    let not_cidr = || IpamError::NotCidr { field: field.to_string(), value: s.to_string() };
    if !s.contains('/') {
        return Err(not_cidr());
    }
    let n = IpNetwork::from_str(s).map_err(|_| not_cidr())?;
    if n.ip() != n.network() {
        return Err(IpamError::SubnetNotAligned { subnet: n, network: n.network() });
    }
    Ok(n)
}

fn validate_range(r: &Range, at: &str) -> Result<(), IpamError> {
    let subnet = r.subnet;
    if let Some(reason) = too_small(subnet) {
        return Err(IpamError::SubnetTooSmall { subnet, reason: reason.to_string() });
    }
    for (f, v) in [("rangeStart", r.range_start), ("rangeEnd", r.range_end), ("gateway", r.gateway)] {
        if let Some(addr) = v.filter(|a| !subnet.contains(*a)) {
            return Err(IpamError::OutsideSubnet { field: format!("{at}{f}"), addr, subnet });
        }
    }
    let gateway = r.gateway_addr();
    if gateway == subnet.network() {
        let what = if subnet.is_ipv4() { "network" } else { "subnet-router anycast" };
        return Err(IpamError::GatewayNotHost { gateway, what, subnet });
    }
    if subnet.is_ipv4() && gateway == subnet.broadcast() {
        return Err(IpamError::GatewayNotHost { gateway, what: "broadcast", subnet });
    }
    if to_u128(r.start()) > to_u128(r.end()) {
        return Err(IpamError::StartAfterEnd { start: r.start(), end: r.end(), subnet });
    }
    if r.usable_count() == 0 {
        return Err(IpamError::NoUsableAddress { range: r.describe() });
    }
    Ok(())
}

/// Why a subnet cannot hold a single usable address, if it cannot.
fn too_small(subnet: IpNetwork) -> Option<&'static str> {
    match (subnet.is_ipv4(), subnet.prefix()) {
        (true, 32) => Some(
            "an IPv4 /32 holds 1 address, the network address itself; \
             the smallest usable IPv4 subnet is a /30 (network, gateway, one host, broadcast)",
        ),
        (true, 31) => Some(
            "an IPv4 /31 holds 2 addresses, taken by the network and broadcast addresses, \
             leaving none for the gateway or a host; the smallest usable IPv4 subnet is a /30",
        ),
        (false, 128) => Some(
            "an IPv6 /128 holds 1 address, the subnet-router anycast address; \
             the smallest usable IPv6 subnet is a /126",
        ),
        (false, 127) => Some(
            "an IPv6 /127 holds 2 addresses, taken by the subnet-router anycast address \
             and the gateway, leaving none for a host; the smallest usable IPv6 subnet is a /126",
        ),
        _ => None,
    }
}

/// No two ranges of the same family, in any sets, may share an address.
fn check_overlaps(sets: &[RangeSet]) -> Result<(), IpamError> {
    let all: Vec<&Range> = sets.iter().flatten().collect();
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            let same_family = a.subnet.is_ipv4() == b.subnet.is_ipv4();
            if same_family && to_u128(a.start()) <= to_u128(b.end()) && to_u128(b.start()) <= to_u128(a.end())
            {
                return Err(IpamError::Overlap { a: a.describe(), b: b.describe() });
            }
        }
    }
    Ok(())
}
