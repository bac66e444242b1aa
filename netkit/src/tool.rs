//! Running the netfilter tools (iptables, iptables-restore, ipset, nft): found
//! by absolute path in the sbin/bin directories, never through PATH (a CNI
//! plugin may run with an empty PATH), run within a deadline (`DEADLINE`
//! unless the call gives one: past it the tool is killed and the call fails
//! with `ToolTimedOut`), their output read bounded, and failures turned into
//! `KernelError::ToolFailed` with the tool's stderr. Shared by the plugin's
//! masquerade chain and the agent's policy backends.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::kernel_error::KernelError;

const TOOL_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// How long a tool may run unless the call says otherwise: a full policy sync
/// at 10,000 policies applies in about a second; a hung tool (a held xtables
/// lock, a stuck kernel) must not hang a CNI ADD or the agent loop.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// The most stdout kept; more fails the call (a listing this long is not weft's).
pub const MAX_STDOUT: usize = 64 << 20;
/// The most stderr kept; the rest is read and dropped.
pub const MAX_STDERR: usize = 64 << 10;

/// Finds a binary in the sbin/bin directories, never through PATH.
pub fn find_tool(name: &str) -> Result<PathBuf, KernelError> {
    TOOL_DIRS
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| KernelError::ToolMissing { name: name.into() })
}

/// Runs a tool to completion, feeding `stdin`; non-zero exit is `ToolFailed` with stderr.
pub fn run(name: &str, args: &[&str], stdin: Option<&str>) -> Result<(), KernelError> {
    output(name, args, stdin).map(drop)
}

/// `run`, returning the tool's stdout.
pub fn output(name: &str, args: &[&str], stdin: Option<&str>) -> Result<String, KernelError> {
    output_within(name, args, stdin, DEADLINE)
}

/// `output` with its own deadline.
pub fn output_within(
    name: &str,
    args: &[&str],
    stdin: Option<&str>,
    deadline: Duration,
) -> Result<String, KernelError> {
    let out = exec(name, args, stdin, deadline)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(failed(name, args, &out.stderr))
    }
}

/// Runs an iptables `-C` command line: Ok(true) present, Ok(false) no such
/// rule (exit 1) or no such chain (exit 2).
pub fn check(name: &str, args: &[&str]) -> Result<bool, KernelError> {
    let out = exec(name, args, None, DEADLINE)?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1 | 2) => Ok(false),
        _ => Err(failed(name, args, &out.stderr)),
    }
}

/// What a tool left behind.
struct Finished {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Runs a tool fed `stdin`, reading stdout and stderr bounded on threads of
/// their own, and kills it if it has not exited and closed them by `deadline`.
fn exec(name: &str, args: &[&str], stdin: Option<&str>, deadline: Duration) -> Result<Finished, KernelError> {
    let cmd_line = || format!("{name} {}", args.join(" "));
    let mut cmd = command(name, args)?;
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

/// Runs a `*-restore` tool on `payload`; a failure quotes the payload lines
/// around the line the tool names.
pub fn restore(name: &str, args: &[&str], payload: &str) -> Result<(), KernelError> {
    run(name, args, Some(payload)).map_err(|e| match e {
        KernelError::ToolFailed { cmd, stderr } => {
            let context = payload_context(payload, &stderr);
            KernelError::ToolFailed { cmd, stderr: format!("{stderr}{context}") }
        }
        e => e,
    })
}

fn command(name: &str, args: &[&str]) -> Result<Command, KernelError> {
    let mut cmd = Command::new(find_tool(name)?);
    cmd.args(args);
    Ok(cmd)
}

fn failed(name: &str, args: &[&str], stderr: &[u8]) -> KernelError {
    KernelError::ToolFailed {
        cmd: format!("{name} {}", args.join(" ")),
        stderr: String::from_utf8_lossy(stderr).trim().to_string(),
    }
}

fn spawn_err(name: &str, source: std::io::Error) -> KernelError {
    KernelError::Io { what: format!("run {name}"), source }
}

/// The payload lines around the "line N" a restore tool complains about.
fn payload_context(payload: &str, stderr: &str) -> String {
    let Some(n) = stderr
        .split("line ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|d| d.parse::<usize>().ok())
    else {
        return String::new();
    };
    let lines: Vec<&str> = payload.lines().collect();
    let (lo, hi) = (n.saturating_sub(3), (n + 2).min(lines.len()));
    let around: Vec<String> = (lo..hi).map(|i| format!("{:>4}: {}", i + 1, lines[i])).collect();
    format!("\naround line {n}:\n{}", around.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_past_its_deadline_is_killed() {
        let t = Instant::now();
        let e = output_within("sleep", &["30"], None, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(&e, KernelError::ToolTimedOut { cmd, .. } if cmd == "sleep 30"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }

    #[test]
    fn a_tool_that_stops_reading_its_input_is_killed() {
        // sleep never reads stdin: 1 MiB fills the pipe, the writer blocks, the deadline holds.
        let input = "x".repeat(1 << 20);
        let e = output_within("sleep", &["30"], Some(&input), Duration::from_millis(200)).unwrap_err();
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

    #[test]
    fn check_reads_the_exit_code() {
        assert!(check("true", &[]).unwrap());
        assert!(!check("false", &[]).unwrap());
        assert!(matches!(check("sh", &["-c", "exit 4"]), Err(KernelError::ToolFailed { .. })));
    }

    #[test]
    fn context_of_failing_line() {
        let payload = "*nat\n:C - [0:0]\n-A C -j BAD\nCOMMIT\n";
        let ctx = payload_context(payload, "iptables-restore: line 3 failed");
        assert!(ctx.contains("   3: -A C -j BAD"), "{ctx}");
        assert_eq!(payload_context(payload, "no line number"), "");
        assert_eq!(
            payload_context("a\n", "line 9 failed"),
            "\naround line 9:\n",
            "past the end: nothing to quote"
        );
    }
}
