//! The simulator arm of the overcommit test: the same body as the real-guest arm in
//! `real_vm.rs` (`common::overcommit::overcommit_body`), run against `aerostat-sim` with a
//! host and guests shaped like the real test's (3 × 768 MiB guests, 96 MiB overhead each,
//! a 1664 MiB "host", 128 MiB reserve, policy `aerostat` every second).

mod common;

use std::path::Path;
use std::time::Duration;

use aerostat_core::{Bytes, Millis, PolicyKind};
use aerostat_sim::{RunOptions, Scenario, Simulation};
use common::overcommit::{GUEST_MIB, OvercommitArm, overcommit_body};
use serde_json::Value;

/// The real test's host and guests as a scenario. Idle guests use ~90 MiB (kernel 96 MiB is
/// counted apart) plus a little cache, as the real busybox guests do.
const SCENARIO: &str = r#"
[scenario]
name = "overcommit-two-arms"
duration = "1h"
seed = 1
[host]
memory = "1664MiB"
reserve = "128MiB"
system = "0B"
vm_overhead = "96MiB"
[[vm]]
name = "vm"
count = 3
memory = "768MiB"
min = "200MiB"
[vm.workload]
kind = "steady"
working_set = "40MiB"
page_cache = "16MiB"
noise = 0.0
"#;

struct SimArm {
    sim: Simulation,
    names: Vec<String>,
    /// (vm, target working set, started at) of a growth in progress.
    growth: Option<(usize, Bytes, Millis)>,
    base_ws: Bytes,
}

impl SimArm {
    fn new() -> SimArm {
        let scenario =
            Scenario::parse(SCENARIO, Path::new("overcommit_sim.rs")).expect("scenario is valid");
        assert_eq!(scenario.vms[0].memory, Bytes::mib(GUEST_MIB));
        let mut options = RunOptions::new(PolicyKind::Aerostat);
        options.log_actions = true;
        options.samples = 0;
        SimArm {
            names: scenario.vms.iter().map(|v| v.name.clone()).collect(),
            sim: Simulation::new(scenario, options),
            growth: None,
            base_ws: Bytes::mib(40),
        }
    }

    /// One virtual second; a growth in progress adds 32 MiB a second, as the real ramp does.
    fn tick(&mut self) {
        if let Some((vm, target, since)) = self.growth {
            let elapsed = self.sim.time().saturating_sub(since).as_secs_f64();
            let ws = (self.base_ws + Bytes::mib((elapsed * 32.0) as u64)).min(target);
            self.sim.set_working_set(&self.names[vm], Some(ws));
        }
        self.sim.advance(1);
    }
}

impl OvercommitArm for SimArm {
    fn names(&self) -> Vec<String> {
        self.names.clone()
    }
    fn actual(&mut self, vm: usize) -> u64 {
        self.sim.actual_of(&self.names[vm]).expect("known VM").0
    }
    fn wait(&mut self, timeout: Duration, what: &str, done: &mut dyn FnMut(&mut Self) -> bool) {
        let deadline = self.sim.time() + Millis(timeout.as_millis() as u64);
        while !done(self) {
            assert!(
                self.sim.time() < deadline && !self.sim.done(),
                "timed out after {timeout:?} of virtual time waiting for {what}"
            );
            self.tick();
        }
    }
    fn settle(&mut self) {
        for _ in 0..3 {
            self.tick();
        }
    }
    fn start_growth(&mut self, vm: usize, mib: u64) {
        let target = self.base_ws + Bytes::mib(mib);
        self.growth = Some((vm, target, self.sim.time()));
    }
    fn growth_done(&mut self, vm: usize) -> bool {
        let Some((_, target, _)) = self.growth else {
            return false;
        };
        self.sim.hot_anon_of(&self.names[vm]).expect("known VM") >= target
    }
    fn decisions(&mut self) -> Vec<Value> {
        self.sim
            .actions()
            .iter()
            .map(|(t, a)| {
                let mut v = serde_json::to_value(a).expect("actions serialize");
                v["time"] = serde_json::json!(t.0);
                v
            })
            .collect()
    }
    fn oom_kills(&mut self) -> u64 {
        self.sim.oom_kills()
    }
}

#[test]
fn overcommit_simulator_arm() {
    let mut arm = SimArm::new();
    let (squeezed, grown) = overcommit_body(&mut arm);
    println!(
        "simulator arm: first guest squeezed to {} MiB, grown to {} MiB at t = {}",
        squeezed >> 20,
        grown >> 20,
        arm.sim.time()
    );
}
