//! `aerostat sim`: one scenario, one policy; progress bar, summary table, files.

use std::path::Path;
use std::process::ExitCode;

use aerostat_core::Millis;
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

/// `--duration`: a run cut short. Longer than the scenario is an error, since its workloads
/// and traces were written for its length; `shorter_only = false` (bench) runs those whole.
pub fn cut_short(
    scenario: &mut Scenario,
    duration: Option<&str>,
    shorter_only: bool,
) -> Result<(), InputError> {
    let Some(text) = duration else {
        return Ok(());
    };
    // A run of no ticks has no results to report (`plan` called every ratio safe on one).
    let d = at_least_a_tick("--duration", text, scenario.tick, "nothing would run")?;
    if d > scenario.duration && shorter_only {
        return Err(InputError(format!(
            "--duration {text} is longer than scenario `{}`'s duration ({}); only a shorter run is allowed",
            scenario.name, scenario.duration
        )));
    }
    scenario.duration = scenario.duration.min(d);
    // Said, not refused: a quick look at the first minutes is what `--duration` is for.
    let late: Vec<&str> = scenario
        .vms
        .iter()
        .filter(|v| v.start >= scenario.duration)
        .map(|v| v.name.as_str())
        .collect();
    if !late.is_empty() {
        eprintln!(
            "note: --duration {text} ends before these VMs start, so they do not run: {}",
            late.join(", ")
        );
    }
    Ok(())
}

/// The duration a flag gives, refused below one simulator tick (`why`: what a shorter one
/// would mean).
fn at_least_a_tick(flag: &str, text: &str, tick: Millis, why: &str) -> Result<Millis, InputError> {
    let d: Millis = text
        .parse()
        .map_err(|e| InputError(format!("{flag}: {e}")))?;
    if d < tick {
        return Err(InputError(format!(
            "{flag} {text} is shorter than one simulator tick ({tick}): {why}"
        )));
    }
    Ok(d)
}

/// The most samples `--every` may ask for: each holds a row of the CSV and a point of every
/// plotted line.
const MAX_SAMPLES: u64 = 200_000;

/// `--every`: how often the time series takes a sample, at least a tick, at most
/// MAX_SAMPLES over the run.
pub fn sample_every(
    scenario: &Scenario,
    every: Option<&str>,
) -> Result<Option<Millis>, InputError> {
    let Some(text) = every else {
        return Ok(None);
    };
    let d = at_least_a_tick(
        "--every",
        text,
        scenario.tick,
        "a sample is taken at most every tick",
    )?;
    let samples = scenario.duration.0 / d.0;
    // A sample is taken once `every` has passed: none in a shorter run, and the CSV would
    // hold its header alone.
    if samples == 0 {
        return Err(InputError(format!(
            "--every {text} is longer than the run ({}): no sample would be taken",
            scenario.duration
        )));
    }
    if samples > MAX_SAMPLES {
        return Err(InputError(format!(
            "--every {text} takes {samples} samples over {}; at most {MAX_SAMPLES}: end the run sooner with --duration",
            scenario.duration
        )));
    }
    Ok(Some(d))
}

pub fn run(args: &SimArgs) -> anyhow::Result<ExitCode> {
    let mut scenario = load_scenario(args.scenario.as_deref())?;
    cut_short(&mut scenario, args.duration.as_deref(), true)?;
    let every = sample_every(&scenario, args.every.as_deref())?;
    super::output_dir(&args.out)?;
    let mut options = RunOptions::new(args.policy);
    options.sample_every = every;
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
    if let Some(line) = report::tlb(&result.summary) {
        crate::say!("{line}");
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_cuts_a_run_short_and_never_stretches_it() {
        let demo = load_scenario(None).expect("the demo parses");
        let full = demo.duration;
        let mut s = demo.clone();
        cut_short(&mut s, Some("10m"), true).expect("shorter is fine");
        assert_eq!(s.duration, Millis::secs(600));
        let mut s = demo.clone();
        let e = cut_short(&mut s, Some("1000h"), true).expect_err("longer is refused");
        assert!(
            e.0.contains("longer than scenario `web-diurnal`"),
            "{}",
            e.0
        );
        // Bench runs a shorter scenario whole.
        let mut s = demo.clone();
        cut_short(&mut s, Some("1000h"), false).expect("bench");
        assert_eq!(s.duration, full);
        for bad in ["0s", "ten minutes"] {
            let e = cut_short(&mut demo.clone(), Some(bad), true).expect_err(bad);
            assert!(e.0.starts_with("--duration"), "{}", e.0);
        }
    }

    #[test]
    fn every_samples_at_least_a_tick_apart_and_not_too_often() {
        let demo = load_scenario(None).expect("the demo parses");
        assert_eq!(sample_every(&demo, None).expect("default"), None);
        let mut short = demo.clone();
        cut_short(&mut short, Some("1h"), true).expect("1h");
        assert_eq!(
            sample_every(&short, Some("1s")).expect("every tick for an hour"),
            Some(Millis::secs(1))
        );
        for (bad, why) in [
            ("500ms", "shorter than one simulator tick"),
            ("ten", "--every"),
            ("2h", "longer than the run"),
        ] {
            let e = sample_every(&short, Some(bad)).expect_err(bad);
            assert!(e.0.contains(why), "{}", e.0);
        }
        // The demo's 24 h every second: 86,400 samples, within the bound; a 100-day run not.
        sample_every(&demo, Some("1s")).expect("a day of ticks");
        let mut long = demo.clone();
        long.duration = Millis::secs(100 * 86_400);
        let e = sample_every(&long, Some("1s")).expect_err("too many");
        assert!(e.0.contains("at most 200000"), "{}", e.0);
    }
}
