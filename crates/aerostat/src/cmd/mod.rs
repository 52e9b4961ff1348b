//! One module per command.

use std::process::ExitCode;

use crate::cli::{BenchCommand, Cli, Command};

mod bench;
mod decide;
pub mod migrate;
mod plan;
mod run;
mod sim;

/// Bad input (file, flag): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Decide(args) => decide::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Status(args) => run::status(&args),
        Command::Migrate(args) => migrate::run(&args),
        Command::Sim(args) => sim::run(&args),
        Command::Plan(args) => plan::run(&args),
        Command::Bench(BenchCommand::Policies(args)) => bench::policies(&args),
        Command::Bench(BenchCommand::Sim(args)) => bench::sim(&args),
    }
}
