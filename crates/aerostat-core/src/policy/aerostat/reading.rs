//! Reading a guest's stats: its numbers clamped to what it was configured with, and its
//! cumulative counters turned into rates since the last reading.

use crate::linux::Watermarks;
use crate::observation::VmSample;
use crate::units::{Bytes, Millis};

use super::memo::Memo;
use super::{PAGE, REFAULT_PRESSURE_PPS, STALE_INTERVALS, SWAP_IN_PRESSURE_BPS};

/// Guest numbers after clamping, and what changed since the last tick.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Reading {
    pub(super) used: f64,
    pub(super) free: f64,
    /// What the guest holds resident (MemTotal − MemFree, less a balloon counted inside),
    /// from one snapshot of its stats.
    pub(super) resident: f64,
    /// The balloon's `actual` when the guest took these stats, or more
    /// (`Memo::actual_when_stats_taken`).
    pub(super) actual_then: f64,
    /// What the guest's kernel keeps out of MemTotal (counted in `used`).
    pub(super) hidden: f64,
    pub(super) cache: f64,
    pub(super) swap_in_bps: f64,
    pub(super) refault_pps: f64,
    pub(super) new_ooms: u64,
    /// Reclaimed ÷ scanned over the last interval, when the guest reclaimed anything.
    pub(super) efficiency: Option<f64>,
    /// Bytes the guest's LRU reclaimed over the last interval.
    pub(super) reclaimed: f64,
    pub(super) has_scan_stats: bool,
}

impl Reading {
    /// What the guest holds: resident, and never less than `used` — a real kernel keeps its
    /// watermark reserve free, and MemAvailable (so `used`) counts it as taken where
    /// MemFree does not (70 MiB in a 1 GiB guest).
    pub(super) fn held(&self) -> f64 {
        self.resident.max(self.used)
    }

    /// Cold page cache left, estimated from the last interval's reclaim efficiency. A CLOCK
    /// scan passes over hot pages and frees cold ones, so the share of scanned pages it
    /// freed is the cold share of the cache when the interval began; what it freed since
    /// is gone.
    pub(super) fn cold_cache(&self) -> Option<f64> {
        let e = self.efficiency?;
        Some((e * (self.cache + self.reclaimed) - self.reclaimed).clamp(0.0, self.cache))
    }

    /// Whether the guest is under pressure: swapping in, refaulting its working set, or
    /// OOM-killing.
    pub(super) fn pressure(&self) -> bool {
        self.swap_in_bps > SWAP_IN_PRESSURE_BPS
            || self.refault_pps > REFAULT_PRESSURE_PPS
            || self.new_ooms > 0
    }
}

/// Reads the guest's stats; `dt` is the time since the last reading (`memo.last_time`).
/// `None` when the stats are older than STALE_INTERVALS intervals or do not say how much
/// memory is available.
pub(super) fn read(
    vm: &VmSample,
    memo: &Memo,
    now: Millis,
    dt: f64,
    interval: Millis,
) -> Option<Reading> {
    let s = &vm.stats;
    let interval_ok = |t: Millis| now.saturating_sub(t).0 <= STALE_INTERVALS * interval.0.max(1000);
    if s.last_update.is_some_and(|t| !interval_ok(t)) {
        return None;
    }
    let configured = vm.configured.as_f64();
    let clamp = |b: Option<Bytes>| b.map(|b| b.as_f64().clamp(0.0, configured));
    let total = clamp(s.total).unwrap_or(vm.actual.as_f64());
    let available = clamp(s.available).or_else(|| {
        // Older guests: free + caches approximates MemAvailable.
        Some(clamp(s.free)? + clamp(s.disk_caches).unwrap_or(0.0))
    })?;
    let available = available.min(total);
    // With deflate-on-oom MemTotal stays where it was and the balloon's pages count as
    // used inside the guest; without it MemTotal shrinks with the balloon. The balloon
    // counted is the one when the guest took its stats: the live `actual` less a
    // MemAvailable from before an inflate read a real guest's use as 0 and dived its
    // balloon to 272 MiB (session 18). When the sample does not say which, only a
    // MemTotal at the configured size is read as "balloon inside" (a real guest's MemTotal
    // is below it by what the kernel reserved: 57 MiB of 1 GiB, so the device's property
    // is what tells a small guest apart).
    let (actual_then, actual_then_exact) =
        memo.actual_when_stats_taken(now, vm.actual.as_f64(), s.last_update);
    let balloon = (configured - actual_then).max(0.0);
    let balloon_inside = match vm.deflate_on_oom {
        Some(true) => balloon.min(total),
        Some(false) => 0.0,
        None if total >= 0.99 * configured => (total - vm.actual.as_f64()).max(0.0),
        None => 0.0,
    };
    // A real kernel does not count all of its memory in MemTotal: its code and page
    // structs, and a 64 MiB DMA bounce buffer once guest memory reaches past 4 GiB (as it
    // does with a virtio-mem device), are gone before the count starts — 57 MiB of a 1 GiB
    // guest, 113 MiB of a 512 MiB guest with a virtio-mem device. That memory is as used as
    // any: without it the room left in a real guest was that much smaller than the policy
    // thought (272 MiB of burst room was 159 MiB free, and a workload growing 100 MiB at a
    // time was OOM-killed; docs/benchmarks.md, "virtio-mem"). The simulator's guests count
    // their kernel in MemTotal, so there it is 0. Measured only when the balloon at the
    // stats is known exactly: with an upper bound (stats older than a balloon step) it
    // would read the step as kernel memory, raise `used` by it and deflate further.
    let hidden = if actual_then_exact {
        (actual_then - (total - balloon_inside)).max(0.0)
    } else {
        memo.hidden
    };
    let used = (total - available - balloon_inside + hidden).max(0.0);
    let free = clamp(s.free).unwrap_or(0.0).min(total);
    // From the stats' own MemTotal, not the live `actual`: while a balloon inflates, the
    // stats lag it, and `actual` less a MemFree from before the inflate read hundreds of
    // MiB low — a cold-anon bite below that landed on hot memory (a real guest, session
    // 17). With the balloon inside MemTotal the live `actual` is all there is.
    let resident = (total - balloon_inside - free).max(0.0);
    // The page cache counted is the part MemAvailable counts: `used` already holds the
    // rest (shmem, the kernel's low-watermark share), and counting it again in the cache
    // a guest keeps left each guest that much above its need (`overcommitted`: 36–41 MiB
    // a guest). MemAvailable is MemFree less the kernel's reserve (its high watermark)
    // plus that part of the cache, so the reserve is added back: without it the cache
    // read 66–100 MiB low, and a guest whose hot cache is smaller than its reserve read
    // none at all — the balloon took that cache, the guest refaulted it, the balloon gave
    // it back (with Linux's watermarks in the simulator: 724,535 actions and 6,519
    // stall-s in `overcommitted`). The reserve is what MemAvailable leaves out of MemFree
    // and the cache beyond the share of the cache Linux keeps (half, at most the low
    // watermark), at most a common guest's high watermark for its configured size, and at
    // most MemFree (a guest reclaiming is inside its reserve). A guest that reports less
    // left out has less reserve: the simulator's default guests keep none and leave out a
    // tenth of their cache, and a fixed estimate counted that tenth twice (reviewer-2
    // `priority-inversion`: the batch guests kept 800 MiB more and a desk's spike met a
    // short host).
    let disk_caches = clamp(s.disk_caches).unwrap_or(0.0).min(total);
    let linux = Watermarks::typical(vm.configured);
    let left_out = (free + disk_caches - available).max(0.0);
    let reserve = (left_out - (disk_caches / 2.0).min(linux.low.as_f64()))
        .clamp(0.0, linux.high.as_f64().min(free));
    let cache = disk_caches.min((available - free + reserve).max(0.0));
    let mut r = Reading {
        used,
        free,
        resident,
        actual_then,
        hidden,
        cache,
        has_scan_stats: s.async_scans.is_some(),
        ..Reading::default()
    };
    if memo.last_time.is_some() {
        let p = &memo.last_counters;
        let delta = |a: Option<u64>, b: Option<u64>| match (a, b) {
            // Counters that go backwards (guest reboot, lies) count as zero.
            (Some(a), Some(b)) => a.saturating_sub(b) as f64,
            _ => 0.0,
        };
        r.swap_in_bps = delta(s.swap_in.map(|b| b.0), p.swap_in) / dt;
        r.refault_pps = delta(s.major_faults, p.major_faults) / dt;
        r.new_ooms = delta(s.oom_kills, p.oom_kills) as u64;
        let scans = delta(s.async_scans, p.async_scans) + delta(s.direct_scans, p.direct_scans);
        let reclaims =
            delta(s.async_reclaims, p.async_reclaims) + delta(s.direct_reclaims, p.direct_reclaims);
        if scans >= 64.0 {
            r.efficiency = Some((reclaims / scans).min(1.0));
            r.reclaimed = reclaims * PAGE;
        }
    }
    Some(r)
}
