use super::*;
use crate::observation::{Blocks, GuestStats, HostSample};

const GIB: u64 = 1 << 30;

fn settings() -> PolicySettings {
    PolicySettings {
        reserve: Bytes::gib(1),
        interval: Millis::secs(1),
        ..PolicySettings::default()
    }
}

fn host(total_gib: u64, free_gib: u64) -> HostSample {
    HostSample {
        total: Bytes::gib(total_gib),
        free: Bytes::gib(free_gib),
        available: Bytes::gib(free_gib),
        ..HostSample::default()
    }
}

/// A guest of `configured` GiB at `actual` using `used` MiB with `cache` MiB of cache.
fn vm(name: &str, configured: u64, actual: u64, used_mib: u64, cache_mib: u64, t: u64) -> VmSample {
    let mut v = VmSample::new(name, Bytes(configured), Bytes(actual));
    let free = actual.saturating_sub((used_mib + cache_mib) << 20);
    v.stats = GuestStats {
        total: Some(Bytes(actual)),
        free: Some(Bytes(free)),
        available: Some(Bytes(free + (cache_mib << 20))),
        disk_caches: Some(Bytes::mib(cache_mib)),
        swap_in: Some(Bytes(0)),
        major_faults: Some(0),
        oom_kills: Some(0),
        async_scans: Some(0),
        async_reclaims: Some(0),
        last_update: Some(Millis::secs(t)),
        ..GuestStats::default()
    };
    v
}

fn obs(t: u64, vms: Vec<VmSample>) -> Observation {
    Observation {
        time: Millis::secs(t),
        host: host(64, 32),
        vms,
    }
}

#[test]
fn an_idle_guest_is_reclaimed_toward_its_need() {
    let mut p = AerostatPolicy::new(settings());
    let props = p.propose(&obs(0, vec![vm("a", 8 * GIB, 8 * GIB, 1024, 0, 0)]), &[]);
    assert_eq!(props.len(), 1);
    let t = props[0].target;
    assert_eq!(props[0].rule, Rule::Reclaim);
    // need = 1 GiB used + 0 cache + max(4 % of 8 GiB, 128 MiB) headroom ≈ 1.33 GiB; the
    // free memory above the headroom goes in one step.
    assert!(t < Bytes::gib(2) && t > Bytes::gib(1), "{t}");
    let reason = props[0].reason.text().expect("written out by propose");
    assert!(reason.contains("need"), "{reason}");
}

/// The class's headroom (4 % of 8 GiB ≈ 328 MiB for a general guest) is whole while the
/// host has 20 % available, half at 15 %, and down to the 64 MiB sliver at 10 % or less.
#[test]
fn a_nearly_full_host_shrinks_the_headroom_to_a_sliver() {
    let target_with_available = |available_mib: u64| {
        let mut p = AerostatPolicy::new(settings());
        // 32 GiB: half its headroom (655 MiB) is more than its burst room (512 MiB).
        let mut o = obs(0, vec![vm("a", 32 * GIB, 32 * GIB, 1024, 0, 0)]);
        o.host.available = Bytes::mib(available_mib);
        let props = p.propose(&o, &[]);
        let reason = props[0].reason.text().unwrap_or_default().to_string();
        let cut = reason.contains("host nearly full");
        assert_eq!(cut, available_mib * 10 < 64 * 1024 * 3, "{reason}");
        props[0].target.0 >> 20
    };
    let headroom = 0.04 * 32768.0;
    let whole = 1024 + headroom as u64;
    let half = 1024 + (0.5 * headroom) as u64;
    // Whole from 30 % of the host available; half at 25 %; at 20 % only the sliver is
    // left of the headroom, and half the burst room (512 + 16 MiB for 32 GiB) is more;
    // none of either at 15 % and below.
    assert_eq!(target_with_available(32 * 1024), whole);
    assert_eq!(target_with_available(64 * 1024 * 3 / 10 + 1), whole);
    assert_eq!(target_with_available(64 * 1024 / 4), half);
    assert_eq!(target_with_available(64 * 1024 / 5 + 1), 1024 + 256 + 8);
    assert_eq!(target_with_available(64 * 1024 * 3 / 20), 1024 + 64);
    assert_eq!(target_with_available(1024), 1024 + 64);
}

/// `unseen-7372`: after an OOM kill the guest looks idle; reclaimed to its floor, the
/// restarted workload was killed again at once, 720 times in 6 h.
#[test]
fn room_a_killed_workload_used_is_kept_for_its_restart() {
    let mut p = AerostatPolicy::new(settings());
    let reading = |used_mib: u64, kills: u64, t: u64| {
        let mut v = vm("a", 8 * GIB, 4 * GIB, used_mib, 0, t);
        v.stats.oom_kills = Some(kills);
        obs(t, vec![v])
    };
    let target = |p: &mut AerostatPolicy, o: &Observation| {
        let props = p.propose(o, &[Bytes::gib(4)]);
        props.first().map_or(Bytes::gib(4), |x| x.target)
    };
    target(&mut p, &reading(3000, 0, 0));
    // Killed: `used` falls to 200 MiB, but 3000 MiB stay for the restart ...
    let after_kill = target(&mut p, &reading(200, 1, 1));
    assert!(after_kill >= Bytes::mib(3000), "{after_kill}");
    let later = target(&mut p, &reading(200, 1, 300));
    assert!(later >= Bytes::mib(3000), "{later}");
    let props = p.propose(&reading(200, 1, 301), &[Bytes::gib(4)]);
    let reason = props
        .first()
        .and_then(|x| x.reason.text())
        .unwrap_or_default();
    assert!(reason.contains("used before an OOM kill"), "{reason}");
    // ... for ten minutes.
    let after_hold = target(&mut p, &reading(200, 1, 700));
    assert!(after_hold < Bytes::mib(1000), "{after_hold}");
}

/// `unseen-1110` with stats every 10 s: the burst and the kill fall between two polls, so
/// the last `used` is from before the burst and keeping it only held the restart to the
/// size that killed it (two 1 GiB guests, 102 kills each, the balloon never moved). The kill
/// proves the guest was short of its size: the restart gets half of what the balloon holds
/// back on top.
#[test]
fn a_kill_between_polls_gives_the_restart_more_than_the_size_it_was_killed_at() {
    let mut p = AerostatPolicy::new(settings());
    let reading = |used_mib: u64, kills: u64, t: u64| {
        let mut v = vm("a", GIB, 512 << 20, used_mib, 0, t);
        v.stats.oom_kills = Some(kills);
        obs(t, vec![v])
    };
    let target = |p: &mut AerostatPolicy, o: &Observation| {
        let props = p.propose(o, &[Bytes::mib(512)]);
        props.first().map_or(Bytes::mib(512), |x| x.target)
    };
    target(&mut p, &reading(300, 0, 0));
    let after_kill = target(&mut p, &reading(100, 1, 10));
    assert!(after_kill >= Bytes::mib(768), "{after_kill}");
}

/// A 1 GiB guest's class headroom is 128 MiB; on a roomy host it keeps 256 MiB — half a
/// second of a 512 MiB/s allocator, what a 1 s loop misses of a burst on average — plus
/// the guards' 16 MiB dead band, which would otherwise let `used` creep into it.
#[test]
fn a_roomy_hosts_guest_keeps_room_for_half_a_second_of_a_burst() {
    let target_with_available = |available_gib: u64| {
        let mut p = AerostatPolicy::new(settings());
        let mut o = obs(0, vec![vm("a", GIB, GIB, 500, 0, 0)]);
        o.host.available = Bytes::gib(available_gib);
        let props = p.propose(&o, &[]);
        let reason = props[0].reason.text().unwrap_or_default().to_string();
        (props[0].target.0 >> 20, reason)
    };
    let (roomy, reason) = target_with_available(32);
    assert_eq!(roomy, 500 + 256 + 16, "{reason}");
    assert!(reason.contains("burst room: at least"), "{reason}");
    let (full, reason) = target_with_available(4);
    assert_eq!(full, 500 + 64, "{reason}");
}

/// A guest the operator knows to burst gets the room the operator asked for (Hyper-V's
/// memory buffer) instead of the class's; like the class's, it goes on a nearly full host.
#[test]
fn the_operators_headroom_raises_the_class_headroom_while_the_host_has_room() {
    let target = |headroom: Option<Bytes>, available_gib: u64| {
        let mut p = AerostatPolicy::new(settings());
        let mut a = vm("a", 4 * GIB, 4 * GIB, 1000, 0, 0);
        a.headroom = headroom;
        let mut o = obs(0, vec![a]);
        o.host.available = Bytes::gib(available_gib);
        // No proposal: the guest stays where it is, at its configured 4 GiB.
        p.propose(&o, &[])
            .first()
            .map_or(4096, |x| x.target.0 >> 20)
    };
    // Class `general`: 4 % of 4 GiB (164 MiB), and the 256 (+16) MiB burst room on a roomy
    // host.
    assert_eq!(target(None, 32), 1000 + 256 + 16);
    assert_eq!(target(Some(Bytes::gib(1)), 32), 1000 + 1024);
    // Never more than the guest can move: it keeps all of its memory.
    assert_eq!(target(Some(Bytes::gib(8)), 32), 4096);
    // A nearly full host: the sliver, whatever the operator's headroom.
    assert_eq!(target(Some(Bytes::gib(1)), 4), target(None, 4));
}

/// A guest whose `used` jumped by 600 MiB in one interval and then refaulted has made a
/// burst that outran its room: from then on it keeps that much free above its hot cache,
/// halving each day (`cron-bursts`: an hourly job stalled 173.6 s in 12 h, 17.1 s with
/// this — its first burst only).
#[test]
fn a_burst_that_outran_the_room_is_remembered() {
    let mut p = AerostatPolicy::new(settings());
    let at = |p: &mut AerostatPolicy, t: u64, used_mib: u64, faults: u64| {
        let mut v = vm("a", 8 * GIB, 8 * GIB, used_mib, 0, t);
        v.stats.major_faults = Some(faults);
        p.propose(&obs(t, vec![v]), &[])
            .first()
            .map_or(8192, |x| x.target.0 >> 20)
    };
    // Quiet: 1000 MiB used; class headroom 4 % of 8 GiB (328 MiB), burst room 512 (+16) MiB.
    assert_eq!(at(&mut p, 0, 1000, 0), 1000 + 512 + 16);
    at(&mut p, 1, 1000, 0);
    // The burst: +600 MiB in a second, then 2,000 refaults a second.
    at(&mut p, 2, 1600, 0);
    at(&mut p, 3, 1600, 2000);
    // Quiet again, long after the growth estimate has decayed: the 600 MiB kept free
    // (less 400 s of a day's halving).
    let mut last = 0;
    for t in 4..400 {
        last = at(&mut p, t, 1000, 2000);
    }
    assert!((1000 + 595..=1000 + 600).contains(&last), "{last}");
    // A day later, half of it (the class's burst room, 512 + 16 MiB, is more).
    let day = 24 * 3600;
    assert_eq!(at(&mut p, day + 3, 1000, 2000), 1000 + 512 + 16);
}

/// On a nearly full host a learned burst's room shrinks with the class headroom — unless the
/// burst OOM-killed the guest: then it is kept whole (reviewer-2 `many-tiny-guests`: hourly
/// cron jobs in 1 GiB guests were killed at every run, 186 kills in 6 h; 40 with this, the
/// first run of each).
#[test]
fn a_burst_that_oom_killed_the_guest_keeps_its_room_on_a_nearly_full_host() {
    let quiet_target_after = |killed: bool| {
        let mut p = AerostatPolicy::new(settings());
        let mut at = |t: u64, used_mib: u64, faults: u64, kills: u64| {
            let mut v = vm("a", 8 * GIB, 8 * GIB, used_mib, 0, t);
            v.stats.major_faults = Some(faults);
            v.stats.oom_kills = Some(kills);
            let mut o = obs(t, vec![v]);
            // 4 of 64 GiB available: no class headroom, no burst room.
            o.host.available = Bytes::gib(4);
            p.propose(&o, &[])
                .first()
                .map_or(8192, |x| x.target.0 >> 20)
        };
        let kills = u64::from(killed);
        at(0, 1000, 0, 0);
        // The job: killed at once (its memory freed), or not.
        at(1, if killed { 200 } else { 1000 }, 0, kills);
        at(60, 200, 0, kills);
        // Its restart climbs 600 MiB in a second and refaults.
        at(61, 800, 0, kills);
        at(62, 800, 2000, kills);
        // Quiet again, past the ten minutes kept for a restart.
        let mut last = 0;
        for t in 63..700 {
            last = at(t, 1000, 2000, kills);
        }
        last
    };
    assert_eq!(quiet_target_after(false), 1000 + 64);
    let kept = quiet_target_after(true);
    assert!((1000 + 595..=1000 + 600).contains(&kept), "{kept}");
}

/// The guards drop a raise smaller than their 16 MiB dead band, so a guest whose `used`
/// creeps up a few MiB a second is not followed until it has crept 16 MiB: the burst room
/// includes that much, and the free memory the guest really keeps never falls below the
/// burst room itself (`unseen-3261`: without it, 12 GiB guests with no swap and no cache
/// kept 507 of their 512 MiB, and a 512 MiB/s burst OOM-killed two of them).
#[test]
fn creeping_usage_never_eats_into_the_burst_room() {
    let mut ctl = crate::controller::Controller::new(Box::new(AerostatPolicy::new(settings())));
    let configured = 12 * GIB;
    let mut actual = configured;
    for t in 0..120u64 {
        // Settle for a minute, then creep up 5 MiB a second.
        let used = 3000 + t.saturating_sub(60) * 5;
        let decision = ctl.tick(&obs(t, vec![vm("a", configured, actual, used, 0, t)]));
        if let Some(to) = decision.actions.iter().find_map(|a| a.balloon_target()) {
            actual = to.0; // the balloon gets there within the second
        }
        if t >= 30 {
            let free = (actual >> 20) as i64 - used as i64;
            assert!(
                free >= 512,
                "t={t}: {free} MiB free above used, burst room 512"
            );
        }
    }
}

/// One tick of a guest using 3 GiB of its 4 GiB whose host measured `idle_mib` idle (the
/// host backs all it holds resident, and no more), with `swap` declared by the operator.
/// `tick`: the time, the balloon's `actual`, and the guest's swap counters, major faults
/// and reclaim counters so far (MiB, MiB, faults, pages scanned, pages reclaimed).
#[derive(Clone, Copy)]
struct ColdTick {
    t: u64,
    actual_mib: u64,
    swap_in_mib: u64,
    swap_out_mib: u64,
    faults: u64,
    scanned: u64,
    reclaimed: u64,
    /// The operator's swap declaration is gone this tick (a reconfigured VM).
    undeclared: bool,
}

fn cold_tick(t: u64, actual_mib: u64) -> ColdTick {
    ColdTick {
        t,
        actual_mib,
        swap_in_mib: 0,
        swap_out_mib: 0,
        faults: 0,
        scanned: 0,
        reclaimed: 0,
        undeclared: false,
    }
}

/// The policy's target (MiB) and reason at each tick, for the guest of `ColdTick`.
fn cold_anon_run(
    swap: Option<Bytes>,
    idle_mib: Option<u64>,
    ticks: &[ColdTick],
) -> Vec<(u64, String)> {
    let mut p = AerostatPolicy::new(settings());
    ticks
        .iter()
        .map(|k| {
            let mut v = vm("a", 4 * GIB, k.actual_mib << 20, 3072, 0, k.t);
            v.guest_swap = swap.filter(|_| !k.undeclared);
            v.stats.major_faults = Some(k.faults);
            v.stats.swap_in = Some(Bytes::mib(k.swap_in_mib));
            v.stats.swap_out = Some(Bytes::mib(k.swap_out_mib));
            v.stats.async_scans = Some(k.scanned);
            v.stats.async_reclaims = Some(k.reclaimed);
            v.coldness = idle_mib.map(|idle| crate::observation::Coldness {
                touched: Bytes::mib(3072 + 96),
                idle: Bytes::mib(idle),
                at: Millis::secs(1),
            });
            p.propose(&obs(k.t, vec![v]), &[])
                .first()
                .map(|x| {
                    (
                        x.target.0 >> 20,
                        x.reason.text().unwrap_or_default().to_string(),
                    )
                })
                .unwrap_or((k.actual_mib, String::new()))
        })
        .collect()
}

/// A guest using 3 GiB of its 4 GiB, 1 GiB of which the host measured idle beyond its free
/// memory and cache, with 2 GiB of swap the operator declared: the policy brings the
/// balloon to 64 MiB above what the guest holds, then squeezes it a bite below, so its LRU
/// pushes the cold anon into swap. Without the measurement, without declared swap, or under
/// pressure: never below its need.
#[test]
fn cold_anon_the_host_saw_idle_goes_into_declared_guest_swap() {
    let resident = 3072; // `vm` leaves the rest of `actual` free
    let run = cold_anon_run(
        Some(Bytes::gib(2)),
        Some(1024),
        &[
            cold_tick(0, 4096),
            cold_tick(1, 4096),
            cold_tick(2, resident + 64),
        ],
    );
    let (approach, reason) = &run[1];
    assert_eq!(*approach, resident + 64, "{reason}");
    assert!(
        reason.contains("cold anonymous memory into guest swap"),
        "{reason}"
    );
    let (bite, reason) = &run[2];
    assert_eq!(*bite, resident - 32, "{reason}");
    for (swap, idle, faults) in [
        (Some(Bytes::gib(2)), None, 0),
        (None, Some(1024), 0),
        (Some(Bytes::gib(2)), Some(1024), 5000),
        // Idle no more than the slack: nothing cold to speak of.
        (Some(Bytes::gib(2)), Some(64), 0),
    ] {
        let ticks = [
            cold_tick(0, resident + 64),
            ColdTick {
                faults,
                ..cold_tick(1, resident + 64)
            },
        ];
        let (target, reason) = &cold_anon_run(swap, idle, &ticks)[1];
        assert!(
            *target > resident,
            "{swap:?} {idle:?} {faults}: {target} ({reason})"
        );
    }
}

/// The balloon stopped at the approach point, and the guest's `used` has fallen 8 MiB since:
/// the squeeze bites now. Asking 8 MiB lower for the approach, a change the controller does
/// not send, held a real guest at the approach point until the squeeze timed out (CI).
#[test]
fn cold_anon_bites_when_used_fell_a_little_after_the_approach() {
    let resident = 3072;
    let run = cold_anon_run(
        Some(Bytes::gib(2)),
        Some(1024),
        &[
            cold_tick(0, 4096),
            cold_tick(1, 4096),
            // The approach asked for resident + 64; the balloon got there, and `used` is
            // 8 MiB lower than then (`vm` fixes used, so the balloon stands 8 MiB higher).
            cold_tick(2, resident + 64 + 8),
        ],
    );
    let (bite, reason) = &run[2];
    assert_eq!(*bite, resident - 32, "{reason}");
}

/// A real kernel keeps its watermark reserve free: MemAvailable counts it as taken (so
/// `used` does), MemFree does not. The bite is below `used` then, not below what MemFree
/// leaves, or the guest would reclaim the bite plus the reserve.
#[test]
fn cold_anon_bites_below_used_when_the_kernel_keeps_a_reserve_free() {
    let mut p = AerostatPolicy::new(settings());
    let at = |t: u64| {
        // A balloon at 3200 MiB, MemFree 128 MiB of which the kernel keeps 70 MiB:
        // MemAvailable 58 MiB.
        let mut v = vm("a", 4 * GIB, 3200 << 20, 3072 - 896, 0, t);
        v.stats.free = Some(Bytes::mib(128));
        v.stats.available = Some(Bytes::mib(58));
        v.guest_swap = Some(Bytes::gib(2));
        v.coldness = Some(crate::observation::Coldness {
            touched: Bytes::mib(3200),
            idle: Bytes::mib(1024),
            at: Millis::secs(t),
        });
        v
    };
    p.propose(&obs(0, vec![at(0)]), &[]);
    let props = p.propose(&obs(1, vec![at(1)]), &[]);
    // used = 3200 − 58 = 3142 MiB; resident (MemTotal − MemFree) = 3072 MiB.
    let reason = props[0].reason.text().unwrap_or_default();
    assert_eq!(props[0].target.0 >> 20, 3142 - 32, "{reason}");
}

/// The guest LRU's first pass: a real kernel swaps some hot anon out with the first bites
/// and back in within seconds. Up to 64 MiB of swap-ins in the first 5 s of the squeeze's
/// swap-out are its cost, not pressure; more, or later, stop it and deflate.
#[test]
fn cold_anon_tolerates_the_first_pass_only() {
    let swapping = |t: u64, swap_in_mib: u64| ColdTick {
        swap_in_mib,
        swap_out_mib: 32 * t,
        faults: swap_in_mib * 256,
        ..cold_tick(t, 3072 + 64 - 32 * t)
    };
    let still_squeezing = |ticks: &[ColdTick]| {
        let run = cold_anon_run(Some(Bytes::gib(2)), Some(1024), ticks);
        let (target, reason) = run.last().cloned().expect("a tick");
        let last = ticks.last().expect("a tick");
        (target < last.actual_mib, reason)
    };
    let base = [cold_tick(0, 3072 + 64), cold_tick(1, 3072 + 64)];
    // 40 MiB swapped back in over the first two seconds of swap-out: the squeeze goes on.
    let ticks = [
        &base[..],
        &[swapping(2, 0), swapping(3, 20), swapping(4, 40)],
    ]
    .concat();
    let (squeezing, reason) = still_squeezing(&ticks);
    assert!(squeezing, "{reason}");
    // 80 MiB: more than a first pass.
    let ticks = [
        &base[..],
        &[swapping(2, 0), swapping(3, 40), swapping(4, 80)],
    ]
    .concat();
    let (squeezing, reason) = still_squeezing(&ticks);
    assert!(!squeezing && reason.contains("under pressure"), "{reason}");
    // 10 MiB, but 8 s after the swap-out began: the squeeze reached hot anon.
    let mut ticks = base.to_vec();
    ticks.extend((2..=9).map(|t| swapping(t, 0)));
    ticks.push(swapping(10, 10));
    let (squeezing, reason) = still_squeezing(&ticks);
    assert!(!squeezing && reason.contains("under pressure"), "{reason}");
}

/// The first pass shows in reclaim efficiency too: the LRU scans hot pages it cannot tell
/// from cold yet, and keeps them. A real guest's first tick of swap-out read 6 % in one
/// run (48–56 % in others), and a squeeze that stopped on it ended at 45 MiB of the
/// 130-odd the others reached (CI, session 25). In the first 5 s of swap-out a low
/// efficiency is excused; later it stops the squeeze.
#[test]
fn cold_anon_excuses_a_low_reclaim_efficiency_in_the_first_pass_only() {
    // Tick `t` of a squeeze whose swap-out began at tick 2: 32 MiB a tick out, and the LRU
    // reclaiming 6 % of the pages it scans from tick `low_from` on (60 % before).
    let swapping = |t: u64, low_from: u64| {
        let ticks = t.saturating_sub(1);
        let low = t.saturating_sub(low_from.saturating_sub(1));
        let scanned = 20_000 * ticks;
        ColdTick {
            swap_out_mib: 32 * ticks,
            scanned,
            reclaimed: 12_000 * (ticks - low.min(ticks)) + 1_200 * low.min(ticks),
            ..cold_tick(t, 3072 + 64 - 32 * ticks)
        }
    };
    let squeezing_after = |last: u64, low_from: u64| {
        let mut ticks = vec![cold_tick(0, 3072 + 64), cold_tick(1, 3072 + 64)];
        ticks.extend((2..=last).map(|t| swapping(t, low_from)));
        let run = cold_anon_run(Some(Bytes::gib(2)), Some(2048), &ticks);
        let (target, reason) = run.last().cloned().expect("a tick");
        (target < ticks.last().expect("a tick").actual_mib, reason)
    };
    // 6 % on the second tick of swap-out, inside the first pass: the squeeze goes on.
    let (squeezing, reason) = squeezing_after(3, 3);
    assert!(squeezing, "{reason}");
    // 6 % 8 s after the swap-out began: the squeeze reached hot pages, and stops.
    let (squeezing, reason) = squeezing_after(10, 10);
    assert!(!squeezing, "{reason}");
    // The same run at 60 % goes on: the efficiency stopped it, nothing else.
    let (squeezing, reason) = squeezing_after(10, 11);
    assert!(squeezing, "{reason}");
}

/// A squeeze whose guest's swap is no longer declared ends, and does not pick up again when
/// the declaration comes back: only a new coldness window starts one. (Left standing, it
/// kept the cache probe waiting for a squeeze that could never go on — session 26's review.)
#[test]
fn cold_anon_a_squeeze_ends_when_its_swap_is_no_longer_declared() {
    let swapping = |t: u64| ColdTick {
        swap_out_mib: 32 * (t - 1),
        ..cold_tick(t, 3072 + 64 - 32 * (t - 1))
    };
    let run = |undeclared_at: Option<u64>| {
        let mut ticks = vec![cold_tick(0, 3072 + 64), cold_tick(1, 3072 + 64)];
        ticks.extend((2..=6).map(|t| ColdTick {
            undeclared: Some(t) == undeclared_at,
            ..swapping(t)
        }));
        cold_anon_run(Some(Bytes::gib(2)), Some(1024), &ticks)
    };
    let bites = |run: &[(u64, String)]| -> Vec<bool> {
        run.iter()
            .enumerate()
            .map(|(t, (target, _))| *target < 3072 + 64 - 32 * (t as u64).saturating_sub(1))
            .collect()
    };
    // Declared throughout: a bite every tick from the approach on.
    let all = run(None);
    assert!(bites(&all)[2..].iter().all(|b| *b), "{all:?}");
    // Undeclared at tick 4: no bite then, nor after the declaration is back.
    let cut = run(Some(4));
    assert_eq!(
        bites(&cut)[2..],
        [true, true, false, false, false],
        "{cut:?}"
    );
}

/// The `used` (MiB) the first proposal's reason gives ("need N MiB = used M + …").
fn used_in_reason(props: &[Proposal]) -> u64 {
    let reason = props[0].reason.text().unwrap_or_default();
    reason
        .split("used ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `used` in {reason}"))
}

/// A real 1 GiB guest with deflate-on-oom, its balloon at 771 MiB (measured, session 18):
/// MemTotal stays at 967 MiB (the kernel's own 57 MiB are never in it) and the balloon's
/// 253 MiB count as taken. With the device's property the policy reads the guest's use
/// (105 MiB, and the kernel's 57 MiB that MemTotal leaves out); without it, MemTotal is
/// not within 1 % of the configured size and the balloon reads as use.
#[test]
fn deflate_on_oom_balloon_is_not_read_as_use() {
    let used_read = |deflate_on_oom: Option<bool>| {
        let mut p = AerostatPolicy::new(settings());
        let mut v = vm("a", GIB, 771 << 20, 0, 0, 0);
        v.stats.total = Some(Bytes::kib(990_356));
        v.stats.free = Some(Bytes::kib(694_592));
        v.stats.available = Some(Bytes::kib(623_548));
        v.deflate_on_oom = deflate_on_oom;
        used_in_reason(&p.propose(&obs(0, vec![v]), &[]))
    };
    // 967 − 609 − 253 MiB, + 1024 − 967.
    assert_eq!(used_read(Some(true)), 105 + 57);
    assert_eq!(used_read(None), 105 + 253);
    // Without deflate-on-oom the same MemTotal holds no balloon.
    assert_eq!(used_read(Some(false)), 105 + 253);
}

/// A real guest's MemTotal leaves out what its kernel took at boot (code, page structs, a
/// DMA bounce buffer): 113 MiB of the lab's 512 MiB guest with a virtio-mem device. That
/// memory is used: read without it, 272 MiB of burst room was 159 MiB free in the guest.
#[test]
fn memory_the_kernel_keeps_out_of_memtotal_is_used() {
    let mut v = vm("a", Bytes::mib(1536).0, 512 << 20, 0, 0, 0);
    v.deflate_on_oom = Some(false);
    v.stats.total = Some(Bytes::mib(399));
    v.stats.free = Some(Bytes::mib(346));
    v.stats.available = Some(Bytes::mib(346));
    let r =
        reading::read(&v, &Memo::default(), Millis::ZERO, 1.0, Millis::secs(1)).expect("a reading");
    assert_eq!((r.used / MIB).round() as u64, 53 + 113);
    // The simulator's guests count their kernel in MemTotal: nothing is added.
    v.stats.total = Some(Bytes::mib(512));
    v.stats.free = Some(Bytes::mib(459));
    v.stats.available = Some(Bytes::mib(459));
    let r =
        reading::read(&v, &Memo::default(), Millis::ZERO, 1.0, Millis::secs(1)).expect("a reading");
    assert_eq!((r.used / MIB).round() as u64, 53);
}

/// What the kernel keeps out of MemTotal is measured only when the balloon at the stats is
/// known exactly: stats from before a deflate, next to the live `actual`, would read the
/// step as kernel memory — `used` up by the step, so a bigger deflate, and so on.
#[test]
fn hidden_kernel_memory_is_not_read_across_a_balloon_step() {
    let mut p = AerostatPolicy::new(settings());
    let tick = used_of_a_1gib_guest_using_100_mib;
    // 100 MiB used inside MemTotal, 57 MiB outside it.
    assert_eq!(tick(&mut p, 10_000, 1024, 9_000, 967), 157);
    // Inflated to 771 MiB; stats from before: the remembered 57.
    assert_eq!(tick(&mut p, 11_000, 771, 10_000, 967), 157);
    // Stats at the new size, the balloon still: measured again.
    assert_eq!(tick(&mut p, 12_000, 771, 11_000, 714), 157);
    // Deflated to 1 GiB; stats from before the deflate: still 57, not 1024 − 714.
    assert_eq!(tick(&mut p, 13_000, 1024, 12_000, 714), 157);
}

/// The `used` the policy reads at `t_ms` from a 1 GiB guest (no deflate-on-oom) whose
/// balloon is at `actual_mib` and whose stats, taken at `stats_at_ms`, show 100 MiB used of
/// a MemTotal of `total_mib`.
fn used_of_a_1gib_guest_using_100_mib(
    p: &mut AerostatPolicy,
    t_ms: u64,
    actual_mib: u64,
    stats_at_ms: u64,
    total_mib: u64,
) -> u64 {
    let mut v = vm("a", GIB, actual_mib << 20, 0, 0, 0);
    v.deflate_on_oom = Some(false);
    v.stats.total = Some(Bytes::mib(total_mib));
    v.stats.free = Some(Bytes::mib(total_mib - 100));
    v.stats.available = Some(Bytes::mib(total_mib - 100));
    v.stats.last_update = Some(Millis(stats_at_ms));
    let mut o = obs(0, vec![v]);
    o.time = Millis(t_ms);
    used_in_reason(&p.propose(&o, &[]))
}

/// A real 768 MiB guest (CI, session 23; the daemon's observations): inflated to 256 MiB,
/// then deflated to 408 MiB between two stats polls. Its per-CPU page lists kept 64 MiB of
/// the deflate's pages out of MemFree, and the stats before and after the deflate read a
/// 64 MiB/s rise in use while the live `actual` stood still at both ticks: growth headroom
/// took the idle guest to 522 MiB. A rise across a step of the stats' MemTotal counts
/// only once seen twice; the kernel's pages still count as used (the guest's own word).
#[test]
fn a_rise_across_a_balloon_step_the_stats_straddle_is_not_growth() {
    let mut p = AerostatPolicy::new(settings());
    // (tick ms, actual MiB, stats taken ms, MemTotal, MemAvailable, MemFree) as observed.
    let seen = [
        (75_452, 768, 75_000, 715.1, 631.2, 686.2),
        (76_448, 308, 75_000, 715.1, 631.2, 686.2),
        (77_448, 408, 76_000, 254.1, 166.8, 221.8),
        (78_448, 408, 77_000, 355.1, 204.2, 259.2),
    ];
    let mib = |m: f64| Bytes((m * MIB) as u64);
    let mut last = Vec::new();
    for (t, actual, at, total, available, free) in seen {
        let mut v = vm("a", 768 << 20, actual << 20, 0, 0, 0);
        v.deflate_on_oom = Some(false);
        v.stats.total = Some(mib(total));
        v.stats.available = Some(mib(available));
        v.stats.free = Some(mib(free));
        v.stats.disk_caches = Some(mib(2.8));
        v.stats.last_update = Some(Millis(at));
        let mut o = obs(0, vec![v]);
        o.time = Millis(t);
        last = p.propose(&o, &[]);
    }
    let reason = last[0].reason.text().unwrap_or_default();
    assert_eq!(used_in_reason(&last), 204, "{reason}");
    assert!(
        last[0].target <= Bytes::mib(204 + 272 + 1),
        "the burst room, no growth headroom: {reason}"
    );
}

/// A burst's first second, read just after a small deflate (`unseen-2151`, simulated: a
/// 4 GiB guest without swap, 377 MiB/s): a rise far beyond what the balloon moved is the
/// workload's and counts at once. It was taken for the move's noise and counted as
/// nothing; the guest kept one tick of a slower burst as room and was OOM-killed a tick
/// later. A rise the move could explain still waits to be seen twice.
#[test]
fn a_rise_beyond_what_the_balloon_moved_is_growth_at_once() {
    // The rise comes out of the free memory and then the page cache, as in the guest.
    let target_after = |rise_mib: u64, cache_mib: u64| {
        let mut p = AerostatPolicy::new(settings());
        p.propose(
            &obs(100, vec![vm("a", 4 * GIB, 1669 << 20, 1253, 306, 100)]),
            &[],
        );
        let after = vm("a", 4 * GIB, 1687 << 20, 1253 + rise_mib, cache_mib, 101);
        let props = p.propose(&obs(101, vec![after]), &[]);
        (
            props[0].target.0 >> 20,
            props[0].reason.text().unwrap_or_default().to_string(),
        )
    };
    let (burst, reason) = target_after(340, 94);
    // 340 − 18 MiB/s of growth kept for the reaction time, far above the 272 MiB burst room.
    assert!(burst >= 1593 + 94 + 1500, "{burst} MiB: {reason}");
    let (noise, reason) = target_after(16, 306);
    assert!(
        noise <= 1269 + 306 + 272,
        "no growth headroom: {noise} MiB: {reason}"
    );
}

/// Replays a two-node guest's readings through the policy (512 MiB boot, virtio-mem devices
/// up to 1.5 GiB, no deflate-on-oom), each `(tick ms, actual MiB, stats taken ms, MemTotal,
/// MemFree, MemAvailable, disk caches)`, the controller's target being what the policy
/// asked last (guards aside); returns what it asked (MiB) and the `used` its reasons read.
fn replay_unplug(seen: &[(u64, u64, u64, Bytes, Bytes, Bytes, Bytes)]) -> (Vec<u64>, Vec<u64>) {
    let mut p = AerostatPolicy::new(settings());
    let (mut targets, mut asked, mut used) = (Vec::new(), Vec::new(), Vec::new());
    for &(t, actual, at, total, free, available, caches) in seen {
        let mut v = vm("numa", 1536 << 20, actual << 20, 0, 0, 0);
        v.deflate_on_oom = Some(false);
        v.blocks = Some(Blocks {
            boot: Bytes::mib(512),
            step: Bytes::mib(4),
            balloon_trims: false,
        });
        v.stats.total = Some(total);
        v.stats.free = Some(free);
        v.stats.available = Some(available);
        v.stats.disk_caches = Some(caches);
        v.stats.last_update = Some(Millis(at));
        let mut o = obs(0, vec![v]);
        o.time = Millis(t);
        let props = p.propose(&o, &targets);
        if let Some(prop) = props.first() {
            targets = vec![prop.target];
            asked.push(prop.target.0 >> 20);
            used.push(used_in_reason(&props));
        }
    }
    (asked, used)
}

/// A real two-node guest (512 MiB boot, two virtio-mem devices) unplugging what it had
/// plugged (observed, session 24): the blocks it gives back leave its free lists before its
/// MemTotal drops, and its use read 47, 174, 174, 301 MiB over the 3 s its first 96 MiB
/// took. Read as growth, that plugged it back up to 928 MiB, and 30 s later all 1,536. A
/// rise within what the devices are still unplugging is not use; the unplug goes on.
#[test]
fn memory_a_virtio_mem_device_is_unplugging_is_not_use() {
    // MemTotal, MemFree, MemAvailable in bytes, as observed.
    let seen = [
        (77_924, 1024, 76_000, 955_228_160, 915_230_720, 905_789_440),
        (78_924, 1024, 77_000, 955_228_160, 781_279_232, 771_837_952),
        (79_924, 1024, 77_000, 955_228_160, 781_279_232, 771_837_952),
        (80_924, 928, 79_000, 955_228_160, 648_065_024, 638_623_744),
        (81_924, 928, 80_000, 854_564_864, 815_849_472, 806_408_192),
    ]
    .map(|(t, actual, at, total, free, available)| {
        let caches = Bytes(2_969_600);
        (
            t,
            actual,
            at,
            Bytes(total),
            Bytes(free),
            Bytes(available),
            caches,
        )
    });
    let (asked, used) = replay_unplug(&seen);
    // Used as before the unplug (47 MiB + the kernel's 114 outside MemTotal), and the
    // reclaim goes on below boot memory.
    assert!(used.iter().all(|&u| u <= 161), "used read {used:?}");
    assert!(
        asked.iter().all(|&a| a <= 512),
        "no plug back: asked {asked:?} MiB"
    );
}

/// The same guest when its devices report blocks gone before its MemTotal drops (observed,
/// session 25: the devices' size went 1024 → 766 MiB while stats taken before still counted
/// 910 MiB of MemTotal), after a reading that isolated much at once. A rise within what
/// MemTotal still counts above the target is not use: bounded by the reported size alone,
/// part of it read as growth here (used 345 MiB where 285 were used).
#[test]
fn memory_a_virtio_mem_device_reports_unplugged_before_memtotal_is_not_use() {
    // MemTotal and MemAvailable in MiB; MemFree 9 MiB above MemAvailable, 2 MiB of cache.
    let seen = [
        (1_000, 1024, 500, 910, 739),
        (2_000, 1024, 1_500, 910, 460),
        (3_000, 766, 2_500, 910, 470),
        (4_000, 512, 3_500, 398, 335),
    ]
    .map(|(t, actual, at, total, available)| {
        let mib = Bytes::mib;
        (
            t,
            actual,
            at,
            mib(total),
            mib(available + 9),
            mib(available),
            mib(2),
        )
    });
    let (asked, used) = replay_unplug(&seen);
    // Used as before the unplug (171 MiB + the kernel's 114 outside MemTotal).
    assert!(used.iter().all(|&u| u <= 285), "used read {used:?}");
    assert!(
        asked.windows(2).all(|w| w[1] <= w[0]),
        "no plug back: asked {asked:?} MiB"
    );
}

/// A Linux guest keeps its high watermark free (66 MiB in 1 GiB: `Watermarks::typical`),
/// and MemAvailable counts MemFree less that reserve plus the page cache less what the
/// kernel keeps of it (half, at most the low watermark, 55 MiB). The cache read is what
/// MemAvailable counts of it: MemAvailable − MemFree read it 66 MiB low, and a guest whose
/// cache is smaller than its reserve read none at all, so the probe took that cache from
/// the guest, which refaulted it (the simulator with `min_free = "linux"`:
/// `overcommitted` 724,535 actions and 6,519 stall-s).
#[test]
fn the_cache_is_not_read_short_by_the_guests_reserve() {
    let cache_read = |free_mib: u64, cache_mib: u64| {
        let mut v = vm("a", GIB, GIB, 0, 0, 0);
        let kept = (cache_mib / 2).min(55);
        v.stats.total = Some(Bytes::kib(990_356));
        v.stats.free = Some(Bytes::mib(free_mib));
        v.stats.disk_caches = Some(Bytes::mib(cache_mib));
        v.stats.available = Some(Bytes::mib(free_mib + cache_mib - 66 - kept));
        let r = reading::read(&v, &Memo::default(), Millis::ZERO, 1.0, Millis::secs(1))
            .expect("a reading");
        (r.cache / MIB).round() as u64
    };
    // 40 MiB of cache, 20 MiB of it kept by the kernel: 20 MiB, not 0.
    assert_eq!(cache_read(300, 40), 20);
    // 400 MiB: 345, not 279.
    assert_eq!(cache_read(300, 400), 345);
    // A guest reclaiming, its MemFree inside the reserve: only MemFree is added back.
    assert_eq!(cache_read(50, 400), 345 - 16);
    // A guest that keeps no reserve (the simulator's default: MemAvailable leaves out a
    // tenth of the cache) has none added: the tenth is in `used` and not counted twice.
    let mut v = vm("a", GIB, GIB, 0, 0, 0);
    v.stats.total = Some(Bytes::kib(990_356));
    v.stats.free = Some(Bytes::mib(300));
    v.stats.disk_caches = Some(Bytes::mib(400));
    v.stats.available = Some(Bytes::mib(300 + 360));
    let r =
        reading::read(&v, &Memo::default(), Millis::ZERO, 1.0, Millis::secs(1)).expect("a reading");
    assert_eq!((r.cache / MIB).round() as u64, 360);
}

/// The same guest one tick after its balloon went from 1024 to 771 MiB, before it has
/// taken new stats (QEMU polls them every second): the stats still show no balloon, so
/// none is subtracted — the live `actual` against them read its use as 0 and dived its
/// balloon to 272 MiB on a real guest. New stats count the balloon of the last reading or
/// now, whichever is smaller.
#[test]
fn deflate_on_oom_balloon_is_counted_as_of_the_stats() {
    let mut p = AerostatPolicy::new(settings());
    let tick = |p: &mut AerostatPolicy, t, actual_mib, stats_at_ms, avail_kib| {
        used_of_a_1gib_deflate_on_oom_guest(p, t, actual_mib, stats_at_ms, Bytes::kib(avail_kib))
    };
    // No balloon yet: 967 − 862 MiB, + the kernel's 57 MiB outside MemTotal.
    let used = 105 + 57;
    assert_eq!(tick(&mut p, 10, 1024, 9_000, 882_648), used);
    // Inflated to 771 MiB, the same stats: still the same, not 253 less.
    assert_eq!(tick(&mut p, 11, 771, 9_000, 882_648), used);
    // New stats, taken at the new size: 967 − 609 − 253.
    assert_eq!(tick(&mut p, 12, 771, 11_000, 623_548), used);
    // Stats taken now (the simulator's): the live `actual`.
    assert_eq!(tick(&mut p, 13, 771, 13_000, 623_548), used);
}

/// The `used` the policy reads at `t_s` from a 1 GiB deflate-on-oom guest (MemTotal 967
/// MiB whatever its balloon) whose balloon is at `actual_mib` and whose stats, taken at
/// `stats_at_ms`, show `available` (and 70 MiB more free).
fn used_of_a_1gib_deflate_on_oom_guest(
    p: &mut AerostatPolicy,
    t_s: u64,
    actual_mib: u64,
    stats_at_ms: u64,
    available: Bytes,
) -> u64 {
    let mut v = vm("a", GIB, actual_mib << 20, 0, 0, 0);
    v.deflate_on_oom = Some(true);
    v.stats.total = Some(Bytes::kib(990_356));
    v.stats.free = Some(available + Bytes::mib(70));
    v.stats.available = Some(available);
    v.stats.last_update = Some(Millis(stats_at_ms));
    used_in_reason(&p.propose(&obs(t_s, vec![v]), &[]))
}

/// Stats a deflate-on-oom guest took halfway through an inflate (124 of 253 MiB in) show
/// part of the balloon, and MemTotal does not say how much: read against the `actual`
/// before the inflate, the part already in counted as use (+124 MiB), and a real idle
/// guest was deflated on it (CI, session 22). While the balloon inflates, the reading
/// stays where it was if the range of balloons the stats may show allows it — and a guest
/// that grew by more than the whole inflate shows the rest at once.
#[test]
fn deflate_on_oom_stats_taken_halfway_through_an_inflate_are_not_read_as_use() {
    let tick = |p: &mut AerostatPolicy, t, actual_mib, stats_at_ms, avail_mib| {
        used_of_a_1gib_deflate_on_oom_guest(p, t, actual_mib, stats_at_ms, Bytes::mib(avail_mib))
    };
    // 105 MiB used of a MemTotal of 967, + the kernel's 57 outside it.
    let mut p = AerostatPolicy::new(settings());
    assert_eq!(tick(&mut p, 10, 1024, 9_000, 862), 162);
    // Inflated to 771 MiB; stats taken at 10.5 s, with 124 MiB of the balloon in.
    assert_eq!(tick(&mut p, 11, 771, 10_500, 862 - 124), 162);
    // The balloon stands still; stats at the new size.
    assert_eq!(tick(&mut p, 12, 771, 11_500, 862 - 253), 162);
    // A guest that grew 400 MiB during the same inflate: at least 400 − 253 shows at once.
    let mut p = AerostatPolicy::new(settings());
    tick(&mut p, 10, 1024, 9_000, 862);
    assert!(tick(&mut p, 11, 771, 10_500, 862 - 124 - 400) >= 162 + 400 - 253);
}

/// Bigger guests have more vCPUs and fault memory in faster: an 8 GiB guest keeps room
/// for half a second of 1 GiB/s, a 6 GiB one of 768 MiB/s; no guest more than twice
/// the small guest's room. Each plus the guards' 16 MiB dead band.
#[test]
fn a_bigger_guest_keeps_room_for_a_faster_burst() {
    let burst_room_of = |configured_gib: u64| {
        let mut p = AerostatPolicy::new(settings());
        let size = configured_gib * GIB;
        let mut o = obs(0, vec![vm("a", size, size, 500, 0, 0)]);
        o.host.available = Bytes::gib(200);
        o.host.total = Bytes::gib(256);
        let props = p.propose(&o, &[]);
        let reason = props[0].reason.text().unwrap_or_default().to_string();
        assert!(reason.contains("burst room: at least"), "{reason}");
        (props[0].target.0 >> 20) - 500 - 16
    };
    assert_eq!(burst_room_of(1), 256);
    assert_eq!(burst_room_of(4), 256);
    assert_eq!(burst_room_of(6), 384);
    assert_eq!(burst_room_of(8), 512);
    assert_eq!(burst_room_of(12), 512);
}

#[test]
fn swap_ins_deflate_at_once() {
    let mut p = AerostatPolicy::new(settings());
    let a = 2 * GIB;
    p.propose(&obs(0, vec![vm("a", 8 * GIB, a, 1800, 100, 0)]), &[]);
    let mut v = vm("a", 8 * GIB, a, 1800, 100, 1);
    v.stats.swap_in = Some(Bytes::mib(50));
    let props = p.propose(&obs(1, vec![v]), &[]);
    assert_eq!(props[0].rule, Rule::DeflatePressure);
    assert!(
        props[0].target >= Bytes(a) + Bytes::mib(256),
        "{}",
        props[0].target
    );
}

/// Where the guest's swap disk is read, its reads count as swap-ins too: swapping the guest
/// does not report (yet) deflates; swapping it reports that the disk never saw (zram) still
/// does.
#[test]
fn swap_ins_the_guests_swap_disk_shows_count_as_pressure() {
    let a = 2 * GIB;
    let run = |reported_mib: u64, disk_mib: u64| {
        let mut p = AerostatPolicy::new(settings());
        let mut v0 = vm("a", 8 * GIB, a, 1800, 100, 0);
        v0.swap_disk_read = Some(Bytes::mib(100));
        p.propose(&obs(0, vec![v0]), &[]);
        let mut v = vm("a", 8 * GIB, a, 1800, 100, 1);
        v.stats.swap_in = Some(Bytes::mib(reported_mib));
        v.swap_disk_read = Some(Bytes::mib(100 + disk_mib));
        p.propose(&obs(1, vec![v]), &[]).remove(0).rule
    };
    assert_eq!(run(0, 50), Rule::DeflatePressure, "hidden swap-ins count");
    assert_eq!(
        run(50, 0),
        Rule::DeflatePressure,
        "reported swap-ins still do"
    );
    assert_ne!(run(0, 0), Rule::DeflatePressure);
}

/// Writes to the guest's swap disk while its balloon stands still are the guest swapping out
/// on its own — what it uses outgrew what it has — and count as pressure the tick they
/// happen; within seconds of an inflate they are the inflate's doing and do not.
#[test]
fn swap_outs_the_guests_swap_disk_shows_count_as_pressure_unless_an_inflate_made_them() {
    let a = 2 * GIB;
    // The balloon at `actual_mib` for three ticks, `written_mib` more on the disk at the last.
    let run = |actuals_mib: [u64; 3], written_mib: u64| {
        let mut p = AerostatPolicy::new(settings());
        let mut last = None;
        for (t, actual) in actuals_mib.into_iter().enumerate() {
            let mut v = vm("a", 8 * GIB, actual << 20, 1800, 100, t as u64);
            v.swap_disk_written = Some(Bytes::mib(100 + if t == 2 { written_mib } else { 0 }));
            last = p.propose(&obs(t as u64, vec![v]), &[]).pop();
        }
        last.map(|p| (p.rule, p.target))
    };
    let still = a >> 20;
    let (rule, target) = run([still; 3], 40).expect("a proposal");
    assert_eq!(rule, Rule::DeflatePressure, "swap-outs on its own");
    assert!(target >= Bytes(a) + Bytes::mib(256), "{target}");
    assert_ne!(
        run([still; 3], 0).map(|p| p.0),
        Some(Rule::DeflatePressure),
        "no writes"
    );
    // The balloon inflated 256 MiB the tick before: its reclaim went partly to swap.
    assert_ne!(
        run([still + 256, still + 256, still], 40).map(|p| p.0),
        Some(Rule::DeflatePressure),
        "an inflate's swap-outs"
    );
}

/// Stats polled every 10 s are read between polls, not taken for a dead agent's: the policy
/// learns the guest's polling period from its `last_update`s. (Blind half the time, a guest
/// polled every 10 s had no counters compared after each blind spell: 8.9 M stall-s and
/// 35,231 OOM kills in 300 generated scenarios, session 33.) Stats that stop for five of
/// those periods are stale.
#[test]
fn stats_polled_every_10s_are_read_between_polls() {
    let mut p = AerostatPolicy::new(settings());
    let at = |t: u64, polled: u64| {
        let mut v = vm("a", 8 * GIB, 2 * GIB, 1800, 100, 0);
        v.stats.last_update = Some(Millis::secs(polled));
        obs(t, vec![v])
    };
    p.propose(&at(0, 0), &[]);
    p.propose(&at(10, 10), &[]);
    // 8 s after its last poll: read (the guest has a wish), not blind.
    p.propose(&at(18, 10), &[]);
    assert!(p.working_set(0).is_some(), "blind between polls");
    // Five periods without a poll: blind.
    p.propose(&at(61, 10), &[]);
    assert!(
        p.working_set(0).is_none(),
        "a dead agent's stats still read"
    );
}

#[test]
fn pinned_memory_earns_no_headroom() {
    let need = |pinned: u64| {
        let mut p = AerostatPolicy::new(settings());
        let mut v = vm("db", 12 * GIB, 12 * GIB, 10240, 0, 0);
        v.class = VmClass::Database;
        v.pinned = Bytes::gib(pinned);
        let p = p.propose(&obs(0, vec![v]), &[]).remove(0);
        (p.target, p.reason.text().unwrap_or_default().to_string())
    };
    // Database headroom is 8 %: of 12 GiB without pinned memory, of 4 GiB with 8 pinned.
    assert_eq!(need(0).0, Bytes::mib(10240 + 983));
    let (target, reason) = need(8);
    assert!(reason.contains("headroom 328;"), "{reason}");
    // The 328 MiB are less than the burst room of a 12 GiB guest on a roomy host.
    assert_eq!(target, Bytes::mib(10240 + 512 + 16), "{reason}");
}

#[test]
fn without_scan_statistics_the_headroom_shrinks_only_below_a_roomy_host() {
    // 25 % of the host available: a guest whose probe sees its cache's bottom keeps half
    // its headroom; one whose probe finds hot pages only by refaulting them keeps it
    // whole, until the host is no longer roomy.
    let target = |scan_stats: bool, available_mib: u64| {
        let mut p = AerostatPolicy::new(settings());
        let mut v = vm("a", 32 * GIB, 32 * GIB, 1024, 0, 0);
        if !scan_stats {
            v.stats.async_scans = None;
            v.stats.async_reclaims = None;
        }
        let mut o = obs(0, vec![v]);
        o.host.available = Bytes::mib(available_mib);
        p.propose(&o, &[])[0].target.0 >> 20
    };
    let headroom = 0.04 * 32768.0;
    assert_eq!(target(true, 64 * 1024 / 4), 1024 + (0.5 * headroom) as u64);
    assert_eq!(target(false, 64 * 1024 / 4), 1024 + headroom as u64);
    assert_eq!(
        target(false, 64 * 1024 * 3 / 20),
        1024 + (0.5 * headroom) as u64
    );
}

#[test]
fn page_cache_memavailable_leaves_out_is_not_counted_twice() {
    // A 4 GiB guest with 1000 MiB of page cache, of which MemAvailable counts `counted`:
    // the rest (shmem, the kernel's low-watermark share) is in `used` already, and the
    // need must not count it again as cache the guest keeps. MemAvailable also leaves out
    // the kernel's reserve, 66 MiB of MemFree (`the_cache_is_not_read_short_...`).
    let target = |counted_mib: u64| {
        let mut p = AerostatPolicy::new(settings());
        let mut v = vm("a", 4 * GIB, 4 * GIB, 1024, 1000, 0);
        let free = v.stats.free.unwrap_or(Bytes::ZERO);
        v.stats.available = Some(free + Bytes::mib(counted_mib) - Bytes::mib(66));
        let props = p.propose(&obs(0, vec![v]), &[]);
        (
            props[0].target.0 >> 20,
            props[0].reason.text().unwrap_or_default().to_string(),
        )
    };
    // Linux itself leaves out half the cache, at most the low watermark (55 MiB): 945.
    let (all, reason_all) = target(945);
    let (most, reason_most) = target(845);
    assert_eq!(all, most, "{reason_all} / {reason_most}");
    // (The probe's first step took 1 MiB of the 845.)
    assert!(
        reason_most.contains("used 1245 + cache 844"),
        "{reason_most}"
    );
}

/// After pressure the cache probe pauses for 30 minutes — unless the host has less than 5 %
/// available and the guest keeps more than 512 MiB of cache: then the probe goes on.
#[test]
fn a_host_short_of_memory_ends_the_probe_pause_of_a_big_cache() {
    let reason_a_minute_after_pressure = |available_gib: u64, cache_mib: u64| {
        let mut p = AerostatPolicy::new(settings());
        let mut at = |t: u64, faults: u64| {
            let mut v = vm("a", 8 * GIB, 6 * GIB, 2000, cache_mib, t);
            v.stats.major_faults = Some(faults);
            let mut o = obs(t, vec![v]);
            o.host.available = Bytes::gib(available_gib);
            let props = p.propose(&o, &[Bytes::gib(6)]);
            props
                .first()
                .and_then(|x| x.reason.text())
                .unwrap_or_default()
                .to_string()
        };
        at(0, 0);
        // Refaults: pressure, and the probe pauses.
        at(1, 5000);
        let mut last = String::new();
        for t in 2..60 {
            last = at(t, 5000);
        }
        last
    };
    // 2 of 64 GiB available: the 3 GiB cache is probed again.
    let short = reason_a_minute_after_pressure(2, 3000);
    assert!(short.contains("probing page cache"), "{short}");
    // 8 GiB available, or a 500 MiB cache: the pause holds.
    for (available, cache) in [(8, 3000), (2, 500)] {
        let paused = reason_a_minute_after_pressure(available, cache);
        assert!(
            !paused.contains("probing"),
            "{available} GiB, {cache} MiB: {paused}"
        );
    }
}

#[test]
fn pressure_adds_only_what_free_memory_cannot_hold() {
    let mut p = AerostatPolicy::new(settings());
    let a = 4 * GIB;
    // 1 GiB used, 100 MiB cache: ~2.9 GiB free, already far more than comes back.
    p.propose(&obs(0, vec![vm("a", 8 * GIB, a, 1024, 100, 0)]), &[]);
    let mut v = vm("a", 8 * GIB, a, 1024, 100, 1);
    v.stats.swap_in = Some(Bytes::mib(10));
    let props = p.propose(&obs(1, vec![v]), &[Bytes(a)]);
    assert_eq!(props[0].rule, Rule::DeflatePressure);
    assert_eq!(props[0].target, Bytes(a), "no boost on top of free memory");
}

/// Runs three ticks of a guest whose LRU shows 5 % reclaim efficiency at tick 1,
/// after the controller sent `held_below` MiB less than the policy asked at tick 0;
/// returns the reason of tick 2.
fn reason_after_low_efficiency(held_below: u64) -> String {
    let mut p = AerostatPolicy::new(settings());
    let (c, a) = (8 * GIB, 4 * GIB);
    let wish = p.propose(&obs(0, vec![vm("a", c, a, 1024, 2048, 0)]), &[])[0].target;
    let sent = wish - Bytes::mib(held_below);
    let mut v = vm("a", c, a, 1024, 2048, 1);
    v.stats.async_scans = Some(1000);
    v.stats.async_reclaims = Some(50);
    p.propose(&obs(1, vec![v.clone()]), &[sent]);
    v.stats.last_update = Some(Millis::secs(2));
    let o = obs(2, vec![v]);
    p.propose(&o, &[sent]);
    // The wish's reason, whether or not it moved the target enough to be proposed.
    p.explain(&o, 0)
}

#[test]
fn a_hold_by_the_reserve_guard_does_not_end_the_probe() {
    // Unheld: low efficiency is the bottom of the cache; the probe pauses.
    let unheld = reason_after_low_efficiency(0);
    assert!(unheld.contains("keeping"), "{unheld}");
    // Held 512 MiB below the wish: the low efficiency is the hold's; probing goes on.
    let held = reason_after_low_efficiency(512);
    assert!(held.contains("probing"), "{held}");
}

#[test]
fn a_stalled_balloon_is_detected_and_given_back() {
    let mut p = AerostatPolicy::new(settings());
    // Actual stays at 4 GiB although the controller asked for 2 GiB.
    let mut last = Vec::new();
    for t in 0..20 {
        let v = vm("a", 8 * GIB, 4 * GIB, 1024, 0, t);
        last = p.propose(&obs(t, vec![v]), &[Bytes::gib(2)]);
        if last.iter().any(|x| x.rule == Rule::BalloonStalled) {
            break;
        }
    }
    let stalled = last.iter().find(|x| x.rule == Rule::BalloonStalled);
    assert!(stalled.is_some(), "no stall detected: {last:?}");
    assert_eq!(
        stalled.map(|s| s.target),
        Some(Bytes(4 * GIB) + Bytes::mib(128))
    );
}

#[test]
fn stale_or_missing_stats_hold_the_guest() {
    let mut p = AerostatPolicy::new(settings());
    let mut v = vm("a", 8 * GIB, 8 * GIB, 1024, 0, 0);
    v.stats = GuestStats::default();
    assert!(
        p.propose(&obs(0, vec![v]), &[]).is_empty(),
        "blind guest must be held"
    );
    let v = vm("a", 8 * GIB, 8 * GIB, 1024, 0, 0);
    // Stats 10 minutes old at t = 600 s.
    assert!(
        p.propose(&obs(600, vec![v]), &[]).is_empty(),
        "stale stats must be ignored"
    );
}

#[test]
fn counters_going_backwards_are_not_pressure() {
    let mut p = AerostatPolicy::new(settings());
    let mut v = vm("a", 8 * GIB, 2 * GIB, 1500, 100, 0);
    v.stats.swap_in = Some(Bytes::gib(100));
    v.stats.major_faults = Some(1 << 40);
    p.propose(&obs(0, vec![v]), &[]);
    // The guest rebooted (or lies): counters fall. That is not a reason to act.
    let v = vm("a", 8 * GIB, 2 * GIB, 1500, 100, 1);
    let props = p.propose(&obs(1, vec![v]), &[]);
    assert!(
        props.iter().all(|x| x.rule != Rule::DeflatePressure),
        "{props:?}"
    );
}

#[test]
fn absurd_guest_numbers_are_clamped() {
    let mut p = AerostatPolicy::new(settings());
    let mut v = vm("a", 4 * GIB, 4 * GIB, 1024, 0, 0);
    v.stats.available = Some(Bytes(u64::MAX));
    v.stats.free = Some(Bytes(u64::MAX));
    v.stats.disk_caches = Some(Bytes(u64::MAX));
    for x in p.propose(&obs(0, vec![v]), &[]) {
        assert!(x.target <= Bytes(4 * GIB), "{x:?}");
    }
}

#[test]
fn batch_guests_keep_room_for_a_job_start() {
    let mut p = AerostatPolicy::new(settings());
    let mut v = vm("b", 8 * GIB, 8 * GIB, 1024, 0, 0);
    v.class = VmClass::Batch;
    let props = p.propose(&obs(0, vec![v]), &[]);
    // One second of a 512 MiB/s allocator plus the cache a new job reads: 768 MiB.
    assert_eq!(props[0].target, Bytes::mib(1024 + 768));
}

/// A batch guest below 4 GiB has fewer vCPUs to start a job with: its minimum headroom
/// shrinks with its size, to half (384 MiB) at 2 GiB and below.
#[test]
fn a_small_batch_guest_keeps_less_room_for_a_job_start() {
    let headroom_of = |configured_mib: u64| {
        let mut p = AerostatPolicy::new(settings());
        let size = configured_mib << 20;
        let mut v = vm("b", size, size, 256, 0, 0);
        v.class = VmClass::Batch;
        let props = p.propose(&obs(0, vec![v]), &[]);
        (props[0].target.0 >> 20) - 256
    };
    assert_eq!(headroom_of(4096), 768);
    assert_eq!(headroom_of(3072), 576);
    assert_eq!(headroom_of(2048), 384);
    assert_eq!(headroom_of(1024), 384);
}

/// The target after one interval in which the guest's LRU freed `reclaimed` of 1000
/// scanned pages, on a 64 GiB host with `available_gib` available.
fn target_after_efficiency(reclaimed: u64, available_gib: u64) -> Bytes {
    target_after_efficiency_with_cache(2048, reclaimed, available_gib)
}

/// The same for a 16 GiB guest at 14 GiB using 1 GiB with `cache_mib` of page cache.
fn target_after_efficiency_with_cache(cache_mib: u64, reclaimed: u64, available_gib: u64) -> Bytes {
    let mut p = AerostatPolicy::new(settings());
    let (c, a) = if cache_mib > 4096 {
        (16 * GIB, 14 * GIB)
    } else {
        (8 * GIB, 4 * GIB)
    };
    let mut o = obs(0, vec![vm("a", c, a, 1024, cache_mib, 0)]);
    o.host = host(64, available_gib);
    p.propose(&o, &[]);
    let mut v = vm("a", c, a, 1024, cache_mib, 1);
    v.stats.async_scans = Some(1000);
    v.stats.async_reclaims = Some(reclaimed);
    o.time = Millis::secs(1);
    o.vms = vec![v];
    p.propose(&o, &[])[0].target
}

#[test]
fn the_cache_probe_goes_on_at_10_percent_efficiency_and_stops_below_9() {
    // A nearly full host (10 GiB of 64 available): the memory is worth the hunt.
    let on = target_after_efficiency(100, 10);
    let stopped = target_after_efficiency(80, 10);
    assert!(
        on < stopped,
        "probing {on} should ask less than stopped {stopped}"
    );
}

/// 8 % efficiency in a 10 GiB cache is still ~800 MiB of cold cache: the probe goes on
/// (`cache-servers`); in a 2 GiB cache it is ~160 MiB, and the probe stops.
#[test]
fn a_low_efficiency_in_a_big_cache_still_means_cold_cache_to_probe() {
    let on = target_after_efficiency_with_cache(10240, 80, 10);
    let stopped = target_after_efficiency_with_cache(10240, 20, 10);
    assert!(
        on < stopped,
        "probing {on} should ask less than stopped {stopped}"
    );
}

#[test]
fn on_a_roomy_host_the_cache_probe_stops_below_30_percent() {
    let on = target_after_efficiency(310, 32);
    let stopped = target_after_efficiency(290, 32);
    assert!(
        on < stopped,
        "probing {on} should ask less than stopped {stopped}"
    );
    assert_eq!(stopped, target_after_efficiency(80, 32));
}

#[test]
fn cold_cache_is_estimated_from_reclaim_efficiency() {
    // Half the scanned pages were freed while 20 MiB went: of the 100 + 20 MiB at the
    // start, 60 were cold; 40 are left.
    let r = Reading {
        cache: 100.0 * MIB,
        reclaimed: 20.0 * MIB,
        efficiency: Some(0.5),
        ..Reading::default()
    };
    assert_eq!(r.cold_cache(), Some(40.0 * MIB));
    assert_eq!(Reading::default().cold_cache(), None);
}

#[test]
fn cache_bites_halve_toward_the_bottom_and_stop_short_of_it() {
    let mut m = Memo::default();
    assert_eq!(m.cache_bite(), MIN_BITE, "unknown: a small bite");
    let bites: Vec<f64> = {
        m.cold_left = Some(200.0 * MIB);
        (0..5)
            .map(|_| {
                let b = m.cache_bite();
                m.spend_cold_cache(b);
                b / MIB
            })
            .collect()
    };
    // 200 → 64 (full), 136 → 64, 72 → 36, 36 left: below two small bites, none.
    assert_eq!(bites, vec![64.0, 64.0, 36.0, 0.0, 0.0]);
    assert!(
        m.cold_left.is_some_and(|c| c > 0.0),
        "never bites into hot pages"
    );
}

#[test]
fn a_phase_change_forgets_the_cold_cache_estimate() {
    let mut m = Memo::default();
    let measured = Reading {
        used: 2048.0 * MIB,
        cache: 1024.0 * MIB,
        efficiency: Some(0.05),
        ..Reading::default()
    };
    m.track_cold_cache(&measured, Millis::ZERO);
    assert_eq!(m.cold_left, Some(0.05 * 1024.0 * MIB));
    // The cache grows by 100 MiB with the same workload: 100 MiB more cold.
    let grown = Reading {
        efficiency: None,
        cache: 1124.0 * MIB,
        ..measured
    };
    m.track_cold_cache(&grown, Millis::secs(1));
    assert_eq!(m.cold_left, Some((0.05 * 1024.0 + 100.0) * MIB));
    // The job ends (used −1 GiB): its hot cache may be cold now; unknown.
    let ended = Reading {
        used: 1024.0 * MIB,
        ..grown
    };
    m.track_cold_cache(&ended, Millis::secs(2));
    assert_eq!(m.cold_left, None);
    // Nor does an estimate outlive a probe pause.
    m.track_cold_cache(&measured, Millis::secs(3));
    m.track_cold_cache(&grown, Millis::secs(3) + PROBE_PAUSE + Millis::secs(1));
    assert_eq!(m.cold_left, None);
}

proptest::proptest! {
    /// Whatever the host, the classes, the pressure and the history: `aerostat` never
    /// asks for less than what the guest uses plus a 64 MiB sliver (or its configured
    /// size). Below that only the controller's guards go, when the host needs it.
    #[test]
    fn never_proposes_below_used_plus_a_sliver(
        host_mib in 1024u64..65536,
        free_mib in 0u64..65536,
        guests in proptest::collection::vec(
            (
                1u64..16,       // configured GiB
                0u64..=100,     // actual, % of configured
                0u64..=100,     // used, % of actual
                0u64..=100,     // cache, % of what is left
                0usize..5,      // class
                0u64..4,        // priority ×2
                0u64..3000,     // major faults per tick
                0u64..2,        // OOM kills per tick
            ),
            1..6,
        ),
    ) {
        let mut p = AerostatPolicy::new(settings());
        let mut targets: Vec<Bytes> = Vec::new();
        for t in 0..4u64 {
            let vms: Vec<VmSample> = guests
                .iter()
                .enumerate()
                .map(|(k, &(gib, act, used, cache, class, prio, faults, ooms))| {
                    let configured = gib << 30;
                    let actual = (configured * act / 100).max(256 << 20);
                    let used_mib = (actual >> 20) * used / 100;
                    let cache_mib = ((actual >> 20) - used_mib) * cache / 100;
                    let mut v = vm(&format!("g{k}"), configured, actual, used_mib, cache_mib, t);
                    v.class = VmClass::ALL[class];
                    v.priority = 0.5 * (prio + 1) as f64;
                    v.stats.major_faults = Some(faults * t);
                    v.stats.oom_kills = Some(ooms * t);
                    v
                })
                .collect();
            let mut o = obs(t, vms);
            o.host = HostSample {
                total: Bytes::mib(host_mib),
                free: Bytes::mib(free_mib.min(host_mib)),
                available: Bytes::mib(free_mib.min(host_mib)),
                ..HostSample::default()
            };
            if targets.len() != o.vms.len() {
                targets = o.vms.iter().map(|v| v.actual).collect();
            }
            for x in p.propose(&o, &targets) {
                let v = &o.vms[x.vm];
                let used = v.actual - v.stats.available.expect("available");
                let bottom = (used + Bytes::mib(64)).min(v.configured);
                proptest::prop_assert!(
                    x.target + Bytes::mib(1) >= bottom,
                    "tick {t}: {} {:?} to {} below used {} + 64 MiB",
                    v.name, x.rule, x.target, used
                );
                targets[x.vm] = x.target;
            }
        }
    }
}

#[test]
fn a_guest_squeezed_for_the_host_keeps_a_sliver_of_free_memory() {
    // `unseen-sliver`: a guest with no cache and no swap, squeezed to exactly what it used,
    // was OOM-killed by its next allocation — 840 times in a day.
    let mut p = AerostatPolicy::new(settings());
    let a = vm("a", 8 * GIB, 8 * GIB, 4096, 0, 0);
    let b = vm("b", 8 * GIB, 8 * GIB, 4096, 0, 0);
    let mut o = obs(0, vec![a, b]);
    // Total − reserve is exactly what the two use. The host's own page cache is
    // available, so the class headroom stays whole and the fit must take it.
    o.host = host(9, 0);
    o.host.available = Bytes::gib(2);
    let props = p.propose(&o, &[]);
    assert_eq!(props.len(), 2);
    for x in &props {
        assert_eq!(x.rule, Rule::HostShort);
        assert!(x.target >= Bytes::mib(4096 + 64), "{}: {}", x.vm, x.target);
    }
}

#[test]
fn when_the_floors_do_not_fit_hot_cache_stays_while_host_swap_can_hold_the_rest() {
    // `unabsorbable-surge`: a VM with 13 GiB pinned lands on a full host; until the
    // escape moves a guest away, squeezing the database's hot cache only turns host swap
    // into refaults. Floors: 5.5 + 5.5 GiB on a host with 10 GiB of capacity; the targets
    // (8 + 8 GiB) are 6 GiB above it.
    let fits = |swap_total_gib: u64, swap_free_gib: u64, b_migrating: bool| {
        let mut p = AerostatPolicy::new(settings());
        let mut a = vm("a", 8 * GIB, 8 * GIB, 4096, 2048, 0);
        let mut b = vm("b", 8 * GIB, 8 * GIB, 4096, 2048, 0);
        a.min = Some(Bytes::mib(5632));
        b.min = Some(Bytes::mib(5632));
        b.migrating = b_migrating;
        let mut o = obs(0, vec![a, b]);
        o.host = HostSample {
            swap_total: Bytes::gib(swap_total_gib),
            swap_free: Bytes::gib(swap_free_gib),
            ..host(11, 0)
        };
        let props = p.propose(&o, &[]);
        props.iter().map(|x| x.target).min().expect("proposals")
    };
    let keeps_cache = |t: Bytes| t >= Bytes::mib(4096 + 2048 - 64);
    // Both keep `used` + their cache (the first probe bite aside) ...
    assert!(keeps_cache(fits(16, 16, false)), "{}", fits(16, 16, false));
    // ... also when the guests' pages already fill most of the swap: they are part of
    // the excess, not an addition to it ...
    assert!(keeps_cache(fits(16, 0, false)), "{}", fits(16, 0, false));
    // ... and while one of them is leaving: it holds its memory until it has left ...
    assert!(keeps_cache(fits(16, 16, true)), "{}", fits(16, 16, true));
    // ... unless host swap cannot take the rest: then the cache goes, down to `lowest`
    // but not below the floor, which the controller would lift it to anyway.
    assert_eq!(fits(1, 1, false), Bytes::mib(5632));
}

#[test]
fn a_host_short_raise_the_guard_took_back_is_not_asked_for_again() {
    // `unseen-sliver`: the fit raised a guest into headroom the reserve guard then took
    // back as untouched memory, every other second for a day (246,150 actions).
    let mut p = AerostatPolicy::new(settings());
    let mut o = obs(0, vec![]);
    // Capacity 200 MiB short of both needs: the fit trims each raise by ~100 MiB.
    // The host's own page cache is available: the class headroom stays whole.
    o.host = HostSample {
        total: Bytes::mib(1024 + 1352 + 6328 - 200),
        available: Bytes::gib(2),
        ..host(0, 0)
    };
    let targets = [Bytes::mib(1100), Bytes::gib(8)];
    let mut raised = Vec::new();
    for t in 0..3 {
        o.time = Millis::secs(t);
        o.vms = vec![
            vm("a", 8 * GIB, 1100 << 20, 1024, 0, t),
            vm("b", 8 * GIB, 8 * GIB, 6000, 0, t),
        ];
        let props = p.propose(&o, &targets);
        // The guard sends nothing: `a` stays at 1100 MiB.
        raised.push(
            props
                .iter()
                .find(|x| x.vm == 0)
                .filter(|x| x.target > targets[0])
                .map(|x| (x.rule, x.target)),
        );
    }
    assert!(
        matches!(raised[0], Some((Rule::HostShort, _))),
        "tick 0 raises a into the room the fit left it: {raised:?}"
    );
    assert_eq!(raised[1..], [None, None], "{raised:?}");
}

#[test]
fn another_guests_headroom_never_costs_a_guest_its_hot_cache() {
    // `unseen-sliver`: eight batch guests' headroom made the host "short", and a ninth
    // guest's hot page cache thrashed for it with 4 GiB of the host free. Here `a` grows
    // fast (its headroom is the batch minimum, 768 MiB) and `b` holds 2 GiB of cache the
    // probe has not yet found cold: the host holds both guests' resident memory, not
    // `a`'s headroom on top.
    let mut p = AerostatPolicy::new(settings());
    let mut o = obs(0, vec![]);
    o.host = HostSample {
        total: Bytes::mib(1024 + 8192 + 400),
        free: Bytes::mib(400),
        available: Bytes::mib(400),
        ..HostSample::default()
    };
    for (t, a_used) in [(0, 3000), (1, 4096)] {
        let mut a = vm("a", 8 * GIB, 8 * GIB, a_used, 0, t);
        a.class = VmClass::Batch;
        o.vms = vec![a, vm("b", 8 * GIB, 8 * GIB, 2048, 2048, t)];
        o.time = Millis::secs(t);
        let props = p.propose(&o, &[]);
        let b = props.iter().find(|x| x.vm == 1).expect("b");
        // The probe's first bite of `b`'s cache aside (a few MiB), nothing of it goes.
        assert!(
            b.target >= Bytes::mib(4096 - 32),
            "tick {t}: b {}",
            b.target
        );
    }
}

/// When the host is short, the fit takes headroom down to what each guest holds resident —
/// which includes the hot cache the probe measured, even where `keep` (allowed half the
/// headroom below it) is lower: headroom is a plan, hot cache is not
/// (`unseen-cache-first`: 26.6 → 10.8 stall-s).
#[test]
fn the_host_short_fit_counts_measured_hot_cache_as_resident() {
    let mut p = AerostatPolicy::new(settings());
    // `b` uses 1 GiB and holds 2 GiB of cache, 1 GiB of it measured cold; `a` uses 2 GiB
    // and holds none. Both are growing, so neither has idle headroom to give first.
    let guests = |t: u64| {
        vec![
            vm("a", 8 * GIB, 4 * GIB, 2048, 0, t),
            vm("b", 8 * GIB, 4 * GIB, 1024, 2048, t),
        ]
    };
    let mut o = obs(0, guests(0));
    // Room for both guests' used memory and `b`'s hot cache (+ the 1 GiB reserve), not
    // for their headroom; a fifth of the host available, so the headroom is whole.
    o.host = HostSample {
        total: Bytes::mib(2048 + 1024 + 1024 + 1024),
        free: Bytes::mib(1100),
        available: Bytes::mib(1100),
        ..HostSample::default()
    };
    p.propose(&o, &[]);
    for m in [0, 1] {
        p.memos[m].growth_bps = 100.0 * MIB;
    }
    p.memos[1].cold_left = Some(1024.0 * MIB);
    p.memos[1].cold_used = 1024.0 * MIB;
    p.memos[1].cold_at = Millis::secs(1);
    p.memos[1].cache_keep = Some(900.0 * MIB);
    o.time = Millis::secs(1);
    o.vms = guests(1);
    let props = p.propose(&o, &[]);
    let b = props.iter().find(|x| x.vm == 1).expect("b");
    let reason = b.reason.text().unwrap_or_default().to_string();
    assert!(reason.contains("host short"), "{reason}");
    assert!(
        b.target >= Bytes::mib(1024 + 1024),
        "{} — {reason}",
        b.target
    );
}

#[test]
fn when_the_host_is_short_important_guests_give_last() {
    let mut p = AerostatPolicy::new(settings());
    let mut a = vm("a", 8 * GIB, 8 * GIB, 4096, 2048, 0);
    a.priority = 4.0;
    let b = vm("b", 8 * GIB, 8 * GIB, 4096, 2048, 0);
    let mut o = obs(0, vec![a, b]);
    o.host = host(12, 0);
    let props = p.propose(&o, &[]);
    let t = |n: usize| props.iter().find(|x| x.vm == n).map(|x| x.target);
    let (ta, tb) = (t(0).expect("a"), t(1).expect("b"));
    assert!(ta > tb, "a (priority 4) {ta} should keep more than b {tb}");
    assert!(props.iter().any(|x| x.rule == Rule::HostShort));
    // Never below what the guests use.
    assert!(tb >= Bytes::gib(4), "{tb}");
}

/// Memory KSM merged is memory the host has: four guests of 4 GiB each, using 3.5 GiB, on a
/// 16 GiB host (1 GiB reserve) whose KSM saves 4 GiB, are sized by their own need alone; the
/// same host without KSM is short and squeezes them for the host (`vdi-ksm`, a reviewer's
/// scenario: sixty desktops squeezed below their working sets, 6,276 OOM kills, with a fifth
/// of the host free).
#[test]
fn memory_ksm_saves_counts_as_host_capacity() {
    let squeezed_for_the_host = |ksm_saved: Option<Bytes>| {
        let mut ctl = crate::controller::Controller::new(Box::new(AerostatPolicy::new(settings())));
        let guests = (0..4).map(|i| vm(&format!("g{i}"), 6 * GIB, 4 * GIB, 3584, 0, 0));
        let mut o = obs(0, guests.collect());
        o.host = host(16, 8);
        o.host.ksm_saved = ksm_saved;
        let decision = ctl.tick(&o);
        decision
            .actions
            .iter()
            .filter(|a| matches!(a.rule, Rule::HostShort | Rule::GuardReserve))
            .count()
    };
    assert_eq!(
        squeezed_for_the_host(Some(Bytes::gib(4))),
        0,
        "with KSM's 4 GiB"
    );
    assert_eq!(squeezed_for_the_host(None), 4, "without KSM");
    assert_eq!(
        squeezed_for_the_host(Some(Bytes::ZERO)),
        4,
        "KSM saving nothing"
    );
}

/// Two guests refaulting on a host that cannot give them more: the fit takes what they ask
/// for, and the policy reports it as unmet need (the escape's cue). The same guests without
/// pressure ask for no more than they can be given: nothing unmet.
#[test]
fn unmet_need_is_what_guests_under_pressure_asked_for_and_the_host_could_not_give() {
    let unmet = |faults: u64| {
        let mut p = AerostatPolicy::new(settings());
        let at = |t: u64, faults: u64| {
            let guests = (0..2).map(|i| {
                let mut v = vm(&format!("g{i}"), 8 * GIB, 15 * GIB / 2, 7168, 0, t);
                v.stats.major_faults = Some(faults);
                v
            });
            let mut o = obs(t, guests.collect());
            o.host = host(16, 1);
            o
        };
        p.propose(&at(0, 0), &[]);
        p.propose(&at(1, faults), &[]);
        p.unmet_need().expect("aerostat says").0 >> 20
    };
    let pressured = unmet(100_000);
    assert!(pressured >= 64, "{pressured} MiB unmet");
    assert_eq!(unmet(0), 0);
}

/// A wish below the guest's floor frees nothing: the controller lifts it to the floor. An
/// idle guest with a 4 GiB floor beside a guest refaulting at 7 GiB on a host that gives
/// guests 11 GiB: the fit counts the idle guest at its floor, takes what is short from the
/// refaulting guest, and reports it unmet (the escape's cue). Counting the idle guest's
/// ~0.6 GiB wish, the fit saw room that was not there and reported nothing unmet: the
/// escape never moved, and the reserve guard took the shortfall from the refaulting guest
/// every tick (`lying-balloon` with the escape: 2,148 stall-s).
#[test]
fn a_wish_below_the_floor_frees_nothing_in_the_host_short_fit() {
    let mut ctl = crate::controller::Controller::new(Box::new(AerostatPolicy::new(settings())));
    let at = |t: u64, faults: u64| {
        let mut idle = vm("idle", 8 * GIB, 4 * GIB, 512, 0, t);
        idle.min = Some(Bytes::gib(4));
        let mut busy = vm("busy", 8 * GIB, 7 * GIB, 6912, 0, t);
        busy.stats.major_faults = Some(faults);
        let mut o = obs(t, vec![idle, busy]);
        o.host = host(12, 0);
        o
    };
    ctl.tick(&at(0, 0));
    let decision = ctl.tick(&at(1, 100_000));
    let unmet = ctl.unmet_need().expect("aerostat says");
    assert!(unmet >= Bytes::mib(900), "unmet {unmet}: {decision:?}");
    assert!(
        decision
            .alerts
            .contains(&crate::Alert::WorkingSetsDoNotFit { unmet }),
        "{decision:?}"
    );
}

/// A wish for the fit alone: `target`, `resident` and `lowest` in MiB.
fn bare_wish(vm: usize, target_mib: u64, resident_mib: u64, lowest_mib: u64, weight: f64) -> Wish {
    let m = |x: u64| (x << 20) as f64;
    Wish {
        vm,
        target: m(target_mib),
        lowest: m(lowest_mib),
        resident: m(resident_mib),
        working_set: (m(lowest_mib), m(resident_mib)),
        idle_floor: m(target_mib),
        weight,
        rule: Rule::Reclaim,
        explain: Explain::Stalled {
            actual: 0.0,
            target: 0.0,
            moved_bps: 0.0,
            block: Millis::ZERO,
        },
        host_short: None,
    }
}

/// Headroom a floor holds is no room: a guest at its 4 GiB floor using 1 GiB beside a guest
/// using all its 12 GiB, on a host that gives guests 15 GiB, is 1 GiB short of what the
/// guests use — unmet. (Counting the 3 GiB above `resident` as headroom others could take
/// later, the fit reported nothing: a review of session 15's change found it.)
#[test]
fn headroom_a_floor_holds_does_not_hide_a_shortage() {
    let mut a = VmSample::new("a", Bytes::gib(8), Bytes::gib(4));
    a.min = Some(Bytes::gib(4));
    let b = VmSample::new("b", Bytes::gib(12), Bytes::gib(12));
    let mut o = obs(0, vec![a, b]);
    o.host = host(16, 0);
    let mut wishes = vec![
        bare_wish(0, 4096, 1024, 1024, 1.0),
        bare_wish(1, 12288, 12288, 12288, 1.0),
    ];
    let unmet = fit::fit_host(&settings(), &o, 0.0, &mut wishes);
    assert_eq!(Bytes::from_f64(unmet), Bytes::gib(1));
}

/// The tiers share a shortfall in one pass, so a share capped at a guest's room can leave
/// room elsewhere: that is placeable (the reserve guard takes it), not unmet. Two 8 GiB
/// guests on a host that gives guests 15 GiB, one with 200 MiB of room and weight 0.1, the
/// other with 3 GiB and weight 10: nothing unmet.
#[test]
fn room_a_capped_share_left_is_not_unmet() {
    let a = VmSample::new("a", Bytes::gib(8), Bytes::gib(8));
    let b = VmSample::new("b", Bytes::gib(8), Bytes::gib(8));
    let mut o = obs(0, vec![a, b]);
    o.host = host(16, 0);
    let mut wishes = vec![
        bare_wish(0, 8192, 8192, 8192 - 200, 0.1),
        bare_wish(1, 8192, 8192, 8192 - 3072, 10.0),
    ];
    let unmet = fit::fit_host(&settings(), &o, 0.0, &mut wishes);
    assert_eq!(unmet, 0.0);
}

/// A 6 GiB guest whose QEMU holds 1 GiB of guest memory (`rss − overhead`) claims it uses
/// all 6 GiB, has nothing free and swaps in 16 MiB/s. The host's measure bounds the claims:
/// `used` is at most what it touched plus the margin (1 GiB + 448 MiB), `free` at least
/// what it never touched less the margin, and pressure next to untouched memory is not
/// believed — so the guest is reclaimed, not deflated. Told the same by an honest guest
/// (its QEMU holding the 6 GiB), the policy keeps all of it.
#[test]
fn claims_the_host_did_not_see_touched_are_cut_to_what_it_saw() {
    let tick = |p: &mut AerostatPolicy, t: u64, touched_mib: u64| {
        let mut v = vm("a", 6 * GIB, 6 * GIB, 5 * 1024, 0, t);
        v.deflate_on_oom = Some(false);
        v.stats.free = Some(Bytes(0));
        v.stats.available = Some(Bytes(0));
        v.stats.swap_in = Some(Bytes::mib(16 * t));
        v.stats.major_faults = Some(4096 * t);
        v.rss = Some(Bytes::mib(touched_mib) + v.overhead);
        p.propose(&obs(t, vec![v]), &[])
    };
    let mut liar = AerostatPolicy::new(settings());
    tick(&mut liar, 0, 1024);
    let props = tick(&mut liar, 1, 1024);
    assert_eq!(props.len(), 1, "{props:?}");
    assert_eq!(props[0].rule, Rule::Reclaim, "{props:?}");
    assert_eq!(used_in_reason(&props), 1024 + 448);
    let reason = props[0].reason.text().unwrap_or_default();
    assert!(
        reason.contains("claims 6144 MiB used") && reason.contains("claims 0 MiB free"),
        "{reason}"
    );
    assert!(!reason.contains("under pressure"), "{reason}");

    let mut honest = AerostatPolicy::new(settings());
    tick(&mut honest, 0, 6 * 1024);
    let props = tick(&mut honest, 1, 6 * 1024);
    assert!(
        props.iter().all(|p| p.target >= Bytes::gib(6)),
        "an honest full guest under pressure keeps its memory: {props:?}"
    );
}

/// A real QEMU polls guest stats on its own timer: stats it received just before a tick can
/// first be read at the next one, older than a balloon step the tick between already saw.
/// The balloon "stood still since the last reading" then says nothing of the balloon at the
/// stats. Read as exact, the step became kernel memory: a real 1 GiB guest deflated behind
/// the daemon's back read 407 MiB used where it held ~100 (session 21's real-VM run).
#[test]
fn stats_older_than_the_last_reading_are_not_exact() {
    let mut p = AerostatPolicy::new(settings());
    let tick = used_of_a_1gib_guest_using_100_mib;
    // Squeezed to 771 MiB, stats of now: 100 MiB used + the kernel's 57 outside MemTotal.
    assert_eq!(tick(&mut p, 10_000, 771, 10_000, 714), 157);
    // Deflated to 1 GiB; the stats are still the old ones.
    assert_eq!(tick(&mut p, 11_000, 1024, 10_000, 714), 157);
    // Stats QEMU received at 10.9 s, before the deflate, first read now: still 57.
    assert_eq!(tick(&mut p, 12_000, 1024, 10_900, 714), 157);
}

/// A balloon that stalls again where it stalled blocks inflation twice as long each time
/// (5, 10, 20 … at most 80 min): the guest has shown it cannot give that memory. An
/// inflation that gets below that place starts over.
#[test]
fn a_balloon_that_stalls_again_in_the_same_place_is_left_longer() {
    let mut p = AerostatPolicy::new(settings());
    let mut blocks = Vec::new();
    for t in 0..(6 * 3600) {
        // The controller keeps asking for 2 GiB; the balloon never goes below 4 GiB.
        let v = vm("a", 8 * GIB, 4 * GIB, 1024, 0, t);
        for prop in p.propose(&obs(t, vec![v]), &[Bytes::gib(2)]) {
            if prop.rule == Rule::BalloonStalled {
                let reason = prop.reason.text().unwrap_or_default();
                blocks.push(
                    reason
                        .rsplit("no inflation for ")
                        .next()
                        .unwrap_or("")
                        .to_string(),
                );
            }
        }
    }
    assert_eq!(
        blocks[..5],
        ["5m", "10m", "20m", "40m", "80m"],
        "{blocks:?}"
    );
    assert!(blocks[5..].iter().all(|b| b == "80m"), "{blocks:?}");
}

/// A deflate-on-oom guest that takes pages back from its balloon past the target nobody
/// raised is at its OOM point, whatever its statistics say (here: all free): pressure.
#[test]
fn a_deflate_on_oom_guest_that_deflates_itself_is_under_pressure() {
    let mut p = AerostatPolicy::new(settings());
    let tick = |p: &mut AerostatPolicy, t: u64, actual_mib: u64| {
        let mut v = vm("a", 8 * GIB, actual_mib << 20, 0, 0, t);
        v.deflate_on_oom = Some(true);
        v.stats.total = Some(Bytes::gib(8));
        v.stats.free = Some(Bytes::gib(8) - Bytes::mib(200));
        v.stats.available = v.stats.free;
        p.propose(&obs(t, vec![v]), &[Bytes::mib(2048)])
    };
    tick(&mut p, 0, 2048);
    let props = tick(&mut p, 1, 2300);
    assert!(
        props.iter().any(|x| x.rule == Rule::DeflatePressure
            && x.reason
                .text()
                .unwrap_or_default()
                .contains("252 MiB taken back")),
        "{props:?}"
    );
}

/// A service that held 5 GiB for an hour and stops (a deploy) keeps its room for its
/// restart for RESTART_HOLD; a spike that held for a minute (a boot, a job) does not.
#[test]
fn a_stopped_service_keeps_its_room_for_a_while_and_a_spike_does_not() {
    let target_after_drop = |held_s: u64| {
        let mut p = AerostatPolicy::new(settings());
        let mut actual = 10 * GIB;
        let mut t = 0;
        let step = |p: &mut AerostatPolicy, t: u64, used_mib: u64, actual: &mut u64| {
            let v = vm("a", 10 * GIB, *actual, used_mib, 0, t);
            for prop in p.propose(&obs(t, vec![v]), &[Bytes(*actual)]) {
                *actual = prop.target.0;
            }
        };
        while t < held_s {
            step(&mut p, t, 5 * 1024, &mut actual);
            t += 1;
        }
        // Stopped: 600 MiB used, for two minutes.
        for _ in 0..120 {
            step(&mut p, t, 600, &mut actual);
            t += 1;
        }
        let after_two_minutes = actual;
        for _ in 0..(11 * 60) {
            step(&mut p, t, 600, &mut actual);
            t += 1;
        }
        (after_two_minutes, actual)
    };
    let (kept, later) = target_after_drop(3600);
    assert!(kept >= 5 * GIB, "the stopped service's room: {kept}");
    assert!(later < 2 * GIB, "reclaimed after the hold: {later}");
    let (spike, _) = target_after_drop(60);
    assert!(
        spike < 2 * GIB,
        "a one-minute spike is reclaimed at once: {spike}"
    );
}

/// The host's access window outlives a service's stop by up to 30 s: windows taken every
/// 10 s after the stop still show 3.5, 2.0 and 0.5 GiB of the 5 GiB the service touched, so
/// the counted `used` comes down in steps, none of them a quarter of the guest. The stop is
/// read from the guest's own word (it was believed the reading before) and its room is kept
/// — counted alone, 17 of 32 JVM restarts of reviewer-4's rolling deploy on a 144 GiB host
/// were OOM-killed.
#[test]
fn a_stop_the_access_window_still_hides_keeps_its_room() {
    let mut p = AerostatPolicy::new(settings());
    let mut actual = 10 * GIB;
    let stop = 3600;
    for t in 0..stop + 120 {
        let used_mib = if t < stop { 5 * 1024 } else { 600 };
        let mut v = vm("a", 10 * GIB, actual, used_mib, 0, t);
        // A window every 10 s: what the guest accessed in it.
        let window = t - t % 10;
        let accessed_mib = if window < stop {
            5 * 1024
        } else {
            (5 * 1024_u64)
                .saturating_sub(1536 * ((window - stop) / 10))
                .max(600)
        };
        v.coldness = Some(crate::observation::Coldness {
            touched: Bytes::mib(accessed_mib),
            idle: Bytes::ZERO,
            at: Millis::secs(window),
        });
        for prop in p.propose(&obs(t, vec![v]), &[Bytes(actual)]) {
            actual = prop.target.0;
        }
    }
    assert!(
        actual >= 5 * GIB,
        "the stopped service's room: {}",
        actual >> 20
    );
}

/// A guest whose driver reports it all free while the host saw it access 3 GiB in its last
/// coldness window is counted as using what it accessed; an honest guest holding what it
/// accessed is read as it says.
#[test]
fn memory_the_host_saw_accessed_is_not_free() {
    let used_read = |free_mib: u64| {
        let mut p = AerostatPolicy::new(settings());
        let mut v = vm("a", 8 * GIB, 8 * GIB, 0, 0, 10);
        v.deflate_on_oom = Some(false);
        v.stats.free = Some(Bytes::mib(free_mib));
        v.stats.available = Some(Bytes::mib(free_mib));
        v.coldness = Some(crate::observation::Coldness {
            touched: Bytes::gib(4),
            idle: Bytes::gib(1),
            at: Millis::secs(0),
        });
        used_in_reason(&p.propose(&obs(10, vec![v]), &[]))
    };
    // Claims 8 GiB free (0 used): counted as the 3 GiB it accessed.
    assert_eq!(used_read(8 * 1024), 3 * 1024);
    // Honest: 5 GiB free, so it holds the 3 GiB it accessed.
    assert_eq!(used_read(5 * 1024), 3 * 1024);
    // Honest and holding more than it accessed: as it says.
    assert_eq!(used_read(4 * 1024), 4 * 1024);
}
