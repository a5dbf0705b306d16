//! `berth`: the controller (`berth serve`) and the operator CLI, one binary.

use clap::Parser;

/// jemalloc: glibc's malloc took ~13 % of the controller's CPU during a 19,000-host
/// fan-out, and mimalloc held 1.1 GiB where glibc held 0.84 GiB for 19,000 idle agents
/// (jemalloc: 0.81 GiB; `docs/performance.md`, section 4).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    quiet_broken_pipe();
    let cli = berth_controller::cli::Cli::parse();
    berth_controller::cli::main(cli)
}

/// A reader that goes away (`berth logs … | head`) ends the command quietly, as it ends any
/// Unix tool, instead of a panic's backtrace: `print!` panics on EPIPE (Rust ignores
/// SIGPIPE, which the controller's sockets need).
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(141); // 128 + SIGPIPE, what a shell reports for `head`'s writer
        }
        default(info);
    }));
}
