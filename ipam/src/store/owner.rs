//! Who holds an address: an attachment, (container ID, ifname). Its forms
//! on disk besides our JSON record (`files.rs`): host-local's IP file text
//! `"<id>\r\n<ifname>"`, and the name of its index file under `attachments/`.

use weft_conf::hash::Fnv1a;

use crate::error::IpamError;

/// An attachment: (container ID, ifname).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Owner {
    pub id: String,
    pub ifname: String,
}

/// Escaped index names longer than this are replaced by a hash (file names
/// are limited to 255 bytes).
const MAX_ESCAPED_NAME: usize = 200;

impl Owner {
    /// Checks what the on-disk formats need: a non-empty ID, and an ifname
    /// that is non-empty and has no line break (it ends host-local's IP file).
    /// The plugin enforces the spec's stricter rules on both.
    pub fn new(container_id: &str, ifname: &str) -> Result<Owner, IpamError> {
        let reason = if container_id.is_empty() {
            Some("the container ID is empty")
        } else if ifname.is_empty() {
            Some("the interface name is empty")
        } else if ifname.contains(['\r', '\n']) {
            Some("the interface name contains a line break")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(IpamError::BadAttachment {
                container_id: container_id.to_string(),
                ifname: ifname.to_string(),
                reason,
            }),
            None => Ok(Owner { id: container_id.to_string(), ifname: ifname.to_string() }),
        }
    }

    /// Reads host-local's (and older weft's) IP file text, `"<id>\r\n<ifname>"`.
    /// The split is at the last line break, since an ifname never holds one.
    /// Old host-local files hold just the ID, which reads as an empty ifname.
    /// `None` for an empty file.
    pub fn from_host_local(content: &str) -> Option<Owner> {
        let (id, ifname) = match content.rfind("\r\n") {
            Some(i) => (&content[..i], &content[i + 2..]),
            None => (content.trim(), ""),
        };
        (!id.is_empty()).then(|| Owner { id: id.to_string(), ifname: ifname.to_string() })
    }

    /// The file name of this owner's index: `<id>@<ifname>`, each escaped
    /// (bytes outside `[A-Za-z0-9_.-]` become `%XX`), so it is a safe and
    /// reversible path component; when that is too long, `#` and a 128-bit
    /// hash, with the owner kept inside the file to detect collisions.
    pub fn index_name(&self) -> String {
        let name = format!("{}@{}", escape(&self.id), escape(&self.ifname));
        if name.len() <= MAX_ESCAPED_NAME {
            return name;
        }
        let key = format!("{}\0{}", self.id, self.ifname);
        format!(
            "#{:016x}{:016x}",
            Fnv1a::new().write(key.as_bytes()).finish(),
            Fnv1a::with_basis(0x6c62_272e_07bb_0142).write(key.as_bytes()).finish()
        )
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"_.-".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_local_text() {
        for (id, ifname) in [("abc", "eth0"), ("a\r\nb", "net1"), ("x y", "e")] {
            let o = Owner::new(id, ifname).unwrap();
            assert_eq!(Owner::from_host_local(&format!("{id}\r\n{ifname}")), Some(o));
        }
        let old = Owner::from_host_local("abc\n").unwrap();
        assert_eq!((old.id.as_str(), old.ifname.as_str()), ("abc", ""));
        assert_eq!(Owner::from_host_local(""), None);
        assert_eq!(Owner::from_host_local("\r\neth0"), None);
    }

    #[test]
    fn bad_owners() {
        for (id, ifname) in [("", "eth0"), ("c", ""), ("c", "eth\n0"), ("c", "eth0\r")] {
            assert_eq!(Owner::new(id, ifname).unwrap_err().code().code(), 4, "{id:?} {ifname:?}");
        }
    }

    #[test]
    fn index_names_are_safe_and_distinct() {
        let names: Vec<String> = [
            ("abc", "eth0"),
            ("a/b", "eth0"),
            ("a@b", "c"),
            ("a", "b@c"),
            ("..", "."),
            ("%41", "x"),
            ("A", "x"),
        ]
        .iter()
        .map(|(i, f)| Owner::new(i, f).unwrap().index_name())
        .collect();
        assert_eq!(names[0], "abc@eth0");
        assert_eq!(names[1], "a%2Fb@eth0");
        for (i, n) in names.iter().enumerate() {
            assert!(!n.contains('/') && n != "." && n != "..", "{n}");
            assert!(!names[i + 1..].contains(n), "{n} twice");
        }
        let long = Owner::new(&"x".repeat(300), "eth0").unwrap().index_name();
        assert!(long.starts_with('#') && long.len() == 33, "{long}");
        assert_ne!(long, Owner::new(&"x".repeat(301), "eth0").unwrap().index_name());
    }
}
