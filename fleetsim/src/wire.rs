//! The agents' requests as the network saw them. A `tcpdump` on the loopback interface
//! records the controller's traffic from before the first agent connects, and every
//! virtual agent writes its TLS secrets to a key log; afterwards `tshark` decrypts the
//! capture and lists its HTTP/2 frames. Each request is then timed by the kernel's
//! timestamps: from the packet that ended the request to the packet that carried the
//! answer's headers. These times do not wait for the simulator's CPU, which the agents'
//! own timestamps do when the simulator shares the controller's cores.
//!
//! Two figures come out of it: when each connection received its first plan after the
//! apply started (an answer to a poll with a body of at least [`MIN_PLAN_BYTES`]; a poll
//! answered without a plan carries about 60 bytes), and how long each report batch took
//! the controller to answer.

use anyhow::{bail, Context, Result};
use berth_shared::routes::{self, Endpoint};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A poll's answer with a plan in it carries a signed envelope of about 1 KB; without
/// one it is `{"host":…,"facts_accepted":…}`.
pub const MIN_PLAN_BYTES: u64 = 300;

const POLL_PATH: &str = <routes::AgentPoll as Endpoint>::ROUTE.path;
const REPORTS_PATH: &str = <routes::AgentReports as Endpoint>::ROUTE.path;

/// A running capture.
pub struct Capture {
    child: tokio::process::Child,
    pcap: PathBuf,
    keys: PathBuf,
    port: u16,
    stderr: tokio::task::JoinHandle<Vec<String>>,
}

/// What the capture saw after the apply started, in microseconds.
#[derive(Debug, Default, PartialEq)]
pub struct Seen {
    /// Per connection, from the apply's start to the answer that carried its first plan.
    pub first_plan_us: Vec<u64>,
    /// Per report batch, from the end of the request to the answer's headers.
    pub report_us: Vec<u64>,
    /// Report batches sent and never answered while the capture ran.
    pub reports_unanswered: u64,
    /// Packets the kernel dropped because tcpdump fell behind (a connection that lost
    /// a packet of its handshake cannot be decrypted; then the figures are a sample).
    pub dropped: u64,
}

impl Capture {
    /// Starts `tcpdump` on `lo` for the controller's `port`, writing `dir/wire.pcap`, and
    /// returns once it listens. The agents must write their TLS secrets to
    /// [`Capture::key_log`].
    pub async fn start(port: u16, dir: &Path) -> Result<Capture> {
        // Decrypting comes last, after every other figure: find out now whether it can.
        let tshark = tokio::process::Command::new("tshark")
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        if !matches!(tshark, Ok(s) if s.success()) {
            bail!("--wire needs tshark to decrypt the capture (install it, e.g. `apt-get install tshark`)");
        }
        let (pcap, keys) = (dir.join("wire.pcap"), dir.join("tls-keys.log"));
        std::fs::create_dir_all(dir)?;
        let _ = std::fs::remove_file(&keys);
        let mut child = tokio::process::Command::new("tcpdump")
            .args(["-i", "lo", "-nn", "-s", "0", "-B", "262144", "-w"])
            .arg(&pcap)
            .arg(format!("tcp port {port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
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
                let ok = l.contains("listening on");
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
            pcap,
            keys,
            port,
            stderr,
        })
    }

    /// Where the agents write their TLS secrets.
    pub fn key_log(&self) -> &Path {
        &self.keys
    }

    /// Stops the capture.
    pub async fn finish(mut self) -> Recorded {
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
        Recorded {
            pcap: self.pcap,
            keys: self.keys,
            port: self.port,
            dropped: said.iter().find_map(|l| dropped(l)).unwrap_or(0),
        }
    }
}

/// A finished capture and the secrets to read it.
pub struct Recorded {
    pcap: PathBuf,
    keys: PathBuf,
    port: u16,
    dropped: u64,
}

impl Recorded {
    /// Decrypts the capture and times what happened at or after `since_unix_us`.
    pub async fn decode(&self, since_unix_us: u64) -> Result<Seen> {
        let out = tokio::process::Command::new("tshark")
            .arg("-r")
            .arg(&self.pcap)
            .arg("-o")
            .arg(format!("tls.keylog_file:{}", self.keys.display()))
            .args(["-d", &format!("tcp.port=={},tls", self.port)])
            .args(["-Y", "http2", "-T", "fields", "-E", "occurrence=a"])
            .args(["-E", "aggregator=|", "-E", "separator=/t"])
            .args(FIELDS.iter().flat_map(|f| ["-e", f]))
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .await
            .context(
                "cannot run tshark to decrypt the capture (install it, e.g. `apt-get install tshark`)",
            )?;
        if !out.status.success() {
            bail!(
                "tshark could not read {}: {}",
                self.pcap.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut seen = timings(&exchanges(&text, self.port), since_unix_us);
        seen.dropped = self.dropped;
        Ok(seen)
    }
}

/// The fields `tshark` prints per packet, in this order; the HTTP/2 ones list one entry
/// per frame (`type`, `streamid`, `flags`, `length`) or per header block that has the
/// pseudo-header (`path` in requests, `status` in answers).
const FIELDS: [&str; 9] = [
    "frame.time_epoch",
    "tcp.srcport",
    "tcp.stream",
    "http2.type",
    "http2.streamid",
    "http2.flags",
    "http2.length",
    "http2.headers.path",
    "http2.headers.status",
];

/// One request and its answer on one HTTP/2 stream.
#[derive(Debug, Default, Clone, PartialEq)]
struct Exchange {
    connection: u64,
    path: String,
    /// When the request's last frame (END_STREAM) went out.
    sent_us: Option<u64>,
    /// When the answer's headers came back.
    answered_us: Option<u64>,
    status: Option<u16>,
    /// Bytes of the answer's DATA frames.
    body: u64,
}

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const END_STREAM: u8 = 0x1;

/// Reads `tshark` lines into requests with their answers, in order of first sight.
fn exchanges(text: &str, port: u16) -> Vec<Exchange> {
    let mut all: Vec<Exchange> = Vec::new();
    let mut index: HashMap<(u64, u64), usize> = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 7 {
            continue;
        }
        let (Some(at), Ok(src), Ok(conn)) =
            (unix_us(f[0]), f[1].parse::<u16>(), f[2].parse::<u64>())
        else {
            continue;
        };
        let list = |i: usize| -> Vec<&str> {
            f.get(i)
                .filter(|v| !v.is_empty())
                .map(|v| v.split('|').collect())
                .unwrap_or_default()
        };
        let (types, ids, flags, lens) = (list(3), list(4), list(5), list(6));
        let (mut paths, mut statuses) = (list(7).into_iter(), list(8).into_iter());
        let from_server = src == port;
        for (k, ty) in types.iter().enumerate() {
            let (Ok(ty), Some(Ok(id))) = (ty.parse::<u8>(), ids.get(k).map(|v| v.parse::<u64>()))
            else {
                continue;
            };
            if id == 0 || (ty != DATA && ty != HEADERS) {
                continue;
            }
            let fl = flags.get(k).and_then(|v| parse_hex(v)).unwrap_or(0);
            let len = lens.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            let slot = *index.entry((conn, id)).or_insert_with(|| {
                all.push(Exchange {
                    connection: conn,
                    ..Exchange::default()
                });
                all.len() - 1
            });
            let e = &mut all[slot];
            match (from_server, ty) {
                (false, HEADERS) => {
                    if let Some(p) = paths.next() {
                        e.path = p.to_string();
                    }
                }
                (true, HEADERS) => {
                    let status = statuses.next().and_then(|s| s.parse().ok());
                    if e.answered_us.is_none() {
                        e.answered_us = Some(at);
                        e.status = status;
                    }
                }
                (true, _) => e.body += len,
                (false, _) => {}
            }
            if !from_server && fl & END_STREAM != 0 {
                e.sent_us = Some(at);
            }
        }
    }
    all
}

/// The first plan per connection and the report round trips, from `since_us` on.
fn timings(all: &[Exchange], since_us: u64) -> Seen {
    let mut first: HashMap<u64, u64> = HashMap::new();
    let mut seen = Seen::default();
    for e in all {
        let path = e.path.split('?').next().unwrap_or("");
        match (path, e.sent_us, e.answered_us) {
            (POLL_PATH, _, Some(at))
                if at >= since_us && e.status == Some(200) && e.body >= MIN_PLAN_BYTES =>
            {
                let t = first.entry(e.connection).or_insert(at);
                *t = (*t).min(at);
            }
            (REPORTS_PATH, Some(sent), Some(at)) if sent >= since_us => {
                seen.report_us.push(at.saturating_sub(sent))
            }
            (REPORTS_PATH, Some(sent), None) if sent >= since_us => seen.reports_unanswered += 1,
            _ => {}
        }
    }
    seen.first_plan_us = first.values().map(|at| at - since_us).collect();
    seen.first_plan_us.sort_unstable();
    seen.report_us.sort_unstable();
    seen
}

fn parse_hex(v: &str) -> Option<u8> {
    u8::from_str_radix(v.trim_start_matches("0x"), 16).ok()
}

/// `1795687108.500000000` → microseconds.
fn unix_us(ts: &str) -> Option<u64> {
    let (s, frac) = ts.split_once('.')?;
    if frac.len() < 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse::<u64>().ok()? * 1_000_000 + frac[..6].parse::<u64>().ok()?)
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

    /// Lines as `tshark` prints them for one agent connection (server port 43361).
    const TSHARK: &str = "\
1795696785.288867000\t56909\t65\t1\t1\t0x04\t51\t/v1/agent/poll\t
1795696785.288898000\t56909\t65\t0\t1\t0x01\t238\t\t
1795696785.309712000\t43361\t65\t1|0\t1|1\t0x04|0x01\t44|54\t\t200
1795696785.310672000\t56909\t65\t1\t3\t0x04\t22\t/v1/agent/poll\t
1795696785.310697000\t56909\t65\t0\t3\t0x01\t49\t\t
1795696785.311000000\t56909\t65\t4|8\t0|0\t0x00|0x00\t24|4\t\t
1795696795.448689000\t43361\t65\t1|0\t3|3\t0x04|0x01\t33|1060\t\t200
1795696795.530738000\t56909\t65\t1\t7\t0x04\t25\t/v1/agent/reports\t
1795696795.530823000\t56909\t65\t0\t7\t0x01\t334\t\t
1795696795.531950000\t43361\t65\t1\t7\t0x05\t6\t\t204
1795696795.561879000\t56909\t65\t1\t9\t0x04\t22\t/v1/agent/poll\t
1795696795.605897000\t56909\t65\t1|1|0\t11|13|9\t0x05|0x04|0x01\t64|24|49\t/v1/blobs/sha256/82|/v1/agent/reports\t
1795696795.608655000\t56909\t65\t0\t13\t0x01\t172\t\t
1795696795.615145000\t43361\t65\t1|1\t11|13\t0x04|0x05\t140|6\t\t200|204
1795696795.615726000\t43361\t65\t0\t11\t0x00\t229\t\t
1795696795.698828000\t43361\t65\t1|0\t9|9\t0x04|0x01\t9|1060\t\t200
1795696795.700000000\t56909\t66\t1\t1\t0x05\t25\t/v1/agent/reports\t
1795696795.700000000\t56909\t66\t\t\t\t\t\t
not a tshark line
";

    #[test]
    fn requests_pair_with_their_answers_by_connection_and_stream() {
        let all = exchanges(TSHARK, 43361);
        let by = |conn: u64, path: &str| -> Vec<Exchange> {
            all.iter()
                .filter(|e| e.connection == conn && e.path.starts_with(path))
                .cloned()
                .collect()
        };
        let polls = by(65, POLL_PATH);
        assert_eq!(polls.len(), 3);
        assert_eq!(polls[0].body, 54);
        assert_eq!(polls[1].sent_us, Some(1_795_696_785_310_697));
        assert_eq!(polls[1].answered_us, Some(1_795_696_795_448_689));
        assert_eq!((polls[1].status, polls[1].body), (Some(200), 1060));
        let reports = by(65, REPORTS_PATH);
        assert_eq!(reports.len(), 2);
        // The report on stream 13 shared a packet with a blob request and its answer one
        // with the blob's headers: each status goes to its own stream.
        assert_eq!(reports[1].sent_us, Some(1_795_696_795_608_655));
        assert_eq!(reports[1].status, Some(204));
        let blob = by(65, &routes::Blob::ROUTE.url(&[""]));
        assert_eq!((blob[0].status, blob[0].body), (Some(200), 229));
    }

    #[test]
    fn first_plans_and_report_round_trips_count_from_the_start() {
        let seen = timings(&exchanges(TSHARK, 43361), 1_795_696_795_000_000);
        // The poll answered at 785.309 came before the start, and its body was no plan.
        assert_eq!(seen.first_plan_us, vec![448_689]);
        assert_eq!(seen.report_us, vec![1_127, 6_490]);
        assert_eq!(seen.reports_unanswered, 1);
        assert_eq!(dropped("3 packets dropped by kernel"), Some(3));
        assert_eq!(dropped("0 packets dropped by kernel"), Some(0));
        assert_eq!(dropped("41 packets captured"), None);
        assert_eq!(unix_us("1795696795.5"), None);
    }
}
