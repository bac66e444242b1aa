//! The nftables backend: `render` maps the PolicyIr to one `inet weft` table
//! (pure), `kernel` applies it through `nft -j` as one transaction per change.

pub mod kernel;
pub mod patch;
pub mod render;

pub use kernel::Nft;
pub use render::{render, Elem, NftRendered, TABLE};
