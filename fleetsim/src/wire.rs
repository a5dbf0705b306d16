//! The first plans as the network saw them. A `tcpdump` on the loopback interface
//! timestamps, in the kernel, each packet of at least [`MIN_PLAN_BYTES`] of TCP payload that
//! the controller sends during the apply. The first such packet on a connection after the
//! apply started is that host's plan: a held poll's empty answer (about 140 bytes), window
//! updates and pings are far smaller, and the bundle and report answers come only after the
//! plan. These times do not wait for the simulator's CPU, which the agents' own timestamps
//! do when the simulator shares the controller's cores. The driver's own connections
//! (apply, status, metrics) come from 127.0.0.1 and are left out; agents use .2 and up.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A plan answer is about 1.1 KB of TLS records; a TLS handshake's server flight (a
/// reconnect) is as large, so the run also counts new connections.
pub const MIN_PLAN_BYTES: u64 = 600;

/// A running capture.
pub struct Capture {
    child: tokio::process::Child,
    out: PathBuf,
    stderr: tokio::task::JoinHandle<Vec<String>>,
}

/// What the capture saw.
#[derive(Debug, Default, PartialEq)]
pub struct Seen {
    /// Per connection (the agent's address and port), microseconds from the apply's start
    /// to its first large packet.
    pub first_us: Vec<u64>,
    /// Packets the kernel dropped because tcpdump fell behind (then the figure is a floor).
    pub dropped: u64,
}

impl Capture {
    /// Starts `tcpdump` on `lo` for packets from `port`, writing its lines to `out`, and
    /// returns once it listens.
    pub async fn start(port: u16, out: &Path) -> Result<Capture> {
        let file = std::fs::File::create(out)
            .with_context(|| format!("cannot create {}", out.display()))?;
        let mut child = tokio::process::Command::new("tcpdump")
            .args([
                "-i", "lo", "-nn", "-tt", "-q", "-l", "-B", "65536", "-s", "128",
            ])
            .arg(format!(
                "tcp and src port {port} and greater {}",
                MIN_PLAN_BYTES + 66
            ))
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context(
                "cannot run tcpdump (install it, e.g. `apt-get install tcpdump`; it needs root)",
            )?;
        let mut lines = BufReader::new(child.stderr.take().context("tcpdump stderr")?).lines();
        let listening = tokio::time::timeout(Duration::from_secs(10), async {
            let mut seen = Vec::new();
            while let Ok(Some(l)) = lines.next_line().await {
                let ok = l.starts_with("listening on");
                seen.push(l);
                if ok {
                    return Ok(seen);
                }
            }
            Err(seen)
        })
        .await;
        match listening {
            Ok(Ok(_)) => {}
            Ok(Err(said)) => bail!("tcpdump did not start: {}", said.join("; ")),
            Err(_) => bail!("tcpdump did not start listening within 10 s"),
        }
        let stderr = tokio::spawn(async move {
            let mut rest = Vec::new();
            while let Ok(Some(l)) = lines.next_line().await {
                rest.push(l);
            }
            rest
        });
        Ok(Capture {
            child,
            out: out.to_path_buf(),
            stderr,
        })
    }

    /// Stops the capture and reads, per connection, the first large packet at or after
    /// `since_unix_us`.
    pub async fn stop(mut self, since_unix_us: u64) -> Result<Seen> {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        let said = tokio::time::timeout(Duration::from_secs(5), self.stderr)
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&self.out)
            .with_context(|| format!("cannot read {}", self.out.display()))?;
        let mut seen = first_large_packets(&text, since_unix_us);
        seen.dropped = said.iter().find_map(|l| dropped(l)).unwrap_or(0);
        Ok(seen)
    }
}

/// Parses `tcpdump -nn -tt -q` lines (`1764150000.123456 IP 127.0.0.1.8443 >
/// 127.0.0.3.51234: tcp 1137`).
fn first_large_packets(text: &str, since_unix_us: u64) -> Seen {
    let mut first: HashMap<&str, u64> = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [ts, "IP", _src, ">", dst, "tcp", len] = f.as_slice() else {
            continue;
        };
        let (Some(at), Ok(len)) = (unix_us(ts), len.parse::<u64>()) else {
            continue;
        };
        // 127.0.0.1 is the driver's own (apply, status, metrics); agents use .2 and up.
        if len < MIN_PLAN_BYTES || at < since_unix_us || dst.starts_with("127.0.0.1.") {
            continue;
        }
        first.entry(dst.trim_end_matches(':')).or_insert(at);
    }
    let mut first_us: Vec<u64> = first.values().map(|at| at - since_unix_us).collect();
    first_us.sort_unstable();
    Seen {
        first_us,
        dropped: 0,
    }
}

fn unix_us(ts: &str) -> Option<u64> {
    let (s, us) = ts.split_once('.')?;
    if us.len() != 6 {
        return None;
    }
    Some(s.parse::<u64>().ok()? * 1_000_000 + us.parse::<u64>().ok()?)
}

/// "12 packets dropped by kernel" → 12.
fn dropped(line: &str) -> Option<u64> {
    line.strip_suffix(" packets dropped by kernel")
        .or_else(|| line.strip_suffix(" packet dropped by kernel"))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_large_packet_per_connection_after_the_start_counts() {
        let text = "\
1795687100.000000 IP 127.0.0.1.8443 > 127.0.0.3.5000: tcp 1137
1795687108.500000 IP 127.0.0.1.8443 > 127.0.0.3.5000: tcp 138
1795687108.600000 IP 127.0.0.1.8443 > 127.0.0.3.5000: tcp 1137
1795687108.700000 IP 127.0.0.1.8443 > 127.0.0.3.5000: tcp 1505
1795687108.650000 IP 127.0.0.1.8443 > 127.0.0.4.5000: tcp 1133
tcpdump: some chatter that is not a packet
1795687108.9 IP 127.0.0.1.8443 > 127.0.0.5.5000: tcp 1137
1795687108.700000 IP 127.0.0.1.8443 > 127.0.0.1.5000: tcp 4000
";
        let seen = first_large_packets(text, 1_795_687_108_000_000);
        assert_eq!(seen.first_us, vec![600_000, 650_000]);
        assert_eq!(dropped("3 packets dropped by kernel"), Some(3));
        assert_eq!(dropped("0 packets dropped by kernel"), Some(0));
        assert_eq!(dropped("41 packets captured"), None);
    }
}
