//! weft's IP address management: the host-local compatible `ipam` config,
//! the allocation math, and a crash-safe on-disk store that the `weft`
//! plugin and the standalone `weft-ipam` plugin share.

pub mod cni;
pub mod config;
pub mod error;
pub mod range;
pub mod store;

pub use config::{IpamConfig, Range, RangeSet, DEFAULT_DATA_DIR};
pub use error::IpamError;
pub use store::{
    allocate, allocate_attachment, free_counts, gc, held, ipam_result, release, Allocation, Store,
};
