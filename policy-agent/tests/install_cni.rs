//! `weft-agent install-cni`, as an init container runs it: copies the CNI
//! binaries into the host's bin dir, idempotently; a missing binary fails.

use std::process::Command;

#[test]
fn install_cni_copies_the_binaries_once() {
    let dir = tempfile::tempdir().unwrap();
    let (from, bin) = (dir.path().join("image"), dir.path().join("host-bin"));
    std::fs::create_dir(&from).unwrap();
    for b in ["weft", "weft-ipam"] {
        std::fs::write(from.join(b), format!("#!/bin/sh\necho {b}\n")).unwrap();
    }
    let run = || {
        let out = Command::new(env!("CARGO_BIN_EXE_weft-agent"))
            .args(["install-cni", "--from"])
            .arg(&from)
            .arg("--bin-dir")
            .arg(&bin)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, _) = run();
    assert!(ok && out.contains("installed") && out.contains("weft-ipam"), "{out}");
    assert_eq!(std::fs::read_to_string(bin.join("weft")).unwrap(), "#!/bin/sh\necho weft\n");
    let (ok, out, _) = run();
    assert!(ok && out.contains("is up to date"), "{out}");
    std::fs::remove_file(from.join("weft")).unwrap();
    let (ok, _, err) = run();
    assert!(!ok && err.contains("weft"), "{err}");
}
