//! Every way a run can end leaves nothing behind: `down` (twice), a panicking
//! test (Drop), a namespace deleted by hand, a run that died before writing its
//! plan, and Ctrl-C/SIGTERM on the CLI's foreground `up`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{assert_gone, assert_present, bin, root_or_skip, CMD_TIMEOUT};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use weft_e2e::{netns, run, topology, RunState, Testbed};

#[test]
fn down_removes_everything_and_a_second_down_succeeds() {
    if !root_or_skip("down_removes_everything_and_a_second_down_succeeds") {
        return;
    }
    let tb = Testbed::up(2).unwrap();
    let st = tb.state();
    assert_present(&st);
    tb.down().unwrap();
    assert_gone(&st);
    topology::down(&st.run).unwrap();
    let again = weft_e2e::exec_in(&netns_of_self(), &[bin(), "down", &st.run], CMD_TIMEOUT).unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_gone(&st);
}

#[test]
fn a_test_that_panics_after_up_leaves_nothing() {
    if !root_or_skip("a_test_that_panics_after_up_leaves_nothing") {
        return;
    }
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let tb = Testbed::up(2).unwrap();
        tx.send(tb.state()).unwrap();
        panic!("the test fails after up (expected in this test)");
    });
    assert!(worker.join().is_err(), "the worker was meant to panic");
    let st: RunState = rx.recv_timeout(Duration::from_secs(1)).expect("up finished before the panic");
    assert_gone(&st);
}

#[test]
fn down_tolerates_a_namespace_deleted_by_hand() {
    if !root_or_skip("down_tolerates_a_namespace_deleted_by_hand") {
        return;
    }
    let tb = Testbed::up(2).unwrap();
    let st = tb.state();
    let gone = weft_e2e::exec_in(&netns_of_self(), &["ip", "netns", "del", &st.nodes[0].netns], CMD_TIMEOUT)
        .unwrap();
    assert!(gone.status.success(), "{}", String::from_utf8_lossy(&gone.stderr));
    let status = topology::status(&st.run).unwrap();
    assert!(status.contains(&format!("{:<12} MISSING", st.nodes[0].netns)), "{status}");
    topology::down(&st.run).unwrap();
    assert_gone(&st);
    tb.down().unwrap();
}

#[test]
fn down_of_a_run_that_died_before_its_state_file_goes_by_prefix() {
    if !root_or_skip("down_of_a_run_that_died_before_its_state_file_goes_by_prefix") {
        return;
    }
    let run = weft_e2e::plan::random_run_name().unwrap();
    run::create_run_dir(&run).unwrap();
    let st = RunState::plan(&run, 1).unwrap();
    netns::create_netns(&st.lan).unwrap();
    assert!(topology::status(&run).unwrap().contains("no state file"));
    topology::down(&run).unwrap();
    assert_gone(&st);
}

#[test]
fn cli_up_keep_status_down() {
    if !root_or_skip("cli_up_keep_status_down") {
        return;
    }
    let up = cli(&["up", "--nodes", "1", "--keep"]);
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    let run = String::from_utf8(up.stdout).unwrap().trim().to_string();
    let st = run::load(&run).unwrap().expect("state file");
    assert!(st.complete);
    assert_present(&st);
    let status = cli(&["status", &run]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("present"));
    assert!(cli(&["down", &run]).status.success());
    assert_gone(&st);
    assert!(!cli(&["status", &run]).status.success(), "status of a deleted run fails");
    assert_eq!(cli(&["up", "--nodes", "1", "--name", "Bad-Name"]).status.code(), Some(1));
}

#[test]
fn cli_up_in_the_foreground_tears_down_on_sigterm() {
    if !root_or_skip("cli_up_in_the_foreground_tears_down_on_sigterm") {
        return;
    }
    let mut child = Command::new(bin()).args(["up", "--nodes", "2"]).stdout(Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(BufReader::new(stdout).lines().next()));
    let run = match rx.recv_timeout(CMD_TIMEOUT) {
        Ok(Some(Ok(line))) => line.trim().to_string(),
        other => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("up printed no run name: {other:?}");
        }
    };
    let st = run::load(&run).unwrap().expect("state file");
    assert_present(&st);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + CMD_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = topology::down(&run);
            panic!("up did not exit within {CMD_TIMEOUT:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status:?}");
    assert_gone(&st);
}

fn cli(args: &[&str]) -> std::process::Output {
    let mut argv = vec![bin().to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    weft_e2e::exec_in(&netns_of_self(), &argv, CMD_TIMEOUT).unwrap()
}

/// This process's own netns (the root one): exec_in there is a bounded plain exec.
fn netns_of_self() -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/proc/{}/ns/net", std::process::id()))
}
