//! The nftables backend: `render` maps the PolicyIr to one `inet weft` table
//! (pure), `kernel` applies it as one transaction per change: through `nft -j`,
//! or, for element-only deltas, over nf_tables netlink (`netlink`).

pub mod kernel;
pub mod netlink;
pub mod patch;
pub mod readback;
pub mod render;
pub mod rewrite;

pub use kernel::Nft;
pub use render::{render, Elem, FamilyElem, NftFamily, NftRendered, TABLE};
