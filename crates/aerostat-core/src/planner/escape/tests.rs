use super::*;
use crate::observation::HostSample;
use proptest::prelude::{prop_assert, proptest};

fn vm(name: &str, configured_gib: u64, min_gib: u64) -> VmSample {
    let mut v = VmSample::new(name, Bytes::gib(configured_gib), Bytes::gib(configured_gib));
    v.min = Some(Bytes::gib(min_gib));
    v.overhead = Bytes::mib(256);
    v
}

fn host(vms: Vec<VmSample>) -> Observation {
    Observation {
        time: Millis::ZERO,
        host: HostSample {
            total: Bytes::gib(16),
            ..HostSample::default()
        },
        vms,
    }
}

fn settings() -> EscapeSettings {
    EscapeSettings {
        bandwidth: Bytes::mib(128),
        downtime_limit: Millis(300),
        max_time: Millis::secs(120),
        postcopy: true,
    }
}

#[test]
fn floor_demand_counts_pinned_memory_and_balloonless_guests_whole() {
    let mut a = vm("a", 4, 1);
    a.pinned = Bytes::gib(3);
    assert_eq!(floor_demand(&a), Bytes::gib(3) + Bytes::mib(256));
    let mut b = vm("b", 4, 1);
    b.balloon = false;
    b.actual = Bytes::gib(2);
    assert_eq!(floor_demand(&b), Bytes::gib(2) + Bytes::mib(256));
}

/// Two small guests and a big one whose floors (128 MiB + 128 MiB + 6 GiB 128 MiB =
/// 6.375 GiB) exceed a 6 GiB host: only `big` leaving makes the rest fit, though the small
/// ones migrate faster. `big_migrates`: whether QEMU would migrate it.
fn one_big_guest_must_leave(big_migrates: bool) -> Escape {
    let mut vms = vec![vm("small-0", 2, 0), vm("small-1", 2, 0), vm("big", 8, 6)];
    for v in &mut vms {
        v.overhead = Bytes::mib(128);
    }
    vms[2].migratable = big_migrates;
    choose_escape(
        &host(vms),
        Bytes::gib(6),
        &[Some(Bytes::ZERO); 3],
        &[],
        &settings(),
        None,
    )
}

#[test]
fn prefers_the_guest_whose_departure_makes_the_rest_fit() {
    let e = one_big_guest_must_leave(true);
    let best = e.chosen().expect("a candidate");
    assert_eq!(best.name, "big", "{}", e.reason);
    assert!(best.fits_after);
    assert!(!e.ranking[1].fits_after);
    assert!(e.reason.contains("move big"), "{}", e.reason);
    assert!(e.reason.contains("the rest then fit"), "{}", e.reason);
}

#[test]
fn among_sufficient_guests_the_cheaper_migration_wins() {
    // Both shed enough; `busy` dirties memory at the link rate, `quiet` does not.
    let obs = host(vec![vm("busy", 4, 3), vm("quiet", 4, 3)]);
    let rates = [Some(Bytes::mib(200)), Some(Bytes::mib(1))];
    let e = choose_escape(&obs, Bytes::gib(5), &rates, &[], &settings(), None);
    assert_eq!(
        e.chosen().map(|c| c.name.as_str()),
        Some("quiet"),
        "{}",
        e.reason
    );
    assert!(e.ranking[0].predicted_time < e.ranking[1].predicted_time);
}

#[test]
fn priority_makes_a_guest_dearer_to_move() {
    let mut important = vm("important", 4, 3);
    important.priority = 10.0;
    let obs = host(vec![important, vm("ordinary", 4, 3)]);
    let e = choose_escape(
        &obs,
        Bytes::gib(5),
        &[Some(Bytes::ZERO); 2],
        &[],
        &settings(),
        None,
    );
    assert_eq!(e.chosen().map(|c| c.name.as_str()), Some("ordinary"));
}

#[test]
fn unmeasured_dirty_rate_is_assumed_pessimistic() {
    let obs = host(vec![vm("unknown", 4, 3), vm("measured", 4, 3)]);
    let e = choose_escape(
        &obs,
        Bytes::gib(5),
        &[None, Some(Bytes::mib(8))],
        &[],
        &settings(),
        None,
    );
    assert_eq!(e.chosen().map(|c| c.name.as_str()), Some("measured"));
    assert!(
        e.reason.contains("unmeasured, assumed = link"),
        "{}",
        e.reason
    );
}

#[test]
fn migrating_guests_are_neither_counted_nor_candidates() {
    let mut leaving = vm("leaving", 8, 8);
    leaving.migrating = true;
    let obs = host(vec![leaving, vm("staying", 4, 1)]);
    assert_eq!(floors_need(&obs), Bytes::gib(1) + Bytes::mib(256));
    let e = choose_escape(&obs, Bytes::gib(1), &[None, None], &[], &settings(), None);
    assert_eq!(e.ranking.len(), 1);
    assert_eq!(e.ranking[0].name, "staying");
}

#[test]
fn a_guest_that_cannot_migrate_is_never_chosen_and_is_named() {
    // `big` has a device QEMU will not migrate: the small ones are all there is.
    let e = one_big_guest_must_leave(false);
    assert_eq!(e.ranking.len(), 2, "{}", e.reason);
    assert!(e.ranking.iter().all(|c| c.name != "big"), "{}", e.reason);
    assert!(e.reason.contains("(big cannot migrate)"), "{}", e.reason);

    let mut alone = vm("gpu", 8, 8);
    alone.migratable = false;
    let e = choose_escape(
        &host(vec![alone]),
        Bytes::gib(1),
        &[None],
        &[],
        &settings(),
        None,
    );
    assert!(e.chosen().is_none());
    assert!(e.reason.contains("no guest can leave"), "{}", e.reason);
    assert!(e.reason.contains("(gpu cannot migrate)"), "{}", e.reason);
}

#[test]
fn no_candidate_says_so() {
    let mut leaving = vm("leaving", 8, 8);
    leaving.migrating = true;
    let obs = host(vec![leaving]);
    let e = choose_escape(&obs, Bytes::gib(1), &[None], &[], &settings(), None);
    assert!(e.chosen().is_none());
    assert!(e.reason.contains("no guest can leave"), "{}", e.reason);
}

#[test]
fn rss_below_memory_shortens_the_plan() {
    let mut touched = vm("touched", 4, 3);
    touched.rss = Some(Bytes::gib(4) + Bytes::mib(256));
    let mut fresh = vm("fresh", 4, 3);
    fresh.rss = Some(Bytes::mib(256) + Bytes::mib(512));
    let obs = host(vec![touched, fresh]);
    let e = choose_escape(
        &obs,
        Bytes::gib(5),
        &[Some(Bytes::ZERO); 2],
        &[],
        &settings(),
        None,
    );
    assert_eq!(e.chosen().map(|c| c.name.as_str()), Some("fresh"));
    // 512 MiB of non-zero memory at 128 MiB/s, then the fixed stop-and-copy pause.
    assert_eq!(
        e.ranking[0].predicted_time,
        Millis(4000) + crate::planner::migration::DEFAULT_STOP_AND_COPY
    );
}

#[test]
fn timer_waits_for_an_unbroken_grace_period() {
    let grace = Millis::secs(30);
    let mut t = EscapeTimer::default();
    assert!(!t.observe(Millis::secs(0), true, grace));
    assert!(!t.observe(Millis::secs(29), true, grace));
    assert!(t.observe(Millis::secs(30), true, grace));
    assert!(!t.observe(Millis::secs(31), false, grace));
    assert_eq!(t.since(), None);
    assert!(!t.observe(Millis::secs(40), true, grace));
    assert!(t.observe(Millis::secs(70), true, grace));
    t.reset();
    assert!(!t.observe(Millis::secs(71), true, grace));
}

#[test]
fn pressure_sees_floors_at_once_and_thrashing_from_the_swap_in_rate() {
    let mut w = PressureWatch::default();
    let limit = Some(Bytes::mib(16));
    let mut obs = host(vec![vm("a", 4, 2)]);
    obs.host.swap_in = Bytes::gib(1);
    assert_eq!(
        w.observe(&obs, Bytes::gib(8), limit, None),
        None,
        "first sample: no rate yet"
    );
    obs.time = Millis::secs(10);
    obs.host.swap_in = Bytes::gib(1) + Bytes::mib(100);
    assert_eq!(
        w.observe(&obs, Bytes::gib(8), limit, None),
        None,
        "10 MiB/s is under the limit"
    );
    obs.time = Millis::secs(20);
    obs.host.swap_in = Bytes::gib(1) + Bytes::mib(400);
    let p = w
        .observe(&obs, Bytes::gib(8), limit, None)
        .expect("30 MiB/s");
    assert_eq!(
        p,
        Pressure::HostThrashing {
            swap_in_per_sec: Bytes::mib(30),
            limit: Bytes::mib(16)
        }
    );
    assert!(p.to_string().contains("30 MiB/s"), "{p}");
    obs.time = Millis::secs(30);
    obs.host.swap_in = Bytes::ZERO;
    assert_eq!(
        w.observe(&obs, Bytes::gib(8), limit, None),
        None,
        "counter reset"
    );
    assert!(matches!(
        w.observe(&obs, Bytes::gib(2), None, None),
        Some(Pressure::FloorsDoNotFit { .. })
    ));
}

proptest! {
    #[test]
    fn ranking_is_complete_sorted_and_deterministic(
        specs in proptest::collection::vec((1u64..64, 0u64..64, 0u64..400, 1u32..40), 1..8),
        capacity_gib in 1u64..64,
    ) {
        let vms: Vec<VmSample> = specs
            .iter()
            .enumerate()
            .map(|(i, (cfg, min, _, prio))| {
                let mut v = vm(&format!("vm-{i}"), *cfg, (*min).min(*cfg));
                v.priority = f64::from(*prio) / 4.0;
                v
            })
            .collect();
        let rates: Vec<Option<Bytes>> = specs.iter().map(|s| Some(Bytes::mib(s.2))).collect();
        let obs = host(vms);
        let capacity = Bytes::gib(capacity_gib);
        let a = choose_escape(&obs, capacity, &rates, &[], &settings(), None);
        let b = choose_escape(&obs, capacity, &rates, &[], &settings(), None);
        prop_assert!(a == b);
        // Post-copy always completes, so every guest is a candidate.
        prop_assert!(a.ranking.len() == obs.vms.len());
        for w in a.ranking.windows(2) {
            let key = |c: &EscapeCandidate| (c.fits_after, c.plan.within_budget);
            prop_assert!(key(&w[0]) >= key(&w[1]));
            if key(&w[0]) == key(&w[1]) {
                prop_assert!(w[0].score >= w[1].score);
            }
        }
        for c in &a.ranking {
            prop_assert!(c.fits_after == (a.need - c.relief <= capacity));
        }
    }
}

#[test]
fn escape_inputs_are_the_ones_the_ranking_plans_with() {
    let mut v = vm("a", 8, 1);
    v.rss = Some(Bytes::gib(2) + v.overhead);
    let s = settings();
    let measured = escape_inputs(&v, Some(Bytes::mib(64)), &s);
    assert_eq!(measured.memory, Bytes::gib(8));
    assert_eq!(measured.dirty_rate, Bytes::mib(64));
    assert_eq!(measured.zero_fraction, Some(0.75));
    // Unmeasured: the link rate, pessimistic on purpose.
    assert_eq!(escape_inputs(&v, None, &s).dirty_rate, s.bandwidth);
    let e = choose_escape(
        &host(vec![v.clone()]),
        Bytes::gib(1),
        &[Some(Bytes::mib(64))],
        &[],
        &s,
        None,
    );
    let plan = choose(
        &measured,
        Allowed {
            postcopy: true,
            auto_converge: true,
        },
    );
    assert_eq!(e.chosen().expect("a candidate").plan, plan);
}

/// Guests under pressure lacking memory the host cannot give: working-set pressure, once it
/// is at least MIN_UNMET, and after the floors (which say more when they do not fit).
#[test]
fn pressure_sees_working_sets_that_do_not_fit_from_the_unmet_need() {
    let mut w = PressureWatch::default();
    let obs = host(vec![vm("a", 4, 2), vm("b", 4, 2)]);
    let (capacity, small) = (Bytes::gib(8), Some(MIN_UNMET - Bytes(1)));
    assert_eq!(w.observe(&obs, capacity, None, None), None, "no unmet need");
    assert_eq!(w.observe(&obs, capacity, None, small), None, "noise");
    let p = w.observe(&obs, capacity, None, Some(Bytes::mib(704)));
    assert_eq!(
        p,
        Some(Pressure::WorkingSetsDoNotFit {
            unmet: Bytes::mib(704)
        })
    );
    let p = p.expect("pressure");
    assert_eq!(p.unmet(), Some(Bytes::mib(704)));
    assert!(p.to_string().contains("lack 704 MiB"), "{p}");
    assert!(matches!(
        w.observe(&obs, Bytes::gib(2), None, Some(Bytes::mib(704))),
        Some(Pressure::FloorsDoNotFit { .. })
    ));
}

/// Under working-set pressure a guest's relief is all it holds (overhead + actual), and the
/// rest fit after it when that covers the unmet need: the small guest covers 1 GiB, and its
/// faster migration wins; 3 GiB only the big one covers.
#[test]
fn working_set_pressure_ranks_by_the_memory_a_departure_frees() {
    let mut small = vm("small", 2, 1);
    small.actual = Bytes::gib(2);
    let mut big = vm("big", 8, 1);
    big.actual = Bytes::gib(6);
    let obs = host(vec![small, big]);
    let rates = [Some(Bytes::ZERO); 2];
    let lacking = |gib| {
        choose_escape(
            &obs,
            Bytes::gib(8),
            &rates,
            &[],
            &settings(),
            Some(Bytes::gib(gib)),
        )
    };
    let e = lacking(1);
    assert_eq!(e.chosen().map(|c| c.name.as_str()), Some("small"));
    assert_eq!(e.ranking[0].relief, Bytes::gib(2) + Bytes::mib(256));
    assert!(e.ranking.iter().all(|c| c.fits_after));
    assert!(
        e.reason
            .starts_with("guests under memory pressure lack 1.00 GiB"),
        "{}",
        e.reason
    );
    let e = lacking(3);
    assert_eq!(e.chosen().map(|c| c.name.as_str()), Some("big"));
    assert_eq!(e.need, Bytes::gib(11));
}

/// A guest whose QEMU holds more than its balloon claims (`rss − overhead` well above
/// `actual`) frees that too when it leaves: host facts over the balloon's claim. The liar
/// claims 1 GiB and holds 6, so only its departure covers 3 GiB, though its claim alone
/// would not.
#[test]
fn a_departure_frees_what_the_host_holds_beyond_the_balloons_claim() {
    let mut honest = vm("honest", 4, 1);
    honest.actual = Bytes::gib(3);
    honest.rss = Some(Bytes::gib(3) + honest.overhead);
    let mut liar = vm("liar", 8, 1);
    liar.actual = Bytes::gib(1);
    liar.rss = Some(Bytes::gib(6) + liar.overhead);
    let mut obs = host(vec![honest, liar]);
    let escape = |obs: &Observation| {
        choose_escape(
            obs,
            Bytes::gib(8),
            &[Some(Bytes::ZERO); 2],
            &[],
            &settings(),
            Some(Bytes::gib(3) + Bytes::mib(512)),
        )
    };
    let liar = |e: &Escape| -> EscapeCandidate {
        let found = e.ranking.iter().find(|c| c.name == "liar");
        found.expect("liar").clone()
    };
    let e = escape(&obs);
    assert_eq!(liar(&e).relief, Bytes::gib(6) + Bytes::mib(256));
    assert!(liar(&e).fits_after, "{}", e.reason);
    assert_eq!(
        e.chosen().map(|c| c.name.as_str()),
        Some("liar"),
        "{}",
        e.reason
    );

    // What host swap can hold of it is not counted against the capacity
    // (`kept_memory::counted`), so it is no relief either: with 5 GiB of swap free, only
    // the claim.
    obs.host.swap_free = Bytes::gib(5);
    assert_eq!(liar(&escape(&obs)).relief, Bytes::gib(1) + Bytes::mib(256));
}

/// Working sets that do not fit by 512 MiB, and `ramping` growing 8 MiB/s (14 GiB over
/// the half-hour outlook): `app` covers this tick's lack in half the time, but the
/// rest would not fit for long after it; `ramping` sheds its growth as it leaves, in under
/// 4× app's priority-weighted seconds. A departure priced far above the cheapest (`db`,
/// priority 4, dirtying memory nearly at the link rate without post-copy) is not chosen for
/// the outlook. Without growth the cheapest covering now wins, as before.
#[test]
fn a_departure_that_covers_the_growth_seen_wins_within_reason() {
    let mut app = vm("app", 8, 1);
    app.actual = Bytes::gib(6);
    let mut ramping = vm("ramping", 16, 1);
    ramping.actual = Bytes::gib(12);
    let mut db = vm("db", 64, 40);
    db.actual = Bytes::gib(60);
    db.priority = 4.0;
    let obs = host(vec![app, db, ramping]);
    let settings = EscapeSettings {
        bandwidth: Bytes::gib(1),
        max_time: Millis::secs(600),
        postcopy: false,
        ..settings()
    };
    let rates = [
        Some(Bytes::mib(50)),
        Some(Bytes::mib(900)),
        Some(Bytes::mib(100)),
    ];
    let unmet = Some(Bytes::mib(512));
    let capacity = Bytes::gib(80);
    let growth = [Bytes::ZERO, Bytes::ZERO, Bytes::mib(8)];
    let e = choose_escape(&obs, capacity, &rates, &growth, &settings, unmet);
    assert_eq!(e.need_ahead, e.need + Bytes::mib(8 * 1800));
    let ranked: Vec<&str> = e.ranking.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(ranked, ["ramping", "app", "db"], "{}", e.reason);
    assert!(
        e.reason.contains("and 30m ahead at the growth seen"),
        "{}",
        e.reason
    );
    assert!(e.reason.contains("but not 30m ahead"), "{}", e.reason);
    let db = e
        .ranking
        .iter()
        .find(|c| c.name == "db")
        .expect("db ranked");
    assert!(db.fits_ahead, "the database would cover the outlook too");

    let still = choose_escape(&obs, capacity, &rates, &[], &settings, unmet);
    assert_eq!(still.chosen().map(|c| c.name.as_str()), Some("app"));
    assert_eq!(still.need_ahead, still.need);
}
