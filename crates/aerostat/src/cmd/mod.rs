//! One module per command.

use std::path::Path;
use std::process::ExitCode;

use crate::cli::{BenchCommand, Cli, Command};

mod admit;
mod bench;
mod decide;
pub mod migrate;
mod plan;
mod run;
mod sim;

/// Bad input (file, flag): exit code 2. A value it quotes is shortened (`shorten_quoted`).
#[derive(Debug, thiserror::Error)]
#[error("{}", aerostat_sim::input::shorten_quoted(.0))]
pub struct InputError(pub String);

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Decide(args) => decide::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Status(args) => run::status(&args),
        Command::Admit(args) => admit::run(&args),
        Command::Migrate(args) => migrate::run(&args),
        Command::Sim(args) => sim::run(&args),
        Command::Plan(args) => plan::run(&args),
        Command::Bench(BenchCommand::Policies(args)) => bench::policies(&args),
        Command::Bench(BenchCommand::Sim(args)) => bench::sim(&args),
    }
}

/// Makes `--out` and checks that files can be written there, before a run that may take
/// minutes: `bench policies --out /proc/x` ran every simulation and then failed.
pub fn output_dir(dir: &Path) -> Result<(), InputError> {
    let bad = |why: String| InputError(format!("--out {}: {why}", dir.display()));
    if dir.exists() && !dir.is_dir() {
        return Err(bad("exists and is not a directory".into()));
    }
    std::fs::create_dir_all(dir).map_err(|e| bad(format!("cannot create it: {e}")))?;
    let probe = dir.join(".aerostat-write-check");
    std::fs::write(&probe, b"").map_err(|e| bad(format!("cannot write there: {e}")))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}
