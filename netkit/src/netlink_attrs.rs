//! Netlink message constants, and walking netlink attributes: (type, value) pairs, 4-byte aligned, the
//! type without its NESTED and NET_BYTEORDER flags. Stops at the first
//! malformed attribute: what the kernel sent is never trusted for a length.

/// Netlink header flags and message types (include/uapi/linux/netlink.h).
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;

/// Attribute type flags (include/uapi/linux/netlink.h): a nest of
/// attributes, and a value in network byte order.
pub const NLA_F_NESTED: u16 = 0x8000;
pub const NLA_F_NET_BYTEORDER: u16 = 0x4000;

/// The attributes of a buffer.
pub struct Attrs<'a>(pub &'a [u8]);

const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.0;
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let kind = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            self.0 = &[];
            return None;
        }
        self.0 = b.get(len.next_multiple_of(4)..).unwrap_or_default();
        Some((kind, &b[4..len]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_aligned_attributes_and_stops_at_a_bad_length() {
        // (len 5, type 1 | NESTED, "a" + pad), (len 8, type 2, 4 bytes), then a length past the end.
        let mut b = vec![5, 0, 1, 0x80, b'a', 0, 0, 0, 8, 0, 2, 0, 1, 2, 3, 4];
        b.extend([40, 0, 3, 0, 9]);
        let got: Vec<(u16, Vec<u8>)> = Attrs(&b).map(|(t, v)| (t, v.to_vec())).collect();
        assert_eq!(got, [(1, vec![b'a']), (2, vec![1, 2, 3, 4])]);
        assert_eq!(Attrs(&[1, 0, 0, 0]).count(), 0, "a length below the header");
    }
}
