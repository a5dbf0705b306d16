//! Hosts that install themselves: the agent executables the controller serves, the
//! install script, and the one line an operator pastes on a host with nothing but `sh`
//! and `curl`/`wget`.
//!
//! Trust flows from the line: it carries the controller's CA certificate itself, so the
//! first request (for the script) is already verified against it and a different
//! controller answering at the same address is refused before anything is downloaded.
//! The script checks the agent binary's sha256 against the digest the controller
//! publishes, and the agent's `join` pins the CA hash once more.

use crate::blobs::BlobStore;
use crate::store::agent_binaries::AgentBinaryRow;
use crate::store::Store;
use anyhow::{Context, Result};
use berth_shared::{Digest, HostName};
use std::path::{Path, PathBuf};

/// The install script served at `/v1/install/agent.sh`.
pub const SCRIPT: &str = include_str!("agent-install.sh");

/// The largest agent executable accepted by `berth agent-binary add`.
pub const MAX_AGENT_BINARY: u64 = 512 << 20;

/// Architectures agents are served for, in `uname -m` spelling, with their ELF machine.
const ARCHES: &[(&str, u16)] = &[
    ("x86_64", 62),
    ("aarch64", 183),
    ("riscv64", 243),
    ("ppc64le", 21),
    ("s390x", 22),
    ("loongarch64", 258),
];

/// The architecture this controller was built for, in the same spelling.
pub fn this_arch() -> &'static str {
    std::env::consts::ARCH
}

/// Checks an OS/architecture pair a request or the CLI names.
pub fn check_platform(os: &str, arch: &str) -> Result<(), String> {
    if os != "linux" {
        return Err(format!(
            "os `{os}` is not supported; berth-agent runs on linux"
        ));
    }
    if !ARCHES.iter().any(|(a, _)| *a == arch) {
        let known: Vec<&str> = ARCHES.iter().map(|(a, _)| *a).collect();
        return Err(format!(
            "arch `{arch}` is not one of {} (the `uname -m` names)",
            known.join(", ")
        ));
    }
    Ok(())
}

/// Checks that `head` (the first bytes of a file) is a 64-bit ELF executable for `arch`.
pub fn check_elf(head: &[u8], arch: &str) -> Result<(), String> {
    if head.len() < 20 || &head[..4] != b"\x7fELF" {
        return Err("not an ELF executable".into());
    }
    if head[4] != 2 {
        return Err("not a 64-bit ELF executable".into());
    }
    let machine = match head[5] {
        1 => u16::from_le_bytes([head[18], head[19]]),
        2 => u16::from_be_bytes([head[18], head[19]]),
        _ => return Err("ELF header has an unknown byte order".into()),
    };
    let want = ARCHES
        .iter()
        .find(|(a, _)| *a == arch)
        .map(|(_, m)| *m)
        .ok_or_else(|| format!("unknown arch `{arch}`"))?;
    if machine != want {
        let is = ARCHES
            .iter()
            .find(|(_, m)| *m == machine)
            .map(|(a, _)| a.to_string())
            .unwrap_or_else(|| format!("ELF machine {machine}"));
        return Err(format!("the executable is for {is}, not {arch}"));
    }
    Ok(())
}

/// Checks that the file at `path` is a program a host of `arch` can run: a 64-bit ELF for
/// that machine (`check_elf`) of type `ET_EXEC`, or `ET_DYN` with an interpreter or the
/// PIE flag (a static-pie like berth-agent), with a loadable segment and an entry point.
/// A core dump, an object file or a shared library is refused, saying which it is.
pub fn check_executable(path: &Path, arch: &str) -> Result<(), String> {
    use object::elf;
    use object::read::elf::{Dyn as _, FileHeader as _, ProgramHeader as _};
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| format!("cannot read it: {e}"))?;
    let mut head = Vec::with_capacity(64);
    (&mut f)
        .take(64)
        .read_to_end(&mut head)
        .map_err(|e| format!("cannot read it: {e}"))?;
    check_elf(&head, arch)?;
    let cache = object::ReadCache::new(f);
    let data = &cache;
    let damaged = |e: object::Error| format!("a damaged ELF executable ({e})");
    let hdr = elf::FileHeader64::<object::Endianness>::parse(data).map_err(damaged)?;
    let endian = hdr.endian().map_err(damaged)?;
    let kind = hdr.e_type(endian);
    match kind {
        elf::ET_EXEC | elf::ET_DYN => {}
        elf::ET_CORE => return Err("a core dump, not an executable".into()),
        elf::ET_REL => return Err("an object file (.o), not an executable".into()),
        other => return Err(format!("an ELF file of type {other}, not an executable")),
    }
    let phdrs = hdr.program_headers(endian, data).map_err(damaged)?;
    if kind == elf::ET_DYN {
        let interp = phdrs.iter().any(|p| p.p_type(endian) == elf::PT_INTERP);
        let mut pie = false;
        for p in phdrs {
            if let Some(dynamic) = p.dynamic(endian, data).map_err(damaged)? {
                pie |= dynamic.iter().any(|d| {
                    d.d_tag(endian) == u64::from(elf::DT_FLAGS_1)
                        && d.d_val(endian) & u64::from(elf::DF_1_PIE) != 0
                });
            }
        }
        if !interp && !pie {
            return Err("a shared library, not an executable".into());
        }
    }
    if !phdrs.iter().any(|p| p.p_type(endian) == elf::PT_LOAD) || hdr.e_entry(endian) == 0 {
        return Err("an ELF file with nothing to run (no loadable segment or entry point)".into());
    }
    Ok(())
}

/// Where the agent executables live: `<data-dir>/agent-binaries/sha256/…`.
pub type AgentBinaries = BlobStore;

pub fn open_store(data_dir: &Path) -> Result<AgentBinaries> {
    BlobStore::open_at(data_dir.join("agent-binaries"))
}

/// The agent built next to this controller: `--agent-binary`, else `berth-agent` beside
/// the `berth` executable, else `../lib/berth/berth-agent` (the Debian package's place).
pub fn bundled_agent(flag: Option<&Path>) -> Result<Option<PathBuf>> {
    if let Some(p) = flag {
        if !p.is_file() {
            anyhow::bail!("--agent-binary {} is not a file", p.display());
        }
        return Ok(Some(p.to_path_buf()));
    }
    let exe = std::env::current_exe().context("cannot find the berth executable")?;
    let Some(dir) = exe.parent() else {
        return Ok(None);
    };
    Ok([
        dir.join("berth-agent"),
        dir.join("../lib/berth/berth-agent"),
    ]
    .into_iter()
    .find(|p| p.is_file()))
}

/// Imports the agent at `path` for this machine's architecture, unless an operator added
/// one for it. A stamp of size and mtime skips re-hashing an unchanged file on restart.
/// Each controller imports its own (several controllers of one database run the same
/// version: their bundled agents are the same file); it is not put in the bucket.
pub async fn import_bundled(
    store: &Store,
    mirrored: &crate::mirror::Mirrored,
    path: &Path,
) -> Result<()> {
    let bins = &mirrored.local;
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let stamp_file = bins.root().join("bundled.stamp");
    let stamp = format!("{}\n{}\n{}\n", path.display(), meta.len(), mtime);
    let arch = this_arch();
    if let (Ok(old), Some(row)) = (
        std::fs::read_to_string(&stamp_file),
        store.agent_binary("linux", arch).await?,
    ) {
        if let Some(digest) = old.strip_prefix(&stamp) {
            if row.digest == digest.trim() && bins.exists(&row.digest.parse()?) {
                return Ok(());
            }
        }
    }
    let src = path.to_path_buf();
    let root = bins.clone();
    let (digest, size) = tokio::task::spawn_blocking(move || root.import_file(&src)).await??;
    if let Err(e) = check_executable(&bins.path(&digest), arch) {
        anyhow::bail!("{} cannot be served to {arch} hosts: {e}", path.display());
    }
    let changed = store
        .set_agent_binary(
            &AgentBinaryRow {
                os: "linux".into(),
                arch: arch.into(),
                digest: digest.to_string(),
                size: size as i64,
                source: "bundled".into(),
                added_at: 0,
            },
            "controller",
        )
        .await?;
    berth_files::write_durable(&stamp_file, format!("{stamp}{digest}\n").as_bytes(), 0o644)?;
    if changed {
        tracing::info!(path = %path.display(), %digest, arch, "serving this berth-agent to installing hosts");
    }
    Ok(())
}

/// The sha256 of [`SCRIPT`], which the install line pins.
pub fn script_digest() -> Digest {
    Digest::of(SCRIPT.as_bytes())
}

/// The line `berth token create --install` prints. Everything in it is either fixed text,
/// the controller's URL, the token, the CA hash, the script's digest, or the CA
/// certificate's base64 lines — none of which can hold a quote.
///
/// What it guarantees, in order:
/// - the token reaches the host through a pipe from the pasting shell's `echo` builtin
///   into a 0600 file, so it never appears in a command line or an environment;
/// - the script is downloaded over TLS that trusts the controller's CA and nothing else:
///   curl gets `--cacert` and an empty `--capath` (its built-in CA path is otherwise still
///   read) and `-q` (no `.curlrc`), GNU wget on GnuTLS `--ca-certificate`, an empty
///   `--ca-directory` and `--no-config`; any other wget is refused, saying why;
/// - the script runs only when its sha256 is the one the line carries, so a script from
///   any other server is refused before it runs.
pub fn one_liner(
    url: &str,
    token: &str,
    ca_hash: &Digest,
    ca_pem: &str,
    reenroll: Option<&HostName>,
) -> String {
    let pem = ca_pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| format!("\"{l}\""))
        .collect::<Vec<_>>()
        .join(" ");
    let reenroll = match reenroll {
        Some(h) => format!(" BERTH_REENROLL=1 BERTH_NAME={h}"),
        None => String::new(),
    };
    let script = script_digest().hex();
    format!(
        "echo {token} | sh -c 'set -eu; umask 077; d=$(mktemp -d); trap \"rm -rf $d\" EXIT; trap \"exit 130\" INT TERM HUP; \
if [ -t 0 ]; then echo \"berth: paste the whole line, from echo on\" >&2; exit 1; fi; cat >\"$d/token\"; mkdir \"$d/no-system-cas\"; \
printf \"%s\\n\" {pem} >\"$d/ca.pem\"; u=\"{url}/v1/install/agent.sh\"; \
if command -v curl >/dev/null 2>&1; then curl -q -fsS --proto =https --cacert \"$d/ca.pem\" --capath \"$d/no-system-cas\" -o \"$d/install.sh\" \"$u\" || \
{{ echo \"berth: cannot download $u trusting only the controller CA this line carries (see above); nothing was run\" >&2; exit 1; }}; \
elif case $(wget --version 2>/dev/null) in *+ssl/gnutls*) true;; *) false;; esac; then \
wget --no-config -q --ca-certificate=\"$d/ca.pem\" --ca-directory=\"$d/no-system-cas\" -O \"$d/install.sh\" \"$u\" || \
{{ echo \"berth: cannot download $u trusting only the controller CA this line carries (wget exit $?); nothing was run\" >&2; exit 1; }}; \
else echo \"berth: this host needs curl, or GNU wget built with GnuTLS (other wget builds also trust the system CA store); nothing was run\" >&2; exit 1; fi; \
h=$({{ sha256sum || busybox sha256sum || shasum -a 256; }} <\"$d/install.sh\" 2>/dev/null || :); \
case $h in \"{script} \"*) ;; *) echo \"berth: the script from $u is not the one this line pins (sha256 {script}), or no sha256sum is installed; nothing was run. Print a new line with: berth token create --install\" >&2; exit 1;; esac; \
BERTH_URL=\"{url}\" BERTH_TOKEN_FILE=\"$d/token\" BERTH_CA_HASH={ca_hash} BERTH_CA_FILE=\"$d/ca.pem\"{reenroll} sh \"$d/install.sh\" </dev/null'"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf(class: u8, order: u8, machine: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = class;
        h[5] = order;
        let m = if order == 2 {
            machine.to_be_bytes()
        } else {
            machine.to_le_bytes()
        };
        h[18..20].copy_from_slice(&m);
        h
    }

    #[test]
    fn elf_headers_are_checked_against_the_arch() {
        assert_eq!(check_elf(&elf(2, 1, 62), "x86_64"), Ok(()));
        assert_eq!(check_elf(&elf(2, 1, 183), "aarch64"), Ok(()));
        assert_eq!(check_elf(&elf(2, 2, 22), "s390x"), Ok(()));
        assert_eq!(
            check_elf(&elf(2, 1, 183), "x86_64"),
            Err("the executable is for aarch64, not x86_64".into())
        );
        assert_eq!(
            check_elf(&elf(1, 1, 62), "x86_64"),
            Err("not a 64-bit ELF executable".into())
        );
        assert_eq!(
            check_elf(b"#!/bin/sh\necho pwned\n", "x86_64"),
            Err("not an ELF executable".into())
        );
        assert_eq!(
            check_elf(b"\x7fELF", "x86_64"),
            Err("not an ELF executable".into())
        );
    }

    #[test]
    fn platforms_outside_the_list_are_refused() {
        assert!(check_platform("linux", "x86_64").is_ok());
        assert!(check_platform("windows", "x86_64").is_err());
        assert!(check_platform("linux", "../../etc").is_err());
    }

    #[test]
    fn the_line_carries_the_ca_and_quotes_nothing_it_should_not() {
        let line = one_liner(
            "https://10.0.0.1:7443",
            "abcdef.0123456789abcdef",
            &Digest::of(b"ca"),
            "-----BEGIN CERTIFICATE-----\nMIIBAB+/=\n-----END CERTIFICATE-----\n",
            None,
        );
        assert!(line.starts_with("echo abcdef.0123456789abcdef | sh -c '"));
        assert!(line.ends_with('\''));
        assert_eq!(line.matches('\'').count(), 2, "{line}");
        assert!(line.contains("\"-----BEGIN CERTIFICATE-----\" \"MIIBAB+/=\""));
        assert!(line.contains("--cacert"));
        assert!(line.contains("--capath"));
        assert!(line.contains("--ca-directory"));
        assert!(line.contains(&format!("\"{} \"*)", script_digest().hex())));
        assert_eq!(line.matches("abcdef.0123456789abcdef").count(), 1);
        assert!(!line.contains("BERTH_REENROLL"));
    }
}
