//! Reading a guest's stats: its numbers clamped to what it was configured with, and its
//! cumulative counters turned into rates since the last reading.

use crate::controller::kept_memory;
use crate::linux::Watermarks;
use crate::observation::VmSample;
use crate::units::{Bytes, Millis};

use super::memo::Memo;
use super::{
    MIB, PAGE, REFAULT_PRESSURE_PPS, STALE_INTERVALS, SWAP_IN_PRESSURE_BPS, SWAP_OUT_AFTER_INFLATE,
};

/// A coldness window older than this says nothing of what the guest holds now (the host
/// measures one every 30 s).
const ACCESSED_FRESH: Millis = Millis(30_000);

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
    /// The guest's MemTotal in these stats (clamped): without deflate-on-oom it moves with
    /// the balloon as of the stats, which the live `actual` does not date.
    pub(super) total: f64,
    /// Stats the last reading had not seen (a guest polled less often than the policy
    /// ticks repeats its stats in between).
    pub(super) new_stats: bool,
    pub(super) cache: f64,
    pub(super) swap_in_bps: f64,
    /// Bytes/s the host saw the guest write to its swap disk since the last reading, when it
    /// swapped out on its own: its balloon had not inflated within SWAP_OUT_AFTER_INFLATE
    /// and no cold-anon squeeze ran (0 otherwise, and without a declared disk).
    pub(super) swap_out_bps: f64,
    pub(super) refault_pps: f64,
    pub(super) new_ooms: u64,
    /// Reclaimed ÷ scanned over the last interval, when the guest reclaimed anything.
    pub(super) efficiency: Option<f64>,
    /// Bytes the guest's LRU reclaimed over the last interval.
    pub(super) reclaimed: f64,
    pub(super) has_scan_stats: bool,
    /// What the host's measure cut from the guest's claims (all 0: nothing).
    pub(super) unbacked: Unbacked,
    /// Bytes a deflate-on-oom guest took back from its balloon beyond its target since the
    /// last reading (0: none).
    pub(super) self_deflated: f64,
}

/// Guest claims the host's own measure does not back (docs/trust-model.md): memory a guest
/// uses it has written, and QEMU's `rss` counts every page the guest wrote.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Unbacked {
    /// `used` as the guest claimed it and as counted, when cut to what the host saw it touch.
    pub(super) used: Option<(f64, f64)>,
    /// `free` as the guest claimed it and as counted, when raised to what the host never saw
    /// it touch.
    pub(super) free: Option<(f64, f64)>,
    /// `used` as the guest claimed it and as counted, when raised to what the host saw it
    /// access in its last coldness window.
    pub(super) accessed: Option<(f64, f64)>,
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

    /// Leaves out of `used` a rise that memory its virtio-mem devices are unplugging
    /// explains (`current`: the controller's target now). A guest takes the blocks it gives
    /// back off its free lists (and migrates what they hold) before its MemTotal drops, so
    /// until then they read as use: a real two-node guest read 47, 174, 301 MiB used over
    /// the 3 s its first 96 MiB took to unplug, and the rise, read as growth, had all of it
    /// plugged back, over and over (session 24). A rise within what the devices have
    /// yet to give back is not counted; beyond it, it is. What it hides shows once the
    /// blocks are gone or the unplug stalls (the target then goes back up); pressure shows
    /// at once. The balloon below boot memory needs none of this: its pages leave MemTotal
    /// as they go. (Beside blocks it trims, `resize::balloon_trims`, an inflate still to
    /// come counts here as if it were blocks: it widens the bound by less than a block step,
    /// and the daemon sends it only once the devices are done.)
    /// Returns the rise left out: blocks already off the free lists.
    pub(super) fn without_unplugging(&mut self, vm: &VmSample, memo: &Memo, current: f64) -> f64 {
        let Some(blocks) = vm.blocks.filter(|_| memo.last_time.is_some()) else {
            return 0.0;
        };
        // What the guest still counts: its size at the stats, or more where its MemTotal
        // (and the kernel's part outside it) still holds blocks its devices already report
        // gone — a real guest's devices went 1024 → 766 MiB while stats taken before still
        // counted 910 MiB of MemTotal (session 25). A deflate-on-oom balloon's pages are
        // inside MemTotal: there only the size counts.
        let counted = match vm.deflate_on_oom {
            Some(true) => self.actual_then,
            _ => self.actual_then.max(self.total + self.hidden),
        };
        let unplugging = (counted - current.max(blocks.boot.as_f64())).max(0.0);
        let hidden = self.used - self.used.min((self.used - unplugging).max(memo.last_used));
        self.used -= hidden;
        // The blocks left MemFree, so they read as resident too: a cold-anon squeeze that
        // counted them thought the guest still held its memory, and targeted above what it
        // had asked (the simulator's `leak` with virtio-mem: 211.6 → 196.1 GiB·h, session
        // 25). Growth hidden with them is bounded by what is still to unplug, and shows once
        // the blocks are gone or the unplug is flagged stalled; pressure stops a squeeze.
        self.resident = (self.resident - hidden).max(0.0);
        hidden
    }

    /// Whether the guest is under pressure: swapping in, refaulting its working set,
    /// OOM-killing, or (deflate-on-oom) deflating its own balloon.
    pub(super) fn pressure(&self) -> bool {
        self.swap_in_bps > SWAP_IN_PRESSURE_BPS
            || self.swap_out_bps > SWAP_IN_PRESSURE_BPS
            || self.refault_pps > REFAULT_PRESSURE_PPS
            || self.new_ooms > 0
            || self.self_deflated > 0.0
    }
}

/// Reads the guest's stats; `dt` is the time since the last reading (`memo.last_time`).
/// `None` when the stats are older than STALE_INTERVALS intervals (of the policy, or of the
/// guest's polling where that is longer) or do not say how much memory is available.
pub(super) fn read(
    vm: &VmSample,
    memo: &Memo,
    now: Millis,
    dt: f64,
    interval: Millis,
) -> Option<Reading> {
    let s = &vm.stats;
    // A guest polled every 10 s has stats up to 10 s old between its polls: read against 5
    // policy intervals alone, it was blind half the time, and each first reading after its
    // blind spell had no counters to compare with — its swap-ins, refaults and OOM kills never
    // counted, and a burst into swap between two polls stalled 12.7 s (session 33).
    let period = memo.stats_period.unwrap_or(Millis::ZERO).max(interval);
    let interval_ok = |t: Millis| now.saturating_sub(t).0 <= STALE_INTERVALS * period.0.max(1000);
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
    let then = memo.actual_when_stats_taken(now, vm.actual.as_f64(), s.last_update);
    let balloon_inside_at = |actual_then: f64| match vm.deflate_on_oom {
        Some(true) => (configured - actual_then).clamp(0.0, total),
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
    let hidden = if then.exact {
        (then.high - (total - balloon_inside_at(then.high))).max(0.0)
    } else {
        memo.hidden
    };
    let used_at = |actual_then: f64| total - available - balloon_inside_at(actual_then) + hidden;
    // Which `actual` in that range. The largest (the least balloon) unless the balloon
    // inflated since the last reading: stats taken before an inflate, read against the live
    // `actual`, counted a real guest's use as 0 and dived its balloon to 272 MiB (session
    // 18). But stats taken halfway through an inflate, read against the `actual` before
    // it, count the part already inflated as use: a real idle guest read 355, 428, 500 MiB
    // used on three ticks of one inflate, was deflated 212 MiB and held there (CI, session
    // 22). So while the balloon inflates, `used` is what the last reading said if the
    // range allows: a rise hidden within one interval's inflate shows as soon as the
    // balloon stands still, and pressure shows at once.
    let inflated = vm.actual.as_f64() < memo.last_actual;
    let actual_then = if inflated && !then.exact {
        let over = (used_at(then.high) - memo.last_used).max(0.0);
        (then.high - over).max(then.low)
    } else {
        then.high
    };
    let balloon_inside = balloon_inside_at(actual_then);
    let mut used = used_at(actual_then).max(0.0);
    let mut free = clamp(s.free).unwrap_or(0.0).min(total);
    // From the stats' own MemTotal, not the live `actual`: while a balloon inflates, the
    // stats lag it, and `actual` less a MemFree from before the inflate read hundreds of
    // MiB low — a cold-anon bite below that landed on hot memory (a real guest, session
    // 17). With the balloon inside MemTotal the live `actual` is all there is.
    let mut resident = (total - balloon_inside - free).max(0.0);
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
    let mut cache = disk_caches.min((available - free + reserve).max(0.0));
    // Host facts bound the guest's claims. What a guest uses or caches it has written, and
    // the host counts every page a guest wrote: its QEMU's `rss` (resident, host-swapped and
    // hugetlbfs pages) less QEMU's own overhead, within the noise of that estimate (the
    // margin the kept-memory check allows the other way). Claimed use beyond it is memory
    // the guest never touched; memory the host never saw touched is free, whatever the
    // guest says. Believed, such claims earn a guest memory — a pressure boost is what its
    // free memory cannot hold — and, on a full host, other guests' room and a live
    // migration. Honest guests stay inside both bounds: the kernel's free-page reserve,
    // which MemAvailable counts as taken untouched, is a fraction of the margin. (Not while
    // migrating: a destination's `rss` fills as pages arrive.)
    let mut unbacked = Unbacked::default();
    let margin = kept_memory::margin(vm).as_f64();
    if let Some(rss) = vm.rss.filter(|_| !vm.migrating) {
        let touched = (rss - vm.overhead).as_f64();
        if used > touched + margin {
            unbacked.used = Some((used, touched + margin));
            used = touched + margin;
        }
        cache = cache.min(touched + margin - used);
        // The balloon as of the stats, or now if it has inflated since (its pages left `rss`).
        let actual = actual_then.min(vm.actual.as_f64());
        let untouched = (actual - touched - margin).min(total);
        if free < untouched {
            unbacked.free = Some((free, untouched));
            free = untouched;
            resident = resident.min(total - balloon_inside - free).max(0.0);
        }
    }
    // The other way: memory the host saw the guest access in its last coldness window is
    // not free, whatever the guest says. A guest that claims to hold less than it accessed,
    // by more than the margin, is believed no further: `used` is at least what it accessed
    // less the cache it reports. (Reviewer-4's Windows hosts, whose driver reported them all
    // free, were squeezed below their working sets for 16 h.) Honest guests hold what they
    // accessed: free pages are never accessed.
    if let Some(c) = vm
        .coldness
        .filter(|c| now.saturating_sub(c.at) <= ACCESSED_FRESH)
    {
        let accessed = (c.touched - c.idle).as_f64();
        let holds = (total - balloon_inside - free).max(0.0);
        if accessed > holds + margin {
            let counted = used.max(accessed - cache);
            unbacked.accessed = Some((used, counted));
            used = counted;
            free = free.min((total - balloon_inside - accessed).max(0.0));
            resident = resident.max(accessed.min(total - balloon_inside));
        }
    }
    let mut r = Reading {
        used,
        free,
        resident,
        actual_then,
        hidden,
        total,
        new_stats: s.last_update.is_none() || s.last_update != memo.stats_at,
        cache,
        has_scan_stats: s.async_scans.is_some(),
        unbacked,
        ..Reading::default()
    };
    if memo.last_time.is_some() {
        let p = &memo.last_counters;
        let delta = |a: Option<u64>, b: Option<u64>| match (a, b) {
            // Counters that go backwards (guest reboot, lies) count as zero.
            (Some(a), Some(b)) => a.saturating_sub(b) as f64,
            _ => 0.0,
        };
        // The guest's own counters moved over the time between its stats (new stats), which
        // is longer than a tick when it is polled less often; the host's over the tick.
        let stats_dt = match (s.last_update, memo.stats_at) {
            (Some(new), Some(old)) if new > old => new.saturating_sub(old).as_secs_f64().max(dt),
            _ => dt,
        };
        // Where the guest's swap disk is read, its reads are swap-ins too: a host fact, a
        // stats interval sooner than the guest's own count, and there when the guest does not
        // report. The larger counts: swap-ins from swap in memory (zram) never reach the disk.
        let reported = delta(s.swap_in.map(|b| b.0), p.swap_in) / stats_dt;
        r.swap_in_bps = match (vm.swap_disk_read, p.swap_disk_read) {
            (Some(now), Some(then)) => reported.max(now.0.saturating_sub(then) as f64 / dt),
            _ => reported,
        };
        // Swap-outs the host saw, when nothing of ours made them: a guest whose balloon
        // stands still swaps out because what it uses outgrew what it has — seen the tick it
        // happens, where its stats, polled every few seconds, show the growth later. An
        // inflate or a squeeze makes the guest reclaim, and part of that may go to swap:
        // those are the squeeze's business (`cold_anon`), not pressure.
        let ours = memo.cold_anon.squeezing()
            || vm.actual.as_f64() + MIB < memo.last_actual
            || memo
                .inflated_at
                .is_some_and(|t| now.saturating_sub(t) < SWAP_OUT_AFTER_INFLATE);
        if let (Some(now_w), Some(then_w)) = (vm.swap_disk_written, p.swap_disk_written)
            && !ours
        {
            r.swap_out_bps = now_w.0.saturating_sub(then_w) as f64 / dt;
        }
        r.refault_pps = delta(s.major_faults, p.major_faults) / stats_dt;
        r.new_ooms = delta(s.oom_kills, p.oom_kills) as u64;
        let scans = delta(s.async_scans, p.async_scans) + delta(s.direct_scans, p.direct_scans);
        let reclaims =
            delta(s.async_reclaims, p.async_reclaims) + delta(s.direct_reclaims, p.direct_reclaims);
        if scans >= 64.0 {
            r.efficiency = Some((reclaims / scans).min(1.0));
            r.reclaimed = reclaims * PAGE;
        }
    }
    // A guest caught claiming less free memory than the host sees it never touched is not
    // believed about pressure either: swap-ins, refaults and OOM kills next to untouched
    // memory are not for want of memory, and counted they would hold its memory for ever
    // (no reclaim under pressure) and boost it every tick.
    if r.unbacked.free.is_some() {
        r.swap_in_bps = 0.0;
        r.swap_out_bps = 0.0;
        r.refault_pps = 0.0;
        r.new_ooms = 0;
    }
    Some(r)
}
