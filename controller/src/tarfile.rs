//! Writing the tar archives berth makes (`bundle save`, `backup`): regular files only,
//! streamed from a reader with a known size.

use anyhow::{Context, Result};
use std::io::{Read, Write};

/// Appends `data` (exactly `size` bytes) as the regular file `path` with `mode`.
pub fn append<W: Write>(
    b: &mut tar::Builder<W>,
    path: &str,
    size: u64,
    mode: u32,
    data: impl Read,
) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(mode);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, path, data)
        .with_context(|| format!("cannot write {path} into the archive"))
}

/// A tar with these entries, names written raw: the builder itself refuses `..`, which
/// the parsers' tests need to feed them.
#[cfg(test)]
pub fn raw(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (p, data) in entries {
        let mut h = tar::Header::new_ustar();
        if let Some(u) = h.as_ustar_mut() {
            u.name[..p.len()].copy_from_slice(p.as_bytes());
        }
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, *data).expect("append to a Vec");
    }
    b.into_inner().expect("a Vec")
}
