//! Running a child process within a deadline, its output read bounded: past
//! the deadline the child is killed and reaped and the call fails with
//! `KernelError::ToolTimedOut`; stdout beyond `MAX_STDOUT` fails the call
//! (`ToolOutputTooLarge`), stderr is kept to `MAX_STDERR`. The readers and
//! the stdin writer are threads of their own, so no side blocks on a full pipe.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::kernel_error::KernelError;

/// The most stdout kept; more fails the call (a listing this long is not weft's).
pub const MAX_STDOUT: usize = 64 << 20;
/// The most stderr kept; the rest is read and dropped.
pub const MAX_STDERR: usize = 64 << 10;

/// What a process left behind.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runs `program` (`name` in errors) with `args`, fed `stdin`, reading stdout
/// and stderr bounded on threads of their own, and kills it if it has not
/// exited and closed them by `deadline` (`ToolTimedOut`).
pub fn exec(
    program: &Path,
    name: &str,
    args: &[&str],
    stdin: Option<&str>,
    deadline: Duration,
) -> Result<Finished, KernelError> {
    let cmd_line = || format!("{name} {}", args.join(" "));
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let until = Instant::now() + deadline;
    let mut child = cmd.spawn().map_err(|e| spawn_err(name, e))?;
    let (tx, rx) = mpsc::channel();
    let readers = spawn_reader(child.stdout.take(), MAX_STDOUT, true, tx.clone())
        .and_then(|()| spawn_reader(child.stderr.take(), MAX_STDERR, false, tx.clone()));
    if let Err(source) = readers {
        kill(&mut child);
        return Err(KernelError::Io { what: format!("run {name}: spawn a reader"), source });
    }
    drop(tx);
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // Written from here: the readers drain the outputs, so the tool never
        // blocks on a full pipe. A tool that fails early: its stderr says why,
        // not our EPIPE. (A tool that stops reading is caught by the deadline below.)
        let writer = std::thread::Builder::new().name("weft-tool-input".into()).spawn({
            let input = input.to_string();
            move || {
                let _ = pipe.write_all(input.as_bytes());
            }
        });
        if let Err(source) = writer {
            kill(&mut child);
            return Err(KernelError::Io { what: format!("run {name}: spawn the writer"), source });
        }
    }
    let (mut stdout, mut stderr) = (None, None);
    while stdout.is_none() || stderr.is_none() {
        match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok((true, out)) => stdout = Some(out),
            Ok((false, out)) => stderr = Some(out),
            Err(_) => {
                kill(&mut child);
                return Err(KernelError::ToolTimedOut { cmd: cmd_line(), deadline });
            }
        }
    }
    let status = wait_until(&mut child, until).ok_or_else(|| {
        kill(&mut child);
        KernelError::ToolTimedOut { cmd: cmd_line(), deadline }
    })?;
    let (stdout, stdout_whole) = stdout.unwrap_or_default();
    if !stdout_whole {
        return Err(KernelError::ToolOutputTooLarge { cmd: cmd_line(), limit: MAX_STDOUT });
    }
    Ok(Finished { status, stdout, stderr: stderr.unwrap_or_default().0 })
}

/// What a reader sends: whether it read stdout, the bytes kept, and whether they are all.
type ReaderDone = (bool, (Vec<u8>, bool));

/// Reads `pipe` on a detached thread (a grandchild holding the pipe past the
/// kill must not hold the caller) and sends what it kept to `tx`.
fn spawn_reader(
    pipe: Option<impl Read + Send + 'static>,
    limit: usize,
    is_stdout: bool,
    tx: mpsc::Sender<ReaderDone>,
) -> std::io::Result<()> {
    let Some(pipe) = pipe else {
        let _ = tx.send((is_stdout, (Vec::new(), true)));
        return Ok(());
    };
    std::thread::Builder::new().name("weft-tool-output".into()).spawn(move || {
        let _ = tx.send((is_stdout, read_bounded(pipe, limit)));
    })?;
    Ok(())
}

/// Reads `pipe` to its end, keeping the first `limit` bytes; true if nothing was dropped.
fn read_bounded(mut pipe: impl Read, limit: usize) -> (Vec<u8>, bool) {
    let (mut kept, mut buf, mut whole) = (Vec::new(), [0u8; 8192], true);
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => return (kept, whole),
            Ok(n) => {
                let room = limit - kept.len();
                kept.extend_from_slice(&buf[..n.min(room)]);
                whole &= n <= room;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return (kept, whole),
        }
    }
}

/// The child's exit status once it has exited, or None at `until`. The child
/// closed its outputs, so it is exiting: this polls briefly, not for long.
fn wait_until(child: &mut Child, until: Instant) -> Option<ExitStatus> {
    let mut pause = Duration::from_micros(50);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < until => {
                std::thread::sleep(pause.min(until.saturating_duration_since(Instant::now())));
                pause = (pause * 2).min(Duration::from_millis(10));
            }
            _ => return None,
        }
    }
}

/// Kills and reaps a tool past its deadline (it is our child, not yet reaped:
/// its pid cannot have been reused).
fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn spawn_err(name: &str, source: std::io::Error) -> KernelError {
    KernelError::Io { what: format!("run {name}"), source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tool::{find_tool, output};

    fn run(
        name: &str,
        args: &[&str],
        stdin: Option<&str>,
        deadline: Duration,
    ) -> Result<Finished, KernelError> {
        exec(&find_tool(name).unwrap(), name, args, stdin, deadline)
    }

    #[test]
    fn a_tool_past_its_deadline_is_killed() {
        let t = Instant::now();
        let e = run("sleep", &["30"], None, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(&e, KernelError::ToolTimedOut { cmd, .. } if cmd == "sleep 30"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }

    #[test]
    fn a_tool_that_stops_reading_its_input_is_killed() {
        // sleep never reads stdin: 1 MiB fills the pipe, the writer blocks, the deadline holds.
        let input = "x".repeat(1 << 20);
        let e = run("sleep", &["30"], Some(&input), Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, KernelError::ToolTimedOut { .. }), "{e}");
    }

    #[test]
    fn input_and_output_larger_than_a_pipe_pass_whole() {
        let input: String = (0..100_000).map(|i| format!("{i}\n")).collect();
        assert_eq!(output("cat", &[], Some(&input)).unwrap(), input);
    }

    #[test]
    fn an_output_flood_is_bounded() {
        let flood = format!("head -c {} /dev/zero", MAX_STDOUT + 1);
        let e = output("sh", &["-c", &flood], None).unwrap_err();
        assert!(matches!(e, KernelError::ToolOutputTooLarge { limit: MAX_STDOUT, .. }), "{e}");
        // stderr: kept up to its bound, the failure still reported.
        let e =
            output("sh", &["-c", "head -c 10000000 /dev/zero | tr '\\0' e >&2; exit 3"], None).unwrap_err();
        let KernelError::ToolFailed { stderr, .. } = e else { panic!("{e}") };
        assert_eq!(stderr.len(), MAX_STDERR);
        assert!(stderr.bytes().all(|b| b == b'e'));
    }
}
