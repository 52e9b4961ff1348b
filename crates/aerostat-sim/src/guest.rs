//! One simulated guest: its memory, its balloon driver and the stalls it suffers.
//!
//! Memory inside the guest (all in bytes, as `f64` for speed):
//! `actual` = configured − balloon; of it, `kernel + pinned` is never reclaimable; the
//! rest ("usable") holds anonymous memory (hot and cold) and page cache (hot and cold).
//! When usable memory is short, the guest's LRU reclaims in order of cost: cold cache,
//! cold anon (to guest swap), hot cache, hot anon (to guest swap); when nothing is left
//! the guest OOM-kills its workload (or, with deflate-on-oom, the balloon gives way).
//!
//! Stalls (PSI-like "some" seconds) come from bringing back what was evicted while
//! still wanted: refaults of hot page cache (disk reads) and swap-ins of hot anon.
//! Hot data is re-touched at [`HOT_ACCESS_PER_S`] of its missing part per second.
//!
//! The hidden truth (true working set, what is hot) stays in here; the policy sees only
//! [`Guest::write_stats`], shaped like virtio-balloon statistics.

use aerostat_core::{Bytes, GuestStats, Millis};

use crate::scenario::{DEFAULT_DIRTY_FRACTION_PER_S, StatsMode, VmSpec};
use crate::workload::{Demand, ShapeMemo, Workload};

/// Fraction of the missing hot set touched (and faulted back) per second.
pub const HOT_ACCESS_PER_S: f64 = 0.1;
/// Bandwidth of refault reads from the guest's disk.
pub const DISK_BANDWIDTH: f64 = 200.0 * 1048576.0;
/// New page cache is read in at most this fast (plain reads, not stalls).
pub const CACHE_FILL_RATE: f64 = 100.0 * 1048576.0;
/// Deflation is several times faster than inflation (measured: 0.15 s vs 1 s per 256 MiB).
pub const DEFLATE_SPEEDUP: f64 = 4.0;
/// A workload killed by the OOM killer is restarted after this long.
pub const RESTART_AFTER: Millis = Millis(60_000);
/// Applications fault in new anonymous memory at most this fast (page faults + zeroing);
/// a step in demand becomes a steep ramp, as it does on a real machine.
pub const ALLOC_RATE: f64 = 512.0 * 1048576.0;
/// CLOCK scans at most this many pages per page reclaimed before giving up on a pass.
const MAX_SCAN_RATIO: f64 = 32.0;
const PAGE: f64 = 4096.0;

/// Counters a tick adds to the run's metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct TickEffects {
    pub stall_s: f64,
    pub swap_in: f64,
    pub oom_killed: bool,
    /// Bytes the balloon or the device took from the guest this tick: their mappings are
    /// gone from every vCPU's TLB ([`crate::tlb`]).
    pub taken: f64,
}

#[derive(Clone, Debug)]
pub struct Guest {
    pub spec: VmSpec,
    workload: Workload,
    // Sizes and rates from the spec, in f64 bytes.
    configured: f64,
    fixed: f64,
    /// Free memory the guest kernel keeps: kswapd reclaims up to the high watermark
    /// (0 for a guest that keeps none).
    wmark_high: f64,
    /// MemAvailable leaves out half the page cache, at most the low watermark — in a guest
    /// that keeps watermarks (`None`: it leaves out a tenth of the cache).
    wmark_low: Option<f64>,
    swap_size: f64,
    swap_bw: f64,
    inflate_rate: f64,
    free_page_reporting: bool,
    // Balloon.
    pub actual: f64,
    pub target: f64,
    /// Memory a virtio-mem device took last tick: off the guest's free lists already, but
    /// still in its MemTotal and in the device's plugged size until the next tick. A real
    /// guest isolates a block's pages (and migrates what they hold) before it reports the
    /// block gone, so an unplug in progress reads as use (session 24: 47, 174, 301 MiB
    /// used over 3 s of a real unplug). 0 for a balloon, whose pages leave MemTotal as
    /// they go.
    unplugging: f64,
    // Guest memory.
    anon_hot: f64,
    anon_cold: f64,
    swap_hot: f64,
    swap_cold: f64,
    cache_hot: f64,
    cache_cold: f64,
    /// Hot cache evicted while still wanted: it will refault.
    evicted_hot: f64,
    /// Guest memory the host has backed with RAM (touched, not yet handed back).
    pub touched: f64,
    // Host swap of this guest's memory (owned by the host model).
    pub host_swapped_cold: f64,
    pub host_swapped_hot: f64,
    // Cumulative counters (what stats report).
    swap_in_total: f64,
    swap_out_total: f64,
    major_faults: f64,
    scans: f64,
    reclaims: f64,
    pub oom_kills: u64,
    restart_at: Option<Millis>,
    /// Last demand: the hidden truth the metrics (never the policy) read.
    demand: Demand,
    /// A hot working set imposed from outside (tests that drive a guest like a real one).
    working_set_override: Option<f64>,
}

impl Guest {
    pub fn new(spec: VmSpec, seed: u64, stream: u64, free_page_reporting: bool) -> Guest {
        let mut workload = Workload::new(spec.workload.clone(), seed, stream);
        let configured = spec.memory.as_f64();
        let fixed = (spec.kernel + spec.pinned).as_f64().min(configured);
        let d = workload.demand(Millis::ZERO, &mut ShapeMemo::default());
        let usable = configured - fixed;
        let wmark_high = spec.watermarks.map_or(0.0, |w| w.high.as_f64());
        // Guests start warm: their working set and page cache already resident, the
        // kernel's watermark still free.
        let anon_hot = d.hot_anon.min(usable);
        let anon_cold = d.cold_anon.min(usable - anon_hot);
        let cache_room = (usable - wmark_high - anon_hot - anon_cold).max(0.0);
        let cache_hot = d.hot_cache.min(cache_room);
        let cache_cold = (d.cache - d.hot_cache).min(cache_room - cache_hot);
        Guest {
            configured,
            fixed,
            wmark_high,
            wmark_low: spec.watermarks.map(|w| w.low.as_f64()),
            swap_size: spec.swap.as_f64(),
            swap_bw: spec.swap_bandwidth.as_f64(),
            inflate_rate: spec.balloon_rate.as_f64(),
            free_page_reporting,
            actual: configured,
            target: configured,
            unplugging: 0.0,
            anon_hot,
            anon_cold,
            swap_hot: 0.0,
            swap_cold: 0.0,
            cache_hot,
            cache_cold,
            evicted_hot: 0.0,
            touched: fixed + anon_hot + anon_cold + cache_hot + cache_cold,
            host_swapped_cold: 0.0,
            host_swapped_hot: 0.0,
            swap_in_total: 0.0,
            swap_out_total: 0.0,
            major_faults: 0.0,
            scans: 0.0,
            reclaims: 0.0,
            oom_kills: 0,
            restart_at: None,
            demand: d,
            working_set_override: None,
            spec,
            workload,
        }
    }

    pub fn is_running(&self) -> bool {
        self.restart_at.is_none()
    }

    fn usable(&self) -> f64 {
        (self.actual - self.fixed).max(0.0)
    }

    /// What pages may fill before kswapd reclaims: usable memory less the high watermark.
    fn fill_limit(&self) -> f64 {
        self.usable() - self.wmark_high
    }

    fn resident(&self) -> f64 {
        self.anon_hot + self.anon_cold + self.cache_hot + self.cache_cold
    }

    fn swap_room(&self) -> f64 {
        (self.swap_size - self.swap_hot - self.swap_cold).max(0.0)
    }

    /// The guest's true working set: memory it needs to run without stalls — resident, or
    /// kept free by its kernel (the watermark: below it the kernel reclaims).
    /// Cold anon counts when there is no swap to put it in.
    pub fn true_working_set(&self) -> f64 {
        let d = &self.demand;
        let cold = if self.swap_size > 0.0 {
            0.0
        } else {
            d.cold_anon
        };
        self.fixed + self.wmark_high + d.hot_anon + d.hot_cache + cold
    }

    /// What a host-side coldness measurement would count idle now (docs/observation.md,
    /// "Coldness"): memory the host backs that the guest is not touching — free pages it
    /// touched once, cold page cache, cold anon. The kernel's part counts as touched (the
    /// real measurement sees some of it idle too: this model errs on the cautious side).
    pub fn idle(&self) -> f64 {
        (self.touched - self.fixed - self.anon_hot - self.cache_hot).max(0.0)
    }

    /// Oracle: what could be handed back without hurting this guest.
    pub fn oracle_reclaimable(&self) -> f64 {
        (self.configured - self.true_working_set()).max(0.0)
    }

    /// Bytes of the guest's host-resident memory the host LRU sees as hot.
    pub fn host_hot(&self) -> f64 {
        (self.fixed + self.anon_hot + self.cache_hot).min(self.touched)
    }

    pub fn configured(&self) -> f64 {
        self.configured
    }

    /// Replaces the workload's hot working set from now on (`None`: the workload again).
    pub fn override_working_set(&mut self, ws: Option<Bytes>) {
        self.working_set_override = ws.map(Bytes::as_f64);
    }

    /// Distinct bytes the guest dirties per second now (hidden truth: the escape sees only a
    /// noisy measurement of it). A guest whose workload waits to restart dirties nothing.
    pub fn dirty_rate(&self) -> f64 {
        if !self.is_running() {
            return 0.0;
        }
        match self.spec.workload.dirty_rate {
            Some(rate) => rate.as_f64(),
            None => DEFAULT_DIRTY_FRACTION_PER_S * self.anon_hot,
        }
    }

    /// Hot anonymous memory resident now (what a growing workload has managed to touch).
    pub fn hot_anon_resident(&self) -> f64 {
        self.anon_hot
    }

    /// Advances the guest by `dt_s` seconds; `t` is time since the VM started.
    /// `shape` is shared by the guests stepped in one tick (see [`ShapeMemo`]).
    pub fn step(
        &mut self,
        t: Millis,
        now: Millis,
        dt_s: f64,
        shape: &mut ShapeMemo,
    ) -> TickEffects {
        let mut fx = TickEffects::default();
        // Blocks taken last tick are reported gone from now on.
        let reported_late = std::mem::take(&mut self.unplugging);
        // A workload the OOM killer took restarts RESTART_AFTER later; meanwhile only the
        // balloon moves: its driver is the guest kernel's, not the workload's. (It stood
        // still until session 32, so a deflate asked for after a kill waited for the
        // restart, which then met the balloon where the kill had left it.)
        let restarting = match self.restart_at {
            Some(at) if now < at => true,
            Some(_) => {
                self.restart_at = None;
                false
            }
            None => false,
        };

        // 1. The balloon moves toward its target. Inflation takes only what the guest
        //    can give (free, cache, anon that fits in swap): the driver's allocations
        //    fail rather than OOM-kill, so a balloon stalls when nothing is left.
        if self.target > self.actual {
            self.actual =
                (self.actual + self.inflate_rate * DEFLATE_SPEEDUP * dt_s).min(self.target);
        } else if self.target < self.actual && !self.spec.balloon_lies {
            let free = (self.usable() - self.resident()).max(0.0);
            let reclaimable = free
                + self.cache_hot
                + self.cache_cold
                + (self.anon_hot + self.anon_cold).min(self.swap_room());
            // A virtio-mem guest unplugs down to boot memory before its balloon inflates
            // below it, once the device reports its blocks gone, as the daemon sequences
            // them (`balloon_after_devices`).
            let boot = self.spec.virtio_mem.map(|v| v.boot.as_f64());
            let down_to = match boot {
                Some(boot) if self.actual > boot || reported_late > 0.0 => self.target.max(boot),
                _ => self.target,
            };
            let take = (self.actual - down_to)
                .min(self.inflate_rate * dt_s)
                .min(reclaimable);
            self.actual -= take;
            fx.taken = take;
            // The device's blocks are reported gone only next tick.
            if boot.is_some_and(|boot| down_to >= boot) {
                self.unplugging = take;
            }
        }

        if restarting {
            self.back_touched();
            return fx;
        }
        let mut d = self.workload.demand(t, shape);
        if let Some(ws) = self.working_set_override {
            d.hot_anon = ws;
        }
        self.demand = d;

        // 2. The workload allocates or frees.
        let hot_total = self.anon_hot + self.swap_hot;
        let mut alloc_budget = ALLOC_RATE * dt_s;
        if d.hot_anon >= hot_total {
            let grow = (d.hot_anon - hot_total).min(alloc_budget);
            alloc_budget -= grow;
            self.anon_hot += grow;
        } else {
            let mut drop = hot_total - d.hot_anon;
            let s = drop.min(self.swap_hot);
            self.swap_hot -= s;
            drop -= s;
            self.anon_hot -= drop.min(self.anon_hot);
        }
        let cold_total = self.anon_cold + self.swap_cold;
        if d.cold_anon >= cold_total {
            self.anon_cold += (d.cold_anon - cold_total).min(alloc_budget);
        } else {
            let mut drop = cold_total - d.cold_anon;
            let s = drop.min(self.swap_cold);
            self.swap_cold -= s;
            drop -= s;
            self.anon_cold -= drop.min(self.anon_cold);
        }
        // Page cache: hot data that is wanted and neither resident nor evicted is read in
        // (plain reads); data no longer hot lingers as cold cache; cold cache fills up.
        let hot_known = self.cache_hot + self.evicted_hot;
        if d.hot_cache > hot_known {
            self.cache_hot += (d.hot_cache - hot_known).min(CACHE_FILL_RATE * dt_s);
        } else {
            let mut drop = hot_known - d.hot_cache;
            let e = drop.min(self.evicted_hot);
            self.evicted_hot -= e;
            drop -= e;
            let moved = drop.min(self.cache_hot);
            self.cache_hot -= moved;
            self.cache_cold += moved;
        }
        let cold_want = (d.cache - d.hot_cache).max(0.0);
        if cold_want > self.cache_cold {
            let room = (self.fill_limit() - self.resident()).max(0.0);
            self.cache_cold += (cold_want - self.cache_cold)
                .min(CACHE_FILL_RATE * dt_s)
                .min(room);
        }

        // 3. Missing hot data is touched and comes back: refaults and swap-ins stall.
        if self.evicted_hot > 0.0 {
            let r = (self.evicted_hot * HOT_ACCESS_PER_S * dt_s).min(self.evicted_hot);
            self.evicted_hot -= r;
            self.cache_hot += r;
            self.major_faults += r / PAGE;
            fx.stall_s += r / DISK_BANDWIDTH;
        }
        if self.swap_hot > 0.0 {
            let s = (self.swap_hot * HOT_ACCESS_PER_S * dt_s)
                .min(self.swap_hot)
                .min(self.swap_bw * dt_s);
            self.swap_hot -= s;
            self.anon_hot += s;
            self.swap_in_total += s;
            self.major_faults += s / PAGE;
            fx.swap_in += s;
            fx.stall_s += s / self.swap_bw;
        }

        // 4. Fit resident memory into usable memory less the high watermark: kswapd
        //    reclaims as soon as free memory falls below it. What reclaim cannot free lives
        //    in the watermark (the kernel's reserve); only past it is the guest out of memory.
        let over = self.resident() - self.fill_limit();
        if over > 0.0 {
            fx.stall_s += self.reclaim(over, dt_s, &mut fx.oom_killed, now);
        }

        // 5. Host backing.
        self.back_touched();
        fx.stall_s = fx.stall_s.min(dt_s);
        fx
    }

    /// Host backing: touched pages stay backed until the balloon takes them (or free page
    /// reporting returns them).
    fn back_touched(&mut self) {
        let used = self.fixed + self.resident();
        self.touched = if self.free_page_reporting {
            used
        } else {
            self.touched.max(used)
        }
        // The host backs blocks being unplugged until the device reports them gone.
        .min(self.actual + self.unplugging);
    }

    /// Reclaims `over` bytes in LRU order; returns stall seconds from direct reclaim.
    fn reclaim(&mut self, mut over: f64, dt_s: f64, oom: &mut bool, now: Millis) -> f64 {
        let mut stall = 0.0;
        let cache = self.cache_hot + self.cache_cold;
        // (a) cold cache: CLOCK skips hot pages, so each reclaimed page costs
        //     (hot + cold) / cold scans.
        let x = over.min(self.cache_cold);
        if x > 0.0 {
            let ratio = (cache / self.cache_cold.max(1.0)).min(MAX_SCAN_RATIO);
            self.scans += x / PAGE * ratio;
            self.reclaims += x / PAGE;
            self.cache_cold -= x;
            over -= x;
        }
        // (b) cold anon to swap.
        let x = over.min(self.anon_cold).min(self.swap_room());
        if x > 0.0 {
            self.anon_cold -= x;
            self.swap_cold += x;
            self.swap_out_total += x;
            self.scans += x / PAGE;
            self.reclaims += x / PAGE;
            stall += ((x - self.swap_bw * dt_s) / self.swap_bw).max(0.0);
            over -= x;
        }
        // (c) hot cache: evicted while wanted, it will refault.
        let x = over.min(self.cache_hot);
        if x > 0.0 {
            self.scans += x / PAGE * MAX_SCAN_RATIO;
            self.reclaims += x / PAGE;
            self.cache_hot -= x;
            self.evicted_hot += x;
            over -= x;
        }
        // (d) hot anon to swap: thrashing.
        let x = over.min(self.anon_hot).min(self.swap_room());
        if x > 0.0 {
            self.anon_hot -= x;
            self.swap_hot += x;
            self.swap_out_total += x;
            self.scans += x / PAGE * MAX_SCAN_RATIO;
            self.reclaims += x / PAGE;
            stall += x / self.swap_bw;
            over -= x;
        }
        // The watermark is the kernel's to give last: a guest reclaim could not bring back
        // above it is short, not out of memory.
        over -= self.wmark_high;
        if over > 1.0 {
            if self.spec.deflate_on_oom && self.actual < self.configured {
                // The driver hands pages back rather than let the guest OOM.
                self.actual = (self.actual + over).min(self.configured);
                over = self.resident() - self.usable();
            }
            if over > 1.0 {
                // Out of memory: the workload dies and restarts later.
                self.oom_kills += 1;
                *oom = true;
                self.anon_hot = 0.0;
                self.anon_cold = 0.0;
                self.swap_hot = 0.0;
                self.swap_cold = 0.0;
                let usable = self.usable();
                self.cache_hot = self.cache_hot.min(usable);
                self.cache_cold = self.cache_cold.min(usable - self.cache_hot);
                self.restart_at = Some(now + RESTART_AFTER);
            }
        }
        stall
    }

    /// MemAvailable: free memory plus the page cache, less what the kernel keeps. Like
    /// the kernel, it cannot tell hot cache from cold.
    fn mem_available(&self, free: f64, cache: f64) -> f64 {
        match self.wmark_low {
            // As Linux counts it (`si_mem_available`): free memory less the high
            // watermark, plus the page cache less what the kernel expects to keep (half
            // of it, at most the low watermark).
            Some(low) => (free - self.wmark_high + cache - (cache / 2.0).min(low)).max(0.0),
            None => free + 0.9 * cache,
        }
    }

    /// Guest swap-ins so far, bytes: what QEMU reads from a swap disk of its own.
    pub fn swap_in_total(&self) -> f64 {
        self.swap_in_total
    }

    /// Guest swap-outs so far, bytes: what QEMU writes to a swap disk of its own.
    pub fn swap_out_total(&self) -> f64 {
        self.swap_out_total
    }

    /// The `actual` the balloon driver reports: the guest's size (with a virtio-mem device,
    /// blocks it is unplugging still count), or, from a driver that lies, the target it was
    /// asked for (it never inflates).
    pub fn reported_actual(&self) -> f64 {
        if self.spec.balloon_lies {
            self.actual.min(self.target)
        } else {
            (self.actual + self.unplugging).min(self.configured)
        }
    }

    /// What the guest reports, per its stats mode, written into `out`: the engine's
    /// observation is refreshed in place every tick (returning the 256-byte struct cost a
    /// copy per VM-tick, 6 % of a fleet run).
    pub fn write_stats(&self, now: Millis, out: &mut GuestStats) {
        let b = |v: f64| Some(Bytes::from_f64(v));
        // Blocks a virtio-mem device is unplugging are still in MemTotal, not free.
        let total = if self.spec.deflate_on_oom {
            self.configured
        } else {
            self.actual + self.unplugging
        };
        let full = match self.spec.stats {
            StatsMode::None => {
                *out = GuestStats::default();
                return;
            }
            StatsMode::Lying => {
                // Idle: everything but its kernel free, nothing happening.
                *out = fabricated(total, total - self.fixed, 0, 0, now);
                return;
            }
            StatsMode::Greedy => {
                // Full, and swapping in 16 MiB/s with 4,096 major faults a second.
                let secs = now.0 / 1000;
                *out = fabricated(total, 0.0, 16 * secs, 4096 * secs, now);
                return;
            }
            StatsMode::Full => true,
            StatsMode::Classic => false,
        };
        // Classic stats lack the OOM and reclaim counters (Linux < 6.12).
        let recent = |v: u64| full.then_some(v);
        // What MemTotal counts beyond the guest's size (a deflate-on-oom balloon's pages,
        // blocks being unplugged) is not free.
        let not_free = total - self.actual;
        let cache = self.cache_hot + self.cache_cold;
        let free = (total - not_free - self.fixed - self.resident()).max(0.0);
        *out = GuestStats {
            total: b(total),
            free: b(free),
            available: b(self.mem_available(free, cache)),
            disk_caches: b(cache),
            swap_in: b(self.swap_in_total),
            swap_out: b(self.swap_out_total),
            major_faults: Some(self.major_faults as u64),
            minor_faults: Some(0),
            oom_kills: recent(self.oom_kills),
            alloc_stalls: recent(0),
            async_scans: recent(self.scans as u64),
            direct_scans: recent(0),
            async_reclaims: recent(self.reclaims as u64),
            direct_reclaims: recent(0),
            last_update: Some(now),
        };
    }
}

/// What a lying guest reports: `free` (and available) of `total`, no cache, `swapped_mib`
/// in and out and `major_faults` since boot, and no OOM kill, stall or scan.
fn fabricated(
    total: f64,
    free: f64,
    swapped_mib: u64,
    major_faults: u64,
    now: Millis,
) -> GuestStats {
    let b = |v: f64| Some(Bytes::from_f64(v));
    GuestStats {
        total: b(total),
        free: b(free),
        available: b(free),
        disk_caches: b(0.0),
        swap_in: Some(Bytes::mib(swapped_mib)),
        swap_out: Some(Bytes::mib(swapped_mib)),
        major_faults: Some(major_faults),
        minor_faults: Some(0),
        oom_kills: Some(0),
        alloc_stalls: Some(0),
        async_scans: Some(0),
        direct_scans: Some(0),
        async_reclaims: Some(0),
        direct_reclaims: Some(0),
        last_update: Some(now),
    }
}

#[cfg(test)]
mod tests;
