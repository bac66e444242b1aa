//! Running the netfilter tools (iptables, iptables-restore, ipset, nft): found
//! by absolute path in the sbin/bin directories, never through PATH (a CNI
//! plugin may run with an empty PATH), run within a deadline (`DEADLINE`
//! unless the call gives one) with their output read bounded (`process`),
//! and failures turned into
//! `KernelError::ToolFailed` with the tool's stderr. Shared by the plugin's
//! masquerade chain and the agent's policy backends.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::kernel_error::KernelError;
use crate::process::{exec, Finished};

const TOOL_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// How long a tool may run unless the call says otherwise: a full policy sync
/// at 10,000 policies applies in about a second; a hung tool (a held xtables
/// lock, a stuck kernel) must not hang a CNI ADD or the agent loop.
pub const DEADLINE: Duration = Duration::from_secs(10);

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
    let out = tool_exec(name, args, stdin, deadline)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(failed(name, args, &out.stderr))
    }
}

/// Runs an iptables `-C` command line: Ok(true) present, Ok(false) no such
/// rule (exit 1) or no such chain (exit 2).
pub fn check(name: &str, args: &[&str]) -> Result<bool, KernelError> {
    let out = tool_exec(name, args, None, DEADLINE)?;
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

/// Runs tool `name` (found by `find_tool`) through `process::exec`.
fn tool_exec(
    name: &str,
    args: &[&str],
    stdin: Option<&str>,
    deadline: Duration,
) -> Result<Finished, KernelError> {
    exec(&find_tool(name)?, name, args, stdin, deadline)
}

fn failed(name: &str, args: &[&str], stderr: &[u8]) -> KernelError {
    KernelError::ToolFailed {
        cmd: format!("{name} {}", args.join(" ")),
        stderr: String::from_utf8_lossy(stderr).trim().to_string(),
    }
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
