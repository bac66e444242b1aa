//! A unix socket only root can connect to, with no window in which anyone
//! else can: it is bound inside a fresh 0700 directory, made 0600 there,
//! then renamed into place (a rename keeps the socket; it also replaces a
//! stale file of an earlier run in one step). A chmod after a bind in place
//! would leave the socket open to a permissive umask until the chmod.

use std::fs::DirBuilder;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// Binds a 0600 unix socket at `path` (its parent created if missing),
/// replacing any file there; idempotent across restarts.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().ok_or_else(|| std::io::Error::other("the socket path has no file name"))?;
    let mut private = name.to_os_string();
    private.push(format!(".{}.bind", std::process::id()));
    let private = dir.join(private);
    // Left by a crash of this pid's predecessor: ours to remove.
    let _ = std::fs::remove_dir_all(&private);
    DirBuilder::new().mode(0o700).create(&private)?;
    let bound = bind_in(&private, path);
    let _ = std::fs::remove_dir_all(&private);
    bound
}

fn bind_in(private: &Path, path: &Path) -> std::io::Result<UnixListener> {
    let inner: PathBuf = private.join("s");
    let listener = UnixListener::bind(&inner)?;
    std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&inner, path)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn bound_0600_in_place_of_a_stale_file_and_reachable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/denied.sock");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "stale").unwrap();
        let l = bind(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "only the socket is left: {left:?}");
        let mut c = UnixStream::connect(&path).unwrap();
        c.write_all(b"x").unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"x");
    }
}
