//! Fleets: many independent hosts, run in parallel with rayon.
//!
//! Hosts share nothing, each runs on one thread, and results are collected in host
//! order, so a fleet's numbers do not depend on the thread count.

use rayon::prelude::*;

use crate::engine::{RunOptions, Simulation};
use crate::metrics::Summary;
use crate::scenario::Scenario;

/// Runs `hosts` copies of `scenario`, host `h` with seed `seed + h`; returns each host's
/// summary in host order and the VM-ticks simulated.
pub fn run_fleet(scenario: &Scenario, options: &RunOptions, hosts: usize) -> (Vec<Summary>, u64) {
    let results: Vec<(Summary, u64)> = (0..hosts)
        .into_par_iter()
        .map(|h| {
            let mut opts = options.clone();
            opts.seed = Some(options.seed.unwrap_or(scenario.seed) + h as u64);
            opts.samples = 0;
            let mut sim = Simulation::new(scenario.clone(), opts);
            sim.advance(u64::MAX);
            let ticks = sim.vm_ticks();
            (sim.finish().summary, ticks)
        })
        .collect();
    let vm_ticks = results.iter().map(|r| r.1).sum();
    (results.into_iter().map(|r| r.0).collect(), vm_ticks)
}
