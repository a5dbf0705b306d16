//! `berth`: the controller (`berth serve`) and the operator CLI, one binary.

use clap::Parser;

/// jemalloc: glibc's malloc took ~13 % of the controller's CPU during a 19,000-host
/// fan-out, and mimalloc held 1.1 GiB where glibc held 0.84 GiB for 19,000 idle agents
/// (jemalloc: 0.81 GiB; `docs/performance.md`, section 4).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let cli = berth_controller::cli::Cli::parse();
    berth_controller::cli::main(cli)
}
