//! `aerostat sim`: one scenario, one policy; progress bar, summary table, files.

use std::path::Path;
use std::process::ExitCode;

use aerostat_sim::{RunOptions, Scenario, Simulation};
use anyhow::Context;

use crate::cli::SimArgs;
use crate::cmd::InputError;
use crate::report;

/// The scenario `aerostat sim` runs when given none: small enough to finish in seconds.
pub const DEMO_SCENARIO: &str = include_str!("../../../../scenarios/web-diurnal.toml");

pub fn load_scenario(path: Option<&Path>) -> Result<Scenario, InputError> {
    match path {
        Some(p) => Scenario::load(p).map_err(|e| InputError(e.to_string())),
        None => Scenario::parse(
            DEMO_SCENARIO,
            Path::new("<built-in demo: scenarios/web-diurnal.toml>"),
        )
        .map_err(|e| InputError(e.to_string())),
    }
}

pub fn run(args: &SimArgs) -> anyhow::Result<ExitCode> {
    let scenario = load_scenario(args.scenario.as_deref())?;
    let mut options = RunOptions::new(args.policy);
    options.seed = args.seed;
    options.log_actions = true;
    options.escape = !args.no_escape;
    let mut sim = Simulation::new(scenario.clone(), options);
    let bar = report::progress_bar(sim.total_ticks(), &scenario.name, args.quiet);
    let chunk = (sim.total_ticks() / 200).max(1);
    while !sim.done() {
        sim.advance(chunk);
        bar.inc(chunk);
    }
    bar.finish_and_clear();
    let result = sim.finish();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    report::write_run(&args.out, &scenario, &result)?;
    crate::say!(
        "{}",
        report::summary_table(std::slice::from_ref(&result.summary))
    );
    if let Some(text) = report::migrations(&result) {
        crate::say!("{text}");
    } else if args.no_escape && scenario.migration.as_ref().is_some_and(|m| m.escape) {
        crate::say!("live-migration escape: off (--no-escape)");
    }
    crate::say!(
        "wrote {}/{{summary.json,timeseries.csv,decisions.jsonl,*.svg}}",
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
