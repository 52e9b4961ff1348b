//! `aerostat`: the command-line front end. Thin: parsing and printing only; the work
//! happens in `aerostat-core` (policy) and `aerostat-sim` (simulator).
//!
//! Exit codes: 0 success, 1 runtime failure, 2 bad usage or bad input file.

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod cmd;
mod daemon;
mod plots;
mod report;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cmd::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(if err.is::<cmd::InputError>() { 2 } else { 1 })
        }
    }
}
