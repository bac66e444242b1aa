//! Names of the kernel objects weft creates for an attachment.
//!
//! The host end of a pod's veth is named from a hash of (container ID,
//! ifname), so DEL and CHECK find it without state and without the pod's
//! netns, and a second ADD of the same attachment collides instead of leaking.

use weft_conf::hash::Fnv1a;

/// A stable hash of several parts: a separator byte no container ID or
/// ifname contains keeps ("ab","c") and ("a","bc") apart.
pub fn hash_parts(parts: &[&[u8]]) -> u64 {
    let mut h = Fnv1a::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h = h.write(&[0xff]);
        }
        h = h.write(p);
    }
    h.finish()
}

/// The host-side veth name of an attachment: `veth` + 11 hex digits (15 bytes, the kernel's limit).
pub fn host_veth(container_id: &str, ifname: &str) -> String {
    let h = hash_parts(&[container_id.as_bytes(), ifname.as_bytes()]);
    format!("veth{:011x}", h >> 20)
}

/// Whether `name` has the shape of `host_veth`'s names.
pub fn is_host_veth(name: &str) -> bool {
    name.len() == 15
        && name.starts_with("veth")
        && name[4..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_stable_distinct_and_fit() {
        let a = host_veth("c1", "eth0");
        assert_eq!(a, host_veth("c1", "eth0"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("veth"));
        assert!(is_host_veth(&a));
        assert!(!is_host_veth("vethc2aed661") && !is_host_veth("eth0") && !is_host_veth("vethXXXXXXXXXXX"));
        assert_ne!(a, host_veth("c1", "eth1"));
        assert_ne!(a, host_veth("c2", "eth0"));
        assert_ne!(host_veth("ab", "c"), host_veth("a", "bc"));
        let all: std::collections::HashSet<_> =
            (0..10_000).map(|i| host_veth(&format!("container-{i}"), "eth0")).collect();
        assert_eq!(all.len(), 10_000);
    }

    #[test]
    fn one_part_hashes_as_plain_fnv() {
        assert_eq!(hash_parts(&[b"a"]), weft_conf::hash::fnv1a64(b"a"));
    }
}
