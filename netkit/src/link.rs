//! Links: read one link's state, delete, set up/MTU, read hairpin. One small
//! function per `ip link` command; "not found" is `Ok(None)`/`Ok(false)`, never an error.

use futures::TryStreamExt;
use netlink_packet_route::link::{
    InfoBridgePort, InfoKind, InfoPortData, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use nix::libc;
use rtnetlink::{Handle, LinkUnspec};

use crate::kernel_error::{netlink, nl_errno, KernelError};

/// Longest interface name the kernel accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// What weft needs to know about one link, from one RTM_GETLINK answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    /// Index of the bridge (or other controller) this link is enslaved to.
    pub controller: Option<u32>,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// `IFLA_INFO_KIND`, e.g. "bridge", "veth"; None for physical links and lo.
    pub kind: Option<String>,
    /// `IFLA_IFALIAS`; weft stores its config stamp on the bridge here.
    pub alias: Option<String>,
    /// Bridge-port hairpin mode (`IFLA_BRPORT_MODE`); None if not a bridge port.
    pub hairpin: Option<bool>,
    /// `IFLA_LINK`: for a veth, the peer's ifindex (in the peer's netns).
    pub link: Option<u32>,
}

impl LinkState {
    /// Extracts the fields weft uses from a link message.
    pub fn from_message(msg: &LinkMessage) -> LinkState {
        let mut st = LinkState {
            index: msg.header.index,
            name: String::new(),
            mtu: 0,
            mac: None,
            controller: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            kind: None,
            alias: None,
            hairpin: None,
            link: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => st.name = n.clone(),
                LinkAttribute::Mtu(m) => st.mtu = *m,
                LinkAttribute::Address(a) => st.mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
                LinkAttribute::Controller(c) if *c != 0 => st.controller = Some(*c),
                LinkAttribute::IfAlias(a) => st.alias = Some(a.clone()),
                LinkAttribute::Link(l) if *l != 0 => st.link = Some(*l),
                LinkAttribute::LinkInfo(infos) => read_link_info(infos, &mut st),
                _ => {}
            }
        }
        st
    }
}

fn read_link_info(infos: &[LinkInfo], st: &mut LinkState) {
    for info in infos {
        match info {
            LinkInfo::Kind(k) => st.kind = Some(kind_name(k)),
            LinkInfo::PortData(InfoPortData::BridgePort(port)) => {
                st.hairpin = Some(port.iter().any(|p| matches!(p, InfoBridgePort::HairpinMode(true))));
            }
            _ => {}
        }
    }
}

/// The kernel's name of a link kind ("bridge", "veth", "dummy", ...).
pub(crate) fn kind_name(k: &InfoKind) -> String {
    match k {
        InfoKind::Other(s) => s.clone(),
        k => k.to_string(),
    }
}

/// Formats a MAC as lowercase colon-separated hex ("0a:58:0a:f4:00:05").
pub fn mac_string(mac: [u8; 6]) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

/// Rejects names the kernel would refuse (empty, > 15 bytes, '/', whitespace).
pub fn check_ifname(name: &str) -> Result<(), KernelError> {
    if name.len() > MAX_IFNAME_LEN {
        return Err(KernelError::NameTooLong { name: name.into() });
    }
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains(['/', ':'])
        || name.contains(char::is_whitespace)
    {
        return Err(KernelError::Io {
            what: format!("invalid interface name {name:?}"),
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        });
    }
    Ok(())
}

/// Reads a link by name (`ip link show NAME`); `Ok(None)` if there is none.
pub async fn get_link(h: &Handle, name: &str) -> Result<Option<LinkState>, KernelError> {
    check_ifname(name)?;
    let req = h.link().get().match_name(name).execute();
    first_link(req, format!("RTM_GETLINK {name}")).await
}

/// Reads a link by index; `Ok(None)` if there is none.
pub async fn get_link_by_index(h: &Handle, index: u32) -> Result<Option<LinkState>, KernelError> {
    let req = h.link().get().match_index(index).execute();
    first_link(req, format!("RTM_GETLINK index {index}")).await
}

/// Every link of the netns (`ip link show`).
pub async fn list_links(h: &Handle) -> Result<Vec<LinkState>, KernelError> {
    let mut stream = h.link().get().execute();
    let mut links = Vec::new();
    while let Some(msg) = stream.try_next().await.map_err(netlink("RTM_GETLINK dump"))? {
        links.push(LinkState::from_message(&msg));
    }
    Ok(links)
}

async fn first_link(
    mut stream: impl futures::Stream<Item = Result<LinkMessage, rtnetlink::Error>> + Unpin,
    op: String,
) -> Result<Option<LinkState>, KernelError> {
    match stream.try_next().await {
        Ok(Some(msg)) => Ok(Some(LinkState::from_message(&msg))),
        Ok(None) => Ok(None),
        Err(e) if nl_errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(netlink(op)(e)),
    }
}

/// Deletes a link by name in one RTM_DELLINK (`ip link del NAME`); `Ok(false)` if
/// it was already gone. Deleting either end of a veth deletes both.
pub async fn delete_link(h: &Handle, name: &str) -> Result<bool, KernelError> {
    check_ifname(name)?;
    let msg = LinkUnspec::new_with_name(name).build();
    match h.link().del_with_message(msg).execute().await {
        Ok(()) => Ok(true),
        Err(e) if nl_errno(&e) == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(netlink(format!("RTM_DELLINK {name}"))(e)),
    }
}

/// Sets a link administratively up (`ip link set DEV up`); idempotent.
pub async fn set_up(h: &Handle, index: u32) -> Result<(), KernelError> {
    let msg = LinkUnspec::new_with_index(index).up().build();
    change(h, msg, format!("set up index {index}")).await
}

/// Sets a link's MTU (`ip link set DEV mtu MTU`); idempotent.
pub async fn set_mtu(h: &Handle, index: u32, mtu: u32) -> Result<(), KernelError> {
    let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
    change(h, msg, format!("set mtu {mtu} index {index}")).await
}

/// Reads a link's bridge-port hairpin mode back from the kernel; false if the link
/// is not a bridge port.
pub async fn hairpin(h: &Handle, index: u32) -> Result<bool, KernelError> {
    match get_link_by_index(h, index).await? {
        Some(st) => Ok(st.hairpin.unwrap_or(false)),
        None => Err(KernelError::LinkNotFound { name: format!("index {index}") }),
    }
}

/// Sends an RTM_NEWLINK change (no create) for an existing link (`ip link set`).
pub(crate) async fn change(h: &Handle, msg: LinkMessage, op: String) -> Result<(), KernelError> {
    let index = msg.header.index;
    h.link().change(msg).execute().await.map_err(|e| match nl_errno(&e) {
        Some(libc::ENODEV) => KernelError::LinkNotFound { name: format!("index {index}") },
        _ => netlink(format!("RTM_NEWLINK {op}"))(e),
    })
}

/// A random locally administered unicast MAC (x2:xx:..), from /dev/urandom.
pub(crate) fn random_mac() -> Result<[u8; 6], KernelError> {
    use std::io::Read;
    let mut mac = [0u8; 6];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut mac))
        .map_err(|source| KernelError::Io { what: "read /dev/urandom".into(), source })?;
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Ok(mac)
}
