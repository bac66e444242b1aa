//! FNV-1a, 64 bits: the one stable hash weft names things with (host veth
//! names, node stamps, long index file names, chain names, generations).
//! std's hasher is not stable across releases, so it cannot name anything
//! that outlives a process.

/// The FNV-1a 64-bit offset basis.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// An FNV-1a 64-bit hasher.
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a(u64);

impl Fnv1a {
    /// From the standard offset basis.
    pub fn new() -> Fnv1a {
        Fnv1a(FNV_OFFSET)
    }

    /// From another basis (a second, independent 64 bits of the same key).
    pub fn with_basis(basis: u64) -> Fnv1a {
        Fnv1a(basis)
    }

    /// Feeds bytes.
    pub fn write(mut self, bytes: &[u8]) -> Fnv1a {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(FNV_PRIME);
        }
        self
    }

    pub fn finish(self) -> u64 {
        self.0
    }
}

/// Hashes what is formatted into it, as `write` would hash the formatted
/// string, without building the string.
impl std::fmt::Write for Fnv1a {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        *self = self.write(s.as_bytes());
        Ok(())
    }
}

impl Default for Fnv1a {
    fn default() -> Fnv1a {
        Fnv1a::new()
    }
}

/// FNV-1a 64 of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    Fnv1a::new().write(bytes).finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_vectors() {
        // From the FNV reference test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
        assert_eq!(Fnv1a::new().write(b"foo").write(b"bar").finish(), fnv1a64(b"foobar"));
        let mut formatted = Fnv1a::new();
        std::fmt::Write::write_fmt(&mut formatted, format_args!("{:?}", ("foo", 1))).unwrap();
        assert_eq!(formatted.finish(), fnv1a64(format!("{:?}", ("foo", 1)).as_bytes()));
    }
}
