//! berth's wire contract and the pure logic both controller and agent need.
//!
//! Architecture invariant: this crate does no IO — no files, no sockets, no clocks.
//! Everything here is a type that crosses a process boundary, or a pure function over one.

pub mod api;
pub mod bundle;
pub mod bundle_ref;
pub mod cert;
pub mod clusterfile;
pub mod digest;
pub mod names;
pub mod outputs;
pub mod plan;
pub mod relpath;
pub mod routes;
pub mod state;
pub mod text;
pub mod token;
pub mod yaml;

pub use bundle_ref::BundleRef;
pub use digest::Digest;
pub use names::HostName;
pub use relpath::SafeRelPath;
pub use token::BootstrapToken;

/// The version of berth both binaries were built from; agents report it as a fact.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// All causes of an error on one line: `what failed: why: root cause`, skipping causes
/// whose text is already included.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}
