//! CIDR arithmetic for ipBlock, in either family: a block minus its excepts,
//! as the fewest CIDRs that cover exactly the remaining addresses (hash:net
//! sets and interval sets take CIDRs, not ranges).

use super::family::{self, Family};

/// `block` minus every network of `except`, as disjoint CIDRs in address order.
pub fn subtract<A: Family>(block: A::Net, except: &[A::Net]) -> Vec<A::Net> {
    let mut out = Vec::new();
    split::<A>(normal::<A>(block), except, &mut out);
    out
}

fn normal<A: Family>(n: A::Net) -> A::Net {
    // The prefix is already valid.
    A::net(A::network(n), A::prefix(n)).unwrap_or(n)
}

/// True if `a` contains all of `b`.
fn covers<A: Family>(a: A::Net, b: A::Net) -> bool {
    A::prefix(a) <= A::prefix(b) && family::contains(a, A::network(b))
}

fn overlaps<A: Family>(a: A::Net, b: A::Net) -> bool {
    covers::<A>(a, b) || covers::<A>(b, a)
}

fn split<A: Family>(n: A::Net, except: &[A::Net], out: &mut Vec<A::Net>) {
    if except.iter().any(|e| covers::<A>(*e, n)) {
        return;
    }
    if !except.iter().any(|e| overlaps::<A>(*e, n)) {
        out.push(n);
        return;
    }
    // Some except lies strictly inside n: halve (n is shorter than a host
    // prefix here, since a host either is covered or overlaps nothing).
    let p = A::prefix(n) + 1;
    let base = A::network(n).as_u128();
    let half = 1u128 << u32::from(A::BITS - p);
    for start in [base, base + half] {
        if let Some(h) = A::net(A::from_u128(start), p) {
            split::<A>(h, except, out);
        }
    }
}

/// Merges CIDRs into the fewest that cover the same addresses: drops
/// networks inside others and joins sibling halves, repeatedly.
pub fn aggregate<A: Family>(nets: impl IntoIterator<Item = A::Net>) -> Vec<A::Net> {
    let mut v: Vec<A::Net> = nets.into_iter().map(normal::<A>).collect();
    v.sort_by_key(|n| (A::network(*n), A::prefix(*n)));
    v.dedup();
    loop {
        let mut out: Vec<A::Net> = Vec::with_capacity(v.len());
        let mut changed = false;
        for n in v {
            if let Some(last) = out.last().copied() {
                if covers::<A>(last, n) {
                    changed = true;
                    continue;
                }
                if A::prefix(last) == A::prefix(n) && A::prefix(last) > 0 {
                    if let Some(parent) = A::net(A::network(last), A::prefix(last) - 1) {
                        if A::network(parent) == A::network(last) && covers::<A>(parent, n) {
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
    use ipnetwork::{Ipv4Network, Ipv6Network};
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn n(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn size(nets: &[Ipv4Network]) -> u64 {
        nets.iter().map(|n| 1u64 << (32 - n.prefix())).sum()
    }

    #[test]
    fn subtract_leaves_exactly_the_rest() {
        let got = subtract::<Ipv4Addr>(n("172.31.0.0/24"), &[n("172.31.0.100/32")]);
        assert_eq!(size(&got), 255);
        assert!(got.iter().all(|g| !g.contains("172.31.0.100".parse().unwrap())));
        assert!(got.iter().any(|g| g.contains("172.31.0.101".parse().unwrap())));
        assert_eq!(got.len(), 8, "{got:?}");
        assert_eq!(subtract::<Ipv4Addr>(n("10.0.0.0/8"), &[]), [n("10.0.0.0/8")]);
        assert_eq!(subtract::<Ipv4Addr>(n("10.0.0.0/8"), &[n("0.0.0.0/0")]), []);
        assert_eq!(subtract::<Ipv4Addr>(n("10.0.0.0/8"), &[n("11.0.0.0/8")]), [n("10.0.0.0/8")]);
        let all = subtract::<Ipv4Addr>(n("0.0.0.0/0"), &[n("10.244.0.0/16"), n("10.244.1.0/24")]);
        assert_eq!(size(&all), (1u64 << 32) - (1 << 16));
        assert_eq!(all.len(), 16);
    }

    #[test]
    fn aggregate_joins_siblings_and_drops_covered() {
        assert_eq!(
            aggregate::<Ipv4Addr>([n("10.0.0.0/25"), n("10.0.0.128/25"), n("10.0.0.7/32"), n("10.0.1.0/24")]),
            [n("10.0.0.0/23")]
        );
        assert_eq!(
            aggregate::<Ipv4Addr>([n("10.0.0.1/32"), n("10.0.0.2/32")]),
            [n("10.0.0.1/32"), n("10.0.0.2/32")]
        );
        assert_eq!(aggregate::<Ipv4Addr>([n("10.0.0.2/32"), n("10.0.0.3/32")]), [n("10.0.0.2/31")]);
        let rest = subtract::<Ipv4Addr>(n("172.31.0.0/24"), &[n("172.31.0.100/32")]);
        let mut back = rest.clone();
        back.push(n("172.31.0.100/32"));
        assert_eq!(aggregate::<Ipv4Addr>(back), [n("172.31.0.0/24")]);
    }

    #[test]
    fn the_same_in_ipv6() {
        let n6 = |s: &str| s.parse::<Ipv6Network>().unwrap();
        let got = subtract::<Ipv6Addr>(n6("fd00::/64"), &[n6("fd00::5/128")]);
        assert_eq!(got.len(), 64, "one network per bit below the prefix");
        assert!(got.iter().all(|g| !g.contains("fd00::5".parse().unwrap())));
        assert!(got.iter().any(|g| g.contains("fd00::4".parse().unwrap())));
        assert_eq!(aggregate::<Ipv6Addr>(got.iter().copied().chain([n6("fd00::5/128")])), [n6("fd00::/64")]);
        let everything = subtract::<Ipv6Addr>(n6("::/0"), &[n6("fd00::/8")]);
        assert_eq!(everything.len(), 8);
        assert_eq!(aggregate::<Ipv6Addr>([n6("fd00::2/128"), n6("fd00::3/128")]), [n6("fd00::2/127")]);
    }
}
