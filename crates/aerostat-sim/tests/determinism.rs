//! Same scenario and seed → byte-identical summaries, whatever the thread count; another
//! seed → another result.

mod common;

use aerostat_core::PolicyKind;
use aerostat_sim::fleet::run_fleet;
use aerostat_sim::{RunOptions, Scenario, Summary, run};

/// A shipped scenario cut to `duration`.
fn shortened(name: &str, duration: &str) -> Scenario {
    common::load_shortened(&common::scenarios_dir().join(name), duration)
}

fn summary_json(s: &Summary) -> String {
    serde_json::to_string(s).expect("summary serializes")
}

fn run_json(scenario: &Scenario, policy: PolicyKind, seed: u64) -> String {
    let mut opts = RunOptions::new(policy);
    opts.seed = Some(seed);
    summary_json(&run(scenario, opts).summary)
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let scenario = shortened("web-diurnal.toml", "6h");
    for policy in PolicyKind::ALL {
        for seed in [scenario.seed, 12345] {
            let a = run_json(&scenario, policy, seed);
            let b = run_json(&scenario, policy, seed);
            assert!(
                a == b,
                "policy {policy}, seed {seed}: two runs differ\n{a}\n{b}"
            );
        }
        let a = run_json(&scenario, policy, 1);
        let b = run_json(&scenario, policy, 2);
        assert!(
            a != b,
            "policy {policy}: seeds 1 and 2 gave identical summaries (the seed is ignored?)\n{a}"
        );
    }
}

#[test]
fn scenario_seed_is_the_default() {
    let scenario = shortened("web-diurnal.toml", "2h");
    let default = summary_json(&run(&scenario, RunOptions::new(PolicyKind::Aerostat)).summary);
    let explicit = run_json(&scenario, PolicyKind::Aerostat, scenario.seed);
    assert!(
        default == explicit,
        "seed {}: default and explicit seed differ",
        scenario.seed
    );
}

fn fleet_on(threads: usize, scenario: &Scenario, opts: &RunOptions, hosts: usize) -> String {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("rayon pool");
    let (summaries, ticks) = pool.install(|| run_fleet(scenario, opts, hosts));
    assert_eq!(summaries.len(), hosts);
    format!(
        "{ticks}\n{}",
        summaries
            .iter()
            .map(summary_json)
            .collect::<Vec<_>>()
            .join("\n")
    )
}

#[test]
fn fleet_does_not_depend_on_thread_count() {
    let scenario = shortened("web-diurnal.toml", "3h");
    for policy in [PolicyKind::Aerostat, PolicyKind::Mom] {
        let mut opts = RunOptions::new(policy);
        let seed = 99;
        opts.seed = Some(seed);
        let one = fleet_on(1, &scenario, &opts, 4);
        let two = fleet_on(2, &scenario, &opts, 4);
        assert!(
            one == two,
            "policy {policy}, seed {seed}: fleets on 1 and 2 threads differ\n{one}\n---\n{two}"
        );
        // Host h runs with seed + h, exactly like a single run with that seed.
        let host2 = run_json(&scenario, policy, seed + 2);
        let fleet_host2 = one.lines().nth(3).expect("host 2");
        assert!(
            host2 == fleet_host2,
            "policy {policy}, seed {}: fleet host 2 differs from a single run",
            seed + 2
        );
    }
}

/// The escape's scenario: same seed, same summary and the same migrations (measured dirty
/// rates come from a hash, not an RNG); fleets on 1 and 2 threads agree.
#[test]
fn the_escape_is_deterministic() {
    let path = common::scenarios_dir().join("unabsorbable-surge.toml");
    let scenario = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
    for policy in PolicyKind::ALL {
        for seed in [scenario.seed, 77] {
            let once = || {
                let mut opts = RunOptions::new(policy);
                opts.seed = Some(seed);
                let r = run(&scenario, opts);
                format!(
                    "{}\n{}",
                    summary_json(&r.summary),
                    serde_json::to_string(&r.migrations).expect("records serialize")
                )
            };
            let (a, b) = (once(), once());
            assert!(
                a == b,
                "policy {policy}, seed {seed}: two runs differ\n{a}\n{b}"
            );
            assert!(
                a.contains("\"migrations\":1"),
                "policy {policy}, seed {seed}: {a}"
            );
        }
    }
    let mut opts = RunOptions::new(PolicyKind::Aerostat);
    opts.seed = Some(5);
    let one = fleet_on(1, &scenario, &opts, 3);
    let two = fleet_on(2, &scenario, &opts, 3);
    assert!(
        one == two,
        "seed 5: fleets on 1 and 2 threads differ\n{one}\n---\n{two}"
    );
}
