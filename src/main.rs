//! `portico`: the edge, the control service, or both in one process (`up`). SPEC §1.

mod alloc;
mod cli;

use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static GLOBAL: alloc::Allocator = alloc::Allocator;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    cli::init_logs(cli.common().log_format, cli.common().log_level.as_deref());
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portico: {e:#}");
            ExitCode::FAILURE
        }
    }
}
