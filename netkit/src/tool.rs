//! Running the netfilter tools (iptables, iptables-restore, ipset): found by
//! absolute path in the sbin/bin directories, never through PATH (a CNI
//! plugin may run with an empty PATH), run to completion, and failures turned
//! into `KernelError::ToolFailed` with the tool's stderr. Shared by the
//! plugin's masquerade chain and the agent's policy backend.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::kernel_error::KernelError;

const TOOL_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

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
    let mut cmd = command(name, args)?;
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| spawn_err(name, e))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A large payload and a tool that fails early: its stderr says why, not our EPIPE.
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| spawn_err(name, e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(failed(name, args, &out.stderr))
    }
}

/// Runs an iptables `-C` command line: Ok(true) present, Ok(false) no such
/// rule (exit 1) or no such chain (exit 2).
pub fn check(name: &str, args: &[&str]) -> Result<bool, KernelError> {
    let out = command(name, args)?.output().map_err(|e| spawn_err(name, e))?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1 | 2) => Ok(false),
        _ => Err(failed(name, args, &out.stderr)),
    }
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
