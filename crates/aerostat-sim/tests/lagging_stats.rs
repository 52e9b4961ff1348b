//! Guest statistics that lag the balloon, as QEMU's polled stats do on a real host
//! (`stats_interval`): between polls the policy reads the last poll's numbers next to the
//! live `actual`. Read against the live `actual`, a deflate-on-oom guest's stats from before
//! an inflate say its use is the balloon less than it is (a real guest's balloon dived to
//! 272 MiB that way, session 18), and a swap guest's MemFree from before an inflate says it
//! holds less than it does.

use std::path::Path;

use aerostat_core::PolicyKind;
use aerostat_sim::{RunOptions, Scenario, run};

const LAGGING: &str = r#"
[scenario]
name = "lagging-stats"
duration = "2h"
seed = 1

[host]
memory = "16GiB"
reserve = "1GiB"

[[vm]]
name = "doo"
count = 4
memory = "1GiB"
deflate_on_oom = true
stats_interval = "2s"
[vm.workload]
kind = "diurnal"
working_set = "300MiB"
peak = "600MiB"
period = "20m"
page_cache = "100MiB"

[[vm]]
name = "swapper"
count = 2
memory = "2GiB"
swap = "1GiB"
stats_interval = "2s"
[vm.workload]
kind = "steady"
working_set = "500MiB"
cold = "400MiB"
page_cache = "200MiB"
"#;

/// The aerostat policy reclaims from guests whose stats lag (without it: 0.6 stall-s and
/// 1,141 actions, the balloon going down and back), and stalls none of them.
#[test]
fn lagging_stats_neither_dive_a_balloon_nor_stall_a_guest() {
    let scenario =
        Scenario::parse(LAGGING, Path::new("lagging.toml")).unwrap_or_else(|e| panic!("{e}"));
    let s = run(&scenario, RunOptions::new(PolicyKind::Aerostat)).summary;
    assert!(s.reclaimed_gib_hours > 4.0, "{s:?}");
    assert_eq!(s.guest_stall_seconds, 0.0, "{s:?}");
    assert_eq!(s.guest_oom_kills, 0, "{s:?}");
    assert!(s.actions < 900, "the balloons went down and back: {s:?}");
}

/// A stats interval of zero is refused, naming the key (leave it out for every tick).
#[test]
fn a_stats_interval_is_refused_at_zero() {
    let zero = LAGGING.replacen("stats_interval = \"2s\"", "stats_interval = \"0s\"", 1);
    let err = Scenario::parse(&zero, Path::new("lagging.toml"))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("`vm[0] (doo).stats_interval`: must be positive"),
        "{err}"
    );
}
