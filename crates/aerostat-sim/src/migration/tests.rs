use std::path::Path;

use aerostat_core::PolicyKind;

use super::*;
use crate::engine::{RunOptions, Simulation};
use crate::scenario::Scenario;

/// Two 4 GiB guests whose 3.5 GiB floors (7.125 GiB with overheads) do not fit an 8 GiB host
/// minus its 1 GiB reserve: one has to leave. `extra` goes into `[migration]`, `dirty` into
/// both workloads.
fn scenario(extra: &str, dirty: &str) -> Scenario {
    let text = format!(
        r#"
[scenario]
name = "two-floors"
duration = "10m"
[host]
memory = "8GiB"
reserve = "1GiB"
swap = "8GiB"
[migration]
escape = true
grace = "10s"
{extra}
[[vm]]
name = "a"
memory = "4GiB"
min = "3584MiB"
priority = 2.0
[vm.workload]
kind = "steady"
working_set = "1GiB"
noise = 0.0
{dirty}
[[vm]]
name = "b"
memory = "4GiB"
min = "3584MiB"
[vm.workload]
kind = "steady"
working_set = "1GiB"
noise = 0.0
{dirty}
"#
    );
    Scenario::parse(&text, Path::new("two-floors.toml")).unwrap_or_else(|e| panic!("{e}"))
}

/// A 256 MiB/s link: a guest takes several ticks to leave.
const SLOW_LINK: &str = "bandwidth = \"256MiB/s\"";

fn sim(scenario: Scenario) -> Simulation {
    let mut o = RunOptions::new(PolicyKind::Aerostat);
    o.log_actions = true;
    o.samples = 0;
    Simulation::new(scenario, o)
}

/// Advances until `done` or the end; returns whether `done` held.
fn until(s: &mut Simulation, mut done: impl FnMut(&Simulation) -> bool) -> bool {
    while !s.done() {
        if done(s) {
            return true;
        }
        s.advance(1);
    }
    done(s)
}

#[test]
fn memory_is_freed_only_when_the_migration_completes() {
    let mut s = sim(scenario(SLOW_LINK, ""));
    assert!(until(&mut s, |s| s.migrating().is_some()), "no migration");
    let started = s.time();
    // The lower-priority guest leaves: the same relief, half the cost.
    assert_eq!(s.migrating(), Some("b"));
    let mut during = Vec::new();
    while s.migrating().is_some() {
        assert!(!s.migrated("b"), "left before completion");
        during.push(s.host_used());
        s.advance(1);
    }
    assert!(s.migrated("b"));
    assert!(
        during.len() >= 2,
        "a 4 GiB guest migrates in more than a tick"
    );
    let last = *during.last().expect("ticks while migrating");
    // Once it has left: its touched memory and QEMU's overhead are gone.
    assert!(
        s.host_used() + Bytes::gib(1) < last,
        "host used {} after, {} during",
        s.host_used(),
        last
    );
    let r = &s.migrations()[0];
    assert_eq!(r.outcome, Outcome::Completed);
    // It started at the control step of the tick just run.
    assert_eq!(r.started_s + 1.0, started.as_secs_f64());
    let ended = r.ended_s.expect("completed");
    assert!((ended - r.started_s - r.total_time_s).abs() < 1e-9);
    assert!(s.time().as_secs_f64() >= ended);
    assert!(r.reason.contains("move b"), "{}", r.reason);
    assert!(r.trigger.contains("floors need"), "{}", r.trigger);
    // The grace period held: the floors did not fit from t = 0.
    assert!(r.started_s >= 10.0, "started at {}", r.started_s);
}

#[test]
fn downtime_is_counted_as_the_guests_stall_and_in_the_summary() {
    let mut s = sim(scenario(SLOW_LINK, ""));
    assert!(until(&mut s, |s| s.migrated("b")));
    let r = s.migrations()[0].clone();
    assert!(r.downtime_s > 0.0);
    let stall_b = s.stall_of("b").expect("b");
    assert!(stall_b >= r.downtime_s, "{stall_b} < {}", r.downtime_s);
    let summary = s.finish().summary;
    assert_eq!(summary.migrations, Some(1));
    let d = summary.migration_downtime_seconds.expect("escape scenario");
    assert!((d - r.downtime_s).abs() < 1e-6, "{d} vs {}", r.downtime_s);
    assert!(summary.guest_stall_seconds >= d);
    let b = summary.per_vm.iter().find(|v| v.name == "b").expect("b");
    assert!(b.migrated_at.is_some());
    assert!(!b.lost, "a migrated VM is not lost");
    assert_eq!(summary.host_oom_kills, 0);
    let gib = summary.migrated_gib.expect("escape scenario");
    assert!((gib - r.bytes_sent as f64 / Bytes::GIB as f64).abs() < 1e-6);
}

#[test]
fn the_controller_leaves_a_migrating_guests_balloon_alone() {
    let mut s = sim(scenario(SLOW_LINK, ""));
    assert!(until(&mut s, |s| s.migrating().is_some()));
    let start = s.time();
    let target = s.target_of("b").expect("b");
    while s.migrating().is_some() {
        assert_eq!(
            s.target_of("b"),
            Some(target),
            "target moved while migrating"
        );
        s.advance(1);
    }
    let end = s.time();
    let touched: Vec<_> = s
        .actions()
        .iter()
        .filter(|(t, a)| a.vm == "b" && *t >= start && *t < end)
        .collect();
    assert!(
        touched.is_empty(),
        "actions on a migrating guest: {touched:?}"
    );
    // And after it left, none either.
    s.advance(60);
    assert!(s.actions().iter().all(|(t, a)| a.vm != "b" || *t < start));
}

#[test]
fn a_precopy_that_will_not_land_switches_to_postcopy_or_is_cancelled() {
    // The plan said pre-copy (from a measured rate); the guest really dirties 4× faster than
    // the link: the run switches to post-copy after the first pass, as `aerostat migrate`
    // does, or, without post-copy, is cancelled at the budget.
    let mut spec = MigrationSpec {
        bandwidth: Bytes::mib(128),
        ..MigrationSpec::default()
    };
    let inputs = aerostat_core::planner::migration::MigrationInputs::new(
        Bytes::gib(4),
        Bytes::mib(512),
        spec.bandwidth,
        spec.downtime,
        spec.max_time,
    );
    let planned = predict(&inputs, Strategy::PreCopy);
    assert!(!planned.lands);
    let (run, note, cancelled) =
        Escape::new(spec.clone(), 1).run_as(planned.clone(), &inputs, Bytes::mib(512));
    assert_eq!(run.strategy, Strategy::PostCopyAfterFirstPass);
    assert!(run.converges && run.postcopy_time > Millis::ZERO);
    assert!(!cancelled);
    assert!(note.contains("switched to post-copy"), "{note}");
    spec.postcopy = false;
    let (run, note, cancelled) =
        Escape::new(spec, 1).run_as(planned.clone(), &inputs, Bytes::mib(512));
    assert!(cancelled);
    assert_eq!(run, planned);
    assert!(note.contains("cancelled"), "{note}");
    // A plan that lands runs as planned.
    let calm = aerostat_core::planner::migration::MigrationInputs {
        dirty_rate: Bytes::mib(8),
        ..inputs
    };
    let p = predict(&calm, Strategy::PreCopy);
    assert!(p.lands);
    let (run, note, cancelled) =
        Escape::new(MigrationSpec::default(), 1).run_as(p.clone(), &calm, Bytes::mib(8));
    assert_eq!((run, note.as_str(), cancelled), (p, "", false));
}

#[test]
fn without_postcopy_a_migration_that_cannot_converge_is_cancelled_and_the_guest_stays() {
    let mut s = sim(scenario(
        "bandwidth = \"128MiB/s\"\npostcopy = false\nmax_time = \"12s\"",
        "dirty_rate = \"512MiB/s\"",
    ));
    assert!(until(&mut s, |s| s
        .migrations()
        .first()
        .is_some_and(|m| m.outcome != Outcome::Running)));
    let r = s.migrations()[0].clone();
    assert_eq!(r.outcome, Outcome::Cancelled, "{r:?}");
    assert!((r.ended_s.expect("ended") - r.started_s - 12.0).abs() < 1e-9);
    assert!(r.note.contains("cancelled"), "{}", r.note);
    assert!(!s.migrated(&r.vm));
    assert_eq!(r.downtime_s, 0.0);
    let summary = s.finish().summary;
    assert_eq!(summary.migrations, Some(0));
    assert!(summary.per_vm.iter().all(|v| v.migrated_at.is_none()));
}

#[test]
fn no_escape_runs_the_same_host_without_migrations() {
    let mut o = RunOptions::new(PolicyKind::Aerostat);
    o.escape = false;
    o.samples = 0;
    let r = Simulation::new(scenario("", ""), o).run();
    assert!(r.migrations.is_empty());
    assert_eq!(r.summary.migrations, Some(0));
    assert_eq!(r.summary.migration_downtime_seconds, Some(0.0));
}

/// Four guests with 3 GiB floors (12.25 GiB with overheads) on 7 GiB: two must leave.
fn four_guests(peers: u32) -> Scenario {
    four_guests_over(peers, "1GiB/s")
}

fn four_guests_over(peers: u32, bandwidth: &str) -> Scenario {
    let text = format!(
        r#"
[scenario]
name = "four-floors"
duration = "10m"
[host]
memory = "8GiB"
reserve = "1GiB"
swap = "8GiB"
[migration]
escape = true
grace = "5s"
bandwidth = "{bandwidth}"
peers = {peers}
[[vm]]
name = "g"
count = 4
memory = "4GiB"
min = "3GiB"
[vm.workload]
kind = "steady"
working_set = "512MiB"
noise = 0.0
"#
    );
    Scenario::parse(&text, Path::new("four-floors.toml")).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn departures_are_bounded_by_the_peers_and_run_one_at_a_time() {
    for peers in [1, 2, 3] {
        let mut s = sim(four_guests(peers));
        s.advance(u64::MAX);
        let m = s.migrations().to_vec();
        // Two departures make the rest fit: a third peer is never used.
        assert_eq!(m.len(), peers.min(2) as usize, "peers {peers}: {m:?}");
        assert!(m.iter().all(|r| r.outcome == Outcome::Completed));
        for w in m.windows(2) {
            let ended = w[0].ended_s.expect("completed");
            // One at a time, and a full grace period after the first left.
            assert!(w[1].started_s >= ended + 5.0 - 1.0, "{m:?}");
        }
    }
}

/// Migrations longer than the grace period: the next one still waits a full grace period
/// after the first has ended (the timer does not run during a migration).
#[test]
fn a_full_grace_period_follows_a_long_migration() {
    let mut s = sim(four_guests_over(2, "128MiB/s"));
    s.advance(u64::MAX);
    let m = s.migrations().to_vec();
    assert_eq!(m.len(), 2, "{m:?}");
    let first = m[0].ended_s.expect("completed") - m[0].started_s;
    assert!(
        first > 5.0,
        "the first migration outlasts the grace period: {m:?}"
    );
    let ended = m[0].ended_s.expect("completed");
    assert!(m[1].started_s >= ended + 5.0 - 1.0, "{m:?}");
}

#[test]
fn the_measured_rate_is_the_true_one_within_the_noise_and_pure() {
    let sc = scenario("", "");
    let spec = sc.migration.clone().expect("[migration]");
    let e = Escape::new(spec, 7);
    let g = Guest::new(sc.vms[0].clone(), 7, 0, false);
    let truth = g.dirty_rate();
    assert!(truth > 0.0);
    for t in 0..100 {
        let m = e.measure(&g, 0, Millis::secs(t)).as_f64();
        assert!(
            (m - truth).abs() <= MEASURE_NOISE * truth + 1.0,
            "{m} vs {truth}"
        );
        assert_eq!(
            e.measure(&g, 0, Millis::secs(t)),
            e.measure(&g, 0, Millis::secs(t))
        );
    }
}
