use super::*;
use proptest::prelude::{prop_assert, prop_assert_eq, prop_assume, proptest};
use proptest::strategy::Strategy as Gen;

fn mib_s(n: u64) -> Bytes {
    Bytes::mib(n)
}

/// The pure geometric model: no fixed stop-and-copy pause (that one has its own test).
fn inputs(mem_mib: u64, dirty_mib_s: u64, bw_mib_s: u64) -> MigrationInputs {
    let mut inp = MigrationInputs::new(
        Bytes::mib(mem_mib),
        mib_s(dirty_mib_s),
        mib_s(bw_mib_s),
        Millis(300),
        Millis::secs(60),
    );
    inp.stop_and_copy = Millis::ZERO;
    inp
}

#[test]
fn the_fixed_stop_and_copy_pause_adds_to_downtime_as_in_qemu() {
    // 1 GiB, dirty 64 MiB/s, 128 MiB/s, limit 300 ms: QEMU stops at 32 MiB (≤ 38.4 MiB) as
    // without the fixed part, and the pause is 250 ms + 100 ms: over the limit, so pre-copy
    // converges but does not land.
    let mut inp = inputs(1024, 64, 128);
    inp.stop_and_copy = Millis(100);
    let p = predict(&inp, Strategy::PreCopy);
    assert_eq!(p.passes, 5);
    assert!(p.converges && !p.lands);
    assert_eq!(p.downtime, Some(Millis(250 + 100)));
    // A limit at or below the fixed part still converges (QEMU stops when nothing is left
    // beyond one limit's worth): chosen as the soonest to complete, never dropped.
    inp.downtime_limit = Millis(100);
    let p = predict(&inp, Strategy::PreCopy);
    assert!(p.converges, "{p:?}");
    let plan = choose(
        &inp,
        Allowed {
            postcopy: false,
            auto_converge: true,
        },
    );
    assert!(plan.chosen.is_some(), "{}", plan.reason);
    // An idle guest: the pause is the fixed part.
    let mut idle = inputs(512, 0, 128);
    idle.stop_and_copy = Millis(100);
    assert_eq!(
        predict(&idle, Strategy::PreCopy).downtime,
        Some(Millis(100))
    );
    assert_eq!(
        MigrationInputs::new(Bytes(1), Bytes(0), Bytes(1), Millis(1), Millis(1)).stop_and_copy,
        DEFAULT_STOP_AND_COPY
    );
}

#[test]
fn idle_guest_is_plain_precopy_in_one_pass() {
    let inp = inputs(512, 0, 128);
    let p = predict(&inp, Strategy::PreCopy);
    assert!(p.converges && p.lands);
    assert_eq!(p.total_time, Some(Millis(4000)));
    assert_eq!(p.downtime, Some(Millis::ZERO));
    assert_eq!(p.passes, 1);
    assert_eq!(p.bytes_sent, Some(Bytes::mib(512)));
    let plan = choose(&inp, Allowed::ALL);
    assert_eq!(plan.chosen, Some(Strategy::PreCopy));
    assert!(plan.within_budget);
    assert!(plan.reason.contains("cheapest"), "{}", plan.reason);
}

#[test]
fn zero_pages_shorten_the_first_pass() {
    let mut inp = inputs(512, 0, 128);
    inp.zero_fraction = Some(0.75);
    let p = predict(&inp, Strategy::PreCopy);
    assert_eq!(p.total_time, Some(Millis(1000)));
    assert_eq!(p.bytes_sent, Some(Bytes::mib(128)));
}

#[test]
fn geometric_precopy_matches_hand_computation() {
    // 1 GiB, dirty 64 MiB/s, 128 MiB/s: r = 0.5. Passes send 1024, 512, 256, 128, 64 MiB, …;
    // threshold = 128 MiB/s × 0.3 s = 38.4 MiB, so 32 MiB is the stop-and-copy.
    let inp = inputs(1024, 64, 128);
    let p = predict(&inp, Strategy::PreCopy);
    assert!(p.converges);
    assert_eq!(p.passes, 5);
    assert_eq!(p.downtime, Some(Millis(250)));
    assert_eq!(
        p.bytes_sent,
        Some(Bytes::mib(1024 + 512 + 256 + 128 + 64 + 32))
    );
    assert_eq!(p.total_time, Some(Millis(15750)));
}

#[test]
fn closed_form_tail_agrees_with_explicit_passes() {
    // r = 0.97 needs more than EXPLICIT_PASSES passes: the closed form takes over.
    let mut inp = inputs(1024, 97, 100);
    inp.max_time = Millis::secs(100_000);
    let p = predict(&inp, Strategy::PreCopy);
    assert!(p.converges);
    assert!(p.passes > EXPLICIT_PASSES, "{p:?}");
    // Explicit reference.
    let (b, thr) = (100.0 * 1048576.0, 100.0 * 1048576.0 * 0.3);
    let (mut pend, mut t, mut n) = (1024.0 * 1048576.0, 0.0, 0u64);
    while pend > thr {
        t += pend / b;
        pend *= 0.97;
        n += 1;
    }
    t += pend / b;
    assert_eq!(p.passes, n);
    let got = p.total_time.expect("converges").as_secs_f64();
    assert!((got - t).abs() < 0.01, "{got} vs {t}");
}

#[test]
fn rewriting_guest_on_a_capped_link_needs_postcopy() {
    // The lab case: 512 MiB guest rewriting 256 MiB, 32 MiB/s.
    let mut inp = inputs(512, 256, 32);
    inp.working_set = Some(Bytes::mib(256));
    let pre = predict(&inp, Strategy::PreCopy);
    assert!(!pre.converges);
    assert!(pre.passes >= 2, "{pre:?}");
    let auto = predict(&inp, Strategy::AutoConverge);
    assert!(
        auto.converges,
        "99 % throttle brings 256 MiB/s under 32: {auto:?}"
    );
    assert!(!auto.lands);
    assert_eq!(auto.max_throttle, THROTTLE_MAX);
    let pc = predict(&inp, Strategy::PostCopyAfterFirstPass);
    assert!(pc.lands);
    // 16 s first pass + 20 ms + 256 MiB / 32 MiB/s.
    assert_eq!(pc.total_time, Some(Millis(24020)));
    assert_eq!(pc.postcopy_time, Millis(8000));
    let plan = choose(&inp, Allowed::ALL);
    assert_eq!(plan.chosen, Some(Strategy::PostCopyAfterFirstPass));
    assert!(
        plan.reason.contains("pre-copy never converges"),
        "{}",
        plan.reason
    );
    // Without post-copy nothing lands; auto-converge is the only one that completes.
    let plan = choose(
        &inp,
        Allowed {
            postcopy: false,
            auto_converge: true,
        },
    );
    assert_eq!(plan.chosen, Some(Strategy::AutoConverge));
    assert!(!plan.within_budget);
    let plan = choose(
        &inp,
        Allowed {
            postcopy: false,
            auto_converge: false,
        },
    );
    assert_eq!(plan.chosen, None);
    assert!(plan.reason.contains("not allowed"), "{}", plan.reason);
}

#[test]
fn auto_converge_can_land_where_precopy_cannot() {
    // Dirty 1.5× the bandwidth: the throttle has to pass 33 % for it to converge.
    let inp = inputs(256, 96, 64);
    assert!(!predict(&inp, Strategy::PreCopy).converges);
    let auto = predict(&inp, Strategy::AutoConverge);
    assert!(auto.lands, "{auto:?}");
    assert!(auto.max_throttle >= 40, "{auto:?}");
    let plan = choose(&inp, Allowed::ALL);
    assert_eq!(plan.chosen, Some(Strategy::AutoConverge));
}

#[test]
fn zero_bandwidth_lands_nothing() {
    let inp = inputs(512, 0, 0);
    for p in predict_all(&inp) {
        assert!(!p.converges, "{p:?}");
    }
    assert_eq!(choose(&inp, Allowed::ALL).chosen, None);
}

fn live(elapsed_ms: u64, remaining_mib: u64, dirty_mib_s: u64, syncs: u64) -> LiveStats {
    LiveStats {
        elapsed: Millis(elapsed_ms),
        transferred: Bytes::mib(100),
        remaining: Bytes::mib(remaining_mib),
        dirty_rate: mib_s(dirty_mib_s),
        bandwidth: Some(mib_s(32)),
        dirty_sync_count: syncs,
    }
}

#[test]
fn replan_switches_when_precopy_stops_landing() {
    let inp = inputs(512, 0, 32);
    let allowed = Allowed::ALL;
    // During the first pass, planned as pre-copy: keep going.
    let r = replan(
        &inp,
        Some(Strategy::PreCopy),
        allowed,
        &live(2000, 400, 0, 1),
    );
    assert_eq!(r.step, Step::Continue, "{}", r.reason);
    // After it, the guest turns out to dirty 200 MiB/s: switch.
    let r = replan(
        &inp,
        Some(Strategy::PreCopy),
        allowed,
        &live(16000, 250, 200, 2),
    );
    assert_eq!(r.step, Step::SwitchToPostcopy, "{}", r.reason);
    assert!(r.reason.contains("does not converge"), "{}", r.reason);
    assert!(r.postcopy_now.lands);
    // Without post-copy: continue until the budget is spent, then cancel.
    let no = Allowed {
        postcopy: false,
        auto_converge: true,
    };
    let r = replan(&inp, Some(Strategy::PreCopy), no, &live(16000, 250, 200, 2));
    assert_eq!(r.step, Step::Continue);
    let r = replan(&inp, Some(Strategy::PreCopy), no, &live(60000, 250, 200, 9));
    assert_eq!(r.step, Step::Cancel);
    assert!(r.reason.contains("not possible"), "{}", r.reason);
}

#[test]
fn replan_follows_the_plan_and_the_deadline() {
    let inp = inputs(512, 256, 32);
    let plan = Some(Strategy::PostCopyAfterFirstPass);
    let r = replan(&inp, plan, Allowed::ALL, &live(5000, 400, 0, 1));
    assert_eq!(r.step, Step::Continue, "{}", r.reason);
    let r = replan(&inp, plan, Allowed::ALL, &live(16000, 256, 250, 2));
    assert_eq!(r.step, Step::SwitchToPostcopy);
    assert!(r.reason.contains("first pass done"), "{}", r.reason);
    // Still in the first pass but post-copy of what is left only just fits: switch now.
    let r = replan(
        &inp,
        Some(Strategy::PreCopy),
        Allowed::ALL,
        &live(50000, 320, 0, 1),
    );
    assert_eq!(r.step, Step::SwitchToPostcopy, "{}", r.reason);
    let r = replan(
        &inp,
        Some(Strategy::PostCopyAtOnce),
        Allowed::ALL,
        &live(0, 512, 0, 1),
    );
    assert_eq!(r.step, Step::SwitchToPostcopy);
}

#[test]
fn replan_keeps_the_probe_rate_while_the_working_set_is_saturated() {
    // Measured: 262 MiB/s over a 262 MiB working set; after pass 1 QEMU reports 26 MiB/s
    // (262 MiB per 10 s pass) with 255 MiB pending: the guest did not slow down.
    let mut inp = inputs(512, 262, 32);
    inp.working_set = Some(Bytes::mib(262));
    let plan = Some(Strategy::PreCopy);
    let r = replan(&inp, plan, Allowed::ALL, &live(9900, 255, 26, 2));
    assert_eq!(r.step, Step::SwitchToPostcopy, "{}", r.reason);
    assert!(!r.precopy.converges);
    // Pending well below the working set: the live rate is believed.
    let r = replan(&inp, plan, Allowed::ALL, &live(9900, 40, 2, 2));
    assert_eq!(r.step, Step::Continue, "{}", r.reason);
}

fn arb_inputs() -> impl Gen<Value = MigrationInputs> {
    (
        1u64..=64 * 1024, // memory MiB
        0u64..=4096,      // dirty MiB/s
        1u64..=4096,      // bandwidth MiB/s
        0u64..=2000,      // downtime ms
        1u64..=3600,      // budget s
        proptest::option::of(0.0f64..=1.0),
        proptest::option::of(1u64..=64 * 1024),
        0u64..=200,                              // fixed stop-and-copy ms
        proptest::option::of(1u64..=256 * 1024), // traffic budget MiB
    )
        .prop_map(
            |(m, d, b, dt, budget, z, w, fixed, traffic)| MigrationInputs {
                memory: Bytes::mib(m),
                dirty_rate: Bytes::mib(d),
                bandwidth: Bytes::mib(b),
                downtime_limit: Millis(dt),
                max_time: Millis::secs(budget),
                zero_fraction: z,
                working_set: w.map(Bytes::mib),
                postcopy_switch: DEFAULT_POSTCOPY_SWITCH,
                stop_and_copy: Millis(fixed),
                max_bytes: traffic.map(Bytes::mib),
            },
        )
}

/// A rewriting guest that pre-copy lands within time but not within a traffic budget moves
/// by post-copy after the first pass: pre-copy resends what it dirties, post-copy does not.
#[test]
fn a_traffic_budget_moves_a_rewriting_guest_to_postcopy() {
    // 4 GiB, dirty 96 MiB/s over 128 MiB/s: pre-copy converges (r = 0.75) in time, but its
    // passes resend what was dirtied — 15.9 GiB on the wire against 7.0 GiB for post-copy
    // after the first pass (4 GiB, then the 3 GiB dirtied meanwhile).
    let mut inp = inputs(4096, 96, 128);
    inp.max_time = Millis::secs(600);
    let pre = predict(&inp, Strategy::PreCopy);
    assert!(pre.lands, "{pre:?}");
    let pre_bytes = pre.bytes_sent.expect("converges");
    let post = predict(&inp, Strategy::PostCopyAfterFirstPass);
    let post_bytes = post.bytes_sent.expect("converges");
    assert_eq!(
        format!("{pre_bytes} / {post_bytes}"),
        "15.91 GiB / 7.00 GiB"
    );

    inp.max_bytes = Some(Bytes((pre_bytes.0 + post_bytes.0) / 2));
    assert!(!predict(&inp, Strategy::PreCopy).lands);
    let plan = choose(
        &inp,
        Allowed {
            postcopy: true,
            auto_converge: true,
        },
    );
    assert!(plan.within_budget, "{}", plan.reason);
    assert_eq!(
        plan.chosen,
        Some(Strategy::PostCopyAfterFirstPass),
        "{}",
        plan.reason
    );
    assert!(
        plan.reason.contains("over the traffic budget"),
        "{}",
        plan.reason
    );
    assert!(plan.reason.contains("on the wire"), "{}", plan.reason);
    // Without post-copy nothing lands; the plan says so and still names what completes.
    let plan = choose(
        &inp,
        Allowed {
            postcopy: false,
            auto_converge: false,
        },
    );
    assert!(!plan.within_budget, "{}", plan.reason);
}

/// Mid-migration, what was already sent counts against the traffic budget: pre-copy that
/// would overrun it switches to post-copy, or, without post-copy, is cancelled once it is
/// spent.
#[test]
fn replan_spends_the_traffic_budget_as_it_goes() {
    let mut planned = inputs(4096, 96, 128);
    planned.max_time = Millis::secs(600);
    planned.max_bytes = Some(Bytes::gib(6));
    let live = LiveStats {
        elapsed: Millis::secs(40),
        transferred: Bytes::gib(5),
        remaining: Bytes::mib(1500),
        dirty_rate: mib_s(96),
        bandwidth: Some(mib_s(128)),
        dirty_sync_count: 3,
    };
    let both = Allowed {
        postcopy: true,
        auto_converge: true,
    };
    let r = replan(&planned, Some(Strategy::PreCopy), both, &live);
    assert_eq!(r.step, Step::SwitchToPostcopy, "{}", r.reason);
    assert!(r.reason.contains("traffic budget is left"), "{}", r.reason);

    let pre_only = Allowed {
        postcopy: false,
        auto_converge: false,
    };
    let r = replan(&planned, Some(Strategy::PreCopy), pre_only, &live);
    assert_eq!(r.step, Step::Continue, "{}", r.reason);
    let spent = LiveStats {
        transferred: Bytes::gib(6),
        ..live
    };
    let r = replan(&planned, Some(Strategy::PreCopy), pre_only, &spent);
    assert_eq!(r.step, Step::Cancel, "{}", r.reason);
    assert!(r.reason.starts_with("traffic budget"), "{}", r.reason);
}

proptest! {
    #[test]
    fn more_bandwidth_is_never_slower(inp in arb_inputs(), extra in 1u64..=4096) {
        let mut faster = inp.clone();
        faster.bandwidth = inp.bandwidth + Bytes::mib(extra);
        for s in [Strategy::PreCopy, Strategy::PostCopyAfterFirstPass, Strategy::PostCopyAtOnce] {
            let slow = predict(&inp, s);
            let fast = predict(&faster, s);
            if slow.converges {
                prop_assert!(fast.converges, "{s}: {slow:?} vs {fast:?}");
                prop_assert!(fast.total_time <= slow.total_time, "{s}: {slow:?} vs {fast:?}");
            }
        }
    }

    #[test]
    fn precopy_diverges_iff_dirty_reaches_bandwidth(inp in arb_inputs()) {
        let mut inp = inp;
        inp.working_set = None;
        let first = inp.first_pass_bytes();
        let thr = inp.bandwidth.as_f64() * inp.downtime_limit.as_secs_f64();
        // The interesting case: the memory does not fit in one downtime.
        prop_assume!(thr > 0.0 && first > thr);
        let p = predict(&inp, Strategy::PreCopy);
        prop_assert_eq!(!p.converges, inp.dirty_rate >= inp.bandwidth, "{:?}", p);
    }

    #[test]
    fn postcopy_always_completes_with_the_switch_as_downtime(inp in arb_inputs()) {
        for s in [Strategy::PostCopyAfterFirstPass, Strategy::PostCopyAtOnce] {
            let p = predict(&inp, s);
            prop_assert!(p.converges);
            prop_assert_eq!(p.downtime, Some(inp.postcopy_switch));
        }
    }

    #[test]
    fn predictions_are_consistent(inp in arb_inputs()) {
        for p in predict_all(&inp) {
            prop_assert_eq!(p.converges, p.total_time.is_some());
            if p.lands {
                prop_assert!(p.converges);
                prop_assert!(p.total_time.expect("converges") <= inp.max_time);
                prop_assert!(p.downtime.expect("converges") <= inp.downtime_limit);
                if let Some(m) = inp.max_bytes {
                    // Rounded to whole bytes on the way out.
                    prop_assert!(p.bytes_sent.expect("converges").0 <= m.0 + 1, "{:?}", p);
                }
            }
            if let (Some(t), Some(d)) = (p.total_time, p.downtime) {
                prop_assert!(d <= t + Millis(1), "{:?}", p);
            }
            if p.strategy == Strategy::PreCopy && p.converges {
                // Pre-copy sends at least the non-zero memory once.
                let sent = p.bytes_sent.expect("converges").as_f64();
                prop_assert!(sent + 1.0 >= inp.first_pass_bytes().min(inp.memory.as_f64()));
            }
        }
    }

    #[test]
    fn choose_picks_the_first_that_lands(inp in arb_inputs(), postcopy: bool, auto: bool) {
        let allowed = Allowed { postcopy, auto_converge: auto };
        let plan = choose(&inp, allowed);
        if let Some(s) = plan.chosen {
            prop_assert!(allowed.permits(s));
        }
        let first = Strategy::ALL
            .iter()
            .map(|s| predict(&inp, *s))
            .find(|p| allowed.permits(p.strategy) && p.lands);
        prop_assert_eq!(plan.within_budget, first.is_some());
        if let Some(f) = first {
            prop_assert_eq!(plan.chosen, Some(f.strategy));
        }
        if postcopy {
            prop_assert!(plan.chosen.is_some(), "post-copy always completes");
        }
    }
}
