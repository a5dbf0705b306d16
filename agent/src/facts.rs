//! What the agent reports about its host.

use berth_shared::api::HostFacts;
use std::net::IpAddr;

/// Reads the host's facts from the kernel and os-release.
pub fn collect() -> HostFacts {
    HostFacts {
        hostname: gethostname::gethostname().to_string_lossy().into_owned(),
        os: os_pretty_name().unwrap_or_else(|| "unknown".into()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into()),
        arch: arch(),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        memory_bytes: mem_total().unwrap_or(0),
        addresses: addresses(),
        agent_version: berth_shared::VERSION.to_string(),
    }
}

/// The host's architecture as Rust names it. `BERTH_AGENT_ARCH` overrides it — for tests
/// of mixed-architecture fleets on one machine, never for a real host (the bundles it then
/// receives are built for another CPU).
pub fn arch() -> String {
    std::env::var("BERTH_AGENT_ARCH")
        .ok()
        .and_then(|a| berth_shared::bundle::normalize_arch(&a))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

fn os_pretty_name() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
}

fn mem_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn addresses() -> Vec<String> {
    let mut out: Vec<IpAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter(|i| !i.is_loopback())
        .map(|i| i.ip())
        .filter(|ip| match ip {
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
            IpAddr::V4(_) => true,
        })
        .collect();
    out.sort();
    out.dedup();
    out.into_iter().map(|a| a.to_string()).collect()
}
