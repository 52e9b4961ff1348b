//! The guest model's bookkeeping under random workloads and random balloon targets: no
//! amount goes negative, what is resident fits what the balloon leaves, swap holds no more
//! than its size, the host backs no more than the guest holds, a tick stalls at most a
//! tick, and the statistics a policy reads stay consistent and their counters only grow.

use super::*;
use crate::scenario::Scenario;
use proptest::prelude::*;
use std::path::Path;

const MIB: f64 = 1048576.0;
/// Rounding slack of the f64 bookkeeping, in bytes.
const EPS: f64 = 1.0;

/// One guest's scenario keys, sizes in MiB.
#[derive(Clone, Copy)]
struct Keys {
    kind: &'static str,
    memory: u64,
    ws: u64,
    peak: u64,
    cache: u64,
    cold: u64,
    swap: u64,
    deflate_on_oom: bool,
    /// The guest's `min_free` key, quoted (`"\"linux\""`), or "" for none.
    min_free: &'static str,
}

fn spec(k: Keys) -> Result<VmSpec, String> {
    let Keys {
        kind,
        memory,
        ws,
        peak,
        cache,
        cold,
        swap,
        deflate_on_oom,
        min_free,
    } = k;
    let shape = match kind {
        "diurnal" => format!("peak = \"{peak}MiB\"\nperiod = \"10m\"\n"),
        "burst" | "ramp" => format!("peak = \"{peak}MiB\"\nat = \"1m\"\nrise = \"5s\"\n"),
        // Over the 1 h run a leak adds the rise: the same room as a peak. A leak must grow
        // (a rate of 0 is refused), so the smallest rise is 1 MiB/h.
        "leak" => format!("rate = \"{}MiB/h\"\n", (peak - ws).max(1)),
        _ => String::new(),
    };
    let min_free = if min_free.is_empty() {
        String::new()
    } else {
        format!("min_free = {min_free}\n")
    };
    let text = format!(
        "[scenario]\nname = \"g\"\nduration = \"1h\"\nseed = 1\n[host]\nmemory = \"64GiB\"\nreserve = \"1GiB\"\n\
         [[vm]]\nname = \"g\"\nmemory = \"{memory}MiB\"\nswap = \"{swap}MiB\"\n\
         deflate_on_oom = {deflate_on_oom}\n{min_free}[vm.workload]\nkind = \"{kind}\"\n\
         working_set = \"{ws}MiB\"\npage_cache = \"{cache}MiB\"\ncold = \"{cold}MiB\"\nnoise = 0\n{shape}"
    );
    Scenario::parse(&text, Path::new("g.toml"))
        .map(|s| s.vms[0].clone())
        .map_err(|e| e.to_string())
}

fn assert_consistent(g: &Guest, fx: &TickEffects, dt: f64, tick: usize) {
    let parts = [
        ("anon_hot", g.anon_hot),
        ("anon_cold", g.anon_cold),
        ("swap_hot", g.swap_hot),
        ("swap_cold", g.swap_cold),
        ("cache_hot", g.cache_hot),
        ("cache_cold", g.cache_cold),
        ("evicted_hot", g.evicted_hot),
        ("touched", g.touched),
    ];
    for (name, v) in parts {
        assert!(v.is_finite() && v >= -EPS, "tick {tick}: {name} = {v}");
    }
    assert!(
        g.actual >= -EPS && g.actual <= g.configured + EPS,
        "tick {tick}: actual {} outside [0, {}]",
        g.actual,
        g.configured
    );
    assert!(
        g.resident() <= g.usable() + EPS,
        "tick {tick}: resident {:.0} MiB above usable {:.0} MiB",
        g.resident() / MIB,
        g.usable() / MIB
    );
    assert!(
        g.swap_hot + g.swap_cold <= g.swap_size + EPS,
        "tick {tick}: swap holds {} of {}",
        g.swap_hot + g.swap_cold,
        g.swap_size
    );
    assert!(
        g.touched <= g.actual + EPS,
        "tick {tick}: host backs {} of {}",
        g.touched,
        g.actual
    );
    assert!(
        fx.stall_s >= 0.0 && fx.stall_s <= dt,
        "tick {tick}: stall {}",
        fx.stall_s
    );
    assert!(fx.swap_in >= 0.0, "tick {tick}: swap-in {}", fx.swap_in);
}

/// The counters of `GuestStats` that must never go back.
fn counters(s: &GuestStats) -> [u64; 5] {
    [
        s.swap_in.map_or(0, |b| b.0),
        s.swap_out.map_or(0, |b| b.0),
        s.major_faults.unwrap_or(0),
        s.oom_kills.unwrap_or(0),
        s.async_scans.unwrap_or(0),
    ]
}

fn kind() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["steady", "idle", "diurnal", "burst", "ramp", "leak"])
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn guest_bookkeeping_holds_under_any_balloon_and_workload(
        kind in kind(),
        memory in 512u64..=8192,
        // Shares of the guest's memory: a working set, its rise to the peak and cold anon
        // that fit it together (the simulator refuses the rest); page cache of any size
        // the guest could hold (up to 3/4 of its memory).
        ws_share in 0.0f64..=0.4,
        rise_share in 0.0f64..=0.25,
        cold_share in 0.0f64..=0.15,
        cache in 0u64..=4096,
        swap in 0u64..=2048,
        deflate_on_oom in any::<bool>(),
        linux in any::<bool>(),
        free_page_reporting in any::<bool>(),
        // Balloon targets as fractions of configured memory, each held for a while.
        targets in prop::collection::vec((0.0f64..=1.0, 1usize..=120), 1..=12),
    ) {
        let share = |f: f64| (memory as f64 * f) as u64;
        let (ws, cold) = (share(ws_share), share(cold_share));
        let cache = cache.min(memory * 3 / 4);
        let peak = ws + share(rise_share);
        let min_free = if linux { "\"linux\"" } else { "" };
        let keys = Keys { kind, memory, ws, peak, cache, cold, swap, deflate_on_oom, min_free };
        let spec = spec(keys)
            .unwrap_or_else(|e| panic!("a guest the simulator refuses: {e}"));
        let mut g = Guest::new(spec, 7, 0, free_page_reporting);
        let dt = 1.0;
        let mut s = GuestStats::default();
        g.write_stats(Millis::ZERO, &mut s);
        let mut last = counters(&s);
        let mut tick = 0usize;
        for (frac, hold) in targets {
            g.target = g.configured * frac;
            for _ in 0..hold {
                let now = Millis(tick as u64 * 1000);
                let fx = g.step(now, now, dt, &mut ShapeMemo::default());
                assert_consistent(&g, &fx, dt, tick);
                g.write_stats(now, &mut s);
                let (total, free, available, cache) = (
                    s.total.map_or(0, |b| b.0),
                    s.free.map_or(0, |b| b.0),
                    s.available.map_or(0, |b| b.0),
                    s.disk_caches.map_or(0, |b| b.0),
                );
                prop_assert!(free <= total && available <= free + cache + 1, "tick {tick}: {s:?}");
                // Without watermarks every free page counts as available; with them the
                // kernel's reserve does not.
                prop_assert!(linux || available >= free, "tick {tick}: {s:?}");
                let now_counters = counters(&s);
                prop_assert!(
                    now_counters.iter().zip(&last).all(|(a, b)| a >= b),
                    "tick {tick}: a counter went back: {last:?} → {now_counters:?}"
                );
                last = now_counters;
                tick += 1;
            }
        }
    }
}

#[test]
fn a_shared_shape_memo_gives_every_replica_the_cosine_it_would_compute_alone() {
    let spec = spec(Keys {
        kind: "diurnal",
        memory: 4096,
        ws: 1024,
        peak: 3072,
        cache: 512,
        cold: 0,
        swap: 0,
        deflate_on_oom: false,
        min_free: "",
    })
    .expect("a valid guest");
    let mut alone = [
        Guest::new(spec.clone(), 7, 0, false),
        Guest::new(spec.clone(), 7, 1, false),
    ];
    let mut shared = alone.clone();
    for tick in 0..1200u64 {
        let now = Millis(tick * 1000);
        let mut memo = ShapeMemo::default();
        for (a, s) in alone.iter_mut().zip(shared.iter_mut()) {
            a.step(now, now, 1.0, &mut ShapeMemo::default());
            s.step(now, now, 1.0, &mut memo);
            assert_eq!(a.demand, s.demand, "tick {tick}");
            assert_eq!(a.actual.to_bits(), s.actual.to_bits(), "tick {tick}");
        }
    }
}

/// A steady 1 GiB guest with Linux's watermarks (or none), settled at full size.
fn settled_guest(min_free: &'static str, ws: u64, cache: u64) -> Guest {
    let spec = spec(Keys {
        kind: "steady",
        memory: 1024,
        ws,
        peak: ws,
        cache,
        cold: 0,
        swap: 0,
        deflate_on_oom: false,
        min_free,
    })
    .expect("a valid guest");
    let mut g = Guest::new(spec, 7, 0, false);
    for tick in 0..60u64 {
        let now = Millis(tick * 1000);
        g.step(now, now, 1.0, &mut ShapeMemo::default());
    }
    g
}

fn free(g: &Guest) -> f64 {
    g.usable() - g.resident()
}

#[test]
fn a_linux_guest_gives_its_watermark_only_by_evicting_page_cache() {
    for linux in [true, false] {
        let mut g = settled_guest(if linux { "\"linux\"" } else { "" }, 300, 400);
        let high = if linux { 66.0 * MIB } else { 0.0 };
        let cache = g.cache_hot + g.cache_cold;
        assert!(free(&g) > 100.0 * MIB, "free {:.1} MiB", free(&g) / MIB);
        // A balloon that takes all but 20 MiB of the free memory...
        let free_before = free(&g);
        g.target = g.actual - (free_before - 20.0 * MIB);
        for tick in 60..63u64 {
            let now = Millis(tick * 1000);
            let fx = g.step(now, now, 1.0, &mut ShapeMemo::default());
            assert_consistent(&g, &fx, 1.0, tick as usize);
        }
        let evicted = cache - (g.cache_hot + g.cache_cold);
        if linux {
            // ...makes kswapd evict cache until the high watermark is free again.
            assert!(free(&g) >= high - EPS, "free {:.1} MiB", free(&g) / MIB);
            assert!(
                (evicted - (high - 20.0 * MIB)).abs() < MIB,
                "evicted {:.1} MiB",
                evicted / MIB
            );
        } else {
            // A guest without watermarks gives free memory for free.
            assert!(evicted.abs() < EPS, "evicted {:.1} MiB", evicted / MIB);
        }
    }
}

#[test]
fn a_linux_guest_reports_mem_available_as_linux_counts_it() {
    let g = settled_guest("\"linux\"", 300, 600);
    let mut s = GuestStats::default();
    g.write_stats(Millis::ZERO, &mut s);
    let (free, available, cache) = (
        s.free.expect("free").as_f64(),
        s.available.expect("available").as_f64(),
        s.disk_caches.expect("caches").as_f64(),
    );
    // MemFree less the high watermark (66 MiB), plus the cache less the low one (55 MiB).
    let want = free - 66.0 * MIB + cache - 55.0 * MIB;
    assert!((available - want).abs() < 2.0, "{available} vs {want}");
}

#[test]
fn a_linux_guest_short_of_its_watermark_is_not_out_of_memory() {
    // Nothing to reclaim (no cache, no swap): a balloon 40 MiB inside the 66 MiB
    // watermark leaves the guest short; a workload that then grows past the watermark is
    // out of memory.
    for (growth, killed) in [(20u64, false), (30, true)] {
        let mut g = settled_guest("\"linux\"", 600, 0);
        g.target = g.actual - (free(&g) - 66.0 * MIB) - 40.0 * MIB;
        let mut oom = false;
        for tick in 60..70u64 {
            if tick == 63 {
                g.override_working_set(Some(Bytes::mib(600 + growth)));
            }
            let now = Millis(tick * 1000);
            oom |= g.step(now, now, 1.0, &mut ShapeMemo::default()).oom_killed;
            if tick == 62 {
                assert!(
                    (free(&g) - 26.0 * MIB).abs() < MIB,
                    "free {:.1}",
                    free(&g) / MIB
                );
            }
        }
        assert_eq!(oom, killed, "{growth} MiB more");
    }
}

/// An OOM-killed workload restarts a minute later; meanwhile the balloon still moves, as a
/// real guest's driver (the kernel's) does. It stood still until session 32: a deflate asked
/// for just after a kill waited for the restart.
#[test]
fn the_balloon_moves_while_a_killed_workload_waits_to_restart() {
    let mut g = settled_guest("", 600, 0);
    // A balloon that takes all the free memory, no cache, no swap: the workload growing
    // 100 MiB dies.
    g.target = g.actual - free(&g);
    g.override_working_set(Some(Bytes::mib(700)));
    let mut killed_at = None;
    for tick in 60..70u64 {
        let now = Millis(tick * 1000);
        if g.step(now, now, 1.0, &mut ShapeMemo::default()).oom_killed {
            killed_at = Some(tick);
            break;
        }
    }
    let killed_at = killed_at.expect("the workload is OOM-killed");
    let before = g.actual;
    // The controller gives the guest all of its memory back at once.
    g.target = g.configured;
    let now = Millis((killed_at + 1) * 1000);
    g.step(now, now, 1.0, &mut ShapeMemo::default());
    assert!(
        g.restart_at.is_some_and(|at| now < at),
        "still waiting to restart"
    );
    assert_eq!(
        g.actual,
        g.configured,
        "deflated from {:.0} MiB",
        before / MIB
    );
}

/// A virtio-mem guest's unplug: the blocks a tick takes leave its free memory at once but
/// its MemTotal and the device's reported size only a tick later (a real guest isolates a
/// block's pages before it reports the block gone), and its balloon inflates below boot
/// memory only once the device is down to it.
#[test]
fn a_virtio_mem_unplug_reads_as_use_for_a_tick_and_the_balloon_goes_second() {
    let text = "[scenario]\nname = \"g\"\nduration = \"1h\"\nseed = 1\n[host]\nmemory = \"64GiB\"\n\
                reserve = \"1GiB\"\n[[vm]]\nname = \"g\"\nmemory = \"4GiB\"\nballoon_rate = \"256MiB/s\"\n\
                virtio_mem = { boot = \"2GiB\", block = \"2MiB\" }\n[vm.workload]\nkind = \"steady\"\n\
                working_set = \"512MiB\"\npage_cache = \"0MiB\"\nnoise = 0\n";
    let spec = Scenario::parse(text, Path::new("g.toml"))
        .expect("valid")
        .vms[0]
        .clone();
    let mut g = Guest::new(spec, 7, 0, false);
    let read = |g: &Guest| {
        let mut s = GuestStats::default();
        g.write_stats(Millis::ZERO, &mut s);
        let total = s.total.expect("total").as_f64();
        (
            total,
            total - s.free.expect("free").as_f64(),
            g.reported_actual(),
        )
    };
    let step = |g: &mut Guest, tick: u64| {
        let now = Millis(tick * 1000);
        let fx = g.step(now, now, 1.0, &mut ShapeMemo::default());
        assert_consistent(g, &fx, 1.0, tick as usize);
    };
    step(&mut g, 0);
    let (total, used_before, _) = read(&g);
    assert_eq!(total, 4096.0 * MIB);

    // 2.5 GiB down: 2 GiB of device, then 512 MiB of balloon.
    g.target = 1536.0 * MIB;
    step(&mut g, 1);
    let (total, used, reported) = read(&g);
    assert_eq!(g.actual, 3840.0 * MIB, "a second of unplug at 256 MiB/s");
    assert_eq!(
        (total, reported),
        (4096.0 * MIB, 4096.0 * MIB),
        "reported a tick late"
    );
    assert_eq!(
        used - used_before,
        256.0 * MIB,
        "the blocks read as use meanwhile"
    );

    for tick in 2..=8 {
        step(&mut g, tick);
    }
    assert_eq!(g.actual, 2048.0 * MIB, "the device is down to boot memory");
    assert_eq!(
        read(&g).2,
        2304.0 * MIB,
        "its last 256 MiB reported next tick"
    );
    step(&mut g, 9);
    let (total, used, reported) = read(&g);
    assert_eq!(
        g.actual,
        2048.0 * MIB,
        "the balloon waits a tick for the device"
    );
    assert_eq!((total, reported), (2048.0 * MIB, 2048.0 * MIB));
    assert_eq!(
        used, used_before,
        "the blocks are gone, and so is their use"
    );
    step(&mut g, 10);
    let (total, used, reported) = read(&g);
    assert_eq!(g.actual, 1792.0 * MIB, "then the balloon inflates");
    assert_eq!(
        (total, reported),
        (1792.0 * MIB, 1792.0 * MIB),
        "balloon pages leave at once"
    );
    assert_eq!(used, used_before);
}
