//! Guests no controller drives (`managed = false`): the policy never sees them, only what
//! their QEMUs hold (`HostSample::unmanaged`), as the daemon sees a socket it could not
//! adopt.

use std::path::Path;

use aerostat_core::{Bytes, PolicyKind};
use aerostat_sim::{RunOptions, Scenario, Simulation, run};

fn example() -> Scenario {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples/unmanaged-neighbour.toml");
    Scenario::load(&path).expect("the example loads")
}

/// The undriven guest is in no observation and gets no action; what its QEMU holds is
/// reported, and follows its working set up.
#[test]
fn an_undriven_guest_is_seen_only_as_what_its_qemu_holds() {
    let mut options = RunOptions::new(PolicyKind::Aerostat);
    options.log_actions = true;
    let mut sim = Simulation::new(example(), options);
    sim.advance(60);
    let obs = sim.observation();
    assert_eq!(obs.vms.len(), 8, "the web guests only");
    assert!(obs.vms.iter().all(|v| v.name != "reporting"));
    let early = obs.host.unmanaged;
    // 3 GiB of working set and 512 MiB of cache, and QEMU's overhead, of 14 GiB.
    assert!(early > Bytes::gib(3) && early < Bytes::gib(5), "{early}");
    // Past the ramp (2h → 4h, to 13 GiB).
    sim.advance(4 * 3600);
    let late = sim.observation().host.unmanaged;
    assert!(late > Bytes::gib(13), "{late}");
    assert!(!sim.actions().is_empty(), "the web guests are driven");
    assert!(sim.actions().iter().all(|(_, a)| a.vm != "reporting"));
    // The scenario's own guests are unchanged by it: a driven copy is seen as a VM.
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples/unmanaged-neighbour.toml"),
    )
    .expect("read");
    let driven = Scenario::parse(
        &text.replace("managed = false\n", ""),
        Path::new("driven.toml"),
    )
    .expect("valid");
    let mut sim = Simulation::new(driven, RunOptions::new(PolicyKind::Aerostat));
    sim.advance(60);
    assert_eq!(sim.observation().vms.len(), 9);
    assert_eq!(sim.observation().host.unmanaged, Bytes::ZERO);
}

/// On a host without swap the undriven guest's growth leaves no room for every working set:
/// `static` loses a VM to the host's OOM killer. Told what that guest holds, aerostat
/// squeezes its own guests and loses none (not told, it lost one as `static` does: the
/// example's header).
#[test]
fn told_what_an_undriven_guest_holds_aerostat_loses_no_vm() {
    let scenario = example();
    let fixed = run(&scenario, RunOptions::new(PolicyKind::Static)).summary;
    assert!(fixed.host_oom_kills >= 1, "{fixed:?}");
    let ours = run(&scenario, RunOptions::new(PolicyKind::Aerostat)).summary;
    assert_eq!(ours.host_oom_kills, 0, "{ours:?}");
    assert_eq!(ours.guest_oom_kills, 0, "{ours:?}");
}

/// An undriven guest the host has swapped out holds only what is left in RAM: its swapped
/// pages already used up swap free, and counted again beside it they squeezed the driven
/// guests into their own swap (a review of session 35: 11,913 stall-s where `static`
/// stalls 0).
#[test]
fn an_undriven_guest_swapped_out_is_not_counted_twice() {
    let text = r#"
[scenario]
name = "cold-unmanaged"
duration = "6h"
seed = 35
[host]
memory = "32GiB"
reserve = "2GiB"
swap = "12GiB"
[[vm]]
name = "batch"
memory = "14GiB"
managed = false
[vm.workload]
kind = "phases"
phases = [ { at = "0s", working_set = "12GiB" }, { at = "1h", working_set = "1GiB" } ]
[[vm]]
name = "web"
count = 8
memory = "4GiB"
min = "1GiB"
swap = "1GiB"
class = "stateless"
[vm.workload]
kind = "ramp"
working_set = "1200MiB"
peak = "2900MiB"
at = "2h"
rise = "1h"
page_cache = "512MiB"
"#;
    let scenario = Scenario::parse(text, Path::new("cold-unmanaged.toml")).expect("valid");
    let fixed = run(&scenario, RunOptions::new(PolicyKind::Static)).summary;
    let ours = run(&scenario, RunOptions::new(PolicyKind::Aerostat)).summary;
    assert!(fixed.host_swap_out_gib > 1.0, "the host swaps: {fixed:?}");
    assert!(
        ours.guest_stall_seconds <= fixed.guest_stall_seconds + 1.0,
        "{} stall-s against static's {}",
        ours.guest_stall_seconds,
        fixed.guest_stall_seconds
    );
    assert_eq!(ours.guest_oom_kills + ours.host_oom_kills, 0, "{ours:?}");
    assert!(ours.reclaimed_gib_hours > 50.0, "{ours:?}");
}
