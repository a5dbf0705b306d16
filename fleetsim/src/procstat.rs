//! CPU time and resident memory of a process, from /proc.

use std::time::Instant;

/// Clock ticks per second of /proc/PID/stat times (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    /// user + system CPU seconds so far.
    pub cpu_secs: f64,
    pub rss_bytes: u64,
}

pub fn sample(pid: u32) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    Some(Sample {
        at: Instant::now(),
        cpu_secs: (utime + stime) / TICKS,
        rss_bytes: rss_kib * 1024,
    })
}

/// The sum over several processes (the workers).
pub fn sample_all(pids: &[u32]) -> Option<Sample> {
    let mut total = Sample {
        at: Instant::now(),
        cpu_secs: 0.0,
        rss_bytes: 0,
    };
    for p in pids {
        let s = sample(*p)?;
        total.cpu_secs += s.cpu_secs;
        total.rss_bytes += s.rss_bytes;
    }
    Some(total)
}

/// Share of one core used between two samples, in percent.
pub fn cpu_percent(a: &Sample, b: &Sample) -> f64 {
    let wall = b.at.duration_since(a.at).as_secs_f64();
    if wall <= 0.0 {
        return 0.0;
    }
    100.0 * (b.cpu_secs - a.cpu_secs) / wall
}
