//! `berth`: the controller (`berth serve`) and the operator CLI, one binary.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = berth_controller::cli::Cli::parse();
    berth_controller::cli::main(cli)
}
