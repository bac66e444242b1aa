//! The node bridge: `ensure_bridge` creates or adopts it, `set_alias` stores weft's
//! config stamp on it (IFLA_IFALIAS, read back in `LinkState::alias`).
//!
//! The bridge is created with an explicit MAC so the kernel never changes it as
//! ports come and go (addr_assign_type NET_ADDR_SET; see containernetworking/plugins
//! plugins/main/bridge/bridge.go, which does the same).

use ipnetwork::IpNetwork;
use nix::libc;
use rtnetlink::{Handle, LinkBridge, LinkUnspec};

use crate::addr::add_address;
use crate::kernel_error::{netlink, nl_errno, KernelError};
use crate::link::{change, check_ifname, get_link, random_mac, LinkState};

/// Longest alias the kernel keeps (IFALIASZ - 1).
pub const MAX_ALIAS_LEN: usize = 255;

/// Idempotently ensures bridge `name` exists, has `mtu`, is up and carries
/// `gateway` (other addresses are left alone). Errors `NotABridge` if a link of
/// another kind has the name. Round trips: 2 when all is in place.
pub async fn ensure_bridge(
    h: &Handle,
    name: &str,
    mtu: u32,
    gateway: Option<IpNetwork>,
) -> Result<LinkState, KernelError> {
    check_ifname(name)?;
    let mut st = match get_link(h, name).await? {
        Some(st) => st,
        None => create_bridge(h, name, mtu).await?,
    };
    if st.kind.as_deref() != Some("bridge") {
        let kind = st.kind.unwrap_or_else(|| "device without a kind".into());
        return Err(KernelError::NotABridge { name: name.into(), kind });
    }
    if st.mtu != mtu || !st.up {
        let msg = LinkUnspec::new_with_index(st.index).mtu(mtu).up().build();
        change(h, msg, format!("bridge {name} mtu {mtu} up")).await?;
        st.mtu = mtu;
        st.up = true;
    }
    if let Some(gw) = gateway {
        add_address(h, st.index, gw).await?;
    }
    Ok(st)
}

/// Creates the bridge up, with its MTU and a fixed random MAC, in one RTM_NEWLINK;
/// if a concurrent ADD created it first, adopts that one.
async fn create_bridge(h: &Handle, name: &str, mtu: u32) -> Result<LinkState, KernelError> {
    let msg = LinkBridge::new(name).mtu(mtu).address(random_mac()?.to_vec()).up().build();
    match h.link().add(msg).execute().await {
        Ok(()) => {}
        Err(e) if nl_errno(&e) == Some(libc::EEXIST) => {}
        Err(e) => return Err(netlink(format!("RTM_NEWLINK bridge {name}"))(e)),
    }
    get_link(h, name).await?.ok_or_else(|| KernelError::LinkNotFound { name: name.into() })
}

/// Sets a link's alias (`ip link set DEV alias TEXT`); idempotent. An empty
/// string clears it.
pub async fn set_alias(h: &Handle, index: u32, alias: &str) -> Result<(), KernelError> {
    if alias.len() > MAX_ALIAS_LEN {
        return Err(KernelError::NameTooLong { name: alias.into() });
    }
    let msg = LinkUnspec::new_with_index(index).alias(alias).build();
    change(h, msg, format!("alias index {index}")).await
}
