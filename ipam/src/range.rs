//! Allocation math on ranges: effective bounds, the addresses never handed
//! out, usable counts and the order candidates are tried in. Pure: no I/O.
//!
//! Addresses are handled as `u128` (IPv4 in the low 32 bits), so a /16 or a
//! /64 is never materialised; the candidate iterator is O(1) per step.
//! Order follows host-local (`plugins/ipam/host-local/backend/allocator`):
//! allocation continues after the last reserved address, runs through the
//! ranges of the set in order, and wraps around once.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::Range;

/// An address as a number; IPv4 occupies the low 32 bits.
pub(crate) fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The inverse of `to_u128`; an IPv4 value is truncated to 32 bits.
pub(crate) fn from_u128(v: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

impl Range {
    fn v4(&self) -> bool {
        self.subnet.is_ipv4()
    }

    fn net(&self) -> u128 {
        to_u128(self.subnet.network())
    }

    /// The last address of the subnet (the IPv4 broadcast address).
    fn top(&self) -> u128 {
        to_u128(self.subnet.broadcast())
    }

    /// The first host of the subnet: network + 1 (the network itself for a /32 or /128).
    pub fn first_host(&self) -> IpAddr {
        from_u128(self.net() + u128::from(self.net() < self.top()), self.v4())
    }

    /// The last host of the subnet: broadcast - 1 in IPv4, the last address in IPv6.
    pub fn last_host(&self) -> IpAddr {
        let dec = self.v4() && self.top() > to_u128(self.first_host());
        from_u128(self.top() - u128::from(dec), self.v4())
    }

    /// The effective first address: `rangeStart`, else the first host.
    pub fn start(&self) -> IpAddr {
        self.range_start.unwrap_or_else(|| self.first_host())
    }

    /// The effective last address: `rangeEnd`, else the last host.
    pub fn end(&self) -> IpAddr {
        self.range_end.unwrap_or_else(|| self.last_host())
    }

    /// The effective gateway: `gateway`, else the first host.
    pub fn gateway_addr(&self) -> IpAddr {
        self.gateway.unwrap_or_else(|| self.first_host())
    }

    /// Whether `ip` is never handed out: the network (IPv6 subnet-router
    /// anycast) address, the IPv4 broadcast address, or the gateway.
    pub fn is_reserved(&self, ip: IpAddr) -> bool {
        let v = to_u128(ip);
        ip == self.gateway_addr() || v == self.net() || (self.v4() && v == self.top())
    }

    /// Whether `ip` lies in the effective `[start, end]` (reserved or not).
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.v4()
            && to_u128(self.start()) <= to_u128(ip)
            && to_u128(ip) <= to_u128(self.end())
            && self.subnet.contains(ip)
    }

    /// Whether `ip` may be handed out from this range.
    pub fn is_usable(&self, ip: IpAddr) -> bool {
        self.contains(ip) && !self.is_reserved(ip)
    }

    /// How many addresses of `[start, end]` may be handed out (saturating at `u128::MAX`).
    pub fn usable_count(&self) -> u128 {
        let (s, e) = (to_u128(self.start()), to_u128(self.end()));
        if s > e || self.start().is_ipv4() != self.v4() || self.end().is_ipv4() != self.v4() {
            return 0;
        }
        let mut reserved = vec![self.net(), to_u128(self.gateway_addr())];
        if self.v4() {
            reserved.push(self.top());
        }
        reserved.sort_unstable();
        reserved.dedup();
        let inside = reserved.iter().filter(|&&r| s <= r && r <= e).count() as u128;
        (e - s).saturating_add(1).saturating_sub(inside)
    }

    /// For messages: `10.244.1.0/24 [10.244.1.1-10.244.1.254]`.
    pub fn describe(&self) -> String {
        format!("{} [{}-{}]", self.subnet, self.start(), self.end())
    }
}

/// The range of `set` that may hand out `ip`, if any.
pub fn find_range(set: &[Range], ip: IpAddr) -> Option<&Range> {
    set.iter().find(|r| r.is_usable(ip))
}

/// How many addresses the whole set may hand out (saturating).
pub fn usable_in_set(set: &[Range]) -> u128 {
    set.iter().fold(0u128, |n, r| n.saturating_add(r.usable_count()))
}

/// For messages: every range of the set, comma-separated.
pub fn describe_set(set: &[Range]) -> String {
    set.iter().map(Range::describe).collect::<Vec<_>>().join(", ")
}

/// The usable addresses of a range set in allocation order, each with the
/// range it came from: from just after `last` (when `last` lies in a range of
/// the set, else from the start of the first range), wrapping around once.
pub fn candidates(set: &[Range], last: Option<IpAddr>) -> Candidates<'_> {
    let sizes: Vec<u128> = set.iter().map(span).collect();
    let remaining = sizes.iter().fold(0u128, |n, &s| n.saturating_add(s));
    let mut it = Candidates { set, sizes, idx: 0, cur: 0, remaining };
    match last.and_then(|ip| set.iter().position(|r| r.contains(ip)).map(|i| (i, ip))) {
        Some((i, ip)) => {
            it.idx = i;
            it.cur = to_u128(ip);
            it.advance();
        }
        None => it.enter(0),
    }
    it
}

/// The number of addresses in `[start, end]`, 0 for an inverted or mixed range.
fn span(r: &Range) -> u128 {
    let (s, e) = (r.start(), r.end());
    if s.is_ipv4() != r.v4() || e.is_ipv4() != r.v4() || to_u128(s) > to_u128(e) {
        0
    } else {
        (to_u128(e) - to_u128(s)).saturating_add(1)
    }
}

/// Iterator returned by [`candidates`].
#[derive(Debug)]
pub struct Candidates<'a> {
    set: &'a [Range],
    sizes: Vec<u128>,
    idx: usize,
    cur: u128,
    /// Addresses (usable or not) left before the walk is back where it began.
    remaining: u128,
}

impl Candidates<'_> {
    /// Positions at the start of the first non-empty range from `i` on, wrapping.
    fn enter(&mut self, i: usize) {
        let n = self.set.len();
        for k in 0..n {
            let j = (i + k) % n;
            if self.sizes[j] > 0 {
                self.idx = j;
                self.cur = to_u128(self.set[j].start());
                return;
            }
        }
    }

    fn advance(&mut self) {
        if self.cur >= to_u128(self.set[self.idx].end()) {
            self.enter(self.idx + 1);
        } else {
            self.cur += 1;
        }
    }
}

impl<'a> Iterator for Candidates<'a> {
    type Item = (&'a Range, IpAddr);

    fn next(&mut self) -> Option<Self::Item> {
        while self.remaining > 0 {
            let r = &self.set[self.idx];
            let ip = from_u128(self.cur, r.v4());
            self.remaining -= 1;
            self.advance();
            if !r.is_reserved(ip) {
                return Some((r, ip));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(subnet: &str, start: Option<&str>, end: Option<&str>, gw: Option<&str>) -> Range {
        Range {
            subnet: subnet.parse().unwrap(),
            range_start: start.map(|s| s.parse().unwrap()),
            range_end: end.map(|s| s.parse().unwrap()),
            gateway: gw.map(|s| s.parse().unwrap()),
        }
    }

    fn ips(v: &[(&Range, IpAddr)]) -> Vec<String> {
        v.iter().map(|(_, ip)| ip.to_string()).collect()
    }

    #[test]
    fn defaults_and_counts() {
        // (subnet, start, end, gateway, first, last, usable)
        let table = [
            ("10.244.1.0/24", None, None, None, "10.244.1.1", "10.244.1.254", 253),
            (
                "10.244.1.0/24",
                Some("10.244.1.10"),
                Some("10.244.1.20"),
                None,
                "10.244.1.10",
                "10.244.1.20",
                11,
            ),
            (
                "10.244.1.0/24",
                Some("10.244.1.0"),
                Some("10.244.1.255"),
                Some("10.244.1.5"),
                "10.244.1.0",
                "10.244.1.255",
                253,
            ),
            ("10.0.0.0/30", None, None, None, "10.0.0.1", "10.0.0.2", 1),
            ("10.0.0.0/16", None, None, None, "10.0.0.1", "10.0.255.254", 65533),
            ("fd00::/120", None, None, None, "fd00::1", "fd00::ff", 254),
            ("fd00::/126", None, None, None, "fd00::1", "fd00::3", 2),
        ];
        for (subnet, s, e, gw, first, last, usable) in table {
            let r = range(subnet, s, e, gw);
            assert_eq!(r.start().to_string(), first, "{subnet}");
            assert_eq!(r.end().to_string(), last, "{subnet}");
            assert_eq!(r.usable_count(), usable, "{subnet} {s:?}-{e:?}");
        }
        let r = range("fd00::/64", None, None, None);
        assert_eq!(r.usable_count(), (1u128 << 64) - 2);
        assert_eq!(r.gateway_addr().to_string(), "fd00::1");
    }

    #[test]
    fn reserved_addresses_are_never_candidates() {
        let r = range("10.0.0.0/29", Some("10.0.0.0"), Some("10.0.0.7"), Some("10.0.0.3"));
        let set = [r];
        let got = ips(&candidates(&set, None).collect::<Vec<_>>());
        assert_eq!(got, ["10.0.0.1", "10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6"]);
        let r6 = range("fd00::/125", Some("fd00::"), None, None);
        let set6 = [r6];
        let got = ips(&candidates(&set6, None).collect::<Vec<_>>());
        assert_eq!(got, ["fd00::2", "fd00::3", "fd00::4", "fd00::5", "fd00::6", "fd00::7"]);
    }

    #[test]
    fn continues_after_last_and_wraps_across_ranges() {
        let set = [
            range("10.0.0.0/24", Some("10.0.0.10"), Some("10.0.0.12"), None),
            range("10.0.1.0/24", Some("10.0.1.250"), None, None),
        ];
        let order =
            |last: Option<&str>| ips(&candidates(&set, last.map(|l| l.parse().unwrap())).collect::<Vec<_>>());
        let all = [
            "10.0.0.10",
            "10.0.0.11",
            "10.0.0.12",
            "10.0.1.250",
            "10.0.1.251",
            "10.0.1.252",
            "10.0.1.253",
            "10.0.1.254",
        ];
        assert_eq!(order(None), all);
        assert_eq!(order(Some("10.0.0.11"))[..3], ["10.0.0.12", "10.0.1.250", "10.0.1.251"]);
        let after_end = order(Some("10.0.1.254"));
        assert_eq!(after_end, all, "wraps to the first range");
        let mid = order(Some("10.0.1.251"));
        assert_eq!(mid.len(), all.len());
        assert_eq!(mid.last().map(String::as_str), Some("10.0.1.251"), "last is tried last");
        // Outside every range: start from the beginning.
        assert_eq!(order(Some("192.168.0.1")), all);
    }

    #[test]
    fn a_slash_16_is_walked_lazily() {
        let set = [range("10.0.0.0/16", None, None, None)];
        assert_eq!(usable_in_set(&set), 65533);
        let mut it = candidates(&set, Some("10.0.255.253".parse().unwrap()));
        let first: Vec<_> = it.by_ref().take(2).map(|(_, ip)| ip.to_string()).collect();
        assert_eq!(first, ["10.0.255.254", "10.0.0.2"], "skips broadcast, network and gateway");
        assert_eq!(it.count(), 65533 - 2);
        // A /64 too: taking a few never walks the whole range.
        let set6 = [range("fd00::/64", None, None, None)];
        let near_end: IpAddr = "fd00::ffff:ffff:ffff:fffe".parse().unwrap();
        let got = ips(&candidates(&set6, Some(near_end)).take(2).collect::<Vec<_>>());
        assert_eq!(got, ["fd00::ffff:ffff:ffff:ffff", "fd00::2"]);
    }

    #[test]
    fn contains_and_find_range() {
        let set = [range("10.0.0.0/24", Some("10.0.0.10"), Some("10.0.0.20"), None)];
        for (ip, usable) in [
            ("10.0.0.10", true),
            ("10.0.0.20", true),
            ("10.0.0.9", false),
            ("10.0.0.21", false),
            ("fd00::10", false),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(find_range(&set, ip).is_some(), usable, "{ip}");
        }
        let gw_inside = [range("10.0.0.0/24", Some("10.0.0.1"), Some("10.0.0.3"), None)];
        assert!(gw_inside[0].contains("10.0.0.1".parse().unwrap()));
        assert!(find_range(&gw_inside, "10.0.0.1".parse().unwrap()).is_none());
    }

    #[test]
    fn degenerate_ranges_do_not_panic() {
        for subnet in ["10.0.0.1/32", "10.0.0.0/31", "fd00::/128", "fd00::/127", "0.0.0.0/0", "::/0"] {
            let set = [range(subnet, None, None, None)];
            let _ = candidates(&set, None).take(3).count();
            let _ = usable_in_set(&set);
        }
        let inverted = [range("10.0.0.0/24", Some("10.0.0.9"), Some("10.0.0.3"), None)];
        assert_eq!(candidates(&inverted, None).count(), 0);
        assert_eq!(candidates(&[], None).count(), 0);
    }
}
