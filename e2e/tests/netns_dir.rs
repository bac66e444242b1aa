//! Testbeds survive other users of /run/netns. Each test models a fresh machine
//! in a mount namespace of its own (a tmpfs on /run, so /run/netns is a plain
//! directory, as before anything ran `ip netns add`), then lets iproute2 and
//! processes that copy mount namespaces (`unshare -m`, `ip netns exec`) work
//! beside the testbeds: every `down` succeeds and nothing is left. The machine's
//! own /run and /run/netns are never touched.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use common::{root_or_skip, CMD_TIMEOUT};
use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use weft_e2e::{netns, topology, Testbed};

/// Runs `f` on a thread in a new mount namespace where nothing propagates back
/// and /run is an empty tmpfs. Threads and processes `f` starts share it.
fn on_a_fresh_machine(f: impl FnOnce() + Send) {
    std::thread::scope(|s| {
        s.spawn(|| {
            // This thread only (unshare copies its fs context); it ends with the test.
            unshare(CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS)");
            let private = MsFlags::MS_REC | MsFlags::MS_PRIVATE;
            mount(None::<&str>, "/", None::<&str>, private, None::<&str>).expect("make / private");
            // The machine's /run/netns mount, if any, leaves this namespace only (private).
            match umount2("/run/netns", MntFlags::MNT_DETACH) {
                Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
                Err(e) => panic!("detach /run/netns here: {e}"),
            }
            mount(Some("tmpfs"), "/run", Some("tmpfs"), MsFlags::empty(), Some("mode=755"))
                .expect("tmpfs on /run");
            std::fs::create_dir("/run/netns").unwrap();
            assert_eq!(mounts_at("/run/netns"), 0, "/run/netns starts as a plain directory");
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// How many mounts this thread's mount namespace has at exactly `path`.
fn mounts_at(path: &str) -> usize {
    mount_points().iter().filter(|m| *m == path).count()
}

/// The mount points in this thread's mount namespace (field 5 of mountinfo).
fn mount_points() -> Vec<String> {
    let info = std::fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
    info.lines().filter_map(|l| l.split(' ').nth(4)).map(str::to_string).collect()
}

/// Asserts that /run/netns holds no file and no mount.
fn assert_netns_dir_empty() {
    let files: Vec<_> =
        std::fs::read_dir(netns::NETNS_DIR).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(files.is_empty(), "files left in /run/netns: {files:?}");
    let mounts: Vec<_> = mount_points().into_iter().filter(|m| m.starts_with("/run/netns/")).collect();
    assert!(mounts.is_empty(), "mounts left under /run/netns: {mounts:?}");
}

/// Runs `argv` in this thread's namespaces (bounded); its output.
fn run(argv: &[&str]) -> std::process::Output {
    let mut c = Command::new(argv[0]);
    c.args(&argv[1..]).stdin(Stdio::null());
    weft_e2e::exec_command(c, &format!("{argv:?}"), None, CMD_TIMEOUT)
        .unwrap_or_else(|e| panic!("{argv:?} (iproute2, util-linux; `make deps` installs them): {e}"))
}

fn ip(args: &[&str]) {
    let out = run(&[&["ip"], args].concat());
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn iproute2s_first_netns_add_during_a_run_hides_nothing() {
    if !root_or_skip("iproute2s_first_netns_add_during_a_run_hides_nothing") {
        return;
    }
    on_a_fresh_machine(|| {
        let tb = Testbed::up(1).unwrap();
        let st = tb.state();
        // iproute2's first add binds /run/netns over itself unless it already is a mount point.
        let other = format!("{}-other", st.run);
        ip(&["netns", "add", &other]);
        ip(&["netns", "del", &other]);
        tb.down().unwrap();
        assert_eq!(topology::leftovers(&st), Vec::<String>::new());
        assert_netns_dir_empty();
        assert_eq!(
            mounts_at("/run/netns"),
            1,
            "one mount point, made by the testbed; ip bound nothing over it"
        );
    });
}

/// Loops `argv` (each run bounded) until `stop`; returns how many runs succeeded.
fn churn(argv: &[&str], stop: &AtomicBool) -> u32 {
    let mut ok = 0;
    while !stop.load(Ordering::SeqCst) {
        ok += u32::from(run(argv).status.success());
    }
    ok
}

#[test]
fn testbeds_come_and_go_while_others_copy_mount_namespaces() {
    if !root_or_skip("testbeds_come_and_go_while_others_copy_mount_namespaces") {
        return;
    }
    on_a_fresh_machine(|| {
        let stop = AtomicBool::new(false);
        // A netns of our own that `ip netns exec` enters over and over.
        let target = format!("wtexec{}", std::process::id());
        netns::create_netns(&target).unwrap();
        let target_argv = ["ip", "netns", "exec", target.as_str(), "true"];
        let (sleeps, execs) = std::thread::scope(|s| {
            let sleeps = s.spawn(|| churn(&["unshare", "-m", "sleep", "1"], &stop));
            let execs = s.spawn(|| churn(&target_argv, &stop));
            let mut sleeper: Option<Child> = None;
            for _ in 0..4 {
                // One more copy of every mount that lives across the whole down.
                sleeper = Some(Command::new("unshare").args(["-m", "sleep", "2"]).spawn().unwrap());
                let tb = Testbed::up(2).unwrap();
                let st = tb.state();
                ip(&["netns", "exec", &st.nodes[0].netns, "true"]);
                tb.down().unwrap();
                assert_eq!(topology::leftovers(&st), Vec::<String>::new());
            }
            stop.store(true, Ordering::SeqCst);
            if let Some(mut c) = sleeper {
                c.wait().unwrap();
            }
            (sleeps.join().unwrap(), execs.join().unwrap())
        });
        assert!(sleeps > 0 && execs > 0, "the churn ran: {sleeps} unshare -m, {execs} ip netns exec");
        assert!(netns::delete_netns(&target).unwrap());
        assert_netns_dir_empty();
    });
}

#[test]
fn ensure_netns_dir_is_idempotent_and_binds_once() {
    if !root_or_skip("ensure_netns_dir_is_idempotent_and_binds_once") {
        return;
    }
    on_a_fresh_machine(|| {
        let dir = Path::new(netns::NETNS_DIR);
        for _ in 0..3 {
            weft_netkit::netns::ensure_netns_dir(dir).unwrap();
        }
        assert_eq!(mounts_at("/run/netns"), 1);
        let info = std::fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
        let line = info.lines().find(|l| l.split(' ').nth(4) == Some("/run/netns")).unwrap();
        assert!(line.contains(" shared:"), "/run/netns is shared: {line}");
    });
}
