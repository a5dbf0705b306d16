//! `berth-agent`: enrolls a host with a controller, then pulls and runs its work.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = berth_agent::cli::Cli::parse();
    berth_agent::cli::main(cli)
}
