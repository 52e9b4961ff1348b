//! The cold-anon squeeze (cold anonymous memory the host saw idle, pushed into the guest's
//! declared swap) on a whole simulated host: what it leaves behind when it ends.

mod common;

use aerostat_core::PolicyKind;
use aerostat_sim::{RunOptions, Scenario, run};

use common::scenarios_dir;

/// `docs/examples/unseen-post-squeeze.toml`: a 16 GiB guest with 2.8 GiB of cold anon on a
/// nearly full host is squeezed from 8 to about 5.3 GiB. The cache probe, had it stepped
/// while the squeeze set the target, would be left below the cache the guest holds when a
/// squeeze ends: the guest meets that gap with its anon, `used` falls, the target relative
/// to it follows, and hot cache goes (0.10 stall-s, where MoM stalls none). The probe waits
/// while a squeeze runs: no stall, and more reclaimed than MoM.
#[test]
fn the_cache_probe_waits_while_a_squeeze_sets_the_target() {
    let path = scenarios_dir().join("../docs/examples/unseen-post-squeeze.toml");
    let text = std::fs::read_to_string(&path).expect("docs/examples/unseen-post-squeeze.toml");
    let scenario = Scenario::parse(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    let mut options = RunOptions::new(PolicyKind::Aerostat);
    options.log_actions = true;
    let aerostat = run(&scenario, options);
    let squeezes = aerostat
        .actions
        .iter()
        .filter(|(_, a)| a.vm == "g4-0" && a.reason.contains("cold anonymous memory"))
        .count();
    // 108 squeeze actions; 18 when each squeeze stopped at its first bite (session 25).
    assert!(
        squeezes >= 50,
        "g4's squeezes go on past their first bite: {squeezes}"
    );
    let mom = run(&scenario, RunOptions::new(PolicyKind::Mom)).summary;
    let s = aerostat.summary;
    assert_eq!(s.guest_stall_seconds, 0.0, "{s:?}");
    assert!(
        s.reclaimed_gib_hours > mom.reclaimed_gib_hours,
        "aerostat {} GiB·h, MoM {}",
        s.reclaimed_gib_hours,
        mom.reclaimed_gib_hours
    );
}
