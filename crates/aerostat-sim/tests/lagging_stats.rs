//! Guest statistics that lag the balloon, as QEMU's polled stats do on a real host
//! (`stats_interval`): between polls the policy reads the last poll's numbers next to the
//! live `actual`. Read against the live `actual`, a deflate-on-oom guest's stats from before
//! an inflate say its use is the balloon less than it is (a real guest's balloon dived to
//! 272 MiB that way, session 18), and a swap guest's MemFree from before an inflate says it
//! holds less than it does.

use std::path::Path;

use aerostat_core::{Millis, PolicyKind, Rule};
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

/// Guests whose stats QEMU polls every 10 s, and whose burst (1 GiB in 20 s) pushes hot
/// memory into swap.
const SWAP_DISK: &str = r#"
[scenario]
name = "swap-disk"
duration = "1h"
seed = 3

[host]
memory = "16GiB"
reserve = "1GiB"

[[vm]]
name = "swapper"
count = 4
memory = "2GiB"
swap = "1GiB"
stats_interval = "10s"
[vm.workload]
kind = "burst"
working_set = "400MiB"
peak = "1400MiB"
at = "40m"
rise = "20s"
hold = "10m"
cold = "300MiB"
page_cache = "200MiB"
"#;

/// When the first pressure deflate of `swapper-0` came, and the run's summary.
fn first_pressure_deflate(toml: &str) -> (Option<Millis>, aerostat_sim::Summary) {
    let scenario =
        Scenario::parse(toml, Path::new("swap-disk.toml")).unwrap_or_else(|e| panic!("{e}"));
    let mut options = RunOptions::new(PolicyKind::Aerostat);
    options.log_actions = true;
    let result = run(&scenario, options);
    let first = result
        .actions
        .iter()
        .find(|(_, a)| a.vm == "swapper-0" && a.rule == Rule::DeflatePressure)
        .map(|(t, _)| *t);
    (first, result.summary)
}

/// A guest polled every 10 s is read between its polls: before session 33 its stats counted
/// as stale after 5 policy intervals, so it was blind half the time, and each first reading
/// after a blind spell had no counters to compare with — this burst into swap stalled it
/// 12.7 s. A swap disk the host reads and writes (`swap_disk`, the daemon's
/// `vm.NAME.swap_disk`) shows the burst's swap-outs the tick they happen, where the stats
/// show the growth up to 10 s later: the policy gives memory back before any swap-in.
#[test]
fn a_guest_polled_every_10s_is_read_between_polls_and_its_swap_disk_shows_swap_outs_at_once() {
    let with_disk = SWAP_DISK.replace(
        "stats_interval = \"10s\"",
        "stats_interval = \"10s\"\nswap_disk = true",
    );
    let (stats_only, s0) = first_pressure_deflate(SWAP_DISK);
    let (disk, s1) = first_pressure_deflate(&with_disk);
    let disk = disk.unwrap_or_else(|| panic!("no pressure deflate with the disk: {s1:?}"));
    assert!(
        s0.guest_stall_seconds < 2.0,
        "blind between polls again? {s0:?}"
    );
    // From the stats alone the growth shows (and is met) before any pressure does.
    assert!(
        stats_only.is_none_or(|t| disk.0 + 1_000 <= t.0),
        "the disk shows pressure at {disk:?}, the stats at {stats_only:?}"
    );
    assert!(
        s1.guest_stall_seconds + 0.1 < s0.guest_stall_seconds,
        "the swap-outs the disk shows spare the stall: {s0:?}\n{s1:?}"
    );
    assert_eq!(s0.guest_oom_kills + s1.guest_oom_kills, 0, "{s0:?}\n{s1:?}");
}

/// `swap_disk` on a guest without swap is refused, naming the key.
#[test]
fn a_swap_disk_without_swap_is_refused() {
    let no_swap = SWAP_DISK
        .replace("swap = \"1GiB\"\n", "")
        .replace("stats_interval = \"10s\"", "swap_disk = true");
    let err = Scenario::parse(&no_swap, Path::new("swap-disk.toml"))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("`vm[0] (swapper).swap_disk`: the guest has no swap"),
        "{err}"
    );
}
