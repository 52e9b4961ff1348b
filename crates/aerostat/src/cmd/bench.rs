//! `aerostat bench policies` (every policy × every scenario) and `aerostat bench sim`
//! (simulator speed).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use aerostat_core::{Millis, PolicyKind};
use aerostat_sim::fleet::run_fleet;
use aerostat_sim::{RunOptions, Scenario, Simulation, Summary};
use anyhow::Context;
use rayon::prelude::*;
use serde::Serialize;

use crate::cli::{BenchPoliciesArgs, BenchSimArgs};
use crate::cmd::InputError;
use crate::cmd::sim::{cut_short, load_scenario};
use crate::report;

/// Every `*.toml` in `scenarios/`, sorted.
fn default_scenarios() -> Result<Vec<PathBuf>, InputError> {
    let dir = Path::new("scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| {
            InputError(format!(
                "cannot list {}: {e} (run from the repository root or name scenarios)",
                dir.display()
            ))
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

/// One scenario's row group in bench.json.
#[derive(Debug, Serialize)]
struct ScenarioResult {
    scenario: String,
    file: String,
    runs: Vec<Summary>,
    /// Does `aerostat` reclaim at least as much as each baseline while stalling no more, with
    /// zero OOM kills?
    aerostat_dominates: bool,
    /// Why not, one line per shortfall (empty when it dominates).
    aerostat_shortfalls: Vec<String>,
}

pub fn policies(args: &BenchPoliciesArgs) -> anyhow::Result<ExitCode> {
    let mut files = if args.scenarios.is_empty() {
        default_scenarios()?
    } else {
        args.scenarios.clone()
    };
    // A file given twice would be run and reported twice.
    let mut seen = std::collections::BTreeSet::new();
    files.retain(|f| seen.insert(std::fs::canonicalize(f).unwrap_or_else(|_| f.clone())));
    if files.is_empty() {
        return Err(InputError("no scenario files (*.toml) to run".into()).into());
    }
    super::output_dir(&args.out)?;
    let scenarios: Vec<(PathBuf, Scenario)> = files
        .iter()
        .map(|f| {
            let mut s = load_scenario(Some(f))?;
            cut_short(&mut s, args.duration.as_deref(), false)?;
            Ok((f.clone(), s))
        })
        .collect::<Result<_, InputError>>()?;
    let jobs: Vec<(usize, PolicyKind)> = (0..scenarios.len())
        .flat_map(|i| PolicyKind::ALL.into_iter().map(move |p| (i, p)))
        .collect();
    let bar = report::progress_bar(jobs.len() as u64, "bench policies", false);
    let started = Instant::now();
    let summaries: Vec<Summary> = jobs
        .par_iter()
        .map(|&(i, policy)| {
            let mut opts = RunOptions::new(policy);
            opts.samples = 0;
            let s = Simulation::new(scenarios[i].1.clone(), opts).run().summary;
            bar.inc(1);
            s
        })
        .collect();
    bar.finish_and_clear();
    let elapsed = started.elapsed();

    let mut results = Vec::new();
    for (i, (file, scenario)) in scenarios.iter().enumerate() {
        let runs: Vec<Summary> =
            summaries[i * PolicyKind::ALL.len()..(i + 1) * PolicyKind::ALL.len()].to_vec();
        let aerostat_shortfalls = shortfalls(&runs);
        results.push(ScenarioResult {
            scenario: scenario.name.clone(),
            file: file.display().to_string(),
            aerostat_dominates: aerostat_shortfalls.is_empty(),
            aerostat_shortfalls,
            runs,
        });
    }
    let all: Vec<Summary> = results.iter().flat_map(|r| r.runs.clone()).collect();
    crate::say!("{}", report::summary_table(&all));
    for r in &results {
        crate::say!(
            "{:<16} aerostat dominates mom and proxmox: {}",
            r.scenario,
            verdict(r, "NO")
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let json = serde_json::to_string_pretty(&results)? + "\n";
    std::fs::write(args.out.join("bench.json"), json)?;
    std::fs::write(args.out.join("bench.md"), markdown(&results))?;
    crate::say!(
        "{} runs in {:.1} s; wrote {}/{{bench.json,bench.md}}",
        jobs.len(),
        elapsed.as_secs_f64(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn find(runs: &[Summary], policy: PolicyKind) -> Option<&Summary> {
    runs.iter().find(|s| s.policy == policy.as_str())
}

/// Where `aerostat` misses the bar: zero OOM kills, and against each baseline at least as
/// much reclaimed with no more stall (strict comparison on the rounded figures). Each line
/// names the baseline and its own cost, so a reader sees at once whether it "reclaimed
/// more" by thrashing.
fn shortfalls(runs: &[Summary]) -> Vec<String> {
    let Some(a) = find(runs, PolicyKind::Aerostat) else {
        return vec!["no aerostat run".into()];
    };
    let mut why = Vec::new();
    if a.guest_oom_kills > 0 || a.host_oom_kills > 0 {
        why.push(format!(
            "OOM kills: {} guest, {} host",
            a.guest_oom_kills, a.host_oom_kills
        ));
    }
    for kind in [PolicyKind::Mom, PolicyKind::Proxmox] {
        let Some(b) = find(runs, kind) else {
            why.push(format!("no {} run", kind.as_str()));
            continue;
        };
        let cost = format!(
            "{} stalls {:.2} s, {} guest OOM kills",
            b.policy, b.guest_stall_seconds, b.guest_oom_kills
        );
        if a.reclaimed_gib_hours < b.reclaimed_gib_hours {
            why.push(format!(
                "reclaims less than {} ({:.1} < {:.1} GiB·h; {cost})",
                b.policy, a.reclaimed_gib_hours, b.reclaimed_gib_hours
            ));
        }
        if a.guest_stall_seconds > b.guest_stall_seconds {
            why.push(format!(
                "stalls more than {} ({:.3} > {:.3} s)",
                b.policy, a.guest_stall_seconds, b.guest_stall_seconds
            ));
        }
    }
    why
}

/// "yes", or `no` followed by the shortfalls.
fn verdict(r: &ScenarioResult, no: &str) -> String {
    if r.aerostat_dominates {
        "yes".into()
    } else {
        format!("{no}: {}", r.aerostat_shortfalls.join("; "))
    }
}

fn markdown(results: &[ScenarioResult]) -> String {
    let mut s = String::from(
        "| scenario | policy | reclaimed GiB·h | oracle GiB·h | % of oracle | stall s | stall % of VM-time | guest swap-in GiB | host swap-out GiB | guest OOM | host OOM | actions |\n|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for r in results {
        for x in &r.runs {
            let _ = writeln!(
                s,
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.4} | {:.2} | {:.2} | {} | {} | {} |",
                x.scenario,
                x.policy,
                x.reclaimed_gib_hours,
                x.oracle_reclaimable_gib_hours,
                100.0 * x.oracle_ratio,
                x.guest_stall_seconds,
                x.stall_percent,
                x.guest_swap_in_gib,
                x.host_swap_out_gib,
                x.guest_oom_kills,
                x.host_oom_kills,
                x.actions
            );
        }
    }
    s.push_str("\n| scenario | aerostat dominates mom and proxmox |\n|---|---|\n");
    for r in results {
        let _ = writeln!(s, "| {} | {} |", r.scenario, verdict(r, "**no**"));
    }
    s
}

/// Simulator speed: VM-ticks per second, one host on one thread, then a fleet on all threads.
pub fn sim(args: &BenchSimArgs) -> anyhow::Result<ExitCode> {
    let mut scenario = load_scenario(None)?;
    // At most the demo's own day: its workloads were checked for that long.
    super::sim::cut_short(&mut scenario, Some(&args.duration), true)?;
    let duration = scenario.duration;
    if let Some(interval) = &args.interval {
        let interval: Millis = interval
            .parse()
            .map_err(|e| InputError(format!("--interval: {e}")))?;
        if let Some(why) = aerostat_sim::scenario::interval_problem(interval, scenario.tick) {
            return Err(InputError(format!("--interval: {why}")).into());
        }
        scenario.interval = Some(interval);
    }
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n as usize)
            .build_global()
            .context("building the thread pool")?;
    }
    let threads = rayon::current_num_threads();
    for policy in [PolicyKind::Static, PolicyKind::Aerostat] {
        let mut opts = RunOptions::new(policy);
        opts.samples = 0;
        let started = Instant::now();
        let mut one = Simulation::new(scenario.clone(), opts.clone());
        one.advance(u64::MAX);
        let single_ticks = one.vm_ticks();
        let single = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let (_, fleet_ticks) = run_fleet(&scenario, &opts, args.hosts as usize);
        let fleet = started.elapsed().as_secs_f64();
        crate::say!(
            "policy {:<8} single host ({} VMs, {}): {:>7.1} M VM-ticks/s | fleet of {} hosts on {} threads: {:>7.1} M VM-ticks/s ({:.2} s)",
            policy.as_str(),
            scenario.vms.len(),
            duration,
            single_ticks as f64 / single / 1e6,
            args.hosts,
            threads,
            fleet_ticks as f64 / fleet / 1e6,
            fleet
        );
    }
    Ok(ExitCode::SUCCESS)
}
