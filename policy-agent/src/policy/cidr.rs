//! IPv4 CIDR arithmetic for ipBlock: a block minus its excepts, as the fewest
//! CIDRs that cover exactly the remaining addresses (hash:net sets and
//! hash:ip,port,net entries take CIDRs, not ranges).

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

/// `block` minus every network of `except`, as disjoint CIDRs in address order.
pub fn subtract(block: Ipv4Network, except: &[Ipv4Network]) -> Vec<Ipv4Network> {
    let mut out = Vec::new();
    split(normal(block), except, &mut out);
    out
}

fn normal(n: Ipv4Network) -> Ipv4Network {
    // The prefix is already valid.
    Ipv4Network::new(n.network(), n.prefix()).unwrap_or(n)
}

/// True if `a` contains all of `b`.
fn covers(a: Ipv4Network, b: Ipv4Network) -> bool {
    a.prefix() <= b.prefix() && a.contains(b.network())
}

fn overlaps(a: Ipv4Network, b: Ipv4Network) -> bool {
    covers(a, b) || covers(b, a)
}

fn split(n: Ipv4Network, except: &[Ipv4Network], out: &mut Vec<Ipv4Network>) {
    if except.iter().any(|e| covers(*e, n)) {
        return;
    }
    if !except.iter().any(|e| overlaps(*e, n)) {
        out.push(n);
        return;
    }
    // Some except lies strictly inside n: halve (n is at most /31 here, since
    // a /32 either is covered or overlaps nothing).
    let p = n.prefix() + 1;
    let base = u32::from(n.network());
    let half = 1u32 << (32 - p);
    for start in [base, base + half] {
        // p <= 32 holds: n had prefix < 32.
        if let Ok(h) = Ipv4Network::new(Ipv4Addr::from(start), p) {
            split(h, except, out);
        }
    }
}

/// Merges CIDRs into the fewest that cover the same addresses: drops
/// networks inside others and joins sibling halves, repeatedly.
pub fn aggregate(nets: impl IntoIterator<Item = Ipv4Network>) -> Vec<Ipv4Network> {
    let mut v: Vec<Ipv4Network> = nets.into_iter().map(normal).collect();
    v.sort_by_key(|n| (u32::from(n.network()), n.prefix()));
    v.dedup();
    loop {
        let mut out: Vec<Ipv4Network> = Vec::with_capacity(v.len());
        let mut changed = false;
        for n in v {
            if let Some(last) = out.last().copied() {
                if covers(last, n) {
                    changed = true;
                    continue;
                }
                if last.prefix() == n.prefix() && last.prefix() > 0 {
                    if let Ok(parent) = Ipv4Network::new(last.network(), last.prefix() - 1) {
                        let parent = normal(parent);
                        if parent.network() == last.network() && covers(parent, n) {
                            out.pop();
                            out.push(parent);
                            changed = true;
                            continue;
                        }
                    }
                }
            }
            out.push(n);
        }
        v = out;
        if !changed {
            return v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn size(nets: &[Ipv4Network]) -> u64 {
        nets.iter().map(|n| 1u64 << (32 - n.prefix())).sum()
    }

    #[test]
    fn subtract_leaves_exactly_the_rest() {
        let got = subtract(n("172.31.0.0/24"), &[n("172.31.0.100/32")]);
        assert_eq!(size(&got), 255);
        assert!(got.iter().all(|g| !g.contains("172.31.0.100".parse().unwrap())));
        assert!(got.iter().any(|g| g.contains("172.31.0.101".parse().unwrap())));
        assert_eq!(got.len(), 8, "{got:?}");
        assert_eq!(subtract(n("10.0.0.0/8"), &[]), [n("10.0.0.0/8")]);
        assert_eq!(subtract(n("10.0.0.0/8"), &[n("0.0.0.0/0")]), []);
        assert_eq!(subtract(n("10.0.0.0/8"), &[n("11.0.0.0/8")]), [n("10.0.0.0/8")]);
        let all = subtract(n("0.0.0.0/0"), &[n("10.244.0.0/16"), n("10.244.1.0/24")]);
        assert_eq!(size(&all), (1u64 << 32) - (1 << 16));
        assert_eq!(all.len(), 16);
    }

    #[test]
    fn aggregate_joins_siblings_and_drops_covered() {
        assert_eq!(
            aggregate([n("10.0.0.0/25"), n("10.0.0.128/25"), n("10.0.0.7/32"), n("10.0.1.0/24")]),
            [n("10.0.0.0/23")]
        );
        assert_eq!(aggregate([n("10.0.0.1/32"), n("10.0.0.2/32")]), [n("10.0.0.1/32"), n("10.0.0.2/32")]);
        assert_eq!(aggregate([n("10.0.0.2/32"), n("10.0.0.3/32")]), [n("10.0.0.2/31")]);
        let rest = subtract(n("172.31.0.0/24"), &[n("172.31.0.100/32")]);
        let mut back = rest.clone();
        back.push(n("172.31.0.100/32"));
        assert_eq!(aggregate(back), [n("172.31.0.0/24")]);
    }
}
