//! The controller's validated configuration, built from `berth serve` flags and env.

use anyhow::{bail, Context, Result};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default HTTPS port of the controller.
pub const DEFAULT_PORT: u16 = 7443;

/// Everything `berth serve` needs, validated.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where the CA, keys, admin token, SQLite database and (later) blobs live.
    pub data_dir: PathBuf,
    /// The database: `<data-dir>/berth.db` or PostgreSQL (`--database-url`).
    pub database: crate::store::Location,
    /// The bucket bundle blobs live in (`--blob-store`); None = `<data-dir>/blobs`.
    pub blob_store: Option<crate::s3::S3Location>,
    /// The 0600 file with the bucket's access keys, if not from the environment.
    pub blob_store_credentials: Option<PathBuf>,
    /// Address the HTTPS listener binds.
    pub listen: SocketAddr,
    /// Where `/metrics` is also served without authentication (plain HTTP), if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// The URL agents and remote clients use; `None` derives it once the port is bound.
    pub advertise_url: Option<String>,
    /// Extra subject alternative names for the server certificate.
    pub extra_sans: Vec<String>,
    /// A host is `NotReady` when its last heartbeat is older than this.
    pub host_grace: Duration,
    /// The longest a long-poll is held before it is answered empty.
    pub poll_hold: Duration,
    /// Concurrent long-polls accepted before answering `503` + `Retry-After`.
    pub max_polls: usize,
    /// How long in-flight requests get to finish after SIGINT/SIGTERM.
    pub shutdown_grace: Duration,
    /// Largest accepted bundle upload, bytes.
    pub max_bundle_size: u64,
    /// Registry reads need a client certificate or a token.
    pub registry_auth: bool,
    /// Step deadlines, lost hosts, the log cap.
    pub engine: crate::engine::EngineConfig,
    /// Limits a pushed bundle must respect.
    pub unpack_limits: berth_bundle::Limits,
    /// Lifetimes of the agent and server certificates this controller issues.
    pub lifetimes: crate::pki::Lifetimes,
    /// The `berth-agent` executable served to installing hosts of this machine's
    /// architecture; `None` looks next to the `berth` executable.
    /// This controller's name among those sharing the database (default: hostname).
    pub controller_name: Option<String>,
    pub agent_binary: Option<PathBuf>,
}

/// The default data dir: `$BERTH_DATA_DIR`, else `/var/lib/berth` for root, else
/// `$XDG_DATA_HOME/berth` or `~/.local/share/berth`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BERTH_DATA_DIR") {
        return PathBuf::from(d);
    }
    if is_root() {
        return PathBuf::from("/var/lib/berth");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME") {
        return Path::new(&x).join("berth");
    }
    match std::env::var_os("HOME") {
        Some(h) => Path::new(&h).join(".local/share/berth"),
        None => PathBuf::from("/var/lib/berth"),
    }
}

fn is_root() -> bool {
    // The owner of /proc/self is the effective uid, without libc.
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Checks an `--advertise-url` and returns it without a trailing slash.
pub fn validate_advertise_url(url: &str) -> Result<String> {
    let parsed = reqwest::Url::parse(url)
        .with_context(|| format!("--advertise-url `{url}` is not a URL"))?;
    if parsed.scheme() != "https" {
        bail!(
            "--advertise-url `{url}` must start with https:// (the controller serves HTTPS only)"
        );
    }
    let Some(host) = parsed.host_str() else {
        bail!("--advertise-url `{url}` has no host");
    };
    // It is pasted into shell lines (`token create --install`): nothing but a host and port.
    if parsed.path() != "/"
        || parsed.query().is_some()
        || parsed.fragment().is_some()
        || !parsed.username().is_empty()
        || parsed.password().is_some()
    {
        bail!("--advertise-url `{url}` must be https://HOST[:PORT] with nothing after it");
    }
    if !safe_host(host) {
        bail!("--advertise-url `{url}`: the host may hold only letters, digits, `.`, `-`, `:`, `[` and `]`");
    }
    Ok(format!(
        "https://{host}{}",
        parsed.port().map(|p| format!(":{p}")).unwrap_or_default()
    ))
}

/// A host name or IP literal made only of characters that need no quoting in a shell.
pub fn safe_host(host: &str) -> bool {
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
}

/// The URL to advertise when none was given: the listen address when it is specific,
/// else the first non-loopback IPv4 address of this machine, else its hostname.
pub fn derive_advertise_url(bound: SocketAddr) -> String {
    let host = if !bound.ip().is_unspecified() {
        bound.ip().to_string()
    } else {
        local_addresses()
            .into_iter()
            .find(|a| a.is_ipv4())
            .map(|a| a.to_string())
            .or_else(|| Some(hostname()).filter(|h| safe_host(h)))
            .unwrap_or_else(|| "127.0.0.1".to_string())
    };
    let host = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => host,
    };
    format!("https://{host}:{}", bound.port())
}

/// The URL the CLI on this machine uses: loopback when the listener is unspecified.
pub fn local_url(bound: SocketAddr) -> String {
    let ip = if bound.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else if bound.is_ipv6() {
        format!("[{}]", bound.ip())
    } else {
        bound.ip().to_string()
    };
    format!("https://{ip}:{}", bound.port())
}

/// This machine's hostname.
pub fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// This machine's non-loopback IP addresses.
pub fn local_addresses() -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter(|i| !i.is_loopback())
        .map(|i| i.ip())
        .filter(|ip| match ip {
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80, // skip link-local
            IpAddr::V4(_) => true,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// `--max-bundle-size` when not given (the flag's default, `20G`).
pub const DEFAULT_MAX_BUNDLE_SIZE: u64 = 20 << 30;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_advertise_url_is_scheme_host_and_port_only() {
        assert_eq!(
            validate_advertise_url("https://10.0.0.1:7443/").unwrap(),
            "https://10.0.0.1:7443"
        );
        assert_eq!(
            validate_advertise_url("https://ctl.example:7443").unwrap(),
            "https://ctl.example:7443"
        );
        assert_eq!(
            validate_advertise_url("https://[fd00::1]:7443").unwrap(),
            "https://[fd00::1]:7443"
        );
        for bad in [
            "https://h:7443/x'$(id)'",
            "https://h:7443/?q=1",
            "https://user@h:7443",
            "https://h:7443#frag",
        ] {
            let e = validate_advertise_url(bad).unwrap_err().to_string();
            assert!(
                e.ends_with("must be https://HOST[:PORT] with nothing after it"),
                "{bad}: {e}"
            );
        }
        assert!(validate_advertise_url("http://h:7443")
            .unwrap_err()
            .to_string()
            .contains("must start with https://"));
    }
}
