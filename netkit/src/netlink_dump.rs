//! Netlink dumps (`RTM_GET*` with `NLM_F_DUMP`), retried when the kernel flags
//! one interrupted (`NLM_F_DUMP_INTR`: the table changed mid-dump, so the
//! answer may be inconsistent); see containernetworking/plugins
//! pkg/netlinksafe. The one dump loop of weft: addresses, routes and the
//! agent's route table all list through it.

use futures::StreamExt;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST};
use rtnetlink::Handle;

/// How often an interrupted dump is retried before giving up.
pub const DUMP_ATTEMPTS: usize = 5;

/// Why a dump gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("{0}")]
    Netlink(#[source] rtnetlink::Error),
    #[error("dump interrupted {DUMP_ATTEMPTS} times")]
    Interrupted,
}

/// Runs the dump request `req` and returns every message of a consistent
/// answer; read-only, so retrying is safe.
pub async fn dump(h: &Handle, req: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>, DumpError> {
    for _ in 0..DUMP_ATTEMPTS {
        let mut nl = NetlinkMessage::from(req.clone());
        nl.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut responses = h.clone().request(nl).map_err(DumpError::Netlink)?;
        let (mut out, mut interrupted) = (Vec::new(), false);
        while let Some(msg) = responses.next().await {
            interrupted |= msg.header.flags & NLM_F_DUMP_INTR != 0;
            match msg.payload {
                NetlinkPayload::InnerMessage(m) => out.push(m),
                NetlinkPayload::Error(e) => {
                    return Err(DumpError::Netlink(rtnetlink::Error::NetlinkError(e)))
                }
                _ => {}
            }
        }
        if !interrupted {
            return Ok(out);
        }
    }
    Err(DumpError::Interrupted)
}

/// `dump`, with its error as a `KernelError` naming `op`.
pub(crate) async fn dump_op(
    h: &Handle,
    req: RouteNetlinkMessage,
    op: &str,
) -> Result<Vec<RouteNetlinkMessage>, crate::kernel_error::KernelError> {
    dump(h, req).await.map_err(|e| match e {
        DumpError::Netlink(e) => crate::kernel_error::netlink(op)(e),
        DumpError::Interrupted => crate::kernel_error::KernelError::Io {
            what: format!("{op}: dump interrupted {DUMP_ATTEMPTS} times"),
            source: std::io::Error::from_raw_os_error(nix::libc::EINTR),
        },
    })
}
