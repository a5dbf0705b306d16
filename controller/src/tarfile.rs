//! The tar archives berth makes (`bundle save`, `backup`): writing regular files,
//! streamed from a reader with a known size, and telling a file that is not a tar
//! archive from one before any tar parser sees it.

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

/// Fails, saying what the file is instead, when `path` is not a tar archive (its first
/// header block must carry the `ustar` magic and a valid checksum). `made_by` says where
/// the right file comes from.
pub fn sniff(path: &std::path::Path, made_by: &str) -> Result<()> {
    // A pipe or a FIFO is read once: its bytes are left to the archive's reader.
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot open {}", path.display()))?;
    if !meta.is_file() {
        return Ok(());
    }
    let mut head = Vec::with_capacity(512);
    std::fs::File::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .take(512)
        .read_to_end(&mut head)
        .with_context(|| format!("cannot read {}", path.display()))?;
    match not_tar(&head) {
        None => Ok(()),
        Some(what) => anyhow::bail!("{} is not a tar archive: {what}; {made_by}", path.display()),
    }
}

/// What `head` (a file's first 512 bytes) is, when it is not a tar header.
fn not_tar(head: &[u8]) -> Option<String> {
    let starts = |m: &[u8]| head.starts_with(m);
    if head.is_empty() {
        return Some("the file is empty".into());
    }
    if starts(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Some(
            "it is zstd-compressed data (a single bundle? push it with `berth bundle push FILE`)"
                .into(),
        );
    }
    if starts(&[0x1f, 0x8b]) {
        return Some("it is gzip-compressed data".into());
    }
    if starts(b"SQLite format 3\0") {
        return Some("it is an SQLite database".into());
    }
    if head.len() < 512 {
        return Some(format!(
            "it is {} bytes long, shorter than one tar header",
            head.len()
        ));
    }
    let magic = &head[257..262];
    let sum: u32 = head
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(*b)
            }
        })
        .sum();
    let stored = std::str::from_utf8(&head[148..156])
        .ok()
        .map(|s| s.trim_matches(|c: char| c == '\0' || c == ' '))
        .and_then(|s| u32::from_str_radix(s, 8).ok());
    if magic != b"ustar" || stored != Some(sum) {
        return Some("its first block is not a tar header".into());
    }
    None
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_are_not_tar_archives_say_what_they_are() {
        let tar = raw(&[("a", b"x")]);
        assert_eq!(not_tar(&tar[..512]), None);
        assert_eq!(not_tar(b""), Some("the file is empty".into()));
        assert!(not_tar(&[0x28, 0xb5, 0x2f, 0xfd, 0])
            .unwrap()
            .starts_with("it is zstd-compressed"));
        assert_eq!(
            not_tar(&[0x1f, 0x8b, 8]),
            Some("it is gzip-compressed data".into())
        );
        assert_eq!(
            not_tar(b"SQLite format 3\0rest"),
            Some("it is an SQLite database".into())
        );
        assert_eq!(
            not_tar(b"hello"),
            Some("it is 5 bytes long, shorter than one tar header".into())
        );
        assert_eq!(
            not_tar(&[7u8; 600]),
            Some("its first block is not a tar header".into())
        );
        let mut bad_sum = tar[..512].to_vec();
        bad_sum[0] ^= 1;
        assert_eq!(
            not_tar(&bad_sum),
            Some("its first block is not a tar header".into())
        );
    }
}
