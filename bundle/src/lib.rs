//! Bundles on disk: reproducible `tar.zst` packing, streaming and safe unpacking, Clusterfile
//! `Config` strategies and sealos-compatible templates.
//!
//! Synchronous by design: callers run these on a blocking thread.

pub mod config;
pub mod hashio;
pub mod image;
pub mod kubefile;
pub mod layer;
pub mod pack;
pub mod sealos;
pub mod template;
pub mod unpack;

pub use pack::{pack, PackError, Packed};
pub use unpack::{scan, unpack, Limits, UnpackError, Unpacked};
