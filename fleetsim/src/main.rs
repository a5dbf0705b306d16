//! `berth-fleetsim`: runs N real agents (real keys, mutual TLS, the agent's own poll loop,
//! executor and report spool) against one controller, and measures the controller.
//!
//! The driver enrolls the agents through worker processes, waits until every one of them
//! polls, measures the controller idle, then applies one cluster over the first M agents
//! with a bundle that has no hooks and follows it to Running. It prints what it measured
//! together with its own CPU, so a reader can tell who was the bottleneck.

mod driver;
mod procstat;
mod scrape;
mod wire;
mod worker;

use clap::{Parser, Subcommand};

/// The controller's allocator: the simulator's thousands of agents allocate as much.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "berth-fleetsim", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Enroll and run the fleet, measure, print the figures.
    Run(driver::DriverArgs),
    /// (internal) one worker process of `run`.
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Run(a) => rt.block_on(driver::drive(a)),
        Cmd::Worker(a) => rt.block_on(worker::worker(a)),
    }
}
